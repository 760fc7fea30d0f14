//! `ringvault mount`: the repository as a read-only FUSE file system, read
//! back with std::fs. The test runs where FUSE mounts; where the system
//! refuses the mount (no /dev/fuse, EPERM in a container), `ringvault
//! mount` exits with [`EXIT_FUSE_UNAVAILABLE`] and the test prints why and
//! returns. Any other failure to mount fails it.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringvault::mount::EXIT_FUSE_UNAVAILABLE;
use ringvault_tests::{TestCluster, tree_diff, wait_for};

use crate::{TEST_CHUNKS, random_bytes};

#[test]
fn mount_serves_snapshots_read_only() {
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let big = random_bytes(1 << 20, 41); // ~16 chunks of ~64 KiB
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("small.txt"), b"small\n").unwrap();
    std::fs::write(src.join("sub/inner.txt"), b"inner\n").unwrap();
    std::os::unix::fs::symlink("sub/inner.txt", src.join("link")).unwrap();
    std::fs::write(src.join("changing.txt"), b"version one\n").unwrap();
    let src_arg = src.to_str().unwrap();
    c.ok(&["backup", src_arg]).unwrap();
    // Snapshot directories are named by the second.
    sleep_past_this_second();
    std::fs::write(src.join("changing.txt"), b"version two, longer\n").unwrap();
    c.ok(&["backup", src_arg]).unwrap();
    let snaps = c.snapshots().unwrap();
    let times: Vec<String> = snaps
        .iter()
        .map(|s| s["time"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(times.len(), 2);
    let host = snaps[1]["host"].as_str().unwrap().to_owned();

    let mnt = c.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    let Some(mut m) = start_mount(&c, &mnt) else {
        return;
    };

    // The layout.
    assert_eq!(names(&mnt), ["hosts", "latest", "snapshots"]);
    assert_eq!(names(&mnt.join("snapshots")), times);
    assert_eq!(names(&mnt.join("hosts")), [host.as_str()]);
    assert_eq!(names(&mnt.join("hosts").join(&host)), times);
    assert_eq!(
        std::fs::read_link(mnt.join("latest")).unwrap(),
        Path::new("snapshots").join(&times[1])
    );

    // A read in the middle of a file no one has read yet: every chunk
    // before it is fetched to learn where the offset falls.
    let old = mnt.join("snapshots").join(&times[0]).join("src");
    let mut f = File::open(old.join("big.bin")).unwrap();
    f.seek(SeekFrom::Start(700_001)).unwrap();
    let mut buf = vec![0u8; 5000];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, big[700_001..705_001]);
    drop(f);

    // The newest snapshot reads back as the source: names, kinds, modes,
    // mtimes, bytes and link targets.
    let latest = mnt.join("latest/src");
    assert_eq!(tree_diff(&src, &latest), None);
    assert_eq!(std::fs::read(latest.join("big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::metadata(latest.join("big.bin")).unwrap().len(),
        1 << 20
    );
    assert_eq!(
        std::fs::read(latest.join("changing.txt")).unwrap(),
        b"version two, longer\n"
    );
    assert_eq!(
        std::fs::read_link(latest.join("link")).unwrap(),
        Path::new("sub/inner.txt")
    );
    assert_eq!(std::fs::read(latest.join("link")).unwrap(), b"inner\n");

    // The older snapshot has the old bytes, under snapshots/ and hosts/
    // alike, as one inode.
    let by_host = mnt.join("hosts").join(&host).join(&times[0]).join("src");
    assert_eq!(
        std::fs::read(old.join("changing.txt")).unwrap(),
        b"version one\n"
    );
    assert_eq!(
        std::fs::read(by_host.join("changing.txt")).unwrap(),
        b"version one\n"
    );
    assert_eq!(
        std::fs::metadata(old.join("changing.txt")).unwrap().ino(),
        std::fs::metadata(by_host.join("changing.txt"))
            .unwrap()
            .ino()
    );

    // Nothing can be written.
    let refused = [
        std::fs::write(latest.join("new.txt"), b"x"),
        OpenOptions::new()
            .append(true)
            .open(latest.join("small.txt"))
            .map(drop),
        std::fs::remove_file(latest.join("small.txt")),
        std::fs::create_dir(mnt.join("snapshots/new")),
    ];
    for result in refused {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ReadOnlyFilesystem, "{err}");
    }
    assert_eq!(std::fs::read(latest.join("small.txt")).unwrap(), b"small\n");

    // A snapshot taken while mounted shows up (the list is read again at
    // most every 10 s).
    sleep_past_this_second();
    std::fs::write(src.join("small.txt"), b"small, changed\n").unwrap();
    c.ok(&["backup", src_arg]).unwrap();
    let newest = c.snapshots().unwrap()[2]["time"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(
        "the mount to list the new snapshot",
        Duration::from_secs(40),
        || (names(&mnt.join("snapshots")).len() == 3).then_some(()),
    )
    .unwrap();
    assert_eq!(
        std::fs::read_link(mnt.join("latest")).unwrap(),
        Path::new("snapshots").join(&newest)
    );
    assert_eq!(
        std::fs::read(mnt.join("latest/src/small.txt")).unwrap(),
        b"small, changed\n"
    );

    // SIGTERM unmounts and exits cleanly.
    let status = m.terminate();
    assert!(status.success(), "{status}:\n{}", m.log_text());
    assert!(!is_mounted(&mnt), "{} is still mounted", mnt.display());
}

/// Starts `ringvault mount` on `mnt` and waits until `latest` appears.
/// `None`, after printing why, when the system refuses FUSE mounts.
///
/// # Panics
/// When it exits otherwise before mounting, or does not mount in 60 s.
fn start_mount(c: &TestCluster, mnt: &Path) -> Option<Mounted> {
    let log = c.dir.path().join("mount.log");
    let out = File::create(&log).unwrap();
    let child = c
        .ringvault()
        .arg("mount")
        .arg(mnt)
        .env("RINGVAULT_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut m = Mounted {
        child,
        at: mnt.to_path_buf(),
        log,
    };
    let exited = wait_for(
        "`ringvault mount` to show latest",
        Duration::from_secs(60),
        || {
            if let Ok(Some(status)) = m.child.try_wait() {
                return Some(Some(status));
            }
            std::fs::symlink_metadata(mnt.join("latest"))
                .is_ok()
                .then_some(None)
        },
    )
    .unwrap();
    let Some(status) = exited else {
        return Some(m);
    };
    let log = m.log_text();
    if status.code() == Some(i32::from(EXIT_FUSE_UNAVAILABLE)) {
        let why: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
        eprintln!(
            "SKIPPED mount_serves_snapshots_read_only: this machine refuses FUSE mounts ({})",
            why.join("; ")
        );
        return None;
    }
    panic!("ringvault mount exited ({status}) before mounting:\n{log}");
}

/// A running `ringvault mount`. Dropping it detaches the mount and kills
/// the process, so a failed test leaves no mount behind.
struct Mounted {
    child: Child,
    at: PathBuf,
    log: PathBuf,
}

impl Mounted {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to 30 s for the process to exit.
    fn terminate(&mut self) -> ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        wait_for(
            "ringvault mount to exit after SIGTERM",
            Duration::from_secs(30),
            || self.child.try_wait().ok().flatten(),
        )
        .unwrap()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for (tool, flags) in [
            ("fusermount3", &["-u", "-z"][..]),
            ("fusermount", &["-u", "-z"]),
            ("umount", &["-l"]),
        ] {
            if !is_mounted(&self.at) {
                break;
            }
            let _ = Command::new(tool).args(flags).arg(&self.at).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `path` (canonical, without spaces) is a mount point.
fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(&*path))
}

/// A directory's entry names, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn sleep_past_this_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_010 - u64::from(now.subsec_nanos()),
    ));
}
