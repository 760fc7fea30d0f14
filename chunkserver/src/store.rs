//! The chunk store: where a server keeps blobs, snapshot records and keys.
//!
//! [`FsStore`] appends blobs to segment files and makes each batch durable
//! with one `fdatasync` (group commit), then records where each blob lives in
//! a redb index and commits that (redb fsyncs its commit). A put is answered
//! only after both. A crash before the index commit leaves unindexed bytes in
//! a segment, never an index entry pointing at bytes that are not on disk; a
//! store reopened after a crash starts a new segment (at its first write),
//! so a torn tail is never appended to. A group commit that fails before
//! anything of its segment was indexed removes that segment file, so
//! failures (a full disk) leave no empty segments behind. Every index entry
//! carries a BLAKE3 checksum of its blob, checked on every read; a blob
//! whose segment file is gone counts as failing it.
//!
//! # Opening
//!
//! [`FsStore::open`] verifies the index (redb's integrity check) and refuses
//! a damaged one with [`StoreError::IndexCorrupt`], which names the way out
//! (`ringvault-chunkserver --rebuild-index`, [`FsStore::rebuild_index`]). An
//! index file missing beside segment files is rebuilt from them rather than
//! started empty; so is one that was never finished (empty, or without
//! redb's magic number, which redb writes last: a power loss while a new
//! store made it), which alone is moved aside and started afresh. Every
//! entry is then checked against the segment files (blobs whose bytes are
//! missing are quarantined at once): see
//! [`recover`]. The directory entries of a new store (data directory,
//! `segments/`, the index) are fsync'd.
//!
//! # Health
//!
//! The store keeps its state ([`StoreHealth`]: ok, full, read-only,
//! failing, with the last error), see [`health`]. With less free space on
//! its file system than the [`Watermark`], puts fail with
//! [`StoreError::DiskFull`] before anything is appended, as for the quota;
//! reads go on, and puts are taken again as soon as space comes back. An I/O
//! error in the index makes it close and reopen its database ([`index`]).
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
//! blobs-v2      id:[u8; 32]  repo_len:u8  repo  ->  segment:u32  offset:u64  len:u32  checksum:[u8; 32]
//! quarantine    id:[u8; 32]  repo_len:u8  repo  ->  the same location, then quarantined at: u64 unix seconds
//! trash         id:[u8; 32]  repo_len:u8  repo  ->  the same location, then trashed at: u64 unix seconds
//! unreferenced  id:[u8; 32]  repo_len:u8  repo  ->  first found unreferenced at: u64 unix seconds
//! records       kind:u8  repo_len:u8  repo  key:[u8; 32]  ->  value
//! ```
//!
//! (integers little endian). A blob key leads with the [`ChunkId`], so the
//! blobs of one partition ([`ChunkId::partition`], the unit of repair) are
//! one contiguous key range over all repositories. Stores written before
//! this layout kept `repo_len | repo | id` keys in a table `blobs`;
//! [`FsStore::open`] moves them into `blobs-v2` in one write transaction and
//! deletes the old table.
//!
//! Deleting, trashing or quarantining a blob removes its `blobs-v2` entry
//! only; its segment bytes stay until a compaction rewrites the segment.
//! Quarantined and trashed blobs keep their bytes (their entries there point
//! into segments); a trashed blob can be restored until the trash entry
//! expires. A quarantine entry is dropped when a new copy of its blob is
//! stored (the repair it waited for), so its bytes stop counting as live.
//! The `unreferenced` marks are prune's memory between rounds; trashing or
//! deleting a blob clears its mark.
//!
//! # Compaction
//!
//! [`GcStore::compact`] rewrites sealed segments (every segment but the
//! one being appended to) that are mostly dead: a segment's live bytes are
//! the blob bytes of the entries in `blobs-v2`, `quarantine` and `trash`
//! pointing into it. The group-commit thread copies a batch of live records
//! to the open segment, serialised with puts, fsyncs them, then repoints
//! their entries (whichever table) in one transaction; once every record has
//! moved the old file is deleted and the directory fsync'd. A crash leaves
//! either unindexed copies or a segment nothing points into, which the next
//! compaction deletes. A reader that looked a location up before the move
//! and finds the segment gone looks it up once more (an open descriptor
//! keeps reading the unlinked file). Puts append only to the open segment,
//! and every other change moves an entry between the three tables under the
//! same key or drops it, so the keys found pointing into a sealed segment
//! when its compaction starts cover every entry pointing there later.
//!
//! # Summaries
//!
//! Each store keeps in memory, per partition, the number of blobs it holds
//! and a set digest of their index keys (see [`RepairStore::digests`]), plus
//! total blobs, bytes, quarantined blobs, trash entries and their bytes:
//! 2^16 × (32 + 4) bytes and a few counters. [`FsStore`] computes them by
//! one scan of the index at open and updates them with every index change.
//! Their lock is taken before a write transaction that changes them begins
//! (a compaction's, which only repoints entries, does not take it) and
//! released only after the committed change has been applied, so whenever
//! it is free they equal the committed index; readers of digests may thus
//! wait for one group commit. The totals
//! are also copied to atomics, read without the lock.
//!
//! # Quota
//!
//! With a quota, a put whose blobs not already held would take the held
//! blob bytes past it fails whole with [`StoreError::Full`] before anything
//! is appended; other puts sharing its group commit are unaffected. The
//! quota counts live blob bytes: deleted, trashed and quarantined blobs stop
//! counting at once, though their segment bytes stay on disk until a
//! compaction (and, for trashed and quarantined ones, past it). Restoring
//! the trash does not check the quota.
//!
//! [`MemStore`] keeps everything in memory, for tests.
//!
//! # Who calls what
//!
//! The calls are split by their users: [`BlobStore`] (the request path),
//! [`RecordStore`] (snapshot records and keys), [`PartitionStore`] (walking
//! the blobs by partition), [`RepairStore`] (handoff, anti-entropy, scrub,
//! quarantine), [`GcStore`] (prune's marks, the trash, compaction) and
//! [`HealthStore`] (status). [`ChunkStore`] is all of them, implemented by
//! every type that implements the parts.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use ringvault_common::{ChunkId, RepoId};

