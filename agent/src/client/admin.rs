//! Requests of maintenance addressed to one server by name: its status,
//! the steps of a prune round, and undoing one from the trash.

use ringvault_common::wire::{BeginPrune, GetNodeStatus, PruneMark, PruneSweep, RestoreTrash};
use ringvault_common::{ChunkId, NodeId};

use super::{ClientError, Cluster};

impl Cluster {
    /// One server's own report: epoch, store, backlogs, its view of peers.
    ///
    /// # Errors
    /// [`ClientError`] when it does not answer.
    pub async fn node_status(
        &self,
        node: NodeId,
    ) -> Result<ringvault_common::wire::NodeStatus, ClientError> {
        // Asked for this node by name: try it even if it is routed around.
        self.peers.mark_up(node);
        let (status, _) = self.call(node, GetNodeStatus, vec![]).await?;
        Ok(status)
    }

    /// Starts prune round `round` on `node`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn begin_prune(&self, node: NodeId, round: u64) -> Result<(), ClientError> {
        // Every server should take part: try it even if it is routed around.
        self.peers.mark_up(node);
        let req = BeginPrune {
            repo: self.repo.clone(),
            round,
        };
        self.call(node, req, vec![]).await.map(|_| ())
    }

    /// Marks `ids` live in round `round` on `node`.
    ///
    /// # Errors
    /// [`ClientError`], e.g. when the round is not running there.
    pub async fn prune_mark(
        &self,
        node: NodeId,
        round: u64,
        ids: Vec<ChunkId>,
    ) -> Result<(), ClientError> {
        let req = PruneMark {
            repo: self.repo.clone(),
            round,
            ids,
        };
        self.call(node, req, vec![]).await.map(|_| ())
    }

    /// Ends round `round` on `node` with its sweep.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn prune_sweep(
        &self,
        node: NodeId,
        round: u64,
        grace_s: u64,
        trash_keep_s: u64,
    ) -> Result<ringvault_common::wire::SweepReport, ClientError> {
        let req = PruneSweep {
            repo: self.repo.clone(),
            round,
            grace_s,
            trash_keep_s,
        };
        let (report, _) = self.call(node, req, vec![]).await?;
        Ok(report)
    }

    /// Moves `node`'s trashed blobs of this repository back; returns how
    /// many.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn restore_trash(&self, node: NodeId) -> Result<u64, ClientError> {
        self.peers.mark_up(node);
        let req = RestoreTrash {
            repo: self.repo.clone(),
        };
        let (restored, _) = self.call(node, req, vec![]).await?;
        Ok(restored)
    }
}
