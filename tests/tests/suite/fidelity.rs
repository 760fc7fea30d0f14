//! Restore fidelity (issue 15): a restore gives back everything the backup
//! was given, on Linux. One source tree holds every kind of entry and
//! attribute a real system has; it is backed up, restored, and compared
//! with [`strict_diff`], which checks every attribute of every entry and
//! the hard-link groups. The cases that need root (other owners, setuid
//! files of another user, `trusted.*` and `security.*` attributes, device
//! nodes) are left out, with a printed reason, when the tests do not run
//! as root.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ringvault_common::tree::Entry;
use ringvault_tests::TestCluster;
use ringvault_tests::fidelity::{link_groups, strict_diff, xattrs};
use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};
use serde_json::Value;

use crate::hostile_trees::{Case, Forge, file, sorted};
use crate::{TEST_CHUNKS, random_bytes};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Sets `path`'s mtime (and atime), not following a symlink.
fn set_mtime(path: &Path, secs: i64, nsecs: i64) {
    let at = Timespec {
        tv_sec: secs,
        tv_nsec: nsecs,
    };
    let times = Timestamps {
        last_access: at,
        last_modification: at,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        CWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> rustix::io::Result<()> {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty())
}

/// A POSIX ACL as the kernel stores it in `system.posix_acl_*`: version 2,
/// then (tag, permissions, id) entries: owner rw, user 1234 rw, group r,
/// mask rw, other r.
fn acl_bytes() -> Vec<u8> {
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 6, 1234),
        (0x04, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        out.extend(tag.to_le_bytes());
        out.extend(perm.to_le_bytes());
        out.extend(id.to_le_bytes());
    }
    out
}

/// File capabilities (`security.capability`, revision 2): the effective
/// bit and CAP_NET_BIND_SERVICE permitted.
fn capability_bytes() -> Vec<u8> {
    let mut out = (0x0200_0000u32 | 1).to_le_bytes().to_vec();
    for word in [1u32 << 10, 0, 0, 0] {
        out.extend(word.to_le_bytes());
    }
    out
}

