//! Power loss, tested: one chunk server keeps its data directory on the
//! powerfail file system ([`ringvault_tests::powerfail`]), which holds
//! written data in memory until it is synced and loses it when the power
//! fails. Each test takes one phase of the server's life, counts its sync
//! points in an unarmed run, then for k = 1..=K (K = all of them, at most
//! [`MAX_K`]) puts the node back in the state before the phase, makes the
//! power fail at the k-th sync point (once losing every unsynced page,
//! once keeping a seeded random half of them), and reboots the node on
//! what survived. The node must start without help, still hold everything
//! it acknowledged, and pass `check --read-data`.
//!
//! - backup: one node (N = W = 1) behind an honest witness
//!   ([`HostileServer`]) that records every blob and snapshot record the
//!   node acknowledged; afterwards each of them is read back, the first
//!   snapshot restores byte-identical, and the interrupted backup runs
//!   again and restores.
//! - compaction: one node; the third prune after a forget drops the trash,
//!   and the compaction it starts rewrites a segment that is a quarter
//!   live; afterwards the kept snapshot restores and prune runs again.
//! - repair: three nodes (N = 3, W = 2), node 1 starting empty and refilled
//!   by repair; afterwards it heals and every copy passes `check
//!   --read-data`.
//!
//! Each test prints, per phase, the sync points counted and the K covered.
//! What the model leaves out is in [`ringvault_tests::powerfail`]'s docs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringvault_common::{ChunkId, NodeId};
use ringvault_tests::hostile::HostileServer;
use ringvault_tests::powerfail::{CrashReport, Loss, MountError, PowerFailFs};
use ringvault_tests::{ClusterOptions, TestCluster, tree_diff, wait_for};
use serde_json::Value;

use crate::{TEST_CHUNKS, make_files};

/// Quick maintenance, scrub off, small segments (so that compaction has
/// sealed segments to rewrite and backups rotate segments), and a low
/// free-space watermark: the tier is not about a full disk, and the
/// default (1 % of the host's disk) may exceed what a CI machine has free.
const SETTINGS: &str = "probe-interval-ms = 200\nroute-around-ms = 1500\nrepair-interval-ms = 300\nscrub-cycle-s = 0\nmetrics-listen = \"\"\nsegment-bytes = 1048576\nmin-free-bytes = 16777216\nmin-free-percent = 0\n";

/// Most sync points of one phase the power fails at. Every phase measured
/// so far has fewer, so K is all of them; this bounds the tier's time
/// should a phase grow.
const MAX_K: u64 = 20;

/// Longest a phase may take to reach its armed sync point or end.
const PHASE_LIMIT: Duration = Duration::from_secs(60);

/// The two ways the power fails at sync point `k`.
fn losses(k: u64) -> [Loss; 2] {
    [
        Loss::All,
        Loss::KeepSome {
            seed: k,
            percent: 50,
        },
    ]
}

/// A cluster whose node `node` keeps its data directory on a powerfail
/// mount. Fields drop in order: the mount first (it kills the node, then
/// unmounts), then the witness, then the cluster.
struct Rig {
    fs: PowerFailFs,
    witness: Option<HostileServer>,
    c: TestCluster,
    node: usize,
}

impl Rig {
    /// Starts `nodes` servers (N = `replicas`, W = `quorum`), moves node
    /// `node`'s data directory onto a powerfail mount (empty) and, with
    /// `witness`, puts an honest [`HostileServer`] in front of it to see
    /// what it acknowledges. `None` (printed) where FUSE is unavailable.
    fn start(nodes: u32, replicas: u32, quorum: u32, node: usize, witness: bool) -> Option<Self> {
        let mut c = TestCluster::with(ClusterOptions {
            nodes,
            replicas,
            quorum,
            proxies: false,
            server_config: SETTINGS.into(),
        })
        .unwrap();
        let root = c.dir.path().join("powerfail");
        let (backing, mnt) = (root.join("backing"), root.join("mnt"));
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let fs = match PowerFailFs::mount(&backing, &mnt) {
            Ok(fs) => fs,
            Err(MountError::Unavailable(why)) => {
                eprintln!("skipped: {why}");
                return None;
            }
            Err(e) => panic!("mounting the powerfail file system: {e:#}"),
        };
        c.kill(node);
        c.set_server_setting(node, "data-dir", &format!("\"{}\"", mnt.display()));
        // The witness restarts the node behind it.
        let witness = witness.then(|| HostileServer::impersonate(&mut c, node).unwrap());
        let mut rig = Self {
            fs,
            witness,
            c,
            node,
        };
        if rig.witness.is_some() {
            rig.fs.set_victim(rig.c.server_pid(node));
        } else {
            rig.boot().unwrap();
        }
        Some(rig)
    }

