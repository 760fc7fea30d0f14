//! Browsing snapshots: every version of a path, the difference between two
//! snapshots, finding paths by glob, and a file's bytes.
//!
//! Paths inside a snapshot are `/`-separated and start with the last
//! component of a backed-up path (`Documents/notes.txt`). Trees are read
//! through [`Repo::read_tree`] (and so its on-disk cache) and memoized per
//! command, so subtrees shared by many snapshots are read once.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, bail};
use ringvault_common::tree::diff::{self as tree_diff, Differs};
use ringvault_common::tree::{Content, Entry, EntryKind, Tree};
use ringvault_common::{ChunkId, SnapshotId};
use serde::Serialize;

use crate::repo::Repo;

/// Trees read by one command, by id: each is read from the cluster (or the
/// tree cache) at most once.
#[derive(Default)]
pub struct Trees {
    memo: HashMap<ChunkId, Arc<Tree>>,
    /// Trees read (not served from this memo).
    pub reads: u64,
}

impl Trees {
    /// Tree `id`.
    ///
    /// # Errors
    /// When it cannot be fetched or decoded.
    pub async fn get(&mut self, repo: &Arc<Repo>, id: ChunkId) -> anyhow::Result<Arc<Tree>> {
        if let Some(t) = self.memo.get(&id) {
            return Ok(t.clone());
        }
        let tree = Arc::new(repo.read_tree(id).await?);
        self.reads += 1;
        self.memo.insert(id, tree.clone());
        Ok(tree)
    }
}

/// Splits a snapshot path into its components (empty ones dropped).
pub fn components(path: &str) -> Vec<&[u8]> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::as_bytes)
        .collect()
}

