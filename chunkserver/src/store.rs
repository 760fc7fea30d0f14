//! The chunk store: where a server keeps blobs, snapshot records and keys.
//!
//! [`FsStore`] appends blobs to segment files and makes each batch durable
//! with one `fdatasync` (group commit), then records where each blob lives in
//! a redb index and commits that (redb fsyncs its commit). A put is answered
//! only after both. A crash before the index commit leaves unindexed bytes in
//! a segment, never an index entry pointing at bytes that are not on disk; a
//! store reopened after a crash starts a new segment, so a torn tail is
//! never appended to. Every index entry carries a BLAKE3 checksum of its
//! blob, checked on every read.
//!
//! Segment record layout (little endian):
//!
//! ```text
//! "RVR1"  repo_len:u8  repo  id:[u8; 32]  len:u32  checksum:[u8; 32]  blob:[u8; len]
//! ```
//!
//! The header repeats what the index holds so a segment can be scanned to
//! rebuild an index or, for garbage collection, copied live-record by
//! live-record into a new segment (compaction, as Bitcask merges and restic's
//! prune repacks) before the old one is deleted.
//!
//! [`MemStore`] keeps everything in memory, for tests.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use ringvault_common::{ChunkId, RepoId};

/// Errors from a chunk store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A stored blob failed its checksum.
    #[error("blob {id} failed its checksum")]
    Corrupt {
        /// The blob.
        id: ChunkId,
    },
    /// File system I/O failed.
    #[error("I/O on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The index database failed.
    #[error("index: {0}")]
    Index(String),
    /// A different value is already stored under this key.
    #[error("a different record is already stored under this key")]
    Exists,
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// A group commit failed (the whole batch was not stored).
    #[error("group commit failed: {0}")]
    Commit(String),
}

/// Kinds of small records kept beside blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A sealed snapshot record, keyed by snapshot id.
    Snapshot = 1,
    /// The repository's wrapped key, keyed by 32 zero bytes.
    Key = 2,
}

/// A small record as listed: its 32-byte key and its value.
pub type Record = ([u8; 32], Vec<u8>);

/// What a server stores. All calls block; async callers use
/// `spawn_blocking`.
pub trait ChunkStore: Send + Sync + 'static {
    /// Stores blobs durably (fsync'd) before returning. Blobs already held
    /// are skipped. Idempotent.
    ///
    /// # Errors
    /// [`StoreError`]; on error none of the batch may be relied on.
    fn put_blobs(&self, repo: &RepoId, blobs: Vec<(ChunkId, Bytes)>) -> Result<(), StoreError>;

    /// Reads and checks one blob; `None` if not held.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the checksum fails, or I/O errors.
    fn get_blob(&self, repo: &RepoId, id: &ChunkId) -> Result<Option<Bytes>, StoreError>;

    /// Which of `ids` are held.
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index cannot be read.
    fn has(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError>;

    /// Stores a small record durably. With `exclusive`, refuses to replace a
    /// different value ([`StoreError::Exists`]); the same value is fine.
    ///
    /// # Errors
    /// [`StoreError`].
    fn put_record(
        &self,
        kind: RecordKind,
        repo: &RepoId,
        key: &[u8; 32],
        value: &[u8],
        exclusive: bool,
    ) -> Result<(), StoreError>;

    /// One record, if held.
    ///
    /// # Errors
    /// [`StoreError`].
    fn get_record(
        &self,
        kind: RecordKind,
        repo: &RepoId,
        key: &[u8; 32],
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// All records of a kind in a repository, as (key, value).
    ///
    /// # Errors
    /// [`StoreError`].
    fn list_records(&self, kind: RecordKind, repo: &RepoId) -> Result<Vec<Record>, StoreError>;

    /// Number of blobs and their total bytes.
    ///
    /// # Errors
    /// [`StoreError`].
    fn stats(&self) -> Result<(u64, u64), StoreError>;
}

const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const SEGMENT_MAGIC: &[u8; 4] = b"RVR1";
/// Index value: segment u32, offset u64, len u32, checksum 32 bytes.
const LOCATION_LEN: usize = 4 + 8 + 4 + 32;

#[derive(Clone, Copy)]
struct Location {
    segment: u32,
    offset: u64,
    len: u32,
    checksum: [u8; 32],
}

impl Location {
    fn encode(&self) -> [u8; LOCATION_LEN] {
        let mut out = [0u8; LOCATION_LEN];
        out[..4].copy_from_slice(&self.segment.to_le_bytes());
        out[4..12].copy_from_slice(&self.offset.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..].copy_from_slice(&self.checksum);
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LOCATION_LEN {
            return None;
        }
        Some(Self {
            segment: u32::from_le_bytes(b[..4].try_into().ok()?),
            offset: u64::from_le_bytes(b[4..12].try_into().ok()?),
            len: u32::from_le_bytes(b[12..16].try_into().ok()?),
            checksum: b[16..].try_into().ok()?,
        })
    }
}

fn blob_key(repo: &RepoId, id: &ChunkId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + repo.as_str().len() + 32);
    k.push(repo.as_str().len() as u8);
    k.extend_from_slice(repo.as_str().as_bytes());
    k.extend_from_slice(&id.0);
    k
}

