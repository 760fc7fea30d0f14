//! What each request is answered with, and how a server treats it.
//!
//! Every request type implements [`Rpc`]: it names its [`Rpc::Response`]
//! type, its short name ([`Rpc::KIND`], for logs and metrics), its
//! [`Access`] class, the payload it may carry ([`Rpc::payload_limit`],
//! [`Rpc::validate`]) and how its answer is read from and written into a
//! [`Response`] ([`Rpc::answer`], [`Rpc::respond`]). A caller sends `R` and
//! gets `R::Response` back, so a request cannot be paired with another's
//! answer by hand (garage's `Message { type Response }`, in
//! `garage_net::message`). [`ClientRpc`] marks what an agent or operator
//! may send, [`PeerRpc`] what one server sends another.
//!
//! On the wire a request is one variant of [`Request`], in declaration
//! order: postcard encodes the variant's index, then the struct's fields in
//! order, exactly as for the struct variants of protocol 5 (the test
//! `every_request_encodes_as_in_protocol_5` holds the bytes).

use serde::{Deserialize, Serialize};

use super::request::*;
use super::{
    Access, BlobReply, FrameError, GcFence, MAX_FENCE_NODES, MAX_GET_BLOBS, MAX_HAS_IDS,
    MAX_PUT_BLOBS, MAX_RECORD_BYTES, NodeStatus, PARTITION_BITMAP_BYTES, Response, SweepReport,
};
use crate::placement::ClusterMap;
use crate::{ChunkId, NodeId, RepoId, SnapshotId};

#[cfg(doc)]
use super::{MAX_LIST_KEYS, MAX_RECORD_KEYS};

/// A request type: what it is answered with and how a server treats it.
pub trait Rpc: Into<Request> {
    /// What a successful answer carries (bulk bytes travel beside it, in
    /// the frame's payload).
    type Response;
    /// A short name for logs, metrics and errors.
    const KIND: &'static str;

    /// What it does to a repository, for authorization.
    fn access(&self) -> Access;

    /// The repository it acts on (none for hello and cluster-wide
    /// requests).
    fn repo(&self) -> Option<&RepoId>;

    /// The most payload bytes it may carry; a server reads no more. 0
    /// unless overridden.
    fn payload_limit(&self) -> u64 {
        0
    }

    /// Checks its limits against its payload (none, unless overridden).
    ///
    /// # Errors
    /// [`FrameError::Invalid`] naming the broken limit.
    fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        no_payload(payload)
    }

    /// Reads this request's answer out of `response`.
    ///
    /// # Errors
    /// The response itself when it is not this request's answer (an error,
    /// or another request's answer).
    fn answer(response: Response) -> Result<Self::Response, Box<Response>>;

    /// The response that carries `answer` (the server's side of
    /// [`Rpc::answer`]).
    fn respond(answer: Self::Response) -> Response;
}

/// A request an agent or an operator may send.
pub trait ClientRpc: Rpc {}

/// A request one server sends another.
pub trait PeerRpc: Rpc {}

fn invalid(message: &str) -> Result<(), FrameError> {
    Err(FrameError::Invalid(message.to_owned()))
}

fn no_payload(payload: &[u8]) -> Result<(), FrameError> {
    if payload.is_empty() {
        Ok(())
    } else {
        invalid("unexpected payload")
    }
}

fn at_most(ids: &[ChunkId], most: usize, payload: &[u8]) -> Result<(), FrameError> {
    if ids.len() > most {
        return invalid("too many ids");
    }
    no_payload(payload)
}

fn record_payload(payload: &[u8]) -> Result<(), FrameError> {
    if payload.is_empty() {
        invalid("empty payload")
    } else if payload.len() > MAX_RECORD_BYTES {
        invalid("record too large")
    } else {
        Ok(())
    }
}

/// `Access::Internal` for the server-to-server form of a request.
fn unless_local(local_only: bool, access: Access) -> Access {
    if local_only { Access::Internal } else { access }
}

/// Writes [`Rpc::access`] for a request of one access class.
macro_rules! access {
    ($class:ident) => {
        fn access(&self) -> Access {
            Access::$class
        }
    };
}

