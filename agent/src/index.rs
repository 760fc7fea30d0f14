//! The local change-detection index: for every file backed up, its
//! fingerprint (size, mtime and ctime in ns, inode, device) and its chunk
//! list. A file whose fingerprint is unchanged is not read again.
//!
//! Stored in redb (crash-safe, one file per repository). Entries are
//! written only after the snapshot that references their chunks is stored,
//! so the index never vouches for chunks the cluster did not acknowledge.

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

    /// Records new fingerprints in one transaction.
    ///
    /// # Errors
    /// On database errors.
    pub fn commit(&self, updates: &[(Vec<u8>, FileRecord)]) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(FILES)?;
            for (path, rec) in updates {
                let v = postcard::to_stdvec(rec)?;
                table.insert(path.as_slice(), v.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
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
