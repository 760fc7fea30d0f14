//! `ringvault check`: does every chunk that some snapshot reaches have N
//! healthy copies on the cluster?
//!
//! The check walks every snapshot's trees (reading each tree once, from
//! any good copy), collects the ids of every tree blob and file chunk, and
//! asks the cluster how many live servers hold each (metadata only: one
//! has-query per server per 8,192 ids). With `--read-data` it also fetches
//! every copy from every server that holds one and opens it (AEAD and the
//! keyed hash), so a copy counts only if it decrypts to its id; a server's
//! copy that fails its own checksum is quarantined there and repaired.
//!
//! Every file's size is checked against its chunks (restic's "metadata
//! size and sum of blob sizes do not match"): from the lengths the tree
//! records (tree version 2), and with `--read-data` also from the bytes
//! each chunk opens to, which covers version 1 trees and a tree that
//! records a wrong length.
//!
//! Servers whose store is not ok (full, read-only, failing) are named; a
//! read-only or failing one makes the check fail.
//!
//! The report is a summary per server and per cause ([`output`]): every
//! server's state (down servers with how long they have been silent),
//! which server each missing copy belongs to, and what the cluster will
//! do about it. Chunk ids are listed with `--verbose` and in `--json`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use futures::StreamExt;
use ringvault_common::seal;
use ringvault_common::tree::{ChunkRef, Content};
use ringvault_common::wire::{ErrorCode, NodeStatus, PeerState, StoreState};
use ringvault_common::{ChunkId, NodeId};
use ringvault_net::quic::CallError;

use crate::client::ClientError;
use crate::repo::Repo;

pub mod output;

/// Blob reads in flight with `--read-data`.
const READS_IN_FLIGHT: usize = 16;

/// What a check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Snapshots walked.
    pub snapshots: usize,
    /// Distinct trees read.
    pub trees: usize,
    /// Distinct chunks reachable (tree blobs and file chunks).
    pub chunks: usize,
    /// N: the copies every chunk should have.
    pub replicas: u32,
    /// Whether every copy was read and opened.
    pub read_data: bool,
    /// Chunks with N or more healthy copies.
    pub healthy: usize,
    /// Chunks with fewer than N healthy copies but at least one: (chunk,
    /// healthy copies).
    pub degraded: Vec<(ChunkId, u32)>,
    /// Chunks with no healthy copy on any live server.
    pub lost: Vec<ChunkId>,
    /// Copies that were held but bad: (chunk, server, why).
    pub damaged: Vec<(ChunkId, NodeId, String)>,
    /// Trees that could not be read (their subtrees were not checked).
    pub unreadable_trees: Vec<(ChunkId, String)>,
    /// Files whose size is not the sum of their chunks' lengths, or chunks
    /// whose plaintext length is not the one their tree records: (tree,
    /// what).
    pub size_mismatches: Vec<(ChunkId, String)>,
    /// Servers whose store is not ok: (server, state, its last error).
    pub stores: Vec<(NodeId, StoreState, String)>,
    /// Every server of the cluster map, in map order, as the check found it.
    pub servers: Vec<ServerReport>,
    /// For each chunk short of N copies (degraded or lost): the servers
    /// among its N owners (placement order) that lack its copy, down ones
    /// included. Empty for a chunk whose owners all hold a copy (its copy
    /// count is short through a damaged copy, or a placement change).
    pub missing_on: HashMap<ChunkId, Vec<NodeId>>,
}

/// One server, as a check saw it.
#[derive(Debug)]
pub struct ServerReport {
    /// Its id.
    pub node: NodeId,
    /// Its address in the cluster map.
    pub address: String,
    /// Its own status, or why it did not answer.
    pub status: Result<NodeStatus, String>,
    /// When it did not answer: the fewest seconds any answering server
    /// has gone without hearing from it (`None`: no server reported).
    pub silent_s: Option<u64>,
    /// Whether some answering server counts it out: silent past
    /// `out-after-s`, its chunks being copied to other servers.
    pub out: bool,
    /// Chunks it owns that lack its copy (see [`CheckReport::missing_on`]).
    pub missing: usize,
}

