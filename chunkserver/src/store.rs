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
//! # Index
//!
//! ```text
//! blobs-v2    id:[u8; 32]  repo_len:u8  repo  ->  segment:u32  offset:u64  len:u32  checksum:[u8; 32]
//! quarantine  id:[u8; 32]  repo_len:u8  repo  ->  the same location, then quarantined at: u64 unix seconds
//! records     kind:u8  repo_len:u8  repo  key:[u8; 32]  ->  value
//! ```
//!
//! (integers little endian). A blob key leads with the [`ChunkId`], so the
//! blobs of one partition ([`ChunkId::partition`], the unit of repair) are
//! one contiguous key range over all repositories. Stores written before
//! this layout kept `repo_len | repo | id` keys in a table `blobs`;
//! [`FsStore::open`] moves them into `blobs-v2` in one write transaction and
//! deletes the old table.
//!
//! Deleting or quarantining a blob removes its index entry only; its segment
//! bytes stay until a compaction rewrites the segment.
//!
//! # Summaries
//!
//! Each store keeps in memory, per partition, the number of blobs it holds
//! and a set digest of their index keys (see [`ChunkStore::digests`]), plus
//! total blobs, bytes and quarantined blobs: 2^16 × (32 + 4) bytes and a few
//! counters. [`FsStore`] computes them by one scan of the index at open and
//! updates them with every index change. Their lock is taken before a
//! blob-index write transaction begins and released only after the committed
//! change has been applied, so whenever it is free they equal the committed
//! index; readers of digests may thus wait for one group commit. The totals
//! are also copied to atomics, read without the lock.
//!
//! # Quota
//!
//! With a quota, a put whose blobs not already held would take the held
//! blob bytes past it fails whole with [`StoreError::Full`] before anything
//! is appended; other puts sharing its group commit are unaffected. The
//! quota counts live blob bytes: deleted and quarantined blobs stop counting
//! at once, though their segment bytes stay on disk until a compaction.
//!
//! [`MemStore`] keeps everything in memory, for tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    WriteTransaction,
};
use ringvault_common::wire::{DIGEST_BUCKETS, bitmap_has};
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
    /// Storing the new blobs of a put would take the stored blob bytes past
    /// the quota; none of the put was stored.
    #[error("store is full (quota {quota} bytes)")]
    Full {
        /// The quota, bytes of blobs.
        quota: u64,
    },
}

/// Kinds of small records kept beside blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A sealed snapshot record, keyed by snapshot id.
    Snapshot = 1,
    /// The repository's wrapped key, keyed by 32 zero bytes.
    Key = 2,
}

/// A record's identity across repositories: ([`RecordKind`] as u8,
/// repository, 32-byte key).
pub type RecordKey = (u8, RepoId, [u8; 32]);

/// An order-independent digest of a set of record keys: the XOR of BLAKE3
/// of each encoded key (the incremental set hash of Bellare and Micciancio,
/// EUROCRYPT 1997, as for blob digests). Equal sets give equal digests.
pub fn record_keys_digest(keys: &[RecordKey]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (kind, repo, key) in keys {
        let mut h = blake3::Hasher::new();
        h.update(&record_prefix_raw(*kind, repo));
        h.update(key);
        for (o, b) in out.iter_mut().zip(h.finalize().as_bytes()) {
            *o ^= b;
        }
    }
    out
}

/// Splits a records-table key (`kind | repo_len | repo | key`).
fn parse_record_key(raw: &[u8]) -> Option<RecordKey> {
    let (&kind, rest) = raw.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let repo = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?;
    let key: [u8; 32] = rest.get(usize::from(len)..)?.try_into().ok()?;
    Some((kind, RepoId::new(repo).ok()?, key))
}

/// A small record as listed: its 32-byte key and its value.
pub type Record = ([u8; 32], Vec<u8>);

/// One step of a scrub cycle, as returned by [`ChunkStore::scrub`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubStep {
    /// Blobs read and checked.
    pub checked: u64,
    /// Their bytes (as the index records them).
    pub bytes: u64,
    /// Blobs that failed (bad checksum, or bytes missing from a short
    /// segment) and were moved to quarantine.
    pub quarantined: Vec<(RepoId, ChunkId)>,
    /// Where the next step starts (pass it as `after`); `None` when this
    /// step reached the end of the index, completing the cycle.
    pub next: Option<(RepoId, ChunkId)>,
}

/// What a server stores. All calls block; async callers use
/// `spawn_blocking`.
pub trait ChunkStore: Send + Sync + 'static {
    /// Stores blobs durably (fsync'd) before returning. Blobs already held
    /// are skipped. Idempotent.
    ///
    /// # Errors
    /// [`StoreError::Full`] when the blobs not already held would take the
    /// stored bytes past the quota: then none of them is stored. Otherwise
    /// [`StoreError`]; on error none of the batch may be relied on.
    fn put_blobs(&self, repo: &RepoId, blobs: Vec<(ChunkId, Bytes)>) -> Result<(), StoreError>;

    /// Reads and checks one blob; `None` if not held.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the checksum fails or the blob's bytes
    /// are missing from its segment (call [`ChunkStore::quarantine`] and
    /// fetch a good copy), or I/O errors.
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

    /// The (kind, repository, key) of every record held, in any order:
    /// what servers compare to copy records a peer missed.
    ///
    /// # Errors
    /// [`StoreError`].
    fn record_keys(&self) -> Result<Vec<RecordKey>, StoreError>;

    /// Number of blobs held and their total bytes (blob bytes, not segment
    /// file sizes), from memory: constant time, and [`FsStore`] answers
    /// without waiting for a write in flight, so async code may call it
    /// directly. Quarantined blobs are not counted.
    ///
    /// # Errors
    /// None today; kept fallible for callers of the earlier, scanning
    /// version.
    fn stats(&self) -> Result<(u64, u64), StoreError>;

    /// Number of keys in quarantine, from memory (constant time, no
    /// waiting). A key quarantined again after a new copy was stored counts
    /// once; entries stay until a compaction.
    fn quarantined(&self) -> u64;

    /// Set digests of the blobs held in the partitions set in `partitions`,
    /// a bitmap of [`ringvault_common::wire::PARTITION_BITMAP_BYTES`] bytes
    /// (bit `p % 8` of byte `p / 8`; bits past a shorter bitmap's end count
    /// as clear). From memory, one pass over the 2^16 partitions; it may wait
    /// for a group commit in flight (see the module docs), so async code
    /// calls it through `spawn_blocking`. Call it for anti-entropy with
    /// co-replicas.
    ///
    /// A partition's digest is the XOR, over the blobs it holds in every
    /// repository, of BLAKE3 of the blob's index key (`id | repo_len |
    /// repo`); an empty partition's is 32 zero bytes. This is the XOR
    /// instance of the incremental set hashes of Bellare and Micciancio, "A
    /// New Paradigm for Collision-free Hashing: Incrementality at Reduced
    /// Cost" (EUROCRYPT 1997): adding or removing a blob costs one hash, and
    /// servers holding equal sets have equal digests whatever the order of
    /// their writes. It detects accidental divergence; the paper shows the
    /// XOR form is not collision resistant against someone choosing many
    /// keys, so equal digests are not proof against a malicious writer.
    ///
    /// With `per_partition`, one digest per set bit in ascending partition
    /// order. Otherwise the digests of the set partitions are folded by XOR
    /// into [`DIGEST_BUCKETS`] buckets, partition `p` into bucket `p >> 8`,
    /// and the 256 buckets are returned.
    fn digests(&self, partitions: &[u8], per_partition: bool) -> Vec<[u8; 32]>;

    /// Every partition holding at least one blob, ascending, with its
    /// number of blobs (over all repositories). From memory; may wait for a
    /// group commit in flight, as [`ChunkStore::digests`].
    fn partition_counts(&self) -> Vec<(u16, u32)>;

    /// The keys of the blobs held in `partition`, in index key order (by
    /// id, then repository name length, then name bytes), strictly after
    /// `after` (which may lie in any partition), at most `limit` of them,
    /// and whether more follow. Page by passing the last key returned.
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index cannot be read or holds a
    /// malformed key.
    fn list_partition(
        &self,
        partition: u16,
        after: Option<&(RepoId, ChunkId)>,
        limit: usize,
    ) -> Result<(Vec<(RepoId, ChunkId)>, bool), StoreError>;

    /// Removes the index entries of `keys` and returns how many were held.
    /// Durable when it returns. The segment bytes stay until a compaction;
    /// the blobs' bytes no longer count against the quota.
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index transaction fails; then nothing
    /// was deleted.
    fn delete_blobs(&self, keys: &[(RepoId, ChunkId)]) -> Result<u64, StoreError>;

    /// Moves a blob's index entry (location and checksum) to quarantine,
    /// with the time, durably: the blob is no longer held (not in
    /// [`ChunkStore::has`], [`ChunkStore::get_blob`], digests or stats).
    /// Returns whether it was held. Call it on [`StoreError::Corrupt`], then
    /// fetch a good copy from a co-replica and put it.
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index transaction fails; then nothing
    /// moved.
    fn quarantine(&self, repo: &RepoId, id: &ChunkId) -> Result<bool, StoreError>;

    /// One step of scrub: re-reads blobs in index key order strictly after
    /// `after` (from the start with `None`), at most `max_blobs` blobs and
    /// stopping once `max_bytes` bytes have been read (so a step may exceed
    /// it by one blob), but always at least one blob if any remain. Each is
    /// checked against its checksum; one that fails, or whose bytes are
    /// missing because its segment is short, is quarantined. Call it at a
    /// bounded rate, passing back [`ScrubStep::next`] until it is `None`.
    ///
    /// # Errors
    /// [`StoreError::Io`] when a segment cannot be read for another reason
    /// than being short (missing file, device error): nothing of the step
    /// was quarantined and the same step may be retried. [`StoreError::Index`]
    /// if the index cannot be read or written.
    fn scrub(
        &self,
        after: Option<&(RepoId, ChunkId)>,
        max_blobs: usize,
        max_bytes: u64,
    ) -> Result<ScrubStep, StoreError>;
}

