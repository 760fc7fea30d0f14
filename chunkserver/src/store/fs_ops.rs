//! [`FsStore`]'s store calls ([`super::ChunkStore`] and its parts): reads, records, deletion, quarantine,
//! scrub, trash, prune's marks, compaction and health.

use std::ops::Bound;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use redb::ReadableTable;
use ringvault_common::{ChunkId, RepoId};

use super::fs::{FsStore, HeldRead};
use super::health::{self, StoreHealth};
use super::keys::{
    BLOBS, Location, RECORDS, TRASH, UNREFERENCED, blob_key, decode_key, decode_seconds,
    decode_timed, index_err, key_in_repo, malformed, parse_record_key, partition_range,
    record_prefix, timed_value,
};
use super::segment::{PutJob, WriteJob, list_segments};
use super::summaries::lock;
use super::{
    BlobStore, CompactReport, GcStore, HealthStore, PartitionStore, Record, RecordKey, RecordKind,
    RecordStore, RepairStore, ScrubStep, StoreError, quota_room, read_within, scrub_step_full,
};

impl FsStore {
    /// Per id, whether `table` (blobs or trash, keyed by [`blob_key`]) holds
    /// it for `repo`.
    fn keyed_in(
        &self,
        table: redb::TableDefinition<&[u8], &[u8]>,
        repo: &RepoId,
        ids: &[ChunkId],
    ) -> Result<Vec<bool>, StoreError> {
        let txn = self.index.begin_read()?;
        let table = txn.open_table(table).map_err(index_err)?;
        ids.iter()
            .map(|id| {
                Ok(table
                    .get(blob_key(repo, id).as_slice())
                    .map_err(index_err)?
                    .is_some())
            })
            .collect()
    }
}

impl BlobStore for FsStore {
    fn put_blobs(&self, repo: &RepoId, blobs: Vec<(ChunkId, Bytes)>) -> Result<(), StoreError> {
        if blobs.is_empty() {
            return Ok(());
        }
        self.send(|done| {
            WriteJob::Put(PutJob {
                repo: repo.clone(),
                blobs,
                done,
            })
        })
    }

    fn get_blob(&self, repo: &RepoId, id: &ChunkId) -> Result<Option<Bytes>, StoreError> {
        let key = blob_key(repo, id);
        let Some(loc) = self.location_of(&key)? else {
            return Ok(None);
        };
        match self.read_held(&key, loc)? {
            HeldRead::Gone => Ok(None),
            HeldRead::Good(buf) => Ok(Some(Bytes::from(buf))),
            HeldRead::Bad(_) => Err(StoreError::Corrupt { id: *id }),
        }
    }

    fn get_blobs(
        &self,
        repo: &RepoId,
        ids: &[ChunkId],
        max_bytes: usize,
    ) -> Result<Vec<Result<Option<Bytes>, StoreError>>, StoreError> {
        // One index transaction for every location, then the reads.
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| blob_key(repo, id)).collect();
        let locations = {
            let txn = self.index.begin_read()?;
            let table = txn.open_table(BLOBS).map_err(index_err)?;
            keys.iter()
                .map(|key| match table.get(key.as_slice()) {
                    Ok(None) => Ok(None),
                    Ok(Some(v)) => Location::decode(v.value()).map(Some).ok_or_else(malformed),
                    Err(e) => Err(index_err(e)),
                })
                .collect::<Vec<_>>()
        };
        let reads = ids
            .iter()
            .zip(&keys)
            .zip(locations)
            .map(|((id, key), loc)| match loc? {
                None => Ok(None),
                Some(loc) => match self.read_held(key, loc)? {
                    HeldRead::Gone => Ok(None),
                    HeldRead::Good(buf) => Ok(Some(Bytes::from(buf))),
                    HeldRead::Bad(_) => Err(StoreError::Corrupt { id: *id }),
                },
            });
        Ok(read_within(reads, max_bytes))
    }

    fn has(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        self.keyed_in(BLOBS, repo, ids)
    }

    fn sizes(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<u32>, StoreError> {
        let txn = self.index.begin_read()?;
        let table = txn.open_table(BLOBS).map_err(index_err)?;
        ids.iter()
            .map(|id| match table.get(blob_key(repo, id).as_slice()) {
                Err(e) => Err(index_err(e)),
                Ok(None) => Ok(0),
                Ok(Some(v)) => Location::decode(v.value())
                    .map(|l| l.len)
                    .ok_or_else(malformed),
            })
            .collect()
    }

    fn stats(&self) -> Result<(u64, u64), StoreError> {
        Ok((
            self.totals.blobs.load(Ordering::Relaxed),
            self.totals.bytes.load(Ordering::Relaxed),
        ))
    }
}

