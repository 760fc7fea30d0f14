//! `ringvault agent`: watches the configured paths and takes a complete
//! snapshot once changes settle.
//!
//! The first snapshot after start scans everything against the local index
//! (the agent may have missed changes while it was down). After that, each
//! snapshot reads again only the paths the watcher reported, and takes
//! every other subtree from the previous snapshot's trees by id. A snapshot
//! starts once no change has come for `quiet-ms`, or once the oldest
//! unsaved change is `max-delay-ms` old. Lost events, and every
//! `full-scan-interval-s`, mean a full scan. Changes that arrive while a
//! snapshot is being made go into the next one.
//!
//! SIGTERM or Ctrl-C stop the agent after the snapshot in progress, if any,
//! is finished: the snapshot record is written last, so stopping at any
//! point leaves no partial snapshot.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use ringvault_common::SnapshotId;
use ringvault_common::snapshot::Snapshot;
use ringvault_net::service;

use crate::backup::{self, BackupOptions, Counters};
use crate::repo::Repo;
use crate::status;
use crate::watch::{Change, DirtySet, Watcher};

/// Paths under watch, and the watcher's changes.
pub struct Watching {
    paths: Vec<PathBuf>,
    watcher: Watcher,
    changes: tokio::sync::mpsc::Receiver<Change>,
}

impl Watching {
    /// Starts watching `paths` (made absolute), buffering `queue` changes.
    ///
    /// # Errors
    /// When `paths` is empty, a path cannot be resolved, or the watcher
    /// cannot start.
    pub fn start(paths: &[PathBuf], queue: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !paths.is_empty(),
            "no paths to watch: list them in the agent config's `paths`"
        );
        let paths: Vec<PathBuf> = paths
            .iter()
            .map(|p| std::path::absolute(p).with_context(|| format!("resolving {}", p.display())))
            .collect::<anyhow::Result<_>>()?;
        let (watcher, changes) = Watcher::start(&paths, queue)?;
        Ok(Self {
            paths,
            watcher,
            changes,
        })
    }
}

/// Runs the agent until SIGTERM or Ctrl-C. With `scan_first`, the first
/// snapshot, taken at once, scans everything; without, the caller has just
/// taken a snapshot of the same paths (after `watching` started) and the
/// agent waits for changes.
///
/// # Errors
/// When the watcher stops. A snapshot that fails is logged and retried
/// after the quiet period, with its dirty set kept.
pub async fn run(repo: Arc<Repo>, watching: Watching, scan_first: bool) -> anyhow::Result<()> {
    let cfg = &repo.config;
    let quiet = Duration::from_millis(cfg.quiet_ms);
    let max_delay = Duration::from_millis(cfg.max_delay_ms);
    let full_scan =
        (cfg.full_scan_interval_s > 0).then(|| Duration::from_secs(cfg.full_scan_interval_s));
    let Watching {
        paths,
        watcher,
        mut changes,
    } = watching;
    let mut dirty = DirtySet::default();
    dirty.rescan_all = scan_first;
    let mut first_change = scan_first.then(Instant::now);
    // As if the last change were a quiet period ago: a first scan starts now.
    let mut last_change = Instant::now()
        .checked_sub(quiet)
        .unwrap_or_else(Instant::now);
    let mut last_full_scan = Instant::now();
    let shutdown = ringvault_net::shutdown_signal();
    tokio::pin!(shutdown);
    // The snapshot being made, and the dirty set it covers (kept to retry
    // with if it fails). Changes go on being collected meanwhile.
    let mut running: Option<(JoinHandle<anyhow::Result<Taken>>, DirtySet)> = None;
    // The latest snapshot of these paths, once known: the next one's parent.
    let mut last: Option<(SnapshotId, Snapshot)> = None;
    let shared = Arc::new(Mutex::new(status::Shared {
        status: status::AgentStatus {
            pid: std::process::id(),
            repository: cfg.repository.clone(),
            paths: paths.iter().map(|p| p.display().to_string()).collect(),
            ..Default::default()
        },
        ..Default::default()
    }));
    let state = crate::repo::state_dir(cfg)?;
    let socket = status::socket_path(cfg)?;
    let listener = status::listen(&socket, shared.clone(), repo.clone()).await?;
    tracing::info!(paths = ?paths, socket = %socket.display(), "agent watching");
    service::ready(&format!("watching {} path(s)", paths.len()));
    service::spawn_watchdog();
    loop {
        let due = first_change.map(|first| (last_change + quiet).min(first + max_delay));
        // With paths the watcher could not cover, scans are all there is.
        let scan_every = if watcher.degraded() {
            Some(full_scan.map_or(DEGRADED_SCAN, |every| every.min(DEGRADED_SCAN)))
        } else {
            full_scan
        };
        let full_scan_due = scan_every.map(|every| last_full_scan + every);
        {
            let mut s = shared.lock();
            s.status.dirty_paths = dirty.len();
            s.status.full_scan_pending = dirty.rescan_all;
            s.due = due;
        }
        tokio::select! {
            () = &mut shutdown => break,
            change = changes.recv() => {
                let Some(change) = change else {
                    anyhow::bail!("the file-system watcher stopped");
                };
                match change {
                    // The agent's own writes (index, key cache) are no change.
                    Change::Paths(p) => p
                        .into_iter()
                        .filter(|p| !p.starts_with(&state))
                        .for_each(|p| dirty.mark(p)),
                    Change::Lost(why) => {
                        tracing::warn!(reason = %why, "file-system events lost; the next snapshot scans everything");
                        dirty.rescan_all = true;
                    }
                }
                last_change = Instant::now();
                first_change.get_or_insert(last_change);
            }
            () = sleep_until(full_scan_due), if full_scan_due.is_some() => {
                dirty.rescan_all = true;
                first_change.get_or_insert(Instant::now());
                last_full_scan = Instant::now();
            }
            () = sleep_until(due), if due.is_some() && running.is_none() => {
                let work = std::mem::take(&mut dirty);
                first_change = None;
                if work.rescan_all {
                    last_full_scan = Instant::now();
                }
                let counters = Arc::new(Counters::default());
                {
                    let mut s = shared.lock();
                    s.running = Some((Instant::now(), work.rescan_all, counters.clone()));
                }
                let task = tokio::spawn(snapshot(
                    repo.clone(),
                    paths.clone(),
                    work.clone(),
                    counters,
                    last.clone(),
                ));
                running = Some((task, work));
            }
            result = finished(&mut running) => {
                let Some((_, work)) = running.take() else { continue };
                let failure = match result {
                    Ok(Ok(taken)) => {
                        let id = taken.parent.0;
                        let stored = taken.stored;
                        last = Some(taken.parent);
                        if stored {
                            let time = status::now_rfc3339();
                            service::status(&format!("last snapshot {} at {time}", id.short()));
                            {
                                let mut s = shared.lock();
                                s.status.last_snapshot =
                                    Some(status::LastSnapshot { id: id.to_hex(), time });
                            }
                        }
                        None
                    }
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(e) => Some(format!("the snapshot task failed: {e}")),
                };
                {
                    let mut s = shared.lock();
                    s.running = None;
                    s.status.last_error.clone_from(&failure);
                }
                if let Some(e) = failure {
                    // Keep what was dirty for the next attempt.
                    tracing::error!(error = %e, "snapshot failed; retrying after the quiet period");
                    merge(&mut dirty, work);
                    last_change = Instant::now();
                    first_change.get_or_insert(last_change);
                }
            }
        }
    }
    service::stopping();
    if let Some((task, _)) = running {
        tracing::info!("finishing the snapshot in progress before stopping");
        match tokio::time::timeout(STOP_GRACE, task).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("abandoned the snapshot in progress (it leaves nothing behind)")
            }
        }
    }
    listener.abort();
    let _ = std::fs::remove_file(&socket);
    tracing::info!("agent stopped");
    Ok(())
}

