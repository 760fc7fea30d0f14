//! Garbage collection on a server: mark-and-sweep rounds that never block a
//! backup.
//!
//! A pruning agent drives a round on every server: [`Rounds::begin`], then
//! the ids of every chunk reachable from the snapshots it listed after the
//! begin ([`Rounds::mark`]), then [`sweep`]. Between begin and sweep,
//! every chunk of the repository written here or answered present by a
//! has-query is protected ([`Rounds::protect`]): a backup that uploads a
//! chunk, or skips it because the cluster has it, while the agent lists
//! snapshots, keeps it. The sweep does not delete: a chunk found neither
//! marked nor protected is noted as unreferenced; one noted at least the
//! grace period earlier, and still unreferenced, goes to the trash, which
//! keeps it restorable for the trash period. So a chunk is deleted only
//! after two rounds at least `grace` apart both found no snapshot using it
//! (restic's prune instead takes an exclusive lock; restic issues 1141,
//! 2452).
//!
//! A round lives in memory only: a server restarted mid-round has no round
//! and refuses the sweep, and a killed agent leaves a round that the next
//! begin replaces.
//!
//! Chunks a backup relies on without uploading or asking for them (from its
//! local index) are kept safe by the fence ([`GcFence`]): every begin and
//! every end of a round moves it, and a snapshot record is stored only
//! under the fence its agent read before it checked its chunks
//! ([`Rounds::store_if_fenced`] holds a gate that [`Rounds::begin`] waits
//! for, so no round begins between the check and the store). A partition is swept only when its owners are all up and
//! no blobs are moving (no node out, no map change under way); otherwise it
//! is skipped and retried next round. Only partitions this server owns are
//! swept: hints are the handoff's business.
//!
//! The decisions (which partitions, and what happens to each chunk) are
//! [`ringvault_common::gc`]'s ([`gc::partition_sweep`], [`gc::sweep_page`]);
//! this module carries the store's answers to them and their findings back.

use std::sync::Arc;

use ringvault_common::gc::{self, PartitionSweep};
use ringvault_common::wire::{SweepReport, WireError};
use ringvault_common::{ChunkId, RepoId};
use tracing::info;

use crate::node::Node;
pub use crate::rounds::{Round, Rounds};

/// Keys listed per store call while sweeping one partition.
const PAGE: usize = 4096;

/// Most compaction: segments at most this live fraction are rewritten
/// after a sweep.
const COMPACT_BELOW: f64 = 0.5;

/// Ends round `id` of `repo` and sweeps (see the module docs); then drops
/// trash older than `trash_keep_s` and compacts segments in the background.
///
/// # Errors
/// When the round is not running here, or the store fails.
pub async fn sweep(
    node: &Arc<Node>,
    repo: RepoId,
    id: u64,
    grace_s: u64,
    trash_keep_s: u64,
) -> Result<SweepReport, WireError> {
    let round = Arc::new(node.prune.take(&repo, id)?);
    let view = node.view();
    let me = node.id();
    let now = crate::store::unix_seconds();
    let mut report = SweepReport::default();
    let store = node.store().clone();
    let counts = node.blocking(move || Ok(store.partition_counts())).await?;
    let moving = view.has_move() || !view.out.is_empty();
    for (partition, _) in counts {
        match gc::partition_sweep(view.owners(partition), me, moving, |o| node.is_down(o)) {
            PartitionSweep::NotOwned => continue,
            PartitionSweep::Skip => {
                report.skipped += 1;
                continue;
            }
            PartitionSweep::Sweep => {}
        }
        report.partitions += 1;
        let store = node.store().clone();
        let (repo, round) = (repo.clone(), round.clone());
        let part = node
            .blocking(move || {
                let mut r = SweepReport::default();
                let mut after = None;
                loop {
                    let (keys, more) = store.list_partition(partition, after.as_ref(), PAGE)?;
                    after = keys.last().cloned();
                    let ours: Vec<ChunkId> = keys
                        .into_iter()
                        .filter(|(k, _)| *k == repo)
                        .map(|(_, id)| id)
                        .collect();
                    let since = store.unreferenced_since(&repo, &ours)?;
                    let page = gc::sweep_page(ours.into_iter().zip(since), &round, now, grace_s);
                    r.cleared += page.clear.len() as u64;
                    r.noted += page.note.len() as u64;
                    let note: Vec<(ChunkId, Option<u64>)> = page
                        .clear
                        .iter()
                        .map(|id| (*id, None))
                        .chain(page.note.iter().map(|id| (*id, Some(now))))
                        .collect();
                    let trash: Vec<(RepoId, ChunkId)> =
                        page.trash.iter().map(|id| (repo.clone(), *id)).collect();
                    store.set_unreferenced(&repo, &note)?;
                    let (_, bytes_before) = store.trash_stats();
                    r.trashed += store.trash(&trash, now)?;
                    let (_, bytes_after) = store.trash_stats();
                    r.trashed_bytes += bytes_after.saturating_sub(bytes_before);
                    if !more || after.is_none() {
                        return Ok(r);
                    }
                }
            })
            .await?;
        report.noted += part.noted;
        report.cleared += part.cleared;
        report.trashed += part.trashed;
        report.trashed_bytes += part.trashed_bytes;
    }
    let store = node.store().clone();
    let (expired, expired_bytes) = node
        .blocking(move || store.expire_trash(now.saturating_sub(trash_keep_s)))
        .await?;
    report.expired = expired;
    report.expired_bytes = expired_bytes;
    info!(repo = %repo, ?report, "prune sweep done");
    let store = node.store().clone();
    let compacting = node.clone();
    tokio::spawn(async move {
        match compacting
            .blocking(move || store.compact(COMPACT_BELOW))
            .await
        {
            Ok(c) if c.segments > 0 => info!(
                segments = c.segments,
                before = c.bytes_before,
                after = c.bytes_after,
                "compacted segments"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "compaction failed"),
        }
    });
    Ok(report)
}
