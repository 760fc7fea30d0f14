//! The pass-through file system fuser serves: metadata goes to the backing
//! directory at once, file data waits in [`Dirty`] buffers until an fsync
//! or fdatasync of that file. Every fsync, fdatasync and directory fsync is
//! a numbered sync point; once the power has failed every request but a
//! release fails with EIO. The state lives in [`super::state`].

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, MutexGuard};
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use super::pages::Dirty;
use super::state::{Inner, State, TTL, add_file, describe, forget_path, kind, lock};

/// The file system handed to fuser; the control side keeps another handle
/// on the same [`State`].
pub(super) struct LazyFs(pub(super) Arc<State>);

impl LazyFs {
    /// The state, or EIO once the power has failed.
    fn live(&self) -> Result<MutexGuard<'_, Inner>, Errno> {
        let inner = lock(&self.0.inner);
        if inner.crash.is_some() {
            return Err(Errno::EIO);
        }
        Ok(inner)
    }

    /// Counts a sync point in `inner`; after a power loss wakes the
    /// waiters and fails with EIO.
    fn sync_point(&self, inner: &mut Inner, what: String) -> Result<(), Errno> {
        if inner.sync_point(what) {
            self.0.crashed.notify_all();
            return Err(Errno::EIO);
        }
        Ok(())
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.live().and_then(|mut i| {
            let rel = i.child(parent.0, name)?;
            i.entry(rel)
        });
        match r {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self
            .live()
            .and_then(|i| match fh.and_then(|fh| i.files.get(&fh.0)) {
                Some(f) => Ok(i.attr(ino.0, &f.file.metadata().map_err(Errno::from)?)),
                None => i.attr_of(ino.0),
            });
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.live().and_then(|mut i| {
            let ino = ino.0;
            let full = i.path_of(ino).map(|rel| i.full(&rel));
            if let Some(mode) = mode {
                std::fs::set_permissions(full.clone()?, PermissionsExt::from_mode(mode & 0o7777))
                    .map_err(Errno::from)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(full.clone()?, uid, gid).map_err(Errno::from)?;
            }
            if let Some(len) = size {
                // Metadata: the backing file takes the new length at once.
                let file = match fh.and_then(|fh| i.files.get(&fh.0)) {
                    Some(f) => f.file.try_clone(),
                    None => i.backing_file(ino),
                }
                .map_err(Errno::from)?;
                file.set_len(len).map_err(Errno::from)?;
                if let Some(d) = i.dirty.get_mut(&ino) {
                    d.truncate(len);
                }
            }
            if atime.is_some() || mtime.is_some() {
                let at = |t: TimeOrNow| match t {
                    TimeOrNow::SpecificTime(t) => t,
                    TimeOrNow::Now => SystemTime::now(),
                };
                let mut times = std::fs::FileTimes::new();
                if let Some(t) = atime {
                    times = times.set_accessed(at(t));
                }
                if let Some(t) = mtime {
                    times = times.set_modified(at(t));
                }
                File::open(full?)
                    .and_then(|f| f.set_times(times))
                    .map_err(Errno::from)?;
            }
            i.attr_of(ino)
        });
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.live().and_then(|i| {
            let full = i.full(&i.path_of(ino.0)?);
            std::fs::read_link(full).map_err(Errno::from)
        });
        match r {
            Ok(target) => {
                use std::os::unix::ffi::OsStrExt;
                reply.data(target.as_os_str().as_bytes());
            }
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.live().and_then(|mut i| {
            let rel = i.child(parent.0, name)?;
            std::fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(i.full(&rel))
                .map_err(Errno::from)?;
            i.entry(rel)
        });
        match r {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.live().and_then(|mut i| {
            let rel = i.child(parent.0, name)?;
            let full = i.full(&rel);
            let meta = std::fs::symlink_metadata(&full).map_err(Errno::from)?;
            std::fs::remove_file(&full).map_err(Errno::from)?;
            if let Some(&ino) = i.ids.get(&(meta.dev(), meta.ino())) {
                forget_path(&mut i, ino, &rel);
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.live().and_then(|mut i| {
            let rel = i.child(parent.0, name)?;
            let full = i.full(&rel);
            let meta = std::fs::symlink_metadata(&full).map_err(Errno::from)?;
            std::fs::remove_dir(&full).map_err(Errno::from)?;
            if let Some(&ino) = i.ids.get(&(meta.dev(), meta.ino())) {
                forget_path(&mut i, ino, &rel);
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.live().and_then(|mut i| {
            let rel = i.child(parent.0, link_name)?;
            std::os::unix::fs::symlink(target, i.full(&rel)).map_err(Errno::from)?;
            i.entry(rel)
        });
        match r {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.live().and_then(|mut i| {
            if !flags.is_empty() {
                // RENAME_NOREPLACE, RENAME_EXCHANGE: not needed so far.
                return Err(Errno::EINVAL);
            }
            let from = i.child(parent.0, name)?;
            let to = i.child(newparent.0, newname)?;
            let replaced = std::fs::symlink_metadata(i.full(&to))
                .ok()
                .and_then(|m| i.ids.get(&(m.dev(), m.ino())).copied());
            std::fs::rename(i.full(&from), i.full(&to)).map_err(Errno::from)?;
            if let Some(gone) = replaced {
                forget_path(&mut i, gone, &to);
            }
            // The moved node and, for a directory, everything under it.
            for node in i.nodes.values_mut() {
                if let Some(p) = &node.path
                    && let Ok(rest) = p.strip_prefix(&from)
                {
                    node.path = Some(if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    });
                }
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.live().and_then(|mut i| {
            let from = i.full(&i.path_of(ino.0)?);
            let rel = i.child(newparent.0, newname)?;
            std::fs::hard_link(from, i.full(&rel)).map_err(Errno::from)?;
            let (ino, attr) = i.entry(rel)?;
            // The first name keeps being the node's path.
            let _ = ino;
            Ok(attr)
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.live().and_then(|mut i| {
            let full = i.full(&i.path_of(ino.0)?);
            // Writable even for a reader where it can be: a later fsync
            // through this descriptor writes the file's pages back. The
            // kernel holds the caller to its access mode.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&full)
                .or_else(|e| match flags.acc_mode() {
                    OpenAccMode::O_RDONLY => File::open(&full),
                    _ => Err(e),
                })
                .map_err(Errno::from)?;
            Ok(add_file(&mut i, ino.0, file, flags.0))
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.live().and_then(|mut i| {
            let rel = i.child(parent.0, name)?;
            let excl = flags & rustix::fs::OFlags::EXCL.bits() as i32 != 0;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .create_new(excl)
                .mode(mode & !umask & 0o7777)
                .open(i.full(&rel))
                .map_err(Errno::from)?;
            let (ino, attr) = i.entry(rel)?;
            let fh = add_file(&mut i, ino, file, flags);
            Ok((attr, fh))
        });
        match r {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.live().and_then(|i| {
            let file = &i.files.get(&fh.0).ok_or(Errno::EBADF)?.file;
            match i.dirty.get(&ino.0) {
                Some(d) => d.read(file, offset, size as usize).map_err(Errno::from),
                None => read_at(file, offset, size as usize).map_err(Errno::from),
            }
        });
        match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.live().and_then(|mut i| {
            let i = &mut *i;
            let open = i.files.get(&fh.0).ok_or(Errno::EBADF)?;
            let sync = open.sync_writes;
            let file = open.file.try_clone().map_err(Errno::from)?;
            let durable = file.metadata().map_err(Errno::from)?.len();
            i.dirty
                .entry(ino.0)
                .or_insert_with(|| Dirty::new(durable))
                .write(&file, offset, data)
                .map_err(Errno::from)?;
            if sync {
                let what = format!("O_SYNC write {}", describe(i, ino.0));
                self.sync_point(i, what)?;
                i.persist(ino.0).map_err(Errno::from)?;
            }
            Ok(data.len() as u32)
        });
        match r {
            Ok(n) => reply.written(n),
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
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut i = lock(&self.0.inner);
        i.files.remove(&fh.0);
        let unlinked = i.nodes.get(&ino.0).is_none_or(|n| n.path.is_none());
        if unlinked && !i.files.values().any(|f| f.ino == ino.0) {
            i.dirty.remove(&ino.0);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.live().and_then(|mut i| {
            let call = if datasync { "fdatasync" } else { "fsync" };
            let what = format!("{call} {}", describe(&i, ino.0));
            self.sync_point(&mut i, what)?;
            i.persist(ino.0).map_err(Errno::from)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self.live().and_then(|mut i| {
            let rel = i.path_of(ino.0)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (ino.0, FileType::Directory, OsString::from("..")),
            ];
            for e in std::fs::read_dir(i.full(&rel)).map_err(Errno::from)? {
                let e = e.map_err(Errno::from)?;
                let name = e.file_name();
                let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                    continue;
                };
                let child = i.intern(&meta, rel.join(&name));
                entries.push((child, kind(&meta), name));
            }
            let fh = i.next_fh;
            i.next_fh += 1;
            i.dirs.insert(fh, entries);
            Ok(fh)
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let i = lock(&self.0.inner);
        let Some(entries) = i.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (n, (ino, kind, name)) in entries.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(*ino), n as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.0.inner).dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory entries are already in the backing directory: the
        // sync point is counted (and may be where the power fails), and
        // there is nothing else to do.
        let r = self.live().and_then(|mut i| {
            let what = format!("fsync dir {}", describe(&i, ino.0));
            self.sync_point(&mut i, what)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = lock(&self.0.inner).root.clone();
        match rustix::fs::statvfs(&root) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }
}

/// Up to `len` bytes of `file` from `offset`, fewer at its end.
fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}
