//! Routing and failover: which server a request goes to, and in what order
//! the others are tried when it fails.
//!
//! The agent talks to every server directly. A server that fails to
//! answer is marked down ([`Health`]) and routed around for a fixed time
//! (the agent's `DOWN_FOR`, 20 s), so a dead server costs one connect
//! timeout, not one per request. The rules, each a pure function of the
//! cluster map and of which nodes are down:
//!
//! - a blob write goes to its **coordinator**, the first live node in the
//!   blob's placement order ([`ClusterMap::ranked`]): an owner when one is
//!   up, else a node that keeps a hint ([`coordinator_for`]);
//! - a blob read tries the live nodes in placement order
//!   ([`read_order`]), owners first, so the first answer is usually from
//!   the best replica;
//! - a request any server can answer (records, has-queries) goes to the
//!   live servers in map order, rotated by one more on each call so such
//!   requests spread over the cluster ([`records_order`]);
//! - a batch write proceeds in rounds ([`PutRounds`]): each round groups
//!   the blobs still pending by coordinator; a coordinator that does not
//!   answer is marked down by the caller, and its blobs go to the next live
//!   node in the next round. At most nodes + 1 rounds run.
//!
//! Nothing here reads the clock: the caller passes `now` (a
//! [`std::time::Instant`]) and the down test as arguments, and carries the
//! bytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::placement::ClusterMap;
use crate::{ChunkId, NodeId};

/// The nodes that failed lately: a node marked down at `t` is down until
/// `t + down_for` (exclusive), unless marked up before.
///
/// Times are [`Instant`]s the caller reads from its clock and passes in;
/// [`Health`] never reads one itself, so tests drive it with any times.
#[derive(Clone, Debug)]
pub struct Health {
    /// When each node last failed.
    down: HashMap<NodeId, Instant>,
    down_for: Duration,
}

impl Health {
    /// No node down; a failure routes around its node for `down_for`.
    pub fn new(down_for: Duration) -> Self {
        Self {
            down: HashMap::new(),
            down_for,
        }
    }

    /// How long a failure routes around its node.
    pub fn down_for(&self) -> Duration {
        self.down_for
    }

    /// Whether `node` failed less than `down_for` before `now`. A mark in
    /// `now`'s future (a caller's clock is monotonic, so only in tests)
    /// counts as just made.
    pub fn is_down(&self, node: NodeId, now: Instant) -> bool {
        self.down
            .get(&node)
            .is_some_and(|&t| now.saturating_duration_since(t) < self.down_for)
    }

    /// Marks `node` failed at `now`, routing around it until
    /// `now + down_for`. Returns whether it was up until now (the caller
    /// logs only then).
    pub fn mark_down(&mut self, node: NodeId, now: Instant) -> bool {
        let was_down = self.is_down(node, now);
        self.down.insert(node, now);
        !was_down
    }

    /// Ends routing around `node` (it answered again). Returns whether it
    /// carried a mark, current or expired.
    pub fn mark_up(&mut self, node: NodeId) -> bool {
        self.down.remove(&node).is_some()
    }
}

/// The live nodes of `map`, in map order.
pub fn live_nodes(map: &ClusterMap, is_down: impl Fn(NodeId) -> bool) -> Vec<NodeId> {
    map.nodes
        .iter()
        .map(|n| n.id)
        .filter(|&n| !is_down(n))
        .collect()
}

/// Where a request any server can answer (a record, a has-query) goes,
/// first choice first: the live nodes in map order, rotated left by the
/// turn `next_turn` gives, modulo their count. The caller's `next_turn`
/// takes a ticket from a counter that grows by one per request, so
/// successive requests start at successive servers; it is called only when
/// some node is live. Empty when every node is down.
pub fn records_order(
    map: &ClusterMap,
    is_down: impl Fn(NodeId) -> bool,
    next_turn: impl FnOnce() -> usize,
) -> Vec<NodeId> {
    let mut nodes = live_nodes(map, is_down);
    if !nodes.is_empty() {
        let start = next_turn() % nodes.len();
        nodes.rotate_left(start);
    }
    nodes
}

