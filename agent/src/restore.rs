//! Restore: a snapshot (or one path in it) back into a target directory.
//!
//! Trees are walked first (a directory's symlinks and subdirectories made
//! as its tree is read, then its subdirectories walked in turn), then files
//! are restored several at a time, each by its own task, its chunks fetched
//! ahead and opened on the blocking pool and written in order, long zero
//! runs left as holes; directory metadata is set last, deepest first.
//! Owners, extended attributes, modes and times go on in the order that
//! keeps them all, FIFOs and devices are made, and hard-link groups are
//! linked after every file is written: see the `metadata` and `links` modules.
//!
//! # Choosing entries
//!
//! [`RestoreOptions`] holds gitignore-style include and exclude patterns
//! (the `ignore` crate's matcher, as for backup excludes), matched against
//! each entry's path inside the snapshot (`home/me/a.txt`, whatever `path`
//! restores). An excluded entry is skipped, and an excluded directory
//! whole: its tree is not read. With include patterns, an entry is restored
//! when it, or the nearest directory above it that a pattern decides on,
//! is included (`!` takes back, as in git); a directory that is not
//! included is made only once something below it is, so an included file
//! brings the directories leading to it and nothing else. A directory that
//! no include pattern can reach below (an anchored pattern's leading
//! components do not match it) is not read either. Exclusion wins.
//!
//! # What is already in the target
//!
//! [`Overwrite`] decides, for a file or symlink whose name is taken:
//! `always` writes every file anew, `if-changed` keeps a file whose size
//! and mtime match the snapshot's or whose content does (cut with the
//! repository's chunker and hashed, compared chunk id by chunk id; only its
//! mode and mtime are set then), `never` keeps whatever is there. A dry run
//! reads the trees and the target (and, for `if-changed`, the files it
//! would compare), writes nothing, and lists what it would do; a restore
//! asked to ([`RestoreOptions::list`]) lists what it did the same way.
//!
//! # Staying inside the target
//!
//! A snapshot may come from a hostile writer, and the target may already
//! hold anything: a symlink to `/etc`, a hard link to a file elsewhere.
//! Below the target, restore never hands the kernel a path of more than one
//! component. The target is opened once (following the path the user gave);
//! every other call names one entry relative to a directory descriptor
//! (`mkdirat`, `symlinkat`, `openat`, `unlinkat`, `readlinkat`, and
//! `fstatat` and `utimensat` with `AT_SYMLINK_NOFOLLOW`), and modes and
//! times are set with `fchmod` and `futimens` on descriptors restore opened
//! itself (owners and extended attributes likewise: `fchown`, `fsetxattr`;
//! for a symlink `fchownat` with `AT_SYMLINK_NOFOLLOW` and `lsetxattr`
//! through `/proc/self/fd/<directory>/<name>`; for a special file, an
//! `O_PATH` descriptor on what was just made). Hard links are made with
//! `linkat` between two names below the target, following neither.
//! Directories are opened one component at a time from the target
//! with `O_DIRECTORY | O_NOFOLLOW`, so a symlink below the target is never
//! followed, whoever made it: found there, made by this restore, or met
//! because a case-insensitive file system folds two names of a snapshot
//! into one. In detail:
//!
//! - Names are checked again (non-empty, no `/` or NUL, neither `.` nor `..`,
//!   strictly ascending within a directory), although
//!   [`Tree::decode`](ringvault_common::tree::Tree::decode) already refuses
//!   trees that break these rules.
//! - A file written is always a new inode: whatever non-directory held its
//!   name (a file, a hard link to a file outside, a symlink) is unlinked and
//!   the file made with `O_CREAT | O_EXCL | O_NOFOLLOW`. An existing file is
//!   never opened for writing or truncated. `if-changed` opens one for
//!   reading (`O_NOFOLLOW`), and sets its mode and mtime through that
//!   descriptor, only when it is a regular file with one link, so never a
//!   file that is also linked from outside the target; with more links it
//!   is kept untouched if its size, mtime and mode all match, else
//!   replaced. A directory in a file's place is an error.
//! - A directory reuses an existing directory; anything else in its place,
//!   a symlink included, is an error for that entry, whose subtree is then
//!   skipped.
//! - A symlink is made as recorded (pointing anywhere is legitimate). The
//!   same symlink already there is kept; anything else there is an error,
//!   except that `if-changed` replaces a non-directory (unlinked, never
//!   followed) and `never` skips it.
//! - Directories nest at most [`MAX_DEPTH`] deep, and a directory whose tree
//!   is one of its own ancestors' is refused, so no snapshot keeps the walk
//!   going without end. Both are errors for the entry.
//!
//! # Where the code is
//!
//! This file holds the options, the report and [`restore_with`], which
//! drives the rest, with what the walk shares with the file tasks and the
//! hard links (open directories, the directories met). `walk` reads the
//! trees and makes directories, symlinks and special files; `file`
//! restores one file's contents; `select` holds the include and exclude
//! patterns; `links` makes hard links; `metadata` chooses owners and
//! extended attributes; `fetch` fetches chunks in batches; `target` holds
//! the helpers that make the system calls on the target directory.
//! `verify` and `delete` are the passes after a restore (`after` holds
//! what they share), and `progress` counts for whoever shows it.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ringvault_common::chunker::Chunker;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{Entry, EntryKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::client::BadCopy;
use crate::repo::Repo;

