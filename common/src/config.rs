//! Configuration files: the chunk server's, the agent's and the cluster map.
//!
//! Each is TOML with kebab-case keys; unknown keys are errors. Parsing takes
//! the file's text and the directory it lives in (relative paths resolve
//! against it) and returns a validated config, so the rest of the code never
//! sees a half-valid one. Commented examples live in the repository's
//! `config/` folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::placement::{ClusterMap, MapError};
use crate::retention::Policy;
use crate::{NodeId, RepoId};

/// A config that does not parse or validate.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// TOML syntax or an unknown or mistyped key.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
    /// The cluster map is unusable.
    #[error(transparent)]
    Map(#[from] MapError),
}

/// One chunk server's config (`chunkserver.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChunkserverConfig {
    /// This node's id in the cluster map.
    pub node_id: NodeId,
    /// UDP address to listen on, e.g. `0.0.0.0:7401`.
    pub listen: String,
    /// Where blobs, the index and records live.
    pub data_dir: PathBuf,
    /// Cluster CA certificate, PEM.
    pub ca_cert: PathBuf,
    /// This node's certificate, PEM.
    pub cert: PathBuf,
    /// This node's private key, PEM (mode 0600).
    pub key: PathBuf,
    /// The cluster map file (`cluster.toml`).
    pub cluster_map: PathBuf,
    /// Most blobs made durable by one fsync.
    pub group_commit_blobs: usize,
    /// Segment file size before a new one is started, bytes.
    pub segment_bytes: u64,
    /// How long a coordinator waits for a replica, ms.
    pub replica_timeout_ms: u64,
    /// How long a peer that failed to answer is routed around (writes go to
    /// the next node, which keeps them as hints), ms.
    pub route_around_ms: u64,
    /// How long a peer must stay unreachable before it is treated as out and
    /// its chunks are copied to other nodes, seconds. Long, so a reboot
    /// causes no repair storm.
    pub out_after_s: u64,
    /// How often peers are probed for liveness, ms.
    pub probe_interval_ms: u64,
    /// Pause between maintenance rounds (anti-entropy, handoff), ms.
    pub repair_interval_ms: u64,
    /// Most bytes per second pulled by repair and pushed by handoff; 0 means
    /// no limit.
    pub repair_bytes_per_s: u64,
    /// Time for scrub to re-read every stored blob once, seconds; 0 turns
    /// scrub off.
    pub scrub_cycle_s: u64,
    /// Most bytes per second scrub reads, whatever the cycle asks.
    pub scrub_bytes_per_s: u64,
    /// Most blob bytes this node stores; writes past it are refused (and
    /// land on another node as hints). 0 means no quota.
    pub quota_bytes: u64,
    /// Free space kept on the data directory's file system, bytes: below
    /// `max(min-free-bytes, min-free-percent of its size)` the server
    /// refuses new blobs as full (they land on another node as hints),
    /// keeps serving reads, and takes writes again once space comes back.
    /// The room left keeps the index writable.
    pub min_free_bytes: u64,
    /// Free space kept, percent of the file system's size (0 to 50); see
    /// `min_free_bytes`.
    pub min_free_percent: u64,
    /// Local HTTP address for Prometheus metrics (`/metrics`), e.g.
    /// `127.0.0.1:9401`; empty turns metrics off.
    pub metrics_listen: String,
    /// How long a client (an agent or operator) may leave a request it has
    /// begun unsent before its connection is cut, ms.
    pub stall_timeout_ms: u64,
    /// Most request bytes one client connection may have buffered on this
    /// server at once (headers and payloads being read or handled); further
    /// requests wait, which QUIC flow control turns into back-pressure. At
    /// least one largest frame (65 MiB + 4 bytes).
    pub connection_budget_bytes: u64,
}

impl Default for ChunkserverConfig {
    fn default() -> Self {
        Self {
            node_id: NodeId(1),
            listen: "0.0.0.0:7401".into(),
            data_dir: PathBuf::from("/var/lib/ringvault"),
            ca_cert: PathBuf::from("ca.pem"),
            cert: PathBuf::from("node.pem"),
            key: PathBuf::from("node.key"),
            cluster_map: PathBuf::from("cluster.toml"),
            group_commit_blobs: 1024,
            segment_bytes: 1 << 30,
            replica_timeout_ms: 30_000,
            route_around_ms: 20_000,
            out_after_s: 600,
            probe_interval_ms: 2_000,
            repair_interval_ms: 30_000,
            repair_bytes_per_s: 64 << 20,
            scrub_cycle_s: 30 * 86_400,
            scrub_bytes_per_s: 32 << 20,
            quota_bytes: 0,
            min_free_bytes: 64 << 20,
            min_free_percent: 1,
            metrics_listen: String::new(),
            stall_timeout_ms: 30_000,
            connection_budget_bytes: 128 << 20,
        }
    }
}