    fn witness(&self) -> &HostileServer {
        self.witness.as_ref().expect("a rig with a witness")
    }

    /// (Re)starts the node on what its data directory holds and makes it
    /// the power loss's victim.
    ///
    /// # Errors
    /// When it does not start (its log is in the error).
    fn boot(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.c.restart(self.node)?;
        self.fs.set_victim(self.c.server_pid(self.node));
        Ok(())
    }

    /// Kills the node (if it runs) and reaps it; it stops being the
    /// victim first, so that no signal ever goes to a reaped pid.
    fn stop(&mut self) {
        self.fs.set_victim(None);
        self.c.kill(self.node);
    }

    /// The reboot after a power loss: reaps the killed node, mounts the
    /// backing directory afresh and starts the node on it.
    ///
    /// # Errors
    /// When the node does not start.
    fn reboot(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.fs.remount().unwrap();
        self.boot()
    }

    /// A clean shutdown: SIGTERM, every page written back, a fresh mount;
    /// the node stays down.
    fn shut_down(&mut self) {
        self.fs.set_victim(None);
        self.c.terminate(self.node).unwrap();
        self.fs.flush_all().unwrap();
        self.fs.remount().unwrap();
    }

    /// The agent's state directory (its index and caches).
    fn agent_state(&self) -> PathBuf {
        self.c.agent_config().parent().unwrap().join("state")
    }

    /// Shuts the node down cleanly (if it runs) and copies what is durable
    /// on it, with the agent's state, aside as `name`; the node stays down.
    fn save(&mut self, name: &str) -> PathBuf {
        if self.c.server_pid(self.node).is_some() {
            self.shut_down();
        }
        let to = self.c.dir.path().join("powerfail").join(name);
        copy_tree(self.fs.backing(), &to.join("backing"));
        copy_tree(&self.agent_state(), &to.join("state"));
        to
    }

    /// Stops the node and puts back what [`Rig::save`] copied, on a fresh
    /// mount (sync points count from zero); the node stays down.
    fn restore(&mut self, saved: &Path) {
        self.stop();
        replace_tree(&saved.join("backing"), self.fs.backing());
        replace_tree(&saved.join("state"), &self.agent_state());
        self.fs.remount().unwrap();
    }
}

/// Copies directory `from` (if it exists) to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for e in entries {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type().unwrap();
        if t.is_dir() {
            copy_tree(&src, &dst);
        } else if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Makes directory `to` a copy of `from`.
fn replace_tree(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    copy_tree(from, to);
}

/// How a phase ended.
struct Outcome {
    /// The power loss, if the phase reached its armed sync point.
    crash: Option<CrashReport>,
    /// Whether the phase's client command exited 0 (`None`: it was still
    /// running when the power failed, or there was none).
    client_ok: Option<bool>,
}

