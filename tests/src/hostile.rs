//! A hostile chunk server: a man in the middle holding a valid node
//! certificate, for tests of what the agent accepts from a lying server.
//!
//! [`HostileServer`] is an in-process QUIC endpoint (the server's own
//! [`ringvault_net::quic`] plumbing) with a node certificate issued
//! by the cluster's CA for the node it impersonates. It listens where the
//! agent and the other servers expect that node, and relays every request,
//! one stream per request as on the real wire ([`ringvault_common::wire`]),
//! to the real server behind it, connecting as that same node (node
//! certificates may send every request). On the way back it falsifies the
//! answers its [`Rules`] name:
//!
//! - a blob ([`Request::GetBlob`], or one of a [`Request::GetBlobs`] batch)
//!   becomes another chunk's sealed blob, one
//!   it saw pass in a put or a read earlier, or the right blob cut short
//!   ([`BlobLie`]);
//! - snapshot records under a chosen new id carry an older snapshot's record
//!   instead: in [`Response::Snapshots`] and
//!   [`Response::SnapshotsAndTombstones`] lists, and for
//!   [`Request::GetSnapshot`] and [`Request::GetRecord`] (record sync
//!   between servers), which it asks the real server for the old id.
//!
//! Everything else passes unchanged. It counts what it falsified, so a test
//! can tell a lie that was caught from one that was never told.
//!
//! It is also a witness: it keeps every blob the real server acknowledged
//! (a put answered with at least one copy) and the id of every snapshot
//! record it acknowledged, so a test can check after a crash that nothing
//! acknowledged was lost ([`HostileServer::acknowledged_blobs`]). An
//! honest relay ([`Rules::default`]) is only that witness.
//!
//! [`HostileServer::impersonate`] slides one between a [`TestCluster`] and
//! its node `i`: node `i` restarts on a new port and the hostile server
//! takes the address it listened on, which is where the cluster reaches it
//! (the map address, or the port its [`crate::FaultProxy`] forwards to).
//!
//! The server runs on its own tokio runtime, so tests stay synchronous;
//! dropping it closes the endpoint and stops the runtime (drop it outside
//! an async context).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use parking_lot::Mutex;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use ringvault_common::listing;
use ringvault_common::tls::{self, PemPair, TlsMaterial};
use ringvault_common::wire::{
    self, BlobReply, GetBlob, GetBlobs, GetRecord, GetSnapshot, MAX_FRAME, PutBlobs, PutSnapshot,
    Request, Response,
};
use ringvault_common::{ChunkId, NodeId, SnapshotId};
use ringvault_net::quic;

use crate::{TestCluster, free_ports};

/// How long a handshake, downstream or upstream, may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the real server may take to answer one relayed request.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of sealed blobs kept as decoys for [`BlobLie::OtherChunk`]; blobs
/// seen beyond this are not kept.
const MAX_DECOY_BYTES: usize = 64 << 20;
/// The record kind of a snapshot in [`Request::GetRecord`].
const RECORD_KIND_SNAPSHOT: u8 = 1;

/// What a [`HostileServer`] falsifies. The default is nothing: it relays
/// every answer unchanged.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// How blob answers lie; `None` passes them unchanged.
    pub blob: Option<BlobLie>,
    /// Only blobs of at least this many (sealed) bytes are falsified: with
    /// a few KiB, directory trees pass and file chunks (at least the
    /// chunker's minimum size) do not.
    pub min_blob_bytes: usize,
    /// `Some((new, old))`: every answer about snapshot `new` carries the
    /// record of snapshot `old` instead, under `new`'s id.
    pub swap_snapshot: Option<(SnapshotId, SnapshotId)>,
}

/// A falsified answer to [`Request::GetBlob`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobLie {
    /// The sealed blob of another chunk of the repository, one the server
    /// saw pass earlier (a put or a read). When it has seen none, the
    /// answer passes unchanged.
    OtherChunk,
    /// The right blob without its last this many bytes.
    DropTail(usize),
    /// The first half of the right blob.
    Half,
}

