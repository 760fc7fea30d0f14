//! The backup pipeline.
//!
//! ```text
//! walker thread: scan (lstat, readdir) -> index lookup -> read + FastCDC + BLAKE3
//!      | chunks: slices of read buffers, which hold a byte budget (UPLOAD_BUDGET)
//! uploader task: dedup (seen set) -> batched has-query -> seal (blocking pool) -> put
//! ```
//!
//! Memory stays flat whatever the data: read buffers (and the chunks cut
//! from them, which share them) hold at most `UPLOAD_BUDGET` bytes, sealed
//! batches in flight at most `upload-concurrency` x `BATCH_BYTES`, the set
//! of chunk ids seen at most `SEEN_LIMIT` ids. Changed files' fingerprints
//! go to a temporary file (an [`UpdateLog`]) until the snapshot is stored,
//! and then into the local index.
//!
//! The walker builds each directory's tree bottom-up and hands trees to the
//! uploader like chunks, so the root tree id is known when the walk ends.
//! The snapshot record is written only after every chunk and tree has W
//! durable copies, and the local index is updated only after that: a crash
//! at any point leaves no snapshot that names missing data.
//!
//! Chunks the backup does not upload or ask for (a file's chunk list from
//! the local index, a subtree the watching agent takes from the previous
//! snapshot) may have been deleted by a prune since they were confirmed.
//! The backup reads every server's garbage-collection fence first
//! ([`ringvault_common::gc`]); index entries and the previous snapshot are
//! trusted as they are only when confirmed under an equal, quiet fence.
//! Otherwise their chunks are asked for (batched has-queries, which also
//! protect them from a prune round running now), a file whose chunk is
//! missing is read again, and the previous snapshot's subtrees are not
//! reused (a full scan). The record is then stored under the fence read at
//! the start: a server where a prune round began or ended since refuses it,
//! and the backup runs again ([`FENCE_ATTEMPTS`] at most), this time asking
//! for everything it relies on.
//!
//! A file's entry takes its size, times and mode from the `fstat` after the
//! read whose chunks it lists, when that equals the one before the read and
//! the bytes read; so a file's size is always the sum of its chunks'
//! lengths, which the entry records (tree version 2). Each entry also
//! records its owner's user and group names (looked up once per id) and
//! its extended attributes in every namespace the process may read
//! ([`crate::fsmeta`]); hard links are told by `device`, `inode` and
//! `links` (`st_nlink`), as restic does, not by an entry kind.
//!
//! The parts, one file each: `walk` (directories, entries, trees), `read`
//! (the byte budget, packs, cutting files into chunks), `upload` (dedup,
//! has-queries, sealing, puts) and `progress` (counters and the terminal
//! line); this file runs them and stores the snapshot record.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use ringvault_common::chunker::Chunker;
use ringvault_common::snapshot::{Snapshot, Summary};
use ringvault_common::tree::Tree;
use ringvault_common::wire::MAX_HAS_IDS;
use ringvault_common::{ChunkId, SnapshotId};
use tokio::sync::{Semaphore, mpsc};

use crate::client::ClientError;
use crate::exclude::Excludes;
use crate::fsmeta::Names;
use crate::host::{host_name, now_ns};
use crate::index::{LocalIndex, UpdateLog};
use crate::repo::{Repo, random};
use crate::watch::DirtySet;

mod progress;
mod read;
mod sparse;
mod upload;
mod walk;

pub use progress::Counters;
use progress::Progress;
use upload::upload_loop;
use walk::{WalkError, Walker};

/// Bytes of read buffers (and the chunks cut from them) waiting for upload,
/// at most.
const UPLOAD_BUDGET: usize = 32 << 20;
/// Times a backup runs when prune rounds keep moving the fence under it.
pub const FENCE_ATTEMPTS: usize = 5;
/// Has-queries in flight while confirming index entries.
const CONFIRM_CONCURRENCY: usize = 4;
/// Test hook: when set, a backup waits, just before it stores its snapshot
/// record, until the file this names exists (at most 120 s), after creating
/// the file named by it with `.waiting` appended. The end-to-end tests use
/// it to run a prune at that very moment.
pub const HOLD_BEFORE_RECORD_ENV: &str = "RINGVAULT_TEST_HOLD_BEFORE_RECORD";

