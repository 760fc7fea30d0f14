//! The decisions of a replicated write and of a has-query, without I/O.
//!
//! A coordinator stores each blob of a write on its N owners and answers
//! once every blob has W durable copies. A write meant for an owner that is
//! down or fails goes to the next node in placement order, which keeps it
//! as a hint and hands it to the owner later: Dynamo's sloppy quorum and
//! hinted handoff (DeCandia et al., "Dynamo: Amazon's Highly Available
//! Key-value Store", SOSP 2007, section 4.6). While blobs move after a map
//! change, the previous owners get a copy too.
//!
//! [`WritePlan`] decides, round by round, which node gets which blob and
//! when the write has its quorum; [`HolderCount`] decides whom a has-query
//! asks and how the answers add up. The chunk server's async shell
//! (`chunkserver/src/replicate.rs`) only sends what they say, awaits the
//! answers and feeds them back. Which nodes are down comes in as an
//! argument; nothing here reads a clock.
//!
//! Invariant of both: an answer is counted once per (node, blob) pair, so
//! every count is a count of distinct nodes.

use std::collections::{HashMap, HashSet};

use crate::{ChunkId, NodeId};

/// Why a [`Batch`] is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// One of a blob's N placements: its owner's copy, or a stand-in's
    /// (a node further along the ring holding it as a hint for an owner
    /// that is down or failed). Counts toward W and toward N.
    Placement,
    /// An extra copy for a previous owner while blobs move after a map
    /// change. Counts toward W, but not toward N: it never stands in for
    /// a current owner's copy.
    Previous,
}

/// One request of a round: `node` is to store the blobs at `blobs`
/// (positions in the write's items, ascending, each at most once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The node to write to.
    pub node: NodeId,
    /// Positions of the blobs in the write, ascending.
    pub blobs: Vec<usize>,
    /// Whether these copies are placements or extra copies for previous
    /// owners.
    pub role: Role,
}

/// What one round of a write sends: every batch, to be sent concurrently,
/// and then each recorded with [`WritePlan::record`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    /// 0 for the first round; a later round retries what failed.
    pub number: usize,
    /// Placements first (in the order their nodes were first picked), then
    /// the copies for previous owners (first round only). One node may get
    /// one batch of each role.
    pub batches: Vec<Batch>,
    /// How many of the placements go to a stand-in, a node past the N
    /// owners in placement order (hinted handoff).
    pub hints: usize,
}

/// A [`WritePlan::record`] that does not match a batch the plan sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The blob was not sent to this node in the current round, or its
    /// answer was already recorded. Nothing of the batch was counted.
    #[error("blob {blob} was not sent to {node} in this round, or was already recorded")]
    NotPending {
        /// The node the answer is from.
        node: NodeId,
        /// The blob's position in the write.
        blob: usize,
    },
}

/// The plan of one sloppy-quorum write of many blobs (see the module
/// docs): which node gets which blob in each round, and when the write
/// has its quorum.
///
/// Per blob, the candidates are all nodes in placement order, owners
/// first. Each round, a blob that still lacks placements takes the next
/// candidates that are not down and were not tried for it, as many as it
/// lacks. A node is tried at most once per blob, whatever the outcome, so
/// a failed node is never retried and each copy counted is a distinct
/// node's. The first round also sends the blob to each previous owner.
///
/// Use: [`WritePlan::new`], then repeatedly [`WritePlan::next_round`],
/// send its batches, and [`WritePlan::record`] each outcome, until
/// `next_round` returns `None`. Answer the client when `record` returns
/// `true` (or, if it never does, when the plan ends) with
/// [`WritePlan::copies`].
#[derive(Clone, Debug)]
pub struct WritePlan {
    /// N: placements wanted per blob.
    n: usize,
    /// W: durable copies per blob before the write is acknowledged.
    w: u32,
    /// Per blob: every node in placement order, owners first.
    ranked: Vec<Vec<NodeId>>,
    /// Per blob: the position in `ranked` of the next candidate.
    next: Vec<usize>,
    /// Per blob: placements still lacking.
    wanted: Vec<usize>,
    /// Copies for previous owners, sent in the first round only.
    previous: Vec<Batch>,
    /// (node, blob) pairs sent or skipped for good: no blob goes to one
    /// node twice.
    tried: HashSet<(NodeId, usize)>,
    /// Per blob: durable copies acknowledged.
    copies: Vec<u32>,
    /// Sent in the current round and not yet recorded.
    pending: HashSet<(NodeId, usize, Role)>,
    /// Rounds issued so far.
    rounds: usize,
    /// Most rounds: one more than the longest candidate list.
    max_rounds: usize,
    /// Whether `record` has reported the quorum.
    answered: bool,
    /// Whether `next_round` has returned `None`.
    ended: bool,
}

