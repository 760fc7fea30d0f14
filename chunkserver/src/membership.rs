//! The cluster map a server has committed, and its promise for the next.
//!
//! A map change is a two-phase vote, a single-decree Paxos reduced to what
//! an operator command needs (Lamport, "Paxos Made Simple", 2001): the
//! command asks every node of the current map to promise the new map's
//! digest at the new epoch ([`Membership::prepare`]), and commits only with
//! promises from a majority. A server promises at most one digest per
//! epoch and only on top of the epoch it has committed, so two different
//! maps can never both win one epoch. Servers that missed a commit learn
//! the map from any peer's answer (every response carries the sender's
//! epoch) and adopt it without a promise: a map a server has committed
//! was won by a majority.
//!
//! Both the committed map and the promise are kept in the data directory
//! (`cluster-map.toml`, `map-promise`), written to a temporary file, fsync'd
//! and renamed, so a restart neither forgets a promise nor goes back to an
//! older map than it served.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use ringvault_common::placement::ClusterMap;
use ringvault_net::files::{WriteError, write_atomic};

/// Errors keeping membership state.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The state file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A state file holds something unusable.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The commit does not match this server's promise.
    #[error("map epoch {epoch} was not promised to this map here ({reason})")]
    NotPromised {
        /// The map's epoch.
        epoch: u64,
        /// Why.
        reason: String,
    },
}

/// A promise: commit only the map with `digest` at `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Promise {
    epoch: u64,
    digest: [u8; 32],
}

/// A server's membership state files.
pub struct Membership {
    dir: Option<PathBuf>,
    promise: Mutex<Option<Promise>>,
}

const MAP_FILE: &str = "cluster-map.toml";
const PROMISE_FILE: &str = "map-promise";

