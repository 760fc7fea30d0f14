//! Segment files and the [`SegmentWriter`], which owns the open segment on
//! the group-commit thread: the jobs it takes (puts, compaction batches)
//! and group commit, which makes a batch of puts durable with one
//! `fdatasync` and one index commit.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use bytes::Bytes;
use parking_lot::Mutex;
use redb::ReadableTable;
use ringvault_common::{ChunkId, RepoId};

use super::health::{self, Health, is_no_space};
use super::index::Index;
use super::keys::{BLOBS, Location, QUARANTINE, blob_key, index_err};
use super::summaries::{Summaries, lock};
use super::{FsStoreOptions, StoreError};

pub(super) const SEGMENT_MAGIC: &[u8; 4] = b"RVR1";

/// Work for the group-commit thread.
pub(super) enum WriteJob {
    /// Store blobs (batched with other puts).
    Put(PutJob),
    /// Move live records out of a sealed segment (see [`GcStore::compact`]).
    ///
    /// [`GcStore::compact`]: super::GcStore::compact
    Compact(CompactJob),
}

pub(super) struct PutJob {
    pub(super) repo: RepoId,
    pub(super) blobs: Vec<(ChunkId, Bytes)>,
    pub(super) done: mpsc::SyncSender<Result<(), StoreError>>,
}

pub(super) struct CompactJob {
    pub(super) segment: u32,
    /// Blob keys that pointed into `segment` in some [`LOCATED`] table.
    ///
    /// [`LOCATED`]: super::keys::LOCATED
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) done: mpsc::SyncSender<Result<CompactBatch, StoreError>>,
}

/// What one [`CompactJob`] did.
#[derive(Default)]
pub(super) struct CompactBatch {
    /// Entries repointed.
    pub(super) moved: u64,
    /// Bytes appended to the open segment.
    pub(super) written: u64,
    /// Entries left in place because their bytes are missing.
    pub(super) stuck: u64,
}

pub(super) fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

/// The segment files in `dir`, by number, with their sizes in bytes.
pub(super) fn list_segments(dir: &Path) -> Result<BTreeMap<u32, u64>, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.strip_suffix(".seg"))
            .and_then(|s| s.parse::<u32>().ok())
        {
            let size = entry
                .metadata()
                .map_err(|source| StoreError::Io {
                    path: entry.path(),
                    source,
                })?
                .len();
            out.insert(n, size);
        }
    }
    Ok(out)
}

/// Makes the entries of directory `dir` durable (fsync).
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Bytes a segment record's header takes for a blob of `repo`.
fn record_header_len(repo: &RepoId) -> usize {
    SEGMENT_MAGIC.len() + 1 + repo.as_str().len() + 32 + 4 + 32
}

/// Owns the open segment; runs on the group-commit thread.
pub(super) struct SegmentWriter {
    pub(super) dir: PathBuf,
    pub(super) index: Arc<Index>,
    pub(super) options: FsStoreOptions,
    /// The open segment, or the last one made when none is open.
    pub(super) segment: u32,
    pub(super) file: Option<File>,
    pub(super) size: u64,
    /// Bytes of the open segment up to the end of its last indexed record
    /// (or of a commit that may have reached the index); 0 means nothing in
    /// the index points into it.
    pub(super) committed: u64,
    pub(super) summaries: Arc<Mutex<Summaries>>,
    /// Published copy of `segment`.
    pub(super) current: Arc<AtomicU32>,
    /// Sum of the segment file sizes, bytes (see [`GcStore::disk_bytes`]).
    ///
    /// [`GcStore::disk_bytes`]: super::GcStore::disk_bytes
    pub(super) disk: Arc<AtomicU64>,
    pub(super) health: Arc<Health>,
}

/// Why a put job of a group commit was refused.
#[derive(Clone, Copy)]
enum Refusal {
    /// Its new blobs would pass the quota.
    Quota,
    /// They would leave less free space than the watermark: bytes free
    /// and bytes kept free.
    Disk(u64, u64),
}

