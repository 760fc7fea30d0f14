//! Hard links: files of a snapshot that shared an inode come back sharing
//! one.
//!
//! A snapshot's entries with the same `device` and `inode`, `links > 1` and the
//! same content (size and chunks: see `LinkKey` in the `walk` module)
//! are one group (restic's approach: no entry kind of its own, so a group
//! needs no bookkeeping at backup time and a path or pattern restore needs
//! none either). The first member the walk meets among those chosen is
//! restored as a file; each later one becomes, once every file is written,
//! a hard link to it. A group cut apart by `--include`/`--exclude` or a
//! path restore comes back as one inode for the members restored. When the
//! first member was not restored (an error, or kept as something else by
//! `--overwrite never`), the others are errors, not copies of something
//! else.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::target::{open_beneath, place_link};
use super::{Action, DirState, How, MadeDir, OpenDir, RestoreReport, lineage, made_path};

/// Where a member of a hard-link group goes: a walked directory (`None`:
/// the target) and its name there.
#[derive(Clone, Debug)]
pub(super) struct LinkEnd {
    pub(super) dir: Option<usize>,
    pub(super) name: Vec<u8>,
}

/// A later member of a hard-link group, to link to the first.
#[derive(Debug)]
pub(super) struct LinkJob {
    /// The first member.
    pub(super) from: LinkEnd,
    /// This one.
    pub(super) to: LinkEnd,
    /// Its size in the snapshot, bytes (for listings).
    pub(super) size: u64,
}

/// Makes every link of `jobs`, each to its first member when that was
/// restored (its path is in `written`), as `how` says; counts them in
/// `report` as files, and records errors there.
pub(super) fn link_all(
    root: &OpenDir,
    dirs: &[MadeDir],
    jobs: Vec<LinkJob>,
    written: &HashSet<PathBuf>,
    how: How,
    report: &mut RestoreReport,
) {
    for job in jobs {
        let from = end_path(&root.path, dirs, &job.from);
        let dest = end_path(&root.path, dirs, &job.to);
        if !written.contains(&from) {
            report.errors.push((
                dest,
                format!("a hard link to {}, which was not restored", from.display()),
            ));
            continue;
        }
        match link(root, dirs, &job, how) {
            // A link writes no bytes.
            Ok(action) => report.count_file(dest, action, job.size, 0, how.list),
            Err(e) => report.errors.push((dest, format!("{e:#}"))),
        }
    }
}

/// `end`'s path in the target, for messages and to match written files.
fn end_path(root: &Path, dirs: &[MadeDir], end: &LinkEnd) -> PathBuf {
    let dir = match end.dir {
        Some(i) => made_path(root, dirs, i),
        None => root.to_owned(),
    };
    dir.join(OsStr::from_bytes(&end.name))
}

/// Opens `end`'s directory; `None` in a dry run when it is not there.
fn open_dir(root: &OpenDir, dirs: &[MadeDir], end: &LinkEnd) -> anyhow::Result<Option<OwnedFd>> {
    let Some(root_fd) = root.fd() else {
        return Ok(None);
    };
    let names: Vec<&[u8]> = match end.dir {
        Some(i) => match dirs[i].state {
            DirState::Present => lineage(dirs, i)
                .into_iter()
                .map(|e| e.name.as_slice())
                .collect(),
            DirState::Planned => return Ok(None),
            DirState::Deferred | DirState::Failed => bail!("its directory was not made"),
        },
        None => Vec::new(),
    };
    open_beneath(root_fd, names)
        .map(Some)
        .context("opening the directory")
}

/// Links `job.to` to `job.from`, in place of what is there as the
/// overwrite policy says ([`place_link`]); in a dry run only decides.
fn link(root: &OpenDir, dirs: &[MadeDir], job: &LinkJob, how: How) -> anyhow::Result<Action> {
    let (Some(from_dir), Some(to_dir)) = (
        open_dir(root, dirs, &job.from)?,
        open_dir(root, dirs, &job.to)?,
    ) else {
        return Ok(Action::New);
    };
    let (from, to) = (
        OsStr::from_bytes(&job.from.name),
        OsStr::from_bytes(&job.to.name),
    );
    place_link(from_dir.as_fd(), from, to_dir.as_fd(), to, how)
}
