//! The difference between two directory trees: a merge of their entry
//! lists, both sorted by name ([`Tree::validate`] enforces it for every
//! decoded tree).
//!
//! [`diff`] walks both lists once, in name order, and yields one
//! [`Change`] per name that differs: added, removed, modified, or a
//! directory on both sides. It reads one level: for a directory whose tree
//! id differs on the two sides it yields the pair of subtree ids
//! ([`Change::Dir`]), and the caller, which can fetch trees, fetches both
//! and diffs them in turn. Equal subtree ids mean equal contents (a tree id
//! is the keyed hash of its encoding), so an unchanged subtree costs no
//! read.
//!
//! What counts as a difference ([`differs`]):
//! - **content**: the chunk list, the subtree id or the link target
//!   differ (so does a change of kind between file, directory and link);
//! - **metadata**, when the content is equal: kind, mode, owner (uid,
//!   gid), mtime, size or extended attributes. The change time, the inode
//!   and device numbers, the owner's names and the link count are not
//!   compared: they move without the file changing (a restore, a copy to
//!   another disk).
//! - Two directories are compared on mode and owner only: a directory's
//!   mtime and size move with its contents, which the subtree diff reports.

use std::cmp::Ordering;

use super::{Content, Entry, Tree};
use crate::ChunkId;

/// How two entries of the same name differ ([`differs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Differs {
    /// The content differs (and maybe metadata too).
    Content,
    /// Only the metadata differs.
    Metadata,
}

/// One difference between two entry lists, for one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// Present in the new list only.
    Added(&'a Entry),
    /// Present in the old list only.
    Removed(&'a Entry),
    /// Present in both, not both directories, and different.
    Modified {
        /// The old entry.
        old: &'a Entry,
        /// The new entry.
        new: &'a Entry,
        /// What differs.
        differs: Differs,
    },
    /// A directory (content [`Content::Subtree`]) in both, whose mode or
    /// owner differ, or whose trees do, or both.
    Dir {
        /// The old entry.
        old: &'a Entry,
        /// The new entry.
        new: &'a Entry,
        /// Whether mode, uid or gid differ.
        metadata: bool,
        /// The old and the new tree id when they differ: the caller fetches
        /// both and diffs them for the changes below this directory.
        subtrees: Option<(ChunkId, ChunkId)>,
    },
}

impl<'a> Change<'a> {
    /// The entry name the change is about (raw bytes).
    pub fn name(&self) -> &'a [u8] {
        match self {
            Change::Added(e) | Change::Removed(e) => &e.name,
            Change::Modified { new, .. } | Change::Dir { new, .. } => &new.name,
        }
    }
}

/// The changes from tree `old` to tree `new`, one level deep, in
/// ascending name order: see [`diff_entries`]. Both trees are whole
/// directories (`more` is not followed: join the parts first,
/// [`Tree::join`]).
pub fn diff<'a>(old: &'a Tree, new: &'a Tree) -> impl Iterator<Item = Change<'a>> + 'a {
    diff_entries(&old.entries, &new.entries)
}

/// The changes from entry list `old` to entry list `new`, each sorted
/// strictly ascending by name: one [`Change`] per name that differs
/// ([`change`]), in ascending name order. Lists out of order give a
/// meaningless answer, but still one that ends, without a panic.
pub fn diff_entries<'a>(
    old: &'a [Entry],
    new: &'a [Entry],
) -> impl Iterator<Item = Change<'a>> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        loop {
            let a = old.get(i);
            let b = new.get(j);
            let order = match (a, b) {
                (None, None) => return None,
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
            };
            let found = match order {
                Ordering::Less => {
                    i += 1;
                    change(a, None)
                }
                Ordering::Greater => {
                    j += 1;
                    change(None, b)
                }
                Ordering::Equal => {
                    i += 1;
                    j += 1;
                    change(a, b)
                }
            };
            if found.is_some() {
                return found;
            }
        }
    })
}

/// The change between two entries of the same name, either of which may be
/// absent: `None` when both are absent or they do not differ.
pub fn change<'a>(old: Option<&'a Entry>, new: Option<&'a Entry>) -> Option<Change<'a>> {
    match (old, new) {
        (None, None) => None,
        (None, Some(b)) => Some(Change::Added(b)),
        (Some(a), None) => Some(Change::Removed(a)),
        (Some(a), Some(b)) => {
            if let (Content::Subtree(ta), Content::Subtree(tb)) = (&a.content, &b.content) {
                // A directory's mtime moves with its contents: only its
                // mode and owner are compared.
                let metadata = a.mode != b.mode || a.uid != b.uid || a.gid != b.gid;
                let subtrees = (ta != tb).then_some((*ta, *tb));
                (metadata || subtrees.is_some()).then_some(Change::Dir {
                    old: a,
                    new: b,
                    metadata,
                    subtrees,
                })
            } else {
                differs(a, b).map(|differs| Change::Modified {
                    old: a,
                    new: b,
                    differs,
                })
            }
        }
    }
}

