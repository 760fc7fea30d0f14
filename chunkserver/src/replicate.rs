//! Replicated blob writes and reads: which copies go where, when a write
//! has its quorum, hinted handoff when an owner is down, and has-queries
//! counted across the owners.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ringvault_common::replication::{HolderCount, WritePlan};
use ringvault_common::wire::{self, BlobReply, ErrorCode, Has, PutBlobs, Response, WireError};
use ringvault_common::{ChunkId, NodeId, RepoId};
use tracing::{debug, warn};

use crate::node::{Node, Reply, View, quarantine};
use crate::store::StoreError;

/// Protects from a running prune round the ids a has-query found here: a
/// backup that skips uploading them relies on them.
pub(crate) fn protect_present(node: &Node, repo: &RepoId, ids: &[ChunkId], present: &[bool]) {
    node.prune.protect(
        repo,
        ids.iter()
            .zip(present)
            .filter(|(_, p)| **p)
            .map(|(id, _)| id),
    );
}

/// Answers a [`GetBlobs`](wire::GetBlobs): the blobs in `ids`' order, up to
/// [`wire::GET_BLOBS_BYTES`] of them, in one store call; a blob that failed
/// its checksum is quarantined and answered [`BlobReply::Corrupt`], one the
/// store could not read (or past the byte budget) [`BlobReply::Later`].
///
/// # Errors
/// A [`WireError`] only when the store cannot be asked at all.
pub(crate) async fn get_blobs(node: &Arc<Node>, repo: RepoId, ids: Vec<ChunkId>) -> Reply {
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
/// picks, per id, the nodes to ask; [`HolderCount`] groups the ids into one
/// query per node and adds up the answers.
async fn count_holders(
    node: &Arc<Node>,
    repo: &RepoId,
    ids: &[ChunkId],
    nodes: impl FnMut(&ChunkId) -> Vec<NodeId>,
) -> HolderCount {
    let mut count = HolderCount::new(ids, nodes, |peer| node.is_down(peer));
    let mut asks: FuturesUnordered<_> = count
        .asks()
        .iter()
        .enumerate()
        .map(|(k, ask)| {
            let node = node.clone();
            let repo = repo.clone();
            let target = ask.node;
            let sub: Vec<ChunkId> = ask.idxs.iter().map(|&i| ids[i]).collect();
            async move {
                let answer = if target == node.id {
                    let store = node.store.clone();
                    let (r, i) = (repo.clone(), sub.clone());
                    let present = node.blocking(move || store.has(&r, &i)).await.ok();
                    if let Some(p) = &present {
                        protect_present(&node, &repo, &sub, p);
                    }
                    present
                } else {
                    let req = Has {
                        repo,
                        ids: sub,
                        local_only: true,
                    };
                    match node.call_peer(target, req, vec![]).await {
                        Ok((present, _)) => Some(present),
                        Err(e) => {
                            debug!(node = %target, error = %e, "has query to a peer failed");
                            None
                        }
                    }
                };
                (k, answer)
            }
        })
        .collect();
    while let Some((k, answer)) = asks.next().await {
        if let Some(present) = answer
            && let Err(e) = count.record(k, &present)
        {
            debug!(error = %e, "a has answer was not counted");
        }
    }
    count
}

/// Asks every owner which ids it holds; an id is present with W copies.
pub(crate) async fn coordinate_has(
    node: &Arc<Node>,
    repo: RepoId,
    ids: Vec<ChunkId>,
) -> Result<Vec<bool>, WireError> {
    let view = node.view();
    let count = count_holders(node, &repo, &ids, |id| view.owners(id.partition()).to_vec()).await;
    Ok(count.present(view.map.write_quorum))
}

/// How many live nodes of the map hold each id (owners or not).
pub(crate) async fn count_copies(node: &Arc<Node>, repo: RepoId, ids: Vec<ChunkId>) -> Vec<u32> {
    let view = node.view();
    let all: Vec<NodeId> = view.map.nodes.iter().map(|n| n.id).collect();
    count_holders(node, &repo, &ids, |_| all.clone())
        .await
        .into_counts()
}

/// Stores each blob on its N owners and answers as soon as every blob has
/// W durable copies, or no node is left to try. A write meant for an owner
/// that is down or fails goes to the next node in placement order, which
/// keeps it as a hint and hands it to the owner later (Dynamo's sloppy
/// quorum and hinted handoff: DeCandia et al., "Dynamo", SOSP 2007, 4.6).
/// While blobs move after a map change, the previous owners get a copy too.
/// The decisions are [`WritePlan`]'s. Writes still in flight when the
/// answer goes out finish in the background.
///
/// # Errors
/// [`ErrorCode::Internal`] when the write task ended without an answer.
pub(crate) async fn coordinate_put(
    node: &Arc<Node>,
    repo: RepoId,
    items: Vec<(ChunkId, Bytes)>,
) -> Result<Vec<u32>, WireError> {
    let view = node.view();
    node.try_down_peers_if_short(&view);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(place_copies(node.clone(), view, repo, items, tx));
    rx.await.map_err(|_| {
        WireError::new(
            ErrorCode::Internal,
            "the replicated write ended without an answer",
        )
    })
}

/// Places N copies of each blob (see [`coordinate_put`]) round by round as
/// the [`WritePlan`] says, and sends the copies per blob on `answer` once
/// every blob has W, or when the plan ends short.
async fn place_copies(
    node: Arc<Node>,
    view: Arc<View>,
    repo: RepoId,
    items: Vec<(ChunkId, Bytes)>,
    answer: tokio::sync::oneshot::Sender<Vec<u32>>,
) {
    // Per blob: owners first, then every other node in placement order.
    let ranked = items
        .iter()
        .map(|(id, _)| view.effective.ranked(id))
        .collect();
    let previous = items
        .iter()
        .map(|(id, _)| view.previous_owners(id.partition()))
        .collect();
    let n = view.effective.replicas as usize;
    let mut plan = WritePlan::new(ranked, n, view.map.write_quorum, previous);
    let mut answer = Some(answer);
    while let Some(round) = plan.next_round(|peer| node.is_down(peer)) {
        node.metrics.hinted(round.hints as u64);
        let mut writes: FuturesUnordered<_> = round
            .batches
            .into_iter()
            .map(|batch| {
                let node = node.clone();
                let repo = repo.clone();
                let blobs: Vec<(ChunkId, Bytes)> =
                    batch.blobs.iter().map(|&i| items[i].clone()).collect();
                async move {
                    let ok = replicate(&node, batch.node, repo, blobs).await;
                    (batch, ok)
                }
            })
            .collect();
        while let Some((batch, ok)) = writes.next().await {
            match plan.record(&batch, ok) {
                Ok(true) => {
                    if let Some(tx) = answer.take() {
                        let _ = tx.send(plan.copies().to_vec());
                    }
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "a replica write's outcome did not match its plan"),
            }
        }
        if plan.first_short().is_some() {
            debug!(
                round = round.number,
                "some replica writes failed; trying the next nodes"
            );
        }
    }
    if let Some(tx) = answer.take() {
        let _ = tx.send(plan.copies().to_vec());
    }
    if let Some((i, missing)) = plan.first_short() {
        warn!(chunk = %items[i].0, missing, "fewer than N copies placed; repair will add them");
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
    let req = PutBlobs {
        repo,
        blobs,
        local_only: true,
    };
    node.replicating.fetch_add(count, Ordering::Relaxed);
    node.metrics
        .set_replication_backlog(node.replicating.load(Ordering::Relaxed));
    let result = node.call_peer(target, req, payload).await;
    node.replicating.fetch_sub(count, Ordering::Relaxed);
    node.metrics
        .set_replication_backlog(node.replicating.load(Ordering::Relaxed));
    match result {
        Ok(_) => {
            node.metrics.replicated(count, bytes);
            true
        }
        Err(e) => {
            warn!(node = %target, error = %e, "replica write failed");
            false
        }
    }
}
