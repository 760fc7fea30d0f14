//! Chunk fetches for a restore, batched per server and spread over the
//! replicas.
//!
//! File tasks ask for chunks one at a time ([`Fetcher::chunk`]). One
//! dispatcher task gathers what is asked while earlier batches are in
//! flight and sends each server one [`Request::GetBlobs`] for up to
//! [`MAX_GET_BLOBS`] of them or [`BATCH_BYTES`] of their expected
//! plaintext, at most [`BATCHES_PER_SERVER`] at once: a
//! tree of small files then costs one request, one index transaction on
//! the server and one blocking-pool hop per batch rather than per file.
//! Batches grow by themselves when the servers are the bottleneck (more is
//! asked while they work) and stay small when they are not (no timer waits
//! to fill them).
//!
//! Each chunk goes to the least loaded of its live replicas (chunks asked
//! and not yet answered), so a restore reads from every server that holds
//! its data, not only from the first in placement order.
//!
//! What a chunk is for can run in the same blocking-pool call that opened
//! it ([`Fetcher::chunk_then`]): a restore makes, writes and finishes a
//! small file there, so a batch of a hundred files costs one hop.
//!
//! A chunk asked for again while it is being fetched (the same file in
//! two places, a chunk many files share) is not fetched again: the later
//! askers get a copy of the first one's answer ([`Sharing`]).
//!
//! A chunk that a batch did not bring back good (not held there, bad,
//! not sent, its server unreachable, or its blob did not open) is fetched
//! alone through [`Repo::read_chunk`], which tries every server in
//! placement order and records bad copies.
//!
//! [`Request::GetBlobs`]: ringvault_common::wire::Request::GetBlobs

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::anyhow;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parking_lot::Mutex;
use ringvault_common::wire::MAX_GET_BLOBS;
use ringvault_common::{ChunkId, NodeId, seal};
use tokio::sync::{mpsc, oneshot};

use crate::client::Fetched;
use crate::repo::Repo;

/// Batches in flight to one server at once: four, so that while the
/// server reads one and another crosses the network, the client opens two
/// on two cores. Measured on 2 cores (N=1, 53k files, restore to tmpfs):
/// 2 x 4 MiB 5.3-5.8 s, 3 x 4 MiB 4.6-5.1 s, 4 x 2 MiB 4.55-4.64 s,
/// 6 x 2 MiB and 8 x 1 MiB no better (`docs/performance.md`).
pub const BATCHES_PER_SERVER: usize = 4;

/// Expected plaintext bytes that close a batch (2 MiB; one larger chunk
/// goes alone): what a batch holds in memory, sealed and then opened,
/// beside the restore's budget; with [`BATCHES_PER_SERVER`], 8 MiB per
/// server. Enough to carry about fifty small files in one request.
pub const BATCH_BYTES: usize = 2 << 20;

/// A chunk's plaintext, or why it could not be had.
type Answer = anyhow::Result<Vec<u8>>;

/// What is done with a chunk's answer, on the blocking pool; it returns
/// what hands the outcome to the asker.
type Then = Box<dyn FnOnce(Answer) -> Reply + Send>;

/// Hands an outcome to its asker (a send that wakes the asker's task).
/// A batch runs its replies together after its last chunk, so the
/// runtime's workers wake once per batch rather than once per chunk.
type Reply = Box<dyn FnOnce() + Send>;

/// One chunk asked for, and what its answer is for.
struct Want {
    id: ChunkId,
    /// Its expected plaintext length, bytes.
    bytes: usize,
    then: Then,
}

/// The error of a fetcher whose dispatcher is gone.
fn stopped() -> anyhow::Error {
    anyhow!("the chunk fetcher stopped")
}

/// Hands out chunks, fetched in batches (see the module notes). Cheap to
/// share by reference; the dispatcher stops when it is dropped and every
/// batch is answered.
pub struct Fetcher {
    /// Unbounded: what is asked is bounded by the callers (a restore holds
    /// a byte budget for every chunk it asks for until it is written).
    wants: mpsc::UnboundedSender<Want>,
}

