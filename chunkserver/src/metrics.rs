//! Prometheus metrics: counters the request loop and background tasks bump,
//! gauges read from a [`NodeStatus`] at scrape time, and a small HTTP server
//! that exposes them as OpenMetrics text on `GET /metrics`.
//!
//! Counters live in [`Metrics`] and only grow (they reset when the process
//! starts, which Prometheus handles). Everything that describes the store
//! (blobs, bytes, hints, backlogs, peers) is not kept here: it is taken from
//! the status passed to [`Metrics::render`], so a scrape reports exactly what
//! `NodeStatus` would say at that moment. Each render builds those gauges in
//! its own short-lived registry, so concurrent scrapes share no state.
//!
//! The endpoint has no authentication: bind it to loopback or a management
//! network ([`bind`], [`serve_on`]).

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use ringvault_common::wire::{NodeStatus, PeerState, StoreState};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The `Content-Type` of a scrape answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long open scrape connections may take to finish once shutdown is
/// asked for; past it they are abandoned and [`serve_on`] returns.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Prefix of every metric name.
const PREFIX: &str = "ringvault";

/// Supplies the node's status once per scrape. It runs on the server's async
/// task, so it must be cheap and must not block.
pub type StatusSource = Arc<dyn Fn() -> NodeStatus + Send + Sync>;

/// The chunk server's counters and the registry that encodes them.
///
/// Create one per process, share it in an `Arc`, and call its methods from
/// wherever the counted thing happens; they are cheap (atomic adds) and never
/// block.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    replicated_blobs: Counter,
    replicated_bytes: Counter,
    hinted_writes: Counter,
    handed_off_blobs: Counter,
    handed_off_bytes: Counter,
    repaired_blobs: Counter,
    repaired_bytes: Counter,
    scrubbed_blobs: Counter,
    scrubbed_bytes: Counter,
    replication_backlog: Gauge<u64, AtomicU64>,
}

/// Labels of `ringvault_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    outcome: String,
}

/// Labels of `ringvault_peers`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    state: &'static str,
}

/// Labels of `ringvault_store_state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    state: &'static str,
}

