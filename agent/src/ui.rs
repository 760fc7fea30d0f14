//! `ringvault ui`: a local web page for browsing the repository.
//!
//! An HTTP/1.1 server (axum) on a loopback address serves a static page
//! (`ui/index.html`, `ui/app.js`, `ui/style.css`, built into the binary;
//! nothing is fetched from elsewhere, so it works offline) and a JSON API
//! under `/api` built on [`crate::browse`] and [`crate::restore`]:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /api/snapshots` | every snapshot, oldest first ([`SnapshotInfo`]) |
//! | `GET /api/tree?snapshot=ID&path=P` | a directory's entries ([`Listing`]) |
//! | `GET /api/vfs?path=P` | a directory of the repository's view, as the mount shows it (`hosts/`, `latest`, `snapshots/`; [`VfsListing`]) |
//! | `GET /api/versions?path=P` | every version of a path ([`browse::Version`]) |
//! | `GET /api/diff?from=ID&to=ID&path=P` | [`browse::DiffReport`] |
//! | `GET /api/file?snapshot=ID&path=P` | a file's bytes, as a download |
//! | `POST /api/restore` `{snapshot, path, target, overwrite, dry_run}` | [`RestoreResult`] |
//!
//! `ID` is a full snapshot id, a unique prefix of 4 hex digits or more, or
//! `latest`; `P` is a `/`-separated path inside the snapshot (empty for its
//! root). Errors are JSON `{"error": message, "code": word}` with a 4xx or
//! 5xx status.
//!
//! # Access
//!
//! Anyone on the machine can reach a loopback port, and a web page in any
//! browser tab can send requests to one. So every `/api` request must carry
//! the access token printed at start (32 random bytes, hex): as
//! `Authorization: Bearer TOKEN`, or as `?token=TOKEN` for download links
//! (which the browser follows without headers). Tokens are compared in
//! constant time; a missing or wrong one gets 401. The page reads the token
//! from the URL's fragment (`#token=...`), which browsers never send to a
//! server. The static files carry no repository data and need no token.
//! Responses forbid framing, sniffing, referrers, caching and any source
//! but this server (a `Content-Security-Policy`).
//!
//! A restore keeps what the target already holds unless the request names
//! another `overwrite` policy than the default `never` (`ui/restore.rs`
//! says why, and what it answers).
//!
//! A file is streamed chunk by chunk (a few fetched ahead), never held whole
//! in memory. A restore runs in its own task, so a browser that goes away
//! does not cut it short.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{Content, Entry, EntryKind};
use ringvault_common::{ChunkId, SnapshotId};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::RwLock;
use tracing::Instrument;

use crate::browse::{self, Trees};
use crate::client::ClientError;
use crate::repo::Repo;
use crate::vfs::{self, Place};

mod restore;

pub use restore::{RestoreFailure, RestoreRequest, RestoreResult};

/// Chunks of a downloaded file fetched ahead of the one being sent.
const CHUNKS_AHEAD: usize = 2;

/// How long open connections (a download, say) may go on after SIGINT or
/// SIGTERM before the server stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// Only this server, no inline code: the page needs nothing else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Serves the ui for `repo` on `listen` until SIGINT or SIGTERM. First
/// prints one line to stdout, `ringvault ui: http://ADDR/#token=TOKEN`
/// (flushed), the address to open.
///
/// # Errors
/// A `listen` address that is not loopback, one that cannot be bound, or a
/// stdout that cannot be written.
pub async fn run(repo: Arc<Repo>, listen: SocketAddr) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    check_loopback(listen).map_err(anyhow::Error::msg)?;
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let token = Token::random();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ringvault ui: {}", page_url(addr, &token)).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    tracing::info!(%addr, "ui listening");
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    serve(repo, listener, token, shutdown)
        .await
        .context("serving the ui")
}

/// The address of the page, with its token: `http://ADDR/#token=TOKEN`.
pub fn page_url(addr: SocketAddr, token: &Token) -> String {
    format!("http://{addr}/#token={}", token.as_str())
}

/// Parses a `--listen` value: `IP:PORT` (or `localhost:PORT`) on a loopback
/// address (port 0 picks a free one).
///
/// # Errors
/// A malformed address, or one that is not loopback: the ui serves this
/// machine only.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let addr = match text.strip_prefix("localhost:") {
        Some(port) => port
            .parse()
            .map(|p| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p))
            .map_err(|e| format!("{text:?}: bad port ({e})"))?,
        None => text
            .parse()
            .map_err(|e| format!("{text:?} is not IP:PORT ({e})"))?,
    };
    check_loopback(addr)?;
    Ok(addr)
}