impl Fetcher {
    /// Starts the dispatcher on the current runtime.
    pub fn start(repo: Arc<Repo>) -> Self {
        let (wants, rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(repo, rx));
        Self { wants }
    }

    /// Chunk `id`'s plaintext, opened and checked against its id;
    /// `bytes` is its expected length (what batches are cut by).
    ///
    /// # Errors
    /// When no server has a good copy, or the dispatcher stopped.
    pub async fn chunk(&self, id: ChunkId, bytes: usize) -> Answer {
        self.chunk_then(id, bytes, Ok).await
    }

    /// Chunk `id`'s plaintext (as [`Fetcher::chunk`]) handed to `then` on
    /// the blocking pool, in the call that opened it; returns what `then`
    /// returns. `then` may block (file I/O), but not for long: the chunks
    /// of its batch opened after it wait for it.
    ///
    /// # Errors
    /// As [`Fetcher::chunk`], or `then`'s error.
    pub async fn chunk_then<T: Send + 'static>(
        &self,
        id: ChunkId,
        bytes: usize,
        then: impl FnOnce(Vec<u8>) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (reply, answer) = oneshot::channel();
        let then: Then = Box::new(move |got: Answer| {
            let outcome = got.and_then(then);
            Box::new(move || {
                let _ = reply.send(outcome);
            })
        });
        self.wants
            .send(Want { id, bytes, then })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The askers of chunks being fetched who came after the first: chunk id
/// to what their answers are for. An id is here while its first asker's
/// fetch is out.
type Later = Arc<Mutex<HashMap<ChunkId, Vec<Then>>>>;

/// Hands the first asker's answer for a chunk to every later asker too;
/// dropped unused (the first asker's `then` dropped unanswered), it drops
/// theirs as well, so that they see "stopped" rather than wait forever.
struct Sharing {
    later: Later,
    id: ChunkId,
    /// Whether `share` took the later askers: the id's entry may by then
    /// belong to a new first asker, which `drop` must leave alone.
    shared: bool,
}

impl Sharing {
    /// Gives every later asker a copy of `answer` (an error as its text);
    /// returns their replies.
    fn share(mut self, answer: &Answer) -> Vec<Reply> {
        let thens = self.take();
        self.shared = true;
        thens
            .into_iter()
            .map(|then| {
                then(match answer {
                    Ok(plain) => Ok(plain.clone()),
                    Err(e) => Err(anyhow!("{e:#}")),
                })
            })
            .collect()
    }

    fn take(&self) -> Vec<Then> {
        self.later.lock().remove(&self.id).unwrap_or_default()
    }
}

impl Drop for Sharing {
    fn drop(&mut self) {
        // Unanswered: the later askers' senders drop here.
        if !self.shared {
            drop(self.take());
        }
    }
}

/// Queues `want`, or, when its chunk is already being fetched, adds it to
/// that fetch's later askers. The first asker's `then` shares its answer.
fn ask_once(later: &Later, want: Want) -> Option<Want> {
    let mut waiting = later.lock();
    if let Some(thens) = waiting.get_mut(&want.id) {
        thens.push(want.then);
        return None;
    }
    waiting.insert(want.id, Vec::new());
    drop(waiting);
    let sharing = Sharing {
        later: later.clone(),
        id: want.id,
        shared: false,
    };
    let first = want.then;
    Some(Want {
        then: Box::new(move |answer: Answer| {
            let mut replies = sharing.share(&answer);
            replies.push(first(answer));
            Box::new(move || replies.into_iter().for_each(|reply| reply()))
        }),
        ..want
    })
}

/// Per server: chunks waiting for a batch, and how many chunks and
/// batches are out.
#[derive(Default)]
struct Queue {
    waiting: Vec<Want>,
    asked: usize,
    batches: usize,
}

impl Queue {
    fn load(&self) -> usize {
        self.waiting.len() + self.asked
    }

