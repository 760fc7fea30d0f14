//! Wire messages between agents and chunk servers, and between servers.
//!
//! One bidirectional QUIC stream carries one request and its response. Each
//! direction is one frame, ended by finishing the stream:
//!
//! ```text
//! header_len: u32 LE   header: postcard (<= MAX_HEADER bytes)   payload: rest (<= MAX_PAYLOAD)
//! ```
//!
//! The header is a [`Request`] or a [`Response`]; bulk bytes (blobs, sealed
//! records, key files) travel in the payload, never inside postcard, so they
//! are neither copied nor parsed. [`Request::Hello`] checks
//! [`PROTOCOL_VERSION`]. Enum variant order is the format: append only.

use serde::{Deserialize, Serialize};

use crate::placement::ClusterMap;
use crate::{ChunkId, NodeId, RepoId, SnapshotId};

mod request;
mod rpc;

pub use request::*;
pub use rpc::*;

/// Version of this protocol, checked at hello. Version 2 put the sender's
/// cluster map epoch in front of every response header; version 4 added the
/// garbage-collection fence ([`GcFence`]) to snapshot puts,
/// [`Request::ListSnapshotsAndTombstones`], and the store's health to
/// [`NodeStatus`]; version 5 added [`Request::GetBlobs`].
pub const PROTOCOL_VERSION: u16 = 5;
/// TLS ALPN protocol id.
pub const ALPN: &[u8] = b"ringvault/1";
/// Largest header, bytes.
pub const MAX_HEADER: usize = 1 << 20;
/// Largest payload, bytes (64 MiB).
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Largest whole frame, bytes.
pub const MAX_FRAME: usize = 4 + MAX_HEADER + MAX_PAYLOAD;
/// Most bytes of a snapshot record or key record (the payload of
/// [`Request::PutSnapshot`] and [`Request::PutKey`]).
pub const MAX_RECORD_BYTES: usize = 4 << 20;
/// Most ids in one has-query.
pub const MAX_HAS_IDS: usize = 8192;
/// Most blobs in one put.
pub const MAX_PUT_BLOBS: usize = 4096;
/// Most ids in one [`Request::GetBlobs`].
pub const MAX_GET_BLOBS: usize = 1024;
/// The payload bytes a server fills for one [`Request::GetBlobs`] before it
/// answers the rest [`BlobReply::Later`] (16 MiB): one batch never holds
/// more than this plus one blob in either side's memory.
pub const GET_BLOBS_BYTES: usize = 16 << 20;
/// Bytes of a partition bitmap: one bit per partition, 2^16 partitions.
pub const PARTITION_BITMAP_BYTES: usize = 1 << 13;
/// Buckets a digest request folds partitions into when not asking per
/// partition: partition `p` falls in bucket `p >> 8`.
pub const DIGEST_BUCKETS: usize = 256;
/// Most keys in one [`Response::Keys`].
pub const MAX_LIST_KEYS: usize = 16_384;

/// Most record keys in one [`Response::RecordKeys`] (they fit the header
/// bound with repository names of up to 64 bytes).
pub const MAX_RECORD_KEYS: usize = 8_192;

/// A set of partitions, one bit each (bit `p % 8` of byte `p / 8`).
pub type PartitionBitmap = Vec<u8>;

/// What a request does to a repository, for authorization by the role in
/// an agent's certificate ([`crate::tls::Role`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads chunks, snapshot records, keys or status.
    Read,
    /// Adds chunks or snapshot records (never replaces or removes).
    Write,
    /// Deletes or replaces: forget, prune, key management.
    Manage,
    /// Server to server only.
    Internal,
    /// Changes the cluster map: operators (and nodes) only.
    Map,
}

