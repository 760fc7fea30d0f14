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
use crate::store::{GcStore, StoreError};

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
    // Prune sees the store's garbage collection calls and nothing else.
    let store: Arc<dyn GcStore> = node.store().clone();
    let counting = store.clone();
    let counts = node
        .blocking(move || Ok(counting.partition_counts()))
        .await?;
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
        let (store, repo, round) = (store.clone(), repo.clone(), round.clone());
        let part = node
            .blocking(move || {
                sweep_partition(&*store, &repo, partition, &round, now, grace_s, PAGE)
            })
            .await?;
        report.noted += part.noted;
        report.cleared += part.cleared;
        report.trashed += part.trashed;
        report.trashed_bytes += part.trashed_bytes;
    }
    let expiring = store.clone();
    let (expired, expired_bytes) = node
        .blocking(move || expiring.expire_trash(now.saturating_sub(trash_keep_s)))
        .await?;
    report.expired = expired;
    report.expired_bytes = expired_bytes;
    info!(repo = %repo, ?report, "prune sweep done");
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

/// Sweeps `repo`'s blobs in `partition` for `round` at `now_s` (unix
/// seconds) with a grace period of `grace_s` seconds, `page` keys per
/// listing: notes, clears and trashes what [`gc::sweep_page`] decides, page
/// by page. Blocks; run it on the blocking pool.
///
/// # Errors
/// [`StoreError::Index`] when the store's index fails; the pages before
/// stay swept, and the next round takes the rest.
fn sweep_partition(
    store: &dyn GcStore,
    repo: &RepoId,
    partition: u16,
    round: &Round,
    now_s: u64,
    grace_s: u64,
    page: usize,
) -> Result<SweepReport, StoreError> {
    let mut r = SweepReport::default();
    let mut after = None;
    loop {
        let (keys, more) = store.list_partition(partition, after.as_ref(), page)?;
        after = keys.last().cloned();
        let ours: Vec<ChunkId> = keys
            .into_iter()
            .filter(|(k, _)| k == repo)
            .map(|(_, id)| id)
            .collect();
        let since = store.unreferenced_since(repo, &ours)?;
        let found = gc::sweep_page(ours.into_iter().zip(since), round, now_s, grace_s);
        r.cleared += found.clear.len() as u64;
        r.noted += found.note.len() as u64;
        let note: Vec<(ChunkId, Option<u64>)> = found
            .clear
            .iter()
            .map(|id| (*id, None))
            .chain(found.note.iter().map(|id| (*id, Some(now_s))))
            .collect();
        let trash: Vec<(RepoId, ChunkId)> =
            found.trash.iter().map(|id| (repo.clone(), *id)).collect();
        store.set_unreferenced(repo, &note)?;
        let (_, bytes_before) = store.trash_stats();
        r.trashed += store.trash(&trash, now_s)?;
        let (_, bytes_after) = store.trash_stats();
        r.trashed_bytes += bytes_after.saturating_sub(bytes_before);
        if !more || after.is_none() {
            return Ok(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::{BlobStore, MemStore, RepairStore};

    /// A blob id in partition 7: its first two bytes, then `n`.
    fn id(n: u8) -> ChunkId {
        let mut id = [n; 32];
        id[..2].copy_from_slice(&7u16.to_be_bytes());
        ChunkId(id)
    }

    #[test]
    fn a_partition_sweep_notes_clears_and_trashes_the_repositorys_blobs_on_every_page() {
        let (now, grace) = (10_000, 100);
        let repo = RepoId::new("r").unwrap();
        let other = RepoId::new("o").unwrap();
        let store = MemStore::default();
        let blob = |n: u8| (id(n), Bytes::from(vec![n; 10 + usize::from(n)]));
        // 1 marked and noted, 2 unreferenced, 3 noted past the grace,
        // 4 noted within it; 5 belongs to another repository.
        store.put_blobs(&repo, (1..=4).map(blob).collect()).unwrap();
        store.put_blobs(&other, vec![blob(5)]).unwrap();
        let noted = [
            (id(1), Some(now - 500)),
            (id(3), Some(now - grace)),
            (id(4), Some(now - 1)),
        ];
        store.set_unreferenced(&repo, &noted).unwrap();
        let mut round = Round::new(1);
        round.mark([id(1)]);

        // Pages of two keys: three pages, the last with only the other
        // repository's blob.
        let r = sweep_partition(&store, &repo, 7, &round, now, grace, 2).unwrap();

        let expected = SweepReport {
            cleared: 1,
            noted: 1,
            trashed: 1,
            trashed_bytes: 13,
            ..SweepReport::default()
        };
        assert_eq!(r, expected);
        let ids = [id(1), id(2), id(3), id(4)];
        assert_eq!(store.has(&repo, &ids).unwrap(), [true, true, false, true]);
        assert_eq!(
            store.in_trash(&repo, &ids).unwrap(),
            [false, false, true, false]
        );
        assert_eq!(
            store.unreferenced_since(&repo, &ids).unwrap(),
            [None, Some(now), None, Some(now - 1)]
        );
        assert_eq!(store.unreferenced_since(&other, &[id(5)]).unwrap(), [None]);
        assert_eq!(store.has(&other, &[id(5)]).unwrap(), [true]);
    }
}
