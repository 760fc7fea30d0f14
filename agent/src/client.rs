//! The agent's view of the cluster: connections to the servers, the cluster
//! map learned at hello, and requests routed by placement with failover.
//!
//! A server that fails to answer is marked down for [`DOWN_FOR`] and routed
//! around: blobs go to their first live replica, reads try replicas in
//! placement order, records go to any live server.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use quinn::Endpoint;
use ringvault_chunkserver::net::{self, CallError, Peers};
use ringvault_common::placement::ClusterMap;
use ringvault_common::wire::{ErrorCode, MAX_HAS_IDS, PROTOCOL_VERSION, Request, Response};
use ringvault_common::{ChunkId, NodeId, RepoId, SnapshotId};

/// How long a server that failed stays routed around.
pub const DOWN_FOR: Duration = Duration::from_secs(20);

/// Errors talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No configured server answered.
    #[error("cluster unreachable: no server answered ({0})")]
    Unreachable(String),
    /// A server refused our certificate.
    #[error("{0}")]
    CertificateRefused(String),
    /// Too few replicas stored a write.
    #[error(
        "write quorum not reached: chunk {chunk} has {copies} durable copies, {needed} required ({reason})"
    )]
    QuorumNotReached {
        /// A chunk that fell short.
        chunk: ChunkId,
        /// Copies it has.
        copies: u32,
        /// W.
        needed: u32,
        /// What the servers said.
        reason: String,
    },
    /// No live server holds the blob or record.
    #[error("{0} not found on any reachable server")]
    NotFound(String),
    /// A server answered with an error.
    #[error("server {node}: {error}")]
    Server {
        /// Which server.
        node: NodeId,
        /// Its error.
        error: CallError,
    },
    /// The servers speak another protocol.
    #[error("protocol mismatch: {0}")]
    Protocol(String),
    /// A server refused the request for this certificate: its role does not
    /// allow it, or it is revoked.
    #[error("refused: {0}")]
    Forbidden(String),
}

/// A copy of a blob that a server held but that was not good.
#[derive(Clone, Debug)]
pub struct BadCopy {
    /// The chunk.
    pub chunk: ChunkId,
    /// The server holding the bad copy.
    pub node: NodeId,
    /// What was wrong.
    pub reason: String,
}

/// Connections to a cluster, for one repository.
pub struct Cluster {
    peers: Peers,
    repo: RepoId,
    /// The newest cluster map learned; replaced when an answer carries a
    /// newer epoch.
    map: std::sync::RwLock<std::sync::Arc<ClusterMap>>,
    bad_copies: Mutex<Vec<BadCopy>>,
    timeout: Duration,
    next: std::sync::atomic::AtomicUsize,
}