/// A server's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The server's protocol version.
        protocol: u16,
        /// The server's own node id.
        node: NodeId,
        /// The server's current cluster map.
        map: ClusterMap,
    },
    /// Answer to [`Request::Has`]: one flag per id, in order.
    Has {
        /// Present with at least W copies (or locally, with `local_only`).
        present: Vec<bool>,
    },
    /// Answer to [`Request::PutBlobs`]: durable copies of each blob, in order.
    /// A coordinated put succeeded for a blob when its count reaches W.
    Put {
        /// Durable copies per blob.
        copies: Vec<u32>,
    },
    /// A blob, record or key in the payload.
    Data,
    /// Answer to [`Request::ListSnapshots`]: the payload holds the records,
    /// concatenated, with these ids and lengths in bytes.
    Snapshots {
        /// (id, length) per record.
        records: Vec<(SnapshotId, u32)>,
    },
    /// Done, nothing to return.
    Ok,
    /// The request failed.
    Error(WireError),
    /// Answer to [`Request::Digests`].
    Digests {
        /// One 32-byte digest per bucket or per requested partition.
        digests: Vec<[u8; 32]>,
    },
    /// Answer to [`Request::ListPartition`].
    Keys {
        /// Up to [`MAX_LIST_KEYS`] keys in order.
        keys: Vec<(RepoId, ChunkId)>,
        /// More keys follow; ask again after the last one.
        more: bool,
    },
    /// Answer to [`Request::Copies`]: live servers holding each id, in order.
    Copies {
        /// Copies per id.
        copies: Vec<u32>,
    },
    /// Answer to [`Request::NodeStatus`].
    NodeStatus(NodeStatus),
    /// Answer to [`Request::RecordKeys`].
    RecordKeys {
        /// (kind, repository, key) of each record, up to
        /// [`MAX_RECORD_KEYS`]; empty when `same`.
        keys: Vec<(u8, RepoId, [u8; 32])>,
        /// The digests are equal.
        same: bool,
    },
    /// Answer to [`Request::PruneSweep`].
    Swept(SweepReport),
    /// A count (blobs restored from the trash).
    Count(u64),
    /// Answer to [`Request::Sizes`]: bytes per id, in order.
    Sizes {
        /// Stored bytes per id (0: not held).
        sizes: Vec<u32>,
    },
    /// Answer to [`Request::PrepareMap`].
    Prepared {
        /// The promise was given.
        granted: bool,
        /// The highest epoch this server has promised or committed.
        highest: u64,
    },
    /// Answer to [`Request::ListKeys`]: the payload holds the records,
    /// concatenated, with these ids and lengths in bytes.
    Records {
        /// (id, length) per record.
        records: Vec<([u8; 32], u32)>,
    },
    /// Answer to [`Request::GcFence`].
    GcFence(GcFence),
    /// Answer to [`Request::ListSnapshotsAndTombstones`]: the payload holds
    /// the records, concatenated, with these ids and lengths in bytes, then
    /// `tombstones` snapshot ids of 32 bytes each (read it with
    /// [`crate::listing::split`]).
    SnapshotsAndTombstones {
        /// (id, length) per live record.
        records: Vec<(SnapshotId, u32)>,
        /// Tombstoned ids in the payload after the records.
        tombstones: u32,
    },
    /// Answer to [`Request::GetBlobs`]: one reply per requested id, in
    /// order; the payload holds the [`BlobReply::Data`] blobs concatenated.
    Blobs {
        /// Per id: sent, not held, failed its checksum, or not sent.
        replies: Vec<BlobReply>,
    },
}

/// What a server answers for one id of a [`Request::GetBlobs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobReply {
    /// In the payload, this many bytes long, after the blobs before it.
    Data(u32),
    /// Not held here.
    NotFound,
    /// Held, but failed its checksum: quarantined; ask another replica.
    Corrupt,
    /// Not sent: the answer reached [`GET_BLOBS_BYTES`] first, or the store
    /// failed on it; ask again.
    Later,
}

/// Where a server's garbage collection of one repository stands: the
/// fence a backup reads before it relies on chunks it does not upload.
///
/// `counter` grows by one when a prune round begins and again when it ends
/// (swept, replaced, or the server restarted: `boot` then differs), so two
/// equal fences read at two times mean no round began or ended in between;
/// `active` says one is running. A server trashes a blob only in a round's
/// sweep. Hence, for a backup that read every server's fence while all
/// were idle and finds them unchanged: nothing was deleted since. And a
/// server stores a snapshot record only under the fence the agent read
/// ([`Request::PutSnapshot`]), so every round that could delete a chunk
/// the record names either began after the record was stored (and lists
/// it, see the prune's listing quorum) or was running while the agent
/// checked that chunk (and protects it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GcFence {
    /// Random at each server start.
    pub boot: u64,
    /// Rounds begun plus rounds ended since start.
    pub counter: u64,
    /// A round is running.
    pub active: bool,
}

/// Most entries in a [`Request::PutSnapshot`] fence.
pub const MAX_FENCE_NODES: usize = 1024;

