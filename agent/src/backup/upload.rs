//! The uploader of a backup: chunks deduplicated against those seen,
//! asked for in batched has-queries, sealed and stored in batches.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use ringvault_common::ChunkId;
use ringvault_common::seal;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::repo::{Repo, random};

use super::{Counters, Upload};

/// A batch is sent when it holds this many chunks...
const BATCH_CHUNKS: usize = 512;
/// ...or this many bytes.
const BATCH_BYTES: usize = 4 << 20;
/// How long a partial batch waits for more chunks before it is sent.
const BATCH_LINGER: Duration = Duration::from_millis(20);
/// The seen-set is cleared past this many ids (a bounded cache: forgetting
/// only costs a has-query).
const SEEN_LIMIT: usize = 1 << 18;

/// Receives chunks, skips those seen or held by the cluster, seals and
/// stores the rest, several batches at once.
pub(super) async fn upload_loop(
    repo: Arc<Repo>,
    mut rx: mpsc::Receiver<Upload>,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let mut seen: HashSet<ChunkId> = HashSet::new();
    let mut batch: Vec<Upload> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut inflight: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let limit = repo.config.upload_concurrency;
    loop {
        // A partial batch goes out when the walker pauses (it may be waiting
        // for budget this very batch holds) as well as when it fills up.
        let (next, idle) = match tokio::time::timeout(BATCH_LINGER, rx.recv()).await {
            Ok(next) => (next, false),
            Err(_) => (None, true),
        };
        let done = next.is_none() && !idle;
        if let Some(u) = next {
            if seen.len() >= SEEN_LIMIT {
                seen.clear();
            }
            if seen.insert(u.id) {
                batch_bytes += u.data.len();
                batch.push(u);
            }
        }
        if !batch.is_empty()
            && (done || idle || batch.len() >= BATCH_CHUNKS || batch_bytes >= BATCH_BYTES)
        {
            while inflight.len() >= limit {
                if let Some(r) = inflight.join_next().await {
                    r.context("upload task")??;
                }
            }
            let work = std::mem::take(&mut batch);
            batch_bytes = 0;
            inflight.spawn(upload_batch(repo.clone(), work, counters.clone()));
        }
        if done {
            break;
        }
    }
    while let Some(r) = inflight.join_next().await {
        r.context("upload task")??;
    }
    Ok(())
}

async fn upload_batch(
    repo: Arc<Repo>,
    batch: Vec<Upload>,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let ids: Vec<ChunkId> = batch.iter().map(|u| u.id).collect();
    let present = repo
        .cluster
        .has(&ids)
        .await
        .context("asking the cluster which chunks it holds")?;
    let missing: Vec<Upload> = batch
        .into_iter()
        .zip(present)
        .filter(|(_, p)| !p)
        .map(|(u, _)| u)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let keys_repo = repo.clone();
    let sealed =
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(ChunkId, Bytes, usize)>> {
            missing
                .iter()
                .map(|u| {
                    let blob = seal::seal(&keys_repo.keys, &u.id, &u.data, random(), true)?;
                    Ok((u.id, Bytes::from(blob), u.data.len()))
                })
                .collect()
        })
        .await
        .context("sealing task")??;
    let plain: u64 = sealed.iter().map(|(_, _, n)| *n as u64).sum();
    let sent: u64 = sealed.iter().map(|(_, b, _)| b.len() as u64).sum();
    repo.cluster
        .put(sealed.into_iter().map(|(id, b, _)| (id, b)).collect())
        .await
        .context("storing chunks")?;
    counters.new_bytes.fetch_add(plain, Ordering::Relaxed);
    counters.sent_bytes.fetch_add(sent, Ordering::Relaxed);
    Ok(())
}
