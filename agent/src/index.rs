//! The local change-detection index: for every file backed up, its
//! fingerprint (size, mtime and ctime in ns, inode, device) and its chunk
//! list. A file whose fingerprint is unchanged is not read again.
//!
//! Stored in redb (crash-safe, one file per repository). Entries are
//! written only after the snapshot that references their chunks is stored,
//! so the index never vouches for chunks the cluster did not acknowledge.
//!
//! The index cannot know that a chunk is still stored: a prune may have
//! deleted it since (when every snapshot naming it was forgotten). Each
//! entry therefore keeps the tag of the garbage-collection fence under
//! which its chunks were last confirmed present
//! ([`ringvault_common::gc::GcFences::quiet_tag`]); a backup trusts an
//! entry without asking the cluster only while the fence still has that
//! tag, and asks otherwise. Likewise each snapshot this host stored keeps
//! its fence tag ([`LocalIndex::snapshot_fence`]), so the watching agent
//! reuses that snapshot's subtrees only while nothing can have been
//! deleted since.
//!
//! Table `files-v2` (`files-v1`, from before chunk lengths and fences, is
//! dropped at open: the first backup after an upgrade reads every file
//! once).

use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::Context;
use redb::{Database, ReadableDatabase, TableDefinition};
use ringvault_common::SnapshotId;
use ringvault_common::tree::ChunkRef;
use serde::{Deserialize, Serialize};

const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files-v2");
const FILES_V1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files-v1");
/// Snapshot id -> the fence tag it was stored under.
const SNAPSHOT_FENCES: TableDefinition<&[u8; 32], u64> = TableDefinition::new("snapshot-fences");

/// What the index keeps per path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Size, bytes.
    pub size: u64,
    /// Modification time, ns.
    pub mtime_ns: i64,
    /// Status change time, ns.
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Device number.
    pub device: u64,
    /// The file's chunks, in order, with their lengths.
    pub chunks: Vec<ChunkRef>,
    /// The fence tag under which the chunks were last confirmed present
    /// (0: never trusted without asking).
    pub fence: u64,
}

impl FileRecord {
    /// Whether `other` has the same fingerprint (everything but chunks).
    pub fn same_file(&self, other: &FileRecord) -> bool {
        (
            self.size,
            self.mtime_ns,
            self.ctime_ns,
            self.inode,
            self.device,
        ) == (
            other.size,
            other.mtime_ns,
            other.ctime_ns,
            other.inode,
            other.device,
        )
    }
}

/// The index database.
pub struct LocalIndex {
    db: Database,
}

/// A consistent read view of the index.
pub struct IndexReader {
    table: Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
}

/// Whether `e` says the file is not a usable redb database (as opposed
/// to being locked by another process or unreadable for lack of
/// permission).
fn is_damaged(e: &redb::DatabaseError) -> bool {
    use redb::{DatabaseError, StorageError};
    match e {
        DatabaseError::Storage(StorageError::Corrupted(_)) => true,
        DatabaseError::Storage(StorageError::Io(io)) => {
            io.kind() == std::io::ErrorKind::InvalidData
        }
        _ => false,
    }
}

impl LocalIndex {
    /// Opens (or creates) the index in `dir`.
    ///
    /// The index is a cache: a file redb does not recognise as its own (an
    /// agent killed while creating it leaves a zero-filled header) or
    /// reports corrupted is renamed to `index.redb.damaged` and a new index
    /// is created, with a warning. The next backup then reads every file
    /// once; nothing it stores depends on the old file.
    ///
    /// # Errors
    /// When the database cannot be opened (another backup holding it) or
    /// a damaged one cannot be set aside.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("index.redb");
        let db = match Database::create(&path) {
            Err(e) if is_damaged(&e) => {
                let aside = dir.join("index.redb.damaged");
                tracing::warn!(
                    index = %path.display(),
                    moved_to = %aside.display(),
                    error = %e,
                    "the local index is damaged; starting a new one (the next backup reads every file)"
                );
                std::fs::rename(&path, &aside).with_context(|| {
                    format!("setting the damaged local index {} aside", path.display())
                })?;
                Database::create(&path)
            }
            other => other,
        }
        .with_context(|| {
            format!(
                "opening the local index {} (is another backup running?)",
                path.display()
            )
        })?;
        let txn = db.begin_write()?;
        txn.delete_table(FILES_V1)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// The fence tag snapshot `id` was stored under, when this host stored
    /// it.
    ///
    /// # Errors
    /// On database errors.
    pub fn snapshot_fence(&self, id: &SnapshotId) -> anyhow::Result<Option<u64>> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(SNAPSHOT_FENCES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(table.get(&id.0)?.map(|v| v.value()))
    }