mod after;
pub mod delete;
mod fetch;
mod file;
mod links;
mod metadata;
pub mod progress;
mod select;
mod target;
pub mod verify;
mod walk;

use fetch::Fetcher;
use file::{FileCtx, restore_file};
use metadata::Meta;
use progress::RestoreProgress;
use select::Selection;
use target::{open_beneath, open_target};
use walk::{Walked, Walker};

/// Deepest directory nesting restored, counted from the target (whose own
/// entries are at depth 1): 2048. A backup reads directories by path, and
/// a path fits in `PATH_MAX` (4096 bytes on Linux, 1024 on macOS), so no
/// snapshot of a real file system nests deeper (`a/` repeated 2048 times
/// fills 4096 bytes). The bound stops a hostile snapshot that nests without
/// end. A directory deeper than this is an error and is not made, nor is
/// its tree read.
pub const MAX_DEPTH: usize = 2048;

/// Files restored at once: enough for the chunk fetcher to fill batches of
/// small files while earlier ones are written.
const FILES_AT_ONCE: usize = 256;
/// Chunks of one file fetched ahead when they are written in order
/// (version 1 trees).
const CHUNKS_AHEAD: usize = 4;
/// Chunks of one file fetched and written at once when their offsets are
/// known: enough to keep both batches per server full with one large
/// file; the byte budget bounds what they hold.
const CHUNKS_AT_ONCE: usize = 16;
/// Plaintext bytes of the chunks fetched or being written at once, over
/// all files (16 MiB): a chunk holds its length (in a version 1 tree,
/// min(its file's size, the chunker's largest chunk)) of it, rounded up to
/// KiB, from before it is asked for until it is written. The sealed copy,
/// briefly held beside it, is about as large again at most. With the
/// fetcher's batches, this keeps a restore's peak below the key
/// derivation's (`docs/performance.md`).
const BYTES_IN_FLIGHT: usize = 16 << 20;
/// Existing files read at once to compare with the snapshot (`if-changed`),
/// each through a buffer of up to twice the largest chunk (16 MiB with the
/// default chunker settings).
const COMPARES_AT_ONCE: usize = 4;
/// Files found by the walk and waiting for a task.
const FILE_QUEUE: usize = 1024;
/// Directories held open at once, by the walk and by files waiting for or
/// being written (one descriptor each; macOS allows 256 by default).
const DIRS_OPEN: usize = 64;

/// When a restore replaces what the target already holds under the name of
/// a file or symlink of the snapshot (restic's `--overwrite`; directories
/// already there are always reused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Overwrite {
    /// Write every file anew, whatever is there (restic's default). A
    /// symlink already there that differs stays an error.
    #[default]
    Always,
    /// Keep a file whose size and mtime match the snapshot's, or whose
    /// content does (then only its mode and mtime are set); replace the
    /// rest, and symlinks that differ.
    IfChanged,
    /// Keep whatever is there, reported as skipped.
    Never,
}

