//! The local change-detection index: for every file backed up, its
//! fingerprint (size, mtime and ctime in ns, inode, device) and its chunk
//! list. A file whose fingerprint is unchanged is not read again.
//!
//! Stored in redb (crash-safe, one file per repository). Entries are
//! written only after the snapshot that references their chunks is stored,
//! so the index never vouches for chunks the cluster did not acknowledge.

use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::Context;
use redb::{Database, ReadableDatabase, TableDefinition};
use ringvault_common::ChunkId;
use serde::{Deserialize, Serialize};

const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files-v1");

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
    /// The file's chunks, in order.
    pub chunks: Vec<ChunkId>,
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

impl LocalIndex {
    /// Opens (or creates) the index in `dir`.
    ///
    /// # Errors
    /// When the database cannot be opened (another backup holding it).
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("index.redb");
        let db = Database::create(&path).with_context(|| {
            format!(
                "opening the local index {} (is another backup running?)",
                path.display()
            )
        })?;
        Ok(Self { db })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> FileRecord {
        FileRecord {
            size: i,
            mtime_ns: i as i64,
            ctime_ns: -(i as i64),
            inode: i * 7,
            device: 3,
            chunks: (0..i % 4).map(|c| ChunkId([(i + c) as u8; 32])).collect(),
        }
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
}
