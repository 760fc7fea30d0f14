//! The summaries: per-partition blob counts and set digests plus the
//! store's totals, kept in memory equal to the blob index (see the module
//! docs, "Summaries").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use ringvault_common::wire::{DIGEST_BUCKETS, bitmap_has};

use super::StoreError;
use super::keys::{
    BLOBS, Location, PARTITIONS, QUARANTINE, TRASH, decode_key, decode_timed, index_err,
    key_partition, malformed,
};

/// Per-partition blob counts and set digests plus totals, kept equal to the
/// blob index (see the module docs).
pub(super) struct Summaries {
    /// [`PARTITIONS`] digests, indexed by partition.
    digests: Box<[[u8; 32]]>,
    /// [`PARTITIONS`] blob counts, indexed by partition.
    counts: Box<[u32]>,
    pub(super) blobs: u64,
    pub(super) bytes: u64,
    pub(super) quarantined: u64,
    /// Trash entries and their blob bytes.
    pub(super) trash: u64,
    pub(super) trash_bytes: u64,
    /// The totals, copied out on every change so that [`BlobStore::stats`]
    /// never waits for a group commit holding the lock.
    ///
    /// [`BlobStore::stats`]: super::BlobStore::stats
    pub(super) totals: Arc<Totals>,
}

/// Totals readable without the summaries' lock. Each is exact; a pair read
/// together may straddle one update.
#[derive(Default)]
pub(super) struct Totals {
    pub(super) blobs: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) quarantined: AtomicU64,
    pub(super) trash: AtomicU64,
    pub(super) trash_bytes: AtomicU64,
}

impl Summaries {
    pub(super) fn new() -> Self {
        Self {
            digests: vec![[0u8; 32]; PARTITIONS].into_boxed_slice(),
            counts: vec![0u32; PARTITIONS].into_boxed_slice(),
            blobs: 0,
            bytes: 0,
            quarantined: 0,
            trash: 0,
            trash_bytes: 0,
            totals: Arc::default(),
        }
    }

    /// Accounts an entry of `len` blob bytes entering the trash under a key
    /// not there before.
    pub(super) fn add_trash(&mut self, len: u32) {
        self.trash = self.trash.wrapping_add(1);
        self.trash_bytes = self.trash_bytes.wrapping_add(u64::from(len));
        self.publish();
    }

    /// Accounts a trash entry of `len` blob bytes leaving (restored,
    /// expired, or replaced by a newer one).
    pub(super) fn remove_trash(&mut self, len: u32) {
        self.trash = self.trash.wrapping_sub(1);
        self.trash_bytes = self.trash_bytes.wrapping_sub(u64::from(len));
        self.publish();
    }

    /// Accounts a blob entering quarantine under a key not there before.
    pub(super) fn add_quarantined(&mut self) {
        self.quarantined = self.quarantined.wrapping_add(1);
        self.publish();
    }

    /// Accounts `n` quarantine entries dropped (good copies came back).
    pub(super) fn remove_quarantined(&mut self, n: u64) {
        self.quarantined = self.quarantined.wrapping_sub(n);
        self.publish();
    }

    fn publish(&self) {
        self.totals.blobs.store(self.blobs, Ordering::Relaxed);
        self.totals.bytes.store(self.bytes, Ordering::Relaxed);
        self.totals
            .quarantined
            .store(self.quarantined, Ordering::Relaxed);
        self.totals.trash.store(self.trash, Ordering::Relaxed);
        self.totals
            .trash_bytes
            .store(self.trash_bytes, Ordering::Relaxed);
    }

    /// Accounts a blob key entering the index. Wrapping arithmetic: the
    /// updates commute, so they never panic and always come back to the
    /// index's true figures.
    pub(super) fn add(&mut self, key: &[u8], len: u32) {
        let p = self.toggle(key);
        self.counts[p] = self.counts[p].wrapping_add(1);
        self.blobs = self.blobs.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(u64::from(len));
        self.publish();
    }

    /// Accounts a blob key leaving the index.
    pub(super) fn remove(&mut self, key: &[u8], len: u32) {
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

    pub(super) fn digests(&self, partitions: &[u8], per_partition: bool) -> Vec<[u8; 32]> {
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

    pub(super) fn partition_counts(&self) -> Vec<(u16, u32)> {
        (0..=u16::MAX)
            .zip(self.counts.iter())
            .filter(|(_, n)| **n != 0)
            .map(|(p, n)| (p, *n))
            .collect()
    }
}

pub(super) fn xor_into(acc: &mut [u8; 32], x: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a ^= b;
    }
}

/// Locks summaries, poisoned or not: they are changed only after a commit,
/// by code that cannot panic, so a panicking holder never leaves them half
/// updated.
pub(super) fn lock(summaries: &Mutex<Summaries>) -> MutexGuard<'_, Summaries> {
    summaries.lock()
}

/// Builds the summaries by one scan of the blob index.
pub(super) fn summarize(db: &Database) -> Result<Summaries, StoreError> {
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
    let trash = txn.open_table(TRASH).map_err(index_err)?;
    for item in trash.iter().map_err(index_err)? {
        let (_, v) = item.map_err(index_err)?;
        let (loc, _) = decode_timed(v.value()).ok_or_else(malformed)?;
        s.trash += 1;
        s.trash_bytes += u64::from(loc.len);
    }
    s.publish();
    Ok(s)
}