/// Waits until the power fails or the phase ends: `client` (if any) has
/// exited and `done` holds. A client still running when the power fails
/// gets 500 ms to take in answers already sent, then is killed.
fn await_phase(
    rig: &Rig,
    mut client: Option<Child>,
    mut done: impl FnMut(&Rig) -> bool,
) -> Outcome {
    let start = Instant::now();
    let mut client_ok = None;
    loop {
        // Also the pause between polls.
        let crashed = rig.fs.wait_crash(Duration::from_millis(50));
        if let Some(c) = client.as_mut()
            && client_ok.is_none()
            && let Some(status) = c.try_wait().unwrap()
        {
            client_ok = Some(status.success());
        }
        if let Some(crash) = crashed {
            if let Some(c) = client.as_mut()
                && client_ok.is_none()
            {
                let deadline = Instant::now() + Duration::from_millis(500);
                while client_ok.is_none() && Instant::now() < deadline {
                    client_ok = c.try_wait().unwrap().map(|s| s.success());
                    std::thread::sleep(Duration::from_millis(20));
                }
                if client_ok.is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            return Outcome {
                crash: Some(crash),
                client_ok,
            };
        }
        if (client.is_none() || client_ok.is_some()) && done(rig) {
            return Outcome {
                crash: None,
                client_ok,
            };
        }
        assert!(
            start.elapsed() < PHASE_LIMIT,
            "the phase neither ended nor reached its sync point within {PHASE_LIMIT:?}"
        );
    }
}

/// Where a phase's sync points are counted from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The node has started and is idle until the phase's client begins.
    Started,
    /// The mount: the node's own start is part of the phase (it begins
    /// work by itself as it starts, as repair does).
    Mount,
}

/// The node started on what [`Rig::restore`] put back, with the power
/// armed (if `arm`) at the k-th sync point counted as `from` says; then the
/// phase (`start`, `done`) until the power fails or the phase ends.
fn run_phase(
    rig: &mut Rig,
    from: Origin,
    arm: Option<(u64, Loss)>,
    start: &mut dyn FnMut(&mut Rig) -> Option<Child>,
    done: &mut dyn FnMut(&Rig) -> bool,
) -> (u64, Outcome) {
    if from == Origin::Mount {
        rig.fs.arm(arm);
    }
    if let Err(e) = rig.boot() {
        // The power may fail while the node starts.
        return match rig.fs.crash() {
            Some(crash) => (
                0,
                Outcome {
                    crash: Some(crash),
                    client_ok: None,
                },
            ),
            None => panic!("the node does not start: {e:#}"),
        };
    }
    let mark = match from {
        Origin::Mount => 0,
        Origin::Started => rig.fs.syncs(),
    };
    if from == Origin::Started {
        rig.fs.arm(arm.map(|(k, loss)| (mark + k, loss)));
    }
    let client = start(rig);
    (mark, await_phase(rig, client, done))
}

/// The sync points of one phase, from an unarmed run on `saved`. Prints
/// them; returns how many.
fn count_sync_points(
    rig: &mut Rig,
    phase: &str,
    saved: &Path,
    from: Origin,
    start: &mut dyn FnMut(&mut Rig) -> Option<Child>,
    done: &mut dyn FnMut(&Rig) -> bool,
) -> u64 {
    rig.restore(saved);
    let (mark, outcome) = run_phase(rig, from, None, start, done);
    assert_ne!(
        outcome.client_ok,
        Some(false),
        "{phase}: the unarmed run failed"
    );
    let log = rig.fs.sync_log();
    let points = &log[mark as usize..];
    eprintln!("powerfail {phase}: {} sync points:", points.len());
    for (n, what) in points.iter().enumerate() {
        eprintln!("  {:>3} {what}", n + 1);
    }
    points.len() as u64
}

/// For k = 1..=`k_max` and both [`losses`]: restores `saved`, arms the
/// power loss at the k-th sync point (counted as `from` says), runs the
/// phase (`start`, `done`) until the power fails (or, if this run has
/// fewer sync points, until it ends, and the power fails then), reboots
/// the node and calls `verify` with the outcome and a description for
/// failure messages. Prints a line per run; a run that fails does not stop
/// the others, and the test fails at the end listing every one.
#[allow(clippy::too_many_arguments)]
fn crash_at_each_sync_point(
    rig: &mut Rig,
    phase: &str,
    saved: &Path,
    from: Origin,
    k_max: u64,
    start: &mut dyn FnMut(&mut Rig) -> Option<Child>,
    done: &mut dyn FnMut(&Rig) -> bool,
    verify: &mut dyn FnMut(&mut Rig, &Outcome, &str),
) {
    let mut failed = Vec::new();
    // Replays one sync point: RINGVAULT_POWERFAIL_K=<k>.
    let only: Option<u64> = std::env::var("RINGVAULT_POWERFAIL_K")
        .ok()
        .and_then(|k| k.parse().ok());
    for k in (1..=k_max).filter(|k| only.is_none_or(|only| only == *k)) {
        for loss in losses(k) {
            let began = Instant::now();
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crash_once(rig, phase, saved, from, (k, loss), start, done, verify)
            }));
            match run {
                Ok(context) => eprintln!("powerfail ok ({:.1?}): {context}", began.elapsed()),
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    eprintln!("powerfail FAILED: {why}");
                    failed.push(why);
                }
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} power losses during the {phase} went wrong:\n{}",
        failed.len(),
        2 * k_max,
        failed.join("\n")
    );
}