impl ChunkserverConfig {
    /// Parses and validates; relative paths resolve against `base`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the bad key or value.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut c: Self = toml::from_str(text)?;
        for p in [
            &mut c.data_dir,
            &mut c.ca_cert,
            &mut c.cert,
            &mut c.key,
            &mut c.cluster_map,
        ] {
            *p = base.join(&*p);
        }
        if c.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "listen = {:?} is not an address:port",
                c.listen
            )));
        }
        if c.group_commit_blobs == 0 || c.segment_bytes < 1 << 20 {
            return Err(ConfigError::Invalid(
                "group-commit-blobs must be >= 1 and segment-bytes >= 1 MiB".into(),
            ));
        }
        if !c.metrics_listen.is_empty() && c.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "metrics-listen = {:?} is not an address:port",
                c.metrics_listen
            )));
        }
        // Bounds keep timers and rates in ranges tokio and arithmetic accept.
        let in_range = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::Invalid(format!(
                    "{name} = {v} is outside {lo}..={hi}"
                )))
            }
        };
        const DAY_MS: u64 = 86_400_000;
        in_range("replica-timeout-ms", c.replica_timeout_ms, 1, DAY_MS)?;
        in_range("route-around-ms", c.route_around_ms, 1, DAY_MS)?;
        in_range("out-after-s", c.out_after_s, 1, 365 * 86_400)?;
        in_range("probe-interval-ms", c.probe_interval_ms, 10, DAY_MS)?;
        in_range("repair-interval-ms", c.repair_interval_ms, 10, DAY_MS)?;
        in_range("scrub-cycle-s", c.scrub_cycle_s, 0, 10 * 365 * 86_400)?;
        in_range("scrub-bytes-per-s", c.scrub_bytes_per_s, 1, u64::MAX >> 1)?;
        in_range("stall-timeout-ms", c.stall_timeout_ms, 100, DAY_MS)?;
        in_range("min-free-percent", c.min_free_percent, 0, 50)?;
        in_range(
            "connection-budget-bytes",
            c.connection_budget_bytes,
            crate::wire::MAX_FRAME as u64,
            1 << 32,
        )?;
        Ok(c)
    }
}