    /// The oldest waiting wants, up to [`MAX_GET_BLOBS`] of them or the
    /// first that bring the expected bytes to [`BATCH_BYTES`]; at least one
    /// when any wait.
    fn next_batch(&mut self) -> Vec<Want> {
        let mut bytes = 0usize;
        let mut take = 0;
        for want in self.waiting.iter().take(MAX_GET_BLOBS) {
            take += 1;
            bytes = bytes.saturating_add(want.bytes);
            if bytes >= BATCH_BYTES {
                break;
            }
        }
        self.waiting.drain(..take).collect()
    }
}

/// Routes wants to servers and sends batches until every [`Fetcher`] is
/// gone and every batch is answered.
async fn dispatch(repo: Arc<Repo>, mut rx: mpsc::UnboundedReceiver<Want>) {
    let mut queues: HashMap<NodeId, Queue> = HashMap::new();
    let later: Later = Arc::default();
    let mut batches = FuturesUnordered::new();
    let mut open = true;
    loop {
        for (&node, queue) in &mut queues {
            while !queue.waiting.is_empty() && queue.batches < BATCHES_PER_SERVER {
                let batch = queue.next_batch();
                queue.asked += batch.len();
                queue.batches += 1;
                let repo = repo.clone();
                batches.push(async move {
                    let n = batch.len();
                    fetch_batch(&repo, node, batch).await;
                    (node, n)
                });
            }
        }
        if !open && batches.is_empty() {
            return;
        }
        tokio::select! {
            want = rx.recv(), if open => match want {
                Some(want) => {
                    let mut next = Some(want);
                    while let Some(want) = next {
                        if let Some(want) = ask_once(&later, want) {
                            route(&repo, &mut queues, want);
                        }
                        next = rx.try_recv().ok();
                    }
                }
                None => open = false,
            },
            Some((node, n)) = batches.next() => {
                if let Some(queue) = queues.get_mut(&node) {
                    queue.asked -= n;
                    queue.batches -= 1;
                }
            }
        }
    }
}

/// Queues `want` for the least loaded of its live replicas (the first in
/// placement order on a tie); with none live, fetches it alone.
fn route(repo: &Arc<Repo>, queues: &mut HashMap<NodeId, Queue>, want: Want) {
    let replicas = repo.cluster.live_replicas(&want.id);
    let best = replicas
        .into_iter()
        .min_by_key(|n| queues.get(n).map_or(0, Queue::load));
    match best {
        Some(node) => queues.entry(node).or_default().waiting.push(want),
        None => fetch_alone(repo.clone(), want),
    }
}

/// Asks `node` for `batch`, opens what came back on the blocking pool and
/// hands each want its answer there; what did not come back good is
/// fetched alone.
async fn fetch_batch(repo: &Arc<Repo>, node: NodeId, batch: Vec<Want>) {
    let ids: Vec<ChunkId> = batch.iter().map(|w| w.id).collect();
    let fetched = match repo.cluster.get_many_from(node, &ids).await {
        Ok(fetched) => fetched,
        Err(e) => {
            tracing::debug!(%node, error = %e, "a batched fetch failed; fetching its chunks one by one");
            for want in batch {
                fetch_alone(repo.clone(), want);
            }
            return;
        }
    };
    let mut sealed = Vec::with_capacity(batch.len());
    for (want, got) in batch.into_iter().zip(fetched) {
        match got {
            Fetched::Blob(blob) => sealed.push((want, blob)),
            Fetched::NotFound | Fetched::Corrupt | Fetched::Later => {
                fetch_alone(repo.clone(), want)
            }
        }
    }
    let this = repo.clone();
    let bad = tokio::task::spawn_blocking(move || {
        let mut bad = Vec::new();
        let mut replies = Vec::with_capacity(sealed.len());
        for (want, blob) in sealed {
            match seal::open(&this.keys, &want.id, &blob) {
                Ok(plain) => replies.push((want.then)(Ok(plain))),
                Err(e) => bad.push((want, e.to_string())),
            }
        }
        replies.into_iter().for_each(|reply| reply());
        bad
    })
    .await;
    // On a join error (the blocking pool shutting down with the restore, or
    // a `then` that panicked), the wants not yet answered were dropped with
    // the call: their askers see "stopped".
    for (want, reason) in bad.unwrap_or_default() {
        repo.cluster.report_bad_copy(want.id, node, reason);
        fetch_alone(repo.clone(), want);
    }
}

/// Fetches one chunk through [`Repo::read_chunk`] in its own task.
fn fetch_alone(repo: Arc<Repo>, want: Want) {
    tokio::spawn(async move {
        let got = repo
            .read_chunk(want.id)
            .await
            .map_err(|e| anyhow!("chunk {}: {e}", want.id));
        // Dropped on a join error: the asker sees "stopped".
        let _ = tokio::task::spawn_blocking(move || (want.then)(got)()).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A want for chunk `id` whose answer lands in the returned receiver.
    fn want(id: ChunkId) -> (Want, std::sync::mpsc::Receiver<Answer>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let then: Then = Box::new(move |answer| {
            Box::new(move || {
                let _ = tx.send(answer);
            })
        });
        (Want { id, bytes: 3, then }, rx)
    }

    #[test]
    fn a_chunk_asked_for_again_while_out_is_fetched_once_and_shared() {
        let later: Later = Arc::default();
        let id = ChunkId([7; 32]);
        let (first, first_rx) = want(id);
        let (second, second_rx) = want(id);
        let (other, _) = want(ChunkId([8; 32]));
        let first = ask_once(&later, first).expect("the first asker is queued");
        assert!(ask_once(&later, second).is_none(), "the second rides along");
        assert!(ask_once(&later, other).is_some(), "another chunk is queued");
        (first.then)(Ok(vec![1, 2, 3]))();
        assert_eq!(first_rx.recv().unwrap().unwrap(), vec![1, 2, 3]);
        assert_eq!(second_rx.recv().unwrap().unwrap(), vec![1, 2, 3]);
        // Answered: the next asker fetches it again.
        let (third, _) = want(id);
        assert!(ask_once(&later, third).is_some());
    }

    #[test]
    fn a_chunk_asked_again_as_its_answer_is_shared_keeps_its_new_askers() {
        // A later asker's `then` runs after the shared answer was taken
        // out; in that window the chunk is asked for again (here from
        // inside that `then`, as another file task would on another
        // thread): a new first asker, with a later asker of its own.
        let later: Later = Arc::default();
        let id = ChunkId([5; 32]);
        let (first, _) = want(id);
        let first = ask_once(&later, first).unwrap();
        let (again_tx, again_rx) = std::sync::mpsc::channel();
        let asked = later.clone();
        let riding: Then = Box::new(move |_| {
            let (third, _) = want(id);
            let third = ask_once(&asked, third).expect("a new first asker");
            let (fourth, fourth_rx) = want(id);
            assert!(ask_once(&asked, fourth).is_none());
            let _ = again_tx.send((third, fourth_rx));
            Box::new(|| {})
        });
        assert!(
            ask_once(
                &later,
                Want {
                    id,
                    bytes: 3,
                    then: riding
                }
            )
            .is_none()
        );
        (first.then)(Ok(vec![4]))();
        let (third, fourth_rx) = again_rx.recv().unwrap();
        // The first fetch's end did not drop the new one's later asker.
        (third.then)(Ok(vec![6]))();
        assert_eq!(fourth_rx.recv().unwrap().unwrap(), vec![6]);
    }

    #[test]
    fn later_askers_see_the_first_askers_error_or_its_loss() {
        let later: Later = Arc::default();
        let id = ChunkId([9; 32]);
        let (first, _) = want(id);
        let (second, second_rx) = want(id);
        let first = ask_once(&later, first).unwrap();
        assert!(ask_once(&later, second).is_none());
        (first.then)(Err(anyhow!("no good copy")))();
        let err = second_rx.recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("no good copy"), "{err}");

        // The first asker's `then` dropped unanswered (a batch lost with
        // a stopping restore): the later one is not left waiting.
        let (first, _) = want(id);
        let (second, second_rx) = want(id);
        let first = ask_once(&later, first).unwrap();
        assert!(ask_once(&later, second).is_none());
        drop(first);
        assert!(
            second_rx.recv().is_err(),
            "the later asker's sender dropped"
        );
        assert!(later.lock().is_empty());
    }
}
