//! What a server does between requests to keep N copies of every blob:
//!
//! - **Failure detection.** Every `probe-interval-ms` it says hello to each
//!   peer. A peer that fails is routed around for `route-around-ms` (writes
//!   meant for it land on the next node as hints); one silent for
//!   `out-after-s` is treated as out, and its partitions get new owners
//!   that repair fills. Hello answers carry the peer's map, so a newer
//!   epoch spreads to every server within one probe interval.
//! - **Handoff.** Blobs held in partitions this node does not own (hints,
//!   and blobs whose owners changed with the map) are dropped here only once
//!   every owner confirmed holding them. Owners fill each other by
//!   anti-entropy; a blob no owner holds yet is pushed to one.
//! - **Anti-entropy repair.** With each peer it shares partitions with, it
//!   compares set digests of those partitions folded into 256 buckets (one
//!   round trip when in sync), then per partition for the buckets that
//!   differ, then lists the partitions that differ and pulls what it lacks,
//!   blobs held by the fewest peers first, at most `repair-bytes-per-s`.
//!   Merkle-style summaries as in Dynamo (DeCandia et al., SOSP 2007, 4.7)
//!   and Cassandra's repair, with the store's incremental set digests. The
//!   decisions (what differs, what to pull, in which order) are
//!   [`ringvault_common::repair`]'s; this module carries the bytes.
//! - **Records.** Snapshot records and repository keys, which every server
//!   holds, are compared by a digest of their keys and copied where missing,
//!   tombstones first. A server also does this once as it starts, with
//!   every peer at once and for at most [`START_SYNC_LIMIT`], and answers
//!   no record listing before that ends: a server that was down during a
//!   `forget` drops the forgotten records before it lists anything.
//! - **Scrub.** It re-reads every blob once per `scrub-cycle-s`, at most
//!   `scrub-bytes-per-s`; the store quarantines a blob whose checksum fails,
//!   and repair then pulls a good copy from a co-replica.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use ringvault_common::repair::{self, Pull, PullPlan};
use ringvault_common::wire::{
    DIGEST_BUCKETS, Digests, GetBlob, GetRecord, Has, KeyPage, ListPartition, MAX_LIST_KEYS,
    PutBlobs, RecordKeyList, RecordKeys, Welcome, WireError, bitmap_of,
};
use ringvault_common::{ChunkId, NodeId, RepoId};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::node::{Node, START_SYNC_LIMIT};
use crate::store::RecordKind;

/// Blobs pulled or pushed per request.
const BATCH_BLOBS: usize = 64;
/// Bytes pulled or pushed per request, about.
const BATCH_BYTES: usize = 8 << 20;
/// Most missing blobs one repair round collects (bounds its memory: about
/// 100 bytes each); the next round continues.
const MAX_REPAIR_ROUND: usize = 65_536;
/// Blob fetches in flight during repair.
const REPAIR_FETCHES: usize = 8;
/// Partitions per per-partition digest request: 16,384 × 32 bytes = 512
/// KiB, within the header bound.
const DIGESTS_PER_REQUEST: usize = 16_384;
/// Blobs scrub checks per step.
const SCRUB_BLOBS: usize = 64;
/// Bytes scrub reads per step, about.
const SCRUB_BYTES: u64 = 4 << 20;

/// Starts the maintenance tasks of `node`; abort them to stop.
pub fn spawn(node: Arc<Node>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(sync_at_start(node.clone())),
        tokio::spawn(probe_loop(node.clone())),
        tokio::spawn(repair_loop(node.clone())),
        tokio::spawn(scrub_loop(node)),
    ]
}

/// A pacing limiter: callers take bytes and sleep so the total rate stays
/// at or under `bytes_per_s` (0: no limit).
pub(crate) struct RateLimiter {
    bytes_per_s: u64,
    next_free: parking_lot::Mutex<Instant>,
}

