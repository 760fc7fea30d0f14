//! Trees: one directory's entries, the nodes of a snapshot's Merkle DAG.
//!
//! Encoding: `"RVT"` + version byte `1` + postcard of [`Tree`]. Entries are
//! sorted by raw name bytes and unique; names are non-empty, hold neither
//! `/` nor NUL, and are neither `.` nor `..`. [`Tree::decode`] enforces all of
//! it, so restore never sees a name that could escape its target.
//!
//! A directory too large for one blob spans several ([`Tree::split`]): the
//! blob the directory entry names holds the first entries and, in `more`,
//! the ids of further parts, each a tree with the next entries and no
//! `more` of its own; names ascend across all parts. [`Tree::join`] puts
//! them back together and checks the whole.

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

/// One directory (or one part of a large one): entries sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// The entries, strictly ascending by `name`.
    pub entries: Vec<Entry>,
    /// Ids of the further parts of a directory that spans several blobs, in
    /// order; empty for most directories and in every part.
    pub more: Vec<ChunkId>,
}

/// Largest encoded part of a tree, bytes: [`Tree::split`] cuts a directory
/// into parts of at most this size (4 MiB, a quarter of the blob limit).
pub const TREE_PART_BYTES: usize = 4 << 20;

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

    /// Cuts a (sorted) directory into parts whose encodings stay within
    /// `part_bytes` (one entry per part at least). Returns the parts in
    /// order; store all but the first, then set the first's `more` to their
    /// ids. A directory that fits is one part.
    pub fn split(self, part_bytes: usize) -> Vec<Tree> {
        let mut parts = vec![Tree::default()];
        let mut size = 0usize;
        for entry in self.entries {
            // Invariant: postcard serialization of plain data cannot fail.
            let len = postcard::experimental::serialized_size(&entry).expect("entry size");
            let current = parts.last_mut().expect("parts is never empty");
            if !current.entries.is_empty() && size + len > part_bytes {
                parts.push(Tree::default());
                size = 0;
            }
            size += len;
            parts
                .last_mut()
                .expect("parts is never empty")
                .entries
                .push(entry);
        }
        parts
    }

    /// Puts a directory back together from its first part and the parts its
    /// `more` names, fetched in that order, and checks the whole.
    ///
    /// # Errors
    /// [`TreeError::Format`] for a part that names parts of its own or a
    /// count that does not match; [`TreeError::Order`] when names do not
    /// ascend across parts.
    pub fn join(mut head: Tree, parts: Vec<Tree>) -> Result<Tree, TreeError> {
        if parts.len() != head.more.len() {
            return Err(TreeError::Format("missing tree parts".into()));
        }
        for part in parts {
            if !part.more.is_empty() {
                return Err(TreeError::Format(
                    "a tree part names parts of its own".into(),
                ));
            }
            head.entries.extend(part.entries);
        }
        head.more.clear();
        head.validate()?;
        Ok(head)
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
            more: vec![],
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
    fn join_refuses_disorder_and_nesting() {
        let part = |names: &[&[u8]]| Tree {
            entries: names
                .iter()
                .map(|n| entry(n, EntryKind::File, Content::Chunks(vec![])))
                .collect(),
            more: vec![],
        };
        let mut head = part(&[b"m"]);
        head.more = vec![ChunkId([1; 32])];
        assert!(matches!(
            Tree::join(head.clone(), vec![part(&[b"a"])]),
            Err(TreeError::Order(_))
        ));
        assert!(Tree::join(head.clone(), vec![]).is_err());
        let mut nested = part(&[b"z"]);
        nested.more = vec![ChunkId([2; 32])];
        assert!(Tree::join(head.clone(), vec![nested]).is_err());
        assert_eq!(
            Tree::join(head, vec![part(&[b"z"])]).unwrap().entries.len(),
            2
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        for name in [&b".."[..], b".", b"", b"a/b", b"/etc", b"a\0b"] {
            let t = Tree {
                entries: vec![entry(name, EntryKind::File, Content::Chunks(vec![]))],
                more: vec![],
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
            more: vec![],
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
            }).collect(), more: vec![] };
            prop_assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
        }

        #[test]
        fn split_then_join_is_identity(names in proptest::collection::btree_set("[a-z]{1,40}", 0..300),
                                       part_bytes in 1usize..3000) {
            let t = Tree { entries: names.iter().map(|n| entry(n.as_bytes(), EntryKind::File, Content::Chunks(vec![]))).collect(), more: vec![] };
            let mut parts = t.clone().split(part_bytes);
            for p in &parts {
                let fits = p.encode().len() <= part_bytes + 16 || p.entries.len() == 1;
                prop_assert!(fits, "part of {} bytes", p.encode().len());
                prop_assert_eq!(&Tree::decode(&p.encode()).unwrap(), p);
            }
            let mut head = parts.remove(0);
            head.more = (0..parts.len()).map(|i| ChunkId([i as u8; 32])).collect();
            prop_assert_eq!(Tree::join(head, parts).unwrap(), t);
        }
    }
}
