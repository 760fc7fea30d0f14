//! Unit tests of the chunk stores: most checks run against both
//! [`FsStore`] and [`MemStore`].

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{Database, ReadableDatabase, ReadableTable, TableHandle};
use ringvault_common::wire::{DIGEST_BUCKETS, StoreState};

use super::fs::{HeldRead, REDB_MAGIC_LEN};
use super::keys::{BLOBS, Location, QUARANTINE, blob_key, decode_key, decode_timed};
use super::migrate::{BLOBS_V1, v1_key_to_v2};
use super::segment::{list_segments, segment_path};
use super::summaries::xor_into;
use super::*;

fn repo() -> RepoId {
    RepoId::new("r").unwrap()
}

fn blobs(n: u8) -> Vec<(ChunkId, Bytes)> {
    (0..n)
        .map(|i| (ChunkId([i; 32]), Bytes::from(vec![i; 100 + usize::from(i)])))
        .collect()
}

fn exercise(store: &dyn ChunkStore) {
    store.put_blobs(&repo(), blobs(10)).unwrap();
    store.put_blobs(&repo(), blobs(12)).unwrap();
    assert_eq!(store.stats().unwrap().0, 12);
    let other = RepoId::new("other").unwrap();
    assert_eq!(store.has(&other, &[ChunkId([1; 32])]).unwrap(), [false]);
    assert_eq!(
        store.get_blob(&repo(), &ChunkId([3; 32])).unwrap().unwrap(),
        Bytes::from(vec![3u8; 103])
    );
    assert!(
        store
            .get_blob(&repo(), &ChunkId([99; 32]))
            .unwrap()
            .is_none()
    );
    store
        .put_record(RecordKind::Key, &repo(), &[0; 32], b"k1", true)
        .unwrap();
    store
        .put_record(RecordKind::Key, &repo(), &[0; 32], b"k1", true)
        .unwrap();
    assert!(matches!(
        store.put_record(RecordKind::Key, &repo(), &[0; 32], b"k2", true),
        Err(StoreError::Exists)
    ));
    store
        .put_record(RecordKind::Snapshot, &repo(), &[1; 32], b"s1", false)
        .unwrap();
    store
        .put_record(RecordKind::Snapshot, &other, &[2; 32], b"s2", false)
        .unwrap();
    let list = store.list_records(RecordKind::Snapshot, &repo()).unwrap();
    assert_eq!(list, vec![([1u8; 32], b"s1".to_vec())]);
}

#[test]
fn mem_store() {
    exercise(&MemStore::default());
}

/// `get_blobs` on a store holding `blobs(12)`: answers in order,
/// missing ids as `None`, and stops at its byte budget.
fn exercise_get_blobs(store: &dyn ChunkStore) {
    store.put_blobs(&repo(), blobs(12)).unwrap();
    let ids = [ChunkId([4; 32]), ChunkId([99; 32]), ChunkId([0; 32])];
    let got: Vec<Option<Bytes>> = store
        .get_blobs(&repo(), &ids, usize::MAX)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        got,
        [
            Some(Bytes::from(vec![4u8; 104])),
            None,
            Some(Bytes::from(vec![0u8; 100]))
        ]
    );
    // The blob that reaches the budget is the last one read.
    let all: Vec<ChunkId> = (0..12).map(|i| ChunkId([i; 32])).collect();
    let got = store.get_blobs(&repo(), &all, 201).unwrap();
    assert_eq!(got.len(), 2, "100 + 101 bytes reach 201");
    assert_eq!(store.get_blobs(&repo(), &all, 0).unwrap().len(), 1);
    assert!(store.get_blobs(&repo(), &[], 0).unwrap().is_empty());
}

#[test]
fn get_blobs_answers_in_order_within_its_byte_budget() {
    exercise_get_blobs(&MemStore::default());
    let dir = tempfile::tempdir().unwrap();
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    exercise_get_blobs(&s);
    drop(s);
    // A bad blob is answered bad on its own; the others still come.
    let seg = dir.path().join("segments/00000001.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    let got = s
        .get_blobs(&repo(), &[ChunkId([11; 32]), ChunkId([1; 32])], usize::MAX)
        .unwrap();
    assert!(
        matches!(got[0], Err(StoreError::Corrupt { .. })),
        "{:?}",
        got[0]
    );
    assert_eq!(got[1].as_ref().unwrap().as_ref().unwrap().len(), 101);
}

#[test]
fn fs_store_survives_reopen_and_detects_rot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        exercise(&s);
    }
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    assert_eq!(s.stats().unwrap().0, 12);
    assert_eq!(
        s.get_blob(&repo(), &ChunkId([5; 32]))
            .unwrap()
            .unwrap()
            .len(),
        105
    );
    s.put_blobs(
        &repo(),
        vec![(ChunkId([200; 32]), Bytes::from_static(b"new"))],
    )
    .unwrap();
    drop(s);
    // Flip a byte of every blob body in the first segment.
    let seg = dir.path().join("segments/00000001.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    assert!(matches!(
        s.get_blob(&repo(), &ChunkId([11; 32])),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(
        &s.get_blob(&repo(), &ChunkId([200; 32])).unwrap().unwrap()[..],
        b"new"
    );
}

#[test]
fn torn_tail_is_never_read_as_good() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        s.put_blobs(&repo(), blobs(3)).unwrap();
    }
    // A crash mid-append: garbage after the last record, no index entry.
    let seg = dir.path().join("segments/00000001.seg");
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(b"RVR1\x01r half a record").unwrap();
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    assert_eq!(s.stats().unwrap().0, 3);
    s.put_blobs(&repo(), blobs(5)).unwrap();
    for (id, b) in blobs(5) {
        assert_eq!(s.get_blob(&repo(), &id).unwrap().unwrap(), b);
    }
    assert!(dir.path().join("segments/00000002.seg").exists());
}

#[test]
fn concurrent_puts_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(FsStore::open(dir.path(), FsStoreOptions::default()).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..50u8 {
                    let mut id = ChunkId([0; 32]);
                    id.0[..2].copy_from_slice(&(u16::from(t) * 50 + u16::from(i)).to_le_bytes());
                    s.put_blobs(&repo(), vec![(id, Bytes::from(vec![t; 64]))])
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.stats().unwrap().0, 400);
}

#[test]
fn a_failed_group_commit_carries_its_typed_cause() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    // The first put makes segment 1: a directory in its place fails it.
    let taken = segment_path(&dir.path().join("segments"), 1);
    std::fs::create_dir(&taken).unwrap();
    let e = s.put_blobs(&repo(), blobs(2)).unwrap_err();
    let StoreError::Commit(cause) = &e else {
        panic!("not a failed group commit: {e:?}");
    };
    assert!(
        matches!(&**cause, StoreError::Io { path, source }
            if *path == taken && source.kind() == std::io::ErrorKind::AlreadyExists),
        "{cause:?}"
    );
    assert!(
        e.to_string().starts_with("group commit failed: I/O on "),
        "{e}"
    );
    assert_eq!(s.stats().unwrap().0, 0);
}

use ringvault_common::wire::{PARTITION_BITMAP_BYTES, bitmap_of};

/// An id in partition `p`.
fn id_in(p: u16, n: u8) -> ChunkId {
    let mut id = [n; 32];
    id[..2].copy_from_slice(&p.to_be_bytes());
    ChunkId(id)
}

fn all_partitions() -> Vec<u8> {
    vec![0xff; PARTITION_BITMAP_BYTES]
}

type Summary = (Vec<[u8; 32]>, Vec<(u16, u32)>, (u64, u64), u64, (u64, u64));

fn summary(s: &dyn ChunkStore) -> Summary {
    (
        s.digests(&all_partitions(), true),
        s.partition_counts(),
        s.stats().unwrap(),
        s.quarantined(),
        s.trash_stats(),
    )
}

/// Blobs over a few partitions (including the first and last) and two
/// repositories.
fn spread() -> Vec<(RepoId, ChunkId, Bytes)> {
    let other = RepoId::new("other").unwrap();
    let mut out = Vec::new();
    for (i, p) in [0u16, 1, 0x0102, 0x0103, 0x8000, 0xffff]
        .into_iter()
        .enumerate()
    {
        for n in 0..4u8 {
            let body = Bytes::from(vec![n; 10 + i + usize::from(n)]);
            out.push((repo(), id_in(p, n), body.clone()));
            if n % 2 == 0 {
                out.push((other.clone(), id_in(p, n), body));
            }
        }
    }
    out
}

