//! Hostile snapshots: trees built straight through the library, as a writer
//! holding the repository's keys could make them, and targets that already
//! hold links out. Each test keeps a directory `outside` beside the target
//! and checks that restore left it exactly as it was (names, bytes, modes,
//! owners, mtimes), that nothing else appeared beside the target, and that
//! the benign entries next to the hostile ones came back.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ringvault::repo::Repo;
use ringvault::restore::{MAX_DEPTH, RestoreReport};
use ringvault_common::ChunkId;
use ringvault_common::snapshot::{Snapshot, Summary};
use ringvault_common::tree::{ChunkRef, Content, Entry, EntryKind, Tree};
use ringvault_tests::TestCluster;

use crate::TEST_CHUNKS;

/// Bound on each test's async part.
const LIMIT: Duration = Duration::from_secs(120);

/// An mtime the restored entries carry (2001-09-09), ns.
const MTIME_NS: i64 = 1_000_000_000_123_456_789;

#[test]
fn restore_refuses_hostile_names_and_writes_nothing_outside_its_target() {
    let case = Case::new();
    let planted = case.outside.join("planted");
    let hostile: [&[u8]; 8] = [
        b"..",
        b"../escaped",
        planted.as_os_str().as_bytes(),
        b"/tmp/absolute",
        b"a\0b",
        b".",
        b"",
        b"a/b",
    ];
    case.block_on(|repo, _| async move {
        let mut forge = Forge::new(&repo);
        let data = forge.blob(b"evil".to_vec());
        let mut root = vec![file(b"good", data, 4)];
        for (i, name) in hostile.iter().enumerate() {
            // A benign sibling in each tree: the whole tree is refused.
            let tree = forge.tree(vec![file(b"benign", data, 4), file(name, data, 4)]);
            root.push(dir(format!("hostile-{i}").as_bytes(), tree));
        }
        let root = forge.tree(sorted(root));
        forge.snapshot(root).await;
        repo.cluster.close().await;
    });

    // Through the binary, as a user would.
    let out = case
        .c
        .run(&[
            "restore",
            "latest",
            "--target",
            case.target.to_str().unwrap(),
        ])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(std::fs::read(case.target.join("good")).unwrap(), b"evil");
    for i in 0..hostile.len() {
        let path = case.target.join(format!("hostile-{i}"));
        assert!(
            stderr.contains(&format!("error: {}: ", path.display())),
            "no error for {}: {stderr}",
            path.display()
        );
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
    }
    assert!(stderr.contains("not allowed"), "{stderr}");
    assert!(!Path::new("/tmp/absolute").exists());
    assert!(!case.target.join("escaped").exists());
    case.assert_outside_unchanged();
}

#[test]
fn duplicate_names_are_refused_even_across_tree_parts() {
    let case = Case::new();
    let outside = case.outside.clone();
    let report = case.block_on(|repo, target| async move {
        let mut forge = Forge::new(&repo);
        let data = forge.blob(b"evil".to_vec());
        let other = forge.blob(b"other".to_vec());
        let planted = forge.tree(vec![file(b"planted", data, 4)]);
        let to_outside = symlink(b"evil", outside.as_os_str().as_bytes());
        let cases = [
            // file + file
            vec![file(b"twice", data, 4), file(b"twice", other, 5)],
            // symlink, then a file of the same name
            vec![
                symlink(b"twice", outside.join("secret").as_os_str().as_bytes()),
                file(b"twice", data, 4),
            ],
            // symlink, then a directory of the same name: the symlinked
            // parent directory
            vec![to_outside.clone(), dir(b"evil", planted)],
        ];
        let mut root = vec![file(b"good", data, 4)];
        for (i, mut entries) in cases.into_iter().enumerate() {
            entries.insert(0, file(b"benign", data, 4));
            root.push(dir(format!("dup-{i}").as_bytes(), forge.tree(entries)));
        }
        // The same attack split over two parts of one large directory.
        let part = forge.tree(vec![dir(b"evil", planted)]);
        let head = forge.blob(
            Tree {
                entries: vec![file(b"benign", data, 4), to_outside],
                more: vec![part],
            }
            .encode(),
        );
        root.push(dir(b"dup-parts", head));
        let root = forge.tree(sorted(root));
        let snap = forge.snapshot(root).await;
        restore(&repo, &snap, &target).await
    });
    assert_eq!(std::fs::read(case.target.join("good")).unwrap(), b"evil");
    for name in ["dup-0", "dup-1", "dup-2", "dup-parts"] {
        let path = case.target.join(name);
        let e = error_for(&report, &path);
        assert!(e.contains("out of order or duplicated"), "{name}: {e}");
        assert!(e.contains("twice") || e.contains("evil"), "{name}: {e}");
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0, "{name}");
    }
    assert_eq!(report.errors.len(), 4, "{:?}", report.errors);
    case.assert_outside_unchanged();
}