/// Writes the source tree under `src` (on the cluster's temporary directory,
/// a disk file system: tmpfs may refuse `user.*` attributes). Returns the
/// cases left out, with why.
fn make_tree(src: &Path) -> Vec<String> {
    let mut left_out = Vec::new();
    let root = is_root();
    let w = |rel: &str, bytes: &[u8]| {
        let path = src.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    };

    // Hard-link groups across directories: three paths and two.
    let h1 = w("hard/a/h1", &random_bytes(100_000, 1));
    std::fs::create_dir_all(src.join("hard/b/c")).unwrap();
    std::fs::hard_link(&h1, src.join("hard/b/h2")).unwrap();
    std::fs::hard_link(&h1, src.join("hard/b/c/h3")).unwrap();
    let p = w("hard/a/p", b"pair");
    std::fs::hard_link(&p, src.join("hard/a/q")).unwrap();
    w("hard/b/single", b"one link");

    // Extended attributes, an ACL on a file and a default ACL on a directory.
    let x = w("attrs/user.txt", b"has xattrs");
    set_xattr(&x, "user.comment", b"hello\0binary\xff").unwrap();
    set_xattr(&x, "user.empty", b"").unwrap();
    let acl = w("attrs/acl.txt", b"has an ACL");
    chmod(&acl, 0o664);
    set_xattr(&acl, "system.posix_acl_access", &acl_bytes()).unwrap();
    let xdir = src.join("attrs/dir");
    std::fs::create_dir_all(&xdir).unwrap();
    set_xattr(&xdir, "user.dir", b"on a directory").unwrap();
    set_xattr(&xdir, "system.posix_acl_default", &acl_bytes()).unwrap();

    // Owners, setuid and setgid, capabilities.
    if root {
        let owned = w("owners/owned", b"1234:5678");
        chown(&owned, 1234, 5678);
        let suid = w("owners/setuid", b"#!/bin/sh\n");
        chown(&suid, 4321, 4321);
        chmod(&suid, 0o4755);
        let sgid = w("owners/setgid", b"#!/bin/sh\n");
        chown(&sgid, 0, 4321);
        chmod(&sgid, 0o2750);
        let cap = w("owners/cap", b"\x7fELF");
        chown(&cap, 1234, 1234);
        chmod(&cap, 0o755);
        set_xattr(&cap, "security.capability", &capability_bytes()).unwrap();
        set_xattr(&cap, "trusted.note", b"root only").unwrap();
        std::os::unix::fs::symlink("owned", src.join("owners/link")).unwrap();
        chown(&src.join("owners/link"), 1234, 5678);
        set_xattr(&src.join("owners/link"), "trusted.link", b"on a symlink").unwrap();
        let odir = src.join("owners/dir");
        std::fs::create_dir(&odir).unwrap();
        chown(&odir, 1234, 5678);
        chmod(&odir, 0o2770);
    } else {
        left_out.push(
            "other owners, setuid of another user, trusted.* and security.*: not root".into(),
        );
    }

    // A sticky directory; a read-only one holding files.
    let sticky = src.join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    w("sticky/f", b"in a sticky directory");
    chmod(&sticky, 0o1777);
    w("ro/f1", b"read-only directory");
    w("ro/sub/f2", b"below it");
    chmod(&src.join("ro/f1"), 0o444);
    chmod(&src.join("ro/sub"), 0o555);

    // Special files: a FIFO, a character device, a socket (skipped).
    std::fs::create_dir(src.join("special")).unwrap();
    rustix::fs::mknodat(
        CWD,
        src.join("special/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    if root {
        rustix::fs::mknodat(
            CWD,
            src.join("special/null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
    } else {
        left_out.push("a character device: not root".into());
    }
    let _socket = std::os::unix::net::UnixListener::bind(src.join("special/socket")).unwrap();

    // Names: not UTF-8, and 255 bytes.
    std::fs::create_dir(src.join("names")).unwrap();
    std::fs::write(
        src.join("names")
            .join(OsStr::from_bytes(b"not-utf8-\xff\xfe")),
        b"latin-1",
    )
    .unwrap();
    std::fs::write(src.join("names").join("n".repeat(255)), b"long name").unwrap();

    // A symlink loop, and a dangling one.
    std::os::unix::fs::symlink("loop-b", src.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", src.join("loop-b")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", src.join("dangling")).unwrap();

    // Times before 1970 and after 2038, with nanoseconds, on every kind.
    let times = w("times/old", b"1930");
    set_mtime(&times, -1_256_000_000, 123_456_789);
    set_mtime(&w("times/future", b"2100"), 4_102_444_800, 987_654_321);
    set_mtime(&src.join("special/fifo"), -1, 1);
    set_mtime(&src.join("loop-a"), 4_102_444_801, 5);
    set_mtime(&src.join("times"), 2_500_000_000, 999_999_999);

    // The read-only directory last: nothing more is written in it.
    chmod(&src.join("ro"), 0o555);
    left_out
}

fn start() -> TestCluster {
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    c
}

/// `ringvault --json restore ARGS --target TARGET`: its report and stderr.
fn restore(c: &TestCluster, args: &[&str], target: &Path) -> (Value, String) {
    let mut all = vec!["--json", "restore"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--target", target.to_str().unwrap()]);
    let out = c.run(&all).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "restore {args:?}: {stderr}");
    // After restic's status lines, the report.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    (report, stderr)
}

fn paths(v: &[&str]) -> BTreeSet<PathBuf> {
    v.iter().map(PathBuf::from).collect()
}

#[test]
fn a_restore_gives_back_every_attribute_of_every_kind_of_entry() {
    let c = start();
    let src = c.dir.path().join("src");
    for why in make_tree(&src) {
        println!("left out: {why}");
    }
    let backup = c.run(&["backup", src.to_str().unwrap()]).unwrap();
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );

    let target = c.dir.path().join("full");
    let (report, stderr) = restore(&c, &["latest"], &target);
    assert_eq!(report["errors"], 0, "{report} {stderr}");
    if let Some(diff) = strict_diff(&src, &target.join("src")) {
        panic!("the restore differs from the source:\n{diff}\n{stderr}");
    }
    assert!(!stderr.contains("warning"), "{stderr}");
    // Again into the same target: everything replaced or kept, no error,
    // the same tree.
    for overwrite in ["always", "if-changed"] {
        let (report, stderr) = restore(&c, &["latest", "--overwrite", overwrite], &target);
        assert_eq!(report["errors"], 0, "{overwrite}: {report} {stderr}");
        if let Some(diff) = strict_diff(&src, &target.join("src")) {
            panic!("restored again ({overwrite}), it differs:\n{diff}\n{stderr}");
        }
    }

    // A dry run plans every kind without an error and writes nothing.
    for (name, dry) in [
        ("into an empty target", c.dir.path().join("dry")),
        ("into the restore", target.clone()),
    ] {
        let (report, stderr) = restore(&c, &["latest", "--dry-run"], &dry);
        assert_eq!(report["errors"], 0, "{name}: {report} {stderr}");
    }
    assert!(!c.dir.path().join("dry").exists());

    // A path restore cuts the three-path group: the two paths restored
    // share an inode, the third is not there.
    let cut = c.dir.path().join("cut");
    restore(&c, &["latest:src/hard/b"], &cut);
    assert_eq!(
        link_groups(&cut),
        BTreeSet::from([paths(&["b/c/h3", "b/h2"])])
    );
    assert_eq!(
        std::fs::read(cut.join("b/h2")).unwrap(),
        random_bytes(100_000, 1)
    );
    assert_eq!(std::fs::metadata(cut.join("b/h2")).unwrap().nlink(), 2);
    // An exclude that takes the first path of a group out.
    let excluded = c.dir.path().join("excluded");
    restore(
        &c,
        &[
            "latest",
            "--exclude",
            "/src/hard/a/h1",
            "--include",
            "/src/hard",
        ],
        &excluded,
    );
    let hard = excluded.join("src/hard");
    assert_eq!(
        link_groups(&hard),
        BTreeSet::from([paths(&["b/c/h3", "b/h2"]), paths(&["a/p", "a/q"])])
    );
    assert!(!hard.join("a/h1").exists());
    assert_eq!(
        std::fs::read(hard.join("b/c/h3")).unwrap(),
        random_bytes(100_000, 1)
    );

    // --no-xattrs: none restored, the rest as before.
    let bare = c.dir.path().join("bare");
    restore(
        &c,
        &["latest", "--no-xattrs", "--include", "/src/attrs"],
        &bare,
    );
    let restored = bare.join("src/attrs/user.txt");
    assert_eq!(std::fs::read(&restored).unwrap(), b"has xattrs");
    assert!(xattrs(&restored).is_empty(), "{:?}", xattrs(&restored));
    assert!(xattrs(&bare.join("src/attrs/dir")).is_empty());

    restore_as_another_user(&c);
}

/// As a user other than root (`nobody`, through `setpriv`), the same
/// snapshot restores without an error: owners are left alone, devices
/// skipped and the attributes only root may write refused, each with one
/// warning.
fn restore_as_another_user(c: &TestCluster) {
    const NOBODY: u32 = 65534;
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        println!("left out: a restore as another user (needs root and setpriv)");
        return;
    }
    // That user must reach the agent's files and have a home and a target.
    chmod(c.dir.path(), 0o755);
    let give = |path: &Path| {
        let status = std::process::Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    };
    give(&c.cluster_dir());
    let (home, target) = (c.dir.path().join("nobody"), c.dir.path().join("as-nobody"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&target).unwrap();
    give(&home);
    give(&target);
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        "--",
    ])
    .arg(ringvault_tests::bin("ringvault"))
    .arg("--config")
    .arg(c.agent_config())
    .args(["--json", "restore", "latest", "--target"])
    .arg(&target)
    .env("RINGVAULT_PASSWORD", ringvault_tests::PASSWORD)
    .env("HOME", &home)
    .env_remove("RINGVAULT_CONFIG")
    .env_remove("XDG_DATA_HOME")
    .env_remove("XDG_CONFIG_HOME")
    .env("RINGVAULT_LOG", "error")
    .stdin(std::process::Stdio::null());
    let out = ringvault_tests::run_bounded(&mut cmd, std::time::Duration::from_secs(120)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(report["errors"], 0, "{report} {stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    for what in ["device files skipped", "trusted.*", "security.*"] {
        assert!(
            warnings.iter().any(|w| w.contains(what)),
            "{what}: {stderr}"
        );
    }
    let src = target.join("src");
    let owned = std::fs::symlink_metadata(src.join("owners/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (NOBODY, NOBODY));
    let setuid = std::fs::symlink_metadata(src.join("owners/setuid")).unwrap();
    assert_eq!(setuid.mode() & 0o7777, 0o4755);
    assert!(!src.join("special/null").exists());
    assert!(src.join("special/fifo").exists());
    assert_eq!(
        link_groups(&src.join("hard")),
        BTreeSet::from([paths(&["a/h1", "b/c/h3", "b/h2"]), paths(&["a/p", "a/q"])])
    );
    assert!(xattrs(&src.join("attrs/user.txt")).contains_key(&b"user.comment"[..]));
}

#[test]
fn owners_are_restored_by_name_unless_numeric_owner_is_given() {
    if !is_root() {
        println!("skipped: setting owners needs root");
        return;
    }
    let case = Case::new();
    case.block_on(|repo, _| async move {
        let mut forge = Forge::new(&repo);
        let data = forge.blob(b"owned".to_vec());
        let owned = |name: &[u8], id: u32, user: &[u8]| Entry {
            uid: id,
            gid: id,
            user: user.to_vec(),
            group: user.to_vec(),
            ..file(name, data, 5)
        };
        let root = forge.tree(sorted(vec![
            // "root" resolves here (to 0) whatever the snapshot's number.
            owned(b"named", 4242, b"root"),
            // Unknown here: by number.
            owned(b"unknown", 4343, b"no-such-user-rv15"),
            // No name recorded (a version 1 tree, or an id without one).
            owned(b"nameless", 4444, b""),
        ]));
        forge.snapshot(root).await;
        repo.cluster.close().await;
    });
    let owner = |target: &Path, name: &str| {
        let m = std::fs::symlink_metadata(target.join(name)).unwrap();
        (m.uid(), m.gid())
    };
    let by_name = case.target.clone();
    let (report, stderr) = restore(&case.c, &["latest"], &by_name);
    assert_eq!(report["errors"], 0, "{report} {stderr}");
    assert_eq!(owner(&by_name, "named"), (0, 0));
    assert_eq!(owner(&by_name, "unknown"), (4343, 4343));
    assert_eq!(owner(&by_name, "nameless"), (4444, 4444));
    let numeric = case.target.with_file_name("numeric");
    let (report, stderr) = restore(&case.c, &["latest", "--numeric-owner"], &numeric);
    assert_eq!(report["errors"], 0, "{report} {stderr}");
    assert_eq!(owner(&numeric, "named"), (4242, 4242));
    assert_eq!(owner(&numeric, "unknown"), (4343, 4343));
    assert_eq!(owner(&numeric, "nameless"), (4444, 4444));
}

/// Two files recorded with one (device, inode) but different contents (a
/// watching agent's snapshot that reuses an old subtree whose inode number
/// was since given to another file) come back as two files, each with its
/// own bytes; two with the same content come back as one inode.
#[test]
fn files_sharing_an_inode_number_but_not_content_are_not_linked() {
    let case = Case::new();
    case.block_on(|repo, _| async move {
        let mut forge = Forge::new(&repo);
        let one = forge.blob(b"first".to_vec());
        let other = forge.blob(b"other".to_vec());
        let linked = |name: &[u8], chunk, inode| Entry {
            inode,
            device: 7,
            links: 2,
            ..file(name, chunk, 5)
        };
        let root = forge.tree(sorted(vec![
            linked(b"a", one, 100),
            linked(b"b", other, 100),
            linked(b"c", one, 200),
            linked(b"d", one, 200),
        ]));
        forge.snapshot(root).await;
        repo.cluster.close().await;
    });
    let (report, stderr) = restore(&case.c, &["latest"], &case.target);
    assert_eq!(report["errors"], 0, "{report} {stderr}");
    let read = |name: &str| std::fs::read(case.target.join(name)).unwrap();
    assert_eq!(read("a"), b"first");
    assert_eq!(read("b"), b"other");
    let inode = |name: &str| std::fs::metadata(case.target.join(name)).unwrap().ino();
    assert_ne!(inode("a"), inode("b"));
    assert_eq!(inode("c"), inode("d"), "one content, one inode");
}