impl WritePlan {
    /// A plan for a write of `ranked.len()` blobs.
    ///
    /// - `ranked[i]`: every node of the (effective) map in placement order
    ///   for blob `i`, its N owners first ([`crate::placement::ClusterMap::ranked`]).
    /// - `n`: N, placements wanted per blob (the effective map's replicas).
    /// - `w`: W, durable copies per blob for the write to be acknowledged.
    /// - `previous[i]`: blob `i`'s owners under the previous epoch that are
    ///   not owners now, while blobs move after a map change; a missing
    ///   entry means none. They get a copy in the first round whether they
    ///   are down or not, and are never picked as placements for that blob.
    pub fn new(ranked: Vec<Vec<NodeId>>, n: usize, w: u32, previous: Vec<Vec<NodeId>>) -> Self {
        let blobs = ranked.len();
        let mut tried = HashSet::new();
        let mut previous_batches: Vec<Batch> = Vec::new();
        let mut slot: HashMap<NodeId, usize> = HashMap::new();
        for (i, olds) in previous.iter().enumerate().take(blobs) {
            for &old in olds {
                if !tried.insert((old, i)) {
                    continue;
                }
                let k = *slot.entry(old).or_insert_with(|| {
                    previous_batches.push(Batch {
                        node: old,
                        blobs: Vec::new(),
                        role: Role::Previous,
                    });
                    previous_batches.len() - 1
                });
                previous_batches[k].blobs.push(i);
            }
        }
        let max_rounds = ranked.iter().map(Vec::len).max().unwrap_or(0) + 1;
        Self {
            n,
            w,
            ranked,
            next: vec![0; blobs],
            wanted: vec![n; blobs],
            previous: previous_batches,
            tried,
            copies: vec![0; blobs],
            pending: HashSet::new(),
            rounds: 0,
            max_rounds,
            answered: false,
            ended: false,
        }
    }

    /// The next round to send, or `None` when the write is over: every
    /// blob has its N placements, no candidate is left to try, or the
    /// round bound (one more round than there are nodes) is reached.
    /// `is_down(node)` says whether a node is routed around now; a down
    /// candidate is skipped for good.
    ///
    /// Call it once every batch of the previous round is recorded: a batch
    /// not recorded by then counts as failed.
    pub fn next_round(&mut self, mut is_down: impl FnMut(NodeId) -> bool) -> Option<Round> {
        if self.ended
            || self.rounds >= self.max_rounds
            || (self.rounds > 0 && self.wanted.iter().all(|&w| w == 0))
        {
            self.ended = true;
            return None;
        }
        self.pending.clear();
        let mut batches: Vec<Batch> = Vec::new();
        let mut slot: HashMap<NodeId, usize> = HashMap::new();
        let mut hints = 0;
        for (i, cands) in self.ranked.iter().enumerate() {
            let mut picked = 0;
            while picked < self.wanted[i] && self.next[i] < cands.len() {
                let c = cands[self.next[i]];
                self.next[i] += 1;
                if is_down(c) || !self.tried.insert((c, i)) {
                    continue;
                }
                if self.next[i] > self.n {
                    hints += 1;
                }
                let k = *slot.entry(c).or_insert_with(|| {
                    batches.push(Batch {
                        node: c,
                        blobs: Vec::new(),
                        role: Role::Placement,
                    });
                    batches.len() - 1
                });
                batches[k].blobs.push(i);
                picked += 1;
            }
        }
        batches.append(&mut self.previous);
        if batches.is_empty() {
            self.ended = true;
            return None;
        }
        for b in &batches {
            for &i in &b.blobs {
                self.pending.insert((b.node, i, b.role));
            }
        }
        let number = self.rounds;
        self.rounds += 1;
        Some(Round {
            number,
            batches,
            hints,
        })
    }

    /// Records the outcome of `batch` of the current round: `ok` when the
    /// node stored every blob of it durably. Returns `true` exactly once:
    /// when this acknowledgement gives every blob W copies, the moment to
    /// answer the client.
    ///
    /// # Errors
    /// [`PlanError::NotPending`] when a blob of `batch` was not sent to
    /// that node in this round or was already recorded; then nothing of
    /// the batch is counted.
    pub fn record(&mut self, batch: &Batch, ok: bool) -> Result<bool, PlanError> {
        let mut seen = HashSet::new();
        for &i in &batch.blobs {
            if !seen.insert(i) || !self.pending.contains(&(batch.node, i, batch.role)) {
                return Err(PlanError::NotPending {
                    node: batch.node,
                    blob: i,
                });
            }
        }
        for &i in &batch.blobs {
            self.pending.remove(&(batch.node, i, batch.role));
        }
        if !ok {
            return Ok(false);
        }
        for &i in &batch.blobs {
            self.copies[i] += 1;
            if batch.role == Role::Placement {
                self.wanted[i] = self.wanted[i].saturating_sub(1);
            }
        }
        if !self.answered && self.has_quorum() {
            self.answered = true;
            return Ok(true);
        }
        Ok(false)
    }

