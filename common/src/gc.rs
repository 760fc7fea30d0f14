//! Garbage collection's decisions, on both sides of the wire.
//!
//! **On a server** (the chunk server's `prune` and `rounds` modules carry
//! the bytes): a prune is mark-and-sweep with a grace period. A
//! [`RoundTable`] holds the rounds in progress, one [`Round`] per
//! repository: begun, given the ids reachable from the listed snapshots
//! (marks) and the ids written or answered present meanwhile (protected),
//! then taken for the sweep, which is refused for a round not running
//! ([`UnknownRound`]). [`partition_sweep`] says which partitions the sweep
//! may touch and [`sweep_page`] what it does with each chunk there: a chunk
//! neither marked nor protected is noted unreferenced, and trashed only
//! once a note at least the grace period old finds it still unreferenced;
//! a kept chunk loses its note. So a chunk is deleted only after two rounds
//! at least the grace period apart both found no snapshot using it.
//!
//! **In a backup**: the garbage-collection fence as a backup sees it: every server's
//! [`GcFence`] for the repository, read at one point of a backup, and the
//! decision whether chunks confirmed under an earlier reading may be
//! relied on without asking the cluster again.
//!
//! The argument (see [`GcFence`] for the server side): a server deletes a
//! blob only in the sweep of a prune round, and every begin and end of a
//! round moves its fence. If every server of the map answered, none was in
//! a round, and the readings equal an earlier reading taken the same way,
//! then no round began or ended anywhere in between, so nothing was deleted:
//! chunks confirmed present after that earlier reading are present now.
//! [`GcFences::quiet_tag`] condenses such a reading to one number to keep
//! beside what it vouches for.

use std::collections::{HashMap, HashSet};

use crate::wire::GcFence;
use crate::{ChunkId, NodeId, RepoId};

/// One reading of the fences of the servers of a cluster map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcFences {
    /// Every node of the map the reading was taken for.
    pub nodes: Vec<NodeId>,
    /// The fences of the nodes that answered.
    pub read: Vec<(NodeId, GcFence)>,
}

impl GcFences {
    /// A reading: `nodes` of the map, `read` the answers.
    pub fn new(mut nodes: Vec<NodeId>, mut read: Vec<(NodeId, GcFence)>) -> Self {
        nodes.sort();
        nodes.dedup();
        read.sort_by_key(|(n, _)| *n);
        read.dedup_by_key(|(n, _)| *n);
        Self { nodes, read }
    }

    /// A tag for this reading when it can vouch for chunks: every node of
    /// the map answered and none was running a round. Never 0 (0 is kept
    /// for "nothing vouched"). Two quiet readings have the same tag when
    /// their fences are equal (the tag is a BLAKE3 digest of them, so a
    /// different reading has a different tag but with chance 2^-64).
    pub fn quiet_tag(&self) -> Option<u64> {
        let answered: Vec<NodeId> = self.read.iter().map(|(n, _)| *n).collect();
        if answered != self.nodes || self.read.iter().any(|(_, f)| f.active) {
            return None;
        }
        let mut h = blake3::Hasher::new_derive_key("ringvault gc fence tag v1");
        for (node, f) in &self.read {
            h.update(&node.0.to_le_bytes());
            h.update(&f.boot.to_le_bytes());
            h.update(&f.counter.to_le_bytes());
        }
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_bytes()[..8]);
        Some(u64::from_le_bytes(first).max(1))
    }
}

/// A prune's snapshot listing that may have missed a stored snapshot
/// ([`check_listing_quorum`]): nothing may be swept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the snapshot listing reached {counted} of the {servers} servers on which the prune round began, \
     {needed} are needed so that no stored snapshot is missed (servers {servers_total} in the map, \
     W = {write_quorum}); nothing was swept"
)]
pub struct ListingShort {
    /// Servers that both began the round and answered the listing.
    pub counted: usize,
    /// Servers on which the round began.
    pub servers: usize,
    /// M − W + 1.
    pub needed: usize,
    /// M: servers in the map.
    pub servers_total: usize,
    /// W.
    pub write_quorum: u32,
}