#[test]
fn symlinks_out_of_the_target_are_restored_and_never_followed() {
    let case = Case::new();
    let outside = case.outside.clone();
    let links: Vec<(&str, Vec<u8>)> = vec![
        ("abs", b"/etc".to_vec()),
        ("out", outside.as_os_str().as_bytes().to_vec()),
        (
            "secret",
            outside.join("secret").as_os_str().as_bytes().to_vec(),
        ),
        ("up", b"../../x".to_vec()),
        ("dotdot", b"..".to_vec()),
    ];
    let (first, second) = case.block_on(|repo, target| {
        let links = links.clone();
        async move {
            // First snapshot: the links themselves, legitimately.
            let mut forge = Forge::new(&repo);
            let data = forge.blob(b"good".to_vec());
            let mut root = vec![file(b"good", data, 4)];
            for (name, to) in &links {
                root.push(symlink(name.as_bytes(), to));
            }
            let inner = forge.tree(vec![symlink(b"up", b"../../../outside/secret")]);
            root.push(dir(b"dir", inner));
            let root = forge.tree(sorted(root));
            let snap = forge.snapshot(root).await;
            let first = restore(&repo, &snap, &target).await;
            for (name, to) in &links {
                let link = std::fs::read_link(target.join(name)).unwrap();
                assert_eq!(link.as_os_str().as_bytes(), &to[..], "{name}");
                let m = std::fs::symlink_metadata(target.join(name)).unwrap();
                assert_eq!(m.mtime(), MTIME_NS / 1_000_000_000, "{name}");
                assert_eq!(m.mtime_nsec(), MTIME_NS % 1_000_000_000, "{name}");
            }

            // Second snapshot into the same target: the same names as
            // directories and files, which must not go through the links.
            let mut forge = Forge::new(&repo);
            let bytes = forge.blob(b"replaced".to_vec());
            let planted = forge.tree(vec![file(b"planted", bytes, 8)]);
            let nested = forge.tree(sorted(vec![
                dir(b"sub", planted),
                file(b"planted", bytes, 8),
            ]));
            let inner = forge.tree(vec![file(b"up", bytes, 8)]);
            let root = forge.tree(sorted(vec![
                symlink(b"abs", b"/elsewhere"),
                dir(b"out", nested),
                file(b"secret", bytes, 8),
                file(b"up", bytes, 8),
                dir(b"dotdot", planted),
                dir(b"dir", inner),
            ]));
            let snap = forge.snapshot(root).await;
            let second = restore(&repo, &snap, &target).await;
            (first, second)
        }
    });
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(std::fs::read(case.target.join("good")).unwrap(), b"good");

    // Files replace the links; directories refuse them.
    for name in ["secret", "up", "dir/up"] {
        let path = case.target.join(name);
        assert!(
            std::fs::symlink_metadata(&path).unwrap().is_file(),
            "{name}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"replaced", "{name}");
    }
    for name in ["out", "dotdot"] {
        let path = case.target.join(name);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
        let e = error_for(&second, &path);
        assert!(e.contains("not a directory"), "{name}: {e}");
    }
    let e = error_for(&second, &case.target.join("abs"));
    assert!(e.contains("making the symlink"), "{e}");
    assert_eq!(second.errors.len(), 3, "{:?}", second.errors);
    assert!(!case.c.dir.path().join("x").exists());
    case.assert_outside_unchanged();
}

#[test]
fn symlinks_already_in_the_target_are_never_followed() {
    let case = Case::new();
    let t = &case.target;
    std::fs::create_dir_all(t.join("real")).unwrap();
    // Where the snapshot has a directory...
    std::os::unix::fs::symlink(&case.outside, t.join("dir")).unwrap();
    // ...and one below a real directory, over an outside file's parent.
    std::os::unix::fs::symlink(case.outside.join("sub"), t.join("real/link")).unwrap();
    // Where the snapshot has a file: to an outside file, and dangling.
    std::os::unix::fs::symlink(case.outside.join("secret"), t.join("file")).unwrap();
    std::os::unix::fs::symlink(case.outside.join("new"), t.join("dangling")).unwrap();
    // Where the snapshot has a symlink.
    std::os::unix::fs::symlink(&case.outside, t.join("ln")).unwrap();
    let report = case.block_on(|repo, target| async move {
        let mut forge = Forge::new(&repo);
        let bytes = forge.blob(b"restored".to_vec());
        let deep = forge.tree(vec![file(b"deep", bytes, 8), file(b"exec", bytes, 8)]);
        let real = forge.tree(sorted(vec![dir(b"link", deep), file(b"good", bytes, 8)]));
        let planted = forge.tree(vec![file(b"secret", bytes, 8), dir(b"sub", deep)]);
        let root = forge.tree(sorted(vec![
            dir(b"dir", planted),
            dir(b"real", real),
            file(b"file", bytes, 8),
            file(b"dangling", bytes, 8),
            symlink(b"ln", b"elsewhere"),
            file(b"good", bytes, 8),
        ]));
        let snap = forge.snapshot(root).await;
        restore(&repo, &snap, &target).await
    });
    for name in ["good", "real/good", "file", "dangling"] {
        let path = t.join(name);
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.is_file(), "{name}");
        assert_eq!(m.mode() & 0o7777, 0o640, "{name}");
        assert_eq!(m.mtime(), MTIME_NS / 1_000_000_000, "{name}");
        assert_eq!(std::fs::read(&path).unwrap(), b"restored", "{name}");
    }
    for name in ["dir", "real/link"] {
        let e = error_for(&report, &t.join(name));
        assert!(e.contains("not a directory"), "{name}: {e}");
        assert!(
            std::fs::symlink_metadata(t.join(name))
                .unwrap()
                .is_symlink()
        );
    }
    let e = error_for(&report, &t.join("ln"));
    assert!(e.contains("making the symlink"), "{e}");
    assert_eq!(report.errors.len(), 3, "{:?}", report.errors);
    case.assert_outside_unchanged();
}

