//! `restore --delete`: after the restore, what the target holds and the
//! snapshot does not is removed, as restic 0.17's `--delete` does.
//!
//! Only directories the restore made or found are cleaned (and the target
//! itself for a whole snapshot, whose root it is): for `SNAPSHOT:PATH`,
//! only below where PATH landed, never beside it. In a cleaned directory,
//! an entry is removed when the snapshot's directory has no entry of its
//! name and the restore's patterns choose its path (an `--exclude` match
//! is kept; with `--include`, only what the patterns include goes), a
//! directory with everything below it. Every name in the snapshot's tree
//! is kept, whether this restore chose it or not. A dry run removes
//! nothing and lists what would go.
//!
//! Removal never follows a symlink (it removes the link), never leaves the
//! target's file system (a directory mounted from another is left, with an
//! error), and names one entry at a time relative to a directory
//! descriptor opened beneath the target, as the restore does. A directory
//! being removed is made writable first when it is not (it goes anyway);
//! a cleaned directory gets its mode back after, and its recorded mtime,
//! which the removals changed.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::EntryKind;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::after::{Level, for_each_level};
use super::progress::RestoreProgress;
use super::target::{names, open_beneath, open_target, timestamps, writable};
use super::{RestoreOptions, RestoreReport, Selection, push_name};
use crate::repo::Repo;

/// Directories open at once while one is removed: a directory nested
/// deeper below the removed one is left, with an error.
const MAX_DEPTH: usize = 256;

/// What `--delete` did (in a dry run: would do).
#[derive(Debug, Default)]
pub struct DeleteReport {
    /// Every entry removed, one below a removed directory too (children
    /// before their directory).
    pub deleted: Vec<PathBuf>,
    /// What could not be removed, with why.
    pub errors: Vec<(PathBuf, String)>,
}

/// Removes from `target` what the snapshot lacks, in the directories the
/// restore that gave `report` placed (it must have been asked to list its
/// actions, [`RestoreOptions::list`]), with `options` that restore's. Bumps
/// `progress` by each entry removed.
///
/// # Errors
/// A pattern that does not parse; a tree that cannot be read. Entries
/// that cannot be removed are in the report.
pub async fn delete_extra(
    repo: &Arc<Repo>,
    snapshot: &Snapshot,
    target: &Path,
    options: &RestoreOptions,
    report: &RestoreReport,
    progress: Option<&RestoreProgress>,
) -> anyhow::Result<DeleteReport> {
    let select = Selection::new(options)?;
    let mut out = DeleteReport::default();
    // A dry run does not make the target: then there is nothing to clean.
    let Some(root) = open_target(target, true)? else {
        return Ok(out);
    };
    let dev = rustix::fs::fstat(&root)
        .map_err(std::io::Error::from)?
        .st_dev;
    let mut cleaned: HashSet<PathBuf> = report
        .actions
        .iter()
        .filter(|a| a.kind == EntryKind::Dir)
        .map(|a| a.path.clone())
        .collect();
    // The target is the snapshot's root: cleaned once something was chosen.
    if options
        .path
        .as_deref()
        .is_none_or(|p| p.trim_matches('/').is_empty())
        && !report.actions.is_empty()
    {
        cleaned.insert(target.to_owned());
    }
    let clean = Clean {
        root: root.as_fd(),
        dev,
        select: &select,
        dry_run: options.dry_run,
    };
    for_each_level(
        repo,
        snapshot,
        target,
        options.path.as_deref(),
        |d| cleaned.contains(d),
        |level| {
            if level.whole && cleaned.contains(&level.target) {
                let before = out.deleted.len();
                clean.level(&level, &mut out);
                if let Some(p) = progress {
                    p.deleted((out.deleted.len() - before) as u64);
                }
            }
        },
    )
    .await?;
    Ok(out)
}

/// What cleaning a directory needs.
struct Clean<'a> {
    /// The target.
    root: BorrowedFd<'a>,
    /// The target's device: removal stays on it.
    dev: u64,
    select: &'a Selection,
    dry_run: bool,
}

