//! What changed since the last snapshot: a file-system watcher (notify, the
//! platform's recommended backend, recursive) feeding a [`DirtySet`].
//!
//! Every event path is marked dirty with everything below it, which covers
//! a directory created, or moved in from outside, with its contents. When
//! events are lost (the kernel's queue overflowed, ours filled up, a watch
//! could not be added) the set is marked [`DirtySet::rescan_all`]: the next
//! snapshot scans every path against the local index, which reads only
//! files whose fingerprint changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use notify::{RecursiveMode, Watcher as _};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Most paths a [`DirtySet`] holds before it asks for a full scan instead
/// (about 100 bytes each).
pub const MAX_DIRTY_PATHS: usize = 100_000;

/// Paths whose subtrees the next snapshot reads again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtySet {
    paths: BTreeSet<PathBuf>,
    /// Scan everything: events were lost.
    pub rescan_all: bool,
}

impl DirtySet {
    /// Marks `path` and everything below it. A changed ignore file marks
    /// its whole directory: what it excludes may have changed anywhere below.
    /// Past [`MAX_DIRTY_PATHS`] paths the set gives up on paths and asks
    /// for a full scan instead, so that its memory stays bounded.
    pub fn mark(&mut self, path: PathBuf) {
        if self.rescan_all {
            return;
        }
        if self.paths.len() >= MAX_DIRTY_PATHS {
            self.paths.clear();
            self.rescan_all = true;
            return;
        }
        match path.parent() {
            Some(dir) if path.file_name() == Some(crate::exclude::IGNORE_FILE.as_ref()) => {
                self.paths.insert(dir.to_owned());
            }
            _ => {
                self.paths.insert(path);
            }
        }
    }

    /// Whether nothing is marked.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.rescan_all
    }

    /// Paths marked (not counting `rescan_all`).
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// The paths marked.
    pub fn into_paths(self) -> impl Iterator<Item = PathBuf> {
        self.paths.into_iter()
    }

    /// Whether `path` must be read again: it, one of its ancestors or
    /// something below it is marked.
    pub fn touches(&self, path: &Path) -> bool {
        if self.rescan_all || path.ancestors().any(|a| self.paths.contains(a)) {
            return true;
        }
        // Paths order component by component, so everything below `path`
        // comes right after it.
        self.paths
            .range::<Path, _>((std::ops::Bound::Excluded(path), std::ops::Bound::Unbounded))
            .next()
            .is_some_and(|p| p.starts_with(path))
    }
}

/// What the watcher reports.
#[derive(Debug)]
pub enum Change {
    /// These paths changed (with whatever is below them).
    Paths(Vec<PathBuf>),
    /// Events were lost: scan everything.
    Lost(String),
}

/// A recursive watch on the agent's paths. Dropping it stops watching.
pub struct Watcher {
    _inner: Arc<Mutex<notify::RecommendedWatcher>>,
    /// Some path could not be watched (the watch limit, say).
    degraded: Arc<AtomicBool>,
    /// Follows mounts on Linux; stopped on drop.
    mounts: Option<tokio::task::JoinHandle<()>>,
}

impl Watcher {
    /// Whether some path could not be watched: its changes are then seen
    /// only by scans.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(m) = &self.mounts {
            m.abort();
        }
    }
}

impl Watcher {
    /// Watches `roots` recursively; changes arrive on the returned channel,
    /// which holds at most `queue` of them. When it is full, one
    /// [`Change::Lost`] follows as soon as there is room again.
    ///
    /// # Errors
    /// When the watcher cannot start. A root that cannot be watched (the
    /// watch limit, say) is reported as [`Change::Lost`] instead, and the
    /// periodic full scans cover it.
    pub fn start(
        roots: &[PathBuf],
        queue: usize,
    ) -> anyhow::Result<(Self, mpsc::Receiver<Change>)> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        let degraded = Arc::new(AtomicBool::new(false));
        let sink = tx.clone();
        let degraded_cb = degraded.clone();
        let mut inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let change = match res {
                // Opening and closing (our own reads among them) change
                // nothing; writes also come as modify events.
                Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => return,
                Ok(e) if e.need_rescan() => {
                    Change::Lost("the kernel's event queue overflowed".into())
                }
                Ok(e) => Change::Paths(e.paths),
                Err(e) => {
                    // A directory created past the watch limit, say.
                    degraded_cb.store(true, Ordering::Release);
                    Change::Lost(format!("watcher error: {e}"))
                }
            };
            send(&sink, &overflowed, change);
        })
        .context("starting the file-system watcher")?;
        for root in roots {
            if let Err(e) = inner.watch(root, RecursiveMode::Recursive) {
                tracing::warn!(path = %root.display(), error = %e, "cannot watch; relying on scans");
                degraded.store(true, Ordering::Release);
                let _ = tx.try_send(Change::Lost(format!(
                    "cannot watch {}: {e} (on Linux, raise fs.inotify.max_user_watches)",
                    root.display()
                )));
            }
        }
        let inner = Arc::new(Mutex::new(inner));
        let mounts = follow_mounts(roots.to_vec(), Arc::downgrade(&inner), tx);
        Ok((
            Self {
                _inner: inner,
                degraded,
                mounts,
            },
            rx,
        ))
    }
}

