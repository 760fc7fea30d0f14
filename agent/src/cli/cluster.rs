//! `cluster init|status|add-node|remove-node|set-weight|add-agent|revoke`:
//! cluster administration, and what it prints.

use std::path::Path;

use anyhow::Context;
use ringvault_common::tls::Role;
use ringvault_common::wire::StoreState;
use serde::Serialize;

use super::ctx::Ctx;
use super::{Cli, ClusterCommand, ClusterInitArgs, EXIT_DEGRADED, print_json};
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
        // A config path that is not UTF-8 does not serialize: an error.
        let json = serde_json::to_string(&AddAgentJson {
            config: &layout.config,
            fingerprint: &layout.fingerprint,
            role: role.as_str(),
        })?;
        println!("{json}");
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

/// `cluster add-agent --json`: the new agent's config, its certificate's
/// fingerprint and its role.
#[derive(Serialize)]
struct AddAgentJson<'a> {
    config: &'a Path,
    fingerprint: &'a str,
    role: &'static str,
}

/// `cluster status --json`: the agent's map epoch and each server.
#[derive(Serialize)]
struct ClusterStatusJson<'a> {
    epoch: u64,
    nodes: Vec<NodeJson<'a>>,
}

/// A server in `cluster status --json`: its status, or why it gave none.
/// `store_error`, `store_error_at` and `free_bytes` are null when the
/// server has no error, no error time, or does not know its free space.
#[derive(Serialize)]
#[serde(untagged)]
enum NodeJson<'a> {
    /// It answered.
    Up {
        address: &'a str,
        blobs: u64,
        bytes: u64,
        epoch: u64,
        free_bytes: Option<u64>,
        hints: u64,
        node: u32,
        peers: Vec<PeerJson>,
        quarantined: u64,
        repair_backlog: u64,
        scrub_bytes: u64,
        scrub_cycles: u64,
        state: &'static str,
        store: &'static str,
        store_error: Option<&'a String>,
        store_error_at: Option<u64>,
    },
    /// It did not.
    Unreachable {
        address: &'a str,
        error: String,
        node: u32,
        state: &'static str,
    },
}

/// A server's view of a peer.
#[derive(Serialize)]
struct PeerJson {
    node: u32,
    state: &'static str,
}

/// A map change's `--json` report.
#[derive(Serialize)]
struct MapChangeJson<'a> {
    committed: Vec<u32>,
    epoch: u64,
    node_dir: Option<String>,
    nodes: Vec<MapNodeJson<'a>>,
    revoked: &'a [String],
    unreachable: Vec<NodeErrorJson>,
}

/// A node of the map in a map change's report.
#[derive(Serialize)]
struct MapNodeJson<'a> {
    address: &'a str,
    node: u32,
    weight: u32,
    zone: &'a str,
}

/// A server that did not take part, and why (a map change's
/// `unreachable`, prune's `skipped`).
#[derive(Serialize)]
pub(super) struct NodeErrorJson {
    error: String,
    node: u32,
}

impl<E: std::fmt::Display> From<&(ringvault_common::NodeId, E)> for NodeErrorJson {
    fn from((node, error): &(ringvault_common::NodeId, E)) -> Self {
        Self {
            error: error.to_string(),
            node: node.0,
        }
    }
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
        let nodes = rows
            .iter()
            .map(|(node, address, s)| match s {
                Ok(s) => NodeJson::Up {
                    address,
                    blobs: s.blobs,
                    bytes: s.bytes,
                    epoch: s.epoch,
                    free_bytes: (s.free_bytes != u64::MAX).then_some(s.free_bytes),
                    hints: s.hints,
                    node: node.0,
                    peers: s
                        .peers
                        .iter()
                        .map(|(p, st)| PeerJson {
                            node: p.0,
                            state: st.as_str(),
                        })
                        .collect(),
                    quarantined: s.quarantined,
                    repair_backlog: s.repair_backlog,
                    scrub_bytes: s.scrub_bytes,
                    scrub_cycles: s.scrub_cycles,
                    state: "up",
                    store: s.store.as_str(),
                    store_error: (!s.store_error.is_empty()).then_some(&s.store_error),
                    store_error_at: (s.store_error_at > 0).then_some(s.store_error_at),
                },
                Err(e) => NodeJson::Unreachable {
                    address,
                    error: e.to_string(),
                    node: node.0,
                    state: "unreachable",
                },
            })
            .collect();
        print_json(&ClusterStatusJson { epoch, nodes });
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
        print_json(&MapChangeJson {
            committed: r.committed.iter().map(|n| n.0).collect(),
            epoch: r.map.epoch,
            node_dir: r.node_dir.as_ref().map(|d| d.display().to_string()),
            nodes: r
                .map
                .nodes
                .iter()
                .map(|n| MapNodeJson {
                    address: &n.address,
                    node: n.id.0,
                    weight: n.weight,
                    zone: &n.zone,
                })
                .collect(),
            revoked: &r.map.revoked,
            unreachable: r.unreachable.iter().map(NodeErrorJson::from).collect(),
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::prints_as_a_value;

    #[test]
    fn cluster_reports_print_as_their_json_values_did() {
        let path = std::path::PathBuf::from("/c/agent-h/agent.toml");
        assert!(prints_as_a_value(&AddAgentJson {
            config: &path,
            fingerprint: "ab",
            role: "writer",
        }));
        let error = "disk full".to_owned();
        for (store_error, store_error_at, free_bytes) in
            [(None, None, None), (Some(&error), Some(5), Some(6))]
        {
            let status = ClusterStatusJson {
                epoch: 3,
                nodes: vec![
                    NodeJson::Up {
                        address: "127.0.0.1:7401",
                        blobs: 1,
                        bytes: 2,
                        epoch: 3,
                        free_bytes,
                        hints: 4,
                        node: 1,
                        peers: vec![PeerJson {
                            node: 2,
                            state: "up",
                        }],
                        quarantined: 5,
                        repair_backlog: 6,
                        scrub_bytes: 7,
                        scrub_cycles: 8,
                        state: "up",
                        store: "ok",
                        store_error,
                        store_error_at,
                    },
                    NodeJson::Unreachable {
                        address: "127.0.0.1:7402",
                        error: "no answer".into(),
                        node: 2,
                        state: "unreachable",
                    },
                ],
            };
            assert!(prints_as_a_value(&status));
        }
        let unreachable = [(ringvault_common::NodeId(4), "no answer".to_owned())];
        let revoked = ["cd".repeat(32)];
        for node_dir in [None, Some("/c/node-4".to_owned())] {
            let change = MapChangeJson {
                committed: vec![1, 2],
                epoch: 4,
                node_dir,
                nodes: vec![MapNodeJson {
                    address: "127.0.0.1:7401",
                    node: 1,
                    weight: 1,
                    zone: "",
                }],
                revoked: &revoked,
                unreachable: unreachable.iter().map(NodeErrorJson::from).collect(),
            };
            assert!(prints_as_a_value(&change));
        }
    }
}
