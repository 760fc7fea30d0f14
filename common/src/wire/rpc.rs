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

#[cfg(test)]
mod tests {
    use super::super::ErrorCode;
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
}