mod compact;
mod fs;
mod fs_ops;
pub mod health;
mod index;
mod keys;
mod mem;
mod migrate;
pub mod recover;
mod segment;
mod summaries;

pub use fs::FsStore;
pub use health::{StoreHealth, Watermark};
pub use index::IndexError;
pub(crate) use keys::unix_seconds;
pub use mem::MemStore;
pub use recover::RebuildReport;

use keys::record_prefix_raw;

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
    /// The index failed: redb's error, or an entry or state of ours (see
    /// [`IndexError`]).
    #[error("index: {0}")]
    Index(#[from] IndexError),
    /// A different value is already stored under this key.
    #[error("a different record is already stored under this key")]
    Exists,
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// A group commit failed (the whole batch was not stored): the error
    /// that failed it, shared by every put of the batch.
    #[error("group commit failed: {0}")]
    Commit(#[source] Arc<StoreError>),
    /// Storing the new blobs of a put would take the stored blob bytes past
    /// the quota; none of the put was stored.
    #[error("store is full (quota {quota} bytes)")]
    Full {
        /// The quota, bytes of blobs.
        quota: u64,
    },
    /// Storing the new blobs of a put would leave less free space on the
    /// store's file system than its [`Watermark`] (or the file system ran
    /// out of space); none of the put was stored.
    #[error("store is full ({free} bytes free on its file system, {min_free} kept free)")]
    DiskFull {
        /// Bytes free when the put was refused.
        free: u64,
        /// Bytes the watermark keeps free.
        min_free: u64,
    },
    /// The index file is damaged: the store refuses to open it.
    #[error(
        "the index {} is damaged ({source}); stop the server and run `ringvault-chunkserver --config <its config> --rebuild-index`, which moves it aside and rebuilds it from the segment files (snapshot records and keys then come back from the other servers)",
        path.display()
    )]
    IndexCorrupt {
        /// The index file.
        path: PathBuf,
        /// What redb found.
        #[source]
        source: redb::Error,
    },
}

/// Kinds of small records kept beside blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A sealed snapshot record, keyed by snapshot id.
    Snapshot = 1,
    /// The repository's wrapped key, keyed by 32 zero bytes.
    Key = 2,
    /// A deleted snapshot's id, keyed by snapshot id, so that servers do not
    /// copy the snapshot record back from a peer that still holds it. The
    /// store treats it as any other record.
    Tombstone = 3,
}

