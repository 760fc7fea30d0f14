//! `cluster init|status|add-node|remove-node|set-weight|add-agent|revoke`:
//! cluster administration, and what it prints.

use ringvault_common::wire::StoreState;
use serde_json::json;

use super::Cli;
use crate::client::ClientError;
use crate::cluster;

pub(super) type StatusRow = (
    ringvault_common::NodeId,
    String,
    Result<ringvault_common::wire::NodeStatus, ClientError>,
);

pub(super) fn print_cluster_status(cli: &Cli, epoch: u64, rows: &[StatusRow]) {
    if cli.json {
        let nodes: Vec<_> = rows
            .iter()
            .map(|(node, address, s)| match s {
                Ok(s) => json!({
                    "node": node.0, "address": address, "state": "up", "epoch": s.epoch,
                    "blobs": s.blobs, "bytes": s.bytes, "hints": s.hints,
                    "repair_backlog": s.repair_backlog, "quarantined": s.quarantined,
                    "scrub_bytes": s.scrub_bytes, "scrub_cycles": s.scrub_cycles,
                    "peers": s.peers.iter().map(|(p, st)| json!({"node": p.0, "state": st.as_str()})).collect::<Vec<_>>(),
                    "store": s.store.as_str(),
                    "store_error": (!s.store_error.is_empty()).then_some(&s.store_error),
                    "store_error_at": (s.store_error_at > 0).then_some(s.store_error_at),
                    "free_bytes": (s.free_bytes != u64::MAX).then_some(s.free_bytes),
                }),
                Err(e) => json!({"node": node.0, "address": address, "state": "unreachable", "error": e.to_string()}),
            })
            .collect();
        println!("{}", json!({ "epoch": epoch, "nodes": nodes }));
        return;
    }
    println!("cluster map epoch {epoch}");
    println!(
        "{:<8} {:<22} {:<12} {:<9} {:>6} {:>9} {:>10} {:>7} {:>7} {:>7}  peers",
        "node",
        "address",
        "state",
        "store",
        "epoch",
        "blobs",
        "bytes",
        "hints",
        "backlog",
        "quarant"
    );
    for (node, address, s) in rows {
        match s {
            Ok(s) => {
                let peers: Vec<String> = s
                    .peers
                    .iter()
                    .filter(|(_, st)| *st != ringvault_common::wire::PeerState::Up)
                    .map(|(p, st)| format!("{p} {}", st.as_str()))
                    .collect();
                println!(
                    "{:<8} {:<22} {:<12} {:<9} {:>6} {:>9} {:>10} {:>7} {:>7} {:>7}  {}",
                    node.to_string(),
                    address,
                    "up",
                    s.store.as_str(),
                    s.epoch,
                    s.blobs,
                    indicatif::HumanBytes(s.bytes).to_string(),
                    s.hints,
                    s.repair_backlog,
                    s.quarantined,
                    if peers.is_empty() {
                        "all up".to_owned()
                    } else {
                        peers.join(", ")
                    }
                );
            }
            Err(e) => println!("{:<8} {:<22} unreachable: {e}", node.to_string(), address),
        }
    }
    for (node, _, s) in rows {
        if let Ok(s) = s
            && (s.store != StoreState::Ok || !s.store_error.is_empty())
        {
            println!("{}", store_note(*node, s));
        }
    }
}

/// A line about a server's store that is not ok, or that recovered from an
/// error: its state, free space and last error with its time.
fn store_note(node: ringvault_common::NodeId, s: &ringvault_common::wire::NodeStatus) -> String {
    let mut line = format!("{node}: store {}", s.store.as_str());
    if s.free_bytes != u64::MAX {
        line += &format!(", {} free", indicatif::HumanBytes(s.free_bytes));
    }
    if !s.store_error.is_empty() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.store_error_at);
        line += &format!(
            "; last error at {}: {}",
            humantime::format_rfc3339_seconds(at),
            s.store_error
        );
    }
    line
}

pub(super) fn print_map_change(cli: &Cli, r: &cluster::MapChangeReport) {
    if cli.json {
        println!(
            "{}",
            json!({
                "epoch": r.map.epoch,
                "nodes": r.map.nodes.iter().map(|n| json!({"node": n.id.0, "address": n.address, "weight": n.weight, "zone": n.zone})).collect::<Vec<_>>(),
                "committed": r.committed.iter().map(|n| n.0).collect::<Vec<_>>(),
                "unreachable": r.unreachable.iter().map(|(n, e)| json!({"node": n.0, "error": e})).collect::<Vec<_>>(),
                "node_dir": r.node_dir.as_ref().map(|d| d.display().to_string()),
                "revoked": r.map.revoked,
            })
        );
        return;
    }
    println!(
        "committed cluster map epoch {} ({} nodes) on {} server(s)",
        r.map.epoch,
        r.map.nodes.len(),
        r.committed.len()
    );
    for (n, e) in &r.unreachable {
        println!("  {n} did not commit ({e}); it will learn the map from its peers");
    }
    if let Some(d) = &r.node_dir {
        println!(
            "new node files: {}   (run: ringvault-chunkserver --config {})",
            d.display(),
            d.join("chunkserver.toml").display()
        );
    }
}
