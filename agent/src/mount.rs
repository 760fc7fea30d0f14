//! `ringvault mount`: the repository as a read-only FUSE file system.
//!
//! ```text
//! MOUNTPOINT/
//!   snapshots/<time>/<the snapshot's root entries>...
//!   hosts/<host>/<time>/...          the same directories, grouped by host
//!   latest -> snapshots/<time>       the newest snapshot (a relative link)
//! ```
//!
//! `<time>` is the snapshot's time in UTC to the second
//! (`2024-05-01T12:00:00Z`); snapshots that share a second are all named
//! `<time>-<short id>`. A host name is used as is, with `/` and NUL replaced
//! by `_`. The snapshot list is read at mount time and again, at most every
//! [`REFRESH_INTERVAL`], when someone looks at the top-level directories;
//! a snapshot's contents never change.
//!
//! Threading: fuser serves kernel requests on [`FUSE_THREADS`] threads of
//! its own, and each callback waits for the async repository with the
//! mounting runtime's [`Handle::block_on`]: never on a tokio worker. The
//! mount itself and the unmount run on the blocking pool.
//!
//! Inodes: 1 is the root, 2 `snapshots`, 3 `hosts`, 4 `latest`. Every other
//! node gets the next number the first time a lookup or a listing reaches
//! it, kept for the life of the mount and keyed by (snapshot, path), so the
//! directory under `snapshots/` and under `hosts/` is one inode. The map only
//! grows: a few hundred bytes plus the path per node listed or looked up,
//! and 32 bytes per chunk of a file.
//!
//! Reads: a tree names a file's chunks but not their sizes, so each open
//! file learns the end offset of every chunk it fetches, and reaching offset
//! X fetches each chunk before it once. Decrypted chunks are kept in a cache
//! of [`CHUNK_CACHE_BYTES`] and decoded trees in one of
//! [`TREE_CACHE_BYTES`]; a read that misses fetches the chunk and up to
//! [`READ_AHEAD_CHUNKS`]` - 1` after it concurrently, so `cat`, `cp` and
//! `cmp` fetch each chunk once. A chunk or tree that cannot be read fails
//! that request with EIO and a warning in the log.
//!
//! Read-only: the mount carries the `ro` option, so the kernel fails every
//! write with EROFS before it reaches us; `open` for writing is refused
//! too. The kernel checks each file's recorded owner and mode
//! (`default_permissions`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::hash::Hash;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr, Request, SessionACL,
};
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{ChunkRef, Content, Entry, EntryKind, Tree};
use ringvault_common::{ChunkId, SnapshotId};
use tokio::runtime::Handle;

use crate::repo::Repo;

/// Exit code of `ringvault mount` when this machine cannot mount FUSE file
/// systems ([`FuseUnavailable`]).
pub const EXIT_FUSE_UNAVAILABLE: u8 = 14;

/// Bytes of decrypted chunks kept for reads (64 MiB).
pub const CHUNK_CACHE_BYTES: usize = 64 << 20;

/// Bytes (estimated) of decoded directory trees kept (32 MiB).
pub const TREE_CACHE_BYTES: usize = 32 << 20;

/// Chunks fetched at once when a read misses the cache: the one it needs
/// and those after it.
pub const READ_AHEAD_CHUNKS: usize = 4;

/// Threads serving kernel requests; each waits for one repository read at
/// a time.
pub const FUSE_THREADS: usize = 4;

/// The snapshot list is read again at most this often, when someone looks
/// at the top-level directories.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// How long the kernel may cache names and attributes inside a snapshot
/// (they never change).
const SNAPSHOT_TTL: Duration = Duration::from_secs(3600);

/// How long the kernel may cache the top-level directories' names and
/// attributes, which change when snapshots come and go.
const LISTING_TTL: Duration = Duration::from_secs(1);

const ROOT: u64 = 1;
const SNAPSHOTS: u64 = 2;
const HOSTS: u64 = 3;
const LATEST: u64 = 4;
const FIRST_DYNAMIC: u64 = 5;