/// The entry at `path` under tree `root`, or `None` when there is none.
///
/// # Errors
/// When a tree on the way cannot be read.
pub async fn lookup(
    repo: &Arc<Repo>,
    trees: &mut Trees,
    root: ChunkId,
    path: &str,
) -> anyhow::Result<Option<Entry>> {
    let parts = components(path);
    let mut dir = root;
    for (i, part) in parts.iter().enumerate() {
        let tree = trees.get(repo, dir).await?;
        let Ok(at) = tree
            .entries
            .binary_search_by(|e| e.name.as_slice().cmp(part))
        else {
            return Ok(None);
        };
        let entry = &tree.entries[at];
        if i + 1 == parts.len() {
            return Ok(Some(entry.clone()));
        }
        match &entry.content {
            Content::Subtree(id) => dir = *id,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// A short content digest of an entry, repository-scoped: a file's is
/// BLAKE3 over its chunk ids (equal content, equal digest; no file is
/// read), a directory's its tree id, a symlink's BLAKE3 of its target.
/// 16 hex digits.
pub fn digest(entry: &Entry) -> String {
    let hash = match &entry.content {
        Content::Chunks(ids) => {
            let mut h = blake3::Hasher::new();
            for c in ids {
                h.update(&c.id.0);
            }
            h.finalize()
        }
        Content::Subtree(id) => blake3::Hash::from_bytes(id.0),
        Content::Symlink(target) => blake3::hash(target),
        Content::None => blake3::hash(&[]),
    };
    hash.to_hex()[..16].to_owned()
}

/// How an entry changed between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Present now, absent before.
    Added,
    /// Present before, absent now.
    Removed,
    /// Content differs (and maybe metadata).
    Content,
    /// Only metadata differs.
    Metadata,
}

impl From<Differs> for Change {
    fn from(d: Differs) -> Self {
        match d {
            Differs::Content => Change::Content,
            Differs::Metadata => Change::Metadata,
        }
    }
}

/// How `after` differs from `before` ([`tree_diff::differs`]: content
/// first, then kind, mode, owner, mtime, size and xattrs).
fn change(before: &Entry, after: &Entry) -> Option<Change> {
    tree_diff::differs(before, after).map(Change::from)
}

/// One distinct version of a path ([`versions`]).
#[derive(Clone, Debug, Serialize)]
pub struct Version {
    /// The first snapshot holding this version (hex id).
    pub snapshot: String,
    /// Its time, ns since the Unix epoch.
    pub time_ns: i64,
    /// Its host.
    pub host: String,
    /// How it differs from the version before (`added` for the first, or
    /// after an absence; `removed` rows have no entry).
    pub change: Change,
    /// Snapshots holding this version from here on, in a row.
    pub snapshots: usize,
    /// Entry kind (none for `removed`).
    pub kind: Option<EntryKind>,
    /// Size, bytes.
    pub size: u64,
    /// Modification time, ns.
    pub mtime_ns: i64,
    /// Permission bits.
    pub mode: u32,
    /// Content digest ([`digest`]).
    pub digest: String,
}

/// Every distinct version of `path` across the snapshots, oldest first: a
/// row when it appears, changes (content or metadata) or disappears.
///
/// # Errors
/// When snapshots cannot be listed or a tree cannot be read.
pub async fn versions(repo: &Arc<Repo>, path: &str) -> anyhow::Result<Vec<Version>> {
    if components(path).is_empty() {
        bail!("give a path inside the snapshots, e.g. Documents/notes.txt");
    }
    let mut trees = Trees::default();
    let mut out: Vec<Version> = Vec::new();
    let mut last: Option<Entry> = None;
    let mut seen = false;
    for (id, snap) in repo.snapshots().await? {
        let entry = lookup(repo, &mut trees, snap.root, path).await?;
        let row = |change, e: Option<&Entry>| Version {
            snapshot: id.to_hex(),
            time_ns: snap.time_ns,
            host: snap.host.clone(),
            change,
            snapshots: 1,
            kind: e.map(|e| e.kind),
            size: e.map_or(0, |e| e.size),
            mtime_ns: e.map_or(0, |e| e.mtime_ns),
            mode: e.map_or(0, |e| e.mode),
            digest: e.map(digest).unwrap_or_default(),
        };
        let changed = match (&last, &entry) {
            (None, Some(e)) => Some(row(Change::Added, Some(e))),
            (Some(_), None) => Some(row(Change::Removed, None)),
            (Some(before), Some(after)) => change(before, after).map(|c| row(c, Some(after))),
            (None, None) => None,
        };
        match changed {
            Some(v) => out.push(v),
            None if entry.is_some() || seen => {
                if let Some(v) = out.last_mut() {
                    v.snapshots += 1;
                }
            }
            None => {}
        }
        seen |= entry.is_some();
        last = entry;
    }
    if out.is_empty() {
        bail!("no snapshot holds {path:?}");
    }
    Ok(out)
}

/// One difference between two snapshots.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    /// Path inside the snapshots.
    pub path: String,
    /// What changed.
    pub change: Change,
    /// Entry kind, after (before, for `removed`).
    pub kind: EntryKind,
    /// Size before, bytes (0 when added).
    pub size_before: u64,
    /// Size after, bytes (0 when removed).
    pub size_after: u64,
}

/// What [`diff`] found.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    /// The two snapshots, hex ids.
    pub from: String,
    /// The newer one.
    pub to: String,
    /// Differences in path order. A directory added or removed is one
    /// row; its contents are not listed.
    pub changes: Vec<Difference>,
    /// Trees read to find them: unchanged subtrees (equal tree ids) are
    /// skipped, so this follows the size of the change.
    pub trees_read: u64,
    /// Of those, trees fetched from the cluster (the rest came from the
    /// on-disk tree cache).
    pub trees_fetched: u64,
}

