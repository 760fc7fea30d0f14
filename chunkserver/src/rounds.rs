//! The prune rounds in progress on a server and each repository's
//! garbage-collection fence: the state [`crate::prune`]'s module doc
//! describes, kept apart from the sweep so that the node can hold it
//! without depending on the sweep. The bookkeeping is
//! [`ringvault_common::gc::RoundTable`]'s; this adds its lock and the gate
//! between round begins and snapshot stores.

use parking_lot::{Mutex, MutexGuard};

pub use ringvault_common::gc::Round;
use ringvault_common::gc::RoundTable;
use ringvault_common::wire::{ErrorCode, GcFence, WireError};
use ringvault_common::{ChunkId, RepoId};
use tracing::info;

/// The rounds in progress on a server, one per repository at most, and
/// each repository's [`GcFence`]: a [`RoundTable`] behind a lock, and the
/// gate that keeps snapshot stores out of a begin.
pub struct Rounds {
    table: Mutex<RoundTable>,
    /// Held shared while a snapshot record is checked against its fence and
    /// stored, exclusively while a round begins.
    gate: tokio::sync::RwLock<()>,
}

fn unknown(e: ringvault_common::gc::UnknownRound) -> WireError {
    WireError::new(ErrorCode::NotFound, e.to_string())
}

impl Rounds {
    /// No round running; `boot` must differ at every start (random).
    pub fn new(boot: u64) -> Self {
        Self {
            table: Mutex::new(RoundTable::new(boot)),
            gate: tokio::sync::RwLock::new(()),
        }
    }

    fn table(&self) -> MutexGuard<'_, RoundTable> {
        self.table.lock()
    }

    /// Starts round `id` of `repo`, replacing any earlier round (which
    /// counts as ended). Waits for snapshot records being stored under the
    /// current fence.
    pub async fn begin(&self, repo: &RepoId, id: u64) {
        let _gate = self.gate.write().await;
        self.table().begin(repo, id);
        info!(repo = %repo, round = format!("{id:016x}"), "prune round started");
    }

    /// This server's fence for `repo`.
    pub fn fence(&self, repo: &RepoId) -> GcFence {
        self.table().fence(repo)
    }

    /// Runs `store` (a snapshot record's local store) only if `fence` is
    /// still this server's fence for `repo`, with no round beginning
    /// meanwhile.
    ///
    /// # Errors
    /// [`ErrorCode::FenceMoved`] when the fence differs (or is missing);
    /// `store`'s own error.
    pub async fn store_if_fenced<F, Fut>(
        &self,
        repo: &RepoId,
        fence: Option<GcFence>,
        store: F,
    ) -> Result<(), WireError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), WireError>>,
    {
        let _gate = self.gate.read().await;
        let now = self.fence(repo);
        let Some(read) = fence else {
            return Err(WireError::new(
                ErrorCode::FenceMoved,
                "the agent did not read this server's fence when its backup began (it could not reach it then)",
            ));
        };
        if read != now {
            return Err(WireError::new(
                ErrorCode::FenceMoved,
                format!(
                    "a prune round began or ended here since the agent checked its chunks (fence {read:?}, now {now:?})"
                ),
            ));
        }
        store().await
    }

    /// Adds live ids to round `id`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] when round `id` is not running.
    pub fn mark(&self, repo: &RepoId, id: u64, ids: Vec<ChunkId>) -> Result<(), WireError> {
        self.table().mark(repo, id, ids).map_err(unknown)
    }

    /// Protects `ids` from the round of `repo`, if one is running.
    pub fn protect<'a>(&self, repo: &RepoId, ids: impl IntoIterator<Item = &'a ChunkId>) {
        self.table().protect(repo, ids);
    }

    /// Ends round `id` of `repo` and returns it.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] when round `id` is not running.
    pub(crate) fn take(&self, repo: &RepoId, id: u64) -> Result<Round, WireError> {
        self.table().take(repo, id).map_err(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rounds_protect_only_while_running_and_refuse_strangers() {
        let r = Rounds::new(1);
        let repo = RepoId::new("r").unwrap();
        let id = ChunkId([1; 32]);
        r.protect(&repo, [&id]);
        assert!(r.mark(&repo, 7, vec![id]).is_err());
        r.begin(&repo, 7).await;
        r.protect(&repo, [&id]);
        r.mark(&repo, 7, vec![ChunkId([2; 32])]).unwrap();
        assert!(r.take(&repo, 8).is_err(), "another round's sweep");
        let round = r.take(&repo, 7).unwrap();
        assert!(round.is_protected(&id));
        assert!(round.is_marked(&ChunkId([2; 32])));
        assert!(r.take(&repo, 7).is_err(), "a round ends once");
    }

    #[tokio::test]
    async fn the_fence_moves_at_every_begin_and_end_and_gates_record_stores() {
        let r = Rounds::new(42);
        let (repo, other) = (RepoId::new("r").unwrap(), RepoId::new("o").unwrap());
        let idle = r.fence(&repo);
        assert_eq!((idle.boot, idle.counter, idle.active), (42, 0, false));
        let stored = |f| r.store_if_fenced(&repo, f, || async { Ok(()) });
        stored(Some(idle)).await.unwrap();
        assert_eq!(
            stored(None).await.unwrap_err().code,
            ErrorCode::FenceMoved,
            "a server missing from the fence refuses"
        );
        r.begin(&repo, 7).await;
        let running = r.fence(&repo);
        assert!(running.active && running != idle);
        assert_eq!(
            r.fence(&other),
            Rounds::new(42).fence(&other),
            "per repository"
        );
        assert_eq!(
            stored(Some(idle)).await.unwrap_err().code,
            ErrorCode::FenceMoved
        );
        stored(Some(running)).await.unwrap();
        r.take(&repo, 7).unwrap();
        let after = r.fence(&repo);
        assert!(!after.active && after != idle && after != running);
        // A round replaced by another also counts as ended.
        r.begin(&repo, 8).await;
        let first = r.fence(&repo);
        r.begin(&repo, 9).await;
        assert_ne!(r.fence(&repo), first);
        assert_ne!(Rounds::new(43).fence(&repo), Rounds::new(42).fence(&repo));
        // A store holding the gate makes a begin wait for it.
        let r = std::sync::Arc::new(Rounds::new(5));
        let fence = r.fence(&repo);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (in_tx, in_rx) = tokio::sync::oneshot::channel::<()>();
        let store = {
            let (r, repo) = (r.clone(), repo.clone());
            tokio::spawn(async move {
                r.store_if_fenced(&repo, Some(fence), || async {
                    in_tx.send(()).ok();
                    rx.await.ok();
                    Ok(())
                })
                .await
            })
        };
        in_rx.await.unwrap();
        let begin = {
            let (r, repo) = (r.clone(), repo.clone());
            tokio::spawn(async move { r.begin(&repo, 1).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!r.fence(&repo).active, "the begin waits for the store");
        tx.send(()).unwrap();
        store.await.unwrap().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), begin)
            .await
            .expect("the begin goes on once the store is done")
            .unwrap();
        assert!(r.fence(&repo).active);
    }
}
