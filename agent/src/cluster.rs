//! `ringvault cluster init`: a CA, node certificates and configs, an agent
//! certificate and config, and the cluster map, laid out for deployment.
//!
//! ```text
//! DIR/ca.pem, ca.key            the cluster CA (keep ca.key offline)
//! DIR/cluster.toml              the cluster map
//! DIR/node-<id>/                copy to node <id>: chunkserver.toml, node.pem,
//!                               node.key, ca.pem, cluster.toml
//! DIR/agent/                    copy to a client: agent.toml, agent.pem,
//!                               agent.key, ca.pem (role: `--role`, admin
//!                               unless told otherwise)
//! DIR/agent-<id>/               made by `ringvault cluster add-agent`
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ringvault_common::placement::{ClusterMap, NodeInfo};
use ringvault_common::tls::{self, PemPair, Role};
use ringvault_common::{NodeId, RepoId};

use ringvault_net::files::write_private;

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
    /// Role of the agent certificate.
    pub role: Role,
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
        revoked: Vec::new(),
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
        let cfg = node_config(node.id, &listen_for(host, &node.address));
        let path = dir.join("chunkserver.toml");
        write(&path, &cfg)?;
        node_configs.push(path);
    }

    let dir = opts.dir.join("agent");
    let (agent_config, _) = write_agent_dir(&dir, &ca, &map, &repo, &opts.agent_id, opts.role)?;
    Ok(ClusterLayout {
        map: opts.dir.join("cluster.toml"),
        node_configs,
        agent_config,
    })
}

/// Writes an agent's directory: a certificate for `agent` in `repo` with
/// `role`, its key (0600), the CA certificate and an `agent.toml` naming
/// every server of `map`. Returns the config's path and the certificate's
/// SHA-256 fingerprint (what `cluster revoke` takes).
fn write_agent_dir(
    dir: &Path,
    ca: &PemPair,
    map: &ClusterMap,
    repo: &RepoId,
    agent: &str,
    role: Role,
) -> anyhow::Result<(PathBuf, String)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pair = tls::issue_agent(ca, repo, agent, role)?;
    write_pair(dir, "agent", &pair)?;
    write(&dir.join("ca.pem"), &ca.cert)?;
    let servers: Vec<String> = map
        .nodes
        .iter()
        .map(|n| format!("{:?}", n.address))
        .collect();
    let cfg = format!(
        "# ringvault agent config, made by `ringvault cluster`. Certificate: agent {agent}, role {role}.\n\
         # See config/agent.toml in the source for every setting.\n\
         repository = \"{repo}\"\nservers = [{}]\nca-cert = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n",
        servers.join(", ")
    );
    let agent_config = dir.join("agent.toml");
    write(&agent_config, &cfg)?;
    Ok((agent_config, tls::fingerprint_pem(&pair.cert)?))
}

/// What [`add_agent`] wrote.
#[derive(Clone, Debug)]
pub struct AgentLayout {
    /// The agent's config.
    pub config: PathBuf,
    /// SHA-256 fingerprint of its certificate, lowercase hex.
    pub fingerprint: String,
}

/// Issues a certificate for another agent (host) of `repository` with
/// `role`, in `out` (default `dir/agent-<id>/`), from the CA key in the
/// cluster directory `dir`.
///
/// # Errors
/// A bad repository name or agent id, an existing `out` holding a key, an
/// unreadable or too open CA key, or a file that cannot be written.
pub fn add_agent(
    dir: &Path,
    repository: &str,
    agent: &str,
    role: Role,
    out: Option<&Path>,
) -> anyhow::Result<AgentLayout> {
    let repo = RepoId::new(repository)?;
    let out = out.map_or_else(|| dir.join(format!("agent-{agent}")), Path::to_owned);
    if out.join("agent.key").exists() {
        bail!(
            "{} already holds an agent key; refusing to overwrite it",
            out.display()
        );
    }
    let ca = read_ca(dir)?;
    let map = read_map(dir)?;
    let (config, fingerprint) = write_agent_dir(&out, &ca, &map, &repo, agent, role)?;
    Ok(AgentLayout {
        config,
        fingerprint,
    })
}

/// The CA of the cluster directory `dir`; its key must be private.
fn read_ca(dir: &Path) -> anyhow::Result<PemPair> {
    let cert = dir.join("ca.pem");
    Ok(PemPair {
        cert: std::fs::read_to_string(&cert)
            .with_context(|| format!("reading {}", cert.display()))?,
        key: ringvault_net::files::read_private(&dir.join("ca.key"))?,
    })
}