/// One run of [`crash_at_each_sync_point`]: returns its description.
#[allow(clippy::too_many_arguments)]
fn crash_once(
    rig: &mut Rig,
    phase: &str,
    saved: &Path,
    from: Origin,
    (k, loss): (u64, Loss),
    start: &mut dyn FnMut(&mut Rig) -> Option<Child>,
    done: &mut dyn FnMut(&Rig) -> bool,
    verify: &mut dyn FnMut(&mut Rig, &Outcome, &str),
) -> String {
    rig.restore(saved);
    if let Some(w) = &rig.witness {
        w.clear_acknowledged();
    }
    let (_, mut outcome) = run_phase(rig, from, Some((k, loss)), start, done);
    let report = match &outcome.crash {
        Some(report) => report.clone(),
        None => {
            let report = rig.fs.power_loss(loss);
            outcome.crash = Some(report.clone());
            report
        }
    };
    let when = match report.sync_point {
        Some(_) => format!("instead of `{}`", report.instead_of),
        None => "after the phase ended (it had fewer sync points this time)".into(),
    };
    let context = format!(
        "{phase}: power loss at sync point {k} ({loss:?}), {when}: {} unsynced pages in {} files, {} kept",
        report.dirty_pages, report.files, report.kept_pages
    );
    if let Err(e) = rig.reboot() {
        panic!("{context}: the node does not restart: {e:#}");
    }
    verify(rig, &outcome, &context);
    context
}

/// Reads every blob of `blobs` back from node `node` (1-based id) and
/// requires the bytes it was acknowledged with.
fn assert_holds(c: &TestCluster, node: NodeId, blobs: &BTreeMap<ChunkId, Bytes>, context: &str) {
    let loaded = ringvault::repo::load_config(Some(c.agent_config())).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let check = async {
            let (cluster, _) = ringvault::repo::connect(&loaded.config).await?;
            let mut missing = Vec::new();
            for (id, sent) in blobs {
                match cluster.get_from(node, id).await? {
                    Some(held) if held == *sent => {}
                    Some(_) => missing.push(format!("{id} (different bytes)")),
                    None => missing.push(id.to_string()),
                }
            }
            cluster.close().await;
            anyhow::Ok(missing)
        };
        match tokio::time::timeout(Duration::from_secs(60), check).await {
            Ok(Ok(missing)) => assert!(
                missing.is_empty(),
                "{context}: {} of {} acknowledged blobs are lost: {}",
                missing.len(),
                blobs.len(),
                missing.join(", ")
            ),
            Ok(Err(e)) => panic!("{context}: reading the acknowledged blobs back: {e:#}"),
            Err(_) => panic!("{context}: reading the acknowledged blobs back took over 60 s"),
        }
    });
}

