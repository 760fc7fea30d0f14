//! Restore's options through the binary: `SNAPSHOT:PATH`, include and
//! exclude patterns, `--overwrite always|if-changed|never` into a target
//! that already holds the snapshot, and `--dry-run`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ringvault_tests::{TestCluster, tree_diff};
use serde_json::Value;

use crate::{TEST_CHUNKS, random_bytes};

fn start() -> TestCluster {
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    c
}

fn json(c: &TestCluster, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    // A restore prints restic's status lines before its report: the last.
    let out = c.ok(&all).unwrap();
    serde_json::from_str(out.lines().last().unwrap_or("")).unwrap()
}

/// Writes `files` (path, bytes) and `links` (path, target) under `root`,
/// every file dated an hour back, so that a rewrite shows in its mtime.
fn make_tree(root: &Path, files: &[(&str, Vec<u8>)], links: &[(&str, &str)]) {
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for (path, bytes) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    for (path, to) in links {
        std::os::unix::fs::symlink(to, root.join(path)).unwrap();
    }
}

/// Every entry below `root`, relative, directories with a trailing `/`,
/// sorted; empty when `root` does not exist.
pub(crate) fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let Ok(dir) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in dir {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let name = rel.to_str().unwrap().to_owned();
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{name}/"));
                todo.push(rel);
            } else {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

/// Per entry below `root`: inode, size, mtime (s, ns), mode.
fn stats(root: &Path) -> BTreeMap<String, (u64, u64, i64, i64, u32)> {
    listing(root)
        .into_iter()
        .map(|rel| {
            let m = std::fs::symlink_metadata(root.join(rel.trim_end_matches('/'))).unwrap();
            let stat = (m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.mode());
            (rel, stat)
        })
        .collect()
}

/// A dry run's actions, by path relative to `target`: (kind, action).
fn actions(report: &Value, target: &Path) -> BTreeMap<String, (String, String)> {
    report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let path = Path::new(a["path"].as_str().unwrap());
            let rel = path
                .strip_prefix(target)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let kind = a["kind"].as_str().unwrap().to_owned();
            (rel, (kind, a["action"].as_str().unwrap().to_owned()))
        })
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn snapshot_path_and_patterns_choose_exactly_what_is_restored() {
    let c = start();
    let src = c.dir.path().join("src");
    make_tree(
        &src,
        &[
            ("docs/a.txt", b"a".to_vec()),
            ("docs/b.md", b"b".to_vec()),
            ("docs/Notes.TXT", b"notes".to_vec()),
            ("docs/drafts/c.txt", b"c".to_vec()),
            ("code/main.rs", b"fn main() {}".to_vec()),
            ("code/x.tmp", b"tmp".to_vec()),
            ("code/target/out.bin", random_bytes(200 << 10, 1)),
            ("top.txt", b"top".to_vec()),
        ],
        &[("link", "docs/a.txt")],
    );
    std::fs::create_dir_all(src.join("empty")).unwrap();
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();
    let restore = |name: &str, args: &[&str]| -> (PathBuf, Value) {
        let target = c.dir.path().join(name);
        let mut all = vec!["restore"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--target", target.to_str().unwrap()]);
        (target.clone(), json(&c, &all))
    };

    // SNAPSHOT:PATH is --path: just that subtree, under its own name.
    let (colon, report) = restore("colon", &["latest:src/docs"]);
    assert_eq!(
        listing(&colon),
        strings(&[
            "docs/",
            "docs/Notes.TXT",
            "docs/a.txt",
            "docs/b.md",
            "docs/drafts/",
            "docs/drafts/c.txt"
        ])
    );
    assert_eq!(tree_diff(&src.join("docs"), &colon.join("docs")), None);
    assert_eq!(report["files"], 4, "{report}");
    let (flag, _) = restore("flag", &["latest", "--path", "src/docs"]);
    assert_eq!(listing(&flag), listing(&colon));
    assert_eq!(tree_diff(&colon, &flag), None);

    // An included file brings the directories leading to it, nothing else.
    let (txt, report) = restore("txt", &["latest", "--include", "*.txt"]);
    assert_eq!(
        listing(&txt),
        strings(&[
            "src/",
            "src/docs/",
            "src/docs/a.txt",
            "src/docs/drafts/",
            "src/docs/drafts/c.txt",
            "src/top.txt"
        ])
    );
    assert_eq!(
        (report["files"].clone(), report["dirs"].clone()),
        (3.into(), 3.into())
    );
    let (folded, _) = restore("folded", &["latest", "--iinclude", "*.txt"]);
    assert!(listing(&folded).contains(&"src/docs/Notes.TXT".to_owned()));
    assert_eq!(listing(&folded).len(), listing(&txt).len() + 1);

    // Excluded directories go whole; exclusion wins over inclusion.
    let (excl, _) = restore(
        "excl",
        &["latest", "--exclude", "target/", "--exclude", "*.tmp"],
    );
    let mut want = listing(&c.dir.path().join("colon"))
        .into_iter()
        .map(|p| format!("src/{p}"))
        .collect::<Vec<_>>();
    want.extend(strings(&[
        "src/",
        "src/code/",
        "src/code/main.rs",
        "src/empty/",
        "src/link",
        "src/top.txt",
    ]));
    want.sort();
    assert_eq!(listing(&excl), want);
    let (code, _) = restore(
        "code",
        &["latest", "--include", "/src/code", "--exclude", "*.tmp"],
    );
    assert_eq!(
        listing(&code),
        strings(&[
            "src/",
            "src/code/",
            "src/code/main.rs",
            "src/code/target/",
            "src/code/target/out.bin"
        ])
    );
    assert_eq!(
        tree_diff(&src.join("code/target"), &code.join("src/code/target")),
        None
    );

    // Patterns see the whole path inside the snapshot, whatever PATH is.
    let (drafts, _) = restore(
        "drafts",
        &["latest:src/docs", "--include", "/src/docs/drafts"],
    );
    assert_eq!(
        listing(&drafts),
        strings(&["docs/", "docs/drafts/", "docs/drafts/c.txt"])
    );

    // The path given twice, or a pattern that does not parse: nothing made.
    for (name, args) in [
        ("twice", vec!["latest:src/docs", "--path", "src/code"]),
        ("bad", vec!["latest", "--include", "a/[z-a"]),
    ] {
        let target = c.dir.path().join(name);
        let mut all = vec!["restore"];
        all.extend_from_slice(&args);
        all.extend_from_slice(&["--target", target.to_str().unwrap()]);
        let out = c.run(&all).unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        assert!(!target.exists(), "{name}");
    }
}

#[test]
fn if_changed_rewrites_only_what_differs_and_a_dry_run_writes_nothing() {
    let c = start();
    let src = c.dir.path().join("src");
    let files = [
        ("a.txt", b"alpha\n".to_vec()),
        ("b.txt", b"bravo\n".to_vec()),
        ("c.txt", b"charlie\n".to_vec()),
        ("big.bin", random_bytes(1 << 20, 3)),
        ("sub/deep.txt", b"deep\n".to_vec()),
        ("sub/other.bin", random_bytes(300 << 10, 4)),
    ];
    make_tree(&src, &files, &[("link", "a.txt")]);
    std::fs::set_permissions(src.join("a.txt"), PermissionsExt::from_mode(0o644)).unwrap();
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();
    let target = c.dir.path().join("target");
    let t = target.to_str().unwrap();
    c.ok(&["restore", "latest", "--target", t]).unwrap();
    let restored = target.join("src");
    assert_eq!(tree_diff(&src, &restored), None);
    // N: the files and the symlink.
    let n = files.len() as u64 + 1;

    // One file changed (same size, other bytes), one deleted; one only
    // touched, one only chmodded: those two are kept, metadata fixed.
    std::fs::write(restored.join("b.txt"), b"BRAVO\n").unwrap();
    std::fs::remove_file(restored.join("sub/deep.txt")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(restored.join("big.bin"))
        .unwrap()
        .set_modified(SystemTime::now())
        .unwrap();
    std::fs::set_permissions(restored.join("a.txt"), PermissionsExt::from_mode(0o600)).unwrap();
    let before = stats(&target);

    // A dry run lists what it would do and writes nothing.
    let dry = json(
        &c,
        &[
            "restore",
            "latest",
            "--target",
            t,
            "--overwrite",
            "if-changed",
            "--dry-run",
        ],
    );
    assert_eq!(stats(&target), before, "the dry run wrote");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["files"], 2, "{dry}");
    assert_eq!(dry["unchanged"], n - 2, "{dry}");
    assert_eq!(dry["bytes"], 6 + 5, "{dry}");
    let planned = actions(&dry, &target);
    let want: BTreeMap<String, (String, String)> = [
        ("src", "dir", "unchanged"),
        ("src/sub", "dir", "unchanged"),
        ("src/a.txt", "file", "unchanged"),
        ("src/b.txt", "file", "replaced"),
        ("src/c.txt", "file", "unchanged"),
        ("src/big.bin", "file", "unchanged"),
        ("src/link", "symlink", "unchanged"),
        ("src/sub/deep.txt", "file", "new"),
        ("src/sub/other.bin", "file", "unchanged"),
    ]
    .into_iter()
    .map(|(p, k, a)| (p.to_owned(), (k.to_owned(), a.to_owned())))
    .collect();
    assert_eq!(planned, want);
    // Into a target that is not there: all new, and still not there.
    let missing = c.dir.path().join("missing");
    let dry = json(
        &c,
        &[
            "restore",
            "latest",
            "--target",
            missing.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert!(!missing.exists());
    let planned = actions(&dry, &missing);
    assert_eq!(planned.len(), want.len());
    assert!(planned.values().all(|(_, a)| a == "new"), "{planned:?}");
    assert_eq!(dry["files"], files.len(), "{dry}");

    // The real thing rewrites exactly the two.
    let report = json(
        &c,
        &[
            "restore",
            "latest",
            "--target",
            t,
            "--overwrite",
            "if-changed",
        ],
    );
    assert_eq!(report["files"], 2, "{report}");
    assert_eq!(report["unchanged"], n - 2, "{report}");
    assert_eq!(report["skipped"], 0, "{report}");
    assert_eq!(report["bytes"], 6 + 5, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(tree_diff(&src, &restored), None);
    assert_eq!(std::fs::read(restored.join("b.txt")).unwrap(), b"bravo\n");
    let after = stats(&target);
    for kept in [
        "src/a.txt",
        "src/c.txt",
        "src/big.bin",
        "src/link",
        "src/sub/other.bin",
    ] {
        assert_eq!(after[kept].0, before[kept].0, "{kept} was rewritten");
    }
    // Again: nothing to do.
    let again = json(
        &c,
        &[
            "restore",
            "latest",
            "--target",
            t,
            "--overwrite",
            "if-changed",
        ],
    );
    assert_eq!(
        (again["files"].clone(), again["unchanged"].clone()),
        (0.into(), n.into())
    );
    assert_eq!(stats(&target), after);
}

#[test]
fn never_keeps_what_is_there_and_always_writes_every_file_anew() {
    let c = start();
    let src = c.dir.path().join("src");
    let files = [
        ("a.txt", b"alpha\n".to_vec()),
        ("b.txt", b"bravo\n".to_vec()),
        ("sub/c.bin", random_bytes(400 << 10, 5)),
    ];
    make_tree(&src, &files, &[("link", "a.txt")]);
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();
    let target = c.dir.path().join("target");
    let t = target.to_str().unwrap();
    c.ok(&["restore", "latest", "--target", t]).unwrap();
    let restored = target.join("src");
    std::fs::write(restored.join("a.txt"), b"modified, longer\n").unwrap();
    std::fs::remove_file(restored.join("b.txt")).unwrap();

    let report = json(
        &c,
        &["restore", "latest", "--target", t, "--overwrite", "never"],
    );
    assert_eq!(
        std::fs::read(restored.join("a.txt")).unwrap(),
        b"modified, longer\n"
    );
    assert_eq!(std::fs::read(restored.join("b.txt")).unwrap(), b"bravo\n");
    // a.txt, sub/c.bin and the link were there.
    assert_eq!(report["skipped"], 3, "{report}");
    assert_eq!(report["files"], 1, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let text = c
        .ok(&[
            "restore",
            "latest",
            "--target",
            t,
            "--overwrite",
            "never",
            "--dry-run",
        ])
        .unwrap();
    assert!(
        text.contains(&format!("skipped   {}", restored.join("a.txt").display())),
        "{text}"
    );

    // Every old file kept alive by a hard link outside the target, so that
    // no new file can take its inode number, and to see it is not written.
    let keep = c.dir.path().join("keep");
    std::fs::create_dir_all(&keep).unwrap();
    let names = ["a.txt", "b.txt", "sub/c.bin"];
    for (i, name) in names.iter().enumerate() {
        std::fs::hard_link(restored.join(name), keep.join(i.to_string())).unwrap();
    }
    let before = stats(&target);
    let report = json(&c, &["restore", "latest", "--target", t]);
    assert_eq!(report["files"], 3, "{report}");
    assert_eq!(report["unchanged"], 1, "the same symlink: {report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(tree_diff(&src, &restored), None);
    let after = stats(&target);
    for (i, name) in names.iter().enumerate() {
        let key = format!("src/{name}");
        assert_ne!(after[&key].0, before[&key].0, "{name} kept its inode");
        let old = std::fs::metadata(keep.join(i.to_string())).unwrap();
        assert_eq!(old.ino(), before[&key].0);
        assert_eq!(old.nlink(), 1, "{name}: still linked into the target");
    }
    assert_eq!(
        std::fs::read(keep.join("0")).unwrap(),
        b"modified, longer\n",
        "written through a hard link"
    );
}
