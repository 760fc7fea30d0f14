//! Black-box tests of the `ringvault` binary: the newcomer's path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringvault");

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("HOME", self.dir.path().join("home"))
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("RINGVAULT_CONFIG")
            .env_remove("RINGVAULT_PASSWORD");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ringvault {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("Documents")
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.cmd().args(["quickstart", "--stop"]).output();
    }
}

fn chunkserver_beside_ringvault() -> bool {
    Path::new(BIN)
        .with_file_name("ringvault-chunkserver")
        .is_file()
}

#[test]
fn quickstart_backs_up_and_prints_commands_that_work() {
    assert!(
        chunkserver_beside_ringvault(),
        "ringvault-chunkserver is not built beside {BIN}: run `cargo test --workspace`"
    );
    let home = Home {
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::create_dir_all(home.src().join("notes")).unwrap();
    std::fs::write(home.src().join("notes/todo.txt"), b"write the README\n").unwrap();
    std::fs::write(home.src().join("report.bin"), vec![7u8; 3_000_000]).unwrap();

    let out = home.run(&["quickstart", "--once", home.src().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("snapshot ") && stdout.contains(" saved"),
        "{stdout}"
    );
    assert!(stderr.contains("started 3 chunk server(s)"), "{stderr}");
    for command in ["snapshots", "ls latest", "restore latest --target"] {
        assert!(
            stdout.contains(command),
            "missing `{command}` in:\n{stdout}"
        );
    }
    // The printed commands work as printed.
    for wanted in ["snapshots", "ls latest"] {
        let line = stdout
            .lines()
            .map(str::trim)
            .find(|l| l.ends_with(wanted))
            .unwrap_or_else(|| panic!("no `{wanted}` command in:\n{stdout}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let out = Command::new(words[0])
            .args(&words[1..])
            .env("HOME", home.dir.path().join("home"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And without --config.
    let list = home.run(&["--json", "snapshots"]);
    let snaps: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    home.run(&["ls", "latest", "Documents/notes"]);
    let target = home.dir.path().join("restored");
    home.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(target.join("Documents/notes/todo.txt")).unwrap(),
        b"write the README\n"
    );
    assert_eq!(
        std::fs::read(target.join("Documents/report.bin")).unwrap(),
        vec![7u8; 3_000_000]
    );

    // Again: reuses the servers and repository, takes a second snapshot.
    let again = home.run(&["quickstart", "--once", home.src().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("reusing the running chunk servers"));
    let list = home.run(&["--json", "snapshots"]);
    let snaps: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    assert_eq!(snaps[1]["summary"]["sent_bytes"], 0);

    // Without --once it goes on watching, and a change makes a snapshot.
    let log = home.dir.path().join("watching.log");
    let mut watching = home
        .cmd()
        .args(["quickstart", home.src().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let snapshots = || -> usize {
        let list = home.run(&["--json", "snapshots"]);
        let snaps: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        snaps.as_array().unwrap().len()
    };
    let until = |what: &str, done: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("the first snapshot", &mut || snapshots() == 3);
    std::fs::write(
        home.src().join("notes/later.txt"),
        b"written while watched\n",
    )
    .unwrap();
    until("a snapshot of the change", &mut || snapshots() == 4);
    Command::new("kill")
        .args(["-INT", &watching.id().to_string()])
        .status()
        .unwrap();
    until("quickstart to stop on Ctrl-C", &mut || {
        watching.try_wait().unwrap().is_some()
    });
    assert!(watching.wait().unwrap().success());

    let stop = home.run(&["quickstart", "--stop"]);
    assert!(String::from_utf8_lossy(&stop.stdout).contains("stopped 3"));
}

#[test]
fn no_config_gives_advice() {
    let home = Home {
        dir: tempfile::tempdir().unwrap(),
    };
    let out = home.cmd().arg("snapshots").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ringvault quickstart"));
}
