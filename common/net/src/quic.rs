//! QUIC plumbing shared by the server and the agent: endpoints with sized
//! UDP buffers and flow-control windows, and one request/response exchange
//! per bidirectional stream ([`call`], [`serve_stream`]'s counterpart).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, EndpointConfig, TokioRuntime, TransportConfig, VarInt};
use ringvault_common::NodeId;
use ringvault_common::tls::{NODE_SERVER_NAME, PeerIdentity, TlsMaterial};
use ringvault_common::wire::{
    self, FrameError, Hello, MAX_FRAME, Request, Response, Rpc, Welcome, WireError,
};
use rustls_pki_types::CertificateDer;

/// UDP socket buffer size, bytes: the kernel default (208 KiB) drops packets
/// on loopback at QUIC speeds (CRATE-NOTES.md, pitfall 5).
const UDP_BUFFER: usize = 8 << 20;
/// Concurrent bidirectional streams a peer may open.
pub const MAX_STREAMS: u32 = 256;

/// Errors of one request/response exchange.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Could not connect (address unreachable, handshake failed).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        reason: ConnectFailure,
    },
    /// The connection or stream broke.
    #[error("connection lost: {0}")]
    Connection(Lost),
    /// One side refused the other's certificate: the connection ended with
    /// a TLS alert ([`tls_alert`]).
    #[error("the server refused this certificate ({0}); is it signed by the cluster's CA?")]
    CertificateRefused(quinn::ConnectionError),
    /// The response did not decode.
    #[error("malformed response: {0}")]
    Frame(#[from] FrameError),
    /// The server answered with an error.
    #[error("server error: {0}")]
    Remote(#[from] WireError),
    /// No answer in time.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with another request's answer.
    #[error("answered {kind} with {answer:?}")]
    Unexpected {
        /// The request ([`Rpc::KIND`]).
        kind: &'static str,
        /// What came back.
        answer: Box<Response>,
    },
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// The address did not resolve.
    #[error("cannot resolve it: {0}")]
    Resolve(std::io::Error),
    /// The address resolved to nothing.
    #[error("it resolves to no address")]
    NoAddress,
    /// quinn refused to start the connection (a bad address, the endpoint
    /// is closing).
    #[error("{0}")]
    Endpoint(quinn::ConnectError),
    /// No handshake within the connect timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The handshake timed out in QUIC itself.
    #[error("no answer (is the server running?)")]
    NoAnswer,
    /// It failed lately and is routed around ([`Peers::is_down`]).
    #[error("recently unreachable")]
    RecentlyDown,
    /// The node has no address in the cluster map.
    #[error("not in the cluster map")]
    NotInMap,
}

/// How an open connection or stream broke: quinn's error for the step that
/// failed, or the connection's own close reason when it has one.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    /// The connection ended (its close reason).
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// Writing the request failed.
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    /// Finishing the request's stream failed.
    #[error(transparent)]
    Finish(#[from] quinn::ClosedStream),
    /// Reading the response failed.
    #[error(transparent)]
    Read(#[from] quinn::ReadToEndError),
}

/// Transport settings for throughput on fast links: large stream and
/// connection windows (quinn's defaults suit 100 ms x 12.5 MB/s).
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t.receive_window(VarInt::from_u32(32 << 20));
    t.send_window(16 << 20);
    // A peer silent for 10 s is gone: keep-alives every 2 s keep a healthy
    // but idle connection open.
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    // Invariant: 10 s is within VarInt's range.
    t.max_idle_timeout(Some(Duration::from_secs(10).try_into().expect("10 s fits")));
    t
}

/// Reads TLS material from PEM files: the cluster CA certificate, our
/// certificate, our private key. The key file must be private (mode 0600;
/// [`crate::files::read_private`]).
///
/// # Errors
/// Naming the file that cannot be read or parsed, or a key file that group
/// or others may read.
pub fn load_tls(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<TlsMaterial> {
    use anyhow::Context;
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let key_pem = zeroize::Zeroizing::new(crate::files::read_private(key)?);
    TlsMaterial::from_pem(&read(ca)?, &read(cert)?, &key_pem).with_context(|| {
        format!(
            "loading TLS material ({}, {}, {})",
            ca.display(),
            cert.display(),
            key.display()
        )
    })
}

/// quinn server config for mutual TLS from our material.
///
/// # Errors
/// If rustls refuses the material.
pub fn server_config(tls: &TlsMaterial) -> anyhow::Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls.server_config()?)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config()));
    Ok(cfg)
}

