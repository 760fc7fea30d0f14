//! Small file-system helpers: metadata times in nanoseconds.

use std::os::unix::fs::MetadataExt;

/// Nanoseconds since the epoch of a metadata time (seconds, nanoseconds).
pub fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// (mtime, ctime) of `m`, ns.
pub fn times(m: &std::fs::Metadata) -> (i64, i64) {
    (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec()))
}
