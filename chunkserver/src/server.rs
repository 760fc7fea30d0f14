//! The request loop: accepts connections, checks who is calling, and
//! answers each request, handing replicated writes to [`crate::replicate`]
//! and records to [`crate::records`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::Connection;
use ringvault_common::placement::ClusterMap;
use ringvault_common::tls::{PeerIdentity, Role};
use ringvault_common::wire::{
    self, Access, BeginPrune, CommitMap, Copies, DeleteKey, DeleteSnapshot, Digests, ErrorCode,
    GetBlob, GetBlobs, GetGcFence, GetNodeStatus, GetRecord, GetSnapshot, Has, Hello, KeyPage,
    ListKeys, ListPartition, ListSnapshots, ListSnapshotsAndTombstones, MAX_FRAME, MAX_LIST_KEYS,
    PROTOCOL_VERSION, PrepareMap, Promise, PruneMark, PruneSweep, PutBlobs, PutKey, PutSnapshot,
    RecordKeyList, RecordKeys, Request, Response, RestoreTrash, Rpc, Sizes, SnapshotListing,
    Welcome, WireError,
};
use ringvault_net::quic::{self};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::node::{Caller, Node, Reply, quarantine};
use crate::records::{
    delete_record_everywhere, listed_snapshots, live_records, owned_record, put_record_everywhere,
    put_snapshot_fenced, snapshot_for, snapshot_records, too_many_records,
};
use crate::replicate::{coordinate_has, coordinate_put, count_copies, get_blobs, protect_present};
use crate::store::RecordKind;

/// How long a client has to send a whole request, and we to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves requests on the node's endpoint, and runs its maintenance
/// (failure detection, handoff, anti-entropy repair, scrub), until
/// `shutdown` completes; then closes connections and waits (bounded) for
/// them to drain.
///
/// # Errors
/// Never in practice; the signature leaves room for fatal endpoint errors.
pub async fn run(node: Arc<Node>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let endpoint = node.peers.endpoint().clone();
    info!(node = %node.id, addr = ?endpoint.local_addr().ok(), "chunk server listening");
    let maintenance = crate::maintenance::spawn(node.clone());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let node = node.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => { debug!(%remote, error = %e, "handshake failed"); return; }
                        Err(_) => { debug!(%remote, "handshake timed out"); return; }
                    };
                    let span = info_span!("conn", %remote);
                    serve_connection(node, conn).instrument(span).await;
                });
            }
        }
    }
    info!(node = %node.id, "shutting down");
    for task in maintenance {
        task.abort();
    }
    endpoint.close(0u32.into(), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    Ok(())
}

async fn serve_connection(node: Arc<Node>, conn: Connection) {
    let peer = match quic::peer_identity(&conn) {
        Ok((identity, fingerprint)) => Arc::new(Caller {
            identity,
            fingerprint,
        }),
        Err(e) => {
            warn!(error = %e, "refusing peer without a ringvault identity");
            conn.close(1u32.into(), b"no ringvault identity");
            return;
        }
    };
    debug!(?peer, "connected");
    // Nodes are the cluster's own members: their replica writes are not
    // held to a client's budget or cut for stalling behind one.
    let limits = match peer.identity {
        PeerIdentity::Node(_) => None,
        _ => Some(ClientLimits {
            budget: Arc::new(tokio::sync::Semaphore::new(node.settings.connection_budget)),
            stall: node.settings.stall_timeout,
        }),
    };
    while let Ok((send, recv)) = conn.accept_bi().await {
        let node = node.clone();
        let peer = peer.clone();
        let conn = conn.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let served = serve_stream(node, peer, send, recv, limits.as_ref());
            match tokio::time::timeout(REQUEST_TIMEOUT, served).await {
                Ok(Ok(())) => {}
                Ok(Err(CutOff(why))) => {
                    warn!(why = %why, "cutting off a client");
                    conn.close(CUT_OFF_CODE.into(), why.as_bytes());
                }
                Err(_) => debug!("request timed out"),
            }
        });
    }
}

/// The application close code of a connection cut for breaking the
/// protocol or stalling.
const CUT_OFF_CODE: u32 = 2;

