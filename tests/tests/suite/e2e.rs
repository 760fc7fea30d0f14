//! End-to-end tests: real chunk-server processes on loopback, the real
//! `ringvault` binary, real files.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use std::time::Duration;

use crate::{TEST_CHUNKS, random_bytes};
use ringvault_tests::{TestCluster, run_bounded, tree_diff};
use serde_json::Value;

fn init(c: &TestCluster) {
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
}

fn backup_json(c: &TestCluster, path: &Path) -> Value {
    let out = c.ok(&["--json", "backup", path.to_str().unwrap()]).unwrap();
    serde_json::from_str(&out).unwrap()
}

/// A tree with the awkward cases: non-UTF-8 names, spaces and newlines,
/// empty files and directories, a file of more than 100 chunks, symlinks
/// (relative, absolute, dangling).
fn awkward_tree(root: &Path) {
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("empty file"), b"").unwrap();
    std::fs::write(root.join("name with\nnewline and spaces"), b"newline").unwrap();
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9")),
        b"not utf-8",
    )
    .unwrap();
    std::fs::write(root.join("a/b/c/deep.txt"), b"deep").unwrap();
    std::fs::write(root.join("a/big.bin"), random_bytes(12 << 20, 7)).unwrap();
    std::fs::write(root.join("a/zeros"), vec![0u8; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("a/b/c/deep.txt", root.join("relative-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("absolute-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling-link")).unwrap();
    let exec = root.join("a/script.sh");
    std::fs::write(&exec, b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&exec, std::fs::Permissions::from_mode(0o750)).unwrap();
}

#[test]
fn backup_and_restore_an_awkward_tree() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    init(&c);
    let src = c.dir.path().join("src");
    awkward_tree(&src);
    let b = backup_json(&c, &src);
    let chunks_of_big = 12 << 20 >> 16; // > 100 chunks of ~64 KiB
    assert!(chunks_of_big > 100);
    assert_eq!(b["summary"]["errors"], 0);

    let ls = c.ok(&["--json", "ls", "latest", "src/a"]).unwrap();
    let ls: Value = serde_json::from_str(&ls).unwrap();
    let names: Vec<&str> = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "big.bin", "script.sh", "zeros"]);

    let target = c.dir.path().join("restore");
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    assert_eq!(tree_diff(&src, &target.join("src")), None);
    // Empty directories and the dangling link came back too.
    assert!(target.join("src/empty dir").is_dir());
    assert!(
        std::fs::symlink_metadata(target.join("src/dangling-link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // Restoring one path.
    let one = c.dir.path().join("one");
    c.ok(&[
        "restore",
        "latest",
        "--path",
        "src/a/b",
        "--target",
        one.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(std::fs::read(one.join("b/c/deep.txt")).unwrap(), b"deep");
}

#[test]
fn unchanged_tree_sends_nothing_and_an_insertion_sends_little() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    init(&c);
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = random_bytes(16 << 20, 11);
    std::fs::write(src.join("big"), &big).unwrap();
    for i in 0..50 {
        std::fs::write(
            src.join(format!("small-{i}")),
            random_bytes(1000 + i, i as u64),
        )
        .unwrap();
    }
    // Files modified in the last 2 s are "racy" and read again next time;
    // date these back so the index can vouch for them.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for e in std::fs::read_dir(&src).unwrap() {
        std::fs::File::options()
            .write(true)
            .open(e.unwrap().path())
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    let first = backup_json(&c, &src);
    let sealed = first["summary"]["sent_bytes"].as_u64().unwrap();
    assert!(sealed >= 16 << 20);
    // N=3, yet the agent puts each blob on the wire once: the servers
    // replicate. (Has-queries, trees and QUIC framing make the rest.)
    let wire = first["wire_bytes"].as_u64().unwrap();
    assert!(
        wire < sealed + sealed / 10,
        "{wire} bytes on the wire for {sealed} sealed"
    );

    let second = backup_json(&c, &src);
    assert_eq!(second["summary"]["sent_bytes"], 0, "{second}");
    assert_eq!(
        second["summary"]["bytes_read"], 0,
        "unchanged files are not read: {second}"
    );

    // 97 bytes inserted near the start of the large file.
    let mut edited = big[..5000].to_vec();
    edited.extend_from_slice(&random_bytes(97, 99));
    edited.extend_from_slice(&big[5000..]);
    std::fs::write(src.join("big"), &edited).unwrap();
    let third = backup_json(&c, &src);
    let sent = third["summary"]["sent_bytes"].as_u64().unwrap();
    // The chunks around the edit (max 256 KiB each) plus trees; not the file.
    assert!(sent < 1 << 20, "sent {sent} bytes for a 97-byte insertion");
    assert!(sent > 0);

    let target = c.dir.path().join("restore");
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    assert_eq!(std::fs::read(target.join("src/big")).unwrap(), edited);
}

#[test]
fn backup_and_restore_with_a_server_killed() {
    let mut c = TestCluster::start(3, 3, 2).unwrap();
    init(&c);
    let src = c.dir.path().join("src");
    awkward_tree(&src);
    c.kill(1);
    let b = backup_json(&c, &src);
    assert_eq!(b["summary"]["errors"], 0);
    let target = c.dir.path().join("restore");
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    assert_eq!(tree_diff(&src, &target.join("src")), None);
}

#[test]
fn acknowledged_data_survives_every_server_crashing() {
    let mut c = TestCluster::start(3, 3, 2).unwrap();
    init(&c);
    let src = c.dir.path().join("src");
    awkward_tree(&src);
    backup_json(&c, &src);
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.restart(i).unwrap();
    }
    let target = c.dir.path().join("restore");
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    assert_eq!(tree_diff(&src, &target.join("src")), None);
}

#[test]
fn corrupt_blob_is_read_from_another_replica_and_reported() {
    let mut c = TestCluster::start(3, 3, 2).unwrap();
    init(&c);
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = random_bytes(8 << 20, 5);
    std::fs::write(src.join("file"), &data).unwrap();
    backup_json(&c, &src);
    // Flip one byte in every 4 KiB of node 1's segments, server stopped.
    c.terminate(0).unwrap();
    let segments = c.node_dir(0).join("data/segments");
    let mut flipped = 0;
    for seg in std::fs::read_dir(&segments).unwrap() {
        let path = seg.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        for i in (2000..bytes.len()).step_by(4096) {
            bytes[i] ^= 0x5a;
            flipped += 1;
        }
        std::fs::write(&path, bytes).unwrap();
    }
    assert!(flipped > 1000);
    c.restart(0).unwrap();
    let target = c.dir.path().join("restore");
    let out = c
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read(target.join("src/file")).unwrap(), data);
    assert!(
        stderr.contains("bad copy of chunk") && stderr.contains("on node-1"),
        "{stderr}"
    );
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    let other = ringvault_common::tls::make_ca("another CA").unwrap();
    let repo = ringvault_common::RepoId::new("test").unwrap();
    let foreign = ringvault_common::tls::issue_agent(
        &other,
        &repo,
        "intruder",
        ringvault_common::tls::Role::Admin,
    )
    .unwrap();
    let dir = c.agent_config().parent().unwrap();
    std::fs::write(dir.join("foreign.pem"), &foreign.cert).unwrap();
    std::fs::write(dir.join("foreign.key"), &foreign.key).unwrap();
    std::fs::set_permissions(
        dir.join("foreign.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(c.agent_config())
        .unwrap()
        .replace("cert = \"agent.pem\"", "cert = \"foreign.pem\"")
        .replace("key = \"agent.key\"", "key = \"foreign.key\"");
    let foreign_cfg = dir.join("foreign.toml");
    std::fs::write(&foreign_cfg, cfg).unwrap();
    let out = ringvault_tests::run_bounded(
        c.ringvault_with(&foreign_cfg).arg("init"),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("certificate refused"), "{stderr}");
    // The cluster still serves its own agent.
    init(&c);
}

#[test]
fn errors_name_their_cause() {
    let mut c = TestCluster::start(3, 3, 2).unwrap();
    init(&c);
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), random_bytes(100_000, 3)).unwrap();

    // Wrong password.
    let out = c
        .ringvault()
        .env("RINGVAULT_PASSWORD", "wrong")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong password"));

    // Quorum not reached: two of three servers down (N=3, W=2).
    c.kill(1);
    c.kill(2);
    let out = c.run(&["backup", src.to_str().unwrap()]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("quorum not reached"), "{stderr}");

    // Cluster unreachable.
    c.kill(0);
    let out = c.run(&["snapshots"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{stderr}");
    assert!(stderr.contains("cluster unreachable"), "{stderr}");
}

#[test]
fn unreadable_file_is_reported_and_skipped() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    init(&c);
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("readable"), b"fine").unwrap();
    let secret = src.join("secret");
    std::fs::write(&secret, b"no").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let as_root = std::fs::read(&secret).is_ok();
    let mut cmd = c.ringvault();
    if as_root {
        // Root reads anything: run the agent as nobody, who cannot.
        assert!(
            std::process::Command::new("setpriv")
                .arg("--version")
                .output()
                .is_ok(),
            "running as root, this test needs setpriv (util-linux) to drop to nobody"
        );
        let exe = c.dir.path().join("ringvault");
        std::fs::copy(cmd.get_program(), &exe).unwrap();
        let status = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(c.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // nobody may not reach the build directory: run the copy made in
        // the test's own directory above.
        let mut wrapped = std::process::Command::new("setpriv");
        wrapped.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        wrapped.arg(&exe).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        cmd = wrapped;
    }
    cmd.args(["--json", "backup", src.to_str().unwrap()]);
    let out = ringvault_tests::run_bounded(&mut cmd, std::time::Duration::from_secs(60)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("skipped") && stderr.contains("secret"),
        "{stderr}"
    );
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["summary"]["errors"], 1);
    assert_eq!(b["summary"]["files"], 1);
}

#[test]
fn cluster_init_configs_run_a_node_that_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cluster");
    let port = ringvault_tests::free_ports(1).unwrap()[0];
    let status = std::process::Command::new(ringvault_tests::bin("ringvault"))
        .args([
            "cluster",
            "init",
            "--nodes",
            "4",
            "--base-port",
            &port.to_string(),
            "--dir",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let map = ringvault_common::placement::ClusterMap::parse(
        &std::fs::read_to_string(out.join("cluster.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!((map.nodes.len(), map.replicas, map.write_quorum), (4, 3, 2));
    let agent = ringvault_common::config::AgentConfig::parse(
        &std::fs::read_to_string(out.join("agent/agent.toml")).unwrap(),
        &out.join("agent"),
    )
    .unwrap();
    assert_eq!(agent.servers.len(), 4);
    let mode = std::fs::metadata(out.join("node-1/node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private keys are 0600");
    // Run node 1 from its config; SIGTERM stops it cleanly.
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = std::process::Command::new(ringvault_tests::bin("ringvault-chunkserver"))
        .arg("--config")
        .arg(out.join("node-1/chunkserver.toml"))
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !std::fs::read_to_string(dir.path().join("log"))
        .unwrap()
        .contains("listening")
    {
        assert!(std::time::Instant::now() < deadline, "node did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("store closed"), "{log}");
}

#[test]
fn a_file_rewritten_during_backup_is_never_recorded_torn() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    init(&c);
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let path = src.join("busy");
    const LEN: usize = 32 << 20;
    std::fs::write(&path, vec![0u8; LEN]).unwrap();
    // Rewrite the file in place, all 0x00 then all 0xff, 64 KiB at a time,
    // for as long as the backup runs (at most 60 s).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            use std::io::{Seek, Write};
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let mut f = std::fs::File::options().write(true).open(&path).unwrap();
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                let byte = if rounds.is_multiple_of(2) { 0xff } else { 0x00 };
                f.seek(std::io::SeekFrom::Start(0)).unwrap();
                for _ in 0..LEN / 65536 {
                    f.write_all(&[byte; 65536]).unwrap();
                }
                rounds += 1;
            }
            rounds
        })
    };
    let out = c.run(&["--json", "backup", src.to_str().unwrap()]).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    assert!(rounds > 0);
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    let target = c.dir.path().join("restore");
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    match std::fs::read(target.join("src/busy")) {
        // Recorded: then as one whole version, never a mix of two.
        Ok(bytes) => {
            assert_eq!(bytes.len(), LEN);
            assert!(
                bytes.iter().all(|&b| b == bytes[0]),
                "a torn version was recorded"
            );
        }
        // Or skipped as "kept changing", and said so.
        Err(_) => {
            assert_eq!(out.status.code(), Some(3));
            assert_eq!(b["summary"]["errors"], 1);
            assert!(String::from_utf8_lossy(&out.stderr).contains("kept changing"));
        }
    }
}

#[test]
fn a_new_repository_never_reuses_another_ones_local_state() {
    // Two clusters, each with a repository named "test", and one agent
    // state directory: as when a quickstart is made afresh.
    let a = TestCluster::start(3, 3, 2).unwrap();
    let b = TestCluster::start(3, 3, 2).unwrap();
    let shared_state = a.agent_config().parent().unwrap().join("state");
    let b_cfg = std::fs::read_to_string(b.agent_config()).unwrap().replace(
        "state-dir = \"state\"",
        &format!("state-dir = {:?}", shared_state.to_str().unwrap()),
    );
    std::fs::write(b.agent_config(), b_cfg).unwrap();
    init(&a);
    let src = a.dir.path().join("src");
    awkward_tree(&src);
    // Old enough to be trusted by the index.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(src.join("a/big.bin"))
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    backup_json(&a, &src);

    init(&b);
    let first_in_b = backup_json(&b, &src);
    assert!(
        first_in_b["summary"]["bytes_read"].as_u64().unwrap() >= 12 << 20,
        "repository b reused repository a's index: {first_in_b}"
    );
    let target = b.dir.path().join("restore");
    b.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    assert_eq!(tree_diff(&src, &target.join("src")), None);
}

#[test]
fn a_directory_too_large_for_one_tree_blob_spans_several() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    init(&c);
    let src = c.dir.path().join("src");
    let big = src.join("big dir");
    std::fs::create_dir_all(&big).unwrap();
    // 40,000 entries with 100-byte names: about 5 MiB of tree, more than
    // one 4 MiB part.
    let pad = "x".repeat(94);
    for i in 0..40_000 {
        std::fs::File::create(big.join(format!("{i:06}{pad}"))).unwrap();
    }
    std::fs::write(big.join("zzz-last"), b"the last entry").unwrap();
    backup_json(&c, &src);
    let ls = c.ok(&["--json", "ls", "latest", "src/big dir"]).unwrap();
    let ls: Value = serde_json::from_str(&ls).unwrap();
    assert_eq!(ls["entries"].as_array().unwrap().len(), 40_001);
    let target = c.dir.path().join("restore");
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    assert_eq!(tree_diff(&src, &target.join("src")), None);
}

#[test]
fn a_sparse_file_is_restored_sparse_and_equal() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let c = TestCluster::start(1, 1, 1).unwrap();
    init(&c);
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 1 MiB of data, a 32 MiB hole, 1 MiB of data, a 16 MiB trailing hole.
    let f = std::fs::File::create(src.join("disk.img")).unwrap();
    f.write_all_at(&random_bytes(1 << 20, 1), 0).unwrap();
    f.write_all_at(&random_bytes(1 << 20, 2), 33 << 20).unwrap();
    f.set_len(50 << 20).unwrap();
    drop(f);
    let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
    assert!(
        allocated(&src.join("disk.img")) < 4 << 20,
        "the test directory's file system does not keep holes"
    );
    backup_json(&c, &src);

    let target = c.dir.path().join("restore");
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    let restored = target.join("src/disk.img");
    assert_eq!(tree_diff(&src, &target.join("src")), None);
    assert_eq!(std::fs::metadata(&restored).unwrap().len(), 50 << 20);
    assert!(
        allocated(&restored) < 4 << 20,
        "restored file allocates {} bytes for 2 MiB of data",
        allocated(&restored)
    );
}

#[test]
fn excluded_paths_are_not_backed_up_and_everything_else_is() {
    let c = TestCluster::start(1, 1, 1).unwrap();
    init(&c);
    let src = c.dir.path().join("src");
    let files = [
        "keep.txt",
        "notes.tmp",
        "a/.ringvaultignore",
        "a/drop.log",
        "a/keep.log",
        "a/b/deep.log",
        "node_modules/pkg/index.js",
        "cache/CACHEDIR.TAG",
        "cache/blob",
        "server/RINGVAULT-DATA.TAG",
        "server/segments/00000001.seg",
        "huge.bin",
    ];
    for f in files {
        let p = src.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, f).unwrap();
    }
    std::fs::write(src.join("a/.ringvaultignore"), "*.log\n!keep.log\n").unwrap();
    std::fs::write(
        src.join("cache/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    std::fs::write(src.join("huge.bin"), vec![1u8; 100_000]).unwrap();
    let cfg = c.agent_config().with_file_name("excluding.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}exclude = [\"*.tmp\", \"node_modules/\"]\nexclude-caches = true\nexclude-larger-than = 50000\n",
            std::fs::read_to_string(c.agent_config()).unwrap()
        ),
    )
    .unwrap();
    let out = run_bounded(
        c.ringvault_with(&cfg)
            .args(["backup", src.to_str().unwrap()]),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");

    let target = c.dir.path().join("restore");
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    let restored = |f: &str| target.join("src").join(f).exists();
    for kept in ["keep.txt", "a/.ringvaultignore", "a/keep.log"] {
        assert!(restored(kept), "{kept} is missing");
    }
    for dropped in [
        "notes.tmp",
        "a/drop.log",
        "a/b/deep.log",
        "node_modules",
        "cache",
        "server",
        "huge.bin",
    ] {
        assert!(!restored(dropped), "{dropped} was backed up");
    }
}