/// quinn client config for mutual TLS from our material.
///
/// # Errors
/// If rustls refuses the material.
pub fn client_config(tls: &TlsMaterial) -> anyhow::Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls.client_config()?)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config()));
    Ok(cfg)
}

/// Binds a UDP socket with large buffers and makes an endpoint on it.
///
/// # Errors
/// If the socket cannot be bound.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    client: quinn::ClientConfig,
) -> std::io::Result<Endpoint> {
    let socket = bind_udp(addr)?;
    endpoint_on(socket, server, client)
}

/// Binds a UDP socket with large buffers (callers that need the port before
/// starting a server bind first, then call [`endpoint_on`]).
///
/// # Errors
/// If the socket cannot be bound.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Makes an endpoint on an already bound socket.
///
/// # Errors
/// If quinn cannot use the socket.
pub fn endpoint_on(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
    client: quinn::ClientConfig,
) -> std::io::Result<Endpoint> {
    let mut ep = Endpoint::new(
        EndpointConfig::default(),
        server,
        socket,
        Arc::new(TokioRuntime),
    )?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// Connects to a server at `addr` and completes the handshake.
///
/// # Errors
/// [`CallError::Connect`] or [`CallError::Timeout`].
pub async fn connect(
    endpoint: &Endpoint,
    addr: &str,
    timeout: Duration,
) -> Result<Connection, CallError> {
    let connect_err = |reason: ConnectFailure| CallError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let sock = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| connect_err(ConnectFailure::Resolve(e)))?
        .next()
        .ok_or_else(|| connect_err(ConnectFailure::NoAddress))?;
    let connecting = endpoint
        .connect(sock, NODE_SERVER_NAME)
        .map_err(|e| connect_err(ConnectFailure::Endpoint(e)))?;
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(connect_err(ConnectFailure::Timeout(timeout))),
        Ok(Err(e)) => Err(classify(e, addr)),
        Ok(Ok(conn)) => Ok(conn),
    }
}

fn classify(e: quinn::ConnectionError, addr: &str) -> CallError {
    if tls_alert(&e).is_some() {
        return CallError::CertificateRefused(e);
    }
    match e {
        quinn::ConnectionError::TimedOut => CallError::Connect {
            addr: addr.to_owned(),
            reason: ConnectFailure::NoAnswer,
        },
        e => CallError::Connection(Lost::Connection(e)),
    }
}

/// The TLS alert a connection ended with, whichever side raised it. QUIC
/// carries a TLS alert as a CRYPTO_ERROR, transport error code 0x0100 plus
/// the alert's number (RFC 9001, section 4.8); with mutual TLS the usual
/// cause is a certificate from another CA (alert 48, unknown_ca, or 42,
/// bad_certificate).
fn tls_alert(e: &quinn::ConnectionError) -> Option<u8> {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return None,
    };
    u8::try_from(u64::from(code).checked_sub(0x100)?).ok()
}

/// A response: the answering server's map epoch, the response header and
/// its payload.
pub type Answer = (u64, Response, Bytes);

/// Sends one request (header and payload parts) on a new stream of `conn`
/// and reads the whole response, within `timeout`.
///
/// # Errors
/// [`CallError`]; a [`Response::Error`] becomes [`CallError::Remote`].
pub async fn call(
    conn: &Connection,
    request: &Request,
    payload: Vec<Bytes>,
    timeout: Duration,
) -> Result<Answer, CallError> {
    match tokio::time::timeout(timeout, call_inner(conn, request, payload)).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout(timeout)),
    }
}