#[test]
fn hard_links_to_outside_files_are_replaced_not_written_through() {
    let case = Case::new();
    let t = &case.target;
    std::fs::create_dir_all(t.join("sub")).unwrap();
    std::fs::hard_link(case.outside.join("secret"), t.join("f")).unwrap();
    std::fs::hard_link(case.outside.join("sub/deep"), t.join("sub/g")).unwrap();
    let report = case.block_on(|repo, target| async move {
        let mut forge = Forge::new(&repo);
        let bytes = forge.blob(b"restored bytes".to_vec());
        let sub = forge.tree(vec![file(b"g", bytes, 14)]);
        let mut f = file(b"f", bytes, 14);
        f.mode = 0o100604;
        let root = forge.tree(vec![f, dir(b"sub", sub)]);
        let snap = forge.snapshot(root).await;
        restore(&repo, &snap, &target).await
    });
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.files, 2);
    for (name, outside, mode) in [("f", "secret", 0o604), ("sub/g", "sub/deep", 0o640)] {
        let m = std::fs::symlink_metadata(t.join(name)).unwrap();
        let o = std::fs::symlink_metadata(case.outside.join(outside)).unwrap();
        assert_ne!(m.ino(), o.ino(), "{name} is still linked to {outside}");
        assert_eq!(m.nlink(), 1, "{name}");
        assert_eq!(m.mode() & 0o7777, mode, "{name}");
        assert_eq!(std::fs::read(t.join(name)).unwrap(), b"restored bytes");
    }
    case.assert_outside_unchanged();
}

