//! Issue 13, trust: a snapshot never names a chunk the cluster lacks, and
//! never records a size it did not read. Real servers on loopback, the real
//! binary; every wait is bounded.
//!
//! The prune tests use a 1 s grace and an empty trash, so that three prunes
//! two seconds apart delete a chunk that no snapshot names (the first notes
//! it, the second trashes it, the third drops the trash).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::watching_config;
use crate::random_bytes;
use ringvault_tests::{ClusterOptions, TestCluster, run_bounded, tree_diff, wait_for};
use serde_json::Value;

const CHUNKS: &str = "16384,65536,262144";
const WAIT: Duration = Duration::from_secs(90);

/// Three servers (N=3, W=2); the agent prunes with a 1 s grace and no
/// trash.
fn cluster() -> TestCluster {
    let c = TestCluster::with(ClusterOptions {
        server_config: "probe-interval-ms = 200\nrepair-interval-ms = 300\nscrub-cycle-s = 0\nmetrics-listen = \"\"\n".into(),
        ..ClusterOptions::default()
    })
    .unwrap();
    let cfg = c.agent_config();
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, format!("{text}prune-grace-s = 1\ntrash-keep-s = 0\n")).unwrap();
    c.ok(&["init", "--chunker-params", CHUNKS]).unwrap();
    c
}

/// Writes `bytes` random bytes to `path` and dates it an hour back, so no
/// backup finds it racy (modified just before it was read).
fn precious(path: &Path, bytes: usize, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, random_bytes(bytes, seed)).unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
}

/// Forgets every snapshot not tagged `important`, then prunes three times
/// two seconds apart: whatever only those snapshots named is deleted.
fn forget_untagged_and_prune(c: &TestCluster) {
    c.ok(&["forget", "--keep-tag", "important"]).unwrap();
    for i in 0..3 {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
        c.ok(&["prune"]).unwrap();
    }
}

