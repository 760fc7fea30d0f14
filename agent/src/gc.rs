//! Retention and garbage collection: `forget`, `prune`, `stats`.
//!
//! - [`forget`] removes snapshot records by a retention policy (restic's
//!   semantics, [`ringvault_common::retention`]); servers keep tombstones so
//!   no server copies a forgotten record back.
//! - [`prune`] reclaims chunks no snapshot reaches, without a lock: it
//!   starts a round on every server, lists the snapshots, marks every chunk
//!   they reach, and has each server sweep (see the chunk server's
//!   `prune` module: chunks written or confirmed present
//!   during the round are protected, deletion waits out a grace period, and
//!   deleted blobs sit in a trash that [`restore_trash`] empties back).
//!   Any agent of the repository can run it; no host is special.
//! - [`stats`] sizes the repository and each snapshot.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use anyhow::{Context, bail};
use ringvault_common::gc::ListingShort;
use ringvault_common::retention::{self, Group, Item, Policy};
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{Content, EntryKind};
use ringvault_common::wire::{MAX_HAS_IDS, SweepReport};
use ringvault_common::{ChunkId, NodeId, SnapshotId};

use crate::client::ClientError;
use crate::repo::Repo;

/// What [`forget`] decided and did.
#[derive(Debug)]
pub struct ForgetReport {
    /// Per group (host, paths): kept with reasons, and removed.
    pub groups: Vec<Group>,
    /// Whether records were deleted (not a dry run).
    pub applied: bool,
}

/// Applies `policy` to the repository's snapshots (only those of `host`
/// when given, as the agent does for itself) and, unless `dry_run`,
/// deletes the records it does not keep.
///
/// # Errors
/// An empty policy (it would keep nothing: refused, as restic does), a
/// certificate without the admin role (unless `dry_run`), or the cluster
/// failing to list or delete.
pub async fn forget(
    repo: &Arc<Repo>,
    policy: &Policy,
    host: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<ForgetReport> {
    if !dry_run {
        repo.require_admin("forget")?;
    }
    let snapshots = repo.snapshots().await?;
    let items: Vec<Item> = snapshots
        .iter()
        .filter(|(_, s)| host.is_none_or(|h| s.host == h))
        .map(|(id, s)| Item {
            id: *id,
            time_ns: s.time_ns,
            host: s.host.clone(),
            paths: s.paths.iter().map(|p| path_key(p)).collect(),
            tags: s.tags.clone(),
        })
        .collect();
    let groups = retention::apply(policy, &items).context("retention policy")?;
    if !dry_run {
        for id in groups.iter().flat_map(|g| &g.remove) {
            repo.cluster
                .delete_snapshot(*id)
                .await
                .with_context(|| format!("forgetting snapshot {}", id.short()))?;
        }
    }
    Ok(ForgetReport {
        groups,
        applied: !dry_run,
    })
}

/// A source path as text, one to one: UTF-8 without backslashes as is,
/// anything else escaped (`\xNN`, `\\`), so two different byte paths never
/// share a retention group.
fn path_key(path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(s) if !s.contains('\\') => s.to_owned(),
        _ => path.escape_ascii().to_string(),
    }
}

/// Every chunk (tree blobs and file chunks) the snapshots reach, and the
/// trees read.
struct Reach {
    /// Per snapshot, the distinct chunks it reaches.
    per_snapshot: Vec<HashSet<ChunkId>>,
    /// Logical bytes (file sizes) per snapshot.
    logical: Vec<u64>,
    /// File contents, by chunk list, with their size (for dedup figures).
    files: HashMap<Vec<ChunkId>, u64>,
}