fn record_prefix(kind: RecordKind, repo: &RepoId) -> Vec<u8> {
    let mut k = vec![kind as u8, repo.as_str().len() as u8];
    k.extend_from_slice(repo.as_str().as_bytes());
    k
}

fn index_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Index(e.to_string())
}

/// Settings of an [`FsStore`].
#[derive(Clone, Debug)]
pub struct FsStoreOptions {
    /// Most blobs made durable by one fsync.
    pub group_commit_blobs: usize,
    /// Start a new segment past this size, bytes.
    pub segment_bytes: u64,
}

impl Default for FsStoreOptions {
    fn default() -> Self {
        Self {
            group_commit_blobs: 1024,
            segment_bytes: 1 << 30,
        }
    }
}

/// The file-system chunk store: segment files plus a redb index.
pub struct FsStore {
    dir: PathBuf,
    db: Arc<Database>,
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<HashMap<u32, Arc<File>>>,
}

struct WriteJob {
    repo: RepoId,
    blobs: Vec<(ChunkId, Bytes)>,
    done: mpsc::SyncSender<Result<(), StoreError>>,
}

impl FsStore {
    /// Opens (or creates) a store in `dir`, starting a new segment.
    ///
    /// # Errors
    /// [`StoreError`] if the directory or index cannot be opened (another
    /// process holding it, for one).
    pub fn open(dir: &Path, options: FsStoreOptions) -> Result<Self, StoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let seg_dir = dir.join("segments");
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
        let db = Database::create(&db_path).map_err(index_err)?;
        {
            let txn = db.begin_write().map_err(index_err)?;
            txn.open_table(BLOBS).map_err(index_err)?;
            txn.open_table(RECORDS).map_err(index_err)?;
            txn.commit().map_err(index_err)?;
        }
        let mut last = 0u32;
        for entry in std::fs::read_dir(&seg_dir).map_err(io(&seg_dir))? {
            let entry = entry.map_err(io(&seg_dir))?;
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.strip_suffix(".seg"))
                .and_then(|s| s.parse::<u32>().ok())
            {
                last = last.max(n);
            }
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let mut writer = SegmentWriter {
            dir: seg_dir,
            db: db.clone(),
            options,
            segment: last,
            file: None,
            size: 0,
        };
        writer.rotate()?;
        let thread = std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || writer.run(rx))
            .map_err(io(dir))?;
        Ok(Self {
            dir: dir.to_owned(),
            db,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            readers: Mutex::new(HashMap::new()),
        })
    }

    /// Stops the group-commit thread after the writes already queued.
    pub fn close(&self) {
        // A poisoned lock means a writer panicked; there is nothing to drain.
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Some(t) = self.writer_thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }

    fn segment_path(&self, n: u32) -> PathBuf {
        segment_path(&self.dir.join("segments"), n)
    }

    fn reader(&self, n: u32) -> Result<Arc<File>, StoreError> {
        let mut readers = self.readers.lock().map_err(|_| StoreError::Closed)?;
        if let Some(f) = readers.get(&n) {
            return Ok(f.clone());
        }
        let path = self.segment_path(n);
        let f = Arc::new(File::open(&path).map_err(|source| StoreError::Io { path, source })?);
        readers.insert(n, f.clone());
        Ok(f)
    }

    fn location(&self, repo: &RepoId, id: &ChunkId) -> Result<Option<Location>, StoreError> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(BLOBS).map_err(index_err)?;
        let found = table
            .get(blob_key(repo, id).as_slice())
            .map_err(index_err)?;
        match found {
            None => Ok(None),
            Some(v) => Location::decode(v.value())
                .map(Some)
                .ok_or_else(|| StoreError::Index("malformed index entry".into())),
        }
    }
}

impl Drop for FsStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