impl RateLimiter {
    pub(crate) fn new(bytes_per_s: u64) -> Self {
        Self {
            bytes_per_s,
            next_free: parking_lot::Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` more fit in the rate.
    pub(crate) async fn take(&self, bytes: u64) {
        if self.bytes_per_s == 0 {
            return;
        }
        let wait = {
            let mut next = self.next_free.lock();
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
            start - now
        };
        tokio::time::sleep(wait).await;
    }
}

async fn probe_loop(node: Arc<Node>) {
    let every = node.settings.probe_interval;
    let timeout = every.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let view = node.view();
        let epoch = view.map.epoch;
        let me = node.id();
        let probes =
            futures::future::join_all(view.map.nodes.iter().filter(|n| n.id != me).map(|n| {
                let node = node.clone();
                async move {
                    let was_down = node.peers.is_down(n.id);
                    let r = node.peers.probe(n.id, &n.address, epoch, timeout).await;
                    (n.id, was_down, r)
                }
            }))
            .await;
        for (peer, was_down, result) in probes {
            match result {
                Ok(Welcome { map, .. }) => {
                    node.peer_answered(peer);
                    if was_down {
                        node.wake.notify_one();
                    }
                    if map.epoch > node.view().map.epoch {
                        match node.adopt(map) {
                            Ok(_) => {}
                            Err(e) => warn!(error = %e, "cannot adopt a peer's newer map"),
                        }
                    }
                }
                Err(e) => debug!(%peer, error = %e, "probe failed"),
            }
        }
        node.update_out();
    }
}

async fn repair_loop(node: Arc<Node>) {
    let limiter = RateLimiter::new(node.settings.repair_bytes_per_s);
    loop {
        tokio::select! {
            () = tokio::time::sleep(node.settings.repair_interval) => {}
            () = node.wake.notified() => {
                // Let a burst of wake-ups (several quarantines) settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let epoch = node.view().map.epoch;
        let held = handoff(&node, &limiter).await;
        anti_entropy(&node, &limiter).await;
        sync_records(&node).await;
        if held == 0 && node.view().map.epoch == epoch {
            node.end_move();
        }
    }
}

/// Pushes blobs held for other owners to them and drops those every owner
/// confirmed. Returns how many such blobs remain here.
async fn handoff(node: &Arc<Node>, limiter: &RateLimiter) -> u64 {
    let view = node.view();
    let store = node.store().clone();
    let counts = match node.blocking(move || Ok(store.partition_counts())).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "handoff: cannot list partitions");
            return node.hints.load(Ordering::Relaxed);
        }
    };
    let me = node.id();
    let mut held = 0u64;
    for (partition, count) in counts {
        let owners = view.owners(partition).to_vec();
        if owners.contains(&me) {
            continue;
        }
        held += u64::from(count);
        let mut after = None;
        loop {
            let store = node.store().clone();
            let a = after.clone();
            let page = node
                .blocking(move || store.list_partition(partition, a.as_ref(), 1024))
                .await;
            let Ok((keys, more)) = page else { break };
            let Some(last) = keys.last().cloned() else {
                break;
            };
            after = Some(last);
            let dropped = hand_keys(node, &owners, keys, limiter).await;
            held = held.saturating_sub(dropped);
            if !more {
                break;
            }
        }
    }
    node.hints.store(held, Ordering::Relaxed);
    held
}

/// Hands `keys` (of one partition) to their `owners` and drops those every
/// owner holds. Returns how many were dropped.
///
/// A blob some owner already holds is not pushed: the owners lacking it
/// pull it from that owner by anti-entropy, so each blob crosses the
/// network once per new copy. Only a blob no owner holds (a write that
/// landed on substitutes alone) is pushed, to its first live owner.
async fn hand_keys(
    node: &Arc<Node>,
    owners: &[NodeId],
    keys: Vec<(RepoId, ChunkId)>,
    limiter: &RateLimiter,
) -> u64 {
    let mut dropped = 0;
    for (repo, ids) in group_by_repo(keys) {
        let mut holders = vec![0usize; ids.len()];
        let mut first_live = None;
        for &owner in owners {
            if node.is_down(owner) {
                continue;
            }
            let req = Has {
                repo: repo.clone(),
                ids: ids.clone(),
                local_only: true,
            };
            match node.call_peer(owner, req, vec![]).await {
                Ok((present, _)) if present.len() == ids.len() => {
                    first_live.get_or_insert(owner);
                    for (h, p) in holders.iter_mut().zip(present) {
                        *h += usize::from(p);
                    }
                }
                Ok(_) => {}
                Err(e) => debug!(%owner, error = %e, "handoff: has query failed"),
            }
        }
        if let Some(owner) = first_live {
            let orphans: Vec<usize> = (0..ids.len()).filter(|&i| holders[i] == 0).collect();
            for chunk in orphans.chunks(BATCH_BLOBS) {
                let sub: Vec<ChunkId> = chunk.iter().map(|&i| ids[i]).collect();
                let Some(blobs) = read_local(node, &repo, &sub).await else {
                    continue;
                };
                let bytes: u64 = blobs.iter().map(|(_, b)| b.len() as u64).sum();
                limiter.take(bytes).await;
                let count = blobs.len() as u64;
                if push(node, owner, &repo, blobs).await {
                    node.metrics.handed_off(count, bytes);
                }
            }
        }
        let done: Vec<(RepoId, ChunkId)> = ids
            .iter()
            .zip(&holders)
            .filter(|&(_, &h)| h >= owners.len() && !owners.is_empty())
            .map(|(id, _)| (repo.clone(), *id))
            .collect();
        if done.is_empty() {
            continue;
        }
        let store = node.store().clone();
        match node.blocking(move || store.delete_blobs(&done)).await {
            Ok(n) => dropped += n,
            Err(e) => warn!(error = %e, "handoff: cannot drop handed-off blobs"),
        }
    }
    dropped
}

/// Reads blobs of this store; a blob that fails its checksum is quarantined
/// and left out. `None` when the store cannot be read.
async fn read_local(
    node: &Arc<Node>,
    repo: &RepoId,
    ids: &[ChunkId],
) -> Option<Vec<(ChunkId, Bytes)>> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let store = node.store().clone();
        let r = repo.clone();
        match node.blocking(move || store.get_blob(&r, &id)).await {
            Ok(Some(b)) => out.push((id, b)),
            Ok(None) => {}
            Err(e) if e.code == ringvault_common::wire::ErrorCode::Corrupt => {
                crate::node::quarantine(node, repo.clone(), id).await;
            }
            Err(e) => {
                warn!(error = %e, "cannot read local blobs");
                return None;
            }
        }
    }
    Some(out)
}

async fn push(node: &Arc<Node>, to: NodeId, repo: &RepoId, blobs: Vec<(ChunkId, Bytes)>) -> bool {
    if blobs.is_empty() {
        return true;
    }
    let req = PutBlobs {
        repo: repo.clone(),
        blobs: blobs.iter().map(|(id, b)| (*id, b.len() as u32)).collect(),
        local_only: true,
    };
    let payload = blobs.into_iter().map(|(_, b)| b).collect();
    match node.call_peer(to, req, payload).await {
        Ok(_) => true,
        Err(e) => {
            debug!(node = %to, error = %e, "handoff push failed");
            false
        }
    }
}

fn group_by_repo(keys: Vec<(RepoId, ChunkId)>) -> Vec<(RepoId, Vec<ChunkId>)> {
    let mut groups: Vec<(RepoId, Vec<ChunkId>)> = Vec::new();
    for (repo, id) in keys {
        match groups.iter_mut().find(|(r, _)| *r == repo) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((repo, vec![id])),
        }
    }
    groups
}

/// Compares this node's partitions with each co-replica and pulls what it
/// lacks.
async fn anti_entropy(node: &Arc<Node>, limiter: &RateLimiter) {
    let view = node.view();
    let me = node.id();
    let mut shared: HashMap<NodeId, Vec<u16>> = HashMap::new();
    for p in 0..=u16::MAX {
        let owners = view.owners(p);
        if owners.contains(&me) {
            for &q in owners.iter().filter(|&&q| q != me) {
                shared.entry(q).or_default().push(p);
            }
        }
    }
    let mut plan = PullPlan::new(MAX_REPAIR_ROUND);
    for (peer, parts) in shared {
        if node.is_down(peer) || plan.room() == 0 {
            continue;
        }
        match missing_from(node, peer, &parts, plan.room()).await {
            Ok(keys) => plan.add(peer, keys),
            Err(e) => debug!(%peer, error = %e, "anti-entropy with a peer failed"),
        }
    }
    if plan.is_empty() {
        node.repair_backlog.store(0, Ordering::Relaxed);
        return;
    }
    let list = plan.into_pulls();
    info!(blobs = list.len(), "repair: pulling blobs this node lacks");
    node.repair_backlog
        .store(list.len() as u64, Ordering::Relaxed);
    let started = Instant::now();
    let (mut blobs, mut bytes) = (0u64, 0u64);
    let mut fetches = futures::stream::iter(list)
        .map(|Pull { repo, id, holders }| {
            let node = node.clone();
            async move {
                let blob = fetch(&node, &repo, id, &holders).await;
                (repo, id, blob)
            }
        })
        .buffered(REPAIR_FETCHES);
    let mut batch: Vec<(RepoId, ChunkId, Bytes)> = Vec::new();
    let mut batch_bytes = 0usize;
    while let Some((repo, id, blob)) = fetches.next().await {
        node.repair_backlog.fetch_sub(1, Ordering::Relaxed);
        let Some(blob) = blob else { continue };
        limiter.take(blob.len() as u64).await;
        batch_bytes += blob.len();
        batch.push((repo, id, blob));
        if batch.len() >= BATCH_BLOBS || batch_bytes >= BATCH_BYTES {
            let (n, b) = store_pulled(node, std::mem::take(&mut batch)).await;
            blobs += n;
            bytes += b;
            batch_bytes = 0;
        }
    }
    let (n, b) = store_pulled(node, batch).await;
    blobs += n;
    bytes += b;
    node.repair_backlog.store(0, Ordering::Relaxed);
    info!(
        blobs,
        bytes,
        seconds = started.elapsed().as_secs_f64(),
        "repair round done"
    );
}

/// Stores pulled blobs; returns how many and their bytes.
async fn store_pulled(node: &Arc<Node>, batch: Vec<(RepoId, ChunkId, Bytes)>) -> (u64, u64) {
    let mut by_repo: Vec<(RepoId, Vec<(ChunkId, Bytes)>)> = Vec::new();
    for (repo, id, blob) in batch {
        match by_repo.iter_mut().find(|(r, _)| *r == repo) {
            Some((_, v)) => v.push((id, blob)),
            None => by_repo.push((repo, vec![(id, blob)])),
        }
    }
    let (mut n, mut b) = (0u64, 0u64);
    for (repo, blobs) in by_repo {
        let count = blobs.len() as u64;
        let bytes: u64 = blobs.iter().map(|(_, x)| x.len() as u64).sum();
        let store = node.store().clone();
        match node.blocking(move || store.put_blobs(&repo, blobs)).await {
            Ok(()) => {
                node.metrics.repaired(count, bytes);
                n += count;
                b += bytes;
            }
            Err(e) => warn!(error = %e, "repair: cannot store pulled blobs"),
        }
    }
    (n, b)
}

/// One blob from the first of `holders` that has a good copy.
async fn fetch(node: &Arc<Node>, repo: &RepoId, id: ChunkId, holders: &[NodeId]) -> Option<Bytes> {
    for &h in holders {
        let req = GetBlob {
            repo: repo.clone(),
            id,
        };
        match node.call_peer(h, req, vec![]).await {
            Ok(((), blob)) => return Some(blob),
            Err(e) => debug!(node = %h, chunk = %id, error = %e, "repair fetch failed"),
        }
    }
    None
}

/// The keys `peer` holds in `parts` (partitions both own) that this node
/// lacks, at most `limit`.
async fn missing_from(
    node: &Arc<Node>,
    peer: NodeId,
    parts: &[u16],
    limit: usize,
) -> Result<Vec<(RepoId, ChunkId)>, String> {
    let bitmap = bitmap_of(parts.iter().copied());
    let theirs = digests(node, peer, bitmap.clone(), false, DIGEST_BUCKETS).await?;
    let store = node.store().clone();
    let b = bitmap.clone();
    let mine = node
        .blocking(move || Ok(store.digests(&b, false)))
        .await
        .map_err(|e| e.to_string())?;
    let parts = repair::in_differing_buckets(parts, &mine, &theirs).map_err(|e| e.to_string())?;
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    // Per-partition digests, in requests whose answers fit the header
    // bound (32 bytes each).
    let mut differing = Vec::new();
    for group in parts.chunks(DIGESTS_PER_REQUEST) {
        let bitmap = bitmap_of(group.iter().copied());
        let theirs = digests(node, peer, bitmap.clone(), true, group.len()).await?;
        let store = node.store().clone();
        let mine = node
            .blocking(move || Ok(store.digests(&bitmap, true)))
            .await
            .map_err(|e| e.to_string())?;
        differing.extend(
            repair::differing_partitions(group, &mine, &theirs).map_err(|e| e.to_string())?,
        );
    }
    let mut out = Vec::new();
    for p in differing {
        let theirs = list_peer_partition(node, peer, p).await?;
        let store = node.store().clone();
        let ids: Vec<(RepoId, ChunkId)> = theirs;
        let lacking = node
            .blocking(move || {
                let mut lacking = Vec::new();
                for (repo, group) in group_by_repo(ids) {
                    // A blob this node trashed is not pulled back from a
                    // co-replica that has not swept yet.
                    let held = store.has(&repo, &group)?;
                    let trashed = store.in_trash(&repo, &group)?;
                    lacking.extend(
                        repair::lacking(group, &held, &trashed)
                            .into_iter()
                            .map(|id| (repo.clone(), id)),
                    );
                }
                Ok(lacking)
            })
            .await
            .map_err(|e| e.to_string())?;
        out.extend(lacking);
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    Ok(out)
}

async fn digests(
    node: &Arc<Node>,
    peer: NodeId,
    partitions: Vec<u8>,
    per_partition: bool,
    expect: usize,
) -> Result<Vec<[u8; 32]>, String> {
    let req = Digests {
        partitions,
        per_partition,
    };
    match node.call_peer(peer, req, vec![]).await {
        Ok((digests, _)) if digests.len() == expect => Ok(digests),
        Ok((digests, _)) => Err(format!(
            "{} digests in the answer, {expect} asked for",
            digests.len()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Every key `peer` holds in `partition` (paged, bounded by the partition).
async fn list_peer_partition(
    node: &Arc<Node>,
    peer: NodeId,
    partition: u16,
) -> Result<Vec<(RepoId, ChunkId)>, String> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let req = ListPartition { partition, after };
        match node.call_peer(peer, req, vec![]).await {
            Ok((KeyPage { keys, more }, _)) if keys.len() <= MAX_LIST_KEYS => {
                after = keys.last().cloned();
                let empty = keys.is_empty();
                out.extend(keys);
                if !more || empty || out.len() >= MAX_REPAIR_ROUND {
                    return Ok(out);
                }
            }
            Ok((page, _)) => {
                return Err(format!(
                    "{} keys in one page, at most {MAX_LIST_KEYS} allowed",
                    page.keys.len()
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// One record sync at start ([`START_SYNC_LIMIT`]), then listings are
/// answered. With no peer answering, the server lists what it holds and
/// says so.
async fn sync_at_start(node: Arc<Node>) {
    let started = Instant::now();
    match tokio::time::timeout(START_SYNC_LIMIT, sync_records(&node)).await {
        Ok(done) if done.answered > 0 || done.asked == 0 => info!(
            peers = done.answered,
            copied = done.copied,
            ms = started.elapsed().as_millis() as u64,
            "records synced at start"
        ),
        Ok(done) => warn!(
            peers = done.asked,
            "no peer answered the record sync at start; listing the records held here, which may include snapshots forgotten while this server was down"
        ),
        Err(_) => warn!(
            limit_ms = START_SYNC_LIMIT.as_millis() as u64,
            "the record sync at start did not finish in time; listing the records held here, which may include snapshots forgotten while this server was down"
        ),
    }
    node.end_start_sync();
}

/// What one [`sync_records`] pass did.
#[derive(Debug, Default)]
struct RecordSync {
    /// Live peers asked for their record keys.
    asked: usize,
    /// Peers that answered.
    answered: usize,
    /// Records and tombstones copied here.
    copied: usize,
}

/// Copies snapshot records, repository keys and tombstones that live peers
/// hold and this node lacks (every server holds every record). Every live
/// peer is asked for its record keys at once; tombstones are copied first,
/// from any peer listing one (a node certificate may delete records
/// anyway), and a record with a tombstone here is never copied. Servers
/// cannot open a record to check it, so a record is copied only when a
/// strict majority of the live peers holding it hold the same bytes: one
/// faulty or hostile peer cannot plant another record under an id (with
/// one honest and one hostile holder, nothing is copied and a warning says
/// so).
async fn sync_records(node: &Arc<Node>) -> RecordSync {
    let mut done = RecordSync::default();
    let store = node.store().clone();
    let Ok(mine) = node.blocking(move || store.record_keys()).await else {
        return done;
    };
    let digest = crate::store::record_keys_digest(&mine);
    let mut have: HashSet<(u8, RepoId, [u8; 32])> = mine.into_iter().collect();
    let view = node.view();
    let peers: Vec<NodeId> = view
        .map
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&p| p != node.id() && !node.is_down(p))
        .collect();
    done.asked = peers.len();
    let req = &RecordKeys { digest };
    let answers = futures::future::join_all(
        peers
            .iter()
            .map(|&peer| async move { (peer, node.call_peer(peer, req.clone(), vec![]).await) }),
    )
    .await;
    // Each record key missing here, with the peers that listed it.
    let mut missing: HashMap<(u8, RepoId, [u8; 32]), Vec<NodeId>> = HashMap::new();
    for (peer, answer) in answers {
        match answer {
            Ok((RecordKeyList { keys, .. }, _)) => {
                done.answered += 1;
                for k in keys {
                    if !have.contains(&k) {
                        missing.entry(k).or_default().push(peer);
                    }
                }
            }
            Err(e) => debug!(%peer, error = %e, "record sync failed"),
        }
    }
    let mut missing: Vec<_> = missing.into_iter().collect();
    missing.sort_by_key(|((kind, _, _), _)| *kind != RecordKind::Tombstone as u8);
    for ((kind, repo, key), holders) in missing {
        let Some(record_kind) = RecordKind::from_u8(kind) else {
            continue;
        };
        let value = if record_kind == RecordKind::Tombstone {
            any_copy(node, &holders, kind, &repo, key).await
        } else if have.contains(&(RecordKind::Tombstone as u8, repo.clone(), key)) {
            // A snapshot or key deleted here stays deleted.
            continue;
        } else {
            agreed_record(node, &view, kind, &repo, key).await
        };
        let Some(value) = value else {
            continue;
        };
        let store = node.store().clone();
        let r = repo.clone();
        let result: Result<(), WireError> = node
            .blocking(move || {
                store.put_record(record_kind, &r, &key, &value, true)?;
                if record_kind == RecordKind::Tombstone {
                    store.delete_record(RecordKind::Snapshot, &r, &key)?;
                    store.delete_record(RecordKind::Key, &r, &key)?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                info!(peer = %holders[0], repo = %repo, kind, "copied a missing record");
                have.insert((kind, repo, key));
                done.copied += 1;
            }
            Err(e) => warn!(error = %e, "cannot store a copied record"),
        }
    }
    done
}

/// Record (`kind`, `repo`, `key`) from the first of `holders` that hands
/// it out: for tombstones, whose value is only the deleting node's
/// deletion time, so any copy will do.
async fn any_copy(
    node: &Arc<Node>,
    holders: &[NodeId],
    kind: u8,
    repo: &RepoId,
    key: [u8; 32],
) -> Option<bytes::Bytes> {
    let req = GetRecord {
        repo: repo.clone(),
        kind,
        key,
    };
    for &peer in holders {
        match node.call_peer(peer, req.clone(), vec![]).await {
            Ok(((), value)) if !value.is_empty() => return Some(value),
            Ok(_) => {}
            Err(e) => debug!(%peer, error = %e, "record fetch failed"),
        }
    }
    None
}

/// Asks every live peer for record (`kind`, `repo`, `key`) and returns the
/// bytes a strict majority of those holding it agree on.
async fn agreed_record(
    node: &Arc<Node>,
    view: &crate::node::View,
    kind: u8,
    repo: &RepoId,
    key: [u8; 32],
) -> Option<bytes::Bytes> {
    let req = GetRecord {
        repo: repo.clone(),
        kind,
        key,
    };
    let mut copies: Vec<(bytes::Bytes, usize)> = Vec::new();
    let mut holders = 0usize;
    for peer in view.map.nodes.iter().map(|n| n.id) {
        if peer == node.id() || node.is_down(peer) {
            continue;
        }
        match node.call_peer(peer, req.clone(), vec![]).await {
            Ok(((), value)) if !value.is_empty() => {
                holders += 1;
                match copies.iter_mut().find(|(v, _)| *v == value) {
                    Some((_, n)) => *n += 1,
                    None => copies.push((value, 1)),
                }
            }
            Ok(_) => {}
            Err(e) => debug!(%peer, error = %e, "record fetch failed"),
        }
    }
    let best = copies.into_iter().max_by_key(|(_, n)| *n)?;
    if best.1 * 2 > holders {
        return Some(best.0);
    }
    warn!(
        repo = %repo,
        kind,
        holders,
        agreeing = best.1,
        "peers hold different records under one key; copying none"
    );
    None
}

async fn scrub_loop(node: Arc<Node>) {
    let cycle = node.settings.scrub_cycle;
    if cycle.is_zero() {
        return;
    }
    let max_rate = node.settings.scrub_bytes_per_s.max(1) as f64;
    let mut cursor: Option<(RepoId, ChunkId)> = None;
    let mut cycle_start = Instant::now();
    loop {
        let store = node.store().clone();
        let after = cursor.clone();
        let step = match node
            .blocking(move || store.scrub(after.as_ref(), SCRUB_BLOBS, SCRUB_BYTES))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "scrub step failed");
                tokio::time::sleep(Duration::from_secs(10)).await;
                continue;
            }
        };
        node.scrub_bytes.fetch_add(step.bytes, Ordering::Relaxed);
        node.metrics.scrubbed(step.checked, step.bytes);
        for (repo, id) in &step.quarantined {
            warn!(chunk = %id, repo = %repo, "scrub: blob failed its checksum; quarantined, fetching a good copy");
        }
        if !step.quarantined.is_empty() {
            node.wake.notify_one();
        }
        cursor = step.next;
        let total = node.store().stats().map_or(0, |(_, b)| b);
        let rate = (total as f64 / cycle.as_secs_f64()).clamp(1.0, max_rate);
        let pause = Duration::from_secs_f64((step.bytes as f64 / rate).min(60.0));
        tokio::time::sleep(pause).await;
        if cursor.is_none() {
            node.scrub_cycles.fetch_add(1, Ordering::Relaxed);
            debug!(
                bytes = node.scrub_bytes.load(Ordering::Relaxed),
                "scrub cycle done"
            );
            if let Some(rest) = cycle.checked_sub(cycle_start.elapsed()) {
                tokio::time::sleep(rest).await;
            }
            node.scrub_bytes.store(0, Ordering::Relaxed);
            cycle_start = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limiter_paces_bytes_and_zero_means_unlimited() {
        let limiter = RateLimiter::new(1 << 20);
        let start = Instant::now();
        for _ in 0..3 {
            limiter.take(100 << 10).await;
        }
        // The first take is free; the next two wait for 2 × 100 KiB at 1 MiB/s.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(190), "{waited:?}");
        let unlimited = RateLimiter::new(0);
        let start = Instant::now();
        unlimited.take(u64::MAX).await;
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn keys_are_grouped_by_repository_in_order() {
        let (a, b) = (RepoId::new("a").unwrap(), RepoId::new("b").unwrap());
        let id = |n: u8| ChunkId([n; 32]);
        let groups = group_by_repo(vec![
            (a.clone(), id(1)),
            (b.clone(), id(2)),
            (a.clone(), id(3)),
        ]);
        assert_eq!(groups, vec![(a, vec![id(1), id(3)]), (b, vec![id(2)])]);
    }
}
