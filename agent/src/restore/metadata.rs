//! What a restore gives an entry besides its bytes: owner, extended
//! attributes, mode and times; special files; and the order that keeps
//! them all.
//!
//! # Order
//!
//! Content first, then owner, then extended attributes, then mode, then
//! times: a `chown` clears setuid, setgid and file capabilities
//! (`security.capability`), and setting a POSIX ACL rewrites the group
//! bits, so the mode goes on after both and the times last (each of the
//! others may touch them). Directories get theirs after their children,
//! deepest first (see the parent module).
//!
//! # Owner
//!
//! Only as root (as restic and tar): the owner is the user the snapshot
//! names when that name is known here, else the recorded id;
//! `--numeric-owner` takes the ids always. Other users' restores leave
//! owners alone, with no message.
//!
//! # Extended attributes
//!
//! Written as recorded, unless `--no-xattrs`. A file system that refuses
//! one (tmpfs and `user.*`, `trusted.*` when not root, an ACL where ACLs are
//! off) is reported once per cause, a namespace and an errno, as a
//! warning, never as an error per file. Attributes already on a directory
//! found in the target are left there.
//!
//! # Special files
//!
//! FIFOs are made always; character and block devices as root, else
//! skipped with one warning; sockets are skipped (they are made by the
//! program that listens on them, as restic says). A special file's
//! metadata is set through an `O_PATH` descriptor opened on what was just
//! made, never through its name.
//!
//! This module decides what to give (whose owner, which attributes) and
//! gives each warning once; the calls that give it, [`Meta::apply`] and
//! the like, are in the `target` module with the restore's other calls on
//! the target.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use anyhow::Context;
use parking_lot::Mutex;
use ringvault_common::tree::Entry;
use rustix::fs::{Gid, Uid};
use rustix::io::Errno;

use crate::fsmeta::Ids;

/// How owners and extended attributes are restored, and the warnings
/// given so far.
pub(super) struct Meta {
    /// Set owners (the restore runs as root).
    chown: bool,
    /// By the recorded ids, never by name (`--numeric-owner`).
    numeric_owner: bool,
    /// Write extended attributes (not `--no-xattrs`).
    pub(super) xattrs: bool,
    /// Make device nodes (the restore runs as root).
    pub(super) devices: bool,
    ids: Mutex<Ids>,
    /// Warnings given, each once, in order.
    warnings: Mutex<Vec<String>>,
    /// Their causes, so each is given once.
    causes: Mutex<BTreeSet<String>>,
}

impl Meta {
    /// The rules for a restore: `numeric_owner` and `xattrs` as asked,
    /// owners and devices as the process may.
    pub(super) fn new(numeric_owner: bool, xattrs: bool) -> Meta {
        let root = nix::unistd::geteuid().is_root();
        Meta {
            chown: root,
            numeric_owner,
            xattrs,
            devices: root,
            ids: Mutex::new(Ids::default()),
            warnings: Mutex::new(Vec::new()),
            causes: Mutex::new(BTreeSet::new()),
        }
    }