/// Walks every snapshot's trees, reading each distinct tree once.
///
/// # Errors
/// When a tree cannot be read: prune must not guess what is live.
async fn reach(repo: &Arc<Repo>, snapshots: &[(SnapshotId, Snapshot)]) -> anyhow::Result<Reach> {
    // Per tree: the chunks under it (its own blobs included), and the
    // logical bytes under it.
    let mut trees: HashMap<ChunkId, (Arc<HashSet<ChunkId>>, u64)> = HashMap::new();
    let mut files: HashMap<Vec<ChunkId>, u64> = HashMap::new();
    let mut out = Reach {
        per_snapshot: Vec::new(),
        logical: Vec::new(),
        files: HashMap::new(),
    };
    for (_, snap) in snapshots {
        let (set, bytes) = walk(repo, snap.root, &mut trees, &mut files).await?;
        out.per_snapshot.push((*set).clone());
        out.logical.push(bytes);
    }
    out.files = files;
    Ok(out)
}

/// The chunks and logical bytes under tree `root` (post-order, iterative),
/// memoized in `trees`.
async fn walk(
    repo: &Arc<Repo>,
    root: ChunkId,
    trees: &mut HashMap<ChunkId, (Arc<HashSet<ChunkId>>, u64)>,
    files: &mut HashMap<Vec<ChunkId>, u64>,
) -> anyhow::Result<(Arc<HashSet<ChunkId>>, u64)> {
    // Depth-first: a tree is summed once all its subtrees are.
    let mut stack: VecDeque<(ChunkId, bool)> = VecDeque::from([(root, false)]);
    let mut decoded: HashMap<ChunkId, (ringvault_common::tree::Tree, Vec<ChunkId>)> =
        HashMap::new();
    while let Some((id, expanded)) = stack.pop_back() {
        if trees.contains_key(&id) {
            continue;
        }
        if !expanded {
            let (tree, parts) = repo
                .read_tree_and_parts(id)
                .await
                .with_context(|| format!("reading tree {id}"))?;
            stack.push_back((id, true));
            for e in &tree.entries {
                if let Content::Subtree(t) = e.content
                    && !trees.contains_key(&t)
                {
                    stack.push_back((t, false));
                }
            }
            decoded.insert(id, (tree, parts));
            continue;
        }
        let Some((tree, parts)) = decoded.remove(&id) else {
            continue;
        };
        let mut set: HashSet<ChunkId> = HashSet::new();
        set.insert(id);
        set.extend(parts);
        let mut bytes = 0u64;
        for e in tree.entries {
            match e.content {
                Content::Chunks(refs) => {
                    if e.kind == EntryKind::File {
                        bytes += e.size;
                    }
                    let ids: Vec<ChunkId> = refs.iter().map(|c| c.id).collect();
                    set.extend(ids.iter().copied());
                    files.entry(ids).or_insert(e.size);
                }
                Content::Subtree(t) => {
                    let (sub, b) = trees
                        .get(&t)
                        .cloned()
                        .with_context(|| format!("subtree {t} of {id} was not walked"))?;
                    set.extend(sub.iter().copied());
                    bytes += b;
                }
                Content::None | Content::Symlink(_) => {}
            }
        }
        trees.insert(id, (Arc::new(set), bytes));
    }
    trees
        .get(&root)
        .cloned()
        .with_context(|| format!("tree {root} was not walked"))
}