fn put_each(s: &dyn ChunkStore, blobs: impl IntoIterator<Item = (RepoId, ChunkId, Bytes)>) {
    for (r, id, b) in blobs {
        s.put_blobs(&r, vec![(id, b)]).unwrap();
    }
}

fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn digests_depend_on_the_set_not_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    put_each(&fs, spread());
    let mem = MemStore::default();
    put_each(&mem, spread().into_iter().rev());
    let all = all_partitions();
    assert_eq!(fs.digests(&all, true), mem.digests(&all, true));
    assert_eq!(fs.digests(&all, false), mem.digests(&all, false));
    assert_eq!(summary(&fs), summary(&mem));
    assert_eq!(fs.digests(&all, true).len(), 1 << 16);
    assert_eq!(fs.digests(&all, false).len(), DIGEST_BUCKETS);
    // One blob fewer, or the same ids under another repository: other
    // digests, in exactly the partitions concerned.
    let fewer = MemStore::default();
    put_each(&fewer, spread().into_iter().skip(1));
    let diff: Vec<u16> = (0..=u16::MAX)
        .zip(
            fewer
                .digests(&all, true)
                .iter()
                .zip(&fs.digests(&all, true)),
        )
        .filter(|(_, (a, b))| a != b)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(diff, [0]);
    assert_ne!(
        fewer.digests(&bitmap_of([0]), true),
        fs.digests(&bitmap_of([0]), true)
    );
    assert_eq!(
        fewer.digests(&bitmap_of([1]), true),
        fs.digests(&bitmap_of([1]), true)
    );
    let moved = MemStore::default();
    let third = RepoId::new("third").unwrap();
    put_each(
        &moved,
        spread()
            .into_iter()
            .map(|(r, id, b)| (if r == repo() { r } else { third.clone() }, id, b)),
    );
    assert_eq!(moved.stats().unwrap(), fs.stats().unwrap());
    assert_ne!(moved.digests(&all, false), fs.digests(&all, false));
    // An empty partition's digest is zero.
    assert_eq!(fs.digests(&bitmap_of([7]), true), [[0u8; 32]]);
}

#[test]
fn folded_digests_are_xor_of_partition_digests() {
    let s = MemStore::default();
    for p in (0..=u16::MAX).step_by(97) {
        s.put_blobs(&repo(), vec![(id_in(p, 1), Bytes::from_static(b"x"))])
            .unwrap();
    }
    let chosen: Vec<u16> = (0..=u16::MAX).filter(|p| p % 3 != 0).collect();
    let bitmap = bitmap_of(chosen.iter().copied());
    let per = s.digests(&bitmap, true);
    assert_eq!(per.len(), chosen.len());
    let mut folded = vec![[0u8; 32]; DIGEST_BUCKETS];
    for (p, d) in chosen.iter().zip(&per) {
        xor_into(&mut folded[usize::from(p >> 8)], d);
    }
    assert_eq!(s.digests(&bitmap, false), folded);
    assert!(folded.iter().any(|d| *d != [0; 32]));
    // A short bitmap counts its missing bits as clear.
    assert_eq!(s.digests(&[], true), Vec::<[u8; 32]>::new());
    assert_eq!(s.digests(&[], false), vec![[0u8; 32]; DIGEST_BUCKETS]);
}

fn check_paging(s: &dyn ChunkStore) {
    put_each(s, spread());
    for p in [0u16, 0x0102, 0xffff, 5] {
        let mut expected: Vec<(RepoId, ChunkId)> = spread()
            .into_iter()
            .filter(|(_, id, _)| id.partition() == p)
            .map(|(r, id, _)| (r, id))
            .collect();
        expected.sort_by_key(|(r, id)| blob_key(r, id));
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = s.list_partition(p, after.as_ref(), 2).unwrap();
            assert!(page.len() <= 2);
            got.extend(page.iter().cloned());
            after = page.last().cloned();
            if !more {
                break;
            }
        }
        assert_eq!(got, expected, "partition {p:#x}");
        let (whole, more) = s.list_partition(p, None, 100).unwrap();
        assert_eq!((whole, more), (expected, false));
    }
    // Zero limit: nothing, but says whether there is more.
    assert!(s.list_partition(0x0102, None, 0).unwrap().1);
    // A cursor from another partition: before it lists all, after none.
    let before = (repo(), id_in(0x0101, 0xff));
    assert_eq!(
        s.list_partition(0x0102, Some(&before), 100)
            .unwrap()
            .0
            .len(),
        6
    );
    let beyond = (repo(), id_in(0x0103, 0));
    assert_eq!(
        s.list_partition(0x0102, Some(&beyond), 100).unwrap(),
        (Vec::new(), false)
    );
}

#[test]
fn list_partition_pages_every_key_once_in_order() {
    check_paging(&MemStore::default());
    let dir = tempfile::tempdir().unwrap();
    check_paging(&FsStore::open(dir.path(), FsStoreOptions::default()).unwrap());
}

fn check_delete_and_quarantine(s: &dyn ChunkStore) {
    let blobs = spread();
    put_each(s, blobs.clone());
    let (count, bytes) = s.stats().unwrap();
    let (r0, id0, b0) = blobs[0].clone();
    let (r1, id1, b1) = blobs[1].clone();
    let (r2, id2, b2) = blobs[2].clone();
    // Deleting: the present ones count once, absent ones not at all.
    let n = s
        .delete_blobs(&[
            (r0.clone(), id0),
            (r0.clone(), id0),
            (r1.clone(), id1),
            (repo(), id_in(9, 9)),
        ])
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(s.delete_blobs(&[]).unwrap(), 0);
    assert_eq!(s.has(&r0, &[id0]).unwrap(), [false]);
    assert!(s.get_blob(&r1, &id1).unwrap().is_none());
    let gone = (b0.len() + b1.len()) as u64;
    assert_eq!(s.stats().unwrap(), (count - 2, bytes - gone));
    // Quarantine: held once, then no longer.
    assert!(s.quarantine(&r2, &id2).unwrap());
    assert!(!s.quarantine(&r2, &id2).unwrap());
    assert!(!s.quarantine(&repo(), &id_in(9, 9)).unwrap());
    assert_eq!(s.quarantined(), 1);
    assert_eq!(s.has(&r2, &[id2]).unwrap(), [false]);
    assert!(s.get_blob(&r2, &id2).unwrap().is_none());
    assert_eq!(
        s.stats().unwrap(),
        (count - 3, bytes - gone - b2.len() as u64)
    );
    // Digests and counts are those of the remaining set.
    let rest = MemStore::default();
    put_each(&rest, blobs.iter().skip(3).cloned());
    assert_eq!(
        s.digests(&all_partitions(), true),
        rest.digests(&all_partitions(), true)
    );
    assert_eq!(s.partition_counts(), rest.partition_counts());
    // A good copy can be stored again after quarantine, which drops
    // the quarantine entry.
    s.put_blobs(&r2, vec![(id2, b2.clone())]).unwrap();
    assert_eq!(s.get_blob(&r2, &id2).unwrap().unwrap(), b2);
    assert_eq!(s.quarantined(), 0);
    assert_eq!(s.stats().unwrap(), (count - 2, bytes - gone));
}

#[test]
fn delete_and_quarantine_update_has_get_digests_and_stats() {
    check_delete_and_quarantine(&MemStore::default());
    let dir = tempfile::tempdir().unwrap();
    check_delete_and_quarantine(&FsStore::open(dir.path(), FsStoreOptions::default()).unwrap());
}

/// Runs scrub steps until the cycle completes; returns the steps.
fn scrub_cycle(s: &dyn ChunkStore, max_blobs: usize, max_bytes: u64) -> Vec<ScrubStep> {
    let mut steps = Vec::new();
    let mut after = None;
    loop {
        let step = s.scrub(after.as_ref(), max_blobs, max_bytes).unwrap();
        after = step.next.clone();
        steps.push(step);
        if after.is_none() {
            return steps;
        }
        assert!(steps.len() < 1000, "scrub does not progress");
    }
}

