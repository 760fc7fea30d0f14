//! [`MemStore`], the in-memory [`ChunkStore`](super::ChunkStore) for tests.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use ringvault_common::{ChunkId, RepoId};

use super::health::{Health, StoreHealth};
use super::keys::{
    blob_key, decode_key, key_in_repo, malformed, parse_record_key, partition_range, record_prefix,
};
use super::summaries::Summaries;
use super::{
    BlobStore, CompactReport, GcStore, HealthStore, PartitionStore, Record, RecordKey, RecordKind,
    RecordStore, RepairStore, ScrubStep, StoreError, quota_room, scrub_step_full,
};

/// An in-memory [`ChunkStore`](super::ChunkStore) for tests. Blobs are keyed and ordered as
/// in [`FsStore`]'s index, so listings, digests and scrub cursors agree
/// between the two. Everything is implemented as for [`FsStore`] except
/// [`GcStore::compact`], a no-op: there are no segments to rewrite.
///
/// [`FsStore`]: super::FsStore
pub struct MemStore {
    blobs: Mutex<MemBlobs>,
    records: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    quota_bytes: u64,
    health: Health,
}

struct MemBlobs {
    held: BTreeMap<Vec<u8>, MemBlob>,
    quarantine: BTreeMap<Vec<u8>, MemBlob>,
    /// Trashed blobs with the unix seconds they were trashed at.
    trash: BTreeMap<Vec<u8>, (MemBlob, u64)>,
    /// Unreferenced marks, unix seconds.
    unreferenced: HashMap<Vec<u8>, u64>,
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
                trash: BTreeMap::new(),
                unreferenced: HashMap::new(),
                summaries: Summaries::new(),
            }),
            records: Mutex::new(HashMap::new()),
            quota_bytes,
            health: Health::default(),
        }
    }

    /// Simulates bit rot: changes a held blob's stored bytes so that it
    /// fails its checksum ([`StoreError::Corrupt`] on read, quarantined by
    /// scrub). Returns whether it was held. For tests.
    pub fn corrupt(&self, repo: &RepoId, id: &ChunkId) -> bool {
        let mut blobs = self.blobs.lock();
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

    fn lock_blobs(&self) -> MutexGuard<'_, MemBlobs> {
        self.blobs.lock()
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

impl BlobStore for MemStore {
    fn put_blobs(&self, repo: &RepoId, blobs: Vec<(ChunkId, Bytes)>) -> Result<(), StoreError> {
        let mut map = self.lock_blobs();
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
            self.health
                .refused(quota_room(self.quota_bytes, map.summaries.bytes));
            return Err(StoreError::Full {
                quota: self.quota_bytes,
            });
        }
        let mut unquarantined = 0;
        for (key, bytes) in fresh {
            map.summaries.add(&key, bytes.len() as u32);
            if map.quarantine.remove(&key).is_some() {
                unquarantined += 1;
            }
            let checksum = *blake3::hash(&bytes).as_bytes();
            map.held.insert(key, MemBlob { bytes, checksum });
        }
        if unquarantined > 0 {
            map.summaries.remove_quarantined(unquarantined);
        }
        self.health.stored();
        Ok(())
    }

    fn get_blob(&self, repo: &RepoId, id: &ChunkId) -> Result<Option<Bytes>, StoreError> {
        let map = self.lock_blobs();
        match map.held.get(&blob_key(repo, id)) {
            None => Ok(None),
            Some(b) if *blake3::hash(&b.bytes).as_bytes() == b.checksum => {
                Ok(Some(b.bytes.clone()))
            }
            Some(_) => Err(StoreError::Corrupt { id: *id }),
        }
    }

    fn has(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        let map = self.lock_blobs();
        Ok(ids
            .iter()
            .map(|id| map.held.contains_key(&blob_key(repo, id)))
            .collect())
    }

    fn sizes(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<u32>, StoreError> {
        let map = self.lock_blobs();
        Ok(ids
            .iter()
            .map(|id| {
                map.held
                    .get(&blob_key(repo, id))
                    .map_or(0, |b| b.bytes.len() as u32)
            })
            .collect())
    }

    fn stats(&self) -> Result<(u64, u64), StoreError> {
        let map = self.lock_blobs();
        Ok((map.summaries.blobs, map.summaries.bytes))
    }
}

impl RecordStore for MemStore {
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
        let mut map = self.records.lock();
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
        Ok(self.records.lock().get(&k).cloned())
    }

    fn list_records(&self, kind: RecordKind, repo: &RepoId) -> Result<Vec<Record>, StoreError> {
        let prefix = record_prefix(kind, repo);
        let map = self.records.lock();
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

    fn delete_record(
        &self,
        kind: RecordKind,
        repo: &RepoId,
        key: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let mut k = record_prefix(kind, repo);
        k.extend_from_slice(key);
        let mut map = self.records.lock();
        Ok(map.remove(&k).is_some())
    }

    fn record_keys(&self) -> Result<Vec<RecordKey>, StoreError> {
        let map = self.records.lock();
        Ok(map.keys().filter_map(|k| parse_record_key(k)).collect())
    }
}

impl PartitionStore for MemStore {
    fn partition_counts(&self) -> Vec<(u16, u32)> {
        self.lock_blobs().summaries.partition_counts()
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
        let map = self.lock_blobs();
        let mut keys = Vec::new();
        for k in map.held.range::<Vec<u8>, _>(range).map(|(k, _)| k) {
            if keys.len() == limit {
                return Ok((keys, true));
            }
            keys.push(decode_key(k).ok_or_else(malformed)?);
        }
        Ok((keys, false))
    }
}

impl RepairStore for MemStore {
    fn digests(&self, partitions: &[u8], per_partition: bool) -> Vec<[u8; 32]> {
        self.lock_blobs()
            .summaries
            .digests(partitions, per_partition)
    }

    fn quarantine(&self, repo: &RepoId, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.lock_blobs().quarantine(&blob_key(repo, id)))
    }

    fn scrub(
        &self,
        after: Option<&(RepoId, ChunkId)>,
        max_blobs: usize,
        max_bytes: u64,
    ) -> Result<ScrubStep, StoreError> {
        let mut map = self.lock_blobs();
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

    fn in_trash(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        let map = self.lock_blobs();
        Ok(ids
            .iter()
            .map(|id| map.trash.contains_key(&blob_key(repo, id)))
            .collect())
    }

    fn delete_blobs(&self, keys: &[(RepoId, ChunkId)]) -> Result<u64, StoreError> {
        let mut map = self.lock_blobs();
        let mut removed = 0;
        for (repo, id) in keys {
            let key = blob_key(repo, id);
            map.unreferenced.remove(&key);
            if let Some(blob) = map.held.remove(&key) {
                map.summaries.remove(&key, blob.bytes.len() as u32);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl GcStore for MemStore {
    fn unreferenced_since(
        &self,
        repo: &RepoId,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let map = self.lock_blobs();
        Ok(ids
            .iter()
            .map(|id| map.unreferenced.get(&blob_key(repo, id)).copied())
            .collect())
    }

    fn set_unreferenced(
        &self,
        repo: &RepoId,
        entries: &[(ChunkId, Option<u64>)],
    ) -> Result<(), StoreError> {
        let mut map = self.lock_blobs();
        for (id, since) in entries {
            let key = blob_key(repo, id);
            match since {
                None => {
                    map.unreferenced.remove(&key);
                }
                Some(t) => {
                    let mark = map.unreferenced.entry(key).or_insert(*t);
                    *mark = (*mark).min(*t);
                }
            }
        }
        Ok(())
    }

    fn trash(&self, keys: &[(RepoId, ChunkId)], now_s: u64) -> Result<u64, StoreError> {
        let mut map = self.lock_blobs();
        let mut moved = 0;
        for (repo, id) in keys {
            let key = blob_key(repo, id);
            map.unreferenced.remove(&key);
            let Some(blob) = map.held.remove(&key) else {
                continue;
            };
            let len = blob.bytes.len() as u32;
            map.summaries.remove(&key, len);
            if let Some((old, _)) = map.trash.insert(key, (blob, now_s)) {
                map.summaries.remove_trash(old.bytes.len() as u32);
            }
            map.summaries.add_trash(len);
            moved += 1;
        }
        Ok(moved)
    }

    fn trash_stats(&self) -> (u64, u64) {
        let m = self.lock_blobs();
        (m.summaries.trash, m.summaries.trash_bytes)
    }

    fn expire_trash(&self, trashed_before_s: u64) -> Result<(u64, u64), StoreError> {
        let mut map = self.lock_blobs();
        let MemBlobs {
            trash, summaries, ..
        } = &mut *map;
        let (mut n, mut bytes) = (0u64, 0u64);
        trash.retain(|_, (blob, at)| {
            if *at >= trashed_before_s {
                return true;
            }
            let len = blob.bytes.len() as u32;
            summaries.remove_trash(len);
            n += 1;
            bytes += u64::from(len);
            false
        });
        Ok((n, bytes))
    }

    fn restore_trash(&self, repo: &RepoId) -> Result<u64, StoreError> {
        let mut map = self.lock_blobs();
        let mine: Vec<Vec<u8>> = map
            .trash
            .keys()
            .filter(|k| key_in_repo(k, repo))
            .cloned()
            .collect();
        let mut restored = 0;
        for key in mine {
            let Some((blob, _)) = map.trash.remove(&key) else {
                continue;
            };
            let len = blob.bytes.len() as u32;
            map.summaries.remove_trash(len);
            if !map.held.contains_key(&key) {
                map.summaries.add(&key, len);
                map.held.insert(key, blob);
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// A no-op returning zeros: a [`MemStore`] has no segments, and frees a
    /// blob's memory as soon as nothing points to it.
    fn compact(&self, _max_live_fraction: f64) -> Result<CompactReport, StoreError> {
        Ok(CompactReport::default())
    }

    /// The blob bytes kept in memory: held, quarantined and trashed.
    fn disk_bytes(&self) -> u64 {
        let m = self.lock_blobs();
        let quarantined: u64 = m.quarantine.values().map(|b| b.bytes.len() as u64).sum();
        m.summaries
            .bytes
            .wrapping_add(m.summaries.trash_bytes)
            .wrapping_add(quarantined)
    }
}

impl HealthStore for MemStore {
    /// Full only by the quota; free space is reported as `u64::MAX`.
    fn health(&self) -> StoreHealth {
        let held = self.lock_blobs().summaries.bytes;
        self.health
            .observe(quota_room(self.quota_bytes, held), u64::MAX, false);
        self.health.report()
    }

    fn mark_failing(&self, error: &str) {
        self.health.fail(error, true);
    }

    fn quarantined(&self) -> u64 {
        self.lock_blobs().summaries.quarantined
    }
}
