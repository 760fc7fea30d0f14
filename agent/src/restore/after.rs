//! What the passes after a restore (`--verify`, `--delete`) share: the
//! snapshot's directories walked again, each with where the restore put
//! it. They open the target with `target::open_existing`.
//!
//! The walk goes only into the directories a pass asks for (those the
//! restore made or found, from its listed actions), so it reads no tree the
//! restore did not read, and the tree cache holds those. The passes open
//! what is below the target one component at a time, never following a
//! symlink, as the restore does (see the restore module's notes).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{Content, Entry, valid_name};

use super::push_name;
use crate::repo::Repo;

/// A directory level of the snapshot as the restore placed it.
pub(super) struct Level {
    /// Where it is: the target, or a directory below it.
    pub target: PathBuf,
    /// Its names below the target, for opening it beneath the target.
    pub names: Vec<Vec<u8>>,
    /// Its path inside the snapshot, `/`-separated ("" for the root).
    pub snap_path: Vec<u8>,
    /// Its own entry; `None` for the target.
    pub dir: Option<Entry>,
    /// What its tree holds. For a restore of one path (`SNAPSHOT:PATH`), the
    /// first level is the target holding that one entry, though the target
    /// is not the directory it came from: `whole` is then false.
    pub entries: Vec<Entry>,
    /// Whether `entries` is the whole of this directory in the snapshot.
    pub whole: bool,
}

/// Visits, top down, the target's level and each directory below it whose
/// target path `wanted` accepts, with its entries; `path` is the restore's
/// `SNAPSHOT:PATH`.
///
/// # Errors
/// When the snapshot's root or `path` cannot be read or found, or a tree
/// below cannot be read.
pub(super) async fn for_each_level(
    repo: &Arc<Repo>,
    snapshot: &Snapshot,
    target: &Path,
    path: Option<&str>,
    wanted: impl Fn(&Path) -> bool,
    mut visit: impl FnMut(Level),
) -> anyhow::Result<()> {
    let path = path.map(|p| p.trim_matches('/')).filter(|p| !p.is_empty());
    let top = match path {
        None => Level {
            target: target.to_owned(),
            names: Vec::new(),
            snap_path: Vec::new(),
            dir: None,
            entries: repo
                .read_tree(snapshot.root)
                .await
                .context("reading the snapshot's root tree")?
                .entries,
            whole: true,
        },
        Some(p) => {
            let mut trees = crate::browse::Trees::default();
            let entry = crate::browse::lookup(repo, &mut trees, snapshot.root, p)
                .await?
                .with_context(|| format!("no {p:?} in the snapshot"))?;
            let mut parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            parts.pop();
            Level {
                target: target.to_owned(),
                names: Vec::new(),
                snap_path: parts.join("/").into_bytes(),
                dir: None,
                entries: vec![entry],
                whole: false,
            }
        }
    };
    let mut pending = vec![top];
    while let Some(level) = pending.pop() {
        for entry in &level.entries {
            let Content::Subtree(id) = entry.content else {
                continue;
            };
            if !valid_name(&entry.name) {
                continue;
            }
            let target = level.target.join(OsStr::from_bytes(&entry.name));
            if !wanted(&target) {
                continue;
            }
            let tree = repo
                .read_tree(id)
                .await
                .with_context(|| format!("reading the tree of {}", target.display()))?;
            let mut names = level.names.clone();
            names.push(entry.name.clone());
            let mut snap_path = level.snap_path.clone();
            push_name(&mut snap_path, &entry.name);
            pending.push(Level {
                target,
                names,
                snap_path,
                dir: Some(entry.clone()),
                entries: tree.entries,
                whole: true,
            });
        }
        visit(level);
    }
    Ok(())
}

/// Every directory on the way from `target` (excluded) to each of `paths`
/// (excluded): the directories a pass must walk to reach them.
pub(super) fn dirs_above<'a>(
    target: &Path,
    paths: impl IntoIterator<Item = &'a PathBuf>,
) -> std::collections::HashSet<PathBuf> {
    let mut out = std::collections::HashSet::new();
    for p in paths {
        let mut at = p.parent();
        while let Some(dir) = at {
            if dir == target || !dir.starts_with(target) || !out.insert(dir.to_owned()) {
                break;
            }
            at = dir.parent();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_above_stop_at_the_target() {
        let t = Path::new("/t");
        let paths = [
            PathBuf::from("/t/a/b/f"),
            PathBuf::from("/t/a/g"),
            PathBuf::from("/t/h"),
        ];
        let mut got: Vec<PathBuf> = dirs_above(t, &paths).into_iter().collect();
        got.sort();
        assert_eq!(got, [PathBuf::from("/t/a"), PathBuf::from("/t/a/b")]);
    }
}
