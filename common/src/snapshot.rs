//! Snapshot records: what a backup made, naming its root tree.
//!
//! Encoding: `"RVS"` + version byte `1` + postcard of [`Snapshot`]. A record
//! is sealed like a blob (see [`crate::seal`]) with its [`SnapshotId`] as
//! associated data; the id is the keyed hash of the encoding, so a server
//! cannot hand back one snapshot under another's id.

use serde::{Deserialize, Serialize};

use crate::keys::RepoKeys;
use crate::seal::{self, SealError};
use crate::{ChunkId, SnapshotId};

/// Counters a backup reports, kept in its snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Regular files in the snapshot.
    pub files: u64,
    /// Directories in the snapshot.
    pub dirs: u64,
    /// Logical size of all files, bytes.
    pub bytes: u64,
    /// Bytes of file content read from disk (unchanged files are not read,
    /// nor the holes of sparse files).
    pub bytes_read: u64,
    /// Plaintext bytes of chunks the cluster lacked.
    pub new_bytes: u64,
    /// Sealed bytes the agent sent.
    pub sent_bytes: u64,
    /// Wall time of the backup, ns.
    pub duration_ns: u64,
    /// Files skipped because they could not be read.
    pub errors: u64,
}

/// An immutable snapshot record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the backup started, ns since the Unix epoch.
    pub time_ns: i64,
    /// Host name of the agent.
    pub host: String,
    /// The agent's id (from its certificate).
    pub agent: String,
    /// Source paths as given, raw bytes.
    pub paths: Vec<serde_bytes::ByteBuf>,
    /// Root tree: one entry per source path, named by its last component.
    pub root: ChunkId,
    /// The snapshot this one was made against, if any.
    pub parent: Option<SnapshotId>,
    /// User tags.
    pub tags: Vec<String>,
    /// Counters.
    pub summary: Summary,
}

/// Errors from opening a snapshot record.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The record failed to open (altered, wrong key, truncated).
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The record decrypted but is not a snapshot this build reads.
    #[error("snapshot {0}: not a ringvault snapshot record ({1})")]
    Format(SnapshotId, String),
    /// The record is a valid snapshot, but not the one asked for.
    #[error("snapshot record does not match its id {0}")]
    Mismatch(SnapshotId),
}

const MAGIC: &[u8; 4] = b"RVS\x01";

impl Snapshot {
    /// Encodes, computes the id and seals. `nonce`: 24 fresh random bytes.
    pub fn seal(&self, keys: &RepoKeys, nonce: [u8; 24]) -> (SnapshotId, Vec<u8>) {
        let mut plain = MAGIC.to_vec();
        // Invariant: postcard serialization of plain data into a Vec cannot fail.
        plain.extend(postcard::to_stdvec(self).expect("postcard to vec"));
        let id = keys.snapshot_id(&plain);
        // Invariant: a snapshot record is far below the blob size limit.
        let blob = seal::seal(keys, &ChunkId(id.0), &plain, nonce, true).expect("record fits");
        (id, blob)
    }

    /// Opens the sealed record stored under `id`.
    ///
    /// # Errors
    /// [`SnapshotError`] when the record is damaged, foreign, or not `id`.
    pub fn open(keys: &RepoKeys, id: &SnapshotId, blob: &[u8]) -> Result<Self, SnapshotError> {
        let plain = seal::open_unchecked(keys, &ChunkId(id.0), blob)?;
        if keys.snapshot_id(&plain) != *id {
            return Err(SnapshotError::Mismatch(*id));
        }
        let body = plain
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| SnapshotError::Format(*id, "bad magic".into()))?;
        postcard::from_bytes(body).map_err(|e| SnapshotError::Format(*id, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use proptest::prelude::*;

    fn sample() -> Snapshot {
        Snapshot {
            time_ns: 1_700_000_000_000_000_000,
            host: "h".into(),
            agent: "a".into(),
            paths: vec![serde_bytes::ByteBuf::from(b"/home/x".to_vec())],
            root: ChunkId([1; 32]),
            parent: None,
            tags: vec![],
            summary: Summary::default(),
        }
    }

    #[test]
    fn seal_open() {
        let k = RepoKeys::derive(&MasterKey::from_bytes([1; 32]));
        let (id, blob) = sample().seal(&k, [0; 24]);
        assert_eq!(Snapshot::open(&k, &id, &blob).unwrap(), sample());
        let mut other = sample();
        other.host = "evil".into();
        let (_, other_blob) = other.seal(&k, [0; 24]);
        assert!(Snapshot::open(&k, &id, &other_blob).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let k = RepoKeys::derive(&MasterKey::from_bytes([1; 32]));
            prop_assert!(Snapshot::open(&k, &SnapshotId([0; 32]), &bytes).is_err());
        }
    }
}
