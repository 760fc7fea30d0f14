//! The powerfail file system's state: the inode table, open files, the
//! unsynced pages, the sync points and the power loss. [`super::fs`] serves
//! kernel requests over it; [`super::PowerFailFs`] controls it.
//!
//! One mutex guards everything (this serves one test server, not a
//! benchmark). Inode numbers are ours: 1 is the backing directory, others
//! are handed out the first time a backing (device, inode) pair is seen and
//! keep the relative path they were last reached by (renames move it,
//! unlinks clear it). Open files hold a descriptor of the backing file, so
//! an unlinked file keeps working for whoever has it open.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};

use super::pages::Dirty;
use super::{CrashReport, Loss};

/// Attributes and entries are never cached by the kernel: every stat sees
/// the logical size, and nothing stale survives a power loss.
pub(super) const TTL: Duration = Duration::ZERO;

/// Sync point descriptions kept for [`State::sync_log`].
const MAX_LOG: usize = 100_000;

/// What the control side ([`super::PowerFailFs`]) and the file system share.
pub(super) struct State {
    pub(super) inner: Mutex<Inner>,
    /// Signalled once the power fails.
    pub(super) crashed: Condvar,
}

pub(super) struct Inner {
    pub(super) root: PathBuf,
    /// Our inode number to the node.
    pub(super) nodes: HashMap<u64, Node>,
    /// Backing (device, inode) to our inode number.
    pub(super) ids: HashMap<(u64, u64), u64>,
    pub(super) next_ino: u64,
    pub(super) files: HashMap<u64, OpenFile>,
    pub(super) dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    pub(super) next_fh: u64,
    /// Unsynced data by inode.
    pub(super) dirty: HashMap<u64, Dirty>,
    /// Sync points seen, in order (the first [`MAX_LOG`]).
    pub(super) log: Vec<String>,
    pub(super) syncs: u64,
    /// Lose power instead of performing this sync point.
    pub(super) armed: Option<(u64, Loss)>,
    pub(super) crash: Option<CrashReport>,
    /// Killed (SIGKILL) the moment the power fails.
    pub(super) victim: Option<u32>,
}

pub(super) struct Node {
    /// Relative to the root; `None` once unlinked.
    pub(super) path: Option<PathBuf>,
}

pub(super) struct OpenFile {
    pub(super) ino: u64,
    pub(super) file: File,
    /// Opened with O_SYNC or O_DSYNC: every write is also a sync point.
    pub(super) sync_writes: bool,
}

/// A poisoned lock still holds a usable state (a panicking test thread).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// A fresh file system over `root`: nothing dirty, no sync points yet.
    pub(super) fn new(root: &Path) -> Arc<Self> {
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                path: Some(PathBuf::new()),
            },
        );
        let mut ids = HashMap::new();
        if let Ok(m) = std::fs::metadata(root) {
            ids.insert((m.dev(), m.ino()), 1);
        }
        Arc::new(Self {
            inner: Mutex::new(Inner {
                root: root.to_owned(),
                nodes,
                ids,
                next_ino: 2,
                files: HashMap::new(),
                dirs: HashMap::new(),
                next_fh: 1,
                dirty: HashMap::new(),
                log: Vec::new(),
                syncs: 0,
                armed: None,
                crash: None,
                victim: None,
            }),
            crashed: Condvar::new(),
        })
    }

    pub(super) fn syncs(&self) -> u64 {
        lock(&self.inner).syncs
    }

    pub(super) fn sync_log(&self) -> Vec<String> {
        lock(&self.inner).log.clone()
    }

    pub(super) fn dirty_pages(&self) -> usize {
        lock(&self.inner).dirty.values().map(Dirty::pages).sum()
    }

    pub(super) fn arm(&self, at: Option<(u64, Loss)>) {
        lock(&self.inner).armed = at;
    }

    pub(super) fn set_victim(&self, pid: Option<u32>) {
        lock(&self.inner).victim = pid;
    }

    pub(super) fn victim(&self) -> Option<u32> {
        lock(&self.inner).victim
    }

    pub(super) fn crash(&self) -> Option<CrashReport> {
        lock(&self.inner).crash.clone()
    }

    /// Waits at most `limit` for the power to fail.
    pub(super) fn wait_crash(&self, limit: Duration) -> Option<CrashReport> {
        let inner = lock(&self.inner);
        let (inner, _) = self
            .crashed
            .wait_timeout_while(inner, limit, |i| i.crash.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        inner.crash.clone()
    }

    /// The power fails now (if it has not already): see
    /// [`Inner::power_loss`].
    pub(super) fn power_loss(&self, loss: Loss) -> CrashReport {
        let mut inner = lock(&self.inner);
        let report = inner.power_loss(loss, None);
        self.crashed.notify_all();
        report
    }

    /// Writes every dirty page back (a clean shutdown: what `sync` and an
    /// unmount do), without counting a sync point.
    pub(super) fn flush_all(&self) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        let dirty: Vec<u64> = inner.dirty.keys().copied().collect();
        for ino in dirty {
            inner.persist(ino)?;
        }
        Ok(())
    }
}

impl Inner {
    pub(super) fn full(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    pub(super) fn path_of(&self, ino: u64) -> Result<PathBuf, Errno> {
        self.nodes
            .get(&ino)
            .and_then(|n| n.path.clone())
            .ok_or(Errno::ENOENT)
    }

    /// Our inode number for the backing file `meta`, reached at `rel`.
    pub(super) fn intern(&mut self, meta: &Metadata, rel: PathBuf) -> u64 {
        let key = (meta.dev(), meta.ino());
        if let Some(&ino) = self.ids.get(&key) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = Some(rel);
            }
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.ids.insert(key, ino);
        self.nodes.insert(ino, Node { path: Some(rel) });
        ino
    }