/// How to mount.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Let users other than the one mounting in (FUSE's `allow_other`; a
    /// user other than root needs `user_allow_other` in /etc/fuse.conf).
    /// Each file's recorded owner and mode still apply.
    pub allow_other: bool,
}

/// This machine cannot mount FUSE file systems: there is no /dev/fuse, or
/// the kernel or fusermount refused the mount (in a container without the
/// right, for instance).
#[derive(Debug, thiserror::Error)]
#[error("FUSE is unavailable here: {reason}")]
pub struct FuseUnavailable {
    /// Why, as the system said it.
    pub reason: String,
}

/// Runs `ringvault mount`: [`mount`], printing [`FuseUnavailable`] and
/// returning [`EXIT_FUSE_UNAVAILABLE`] for it; 0 after a clean unmount.
///
/// # Errors
/// Every other error of [`mount`].
pub async fn run(repo: Arc<Repo>, mountpoint: &Path, options: &MountOptions) -> anyhow::Result<u8> {
    match mount(repo, mountpoint, options).await {
        Ok(()) => Ok(0),
        Err(e) if e.chain().any(|c| c.is::<FuseUnavailable>()) => {
            eprintln!("error: {e:#}");
            Ok(EXIT_FUSE_UNAVAILABLE)
        }
        Err(e) => Err(e),
    }
}

/// Mounts the repository read-only at `mountpoint` (an existing directory)
/// and serves it until SIGINT or SIGTERM, then unmounts; returns early if
/// someone else unmounts it (`fusermount -u`). Call from inside a
/// multi-threaded tokio runtime: the file system's threads use it.
///
/// # Errors
/// The mountpoint is not a directory; the snapshots cannot be listed;
/// [`FuseUnavailable`]; the mount fails otherwise; the session ends with an
/// error. A mountpoint still in use at the end is detached lazily (with a
/// warning), not an error.
pub async fn mount(
    repo: Arc<Repo>,
    mountpoint: &Path,
    options: &MountOptions,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before mounting, so that a signal during the mount does not kill the
    // process and leave the mount behind.
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;

    let meta = std::fs::metadata(mountpoint)
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "mountpoint {} is not a directory",
        mountpoint.display()
    );
    if cfg!(target_os = "linux") && !Path::new("/dev/fuse").exists() {
        return Err(FuseUnavailable {
            reason: "there is no /dev/fuse (load the fuse kernel module, or pass the device \
                     into the container)"
                .into(),
        }
        .into());
    }
    let snapshots = repo.snapshots().await.context("listing snapshots")?;
    let count = snapshots.len();
    let config = fuse_config(&repo.config.repository, options);
    let fs = RepoFs::new(
        repo.clone(),
        Handle::current(),
        &snapshots,
        (meta.uid(), meta.gid()),
    );
    let at = mountpoint.to_path_buf();
    let session = tokio::task::spawn_blocking(move || fuser::spawn_mount(fs, &at, &config))
        .await
        .context("the mount task")?
        .map_err(|e| mount_error(e, mountpoint))?;
    println!(
        "mounted repository {} ({count} snapshots) read-only at {}; Ctrl-C or SIGTERM unmounts",
        repo.config.repository,
        mountpoint.display()
    );

    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = poll.tick() => {
                if session.guard.is_finished() {
                    // Unmounted from outside: the session has ended.
                    tokio::task::spawn_blocking(move || session.join())
                        .await
                        .context("the file system thread")?
                        .context("serving the mount")?;
                    println!("{} was unmounted", mountpoint.display());
                    return Ok(());
                }
            }
        }
    }
    unmount(session, mountpoint).await
}

