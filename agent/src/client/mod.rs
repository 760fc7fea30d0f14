//! The agent's view of the cluster: connections to the servers, the cluster
//! map learned at hello, and requests routed by placement with failover.
//!
//! A server that fails to answer is marked down for [`DOWN_FOR`] and routed
//! around: blobs go to their first live replica, reads try replicas in
//! placement order, records go to any live server.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parking_lot::Mutex;
use quinn::Endpoint;
use ringvault_common::placement::ClusterMap;
use ringvault_common::routing::{self};
use ringvault_common::wire::{
    ClientRpc, ErrorCode, GetNodeStatus, Hello, PROTOCOL_VERSION, Request, Response, Welcome,
    WireError,
};
use ringvault_common::{ChunkId, NodeId, RepoId};
use ringvault_net::quic::{self, CallError, Peers};

mod admin;
mod blobs;
mod records;

pub use blobs::Fetched;
pub use records::SnapshotRecords;

/// How long a server that failed stays routed around.
pub const DOWN_FOR: Duration = Duration::from_secs(20);

/// Seconds a peer must have been silent, as the first server reports it,
/// before a new agent avoids it without trying it itself: one connect
/// timeout, the most a wrong guess then costs.
const INHERIT_DOWN_AFTER_S: u64 = 5;