    pub(super) fn attr(&self, ino: u64, meta: &Metadata) -> FileAttr {
        let time = |s: i64, ns: i64| {
            UNIX_EPOCH
                + Duration::from_secs(s.max(0) as u64)
                + Duration::from_nanos(ns.max(0) as u64)
        };
        let size = self.dirty.get(&ino).map_or(meta.len(), Dirty::size);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: meta.blocks().max(size.div_ceil(512)),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind(meta),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The attributes of `ino`, through an open descriptor when there is
    /// one (an unlinked file has no path).
    pub(super) fn attr_of(&self, ino: u64) -> Result<FileAttr, Errno> {
        let meta = match self.files.values().find(|f| f.ino == ino) {
            Some(f) => f.file.metadata(),
            None => std::fs::symlink_metadata(self.full(&self.path_of(ino)?)),
        }
        .map_err(Errno::from)?;
        Ok(self.attr(ino, &meta))
    }

    /// Looks `rel` up in the backing directory: its inode and attributes.
    pub(super) fn entry(&mut self, rel: PathBuf) -> Result<(u64, FileAttr), Errno> {
        let meta = std::fs::symlink_metadata(self.full(&rel)).map_err(Errno::from)?;
        let ino = self.intern(&meta, rel);
        Ok((ino, self.attr(ino, &meta)))
    }

    pub(super) fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path_of(parent)?.join(name))
    }

    /// A descriptor of the backing file of `ino` for writing back pages:
    /// an open one, else the file at its path.
    pub(super) fn backing_file(&self, ino: u64) -> io::Result<File> {
        if let Some(f) = self.files.values().find(|f| f.ino == ino) {
            return f.file.try_clone();
        }
        let rel = self
            .path_of(ino)
            .map_err(|_| io::Error::from(io::ErrorKind::NotFound))?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.full(&rel))
    }

    /// Makes `ino`'s dirty pages durable (an fsync of it).
    pub(super) fn persist(&mut self, ino: u64) -> io::Result<()> {
        let Some(dirty) = self.dirty.get(&ino) else {
            return Ok(());
        };
        let file = self.backing_file(ino)?;
        dirty.persist(&file)?;
        self.dirty.remove(&ino);
        Ok(())
    }

    /// Counts a sync point; returns true when the power fails instead.
    pub(super) fn sync_point(&mut self, what: String) -> bool {
        self.syncs += 1;
        let n = self.syncs;
        if self.log.len() < MAX_LOG {
            self.log.push(what.clone());
        }
        match self.armed {
            Some((at, loss)) if at == n => {
                self.power_loss(loss, Some((n, what)));
                true
            }
            _ => false,
        }
    }

    /// The power fails: the victim is killed, the dirty pages are lost
    /// (or, with [`Loss::KeepSome`], a seeded random part of them is
    /// written back), and every later operation fails with EIO, so the
    /// backing directory keeps exactly what the power loss left.
    pub(super) fn power_loss(&mut self, loss: Loss, at: Option<(u64, String)>) -> CrashReport {
        if let Some(report) = &self.crash {
            return report.clone();
        }
        if let Some(pid) = self
            .victim
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let mut report = CrashReport {
            sync_point: at.as_ref().map(|(n, _)| *n),
            instead_of: at.map(|(_, what)| what).unwrap_or_default(),
            loss,
            files: self.dirty.len(),
            dirty_pages: 0,
            kept_pages: 0,
        };
        let mut rng = match loss {
            Loss::KeepSome { seed, .. } => seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            Loss::All => 1,
        };
        let mut inos: Vec<u64> = self.dirty.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let dirty = &self.dirty[&ino];
            report.dirty_pages += dirty.pages() as u64;
            let Loss::KeepSome { percent, .. } = loss else {
                continue;
            };
            // An unlinked file's pages are nowhere to be found after a
            // reboot either.
            let Some(file) = self
                .path_of(ino)
                .ok()
                .and_then(|_| self.backing_file(ino).ok())
            else {
                continue;
            };
            let kept = dirty.persist_some(&file, |_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % 100 < u64::from(percent)
            });
            report.kept_pages += kept.unwrap_or(0);
        }
        self.dirty.clear();
        self.armed = None;
        self.crash = Some(report.clone());
        report
    }
}

pub(super) fn kind(meta: &Metadata) -> FileType {
    let t = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

/// `ino` loses its name `rel` (unlinked, or replaced by a rename); an
/// unlinked file that nobody has open loses its dirty pages too.
pub(super) fn forget_path(i: &mut Inner, ino: u64, rel: &Path) {
    if let Some(node) = i.nodes.get_mut(&ino)
        && node.path.as_deref() == Some(rel)
    {
        node.path = None;
    }
    if !i.files.values().any(|f| f.ino == ino) {
        i.dirty.remove(&ino);
    }
}

pub(super) fn add_file(i: &mut Inner, ino: u64, file: File, flags: i32) -> u64 {
    let sync_flags = (rustix::fs::OFlags::SYNC | rustix::fs::OFlags::DSYNC).bits() as i32;
    let fh = i.next_fh;
    i.next_fh += 1;
    i.files.insert(
        fh,
        OpenFile {
            ino,
            file,
            sync_writes: flags & sync_flags != 0,
        },
    );
    fh
}

/// The path of `ino` for the sync log.
pub(super) fn describe(i: &Inner, ino: u64) -> String {
    match i.nodes.get(&ino).and_then(|n| n.path.as_ref()) {
        Some(p) if p.as_os_str().is_empty() => "/".into(),
        Some(p) => p.display().to_string(),
        None => format!("(unlinked inode {ino})"),
    }
}
