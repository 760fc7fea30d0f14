//! Chunk requests: which chunks the cluster holds, writes with their
//! quorum, reads with failover, and batched reads from one server.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ringvault_common::routing::{self, PutError, PutRounds};
use ringvault_common::wire::{
    BlobReply, Copies, ErrorCode, GetBlob, GetBlobs, Has, MAX_HAS_IDS, PutBlobs, Rpc, Sizes,
};
use ringvault_common::{ChunkId, NodeId};
use ringvault_net::quic::CallError;

use super::{ClientError, Cluster, expect_len};

impl Cluster {
    /// Which of `ids` the cluster holds with at least W copies.
    ///
    /// # Errors
    /// [`ClientError`] when no server answers.
    pub async fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, ClientError> {
        self.ask_has(None, ids).await
    }

    /// Which of `ids` `node` holds in its own store (hints included),
    /// whoever owns them.
    ///
    /// # Errors
    /// [`ClientError`] when `node` does not answer.
    pub async fn has_on(&self, node: NodeId, ids: &[ChunkId]) -> Result<Vec<bool>, ClientError> {
        self.ask_has(Some(node), ids).await
    }

    /// A has-query to `node`'s own store, or (`None`) to any server for the
    /// cluster's answer, in parts of [`MAX_HAS_IDS`].
    async fn ask_has(
        &self,
        node: Option<NodeId>,
        ids: &[ChunkId],
    ) -> Result<Vec<bool>, ClientError> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(MAX_HAS_IDS) {
            let req = Has {
                repo: self.repo.clone(),
                ids: part.to_vec(),
                local_only: node.is_some(),
            };
            let (node, present, _) = match node {
                Some(node) => self
                    .call(node, req, vec![])
                    .await
                    .map(|(present, payload)| (node, present, payload))?,
                None => self.call_any(req, vec![]).await?,
            };
            expect_len(node, Has::KIND, present.len(), part.len())?;
            out.extend(present);
        }
        Ok(out)
    }

    /// Stores sealed blobs: each goes once, to its first live replica, which
    /// replicates it; succeeds when every blob has W durable copies.
    ///
    /// # Errors
    /// [`ClientError::QuorumNotReached`], or unreachable servers.
    pub async fn put(&self, blobs: Vec<(ChunkId, Bytes)>) -> Result<(), ClientError> {
        // Each round routes around the servers the last one found down
        // ([`PutRounds`]): the first live node in placement order
        // coordinates, an owner when one is up, else a node that keeps a
        // hint.
        let map = self.map();
        let mut rounds = PutRounds::new(&map, blobs);
        loop {
            let groups = match rounds.next_round(&map, |n| self.is_down(n)) {
                Ok(Some(groups)) => groups,
                Ok(None) => return Ok(()),
                Err(PutError::NoLiveReplica { chunk }) => {
                    return Err(ClientError::QuorumNotReached {
                        chunk,
                        copies: 0,
                        needed: map.write_quorum,
                        reason: "every replica is down".into(),
                    });
                }
                Err(PutError::RoundsExhausted { chunk }) => {
                    return Err(ClientError::QuorumNotReached {
                        chunk,
                        copies: 0,
                        needed: map.write_quorum,
                        reason: "no replica answered".into(),
                    });
                }
            };
            let mut calls: FuturesUnordered<_> = groups
                .into_iter()
                .map(|(node, batch)| async move {
                    let req = PutBlobs {
                        repo: self.repo.clone(),
                        blobs: batch.iter().map(|(id, b)| (*id, b.len() as u32)).collect(),
                        local_only: false,
                    };
                    let payload = batch.iter().map(|(_, b)| b.clone()).collect();
                    (node, batch, self.call(node, req, payload).await)
                })
                .collect();
            while let Some((node, batch, result)) = calls.next().await {
                match result {
                    Ok((copies, _)) => {
                        expect_len(node, PutBlobs::KIND, copies.len(), batch.len())?;
                        let w = map.write_quorum;
                        if let Some(i) = copies.iter().position(|&c| c < w) {
                            return Err(ClientError::QuorumNotReached {
                                chunk: batch[i].0,
                                copies: copies[i],
                                needed: w,
                                reason: format!(
                                    "coordinated by {node}; the other replicas are down or failed to write it (see their logs)"
                                ),
                            });
                        }
                    }
                    // Unreachable coordinator (the call marked it down):
                    // retry its blobs elsewhere.
                    Err(ClientError::Server {
                        error:
                            CallError::Connect { .. } | CallError::Connection(_) | CallError::Timeout(_),
                        ..
                    }) => {
                        rounds.unreachable(batch);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Fetches a blob, trying servers in placement order; `accept` checks it
    /// (decrypts and verifies, typically on the blocking pool) and a copy it
    /// rejects is reported as bad and the next server is tried.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] when no live server has a good copy.
    pub async fn get<T, F>(
        &self,
        id: &ChunkId,
        accept: impl Fn(Bytes) -> F,
    ) -> Result<T, ClientError>
    where
        F: Future<Output = Result<T, String>>,
    {
        let mut notes = Vec::new();
        for node in routing::read_order(&self.map(), id, |n| self.is_down(n)) {
            let req = GetBlob {
                repo: self.repo.clone(),
                id: *id,
            };
            match self.call(node, req, vec![]).await {
                Ok(((), blob)) => match accept(blob).await {
                    Ok(v) => return Ok(v),
                    Err(reason) => self.report_bad_copy(*id, node, reason),
                },
                Err(ClientError::Server {
                    error: CallError::Remote(e),
                    ..
                }) if e.code == ErrorCode::NotFound => {}
                Err(ClientError::Server {
                    error: CallError::Remote(e),
                    ..
                }) if e.code == ErrorCode::Corrupt => {
                    self.report_bad_copy(*id, node, e.message);
                }
                Err(e @ ClientError::CertificateRefused { .. }) => return Err(e),
                Err(e) => notes.push(e.to_string()),
            }
        }
        Err(ClientError::NotFound(if notes.is_empty() {
            format!("chunk {id}")
        } else {
            format!("chunk {id} ({})", notes.join("; "))
        }))
    }

    /// How many live servers hold each of `ids` (metadata only: no blob is
    /// read).
    ///
    /// # Errors
    /// [`ClientError`] when no server answers.
    pub async fn copies(&self, ids: &[ChunkId]) -> Result<Vec<u32>, ClientError> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(MAX_HAS_IDS) {
            let req = Copies {
                repo: self.repo.clone(),
                ids: part.to_vec(),
            };
            let (node, copies, _) = self.call_any(req, vec![]).await?;
            expect_len(node, Copies::KIND, copies.len(), part.len())?;
            out.extend(copies);
        }
        Ok(out)
    }

    /// The blob `id` as `node` holds it: `Ok(None)` when it holds none.
    ///
    /// # Errors
    /// [`ClientError`]: unreachable, or the server's copy failed its checksum
    /// ([`CallError::Remote`] with [`ErrorCode::Corrupt`]).
    pub async fn get_from(&self, node: NodeId, id: &ChunkId) -> Result<Option<Bytes>, ClientError> {
        let req = GetBlob {
            repo: self.repo.clone(),
            id: *id,
        };
        match self.call(node, req, vec![]).await {
            Ok(((), blob)) => Ok(Some(blob)),
            Err(ClientError::Server {
                error: CallError::Remote(e),
                ..
            }) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Fetches many blobs from one server in one request
    /// ([`GetBlobs`], at most
    /// [`ringvault_common::wire::MAX_GET_BLOBS`] ids): per id,
    /// in order, its sealed bytes or why the server did not send them. A
    /// copy that failed the server's checksum is recorded as a bad copy
    /// ([`Cluster::bad_copies`]).
    ///
    /// # Errors
    /// [`ClientError`]: the server is unreachable or refused the request, or
    /// [`ClientError::Protocol`] when its answer does not match the ids.
    pub async fn get_many_from(
        &self,
        node: NodeId,
        ids: &[ChunkId],
    ) -> Result<Vec<Fetched>, ClientError> {
        let req = GetBlobs {
            repo: self.repo.clone(),
            ids: ids.to_vec(),
        };
        let (replies, mut payload) = self.call(node, req, vec![]).await?;
        expect_len(node, GetBlobs::KIND, replies.len(), ids.len())?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, reply) in ids.iter().zip(replies) {
            out.push(match reply {
                BlobReply::Data(len) => {
                    let len = len as usize;
                    if len > payload.len() {
                        return Err(ClientError::Protocol(format!(
                            "{node} answered get-blobs with {len} bytes for {id} past its payload"
                        )));
                    }
                    Fetched::Blob(payload.split_to(len))
                }
                BlobReply::NotFound => Fetched::NotFound,
                BlobReply::Corrupt => {
                    self.report_bad_copy(*id, node, "failed its checksum on the server".into());
                    Fetched::Corrupt
                }
                BlobReply::Later => Fetched::Later,
            });
        }
        if !payload.is_empty() {
            return Err(ClientError::Protocol(format!(
                "{node} answered get-blobs with {} bytes past its blobs",
                payload.len()
            )));
        }
        Ok(out)
    }

    /// The sealed size of each of `ids` (bytes), from whichever live server
    /// holds it; 0 when none does.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when no server answers.
    pub async fn sizes(&self, ids: &[ChunkId]) -> Result<Vec<u32>, ClientError> {
        let mut out = vec![0u32; ids.len()];
        let mut answered = 0;
        let mut reasons = Vec::new();
        for node in self.live_nodes() {
            let mut ok = true;
            for (k, part) in ids.chunks(MAX_HAS_IDS).enumerate() {
                let req = Sizes {
                    repo: self.repo.clone(),
                    ids: part.to_vec(),
                };
                match self.call(node, req, vec![]).await {
                    Ok((sizes, _)) if sizes.len() == part.len() => {
                        for (i, s) in sizes.into_iter().enumerate() {
                            let o = &mut out[k * MAX_HAS_IDS + i];
                            *o = (*o).max(s);
                        }
                    }
                    Ok(_) => ok = false,
                    Err(e) => {
                        reasons.push(e.to_string());
                        ok = false;
                        break;
                    }
                }
            }
            answered += usize::from(ok);
        }
        if answered == 0 {
            return Err(ClientError::Unreachable(reasons.join("; ")));
        }
        Ok(out)
    }
}

/// One blob of a [`Cluster::get_many_from`] answer.
#[derive(Clone, Debug)]
pub enum Fetched {
    /// Its sealed bytes, not yet opened or checked.
    Blob(Bytes),
    /// The server does not hold it.
    NotFound,
    /// The server's copy failed its checksum (now quarantined there).
    Corrupt,
    /// Not sent in this answer (its byte budget was spent, or the store
    /// failed on it): ask again.
    Later,
}