/// The blob index, keyed `id | repo_len | repo`.
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs-v2");
/// The first layout's blob index, keyed `repo_len | repo | id`; migrated at
/// open.
const BLOBS_V1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// Quarantined blobs: blob key to location and unix seconds.
const QUARANTINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quarantine");
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const SEGMENT_MAGIC: &[u8; 4] = b"RVR1";
/// Index value: segment u32, offset u64, len u32, checksum 32 bytes.
const LOCATION_LEN: usize = 4 + 8 + 4 + 32;
/// Number of partitions: a ChunkId's first two bytes.
const PARTITIONS: usize = 1 << 16;

#[derive(Clone, Copy, PartialEq, Eq)]
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

/// A blob's index key: `id | repo_len | repo`.
fn blob_key(repo: &RepoId, id: &ChunkId) -> Vec<u8> {
    let repo = repo.as_str().as_bytes();
    let mut k = Vec::with_capacity(32 + 1 + repo.len());
    k.extend_from_slice(&id.0);
    // RepoId::MAX_LEN is 64, so the length fits a byte.
    k.push(repo.len() as u8);
    k.extend_from_slice(repo);
    k
}

/// Parses a blob index key; `None` if malformed.
fn decode_key(k: &[u8]) -> Option<(RepoId, ChunkId)> {
    let id: [u8; 32] = k.get(..32)?.try_into().ok()?;
    let len = usize::from(*k.get(32)?);
    let repo = k.get(33..)?;
    if repo.len() != len {
        return None;
    }
    let repo = RepoId::new(std::str::from_utf8(repo).ok()?).ok()?;
    Some((repo, ChunkId(id)))
}

/// Rewrites a first-layout key (`repo_len | repo | id`) as a blob key;
/// `None` if malformed.
fn v1_key_to_v2(k: &[u8]) -> Option<Vec<u8>> {
    let (&len, rest) = k.split_first()?;
    if rest.len() != usize::from(len) + 32 {
        return None;
    }
    let (repo, id) = rest.split_at(usize::from(len));
    let mut out = Vec::with_capacity(k.len());
    out.extend_from_slice(id);
    out.push(len);
    out.extend_from_slice(repo);
    decode_key(&out)?;
    Some(out)
}

/// The partition of a blob key (its first two bytes, big endian).
fn key_partition(k: &[u8]) -> u16 {
    match k {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    }
}

fn record_prefix_raw(kind: u8, repo: &RepoId) -> Vec<u8> {
    let mut k = vec![kind, repo.as_str().len() as u8];
    k.extend_from_slice(repo.as_str().as_bytes());
    k
}

fn record_prefix(kind: RecordKind, repo: &RepoId) -> Vec<u8> {
    record_prefix_raw(kind as u8, repo)
}

fn index_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Index(e.to_string())
}

fn malformed() -> StoreError {
    StoreError::Index("malformed index entry".into())
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Per-partition blob counts and set digests plus totals, kept equal to the
/// blob index (see the module docs).
struct Summaries {
    /// [`PARTITIONS`] digests, indexed by partition.
    digests: Box<[[u8; 32]]>,
    /// [`PARTITIONS`] blob counts, indexed by partition.
    counts: Box<[u32]>,
    blobs: u64,
    bytes: u64,
    quarantined: u64,
    /// The three totals, copied out on every change so that
    /// [`ChunkStore::stats`] never waits for a group commit holding the lock.
    totals: Arc<Totals>,
}

/// Totals readable without the summaries' lock. Each is exact; a pair read
/// together may straddle one update.
#[derive(Default)]
struct Totals {
    blobs: AtomicU64,
    bytes: AtomicU64,
    quarantined: AtomicU64,
}

impl Summaries {
    fn new() -> Self {
        Self {
            digests: vec![[0u8; 32]; PARTITIONS].into_boxed_slice(),
            counts: vec![0u32; PARTITIONS].into_boxed_slice(),
            blobs: 0,
            bytes: 0,
            quarantined: 0,
            totals: Arc::default(),
        }
    }

    /// Accounts a blob entering quarantine under a key not there before.
    fn add_quarantined(&mut self) {
        self.quarantined = self.quarantined.wrapping_add(1);
        self.publish();
    }

    fn publish(&self) {
        self.totals.blobs.store(self.blobs, Ordering::Relaxed);
        self.totals.bytes.store(self.bytes, Ordering::Relaxed);
        self.totals
            .quarantined
            .store(self.quarantined, Ordering::Relaxed);
    }

    /// Accounts a blob key entering the index. Wrapping arithmetic: the
    /// updates commute, so they never panic and always come back to the
    /// index's true figures.
    fn add(&mut self, key: &[u8], len: u32) {
        let p = self.toggle(key);
        self.counts[p] = self.counts[p].wrapping_add(1);
        self.blobs = self.blobs.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(u64::from(len));
        self.publish();
    }

    /// Accounts a blob key leaving the index.
    fn remove(&mut self, key: &[u8], len: u32) {
        let p = self.toggle(key);
        self.counts[p] = self.counts[p].wrapping_sub(1);
        self.blobs = self.blobs.wrapping_sub(1);
        self.bytes = self.bytes.wrapping_sub(u64::from(len));
        self.publish();
    }

    /// XORs the key's hash into its partition's digest; returns the
    /// partition as an index (< [`PARTITIONS`], so indexing cannot panic).
    fn toggle(&mut self, key: &[u8]) -> usize {
        let p = usize::from(key_partition(key));
        xor_into(&mut self.digests[p], blake3::hash(key).as_bytes());
        p
    }

    fn digests(&self, partitions: &[u8], per_partition: bool) -> Vec<[u8; 32]> {
        let set = (0..=u16::MAX).filter(|&p| bitmap_has(partitions, p));
        if per_partition {
            return set.map(|p| self.digests[usize::from(p)]).collect();
        }
        let mut buckets = vec![[0u8; 32]; DIGEST_BUCKETS];
        for p in set {
            xor_into(
                &mut buckets[usize::from(p >> 8)],
                &self.digests[usize::from(p)],
            );
        }
        buckets
    }

    fn partition_counts(&self) -> Vec<(u16, u32)> {
        (0..=u16::MAX)
            .zip(self.counts.iter())
            .filter(|(_, n)| **n != 0)
            .map(|(p, n)| (p, *n))
            .collect()
    }
}

fn xor_into(acc: &mut [u8; 32], x: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a ^= b;
    }
}

