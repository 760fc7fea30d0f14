//! The system calls on the target directory: opening the target and the
//! directories beneath it, making directories, symlinks, files, hard
//! links and special files, looking at what is at a name, opening a file
//! already there for reading (`if-changed`, `--verify`), writing a file's
//! bytes (long zero runs left as holes), giving an entry its owner,
//! extended attributes, mode and times ([`Meta`]'s calls), and listing a
//! directory, making it writable and removing entries for `--delete`.
//! Below the target, every call names one entry relative to a directory
//! descriptor, or acts on a descriptor restore opened itself (see the
//! parent module's notes on staying inside the target). The other modules
//! decide what to do; the one call they make on the target themselves is
//! reading a file opened here ([`open_to_read`]) to compare it with the
//! snapshot (`verify`'s comparisons, which `file`'s `if-changed` shares).

use std::ffi::{OsStr, OsString};
use std::fs::DirBuilder;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use ringvault_common::tree::{Entry, EntryKind};
use rustix::fs::{
    AtFlags, CWD, FileType, Mode, Nsecs, OFlags, RawMode, Stat, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;

use super::metadata::Meta;
use super::{Action, How, Overwrite};

/// Opens the target (the one path the kernel resolves, symlinks and all:
/// the user named it), first making it, with its missing parents, unless
/// this is a dry run; `None` in a dry run when it does not exist.
pub(super) fn open_target(target: &Path, dry_run: bool) -> anyhow::Result<Option<OwnedFd>> {
    if !dry_run {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(target)
            .with_context(|| format!("creating {}", target.display()))?;
    }
    match rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) if dry_run => Ok(None),
        Err(e) => {
            Err(std::io::Error::from(e)).with_context(|| format!("opening {}", target.display()))
        }
    }
}

/// Opens the target for a pass after the restore (following the path the
/// user gave, as the restore does), making nothing.
///
/// # Errors
/// When it cannot be opened as a directory.
pub(super) fn open_existing(target: &Path) -> anyhow::Result<OwnedFd> {
    rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("opening {}", target.display()))
}

/// Opens the directory `names` leads to from `root`, one component at a
/// time, following no symlink.
///
/// # Errors
/// When a component is missing, not a directory, or a symlink.
pub(super) fn open_beneath<'a>(
    root: BorrowedFd<'_>,
    names: impl IntoIterator<Item = &'a [u8]>,
) -> std::io::Result<OwnedFd> {
    let mut fd: Option<OwnedFd> = None;
    for name in names {
        let at = fd.as_ref().map_or(root, |f| f.as_fd());
        fd = Some(open_dir(at, OsStr::from_bytes(name))?);
    }
    match fd {
        Some(fd) => Ok(fd),
        None => root.try_clone_to_owned(),
    }
}

/// Opens directory `name` in `parent`, not following a symlink.
///
/// # Errors
/// The `openat` error: `ENOTDIR` or `ELOOP` when `name` is not a
/// directory or is a symlink.
pub(super) fn open_dir(parent: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Makes directory `name` in `parent`; an existing directory is fine,
/// anything else there (a file, a symlink) is an error and is left alone.
/// Returns whether it made one.
pub(super) fn make_dir(parent: BorrowedFd<'_>, name: &OsStr) -> anyhow::Result<bool> {
    match rustix::fs::mkdirat(parent, name, Mode::RWXU) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => {
            let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(std::io::Error::from)
                .context("looking at what is there")?;
            if FileType::from_raw_mode(st.st_mode).is_dir() {
                Ok(false)
            } else {
                bail!("exists and is not a directory (left alone, never followed)")
            }
        }
        Err(e) => Err(std::io::Error::from(e)).context("creating the directory"),
    }
}

