//! What a store says about itself: ok, full, read-only or failing, with its
//! last error (see [`StoreHealth`]).
//!
//! A store is **full** when it has no room for new blobs: its room is the
//! smaller of the bytes its quota still allows and the free bytes of its
//! file system above the watermark ([`Watermark`]). It is also full from the
//! moment it refuses a put for want of room until it measures more room
//! than it had then, or stores a put: a put may be refused with some room
//! left (a batch larger than it), and the state must say so. A store never
//! needs a restart to leave the full state: every status request and every
//! group commit measures the room again.
//!
//! It is **read-only** while its file system is mounted read-only, and
//! **failing** after an error it has not recovered from: an index or
//! segment I/O error until the next write succeeds (or the index is
//! reopened), a panic in a store call until the process restarts.

use std::path::Path;

use parking_lot::Mutex;
use ringvault_common::wire::StoreState;

/// A store's health, as [`super::HealthStore::health`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreHealth {
    /// The state, the worst that applies.
    pub state: StoreState,
    /// The last error, for people: why it is failing, or the last failure
    /// it recovered from. `None` when none happened since start.
    pub error: Option<String>,
    /// When that error happened, unix seconds (0 when none).
    pub error_at_s: u64,
    /// Free bytes on the store's file system (available to the server), as
    /// last measured; `u64::MAX` for a store without files.
    pub free_bytes: u64,
}

/// Free space a store keeps on its file system: new blobs are refused
/// once they would leave less than [`Watermark::min_free`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermark {
    /// Bytes kept free.
    pub min_free_bytes: u64,
    /// Percent of the file system's size kept free.
    pub min_free_percent: u64,
}

impl Default for Watermark {
    fn default() -> Self {
        Self {
            min_free_bytes: 64 << 20,
            min_free_percent: 1,
        }
    }
}

impl Watermark {
    /// Bytes kept free on a file system of `total` bytes: the larger of the
    /// two settings.
    pub fn min_free(&self, total: u64) -> u64 {
        let percent = u128::from(total) * u128::from(self.min_free_percent) / 100;
        self.min_free_bytes
            .max(u64::try_from(percent).unwrap_or(u64::MAX))
    }
}

/// A file system's space, as `statvfs` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Space {
    /// Bytes available to the server.
    pub free: u64,
    /// Size of the file system, bytes.
    pub total: u64,
    /// Mounted read-only.
    pub read_only: bool,
}

impl Space {
    /// Bytes that may still be written before `watermark` is reached.
    pub fn room(&self, watermark: &Watermark) -> u64 {
        self.free.saturating_sub(watermark.min_free(self.total))
    }
}

/// Measures the file system holding `path` (one `statvfs` call).
pub(crate) fn measure(path: &Path) -> std::io::Result<Space> {
    let st = rustix::fs::statvfs(path)?;
    Ok(Space {
        free: st.f_bavail.saturating_mul(st.f_frsize),
        total: st.f_blocks.saturating_mul(st.f_frsize),
        read_only: st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
    })
}

/// Whether an I/O error means the file system is out of space (or of the
/// user's disk quota).
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error())
}

/// The health of one store, shared by its threads. Every method takes a
/// short lock and never blocks on I/O.
#[derive(Debug, Default)]
pub(crate) struct Health {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Room for new blobs when last measured, bytes.
    room: u64,
    /// Free bytes when last measured.
    free: u64,
    /// The file system was read-only when last measured.
    read_only: bool,
    /// The room when a put was last refused for want of it, until the room
    /// grows past it or a put is stored.
    refused_at: Option<u64>,
    /// Failing now; `sticky` failures last until restart.
    failing: bool,
    sticky: bool,
    /// The last error and when, unix seconds.
    error: Option<(String, u64)>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            room: u64::MAX,
            free: u64::MAX,
            read_only: false,
            refused_at: None,
            failing: false,
            sticky: false,
            error: None,
        }
    }
}