impl ChunkStore for FsStore {
    fn put_blobs(&self, repo: &RepoId, blobs: Vec<(ChunkId, Bytes)>) -> Result<(), StoreError> {
        if blobs.is_empty() {
            return Ok(());
        }
        let (done, wait) = mpsc::sync_channel(1);
        let sender = self
            .writer
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)?;
        sender
            .send(WriteJob {
                repo: repo.clone(),
                blobs,
                done,
            })
            .map_err(|_| StoreError::Closed)?;
        wait.recv().map_err(|_| StoreError::Closed)?
    }

    fn get_blob(&self, repo: &RepoId, id: &ChunkId) -> Result<Option<Bytes>, StoreError> {
        let Some(loc) = self.location(repo, id)? else {
            return Ok(None);
        };
        let file = self.reader(loc.segment)?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)
            .map_err(|source| StoreError::Io {
                path: self.segment_path(loc.segment),
                source,
            })?;
        if *blake3::hash(&buf).as_bytes() != loc.checksum {
            return Err(StoreError::Corrupt { id: *id });
        }
        Ok(Some(Bytes::from(buf)))
    }

    fn has(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(BLOBS).map_err(index_err)?;
        ids.iter()
            .map(|id| {
                Ok(table
                    .get(blob_key(repo, id).as_slice())
                    .map_err(index_err)?
                    .is_some())
            })
            .collect()
    }

    fn put_record(
        &self,
        kind: RecordKind,
        repo: &RepoId,
        key: &[u8; 32],
        value: &[u8],
        exclusive: bool,
    ) -> Result<(), StoreError> {
        let mut k = record_prefix(kind, repo);
        k.extend_from_slice(key);
        let txn = self.db.begin_write().map_err(index_err)?;
        {
            let mut table = txn.open_table(RECORDS).map_err(index_err)?;
            if exclusive
                && let Some(old) = table.get(k.as_slice()).map_err(index_err)?
                && old.value() != value
            {
                return Err(StoreError::Exists);
            }
            table.insert(k.as_slice(), value).map_err(index_err)?;
        }
        txn.commit().map_err(index_err)
    }

    fn get_record(
        &self,
        kind: RecordKind,
        repo: &RepoId,
        key: &[u8; 32],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut k = record_prefix(kind, repo);
        k.extend_from_slice(key);
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(RECORDS).map_err(index_err)?;
        Ok(table
            .get(k.as_slice())
            .map_err(index_err)?
            .map(|v| v.value().to_vec()))
    }

    fn list_records(&self, kind: RecordKind, repo: &RepoId) -> Result<Vec<Record>, StoreError> {
        let prefix = record_prefix(kind, repo);
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(RECORDS).map_err(index_err)?;
        let mut out = Vec::new();
        for item in table.range(prefix.as_slice()..).map_err(index_err)? {
            let (k, v) = item.map_err(index_err)?;
            let k = k.value();
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if let Ok(key) = <[u8; 32]>::try_from(rest) {
                out.push((key, v.value().to_vec()));
            }
        }
        Ok(out)
    }

    fn stats(&self) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(BLOBS).map_err(index_err)?;
        let (mut count, mut bytes) = (0u64, 0u64);
        for item in table.iter().map_err(index_err)? {
            let (_, v) = item.map_err(index_err)?;
            count += 1;
            bytes += Location::decode(v.value()).map_or(0, |l| u64::from(l.len));
        }
        Ok((count, bytes))
    }
}

/// Owns the open segment; runs on the group-commit thread.
struct SegmentWriter {
    dir: PathBuf,
    db: Arc<Database>,
    options: FsStoreOptions,
    segment: u32,
    file: Option<File>,
    size: u64,
}