/// What to restore and how: the defaults restore the whole snapshot,
/// writing every file anew.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Restore only the entry at this `/`-separated path inside the
    /// snapshot; it lands in the target under its own name.
    pub path: Option<String>,
    /// Gitignore-style patterns (`*`, `?`, `[...]`, `**`, a leading `/`
    /// anchors to the snapshot's root, a trailing `/` matches directories
    /// only, `!` takes back) matched against the path inside the snapshot.
    /// When any is given (here or in `iinclude`), only what they include is
    /// restored: a matched directory with everything below it, and the
    /// directories leading to a matched entry.
    pub include: Vec<String>,
    /// Like `include`, matched case-insensitively (restic's `--iinclude`).
    pub iinclude: Vec<String>,
    /// Patterns like `include`'s whose matches are not restored; a matched
    /// directory is skipped whole, its tree not read. Exclusion wins over
    /// inclusion.
    pub exclude: Vec<String>,
    /// Like `exclude`, matched case-insensitively (restic's `--iexclude`).
    pub iexclude: Vec<String>,
    /// When to replace what the target already holds.
    pub overwrite: Overwrite,
    /// Read the trees and the target, write nothing, and list in the
    /// report what would be done.
    pub dry_run: bool,
    /// List in the report what was done with every entry chosen, as a dry
    /// run does (one [`PlannedAction`] per entry, held until the end: its
    /// path and about 40 bytes more).
    pub list: bool,
    /// As root, give entries their recorded owner and group ids, not the
    /// ids their recorded names have here (tar's `--numeric-owner`).
    pub numeric_owner: bool,
    /// Write no extended attributes (nor, with them, POSIX ACLs and file
    /// capabilities).
    pub no_xattrs: bool,
    /// Counters to bump as files are found and written, for someone else
    /// to show while the restore runs (see [`progress`]).
    pub progress: Option<Arc<RestoreProgress>>,
}

/// What a restore did, or in a dry run would do, with one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing was at its name: made.
    New,
    /// Something else was at its name: unlinked, and the entry made anew.
    Replaced,
    /// Already as in the snapshot: kept (a file's mode and mtime set if
    /// they differed; a directory found in place).
    Unchanged,
    /// Something was at its name and [`Overwrite::Never`] kept it.
    Skipped,
}

impl Action {
    /// Its name in reports: `new`, `replaced`, `unchanged` or `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::New => "new",
            Action::Replaced => "replaced",
            Action::Unchanged => "unchanged",
            Action::Skipped => "skipped",
        }
    }
}

/// One entry of a dry run and what would be done with it (or, listed by a
/// restore, what was done).
#[derive(Clone, Debug)]
pub struct PlannedAction {
    /// Where it would be, in the target.
    pub path: PathBuf,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// What would be done.
    pub action: Action,
    /// Its size in the snapshot, bytes (files; 0 for the others).
    pub size: u64,
}

/// What a restore did (in a dry run: would do).
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Regular files written, new or replaced.
    pub files: u64,
    /// Symlinks made, new or replaced.
    pub symlinks: u64,
    /// FIFOs and device files made, new or replaced.
    pub specials: u64,
    /// Directories made or found in place.
    pub dirs: u64,
    /// Bytes written (in a dry run: the sizes of the files to write).
    pub bytes: u64,
    /// Files and symlinks already as in the snapshot, kept.
    pub unchanged: u64,
    /// Files and symlinks kept because something was at their name and the
    /// overwrite policy is [`Overwrite::Never`].
    pub skipped: u64,
    /// Entries that could not be restored, with why.
    pub errors: Vec<(PathBuf, String)>,
    /// Bad copies met (and read around) on the servers.
    pub bad_copies: Vec<BadCopy>,
    /// What was left out for a reason the target or the user gave, once
    /// per cause: extended attributes the file system refused, device
    /// files when not root.
    pub warnings: Vec<String>,
    /// In a dry run, every entry chosen, with what would be done; with
    /// [`RestoreOptions::list`], with what was done (an entry that failed
    /// is in `errors` instead); in no particular order. Empty otherwise.
    pub actions: Vec<PlannedAction>,
}

