//! What [`super::FsStore::open`] checks before it serves, and how it
//! rebuilds a lost index.
//!
//! - **Segments against the index.** Every entry must point inside a
//!   segment file that exists: a held blob whose bytes are missing (file
//!   deleted or cut short) is quarantined at once, so the digests drop it
//!   and repair pulls a good copy from a co-replica, rather than every read
//!   failing until a scrub cycle finds it. A trash entry whose bytes are
//!   missing is dropped (it could never be restored). A quarantine entry
//!   whose key is held again is dropped (a good copy is back).
//! - **Rebuild.** Each segment record repeats its repository, chunk id,
//!   length and checksum (module docs of [`super`]), so an index can be
//!   rebuilt by reading every segment in order: a record whose checksum
//!   fails, or a torn tail, is skipped, and a later record of the same key
//!   wins. Only blobs come back: the trash, the quarantine, prune's marks,
//!   deletions whose bytes were not compacted yet (those blobs are held
//!   again until the next prune) and the small records (snapshots, keys,
//!   tombstones, which record sync copies back from the peers) lived in the
//!   index alone. The new index is written beside the old path and renamed
//!   over it, so a crash mid-rebuild leaves no half index behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::keys::{
    BLOBS, Location, QUARANTINE, RECORDS, TRASH, UNREFERENCED, blob_key, decode_key, index_err,
    malformed, timed_location, timed_value, unix_seconds,
};
use super::segment::{SEGMENT_MAGIC, list_segments, segment_path, sync_dir};
use super::{IndexError, StoreError};
use ringvault_common::{ChunkId, RepoId};

/// Index entries written per transaction while rebuilding.
const REBUILD_BATCH: usize = 10_000;
/// Largest blob a segment record may claim, bytes: larger lengths are
/// garbage (the wire's largest payload is 64 MiB).
const MAX_RECORD_BLOB: u64 = 64 << 20;

/// What the open-time check changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SegmentCheck {
    /// Held blobs quarantined: their bytes are missing.
    pub quarantined: Vec<(RepoId, ChunkId)>,
    /// Trash entries dropped: their bytes are missing.
    pub trash_dropped: u64,
    /// Quarantine entries dropped: their key is held again.
    pub quarantine_dropped: u64,
}

/// Checks every entry of the index against `segments` (number to file
/// size) and fixes what does not fit; see the module docs. One scan of the
/// blob, trash and quarantine tables and one transaction.
///
/// # Errors
/// [`StoreError::Index`] if the index cannot be read or written or holds a
/// malformed entry.
pub(super) fn check_segments(
    db: &Database,
    segments: &BTreeMap<u32, u64>,
) -> Result<SegmentCheck, StoreError> {
    let fits = |loc: &Location| {
        segments
            .get(&loc.segment)
            .is_some_and(|&size| loc.offset.saturating_add(u64::from(loc.len)) <= size)
    };
    let mut missing = Vec::new();
    let mut dead_trash = Vec::new();
    let mut back = Vec::new();
    {
        let txn = db.begin_read().map_err(index_err)?;
        let blobs = txn.open_table(BLOBS).map_err(index_err)?;
        for item in blobs.iter().map_err(index_err)? {
            let (k, v) = item.map_err(index_err)?;
            let loc = Location::decode(v.value()).ok_or_else(malformed)?;
            if !fits(&loc) {
                missing.push((k.value().to_vec(), loc));
            }
        }
        let trash = txn.open_table(TRASH).map_err(index_err)?;
        for item in trash.iter().map_err(index_err)? {
            let (k, v) = item.map_err(index_err)?;
            let loc = timed_location(v.value()).ok_or_else(malformed)?;
            if !fits(&loc) {
                dead_trash.push(k.value().to_vec());
            }
        }
        let quarantine = txn.open_table(QUARANTINE).map_err(index_err)?;
        for item in quarantine.iter().map_err(index_err)? {
            let (k, _) = item.map_err(index_err)?;
            if blobs.get(k.value()).map_err(index_err)?.is_some() {
                back.push(k.value().to_vec());
            }
        }
    }
    let mut check = SegmentCheck::default();
    if missing.is_empty() && dead_trash.is_empty() && back.is_empty() {
        return Ok(check);
    }
    let now = unix_seconds();
    let txn = db.begin_write().map_err(index_err)?;
    {
        let mut blobs = txn.open_table(BLOBS).map_err(index_err)?;
        let mut quarantine = txn.open_table(QUARANTINE).map_err(index_err)?;
        let mut trash = txn.open_table(TRASH).map_err(index_err)?;
        for key in &back {
            quarantine.remove(key.as_slice()).map_err(index_err)?;
        }
        for (key, loc) in &missing {
            blobs.remove(key.as_slice()).map_err(index_err)?;
            let value = timed_value(loc, now);
            quarantine
                .insert(key.as_slice(), value.as_slice())
                .map_err(index_err)?;
            check
                .quarantined
                .push(decode_key(key).ok_or_else(malformed)?);
        }
        for key in &dead_trash {
            trash.remove(key.as_slice()).map_err(index_err)?;
        }
    }
    txn.commit().map_err(index_err)?;
    check.trash_dropped = dead_trash.len() as u64;
    check.quarantine_dropped = back.len() as u64;
    Ok(check)
}

