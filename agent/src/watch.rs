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
use tokio::sync::mpsc;

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
    pub fn mark(&mut self, path: PathBuf) {
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
    _inner: notify::RecommendedWatcher,
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
        let sink = tx.clone();
        let mut inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let change = match res {
                // Opening and closing (our own reads among them) change
                // nothing; writes also come as modify events.
                Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => return,
                Ok(e) if e.need_rescan() => {
                    Change::Lost("the kernel's event queue overflowed".into())
                }
                Ok(e) => Change::Paths(e.paths),
                Err(e) => Change::Lost(format!("watcher error: {e}")),
            };
            send(&sink, &overflowed, change);
        })
        .context("starting the file-system watcher")?;
        for root in roots {
            if let Err(e) = inner.watch(root, RecursiveMode::Recursive) {
                tracing::warn!(path = %root.display(), error = %e, "cannot watch; relying on scans");
                let _ = tx.try_send(Change::Lost(format!(
                    "cannot watch {}: {e}",
                    root.display()
                )));
            }
        }
        Ok((Self { _inner: inner }, rx))
    }
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