/// Locks summaries, poisoned or not: they are changed only after a commit,
/// by code that cannot panic, so a panicking holder never leaves them half
/// updated.
fn lock(summaries: &Mutex<Summaries>) -> MutexGuard<'_, Summaries> {
    summaries.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Settings of an [`FsStore`].
#[derive(Clone, Debug)]
pub struct FsStoreOptions {
    /// Most blobs made durable by one fsync.
    pub group_commit_blobs: usize,
    /// Start a new segment past this size, bytes.
    pub segment_bytes: u64,
    /// Most blob bytes held (as [`ChunkStore::stats`] counts them); a put
    /// whose new blobs would pass it fails with [`StoreError::Full`]. 0
    /// means no quota.
    pub quota_bytes: u64,
}

impl Default for FsStoreOptions {
    fn default() -> Self {
        Self {
            group_commit_blobs: 1024,
            segment_bytes: 1 << 30,
            quota_bytes: 0,
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
    summaries: Arc<Mutex<Summaries>>,
    totals: Arc<Totals>,
}

struct WriteJob {
    repo: RepoId,
    blobs: Vec<(ChunkId, Bytes)>,
    done: mpsc::SyncSender<Result<(), StoreError>>,
}

impl FsStore {
    /// Opens (or creates) a store in `dir`, starting a new segment. Moves a
    /// first-layout blob index to the current one (one transaction), then
    /// scans the index once to build the summaries: time linear in the
    /// number of blobs.
    ///
    /// # Errors
    /// [`StoreError`] if the directory or index cannot be opened (another
    /// process holding it, for one), or [`StoreError::Index`] if the index
    /// holds a malformed entry.
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
            let migrated = migrate_v1(&txn)?;
            txn.open_table(BLOBS).map_err(index_err)?;
            txn.open_table(QUARANTINE).map_err(index_err)?;
            txn.open_table(RECORDS).map_err(index_err)?;
            txn.commit().map_err(index_err)?;
            if let Some(n) = migrated {
                tracing::info!(blobs = n, "moved the blob index to the id-first layout");
            }
        }
        let summaries = summarize(&db)?;
        let totals = summaries.totals.clone();
        let summaries = Arc::new(Mutex::new(summaries));
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
            summaries: summaries.clone(),
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
            summaries,
            totals,
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
            Some(v) => Location::decode(v.value()).map(Some).ok_or_else(malformed),
        }
    }

    /// Reads a blob's bytes and checks them: `None` if they fail their
    /// checksum or the segment is too short to hold them.
    fn read_checked(&self, loc: &Location) -> Result<Option<Vec<u8>>, StoreError> {
        let file = self.reader(loc.segment)?;
        let mut buf = vec![0u8; loc.len as usize];
        match file.read_exact_at(&mut buf, loc.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.segment_path(loc.segment),
                    source,
                });
            }
        }
        Ok((*blake3::hash(&buf).as_bytes() == loc.checksum).then_some(buf))
    }

    /// Moves `key`'s index entry to quarantine if it is held and, with
    /// `expect`, still at that location (a blob deleted and stored again
    /// since it was read is a different copy). Returns whether it moved.
    fn quarantine_key(&self, key: &[u8], expect: Option<&Location>) -> Result<bool, StoreError> {
        let mut summaries = lock(&self.summaries);
        let txn = self.db.begin_write().map_err(index_err)?;
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
            let mut value = loc.encode().to_vec();
            value.extend_from_slice(&unix_seconds().to_le_bytes());
            let mut quarantine = txn.open_table(QUARANTINE).map_err(index_err)?;
            let fresh = quarantine
                .insert(key, value.as_slice())
                .map_err(index_err)?
                .is_none();
            (loc.len, fresh)
        };
        txn.commit().map_err(index_err)?;
        summaries.remove(key, len);
        if fresh {
            summaries.add_quarantined();
        }
        Ok(true)
    }
}

/// Moves a first-layout blob index, if any, into [`BLOBS`] and deletes it.
/// Returns how many entries moved, `None` if there was no such table.
fn migrate_v1(txn: &WriteTransaction) -> Result<Option<u64>, StoreError> {
    let exists = txn
        .list_tables()
        .map_err(index_err)?
        .any(|t| t.name() == BLOBS_V1.name());
    if !exists {
        return Ok(None);
    }
    let mut moved = 0u64;
    {
        let old = txn.open_table(BLOBS_V1).map_err(index_err)?;
        let mut new = txn.open_table(BLOBS).map_err(index_err)?;
        for item in old.iter().map_err(index_err)? {
            let (k, v) = item.map_err(index_err)?;
            let key = v1_key_to_v2(k.value()).ok_or_else(malformed)?;
            new.insert(key.as_slice(), v.value()).map_err(index_err)?;
            moved += 1;
        }
    }
    txn.delete_table(BLOBS_V1).map_err(index_err)?;
    Ok(Some(moved))
}