impl RestoreReport {
    /// Counts a file restored with `action` (a hard link too): `size` is
    /// its size in the snapshot, `written` the bytes written for it; with
    /// `list`, records the action.
    pub(crate) fn count_file(
        &mut self,
        path: PathBuf,
        action: Action,
        size: u64,
        written: u64,
        list: bool,
    ) {
        match action {
            Action::New | Action::Replaced => {
                self.files += 1;
                self.bytes += written;
            }
            Action::Unchanged => self.unchanged += 1,
            Action::Skipped => self.skipped += 1,
        }
        if list {
            self.actions.push(PlannedAction {
                path,
                kind: EntryKind::File,
                action,
                size,
            });
        }
    }
}

/// An include or exclude pattern that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad {flag} pattern: {error}")]
pub struct PatternError {
    /// Which list it is in: `include`, `iinclude`, `exclude` or `iexclude`.
    pub flag: &'static str,
    /// What `ignore` said, naming the pattern.
    pub error: ignore::Error,
}

/// Restores `snapshot` (or the entry at `path` inside it, `/`-separated)
/// into `target`, which is created if missing, writing every file anew:
/// [`restore_with`] with the default [`RestoreOptions`].
///
/// # Errors
/// As [`restore_with`].
pub async fn restore(
    repo: Arc<Repo>,
    snapshot: &Snapshot,
    path: Option<&str>,
    target: &Path,
) -> anyhow::Result<RestoreReport> {
    let options = RestoreOptions {
        path: path.map(str::to_owned),
        ..RestoreOptions::default()
    };
    restore_with(repo, snapshot, target, &options).await
}

