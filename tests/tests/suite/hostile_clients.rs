//! Hostile clients: a client holding a valid certificate opens thousands of
//! streams, sends an oversized header, stalls mid-payload, or pushes more
//! request bytes than it finishes; the server cuts it off and bounds its
//! memory, and a well-behaved agent's backup completes meanwhile.

use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, ConnectionError};
use ringvault_common::wire::{self, PutBlobs, Request};
use ringvault_common::{ChunkId, RepoId};
use ringvault_tests::{ClusterOptions, TestCluster, tree_diff};

use crate::{TEST_CHUNKS, random_bytes};

/// The servers' stall timeout in this test, ms.
const STALL_MS: u64 = 2_000;
/// The servers' per-connection budget in this test: one largest frame.
const BUDGET: u64 = wire::MAX_FRAME as u64;

/// A connection to node `i` with the cluster's agent certificate.
async fn connect(c: &TestCluster, i: usize) -> Connection {
    let dir = c.cluster_dir().join("agent");
    let tls = ringvault_net::quic::load_tls(
        &dir.join("ca.pem"),
        &dir.join("agent.pem"),
        &dir.join("agent.key"),
    )
    .unwrap();
    let endpoint = ringvault_net::quic::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        None,
        ringvault_net::quic::client_config(&tls).unwrap(),
    )
    .unwrap();
    ringvault_net::quic::connect(&endpoint, &c.server_address(i), Duration::from_secs(5))
        .await
        .unwrap()
}

/// Waits (at most `limit`) for the server to close `conn`; returns the
/// reason it gave.
async fn closed_by_server(conn: &Connection, limit: Duration) -> String {
    match tokio::time::timeout(limit, conn.closed()).await {
        Ok(ConnectionError::ApplicationClosed(close)) => {
            String::from_utf8_lossy(&close.reason).into_owned()
        }
        Ok(other) => panic!("the connection ended otherwise: {other}"),
        Err(_) => panic!("the server did not cut the connection within {limit:?}"),
    }
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Opens up to `n` streams, each sending a length prefix and then nothing;
/// returns the streams the server let it open (kept open: dropping them
/// would finish them).
async fn stream_flood(conn: &Connection, n: usize) -> Vec<(quinn::SendStream, quinn::RecvStream)> {
    let mut opened = Vec::new();
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_millis(200), conn.open_bi()).await {
            Ok(Ok((mut send, recv))) => {
                if send.write_all(&64u32.to_le_bytes()).await.is_err() {
                    break;
                }
                opened.push((send, recv));
            }
            // Out of stream credit (the server's limit), or closed.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    opened
}

/// Opens `streams` streams, each declaring one blob of `blob` bytes and
/// sending all of it but the last byte, never finishing; returns the bytes
/// it managed to send within `limit`.
async fn unfinished_puts(conn: &Connection, streams: usize, blob: usize, limit: Duration) -> u64 {
    let repo = RepoId::new("test").unwrap();
    let mut tasks = Vec::new();
    for i in 0..streams {
        let conn = conn.clone();
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            let Ok((mut send, _recv)) = conn.open_bi().await else {
                return (0, None);
            };
            let header = wire::encode_header(&Request::PutBlobs(PutBlobs {
                repo,
                blobs: vec![(ChunkId([i as u8; 32]), blob as u32)],
                local_only: false,
            }));
            let body = Bytes::from(vec![0x5a; blob - 1]);
            let mut sent = 0u64;
            if send.write_all(&header).await.is_ok() {
                let mut rest = body;
                while !rest.is_empty() {
                    let n = rest.len().min(1 << 20);
                    if send.write_all(&rest.split_to(n)).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                }
            }
            // Keep the stream open, unfinished, until the server cuts it.
            (sent, Some(send))
        }));
    }
    let mut total = 0;
    let deadline = tokio::time::Instant::now() + limit;
    let mut keep = Vec::new();
    for t in tasks {
        if let Ok(Ok((sent, send))) = tokio::time::timeout_at(deadline, t).await {
            total += sent;
            keep.push(send);
        }
    }
    // Unfinished streams stay open (dropping one would finish it) until the
    // server closes the connection.
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    total
}

#[test]
fn a_hostile_client_is_cut_off_and_a_backup_completes_meanwhile() {
    let c = TestCluster::with(ClusterOptions {
        nodes: 3,
        replicas: 3,
        quorum: 2,
        proxies: false,
        server_config: format!(
            "stall-timeout-ms = {STALL_MS}\nconnection-budget-bytes = {BUDGET}\n"
        ),
    })
    .unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6 {
        std::fs::write(src.join(format!("f{i}")), random_bytes(4 << 20, 40 + i)).unwrap();
    }
    let pid = c.server_pid(0).unwrap();
    let rss_before = rss(pid);

    let started = Instant::now();
    let mut backup = c.spawn(&["backup", src.to_str().unwrap()]).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (opened, flood_reason, header_reason, sent, stall_reason, rss_peak) = rt.block_on(async {
        // Thousands of streams: no more than the server's limit open at
        // once, and stalled ones get the connection cut.
        let flood = connect(&c, 0).await;
        let streams = stream_flood(&flood, 5_000).await;
        let opened = streams.len();
        let flood_reason = closed_by_server(&flood, Duration::from_secs(10)).await;
        drop(streams);

        // An oversized header: cut at once, before the server reads it.
        let big = connect(&c, 0).await;
        let (mut send, _recv) = big.open_bi().await.unwrap();
        send.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let header_reason = closed_by_server(&big, Duration::from_secs(5)).await;

        // 64 unfinished 8 MiB puts: 512 MiB the server would buffer without
        // a budget.
        let pusher = connect(&c, 0).await;
        let sampler = tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..100 {
                peak = peak.max(rss(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        });
        let sent = unfinished_puts(&pusher, 64, 8 << 20, Duration::from_secs(4)).await;
        let stall_reason = closed_by_server(&pusher, Duration::from_secs(10)).await;
        let rss_peak = sampler.await.unwrap();
        (
            opened,
            flood_reason,
            header_reason,
            sent,
            stall_reason,
            rss_peak,
        )
    });

    let out = ringvault_tests::wait_child(&mut backup, Duration::from_secs(180)).unwrap();
    let took = started.elapsed();
    println!(
        "streams opened: {opened} of 5000; unfinished put bytes sent: {} MiB; server RSS {} MiB before, {} MiB peak; backup of 24 MiB took {:.1} s",
        sent >> 20,
        rss_before >> 20,
        rss_peak >> 20,
        took.as_secs_f64()
    );
    assert!(
        out.status.success(),
        "the well-behaved backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        opened <= ringvault_net::quic::MAX_STREAMS as usize,
        "{opened} streams open at once"
    );
    assert!(flood_reason.contains("stalled"), "{flood_reason}");
    assert!(header_reason.contains("header"), "{header_reason}");
    assert!(stall_reason.contains("stalled"), "{stall_reason}");
    assert!(
        rss_peak < rss_before + (256 << 20),
        "the server buffered {} MiB for one client",
        (rss_peak - rss_before) >> 20
    );

    let target = c.dir.path().join("restored");
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    assert_eq!(tree_diff(&src, &target.join("src")), None);
    c.ok(&["check", "--read-data"]).unwrap();
}