/// Servers a prune's snapshot listing must reach: M − W + 1 for a map of
/// `servers` (M) servers and write quorum `write_quorum` (W), at least 1.
/// A snapshot record is acknowledged once W servers store it, so any
/// M − W + 1 servers include one of them (the read/write quorum overlap of
/// Gifford, "Weighted voting for replicated data", SOSP 1979).
pub fn listing_quorum(servers: usize, write_quorum: u32) -> usize {
    servers
        .saturating_sub(write_quorum as usize)
        .saturating_add(1)
}

/// Whether a prune may sweep after listing snapshots: at least
/// [`listing_quorum`] of the map's `servers` must both have begun the round
/// (`begun`) and answered the listing (`answered`).
///
/// Why both: a server stores a record only under the fence the backup read
/// ([`GcFence`]), so a record stored on a server after the round began
/// there carries a fence read before the begin only if the backup read it
/// during the round, when it asked for every chunk and the round protects
/// them. Every record whose chunks the round does not protect was thus
/// stored, on each server of the round that holds it, before the round
/// began there; a listing made after the begins, by M − W + 1 such servers,
/// reaches one of its W holders.
///
/// # Errors
/// [`ListingShort`] when too few servers count.
pub fn check_listing_quorum(
    servers: &[NodeId],
    write_quorum: u32,
    begun: &[NodeId],
    answered: &[NodeId],
) -> Result<(), ListingShort> {
    let counted = servers
        .iter()
        .filter(|n| begun.contains(n) && answered.contains(n))
        .count();
    let needed = listing_quorum(servers.len(), write_quorum);
    if counted >= needed {
        return Ok(());
    }
    Err(ListingShort {
        counted,
        servers: begun.len(),
        needed,
        servers_total: servers.len(),
        write_quorum,
    })
}

/// One prune round's state for one repository on one server: the ids
/// marked live by the pruning agent and those protected because a backup
/// wrote them or was told they are present while the round ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    id: u64,
    marks: HashSet<ChunkId>,
    protected: HashSet<ChunkId>,
}

impl Round {
    /// Round `id` (chosen by the pruning agent), nothing marked or
    /// protected yet.
    pub fn new(id: u64) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    /// The round's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Marks `ids` live: reachable from a listed snapshot.
    pub fn mark(&mut self, ids: impl IntoIterator<Item = ChunkId>) {
        self.marks.extend(ids);
    }

    /// Protects `ids`: written or answered present while the round ran.
    pub fn protect<'a>(&mut self, ids: impl IntoIterator<Item = &'a ChunkId>) {
        self.protected.extend(ids);
    }

    /// Whether `id` was marked.
    pub fn is_marked(&self, id: &ChunkId) -> bool {
        self.marks.contains(id)
    }

    /// Whether `id` was protected.
    pub fn is_protected(&self, id: &ChunkId) -> bool {
        self.protected.contains(id)
    }

    /// Whether the sweep keeps `id`: marked or protected.
    pub fn keeps(&self, id: &ChunkId) -> bool {
        self.is_marked(id) || self.is_protected(id)
    }
}

/// A request for a prune round that is not the one running for its
/// repository (none runs, or another replaced it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "prune round {round:016x} is not running here (another prune replaced it, or the server restarted); run prune again"
)]
pub struct UnknownRound {
    /// The round asked for.
    pub round: u64,
}

/// The prune rounds in progress on one server, at most one per
/// repository, and the counter of each repository's [`GcFence`].
///
/// Every begin and every end of a round moves the fence: [`Self::begin`]
/// counts a replaced round as ended, [`Self::take`] ends one. The caller
/// serialises calls (one lock) and keeps snapshot stores out of a begin.
#[derive(Clone, Debug)]
pub struct RoundTable {
    rounds: HashMap<RepoId, Round>,
    /// Rounds begun plus ended, per repository, since start.
    counters: HashMap<RepoId, u64>,
    /// Different at every server start.
    boot: u64,
}

impl RoundTable {
    /// No round running; `boot` must differ at every server start (the
    /// caller draws it at random), so that a restart moves every fence.
    pub fn new(boot: u64) -> Self {
        Self {
            rounds: HashMap::new(),
            counters: HashMap::new(),
            boot,
        }
    }

