//! Where the repository password comes from, in restic's order: a
//! command-line flag (`--password-file`, `--password-command`) beats the
//! environment (`RINGVAULT_PASSWORD_FILE`, `RINGVAULT_PASSWORD_COMMAND`, then
//! `RINGVAULT_PASSWORD`), which beats the config's `password-file` and the
//! prompt; the new password of `key add`/`key passwd` likewise
//! (`--new-password-file` beats `RINGVAULT_NEW_PASSWORD`). Empty passwords
//! are refused where a key is made. `quickstart` uses a password it is
//! given and writes it nowhere.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ringvault_tests::{PASSWORD, TestCluster, bin, run_bounded, wait_for};
use serde_json::Value;

use crate::TEST_CHUNKS;

/// Exit code of a password that opens no key.
const EXIT_WRONG_PASSWORD: i32 = 12;

fn run(cmd: &mut Command) -> Output {
    run_bounded(cmd, Duration::from_secs(120)).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        stderr(out)
    );
}

/// A mode-0600 file holding `text`.
fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// An initialized repository whose password is [`PASSWORD`].
fn repository() -> TestCluster {
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    c
}

/// `ringvault snapshots` with only the password settings of `setup`
/// (RINGVAULT_PASSWORD removed first).
fn snapshots(c: &TestCluster, setup: impl FnOnce(&mut Command) -> &mut Command) -> Output {
    let mut cmd = c.ringvault();
    cmd.env_remove("RINGVAULT_PASSWORD").arg("snapshots");
    run(setup(&mut cmd))
}