#[test]
fn clean_scrub_cycle_quarantines_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    let mem = MemStore::default();
    for s in [&fs as &dyn ChunkStore, &mem] {
        put_each(s, spread());
        let (count, bytes) = s.stats().unwrap();
        for (max_blobs, max_bytes) in [(3, u64::MAX), (100, 25), (0, 0), (1000, u64::MAX)] {
            let steps = scrub_cycle(s, max_blobs, max_bytes);
            assert_eq!(steps.iter().map(|s| s.checked).sum::<u64>(), count);
            assert_eq!(steps.iter().map(|s| s.bytes).sum::<u64>(), bytes);
            assert!(steps.iter().all(|s| s.quarantined.is_empty()));
            assert!(steps.iter().all(|s| s.checked <= max_blobs.max(1) as u64));
        }
        assert_eq!(scrub_cycle(s, 1000, u64::MAX).len(), 1);
        assert_eq!(s.quarantined(), 0);
    }
    assert_eq!(summary(&fs), summary(&mem));
    let empty = MemStore::default();
    assert_eq!(empty.scrub(None, 10, 10).unwrap(), ScrubStep::default());
}

#[test]
fn scrub_quarantines_flipped_and_short_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let flipped = (repo(), id_in(0x0102, 1));
    let short;
    let before;
    {
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        put_each(&s, spread());
        // The last blob appended is the one a short segment loses.
        let (r, id, _) = spread().pop().unwrap();
        short = (r, id);
        before = summary(&s);
    }
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    assert_eq!(summary(&s), before);
    // Rot and a cut tail under the open store (open quarantines what a
    // short segment lacks at once).
    let loc = s.location(&flipped.0, &flipped.1).unwrap().unwrap();
    let seg = s.segment_path(loc.segment);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, loc.offset).unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], loc.offset).unwrap();
    f.set_len(f.metadata().unwrap().len() - 1).unwrap();
    assert!(matches!(
        s.get_blob(&flipped.0, &flipped.1),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        s.get_blob(&short.0, &short.1),
        Err(StoreError::Corrupt { .. })
    ));
    let steps = scrub_cycle(&s, 4, u64::MAX);
    let mut bad: Vec<_> = steps.into_iter().flat_map(|s| s.quarantined).collect();
    bad.sort();
    let mut want = vec![flipped.clone(), short.clone()];
    want.sort();
    assert_eq!(bad, want);
    assert_eq!(s.quarantined(), 2);
    assert_eq!(s.has(&flipped.0, &[flipped.1]).unwrap(), [false]);
    assert!(s.get_blob(&short.0, &short.1).unwrap().is_none());
    let rest = MemStore::default();
    put_each(
        &rest,
        spread().into_iter().filter(|(r, id, _)| {
            (r, id) != (&flipped.0, &flipped.1) && (r, id) != (&short.0, &short.1)
        }),
    );
    assert_eq!(
        s.digests(&all_partitions(), false),
        rest.digests(&all_partitions(), false)
    );
    assert_eq!(s.stats().unwrap(), rest.stats().unwrap());
    // The next cycle finds nothing more.
    let again = scrub_cycle(&s, 4, u64::MAX);
    assert!(again.iter().all(|s| s.quarantined.is_empty()));
}

#[test]
fn mem_store_scrub_finds_rot() {
    let s = MemStore::default();
    put_each(&s, spread());
    let (r, id, _) = spread()[3].clone();
    assert!(s.corrupt(&r, &id));
    assert!(matches!(
        s.get_blob(&r, &id),
        Err(StoreError::Corrupt { .. })
    ));
    let bad: Vec<_> = scrub_cycle(&s, 5, u64::MAX)
        .into_iter()
        .flat_map(|s| s.quarantined)
        .collect();
    assert_eq!(bad, [(r.clone(), id)]);
    assert_eq!(s.quarantined(), 1);
    assert_eq!(s.has(&r, &[id]).unwrap(), [false]);
}

#[test]
fn summaries_after_reopen_equal_summaries_before_close() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        put_each(&s, spread());
        s.put_blobs(&repo(), blobs(20)).unwrap();
        // A job naming a blob twice stores and counts it once.
        let twice = (id_in(0x4242, 1), Bytes::from_static(b"twice"));
        s.put_blobs(&repo(), vec![twice.clone(), twice]).unwrap();
        assert_eq!(
            s.partition_counts().iter().find(|(p, _)| *p == 0x4242),
            Some(&(0x4242, 1))
        );
        let (r, id, _) = spread()[4].clone();
        s.delete_blobs(&[(r, id), (repo(), ChunkId([3; 32]))])
            .unwrap();
        let (r, id, _) = spread()[7].clone();
        s.quarantine(&r, &id).unwrap();
        summary(&s)
    };
    assert_eq!(before.3, 1);
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    assert_eq!(summary(&s), before);
}