/// Writes [`Rpc::repo`] for a request on the repository in its `repo`.
macro_rules! in_repo {
    () => {
        fn repo(&self) -> Option<&RepoId> {
            Some(&self.repo)
        }
    };
}

/// Writes [`Rpc::repo`] for a request on no one repository.
macro_rules! no_repo {
    () => {
        fn repo(&self) -> Option<&RepoId> {
            None
        }
    };
}

/// Writes [`Rpc::answer`] and [`Rpc::respond`] from one pairing of the
/// answer's value and its response, each written so that it reads both as
/// a pattern and as an expression.
macro_rules! answered_by {
    ($ty:ty, [$($value:tt)*], [$($response:tt)*]) => {
        type Response = $ty;
        fn answer(response: Response) -> Result<$ty, Box<Response>> {
            match response {
                $($response)* => Ok($($value)*),
                other => Err(Box::new(other)),
            }
        }
        fn respond($($value)*: $ty) -> Response {
            $($response)*
        }
    };
}

/// The answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The server's protocol version.
    pub protocol: u16,
    /// The server's own node id.
    pub node: NodeId,
    /// The server's current cluster map.
    pub map: ClusterMap,
}

/// The answer to [`ListPartition`]: one page of keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPage {
    /// Up to [`MAX_LIST_KEYS`] keys in order.
    pub keys: Vec<(RepoId, ChunkId)>,
    /// More keys follow; ask again after the last one.
    pub more: bool,
}

/// The answer to [`PrepareMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Promise {
    /// The promise was given.
    pub granted: bool,
    /// The highest epoch this server has promised or committed.
    pub highest: u64,
}

/// The answer to [`RecordKeys`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordKeyList {
    /// (kind, repository, key) of each record, up to [`MAX_RECORD_KEYS`];
    /// empty when `same`.
    pub keys: Vec<(u8, RepoId, [u8; 32])>,
    /// The digests are equal.
    pub same: bool,
}

/// The answer to [`ListSnapshotsAndTombstones`] (its payload is read with
/// [`crate::listing::split`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotListing {
    /// (id, length in bytes) per live record in the payload.
    pub records: Vec<(SnapshotId, u32)>,
    /// Tombstoned ids in the payload after the records.
    pub tombstones: u32,
}

impl Rpc for Hello {
    answered_by!(
        Welcome,
        [Welcome {
            protocol,
            node,
            map
        }],
        [Response::Hello {
            protocol,
            node,
            map
        }]
    );
    const KIND: &'static str = "hello";
    access!(Read);
    no_repo!();
}

impl Rpc for Has {
    answered_by!(Vec<bool>, [present], [Response::Has { present }]);
    const KIND: &'static str = "has";
    fn access(&self) -> Access {
        unless_local(self.local_only, Access::Read)
    }
    in_repo!();
    fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        at_most(&self.ids, MAX_HAS_IDS, payload)
    }
}

impl Rpc for PutBlobs {
    answered_by!(Vec<u32>, [copies], [Response::Put { copies }]);
    const KIND: &'static str = "put";
    fn access(&self) -> Access {
        unless_local(self.local_only, Access::Write)
    }
    in_repo!();
    /// The declared blob lengths' sum (over [`super::MAX_PAYLOAD`] when the
    /// header lies; [`Rpc::validate`] refuses it).
    fn payload_limit(&self) -> u64 {
        self.blobs.iter().map(|(_, l)| u64::from(*l)).sum()
    }
    fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        if self.blobs.len() > MAX_PUT_BLOBS {
            return invalid("too many blobs");
        }
        if self.payload_limit() != payload.len() as u64 {
            return invalid("blob lengths do not add up to the payload");
        }
        Ok(())
    }
}

impl Rpc for GetBlob {
    answered_by!((), [()], [Response::Data]);
    const KIND: &'static str = "get";
    access!(Read);
    in_repo!();
}

impl Rpc for PutSnapshot {
    answered_by!((), [()], [Response::Ok]);
    const KIND: &'static str = "put-snapshot";
    fn access(&self) -> Access {
        unless_local(self.local_only, Access::Write)
    }
    in_repo!();
    fn payload_limit(&self) -> u64 {
        MAX_RECORD_BYTES as u64
    }
    fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        if self.fence.len() > MAX_FENCE_NODES {
            return invalid("fence too long");
        }
        record_payload(payload)
    }
}