/// Places symlink `name` in `dir` (`None`: a directory a dry run would
/// make), pointing at `target`, with its mtime, as `how` says: made when
/// the name is free; kept when the same symlink is there (its mtime set if
/// it has one link); otherwise an error, but for `if-changed`, which
/// replaces a non-directory, and `never`, which skips.
///
/// # Errors
/// When what is there cannot be looked at or may not be replaced, or the
/// symlink cannot be made.
pub(super) fn place_symlink(
    dir: Option<BorrowedFd<'_>>,
    name: &OsStr,
    target: &[u8],
    mtime_ns: i64,
    how: How,
) -> anyhow::Result<Action> {
    let Some(dir) = dir else {
        return Ok(Action::New);
    };
    let Some(st) = look(dir, name)? else {
        if !how.dry_run {
            make_symlink(dir, name, target, mtime_ns)?;
        }
        return Ok(Action::New);
    };
    if how.overwrite == Overwrite::Never {
        return Ok(Action::Skipped);
    }
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind.is_symlink()
        && rustix::fs::readlinkat(dir, name, Vec::new()).is_ok_and(|t| t.as_bytes() == target)
    {
        if !how.dry_run && st.st_nlink == 1 && stat_mtime_ns(&st) != i128::from(mtime_ns) {
            rustix::fs::utimensat(dir, name, &timestamps(mtime_ns), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(std::io::Error::from)
                .context("setting the symlink's mtime")?;
        }
        return Ok(Action::Unchanged);
    }
    if kind.is_dir() {
        bail!("making the symlink: a directory is in the way (left alone)");
    }
    if how.overwrite == Overwrite::Always {
        bail!(
            "making the symlink: something else is already there (left alone; \
             `--overwrite if-changed` replaces it)"
        );
    }
    if !how.dry_run {
        remove_file(dir, name).context("removing what is in the way")?;
        make_symlink(dir, name, target, mtime_ns)?;
    }
    Ok(Action::Replaced)
}

/// Places hard link `to` in `to_dir` to the file `from` in `from_dir`
/// (both beneath the target), as `how` says: made when the name is free;
/// kept when it already names `from`'s inode; otherwise replaced, but for
/// a directory there (an error) and `never` (skipped). A dry run only
/// decides. Neither name is followed: a symlink put in `from`'s place is
/// linked itself.
///
/// # Errors
/// When what is at either name cannot be looked at, `from` is gone, a
/// directory is in the way, or what is there cannot be removed or the
/// link made.
pub(super) fn place_link(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
    how: How,
) -> anyhow::Result<Action> {
    let action = match look(to_dir, to)? {
        None => Action::New,
        Some(_) if how.overwrite == Overwrite::Never => return Ok(Action::Skipped),
        Some(st) if FileType::from_raw_mode(st.st_mode).is_dir() => {
            bail!("a directory is in the way (left alone)")
        }
        Some(st) => {
            let first = look(from_dir, from)?.ok_or_else(|| anyhow!("its first link is gone"))?;
            if (st.st_dev, st.st_ino) == (first.st_dev, first.st_ino) {
                return Ok(Action::Unchanged);
            }
            Action::Replaced
        }
    };
    if how.dry_run {
        return Ok(action);
    }
    if action == Action::Replaced {
        remove_file(to_dir, to).context("removing what is in the way")?;
    }
    // No flags: a symlink put in the first's place is linked, not followed.
    rustix::fs::linkat(from_dir, from, to_dir, to, AtFlags::empty())
        .map_err(std::io::Error::from)
        .context("making the hard link")?;
    Ok(action)
}

/// Removes `name` from `dir`, which is not a directory (a symlink goes
/// itself, never followed); already gone counts as removed.
///
/// # Errors
/// The `unlinkat` error but `ENOENT` (`EISDIR` or `EPERM` for a
/// directory).
pub(super) fn remove_file(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What is at `name` in `dir`, not following a symlink; `None` when
/// nothing is.
///
/// # Errors
/// The `fstatat` error but `ENOENT`.
pub(super) fn look(dir: BorrowedFd<'_>, name: &OsStr) -> anyhow::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(std::io::Error::from(e)).context("looking at what is there"),
    }
}

/// `st`'s mtime, ns since the epoch (wide: the platform's field types vary).
pub(super) fn stat_mtime_ns(st: &Stat) -> i128 {
    i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec)
}