/// `ringvault --json check --read-data` must exit 0.
fn assert_clean(c: &TestCluster, context: &str) {
    let out = c.run(&["--json", "check", "--read-data"]).unwrap();
    assert!(
        out.status.success(),
        "{context}: check --read-data failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restores snapshot `id` and compares `expected` with what it restored
/// under `relative` (`src` or a directory below it).
fn assert_restores(c: &TestCluster, id: &str, relative: &str, expected: &Path, context: &str) {
    let target = c.dir.path().join("restored");
    if target.exists() {
        std::fs::remove_dir_all(&target).unwrap();
    }
    c.ok(&["restore", id, "--target", target.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{context}: restoring {id}: {e:#}"));
    if let Some(d) = tree_diff(expected, &target.join(relative)) {
        panic!("{context}: snapshot {id} restores differently: {d}");
    }
}

/// `ringvault --json backup SRC`: the snapshot id.
fn backup(c: &TestCluster, src: &Path) -> String {
    let out = c.ok(&["--json", "backup", src.to_str().unwrap()]).unwrap();
    let v: Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    v["snapshot"].as_str().unwrap().to_owned()
}

/// The ids `ringvault snapshots` lists.
fn snapshot_ids(c: &TestCluster) -> Vec<String> {
    c.snapshots()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

fn spawn(c: &TestCluster, args: &[&str]) -> Option<Child> {
    Some(c.spawn(args).unwrap())
}

#[test]
#[ignore = "fault test: run with --include-ignored"]
fn power_loss_at_each_sync_point_of_a_backup_loses_nothing_acknowledged() {
    let began = Instant::now();
    let Some(mut rig) = Rig::start(1, 1, 1, 0, true) else {
        return;
    };
    rig.c
        .ok(&["init", "--chunker-params", TEST_CHUNKS])
        .unwrap();
    let src = rig.c.dir.path().join("src");
    make_files(&src, "one", 8, 256 << 10, 1);
    let first = backup(&rig.c, &src);
    let acked_first = rig.witness().acknowledged_blobs();
    let saved = rig.save("backed-up-once");
    make_files(&src, "two", 8, 256 << 10, 100);
    let src_arg = src.to_str().unwrap().to_owned();

    let mut start = |rig: &mut Rig| spawn(&rig.c, &["backup", &src_arg]);
    let mut done = |_: &Rig| true;
    let total = count_sync_points(
        &mut rig,
        "backup",
        &saved,
        Origin::Started,
        &mut start,
        &mut done,
    );
    assert!(total > 0, "a backup made nothing durable");
    let k = total.min(MAX_K);
    let node = NodeId(1);
    let mut verify = |rig: &mut Rig, outcome: &Outcome, context: &str| {
        let mut acked = rig.witness().acknowledged_blobs();
        acked.extend(acked_first.clone());
        let snapshots = rig.witness().acknowledged_snapshots();
        if outcome.client_ok == Some(true) {
            assert!(
                !snapshots.is_empty(),
                "{context}: the backup succeeded unacknowledged"
            );
        }
        assert_holds(&rig.c, node, &acked, context);
        assert_clean(&rig.c, context);
        let listed = snapshot_ids(&rig.c);
        assert!(
            listed.contains(&first),
            "{context}: the first snapshot is gone"
        );
        for id in &snapshots {
            assert!(
                listed.contains(&id.to_hex()),
                "{context}: acknowledged snapshot {id} is gone"
            );
        }
        assert_restores(&rig.c, &first, "src/one", &src.join("one"), context);
        let again = backup(&rig.c, &src);
        assert_restores(&rig.c, &again, "src", &src, context);
    };
    crash_at_each_sync_point(
        &mut rig,
        "backup",
        &saved,
        Origin::Started,
        k,
        &mut start,
        &mut done,
        &mut verify,
    );
    eprintln!(
        "powerfail backup: {total} sync points, power lost at the first {k}, twice each, in {:.0?}",
        began.elapsed()
    );
}

#[test]
#[ignore = "fault test: run with --include-ignored"]
fn power_loss_at_each_sync_point_of_a_compaction_after_prune_loses_nothing() {
    let began = Instant::now();
    let Some(mut rig) = Rig::start(1, 1, 1, 0, false) else {
        return;
    };
    let cfg = rig.c.agent_config().to_owned();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}prune-grace-s = 1\ntrash-keep-s = 0\n")).unwrap();
    rig.c
        .ok(&["init", "--chunker-params", TEST_CHUNKS])
        .unwrap();
    // One segment, a quarter of it still live after the forget.
    let src = rig.c.dir.path().join("src");
    make_files(&src, "keep", 2, 256 << 10, 1);
    make_files(&src, "drop", 6, 256 << 10, 10);
    backup(&rig.c, &src);
    std::fs::remove_dir_all(src.join("drop")).unwrap();
    make_files(&src, "new", 1, 64 << 10, 20);
    let kept = backup(&rig.c, &src);
    rig.c.ok(&["forget", "--keep-last", "1"]).unwrap();
    // Prune notes the unreferenced chunks, then (past the 1 s grace, in
    // whole seconds) trashes them; the third prune, the phase, drops the
    // trash and compacts.
    rig.c.ok(&["prune"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    rig.c.ok(&["prune"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let saved = rig.save("trashed");

    let compacted = |rig: &Rig| rig.c.server_log(rig.node).contains("compacted segments");
    let mut start = |rig: &mut Rig| spawn(&rig.c, &["prune"]);
    let mut done = compacted;
    let total = count_sync_points(
        &mut rig,
        "compaction",
        &saved,
        Origin::Started,
        &mut start,
        &mut done,
    );
    let k = total.min(MAX_K);
    let mut verify = |rig: &mut Rig, _: &Outcome, context: &str| {
        assert_clean(&rig.c, context);
        assert_restores(&rig.c, &kept, "src", &src, context);
        // What the power loss interrupted completes on the next prune.
        rig.c
            .ok(&["prune"])
            .unwrap_or_else(|e| panic!("{context}: prune again: {e:#}"));
        let first = rig.fs.backing().join("segments/00000001.seg");
        wait_for("the compaction", Duration::from_secs(30), || {
            (!first.exists()).then_some(())
        })
        .unwrap_or_else(|e| panic!("{context}: {e:#}"));
        assert_clean(&rig.c, context);
    };
    crash_at_each_sync_point(
        &mut rig,
        "compaction",
        &saved,
        Origin::Started,
        k,
        &mut start,
        &mut done,
        &mut verify,
    );
    eprintln!(
        "powerfail compaction: {total} sync points, power lost at the first {k}, twice each, in {:.0?}",
        began.elapsed()
    );
}

#[test]
#[ignore = "fault test: run with --include-ignored"]
fn power_loss_at_each_sync_point_of_a_repair_heals() {
    let began = Instant::now();
    let Some(mut rig) = Rig::start(3, 3, 2, 0, false) else {
        return;
    };
    rig.c
        .ok(&["init", "--chunker-params", TEST_CHUNKS])
        .unwrap();
    let src = rig.c.dir.path().join("src");
    // More blobs than one repair request pulls (64), so that repair
    // commits in several batches.
    make_files(&src, "data", 48, 96 << 10, 1);
    let snapshot = backup(&rig.c, &src);
    // Node 1 starts over empty; the other two hold every copy.
    rig.stop();
    replace_tree(&rig.c.dir.path().join("powerfail/empty"), rig.fs.backing());
    let saved = rig.save("empty");

    let blobs_of = |c: &TestCluster, i: usize| -> Option<u64> {
        let out = c.run(&["--json", "cluster", "status"]).ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["nodes"][i]["blobs"].as_u64()
    };
    let full = blobs_of(&rig.c, 1).unwrap();
    assert!(full > 0);
    let mut start = |_: &mut Rig| None;
    let mut done = |rig: &Rig| blobs_of(&rig.c, 0) == Some(full);
    let total = count_sync_points(
        &mut rig,
        "repair",
        &saved,
        Origin::Mount,
        &mut start,
        &mut done,
    );
    let k = total.min(MAX_K);
    let mut verify = |rig: &mut Rig, _: &Outcome, context: &str| {
        wait_for("node 1 to be refilled", Duration::from_secs(60), || {
            (blobs_of(&rig.c, 0) == Some(full)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{context}: {e:#}"));
        wait_for("every copy", Duration::from_secs(60), || {
            rig.c.run(&["check"]).ok()?.status.success().then_some(())
        })
        .unwrap_or_else(|e| panic!("{context}: {e:#}"));
        assert_clean(&rig.c, context);
    };
    crash_at_each_sync_point(
        &mut rig,
        "repair",
        &saved,
        Origin::Mount,
        k,
        &mut start,
        &mut done,
        &mut verify,
    );
    assert_restores(&rig.c, &snapshot, "src", &src, "after the repair runs");
    eprintln!(
        "powerfail repair: {total} sync points, power lost at the first {k}, twice each, in {:.0?}",
        began.elapsed()
    );
}