impl SegmentWriter {
    fn run(mut self, rx: mpsc::Receiver<WriteJob>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            let mut blobs = jobs[0].blobs.len();
            while blobs < self.options.group_commit_blobs {
                match rx.try_recv() {
                    Ok(job) => {
                        blobs += job.blobs.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let result = self.commit(&jobs);
            if result.is_err() {
                // A failed append may have left part of a record behind, so
                // the file's length no longer matches our offsets: continue
                // in a fresh segment. The bytes already there are unindexed.
                self.file = None;
            }
            for job in jobs {
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StoreError::Commit(e.to_string())),
                };
                let _ = job.done.send(r);
            }
        }
        if let Some(f) = &self.file {
            let _ = f.sync_data();
        }
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: segment_path(&self.dir, self.segment),
            source,
        }
    }

    /// Appends every new blob of `jobs`, fsyncs the segment once, then
    /// commits their index entries in one transaction.
    fn commit(&mut self, jobs: &[WriteJob]) -> Result<(), StoreError> {
        if self.file.is_none() || self.size >= self.options.segment_bytes {
            self.rotate()?;
        }
        let txn = self.db.begin_write().map_err(index_err)?;
        let mut wrote = false;
        {
            let mut table = txn.open_table(BLOBS).map_err(index_err)?;
            let mut buf = Vec::new();
            for job in jobs {
                for (id, blob) in &job.blobs {
                    let key = blob_key(&job.repo, id);
                    if table.get(key.as_slice()).map_err(index_err)?.is_some() {
                        continue;
                    }
                    let checksum = *blake3::hash(blob).as_bytes();
                    let repo = job.repo.as_str().as_bytes();
                    buf.clear();
                    buf.extend_from_slice(SEGMENT_MAGIC);
                    buf.push(repo.len() as u8);
                    buf.extend_from_slice(repo);
                    buf.extend_from_slice(&id.0);
                    buf.extend_from_slice(&(blob.len() as u32).to_le_bytes());
                    buf.extend_from_slice(&checksum);
                    let offset = self.size + buf.len() as u64;
                    let file = self.file.as_mut().ok_or(StoreError::Closed)?;
                    file.write_all(&buf)
                        .and_then(|()| file.write_all(blob))
                        .map_err(|e| self.io(e))?;
                    self.size = offset + blob.len() as u64;
                    let loc = Location {
                        segment: self.segment,
                        offset,
                        len: blob.len() as u32,
                        checksum,
                    };
                    table
                        .insert(key.as_slice(), loc.encode().as_slice())
                        .map_err(index_err)?;
                    wrote = true;
                }
            }
        }
        if wrote {
            let file = self.file.as_ref().ok_or(StoreError::Closed)?;
            file.sync_data().map_err(|e| self.io(e))?;
            txn.commit().map_err(index_err)?;
        } else {
            txn.abort().map_err(index_err)?;
        }
        Ok(())
    }

    /// Starts a new segment file and makes its directory entry durable.
    fn rotate(&mut self) -> Result<(), StoreError> {
        if let Some(f) = &self.file {
            f.sync_data().map_err(|e| self.io(e))?;
        }
        self.segment += 1;
        let path = segment_path(&self.dir, self.segment);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })?;
        self.file = Some(file);
        self.size = 0;
        Ok(())
    }
}

/// An in-memory [`ChunkStore`] for tests.
#[derive(Default)]
pub struct MemStore {
    blobs: Mutex<HashMap<(RepoId, ChunkId), Bytes>>,
    records: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
}

impl ChunkStore for MemStore {
    fn put_blobs(&self, repo: &RepoId, blobs: Vec<(ChunkId, Bytes)>) -> Result<(), StoreError> {
        let mut map = self.blobs.lock().map_err(|_| StoreError::Closed)?;
        for (id, b) in blobs {
            map.entry((repo.clone(), id)).or_insert(b);
        }
        Ok(())
    }

    fn get_blob(&self, repo: &RepoId, id: &ChunkId) -> Result<Option<Bytes>, StoreError> {
        let map = self.blobs.lock().map_err(|_| StoreError::Closed)?;
        Ok(map.get(&(repo.clone(), *id)).cloned())
    }

    fn has(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        let map = self.blobs.lock().map_err(|_| StoreError::Closed)?;
        Ok(ids
            .iter()
            .map(|id| map.contains_key(&(repo.clone(), *id)))
            .collect())
    }

    fn put_record(
        &self,
        kind: RecordKind,
        repo: &RepoId,
        key: &[u8; 32],
        value: &[u8],
        exclusive: bool,
    ) -> Result<(), StoreError> {
        let mut k = record_prefix(kind, repo);
        k.extend_from_slice(key);
        let mut map = self.records.lock().map_err(|_| StoreError::Closed)?;
        if exclusive && map.get(&k).is_some_and(|old| old != value) {
            return Err(StoreError::Exists);
        }
        map.insert(k, value.to_vec());
        Ok(())
    }

    fn get_record(
        &self,
        kind: RecordKind,
        repo: &RepoId,
        key: &[u8; 32],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut k = record_prefix(kind, repo);
        k.extend_from_slice(key);
        Ok(self
            .records
            .lock()
            .map_err(|_| StoreError::Closed)?
            .get(&k)
            .cloned())
    }