/// The node that coordinates the write of blob `id`: the first live node
/// in its placement order ([`ClusterMap::ranked`]), an owner when one is
/// up, else a node that keeps a hint for the owners. `None` when every
/// node is down.
pub fn coordinator_for(
    map: &ClusterMap,
    id: &ChunkId,
    is_down: impl Fn(NodeId) -> bool,
) -> Option<NodeId> {
    map.ranked(id).into_iter().find(|&n| !is_down(n))
}

/// The nodes a read of blob `id` tries, in order: every node of the map in
/// placement order ([`ClusterMap::ranked`]: the N owners, then the nodes
/// that may hold a hint), skipping those down.
///
/// Lazy: `is_down` is asked about each node only when the iterator reaches
/// it, so a node that failed during an earlier try of the same read is
/// skipped too.
pub fn read_order<F>(
    map: &ClusterMap,
    id: &ChunkId,
    is_down: F,
) -> impl Iterator<Item = NodeId> + use<F>
where
    F: Fn(NodeId) -> bool,
{
    map.ranked(id).into_iter().filter(move |&n| !is_down(n))
}

/// The live nodes among blob `id`'s N owners, in placement order; empty
/// when all are down.
pub fn live_replicas(
    map: &ClusterMap,
    id: &ChunkId,
    is_down: impl Fn(NodeId) -> bool,
) -> Vec<NodeId> {
    let mut nodes = map.ranked(id);
    nodes.truncate(map.replicas as usize);
    nodes.retain(|&n| !is_down(n));
    nodes
}

/// Why a batch write could not place every blob.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PutError {
    /// Every node of the map is down, so blob `chunk` has no coordinator.
    #[error("every replica of chunk {chunk} is down")]
    NoLiveReplica {
        /// The first pending blob found without one.
        chunk: ChunkId,
    },
    /// The rounds ran out with blobs still pending: their coordinators kept
    /// failing (possible only when down marks expire or are lifted during
    /// the write).
    #[error("no replica of chunk {chunk} answered")]
    RoundsExhausted {
        /// The first blob still pending.
        chunk: ChunkId,
    },
}

/// One round of a batch write: per coordinator, the blobs it is sent, in
/// the order they were pending. Coordinators appear in the order of their
/// first blob.
pub type Batches<T> = Vec<(NodeId, Vec<(ChunkId, T)>)>;

/// The retry-set bookkeeping of a batch write, as a state machine. `T` is
/// what travels with each blob id (the agent's sealed bytes).
///
/// Drive it so: [`PutRounds::next_round`] hands out the batches of a round;
/// send them all; for each batch whose coordinator did not answer, mark
/// that node down and give the batch back with [`PutRounds::unreachable`];
/// repeat until `next_round` returns `Ok(None)` (every blob placed) or an
/// error. A coordinator that answered (well or with an error) settles its
/// blobs: what its answer means is the caller's business.
///
/// It ends: `next_round` hands out at most `nodes + 1` rounds, then fails
/// with [`PutError::RoundsExhausted`]. When each unreachable coordinator is
/// marked down for the rest of the write, each round with a retry removes
/// at least one node from the candidates, so the bound is never reached:
/// after `nodes` such rounds none is left and `next_round` fails with
/// [`PutError::NoLiveReplica`].
#[derive(Clone, Debug)]
pub struct PutRounds<T> {
    pending: Vec<(ChunkId, T)>,
    rounds_left: usize,
}

impl<T> PutRounds<T> {
    /// A write of `blobs` to the cluster `map` describes.
    pub fn new(map: &ClusterMap, blobs: Vec<(ChunkId, T)>) -> Self {
        Self {
            pending: blobs,
            rounds_left: map.nodes.len() + 1,
        }
    }

