//! Records every server holds (snapshot records, keys, tombstones): stored
//! on every server, snapshot records under their garbage-collection fence,
//! and listed with the owner each was written by.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ringvault_common::tls::{PeerIdentity, Role};
use ringvault_common::wire::{
    self, DeleteKey, DeleteSnapshot, ErrorCode, GcFence, PeerRpc, PutKey, PutSnapshot, Response,
    WireError,
};
use ringvault_common::{NodeId, RepoId};
use ringvault_net::quic::CallError;
use tracing::warn;

use crate::node::{Caller, Node, Reply};
use crate::store::{RecordKind, RecordStore, StoreError};

/// Stores a key record here and, unless `local_only`, on every other node;
/// succeeds once W nodes hold it. A coordinator whose own store fails still
/// forwards: only the count of nodes that stored it decides.
///
/// # Errors
/// [`ErrorCode::Exists`] when this node or another holds a different key
/// under `key`; [`ErrorCode::QuorumNotReached`] naming each node's failure
/// when fewer than W stored it; this node's own failure when `local_only`.
pub(crate) async fn put_record_everywhere(
    node: &Arc<Node>,
    kind: RecordKind,
    repo: RepoId,
    key: [u8; 32],
    value: Bytes,
    local_only: bool,
    exclusive: bool,
) -> Reply {
    let req = match kind {
        RecordKind::Key => PutKey {
            repo: repo.clone(),
            id: key,
            local_only: true,
        },
        RecordKind::Snapshot => {
            return Err(WireError::new(
                ErrorCode::Internal,
                "snapshot records are stored under a fence",
            ));
        }
        RecordKind::Tombstone => {
            return Err(WireError::new(
                ErrorCode::Internal,
                "tombstones spread by DeleteSnapshot",
            ));
        }
    };
    let store = node.store.clone();
    let v = value.clone();
    let local = node
        .blocking(move || store.put_record(kind, &repo, &key, &v, exclusive))
        .await;
    if local_only {
        return local.map(|()| (Response::Ok, vec![]));
    }
    everywhere(node, local, req, vec![value], "stored the record").await
}

/// Stores a snapshot record here if this server's fence is the one the
/// agent read (see [`GcFence`]) and, unless `local_only`, asks every other
/// node to do the same; succeeds once W nodes stored it. A coordinator
/// whose own fence moved, or whose store fails, still forwards: only the
/// count of nodes that stored it decides.
///
/// # Errors
/// [`ErrorCode::FenceMoved`] when fewer than W stored it and some node
/// refused for its fence (the agent checks its chunks again and retries);
/// [`ErrorCode::QuorumNotReached`] naming each node's failure otherwise.
pub(crate) async fn put_snapshot_fenced(
    node: &Arc<Node>,
    repo: RepoId,
    id: ringvault_common::SnapshotId,
    value: Bytes,
    local_only: bool,
    fence: Vec<(NodeId, GcFence)>,
) -> Reply {
    let mine = fence.iter().find(|(n, _)| *n == node.id).map(|(_, f)| *f);
    let store = node.store.clone();
    let local = {
        let (r, v) = (repo.clone(), value.clone());
        node.prune
            .store_if_fenced(&repo, mine, || {
                node.blocking(move || store.put_record(RecordKind::Snapshot, &r, &id.0, &v, false))
            })
            .await
    };
    if local_only {
        return local.map(|()| (Response::Ok, vec![]));
    }
    let mut held = 0u32;
    let mut refusals = Vec::new();
    match local {
        Ok(()) => held += 1,
        Err(e) => refusals.push((node.id, e)),
    }
    let view = node.view();
    node.try_down_peers_if_short(&view);
    let req = PutSnapshot {
        repo,
        id,
        local_only: true,
        fence,
    };
    let mut sends: FuturesUnordered<_> = view
        .map
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&n| n != node.id)
        .map(|other| {
            let (node, req, value) = (node.clone(), req.clone(), value.clone());
            tokio::spawn(async move {
                let r = node.call_peer(other, req, vec![value]).await;
                (other, r)
            })
        })
        .collect();
    let w = view.map.write_quorum;
    while held < w {
        let Some(sent) = sends.next().await else {
            break;
        };
        match sent {
            Ok((_, Ok(_))) => held += 1,
            Ok((other, Err(CallError::Remote(e)))) => refusals.push((other, e)),
            Ok((other, Err(e))) => {
                warn!(node = %other, error = %e, "snapshot record not stored there");
                refusals.push((other, WireError::new(ErrorCode::Internal, e.to_string())));
            }
            Err(e) => refusals.push((node.id, WireError::new(ErrorCode::Internal, e.to_string()))),
        }
    }
    if held >= w {
        return Ok((Response::Ok, vec![]));
    }
    let causes = refusals
        .iter()
        .map(|(n, e)| format!("{n}: {}", e.message))
        .collect::<Vec<_>>()
        .join("; ");
    let code = if refusals
        .iter()
        .any(|(_, e)| e.code == ErrorCode::FenceMoved)
    {
        ErrorCode::FenceMoved
    } else {
        ErrorCode::QuorumNotReached
    };
    Err(WireError::new(
        code,
        format!("the snapshot record is on {held} of the required {w} servers ({causes})"),
    ))
}