/// What to back up.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Source paths.
    pub paths: Vec<PathBuf>,
    /// Tags for the snapshot.
    pub tags: Vec<String>,
    /// The snapshot's recorded time, ns since the Unix epoch, instead of
    /// the time the backup starts (`backup --time`).
    pub time_ns: Option<i64>,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Only these paths changed since the last snapshot of the same paths
    /// (from a watcher): everything else is taken from that snapshot's
    /// trees without being listed. `None` scans everything.
    pub dirty: Option<DirtySet>,
    /// Where to keep the running totals, for someone else to read.
    pub counters: Option<Arc<Counters>>,
    /// Store no snapshot when the tree is the previous snapshot's (the
    /// agent's periodic and lost-event scans); the report says `unchanged`.
    pub skip_unchanged: bool,
    /// The previous snapshot of these paths from this host, when the caller
    /// knows it (the agent): spares listing every snapshot to find it.
    pub parent: Option<(SnapshotId, Snapshot)>,
}

/// What a backup did.
#[derive(Debug)]
pub struct BackupReport {
    /// The new snapshot's id (the previous one's when `unchanged`).
    pub id: SnapshotId,
    /// Nothing differed from the previous snapshot and, as asked, none was
    /// stored.
    pub unchanged: bool,
    /// The snapshot record.
    pub snapshot: Snapshot,
    /// Files and directories skipped, with why.
    pub errors: Vec<(PathBuf, String)>,
    /// UDP bytes the agent sent during the backup (all requests, QUIC
    /// overhead included).
    pub wire_bytes: u64,
}

