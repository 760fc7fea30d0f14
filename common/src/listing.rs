//! Snapshot listings: what one server answers, and how an agent merges the
//! answers of several into the snapshots it shows.
//!
//! Every server keeps every snapshot record, and for each forgotten one a
//! tombstone; only an admin certificate makes a tombstone. A server that
//! was down during a `forget` still holds the records until record sync
//! brings it the tombstones. So an agent shows the union of the records
//! every answering server listed, minus every id any of them holds a
//! tombstone for: one live server's tombstone outweighs any number of
//! records, and a forgotten snapshot never comes back, whatever order
//! servers stop and return in.
//!
//! On the wire ([`crate::wire::Response::SnapshotsAndTombstones`]) the
//! header carries each record's id and length and the number of
//! tombstones; the payload holds the records, concatenated, then the
//! tombstoned ids, 32 bytes each. [`split`] reads it back; [`merge`] is
//! the decision.

use std::collections::{BTreeMap, BTreeSet};

use crate::SnapshotId;

/// Bytes of one tombstoned id in the payload.
pub const TOMBSTONE_BYTES: usize = 32;

/// What one server listed: its live records (those it holds no tombstone
/// for) and the ids it holds tombstones for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerListing<V> {
    /// (id, record) per live record, as the server listed them.
    pub records: Vec<(SnapshotId, V)>,
    /// Ids the server holds a tombstone for.
    pub tombstones: Vec<SnapshotId>,
}

/// A listing whose header and payload disagree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "a snapshot listing's records ({records} bytes) and {tombstones} tombstones do not fill its {payload}-byte payload"
)]
pub struct ListingError {
    /// Bytes the records' lengths add up to.
    pub records: u64,
    /// Tombstones the header announced.
    pub tombstones: u32,
    /// Bytes of the payload.
    pub payload: usize,
}

/// Reads a server's answer: `records` (id, length in bytes) and the count of
/// `tombstones` from the header, the bytes from `payload`.
///
/// # Errors
/// [`ListingError`] unless the lengths and the tombstones fill `payload`
/// exactly (a faulty or hostile server; its answer is then not used).
pub fn split<'a>(
    records: &[(SnapshotId, u32)],
    tombstones: u32,
    payload: &'a [u8],
) -> Result<ServerListing<&'a [u8]>, ListingError> {
    let record_bytes: u64 = records.iter().map(|(_, len)| u64::from(*len)).sum();
    let tombstone_bytes = u64::from(tombstones) * TOMBSTONE_BYTES as u64;
    if record_bytes.checked_add(tombstone_bytes) != Some(payload.len() as u64) {
        return Err(ListingError {
            records: record_bytes,
            tombstones,
            payload: payload.len(),
        });
    }
    // The lengths fill the payload exactly (checked above): every slice
    // below is in bounds.
    let mut listed = Vec::with_capacity(records.len());
    let mut offset = 0usize;
    for (id, len) in records {
        let end = offset + *len as usize;
        listed.push((*id, &payload[offset..end]));
        offset = end;
    }
    let dead = payload[offset..]
        .chunks_exact(TOMBSTONE_BYTES)
        .map(|c| {
            let mut id = [0u8; TOMBSTONE_BYTES];
            id.copy_from_slice(c);
            SnapshotId(id)
        })
        .collect();
    Ok(ServerListing {
        records: listed,
        tombstones: dead,
    })
}

