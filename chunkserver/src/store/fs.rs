//! [`FsStore`], the file-system chunk store: opening (see the module docs,
//! "Opening"), closing, and the checked reads and quarantine moves its
//! calls share.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use redb::{Database, ReadableTable};
#[cfg(test)]
use ringvault_common::{ChunkId, RepoId};

use super::health::{Health, Watermark};
use super::index::Index;
#[cfg(test)]
use super::keys::blob_key;
use super::keys::{
    BLOBS, Location, QUARANTINE, RECORDS, TRASH, UNREFERENCED, index_err, malformed, timed_value,
    unix_seconds,
};
use super::migrate::migrate_v1;
use super::recover::{self, RebuildReport};
use super::segment::{SegmentWriter, WriteJob, list_segments, segment_path, sync_dir};
use super::summaries::{Summaries, Totals, lock, summarize};
use super::{FsStoreOptions, HealthStore, StoreError};

/// The file-system chunk store: segment files plus a redb index.
pub struct FsStore {
    pub(super) dir: PathBuf,
    pub(super) index: Arc<Index>,
    pub(super) health: Arc<Health>,
    pub(super) quota_bytes: u64,
    pub(super) watermark: Watermark,
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    pub(super) readers: Mutex<HashMap<u32, Arc<File>>>,
    pub(super) summaries: Arc<Mutex<Summaries>>,
    pub(super) totals: Arc<Totals>,
    /// The segment the writer appends to; every lower one is sealed.
    pub(super) current: Arc<AtomicU32>,
    /// Sum of the segment file sizes, bytes.
    pub(super) disk: Arc<AtomicU64>,
    /// Held by the one compaction running.
    pub(super) compacting: Mutex<()>,
}