fn check_loopback(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{addr} is not a loopback address: the ui serves this machine only \
             (use 127.0.0.1:PORT or [::1]:PORT)"
        ))
    }
}

/// Serves the ui on `listener` until `shutdown` completes; then lets open
/// connections finish for up to 5 s.
///
/// # Errors
/// Not in practice: accept errors are retried, and connection errors end
/// only their connection.
pub async fn serve(
    repo: Arc<Repo>,
    listener: TcpListener,
    token: Token,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel();
    let signal = async move {
        shutdown.await;
        // The receiver is gone only if the server already stopped.
        let _ = fired_tx.send(());
    };
    let server = axum::serve(listener, router(repo, token))
        .with_graceful_shutdown(signal)
        .into_future();
    let grace = async move {
        if fired_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result,
        () = grace => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "ui connections still open at shutdown; abandoning them");
            Ok(())
        }
    }
}

/// The ui's routes: the page at `/`, the API under `/api` (token required).
/// For [`serve`], or a test that drives the router directly.
pub fn router(repo: Arc<Repo>, token: Token) -> Router {
    let ui = Arc::new(Ui {
        repo,
        token,
        snapshots: RwLock::new(HashMap::new()),
    });
    let api = Router::new()
        .route("/snapshots", get(api_snapshots))
        .route("/tree", get(api_tree))
        .route("/vfs", get(api_vfs))
        .route("/versions", get(api_versions))
        .route("/diff", get(api_diff))
        .route("/file", get(api_file))
        .route("/restore", post(restore::api_restore))
        .fallback(api_unknown)
        .layer(middleware::from_fn_with_state(ui.clone(), require_token));
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .nest("/api", api)
        .fallback(not_found)
        .layer(middleware::from_fn(common_headers))
        .with_state(ui)
}

/// The secret every API request carries: 32 random bytes as 64 hex digits.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A fresh token from the OS random source.
    pub fn random() -> Self {
        Self(hex::encode(crate::repo::random::<32>()))
    }

    /// The token's text, as it goes into a URL or header.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token, in time that does not depend on where
    /// they differ (the length, always 64, is no secret).
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The server's state.
struct Ui {
    repo: Arc<Repo>,
    token: Token,
    /// Snapshot records seen, by id (records never change, so a hit needs
    /// no round trip to the cluster).
    snapshots: RwLock<HashMap<SnapshotId, Snapshot>>,
}

impl Ui {
    /// Lists the snapshots from the cluster (oldest first) and remembers
    /// them.
    async fn refresh(&self) -> Result<Vec<(SnapshotId, Snapshot)>, ApiError> {
        let all = self
            .repo
            .snapshots()
            .await
            .map_err(|e| ApiError::from_library(e, StatusCode::INTERNAL_SERVER_ERROR))?;
        *self.snapshots.write().await = all.iter().cloned().collect();
        Ok(all)
    }

    /// Resolves a snapshot selector: a full id (from memory when seen), else
    /// `latest` or a unique prefix.
    async fn snapshot(&self, selector: &str) -> Result<(SnapshotId, Snapshot), ApiError> {
        let Ok(id) = selector.parse::<SnapshotId>() else {
            return self
                .repo
                .find_snapshot(selector)
                .await
                .map_err(|e| ApiError::from_library(e, StatusCode::NOT_FOUND));
        };
        if let Some(s) = self.snapshots.read().await.get(&id) {
            return Ok((id, s.clone()));
        }
        self.refresh().await?;
        let known = self.snapshots.read().await.get(&id).cloned();
        known
            .map(|s| (id, s))
            .ok_or_else(|| ApiError::not_found(format!("no snapshot {selector}")))
    }
}

/// Adds the headers every answer carries, and a span per request (its
/// path only: the query may hold the token).
async fn common_headers(req: Request, next: Next) -> Response {
    let span = tracing::info_span!("ui", method = %req.method(), path = %req.uri().path());
    let mut res = next.run(req).instrument(span).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Lets a request through only with the token (see the module notes).
async fn require_token(State(ui): State<Arc<Ui>>, req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let in_query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
    let allowed = bearer.or(in_query).is_some_and(|t| ui.token.matches(t));
    if allowed {
        return next.run(req).await;
    }
    let mut res = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong access token: open the address `ringvault ui` printed",
    )
    .into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn style_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such page")
}