/// Unmounts and waits for the file system's threads; when the mountpoint
/// is busy, detaches it lazily instead (whoever still uses it loses access
/// when this process exits).
async fn unmount(session: BackgroundSession, mountpoint: &Path) -> anyhow::Result<()> {
    let result = tokio::task::spawn_blocking(move || session.umount_and_join())
        .await
        .context("the unmount task")?;
    match result {
        Ok(()) => {
            println!("unmounted {}", mountpoint.display());
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            detach(mountpoint).await?;
            tracing::warn!(
                mountpoint = %mountpoint.display(),
                "the mountpoint was busy: detached it; processes still using it lose access now"
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("unmounting {}", mountpoint.display())),
    }
}

/// Lazily unmounts `mountpoint` with whichever tool this system has.
///
/// # Errors
/// When none of them succeeds.
async fn detach(mountpoint: &Path) -> anyhow::Result<()> {
    let tools: [(&str, &[&str]); 3] = [
        ("fusermount3", &["-u", "-z", "--"]),
        ("fusermount", &["-u", "-z", "--"]),
        ("umount", &["-l", "--"]),
    ];
    for (tool, args) in tools {
        let status = tokio::process::Command::new(tool)
            .args(args)
            .arg(mountpoint)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        if status.is_ok_and(|s| s.success()) {
            return Ok(());
        }
    }
    anyhow::bail!(
        "{} is busy and could not be detached: unmount it with `fusermount -u -z`",
        mountpoint.display()
    )
}

fn fuse_config(repository: &str, options: &MountOptions) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
        // Mount options are comma-separated.
        MountOption::FSName(format!("ringvault:{}", repository.replace(',', "_"))),
        MountOption::Subtype("ringvault".into()),
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(FUSE_THREADS);
    config
}

/// A failed mount as [`FuseUnavailable`] when the system refused it, else
/// as is. The mountpoint was checked first, so "not found" means
/// /dev/fuse or fusermount.
fn mount_error(e: std::io::Error, mountpoint: &Path) -> anyhow::Error {
    use std::io::ErrorKind;
    let text = e.to_string();
    let refused = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied)
        || [
            "Operation not permitted",
            "Permission denied",
            "No such device",
            "fuse device not found",
        ]
        .iter()
        .any(|m| text.contains(m));
    if refused {
        FuseUnavailable {
            reason: format!("mounting at {}: {}", mountpoint.display(), text.trim()),
        }
        .into()
    } else {
        anyhow::Error::new(e).context(format!("mounting at {}", mountpoint.display()))
    }
}

/// The file system fuser serves.
struct RepoFs {
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

/// The top-level directories' contents, from one read of the snapshot list.
#[derive(Default)]
struct Listing {
    /// `snapshots/`: name to snapshot.
    snapshots: BTreeMap<String, Arc<SnapInfo>>,
    /// `hosts/`: host to (name to snapshot).
    hosts: BTreeMap<String, BTreeMap<String, Arc<SnapInfo>>>,
    /// The newest snapshot's name.
    latest: Option<String>,
    /// The newest snapshot's time, ns: the top-level directories' mtime.
    newest_ns: i64,
}

struct SnapInfo {
    id: SnapshotId,
    time_ns: i64,
    root: ChunkId,
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
    fn new(
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
            _ => lock(&self.inodes).nodes.get(&ino).cloned(),
        }
    }

    /// The current listing, read again first if it is older than
    /// [`REFRESH_INTERVAL`] and `refresh` is set.
    fn listing(&self, refresh: bool) -> Arc<Listing> {
        if refresh {
            self.refresh();
        }
        lock(&self.listing).clone()
    }