    /// Durable copies acknowledged so far per blob (placements and copies
    /// for previous owners), in the write's order: the coordinator's answer.
    pub fn copies(&self) -> &[u32] {
        &self.copies
    }

    /// Whether every blob has W acknowledged copies.
    pub fn has_quorum(&self) -> bool {
        self.copies.iter().all(|&c| c >= self.w)
    }

    /// The first blob that lacks placements, and how many it lacks: after
    /// the plan ends, what repair will have to add.
    pub fn first_short(&self) -> Option<(usize, usize)> {
        self.wanted
            .iter()
            .position(|&w| w > 0)
            .map(|i| (i, self.wanted[i]))
    }
}

/// One has-query of a [`HolderCount`]: ask `node` about the ids at `idxs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The node to ask.
    pub node: NodeId,
    /// Positions in the queried ids, ascending.
    pub idxs: Vec<usize>,
}

/// A has-answer a [`HolderCount`] cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CountError {
    /// No such ask.
    #[error("no ask {0} in this count")]
    NoAsk(usize),
    /// This ask was already answered.
    #[error("ask {ask} (to {node}) was already answered")]
    Twice {
        /// The ask's position in [`HolderCount::asks`].
        ask: usize,
        /// The node asked.
        node: NodeId,
    },
    /// The answer has not one flag per id asked; it is not counted.
    #[error("{node} answered {answered} flags for {asked} ids")]
    Length {
        /// The node asked.
        node: NodeId,
        /// Ids asked.
        asked: usize,
        /// Flags answered.
        answered: usize,
    },
}

/// How many of the nodes asked hold each id: groups the ids by the nodes
/// to ask (one batched query per node), then adds up the answers. A node
/// that is down, or does not answer, adds nothing.
#[derive(Clone, Debug)]
pub struct HolderCount {
    asks: Vec<Ask>,
    answered: Vec<bool>,
    counts: Vec<u32>,
}

