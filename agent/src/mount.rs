//! `ringvault mount`: the repository as a read-only FUSE file system.
//!
//! ```text
//! MOUNTPOINT/
//!   snapshots/<time>/<the snapshot's root entries>...
//!   hosts/<host>/<time>/...          the same directories, grouped by host
//!   latest -> snapshots/<time>       the newest snapshot (a relative link)
//! ```
//!
//! `<time>` is the snapshot's time in UTC to the second
//! (`2024-05-01T12:00:00Z`); snapshots that share a second are all named
//! `<time>-<short id>`. A host name is used as is, with `/` and NUL replaced
//! by `_`. The snapshot list is read at mount time and again, at most every
//! [`REFRESH_INTERVAL`], when someone looks at the top-level directories;
//! a snapshot's contents never change.
//!
//! Threading: fuser serves kernel requests on [`FUSE_THREADS`] threads of
//! its own, and each callback waits for the async repository with the
//! mounting runtime's [`Handle::block_on`]: never on a tokio worker. The
//! mount itself and the unmount run on the blocking pool.
//!
//! Inodes: 1 is the root, 2 `snapshots`, 3 `hosts`, 4 `latest`. Every other
//! node gets the next number the first time a lookup or a listing reaches
//! it, kept for the life of the mount and keyed by (snapshot, path), so the
//! directory under `snapshots/` and under `hosts/` is one inode. The map only
//! grows: a few hundred bytes plus the path per node listed or looked up,
//! and 32 bytes per chunk of a file.
//!
//! Reads: a tree names a file's chunks but not their sizes, so each open
//! file learns the end offset of every chunk it fetches, and reaching offset
//! X fetches each chunk before it once. Decrypted chunks are kept in a cache
//! of [`CHUNK_CACHE_BYTES`] and decoded trees in one of
//! [`TREE_CACHE_BYTES`]; a read that misses fetches the chunk and up to
//! [`READ_AHEAD_CHUNKS`]` - 1` after it concurrently, so `cat`, `cp` and
//! `cmp` fetch each chunk once. A chunk or tree that cannot be read fails
//! that request with EIO and a warning in the log.
//!
//! Read-only: the mount carries the `ro` option, so the kernel fails every
//! write with EROFS before it reaches us; `open` for writing is refused
//! too. The kernel checks each file's recorded owner and mode
//! (`default_permissions`).
//!
//! This file mounts and unmounts; the file system itself is in `fs`, the
//! top directories' names in `listing`, the caches in `cache`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fuser::{BackgroundSession, MountOption, SessionACL};
use tokio::runtime::Handle;

use crate::repo::Repo;

mod cache;
mod fs;

use fs::RepoFs;

pub use crate::error::EXIT_FUSE_UNAVAILABLE;

/// Bytes of decrypted chunks kept for reads (64 MiB).
pub const CHUNK_CACHE_BYTES: usize = 64 << 20;

/// Bytes (estimated) of decoded directory trees kept (32 MiB).
pub const TREE_CACHE_BYTES: usize = 32 << 20;

/// Chunks fetched at once when a read misses the cache: the one it needs
/// and those after it.
pub const READ_AHEAD_CHUNKS: usize = 4;

/// Threads serving kernel requests; each waits for one repository read at
/// a time.
pub const FUSE_THREADS: usize = 4;

/// The snapshot list is read again at most this often, when someone looks
/// at the top-level directories.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// How to mount.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Let users other than the one mounting in (FUSE's `allow_other`; a
    /// user other than root needs `user_allow_other` in /etc/fuse.conf).
    /// Each file's recorded owner and mode still apply.
    pub allow_other: bool,
}

/// This machine cannot mount FUSE file systems: there is no /dev/fuse, or
/// the kernel or fusermount refused the mount (in a container without the
/// right, for instance).
#[derive(Debug, thiserror::Error)]
#[error("FUSE is unavailable here: {reason}")]
pub struct FuseUnavailable {
    /// Why, as the system said it.
    pub reason: String,
}

