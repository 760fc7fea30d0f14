//! A strict tree comparison for restore fidelity: every attribute a
//! restore should give back, of every entry, and the hard-link groups.
//!
//! [`tree_diff`](crate::tree_diff) checks what every restore test needs
//! (names, kinds, bytes, link targets, permission bits, file mtimes);
//! [`strict_diff`] adds what a faithful restore on Linux gives back besides:
//! the whole mode (setuid, setgid, sticky), owner and group ids, every
//! entry's mtime in ns (directories and symlinks too), extended attributes
//! in every namespace the process can read, device numbers, and which
//! paths share an inode.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What [`strict_diff`] compares of one entry (all but its inode).
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    /// `file`, `dir`, `symlink`, `fifo`, `char`, `block` or `socket`.
    pub kind: &'static str,
    /// The whole `st_mode`.
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// mtime: seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// A file's bytes or a symlink's target; empty otherwise.
    pub content: Vec<u8>,
    /// Extended attributes, by name.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Device number of a device node (0 otherwise).
    pub rdev: u64,
}

/// Every entry below `root` (and `root` itself, as ""), symlinks not
/// followed, with its (device, inode) and link count.
///
/// # Panics
/// When something below `root` cannot be read (a test setup error).
pub fn nodes(root: &Path) -> BTreeMap<PathBuf, (Node, (u64, u64), u64)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = root.join(&rel);
        let m =
            std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ft = m.file_type();
        let (kind, content) = if ft.is_dir() {
            let mut names: Vec<OsString> = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            todo.extend(names.into_iter().map(|n| rel.join(n)));
            ("dir", Vec::new())
        } else if ft.is_symlink() {
            let to = std::fs::read_link(&path).unwrap();
            ("symlink", to.as_os_str().as_bytes().to_vec())
        } else if ft.is_file() {
            ("file", std::fs::read(&path).unwrap())
        } else if ft.is_fifo() {
            ("fifo", Vec::new())
        } else if ft.is_char_device() {
            ("char", Vec::new())
        } else if ft.is_block_device() {
            ("block", Vec::new())
        } else {
            ("socket", Vec::new())
        };
        let device = ft.is_char_device() || ft.is_block_device();
        let node = Node {
            kind,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            content,
            xattrs: xattrs(&path),
            rdev: if device { m.rdev() } else { 0 },
        };
        out.insert(rel, (node, (m.dev(), m.ino()), m.nlink()));
    }
    out
}

/// The extended attributes of `path` (not following a symlink) that this
/// process can read, by name; none where the file system has none.
pub fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(n) = rustix::fs::llistxattr_query(path) else {
        return out;
    };
    let mut list = vec![0u8; n];
    let Ok(n) = rustix::fs::llistxattr(path, &mut list[..]) else {
        return out;
    };
    list.truncate(n);
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        let Ok(n) = rustix::fs::lgetxattr_query(path, name) else {
            continue;
        };
        let mut value = vec![0u8; n];
        if let Ok(n) = rustix::fs::lgetxattr(path, name, &mut value[..]) {
            value.truncate(n);
            out.insert(name.as_bytes().to_vec(), value);
        }
    }
    out
}

/// The hard-link groups below `root`: for each inode of a non-directory
/// reached by more than one path, the set of those paths.
pub fn link_groups(root: &Path) -> BTreeSet<BTreeSet<PathBuf>> {
    let mut by_inode: BTreeMap<(u64, u64), BTreeSet<PathBuf>> = BTreeMap::new();
    for (rel, (node, inode, links)) in nodes(root) {
        if node.kind != "dir" && links > 1 {
            by_inode.entry(inode).or_default().insert(rel);
        }
    }
    by_inode.into_values().filter(|g| g.len() > 1).collect()
}

/// Compares the tree at `a` (the source) with `b` (its restore): the same
/// paths, each with the same [`Node`], and the same hard-link groups.
/// Sockets in `a` are expected to be missing from `b` (a restore skips
/// them, as restic's does). Returns every difference, one a line, or
/// `None` when there is none.
pub fn strict_diff(a: &Path, b: &Path) -> Option<String> {
    let (na, nb) = (nodes(a), nodes(b));
    let mut out = Vec::new();
    for (rel, (node, _, _)) in &na {
        match nb.get(rel) {
            None if node.kind == "socket" => {}
            None => out.push(format!("{}: missing", rel.display())),
            Some((other, _, _)) if node.kind == "socket" => {
                out.push(format!("{}: a socket restored as {other:?}", rel.display()))
            }
            Some((other, _, _)) => {
                let mut fields = Vec::new();
                if node.kind != other.kind {
                    fields.push(format!("kind {} vs {}", node.kind, other.kind));
                }
                if node.mode != other.mode {
                    fields.push(format!("mode {:o} vs {:o}", node.mode, other.mode));
                }
                if (node.uid, node.gid) != (other.uid, other.gid) {
                    fields.push(format!(
                        "owner {}:{} vs {}:{}",
                        node.uid, node.gid, other.uid, other.gid
                    ));
                }
                if node.mtime != other.mtime {
                    fields.push(format!("mtime {:?} vs {:?}", node.mtime, other.mtime));
                }
                if node.content != other.content {
                    fields.push(format!(
                        "content ({} bytes vs {})",
                        node.content.len(),
                        other.content.len()
                    ));
                }
                if node.xattrs != other.xattrs {
                    let names = |x: &BTreeMap<Vec<u8>, Vec<u8>>| -> Vec<String> {
                        x.keys()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .collect()
                    };
                    fields.push(format!(
                        "xattrs {:?} vs {:?}",
                        names(&node.xattrs),
                        names(&other.xattrs)
                    ));
                }
                if node.rdev != other.rdev {
                    fields.push(format!("rdev {:x} vs {:x}", node.rdev, other.rdev));
                }
                if !fields.is_empty() {
                    out.push(format!("{}: {}", rel.display(), fields.join(", ")));
                }
            }
        }
    }
    for rel in nb.keys().filter(|rel| !na.contains_key(*rel)) {
        out.push(format!("{}: not in the source", rel.display()));
    }
    let (ga, gb) = (link_groups(a), link_groups(b));
    if ga != gb {
        out.push(format!("hard-link groups {ga:?} vs {gb:?}"));
    }
    (!out.is_empty()).then(|| out.join("\n"))
}
