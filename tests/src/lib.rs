//! The cluster harness for ringvault's end-to-end tests.
//!
//! [`TestCluster`] makes a CA and configs with `ringvault cluster init`'s
//! library code, starts real `ringvault-chunkserver` processes on loopback
//! ports in a temporary directory, and runs the real `ringvault` binary
//! against them. Servers are killed when the cluster is dropped.
//!
//! The binaries are looked up beside the test executable's `target/<profile>`
//! directory; `cargo test --workspace` builds them (each package that owns
//! one has integration tests, which makes cargo build it).
//!
//! [`TestCluster::start_with_proxies`] puts a [`FaultProxy`] in front of
//! each server: the cluster map and the agent config name the proxy's port,
//! so the agent and the other servers reach node `i` only through proxy `i`,
//! whose faults a test switches on and off.

pub mod fidelity;
pub mod hostile;
pub mod inproc;
pub mod powerfail;
pub mod proxy;

pub use proxy::FaultProxy;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringvault::cluster::{self, ClusterInit, ClusterLayout};

/// The repository password every test uses.
pub const PASSWORD: &str = "correct horse battery staple";

/// Path of one of the workspace's binaries in the current target directory.
///
/// # Panics
/// When the binary has not been built (a harness setup error, with advice).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing; run the tests with `cargo test --workspace` (which builds it) or `cargo build --bins` first",
        path.display()
    );
    path
}

/// A running cluster of real chunk-server processes.
pub struct TestCluster {
    /// The temporary directory holding everything (kept until drop).
    pub dir: tempfile::TempDir,
    /// Paths of the generated configs.
    pub layout: ClusterLayout,
    procs: Vec<Option<Child>>,
    /// One per node with [`TestCluster::start_with_proxies`], else empty.
    proxies: Vec<FaultProxy>,
}

/// What [`TestCluster::with`] starts.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Servers.
    pub nodes: u32,
    /// N.
    pub replicas: u32,
    /// W.
    pub quorum: u32,
    /// A [`FaultProxy`] in front of each server
    /// (see [`TestCluster::start_with_proxies`]).
    pub proxies: bool,
    /// Lines appended to every server's `chunkserver.toml`.
    pub server_config: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            replicas: 3,
            quorum: 2,
            proxies: false,
            server_config: String::new(),
        }
    }
}

/// Settings every test server gets.
const TEST_SERVER_CONFIG: &str = "replica-timeout-ms = 5000\n";

/// How the agent and the servers reach each server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wiring {
    /// At the port it listens on.
    Direct,
    /// Through a [`FaultProxy`] whose port the configs name instead.
    Proxied,
}

impl TestCluster {
    /// Makes configs for `nodes` servers with N = `replicas`, W = `quorum`,
    /// starts them all and waits until each listens.
    ///
    /// # Errors
    /// When configs cannot be made or a server does not start.
    pub fn start(nodes: u32, replicas: u32, quorum: u32) -> anyhow::Result<Self> {
        Self::with(ClusterOptions {
            nodes,
            replicas,
            quorum,
            ..ClusterOptions::default()
        })
    }

    /// Starts a cluster as `options` say.
    ///
    /// # Errors
    /// As [`TestCluster::start`] and [`TestCluster::start_with_proxies`].
    pub fn with(options: ClusterOptions) -> anyhow::Result<Self> {
        let wiring = if options.proxies {
            Wiring::Proxied
        } else {
            Wiring::Direct
        };
        Self::build(
            options.nodes,
            options.replicas,
            options.quorum,
            wiring,
            &options.server_config,
        )
    }

