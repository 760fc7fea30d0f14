//! The request loop: accepts connections, checks who is calling, answers
//! requests, and coordinates replicated writes.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use quinn::{Connection, Endpoint};
use ringvault_common::placement::ClusterMap;
use ringvault_common::tls::{PeerIdentity, Role};
use ringvault_common::wire::{
    self, Access, BlobReply, ErrorCode, GcFence, MAX_FRAME, MAX_LIST_KEYS, NodeStatus,
    PROTOCOL_VERSION, PeerState, Request, Response, WireError,
};
use ringvault_common::{ChunkId, NodeId, RepoId};
use tokio::sync::Notify;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::store::{ChunkStore, RecordKind, StoreError};
use ringvault_net::quic::{self, CallError};

/// How long a client has to send a whole request, and we to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The key record's key in the records table.
/// How long connecting to a peer may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Timings and rates of a node (from `chunkserver.toml`; see
/// `config/chunkserver.toml` for each).
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a coordinator waits for a replica write.
    pub replica_timeout: Duration,
    /// How long a peer that failed is routed around.
    pub route_around: Duration,
    /// How long a peer must stay unreachable to be treated as out.
    pub out_after: Duration,
    /// How often peers are probed.
    pub probe_interval: Duration,
    /// Pause between maintenance rounds.
    pub repair_interval: Duration,
    /// Repair and handoff rate, bytes per second (0: no limit).
    pub repair_bytes_per_s: u64,
    /// Scrub cycle; zero turns scrub off.
    pub scrub_cycle: Duration,
    /// Most bytes per second scrub reads.
    pub scrub_bytes_per_s: u64,
    /// How long a client may leave a begun request unsent before its
    /// connection is cut.
    pub stall_timeout: Duration,
    /// Most request bytes one client connection may have buffered here.
    pub connection_budget: usize,
}

impl Default for Settings {
    fn default() -> Self {
        let c = ringvault_common::config::ChunkserverConfig::default();
        Self::from_config(&c)
    }
}