impl FsStore {
    /// Opens (or creates) a store in `dir`; see the module docs, "Opening".
    /// Verifies the index (time linear in its size), rebuilds it from the
    /// segments if it is missing beside them (time linear in the store's
    /// size), moves a first-layout blob index to the current one, then
    /// checks every entry against the segment files and builds the
    /// summaries by one more scan: time linear in the number of blobs.
    /// Empty segment files (left by a crash or an earlier version) are
    /// deleted; the first put starts a new segment.
    ///
    /// # Errors
    /// [`StoreError::IndexCorrupt`] when the index fails its integrity check
    /// or cannot be opened as a database; [`StoreError`] if the directory or
    /// index cannot be opened otherwise (another process holding it, for
    /// one), or [`StoreError::Index`] if the index holds a malformed entry.
    pub fn open(dir: &Path, options: FsStoreOptions) -> Result<Self, StoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let seg_dir = dir.join("segments");
        let new_dir = !dir.exists();
        let new_seg_dir = !seg_dir.exists();
        std::fs::create_dir_all(&seg_dir).map_err(io(&seg_dir))?;
        let tag = dir.join(ringvault_common::DATA_DIR_TAG);
        if !tag.exists() {
            std::fs::write(
                &tag,
                "This directory holds a ringvault chunk server's data; ringvault's agent does not back it up.\n",
            )
            .map_err(io(&tag))?;
        }
        let db_path = dir.join("index.redb");
        let mut segments = list_segments(&seg_dir)?;
        for (&n, _) in segments.iter().filter(|(_, size)| **size == 0) {
            let path = segment_path(&seg_dir, n);
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        segments.retain(|_, size| *size > 0);
        // A missing index, or one a crash left unfinished while redb made
        // it (nothing was ever committed in it), beside segments is
        // rebuilt: never start empty over blobs. An unfinished one alone
        // is moved aside and started afresh (an empty file, redb fills).
        let unfinished = unfinished_index(&db_path).map_err(io(&db_path))?;
        if (unfinished || !db_path.exists()) && !segments.is_empty() {
            tracing::warn!(dir = %dir.display(), segments = segments.len(), "the index is missing beside segment files; rebuilding it from them");
            let report = recover::rebuild(dir, &db_path)?;
            log_rebuild(&report);
        } else if unfinished && std::fs::metadata(&db_path).is_ok_and(|m| m.len() > 0) {
            tracing::warn!(path = %db_path.display(), "the index was never finished (a crash while it was made); starting it afresh");
            let report = recover::rebuild(dir, &db_path)?;
            log_rebuild(&report);
        }
        let new_index = !db_path.exists();
        let mut db = Database::create(&db_path).map_err(|e| corrupt_or_index(&db_path, e))?;
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(path = %db_path.display(), "the index failed its integrity check and redb repaired it from its last good commit; repair pulls what it lost from the other servers")
            }
            Err(e) => return Err(corrupt_or_index(&db_path, e)),
        }
        {
            let txn = db.begin_write().map_err(index_err)?;
            let migrated = migrate_v1(&txn)?;
            txn.open_table(BLOBS).map_err(index_err)?;
            txn.open_table(QUARANTINE).map_err(index_err)?;
            txn.open_table(TRASH).map_err(index_err)?;
            txn.open_table(UNREFERENCED).map_err(index_err)?;
            txn.open_table(RECORDS).map_err(index_err)?;
            txn.commit().map_err(index_err)?;
            if let Some(n) = migrated {
                tracing::info!(blobs = n, "moved the blob index to the id-first layout");
            }
        }
        // A new store's directory entries are durable before it takes a
        // write, as a rotated segment's are.
        if new_dir && let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        if new_dir || new_seg_dir || new_index {
            sync_dir(dir)?;
            sync_dir(&seg_dir)?;
        }
        let check = recover::check_segments(&db, &segments)?;
        for (repo, id) in &check.quarantined {
            tracing::warn!(chunk = %id, repo = %repo, "blob quarantined at start: its segment file is missing or too short; repair fetches a good copy");
        }
        if !check.quarantined.is_empty() || check.trash_dropped > 0 {
            tracing::warn!(
                quarantined = check.quarantined.len(),
                trash_dropped = check.trash_dropped,
                "index entries point at segment bytes that are not there"
            );
        }
        let summaries = summarize(&db)?;
        let totals = summaries.totals.clone();
        let summaries = Arc::new(Mutex::new(summaries));
        let last = segments.keys().next_back().copied().unwrap_or(0);
        let disk = Arc::new(AtomicU64::new(segments.values().sum()));
        // The next segment: `last` and below are sealed.
        let current = Arc::new(AtomicU32::new(last.saturating_add(1)));
        let health = Arc::new(Health::default());
        let index = Arc::new(Index::new(&db_path, db, health.clone()));
        let (tx, rx) = mpsc::channel();
        let quota_bytes = options.quota_bytes;
        let watermark = options.watermark;
        let writer = SegmentWriter {
            dir: seg_dir,
            index: index.clone(),
            options,
            segment: last,
            file: None,
            size: 0,
            committed: 0,
            summaries: summaries.clone(),
            current: current.clone(),
            disk: disk.clone(),
            health: health.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || writer.run(rx))
            .map_err(io(dir))?;
        let store = Self {
            dir: dir.to_owned(),
            index,
            health,
            quota_bytes,
            watermark,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            readers: Mutex::new(HashMap::new()),
            summaries,
            totals,
            current,
            disk,
            compacting: Mutex::new(()),
        };
        store.health();
        Ok(store)
    }

    /// Rebuilds the index of the store in `dir` from its segment files,
    /// moving an existing index file aside first (see [`recover`]). Only
    /// blobs come back; snapshot records and keys come back from the other
    /// servers by record sync once the server runs. Call it on a stopped
    /// server whose index is damaged ([`StoreError::IndexCorrupt`]).
    ///
    /// # Errors
    /// [`StoreError::Io`] if a segment or the directory cannot be read or
    /// the new index put in place, [`StoreError::Index`] if it cannot be
    /// written. An index moved aside before the error stays aside.
    pub fn rebuild_index(dir: &Path) -> Result<RebuildReport, StoreError> {
        let report = recover::rebuild(dir, &dir.join("index.redb"))?;
        log_rebuild(&report);
        Ok(report)
    }

    /// Stops the group-commit thread after the writes already queued.
    pub fn close(&self) {
        self.writer.lock().take();
        let thread = self.writer_thread.lock().take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    pub(super) fn segment_path(&self, n: u32) -> PathBuf {
        segment_path(&self.dir.join("segments"), n)
    }

    fn reader(&self, n: u32) -> Result<Arc<File>, StoreError> {
        let mut readers = self.readers.lock();
        if let Some(f) = readers.get(&n) {
            return Ok(f.clone());
        }
        let path = self.segment_path(n);
        let f = Arc::new(File::open(&path).map_err(|source| StoreError::Io { path, source })?);
        readers.insert(n, f.clone());
        Ok(f)
    }

    #[cfg(test)]
    pub(super) fn location(
        &self,
        repo: &RepoId,
        id: &ChunkId,
    ) -> Result<Option<Location>, StoreError> {
        self.location_of(&blob_key(repo, id))
    }

    /// Where the blob under index key `key` is, if held.
    pub(super) fn location_of(&self, key: &[u8]) -> Result<Option<Location>, StoreError> {
        let txn = self.index.begin_read()?;
        let table = txn.open_table(BLOBS).map_err(index_err)?;
        let found = table.get(key).map_err(index_err)?;
        match found {
            None => Ok(None),
            Some(v) => Location::decode(v.value()).map(Some).ok_or_else(malformed),
        }
    }

    /// Reads and checks the held blob under `key`, found at `loc`. If
    /// `loc`'s segment file is gone, looks the key up once more and reads
    /// there (a compaction may have moved it); a segment still gone where
    /// the index points was lost, and the blob is bad.
    pub(super) fn read_held(&self, key: &[u8], loc: Location) -> Result<HeldRead, StoreError> {
        let (loc, bytes) = match self.read_checked(&loc) {
            Ok(bytes) => (loc, bytes),
            Err(e) if segment_gone(&e) => match self.location_of(key)? {
                None => return Ok(HeldRead::Gone),
                Some(now) => match self.read_checked(&now) {
                    Ok(bytes) => (now, bytes),
                    Err(e) if segment_gone(&e) => {
                        tracing::warn!(segment = now.segment, error = %e, "a segment file the index names is missing");
                        (now, None)
                    }
                    Err(e) => return Err(e),
                },
            },
            Err(e) => return Err(e),
        };
        Ok(match bytes {
            Some(bytes) => HeldRead::Good(bytes),
            None => HeldRead::Bad(loc),
        })
    }

    /// Reads a blob's bytes and checks them: `None` if they fail their
    /// checksum or the segment is too short to hold them.
    pub(super) fn read_checked(&self, loc: &Location) -> Result<Option<Vec<u8>>, StoreError> {
        let file = self.reader(loc.segment)?;
        let len = loc.len as usize;
        // Read into the Vec's spare capacity: no zeroing of a buffer that
        // the read overwrites (3.6% of a server's CPU when it sends large
        // chunks, `docs/performance.md`).
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = loc.offset + buf.len() as u64;
            match rustix::io::pread(&*file, rustix::buffer::spare_capacity(&mut buf), at) {
                // The segment ends before the blob does.
                Ok(0) => return Ok(None),
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(StoreError::Io {
                        path: self.segment_path(loc.segment),
                        source: e.into(),
                    });
                }
            }
        }
        // The capacity may exceed `len`: what was read past the blob goes.
        buf.truncate(len);
        Ok((*blake3::hash(&buf).as_bytes() == loc.checksum).then_some(buf))
    }

    /// Moves `key`'s index entry to quarantine if it is held and, with
    /// `expect`, still at that location (a blob deleted and stored again
    /// since it was read is a different copy). Returns whether it moved.
    pub(super) fn quarantine_key(
        &self,
        key: &[u8],
        expect: Option<&Location>,
    ) -> Result<bool, StoreError> {
        let mut summaries = lock(&self.summaries);
        let txn = self.index.begin_write()?;
        let (len, fresh) = {
            let mut blobs = txn.open_table(BLOBS).map_err(index_err)?;
            let loc = match blobs.get(key).map_err(index_err)? {
                None => return Ok(false),
                Some(v) => Location::decode(v.value()).ok_or_else(malformed)?,
            };
            if expect.is_some_and(|e| *e != loc) {
                return Ok(false);
            }
            blobs.remove(key).map_err(index_err)?;
            let value = timed_value(&loc, unix_seconds());
            let mut quarantine = txn.open_table(QUARANTINE).map_err(index_err)?;
            let fresh = quarantine
                .insert(key, value.as_slice())
                .map_err(index_err)?
                .is_none();
            (loc.len, fresh)
        };
        self.index.commit(txn)?;
        summaries.remove(key, len);
        if fresh {
            summaries.add_quarantined();
        }
        Ok(true)
    }

    /// Sends a job to the group-commit thread and waits for its answer.
    pub(super) fn send<T>(
        &self,
        job: impl FnOnce(mpsc::SyncSender<Result<T, StoreError>>) -> WriteJob,
    ) -> Result<T, StoreError> {
        let (done, wait) = mpsc::sync_channel(1);
        let sender = self.writer.lock().clone().ok_or(StoreError::Closed)?;
        sender.send(job(done)).map_err(|_| StoreError::Closed)?;
        wait.recv().map_err(|_| StoreError::Closed)?
    }
}

