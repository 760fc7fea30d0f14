//! The mount's top directories: snapshots named by their UTC time (with
//! the id only where two share a second), grouped by host, and `latest`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringvault_common::snapshot::Snapshot;
use ringvault_common::{ChunkId, SnapshotId};

/// The top-level directories' contents, from one read of the snapshot list.
#[derive(Default)]
pub(super) struct Listing {
    /// `snapshots/`: name to snapshot.
    pub(super) snapshots: BTreeMap<String, Arc<SnapInfo>>,
    /// `hosts/`: host to (name to snapshot).
    pub(super) hosts: BTreeMap<String, BTreeMap<String, Arc<SnapInfo>>>,
    /// The newest snapshot's name.
    pub(super) latest: Option<String>,
    /// The newest snapshot's time, ns: the top-level directories' mtime.
    pub(super) newest_ns: i64,
}

pub(super) struct SnapInfo {
    pub(super) id: SnapshotId,
    pub(super) time_ns: i64,
    pub(super) root: ChunkId,
}

impl Listing {
    pub(super) fn new(snapshots: &[(SnapshotId, Snapshot)]) -> Self {
        let names = snapshot_names(snapshots);
        let mut listing = Listing::default();
        let mut newest: Option<(i64, SnapshotId, &str)> = None;
        for ((id, snap), name) in snapshots.iter().zip(&names) {
            let info = Arc::new(SnapInfo {
                id: *id,
                time_ns: snap.time_ns,
                root: snap.root,
            });
            listing.snapshots.insert(name.clone(), info.clone());
            listing
                .hosts
                .entry(safe_name(&snap.host))
                .or_default()
                .insert(name.clone(), info);
            if newest.is_none_or(|(t, i, _)| (snap.time_ns, *id) > (t, i)) {
                newest = Some((snap.time_ns, *id, name));
            }
        }
        listing.latest = newest.map(|(.., name)| name.to_owned());
        listing.newest_ns = newest.map_or(0, |(t, ..)| t);
        listing
    }
}

/// Each snapshot's directory name: its UTC time to the second, with
/// `-<short id>` when several share that second.
fn snapshot_names(snapshots: &[(SnapshotId, Snapshot)]) -> Vec<String> {
    let times: Vec<String> = snapshots
        .iter()
        .map(|(_, s)| format_time(s.time_ns))
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &times {
        *counts.entry(t).or_default() += 1;
    }
    times
        .iter()
        .zip(snapshots)
        .map(|(t, (id, _))| {
            if counts.get(t.as_str()).copied().unwrap_or(0) > 1 {
                format!("{t}-{}", id.short())
            } else {
                t.clone()
            }
        })
        .collect()
}

fn format_time(ns: i64) -> String {
    humantime::format_rfc3339_seconds(system_time(ns.max(0))).to_string()
}

/// A host name usable as a directory name.
fn safe_name(host: &str) -> String {
    let name: String = host
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    match name.as_str() {
        "" | "." | ".." => format!("_{name}"),
        _ => name,
    }
}

pub(super) fn latest_target(name: &str) -> String {
    format!("snapshots/{name}")
}

/// Nanoseconds since the Unix epoch (negative before it) as a time.
pub(super) fn system_time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
    .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringvault_common::snapshot::Summary;
    fn snap(time_ns: i64, host: &str) -> Snapshot {
        Snapshot {
            time_ns,
            host: host.into(),
            agent: "agent".into(),
            paths: Vec::new(),
            root: ChunkId([0; 32]),
            parent: None,
            tags: Vec::new(),
            summary: Summary::default(),
        }
    }

    const SECOND: i64 = 1_000_000_000;
    // 2024-05-01T12:00:00Z
    const T: i64 = 1_714_564_800 * SECOND;

    #[test]
    fn names_are_utc_seconds_with_ids_only_on_collision() {
        let snaps = vec![
            (SnapshotId([1; 32]), snap(T, "a")),
            (SnapshotId([2; 32]), snap(T + SECOND + 5, "a")),
            (SnapshotId([3; 32]), snap(T + SECOND + 900_000_000, "b")),
        ];
        assert_eq!(
            snapshot_names(&snaps),
            [
                "2024-05-01T12:00:00Z",
                "2024-05-01T12:00:01Z-02020202",
                "2024-05-01T12:00:01Z-03030303",
            ]
        );
    }

    #[test]
    fn listing_groups_by_host_and_points_latest_at_the_newest() {
        let snaps = vec![
            (SnapshotId([9; 32]), snap(T, "web/1")),
            (SnapshotId([1; 32]), snap(T + 60 * SECOND, "")),
            (SnapshotId([5; 32]), snap(T + 30 * SECOND, "web/1")),
        ];
        let l = Listing::new(&snaps);
        assert_eq!(l.snapshots.len(), 3);
        assert_eq!(l.hosts.keys().collect::<Vec<_>>(), ["_", "web_1"]);
        assert_eq!(l.hosts["web_1"].len(), 2);
        assert_eq!(l.latest.as_deref(), Some("2024-05-01T12:01:00Z"));
        assert_eq!(l.newest_ns, T + 60 * SECOND);
        assert!(Listing::new(&[]).latest.is_none());
    }

    #[test]
    fn host_names_become_safe_directory_names() {
        assert_eq!(safe_name("db-1.example"), "db-1.example");
        assert_eq!(safe_name("a/b\0c"), "a_b_c");
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name(""), "_");
    }

    #[test]
    fn times_before_the_epoch_do_not_panic() {
        assert_eq!(system_time(-SECOND), UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(format_time(i64::MIN), "1970-01-01T00:00:00Z");
        let _ = system_time(i64::MAX);
    }
}