#[test]
fn concurrent_puts_and_deletes_keep_summaries_exact() {
    let dir = tempfile::tempdir().unwrap();
    let repos = [repo(), RepoId::new("other").unwrap()];
    let key = move |i: u32| {
        let id = id_in((i % 5) as u16, (i % 13) as u8);
        (repos[(i % 2) as usize].clone(), id)
    };
    let before = {
        let s = Arc::new(FsStore::open(dir.path(), FsStoreOptions::default()).unwrap());
        let threads: Vec<_> = (0..6u32)
            .map(|t| {
                let s = s.clone();
                let key = key.clone();
                std::thread::spawn(move || {
                    for i in 0..150u32 {
                        let k = (i * 7 + t * 11) % 64;
                        if t % 3 == 2 {
                            let keys: Vec<_> = (k..k + 3).map(&key).collect();
                            s.delete_blobs(&keys).unwrap();
                        } else {
                            let batch = (k..k + 4)
                                .map(|j| {
                                    let (r, id) = key(j);
                                    (r, id, Bytes::from(vec![j as u8; 20 + j as usize]))
                                })
                                .collect::<Vec<_>>();
                            for (r, id, b) in batch {
                                s.put_blobs(&r, vec![(id, b)]).unwrap();
                            }
                        }
                        if i % 25 == 0 {
                            let (r, id) = key(k + 5);
                            s.quarantine(&r, &id).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        summary(&*s)
    };
    assert!(before.2.0 > 0);
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    assert_eq!(summary(&s), before);
}

fn check_quota(s: &dyn ChunkStore, segments: Option<&Path>) {
    let full = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Full { quota: 1000 }));
    let seg_size = || segments.map(segment_bytes);
    let ten: Vec<_> = (0..10u8)
        .map(|i| (id_in(u16::from(i), i), Bytes::from(vec![i; 100])))
        .collect();
    s.put_blobs(&repo(), ten.clone()).unwrap();
    assert_eq!(s.stats().unwrap(), (10, 1000));
    let size = seg_size();
    assert!(full(s.put_blobs(
        &repo(),
        vec![(id_in(50, 0), Bytes::from_static(b"x"))]
    )));
    // Held blobs cost nothing; a job with one new blob fails whole.
    s.put_blobs(&repo(), ten[..3].to_vec()).unwrap();
    let mixed = vec![ten[0].clone(), (id_in(51, 0), Bytes::from_static(b"y"))];
    assert!(full(s.put_blobs(&repo(), mixed)));
    assert_eq!(
        s.has(&repo(), &[id_in(50, 0), id_in(51, 0)]).unwrap(),
        [false, false]
    );
    assert_eq!(seg_size(), size);
    assert_eq!(s.stats().unwrap(), (10, 1000));
    // Deleting frees room.
    assert_eq!(
        s.delete_blobs(&[(repo(), ten[0].0), (repo(), ten[1].0)])
            .unwrap(),
        2
    );
    s.put_blobs(&repo(), vec![(id_in(52, 0), Bytes::from(vec![1; 150]))])
        .unwrap();
    assert_eq!(s.stats().unwrap(), (9, 950));
    assert!(full(s.put_blobs(
        &repo(),
        vec![(id_in(53, 0), Bytes::from(vec![1; 51]))]
    )));
    s.put_blobs(&repo(), vec![(id_in(53, 0), Bytes::from(vec![1; 50]))])
        .unwrap();
    assert_eq!(s.stats().unwrap(), (10, 1000));
}

#[test]
fn quota_refuses_puts_past_it() {
    check_quota(&MemStore::with_quota(1000), None);
    let dir = tempfile::tempdir().unwrap();
    let options = FsStoreOptions {
        quota_bytes: 1000,
        ..FsStoreOptions::default()
    };
    check_quota(
        &FsStore::open(dir.path(), options).unwrap(),
        Some(dir.path()),
    );
}

#[test]
fn quota_refuses_whole_jobs_in_a_shared_commit() {
    let dir = tempfile::tempdir().unwrap();
    let options = FsStoreOptions {
        quota_bytes: 1000,
        ..FsStoreOptions::default()
    };
    let s = Arc::new(FsStore::open(dir.path(), options).unwrap());
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let (s, barrier) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                let ids: Vec<_> = (0..4).map(|i| id_in(u16::from(t), i)).collect();
                let job = ids
                    .iter()
                    .map(|id| (*id, Bytes::from(vec![t; 100])))
                    .collect();
                barrier.wait();
                let r = s.put_blobs(&repo(), job);
                let held = s.has(&repo(), &ids).unwrap();
                (r.is_ok(), held)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|(ok, _)| *ok).count(), 2);
    for (ok, held) in results {
        assert_eq!(held, [ok; 4]);
    }
    assert_eq!(s.stats().unwrap(), (8, 800));
}

#[test]
fn old_index_layout_is_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        put_each(&s, spread());
        summary(&s)
    };
    // Rewrite the index in the first layout: table "blobs", keyed
    // repo_len | repo | id.
    {
        let db = Database::create(dir.path().join("index.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let new = txn.open_table(BLOBS).unwrap();
            let mut old = txn.open_table(BLOBS_V1).unwrap();
            for item in new.iter().unwrap() {
                let (k, v) = item.unwrap();
                let (r, id) = decode_key(k.value()).unwrap();
                let mut key = vec![r.as_str().len() as u8];
                key.extend_from_slice(r.as_str().as_bytes());
                key.extend_from_slice(&id.0);
                old.insert(key.as_slice(), v.value()).unwrap();
            }
        }
        txn.delete_table(BLOBS).unwrap();
        txn.commit().unwrap();
    }
    {
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        assert_eq!(summary(&s), before);
        for (r, id, b) in spread() {
            assert_eq!(s.get_blob(&r, &id).unwrap().unwrap(), b);
        }
        let (page, _) = s.list_partition(0x0102, None, 100).unwrap();
        assert_eq!(page.len(), 6);
    }
    let db = Database::create(dir.path().join("index.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    assert!(!tables.contains(&"blobs".to_owned()), "{tables:?}");
    assert!(tables.contains(&"blobs-v2".to_owned()));
}

#[test]
fn malformed_keys_are_refused() {
    assert_eq!(
        decode_key(&blob_key(&repo(), &ChunkId([4; 32]))),
        Some((repo(), ChunkId([4; 32])))
    );
    for bad in [&b""[..], &[0u8; 33], &[1u8; 34], &[0u8; 40]] {
        assert_eq!(decode_key(bad), None);
        assert_eq!(v1_key_to_v2(bad), None);
    }
    let mut v1 = vec![1, b'r'];
    v1.extend_from_slice(&[4; 32]);
    assert_eq!(
        v1_key_to_v2(&v1),
        Some(blob_key(&repo(), &ChunkId([4; 32])))
    );
}

/// The (digests, counts, stats) a store holding exactly `held` has.
fn held_summary(held: &[(RepoId, ChunkId, Bytes)]) -> Summary {
    let m = MemStore::default();
    put_each(&m, held.iter().cloned());
    summary(&m)
}

fn body_bytes(blobs: &[(RepoId, ChunkId, Bytes)]) -> u64 {
    blobs.iter().map(|(_, _, b)| b.len() as u64).sum()
}

/// Trashes, restores and expires over [`spread`]; leaves one blob of
/// "other" (`spread()[7]`) in the trash.
fn check_trash(s: &dyn ChunkStore) {
    let all = spread();
    put_each(s, all.clone());
    let other = RepoId::new("other").unwrap();
    // Per partition: (r, 0) (other, 0) (r, 1) (r, 2) (other, 2) (r, 3).
    let key = |i: usize| (all[i].0.clone(), all[i].1);
    let early = [0, 1, 2];
    let late = [6, 7];
    let n = s
        .trash(
            &[key(0), key(1), key(2), key(0), (repo(), id_in(9, 9))],
            100,
        )
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(s.trash(&[key(6), key(7)], 200).unwrap(), 2);
    assert_eq!(s.trash(&[], 300).unwrap(), 0);
    let trashed: Vec<_> = early.iter().chain(&late).map(|&i| all[i].clone()).collect();
    let held: Vec<_> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| !early.contains(i) && !late.contains(i))
        .map(|(_, b)| b.clone())
        .collect();
    let (h, t) = (held_summary(&held), (5, body_bytes(&trashed)));
    assert_eq!(summary(s), (h.0, h.1, h.2, 0, t));
    assert_eq!(s.has(&all[0].0, &[all[0].1]).unwrap(), [false]);
    assert!(s.get_blob(&all[2].0, &all[2].1).unwrap().is_none());
    assert_eq!(
        s.sizes(&all[2].0, &[all[2].1, all[3].1]).unwrap(),
        [0, all[3].2.len() as u32]
    );
    assert_eq!(
        s.in_trash(&repo(), &[all[0].1, all[2].1, all[3].1])
            .unwrap(),
        [true, true, false]
    );
    assert_eq!(s.in_trash(&other, &[all[1].1]).unwrap(), [true]);
    // Not held, so not quarantined; trashing again moves nothing.
    assert!(!s.quarantine(&all[0].0, &all[0].1).unwrap());
    assert_eq!(s.trash(&[key(0)], 400).unwrap(), 0);
    // A new copy of (r, 0, 1) is held again: restoring drops its trash
    // entry and brings back the other two of this repository only.
    put_each(s, [all[2].clone()]);
    assert_eq!(s.in_trash(&repo(), &[all[2].1]).unwrap(), [true]);
    assert_eq!(s.restore_trash(&repo()).unwrap(), 2);
    assert_eq!(s.restore_trash(&repo()).unwrap(), 0);
    for i in [0, 2, 6] {
        assert_eq!(s.get_blob(&all[i].0, &all[i].1).unwrap().unwrap(), all[i].2);
    }
    assert_eq!(
        s.in_trash(&repo(), &[all[0].1, all[2].1]).unwrap(),
        [false, false]
    );
    let held: Vec<_> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| ![1, 7].contains(i))
        .map(|(_, b)| b.clone())
        .collect();
    let h = held_summary(&held);
    let t = (2, body_bytes(&[all[1].clone(), all[7].clone()]));
    assert_eq!(summary(s), (h.0.clone(), h.1.clone(), h.2, 0, t));
    // Expiry drops what was trashed strictly before the time.
    assert_eq!(s.expire_trash(100).unwrap(), (0, 0));
    assert_eq!(s.expire_trash(150).unwrap(), (1, all[1].2.len() as u64));
    assert_eq!(
        s.in_trash(&other, &[all[1].1, all[7].1]).unwrap(),
        [false, true]
    );
    assert_eq!(s.restore_trash(&repo()).unwrap(), 0);
    assert_eq!(summary(s), (h.0, h.1, h.2, 0, (1, all[7].2.len() as u64)));
}

#[test]
fn trash_restore_and_expire_keep_summaries_exact() {
    check_trash(&MemStore::default());
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        check_trash(&s);
        summary(&s)
    };
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    assert_eq!(summary(&s), before);
    let other = RepoId::new("other").unwrap();
    let (_, id, body) = spread()[7].clone();
    assert_eq!(s.in_trash(&other, &[id]).unwrap(), [true]);
    assert_eq!(s.restore_trash(&other).unwrap(), 1);
    assert_eq!(s.get_blob(&other, &id).unwrap().unwrap(), body);
    let mem = MemStore::default();
    put_each(
        &mem,
        spread()
            .into_iter()
            .filter(|(r, i, _)| (r, i) != (&other, &spread()[1].1)),
    );
    assert_eq!(summary(&s), summary(&mem));
    assert_eq!(s.expire_trash(u64::MAX).unwrap(), (0, 0));
}

