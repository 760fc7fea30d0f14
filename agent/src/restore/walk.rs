//! The walk: reads the snapshot's trees top down, makes directories (or
//! defers them until something below is chosen), symlinks and special
//! files as it goes, hands files over to their own tasks, and records the
//! hard-link groups met. The system calls on the target are in the
//! `target` module.

use std::collections::{HashMap, hash_map};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use ringvault_common::ChunkId;
use ringvault_common::tree::{Content, Entry, EntryKind, valid_name};
use rustix::fs::FileType;
use tokio::sync::{Semaphore, mpsc};

use super::links::{LinkEnd, LinkJob};
use super::metadata::Meta;
use super::select::Selection;
use super::target::{look, make_dir, open_beneath, open_dir, place_symlink};
use super::{
    Action, DirState, FileJob, How, MAX_DEPTH, MadeDir, OpenDir, PlannedAction, lineage, made_path,
    push_name,
};
use crate::repo::Repo;

/// What the walk gathered besides the files it handed over.
#[derive(Default)]
pub(super) struct Walked {
    /// Directories met, each after its parent.
    pub(super) dirs: Vec<MadeDir>,
    pub(super) errors: Vec<(PathBuf, String)>,
    /// Symlinks made.
    pub(super) symlinks: u64,
    /// FIFOs and devices made.
    pub(super) specials: u64,
    /// Symlinks and special files kept as they were.
    pub(super) unchanged: u64,
    /// Symlinks and special files kept by
    /// [`Overwrite::Never`](super::Overwrite::Never).
    pub(super) skipped: u64,
    /// Dry runs and listing restores: directories, symlinks and special
    /// files, with what would be or was done.
    pub(super) actions: Vec<PlannedAction>,
    /// Where the first file of each hard-link group met went, by the
    /// group's key ([`LinkKey`]).
    first_links: HashMap<LinkKey, LinkEnd>,
    /// The other files of hard-link groups, linked to their first once
    /// every file is written.
    pub(super) links: Vec<LinkJob>,
}

/// What makes files of a snapshot one hard-link group: the same (device,
/// inode) at backup time, and the same content. Content is part of the key
/// because a watching agent's snapshot reuses subtrees from earlier scans,
/// whose inode numbers may since have been given to other files (after a
/// reboot or a file system's recreation): two different files must never
/// come back as one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LinkKey {
    device: u64,
    inode: u64,
    /// Bytes.
    size: u64,
    chunks: Vec<ringvault_common::ChunkId>,
}

/// The directory whose entries the walk is making.
struct Level {
    /// Walked directory index, `None` for the target.
    made: Option<usize>,
    /// Open, once made (the target always is, if only as `None` in a dry
    /// run); `None` while deferred.
    dir: Option<Arc<OpenDir>>,
    /// Where it is in the target, for messages.
    path: PathBuf,
    /// Its path inside the snapshot, `/`-separated, "" for the root.
    snap_path: Vec<u8>,
    /// The include decision its entries inherit.
    chosen: Option<bool>,
    /// The depth of its entries (1 in the target).
    depth: usize,
}

/// The walk: makes directories and symlinks and hands files over.
pub(super) struct Walker {
    pub(super) repo: Arc<Repo>,
    /// The target.
    pub(super) root: Arc<OpenDir>,
    pub(super) files: mpsc::Sender<FileJob>,
    /// Bounds the directories held open, to [`DIRS_OPEN`](super::DIRS_OPEN).
    pub(super) dirs_open: Arc<Semaphore>,
    pub(super) walked: Walked,
    pub(super) select: Selection,
    pub(super) how: How,
    /// The snapshot path of the directory holding the top entries.
    pub(super) base: Vec<u8>,
    /// Owners and extended attributes of symlinks; special files.
    pub(super) meta: Arc<Meta>,
}

