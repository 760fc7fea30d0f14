//! The decisions of anti-entropy repair between co-owners of partitions:
//! which buckets and partitions differ, which blobs this server lacks and
//! from whom, and in which order to pull them. The chunk server's
//! maintenance task carries the digests, listings and blobs to and from
//! these functions.
//!
//! The exchange, with one peer that owns some partitions with this server:
//!
//! 1. Both sides' set digests of the shared partitions, folded into
//!    [`DIGEST_BUCKETS`] buckets by the top byte of the partition (one round
//!    trip when in sync): [`in_differing_buckets`].
//! 2. Per-partition digests for the partitions of the buckets that differ:
//!    [`differing_partitions`].
//! 3. The peer's key listing of each partition that differs, filtered to
//!    what this server neither holds nor has trashed: [`lacking`].
//! 4. Over all peers, a [`PullPlan`] collects each lacking blob with the
//!    peers that hold it, and orders the pulls fewest holders first: a
//!    blob one peer holds is closest to loss.
//!
//! A set digest is the XOR of the BLAKE3 hashes of the keys in the set, so
//! it is kept up to date incrementally and does not depend on order; equal
//! sets have equal digests. This is the Merkle-style summary exchange of
//! Dynamo (DeCandia et al., "Dynamo: Amazon's Highly Available Key-value
//! Store", SOSP 2007, section 4.7) and Cassandra's repair, flattened to two
//! levels (buckets, partitions) over the store's incremental digests.

use std::collections::BTreeMap;

use crate::wire::DIGEST_BUCKETS;
use crate::{ChunkId, NodeId, RepoId};

/// A set digest of 32 bytes: the XOR of the BLAKE3 hashes of the keys of a
/// partition, or of the partitions of a bucket.
pub type Digest = [u8; 32];

/// Digests that cannot be compared.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RepairError {
    /// The two sides gave a different number of digests than asked for.
    #[error("{ours} digests here and {theirs} from the peer, where {expected} were expected")]
    DigestCount {
        /// Digests expected from each side.
        expected: usize,
        /// Digests this server gave.
        ours: usize,
        /// Digests the peer gave.
        theirs: usize,
    },
}

/// The bucket of `partition` in a bucket digest: its top 8 bits, so a
/// value below [`DIGEST_BUCKETS`].
pub fn bucket(partition: u16) -> usize {
    usize::from(partition >> 8)
}

/// The partitions of `parts` whose bucket digests differ between this
/// server (`ours`) and a peer (`theirs`), in the order of `parts`. Both
/// digest lists hold [`DIGEST_BUCKETS`] buckets, indexed by [`bucket`].
///
/// # Errors
/// [`RepairError::DigestCount`] when either list has another length.
pub fn in_differing_buckets(
    parts: &[u16],
    ours: &[Digest],
    theirs: &[Digest],
) -> Result<Vec<u16>, RepairError> {
    check_count(DIGEST_BUCKETS, ours, theirs)?;
    Ok(parts
        .iter()
        .copied()
        .filter(|&p| ours[bucket(p)] != theirs[bucket(p)])
        .collect())
}

/// The partitions of `parts` whose per-partition digests differ between
/// this server (`ours`) and a peer (`theirs`), in the order of `parts`.
/// The digests are one per partition of `parts`, in that order (a digest
/// request answers in ascending partition order, so `parts` must be
/// ascending and without repeats).
///
/// # Errors
/// [`RepairError::DigestCount`] when either list's length is not that of
/// `parts`.
pub fn differing_partitions(
    parts: &[u16],
    ours: &[Digest],
    theirs: &[Digest],
) -> Result<Vec<u16>, RepairError> {
    check_count(parts.len(), ours, theirs)?;
    Ok(parts
        .iter()
        .zip(ours.iter().zip(theirs))
        .filter(|(_, (o, t))| o != t)
        .map(|(p, _)| *p)
        .collect())
}

fn check_count(expected: usize, ours: &[Digest], theirs: &[Digest]) -> Result<(), RepairError> {
    if ours.len() == expected && theirs.len() == expected {
        return Ok(());
    }
    Err(RepairError::DigestCount {
        expected,
        ours: ours.len(),
        theirs: theirs.len(),
    })
}

/// The ids of `ids` (a peer's keys of one repository) that this server
/// lacks: `held[i]` says it holds `ids[i]`, `trashed[i]` that it has it in
/// its trash. A trashed blob is not pulled back from a co-owner that has
/// not swept yet. Ids past the end of either answer are left out.
pub fn lacking(ids: Vec<ChunkId>, held: &[bool], trashed: &[bool]) -> Vec<ChunkId> {
    ids.into_iter()
        .zip(held.iter().zip(trashed))
        .filter(|(_, (h, t))| !**h && !**t)
        .map(|(id, _)| id)
        .collect()
}

