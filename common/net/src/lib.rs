//! ringvault's I/O edge, shared by the agent and the chunk server.
//!
//! `ringvault-common` is the sans-IO core (formats, placement, sealing: no
//! sockets, no files, no clock). This crate is the thin layer both daemons
//! put around it, so that neither depends on the other:
//!
//! - [`quic`]: endpoints with sized UDP buffers, mutual-TLS configs, one
//!   request/response exchange per bidirectional stream ([`quic::call`]),
//!   and the connection pool with its failure detector ([`quic::Peers`]);
//! - [`files`]: secret files read only when owner-only, and durable
//!   replacement of small state files;
//! - [`service`]: sd_notify(3) readiness, status and watchdog pings;
//! - [`init_logging`] and [`shutdown_signal`]: the process edge of `main`.
//!
//! It lives at `common/net/`, beside the core it wraps, because the
//! workspace's top level is fixed (`agent/`, `chunkserver/`, `common/`,
//! `config/`, `systemd/`, `tests/`) and this crate is common to both
//! daemons; `ringvault-common` itself must stay free of tokio and quinn
//! (`cargo tree -p ringvault-common -e normal`).

pub mod files;
pub mod ports;
pub mod quic;
pub mod service;

/// Installs the process's log subscriber: stderr (journald keeps it under
/// systemd), filter from `RINGVAULT_LOG`, else `default_filter`. Call once,
/// from `main`.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGVAULT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