#[test]
fn a_password_flag_beats_the_environment() {
    let c = repository();
    let dir = c.dir.path();
    let right = secret_file(dir, "right", &format!("{PASSWORD}\n"));
    let wrong = secret_file(dir, "wrong", "not the password\n");
    let right = right.to_str().unwrap();

    // --password-file beats RINGVAULT_PASSWORD.
    let out = snapshots(&c, |cmd| {
        cmd.args(["--password-file", right])
            .env("RINGVAULT_PASSWORD", "not the password")
    });
    assert_ok(&out, "--password-file with a wrong RINGVAULT_PASSWORD");
    // --password-command beats RINGVAULT_PASSWORD and RINGVAULT_PASSWORD_FILE.
    let out = snapshots(&c, |cmd| {
        cmd.args(["--password-command", &format!("cat '{right}'")])
            .env("RINGVAULT_PASSWORD", "not the password")
            .env("RINGVAULT_PASSWORD_FILE", &wrong)
    });
    assert_ok(&out, "--password-command with wrong environment");
    // A flag beats an environment command (which would fail if run).
    let out = snapshots(&c, |cmd| {
        cmd.args(["--password-file", right])
            .env("RINGVAULT_PASSWORD_COMMAND", "exit 7")
    });
    assert_ok(
        &out,
        "--password-file with a failing RINGVAULT_PASSWORD_COMMAND",
    );
    // RINGVAULT_PASSWORD_FILE and _COMMAND beat RINGVAULT_PASSWORD.
    let out = snapshots(&c, |cmd| {
        cmd.env("RINGVAULT_PASSWORD_FILE", right)
            .env("RINGVAULT_PASSWORD", "not the password")
    });
    assert_ok(
        &out,
        "RINGVAULT_PASSWORD_FILE with a wrong RINGVAULT_PASSWORD",
    );
    let out = snapshots(&c, |cmd| {
        cmd.env("RINGVAULT_PASSWORD_COMMAND", format!("cat '{right}'"))
            .env("RINGVAULT_PASSWORD", "not the password")
    });
    assert_ok(
        &out,
        "RINGVAULT_PASSWORD_COMMAND with a wrong RINGVAULT_PASSWORD",
    );
    // RINGVAULT_PASSWORD beats the config's password-file.
    let cfg = c.agent_config().with_file_name("with-file.toml");
    let text = std::fs::read_to_string(c.agent_config()).unwrap();
    std::fs::write(
        &cfg,
        format!("password-file = {:?}\n{text}", wrong.to_str().unwrap()),
    )
    .unwrap();
    let out = run(c.ringvault_with(&cfg).arg("snapshots"));
    assert_ok(&out, "RINGVAULT_PASSWORD with a wrong config password-file");
    let out = run(c
        .ringvault_with(&cfg)
        .env_remove("RINGVAULT_PASSWORD")
        .arg("snapshots"));
    assert_eq!(
        out.status.code(),
        Some(EXIT_WRONG_PASSWORD),
        "{}",
        stderr(&out)
    );
    // A wrong flag is not rescued by a right environment: the flag wins.
    let out = snapshots(&c, |cmd| {
        cmd.args(["--password-file", wrong.to_str().unwrap()])
            .env("RINGVAULT_PASSWORD", PASSWORD)
    });
    assert_eq!(
        out.status.code(),
        Some(EXIT_WRONG_PASSWORD),
        "{}",
        stderr(&out)
    );
    // Two flags, or two environment sources, are refused as in restic.
    let out = snapshots(&c, |cmd| {
        cmd.args(["--password-file", right, "--password-command", "true"])
    });
    assert!(!out.status.success());
    let out = snapshots(&c, |cmd| {
        cmd.env("RINGVAULT_PASSWORD_FILE", right)
            .env("RINGVAULT_PASSWORD_COMMAND", "true")
    });
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("mutually exclusive"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_password_command_gives_its_first_line_and_a_failing_one_is_an_error() {
    let c = repository();
    let out = snapshots(&c, |cmd| {
        cmd.args([
            "--password-command",
            &format!("printf '%s\\nsecond line\\n' '{PASSWORD}'"),
        ])
    });
    assert_ok(&out, "--password-command printing two lines");
    // A failing command is an error naming its status, not an empty or
    // wrong password.
    let out = snapshots(&c, |cmd| {
        cmd.args(["--password-command", "echo oops >&2; exit 3"])
    });
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("exit status: 3") && err.contains("--password-command"),
        "{err}"
    );
    assert!(err.contains("oops"), "the command's stderr is shown: {err}");
    assert!(!err.contains("wrong password"), "{err}");
    // One that prints nothing is an error too.
    let out = snapshots(&c, |cmd| cmd.args(["--password-command", "true"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("printed no password"),
        "{}",
        stderr(&out)
    );
    let out = snapshots(&c, |cmd| cmd.env("RINGVAULT_PASSWORD_COMMAND", "exit 4"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("RINGVAULT_PASSWORD_COMMAND") && stderr(&out).contains("4"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_new_password_file_beats_the_environment() {
    let c = repository();
    let dir = c.dir.path();
    let second = secret_file(dir, "second", "second password\n");
    let out = run(c
        .ringvault()
        .args([
            "key",
            "add",
            "--new-password-file",
            second.to_str().unwrap(),
        ])
        .env("RINGVAULT_NEW_PASSWORD", "from the environment"));
    assert_ok(&out, "key add --new-password-file");
    let with = |password: &str| {
        run(c
            .ringvault()
            .env("RINGVAULT_PASSWORD", password)
            .arg("snapshots"))
    };
    assert_ok(&with("second password"), "the file's password");
    assert_eq!(
        with("from the environment").status.code(),
        Some(EXIT_WRONG_PASSWORD)
    );
    // An empty RINGVAULT_NEW_PASSWORD does not hide the file either.
    let third = secret_file(dir, "third", "third password\n");
    let out = run(c
        .ringvault()
        .env("RINGVAULT_PASSWORD", "second password")
        .args([
            "key",
            "passwd",
            "--new-password-file",
            third.to_str().unwrap(),
        ])
        .env("RINGVAULT_NEW_PASSWORD", ""));
    assert_ok(&out, "key passwd --new-password-file");
    assert_ok(&with("third password"), "the new file's password");
    assert_eq!(
        with("second password").status.code(),
        Some(EXIT_WRONG_PASSWORD)
    );
    assert_ok(&with(PASSWORD), "the first password still opens");
}

#[test]
fn empty_passwords_are_refused_by_init_key_add_and_key_passwd() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    let dir = c.dir.path();
    let empty = secret_file(dir, "empty", "\n");
    let empty = empty.to_str().unwrap();
    let refused = |out: Output, what: &str| {
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("an empty password is not allowed"),
            "{what}: {}",
            stderr(&out)
        );
    };
    refused(
        run(c.ringvault().env_remove("RINGVAULT_PASSWORD").args([
            "--password-file",
            empty,
            "init",
        ])),
        "init --password-file EMPTY",
    );
    refused(
        run(c.ringvault().env("RINGVAULT_PASSWORD", "").arg("init")),
        "init with RINGVAULT_PASSWORD=''",
    );
    refused(
        run(c.ringvault().env_remove("RINGVAULT_PASSWORD").args([
            "--password-command",
            "printf '\\n'",
            "init",
        ])),
        "init --password-command printing an empty line",
    );
    // Nothing was created: init with a real password works now.
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    for sub in ["add", "passwd"] {
        refused(
            run(c
                .ringvault()
                .args(["key", sub, "--new-password-file", empty])),
            &format!("key {sub} --new-password-file EMPTY"),
        );
        refused(
            run(c
                .ringvault()
                .args(["key", sub])
                .env("RINGVAULT_NEW_PASSWORD", "")),
            &format!("key {sub} with RINGVAULT_NEW_PASSWORD=''"),
        );
    }
    let list = c.ok(&["--json", "key", "list"]).unwrap();
    let keys: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1, "a key was added: {keys}");
}

/// A quickstart home: a private HOME for the `ringvault` binary, whose
/// servers are stopped when it is dropped.
struct Quickstart {
    dir: tempfile::TempDir,
}

impl Quickstart {
    fn cmd(&self) -> Command {
        let mut c = Command::new(bin("ringvault"));
        c.env("HOME", self.dir.path().join("home"))
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("RINGVAULT_CONFIG")
            .env_remove("RINGVAULT_PASSWORD")
            .env_remove("RINGVAULT_PASSWORD_FILE")
            .env_remove("RINGVAULT_PASSWORD_COMMAND")
            .env("RINGVAULT_LOG", "warn")
            .stdin(std::process::Stdio::null());
        c
    }

    fn home(&self) -> PathBuf {
        self.dir
            .path()
            .join("home/.local/share/ringvault/quickstart")
    }
}

impl Drop for Quickstart {
    /// Stops the servers and waits (10 s at most) until they are gone.
    fn drop(&mut self) {
        let pids: Vec<String> = (1..=3)
            .filter_map(|i| std::fs::read_to_string(self.home().join(format!("node-{i}/pid"))).ok())
            .map(|p| p.trim().to_owned())
            .collect();
        let _ = run_bounded(
            self.cmd().args(["quickstart", "--stop"]),
            Duration::from_secs(30),
        );
        let _ = wait_for(
            "the quickstart servers to exit",
            Duration::from_secs(10),
            || {
                pids.iter()
                    .all(|p| !Path::new(&format!("/proc/{p}")).exists())
                    .then_some(())
            },
        );
    }
}

#[test]
fn quickstart_uses_the_password_it_is_given_and_writes_it_nowhere() {
    let q = Quickstart {
        dir: tempfile::tempdir().unwrap(),
    };
    let src = q.dir.path().join("Documents");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"hello\n").unwrap();
    let out = run(q.cmd().env("RINGVAULT_PASSWORD", PASSWORD).args([
        "quickstart",
        "--once",
        src.to_str().unwrap(),
    ]));
    assert_ok(&out, "quickstart with RINGVAULT_PASSWORD");
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(err.contains("started 3 chunk server(s)"), "{err}");
    assert!(
        err.contains("RINGVAULT_PASSWORD") && !err.contains("its password is in"),
        "it says where the password came from: {err}"
    );
    // The password it was given opens the repository.
    let list = run(q
        .cmd()
        .env("RINGVAULT_PASSWORD", PASSWORD)
        .args(["--json", "snapshots"]));
    assert_ok(&list, "snapshots with the given password");
    let snaps: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{stdout}");
    // No password file holds another password, and the config names none.
    assert!(
        !q.home().join("password").exists(),
        "quickstart wrote a password file although it was given one"
    );
    let cfg = std::fs::read_to_string(q.home().join("agent/agent.toml")).unwrap();
    assert!(!cfg.contains("password-file"), "{cfg}");
    // Without the password, the commands fail plainly (no terminal).
    let out = run(q.cmd().arg("snapshots"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no password"), "{}", stderr(&out));

    // Given by --password-file on a second run: used, written nowhere.
    let file = secret_file(q.dir.path(), "pw", &format!("{PASSWORD}\n"));
    let out = run(q.cmd().args([
        "--password-file",
        file.to_str().unwrap(),
        "quickstart",
        "--once",
        src.to_str().unwrap(),
    ]));
    assert_ok(&out, "quickstart --password-file");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("--password-file {}", file.display())),
        "the printed commands carry the flag: {stdout}"
    );
    assert!(!q.home().join("password").exists());
    let stop = run(q.cmd().args(["quickstart", "--stop"]));
    assert!(String::from_utf8_lossy(&stop.stdout).contains("stopped 3"));
}