impl SegmentWriter {
    pub(super) fn run(mut self, rx: mpsc::Receiver<WriteJob>) {
        // A compaction job met while gathering puts, run after them.
        let mut next = None;
        loop {
            let first = match next.take() {
                Some(job) => job,
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            let first = match first {
                WriteJob::Put(job) => job,
                WriteJob::Compact(job) => {
                    let result = self.compact(job.segment, &job.keys);
                    if let Err(e) = &result {
                        // As for a failed put below.
                        self.failed(e);
                    }
                    let _ = job.done.send(result);
                    continue;
                }
            };
            let mut blobs = first.blobs.len();
            let mut jobs = vec![first];
            while blobs < self.options.group_commit_blobs {
                match rx.try_recv() {
                    Ok(WriteJob::Put(job)) => {
                        blobs += job.blobs.len();
                        jobs.push(job);
                    }
                    Ok(other) => {
                        next = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let mut refused = vec![None; jobs.len()];
            // Shared: every put of the batch answers with its cause.
            let result = self.commit(&jobs, &mut refused).map_err(Arc::new);
            if let Err(e) = &result {
                self.failed(e);
            }
            // Out of space on the way: the batch is refused as full, so
            // coordinators place it elsewhere.
            let no_space = match result.as_ref().map_err(|e| &**e) {
                Err(StoreError::Io { source, .. }) => is_no_space(source),
                Err(StoreError::DiskFull { .. }) => true,
                _ => false,
            };
            for (job, refused) in jobs.into_iter().zip(refused) {
                let r = match (&result, refused) {
                    (_, Some(Refusal::Quota)) => Err(StoreError::Full {
                        quota: self.options.quota_bytes,
                    }),
                    (_, Some(Refusal::Disk(free, min_free))) => {
                        Err(StoreError::DiskFull { free, min_free })
                    }
                    (Ok(()), None) => Ok(()),
                    (Err(_), None) if no_space => Err(StoreError::DiskFull {
                        free: 0,
                        min_free: 0,
                    }),
                    (Err(e), None) => Err(StoreError::Commit(e.clone())),
                };
                let _ = job.done.send(r);
            }
        }
        if let Some(f) = &self.file {
            let _ = f.sync_data();
        }
    }

    pub(super) fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: segment_path(&self.dir, self.segment),
            source,
        }
    }

    /// After a failed commit or compaction: notes the failure in the
    /// store's health and leaves the open segment. A failed append may have
    /// left part of a record behind, so the file's length no longer matches
    /// our offsets: the next write starts a fresh segment. One that nothing
    /// in the index points into is deleted (its bytes are unindexed) and
    /// its number reused, so failures leave no segment files behind.
    fn failed(&mut self, e: &StoreError) {
        match e {
            StoreError::Io { source, .. } if is_no_space(source) => {
                self.health.refused(0);
                self.health.note(e.to_string());
            }
            // The state says read-only once the file system is measured.
            StoreError::Io { source, .. }
                if source.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()) =>
            {
                self.health.note(e.to_string());
            }
            // The index notes its own errors.
            StoreError::Index(_) | StoreError::DiskFull { .. } => {}
            _ => self.health.fail(e.to_string(), false),
        }
        let Some(file) = self.file.take() else {
            return;
        };
        if self.committed > 0 {
            return;
        }
        let path = segment_path(&self.dir, self.segment);
        let len = file.metadata().map_or(self.size, |m| m.len());
        drop(file);
        match std::fs::remove_file(&path).and_then(|()| File::open(&self.dir)?.sync_all()) {
            Ok(()) => {
                self.disk.fetch_sub(len, Ordering::Relaxed);
                // Reused by the next rotation.
                self.segment -= 1;
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot remove a segment left by a failed write");
            }
        }
    }

    /// Bytes a put may still write before the file system's free space
    /// reaches the watermark, with the free bytes and the bytes kept free;
    /// also records the measurement in the store's health. Unlimited when
    /// the file system cannot be measured.
    fn disk_room(&self, quota_room: u64) -> (u64, u64, u64) {
        match health::measure(&self.dir) {
            Ok(space) => {
                let room = space.room(&self.options.watermark);
                self.health
                    .observe(room.min(quota_room), space.free, space.read_only);
                (
                    room,
                    space.free,
                    self.options.watermark.min_free(space.total),
                )
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot measure free space");
                (u64::MAX, u64::MAX, 0)
            }
        }
    }

    /// Appends every new blob of `jobs`, fsyncs the segment once, then
    /// commits their index entries (and drops the quarantine entries of
    /// their keys) in one transaction. A job whose new blobs would pass
    /// the quota, or leave less free space than the watermark, is skipped
    /// whole, before any of it is appended, and marked in `refused`.
    fn commit(
        &mut self,
        jobs: &[PutJob],
        refused: &mut [Option<Refusal>],
    ) -> Result<(), StoreError> {
        // Held until the committed entries are accounted (module docs).
        let summaries = self.summaries.clone();
        let mut summaries = lock(&summaries);
        let quota = self.options.quota_bytes;
        let mut held_bytes = summaries.bytes;
        // Measured at the first job with new blobs.
        let mut space: Option<(u64, u64, u64)> = None;
        let mut writing = 0u64;
        let txn = self.index.begin_write()?;
        let mut added = Vec::new();
        let mut unquarantined = 0u64;
        {
            let mut table = txn.open_table(BLOBS).map_err(index_err)?;
            let mut quarantine = txn.open_table(QUARANTINE).map_err(index_err)?;
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
                if fresh.is_empty() {
                    continue;
                }
                let new_bytes: u64 = fresh.iter().map(|(_, _, b)| b.len() as u64).sum();
                if quota > 0 && held_bytes.saturating_add(new_bytes) > quota {
                    *refused = Some(Refusal::Quota);
                    self.health.refused(quota.saturating_sub(held_bytes));
                    continue;
                }
                let header = record_header_len(&job.repo) as u64;
                let file_bytes = new_bytes + header * fresh.len() as u64;
                let quota_room = if quota > 0 {
                    quota.saturating_sub(held_bytes)
                } else {
                    u64::MAX
                };
                let (room, free, min_free) =
                    *space.get_or_insert_with(|| self.disk_room(quota_room));
                if writing.saturating_add(file_bytes) > room {
                    *refused = Some(Refusal::Disk(free.saturating_sub(writing), min_free));
                    self.health.refused(room.saturating_sub(writing));
                    continue;
                }
                writing += file_bytes;
                held_bytes = held_bytes.saturating_add(new_bytes);
                // Before the batch's first record only: the batch lands in
                // one segment, made durable by one fsync below.
                if added.is_empty()
                    && (self.file.is_none() || self.size >= self.options.segment_bytes)
                {
                    self.rotate()?;
                }
                for (key, id, blob) in fresh {
                    let checksum = *blake3::hash(blob).as_bytes();
                    let loc = self.append(&job.repo, id, &checksum, blob, &mut buf)?;
                    table
                        .insert(key.as_slice(), loc.encode().as_slice())
                        .map_err(index_err)?;
                    if quarantine
                        .remove(key.as_slice())
                        .map_err(index_err)?
                        .is_some()
                    {
                        unquarantined += 1;
                    }
                    added.push((key, loc.len));
                }
            }
        }
        if added.is_empty() {
            txn.abort().map_err(index_err)?;
        } else {
            let file = self.file.as_ref().ok_or(StoreError::Closed)?;
            file.sync_data().map_err(|e| self.io(e))?;
            // From here the index may point into this segment, even if the
            // commit reports a failure.
            self.committed = self.size;
            self.index.commit(txn)?;
            for (key, len) in &added {
                summaries.add(key, *len);
            }
            if unquarantined > 0 {
                summaries.remove_quarantined(unquarantined);
            }
            self.health.stored();
        }
        Ok(())
    }