async fn api_unknown() -> ApiError {
    ApiError::not_found("no such API call")
}

/// One snapshot, as `GET /api/snapshots` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    /// Id, 64 hex digits.
    pub id: String,
    /// Its first 8 hex digits.
    pub short: String,
    /// When the backup started, ns since the Unix epoch.
    pub time_ns: i64,
    /// Host that made it.
    pub host: String,
    /// Agent that made it.
    pub agent: String,
    /// Source paths (lossy UTF-8).
    pub paths: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// The snapshot it was made against, hex.
    pub parent: Option<String>,
    /// Regular files in it.
    pub files: u64,
    /// Directories in it.
    pub dirs: u64,
    /// Logical size of its files, bytes.
    pub bytes: u64,
}

impl SnapshotInfo {
    fn new(id: &SnapshotId, s: &Snapshot) -> Self {
        Self {
            id: id.to_hex(),
            short: id.short(),
            time_ns: s.time_ns,
            host: s.host.clone(),
            agent: s.agent.clone(),
            paths: s
                .paths
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect(),
            tags: s.tags.clone(),
            parent: s.parent.map(|p| p.to_hex()),
            files: s.summary.files,
            dirs: s.summary.dirs,
            bytes: s.summary.bytes,
        }
    }
}

async fn api_snapshots(State(ui): State<Arc<Ui>>) -> Result<Json<Vec<SnapshotInfo>>, ApiError> {
    let all = ui.refresh().await?;
    Ok(Json(
        all.iter().map(|(id, s)| SnapshotInfo::new(id, s)).collect(),
    ))
}

#[derive(Deserialize)]
struct TreeQuery {
    snapshot: String,
    #[serde(default)]
    path: String,
}

/// A directory of a snapshot (`GET /api/tree`).
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// The snapshot, hex id.
    pub snapshot: String,
    /// The directory's path (empty: the snapshot's root).
    pub path: String,
    /// Its entries, by name.
    pub entries: Vec<EntryInfo>,
}

/// One entry of a [`Listing`].
#[derive(Clone, Debug, Serialize)]
pub struct EntryInfo {
    /// Name (lossy UTF-8).
    pub name: String,
    /// Path inside the snapshot.
    pub path: String,
    /// `file`, `dir`, `symlink`, `fifo`, `chardevice`, `blockdevice` or
    /// `socket`.
    pub kind: &'static str,
    /// Size, bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Permission bits.
    pub mode: u32,
    /// Content digest ([`browse::digest`]).
    pub digest: String,
    /// A symlink's target (lossy UTF-8).
    pub target: Option<String>,
}

impl EntryInfo {
    fn new(dir: &str, e: &Entry) -> Self {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        Self {
            path: if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            },
            name,
            kind: kind_name(e.kind),
            size: e.size,
            mtime_ns: e.mtime_ns,
            mode: e.mode & 0o7777,
            digest: browse::digest(e),
            target: match &e.content {
                Content::Symlink(t) => Some(String::from_utf8_lossy(t).into_owned()),
                _ => None,
            },
        }
    }
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Fifo => "fifo",
        EntryKind::CharDevice => "chardevice",
        EntryKind::BlockDevice => "blockdevice",
        EntryKind::Socket => "socket",
    }
}

/// `path` with empty components dropped, `/`-joined.
fn normalize(path: &str) -> String {
    browse::components(path)
        .iter()
        .map(|c| String::from_utf8_lossy(c))
        .collect::<Vec<_>>()
        .join("/")
}

/// The entry at `path` in `snap`, or 404.
async fn entry_at(
    ui: &Ui,
    trees: &mut Trees,
    id: &SnapshotId,
    snap: &Snapshot,
    path: &str,
) -> Result<Entry, ApiError> {
    browse::lookup(&ui.repo, trees, snap.root, path)
        .await
        .map_err(ApiError::library)?
        .ok_or_else(|| ApiError::not_found(format!("no {path:?} in snapshot {}", id.short())))
}

async fn api_tree(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<TreeQuery>,
) -> Result<Json<Listing>, ApiError> {
    let (id, snap) = ui.snapshot(&q.snapshot).await?;
    Ok(Json(
        tree_listing(&ui, &id, &snap, &normalize(&q.path)).await?,
    ))
}