/// `check` exits 0 and the latest snapshot of `src` restores equal to it.
fn assert_sound(c: &TestCluster, src: &Path, name: &str) {
    let out = c.run(&["check"]).unwrap();
    assert!(
        out.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let target = c.dir.path().join(name);
    let id = latest_of(c, src);
    c.ok(&["restore", &id, "--target", target.to_str().unwrap()])
        .unwrap();
    if let Some(d) = tree_diff(src, &target.join(src.file_name().unwrap())) {
        panic!("restore differs: {d}");
    }
}

/// The id of the newest snapshot whose paths are `[src]`.
fn latest_of(c: &TestCluster, src: &Path) -> String {
    let want = Value::from(vec![src.to_str().unwrap()]);
    c.snapshots()
        .unwrap()
        .into_iter()
        .rev()
        .find(|s| s["paths"] == want)
        .and_then(|s| s["id"].as_str().map(str::to_owned))
        .expect("a snapshot of the path")
}

/// The tag's snapshot, and the one of `keep` that is forgotten.
fn two_snapshots(c: &TestCluster) -> (PathBuf, PathBuf) {
    let data = c.dir.path().join("src/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("other.txt"), b"kept by its tag").unwrap();
    let keep = c.dir.path().join("src2/keep");
    precious(&keep.join("precious.bin"), 500_000, 1);
    c.ok(&["backup", data.to_str().unwrap(), "--tag", "important"])
        .unwrap();
    (data, keep)
}

#[test]
fn a_file_reused_from_the_index_whose_chunks_were_pruned_is_read_again() {
    let c = cluster();
    let (_, keep) = two_snapshots(&c);
    c.ok(&["backup", keep.to_str().unwrap()]).unwrap();
    forget_untagged_and_prune(&c);
    // The file did not change: the index knows its chunks, which are gone.
    let out = c.ok(&["--json", "backup", keep.to_str().unwrap()]).unwrap();
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(
        summary["summary"]["bytes_read"].as_u64().unwrap_or(0) >= 500_000,
        "the file was not read again: {summary}"
    );
    assert_sound(&c, &keep, "restored");
}

#[test]
fn the_watching_agent_does_not_reuse_a_subtree_whose_chunks_were_pruned() {
    let c = cluster();
    let (_, _) = two_snapshots(&c);
    let keep = c.dir.path().join("src3/keep");
    precious(&keep.join("sub/precious.bin"), 400_000, 2);
    std::fs::write(keep.join("notes.txt"), b"v1").unwrap();
    let cfg = watching_config(&c, &[&keep], "");
    let agent = c.start_agent(&cfg, "agent").unwrap();
    wait_for("the agent's first snapshot of keep", WAIT, || {
        c.snapshots()
            .ok()?
            .iter()
            .any(|s| s["paths"] == Value::from(vec![keep.to_str().unwrap()]))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    forget_untagged_and_prune(&c);
    // A change beside `sub`: the agent's next snapshot would take `sub`
    // from the forgotten one, by id.
    std::fs::write(keep.join("notes.txt"), b"v2, longer").unwrap();
    wait_for("a snapshot of keep with the change", WAIT, || {
        let id = c
            .snapshots()
            .ok()?
            .into_iter()
            .rev()
            .find(|s| s["paths"] == Value::from(vec![keep.to_str().unwrap()]))?;
        let id = id["id"].as_str()?.to_owned();
        let out = c.ok(&["cat", &format!("{id}:keep/notes.txt")]).ok()?;
        (out == "v2, longer").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert_sound(&c, &keep, "restored");
    drop(agent);
}

#[test]
fn a_prune_between_the_check_and_the_record_makes_the_backup_check_again() {
    let c = cluster();
    let (_, keep) = two_snapshots(&c);
    c.ok(&["backup", keep.to_str().unwrap()]).unwrap();
    c.ok(&["forget", "--keep-tag", "important"]).unwrap();
    // Noted as unreferenced, not yet deleted: the next backup finds the
    // chunks present and relies on them.
    c.ok(&["prune"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let release = c.dir.path().join("release");
    let mut waiting = release.clone().into_os_string();
    waiting.push(".waiting");
    let mut held = c
        .ringvault()
        .args(["backup", keep.to_str().unwrap()])
        .env("RINGVAULT_TEST_HOLD_BEFORE_RECORD", &release)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the backup to reach its snapshot record", WAIT, || {
        Path::new(&waiting).exists().then_some(())
    })
    .unwrap();
    // Now the chunks go: trashed (noted over a second ago), then dropped.
    c.ok(&["prune"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.ok(&["prune"]).unwrap();
    // The retry waits again at the same point: let every attempt through.
    std::fs::write(&release, b"").unwrap();
    let out = ringvault_tests::wait_child(&mut held, Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "the backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_sound(&c, &keep, "restored");
}

#[test]
fn a_file_growing_while_it_is_read_is_recorded_with_the_size_read() {
    let c = cluster();
    let d = c.dir.path().join("d");
    std::fs::create_dir_all(&d).unwrap();
    let log = d.join("app.log");
    // The reproduction (a log appended to while it is backed up),
    // four times, widened so that it does not depend on the build's speed:
    // a 200 kB log appended to every millisecond or so, read after 300
    // other files (their names sort first), so well after the scan saw its
    // size. The code before recorded the scan's size with the read's
    // chunks: "restored 207774 bytes, the snapshot says 207720".
    for i in 0..300 {
        std::fs::write(d.join(format!("a-{i:03}")), random_bytes(2000, i)).unwrap();
    }
    for round in 0..4u64 {
        std::fs::write(&log, random_bytes(200_000, 40 + round)).unwrap();
        let appender = {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                for i in 0..1000 {
                    let mut h = std::fs::File::options().append(true).open(&log).unwrap();
                    writeln!(h, "line {i}").unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let out = c.run(&["backup", d.to_str().unwrap()]).unwrap();
        // 3: the file kept changing and was skipped, not recorded torn.
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "backup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        appender.join().unwrap();
    }
    // Every snapshot restores, each file to the size its entry records.
    for (i, s) in c.snapshots().unwrap().iter().enumerate() {
        let target = c.dir.path().join(format!("r{i}"));
        let id = s["id"].as_str().unwrap();
        let out = run_bounded(
            c.ringvault()
                .args(["restore", id, "--target", target.to_str().unwrap()]),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(
            out.status.success(),
            "snapshot {id} does not restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for args in [&["check"][..], &["check", "--read-data"]] {
        let out = c.run(args).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Point 1, the prune's side: with two of three servers down (W = 2), the
/// one left cannot vouch that its listing holds every snapshot, so prune
/// sweeps nothing, says why and fails; once they are back it sweeps.
#[test]
fn a_prune_whose_listing_reaches_too_few_servers_sweeps_nothing() {
    let mut c = cluster();
    let src = c.dir.path().join("src");
    precious(&src.join("a.bin"), 100_000, 41);
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();
    c.kill(1);
    c.kill(2);
    let out = c.run(&["--json", "prune"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("nothing was swept"),
        "prune with one of three servers up: {} {stderr}",
        out.status
    );
    c.restart(1).unwrap();
    c.restart(2).unwrap();
    let swept = wait_for("a prune that every server takes part in", WAIT, || {
        let out = c.ok(&["--json", "prune"]).ok()?;
        let v: Value = serde_json::from_str(out.lines().last()?).ok()?;
        (v["swept"].as_array()?.len() == 3).then_some(v)
    })
    .unwrap();
    assert_eq!(swept["trashed"], 0, "{swept}");
    assert_sound(&c, &src, "after");
}