impl Metrics {
    /// Registers every counter, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests served, by request kind and outcome (ok or an error code)",
            requests.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
            let c = Counter::default();
            match unit {
                Some(unit) => registry.register_with_unit(name, help, unit, c.clone()),
                None => registry.register(name, help, c.clone()),
            }
            c
        };
        let replicated_blobs = counter(
            &mut registry,
            "replicated_blobs",
            "Replica copies (blobs) this node wrote to peers as a write's coordinator",
            None,
        );
        let replicated_bytes = counter(
            &mut registry,
            "replicated",
            "Bytes of the replica copies this node wrote to peers as a write's coordinator",
            Some(Unit::Bytes),
        );
        let hinted_writes = counter(
            &mut registry,
            "hinted_writes",
            "Blob writes placed on a substitute node because a replica was down (hinted handoff)",
            None,
        );
        let handed_off_blobs = counter(
            &mut registry,
            "handed_off_blobs",
            "Blobs this node pushed to their owners by hinted handoff or rebalancing",
            None,
        );
        let handed_off_bytes = counter(
            &mut registry,
            "handed_off",
            "Bytes of the blobs this node pushed to their owners by hinted handoff or rebalancing",
            Some(Unit::Bytes),
        );
        let repaired_blobs = counter(
            &mut registry,
            "repaired_blobs",
            "Blobs this node pulled from co-replicas by anti-entropy repair",
            None,
        );
        let repaired_bytes = counter(
            &mut registry,
            "repaired",
            "Bytes of the blobs this node pulled from co-replicas by anti-entropy repair",
            Some(Unit::Bytes),
        );
        let scrubbed_blobs = counter(
            &mut registry,
            "scrubbed_blobs",
            "Blobs re-read and checked by scrub",
            None,
        );
        let scrubbed_bytes = counter(
            &mut registry,
            "scrubbed",
            "Bytes of the blobs re-read and checked by scrub",
            Some(Unit::Bytes),
        );
        let replication_backlog = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "replication_backlog",
            "Replica writes (blobs) in flight to peers",
            replication_backlog.clone(),
        );
        Metrics {
            registry,
            requests,
            replicated_blobs,
            replicated_bytes,
            hinted_writes,
            handed_off_blobs,
            handed_off_bytes,
            repaired_blobs,
            repaired_bytes,
            scrubbed_blobs,
            scrubbed_bytes,
            replication_backlog,
        }
    }

    /// Counts one request served. Call once per request, when its answer is
    /// sent. `kind` is [`Request::kind`](ringvault_common::wire::Request::kind)
    /// (`"put"`, `"get"`, ...); `outcome` is `"ok"` or the name of the error
    /// code sent (`"NotFound"`). Both become label values, so they must come
    /// from small fixed sets, never from a peer's input.
    pub fn request(&self, kind: &'static str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                kind,
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts replica copies this node, as a write's coordinator, wrote
    /// durably to peers: `blobs` copies of `bytes` bytes in all.
    pub fn replicated(&self, blobs: u64, bytes: u64) {
        self.replicated_blobs.inc_by(blobs);
        self.replicated_bytes.inc_by(bytes);
    }

    /// Counts `blobs` writes placed on a substitute node because a replica
    /// was down (hinted handoff).
    pub fn hinted(&self, blobs: u64) {
        self.hinted_writes.inc_by(blobs);
    }

    /// Counts `blobs` blobs (`bytes` bytes in all) this node pushed to their
    /// owners, by hinted handoff or rebalancing after a map change.
    pub fn handed_off(&self, blobs: u64, bytes: u64) {
        self.handed_off_blobs.inc_by(blobs);
        self.handed_off_bytes.inc_by(bytes);
    }

    /// Counts `blobs` blobs (`bytes` bytes in all) this node pulled from
    /// co-replicas by anti-entropy repair.
    pub fn repaired(&self, blobs: u64, bytes: u64) {
        self.repaired_blobs.inc_by(blobs);
        self.repaired_bytes.inc_by(bytes);
    }

    /// Counts `blobs` blobs (`bytes` bytes in all) re-read and checked by
    /// scrub.
    pub fn scrubbed(&self, blobs: u64, bytes: u64) {
        self.scrubbed_blobs.inc_by(blobs);
        self.scrubbed_bytes.inc_by(bytes);
    }

    /// Sets the number of replica writes (blobs) now in flight to peers.
    /// Call whenever it changes; the last value set is reported.
    pub fn set_replication_backlog(&self, blobs: u64) {
        self.replication_backlog.set(blobs);
    }

    /// Renders every metric as an OpenMetrics text exposition, ending with
    /// `# EOF`. The counters come from this `Metrics`; the gauges that
    /// describe the store, and the scrub cycle count, come from `status`,
    /// which should be taken just before.
    pub fn render(&self, status: &NodeStatus) -> String {
        let mut out = String::with_capacity(4096);
        let scrape = status_registry(status);
        // Encoding only fails if the writer does, and writing to a String
        // cannot fail.
        encode_registry(&mut out, &self.registry).expect("writing to a String");
        encode_registry(&mut out, &scrape).expect("writing to a String");
        encode_eof(&mut out).expect("writing to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A registry of the metrics read from `status`, for one scrape.
fn status_registry(status: &NodeStatus) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register(
        "blobs",
        "Blobs in this node's store",
        ConstGauge::new(status.blobs),
    );
    registry.register_with_unit(
        "stored",
        "Bytes of the blobs in this node's store",
        Unit::Bytes,
        ConstGauge::new(status.bytes),
    );
    registry.register(
        "hints",
        "Blobs this node holds for other owners (hinted handoff, or waiting to move after a map change)",
        ConstGauge::new(status.hints),
    );
    registry.register(
        "repair_backlog",
        "Blobs this node knows it lacks and will pull from co-replicas",
        ConstGauge::new(status.repair_backlog),
    );
    registry.register(
        "quarantined",
        "Blobs quarantined after failing their checksum",
        ConstGauge::new(status.quarantined),
    );
    registry.register_with_unit(
        "scrub",
        "Bytes scrub has checked in the current cycle",
        Unit::Bytes,
        ConstGauge::new(status.scrub_bytes),
    );
    registry.register(
        "scrub_cycles",
        "Scrub cycles completed since the process started",
        ConstCounter::new(status.scrub_cycles),
    );
    registry.register(
        "map_epoch",
        "Epoch of the cluster map this node uses",
        ConstGauge::new(status.epoch),
    );
    let peers = Family::<PeerLabels, Gauge<u64, AtomicU64>>::default();
    for state in [PeerState::Up, PeerState::Down, PeerState::Out] {
        let count = status.peers.iter().filter(|(_, s)| *s == state).count();
        peers
            .get_or_create(&PeerLabels {
                state: state.as_str(),
            })
            .set(count as u64);
    }
    registry.register(
        "peers",
        "Other nodes of the cluster map, by this node's view of their state",
        peers,
    );
    let store = Family::<StoreLabels, Gauge<u64, AtomicU64>>::default();
    for state in [
        StoreState::Ok,
        StoreState::Full,
        StoreState::ReadOnly,
        StoreState::Failing,
    ] {
        store
            .get_or_create(&StoreLabels {
                state: state.as_str(),
            })
            .set(u64::from(status.store == state));
    }
    registry.register(
        "store_state",
        "The state of this node's store: 1 for the state it is in (ok, full, read-only, failing), 0 for the others",
        store,
    );
    if status.free_bytes != u64::MAX {
        registry.register_with_unit(
            "free",
            "Bytes free on the file system of this node's data directory",
            Unit::Bytes,
            ConstGauge::new(status.free_bytes),
        );
    }
    registry
}

/// Binds the metrics listener. Use a loopback or management address: the
/// endpoint has no authentication. Port 0 picks a free port; read it back
/// with [`TcpListener::local_addr`].
///
/// # Errors
/// When the address cannot be bound (in use, not local, no permission).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves; every other
/// request gets 404. `status` is called once per scrape.
///
/// On shutdown it stops accepting, lets open connections finish for up to
/// [`SHUTDOWN_GRACE`], then returns (tasks of connections still open after
/// that end when their clients hang up).
///
/// # Errors
/// Not in practice: accept errors are retried, and connection errors end
/// only their connection.
pub async fn serve_on(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    status: StatusSource,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape).fallback(not_found))
        .fallback(not_found)
        .with_state(Scrape { metrics, status });
    let (fired_tx, fired_rx) = oneshot::channel();
    let signal = async move {
        shutdown.await;
        // The receiver is gone only if the server already stopped.
        let _ = fired_tx.send(());
    };
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::select! {
        result = server => result,
        () = grace_expired(fired_rx) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "metrics connections still open at shutdown; abandoning them");
            Ok(())
        }
    }
}

