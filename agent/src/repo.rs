//! Opening a repository: config, TLS, the cluster connection, the password
//! and the keys it unlocks.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use ringvault_chunkserver::net;
use ringvault_common::chunker::ChunkerParams;
use ringvault_common::config::AgentConfig;
use ringvault_common::keys::{KdfParams, KeyError, KeyFile, MasterKey, RepoKeys, RepoSecret};
use ringvault_common::seal;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tls::PeerIdentity;
use ringvault_common::tree::Tree;
use ringvault_common::{ChunkId, SnapshotId};
use zeroize::Zeroizing;

use crate::client::{ClientError, Cluster};

/// An agent config and where it came from.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    /// The validated config.
    pub config: AgentConfig,
    /// The file it was read from.
    pub path: PathBuf,
}

/// The user's data directory for ringvault (e.g. `~/.local/share/ringvault`).
///
/// # Errors
/// When no home directory can be found.
pub fn data_dir() -> anyhow::Result<PathBuf> {
    directories::ProjectDirs::from("", "", "ringvault")
        .map(|d| d.data_dir().to_owned())
        .context("cannot find the user's data directory (is HOME set?)")
}

/// Finds and parses the agent config: `--config`, then `RINGVAULT_CONFIG`,
/// then `<config dir>/agent.toml`, then the quickstart's.
///
/// # Errors
/// When none exists or it does not parse.
pub fn load_config(explicit: Option<&Path>) -> anyhow::Result<LoadedConfig> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => {
            let mut candidates = Vec::new();
            if let Some(dirs) = directories::ProjectDirs::from("", "", "ringvault") {
                candidates.push(dirs.config_dir().join("agent.toml"));
                candidates.push(
                    dirs.data_dir()
                        .join("quickstart")
                        .join("agent")
                        .join("agent.toml"),
                );
            }
            match candidates.iter().find(|p| p.exists()) {
                Some(p) => p.clone(),
                None => bail!(
                    "no agent config found (looked for {}); run `ringvault quickstart DIR`, or pass --config FILE",
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let config = AgentConfig::parse(&text, base)
        .with_context(|| format!("invalid config {}", path.display()))?;
    Ok(LoadedConfig { config, path })
}

/// Where the agent keeps state for this config's repository.
///
/// # Errors
/// When no data directory can be found.
pub fn state_dir(config: &AgentConfig) -> anyhow::Result<PathBuf> {
    let base = if config.state_dir.as_os_str().is_empty() {
        data_dir()?.join("state")
    } else {
        config.state_dir.clone()
    };
    Ok(base.join(config.repository.as_str()))
}

/// Connects to the cluster named by the config, as the agent its
/// certificate names.
///
/// # Errors
/// Unreadable TLS files, a certificate for another repository, or
/// [`ClientError`]s from connecting.
pub async fn connect(config: &AgentConfig) -> anyhow::Result<(Cluster, String)> {
    let tls = net::load_tls(&config.ca_cert, &config.cert, &config.key)?;
    let agent = match tls.identity().context("reading the agent certificate")? {
        PeerIdentity::Agent { repo, agent } if repo == config.repo() => agent,
        PeerIdentity::Agent { repo, .. } => bail!(
            "the certificate {} is for repository {repo}, but the config names {}",
            config.cert.display(),
            config.repository
        ),
        PeerIdentity::Node(n) => bail!(
            "{} is a node certificate ({n}), not an agent's",
            config.cert.display()
        ),
        PeerIdentity::Operator(name) => bail!(
            "{} is an operator certificate ({name}), not an agent's",
            config.cert.display()
        ),
    };
    let bind = if config.servers.iter().any(|s| s.starts_with('[')) {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let endpoint = net::endpoint(bind.parse()?, None, net::client_config(&tls)?)
        .context("binding a UDP socket")?;
    let cluster = Cluster::connect(
        endpoint,
        config.repo(),
        &config.servers,
        Duration::from_millis(config.request_timeout_ms),
    )
    .await?;
    Ok((cluster, agent))
}

/// Where the password comes from, in order: `RINGVAULT_PASSWORD`, a file
/// (`--password-file`, else the config's `password-file`), a prompt.
///
/// # Errors
/// When no source gives one (no terminal to prompt on).
pub fn password(
    config: &AgentConfig,
    file: Option<&Path>,
    confirm: bool,
) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var("RINGVAULT_PASSWORD") {
        return Ok(Zeroizing::new(p));
    }
    if let Some(f) = file.or(config.password_file.as_deref()) {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading password file {}", f.display()))?;
        let line = text.lines().next().unwrap_or("").to_owned();
        return Ok(Zeroizing::new(line));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: set RINGVAULT_PASSWORD, pass --password-file, or run on a terminal");
    }
    let p = Zeroizing::new(rpassword::prompt_password("repository password: ")?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("enter it again: ")?);
        if *again != *p {
            bail!("the passwords differ");
        }
    }
    Ok(p)
}

/// An open repository: the cluster, the keys, the fixed settings.
pub struct Repo {
    /// The cluster connection.
    pub cluster: Cluster,
    /// The working keys.
    pub keys: RepoKeys,
    /// Chunker settings fixed at init.
    pub chunker: ChunkerParams,
    /// The agent config.
    pub config: AgentConfig,
    /// This agent's id, from its certificate.
    pub agent: String,
    /// Local state for this repository (the change-detection index):
    /// `<state dir>/<name>/<repository id>`.
    pub state_dir: PathBuf,
}

/// Fresh random bytes from the OS.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS random source failing is not recoverable: there is no safe key
    // or nonce without it.
    getrandom::fill(&mut b).expect("OS random source");
    b
}