/// Opens `name` in `dir` for reading, not following a symlink and not
/// blocking: should a FIFO be at the name, opening it neither waits for a
/// writer nor reads from one ([`fstat`] tells what was opened).
///
/// # Errors
/// The `openat` error: `ELOOP` when `name` is a symlink.
pub(super) fn open_to_read(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<std::fs::File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(std::fs::File::from(fd))
}

/// What `fd`, a descriptor restore opened, is.
///
/// # Errors
/// The `fstat` error.
pub(super) fn fstat(fd: BorrowedFd<'_>) -> std::io::Result<Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

/// Makes symlink `name` in `dir`, pointing at `target`, with its mtime.
fn make_symlink(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    target: &[u8],
    mtime_ns: i64,
) -> anyhow::Result<()> {
    rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name)
        .map_err(std::io::Error::from)
        .context("making the symlink")?;
    rustix::fs::utimensat(dir, name, &timestamps(mtime_ns), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(std::io::Error::from)
        .context("setting the symlink's mtime")?;
    Ok(())
}

/// Makes file `name` in `dir` afresh, for writing: a non-directory already
/// there is unlinked first, never opened, since it may be a hard link to a
/// file outside the target or a symlink to one. With `free` (the name was
/// just seen free), the file is made without looking first; should
/// something have taken the name since, making it fails.
pub(super) fn create_file(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    free: bool,
) -> anyhow::Result<std::fs::File> {
    let seen = if free {
        Err(Errno::NOENT)
    } else {
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
    };
    match seen {
        Ok(st) if FileType::from_raw_mode(st.st_mode).is_dir() => {
            bail!("a directory is in the way (left alone)")
        }
        Ok(_) => remove_file(dir, name).context("removing what is in the way")?,
        Err(Errno::NOENT) => {}
        Err(e) => return Err(std::io::Error::from(e)).context("looking at what is there"),
    }
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )
    .map_err(std::io::Error::from)
    .context("creating the file")?;
    Ok(std::fs::File::from(fd))
}

/// Zero runs at least this long (bytes) are left as holes rather than
/// written, so sparse files stay sparse (and long zero runs in dense files
/// become holes, as with restic's `--sparse` and GNU cp's default).
const HOLE_BYTES: usize = 64 * 1024;

/// Writes `data` at `offset` of a freshly created file, skipping zero runs
/// of at least [`HOLE_BYTES`] that start on a [`HOLE_BYTES`] boundary of
/// the data. Returns whether the file now reaches `offset + data.len()`
/// (false when the data ends in a skipped run and the file may be shorter).
///
/// # Errors
/// The write's I/O error.
pub(super) fn write_sparse(
    file: &std::fs::File,
    data: &[u8],
    offset: u64,
) -> std::io::Result<bool> {
    let mut start = 0; // first byte not yet written
    let mut at = 0;
    while at < data.len() {
        let end = (at + HOLE_BYTES).min(data.len());
        if end - at == HOLE_BYTES && data[at..end].iter().all(|&b| b == 0) {
            file.write_all_at(&data[start..at], offset + start as u64)?;
            start = end;
        }
        at = end;
    }
    file.write_all_at(&data[start..], offset + start as u64)?;
    Ok(start < data.len() || data.is_empty() && offset == 0)
}

/// Gives `file`, just written, its length, `len` bytes: needed when its
/// last bytes were a hole that [`write_sparse`] skipped.
///
/// # Errors
/// The `ftruncate` error.
pub(super) fn set_length(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    file.set_len(len)
}

/// Access and modification times both at `mtime_ns` (ns since the epoch).
fn timestamps(mtime_ns: i64) -> Timestamps {
    let at = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        // In 0..1e9, which fits every platform's type.
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as Nsecs,
    };
    Timestamps {
        last_access: at,
        last_modification: at,
    }
}