    /// The warnings given, once per cause.
    pub(super) fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }

    /// Gives `text` as a warning unless `cause` was met before.
    pub(super) fn warn_once(&self, cause: String, text: impl FnOnce() -> String) {
        let new = self.causes.lock().insert(cause);
        if new {
            let text = text();
            tracing::warn!("{text}");
            self.warnings.lock().push(text);
        }
    }

    /// The owner and group to give `entry`, `None` when owners are left
    /// alone.
    pub(super) fn owner(&self, entry: &Entry) -> Option<(Uid, Gid)> {
        if !self.chown {
            return None;
        }
        let (mut uid, mut gid) = (entry.uid, entry.gid);
        if !self.numeric_owner {
            let mut ids = self.ids.lock();
            uid = ids.uid(&entry.user).unwrap_or(uid);
            gid = ids.gid(&entry.group).unwrap_or(gid);
        }
        Some((Uid::from_raw(uid), Gid::from_raw(gid)))
    }

    /// What to do about a failed `chown`: a file system or user namespace
    /// that takes no owners (`EPERM`, `EINVAL` for an id it cannot map)
    /// is one warning; anything else an error for the entry.
    pub(super) fn owner_failed(&self, e: Errno) -> anyhow::Result<()> {
        if e == Errno::PERM || e == Errno::INVAL {
            self.warn_once(format!("owner {e:?}"), || {
                format!(
                    "owners not restored where the target refuses them ({})",
                    std::io::Error::from(e)
                )
            });
            Ok(())
        } else {
            Err(std::io::Error::from(e)).context("setting the owner")
        }
    }

    /// Writes `entry`'s extended attributes with `set`, warning once per
    /// namespace and errno about those refused.
    pub(super) fn set_xattrs(
        &self,
        entry: &Entry,
        mut set: impl FnMut(&OsStr, &[u8]) -> rustix::io::Result<()>,
    ) {
        if !self.xattrs {
            return;
        }
        for x in &entry.xattrs {
            if let Err(e) = set(OsStr::from_bytes(&x.name), &x.value) {
                let namespace = x.name.split(|&b| b == b'.').next().unwrap_or_default();
                let namespace = String::from_utf8_lossy(namespace).into_owned();
                self.warn_once(format!("xattr {namespace} {e:?}"), || {
                    format!(
                        "extended attributes {namespace}.* not restored where the target refuses \
                         them ({}; first: {})",
                        std::io::Error::from(e),
                        String::from_utf8_lossy(&x.name)
                    )
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::target::dir_fd;
    use crate::restore::{Action, How, Overwrite};
    use ringvault_common::tree::{Content, EntryKind, Xattr};
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    fn entry(kind: EntryKind, mode: u32) -> Entry {
        Entry {
            name: b"x".to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime_ns: -1_500_000_000_000_000_007,
            ctime_ns: 0,
            size: 0,
            inode: 0,
            device: 0,
            rdev: 0,
            xattrs: vec![],
            content: Content::None,
            user: vec![],
            group: vec![],
            links: 1,
        }
    }

    fn how(overwrite: Overwrite) -> How {
        How {
            overwrite,
            dry_run: false,
            list: false,
        }
    }

    #[test]
    fn a_fifo_is_made_with_its_mode_and_time_and_sockets_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let fd = dir_fd(tmp.path());
        let meta = Meta::new(false, true);
        let fifo = entry(EntryKind::Fifo, 0o10640);
        let made = meta.place_special(
            Some(fd.as_fd()),
            OsStr::new("p"),
            &fifo,
            how(Overwrite::Always),
        );
        assert_eq!(made.unwrap(), Some(Action::New));
        let m = std::fs::symlink_metadata(tmp.path().join("p")).unwrap();
        assert_eq!(m.mode(), 0o10640);
        assert_eq!((m.mtime(), m.mtime_nsec()), (-1_500_000_001, 999_999_993));
        let again = meta.place_special(
            Some(fd.as_fd()),
            OsStr::new("p"),
            &fifo,
            how(Overwrite::Never),
        );
        assert_eq!(again.unwrap(), Some(Action::Skipped));
        let socket = entry(EntryKind::Socket, 0o140755);
        let s = meta.place_special(
            Some(fd.as_fd()),
            OsStr::new("s"),
            &socket,
            how(Overwrite::Always),
        );
        assert_eq!(s.unwrap(), None);
        assert!(!tmp.path().join("s").exists());
    }

    #[test]
    fn refused_attributes_give_one_warning_per_cause() {
        let meta = Meta::new(true, true);
        let mut e = entry(EntryKind::File, 0o100644);
        e.xattrs = (0..5)
            .map(|i| Xattr {
                name: format!("user.a{i}").into_bytes(),
                value: vec![],
            })
            .chain(std::iter::once(Xattr {
                name: b"trusted.x".to_vec(),
                value: vec![],
            }))
            .collect();
        for _ in 0..3 {
            meta.set_xattrs(&e, |n, _| {
                if n.as_bytes().starts_with(b"user.") {
                    Err(Errno::NOTSUP)
                } else {
                    Err(Errno::PERM)
                }
            });
        }
        let warnings = meta.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("user.*"), "{warnings:?}");
        assert!(warnings[1].contains("trusted.*"), "{warnings:?}");
        let off = Meta::new(false, false);
        off.set_xattrs(&e, |_, _| panic!("--no-xattrs writes none"));
    }
}