    /// Records that snapshot `id` was stored under fence tag `fence`.
    ///
    /// # Errors
    /// On database errors.
    pub fn set_snapshot_fence(&self, id: &SnapshotId, fence: u64) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(SNAPSHOT_FENCES)?.insert(&id.0, fence)?;
        txn.commit()?;
        Ok(())
    }

    /// A read view for one backup.
    ///
    /// # Errors
    /// On database errors.
    pub fn reader(&self) -> anyhow::Result<IndexReader> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(FILES) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(IndexReader { table })
    }

    /// Records the fingerprints in `log`, in transactions of
    /// [`COMMIT_ENTRIES`] entries so that redb's dirty pages stay few.
    /// Call it only once the snapshot naming their chunks is stored: a
    /// partly applied log is then still true.
    ///
    /// # Errors
    /// On database errors, or a log that does not read back.
    pub fn commit(&self, log: UpdateLog) -> anyhow::Result<()> {
        let mut records = log.into_reader()?;
        loop {
            let txn = self.db.begin_write()?;
            let mut n = 0;
            {
                let mut table = txn.open_table(FILES)?;
                while n < COMMIT_ENTRIES {
                    let Some((path, record)) = records.next_record()? else {
                        break;
                    };
                    table.insert(path.as_slice(), record.as_slice())?;
                    n += 1;
                }
            }
            txn.commit()?;
            if n < COMMIT_ENTRIES {
                return Ok(());
            }
        }
    }
}

/// Entries per index transaction in [`LocalIndex::commit`].
pub const COMMIT_ENTRIES: usize = 16_384;
/// Largest encoded path or record in an update log, bytes (a record holds
/// 32 bytes per chunk: 1M chunks is a 64 GiB-or-more file at the smallest
/// chunk size allowed).
const MAX_LOG_ITEM: usize = 32 << 20;

/// The fingerprints of changed files found by one backup, spilled as they
/// are found to an unnamed temporary file in the state directory (gone
/// when the process ends), so that memory does not grow with the number of
/// changed files. Each item: u32 length (little endian), then the bytes.
pub struct UpdateLog {
    file: std::io::BufWriter<std::fs::File>,
    count: u64,
    /// Where the file is, for error messages.
    dir: std::path::PathBuf,
}

impl UpdateLog {
    /// A new, empty log in `dir`.
    ///
    /// # Errors
    /// When the temporary file cannot be made.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = tempfile::tempfile_in(dir)
            .with_context(|| format!("making an update log in {}", dir.display()))?;
        Ok(Self {
            file: std::io::BufWriter::with_capacity(256 << 10, file),
            count: 0,
            dir: dir.to_owned(),
        })
    }

    /// Appends the new record of `path`.
    ///
    /// # Errors
    /// On write errors (a full disk).
    pub fn push(&mut self, path: &[u8], record: &FileRecord) -> anyhow::Result<()> {
        let record = postcard::to_stdvec(record)?;
        for item in [path, record.as_slice()] {
            let len = u32::try_from(item.len())
                .ok()
                .filter(|&n| n as usize <= MAX_LOG_ITEM);
            let len = len.context("a path or chunk list too large for the update log")?;
            let written = self.file.write_all(&len.to_le_bytes());
            written
                .and_then(|()| self.file.write_all(item))
                .with_context(|| {
                    format!(
                        "writing the list of changed files to {}",
                        self.dir.display()
                    )
                })?;
        }
        self.count += 1;
        Ok(())
    }

    /// Records pushed.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn into_reader(self) -> anyhow::Result<LogReader> {
        let dir = self.dir;
        let context = || format!("writing the list of changed files to {}", dir.display());
        let mut file = self
            .file
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(context)?;
        file.seek(std::io::SeekFrom::Start(0))
            .with_context(context)?;
        Ok(LogReader {
            file: std::io::BufReader::with_capacity(256 << 10, file),
            left: self.count,
        })
    }
}

struct LogReader {
    file: std::io::BufReader<std::fs::File>,
    left: u64,
}

impl LogReader {
    /// The next (path, encoded record), `None` at the end.
    fn next_record(&mut self) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        Ok(Some((self.item()?, self.item()?)))
    }

    fn item(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.file
            .read_exact(&mut len)
            .context("reading the update log")?;
        let len = u32::from_le_bytes(len) as usize;
        anyhow::ensure!(len <= MAX_LOG_ITEM, "damaged update log");
        let mut item = vec![0; len];
        self.file
            .read_exact(&mut item)
            .context("reading the update log")?;
        Ok(item)
    }
}

impl IndexReader {
    /// The record for `path`, if any (an undecodable one counts as none).
    pub fn get(&self, path: &[u8]) -> Option<FileRecord> {
        let table = self.table.as_ref()?;
        let v = table.get(path).ok()??;
        postcard::from_bytes(v.value()).ok()
    }