impl Walker {
    /// Makes `top` in the target, then walks every directory made, depth
    /// first, with a stack rather than recursion: the nesting is up to the
    /// snapshot, the call stack is not. `above` holds the tree ids above
    /// `top` (the root tree's, for a whole snapshot), `chosen` the include
    /// decision `top` inherits. Errors are recorded, never fatal.
    pub(super) async fn run(&mut self, top: Vec<Entry>, above: Vec<ChunkId>, chosen: Option<bool>) {
        // Walked directories whose trees are still to be read, the next last.
        let mut pending = Vec::new();
        let level = Level {
            made: None,
            dir: Some(self.root.clone()),
            path: self.root.path.clone(),
            snap_path: self.base.clone(),
            chosen,
            depth: 1,
        };
        self.make_entries(level, top, &above, &mut pending).await;
        while let Some(i) = pending.pop() {
            if self.blocked(i) {
                continue;
            }
            let path = made_path(&self.root.path, &self.walked.dirs, i);
            let chain = lineage(&self.walked.dirs, i);
            let depth = chain.len() + 1;
            // Only directories with a subtree are walked: `dir` is the last.
            let mut ancestors = above.clone();
            ancestors.extend(chain.iter().filter_map(|e| match e.content {
                Content::Subtree(id) => Some(id),
                _ => None,
            }));
            let names: Vec<&[u8]> = chain.iter().map(|e| e.name.as_slice()).collect();
            let mut snap_path = self.base.clone();
            for name in &names {
                push_name(&mut snap_path, name);
            }
            let (state, fresh) = (self.walked.dirs[i].state, self.walked.dirs[i].made);
            let opened = async {
                let Some(&id) = ancestors.last() else {
                    bail!("not a directory");
                };
                let tree = self.repo.read_tree(id).await?;
                let dir = match state {
                    DirState::Present => {
                        let permit = self
                            .dirs_open
                            .clone()
                            .acquire_owned()
                            .await
                            .context("the restore is shutting down")?;
                        let root = self.root.fd().context("the target is not open")?;
                        let fd = open_beneath(root, names.iter().copied())
                            .context("opening the directory")?;
                        Some(Arc::new(OpenDir {
                            fd: Some(fd),
                            path: path.clone(),
                            fresh,
                            _permit: Some(permit),
                        }))
                    }
                    DirState::Planned => Some(Arc::new(OpenDir {
                        fd: None,
                        path: path.clone(),
                        fresh: false,
                        _permit: None,
                    })),
                    DirState::Deferred | DirState::Failed => None,
                };
                anyhow::Ok((tree, dir))
            }
            .await;
            match opened {
                Ok((tree, dir)) => {
                    let level = Level {
                        made: Some(i),
                        dir,
                        path,
                        snap_path,
                        chosen: self.walked.dirs[i].chosen,
                        depth,
                    };
                    self.make_entries(level, tree.entries, &ancestors, &mut pending)
                        .await;
                }
                Err(e) => self.walked.errors.push((path, format!("{e:#}"))),
            }
        }
    }