impl Clean<'_> {
    /// Removes what `level`'s directory holds beyond its entries.
    fn level(&self, level: &Level, out: &mut DeleteReport) {
        let dir = match open_beneath(self.root, level.names.iter().map(Vec::as_slice)) {
            Ok(fd) => fd,
            // Not there: a dry run's planned directory, or one that failed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                out.errors
                    .push((level.target.clone(), format!("opening it: {e}")));
                return;
            }
        };
        let keep: HashSet<&[u8]> = level.entries.iter().map(|e| e.name.as_slice()).collect();
        let mut extra = Vec::new();
        match names(dir.as_fd()) {
            Ok(all) => {
                for name in all {
                    if keep.contains(name.as_bytes()) {
                        continue;
                    }
                    let is_dir = rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode).is_dir());
                    let mut snap_path = level.snap_path.clone();
                    push_name(&mut snap_path, name.as_bytes());
                    if self.chosen(&snap_path, is_dir) {
                        extra.push(name);
                    }
                }
            }
            Err(e) => {
                out.errors
                    .push((level.target.clone(), format!("listing it: {e}")));
                return;
            }
        }
        if extra.is_empty() {
            return;
        }
        let mode = if self.dry_run {
            None
        } else {
            writable(dir.as_fd())
        };
        for name in extra {
            let path = level.target.join(&name);
            if let Err((path, e)) = self.remove(dir.as_fd(), &name, path, &mut out.deleted) {
                out.errors.push((path, e));
            }
        }
        if self.dry_run {
            return;
        }
        // Its mode and recorded mtime back, as the restore set them.
        if let Some(mode) = mode {
            let _ = rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode));
        }
        if let Some(entry) = &level.dir
            && let Err(e) = rustix::fs::futimens(&dir, &timestamps(entry.mtime_ns))
        {
            out.errors.push((
                level.target.clone(),
                format!("setting its mtime again: {}", std::io::Error::from(e)),
            ));
        }
    }

    /// Whether the restore's patterns choose the entry at `path` in the
    /// snapshot: not excluded and, when there are include patterns,
    /// included by one (itself, or the nearest directory above that one
    /// decides on), as the restore decides.
    fn chosen(&self, path: &[u8], is_dir: bool) -> bool {
        if self.select.excluded(path, is_dir) {
            return false;
        }
        if self.select.include.is_empty() {
            return true;
        }
        let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        let mut prefix = Vec::new();
        let mut chosen = None;
        for (i, part) in parts.iter().enumerate() {
            push_name(&mut prefix, part);
            let last = i + 1 == parts.len();
            chosen = self
                .select
                .include
                .decision(&prefix, !last || is_dir)
                .or(chosen);
        }
        chosen == Some(true)
    }

    /// Removes `name` in `parent` (at `path`), a directory with everything
    /// below it, recording each entry removed (in a dry run, each that
    /// would be).
    ///
    /// # Errors
    /// The first entry that could not be removed, with why (what could be
    /// is removed and recorded).
    fn remove(
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
            if !self.dry_run {
                match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(fail(&path, "removing it", e)),
                }
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
                if depth + 1 >= MAX_DEPTH {
                    return Err((
                        path,
                        format!("nested more than {MAX_DEPTH} directories deep (left)"),
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
        let fd = rustix::fs::openat(
            parent,
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(&path, "opening the directory", e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| fail(&path, "looking at it", e.into()))?;
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
            if !self.dry_run {
                match rustix::fs::unlinkat(&fd, &sub, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(fail(&sub_path, "removing it", e.into())),
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn clean<'a>(select: &'a Selection, root: &'a OwnedFd, dry_run: bool) -> Clean<'a> {
        let dev = rustix::fs::fstat(root).unwrap().st_dev;
        Clean {
            root: root.as_fd(),
            dev,
            select,
            dry_run,
        }
    }

    fn selection(include: &[&str], exclude: &[&str]) -> Selection {
        Selection::new(&RestoreOptions {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            ..RestoreOptions::default()
        })
        .unwrap()
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
        let root = super::super::target::open_existing(t).unwrap();
        let select = selection(&[], &[]);

        let mut listed = Vec::new();
        clean(&select, &root, true)
            .remove(root.as_fd(), OsStr::new("x"), t.join("x"), &mut listed)
            .unwrap();
        assert!(t.join("x/y/z/g").exists(), "a dry run removed something");
        let mut removed = Vec::new();
        clean(&select, &root, false)
            .remove(root.as_fd(), OsStr::new("x"), t.join("x"), &mut removed)
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
    fn patterns_choose_what_may_go_as_they_choose_what_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let root = super::super::target::open_existing(dir.path()).unwrap();
        let excluding = selection(&[], &["*.keep", "/src/cache/"]);
        let c = clean(&excluding, &root, true);
        assert!(c.chosen(b"src/a.txt", false));
        assert!(!c.chosen(b"src/notes.keep", false));
        assert!(!c.chosen(b"src/cache", true));
        assert!(c.chosen(b"src/cache", false));
        let including = selection(&["/src/docs/", "*.md"], &[]);
        let c = clean(&including, &root, true);
        assert!(c.chosen(b"src/docs/old", false));
        assert!(c.chosen(b"src/docs/deep/old", true));
        assert!(c.chosen(b"src/readme.md", false));
        assert!(!c.chosen(b"src/other.txt", false));
    }
}
