//! The requests, one type each, and [`Request`], their wire form.
//!
//! Each request is a struct; what it is answered with and how a server
//! treats it is its [`Rpc`] implementation (`rpc.rs`). On the wire a
//! request is one variant of [`Request`], in declaration order: postcard
//! encodes the variant's index, then the struct's fields in order, exactly
//! as for the struct variants of protocol 5 (the test
//! `every_request_encodes_as_in_protocol_5` holds the bytes). The six
//! requests a server forwards to its peers (`Has`, `PutBlobs`,
//! `PutSnapshot`, `PutKey`, `DeleteSnapshot`, `DeleteKey`) carry a
//! `local_only` flag rather than being separate types, because protocol 5
//! encodes them so; with it set they are [`Access::Internal`].

use serde::{Deserialize, Serialize};

use super::rpc::Rpc;
use super::{Access, FrameError, GcFence, PartitionBitmap};
use crate::placement::ClusterMap;
use crate::{ChunkId, NodeId, RepoId, SnapshotId};

#[cfg(doc)]
use super::{
    DIGEST_BUCKETS, ErrorCode, MAX_FENCE_NODES, MAX_GET_BLOBS, MAX_HAS_IDS, MAX_PUT_BLOBS,
    PARTITION_BITMAP_BYTES, PROTOCOL_VERSION, Response,
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

/// Declares [`Request`], one newtype variant per request type in wire
/// order, and its dispatch to each type's [`Rpc`] items.
macro_rules! requests {
    ($($variant:ident($ty:ident),)*) => {
        /// A request on the wire: one variant per request type. Variant
        /// order is the format: append only.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Request {
            $(
                #[doc = concat!("A [`", stringify!($ty), "`].")]
                $variant($ty),
            )*
        }

        $(
            impl From<$ty> for Request {
                fn from(request: $ty) -> Self {
                    Request::$variant(request)
                }
            }
        )*

        impl Request {
            /// A short name for logs and metrics ([`Rpc::KIND`]).
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Request::$variant(_) => <$ty as Rpc>::KIND,)*
                }
            }

            /// What this request does, for authorization ([`Rpc::access`]).
            pub fn access(&self) -> Access {
                match self {
                    $(Request::$variant(r) => r.access(),)*
                }
            }

            /// The repository a request acts on ([`Rpc::repo`]).
            pub fn repo(&self) -> Option<&RepoId> {
                match self {
                    $(Request::$variant(r) => r.repo(),)*
                }
            }

            /// The most payload bytes this request may carry
            /// ([`Rpc::payload_limit`]).
            pub fn payload_limit(&self) -> u64 {
                match self {
                    $(Request::$variant(r) => r.payload_limit(),)*
                }
            }

            /// Checks a decoded request's limits against its payload
            /// ([`Rpc::validate`]).
            ///
            /// # Errors
            /// [`FrameError::Invalid`] naming the broken limit.
            pub fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
                match self {
                    $(Request::$variant(r) => r.validate(payload),)*
                }
            }
        }
    };
}

requests! {
    Hello(Hello),
    Has(Has),
    PutBlobs(PutBlobs),
    GetBlob(GetBlob),
    PutSnapshot(PutSnapshot),
    ListSnapshots(ListSnapshots),
    GetSnapshot(GetSnapshot),
    PutKey(PutKey),
    ListKeys(ListKeys),
    Digests(Digests),
    ListPartition(ListPartition),
    Copies(Copies),
    NodeStatus(GetNodeStatus),
    PrepareMap(PrepareMap),
    CommitMap(CommitMap),
    RecordKeys(RecordKeys),
    DeleteSnapshot(DeleteSnapshot),
    GetRecord(GetRecord),
    BeginPrune(BeginPrune),
    PruneMark(PruneMark),
    PruneSweep(PruneSweep),
    RestoreTrash(RestoreTrash),
    Sizes(Sizes),
    DeleteKey(DeleteKey),
    GcFence(GetGcFence),
    ListSnapshotsAndTombstones(ListSnapshotsAndTombstones),
    GetBlobs(GetBlobs),
}

impl Request {
    /// Whether this is a server-to-server request (only node certificates
    /// may send it).
    pub fn is_internal(&self) -> bool {
        self.access() == Access::Internal
    }

    /// Whether this changes the cluster map (operator or node certificates
    /// only).
    pub fn is_map_change(&self) -> bool {
        self.access() == Access::Map
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode_frame, encode_header};
    use super::*;