impl RecordKind {
    /// The kind stored as `kind` (as in a [`RecordKey`] or on the wire);
    /// `None` for a number no kind has.
    pub fn from_u8(kind: u8) -> Option<Self> {
        match kind {
            1 => Some(Self::Snapshot),
            2 => Some(Self::Key),
            3 => Some(Self::Tombstone),
            _ => None,
        }
    }
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

/// A small record as listed: its 32-byte key and its value.
pub type Record = ([u8; 32], Vec<u8>);

/// One step of a scrub cycle, as returned by [`RepairStore::scrub`].
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

/// What one [`GcStore::compact`] call did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segments rewritten and deleted.
    pub segments: u64,
    /// Their file sizes, bytes.
    pub bytes_before: u64,
    /// Segment file bytes their live records take after the copy (headers
    /// included).
    pub bytes_after: u64,
}

/// What a server stores: every part below, as one trait object. All calls
/// block; async callers use `spawn_blocking` (the calls documented as from
/// memory without waiting excepted).
///
/// [`FsStore`] and [`MemStore`] implement the parts; the blanket impl makes
/// any type implementing all of them a `ChunkStore`. A [`crate::node::Node`]
/// holds its store as `Arc<dyn ChunkStore>`; a module that needs one part
/// takes only that part, to which a `&dyn ChunkStore` upcasts: prune's
/// sweep a [`GcStore`], the record listings a [`RecordStore`], the store
/// call wrapper (`node::run_store_call`) a [`HealthStore`].
///
/// # Errors
/// As each part says.
pub trait ChunkStore:
    BlobStore + RecordStore + PartitionStore + RepairStore + GcStore + HealthStore
{
}

impl<T> ChunkStore for T where
    T: BlobStore + RecordStore + PartitionStore + RepairStore + GcStore + HealthStore
{
}

/// Blobs by repository and id: what the request path needs. Used by
/// `server` (an agent's puts, reads, has-queries and sizes), `replicate`
/// (replica writes and a peer's batched reads) and `maintenance` (handoff
/// and repair read and store blobs).
///
/// # Errors
/// [`StoreError::Full`] and [`StoreError::DiskFull`] refuse a put whole;
/// [`StoreError::Corrupt`] marks a blob that failed its checksum (quarantine
/// it, [`RepairStore::quarantine`]); [`StoreError::Index`] and
/// [`StoreError::Io`] are failures of the index and of the segment files.
pub trait BlobStore: Send + Sync + 'static {
    /// Stores blobs durably (fsync'd) before returning. Blobs already held
    /// are skipped. Idempotent.
    ///
    /// A stored blob's quarantine entry, if any, is dropped.
    ///
    /// # Errors
    /// [`StoreError::Full`] when the blobs not already held would take the
    /// stored bytes past the quota, [`StoreError::DiskFull`] when they would
    /// leave less free space than the watermark: then none of them is
    /// stored. Otherwise [`StoreError`]; on error none of the batch may be
    /// relied on.
    fn put_blobs(&self, repo: &RepoId, blobs: Vec<(ChunkId, Bytes)>) -> Result<(), StoreError>;

    /// Reads and checks one blob; `None` if not held.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the checksum fails or the blob's bytes
    /// are missing (its segment short or gone): call
    /// [`RepairStore::quarantine`] and fetch a good copy. Other I/O errors as
    /// [`StoreError::Io`].
    fn get_blob(&self, repo: &RepoId, id: &ChunkId) -> Result<Option<Bytes>, StoreError>;

    /// Reads and checks blobs in order, as [`BlobStore::get_blob`] would
    /// one by one, stopping after the one that brings the bytes read to
    /// `max_bytes` or more: the answer is a prefix of `ids`, never empty
    /// unless `ids` is. Each blob's own error stays with it (quarantine the
    /// [`StoreError::Corrupt`] ones).
    ///
    /// # Errors
    /// [`StoreError::Index`] when the index cannot be read at all.
    fn get_blobs(
        &self,
        repo: &RepoId,
        ids: &[ChunkId],
        max_bytes: usize,
    ) -> Result<Vec<Result<Option<Bytes>, StoreError>>, StoreError> {
        Ok(read_within(
            ids.iter().map(|id| self.get_blob(repo, id)),
            max_bytes,
        ))
    }

    /// Which of `ids` are held.
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index cannot be read.
    fn has(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError>;

    /// The size in bytes of each of `ids` as stored (the sealed blob), 0
    /// when not held.
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index cannot be read.
    fn sizes(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<u32>, StoreError>;

    /// Number of blobs held and their total bytes (blob bytes, not segment
    /// file sizes), from memory: constant time, and [`FsStore`] answers
    /// without waiting for a write in flight, so async code may call it
    /// directly. Quarantined blobs are not counted.
    ///
    /// # Errors
    /// None today; kept fallible for callers of the earlier, scanning
    /// version.
    fn stats(&self) -> Result<(u64, u64), StoreError>;
}

/// Small records beside the blobs: snapshot records, wrapped keys and
/// tombstones. Used by `records` (storing snapshots and keys, deleting
/// snapshots, listing live records), `server` (reading one record, listing
/// record keys for a peer) and `maintenance` (record sync copies records a
/// peer holds).
///
/// # Errors
/// [`StoreError::Exists`] when an exclusive put meets a different value,
/// [`StoreError::Index`] when the index fails (a write then changed
/// nothing).
pub trait RecordStore: Send + Sync + 'static {
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

    /// Removes one record; returns whether it was held. Durable when it
    /// returns. Call it with [`RecordKind::Snapshot`] after storing the
    /// snapshot's [`RecordKind::Tombstone`].
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index transaction fails; then nothing
    /// was removed.
    fn delete_record(
        &self,
        kind: RecordKind,
        repo: &RepoId,
        key: &[u8; 32],
    ) -> Result<bool, StoreError>;

    /// The (kind, repository, key) of every record held, in any order:
    /// what servers compare to copy records a peer missed.
    ///
    /// # Errors
    /// [`StoreError`].
    fn record_keys(&self) -> Result<Vec<RecordKey>, StoreError>;
}