#[test]
fn a_tree_that_contains_itself_stops_with_an_error() {
    let case = Case::new();
    let report = case.block_on(|repo, target| async move {
        let mut forge = Forge::new(&repo);
        let data = forge.blob(b"good".to_vec());
        // Ids are keyed hashes of the plaintext, checked on every read, so
        // a cycle can only be stored under an id that is not its hash.
        let itself = ChunkId([0x5e; 32]);
        forge.sealed_as(
            itself,
            &Tree::encode(&Tree {
                entries: vec![dir(b"again", itself), file(b"inner", data, 4)],
                more: vec![],
            }),
        );
        // An ancestor cycle: `loop` holds `a`, whose tree holds `b`, which
        // is `loop`'s tree.
        let ancestor = ChunkId([0xa4; 32]);
        let middle = forge.tree(vec![dir(b"a", ancestor)]);
        forge.sealed_as(
            ancestor,
            &Tree::encode(&Tree {
                entries: vec![dir(b"b", middle)],
                more: vec![],
            }),
        );
        let root = forge.tree(vec![
            file(b"good", data, 4),
            dir(b"loop", middle),
            dir(b"self", itself),
        ]);
        let snap = forge.snapshot(root).await;
        restore(&repo, &snap, &target).await
    });
    assert_eq!(std::fs::read(case.target.join("good")).unwrap(), b"good");
    let t = &case.target;
    for path in [t.join("self"), t.join("loop/a")] {
        let e = error_for(&report, &path);
        assert!(e.contains("chunk"), "{}: {e}", path.display());
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
    }
    assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
    case.assert_outside_unchanged();
}

#[test]
fn nesting_deeper_than_the_bound_stops_with_an_error() {
    let case = Case::new();
    let report = case.block_on(|repo, target| async move {
        let mut forge = Forge::new(&repo);
        let data = forge.blob(b"deep".to_vec());
        // Built from the bottom: trees at depths MAX_DEPTH + 3 up to 1, the
        // file in each beside the directory below.
        let mut below = forge.tree(vec![file(b"f", data, 4)]);
        for _ in 0..MAX_DEPTH + 2 {
            below = forge.tree(vec![dir(b"d", below), file(b"f", data, 4)]);
        }
        let root = forge.tree(vec![dir(b"d", below)]);
        let snap = forge.snapshot(root).await;
        restore(&repo, &snap, &target).await
    });
    assert_eq!(report.dirs, MAX_DEPTH as u64);
    // A file in every directory made, the deepest's included.
    assert_eq!(report.files, MAX_DEPTH as u64);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let (path, e) = &report.errors[0];
    assert!(e.contains(&format!("deeper than {MAX_DEPTH}")), "{e}");
    let below_target = path.strip_prefix(&case.target).unwrap();
    assert_eq!(below_target.components().count(), MAX_DEPTH + 1);
    case.assert_outside_unchanged();
}

