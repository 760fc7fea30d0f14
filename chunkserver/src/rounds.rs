//! The prune rounds in progress on a server and each repository's
//! garbage-collection fence: the state [`crate::prune`]'s module doc
//! describes, kept apart from the sweep so that the node can hold it
//! without depending on the sweep.

use std::collections::{HashMap, HashSet};

use std::sync::Mutex;

use ringvault_common::wire::{ErrorCode, GcFence, WireError};
use ringvault_common::{ChunkId, RepoId};
use tracing::info;

/// One round's state for one repository.
#[derive(Default)]
pub struct Round {
    id: u64,
    pub(crate) marks: HashSet<ChunkId>,
    pub(crate) protected: HashSet<ChunkId>,
}

/// The rounds in progress on a server, one per repository at most, and
/// each repository's [`GcFence`].
pub struct Rounds {
    rounds: Mutex<HashMap<RepoId, Round>>,
    /// Rounds begun plus ended, per repository, since start.
    counters: Mutex<HashMap<RepoId, u64>>,
    /// Random at start: a restart moves every fence.
    boot: u64,
    /// Held shared while a snapshot record is checked against its fence and
    /// stored, exclusively while a round begins.
    gate: tokio::sync::RwLock<()>,
}

fn unknown(round: u64) -> WireError {
    WireError::new(
        ErrorCode::NotFound,
        format!(
            "prune round {round:016x} is not running here (another prune replaced it, or the server restarted); run prune again"
        ),
    )
}

impl Rounds {
    /// No round running; `boot` must differ at every start (random).
    pub fn new(boot: u64) -> Self {
        Self {
            rounds: Mutex::default(),
            counters: Mutex::default(),
            boot,
            gate: tokio::sync::RwLock::new(()),
        }
    }

    /// Starts round `id` of `repo`, replacing any earlier round (which
    /// counts as ended). Waits for snapshot records being stored under the
    /// current fence.
    pub async fn begin(&self, repo: &RepoId, id: u64) {
        let _gate = self.gate.write().await;
        let replaced = {
            let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
            rounds
                .insert(
                    repo.clone(),
                    Round {
                        id,
                        ..Round::default()
                    },
                )
                .is_some()
        };
        self.bump(repo, 1 + u64::from(replaced));
        info!(repo = %repo, round = format!("{id:016x}"), "prune round started");
    }

    /// This server's fence for `repo`.
    pub fn fence(&self, repo: &RepoId) -> GcFence {
        let active = self
            .rounds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(repo);
        let counter = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(repo)
            .copied()
            .unwrap_or(0);
        GcFence {
            boot: self.boot,
            counter,
            active,
        }
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

    fn bump(&self, repo: &RepoId, by: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *counters.entry(repo.clone()).or_insert(0) += by;
    }

    /// Adds live ids to round `id`.
    ///
    /// # Errors
    /// When round `id` is not running (see [`unknown`]).
    pub fn mark(&self, repo: &RepoId, id: u64, ids: Vec<ChunkId>) -> Result<(), WireError> {
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        match rounds.get_mut(repo) {
            Some(r) if r.id == id => {
                r.marks.extend(ids);
                Ok(())
            }
            _ => Err(unknown(id)),
        }
    }

    /// Protects `ids` from the round of `repo`, if one is running.
    pub fn protect<'a>(&self, repo: &RepoId, ids: impl IntoIterator<Item = &'a ChunkId>) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = rounds.get_mut(repo) {
            r.protected.extend(ids);
        }
    }

    /// Ends round `id` of `repo` and returns it.
    ///
    /// # Errors
    /// When round `id` is not running.
    pub(crate) fn take(&self, repo: &RepoId, id: u64) -> Result<Round, WireError> {
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        match rounds.remove(repo) {
            Some(r) if r.id == id => {
                drop(rounds);
                self.bump(repo, 1);
                Ok(r)
            }
            Some(other) => {
                rounds.insert(repo.clone(), other);
                Err(unknown(id))
            }
            None => Err(unknown(id)),
        }
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
        assert!(round.protected.contains(&id));
        assert!(round.marks.contains(&ChunkId([2; 32])));
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