    /// Starts round `id` of `repo`, replacing any earlier round, which
    /// counts as ended. Returns whether one was replaced.
    pub fn begin(&mut self, repo: &RepoId, id: u64) -> bool {
        let replaced = self.rounds.insert(repo.clone(), Round::new(id)).is_some();
        self.bump(repo, 1 + u64::from(replaced));
        replaced
    }

    /// This server's fence for `repo`.
    pub fn fence(&self, repo: &RepoId) -> GcFence {
        GcFence {
            boot: self.boot,
            counter: self.counters.get(repo).copied().unwrap_or(0),
            active: self.rounds.contains_key(repo),
        }
    }

    /// Adds live `ids` to round `id` of `repo`.
    ///
    /// # Errors
    /// [`UnknownRound`] when round `id` is not the one running.
    pub fn mark(
        &mut self,
        repo: &RepoId,
        id: u64,
        ids: impl IntoIterator<Item = ChunkId>,
    ) -> Result<(), UnknownRound> {
        match self.rounds.get_mut(repo) {
            Some(r) if r.id == id => {
                r.mark(ids);
                Ok(())
            }
            _ => Err(UnknownRound { round: id }),
        }
    }

    /// Protects `ids` from the round of `repo`, if one is running; without
    /// a round there is nothing to protect them from.
    pub fn protect<'a>(&mut self, repo: &RepoId, ids: impl IntoIterator<Item = &'a ChunkId>) {
        if let Some(r) = self.rounds.get_mut(repo) {
            r.protect(ids);
        }
    }

    /// Ends round `id` of `repo` and returns it, for its sweep. Another
    /// round running for `repo` goes on.
    ///
    /// # Errors
    /// [`UnknownRound`] when round `id` is not the one running: the sweep
    /// is refused.
    pub fn take(&mut self, repo: &RepoId, id: u64) -> Result<Round, UnknownRound> {
        match self.rounds.get(repo) {
            Some(r) if r.id == id => {}
            _ => return Err(UnknownRound { round: id }),
        }
        let round = self.rounds.remove(repo).ok_or(UnknownRound { round: id })?;
        self.bump(repo, 1);
        Ok(round)
    }

    fn bump(&mut self, repo: &RepoId, by: u64) {
        *self.counters.entry(repo.clone()).or_insert(0) += by;
    }
}

/// Whether a sweep touches a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionSweep {
    /// This server does not own it: hints are the handoff's business.
    NotOwned,
    /// Skipped this round (counted), retried next round: an owner is down
    /// or blobs are moving, so a chunk may be on its way here.
    Skip,
    /// Swept.
    Sweep,
}

/// Whether the sweep on server `me` touches a partition held by `owners`:
/// only if `me` owns it, and then only when no blobs are moving (`moving`:
/// no node out, no map change under way) and no owner `is_down`.
pub fn partition_sweep(
    owners: &[NodeId],
    me: NodeId,
    moving: bool,
    is_down: impl Fn(NodeId) -> bool,
) -> PartitionSweep {
    if !owners.contains(&me) {
        PartitionSweep::NotOwned
    } else if moving || owners.iter().any(|&o| is_down(o)) {
        PartitionSweep::Skip
    } else {
        PartitionSweep::Sweep
    }
}

/// What a sweep does with one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Kept (marked or protected) and not noted: nothing to do.
    Keep,
    /// Kept, and its unreferenced note is cleared.
    Clear,
    /// Unreferenced and not yet noted: note it as unreferenced since now.
    Note,
    /// Unreferenced, noted less than the grace period ago: wait.
    Wait,
    /// Unreferenced, noted at least the grace period ago: to the trash.
    Trash,
}