/// Deletes a snapshot record or a key here and leaves a tombstone under its
/// id (its value: the deletion time, unix seconds, 8 bytes little endian),
/// so record sync does not copy it back; unless `local_only`, does the same
/// on every other node and succeeds once W hold the tombstone. A
/// coordinator whose own store fails still forwards.
///
/// # Errors
/// [`ErrorCode::QuorumNotReached`] naming each node's failure when fewer
/// than W made the change; this node's own failure when `local_only`.
pub(crate) async fn delete_record_everywhere(
    node: &Arc<Node>,
    kind: RecordKind,
    repo: RepoId,
    id: [u8; 32],
    local_only: bool,
) -> Reply {
    let store = node.store.clone();
    let r = repo.clone();
    let now = crate::store::unix_seconds().to_le_bytes();
    let local = node
        .blocking(move || {
            store.put_record(RecordKind::Tombstone, &r, &id, &now, false)?;
            store.delete_record(kind, &r, &id)?;
            Ok(())
        })
        .await;
    if local_only {
        return local.map(|()| (Response::Ok, vec![]));
    }
    match kind {
        RecordKind::Key => {
            let req = DeleteKey {
                repo,
                id,
                local_only: true,
            };
            everywhere(node, local, req, vec![], "deleted the key").await
        }
        _ => {
            let req = DeleteSnapshot {
                repo,
                id: ringvault_common::SnapshotId(id),
                local_only: true,
            };
            everywhere(node, local, req, vec![], "deleted the snapshot").await
        }
    }
}

/// Records as listed: (32-byte key, stored value).
type Records = Vec<([u8; 32], Vec<u8>)>;

/// The records of `kind` in `repo` that no tombstone marks deleted.
pub(crate) fn live_records(
    store: &dyn RecordStore,
    kind: RecordKind,
    repo: &RepoId,
) -> Result<Records, StoreError> {
    let dead: std::collections::HashSet<[u8; 32]> = store
        .list_records(RecordKind::Tombstone, repo)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut list = store.list_records(kind, repo)?;
    list.retain(|(k, _)| !dead.contains(k));
    Ok(list)
}

/// The snapshot records of `repo` that no tombstone marks deleted, and the
/// keys of its tombstones (of snapshots and of keys alike: their ids are
/// random, so a key's tombstone hides no snapshot).
pub(crate) fn snapshot_records(
    store: &dyn RecordStore,
    repo: &RepoId,
) -> Result<(Records, Vec<[u8; 32]>), StoreError> {
    let dead: Vec<[u8; 32]> = store
        .list_records(RecordKind::Tombstone, repo)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let gone: std::collections::HashSet<&[u8; 32]> = dead.iter().collect();
    let mut list = store.list_records(RecordKind::Snapshot, repo)?;
    list.retain(|(k, _)| !gone.contains(k));
    Ok((list, dead))
}

/// The (id, length in bytes) list of a snapshot listing.
type Listed = Vec<(ringvault_common::SnapshotId, u32)>;

/// The (id, length) list and the payload parts of a snapshot listing for
/// `caller` ([`snapshot_for`]), leaving room for `reserved` more payload
/// bytes.
///
/// # Errors
/// When the records and `reserved` do not fit one reply.
pub(crate) fn listed_snapshots(
    caller: &Caller,
    list: Records,
    reserved: usize,
) -> Result<(Listed, Vec<Bytes>), WireError> {
    let mut records = Vec::with_capacity(list.len());
    let mut parts = Vec::with_capacity(list.len() + 1);
    let mut total = reserved;
    for (key, stored) in list {
        let Some(value) = snapshot_for(caller, &stored) else {
            continue;
        };
        total += value.len();
        if total > wire::MAX_PAYLOAD {
            return Err(too_many_records());
        }
        records.push((ringvault_common::SnapshotId(key), value.len() as u32));
        parts.push(Bytes::copy_from_slice(value));
    }
    Ok((records, parts))
}

