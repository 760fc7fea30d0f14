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
//! begin replaces. A partition is swept only when its owners are all up and
//! no blobs are moving (no node out, no map change under way); otherwise it
//! is skipped and retried next round. Only partitions this server owns are
//! swept: hints are the handoff's business.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ringvault_common::wire::{ErrorCode, SweepReport, WireError};
use ringvault_common::{ChunkId, RepoId};
use tracing::info;

use crate::server::{Node, blocking};

/// Keys listed per store call while sweeping one partition.
const PAGE: usize = 4096;
/// Most compaction: segments at most this live fraction are rewritten
/// after a sweep.
const COMPACT_BELOW: f64 = 0.5;

/// One round's state for one repository.
#[derive(Default)]
pub struct Round {
    id: u64,
    marks: HashSet<ChunkId>,
    protected: HashSet<ChunkId>,
}

/// The rounds in progress on a server, one per repository at most.
#[derive(Default)]
pub struct Rounds {
    rounds: Mutex<HashMap<RepoId, Round>>,
}

fn unknown(round: u64) -> WireError {
    WireError::new(
        ErrorCode::NotFound,
        format!(
            "prune round {round:016x} is not running here (another prune replaced it, or the server restarted); run prune again"
        ),
    )
}

impl Rounds {
    /// Starts round `id` of `repo`, replacing any earlier round.
    pub fn begin(&self, repo: &RepoId, id: u64) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        rounds.insert(
            repo.clone(),
            Round {
                id,
                ..Round::default()
            },
        );
        info!(repo = %repo, round = format!("{id:016x}"), "prune round started");
    }

    /// Adds live ids to round `id`.
    ///
    /// # Errors
    /// When round `id` is not running (see [`unknown`]).
    pub fn mark(&self, repo: &RepoId, id: u64, ids: Vec<ChunkId>) -> Result<(), WireError> {
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        match rounds.get_mut(repo) {
            Some(r) if r.id == id => {
                r.marks.extend(ids);
                Ok(())
            }
            _ => Err(unknown(id)),
        }
    }

    /// Protects `ids` from the round of `repo`, if one is running.
    pub fn protect<'a>(&self, repo: &RepoId, ids: impl IntoIterator<Item = &'a ChunkId>) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = rounds.get_mut(repo) {
            r.protected.extend(ids);
        }
    }

    /// Ends round `id` of `repo` and returns it.
    ///
    /// # Errors
    /// When round `id` is not running.
    fn take(&self, repo: &RepoId, id: u64) -> Result<Round, WireError> {
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        match rounds.remove(repo) {
            Some(r) if r.id == id => Ok(r),
            Some(other) => {
                rounds.insert(repo.clone(), other);
                Err(unknown(id))
            }
            None => Err(unknown(id)),
        }
    }
}

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
    let now = unix_now();
    let mut report = SweepReport::default();
    let store = node.store().clone();
    let counts = blocking(move || Ok(store.partition_counts())).await?;
    let moving = view.has_move() || !view.out.is_empty();
    for (partition, _) in counts {
        let owners = view.owners(partition);
        if !owners.contains(&me) {
            continue;
        }
        if moving || owners.iter().any(|&o| node.is_down(o)) {
            report.skipped += 1;
            continue;
        }
        report.partitions += 1;
        let store = node.store().clone();
        let (repo, round) = (repo.clone(), round.clone());
        let part = blocking(move || {
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
                let (live, dead): (Vec<ChunkId>, Vec<ChunkId>) = ours
                    .into_iter()
                    .partition(|id| round.marks.contains(id) || round.protected.contains(id));
                let was_live = store.unreferenced_since(&repo, &live)?;
                let clear: Vec<(ChunkId, Option<u64>)> = live
                    .iter()
                    .zip(was_live)
                    .filter(|(_, since)| since.is_some())
                    .map(|(id, _)| (*id, None))
                    .collect();
                r.cleared += clear.len() as u64;
                let since = store.unreferenced_since(&repo, &dead)?;
                let mut note = clear;
                let mut trash = Vec::new();
                for (id, since) in dead.iter().zip(since) {
                    match since {
                        None => {
                            note.push((*id, Some(now)));
                            r.noted += 1;
                        }
                        Some(t) if now.saturating_sub(t) >= grace_s => {
                            trash.push((repo.clone(), *id));
                        }
                        Some(_) => {}
                    }
                }
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
    let (expired, expired_bytes) =
        blocking(move || store.expire_trash(now.saturating_sub(trash_keep_s))).await?;
    report.expired = expired;
    report.expired_bytes = expired_bytes;
    info!(repo = %repo, ?report, "prune sweep done");
    let store = node.store().clone();
    tokio::task::spawn_blocking(move || match store.compact(COMPACT_BELOW) {
        Ok(c) if c.segments > 0 => info!(
            segments = c.segments,
            before = c.bytes_before,
            after = c.bytes_after,
            "compacted segments"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "compaction failed"),
    });
    Ok(report)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_protect_only_while_running_and_refuse_strangers() {
        let r = Rounds::default();
        let repo = RepoId::new("r").unwrap();
        let id = ChunkId([1; 32]);
        r.protect(&repo, [&id]);
        assert!(r.mark(&repo, 7, vec![id]).is_err());
        r.begin(&repo, 7);
        r.protect(&repo, [&id]);
        r.mark(&repo, 7, vec![ChunkId([2; 32])]).unwrap();
        assert!(r.take(&repo, 8).is_err(), "another round's sweep");
        let round = r.take(&repo, 7).unwrap();
        assert!(round.protected.contains(&id));
        assert!(round.marks.contains(&ChunkId([2; 32])));
        assert!(r.take(&repo, 7).is_err(), "a round ends once");
    }
}
