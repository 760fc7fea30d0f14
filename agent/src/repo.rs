//! Opening a repository: config, TLS, the cluster connection, the password
//! and the keys it unlocks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use ringvault_common::chunker::ChunkerParams;
use ringvault_common::config::AgentConfig;
use ringvault_common::keys::{
    KdfParams, KeyError, KeyFile, KeyMeta, MasterKey, RepoKeys, RepoSecret,
};
use ringvault_common::seal;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tls::{PeerIdentity, Role};
use ringvault_common::tree::Tree;
use ringvault_common::{ChunkId, NodeId, SnapshotId};
use ringvault_net::quic;
use zeroize::Zeroizing;

use crate::client::{ClientError, Cluster};
use crate::password::{EmptyPassword, PasswordFlags, password};

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
pub async fn connect(config: &AgentConfig) -> anyhow::Result<(Cluster, Agent)> {
    let tls = quic::load_tls(&config.ca_cert, &config.cert, &config.key)?;
    let agent = match tls.identity().context("reading the agent certificate")? {
        PeerIdentity::Agent { repo, agent, role } if repo == config.repo() => {
            Agent { id: agent, role }
        }
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
    let endpoint = quic::endpoint(bind.parse()?, None, quic::client_config(&tls)?)
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

/// Who this agent is, from its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    /// Its agent id.
    pub id: String,
    /// What it may do in the repository.
    pub role: Role,
}

/// The snapshots of a repository and how the listing was made
/// ([`Repo::snapshot_list`]).
#[derive(Clone, Debug)]
pub struct SnapshotList {
    /// Every snapshot, oldest first.
    pub snapshots: Vec<(SnapshotId, Snapshot)>,
    /// Servers that answered the listing.
    pub answered: Vec<NodeId>,
    /// Servers asked (the live ones; the map's size is in
    /// [`Cluster::map`]).
    pub asked: usize,
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
    /// This agent's role, from its certificate.
    pub role: Role,
    /// The id of the key record the password opened.
    pub key_id: [u8; 32],
    /// The master key and settings that key holds (to wrap them under
    /// another password: `ringvault key add`).
    secret: RepoSecret,
    /// Local state for this repository (the change-detection index):
    /// `<state dir>/<name>/<repository id>`.
    pub state_dir: PathBuf,
    /// Sealed trees kept on disk (`<state_dir>/trees`).
    pub tree_cache: crate::tree_cache::TreeCache,
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
/// [`EmptyPassword`] for an empty password; when the repository exists
/// already, or the cluster refuses the key.
pub async fn init(
    config: &AgentConfig,
    password: &str,
    kdf: KdfParams,
    chunker: ChunkerParams,
) -> anyhow::Result<()> {
    if password.is_empty() {
        return Err(EmptyPassword.into());
    }
    chunker.validate()?;
    let (cluster, _) = connect(config).await?;
    match cluster.list_keys().await {
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
    let (id, encoded) = wrap_key(&secret, password, kdf, config)?;
    cluster
        .put_key(id, Bytes::from(encoded.clone()))
        .await
        .context("storing the repository key")?;
    write_key_cache(&state_dir(config)?, &id, &encoded)?;
    cluster.close().await;
    Ok(())
}

/// Wraps `secret` under `password` as a new key record: (fresh random id,
/// encoded [`KeyFile`]) with this host's name (the config's `host`, else
/// the system's) and the user's.
fn wrap_key(
    secret: &RepoSecret,
    password: &str,
    kdf: KdfParams,
    config: &AgentConfig,
) -> anyhow::Result<([u8; 32], Vec<u8>)> {
    let meta = KeyMeta {
        created_ns: crate::host::now_ns(),
        host: crate::host::host_name(&config.host),
        user: std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_default(),
    };
    let kf = KeyFile::wrap(secret, password.as_bytes(), kdf, random(), random(), meta)?;
    Ok((random(), kf.encode()))
}

/// The local copy of the key record that opened the repository last:
/// its 32-byte id, then the record. Used only when no server hands out keys.
fn write_key_cache(dir: &Path, id: &[u8; 32], encoded: &[u8]) -> anyhow::Result<()> {
    let mut bytes = id.to_vec();
    bytes.extend_from_slice(encoded);
    ringvault_net::files::write_private(&dir.join("key"), &bytes)
        .context("caching the repository key")
}

/// Reads the key cache: (id, record), if there is a well-formed one.
fn read_key_cache(dir: &Path) -> Option<([u8; 32], Vec<u8>)> {
    let bytes = std::fs::read(dir.join("key")).ok()?;
    let (id, record) = bytes.split_first_chunk::<32>()?;
    Some((*id, record.to_vec()))
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
/// The password is asked for ([`password`]) once the keys are fetched, so
/// that a cluster that cannot be reached is reported before a prompt.
///
/// # Errors
/// Connection errors, a missing repository, no password, or a wrong one.
pub async fn open(config: &AgentConfig, flags: &PasswordFlags) -> anyhow::Result<Arc<Repo>> {
    open_inner(config, || password(config, flags, false)).await
}

/// [`open`] with a password already in hand.
///
/// # Errors
/// As [`open`].
pub async fn open_with_password(config: &AgentConfig, password: &str) -> anyhow::Result<Arc<Repo>> {
    open_inner(config, || Ok(Zeroizing::new(password.to_owned()))).await
}

async fn open_inner(
    config: &AgentConfig,
    password: impl FnOnce() -> anyhow::Result<Zeroizing<String>>,
) -> anyhow::Result<Arc<Repo>> {
    let (cluster, agent) = connect(config).await?;
    let base = state_dir(config)?;
    let cached = read_key_cache(&base);
    let mut candidates: Vec<([u8; 32], Bytes)> = match (cluster.list_keys().await, &cached) {
        (Ok(remote), _) => remote
            .into_iter()
            .flat_map(|(id, records)| records.into_iter().map(move |r| (id, r)))
            .collect(),
        (Err(e @ (ClientError::NotFound(_) | ClientError::Forbidden(_))), _) => {
            return Err(e.into());
        }
        (Err(e), Some((id, record))) => {
            tracing::warn!(error = %e, "no server handed out the repository keys; using the cached copy");
            vec![(*id, Bytes::from(record.clone()))]
        }
        (Err(e), None) => return Err(e.into()),
    };
    // Each try costs one Argon2id run: the key that opened last goes first.
    if let Some((id, _)) = &cached {
        candidates.sort_by_key(|(k, _)| k != id);
    }
    let password = password()?;
    let (key_id, record, secret) = unlock(&candidates, &password)?;
    if cached
        .as_ref()
        .is_none_or(|(id, r)| *id != key_id || r[..] != record[..])
    {
        write_key_cache(&base, &key_id, &record)?;
    }
    let keys = RepoKeys::derive(&MasterKey::from_bytes(secret.master_key));
    let state_dir = base.join(keys.repository_id());
    let tree_cache =
        crate::tree_cache::TreeCache::new(state_dir.join("trees"), config.tree_cache_bytes);
    Ok(Arc::new(Repo {
        cluster,
        keys,
        chunker: secret.chunker,
        config: config.clone(),
        agent: agent.id,
        role: agent.role,
        key_id,
        secret,
        state_dir,
        tree_cache,
    }))
}

/// Finds the key record `password` opens among `candidates`.
///
/// # Errors
/// [`WrongPassword`] when it opens none; a key record that does not decode
/// or asks for too much work is skipped with a warning.
fn unlock(
    candidates: &[([u8; 32], Bytes)],
    password: &str,
) -> anyhow::Result<([u8; 32], Bytes, RepoSecret)> {
    for (id, record) in candidates {
        let opened = KeyFile::decode(record).and_then(|kf| kf.unwrap_secret(password.as_bytes()));
        match opened {
            Ok(secret) => return Ok((*id, record.clone(), secret)),
            Err(KeyError::WrongPassword) => {}
            Err(e) => {
                tracing::warn!(key = %hex::encode(&id[..4]), error = %e, "skipping a key record");
            }
        }
    }
    Err(WrongPassword.into())
}

/// The password opens none of the repository's keys.
#[derive(Debug, thiserror::Error)]
#[error("wrong password: it opens none of the repository's keys")]
pub struct WrongPassword;

/// One key of the repository, as `ringvault key list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyInfo {
    /// Key id, lowercase hex (64 digits).
    pub id: String,
    /// Whether this is the key the current password opened.
    pub current: bool,
    /// Who made it and when (empty for keys made before key metadata).
    pub user: String,
    /// Host that made it.
    pub host: String,
    /// Creation time, ns since the Unix epoch (0 when unknown).
    pub created_ns: i64,
}

impl Repo {
    /// Fails unless this agent's certificate has the admin role, which
    /// `what` (forget, prune, key changes) needs. The servers check it too;
    /// this only fails before any work is done.
    ///
    /// # Errors
    /// [`ClientError::Forbidden`] naming the role held.
    pub fn require_admin(&self, what: &str) -> Result<(), ClientError> {
        if self.role == Role::Admin {
            return Ok(());
        }
        Err(ClientError::Forbidden(format!(
            "{what} needs an admin certificate; this one ({}) is a {} certificate (see `ringvault cluster add-agent`)",
            self.agent, self.role
        )))
    }

    /// Every key of the repository (a record that does not decode is left
    /// out with a warning).
    ///
    /// # Errors
    /// When no server answers.
    pub async fn keys(&self) -> anyhow::Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for (id, records) in self.cluster.list_keys().await? {
            let Some(kf) = records.iter().find_map(|r| KeyFile::decode(r).ok()) else {
                tracing::warn!(key = %hex::encode(id), "a key record does not decode");
                continue;
            };
            out.push(KeyInfo {
                id: hex::encode(id),
                current: id == self.key_id,
                user: kf.meta.user,
                host: kf.meta.host,
                created_ns: kf.meta.created_ns,
            });
        }
        out.sort_by(|a, b| (a.created_ns, &a.id).cmp(&(b.created_ns, &b.id)));
        Ok(out)
    }

    /// Adds a key: the master key wrapped under `password` with `kdf`.
    /// Returns its id.
    ///
    /// # Errors
    /// [`EmptyPassword`] for an empty password; when the cluster refuses
    /// it (the admin role is needed).
    pub async fn add_key(&self, password: &str, kdf: KdfParams) -> anyhow::Result<[u8; 32]> {
        if password.is_empty() {
            return Err(EmptyPassword.into());
        }
        self.require_admin("adding a key")?;
        let (id, encoded) = wrap_key(&self.secret, password, kdf, &self.config)?;
        self.cluster
            .put_key(id, Bytes::from(encoded))
            .await
            .context("storing the new key")?;
        Ok(id)
    }

    /// Removes key `id` (resolve a prefix with [`Repo::find_key`] first).
    /// Refuses the key this session was opened with (use `key passwd` to
    /// replace it) so a typo cannot lock everyone out.
    ///
    /// # Errors
    /// The current key, or the cluster's refusal.
    pub async fn remove_key(&self, id: [u8; 32]) -> anyhow::Result<()> {
        self.require_admin("removing a key")?;
        if id == self.key_id {
            bail!(
                "refusing to remove the key this password opens; use `ringvault key passwd` to change it, or open with another password"
            );
        }
        self.cluster
            .delete_key(id)
            .await
            .context("removing the key")?;
        Ok(())
    }

    /// Resolves a unique hex prefix (4 digits at least) of a key id.
    ///
    /// # Errors
    /// No match, an ambiguous prefix, or a malformed one.
    pub async fn find_key(&self, prefix: &str) -> anyhow::Result<[u8; 32]> {
        if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{prefix:?} is not a key id (at least 4 hex digits)");
        }
        let sel = prefix.to_ascii_lowercase();
        let found: Vec<[u8; 32]> = self
            .cluster
            .list_keys()
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| hex::encode(id).starts_with(&sel))
            .collect();
        match found.as_slice() {
            [] => bail!("no key {prefix}"),
            [one] => Ok(*one),
            more => bail!("{prefix} matches {} keys; give more digits", more.len()),
        }
    }
}

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

    /// One tree blob: from the tree cache when it holds a copy that opens,
    /// else from the cluster (then kept in the cache).
    async fn read_tree_part(self: &Arc<Self>, id: ChunkId) -> anyhow::Result<Tree> {
        if let Some(blob) = self.tree_cache.get(&id) {
            let this = self.clone();
            let opened =
                tokio::task::spawn_blocking(move || seal::open(&this.keys, &id, &blob)).await;
            match opened {
                Ok(Ok(plain)) => return Tree::decode(&plain).with_context(|| format!("tree {id}")),
                Ok(Err(e)) => {
                    tracing::warn!(tree = %id, error = %e, "a cached tree does not open; fetching it")
                }
                Err(e) => tracing::warn!(tree = %id, error = %e, "opening a cached tree failed"),
            }
        }
        let (plain, blob) = self
            .cluster
            .get(&id, |blob| {
                let this = self.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        seal::open(&this.keys, &id, &blob)
                            .map(|plain| (plain, blob))
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| format!("opening the blob: {e}"))?
                }
            })
            .await?;
        self.tree_cache.put(&id, &blob);
        Tree::decode(&plain).with_context(|| format!("tree {id}"))
    }

    /// Every snapshot, oldest first. Records that fail to open are skipped
    /// with a warning; a snapshot any answering server holds a tombstone
    /// for is never shown.
    ///
    /// # Errors
    /// When no server answers.
    pub async fn snapshots(&self) -> anyhow::Result<Vec<(SnapshotId, Snapshot)>> {
        Ok(self.snapshot_list().await?.snapshots)
    }

    /// Like [`Repo::snapshots`], with how many servers answered the
    /// listing: a caller that must not miss a tombstone (prune) can require
    /// a quorum of answers.
    ///
    /// # Errors
    /// When no server answers.
    pub async fn snapshot_list(&self) -> anyhow::Result<SnapshotList> {
        let listed = self.cluster.list_snapshots().await?;
        let mut out = Vec::new();
        for (id, records) in listed.records {
            // Normally one record per id; a faulty or hostile server may add
            // others: the first that opens under the id is the record.
            let mut last_error = None;
            let opened = records.iter().find_map(|blob| {
                Snapshot::open(&self.keys, &id, blob)
                    .map_err(|e| last_error = Some(e))
                    .ok()
            });
            match (opened, last_error) {
                (Some(s), _) => out.push((id, s)),
                (None, Some(e)) => {
                    tracing::warn!(snapshot = %id, error = %e, "skipping a snapshot record that does not open")
                }
                (None, None) => {}
            }
        }
        out.sort_by_key(|(id, s)| (s.time_ns, *id));
        Ok(SnapshotList {
            snapshots: out,
            answered: listed.answered,
            asked: listed.asked,
        })
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