pub(crate) fn too_many_records() -> WireError {
    WireError::new(
        ErrorCode::Internal,
        "too many snapshot records for one reply",
    )
}

/// Prefix of a stored snapshot record that names the agent that made it:
/// `"RVO1"`, the agent id's length (1 byte), the agent id, then the sealed
/// record as the agent sent it. Sealed records begin with `"RVB"`
/// (`ringvault_common::seal`), so the two never look alike.
const OWNER_MAGIC: &[u8; 4] = b"RVO1";

/// A snapshot record as stored: `sealed` prefixed with its owner `agent`.
pub(crate) fn owned_record(agent: &str, sealed: &[u8]) -> Bytes {
    // Agent ids come from verified certificates: a URI segment, never
    // longer than 255 bytes in practice; a longer one is cut, which only
    // hides the record from that writer.
    let name = &agent.as_bytes()[..agent.len().min(255)];
    let mut out = Vec::with_capacity(OWNER_MAGIC.len() + 1 + name.len() + sealed.len());
    out.extend_from_slice(OWNER_MAGIC);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(sealed);
    Bytes::from(out)
}

/// Splits a stored snapshot record into its owner (none for records stored
/// before owners were kept) and the sealed record.
fn split_owner(stored: &[u8]) -> (Option<&[u8]>, &[u8]) {
    if let Some(rest) = stored.strip_prefix(OWNER_MAGIC.as_slice())
        && let Some((&len, rest)) = rest.split_first()
        && rest.len() >= usize::from(len)
    {
        let (owner, sealed) = rest.split_at(usize::from(len));
        return (Some(owner), sealed);
    }
    (None, stored)
}

/// The record bytes `caller` may see of a stored snapshot record: nodes get
/// it as stored (record sync copies the owner along); readers and admins
/// get the sealed record; writers only their own.
pub(crate) fn snapshot_for<'a>(caller: &Caller, stored: &'a [u8]) -> Option<&'a [u8]> {
    let (owner, sealed) = split_owner(stored);
    match &caller.identity {
        PeerIdentity::Node(_) => Some(stored),
        PeerIdentity::Agent {
            role: Role::Writer,
            agent,
            ..
        } => (owner == Some(agent.as_bytes())).then_some(sealed),
        PeerIdentity::Agent { .. } => Some(sealed),
        PeerIdentity::Operator(_) => None,
    }
}