/// A test cluster with a repository, and beside the target a directory
/// `outside` of known content.
#[test]
fn check_reports_files_whose_size_is_not_the_sum_of_their_chunks() {
    let case = Case::new();
    case.block_on(|repo, _| async move {
        let mut forge = Forge::new(&repo);
        let four = forge.blob(b"good".to_vec());
        let five = forge.blob(b"other".to_vec());
        let six = forge.blob(b"oldest".to_vec());
        let with = |name: &[u8], id, len, size| {
            entry(
                name,
                EntryKind::File,
                0o100640,
                size,
                Content::Chunks(vec![ChunkRef { id, len }]),
            )
        };
        let root = forge.tree(sorted(vec![
            // The tree's own lengths contradict its size.
            with(b"liar", four, Some(4), 10),
            // Consistent on paper; the chunk opens to 5 bytes, not 6.
            with(b"long-chunk", five, Some(6), 6),
            // No lengths (as in version 1 trees): only the data can tell.
            with(b"unsized", six, None, 99),
            with(b"fine", four, Some(4), 4),
        ]));
        forge.snapshot(root).await;
    });
    let check = |args: &[&str]| {
        let out = case.c.run(args).unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = check(&["check"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("\"liar\": metadata size 10 and sum of chunk sizes 4 do not match"),
        "{text}"
    );
    assert!(
        !text.contains("fine") && !text.contains("unsized"),
        "{text}"
    );
    let (code, text) = check(&["check", "--read-data"]);
    assert_eq!(code, Some(1), "{text}");
    for what in [
        "\"liar\": metadata size 10",
        "opens to 5 bytes, its tree records 6",
        "\"unsized\": metadata size 99 and sum of chunk sizes 6 do not match",
    ] {
        assert!(text.contains(what), "{what} missing from: {text}");
    }
}

pub(crate) struct Case {
    pub(crate) c: TestCluster,
    password_file: PathBuf,
    outside: PathBuf,
    pub(crate) target: PathBuf,
    /// `outside` as made.
    before: BTreeMap<PathBuf, Node>,
}

impl Case {
    pub(crate) fn new() -> Case {
        let c = TestCluster::start(3, 3, 2).unwrap();
        c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
        let password_file = c.dir.path().join("password");
        std::fs::write(&password_file, ringvault_tests::PASSWORD).unwrap();
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let outside = c.dir.path().join("case/outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        for (name, bytes, mode) in [
            ("secret", &b"secret bytes"[..], 0o640),
            ("exec", b"#!/bin/sh\n", 0o755),
            ("sub/deep", b"deep bytes", 0o600),
        ] {
            let path = outside.join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_234_567_890))
                .unwrap();
        }
        std::os::unix::fs::symlink("secret", outside.join("link")).unwrap();
        std::fs::set_permissions(outside.join("sub"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let before = fingerprint(&outside);
        let target = c.dir.path().join("case/target");
        Case {
            c,
            password_file,
            outside,
            target,
            before,
        }
    }

    /// Runs `f` with the repository open and the target's path, on a
    /// runtime of its own, bounded by [`LIMIT`].
    pub(crate) fn block_on<F, T>(&self, f: impl FnOnce(Arc<Repo>, PathBuf) -> F) -> T
    where
        F: Future<Output = T>,
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            tokio::time::timeout(LIMIT, async {
                let loaded = ringvault::repo::load_config(Some(self.c.agent_config())).unwrap();
                let repo = ringvault::repo::open(
                    &loaded.config,
                    &ringvault::password::PasswordFlags::file(&self.password_file),
                )
                .await
                .unwrap();
                f(repo, self.target.clone()).await
            })
            .await
            .expect("the test ran past its time limit")
        })
    }

    /// `outside` is as made, and nothing but it and the target is beside
    /// the target.
    fn assert_outside_unchanged(&self) {
        let after = fingerprint(&self.outside);
        for (path, node) in &self.before {
            assert_eq!(Some(node), after.get(path), "{} changed", path.display());
        }
        assert_eq!(self.before.len(), after.len(), "{after:#?}");
        let mut beside: Vec<_> = std::fs::read_dir(self.target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        beside.sort();
        assert_eq!(beside, ["outside", "target"]);
    }
}

/// What the tests compare of each entry below a directory.
#[derive(Debug, PartialEq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    /// A file's bytes or a symlink's target.
    content: Vec<u8>,
}

/// Every entry below `root` (and `root` itself, as ""), symlinks not
/// followed.
fn fingerprint(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = root.join(&rel);
        let m = std::fs::symlink_metadata(&path).unwrap();
        let (kind, content) = if m.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                todo.push(rel.join(e.unwrap().file_name()));
            }
            ("dir", Vec::new())
        } else if m.is_symlink() {
            let to = std::fs::read_link(&path).unwrap();
            ("symlink", to.as_os_str().as_bytes().to_vec())
        } else {
            ("file", std::fs::read(&path).unwrap())
        };
        let node = Node {
            kind,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            content,
        };
        out.insert(rel, node);
    }
    out
}