#[test]
fn trashing_a_new_copy_replaces_the_old_trash_entry() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    let mem = MemStore::default();
    for s in [&fs as &dyn ChunkStore, &mem] {
        let id = id_in(3, 3);
        s.put_blobs(&repo(), vec![(id, Bytes::from_static(b"first"))])
            .unwrap();
        assert_eq!(s.trash(&[(repo(), id)], 10).unwrap(), 1);
        s.put_blobs(&repo(), vec![(id, Bytes::from_static(b"second!"))])
            .unwrap();
        assert_eq!(s.trash(&[(repo(), id)], 20).unwrap(), 1);
        assert_eq!(s.trash_stats(), (1, 7));
        assert_eq!(s.expire_trash(15).unwrap(), (0, 0));
        assert_eq!(s.restore_trash(&repo()).unwrap(), 1);
        assert_eq!(&s.get_blob(&repo(), &id).unwrap().unwrap()[..], b"second!");
        assert_eq!(s.trash_stats(), (0, 0));
        assert_eq!(s.stats().unwrap(), (1, 7));
    }
    assert_eq!(summary(&fs), summary(&mem));
    drop(fs);
    let fs = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    assert_eq!(summary(&fs), summary(&mem));
}

fn check_unreferenced(s: &dyn ChunkStore) {
    let other = RepoId::new("other").unwrap();
    let (a, b, c, d) = (id_in(1, 1), id_in(1, 2), id_in(2, 3), id_in(2, 4));
    s.set_unreferenced(&repo(), &[(a, Some(100)), (b, Some(200))])
        .unwrap();
    s.set_unreferenced(&repo(), &[]).unwrap();
    assert_eq!(
        s.unreferenced_since(&repo(), &[a, b, c]).unwrap(),
        [Some(100), Some(200), None]
    );
    assert_eq!(s.unreferenced_since(&other, &[a]).unwrap(), [None]);
    // The earliest time stays; a later one does not move it.
    s.set_unreferenced(&repo(), &[(a, Some(50)), (b, Some(300))])
        .unwrap();
    assert_eq!(
        s.unreferenced_since(&repo(), &[a, b]).unwrap(),
        [Some(50), Some(200)]
    );
    s.set_unreferenced(&repo(), &[(a, None), (c, None)])
        .unwrap();
    assert_eq!(
        s.unreferenced_since(&repo(), &[a, b]).unwrap(),
        [None, Some(200)]
    );
    // Trashing or deleting clears a mark.
    let body = Bytes::from_static(b"body");
    s.put_blobs(&repo(), vec![(c, body.clone()), (d, body)])
        .unwrap();
    s.set_unreferenced(&repo(), &[(c, Some(7)), (d, Some(8))])
        .unwrap();
    assert_eq!(s.trash(&[(repo(), c)], 9).unwrap(), 1);
    assert_eq!(s.delete_blobs(&[(repo(), d)]).unwrap(), 1);
    assert_eq!(
        s.unreferenced_since(&repo(), &[c, d]).unwrap(),
        [None, None]
    );
    s.set_unreferenced(&other, &[(c, Some(5))]).unwrap();
}

#[test]
fn unreferenced_marks_keep_the_earliest_time_and_clear() {
    check_unreferenced(&MemStore::default());
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        check_unreferenced(&s);
    }
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    let other = RepoId::new("other").unwrap();
    assert_eq!(
        s.unreferenced_since(&repo(), &[id_in(1, 2), id_in(2, 3)])
            .unwrap(),
        [Some(200), None]
    );
    assert_eq!(
        s.unreferenced_since(&other, &[id_in(2, 3)]).unwrap(),
        [Some(5)]
    );
}

fn check_records(s: &dyn ChunkStore) {
    let other = RepoId::new("other").unwrap();
    s.put_record(RecordKind::Snapshot, &repo(), &[1; 32], b"s1", true)
        .unwrap();
    s.put_record(RecordKind::Snapshot, &other, &[1; 32], b"s1", true)
        .unwrap();
    s.put_record(RecordKind::Tombstone, &repo(), &[1; 32], b"t", true)
        .unwrap();
    assert!(
        s.delete_record(RecordKind::Snapshot, &repo(), &[1; 32])
            .unwrap()
    );
    assert!(
        !s.delete_record(RecordKind::Snapshot, &repo(), &[1; 32])
            .unwrap()
    );
    assert!(!s.delete_record(RecordKind::Key, &repo(), &[0; 32]).unwrap());
    assert_eq!(
        s.get_record(RecordKind::Snapshot, &repo(), &[1; 32])
            .unwrap(),
        None
    );
    assert_eq!(
        s.list_records(RecordKind::Tombstone, &repo()).unwrap(),
        vec![([1u8; 32], b"t".to_vec())]
    );
    assert!(
        s.list_records(RecordKind::Snapshot, &repo())
            .unwrap()
            .is_empty()
    );
    let mut keys = s.record_keys().unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![(1, other.clone(), [1; 32]), (3, repo(), [1; 32])]
    );
    // The same key can be stored again after deletion.
    s.put_record(RecordKind::Snapshot, &repo(), &[1; 32], b"s2", true)
        .unwrap();
}

#[test]
fn records_are_deleted_and_tombstones_kept() {
    for k in [RecordKind::Snapshot, RecordKind::Key, RecordKind::Tombstone] {
        assert_eq!(RecordKind::from_u8(k as u8), Some(k));
    }
    assert_eq!(RecordKind::from_u8(0), None);
    assert_eq!(RecordKind::from_u8(4), None);
    check_records(&MemStore::default());
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        check_records(&s);
    }
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    assert_eq!(
        s.get_record(RecordKind::Snapshot, &repo(), &[1; 32])
            .unwrap()
            .as_deref(),
        Some(&b"s2"[..])
    );
    assert!(
        s.delete_record(RecordKind::Tombstone, &repo(), &[1; 32])
            .unwrap()
    );
}

fn small_segments() -> FsStoreOptions {
    FsStoreOptions {
        segment_bytes: 2048,
        ..FsStoreOptions::default()
    }
}

/// The bytes of a quarantined blob, read through its quarantine entry.
fn quarantined_bytes(s: &FsStore, r: &RepoId, id: &ChunkId) -> Vec<u8> {
    let txn = s.index.begin_read().unwrap();
    let table = txn.open_table(QUARANTINE).unwrap();
    let value = table.get(blob_key(r, id).as_slice()).unwrap().unwrap();
    let (loc, _) = decode_timed(value.value()).unwrap();
    s.read_checked(&loc).unwrap().unwrap()
}

/// What happens to blob `i` of the compaction test.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fate {
    Held,
    Deleted,
    Quarantined,
    /// Trashed at 200, kept past the expiry at 150.
    Trashed,
    /// Trashed at 100, expired at 150.
    Expired,
}

fn fate(i: u8) -> Fate {
    match i {
        45.. => Fate::Held,
        2 => Fate::Quarantined,
        _ => match i % 6 {
            0 => Fate::Held,
            3 => Fate::Trashed,
            5 => Fate::Expired,
            _ => Fate::Deleted,
        },
    }
}

fn compaction_blobs() -> Vec<(RepoId, ChunkId, Bytes)> {
    let other = RepoId::new("other").unwrap();
    (0..60u8)
        .map(|i| {
            let r = if i % 4 == 1 { other.clone() } else { repo() };
            let body = Bytes::from(vec![i; 150 + usize::from(i)]);
            (r, id_in(u16::from(i) * 1000, i), body)
        })
        .collect()
}