    /// Calls `each` with every record whose path starts with `prefix`
    /// followed by `/` (or is `prefix`), in path order.
    ///
    /// # Errors
    /// On database errors.
    pub fn for_each_under(
        &self,
        prefix: &[u8],
        mut each: impl FnMut(&[u8], FileRecord),
    ) -> anyhow::Result<()> {
        let Some(table) = self.table.as_ref() else {
            return Ok(());
        };
        for item in table.range(prefix..)? {
            let (k, v) = item?;
            let path = k.value();
            if !path.starts_with(prefix) {
                break;
            }
            let below = path.len() == prefix.len() || path[prefix.len()] == b'/';
            if let (true, Ok(record)) = (below, postcard::from_bytes::<FileRecord>(v.value())) {
                each(path, record);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringvault_common::ChunkId;

    fn record(i: u64) -> FileRecord {
        FileRecord {
            size: i,
            mtime_ns: i as i64,
            ctime_ns: -(i as i64),
            inode: i * 7,
            device: 3,
            chunks: (0..i % 4)
                .map(|c| ChunkRef {
                    id: ChunkId([(i + c) as u8; 32]),
                    len: Some(c as u32),
                })
                .collect(),
            fence: i,
        }
    }

    #[test]
    fn records_under_a_path_and_snapshot_fences() {
        let dir = tempfile::tempdir().unwrap();
        let index = LocalIndex::open(dir.path()).unwrap();
        let mut log = UpdateLog::new(dir.path()).unwrap();
        for (i, p) in ["/a", "/a/x", "/a/y/z", "/ab", "/b", "/a."]
            .iter()
            .enumerate()
        {
            log.push(p.as_bytes(), &record(i as u64)).unwrap();
        }
        index.commit(log).unwrap();
        let mut seen = Vec::new();
        index
            .reader()
            .unwrap()
            .for_each_under(b"/a", |p, r| seen.push((p.to_vec(), r.size)))
            .unwrap();
        assert_eq!(
            seen,
            vec![
                (b"/a".to_vec(), 0),
                (b"/a/x".to_vec(), 1),
                (b"/a/y/z".to_vec(), 2)
            ]
        );
        let id = SnapshotId([9; 32]);
        assert_eq!(index.snapshot_fence(&id).unwrap(), None);
        index.set_snapshot_fence(&id, 77).unwrap();
        assert_eq!(index.snapshot_fence(&id).unwrap(), Some(77));
        drop(index);
        let index = LocalIndex::open(dir.path()).unwrap();
        assert_eq!(index.snapshot_fence(&id).unwrap(), Some(77), "kept");
    }

    #[test]
    fn an_update_log_spanning_several_transactions_is_applied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let index = LocalIndex::open(dir.path()).unwrap();
        let n = COMMIT_ENTRIES as u64 * 2 + 5;
        let mut log = UpdateLog::new(dir.path()).unwrap();
        for i in 0..n {
            log.push(format!("/data/file-{i}").as_bytes(), &record(i))
                .unwrap();
        }
        assert_eq!(log.len(), n);
        index.commit(log).unwrap();
        let reader = index.reader().unwrap();
        for i in [0, 1, COMMIT_ENTRIES as u64, n - 1] {
            assert_eq!(
                reader.get(format!("/data/file-{i}").as_bytes()),
                Some(record(i))
            );
        }
        assert_eq!(reader.get(b"/data/file-missing"), None);
        // The log left no file behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["index.redb"]);
    }

    #[test]
    fn a_damaged_index_is_set_aside_and_a_new_one_created() {
        let dir = tempfile::tempdir().unwrap();
        // An agent killed while redb created the file leaves it sized but
        // zero-filled.
        std::fs::write(dir.path().join("index.redb"), vec![0u8; 4096]).unwrap();
        let index = LocalIndex::open(dir.path()).unwrap();
        let mut log = UpdateLog::new(dir.path()).unwrap();
        log.push(b"/a", &record(1)).unwrap();
        index.commit(log).unwrap();
        assert_eq!(index.reader().unwrap().get(b"/a"), Some(record(1)));
        let aside = std::fs::read(dir.path().join("index.redb.damaged")).unwrap();
        assert_eq!(aside, vec![0u8; 4096], "the damaged file is kept as it was");
    }

    #[test]
    fn an_index_held_by_another_backup_is_not_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let _held = LocalIndex::open(dir.path()).unwrap();
        let e = LocalIndex::open(dir.path())
            .err()
            .expect("the index is held");
        assert!(format!("{e:#}").contains("another backup"), "{e:#}");
        assert!(!dir.path().join("index.redb.damaged").exists());
    }
}