/// A man-in-the-middle chunk server with a valid node certificate; see the
/// module docs. Stops when dropped.
pub struct HostileServer {
    addr: SocketAddr,
    node: NodeId,
    shared: Arc<Shared>,
    endpoint: Endpoint,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HostileServer {
    /// Puts a hostile server in front of `cluster`'s node `i` (0-based):
    /// restarts the node on a free loopback port and binds the address it
    /// listened on, relaying to its new one. Start it before the data a
    /// test reads is written, so it sees blobs to use as decoys.
    ///
    /// # Errors
    /// When the node's config or the CA cannot be read, the node does not
    /// restart, or the old address cannot be bound.
    pub fn impersonate(cluster: &mut TestCluster, i: usize) -> anyhow::Result<Self> {
        let config_path = &cluster.layout.node_configs[i];
        let config = std::fs::read_to_string(config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let listen: SocketAddr = setting(&config, "listen")
            .context("no listen address in the node config")?
            .trim_matches('"')
            .parse()
            .context("the node's listen address")?;
        let node = NodeId(
            setting(&config, "node-id")
                .context("no node-id in the node config")?
                .parse()
                .context("the node's node-id")?,
        );
        let dir = cluster.cluster_dir();
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        let ca = PemPair {
            cert: read("ca.pem")?,
            key: read("ca.key")?,
        };
        let behind = SocketAddr::from((listen.ip(), free_ports(1)?[0]));
        cluster.set_server_setting(i, "listen", &format!("\"{behind}\""));
        cluster
            .restart(i)
            .with_context(|| format!("restarting node {i} behind the hostile server"))?;
        Self::start(listen, behind, node, &ca)
    }

    /// Binds `listen` as node `node`, with a node certificate issued now
    /// from `ca`, and relays to the real server at `upstream`; honest until
    /// [`HostileServer::set_rules`] says otherwise.
    ///
    /// # Errors
    /// When the certificate cannot be issued, the runtime cannot start, or
    /// `listen` cannot be bound.
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        node: NodeId,
        ca: &PemPair,
    ) -> anyhow::Result<Self> {
        let pair = tls::issue_node(ca, node, &[listen.ip().to_string()])
            .context("issuing the hostile server's node certificate")?;
        let material = TlsMaterial::from_pem(&ca.cert, &pair.cert, &pair.key)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hostile-server")
            .enable_all()
            .build()
            .context("starting the hostile server's runtime")?;
        let endpoint = {
            // quinn spawns its endpoint driver on the current runtime.
            let _entered = runtime.enter();
            quic::endpoint(
                listen,
                Some(quic::server_config(&material)?),
                quic::client_config(&material)?,
            )
            .with_context(|| format!("binding the hostile server to UDP {listen}"))?
        };
        let addr = endpoint.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::default(),
            decoys: Mutex::default(),
            tampered_blobs: Mutex::default(),
            tampered_records: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
            acked_blobs: Mutex::default(),
            acked_snapshots: Mutex::default(),
        });
        runtime.spawn(serve(endpoint.clone(), shared.clone()));
        Ok(Self {
            addr,
            node,
            shared,
            endpoint,
            runtime: Some(runtime),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node it impersonates.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Replaces what it falsifies from now on (requests in flight keep the
    /// rules they started with).
    pub fn set_rules(&self, rules: Rules) {
        *self.shared.rules.lock() = rules;
    }

    /// The chunks whose blob it has falsified at least once so far.
    pub fn tampered_blobs(&self) -> BTreeSet<ChunkId> {
        self.shared.tampered_blobs.lock().clone()
    }

    /// Answers it has falsified a snapshot record in so far (lists,
    /// snapshot and record reads).
    pub fn tampered_records(&self) -> u64 {
        self.shared.tampered_records.load(Ordering::Relaxed)
    }

    /// Sealed blobs it keeps as decoys for [`BlobLie::OtherChunk`].
    pub fn decoys(&self) -> usize {
        self.shared.decoys.lock().blobs.len()
    }

    /// Requests relayed to the real server so far.
    pub fn relayed(&self) -> u64 {
        self.shared.relayed.load(Ordering::Relaxed)
    }

    /// Every blob the real server has acknowledged so far (answered a put
    /// with at least one copy: with one server, its own durable copy), as
    /// it was sent. Holds them all in memory: for tests of a few MiB.
    pub fn acknowledged_blobs(&self) -> BTreeMap<ChunkId, Bytes> {
        self.shared.acked_blobs.lock().clone()
    }

    /// Every snapshot record the real server has acknowledged so far.
    pub fn acknowledged_snapshots(&self) -> BTreeSet<SnapshotId> {
        self.shared.acked_snapshots.lock().clone()
    }

    /// Forgets what was acknowledged so far: from now on the witness
    /// starts afresh (after a test put the server's state back).
    pub fn clear_acknowledged(&self) {
        self.shared.acked_blobs.lock().clear();
        self.shared.acked_snapshots.lock().clear();
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"hostile server stopped");
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// The value of `key = value` in a TOML-ish config, if set.
fn setting<'a>(config: &'a str, key: &str) -> Option<&'a str> {
    config.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// What the serving tasks share with the test thread.
struct Shared {
    upstream: SocketAddr,
    rules: Mutex<Rules>,
    decoys: Mutex<Decoys>,
    tampered_blobs: Mutex<BTreeSet<ChunkId>>,
    tampered_records: AtomicU64,
    relayed: AtomicU64,
    acked_blobs: Mutex<BTreeMap<ChunkId, Bytes>>,
    acked_snapshots: Mutex<BTreeSet<SnapshotId>>,
}

/// Sealed blobs seen passing, by chunk id.
#[derive(Default)]
struct Decoys {
    blobs: BTreeMap<ChunkId, Bytes>,
    bytes: usize,
}

/// Accepts connections and relays each over its own upstream connection.
async fn serve(endpoint: Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let (endpoint, shared) = (endpoint.clone(), shared.clone());
        tokio::spawn(async move {
            let Ok(Ok(down)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await else {
                return;
            };
            let upstream = shared.upstream.to_string();
            let up = match quic::connect(&endpoint, &upstream, HANDSHAKE_TIMEOUT).await {
                Ok(up) => up,
                Err(_) => {
                    down.close(1u32.into(), b"upstream unreachable");
                    return;
                }
            };
            loop {
                tokio::select! {
                    accepted = down.accept_bi() => {
                        let Ok((send, recv)) = accepted else { break };
                        tokio::spawn(relay(shared.clone(), up.clone(), send, recv));
                    }
                    _ = up.closed() => {
                        down.close(1u32.into(), b"upstream closed");
                        break;
                    }
                }
            }
            up.close(0u32.into(), b"downstream closed");
        });
    }
}

/// Relays one request and its answer, falsifying the answer as the rules
/// say. An upstream failure resets the stream.
async fn relay(shared: Arc<Shared>, up: Connection, mut send: SendStream, mut recv: RecvStream) {
    let Ok(frame) = recv.read_to_end(MAX_FRAME).await else {
        return;
    };
    let frame = Bytes::from(frame);
    let rules = shared.rules.lock().clone();
    let (request, payload) = match wire::decode_frame::<Request>(&frame) {
        Ok((request, payload)) => {
            let payload = frame.slice(frame.len() - payload.len()..);
            shared.remember_put(&request, &payload);
            (Some(request), payload)
        }
        Err(_) => (None, Bytes::new()),
    };
    let outgoing = request
        .as_ref()
        .and_then(|r| ask_for_old_record(&rules, r))
        .map_or_else(|| frame.clone(), |r| Bytes::from(wire::encode_header(&r)));
    shared.relayed.fetch_add(1, Ordering::Relaxed);
    let answer = match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange(&up, &outgoing)).await {
        Ok(Ok(answer)) => answer,
        _ => {
            let _ = send.reset(1u32.into());
            return;
        }
    };
    let answer = match &request {
        Some(request) => {
            shared.witness(request, &payload, &answer);
            shared.falsify(&rules, request, answer)
        }
        None => answer,
    };
    if send.write_all(&answer).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

/// One request frame to the real server and its whole answer frame.
async fn exchange(up: &Connection, frame: &[u8]) -> anyhow::Result<Bytes> {
    let (mut send, mut recv) = up.open_bi().await?;
    send.write_all(frame).await?;
    send.finish()?;
    Ok(Bytes::from(recv.read_to_end(MAX_FRAME).await?))
}

/// The request to send instead of `request` when a swap asks a single
/// record of the new snapshot: the same one for the old snapshot.
fn ask_for_old_record(rules: &Rules, request: &Request) -> Option<Request> {
    let (new, old) = rules.swap_snapshot?;
    match request {
        Request::GetSnapshot(GetSnapshot { repo, id }) if *id == new => {
            Some(Request::GetSnapshot(GetSnapshot {
                repo: repo.clone(),
                id: old,
            }))
        }
        Request::GetRecord(GetRecord { repo, kind, key })
            if *kind == RECORD_KIND_SNAPSHOT && *key == new.0 =>
        {
            Some(Request::GetRecord(GetRecord {
                repo: repo.clone(),
                kind: *kind,
                key: old.0,
            }))
        }
        _ => None,
    }
}

/// A response frame: the header behind `epoch`, then `payload`.
fn response_frame(epoch: u64, response: &Response, payload: &[Bytes]) -> Bytes {
    let mut out = wire::encode_response(epoch, response);
    for part in payload {
        out.extend_from_slice(part);
    }
    Bytes::from(out)
}

impl Shared {
    /// Notes what the real server's `answer` acknowledged of `request`
    /// (whose payload is `payload`).
    fn witness(&self, request: &Request, payload: &Bytes, answer: &Bytes) {
        let Ok((_, response, _)) = wire::decode_response(answer) else {
            return;
        };
        match (request, response) {
            (Request::PutBlobs(PutBlobs { blobs, .. }), Response::Put { copies })
                if copies.len() == blobs.len() =>
            {
                let mut acked = self.acked_blobs.lock();
                let mut offset = 0usize;
                for ((id, len), copies) in blobs.iter().zip(copies) {
                    let end = offset + *len as usize;
                    let Some(blob) = payload.get(offset..end) else {
                        return;
                    };
                    if copies > 0 {
                        acked.insert(*id, payload.slice_ref(blob));
                    }
                    offset = end;
                }
            }
            (Request::PutSnapshot(PutSnapshot { id, .. }), Response::Ok) => {
                self.acked_snapshots.lock().insert(*id);
            }
            _ => {}
        }
    }

    /// Keeps the blobs of a put as decoys.
    fn remember_put(&self, request: &Request, payload: &Bytes) {
        let Request::PutBlobs(PutBlobs { blobs, .. }) = request else {
            return;
        };
        let mut offset = 0usize;
        for (id, len) in blobs {
            let end = offset + *len as usize;
            let Some(blob) = payload.get(offset..end) else {
                return;
            };
            self.remember(*id, payload.slice_ref(blob));
            offset = end;
        }
    }

    fn remember(&self, id: ChunkId, blob: Bytes) {
        let mut decoys = self.decoys.lock();
        if decoys.blobs.contains_key(&id) || decoys.bytes + blob.len() > MAX_DECOY_BYTES {
            return;
        }
        decoys.bytes += blob.len();
        decoys.blobs.insert(id, blob);
    }

    /// The answer to pass downstream for `request`, given the real
    /// server's `answer`.
    fn falsify(&self, rules: &Rules, request: &Request, answer: Bytes) -> Bytes {
        let Ok((epoch, response, payload)) = wire::decode_response(&answer) else {
            return answer;
        };
        let payload = answer.slice(answer.len() - payload.len()..);
        match (request, response) {
            (Request::GetBlob(GetBlob { id, .. }), Response::Data) => {
                let lie = rules
                    .blob
                    .filter(|_| payload.len() >= rules.min_blob_bytes)
                    .and_then(|lie| self.lie_about(lie, id, &payload));
                self.remember(*id, payload);
                match lie {
                    Some(fake) => {
                        self.tampered_blobs.lock().insert(*id);
                        response_frame(epoch, &Response::Data, &[fake])
                    }
                    None => answer,
                }
            }
            (Request::GetBlobs(GetBlobs { ids, .. }), Response::Blobs { replies }) => self
                .falsify_batch(rules, epoch, ids, &replies, &payload)
                .unwrap_or(answer),
            (Request::ListSnapshots(_), Response::Snapshots { records }) => {
                match rules.swap_snapshot {
                    Some((new, old)) => self
                        .swap_listed(epoch, &records, None, &payload, new, old)
                        .unwrap_or(answer),
                    None => answer,
                }
            }
            (
                Request::ListSnapshotsAndTombstones(_),
                Response::SnapshotsAndTombstones {
                    records,
                    tombstones,
                },
            ) => match rules.swap_snapshot {
                Some((new, old)) => self
                    .swap_listed(epoch, &records, Some(tombstones), &payload, new, old)
                    .unwrap_or(answer),
                None => answer,
            },
            // Asked for the old record instead (ask_for_old_record).
            (Request::GetSnapshot(GetSnapshot { id, .. }), Response::Data)
                if rules.swap_snapshot.is_some_and(|(new, _)| new == *id) =>
            {
                self.tampered_records.fetch_add(1, Ordering::Relaxed);
                answer
            }
            (Request::GetRecord(GetRecord { kind, key, .. }), Response::Data)
                if *kind == RECORD_KIND_SNAPSHOT
                    && rules.swap_snapshot.is_some_and(|(new, _)| new.0 == *key) =>
            {
                self.tampered_records.fetch_add(1, Ordering::Relaxed);
                answer
            }
            _ => answer,
        }
    }

    /// A batched answer ([`Response::Blobs`]) with every blob the rules
    /// cover falsified as in a single one, or `None` when the answer does
    /// not add up (passed on as it is).
    fn falsify_batch(
        &self,
        rules: &Rules,
        epoch: u64,
        ids: &[ChunkId],
        replies: &[BlobReply],
        payload: &Bytes,
    ) -> Option<Bytes> {
        let mut offset = 0usize;
        let mut told = Vec::with_capacity(replies.len());
        let mut blobs = Vec::new();
        for (id, reply) in ids.iter().zip(replies) {
            let BlobReply::Data(len) = *reply else {
                told.push(*reply);
                continue;
            };
            let end = offset + len as usize;
            let blob = payload.slice(offset..payload.len().min(end).max(offset));
            offset = end;
            let lie = rules
                .blob
                .filter(|_| blob.len() >= rules.min_blob_bytes)
                .and_then(|lie| self.lie_about(lie, id, &blob));
            self.remember(*id, blob.clone());
            let sent = match lie {
                Some(fake) => {
                    self.tampered_blobs.lock().insert(*id);
                    fake
                }
                None => blob,
            };
            told.push(BlobReply::Data(u32::try_from(sent.len()).ok()?));
            blobs.push(sent);
        }
        (offset == payload.len())
            .then(|| response_frame(epoch, &Response::Blobs { replies: told }, &blobs))
    }

    /// `blob` (the real blob of `id`) as `lie` tells it, if it can.
    fn lie_about(&self, lie: BlobLie, id: &ChunkId, blob: &Bytes) -> Option<Bytes> {
        match lie {
            BlobLie::OtherChunk => self
                .decoys
                .lock()
                .blobs
                .iter()
                .find(|(other, _)| *other != id)
                .map(|(_, decoy)| decoy.clone()),
            BlobLie::DropTail(n) => Some(blob.slice(..blob.len().saturating_sub(n))),
            BlobLie::Half => Some(blob.slice(..blob.len() / 2)),
        }
    }

    /// A snapshot list ([`Response::Snapshots`], or with `Some(tombstones)`
    /// [`Response::SnapshotsAndTombstones`]) with `old`'s record under
    /// `new`'s id, or `None` when the list lacks either.
    fn swap_listed(
        &self,
        epoch: u64,
        records: &[(SnapshotId, u32)],
        tombstones: Option<u32>,
        payload: &Bytes,
        new: SnapshotId,
        old: SnapshotId,
    ) -> Option<Bytes> {
        let split = listing::split(records, tombstones.unwrap_or(0), payload).ok()?;
        let mut listed: Vec<(SnapshotId, Bytes)> = split
            .records
            .into_iter()
            .map(|(id, r)| (id, payload.slice_ref(r)))
            .collect();
        let old_record = listed.iter().find(|(id, _)| *id == old)?.1.clone();
        let slot = listed.iter_mut().find(|(id, _)| *id == new)?;
        slot.1 = old_record;
        self.tampered_records.fetch_add(1, Ordering::Relaxed);
        let lengths = listed
            .iter()
            .map(|(id, record)| (*id, record.len() as u32))
            .collect();
        let response = match tombstones {
            None => Response::Snapshots { records: lengths },
            Some(tombstones) => Response::SnapshotsAndTombstones {
                records: lengths,
                tombstones,
            },
        };
        let mut parts: Vec<Bytes> = listed.into_iter().map(|(_, record)| record).collect();
        parts.extend(
            split
                .tombstones
                .iter()
                .map(|t| Bytes::copy_from_slice(&t.0)),
        );
        Some(response_frame(epoch, &response, &parts))
    }
}