    fn refresh(&self) {
        // One reader at a time; the others serve the listing they have.
        let mut refreshed = match self.refreshed.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if refreshed.elapsed() < REFRESH_INTERVAL {
            return;
        }
        *refreshed = Instant::now();
        match self.rt.block_on(self.repo.snapshots()) {
            Ok(snapshots) => *lock(&self.listing) = Arc::new(Listing::new(&snapshots)),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "reading the snapshot list again"),
        }
    }

    fn intern_snap(&self, info: &Arc<SnapInfo>) -> (u64, Node) {
        let node = Node::Snap(info.clone());
        let ino = lock(&self.inodes).intern(Key::Snap(info.id), || node.clone());
        (ino, node)
    }

    fn intern_host(&self, host: &str) -> (u64, Node) {
        let host: Arc<str> = host.into();
        let node = Node::Host(host.clone());
        let ino = lock(&self.inodes).intern(Key::Host(host), || node.clone());
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
        lock(&self.inodes).intern(Key::Entry(snap, path.clone()), || {
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
        if let Some(tree) = lock(&self.trees).get(&id) {
            return Ok(tree);
        }
        let tree = self.rt.block_on(self.repo.read_tree(id)).map_err(|e| {
            tracing::warn!(tree = %id, error = %format!("{e:#}"), "reading a directory");
            Errno::EIO
        })?;
        let tree = Arc::new(tree);
        lock(&self.trees).insert(id, tree.clone(), tree_cost(&tree));
        Ok(tree)
    }

    fn lookup_child(&self, parent: u64, name: &[u8]) -> Result<(u64, Node), Errno> {
        let node = self.node(parent).ok_or(Errno::ENOENT)?;
        let text = || std::str::from_utf8(name).map_err(|_| Errno::ENOENT);
        match &node {
            Node::Root => match name {
                b"snapshots" => Ok((SNAPSHOTS, Node::Snapshots)),
                b"hosts" => Ok((HOSTS, Node::Hosts)),
                b"latest" if self.listing(true).latest.is_some() => Ok((LATEST, Node::Latest)),
                _ => Err(Errno::ENOENT),
            },
            Node::Snapshots => {
                let listing = self.listing(true);
                let info = listing.snapshots.get(text()?).ok_or(Errno::ENOENT)?;
                Ok(self.intern_snap(info))
            }
            Node::Hosts => {
                let host = text()?;
                if !self.listing(true).hosts.contains_key(host) {
                    return Err(Errno::ENOENT);
                }
                Ok(self.intern_host(host))
            }
            Node::Host(host) => {
                let listing = self.listing(true);
                let info = listing
                    .hosts
                    .get(&**host)
                    .and_then(|snaps| snaps.get(text().ok()?))
                    .ok_or(Errno::ENOENT)?;
                Ok(self.intern_snap(info))
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
        match node {
            Node::Root => {
                out.push(dir(ROOT, "."));
                out.push(dir(ROOT, ".."));
                out.push(dir(HOSTS, "hosts"));
                if self.listing(true).latest.is_some() {
                    out.push((LATEST, FileType::Symlink, b"latest".to_vec()));
                }
                out.push(dir(SNAPSHOTS, "snapshots"));
            }
            Node::Snapshots => {
                out.push(dir(ino, "."));
                out.push(dir(ROOT, ".."));
                for (name, info) in &self.listing(true).snapshots {
                    out.push(dir(self.intern_snap(info).0, name));
                }
            }
            Node::Hosts => {
                out.push(dir(ino, "."));
                out.push(dir(ROOT, ".."));
                for host in self.listing(true).hosts.keys() {
                    out.push(dir(self.intern_host(host).0, host));
                }
            }
            Node::Host(host) => {
                out.push(dir(ino, "."));
                out.push(dir(HOSTS, ".."));
                if let Some(snaps) = self.listing(true).hosts.get(&**host) {
                    for (name, info) in snaps {
                        out.push(dir(self.intern_snap(info).0, name));
                    }
                }
            }
            Node::Latest | Node::Snap(_) | Node::Entry(_) => {}
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
        let mut ends = lock(&file.ends);
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
        if let Some(data) = lock(&self.chunks).get(first) {
            return Ok(vec![data]);
        }
        let run = &ids[..ids.len().min(READ_AHEAD_CHUNKS)];
        let cached: Vec<Option<Arc<Vec<u8>>>> = {
            let mut cache = lock(&self.chunks);
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
                        lock(&self.chunks).insert(*id, data.clone(), data.len());
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
                lock(&self.open).insert(fh, Arc::new(file));
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
        let Some(file) = lock(&self.open).get(&fh.0).cloned() else {
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
        lock(&self.open).remove(&fh.0);
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

impl Listing {
    fn new(snapshots: &[(SnapshotId, Snapshot)]) -> Self {
        let names = snapshot_names(snapshots);
        let mut listing = Listing::default();
        let mut newest: Option<(i64, SnapshotId, &str)> = None;
        for ((id, snap), name) in snapshots.iter().zip(&names) {
            let info = Arc::new(SnapInfo {
                id: *id,
                time_ns: snap.time_ns,
                root: snap.root,
            });
            listing.snapshots.insert(name.clone(), info.clone());
            listing
                .hosts
                .entry(safe_name(&snap.host))
                .or_default()
                .insert(name.clone(), info);
            if newest.is_none_or(|(t, i, _)| (snap.time_ns, *id) > (t, i)) {
                newest = Some((snap.time_ns, *id, name));
            }
        }
        listing.latest = newest.map(|(.., name)| name.to_owned());
        listing.newest_ns = newest.map_or(0, |(t, ..)| t);
        listing
    }
}

/// Each snapshot's directory name: its UTC time to the second, with
/// `-<short id>` when several share that second.
fn snapshot_names(snapshots: &[(SnapshotId, Snapshot)]) -> Vec<String> {
    let times: Vec<String> = snapshots
        .iter()
        .map(|(_, s)| format_time(s.time_ns))
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &times {
        *counts.entry(t).or_default() += 1;
    }
    times
        .iter()
        .zip(snapshots)
        .map(|(t, (id, _))| {
            if counts.get(t.as_str()).copied().unwrap_or(0) > 1 {
                format!("{t}-{}", id.short())
            } else {
                t.clone()
            }
        })
        .collect()
}

fn format_time(ns: i64) -> String {
    humantime::format_rfc3339_seconds(system_time(ns.max(0))).to_string()
}

/// A host name usable as a directory name.
fn safe_name(host: &str) -> String {
    let name: String = host
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    match name.as_str() {
        "" | "." | ".." => format!("_{name}"),
        _ => name,
    }
}

fn latest_target(name: &str) -> String {
    format!("snapshots/{name}")
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

/// Nanoseconds since the Unix epoch (negative before it) as a time.
fn system_time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
    .unwrap_or(UNIX_EPOCH)
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves consistent data here: every
    // critical section is a single map or list update.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A cache of decoded objects bounded by the sum of their costs (bytes).
/// Which objects stay is quick_cache's choice (CLOCK-Pro, a scan-resistant
/// approximation of LRU: Jiang, Chen and Zhang, USENIX ATC 2005). An object
/// heavier than quick_cache admits (about 97% of the budget: a directory of
/// some 200k entries) is still kept, alone, beside it, so that such a
/// directory is not fetched again at every lookup in it: the cache then
/// holds at most the budget plus that one object.
struct Lru<K, V> {
    cache: quick_cache::unsync::Cache<K, (V, usize), ByCost>,
    oversized: Option<(K, V)>,
}

/// Weighs a cached object by the cost it was inserted with (at least 1: an
/// object of weight 0 would never be evicted).
#[derive(Clone)]
struct ByCost;

impl<K, V> quick_cache::Weighter<K, (V, usize)> for ByCost {
    fn weight(&self, _: &K, value: &(V, usize)) -> u64 {
        u64::try_from(value.1.max(1)).unwrap_or(u64::MAX)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// A cache of `budget` bytes expected to hold about `items` objects.
    fn new(budget: usize, items: usize) -> Self {
        let budget = u64::try_from(budget).unwrap_or(u64::MAX);
        Self {
            cache: quick_cache::unsync::Cache::with_weighter(items.max(1), budget, ByCost),
            oversized: None,
        }
    }

    fn get(&mut self, key: &K) -> Option<V> {
        if let Some((value, _)) = self.cache.get(key) {
            return Some(value.clone());
        }
        match &self.oversized {
            Some((k, value)) if k == key => Some(value.clone()),
            _ => None,
        }
    }

    fn insert(&mut self, key: K, value: V, cost: usize) {
        if self.oversized.as_ref().is_some_and(|(k, _)| *k == key) {
            self.oversized = None;
        }
        self.cache.insert(key.clone(), (value.clone(), cost));
        if self.cache.peek(&key).is_none() {
            self.oversized = Some((key, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringvault_common::snapshot::Summary;

    fn snap(time_ns: i64, host: &str) -> Snapshot {
        Snapshot {
            time_ns,
            host: host.into(),
            agent: "agent".into(),
            paths: Vec::new(),
            root: ChunkId([0; 32]),
            parent: None,
            tags: Vec::new(),
            summary: Summary::default(),
        }
    }

    const SECOND: i64 = 1_000_000_000;
    // 2024-05-01T12:00:00Z
    const T: i64 = 1_714_564_800 * SECOND;

    #[test]
    fn names_are_utc_seconds_with_ids_only_on_collision() {
        let snaps = vec![
            (SnapshotId([1; 32]), snap(T, "a")),
            (SnapshotId([2; 32]), snap(T + SECOND + 5, "a")),
            (SnapshotId([3; 32]), snap(T + SECOND + 900_000_000, "b")),
        ];
        assert_eq!(
            snapshot_names(&snaps),
            [
                "2024-05-01T12:00:00Z",
                "2024-05-01T12:00:01Z-02020202",
                "2024-05-01T12:00:01Z-03030303",
            ]
        );
    }

    #[test]
    fn listing_groups_by_host_and_points_latest_at_the_newest() {
        let snaps = vec![
            (SnapshotId([9; 32]), snap(T, "web/1")),
            (SnapshotId([1; 32]), snap(T + 60 * SECOND, "")),
            (SnapshotId([5; 32]), snap(T + 30 * SECOND, "web/1")),
        ];
        let l = Listing::new(&snaps);
        assert_eq!(l.snapshots.len(), 3);
        assert_eq!(l.hosts.keys().collect::<Vec<_>>(), ["_", "web_1"]);
        assert_eq!(l.hosts["web_1"].len(), 2);
        assert_eq!(l.latest.as_deref(), Some("2024-05-01T12:01:00Z"));
        assert_eq!(l.newest_ns, T + 60 * SECOND);
        assert!(Listing::new(&[]).latest.is_none());
    }

    #[test]
    fn host_names_become_safe_directory_names() {
        assert_eq!(safe_name("db-1.example"), "db-1.example");
        assert_eq!(safe_name("a/b\0c"), "a_b_c");
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name(""), "_");
    }

    #[test]
    fn times_before_the_epoch_do_not_panic() {
        assert_eq!(system_time(-SECOND), UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(format_time(i64::MIN), "1970-01-01T00:00:00Z");
        let _ = system_time(i64::MAX);
    }

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

    #[test]
    fn refused_mounts_are_fuse_unavailable() {
        use std::io::{Error, ErrorKind};
        let at = Path::new("/mnt/x");
        let unavailable = |e: Error| mount_error(e, at).is::<FuseUnavailable>();
        assert!(unavailable(Error::from(ErrorKind::PermissionDenied)));
        assert!(unavailable(Error::from(ErrorKind::NotFound)));
        assert!(unavailable(Error::other(
            "fusermount: mount failed: Operation not permitted\n"
        )));
        assert!(unavailable(Error::from_raw_os_error(libc::ENODEV)));
        assert!(!unavailable(Error::from_raw_os_error(libc::EINVAL)));
        assert!(!unavailable(Error::other(
            "fusermount: mountpoint is not empty"
        )));
    }

    #[test]
    fn the_cache_keeps_within_its_budget_and_keeps_one_oversized_object() {
        let mut lru = Lru::new(100, 4);
        for key in 0..20 {
            lru.insert(key, key * 10, 30);
            assert_eq!(lru.get(&key), Some(key * 10), "the newest object is kept");
            assert!(
                lru.cache.weight() <= 100,
                "{} bytes held",
                lru.cache.weight()
            );
        }
        assert!(lru.cache.len() < 20, "older objects were evicted");
        // Replacing an object replaces its cost.
        lru.insert(19, 7, 60);
        assert_eq!(lru.get(&19), Some(7));
        assert!(lru.cache.weight() <= 100);
        // An object over the budget stays, beside the cache, until another
        // takes its place.
        lru.insert(100, 1, 500);
        assert_eq!(lru.get(&100), Some(1));
        assert!(lru.cache.weight() <= 100);
        lru.insert(101, 2, 500);
        assert_eq!(lru.get(&101), Some(2));
        assert_eq!(lru.get(&100), None);
        // Inserted again at a cost that fits, it moves into the cache.
        lru.insert(101, 3, 10);
        assert!(lru.oversized.is_none());
        assert_eq!(lru.get(&101), Some(3));
    }
}
