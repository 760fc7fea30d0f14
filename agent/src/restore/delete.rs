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
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::EntryKind;
use rustix::fs::FileType;

use super::after::{Level, for_each_level};
use super::progress::RestoreProgress;
use super::target::{
    Removal, fstat, look, names, open_beneath, open_target, set_mode, set_mtime, writable,
};
use super::{RestoreOptions, RestoreReport, Selection, push_name};
use crate::repo::Repo;

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
    let dev = fstat(root.as_fd())?.st_dev;
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
                    let is_dir = look(dir.as_fd(), &name).is_ok_and(|st| {
                        st.is_some_and(|st| FileType::from_raw_mode(st.st_mode).is_dir())
                    });
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
        let removal = Removal {
            dev: self.dev,
            dry_run: self.dry_run,
        };
        for name in extra {
            let path = level.target.join(&name);
            if let Err((path, e)) = removal.remove_tree(dir.as_fd(), &name, path, &mut out.deleted)
            {
                out.errors.push((path, e));
            }
        }
        if self.dry_run {
            return;
        }
        // Its mode and recorded mtime back, as the restore set them.
        if let Some(mode) = mode {
            let _ = set_mode(dir.as_fd(), mode);
        }
        if let Some(entry) = &level.dir
            && let Err(e) = set_mtime(dir.as_fd(), entry.mtime_ns)
        {
            out.errors.push((
                level.target.clone(),
                format!("setting its mtime again: {e}"),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn clean<'a>(select: &'a Selection, root: &'a OwnedFd, dry_run: bool) -> Clean<'a> {
        let dev = fstat(root.as_fd()).unwrap().st_dev;
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