    /// The next round: every pending blob grouped under its coordinator
    /// ([`coordinator_for`], as `is_down` says now); `Ok(None)` when no
    /// blob is pending.
    ///
    /// # Errors
    /// [`PutError::NoLiveReplica`] naming the first pending blob with no
    /// live node (every node is down); [`PutError::RoundsExhausted`] when
    /// blobs are still pending after `nodes + 1` rounds. Either way the
    /// write has failed and nothing is handed out.
    pub fn next_round(
        &mut self,
        map: &ClusterMap,
        is_down: impl Fn(NodeId) -> bool,
    ) -> Result<Option<Batches<T>>, PutError> {
        let Some((first, _)) = self.pending.first() else {
            return Ok(None);
        };
        if self.rounds_left == 0 {
            return Err(PutError::RoundsExhausted { chunk: *first });
        }
        let mut targets = Vec::with_capacity(self.pending.len());
        for (id, _) in &self.pending {
            match coordinator_for(map, id, &is_down) {
                Some(node) => targets.push(node),
                None => return Err(PutError::NoLiveReplica { chunk: *id }),
            }
        }
        self.rounds_left -= 1;
        let mut batches: Batches<T> = Vec::new();
        let mut slot: HashMap<NodeId, usize> = HashMap::new();
        for (blob, node) in self.pending.drain(..).zip(targets) {
            let i = *slot.entry(node).or_insert_with(|| {
                batches.push((node, Vec::new()));
                batches.len() - 1
            });
            batches[i].1.push(blob);
        }
        Ok(Some(batches))
    }

    /// Gives back a batch whose coordinator did not answer (no connection,
    /// a lost connection, a timeout): its blobs are pending again, for the
    /// next round. Mark the coordinator down before asking for that round,
    /// or the same node is chosen again.
    pub fn unreachable(&mut self, batch: Vec<(ChunkId, T)>) {
        self.pending.extend(batch);
    }

    /// Blobs pending (handed back and not yet handed out again).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    const DOWN_FOR: Duration = Duration::from_secs(20);

    fn map(k: u32, n: u32) -> ClusterMap {
        crate::placement::test_map(k, n, n.min(2))
    }

    fn id(seed: u64) -> ChunkId {
        ChunkId(*blake3::hash(&seed.to_le_bytes()).as_bytes())
    }