/// How entry `new` differs from entry `old` (any kinds, directories
/// included, compared like files): [`Differs::Content`] when the content
/// differs, else [`Differs::Metadata`] when [`metadata_differs`], else
/// `None`.
pub fn differs(old: &Entry, new: &Entry) -> Option<Differs> {
    if old.content != new.content {
        Some(Differs::Content)
    } else if metadata_differs(old, new) {
        Some(Differs::Metadata)
    } else {
        None
    }
}

/// Whether two entries differ in metadata, content apart: kind, mode,
/// owner (uid, gid), mtime, size or extended attributes.
pub fn metadata_differs(a: &Entry, b: &Entry) -> bool {
    a.kind != b.kind
        || a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.mtime_ns != b.mtime_ns
        || a.size != b.size
        || a.xattrs != b.xattrs
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::tree::{ChunkRef, EntryKind, Xattr};

    fn file(name: &str, chunk: u8) -> Entry {
        let chunks = vec![ChunkRef {
            id: ChunkId([chunk; 32]),
            len: Some(5),
        }];
        crate::tree::test_entry(name.as_bytes(), EntryKind::File, Content::Chunks(chunks))
    }

    fn dir(name: &str, tree: u8) -> Entry {
        Entry {
            kind: EntryKind::Dir,
            mode: 0o040755,
            content: Content::Subtree(ChunkId([tree; 32])),
            ..file(name, 0)
        }
    }

    fn names<'a>(changes: impl IntoIterator<Item = Change<'a>>) -> Vec<String> {
        changes
            .into_iter()
            .map(|c| String::from_utf8_lossy(c.name()).into_owned())
            .collect()
    }

    #[test]
    fn a_merge_yields_added_removed_and_modified_in_name_order() {
        let old = vec![file("a", 1), file("b", 1), file("c", 1), file("e", 1)];
        let mut b2 = file("b", 2);
        b2.mtime_ns = 99;
        let mut c2 = file("c", 1);
        c2.mode = 0o100600;
        let new = vec![b2.clone(), c2.clone(), file("d", 1), file("e", 1)];
        let changes: Vec<_> = diff_entries(&old, &new).collect();
        assert_eq!(
            changes,
            vec![
                Change::Removed(&old[0]),
                Change::Modified {
                    old: &old[1],
                    new: &b2,
                    differs: Differs::Content
                },
                Change::Modified {
                    old: &old[2],
                    new: &c2,
                    differs: Differs::Metadata
                },
                Change::Added(&new[2]),
            ]
        );
    }

    #[test]
    fn the_metadata_rule() {
        let a = file("f", 1);
        let same = |f: fn(&mut Entry)| {
            let mut b = a.clone();
            f(&mut b);
            differs(&a, &b)
        };
        assert_eq!(same(|_| {}), None);
        // Not compared: they move without the file changing.
        assert_eq!(same(|e| e.ctime_ns = 40), None);
        assert_eq!(same(|e| e.inode = 60), None);
        assert_eq!(same(|e| e.device = 70), None);
        assert_eq!(same(|e| e.rdev = 1), None);
        assert_eq!(same(|e| e.links = 2), None);
        assert_eq!(same(|e| e.user = b"bob".to_vec()), None);
        assert_eq!(same(|e| e.group = b"wheel".to_vec()), None);
        // Compared.
        assert_eq!(same(|e| e.mode = 0o100600), Some(Differs::Metadata));
        assert_eq!(same(|e| e.uid = 9), Some(Differs::Metadata));
        assert_eq!(same(|e| e.gid = 9), Some(Differs::Metadata));
        assert_eq!(same(|e| e.mtime_ns = 9), Some(Differs::Metadata));
        assert_eq!(same(|e| e.size = 9), Some(Differs::Metadata));
        assert_eq!(same(|e| e.kind = EntryKind::Fifo), Some(Differs::Metadata));
        assert_eq!(
            same(|e| e.xattrs = vec![Xattr {
                name: b"user.x".to_vec(),
                value: vec![]
            }]),
            Some(Differs::Metadata)
        );
        assert_eq!(
            same(|e| e.content = Content::Symlink(b"x".to_vec())),
            Some(Differs::Content)
        );
    }

    #[test]
    fn directories_compare_on_mode_and_owner_and_hand_back_differing_trees() {
        let a = dir("d", 1);
        // mtime and size move with the contents: not reported.
        let mut touched = dir("d", 1);
        touched.mtime_ns = 77;
        touched.size = 4096;
        assert_eq!(change(Some(&a), Some(&touched)), None);
        // New contents: the pair of trees, no metadata row.
        let mut grown = touched.clone();
        grown.content = Content::Subtree(ChunkId([2; 32]));
        assert_eq!(
            change(Some(&a), Some(&grown)),
            Some(Change::Dir {
                old: &a,
                new: &grown,
                metadata: false,
                subtrees: Some((ChunkId([1; 32]), ChunkId([2; 32])))
            })
        );
        // A new owner, same contents.
        let mut chowned = dir("d", 1);
        chowned.uid = 0;
        assert_eq!(
            change(Some(&a), Some(&chowned)),
            Some(Change::Dir {
                old: &a,
                new: &chowned,
                metadata: true,
                subtrees: None
            })
        );
        // A directory that became a file is a content change.
        let f = file("d", 1);
        assert_eq!(
            change(Some(&a), Some(&f)),
            Some(Change::Modified {
                old: &a,
                new: &f,
                differs: Differs::Content
            })
        );
        assert_eq!(change(None, None), None);
    }

    /// One entry from a few small choices, so that two lists often hold
    /// the same name with equal or different entries.
    fn entry() -> impl Strategy<Value = (u8, u8, u8, u8)> {
        (0u8..3, 0u8..3, 0u8..2, 0u8..2)
    }

    fn build(name: &str, (kind, content, mode, mtime): (u8, u8, u8, u8)) -> Entry {
        let mut e = match kind {
            0 => file(name, content),
            1 => dir(name, content),
            _ => Entry {
                kind: EntryKind::Symlink,
                content: Content::Symlink(vec![content]),
                ..file(name, 0)
            },
        };
        e.mode |= u32::from(mode);
        e.mtime_ns = i64::from(mtime);
        e
    }

    fn list() -> impl Strategy<Value = Vec<Entry>> {
        proptest::collection::btree_map("[a-e]{1,2}", entry(), 0..16)
            .prop_map(|m| m.into_iter().map(|(n, e)| build(&n, e)).collect())
    }

    fn name_set(list: &[Entry]) -> BTreeSet<Vec<u8>> {
        list.iter().map(|e| e.name.clone()).collect()
    }

    fn of_kind<'a>(changes: &[Change<'a>], pick: fn(&Change<'a>) -> bool) -> BTreeSet<Vec<u8>> {
        changes
            .iter()
            .filter(|c| pick(c))
            .map(|c| c.name().to_vec())
            .collect()
    }

    fn added(c: &Change<'_>) -> bool {
        matches!(c, Change::Added(_))
    }

    fn removed(c: &Change<'_>) -> bool {
        matches!(c, Change::Removed(_))
    }

    proptest! {
        #[test]
        fn a_list_does_not_differ_from_itself(a in list()) {
            prop_assert_eq!(diff_entries(&a, &a).count(), 0);
            let t = Tree { entries: a, more: vec![] };
            prop_assert_eq!(diff(&t, &t).count(), 0);
        }

        #[test]
        fn each_name_at_most_once_in_ascending_order(a in list(), b in list()) {
            let changes: Vec<_> = diff_entries(&a, &b).collect();
            let union: BTreeSet<_> = name_set(&a).union(&name_set(&b)).cloned().collect();
            for w in changes.windows(2) {
                prop_assert!(w[0].name() < w[1].name(), "{:?}", names(w.iter().copied()));
            }
            prop_assert!(changes.iter().all(|c| union.contains(c.name())));
        }

        #[test]
        fn added_and_removed_are_the_set_differences(a in list(), b in list()) {
            let changes: Vec<_> = diff_entries(&a, &b).collect();
            let (na, nb) = (name_set(&a), name_set(&b));
            prop_assert_eq!(of_kind(&changes, added), nb.difference(&na).cloned().collect::<BTreeSet<_>>());
            prop_assert_eq!(of_kind(&changes, removed), na.difference(&nb).cloned().collect::<BTreeSet<_>>());
            // The rest are names on both sides.
            let both: BTreeSet<_> = na.intersection(&nb).cloned().collect();
            prop_assert!(of_kind(&changes, |c| !added(c) && !removed(c)).is_subset(&both));
        }

        #[test]
        fn swapping_the_sides_swaps_added_and_removed(a in list(), b in list()) {
            let ab: Vec<_> = diff_entries(&a, &b).collect();
            let ba: Vec<_> = diff_entries(&b, &a).collect();
            prop_assert_eq!(of_kind(&ab, added), of_kind(&ba, removed));
            prop_assert_eq!(of_kind(&ab, removed), of_kind(&ba, added));
            // Differences between common names are symmetric.
            prop_assert_eq!(names(ab), names(ba));
        }

        #[test]
        fn the_merge_is_the_per_name_change_over_the_union(a in list(), b in list()) {
            let by_name = |l: &[Entry]| -> BTreeMap<Vec<u8>, Entry> {
                l.iter().map(|e| (e.name.clone(), e.clone())).collect()
            };
            let (ma, mb) = (by_name(&a), by_name(&b));
            let union: BTreeSet<_> = ma.keys().chain(mb.keys()).cloned().collect();
            let expected: Vec<_> = union
                .iter()
                .filter_map(|n| change(ma.get(n), mb.get(n)))
                .collect();
            prop_assert_eq!(diff_entries(&a, &b).collect::<Vec<_>>(), expected);
        }
    }
}
