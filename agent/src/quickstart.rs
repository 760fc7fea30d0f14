//! `ringvault quickstart DIR`: the whole system on one machine.
//!
//! Under `<data dir>/quickstart` it makes (once) a cluster CA, three node
//! configs on free loopback ports and an agent config; starts three
//! `ringvault-chunkserver` processes in the background (or reuses those
//! already answering); initializes the repository if needed; and backs up
//! DIR. `--stop` stops the servers.
//!
//! The repository password is the one the user gives (a password flag or
//! environment variable, see [`crate::password`]), which quickstart writes
//! nowhere. Only when none is given does it make a random one, written to
//! `<home>/password` (mode 0600) and named by the agent config's
//! `password-file`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringvault_common::chunker::ChunkerParams;
use ringvault_common::config::AgentConfig;
use ringvault_common::keys::KdfParams;

use crate::client::{ClientError, Cluster};
use crate::cluster::{self, ClusterInit};
use crate::repo;
use ringvault_net::files::write_private;

/// Nodes in the quickstart cluster.
const NODES: u32 = 3;

/// The quickstart's home: `<data dir>/quickstart`.
///
/// # Errors
/// When no data directory can be found.
pub fn home() -> anyhow::Result<PathBuf> {
    Ok(repo::data_dir()?.join("quickstart"))
}

/// Makes the quickstart's files if they do not exist yet; returns the agent
/// config path. With `make_password`, a new layout gets a random password
/// in `<home>/password`, named by the config's `password-file`; without
/// it (the user gave one) no password is written.
///
/// # Errors
/// When files cannot be written or no free port is found.
pub fn ensure_layout(home: &Path, make_password: bool) -> anyhow::Result<PathBuf> {
    let agent = home.join("agent").join("agent.toml");
    if agent.exists() {
        return Ok(agent);
    }
    if home.join("ca.pem").exists() {
        bail!(
            "{} is incomplete (no agent/agent.toml); move it aside to start afresh",
            home.display()
        );
    }
    let ports = free_udp_ports(NODES as usize)?;
    let layout = cluster::init(&ClusterInit {
        dir: home.to_owned(),
        nodes: NODES,
        hosts: vec!["127.0.0.1".into()],
        ports,
        base_port: 0,
        repository: "default".into(),
        agent_id: "quickstart".into(),
        role: ringvault_common::tls::Role::Admin,
        replicas: 3,
        write_quorum: 2,
    })?;
    if make_password {
        let password: String = repo::random::<18>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        write_private(&home.join("password"), password.as_bytes())
            .context("writing the password file")?;
        let mut cfg = std::fs::read_to_string(&layout.agent_config)?;
        cfg.push_str("password-file = \"../password\"\n");
        std::fs::write(&layout.agent_config, cfg)?;
    }
    Ok(layout.agent_config)
}

/// `n` loopback ports for the servers, below the kernel's ephemeral range
/// ([`ringvault_net::ports`]): the kernel never gives them to a client
/// socket, now or after a reboot, while the quickstart's map names them.
fn free_udp_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let start = u16::try_from(std::process::id() % 4_000).unwrap_or(0);
    let (ports, _) = ringvault_net::ports::free_below_ephemeral(n, 4_000, start)
        .context("finding free loopback ports for the servers")?;
    Ok(ports)
}

/// Finds `ringvault-chunkserver`: next to this executable, then on PATH.
///
/// # Errors
/// When it is in neither place.
pub fn chunkserver_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    if let Some(dir) = exe.parent() {
        let beside = dir.join("ringvault-chunkserver");
        if beside.is_file() {
            return Ok(beside);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("ringvault-chunkserver");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "cannot find ringvault-chunkserver next to {} or on PATH; build both with `cargo build --release --locked`",
        exe.display()
    )
}

/// Starts every node of the layout that does not answer yet, and waits
/// until all answer. Returns how many it started.
///
/// # Errors
/// When a server cannot be started or does not come up within 20 s (its
/// log is named).
pub async fn start_servers(home: &Path, agent: &AgentConfig) -> anyhow::Result<usize> {
    let mut started = 0;
    for (i, addr) in agent.servers.iter().enumerate() {
        if answers(agent, addr).await {
            continue;
        }
        let node_dir = home.join(format!("node-{}", i + 1));
        let log = std::fs::File::create(node_dir.join("server.log"))?;
        let child = Command::new(chunkserver_binary()?)
            .arg("--config")
            .arg(node_dir.join("chunkserver.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting ringvault-chunkserver")?;
        std::fs::write(node_dir.join("pid"), child.id().to_string())?;
        started += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, addr) in agent.servers.iter().enumerate() {
        while !answers(agent, addr).await {
            if Instant::now() > deadline {
                bail!(
                    "server {addr} did not come up; see {}",
                    home.join(format!("node-{}/server.log", i + 1)).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(started)
}

async fn answers(config: &AgentConfig, addr: &str) -> bool {
    let mut one = config.clone();
    one.servers = vec![addr.to_owned()];
    one.request_timeout_ms = 1000;
    match repo::connect(&one).await {
        Ok((cluster, _)) => {
            cluster.close().await;
            true
        }
        Err(_) => false,
    }
}

/// Stops the quickstart's servers (SIGTERM to the recorded pids).
///
/// # Errors
/// When the quickstart has not been set up.
pub fn stop(home: &Path) -> anyhow::Result<usize> {
    let mut stopped = 0;
    for i in 1..=NODES {
        let pid_file = home.join(format!("node-{i}/pid"));
        let Ok(pid) = std::fs::read_to_string(&pid_file) else {
            continue;
        };
        let pid = pid.trim();
        if pid.parse::<u32>().is_err() || !is_chunkserver(pid) {
            // Stale pid file: the server is gone, and the pid may now be
            // another program's.
            let _ = std::fs::remove_file(pid_file);
            continue;
        }
        let ok = Command::new("kill")
            .args(["-TERM", pid])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            stopped += 1;
        }
        let _ = std::fs::remove_file(pid_file);
    }
    Ok(stopped)
}

/// Whether process `pid` runs `ringvault-chunkserver`: from
/// `/proc/<pid>/cmdline` on Linux, else from `ps` (macOS).
fn is_chunkserver(pid: &str) -> bool {
    if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
        return String::from_utf8_lossy(&cmdline).contains("ringvault-chunkserver");
    }
    if Path::new("/proc/self").exists() {
        return false; // Linux, and no such process
    }
    Command::new("ps")
        .args(["-p", pid, "-o", "args="])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ringvault-chunkserver"))
}

/// Initializes the repository with `password` unless the cluster already
/// has its key; true when it did.
///
/// # Errors
/// Connection or init errors (an empty password among them).
pub async fn ensure_repository(config: &AgentConfig, password: &str) -> anyhow::Result<bool> {
    let (cluster, _): (Cluster, _) = repo::connect(config).await?;
    let exists = match cluster.list_keys().await {
        Ok(_) => true,
        Err(ClientError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    cluster.close().await;
    if exists {
        return Ok(false);
    }
    repo::init(
        config,
        password,
        KdfParams::default(),
        ChunkerParams::default(),
    )
    .await?;
    Ok(true)
}
