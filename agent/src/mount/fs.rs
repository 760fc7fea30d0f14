//! The FUSE file system over a repository: inodes, lookups, listings,
//! attributes, extended attributes and reads with read-ahead.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::Hash;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyXattr, Request,
};
use parking_lot::Mutex;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{ChunkRef, Content, Entry, EntryKind, Tree};
use ringvault_common::{ChunkId, SnapshotId};
use tokio::runtime::Handle;

use crate::repo::Repo;

use super::cache::Lru;
use super::{CHUNK_CACHE_BYTES, READ_AHEAD_CHUNKS, REFRESH_INTERVAL, TREE_CACHE_BYTES};
use crate::vfs::{Listing, Place, SnapInfo, latest_target, system_time};

/// How long the kernel may cache names and attributes inside a snapshot
/// (they never change).
const SNAPSHOT_TTL: Duration = Duration::from_secs(3600);

/// How long the kernel may cache the top-level directories' names and
/// attributes, which change when snapshots come and go.
const LISTING_TTL: Duration = Duration::from_secs(1);

/// Inode numbers of the fixed directories: `/`, `/snapshots`, `/hosts`,
/// `/latest`, and the first number handed out as entries are looked up.
const ROOT: u64 = 1;
const SNAPSHOTS: u64 = 2;
const HOSTS: u64 = 3;
const LATEST: u64 = 4;
const FIRST_DYNAMIC: u64 = 5;

/// The file system fuser serves.
pub(super) struct RepoFs {
    repo: Arc<Repo>,
    rt: Handle,
    /// Owner of the top-level directories: the mountpoint's.
    owner: (u32, u32),
    listing: Mutex<Arc<Listing>>,
    /// When the snapshot list was last read; held while reading it again.
    refreshed: Mutex<Instant>,
    inodes: Mutex<Inodes>,
    trees: Mutex<Lru<ChunkId, Arc<Tree>>>,
    chunks: Mutex<Lru<ChunkId, Arc<Vec<u8>>>>,
    open: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
}

/// What an inode is.
#[derive(Clone)]
enum Node {
    Root,
    Snapshots,
    Hosts,
    Latest,
    Host(Arc<str>),
    /// A snapshot's directory: its root tree.
    Snap(Arc<SnapInfo>),
    /// An entry inside a snapshot.
    Entry(Arc<EntryNode>),
}

struct EntryNode {
    snap: SnapshotId,
    /// `/`-separated path inside the snapshot.
    path: Box<[u8]>,
    /// The directory it was found in.
    parent: u64,
    entry: Entry,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Host(Arc<str>),
    Snap(SnapshotId),
    Entry(SnapshotId, Box<[u8]>),
}

struct Inodes {
    next: u64,
    by_key: HashMap<Key, u64>,
    nodes: HashMap<u64, Node>,
}

impl Inodes {
    /// The inode of `key`, numbering it (as `node()`) on first sight.
    fn intern(&mut self, key: Key, node: impl FnOnce() -> Node) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, node());
        self.by_key.insert(key, ino);
        ino
    }
}

/// An open file: its entry and the end offsets of the chunks fetched so far.
struct OpenFile {
    node: Arc<EntryNode>,
    /// `ends[i]`: the offset just past chunk `i` (bytes).
    ends: Mutex<Vec<u64>>,
}

impl OpenFile {
    fn chunks(&self) -> Vec<ChunkId> {
        self.node.entry.chunk_ids().collect()
    }
}

impl RepoFs {
    pub(super) fn new(
        repo: Arc<Repo>,
        rt: Handle,
        snapshots: &[(SnapshotId, Snapshot)],
        owner: (u32, u32),
    ) -> Self {
        Self {
            repo,
            rt,
            owner,
            listing: Mutex::new(Arc::new(Listing::new(snapshots))),
            refreshed: Mutex::new(Instant::now()),
            inodes: Mutex::new(Inodes {
                next: FIRST_DYNAMIC,
                by_key: HashMap::new(),
                nodes: HashMap::new(),
            }),
            trees: Mutex::new(Lru::new(TREE_CACHE_BYTES, TREE_CACHE_BYTES / (16 << 10))),
            chunks: Mutex::new(Lru::new(CHUNK_CACHE_BYTES, CHUNK_CACHE_BYTES / (1 << 20))),
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT => Some(Node::Root),
            SNAPSHOTS => Some(Node::Snapshots),
            HOSTS => Some(Node::Hosts),
            LATEST => Some(Node::Latest),
            _ => self.inodes.lock().nodes.get(&ino).cloned(),
        }
    }