    fn list_records(&self, kind: RecordKind, repo: &RepoId) -> Result<Vec<Record>, StoreError> {
        let prefix = record_prefix(kind, repo);
        let map = self.records.lock().map_err(|_| StoreError::Closed)?;
        let mut out: Vec<_> = map
            .iter()
            .filter_map(|(k, v)| {
                let key: [u8; 32] = k.strip_prefix(prefix.as_slice())?.try_into().ok()?;
                Some((key, v.clone()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn stats(&self) -> Result<(u64, u64), StoreError> {
        let map = self.blobs.lock().map_err(|_| StoreError::Closed)?;
        Ok((map.len() as u64, map.values().map(|b| b.len() as u64).sum()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoId {
        RepoId::new("r").unwrap()
    }

    fn blobs(n: u8) -> Vec<(ChunkId, Bytes)> {
        (0..n)
            .map(|i| (ChunkId([i; 32]), Bytes::from(vec![i; 100 + usize::from(i)])))
            .collect()
    }

    fn exercise(store: &dyn ChunkStore) {
        store.put_blobs(&repo(), blobs(10)).unwrap();
        store.put_blobs(&repo(), blobs(12)).unwrap();
        assert_eq!(store.stats().unwrap().0, 12);
        let other = RepoId::new("other").unwrap();
        assert_eq!(store.has(&other, &[ChunkId([1; 32])]).unwrap(), [false]);
        assert_eq!(
            store.get_blob(&repo(), &ChunkId([3; 32])).unwrap().unwrap(),
            Bytes::from(vec![3u8; 103])
        );
        assert!(
            store
                .get_blob(&repo(), &ChunkId([99; 32]))
                .unwrap()
                .is_none()
        );
        store
            .put_record(RecordKind::Key, &repo(), &[0; 32], b"k1", true)
            .unwrap();
        store
            .put_record(RecordKind::Key, &repo(), &[0; 32], b"k1", true)
            .unwrap();
        assert!(matches!(
            store.put_record(RecordKind::Key, &repo(), &[0; 32], b"k2", true),
            Err(StoreError::Exists)
        ));
        store
            .put_record(RecordKind::Snapshot, &repo(), &[1; 32], b"s1", false)
            .unwrap();
        store
            .put_record(RecordKind::Snapshot, &other, &[2; 32], b"s2", false)
            .unwrap();
        let list = store.list_records(RecordKind::Snapshot, &repo()).unwrap();
        assert_eq!(list, vec![([1u8; 32], b"s1".to_vec())]);
    }

    #[test]
    fn mem_store() {
        exercise(&MemStore::default());
    }

    #[test]
    fn fs_store_survives_reopen_and_detects_rot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
            exercise(&s);
        }
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        assert_eq!(s.stats().unwrap().0, 12);
        assert_eq!(
            s.get_blob(&repo(), &ChunkId([5; 32]))
                .unwrap()
                .unwrap()
                .len(),
            105
        );
        s.put_blobs(
            &repo(),
            vec![(ChunkId([200; 32]), Bytes::from_static(b"new"))],
        )
        .unwrap();
        drop(s);
        // Flip a byte of every blob body in the first segment.
        let seg = dir.path().join("segments/00000001.seg");
        let mut bytes = std::fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&seg, bytes).unwrap();
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        assert!(matches!(
            s.get_blob(&repo(), &ChunkId([11; 32])),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(
            &s.get_blob(&repo(), &ChunkId([200; 32])).unwrap().unwrap()[..],
            b"new"
        );
    }

    #[test]
    fn torn_tail_is_never_read_as_good() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
            s.put_blobs(&repo(), blobs(3)).unwrap();
        }
        // A crash mid-append: garbage after the last record, no index entry.
        let seg = dir.path().join("segments/00000001.seg");
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"RVR1\x01r half a record").unwrap();
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        assert_eq!(s.stats().unwrap().0, 3);
        s.put_blobs(&repo(), blobs(5)).unwrap();
        for (id, b) in blobs(5) {
            assert_eq!(s.get_blob(&repo(), &id).unwrap().unwrap(), b);
        }
        assert!(dir.path().join("segments/00000002.seg").exists());
    }

    #[test]
    fn concurrent_puts_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(FsStore::open(dir.path(), FsStoreOptions::default()).unwrap());
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..50u8 {
                        let mut id = ChunkId([0; 32]);
                        id.0[..2]
                            .copy_from_slice(&(u16::from(t) * 50 + u16::from(i)).to_le_bytes());
                        s.put_blobs(&repo(), vec![(id, Bytes::from(vec![t; 64]))])
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.stats().unwrap().0, 400);
    }
}