/// The calls that give an entry its owner, extended attributes, mode and
/// times, and make special files; what to give, and the warnings, are
/// [`Meta`]'s own (see the `metadata` module).
impl Meta {
    /// Gives a file or directory restore opened itself (`fd`) `entry`'s
    /// owner, extended attributes, mode and mtime, in that order.
    ///
    /// # Errors
    /// When the mode or mtime cannot be set, or the owner for a reason
    /// other than the target refusing owners.
    pub(super) fn apply(&self, fd: BorrowedFd<'_>, entry: &Entry) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.owner(entry)
            && let Err(e) = rustix::fs::fchown(fd, Some(uid), Some(gid))
        {
            self.owner_failed(e)?;
        }
        self.set_xattrs(entry, |name, value| {
            rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty())
        });
        // Only permission bits go in: 0o7777 fits in every platform's mode_t.
        set_mode(fd, (entry.mode & 0o7777) as RawMode).context("setting the mode")?;
        set_mtime(fd, entry.mtime_ns).context("setting the mtime")?;
        Ok(())
    }

    /// Gives the symlink `name` in `dir`, just made with its mtime, its
    /// owner and extended attributes (a symlink has no mode of its own).
    /// Neither call follows the link.
    ///
    /// # Errors
    /// As [`Meta::apply`].
    pub(super) fn apply_symlink(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        entry: &Entry,
    ) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.owner(entry)
            && let Err(e) =
                rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
        {
            self.owner_failed(e)?;
        }
        if self.xattrs && !entry.xattrs.is_empty() {
            // The directory through its descriptor (no path outside the
            // target is resolved), the link itself not followed.
            let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
            path.extend_from_slice(name.as_bytes());
            let path = OsStr::from_bytes(&path);
            self.set_xattrs(entry, |n, v| {
                rustix::fs::lsetxattr(path, n, v, XattrFlags::empty())
            });
        }
        Ok(())
    }

    /// Makes the special file `entry` (a FIFO or a device node) as `name`
    /// in `dir` (`None`: a directory a dry run would make), as `how` says,
    /// with its owner, extended attributes, mode and mtime. `Ok(None)` for
    /// what a restore skips: sockets, and devices when not root (one
    /// warning).
    ///
    /// # Errors
    /// When what is there cannot be looked at or replaced, or the file
    /// cannot be made or given its metadata.
    pub(super) fn place_special(
        &self,
        dir: Option<BorrowedFd<'_>>,
        name: &OsStr,
        entry: &Entry,
        how: How,
    ) -> anyhow::Result<Option<Action>> {
        let file_type = match entry.kind {
            EntryKind::Fifo => FileType::Fifo,
            EntryKind::CharDevice | EntryKind::BlockDevice if !self.devices => {
                self.warn_once("devices".into(), || {
                    "device files skipped: making them needs root".into()
                });
                return Ok(None);
            }
            EntryKind::CharDevice => FileType::CharacterDevice,
            EntryKind::BlockDevice => FileType::BlockDevice,
            _ => return Ok(None),
        };
        let Some(dir) = dir else {
            return Ok(Some(Action::New));
        };
        let action = match look(dir, name)? {
            None => Action::New,
            Some(_) if how.overwrite == Overwrite::Never => return Ok(Some(Action::Skipped)),
            Some(st) if FileType::from_raw_mode(st.st_mode).is_dir() => {
                bail!("a directory is in the way (left alone)")
            }
            Some(_) => Action::Replaced,
        };
        if how.dry_run {
            return Ok(Some(action));
        }
        if action == Action::Replaced {
            remove_file(dir, name).context("removing what is in the way")?;
        }
        let rdev = if file_type == FileType::Fifo {
            0
        } else {
            entry.rdev
        };
        rustix::fs::mknodat(dir, name, file_type, Mode::RUSR | Mode::WUSR, rdev as _)
            .map_err(std::io::Error::from)
            .context("making the special file")?;
        self.apply_special(dir, name, entry, file_type)?;
        Ok(Some(action))
    }

    /// Gives the special file `name` in `dir`, just made, `entry`'s
    /// metadata through an `O_PATH` descriptor (opening a device could
    /// act on it) and `/proc/self/fd`, which names that very inode.
    fn apply_special(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        entry: &Entry,
        file_type: FileType,
    ) -> anyhow::Result<()> {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .context("opening what was made")?;
        let st = rustix::fs::fstat(&fd)
            .map_err(std::io::Error::from)
            .context("looking at what was made")?;
        if FileType::from_raw_mode(st.st_mode) != file_type {
            bail!("replaced while being made (left alone)");
        }
        if let Some((uid, gid)) = self.owner(entry)
            && let Err(e) = rustix::fs::chownat(&fd, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH)
        {
            self.owner_failed(e)?;
        }
        let path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
        self.set_xattrs(entry, |n, v| {
            rustix::fs::setxattr(path.as_str(), n, v, XattrFlags::empty())
        });
        rustix::fs::chmod(
            path.as_str(),
            Mode::from_raw_mode((entry.mode & 0o7777) as RawMode),
        )
        .map_err(std::io::Error::from)
        .context("setting the mode")?;
        rustix::fs::utimensat(
            CWD,
            path.as_str(),
            &timestamps(entry.mtime_ns),
            AtFlags::empty(),
        )
        .map_err(std::io::Error::from)
        .context("setting the mtime")?;
        Ok(())
    }
}