#[test]
fn compaction_reclaims_space_and_keeps_every_blob() {
    let dir = tempfile::tempdir().unwrap();
    let other = RepoId::new("other").unwrap();
    let all = compaction_blobs();
    let with = |f: Fate| -> Vec<(RepoId, ChunkId, Bytes)> {
        (0..60u8)
            .filter(|&i| fate(i) == f)
            .map(|i| all[usize::from(i)].clone())
            .collect()
    };
    let keys = |f: Fate| -> Vec<(RepoId, ChunkId)> {
        with(f).into_iter().map(|(r, id, _)| (r, id)).collect()
    };
    let s = FsStore::open(dir.path(), small_segments()).unwrap();
    put_each(&s, all.clone());
    let seg_dir = dir.path().join("segments");
    let before_files = list_segments(&seg_dir).unwrap();
    assert!(before_files.len() >= 5, "{before_files:?}");
    s.delete_blobs(&keys(Fate::Deleted)).unwrap();
    let (qr, qid, qbody) = with(Fate::Quarantined)[0].clone();
    assert!(s.quarantine(&qr, &qid).unwrap());
    s.trash(&keys(Fate::Expired), 100).unwrap();
    s.trash(&keys(Fate::Trashed), 200).unwrap();
    s.expire_trash(150).unwrap();
    let before = summary(&s);
    assert_eq!(
        before.2,
        (with(Fate::Held).len() as u64, body_bytes(&with(Fate::Held)))
    );
    assert_eq!(
        before.4,
        (
            with(Fate::Trashed).len() as u64,
            body_bytes(&with(Fate::Trashed))
        )
    );
    let disk_before = s.disk_bytes();
    assert_eq!(disk_before, segment_bytes(dir.path()));
    // A reader that looked a location up before the compaction.
    let (r0, id0, b0) = all[0].clone();
    let key0 = blob_key(&r0, &id0);
    let old0 = s.location(&r0, &id0).unwrap().unwrap();
    assert_eq!(s.get_blob(&r0, &id0).unwrap().unwrap(), b0);

    let report = s.compact(0.5).unwrap();
    assert!(report.segments >= 3, "{report:?}");
    let disk_after = s.disk_bytes();
    assert_eq!(disk_after, segment_bytes(dir.path()));
    assert!(disk_after < disk_before, "{disk_before} -> {disk_after}");
    // Mostly dead segments: most of their bytes are gone.
    assert!(report.bytes_after * 2 < report.bytes_before, "{report:?}");
    assert_eq!(
        disk_before - disk_after,
        report.bytes_before - report.bytes_after
    );
    let after_files = list_segments(&seg_dir).unwrap();
    assert!(!seg_dir.join(format!("{:08}.seg", old0.segment)).exists());
    // The fully live segments of the last blobs stay as they were.
    let kept: Vec<_> = before_files
        .iter()
        .filter(|(n, size)| after_files.get(n) == Some(size))
        .collect();
    assert!(!kept.is_empty());
    // Nothing changed but where the bytes are.
    assert_eq!(summary(&s), before);
    let HeldRead::Good(bytes0) = s.read_held(&key0, old0).unwrap() else {
        panic!("blob 0 lost");
    };
    assert_ne!(s.location(&r0, &id0).unwrap().unwrap(), old0);
    assert_eq!(bytes0, b0.to_vec());
    let check = |s: &FsStore| {
        for (r, id, b) in with(Fate::Held) {
            assert_eq!(s.get_blob(&r, &id).unwrap().unwrap(), b);
        }
        assert_eq!(quarantined_bytes(s, &qr, &qid), qbody.to_vec());
        let trashed = keys(Fate::Trashed);
        for (r, id) in &trashed {
            assert_eq!(s.in_trash(r, &[*id]).unwrap(), [true]);
        }
    };
    check(&s);
    let steps = scrub_cycle(&s, 7, u64::MAX);
    assert!(steps.iter().all(|st| st.quarantined.is_empty()));
    // Restoring after the compaction finds the moved bytes.
    let mine = with(Fate::Trashed)
        .into_iter()
        .filter(|(r, _, _)| *r == repo())
        .count() as u64;
    assert_eq!(s.restore_trash(&repo()).unwrap(), mine);
    let restored: Vec<_> = with(Fate::Trashed)
        .into_iter()
        .filter(|(r, _, _)| *r == repo())
        .collect();
    for (r, id, b) in &restored {
        assert_eq!(s.get_blob(r, id).unwrap().unwrap(), *b);
    }
    let before_reopen = summary(&s);
    drop(s);

    let s = FsStore::open(dir.path(), small_segments()).unwrap();
    assert_eq!(summary(&s), before_reopen);
    assert_eq!(s.disk_bytes(), segment_bytes(dir.path()));
    for (r, id, b) in with(Fate::Held).iter().chain(&restored) {
        assert_eq!(s.get_blob(r, id).unwrap().unwrap(), *b);
    }
    assert_eq!(quarantined_bytes(&s, &qr, &qid), qbody.to_vec());
    // Rewriting every sealed segment, all live now, changes nothing
    // either.
    s.compact(1.0).unwrap();
    assert_eq!(summary(&s), before_reopen);
    assert_eq!(s.disk_bytes(), segment_bytes(dir.path()));
    assert!(s.restore_trash(&other).unwrap() > 0);
    for (r, id, b) in with(Fate::Held).iter().chain(&with(Fate::Trashed)) {
        assert_eq!(s.get_blob(r, id).unwrap().unwrap(), *b);
    }
    assert_eq!(quarantined_bytes(&s, &qr, &qid), qbody.to_vec());
    for (r, id, _) in with(Fate::Deleted).iter().chain(&with(Fate::Expired)) {
        assert!(s.get_blob(r, id).unwrap().is_none());
    }
}

#[test]
fn compaction_drops_empty_and_dead_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FsStore::open(dir.path(), small_segments()).unwrap();
        put_each(&s, spread());
    }
    let s = FsStore::open(dir.path(), small_segments()).unwrap();
    let keys: Vec<_> = spread().into_iter().map(|(r, id, _)| (r, id)).collect();
    s.delete_blobs(&keys).unwrap();
    assert!(s.disk_bytes() > 0);
    // Sealed, nothing live: deleted even at 0.0, copying nothing.
    let report = s.compact(0.0).unwrap();
    assert!(report.segments >= 1);
    assert_eq!(report.bytes_after, 0);
    assert_eq!(s.disk_bytes(), 0);
    assert_eq!(segment_bytes(dir.path()), 0);
    // No segment is left: the next one starts with the next put.
    assert_eq!(
        list_segments(&dir.path().join("segments")).unwrap().len(),
        0
    );
    assert_eq!(s.compact(1.0).unwrap(), CompactReport::default());
    put_each(&s, spread());
    for (r, id, b) in spread() {
        assert_eq!(s.get_blob(&r, &id).unwrap().unwrap(), b);
    }
    assert_eq!(s.disk_bytes(), segment_bytes(dir.path()));
    assert_eq!(
        MemStore::default().compact(0.5).unwrap(),
        CompactReport::default()
    );
}

#[test]
fn compaction_runs_beside_puts_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let options = FsStoreOptions {
        segment_bytes: 4096,
        ..FsStoreOptions::default()
    };
    let body = |i: u16| Bytes::from(vec![i as u8; 100 + usize::from(i % 50)]);
    let s = Arc::new(FsStore::open(dir.path(), options.clone()).unwrap());
    for i in 0..300u16 {
        s.put_blobs(&repo(), vec![(id_in(i, 1), body(i))]).unwrap();
    }
    let dead: Vec<_> = (0..300u16)
        .filter(|i| i % 4 != 0)
        .map(|i| (repo(), id_in(i, 1)))
        .collect();
    s.delete_blobs(&dead).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3u16)
        .map(|t| {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for i in (t * 4..300).step_by(12) {
                        let got = s.get_blob(&repo(), &id_in(i, 1)).unwrap();
                        assert_eq!(got.unwrap(), body(i));
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 300..600u16 {
                s.put_blobs(&repo(), vec![(id_in(i, 1), body(i))]).unwrap();
            }
        })
    };
    let mut compacted = 0;
    for _ in 0..3 {
        compacted += s.compact(0.5).unwrap().segments;
    }
    writer.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert!(compacted > 0);
    assert_eq!(s.disk_bytes(), segment_bytes(dir.path()));
    let before = summary(&*s);
    drop(s);
    let s = FsStore::open(dir.path(), options).unwrap();
    assert_eq!(summary(&s), before);
    for i in (0..600u16).filter(|i| *i >= 300 || i % 4 == 0) {
        assert_eq!(s.get_blob(&repo(), &id_in(i, 1)).unwrap().unwrap(), body(i));
    }
    assert_eq!(s.stats().unwrap().0, 75 + 300);
}

// ----- Open-time checks, rebuild, quarantine drop (issue 14) -----

/// Every blob's location, from an open store.
fn locations(s: &FsStore, blobs: &[(RepoId, ChunkId, Bytes)]) -> Vec<Location> {
    blobs
        .iter()
        .map(|(r, id, _)| s.location(r, id).unwrap().unwrap())
        .collect()
}