/// The differences between snapshots `from` and `to`, under `path` (all
/// of them when empty).
///
/// # Errors
/// When a tree cannot be read, or `path` is in neither snapshot.
pub async fn diff(
    repo: &Arc<Repo>,
    from: (SnapshotId, ChunkId),
    to: (SnapshotId, ChunkId),
    path: &str,
) -> anyhow::Result<DiffReport> {
    let mut trees = Trees::default();
    let (_, fetched_before) = repo.tree_cache.counts();
    let mut changes = Vec::new();
    let prefix = components(path)
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("/");
    if prefix.is_empty() {
        diff_trees(repo, &mut trees, from.1, to.1, "", &mut changes).await?;
    } else {
        let a = lookup(repo, &mut trees, from.1, path).await?;
        let b = lookup(repo, &mut trees, to.1, path).await?;
        if a.is_none() && b.is_none() {
            bail!("neither snapshot holds {path:?}");
        }
        let parent = prefix.rsplit_once('/').map_or("", |(p, _)| p).to_owned();
        diff_entries(
            repo,
            &mut trees,
            a.as_ref(),
            b.as_ref(),
            &parent,
            &mut changes,
        )
        .await?;
    }
    Ok(DiffReport {
        from: from.0.to_hex(),
        to: to.0.to_hex(),
        changes,
        trees_read: trees.reads,
        trees_fetched: repo.tree_cache.counts().1 - fetched_before,
    })
}

