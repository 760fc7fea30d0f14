//! The in-process test tier: chunk servers on [`MemStore`] in the test's
//! own process, on real loopback QUIC sockets, with the agent's real
//! [`Cluster`] client.
//!
//! A node here is the server's own code, started as `ringvault-chunkserver`
//! starts it ([`Node::new`] then [`server::run`]), minus the config file,
//! the file-system store and the process. So a protocol test (replication,
//! quorum, hinted handoff, repair, scrub) runs in a second instead of
//! spawning binaries, and can look into every node's store directly. What
//! only processes show (crashes, kills mid-write, full disks, the CLI's
//! output and exit codes) stays in the process tier ([`crate::TestCluster`]).
//!
//! Stopping a node ends its server loop as a shutdown does, closes its
//! endpoint and keeps its store; starting it again binds the same port with
//! the same store, as a restarted process finds its data directory. Ports
//! come from [`free_ports`], so no other test takes a stopped node's port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use ringvault::client::Cluster;
use ringvault_chunkserver::node::{Node, Settings};
use ringvault_chunkserver::server;
use ringvault_chunkserver::store::{BlobStore, ChunkStore, MemStore};
use ringvault_common::placement::{ClusterMap, NodeInfo};
use ringvault_common::tls::{self, PemPair, Role, TlsMaterial};
use ringvault_common::{ChunkId, NodeId, RepoId};
use ringvault_net::quic;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::free_ports;

/// The repository every in-process client works in.
pub const REPO: &str = "inproc";

/// Timings for tests: peers probed every 100 ms, a failed peer routed around
/// for 1 s and out after 3 s, repair every 200 ms without a rate limit,
/// scrub off (a test that wants it sets `scrub_cycle`).
pub fn fast_settings() -> Settings {
    Settings {
        replica_timeout: Duration::from_secs(2),
        route_around: Duration::from_secs(1),
        out_after: Duration::from_secs(3),
        probe_interval: Duration::from_millis(100),
        repair_interval: Duration::from_millis(200),
        repair_bytes_per_s: 0,
        scrub_cycle: Duration::ZERO,
        ..Settings::default()
    }
}

/// A running node: its server loop and how to stop it.
struct Running {
    node: Arc<Node>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// One node's place in the cluster: its id, address and store, and its
/// server while it runs.
struct Slot {
    id: NodeId,
    addr: SocketAddr,
    store: Arc<MemStore>,
    running: Option<Running>,
}

/// A cluster of in-process nodes. Call from a multi-threaded tokio runtime
/// (`#[tokio::test(flavor = "multi_thread")]`): [`MemStore`] calls run on
/// blocking threads as the file store's do. Dropping it aborts every node.
pub struct InprocCluster {
    ca: PemPair,
    map: ClusterMap,
    settings: Settings,
    slots: Vec<Slot>,
}

impl InprocCluster {
    /// Starts `nodes` nodes (ids 1..=nodes) with N = `replicas`,
    /// W = `quorum` and `settings`, each on a fresh [`MemStore`].
    ///
    /// # Errors
    /// When certificates cannot be made, ports cannot be found or bound, or
    /// the map is invalid.
    pub async fn start(
        nodes: u32,
        replicas: u32,
        quorum: u32,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        let ca = tls::make_ca("ringvault in-process test CA")?;
        let ports = free_ports(usize::try_from(nodes)?)?;
        let slots: Vec<Slot> = (1..=nodes)
            .zip(ports)
            .map(|(id, port)| Slot {
                id: NodeId(id),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                store: Arc::new(MemStore::default()),
                running: None,
            })
            .collect();
        let map = ClusterMap {
            epoch: 1,
            replicas,
            write_quorum: quorum,
            revoked: Vec::new(),
            nodes: slots
                .iter()
                .map(|s| NodeInfo {
                    id: s.id,
                    address: s.addr.to_string(),
                    weight: 1,
                    zone: String::new(),
                })
                .collect(),
        };
        map.validate().context("the test's cluster map")?;
        let mut cluster = Self {
            ca,
            map,
            settings,
            slots,
        };
        for i in 0..cluster.slots.len() {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    /// Starts node `i` (0-based) on its address and store.
    ///
    /// # Errors
    /// When it runs already, or its certificate, endpoint or node cannot be
    /// made.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let slot = &mut self.slots[i];
        if slot.running.is_some() {
            bail!("node {} runs already", slot.id);
        }
        let pair = tls::issue_node(&self.ca, slot.id, &[slot.addr.ip().to_string()])?;
        let material = TlsMaterial::from_pem(&self.ca.cert, &pair.cert, &pair.key)?;
        let endpoint = quic::endpoint(
            slot.addr,
            Some(quic::server_config(&material)?),
            quic::client_config(&material)?,
        )
        .with_context(|| format!("binding node {} to UDP {}", slot.id, slot.addr))?;
        let store: Arc<dyn ChunkStore> = slot.store.clone();
        let node = Node::new(
            slot.id,
            self.map.clone(),
            store,
            endpoint,
            self.settings.clone(),
            None,
        )?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(node.clone(), async {
            let _ = stopped.await;
        }));
        slot.running = Some(Running { node, stop, task });
        Ok(())
    }