fn mem_of(blobs: impl IntoIterator<Item = (RepoId, ChunkId, Bytes)>) -> MemStore {
    let m = MemStore::default();
    put_each(&m, blobs);
    m
}

#[test]
fn blobs_of_missing_or_short_segments_are_quarantined_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = spread();
    all.extend((10..30u8).map(|i| {
        (
            repo(),
            ChunkId([i; 32]),
            Bytes::from(vec![i; 100 + usize::from(i)]),
        )
    }));
    let locs = {
        let s = FsStore::open(dir.path(), small_segments()).unwrap();
        put_each(&s, all.clone());
        locations(&s, &all)
    };
    let first = locs.iter().map(|l| l.segment).min().unwrap();
    let last = locs.iter().map(|l| l.segment).max().unwrap();
    assert!(last > first + 1, "{locs:?}");
    let seg_dir = dir.path().join("segments");
    std::fs::remove_file(segment_path(&seg_dir, first)).unwrap();
    let cut = segment_path(&seg_dir, last);
    let f = OpenOptions::new().write(true).open(&cut).unwrap();
    f.set_len(f.metadata().unwrap().len() - 1).unwrap();
    let lost: Vec<bool> = locs
        .iter()
        .map(|l| {
            l.segment == first
                || (l.segment == last
                    && locs
                        .iter()
                        .all(|o| o.segment != last || o.offset <= l.offset))
        })
        .collect();
    let s = FsStore::open(dir.path(), small_segments()).unwrap();
    let n_lost = lost.iter().filter(|l| **l).count() as u64;
    assert!(n_lost > 1);
    assert_eq!(s.quarantined(), n_lost);
    for ((r, id, body), lost) in all.iter().zip(&lost) {
        assert_eq!(s.has(r, &[*id]).unwrap(), [!lost], "{id}");
        if !lost {
            assert_eq!(&s.get_blob(r, id).unwrap().unwrap(), body);
        }
    }
    let kept = mem_of(
        all.iter()
            .zip(&lost)
            .filter(|(_, l)| !**l)
            .map(|(b, _)| b.clone()),
    );
    assert_eq!(
        s.digests(&all_partitions(), true),
        kept.digests(&all_partitions(), true)
    );
    assert_eq!(s.stats().unwrap(), kept.stats().unwrap());
    // Repair stores good copies: the quarantine entries go.
    put_each(
        &s,
        all.iter()
            .zip(&lost)
            .filter(|(_, l)| **l)
            .map(|(b, _)| b.clone()),
    );
    assert_eq!(s.quarantined(), 0);
    assert_eq!(summary(&s), summary(&mem_of(all)));
}

#[test]
fn a_segment_lost_under_an_open_store_reads_as_bad_and_scrub_quarantines_it() {
    let dir = tempfile::tempdir().unwrap();
    let all = spread();
    let locs = {
        let s = FsStore::open(dir.path(), small_segments()).unwrap();
        put_each(&s, all.clone());
        locations(&s, &all)
    };
    let s = FsStore::open(dir.path(), small_segments()).unwrap();
    let gone = locs[0].segment;
    std::fs::remove_file(s.segment_path(gone)).unwrap();
    let (r, id, _) = &all[0];
    assert!(matches!(s.get_blob(r, id), Err(StoreError::Corrupt { .. })));
    let bad: Vec<_> = scrub_cycle(&s, 4, u64::MAX)
        .into_iter()
        .flat_map(|st| st.quarantined)
        .collect();
    let want = locs.iter().filter(|l| l.segment == gone).count();
    assert_eq!(bad.len(), want);
    assert_eq!(s.quarantined(), want as u64);
    assert_eq!(s.has(r, &[*id]).unwrap(), [false]);
}

#[test]
fn a_missing_index_is_rebuilt_from_the_segments_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = spread();
    let flipped = {
        let s = FsStore::open(dir.path(), small_segments()).unwrap();
        put_each(&s, all.clone());
        s.put_record(RecordKind::Snapshot, &repo(), &[1; 32], b"s", false)
            .unwrap();
        // Rot in one record: the rebuild leaves it out.
        let (r, id, _) = all.remove(5);
        let loc = s.location(&r, &id).unwrap().unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(s.segment_path(loc.segment))
            .unwrap();
        f.write_all_at(&[0xee], loc.offset).unwrap();
        (r, id)
    };
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    let s = FsStore::open(dir.path(), small_segments()).unwrap();
    assert_eq!(summary(&s), summary(&mem_of(all.clone())));
    for (r, id, body) in &all {
        assert_eq!(&s.get_blob(r, id).unwrap().unwrap(), body);
    }
    assert_eq!(s.has(&flipped.0, &[flipped.1]).unwrap(), [false]);
    // Records lived in the index alone: peers copy them back.
    assert!(
        s.list_records(RecordKind::Snapshot, &repo())
            .unwrap()
            .is_empty()
    );
    // The rebuilt store takes writes.
    s.put_blobs(&repo(), blobs(3)).unwrap();
    let before = summary(&s);
    drop(s);
    // An empty index file (a crash while it was made) is no index.
    std::fs::write(dir.path().join("index.redb"), b"").unwrap();
    let s = FsStore::open(dir.path(), small_segments()).unwrap();
    assert_eq!(summary(&s), before);
    assert_eq!(
        s.get_blob(&repo(), &ChunkId([2; 32]))
            .unwrap()
            .unwrap()
            .len(),
        102
    );
}

/// An index file as a power loss leaves it while redb makes it: the
/// file grown, and the header, if any, without its magic number.
fn unfinished_index_at(path: &Path, header: bool) {
    let mut bytes = vec![0u8; 64 << 10];
    if header {
        drop(Database::create(path).unwrap());
        let made = std::fs::read(path).unwrap();
        bytes[..4096].copy_from_slice(&made[..4096]);
        bytes[..REDB_MAGIC_LEN].fill(0);
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_index_a_crash_left_unfinished_is_no_index() {
    for header in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("index.redb");
        unfinished_index_at(&index, header);
        let s = FsStore::open(dir.path(), small_segments()).unwrap();
        s.put_blobs(&repo(), blobs(3)).unwrap();
        let before = summary(&s);
        drop(s);
        let s = FsStore::open(dir.path(), small_segments()).unwrap();
        assert_eq!(summary(&s), before);
        drop(s);
        // Beside segments, it is rebuilt from them, as a missing one is.
        unfinished_index_at(&index, header);
        let s = FsStore::open(dir.path(), small_segments()).unwrap();
        assert_eq!(summary(&s), before);
    }
}

/// Flips a byte in every page of an index file that holds a key of
/// repository `other` (`id | 5 | "other"`).
fn damage_index(path: &Path) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let needle = b"\x05other";
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    for &i in &hits {
        bytes[i.saturating_sub(8)] ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
    hits.len()
}

#[test]
fn a_damaged_index_is_refused_naming_the_file_and_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FsStore::open(dir.path(), small_segments()).unwrap();
        put_each(&s, spread());
    }
    assert!(damage_index(&dir.path().join("index.redb")) > 0);
    match FsStore::open(dir.path(), small_segments()) {
        Ok(_) => panic!("opened a damaged index"),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("index.redb") && text.contains("--rebuild-index"),
                "{text}"
            );
        }
    }
}