    /// One of every request, with every field set to a value that shows in
    /// its encoding.
    fn every_request() -> Vec<Request> {
        let repo = RepoId::new("r").unwrap();
        let id = ChunkId([7; 32]);
        let fence = GcFence {
            boot: 9,
            counter: 2,
            active: true,
        };
        vec![
            Request::Hello(Hello {
                protocol: 5,
                epoch: 300,
            }),
            Request::Has(Has {
                repo: repo.clone(),
                ids: vec![id],
                local_only: true,
            }),
            Request::PutBlobs(PutBlobs {
                repo: repo.clone(),
                blobs: vec![(id, 3)],
                local_only: true,
            }),
            Request::GetBlob(GetBlob {
                repo: repo.clone(),
                id,
            }),
            Request::PutSnapshot(PutSnapshot {
                repo: repo.clone(),
                id: SnapshotId([5; 32]),
                local_only: true,
                fence: vec![(NodeId(4), fence)],
            }),
            Request::ListSnapshots(ListSnapshots { repo: repo.clone() }),
            Request::GetSnapshot(GetSnapshot {
                repo: repo.clone(),
                id: SnapshotId([5; 32]),
            }),
            Request::PutKey(PutKey {
                repo: repo.clone(),
                id: [6; 32],
                local_only: true,
            }),
            Request::ListKeys(ListKeys { repo: repo.clone() }),
            Request::Digests(Digests {
                partitions: vec![1, 2],
                per_partition: true,
            }),
            Request::ListPartition(ListPartition {
                partition: 513,
                after: Some((repo.clone(), id)),
            }),
            Request::Copies(Copies {
                repo: repo.clone(),
                ids: vec![id],
            }),
            Request::NodeStatus(GetNodeStatus),
            Request::PrepareMap(PrepareMap {
                epoch: 8,
                digest: [3; 32],
                base: 7,
            }),
            Request::CommitMap(CommitMap {
                map: crate::placement::test_map(3, 2, 2),
            }),
            Request::RecordKeys(RecordKeys { digest: [2; 32] }),
            Request::DeleteSnapshot(DeleteSnapshot {
                repo: repo.clone(),
                id: SnapshotId([5; 32]),
                local_only: true,
            }),
            Request::GetRecord(GetRecord {
                repo: repo.clone(),
                kind: 3,
                key: [1; 32],
            }),
            Request::BeginPrune(BeginPrune {
                repo: repo.clone(),
                round: 77,
            }),
            Request::PruneMark(PruneMark {
                repo: repo.clone(),
                round: 77,
                ids: vec![id],
            }),
            Request::PruneSweep(PruneSweep {
                repo: repo.clone(),
                round: 77,
                grace_s: 3600,
                trash_keep_s: 86400,
            }),
            Request::RestoreTrash(RestoreTrash { repo: repo.clone() }),
            Request::Sizes(Sizes {
                repo: repo.clone(),
                ids: vec![id],
            }),
            Request::DeleteKey(DeleteKey {
                repo: repo.clone(),
                id: [6; 32],
                local_only: true,
            }),
            Request::GcFence(GetGcFence { repo: repo.clone() }),
            Request::ListSnapshotsAndTombstones(ListSnapshotsAndTombstones { repo: repo.clone() }),
            Request::GetBlobs(GetBlobs {
                repo,
                ids: vec![id, ChunkId([8; 32])],
            }),
        ]
    }

    /// Each of [`every_request`], as protocol 5 encoded it before requests
    /// became types (hex of [`super::super::encode_header`]).
    const PROTOCOL_5: [&str; 27] = [
        "040000000005ac02",
        "2500000001017201070707070707070707070707070707070707070707070707070707070707070701",
        "260000000201720107070707070707070707070707070707070707070707070707070707070707070301",
        "230000000301720707070707070707070707070707070707070707070707070707070707070707",
        "290000000401720505050505050505050505050505050505050505050505050505050505050505010104090201",
        "03000000050172",
        "230000000601720505050505050505050505050505050505050505050505050505050505050505",
        "24000000070172060606060606060606060606060606060606060606060606060606060606060601",
        "03000000080172",
        "050000000902010201",
        "260000000a81040101720707070707070707070707070707070707070707070707070707070707070707",
        "240000000b0172010707070707070707070707070707070707070707070707070707070707070707",
        "010000000c",
        "230000000d08030303030303030303030303030303030303030303030303030303030303030307",
        "3c0000000e0102020003010e3132372e302e302e313a373030310100020e3132372e302e302e313a373030320100030e3132372e302e302e313a373030330100",
        "210000000f0202020202020202020202020202020202020202020202020202020202020202",
        "24000000100172050505050505050505050505050505050505050505050505050505050505050501",
        "24000000110172030101010101010101010101010101010101010101010101010101010101010101",
        "040000001201724d",
        "250000001301724d010707070707070707070707070707070707070707070707070707070707070707",
        "090000001401724d901c80a305",
        "03000000150172",
        "24000000160172010707070707070707070707070707070707070707070707070707070707070707",
        "24000000170172060606060606060606060606060606060606060606060606060606060606060601",
        "03000000180172",
        "03000000190172",
        "440000001a01720207070707070707070707070707070707070707070707070707070707070707070808080808080808080808080808080808080808080808080808080808080808",
    ];

    #[test]
    fn every_request_encodes_as_in_protocol_5() {
        let all = every_request();
        assert_eq!(all.len(), PROTOCOL_5.len());
        for (request, golden) in all.iter().zip(PROTOCOL_5) {
            assert_eq!(
                hex::encode(encode_header(request)),
                golden,
                "{}",
                request.kind()
            );
            let frame = hex::decode(golden).unwrap();
            let (back, payload): (Request, _) = decode_frame(&frame).unwrap();
            assert!(payload.is_empty());
            assert_eq!(&back, request);
        }
    }

    #[test]
    fn local_forms_are_internal_and_the_rest_keep_their_class() {
        for r in every_request() {
            let expected = match &r {
                Request::Has(_)
                | Request::PutBlobs(_)
                | Request::PutSnapshot(_)
                | Request::PutKey(_)
                | Request::DeleteSnapshot(_)
                | Request::DeleteKey(_)
                | Request::Digests(_)
                | Request::ListPartition(_)
                | Request::RecordKeys(_)
                | Request::GetRecord(_) => Access::Internal,
                Request::PrepareMap(_) | Request::CommitMap(_) => Access::Map,
                Request::BeginPrune(_)
                | Request::PruneMark(_)
                | Request::PruneSweep(_)
                | Request::RestoreTrash(_) => Access::Manage,
                _ => Access::Read,
            };
            assert_eq!(r.access(), expected, "{}", r.kind());
        }
    }
}