/// The directory at `path` (normalized) in snapshot `id`.
///
/// # Errors
/// 404 when nothing is there, 400 when it is no directory.
async fn tree_listing(
    ui: &Ui,
    id: &SnapshotId,
    snap: &Snapshot,
    path: &str,
) -> Result<Listing, ApiError> {
    let path = path.to_owned();
    let mut trees = Trees::default();
    let tree_id = if path.is_empty() {
        snap.root
    } else {
        match entry_at(ui, &mut trees, id, snap, &path).await?.content {
            Content::Subtree(t) => t,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{path:?} is not a directory"
                )));
            }
        }
    };
    let tree = trees
        .get(&ui.repo, tree_id)
        .await
        .map_err(ApiError::library)?;
    Ok(Listing {
        snapshot: id.to_hex(),
        entries: tree
            .entries
            .iter()
            .map(|e| EntryInfo::new(&path, e))
            .collect(),
        path,
    })
}

#[derive(Deserialize)]
struct VfsQuery {
    #[serde(default)]
    path: String,
}

/// A directory of the repository's view ([`crate::vfs`], the mount's
/// directories), `GET /api/vfs?path=`: one of its top levels, or, below a
/// snapshot's directory, the snapshot's own [`Listing`].
#[derive(Serialize)]
#[serde(untagged)]
pub enum VfsListing {
    /// `/`, `snapshots`, `hosts` or `hosts/<host>`.
    Top {
        /// The directory's path in the view (normalized).
        path: String,
        /// Its entries, in the view's order.
        entries: Vec<VfsEntry>,
    },
    /// A directory inside a snapshot.
    Tree(Listing),
}

/// One entry of a top-level directory of the view.
#[derive(Serialize)]
pub struct VfsEntry {
    /// Its name in the view.
    pub name: String,
    /// `dir`, or `symlink` for `latest`.
    pub kind: &'static str,
    /// The snapshot it is (or `latest` points to), hex id.
    pub snapshot: Option<String>,
}

async fn api_vfs(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<VfsQuery>,
) -> Result<Json<VfsListing>, ApiError> {
    let all = ui.refresh().await?;
    let view = vfs::Listing::new(&all);
    let (place, rest) = view
        .resolve(&q.path)
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    if let Place::Snapshot(info) = place {
        let snap = all
            .iter()
            .find_map(|(id, s)| (*id == info.id).then_some(s))
            .ok_or_else(|| ApiError::not_found(format!("no snapshot {}", info.id.short())))?;
        let listing = tree_listing(&ui, &info.id, snap, &rest.join("/")).await?;
        return Ok(Json(VfsListing::Tree(listing)));
    }
    let newest = view
        .latest
        .as_ref()
        .and_then(|name| view.snapshots.get(name))
        .map(|info| info.id.to_hex());
    let entries = view
        .children(&place)
        .into_iter()
        .map(|(name, child)| {
            let (kind, snapshot) = match child {
                Place::Latest => ("symlink", newest.clone()),
                Place::Snapshot(info) => ("dir", Some(info.id.to_hex())),
                _ => ("dir", None),
            };
            VfsEntry {
                name,
                kind,
                snapshot,
            }
        })
        .collect();
    Ok(Json(VfsListing::Top {
        path: normalize(&q.path),
        entries,
    }))
}

#[derive(Deserialize)]
struct VersionsQuery {
    path: String,
}

async fn api_versions(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<VersionsQuery>,
) -> Result<Json<Vec<browse::Version>>, ApiError> {
    let path = normalize(&q.path);
    if path.is_empty() {
        return Err(ApiError::bad_request("give a path inside the snapshots"));
    }
    let versions = browse::versions(&ui.repo, &path)
        .await
        .map_err(|e| ApiError::from_library(e, StatusCode::NOT_FOUND))?;
    Ok(Json(versions))
}

#[derive(Deserialize)]
struct DiffQuery {
    from: String,
    to: String,
    #[serde(default)]
    path: String,
}

async fn api_diff(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<DiffQuery>,
) -> Result<Json<browse::DiffReport>, ApiError> {
    let (a, sa) = ui.snapshot(&q.from).await?;
    let (b, sb) = ui.snapshot(&q.to).await?;
    let report = browse::diff(&ui.repo, (a, sa.root), (b, sb.root), &normalize(&q.path))
        .await
        .map_err(|e| ApiError::from_library(e, StatusCode::NOT_FOUND))?;
    Ok(Json(report))
}