/// One blob to pull and the peers that hold it, in the order they were
/// added to the [`PullPlan`]: fetch from the first that hands out a good
/// copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pull {
    /// Repository.
    pub repo: RepoId,
    /// The blob's chunk id.
    pub id: ChunkId,
    /// Peers that listed it.
    pub holders: Vec<NodeId>,
}

/// The blobs one repair round pulls, collected peer by peer.
///
/// Call [`PullPlan::add`] with each peer's [`lacking`] keys, asking each
/// peer for at most [`PullPlan::room`] keys, then [`PullPlan::into_pulls`].
#[derive(Clone, Debug, Default)]
pub struct PullPlan {
    want: BTreeMap<(RepoId, ChunkId), Vec<NodeId>>,
    limit: usize,
}

impl PullPlan {
    /// An empty plan for at most `limit` blobs (bounding a round's memory;
    /// the next round continues).
    pub fn new(limit: usize) -> Self {
        Self {
            want: BTreeMap::new(),
            limit,
        }
    }

    /// Blobs the plan holds.
    pub fn len(&self) -> usize {
        self.want.len()
    }

    /// Whether the plan holds no blob.
    pub fn is_empty(&self) -> bool {
        self.want.is_empty()
    }

    /// How many more keys the next peer may be asked for: the limit less
    /// the blobs held, 0 when full.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.want.len())
    }

    /// Records that `peer` holds `keys`, which this server lacks.
    pub fn add(&mut self, peer: NodeId, keys: impl IntoIterator<Item = (RepoId, ChunkId)>) {
        for k in keys {
            self.want.entry(k).or_default().push(peer);
        }
    }

    /// The pulls, fewest holders first (a blob one peer holds is closer to
    /// loss); among blobs with as many holders, in (repository, id) order.
    pub fn into_pulls(self) -> Vec<Pull> {
        let mut pulls: Vec<Pull> = self
            .want
            .into_iter()
            .map(|((repo, id), holders)| Pull { repo, id, holders })
            .collect();
        // Stable: ties keep the map's (repository, id) order.
        pulls.sort_by_key(|p| p.holders.len());
        pulls
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    type Key = (RepoId, ChunkId);

    fn repo(name: &str) -> RepoId {
        RepoId::new(name).unwrap()
    }

    /// A chunk id in `partition`, told apart by `n`.
    fn id_in(partition: u16, n: u8) -> ChunkId {
        let mut b = [n; 32];
        b[..2].copy_from_slice(&partition.to_be_bytes());
        ChunkId(b)
    }

    #[test]
    fn repair_pulls_the_fewest_copies_chunks_first() {
        let r = repo("r");
        let (common, rare, lone) = (id_in(1, 1), id_in(2, 2), id_in(3, 3));
        let mut plan = PullPlan::new(100);
        plan.add(NodeId(1), [(r.clone(), common), (r.clone(), rare)]);
        plan.add(NodeId(2), [(r.clone(), common), (r.clone(), rare)]);
        plan.add(NodeId(3), [(r.clone(), common), (r.clone(), lone)]);
        let order: Vec<(ChunkId, Vec<NodeId>)> = plan
            .into_pulls()
            .into_iter()
            .map(|p| (p.id, p.holders))
            .collect();
        assert_eq!(
            order,
            vec![
                (lone, vec![NodeId(3)]),
                (rare, vec![NodeId(1), NodeId(2)]),
                (common, vec![NodeId(1), NodeId(2), NodeId(3)]),
            ]
        );
    }

    #[test]
    fn ties_go_in_key_order_and_room_shrinks_to_zero() {
        let (a, b) = (repo("a"), repo("b"));
        let mut plan = PullPlan::new(3);
        assert_eq!(plan.room(), 3);
        plan.add(
            NodeId(7),
            [(b.clone(), id_in(0, 1)), (a.clone(), id_in(9, 9))],
        );
        plan.add(NodeId(8), [(a.clone(), id_in(0, 2))]);
        assert_eq!((plan.len(), plan.room()), (3, 0));
        plan.add(NodeId(9), [(a.clone(), id_in(0, 3))]);
        assert_eq!(plan.room(), 0, "never below zero");
        let keys: Vec<Key> = plan
            .into_pulls()
            .into_iter()
            .map(|p| (p.repo, p.id))
            .collect();
        assert_eq!(
            keys,
            vec![
                (a.clone(), id_in(0, 2)),
                (a.clone(), id_in(0, 3)),
                (a, id_in(9, 9)),
                (b, id_in(0, 1)),
            ]
        );
    }

    #[test]
    fn digest_lists_of_the_wrong_length_are_an_error() {
        let d = vec![[0u8; 32]; DIGEST_BUCKETS];
        let short = vec![[0u8; 32]; 3];
        assert_eq!(
            in_differing_buckets(&[1], &d, &short),
            Err(RepairError::DigestCount {
                expected: DIGEST_BUCKETS,
                ours: DIGEST_BUCKETS,
                theirs: 3
            })
        );
        assert!(differing_partitions(&[1, 2], &short, &short).is_err());
        assert_eq!(differing_partitions(&[1, 2, 3], &short, &short), Ok(vec![]));
    }

    #[test]
    fn lacking_skips_held_and_trashed_blobs() {
        let ids: Vec<ChunkId> = (0..4).map(|n| id_in(0, n)).collect();
        let got = lacking(
            ids.clone(),
            &[true, false, false, true],
            &[false, true, false, true],
        );
        assert_eq!(got, vec![ids[2]]);
        assert_eq!(lacking(ids, &[false], &[false, false]), vec![id_in(0, 0)]);
    }

    // The model below stands for two stores and the shell between them:
    // set digests as the store keeps them (XOR of BLAKE3 of each key), the
    // exchange as `maintenance::anti_entropy` runs it.

    fn key_hash((repo, id): &Key) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(repo.as_str().as_bytes());
        h.update(&id.0);
        *h.finalize().as_bytes()
    }

    fn xor(acc: &mut Digest, x: &Digest) {
        for (a, b) in acc.iter_mut().zip(x) {
            *a ^= b;
        }
    }

    fn partition_digests(keys: &BTreeSet<Key>, parts: &[u16]) -> Vec<Digest> {
        parts
            .iter()
            .map(|&p| {
                let mut d = [0u8; 32];
                for k in keys.iter().filter(|k| k.1.partition() == p) {
                    xor(&mut d, &key_hash(k));
                }
                d
            })
            .collect()
    }

    fn bucket_digests(keys: &BTreeSet<Key>, parts: &[u16]) -> Vec<Digest> {
        let mut buckets = vec![[0u8; 32]; DIGEST_BUCKETS];
        for (p, d) in parts.iter().zip(partition_digests(keys, parts)) {
            // Folded by the top byte, as the store and the wire define
            // buckets (not through `bucket`, which is under test).
            xor(&mut buckets[usize::from(*p >> 8)], &d);
        }
        buckets
    }

    /// One repair round: this server holds `ours` and has `trashed` in its
    /// trash; each peer holds its set; all share `parts`.
    fn repair_round(
        ours: &BTreeSet<Key>,
        trashed: &BTreeSet<Key>,
        peers: &[(NodeId, BTreeSet<Key>)],
        parts: &[u16],
        limit: usize,
    ) -> Vec<Pull> {
        let mut plan = PullPlan::new(limit);
        for (peer, theirs) in peers {
            if plan.room() == 0 {
                continue;
            }
            let room = plan.room();
            let candidates = in_differing_buckets(
                parts,
                &bucket_digests(ours, parts),
                &bucket_digests(theirs, parts),
            )
            .unwrap();
            let differing = differing_partitions(
                &candidates,
                &partition_digests(ours, &candidates),
                &partition_digests(theirs, &candidates),
            )
            .unwrap();
            let mut out = Vec::new();
            for p in differing {
                for (r, ids) in group(theirs.iter().filter(|k| k.1.partition() == p)) {
                    let held: Vec<bool> = ids
                        .iter()
                        .map(|id| ours.contains(&(r.clone(), *id)))
                        .collect();
                    let gone: Vec<bool> = ids
                        .iter()
                        .map(|id| trashed.contains(&(r.clone(), *id)))
                        .collect();
                    out.extend(
                        lacking(ids, &held, &gone)
                            .into_iter()
                            .map(|id| (r.clone(), id)),
                    );
                }
                if out.len() >= room {
                    out.truncate(room);
                    break;
                }
            }
            plan.add(*peer, out);
        }
        plan.into_pulls()
    }

    fn group<'a>(keys: impl Iterator<Item = &'a Key>) -> BTreeMap<RepoId, Vec<ChunkId>> {
        let mut g: BTreeMap<RepoId, Vec<ChunkId>> = BTreeMap::new();
        for (r, id) in keys {
            g.entry(r.clone()).or_default().push(*id);
        }
        g
    }

    /// Partitions spread over three buckets, two sharing one.
    const PARTS: [u16; 4] = [0x0001, 0x0002, 0x0100, 0xff07];

    /// A small universe of keys, so that sets overlap often.
    fn universe() -> Vec<Key> {
        let mut u = Vec::new();
        for r in ["a", "b"] {
            for &p in &PARTS {
                for n in 0..4 {
                    u.push((repo(r), id_in(p, n)));
                }
            }
        }
        u
    }

    fn subset(u: &[Key], bits: u64) -> BTreeSet<Key> {
        u.iter()
            .enumerate()
            .filter(|(i, _)| bits >> i & 1 == 1)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// This server's keys, its trash, and each peer's keys.
    type World = (BTreeSet<Key>, BTreeSet<Key>, Vec<(NodeId, BTreeSet<Key>)>);

    fn world() -> impl Strategy<Value = World> {
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u64>(), 0..5),
        )
            .prop_map(|(ours, trashed, peers)| {
                let u = universe();
                let ours = subset(&u, ours);
                let trashed = subset(&u, trashed);
                let peers = peers
                    .into_iter()
                    .enumerate()
                    .map(|(i, bits)| (NodeId(i as u32 + 1), subset(&u, bits)))
                    .collect();
                (ours, trashed, peers)
            })
    }

    proptest! {
        /// With room for everything, the pulls are exactly the keys some
        /// peer holds that this server neither holds nor trashed, each with
        /// exactly the peers that hold it.
        #[test]
        fn repair_pulls_exactly_the_set_difference((ours, trashed, peers) in world()) {
            let pulls = repair_round(&ours, &trashed, &peers, &PARTS, usize::MAX);
            let expected: BTreeSet<Key> = peers
                .iter()
                .flat_map(|(_, s)| s.iter().cloned())
                .filter(|k| !ours.contains(k) && !trashed.contains(k))
                .collect();
            let got: Vec<Key> = pulls.iter().map(|p| (p.repo.clone(), p.id)).collect();
            prop_assert_eq!(got.len(), expected.len(), "no key twice");
            prop_assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
            for p in &pulls {
                let key = (p.repo.clone(), p.id);
                let holding: Vec<NodeId> = peers
                    .iter()
                    .filter(|(_, s)| s.contains(&key))
                    .map(|(n, _)| *n)
                    .collect();
                prop_assert_eq!(&p.holders, &holding);
            }
        }

        /// Whatever the limit, pulls go fewest holders first, every holder
        /// named holds the blob, and nothing held here or held by nobody
        /// is pulled.
        #[test]
        fn repair_pulls_fewest_holders_first_from_peers_that_hold_them(
            (ours, trashed, peers) in world(),
            limit in 0usize..40,
        ) {
            let pulls = repair_round(&ours, &trashed, &peers, &PARTS, limit);
            prop_assert!(pulls.len() <= limit);
            for pair in pulls.windows(2) {
                prop_assert!(pair[0].holders.len() <= pair[1].holders.len());
            }
            for p in &pulls {
                let key = (p.repo.clone(), p.id);
                prop_assert!(!ours.contains(&key) && !trashed.contains(&key));
                prop_assert!(!p.holders.is_empty());
                let distinct: HashSet<&NodeId> = p.holders.iter().collect();
                prop_assert_eq!(distinct.len(), p.holders.len());
                for h in &p.holders {
                    let held = peers.iter().any(|(n, s)| n == h && s.contains(&key));
                    prop_assert!(held, "{:?} does not hold {:?}", h, key);
                }
            }
        }

        /// A peer whose digests equal ours, bucket or partition, yields
        /// nothing to compare or pull.
        #[test]
        fn equal_digests_mean_nothing_to_pull(
            digests in proptest::collection::vec(any::<[u8; 32]>(), DIGEST_BUCKETS),
            parts in proptest::collection::btree_set(any::<u16>(), 0..64),
            (ours, trashed, _) in world(),
        ) {
            let parts: Vec<u16> = parts.into_iter().collect();
            prop_assert!(in_differing_buckets(&parts, &digests, &digests).unwrap().is_empty());
            let per = &digests[..parts.len()];
            prop_assert!(differing_partitions(&parts, per, per).unwrap().is_empty());
            let same = [(NodeId(1), ours.clone()), (NodeId(2), ours.clone())];
            prop_assert!(repair_round(&ours, &trashed, &same, &PARTS, usize::MAX).is_empty());
        }
    }
}