    /// Stops node `i` as a shutdown does (its server loop and maintenance
    /// end, its endpoint closes) and keeps its store. Waits at most 10 s
    /// for the loop to end.
    ///
    /// # Errors
    /// When it was not running, or its loop failed or did not end in time.
    pub async fn stop_node(&mut self, i: usize) -> anyhow::Result<()> {
        let slot = &mut self.slots[i];
        let Some(running) = slot.running.take() else {
            bail!("node {} is not running", slot.id);
        };
        let _ = running.stop.send(());
        drop(running.node);
        tokio::time::timeout(Duration::from_secs(10), running.task)
            .await
            .with_context(|| format!("node {} did not stop within 10 s", slot.id))?
            .context("the server task")??;
        Ok(())
    }

    /// Replaces node `i`'s store with an empty one, as a replaced disk
    /// would. Stop the node first.
    ///
    /// # Errors
    /// When the node is running.
    pub fn wipe(&mut self, i: usize) -> anyhow::Result<()> {
        let slot = &mut self.slots[i];
        if slot.running.is_some() {
            bail!("stop node {} before wiping its store", slot.id);
        }
        slot.store = Arc::new(MemStore::default());
        Ok(())
    }

    /// Node `i`'s store.
    pub fn store(&self, i: usize) -> &Arc<MemStore> {
        &self.slots[i].store
    }

    /// Node `i`'s server state while it runs.
    pub fn node(&self, i: usize) -> Option<&Arc<Node>> {
        self.slots[i].running.as_ref().map(|r| &r.node)
    }

    /// Node `i`'s id.
    pub fn id(&self, i: usize) -> NodeId {
        self.slots[i].id
    }

    /// The cluster map the nodes started with.
    pub fn map(&self) -> &ClusterMap {
        &self.map
    }

    /// The repository clients use ([`REPO`]).
    pub fn repo() -> RepoId {
        // The name is a valid repository id: a constant.
        RepoId::new(REPO).expect("REPO is a valid repository id")
    }

    /// The agent's client, connected as an agent named `name` with `role`
    /// through every node's address. `timeout` bounds each request, and
    /// each connect to at most 5 s: a request that outlives it marks its
    /// server down for the agent's `DOWN_FOR` (20 s), so give a coordinator
    /// that must first find its peers down time to answer (10 s does on a
    /// loaded machine), and a short one where a test wants fast failover.
    ///
    /// # Errors
    /// When certificates cannot be made or no node answers.
    pub async fn client(
        &self,
        name: &str,
        role: Role,
        timeout: Duration,
    ) -> anyhow::Result<Cluster> {
        let repo = Self::repo();
        let pair = tls::issue_agent(&self.ca, &repo, name, role)?;
        let material = TlsMaterial::from_pem(&self.ca.cert, &pair.cert, &pair.key)?;
        let endpoint = quic::endpoint(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            None,
            quic::client_config(&material)?,
        )?;
        let servers: Vec<String> = self.slots.iter().map(|s| s.addr.to_string()).collect();
        Ok(Cluster::connect(endpoint, repo, &servers, timeout).await?)
    }

    /// How many of `ids` node `i`'s store holds.
    pub fn held_on(&self, i: usize, ids: &[ChunkId]) -> usize {
        self.slots[i]
            .store
            .has(&Self::repo(), ids)
            .map_or(0, |h| h.iter().filter(|&&b| b).count())
    }

    /// For each of `ids`, how many stores hold it.
    pub fn copies(&self, ids: &[ChunkId]) -> Vec<usize> {
        let mut copies = vec![0; ids.len()];
        for slot in &self.slots {
            if let Ok(held) = slot.store.has(&Self::repo(), ids) {
                for (c, h) in copies.iter_mut().zip(held) {
                    *c += usize::from(h);
                }
            }
        }
        copies
    }

    /// The sum over running nodes of a status field, e.g. `|s| s.hints`.
    pub fn total(&self, field: impl Fn(&ringvault_common::wire::NodeStatus) -> u64) -> u64 {
        self.slots
            .iter()
            .filter_map(|s| s.running.as_ref())
            .map(|r| field(&r.node.status()))
            .sum()
    }
}

impl Drop for InprocCluster {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if let Some(running) = slot.running.take() {
                running.task.abort();
            }
        }
    }
}

/// `count` blobs of `bytes` pseudo-random bytes each, distinct for each
/// `seed`, under made-up chunk ids (servers neither open nor check blobs).
pub fn blobs(count: usize, bytes: usize, seed: u64) -> Vec<(ChunkId, Bytes)> {
    (0..count)
        .map(|i| {
            let mut next = xorshift(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
            let mut id = [0u8; 32];
            id.iter_mut().for_each(|b| *b = next());
            let data: Vec<u8> = (0..bytes).map(|_| next()).collect();
            (ChunkId(id), Bytes::from(data))
        })
        .collect()
}

/// A xorshift64 byte stream (Marsaglia, "Xorshift RNGs", 2003).
fn xorshift(seed: u64) -> impl FnMut() -> u8 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x.to_be_bytes()[3]
    }
}

/// Waits, polling every 50 ms, until `check` gives a value, for at most
/// `limit`; the error names `what` was awaited.
///
/// # Errors
/// When `limit` passes first.
pub async fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting {limit:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