    /// Like [`TestCluster::start`], with a [`FaultProxy`] in front of each
    /// server: the cluster map and the agent config name proxy `i`'s port,
    /// node `i` listens on another port behind it, so every datagram to or
    /// from node `i` (from the agent or another server) passes proxy `i`.
    /// See [`TestCluster::proxy`].
    ///
    /// # Errors
    /// When configs cannot be made, a proxy cannot bind its port, or a
    /// server does not start.
    pub fn start_with_proxies(nodes: u32, replicas: u32, quorum: u32) -> anyhow::Result<Self> {
        Self::with(ClusterOptions {
            nodes,
            replicas,
            quorum,
            proxies: true,
            ..ClusterOptions::default()
        })
    }

    fn build(
        nodes: u32,
        replicas: u32,
        quorum: u32,
        wiring: Wiring,
        server_config: &str,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let n = nodes as usize;
        // The configs name the first `n` ports; with proxies, the servers
        // listen on the next `n`.
        let ports = free_ports(if wiring == Wiring::Proxied { 2 * n } else { n })?;
        let (named, behind) = ports.split_at(n);
        let layout = cluster::init(&ClusterInit {
            dir: dir.path().join("cluster"),
            nodes,
            hosts: vec!["127.0.0.1".into()],
            ports: named.to_vec(),
            base_port: 0,
            repository: "test".into(),
            agent_id: "tester".into(),
            role: ringvault_common::tls::Role::Admin,
            replicas,
            write_quorum: quorum,
        })?;
        // Agents keep their state (index, key cache) inside the test dir.
        let agent_cfg = std::fs::read_to_string(&layout.agent_config)?;
        std::fs::write(
            &layout.agent_config,
            format!("{agent_cfg}state-dir = \"state\"\nrequest-timeout-ms = 20000\n"),
        )?;
        let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut proxies = Vec::new();
        for (i, cfg) in layout.node_configs.iter().enumerate() {
            let mut text = std::fs::read_to_string(cfg)?;
            if let Some(&port) = behind.get(i) {
                text = with_listen(&text, loopback(port))
                    .with_context(|| format!("rewriting {}", cfg.display()))?;
                let proxy = FaultProxy::start(loopback(named[i]), loopback(port))
                    .with_context(|| format!("starting the proxy for node {i}"))?;
                proxies.push(proxy);
            }
            std::fs::write(cfg, format!("{text}{TEST_SERVER_CONFIG}{server_config}"))?;
        }
        std::fs::create_dir_all(dir.path().join("home"))?;
        let mut c = Self {
            dir,
            layout,
            procs: Vec::new(),
            proxies,
        };
        for i in 0..n {
            c.procs.push(None);
            c.restart(i)?;
        }
        Ok(c)
    }

    /// The proxy in front of node `i` (0-based), to inject faults on every
    /// path to and from it.
    ///
    /// # Panics
    /// When the cluster was not made by [`TestCluster::start_with_proxies`]
    /// or has no node `i`.
    pub fn proxy(&self, i: usize) -> &FaultProxy {
        assert!(
            !self.proxies.is_empty(),
            "no proxies: start the cluster with TestCluster::start_with_proxies"
        );
        &self.proxies[i]
    }