/// The agent's config (`agent.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentConfig {
    /// The repository to use (must match the certificate).
    pub repository: String,
    /// Addresses (`host:port`) of one or more chunk servers; the rest of the
    /// cluster is learned from their map.
    pub servers: Vec<String>,
    /// Cluster CA certificate, PEM.
    pub ca_cert: PathBuf,
    /// The agent's certificate, PEM.
    pub cert: PathBuf,
    /// The agent's private key, PEM (mode 0600).
    pub key: PathBuf,
    /// Local state: the change-detection index and the key cache. Empty means
    /// the user's data directory.
    pub state_dir: PathBuf,
    /// File holding the repository password (its first line). The
    /// password flags and environment variables beat it; without any of
    /// them, a prompt.
    pub password_file: Option<PathBuf>,
    /// Host name recorded in snapshots; empty means the system's.
    pub host: String,
    /// Blob uploads in flight at once.
    pub upload_concurrency: usize,
    /// Request timeout, ms.
    pub request_timeout_ms: u64,
    /// Directories `ringvault agent` watches and backs up.
    pub paths: Vec<PathBuf>,
    /// `ringvault agent` snapshots once no change came for this long, ms.
    pub quiet_ms: u64,
    /// ...or once the oldest unsaved change is this old, ms.
    pub max_delay_ms: u64,
    /// A full scan against the local index this often, s, in case a change
    /// went unreported (0: never).
    pub full_scan_interval_s: u64,
    /// File-system events buffered between the watcher and the agent; past
    /// this many the agent scans its paths instead.
    pub event_queue: usize,
    /// gitignore-style patterns of paths not to back up, relative to each
    /// backed-up path (`.ringvaultignore` files in directories add more).
    pub exclude: Vec<String>,
    /// Skip directories holding a `CACHEDIR.TAG` (bford.info/cachedir).
    pub exclude_caches: bool,
    /// Skip files larger than this, bytes (0: no limit).
    pub exclude_larger_than: u64,
    /// Do not descend into other file systems than each path's own.
    pub one_file_system: bool,
    /// Apply [`AgentConfig::retention`] to this host's snapshots after each
    /// snapshot `ringvault agent` stores (`ringvault backup` does not).
    /// Needs a non-empty `[retention]`.
    pub apply_retention: bool,
    /// Prune moves a chunk to the trash only once it has been unreferenced
    /// for this long, s (1 s to 10 years), so a backup still uploading its
    /// snapshot does not lose chunks it counted on.
    pub prune_grace_s: u64,
    /// How long trashed blobs can still be restored before prune deletes
    /// them, s (0 to 10 years).
    pub trash_keep_s: u64,
    /// Most bytes of sealed trees kept on disk in the state directory, so
    /// browsing a snapshot again fetches no tree twice; 0 turns the cache
    /// off.
    pub tree_cache_bytes: u64,
    /// Which snapshots `forget` keeps (TOML table `[retention]`); empty by
    /// default, and `forget` refuses an empty policy.
    pub retention: Policy,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            repository: "default".into(),
            servers: vec![],
            ca_cert: PathBuf::from("ca.pem"),
            cert: PathBuf::from("agent.pem"),
            key: PathBuf::from("agent.key"),
            state_dir: PathBuf::new(),
            password_file: None,
            host: String::new(),
            upload_concurrency: 4,
            request_timeout_ms: 60_000,
            paths: Vec::new(),
            quiet_ms: 2_000,
            max_delay_ms: 30_000,
            full_scan_interval_s: 24 * 3600,
            event_queue: 65_536,
            exclude: Vec::new(),
            exclude_caches: false,
            exclude_larger_than: 0,
            one_file_system: false,
            apply_retention: false,
            prune_grace_s: 86_400,
            trash_keep_s: 7 * 86_400,
            tree_cache_bytes: 256 << 20,
            retention: Policy::default(),
        }
    }
}

impl AgentConfig {
    /// Parses and validates; relative paths resolve against `base`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the bad key or value.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut c: Self = toml::from_str(text)?;
        for p in [&mut c.ca_cert, &mut c.cert, &mut c.key] {
            *p = base.join(&*p);
        }
        if !c.state_dir.as_os_str().is_empty() {
            c.state_dir = base.join(&c.state_dir);
        }
        if let Some(p) = &mut c.password_file {
            *p = base.join(&*p);
        }
        for p in &mut c.paths {
            *p = base.join(&*p);
        }
        const DAY_MS: u64 = 24 * 3600 * 1000;
        if c.event_queue == 0
            || c.quiet_ms == 0
            || c.max_delay_ms < c.quiet_ms
            || c.max_delay_ms > DAY_MS
            || c.full_scan_interval_s > 366 * DAY_MS / 1000
        {
            return Err(ConfigError::Invalid(
                "event-queue and quiet-ms must be positive, max-delay-ms between quiet-ms and a day, full-scan-interval-s at most a year".into(),
            ));
        }
        RepoId::new(&c.repository).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if c.servers.is_empty() {
            return Err(ConfigError::Invalid(
                "servers: list at least one chunk server".into(),
            ));
        }
        if c.upload_concurrency == 0 || c.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "upload-concurrency and request-timeout-ms must be positive".into(),
            ));
        }
        const TEN_YEARS_S: u64 = 10 * 365 * 86_400;
        if !(1..=TEN_YEARS_S).contains(&c.prune_grace_s) {
            return Err(ConfigError::Invalid(format!(
                "prune-grace-s = {} is outside 1..={TEN_YEARS_S}",
                c.prune_grace_s
            )));
        }
        if c.trash_keep_s > TEN_YEARS_S {
            return Err(ConfigError::Invalid(format!(
                "trash-keep-s = {} is outside 0..={TEN_YEARS_S}",
                c.trash_keep_s
            )));
        }
        // An empty policy is fine until something is asked to apply it.
        if c.apply_retention || !c.retention.is_empty() {
            c.retention
                .validate()
                .map_err(|e| ConfigError::Invalid(format!("[retention]: {e}")))?;
        }
        Ok(c)
    }

    /// The repository id (validated by [`AgentConfig::parse`]).
    pub fn repo(&self) -> RepoId {
        // Invariant: parse() validated the name; a default config holds "default".
        RepoId::new(&self.repository).expect("validated repository name")
    }
}