/// The verdict on one chunk: `keep` whether the round marked or protected
/// it, `noted_since` when it was first noted unreferenced (unix seconds),
/// `now` in unix seconds, `grace` in seconds. A note later than `now` (the
/// clock went back) counts as noted now.
pub fn verdict(keep: bool, noted_since: Option<u64>, now: u64, grace: u64) -> Verdict {
    match (keep, noted_since) {
        (true, None) => Verdict::Keep,
        (true, Some(_)) => Verdict::Clear,
        (false, None) => Verdict::Note,
        (false, Some(t)) if now.saturating_sub(t) >= grace => Verdict::Trash,
        (false, Some(_)) => Verdict::Wait,
    }
}

/// A sweep's findings on one page of a partition's chunks of one
/// repository, each list in page order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepPage {
    /// Kept chunks whose unreferenced note is to be cleared.
    pub clear: Vec<ChunkId>,
    /// Chunks to note as unreferenced since now.
    pub note: Vec<ChunkId>,
    /// Chunks to move to the trash.
    pub trash: Vec<ChunkId>,
    /// Kept chunks with no note: nothing to do.
    pub kept: usize,
    /// Noted chunks still within the grace period.
    pub waiting: usize,
}

/// Sweeps one page: each chunk id with the time it was first noted
/// unreferenced (unix seconds, `None` when not noted), under `round`, at
/// `now` (unix seconds) with a grace period of `grace` seconds. See
/// [`verdict`]; every id lands in exactly one outcome.
pub fn sweep_page(
    page: impl IntoIterator<Item = (ChunkId, Option<u64>)>,
    round: &Round,
    now: u64,
    grace: u64,
) -> SweepPage {
    let mut out = SweepPage::default();
    for (id, since) in page {
        match verdict(round.keeps(&id), since, now, grace) {
            Verdict::Keep => out.kept += 1,
            Verdict::Clear => out.clear.push(id),
            Verdict::Note => out.note.push(id),
            Verdict::Wait => out.waiting += 1,
            Verdict::Trash => out.trash.push(id),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(boot: u64, counter: u64, active: bool) -> GcFence {
        GcFence {
            boot,
            counter,
            active,
        }
    }

    #[test]
    fn only_a_complete_idle_reading_vouches() {
        let nodes = vec![NodeId(1), NodeId(2)];
        let full = GcFences::new(
            nodes.clone(),
            vec![(NodeId(2), f(5, 2, false)), (NodeId(1), f(4, 0, false))],
        );
        let tag = full.quiet_tag().expect("complete and idle");
        assert_ne!(tag, 0);
        let same = GcFences::new(
            nodes.clone(),
            vec![(NodeId(1), f(4, 0, false)), (NodeId(2), f(5, 2, false))],
        );
        assert_eq!(same.quiet_tag(), Some(tag), "order does not matter");
        let missing = GcFences::new(nodes.clone(), vec![(NodeId(1), f(4, 0, false))]);
        assert_eq!(missing.quiet_tag(), None, "a node did not answer");
        let running = GcFences::new(
            nodes.clone(),
            vec![(NodeId(1), f(4, 1, true)), (NodeId(2), f(5, 2, false))],
        );
        assert_eq!(running.quiet_tag(), None, "a round is running");
        let stranger = GcFences::new(
            nodes.clone(),
            vec![
                (NodeId(1), f(4, 0, false)),
                (NodeId(2), f(5, 2, false)),
                (NodeId(3), f(1, 0, false)),
            ],
        );
        assert_eq!(stranger.quiet_tag(), None, "a node not in the map");
    }

    #[test]
    fn a_prune_sweeps_only_after_a_listing_that_overlaps_every_write_quorum() {
        let servers: Vec<NodeId> = (1..=5).map(NodeId).collect();
        // M = 5, W = 3: three servers must count.
        assert_eq!(listing_quorum(5, 3), 3);
        assert_eq!(listing_quorum(3, 2), 2);
        assert_eq!(listing_quorum(1, 1), 1);
        assert_eq!(listing_quorum(2, 5), 1, "never below one");
        let ids = |v: &[u32]| v.iter().map(|&n| NodeId(n)).collect::<Vec<_>>();
        assert!(check_listing_quorum(&servers, 3, &ids(&[1, 2, 3]), &ids(&[1, 2, 3])).is_ok());
        // Four answered, but one of them had not begun the round.
        let short =
            check_listing_quorum(&servers, 3, &ids(&[1, 2, 5]), &ids(&[1, 2, 3, 4])).unwrap_err();
        assert_eq!((short.counted, short.needed), (2, 3));
        assert!(short.to_string().contains("nothing was swept"), "{short}");
        // Servers outside the map do not count.
        assert!(check_listing_quorum(&servers, 3, &ids(&[1, 2, 9]), &ids(&[1, 2, 9])).is_err());
    }

    proptest! {
        /// Whatever W servers hold a record, a listing that passes the
        /// check reaches one of them.
        #[test]
        fn a_passing_listing_meets_every_write_quorum(
            m in 1u32..8,
            w_pick in any::<prop::sample::Index>(),
            holders in any::<u64>(),
            begun in any::<u64>(),
            answered in any::<u64>(),
        ) {
            let w = 1 + w_pick.index(m as usize) as u32;
            let servers: Vec<NodeId> = (0..m).map(NodeId).collect();
            let pick = |bits: u64| servers.iter().copied().filter(|n| bits >> n.0 & 1 == 1).collect::<Vec<_>>();
            let holders = pick(holders);
            prop_assume!(holders.len() >= w as usize);
            let (begun, answered) = (pick(begun), pick(answered));
            if check_listing_quorum(&servers, w, &begun, &answered).is_ok() {
                prop_assert!(holders.iter().any(|h| begun.contains(h) && answered.contains(h)));
            }
        }
    }

    fn chunk(n: u32) -> ChunkId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        ChunkId(b)
    }

    #[test]
    fn a_sweep_is_refused_for_a_round_not_running() {
        let mut t = RoundTable::new(1);
        let repo = RepoId::new("r").unwrap();
        let id = chunk(1);
        t.protect(&repo, [&id]);
        assert_eq!(t.mark(&repo, 7, [id]), Err(UnknownRound { round: 7 }));
        assert!(t.take(&repo, 7).is_err(), "nothing begun");
        assert!(!t.begin(&repo, 7));
        t.protect(&repo, [&id]);
        t.mark(&repo, 7, [chunk(2)]).unwrap();
        assert!(
            t.mark(&repo, 8, [chunk(3)]).is_err(),
            "another round's marks"
        );
        let before = t.fence(&repo);
        assert!(t.take(&repo, 8).is_err(), "another round's sweep");
        assert_eq!(t.fence(&repo), before, "a refused sweep ends nothing");
        let round = t.take(&repo, 7).unwrap();
        assert_eq!(round.id(), 7);
        assert!(round.is_protected(&id) && !round.is_marked(&id));
        assert!(round.is_marked(&chunk(2)) && round.keeps(&chunk(2)));
        assert!(!round.keeps(&chunk(3)));
        assert!(t.take(&repo, 7).is_err(), "a round ends once");
        let message = t.take(&repo, 0x2a).unwrap_err().to_string();
        assert!(message.starts_with("prune round 000000000000002a is not running here"));
    }

    #[test]
    fn the_fence_counts_begins_and_ends_per_repository() {
        let mut t = RoundTable::new(42);
        let (repo, other) = (RepoId::new("r").unwrap(), RepoId::new("o").unwrap());
        assert_eq!(t.fence(&repo), f(42, 0, false));
        t.begin(&repo, 1);
        assert_eq!(t.fence(&repo), f(42, 1, true));
        assert!(t.begin(&repo, 2), "replaces round 1");
        assert_eq!(t.fence(&repo), f(42, 3, true), "a replaced round ended");
        assert_eq!(t.fence(&other), f(42, 0, false));
        t.take(&repo, 2).unwrap();
        assert_eq!(t.fence(&repo), f(42, 4, false));
    }

    #[test]
    fn partitions_are_swept_only_when_owned_and_settled() {
        let owners = [NodeId(1), NodeId(2), NodeId(3)];
        let up = |_| false;
        assert_eq!(
            partition_sweep(&owners, NodeId(9), false, up),
            PartitionSweep::NotOwned
        );
        assert_eq!(
            partition_sweep(&owners, NodeId(9), true, up),
            PartitionSweep::NotOwned
        );
        assert_eq!(
            partition_sweep(&owners, NodeId(2), false, up),
            PartitionSweep::Sweep
        );
        assert_eq!(
            partition_sweep(&owners, NodeId(2), true, up),
            PartitionSweep::Skip
        );
        let three_down = |n: NodeId| n == NodeId(3);
        assert_eq!(
            partition_sweep(&owners, NodeId(2), false, three_down),
            PartitionSweep::Skip
        );
    }

    #[test]
    fn a_chunk_is_trashed_only_on_a_note_older_than_the_grace() {
        let mut round = Round::new(1);
        round.mark([chunk(1)]);
        round.protect([&chunk(2)]);
        let page = vec![
            (chunk(1), Some(10)),  // marked: note cleared
            (chunk(2), None),      // protected: nothing to do
            (chunk(3), None),      // unreferenced: noted
            (chunk(4), Some(41)),  // noted 59 s ago, grace 60: waits
            (chunk(5), Some(40)),  // noted 60 s ago: trashed
            (chunk(6), Some(200)), // noted in the future: waits
        ];
        let out = sweep_page(page, &round, 100, 60);
        assert_eq!(
            out,
            SweepPage {
                clear: vec![chunk(1)],
                note: vec![chunk(3)],
                trash: vec![chunk(5)],
                kept: 1,
                waiting: 2,
            }
        );
        assert_eq!(
            verdict(false, None, 100, 0),
            Verdict::Note,
            "a first note never trashes"
        );
        assert_eq!(verdict(false, Some(100), 100, 0), Verdict::Trash);
    }

    /// A page of distinct chunks: (noted since, marked, protected) each.
    /// Times and grace periods are drawn from small ranges so that notes
    /// exactly at, just inside and just outside the grace are common.
    fn page_strategy() -> impl Strategy<Value = Vec<(Option<u64>, bool, bool)>> {
        proptest::collection::vec(
            (proptest::option::of(0u64..64), any::<bool>(), any::<bool>()),
            0..40,
        )
    }

    /// The page's ids with their notes, the round, and the ids the round
    /// must keep (told by the page, not by the round under test).
    fn setup(page: &[(Option<u64>, bool, bool)]) -> (Vec<(ChunkId, Option<u64>)>, Round, Kept) {
        let mut round = Round::new(1);
        let mut ids = Vec::new();
        let mut kept = HashSet::new();
        for (i, &(since, marked, protected)) in page.iter().enumerate() {
            let id = chunk(i as u32);
            if marked {
                round.mark([id]);
            }
            if protected {
                round.protect([&id]);
            }
            if marked || protected {
                kept.insert(id);
            }
            ids.push((id, since));
        }
        (ids, round, kept)
    }

    type Kept = HashSet<ChunkId>;

    proptest! {
        /// A trashed chunk is neither marked nor protected and was noted
        /// unreferenced at least `grace` seconds before `now`.
        #[test]
        fn gc_trashes_only_unkept_chunks_noted_at_least_grace_ago(
            page in page_strategy(), now in 0u64..128, grace in 0u64..64,
        ) {
            let (ids, round, kept) = setup(&page);
            let out = sweep_page(ids.clone(), &round, now, grace);
            for id in &out.trash {
                let since = ids.iter().find(|(i, _)| i == id).and_then(|(_, s)| *s);
                let Some(t) = since else {
                    return Err(TestCaseError::fail("trashed a chunk never noted"));
                };
                prop_assert!(!kept.contains(id));
                prop_assert!(now.saturating_sub(t) >= grace);
                prop_assert!(grace == 0 || t + grace <= now);
            }
        }

        /// A marked or protected chunk is never trashed nor noted, and its
        /// note is cleared.
        #[test]
        fn gc_never_trashes_nor_notes_a_kept_chunk_and_clears_its_note(
            page in page_strategy(), now in 0u64..128, grace in 0u64..64,
        ) {
            let (ids, round, kept) = setup(&page);
            let out = sweep_page(ids.clone(), &round, now, grace);
            for (id, since) in &ids {
                if kept.contains(id) {
                    prop_assert!(!out.trash.contains(id) && !out.note.contains(id));
                    prop_assert_eq!(out.clear.contains(id), since.is_some());
                } else {
                    prop_assert!(!out.clear.contains(id));
                    prop_assert_eq!(out.note.contains(id), since.is_none());
                }
            }
        }

        /// Every id lands in exactly one outcome.
        #[test]
        fn gc_puts_every_chunk_in_exactly_one_outcome(
            page in page_strategy(), now in 0u64..128, grace in 0u64..64,
        ) {
            let (ids, round, kept) = setup(&page);
            let out = sweep_page(ids.clone(), &round, now, grace);
            let listed: Vec<&ChunkId> = out.clear.iter().chain(&out.note).chain(&out.trash).collect();
            let distinct: HashSet<&ChunkId> = listed.iter().copied().collect();
            prop_assert_eq!(distinct.len(), listed.len(), "one list each");
            prop_assert!(listed.iter().all(|id| ids.iter().any(|(i, _)| i == *id)));
            prop_assert_eq!(listed.len() + out.kept + out.waiting, ids.len());
            let unnoted = ids.iter().filter(|(id, s)| kept.contains(id) && s.is_none()).count();
            prop_assert_eq!(out.kept, unnoted);
        }

        /// Later, more is trashed, never less; notes and clears do not
        /// depend on the time.
        #[test]
        fn gc_is_monotone_in_now(
            page in page_strategy(), now in 0u64..128, later in 0u64..64, grace in 0u64..64,
        ) {
            let (ids, round, _) = setup(&page);
            let early = sweep_page(ids.clone(), &round, now, grace);
            let late = sweep_page(ids.clone(), &round, now + later, grace);
            prop_assert!(early.trash.iter().all(|id| late.trash.contains(id)));
            prop_assert_eq!(&early.note, &late.note);
            prop_assert_eq!(&early.clear, &late.clear);
        }

        /// Against a model: the fence counts every begin, replacement and
        /// end; only the running round's id is accepted.
        #[test]
        fn rounds_follow_their_model(ops in proptest::collection::vec((0u8..3, 0usize..2, 0u64..3), 0..30)) {
            let repos = [RepoId::new("a").unwrap(), RepoId::new("b").unwrap()];
            let mut t = RoundTable::new(9);
            let mut running: [Option<u64>; 2] = [None, None];
            let mut counter = [0u64; 2];
            for (op, r, id) in ops {
                let repo = &repos[r];
                match op {
                    0 => {
                        prop_assert_eq!(t.begin(repo, id), running[r].is_some());
                        counter[r] += 1 + u64::from(running[r].is_some());
                        running[r] = Some(id);
                    }
                    1 => prop_assert_eq!(t.mark(repo, id, [chunk(1)]).is_ok(), running[r] == Some(id)),
                    _ => {
                        let ok = running[r] == Some(id);
                        prop_assert_eq!(t.take(repo, id).is_ok(), ok);
                        if ok {
                            running[r] = None;
                            counter[r] += 1;
                        }
                    }
                }
                for i in 0..2 {
                    prop_assert_eq!(t.fence(&repos[i]), f(9, counter[i], running[i].is_some()));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_moved_fence_changes_the_tag(
            fences in proptest::collection::vec((any::<u64>(), 0u64..1000), 1..6),
            which in any::<prop::sample::Index>(),
            restart in any::<bool>(),
        ) {
            let nodes: Vec<NodeId> = (0..fences.len() as u32).map(NodeId).collect();
            let read = |fs: &[(u64, u64)]| GcFences::new(
                nodes.clone(),
                fs.iter().enumerate().map(|(i, &(b, c))| (NodeId(i as u32), f(b, c, false))).collect(),
            );
            let before = read(&fences).quiet_tag().unwrap();
            let mut moved = fences.clone();
            let i = which.index(moved.len());
            if restart { moved[i].0 = moved[i].0.wrapping_add(1) } else { moved[i].1 += 2 }
            prop_assert_ne!(read(&moved).quiet_tag().unwrap(), before);
        }
    }
}