/// The blobs held, walked by partition ([`ChunkId::partition`], the unit of
/// placement and repair): counts and key listings. Used by `maintenance`
/// (handoff and anti-entropy), `server` (a peer's listing request) and,
/// through [`GcStore`], `prune`'s sweep.
///
/// # Errors
/// Only [`PartitionStore::list_partition`] fails: [`StoreError::Index`].
pub trait PartitionStore: Send + Sync + 'static {
    /// Every partition holding at least one blob, ascending, with its
    /// number of blobs (over all repositories). From memory; may wait for a
    /// group commit in flight, as [`RepairStore::digests`].
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
}

/// What keeps the copies whole and in place, beyond reading and writing
/// blobs: partition digests to compare with co-replicas, quarantine of a
/// blob that failed its checksum, scrub, the trash check that keeps repair
/// from pulling back what prune trashed, and dropping blobs handed off to
/// their owners. Used by `maintenance` (handoff, anti-entropy, scrub),
/// `node::quarantine` (after a read found a blob corrupt) and `server` (a
/// peer's digest request).
///
/// # Errors
/// [`StoreError::Index`] when the index fails (a write then changed
/// nothing); [`StoreError::Io`] when scrub cannot read a segment.
pub trait RepairStore: PartitionStore {
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
    ///
    /// [`DIGEST_BUCKETS`]: ringvault_common::wire::DIGEST_BUCKETS
    fn digests(&self, partitions: &[u8], per_partition: bool) -> Vec<[u8; 32]>;

    /// Moves a blob's index entry (location and checksum) to quarantine,
    /// with the time, durably: the blob is no longer held (not in
    /// [`BlobStore::has`], [`BlobStore::get_blob`], digests or stats).
    /// Returns whether it was held. Call it on [`StoreError::Corrupt`], then
    /// fetch a good copy from a co-replica and put it, which drops the
    /// quarantine entry.
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
    /// missing (its segment short or gone), is quarantined. Call it at a
    /// bounded rate, passing back [`ScrubStep::next`] until it is `None`.
    ///
    /// # Errors
    /// [`StoreError::Io`] when a segment cannot be read for another reason
    /// (a device error): nothing of the step was quarantined and the same
    /// step may be retried. [`StoreError::Index`] if the index cannot be
    /// read or written.
    fn scrub(
        &self,
        after: Option<&(RepoId, ChunkId)>,
        max_blobs: usize,
        max_bytes: u64,
    ) -> Result<ScrubStep, StoreError>;

