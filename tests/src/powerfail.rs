//! Power loss, simulated: a pass-through FUSE file system that keeps
//! written data in memory until it is synced, and can lose it.
//!
//! The model is LazyFS's (Ramos et al., "LazyFS: A FUSE-based file system
//! for simulating power failures"): [`PowerFailFs::mount`] mounts, in this
//! process (fuser, on background threads), a file system that passes
//! through to a backing directory. Data written to a file waits in this
//! process's memory, in 4 KiB pages, until that file is fsync'd or
//! fdatasync'd (or written through an O_SYNC/O_DSYNC descriptor); reads see
//! it. Metadata (create, mkdir, unlink, rmdir, rename, link, symlink,
//! truncate, chmod, chown, times) reaches the backing directory at once.
//!
//! A **power loss** ([`PowerFailFs::power_loss`], or at an armed sync
//! point) kills the process under test with SIGKILL, drops every unsynced
//! page or, with [`Loss::KeepSome`], writes back a seeded random part of
//! them (each page whole or not at all, in any order: the file grows only
//! as far as the pages kept reach), and fails every later operation with
//! EIO, so the backing directory holds exactly what the power left. After
//! [`PowerFailFs::remount`] (a new mount on the same backing directory:
//! nothing of the kernel's caches survives) the program restarts on it.
//!
//! **Sync points.** Every fsync, fdatasync, directory fsync and O_SYNC
//! write is counted, in the order the file system receives them;
//! [`PowerFailFs::arm`] makes the power fail at the n-th instead of
//! performing it. With a concurrent program the numbering is the order of
//! arrival, so two runs of one workload need not have the same n-th sync.
//!
//! **Not modelled.** Directory entries: a create, rename or unlink is
//! durable at once, while a real file system may lose it until the
//! directory is fsync'd (so a crash test here cannot catch a missing
//! directory fsync). Torn or corrupted sectors: a page is written back
//! whole or not at all, and what was synced is never damaged. Metadata
//! order: a truncate is durable at once, before data written earlier.
//! Several nodes at once: one file system serves one process, so a power
//! loss hits one node, never a rack. Writes through mmap, fallocate,
//! extended attributes and file locks across processes are not supported
//! (nothing in the chunk server uses them). A synced page goes to the
//! backing file without a real fsync of it: the host does not lose power.
//!
//! Mount as root (the tests run as root in CI); where /dev/fuse is missing
//! or the mount is refused, [`PowerFailFs::mount`] fails with
//! [`MountError::Unavailable`] and a test should print why and skip.

mod fs;
mod pages;
mod state;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, MountOption, SessionACL};

use fs::LazyFs;
use state::State;

pub use pages::PAGE;

/// What a power loss does to the unsynced pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Every unsynced page is lost.
    All,
    /// About `percent` of the unsynced pages (chosen by `seed`) reached the
    /// disk before the power failed; the rest are lost.
    KeepSome {
        /// Seeds the choice, so a failure can be replayed.
        seed: u64,
        /// Pages kept, percent (0 to 100).
        percent: u8,
    },
}

/// What a power loss found and did.
#[derive(Clone, Debug)]
pub struct CrashReport {
    /// The sync point (counted from the mount, 1-based) it replaced, if
    /// the power failed at one.
    pub sync_point: Option<u64>,
    /// That sync point's description (`fdatasync segments/00000002.seg`).
    pub instead_of: String,
    /// What happened to the unsynced pages.
    pub loss: Loss,
    /// Files with unsynced pages.
    pub files: usize,
    /// Unsynced pages.
    pub dirty_pages: u64,
    /// Of those, pages written back ([`Loss::KeepSome`]).
    pub kept_pages: u64,
}

/// Why the file system could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// This machine cannot mount FUSE file systems here (no /dev/fuse, or
    /// the mount was refused): a test should skip, saying why.
    #[error("FUSE is unavailable: {0}")]
    Unavailable(String),
    /// Any other failure.
    #[error("mounting {path}")]
    Io {
        /// The mountpoint.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// A mounted power-loss file system; unmounts when dropped (after killing
/// its victim, so that the mount is not busy). See the module docs.
pub struct PowerFailFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    state: Arc<State>,
    session: Option<BackgroundSession>,
}