/// Sends `request` as [`call`] does and reads its typed answer.
///
/// # Errors
/// As [`call`], and [`CallError::Unexpected`] for another request's answer.
pub async fn request<R: Rpc>(
    conn: &Connection,
    request: R,
    payload: Vec<Bytes>,
    timeout: Duration,
) -> Result<(u64, R::Response, Bytes), CallError> {
    let (epoch, response, payload) = call(conn, &request.into(), payload, timeout).await?;
    Ok((epoch, answer::<R>(response)?, payload))
}

/// `response` read as `R`'s answer.
///
/// # Errors
/// [`CallError::Unexpected`] when it is another request's answer.
pub fn answer<R: Rpc>(response: Response) -> Result<R::Response, CallError> {
    R::answer(response).map_err(|answer| CallError::Unexpected {
        kind: R::KIND,
        answer,
    })
}

async fn call_inner(
    conn: &Connection,
    request: &Request,
    mut payload: Vec<Bytes>,
) -> Result<Answer, CallError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(conn, e))?;
    let mut parts = Vec::with_capacity(payload.len() + 1);
    parts.push(Bytes::from(wire::encode_header(request)));
    parts.append(&mut payload);
    send.write_all_chunks(&mut parts)
        .await
        .map_err(|e| lost(conn, e))?;
    send.finish().map_err(|e| lost(conn, e))?;
    let frame = recv
        .read_to_end(MAX_FRAME)
        .await
        .map_err(|e| lost(conn, e))?;
    let frame = Bytes::from(frame);
    let (epoch, response, payload) = wire::decode_response(&frame)?;
    let start = frame.len() - payload.len();
    match response {
        Response::Error(e) => Err(CallError::Remote(e)),
        r => Ok((epoch, r, frame.slice(start..))),
    }
}

/// Classifies a stream failure, preferring the connection's own close
/// reason, which says more than the stream's "connection lost" (a TLS
/// alert, for one).
fn lost(conn: &Connection, e: impl Into<Lost>) -> CallError {
    match conn.close_reason() {
        Some(reason) if tls_alert(&reason).is_some() => CallError::CertificateRefused(reason),
        Some(reason) => CallError::Connection(Lost::Connection(reason)),
        None => CallError::Connection(e.into()),
    }
}

/// The verified identity of a connection's peer and its certificate's
/// SHA-256 fingerprint ([`ringvault_common::tls::fingerprint`]).
///
/// # Errors
/// If the peer presented no certificate or one naming no ringvault identity.
pub fn peer_identity(conn: &Connection) -> anyhow::Result<(PeerIdentity, String)> {
    let any = conn
        .peer_identity()
        .ok_or_else(|| anyhow::anyhow!("peer presented no certificate"))?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| anyhow::anyhow!("peer identity is not a certificate chain"))?;
    let first = certs
        .first()
        .ok_or_else(|| anyhow::anyhow!("empty certificate chain"))?;
    Ok((
        PeerIdentity::from_der(first)?,
        ringvault_common::tls::fingerprint(first),
    ))
}

/// Connections to cluster nodes by id, with the nodes that failed lately:
/// the agent's view of the servers, and each server's view of its peers.
///
/// The cache lock is never held while connecting, so one dead node does not
/// stall requests to the others; a node that failed is not tried again for
/// `down_for`, so it costs one timeout, not one per request.
pub struct Peers {
    endpoint: Endpoint,
    conns: parking_lot::Mutex<std::collections::HashMap<NodeId, Connection>>,
    /// The nodes that failed lately, read against this process's clock.
    down: parking_lot::Mutex<ringvault_common::routing::Health>,
    connect_timeout: Duration,
    /// UDP bytes sent on connections since dropped.
    retired_bytes: std::sync::atomic::AtomicU64,
    /// The newest cluster map epoch any answer carried.
    newest_epoch: std::sync::atomic::AtomicU64,
}

