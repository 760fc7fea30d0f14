//! The cluster map and placement of chunks on nodes.
//!
//! Placement is weighted rendezvous hashing (Thaler and Ravishankar, "Using
//! Name-Based Mappings to Increase Hit Rates", IEEE/ACM ToN 1998; the
//! weighted form `-w / ln(u)` from Schindelhauer and Schomaker, "Weighted
//! Distributed Hash Tables", SPAA 2005) over 2^16 partitions keyed by the
//! first two bytes of the [`ChunkId`]. Every node scores every partition; the
//! N best, preferring distinct zones, hold it, best first. When a node joins,
//! only the partitions it now wins move, about N/(k+1) of them; nothing else
//! changes. Partitions are the unit of repair, rebalancing and GC.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{ChunkId, NodeId};

/// One node as listed in the cluster map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeInfo {
    /// The node's id, unique in the map.
    pub id: NodeId,
    /// `host:port` of its QUIC endpoint.
    pub address: String,
    /// Relative capacity (1 to 1000); a node of weight 2 gets twice the data.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failure domain; replicas prefer distinct zones.
    #[serde(default)]
    pub zone: String,
}

fn default_weight() -> u32 {
    1
}

/// The cluster map: the nodes, the replication settings and an epoch that
/// grows with every change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterMap {
    /// Version of this map; a larger epoch replaces a smaller one.
    pub epoch: u64,
    /// N: copies kept of every chunk.
    pub replicas: u32,
    /// W: durable copies before a write is acknowledged.
    pub write_quorum: u32,
    /// SHA-256 fingerprints ([`crate::tls::fingerprint`], lowercase hex) of
    /// revoked certificates: servers refuse every request made with one.
    #[serde(default)]
    pub revoked: Vec<String>,
    /// The nodes.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeInfo>,
}

/// A cluster map that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    /// No nodes at all.
    #[error("the cluster map lists no nodes")]
    Empty,
    /// A revoked fingerprint is not 64 lowercase hex digits.
    #[error("revoked fingerprint {0:?} is not a SHA-256 in lowercase hex (64 digits)")]
    Fingerprint(String),
    /// Two nodes share an id.
    #[error("node id {0} appears twice in the cluster map")]
    DuplicateNode(NodeId),
    /// W or N out of range.
    #[error("need 1 <= write-quorum ({w}) <= replicas ({n}) <= nodes ({nodes})")]
    Quorum {
        /// W
        w: u32,
        /// N
        n: u32,
        /// node count
        nodes: usize,
    },
    /// A weight outside 1..=1000.
    #[error("node {0} has weight {1}; weights are 1 to 1000")]
    Weight(NodeId, u32),
}

impl ClusterMap {
    /// Checks the map's invariants.
    ///
    /// # Errors
    /// The first [`MapError`] found.
    pub fn validate(&self) -> Result<(), MapError> {
        if self.nodes.is_empty() {
            return Err(MapError::Empty);
        }
        let mut seen = BTreeSet::new();
        for n in &self.nodes {
            if !seen.insert(n.id) {
                return Err(MapError::DuplicateNode(n.id));
            }
            if !(1..=1000).contains(&n.weight) {
                return Err(MapError::Weight(n.id, n.weight));
            }
        }
        if let Some(bad) = self.revoked.iter().find(|f| {
            f.len() != 64
                || !f
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }) {
            return Err(MapError::Fingerprint(bad.clone()));
        }
        let (w, n) = (self.write_quorum, self.replicas);
        if w == 0 || w > n || n as usize > self.nodes.len() {
            return Err(MapError::Quorum {
                w,
                n,
                nodes: self.nodes.len(),
            });
        }
        Ok(())
    }

    /// Whether the certificate with this [`crate::tls::fingerprint`] is
    /// revoked.
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        self.revoked.iter().any(|f| f == fingerprint)
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// `host:port` of node `id`.
    pub fn address(&self, id: NodeId) -> Option<&str> {
        self.node(id).map(|n| n.address.as_str())
    }

