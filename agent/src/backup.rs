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

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use ringvault_common::chunker::Chunker;
use ringvault_common::seal;
use ringvault_common::snapshot::{Snapshot, Summary};
use ringvault_common::tree::{ChunkRef, Content, Entry, EntryKind, TREE_PART_BYTES, Tree};
use ringvault_common::wire::MAX_HAS_IDS;
use ringvault_common::{ChunkId, SnapshotId};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::client::ClientError;
use crate::exclude::Excludes;
use crate::fsmeta::{Names, read_xattrs};
use crate::fsutil::times;
use crate::host::{host_name, now_ns};
use crate::index::{FileRecord, IndexReader, LocalIndex, UpdateLog};
use crate::repo::{Repo, random};
use crate::watch::DirtySet;

mod sparse;

/// Bytes of read buffers (and the chunks cut from them) waiting for upload,
/// at most.
const UPLOAD_BUDGET: usize = 32 << 20;
/// A batch is sent when it holds this many chunks...
const BATCH_CHUNKS: usize = 512;
/// ...or this many bytes.
const BATCH_BYTES: usize = 4 << 20;
/// How long a partial batch waits for more chunks before it is sent.
const BATCH_LINGER: Duration = Duration::from_millis(20);
/// Read size for large files, bytes.
const READ_BLOCK: usize = 4 << 20;
/// Small files and trees share read buffers ("packs") of this size, bytes:
/// one allocation and one budget reservation for dozens of them rather than
/// one each (53k small allocations of every size left glibc's heap
/// fragmented: 35 MB resident beyond the live heap).
const PACK_BYTES: usize = 2 << 20;
/// Files and trees up to this size go into a pack, bytes.
const PACK_ITEM_MAX: usize = 256 << 10;
/// A file modified this close to its read is "racy": recorded in the
/// snapshot but not in the index, so the next backup reads it again (git's
/// racy-clean rule; 2 s covers file systems with coarse timestamps).
const RACY_WINDOW_NS: i64 = 2_000_000_000;
/// Tries to read a file that keeps changing before giving up on it.
const READ_ATTEMPTS: usize = 3;
/// The seen-set is cleared past this many ids (a bounded cache: forgetting
/// only costs a has-query).
const SEEN_LIMIT: usize = 1 << 18;
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

/// A backup's running totals, readable while it runs.
#[derive(Default, Debug)]
pub struct Counters {
    /// Files scanned.
    pub files: AtomicU64,
    /// Directories listed.
    pub dirs: AtomicU64,
    /// Bytes in the files scanned.
    pub bytes: AtomicU64,
    /// Bytes read from files on disk (holes of sparse files are not read,
    /// so not counted).
    pub bytes_read: AtomicU64,
    /// Bytes of chunks the cluster lacked.
    pub new_bytes: AtomicU64,
    /// Sealed bytes sent.
    pub sent_bytes: AtomicU64,
}

