//! Snapshot records and repository keys: stored on W servers at least,
//! listed from every live server and merged, and the garbage-collection
//! fence a backup reads before it relies on chunks it did not upload.

use std::collections::HashMap;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ringvault_common::gc::GcFences;
use ringvault_common::listing::{self, ServerListing};
use ringvault_common::wire::{
    DeleteKey, DeleteSnapshot, ErrorCode, GetGcFence, ListKeys, ListSnapshotsAndTombstones, PutKey,
    PutSnapshot, SnapshotListing,
};
use ringvault_common::{NodeId, SnapshotId};
use ringvault_net::quic::CallError;

use super::{ClientError, Cluster};

/// What [`Cluster::list_snapshots`] found.
#[derive(Clone, Debug, Default)]
pub struct SnapshotRecords {
    /// Per snapshot id that no answering server holds a tombstone for, in
    /// id order: each distinct record seen.
    pub records: Vec<(SnapshotId, Vec<Bytes>)>,
    /// Servers that answered with a listing.
    pub answered: Vec<NodeId>,
    /// Servers asked: the live ones of the map. The map's size is in
    /// [`Cluster::map`].
    pub asked: usize,
}

impl Cluster {
    /// Deletes a snapshot record on every server, leaving tombstones so it
    /// is neither copied back nor listed again. Succeeds only once W
    /// servers hold the tombstone.
    ///
    /// # Errors
    /// [`ClientError`] when no server takes it or W are not reached (the
    /// servers that took it hide the snapshot all the same).
    pub async fn delete_snapshot(&self, id: SnapshotId) -> Result<(), ClientError> {
        let req = DeleteSnapshot {
            repo: self.repo.clone(),
            id,
            local_only: false,
        };
        // The coordinator answers `Ok` only once W servers, itself
        // included, hold the tombstone; any other answer proves nothing.
        self.call_any(req, vec![]).await.map(|_| ())
    }

    /// Stores a sealed snapshot record on the cluster (W servers at least).
    ///
    /// # Errors
    /// [`ClientError`] when no server takes it.
    pub async fn put_snapshot(
        &self,
        id: SnapshotId,
        record: Bytes,
        fences: &GcFences,
    ) -> Result<(), ClientError> {
        let req = PutSnapshot {
            repo: self.repo.clone(),
            id,
            local_only: false,
            fence: fences.read.clone(),
        };
        match self.call_any(req, vec![record]).await {
            Err(ClientError::Server {
                node,
                error: CallError::Remote(e),
            }) if e.code == ErrorCode::FenceMoved => {
                Err(ClientError::FenceMoved { node, error: e })
            }
            other => other.map(|_| ()),
        }
    }

    /// Reads the garbage-collection fence of every server the agent
    /// believes up (one request each, in parallel); the others are missing
    /// from the reading, which then vouches for nothing
    /// ([`GcFences::quiet_tag`]).
    pub async fn gc_fences(&self) -> GcFences {
        let nodes: Vec<NodeId> = self.map().nodes.iter().map(|n| n.id).collect();
        let req = GetGcFence {
            repo: self.repo.clone(),
        };
        let mut asks: FuturesUnordered<_> = self
            .live_nodes()
            .into_iter()
            .map(|n| {
                let req = req.clone();
                async move { (n, self.call(n, req, vec![]).await) }
            })
            .collect();
        let mut read = Vec::new();
        while let Some((node, answer)) = asks.next().await {
            match answer {
                Ok((fence, _)) => read.push((node, fence)),
                Err(e) => tracing::debug!(%node, error = %e, "no gc fence"),
            }
        }
        GcFences::new(nodes, read)
    }