impl RecordStore for FsStore {
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
        let txn = self.index.begin_write()?;
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
        self.index.commit(txn)
    }

    fn get_record(
        &self,
        kind: RecordKind,
        repo: &RepoId,
        key: &[u8; 32],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut k = record_prefix(kind, repo);
        k.extend_from_slice(key);
        let txn = self.index.begin_read()?;
        let table = txn.open_table(RECORDS).map_err(index_err)?;
        Ok(table
            .get(k.as_slice())
            .map_err(index_err)?
            .map(|v| v.value().to_vec()))
    }

    fn list_records(&self, kind: RecordKind, repo: &RepoId) -> Result<Vec<Record>, StoreError> {
        let prefix = record_prefix(kind, repo);
        let txn = self.index.begin_read()?;
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

    fn delete_record(
        &self,
        kind: RecordKind,
        repo: &RepoId,
        key: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let mut k = record_prefix(kind, repo);
        k.extend_from_slice(key);
        let txn = self.index.begin_write()?;
        let held = {
            let mut table = txn.open_table(RECORDS).map_err(index_err)?;
            table.remove(k.as_slice()).map_err(index_err)?.is_some()
        };
        self.index.commit(txn)?;
        Ok(held)
    }

    fn record_keys(&self) -> Result<Vec<RecordKey>, StoreError> {
        let txn = self.index.begin_read()?;
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
}

impl PartitionStore for FsStore {
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
        let txn = self.index.begin_read()?;
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
}

impl RepairStore for FsStore {
    fn digests(&self, partitions: &[u8], per_partition: bool) -> Vec<[u8; 32]> {
        lock(&self.summaries).digests(partitions, per_partition)
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
            let txn = self.index.begin_read()?;
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
                // Gone: deleted since this step began.
                if let HeldRead::Bad(loc) = self.read_held(k.value(), loc)? {
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

    fn in_trash(&self, repo: &RepoId, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        self.keyed_in(TRASH, repo, ids)
    }

    fn delete_blobs(&self, keys: &[(RepoId, ChunkId)]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut summaries = lock(&self.summaries);
        let txn = self.index.begin_write()?;
        let mut removed = Vec::new();
        {
            let mut table = txn.open_table(BLOBS).map_err(index_err)?;
            let mut marks = txn.open_table(UNREFERENCED).map_err(index_err)?;
            for (repo, id) in keys {
                let key = blob_key(repo, id);
                marks.remove(key.as_slice()).map_err(index_err)?;
                let len = match table.remove(key.as_slice()).map_err(index_err)? {
                    None => continue,
                    // summarize() refused malformed entries at open and the
                    // writer writes none, so the fallback is never taken.
                    Some(v) => Location::decode(v.value()).map_or(0, |l| l.len),
                };
                removed.push((key, len));
            }
        }
        self.index.commit(txn)?;
        for (key, len) in &removed {
            summaries.remove(key, *len);
        }
        Ok(removed.len() as u64)
    }
}

impl GcStore for FsStore {
    fn unreferenced_since(
        &self,
        repo: &RepoId,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let txn = self.index.begin_read()?;
        let table = txn.open_table(UNREFERENCED).map_err(index_err)?;
        ids.iter()
            .map(|id| match table.get(blob_key(repo, id).as_slice()) {
                Err(e) => Err(index_err(e)),
                Ok(None) => Ok(None),
                Ok(Some(v)) => decode_seconds(v.value()).map(Some).ok_or_else(malformed),
            })
            .collect()
    }

    fn set_unreferenced(
        &self,
        repo: &RepoId,
        entries: &[(ChunkId, Option<u64>)],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let txn = self.index.begin_write()?;
        {
            let mut marks = txn.open_table(UNREFERENCED).map_err(index_err)?;
            for (id, since) in entries {
                let key = blob_key(repo, id);
                match since {
                    None => {
                        marks.remove(key.as_slice()).map_err(index_err)?;
                    }
                    Some(t) => {
                        // A malformed mark is replaced.
                        let earlier = marks
                            .get(key.as_slice())
                            .map_err(index_err)?
                            .and_then(|v| decode_seconds(v.value()))
                            .is_some_and(|old| old <= *t);
                        if !earlier {
                            marks
                                .insert(key.as_slice(), t.to_le_bytes().as_slice())
                                .map_err(index_err)?;
                        }
                    }
                }
            }
        }
        self.index.commit(txn)
    }

    fn trash(&self, keys: &[(RepoId, ChunkId)], now_s: u64) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut summaries = lock(&self.summaries);
        let txn = self.index.begin_write()?;
        // (key, blob bytes, bytes of the trash entry it replaced)
        let mut moved = Vec::new();
        {
            let mut blobs = txn.open_table(BLOBS).map_err(index_err)?;
            let mut trash = txn.open_table(TRASH).map_err(index_err)?;
            let mut marks = txn.open_table(UNREFERENCED).map_err(index_err)?;
            for (repo, id) in keys {
                let key = blob_key(repo, id);
                marks.remove(key.as_slice()).map_err(index_err)?;
                let loc = match blobs.remove(key.as_slice()).map_err(index_err)? {
                    None => continue,
                    Some(v) => Location::decode(v.value()).ok_or_else(malformed)?,
                };
                let value = timed_value(&loc, now_s);
                let replaced = match trash
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(index_err)?
                {
                    None => None,
                    Some(old) => Some(decode_timed(old.value()).ok_or_else(malformed)?.0.len),
                };
                moved.push((key, loc.len, replaced));
            }
        }
        self.index.commit(txn)?;
        for (key, len, replaced) in &moved {
            summaries.remove(key, *len);
            if let Some(old) = replaced {
                summaries.remove_trash(*old);
            }
            summaries.add_trash(*len);
        }
        Ok(moved.len() as u64)
    }

    fn trash_stats(&self) -> (u64, u64) {
        (
            self.totals.trash.load(Ordering::Relaxed),
            self.totals.trash_bytes.load(Ordering::Relaxed),
        )
    }

    fn expire_trash(&self, trashed_before_s: u64) -> Result<(u64, u64), StoreError> {
        let mut summaries = lock(&self.summaries);
        let txn = self.index.begin_write()?;
        let mut expired = Vec::new();
        {
            let mut trash = txn.open_table(TRASH).map_err(index_err)?;
            for item in trash.iter().map_err(index_err)? {
                let (k, v) = item.map_err(index_err)?;
                let (loc, at) = decode_timed(v.value()).ok_or_else(malformed)?;
                if at < trashed_before_s {
                    expired.push((k.value().to_vec(), loc.len));
                }
            }
            for (key, _) in &expired {
                trash.remove(key.as_slice()).map_err(index_err)?;
            }
        }
        if expired.is_empty() {
            txn.abort().map_err(index_err)?;
            return Ok((0, 0));
        }
        self.index.commit(txn)?;
        let mut bytes = 0u64;
        for (_, len) in &expired {
            summaries.remove_trash(*len);
            bytes += u64::from(*len);
        }
        Ok((expired.len() as u64, bytes))
    }

    fn restore_trash(&self, repo: &RepoId) -> Result<u64, StoreError> {
        let mut summaries = lock(&self.summaries);
        let txn = self.index.begin_write()?;
        // (key, blob bytes, whether it came back rather than being dropped)
        let mut out = Vec::new();
        {
            let mut trash = txn.open_table(TRASH).map_err(index_err)?;
            let mut blobs = txn.open_table(BLOBS).map_err(index_err)?;
            let mut mine = Vec::new();
            for item in trash.iter().map_err(index_err)? {
                let (k, v) = item.map_err(index_err)?;
                if key_in_repo(k.value(), repo) {
                    let (loc, _) = decode_timed(v.value()).ok_or_else(malformed)?;
                    mine.push((k.value().to_vec(), loc));
                }
            }
            for (key, loc) in mine {
                trash.remove(key.as_slice()).map_err(index_err)?;
                let held = blobs.get(key.as_slice()).map_err(index_err)?.is_some();
                if !held {
                    blobs
                        .insert(key.as_slice(), loc.encode().as_slice())
                        .map_err(index_err)?;
                }
                out.push((key, loc.len, !held));
            }
        }
        self.index.commit(txn)?;
        let mut restored = 0;
        for (key, len, back) in &out {
            summaries.remove_trash(*len);
            if *back {
                summaries.add(key, *len);
                restored += 1;
            }
        }
        Ok(restored)
    }

    fn compact(&self, max_live_fraction: f64) -> Result<CompactReport, StoreError> {
        let _one = self.compacting.lock();
        // Read before listing: a segment below it is sealed for good.
        let current = self.current.load(Ordering::Acquire);
        let mut sizes = list_segments(&self.dir.join("segments"))?;
        sizes.retain(|&n, _| n < current);
        let plan = self.compaction_plan(&sizes, max_live_fraction)?;
        let mut report = CompactReport::default();
        for (segment, keys) in plan {
            let Some(written) = self.compact_segment(segment, keys)? else {
                continue;
            };
            let size = sizes.get(&segment).copied().unwrap_or(0);
            self.disk.fetch_sub(size, Ordering::Relaxed);
            report.segments += 1;
            report.bytes_before += size;
            report.bytes_after += written;
        }
        Ok(report)
    }

    fn disk_bytes(&self) -> u64 {
        self.disk.load(Ordering::Relaxed)
    }
}

impl HealthStore for FsStore {
    fn health(&self) -> StoreHealth {
        match health::measure(&self.dir) {
            Ok(space) => {
                let quota_room =
                    quota_room(self.quota_bytes, self.totals.bytes.load(Ordering::Relaxed));
                self.health.observe(
                    space.room(&self.watermark).min(quota_room),
                    space.free,
                    space.read_only,
                );
            }
            Err(e) => tracing::debug!(error = %e, "cannot measure free space"),
        }
        self.health.report()
    }

    fn mark_failing(&self, error: &str) {
        self.health.fail(error, true);
    }

    fn quarantined(&self) -> u64 {
        self.totals.quarantined.load(Ordering::Relaxed)
    }
}
