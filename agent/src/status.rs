//! The running agent's control socket. `ringvault agent` listens on a Unix
//! socket in its state directory (the directory 0700, the socket 0600: only
//! its user can ask); `ringvault status` connects, and the agent writes one
//! JSON [`AgentStatus`] and closes. Asking needs no password.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::backup::Counters;
use crate::repo::Repo;

/// The socket's file name in the repository's state directory.
pub const SOCKET_NAME: &str = "agent.sock";
/// Largest status answer read, bytes.
const MAX_ANSWER: u64 = 1 << 20;

/// What the agent is doing, as `ringvault status --json` prints it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentStatus {
    /// The agent's process id.
    pub pid: u32,
    /// The repository it backs up into.
    pub repository: String,
    /// The paths it watches.
    pub paths: Vec<String>,
    /// Paths changed and not yet in a snapshot.
    pub dirty_paths: usize,
    /// The next snapshot scans everything (events were lost, or a periodic
    /// full scan is due).
    pub full_scan_pending: bool,
    /// When the next snapshot starts if nothing else changes, ms from now.
    pub next_snapshot_in_ms: Option<u64>,
    /// The last snapshot taken.
    pub last_snapshot: Option<LastSnapshot>,
    /// The last snapshot that failed, if it failed after the last success.
    pub last_error: Option<String>,
    /// The snapshot being made.
    pub in_progress: Option<InProgress>,
    /// The cluster's servers and whether each is thought up.
    pub servers: Vec<ServerState>,
}

/// A snapshot the agent took.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastSnapshot {
    /// Its id, hex.
    pub id: String,
    /// When it was stored, RFC 3339.
    pub time: String,
}

/// The snapshot being made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InProgress {
    /// Since when, ms.
    pub elapsed_ms: u64,
    /// Whether it scans everything.
    pub full_scan: bool,
    /// Files scanned so far.
    pub files: u64,
    /// Bytes read so far.
    pub bytes_read: u64,
    /// Sealed bytes sent so far.
    pub sent_bytes: u64,
}

/// A server of the cluster map.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerState {
    /// Node id.
    pub node: u32,
    /// Its address.
    pub address: String,
    /// Not failed recently.
    pub up: bool,
}

/// What the agent's loop shares with the socket.
#[derive(Default)]
pub struct Shared {
    /// Everything but the live parts below.
    pub status: AgentStatus,
    /// When the next snapshot is due.
    pub due: Option<tokio::time::Instant>,
    /// The snapshot in progress: its start, whether it scans everything,
    /// and its counters.
    pub running: Option<(tokio::time::Instant, bool, Arc<Counters>)>,
}

/// The control socket of the agent for `config`'s repository.
///
/// # Errors
/// When the state directory cannot be worked out.
pub fn socket_path(config: &ringvault_common::config::AgentConfig) -> anyhow::Result<PathBuf> {
    Ok(crate::repo::state_dir(config)?.join(SOCKET_NAME))
}

/// Listens on `path` and answers every connection with the current status.
/// Refuses to start when another agent answers there.
///
/// # Errors
/// When another agent holds the socket, or it cannot be made.
pub async fn listen(
    path: &Path,
    shared: Arc<Mutex<Shared>>,
    repo: Arc<Repo>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let dir = path.parent().context("socket path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another agent is running for this repository ({} answers)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let mut conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(e) => {
                    // Out of file descriptors, say: do not spin.
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let answer = current(&shared, &repo);
            tokio::spawn(async move {
                let mut text = serde_json::to_vec(&answer).unwrap_or_default();
                text.push(b'\n');
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.write_all(&text)).await;
            });
        }
    }))
}

fn current(shared: &Mutex<Shared>, repo: &Repo) -> AgentStatus {
    let now = tokio::time::Instant::now();
    let s = shared.lock();
    let mut status = s.status.clone();
    status.next_snapshot_in_ms = s
        .due
        .map(|d| d.saturating_duration_since(now).as_millis() as u64);
    status.in_progress = s.running.as_ref().map(|(start, full, c)| {
        use std::sync::atomic::Ordering::Relaxed;
        InProgress {
            elapsed_ms: now.saturating_duration_since(*start).as_millis() as u64,
            full_scan: *full,
            files: c.files.load(Relaxed),
            bytes_read: c.bytes_read.load(Relaxed),
            sent_bytes: c.sent_bytes.load(Relaxed),
        }
    });
    status.servers = repo
        .cluster
        .servers()
        .into_iter()
        .map(|(node, address, up)| ServerState {
            node: node.0,
            address,
            up,
        })
        .collect();
    status
}

/// Asks the agent listening on `path`.
///
/// # Errors
/// When no agent answers there, or the answer is not a status.
pub async fn ask(path: &Path) -> anyhow::Result<AgentStatus> {
    let conn = tokio::time::timeout(Duration::from_secs(5), UnixStream::connect(path))
        .await
        .ok()
        .and_then(Result::ok);
    let Some(conn) = conn else {
        bail!(
            "no agent is running for this repository (nothing answers at {})",
            path.display()
        );
    };
    let mut text = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        conn.take(MAX_ANSWER).read_to_end(&mut text),
    )
    .await
    .context("the agent did not answer within 5 s")??;
    serde_json::from_slice(&text).context("the agent's answer is not a status")
}

/// Now, RFC 3339, seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