/// What [`rebuild`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Segment files read.
    pub segments: u64,
    /// Blobs indexed (distinct keys).
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Records skipped: checksum failed, or a torn or garbled tail (the
    /// rest of that segment is skipped too).
    pub skipped: u64,
    /// Where the index that was replaced went, if there was one.
    pub moved_aside: Option<PathBuf>,
}

/// Rebuilds the index of the store in `dir` from its segment files; see
/// the module docs. An index already at `index` is first renamed to
/// `index.redb.damaged-<unix seconds>`. Reads every segment whole: time
/// linear in the store's size.
///
/// # Errors
/// [`StoreError::Io`] if a segment or the directory cannot be read or the
/// new index renamed into place, [`StoreError::Index`] if it cannot be
/// written, or if a running store holds the index (stop it first).
pub(super) fn rebuild(dir: &Path, index: &Path) -> Result<RebuildReport, StoreError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    // A running server holds the index locked; replacing the file under it
    // would lose what it writes from now on.
    if index.exists()
        && let Err(redb::DatabaseError::DatabaseAlreadyOpen) = redb::ReadOnlyDatabase::open(index)
    {
        return Err(IndexError::InUse {
            path: index.to_owned(),
        }
        .into());
    }
    let seg_dir = dir.join("segments");
    let segments = list_segments(&seg_dir)?;
    let mut report = RebuildReport::default();
    let mut temp = index.as_os_str().to_owned();
    temp.push(".rebuild");
    let temp = PathBuf::from(temp);
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&temp)(e)),
    }
    let db = Database::create(&temp).map_err(index_err)?;
    {
        let txn = db.begin_write().map_err(index_err)?;
        for def in [BLOBS, QUARANTINE, TRASH, UNREFERENCED, RECORDS] {
            txn.open_table(def).map_err(index_err)?;
        }
        txn.commit().map_err(index_err)?;
    }
    let mut batch: Vec<(Vec<u8>, Location)> = Vec::new();
    for (&n, &size) in &segments {
        report.segments += 1;
        let path = segment_path(&seg_dir, n);
        let file = File::open(&path).map_err(io(&path))?;
        let mut reader = Records {
            input: BufReader::with_capacity(1 << 20, file),
            offset: 0,
            size,
        };
        loop {
            match reader.next_record() {
                Ok(Some(Found::Good(key, loc))) => {
                    batch.push((key, Location { segment: n, ..loc }));
                    if batch.len() >= REBUILD_BATCH {
                        index_batch(&db, &mut batch)?;
                    }
                }
                Ok(Some(Found::Bad)) => report.skipped += 1,
                Ok(None) => break,
                Err(Torn) => {
                    report.skipped += 1;
                    tracing::warn!(
                        segment = n,
                        offset = reader.offset,
                        "segment ends in a torn or garbled record; the rest of it is skipped"
                    );
                    break;
                }
            }
        }
    }
    index_batch(&db, &mut batch)?;
    {
        let txn = db.begin_read().map_err(index_err)?;
        let blobs = txn.open_table(BLOBS).map_err(index_err)?;
        for item in blobs.iter().map_err(index_err)? {
            let (_, v) = item.map_err(index_err)?;
            let loc = Location::decode(v.value()).ok_or_else(malformed)?;
            report.blobs += 1;
            report.bytes += u64::from(loc.len);
        }
    }
    drop(db);
    File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(io(&temp))?;
    if index.exists() {
        let aside = PathBuf::from(format!("{}.damaged-{}", index.display(), unix_seconds()));
        std::fs::rename(index, &aside).map_err(io(index))?;
        report.moved_aside = Some(aside);
    }
    std::fs::rename(&temp, index).map_err(io(index))?;
    sync_dir(dir)?;
    Ok(report)
}

/// Writes `batch` to the blob index (a later record of a key replaces an
/// earlier one) and empties it.
fn index_batch(db: &Database, batch: &mut Vec<(Vec<u8>, Location)>) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let txn = db.begin_write().map_err(index_err)?;
    {
        let mut blobs = txn.open_table(BLOBS).map_err(index_err)?;
        for (key, loc) in batch.drain(..) {
            blobs
                .insert(key.as_slice(), loc.encode().as_slice())
                .map_err(index_err)?;
        }
    }
    txn.commit().map_err(index_err)
}