/// Creates a repository: a random master key wrapped by `password`,
/// stored on the cluster and cached locally.
///
/// # Errors
/// When the repository exists already, or the cluster refuses the key.
pub async fn init(
    config: &AgentConfig,
    password: &str,
    kdf: KdfParams,
    chunker: ChunkerParams,
) -> anyhow::Result<()> {
    chunker.validate()?;
    let (cluster, _) = connect(config).await?;
    match cluster.get_key().await {
        Ok(_) => bail!(
            "repository {} is already initialized on this cluster",
            config.repository
        ),
        Err(ClientError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let secret = RepoSecret {
        master_key: random(),
        chunker,
    };
    let kf = KeyFile::wrap(&secret, password.as_bytes(), kdf, random(), random())?;
    let encoded = kf.encode();
    cluster
        .put_key(Bytes::from(encoded.clone()))
        .await
        .context("storing the repository key")?;
    write_key_cache(&state_dir(config)?, &encoded)?;
    cluster.close().await;
    Ok(())
}

fn write_key_cache(dir: &Path, encoded: &[u8]) -> anyhow::Result<()> {
    crate::fsutil::write_private(&dir.join("key"), encoded).context("caching the repository key")
}

/// Opens the repository: connects, fetches the wrapped key from the
/// cluster (the local cache stands in only when no server can hand it out),
/// and unlocks it with the password.
///
/// The cluster's key is the truth: a cache left by another repository of
/// the same name (a quickstart made afresh, another cluster) is replaced,
/// never used. Local state that depends on the keys (the change-detection
/// index) lives under the repository's id, derived from its master key, so
/// it is never shared between two repositories either.
///
/// # Errors
/// Connection errors, a missing repository, or a wrong password.
pub async fn open(config: &AgentConfig, password_file: Option<&Path>) -> anyhow::Result<Arc<Repo>> {
    let (cluster, agent) = connect(config).await?;
    let base = state_dir(config)?;
    let cached = std::fs::read(base.join("key")).ok();
    let bytes = match (cluster.get_key().await, cached) {
        (Ok(remote), cached) => {
            if cached.as_deref() != Some(&remote[..]) {
                write_key_cache(&base, &remote)?;
            }
            remote.to_vec()
        }
        (Err(e @ ClientError::NotFound(_)), _) => return Err(e.into()),
        (Err(e), Some(cached)) => {
            tracing::warn!(error = %e, "no server handed out the repository key; using the cached copy");
            cached
        }
        (Err(e), None) => return Err(e.into()),
    };
    let kf = KeyFile::decode(&bytes).context("the repository key record")?;
    let password = password(config, password_file, false)?;
    let secret = match kf.unwrap_secret(password.as_bytes()) {
        Ok(s) => s,
        Err(KeyError::WrongPassword) => return Err(WrongPassword.into()),
        Err(e) => return Err(e.into()),
    };
    let keys = RepoKeys::derive(&MasterKey::from_bytes(secret.master_key));
    let state_dir = base.join(keys.repository_id());
    Ok(Arc::new(Repo {
        cluster,
        keys,
        chunker: secret.chunker,
        config: config.clone(),
        agent,
        state_dir,
    }))
}

/// The password does not open the repository key.
#[derive(Debug, thiserror::Error)]
#[error("wrong password: it does not open the repository key")]
pub struct WrongPassword;

impl Repo {
    /// Fetches and opens a chunk (verifying it against its id), moving on
    /// to another replica when a copy is bad.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] when no good copy is reachable.
    pub async fn read_chunk(self: &Arc<Self>, id: ChunkId) -> Result<Vec<u8>, ClientError> {
        self.cluster
            .get(&id, |blob| {
                let this = self.clone();
                async move {
                    // Decrypting, decompressing and hashing a chunk takes
                    // about 2 ms per MiB: off the async workers.
                    tokio::task::spawn_blocking(move || {
                        seal::open(&this.keys, &id, &blob).map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| format!("opening the blob: {e}"))?
                }
            })
            .await
    }

    /// Fetches and decodes a directory's tree, with its further parts when
    /// it spans several blobs.
    ///
    /// # Errors
    /// When no good copy is reachable or the tree does not decode.
    pub async fn read_tree(self: &Arc<Self>, id: ChunkId) -> anyhow::Result<Tree> {
        Ok(self.read_tree_and_parts(id).await?.0)
    }

    /// Like [`Repo::read_tree`], also returning the ids of the further blobs
    /// the tree spans (empty for a tree in one blob).
    ///
    /// # Errors
    /// As [`Repo::read_tree`].
    pub async fn read_tree_and_parts(
        self: &Arc<Self>,
        id: ChunkId,
    ) -> anyhow::Result<(Tree, Vec<ChunkId>)> {
        let head = self.read_tree_part(id).await?;
        if head.more.is_empty() {
            return Ok((head, Vec::new()));
        }
        let ids = head.more.clone();
        let mut parts = Vec::with_capacity(head.more.len());
        for part in &head.more {
            parts.push(self.read_tree_part(*part).await?);
        }
        let tree = Tree::join(head, parts).with_context(|| format!("tree {id}"))?;
        Ok((tree, ids))
    }

    async fn read_tree_part(self: &Arc<Self>, id: ChunkId) -> anyhow::Result<Tree> {
        let bytes = self.read_chunk(id).await?;
        Tree::decode(&bytes).with_context(|| format!("tree {id}"))
    }

    /// Every snapshot, oldest first. Records that fail to open are skipped
    /// with a warning.
    ///
    /// # Errors
    /// When no server answers.
    pub async fn snapshots(&self) -> anyhow::Result<Vec<(SnapshotId, Snapshot)>> {
        let mut out = Vec::new();
        for (id, blob) in self.cluster.list_snapshots().await? {
            match Snapshot::open(&self.keys, &id, &blob) {
                Ok(s) => out.push((id, s)),
                Err(e) => {
                    tracing::warn!(snapshot = %id, error = %e, "skipping a snapshot record that does not open")
                }
            }
        }
        out.sort_by_key(|(id, s)| (s.time_ns, *id));
        Ok(out)
    }

    /// Resolves `latest` or a unique hex prefix (4 digits at least).
    ///
    /// # Errors
    /// No match, an ambiguous prefix, or no snapshots.
    pub async fn find_snapshot(&self, selector: &str) -> anyhow::Result<(SnapshotId, Snapshot)> {
        let all = self.snapshots().await?;
        if selector == "latest" {
            return all
                .into_iter()
                .next_back()
                .context("the repository has no snapshots yet");
        }
        if selector.len() < 4 || !selector.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{selector:?} is not a snapshot id (use `latest` or at least 4 hex digits)");
        }
        let sel = selector.to_ascii_lowercase();
        let mut found: Vec<_> = all
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(&sel))
            .collect();
        match found.len() {
            0 => bail!("no snapshot {selector}"),
            1 => Ok(found.remove(0)),
            n => bail!("{selector} matches {n} snapshots; give more digits"),
        }
    }
}