    /// Which of `ids` have a trash entry in `repo` (whether or not a new
    /// copy is held as well).
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index cannot be read.
    fn in_trash(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError>;

    /// Removes the index entries of `keys` and returns how many were held.
    /// Durable when it returns. The segment bytes stay until a compaction;
    /// the blobs' bytes no longer count against the quota. Clears the
    /// unreferenced marks of all `keys`.
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index transaction fails; then nothing
    /// was deleted.
    fn delete_blobs(&self, keys: &[(RepoId, ChunkId)]) -> Result<u64, StoreError>;
}

/// Garbage collection: prune's unreferenced marks, the trash, and the
/// compaction that reclaims segment bytes. Used by `prune` (the sweep, trash
/// expiry, compaction), which sees nothing else of the store, and by
/// `server` (an agent's restore-trash request).
///
/// # Errors
/// [`StoreError::Index`] when the index fails (a write then changed
/// nothing); [`GcStore::compact`] also [`StoreError::Io`] and
/// [`StoreError::Closed`].
pub trait GcStore: PartitionStore {
    /// When each of `ids` was first found unreferenced (unix seconds), as
    /// recorded by [`GcStore::set_unreferenced`]; `None` when unmarked.
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index cannot be read or holds a
    /// malformed mark.
    fn unreferenced_since(
        &self,
        repo: &RepoId,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<u64>>, StoreError>;

    /// Records prune's findings in one durable transaction: `Some(t)` marks
    /// the id unreferenced since `t` (unix seconds), keeping an earlier
    /// mark; `None` clears its mark. Marks do not depend on the blob being
    /// held.
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index transaction fails; then nothing
    /// changed.
    fn set_unreferenced(
        &self,
        repo: &RepoId,
        entries: &[(ChunkId, Option<u64>)],
    ) -> Result<(), StoreError>;

    /// Moves the index entries of the held blobs among `keys` to the trash,
    /// stamped `now_s` (unix seconds), in one durable transaction, and
    /// returns how many moved. They are then no longer held (not in
    /// [`BlobStore::has`], [`BlobStore::get_blob`], digests, counts or
    /// stats) but keep their bytes until [`GcStore::expire_trash`]
    /// drops them; [`GcStore::restore_trash`] brings them back. Clears
    /// the unreferenced marks of all `keys`. A key trashed again after a new
    /// copy was stored keeps one trash entry, the newer.
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index transaction fails; then nothing
    /// moved.
    fn trash(&self, keys: &[(RepoId, ChunkId)], now_s: u64) -> Result<u64, StoreError>;

    /// Number of trash entries and their blob bytes, from memory (constant
    /// time, no waiting, as [`BlobStore::stats`]).
    fn trash_stats(&self) -> (u64, u64);

    /// Drops for good the trash entries trashed before `trashed_before_s`
    /// (unix seconds), durably, and returns how many and their blob bytes.
    /// Their segment bytes are reclaimed by a later
    /// [`GcStore::compact`]. Time linear in the size of the trash.
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index transaction fails; then nothing
    /// was dropped.
    fn expire_trash(&self, trashed_before_s: u64) -> Result<(u64, u64), StoreError>;

    /// Moves every trash entry of `repo` back into the index, durably, and
    /// returns how many came back. An entry whose key is held again (a new
    /// copy was stored since) is dropped instead. Restored blobs count
    /// against the quota again without being checked against it. Time
    /// linear in the size of the trash (all repositories).
    ///
    /// # Errors
    /// [`StoreError::Index`] if the index transaction fails; then nothing
    /// moved.
    fn restore_trash(&self, repo: &RepoId) -> Result<u64, StoreError>;

    /// Rewrites the sealed segments whose live bytes (blob bytes of the
    /// held, quarantined and trashed blobs stored there) are at most
    /// `max_live_fraction` of their file size, then deletes them: 0.0
    /// deletes only segments nothing points into, 1.0 rewrites every sealed
    /// segment. Live records are copied to the open segment by the writer,
    /// in batches serialised with puts, so puts wait at most one batch;
    /// reads go on. Blobs, digests and stats do not change. A segment with
    /// a live record whose bytes are missing (short file) is kept, its
    /// other records moved. One compaction runs at a time; call it after
    /// deleting or expiring many blobs, at a quiet time: it scans the whole
    /// index and copies up to the fraction of each chosen segment.
    ///
    /// # Errors
    /// [`StoreError::Io`] if a segment cannot be read, listed or deleted,
    /// [`StoreError::Index`] if the index fails, [`StoreError::Closed`] on
    /// shutdown. Segments rewritten before the error stay rewritten; the
    /// rest is left as it was, and a later call may retry.
    fn compact(&self, max_live_fraction: f64) -> Result<CompactReport, StoreError>;

    /// Bytes the store keeps its blobs in: for [`FsStore`], the sum of its
    /// segment file sizes, from memory (constant time). Compare with
    /// [`BlobStore::stats`] to judge whether a compaction would pay.
    fn disk_bytes(&self) -> u64;
}

/// What a store says about itself, from memory and without waiting for a
/// write, so async code may call it directly: its state and last error, its
/// quarantined blobs; and marking it failing. Used by `node` (the node's
/// status, and [`HealthStore::mark_failing`] when a store call panicked).
///
/// # Errors
/// None: these calls do not fail.
pub trait HealthStore: Send + Sync + 'static {
    /// The store's state and last error (see [`health`]). Measures the free
    /// space of its file system (one `statvfs` call) and never waits for a
    /// write, so async code may call it directly; each call may also end
    /// the full state when space came back.
    fn health(&self) -> StoreHealth;

