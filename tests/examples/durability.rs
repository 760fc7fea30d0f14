//! Durability benchmark: how long a replaced node takes to be refilled, and
//! how many bytes move when a fourth node joins three.
//!
//! ```text
//! cargo run --release -p ringvault-tests --example durability -- SOURCE...
//! ```
//!
//! Starts three local chunk servers (N=3, W=2; repair unthrottled, so the
//! figure is the machine's, not `repair-bytes-per-s`'s), backs up SOURCE
//! (bench/durability.sh passes the benchmark dataset plus random data, so
//! that more than 1 GiB is stored), then:
//!
//! 1. kills node 3, deletes its data directory, restarts it, and times
//!    until it holds as many blob bytes as node 1 again;
//! 2. adds node 4 with `ringvault cluster add-node` and times until every
//!    blob has settled (no hints, no backlog); the bytes moved are the new
//!    node's bytes plus any growth on the old nodes, against the ideal of
//!    N/(k+1) of the unique bytes.
//!
//! 3. times a prune round with nothing to delete, and `stats`.
//!
//! Prints a table. Replica figures come from `ringvault cluster status`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringvault_tests::{ClusterOptions, TestCluster};
use serde_json::Value;

const SETTINGS: &str = "probe-interval-ms = 200\nroute-around-ms = 1500\nrepair-interval-ms = 200\nrepair-bytes-per-s = 0\nscrub-cycle-s = 0\nmetrics-listen = \"\"\n";
const LIMIT: Duration = Duration::from_secs(1800);

/// Every server's row of `cluster status` (which exits 4 while one is
/// unreachable, as a restarted one briefly is).
fn status(c: &TestCluster) -> anyhow::Result<Vec<Value>> {
    let out = c.run(&["--json", "cluster", "status"])?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("cluster status: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(v["nodes"].as_array().cloned().unwrap_or_default())
}

fn field(rows: &[Value], i: usize, name: &str) -> u64 {
    rows.get(i).and_then(|r| r[name].as_u64()).unwrap_or(0)
}

fn settled(rows: &[Value]) -> bool {
    rows.iter()
        .all(|r| r["state"] == "up" && r["hints"] == 0 && r["repair_backlog"] == 0)
}

fn main() -> anyhow::Result<()> {
    let sources: Vec<String> = std::env::args().skip(1).collect();
    if sources.is_empty() {
        bail!("usage: durability SOURCE... (see bench/durability.sh)");
    }
    let mut c = TestCluster::with(ClusterOptions {
        server_config: SETTINGS.into(),
        ..ClusterOptions::default()
    })?;
    c.ok(&["init"])?;
    let mut args = vec!["backup"];
    args.extend(sources.iter().map(String::as_str));
    let t = Instant::now();
    c.ok(&args)?;
    let backup_s = t.elapsed().as_secs_f64();
    let rows = status(&c)?;
    let unique = field(&rows, 0, "bytes");
    let blobs = field(&rows, 0, "blobs");
    println!(
        "backed up: {blobs} blobs, {:.3} GiB per replica, in {backup_s:.1} s",
        gib(unique)
    );

    // 1. Replace node 3 with an empty disk.
    c.kill(2);
    std::fs::remove_dir_all(c.node_dir(2).join("data")).context("wiping node 3")?;
    let t = Instant::now();
    c.restart(2)?;
    loop {
        let rows = status(&c)?;
        if field(&rows, 2, "bytes") >= unique && field(&rows, 2, "repair_backlog") == 0 {
            break;
        }
        if t.elapsed() > LIMIT {
            bail!("node 3 was not refilled within {LIMIT:?}: {rows:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let refill_s = t.elapsed().as_secs_f64();

    // 2. A fourth node joins.
    let before: u64 = (0..3).map(|i| field(&rows, i, "bytes")).sum();
    let t = Instant::now();
    c.add_node(SETTINGS)?;
    let mut last = u64::MAX;
    let rows = loop {
        let rows = status(&c)?;
        let new = field(&rows, 3, "bytes");
        if rows.len() == 4 && settled(&rows) && new == last && new > 0 {
            break rows;
        }
        last = new;
        if t.elapsed() > LIMIT {
            bail!("the join did not settle within {LIMIT:?}: {rows:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let join_s = t.elapsed().as_secs_f64();
    let moved = field(&rows, 3, "bytes");
    let grown: u64 = (0..3)
        .map(|i| field(&rows, i, "bytes").saturating_sub(unique))
        .sum();
    let after: u64 = (0..4).map(|i| field(&rows, i, "bytes")).sum();
    let ideal = unique as f64 * 3.0 / 4.0;
    println!();
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| refill a replaced node (empty disk) | {:.3} GiB in {refill_s:.1} s = {:.0} MiB/s; 1 GiB in {:.1} s |",
        gib(unique),
        unique as f64 / refill_s / f64::from(1 << 20),
        refill_s / gib(unique)
    );
    println!(
        "| join: bytes moved to node 4 | {:.3} GiB; ideal N/(k+1) × unique = {:.3} GiB; ratio {:.3} |",
        gib(moved),
        ideal / f64::from(1 << 30),
        moved as f64 / ideal
    );
    println!("| join: bytes gained by the old nodes | {grown} |");
    println!(
        "| join: replica bytes before / after | {:.3} / {:.3} GiB (3 copies of every blob: {}) |",
        gib(before),
        gib(after),
        after == 3 * unique
    );
    println!("| join: time until settled | {join_s:.1} s |");
    // 3. Garbage collection over the whole repository: a prune with nothing
    // to delete (the cost of a round), then stats.
    let t = Instant::now();
    let out = c.ok(&["--json", "prune"])?;
    let prune_s = t.elapsed().as_secs_f64();
    let p: Value = serde_json::from_str(out.lines().last().unwrap_or("{}"))?;
    println!(
        "| prune round, nothing to delete (4 servers) | {prune_s:.1} s; {} live chunks, {} partitions swept |",
        p["live_chunks"], p["partitions"]
    );
    let t = Instant::now();
    let out = c.ok(&["--json", "stats"])?;
    let stats_s = t.elapsed().as_secs_f64();
    let st: Value = serde_json::from_str(out.lines().last().unwrap_or("{}"))?;
    println!(
        "| stats | {stats_s:.1} s; dedup ratio {:.2}, compression ratio {:.2} |",
        st["dedup_ratio"].as_f64().unwrap_or(0.0),
        st["compression_ratio"].as_f64().unwrap_or(0.0)
    );
    for (i, r) in rows.iter().enumerate() {
        println!(
            "| node {} after the join | {} blobs, {:.3} GiB |",
            i + 1,
            r["blobs"],
            gib(r["bytes"].as_u64().unwrap_or(0))
        );
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 30)
}