    /// For each node, the positions in `ids` of the chunks it is a replica
    /// of: how a coordinator fans one batched request out to the replicas.
    pub fn group_by_replica<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a ChunkId>,
    ) -> std::collections::HashMap<NodeId, Vec<usize>> {
        let mut groups: std::collections::HashMap<NodeId, Vec<usize>> = Default::default();
        for (i, id) in ids.into_iter().enumerate() {
            for node in self.replicas(id) {
                groups.entry(node).or_default().push(i);
            }
        }
        groups
    }

    /// The N nodes holding `id`, best first.
    pub fn replicas(&self, id: &ChunkId) -> Vec<NodeId> {
        place(&self.nodes, id.partition(), self.replicas as usize)
    }

    /// All nodes in placement order for `id` (replicas first, then the rest:
    /// where a read or a handed-off write goes next).
    pub fn ranked(&self, id: &ChunkId) -> Vec<NodeId> {
        place(&self.nodes, id.partition(), self.nodes.len())
    }

    /// This map without the nodes in `out` (nodes treated as failed for
    /// good): where chunks live while they are gone. N shrinks when fewer
    /// than N nodes remain. The epoch is unchanged; it is a view, not a map.
    pub fn without(&self, out: &BTreeSet<NodeId>) -> ClusterMap {
        let nodes: Vec<NodeInfo> = self
            .nodes
            .iter()
            .filter(|n| !out.contains(&n.id))
            .cloned()
            .collect();
        ClusterMap {
            epoch: self.epoch,
            replicas: self.replicas.min(nodes.len() as u32),
            write_quorum: self.write_quorum,
            revoked: self.revoked.clone(),
            nodes,
        }
    }

    /// The owners of every partition, best first: entry `p` is
    /// [`place`]`(nodes, p, N)`. 2^16 entries; computing it costs about
    /// 2^16 × nodes hashes (a few ms for tens of nodes).
    pub fn owner_table(&self) -> Vec<Vec<NodeId>> {
        (0..=u16::MAX)
            .map(|p| place(&self.nodes, p, self.replicas as usize))
            .collect()
    }

    /// What a map change promises (two maps with equal digests are equal):
    /// BLAKE3, in key-derivation mode with the context
    /// "ringvault cluster map digest v1", of the map's postcard encoding
    /// (the wire's, whose format is specified and fixed in postcard 1.x:
    /// fields in declaration order, integers as varints, strings and
    /// sequences length-prefixed). Not of its TOML: a different `toml`
    /// release may write the same map as other text, and servers on two
    /// releases during a rolling upgrade would then refuse each other's
    /// map changes.
    pub fn digest(&self) -> [u8; 32] {
        // Invariant: postcard serialization of plain data into a Vec
        // cannot fail.
        let bytes = postcard::to_allocvec(self).expect("map serializes");
        blake3::derive_key("ringvault cluster map digest v1", &bytes)
    }
}

/// The `n` nodes that hold `partition`, best first, preferring distinct
/// zones; fewer when there are fewer nodes.
pub fn place(nodes: &[NodeInfo], partition: u16, n: usize) -> Vec<NodeId> {
    let mut scored: Vec<(f64, &NodeInfo)> = nodes
        .iter()
        .map(|node| (score(node, partition), node))
        .collect();
    // Highest score first; ties broken by id so placement is a pure function.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
    let mut chosen: Vec<NodeId> = Vec::with_capacity(n);
    let mut zones: BTreeSet<&str> = BTreeSet::new();
    for (_, node) in &scored {
        if chosen.len() == n {
            break;
        }
        if zones.insert(node.zone.as_str()) {
            chosen.push(node.id);
        }
    }
    for (_, node) in &scored {
        if chosen.len() == n {
            break;
        }
        if !chosen.contains(&node.id) {
            chosen.push(node.id);
        }
    }
    chosen
}

/// Weighted rendezvous score of `node` for `partition`: `w / -ln(u)` with
/// `u` uniform in (0, 1) from a hash of (node, partition).
fn score(node: &NodeInfo, partition: u16) -> f64 {
    let h = mix64((u64::from(node.id.0) << 32) ^ u64::from(partition) ^ 0x5bd1_e995_0000_0000);
    // 53 random bits, shifted into (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(node.weight) / -u.ln()
}