#[derive(Deserialize)]
struct FileQuery {
    snapshot: String,
    path: String,
}

/// A file's bytes as a download, streamed: its chunks are fetched in order,
/// [`CHUNKS_AHEAD`] ahead. A chunk that cannot be read ends the response
/// early (the browser reports the download as failed).
async fn api_file(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<FileQuery>,
) -> Result<Response, ApiError> {
    let (id, snap) = ui.snapshot(&q.snapshot).await?;
    let path = normalize(&q.path);
    let entry = entry_at(&ui, &mut Trees::default(), &id, &snap, &path).await?;
    let Content::Chunks(chunks) = &entry.content else {
        return Err(ApiError::bad_request(format!(
            "{path:?} is not a regular file"
        )));
    };
    let chunks: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
    let repo = ui.repo.clone();
    let body = futures::stream::iter(chunks)
        .map(move |chunk| {
            let repo = repo.clone();
            async move {
                repo.read_chunk(chunk).await.map_err(|e| {
                    tracing::warn!(%chunk, error = %e, "a download stopped: a chunk cannot be read");
                    std::io::Error::other(e.to_string())
                })
            }
        })
        .buffered(CHUNKS_AHEAD);
    let name = String::from_utf8_lossy(&entry.name).into_owned();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, entry.size)
        .header(header::CONTENT_DISPOSITION, content_disposition(&name))
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `attachment` with the name twice: a plain-ASCII fallback, and the exact
/// name percent-encoded (RFC 6266, RFC 8187).
fn content_disposition(name: &str) -> String {
    let plain: String = name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut exact = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            exact.push(char::from(b));
        } else {
            exact.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{plain}\"; filename*=UTF-8''{exact}")
}

/// An API error: a status and a message, answered as JSON
/// `{"error": message, "code": word}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// An error from reading the repository.
    fn library(e: anyhow::Error) -> Self {
        Self::from_library(e, StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// An error from the browse or restore library: the cluster's errors
    /// by kind; an error with no cause under it is one of the library's own
    /// refusals of its input (`no snapshot holds ...`, `no snapshot abcd`),
    /// answered with `refused`; anything else is 500.
    fn from_library(e: anyhow::Error, refused: StatusCode) -> Self {
        let status = match e.chain().find_map(|c| c.downcast_ref::<ClientError>()) {
            Some(ClientError::Unreachable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Some(ClientError::CertificateRefused { .. } | ClientError::Forbidden(_)) => {
                StatusCode::FORBIDDEN
            }
            Some(_) => StatusCode::BAD_GATEWAY,
            None if e.chain().count() == 1 => refused,
            None => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = format!("{e:#}"), "ui request failed");
        }
        Self::new(status, format!("{e:#}"))
    }

    fn code(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "bad-request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not-found",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::BAD_GATEWAY => "cluster",
            _ => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.code() });
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        let t = Token::random();
        assert_eq!(t.as_str().len(), 64);
        let same = String::from(t.as_str());
        assert!(t.matches(&same));
        let mut other = t.as_str().to_owned().into_bytes();
        other[63] = if other[63] == b'0' { b'1' } else { b'0' };
        assert!(!t.matches(std::str::from_utf8(&other).unwrap()));
        assert!(!t.matches(&t.as_str()[..63]));
        assert!(!t.matches(""));
        assert_ne!(Token::random().as_str(), t.as_str());
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn only_loopback_addresses_are_served() {
        assert_eq!(
            parse_listen("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(parse_listen("[::1]:8080").unwrap().port(), 8080);
        assert_eq!(
            parse_listen("localhost:7000").unwrap(),
            "127.0.0.1:7000".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_listen("0.0.0.0:8080").is_err());
        assert!(parse_listen("[::]:8080").is_err());
        assert!(parse_listen("192.168.1.2:80").is_err());
        assert!(parse_listen("localhost").is_err());
    }

    #[test]
    fn download_names_are_quoted_safely() {
        assert_eq!(
            content_disposition("notes.txt"),
            "attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt"
        );
        assert_eq!(
            content_disposition("a \"b\"\\é.txt"),
            "attachment; filename=\"a _b___.txt\"; filename*=UTF-8''a%20%22b%22%5C%C3%A9.txt"
        );
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize("/src//docs/"), "src/docs");
        assert_eq!(normalize(""), "");
        assert_eq!(kind_name(EntryKind::Dir), "dir");
    }
}
