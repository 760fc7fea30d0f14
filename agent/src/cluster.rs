//! `ringvault cluster init`: a CA, node certificates and configs, an agent
//! certificate and config, and the cluster map, laid out for deployment.
//!
//! ```text
//! DIR/ca.pem, ca.key            the cluster CA (keep ca.key offline)
//! DIR/cluster.toml              the cluster map
//! DIR/node-<id>/                copy to node <id>: chunkserver.toml, node.pem,
//!                               node.key, ca.pem, cluster.toml
//! DIR/agent/                    copy to a client: agent.toml, agent.pem,
//!                               agent.key, ca.pem
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ringvault_common::placement::{ClusterMap, NodeInfo};
use ringvault_common::tls::{self, PemPair};
use ringvault_common::{NodeId, RepoId};

use crate::fsutil::write_private;

/// What to make.
#[derive(Clone, Debug)]
pub struct ClusterInit {
    /// Output directory (must not hold a CA already).
    pub dir: PathBuf,
    /// Number of nodes.
    pub nodes: u32,
    /// Host (name or IP) of each node, in order; one entry is used for all.
    pub hosts: Vec<String>,
    /// Port of each node; empty means `base_port + i`.
    pub ports: Vec<u16>,
    /// First port when `ports` is empty.
    pub base_port: u16,
    /// Repository for the agent certificate.
    pub repository: String,
    /// Agent id for the agent certificate.
    pub agent_id: String,
    /// N.
    pub replicas: u32,
    /// W.
    pub write_quorum: u32,
}

/// Paths of what [`init`] wrote.
#[derive(Clone, Debug)]
pub struct ClusterLayout {
    /// The cluster map.
    pub map: PathBuf,
    /// Each node's config.
    pub node_configs: Vec<PathBuf>,
    /// The agent's config.
    pub agent_config: PathBuf,
}

/// Writes the CA, certificates and configs.
///
/// # Errors
/// When the directory already holds a CA, a setting is invalid, or a file
/// cannot be written.
pub fn init(opts: &ClusterInit) -> anyhow::Result<ClusterLayout> {
    if opts.dir.join("ca.pem").exists() {
        bail!(
            "{} already holds a cluster CA; refusing to overwrite it",
            opts.dir.display()
        );
    }
    if opts.nodes == 0 || opts.hosts.is_empty() {
        bail!("need at least one node and one host");
    }
    if opts.hosts.len() != 1 && opts.hosts.len() != opts.nodes as usize {
        bail!(
            "give one --host for all nodes or one per node ({} nodes)",
            opts.nodes
        );
    }
    let repo = RepoId::new(&opts.repository)?;
    let map = ClusterMap {
        epoch: 1,
        replicas: opts.replicas,
        write_quorum: opts.write_quorum,
        nodes: (0..opts.nodes)
            .map(|i| {
                let host = &opts.hosts[if opts.hosts.len() == 1 { 0 } else { i as usize }];
                let port = opts
                    .ports
                    .get(i as usize)
                    .copied()
                    .unwrap_or(opts.base_port + i as u16);
                NodeInfo {
                    id: NodeId(i + 1),
                    address: join_host_port(host, port),
                    weight: 1,
                    zone: String::new(),
                }
            })
            .collect(),
    };
    map.validate().context("cluster settings")?;
    let map_toml = format!(
        "# ringvault cluster map, made by `ringvault cluster init`. The same file on every node.\n{}",
        map.to_toml()
    );
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    let ca = tls::make_ca("ringvault cluster CA")?;
    write_pair(&opts.dir, "ca", &ca)?;
    write(&opts.dir.join("cluster.toml"), &map_toml)?;

    let mut node_configs = Vec::new();
    for (i, node) in map.nodes.iter().enumerate() {
        let host = &opts.hosts[if opts.hosts.len() == 1 { 0 } else { i }];
        let dir = opts.dir.join(format!("node-{}", node.id.0));
        std::fs::create_dir_all(&dir)?;
        let pair = tls::issue_node(&ca, node.id, std::slice::from_ref(host))?;
        write_pair(&dir, "node", &pair)?;
        write(&dir.join("ca.pem"), &ca.cert)?;
        write(&dir.join("cluster.toml"), &map_toml)?;
        let port = node.address.rsplit(':').next().unwrap_or("7401");
        let listen = if host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        {
            node.address.clone()
        } else {
            format!("0.0.0.0:{port}")
        };
        let cfg = format!(
            "# ringvault-chunkserver config for node {id}, made by `ringvault cluster init`.\n\
             # See config/chunkserver.toml in the source for every setting.\n\
             node-id = {id}\nlisten = \"{listen}\"\ndata-dir = \"data\"\n\
             ca-cert = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\ncluster-map = \"cluster.toml\"\n",
            id = node.id.0,
        );
        let path = dir.join("chunkserver.toml");
        write(&path, &cfg)?;
        node_configs.push(path);
    }

    let dir = opts.dir.join("agent");
    std::fs::create_dir_all(&dir)?;
    let pair = tls::issue_agent(&ca, &repo, &opts.agent_id)?;
    write_pair(&dir, "agent", &pair)?;
    write(&dir.join("ca.pem"), &ca.cert)?;
    let servers: Vec<String> = map
        .nodes
        .iter()
        .map(|n| format!("{:?}", n.address))
        .collect();
    let cfg = format!(
        "# ringvault agent config, made by `ringvault cluster init`.\n\
         # See config/agent.toml in the source for every setting.\n\
         repository = \"{repo}\"\nservers = [{}]\nca-cert = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n",
        servers.join(", ")
    );
    let agent_config = dir.join("agent.toml");
    write(&agent_config, &cfg)?;
    Ok(ClusterLayout {
        map: opts.dir.join("cluster.toml"),
        node_configs,
        agent_config,
    })
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn write_pair(dir: &Path, stem: &str, pair: &PemPair) -> anyhow::Result<()> {
    write(&dir.join(format!("{stem}.pem")), &pair.cert)?;
    let key = dir.join(format!("{stem}.key"));
    write_private(&key, pair.key.as_bytes()).with_context(|| format!("writing {}", key.display()))
}