/// Builds the summaries by one scan of the blob index.
fn summarize(db: &Database) -> Result<Summaries, StoreError> {
    let mut s = Summaries::new();
    let txn = db.begin_read().map_err(index_err)?;
    let table = txn.open_table(BLOBS).map_err(index_err)?;
    for item in table.iter().map_err(index_err)? {
        let (k, v) = item.map_err(index_err)?;
        decode_key(k.value()).ok_or_else(malformed)?;
        let loc = Location::decode(v.value()).ok_or_else(malformed)?;
        s.add(k.value(), loc.len);
    }
    s.quarantined = txn
        .open_table(QUARANTINE)
        .map_err(index_err)?
        .len()
        .map_err(index_err)?;
    s.publish();
    Ok(s)
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
        match self.read_checked(&loc)? {
            Some(buf) => Ok(Some(Bytes::from(buf))),
            None => Err(StoreError::Corrupt { id: *id }),
        }
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

    fn record_keys(&self) -> Result<Vec<RecordKey>, StoreError> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(RECORDS).map_err(index_err)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(index_err)? {
            let (k, _) = item.map_err(index_err)?;
            if let Some(key) = parse_record_key(k.value()) {
                out.push(key);
            }
        }
        Ok(out)
    }

    fn stats(&self) -> Result<(u64, u64), StoreError> {
        Ok((
            self.totals.blobs.load(Ordering::Relaxed),
            self.totals.bytes.load(Ordering::Relaxed),
        ))
    }

    fn quarantined(&self) -> u64 {
        self.totals.quarantined.load(Ordering::Relaxed)
    }

    fn digests(&self, partitions: &[u8], per_partition: bool) -> Vec<[u8; 32]> {
        lock(&self.summaries).digests(partitions, per_partition)
    }

    fn partition_counts(&self) -> Vec<(u16, u32)> {
        lock(&self.summaries).partition_counts()
    }

    fn list_partition(
        &self,
        partition: u16,
        after: Option<&(RepoId, ChunkId)>,
        limit: usize,
    ) -> Result<(Vec<(RepoId, ChunkId)>, bool), StoreError> {
        let Some((lower, upper)) = partition_range(partition, after) else {
            return Ok((Vec::new(), false));
        };
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(BLOBS).map_err(index_err)?;
        let range = table
            .range::<&[u8]>((
                lower.as_ref().map(Vec::as_slice),
                upper.as_ref().map(Vec::as_slice),
            ))
            .map_err(index_err)?;
        let mut keys = Vec::new();
        for item in range {
            let (k, _) = item.map_err(index_err)?;
            if keys.len() == limit {
                return Ok((keys, true));
            }
            keys.push(decode_key(k.value()).ok_or_else(malformed)?);
        }
        Ok((keys, false))
    }

    fn delete_blobs(&self, keys: &[(RepoId, ChunkId)]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut summaries = lock(&self.summaries);
        let txn = self.db.begin_write().map_err(index_err)?;
        let mut removed = Vec::new();
        {
            let mut table = txn.open_table(BLOBS).map_err(index_err)?;
            for (repo, id) in keys {
                let key = blob_key(repo, id);
                let len = match table.remove(key.as_slice()).map_err(index_err)? {
                    None => continue,
                    // summarize() refused malformed entries at open and the
                    // writer writes none, so the fallback is never taken.
                    Some(v) => Location::decode(v.value()).map_or(0, |l| l.len),
                };
                removed.push((key, len));
            }
        }
        txn.commit().map_err(index_err)?;
        for (key, len) in &removed {
            summaries.remove(key, *len);
        }
        Ok(removed.len() as u64)
    }

    fn quarantine(&self, repo: &RepoId, id: &ChunkId) -> Result<bool, StoreError> {
        self.quarantine_key(&blob_key(repo, id), None)
    }

    fn scrub(
        &self,
        after: Option<&(RepoId, ChunkId)>,
        max_blobs: usize,
        max_bytes: u64,
    ) -> Result<ScrubStep, StoreError> {
        let mut step = ScrubStep::default();
        let mut bad = Vec::new();
        {
            let lower = after.map(|(repo, id)| blob_key(repo, id));
            let txn = self.db.begin_read().map_err(index_err)?;
            let table = txn.open_table(BLOBS).map_err(index_err)?;
            let range = table
                .range::<&[u8]>((
                    lower.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
                    Bound::Unbounded,
                ))
                .map_err(index_err)?;
            let mut last = None;
            for item in range {
                let (k, v) = item.map_err(index_err)?;
                if step.checked > 0 && scrub_step_full(&step, max_blobs, max_bytes) {
                    step.next = last;
                    break;
                }
                let key = decode_key(k.value()).ok_or_else(malformed)?;
                let loc = Location::decode(v.value()).ok_or_else(malformed)?;
                step.checked += 1;
                step.bytes += u64::from(loc.len);
                if self.read_checked(&loc)?.is_none() {
                    bad.push((k.value().to_vec(), loc, key.clone()));
                }
                last = Some(key);
            }
        }
        for (k, loc, key) in bad {
            if self.quarantine_key(&k, Some(&loc))? {
                tracing::warn!(chunk = %key.1, repo = %key.0, "scrub quarantined a blob that failed its checksum");
                step.quarantined.push(key);
            }
        }
        Ok(step)
    }
}

/// Whether a scrub step has reached its limits.
fn scrub_step_full(step: &ScrubStep, max_blobs: usize, max_bytes: u64) -> bool {
    step.checked >= u64::try_from(max_blobs).unwrap_or(u64::MAX) || step.bytes >= max_bytes
}

/// A range of blob keys, as (lower, upper) bounds.
type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The key range of `partition` after `after`; `None` when it is empty
/// (`after` at or past the partition's end).
fn partition_range(partition: u16, after: Option<&(RepoId, ChunkId)>) -> Option<KeyRange> {
    let start = partition.to_be_bytes().to_vec();
    let end = partition.checked_add(1).map(|p| p.to_be_bytes().to_vec());
    let lower = match after.map(|(repo, id)| blob_key(repo, id)) {
        Some(a) if a >= start => {
            if end.as_ref().is_some_and(|end| a >= *end) {
                return None;
            }
            Bound::Excluded(a)
        }
        _ => Bound::Included(start),
    };
    Some((lower, end.map_or(Bound::Unbounded, Bound::Excluded)))
}

