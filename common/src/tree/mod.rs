//! Trees: one directory's entries, the nodes of a snapshot's Merkle DAG.
//!
//! Encoding: `"RVT"` + version byte `2` + postcard of [`Tree`]. Version 2
//! gives each chunk of a file its plaintext length ([`ChunkRef`]), so a
//! reader can seek in a file, write its chunks at their offsets in parallel
//! and check that a file's size is the sum of its chunks without reading
//! them; and each entry its owner's names and link count. Version 1 trees
//! (no lengths, no names) still decode: their chunks' lengths are `None`.
//! Entries are sorted by raw name bytes and unique; names are non-empty, hold neither
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

pub mod diff;

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

/// One chunk of a file: its id and its plaintext length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk.
    pub id: ChunkId,
    /// Plaintext length, bytes; `None` in trees of version 1, which did not
    /// record it.
    pub len: Option<u32>,
}

/// An entry's content reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// Nothing (special files).
    None,
    /// A file's chunks, in order.
    Chunks(Vec<ChunkRef>),
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
    /// The owner's user name at backup time, raw bytes; empty when the id
    /// had no name (or in a version 1 tree).
    #[serde(with = "serde_bytes")]
    pub user: Vec<u8>,
    /// The owner's group name at backup time, raw bytes; empty when the id
    /// had no name (or in a version 1 tree).
    #[serde(with = "serde_bytes")]
    pub group: Vec<u8>,
    /// Hard links to the inode (`st_nlink`); 0 in a version 1 tree. Entries
    /// of one snapshot with the same `device` and `inode` and `links > 1`
    /// are one hard-link group.
    pub links: u64,
}

impl Entry {
    /// The file's chunk ids, in order (empty for other kinds).
    pub fn chunk_ids(&self) -> impl Iterator<Item = ChunkId> + '_ {
        let chunks: &[ChunkRef] = match &self.content {
            Content::Chunks(c) => c,
            _ => &[],
        };
        chunks.iter().map(|c| c.id)
    }

    /// The sum of the file's chunk lengths, bytes, when every length is
    /// recorded (trees of version 2); `None` for a version 1 file or
    /// another kind. A sound entry's `size` equals it.
    pub fn chunk_bytes(&self) -> Option<u64> {
        match &self.content {
            Content::Chunks(c) => c
                .iter()
                .try_fold(0u64, |sum, c| sum.checked_add(u64::from(c.len?))),
            _ => None,
        }
    }
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

const MAGIC: &[u8; 4] = b"RVT\x02";
const MAGIC_V1: &[u8; 4] = b"RVT\x01";

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
        let tree = if let Some(body) = bytes.strip_prefix(MAGIC.as_slice()) {
            decode_all::<Tree>(body)?
        } else if let Some(body) = bytes.strip_prefix(MAGIC_V1.as_slice()) {
            decode_all::<v1::Tree>(body)?.into()
        } else {
            return Err(TreeError::Format("bad magic".into()));
        };
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

/// Decodes exactly `body` as one `T`.
fn decode_all<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, TreeError> {
    let (value, rest): (T, _) =
        postcard::take_from_bytes(body).map_err(|e| TreeError::Format(e.to_string()))?;
    if !rest.is_empty() {
        return Err(TreeError::Format("trailing bytes".into()));
    }
    Ok(value)
}

/// The version 1 format, kept to decode old trees.
mod v1 {
    use serde::Deserialize;

