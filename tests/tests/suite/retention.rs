//! Retention and garbage collection on real servers: `forget`, `prune`
//! (mark-and-sweep rounds with a grace period and a trash), `stats`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::random_bytes;
use ringvault_tests::{ClusterOptions, TestCluster, run_bounded, tree_diff, wait_for};
use serde_json::Value;

const CHUNKS: &str = "16384,65536,262144";
/// A little over the 1 s grace the tests prune with.
const GRACE: Duration = Duration::from_millis(1100);

/// Three servers (N=3, W=2) with small segments (so compaction has sealed
/// segments to rewrite) and quick maintenance; the agent prunes with
/// `grace` and `trash` seconds.
fn cluster(grace: u64, trash: u64) -> TestCluster {
    let c = TestCluster::with(ClusterOptions {
        server_config: "probe-interval-ms = 200\nrepair-interval-ms = 300\nsegment-bytes = 1048576\nscrub-cycle-s = 0\nmetrics-listen = \"\"\n".into(),
        ..ClusterOptions::default()
    })
    .unwrap();
    let cfg = c.agent_config();
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(
        cfg,
        format!("{text}prune-grace-s = {grace}\ntrash-keep-s = {trash}\n"),
    )
    .unwrap();
    c.ok(&["init", "--chunker-params", CHUNKS]).unwrap();
    c
}

fn write_files(dir: &Path, files: usize, size: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        std::fs::write(
            dir.join(format!("f{i}.bin")),
            random_bytes(size, seed + i as u64),
        )
        .unwrap();
    }
}

fn src(c: &TestCluster) -> PathBuf {
    let s = c.dir.path().join("src");
    std::fs::create_dir_all(&s).unwrap();
    s
}

fn backup(c: &TestCluster, src: &Path) -> String {
    let out = c.ok(&["--json", "backup", src.to_str().unwrap()]).unwrap();
    let v: Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    v["snapshot"].as_str().unwrap_or_default().to_owned()
}

fn json(c: &TestCluster, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = c.ok(&all).unwrap();
    serde_json::from_str(out.lines().last().unwrap_or("")).unwrap()
}