/// The snapshots an agent may show, from the listings of every server that
/// answered: per id, each distinct record seen (in the order the listings
/// came; one, unless a server is faulty or hostile), in id order. An id any
/// listing holds a tombstone for is left out, whoever else lists its
/// record.
pub fn merge<V: PartialEq>(
    listings: impl IntoIterator<Item = ServerListing<V>>,
) -> Vec<(SnapshotId, Vec<V>)> {
    let mut seen: BTreeMap<SnapshotId, Vec<V>> = BTreeMap::new();
    let mut dead: BTreeSet<SnapshotId> = BTreeSet::new();
    for listing in listings {
        dead.extend(listing.tombstones);
        for (id, value) in listing.records {
            let values = seen.entry(id).or_default();
            if !values.contains(&value) {
                values.push(value);
            }
        }
    }
    seen.into_iter()
        .filter(|(id, _)| !dead.contains(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> SnapshotId {
        SnapshotId([n; 32])
    }

    fn listing(records: &[(u8, &'static str)], tombstones: &[u8]) -> ServerListing<&'static str> {
        ServerListing {
            records: records.iter().map(|&(n, v)| (id(n), v)).collect(),
            tombstones: tombstones.iter().map(|&n| id(n)).collect(),
        }
    }

    #[test]
    fn one_tombstone_hides_a_record_every_other_server_still_lists() {
        // Node 3 missed the forgets of 1 and 2, node 2 the forget of 1.
        let merged = merge([
            listing(&[(3, "c")], &[1, 2]),
            listing(&[(1, "a"), (3, "c")], &[2]),
            listing(&[(1, "a"), (2, "b"), (3, "c")], &[]),
        ]);
        assert_eq!(merged, [(id(3), vec!["c"])]);
    }

    #[test]
    fn a_server_alone_shows_what_it_holds() {
        let merged = merge([listing(&[(1, "a"), (2, "b")], &[3])]);
        assert_eq!(merged, [(id(1), vec!["a"]), (id(2), vec!["b"])]);
        assert!(merge(Vec::<ServerListing<&str>>::new()).is_empty());
    }

    #[test]
    fn distinct_records_under_one_id_are_all_kept_in_arrival_order() {
        let merged = merge([
            listing(&[(1, "forged")], &[]),
            listing(&[(1, "real")], &[]),
            listing(&[(1, "real")], &[]),
        ]);
        assert_eq!(merged, [(id(1), vec!["forged", "real"])]);
    }

    #[test]
    fn split_reads_records_then_tombstones() {
        let mut payload = b"abcde".to_vec();
        payload.extend_from_slice(&[7; 32]);
        payload.extend_from_slice(&[8; 32]);
        let got = split(&[(id(1), 3), (id(2), 2)], 2, &payload).unwrap();
        assert_eq!(
            got,
            ServerListing {
                records: vec![(id(1), &b"abc"[..]), (id(2), &b"de"[..])],
                tombstones: vec![id(7), id(8)],
            }
        );
    }

    #[test]
    fn split_refuses_lengths_that_do_not_fill_the_payload() {
        let payload = [0u8; 40];
        assert!(split(&[(id(1), 8)], 1, &payload).is_ok());
        assert!(split(&[(id(1), 9)], 1, &payload).is_err());
        assert!(split(&[(id(1), 7)], 1, &payload).is_err());
        assert!(split(&[(id(1), 8)], 2, &payload).is_err());
        assert!(split(&[(id(1), u32::MAX), (id(2), u32::MAX)], u32::MAX, &payload).is_err());
    }

    /// One server's listing in small numbers: (records as (id, value)),
    /// (tombstoned ids).
    type Small = (Vec<(u8, u8)>, Vec<u8>);

    /// Listings of up to 5 servers over ids 0..8.
    fn listings() -> impl Strategy<Value = Vec<Small>> {
        proptest::collection::vec(
            (
                proptest::collection::vec((0u8..8, 0u8..3), 0..8),
                proptest::collection::vec(0u8..8, 0..4),
            ),
            0..5,
        )
    }

    fn to_listing((records, tombstones): &Small) -> ServerListing<u8> {
        ServerListing {
            records: records.iter().map(|&(n, v)| (id(n), v)).collect(),
            tombstones: tombstones.iter().map(|&n| id(n)).collect(),
        }
    }

    proptest! {
        #[test]
        fn shown_ids_are_the_listed_ones_no_server_tombstoned(all in listings()) {
            let merged = merge(all.iter().map(to_listing));
            let listed: BTreeSet<u8> = all.iter().flat_map(|(r, _)| r.iter().map(|(n, _)| *n)).collect();
            let dead: BTreeSet<u8> = all.iter().flat_map(|(_, t)| t.iter().copied()).collect();
            let expected: Vec<SnapshotId> = listed.difference(&dead).map(|&n| id(n)).collect();
            let shown: Vec<SnapshotId> = merged.iter().map(|(i, _)| *i).collect();
            prop_assert_eq!(shown, expected);
            for (_, values) in &merged {
                let distinct: BTreeSet<u8> = values.iter().copied().collect();
                prop_assert_eq!(distinct.len(), values.len());
            }
        }

        #[test]
        fn the_order_servers_answer_in_does_not_change_what_is_shown(
            all in listings(),
            rotate in 0usize..5,
        ) {
            let ids = |m: Vec<(SnapshotId, Vec<u8>)>| -> Vec<(SnapshotId, BTreeSet<u8>)> {
                m.into_iter().map(|(i, v)| (i, v.into_iter().collect())).collect()
            };
            let mut turned = all.clone();
            if !turned.is_empty() {
                let k = rotate % turned.len();
                turned.rotate_left(k);
            }
            turned.reverse();
            prop_assert_eq!(
                ids(merge(all.iter().map(to_listing))),
                ids(merge(turned.iter().map(to_listing)))
            );
        }

        #[test]
        fn split_reads_back_what_a_server_writes(
            records in proptest::collection::vec((any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..6),
            dead in proptest::collection::vec(any::<[u8; 32]>(), 0..6),
        ) {
            let mut payload = Vec::new();
            let mut header = Vec::new();
            for (i, r) in &records {
                header.push((SnapshotId(*i), r.len() as u32));
                payload.extend_from_slice(r);
            }
            for d in &dead {
                payload.extend_from_slice(d);
            }
            let got = split(&header, dead.len() as u32, &payload).unwrap();
            let want_records: Vec<(SnapshotId, &[u8])> =
                records.iter().map(|(i, r)| (SnapshotId(*i), r.as_slice())).collect();
            prop_assert_eq!(got.records, want_records);
            prop_assert_eq!(got.tombstones, dead.into_iter().map(SnapshotId).collect::<Vec<_>>());
        }
    }
}