/// Limits on what one client connection may make this server hold.
#[derive(Clone)]
struct ClientLimits {
    /// Bytes of requests buffered at once, one permit per byte.
    budget: Arc<tokio::sync::Semaphore>,
    /// How long a begun request may wait for its next bytes.
    stall: Duration,
}

/// Why a client's connection is cut: a header over [`wire::MAX_HEADER`], a
/// payload longer than its header declared, or a stall.
#[derive(Debug)]
struct CutOff(String);

/// A request read off a stream: its whole frame, and the budget it holds
/// until it is answered.
struct Incoming {
    frame: Result<Bytes, WireError>,
    _held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Incoming {
    /// A stream that ended or broke before a whole request arrived: a
    /// cancelled request, answered (if the client still listens) rather
    /// than held against the connection.
    fn broken(e: impl std::fmt::Display, held: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        Self {
            frame: Err(WireError::new(
                ErrorCode::BadRequest,
                format!("incomplete request: {e}"),
            )),
            _held: held,
        }
    }
}

/// Reads one request frame. Without `limits` (a node peer) it reads up to
/// [`MAX_FRAME`] bytes. With them, it reads the length prefix, refuses a
/// header over [`wire::MAX_HEADER`] before reading it, reads at most what
/// the header declares as payload ([`Request::payload_limit`]), takes the
/// connection's budget for the bytes before reading them, and gives up on
/// a client silent for `limits.stall` mid-request.
///
/// # Errors
/// [`CutOff`] for a protocol violation or a stall; an ordinary malformed
/// request is answered (the frame's error), not cut off.
async fn read_request(
    recv: &mut quinn::RecvStream,
    limits: Option<&ClientLimits>,
) -> Result<Incoming, CutOff> {
    let Some(limits) = limits else {
        let frame = recv
            .read_to_end(MAX_FRAME)
            .await
            .map(Bytes::from)
            .map_err(|e| WireError::new(ErrorCode::BadRequest, e.to_string()));
        return Ok(Incoming { frame, _held: None });
    };
    let stall = limits.stall;
    let stalled = |what: &str| CutOff(format!("stalled {} ms {what}", stall.as_millis()));
    let mut prefix = [0u8; 4];
    let read = tokio::time::timeout(stall, recv.read_exact(&mut prefix));
    if let Err(e) = read.await.map_err(|_| stalled("before the header"))? {
        return Ok(Incoming::broken(e, None));
    }
    let header_len = u32::from_le_bytes(prefix) as usize;
    if header_len > wire::MAX_HEADER {
        return Err(CutOff(format!(
            "sent a {header_len}-byte header (the limit is {})",
            wire::MAX_HEADER
        )));
    }
    let acquire = |n: usize| {
        let budget = limits.budget.clone();
        async move {
            let n = u32::try_from(n).map_err(|_| CutOff("request too large".into()))?;
            budget
                .acquire_many_owned(n)
                .await
                .map_err(|_| CutOff("server shutting down".into()))
        }
    };
    let mut held = acquire(4 + header_len).await?;
    let mut frame = Vec::with_capacity(4 + header_len);
    frame.extend_from_slice(&prefix);
    frame.resize(4 + header_len, 0);
    let read = tokio::time::timeout(stall, recv.read_exact(&mut frame[4..]));
    if let Err(e) = read.await.map_err(|_| stalled("in the header"))? {
        return Ok(Incoming::broken(e, Some(held)));
    }
    let limit = match wire::decode_header::<Request>(&frame[4..]) {
        Ok(request) => request.payload_limit(),
        Err(e) => {
            let error = WireError::new(ErrorCode::BadRequest, format!("malformed header: {e}"));
            return Ok(Incoming {
                frame: Err(error),
                _held: Some(held),
            });
        }
    };
    if limit > wire::MAX_PAYLOAD as u64 {
        let error = WireError::new(ErrorCode::BadRequest, "declared payload over the limit");
        return Ok(Incoming {
            frame: Err(error),
            _held: Some(held),
        });
    }
    // Invariant: limit <= MAX_PAYLOAD, which fits usize.
    let limit = limit as usize;
    held.merge(acquire(limit).await?);
    frame.reserve_exact(limit);
    let end = frame.len() + limit;
    loop {
        let read = tokio::time::timeout(stall, recv.read_chunk(limit + 1, true));
        let chunk = match read.await.map_err(|_| stalled("in the payload"))? {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => return Ok(Incoming::broken(e, Some(held))),
        };
        if frame.len() + chunk.bytes.len() > end {
            return Err(CutOff(format!(
                "sent more payload than its header declared ({limit} bytes)"
            )));
        }
        frame.extend_from_slice(&chunk.bytes);
    }
    Ok(Incoming {
        frame: Ok(Bytes::from(frame)),
        _held: Some(held),
    })
}

async fn serve_stream(
    node: Arc<Node>,
    peer: Arc<Caller>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    limits: Option<&ClientLimits>,
) -> Result<(), CutOff> {
    let incoming = read_request(&mut recv, limits).await?;
    let (kind, result) = match incoming.frame {
        Err(e) => ("unreadable", Err(e)),
        Ok(frame) => match wire::decode_frame::<Request>(&frame) {
            Err(e) => (
                "undecodable",
                Err(WireError::new(ErrorCode::BadRequest, e.to_string())),
            ),
            Ok((request, body)) => {
                let start = frame.len() - body.len();
                let payload = frame.slice(start..);
                let kind = request.kind();
                let result = handle(&node, &peer, request, payload).await;
                if let Err(e) = &result {
                    debug!(kind, error = %e, "request failed");
                }
                (kind, result)
            }
        },
    };
    let (response, payload) = match result {
        Ok(r) => {
            node.metrics.request(kind, "ok");
            r
        }
        Err(e) => {
            node.metrics.request(kind, &format!("{:?}", e.code));
            (Response::Error(e), Vec::new())
        }
    };
    let mut parts = Vec::with_capacity(payload.len() + 1);
    parts.push(Bytes::from(wire::encode_response(
        node.view().map.epoch,
        &response,
    )));
    parts.extend(payload);
    if send.write_all_chunks(&mut parts).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
    Ok(())
}

async fn handle(node: &Arc<Node>, caller: &Caller, request: Request, payload: Bytes) -> Reply {
    request
        .validate(&payload)
        .map_err(|e| WireError::new(ErrorCode::BadRequest, e.to_string()))?;
    authorize(caller, &node.view().map, &request)?;
    let peer = &caller.identity;
    let store = node.store.clone();
    match request {
        Request::Hello(Hello { protocol, .. }) => {
            if protocol != PROTOCOL_VERSION {
                return Err(WireError::new(
                    ErrorCode::VersionMismatch,
                    format!("server speaks protocol {PROTOCOL_VERSION}, client {protocol}"),
                ));
            }
            if let PeerIdentity::Node(n) = peer {
                node.peer_answered(*n);
            }
            answered::<Hello>(Welcome {
                protocol: PROTOCOL_VERSION,
                node: node.id,
                map: node.view().map.clone(),
            })
        }
        Request::Has(Has {
            repo,
            ids,
            local_only: true,
        }) => {
            let (r, i) = (repo.clone(), ids.clone());
            let present = node.blocking(move || store.has(&r, &i)).await?;
            protect_present(node, &repo, &ids, &present);
            answered::<Has>(present)
        }
        Request::Has(Has {
            repo,
            ids,
            local_only: false,
        }) => answered::<Has>(coordinate_has(node, repo, ids).await?),
        Request::PutBlobs(PutBlobs {
            repo,
            blobs,
            local_only,
        }) => {
            node.prune.protect(&repo, blobs.iter().map(|(id, _)| id));
            let mut items = Vec::with_capacity(blobs.len());
            let mut offset = 0usize;
            for (id, len) in blobs {
                let end = offset + len as usize;
                items.push((id, payload.slice(offset..end)));
                offset = end;
            }
            let copies = if local_only {
                let n = items.len();
                node.blocking(move || store.put_blobs(&repo, items)).await?;
                vec![1; n]
            } else {
                coordinate_put(node, repo, items).await?
            };
            answered::<PutBlobs>(copies)
        }
        Request::GetBlob(GetBlob { repo, id }) => {
            let (r, i) = (repo.clone(), id);
            match node.blocking(move || store.get_blob(&r, &i)).await {
                Ok(Some(blob)) => Ok((GetBlob::respond(()), vec![blob])),
                Ok(None) => Err(WireError::new(
                    ErrorCode::NotFound,
                    format!("no blob {id} here"),
                )),
                Err(e) if e.code == ErrorCode::Corrupt => {
                    quarantine(node, repo, id).await;
                    Err(e)
                }
                Err(e) => Err(e),
            }
        }
        Request::GetBlobs(GetBlobs { repo, ids }) => get_blobs(node, repo, ids).await,
        Request::PutSnapshot(PutSnapshot {
            repo,
            id,
            local_only,
            fence,
        }) => {
            // Stored with the agent that made it, so writers can be kept to
            // their own snapshots; records copied between nodes carry it.
            let value = match peer {
                PeerIdentity::Agent { agent, .. } => owned_record(agent, &payload),
                _ => payload,
            };
            put_snapshot_fenced(node, repo, id, value, local_only, fence).await
        }
        Request::ListSnapshots(ListSnapshots { repo }) => {
            node.records_synced().await;
            let (list, _) = node
                .blocking(move || snapshot_records(store.as_ref(), &repo))
                .await?;
            let (records, parts) = listed_snapshots(caller, list, 0)?;
            Ok((ListSnapshots::respond(records), parts))
        }
        Request::ListSnapshotsAndTombstones(ListSnapshotsAndTombstones { repo }) => {
            node.records_synced().await;
            let (list, dead) = node
                .blocking(move || snapshot_records(store.as_ref(), &repo))
                .await?;
            let dead_bytes = dead.len() * ringvault_common::listing::TOMBSTONE_BYTES;
            let (records, mut parts) = listed_snapshots(caller, list, dead_bytes)?;
            let tombstones = u32::try_from(dead.len()).map_err(|_| too_many_records())?;
            parts.push(Bytes::from(dead.concat()));
            let listing = SnapshotListing {
                records,
                tombstones,
            };
            Ok((ListSnapshotsAndTombstones::respond(listing), parts))
        }
        Request::GetSnapshot(GetSnapshot { repo, id }) => {
            node.records_synced().await;
            let stored = node
                .blocking(move || store.get_record(RecordKind::Snapshot, &repo, &id.0))
                .await?;
            match stored.as_deref().and_then(|v| snapshot_for(caller, v)) {
                Some(v) => Ok((GetSnapshot::respond(()), vec![Bytes::copy_from_slice(v)])),
                None => Err(WireError::new(
                    ErrorCode::NotFound,
                    format!("no snapshot {id} here"),
                )),
            }
        }
        Request::PutKey(PutKey {
            repo,
            id,
            local_only,
        }) => {
            put_record_everywhere(node, RecordKind::Key, repo, id, payload, local_only, true).await
        }
        Request::ListKeys(ListKeys { repo }) => {
            node.records_synced().await;
            let list = node
                .blocking(move || live_records(store.as_ref(), RecordKind::Key, &repo))
                .await?;
            let mut records = Vec::with_capacity(list.len());
            let mut parts = Vec::with_capacity(list.len());
            for (key, value) in list.into_iter().take(wire::MAX_RECORD_KEYS) {
                records.push((key, value.len() as u32));
                parts.push(Bytes::from(value));
            }
            Ok((ListKeys::respond(records), parts))
        }
        Request::DeleteKey(DeleteKey {
            repo,
            id,
            local_only,
        }) => delete_record_everywhere(node, RecordKind::Key, repo, id, local_only).await,
        Request::Digests(Digests {
            partitions,
            per_partition,
        }) => {
            let digests = node
                .blocking(move || Ok(store.digests(&partitions, per_partition)))
                .await?;
            answered::<Digests>(digests)
        }
        Request::ListPartition(ListPartition { partition, after }) => {
            let (keys, more) = node
                .blocking(move || store.list_partition(partition, after.as_ref(), MAX_LIST_KEYS))
                .await?;
            answered::<ListPartition>(KeyPage { keys, more })
        }
        Request::Copies(Copies { repo, ids }) => {
            answered::<Copies>(count_copies(node, repo, ids).await)
        }
        Request::NodeStatus(GetNodeStatus) => answered::<GetNodeStatus>(node.status()),
        Request::DeleteSnapshot(DeleteSnapshot {
            repo,
            id,
            local_only,
        }) => delete_record_everywhere(node, RecordKind::Snapshot, repo, id.0, local_only).await,
        Request::GetRecord(GetRecord { repo, kind, key }) => {
            let kind = RecordKind::from_u8(kind).ok_or_else(|| {
                WireError::new(ErrorCode::BadRequest, format!("no record kind {kind}"))
            })?;
            match node
                .blocking(move || store.get_record(kind, &repo, &key))
                .await?
            {
                Some(v) => Ok((GetRecord::respond(()), vec![Bytes::from(v)])),
                None => Err(WireError::new(ErrorCode::NotFound, "no such record here")),
            }
        }
        Request::BeginPrune(BeginPrune { repo, round }) => {
            node.prune.begin(&repo, round).await;
            answered::<BeginPrune>(())
        }
        Request::PruneMark(PruneMark { repo, round, ids }) => {
            node.prune.mark(&repo, round, ids)?;
            answered::<PruneMark>(())
        }
        Request::PruneSweep(PruneSweep {
            repo,
            round,
            grace_s,
            trash_keep_s,
        }) => {
            let report = crate::prune::sweep(node, repo, round, grace_s, trash_keep_s).await?;
            answered::<PruneSweep>(report)
        }
        Request::RestoreTrash(RestoreTrash { repo }) => {
            let n = node.blocking(move || store.restore_trash(&repo)).await?;
            if n > 0 {
                info!(blobs = n, "restored blobs from the trash");
            }
            answered::<RestoreTrash>(n)
        }
        Request::GcFence(GetGcFence { repo }) => answered::<GetGcFence>(node.prune.fence(&repo)),
        Request::Sizes(Sizes { repo, ids }) => {
            answered::<Sizes>(node.blocking(move || store.sizes(&repo, &ids)).await?)
        }
        Request::RecordKeys(RecordKeys { digest }) => {
            let mut keys = node.blocking(move || store.record_keys()).await?;
            if crate::store::record_keys_digest(&keys) == digest {
                return answered::<RecordKeys>(RecordKeyList {
                    keys: vec![],
                    same: true,
                });
            }
            if keys.len() > wire::MAX_RECORD_KEYS {
                warn!(
                    records = keys.len(),
                    "more records than one answer holds; copying the first {}",
                    wire::MAX_RECORD_KEYS
                );
                keys.truncate(wire::MAX_RECORD_KEYS);
            }
            answered::<RecordKeys>(RecordKeyList { keys, same: false })
        }
        Request::PrepareMap(PrepareMap {
            epoch,
            digest,
            base,
        }) => {
            let committed = node.view().map.epoch;
            let (granted, highest) = node
                .membership
                .prepare(committed, epoch, digest, base)
                .map_err(|e| {
                    warn!(error = %e, "cannot keep a map promise");
                    WireError::new(ErrorCode::Internal, "cannot keep the promise on disk")
                })?;
            info!(epoch, base, granted, highest, ?peer, "map change proposed");
            answered::<PrepareMap>(Promise { granted, highest })
        }
        Request::CommitMap(CommitMap { map }) => {
            let current = node.view().map.clone();
            if map.epoch == current.epoch && map.digest() == current.digest() {
                return answered::<CommitMap>(());
            }
            if map.epoch <= current.epoch {
                return Err(WireError::new(
                    ErrorCode::MapConflict,
                    format!(
                        "this server already has map epoch {}; propose again from it",
                        current.epoch
                    ),
                ));
            }
            node.membership
                .check_promised(&map)
                .map_err(|e| WireError::new(ErrorCode::MapConflict, e.to_string()))?;
            node.adopt(map).map_err(|e| {
                warn!(error = %e, "cannot adopt the committed map");
                WireError::new(ErrorCode::Internal, "cannot store the map on disk")
            })?;
            answered::<CommitMap>(())
        }
    }
}

/// `answer` as `R`'s response, with no payload.
fn answered<R: Rpc>(answer: R::Response) -> Reply {
    Ok((R::respond(answer), vec![]))
}

/// A revoked certificate may do nothing; agents may act on their own
/// repository only, as far as their role allows ([`Role`]: readers read,
/// writers also add, admins also delete and manage keys); server-to-server
/// requests need a node certificate; map changes need a node or an
/// operator.
fn authorize(caller: &Caller, map: &ClusterMap, request: &Request) -> Result<(), WireError> {
    let forbidden = |m: String| Err(WireError::new(ErrorCode::Forbidden, m));
    if map.is_revoked(&caller.fingerprint) {
        return forbidden(format!(
            "certificate {} is revoked in cluster map epoch {}",
            caller.fingerprint, map.epoch
        ));
    }
    let access = request.access();
    match &caller.identity {
        PeerIdentity::Node(_) => Ok(()),
        PeerIdentity::Operator(_) => match access {
            Access::Map => Ok(()),
            _ if matches!(
                request,
                Request::Hello(Hello { .. }) | Request::NodeStatus(GetNodeStatus)
            ) =>
            {
                Ok(())
            }
            _ => forbidden(format!(
                "operators may not send {} requests",
                request.kind()
            )),
        },
        PeerIdentity::Agent { repo, role, .. } => {
            let allowed = match access {
                Access::Internal | Access::Map => {
                    return forbidden(format!(
                        "agents may not send {} requests (server-to-server or operator only)",
                        request.kind()
                    ));
                }
                Access::Read => true,
                Access::Write => *role >= Role::Writer,
                Access::Manage => *role == Role::Admin,
            };
            if !allowed {
                return forbidden(format!(
                    "a {role} certificate may not send {} requests (needs the {} role)",
                    request.kind(),
                    if access == Access::Write {
                        "writer or admin"
                    } else {
                        "admin"
                    }
                ));
            }
            match request.repo() {
                Some(r) if r != repo => forbidden(format!(
                    "this certificate is for repository {repo}, not {r}"
                )),
                _ => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::test_callers::agent;
    use ringvault_common::{ChunkId, NodeId, RepoId};

    #[test]
    fn roles_and_revocation_gate_requests() {
        let repo = RepoId::new("r").unwrap();
        let mut map = ClusterMap {
            epoch: 1,
            replicas: 1,
            write_quorum: 1,
            revoked: vec![],
            nodes: vec![ringvault_common::placement::NodeInfo {
                id: NodeId(1),
                address: "127.0.0.1:1".into(),
                weight: 1,
                zone: String::new(),
            }],
        };
        let get = Request::GetBlob(GetBlob {
            repo: repo.clone(),
            id: ChunkId([0; 32]),
        });
        let put = Request::PutBlobs(PutBlobs {
            repo: repo.clone(),
            blobs: vec![],
            local_only: false,
        });
        let forget = Request::DeleteSnapshot(DeleteSnapshot {
            repo: repo.clone(),
            id: ringvault_common::SnapshotId([0; 32]),
            local_only: false,
        });
        let allowed = |c: &Caller, r: &Request, m: &ClusterMap| authorize(c, m, r).is_ok();
        let (reader, writer, admin) = (
            agent("a", Role::Reader),
            agent("a", Role::Writer),
            agent("a", Role::Admin),
        );
        assert!(allowed(&reader, &get, &map) && !allowed(&reader, &put, &map));
        assert!(allowed(&writer, &put, &map) && !allowed(&writer, &forget, &map));
        assert!(allowed(&admin, &forget, &map));
        let other_repo = Request::GetBlob(GetBlob {
            repo: RepoId::new("s").unwrap(),
            id: ChunkId([0; 32]),
        });
        assert!(!allowed(&admin, &other_repo, &map));
        let internal = Request::Has(Has {
            repo,
            ids: vec![],
            local_only: true,
        });
        assert!(!allowed(&admin, &internal, &map));
        map.revoked.push("f".repeat(64));
        assert!(!allowed(&admin, &get, &map));
        let e = authorize(&admin, &map, &get).unwrap_err();
        assert!(e.message.contains("revoked"), "{}", e.message);
    }
}