impl ClusterMap {
    /// Parses and validates a cluster map file (`cluster.toml`).
    ///
    /// # Errors
    /// [`ConfigError`] for bad TOML or an unusable map.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let m: Self = toml::from_str(text)?;
        m.validate()?;
        Ok(m)
    }

    /// Renders as TOML.
    pub fn to_toml(&self) -> String {
        // Invariant: a map of plain fields always serializes.
        toml::to_string_pretty(self).expect("map serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        let base = Path::new("/etc/ringvault");
        let s = ChunkserverConfig::parse(&read("chunkserver.toml"), base).unwrap();
        assert_eq!(s.cluster_map, base.join("cluster.toml"));
        let a = AgentConfig::parse(&read("agent.toml"), base).unwrap();
        assert!(!a.servers.is_empty());
        let m = ClusterMap::parse(&read("cluster.toml")).unwrap();
        assert_eq!(m.nodes.len(), 3);
        // Every file in config/ is one of these.
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["agent.toml", "chunkserver.toml", "cluster.toml"]);
    }

    #[test]
    fn agent_timings_out_of_range_are_errors() {
        let base = "servers = [\"127.0.0.1:7401\"]\n";
        let parse = |extra: &str| AgentConfig::parse(&format!("{base}{extra}"), Path::new("/"));
        assert!(parse("").is_ok());
        for bad in [
            "quiet-ms = 0",
            "quiet-ms = 5000\nmax-delay-ms = 1000",
            "max-delay-ms = 18446744073709551615",
            "full-scan-interval-s = 18446744073709551615",
            "event-queue = 0",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agent_retention_and_prune_keys() {
        let base = "servers = [\"127.0.0.1:7401\"]\n";
        let parse = |extra: &str| AgentConfig::parse(&format!("{base}{extra}"), Path::new("/"));
        let c = parse("").unwrap();
        assert!(c.retention.is_empty() && !c.apply_retention);
        assert_eq!((c.prune_grace_s, c.trash_keep_s), (86_400, 604_800));
        let c = parse(
            "apply-retention = true\nprune-grace-s = 1\ntrash-keep-s = 0\n\
             [retention]\nkeep-daily = 7\nkeep-monthly = \"unlimited\"\nkeep-tags = [\"pin\"]\n\
             keep-within = \"6m\"\n",
        )
        .unwrap();
        assert!(c.apply_retention);
        assert_eq!((c.prune_grace_s, c.trash_keep_s), (1, 0));
        assert_eq!(
            c.retention,
            Policy {
                daily: 7,
                monthly: crate::retention::UNLIMITED,
                tags: vec!["pin".into()],
                within: crate::duration::CalendarDuration {
                    months: 6,
                    ..Default::default()
                },
                ..Policy::default()
            }
        );
        for bad in [
            "prune-grace-s = 0",
            "prune-grace-s = 315360001",
            "trash-keep-s = 315360001",
            "apply-retention = true",
            "apply-retention = true\n[retention]\n",
            "[retention]\nkeep-tags = [\"\"]",
            "[retention]\nkeep-lats = 1",
            "[retention]\nkeep-last = -5",
            "[retention]\nkeep-within = \"6\"",
            "[retention]\nkeep-within = \"6 m\"",
            "[retention]\nkeep-within-s = 86400",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_space_watermark_keys() {
        let parse = |extra: &str| ChunkserverConfig::parse(extra, Path::new("/"));
        let c = parse("").unwrap();
        assert_eq!((c.min_free_bytes, c.min_free_percent), (64 << 20, 1));
        let c = parse("min-free-bytes = 0\nmin-free-percent = 50").unwrap();
        assert_eq!((c.min_free_bytes, c.min_free_percent), (0, 50));
        for bad in ["min-free-percent = 51", "min-free-bytes = -1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(ChunkserverConfig::parse("nodeid = 3", Path::new("/")).is_err());
        assert!(AgentConfig::parse("servers = []", Path::new("/")).is_err());
    }
}