/// Mounts the repository read-only at `mountpoint` (an existing directory)
/// and serves it until SIGINT or SIGTERM, then unmounts; returns early if
/// someone else unmounts it (`fusermount -u`). Call from inside a
/// multi-threaded tokio runtime: the file system's threads use it.
///
/// # Errors
/// The mountpoint is not a directory; the snapshots cannot be listed;
/// [`FuseUnavailable`]; the mount fails otherwise; the session ends with an
/// error. A mountpoint still in use at the end is detached lazily (with a
/// warning), not an error.
pub async fn mount(
    repo: Arc<Repo>,
    mountpoint: &Path,
    options: &MountOptions,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before mounting, so that a signal during the mount does not kill the
    // process and leave the mount behind.
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;

    let meta = std::fs::metadata(mountpoint)
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "mountpoint {} is not a directory",
        mountpoint.display()
    );
    if cfg!(target_os = "linux") && !Path::new("/dev/fuse").exists() {
        return Err(FuseUnavailable {
            reason: "there is no /dev/fuse (load the fuse kernel module, or pass the device \
                     into the container)"
                .into(),
        }
        .into());
    }
    let snapshots = repo.snapshots().await.context("listing snapshots")?;
    let count = snapshots.len();
    let config = fuse_config(&repo.config.repository, options);
    let fs = RepoFs::new(
        repo.clone(),
        Handle::current(),
        &snapshots,
        (meta.uid(), meta.gid()),
    );
    let at = mountpoint.to_path_buf();
    let session = tokio::task::spawn_blocking(move || fuser::spawn_mount(fs, &at, &config))
        .await
        .context("the mount task")?
        .map_err(|e| mount_error(e, mountpoint))?;
    println!(
        "mounted repository {} ({count} snapshots) read-only at {}; Ctrl-C or SIGTERM unmounts",
        repo.config.repository,
        mountpoint.display()
    );

    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = poll.tick() => {
                if session.guard.is_finished() {
                    // Unmounted from outside: the session has ended.
                    tokio::task::spawn_blocking(move || session.join())
                        .await
                        .context("the file system thread")?
                        .context("serving the mount")?;
                    println!("{} was unmounted", mountpoint.display());
                    return Ok(());
                }
            }
        }
    }
    unmount(session, mountpoint).await
}

/// Unmounts and waits for the file system's threads; when the mountpoint
/// is busy, detaches it lazily instead (whoever still uses it loses access
/// when this process exits).
async fn unmount(session: BackgroundSession, mountpoint: &Path) -> anyhow::Result<()> {
    let result = tokio::task::spawn_blocking(move || session.umount_and_join())
        .await
        .context("the unmount task")?;
    match result {
        Ok(()) => {
            println!("unmounted {}", mountpoint.display());
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            detach(mountpoint).await?;
            tracing::warn!(
                mountpoint = %mountpoint.display(),
                "the mountpoint was busy: detached it; processes still using it lose access now"
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("unmounting {}", mountpoint.display())),
    }
}

/// Lazily unmounts `mountpoint` with whichever tool this system has.
///
/// # Errors
/// When none of them succeeds.
async fn detach(mountpoint: &Path) -> anyhow::Result<()> {
    let tools: [(&str, &[&str]); 3] = [
        ("fusermount3", &["-u", "-z", "--"]),
        ("fusermount", &["-u", "-z", "--"]),
        ("umount", &["-l", "--"]),
    ];
    for (tool, args) in tools {
        let status = tokio::process::Command::new(tool)
            .args(args)
            .arg(mountpoint)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        if status.is_ok_and(|s| s.success()) {
            return Ok(());
        }
    }
    anyhow::bail!(
        "{} is busy and could not be detached: unmount it with `fusermount -u -z`",
        mountpoint.display()
    )
}

fn fuse_config(repository: &str, options: &MountOptions) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
        // Mount options are comma-separated.
        MountOption::FSName(format!("ringvault:{}", repository.replace(',', "_"))),
        MountOption::Subtype("ringvault".into()),
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(FUSE_THREADS);
    config
}

/// A failed mount as [`FuseUnavailable`] when the system refused it, else
/// as is. The mountpoint was checked first, so "not found" means
/// /dev/fuse or fusermount.
fn mount_error(e: std::io::Error, mountpoint: &Path) -> anyhow::Error {
    use std::io::ErrorKind;
    let text = e.to_string();
    let refused = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied)
        || [
            "Operation not permitted",
            "Permission denied",
            "No such device",
            "fuse device not found",
        ]
        .iter()
        .any(|m| text.contains(m));
    if refused {
        FuseUnavailable {
            reason: format!("mounting at {}: {}", mountpoint.display(), text.trim()),
        }
        .into()
    } else {
        anyhow::Error::new(e).context(format!("mounting at {}", mountpoint.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_mounts_are_fuse_unavailable() {
        use std::io::{Error, ErrorKind};
        let at = Path::new("/mnt/x");
        let unavailable = |e: Error| mount_error(e, at).is::<FuseUnavailable>();
        assert!(unavailable(Error::from(ErrorKind::PermissionDenied)));
        assert!(unavailable(Error::from(ErrorKind::NotFound)));
        assert!(unavailable(Error::other(
            "fusermount: mount failed: Operation not permitted\n"
        )));
        assert!(unavailable(Error::from_raw_os_error(libc::ENODEV)));
        assert!(!unavailable(Error::from_raw_os_error(libc::EINVAL)));
        assert!(!unavailable(Error::other(
            "fusermount: mountpoint is not empty"
        )));
    }
}