#[test]
fn a_good_copy_drops_the_quarantine_entry_and_compaction_reclaims_the_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let body = Bytes::from(vec![9u8; 1000]);
    let id = ChunkId([9; 32]);
    let seg = {
        let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
        s.put_blobs(&repo(), vec![(id, body.clone())]).unwrap();
        let loc = s.location(&repo(), &id).unwrap().unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(s.segment_path(loc.segment))
            .unwrap();
        f.write_all_at(&[0], loc.offset).unwrap();
        s.segment_path(loc.segment)
    };
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    assert!(matches!(
        s.get_blob(&repo(), &id),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(s.quarantine(&repo(), &id).unwrap());
    assert_eq!(s.quarantined(), 1);
    s.put_blobs(&repo(), vec![(id, body.clone())]).unwrap();
    assert_eq!(s.quarantined(), 0);
    assert_eq!(s.get_blob(&repo(), &id).unwrap().unwrap(), body);
    // Nothing points into the bad copy's segment any more.
    let report = s.compact(0.0).unwrap();
    assert_eq!(report.segments, 1);
    assert!(!seg.exists());
    drop(s);
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    assert_eq!(s.quarantined(), 0);
    assert_eq!(s.get_blob(&repo(), &id).unwrap().unwrap(), body);
}

#[test]
fn rebuild_index_moves_a_damaged_index_aside_and_restores_every_blob() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FsStore::open(dir.path(), small_segments()).unwrap();
        put_each(&s, spread());
    }
    assert!(damage_index(&dir.path().join("index.redb")) > 0);
    assert!(matches!(
        FsStore::open(dir.path(), small_segments()),
        Err(StoreError::IndexCorrupt { .. })
    ));
    let report = FsStore::rebuild_index(dir.path()).unwrap();
    assert_eq!(report.blobs, spread().len() as u64);
    // Not under a running store.
    let s = FsStore::open(dir.path(), small_segments()).unwrap();
    let err = FsStore::rebuild_index(dir.path()).unwrap_err();
    assert!(err.to_string().contains("running server"), "{err}");
    drop(s);
    assert_eq!(report.skipped, 0);
    assert!(report.moved_aside.as_ref().is_some_and(|p| p.exists()));
    let s = FsStore::open(dir.path(), small_segments()).unwrap();
    assert_eq!(summary(&s), summary(&mem_of(spread())));
    assert_eq!(s.health().state, StoreState::Ok);
}

#[test]
fn a_new_store_starts_no_segment_until_its_first_put_and_reopens_leave_none_empty() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        drop(FsStore::open(dir.path(), FsStoreOptions::default()).unwrap());
    }
    assert_eq!(
        list_segments(&dir.path().join("segments")).unwrap().len(),
        0
    );
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    s.put_blobs(&repo(), blobs(2)).unwrap();
    drop(s);
    // An empty segment left by an earlier version is removed.
    std::fs::write(segment_path(&dir.path().join("segments"), 7), b"").unwrap();
    let s = FsStore::open(dir.path(), FsStoreOptions::default()).unwrap();
    s.put_blobs(&repo(), blobs(4)).unwrap();
    let segs = list_segments(&dir.path().join("segments")).unwrap();
    assert_eq!(segs.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert!(segs.values().all(|&n| n > 0));
}

#[test]
fn quota_refusals_make_the_store_full_until_room_grows() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsStore::open(
        dir.path(),
        FsStoreOptions {
            quota_bytes: 1000,
            ..FsStoreOptions::default()
        },
    )
    .unwrap();
    let mem = MemStore::with_quota(1000);
    for s in [&fs as &dyn ChunkStore, &mem] {
        assert_eq!(s.health().state, StoreState::Ok);
        s.put_blobs(&repo(), vec![(ChunkId([1; 32]), Bytes::from(vec![1; 600]))])
            .unwrap();
        assert_eq!(s.health().state, StoreState::Ok);
        assert!(matches!(
            s.put_blobs(&repo(), vec![(ChunkId([2; 32]), Bytes::from(vec![2; 500]))]),
            Err(StoreError::Full { .. })
        ));
        // 400 bytes of room, but a put did not fit: full.
        assert_eq!(s.health().state, StoreState::Full);
        s.delete_blobs(&[(repo(), ChunkId([1; 32]))]).unwrap();
        assert_eq!(s.health().state, StoreState::Ok);
        s.mark_failing("boom");
        let h = s.health();
        assert_eq!(h.state, StoreState::Failing);
        assert_eq!(h.error.as_deref(), Some("boom"));
    }
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the
/// test fails); `None`, with the reason printed, where mounting is
/// refused.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { path, _dir: dir }),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.path)
                .status();
        }
    }
}

fn assert_no_empty_segments(dir: &Path) {
    let segs = list_segments(&dir.join("segments")).unwrap();
    assert!(segs.values().all(|&n| n > 0), "empty segments: {segs:?}");
}

/// Puts 64 KiB blobs until one is refused; returns the ids stored and
/// the refusal.
fn fill(s: &FsStore, first: u8) -> (Vec<ChunkId>, StoreError) {
    let mut stored = Vec::new();
    for i in first..=u8::MAX {
        let id = ChunkId([i; 32]);
        match s.put_blobs(&repo(), vec![(id, Bytes::from(vec![i; 64 << 10]))]) {
            Ok(()) => stored.push(id),
            Err(e) => return (stored, e),
        }
    }
    panic!("no put was refused");
}

#[test]
fn below_the_watermark_puts_are_refused_reads_go_on_and_writes_resume_when_space_returns() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let dir = fs.path.join("store");
    let filler = fs.path.join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20]).unwrap();
    let options = FsStoreOptions {
        watermark: Watermark {
            min_free_bytes: 1 << 20,
            min_free_percent: 0,
        },
        ..FsStoreOptions::default()
    };
    let s = FsStore::open(&dir, options).unwrap();
    assert_eq!(s.health().state, StoreState::Ok);
    let (stored, refused) = fill(&s, 0);
    assert!(matches!(refused, StoreError::DiskFull { .. }), "{refused}");
    assert!(!stored.is_empty());
    let h = s.health();
    assert_eq!(h.state, StoreState::Full);
    assert!(h.free_bytes > 512 << 10, "{h:?}");
    for id in &stored {
        assert!(s.get_blob(&repo(), id).unwrap().is_some());
    }
    // The room kept free keeps the index writable.
    s.put_record(RecordKind::Snapshot, &repo(), &[1; 32], b"snap", false)
        .unwrap();
    assert_no_empty_segments(&dir);
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(s.health().state, StoreState::Ok);
    let (more, _) = fill(&s, 200);
    assert!(!more.is_empty());
    assert_no_empty_segments(&dir);
    assert_eq!(s.stats().unwrap().0, (stored.len() + more.len()) as u64);
}

#[test]
fn running_out_of_space_leaves_no_empty_segments_and_the_index_reopens_by_itself() {
    let Some(fs) = Tmpfs::mount("3m") else {
        return;
    };
    let dir = fs.path.join("store");
    let filler = fs.path.join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20]).unwrap();
    let options = FsStoreOptions {
        watermark: Watermark {
            min_free_bytes: 0,
            min_free_percent: 0,
        },
        ..FsStoreOptions::default()
    };
    let s = FsStore::open(&dir, options).unwrap();
    let (stored, refused) = fill(&s, 0);
    assert!(matches!(refused, StoreError::DiskFull { .. }), "{refused}");
    // More refusals: still no segment left behind by them.
    for i in 0..5u8 {
        let r = s.put_blobs(
            &repo(),
            vec![(ChunkId([250 - i; 32]), Bytes::from(vec![1u8; 64 << 10]))],
        );
        assert!(r.is_err());
    }
    assert_no_empty_segments(&dir);
    assert_eq!(s.health().state, StoreState::Full);
    // The index runs out of space too: redb then refuses every write
    // until the database is closed and opened again.
    let mut failed = false;
    for i in 0..64u8 {
        if s.put_record(
            RecordKind::Snapshot,
            &repo(),
            &[i; 32],
            &[i; 32 << 10],
            false,
        )
        .is_err()
        {
            failed = true;
            break;
        }
    }
    assert!(failed, "the index never ran out of space");
    for id in &stored {
        assert!(s.get_blob(&repo(), id).unwrap().is_some());
    }
    std::fs::remove_file(&filler).unwrap();
    let start = std::time::Instant::now();
    while s
        .put_record(RecordKind::Key, &repo(), &[0; 32], b"key", false)
        .is_err()
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the index did not recover"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        s.get_record(RecordKind::Key, &repo(), &[0; 32])
            .unwrap()
            .as_deref(),
        Some(&b"key"[..])
    );
    s.put_blobs(
        &repo(),
        vec![(ChunkId([251; 32]), Bytes::from(vec![1u8; 1000]))],
    )
    .unwrap();
    assert_eq!(s.health().state, StoreState::Ok);
    assert_no_empty_segments(&dir);
    drop(s);
    let s = FsStore::open(&dir, FsStoreOptions::default()).unwrap();
    assert!(s.get_blob(&repo(), &ChunkId([251; 32])).unwrap().is_some());
}