/// The names in directory `dir`, but `.` and `..`.
///
/// # Errors
/// When it cannot be read.
pub(super) fn names(dir: BorrowedFd<'_>) -> std::io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(out)
}

/// Gives directory `dir` owner write and search permission when it lacks
/// them (its entries are about to be removed); returns its mode before,
/// when it changed it.
pub(super) fn writable(dir: BorrowedFd<'_>) -> Option<RawMode> {
    let st = rustix::fs::fstat(dir).ok()?;
    let mode = st.st_mode & 0o7777;
    if mode & 0o300 == 0o300 {
        return None;
    }
    rustix::fs::fchmod(dir, Mode::from_raw_mode(mode | 0o300)).ok()?;
    Some(mode)
}

/// Gives what `fd` (a descriptor restore opened) is permission bits
/// `mode`.
///
/// # Errors
/// The `fchmod` error.
pub(super) fn set_mode(fd: BorrowedFd<'_>, mode: RawMode) -> std::io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?)
}

/// Gives what `fd` (a descriptor restore opened) is access and
/// modification times `mtime_ns` (ns since the epoch).
///
/// # Errors
/// The `futimens` error.
pub(super) fn set_mtime(fd: BorrowedFd<'_>, mtime_ns: i64) -> std::io::Result<()> {
    Ok(rustix::fs::futimens(fd, &timestamps(mtime_ns))?)
}

/// Directories open at once while one is removed: a directory nested
/// deeper below the removed one is left, with an error.
const MAX_REMOVE_DEPTH: usize = 256;

/// Removing entries beneath the target for `--delete`: never following a
/// symlink (the link goes), never leaving the target's file system, a
/// directory made writable before it is emptied.
#[derive(Clone, Copy)]
pub(super) struct Removal {
    /// The target's device: removal stays on it.
    pub(super) dev: u64,
    /// Remove nothing, only record what would go.
    pub(super) dry_run: bool,
}