impl Membership {
    /// Loads the state kept in `dir` (none kept when `dir` is `None`, as in
    /// tests): the membership and the map committed last, if any.
    ///
    /// # Errors
    /// [`MembershipError`] when a state file exists but cannot be read or
    /// parsed: the server must not start with a forgotten promise.
    pub fn load(dir: Option<&Path>) -> Result<(Self, Option<ClusterMap>), MembershipError> {
        let mut promise = None;
        let mut map = None;
        if let Some(dir) = dir {
            let path = dir.join(PROMISE_FILE);
            if let Some(text) = read_optional(&path)? {
                promise = Some(
                    parse_promise(&text).ok_or_else(|| MembershipError::Corrupt {
                        path: path.clone(),
                        reason: "expected `EPOCH DIGEST-HEX`".into(),
                    })?,
                );
            }
            let path = dir.join(MAP_FILE);
            if let Some(text) = read_optional(&path)? {
                map = Some(
                    ClusterMap::parse(&text).map_err(|e| MembershipError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?,
                );
            }
        }
        Ok((
            Self {
                dir: dir.map(Path::to_owned),
                promise: Mutex::new(promise),
            },
            map,
        ))
    }

    /// Votes on a proposal: grants it when `committed` (this server's map
    /// epoch) equals `base`, `epoch` is above it, and no other digest was
    /// promised at `epoch` or later. A granted promise is durable before
    /// this returns. Returns whether it was granted and the highest epoch
    /// this server has promised or committed.
    ///
    /// # Errors
    /// [`MembershipError::Io`] when the promise cannot be made durable (then
    /// it is not granted).
    pub fn prepare(
        &self,
        committed: u64,
        epoch: u64,
        digest: [u8; 32],
        base: u64,
    ) -> Result<(bool, u64), MembershipError> {
        let mut promise = self.promise.lock();
        let promised = promise.map_or(0, |p| p.epoch);
        let highest = committed.max(promised);
        let same = *promise == Some(Promise { epoch, digest });
        let grant = committed == base
            && epoch > committed
            && (same || promise.is_none_or(|p| p.epoch < epoch));
        if !grant {
            return Ok((false, highest));
        }
        if !same {
            if let Some(dir) = &self.dir {
                write_atomic(
                    &dir.join(PROMISE_FILE),
                    format!("{epoch} {}\n", hex::encode(digest)).as_bytes(),
                )?;
            }
            *promise = Some(Promise { epoch, digest });
        }
        Ok((true, highest.max(epoch)))
    }

    /// Checks that `map` is the one promised at its epoch (an operator's
    /// commit).
    ///
    /// # Errors
    /// [`MembershipError::NotPromised`].
    pub fn check_promised(&self, map: &ClusterMap) -> Result<(), MembershipError> {
        let promise = *self.promise.lock();
        match promise {
            Some(p) if p.epoch == map.epoch && p.digest == map.digest() => Ok(()),
            Some(p) if p.epoch == map.epoch => Err(MembershipError::NotPromised {
                epoch: map.epoch,
                reason: "another map was promised at this epoch".into(),
            }),
            _ => Err(MembershipError::NotPromised {
                epoch: map.epoch,
                reason: "no promise for this epoch; run the change again".into(),
            }),
        }
    }

    /// Makes `map` this server's committed map on disk.
    ///
    /// # Errors
    /// [`MembershipError::Io`].
    pub fn persist(&self, map: &ClusterMap) -> Result<(), MembershipError> {
        match &self.dir {
            None => Ok(()),
            Some(dir) => Ok(write_atomic(
                &dir.join(MAP_FILE),
                format!(
                    "# The cluster map this node committed last; it replaces the\n\
                     # config's map when its epoch is higher. Do not edit: change the\n\
                     # map with `ringvault cluster add-node|remove-node|set-weight`.\n{}",
                    map.to_toml()
                )
                .as_bytes(),
            )?),
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, MembershipError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MembershipError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse_promise(text: &str) -> Option<Promise> {
    let mut parts = text.split_whitespace();
    let epoch = parts.next()?.parse().ok()?;
    let hexd = parts.next()?;
    if hexd.len() != 64 || parts.next().is_some() {
        return None;
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hexd, &mut digest).ok()?;
    Some(Promise { epoch, digest })
}

impl From<WriteError> for MembershipError {
    fn from(e: WriteError) -> Self {
        MembershipError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringvault_common::NodeId;
    use ringvault_common::placement::NodeInfo;

    fn map(epoch: u64, nodes: u32) -> ClusterMap {
        ClusterMap {
            epoch,
            replicas: 1,
            write_quorum: 1,
            revoked: Vec::new(),
            nodes: (1..=nodes)
                .map(|i| NodeInfo {
                    id: NodeId(i),
                    address: format!("127.0.0.1:{}", 7000 + i),
                    weight: 1,
                    zone: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn one_digest_per_epoch_and_promises_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (m, none) = Membership::load(Some(dir.path())).unwrap();
        assert!(none.is_none());
        let (a, b) = (map(2, 3), map(2, 4));
        assert_eq!(m.prepare(1, 2, a.digest(), 1).unwrap(), (true, 2));
        // The same proposal again is fine; another at the same epoch is not.
        assert!(m.prepare(1, 2, a.digest(), 1).unwrap().0);
        assert_eq!(m.prepare(1, 2, b.digest(), 1).unwrap(), (false, 2));
        // A proposal made from a stale base is refused.
        assert!(!m.prepare(1, 3, b.digest(), 0).unwrap().0);
        drop(m);
        let (m, _) = Membership::load(Some(dir.path())).unwrap();
        assert!(!m.prepare(1, 2, b.digest(), 1).unwrap().0);
        assert!(m.check_promised(&a).is_ok());
        assert!(m.check_promised(&b).is_err());
        m.persist(&a).unwrap();
        let (_, back) = Membership::load(Some(dir.path())).unwrap();
        assert_eq!(back, Some(a));
    }

    #[test]
    fn a_later_epoch_replaces_an_abandoned_promise() {
        let (m, _) = Membership::load(None).unwrap();
        assert!(m.prepare(1, 2, map(2, 3).digest(), 1).unwrap().0);
        let c = map(3, 5);
        assert_eq!(m.prepare(1, 3, c.digest(), 1).unwrap(), (true, 3));
        assert!(m.check_promised(&c).is_ok());
        // Nothing at or below the committed epoch.
        assert!(!m.prepare(3, 3, c.digest(), 3).unwrap().0);
    }

    #[test]
    fn a_garbled_promise_file_stops_the_server() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PROMISE_FILE), "7 zz").unwrap();
        assert!(matches!(
            Membership::load(Some(dir.path())),
            Err(MembershipError::Corrupt { .. })
        ));
    }
}
