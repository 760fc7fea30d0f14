//! Compaction (see the module docs, "Compaction"): planning which sealed
//! segments to rewrite, the batches [`FsStore`] sends the writer, and the
//! writer's copy of a batch's live records.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;

use redb::ReadableTable;

use super::StoreError;
use super::fs::FsStore;
use super::keys::{
    LOCATED, LOCATION_LEN, Location, decode_key, index_err, malformed, timed_location,
};
use super::segment::{CompactBatch, CompactJob, SegmentWriter, WriteJob, segment_path};

/// Blob bytes a compaction copies in one writer job, at least one record.
const COMPACT_BATCH_BYTES: u64 = 8 << 20;

impl FsStore {
    /// The sealed segments whose live bytes are at most `max_live_fraction`
    /// of their file size (`sizes`), each with the keys of the entries
    /// pointing into it and their blob bytes, from one read of the index.
    pub(super) fn compaction_plan(
        &self,
        sizes: &BTreeMap<u32, u64>,
        max_live_fraction: f64,
    ) -> Result<BTreeMap<u32, BTreeMap<Vec<u8>, u64>>, StoreError> {
        let txn = self.index.begin_read()?;
        let mut live: HashMap<u32, u64> = HashMap::new();
        for def in LOCATED {
            let table = txn.open_table(def).map_err(index_err)?;
            for item in table.iter().map_err(index_err)? {
                let (_, v) = item.map_err(index_err)?;
                let loc = timed_location(v.value()).ok_or_else(malformed)?;
                if sizes.contains_key(&loc.segment) {
                    *live.entry(loc.segment).or_default() += u64::from(loc.len);
                }
            }
        }
        let mut plan: BTreeMap<u32, BTreeMap<Vec<u8>, u64>> = sizes
            .iter()
            .filter(|&(n, &size)| {
                let live = live.get(n).copied().unwrap_or(0);
                live as f64 <= max_live_fraction * size as f64
            })
            .map(|(n, _)| (*n, BTreeMap::new()))
            .collect();
        if plan.is_empty() {
            return Ok(plan);
        }
        for def in LOCATED {
            let table = txn.open_table(def).map_err(index_err)?;
            for item in table.iter().map_err(index_err)? {
                let (k, v) = item.map_err(index_err)?;
                let loc = timed_location(v.value()).ok_or_else(malformed)?;
                if let Some(keys) = plan.get_mut(&loc.segment) {
                    *keys.entry(k.value().to_vec()).or_default() += u64::from(loc.len);
                }
            }
        }
        Ok(plan)
    }

    /// Moves every live record out of sealed `segment` (whose entries'
    /// keys and blob bytes are `keys`), then deletes it. Returns the bytes
    /// its records take in the open segment, or `None` when some could not
    /// be read and the segment was kept.
    pub(super) fn compact_segment(
        &self,
        segment: u32,
        keys: BTreeMap<Vec<u8>, u64>,
    ) -> Result<Option<u64>, StoreError> {
        let mut written = 0u64;
        let mut stuck = 0u64;
        let mut batch = Vec::new();
        let mut batch_bytes = 0u64;
        let mut keys = keys.into_iter().peekable();
        while let Some((key, len)) = keys.next() {
            batch.push(key);
            batch_bytes += len;
            if batch_bytes >= COMPACT_BATCH_BYTES || keys.peek().is_none() {
                let keys = std::mem::take(&mut batch);
                batch_bytes = 0;
                let done = self.send(|done| {
                    WriteJob::Compact(CompactJob {
                        segment,
                        keys,
                        done,
                    })
                })?;
                written += done.written;
                stuck += done.stuck;
            }
        }
        if stuck > 0 {
            tracing::warn!(
                segment,
                records = stuck,
                "compaction kept a segment: live records' bytes are missing"
            );
            return Ok(None);
        }
        let seg_dir = self.dir.join("segments");
        let path = segment_path(&seg_dir, segment);
        std::fs::remove_file(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        File::open(&seg_dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Io {
                path: seg_dir,
                source,
            })?;
        // A reader opening the file after this finds it gone and looks its
        // blob up again; one holding a descriptor reads the unlinked file.
        // Dropping the cached one lets the file system free the space.
        self.readers.lock().remove(&segment);
        Ok(Some(written))
    }
}

impl SegmentWriter {
    /// Copies the records of sealed `segment` still pointed to by the
    /// entries of `keys` in any [`LOCATED`] table to the open segment,
    /// fsyncs them, then repoints those entries in one transaction. A record
    /// whose bytes are missing (short segment) stays where it is and counts
    /// as stuck; one failing its checksum is copied as it is, so that reads
    /// and scrub still find it corrupt.
    pub(super) fn compact(
        &mut self,
        segment: u32,
        keys: &[Vec<u8>],
    ) -> Result<CompactBatch, StoreError> {
        // The segment being appended to, or the next one when none is open.
        let open = if self.file.is_some() {
            self.segment
        } else {
            self.segment + 1
        };
        if segment >= open {
            // Not sealed ([`GcStore::compact`] never asks): keep it whole.
            return Ok(CompactBatch {
                stuck: keys.len() as u64,
                ..CompactBatch::default()
            });
        }
        let path = segment_path(&self.dir, segment);
        let src = File::open(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        let mut out = CompactBatch::default();
        // Old offset to new location, should two entries share a record.
        let mut copied: HashMap<u64, Location> = HashMap::new();
        let mut blob = Vec::new();
        let mut header = Vec::new();
        let txn = self.index.begin_write()?;
        for def in LOCATED {
            let mut table = txn.open_table(def).map_err(index_err)?;
            for key in keys {
                let Some(mut value) = table
                    .get(key.as_slice())
                    .map_err(index_err)?
                    .map(|v| v.value().to_vec())
                else {
                    continue;
                };
                let loc = timed_location(&value).ok_or_else(malformed)?;
                if loc.segment != segment {
                    continue;
                }
                let new = match copied.get(&loc.offset) {
                    Some(new) => *new,
                    None => {
                        blob.resize(loc.len as usize, 0);
                        match src.read_exact_at(&mut blob, loc.offset) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                                out.stuck += 1;
                                continue;
                            }
                            Err(source) => return Err(StoreError::Io { path, source }),
                        }
                        let (repo, id) = decode_key(key).ok_or_else(malformed)?;
                        if *blake3::hash(&blob).as_bytes() != loc.checksum {
                            tracing::warn!(chunk = %id, repo = %repo, segment, "compaction copied a blob that fails its checksum");
                        }
                        if self.file.is_none() || self.size >= self.options.segment_bytes {
                            // Fsyncs the records already copied to the
                            // segment it seals.
                            self.rotate()?;
                        }
                        let before = self.size;
                        let new = self.append(&repo, &id, &loc.checksum, &blob, &mut header)?;
                        out.written += self.size - before;
                        copied.insert(loc.offset, new);
                        new
                    }
                };
                if let Some(at) = value.get_mut(..LOCATION_LEN) {
                    at.copy_from_slice(&new.encode());
                }
                table
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(index_err)?;
                out.moved += 1;
            }
        }
        if out.moved == 0 {
            txn.abort().map_err(index_err)?;
        } else {
            let file = self.file.as_ref().ok_or(StoreError::Closed)?;
            file.sync_data().map_err(|e| self.io(e))?;
            self.committed = self.size;
            self.index.commit(txn)?;
        }
        Ok(out)
    }
}