/// A segment's records, read in order.
struct Records<R> {
    input: R,
    /// Where the next record starts.
    offset: u64,
    /// The file's size.
    size: u64,
}

/// One record read.
enum Found {
    /// A record whose blob passed its checksum: its index key and location
    /// (segment number left 0 for the caller).
    Good(Vec<u8>, Location),
    /// A well-formed record whose blob fails its checksum.
    Bad,
}

/// The rest of the segment cannot be parsed (a torn tail or garbage).
struct Torn;

impl<R: Read> Records<R> {
    /// The next record; `None` at the end of the file.
    fn next_record(&mut self) -> Result<Option<Found>, Torn> {
        if self.offset == self.size {
            return Ok(None);
        }
        let mut magic = [0u8; 4];
        self.read(&mut magic)?;
        if &magic != SEGMENT_MAGIC {
            return Err(Torn);
        }
        let mut len = [0u8; 1];
        self.read(&mut len)?;
        let mut repo = vec![0u8; usize::from(len[0])];
        self.read(&mut repo)?;
        let repo = std::str::from_utf8(&repo)
            .ok()
            .and_then(|r| RepoId::new(r).ok())
            .ok_or(Torn)?;
        let mut id = [0u8; 32];
        self.read(&mut id)?;
        let mut blob_len = [0u8; 4];
        self.read(&mut blob_len)?;
        let blob_len = u32::from_le_bytes(blob_len);
        let mut checksum = [0u8; 32];
        self.read(&mut checksum)?;
        let offset = self.offset;
        if u64::from(blob_len) > MAX_RECORD_BLOB
            || offset.saturating_add(u64::from(blob_len)) > self.size
        {
            return Err(Torn);
        }
        let mut blob = vec![0u8; blob_len as usize];
        self.read(&mut blob)?;
        if *blake3::hash(&blob).as_bytes() != checksum {
            return Ok(Some(Found::Bad));
        }
        let key = blob_key(&repo, &ChunkId(id));
        let loc = Location {
            segment: 0,
            offset,
            len: blob_len,
            checksum,
        };
        Ok(Some(Found::Good(key, loc)))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), Torn> {
        self.input.read_exact(buf).map_err(|_| Torn)?;
        self.offset += buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(repo: &str, id: u8, blob: &[u8], good: bool) -> Vec<u8> {
        let mut out = SEGMENT_MAGIC.to_vec();
        out.push(repo.len() as u8);
        out.extend_from_slice(repo.as_bytes());
        out.extend_from_slice(&[id; 32]);
        out.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        let mut sum = *blake3::hash(blob).as_bytes();
        if !good {
            sum[0] ^= 1;
        }
        out.extend_from_slice(&sum);
        out.extend_from_slice(blob);
        out
    }

    fn read_all(bytes: &[u8]) -> (Vec<Location>, u64, bool) {
        let mut r = Records {
            input: bytes,
            offset: 0,
            size: bytes.len() as u64,
        };
        let (mut good, mut bad) = (Vec::new(), 0);
        loop {
            match r.next_record() {
                Ok(Some(Found::Good(_, loc))) => good.push(loc),
                Ok(Some(Found::Bad)) => bad += 1,
                Ok(None) => return (good, bad, false),
                Err(Torn) => return (good, bad, true),
            }
        }
    }

    #[test]
    fn records_are_read_in_order_and_bad_or_torn_ones_skipped() {
        let mut seg = record("r", 1, b"hello", true);
        let second = seg.len() as u64;
        seg.extend(record("r", 2, b"bad", false));
        let third = seg.len() as u64;
        seg.extend(record("other", 3, b"", true));
        let (good, bad, torn) = read_all(&seg);
        assert_eq!((bad, torn), (1, false));
        assert_eq!(good.len(), 2);
        assert_eq!(good[0].offset, 4 + 1 + 1 + 32 + 4 + 32);
        assert_eq!(good[0].len, 5);
        assert!(good[1].offset > third && second < third);
        // A torn tail and garbage end the segment without a panic.
        let mut torn_tail = seg.clone();
        torn_tail.extend_from_slice(&record("r", 4, b"cut short", true)[..50]);
        assert!(read_all(&torn_tail).2);
        let mut garbage = seg;
        garbage.extend_from_slice(&[0xff; 200]);
        let (good, _, torn) = read_all(&garbage);
        assert_eq!((good.len(), torn), (2, true));
        let mut huge = record("r", 5, b"x", true);
        huge[4 + 1 + 1 + 32..4 + 1 + 1 + 32 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_all(&huge).2);
    }
}