/// What a server reports about itself ([`Request::NodeStatus`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its node id.
    pub node: NodeId,
    /// Epoch of its cluster map.
    pub epoch: u64,
    /// Blobs in its store.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Blobs it holds for other owners (hinted handoff and blobs waiting to
    /// move after a membership change).
    pub hints: u64,
    /// Blobs it knows it lacks and will pull from co-replicas.
    pub repair_backlog: u64,
    /// Blobs quarantined after failing their checksum.
    pub quarantined: u64,
    /// Bytes scrub has checked in the current cycle.
    pub scrub_bytes: u64,
    /// Completed scrub cycles since start.
    pub scrub_cycles: u64,
    /// Its view of every other node of its map.
    pub peers: Vec<(NodeId, PeerState)>,
    /// Its store's state: whether it takes writes and serves reads.
    pub store: StoreState,
    /// The store's last error, for people (empty when none): why it is
    /// failing or read-only, or the last failure it recovered from.
    pub store_error: String,
    /// When that error happened, unix seconds (0 when none).
    pub store_error_at: u64,
    /// Bytes free on the file system of its data directory, as the store
    /// last measured them (`u64::MAX` when it keeps no files).
    pub free_bytes: u64,
    /// For every peer it does not see up: seconds since that peer last
    /// answered it (or since this server started, when it has not yet).
    pub peers_silent_s: Vec<(NodeId, u64)>,
    /// Its `out-after-s`: seconds a peer stays silent before it is out and
    /// its chunks are copied to other servers.
    pub out_after_s: u64,
}

/// The state of a server's store ([`NodeStatus::store`]), worst last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreState {
    /// Takes writes and serves reads.
    #[default]
    Ok,
    /// Refuses new blobs (free space below the server's watermark, or its
    /// quota reached); serves reads, and takes writes again by itself once
    /// space comes back.
    Full,
    /// Its file system is mounted read-only: serves reads, refuses writes.
    ReadOnly,
    /// Its store fails (an index or device error it has not recovered
    /// from); see [`NodeStatus::store_error`].
    Failing,
}

impl StoreState {
    /// Lowercase name for people and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Ok => "ok",
            StoreState::Full => "full",
            StoreState::ReadOnly => "read-only",
            StoreState::Failing => "failing",
        }
    }
}

/// What one server's sweep did ([`Request::PruneSweep`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Partitions swept.
    pub partitions: u64,
    /// Partitions skipped: an owner down or out, or blobs moving.
    pub skipped: u64,
    /// Chunks found unreferenced for the first time (kept for the grace
    /// period).
    pub noted: u64,
    /// Chunks referenced again, whose unreferenced mark was cleared.
    pub cleared: u64,
    /// Chunks moved to the trash.
    pub trashed: u64,
    /// Their stored bytes.
    pub trashed_bytes: u64,
    /// Trashed blobs dropped for good (past the trash period).
    pub expired: u64,
    /// Their stored bytes.
    pub expired_bytes: u64,
}

/// A server's view of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerState {
    /// Answering.
    Up,
    /// Failed lately; routed around, its writes held as hints.
    Down,
    /// Unreachable past `out-after-s`: its chunks are copied elsewhere.
    Out,
}

impl PeerState {
    /// Lowercase name for people and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::Down => "down",
            PeerState::Out => "out",
        }
    }
}

/// A request failure, as sent on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// For people; never holds secrets.
    pub message: String,
}

/// Failure kinds a caller acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Malformed or out-of-bounds request.
    BadRequest,
    /// No such blob, record or key.
    NotFound,
    /// The stored copy failed its checksum.
    Corrupt,
    /// Fewer than W replicas stored the write.
    QuorumNotReached,
    /// The client's certificate does not allow this.
    Forbidden,
    /// Protocol versions differ.
    VersionMismatch,
    /// Something else on the server went wrong.
    Internal,
    /// A different value already exists (repository key).
    Exists,
    /// The server's store takes no new blobs now (quota reached, free space
    /// below its watermark, read-only or failing); the write goes elsewhere.
    StoreFull,
    /// A map change conflicts with one promised or committed.
    MapConflict,
    /// A prune round began or ended since the agent read the fence it
    /// sent ([`Request::PutSnapshot`]): check the chunks again and retry.
    FenceMoved,
}

