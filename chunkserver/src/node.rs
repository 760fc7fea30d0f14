//! A node's shared state: its settings, its view of the cluster map and
//! its peers, its store, and the calls every part of the server makes on
//! them (a store call on the blocking pool, a call to a peer). The request
//! loop ([`crate::server`]), replication ([`crate::replicate`]), records
//! ([`crate::records`]), maintenance and prune all build on it; it builds
//! on none of them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use quinn::Endpoint;
use ringvault_common::placement::ClusterMap;
use ringvault_common::tls::PeerIdentity;
use ringvault_common::wire::{
    ErrorCode, NodeStatus, PeerRpc, PeerState, Request, Response, WireError,
};
use ringvault_common::{ChunkId, NodeId, RepoId};
use ringvault_net::quic::{self, CallError, ConnectFailure};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::store::{ChunkStore, HealthStore, StoreError};

/// How long a starting server spends pulling its peers' records and
/// tombstones before it answers record listings anyway (a peer that is
/// down costs one connect timeout, 3 s).
pub const START_SYNC_LIMIT: Duration = Duration::from_secs(5);

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
    pub(crate) id: NodeId,
    pub(crate) store: Arc<dyn ChunkStore>,
    pub(crate) peers: quic::Peers,
    pub(crate) settings: Settings,
    view: RwLock<Arc<View>>,
    pub(crate) membership: Membership,
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
    pub(crate) replicating: AtomicU64,
    /// Wakes the maintenance loop early (a blob was quarantined, a map
    /// changed, a peer came back).
    pub(crate) wake: Notify,
    /// Prune rounds in progress.
    pub(crate) prune: crate::rounds::Rounds,
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
            prune: crate::rounds::Rounds::new(boot_nonce()),
            synced_at_start: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// Waits until the record sync this node runs at start has ended (see
    /// [`START_SYNC_LIMIT`]), and at most that long.
    /// Call before answering a listing of records, so a server back from a
    /// stop does not list what was forgotten while it was away.
    pub(crate) async fn records_synced(&self) {
        let mut done = self.synced_at_start.subscribe();
        let waited = tokio::time::timeout(START_SYNC_LIMIT, done.wait_for(|d| *d)).await;
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
        self.view.read().clone()
    }

    fn set_view(&self, view: View) {
        let mut slot = self.view.write();
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
        let now = Instant::now();
        let mut seen = self.last_ok.lock();
        for n in &map.nodes {
            seen.entry(n.id).or_insert(now);
        }
        drop(seen);
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
        self.last_ok.lock().insert(peer, Instant::now());
    }

    /// Recomputes which peers are out (unreachable past `out_after`) and
    /// switches placement when that changed.
    pub(crate) fn update_out(&self) {
        let view = self.view();
        let out: BTreeSet<NodeId> = {
            let seen = self.last_ok.lock();
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
    pub(crate) fn try_down_peers_if_short(&self, view: &View) {
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
        let seen = self.last_ok.lock();
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
        run_store_call(self.store.as_ref(), f).await
    }
}

impl Node {
    /// One request to peer `id`, routed by the map's address for it;
    /// an answer marks the peer heard from.
    ///
    /// # Errors
    /// [`CallError`]: not in the map, unreachable, refused, or another
    /// request's answer ([`CallError::Unexpected`]).
    pub(crate) async fn call_peer<R: PeerRpc>(
        &self,
        id: NodeId,
        request: R,
        payload: Vec<Bytes>,
    ) -> Result<(R::Response, Bytes), CallError> {
        let addr = self
            .view()
            .map
            .address(id)
            .map(str::to_owned)
            .ok_or_else(|| CallError::Connect {
                addr: id.to_string(),
                reason: ConnectFailure::NotInMap,
            })?;
        let request: Request = request.into();
        // Has-queries are cheap: a replica slower than this is treated as
        // not holding the chunk rather than stalling the agent's request.
        let timeout = match request {
            Request::Has(_) => self.settings.replica_timeout.min(Duration::from_secs(5)),
            _ => self.settings.replica_timeout,
        };
        let (response, payload) = self
            .peers
            .call(id, &addr, &request, payload, timeout)
            .await?;
        self.peer_answered(id);
        Ok((quic::answer::<R>(response)?, payload))
    }
}

/// The verified peer of a connection.
#[derive(Debug)]
pub(crate) struct Caller {
    /// Who its certificate names.
    pub(crate) identity: PeerIdentity,
    /// SHA-256 of its certificate, lowercase hex: what revocation lists.
    pub(crate) fingerprint: String,
}

pub(crate) type Reply = Result<(Response, Vec<Bytes>), WireError>;

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
    store: &dyn HealthStore,
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

/// Callers for unit tests.
#[cfg(test)]
pub(crate) mod test_callers {
    use super::*;
    use ringvault_common::tls::Role;

    pub(crate) fn caller(identity: PeerIdentity) -> Caller {
        Caller {
            identity,
            fingerprint: "f".repeat(64),
        }
    }

    pub(crate) fn agent(name: &str, role: Role) -> Caller {
        caller(PeerIdentity::Agent {
            repo: RepoId::new("r").unwrap(),
            agent: name.into(),
            role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringvault_common::wire;

    #[tokio::test]
    async fn a_panicking_store_call_marks_the_store_failing() {
        let store: Arc<dyn ChunkStore> = Arc::new(crate::store::MemStore::default());
        let call = run_store_call(store.as_ref(), || -> Result<(), StoreError> {
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
        let ok = run_store_call(store.as_ref(), || Ok(7)).await.unwrap();
        assert_eq!(ok, 7);
        assert_eq!(store.health().state, wire::StoreState::Failing);
    }

    #[test]
    fn a_store_error_tells_the_client_its_cause_and_not_the_path() {
        let enospc = std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        let no_space = store_err(crate::store::IndexError::from(redb::Error::Io(enospc)).into());
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
}