    /// The current listing, read again first if it is older than
    /// [`REFRESH_INTERVAL`] and `refresh` is set.
    fn listing(&self, refresh: bool) -> Arc<Listing> {
        if refresh {
            self.refresh();
        }
        self.listing.lock().clone()
    }

    fn refresh(&self) {
        // One reader at a time; the others serve the listing they have.
        let Some(mut refreshed) = self.refreshed.try_lock() else {
            return;
        };
        if refreshed.elapsed() < REFRESH_INTERVAL {
            return;
        }
        *refreshed = Instant::now();
        match self.rt.block_on(self.repo.snapshots()) {
            Ok(snapshots) => *self.listing.lock() = Arc::new(Listing::new(&snapshots)),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "reading the snapshot list again"),
        }
    }

    fn intern_snap(&self, info: &Arc<SnapInfo>) -> (u64, Node) {
        let node = Node::Snap(info.clone());
        let ino = self
            .inodes
            .lock()
            .intern(Key::Snap(info.id), || node.clone());
        (ino, node)
    }

    fn intern_host(&self, host: &str) -> (u64, Node) {
        let host: Arc<str> = host.into();
        let node = Node::Host(host.clone());
        let ino = self.inodes.lock().intern(Key::Host(host), || node.clone());
        (ino, node)
    }

    /// The inode of `entry`, found in directory `parent` (at `dir_path` of
    /// snapshot `snap`).
    fn intern_entry(&self, snap: SnapshotId, dir_path: &[u8], parent: u64, entry: &Entry) -> u64 {
        let mut path = Vec::with_capacity(dir_path.len() + 1 + entry.name.len());
        if !dir_path.is_empty() {
            path.extend_from_slice(dir_path);
            path.push(b'/');
        }
        path.extend_from_slice(&entry.name);
        let path = path.into_boxed_slice();
        self.inodes
            .lock()
            .intern(Key::Entry(snap, path.clone()), || {
                Node::Entry(Arc::new(EntryNode {
                    snap,
                    path,
                    parent,
                    entry: entry.clone(),
                }))
            })
    }

    /// A directory inside a snapshot: the snapshot, its path and its tree.
    fn dir_tree<'a>(&self, node: &'a Node) -> Result<(SnapshotId, &'a [u8], Arc<Tree>), Errno> {
        match node {
            Node::Snap(info) => Ok((info.id, &[], self.tree(info.root)?)),
            Node::Entry(e) => match &e.entry.content {
                Content::Subtree(id) => Ok((e.snap, &e.path, self.tree(*id)?)),
                _ => Err(Errno::ENOTDIR),
            },
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn tree(&self, id: ChunkId) -> Result<Arc<Tree>, Errno> {
        if let Some(tree) = self.trees.lock().get(&id) {
            return Ok(tree);
        }
        let tree = self.rt.block_on(self.repo.read_tree(id)).map_err(|e| {
            tracing::warn!(tree = %id, error = %format!("{e:#}"), "reading a directory");
            Errno::EIO
        })?;
        let tree = Arc::new(tree);
        self.trees.lock().insert(id, tree.clone(), tree_cost(&tree));
        Ok(tree)
    }

    /// The view's place for a node of its top levels (`None` below a
    /// snapshot's directory).
    fn place(node: &Node) -> Option<Place> {
        match node {
            Node::Root => Some(Place::Root),
            Node::Snapshots => Some(Place::Snapshots),
            Node::Hosts => Some(Place::Hosts),
            Node::Latest => Some(Place::Latest),
            Node::Host(host) => Some(Place::Host(host.to_string())),
            Node::Snap(info) => Some(Place::Snapshot(info.clone())),
            Node::Entry(_) => None,
        }
    }

    /// The inode and node of one of the view's places.
    fn node_at(&self, place: &Place) -> (u64, Node) {
        match place {
            Place::Root => (ROOT, Node::Root),
            Place::Snapshots => (SNAPSHOTS, Node::Snapshots),
            Place::Hosts => (HOSTS, Node::Hosts),
            Place::Latest => (LATEST, Node::Latest),
            Place::Host(host) => self.intern_host(host),
            Place::Snapshot(info) => self.intern_snap(info),
        }
    }

    fn lookup_child(&self, parent: u64, name: &[u8]) -> Result<(u64, Node), Errno> {
        let node = self.node(parent).ok_or(Errno::ENOENT)?;
        match &node {
            Node::Root | Node::Snapshots | Node::Hosts | Node::Host(_) => {
                let name = std::str::from_utf8(name).map_err(|_| Errno::ENOENT)?;
                let dir = Self::place(&node).ok_or(Errno::EIO)?;
                let place = self.listing(true).child(&dir, name).ok_or(Errno::ENOENT)?;
                Ok(self.node_at(&place))
            }
            Node::Latest => Err(Errno::ENOTDIR),
            Node::Snap(_) | Node::Entry(_) => {
                let (snap, path, tree) = self.dir_tree(&node)?;
                let entry = tree.get(name).ok_or(Errno::ENOENT)?;
                let ino = self.intern_entry(snap, path, parent, entry);
                let child = self.node(ino).ok_or(Errno::EIO)?;
                Ok((ino, child))
            }
        }
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        match node {
            Node::Entry(e) => entry_attr(ino, &e.entry),
            Node::Snap(info) => self.dir_attr(ino, info.time_ns),
            Node::Latest => {
                let listing = self.listing(false);
                let len = listing
                    .latest
                    .as_ref()
                    .map_or(0, |n| latest_target(n).len());
                let mut attr = self.dir_attr(ino, listing.newest_ns);
                attr.kind = FileType::Symlink;
                attr.perm = 0o777;
                attr.size = len as u64;
                attr
            }
            Node::Root | Node::Snapshots | Node::Hosts | Node::Host(_) => {
                self.dir_attr(ino, self.listing(false).newest_ns)
            }
        }
    }

    fn dir_attr(&self, ino: u64, time_ns: i64) -> FileAttr {
        let time = system_time(time_ns);
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind: FileType::Directory,
            perm: 0o555,
            // 1, not 2 + subdirectories: "unknown", which turns off the
            // leaf optimisation of `find` and other tree walkers.
            nlink: 1,
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The entries of a top-level directory, `.` and `..` first.
    fn virtual_dir(&self, ino: u64, node: &Node) -> Vec<(u64, FileType, Vec<u8>)> {
        let dir = |ino, name: &str| (ino, FileType::Directory, name.as_bytes().to_vec());
        let mut out = Vec::new();
        let up = match node {
            Node::Root | Node::Snapshots | Node::Hosts => ROOT,
            Node::Host(_) => HOSTS,
            Node::Latest | Node::Snap(_) | Node::Entry(_) => return out,
        };
        out.push(dir(ino, "."));
        out.push(dir(up, ".."));
        let Some(place) = Self::place(node) else {
            return out;
        };
        for (name, child) in self.listing(true).children(&place) {
            let (child_ino, child_node) = self.node_at(&child);
            let kind = match child_node {
                Node::Latest => FileType::Symlink,
                _ => FileType::Directory,
            };
            out.push((child_ino, kind, name.into_bytes()));
        }
        out
    }

    /// Fills `reply` with a snapshot directory's entries from `offset` on.
    fn tree_dir(
        &self,
        ino: u64,
        node: &Node,
        offset: usize,
        reply: &mut ReplyDirectory,
    ) -> Result<(), Errno> {
        let (snap, path, tree) = self.dir_tree(node)?;
        let parent = match node {
            Node::Entry(e) => e.parent,
            _ => SNAPSHOTS,
        };
        let dots = [
            (ino, FileType::Directory, &b"."[..]),
            (parent, FileType::Directory, &b".."[..]),
        ];
        let entries = tree.entries.iter().map(|e| {
            let child = self.intern_entry(snap, path, ino, e);
            (child, file_type(e.kind), e.name.as_slice())
        });
        for (i, (child, kind, name)) in dots.into_iter().chain(entries).enumerate().skip(offset) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        Ok(())
    }

    /// Up to `size` bytes of `file` from `offset` (fewer at its end).
    fn read_at(&self, file: &OpenFile, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let chunks = file.chunks();
        let end = file
            .node
            .entry
            .size
            .min(offset.saturating_add(u64::from(size)));
        let mut out = Vec::with_capacity(usize::try_from(end.saturating_sub(offset)).unwrap_or(0));
        let mut ends = file.ends.lock();
        let mut pos = offset;
        while pos < end {
            let Some(i) = self.chunk_at(&chunks, &mut ends, pos)? else {
                tracing::warn!(
                    path = %String::from_utf8_lossy(&file.node.path),
                    size = file.node.entry.size,
                    "the file's chunks are shorter than its recorded size"
                );
                break;
            };
            let data = self
                .fetch(&chunks[i..])?
                .into_iter()
                .next()
                .ok_or(Errno::EIO)?;
            let start = if i == 0 { 0 } else { ends[i - 1] };
            let from = usize::try_from(pos - start).map_err(|_| Errno::EIO)?;
            let to = usize::try_from(end - start).map_or(data.len(), |t| t.min(data.len()));
            out.extend_from_slice(data.get(from..to).ok_or(Errno::EIO)?);
            pos = start + to as u64;
        }
        Ok(out)
    }

    /// The index of the chunk that holds byte `pos`, fetching chunks in
    /// order until one ends past it; `None` past the last chunk.
    fn chunk_at(
        &self,
        chunks: &[ChunkId],
        ends: &mut Vec<u64>,
        pos: u64,
    ) -> Result<Option<usize>, Errno> {
        loop {
            if let Some(i) = chunk_index(ends, pos) {
                return Ok(Some(i));
            }
            let next = ends.len();
            if next >= chunks.len() {
                return Ok(None);
            }
            for data in self.fetch(&chunks[next..])? {
                let last = ends.last().copied().unwrap_or(0);
                ends.push(last + data.len() as u64);
            }
        }
    }

    /// `ids[0]` from the cache, or on a miss it and up to
    /// [`READ_AHEAD_CHUNKS`]` - 1` after it, fetched concurrently and
    /// cached: a run of chunks from `ids[0]`, never empty.
    ///
    /// # Errors
    /// EIO when `ids[0]` cannot be read (a later one that fails only ends
    /// the run).
    fn fetch(&self, ids: &[ChunkId]) -> Result<Vec<Arc<Vec<u8>>>, Errno> {
        let Some(first) = ids.first() else {
            return Err(Errno::EIO);
        };
        if let Some(data) = self.chunks.lock().get(first) {
            return Ok(vec![data]);
        }
        let run = &ids[..ids.len().min(READ_AHEAD_CHUNKS)];
        let cached: Vec<Option<Arc<Vec<u8>>>> = {
            let mut cache = self.chunks.lock();
            run.iter().map(|id| cache.get(id)).collect()
        };
        let fetched = self.rt.block_on(futures::future::join_all(
            run.iter()
                .zip(&cached)
                .filter(|(_, hit)| hit.is_none())
                .map(|(id, _)| self.repo.read_chunk(*id)),
        ));
        let mut fetched = fetched.into_iter();
        let mut out = Vec::with_capacity(run.len());
        for (id, hit) in run.iter().zip(cached) {
            let data = match hit {
                Some(data) => data,
                None => match fetched.next() {
                    Some(Ok(data)) => {
                        let data = Arc::new(data);
                        self.chunks.lock().insert(*id, data.clone(), data.len());
                        data
                    }
                    Some(Err(e)) => {
                        tracing::warn!(chunk = %id, error = %e, "reading a file's chunk");
                        break;
                    }
                    None => break,
                },
            };
            out.push(data);
        }
        if out.is_empty() {
            return Err(Errno::EIO);
        }
        Ok(out)
    }
}

impl Filesystem for RepoFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_child(parent.0, name.as_bytes()) {
            Ok((ino, node)) => reply.entry(&ttl(&node), &self.attr(ino, &node), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino.0) {
            Some(node) => reply.attr(&ttl(&node), &self.attr(ino.0, &node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino.0) {
            Some(Node::Latest) => match &self.listing(true).latest {
                Some(name) => reply.data(latest_target(name).as_bytes()),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::Entry(e)) => match &e.entry.content {
                Content::Symlink(target) => reply.data(target),
                _ => reply.error(Errno::EINVAL),
            },
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY) {
            return reply.error(Errno::EROFS);
        }
        match self.node(ino.0) {
            Some(Node::Entry(node)) if node.entry.kind == EntryKind::File => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                let file = OpenFile {
                    node,
                    ends: Mutex::new(Vec::new()),
                };
                self.open.lock().insert(fh, Arc::new(file));
                // The contents never change: the page cache may outlive a close.
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Some(Node::Latest) => reply.error(Errno::ELOOP),
            Some(Node::Entry(node)) if node.entry.kind != EntryKind::Dir => {
                reply.error(Errno::EACCES)
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.open.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        match self.read_at(&file, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so nothing to flush.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.open.lock().remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(node) = self.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        match &node {
            Node::Snap(_) | Node::Entry(_) => match self.tree_dir(ino.0, &node, offset, &mut reply)
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
            Node::Latest => reply.error(Errno::ENOTDIR),
            Node::Root | Node::Snapshots | Node::Hosts | Node::Host(_) => {
                let items = self.virtual_dir(ino.0, &node);
                for (i, (child, kind, name)) in items.iter().enumerate().skip(offset) {
                    if reply.add(
                        INodeNo(*child),
                        i as u64 + 1,
                        *kind,
                        OsStr::from_bytes(name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.node(ino.0) {
            Some(Node::Entry(e)) => {
                match e.entry.xattrs.iter().find(|x| x.name == name.as_bytes()) {
                    Some(x) => reply_xattr(reply, &x.value, size),
                    None => reply.error(Errno::NO_XATTR),
                }
            }
            Some(_) => reply.error(Errno::NO_XATTR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names: Vec<u8> = match self.node(ino.0) {
            Some(Node::Entry(e)) => e
                .entry
                .xattrs
                .iter()
                .flat_map(|x| x.name.iter().copied().chain([0]))
                .collect(),
            Some(_) => Vec::new(),
            None => return reply.error(Errno::ENOENT),
        };
        reply_xattr(reply, &names, size);
    }
}

/// Answers a getxattr or listxattr: the length when `size` is 0, else the
/// bytes if they fit.
fn reply_xattr(reply: ReplyXattr, bytes: &[u8], size: u32) {
    let Ok(len) = u32::try_from(bytes.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(bytes);
    }
}

fn ttl(node: &Node) -> Duration {
    match node {
        Node::Entry(_) => SNAPSHOT_TTL,
        _ => LISTING_TTL,
    }
}

fn entry_attr(ino: u64, e: &Entry) -> FileAttr {
    let size = match &e.content {
        Content::Symlink(target) => target.len() as u64,
        _ => e.size,
    };
    let mtime = system_time(e.mtime_ns);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: system_time(e.ctime_ns),
        crtime: mtime,
        kind: file_type(e.kind),
        perm: (e.mode & 0o7777) as u16,
        nlink: 1, // directories too: see `dir_attr`
        uid: e.uid,
        gid: e.gid,
        rdev: u32::try_from(e.rdev).unwrap_or(0),
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::CharDevice => FileType::CharDevice,
        EntryKind::BlockDevice => FileType::BlockDevice,
        EntryKind::Socket => FileType::Socket,
    }
}

/// The index of the chunk holding byte `pos`, given the end offsets of the
/// chunks known so far; `None` when it lies past them.
fn chunk_index(ends: &[u64], pos: u64) -> Option<usize> {
    let i = ends.partition_point(|&end| end <= pos);
    (i < ends.len()).then_some(i)
}

/// Estimated heap bytes of a decoded tree.
fn tree_cost(tree: &Tree) -> usize {
    tree.entries
        .iter()
        .map(|e| {
            let content = match &e.content {
                Content::Chunks(ids) => ids.len() * std::mem::size_of::<ChunkRef>(),
                Content::Symlink(target) => target.len(),
                Content::Subtree(_) | Content::None => 0,
            };
            let xattrs: usize = e
                .xattrs
                .iter()
                .map(|x| x.name.len() + x.value.len() + 48)
                .sum();
            std::mem::size_of::<Entry>() + e.name.len() + content + xattrs
        })
        .sum::<usize>()
        + std::mem::size_of::<Tree>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_index_finds_the_chunk_holding_a_byte() {
        let ends = [10, 10, 25, 40];
        assert_eq!(chunk_index(&ends, 0), Some(0));
        assert_eq!(chunk_index(&ends, 9), Some(0));
        // The empty chunk 1 holds nothing.
        assert_eq!(chunk_index(&ends, 10), Some(2));
        assert_eq!(chunk_index(&ends, 39), Some(3));
        assert_eq!(chunk_index(&ends, 40), None);
        assert_eq!(chunk_index(&[], 0), None);
    }
}
