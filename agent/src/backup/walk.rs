//! The walk of a backup: each directory read and its entries built,
//! unchanged files taken from the local index, each tree built bottom-up and
//! handed to the uploader like a chunk.

use std::collections::HashSet;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ringvault_common::ChunkId;
use ringvault_common::chunker::Chunker;
use ringvault_common::tree::{Content, Entry, EntryKind, TREE_PART_BYTES, Tree};
use tokio::sync::{Semaphore, mpsc};

use crate::exclude::Excludes;
use crate::fsmeta::{Names, read_xattrs};
use crate::fsutil::times;
use crate::index::{IndexReader, UpdateLog};
use crate::repo::Repo;
use crate::watch::DirtySet;

use super::{Counters, Upload, sparse};

/// A read buffer being filled with small files and trees. Their ids are
/// known (and in their trees) at once; their bytes go to the uploader when
/// the pack is full or before the walker waits for budget.
pub(super) struct Pack {
    pub(super) buf: Vec<u8>,
    pub(super) permit: tokio::sync::OwnedSemaphorePermit,
    /// Chunk ids and their byte ranges in `buf`.
    pub(super) items: Vec<(ChunkId, std::ops::Range<usize>)>,
}

pub(super) enum WalkError {
    /// Skip this entry, report it, go on.
    Skip(String),
    /// Stop the backup.
    Fatal(anyhow::Error),
}

impl WalkError {
    pub(super) fn into_anyhow(self) -> anyhow::Error {
        match self {
            WalkError::Fatal(e) => e,
            WalkError::Skip(e) => anyhow::anyhow!(e),
        }
    }
}

impl From<std::io::Error> for WalkError {
    fn from(e: std::io::Error) -> Self {
        WalkError::Skip(e.to_string())
    }
}

/// The walker thread's state: what it reads through, what it sends to the
/// uploader, and what it has found so far.
pub(super) struct Walker {
    pub(super) repo: Arc<Repo>,
    pub(super) chunker: Chunker,
    pub(super) index: IndexReader,
    pub(super) tx: mpsc::Sender<Upload>,
    pub(super) budget: Arc<Semaphore>,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) counters: Arc<Counters>,
    pub(super) updates: UpdateLog,
    pub(super) errors: Vec<(PathBuf, String)>,
    pub(super) pack: Option<Pack>,
    /// What changed since the previous snapshot, when a watcher knows.
    pub(super) dirty: Option<DirtySet>,
    pub(super) excludes: Excludes,
    /// The tag of the fence read at the start, when it can vouch.
    pub(super) fence_tag: Option<u64>,
    /// Chunks of index entries the fence does not vouch for that the
    /// cluster confirmed present.
    pub(super) confirmed: Arc<HashSet<ChunkId>>,
    /// Owner and group names met so far.
    pub(super) names: Names,
    /// The chunk of a long zero run, once a sparse file needed it.
    pub(super) zero_runs: Option<sparse::ZeroRuns>,
}

impl Walker {
    /// Stores a directory's tree, in several parts when it is too large
    /// for one (see [`Tree::split`]); returns the id the directory entry names.
    pub(super) fn store_tree(&mut self, tree: Tree) -> anyhow::Result<ChunkId> {
        let encoded = tree.encode();
        if encoded.len() <= TREE_PART_BYTES {
            return self.store_blob(encoded);
        }
        let mut parts = tree.split(TREE_PART_BYTES);
        let mut head = parts.remove(0);
        head.more = parts
            .into_iter()
            .map(|p| self.store_blob(p.encode()))
            .collect::<anyhow::Result<_>>()?;
        self.store_blob(head.encode())
    }