    use super::{ChunkId, ChunkRef, EntryKind, Xattr};

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub(super) enum Content {
        None,
        Chunks(Vec<ChunkId>),
        Subtree(ChunkId),
        Symlink(#[serde(with = "serde_bytes")] Vec<u8>),
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub(super) struct Entry {
        #[serde(with = "serde_bytes")]
        pub(super) name: Vec<u8>,
        pub(super) kind: EntryKind,
        pub(super) mode: u32,
        pub(super) uid: u32,
        pub(super) gid: u32,
        pub(super) mtime_ns: i64,
        pub(super) ctime_ns: i64,
        pub(super) size: u64,
        pub(super) inode: u64,
        pub(super) device: u64,
        pub(super) rdev: u64,
        pub(super) xattrs: Vec<Xattr>,
        pub(super) content: Content,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub(super) struct Tree {
        pub(super) entries: Vec<Entry>,
        pub(super) more: Vec<ChunkId>,
    }

    impl From<Tree> for super::Tree {
        fn from(t: Tree) -> Self {
            let entries = t
                .entries
                .into_iter()
                .map(|e| super::Entry {
                    name: e.name,
                    kind: e.kind,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    mtime_ns: e.mtime_ns,
                    ctime_ns: e.ctime_ns,
                    size: e.size,
                    inode: e.inode,
                    device: e.device,
                    rdev: e.rdev,
                    xattrs: e.xattrs,
                    content: match e.content {
                        Content::None => super::Content::None,
                        Content::Chunks(ids) => super::Content::Chunks(
                            ids.into_iter()
                                .map(|id| ChunkRef { id, len: None })
                                .collect(),
                        ),
                        Content::Subtree(id) => super::Content::Subtree(id),
                        Content::Symlink(t) => super::Content::Symlink(t),
                    },
                    user: Vec::new(),
                    group: Vec::new(),
                    links: 0,
                })
                .collect();
            super::Tree {
                entries,
                more: t.more,
            }
        }
    }
}

/// An entry named `name` of `kind` with `content` and fixed metadata
/// (mode 0o100644, uid 1, gid 2, times 3 and 4 ns, size 5, ...), for tests.
#[cfg(test)]
pub(crate) fn test_entry(name: &[u8], kind: EntryKind, content: Content) -> Entry {
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
        user: b"alice".to_vec(),
        group: b"staff".to_vec(),
        links: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use super::test_entry as entry;

    fn chunks(ids: &[(u8, u32)]) -> Content {
        Content::Chunks(
            ids.iter()
                .map(|&(b, len)| ChunkRef {
                    id: ChunkId([b; 32]),
                    len: Some(len),
                })
                .collect(),
        )
    }

    #[test]
    fn version_1_trees_decode_without_lengths_or_names() {
        let old = v1::Tree {
            entries: vec![v1::Entry {
                name: b"f".to_vec(),
                kind: EntryKind::File,
                mode: 0o100644,
                uid: 7,
                gid: 8,
                mtime_ns: -5,
                ctime_ns: 9,
                size: 10,
                inode: 11,
                device: 12,
                rdev: 0,
                xattrs: vec![],
                content: v1::Content::Chunks(vec![ChunkId([4; 32]), ChunkId([5; 32])]),
            }],
            more: vec![ChunkId([6; 32])],
        };
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend(postcard::to_stdvec(&old).unwrap());
        let t = Tree::decode(&bytes).unwrap();
        let e = &t.entries[0];
        assert_eq!((e.uid, e.gid, e.size, e.mtime_ns), (7, 8, 10, -5));
        assert_eq!(
            e.chunk_ids().collect::<Vec<_>>(),
            vec![ChunkId([4; 32]), ChunkId([5; 32])]
        );
        assert_eq!(e.chunk_bytes(), None, "a version 1 file has no lengths");
        assert!(e.user.is_empty() && e.group.is_empty() && e.links == 0);
        assert_eq!(t.more, vec![ChunkId([6; 32])]);
        // Written again, it is a version 2 tree that decodes to the same.
        assert!(t.encode().starts_with(MAGIC));
        assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn chunk_bytes_sums_lengths() {
        let e = entry(b"f", EntryKind::File, chunks(&[(1, 100), (2, 28)]));
        assert_eq!(e.chunk_bytes(), Some(128));
        let mut partial = e.clone();
        if let Content::Chunks(c) = &mut partial.content {
            c[1].len = None;
        }
        assert_eq!(partial.chunk_bytes(), None);
        let empty = entry(b"e", EntryKind::File, chunks(&[]));
        assert_eq!(empty.chunk_bytes(), Some(0));
        let dir = entry(b"d", EntryKind::Dir, Content::Subtree(ChunkId([1; 32])));
        assert_eq!(dir.chunk_bytes(), None);
    }

    #[test]
    fn round_trip() {
        let mut t = Tree {
            more: vec![],
            entries: vec![
                entry(b"z\xff\n name", EntryKind::File, chunks(&[(1, 77)])),
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
                .map(|n| entry(n, EntryKind::File, chunks(&[])))
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
                entries: vec![entry(name, EntryKind::File, chunks(&[]))],
                more: vec![],
            };
            assert!(
                matches!(Tree::decode(&t.encode()), Err(TreeError::BadName(_))),
                "{name:?}"
            );
        }
        let dup = Tree {
            entries: vec![
                entry(b"a", EntryKind::File, chunks(&[])),
                entry(b"a", EntryKind::File, chunks(&[])),
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
                let mut e = entry(n.as_bytes(), EntryKind::File, chunks(&[(3, 9)]));
                e.size = size;
                e
            }).collect(), more: vec![] };
            prop_assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
        }

        #[test]
        fn split_then_join_is_identity(names in proptest::collection::btree_set("[a-z]{1,40}", 0..300),
                                       part_bytes in 1usize..3000) {
            let t = Tree { entries: names.iter().map(|n| entry(n.as_bytes(), EntryKind::File, chunks(&[]))).collect(), more: vec![] };
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