/// Why [`prune`] swept nothing.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The certificate may not prune ([`ClientError::Forbidden`], its
    /// source: the exit-code table finds it in the chain).
    #[error("prune refused")]
    Forbidden(#[source] ClientError),
    /// No server could start a round, each with why.
    #[error("no server could start a prune round: {}", crate::cluster::describe(.0))]
    NoRound(Vec<(NodeId, ClientError)>),
    /// The snapshots could not be listed.
    #[error("listing the snapshots: {0:#}")]
    Listing(anyhow::Error),
    /// Too few servers of the round answered the listing for it to hold
    /// every stored snapshot.
    #[error(transparent)]
    ListingShort(#[from] ListingShort),
    /// A tree could not be read, so what is live is not known.
    #[error("{0:#}")]
    TreeUnreadable(anyhow::Error),
}

/// What [`prune`] did, summed over the servers.
#[derive(Debug, Default)]
pub struct PruneReport {
    /// Snapshots whose chunks were marked live.
    pub snapshots: usize,
    /// Distinct live chunks.
    pub live_chunks: usize,
    /// Servers that swept.
    pub swept: Vec<NodeId>,
    /// Servers that could not take part, with why (their chunks wait for
    /// the next prune).
    pub skipped: Vec<(NodeId, ClientError)>,
    /// The sweeps' figures, summed.
    pub sweep: SweepReport,
}

/// Runs one mark-and-sweep round (see the module docs). `grace_s`: only
/// chunks unreferenced for this long go to the trash; `trash_keep_s`:
/// trash older than this is dropped for good.
///
/// # Errors
/// [`PruneError`]: a certificate without the admin role, no server able to
/// start a round, snapshots that cannot be listed, or not by enough
/// servers of the round ([`ListingShort`]), or a tree that cannot be read
/// (nothing is swept then; the rounds begun stay until the next prune
/// replaces them, and backups meanwhile ask for every chunk they reuse).
pub async fn prune(
    repo: &Arc<Repo>,
    grace_s: u64,
    trash_keep_s: u64,
) -> Result<PruneReport, PruneError> {
    repo.require_admin("prune").map_err(PruneError::Forbidden)?;
    let cluster = &repo.cluster;
    let round = u64::from_le_bytes(crate::repo::random::<8>());
    let mut report = PruneReport::default();
    let mut begun = Vec::new();
    for (node, _, _) in cluster.servers() {
        match cluster.begin_prune(node, round).await {
            Ok(()) => begun.push(node),
            Err(e) => report.skipped.push((node, e)),
        }
    }
    if begun.is_empty() {
        return Err(PruneError::NoRound(report.skipped));
    }
    // Listed after every round began: a snapshot stored later has its
    // chunks protected by the round instead. The listing must reach enough
    // of those servers to meet every write quorum, or a snapshot could be
    // missed and its chunks swept.
    let listed = repo.snapshot_list().await.map_err(PruneError::Listing)?;
    let map = cluster.map();
    let servers: Vec<NodeId> = map.nodes.iter().map(|n| n.id).collect();
    ringvault_common::gc::check_listing_quorum(
        &servers,
        map.write_quorum,
        &begun,
        &listed.answered,
    )?;
    let snapshots = listed.snapshots;
    let reach = reach(repo, &snapshots)
        .await
        .map_err(PruneError::TreeUnreadable)?;
    let live: HashSet<ChunkId> = reach.per_snapshot.iter().flatten().copied().collect();
    report.snapshots = snapshots.len();
    report.live_chunks = live.len();
    let live: Vec<ChunkId> = live.into_iter().collect();
    let mut marked = Vec::new();
    'nodes: for node in begun {
        for part in live.chunks(MAX_HAS_IDS) {
            if let Err(e) = cluster.prune_mark(node, round, part.to_vec()).await {
                report.skipped.push((node, e));
                continue 'nodes;
            }
        }
        marked.push(node);
    }
    for node in marked {
        match cluster
            .prune_sweep(node, round, grace_s, trash_keep_s)
            .await
        {
            Ok(s) => {
                report.swept.push(node);
                let t = &mut report.sweep;
                t.partitions += s.partitions;
                t.skipped += s.skipped;
                t.noted += s.noted;
                t.cleared += s.cleared;
                t.trashed += s.trashed;
                t.trashed_bytes += s.trashed_bytes;
                t.expired += s.expired;
                t.expired_bytes += s.expired_bytes;
            }
            Err(e) => report.skipped.push((node, e)),
        }
    }
    Ok(report)
}

/// Moves every trashed blob of the repository back, on every reachable
/// server; returns how many came back.
///
/// # Errors
/// A certificate without the admin role, or no server answering.
pub async fn restore_trash(repo: &Arc<Repo>) -> anyhow::Result<u64> {
    repo.require_admin("restoring the trash")?;
    let mut total = 0;
    let mut answered = 0;
    let mut errors = Vec::new();
    for (node, _, _) in repo.cluster.servers() {
        match repo.cluster.restore_trash(node).await {
            Ok(n) => {
                total += n;
                answered += 1;
            }
            Err(e) => errors.push(format!("{node}: {e}")),
        }
    }
    if answered == 0 {
        bail!("no server answered: {}", errors.join("; "));
    }
    Ok(total)
}