/// What [`FsStore::read_held`] found.
pub(super) enum HeldRead {
    /// The blob is no longer held.
    Gone,
    /// Its bytes, which passed their checksum.
    Good(Vec<u8>),
    /// Its location; the bytes there fail their checksum or are missing.
    Bad(Location),
}

/// Whether an error is a segment file not found: deleted by a compaction
/// after its location was read, or lost.
fn segment_gone(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

impl Drop for FsStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Bytes of redb's magic number, at the start of its file.
pub(super) const REDB_MAGIC_LEN: usize = 9;

/// Whether the index file at `path` exists but was never finished: it is
/// empty, or its magic number is still zeros. redb makes a database by
/// growing the file, writing and syncing its header without the magic
/// number, then writing the magic number and syncing again; it commits
/// nothing before that. A crash in between (a power loss while a new
/// store starts) leaves such a file, which redb then refuses as "not a
/// redb database". A magic number that is neither redb's nor zeros is
/// damage, not this.
///
/// # Errors
/// When the file exists but cannot be read.
fn unfinished_index(path: &Path) -> std::io::Result<bool> {
    use std::io::Read as _;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut magic = Vec::with_capacity(REDB_MAGIC_LEN);
    file.take(REDB_MAGIC_LEN as u64).read_to_end(&mut magic)?;
    Ok(magic.iter().all(|&b| b == 0))
}

/// The error for an index file redb cannot open or verify: damaged
/// ([`StoreError::IndexCorrupt`]) unless redb says why otherwise (held by
/// another process, an I/O error such as a permission).
fn corrupt_or_index(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match &e {
        redb::Error::DatabaseAlreadyOpen
        | redb::Error::LockProtocolMismatch
        | redb::Error::TransactionInProgress
        | redb::Error::UpgradeRequired(_) => index_err(e),
        redb::Error::Io(io)
            if !matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            index_err(e)
        }
        _ => StoreError::IndexCorrupt {
            path: path.to_owned(),
            source: e,
        },
    }
}

/// Logs what a rebuild of the index did.
fn log_rebuild(r: &RebuildReport) {
    tracing::warn!(
        segments = r.segments,
        blobs = r.blobs,
        bytes = r.bytes,
        skipped = r.skipped,
        moved_aside = ?r.moved_aside,
        "rebuilt the index from the segment files; snapshot records, keys and tombstones come back from the other servers by record sync, and blobs deleted or trashed since their segment was last compacted are held again until the next prune"
    );
}