    /// The `cluster init` directory (CA, map, node and agent files).
    pub fn cluster_dir(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    /// Sets `key = value` (TOML) in node `i`'s config, replacing an earlier
    /// setting of `key`; takes effect at its next (re)start.
    ///
    /// # Panics
    /// When the config cannot be read or written (a harness failure).
    pub fn set_server_setting(&self, i: usize, key: &str, value: &str) {
        let path = &self.layout.node_configs[i];
        let text = std::fs::read_to_string(path).expect("node config");
        let mut kept: Vec<&str> = text
            .lines()
            .filter(|l| l.split('=').next().map(str::trim) != Some(key))
            .collect();
        let line = format!("{key} = {value}");
        kept.push(&line);
        std::fs::write(path, kept.join("\n") + "\n").expect("writing the node config");
    }

    /// What node `i` has logged since its last start.
    pub fn server_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("server.log")).unwrap_or_default()
    }

    /// Starts one more server from `config` (a node directory made by
    /// `ringvault cluster add-node`), with the test settings and `extra`
    /// appended; returns its index.
    ///
    /// # Errors
    /// When the config cannot be written or the server does not start.
    pub fn add_server(&mut self, config: &Path, extra: &str) -> anyhow::Result<usize> {
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        std::fs::write(config, format!("{text}{TEST_SERVER_CONFIG}{extra}"))?;
        self.layout.node_configs.push(config.to_owned());
        self.procs.push(None);
        let i = self.procs.len() - 1;
        self.restart(i)?;
        Ok(i)
    }

    /// Adds a server with `ringvault cluster add-node` on a free loopback
    /// port and starts it with `extra` settings; returns its index and the
    /// committed map epoch.
    ///
    /// # Errors
    /// When the map change fails or the server does not start.
    pub fn add_node(&mut self, extra: &str) -> anyhow::Result<(usize, u64)> {
        let port = free_ports(1)?[0];
        let dir = self.cluster_dir();
        let out = self.ok(&[
            "--json",
            "cluster",
            "add-node",
            "--dir",
            dir.to_str().context("cluster dir is not UTF-8")?,
            "--address",
            &format!("127.0.0.1:{port}"),
        ])?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        let node_dir = v["node_dir"]
            .as_str()
            .context("add-node named no node dir")?;
        let epoch = v["epoch"].as_u64().context("add-node named no epoch")?;
        let i = self.add_server(&Path::new(node_dir).join("chunkserver.toml"), extra)?;
        Ok((i, epoch))
    }

    /// The agent config file.
    pub fn agent_config(&self) -> &Path {
        &self.layout.agent_config
    }

    /// Node `i`'s (0-based) directory, holding its config, log and `data/`.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.layout.node_configs[i]
            .parent()
            .expect("node dir")
            .to_owned()
    }

    /// Waits (at most 30 s) until every server answers `cluster status` and
    /// sees every peer up: after a restart, peers route around a server
    /// until their next probe, and a test that needs it written to must
    /// wait for that.
    ///
    /// # Errors
    /// When that does not happen in time.
    pub fn wait_all_up(&self) -> anyhow::Result<()> {
        wait_for(
            "every server to see every peer up",
            Duration::from_secs(30),
            || {
                let out = self.run(&["--json", "cluster", "status"]).ok()?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let rows = v["nodes"].as_array()?;
                let up = !rows.is_empty()
                    && rows.iter().all(|r| {
                        r["state"] == "up"
                            && r["peers"]
                                .as_array()
                                .is_some_and(|p| p.iter().all(|p| p["state"] == "up"))
                    });
                up.then_some(())
            },
        )
    }

    /// The process id of node `i`, while it runs.
    pub fn server_pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(Child::id)
    }

    /// The address node `i` listens on (`host:port`, from its config).
    pub fn server_address(&self, i: usize) -> String {
        let config = std::fs::read_to_string(&self.layout.node_configs[i]).unwrap_or_default();
        config
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .unwrap_or_default()
    }

    /// Kills node `i` with SIGKILL (no chance to clean up).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.procs[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to node `i` and returns its exit status.
    ///
    /// # Errors
    /// When it does not exit within 10 s.
    pub fn terminate(&mut self, i: usize) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.procs[i].take().context("node not running")?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("node {i} did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// (Re)starts node `i` and waits until it listens.
    ///
    /// # Errors
    /// When it exits or does not listen within 15 s (its log is included).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        let dir = self.node_dir(i);
        let log_path = dir.join("server.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(bin("ringvault-chunkserver"))
            .arg("--config")
            .arg(&self.layout.node_configs[i])
            .env("RINGVAULT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("chunk server listening") {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("node {i} exited ({status}) at start:\n{text}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("node {i} did not start within 15 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.procs[i] = Some(child);
        Ok(())
    }

    /// A `ringvault` command for this cluster's agent, with the test
    /// password, a private HOME, and warnings logged.
    pub fn ringvault(&self) -> Command {
        self.ringvault_with(self.agent_config())
    }

    /// Like [`TestCluster::ringvault`] with another agent config.
    pub fn ringvault_with(&self, config: &Path) -> Command {
        let mut cmd = Command::new(bin("ringvault"));
        cmd.arg("--config")
            .arg(config)
            .env("RINGVAULT_PASSWORD", PASSWORD)
            .env("HOME", self.dir.path().join("home"))
            .env_remove("RINGVAULT_CONFIG")
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CONFIG_HOME")
            // The command's own default filter: tests see what users see.
            .env_remove("RINGVAULT_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `ringvault ARGS`, bounded to 120 s.
    ///
    /// # Errors
    /// When it cannot be started or runs too long.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        run_bounded(self.ringvault().args(args), Duration::from_secs(120))
    }

    /// Starts `ringvault ARGS` in the background (stdout discarded, stderr
    /// piped), for a command to overlap with others; the caller waits.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        Ok(self
            .ringvault()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// Runs `ringvault ARGS` and fails unless it exits 0; returns stdout.
    ///
    /// # Errors
    /// When it fails, with its output.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "ringvault {args:?} failed ({}):\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A running `ringvault agent`, killed when dropped. Its stderr (logged at
/// info) goes to a file.
pub struct AgentProcess {
    child: std::process::Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl AgentProcess {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let _ = self.child.kill();
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for the killed agent: {e}"))
    }

    /// Sends SIGTERM and waits up to `limit` for it to exit.
    ///
    /// # Errors
    /// When it does not exit in time.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        wait_for("the agent to stop after SIGTERM", limit, || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestCluster {
    /// Starts `ringvault agent` with `config` (an agent config listing
    /// `paths`), logging at info to `<test dir>/<name>.log`.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn start_agent(&self, config: &Path, name: &str) -> anyhow::Result<AgentProcess> {
        self.start_agent_with(config, name, &[])
    }

    /// Like [`TestCluster::start_agent`], with more environment variables.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn start_agent_with(
        &self,
        config: &Path,
        name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<AgentProcess> {
        let log = self.dir.path().join(format!("{name}.log"));
        let child = self
            .ringvault_with(config)
            .arg("agent")
            .envs(env.iter().copied())
            .env("RINGVAULT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(AgentProcess { child, log })
    }

    /// Runs `ringvault --json check [--read-data]`: its exit code (-1 when
    /// killed by a signal) and its JSON report (`Null` when it printed
    /// none).
    ///
    /// # Errors
    /// When the command cannot be run.
    pub fn check(&self, read_data: bool) -> anyhow::Result<(i32, serde_json::Value)> {
        let mut args = vec!["--json", "check"];
        if read_data {
            args.push("--read-data");
        }
        let out = self.run(&args)?;
        let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        Ok((out.status.code().unwrap_or(-1), report))
    }

    /// The repository's snapshots (`ringvault --json snapshots`), oldest
    /// first.
    ///
    /// # Errors
    /// When the command fails or prints something else.
    pub fn snapshots(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.ok(&["--json", "snapshots"])?;
        match serde_json::from_str(&out)? {
            serde_json::Value::Array(list) => Ok(list),
            other => bail!("snapshots printed {other}"),
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `limit`.
///
/// # Errors
/// When `limit` passes first, naming `what`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting {limit:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

/// Waits for a started command to exit, for at most `limit` (killing it
/// then); returns its output.
///
/// # Errors
/// When it runs longer than `limit`.
pub fn wait_child(child: &mut Child, limit: Duration) -> anyhow::Result<Output> {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || stdout.map(read_all).unwrap_or_default());
    let err_t = std::thread::spawn(move || stderr.map(read_all).unwrap_or_default());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the command ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// Runs a command with a time limit, killing it when exceeded.
///
/// # Errors
/// When it cannot start or exceeds `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    wait_child(&mut child, limit).with_context(|| format!("{cmd:?}"))
}

fn read_all(mut r: impl std::io::Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// A chunk-server config with its `listen` line set to `addr`.
///
/// # Errors
/// When `config` has no `listen` line.
fn with_listen(config: &str, addr: SocketAddr) -> anyhow::Result<String> {
    let mut found = false;
    let lines: Vec<String> = config
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("listen =") {
                found = true;
                format!("listen = \"{addr}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    if !found {
        bail!("no `listen = ...` line");
    }
    Ok(lines.join("\n") + "\n")
}

/// How many ports below the kernel's ephemeral range [`free_ports`] hands
/// out from (a full suite takes about a thousand).
const PORT_SPAN: u16 = 12_000;

/// `n` distinct loopback ports, free for both UDP and TCP on 127.0.0.1 when
/// asked, that this process has never handed out before and that lie below
/// the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
///
/// A test counts a port as its own for the whole test, also while the
/// server on it is down (killed, or restarting). Ports from `bind(0)` were
/// not: the kernel could give a down server's port to another test's new
/// server, and the first test's clients then met a stranger with another
/// CA's certificate. Here no other test of this process gets the port, and
/// no client socket the kernel numbers takes it. Another process may still
/// bind it; that is why each candidate is tried first.
///
/// # Errors
/// When `n` free ports cannot be found in the span.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    use parking_lot::Mutex;
    // The offset in the span of the next port to try; None before the first.
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let mut next = NEXT.lock();
    // Each process starts at its own place, so that concurrent test
    // processes (nextest runs one per test) seldom try the same ports.
    let start = next
        .unwrap_or_else(|| u16::try_from(std::process::id() % u32::from(PORT_SPAN)).unwrap_or(0));
    let (ports, after) = ringvault_net::ports::free_below_ephemeral(n, PORT_SPAN, start)?;
    *next = Some(after);
    Ok(ports)
}

/// Compares two directory trees: names, kinds, file bytes, symlink targets,
/// permission bits and file mtimes. Returns the first difference.
pub fn tree_diff(a: &Path, b: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let ma = std::fs::symlink_metadata(a).ok()?;
    let Ok(mb) = std::fs::symlink_metadata(b) else {
        return Some(format!("{} missing", b.display()));
    };
    if ma.file_type() != mb.file_type() {
        return Some(format!("{}: kind differs", b.display()));
    }
    if ma.file_type().is_symlink() {
        return (std::fs::read_link(a).ok() != std::fs::read_link(b).ok())
            .then(|| format!("{}: link target differs", b.display()));
    }
    if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
        return Some(format!(
            "{}: mode {:o} vs {:o}",
            b.display(),
            ma.mode() & 0o7777,
            mb.mode() & 0o7777
        ));
    }
    if ma.is_file() {
        if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            return Some(format!("{}: mtime differs", b.display()));
        }
        return (std::fs::read(a).ok() != std::fs::read(b).ok())
            .then(|| format!("{}: content differs", b.display()));
    }
    let names = |p: &Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let (na, nb) = (names(a), names(b));
    if na != nb {
        return Some(format!("{}: entries {:?} vs {:?}", b.display(), na, nb));
    }
    na.iter().find_map(|n| tree_diff(&a.join(n), &b.join(n)))
}

/// `GET path` from an HTTP/1.1 server at `addr` (loopback), within 10 s:
/// the response body of a 200.
///
/// # Errors
/// When the server cannot be reached, times out, or answers other than 200.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of HTTP headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ports a test holds are never handed out again in this process,
    /// and lie where the kernel does not number client sockets.
    #[test]
    fn free_ports_are_never_handed_out_twice_and_lie_below_the_ephemeral_range() {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            for port in free_ports(4).unwrap() {
                assert!(port < ephemeral_low, "{port} is in the ephemeral range");
                assert!(seen.insert(port), "{port} was handed out twice");
            }
        }
    }
}