/// Blob bytes every server holds, summed (`cluster status`).
fn stored(c: &TestCluster) -> u64 {
    let out = c.run(&["--json", "cluster", "status"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["bytes"].as_u64().unwrap_or(0))
        .sum()
}

fn segment_bytes(c: &TestCluster) -> u64 {
    (0..3)
        .map(|i| {
            std::fs::read_dir(c.node_dir(i).join("data/segments"))
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum::<u64>()
        })
        .sum()
}

fn assert_healthy(c: &TestCluster) {
    let out = c.run(&["--json", "check", "--read-data"]).unwrap();
    assert!(
        out.status.success(),
        "check --read-data failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn assert_restores(c: &TestCluster, src: &Path, name: &str) {
    let target = c.dir.path().join(name);
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    if let Some(d) = tree_diff(src, &target.join("src")) {
        panic!("restore differs: {d}");
    }
}

fn snapshot_count(c: &TestCluster) -> usize {
    c.snapshots().unwrap().len()
}

#[test]
fn forget_keeps_what_the_policy_keeps_and_forgotten_records_stay_gone() {
    let mut c = cluster(86_400, 604_800);
    let s = src(&c);
    for i in 0..4 {
        write_files(&s.join(format!("d{i}")), 1, 10_000, i);
        backup(&c, &s);
    }
    let plan = json(&c, &["forget", "--keep-last", "2", "--dry-run"]);
    assert_eq!(plan["applied"], false);
    assert_eq!(plan["groups"][0]["remove"].as_array().unwrap().len(), 2);
    assert_eq!(snapshot_count(&c), 4, "a dry run removed something");
    // A server down during forget must not bring the records back.
    c.kill(2);
    let done = json(&c, &["forget", "--keep-last", "2"]);
    assert_eq!(done["applied"], true);
    assert_eq!(snapshot_count(&c), 2);
    c.restart(2).unwrap();
    wait_for(
        "tombstones to reach node 3",
        Duration::from_secs(30),
        || (snapshot_count(&c) == 2).then_some(()),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(snapshot_count(&c), 2, "a forgotten record came back");
    // Without a policy, forget refuses.
    let out = c.run(&["forget"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no retention policy"));
}

#[test]
fn space_is_reclaimed_after_forget_prune_and_the_grace_periods() {
    let c = cluster(1, 1);
    let s = src(&c);
    write_files(&s.join("old"), 6, 512 << 10, 1);
    let first = backup(&c, &s);
    std::fs::remove_dir_all(s.join("old")).unwrap();
    write_files(&s.join("new"), 2, 256 << 10, 100);
    backup(&c, &s);
    let stats = json(&c, &["stats"]);
    let only_first = stats["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == first)
        .unwrap()["exclusive_bytes"]
        .as_u64()
        .unwrap();
    assert!(only_first > 3 << 20, "{stats}");
    assert!(stats["dedup_ratio"].as_f64().unwrap() >= 1.0, "{stats}");
    let before = stored(&c);
    let disk_before = segment_bytes(&c);
    json(&c, &["forget", "--keep-last", "1"]);
    // Round 1 notes the first snapshot's chunks as unreferenced, round 2
    // (past the 1 s grace) trashes them, round 3 (past the 1 s trash
    // period) drops them.
    let (mut trashed, mut expired) = (0, 0);
    for _ in 0..3 {
        let p = json(&c, &["prune"]);
        trashed += p["trashed"].as_u64().unwrap();
        expired += p["expired"].as_u64().unwrap();
        // Whole seconds: "more than 1 s ago" needs up to 2 s of wall time.
        std::thread::sleep(Duration::from_millis(2100));
    }
    assert!(
        trashed > 0 && expired == trashed,
        "{trashed} trashed, {expired} expired"
    );
    let after = stored(&c);
    assert_eq!(
        before - after,
        3 * only_first,
        "stored bytes should drop by N x what the forgotten snapshot alone held"
    );
    wait_for("compaction", Duration::from_secs(30), || {
        (segment_bytes(&c) < disk_before - only_first).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {} -> {}", disk_before, segment_bytes(&c)));
    assert_healthy(&c);
    assert_restores(&c, &s, "restored");
}

#[test]
fn trashed_blobs_can_be_restored() {
    let c = cluster(1, 86_400);
    let s = src(&c);
    write_files(&s.join("old"), 3, 256 << 10, 7);
    backup(&c, &s);
    std::fs::remove_dir_all(s.join("old")).unwrap();
    write_files(&s.join("new"), 1, 1000, 8);
    backup(&c, &s);
    let before = stored(&c);
    json(&c, &["forget", "--keep-last", "1"]);
    json(&c, &["prune"]);
    std::thread::sleep(GRACE);
    let p = json(&c, &["prune"]);
    assert!(p["trashed"].as_u64().unwrap() > 0, "{p}");
    assert!(stored(&c) < before);
    let back = json(&c, &["prune", "--restore-trash"]);
    assert!(back["restored"].as_u64().unwrap() > 0);
    assert_eq!(stored(&c), before);
}

#[test]
fn a_backup_running_during_prune_loses_nothing() {
    let c = cluster(30, 86_400);
    let s = src(&c);
    write_files(&s.join("base"), 2, 256 << 10, 20);
    backup(&c, &s);
    write_files(&s.join("big"), 24, 1 << 20, 21);
    let mut running = c.spawn(&["backup", s.to_str().unwrap()]).unwrap();
    let mut rounds = 0;
    loop {
        json(&c, &["prune"]);
        rounds += 1;
        if running.try_wait().unwrap().is_some() {
            break;
        }
    }
    let out = running.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the backup failed during prune: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rounds >= 1);
    for _ in 0..2 {
        json(&c, &["prune"]);
    }
    assert_healthy(&c);
    assert_restores(&c, &s, "restored");
}

#[test]
fn a_snapshot_made_just_before_prune_keeps_its_otherwise_unreferenced_chunks() {
    let c = cluster(1, 86_400);
    let s = src(&c);
    write_files(&s.join("data"), 4, 256 << 10, 30);
    backup(&c, &s);
    std::fs::rename(s.join("data"), c.dir.path().join("aside")).unwrap();
    write_files(&s.join("other"), 1, 1000, 31);
    backup(&c, &s);
    json(&c, &["forget", "--keep-last", "1"]);
    // The data comes back (same bytes, same chunks: the backup uploads
    // nothing, because the cluster answers that it has them), just before
    // prune runs twice, past the 1 s grace.
    json(&c, &["prune"]);
    std::thread::sleep(GRACE);
    std::fs::rename(c.dir.path().join("aside"), s.join("data")).unwrap();
    backup(&c, &s);
    json(&c, &["prune"]);
    assert_healthy(&c);
    assert_restores(&c, &s, "restored");
}

#[test]
fn a_prune_killed_at_any_point_is_harmless() {
    let mut c = cluster(1, 86_400);
    let s = src(&c);
    write_files(&s.join("gone"), 8, 128 << 10, 40);
    backup(&c, &s);
    std::fs::remove_dir_all(s.join("gone")).unwrap();
    write_files(&s.join("kept"), 4, 128 << 10, 41);
    backup(&c, &s);
    json(&c, &["forget", "--keep-last", "1"]);
    for delay_ms in [0u64, 30, 80, 150, 300, 600] {
        let mut p = c
            .ringvault()
            .arg("prune")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = p.kill();
        let _ = p.wait();
    }
    // A server restarted mid-round forgets the round: that prune reports
    // it and leaves its blobs alone.
    c.restart(1).unwrap();
    c.wait_all_up().unwrap();
    for _ in 0..2 {
        json(&c, &["prune"]);
        std::thread::sleep(GRACE);
    }
    assert_healthy(&c);
    assert_restores(&c, &s, "restored");
    let st = json(&c, &["stats"]);
    assert_eq!(st["snapshots"].as_array().unwrap().len(), 1);
}

#[test]
fn the_agent_applies_its_retention_policy_after_each_snapshot() {
    let c = cluster(86_400, 604_800);
    let s = src(&c);
    write_files(&s.join("d"), 1, 1000, 50);
    let cfg = crate::agent::watching_config(
        &c,
        &[&s],
        "apply-retention = true\n[retention]\nkeep-last = 2\n",
    );
    let agent = c.start_agent(&cfg, "agent").unwrap();
    for i in 0..4u64 {
        let saved = agent.log_text().matches("snapshot saved").count();
        std::fs::write(s.join(format!("d/edit{i}")), i.to_le_bytes()).unwrap();
        wait_for("the next snapshot", Duration::from_secs(60), || {
            (agent.log_text().matches("snapshot saved").count() > saved).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    }
    wait_for("retention to keep 2", Duration::from_secs(30), || {
        (snapshot_count(&c) == 2).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {} snapshots\n{}",
            snapshot_count(&c),
            agent.log_text()
        )
    });
    assert!(agent.log_text().contains("retention policy applied"));
    assert_restores(&c, &s, "restored");
}

/// The ids `forget --dry-run` would keep and remove, with the reasons to
/// keep (one group expected).
fn plan(c: &TestCluster, policy: &[&str]) -> (Vec<(String, Value)>, Vec<String>) {
    let mut args = vec!["forget", "--dry-run"];
    args.extend_from_slice(policy);
    let plan = json(c, &args);
    let groups = plan["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{plan}");
    let keep = groups[0]["keep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["id"].as_str().unwrap().to_owned(), k["reasons"].clone()))
        .collect();
    let remove = groups[0]["remove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    (keep, remove)
}

#[test]
fn keep_within_takes_restic_durations_where_m_is_months() {
    let c = cluster(86_400, 604_800);
    let s = src(&c);
    write_files(&s.join("d"), 1, 1000, 70);
    // A snapshot recorded an hour ago (restic's `backup --time`), then one
    // now: the older is far more than six minutes and far less than six
    // months older than the newest.
    let hour_ago =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(3600))
            .to_string();
    let out = c
        .ok(&["--json", "backup", "--time", &hour_ago, s.to_str().unwrap()])
        .unwrap();
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let old = v["snapshot"].as_str().unwrap().to_owned();
    let listed = c.snapshots().unwrap();
    assert_eq!(listed[0]["time"], hour_ago, "--time is the recorded time");
    write_files(&s.join("d2"), 1, 1000, 71);
    let new = backup(&c, &s);

    let (keep, remove) = plan(&c, &["--keep-within", "6m"]);
    assert!(remove.is_empty(), "6m removed {remove:?}: it read minutes");
    assert_eq!(
        keep,
        [
            (new.clone(), serde_json::json!(["within"])),
            (old.clone(), serde_json::json!(["within"]))
        ]
    );
    // Combined units, and hours: 2h reaches the older, 1h does not (it is
    // an hour older plus the seconds between the two backups).
    for both in ["1y5m7d2h", "2h", "1d", "0y0m0d2h"] {
        let (keep, remove) = plan(&c, &["--keep-within", both]);
        assert!(remove.is_empty() && keep.len() == 2, "{both}: {remove:?}");
    }
    let (keep, remove) = plan(&c, &["--keep-within", "1h"]);
    assert_eq!((keep.len(), remove), (1, vec![old.clone()]));
    // The bucketed form: the newest of each day within 1d: one day, one kept.
    let (keep, remove) = plan(&c, &["--keep-within-daily", "1d"]);
    assert_eq!(keep.len() + remove.len(), 2);
    assert!(
        keep.iter()
            .any(|(id, why)| *id == new && why[0] == "within-daily")
    );

    // What restic refuses is refused, before anything is looked at.
    for bad in ["6", "90s", "2w", "5x", "1.5d", "5 d", "", "m"] {
        let out = c
            .run(&["forget", "--dry-run", "--keep-within", bad])
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "--keep-within {bad:?} was taken"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--keep-within"), "{bad:?}: {err}");
    }
    // The config's [retention] table takes the same syntax.
    let cfg = c.agent_config().with_file_name("months.toml");
    let text = std::fs::read_to_string(c.agent_config()).unwrap();
    std::fs::write(&cfg, format!("{text}[retention]\nkeep-within = \"6m\"\n")).unwrap();
    let out = run_bounded(
        c.ringvault_with(&cfg)
            .args(["--json", "forget", "--dry-run"]),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["groups"][0]["remove"], serde_json::json!([]), "{v}");
    assert_eq!(snapshot_count(&c), 2, "a dry run removed something");
}

/// Waits until `holds` is true of every peer in node 1's view.
fn wait_for_node_1(c: &TestCluster, what: &str, holds: impl Fn(&Value) -> bool) {
    wait_for(what, Duration::from_secs(30), || {
        let out = c.run(&["--json", "cluster", "status"]).ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["nodes"][0]["peers"]
            .as_array()?
            .iter()
            .all(&holds)
            .then_some(())
    })
    .unwrap();
}

#[test]
fn prune_skips_partitions_whose_owners_are_not_all_up() {
    let mut c = cluster(1, 86_400);
    let s = src(&c);
    write_files(&s.join("old"), 4, 128 << 10, 60);
    backup(&c, &s);
    std::fs::remove_dir_all(s.join("old")).unwrap();
    write_files(&s.join("new"), 1, 1000, 61);
    backup(&c, &s);
    json(&c, &["forget", "--keep-last", "1"]);
    c.kill(2);
    wait_for_node_1(&c, "node 3 down", |p| p["node"] != 3 || p["state"] != "up");
    for _ in 0..2 {
        let out = c.run(&["--json", "prune"]).unwrap();
        assert_eq!(out.status.code(), Some(3), "a server missing is reported");
        let p: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(p["trashed"], 0, "{p}");
        assert!(p["partitions_skipped"].as_u64().unwrap() > 0, "{p}");
        std::thread::sleep(GRACE);
    }
    c.restart(2).unwrap();
    wait_for_node_1(&c, "every peer up", |p| p["state"] == "up");
    let mut trashed = 0;
    for _ in 0..2 {
        trashed += json(&c, &["prune"])["trashed"].as_u64().unwrap();
        std::thread::sleep(GRACE);
    }
    assert!(trashed > 0, "nothing trashed once every owner was up");
    assert_healthy(&c);
    assert_restores(&c, &s, "restored");
}

/// A server down during `forget` comes back holding the forgotten records.
/// Repair runs once an hour here, so nothing but the listing's tombstones
/// and the restarted server's own record sync at start can keep them away.
#[test]
fn a_forgotten_snapshot_stays_gone_when_a_server_that_missed_the_forget_returns() {
    let mut c = TestCluster::with(ClusterOptions {
        server_config: "probe-interval-ms = 200\nrepair-interval-ms = 3600000\nscrub-cycle-s = 0\nmetrics-listen = \"\"\n".into(),
        ..ClusterOptions::default()
    })
    .unwrap();
    c.ok(&["init", "--chunker-params", CHUNKS]).unwrap();
    let s = src(&c);
    let mut ids = Vec::new();
    for i in 0..3 {
        write_files(&s.join(format!("d{i}")), 1, 10_000, 70 + i);
        ids.push(backup(&c, &s));
    }
    c.kill(2);
    let done = json(&c, &["forget", "--keep-last", "1"]);
    assert_eq!(done["applied"], true);
    c.restart(2).unwrap();
    // Every server sees node 3 up again, so the agent asks it too.
    c.wait_all_up().unwrap();
    let listed: Vec<String> = c
        .snapshots()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        listed,
        [ids[2].clone()],
        "a forgotten snapshot is listed again right after its server restarted"
    );
    let target = c.dir.path().join("restored");
    let out = c
        .run(&["restore", &ids[0], "--target", target.to_str().unwrap()])
        .unwrap();
    assert!(!out.status.success(), "a forgotten snapshot was restored");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no snapshot"), "{err}");
    // Node 3 pulled the tombstones when it started: alone, it lists only
    // the kept snapshot.
    std::thread::sleep(Duration::from_secs(2));
    let log = c.server_log(2);
    assert!(log.contains("records synced at start"), "{log}");
    c.kill(0);
    c.kill(1);
    let listed: Vec<String> = c
        .snapshots()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        listed,
        [ids[2].clone()],
        "node 3 alone lists forgotten snapshots"
    );
}
