//! The request loop: accepts connections, checks who is calling, answers
//! requests, and coordinates replicated writes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use quinn::{Connection, Endpoint};
use ringvault_common::placement::ClusterMap;
use ringvault_common::tls::PeerIdentity;
use ringvault_common::wire::{
    self, ErrorCode, MAX_FRAME, PROTOCOL_VERSION, Request, Response, WireError,
};
use ringvault_common::{ChunkId, NodeId, RepoId};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::net::{self, CallError};
use crate::store::{ChunkStore, RecordKind, StoreError};

/// How long a client has to send a whole request, and we to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The key record's key in the records table.
const KEY_RECORD: [u8; 32] = [0; 32];

/// One chunk server: its identity, map, store and connections to its peers.
pub struct Node {
    id: NodeId,
    map: ClusterMap,
    store: Arc<dyn ChunkStore>,
    peers: net::Peers,
    replica_timeout: Duration,
}

/// How long a peer that failed to connect is not tried again.
const PEER_DOWN_FOR: Duration = Duration::from_secs(10);
/// How long connecting to a peer may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl Node {
    /// Makes a node. `endpoint` is used both to serve and to reach peers.
    pub fn new(
        id: NodeId,
        map: ClusterMap,
        store: Arc<dyn ChunkStore>,
        endpoint: Endpoint,
        replica_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            map,
            store,
            peers: net::Peers::new(endpoint, PEER_CONNECT_TIMEOUT, PEER_DOWN_FOR),
            replica_timeout,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }
}

/// Serves requests on the node's endpoint until `shutdown` completes, then
/// closes connections and waits (bounded) for them to drain.
///
/// # Errors
/// Never in practice; the signature leaves room for fatal endpoint errors.
pub async fn run(node: Arc<Node>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let endpoint = node.peers.endpoint().clone();
    info!(node = %node.id, addr = ?endpoint.local_addr().ok(), "chunk server listening");
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
    endpoint.close(0u32.into(), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    Ok(())
}

async fn serve_connection(node: Arc<Node>, conn: Connection) {
    let peer = match net::peer_identity(&conn) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "refusing peer without a ringvault identity");
            conn.close(1u32.into(), b"no ringvault identity");
            return;
        }
    };
    debug!(?peer, "connected");
    while let Ok((send, recv)) = conn.accept_bi().await {
        let node = node.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(REQUEST_TIMEOUT, serve_stream(node, peer, send, recv)).await;
        });
    }
}