impl Settings {
    /// The settings of a config file.
    pub fn from_config(c: &ringvault_common::config::ChunkserverConfig) -> Self {
        Self {
            replica_timeout: Duration::from_millis(c.replica_timeout_ms),
            route_around: Duration::from_millis(c.route_around_ms),
            out_after: Duration::from_secs(c.out_after_s),
            probe_interval: Duration::from_millis(c.probe_interval_ms),
            repair_interval: Duration::from_millis(c.repair_interval_ms),
            repair_bytes_per_s: c.repair_bytes_per_s,
            scrub_cycle: Duration::from_secs(c.scrub_cycle_s),
            scrub_bytes_per_s: c.scrub_bytes_per_s,
            stall_timeout: Duration::from_millis(c.stall_timeout_ms),
            connection_budget: usize::try_from(c.connection_budget_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// The placement a node works with: its committed map, the nodes it treats
/// as out, and the owners of every partition without them.
pub struct View {
    /// The committed cluster map.
    pub map: ClusterMap,
    /// Nodes unreachable past `out-after-s`.
    pub out: BTreeSet<NodeId>,
    /// `map` without `out`: where chunks live now.
    pub effective: ClusterMap,
    /// Owners of each of the 2^16 partitions under `effective`, best first.
    owners: Vec<Vec<NodeId>>,
    /// Owners under the previous epoch while blobs move after a change:
    /// writes go to them too.
    previous: Option<Vec<Vec<NodeId>>>,
}

impl View {
    fn new(map: ClusterMap, out: BTreeSet<NodeId>, previous: Option<Vec<Vec<NodeId>>>) -> Self {
        let effective = map.without(&out);
        let owners = effective.owner_table();
        Self {
            map,
            out,
            effective,
            owners,
            previous,
        }
    }

    /// The owners of `partition`, best first.
    pub fn owners(&self, partition: u16) -> &[NodeId] {
        &self.owners[usize::from(partition)]
    }

    /// Whether blobs are moving after a map change (writes also go to the
    /// previous owners).
    pub fn has_move(&self) -> bool {
        self.previous.is_some()
    }

    /// Owners of `partition` under the previous epoch that are not owners
    /// now (empty when no move is under way).
    pub fn previous_owners(&self, partition: u16) -> Vec<NodeId> {
        let now = self.owners(partition);
        self.previous
            .as_ref()
            .map(|p| {
                p[usize::from(partition)]
                    .iter()
                    .copied()
                    .filter(|n| !now.contains(n) && self.effective.node(*n).is_some())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One chunk server: its identity, map, store and connections to its peers.
pub struct Node {
    id: NodeId,
    store: Arc<dyn ChunkStore>,
    pub(crate) peers: quic::Peers,
    pub(crate) settings: Settings,
    view: RwLock<Arc<View>>,
    membership: Membership,
    /// When each peer last answered.
    last_ok: Mutex<HashMap<NodeId, Instant>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Blobs known missing here, to be pulled from co-replicas.
    pub(crate) repair_backlog: AtomicU64,
    /// Blobs held for other owners, as of the last handoff pass.
    pub(crate) hints: AtomicU64,
    /// Bytes checked by scrub in the current cycle.
    pub(crate) scrub_bytes: AtomicU64,
    /// Scrub cycles completed since start.
    pub(crate) scrub_cycles: AtomicU64,
    /// Replica writes in flight.
    replicating: AtomicU64,
    /// Wakes the maintenance loop early (a blob was quarantined, a map
    /// changed, a peer came back).
    pub(crate) wake: Notify,
    /// Prune rounds in progress.
    pub(crate) prune: crate::prune::Rounds,
    /// Whether the record sync at start has ended, done or given up
    /// ([`Node::records_synced`]).
    synced_at_start: tokio::sync::watch::Sender<bool>,
}

impl Node {
    /// Makes a node. `endpoint` is used both to serve and to reach peers.
    /// `state_dir` keeps the committed map and map promises (the data
    /// directory; `None` keeps them in memory only). The map used is the
    /// newer of `map` and the one committed there.
    ///
    /// # Errors
    /// When the membership state in `state_dir` cannot be read.
    pub fn new(
        id: NodeId,
        map: ClusterMap,
        store: Arc<dyn ChunkStore>,
        endpoint: Endpoint,
        settings: Settings,
        state_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Arc<Self>> {
        let (membership, kept) = Membership::load(state_dir)?;
        let map = match kept {
            Some(k) if k.epoch > map.epoch => k,
            _ => map,
        };
        let now = Instant::now();
        let last_ok = map.nodes.iter().map(|n| (n.id, now)).collect();
        Ok(Arc::new(Self {
            id,
            store,
            peers: quic::Peers::new(endpoint, PEER_CONNECT_TIMEOUT, settings.route_around),
            settings,
            view: RwLock::new(Arc::new(View::new(map, BTreeSet::new(), None))),
            membership,
            last_ok: Mutex::new(last_ok),
            metrics: Arc::new(Metrics::new()),
            repair_backlog: AtomicU64::new(0),
            hints: AtomicU64::new(0),
            scrub_bytes: AtomicU64::new(0),
            scrub_cycles: AtomicU64::new(0),
            replicating: AtomicU64::new(0),
            wake: Notify::new(),
            prune: crate::prune::Rounds::new(boot_nonce()),
            synced_at_start: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// Waits until the record sync this node runs at start has ended (see
    /// [`crate::maintenance::START_SYNC_LIMIT`]), and at most that long.
    /// Call before answering a listing of records, so a server back from a
    /// stop does not list what was forgotten while it was away.
    pub(crate) async fn records_synced(&self) {
        let mut done = self.synced_at_start.subscribe();
        let waited =
            tokio::time::timeout(crate::maintenance::START_SYNC_LIMIT, done.wait_for(|d| *d)).await;
        if waited.is_err() {
            debug!("answering a listing before the record sync at start ended");
        }
    }

    /// Notes that the record sync at start has ended: listings stop waiting.
    pub(crate) fn end_start_sync(&self) {
        self.synced_at_start.send_replace(true);
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    /// The current view (map, out nodes, owners).
    pub fn view(&self) -> Arc<View> {
        self.view
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set_view(&self, view: View) {
        let mut slot = self.view.write().unwrap_or_else(|p| p.into_inner());
        *slot = Arc::new(view);
    }

    /// Adopts `map` if its epoch is newer: persists it, then switches
    /// placement, keeping the old owners as write targets while blobs move.
    /// Returns whether it was adopted.
    ///
    /// # Errors
    /// When the map cannot be persisted (then it is not adopted).
    pub fn adopt(&self, map: ClusterMap) -> anyhow::Result<bool> {
        let old = self.view();
        if map.epoch <= old.map.epoch {
            return Ok(false);
        }
        map.validate()?;
        self.membership.persist(&map)?;
        info!(
            from = old.map.epoch,
            to = map.epoch,
            nodes = map.nodes.len(),
            "adopting a new cluster map"
        );
        if let Ok(mut seen) = self.last_ok.lock() {
            let now = Instant::now();
            for n in &map.nodes {
                seen.entry(n.id).or_insert(now);
            }
        }
        let out = old
            .out
            .iter()
            .copied()
            .filter(|n| map.node(*n).is_some())
            .collect();
        self.set_view(View::new(map, out, Some(old.owners.clone())));
        self.wake.notify_one();
        Ok(true)
    }

    /// Ends the move after a map change: writes go to the new owners only.
    pub(crate) fn end_move(&self) {
        let v = self.view();
        if v.previous.is_some() {
            info!(
                epoch = v.map.epoch,
                "every blob here is with its new owners"
            );
            self.set_view(View::new(v.map.clone(), v.out.clone(), None));
        }
    }

    /// Notes that `peer` answered.
    pub(crate) fn peer_answered(&self, peer: NodeId) {
        if let Ok(mut seen) = self.last_ok.lock() {
            seen.insert(peer, Instant::now());
        }
    }

    /// Recomputes which peers are out (unreachable past `out_after`) and
    /// switches placement when that changed.
    pub(crate) fn update_out(&self) {
        let view = self.view();
        let out: BTreeSet<NodeId> = {
            let seen = self.last_ok.lock().unwrap_or_else(|p| p.into_inner());
            view.map
                .nodes
                .iter()
                .map(|n| n.id)
                .filter(|&n| {
                    n != self.id
                        && seen
                            .get(&n)
                            .is_some_and(|t| t.elapsed() >= self.settings.out_after)
                })
                .collect()
        };
        if out != view.out {
            warn!(
                ?out,
                "nodes out (unreachable past out-after-s); re-replicating their chunks"
            );
            self.set_view(View::new(view.map.clone(), out, view.previous.clone()));
            self.wake.notify_one();
        }
    }

    /// How this node sees `peer`.
    pub fn peer_state(&self, peer: NodeId) -> PeerState {
        if self.view().out.contains(&peer) {
            PeerState::Out
        } else if self.peers.is_down(peer) {
            PeerState::Down
        } else {
            PeerState::Up
        }
    }

    /// Whether `peer` is routed around (down or out).
    pub(crate) fn is_down(&self, peer: NodeId) -> bool {
        peer != self.id && self.peer_state(peer) != PeerState::Up
    }

    /// When routing around the peers thought down would leave fewer than
    /// W nodes, stops routing around them, so a write tries them once more
    /// rather than fail its quorum on a stale view (a peer restarted since
    /// its last probe). A peer that is really down costs one connect
    /// timeout and is marked down again.
    fn try_down_peers_if_short(&self, view: &View) {
        let nodes: Vec<NodeId> = view.effective.nodes.iter().map(|n| n.id).collect();
        let live = nodes.iter().filter(|&&n| !self.is_down(n)).count();
        if live < view.map.write_quorum as usize {
            for n in nodes {
                if n != self.id && self.peers.is_down(n) {
                    debug!(node = %n, "too few live peers for W: trying a peer thought down");
                    self.peers.mark_up(n);
                }
            }
        }
    }

    /// What this node reports about itself.
    pub fn status(&self) -> NodeStatus {
        let view = self.view();
        let (blobs, bytes) = self.store.stats().unwrap_or((0, 0));
        let health = self.store.health();
        NodeStatus {
            node: self.id,
            epoch: view.map.epoch,
            blobs,
            bytes,
            hints: self.hints.load(Ordering::Relaxed),
            repair_backlog: self.repair_backlog.load(Ordering::Relaxed),
            quarantined: self.store.quarantined(),
            scrub_bytes: self.scrub_bytes.load(Ordering::Relaxed),
            scrub_cycles: self.scrub_cycles.load(Ordering::Relaxed),
            peers: view
                .map
                .nodes
                .iter()
                .filter(|n| n.id != self.id)
                .map(|n| (n.id, self.peer_state(n.id)))
                .collect(),
            store: health.state,
            store_error: health.error.unwrap_or_default(),
            store_error_at: health.error_at_s,
            free_bytes: health.free_bytes,
            peers_silent_s: self.silent_peers(&view),
            out_after_s: self.settings.out_after.as_secs(),
        }
    }

    /// Every peer of `view` not seen up, with the seconds since it last
    /// answered this node (or since this node started).
    fn silent_peers(&self, view: &View) -> Vec<(NodeId, u64)> {
        let seen = self.last_ok.lock().unwrap_or_else(|p| p.into_inner());
        view.map
            .nodes
            .iter()
            .filter(|n| n.id != self.id && self.peer_state(n.id) != PeerState::Up)
            .map(|n| (n.id, seen.get(&n.id).map_or(0, |t| t.elapsed().as_secs())))
            .collect()
    }

    /// Runs a store call on the blocking pool (see [`run_store_call`]).
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, WireError> {
        run_store_call(&self.store, f).await
    }
}

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
        StoreError::Full { quota } => WireError::new(
            ErrorCode::StoreFull,
            format!("this server's store is full (quota-bytes = {quota})"),
        ),
        // The index ran out of space: no watermark was involved.
        StoreError::DiskFull {
            free: 0,
            min_free: 0,
        } => WireError::new(
            ErrorCode::StoreFull,
            "this server's store is full (no space left on its file system)",
        ),
        StoreError::DiskFull { free, min_free } => WireError::new(
            ErrorCode::StoreFull,
            format!(
                "this server's store is full ({free} bytes free on its file system, min-free keeps {min_free})"
            ),
        ),
        // The cause goes to the client, which names the server: the file's
        // name, not its path.
        StoreError::Io { path, source } => {
            warn!(path = %path.display(), error = %source, "store I/O error");
            let file = path
                .file_name()
                .map_or_else(|| "the store".into(), |n| n.to_string_lossy().into_owned());
            WireError::new(
                ErrorCode::Internal,
                format!("storage error: I/O on {file}: {source}"),
            )
        }
        e => {
            warn!(error = %e, "store error");
            WireError::new(ErrorCode::Internal, format!("storage error: {e}"))
        }
    }
}

/// Runs a store call on the blocking pool and turns its error into a wire
/// error. A call that panics (redb on a damaged page, say) marks `store`
/// failing until restart, so the panic shows in the node's status rather
/// than vanishing with its task, and answers [`ErrorCode::Internal`].
pub(crate) async fn run_store_call<T: Send + 'static>(
    store: &Arc<dyn ChunkStore>,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, WireError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(store_err),
        Err(e) => {
            if e.is_panic() {
                let what = panic_message(e.into_panic());
                tracing::error!(panic = %what, "a store call panicked; the store reports failing until the server restarts");
                store.mark_failing(&format!("a store call panicked: {what}"));
            }
            Err(WireError::new(ErrorCode::Internal, "store task failed"))
        }
    }
}

/// The message of a panic payload, if it is text.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_owned(), |s| (*s).to_owned()),
    }
}

async fn handle(node: &Arc<Node>, caller: &Caller, request: Request, payload: Bytes) -> Reply {
    request
        .validate(&payload)
        .map_err(|e| WireError::new(ErrorCode::BadRequest, e.to_string()))?;
    authorize(caller, &node.view().map, &request)?;
    let peer = &caller.identity;
    let store = node.store.clone();
    match request {
        Request::Hello { protocol, .. } => {
            if protocol != PROTOCOL_VERSION {
                return Err(WireError::new(
                    ErrorCode::VersionMismatch,
                    format!("server speaks protocol {PROTOCOL_VERSION}, client {protocol}"),
                ));
            }
            if let PeerIdentity::Node(n) = peer {
                node.peer_answered(*n);
            }
            Ok((
                Response::Hello {
                    protocol: PROTOCOL_VERSION,
                    node: node.id,
                    map: node.view().map.clone(),
                },
                vec![],
            ))
        }
        Request::Has {
            repo,
            ids,
            local_only: true,
        } => {
            let (r, i) = (repo.clone(), ids.clone());
            let present = node.blocking(move || store.has(&r, &i)).await?;
            protect_present(node, &repo, &ids, &present);
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
            Ok((Response::Put { copies }, vec![]))
        }
        Request::GetBlob { repo, id } => {
            let (r, i) = (repo.clone(), id);
            match node.blocking(move || store.get_blob(&r, &i)).await {
                Ok(Some(blob)) => Ok((Response::Data, vec![blob])),
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
        Request::GetBlobs { repo, ids } => get_blobs(node, repo, ids).await,
        Request::PutSnapshot {
            repo,
            id,
            local_only,
            fence,
        } => {
            // Stored with the agent that made it, so writers can be kept to
            // their own snapshots; records copied between nodes carry it.
            let value = match peer {
                PeerIdentity::Agent { agent, .. } => owned_record(agent, &payload),
                _ => payload,
            };
            put_snapshot_fenced(node, repo, id, value, local_only, fence).await
        }
        Request::ListSnapshots { repo } => {
            node.records_synced().await;
            let (list, _) = node
                .blocking(move || snapshot_records(store.as_ref(), &repo))
                .await?;
            let (records, parts) = listed_snapshots(caller, list, 0)?;
            Ok((Response::Snapshots { records }, parts))
        }
        Request::ListSnapshotsAndTombstones { repo } => {
            node.records_synced().await;
            let (list, dead) = node
                .blocking(move || snapshot_records(store.as_ref(), &repo))
                .await?;
            let dead_bytes = dead.len() * ringvault_common::listing::TOMBSTONE_BYTES;
            let (records, mut parts) = listed_snapshots(caller, list, dead_bytes)?;
            let tombstones = u32::try_from(dead.len()).map_err(|_| too_many_records())?;
            parts.push(Bytes::from(dead.concat()));
            Ok((
                Response::SnapshotsAndTombstones {
                    records,
                    tombstones,
                },
                parts,
            ))
        }
        Request::GetSnapshot { repo, id } => {
            node.records_synced().await;
            let stored = node
                .blocking(move || store.get_record(RecordKind::Snapshot, &repo, &id.0))
                .await?;
            match stored.as_deref().and_then(|v| snapshot_for(caller, v)) {
                Some(v) => Ok((Response::Data, vec![Bytes::copy_from_slice(v)])),
                None => Err(WireError::new(
                    ErrorCode::NotFound,
                    format!("no snapshot {id} here"),
                )),
            }
        }
        Request::PutKey {
            repo,
            id,
            local_only,
        } => {
            put_record_everywhere(node, RecordKind::Key, repo, id, payload, local_only, true).await
        }
        Request::ListKeys { repo } => {
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
            Ok((Response::Records { records }, parts))
        }
        Request::DeleteKey {
            repo,
            id,
            local_only,
        } => delete_record_everywhere(node, RecordKind::Key, repo, id, local_only).await,
        Request::Digests {
            partitions,
            per_partition,
        } => {
            let digests = node
                .blocking(move || Ok(store.digests(&partitions, per_partition)))
                .await?;
            Ok((Response::Digests { digests }, vec![]))
        }
        Request::ListPartition { partition, after } => {
            let (keys, more) = node
                .blocking(move || store.list_partition(partition, after.as_ref(), MAX_LIST_KEYS))
                .await?;
            Ok((Response::Keys { keys, more }, vec![]))
        }
        Request::Copies { repo, ids } => {
            let copies = count_copies(node, repo, ids).await;
            Ok((Response::Copies { copies }, vec![]))
        }
        Request::NodeStatus => Ok((Response::NodeStatus(node.status()), vec![])),
        Request::DeleteSnapshot {
            repo,
            id,
            local_only,
        } => delete_record_everywhere(node, RecordKind::Snapshot, repo, id.0, local_only).await,
        Request::GetRecord { repo, kind, key } => {
            let kind = RecordKind::from_u8(kind).ok_or_else(|| {
                WireError::new(ErrorCode::BadRequest, format!("no record kind {kind}"))
            })?;
            match node
                .blocking(move || store.get_record(kind, &repo, &key))
                .await?
            {
                Some(v) => Ok((Response::Data, vec![Bytes::from(v)])),
                None => Err(WireError::new(ErrorCode::NotFound, "no such record here")),
            }
        }
        Request::BeginPrune { repo, round } => {
            node.prune.begin(&repo, round).await;
            Ok((Response::Ok, vec![]))
        }
        Request::PruneMark { repo, round, ids } => {
            node.prune.mark(&repo, round, ids)?;
            Ok((Response::Ok, vec![]))
        }
        Request::PruneSweep {
            repo,
            round,
            grace_s,
            trash_keep_s,
        } => {
            let report = crate::prune::sweep(node, repo, round, grace_s, trash_keep_s).await?;
            Ok((Response::Swept(report), vec![]))
        }
        Request::RestoreTrash { repo } => {
            let n = node.blocking(move || store.restore_trash(&repo)).await?;
            if n > 0 {
                info!(blobs = n, "restored blobs from the trash");
            }
            Ok((Response::Count(n), vec![]))
        }
        Request::GcFence { repo } => Ok((Response::GcFence(node.prune.fence(&repo)), vec![])),
        Request::Sizes { repo, ids } => {
            let sizes = node.blocking(move || store.sizes(&repo, &ids)).await?;
            Ok((Response::Sizes { sizes }, vec![]))
        }
        Request::RecordKeys { digest } => {
            let mut keys = node.blocking(move || store.record_keys()).await?;
            if crate::store::record_keys_digest(&keys) == digest {
                return Ok((
                    Response::RecordKeys {
                        keys: vec![],
                        same: true,
                    },
                    vec![],
                ));
            }
            if keys.len() > wire::MAX_RECORD_KEYS {
                warn!(
                    records = keys.len(),
                    "more records than one answer holds; copying the first {}",
                    wire::MAX_RECORD_KEYS
                );
                keys.truncate(wire::MAX_RECORD_KEYS);
            }
            Ok((Response::RecordKeys { keys, same: false }, vec![]))
        }
        Request::PrepareMap {
            epoch,
            digest,
            base,
        } => {
            let committed = node.view().map.epoch;
            let (granted, highest) = node
                .membership
                .prepare(committed, epoch, digest, base)
                .map_err(|e| {
                    warn!(error = %e, "cannot keep a map promise");
                    WireError::new(ErrorCode::Internal, "cannot keep the promise on disk")
                })?;
            info!(epoch, base, granted, highest, ?peer, "map change proposed");
            Ok((Response::Prepared { granted, highest }, vec![]))
        }
        Request::CommitMap { map } => {
            let current = node.view().map.clone();
            if map.epoch == current.epoch && map.digest() == current.digest() {
                return Ok((Response::Ok, vec![]));
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
            Ok((Response::Ok, vec![]))
        }
    }
}

/// The verified peer of a connection.
#[derive(Debug)]
pub(crate) struct Caller {
    /// Who its certificate names.
    identity: PeerIdentity,
    /// SHA-256 of its certificate, lowercase hex: what revocation lists.
    fingerprint: String,
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
            _ if matches!(request, Request::Hello { .. } | Request::NodeStatus) => Ok(()),
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

impl Node {
    pub(crate) async fn call_peer(
        &self,
        id: NodeId,
        request: &Request,
        payload: Vec<Bytes>,
    ) -> Result<(Response, Bytes), CallError> {
        let addr = self
            .view()
            .map
            .address(id)
            .map(str::to_owned)
            .ok_or_else(|| CallError::Connect {
                addr: id.to_string(),
                reason: "not in the cluster map".into(),
            })?;
        // Has-queries are cheap: a replica slower than this is treated as
        // not holding the chunk rather than stalling the agent's request.
        let timeout = match request {
            Request::Has { .. } => self.settings.replica_timeout.min(Duration::from_secs(5)),
            _ => self.settings.replica_timeout,
        };
        let result = self.peers.call(id, &addr, request, payload, timeout).await;
        if result.is_ok() {
            self.peer_answered(id);
        }
        result
    }
}

/// Protects from a running prune round the ids a has-query found here: a
/// backup that skips uploading them relies on them.
fn protect_present(node: &Node, repo: &RepoId, ids: &[ChunkId], present: &[bool]) {
    node.prune.protect(
        repo,
        ids.iter()
            .zip(present)
            .filter(|(_, p)| **p)
            .map(|(id, _)| id),
    );
}

/// Moves a blob that failed its checksum out of the index and wakes repair,
/// which fetches a good copy from a co-replica.
pub(crate) async fn quarantine(node: &Arc<Node>, repo: RepoId, id: ChunkId) {
    let store = node.store.clone();
    let (r, i) = (repo.clone(), id);
    match node.blocking(move || store.quarantine(&r, &i)).await {
        Ok(true) => {
            warn!(chunk = %id, repo = %repo, "blob quarantined after failing its checksum; fetching a good copy");
            node.wake.notify_one();
        }
        Ok(false) => {}
        Err(e) => warn!(chunk = %id, error = %e, "cannot quarantine a bad blob"),
    }
}

/// Answers a [`Request::GetBlobs`]: the blobs in `ids`' order, up to
/// [`wire::GET_BLOBS_BYTES`] of them, in one store call; a blob that failed
/// its checksum is quarantined and answered [`BlobReply::Corrupt`], one the
/// store could not read (or past the byte budget) [`BlobReply::Later`].
///
/// # Errors
/// A [`WireError`] only when the store cannot be asked at all.
async fn get_blobs(node: &Arc<Node>, repo: RepoId, ids: Vec<ChunkId>) -> Reply {
    let (store, r, asked) = (node.store.clone(), repo.clone(), ids.clone());
    let got = node
        .blocking(move || store.get_blobs(&r, &asked, wire::GET_BLOBS_BYTES))
        .await?;
    let mut replies = Vec::with_capacity(ids.len());
    let mut payload = Vec::with_capacity(got.len());
    for (id, one) in ids.iter().zip(got) {
        replies.push(match one {
            Ok(Some(blob)) => {
                // Invariant: a stored blob is far below 4 GiB (MAX_PAYLOAD).
                let len = u32::try_from(blob.len()).map_err(|_| {
                    WireError::new(
                        ErrorCode::Internal,
                        format!("blob {id} is too large to send"),
                    )
                })?;
                payload.push(blob);
                BlobReply::Data(len)
            }
            Ok(None) => BlobReply::NotFound,
            Err(StoreError::Corrupt { .. }) => {
                warn!(chunk = %id, "stored blob failed its checksum");
                quarantine(node, repo.clone(), *id).await;
                BlobReply::Corrupt
            }
            Err(e) => {
                warn!(chunk = %id, error = %e, "a blob could not be read");
                BlobReply::Later
            }
        });
    }
    replies.resize(ids.len(), BlobReply::Later);
    Ok((Response::Blobs { replies }, payload))
}

/// Which of `ids` this node and its peers hold, as counts per id. `nodes`
/// picks, per id, the nodes to ask.
async fn count_holders(
    node: &Arc<Node>,
    repo: &RepoId,
    ids: &[ChunkId],
    nodes: impl Fn(&ChunkId) -> Vec<NodeId>,
) -> Vec<u32> {
    let mut by_node: HashMap<NodeId, Vec<usize>> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        for n in nodes(id) {
            by_node.entry(n).or_default().push(i);
        }
    }
    let mut asks = FuturesUnordered::new();
    for (target, idxs) in by_node {
        let node = node.clone();
        let repo = repo.clone();
        let sub: Vec<ChunkId> = idxs.iter().map(|&i| ids[i]).collect();
        asks.push(async move {
            let answer = if target == node.id {
                let store = node.store.clone();
                let (r, i) = (repo.clone(), sub.clone());
                let present = node.blocking(move || store.has(&r, &i)).await.ok();
                if let Some(p) = &present {
                    protect_present(&node, &repo, &sub, p);
                }
                present
            } else if node.is_down(target) {
                None
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
                        debug!(node = %target, error = %e, "has query to a peer failed");
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
    counts
}

/// Asks every owner which ids it holds; an id is present with W copies.
async fn coordinate_has(
    node: &Arc<Node>,
    repo: RepoId,
    ids: Vec<ChunkId>,
) -> Result<Vec<bool>, WireError> {
    let view = node.view();
    let counts = count_holders(node, &repo, &ids, |id| view.owners(id.partition()).to_vec()).await;
    let w = view.map.write_quorum;
    Ok(counts.into_iter().map(|c| c >= w).collect())
}

/// How many live nodes of the map hold each id (owners or not).
async fn count_copies(node: &Arc<Node>, repo: RepoId, ids: Vec<ChunkId>) -> Vec<u32> {
    let view = node.view();
    let all: Vec<NodeId> = view.map.nodes.iter().map(|n| n.id).collect();
    count_holders(node, &repo, &ids, |_| all.clone()).await
}

/// Stores each blob on its N owners and answers as soon as every blob has
/// W durable copies, or no node is left to try. A write meant for an owner
/// that is down or fails goes to the next node in placement order, which
/// keeps it as a hint and hands it to the owner later (Dynamo's sloppy
/// quorum and hinted handoff: DeCandia et al., "Dynamo", SOSP 2007, 4.6).
/// While blobs move after a map change, the previous owners get a copy too.
/// Writes still in flight when the answer goes out finish in the
/// background.
async fn coordinate_put(
    node: &Arc<Node>,
    repo: RepoId,
    items: Vec<(ChunkId, Bytes)>,
) -> Result<Vec<u32>, WireError> {
    let view = node.view();
    let w = view.map.write_quorum;
    node.try_down_peers_if_short(&view);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<usize>>();
    let n = items.len();
    tokio::spawn(place_copies(node.clone(), view, repo, items, tx));
    let mut copies = vec![0u32; n];
    while let Some(done) = rx.recv().await {
        for i in done {
            copies[i] += 1;
        }
        if copies.iter().all(|&c| c >= w) {
            break;
        }
    }
    Ok(copies)
}

/// Places N copies of each blob (see [`coordinate_put`]), reporting each
/// durable copy on `progress` by blob index.
async fn place_copies(
    node: Arc<Node>,
    view: Arc<View>,
    repo: RepoId,
    items: Vec<(ChunkId, Bytes)>,
    progress: tokio::sync::mpsc::UnboundedSender<Vec<usize>>,
) {
    let n = view.effective.replicas as usize;
    // Per blob: owners first, then every other node in placement order.
    let candidates: Vec<Vec<NodeId>> = items
        .iter()
        .map(|(id, _)| view.effective.ranked(id))
        .collect();
    let mut next = vec![0usize; items.len()];
    let mut wanted = vec![n; items.len()];
    let mut extra: HashMap<NodeId, Vec<usize>> = HashMap::new();
    for (i, (id, _)) in items.iter().enumerate() {
        for old in view.previous_owners(id.partition()) {
            extra.entry(old).or_default().push(i);
        }
    }
    // (node, blob) pairs already written or tried: no blob goes to one node
    // twice, so each counted copy is a distinct node's.
    let mut tried: std::collections::HashSet<(NodeId, usize)> = extra
        .iter()
        .flat_map(|(n, idxs)| idxs.iter().map(move |&i| (*n, i)))
        .collect();
    for round in 0..=view.effective.nodes.len() {
        // Copies for the previous owners (round 0 only) are extra: they
        // count toward W but do not stand in for a current owner's copy.
        let bonus: HashMap<NodeId, Vec<usize>> = std::mem::take(&mut extra);
        let mut targets: HashMap<NodeId, Vec<usize>> = HashMap::new();
        for (i, cands) in candidates.iter().enumerate() {
            let mut picked = 0;
            while picked < wanted[i] && next[i] < cands.len() {
                let c = cands[next[i]];
                next[i] += 1;
                if node.is_down(c) || !tried.insert((c, i)) {
                    continue;
                }
                if next[i] > n {
                    node.metrics.hinted(1);
                }
                targets.entry(c).or_default().push(i);
                picked += 1;
            }
        }
        if targets.is_empty() && bonus.is_empty() {
            break;
        }
        let mut writes = FuturesUnordered::new();
        let all = targets
            .into_iter()
            .map(|t| (t, true))
            .chain(bonus.into_iter().map(|t| (t, false)));
        for ((target, idxs), counts) in all {
            let node = node.clone();
            let repo = repo.clone();
            let batch: Vec<(ChunkId, Bytes)> = idxs.iter().map(|&i| items[i].clone()).collect();
            writes.push(async move {
                let ok = replicate(&node, target, repo, batch).await;
                (idxs, ok, counts)
            });
        }
        while let Some((idxs, ok, counts)) = writes.next().await {
            if ok {
                if counts {
                    for &i in &idxs {
                        wanted[i] = wanted[i].saturating_sub(1);
                    }
                }
                let _ = progress.send(idxs);
            }
        }
        if wanted.iter().all(|&w| w == 0) {
            return;
        }
        debug!(round, "some replica writes failed; trying the next nodes");
    }
    if let Some(i) = wanted.iter().position(|&w| w > 0) {
        warn!(chunk = %items[i].0, missing = wanted[i], "fewer than N copies placed; repair will add them");
    }
}

async fn replicate(
    node: &Arc<Node>,
    target: NodeId,
    repo: RepoId,
    batch: Vec<(ChunkId, Bytes)>,
) -> bool {
    if target == node.id {
        let store = node.store.clone();
        return match node.blocking(move || store.put_blobs(&repo, batch)).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "local replica write failed");
                false
            }
        };
    }
    let blobs: Vec<(ChunkId, u32)> = batch.iter().map(|(id, b)| (*id, b.len() as u32)).collect();
    let bytes: u64 = blobs.iter().map(|(_, l)| u64::from(*l)).sum();
    let count = blobs.len() as u64;
    let payload = batch.into_iter().map(|(_, b)| b).collect();
    let req = Request::PutBlobs {
        repo,
        blobs,
        local_only: true,
    };
    node.replicating.fetch_add(count, Ordering::Relaxed);
    node.metrics
        .set_replication_backlog(node.replicating.load(Ordering::Relaxed));
    let result = node.call_peer(target, &req, payload).await;
    node.replicating.fetch_sub(count, Ordering::Relaxed);
    node.metrics
        .set_replication_backlog(node.replicating.load(Ordering::Relaxed));
    match result {
        Ok((Response::Put { .. }, _)) => {
            node.metrics.replicated(count, bytes);
            true
        }
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

/// A number that differs at every start of this process: the clock in ns,
/// the process id and the standard library's OS-seeded hasher keys.
fn boot_nonce() -> u64 {
    use std::hash::BuildHasher;
    let mut h = blake3::Hasher::new();
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.update(&ns.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(
        &std::collections::hash_map::RandomState::new()
            .hash_one(0u8)
            .to_le_bytes(),
    );
    let bytes = h.finalize();
    // Invariant: a BLAKE3 digest is 32 bytes, so its first 8 exist.
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Stores a key record here and, unless `local_only`, on every other node;
/// succeeds once W nodes hold it. A coordinator whose own store fails still
/// forwards: only the count of nodes that stored it decides.
///
/// # Errors
/// [`ErrorCode::Exists`] when this node or another holds a different key
/// under `key`; [`ErrorCode::QuorumNotReached`] naming each node's failure
/// when fewer than W stored it; this node's own failure when `local_only`.
async fn put_record_everywhere(
    node: &Arc<Node>,
    kind: RecordKind,
    repo: RepoId,
    key: [u8; 32],
    value: Bytes,
    local_only: bool,
    exclusive: bool,
) -> Reply {
    let req = match kind {
        RecordKind::Key => Request::PutKey {
            repo: repo.clone(),
            id: key,
            local_only: true,
        },
        RecordKind::Snapshot => {
            return Err(WireError::new(
                ErrorCode::Internal,
                "snapshot records are stored under a fence",
            ));
        }
        RecordKind::Tombstone => {
            return Err(WireError::new(
                ErrorCode::Internal,
                "tombstones spread by DeleteSnapshot",
            ));
        }
    };
    let store = node.store.clone();
    let v = value.clone();
    let local = node
        .blocking(move || store.put_record(kind, &repo, &key, &v, exclusive))
        .await;
    if local_only {
        return local.map(|()| (Response::Ok, vec![]));
    }
    everywhere(node, local, req, vec![value], "stored the record").await
}

/// Stores a snapshot record here if this server's fence is the one the
/// agent read (see [`GcFence`]) and, unless `local_only`, asks every other
/// node to do the same; succeeds once W nodes stored it. A coordinator
/// whose own fence moved, or whose store fails, still forwards: only the
/// count of nodes that stored it decides.
///
/// # Errors
/// [`ErrorCode::FenceMoved`] when fewer than W stored it and some node
/// refused for its fence (the agent checks its chunks again and retries);
/// [`ErrorCode::QuorumNotReached`] naming each node's failure otherwise.
async fn put_snapshot_fenced(
    node: &Arc<Node>,
    repo: RepoId,
    id: ringvault_common::SnapshotId,
    value: Bytes,
    local_only: bool,
    fence: Vec<(NodeId, GcFence)>,
) -> Reply {
    let mine = fence.iter().find(|(n, _)| *n == node.id).map(|(_, f)| *f);
    let store = node.store.clone();
    let local = {
        let (r, v) = (repo.clone(), value.clone());
        node.prune
            .store_if_fenced(&repo, mine, || {
                node.blocking(move || store.put_record(RecordKind::Snapshot, &r, &id.0, &v, false))
            })
            .await
    };
    if local_only {
        return local.map(|()| (Response::Ok, vec![]));
    }
    let mut held = 0u32;
    let mut refusals = Vec::new();
    match local {
        Ok(()) => held += 1,
        Err(e) => refusals.push((node.id, e)),
    }
    let view = node.view();
    node.try_down_peers_if_short(&view);
    let req = Request::PutSnapshot {
        repo,
        id,
        local_only: true,
        fence,
    };
    let mut sends: FuturesUnordered<_> = view
        .map
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&n| n != node.id)
        .map(|other| {
            let (node, req, value) = (node.clone(), req.clone(), value.clone());
            tokio::spawn(async move {
                let r = node.call_peer(other, &req, vec![value]).await;
                (other, r)
            })
        })
        .collect();
    let w = view.map.write_quorum;
    while held < w {
        let Some(sent) = sends.next().await else {
            break;
        };
        match sent {
            Ok((_, Ok(_))) => held += 1,
            Ok((other, Err(CallError::Remote(e)))) => refusals.push((other, e)),
            Ok((other, Err(e))) => {
                warn!(node = %other, error = %e, "snapshot record not stored there");
                refusals.push((other, WireError::new(ErrorCode::Internal, e.to_string())));
            }
            Err(e) => refusals.push((node.id, WireError::new(ErrorCode::Internal, e.to_string()))),
        }
    }
    if held >= w {
        return Ok((Response::Ok, vec![]));
    }
    let causes = refusals
        .iter()
        .map(|(n, e)| format!("{n}: {}", e.message))
        .collect::<Vec<_>>()
        .join("; ");
    let code = if refusals
        .iter()
        .any(|(_, e)| e.code == ErrorCode::FenceMoved)
    {
        ErrorCode::FenceMoved
    } else {
        ErrorCode::QuorumNotReached
    };
    Err(WireError::new(
        code,
        format!("the snapshot record is on {held} of the required {w} servers ({causes})"),
    ))
}

/// Deletes a snapshot record or a key here and leaves a tombstone under its
/// id (its value: the deletion time, unix seconds, 8 bytes little endian),
/// so record sync does not copy it back; unless `local_only`, does the same
/// on every other node and succeeds once W hold the tombstone. A
/// coordinator whose own store fails still forwards.
///
/// # Errors
/// [`ErrorCode::QuorumNotReached`] naming each node's failure when fewer
/// than W made the change; this node's own failure when `local_only`.
async fn delete_record_everywhere(
    node: &Arc<Node>,
    kind: RecordKind,
    repo: RepoId,
    id: [u8; 32],
    local_only: bool,
) -> Reply {
    let store = node.store.clone();
    let r = repo.clone();
    let now = crate::prune::unix_now().to_le_bytes();
    let local = node
        .blocking(move || {
            store.put_record(RecordKind::Tombstone, &r, &id, &now, false)?;
            store.delete_record(kind, &r, &id)?;
            Ok(())
        })
        .await;
    if local_only {
        return local.map(|()| (Response::Ok, vec![]));
    }
    let (req, did) = match kind {
        RecordKind::Key => (
            Request::DeleteKey {
                repo,
                id,
                local_only: true,
            },
            "deleted the key",
        ),
        _ => (
            Request::DeleteSnapshot {
                repo,
                id: ringvault_common::SnapshotId(id),
                local_only: true,
            },
            "deleted the snapshot",
        ),
    };
    everywhere(node, local, req, vec![], did).await
}

/// Records as listed: (32-byte key, stored value).
type Records = Vec<([u8; 32], Vec<u8>)>;

/// The records of `kind` in `repo` that no tombstone marks deleted.
fn live_records(
    store: &dyn ChunkStore,
    kind: RecordKind,
    repo: &RepoId,
) -> Result<Records, StoreError> {
    let dead: std::collections::HashSet<[u8; 32]> = store
        .list_records(RecordKind::Tombstone, repo)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut list = store.list_records(kind, repo)?;
    list.retain(|(k, _)| !dead.contains(k));
    Ok(list)
}

/// The snapshot records of `repo` that no tombstone marks deleted, and the
/// keys of its tombstones (of snapshots and of keys alike: their ids are
/// random, so a key's tombstone hides no snapshot).
fn snapshot_records(
    store: &dyn ChunkStore,
    repo: &RepoId,
) -> Result<(Records, Vec<[u8; 32]>), StoreError> {
    let dead: Vec<[u8; 32]> = store
        .list_records(RecordKind::Tombstone, repo)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let gone: std::collections::HashSet<&[u8; 32]> = dead.iter().collect();
    let mut list = store.list_records(RecordKind::Snapshot, repo)?;
    list.retain(|(k, _)| !gone.contains(k));
    Ok((list, dead))
}

/// The (id, length in bytes) list of a snapshot listing.
type Listed = Vec<(ringvault_common::SnapshotId, u32)>;

/// The (id, length) list and the payload parts of a snapshot listing for
/// `caller` ([`snapshot_for`]), leaving room for `reserved` more payload
/// bytes.
///
/// # Errors
/// When the records and `reserved` do not fit one reply.
fn listed_snapshots(
    caller: &Caller,
    list: Records,
    reserved: usize,
) -> Result<(Listed, Vec<Bytes>), WireError> {
    let mut records = Vec::with_capacity(list.len());
    let mut parts = Vec::with_capacity(list.len() + 1);
    let mut total = reserved;
    for (key, stored) in list {
        let Some(value) = snapshot_for(caller, &stored) else {
            continue;
        };
        total += value.len();
        if total > wire::MAX_PAYLOAD {
            return Err(too_many_records());
        }
        records.push((ringvault_common::SnapshotId(key), value.len() as u32));
        parts.push(Bytes::copy_from_slice(value));
    }
    Ok((records, parts))
}

fn too_many_records() -> WireError {
    WireError::new(
        ErrorCode::Internal,
        "too many snapshot records for one reply",
    )
}

/// Prefix of a stored snapshot record that names the agent that made it:
/// `"RVO1"`, the agent id's length (1 byte), the agent id, then the sealed
/// record as the agent sent it. Sealed records begin with `"RVB"`
/// (`ringvault_common::seal`), so the two never look alike.
const OWNER_MAGIC: &[u8; 4] = b"RVO1";

/// A snapshot record as stored: `sealed` prefixed with its owner `agent`.
fn owned_record(agent: &str, sealed: &[u8]) -> Bytes {
    // Agent ids come from verified certificates: a URI segment, never
    // longer than 255 bytes in practice; a longer one is cut, which only
    // hides the record from that writer.
    let name = &agent.as_bytes()[..agent.len().min(255)];
    let mut out = Vec::with_capacity(OWNER_MAGIC.len() + 1 + name.len() + sealed.len());
    out.extend_from_slice(OWNER_MAGIC);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(sealed);
    Bytes::from(out)
}

/// Splits a stored snapshot record into its owner (none for records stored
/// before owners were kept) and the sealed record.
fn split_owner(stored: &[u8]) -> (Option<&[u8]>, &[u8]) {
    if let Some(rest) = stored.strip_prefix(OWNER_MAGIC.as_slice())
        && let Some((&len, rest)) = rest.split_first()
        && rest.len() >= usize::from(len)
    {
        let (owner, sealed) = rest.split_at(usize::from(len));
        return (Some(owner), sealed);
    }
    (None, stored)
}

/// The record bytes `caller` may see of a stored snapshot record: nodes get
/// it as stored (record sync copies the owner along); readers and admins
/// get the sealed record; writers only their own.
fn snapshot_for<'a>(caller: &Caller, stored: &'a [u8]) -> Option<&'a [u8]> {
    let (owner, sealed) = split_owner(stored);
    match &caller.identity {
        PeerIdentity::Node(_) => Some(stored),
        PeerIdentity::Agent {
            role: Role::Writer,
            agent,
            ..
        } => (owner == Some(agent.as_bytes())).then_some(sealed),
        PeerIdentity::Agent { .. } => Some(sealed),
        PeerIdentity::Operator(_) => None,
    }
}

/// Sends `req` (a local-only record change this node has tried, with
/// outcome `local`) to every other node of the map and answers once W
/// nodes, this one included if `local` succeeded, made it. Sends are
/// spawned, so nodes past the first W still get it. A node answering
/// `Exists` (a different key), this one included, fails the request.
///
/// # Errors
/// [`ErrorCode::Exists`]; [`ErrorCode::QuorumNotReached`] naming each
/// node that failed and its cause.
async fn everywhere(
    node: &Arc<Node>,
    local: Result<(), WireError>,
    req: Request,
    payload: Vec<Bytes>,
    did: &str,
) -> Reply {
    let mut held = 0u32;
    let mut causes = Vec::new();
    match local {
        Ok(()) => held += 1,
        Err(e) if e.code == ErrorCode::Exists => return Err(e),
        Err(e) => {
            warn!(kind = req.kind(), error = %e.message, "record change failed here; forwarding it");
            causes.push(format!("{}: {}", node.id, e.message));
        }
    }
    let view = node.view();
    node.try_down_peers_if_short(&view);
    let mut sends = FuturesUnordered::new();
    for other in view
        .map
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&n| n != node.id)
    {
        let (node, req, payload) = (node.clone(), req.clone(), payload.clone());
        sends.push(tokio::spawn(async move {
            let result = match node.call_peer(other, &req, payload).await {
                Ok((Response::Ok, _)) => Ok(()),
                // Only `Ok` says the change was made there.
                Ok((answer, _)) => {
                    warn!(node = %other, kind = req.kind(), ?answer, "unexpected answer to a record change");
                    Err(WireError::new(
                        ErrorCode::Internal,
                        format!("unexpected answer {answer:?}"),
                    ))
                }
                Err(CallError::Remote(e)) => Err(e),
                Err(e) => {
                    warn!(node = %other, kind = req.kind(), error = %e, "record change failed");
                    Err(WireError::new(ErrorCode::Internal, e.to_string()))
                }
            };
            (other, result)
        }));
    }
    let w = view.map.write_quorum;
    while held < w {
        match sends.next().await {
            None => break,
            Some(Ok((_, Ok(())))) => held += 1,
            Some(Ok((_, Err(e)))) if e.code == ErrorCode::Exists => return Err(e),
            Some(Ok((other, Err(e)))) => causes.push(format!("{other}: {}", e.message)),
            Some(Err(e)) => causes.push(format!("a send task failed: {e}")),
        }
    }
    if held < w {
        return Err(WireError::new(
            ErrorCode::QuorumNotReached,
            format!(
                "only {held} of the required {w} servers {did} ({})",
                causes.join("; ")
            ),
        ));
    }
    Ok((Response::Ok, vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_store_call_marks_the_store_failing() {
        let store: Arc<dyn ChunkStore> = Arc::new(crate::store::MemStore::default());
        let call = run_store_call(&store, || -> Result<(), StoreError> {
            panic!("page checksum mismatch")
        });
        let result = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call returned");
        assert_eq!(result.unwrap_err().code, ErrorCode::Internal);
        let health = store.health();
        assert_eq!(health.state, wire::StoreState::Failing);
        assert!(
            health
                .error
                .is_some_and(|e| e.contains("page checksum mismatch"))
        );
        // Later calls still run; the state stays until restart.
        let ok = run_store_call(&store, || Ok(7)).await.unwrap();
        assert_eq!(ok, 7);
        assert_eq!(store.health().state, wire::StoreState::Failing);
    }

    #[test]
    fn a_store_error_tells_the_client_its_cause_and_not_the_path() {
        let no_space = store_err(StoreError::Index(
            "I/O error: No space left on device (os error 28)".into(),
        ));
        assert_eq!(no_space.code, ErrorCode::Internal);
        assert!(
            no_space.message.contains("No space left on device"),
            "{no_space}"
        );
        let io = store_err(StoreError::Io {
            path: "/srv/ringvault/data/segments/00000003.seg".into(),
            source: std::io::Error::other("input/output error"),
        });
        assert_eq!(io.code, ErrorCode::Internal);
        assert!(
            io.message.contains("00000003.seg") && io.message.contains("input/output error"),
            "{io}"
        );
        assert!(!io.message.contains("/srv/"), "{io}");
        let full = store_err(StoreError::DiskFull {
            free: 0,
            min_free: 0,
        });
        assert_eq!(full.code, ErrorCode::StoreFull);
        assert!(full.message.contains("no space left"), "{full}");
    }

    fn caller(identity: PeerIdentity) -> Caller {
        Caller {
            identity,
            fingerprint: "f".repeat(64),
        }
    }

    fn agent(name: &str, role: Role) -> Caller {
        caller(PeerIdentity::Agent {
            repo: RepoId::new("r").unwrap(),
            agent: name.into(),
            role,
        })
    }

    #[test]
    fn snapshot_records_carry_their_owner_and_writers_see_only_theirs() {
        let stored = owned_record("laptop", b"RVBsealed");
        assert_eq!(
            split_owner(&stored),
            (Some(&b"laptop"[..]), &b"RVBsealed"[..])
        );
        let own = agent("laptop", Role::Writer);
        let other = agent("desktop", Role::Writer);
        assert_eq!(snapshot_for(&own, &stored), Some(&b"RVBsealed"[..]));
        assert_eq!(snapshot_for(&other, &stored), None);
        assert_eq!(
            snapshot_for(&agent("x", Role::Reader), &stored),
            Some(&b"RVBsealed"[..])
        );
        assert_eq!(
            snapshot_for(&caller(PeerIdentity::Node(NodeId(1))), &stored),
            Some(&stored[..])
        );
        // Records stored before owners were kept: hidden from writers only.
        assert_eq!(snapshot_for(&own, b"RVBold"), None);
        assert_eq!(
            snapshot_for(&agent("x", Role::Admin), b"RVBold"),
            Some(&b"RVBold"[..])
        );
        // Malformed prefixes never panic and own nothing.
        for bad in [&b"RVO1"[..], b"RVO1\x09abc", b"RVO1\xff"] {
            assert_eq!(split_owner(bad), (None, bad));
        }
    }

    #[test]
    fn a_listing_carries_live_records_and_every_tombstone_of_its_repository() {
        let store = crate::store::MemStore::default();
        let repo = RepoId::new("r").unwrap();
        let other = RepoId::new("o").unwrap();
        let put = |kind, repo: &RepoId, key: u8, value: &[u8]| {
            store
                .put_record(kind, repo, &[key; 32], value, false)
                .unwrap();
        };
        put(
            RecordKind::Snapshot,
            &repo,
            1,
            &owned_record("laptop", b"RVBone"),
        );
        put(
            RecordKind::Snapshot,
            &repo,
            2,
            &owned_record("desktop", b"RVBtwo"),
        );
        // Forgotten here, though the record is still stored (a tombstone
        // copied by record sync before the record was dropped).
        put(
            RecordKind::Snapshot,
            &repo,
            3,
            &owned_record("laptop", b"RVBthree"),
        );
        put(RecordKind::Tombstone, &repo, 3, &[0; 8]);
        // Forgotten here with the record gone, and another repository's.
        put(RecordKind::Tombstone, &repo, 4, &[0; 8]);
        put(RecordKind::Tombstone, &other, 5, &[0; 8]);

        let (mut list, dead) = snapshot_records(&store, &repo).unwrap();
        list.sort();
        let keys: Vec<u8> = list.iter().map(|(k, _)| k[0]).collect();
        assert_eq!(keys, [1, 2]);
        let mut dead: Vec<u8> = dead.iter().map(|k| k[0]).collect();
        dead.sort_unstable();
        assert_eq!(dead, [3, 4]);

        // A writer sees its own records, and the tombstones all the same.
        let (records, parts) =
            listed_snapshots(&agent("laptop", Role::Writer), list.clone(), 64).unwrap();
        assert_eq!(records, [(ringvault_common::SnapshotId([1; 32]), 6)]);
        assert_eq!(parts, [Bytes::from_static(b"RVBone")]);
        let (records, _) = listed_snapshots(&agent("x", Role::Reader), list.clone(), 0).unwrap();
        assert_eq!(records.len(), 2);
        // Records and tombstones that do not fit one reply are refused, not
        // cut short.
        assert!(listed_snapshots(&agent("x", Role::Reader), list, wire::MAX_PAYLOAD).is_err());
    }

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
        let get = Request::GetBlob {
            repo: repo.clone(),
            id: ChunkId([0; 32]),
        };
        let put = Request::PutBlobs {
            repo: repo.clone(),
            blobs: vec![],
            local_only: false,
        };
        let forget = Request::DeleteSnapshot {
            repo: repo.clone(),
            id: ringvault_common::SnapshotId([0; 32]),
            local_only: false,
        };
        let allowed = |c: &Caller, r: &Request, m: &ClusterMap| authorize(c, m, r).is_ok();
        let (reader, writer, admin) = (
            agent("a", Role::Reader),
            agent("a", Role::Writer),
            agent("a", Role::Admin),
        );
        assert!(allowed(&reader, &get, &map) && !allowed(&reader, &put, &map));
        assert!(allowed(&writer, &put, &map) && !allowed(&writer, &forget, &map));
        assert!(allowed(&admin, &forget, &map));
        let other_repo = Request::GetBlob {
            repo: RepoId::new("s").unwrap(),
            id: ChunkId([0; 32]),
        };
        assert!(!allowed(&admin, &other_repo, &map));
        let internal = Request::Has {
            repo,
            ids: vec![],
            local_only: true,
        };
        assert!(!allowed(&admin, &internal, &map));
        map.revoked.push("f".repeat(64));
        assert!(!allowed(&admin, &get, &map));
        let e = authorize(&admin, &map, &get).unwrap_err();
        assert!(e.message.contains("revoked"), "{}", e.message);
    }
}
