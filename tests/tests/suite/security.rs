//! Security: roles per certificate, revocation, several keys per
//! repository, secrets kept out of output, private key files.
//!
//! Refusals are shown twice where it matters: through the `ringvault`
//! binary (what a user sees) and through the library straight to the
//! servers, past the agent's own checks, so the test fails if only the
//! client enforced a rule.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ringvault::client::ClientError;
use ringvault_tests::{PASSWORD, TestCluster, run_bounded, tree_diff, wait_for};
use serde_json::Value;

use crate::{TEST_CHUNKS, random_bytes};

/// Exit code of a request the servers refused for the certificate.
const EXIT_FORBIDDEN: i32 = 13;
/// Exit code of a password that opens no key.
const EXIT_WRONG_PASSWORD: i32 = 12;

fn source(c: &TestCluster, name: &str, seed: u64) -> PathBuf {
    let src = c.dir.path().join(name);
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.bin"), random_bytes(300 << 10, seed)).unwrap();
    std::fs::write(src.join("sub/b.txt"), format!("file of {name}\n")).unwrap();
    src
}

/// `ringvault cluster add-agent` for `agent` with `role`; returns its
/// config, which keeps its state in its own directory.
fn add_agent(c: &TestCluster, agent: &str, role: &str) -> PathBuf {
    let out = c
        .ok(&[
            "--json",
            "cluster",
            "add-agent",
            "--dir",
            c.cluster_dir().to_str().unwrap(),
            "--repository",
            "test",
            "--agent-id",
            agent,
            "--role",
            role,
        ])
        .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["fingerprint"].as_str().unwrap().len(), 64, "{v}");
    let config = PathBuf::from(v["config"].as_str().unwrap());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("state-dir = \"state\"\nrequest-timeout-ms = 20000\n");
    std::fs::write(&config, text).unwrap();
    config
}

fn run_as(c: &TestCluster, config: &Path, args: &[&str]) -> Output {
    run_bounded(
        c.ringvault_with(config).args(args),
        Duration::from_secs(120),
    )
    .unwrap()
}