impl Cluster {
    /// Connects to the first of `servers` that answers hello and learns the
    /// cluster map from it.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] listing why each server failed,
    /// [`ClientError::CertificateRefused`], [`ClientError::Protocol`].
    pub async fn connect(
        endpoint: Endpoint,
        repo: RepoId,
        servers: &[String],
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut reasons = Vec::new();
        let connect_timeout = timeout.min(Duration::from_secs(5));
        for addr in servers {
            let conn = match net::connect(&endpoint, addr, connect_timeout).await {
                Ok(c) => c,
                Err(CallError::CertificateRefused(e)) => return Err(refused(addr, &e)),
                Err(e) => {
                    reasons.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            let hello = Request::Hello {
                protocol: PROTOCOL_VERSION,
                epoch: 0,
            };
            match net::call(&conn, &hello, vec![], connect_timeout).await {
                Ok((_, Response::Hello { node, map, .. }, _)) => {
                    map.validate().map_err(|e| {
                        ClientError::Protocol(format!("server sent a bad map: {e}"))
                    })?;
                    let peers = Peers::new(endpoint, connect_timeout, DOWN_FOR);
                    // Start from this server's view of its peers, so a
                    // command does not spend a connect timeout on each
                    // server the cluster already knows is down.
                    if let Ok((_, Response::NodeStatus(status), _)) =
                        net::call(&conn, &Request::NodeStatus, vec![], connect_timeout).await
                    {
                        for (peer, state) in status.peers {
                            if state != ringvault_common::wire::PeerState::Up {
                                peers.mark_down(
                                    peer,
                                    &format!("{node} reports it {}", state.as_str()),
                                );
                            }
                        }
                    }
                    peers.insert(node, conn);
                    return Ok(Self {
                        peers,
                        repo,
                        map: std::sync::RwLock::new(std::sync::Arc::new(map)),
                        bad_copies: Mutex::new(Vec::new()),
                        timeout,
                        next: std::sync::atomic::AtomicUsize::new(0),
                    });
                }
                Ok((_, other, _)) => {
                    reasons.push(format!("{addr}: unexpected hello reply {other:?}"))
                }
                Err(CallError::CertificateRefused(e)) => return Err(refused(addr, &e)),
                Err(CallError::Remote(e)) if e.code == ErrorCode::VersionMismatch => {
                    return Err(ClientError::Protocol(e.message));
                }
                Err(CallError::Remote(e)) if e.code == ErrorCode::Forbidden => {
                    return Err(ClientError::Forbidden(format!("{addr}: {}", e.message)));
                }
                Err(e) => reasons.push(format!("{addr}: {e}")),
            }
        }
        Err(ClientError::Unreachable(reasons.join("; ")))
    }

    /// The cluster map (the newest learned so far).
    pub fn map(&self) -> std::sync::Arc<ClusterMap> {
        self.map
            .read()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Fetches the map from `node` when an answer carried an epoch newer
    /// than ours (agents adopt a newer epoch from any server's reply).
    async fn refresh_map(&self, node: NodeId) {
        if self.peers.newest_epoch() <= self.map().epoch {
            return;
        }
        let Some(addr) = self.map().address(node).map(str::to_owned) else {
            return;
        };
        let hello = Request::Hello {
            protocol: PROTOCOL_VERSION,
            epoch: self.map().epoch,
        };
        let answer = self
            .peers
            .call(node, &addr, &hello, vec![], self.timeout)
            .await;
        if let Ok((Response::Hello { map, .. }, _)) = answer
            && map.validate().is_ok()
            && map.epoch > self.map().epoch
        {
            tracing::info!(epoch = map.epoch, "adopting a newer cluster map");
            if let Ok(mut m) = self.map.write()
                && map.epoch > m.epoch
            {
                *m = std::sync::Arc::new(map);
            }
        }
    }

    /// The repository.
    pub fn repo(&self) -> &RepoId {
        &self.repo
    }

    /// Bad copies met by reads so far.
    pub fn bad_copies(&self) -> Vec<BadCopy> {
        self.bad_copies
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Notes a bad copy (reported at the end of a restore).
    pub fn report_bad_copy(&self, chunk: ChunkId, node: NodeId, reason: String) {
        tracing::warn!(chunk = %chunk, node = %node, %reason, "bad copy");
        if let Ok(mut v) = self.bad_copies.lock() {
            v.push(BadCopy {
                chunk,
                node,
                reason,
            });
        }
    }

    /// UDP payload bytes sent so far (QUIC packets, headers and
    /// retransmissions included): what the agent put on the wire.
    pub fn wire_bytes_sent(&self) -> u64 {
        self.peers.udp_bytes_sent()
    }

    /// Closes connections and waits briefly for them to drain.
    pub async fn close(&self) {
        let endpoint = self.peers.endpoint();
        endpoint.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }

    /// Every server of the map with its address and whether it is thought
    /// up (not failed in the last few seconds).
    pub fn servers(&self) -> Vec<(NodeId, String, bool)> {
        self.map()
            .nodes
            .iter()
            .map(|n| (n.id, n.address.clone(), !self.is_down(n.id)))
            .collect()
    }

    fn is_down(&self, node: NodeId) -> bool {
        self.peers.is_down(node)
    }

    /// Live nodes in map order.
    fn live_nodes(&self) -> Vec<NodeId> {
        self.map()
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|&n| !self.is_down(n))
            .collect()
    }

    /// Live nodes, starting at a different one on each call, so requests
    /// any server can answer (has-queries, records) spread over the cluster.
    fn live_nodes_rotated(&self) -> Vec<NodeId> {
        let mut nodes = self.live_nodes();
        if !nodes.is_empty() {
            let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % nodes.len();
            nodes.rotate_left(start);
        }
        nodes
    }

    /// One request to one server; connection failures mark it down.
    async fn call(
        &self,
        node: NodeId,
        req: &Request,
        payload: Vec<Bytes>,
    ) -> Result<(Response, Bytes), ClientError> {
        let addr = self
            .map()
            .address(node)
            .map_or_else(|| node.to_string(), str::to_owned);
        let result = self
            .peers
            .call(node, &addr, req, payload, self.timeout)
            .await;
        if result.is_ok() {
            self.refresh_map(node).await;
        }
        result.map_err(|error| match error {
            CallError::CertificateRefused(e) => refused(&addr, &e),
            CallError::Remote(e) if e.code == ErrorCode::Forbidden => {
                ClientError::Forbidden(format!("server {node}: {}", e.message))
            }
            error => ClientError::Server { node, error },
        })
    }

    /// One request to any live server, moving on to the next when one is
    /// unreachable. Errors the server itself returns are final.
    async fn call_any(
        &self,
        req: &Request,
        payload: Vec<Bytes>,
    ) -> Result<(NodeId, Response, Bytes), ClientError> {
        let mut reasons = Vec::new();
        for node in self.live_nodes_rotated() {
            match self.call(node, req, payload.clone()).await {
                Ok((r, p)) => return Ok((node, r, p)),
                Err(ClientError::Server {
                    node,
                    error: CallError::Remote(e),
                }) => {
                    return Err(ClientError::Server {
                        node,
                        error: CallError::Remote(e),
                    });
                }
                Err(e @ (ClientError::CertificateRefused(_) | ClientError::Forbidden(_))) => {
                    return Err(e);
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        Err(ClientError::Unreachable(if reasons.is_empty() {
            "every server is marked down".into()
        } else {
            reasons.join("; ")
        }))
    }

    /// Which of `ids` the cluster holds with at least W copies.
    ///
    /// # Errors
    /// [`ClientError`] when no server answers.
    pub async fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, ClientError> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(MAX_HAS_IDS) {
            let req = Request::Has {
                repo: self.repo.clone(),
                ids: part.to_vec(),
                local_only: false,
            };
            match self.call_any(&req, vec![]).await? {
                (_, Response::Has { present }, _) if present.len() == part.len() => {
                    out.extend(present)
                }
                (node, other, _) => {
                    return Err(ClientError::Protocol(format!(
                        "{node} answered has with {other:?}"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Stores sealed blobs: each goes once, to its first live replica, which
    /// replicates it; succeeds when every blob has W durable copies.
    ///
    /// # Errors
    /// [`ClientError::QuorumNotReached`], or unreachable servers.
    pub async fn put(&self, blobs: Vec<(ChunkId, Bytes)>) -> Result<(), ClientError> {
        let mut pending = blobs;
        // Each round routes around the servers the last one found down.
        let map = self.map();
        for _round in 0..=map.nodes.len() {
            if pending.is_empty() {
                return Ok(());
            }
            let mut groups: HashMap<NodeId, Vec<(ChunkId, Bytes)>> = HashMap::new();
            for (id, blob) in pending.drain(..) {
                // The first live node in placement order coordinates: an
                // owner when one is up, else a node that keeps a hint.
                let Some(target) = map.ranked(&id).into_iter().find(|n| !self.is_down(*n)) else {
                    return Err(ClientError::QuorumNotReached {
                        chunk: id,
                        copies: 0,
                        needed: map.write_quorum,
                        reason: "every replica is down".into(),
                    });
                };
                groups.entry(target).or_default().push((id, blob));
            }
            let mut calls: FuturesUnordered<_> = groups
                .into_iter()
                .map(|(node, batch)| async move {
                    let req = Request::PutBlobs {
                        repo: self.repo.clone(),
                        blobs: batch.iter().map(|(id, b)| (*id, b.len() as u32)).collect(),
                        local_only: false,
                    };
                    let payload = batch.iter().map(|(_, b)| b.clone()).collect();
                    (node, batch, self.call(node, &req, payload).await)
                })
                .collect();
            while let Some((node, batch, result)) = calls.next().await {
                match result {
                    Ok((Response::Put { copies }, _)) if copies.len() == batch.len() => {
                        let w = map.write_quorum;
                        if let Some(i) = copies.iter().position(|&c| c < w) {
                            return Err(ClientError::QuorumNotReached {
                                chunk: batch[i].0,
                                copies: copies[i],
                                needed: w,
                                reason: format!(
                                    "coordinated by {node}; the other replicas are down or failed to write it (see their logs)"
                                ),
                            });
                        }
                    }
                    Ok((other, _)) => {
                        return Err(ClientError::Protocol(format!(
                            "{node} answered put with {other:?}"
                        )));
                    }
                    // Unreachable coordinator: retry its blobs elsewhere.
                    Err(ClientError::Server {
                        error:
                            CallError::Connect { .. } | CallError::Connection(_) | CallError::Timeout(_),
                        ..
                    }) => {
                        pending.extend(batch);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        match pending.first() {
            None => Ok(()),
            Some((id, _)) => Err(ClientError::QuorumNotReached {
                chunk: *id,
                copies: 0,
                needed: map.write_quorum,
                reason: "no replica answered".into(),
            }),
        }
    }

    /// Fetches a blob, trying servers in placement order; `accept` checks it
    /// (decrypts and verifies, typically on the blocking pool) and a copy it
    /// rejects is reported as bad and the next server is tried.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] when no live server has a good copy.
    pub async fn get<T, F>(
        &self,
        id: &ChunkId,
        accept: impl Fn(Bytes) -> F,
    ) -> Result<T, ClientError>
    where
        F: Future<Output = Result<T, String>>,
    {
        let mut notes = Vec::new();
        for node in self.map().ranked(id) {
            if self.is_down(node) {
                continue;
            }
            let req = Request::GetBlob {
                repo: self.repo.clone(),
                id: *id,
            };
            match self.call(node, &req, vec![]).await {
                Ok((Response::Data, blob)) => match accept(blob).await {
                    Ok(v) => return Ok(v),
                    Err(reason) => self.report_bad_copy(*id, node, reason),
                },
                Ok((other, _)) => notes.push(format!("{node}: unexpected {other:?}")),
                Err(ClientError::Server {
                    error: CallError::Remote(e),
                    ..
                }) if e.code == ErrorCode::NotFound => {}
                Err(ClientError::Server {
                    error: CallError::Remote(e),
                    ..
                }) if e.code == ErrorCode::Corrupt => {
                    self.report_bad_copy(*id, node, e.message);
                }
                Err(e @ ClientError::CertificateRefused(_)) => return Err(e),
                Err(e) => notes.push(e.to_string()),
            }
        }
        Err(ClientError::NotFound(if notes.is_empty() {
            format!("chunk {id}")
        } else {
            format!("chunk {id} ({})", notes.join("; "))
        }))
    }

    /// How many live servers hold each of `ids` (metadata only: no blob is
    /// read).
    ///
    /// # Errors
    /// [`ClientError`] when no server answers.
    pub async fn copies(&self, ids: &[ChunkId]) -> Result<Vec<u32>, ClientError> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(MAX_HAS_IDS) {
            let req = Request::Copies {
                repo: self.repo.clone(),
                ids: part.to_vec(),
            };
            match self.call_any(&req, vec![]).await? {
                (_, Response::Copies { copies }, _) if copies.len() == part.len() => {
                    out.extend(copies)
                }
                (node, other, _) => {
                    return Err(ClientError::Protocol(format!(
                        "{node} answered copies with {other:?}"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// One server's own report: epoch, store, backlogs, its view of peers.
    ///
    /// # Errors
    /// [`ClientError`] when it does not answer.
    pub async fn node_status(
        &self,
        node: NodeId,
    ) -> Result<ringvault_common::wire::NodeStatus, ClientError> {
        // Asked for this node by name: try it even if it is routed around.
        self.peers.mark_up(node);
        match self.call(node, &Request::NodeStatus, vec![]).await? {
            (Response::NodeStatus(s), _) => Ok(s),
            (other, _) => Err(ClientError::Protocol(format!(
                "{node} answered status with {other:?}"
            ))),
        }
    }

    /// The blob `id` as `node` holds it: `Ok(None)` when it holds none.
    ///
    /// # Errors
    /// [`ClientError`]: unreachable, or the server's copy failed its checksum
    /// ([`CallError::Remote`] with [`ErrorCode::Corrupt`]).
    pub async fn get_from(&self, node: NodeId, id: &ChunkId) -> Result<Option<Bytes>, ClientError> {
        let req = Request::GetBlob {
            repo: self.repo.clone(),
            id: *id,
        };
        match self.call(node, &req, vec![]).await {
            Ok((Response::Data, blob)) => Ok(Some(blob)),
            Ok((other, _)) => Err(ClientError::Protocol(format!(
                "{node} answered get with {other:?}"
            ))),
            Err(ClientError::Server {
                error: CallError::Remote(e),
                ..
            }) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a snapshot record on every server (W at least), leaving
    /// tombstones so it is not copied back.
    ///
    /// # Errors
    /// [`ClientError`] when no server takes it or W are not reached.
    pub async fn delete_snapshot(&self, id: SnapshotId) -> Result<(), ClientError> {
        let req = Request::DeleteSnapshot {
            repo: self.repo.clone(),
            id,
            local_only: false,
        };
        self.call_any(&req, vec![]).await.map(|_| ())
    }

    /// Starts prune round `round` on `node`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn begin_prune(&self, node: NodeId, round: u64) -> Result<(), ClientError> {
        // Every server should take part: try it even if it is routed around.
        self.peers.mark_up(node);
        let req = Request::BeginPrune {
            repo: self.repo.clone(),
            round,
        };
        self.call(node, &req, vec![]).await.map(|_| ())
    }

    /// Marks `ids` live in round `round` on `node`.
    ///
    /// # Errors
    /// [`ClientError`], e.g. when the round is not running there.
    pub async fn prune_mark(
        &self,
        node: NodeId,
        round: u64,
        ids: Vec<ChunkId>,
    ) -> Result<(), ClientError> {
        let req = Request::PruneMark {
            repo: self.repo.clone(),
            round,
            ids,
        };
        self.call(node, &req, vec![]).await.map(|_| ())
    }

    /// Ends round `round` on `node` with its sweep.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn prune_sweep(
        &self,
        node: NodeId,
        round: u64,
        grace_s: u64,
        trash_keep_s: u64,
    ) -> Result<ringvault_common::wire::SweepReport, ClientError> {
        let req = Request::PruneSweep {
            repo: self.repo.clone(),
            round,
            grace_s,
            trash_keep_s,
        };
        match self.call(node, &req, vec![]).await? {
            (Response::Swept(r), _) => Ok(r),
            (other, _) => Err(ClientError::Protocol(format!(
                "{node} answered sweep with {other:?}"
            ))),
        }
    }

    /// Moves `node`'s trashed blobs of this repository back; returns how
    /// many.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn restore_trash(&self, node: NodeId) -> Result<u64, ClientError> {
        self.peers.mark_up(node);
        let req = Request::RestoreTrash {
            repo: self.repo.clone(),
        };
        match self.call(node, &req, vec![]).await? {
            (Response::Count(n), _) => Ok(n),
            (other, _) => Err(ClientError::Protocol(format!(
                "{node} answered restore-trash with {other:?}"
            ))),
        }
    }

    /// The sealed size of each of `ids` (bytes), from whichever live server
    /// holds it; 0 when none does.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when no server answers.
    pub async fn sizes(&self, ids: &[ChunkId]) -> Result<Vec<u32>, ClientError> {
        let mut out = vec![0u32; ids.len()];
        let mut answered = 0;
        let mut reasons = Vec::new();
        for node in self.live_nodes() {
            let mut ok = true;
            for (k, part) in ids.chunks(MAX_HAS_IDS).enumerate() {
                let req = Request::Sizes {
                    repo: self.repo.clone(),
                    ids: part.to_vec(),
                };
                match self.call(node, &req, vec![]).await {
                    Ok((Response::Sizes { sizes }, _)) if sizes.len() == part.len() => {
                        for (i, s) in sizes.into_iter().enumerate() {
                            let o = &mut out[k * MAX_HAS_IDS + i];
                            *o = (*o).max(s);
                        }
                    }
                    Ok(_) => ok = false,
                    Err(e) => {
                        reasons.push(e.to_string());
                        ok = false;
                        break;
                    }
                }
            }
            answered += usize::from(ok);
        }
        if answered == 0 {
            return Err(ClientError::Unreachable(reasons.join("; ")));
        }
        Ok(out)
    }

    /// Stores a sealed snapshot record on the cluster (W servers at least).
    ///
    /// # Errors
    /// [`ClientError`] when no server takes it.
    pub async fn put_snapshot(&self, id: SnapshotId, record: Bytes) -> Result<(), ClientError> {
        let req = Request::PutSnapshot {
            repo: self.repo.clone(),
            id,
            local_only: false,
        };
        self.call_any(&req, vec![record]).await.map(|_| ())
    }

    /// Every snapshot record held by any live server: per id, each distinct
    /// record seen (one, unless a server is faulty or hostile: the caller
    /// keeps the first that opens under its id).
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when no server answers.
    pub async fn list_snapshots(&self) -> Result<Vec<(SnapshotId, Vec<Bytes>)>, ClientError> {
        let req = Request::ListSnapshots {
            repo: self.repo.clone(),
        };
        let records = self
            .gather_records(&req, |response| match response {
                Response::Snapshots { records } => {
                    Some(records.into_iter().map(|(id, len)| (id.0, len)).collect())
                }
                _ => None,
            })
            .await?;
        Ok(records
            .into_iter()
            .map(|(id, values)| (SnapshotId(id), values))
            .collect())
    }

    /// Asks every live server `req` and merges the records they answer
    /// with (`parse` reads the (id, length) list from a response; the
    /// payload holds the records, concatenated): per id, each distinct
    /// value, in the order they arrived.
    async fn gather_records(
        &self,
        req: &Request,
        parse: impl Fn(Response) -> Option<Vec<([u8; 32], u32)>>,
    ) -> Result<Vec<([u8; 32], Vec<Bytes>)>, ClientError> {
        let nodes = self.live_nodes();
        let mut asks: FuturesUnordered<_> =
            nodes.iter().map(|&n| self.call(n, req, vec![])).collect();
        let mut all: HashMap<[u8; 32], Vec<Bytes>> = HashMap::new();
        let mut answered = 0;
        let mut reasons = Vec::new();
        while let Some(r) = asks.next().await {
            match r {
                Ok((response, payload)) => {
                    let Some(records) = parse(response) else {
                        continue;
                    };
                    answered += 1;
                    let mut off = 0usize;
                    for (id, len) in records {
                        let end = off.saturating_add(len as usize);
                        if end > payload.len() {
                            break;
                        }
                        let value = payload.slice(off..end);
                        let seen = all.entry(id).or_default();
                        if !seen.contains(&value) {
                            seen.push(value);
                        }
                        off = end;
                    }
                }
                Err(e @ (ClientError::CertificateRefused(_) | ClientError::Forbidden(_))) => {
                    return Err(e);
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        if answered == 0 {
            return Err(ClientError::Unreachable(reasons.join("; ")));
        }
        Ok(all.into_iter().collect())
    }

    /// Stores one wrapped repository key under `id` on every server (W at
    /// least).
    ///
    /// # Errors
    /// [`ClientError`]; a server holding a different key under `id` answers
    /// `Exists`; a certificate without the admin role is refused.
    pub async fn put_key(&self, id: [u8; 32], key: Bytes) -> Result<(), ClientError> {
        let req = Request::PutKey {
            repo: self.repo.clone(),
            id,
            local_only: false,
        };
        self.call_any(&req, vec![key]).await.map(|_| ())
    }

    /// Deletes the wrapped key `id` on every server (W at least), leaving
    /// a tombstone.
    ///
    /// # Errors
    /// [`ClientError`]; a certificate without the admin role is refused.
    pub async fn delete_key(&self, id: [u8; 32]) -> Result<(), ClientError> {
        let req = Request::DeleteKey {
            repo: self.repo.clone(),
            id,
            local_only: false,
        };
        self.call_any(&req, vec![]).await.map(|_| ())
    }

    /// The repository's wrapped keys, merged from every live server: per
    /// key id, each distinct record seen.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] when no live server has any (the repository
    /// is not initialized), [`ClientError::Unreachable`] when none answers.
    pub async fn list_keys(&self) -> Result<Vec<([u8; 32], Vec<Bytes>)>, ClientError> {
        let req = Request::ListKeys {
            repo: self.repo.clone(),
        };
        let keys = self
            .gather_records(&req, |response| match response {
                Response::Records { records } => Some(records),
                _ => None,
            })
            .await?;
        if keys.is_empty() {
            return Err(ClientError::NotFound(format!(
                "the key of repository {} (run `ringvault init` first)",
                self.repo
            )));
        }
        Ok(keys)
    }
}

fn refused(addr: &str, detail: &str) -> ClientError {
    ClientError::CertificateRefused(format!(
        "certificate refused by {addr}: the server does not accept this agent's certificate, or this agent does not trust the server's (are both signed by the same cluster CA?) [{detail}]"
    ))
}