impl WireError {
    /// Makes an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Frame decoding failures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame claims.
    #[error("truncated frame")]
    Truncated,
    /// Header or payload over their bounds.
    #[error("frame too large ({0} bytes)")]
    TooLarge(usize),
    /// The header does not decode.
    #[error("malformed frame header: {0}")]
    Header(String),
    /// The request breaks a limit or its payload does not add up.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Encodes the header part of a frame (length prefix and postcard); the
/// payload follows it on the stream unchanged.
pub fn encode_header<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    // Invariant: postcard serialization of plain data into a Vec cannot fail.
    out.extend(postcard::to_stdvec(msg).expect("postcard to vec"));
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// Decodes a frame's header alone (the bytes after the length prefix), so a
/// server can check a request before reading its payload.
///
/// # Errors
/// [`FrameError::TooLarge`] over [`MAX_HEADER`], [`FrameError::Header`]
/// when it does not decode or has bytes left over.
pub fn decode_header<T: for<'de> Deserialize<'de>>(header: &[u8]) -> Result<T, FrameError> {
    if header.len() > MAX_HEADER {
        return Err(FrameError::TooLarge(header.len()));
    }
    let (msg, rest) =
        postcard::take_from_bytes(header).map_err(|e| FrameError::Header(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Header("bytes after the header".into()));
    }
    Ok(msg)
}

/// Splits a whole received frame into its decoded header and its payload.
///
/// # Errors
/// [`FrameError`] for truncated, oversized or malformed frames.
pub fn decode_frame<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<(T, &[u8]), FrameError> {
    if frame.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(frame.len()));
    }
    let len_bytes: [u8; 4] = frame
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_HEADER {
        return Err(FrameError::TooLarge(len));
    }
    let header = frame.get(4..4 + len).ok_or(FrameError::Truncated)?;
    let payload = &frame[4 + len..];
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let (msg, rest) =
        postcard::take_from_bytes(header).map_err(|e| FrameError::Header(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Header("trailing bytes in header".into()));
    }
    Ok((msg, payload))
}

/// Encodes a response header behind the sender's map epoch: the header of
/// every response is the postcard pair `(epoch, response)`, so a caller
/// learns of a newer cluster map from any answer.
pub fn encode_response(epoch: u64, response: &Response) -> Vec<u8> {
    encode_header(&(epoch, response))
}

/// Splits a whole response frame into the sender's epoch, the response and
/// the payload.
///
/// # Errors
/// [`FrameError`] as [`decode_frame`].
pub fn decode_response(frame: &[u8]) -> Result<(u64, Response, &[u8]), FrameError> {
    let ((epoch, response), payload) = decode_frame::<(u64, Response)>(frame)?;
    Ok((epoch, response, payload))
}

/// Whether partition `p` is set in `bitmap` (false past its end).
pub fn bitmap_has(bitmap: &[u8], p: u16) -> bool {
    bitmap
        .get(usize::from(p) / 8)
        .is_some_and(|b| b & (1 << (p % 8)) != 0)
}