impl ServerReport {
    /// Whether it answered the check.
    pub fn is_up(&self) -> bool {
        self.status.is_ok()
    }
}

impl CheckReport {
    /// Whether nothing is lost, damaged or short of N copies, and no
    /// server's store is read-only or failing (a full store, which refuses
    /// only new blobs, is reported but healthy).
    pub fn is_healthy(&self) -> bool {
        self.copies_ok()
            && self
                .stores
                .iter()
                .all(|(_, state, _)| *state == StoreState::Full)
    }

    /// Whether every chunk has N healthy copies and every tree was read.
    pub fn copies_ok(&self) -> bool {
        self.degraded.is_empty()
            && self.lost.is_empty()
            && self.damaged.is_empty()
            && self.unreadable_trees.is_empty()
            && self.size_mismatches.is_empty()
    }

    /// The servers' `out-after-s`, seconds, as the first answering server
    /// reports it.
    pub fn out_after_s(&self) -> Option<u64> {
        self.servers
            .iter()
            .find_map(|s| s.status.as_ref().ok().map(|st| st.out_after_s))
    }

    /// Whether some chunk has no healthy copy, a tree is unreadable, or a
    /// file would not restore to its recorded size.
    pub fn has_loss(&self) -> bool {
        !self.lost.is_empty()
            || !self.unreadable_trees.is_empty()
            || !self.size_mismatches.is_empty()
    }
}