impl PowerFailFs {
    /// Mounts the file system at `mountpoint` (an existing directory) over
    /// `backing` (an existing directory).
    ///
    /// # Errors
    /// [`MountError::Unavailable`] when this machine refuses FUSE mounts,
    /// [`MountError::Io`] otherwise.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Self, MountError> {
        let state = State::new(backing);
        let session = spawn(&state, mountpoint)?;
        Ok(Self {
            backing: backing.to_owned(),
            mountpoint: mountpoint.to_owned(),
            state,
            session: Some(session),
        })
    }

    /// Where the file system is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory holding what is durable.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Sync points counted since this mount.
    pub fn syncs(&self) -> u64 {
        self.state.syncs()
    }

    /// Descriptions of the sync points since this mount, in order.
    pub fn sync_log(&self) -> Vec<String> {
        self.state.sync_log()
    }

    /// Unsynced pages held right now.
    pub fn dirty_pages(&self) -> usize {
        self.state.dirty_pages()
    }

    /// Makes the power fail instead of sync point `at` (counted from this
    /// mount, see [`PowerFailFs::syncs`]), losing as `loss` says; `None`
    /// disarms.
    pub fn arm(&self, at: Option<(u64, Loss)>) {
        self.state.arm(at);
    }

    /// The process killed (SIGKILL) when the power fails, and before the
    /// file system is unmounted: the program under test.
    pub fn set_victim(&self, pid: Option<u32>) {
        self.state.set_victim(pid);
    }

    /// The power loss, once there has been one on this mount.
    pub fn crash(&self) -> Option<CrashReport> {
        self.state.crash()
    }

    /// Waits at most `limit` for the power to fail at an armed sync point.
    pub fn wait_crash(&self, limit: Duration) -> Option<CrashReport> {
        self.state.wait_crash(limit)
    }

    /// The power fails now (unless it already has on this mount).
    pub fn power_loss(&self, loss: Loss) -> CrashReport {
        self.state.power_loss(loss)
    }

    /// Writes back every unsynced page, as a clean shutdown would (no sync
    /// point is counted).
    ///
    /// # Errors
    /// When a backing file cannot be written.
    pub fn flush_all(&self) -> std::io::Result<()> {
        self.state.flush_all()
    }

    /// Unmounts and mounts a fresh file system over the same backing
    /// directory: the reboot after a power loss (or a clean shutdown, after
    /// [`PowerFailFs::flush_all`]). Sync points count from zero again.
    /// Unsynced pages still held are lost: flush or lose power first.
    ///
    /// # Errors
    /// As [`PowerFailFs::mount`].
    pub fn remount(&mut self) -> Result<(), MountError> {
        self.unmount();
        let state = State::new(&self.backing);
        self.session = Some(spawn(&state, &self.mountpoint)?);
        self.state = state;
        Ok(())
    }

    /// Kills the victim if it still runs, then unmounts: at once if the
    /// mount is not busy, else after retries for up to 5 s, else lazily.
    fn unmount(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if let Some(pid) = self
            .state
            .victim()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        self.state.set_victim(None);
        // The victim's descriptors close as it exits: until then the mount
        // is busy.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let done = Command::new("umount")
                .arg(&self.mountpoint)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if done || !is_mounted(&self.mountpoint) {
                // The session thread ends once the kernel lets go.
                let _ = session.join();
                return;
            }
            if Instant::now() > deadline {
                let _ = Command::new("umount")
                    .args(["-l"])
                    .arg(&self.mountpoint)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                eprintln!(
                    "powerfail: {} was busy; detached it lazily",
                    self.mountpoint.display()
                );
                // Not joined: its thread ends when the last user lets go.
                drop(session);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PowerFailFs {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Whether a FUSE file system of ours is mounted at `path` (by
/// /proc/self/mounts).
fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let target = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let target = target.to_string_lossy();
    mounts.lines().any(|l| {
        let mut fields = l.split(' ');
        let (_, at) = (fields.next(), fields.next());
        at == Some(&*target)
    })
}

/// Mounts a file system over `state` at `mountpoint`.
fn spawn(state: &Arc<State>, mountpoint: &Path) -> Result<BackgroundSession, MountError> {
    if cfg!(target_os = "linux") && !Path::new("/dev/fuse").exists() {
        return Err(MountError::Unavailable("there is no /dev/fuse".into()));
    }
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("powerfail".into()),
        MountOption::Subtype("powerfail".into()),
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(2);
    fuser::spawn_mount(LazyFs(state.clone()), mountpoint, &config).map_err(|e| {
        use std::io::ErrorKind;
        let text = e.to_string();
        let refused = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied)
            || ["Operation not permitted", "No such device", "fuse device"]
                .iter()
                .any(|m| text.contains(m));
        if refused {
            MountError::Unavailable(format!("mounting at {}: {text}", mountpoint.display()))
        } else {
            MountError::Io {
                path: mountpoint.to_owned(),
                source: e,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use super::*;

    /// A mount over a fresh backing directory, or `None` (printed) where
    /// FUSE is unavailable.
    fn mounted() -> Option<(tempfile::TempDir, PowerFailFs)> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("backing")).unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        match PowerFailFs::mount(&dir.path().join("backing"), &dir.path().join("mnt")) {
            Ok(fs) => Some((dir, fs)),
            Err(MountError::Unavailable(why)) => {
                eprintln!("skipped: {why}");
                None
            }
            Err(e) => panic!("{e:#?}"),
        }
    }

    #[test]
    fn unsynced_data_is_lost_and_synced_data_survives() {
        let Some((dir, mut fs)) = mounted() else {
            return;
        };
        let mnt = fs.mountpoint().to_owned();
        std::fs::create_dir(mnt.join("sub")).unwrap();
        let mut synced = std::fs::File::create(mnt.join("sub/synced")).unwrap();
        synced.write_all(b"kept").unwrap();
        synced.sync_data().unwrap();
        synced.write_all(b" and lost").unwrap();
        let mut lost = std::fs::File::create(mnt.join("lost")).unwrap();
        lost.write_all(&[1; 10_000]).unwrap();
        // Reads and stat see the unsynced data; the backing files do not.
        assert_eq!(
            std::fs::read(mnt.join("sub/synced")).unwrap(),
            b"kept and lost"
        );
        assert_eq!(std::fs::metadata(mnt.join("lost")).unwrap().len(), 10_000);
        assert_eq!(
            std::fs::read(dir.path().join("backing/sub/synced")).unwrap(),
            b"kept"
        );
        assert_eq!(fs.syncs(), 1);
        assert_eq!(fs.sync_log(), ["fdatasync sub/synced"]);
        drop((synced, lost));

        let report = fs.power_loss(Loss::All);
        assert_eq!((report.files, report.dirty_pages), (2, 4));
        assert!(
            std::fs::read(mnt.join("sub/synced")).is_err(),
            "EIO after the power loss"
        );
        fs.remount().unwrap();
        assert_eq!(std::fs::read(mnt.join("sub/synced")).unwrap(), b"kept");
        // Metadata is durable at once: the file is there, empty.
        assert_eq!(std::fs::read(mnt.join("lost")).unwrap(), b"");
    }

    #[test]
    fn the_power_fails_at_an_armed_sync_point_and_kills_the_victim() {
        let Some((_dir, mut fs)) = mounted() else {
            return;
        };
        let mnt = fs.mountpoint().to_owned();
        let mut victim = Command::new("sleep").arg("30").spawn().unwrap();
        fs.set_victim(Some(victim.id()));
        fs.arm(Some((2, Loss::All)));
        let f = std::fs::File::create(mnt.join("f")).unwrap();
        f.write_all_at(b"one", 0).unwrap();
        f.sync_all().unwrap();
        f.write_all_at(b"two", 3).unwrap();
        let err = f.sync_all().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5), "EIO: {err}");
        let report = fs.wait_crash(Duration::from_secs(1)).unwrap();
        assert_eq!(report.sync_point, Some(2));
        assert_eq!(report.instead_of, "fsync f");
        assert!(!victim.wait().unwrap().success(), "the victim was killed");
        drop(f);
        fs.remount().unwrap();
        assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"one");
    }

    #[test]
    fn keeping_some_pages_keeps_whole_pages_and_is_seeded() {
        let Some((_dir, mut fs)) = mounted() else {
            return;
        };
        let mnt = fs.mountpoint().to_owned();
        let f = std::fs::File::create(mnt.join("f")).unwrap();
        let pages = 64;
        let data: Vec<u8> = (0..pages * PAGE).map(|i| (i / PAGE) as u8 + 1).collect();
        f.write_all_at(&data, 0).unwrap();
        drop(f);
        let report = fs.power_loss(Loss::KeepSome {
            seed: 7,
            percent: 50,
        });
        assert_eq!(report.dirty_pages, pages);
        assert!(
            report.kept_pages > 0 && report.kept_pages < pages,
            "{report:?}"
        );
        fs.remount().unwrap();
        let back = std::fs::read(mnt.join("f")).unwrap();
        let mut kept = 0;
        for (i, page) in back.chunks(PAGE as usize).enumerate() {
            let whole = page.iter().all(|&b| b == i as u8 + 1);
            let lost = page.iter().all(|&b| b == 0);
            assert!(whole || lost, "page {i} is torn");
            kept += u64::from(whole);
        }
        assert_eq!(kept, report.kept_pages);
    }

    #[test]
    fn renames_and_unlinks_reach_the_backing_directory_at_once() {
        let Some((dir, fs)) = mounted() else {
            return;
        };
        let mnt = fs.mountpoint().to_owned();
        std::fs::write(mnt.join("tmp"), b"x").unwrap();
        std::fs::rename(mnt.join("tmp"), mnt.join("final")).unwrap();
        std::fs::write(mnt.join("gone"), b"y").unwrap();
        std::fs::remove_file(mnt.join("gone")).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join("backing"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["final"]);
        let f = std::fs::File::open(mnt.join("final")).unwrap();
        f.sync_all().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("backing/final")).unwrap(),
            b"x"
        );
    }
}