/// Restores what `options` choose of `snapshot` into `target`, which is
/// created if missing (not in a dry run). Nothing outside `target` is
/// created, written, or has its metadata changed, whatever the snapshot
/// holds and whatever `target` already holds (see the module notes).
///
/// # Errors
/// A [`PatternError`] for a pattern that does not parse; when the
/// snapshot's root or `options.path` cannot be found or read, or the
/// target cannot be made or opened. Failures of single entries are in the
/// report.
pub async fn restore_with(
    repo: Arc<Repo>,
    snapshot: &Snapshot,
    target: &Path,
    options: &RestoreOptions,
) -> anyhow::Result<RestoreReport> {
    let select = Selection::new(options)?;
    let chunker = Chunker::new(repo.chunker).context("the repository's chunker settings")?;
    let path = options
        .path
        .as_deref()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty());
    // Before the target is made: a wrong path leaves nothing behind.
    let (top, above, base) = match path {
        None => {
            let root_tree = repo
                .read_tree(snapshot.root)
                .await
                .context("reading the snapshot's root tree")?;
            (root_tree.entries, vec![snapshot.root], Vec::new())
        }
        Some(p) => {
            let mut trees = crate::browse::Trees::default();
            let entry = crate::browse::lookup(&repo, &mut trees, snapshot.root, p)
                .await?
                .with_context(|| format!("no {p:?} in the snapshot"))?;
            let mut parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            parts.pop();
            (vec![entry], Vec::new(), parts.join("/").into_bytes())
        }
    };
    let root = Arc::new(OpenDir {
        fd: open_target(target, options.dry_run)?,
        path: target.to_owned(),
        fresh: false,
        _permit: None,
    });
    let how = How {
        overwrite: options.overwrite,
        dry_run: options.dry_run,
        list: options.dry_run || options.list,
    };
    // What the patterns say about the directories above `path`.
    let mut chosen = None;
    let mut top = top;
    let mut prefix = Vec::new();
    for part in base.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        push_name(&mut prefix, part);
        if select.excluded(&prefix, true) {
            top.clear();
        }
        chosen = select.include.decision(&prefix, true).or(chosen);
    }
    let meta = Arc::new(Meta::new(options.numeric_owner, !options.no_xattrs));
    // The walk runs ahead in its own task, handing files over as it meets
    // them; each file is then restored by its own task, so that chunks are
    // fetched, opened and written on every core at once.
    let (file_tx, mut file_rx) = mpsc::channel(FILE_QUEUE);
    // In a JoinSet so that it is stopped if this function returns early.
    let mut walker = tokio::task::JoinSet::new();
    {
        let mut walk = Walker {
            repo: repo.clone(),
            root: root.clone(),
            files: file_tx,
            dirs_open: Arc::new(Semaphore::new(DIRS_OPEN)),
            walked: Walked::default(),
            select,
            how,
            base,
            meta: meta.clone(),
        };
        walker.spawn(async move {
            walk.run(top, above, chosen).await;
            walk.walked
        });
    }
    let files = Arc::new(FileCtx {
        repo: repo.clone(),
        fetcher: Fetcher::start(repo.clone()),
        budget: Semaphore::new(BYTES_IN_FLIGHT >> 10),
        compares: Semaphore::new(COMPARES_AT_ONCE),
        chunker,
        how,
        meta: meta.clone(),
        progress: options.progress.clone(),
    });
    let mut report = RestoreReport::default();
    let mut link_sources = HashSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut walking = true;
    while walking || !tasks.is_empty() {
        tokio::select! {
            job = file_rx.recv(), if walking && tasks.len() < FILES_AT_ONCE => match job {
                Some(job) => {
                    if let Some(p) = &options.progress {
                        p.file_found(job.entry.size);
                    }
                    let (files, job) = (files.clone(), Arc::new(job));
                    tasks.spawn(async move {
                        let done = restore_file(&files, &job).await;
                        (job.dest(), job.entry.size, job.entry.links > 1, done)
                    });
                }
                None => walking = false,
            },
            Some(joined) = tasks.join_next() => {
                let (dest, size, linked, done) = joined.context("a restore task failed")?;
                match done {
                    Ok((action, written)) => {
                        if let Some(p) = &options.progress {
                            p.file_done(action, size);
                        }
                        if linked && action != Action::Skipped {
                            // The first of a hard-link group: the others
                            // link to it.
                            link_sources.insert(dest.clone());
                        }
                        report.count_file(dest, action, size, written, how.list);
                    }
                    Err(e) => report.errors.push((dest, format!("{e:#}"))),
                }
            }
        }
    }
    let Walked {
        dirs,
        errors,
        symlinks,
        specials,
        unchanged,
        skipped,
        actions,
        links,
        ..
    } = walker
        .join_next()
        .await
        .context("the restore walk vanished")?
        .context("the restore walk failed")?;
    report.dirs = dirs
        .iter()
        .filter(|d| matches!(d.state, DirState::Present | DirState::Planned))
        .count() as u64;
    report.symlinks = symlinks;
    report.specials = specials;
    report.unchanged += unchanged;
    report.skipped += skipped;
    report.errors.extend(errors);
    report.actions.extend(actions);
    // Before the directories' metadata: a link changes its directory's mtime.
    links::link_all(&root, &dirs, links, &link_sources, how, &mut report);
    if !how.dry_run {
        // A directory comes after its parent in `dirs`, so going backwards
        // sets every directory's mode before its ancestors' (which may take
        // away the access that opening it needs).
        for i in (0..dirs.len()).rev() {
            if dirs[i].state != DirState::Present {
                continue;
            }
            let names = lineage(&dirs, i).into_iter().map(|e| e.name.as_slice());
            let set = root
                .fd()
                .context("the target is not open")
                .and_then(|fd| open_beneath(fd, names).context("opening the directory"))
                .and_then(|fd| meta.apply(fd.as_fd(), &dirs[i].entry));
            if let Err(e) = set {
                report
                    .errors
                    .push((made_path(&root.path, &dirs, i), format!("{e:#}")));
            }
        }
    }
    report.bad_copies = repo.cluster.bad_copies();
    report.warnings = meta.warnings();
    Ok(report)
}