/// Binds `addr` and serves on it: [`bind`] then [`serve_on`].
///
/// # Errors
/// As [`bind`].
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    status: StatusSource,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_on(bind(addr).await?, metrics, status, shutdown).await
}

/// What the scrape handler needs.
#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
    status: StatusSource,
}

async fn scrape(State(scrape): State<Scrape>) -> impl IntoResponse {
    let body = scrape.metrics.render(&(scrape.status)());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body)
}

async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}

/// Resolves [`SHUTDOWN_GRACE`] after shutdown was signalled; never if the
/// signal was dropped unsent (the server stopped first).
async fn grace_expired(fired: oneshot::Receiver<()>) {
    match fired.await {
        Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ringvault_common::NodeId;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::timeout;

    use super::*;

    /// Bound on every async test.
    const TEST_TIMEOUT: Duration = Duration::from_secs(20);

    fn status() -> NodeStatus {
        NodeStatus {
            node: NodeId(3),
            epoch: 12,
            blobs: 7,
            bytes: 7_000,
            hints: 2,
            repair_backlog: 5,
            quarantined: 1,
            scrub_bytes: 4_096,
            scrub_cycles: 9,
            peers: vec![
                (NodeId(1), PeerState::Up),
                (NodeId(2), PeerState::Down),
                (NodeId(4), PeerState::Up),
                (NodeId(5), PeerState::Up),
            ],
            store: StoreState::Full,
            store_error: String::new(),
            store_error_at: 0,
            free_bytes: 1 << 20,
            peers_silent_s: vec![(NodeId(2), 12)],
            out_after_s: 600,
        }
    }

    /// Sample lines of an exposition, series (name and labels) to value.
    fn samples(text: &str) -> HashMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("sample line");
                (series.to_owned(), value.to_owned())
            })
            .collect()
    }

    #[test]
    fn render_reports_counters_and_status() {
        let m = Metrics::new();
        m.request("put", "ok");
        m.request("put", "ok");
        m.request("get", "NotFound");
        m.replicated(3, 300);
        m.replicated(1, 100);
        m.hinted(2);
        m.handed_off(4, 4_000);
        m.repaired(5, 5_000);
        m.scrubbed(6, 6_000);
        m.set_replication_backlog(8);
        let text = m.render(&status());
        assert!(text.ends_with("# EOF\n"), "{text}");
        let s = samples(&text);
        let expected = [
            (r#"ringvault_requests_total{kind="put",outcome="ok"}"#, "2"),
            (
                r#"ringvault_requests_total{kind="get",outcome="NotFound"}"#,
                "1",
            ),
            ("ringvault_blobs", "7"),
            ("ringvault_stored_bytes", "7000"),
            ("ringvault_hints", "2"),
            ("ringvault_repair_backlog", "5"),
            ("ringvault_quarantined", "1"),
            ("ringvault_scrub_bytes", "4096"),
            ("ringvault_scrub_cycles_total", "9"),
            ("ringvault_map_epoch", "12"),
            (r#"ringvault_peers{state="up"}"#, "3"),
            (r#"ringvault_peers{state="down"}"#, "1"),
            (r#"ringvault_peers{state="out"}"#, "0"),
            (r#"ringvault_store_state{state="ok"}"#, "0"),
            (r#"ringvault_store_state{state="full"}"#, "1"),
            (r#"ringvault_store_state{state="read-only"}"#, "0"),
            (r#"ringvault_store_state{state="failing"}"#, "0"),
            ("ringvault_free_bytes", "1048576"),
            ("ringvault_replicated_blobs_total", "4"),
            ("ringvault_replicated_bytes_total", "400"),
            ("ringvault_hinted_writes_total", "2"),
            ("ringvault_handed_off_blobs_total", "4"),
            ("ringvault_handed_off_bytes_total", "4000"),
            ("ringvault_repaired_blobs_total", "5"),
            ("ringvault_repaired_bytes_total", "5000"),
            ("ringvault_scrubbed_blobs_total", "6"),
            ("ringvault_scrubbed_bytes_total", "6000"),
            ("ringvault_replication_backlog", "8"),
        ];
        for (series, value) in expected {
            assert_eq!(s.get(series).map(String::as_str), Some(value), "{series}");
        }
        assert_eq!(s.len(), expected.len(), "unexpected samples in\n{text}");
    }

    #[test]
    fn every_family_has_type_and_help() {
        let m = Metrics::new();
        // A family with no series yet is left out entirely.
        assert!(!m.render(&status()).contains("ringvault_requests"));
        m.request("put", "ok");
        let text = m.render(&status());
        let families = [
            ("ringvault_requests", "counter"),
            ("ringvault_blobs", "gauge"),
            ("ringvault_stored_bytes", "gauge"),
            ("ringvault_hints", "gauge"),
            ("ringvault_repair_backlog", "gauge"),
            ("ringvault_quarantined", "gauge"),
            ("ringvault_scrub_bytes", "gauge"),
            ("ringvault_scrub_cycles", "counter"),
            ("ringvault_map_epoch", "gauge"),
            ("ringvault_peers", "gauge"),
            ("ringvault_store_state", "gauge"),
            ("ringvault_free_bytes", "gauge"),
            ("ringvault_replicated_blobs", "counter"),
            ("ringvault_replicated_bytes", "counter"),
            ("ringvault_hinted_writes", "counter"),
            ("ringvault_handed_off_blobs", "counter"),
            ("ringvault_handed_off_bytes", "counter"),
            ("ringvault_repaired_blobs", "counter"),
            ("ringvault_repaired_bytes", "counter"),
            ("ringvault_scrubbed_blobs", "counter"),
            ("ringvault_scrubbed_bytes", "counter"),
            ("ringvault_replication_backlog", "gauge"),
        ];
        for (name, kind) in families {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind} in\n{text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert_eq!(text.matches("# TYPE ").count(), families.len(), "{text}");
        // Counters before any request: no request series yet, the rest at 0.
        assert_eq!(samples(&text)["ringvault_replicated_bytes_total"], "0");
        assert!(text.contains("# UNIT ringvault_stored_bytes bytes\n"));
    }

    /// A running metrics server on loopback and the means to stop it.
    struct TestServer {
        addr: SocketAddr,
        scrapes: Arc<AtomicUsize>,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    async fn start() -> TestServer {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.request("has", "ok");
        let scrapes = Arc::new(AtomicUsize::new(0));
        let counted = scrapes.clone();
        let source: StatusSource = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            status()
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_on(listener, metrics, source, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            scrapes,
            stop,
            task,
        }
    }

    /// Sends one raw HTTP/1.1 request and reads the whole response.
    async fn http(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        timeout(TEST_TIMEOUT, async {
            let server = start().await;
            let response = http(server.addr, "GET", "/metrics").await;
            let (head, body) = response.split_once("\r\n\r\n").expect("header end");
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains(&format!("content-type: {CONTENT_TYPE}")),
                "{head}"
            );
            let s = samples(body);
            assert_eq!(s["ringvault_blobs"], "7");
            assert_eq!(
                s[r#"ringvault_requests_total{kind="has",outcome="ok"}"#],
                "1"
            );
            assert!(body.ends_with("# EOF\n"));
            assert_eq!(server.scrapes.load(Ordering::SeqCst), 1);
            server.stop.send(()).unwrap();
            server.task.await.unwrap().unwrap();
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn anything_else_is_not_found() {
        timeout(TEST_TIMEOUT, async {
            let server = start().await;
            for (method, path) in [("GET", "/other"), ("GET", "/"), ("POST", "/metrics")] {
                let response = http(server.addr, method, path).await;
                assert!(
                    response.starts_with("HTTP/1.1 404 "),
                    "{method} {path}: {response}"
                );
            }
            assert_eq!(server.scrapes.load(Ordering::SeqCst), 0);
            server.stop.send(()).unwrap();
            server.task.await.unwrap().unwrap();
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn stops_when_shutdown_resolves() {
        timeout(TEST_TIMEOUT, async {
            let server = start().await;
            // An idle keep-alive connection must not hold the server up.
            let idle = TcpStream::connect(server.addr).await.unwrap();
            server.stop.send(()).unwrap();
            timeout(Duration::from_secs(1), server.task)
                .await
                .expect("server still running after shutdown")
                .unwrap()
                .unwrap();
            assert!(TcpStream::connect(server.addr).await.is_err());
            drop(idle);
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn a_stalled_client_delays_shutdown_by_the_grace_at_most() {
        timeout(TEST_TIMEOUT, async {
            let server = start().await;
            let mut stalled = TcpStream::connect(server.addr).await.unwrap();
            stalled
                .write_all(b"GET /metrics HTTP/1.1\r\n")
                .await
                .unwrap();
            // Let the server start reading the request.
            tokio::time::sleep(Duration::from_millis(100)).await;
            server.stop.send(()).unwrap();
            timeout(SHUTDOWN_GRACE + Duration::from_secs(2), server.task)
                .await
                .expect("server still running past the grace")
                .unwrap()
                .unwrap();
            drop(stalled);
        })
        .await
        .expect("test timed out");
    }
}
