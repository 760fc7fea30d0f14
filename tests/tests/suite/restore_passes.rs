//! Issue 15, the passes around a restore: a sparse file read at backup
//! only where it holds data, `restore --verify` (every file written read
//! back and checked against the snapshot), `restore --delete` (what the
//! snapshot lacks removed, below the restored path only), and progress: a
//! bar on a terminal, restic's `status` and `summary` lines with `--json`.

use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ringvault_tests::{TestCluster, run_bounded, tree_diff, wait_for};
use serde_json::Value;

use crate::restore_options::listing;
use crate::{TEST_CHUNKS, random_bytes};

fn start() -> TestCluster {
    let c = TestCluster::start(1, 1, 1).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    c
}

/// Every line of a `--json` command's stdout, each parsed.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The `summary` line of a `--json restore` (its last line).
fn summary(stdout: &str) -> Value {
    let lines = json_lines(stdout);
    let last = lines.last().expect("no output").clone();
    assert_eq!(last["message_type"], "summary", "{stdout}");
    last
}

/// Bytes allocated to `path` on disk.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Whether two files hold the same bytes, compared 1 MiB at a time.
fn same_content(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

#[test]
fn a_sparse_file_is_read_only_where_it_holds_data_and_restored_sparse() {
    // The default chunker: 128 chunks for the GiB rather than 4096.
    let c = TestCluster::start(1, 1, 1).unwrap();
    c.ok(&["init"]).unwrap();
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 1 GiB with three 4 KiB data extents, the rest holes (a trailing one
    // too).
    let offsets = [1u64 << 20, (512 << 20) + 8192, 700 << 20];
    let f = std::fs::File::create(src.join("sparse.img")).unwrap();
    for (i, at) in offsets.iter().enumerate() {
        f.write_all_at(&random_bytes(4096, i as u64 + 1), *at)
            .unwrap();
    }
    f.set_len(1 << 30).unwrap();
    drop(f);
    assert!(
        allocated(&src.join("sparse.img")) < 1 << 20,
        "the test directory's file system does not keep holes"
    );

    let out = c.ok(&["--json", "backup", src.to_str().unwrap()]).unwrap();
    let report: Value = serde_json::from_str(&out).unwrap();
    let s = &report["summary"];
    assert_eq!(s["bytes"], 1u64 << 30, "{report}");
    let read = s["bytes_read"].as_u64().unwrap();
    assert!(
        read < 1 << 20,
        "the backup read {read} bytes of a file with 12 KiB of data: {report}"
    );

    let target = c.dir.path().join("restore");
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    let restored = target.join("src/sparse.img");
    assert_eq!(std::fs::metadata(&restored).unwrap().len(), 1 << 30);
    assert!(
        same_content(&src.join("sparse.img"), &restored),
        "the restored file differs"
    );
    assert!(
        allocated(&restored) < 1 << 20,
        "the restored file allocates {} bytes for 12 KiB of data",
        allocated(&restored)
    );
}

/// A source tree: files of one and several chunks, an empty file, a
/// directory; returns it.
fn source(c: &TestCluster) -> PathBuf {
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(src.join("docs/deep")).unwrap();
    std::fs::write(src.join("big.bin"), random_bytes(1 << 20, 3)).unwrap();
    std::fs::write(src.join("small.txt"), b"small").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("docs/a.txt"), b"a").unwrap();
    std::fs::write(src.join("docs/deep/b.bin"), random_bytes(300 << 10, 4)).unwrap();
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();
    src
}

const SOURCE_FILES: u64 = 5;
const SOURCE_BYTES: u64 = (1 << 20) + 5 + 1 + (300 << 10);

#[test]
fn verify_passes_on_a_good_restore_and_names_a_file_changed_before_it() {
    let c = start();
    let src = source(&c);

    let good = c.dir.path().join("good");
    let out = c
        .ok(&[
            "--json",
            "restore",
            "latest",
            "--target",
            good.to_str().unwrap(),
            "--verify",
        ])
        .unwrap();
    let s = summary(&out);
    assert_eq!(s["files_verified"], SOURCE_FILES, "{s}");
    assert_eq!(s["bytes_verified"], SOURCE_BYTES, "{s}");
    assert_eq!(s["verify_errors"], 0, "{s}");
    assert_eq!(tree_diff(&src, &good.join("src")), None);
    let text = c
        .ok(&[
            "restore",
            "latest",
            "--target",
            good.to_str().unwrap(),
            "--verify",
        ])
        .unwrap();
    assert!(text.contains("verified 5 files"), "{text}");

    // The files change between the restore and the verification: one
    // byte in the middle of a file of many chunks, and a file cut short.
    let bad = c.dir.path().join("bad");
    let release = c.dir.path().join("release");
    let mut waiting = release.clone().into_os_string();
    waiting.push(".waiting");
    let mut held = c
        .ringvault()
        .args([
            "restore",
            "latest",
            "--target",
            bad.to_str().unwrap(),
            "--verify",
        ])
        .env("RINGVAULT_TEST_HOLD_BEFORE_VERIFY", &release)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the restore to reach its verification",
        Duration::from_secs(60),
        || Path::new(&waiting).exists().then_some(()),
    )
    .unwrap();
    let big = bad.join("src/big.bin");
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&big)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, 700_000).unwrap();
    f.write_all_at(&[byte[0] ^ 0xff], 700_000).unwrap();
    drop(f);
    let deep = bad.join("src/docs/deep/b.bin");
    std::fs::File::options()
        .write(true)
        .open(&deep)
        .unwrap()
        .set_len(1000)
        .unwrap();
    std::fs::write(&release, b"").unwrap();
    let out = ringvault_tests::wait_child(&mut held, Duration::from_secs(120)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&big.display().to_string()) && stderr.contains("offset"),
        "the changed file is not named: {stderr}"
    );
    assert!(
        stderr.contains(&deep.display().to_string()),
        "the shortened file is not named: {stderr}"
    );
    assert!(
        !stderr.contains(&bad.join("src/small.txt").display().to_string()),
        "{stderr}"
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Puts what the snapshot of [`source`] lacks into `target`: files and a
/// directory tree below `src`, one file beside it, a file kept by an
/// exclude pattern, and a symlink to a directory outside the target.
fn clutter(target: &Path, outside: &Path) {
    std::fs::create_dir_all(target.join("src/docs/old/older")).unwrap();
    std::fs::write(target.join("src/extra.txt"), b"extra").unwrap();
    std::fs::write(target.join("src/docs/old/x"), b"x").unwrap();
    std::fs::write(target.join("src/docs/old/older/y"), b"y").unwrap();
    std::fs::write(target.join("src/notes.keep"), b"kept by --exclude").unwrap();
    std::fs::write(target.join("beside.txt"), b"beside").unwrap();
    std::os::unix::fs::symlink(outside, target.join("src/docs/link-out")).unwrap();
}

#[test]
fn delete_removes_what_the_snapshot_lacks_below_the_restored_path_only() {
    let c = start();
    let src = source(&c);
    let outside = c.dir.path().join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("sub/precious"), b"precious").unwrap();
    let snapshot_listing = strings(&[
        "src/",
        "src/big.bin",
        "src/docs/",
        "src/docs/a.txt",
        "src/docs/deep/",
        "src/docs/deep/b.bin",
        "src/empty",
        "src/small.txt",
    ]);

    // A dry run lists what would go and removes nothing.
    let t = c.dir.path().join("t");
    clutter(&t, &outside);
    let before = listing(&t);
    let out = c
        .ok(&[
            "--json",
            "restore",
            "latest",
            "--target",
            t.to_str().unwrap(),
            "--delete",
            "--dry-run",
            "--exclude",
            "*.keep",
        ])
        .unwrap();
    let s = summary(&out);
    let rel = |v: &Value| -> Vec<String> {
        let mut v: Vec<String> = v
            .as_array()
            .unwrap_or_else(|| panic!("no list: {s}"))
            .iter()
            .map(|p| {
                Path::new(p.as_str().unwrap())
                    .strip_prefix(&t)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        v.sort();
        v
    };
    let gone = strings(&[
        "beside.txt",
        "src/docs/link-out",
        "src/docs/old",
        "src/docs/old/older",
        "src/docs/old/older/y",
        "src/docs/old/x",
        "src/extra.txt",
    ]);
    assert_eq!(rel(&s["deleted"]), gone, "{s}");
    assert_eq!(s["files_deleted"], gone.len(), "{s}");
    assert_eq!(listing(&t), before, "a dry run deleted something");

    // The whole snapshot: the target is its root, so whatever the root
    // lacks goes, but what --exclude matches; a symlink is removed, never
    // followed.
    let out = c
        .ok(&[
            "--json",
            "restore",
            "latest",
            "--target",
            t.to_str().unwrap(),
            "--delete",
            "--exclude",
            "*.keep",
        ])
        .unwrap();
    let s = summary(&out);
    assert_eq!(s["files_deleted"], gone.len(), "{s}");
    let mut expected = snapshot_listing.clone();
    expected.push("src/notes.keep".into());
    expected.sort();
    assert_eq!(listing(&t), expected);
    std::fs::remove_file(t.join("src/notes.keep")).unwrap();
    assert_eq!(tree_diff(&src, &t.join("src")), None);
    // A directory something was deleted from keeps its recorded mtime.
    let mtime = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec())
    };
    assert_eq!(mtime(&t.join("src/docs")), mtime(&src.join("docs")));
    assert_eq!(
        std::fs::read(outside.join("sub/precious")).unwrap(),
        b"precious"
    );

    // One path: only below where it lands.
    let t2 = c.dir.path().join("t2");
    std::fs::create_dir_all(t2.join("docs/old")).unwrap();
    std::fs::write(t2.join("docs/old/x"), b"x").unwrap();
    std::fs::write(t2.join("docs/extra"), b"extra").unwrap();
    std::fs::write(t2.join("beside.txt"), b"beside").unwrap();
    c.ok(&[
        "restore",
        "latest:src/docs",
        "--target",
        t2.to_str().unwrap(),
        "--delete",
    ])
    .unwrap();
    assert_eq!(
        listing(&t2),
        strings(&[
            "beside.txt",
            "docs/",
            "docs/a.txt",
            "docs/deep/",
            "docs/deep/b.bin"
        ])
    );
    assert_eq!(
        std::fs::read(outside.join("sub/precious")).unwrap(),
        b"precious"
    );
}