impl Removal {
    /// Removes `name` in `parent` (at `path`), a directory with everything
    /// below it, recording each entry removed (in a dry run, each that
    /// would be), children before their directory.
    ///
    /// # Errors
    /// The first entry that could not be removed, with why (what could be
    /// is removed and recorded): also a directory on another file system
    /// than `dev`, or nested more than [`MAX_REMOVE_DEPTH`] deep.
    pub(super) fn remove_tree(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: PathBuf,
        removed: &mut Vec<PathBuf>,
    ) -> Result<(), (PathBuf, String)> {
        let fail = |path: &Path, what: &str, e: Errno| {
            (
                path.to_owned(),
                format!("{what}: {}", std::io::Error::from(e)),
            )
        };
        let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(fail(&path, "looking at it", e)),
        };
        if !FileType::from_raw_mode(st.st_mode).is_dir() {
            if !self.dry_run
                && let Err(e) = remove_file(parent, name)
            {
                return Err((path, format!("removing it: {e}")));
            }
            removed.push(path);
            return Ok(());
        }
        // A directory: emptied depth first, one open descriptor per level.
        let mut stack = vec![self.frame(parent, name.to_owned(), path, removed)?];
        while let Some(depth) = stack.len().checked_sub(1) {
            let frame = &mut stack[depth];
            if let Some(sub) = frame.subdirs.pop() {
                let path = frame.path.join(&sub);
                if depth + 1 >= MAX_REMOVE_DEPTH {
                    return Err((
                        path,
                        format!("nested more than {MAX_REMOVE_DEPTH} directories deep (left)"),
                    ));
                }
                let child = self.frame(frame.fd.as_fd(), sub, path, removed)?;
                stack.push(child);
                continue;
            }
            let Some(done) = stack.pop() else { break };
            let at = stack.last().map_or(parent, |p| p.fd.as_fd());
            if !self.dry_run {
                drop(done.fd);
                rustix::fs::unlinkat(at, &done.name, AtFlags::REMOVEDIR)
                    .map_err(|e| fail(&done.path, "removing the directory", e))?;
            }
            removed.push(done.path);
        }
        Ok(())
    }

    /// Opens directory `name` in `parent` to empty it: removes (or, in a
    /// dry run, only records) what is not a directory in it, recording
    /// each in `removed`, and lists the directories.
    fn frame(
        &self,
        parent: BorrowedFd<'_>,
        name: OsString,
        path: PathBuf,
        removed: &mut Vec<PathBuf>,
    ) -> Result<Frame, (PathBuf, String)> {
        let fail =
            |path: &Path, what: &str, e: std::io::Error| (path.to_owned(), format!("{what}: {e}"));
        let fd = open_dir(parent, &name).map_err(|e| fail(&path, "opening the directory", e))?;
        let st = fstat(fd.as_fd()).map_err(|e| fail(&path, "looking at it", e))?;
        if st.st_dev != self.dev {
            return Err((
                path,
                "on another file system than the target (left alone)".into(),
            ));
        }
        if !self.dry_run {
            writable(fd.as_fd());
        }
        let mut subdirs = Vec::new();
        for sub in names(fd.as_fd()).map_err(|e| fail(&path, "listing it", e))? {
            let sub_path = path.join(&sub);
            let st = match rustix::fs::statat(&fd, &sub, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(fail(&sub_path, "looking at it", e.into())),
            };
            if FileType::from_raw_mode(st.st_mode).is_dir() {
                subdirs.push(sub);
                continue;
            }
            if !self.dry_run
                && let Err(e) = remove_file(fd.as_fd(), &sub)
            {
                return Err(fail(&sub_path, "removing it", e));
            }
            removed.push(sub_path);
        }
        Ok(Frame {
            fd,
            name,
            path,
            subdirs,
        })
    }
}

/// A directory being emptied.
struct Frame {
    fd: OwnedFd,
    /// Its name in its parent.
    name: OsString,
    path: PathBuf,
    /// Its subdirectories still to empty and remove.
    subdirs: Vec<OsString>,
}