impl Counters {
    /// Sets every total back to 0 (a backup starting again).
    fn reset(&self) {
        for c in [
            &self.files,
            &self.dirs,
            &self.bytes,
            &self.bytes_read,
            &self.new_bytes,
            &self.sent_bytes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
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
                            Some(ClientError::FenceMoved(_))
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

enum WalkError {
    /// Skip this entry, report it, go on.
    Skip(String),
    /// Stop the backup.
    Fatal(anyhow::Error),
}

impl WalkError {
    fn into_anyhow(self) -> anyhow::Error {
        match self {
            WalkError::Fatal(e) => e,
            WalkError::Skip(e) => anyhow::anyhow!(e),
        }
    }
}

impl From<std::io::Error> for WalkError {
    fn from(e: std::io::Error) -> Self {
        WalkError::Skip(e.to_string())
    }
}

struct Walker {
    repo: Arc<Repo>,
    chunker: Chunker,
    index: IndexReader,
    tx: mpsc::Sender<Upload>,
    budget: Arc<Semaphore>,
    handle: tokio::runtime::Handle,
    counters: Arc<Counters>,
    updates: UpdateLog,
    errors: Vec<(PathBuf, String)>,
    pack: Option<Pack>,
    /// What changed since the previous snapshot, when a watcher knows.
    dirty: Option<DirtySet>,
    excludes: Excludes,
    /// The tag of the fence read at the start, when it can vouch.
    fence_tag: Option<u64>,
    /// Chunks of index entries the fence does not vouch for that the
    /// cluster confirmed present.
    confirmed: Arc<HashSet<ChunkId>>,
    /// Owner and group names met so far.
    names: Names,
    /// The chunk of a long zero run, once a sparse file needed it.
    zero_runs: Option<sparse::ZeroRuns>,
}

/// A read buffer being filled with small files and trees. Their ids are
/// known (and in their trees) at once; their bytes go to the uploader when
/// the pack is full or before the walker waits for budget.
struct Pack {
    buf: Vec<u8>,
    permit: tokio::sync::OwnedSemaphorePermit,
    /// Chunk ids and their byte ranges in `buf`.
    items: Vec<(ChunkId, std::ops::Range<usize>)>,
}

impl Walker {
    /// Waits for room for a buffer of `bytes` in the upload budget, after
    /// handing over the pack (whose budget could be what is missing).
    fn reserve(&mut self, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit, WalkError> {
        self.flush_pack()?;
        self.reserve_unflushed(bytes)
    }

    fn reserve_unflushed(
        &self,
        bytes: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, WalkError> {
        // The budget is counted in KiB; one buffer never waits for more than
        // the whole budget.
        let permits = bytes.div_ceil(1024).clamp(1, UPLOAD_BUDGET >> 10) as u32;
        self.handle
            .block_on(self.budget.clone().acquire_many_owned(permits))
            .map_err(|_| WalkError::Fatal(anyhow::anyhow!("upload budget closed")))
    }

    /// Takes the current pack if it has room for `len` more bytes, else
    /// hands it over and starts a new one; put it back in `self.pack`.
    fn pack_with_room(&mut self, len: usize) -> Result<Pack, WalkError> {
        if let Some(pack) = self.pack.take() {
            if pack.buf.capacity() - pack.buf.len() >= len {
                return Ok(pack);
            }
            self.pack = Some(pack);
            self.flush_pack()?;
        }
        Ok(Pack {
            buf: Vec::with_capacity(PACK_BYTES.max(len)),
            permit: self.reserve_unflushed(PACK_BYTES.max(len))?,
            items: Vec::new(),
        })
    }

    /// Hands the pack's chunks to the uploader.
    fn flush_pack(&mut self) -> Result<(), WalkError> {
        let Some(pack) = self.pack.take() else {
            return Ok(());
        };
        let bytes = Bytes::from_owner(Pinned {
            data: pack.buf,
            _permit: pack.permit,
        });
        for (id, range) in pack.items {
            self.send(id, bytes.slice(range))?;
        }
        Ok(())
    }

    /// Reads a small file (`size` bytes by its metadata) into the pack and
    /// cuts it; `None` when it turned out larger (read it the long way).
    fn read_small(
        &mut self,
        f: &mut File,
        size: usize,
    ) -> Result<Option<Vec<ChunkRef>>, WalkError> {
        let mut pack = self.pack_with_room(size + 1)?;
        let start = pack.buf.len();
        // One byte past the size, to see the end without another read.
        let read = f.take(size as u64 + 1).read_to_end(&mut pack.buf);
        let n = match read {
            Ok(n) if n <= size => n,
            other => {
                pack.buf.truncate(start);
                self.pack = Some(pack);
                other?;
                f.seek(SeekFrom::Start(0))?;
                return Ok(None);
            }
        };
        let mut chunks = Vec::new();
        let mut offset = start;
        while let Some(len) = self.chunker.cut(&pack.buf[offset..], true) {
            let id = self.repo.keys.chunk_id(&pack.buf[offset..offset + len]);
            pack.items.push((id, offset..offset + len));
            chunks.push(chunk_ref(id, len));
            offset += len;
        }
        self.pack = Some(pack);
        self.counters
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(Some(chunks))
    }

    /// The chunk of a long zero run (computed at the first sparse file).
    fn zero_runs(&mut self) -> sparse::ZeroRuns {
        *self
            .zero_runs
            .get_or_insert_with(|| sparse::ZeroRuns::new(&self.chunker, &self.repo.keys))
    }

    /// Hands a chunk to the uploader.
    fn send(&self, id: ChunkId, data: Bytes) -> Result<(), WalkError> {
        self.tx
            .blocking_send(Upload { id, data })
            .map_err(|_| WalkError::Fatal(anyhow::anyhow!("the uploader stopped (see its error)")))
    }

    /// Stores a directory's tree, in several parts when it is too large
    /// for one (see [`Tree::split`]); returns the id the directory entry names.
    fn store_tree(&mut self, tree: Tree) -> anyhow::Result<ChunkId> {
        let encoded = tree.encode();
        if encoded.len() <= TREE_PART_BYTES {
            return self.store_blob(encoded);
        }
        let mut parts = tree.split(TREE_PART_BYTES);
        let mut head = parts.remove(0);
        head.more = parts
            .into_iter()
            .map(|p| self.store_blob(p.encode()))
            .collect::<anyhow::Result<_>>()?;
        self.store_blob(head.encode())
    }

    /// Hands an encoded tree (or tree part) to the uploader; returns its id.
    fn store_blob(&mut self, encoded: Vec<u8>) -> anyhow::Result<ChunkId> {
        if encoded.len() > seal::MAX_PLAINTEXT {
            bail!(
                "a tree of {} bytes is too large for one blob",
                encoded.len()
            );
        }
        let id = self.repo.keys.chunk_id(&encoded);
        if encoded.len() <= PACK_ITEM_MAX {
            let mut pack = self
                .pack_with_room(encoded.len())
                .map_err(WalkError::into_anyhow)?;
            let start = pack.buf.len();
            pack.buf.extend_from_slice(&encoded);
            pack.items.push((id, start..pack.buf.len()));
            self.pack = Some(pack);
            return Ok(id);
        }
        let sent = self.reserve(encoded.len()).and_then(|permit| {
            let data = Bytes::from_owner(Pinned {
                data: encoded,
                _permit: permit,
            });
            self.send(id, data)
        });
        sent.map(|()| id).map_err(WalkError::into_anyhow)
    }

    /// The tree entry for `path`, or `None` when it is skipped (reported).
    /// `prev` is its entry in the previous snapshot, when the walk has a
    /// dirty set: an unchanged directory is then taken from it whole.
    fn entry(
        &mut self,
        path: &Path,
        name: Vec<u8>,
        meta: &std::fs::Metadata,
        prev: Option<&Entry>,
    ) -> Result<Option<Entry>, WalkError> {
        let ft = meta.file_type();
        if let (Some(dirty), Some(prev)) = (&self.dirty, prev)
            && ft.is_dir()
            && prev.kind == EntryKind::Dir
            && !dirty.touches(path)
        {
            return Ok(Some(prev.clone()));
        }
        let prev_subtree = match prev.map(|p| &p.content) {
            Some(Content::Subtree(id)) if self.dirty.is_some() => Some(*id),
            _ => None,
        };
        let mut entry = entry_from(name, meta);
        let content = if ft.is_file() {
            // The metadata that bracketed the read, not the scan's.
            self.file(path, meta).map(|(chunks, read)| {
                let name = std::mem::take(&mut entry.name);
                entry = entry_from(name, &read);
                Content::Chunks(chunks)
            })
        } else if ft.is_dir() {
            entry.kind = EntryKind::Dir;
            entry.size = 0;
            self.dir(path, prev_subtree).map(Content::Subtree)
        } else if ft.is_symlink() {
            entry.kind = EntryKind::Symlink;
            std::fs::read_link(path)
                .map(|t| Content::Symlink(t.into_os_string().into_vec()))
                .map_err(WalkError::from)
        } else {
            entry.kind = if ft.is_fifo() {
                EntryKind::Fifo
            } else if ft.is_char_device() {
                EntryKind::CharDevice
            } else if ft.is_block_device() {
                EntryKind::BlockDevice
            } else {
                EntryKind::Socket
            };
            entry.size = 0;
            Ok(Content::None)
        };
        match content {
            Ok(content) => entry.content = content,
            Err(WalkError::Skip(e)) => {
                self.skip(path, e);
                return Ok(None);
            }
            Err(fatal) => return Err(fatal),
        }
        entry.user = self.names.user(entry.uid);
        entry.group = self.names.group(entry.gid);
        match read_xattrs(path) {
            Ok(xattrs) => entry.xattrs = xattrs,
            // Back up more rather than less: the entry without them.
            Err(e) => {
                let why = format!("reading its extended attributes: {e}");
                tracing::warn!(path = %path.display(), error = %why, "backed up without them");
                self.errors.push((path.to_owned(), why));
            }
        }
        if ft.is_file() {
            self.counters.files.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes.fetch_add(entry.size, Ordering::Relaxed);
        }
        Ok(Some(entry))
    }

    fn skip(&mut self, path: &Path, why: String) {
        tracing::warn!(path = %path.display(), error = %why, "skipped");
        self.errors.push((path.to_owned(), why));
    }

    fn dir(&mut self, path: &Path, prev: Option<ChunkId>) -> Result<ChunkId, WalkError> {
        let prev: Vec<Entry> = match prev {
            Some(id) => {
                let read = self.handle.block_on(self.repo.read_tree(id));
                read.map_err(|e| {
                    WalkError::Fatal(
                        e.context(format!("reading the previous tree of {}", path.display())),
                    )
                })?
                .entries
            }
            None => Vec::new(),
        };
        let mut children: Vec<(Vec<u8>, PathBuf)> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| (e.file_name().into_vec(), e.path())))
            .collect::<Result<_, _>>()?;
        children.sort();
        let pushed = match self.excludes.enter_dir(path) {
            Ok(pushed) => pushed,
            Err(e) => {
                // Back up more rather than less: go on without that file.
                self.skip(&path.join(crate::exclude::IGNORE_FILE), e.to_string());
                false
            }
        };
        let mut tree = Tree::default();
        for (name, child) in children {
            let meta = match std::fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) => {
                    self.skip(&child, e.to_string());
                    continue;
                }
            };
            if self.excludes.skips(&child, &meta) {
                continue;
            }
            // Both lists are sorted by name.
            let p = prev
                .binary_search_by(|e| e.name.as_slice().cmp(&name))
                .ok()
                .map(|i| &prev[i]);
            if let Some(e) = self.entry(&child, name, &meta, p)? {
                tree.entries.push(e);
            }
        }
        self.excludes.leave_dir(pushed);
        self.counters.dirs.fetch_add(1, Ordering::Relaxed);
        self.store_tree(tree).map_err(WalkError::Fatal)
    }

    /// A file's chunk list and the metadata that goes with it: from the
    /// index when its fingerprint is unchanged and its chunks are known to
    /// be stored (see the module docs), else by reading it, with the
    /// metadata of the `fstat` after a read that the file did not change
    /// during.
    fn file(
        &mut self,
        path: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<(Vec<ChunkRef>, std::fs::Metadata), WalkError> {
        let key = path.as_os_str().as_bytes();
        let fence = self.fence_tag.unwrap_or(0);
        if let Some(rec) = self.index.get(key)
            && rec.same_file(&fingerprint(meta, Vec::new()))
            && rec.chunks.iter().all(|c| c.len.is_some())
        {
            let vouched = self.fence_tag == Some(rec.fence);
            if vouched || rec.chunks.iter().all(|c| self.confirmed.contains(&c.id)) {
                if !vouched {
                    // Confirmed under this fence: next time, no question.
                    let rec = FileRecord {
                        fence,
                        ..rec.clone()
                    };
                    self.updates.push(key, &rec).map_err(WalkError::Fatal)?;
                }
                return Ok((rec.chunks, meta.clone()));
            }
            tracing::debug!(path = %path.display(), "a chunk from the index is gone; reading again");
        }
        for _ in 0..READ_ATTEMPTS {
            let read_start = now_ns();
            let (chunks, before, after) = self.read_chunks(path)?;
            let read: u64 = chunks.iter().filter_map(|c| c.len).map(u64::from).sum();
            if fingerprint(&before, Vec::new()).same_file(&fingerprint(&after, Vec::new()))
                && read == after.len()
            {
                let (mtime_ns, _) = times(&after);
                let racy = mtime_ns >= read_start - RACY_WINDOW_NS;
                if !racy {
                    let mut rec = fingerprint(&after, chunks.clone());
                    rec.fence = fence;
                    self.updates.push(key, &rec).map_err(WalkError::Fatal)?;
                }
                return Ok((chunks, after));
            }
            tracing::debug!(path = %path.display(), "changed while read; reading again");
        }
        Err(WalkError::Skip(format!(
            "kept changing while read ({READ_ATTEMPTS} attempts)"
        )))
    }

    /// Reads, chunks and hands over a file; returns its chunks and its
    /// metadata before and after the read.
    fn read_chunks(
        &mut self,
        path: &Path,
    ) -> Result<(Vec<ChunkRef>, std::fs::Metadata, std::fs::Metadata), WalkError> {
        let mut f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let before = f.metadata()?;
        if !before.is_file() {
            return Err(WalkError::Skip("no longer a regular file".into()));
        }
        if before.len() <= PACK_ITEM_MAX as u64
            && let Some(chunks) = self.read_small(&mut f, before.len() as usize)?
        {
            let after = f.metadata()?;
            return Ok((chunks, before, after));
        }
        // Holes are not read: they come back as zeros, cut without the
        // chunker's work where they are long (see `sparse`).
        let holes = sparse::looks_sparse(&before);
        let mut reader = sparse::HoleReader::new(&f, 0, holes);
        let zeros = holes.then(|| self.zero_runs());
        // Each block: the tail of the last one that held no boundary yet,
        // then up to READ_BLOCK fresh bytes (a small file's whole size).
        let mut remaining = before.len();
        let mut carry = Bytes::new();
        let mut chunks = Vec::new();
        loop {
            // One byte past the expected size, to see the end without another
            // read; a file that grew since its stat is read on in full blocks.
            let expected = usize::try_from(remaining).unwrap_or(usize::MAX);
            let want = if expected == 0 {
                READ_BLOCK
            } else {
                expected.min(READ_BLOCK)
            } + 1;
            let permit = self.reserve(carry.len() + want)?;
            let mut block = Vec::with_capacity(carry.len() + want);
            block.extend_from_slice(&carry);
            // The old block's budget is released once its last chunk is.
            drop(std::mem::take(&mut carry));
            let took = reader.take_into(&mut block, want)?;
            let n = took.logical;
            let eof = n < want;
            remaining = remaining.saturating_sub(n as u64);
            self.counters
                .bytes_read
                .fetch_add(took.from_disk as u64, Ordering::Relaxed);
            let block_bytes = Bytes::from_owner(Pinned {
                data: block,
                _permit: permit,
            });
            let (mut offset, mut zero_end) = (0, 0);
            loop {
                let zero = zeros
                    .as_ref()
                    .and_then(|z| z.cut(&block_bytes, offset, &mut zero_end));
                let (len, id) = match zero {
                    Some(cut) => cut,
                    None => match self.chunker.cut(&block_bytes[offset..], eof) {
                        Some(len) => {
                            let id = self.repo.keys.chunk_id(&block_bytes[offset..offset + len]);
                            (len, id)
                        }
                        None => break,
                    },
                };
                let data = block_bytes.slice(offset..offset + len);
                offset += len;
                self.send(id, data)?;
                chunks.push(chunk_ref(id, len));
            }
            if eof {
                break;
            }
            carry = block_bytes.slice(offset..);
        }
        let after = f.metadata()?;
        Ok((chunks, before, after))
    }
}

fn fingerprint(m: &std::fs::Metadata, chunks: Vec<ChunkRef>) -> FileRecord {
    let (mtime_ns, ctime_ns) = times(m);
    FileRecord {
        size: m.len(),
        mtime_ns,
        ctime_ns,
        inode: m.ino(),
        device: m.dev(),
        chunks,
        fence: 0,
    }
}

/// A chunk cut by the chunker (whose chunks are at most 16 MiB, so the
/// length fits).
fn chunk_ref(id: ChunkId, len: usize) -> ChunkRef {
    ChunkRef {
        id,
        len: u32::try_from(len).ok(),
    }
}

/// A tree entry for `name` with the metadata `meta` (content: none yet).
fn entry_from(name: Vec<u8>, meta: &std::fs::Metadata) -> Entry {
    let (mtime_ns, ctime_ns) = times(meta);
    Entry {
        name,
        kind: EntryKind::File,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns,
        ctime_ns,
        size: meta.len(),
        inode: meta.ino(),
        device: meta.dev(),
        rdev: meta.rdev(),
        xattrs: Vec::new(),
        content: Content::None,
        user: Vec::new(),
        group: Vec::new(),
        links: meta.nlink(),
    }
}

/// Receives chunks, skips those seen or held by the cluster, seals and
/// stores the rest, several batches at once.
async fn upload_loop(
    repo: Arc<Repo>,
    mut rx: mpsc::Receiver<Upload>,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let mut seen: HashSet<ChunkId> = HashSet::new();
    let mut batch: Vec<Upload> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut inflight: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let limit = repo.config.upload_concurrency;
    loop {
        // A partial batch goes out when the walker pauses (it may be waiting
        // for budget this very batch holds) as well as when it fills up.
        let (next, idle) = match tokio::time::timeout(BATCH_LINGER, rx.recv()).await {
            Ok(next) => (next, false),
            Err(_) => (None, true),
        };
        let done = next.is_none() && !idle;
        if let Some(u) = next {
            if seen.len() >= SEEN_LIMIT {
                seen.clear();
            }
            if seen.insert(u.id) {
                batch_bytes += u.data.len();
                batch.push(u);
            }
        }
        if !batch.is_empty()
            && (done || idle || batch.len() >= BATCH_CHUNKS || batch_bytes >= BATCH_BYTES)
        {
            while inflight.len() >= limit {
                if let Some(r) = inflight.join_next().await {
                    r.context("upload task")??;
                }
            }
            let work = std::mem::take(&mut batch);
            batch_bytes = 0;
            inflight.spawn(upload_batch(repo.clone(), work, counters.clone()));
        }
        if done {
            break;
        }
    }
    while let Some(r) = inflight.join_next().await {
        r.context("upload task")??;
    }
    Ok(())
}

async fn upload_batch(
    repo: Arc<Repo>,
    batch: Vec<Upload>,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let ids: Vec<ChunkId> = batch.iter().map(|u| u.id).collect();
    let present = repo
        .cluster
        .has(&ids)
        .await
        .context("asking the cluster which chunks it holds")?;
    let missing: Vec<Upload> = batch
        .into_iter()
        .zip(present)
        .filter(|(_, p)| !p)
        .map(|(u, _)| u)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let keys_repo = repo.clone();
    let sealed =
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(ChunkId, Bytes, usize)>> {
            missing
                .iter()
                .map(|u| {
                    let blob = seal::seal(&keys_repo.keys, &u.id, &u.data, random(), true)?;
                    Ok((u.id, Bytes::from(blob), u.data.len()))
                })
                .collect()
        })
        .await
        .context("sealing task")??;
    let plain: u64 = sealed.iter().map(|(_, _, n)| *n as u64).sum();
    let sent: u64 = sealed.iter().map(|(_, b, _)| b.len() as u64).sum();
    repo.cluster
        .put(sealed.into_iter().map(|(id, b, _)| (id, b)).collect())
        .await
        .context("storing chunks")?;
    counters.new_bytes.fetch_add(plain, Ordering::Relaxed);
    counters.sent_bytes.fetch_add(sent, Ordering::Relaxed);
    Ok(())
}

struct Progress {
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(counters: Arc<Counters>) -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let c = &counters;
                b.set_message(format!(
                    "{} files, {} read, {} new, {} sent",
                    c.files.load(Ordering::Relaxed),
                    indicatif::HumanBytes(c.bytes_read.load(Ordering::Relaxed)),
                    indicatif::HumanBytes(c.new_bytes.load(Ordering::Relaxed)),
                    indicatif::HumanBytes(c.sent_bytes.load(Ordering::Relaxed)),
                ));
                b.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// Lossy display of raw name bytes.
pub fn display_name(name: &[u8]) -> String {
    OsStr::from_bytes(name).to_string_lossy().into_owned()
}
