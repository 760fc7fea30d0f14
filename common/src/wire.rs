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

/// Version of this protocol, checked at hello.
pub const PROTOCOL_VERSION: u16 = 1;
/// TLS ALPN protocol id.
pub const ALPN: &[u8] = b"ringvault/1";
/// Largest header, bytes.
pub const MAX_HEADER: usize = 1 << 20;
/// Largest payload, bytes (64 MiB).
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Largest whole frame, bytes.
pub const MAX_FRAME: usize = 4 + MAX_HEADER + MAX_PAYLOAD;
/// Most ids in one has-query.
pub const MAX_HAS_IDS: usize = 8192;
/// Most blobs in one put.
pub const MAX_PUT_BLOBS: usize = 4096;

/// A request from an agent (or a server coordinating a write) to a server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First request on a connection: versions and the caller's map epoch.
    Hello {
        /// The caller's [`PROTOCOL_VERSION`].
        protocol: u16,
        /// The newest cluster map epoch the caller knows.
        epoch: u64,
    },
    /// Which of `ids` does the cluster hold with at least W copies? With
    /// `local_only`, which does this server hold (server to server).
    Has {
        /// Repository.
        repo: RepoId,
        /// Up to [`MAX_HAS_IDS`] ids.
        ids: Vec<ChunkId>,
        /// Answer from the local store only.
        local_only: bool,
    },
    /// Store blobs; the payload is their bytes, concatenated in order.
    /// Without `local_only` the server coordinates: it stores its own copy,
    /// forwards to the other replicas and answers once W hold each blob.
    PutBlobs {
        /// Repository.
        repo: RepoId,
        /// Up to [`MAX_PUT_BLOBS`] (id, length in bytes) pairs.
        blobs: Vec<(ChunkId, u32)>,
        /// Store locally only (a coordinator forwarding a replica).
        local_only: bool,
    },
    /// Fetch one blob from this server's store.
    GetBlob {
        /// Repository.
        repo: RepoId,
        /// The blob.
        id: ChunkId,
    },
    /// Store a sealed snapshot record (payload). Without `local_only` the
    /// server copies it to every node and answers once W have it.
    PutSnapshot {
        /// Repository.
        repo: RepoId,
        /// Record id.
        id: SnapshotId,
        /// Store locally only.
        local_only: bool,
    },
    /// All snapshot records this server holds.
    ListSnapshots {
        /// Repository.
        repo: RepoId,
    },
    /// One snapshot record.
    GetSnapshot {
        /// Repository.
        repo: RepoId,
        /// Record id.
        id: SnapshotId,
    },
    /// Store the repository's wrapped key (payload), copying it to every node
    /// unless `local_only`. Refused if a different key is already stored.
    PutKey {
        /// Repository.
        repo: RepoId,
        /// Store locally only.
        local_only: bool,
    },
    /// Fetch the repository's wrapped key.
    GetKey {
        /// Repository.
        repo: RepoId,
    },
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

impl Request {
    /// Checks a decoded request's limits against its payload.
    ///
    /// # Errors
    /// [`FrameError::Invalid`] naming the broken limit.
    pub fn validate(&self, payload: &[u8]) -> Result<(), FrameError> {
        let invalid = |m: &str| Err(FrameError::Invalid(m.to_owned()));
        match self {
            Request::Has { ids, .. } if ids.len() > MAX_HAS_IDS => invalid("too many ids"),
            Request::PutBlobs { blobs, .. } => {
                if blobs.len() > MAX_PUT_BLOBS {
                    return invalid("too many blobs");
                }
                let total: u64 = blobs.iter().map(|(_, l)| u64::from(*l)).sum();
                if total != payload.len() as u64 {
                    return invalid("blob lengths do not add up to the payload");
                }
                Ok(())
            }
            Request::PutSnapshot { .. } | Request::PutKey { .. } if payload.is_empty() => {
                invalid("empty payload")
            }
            Request::Hello { .. }
            | Request::Has { .. }
            | Request::GetBlob { .. }
            | Request::ListSnapshots { .. }
            | Request::GetSnapshot { .. }
            | Request::GetKey { .. }
                if !payload.is_empty() =>
            {
                invalid("unexpected payload")
            }
            _ => Ok(()),
        }
    }

    /// The repository a request acts on (none for hello).
    pub fn repo(&self) -> Option<&RepoId> {
        match self {
            Request::Hello { .. } => None,
            Request::Has { repo, .. }
            | Request::PutBlobs { repo, .. }
            | Request::GetBlob { repo, .. }
            | Request::PutSnapshot { repo, .. }
            | Request::ListSnapshots { repo }
            | Request::GetSnapshot { repo, .. }
            | Request::PutKey { repo, .. }
            | Request::GetKey { repo } => Some(repo),
        }
    }

    /// Whether this is a server-to-server request (only node certificates may
    /// send it).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Request::Has {
                local_only: true,
                ..
            } | Request::PutBlobs {
                local_only: true,
                ..
            } | Request::PutSnapshot {
                local_only: true,
                ..
            } | Request::PutKey {
                local_only: true,
                ..
            }
        )
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Has { .. } => "has",
            Request::PutBlobs { .. } => "put",
            Request::GetBlob { .. } => "get",
            Request::PutSnapshot { .. } => "put-snapshot",
            Request::ListSnapshots { .. } => "list-snapshots",
            Request::GetSnapshot { .. } => "get-snapshot",
            Request::PutKey { .. } => "put-key",
            Request::GetKey { .. } => "get-key",
        }
    }
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
            Request::Hello {
                protocol: 1,
                epoch: 3,
            },
            Request::Has {
                repo: repo.clone(),
                ids: vec![ChunkId([1; 32])],
                local_only: false,
            },
            Request::PutBlobs {
                repo: repo.clone(),
                blobs: vec![(ChunkId([2; 32]), 3)],
                local_only: true,
            },
            Request::GetKey { repo },
        ];
        for r in reqs {
            let f = frame(encode_header(&r), b"abc");
            let (back, payload): (Request, _) = decode_frame(&f).unwrap();
            assert_eq!(back, r);
            assert_eq!(payload, b"abc");
        }
    }

    #[test]
    fn put_lengths_must_add_up() {
        let r = Request::PutBlobs {
            repo: RepoId::new("r").unwrap(),
            blobs: vec![(ChunkId([2; 32]), 3)],
            local_only: false,
        };
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
            // Also behind a plausible length prefix.
            let mut f = (bytes.len() as u32).to_le_bytes().to_vec();
            f.extend_from_slice(&bytes);
            if let Ok((r, p)) = decode_frame::<Request>(&f) { let _ = r.validate(p); }
            let _ = decode_frame::<Response>(&f);
        }
    }
}
