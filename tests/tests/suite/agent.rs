//! `ringvault agent`: a real agent process watching real directories,
//! against real chunk servers on loopback. Every wait is bounded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringvault_tests::{TestCluster, tree_diff, wait_for};

const WAIT: Duration = Duration::from_secs(90);

/// An agent config watching `roots`, with a short quiet period.
pub(crate) fn watching_config(c: &TestCluster, roots: &[&Path], extra: &str) -> PathBuf {
    let base = std::fs::read_to_string(c.agent_config()).unwrap();
    let list: Vec<String> = roots
        .iter()
        .map(|p| format!("{:?}", p.to_str().unwrap()))
        .collect();
    let cfg = c.agent_config().with_file_name("watching.toml");
    std::fs::write(
        &cfg,
        format!(
            "{base}paths = [{}]\nquiet-ms = 300\nmax-delay-ms = 3000\n{extra}",
            list.join(", ")
        ),
    )
    .unwrap();
    cfg
}

/// Waits until the agent has stored its first snapshot.
fn wait_first_snapshot(c: &TestCluster, agent: &ringvault_tests::AgentProcess) {
    wait_for("the first snapshot", WAIT, || {
        (c.snapshots().ok()?.len() == 1).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
}

/// Waits until the latest snapshot restores to exactly `roots`.
fn wait_until_latest_matches(
    c: &TestCluster,
    agent: &ringvault_tests::AgentProcess,
    roots: &[&Path],
    attempt: &mut u32,
    what: &str,
) {
    wait_for(what, WAIT, || {
        latest_matches(c, roots, attempt).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
}

/// Whether the latest snapshot restores to exactly `roots` as they are now.
fn latest_matches(c: &TestCluster, roots: &[&Path], attempt: &mut u32) -> bool {
    *attempt += 1;
    let target = c.dir.path().join(format!("check-{attempt}"));
    if c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .is_err()
    {
        return false;
    }
    roots
        .iter()
        .all(|r| tree_diff(r, &target.join(r.file_name().unwrap())).is_none())
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_agent_snapshots_every_kind_of_change_and_nothing_while_idle() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init"]).unwrap();
    let docs = c.dir.path().join("docs");
    let code = c.dir.path().join("code");
    write(&docs.join("notes.txt"), "notes");
    write(&docs.join("sub/deep.txt"), "deep");
    write(&docs.join("old-name.txt"), "renamed later");
    write(&docs.join("doomed.txt"), "deleted later");
    write(&docs.join("mode.sh"), "#!/bin/sh\n");
    write(&code.join("main.rs"), "fn main() {}\n");
    let cfg = watching_config(&c, &[&docs, &code], "");
    let mut agent = c.start_agent(&cfg, "agent").unwrap();

    wait_first_snapshot(&c, &agent);
    // Nothing changes: no scan, no snapshot.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.snapshots().unwrap().len(), 1, "{}", agent.log_text());

    // `status` asks the agent over its socket, which only its user may use.
    let status = |c: &TestCluster| {
        let out = c
            .ringvault_with(&cfg)
            .args(["--json", "status"])
            .output()
            .unwrap();
        (
            out.status.success(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).ok(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, answer, err) = status(&c);
    assert!(ok, "{err}");
    let answer = answer.unwrap();
    assert_eq!(answer["pid"], agent.pid());
    assert_eq!(answer["paths"][0], docs.to_str().unwrap());
    assert_eq!(answer["dirty_paths"], 0);
    let first = c.snapshots().unwrap()[0]["id"].clone();
    assert_eq!(answer["last_snapshot"]["id"], first);
    assert_eq!(answer["servers"].as_array().unwrap().len(), 3);
    assert!(
        answer["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["up"] == true)
    );
    let socket = c.agent_config().with_file_name("state/test/agent.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", socket.display());

    write(&docs.join("new.txt"), "created");
    write(&docs.join("notes.txt"), "notes, modified");
    std::fs::rename(docs.join("old-name.txt"), docs.join("sub/new-name.txt")).unwrap();
    std::fs::rename(docs.join("sub"), docs.join("sub-renamed")).unwrap();
    std::fs::remove_file(docs.join("doomed.txt")).unwrap();
    std::fs::set_permissions(docs.join("mode.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("notes.txt", docs.join("link")).unwrap();
    // Across watched roots, and a directory moved in from outside them.
    std::fs::rename(code.join("main.rs"), docs.join("main.rs")).unwrap();
    write(&c.dir.path().join("outside/tree/x.txt"), "moved in");
    std::fs::rename(c.dir.path().join("outside/tree"), code.join("tree")).unwrap();

    let mut attempt = 0;
    wait_until_latest_matches(
        &c,
        &agent,
        &[&docs, &code],
        &mut attempt,
        "a snapshot holding every change",
    );
    assert!(c.snapshots().unwrap().len() >= 2);

    let stopped = agent.terminate(Duration::from_secs(30)).unwrap();
    assert!(stopped.success(), "{stopped}: {}", agent.log_text());
    let (ok, _, err) = status(&c);
    assert!(!ok && err.contains("no agent is running"), "{err}");
    assert!(!socket.exists(), "the socket outlived the agent");
}

#[test]
fn changes_are_captured_when_events_are_lost() {
    let c = TestCluster::start(1, 1, 1).unwrap();
    c.ok(&["init"]).unwrap();
    let src = c.dir.path().join("src");
    write(&src.join("first.txt"), "first");
    // A one-event queue: a burst of changes overflows it.
    let cfg = watching_config(&c, &[&src], "event-queue = 1\n");
    let agent = c.start_agent(&cfg, "agent").unwrap();
    wait_first_snapshot(&c, &agent);

    for d in 0..30 {
        for f in 0..100 {
            write(&src.join(format!("d{d}/f{f}.txt")), &format!("{d}/{f}"));
        }
    }
    let mut attempt = 0;
    wait_until_latest_matches(
        &c,
        &agent,
        &[&src],
        &mut attempt,
        "a snapshot holding the burst",
    );
    assert!(
        agent.log_text().contains("events lost"),
        "the queue never overflowed, so this test showed nothing:\n{}",
        agent.log_text()
    );
}

#[test]
fn unchanged_subtrees_are_taken_from_the_previous_snapshot_unlisted() {
    let c = TestCluster::start(1, 1, 1).unwrap();
    c.ok(&["init"]).unwrap();
    let src = c.dir.path().join("src");
    for d in 0..20 {
        write(&src.join(format!("d{d}/inner/f.txt")), &format!("{d}"));
    }
    let cfg = watching_config(&c, &[&src], "");
    let agent = c.start_agent(&cfg, "agent").unwrap();
    wait_first_snapshot(&c, &agent);
    // 41 directories under src, all listed by the first, full scan.
    assert_eq!(c.snapshots().unwrap()[0]["summary"]["dirs"], 41);

    write(&src.join("d7/inner/f.txt"), "changed");
    let mut attempt = 0;
    wait_until_latest_matches(
        &c,
        &agent,
        &[&src],
        &mut attempt,
        "a snapshot holding the change",
    );
    // Only the path down to the change was listed: src, d7, d7/inner.
    let snaps = c.snapshots().unwrap();
    assert_eq!(snaps.last().unwrap()["summary"]["dirs"], 3, "{snaps:?}");
}

#[test]
fn service_install_writes_a_unit_running_this_agent() {
    let c = TestCluster::start(1, 1, 1).unwrap();
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let cfg = watching_config(&c, &[&src], "");
    let units = c.dir.path().join("units");
    let out = c
        .ringvault_with(&cfg)
        .args(["service", "install", "--user", "--no-start", "--dir"])
        .arg(&units)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let written = if cfg!(target_os = "macos") {
        units.join("com.ringvault.agent.plist")
    } else {
        units.join("ringvault-agent.service")
    };
    assert!(
        stdout.contains(&format!("wrote {}", written.display())),
        "{stdout}"
    );
    let unit = std::fs::read_to_string(&written).unwrap();
    assert!(unit.contains(cfg.to_str().unwrap()), "{unit}");
    assert!(
        unit.contains(ringvault_tests::bin("ringvault").to_str().unwrap()),
        "{unit}"
    );

    // Without paths to watch there is nothing to install.
    let out = c
        .ringvault()
        .args(["service", "install", "--no-start", "--dir"])
        .arg(&units)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lists no `paths`"));
}

#[test]
fn an_agent_killed_mid_snapshot_lists_no_partial_snapshot_and_finishes_after_restart() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", "16384,65536,262144"])
        .unwrap();
    let src = c.dir.path().join("src");
    for d in 0u32..8 {
        for f in 0u32..40 {
            let mut data = format!("{d}/{f} ").repeat(20_000).into_bytes();
            data.extend_from_slice(&(d * 1000 + f).to_le_bytes());
            std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
            std::fs::write(src.join(format!("d{d}/f{f}")), data).unwrap();
        }
    }
    let cfg = watching_config(&c, &[&src], "");
    // Killed at several points of the first snapshot: as soon as the agent
    // reports it in progress, and once it has sent some or most bytes.
    let mut killed_mid_snapshot = 0;
    for (round, sent_at_least) in [0u64, 1, 8 << 20].into_iter().enumerate() {
        let mut agent = c.start_agent(&cfg, &format!("agent-{round}")).unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            let out = c
                .ringvault_with(&cfg)
                .args(["--json", "status"])
                .output()
                .unwrap();
            let s: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            if s["in_progress"]["sent_bytes"]
                .as_u64()
                .is_some_and(|b| b >= sent_at_least)
                || s["last_snapshot"].is_object()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        agent.kill();
        let log = agent.log_text();
        if log.contains("agent watching") && !log.contains("snapshot saved") {
            killed_mid_snapshot += 1;
        }
        // Whatever is listed restores whole.
        for (i, snap) in c.snapshots().unwrap().iter().enumerate() {
            let target = c.dir.path().join(format!("killed-{round}-{i}"));
            let id = snap["id"].as_str().unwrap();
            c.ok(&["restore", id, "--target", target.to_str().unwrap()])
                .unwrap();
            assert_eq!(tree_diff(&src, &target.join("src")), None);
        }
    }
    assert!(killed_mid_snapshot > 0, "no kill landed inside a snapshot");
    let agent = c.start_agent(&cfg, "agent-last").unwrap();
    let mut attempt = 0;
    wait_until_latest_matches(
        &c,
        &agent,
        &[&src],
        &mut attempt,
        "a snapshot after the restarts",
    );
}

#[test]
fn a_file_system_mounted_under_a_watched_path_is_scanned_and_watched() {
    let c = TestCluster::start(1, 1, 1).unwrap();
    c.ok(&["init"]).unwrap();
    let src = c.dir.path().join("src");
    let mnt = src.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    write(&src.join("before.txt"), "before");
    let cfg = watching_config(&c, &[&src], "");
    let agent = c.start_agent(&cfg, "agent").unwrap();
    wait_first_snapshot(&c, &agent);
    // A tmpfs that already holds a file when it appears under src.
    let staged = c.dir.path().join("staged");
    std::fs::create_dir_all(&staged).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&staged)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(Vec<PathBuf>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::process::Command::new("umount").arg(p).status();
            }
        }
    }
    let _unmount = Unmount(vec![mnt.clone(), staged.clone()]);
    write(
        &staged.join("on-the-mount.txt"),
        "was there before the mount",
    );
    let moved = std::process::Command::new("mount")
        .arg("--move")
        .arg(&staged)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(moved.success());
    let mut attempt = 0;
    wait_until_latest_matches(
        &c,
        &agent,
        &[&src],
        &mut attempt,
        "a snapshot holding the mounted file system",
    );
    // And changes inside it are seen from now on.
    write(&mnt.join("later.txt"), "written on the mount");
    wait_until_latest_matches(
        &c,
        &agent,
        &[&src],
        &mut attempt,
        "a snapshot holding a change on the mount",
    );
}

#[test]
fn the_agent_tells_systemd_it_is_ready_and_pings_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let c = TestCluster::start(1, 1, 1).unwrap();
    c.ok(&["init"]).unwrap();
    let src = c.dir.path().join("src");
    write(&src.join("a.txt"), "a");
    let cfg = watching_config(&c, &[&src], "");
    // Stands in for systemd's notification socket (sd_notify(3)).
    let socket_path = c.dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let agent = c
        .start_agent_with(
            &cfg,
            "agent",
            &[
                ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
                ("WATCHDOG_USEC", "400000"),
            ],
        )
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + WAIT;
    while !(seen.contains("READY=1")
        && seen.contains("WATCHDOG=1")
        && seen.contains("STATUS=last snapshot"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "got {seen:?}\n{}",
            agent.log_text()
        );
        if let Ok(n) = systemd.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
}

#[test]
fn the_agent_scans_everything_every_full_scan_interval() {
    let c = TestCluster::start(1, 1, 1).unwrap();
    c.ok(&["init"]).unwrap();
    let src = c.dir.path().join("src");
    write(&src.join("a.txt"), "a");
    let cfg = watching_config(&c, &[&src], "full-scan-interval-s = 1\n");
    let agent = c.start_agent(&cfg, "agent").unwrap();
    // The scan at start, then at least two periodic ones, with no change.
    wait_for("three full scans", WAIT, || {
        (agent.log_text().matches("full_scan=true").count() >= 3).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
}

#[test]
fn neither_the_agents_own_state_nor_unchanged_scans_make_snapshots() {
    let c = TestCluster::start(1, 1, 1).unwrap();
    c.ok(&["init"]).unwrap();
    // Watch the directory that holds the agent's state directory.
    let home = c.agent_config().parent().unwrap().to_owned();
    write(&home.join("notes.txt"), "notes");
    let cfg = watching_config(&c, &[&home], "full-scan-interval-s = 1\n");
    let agent = c.start_agent(&cfg, "agent").unwrap();
    wait_for("two scans that found nothing new", WAIT, || {
        (agent.log_text().matches("none stored").count() >= 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert_eq!(c.snapshots().unwrap().len(), 1, "{}", agent.log_text());
    // A real change still makes one.
    write(&home.join("notes.txt"), "notes, changed");
    wait_for("a snapshot of the change", WAIT, || {
        (c.snapshots().ok()?.len() == 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
}
