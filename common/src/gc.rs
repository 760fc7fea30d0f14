//! The garbage-collection fence as a backup sees it: every server's
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

use crate::NodeId;
use crate::wire::GcFence;

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