    /// Marks the store failing with `error` until the process restarts.
    /// Call it when a store call panicked: the panic must show in the
    /// node's status, not vanish with its task.
    fn mark_failing(&self, error: &str);

    /// Number of keys in quarantine, from memory (constant time, no
    /// waiting). An entry stays, and compaction keeps its bytes, until a
    /// new copy of its blob is stored.
    fn quarantined(&self) -> u64;
}

/// Settings of an [`FsStore`].
#[derive(Clone, Debug)]
pub struct FsStoreOptions {
    /// Most blobs made durable by one fsync.
    pub group_commit_blobs: usize,
    /// Start a new segment past this size, bytes.
    pub segment_bytes: u64,
    /// Most blob bytes held (as [`BlobStore::stats`] counts them); a put
    /// whose new blobs would pass it fails with [`StoreError::Full`]. 0
    /// means no quota.
    pub quota_bytes: u64,
    /// Free space kept on the file system; a put whose new blobs would
    /// leave less fails with [`StoreError::DiskFull`].
    pub watermark: Watermark,
}

impl Default for FsStoreOptions {
    fn default() -> Self {
        Self {
            group_commit_blobs: 1024,
            segment_bytes: 1 << 30,
            quota_bytes: 0,
            watermark: Watermark::default(),
        }
    }
}

/// Collects blob reads in order, lazily, up to and including the one that
/// brings the bytes read to `max_bytes`: the budget of
/// [`BlobStore::get_blobs`].
fn read_within(
    reads: impl Iterator<Item = Result<Option<Bytes>, StoreError>>,
    max_bytes: usize,
) -> Vec<Result<Option<Bytes>, StoreError>> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for got in reads {
        if let Ok(Some(b)) = &got {
            bytes = bytes.saturating_add(b.len());
        }
        out.push(got);
        if bytes >= max_bytes {
            break;
        }
    }
    out
}

/// Blob bytes a quota of `quota` bytes (0: none) still allows with `held`
/// bytes held.
fn quota_room(quota: u64, held: u64) -> u64 {
    if quota == 0 {
        u64::MAX
    } else {
        quota.saturating_sub(held)
    }
}

/// Whether a scrub step has reached its limits.
fn scrub_step_full(step: &ScrubStep, max_blobs: usize, max_bytes: u64) -> bool {
    step.checked >= u64::try_from(max_blobs).unwrap_or(u64::MAX) || step.bytes >= max_bytes
}

#[cfg(test)]
mod tests;