async fn serve_stream(
    node: Arc<Node>,
    peer: PeerIdentity,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (response, payload) = match recv.read_to_end(MAX_FRAME).await {
        Err(e) => (
            Response::Error(WireError::new(ErrorCode::BadRequest, e.to_string())),
            Vec::new(),
        ),
        Ok(frame) => {
            let frame = Bytes::from(frame);
            match wire::decode_frame::<Request>(&frame) {
                Err(e) => (
                    Response::Error(WireError::new(ErrorCode::BadRequest, e.to_string())),
                    Vec::new(),
                ),
                Ok((request, body)) => {
                    let start = frame.len() - body.len();
                    let payload = frame.slice(start..);
                    let kind = request.kind();
                    match handle(&node, &peer, request, payload).await {
                        Ok(r) => r,
                        Err(e) => {
                            debug!(kind, error = %e, "request failed");
                            (Response::Error(e), Vec::new())
                        }
                    }
                }
            }
        }
    };
    let mut parts = Vec::with_capacity(payload.len() + 1);
    parts.push(Bytes::from(wire::encode_header(&response)));
    parts.extend(payload);
    if send.write_all_chunks(&mut parts).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

type Reply = Result<(Response, Vec<Bytes>), WireError>;

fn store_err(e: StoreError) -> WireError {
    match e {
        StoreError::Corrupt { id } => {
            warn!(chunk = %id, "stored blob failed its checksum");
            WireError::new(
                ErrorCode::Corrupt,
                format!("blob {id} failed its checksum on this server"),
            )
        }
        StoreError::Exists => {
            WireError::new(ErrorCode::Exists, "a different record is already stored")
        }
        e => {
            warn!(error = %e, "store error");
            WireError::new(ErrorCode::Internal, "storage error on the server")
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, WireError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| WireError::new(ErrorCode::Internal, "store task failed"))?
        .map_err(store_err)
}

async fn handle(node: &Arc<Node>, peer: &PeerIdentity, request: Request, payload: Bytes) -> Reply {
    request
        .validate(&payload)
        .map_err(|e| WireError::new(ErrorCode::BadRequest, e.to_string()))?;
    authorize(peer, &request)?;
    let store = node.store.clone();
    match request {
        Request::Hello { protocol, .. } => {
            if protocol != PROTOCOL_VERSION {
                return Err(WireError::new(
                    ErrorCode::VersionMismatch,
                    format!("server speaks protocol {PROTOCOL_VERSION}, client {protocol}"),
                ));
            }
            Ok((
                Response::Hello {
                    protocol: PROTOCOL_VERSION,
                    node: node.id,
                    map: node.map.clone(),
                },
                vec![],
            ))
        }
        Request::Has {
            repo,
            ids,
            local_only: true,
        } => {
            let present = blocking(move || store.has(&repo, &ids)).await?;
            Ok((Response::Has { present }, vec![]))
        }
        Request::Has {
            repo,
            ids,
            local_only: false,
        } => {
            let present = coordinate_has(node, repo, ids).await?;
            Ok((Response::Has { present }, vec![]))
        }
        Request::PutBlobs {
            repo,
            blobs,
            local_only,
        } => {
            let mut items = Vec::with_capacity(blobs.len());
            let mut offset = 0usize;
            for (id, len) in blobs {
                let end = offset + len as usize;
                items.push((id, payload.slice(offset..end)));
                offset = end;
            }
            let copies = if local_only {
                let n = items.len();
                blocking(move || store.put_blobs(&repo, items)).await?;
                vec![1; n]
            } else {
                coordinate_put(node, repo, items).await?
            };
            Ok((Response::Put { copies }, vec![]))
        }
        Request::GetBlob { repo, id } => {
            match blocking(move || store.get_blob(&repo, &id)).await? {
                Some(blob) => Ok((Response::Data, vec![blob])),
                None => Err(WireError::new(
                    ErrorCode::NotFound,
                    format!("no blob {id} here"),
                )),
            }
        }
        Request::PutSnapshot {
            repo,
            id,
            local_only,
        } => {
            put_record_everywhere(
                node,
                RecordKind::Snapshot,
                repo,
                id.0,
                payload,
                local_only,
                false,
            )
            .await
        }
        Request::ListSnapshots { repo } => {
            let list = blocking(move || store.list_records(RecordKind::Snapshot, &repo)).await?;
            let mut records = Vec::with_capacity(list.len());
            let mut parts = Vec::with_capacity(list.len());
            let mut total = 0usize;
            for (key, value) in list {
                total += value.len();
                if total > wire::MAX_PAYLOAD {
                    return Err(WireError::new(
                        ErrorCode::Internal,
                        "too many snapshot records for one reply",
                    ));
                }
                records.push((ringvault_common::SnapshotId(key), value.len() as u32));
                parts.push(Bytes::from(value));
            }
            Ok((Response::Snapshots { records }, parts))
        }
        Request::GetSnapshot { repo, id } => {
            match blocking(move || store.get_record(RecordKind::Snapshot, &repo, &id.0)).await? {
                Some(v) => Ok((Response::Data, vec![Bytes::from(v)])),
                None => Err(WireError::new(
                    ErrorCode::NotFound,
                    format!("no snapshot {id} here"),
                )),
            }
        }
        Request::PutKey { repo, local_only } => {
            put_record_everywhere(
                node,
                RecordKind::Key,
                repo,
                KEY_RECORD,
                payload,
                local_only,
                true,
            )
            .await
        }
        Request::GetKey { repo } => {
            let name = repo.to_string();
            match blocking(move || store.get_record(RecordKind::Key, &repo, &KEY_RECORD)).await? {
                Some(v) => Ok((Response::Data, vec![Bytes::from(v)])),
                None => Err(WireError::new(
                    ErrorCode::NotFound,
                    format!("repository {name} has no key on this server (run `ringvault init`)"),
                )),
            }
        }
    }
}

/// Agents may act on their own repository only; server-to-server requests
/// need a node certificate.
fn authorize(peer: &PeerIdentity, request: &Request) -> Result<(), WireError> {
    match peer {
        PeerIdentity::Node(_) => Ok(()),
        PeerIdentity::Agent { repo, .. } => {
            if request.is_internal() {
                return Err(WireError::new(
                    ErrorCode::Forbidden,
                    "agents may not send server-to-server requests",
                ));
            }
            match request.repo() {
                Some(r) if r != repo => Err(WireError::new(
                    ErrorCode::Forbidden,
                    format!("this certificate is for repository {repo}, not {r}"),
                )),
                _ => Ok(()),
            }
        }
    }
}

impl Node {
    async fn call_peer(
        &self,
        id: NodeId,
        request: &Request,
        payload: Vec<Bytes>,
    ) -> Result<(Response, Bytes), CallError> {
        let addr = self.map.address(id).ok_or_else(|| CallError::Connect {
            addr: id.to_string(),
            reason: "not in the cluster map".into(),
        })?;
        // Has-queries are cheap: a replica slower than this is treated as
        // not holding the chunk rather than stalling the agent's request.
        let timeout = match request {
            Request::Has { .. } => self.replica_timeout.min(Duration::from_secs(5)),
            _ => self.replica_timeout,
        };
        self.peers.call(id, addr, request, payload, timeout).await
    }
}

/// Asks every replica which ids it holds; an id is present with W copies.
async fn coordinate_has(
    node: &Arc<Node>,
    repo: RepoId,
    ids: Vec<ChunkId>,
) -> Result<Vec<bool>, WireError> {
    let by_node = node.map.group_by_replica(&ids);
    let mut asks = FuturesUnordered::new();
    for (target, idxs) in by_node {
        let node = node.clone();
        let repo = repo.clone();
        let sub: Vec<ChunkId> = idxs.iter().map(|&i| ids[i]).collect();
        asks.push(async move {
            let answer = if target == node.id {
                let store = node.store.clone();
                blocking(move || store.has(&repo, &sub)).await.ok()
            } else {
                let req = Request::Has {
                    repo,
                    ids: sub,
                    local_only: true,
                };
                match node.call_peer(target, &req, vec![]).await {
                    Ok((Response::Has { present }, _)) if present.len() == idxs.len() => {
                        Some(present)
                    }
                    Ok(_) => None,
                    Err(e) => {
                        debug!(node = %target, error = %e, "has query to replica failed");
                        None
                    }
                }
            };
            (idxs, answer)
        });
    }
    let mut counts = vec![0u32; ids.len()];
    while let Some((idxs, answer)) = asks.next().await {
        if let Some(present) = answer {
            for (i, p) in idxs.into_iter().zip(present) {
                counts[i] += u32::from(p);
            }
        }
    }
    let w = node.map.write_quorum;
    Ok(counts.into_iter().map(|c| c >= w).collect())
}

/// Stores each blob on its N replicas (locally when this node is one) and
/// answers as soon as every blob has W durable copies, or every replica has
/// answered. Replica writes still in flight finish in the background.
async fn coordinate_put(
    node: &Arc<Node>,
    repo: RepoId,
    items: Vec<(ChunkId, Bytes)>,
) -> Result<Vec<u32>, WireError> {
    let by_node = node.map.group_by_replica(items.iter().map(|(id, _)| id));
    let mut writes = FuturesUnordered::new();
    for (target, idxs) in by_node {
        let node = node.clone();
        let repo = repo.clone();
        let batch: Vec<(ChunkId, Bytes)> = idxs.iter().map(|&i| items[i].clone()).collect();
        // Spawned, so a replica write outlives an early answer.
        writes.push(tokio::spawn(async move {
            let ok = replicate(&node, target, repo, batch).await;
            (idxs, ok)
        }));
    }
    let w = node.map.write_quorum;
    let mut copies = vec![0u32; items.len()];
    while let Some(done) = writes.next().await {
        let Ok((idxs, ok)) = done else { continue };
        if ok {
            for i in idxs {
                copies[i] += 1;
            }
        }
        if copies.iter().all(|&c| c >= w) {
            break;
        }
    }
    if let Some(short) = copies.iter().position(|&c| c < w) {
        warn!(chunk = %items[short].0, copies = copies[short], w, "write quorum not reached");
    }
    Ok(copies)
}

async fn replicate(
    node: &Arc<Node>,
    target: NodeId,
    repo: RepoId,
    batch: Vec<(ChunkId, Bytes)>,
) -> bool {
    if target == node.id {
        let store = node.store.clone();
        return blocking(move || store.put_blobs(&repo, batch))
            .await
            .is_ok();
    }
    let blobs = batch.iter().map(|(id, b)| (*id, b.len() as u32)).collect();
    let payload = batch.into_iter().map(|(_, b)| b).collect();
    let req = Request::PutBlobs {
        repo,
        blobs,
        local_only: true,
    };
    match node.call_peer(target, &req, payload).await {
        Ok((Response::Put { .. }, _)) => true,
        Ok(other) => {
            warn!(node = %target, ?other, "unexpected reply to a replica write");
            false
        }
        Err(e) => {
            warn!(node = %target, error = %e, "replica write failed");
            false
        }
    }
}

/// Stores a small record here and, unless `local_only`, on every other node;
/// succeeds once W nodes hold it.
async fn put_record_everywhere(
    node: &Arc<Node>,
    kind: RecordKind,
    repo: RepoId,
    key: [u8; 32],
    value: Bytes,
    local_only: bool,
    exclusive: bool,
) -> Reply {
    let store = node.store.clone();
    let (r, v) = (repo.clone(), value.clone());
    blocking(move || store.put_record(kind, &r, &key, &v, exclusive)).await?;
    if local_only {
        return Ok((Response::Ok, vec![]));
    }
    let mut sends = FuturesUnordered::new();
    for other in node
        .map
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&n| n != node.id)
    {
        let node = node.clone();
        let req = match kind {
            RecordKind::Snapshot => Request::PutSnapshot {
                repo: repo.clone(),
                id: ringvault_common::SnapshotId(key),
                local_only: true,
            },
            RecordKind::Key => Request::PutKey {
                repo: repo.clone(),
                local_only: true,
            },
        };
        let value = value.clone();
        sends.push(tokio::spawn(async move {
            match node.call_peer(other, &req, vec![value]).await {
                Ok(_) => Ok(()),
                Err(CallError::Remote(e)) if e.code == ErrorCode::Exists => Err(Some(e)),
                Err(e) => {
                    warn!(node = %other, error = %e, "record copy failed");
                    Err(None)
                }
            }
        }));
    }
    let w = node.map.write_quorum;
    let mut held = 1u32;
    while held < w {
        match sends.next().await {
            None => break,
            Some(Ok(Ok(()))) => held += 1,
            Some(Ok(Err(Some(e)))) => return Err(e),
            Some(_) => {}
        }
    }
    if held < w {
        return Err(WireError::new(
            ErrorCode::QuorumNotReached,
            format!("only {held} of the required {w} servers stored the record"),
        ));
    }
    Ok((Response::Ok, vec![]))
}