/// A bitmap holding exactly `partitions`.
pub fn bitmap_of(partitions: impl IntoIterator<Item = u16>) -> PartitionBitmap {
    let mut b = vec![0u8; PARTITION_BITMAP_BYTES];
    for p in partitions {
        b[usize::from(p) / 8] |= 1 << (p % 8);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(header: Vec<u8>, payload: &[u8]) -> Vec<u8> {
        let mut f = header;
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn request_round_trip() {
        let repo = RepoId::new("r").unwrap();
        let reqs = vec![
            Request::Hello(Hello {
                protocol: 1,
                epoch: 3,
            }),
            Request::Has(Has {
                repo: repo.clone(),
                ids: vec![ChunkId([1; 32])],
                local_only: false,
            }),
            Request::PutBlobs(PutBlobs {
                repo: repo.clone(),
                blobs: vec![(ChunkId([2; 32]), 3)],
                local_only: true,
            }),
            Request::DeleteKey(DeleteKey {
                repo: repo.clone(),
                id: [4; 32],
                local_only: false,
            }),
            Request::ListKeys(ListKeys { repo: repo.clone() }),
            Request::ListSnapshotsAndTombstones(ListSnapshotsAndTombstones { repo }),
        ];
        for r in reqs {
            let f = frame(encode_header(&r), b"abc");
            let (back, payload): (Request, _) = decode_frame(&f).unwrap();
            assert_eq!(back, r);
            assert_eq!(payload, b"abc");
        }
    }

    #[test]
    fn access_classes() {
        let repo = RepoId::new("r").unwrap();
        let get = Request::GetBlob(GetBlob {
            repo: repo.clone(),
            id: ChunkId([0; 32]),
        });
        assert_eq!(get.access(), Access::Read);
        let put = Request::PutSnapshot(PutSnapshot {
            repo: repo.clone(),
            id: SnapshotId([0; 32]),
            local_only: false,
            fence: vec![],
        });
        assert_eq!(put.access(), Access::Write);
        let forward = Request::PutSnapshot(PutSnapshot {
            repo: repo.clone(),
            id: SnapshotId([0; 32]),
            local_only: true,
            fence: vec![],
        });
        assert_eq!(forward.access(), Access::Internal);
        let forget = Request::DeleteSnapshot(DeleteSnapshot {
            repo: repo.clone(),
            id: SnapshotId([0; 32]),
            local_only: false,
        });
        assert_eq!(forget.access(), Access::Manage);
        assert_eq!(
            Request::ListSnapshotsAndTombstones(ListSnapshotsAndTombstones { repo: repo.clone() })
                .access(),
            Access::Read
        );
        assert_eq!(
            Request::RestoreTrash(RestoreTrash { repo }).access(),
            Access::Manage
        );
        assert_eq!(
            Request::PrepareMap(PrepareMap {
                epoch: 2,
                digest: [0; 32],
                base: 1
            })
            .access(),
            Access::Map
        );
    }

    #[test]
    fn responses_carry_the_epoch() {
        let r = Response::Copies { copies: vec![3, 0] };
        let mut f = encode_response(7, &r);
        f.extend_from_slice(b"xy");
        let (epoch, back, payload) = decode_response(&f).unwrap();
        assert_eq!((epoch, back, payload), (7, r, &b"xy"[..]));
    }

    #[test]
    fn a_listing_with_tombstones_round_trips() {
        let r = Response::SnapshotsAndTombstones {
            records: vec![(SnapshotId([1; 32]), 3)],
            tombstones: 1,
        };
        let mut f = encode_response(2, &r);
        let mut payload = b"abc".to_vec();
        payload.extend_from_slice(&[9; 32]);
        f.extend_from_slice(&payload);
        let (epoch, back, p) = decode_response(&f).unwrap();
        assert_eq!((epoch, &back, p), (2, &r, &payload[..]));
        let list = Request::ListSnapshotsAndTombstones(ListSnapshotsAndTombstones {
            repo: RepoId::new("r").unwrap(),
        });
        assert!(list.validate(b"").is_ok());
        assert!(list.validate(b"x").is_err());
    }

    #[test]
    fn bitmaps_hold_what_was_put_in() {
        let b = bitmap_of([0, 9, 65_535]);
        assert_eq!(b.len(), PARTITION_BITMAP_BYTES);
        let set: Vec<u16> = (0..=u16::MAX).filter(|&p| bitmap_has(&b, p)).collect();
        assert_eq!(set, [0, 9, 65_535]);
        assert!(!bitmap_has(&[], 3));
        let bad = Request::Digests(Digests {
            partitions: vec![0; 10],
            per_partition: false,
        });
        assert!(bad.validate(b"").is_err());
    }

    #[test]
    fn a_batched_get_is_bounded_and_round_trips() {
        let repo = RepoId::new("r").unwrap();
        let ok = Request::GetBlobs(GetBlobs {
            repo: repo.clone(),
            ids: vec![ChunkId([1; 32]); MAX_GET_BLOBS],
        });
        assert!(ok.validate(b"").is_ok());
        assert!(ok.validate(b"x").is_err(), "a get carries no payload");
        assert_eq!(ok.access(), Access::Read);
        let too_many = Request::GetBlobs(GetBlobs {
            repo,
            ids: vec![ChunkId([1; 32]); MAX_GET_BLOBS + 1],
        });
        assert!(too_many.validate(b"").is_err());
        let r = Response::Blobs {
            replies: vec![
                BlobReply::Data(3),
                BlobReply::NotFound,
                BlobReply::Corrupt,
                BlobReply::Later,
            ],
        };
        let mut f = encode_response(5, &r);
        f.extend_from_slice(b"abc");
        let (epoch, back, p) = decode_response(&f).unwrap();
        assert_eq!((epoch, &back, p), (5, &r, &b"abc"[..]));
    }

    #[test]
    fn put_lengths_must_add_up() {
        let r = Request::PutBlobs(PutBlobs {
            repo: RepoId::new("r").unwrap(),
            blobs: vec![(ChunkId([2; 32]), 3)],
            local_only: false,
        });
        assert!(r.validate(b"abc").is_ok());
        assert!(r.validate(b"ab").is_err());
    }

    #[test]
    fn oversized_header_is_refused() {
        let mut f = ((MAX_HEADER + 1) as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&[0; 16]);
        assert!(matches!(
            decode_frame::<Request>(&f),
            Err(FrameError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            if let Ok((r, p)) = decode_frame::<Request>(&bytes) { let _ = r.validate(p); }
            let _ = decode_frame::<Response>(&bytes);
            let _ = decode_response(&bytes);
            // Also behind a plausible length prefix.
            let mut f = (bytes.len() as u32).to_le_bytes().to_vec();
            f.extend_from_slice(&bytes);
            if let Ok((r, p)) = decode_frame::<Request>(&f) { let _ = r.validate(p); }
            let _ = decode_frame::<Response>(&f);
            let _ = decode_response(&f);
        }
    }
}