/// Sends `req` (a local-only record change this node has tried, with
/// outcome `local`) to every other node of the map and answers once W
/// nodes, this one included if `local` succeeded, made it. Sends are
/// spawned, so nodes past the first W still get it. A node answering
/// `Exists` (a different key), this one included, fails the request.
///
/// # Errors
/// [`ErrorCode::Exists`]; [`ErrorCode::QuorumNotReached`] naming each
/// node that failed and its cause.
async fn everywhere<R: PeerRpc<Response = ()> + Clone + Send + 'static>(
    node: &Arc<Node>,
    local: Result<(), WireError>,
    req: R,
    payload: Vec<Bytes>,
    did: &str,
) -> Reply {
    let mut held = 0u32;
    let mut causes = Vec::new();
    match local {
        Ok(()) => held += 1,
        Err(e) if e.code == ErrorCode::Exists => return Err(e),
        Err(e) => {
            warn!(kind = R::KIND, error = %e.message, "record change failed here; forwarding it");
            causes.push(format!("{}: {}", node.id, e.message));
        }
    }
    let view = node.view();
    node.try_down_peers_if_short(&view);
    let mut sends = FuturesUnordered::new();
    for other in view
        .map
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&n| n != node.id)
    {
        let (node, req, payload) = (node.clone(), req.clone(), payload.clone());
        sends.push(tokio::spawn(async move {
            // Only `Ok` says the change was made there.
            let result = match node.call_peer(other, req, payload).await {
                Ok(((), _)) => Ok(()),
                Err(CallError::Remote(e)) => Err(e),
                Err(e) => {
                    warn!(node = %other, kind = R::KIND, error = %e, "record change failed");
                    Err(WireError::new(ErrorCode::Internal, e.to_string()))
                }
            };
            (other, result)
        }));
    }
    let w = view.map.write_quorum;
    while held < w {
        match sends.next().await {
            None => break,
            Some(Ok((_, Ok(())))) => held += 1,
            Some(Ok((_, Err(e)))) if e.code == ErrorCode::Exists => return Err(e),
            Some(Ok((other, Err(e)))) => causes.push(format!("{other}: {}", e.message)),
            Some(Err(e)) => causes.push(format!("a send task failed: {e}")),
        }
    }
    if held < w {
        return Err(WireError::new(
            ErrorCode::QuorumNotReached,
            format!(
                "only {held} of the required {w} servers {did} ({})",
                causes.join("; ")
            ),
        ));
    }
    Ok((Response::Ok, vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::test_callers::{agent, caller};

    #[test]
    fn snapshot_records_carry_their_owner_and_writers_see_only_theirs() {
        let stored = owned_record("laptop", b"RVBsealed");
        assert_eq!(
            split_owner(&stored),
            (Some(&b"laptop"[..]), &b"RVBsealed"[..])
        );
        let own = agent("laptop", Role::Writer);
        let other = agent("desktop", Role::Writer);
        assert_eq!(snapshot_for(&own, &stored), Some(&b"RVBsealed"[..]));
        assert_eq!(snapshot_for(&other, &stored), None);
        assert_eq!(
            snapshot_for(&agent("x", Role::Reader), &stored),
            Some(&b"RVBsealed"[..])
        );
        assert_eq!(
            snapshot_for(&caller(PeerIdentity::Node(NodeId(1))), &stored),
            Some(&stored[..])
        );
        // Records stored before owners were kept: hidden from writers only.
        assert_eq!(snapshot_for(&own, b"RVBold"), None);
        assert_eq!(
            snapshot_for(&agent("x", Role::Admin), b"RVBold"),
            Some(&b"RVBold"[..])
        );
        // Malformed prefixes never panic and own nothing.
        for bad in [&b"RVO1"[..], b"RVO1\x09abc", b"RVO1\xff"] {
            assert_eq!(split_owner(bad), (None, bad));
        }
    }

    #[test]
    fn a_listing_carries_live_records_and_every_tombstone_of_its_repository() {
        let store = crate::store::MemStore::default();
        let repo = RepoId::new("r").unwrap();
        let other = RepoId::new("o").unwrap();
        let put = |kind, repo: &RepoId, key: u8, value: &[u8]| {
            store
                .put_record(kind, repo, &[key; 32], value, false)
                .unwrap();
        };
        put(
            RecordKind::Snapshot,
            &repo,
            1,
            &owned_record("laptop", b"RVBone"),
        );
        put(
            RecordKind::Snapshot,
            &repo,
            2,
            &owned_record("desktop", b"RVBtwo"),
        );
        // Forgotten here, though the record is still stored (a tombstone
        // copied by record sync before the record was dropped).
        put(
            RecordKind::Snapshot,
            &repo,
            3,
            &owned_record("laptop", b"RVBthree"),
        );
        put(RecordKind::Tombstone, &repo, 3, &[0; 8]);
        // Forgotten here with the record gone, and another repository's.
        put(RecordKind::Tombstone, &repo, 4, &[0; 8]);
        put(RecordKind::Tombstone, &other, 5, &[0; 8]);

        let (mut list, dead) = snapshot_records(&store, &repo).unwrap();
        list.sort();
        let keys: Vec<u8> = list.iter().map(|(k, _)| k[0]).collect();
        assert_eq!(keys, [1, 2]);
        let mut dead: Vec<u8> = dead.iter().map(|k| k[0]).collect();
        dead.sort_unstable();
        assert_eq!(dead, [3, 4]);

        // A writer sees its own records, and the tombstones all the same.
        let (records, parts) =
            listed_snapshots(&agent("laptop", Role::Writer), list.clone(), 64).unwrap();
        assert_eq!(records, [(ringvault_common::SnapshotId([1; 32]), 6)]);
        assert_eq!(parts, [Bytes::from_static(b"RVBone")]);
        let (records, _) = listed_snapshots(&agent("x", Role::Reader), list.clone(), 0).unwrap();
        assert_eq!(records.len(), 2);
        // Records and tombstones that do not fit one reply are refused, not
        // cut short.
        assert!(listed_snapshots(&agent("x", Role::Reader), list, wire::MAX_PAYLOAD).is_err());
    }
}