    fn down_in(set: &BTreeSet<NodeId>) -> impl Fn(NodeId) -> bool + '_ {
        |n| set.contains(&n)
    }

    #[test]
    fn a_down_mark_lasts_down_for_from_the_failure() {
        let t0 = Instant::now();
        let mut h = Health::new(DOWN_FOR);
        let n = NodeId(3);
        assert!(!h.is_down(n, t0));
        assert!(h.mark_down(n, t0), "newly down");
        assert!(h.is_down(n, t0));
        assert!(h.is_down(n, t0 + DOWN_FOR - Duration::from_nanos(1)));
        assert!(!h.is_down(n, t0 + DOWN_FOR), "expired after DOWN_FOR");
        assert!(!h.is_down(NodeId(4), t0), "other nodes are unaffected");
        // Failing again while down extends the mark and is not news.
        let t1 = t0 + Duration::from_secs(10);
        assert!(!h.mark_down(n, t1));
        assert!(h.is_down(n, t0 + DOWN_FOR));
        assert!(!h.is_down(n, t1 + DOWN_FOR));
        // Failing again after expiry is news.
        assert!(h.mark_down(n, t1 + DOWN_FOR));
        // Marking up ends it at once; a second time finds no mark.
        assert!(h.mark_up(n));
        assert!(!h.is_down(n, t1 + DOWN_FOR));
        assert!(!h.mark_up(n));
    }

    #[test]
    fn an_expired_mark_is_still_lifted_by_mark_up() {
        let t0 = Instant::now();
        let mut h = Health::new(DOWN_FOR);
        h.mark_down(NodeId(1), t0);
        assert!(!h.is_down(NodeId(1), t0 + DOWN_FOR * 2));
        assert!(h.mark_up(NodeId(1)), "the mark is still there, expired");
    }

    #[test]
    fn failover_with_one_then_two_servers_down() {
        let m = map(5, 3);
        let chunk = id(7);
        let ranked = m.ranked(&chunk);
        let none = BTreeSet::new();
        assert_eq!(coordinator_for(&m, &chunk, down_in(&none)), Some(ranked[0]));
        assert_eq!(
            read_order(&m, &chunk, down_in(&none)).collect::<Vec<_>>(),
            ranked
        );

        let one: BTreeSet<_> = [ranked[0]].into();
        assert_eq!(coordinator_for(&m, &chunk, down_in(&one)), Some(ranked[1]));
        assert_eq!(
            read_order(&m, &chunk, down_in(&one)).collect::<Vec<_>>(),
            ranked[1..]
        );
        assert_eq!(live_replicas(&m, &chunk, down_in(&one)), ranked[1..3]);

        let two: BTreeSet<_> = [ranked[0], ranked[2]].into();
        assert_eq!(coordinator_for(&m, &chunk, down_in(&two)), Some(ranked[1]));
        assert_eq!(
            read_order(&m, &chunk, down_in(&two)).collect::<Vec<_>>(),
            vec![ranked[1], ranked[3], ranked[4]]
        );
        assert_eq!(live_replicas(&m, &chunk, down_in(&two)), vec![ranked[1]]);

        // All owners down: a hint keeper coordinates, and reads reach it.
        let owners: BTreeSet<_> = ranked[..3].iter().copied().collect();
        assert_eq!(
            coordinator_for(&m, &chunk, down_in(&owners)),
            Some(ranked[3])
        );
        assert!(live_replicas(&m, &chunk, down_in(&owners)).is_empty());

        let all: BTreeSet<_> = ranked.iter().copied().collect();
        assert_eq!(coordinator_for(&m, &chunk, down_in(&all)), None);
        assert_eq!(read_order(&m, &chunk, down_in(&all)).count(), 0);
    }

    #[test]
    fn a_read_skips_a_node_that_failed_during_the_read() {
        let m = map(4, 3);
        let chunk = id(9);
        let ranked = m.ranked(&chunk);
        let failed = std::cell::RefCell::new(BTreeSet::new());
        let mut tried = Vec::new();
        for node in read_order(&m, &chunk, |n| failed.borrow().contains(&n)) {
            tried.push(node);
            if tried.len() == 1 {
                // Trying the first fails the third as well (a shared
                // connection died, say).
                failed.borrow_mut().insert(ranked[2]);
            }
        }
        assert_eq!(tried, vec![ranked[0], ranked[1], ranked[3]]);
    }

    #[test]
    fn records_go_to_live_servers_starting_one_further_each_turn() {
        let m = map(4, 3);
        let none = BTreeSet::new();
        let ids = |v: &[u32]| v.iter().map(|&i| NodeId(i)).collect::<Vec<_>>();
        assert_eq!(records_order(&m, down_in(&none), || 0), ids(&[1, 2, 3, 4]));
        assert_eq!(records_order(&m, down_in(&none), || 1), ids(&[2, 3, 4, 1]));
        assert_eq!(records_order(&m, down_in(&none), || 5), ids(&[2, 3, 4, 1]));
        let down: BTreeSet<_> = [NodeId(2)].into();
        assert_eq!(records_order(&m, down_in(&down), || 0), ids(&[1, 3, 4]));
        assert_eq!(records_order(&m, down_in(&down), || 1), ids(&[3, 4, 1]));
        assert_eq!(records_order(&m, down_in(&down), || 2), ids(&[4, 1, 3]));
        assert_eq!(live_nodes(&m, down_in(&down)), ids(&[1, 3, 4]));
        // With every node down no turn is taken: the counter stays.
        let all: BTreeSet<_> = (1..=4).map(NodeId).collect();
        let taken = std::cell::Cell::new(false);
        assert!(
            records_order(&m, down_in(&all), || {
                taken.set(true);
                3
            })
            .is_empty()
        );
        assert!(!taken.get());
    }

    #[test]
    fn a_put_fails_over_to_the_next_replica_and_ends() {
        let m = map(3, 2);
        let blobs: Vec<(ChunkId, u32)> = (0..20).map(|i| (id(i), i as u32)).collect();
        let mut down = BTreeSet::new();
        let mut put = PutRounds::new(&m, blobs.clone());
        // Round 1: everything goes to first owners; node 1 does not answer.
        let round = put.next_round(&m, down_in(&down)).unwrap().unwrap();
        let sent: usize = round.iter().map(|(_, b)| b.len()).sum();
        assert_eq!(sent, 20);
        for (node, batch) in round {
            for (id, _) in &batch {
                assert_eq!(m.ranked(id)[0], node);
            }
            if node == NodeId(1) {
                down.insert(node);
                put.unreachable(batch);
            }
        }
        // Round 2: node 1's blobs go to their next node.
        let retried = put.pending();
        let round = put.next_round(&m, down_in(&down)).unwrap().unwrap();
        assert_eq!(round.iter().map(|(_, b)| b.len()).sum::<usize>(), retried);
        for (node, batch) in &round {
            assert_ne!(*node, NodeId(1));
            for (id, _) in batch {
                assert_eq!(m.ranked(id)[0], NodeId(1));
                assert_eq!(m.ranked(id)[1], *node);
            }
        }
        assert_eq!(put.next_round(&m, down_in(&down)), Ok(None));
    }

    #[test]
    fn a_put_with_every_node_down_names_the_first_blob() {
        let m = map(3, 2);
        let all: BTreeSet<_> = (1..=3).map(NodeId).collect();
        let mut put = PutRounds::new(&m, vec![(id(1), ()), (id(2), ())]);
        assert_eq!(
            put.next_round(&m, down_in(&all)),
            Err(PutError::NoLiveReplica { chunk: id(1) })
        );
        let mut empty = PutRounds::<()>::new(&m, vec![]);
        assert_eq!(empty.next_round(&m, down_in(&all)), Ok(None));
    }

    #[test]
    fn a_put_whose_retries_never_stop_failing_runs_out_of_rounds() {
        // Down marks that do not stick (they expire at once): every round
        // picks the same coordinator, which never answers.
        let m = map(3, 2);
        let none = BTreeSet::new();
        let mut put = PutRounds::new(&m, vec![(id(1), ())]);
        let mut rounds = 0;
        let end = loop {
            match put.next_round(&m, down_in(&none)) {
                Ok(Some(batches)) => {
                    rounds += 1;
                    for (_, b) in batches {
                        put.unreachable(b);
                    }
                }
                other => break other,
            }
        };
        assert_eq!(rounds, 4, "nodes + 1 rounds");
        assert_eq!(end, Err(PutError::RoundsExhausted { chunk: id(1) }));
    }

    fn cluster() -> impl Strategy<Value = (ClusterMap, BTreeSet<NodeId>)> {
        (1u32..9, 1u32..4).prop_flat_map(|(k, n)| {
            let n = n.min(k);
            (
                Just(map(k, n)),
                proptest::collection::btree_set((1..=k).prop_map(NodeId), 0..=k as usize),
            )
        })
    }

    proptest! {
        #[test]
        fn a_coordinator_is_never_down_while_a_live_node_exists(
            (m, down) in cluster(), seed in any::<u64>()
        ) {
            for s in 0..20 {
                let chunk = id(seed ^ s);
                match coordinator_for(&m, &chunk, down_in(&down)) {
                    Some(c) => {
                        prop_assert!(!down.contains(&c));
                        // And it is the first live one in placement order.
                        let ranked = m.ranked(&chunk);
                        let first = ranked.iter().position(|&n| n == c).unwrap();
                        prop_assert!(ranked[..first].iter().all(|n| down.contains(n)));
                        // An owner whenever one is live.
                        let owners = &ranked[..m.replicas as usize];
                        if owners.iter().any(|n| !down.contains(n)) {
                            prop_assert!(owners.contains(&c));
                        }
                    }
                    None => prop_assert!(m.nodes.iter().all(|n| down.contains(&n.id))),
                }
            }
        }

        #[test]
        fn the_read_order_is_the_live_part_of_the_placement_order(
            (m, down) in cluster(), seed in any::<u64>()
        ) {
            for s in 0..20 {
                let chunk = id(seed ^ s);
                let ranked = m.ranked(&chunk);
                let order: Vec<NodeId> = read_order(&m, &chunk, down_in(&down)).collect();
                // No node twice.
                let set: BTreeSet<NodeId> = order.iter().copied().collect();
                prop_assert_eq!(set.len(), order.len());
                // None lost: with the nodes skipped as down, a permutation
                // of all the nodes.
                let skipped: BTreeSet<NodeId> =
                    ranked.iter().copied().filter(|n| !set.contains(n)).collect();
                prop_assert!(skipped.iter().all(|n| down.contains(n)));
                prop_assert!(order.iter().all(|n| !down.contains(n)));
                prop_assert_eq!(order.len() + skipped.len(), m.nodes.len());
                // In placement order.
                let expected: Vec<NodeId> =
                    ranked.iter().copied().filter(|n| !down.contains(n)).collect();
                prop_assert_eq!(&order, &expected);
                // The coordinator of a write is the first node a read tries.
                prop_assert_eq!(order.first().copied(), coordinator_for(&m, &chunk, down_in(&down)));
                // With nothing down, exactly placement order.
                let none = BTreeSet::new();
                prop_assert_eq!(read_order(&m, &chunk, down_in(&none)).collect::<Vec<_>>(), ranked);
            }
        }

        #[test]
        fn records_go_to_every_live_server_once(
            (m, down) in cluster(), turn in any::<usize>()
        ) {
            let order = records_order(&m, down_in(&down), || turn);
            let live = live_nodes(&m, down_in(&down));
            let mut sorted = order.clone();
            sorted.sort();
            let mut expected = live.clone();
            expected.sort();
            prop_assert_eq!(sorted, expected);
            if !live.is_empty() {
                prop_assert_eq!(order[0], live[turn % live.len()]);
            }
        }

        #[test]
        fn a_put_places_each_blob_once_and_ends_within_nodes_plus_one_rounds(
            (m, down) in cluster(),
            failing in proptest::collection::btree_set(1u32..9, 0..9),
            count in 0u64..40,
            seed in any::<u64>(),
        ) {
            // A model of the agent: a failing node does not answer, and is
            // then marked down (as the connection pool does).
            let failing: BTreeSet<NodeId> = failing.into_iter().map(NodeId).collect();
            let mut down = down;
            let blobs: Vec<(ChunkId, u64)> = (0..count).map(|i| (id(seed ^ i), i)).collect();
            let mut put = PutRounds::new(&m, blobs.clone());
            let mut placed: Vec<u64> = Vec::new();
            let mut rounds = 0;
            let mut live_before = usize::MAX;
            let end = loop {
                let live = m.nodes.len() - down.len();
                // Each round that left blobs to retry removed at least one
                // candidate.
                if rounds > 0 && put.pending() > 0 {
                    prop_assert!(live < live_before);
                }
                live_before = live;
                match put.next_round(&m, down_in(&down)) {
                    Ok(Some(batches)) => {
                        rounds += 1;
                        prop_assert!(rounds <= m.nodes.len() + 1);
                        let mut seen = BTreeSet::new();
                        for (node, batch) in batches {
                            prop_assert!(seen.insert(node), "one batch per coordinator");
                            prop_assert!(!down.contains(&node));
                            prop_assert!(!batch.is_empty());
                            for (id, _) in &batch {
                                prop_assert_eq!(Some(node), coordinator_for(&m, id, down_in(&down)));
                            }
                            if failing.contains(&node) {
                                down.insert(node);
                                put.unreachable(batch);
                            } else {
                                placed.extend(batch.into_iter().map(|(_, v)| v));
                            }
                        }
                    }
                    other => break other,
                }
            };
            let reachable = m.nodes.iter().any(|n| !down.contains(&n.id) && !failing.contains(&n.id));
            match end {
                Ok(None) => {
                    placed.sort();
                    prop_assert_eq!(placed, (0..count).collect::<Vec<_>>());
                }
                Err(PutError::NoLiveReplica { .. }) => prop_assert!(!reachable),
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
                Ok(Some(_)) => unreachable!(),
            }
        }

        #[test]
        fn a_put_ends_even_when_down_marks_do_not_stick(
            (m, _) in cluster(), count in 1u64..20, seed in any::<u64>(), flips in any::<u64>()
        ) {
            // Every coordinator fails, and whether a node counts as down
            // changes arbitrarily from round to round.
            let mut put = PutRounds::new(&m, (0..count).map(|i| (id(seed ^ i), ())).collect());
            let mut rounds = 0u32;
            loop {
                let bits = flips.rotate_left(rounds * 7);
                let down = |n: NodeId| (bits >> (n.0 % 64)) & 1 == 1;
                match put.next_round(&m, down) {
                    Ok(Some(batches)) => {
                        rounds += 1;
                        for (_, b) in batches {
                            put.unreachable(b);
                        }
                    }
                    Ok(None) => prop_assert!(false, "nothing was placed"),
                    Err(_) => break,
                }
            }
            prop_assert!(rounds as usize <= m.nodes.len() + 1);
            prop_assert_eq!(put.pending(), count as usize);
        }
    }
}