    /// Makes the chosen `entries` of `level`: symlinks and directories
    /// here, files handed over. The directories to walk go on `pending`, in
    /// order. `ancestors` holds the tree ids of `level` and the directories
    /// above it.
    async fn make_entries(
        &mut self,
        mut level: Level,
        entries: Vec<Entry>,
        ancestors: &[ChunkId],
        pending: &mut Vec<usize>,
    ) {
        let first_made = pending.len();
        let mut prev: Option<Vec<u8>> = None;
        for entry in entries {
            let name = OsStr::from_bytes(&entry.name);
            // Names were checked when their tree was decoded; checked again
            // here because this is the line that keeps writes inside the
            // target.
            if !valid_name(&entry.name) {
                self.walked.errors.push((
                    level.path.clone(),
                    format!("refused entry name {:?}", name.to_string_lossy()),
                ));
                continue;
            }
            if prev.as_deref().is_some_and(|p| p >= entry.name.as_slice()) {
                self.walked.errors.push((
                    level.path.join(name),
                    "refused: entry out of order or duplicated".into(),
                ));
                continue;
            }
            prev = Some(entry.name.clone());
            let mut snap_path = level.snap_path.clone();
            push_name(&mut snap_path, &entry.name);
            let is_dir = entry.kind == EntryKind::Dir;
            if self.select.excluded(&snap_path, is_dir) {
                continue;
            }
            let chosen = self
                .select
                .include
                .decision(&snap_path, is_dir)
                .or(level.chosen);
            let included = self.select.include.is_empty() || chosen == Some(true);
            if entry.kind == EntryKind::File && matches!(entry.content, Content::Chunks(_)) {
                if !included {
                    continue;
                }
                let Some(dir) = self.activate(&mut level).await else {
                    continue;
                };
                if entry.links > 1 {
                    let here = LinkEnd {
                        dir: level.made,
                        name: entry.name.clone(),
                    };
                    let key = LinkKey {
                        device: entry.device,
                        inode: entry.inode,
                        size: entry.size,
                        chunks: entry.chunk_ids().collect(),
                    };
                    match self.walked.first_links.entry(key) {
                        hash_map::Entry::Occupied(first) => {
                            self.walked.links.push(LinkJob {
                                from: first.get().clone(),
                                to: here,
                                size: entry.size,
                            });
                            continue;
                        }
                        hash_map::Entry::Vacant(v) => {
                            v.insert(here);
                        }
                    }
                }
                // A closed channel means the restore is failing already.
                let _ = self.files.send(FileJob { dir, entry }).await;
                continue;
            }
            let dest = level.path.join(name);
            match (entry.kind, &entry.content) {
                (EntryKind::Dir, Content::Subtree(id)) => {
                    if !included && !self.select.include.may_hold(&snap_path) {
                        continue;
                    }
                    if let Err(e) = check_descent(level.depth, ancestors, id) {
                        self.walked.errors.push((dest, format!("{e:#}")));
                        continue;
                    }
                    let (state, made) = if included {
                        let Some(dir) = self.activate(&mut level).await else {
                            continue;
                        };
                        match self.place_dir(dir.fd(), &dest, &entry) {
                            Ok(placed) => placed,
                            Err(e) => {
                                self.walked.errors.push((dest, format!("{e:#}")));
                                continue;
                            }
                        }
                    } else {
                        (DirState::Deferred, false)
                    };
                    pending.push(self.walked.dirs.len());
                    self.walked.dirs.push(MadeDir {
                        parent: level.made,
                        entry,
                        state,
                        made,
                        chosen,
                    });
                }
                _ if !included => {}
                (EntryKind::Symlink, Content::Symlink(target)) => {
                    let Some(dir) = self.activate(&mut level).await else {
                        continue;
                    };
                    let placed = place_symlink(dir.fd(), name, target, entry.mtime_ns, self.how)
                        .and_then(|action| {
                            if let (Action::New | Action::Replaced, Some(fd), false) =
                                (action, dir.fd(), self.how.dry_run)
                            {
                                self.meta.apply_symlink(fd, name, &entry)?;
                            }
                            Ok(action)
                        });
                    match placed {
                        Ok(action) => self.count_made(dest, EntryKind::Symlink, action),
                        Err(e) => self.walked.errors.push((dest, format!("{e:#}"))),
                    }
                }
                // Skipped, as restic does: the program listening makes it.
                (EntryKind::Socket, Content::None) => {}
                (
                    kind @ (EntryKind::Fifo | EntryKind::CharDevice | EntryKind::BlockDevice),
                    Content::None,
                ) => {
                    let Some(dir) = self.activate(&mut level).await else {
                        continue;
                    };
                    match self.meta.place_special(dir.fd(), name, &entry, self.how) {
                        Ok(Some(action)) => self.count_made(dest, kind, action),
                        Ok(None) => {}
                        Err(e) => self.walked.errors.push((dest, format!("{e:#}"))),
                    }
                }
                (kind, _) => self
                    .walked
                    .errors
                    .push((dest, format!("{kind:?} entry with content of another kind"))),
            }
        }
        // The first directory met here is walked next.
        pending[first_made..].reverse();
    }

    /// Counts a symlink or special file made (or kept, or skipped).
    fn count_made(&mut self, path: PathBuf, kind: EntryKind, action: Action) {
        let w = &mut self.walked;
        match action {
            Action::New | Action::Replaced if kind == EntryKind::Symlink => w.symlinks += 1,
            Action::New | Action::Replaced => w.specials += 1,
            Action::Unchanged => w.unchanged += 1,
            Action::Skipped => w.skipped += 1,
        }
        if self.how.list {
            w.actions.push(PlannedAction {
                path,
                kind,
                action,
                size: 0,
            });
        }
    }

    /// Makes directory `entry` (at `dest`) in `parent`, or finds it there;
    /// in a dry run only looks. Its metadata is set at the end.
    fn place_dir(
        &mut self,
        parent: Option<BorrowedFd<'_>>,
        dest: &Path,
        entry: &Entry,
    ) -> anyhow::Result<(DirState, bool)> {
        let name = OsStr::from_bytes(&entry.name);
        let (state, action) = match parent {
            None => (DirState::Planned, Action::New),
            Some(fd) if self.how.dry_run => match look(fd, name)? {
                None => (DirState::Planned, Action::New),
                Some(st) if FileType::from_raw_mode(st.st_mode).is_dir() => {
                    (DirState::Present, Action::Unchanged)
                }
                Some(_) => bail!("exists and is not a directory (left alone, never followed)"),
            },
            Some(fd) => {
                let made = make_dir(fd, name)?;
                let action = if made { Action::New } else { Action::Unchanged };
                (DirState::Present, action)
            }
        };
        if self.how.list {
            self.walked.actions.push(PlannedAction {
                path: dest.to_owned(),
                kind: EntryKind::Dir,
                action,
                size: 0,
            });
        }
        let made = state == DirState::Present && action == Action::New;
        Ok((state, made))
    }

