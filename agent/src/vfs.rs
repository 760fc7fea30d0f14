//! The repository as one tree of directories, served by the FUSE mount
//! and by the web UI's `/api/vfs` (as rustic_core's `Vfs` serves both FUSE
//! and WebDAV):
//!
//! ```text
//! /hosts/<host>/<time>/...   each host's snapshots
//! /latest -> snapshots/<time> the newest snapshot
//! /snapshots/<time>/...       every snapshot, named by its UTC time to the
//!                             second, with `-<short id>` only where two
//!                             share a second
//! ```
//!
//! Below a snapshot's directory lie its trees; the callers read those
//! themselves (the mount by inode and a tree cache, the UI by path).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringvault_common::snapshot::Snapshot;
use ringvault_common::{ChunkId, SnapshotId};

/// The top-level directories' contents, from one read of the snapshot list.
#[derive(Default)]
pub struct Listing {
    /// `snapshots/`: name to snapshot.
    pub snapshots: BTreeMap<String, Arc<SnapInfo>>,
    /// `hosts/`: host to (name to snapshot).
    pub hosts: BTreeMap<String, BTreeMap<String, Arc<SnapInfo>>>,
    /// The newest snapshot's name.
    pub latest: Option<String>,
    /// The newest snapshot's time, ns: the top-level directories' mtime.
    pub newest_ns: i64,
}

/// A snapshot as the view shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct SnapInfo {
    /// Its id.
    pub id: SnapshotId,
    /// When it was taken, ns since the Unix epoch.
    pub time_ns: i64,
    /// Its root tree.
    pub root: ChunkId,
}

/// A directory or link of the view's top levels, or a snapshot's
/// directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// `/`.
    Root,
    /// `/snapshots`.
    Snapshots,
    /// `/hosts`.
    Hosts,
    /// `/hosts/<host>`.
    Host(String),
    /// `/latest`, a link to the newest snapshot's directory
    /// ([`latest_target`]).
    Latest,
    /// A snapshot's directory: its root tree.
    Snapshot(Arc<SnapInfo>),
}

/// A path that names nothing in the view.
#[derive(Debug, thiserror::Error)]
#[error("no {path:?} here")]
pub struct NotInView {
    /// The path asked for.
    pub path: String,
}