impl Rpc for ListSnapshots {
    answered_by!(
        Vec<(SnapshotId, u32)>,
        [records],
        [Response::Snapshots { records }]
    );
    const KIND: &'static str = "list-snapshots";
    access!(Read);
    in_repo!();
}

impl Rpc for GetSnapshot {
    answered_by!((), [()], [Response::Data]);
    const KIND: &'static str = "get-snapshot";
    access!(Read);
    in_repo!();
}

impl Rpc for PutKey {
    answered_by!((), [()], [Response::Ok]);
    const KIND: &'static str = "put-key";
    fn access(&self) -> Access {
        unless_local(self.local_only, Access::Manage)
    }
    in_repo!();
    fn payload_limit(&self) -> u64 {
        MAX_RECORD_BYTES as u64
    }
    fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        record_payload(payload)
    }
}

impl Rpc for ListKeys {
    answered_by!(
        Vec<([u8; 32], u32)>,
        [records],
        [Response::Records { records }]
    );
    const KIND: &'static str = "list-keys";
    access!(Read);
    in_repo!();
}

impl Rpc for Digests {
    answered_by!(Vec<[u8; 32]>, [digests], [Response::Digests { digests }]);
    const KIND: &'static str = "digests";
    access!(Internal);
    no_repo!();
    fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        if self.partitions.len() != PARTITION_BITMAP_BYTES {
            return invalid("partition bitmap of the wrong size");
        }
        no_payload(payload)
    }
}

impl Rpc for ListPartition {
    answered_by!(
        KeyPage,
        [KeyPage { keys, more }],
        [Response::Keys { keys, more }]
    );
    const KIND: &'static str = "list-partition";
    access!(Internal);
    no_repo!();
}

impl Rpc for Copies {
    answered_by!(Vec<u32>, [copies], [Response::Copies { copies }]);
    const KIND: &'static str = "copies";
    access!(Read);
    in_repo!();
    fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        at_most(&self.ids, MAX_HAS_IDS, payload)
    }
}

impl Rpc for GetNodeStatus {
    answered_by!(NodeStatus, [status], [Response::NodeStatus(status)]);
    const KIND: &'static str = "node-status";
    access!(Read);
    no_repo!();
}

impl Rpc for PrepareMap {
    answered_by!(
        Promise,
        [Promise { granted, highest }],
        [Response::Prepared { granted, highest }]
    );
    const KIND: &'static str = "prepare-map";
    access!(Map);
    no_repo!();
}

impl Rpc for CommitMap {
    answered_by!((), [()], [Response::Ok]);
    const KIND: &'static str = "commit-map";
    access!(Map);
    no_repo!();
    fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        if self.map.validate().is_err() {
            return invalid("invalid map");
        }
        no_payload(payload)
    }
}

impl Rpc for RecordKeys {
    answered_by!(
        RecordKeyList,
        [RecordKeyList { keys, same }],
        [Response::RecordKeys { keys, same }]
    );
    const KIND: &'static str = "record-keys";
    access!(Internal);
    no_repo!();
}

impl Rpc for DeleteSnapshot {
    answered_by!((), [()], [Response::Ok]);
    const KIND: &'static str = "delete-snapshot";
    fn access(&self) -> Access {
        unless_local(self.local_only, Access::Manage)
    }
    in_repo!();
}

impl Rpc for GetRecord {
    answered_by!((), [()], [Response::Data]);
    const KIND: &'static str = "get-record";
    access!(Internal);
    in_repo!();
}

impl Rpc for BeginPrune {
    answered_by!((), [()], [Response::Ok]);
    const KIND: &'static str = "begin-prune";
    access!(Manage);
    in_repo!();
}

impl Rpc for PruneMark {
    answered_by!((), [()], [Response::Ok]);
    const KIND: &'static str = "prune-mark";
    access!(Manage);
    in_repo!();
    fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        at_most(&self.ids, MAX_HAS_IDS, payload)
    }
}