/// SplitMix64's finalizer (Steele, Lea and Flood, "Fast Splittable
/// Pseudorandom Number Generators", OOPSLA 2014): a bijective 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A map of `k` nodes (ids 1..=k, equal weight, one zone, addresses
/// 127.0.0.1:7001...) with N = `n` and W = `w`, for tests.
#[cfg(test)]
pub(crate) fn test_map(k: u32, n: u32, w: u32) -> ClusterMap {
    ClusterMap {
        epoch: 1,
        replicas: n,
        write_quorum: w,
        revoked: Vec::new(),
        nodes: (1..=k)
            .map(|i| NodeInfo {
                id: NodeId(i),
                address: format!("127.0.0.1:{}", 7000 + i),
                weight: 1,
                zone: String::new(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(k: u32, n: u32) -> ClusterMap {
        test_map(k, n, n.min(2))
    }

    fn ids(count: usize, seed: u64) -> Vec<ChunkId> {
        (0..count as u64)
            .map(|i| {
                ChunkId(
                    *blake3::hash(&(seed ^ i.wrapping_mul(0x9e37_79b9)).to_le_bytes()).as_bytes(),
                )
            })
            .collect()
    }

    #[test]
    fn balanced_over_100k_ids_on_3_to_50_nodes() {
        let ids = ids(100_000, 1);
        for k in [3u32, 4, 5, 7, 10, 16, 25, 50] {
            let m = map(k, 3);
            let mut load = vec![0u64; k as usize + 1];
            for id in &ids {
                for n in m.replicas(id) {
                    load[n.0 as usize] += 1;
                }
            }
            let mean = (ids.len() * 3) as f64 / f64::from(k);
            let max = *load.iter().max().unwrap() as f64;
            assert!(
                max <= 1.10 * mean,
                "{k} nodes: busiest {max} vs mean {mean:.0}"
            );
        }
    }

    #[test]
    fn adding_a_node_moves_its_share_only() {
        let ids = ids(100_000, 2);
        for k in [3u32, 4, 9, 20, 49] {
            let (before, after) = (map(k, 3), map(k + 1, 3));
            let moved = ids
                .iter()
                .filter(|id| {
                    let a: BTreeSet<_> = before.replicas(id).into_iter().collect();
                    let b: BTreeSet<_> = after.replicas(id).into_iter().collect();
                    a != b
                })
                .count() as f64;
            // Ideal: the new node takes its fair share of replica slots.
            let ideal = ids.len() as f64 * 3.0 / f64::from(k + 1);
            assert!(
                moved <= 1.1 * ideal,
                "{k}->{}: moved {moved} ideal {ideal:.0}",
                k + 1
            );
        }
    }

    #[test]
    fn groups_list_each_chunk_under_each_replica() {
        let m = map(5, 3);
        let ids = ids(200, 5);
        let groups = m.group_by_replica(&ids);
        assert_eq!(groups.values().map(Vec::len).sum::<usize>(), 600);
        for (node, idxs) in &groups {
            assert!(idxs.iter().all(|&i| m.replicas(&ids[i]).contains(node)));
        }
    }

    #[test]
    fn zones_are_spread() {
        let mut m = map(6, 3);
        for (i, n) in m.nodes.iter_mut().enumerate() {
            n.zone = format!("z{}", i % 3);
        }
        for id in ids(1000, 3) {
            let zones: BTreeSet<_> = m
                .replicas(&id)
                .iter()
                .map(|n| m.node(*n).unwrap().zone.clone())
                .collect();
            assert_eq!(zones.len(), 3);
        }
    }

    #[test]
    fn a_view_without_a_node_moves_only_its_partitions() {
        let m = map(5, 3);
        let out: BTreeSet<NodeId> = [NodeId(2)].into();
        let v = m.without(&out);
        let (before, after) = (m.owner_table(), v.owner_table());
        for p in 0..=u16::MAX as usize {
            assert!(!after[p].contains(&NodeId(2)));
            assert_eq!(after[p].len(), 3);
            if !before[p].contains(&NodeId(2)) {
                assert_eq!(before[p], after[p], "partition {p} moved");
            }
        }
        let tiny = map(2, 2).without(&out);
        assert_eq!(tiny.replicas, 1);
        assert_ne!(m.digest(), v.digest());
        assert_eq!(m.digest(), m.clone().digest());
    }

    #[test]
    fn the_map_digest_is_pinned_to_its_encoding_not_to_toml_text() {
        let mut m = map(3, 3);
        m.revoked.push("ab".repeat(32));
        m.nodes[1].zone = "rack-2".into();
        // Pinned: a change here splits the servers of two releases during
        // a rolling upgrade. Bump the context's version on purpose only.
        assert_eq!(
            hex::encode(m.digest()),
            "b6387b77e1ed0aa77bcb84a811f84369a0bbcecd4d2465bcd9e1e6c2a402b742",
            "the cluster map digest changed"
        );
        // The same map read from differently written TOML has one digest.
        let text = toml::to_string(&m).unwrap();
        let spaced = text.replace(" = ", "   =   ");
        assert_ne!(text, spaced);
        let again: ClusterMap = toml::from_str(&spaced).unwrap();
        assert_eq!(again.digest(), m.digest());
    }

    #[test]
    fn weights_shift_load() {
        let mut m = map(4, 1);
        m.nodes[0].weight = 3;
        let mut load = [0u32; 5];
        for id in ids(60_000, 4) {
            load[m.replicas(&id)[0].0 as usize] += 1;
        }
        let share = f64::from(load[1]) / 60_000.0;
        assert!((share - 0.5).abs() < 0.03, "weight-3 node share {share}");
    }

    proptest! {
        #[test]
        fn n_distinct_stable_nodes(k in 1u32..30, n in 1u32..6, seed in any::<u64>()) {
            let n = n.min(k);
            let m = map(k, n);
            for id in ids(50, seed) {
                let r = m.replicas(&id);
                prop_assert_eq!(r.len(), n as usize);
                prop_assert_eq!(r.iter().collect::<BTreeSet<_>>().len(), n as usize);
                prop_assert_eq!(&r, &m.replicas(&id));
                prop_assert_eq!(&m.ranked(&id)[..n as usize], &r[..]);
            }
        }
    }
}