/// The full-scan interval at most while some path is not watched.
const DEGRADED_SCAN: Duration = Duration::from_secs(300);

/// How long a stopping agent waits for the snapshot in progress.
const STOP_GRACE: Duration = Duration::from_secs(60);

async fn finished(
    running: &mut Option<(JoinHandle<anyhow::Result<Taken>>, DirtySet)>,
) -> Result<anyhow::Result<Taken>, tokio::task::JoinError> {
    match running {
        Some((task, _)) => task.await,
        None => std::future::pending().await,
    }
}

/// What a snapshot attempt gives the loop: whether one was stored, and the
/// snapshot that is now the parent of the next.
struct Taken {
    stored: bool,
    parent: (SnapshotId, Snapshot),
}

async fn snapshot(
    repo: Arc<Repo>,
    paths: Vec<PathBuf>,
    dirty: DirtySet,
    counters: Arc<Counters>,
    parent: Option<(SnapshotId, Snapshot)>,
) -> anyhow::Result<Taken> {
    let (full, changed) = (dirty.rescan_all, dirty.len());
    let report = backup::backup(
        repo.clone(),
        BackupOptions {
            paths,
            dirty: (!dirty.rescan_all).then_some(dirty),
            counters: Some(counters),
            skip_unchanged: true,
            parent,
            ..BackupOptions::default()
        },
    )
    .await?;
    if report.unchanged {
        tracing::info!(
            snapshot = %report.id.short(),
            full_scan = full,
            changed_paths = changed,
            "nothing changed since the last snapshot; none stored"
        );
    } else {
        tracing::info!(
            snapshot = %report.id.short(),
            full_scan = full,
            changed_paths = changed,
            bytes_read = report.snapshot.summary.bytes_read,
            sent = report.snapshot.summary.sent_bytes,
            errors = report.errors.len(),
            "snapshot saved"
        );
        apply_retention(&repo, &report.snapshot.host).await;
    }
    Ok(Taken {
        stored: !report.unchanged,
        parent: (report.id, report.snapshot),
    })
}

/// With `apply-retention`, forgets this host's snapshots that the config's
/// `[retention]` policy does not keep. A failure is logged, not fatal: the
/// snapshot is stored.
async fn apply_retention(repo: &Arc<Repo>, host: &str) {
    let config = &repo.config;
    if !config.apply_retention || config.retention.is_empty() {
        return;
    }
    if let Err(e) = repo.require_admin("apply-retention") {
        tracing::warn!(error = %e, "not applying the retention policy");
        return;
    }
    match crate::gc::forget(repo, &config.retention, Some(host), false).await {
        Ok(r) => {
            let removed: usize = r.groups.iter().map(|g| g.remove.len()).sum();
            if removed > 0 {
                tracing::info!(removed, "retention policy applied");
            }
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "applying the retention policy failed"),
    }
}

fn merge(into: &mut DirtySet, from: DirtySet) {
    into.rescan_all |= from.rescan_all;
    for p in from.into_paths() {
        into.mark(p);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