impl Rpc for PruneSweep {
    answered_by!(SweepReport, [report], [Response::Swept(report)]);
    const KIND: &'static str = "prune-sweep";
    access!(Manage);
    in_repo!();
}

impl Rpc for RestoreTrash {
    answered_by!(u64, [count], [Response::Count(count)]);
    const KIND: &'static str = "restore-trash";
    access!(Manage);
    in_repo!();
}

impl Rpc for Sizes {
    answered_by!(Vec<u32>, [sizes], [Response::Sizes { sizes }]);
    const KIND: &'static str = "sizes";
    access!(Read);
    in_repo!();
    fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        at_most(&self.ids, MAX_HAS_IDS, payload)
    }
}

impl Rpc for DeleteKey {
    answered_by!((), [()], [Response::Ok]);
    const KIND: &'static str = "delete-key";
    fn access(&self) -> Access {
        unless_local(self.local_only, Access::Manage)
    }
    in_repo!();
}

impl Rpc for GetGcFence {
    answered_by!(GcFence, [fence], [Response::GcFence(fence)]);
    const KIND: &'static str = "gc-fence";
    access!(Read);
    in_repo!();
}

impl Rpc for ListSnapshotsAndTombstones {
    answered_by!(
        SnapshotListing,
        [SnapshotListing {
            records,
            tombstones
        }],
        [Response::SnapshotsAndTombstones {
            records,
            tombstones
        }]
    );
    const KIND: &'static str = "list-snapshots-and-tombstones";
    access!(Read);
    in_repo!();
}

impl Rpc for GetBlobs {
    answered_by!(Vec<BlobReply>, [replies], [Response::Blobs { replies }]);
    const KIND: &'static str = "get-blobs";
    access!(Read);
    in_repo!();
    fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        at_most(&self.ids, MAX_GET_BLOBS, payload)
    }
}

macro_rules! marked {
    ($marker:ident: $($ty:ident),*) => { $(impl $marker for $ty {})* };
}

marked!(ClientRpc: Hello, Has, PutBlobs, GetBlob, PutSnapshot, ListSnapshots, GetSnapshot,
    PutKey, ListKeys, Copies, GetNodeStatus, PrepareMap, CommitMap, DeleteSnapshot, BeginPrune,
    PruneMark, PruneSweep, RestoreTrash, Sizes, DeleteKey, GetGcFence, ListSnapshotsAndTombstones,
    GetBlobs);
marked!(PeerRpc: Hello, Has, PutBlobs, GetBlob, PutSnapshot, PutKey, Digests, ListPartition,
    GetNodeStatus, PrepareMap, CommitMap, RecordKeys, DeleteSnapshot, GetRecord, DeleteKey);

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
    use super::super::{ErrorCode, decode_frame, encode_header};
    use super::*;

    #[test]
    fn every_answer_reads_back_what_was_responded_and_nothing_else() {
        fn pair<R: Rpc>(answer: R::Response)
        where
            R::Response: Clone + PartialEq + std::fmt::Debug,
        {
            let response = R::respond(answer.clone());
            assert_eq!(R::answer(response).unwrap(), answer, "{}", R::KIND);
            let error = Response::Error(super::super::WireError::new(ErrorCode::NotFound, "no"));
            assert!(R::answer(error).is_err(), "{}", R::KIND);
        }
        pair::<Has>(vec![true, false]);
        pair::<PutBlobs>(vec![2]);
        pair::<GetBlob>(());
        pair::<Copies>(vec![3]);
        pair::<Sizes>(vec![9]);
        pair::<RestoreTrash>(4);
        pair::<GetBlobs>(vec![BlobReply::Later]);
        pair::<ListPartition>(KeyPage {
            keys: vec![],
            more: true,
        });
        pair::<PrepareMap>(Promise {
            granted: true,
            highest: 3,
        });
        pair::<ListSnapshotsAndTombstones>(SnapshotListing {
            records: vec![],
            tombstones: 2,
        });
        // An answer of another request's shape is not taken.
        assert!(Copies::answer(Sizes::respond(vec![1])).is_err());
        assert!(GetBlob::answer(Response::Ok).is_err());
    }

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