    /// Every snapshot record held by any live server that no answering
    /// server holds a tombstone for ([`listing::merge`]): per id, each
    /// distinct record seen (one, unless a server is faulty or hostile: the
    /// caller keeps the first that opens under its id), with how many
    /// servers answered. Every live server is asked; a listing needs one
    /// answer, a caller that needs more (prune) checks
    /// [`SnapshotRecords::answered`].
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when no server answers.
    pub async fn list_snapshots(&self) -> Result<SnapshotRecords, ClientError> {
        let req = ListSnapshotsAndTombstones {
            repo: self.repo.clone(),
        };
        let (answers, asked) = self
            .ask_every_live(req, |node, listed, payload| {
                let SnapshotListing {
                    records,
                    tombstones,
                } = listed;
                match listing::split(&records, tombstones, &payload) {
                    Ok(l) => Some(ServerListing {
                        records: l
                            .records
                            .into_iter()
                            .map(|(id, r)| (id, payload.slice_ref(r)))
                            .collect(),
                        tombstones: l.tombstones,
                    }),
                    Err(e) => {
                        tracing::warn!(node = %node, error = %e, "ignoring a malformed snapshot listing");
                        None
                    }
                }
            })
            .await?;
        Ok(SnapshotRecords {
            answered: answers.iter().map(|(node, _)| *node).collect(),
            asked,
            records: listing::merge(answers.into_iter().map(|(_, l)| l)),
        })
    }

    /// Stores one wrapped repository key under `id` on every server (W at
    /// least).
    ///
    /// # Errors
    /// [`ClientError`]; a server holding a different key under `id` answers
    /// `Exists`; a certificate without the admin role is refused.
    pub async fn put_key(&self, id: [u8; 32], key: Bytes) -> Result<(), ClientError> {
        let req = PutKey {
            repo: self.repo.clone(),
            id,
            local_only: false,
        };
        self.call_any(req, vec![key]).await.map(|_| ())
    }

    /// Deletes the wrapped key `id` on every server (W at least), leaving
    /// a tombstone.
    ///
    /// # Errors
    /// [`ClientError`]; a certificate without the admin role is refused.
    pub async fn delete_key(&self, id: [u8; 32]) -> Result<(), ClientError> {
        let req = DeleteKey {
            repo: self.repo.clone(),
            id,
            local_only: false,
        };
        self.call_any(req, vec![]).await.map(|_| ())
    }

    /// The repository's wrapped keys, merged from every live server: per
    /// key id, each distinct record seen.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] when no live server has any (the repository
    /// is not initialized), [`ClientError::Unreachable`] when none answers.
    pub async fn list_keys(&self) -> Result<Vec<([u8; 32], Vec<Bytes>)>, ClientError> {
        let req = ListKeys {
            repo: self.repo.clone(),
        };
        let (answers, _) = self
            .ask_every_live(req, |_, records, payload| Some((records, payload)))
            .await?;
        let keys = merge_records(answers.into_iter().map(|(_, a)| a).collect());
        if keys.is_empty() {
            return Err(ClientError::NotFound(format!(
                "the key of repository {} (run `ringvault init` first)",
                self.repo
            )));
        }
        Ok(keys)
    }
}

/// One server's record list: (id, length in bytes) per record, and the
/// payload holding the records concatenated.
type RecordList = (Vec<([u8; 32], u32)>, Bytes);

/// Merges record lists: per id, each distinct value, in the order they
/// arrived. A list whose lengths overrun its payload is read up to the
/// first record that does not fit.
fn merge_records(answers: Vec<RecordList>) -> Vec<([u8; 32], Vec<Bytes>)> {
    let mut all: HashMap<[u8; 32], Vec<Bytes>> = HashMap::new();
    for (records, payload) in answers {
        let mut off = 0usize;
        for (id, len) in records {
            let end = off.saturating_add(len as usize);
            if end > payload.len() {
                break;
            }
            let value = payload.slice(off..end);
            let seen = all.entry(id).or_default();
            if !seen.contains(&value) {
                seen.push(value);
            }
            off = end;
        }
    }
    all.into_iter().collect()
}