/// Errors talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No configured server answered.
    #[error("cluster unreachable: no server answered ({0})")]
    Unreachable(String),
    /// One side refused the other's certificate: the connection to `addr`
    /// ended with a TLS alert.
    #[error(
        "certificate refused by {addr}: the server does not accept this agent's certificate, or this agent does not trust the server's (are both signed by the same cluster CA?) [{alert}]"
    )]
    CertificateRefused {
        /// The server's address.
        addr: String,
        /// How the connection ended.
        alert: quinn::ConnectionError,
    },
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
    /// A server refused the snapshot record under the fence reading it was
    /// sent with: a prune round began or ended there since, or the reading
    /// lacks that server (it was not reached when the backup began). The
    /// chunks must be checked again under a new reading.
    #[error(
        "the snapshot record was refused under the garbage-collection fence the backup read ({node}: {}); its chunks must be checked again",
        error.message
    )]
    FenceMoved {
        /// The server that refused it.
        node: NodeId,
        /// Its refusal ([`ErrorCode::FenceMoved`]).
        error: WireError,
    },
    /// Every live server was tried and none took the request: each is
    /// named with its cause (a full or failing store, too few copies, no
    /// answer).
    #[error("no server took the request ({0})")]
    NoServerTook(String),
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
    map: parking_lot::RwLock<std::sync::Arc<ClusterMap>>,
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
            let conn = match quic::connect(&endpoint, addr, connect_timeout).await {
                Ok(c) => c,
                Err(CallError::CertificateRefused(e)) => return Err(refused(addr, e)),
                Err(e) => {
                    reasons.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            let hello = Hello {
                protocol: PROTOCOL_VERSION,
                epoch: 0,
            };
            match quic::request(&conn, hello, vec![], connect_timeout).await {
                Ok((_, Welcome { node, map, .. }, _)) => {
                    map.validate().map_err(|e| {
                        ClientError::Protocol(format!("server sent a bad map: {e}"))
                    })?;
                    let peers = Peers::new(endpoint, connect_timeout, DOWN_FOR);
                    // Start from this server's view of its peers, so a
                    // command does not spend a connect timeout on each
                    // server the cluster already knows is down.
                    if let Ok((_, status, _)) =
                        quic::request(&conn, GetNodeStatus, vec![], connect_timeout).await
                    {
                        for (peer, state) in status.peers {
                            // A peer silent only a moment (a probe that
                            // timed out under load, a restart) is tried
                            // rather than avoided for all of `DOWN_FOR`.
                            let silent_s = status
                                .peers_silent_s
                                .iter()
                                .find(|(p, _)| *p == peer)
                                .map_or(u64::MAX, |(_, s)| *s);
                            if state == ringvault_common::wire::PeerState::Out
                                || state != ringvault_common::wire::PeerState::Up
                                    && silent_s >= INHERIT_DOWN_AFTER_S
                            {
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
                        map: parking_lot::RwLock::new(std::sync::Arc::new(map)),
                        bad_copies: Mutex::new(Vec::new()),
                        timeout,
                        next: std::sync::atomic::AtomicUsize::new(0),
                    });
                }
                Err(CallError::CertificateRefused(e)) => return Err(refused(addr, e)),
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
        self.map.read().clone()
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
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            epoch: self.map().epoch,
        };
        let answer = self
            .peers
            .request(node, &addr, hello, vec![], self.timeout)
            .await;
        if let Ok((Welcome { map, .. }, _)) = answer
            && map.validate().is_ok()
            && map.epoch > self.map().epoch
        {
            tracing::info!(epoch = map.epoch, "adopting a newer cluster map");
            let mut m = self.map.write();
            if map.epoch > m.epoch {
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
        self.bad_copies.lock().clone()
    }

    /// Notes a bad copy (reported at the end of a restore), once per chunk
    /// and server.
    pub fn report_bad_copy(&self, chunk: ChunkId, node: NodeId, reason: String) {
        tracing::warn!(chunk = %chunk, node = %node, %reason, "bad copy");
        let mut v = self.bad_copies.lock();
        if !v.iter().any(|b| b.chunk == chunk && b.node == node) {
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

    /// Live nodes in map order ([`routing::live_nodes`]).
    fn live_nodes(&self) -> Vec<NodeId> {
        routing::live_nodes(&self.map(), |n| self.is_down(n))
    }

    /// Live nodes, starting at a different one on each call, so requests
    /// any server can answer (has-queries, records) spread over the cluster
    /// ([`routing::records_order`]).
    fn live_nodes_rotated(&self) -> Vec<NodeId> {
        routing::records_order(
            &self.map(),
            |n| self.is_down(n),
            || self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// One request to one server, read as `R`'s answer.
    ///
    /// # Errors
    /// As [`Cluster::call_raw`]; another request's answer is
    /// [`ClientError::Server`] with [`CallError::Unexpected`].
    async fn call<R: ClientRpc>(
        &self,
        node: NodeId,
        req: R,
        payload: Vec<Bytes>,
    ) -> Result<(R::Response, Bytes), ClientError> {
        let (response, payload) = self.call_raw(node, &req.into(), payload).await?;
        let answer =
            quic::answer::<R>(response).map_err(|error| ClientError::Server { node, error })?;
        Ok((answer, payload))
    }

    /// One request to one server; connection failures mark it down.
    async fn call_raw(
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
            CallError::CertificateRefused(e) => refused(&addr, e),
            CallError::Remote(e) if e.code == ErrorCode::Forbidden => {
                ClientError::Forbidden(format!("server {node}: {}", e.message))
            }
            error => ClientError::Server { node, error },
        })
    }

    /// One request to any live server, starting at a different one each
    /// call: the first that takes it answers. A server that is unreachable,
    /// or refuses for a cause of its own ([`next_server_may_take`]: its
    /// store is full or failing, it fell short of W), is passed over for
    /// the next; an answer every server would give (a moved fence, a
    /// different key, a refused role, a bad request) is final.
    ///
    /// # Errors
    /// The final answer as [`ClientError::Server`];
    /// [`ClientError::Unreachable`] when no server answered;
    /// [`ClientError::NoServerTook`] naming each server tried and why,
    /// when some answered but none took it.
    async fn call_any<R: ClientRpc>(
        &self,
        req: R,
        payload: Vec<Bytes>,
    ) -> Result<(NodeId, R::Response, Bytes), ClientError> {
        let req: Request = req.into();
        let mut reasons = Vec::new();
        let mut answered = false;
        for node in self.live_nodes_rotated() {
            match self.call_raw(node, &req, payload.clone()).await {
                Ok((r, p)) => {
                    let answer = quic::answer::<R>(r)
                        .map_err(|error| ClientError::Server { node, error })?;
                    return Ok((node, answer, p));
                }
                Err(ClientError::Server {
                    node,
                    error: CallError::Remote(e),
                }) => {
                    if !next_server_may_take(e.code) {
                        return Err(ClientError::Server {
                            node,
                            error: CallError::Remote(e),
                        });
                    }
                    tracing::debug!(%node, error = %e, "refused; trying the next server");
                    answered = true;
                    reasons.push(format!("{node}: {}", e.message));
                }
                Err(e @ (ClientError::CertificateRefused { .. } | ClientError::Forbidden(_))) => {
                    return Err(e);
                }
                Err(ClientError::Server { node, error }) => {
                    reasons.push(format!("{node}: {error}"));
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        if answered {
            return Err(ClientError::NoServerTook(reasons.join("; ")));
        }
        Err(ClientError::Unreachable(if reasons.is_empty() {
            "every server is marked down".into()
        } else {
            reasons.join("; ")
        }))
    }

    /// The live servers among `id`'s N replicas, in placement order (empty
    /// when all are routed around).
    pub fn live_replicas(&self, id: &ChunkId) -> Vec<NodeId> {
        routing::live_replicas(&self.map(), id, |n| self.is_down(n))
    }

    /// Asks every server of the map that the agent routes around (it
    /// failed lately, or the first server reported it down) for a hello,
    /// in parallel, and ends routing around those that answer. A backup
    /// does this before it tries again after [`ClientError::FenceMoved`]:
    /// a fence reading that lacks a server which is in fact up would
    /// otherwise be refused by it again for as long as [`DOWN_FOR`] lasts.
    /// A server that is really down costs one connect timeout (at most
    /// 5 s). Returns the servers that answered.
    pub async fn probe_routed_around(&self) -> Vec<NodeId> {
        let map = self.map();
        let timeout = self.timeout.min(Duration::from_secs(5));
        let epoch = map.epoch;
        let probes = map
            .nodes
            .iter()
            .filter(|n| self.is_down(n.id))
            .map(|n| async move {
                let answer = self.peers.probe(n.id, &n.address, epoch, timeout).await;
                (n.id, answer.is_ok())
            });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .filter_map(|(node, up)| up.then_some(node))
            .collect()
    }

    /// Asks every live server `req` at once; `parse` reads an answer
    /// (`None` for one it cannot use; another request's answer is a
    /// failure of that server). Returns the answers read, each with the
    /// server that gave it, and how many servers were asked.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when none answers, a refused
    /// certificate or role at once.
    async fn ask_every_live<R: ClientRpc + Clone, T>(
        &self,
        req: R,
        parse: impl Fn(NodeId, R::Response, Bytes) -> Option<T>,
    ) -> Result<(Vec<(NodeId, T)>, usize), ClientError> {
        let nodes = self.live_nodes();
        let mut asks: FuturesUnordered<_> = nodes
            .iter()
            .map(|&n| {
                let req = req.clone();
                async move { (n, self.call(n, req, vec![]).await) }
            })
            .collect();
        let mut answers = Vec::new();
        let mut reasons = Vec::new();
        while let Some((node, r)) = asks.next().await {
            match r {
                Ok((response, payload)) => {
                    if let Some(answer) = parse(node, response, payload) {
                        answers.push((node, answer));
                    }
                }
                Err(e @ (ClientError::CertificateRefused { .. } | ClientError::Forbidden(_))) => {
                    return Err(e);
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        if answers.is_empty() {
            return Err(ClientError::Unreachable(if reasons.is_empty() {
                "no server gave a usable answer".into()
            } else {
                reasons.join("; ")
            }));
        }
        Ok((answers, nodes.len()))
    }
}

/// Whether another server may take a request that one server refused
/// with `code`: yes when the cause is that server's own (its store is full
/// or failing, it reached too few peers, it read a bad copy); no when every
/// server would answer the same (a moved fence, a different key already
/// stored, a refused role, a malformed request, nothing there, another
/// protocol, a conflicting map change).
pub fn next_server_may_take(code: ErrorCode) -> bool {
    match code {
        ErrorCode::Internal
        | ErrorCode::StoreFull
        | ErrorCode::QuorumNotReached
        | ErrorCode::Corrupt => true,
        ErrorCode::BadRequest
        | ErrorCode::NotFound
        | ErrorCode::Forbidden
        | ErrorCode::VersionMismatch
        | ErrorCode::Exists
        | ErrorCode::MapConflict
        | ErrorCode::FenceMoved => false,
    }
}

/// Checks that `node`'s answer to a `kind` request has one item per item
/// asked.
///
/// # Errors
/// [`ClientError::Protocol`] naming the server and both counts.
fn expect_len(node: NodeId, kind: &str, got: usize, asked: usize) -> Result<(), ClientError> {
    if got == asked {
        Ok(())
    } else {
        Err(ClientError::Protocol(format!(
            "{node} answered {kind} with {got} items for {asked} asked"
        )))
    }
}

fn refused(addr: &str, alert: quinn::ConnectionError) -> ClientError {
    ClientError::CertificateRefused {
        addr: addr.to_owned(),
        alert,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_servers_own_refusals_send_a_request_to_the_next_server() {
        let table = [
            (ErrorCode::Internal, true),
            (ErrorCode::StoreFull, true),
            (ErrorCode::QuorumNotReached, true),
            (ErrorCode::Corrupt, true),
            (ErrorCode::BadRequest, false),
            (ErrorCode::NotFound, false),
            (ErrorCode::Forbidden, false),
            (ErrorCode::VersionMismatch, false),
            (ErrorCode::Exists, false),
            (ErrorCode::MapConflict, false),
            (ErrorCode::FenceMoved, false),
        ];
        for (code, next) in table {
            assert_eq!(next_server_may_take(code), next, "{code:?}");
        }
    }
}