fn ok_as(c: &TestCluster, config: &Path, args: &[&str]) -> String {
    let out = run_as(c, config, args);
    assert!(
        out.status.success(),
        "ringvault {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `args` and requires the servers' refusal: exit 13 and `needle` in
/// the error.
fn refused_as(c: &TestCluster, config: &Path, args: &[&str], needle: &str) {
    let out = run_as(c, config, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(EXIT_FORBIDDEN),
        "ringvault {args:?} was not refused: {stderr}"
    );
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
}

fn snapshot_ids(c: &TestCluster, config: &Path) -> Vec<String> {
    let out = ok_as(c, config, &["--json", "snapshots"]);
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    list.iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Opens the repository through the library, in `rt` (the connection
/// lives on its runtime).
fn open(rt: &tokio::runtime::Runtime, config: &Path) -> std::sync::Arc<ringvault::repo::Repo> {
    let loaded = ringvault::repo::load_config(Some(config)).unwrap();
    let password = config.parent().unwrap().join("password");
    std::fs::write(&password, PASSWORD).unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    rt.block_on(ringvault::repo::open(
        &loaded.config,
        &ringvault::password::PasswordFlags::file(&password),
    ))
    .unwrap()
}

fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) {
    match r {
        Err(ClientError::Forbidden(m)) => assert!(m.contains("certificate"), "{what}: {m}"),
        other => panic!("{what} was not refused by the server: {other:?}"),
    }
}

#[test]
fn each_role_is_held_to_what_it_may_do_by_every_server() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    let admin_src = source(&c, "admin-src", 1);
    c.ok(&["backup", admin_src.to_str().unwrap()]).unwrap();
    let admin_snapshot = snapshot_ids(&c, c.agent_config()).remove(0);
    let writer = add_agent(&c, "laptop", "writer");
    let reader = add_agent(&c, "auditor", "reader");

    // A writer backs up and restores its own snapshots...
    let writer_src = source(&c, "writer-src", 2);
    ok_as(&c, &writer, &["backup", writer_src.to_str().unwrap()]);
    let own = snapshot_ids(&c, &writer);
    assert_eq!(own.len(), 1, "a writer sees its own snapshots only");
    assert_ne!(own[0], admin_snapshot);
    let target = c.dir.path().join("writer-restore");
    ok_as(
        &c,
        &writer,
        &["restore", &own[0], "--target", target.to_str().unwrap()],
    );
    assert_eq!(tree_diff(&writer_src, &target.join("writer-src")), None);
    // ...but cannot read another agent's, nor destroy anything.
    let out = run_as(
        &c,
        &writer,
        &["restore", &admin_snapshot, "--target", "/nonexistent"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no snapshot"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused_as(
        &c,
        &writer,
        &["forget", "--keep-last", "1"],
        "needs an admin certificate",
    );
    refused_as(&c, &writer, &["prune"], "needs an admin certificate");
    refused_as(
        &c,
        &writer,
        &["prune", "--restore-trash"],
        "needs an admin certificate",
    );
    let add_key = run_bounded(
        c.ringvault_with(&writer)
            .args(["key", "add"])
            .env("RINGVAULT_NEW_PASSWORD", "another one"),
        Duration::from_secs(120),
    )
    .unwrap();
    assert_eq!(add_key.status.code(), Some(EXIT_FORBIDDEN));

    // The servers refuse the same requests sent past the agent's checks.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let w = open(&rt, &writer);
    rt.block_on(async {
        let victim = admin_snapshot
            .parse::<ringvault_common::SnapshotId>()
            .unwrap();
        forbidden("delete-snapshot", w.cluster.delete_snapshot(victim).await);
        let node = w.cluster.servers()[0].0;
        forbidden("begin-prune", w.cluster.begin_prune(node, 7).await);
        forbidden("restore-trash", w.cluster.restore_trash(node).await);
        forbidden(
            "put-key",
            w.cluster
                .put_key([9; 32], bytes::Bytes::from_static(b"RVK2x"))
                .await,
        );
        forbidden("delete-key", w.cluster.delete_key([0; 32]).await);
        // Another agent's record is not handed out to a writer.
        let listed = w.cluster.list_snapshots().await.unwrap().records;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0.to_hex(), own[0]);
        w.cluster.close().await;
    });

    // A reader reads everything and writes nothing.
    let all = snapshot_ids(&c, &reader);
    assert_eq!(all.len(), 2, "a reader sees every snapshot");
    let target = c.dir.path().join("reader-restore");
    ok_as(
        &c,
        &reader,
        &[
            "restore",
            &admin_snapshot,
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(tree_diff(&admin_src, &target.join("admin-src")), None);
    let reader_src = source(&c, "reader-src", 3);
    refused_as(
        &c,
        &reader,
        &["backup", reader_src.to_str().unwrap()],
        "may not send put",
    );
    let r = open(&rt, &reader);
    rt.block_on(async {
        let id = ringvault_common::SnapshotId([5; 32]);
        forbidden(
            "put-snapshot",
            r.cluster
                .put_snapshot(id, bytes::Bytes::from_static(b"x"), &Default::default())
                .await,
        );
        forbidden(
            "delete-snapshot",
            r.cluster
                .delete_snapshot(all[1].parse::<ringvault_common::SnapshotId>().unwrap())
                .await,
        );
        r.cluster.close().await;
    });
    assert_eq!(snapshot_ids(&c, c.agent_config()).len(), 2);

    // The admin may forget: a newer snapshot of its paths replaces the old.
    std::fs::write(admin_src.join("sub/b.txt"), "changed\n").unwrap();
    c.ok(&["backup", admin_src.to_str().unwrap()]).unwrap();
    assert_eq!(snapshot_ids(&c, c.agent_config()).len(), 3);
    c.ok(&["forget", "--keep-last", "1"]).unwrap();
    let left = snapshot_ids(&c, c.agent_config());
    assert_eq!(left.len(), 2, "one per host and paths");
    assert!(!left.contains(&admin_snapshot));
}

#[test]
fn a_revoked_certificate_is_refused_by_every_server() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    let laptop = add_agent(&c, "laptop", "writer");
    let src = source(&c, "src", 4);
    ok_as(&c, &laptop, &["backup", src.to_str().unwrap()]);

    // Node 3 is down while the certificate is revoked; it learns the new
    // map from its peers when it returns.
    let mut c = c;
    c.kill(2);
    let cert = laptop.parent().unwrap().join("agent.pem");
    let out = c
        .ok(&[
            "--json",
            "cluster",
            "revoke",
            "--dir",
            c.cluster_dir().to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
        ])
        .unwrap();
    let change: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        change["revoked"].as_array().map(Vec::len),
        Some(1),
        "{change}"
    );
    refused_as(&c, &laptop, &["snapshots"], "is revoked");
    refused_as(
        &c,
        &laptop,
        &["backup", src.to_str().unwrap()],
        "is revoked",
    );
    // Other certificates are unaffected.
    assert_eq!(c.snapshots().unwrap().len(), 1);

    c.restart(2).unwrap();
    // An agent that knows only node 3 is refused by it once it has the map.
    let only_node_3 = laptop.parent().unwrap().join("node3.toml");
    let text = std::fs::read_to_string(&laptop).unwrap();
    let address = c.server_address(2);
    let servers_line = text.lines().find(|l| l.starts_with("servers")).unwrap();
    std::fs::write(
        &only_node_3,
        text.replace(servers_line, &format!("servers = [\"{address}\"]")),
    )
    .unwrap();
    wait_for(
        "node 3 to refuse the revoked certificate",
        Duration::from_secs(30),
        || {
            let out = run_as(&c, &only_node_3, &["snapshots"]);
            (out.status.code() == Some(EXIT_FORBIDDEN)).then_some(())
        },
    )
    .unwrap();
}

/// A directory like a fresh machine's: the CA, one agent certificate and
/// key, a config naming one server, no local state.
fn fresh_machine(c: &TestCluster, name: &str, server: &str) -> (PathBuf, PathBuf) {
    let dir = c.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let from = c.agent_config().parent().unwrap();
    for f in ["ca.pem", "agent.pem", "agent.key"] {
        std::fs::copy(from.join(f), dir.join(f)).unwrap();
    }
    std::fs::set_permissions(
        dir.join("agent.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "repository = \"test\"\nservers = [\"{server}\"]\nca-cert = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\nstate-dir = \"state\"\n"
        ),
    )
    .unwrap();
    (dir, config)
}

fn with_password(cmd: &mut Command, password: &str) -> Output {
    run_bounded(
        cmd.env("RINGVAULT_PASSWORD", password),
        Duration::from_secs(120),
    )
    .unwrap()
}

fn keys(c: &TestCluster, password: &str) -> Vec<Value> {
    let out = with_password(c.ringvault().args(["--json", "key", "list"]), password);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn several_passwords_open_one_repository_and_a_fresh_machine_restores_with_one() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    let src = source(&c, "src", 5);
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();

    // key add: a second password.
    let out = with_password(
        c.ringvault()
            .args(["key", "add"])
            .env("RINGVAULT_NEW_PASSWORD", "second password"),
        PASSWORD,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = keys(&c, "second password");
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list.iter().filter(|k| k["current"] == true).count(), 1);
    assert!(list.iter().all(|k| !k["host"].as_str().unwrap().is_empty()));

    // A fresh machine: one server's address, the certificate, one password.
    let server = c.server_address(1);
    let (home, config) = fresh_machine(&c, "fresh", &server);
    let target = home.join("restored");
    let mut restore = Command::new(ringvault_tests::bin("ringvault"));
    restore
        .args(["--config", config.to_str().unwrap(), "restore", "latest"])
        .args(["--target", target.to_str().unwrap()])
        .env("HOME", &home)
        .env_remove("RINGVAULT_CONFIG")
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CONFIG_HOME");
    let out = with_password(&mut restore, "second password");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree_diff(&src, &target.join("src")), None);

    // key passwd: the second password becomes a third.
    let out = with_password(
        c.ringvault()
            .args(["key", "passwd"])
            .env("RINGVAULT_NEW_PASSWORD", "third password"),
        "second password",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshots = |password: &str| with_password(c.ringvault().arg("snapshots"), password);
    assert_eq!(
        snapshots("second password").status.code(),
        Some(EXIT_WRONG_PASSWORD)
    );
    assert!(snapshots("third password").status.success());
    assert!(snapshots(PASSWORD).status.success());

    // key remove: the first password's key, from a session of the third.
    let list = keys(&c, "third password");
    assert_eq!(list.len(), 2, "{list:?}");
    let first = list.iter().find(|k| k["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let current = list.iter().find(|k| k["current"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = with_password(
        c.ringvault().args(["key", "remove", &current[..8]]),
        "third password",
    );
    assert!(
        !out.status.success(),
        "removing the current key must be refused"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to remove"));
    let out = with_password(
        c.ringvault().args(["key", "remove", &first[..8]]),
        "third password",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshots(PASSWORD).status.code(), Some(EXIT_WRONG_PASSWORD));
    assert!(snapshots("third password").status.success());
    assert_eq!(keys(&c, "third password").len(), 1);
}

#[test]
fn secrets_appear_in_no_output_and_no_log() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    let src = source(&c, "src", 6);
    let new_password = "a brand new secret";
    let mut captured = String::new();
    let mut capture = |out: Output| {
        captured.push_str(&String::from_utf8_lossy(&out.stdout));
        captured.push_str(&String::from_utf8_lossy(&out.stderr));
    };
    let traced = |args: &[&str]| {
        let mut cmd = c.ringvault();
        cmd.args(args)
            .env("RINGVAULT_LOG", "trace")
            .env("RINGVAULT_NEW_PASSWORD", new_password);
        run_bounded(&mut cmd, Duration::from_secs(120)).unwrap()
    };
    capture(traced(&["init", "--chunker-params", TEST_CHUNKS]));
    capture(traced(&["--json", "backup", src.to_str().unwrap()]));
    capture(traced(&["backup", src.to_str().unwrap()]));
    capture(traced(&["--json", "snapshots"]));
    capture(traced(&["--json", "key", "list"]));
    capture(traced(&["key", "add"]));
    capture(traced(&["--json", "check", "--read-data"]));
    capture(traced(&["--json", "stats"]));
    capture(traced(&["--json", "cluster", "status"]));
    let wrong = with_password(
        c.ringvault()
            .args(["snapshots"])
            .env("RINGVAULT_LOG", "trace"),
        "not the password",
    );
    assert_eq!(wrong.status.code(), Some(EXIT_WRONG_PASSWORD));
    capture(wrong);
    for i in 0..3 {
        captured.push_str(&c.server_log(i));
    }
    assert!(
        captured.len() > 10_000,
        "too little was captured to mean anything"
    );

    // The master key, from the key record cached on this machine.
    let cache = find_file(&c.dir.path().join("cluster/agent/state"), "key").unwrap();
    let record = std::fs::read(&cache).unwrap();
    let secret = ringvault_common::keys::KeyFile::decode(&record[32..])
        .unwrap()
        .unwrap_secret(PASSWORD.as_bytes())
        .unwrap();
    let master_hex = hex_encode(&secret.master_key);
    for (what, needle) in [
        ("the password", PASSWORD),
        ("the new password", new_password),
        ("the wrong password", "not the password"),
        ("the master key", master_hex.as_str()),
        ("the master key's first half", &master_hex[..32]),
    ] {
        assert!(
            !captured.contains(needle),
            "{what} appears in the output or the logs"
        );
    }
    let raw = String::from_utf8_lossy(&secret.master_key).into_owned();
    assert!(!captured.contains(&raw));
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn private_keys_are_written_0600_and_refused_when_others_may_read_them() {
    let mut c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    let cluster = c.cluster_dir();
    let agent_key = cluster.join("agent/agent.key");
    let cache = find_file(&cluster.join("agent/state"), "key").unwrap();
    for key in [
        cluster.join("ca.key"),
        cluster.join("node-1/node.key"),
        agent_key.clone(),
        cache,
    ] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    let laptop = add_agent(&c, "laptop", "writer");
    assert_eq!(mode(&laptop.parent().unwrap().join("agent.key")), 0o600);

    // The agent refuses a key others may read, and says how to fix it.
    std::fs::set_permissions(&agent_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = c.run(&["snapshots"]).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    std::fs::set_permissions(&agent_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.ok(&["snapshots"]).unwrap();

    // So does a password file.
    let password_file = c.dir.path().join("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = run_bounded(
        c.ringvault().env_remove("RINGVAULT_PASSWORD").args([
            "--password-file",
            password_file.to_str().unwrap(),
            "snapshots",
        ]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));

    // And the chunk server, for its node key.
    c.kill(0);
    let node_key = c.node_dir(0).join("node.key");
    std::fs::set_permissions(&node_key, std::fs::Permissions::from_mode(0o604)).unwrap();
    let out = run_bounded(
        Command::new(ringvault_tests::bin("ringvault-chunkserver"))
            .arg("--config")
            .arg(c.node_dir(0).join("chunkserver.toml")),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    std::fs::set_permissions(&node_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.restart(0).unwrap();
    c.ok(&["snapshots"]).unwrap();
}