/// Owns the open segment; runs on the group-commit thread.
struct SegmentWriter {
    dir: PathBuf,
    db: Arc<Database>,
    options: FsStoreOptions,
    segment: u32,
    file: Option<File>,
    size: u64,
    summaries: Arc<Mutex<Summaries>>,
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
            let mut refused = vec![false; jobs.len()];
            let result = self.commit(&jobs, &mut refused);
            if result.is_err() {
                // A failed append may have left part of a record behind, so
                // the file's length no longer matches our offsets: continue
                // in a fresh segment. The bytes already there are unindexed.
                self.file = None;
            }
            for (job, refused) in jobs.into_iter().zip(refused) {
                let r = match &result {
                    _ if refused => Err(StoreError::Full {
                        quota: self.options.quota_bytes,
                    }),
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
    /// commits their index entries in one transaction. A job whose new
    /// blobs would pass the quota is skipped whole, before any of it is
    /// appended, and marked in `refused`.
    fn commit(&mut self, jobs: &[WriteJob], refused: &mut [bool]) -> Result<(), StoreError> {
        if self.file.is_none() || self.size >= self.options.segment_bytes {
            self.rotate()?;
        }
        // Held until the committed entries are accounted (module docs).
        let summaries = self.summaries.clone();
        let mut summaries = lock(&summaries);
        let quota = self.options.quota_bytes;
        let mut held_bytes = summaries.bytes;
        let txn = self.db.begin_write().map_err(index_err)?;
        let mut added = Vec::new();
        {
            let mut table = txn.open_table(BLOBS).map_err(index_err)?;
            let mut buf = Vec::new();
            for (job, refused) in jobs.iter().zip(refused.iter_mut()) {
                // The job's blobs not yet held, each once. Earlier jobs of
                // this batch are already in `table`.
                let mut seen = HashSet::new();
                let mut fresh = Vec::new();
                for (id, blob) in &job.blobs {
                    let key = blob_key(&job.repo, id);
                    if table.get(key.as_slice()).map_err(index_err)?.is_none()
                        && seen.insert(key.clone())
                    {
                        fresh.push((key, id, blob));
                    }
                }
                let new_bytes: u64 = fresh.iter().map(|(_, _, b)| b.len() as u64).sum();
                if quota > 0 && held_bytes.saturating_add(new_bytes) > quota {
                    *refused = true;
                    continue;
                }
                held_bytes = held_bytes.saturating_add(new_bytes);
                for (key, id, blob) in fresh {
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
                    added.push((key, loc.len));
                }
            }
        }
        if added.is_empty() {
            txn.abort().map_err(index_err)?;
        } else {
            let file = self.file.as_ref().ok_or(StoreError::Closed)?;
            file.sync_data().map_err(|e| self.io(e))?;
            txn.commit().map_err(index_err)?;
            for (key, len) in &added {
                summaries.add(key, *len);
            }
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

/// An in-memory [`ChunkStore`] for tests. Blobs are keyed and ordered as
/// in [`FsStore`]'s index, so listings, digests and scrub cursors agree
/// between the two.
pub struct MemStore {
    blobs: Mutex<MemBlobs>,
    records: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    quota_bytes: u64,
}

struct MemBlobs {
    held: BTreeMap<Vec<u8>, MemBlob>,
    quarantine: BTreeMap<Vec<u8>, MemBlob>,
    summaries: Summaries,
}

struct MemBlob {
    bytes: Bytes,
    checksum: [u8; 32],
}

impl Default for MemStore {
    fn default() -> Self {
        Self::with_quota(0)
    }
}

impl MemStore {
    /// An empty store refusing puts that would take its blob bytes past
    /// `quota_bytes` ([`StoreError::Full`]); 0 means no quota.
    pub fn with_quota(quota_bytes: u64) -> Self {
        Self {
            blobs: Mutex::new(MemBlobs {
                held: BTreeMap::new(),
                quarantine: BTreeMap::new(),
                summaries: Summaries::new(),
            }),
            records: Mutex::new(HashMap::new()),
            quota_bytes,
        }
    }

    /// Simulates bit rot: changes a held blob's stored bytes so that it
    /// fails its checksum ([`StoreError::Corrupt`] on read, quarantined by
    /// scrub). Returns whether it was held. For tests.
    pub fn corrupt(&self, repo: &RepoId, id: &ChunkId) -> bool {
        let Ok(mut blobs) = self.blobs.lock() else {
            return false;
        };
        let Some(blob) = blobs.held.get_mut(&blob_key(repo, id)) else {
            return false;
        };
        let mut bytes = blob.bytes.to_vec();
        match bytes.first_mut() {
            Some(b) => *b ^= 1,
            None => bytes.push(0),
        }
        blob.bytes = Bytes::from(bytes);
        true
    }

    fn lock_blobs(&self) -> Result<MutexGuard<'_, MemBlobs>, StoreError> {
        self.blobs.lock().map_err(|_| StoreError::Closed)
    }
}

impl MemBlobs {
    fn quarantine(&mut self, key: &[u8]) -> bool {
        let Some(blob) = self.held.remove(key) else {
            return false;
        };
        self.summaries.remove(key, blob.bytes.len() as u32);
        if self.quarantine.insert(key.to_vec(), blob).is_none() {
            self.summaries.add_quarantined();
        }
        true
    }
}

impl ChunkStore for MemStore {
    fn put_blobs(&self, repo: &RepoId, blobs: Vec<(ChunkId, Bytes)>) -> Result<(), StoreError> {
        let mut map = self.lock_blobs()?;
        let mut fresh = BTreeMap::new();
        for (id, bytes) in blobs {
            let key = blob_key(repo, &id);
            if !map.held.contains_key(&key) {
                fresh.entry(key).or_insert(bytes);
            }
        }
        let new_bytes: u64 = fresh.values().map(|b| b.len() as u64).sum();
        if self.quota_bytes > 0 && map.summaries.bytes.saturating_add(new_bytes) > self.quota_bytes
        {
            return Err(StoreError::Full {
                quota: self.quota_bytes,
            });
        }
        for (key, bytes) in fresh {
            map.summaries.add(&key, bytes.len() as u32);
            let checksum = *blake3::hash(&bytes).as_bytes();
            map.held.insert(key, MemBlob { bytes, checksum });
        }
        Ok(())
    }

    fn get_blob(&self, repo: &RepoId, id: &ChunkId) -> Result<Option<Bytes>, StoreError> {
        let map = self.lock_blobs()?;
        match map.held.get(&blob_key(repo, id)) {
            None => Ok(None),
            Some(b) if *blake3::hash(&b.bytes).as_bytes() == b.checksum => {
                Ok(Some(b.bytes.clone()))
            }
            Some(_) => Err(StoreError::Corrupt { id: *id }),
        }
    }

    fn has(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        let map = self.lock_blobs()?;
        Ok(ids
            .iter()
            .map(|id| map.held.contains_key(&blob_key(repo, id)))
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

    fn record_keys(&self) -> Result<Vec<RecordKey>, StoreError> {
        let map = self.records.lock().map_err(|_| StoreError::Closed)?;
        Ok(map.keys().filter_map(|k| parse_record_key(k)).collect())
    }

    fn stats(&self) -> Result<(u64, u64), StoreError> {
        let map = self.lock_blobs()?;
        Ok((map.summaries.blobs, map.summaries.bytes))
    }

    fn quarantined(&self) -> u64 {
        self.lock_blobs().map_or(0, |m| m.summaries.quarantined)
    }

    fn digests(&self, partitions: &[u8], per_partition: bool) -> Vec<[u8; 32]> {
        match self.lock_blobs() {
            Ok(m) => m.summaries.digests(partitions, per_partition),
            Err(_) => Summaries::new().digests(partitions, per_partition),
        }
    }

    fn partition_counts(&self) -> Vec<(u16, u32)> {
        self.lock_blobs()
            .map_or_else(|_| Vec::new(), |m| m.summaries.partition_counts())
    }

    fn list_partition(
        &self,
        partition: u16,
        after: Option<&(RepoId, ChunkId)>,
        limit: usize,
    ) -> Result<(Vec<(RepoId, ChunkId)>, bool), StoreError> {
        let Some(range) = partition_range(partition, after) else {
            return Ok((Vec::new(), false));
        };
        let map = self.lock_blobs()?;
        let mut keys = Vec::new();
        for k in map.held.range::<Vec<u8>, _>(range).map(|(k, _)| k) {
            if keys.len() == limit {
                return Ok((keys, true));
            }
            keys.push(decode_key(k).ok_or_else(malformed)?);
        }
        Ok((keys, false))
    }

    fn delete_blobs(&self, keys: &[(RepoId, ChunkId)]) -> Result<u64, StoreError> {
        let mut map = self.lock_blobs()?;
        let mut removed = 0;
        for (repo, id) in keys {
            let key = blob_key(repo, id);
            if let Some(blob) = map.held.remove(&key) {
                map.summaries.remove(&key, blob.bytes.len() as u32);
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn quarantine(&self, repo: &RepoId, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.lock_blobs()?.quarantine(&blob_key(repo, id)))
    }

    fn scrub(
        &self,
        after: Option<&(RepoId, ChunkId)>,
        max_blobs: usize,
        max_bytes: u64,
    ) -> Result<ScrubStep, StoreError> {
        let mut map = self.lock_blobs()?;
        let lower = after.map_or(Bound::Unbounded, |(repo, id)| {
            Bound::Excluded(blob_key(repo, id))
        });
        let mut step = ScrubStep::default();
        let mut bad = Vec::new();
        let mut last = None;
        for (k, blob) in map.held.range::<Vec<u8>, _>((lower, Bound::Unbounded)) {
            if step.checked > 0 && scrub_step_full(&step, max_blobs, max_bytes) {
                step.next = last;
                break;
            }
            let key = decode_key(k).ok_or_else(malformed)?;
            step.checked += 1;
            step.bytes += blob.bytes.len() as u64;
            if *blake3::hash(&blob.bytes).as_bytes() != blob.checksum {
                bad.push((k.clone(), key.clone()));
            }
            last = Some(key);
        }
        for (k, key) in bad {
            map.quarantine(&k);
            step.quarantined.push(key);
        }
        Ok(step)
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

    use ringvault_common::wire::{PARTITION_BITMAP_BYTES, bitmap_of};

    /// An id in partition `p`.
    fn id_in(p: u16, n: u8) -> ChunkId {
        let mut id = [n; 32];
        id[..2].copy_from_slice(&p.to_be_bytes());
        ChunkId(id)
    }

    fn all_partitions() -> Vec<u8> {
        vec![0xff; PARTITION_BITMAP_BYTES]
    }

    type Summary = (Vec<[u8; 32]>, Vec<(u16, u32)>, (u64, u64), u64);

    fn summary(s: &dyn ChunkStore) -> Summary {
        (
            s.digests(&all_partitions(), true),
            s.partition_counts(),
            s.stats().unwrap(),
            s.quarantined(),
        )
    }

    /// Blobs over a few partitions (including the first and last) and two
    /// repositories.
    fn spread() -> Vec<(RepoId, ChunkId, Bytes)> {
        let other = RepoId::new("other").unwrap();
        let mut out = Vec::new();
        for (i, p) in [0u16, 1, 0x0102, 0x0103, 0x8000, 0xffff]
            .into_iter()
            .enumerate()
        {
            for n in 0..4u8 {
                let body = Bytes::from(vec![n; 10 + i + usize::from(n)]);
                out.push((repo(), id_in(p, n), body.clone()));
                if n % 2 == 0 {
                    out.push((other.clone(), id_in(p, n), body));
                }
            }
        }
        out
    }

    fn put_each(s: &dyn ChunkStore, blobs: impl IntoIterator<Item = (RepoId, ChunkId, Bytes)>) {
        for (r, id, b) in blobs {
            s.put_blobs(&r, vec![(id, b)]).unwrap();
        }
    }

    fn segment_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn digests_depend_on_the_set_not_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        put_each(&fs, spread());
        let mem = MemStore::default();
        put_each(&mem, spread().into_iter().rev());
        let all = all_partitions();
        assert_eq!(fs.digests(&all, true), mem.digests(&all, true));
        assert_eq!(fs.digests(&all, false), mem.digests(&all, false));
        assert_eq!(summary(&fs), summary(&mem));
        assert_eq!(fs.digests(&all, true).len(), 1 << 16);
        assert_eq!(fs.digests(&all, false).len(), DIGEST_BUCKETS);
        // One blob fewer, or the same ids under another repository: other
        // digests, in exactly the partitions concerned.
        let fewer = MemStore::default();
        put_each(&fewer, spread().into_iter().skip(1));
        let diff: Vec<u16> = (0..=u16::MAX)
            .zip(
                fewer
                    .digests(&all, true)
                    .iter()
                    .zip(&fs.digests(&all, true)),
            )
            .filter(|(_, (a, b))| a != b)
            .map(|(p, _)| p)
            .collect();
        assert_eq!(diff, [0]);
        assert_ne!(
            fewer.digests(&bitmap_of([0]), true),
            fs.digests(&bitmap_of([0]), true)
        );
        assert_eq!(
            fewer.digests(&bitmap_of([1]), true),
            fs.digests(&bitmap_of([1]), true)
        );
        let moved = MemStore::default();
        let third = RepoId::new("third").unwrap();
        put_each(
            &moved,
            spread()
                .into_iter()
                .map(|(r, id, b)| (if r == repo() { r } else { third.clone() }, id, b)),
        );
        assert_eq!(moved.stats().unwrap(), fs.stats().unwrap());
        assert_ne!(moved.digests(&all, false), fs.digests(&all, false));
        // An empty partition's digest is zero.
        assert_eq!(fs.digests(&bitmap_of([7]), true), [[0u8; 32]]);
    }

    #[test]
    fn folded_digests_are_xor_of_partition_digests() {
        let s = MemStore::default();
        for p in (0..=u16::MAX).step_by(97) {
            s.put_blobs(&repo(), vec![(id_in(p, 1), Bytes::from_static(b"x"))])
                .unwrap();
        }
        let chosen: Vec<u16> = (0..=u16::MAX).filter(|p| p % 3 != 0).collect();
        let bitmap = bitmap_of(chosen.iter().copied());
        let per = s.digests(&bitmap, true);
        assert_eq!(per.len(), chosen.len());
        let mut folded = vec![[0u8; 32]; DIGEST_BUCKETS];
        for (p, d) in chosen.iter().zip(&per) {
            xor_into(&mut folded[usize::from(p >> 8)], d);
        }
        assert_eq!(s.digests(&bitmap, false), folded);
        assert!(folded.iter().any(|d| *d != [0; 32]));
        // A short bitmap counts its missing bits as clear.
        assert_eq!(s.digests(&[], true), Vec::<[u8; 32]>::new());
        assert_eq!(s.digests(&[], false), vec![[0u8; 32]; DIGEST_BUCKETS]);
    }

    fn check_paging(s: &dyn ChunkStore) {
        put_each(s, spread());
        for p in [0u16, 0x0102, 0xffff, 5] {
            let mut expected: Vec<(RepoId, ChunkId)> = spread()
                .into_iter()
                .filter(|(_, id, _)| id.partition() == p)
                .map(|(r, id, _)| (r, id))
                .collect();
            expected.sort_by_key(|(r, id)| blob_key(r, id));
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let (page, more) = s.list_partition(p, after.as_ref(), 2).unwrap();
                assert!(page.len() <= 2);
                got.extend(page.iter().cloned());
                after = page.last().cloned();
                if !more {
                    break;
                }
            }
            assert_eq!(got, expected, "partition {p:#x}");
            let (whole, more) = s.list_partition(p, None, 100).unwrap();
            assert_eq!((whole, more), (expected, false));
        }
        // Zero limit: nothing, but says whether there is more.
        assert!(s.list_partition(0x0102, None, 0).unwrap().1);
        // A cursor from another partition: before it lists all, after none.
        let before = (repo(), id_in(0x0101, 0xff));
        assert_eq!(
            s.list_partition(0x0102, Some(&before), 100)
                .unwrap()
                .0
                .len(),
            6
        );
        let beyond = (repo(), id_in(0x0103, 0));
        assert_eq!(
            s.list_partition(0x0102, Some(&beyond), 100).unwrap(),
            (Vec::new(), false)
        );
    }

    #[test]
    fn list_partition_pages_every_key_once_in_order() {
        check_paging(&MemStore::default());
        let dir = tempfile::tempdir().unwrap();
        check_paging(&FsStore::open(dir.path(), FsStoreOptions::default()).unwrap());
    }

    fn check_delete_and_quarantine(s: &dyn ChunkStore) {
        let blobs = spread();
        put_each(s, blobs.clone());
        let (count, bytes) = s.stats().unwrap();
        let (r0, id0, b0) = blobs[0].clone();
        let (r1, id1, b1) = blobs[1].clone();
        let (r2, id2, b2) = blobs[2].clone();
        // Deleting: the present ones count once, absent ones not at all.
        let n = s
            .delete_blobs(&[
                (r0.clone(), id0),
                (r0.clone(), id0),
                (r1.clone(), id1),
                (repo(), id_in(9, 9)),
            ])
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(s.delete_blobs(&[]).unwrap(), 0);
        assert_eq!(s.has(&r0, &[id0]).unwrap(), [false]);
        assert!(s.get_blob(&r1, &id1).unwrap().is_none());
        let gone = (b0.len() + b1.len()) as u64;
        assert_eq!(s.stats().unwrap(), (count - 2, bytes - gone));
        // Quarantine: held once, then no longer.
        assert!(s.quarantine(&r2, &id2).unwrap());
        assert!(!s.quarantine(&r2, &id2).unwrap());
        assert!(!s.quarantine(&repo(), &id_in(9, 9)).unwrap());
        assert_eq!(s.quarantined(), 1);
        assert_eq!(s.has(&r2, &[id2]).unwrap(), [false]);
        assert!(s.get_blob(&r2, &id2).unwrap().is_none());
        assert_eq!(
            s.stats().unwrap(),
            (count - 3, bytes - gone - b2.len() as u64)
        );
        // Digests and counts are those of the remaining set.
        let rest = MemStore::default();
        put_each(&rest, blobs.iter().skip(3).cloned());
        assert_eq!(
            s.digests(&all_partitions(), true),
            rest.digests(&all_partitions(), true)
        );
        assert_eq!(s.partition_counts(), rest.partition_counts());
        // A good copy can be stored again after quarantine.
        s.put_blobs(&r2, vec![(id2, b2.clone())]).unwrap();
        assert_eq!(s.get_blob(&r2, &id2).unwrap().unwrap(), b2);
        assert_eq!(s.quarantined(), 1);
        assert_eq!(s.stats().unwrap(), (count - 2, bytes - gone));
    }

    #[test]
    fn delete_and_quarantine_update_has_get_digests_and_stats() {
        check_delete_and_quarantine(&MemStore::default());
        let dir = tempfile::tempdir().unwrap();
        check_delete_and_quarantine(&FsStore::open(dir.path(), FsStoreOptions::default()).unwrap());
    }

    /// Runs scrub steps until the cycle completes; returns the steps.
    fn scrub_cycle(s: &dyn ChunkStore, max_blobs: usize, max_bytes: u64) -> Vec<ScrubStep> {
        let mut steps = Vec::new();
        let mut after = None;
        loop {
            let step = s.scrub(after.as_ref(), max_blobs, max_bytes).unwrap();
            after = step.next.clone();
            steps.push(step);
            if after.is_none() {
                return steps;
            }
            assert!(steps.len() < 1000, "scrub does not progress");
        }
    }

    #[test]
    fn clean_scrub_cycle_quarantines_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        let mem = MemStore::default();
        for s in [&fs as &dyn ChunkStore, &mem] {
            put_each(s, spread());
            let (count, bytes) = s.stats().unwrap();
            for (max_blobs, max_bytes) in [(3, u64::MAX), (100, 25), (0, 0), (1000, u64::MAX)] {
                let steps = scrub_cycle(s, max_blobs, max_bytes);
                assert_eq!(steps.iter().map(|s| s.checked).sum::<u64>(), count);
                assert_eq!(steps.iter().map(|s| s.bytes).sum::<u64>(), bytes);
                assert!(steps.iter().all(|s| s.quarantined.is_empty()));
                assert!(steps.iter().all(|s| s.checked <= max_blobs.max(1) as u64));
            }
            assert_eq!(scrub_cycle(s, 1000, u64::MAX).len(), 1);
            assert_eq!(s.quarantined(), 0);
        }
        assert_eq!(summary(&fs), summary(&mem));
        let empty = MemStore::default();
        assert_eq!(empty.scrub(None, 10, 10).unwrap(), ScrubStep::default());
    }

    #[test]
    fn scrub_quarantines_flipped_and_short_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let flipped = (repo(), id_in(0x0102, 1));
        let short;
        let before;
        {
            let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
            put_each(&s, spread());
            // The last blob appended is the one a short segment loses.
            let (r, id, _) = spread().pop().unwrap();
            short = (r, id);
            let loc = s.location(&flipped.0, &flipped.1).unwrap().unwrap();
            let seg = s.segment_path(loc.segment);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&seg)
                .unwrap();
            let mut byte = [0u8];
            f.read_exact_at(&mut byte, loc.offset).unwrap();
            f.write_all_at(&[byte[0] ^ 0x40], loc.offset).unwrap();
            f.set_len(f.metadata().unwrap().len() - 1).unwrap();
            before = summary(&s);
        }
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        assert_eq!(summary(&s), before);
        assert!(matches!(
            s.get_blob(&flipped.0, &flipped.1),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            s.get_blob(&short.0, &short.1),
            Err(StoreError::Corrupt { .. })
        ));
        let steps = scrub_cycle(&s, 4, u64::MAX);
        let mut bad: Vec<_> = steps.into_iter().flat_map(|s| s.quarantined).collect();
        bad.sort();
        let mut want = vec![flipped.clone(), short.clone()];
        want.sort();
        assert_eq!(bad, want);
        assert_eq!(s.quarantined(), 2);
        assert_eq!(s.has(&flipped.0, &[flipped.1]).unwrap(), [false]);
        assert!(s.get_blob(&short.0, &short.1).unwrap().is_none());
        let rest = MemStore::default();
        put_each(
            &rest,
            spread().into_iter().filter(|(r, id, _)| {
                (r, id) != (&flipped.0, &flipped.1) && (r, id) != (&short.0, &short.1)
            }),
        );
        assert_eq!(
            s.digests(&all_partitions(), false),
            rest.digests(&all_partitions(), false)
        );
        assert_eq!(s.stats().unwrap(), rest.stats().unwrap());
        // The next cycle finds nothing more.
        let again = scrub_cycle(&s, 4, u64::MAX);
        assert!(again.iter().all(|s| s.quarantined.is_empty()));
    }

    #[test]
    fn mem_store_scrub_finds_rot() {
        let s = MemStore::default();
        put_each(&s, spread());
        let (r, id, _) = spread()[3].clone();
        assert!(s.corrupt(&r, &id));
        assert!(matches!(
            s.get_blob(&r, &id),
            Err(StoreError::Corrupt { .. })
        ));
        let bad: Vec<_> = scrub_cycle(&s, 5, u64::MAX)
            .into_iter()
            .flat_map(|s| s.quarantined)
            .collect();
        assert_eq!(bad, [(r.clone(), id)]);
        assert_eq!(s.quarantined(), 1);
        assert_eq!(s.has(&r, &[id]).unwrap(), [false]);
    }

    #[test]
    fn summaries_after_reopen_equal_summaries_before_close() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
            put_each(&s, spread());
            s.put_blobs(&repo(), blobs(20)).unwrap();
            // A job naming a blob twice stores and counts it once.
            let twice = (id_in(0x4242, 1), Bytes::from_static(b"twice"));
            s.put_blobs(&repo(), vec![twice.clone(), twice]).unwrap();
            assert_eq!(
                s.partition_counts().iter().find(|(p, _)| *p == 0x4242),
                Some(&(0x4242, 1))
            );
            let (r, id, _) = spread()[4].clone();
            s.delete_blobs(&[(r, id), (repo(), ChunkId([3; 32]))])
                .unwrap();
            let (r, id, _) = spread()[7].clone();
            s.quarantine(&r, &id).unwrap();
            summary(&s)
        };
        assert_eq!(before.3, 1);
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        assert_eq!(summary(&s), before);
    }

    #[test]
    fn concurrent_puts_and_deletes_keep_summaries_exact() {
        let dir = tempfile::tempdir().unwrap();
        let repos = [repo(), RepoId::new("other").unwrap()];
        let key = move |i: u32| {
            let id = id_in((i % 5) as u16, (i % 13) as u8);
            (repos[(i % 2) as usize].clone(), id)
        };
        let before = {
            let s = Arc::new(FsStore::open(dir.path(), FsStoreOptions::default()).unwrap());
            let threads: Vec<_> = (0..6u32)
                .map(|t| {
                    let s = s.clone();
                    let key = key.clone();
                    std::thread::spawn(move || {
                        for i in 0..150u32 {
                            let k = (i * 7 + t * 11) % 64;
                            if t % 3 == 2 {
                                let keys: Vec<_> = (k..k + 3).map(&key).collect();
                                s.delete_blobs(&keys).unwrap();
                            } else {
                                let batch = (k..k + 4)
                                    .map(|j| {
                                        let (r, id) = key(j);
                                        (r, id, Bytes::from(vec![j as u8; 20 + j as usize]))
                                    })
                                    .collect::<Vec<_>>();
                                for (r, id, b) in batch {
                                    s.put_blobs(&r, vec![(id, b)]).unwrap();
                                }
                            }
                            if i % 25 == 0 {
                                let (r, id) = key(k + 5);
                                s.quarantine(&r, &id).unwrap();
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            summary(&*s)
        };
        assert!(before.2.0 > 0);
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        assert_eq!(summary(&s), before);
    }

    fn check_quota(s: &dyn ChunkStore, segments: Option<&Path>) {
        let full = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Full { quota: 1000 }));
        let seg_size = || segments.map(segment_bytes);
        let ten: Vec<_> = (0..10u8)
            .map(|i| (id_in(u16::from(i), i), Bytes::from(vec![i; 100])))
            .collect();
        s.put_blobs(&repo(), ten.clone()).unwrap();
        assert_eq!(s.stats().unwrap(), (10, 1000));
        let size = seg_size();
        assert!(full(s.put_blobs(
            &repo(),
            vec![(id_in(50, 0), Bytes::from_static(b"x"))]
        )));
        // Held blobs cost nothing; a job with one new blob fails whole.
        s.put_blobs(&repo(), ten[..3].to_vec()).unwrap();
        let mixed = vec![ten[0].clone(), (id_in(51, 0), Bytes::from_static(b"y"))];
        assert!(full(s.put_blobs(&repo(), mixed)));
        assert_eq!(
            s.has(&repo(), &[id_in(50, 0), id_in(51, 0)]).unwrap(),
            [false, false]
        );
        assert_eq!(seg_size(), size);
        assert_eq!(s.stats().unwrap(), (10, 1000));
        // Deleting frees room.
        assert_eq!(
            s.delete_blobs(&[(repo(), ten[0].0), (repo(), ten[1].0)])
                .unwrap(),
            2
        );
        s.put_blobs(&repo(), vec![(id_in(52, 0), Bytes::from(vec![1; 150]))])
            .unwrap();
        assert_eq!(s.stats().unwrap(), (9, 950));
        assert!(full(s.put_blobs(
            &repo(),
            vec![(id_in(53, 0), Bytes::from(vec![1; 51]))]
        )));
        s.put_blobs(&repo(), vec![(id_in(53, 0), Bytes::from(vec![1; 50]))])
            .unwrap();
        assert_eq!(s.stats().unwrap(), (10, 1000));
    }

    #[test]
    fn quota_refuses_puts_past_it() {
        check_quota(&MemStore::with_quota(1000), None);
        let dir = tempfile::tempdir().unwrap();
        let options = FsStoreOptions {
            quota_bytes: 1000,
            ..FsStoreOptions::default()
        };
        check_quota(
            &FsStore::open(dir.path(), options).unwrap(),
            Some(dir.path()),
        );
    }

    #[test]
    fn quota_refuses_whole_jobs_in_a_shared_commit() {
        let dir = tempfile::tempdir().unwrap();
        let options = FsStoreOptions {
            quota_bytes: 1000,
            ..FsStoreOptions::default()
        };
        let s = Arc::new(FsStore::open(dir.path(), options).unwrap());
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let ids: Vec<_> = (0..4).map(|i| id_in(u16::from(t), i)).collect();
                    let job = ids
                        .iter()
                        .map(|id| (*id, Bytes::from(vec![t; 100])))
                        .collect();
                    barrier.wait();
                    let r = s.put_blobs(&repo(), job);
                    let held = s.has(&repo(), &ids).unwrap();
                    (r.is_ok(), held)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|(ok, _)| *ok).count(), 2);
        for (ok, held) in results {
            assert_eq!(held, [ok; 4]);
        }
        assert_eq!(s.stats().unwrap(), (8, 800));
    }

    #[test]
    fn old_index_layout_is_migrated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
            put_each(&s, spread());
            summary(&s)
        };
        // Rewrite the index in the first layout: table "blobs", keyed
        // repo_len | repo | id.
        {
            let db = Database::create(dir.path().join("index.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let new = txn.open_table(BLOBS).unwrap();
                let mut old = txn.open_table(BLOBS_V1).unwrap();
                for item in new.iter().unwrap() {
                    let (k, v) = item.unwrap();
                    let (r, id) = decode_key(k.value()).unwrap();
                    let mut key = vec![r.as_str().len() as u8];
                    key.extend_from_slice(r.as_str().as_bytes());
                    key.extend_from_slice(&id.0);
                    old.insert(key.as_slice(), v.value()).unwrap();
                }
            }
            txn.delete_table(BLOBS).unwrap();
            txn.commit().unwrap();
        }
        {
            let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
            assert_eq!(summary(&s), before);
            for (r, id, b) in spread() {
                assert_eq!(s.get_blob(&r, &id).unwrap().unwrap(), b);
            }
            let (page, _) = s.list_partition(0x0102, None, 100).unwrap();
            assert_eq!(page.len(), 6);
        }
        let db = Database::create(dir.path().join("index.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let tables: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        assert!(!tables.contains(&"blobs".to_owned()), "{tables:?}");
        assert!(tables.contains(&"blobs-v2".to_owned()));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert_eq!(
            decode_key(&blob_key(&repo(), &ChunkId([4; 32]))),
            Some((repo(), ChunkId([4; 32])))
        );
        for bad in [&b""[..], &[0u8; 33], &[1u8; 34], &[0u8; 40]] {
            assert_eq!(decode_key(bad), None);
            assert_eq!(v1_key_to_v2(bad), None);
        }
        let mut v1 = vec![1, b'r'];
        v1.extend_from_slice(&[4; 32]);
        assert_eq!(
            v1_key_to_v2(&v1),
            Some(blob_key(&repo(), &ChunkId([4; 32])))
        );
    }
}