#[test]
fn json_restore_prints_status_lines_and_a_summary_with_restics_names() {
    let c = start();
    source(&c);
    let t = c.dir.path().join("t");
    let out = c
        .ok(&[
            "--json",
            "restore",
            "latest",
            "--target",
            t.to_str().unwrap(),
        ])
        .unwrap();
    let lines = json_lines(&out);
    let (last, statuses) = lines.split_last().unwrap();
    assert!(!statuses.is_empty(), "no status line: {out}");
    for s in statuses {
        assert_eq!(s["message_type"], "status", "{s}");
        for field in [
            "seconds_elapsed",
            "percent_done",
            "total_files",
            "files_restored",
            "total_bytes",
            "bytes_restored",
        ] {
            assert!(s.get(field).is_some(), "no {field} in {s}");
        }
    }
    let final_status = statuses.last().unwrap();
    assert_eq!(final_status["percent_done"], 1.0, "{final_status}");
    assert_eq!(final_status["files_restored"], SOURCE_FILES);
    assert_eq!(last["message_type"], "summary", "{last}");
    assert_eq!(last["total_files"], SOURCE_FILES, "{last}");
    assert_eq!(last["files_restored"], SOURCE_FILES, "{last}");
    assert_eq!(last["total_bytes"], SOURCE_BYTES, "{last}");
    assert_eq!(last["bytes_restored"], SOURCE_BYTES, "{last}");
    assert!(last.get("seconds_elapsed").is_some(), "{last}");
    // The fields it had before stay.
    assert_eq!(last["files"], SOURCE_FILES, "{last}");
    assert_eq!(last["bytes"], SOURCE_BYTES, "{last}");

    // --no-progress: the summary alone.
    let out = c
        .ok(&[
            "--json",
            "--no-progress",
            "restore",
            "latest",
            "--target",
            t.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(json_lines(&out).len(), 1, "{out}");
}

/// `cmd` as one POSIX shell command line.
fn shell_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_str().unwrap().replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with a terminal for its stdout and stderr (util-linux
/// `script`); returns what the terminal got. `None` without `script`.
fn on_a_terminal(cmd: &Command) -> Option<String> {
    let mut script = Command::new("script");
    script.args(["-q", "-e", "-c", &shell_line(cmd), "/dev/null"]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    script.env("TERM", "xterm");
    let out = run_bounded(&mut script, Duration::from_secs(120)).ok()?;
    assert!(out.status.success(), "{out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_progress_bar_is_drawn_on_a_terminal_only() {
    let c = start();
    source(&c);
    let t = c.dir.path().join("t");
    let t = t.to_str().unwrap();

    // Not a terminal: no bar, no control characters.
    let out = c.run(&["restore", "latest", "--target", t]).unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "terminal control characters on a pipe: {stderr:?}"
    );

    let mut cmd = c.ringvault();
    cmd.args(["restore", "latest", "--target", t]);
    let Some(tty) = on_a_terminal(&cmd) else {
        eprintln!("no util-linux `script` here: the terminal case is left out");
        return;
    };
    assert!(
        tty.contains("ETA"),
        "no progress bar on a terminal: {tty:?}"
    );
    let mut quiet = c.ringvault();
    quiet.args(["--no-progress", "restore", "latest", "--target", t]);
    let tty = on_a_terminal(&quiet).unwrap();
    assert!(!tty.contains("ETA"), "a bar despite --no-progress: {tty:?}");
}
