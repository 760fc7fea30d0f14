//! The requests, one type each.
//!
//! Each request is a struct; what it is answered with and how a server
//! treats it is its [`Rpc`](super::Rpc) implementation, and on the wire it
//! is one variant of [`Request`](super::Request) (both in `rpc.rs`). The six
//! requests a server forwards to its peers (`Has`, `PutBlobs`,
//! `PutSnapshot`, `PutKey`, `DeleteSnapshot`, `DeleteKey`) carry a
//! `local_only` flag rather than being separate types, because protocol 5
//! encodes them so; with it set they are [`Access::Internal`].

use serde::{Deserialize, Serialize};

use super::{GcFence, PartitionBitmap};
use crate::placement::ClusterMap;
use crate::{ChunkId, NodeId, RepoId, SnapshotId};

#[cfg(doc)]
use super::{
    Access, DIGEST_BUCKETS, ErrorCode, MAX_FENCE_NODES, MAX_GET_BLOBS, MAX_HAS_IDS, MAX_PUT_BLOBS,
    PARTITION_BITMAP_BYTES, PROTOCOL_VERSION, Request, Response,
};

/// First request on a connection: versions and the caller's map epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The caller's [`PROTOCOL_VERSION`].
    pub protocol: u16,
    /// The newest cluster map epoch the caller knows.
    pub epoch: u64,
}

/// Which of `ids` does the cluster hold with at least W copies? With
/// `local_only`, which does this server hold (server to server).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Has {
    /// Repository.
    pub repo: RepoId,
    /// Up to [`MAX_HAS_IDS`] ids.
    pub ids: Vec<ChunkId>,
    /// Answer from the local store only.
    pub local_only: bool,
}

/// Store blobs; the payload is their bytes, concatenated in order.
/// Without `local_only` the server coordinates: it stores its own copy,
/// forwards to the other replicas and answers once W hold each blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutBlobs {
    /// Repository.
    pub repo: RepoId,
    /// Up to [`MAX_PUT_BLOBS`] (id, length in bytes) pairs.
    pub blobs: Vec<(ChunkId, u32)>,
    /// Store locally only (a coordinator forwarding a replica).
    pub local_only: bool,
}

/// Fetch one blob from this server's store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetBlob {
    /// Repository.
    pub repo: RepoId,
    /// The blob.
    pub id: ChunkId,
}

/// Store a sealed snapshot record (payload). Without `local_only` the
/// server copies it to every node and answers once W have it.
///
/// Each server stores it only if its own entry in `fence` is still its
/// [`GcFence`] for `repo` (no prune round began or ended there since
/// the agent read it), and otherwise refuses with
/// [`ErrorCode::FenceMoved`]; W counts only the servers that stored it.
/// That is what lets a backup rely on chunks it did not upload: see
/// [`GcFence`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutSnapshot {
    /// Repository.
    pub repo: RepoId,
    /// Record id.
    pub id: SnapshotId,
    /// Store locally only.
    pub local_only: bool,
    /// Each server's fence as the agent read it before it checked the
    /// chunks the snapshot names; at most [`MAX_FENCE_NODES`] entries.
    pub fence: Vec<(NodeId, GcFence)>,
}

/// All snapshot records this server holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSnapshots {
    /// Repository.
    pub repo: RepoId,
}

/// One snapshot record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetSnapshot {
    /// Repository.
    pub repo: RepoId,
    /// Record id.
    pub id: SnapshotId,
}

/// Store one of the repository's wrapped keys (payload) under `id`,
/// copying it to every node unless `local_only`. Refused if a different
/// key is already stored under `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutKey {
    /// Repository.
    pub repo: RepoId,
    /// Key id (random; all zeros for a repository's first key before
    /// protocol 3).
    pub id: [u8; 32],
    /// Store locally only.
    pub local_only: bool,
}

/// Every wrapped key of the repository this server holds; answered by
/// [`Response::Records`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListKeys {
    /// Repository.
    pub repo: RepoId,
}

/// Anti-entropy summary (server to server): the set digest of the blobs
/// this server holds in each partition of `partitions`
/// ([`PARTITION_BITMAP_BYTES`] bytes). With `per_partition`, one digest
/// per set bit in ascending order; otherwise the digests are folded
/// (XOR) into [`DIGEST_BUCKETS`] buckets, so a pair of replicas in sync
/// costs one round trip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    /// Which partitions.
    pub partitions: PartitionBitmap,
    /// One digest per partition rather than per bucket.
    pub per_partition: bool,
}

/// The (repository, id) keys of the blobs this server holds in one
/// partition, in key order, after `after` (server to server).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPartition {
    /// The partition.
    pub partition: u16,
    /// Resume after this key (the last of the previous page).
    pub after: Option<(RepoId, ChunkId)>,
}

