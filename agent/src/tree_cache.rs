//! An on-disk cache of sealed trees, so browsing a snapshot a second time
//! (or backing up against the same parent) fetches no tree twice.
//!
//! Blobs are kept as the servers sent them, sealed: the cache holds no
//! plaintext, and a cached blob is opened (and so verified against its id)
//! like one fetched. Layout: `<dir>/<first 2 hex digits>/<64 hex digits>`,
//! each written to a temporary file and renamed, so concurrent agents and
//! commands share it safely. A hit refreshes the file's mtime; when the
//! cache outgrows its bound, the least recently used files go first.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use ringvault_common::ChunkId;

/// The tree cache of one repository on this machine.
pub struct TreeCache {
    dir: PathBuf,
    /// Most bytes kept; 0: the cache is off.
    limit: u64,
    /// The bytes the cache holds, as last counted plus what this process
    /// added since (`None` until the first insert counts them).
    held: Mutex<Option<u64>>,
    /// Trees served from the cache.
    hits: AtomicU64,
    /// Trees fetched from the cluster.
    fetched: AtomicU64,
}

impl TreeCache {
    /// A cache in `dir` holding at most `limit` bytes (0: off). Nothing is
    /// created until the first insert.
    pub fn new(dir: PathBuf, limit: u64) -> Self {
        Self {
            dir,
            limit,
            held: Mutex::new(None),
            hits: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
        }
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// The sealed blob of tree `id`, if cached. Unreadable files count as
    /// misses.
    pub fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        if self.limit == 0 {
            return None;
        }
        let path = self.path(id);
        let blob = std::fs::read(&path).ok()?;
        // Least recently used is judged by mtime: a hit makes it recent.
        if let Ok(f) = std::fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(blob)
    }

    /// Notes a tree fetched from the cluster and keeps its sealed blob.
    /// Failures to write are ignored: the cache is an optimization.
    pub fn put(&self, id: &ChunkId, blob: &[u8]) {
        self.fetched.fetch_add(1, Ordering::Relaxed);
        if self.limit == 0 || blob.len() as u64 > self.limit {
            return;
        }
        let path = self.path(id);
        let Some(parent) = path.parent() else { return };
        if std::fs::create_dir_all(parent).is_err() {
            return;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, blob).is_err() || std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        // Counting lists the whole cache: done once, then only when the
        // running total passes the limit (trimming leaves 90%, so at most
        // once per tenth of the limit written).
        let mut held = self.held.lock();
        let total = match *held {
            Some(t) => t + blob.len() as u64,
            None => trim(&self.dir, u64::MAX),
        };
        *held = Some(if total > self.limit {
            trim(&self.dir, self.limit)
        } else {
            total
        });
    }

    /// (trees served from the cache, trees fetched from the cluster) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.fetched.load(Ordering::Relaxed),
        )
    }
}

/// Deletes the least recently used files of the cache in `dir` until it
/// holds at most 90% of `limit` bytes, when it holds more than `limit`;
/// returns the bytes it holds then.
fn trim(dir: &Path, limit: u64) -> u64 {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(dir) else {
        return 0;
    };
    for sub in subdirs.flatten() {
        let Ok(entries) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(m) = e.metadata()
                && m.is_file()
            {
                let when = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                files.push((when, m.len(), e.path()));
            }
        }
    }
    let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
    if total <= limit {
        return total;
    }
    files.sort();
    let goal = limit / 10 * 9;
    for (_, len, path) in files {
        if total <= goal {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(dir: &Path) -> u64 {
        let mut total = 0;
        for sub in std::fs::read_dir(dir).unwrap().flatten() {
            for e in std::fs::read_dir(sub.path()).unwrap().flatten() {
                total += e.metadata().unwrap().len();
            }
        }
        total
    }

    #[test]
    fn hits_misses_and_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TreeCache::new(dir.path().join("trees"), 64 << 10);
        let id = |i: u8| ChunkId([i; 32]);
        assert_eq!(cache.get(&id(1)), None);
        cache.put(&id(1), b"sealed");
        assert_eq!(cache.get(&id(1)).as_deref(), Some(&b"sealed"[..]));
        assert_eq!(cache.counts(), (1, 1));
        // Far more than the bound: the oldest go, the cache stays bounded.
        for i in 2..=200u8 {
            cache.put(&id(i), &[i; 4096]);
            assert!(size(&dir.path().join("trees")) <= 64 << 10, "after {i}");
        }
        assert!(cache.get(&id(200)).is_some(), "the newest stays");
        assert!(cache.get(&id(2)).is_none(), "the oldest went");
    }

    #[test]
    fn a_zero_limit_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TreeCache::new(dir.path().join("trees"), 0);
        cache.put(&ChunkId([1; 32]), b"x");
        assert_eq!(cache.get(&ChunkId([1; 32])), None);
        assert!(!dir.path().join("trees").exists());
    }
}