impl HolderCount {
    /// A count over `ids`: `nodes(id)` lists the nodes to ask about `id`
    /// (its owners for a has-query, every node for a copies count; a node
    /// listed twice is asked once), minus those `is_down` says are routed
    /// around. Asks are in the order their nodes first appear.
    pub fn new(
        ids: &[ChunkId],
        mut nodes: impl FnMut(&ChunkId) -> Vec<NodeId>,
        mut is_down: impl FnMut(NodeId) -> bool,
    ) -> Self {
        let mut asks: Vec<Ask> = Vec::new();
        let mut slot: HashMap<NodeId, Option<usize>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            for node in nodes(id) {
                let k = *slot.entry(node).or_insert_with(|| {
                    if is_down(node) {
                        return None;
                    }
                    asks.push(Ask {
                        node,
                        idxs: Vec::new(),
                    });
                    Some(asks.len() - 1)
                });
                if let Some(k) = k
                    && asks[k].idxs.last() != Some(&i)
                {
                    asks[k].idxs.push(i);
                }
            }
        }
        Self {
            answered: vec![false; asks.len()],
            asks,
            counts: vec![0; ids.len()],
        }
    }

    /// The queries to send, one per node.
    pub fn asks(&self) -> &[Ask] {
        &self.asks
    }

    /// Adds the answer to ask `ask`: `present[j]` whether the node holds
    /// the id at `asks()[ask].idxs[j]`. Do not call for a node that did not
    /// answer.
    ///
    /// # Errors
    /// [`CountError`] for an unknown ask, a second answer to one, or an
    /// answer of the wrong length; none of it is counted.
    pub fn record(&mut self, ask: usize, present: &[bool]) -> Result<(), CountError> {
        let a = self.asks.get(ask).ok_or(CountError::NoAsk(ask))?;
        if self.answered[ask] {
            return Err(CountError::Twice { ask, node: a.node });
        }
        if present.len() != a.idxs.len() {
            return Err(CountError::Length {
                node: a.node,
                asked: a.idxs.len(),
                answered: present.len(),
            });
        }
        self.answered[ask] = true;
        for (&i, &p) in a.idxs.iter().zip(present) {
            self.counts[i] += u32::from(p);
        }
        Ok(())
    }

    /// Holders found per id, in the queried order.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// The counts, consumed.
    pub fn into_counts(self) -> Vec<u32> {
        self.counts
    }

    /// Per id, whether at least `w` holders answered that they hold it:
    /// a has-query's answer.
    pub fn present(&self, w: u32) -> Vec<bool> {
        self.counts.iter().map(|&c| c >= w).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::placement::ClusterMap;
    use proptest::prelude::*;

    use crate::placement::test_map as map;

    fn id(i: u64) -> ChunkId {
        ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    /// Drives `plan` to its end as the shell does: `fails(node, round)`
    /// decides each batch's outcome. Returns the rounds sent and how many
    /// times `record` reported the quorum.
    fn drive(
        plan: &mut WritePlan,
        down: &BTreeSet<NodeId>,
        fails: impl Fn(NodeId, usize) -> bool,
    ) -> (Vec<Round>, usize) {
        let mut rounds = Vec::new();
        let mut reported = 0;
        // Far above any bound the plan promises: a plan that does not end
        // fails the termination property instead of hanging the test.
        for _ in 0..1000 {
            let Some(round) = plan.next_round(|n| down.contains(&n)) else {
                return (rounds, reported);
            };
            for b in &round.batches {
                let ok = !fails(b.node, round.number);
                if plan.record(b, ok).unwrap() {
                    reported += 1;
                }
            }
            rounds.push(round);
        }
        panic!("the plan did not end within 1000 rounds");
    }

    fn targets(round: &Round, role: Role) -> BTreeSet<NodeId> {
        round
            .batches
            .iter()
            .filter(|b| b.role == role)
            .map(|b| b.node)
            .collect()
    }

    #[test]
    fn with_every_owner_up_the_first_round_writes_the_n_owners() {
        let m = map(5, 3, 2);
        let ids: Vec<ChunkId> = (0..20).map(id).collect();
        let mut plan = WritePlan::new(ids.iter().map(|i| m.ranked(i)).collect(), 3, 2, vec![]);
        let round = plan.next_round(|_| false).unwrap();
        assert_eq!(round.number, 0);
        assert_eq!(round.hints, 0);
        for (i, chunk) in ids.iter().enumerate() {
            let got: BTreeSet<NodeId> = round
                .batches
                .iter()
                .filter(|b| b.blobs.contains(&i))
                .map(|b| b.node)
                .collect();
            assert_eq!(got, m.replicas(chunk).into_iter().collect());
        }
        let mut reported = 0;
        for b in &round.batches {
            reported += usize::from(plan.record(b, true).unwrap());
        }
        assert_eq!(reported, 1);
        assert_eq!(plan.copies(), &[3; 20][..]);
        assert!(plan.next_round(|_| false).is_none());
        assert_eq!(plan.first_short(), None);
    }

    #[test]
    fn hinted_handoff_when_an_owner_is_down_writes_the_next_node_in_placement_order() {
        let m = map(5, 3, 2);
        let chunk = id(7);
        let ranked = m.ranked(&chunk);
        let down = ranked[1];
        let mut plan = WritePlan::new(vec![ranked.clone()], 3, 2, vec![]);
        let round = plan.next_round(|n| n == down).unwrap();
        // The two owners that are up, and the first node past the owners
        // standing in for the one that is down.
        let expected: BTreeSet<NodeId> = [ranked[0], ranked[2], ranked[3]].into();
        assert_eq!(targets(&round, Role::Placement), expected);
        assert_eq!(round.hints, 1);
        for b in &round.batches {
            plan.record(b, true).unwrap();
        }
        assert_eq!(plan.copies(), &[3]);
        assert!(plan.has_quorum());
        assert!(plan.next_round(|_| false).is_none());
    }

    #[test]
    fn a_failed_owner_is_replaced_in_the_next_round_and_never_retried() {
        let m = map(5, 3, 3);
        let chunk = id(3);
        let ranked = m.ranked(&chunk);
        let mut plan = WritePlan::new(vec![ranked.clone()], 3, 3, vec![]);
        let first = plan.next_round(|_| false).unwrap();
        let mut reported = false;
        for b in &first.batches {
            reported |= plan.record(b, b.node != ranked[0]).unwrap();
        }
        assert!(!reported);
        assert_eq!(plan.copies(), &[2]);
        let second = plan.next_round(|_| false).unwrap();
        assert_eq!(second.number, 1);
        assert_eq!(targets(&second, Role::Placement), [ranked[3]].into());
        assert_eq!(second.hints, 1);
        assert!(plan.record(&second.batches[0], true).unwrap());
        assert!(plan.next_round(|_| false).is_none());
    }

    #[test]
    fn writes_go_to_old_and_new_owners_during_a_move() {
        // Node 5 joins a cluster of four: for some partitions it becomes an
        // owner and one of the old owners is an owner no more.
        let (before, after) = (map(4, 3, 2), map(5, 3, 2));
        let chunk = (0..1000)
            .map(id)
            .find(|c| before.replicas(c) != after.replicas(c))
            .unwrap();
        let now = after.replicas(&chunk);
        let old: Vec<NodeId> = before
            .replicas(&chunk)
            .into_iter()
            .filter(|n| !now.contains(n))
            .collect();
        assert!(!old.is_empty());
        let mut plan = WritePlan::new(vec![after.ranked(&chunk)], 3, 2, vec![old.clone()]);
        let round = plan.next_round(|_| false).unwrap();
        assert_eq!(
            targets(&round, Role::Placement),
            now.iter().copied().collect()
        );
        assert_eq!(
            targets(&round, Role::Previous),
            old.iter().copied().collect()
        );
        for b in &round.batches {
            plan.record(b, true).unwrap();
        }
        // The old owners' copies count toward W, not toward N.
        assert_eq!(plan.copies(), &[3 + old.len() as u32]);
        assert_eq!(plan.first_short(), None);
    }

    #[test]
    fn a_copy_for_a_previous_owner_does_not_stand_in_for_a_new_owner() {
        let m = map(5, 3, 2);
        let chunk = id(11);
        let ranked = m.ranked(&chunk);
        let old = ranked[3];
        let mut plan = WritePlan::new(vec![ranked.clone()], 3, 2, vec![vec![old]]);
        let first = plan.next_round(|_| false).unwrap();
        for b in &first.batches {
            plan.record(b, b.node != ranked[0]).unwrap();
        }
        // ranked[3] would be the stand-in, but it already has the copy for
        // the previous owner: the hint goes to ranked[4].
        let second = plan.next_round(|_| false).unwrap();
        assert_eq!(targets(&second, Role::Placement), [ranked[4]].into());
        assert!(targets(&second, Role::Previous).is_empty());
    }

    #[test]
    fn a_write_with_too_few_nodes_ends_short_and_says_what_is_missing() {
        let m = map(3, 3, 2);
        let chunk = id(1);
        let ranked = m.ranked(&chunk);
        let mut plan = WritePlan::new(vec![ranked.clone()], 3, 2, vec![]);
        let down: BTreeSet<NodeId> = [ranked[0], ranked[1]].into();
        let (rounds, reported) = drive(&mut plan, &down, |_, _| false);
        assert_eq!(rounds.len(), 1);
        assert_eq!(reported, 0);
        assert!(!plan.has_quorum());
        assert_eq!(plan.copies(), &[1]);
        assert_eq!(plan.first_short(), Some((0, 2)));
    }

    #[test]
    fn a_record_the_plan_did_not_send_is_refused_and_not_counted() {
        let m = map(4, 3, 2);
        let mut plan = WritePlan::new(vec![m.ranked(&id(1))], 3, 2, vec![]);
        let round = plan.next_round(|_| false).unwrap();
        let b = round.batches[0].clone();
        assert_eq!(plan.record(&b, true), Ok(false));
        assert!(matches!(
            plan.record(&b, true),
            Err(PlanError::NotPending { .. })
        ));
        let stranger = Batch {
            node: NodeId(99),
            ..b.clone()
        };
        assert!(plan.record(&stranger, true).is_err());
        let doubled = Batch {
            blobs: vec![0, 0],
            ..round.batches[1].clone()
        };
        assert!(plan.record(&doubled, true).is_err());
        assert_eq!(plan.copies(), &[1]);
    }

    #[test]
    fn has_counts_add_up_one_answer_per_node() {
        let m = map(5, 3, 2);
        let ids: Vec<ChunkId> = (0..30).map(id).collect();
        let down = NodeId(2);
        let mut count = HolderCount::new(&ids, |c| m.replicas(c), |n| n == down);
        assert!(count.asks().iter().all(|a| a.node != down));
        let asked: usize = count.asks().iter().map(|a| a.idxs.len()).sum();
        let expected: usize = ids
            .iter()
            .map(|c| m.replicas(c).iter().filter(|&&n| n != down).count())
            .sum();
        assert_eq!(asked, expected);
        // Node 1 holds everything, node 3 nothing, the rest do not answer.
        for k in 0..count.asks().len() {
            let a = count.asks()[k].clone();
            match a.node {
                NodeId(1) => count.record(k, &vec![true; a.idxs.len()]).unwrap(),
                NodeId(3) => count.record(k, &vec![false; a.idxs.len()]).unwrap(),
                _ => {}
            }
        }
        for (i, c) in ids.iter().enumerate() {
            let expect = u32::from(m.replicas(c).contains(&NodeId(1)));
            assert_eq!(count.counts()[i], expect);
        }
        assert_eq!(
            count.present(1),
            count.counts().iter().map(|&c| c >= 1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_has_answer_of_the_wrong_length_or_given_twice_is_not_counted() {
        let ids: Vec<ChunkId> = (0..3).map(id).collect();
        let mut count = HolderCount::new(&ids, |_| vec![NodeId(1), NodeId(1)], |_| false);
        assert_eq!(count.asks().len(), 1);
        assert_eq!(count.asks()[0].idxs, vec![0, 1, 2]);
        assert!(matches!(
            count.record(0, &[true]),
            Err(CountError::Length { .. })
        ));
        count.record(0, &[true, false, true]).unwrap();
        assert!(matches!(
            count.record(0, &[true, true, true]),
            Err(CountError::Twice { .. })
        ));
        assert_eq!(count.record(1, &[]), Err(CountError::NoAsk(1)));
        assert_eq!(count.into_counts(), vec![1, 0, 1]);
    }

    /// A write over `blobs` ids on a `k`-node map with N = `n`, W = `w`;
    /// `previous` picks, per blob, non-owners as previous owners.
    fn setup(
        k: u32,
        n: u32,
        w: u32,
        blobs: usize,
        seed: u64,
        previous_bits: u64,
    ) -> (ClusterMap, Vec<Vec<NodeId>>, Vec<Vec<NodeId>>) {
        let m = map(k, n, w);
        let ranked: Vec<Vec<NodeId>> = (0..blobs as u64).map(|i| m.ranked(&id(seed ^ i))).collect();
        let previous = ranked
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r[n as usize..]
                    .iter()
                    .copied()
                    .filter(|node| previous_bits >> ((node.0 as usize + i) % 64) & 1 == 1)
                    .collect()
            })
            .collect();
        (m, ranked, previous)
    }

    prop_compose! {
        fn cluster()(k in 1u32..9)(
            k in Just(k),
            n in 1..=k,
            w_pick in any::<prop::sample::Index>(),
            blobs in 0usize..12,
            seed in any::<u64>(),
            previous_bits in any::<u64>(),
            down_bits in any::<u64>(),
            fail_bits in any::<u64>(),
        ) -> (u32, u32, u32, usize, u64, u64, u64, u64) {
            let w = 1 + w_pick.index(n as usize) as u32;
            (k, n, w, blobs, seed, previous_bits, down_bits, fail_bits)
        }
    }

    fn fails(bits: u64) -> impl Fn(NodeId, usize) -> bool {
        move |node, round| bits >> ((node.0 as usize * 5 + round) % 64) & 1 == 1
    }

    fn down_set(k: u32, bits: u64) -> BTreeSet<NodeId> {
        (1..=k)
            .map(NodeId)
            .filter(|n| bits >> n.0 & 1 == 1)
            .collect()
    }

    /// The loop `place_copies` ran before the plan was taken out of it
    /// (chunkserver/src/replicate.rs, synchronous, writes decided by
    /// `fails`): per round, the (node, blobs, counts-toward-N) sends, and
    /// the final copies per blob.
    #[allow(clippy::type_complexity)]
    fn old_place_copies(
        ranked: &[Vec<NodeId>],
        n: usize,
        previous: &[Vec<NodeId>],
        down: &BTreeSet<NodeId>,
        fails: impl Fn(NodeId, usize) -> bool,
    ) -> (Vec<BTreeSet<(NodeId, Vec<usize>, bool)>>, Vec<u32>, usize) {
        let nodes = ranked.first().map_or(0, Vec::len);
        let mut next = vec![0usize; ranked.len()];
        let mut wanted = vec![n; ranked.len()];
        let mut extra: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
        for (i, olds) in previous.iter().enumerate() {
            for &old in olds {
                extra.entry(old).or_default().push(i);
            }
        }
        let mut tried: HashSet<(NodeId, usize)> = extra
            .iter()
            .flat_map(|(n, idxs)| idxs.iter().map(move |&i| (*n, i)))
            .collect();
        let mut copies = vec![0u32; ranked.len()];
        let mut rounds = Vec::new();
        let mut hints = 0;
        for round in 0..=nodes {
            let bonus = std::mem::take(&mut extra);
            let mut targets: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
            for (i, cands) in ranked.iter().enumerate() {
                let mut picked = 0;
                while picked < wanted[i] && next[i] < cands.len() {
                    let c = cands[next[i]];
                    next[i] += 1;
                    if down.contains(&c) || !tried.insert((c, i)) {
                        continue;
                    }
                    if next[i] > n {
                        hints += 1;
                    }
                    targets.entry(c).or_default().push(i);
                    picked += 1;
                }
            }
            if targets.is_empty() && bonus.is_empty() {
                break;
            }
            let sent: BTreeSet<(NodeId, Vec<usize>, bool)> = targets
                .into_iter()
                .map(|(t, idxs)| (t, idxs, true))
                .chain(bonus.into_iter().map(|(t, idxs)| (t, idxs, false)))
                .collect();
            for (target, idxs, counts) in &sent {
                if !fails(*target, round) {
                    for &i in idxs {
                        copies[i] += 1;
                        if *counts {
                            wanted[i] = wanted[i].saturating_sub(1);
                        }
                    }
                }
            }
            rounds.push(sent);
            if wanted.iter().all(|&w| w == 0) {
                break;
            }
        }
        (rounds, copies, hints)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The plan sends, round by round, exactly what the loop in the
        /// chunk server sent before it was moved here, and ends with the
        /// same copies.
        #[test]
        fn the_plan_sends_what_the_old_loop_sent(c in cluster()) {
            let (k, n, w, blobs, seed, previous_bits, down_bits, fail_bits) = c;
            let (_, ranked, previous) = setup(k, n, w, blobs, seed, previous_bits);
            let down = down_set(k, down_bits);
            let (old_rounds, old_copies, old_hints) =
                old_place_copies(&ranked, n as usize, &previous, &down, fails(fail_bits));
            let mut plan = WritePlan::new(ranked, n as usize, w, previous);
            let (rounds, _) = drive(&mut plan, &down, fails(fail_bits));
            let new_rounds: Vec<BTreeSet<(NodeId, Vec<usize>, bool)>> = rounds
                .iter()
                .map(|r| r.batches.iter().map(|b| (b.node, b.blobs.clone(), b.role == Role::Placement)).collect())
                .collect();
            prop_assert_eq!(new_rounds, old_rounds);
            prop_assert_eq!(plan.copies(), &old_copies[..]);
            prop_assert_eq!(rounds.iter().map(|r| r.hints).sum::<usize>(), old_hints);
        }

        /// No blob is ever sent to one node twice, in any role or round.
        #[test]
        fn never_two_copies_on_one_node(c in cluster()) {
            let (k, n, w, blobs, seed, previous_bits, down_bits, fail_bits) = c;
            let (_, ranked, previous) = setup(k, n, w, blobs, seed, previous_bits);
            let mut plan = WritePlan::new(ranked, n as usize, w, previous);
            let (rounds, _) = drive(&mut plan, &down_set(k, down_bits), fails(fail_bits));
            let mut seen = HashSet::new();
            for r in &rounds {
                for b in &r.batches {
                    for &i in &b.blobs {
                        prop_assert!(seen.insert((b.node, i)), "blob {} sent to {} twice", i, b.node);
                    }
                }
            }
        }

        /// A blob's count is the number of distinct nodes that acknowledged
        /// it durably, and the write reports its quorum (once) iff every
        /// blob has W of them.
        #[test]
        fn quorum_iff_w_distinct_nodes_acknowledged(c in cluster()) {
            let (k, n, w, blobs, seed, previous_bits, down_bits, fail_bits) = c;
            let (_, ranked, previous) = setup(k, n, w, blobs, seed, previous_bits);
            let mut plan = WritePlan::new(ranked, n as usize, w, previous);
            let fail = fails(fail_bits);
            let (rounds, reported) = drive(&mut plan, &down_set(k, down_bits), &fail);
            let mut acked: Vec<BTreeSet<NodeId>> = vec![BTreeSet::new(); blobs];
            for r in &rounds {
                for b in r.batches.iter().filter(|b| !fail(b.node, r.number)) {
                    for &i in &b.blobs {
                        acked[i].insert(b.node);
                    }
                }
            }
            let counts: Vec<u32> = acked.iter().map(|a| a.len() as u32).collect();
            prop_assert_eq!(plan.copies(), &counts[..]);
            let quorum = acked.iter().all(|a| a.len() >= w as usize);
            prop_assert_eq!(plan.has_quorum(), quorum);
            // An empty write has nothing to acknowledge: it is answered at
            // the plan's end, not by a record.
            prop_assert_eq!(reported, usize::from(quorum && blobs > 0));
        }

        /// A previous owner only ever gets its extra copy, never a
        /// placement of that blob; only placements count toward N, and at
        /// most N of them are acknowledged per blob.
        #[test]
        fn previous_owners_never_stand_in_for_a_new_owner(c in cluster()) {
            let (k, n, w, blobs, seed, previous_bits, down_bits, fail_bits) = c;
            let (_, ranked, previous) = setup(k, n, w, blobs, seed, previous_bits);
            let mut plan = WritePlan::new(ranked.clone(), n as usize, w, previous.clone());
            let fail = fails(fail_bits);
            let (rounds, _) = drive(&mut plan, &down_set(k, down_bits), &fail);
            let mut placed = vec![0usize; blobs];
            for r in &rounds {
                for b in &r.batches {
                    for &i in &b.blobs {
                        match b.role {
                            Role::Placement => {
                                prop_assert!(!previous[i].contains(&b.node));
                                if !fail(b.node, r.number) {
                                    placed[i] += 1;
                                }
                            }
                            Role::Previous => {
                                prop_assert_eq!(r.number, 0);
                                prop_assert!(previous[i].contains(&b.node));
                            }
                        }
                    }
                }
            }
            prop_assert!(placed.iter().all(|&p| p <= n as usize));
            let short = placed
                .iter()
                .position(|&p| p < n as usize)
                .map(|i| (i, n as usize - placed[i]));
            prop_assert_eq!(plan.first_short(), short);
        }

        /// The plan ends within one round more than there are nodes; every
        /// round sends something, and only (node, blob) pairs never sent
        /// before, so each round strictly progresses. Once it has ended it
        /// stays ended.
        #[test]
        fn the_plan_ends_within_nodes_plus_one_rounds(c in cluster()) {
            let (k, n, w, blobs, seed, previous_bits, down_bits, fail_bits) = c;
            let (_, ranked, previous) = setup(k, n, w, blobs, seed, previous_bits);
            let mut plan = WritePlan::new(ranked, n as usize, w, previous);
            let (rounds, _) = drive(&mut plan, &down_set(k, down_bits), fails(fail_bits));
            prop_assert!(rounds.len() <= k as usize + 1);
            let mut sent = HashSet::new();
            for (j, r) in rounds.iter().enumerate() {
                prop_assert_eq!(r.number, j);
                let pairs: Vec<(NodeId, usize)> = r
                    .batches
                    .iter()
                    .flat_map(|b| b.blobs.iter().map(move |&i| (b.node, i)))
                    .collect();
                let new = pairs.into_iter().filter(|p| sent.insert(*p)).count();
                prop_assert!(new > 0, "round {} sent nothing new", j);
            }
            prop_assert!(plan.next_round(|_| false).is_none());
        }

        /// A has-count asks each node once, about each id at most once, and
        /// counts one per holder that answered.
        #[test]
        fn has_counts_are_counts_of_distinct_answering_holders(
            k in 1u32..9,
            n_pick in any::<prop::sample::Index>(),
            count in 0usize..40,
            seed in any::<u64>(),
            down_bits in any::<u64>(),
            answer_bits in any::<u64>(),
            hold_bits in any::<u64>(),
        ) {
            let n = 1 + n_pick.index(k as usize) as u32;
            let m = map(k, n, 1);
            let ids: Vec<ChunkId> = (0..count as u64).map(|i| id(seed ^ i)).collect();
            let down = down_set(k, down_bits);
            let answers = |node: NodeId| answer_bits >> node.0 & 1 == 1;
            let holds = |node: NodeId, i: usize| hold_bits >> ((node.0 as usize * 7 + i) % 64) & 1 == 1;
            let mut hc = HolderCount::new(&ids, |c| m.replicas(c), |x| down.contains(&x));
            let nodes: Vec<NodeId> = hc.asks().iter().map(|a| a.node).collect();
            prop_assert_eq!(nodes.iter().collect::<BTreeSet<_>>().len(), nodes.len());
            for k in 0..hc.asks().len() {
                let a = hc.asks()[k].clone();
                prop_assert!(!down.contains(&a.node));
                prop_assert!(a.idxs.windows(2).all(|p| p[0] < p[1]));
                if answers(a.node) {
                    let present: Vec<bool> = a.idxs.iter().map(|&i| holds(a.node, i)).collect();
                    hc.record(k, &present).unwrap();
                }
            }
            for (i, c) in ids.iter().enumerate() {
                let expect = m
                    .replicas(c)
                    .into_iter()
                    .filter(|&x| !down.contains(&x) && answers(x) && holds(x, i))
                    .count() as u32;
                prop_assert_eq!(hc.counts()[i], expect);
            }
        }
    }
}