/// Checks every snapshot of `repo`; see the module docs.
///
/// # Errors
/// When snapshots cannot be listed or the cluster does not answer the
/// copy counts. Unreadable trees and missing chunks are findings in the
/// report, not errors.
pub async fn check(repo: &Arc<Repo>, read_data: bool) -> anyhow::Result<CheckReport> {
    let map = repo.cluster.map();
    let mut report = CheckReport {
        replicas: map.replicas,
        read_data,
        ..CheckReport::default()
    };
    report.servers = survey_servers(repo).await;
    for server in &report.servers {
        if let Ok(s) = &server.status
            && s.store != StoreState::Ok
        {
            report
                .stores
                .push((server.node, s.store, s.store_error.clone()));
        }
    }
    let snapshots = repo.snapshots().await?;
    report.snapshots = snapshots.len();
    let mut chunks: HashSet<ChunkId> = HashSet::new();
    let mut seen_trees: HashSet<ChunkId> = HashSet::new();
    let mut queue: VecDeque<ChunkId> = snapshots.iter().map(|(_, s)| s.root).collect();
    // Recorded lengths (version 2 trees), and, for --read-data, the files
    // whose size only the data can check (version 1 trees).
    let mut recorded: HashMap<ChunkId, u32> = HashMap::new();
    let mut unsized_files: Vec<(ChunkId, String, u64, Vec<ChunkId>)> = Vec::new();
    while let Some(tree_id) = queue.pop_front() {
        if !seen_trees.insert(tree_id) {
            continue;
        }
        chunks.insert(tree_id);
        let (tree, parts) = match repo.read_tree_and_parts(tree_id).await {
            Ok(t) => t,
            Err(e) => {
                report.unreadable_trees.push((tree_id, format!("{e:#}")));
                continue;
            }
        };
        report.trees += 1;
        chunks.extend(parts);
        for entry in tree.entries {
            let name = || String::from_utf8_lossy(&entry.name).into_owned();
            match entry.chunk_bytes() {
                Some(sum) if sum != entry.size => report.size_mismatches.push((
                    tree_id,
                    format!(
                        "file {:?}: metadata size {} and sum of chunk sizes {sum} do not match",
                        name(),
                        entry.size
                    ),
                )),
                Some(_) => {}
                None if read_data && matches!(entry.content, Content::Chunks(_)) => {
                    unsized_files.push((tree_id, name(), entry.size, entry.chunk_ids().collect()))
                }
                None => {}
            }
            match &entry.content {
                Content::Chunks(refs) => {
                    for &ChunkRef { id, len } in refs {
                        chunks.insert(id);
                        if let Some(len) = len
                            && let Some(other) = recorded.insert(id, len)
                            && other != len
                        {
                            report.size_mismatches.push((
                                tree_id,
                                format!("chunk {id} is recorded as {other} and as {len} bytes"),
                            ));
                        }
                    }
                }
                Content::Subtree(t) => queue.push_back(*t),
                Content::None | Content::Symlink(_) => {}
            }
        }
    }
    let mut ids: Vec<ChunkId> = chunks.into_iter().collect();
    ids.sort();
    report.chunks = ids.len();
    let healthy: Vec<u32> = if read_data {
        let answering: Vec<NodeId> = report
            .servers
            .iter()
            .filter(|s| s.is_up())
            .map(|s| s.node)
            .collect();
        let (good, lengths) = read_every_copy(repo, &answering, &ids, &mut report.damaged).await;
        for (id, len) in &lengths {
            if let Some(&want) = recorded.get(id)
                && want != *len
            {
                report.size_mismatches.push((
                    *id,
                    format!("chunk {id} opens to {len} bytes, its tree records {want}"),
                ));
            }
        }
        for (tree, name, size, ids) in unsized_files {
            let sum: Option<u64> = ids
                .iter()
                .map(|id| lengths.get(id).map(|&l| u64::from(l)))
                .sum();
            // A chunk that could not be read is reported as lost or damaged.
            if let Some(sum) = sum
                && sum != size
            {
                report.size_mismatches.push((
                    tree,
                    format!(
                        "file {name:?}: metadata size {size} and sum of chunk sizes {sum} do not match"
                    ),
                ));
            }
        }
        good
    } else {
        repo.cluster.copies(&ids).await?
    };
    for (id, copies) in ids.iter().zip(healthy) {
        if copies == 0 {
            report.lost.push(*id);
        } else if copies < report.replicas {
            report.degraded.push((*id, copies));
        } else {
            report.healthy += 1;
        }
    }
    locate_missing_copies(repo, &mut report).await;
    Ok(report)
}

/// Asks every server of the map for its status, all at once (a down one
/// costs one connect timeout), and fills in how long the answering ones
/// have gone without hearing from the others.
async fn survey_servers(repo: &Arc<Repo>) -> Vec<ServerReport> {
    let asked = futures::future::join_all(repo.cluster.servers().into_iter().map(
        |(node, address, _)| async move {
            let status = repo
                .cluster
                .node_status(node)
                .await
                .map_err(|e| e.to_string());
            (node, address, status)
        },
    ))
    .await;
    let views: Vec<&NodeStatus> = asked
        .iter()
        .filter_map(|(_, _, s)| s.as_ref().ok())
        .collect();
    let heard: Vec<(Option<u64>, bool)> = asked
        .iter()
        .map(|(node, _, _)| {
            let silent_s = views
                .iter()
                .filter_map(|v| v.peers_silent_s.iter().find(|(n, _)| n == node))
                .map(|&(_, s)| s)
                .min();
            let out = views
                .iter()
                .any(|v| v.peers.contains(&(*node, PeerState::Out)));
            (silent_s, out)
        })
        .collect();
    asked
        .into_iter()
        .zip(heard)
        .map(|((node, address, status), (silent_s, out))| ServerReport {
            node,
            address,
            status,
            silent_s,
            out,
            missing: 0,
        })
        .collect()
}

