//! The ringvault chunk server.
//!
//! A server is a QUIC endpoint ([`ringvault_net::quic`]) in front
//! of a [`store::ChunkStore`].
//! Any server coordinates any write ([`server`]): it stores its own copy when
//! placement names it, forwards the blob to the other replicas, and answers
//! once W of N hold it durably. Snapshot records and the repository key go to
//! every server. Who may do what is decided per request from the peer's
//! certificate: agents act on the repository their certificate names; only
//! node certificates may send server-to-server requests.
//!
//! Start one with [`serve`] (from a config) or, in tests, with
//! [`node::Node::new`] on an endpoint bound by the caller and
//! [`server::run`].

pub mod maintenance;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod prune;
pub mod records;
pub mod replicate;
pub mod rounds;
pub mod server;
pub mod store;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use ringvault_common::config::ChunkserverConfig;
use ringvault_common::placement::ClusterMap;
use ringvault_common::tls::PeerIdentity;
use ringvault_net::{quic, service};

use crate::store::{FsStore, FsStoreOptions, RebuildReport, Watermark};

/// Reads a config file and everything it names, opens the store, binds the
/// endpoint and serves until `shutdown` completes.
///
/// # Errors
/// With context naming the file or setting at fault: unreadable or invalid
/// config, map or certificates; a certificate for another node; a store
/// another process holds; an address in use.
pub async fn serve(config_path: &Path, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = read_config(config_path)?;
    let map_text = std::fs::read_to_string(&config.cluster_map)
        .with_context(|| format!("reading cluster map {}", config.cluster_map.display()))?;
    let map = ClusterMap::parse(&map_text)
        .with_context(|| format!("invalid cluster map {}", config.cluster_map.display()))?;
    let tls = quic::load_tls(&config.ca_cert, &config.cert, &config.key)?;
    match tls.identity().context("reading this node's certificate")? {
        PeerIdentity::Node(id) if id == config.node_id => {}
        other => anyhow::bail!(
            "certificate {} is for {other:?}, not node {}",
            config.cert.display(),
            config.node_id.0
        ),
    }
    let store = FsStore::open(
        &config.data_dir,
        FsStoreOptions {
            group_commit_blobs: config.group_commit_blobs,
            segment_bytes: config.segment_bytes,
            quota_bytes: config.quota_bytes,
            watermark: Watermark {
                min_free_bytes: config.min_free_bytes,
                min_free_percent: config.min_free_percent,
            },
        },
    )
    .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let store = Arc::new(store);
    let addr = config.listen.parse().context("listen address")?;
    let endpoint = quic::endpoint(
        addr,
        Some(quic::server_config(&tls)?),
        quic::client_config(&tls)?,
    )
    .with_context(|| format!("binding UDP {addr}"))?;
    let node = node::Node::new(
        config.node_id,
        map,
        store.clone(),
        endpoint,
        node::Settings::from_config(&config),
        Some(&config.data_dir),
    )
    .with_context(|| format!("reading membership state in {}", config.data_dir.display()))?;
    let view = node.view();
    if view.map.node(config.node_id).is_none() {
        tracing::warn!(
            node = config.node_id.0,
            epoch = view.map.epoch,
            "this node is not in the cluster map: it hands every blob it holds to the owners, then only answers reads"
        );
    }
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if !config.metrics_listen.is_empty() {
        let addr: std::net::SocketAddr = config.metrics_listen.parse().context("metrics-listen")?;
        let listener = metrics::bind(addr)
            .await
            .with_context(|| format!("binding metrics-listen {addr}"))?;
        let (m, n) = (node.metrics.clone(), node.clone());
        let status: Arc<dyn Fn() -> ringvault_common::wire::NodeStatus + Send + Sync> =
            Arc::new(move || n.status());
        tokio::spawn(async move {
            let stop = async {
                let _ = metrics_stopped.await;
            };
            if let Err(e) = metrics::serve_on(listener, m, status, stop).await {
                tracing::warn!(error = %e, "metrics server stopped");
            }
        });
        tracing::info!(%addr, "serving metrics at /metrics");
    }
    service::ready(&format!("serving on {addr}"));
    service::spawn_watchdog();
    server::run(node, async {
        shutdown.await;
        service::stopping();
    })
    .await?;
    let _ = stop_metrics.send(());
    store.close();
    tracing::info!("store closed; bye");
    Ok(())
}

/// Rebuilds the index of the store a config file names from its segment
/// files (`ringvault-chunkserver --rebuild-index`), moving the old index
/// aside. Run it with the server stopped.
///
/// # Errors
/// With context: an unreadable or invalid config, or the rebuild failing
/// (see [`FsStore::rebuild_index`]).
pub fn rebuild_index(config_path: &Path) -> anyhow::Result<RebuildReport> {
    let config = read_config(config_path)?;
    FsStore::rebuild_index(&config.data_dir).with_context(|| {
        format!(
            "rebuilding the index of the store in {}",
            config.data_dir.display()
        )
    })
}

fn read_config(config_path: &Path) -> anyhow::Result<ChunkserverConfig> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let base = config_path.parent().unwrap_or(Path::new("."));
    ChunkserverConfig::parse(&text, base)
        .with_context(|| format!("invalid config {}", config_path.display()))
}