/// The operator's copy of the cluster map in `dir`.
fn read_map(dir: &Path) -> anyhow::Result<ClusterMap> {
    let path = dir.join("cluster.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    ClusterMap::parse(&text).with_context(|| format!("invalid {}", path.display()))
}

/// The address a node at `address` (whose host is `host`) listens on: the
/// address itself on loopback, else every interface at its port.
fn listen_for(host: &str, address: &str) -> String {
    let port = address.rsplit(':').next().unwrap_or("7401");
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
    {
        address.to_owned()
    } else {
        format!("0.0.0.0:{port}")
    }
}

/// A node's `chunkserver.toml`.
fn node_config(id: NodeId, listen: &str) -> String {
    format!(
        "# ringvault-chunkserver config for node {id}, made by `ringvault cluster`.\n\
         # See config/chunkserver.toml in the source for every setting.\n\
         node-id = {id}\nlisten = \"{listen}\"\ndata-dir = \"data\"\n\
         ca-cert = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\ncluster-map = \"cluster.toml\"\n",
        id = id.0,
    )
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

/// A change to the cluster map, made by [`change_map`].
#[derive(Clone, Debug)]
pub enum MapChange {
    /// Add a node (its id is the next free one unless given).
    AddNode {
        /// Its id, or `None` for one above every id in the map.
        id: Option<u32>,
        /// `host:port` others reach it at.
        address: String,
        /// Relative capacity.
        weight: u32,
        /// Failure domain.
        zone: String,
    },
    /// Remove a node: its blobs move to the new owners.
    RemoveNode {
        /// The node.
        id: u32,
    },
    /// Change a node's weight.
    SetWeight {
        /// The node.
        id: u32,
        /// New relative capacity.
        weight: u32,
    },
    /// Revoke a certificate: servers refuse every request made with it.
    Revoke {
        /// Its SHA-256 fingerprint, lowercase hex.
        fingerprint: String,
    },
}

/// What [`change_map`] did.
#[derive(Clone, Debug)]
pub struct MapChangeReport {
    /// The committed map.
    pub map: ClusterMap,
    /// The directory made for an added node (certificate, key, configs).
    pub node_dir: Option<PathBuf>,
    /// Servers that committed the map now; the rest learn it from their
    /// peers within one probe interval.
    pub committed: Vec<NodeId>,
    /// Servers that did not answer, with why.
    pub unreachable: Vec<(NodeId, String)>,
}

/// Changes the cluster map of the cluster whose `cluster init` directory is
/// `dir` (it holds the CA key, which mints a short-lived operator
/// certificate):
///
/// 1. learns the newest committed map from the servers (the directory's
///    `cluster.toml` names them);
/// 2. applies `change` and raises the epoch by one;
/// 3. asks every node of that map to promise the new map (its digest), and
///    stops unless a majority does (see the chunk server's `membership` module);
/// 4. commits it on every node that answers, and writes it to
///    `dir/cluster.toml`; for an added node, writes `dir/node-<id>/` with its
///    certificate, key and configs, the map included.
///
/// # Errors
/// A change that does not apply (unknown node, duplicate id, a map N or W
/// cannot hold), no majority of servers reachable, or a conflicting change
/// (another operator's, or a stale base: run it again).
pub async fn change_map(dir: &Path, change: &MapChange) -> anyhow::Result<MapChangeReport> {
    use ringvault_common::wire::{
        CommitMap, Hello, PROTOCOL_VERSION, PrepareMap, Promise, Welcome,
    };
    use ringvault_net::quic::{self, CallError, Peers};

    let ca = read_ca(dir)?;
    let local = read_map(dir)?;
    let op = tls::issue_operator(&ca, "operator", std::time::SystemTime::now())?;
    let material = tls::TlsMaterial::from_pem(&ca.cert, &op.cert, &op.key)?;
    let bind = if local.nodes.iter().any(|n| n.address.starts_with('[')) {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let endpoint = quic::endpoint(bind.parse()?, None, quic::client_config(&material)?)
        .context("binding a UDP socket")?;
    let timeout = std::time::Duration::from_secs(5);
    let peers = Peers::new(endpoint.clone(), timeout, std::time::Duration::from_secs(1));

    // 1. The newest committed map any server (of the local copy) holds.
    let mut base = local.clone();
    let mut unreachable = Vec::new();
    for node in &local.nodes {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            epoch: local.epoch,
        };
        match peers
            .request(node.id, &node.address, hello, vec![], timeout)
            .await
        {
            Ok((Welcome { map, .. }, _)) if map.epoch > base.epoch => base = map,
            Ok(_) => {}
            Err(e) => unreachable.push((node.id, e.to_string())),
        }
    }
    if unreachable.len() == local.nodes.len() {
        bail!(
            "no server of {} answered: {}",
            dir.join("cluster.toml").display(),
            describe(&unreachable)
        );
    }

    // 2. The new map.
    let mut map = base.clone();
    map.epoch = base
        .epoch
        .checked_add(1)
        .context("a server reports the largest possible map epoch; the map cannot change")?;
    let mut added = None;
    match change {
        MapChange::AddNode {
            id,
            address,
            weight,
            zone,
        } => {
            let id = NodeId(
                id.unwrap_or_else(|| map.nodes.iter().map(|n| n.id.0).max().unwrap_or(0) + 1),
            );
            if map.node(id).is_some() {
                bail!("node {id} is already in the map (epoch {})", base.epoch);
            }
            let info = NodeInfo {
                id,
                address: address.clone(),
                weight: *weight,
                zone: zone.clone(),
            };
            map.nodes.push(info.clone());
            added = Some(info);
        }
        MapChange::RemoveNode { id } => {
            let before = map.nodes.len();
            map.nodes.retain(|n| n.id.0 != *id);
            if map.nodes.len() == before {
                bail!("node {id} is not in the map (epoch {})", base.epoch);
            }
        }
        MapChange::SetWeight { id, weight } => match map.nodes.iter_mut().find(|n| n.id.0 == *id) {
            Some(n) => n.weight = *weight,
            None => bail!("node {id} is not in the map (epoch {})", base.epoch),
        },
        MapChange::Revoke { fingerprint } => {
            if map.is_revoked(fingerprint) {
                bail!("{fingerprint} is already revoked (epoch {})", base.epoch);
            }
            map.revoked.push(fingerprint.clone());
        }
    }
    map.validate().context("the changed map")?;

    // 3. Promises from a majority of the base map's nodes.
    let digest = map.digest();
    let mut granted = 0usize;
    let mut highest = base.epoch;
    for node in &base.nodes {
        let req = PrepareMap {
            epoch: map.epoch,
            digest,
            base: base.epoch,
        };
        match peers
            .request(node.id, &node.address, req, vec![], timeout)
            .await
        {
            Ok((Promise { granted: true, .. }, _)) => granted += 1,
            Ok((Promise { highest: h, .. }, _)) => highest = highest.max(h),
            Err(e) => unreachable.push((node.id, e.to_string())),
        }
    }
    let majority = base.nodes.len() / 2 + 1;
    if granted < majority {
        bail!(
            "only {granted} of {} servers promised map epoch {} (a majority, {majority}, is needed): {}",
            base.nodes.len(),
            map.epoch,
            if highest >= map.epoch {
                format!(
                    "another change reached epoch {highest}; run the command again to make this change on top of it"
                )
            } else {
                describe(&unreachable)
            }
        );
    }

    // 4. Files for an added node, then the commit.
    let node_dir = match &added {
        Some(info) => Some(write_node_dir(dir, &ca, info, &map)?),
        None => None,
    };
    let mut committed = Vec::new();
    unreachable.clear();
    let mut targets = base.nodes.clone();
    targets.extend(added.iter().cloned());
    for node in &targets {
        let commit = CommitMap { map: map.clone() };
        match peers
            .request(node.id, &node.address, commit, vec![], timeout)
            .await
        {
            Ok(_) => committed.push(node.id),
            Err(CallError::Remote(e)) => unreachable.push((node.id, e.to_string())),
            Err(e) => unreachable.push((node.id, e.to_string())),
        }
    }
    if committed.is_empty() {
        bail!(
            "no server committed map epoch {}: {}",
            map.epoch,
            describe(&unreachable)
        );
    }
    write(
        &dir.join("cluster.toml"),
        &format!(
            "# ringvault cluster map, changed by `ringvault cluster`. The servers hold the\n\
             # committed map; this is the operator's copy.\n{}",
            map.to_toml()
        ),
    )?;
    endpoint.close(0u32.into(), b"done");
    Ok(MapChangeReport {
        map,
        node_dir,
        committed,
        unreachable,
    })
}

/// Servers' failures as one line: `node: error; node: error`.
pub(crate) fn describe<E: std::fmt::Display>(failures: &[(NodeId, E)]) -> String {
    failures
        .iter()
        .map(|(n, e)| format!("{n}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Writes `dir/node-<id>/` for a node joining `map`: certificate, key, the
/// CA, the map and a config listening on the node's port.
fn write_node_dir(
    dir: &Path,
    ca: &PemPair,
    info: &NodeInfo,
    map: &ClusterMap,
) -> anyhow::Result<PathBuf> {
    let node_dir = dir.join(format!("node-{}", info.id.0));
    std::fs::create_dir_all(&node_dir)
        .with_context(|| format!("creating {}", node_dir.display()))?;
    let host = info
        .address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .unwrap_or_else(|| info.address.clone());
    let pair = tls::issue_node(ca, info.id, std::slice::from_ref(&host))?;
    write_pair(&node_dir, "node", &pair)?;
    write(&node_dir.join("ca.pem"), &ca.cert)?;
    write(&node_dir.join("cluster.toml"), &map.to_toml())?;
    write(
        &node_dir.join("chunkserver.toml"),
        &node_config(info.id, &listen_for(&host, &info.address)),
    )?;
    Ok(node_dir)
}