impl Health {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        // Every update is a few field stores, so a panicking holder leaves
        // nothing half done.
        self.inner.lock()
    }

    /// Records a measurement: `room` bytes for new blobs, `free` bytes
    /// free, and whether the file system is read-only. A refusal is
    /// forgotten once the room has grown past what it was then.
    pub fn observe(&self, room: u64, free: u64, read_only: bool) {
        let mut h = self.lock();
        h.room = room;
        h.free = free;
        h.read_only = read_only;
        if h.refused_at.is_some_and(|at| room > at) {
            h.refused_at = None;
        }
    }

    /// A put was refused with `room` bytes of room: the store is full.
    pub fn refused(&self, room: u64) {
        let mut h = self.lock();
        h.room = h.room.min(room);
        h.refused_at = Some(room);
    }

    /// A write was stored: the store is not full, and a non-sticky failure
    /// is over.
    pub fn stored(&self) {
        let mut h = self.lock();
        h.refused_at = None;
        if !h.sticky {
            h.failing = false;
        }
    }

    /// The store fails with `error`; `sticky` keeps it failing until the
    /// process restarts (a panic), else until [`Health::stored`] or
    /// [`Health::recovered`].
    pub fn fail(&self, error: impl Into<String>, sticky: bool) {
        let mut h = self.lock();
        h.failing = true;
        h.sticky |= sticky;
        h.error = Some((error.into(), super::keys::unix_seconds()));
    }

    /// Notes an error the store keeps working through (an out-of-space
    /// write), without failing it.
    pub fn note(&self, error: impl Into<String>) {
        self.lock().error = Some((error.into(), super::keys::unix_seconds()));
    }

    /// The store recovered from a non-sticky failure (its index reopened).
    pub fn recovered(&self) {
        let mut h = self.lock();
        if !h.sticky {
            h.failing = false;
        }
    }

    /// The current health.
    pub fn report(&self) -> StoreHealth {
        let h = self.lock();
        let state = if h.failing {
            StoreState::Failing
        } else if h.read_only {
            StoreState::ReadOnly
        } else if h.room == 0 || h.refused_at.is_some() {
            StoreState::Full
        } else {
            StoreState::Ok
        };
        StoreHealth {
            state,
            error: h.error.as_ref().map(|(e, _)| e.clone()),
            error_at_s: h.error.as_ref().map_or(0, |(_, t)| *t),
            free_bytes: h.free,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_is_the_larger_setting() {
        let w = Watermark {
            min_free_bytes: 10,
            min_free_percent: 1,
        };
        assert_eq!(w.min_free(100), 10);
        assert_eq!(w.min_free(10_000), 100);
        let space = Space {
            free: 150,
            total: 10_000,
            read_only: false,
        };
        assert_eq!(space.room(&w), 50);
        let space = Space { free: 50, ..space };
        assert_eq!(space.room(&w), 0);
        assert_eq!(
            Watermark {
                min_free_bytes: 0,
                min_free_percent: 50
            }
            .min_free(u64::MAX),
            u64::MAX / 2
        );
    }

    #[test]
    fn full_lasts_until_room_grows_or_a_put_is_stored() {
        let h = Health::default();
        h.observe(1000, 2000, false);
        assert_eq!(h.report().state, StoreState::Ok);
        // A put larger than the room is refused: full, though room is left.
        h.refused(1000);
        assert_eq!(h.report().state, StoreState::Full);
        h.observe(1000, 2000, false);
        assert_eq!(h.report().state, StoreState::Full);
        h.observe(1001, 2001, false);
        assert_eq!(h.report().state, StoreState::Ok);
        h.refused(5);
        h.stored();
        assert_eq!(h.report().state, StoreState::Ok);
        h.observe(0, 100, false);
        assert_eq!(h.report().state, StoreState::Full);
        h.observe(0, 100, true);
        assert_eq!(h.report().state, StoreState::ReadOnly);
    }

    #[test]
    fn failures_clear_unless_sticky_and_the_error_stays() {
        let h = Health::default();
        h.fail("index: disk I/O error", false);
        let r = h.report();
        assert_eq!(r.state, StoreState::Failing);
        assert_eq!(r.error.as_deref(), Some("index: disk I/O error"));
        assert!(r.error_at_s > 0);
        h.recovered();
        let r = h.report();
        assert_eq!(r.state, StoreState::Ok);
        assert_eq!(r.error.as_deref(), Some("index: disk I/O error"));
        h.fail("a store task panicked", true);
        h.stored();
        h.recovered();
        assert_eq!(h.report().state, StoreState::Failing);
    }

    #[test]
    fn no_space_is_told_by_the_error_code_not_the_message() {
        let errno = |e: rustix::io::Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
        assert!(is_no_space(&errno(rustix::io::Errno::NOSPC)));
        assert!(is_no_space(&errno(rustix::io::Errno::DQUOT)));
        assert!(is_no_space(&std::io::Error::from(
            std::io::ErrorKind::StorageFull
        )));
        assert!(!is_no_space(&errno(rustix::io::Errno::IO)));
        assert!(!is_no_space(&errno(rustix::io::Errno::ROFS)));
        // A message that merely reads like it is not the condition.
        assert!(!is_no_space(&std::io::Error::other(
            "No space left on device (os error 28)"
        )));
    }
}