/// Fills [`CheckReport::missing_on`] and each server's `missing` count:
/// a short chunk lacks the copy of each of its owners that is down, and
/// of each answering owner whose store does not hold it (one has-query
/// per owner). An owner that does not answer the has-query is left out.
async fn locate_missing_copies(repo: &Arc<Repo>, report: &mut CheckReport) {
    let map = repo.cluster.map();
    let n = map.replicas as usize;
    let up: HashSet<NodeId> = report
        .servers
        .iter()
        .filter(|s| s.is_up())
        .map(|s| s.node)
        .collect();
    let short = report
        .degraded
        .iter()
        .map(|(id, _)| *id)
        .chain(report.lost.iter().copied());
    let mut ask: HashMap<NodeId, Vec<ChunkId>> = HashMap::new();
    for id in short {
        let mut owners = map.ranked(&id);
        owners.truncate(n);
        let mut lacking = Vec::new();
        for owner in owners {
            if up.contains(&owner) {
                ask.entry(owner).or_default().push(id);
            } else {
                lacking.push(owner);
            }
        }
        report.missing_on.insert(id, lacking);
    }
    for (owner, ids) in ask {
        match repo.cluster.has_on(owner, &ids).await {
            Ok(present) => {
                for (id, held) in ids.iter().zip(present) {
                    if !held && let Some(lacking) = report.missing_on.get_mut(id) {
                        lacking.push(owner);
                    }
                }
            }
            Err(e) => tracing::debug!(%owner, error = %e, "has-query for the check failed"),
        }
    }
    for lacking in report.missing_on.values_mut() {
        lacking.sort_by_key(|n| map.nodes.iter().position(|m| m.id == *n));
        for node in lacking.iter() {
            if let Some(s) = report.servers.iter_mut().find(|s| s.node == *node) {
                s.missing += 1;
            }
        }
    }
}

/// Reads every copy of each chunk from every server in `nodes` (those
/// that answered the survey: the view this agent took over at connect may
/// be a peer's stale one, and skipping a live holder would under-count
/// copies) and opens it;
/// returns the good copies per chunk and the plaintext length, bytes, of
/// each chunk with a good copy, noting bad copies in `damaged`.
async fn read_every_copy(
    repo: &Arc<Repo>,
    nodes: &[NodeId],
    ids: &[ChunkId],
    damaged: &mut Vec<(ChunkId, NodeId, String)>,
) -> (Vec<u32>, HashMap<ChunkId, u32>) {
    let mut results = futures::stream::iter(ids.iter().copied().enumerate())
        .map(|(i, id)| {
            let nodes = nodes.to_vec();
            async move {
                let mut good = 0u32;
                let mut bad = Vec::new();
                let mut plain_len = None;
                for node in nodes {
                    match repo.cluster.get_from(node, &id).await {
                        Ok(None) => {}
                        Ok(Some(blob)) => {
                            let keys = repo.clone();
                            let opened = tokio::task::spawn_blocking(move || {
                                seal::open(&keys.keys, &id, &blob).map(|plain| plain.len())
                            })
                            .await;
                            match opened {
                                Ok(Ok(len)) => {
                                    good += 1;
                                    plain_len = u32::try_from(len).ok();
                                }
                                Ok(Err(e)) => bad.push((id, node, e.to_string())),
                                Err(e) => bad.push((id, node, e.to_string())),
                            }
                        }
                        Err(ClientError::Server {
                            error: CallError::Remote(e),
                            ..
                        }) if e.code == ErrorCode::Corrupt => {
                            bad.push((id, node, e.message));
                        }
                        Err(e) => tracing::debug!(%node, chunk = %id, error = %e, "read failed"),
                    }
                }
                (i, good, bad, plain_len)
            }
        })
        .buffer_unordered(READS_IN_FLIGHT);
    let mut good = vec![0u32; ids.len()];
    let mut lengths = HashMap::new();
    while let Some((i, g, bad, len)) = results.next().await {
        good[i] = g;
        damaged.extend(bad);
        if let Some(len) = len {
            lengths.insert(ids[i], len);
        }
    }
    (good, lengths)
}