/// A directory opened for the unit tests of `restore`'s modules.
#[cfg(test)]
pub(super) fn dir_fd(path: &Path) -> OwnedFd {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn write_sparse_says_when_a_trailing_hole_leaves_the_file_short() {
        let tmp = tempfile::tempdir().unwrap();
        let cases: [(Vec<u8>, bool); 4] = [
            (Vec::new(), true),
            (b"data".to_vec(), true),
            ([vec![1u8; 10], vec![0u8; HOLE_BYTES * 2]].concat(), true),
            (
                [vec![1u8; HOLE_BYTES], vec![0u8; HOLE_BYTES]].concat(),
                false,
            ),
        ];
        for (i, (data, sized)) in cases.iter().enumerate() {
            let path = tmp.path().join(i.to_string());
            let file = std::fs::File::create(&path).unwrap();
            assert_eq!(write_sparse(&file, data, 0).unwrap(), *sized, "case {i}");
            let len = file.metadata().unwrap().len();
            assert_eq!(len == data.len() as u64, *sized, "case {i}: length {len}");
        }
    }

    #[test]
    fn a_file_replaces_links_and_never_writes_through_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (outside, target) = (tmp.path().join("outside"), tmp.path().join("target"));
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(outside.join("hard"), b"outside").unwrap();
        std::fs::hard_link(outside.join("hard"), target.join("hard")).unwrap();
        std::os::unix::fs::symlink(outside.join("soft"), target.join("soft")).unwrap();
        let fd = dir_fd(&target);
        for name in ["hard", "soft"] {
            let f = create_file(fd.as_fd(), OsStr::new(name), false).unwrap();
            f.write_all_at(b"new", 0).unwrap();
            assert_eq!(f.metadata().unwrap().nlink(), 1);
            assert_eq!(std::fs::read(target.join(name)).unwrap(), b"new");
        }
        assert_eq!(std::fs::read(outside.join("hard")).unwrap(), b"outside");
        assert!(!outside.join("soft").exists());
        std::fs::create_dir(target.join("dir")).unwrap();
        let err = create_file(fd.as_fd(), OsStr::new("dir"), false).unwrap_err();
        assert!(
            format!("{err:#}").contains("directory is in the way"),
            "{err:#}"
        );
    }

    #[test]
    fn directories_are_never_reached_through_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let (outside, target) = (tmp.path().join("outside"), tmp.path().join("target"));
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(target.join("real")).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("real/evil")).unwrap();
        let fd = dir_fd(&target);
        let err = make_dir(
            open_beneath(fd.as_fd(), [&b"real"[..]]).unwrap().as_fd(),
            OsStr::new("evil"),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
        assert!(open_beneath(fd.as_fd(), [&b"real"[..], b"evil"]).is_err());
        assert!(!make_dir(fd.as_fd(), OsStr::new("real")).unwrap());
        assert!(make_dir(fd.as_fd(), OsStr::new("new")).unwrap());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_is_kept_replaced_or_refused_by_the_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let (outside, target) = (tmp.path().join("outside"), tmp.path().join("target"));
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(target.join("dir")).unwrap();
        std::fs::write(outside.join("secret"), b"outside").unwrap();
        let fd = dir_fd(&target);
        let how = |overwrite, dry_run| How {
            overwrite,
            dry_run,
            list: dry_run,
        };
        let place = |name: &str, how| {
            place_symlink(
                Some(fd.as_fd()),
                OsStr::new(name),
                b"to",
                5_000_000_000,
                how,
            )
        };
        let link = |name: &str| std::fs::read_link(target.join(name)).unwrap();
        assert_eq!(
            place("l", how(Overwrite::Always, true)).unwrap(),
            Action::New
        );
        assert!(
            std::fs::symlink_metadata(target.join("l")).is_err(),
            "dry run"
        );
        assert_eq!(
            place("l", how(Overwrite::Always, false)).unwrap(),
            Action::New
        );
        assert_eq!(link("l"), Path::new("to"));
        for overwrite in [Overwrite::Always, Overwrite::IfChanged] {
            assert_eq!(
                place("l", how(overwrite, false)).unwrap(),
                Action::Unchanged
            );
        }
        std::os::unix::fs::symlink(outside.join("secret"), target.join("other")).unwrap();
        let e = place("other", how(Overwrite::Always, false)).unwrap_err();
        assert!(format!("{e:#}").contains("making the symlink"), "{e:#}");
        let never = place("other", how(Overwrite::Never, false)).unwrap();
        assert_eq!(never, Action::Skipped);
        let dry = place("other", how(Overwrite::IfChanged, true)).unwrap();
        assert_eq!(dry, Action::Replaced);
        assert_eq!(link("other"), outside.join("secret"), "dry run");
        let replaced = place("other", how(Overwrite::IfChanged, false)).unwrap();
        assert_eq!(replaced, Action::Replaced);
        assert_eq!(link("other"), Path::new("to"));
        assert!(place("dir", how(Overwrite::IfChanged, false)).is_err());
        assert!(target.join("dir").is_dir());
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"outside");
    }

    #[test]
    fn a_tree_goes_whole_and_a_symlink_in_it_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), b"p").unwrap();
        let t = dir.path();
        std::fs::create_dir_all(t.join("x/y/z")).unwrap();
        std::fs::write(t.join("x/f"), b"f").unwrap();
        std::fs::write(t.join("x/y/z/g"), b"g").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.join("x/y/out")).unwrap();
        // Not writable: removed all the same.
        std::fs::set_permissions(t.join("x/y"), std::fs::Permissions::from_mode(0o555)).unwrap();
        let root = open_existing(t).unwrap();
        let dev = fstat(root.as_fd()).unwrap().st_dev;
        let removal = |dry_run| Removal { dev, dry_run };

        let mut listed = Vec::new();
        removal(true)
            .remove_tree(root.as_fd(), OsStr::new("x"), t.join("x"), &mut listed)
            .unwrap();
        assert!(t.join("x/y/z/g").exists(), "a dry run removed something");
        let mut removed = Vec::new();
        removal(false)
            .remove_tree(root.as_fd(), OsStr::new("x"), t.join("x"), &mut removed)
            .unwrap();
        assert!(!t.join("x").exists());
        assert_eq!(listed, removed);
        let mut rel: Vec<String> = removed
            .iter()
            .map(|p| p.strip_prefix(t).unwrap().to_str().unwrap().to_owned())
            .collect();
        // Children before their directory.
        assert_eq!(rel.last().map(String::as_str), Some("x"));
        rel.sort();
        assert_eq!(rel, ["x", "x/f", "x/y", "x/y/out", "x/y/z", "x/y/z/g"]);
        assert_eq!(
            std::fs::read(outside.path().join("precious")).unwrap(),
            b"p"
        );
    }

    #[test]
    fn a_hard_link_is_kept_replaced_or_skipped_by_the_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        std::fs::write(t.join("first"), b"first").unwrap();
        std::fs::write(t.join("other"), b"other").unwrap();
        std::fs::create_dir(t.join("dir")).unwrap();
        let fd = dir_fd(t);
        let how = |overwrite, dry_run| How {
            overwrite,
            dry_run,
            list: dry_run,
        };
        let place = |to: &str, how| {
            place_link(
                fd.as_fd(),
                OsStr::new("first"),
                fd.as_fd(),
                OsStr::new(to),
                how,
            )
        };
        let ino = |name: &str| std::fs::symlink_metadata(t.join(name)).unwrap().ino();
        assert_eq!(
            place("new", how(Overwrite::Always, false)).unwrap(),
            Action::New
        );
        assert_eq!(ino("new"), ino("first"));
        assert_eq!(
            place("new", how(Overwrite::Always, false)).unwrap(),
            Action::Unchanged
        );
        assert_eq!(
            place("other", how(Overwrite::Never, false)).unwrap(),
            Action::Skipped
        );
        assert_eq!(
            place("other", how(Overwrite::IfChanged, true)).unwrap(),
            Action::Replaced
        );
        assert_eq!(std::fs::read(t.join("other")).unwrap(), b"other", "dry run");
        assert_eq!(
            place("other", how(Overwrite::Always, false)).unwrap(),
            Action::Replaced
        );
        assert_eq!(ino("other"), ino("first"));
        let e = place("dir", how(Overwrite::IfChanged, false)).unwrap_err();
        assert!(
            format!("{e:#}").contains("directory is in the way"),
            "{e:#}"
        );
        assert!(t.join("dir").is_dir());
        remove_file(fd.as_fd(), OsStr::new("gone")).unwrap();
    }
}