fn join(dir: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if dir.is_empty() {
        name.into_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Compares two entries of the same name under `dir`
/// ([`tree_diff::change`]), descending into directories whose trees
/// differ.
async fn diff_entries(
    repo: &Arc<Repo>,
    trees: &mut Trees,
    a: Option<&Entry>,
    b: Option<&Entry>,
    dir: &str,
    out: &mut Vec<Difference>,
) -> anyhow::Result<()> {
    match tree_diff::change(a, b) {
        Some(c) => report(repo, trees, c, dir, out).await,
        None => Ok(()),
    }
}

/// Compares two directory trees: the changes of [`tree_diff::diff`], in
/// name order, each directory's followed by those below it.
async fn diff_trees(
    repo: &Arc<Repo>,
    trees: &mut Trees,
    a: ChunkId,
    b: ChunkId,
    dir: &str,
    out: &mut Vec<Difference>,
) -> anyhow::Result<()> {
    if a == b {
        return Ok(());
    }
    let ta = trees.get(repo, a).await?;
    let tb = trees.get(repo, b).await?;
    for c in tree_diff::diff(&ta, &tb) {
        report(repo, trees, c, dir, out).await?;
    }
    Ok(())
}

/// Adds the row of one change under `dir` to `out`, and for a directory
/// whose trees differ, the rows below it.
async fn report(
    repo: &Arc<Repo>,
    trees: &mut Trees,
    c: tree_diff::Change<'_>,
    dir: &str,
    out: &mut Vec<Difference>,
) -> anyhow::Result<()> {
    let row = |e: &Entry, change, before: u64, after: u64| Difference {
        path: join(dir, &e.name),
        change,
        kind: e.kind,
        size_before: before,
        size_after: after,
    };
    match c {
        tree_diff::Change::Added(b) => out.push(row(b, Change::Added, 0, b.size)),
        tree_diff::Change::Removed(a) => out.push(row(a, Change::Removed, a.size, 0)),
        tree_diff::Change::Modified { old, new, differs } => {
            out.push(row(new, differs.into(), old.size, new.size));
        }
        tree_diff::Change::Dir {
            old,
            new,
            metadata,
            subtrees,
        } => {
            if metadata {
                out.push(row(new, Change::Metadata, old.size, new.size));
            }
            if let Some((ta, tb)) = subtrees {
                let path = join(dir, &new.name);
                Box::pin(diff_trees(repo, trees, ta, tb, &path, out)).await?;
            }
        }
    }
    Ok(())
}

/// One path [`find`] matched.
#[derive(Clone, Debug, Serialize)]
pub struct Found {
    /// The snapshot, hex id.
    pub snapshot: String,
    /// Its time, ns.
    pub time_ns: i64,
    /// Path inside it.
    pub path: String,
    /// Entry kind.
    pub kind: EntryKind,
    /// Size, bytes.
    pub size: u64,
    /// Modification time, ns.
    pub mtime_ns: i64,
}

/// Paths matching `pattern` in each of `snapshots`: a glob (`*`, `?`,
/// `[...]`, `**`, as in gitignore; the `globset` crate) matched against the
/// whole path inside the snapshot when it holds a `/`, else against the
/// file name (as restic's `find` does). Subtrees shared by several
/// snapshots are searched once.
///
/// # Errors
/// A bad pattern, or a tree that cannot be read.
pub async fn find(
    repo: &Arc<Repo>,
    pattern: &str,
    snapshots: &[(SnapshotId, ringvault_common::snapshot::Snapshot)],
) -> anyhow::Result<Vec<Found>> {
    let glob = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .with_context(|| format!("bad pattern {pattern:?}"))?
        .compile_matcher();
    let whole_path = pattern.contains('/');
    let mut trees = Trees::default();
    // Per tree id: the matches under it (relative paths, entries).
    let mut memo: HashMap<ChunkId, Arc<Vec<(String, Entry)>>> = HashMap::new();
    let mut out = Vec::new();
    for (id, snap) in snapshots {
        let found = if whole_path {
            let root = trees.get(repo, snap.root).await?;
            let all = collect_all(repo, &mut trees, &root).await?;
            Arc::new(all.into_iter().filter(|(p, _)| glob.is_match(p)).collect())
        } else {
            search(repo, &mut trees, &mut memo, snap.root, &glob).await?
        };
        for (path, e) in found.iter() {
            out.push(Found {
                snapshot: id.to_hex(),
                time_ns: snap.time_ns,
                path: path.clone(),
                kind: e.kind,
                size: e.size,
                mtime_ns: e.mtime_ns,
            });
        }
    }
    Ok(out)
}

/// The entries under tree `id` whose names match, paths relative to it.
async fn search(
    repo: &Arc<Repo>,
    trees: &mut Trees,
    memo: &mut HashMap<ChunkId, Arc<Vec<(String, Entry)>>>,
    id: ChunkId,
    glob: &globset::GlobMatcher,
) -> anyhow::Result<Arc<Vec<(String, Entry)>>> {
    if let Some(found) = memo.get(&id) {
        return Ok(found.clone());
    }
    let tree = trees.get(repo, id).await?;
    let mut found = Vec::new();
    for e in &tree.entries {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        if glob.is_match(&name) {
            found.push((name.clone(), e.clone()));
        }
        if let Content::Subtree(sub) = &e.content {
            let below = Box::pin(search(repo, trees, memo, *sub, glob)).await?;
            found.extend(
                below
                    .iter()
                    .map(|(p, e)| (format!("{name}/{p}"), e.clone())),
            );
        }
    }
    let found = Arc::new(found);
    memo.insert(id, found.clone());
    Ok(found)
}

/// Every path under `tree` (relative), with its entry, in path order.
async fn collect_all(
    repo: &Arc<Repo>,
    trees: &mut Trees,
    tree: &Tree,
) -> anyhow::Result<Vec<(String, Entry)>> {
    let mut out = Vec::new();
    let mut stack: Vec<(String, Arc<Tree>)> = vec![(String::new(), Arc::new(tree.clone()))];
    while let Some((dir, t)) = stack.pop() {
        for e in &t.entries {
            let path = join(&dir, &e.name);
            if let Content::Subtree(sub) = &e.content {
                stack.push((path.clone(), trees.get(repo, *sub).await?));
            }
            out.push((path, e.clone()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Writes the file at `path` in the snapshot with root tree `root` to
/// `out`, chunk by chunk; returns the bytes written.
///
/// # Errors
/// No such path, not a file, a chunk that cannot be read, or a write error.
pub async fn cat(
    repo: &Arc<Repo>,
    root: ChunkId,
    path: &str,
    out: &mut (impl Write + Send),
) -> anyhow::Result<u64> {
    let mut trees = Trees::default();
    let entry = lookup(repo, &mut trees, root, path)
        .await?
        .with_context(|| format!("no {path:?} in the snapshot"))?;
    if !matches!(entry.content, Content::Chunks(_)) {
        bail!("{path:?} is not a file");
    }
    let mut written = 0u64;
    for id in entry.chunk_ids() {
        let bytes = repo.read_chunk(id).await?;
        out.write_all(&bytes).context("writing the file out")?;
        written += bytes.len() as u64;
    }
    out.flush().context("writing the file out")?;
    Ok(written)
}
