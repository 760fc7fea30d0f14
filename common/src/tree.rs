//! Trees: one directory's entries, the nodes of a snapshot's Merkle DAG.
//!
//! Encoding: `"RVT"` + version byte `1` + postcard of [`Tree`]. Entries are
//! sorted by raw name bytes and unique; names are non-empty, hold neither
//! `/` nor NUL, and are neither `.` nor `..`. [`Tree::decode`] enforces all of
//! it, so restore never sees a name that could escape its target.

use serde::{Deserialize, Serialize};

use crate::ChunkId;

/// What a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file; content is [`Content::Chunks`].
    File,
    /// A directory; content is [`Content::Subtree`].
    Dir,
    /// A symbolic link; content is [`Content::Symlink`].
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A Unix socket.
    Socket,
}

/// An entry's content reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// Nothing (special files).
    None,
    /// A file's chunks, in order.
    Chunks(Vec<ChunkId>),
    /// A directory's tree id.
    Subtree(ChunkId),
    /// A symlink's target, raw bytes.
    Symlink(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Attribute name, raw bytes.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Attribute value, raw bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One directory entry with its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// File name, raw bytes (`OsStr` bytes on Unix; need not be UTF-8).
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Kind of entry.
    pub kind: EntryKind,
    /// Unix permission bits and file type bits (`st_mode`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the Unix epoch.
    pub ctime_ns: i64,
    /// Size, bytes (files: content length).
    pub size: u64,
    /// Inode number at backup time (change detection, hard links).
    pub inode: u64,
    /// Device number at backup time.
    pub device: u64,
    /// Device number of a device node (`st_rdev`).
    pub rdev: u64,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<Xattr>,
    /// Chunks, subtree or link target.
    pub content: Content,
}

/// One directory: entries sorted by name bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// The entries, strictly ascending by `name`.
    pub entries: Vec<Entry>,
}

/// Errors from decoding or checking a tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    /// Not a tree encoding of a version this build reads.
    #[error("not a ringvault tree: {0}")]
    Format(String),
    /// An entry name that could escape a restore target or is malformed.
    #[error("entry name {0:?} is not allowed (empty, '.', '..', or holds '/' or NUL)")]
    BadName(String),
    /// Entries out of order or duplicated.
    #[error("entry {0:?} is out of order or duplicated")]
    Order(String),
    /// An entry whose content does not match its kind.
    #[error("entry {0:?} has content that does not match its kind")]
    Content(String),
}

const MAGIC: &[u8; 4] = b"RVT\x01";

/// Whether `name` may be a directory entry name: non-empty, no `/`, no NUL,
/// not `.` or `..`.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.iter().any(|&b| b == b'/' || b == 0)
}

impl Tree {
    /// Sorts entries by name; call before [`Tree::encode`].
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Checks names, order and content kinds.
    ///
    /// # Errors
    /// The first [`TreeError`] found.
    pub fn validate(&self) -> Result<(), TreeError> {
        let lossy = |n: &[u8]| String::from_utf8_lossy(n).into_owned();
        let mut prev: Option<&[u8]> = None;
        for e in &self.entries {
            if !valid_name(&e.name) {
                return Err(TreeError::BadName(lossy(&e.name)));
            }
            if prev.is_some_and(|p| p >= e.name.as_slice()) {
                return Err(TreeError::Order(lossy(&e.name)));
            }
            prev = Some(&e.name);
            let fits = matches!(
                (e.kind, &e.content),
                (EntryKind::File, Content::Chunks(_))
                    | (EntryKind::Dir, Content::Subtree(_))
                    | (EntryKind::Symlink, Content::Symlink(_))
                    | (
                        EntryKind::Fifo
                            | EntryKind::CharDevice
                            | EntryKind::BlockDevice
                            | EntryKind::Socket,
                        Content::None
                    )
            );
            if !fits {
                return Err(TreeError::Content(lossy(&e.name)));
            }
        }
        Ok(())
    }

    /// Encodes a tree (which must be sorted).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        // Invariant: postcard serialization of plain data into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).expect("postcard to vec"));
        out
    }

    /// Decodes and validates a tree.
    ///
    /// # Errors
    /// [`TreeError`] for bad bytes or an invalid tree.
    pub fn decode(bytes: &[u8]) -> Result<Self, TreeError> {
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| TreeError::Format("bad magic".into()))?;
        let (tree, rest): (Tree, _) =
            postcard::take_from_bytes(body).map_err(|e| TreeError::Format(e.to_string()))?;
        if !rest.is_empty() {
            return Err(TreeError::Format("trailing bytes".into()));
        }
        tree.validate()?;
        Ok(tree)
    }

    /// Finds an entry by name.
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(name: &[u8], kind: EntryKind, content: Content) -> Entry {
        Entry {
            name: name.to_vec(),
            kind,
            mode: 0o100644,
            uid: 1,
            gid: 2,
            mtime_ns: 3,
            ctime_ns: 4,
            size: 5,
            inode: 6,
            device: 7,
            rdev: 0,
            xattrs: vec![],
            content,
        }
    }

    #[test]
    fn round_trip() {
        let mut t = Tree {
            entries: vec![
                entry(
                    b"z\xff\n name",
                    EntryKind::File,
                    Content::Chunks(vec![ChunkId([1; 32])]),
                ),
                entry(b"a", EntryKind::Dir, Content::Subtree(ChunkId([2; 32]))),
                entry(b"l", EntryKind::Symlink, Content::Symlink(b"../x".to_vec())),
            ],
        };
        t.sort();
        assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn hostile_names_are_refused() {
        for name in [&b".."[..], b".", b"", b"a/b", b"/etc", b"a\0b"] {
            let t = Tree {
                entries: vec![entry(name, EntryKind::File, Content::Chunks(vec![]))],
            };
            assert!(
                matches!(Tree::decode(&t.encode()), Err(TreeError::BadName(_))),
                "{name:?}"
            );
        }
        let dup = Tree {
            entries: vec![
                entry(b"a", EntryKind::File, Content::Chunks(vec![])),
                entry(b"a", EntryKind::File, Content::Chunks(vec![])),
            ],
        };
        assert!(matches!(
            Tree::decode(&dup.encode()),
            Err(TreeError::Order(_))
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let _ = Tree::decode(&bytes);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            let _ = Tree::decode(&framed);
        }

        #[test]
        fn encode_decode(names in proptest::collection::btree_set("[a-z]{1,12}", 0..20), size in any::<u64>()) {
            let t = Tree { entries: names.iter().map(|n| {
                let mut e = entry(n.as_bytes(), EntryKind::File, Content::Chunks(vec![ChunkId([3; 32])]));
                e.size = size;
                e
            }).collect() };
            prop_assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
        }
    }
}