/// On Linux, follows mounts and unmounts (the kernel flags
/// `/proc/self/mountinfo` with a priority event on each, proc(5)): a mount
/// point that appears or goes under a watched path is watched afresh and
/// marked dirty with its subtree, since the watch on the directory beneath
/// sees nothing of the new file system. `None` where there is no such file.
fn follow_mounts(
    roots: Vec<PathBuf>,
    watcher: std::sync::Weak<Mutex<notify::RecommendedWatcher>>,
    tx: mpsc::Sender<Change>,
) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    const MOUNTINFO: &str = "/proc/self/mountinfo";
    let file = std::fs::File::open(MOUNTINFO).ok()?;
    // Deprecated in tokio 1.54 for types that could close or replace their
    // fd while registered; an owned File, moved in, does neither (the
    // replacement, `register_with_interest`, is `unsafe`, which this
    // workspace denies).
    #[allow(deprecated)]
    let fd = AsyncFd::with_interest(file, Interest::PRIORITY).ok()?;
    let mut known = mount_points(&std::fs::read_to_string(MOUNTINFO).ok()?);
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut ready) = fd.ready(Interest::PRIORITY).await else {
                return;
            };
            ready.clear_ready();
            let Ok(text) = std::fs::read_to_string(MOUNTINFO) else {
                return;
            };
            let now = mount_points(&text);
            let changed: Vec<PathBuf> = now
                .symmetric_difference(&known)
                .filter(|m| roots.iter().any(|r| m.starts_with(r)))
                .cloned()
                .collect();
            known = now;
            if changed.is_empty() {
                continue;
            }
            let Some(watcher) = watcher.upgrade() else {
                return;
            };
            // Watching a large new tree takes a while: off the async workers.
            let mounts = changed.clone();
            let rewatched = tokio::task::spawn_blocking(move || {
                for m in &mounts {
                    tracing::info!(path = %m.display(), "mount changed under a watched path");
                    if m.is_dir()
                        && let Err(e) = watcher.lock().watch(m, RecursiveMode::Recursive)
                    {
                        tracing::warn!(path = %m.display(), error = %e, "cannot watch the new mount");
                    }
                }
            });
            if rewatched.await.is_err() {
                return;
            }
            if tx.send(Change::Paths(changed)).await.is_err() {
                return;
            }
        }
    }))
}

/// The mount points in a `/proc/self/mountinfo` text (the fifth field,
/// with `\NNN` octal escapes decoded), proc(5).
fn mount_points(mountinfo: &str) -> BTreeSet<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| {
            let mut out = Vec::with_capacity(field.len());
            let b = field.as_bytes();
            let mut i = 0;
            while i < b.len() {
                let octal = b.get(i + 1..i + 4).and_then(|d| {
                    std::str::from_utf8(d)
                        .ok()
                        .and_then(|d| u8::from_str_radix(d, 8).ok())
                });
                match (b[i], octal) {
                    (b'\\', Some(v)) => {
                        out.push(v);
                        i += 4;
                    }
                    (c, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            PathBuf::from(std::ffi::OsString::from_vec(out))
        })
        .collect()
}

/// Hands a change to the agent without ever blocking the watcher's thread:
/// when the queue is full the change is dropped and a [`Change::Lost`] is
/// owed, sent as soon as there is room.
fn send(tx: &mpsc::Sender<Change>, overflowed: &AtomicBool, change: Change) {
    if overflowed.load(Ordering::Acquire) {
        match tx.try_send(Change::Lost("the agent's event queue filled up".into())) {
            Ok(()) => overflowed.store(false, Ordering::Release),
            Err(_) => return,
        }
    }
    // A change dropped now may have happened after the agent took the Lost
    // just sent: owe another.
    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(change) {
        overflowed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_ancestors_descendants_and_the_path_itself_only() {
        let mut d = DirtySet::default();
        d.mark(PathBuf::from("/data/a/b"));
        assert!(d.touches(Path::new("/data")));
        assert!(d.touches(Path::new("/data/a")));
        assert!(d.touches(Path::new("/data/a/b")));
        assert!(d.touches(Path::new("/data/a/b/c/d")));
        assert!(!d.touches(Path::new("/data/a/b0")));
        assert!(!d.touches(Path::new("/data/a/a")));
        assert!(!d.touches(Path::new("/data/ab")));
        assert!(!d.touches(Path::new("/other")));
        d.rescan_all = true;
        assert!(d.touches(Path::new("/other")));
    }

    #[test]
    fn too_many_dirty_paths_become_a_full_scan() {
        let mut d = DirtySet::default();
        for i in 0..MAX_DIRTY_PATHS {
            d.mark(PathBuf::from(format!("/data/{i}")));
        }
        assert!(!d.rescan_all);
        assert_eq!(d.len(), MAX_DIRTY_PATHS);
        d.mark(PathBuf::from("/data/one-more"));
        assert!(d.rescan_all);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn mount_points_are_read_with_their_escapes() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n\
                    42 27 0:39 / /home/me/my\\040disk rw,relatime - tmpfs tmpfs rw\n";
        let m = mount_points(text);
        assert!(m.contains(Path::new("/proc")));
        assert!(m.contains(Path::new("/home/me/my disk")), "{m:?}");
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_full_queue_owes_one_lost_change() {
        let (tx, mut rx) = mpsc::channel(1);
        let overflowed = AtomicBool::new(false);
        send(&tx, &overflowed, Change::Paths(vec!["/a".into()]));
        send(&tx, &overflowed, Change::Paths(vec!["/b".into()]));
        assert!(overflowed.load(Ordering::Acquire));
        assert!(matches!(rx.try_recv(), Ok(Change::Paths(p)) if p == [PathBuf::from("/a")]));
        // Room again: the owed Lost goes first; /c finds the queue full
        // behind it and is owed in turn.
        send(&tx, &overflowed, Change::Paths(vec!["/c".into()]));
        assert!(matches!(rx.try_recv(), Ok(Change::Lost(_))));
        assert!(overflowed.load(Ordering::Acquire));
        send(&tx, &overflowed, Change::Paths(vec!["/d".into()]));
        assert!(matches!(rx.try_recv(), Ok(Change::Lost(_))));
        assert!(rx.try_recv().is_err());
    }
}