/// Runs one backup of `opts.paths` into the repository: again, checking
/// every chunk it relies on, when a prune moved the fence meanwhile (see
/// the module docs).
///
/// # Errors
/// When a source path cannot be read at all, the cluster cannot take the
/// data (quorum not reached, unreachable), or the snapshot cannot be stored
/// (also after [`FENCE_ATTEMPTS`] tries with prunes running each time).
/// Unreadable files inside the sources are reported in the result instead.
pub async fn backup(repo: Arc<Repo>, opts: BackupOptions) -> anyhow::Result<BackupReport> {
    let mut attempt = 1;
    loop {
        match backup_once(repo.clone(), &opts).await {
            Err(e)
                if attempt < FENCE_ATTEMPTS
                    && e.chain().any(|c| {
                        matches!(
                            c.downcast_ref::<ClientError>(),
                            Some(ClientError::FenceMoved { .. })
                        )
                    }) =>
            {
                tracing::warn!(attempt, error = %format!("{e:#}"), "the snapshot record was refused under the fence read at the start; checking the chunks again and trying again");
                let back = repo.cluster.probe_routed_around().await;
                if !back.is_empty() {
                    tracing::info!(?back, "servers routed around answer again");
                }
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn backup_once(repo: Arc<Repo>, opts: &BackupOptions) -> anyhow::Result<BackupReport> {
    let started = Instant::now();
    let time_ns = opts.time_ns.unwrap_or_else(now_ns);
    let wire_before = repo.cluster.wire_bytes_sent();
    let mut sources = Vec::new();
    for p in &opts.paths {
        let abs = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
        let name = abs
            .file_name()
            .with_context(|| format!("{} has no last component to name it by", abs.display()))?
            .as_bytes()
            .to_vec();
        std::fs::symlink_metadata(&abs)
            .with_context(|| format!("cannot read {}", abs.display()))?;
        if sources.iter().any(|(_, n): &(PathBuf, Vec<u8>)| *n == name) {
            bail!(
                "two source paths end in {:?}; back them up separately",
                String::from_utf8_lossy(&name)
            );
        }
        sources.push((abs, name));
    }
    let host = host_name(&repo.config.host);
    let paths: Vec<serde_bytes::ByteBuf> = sources
        .iter()
        .map(|(p, _)| serde_bytes::ByteBuf::from(p.as_os_str().as_bytes().to_vec()))
        .collect();
    let parent = match &opts.parent {
        Some((id, s)) if s.host == host && s.paths == paths => Some((*id, s.clone())),
        _ => repo
            .snapshots()
            .await?
            .into_iter()
            .rev()
            .find(|(_, s)| s.host == host && s.paths == paths),
    };
    // Read before anything is checked: see the module docs.
    let fences = repo.cluster.gc_fences().await;
    let fence_tag = fences.quiet_tag();
    let index = Arc::new(LocalIndex::open(&repo.state_dir)?);
    // The parent's subtrees are reused only while nothing can have been
    // deleted since it was stored.
    let parent_vouched = match (&parent, fence_tag) {
        (Some((id, _)), Some(tag)) => index.snapshot_fence(id)? == Some(tag),
        _ => false,
    };
    if opts.dirty.is_some() && parent.is_some() && !parent_vouched {
        tracing::info!("a prune may have run since the last snapshot: scanning everything");
    }
    let confirmed = Arc::new(confirm_index_chunks(&repo, &index, &sources, fence_tag).await?);
    // With a dirty set, unchanged subtrees come from the parent's trees.
    let previous = match (&opts.dirty, &parent) {
        (Some(_), Some((_, snap))) if parent_vouched => Some(
            repo.read_tree(snap.root)
                .await
                .context("reading the previous snapshot's root tree")?
                .entries,
        ),
        _ => None,
    };
    let dirty = opts.dirty.clone().filter(|_| previous.is_some());
    let parent_snapshot = parent.clone();
    let parent = parent.map(|(id, _)| id);

    let counters = opts.counters.clone().unwrap_or_default();
    counters.reset();
    let budget = Arc::new(Semaphore::new(UPLOAD_BUDGET >> 10));
    let (tx, rx) = mpsc::channel::<Upload>(1024);
    let uploader = tokio::spawn(upload_loop(repo.clone(), rx, counters.clone()));
    let progress = opts.progress.then(|| Progress::start(counters.clone()));

    let walker = {
        let repo = repo.clone();
        let index = index.clone();
        let counters = counters.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let updates = UpdateLog::new(&repo.state_dir)?;
            let excludes = Excludes::new(&repo.config, vec![crate::repo::state_dir(&repo.config)?]);
            let mut w = Walker {
                chunker: Chunker::new(repo.chunker)?,
                repo,
                index: index.reader()?,
                tx,
                budget,
                handle,
                counters,
                updates,
                errors: Vec::new(),
                pack: None,
                dirty,
                excludes,
                fence_tag,
                confirmed,
                names: Names::default(),
                zero_runs: None,
            };
            let previous = previous.unwrap_or_default();
            let mut root = Tree::default();
            for (path, name) in &sources {
                let meta = std::fs::symlink_metadata(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                w.excludes
                    .enter_root(path, meta.dev())
                    .map_err(anyhow::Error::from)?;
                let prev = previous.iter().find(|e| e.name == *name);
                match w.entry(path, name.clone(), &meta, prev) {
                    Ok(Some(e)) => root.entries.push(e),
                    Ok(None) => {}
                    Err(WalkError::Fatal(e)) => return Err(e),
                    Err(WalkError::Skip(e)) => bail!("cannot back up {}: {e}", path.display()),
                }
            }
            root.sort();
            let root_id = w.store_tree(root)?;
            w.flush_pack().map_err(WalkError::into_anyhow)?;
            Ok((root_id, w.updates, w.errors))
        })
    };
    let walked = walker.await.context("the scanner stopped")?;
    // The walker dropped its sender: the uploader drains and ends.
    let uploaded = uploader.await.context("the uploader stopped")?;
    if let Some(p) = progress {
        p.finish();
    }
    // An uploader failure (quorum not reached, say) also stops the walker;
    // report the cause, not the walker's "uploader stopped".
    let (root, updates, errors) = match (walked, uploaded) {
        (_, Err(e)) => return Err(e),
        (walked, Ok(())) => walked?,
    };

    if let Some((parent_id, parent_snapshot)) = parent_snapshot
        && opts.skip_unchanged
        && parent_snapshot.root == root
    {
        // The same tree: everything it names is stored already, so the
        // index may vouch for what was read.
        tokio::task::spawn_blocking(move || index.commit(updates))
            .await
            .context("index task")?
            .context("updating the local index")?;
        return Ok(BackupReport {
            id: parent_id,
            unchanged: true,
            snapshot: parent_snapshot,
            errors,
            wire_bytes: repo.cluster.wire_bytes_sent().saturating_sub(wire_before),
        });
    }
    let c = &counters;
    let snapshot = Snapshot {
        time_ns,
        host,
        agent: repo.agent.clone(),
        paths,
        root,
        parent,
        tags: opts.tags.clone(),
        summary: Summary {
            files: c.files.load(Ordering::Relaxed),
            dirs: c.dirs.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            bytes_read: c.bytes_read.load(Ordering::Relaxed),
            new_bytes: c.new_bytes.load(Ordering::Relaxed),
            sent_bytes: c.sent_bytes.load(Ordering::Relaxed),
            duration_ns: started.elapsed().as_nanos() as u64,
            errors: errors.len() as u64,
        },
    };
    let (id, record) = snapshot.seal(&repo.keys, random());
    hold_before_record().await;
    repo.cluster
        .put_snapshot(id, Bytes::from(record), &fences)
        .await
        .context("storing the snapshot record")?;
    let wire_bytes = repo.cluster.wire_bytes_sent().saturating_sub(wire_before);
    tokio::task::spawn_blocking(move || {
        index.commit(updates)?;
        index.set_snapshot_fence(&id, fence_tag.unwrap_or(0))
    })
    .await
    .context("index task")?
    .context("updating the local index")?;
    Ok(BackupReport {
        id,
        unchanged: false,
        snapshot,
        errors,
        wire_bytes,
    })
}

/// The chunks of index entries under `sources` that the fence reading
/// `fence_tag` does not vouch for and that the cluster holds (has-queries,
/// [`MAX_HAS_IDS`] ids each, [`CONFIRM_CONCURRENCY`] at once). A present
/// answer also protects the chunk from a prune round running now.
///
/// # Errors
/// When the index cannot be read or the cluster does not answer.
async fn confirm_index_chunks(
    repo: &Arc<Repo>,
    index: &Arc<LocalIndex>,
    sources: &[(PathBuf, Vec<u8>)],
    fence_tag: Option<u64>,
) -> anyhow::Result<HashSet<ChunkId>> {
    let (index, paths) = (
        index.clone(),
        sources
            .iter()
            .map(|(p, _)| p.as_os_str().as_bytes().to_vec())
            .collect::<Vec<_>>(),
    );
    let ids = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<ChunkId>> {
        let reader = index.reader()?;
        let mut ids = HashSet::new();
        for path in &paths {
            reader.for_each_under(path, |_, rec| {
                if fence_tag != Some(rec.fence) {
                    ids.extend(rec.chunks.iter().map(|c| c.id));
                }
            })?;
        }
        Ok(ids.into_iter().collect())
    })
    .await
    .context("index task")??;
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    tracing::info!(
        chunks = ids.len(),
        "confirming the local index's chunks with the cluster"
    );
    let parts: Vec<Vec<ChunkId>> = ids.chunks(MAX_HAS_IDS).map(<[_]>::to_vec).collect();
    let mut asks = futures::stream::iter(parts)
        .map(|part| {
            let repo = repo.clone();
            async move {
                let present = repo.cluster.has(&part).await?;
                anyhow::Ok(part.into_iter().zip(present).collect::<Vec<_>>())
            }
        })
        .buffer_unordered(CONFIRM_CONCURRENCY);
    let mut confirmed = HashSet::new();
    while let Some(answer) = asks.next().await {
        let answer =
            answer.context("asking the cluster which chunks of the local index it holds")?;
        confirmed.extend(answer.into_iter().filter(|(_, p)| *p).map(|(id, _)| id));
    }
    Ok(confirmed)
}

/// See [`HOLD_BEFORE_RECORD_ENV`].
async fn hold_before_record() {
    test_hold(HOLD_BEFORE_RECORD_ENV).await;
}

/// A test hook: when environment variable `var` names a path, writes
/// `<path>.waiting` and waits until `<path>` exists (two minutes at most).
pub(crate) async fn test_hold(var: &str) {
    let Some(release) = std::env::var_os(var).map(PathBuf::from) else {
        return;
    };
    let mut waiting = release.clone().into_os_string();
    waiting.push(".waiting");
    if let Err(e) = std::fs::write(&waiting, b"") {
        tracing::warn!(error = %e, "test hook: cannot signal the hold");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !release.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A chunk (or tree) on its way to the cluster. Its bytes share a [`Pinned`]
/// buffer, which holds its share of the upload budget until the last chunk
/// cut from it is stored or found present.
struct Upload {
    id: ChunkId,
    data: Bytes,
}

/// A read buffer and the budget it occupies: what memory the pipeline
/// really pins, whole buffers rather than the chunks cut from them.
struct Pinned {
    data: Vec<u8>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Pinned {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// Lossy display of raw name bytes.
pub fn display_name(name: &[u8]) -> String {
    OsStr::from_bytes(name).to_string_lossy().into_owned()
}
