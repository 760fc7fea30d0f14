//! The index's tables and the encoding of their keys and values: blob keys
//! (`id | repo_len | repo`), record keys, and [`Location`], the value that
//! says where a blob's bytes are; with the partition ranges of blob keys and
//! the small helpers every part of the store shares.

use std::ops::Bound;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::TableDefinition;
use ringvault_common::{ChunkId, RepoId};

use super::{IndexError, RecordKey, RecordKind, StoreError};

/// The blob index, keyed `id | repo_len | repo`.
pub(super) const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs-v2");
/// Quarantined blobs: blob key to location and unix seconds.
pub(super) const QUARANTINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quarantine");
/// Trashed blobs: blob key to location and unix seconds.
pub(super) const TRASH: TableDefinition<&[u8], &[u8]> = TableDefinition::new("trash");
/// Prune's marks: blob key to unix seconds when first found unreferenced.
pub(super) const UNREFERENCED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("unreferenced");
/// The tables whose entries hold a location (see [`timed_location`]).
pub(super) const LOCATED: [TableDefinition<&[u8], &[u8]>; 3] = [BLOBS, QUARANTINE, TRASH];
pub(super) const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// Index value: segment u32, offset u64, len u32, checksum 32 bytes.
pub(super) const LOCATION_LEN: usize = 4 + 8 + 4 + 32;
/// Number of partitions: a ChunkId's first two bytes.
pub(super) const PARTITIONS: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Location {
    pub(super) segment: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) checksum: [u8; 32],
}

impl Location {
    pub(super) fn encode(&self) -> [u8; LOCATION_LEN] {
        let mut out = [0u8; LOCATION_LEN];
        out[..4].copy_from_slice(&self.segment.to_le_bytes());
        out[4..12].copy_from_slice(&self.offset.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..].copy_from_slice(&self.checksum);
        out
    }

    pub(super) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LOCATION_LEN {
            return None;
        }
        Some(Self {
            segment: u32::from_le_bytes(b[..4].try_into().ok()?),
            offset: u64::from_le_bytes(b[4..12].try_into().ok()?),
            len: u32::from_le_bytes(b[12..16].try_into().ok()?),
            checksum: b[16..].try_into().ok()?,
        })
    }
}

/// A quarantine or trash value: the location, then unix seconds.
pub(super) fn timed_value(loc: &Location, at_s: u64) -> [u8; LOCATION_LEN + 8] {
    let mut out = [0u8; LOCATION_LEN + 8];
    out[..LOCATION_LEN].copy_from_slice(&loc.encode());
    out[LOCATION_LEN..].copy_from_slice(&at_s.to_le_bytes());
    out
}

/// Parses a quarantine or trash value; `None` if malformed.
pub(super) fn decode_timed(b: &[u8]) -> Option<(Location, u64)> {
    let loc = Location::decode(b.get(..LOCATION_LEN)?)?;
    let at = u64::from_le_bytes(b.get(LOCATION_LEN..)?.try_into().ok()?);
    Some((loc, at))
}

/// The location at the start of an entry of any [`LOCATED`] table; `None`
/// if malformed.
pub(super) fn timed_location(b: &[u8]) -> Option<Location> {
    Location::decode(b.get(..LOCATION_LEN)?)
}

/// Parses an unreferenced mark; `None` if malformed.
pub(super) fn decode_seconds(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Whether a blob key belongs to `repo` (its bytes after the id are
/// `repo_len | repo`).
pub(super) fn key_in_repo(key: &[u8], repo: &RepoId) -> bool {
    let name = repo.as_str().as_bytes();
    key.get(32..).is_some_and(|rest| {
        rest.split_first()
            .is_some_and(|(&len, r)| usize::from(len) == name.len() && r == name)
    })
}

/// A blob's index key: `id | repo_len | repo`.
pub(super) fn blob_key(repo: &RepoId, id: &ChunkId) -> Vec<u8> {
    let repo = repo.as_str().as_bytes();
    let mut k = Vec::with_capacity(32 + 1 + repo.len());
    k.extend_from_slice(&id.0);
    // RepoId::MAX_LEN is 64, so the length fits a byte.
    k.push(repo.len() as u8);
    k.extend_from_slice(repo);
    k
}

/// Parses a blob index key; `None` if malformed.
pub(super) fn decode_key(k: &[u8]) -> Option<(RepoId, ChunkId)> {
    let id: [u8; 32] = k.get(..32)?.try_into().ok()?;
    let len = usize::from(*k.get(32)?);
    let repo = k.get(33..)?;
    if repo.len() != len {
        return None;
    }
    let repo = RepoId::new(std::str::from_utf8(repo).ok()?).ok()?;
    Some((repo, ChunkId(id)))
}

/// The partition of a blob key (its first two bytes, big endian).
pub(super) fn key_partition(k: &[u8]) -> u16 {
    match k {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    }
}

/// Splits a records-table key (`kind | repo_len | repo | key`).
pub(super) fn parse_record_key(raw: &[u8]) -> Option<RecordKey> {
    let (&kind, rest) = raw.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let repo = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?;
    let key: [u8; 32] = rest.get(usize::from(len)..)?.try_into().ok()?;
    Some((kind, RepoId::new(repo).ok()?, key))
}

pub(super) fn record_prefix_raw(kind: u8, repo: &RepoId) -> Vec<u8> {
    let mut k = vec![kind, repo.as_str().len() as u8];
    k.extend_from_slice(repo.as_str().as_bytes());
    k
}

pub(super) fn record_prefix(kind: RecordKind, repo: &RepoId) -> Vec<u8> {
    record_prefix_raw(kind as u8, repo)
}

/// A redb error as a [`StoreError::Index`].
pub(super) fn index_err(e: impl Into<redb::Error>) -> StoreError {
    IndexError::from(e.into()).into()
}

/// The error for an index entry that does not parse.
pub(super) fn malformed() -> StoreError {
    IndexError::Malformed.into()
}

/// Seconds since the Unix epoch (0 if the clock is before it): the one
/// wall clock of the server (trash times, unreferenced notes, record
/// tombstones, the prune sweep).
pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A range of blob keys, as (lower, upper) bounds.
type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The key range of `partition` after `after`; `None` when it is empty
/// (`after` at or past the partition's end).
pub(super) fn partition_range(
    partition: u16,
    after: Option<&(RepoId, ChunkId)>,
) -> Option<KeyRange> {
    let start = partition.to_be_bytes().to_vec();
    let end = partition.checked_add(1).map(|p| p.to_be_bytes().to_vec());
    let lower = match after.map(|(repo, id)| blob_key(repo, id)) {
        Some(a) if a >= start => {
            if end.as_ref().is_some_and(|end| a >= *end) {
                return None;
            }
            Bound::Excluded(a)
        }
        _ => Bound::Included(start),
    };
    Some((lower, end.map_or(Bound::Unbounded, Bound::Excluded)))
}