/// Restores `snap` into `target` through the library.
async fn restore(repo: &Arc<Repo>, snap: &Snapshot, target: &Path) -> RestoreReport {
    ringvault::restore::restore(repo.clone(), snap, None, target)
        .await
        .unwrap()
}

/// The error `report` holds for `path`.
fn error_for<'a>(report: &'a RestoreReport, path: &Path) -> &'a str {
    match report.errors.iter().find(|(p, _)| p == path) {
        Some((_, e)) => e,
        None => panic!("no error for {}: {:?}", path.display(), report.errors),
    }
}

/// Blobs made by hand and stored at once.
pub(crate) struct Forge {
    repo: Arc<Repo>,
    blobs: Vec<(ChunkId, bytes::Bytes)>,
}

impl Forge {
    pub(crate) fn new(repo: &Arc<Repo>) -> Forge {
        Forge {
            repo: repo.clone(),
            blobs: Vec::new(),
        }
    }

    /// Stores `plain` under its id.
    pub(crate) fn blob(&mut self, plain: Vec<u8>) -> ChunkId {
        let id = self.repo.keys.chunk_id(&plain);
        self.sealed_as(id, &plain);
        id
    }

    /// Stores `plain` under `id`, whatever its hash.
    fn sealed_as(&mut self, id: ChunkId, plain: &[u8]) {
        let mut nonce = [7; 24];
        nonce[..8].copy_from_slice(&(self.blobs.len() as u64).to_le_bytes());
        let blob = ringvault_common::seal::seal(&self.repo.keys, &id, plain, nonce, true).unwrap();
        self.blobs.push((id, bytes::Bytes::from(blob)));
    }

    /// Stores a tree of `entries` as given: not sorted, not checked.
    pub(crate) fn tree(&mut self, entries: Vec<Entry>) -> ChunkId {
        self.blob(
            Tree {
                entries,
                more: vec![],
            }
            .encode(),
        )
    }

    /// Stores the blobs and a snapshot record with root tree `root`.
    pub(crate) async fn snapshot(self, root: ChunkId) -> Snapshot {
        self.repo.cluster.put(self.blobs).await.unwrap();
        let snap = Snapshot {
            time_ns: 1,
            host: "evil".into(),
            agent: "evil".into(),
            paths: vec![],
            root,
            parent: None,
            tags: vec![],
            summary: Summary::default(),
        };
        let (id, record) = snap.seal(&self.repo.keys, [9; 24]);
        let fences = self.repo.cluster.gc_fences().await;
        self.repo
            .cluster
            .put_snapshot(id, bytes::Bytes::from(record), &fences)
            .await
            .unwrap();
        snap
    }
}

pub(crate) fn sorted(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

fn entry(name: &[u8], kind: EntryKind, mode: u32, size: u64, content: Content) -> Entry {
    Entry {
        name: name.to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime_ns: MTIME_NS,
        ctime_ns: 0,
        size,
        inode: 0,
        device: 0,
        rdev: 0,
        xattrs: vec![],
        content,
        user: vec![],
        group: vec![],
        links: 1,
    }
}

/// A file of one chunk, mode 0640.
pub(crate) fn file(name: &[u8], chunk: ChunkId, size: u64) -> Entry {
    entry(
        name,
        EntryKind::File,
        0o100640,
        size,
        Content::Chunks(vec![ChunkRef {
            id: chunk,
            len: u32::try_from(size).ok(),
        }]),
    )
}

fn dir(name: &[u8], tree: ChunkId) -> Entry {
    entry(name, EntryKind::Dir, 0o40755, 0, Content::Subtree(tree))
}

fn symlink(name: &[u8], to: &[u8]) -> Entry {
    entry(
        name,
        EntryKind::Symlink,
        0o120777,
        to.len() as u64,
        Content::Symlink(to.to_vec()),
    )
}
