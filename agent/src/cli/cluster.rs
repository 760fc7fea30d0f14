//! `cluster init|status|add-node|remove-node|set-weight|add-agent|revoke`:
//! cluster administration, and what it prints.

use std::path::Path;

use anyhow::Context;
use ringvault_common::tls::Role;
use ringvault_common::wire::StoreState;
use serde_json::json;

use super::ctx::Ctx;
use super::{Cli, ClusterCommand, ClusterInitArgs, EXIT_DEGRADED};
use crate::client::ClientError;
use crate::cluster::{self, ClusterInit};
use crate::repo;

/// `cluster ...`: status needs the agent config; the others work on the
/// `cluster init` directory.
pub(super) async fn run_cluster(ctx: &Ctx, command: &ClusterCommand) -> anyhow::Result<u8> {
    match command {
        ClusterCommand::Init(a) => init(a),
        ClusterCommand::Status => status(ctx).await,
        ClusterCommand::AddNode {
            dir,
            address,
            id,
            weight,
            zone,
        } => {
            let change = cluster::MapChange::AddNode {
                id: *id,
                address: address.clone(),
                weight: *weight,
                zone: zone.clone(),
            };
            print_map_change(&ctx.cli, &cluster::change_map(dir, &change).await?);
            Ok(0)
        }
        ClusterCommand::RemoveNode { dir, id } => {
            let change = cluster::MapChange::RemoveNode { id: *id };
            print_map_change(&ctx.cli, &cluster::change_map(dir, &change).await?);
            Ok(0)
        }
        ClusterCommand::SetWeight { dir, id, weight } => {
            let change = cluster::MapChange::SetWeight {
                id: *id,
                weight: *weight,
            };
            print_map_change(&ctx.cli, &cluster::change_map(dir, &change).await?);
            Ok(0)
        }
        ClusterCommand::AddAgent {
            dir,
            repository,
            agent_id,
            role,
            out,
        } => add_agent(ctx, dir, repository, agent_id, *role, out.as_deref()),
        ClusterCommand::Revoke {
            dir,
            fingerprint,
            cert,
        } => revoke(ctx, dir, fingerprint.as_deref(), cert.as_deref()).await,
    }
}

/// `cluster init`: the CA, certificates, configs and map.
fn init(a: &ClusterInitArgs) -> anyhow::Result<u8> {
    let replicas = a.replicas.unwrap_or(a.nodes.min(3));
    let layout = cluster::init(&ClusterInit {
        dir: a.dir.clone(),
        nodes: a.nodes,
        hosts: a.hosts.clone(),
        ports: vec![],
        base_port: a.base_port,
        repository: a.repository.clone(),
        agent_id: a.agent_id.clone(),
        role: a.role,
        replicas,
        write_quorum: a.write_quorum.unwrap_or(replicas.min(2)),
    })?;
    println!("cluster map: {}", layout.map.display());
    for c in &layout.node_configs {
        println!(
            "node config: {}   (run: ringvault-chunkserver --config {})",
            c.display(),
            c.display()
        );
    }
    println!(
        "agent config: {}   (use: ringvault --config {} init)",
        layout.agent_config.display(),
        layout.agent_config.display()
    );
    println!(
        "keep {} offline: it signs new certificates",
        a.dir.join("ca.key").display()
    );
    Ok(0)
}

/// `cluster status`: each server's state; [`EXIT_DEGRADED`] when one is
/// down or its store is not ok.
async fn status(ctx: &Ctx) -> anyhow::Result<u8> {
    let loaded = ctx.config()?;
    let (cluster, _) = repo::connect(&loaded.config).await?;
    let rows: Vec<StatusRow> =
        futures::future::join_all(cluster.servers().into_iter().map(|(node, address, _)| {
            let cluster = &cluster;
            async move { (node, address, cluster.node_status(node).await) }
        }))
        .await;
    cluster.close().await;
    print_cluster_status(&ctx.cli, cluster.map().epoch, &rows);
    // A server down or with a store not ok needs a look.
    Ok(
        if rows
            .iter()
            .all(|(_, _, s)| s.as_ref().is_ok_and(|s| s.store == StoreState::Ok))
        {
            0
        } else {
            EXIT_DEGRADED
        },
    )
}

/// `cluster add-agent`: a certificate for another agent of a repository.
fn add_agent(
    ctx: &Ctx,
    dir: &Path,
    repository: &str,
    agent_id: &str,
    role: Role,
    out: Option<&Path>,
) -> anyhow::Result<u8> {
    let layout = cluster::add_agent(dir, repository, agent_id, role, out)?;
    if ctx.cli.json {
        println!(
            "{}",
            json!({ "config": layout.config, "fingerprint": layout.fingerprint, "role": role.as_str() })
        );
    } else {
        println!(
            "agent config: {}   (role {role}; copy its directory to the host)",
            layout.config.display()
        );
        println!("certificate fingerprint (SHA-256): {}", layout.fingerprint);
    }
    Ok(0)
}

/// `cluster revoke`: a certificate, by fingerprint or from its file.
async fn revoke(
    ctx: &Ctx,
    dir: &Path,
    fingerprint: Option<&str>,
    cert: Option<&Path>,
) -> anyhow::Result<u8> {
    let fingerprint = match (fingerprint, cert) {
        (Some(f), _) => f.replace(':', "").to_ascii_lowercase(),
        (None, Some(path)) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            ringvault_common::tls::fingerprint_pem(&pem)
                .with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => anyhow::bail!("give a fingerprint or --cert FILE"),
    };
    let change = cluster::MapChange::Revoke { fingerprint };
    print_map_change(&ctx.cli, &cluster::change_map(dir, &change).await?);
    Ok(0)
}

/// A server, its address, and its status or why it gave none.
type StatusRow = (
    ringvault_common::NodeId,
    String,
    Result<ringvault_common::wire::NodeStatus, ClientError>,
);

/// Prints each server's state under the map's epoch.
fn print_cluster_status(cli: &Cli, epoch: u64, rows: &[StatusRow]) {
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

/// Prints the map a change committed, and where.
fn print_map_change(cli: &Cli, r: &cluster::MapChangeReport) {
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