/// A directory in the target, open.
struct OpenDir {
    /// `None` in a dry run for a directory that is not there yet (whose
    /// entries would all be new).
    fd: Option<OwnedFd>,
    /// Where it is, for messages.
    path: PathBuf,
    /// Made by this restore: every name in it is free but for those this
    /// restore puts there (a tree's names are unique), so a file is made
    /// without looking first.
    fresh: bool,
    /// Held while the descriptor is open (none for the target itself).
    _permit: Option<OwnedSemaphorePermit>,
}

impl OpenDir {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }
}

/// A file for a restore task: its directory, open, and its entry.
struct FileJob {
    dir: Arc<OpenDir>,
    entry: Entry,
}

impl FileJob {
    fn dest(&self) -> PathBuf {
        self.dir.path.join(OsStr::from_bytes(&self.entry.name))
    }
}

/// The overwrite policy, whether this is a dry run, and whether to list
/// each entry's [`Action`] (always in a dry run).
#[derive(Clone, Copy)]
struct How {
    overwrite: Overwrite,
    dry_run: bool,
    list: bool,
}

/// Where a directory the walk met stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DirState {
    /// In the target: made by this restore or found there.
    Present,
    /// Dry run: not in the target; would be made.
    Planned,
    /// Not made (yet): read only because something below it may be
    /// included; made when something is.
    Deferred,
    /// Could not be made (the error is recorded): nothing below it is
    /// restored.
    Failed,
}

/// A directory the walk met, for its entries' paths, its metadata at the
/// end, and the directories made below it. Its path is its ancestors'
/// names (see [`lineage`]): storing whole paths would take memory quadratic
/// in the nesting.
struct MadeDir {
    /// Index of its parent in [`Walked::dirs`]; `None` under the target.
    parent: Option<usize>,
    entry: Entry,
    state: DirState,
    /// Made by this restore (not found in the target).
    made: bool,
    /// The include patterns' decision for its entries that no pattern
    /// matches themselves: that of the nearest directory (it or above) a
    /// pattern matched (`Some(true)` included, `Some(false)` taken back
    /// with `!`).
    chosen: Option<bool>,
}

/// Appends `name` to a `/`-separated snapshot path.
fn push_name(path: &mut Vec<u8>, name: &[u8]) {
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
}

/// The entries of the walked directories from the target down to `i`.
fn lineage(dirs: &[MadeDir], mut i: usize) -> Vec<&Entry> {
    // Invariant: `i` and every parent index come from the walk, which pushes
    // a directory after its parent, so each is in range.
    let mut chain = vec![&dirs[i].entry];
    while let Some(parent) = dirs[i].parent {
        chain.push(&dirs[parent].entry);
        i = parent;
    }
    chain.reverse();
    chain
}

/// Walked directory `i`'s path under `root`, for messages.
fn made_path(root: &Path, dirs: &[MadeDir], i: usize) -> PathBuf {
    let mut path = root.to_owned();
    path.extend(
        lineage(dirs, i)
            .into_iter()
            .map(|e| OsStr::from_bytes(&e.name)),
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringvault_common::ChunkId;
    use ringvault_common::tree::Content;

    #[test]
    fn lineage_follows_parents() {
        let dir = |name: &[u8], parent| MadeDir {
            parent,
            entry: Entry {
                name: name.to_vec(),
                kind: EntryKind::Dir,
                mode: 0o40755,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
                ctime_ns: 0,
                size: 0,
                inode: 0,
                device: 0,
                rdev: 0,
                xattrs: vec![],
                content: Content::Subtree(ChunkId([0; 32])),
                user: vec![],
                group: vec![],
                links: 1,
            },
            state: DirState::Present,
            made: false,
            chosen: None,
        };
        let dirs = [
            dir(b"a", None),
            dir(b"b", None),
            dir(b"c", Some(0)),
            dir(b"d", Some(2)),
        ];
        let names: Vec<&[u8]> = lineage(&dirs, 3)
            .iter()
            .map(|e| e.name.as_slice())
            .collect();
        assert_eq!(names, [&b"a"[..], b"c", b"d"]);
        assert_eq!(made_path(Path::new("/t"), &dirs, 1), Path::new("/t/b"));
    }
}