impl Peers {
    /// An empty pool on `endpoint`.
    pub fn new(endpoint: Endpoint, connect_timeout: Duration, down_for: Duration) -> Self {
        Self {
            endpoint,
            conns: parking_lot::Mutex::default(),
            down: parking_lot::Mutex::new(ringvault_common::routing::Health::new(down_for)),
            connect_timeout,
            retired_bytes: std::sync::atomic::AtomicU64::new(0),
            newest_epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The newest cluster map epoch seen in any answer through this pool.
    pub fn newest_epoch(&self) -> u64 {
        self.newest_epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes an epoch seen in an answer.
    pub fn saw_epoch(&self, epoch: u64) {
        self.newest_epoch
            .fetch_max(epoch, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends routing around `node` (it answered again).
    pub fn mark_up(&self, node: NodeId) {
        if self.down.lock().mark_up(node) {
            tracing::info!(node = %node, "reachable again");
        }
    }

    /// Asks `node` at `addr` for a hello even if it is routed around: how a
    /// failure detector learns that a node is back. Success marks it up;
    /// failure marks it down.
    ///
    /// # Errors
    /// As [`Peers::request`].
    pub async fn probe(
        &self,
        node: NodeId,
        addr: &str,
        epoch: u64,
        timeout: Duration,
    ) -> Result<Welcome, CallError> {
        let cached = self.conns.lock().get(&node).cloned();
        let conn = match cached {
            Some(c) if c.close_reason().is_none() => c,
            _ => {
                let c = connect(&self.endpoint, addr, timeout)
                    .await
                    .inspect_err(|e| self.mark_down(node, e))?;
                self.insert(node, c.clone());
                c
            }
        };
        let hello = Hello {
            protocol: wire::PROTOCOL_VERSION,
            epoch,
        };
        match call(&conn, &hello.into(), vec![], timeout).await {
            Ok((epoch, response, _)) => {
                self.saw_epoch(epoch);
                self.mark_up(node);
                answer::<Hello>(response)
            }
            Err(e) => {
                // A node that answers with an error is up.
                if !matches!(e, CallError::Remote(_)) {
                    self.mark_down(node, &e);
                }
                Err(e)
            }
        }
    }

    /// The endpoint connections are made from.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Adds a connection made elsewhere (the agent's first hello).
    pub fn insert(&self, node: NodeId, conn: Connection) {
        let old = self.conns.lock().insert(node, conn);
        if let Some(old) = old {
            self.retire(&old);
        }
    }

    /// Whether `node` failed within `down_for`.
    pub fn is_down(&self, node: NodeId) -> bool {
        self.down.lock().is_down(node, std::time::Instant::now())
    }

    /// Routes around `node` for `down_for` from now and drops its
    /// connection. Logs a warning only when it was not already down.
    pub fn mark_down(&self, node: NodeId, why: &dyn std::fmt::Display) {
        let newly = self.down.lock().mark_down(node, std::time::Instant::now());
        if newly {
            tracing::warn!(node = %node, reason = %why, "unreachable; routing around it");
        }
        let gone = self.conns.lock().remove(&node);
        if let Some(conn) = gone {
            self.retire(&conn);
        }
    }

    fn retire(&self, conn: &Connection) {
        self.retired_bytes.fetch_add(
            conn.stats().udp_tx.bytes,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The cached live connection to `node`, or a new one to `addr`.
    ///
    /// # Errors
    /// [`CallError::Connect`] when it is down or does not answer (then it
    /// is marked down), [`CallError::CertificateRefused`].
    pub async fn connection(&self, node: NodeId, addr: &str) -> Result<Connection, CallError> {
        let cached = self.conns.lock().get(&node).cloned();
        if let Some(c) = cached
            && c.close_reason().is_none()
        {
            return Ok(c);
        }
        if self.is_down(node) {
            return Err(CallError::Connect {
                addr: addr.to_owned(),
                reason: ConnectFailure::RecentlyDown,
            });
        }
        match connect(&self.endpoint, addr, self.connect_timeout).await {
            Ok(conn) => {
                self.insert(node, conn.clone());
                Ok(conn)
            }
            Err(e) => {
                if !matches!(e, CallError::CertificateRefused(_)) {
                    self.mark_down(node, &e);
                }
                Err(e)
            }
        }
    }

    /// One request to `node` at `addr`; a connection failure or timeout
    /// marks it down.
    ///
    /// # Errors
    /// As [`call`] and [`Peers::connection`].
    pub async fn call(
        &self,
        node: NodeId,
        addr: &str,
        request: &Request,
        payload: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<(Response, Bytes), CallError> {
        let conn = self.connection(node, addr).await?;
        let result = call(&conn, request, payload, timeout).await;
        match result {
            Ok((epoch, response, payload)) => {
                self.saw_epoch(epoch);
                Ok((response, payload))
            }
            Err(e) => {
                if let CallError::Timeout(_) | CallError::Connection(_) = &e {
                    self.mark_down(node, &e);
                }
                Err(e)
            }
        }
    }

    /// One typed request to `node` at `addr`, as [`Peers::call`].
    ///
    /// # Errors
    /// As [`Peers::call`], and [`CallError::Unexpected`] for another
    /// request's answer.
    pub async fn request<R: Rpc>(
        &self,
        node: NodeId,
        addr: &str,
        request: R,
        payload: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<(R::Response, Bytes), CallError> {
        let (response, payload) = self
            .call(node, addr, &request.into(), payload, timeout)
            .await?;
        Ok((answer::<R>(response)?, payload))
    }

    /// UDP payload bytes sent on every connection this pool has held (QUIC
    /// framing and retransmissions included).
    pub fn udp_bytes_sent(&self) -> u64 {
        let live: u64 = self
            .conns
            .lock()
            .values()
            .map(|c| c.stats().udp_tx.bytes)
            .sum();
        live + self
            .retired_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::{ConnectionClose, ConnectionError, TransportErrorCode};

    fn closed(code: TransportErrorCode) -> ConnectionError {
        ConnectionError::ConnectionClosed(ConnectionClose {
            error_code: code,
            frame_type: None,
            reason: Bytes::new(),
        })
    }

    #[test]
    fn tls_alerts_are_told_by_their_quic_error_code_not_by_text() {
        // The server refused our certificate: it closed with unknown_ca.
        assert_eq!(tls_alert(&closed(TransportErrorCode::crypto(48))), Some(48));
        // We refused the server's: our own transport error, bad_certificate.
        let ours = ConnectionError::TransportError(TransportErrorCode::crypto(42).into());
        assert_eq!(tls_alert(&ours), Some(42));
        assert!(matches!(
            classify(ours, "127.0.0.1:1"),
            CallError::CertificateRefused(ConnectionError::TransportError(t))
                if t.code == TransportErrorCode::crypto(42)
        ));
        // Other transport errors, and ends that carry no code, are not TLS.
        assert_eq!(
            tls_alert(&closed(TransportErrorCode::PROTOCOL_VIOLATION)),
            None
        );
        assert_eq!(tls_alert(&ConnectionError::TimedOut), None);
        assert_eq!(tls_alert(&ConnectionError::Reset), None);
        assert!(matches!(
            classify(ConnectionError::TimedOut, "127.0.0.1:1"),
            CallError::Connect {
                reason: ConnectFailure::NoAnswer,
                ..
            }
        ));
        // Any other end keeps quinn's error, typed.
        assert!(matches!(
            classify(ConnectionError::Reset, "127.0.0.1:1"),
            CallError::Connection(Lost::Connection(ConnectionError::Reset))
        ));
    }
}
