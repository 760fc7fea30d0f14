//! Browsing: versions of a path, diffs that skip unchanged subtrees, find,
//! cat, and the on-disk tree cache.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ringvault_tests::TestCluster;
use serde_json::Value;

use crate::{TEST_CHUNKS, random_bytes};

fn json(c: &TestCluster, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&c.ok(&all).unwrap()).unwrap()
}

fn backup(c: &TestCluster, src: &Path) -> String {
    json(c, &["backup", src.to_str().unwrap()])["snapshot"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// 40 directories of 5 files each, and a file at the top.
fn wide_tree(src: &Path) {
    for d in 0..40 {
        let dir = src.join(format!("dir-{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..5 {
            std::fs::write(dir.join(format!("f{f}.txt")), format!("{d}/{f}\n")).unwrap();
        }
    }
    std::fs::write(src.join("notes.txt"), "first\n").unwrap();
}

#[test]
fn versions_diff_find_and_cat_follow_the_history_of_a_tree() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    let src = c.dir.path().join("src");
    wide_tree(&src);
    let big = random_bytes(700 << 10, 9);
    std::fs::write(src.join("dir-07/big.bin"), &big).unwrap();
    let s1 = backup(&c, &src);

    // 2: one file's content changes, deep in one directory.
    std::fs::write(src.join("dir-07/f3.txt"), "changed\n").unwrap();
    let s2 = backup(&c, &src);
    // 3: notes.txt changes mode only; a file is added and one removed.
    std::fs::set_permissions(
        src.join("notes.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(src.join("dir-12/new.txt"), "new\n").unwrap();
    std::fs::remove_file(src.join("dir-30/f0.txt")).unwrap();
    let s3 = backup(&c, &src);
    // 4: notes.txt is gone; 5: it is back with other content.
    std::fs::remove_file(src.join("notes.txt")).unwrap();
    let s4 = backup(&c, &src);
    std::fs::write(src.join("notes.txt"), "second\n").unwrap();
    let s5 = backup(&c, &src);

    // versions: a row per distinct version, what changed, and how long it
    // lasted.
    let v = json(&c, &["versions", "src/notes.txt"]);
    let rows: Vec<(&str, &str, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["snapshot"].as_str().unwrap(),
                r["change"].as_str().unwrap(),
                r["snapshots"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (s1.as_str(), "added", 2),
            (s3.as_str(), "metadata", 1),
            (s4.as_str(), "removed", 1),
            (s5.as_str(), "added", 1),
        ]
    );
    let digests: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        digests[0], digests[1],
        "a mode change keeps the content digest"
    );
    assert_ne!(digests[0], digests[3]);

    // diff: exactly the change, reading only the trees on its path.
    let d = json(&c, &["diff", &s1, &s2]);
    let changes = d["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{d}");
    assert_eq!(changes[0]["path"], "src/dir-07/f3.txt");
    assert_eq!(changes[0]["change"], "content");
    // Root, src and dir-07 in each snapshot: 6 of the 84 trees.
    assert_eq!(d["trees_read"], 6, "{d}");
    let d = json(&c, &["diff", &s2, &s3]);
    let mut got: Vec<(String, String)> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_owned(),
                r["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("src/dir-12/new.txt".into(), "added".into()),
            ("src/dir-30/f0.txt".into(), "removed".into()),
            ("src/notes.txt".into(), "metadata".into()),
        ]
    );
    // Limited to a path.
    let d = json(&c, &["diff", &s2, &s3, "src/dir-12"]);
    assert_eq!(d["changes"].as_array().unwrap().len(), 1, "{d}");

    // find: by name across every snapshot, by whole path, in one snapshot.
    let f = json(&c, &["find", "new.txt"]);
    let hits: Vec<&str> = f
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(hits, [s3.as_str(), s4.as_str(), s5.as_str()]);
    let f = json(
        &c,
        &["find", "src/dir-0[0-1]/f*.txt", "--snapshot", &s1[..8]],
    );
    assert_eq!(f.as_array().unwrap().len(), 10, "{f}");
    let out = c.run(&["find", "nothing-like-this"]).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "find exits 1 when nothing matches"
    );
    // --newer and --older bound the entries' modification times.
    let f = json(
        &c,
        &["find", "new.txt", "--newer", "1d", "--older", "2200-01-01"],
    );
    assert_eq!(f.as_array().unwrap().len(), 3, "{f}");
    let out = c
        .run(&["find", "new.txt", "--newer", "2200-01-01T00:00:00Z"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = c
        .run(&["find", "new.txt", "--older", "2000-01-01"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // cat: the bytes of any version.
    let out = c.run(&["cat", &s1[..8], "src/dir-07/big.bin"]).unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, big);
    let out = c
        .run(&["cat", &format!("{}:src/notes.txt", &s5[..8])])
        .unwrap();
    assert_eq!(out.stdout, b"second\n");
    let out = c.run(&["cat", &s1[..8], "src/dir-07"]).unwrap();
    assert!(!out.status.success(), "a directory is not catted");
}

#[test]
fn browsing_twice_fetches_no_tree_twice() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    let src = c.dir.path().join("src");
    wide_tree(&src);
    let a = backup(&c, &src);
    for d in 0..40 {
        std::fs::write(src.join(format!("dir-{d:02}/f0.txt")), "all changed\n").unwrap();
    }
    let b = backup(&c, &src);
    // Start from an empty cache (a backup may have read trees through it).
    let state = c.cluster_dir().join("agent/state");
    if let Some(trees) = find_dir(&state, "trees") {
        std::fs::remove_dir_all(&trees).unwrap();
    }

    let first = json(&c, &["diff", &a, &b]);
    assert_eq!(first["changes"].as_array().unwrap().len(), 40);
    let read = first["trees_read"].as_u64().unwrap();
    assert!(read >= 80, "{first}");
    assert_eq!(first["trees_fetched"].as_u64(), Some(read), "a cold cache");
    let second = json(&c, &["diff", &a, &b]);
    assert_eq!(second["trees_read"].as_u64(), Some(read));
    assert_eq!(
        second["trees_fetched"].as_u64(),
        Some(0),
        "the second browse fetched trees again: {second}"
    );
    assert!(find_dir(&state, "trees").is_some(), "the cache is on disk");
}

fn find_dir(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
            if let Some(found) = find_dir(&p, name) {
                return Some(found);
            }
        }
    }
    None
}

/// Runs `ringvault ARGS` with stdout a pipe whose reader goes away early
/// (after one line, or after 100 bytes of a one-line JSON document), as
/// `| head -1` does; waits for it (60 s at most) and returns how it ended
/// and its stderr.
fn with_closed_pipe(
    c: &TestCluster,
    args: &[&str],
    one_line: bool,
) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead, Read};
    let mut child = c
        .ringvault()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        if one_line {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "{args:?} printed nothing");
        } else {
            let mut head = [0u8; 100];
            stdout.read_exact(&mut head).unwrap();
        }
        // Dropped here: the pipe has no reader any more.
    }
    let out = ringvault_tests::wait_child(&mut child, std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 13, point 6: every command ends quietly when its reader goes
/// away, as Unix tools do: done (exit 0) or ended by SIGPIPE, with nothing
/// on stderr. Before: "failed printing to stdout: Broken pipe", exit 101.
#[test]
fn listings_end_quietly_when_the_reader_goes_away() {
    use std::os::unix::process::ExitStatusExt;
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    let src = c.dir.path().join("src");
    // 3000 entries: every listing is far larger than a pipe's 64 KiB
    // buffer, so the command is still writing when the reader leaves.
    let many = src.join("many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..3000 {
        std::fs::write(
            many.join(format!("a-file-with-a-rather-long-name-{i:05}.txt")),
            "x",
        )
        .unwrap();
    }
    std::fs::write(src.join("big.bin"), random_bytes(2 << 20, 11)).unwrap();
    backup(&c, &src);
    let target = c.dir.path().join("target");
    let target = target.to_str().unwrap();
    let mut failures = Vec::new();
    let mut killed = 0;
    for (args, one_line) in [
        (&["ls", "latest", "src/many"][..], true),
        (&["--json", "ls", "latest", "src/many"][..], false),
        (&["find", "*"][..], true),
        (&["--json", "find", "*"][..], false),
        (
            &["restore", "latest", "--target", target, "--dry-run"][..],
            true,
        ),
        (
            &[
                "--json",
                "restore",
                "latest",
                "--target",
                target,
                "--dry-run",
            ][..],
            false,
        ),
        (&["cat", "latest", "src/big.bin"][..], false),
    ] {
        let (status, stderr) = with_closed_pipe(&c, args, one_line);
        // 13: SIGPIPE, on Linux and macOS alike.
        let by_sigpipe = status.signal() == Some(13);
        killed += usize::from(by_sigpipe);
        if !(status.success() || by_sigpipe) || !stderr.trim().is_empty() {
            let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            failures.push(format!("{args:?}: {status}: {first}"));
        }
    }
    assert!(
        failures.is_empty(),
        "not ended quietly:\n{}",
        failures.join("\n")
    );
    assert!(
        killed > 0,
        "no command was still writing when the reader left"
    );
    assert!(!Path::new(target).exists(), "a dry run wrote the target");
}
