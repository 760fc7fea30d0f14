//! A server tells the truth about its store, and one sick disk never stops
//! the cluster: a full file system is a state the server leaves by itself,
//! a lost segment is refilled by repair, a lost index is rebuilt from the
//! segments, and a corrupt one stops the server with the way out.
//!
//! The full-disk test mounts a small tmpfs (the tests run as root in CI);
//! where mounting is refused it prints why and passes without running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::make_files;
use ringvault_tests::{TestCluster, tree_diff};
use serde_json::Value;

pub(crate) fn cluster(nodes: u32) -> TestCluster {
    crate::fast_cluster(nodes, 3, 2, false)
}

pub(crate) fn source(c: &TestCluster) -> PathBuf {
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    src
}

/// `ringvault --json cluster status`: (exit code, one row per server).
pub(crate) fn status(c: &TestCluster) -> (i32, Vec<Value>) {
    let out = c.run(&["--json", "cluster", "status"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v["nodes"].as_array().cloned().unwrap_or_default(),
    )
}

fn row(c: &TestCluster, i: usize) -> Value {
    status(c).1.get(i).cloned().unwrap_or(Value::Null)
}

fn total(c: &TestCluster, field: &str) -> u64 {
    status(c)
        .1
        .iter()
        .map(|r| r[field].as_u64().unwrap_or(0))
        .sum()
}

/// Waits (at most `limit`) until `check --read-data` passes: every chunk
/// has N copies that decrypt to their ids.
fn wait_until_clean(c: &TestCluster, limit: Duration) {
    let start = Instant::now();
    loop {
        let (code, report) = c.check(true).unwrap();
        if code == 0 {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "check --read-data still fails after {limit:?}: exit {code}, {report}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits up to `limit` for `done`, failing with `context()` on timeout.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    ringvault_tests::wait_for("a condition", limit, || done().then_some(()))
        .unwrap_or_else(|e| panic!("{e}: {}", context()));
}

pub(crate) fn assert_restores(c: &TestCluster, src: &Path, name: &str) {
    let target = c.dir.path().join(name);
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    if let Some(d) = tree_diff(src, &target.join(src.file_name().unwrap())) {
        panic!("restore differs from the source: {d}");
    }
}

/// The segment files of a data directory: (name, size).
fn segments(data: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(data.join("segments"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the
/// test fails). Drop it after the servers using it are stopped.
pub(crate) struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) at `path`;
    /// `None`, with the reason printed, when mounting is refused.
    pub(crate) fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self {
                path: path.to_owned(),
            }),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs at {}: {}",
                    path.display(),
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

    /// Bytes available on it.
    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

#[test]
#[ignore = "fault test: run with --include-ignored"]
fn a_full_disk_refuses_new_blobs_keeps_serving_reads_and_resumes_without_a_restart() {
    const MIN_FREE: u64 = 1 << 20;
    // Declared before the cluster, so dropped after its servers are killed.
    let mnt = tempfile::tempdir().unwrap();
    let data = mnt.path().join("data");
    let Some(tmpfs) = Tmpfs::mount(&data, "8m") else {
        return;
    };
    let mut c = cluster(4);
    let port = ringvault_tests::free_ports(1).unwrap()[0];
    c.set_server_setting(3, "data-dir", &format!("{:?}", data.to_str().unwrap()));
    c.set_server_setting(3, "min-free-bytes", &MIN_FREE.to_string());
    c.set_server_setting(3, "min-free-percent", "0");
    c.set_server_setting(3, "metrics-listen", &format!("\"127.0.0.1:{port}\""));
    c.restart(3).unwrap();
    c.wait_all_up().unwrap();
    let pid = c.server_pid(3);
    // Leave room for about 1 MiB of blobs above the watermark; node 4 owns
    // about 3/4 of the 4 MiB backed up.
    let filler = data.join("filler");
    let room = tmpfs.free().saturating_sub(MIN_FREE + (1 << 20));
    std::fs::write(&filler, vec![7u8; room as usize]).unwrap();
    let src = source(&c);
    make_files(&src, "data", 8, 512 << 10, 21);
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();

    // Full, not broken: up, refusing, no empty segments left by refusals.
    let empty: Vec<_> = segments(&data).into_iter().filter(|s| s.1 == 0).collect();
    assert!(
        empty.is_empty(),
        "empty segments on the full node: {empty:?}"
    );
    // Just restarted, node 4 may still be routed around by its peers for a
    // moment, its blobs kept elsewhere as hints; handoff then brings them
    // and fills it. Wait (bounded) for that.
    wait_until(
        Duration::from_secs(30),
        || status(&c).1[3]["store"] == "full",
        || format!("node 4's store never reported full: {}", status(&c).1[3]),
    );
    let (code, rows) = status(&c);
    assert_eq!(rows[3]["state"], "up", "{}", rows[3]);
    assert_eq!(rows[3]["store"], "full", "{}", rows[3]);
    assert_eq!(code, 4, "cluster status exits 0 with a full node");
    let metrics = || ringvault_tests::http_get(&format!("127.0.0.1:{port}"), "/metrics").unwrap();
    let scraped = metrics();
    assert!(
        scraped.contains("ringvault_store_state{state=\"full\"} 1"),
        "{scraped}"
    );
    let (_, report) = c.check(true).unwrap();
    assert_eq!(report["lost"].as_array().map(Vec::len), Some(0), "{report}");
    assert_eq!(
        report["damaged"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    let served = metrics();
    assert!(
        served
            .lines()
            .any(|l| l.starts_with("ringvault_requests_total{kind=\"get\",outcome=\"ok\"}")),
        "the full node served no reads:\n{served}"
    );
    // What it refused landed elsewhere as hints.
    wait_until(
        Duration::from_secs(10),
        || total(&c, "hints") > 0,
        || format!("no node holds hints: {:?}", status(&c)),
    );

    // Space comes back: the node takes writes again by itself (the hints
    // held for it elsewhere come home), and says ok.
    std::fs::remove_file(&filler).unwrap();
    wait_until(
        Duration::from_secs(20),
        || {
            let (code, rows) = status(&c);
            code == 0
                && rows[3]["store"] == "ok"
                && rows.iter().all(|r| r["hints"].as_u64() == Some(0))
        },
        || format!("the node did not resume: {:?}", status(&c)),
    );
    assert_eq!(c.server_pid(3), pid, "the node was restarted");
    let empty: Vec<_> = segments(&data).into_iter().filter(|s| s.1 == 0).collect();
    assert!(empty.is_empty(), "empty segments after resuming: {empty:?}");
    assert!(
        !c.server_log(3).contains("Previous I/O error"),
        "{}",
        c.server_log(3)
    );
    assert!(metrics().contains("ringvault_store_state{state=\"ok\"} 1"));
    assert_restores(&c, &src, "restored");
    drop(c);
    drop(tmpfs);
}

#[test]
#[ignore = "fault test: run with --include-ignored"]
fn a_segment_deleted_under_a_running_server_is_refilled_by_repair_after_restart() {
    let mut c = cluster(3);
    c.set_server_setting(2, "segment-bytes", "1048576");
    c.restart(2).unwrap();
    c.wait_all_up().unwrap();
    let src = source(&c);
    // Two backups: a group commit lands in one segment whatever its size,
    // and one backup's blobs may all reach node 3 in one group commit.
    make_files(&src, "data", 3, 512 << 10, 22);
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();
    make_files(&src, "more", 3, 512 << 10, 122);
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();
    let data = c.node_dir(2).join("data");
    // Node 3 holds every blob, maybe after hints are handed back (on a
    // loaded machine the backup may have routed around it for a moment).
    wait_until(
        Duration::from_secs(30),
        || segments(&data).iter().filter(|s| s.1 > 0).count() > 1,
        || format!("node 3 holds too few segments: {:?}", segments(&data)),
    );
    let (name, size) = segments(&data)
        .into_iter()
        .find(|s| s.1 > 0)
        .expect("a segment with blobs");
    std::fs::remove_file(data.join("segments").join(&name)).unwrap();
    c.restart(2).unwrap();
    c.wait_all_up().unwrap();
    wait_until_clean(&c, Duration::from_secs(30));
    assert!(
        c.server_log(2).contains("quarantined at start"),
        "no word of the missing segment {name} ({size} bytes):\n{}",
        c.server_log(2)
    );
    // The quarantined entries go once good copies are back.
    wait_until(
        Duration::from_secs(10),
        || row(&c, 2)["quarantined"].as_u64() == Some(0),
        || format!("quarantine kept: {}", row(&c, 2)),
    );
    assert_restores(&c, &src, "restored");
}

#[test]
#[ignore = "fault test: run with --include-ignored"]
fn a_deleted_index_is_rebuilt_from_the_segments_at_start() {
    let mut c = cluster(3);
    let src = source(&c);
    make_files(&src, "data", 4, 512 << 10, 23);
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();
    let before = row(&c, 2)["blobs"].as_u64().unwrap();
    assert!(before > 0);
    c.terminate(2).unwrap();
    std::fs::remove_file(c.node_dir(2).join("data/index.redb")).unwrap();
    c.restart(2).unwrap();
    // Straight after the start, before repair could pull anything.
    let after = row(&c, 2)["blobs"].as_u64().unwrap_or(0);
    assert_eq!(after, before, "{}", c.server_log(2));
    assert!(
        c.server_log(2).contains("rebuilt the index"),
        "{}",
        c.server_log(2)
    );
    c.wait_all_up().unwrap();
    wait_until_clean(&c, Duration::from_secs(30));
    assert_restores(&c, &src, "restored");
}

/// Flips one byte before every occurrence of the repository's name in an
/// index file: blob keys (`id | 4 | "test"`) and records, in every page
/// that holds them.
fn corrupt_index(path: &Path) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let needle = b"\x04test";
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    for &i in &hits {
        let at = i.saturating_sub(8);
        bytes[at] ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
    hits.len()
}

#[test]
#[ignore = "fault test: run with --include-ignored"]
fn a_corrupt_index_stops_the_server_with_the_way_out_which_rebuilds_it() {
    let mut c = cluster(3);
    let src = source(&c);
    make_files(&src, "data", 4, 512 << 10, 24);
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();
    let before = row(&c, 1)["blobs"].as_u64().unwrap();
    c.terminate(1).unwrap();
    let index = c.node_dir(1).join("data/index.redb");
    assert!(corrupt_index(&index) > 0);
    let err = c
        .restart(1)
        .expect_err("the server started on a corrupt index")
        .to_string();
    assert!(
        err.contains("index.redb") && err.contains("--rebuild-index"),
        "{err}"
    );
    let out = ringvault_tests::run_bounded(
        Command::new(ringvault_tests::bin("ringvault-chunkserver"))
            .arg("--config")
            .arg(&c.layout.node_configs[1])
            .arg("--rebuild-index"),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    c.restart(1).unwrap();
    assert_eq!(row(&c, 1)["blobs"].as_u64(), Some(before));
    c.wait_all_up().unwrap();
    wait_until_clean(&c, Duration::from_secs(30));
    assert_restores(&c, &src, "restored");
}