/// Sizes of the repository and of each snapshot.
#[derive(Debug, Default)]
pub struct Stats {
    /// Per snapshot, oldest first.
    pub snapshots: Vec<SnapshotStats>,
    /// Sum of every snapshot's logical bytes.
    pub logical_bytes: u64,
    /// Logical bytes of the distinct file contents (files with equal chunk
    /// lists count once).
    pub unique_file_bytes: u64,
    /// Distinct chunks (tree blobs and file chunks).
    pub chunks: usize,
    /// Sealed bytes of the distinct chunks, one replica.
    pub stored_bytes: u64,
    /// N: replicas of each.
    pub replicas: u32,
}

/// One snapshot's sizes.
#[derive(Debug)]
pub struct SnapshotStats {
    /// Its id.
    pub id: SnapshotId,
    /// When it was taken, ns since the Unix epoch.
    pub time_ns: i64,
    /// Its host.
    pub host: String,
    /// Bytes of all its files.
    pub logical_bytes: u64,
    /// Distinct chunks it reaches.
    pub chunks: usize,
    /// Their sealed bytes.
    pub stored_bytes: u64,
    /// Sealed bytes of chunks no other snapshot reaches: what forgetting it
    /// alone frees, per replica.
    pub exclusive_bytes: u64,
}

impl Stats {
    /// Logical bytes per distinct file byte: what deduplication across
    /// snapshots and files saves (1.0: nothing). Deduplication inside files
    /// and between different files' chunks is not counted.
    pub fn dedup_ratio(&self) -> f64 {
        ratio(self.logical_bytes, self.unique_file_bytes)
    }

    /// Distinct file bytes per stored byte: compression (and sub-file
    /// deduplication), after encryption overhead.
    pub fn compression_ratio(&self) -> f64 {
        ratio(self.unique_file_bytes, self.stored_bytes)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// Computes [`Stats`]: walks every snapshot and asks the servers the
/// sealed size of every chunk (metadata only).
///
/// # Errors
/// When snapshots or trees cannot be read, or no server answers.
pub async fn stats(repo: &Arc<Repo>) -> anyhow::Result<Stats> {
    let snapshots = repo.snapshots().await?;
    let reach = reach(repo, &snapshots).await?;
    let mut refs: HashMap<ChunkId, u32> = HashMap::new();
    for set in &reach.per_snapshot {
        for id in set {
            *refs.entry(*id).or_default() += 1;
        }
    }
    let ids: Vec<ChunkId> = refs.keys().copied().collect();
    let sizes = repo.cluster.sizes(&ids).await?;
    let size: HashMap<ChunkId, u64> = ids
        .iter()
        .copied()
        .zip(sizes.into_iter().map(u64::from))
        .collect();
    let mut out = Stats {
        chunks: ids.len(),
        stored_bytes: size.values().sum(),
        unique_file_bytes: reach.files.values().sum(),
        replicas: repo.cluster.map().replicas,
        ..Stats::default()
    };
    for (i, (id, snap)) in snapshots.iter().enumerate() {
        let set = &reach.per_snapshot[i];
        out.logical_bytes += reach.logical[i];
        out.snapshots.push(SnapshotStats {
            id: *id,
            time_ns: snap.time_ns,
            host: snap.host.clone(),
            logical_bytes: reach.logical[i],
            chunks: set.len(),
            stored_bytes: set.iter().map(|c| size[c]).sum(),
            exclusive_bytes: set.iter().filter(|c| refs[*c] == 1).map(|c| size[c]).sum(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_keys_are_one_to_one() {
        let paths: [&[u8]; 5] = [
            b"/home/a",
            b"/home/\xe9",
            b"/home/\\xe9",
            b"/home/\\",
            "/hömé".as_bytes(),
        ];
        let keys: HashSet<String> = paths.iter().map(|p| path_key(p)).collect();
        assert_eq!(keys.len(), paths.len());
        assert_eq!(path_key(b"/home/a"), "/home/a");
        assert_eq!(path_key("/hömé".as_bytes()), "/hömé");
    }
}