    /// The open directory of `level`, making it first (and the deferred
    /// directories above it) if it was deferred. `None` when it, or one
    /// above it, could not be made: the error is recorded once.
    async fn activate(&mut self, level: &mut Level) -> Option<Arc<OpenDir>> {
        if let Some(dir) = &level.dir {
            return Some(dir.clone());
        }
        // Deferred, so a walked directory (the target never is).
        let i = level.made?;
        if self.blocked(i) {
            return None;
        }
        match self.make_deferred(i).await {
            Ok(dir) => {
                level.dir = Some(dir.clone());
                Some(dir)
            }
            Err((j, e)) => {
                self.walked.dirs[j].state = DirState::Failed;
                let path = made_path(&self.root.path, &self.walked.dirs, j);
                self.walked.errors.push((path, format!("{e:#}")));
                None
            }
        }
    }

    /// Makes deferred directory `i` and the deferred ones above it, top
    /// down, and opens `i`.
    ///
    /// # Errors
    /// The index of the directory that failed, with why.
    async fn make_deferred(&mut self, i: usize) -> Result<Arc<OpenDir>, (usize, anyhow::Error)> {
        let mut chain = Vec::new();
        let mut at = Some(i);
        while let Some(j) = at {
            if self.walked.dirs[j].state != DirState::Deferred {
                break;
            }
            chain.push(j);
            at = self.walked.dirs[j].parent;
        }
        chain.reverse();
        let permit = self
            .dirs_open
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| (i, anyhow!(e).context("the restore is shutting down")))?;
        // The directory above the highest deferred one: the target, or one
        // present (or, in a dry run, planned).
        let mut parent: Option<OwnedFd> = match at {
            None => match self.root.fd() {
                Some(fd) => Some(fd.try_clone_to_owned().map_err(|e| (i, e.into()))?),
                None => None,
            },
            Some(p) if self.walked.dirs[p].state == DirState::Present => {
                let names = lineage(&self.walked.dirs, p)
                    .into_iter()
                    .map(|e| e.name.as_slice());
                let root = self
                    .root
                    .fd()
                    .ok_or_else(|| (p, anyhow!("the target is not open")))?;
                Some(
                    open_beneath(root, names)
                        .context("opening the directory")
                        .map_err(|e| (p, e))?,
                )
            }
            Some(_) => None,
        };
        for &j in &chain {
            let dest = made_path(&self.root.path, &self.walked.dirs, j);
            let above = parent.take();
            // Invariant: `j` comes from the walk, so it is in range.
            let entry = self.walked.dirs[j].entry.clone();
            let (state, made) = self
                .place_dir(above.as_ref().map(|f| f.as_fd()), &dest, &entry)
                .map_err(|e| (j, e))?;
            self.walked.dirs[j].state = state;
            self.walked.dirs[j].made = made;
            if state == DirState::Present
                && let Some(at) = &above
            {
                let fd = open_dir(at.as_fd(), OsStr::from_bytes(&entry.name))
                    .map_err(|e| (j, anyhow!(e).context("opening the directory")))?;
                parent = Some(fd);
            }
        }
        Ok(Arc::new(OpenDir {
            fd: parent,
            path: made_path(&self.root.path, &self.walked.dirs, i),
            fresh: self.walked.dirs[i].made,
            _permit: Some(permit),
        }))
    }

    /// Whether walked directory `i` or one above it could not be made.
    fn blocked(&self, i: usize) -> bool {
        let mut at = Some(i);
        while let Some(j) = at {
            if self.walked.dirs[j].state == DirState::Failed {
                return true;
            }
            at = self.walked.dirs[j].parent;
        }
        false
    }
}

/// Whether a directory at `depth`, whose tree is `id`, may be made and
/// walked below directories whose trees are `ancestors`.
///
/// # Errors
/// When it would nest deeper than [`MAX_DEPTH`] or its tree is one of its
/// ancestors' (a cycle: the walk would never end).
fn check_descent(depth: usize, ancestors: &[ChunkId], id: &ChunkId) -> anyhow::Result<()> {
    if depth > MAX_DEPTH {
        bail!("refused: nested deeper than {MAX_DEPTH} directories");
    }
    if ancestors.contains(id) {
        bail!("refused: its tree {id} is also that of a directory above it (a cycle)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descent_stops_at_the_depth_bound_and_at_cycles() {
        let (a, b) = (ChunkId([1; 32]), ChunkId([2; 32]));
        assert!(check_descent(1, &[], &a).is_ok());
        assert!(check_descent(MAX_DEPTH, &[b], &a).is_ok());
        assert!(check_descent(MAX_DEPTH + 1, &[b], &a).is_err());
        let cycle = check_descent(3, &[a, b], &a).unwrap_err();
        assert!(cycle.to_string().contains("cycle"), "{cycle}");
    }
}