    /// The tree entry for `path`, or `None` when it is skipped (reported).
    /// `prev` is its entry in the previous snapshot, when the walk has a
    /// dirty set: an unchanged directory is then taken from it whole.
    pub(super) fn entry(
        &mut self,
        path: &Path,
        name: Vec<u8>,
        meta: &std::fs::Metadata,
        prev: Option<&Entry>,
    ) -> Result<Option<Entry>, WalkError> {
        let ft = meta.file_type();
        if let (Some(dirty), Some(prev)) = (&self.dirty, prev)
            && ft.is_dir()
            && prev.kind == EntryKind::Dir
            && !dirty.touches(path)
        {
            return Ok(Some(prev.clone()));
        }
        let prev_subtree = match prev.map(|p| &p.content) {
            Some(Content::Subtree(id)) if self.dirty.is_some() => Some(*id),
            _ => None,
        };
        let mut entry = entry_from(name, meta);
        let content = if ft.is_file() {
            // The metadata that bracketed the read, not the scan's.
            self.file(path, meta).map(|(chunks, read)| {
                let name = std::mem::take(&mut entry.name);
                entry = entry_from(name, &read);
                Content::Chunks(chunks)
            })
        } else if ft.is_dir() {
            entry.kind = EntryKind::Dir;
            entry.size = 0;
            self.dir(path, prev_subtree).map(Content::Subtree)
        } else if ft.is_symlink() {
            entry.kind = EntryKind::Symlink;
            std::fs::read_link(path)
                .map(|t| Content::Symlink(t.into_os_string().into_vec()))
                .map_err(WalkError::from)
        } else {
            entry.kind = if ft.is_fifo() {
                EntryKind::Fifo
            } else if ft.is_char_device() {
                EntryKind::CharDevice
            } else if ft.is_block_device() {
                EntryKind::BlockDevice
            } else {
                EntryKind::Socket
            };
            entry.size = 0;
            Ok(Content::None)
        };
        match content {
            Ok(content) => entry.content = content,
            Err(WalkError::Skip(e)) => {
                self.skip(path, e);
                return Ok(None);
            }
            Err(fatal) => return Err(fatal),
        }
        entry.user = self.names.user(entry.uid);
        entry.group = self.names.group(entry.gid);
        match read_xattrs(path) {
            Ok(xattrs) => entry.xattrs = xattrs,
            // Back up more rather than less: the entry without them.
            Err(e) => {
                let why = format!("reading its extended attributes: {e}");
                tracing::warn!(path = %path.display(), error = %why, "backed up without them");
                self.errors.push((path.to_owned(), why));
            }
        }
        if ft.is_file() {
            self.counters.files.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes.fetch_add(entry.size, Ordering::Relaxed);
        }
        Ok(Some(entry))
    }

    fn skip(&mut self, path: &Path, why: String) {
        tracing::warn!(path = %path.display(), error = %why, "skipped");
        self.errors.push((path.to_owned(), why));
    }

    fn dir(&mut self, path: &Path, prev: Option<ChunkId>) -> Result<ChunkId, WalkError> {
        let prev: Vec<Entry> = match prev {
            Some(id) => {
                let read = self.handle.block_on(self.repo.read_tree(id));
                read.map_err(|e| {
                    WalkError::Fatal(
                        e.context(format!("reading the previous tree of {}", path.display())),
                    )
                })?
                .entries
            }
            None => Vec::new(),
        };
        let mut children: Vec<(Vec<u8>, PathBuf)> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| (e.file_name().into_vec(), e.path())))
            .collect::<Result<_, _>>()?;
        children.sort();
        let pushed = match self.excludes.enter_dir(path) {
            Ok(pushed) => pushed,
            Err(e) => {
                // Back up more rather than less: go on without that file.
                self.skip(&path.join(crate::exclude::IGNORE_FILE), e.to_string());
                false
            }
        };
        let mut tree = Tree::default();
        for (name, child) in children {
            let meta = match std::fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) => {
                    self.skip(&child, e.to_string());
                    continue;
                }
            };
            if self.excludes.skips(&child, &meta) {
                continue;
            }
            // Both lists are sorted by name.
            let p = prev
                .binary_search_by(|e| e.name.as_slice().cmp(&name))
                .ok()
                .map(|i| &prev[i]);
            if let Some(e) = self.entry(&child, name, &meta, p)? {
                tree.entries.push(e);
            }
        }
        self.excludes.leave_dir(pushed);
        self.counters.dirs.fetch_add(1, Ordering::Relaxed);
        self.store_tree(tree).map_err(WalkError::Fatal)
    }
}

/// A tree entry for `name` with the metadata `meta` (content: none yet).
fn entry_from(name: Vec<u8>, meta: &std::fs::Metadata) -> Entry {
    let (mtime_ns, ctime_ns) = times(meta);
    Entry {
        name,
        kind: EntryKind::File,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns,
        ctime_ns,
        size: meta.len(),
        inode: meta.ino(),
        device: meta.dev(),
        rdev: meta.rdev(),
        xattrs: Vec::new(),
        content: Content::None,
        user: Vec::new(),
        group: Vec::new(),
        links: meta.nlink(),
    }
}