/// How many distinct live servers hold each of `ids` (any agent of the
/// repository; the server asks every live node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copies {
    /// Repository.
    pub repo: RepoId,
    /// Up to [`MAX_HAS_IDS`] ids.
    pub ids: Vec<ChunkId>,
}

/// This server's state: map epoch, what it stores, backlogs, peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetNodeStatus;

/// First phase of a map change (operator or node certificates): promise
/// to commit only the map with this digest at `epoch`. Granted when the
/// server's committed epoch is `base` and it has promised no other map
/// at `epoch` or later; a proposer needs a majority of the base map's
/// nodes. Each server promises at most one map per epoch, so two
/// different maps can never both win one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareMap {
    /// The proposed epoch.
    pub epoch: u64,
    /// BLAKE3 of the proposed map's TOML ([`ClusterMap::digest`]).
    pub digest: [u8; 32],
    /// The epoch of the map the proposal was made from.
    pub base: u64,
}

/// Second phase: commit `map`, which must match this server's promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMap {
    /// The new map; its epoch must exceed the server's.
    pub map: ClusterMap,
}

/// The keys of every record (snapshot records, repository keys) this
/// server holds, unless their digest equals `digest` (server to server:
/// records are copied to servers that missed them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordKeys {
    /// The caller's digest of its own record keys.
    pub digest: [u8; 32],
}

/// Delete a snapshot record, leaving a tombstone so no server copies
/// it back. Without `local_only` the server deletes it on every node
/// and answers once W hold the tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteSnapshot {
    /// Repository.
    pub repo: RepoId,
    /// Record id.
    pub id: SnapshotId,
    /// On this server only.
    pub local_only: bool,
}

/// One record of any kind (server to server: record sync).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRecord {
    /// Repository.
    pub repo: RepoId,
    /// Record kind (1 snapshot, 2 key, 3 tombstone).
    pub kind: u8,
    /// Its 32-byte key.
    pub key: [u8; 32],
}

/// Prune, step 1: start mark-and-sweep round `round` of `repo` on this
/// server. From now until the sweep, every chunk of `repo` written here
/// or answered present by a has-query is protected from this round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeginPrune {
    /// Repository.
    pub repo: RepoId,
    /// The round, chosen by the pruning agent (random).
    pub round: u64,
}

/// Prune, step 2: chunks reachable from the snapshots listed after step
/// 1 (the ones of partitions this server owns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneMark {
    /// Repository.
    pub repo: RepoId,
    /// The round.
    pub round: u64,
    /// Up to [`MAX_HAS_IDS`] live ids.
    pub ids: Vec<ChunkId>,
}

/// Prune, step 3: in every partition this server owns whose owners are
/// all up and not moving, note unmarked, unprotected chunks as
/// unreferenced, move those unreferenced for `grace_s` to the trash, and
/// drop trash older than `trash_keep_s`. Ends the round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneSweep {
    /// Repository.
    pub repo: RepoId,
    /// The round.
    pub round: u64,
    /// Grace period, seconds.
    pub grace_s: u64,
    /// How long the trash keeps blobs, seconds.
    pub trash_keep_s: u64,
}

/// Move every trashed blob of `repo` back (undo a prune within the
/// trash period).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTrash {
    /// Repository.
    pub repo: RepoId,
}

/// The stored (sealed) size of each of `ids` here, 0 when not held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    /// Repository.
    pub repo: RepoId,
    /// Up to [`MAX_HAS_IDS`] ids.
    pub ids: Vec<ChunkId>,
}

/// Delete one wrapped key, leaving a tombstone as
/// [`Request::DeleteSnapshot`] does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteKey {
    /// Repository.
    pub repo: RepoId,
    /// Key id.
    pub id: [u8; 32],
    /// On this server only.
    pub local_only: bool,
}

/// This server's [`GcFence`] for `repo`; answered by
/// [`Response::GcFence`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetGcFence {
    /// Repository.
    pub repo: RepoId,
}

/// The snapshot records this server holds that no tombstone marks
/// deleted, and the ids of the snapshot tombstones it holds, answered by
/// [`Response::SnapshotsAndTombstones`]: an agent shows no id that any
/// server has a tombstone for ([`crate::listing`]). A server that has
/// just started answers once it has pulled its peers' tombstones, or
/// after a few seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSnapshotsAndTombstones {
    /// Repository.
    pub repo: RepoId,
}

/// Fetch several blobs from this server's store in one request (at most
/// [`MAX_GET_BLOBS`]), answered by [`Response::Blobs`]: one index
/// transaction and one reply for many small chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetBlobs {
    /// Repository.
    pub repo: RepoId,
    /// The blobs, in the order the answer follows.
    pub ids: Vec<ChunkId>,
}