impl Listing {
    /// The view of `snapshots` (in any order).
    pub fn new(snapshots: &[(SnapshotId, Snapshot)]) -> Self {
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

impl Listing {
    /// The entry `name` of directory `dir`; `None` when there is none, or
    /// `dir` is no directory of the top levels (a snapshot's directory
    /// holds its tree, which the caller reads).
    pub fn child(&self, dir: &Place, name: &str) -> Option<Place> {
        let snapshot = |info: &Arc<SnapInfo>| Place::Snapshot(info.clone());
        match dir {
            Place::Root => match name {
                "snapshots" => Some(Place::Snapshots),
                "hosts" => Some(Place::Hosts),
                "latest" if self.latest.is_some() => Some(Place::Latest),
                _ => None,
            },
            Place::Snapshots => self.snapshots.get(name).map(snapshot),
            Place::Hosts => self
                .hosts
                .contains_key(name)
                .then(|| Place::Host(name.to_owned())),
            Place::Host(host) => self.hosts.get(host)?.get(name).map(snapshot),
            Place::Latest | Place::Snapshot(_) => None,
        }
    }

    /// The entries of directory `dir` in the order the view lists them
    /// (the root's `hosts`, `latest`, `snapshots`; the rest by name);
    /// empty for a link or a snapshot's directory.
    pub fn children(&self, dir: &Place) -> Vec<(String, Place)> {
        let snapshots = |snaps: &BTreeMap<String, Arc<SnapInfo>>| {
            snaps
                .iter()
                .map(|(name, info)| (name.clone(), Place::Snapshot(info.clone())))
                .collect()
        };
        match dir {
            Place::Root => {
                let mut out = vec![("hosts".to_owned(), Place::Hosts)];
                if self.latest.is_some() {
                    out.push(("latest".to_owned(), Place::Latest));
                }
                out.push(("snapshots".to_owned(), Place::Snapshots));
                out
            }
            Place::Snapshots => snapshots(&self.snapshots),
            Place::Hosts => self
                .hosts
                .keys()
                .map(|host| (host.clone(), Place::Host(host.clone())))
                .collect(),
            Place::Host(host) => self.hosts.get(host).map(snapshots).unwrap_or_default(),
            Place::Latest | Place::Snapshot(_) => Vec::new(),
        }
    }

    /// The place a `/`-separated path reaches, following `latest`, and
    /// the components left below it inside a snapshot (empty and `.`
    /// components are skipped).
    ///
    /// # Errors
    /// [`NotInView`] when a component names nothing.
    pub fn resolve<'p>(&self, path: &'p str) -> Result<(Place, Vec<&'p str>), NotInView> {
        let mut parts = path.split('/').filter(|p| !p.is_empty() && *p != ".");
        let mut place = Place::Root;
        while !matches!(place, Place::Snapshot(_)) {
            let Some(name) = parts.next() else { break };
            place = match self.child(&place, name) {
                Some(Place::Latest) => self
                    .latest
                    .as_ref()
                    .and_then(|newest| self.child(&Place::Snapshots, newest)),
                other => other,
            }
            .ok_or_else(|| NotInView {
                path: path.to_owned(),
            })?;
        }
        Ok((place, parts.collect()))
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

/// Where `latest` points when the newest snapshot is named `name`.
pub fn latest_target(name: &str) -> String {
    format!("snapshots/{name}")
}

/// Nanoseconds since the Unix epoch (negative before it) as a time.
pub fn system_time(ns: i64) -> SystemTime {
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
    fn paths_resolve_through_every_top_directory_and_latest_to_a_snapshot() {
        let snaps = vec![
            (SnapshotId([9; 32]), snap(T, "web")),
            (SnapshotId([5; 32]), snap(T + 30 * SECOND, "db")),
        ];
        let l = Listing::new(&snaps);
        let newest = l.snapshots["2024-05-01T12:00:30Z"].clone();
        let oldest = l.snapshots["2024-05-01T12:00:00Z"].clone();
        assert_eq!(l.resolve("").unwrap(), (Place::Root, vec![]));
        assert_eq!(l.resolve("/hosts/").unwrap().0, Place::Hosts);
        assert_eq!(
            l.resolve("hosts/web/2024-05-01T12:00:00Z/etc/./hosts")
                .unwrap(),
            (Place::Snapshot(oldest), vec!["etc", "hosts"])
        );
        assert_eq!(
            l.resolve("latest/var").unwrap(),
            (Place::Snapshot(newest.clone()), vec!["var"])
        );
        assert_eq!(
            l.resolve("snapshots/2024-05-01T12:00:30Z").unwrap(),
            (Place::Snapshot(newest), vec![])
        );
        for missing in [
            "nothing",
            "hosts/mail",
            "hosts/web/2024-05-01T12:00:30Z",
            "snapshots/x",
        ] {
            assert!(l.resolve(missing).is_err(), "{missing}");
        }
        assert!(Listing::new(&[]).resolve("latest").is_err());
    }

    #[test]
    fn directories_list_in_the_views_order_and_a_snapshot_lists_nothing() {
        let snaps = vec![
            (SnapshotId([9; 32]), snap(T + SECOND, "web")),
            (SnapshotId([5; 32]), snap(T, "db")),
        ];
        let l = Listing::new(&snaps);
        let names = |dir: &Place| {
            l.children(dir)
                .into_iter()
                .map(|(name, _)| name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&Place::Root), ["hosts", "latest", "snapshots"]);
        assert_eq!(names(&Place::Hosts), ["db", "web"]);
        assert_eq!(
            names(&Place::Snapshots),
            ["2024-05-01T12:00:00Z", "2024-05-01T12:00:01Z"]
        );
        assert_eq!(names(&Place::Host("web".into())), ["2024-05-01T12:00:01Z"]);
        let (_, first) = &l.children(&Place::Snapshots)[0];
        assert!(l.children(first).is_empty());
        assert_eq!(names(&Place::Root).len(), l.children(&Place::Root).len());
        assert_eq!(
            Listing::new(&[])
                .children(&Place::Root)
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            ["hosts", "snapshots"]
        );
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