    /// Appends one record to the open segment (`buf` is scratch space for
    /// its header) and returns its location. On failure the file may hold
    /// part of it; the caller then drops the file (see [`Self::run`]).
    pub(super) fn append(
        &mut self,
        repo: &RepoId,
        id: &ChunkId,
        checksum: &[u8; 32],
        blob: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<Location, StoreError> {
        let repo = repo.as_str().as_bytes();
        buf.clear();
        buf.extend_from_slice(SEGMENT_MAGIC);
        // RepoId::MAX_LEN is 64, so the length fits a byte.
        buf.push(repo.len() as u8);
        buf.extend_from_slice(repo);
        buf.extend_from_slice(&id.0);
        buf.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        buf.extend_from_slice(checksum);
        let offset = self.size + buf.len() as u64;
        let file = self.file.as_mut().ok_or(StoreError::Closed)?;
        if let Err(e) = file.write_all(buf).and_then(|()| file.write_all(blob)) {
            // Count whatever part of the record reached the file.
            if let Ok(meta) = file.metadata() {
                self.disk
                    .fetch_add(meta.len().saturating_sub(self.size), Ordering::Relaxed);
            }
            return Err(self.io(e));
        }
        let end = offset + blob.len() as u64;
        self.disk.fetch_add(end - self.size, Ordering::Relaxed);
        self.size = end;
        Ok(Location {
            segment: self.segment,
            offset,
            len: blob.len() as u32,
            checksum: *checksum,
        })
    }

    /// Starts a new segment file and makes its directory entry durable.
    pub(super) fn rotate(&mut self) -> Result<(), StoreError> {
        if let Some(f) = &self.file {
            f.sync_data().map_err(|e| self.io(e))?;
        }
        let next = self.segment + 1;
        let path = segment_path(&self.dir, next);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        // Open before the directory sync, so that a failure removes it.
        self.segment = next;
        self.file = Some(file);
        self.size = 0;
        self.committed = 0;
        self.current.store(next, Ordering::Release);
        sync_dir(&self.dir)
    }
}
