//! The `ringvault` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ringvault_common::SnapshotId;
use ringvault_common::chunker::ChunkerParams;
use ringvault_common::duration::CalendarDuration;
use ringvault_common::keys::KdfParams;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{Content, Entry, EntryKind};
use serde_json::json;

use crate::backup::{self, BackupOptions, display_name};
use crate::browse;
use crate::check;
use crate::client::ClientError;
use crate::cluster::{self, ClusterInit};
use crate::daemon;
use crate::gc;
use crate::password::{self, PasswordFlags, PasswordSource};
use crate::quickstart;
use crate::repo::{self, WrongPassword};
use crate::restore;
use crate::restore::progress::{RestoreProgress, Show, Ticker};
use crate::service;
use crate::status;
use ringvault_common::tls::Role;
use ringvault_common::wire::StoreState;

/// Exit code: the backup or restore finished but skipped some entries.
pub const EXIT_INCOMPLETE: u8 = 3;
/// Exit code of `check`: every chunk has a healthy copy, some fewer than N.
pub const EXIT_DEGRADED: u8 = 4;
/// Exit code: the cluster could not be reached.
pub const EXIT_UNREACHABLE: u8 = 10;
/// Exit code: the password does not open the repository.
pub const EXIT_WRONG_PASSWORD: u8 = 12;
/// Exit code: the servers refused the request for this certificate (its
/// role does not allow it, or it is revoked).
pub const EXIT_FORBIDDEN: u8 = 13;

/// ringvault: continuous, deduplicating, encrypted backup to a replicated
/// cluster of chunk servers.
#[derive(Parser, Debug)]
#[command(name = "ringvault", version, about)]
pub struct Cli {
    /// Agent config file [default: $RINGVAULT_CONFIG, the user's
    /// config dir's agent.toml, or the quickstart's].
    #[arg(long, global = true, env = "RINGVAULT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Read the repository password from this file (its first line; mode
    /// 0600). Beats RINGVAULT_PASSWORD_FILE, RINGVAULT_PASSWORD_COMMAND and
    /// RINGVAULT_PASSWORD, as restic's flag does.
    #[arg(long, global = true, conflicts_with = "password_command")]
    pub password_file: Option<PathBuf>,
    /// Run this shell command for the repository password (the first line
    /// of its output); a failing command is an error. Beats the
    /// environment, as restic's flag does.
    #[arg(long, global = true, value_name = "CMD")]
    pub password_command: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// More detail: `check` lists every chunk it reports and the servers'
    /// connection warnings are shown; twice, info logs; three times,
    /// debug logs. RINGVAULT_LOG (a tracing filter) beats it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Where the flags point at the password.
    fn password_flags(&self) -> PasswordFlags {
        PasswordFlags {
            file: self.password_file.clone(),
            command: self.password_command.clone(),
        }
    }
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Set up a local three-node cluster and a repository, and back up DIR.
    Quickstart {
        /// The directory to back up.
        #[arg(required_unless_present = "stop")]
        dir: Option<PathBuf>,
        /// Stop the quickstart's servers instead.
        #[arg(long)]
        stop: bool,
        /// Exit after the first snapshot instead of watching DIR.
        #[arg(long)]
        once: bool,
    },
    /// Create the repository on the cluster.
    Init {
        /// Chunk sizes MIN,AVG,MAX in bytes, fixed for the repository's life
        /// [default: 524288,1048576,8388608, as restic].
        #[arg(long, value_parser = parse_chunker_params)]
        chunker_params: Option<ChunkerParams>,
    },
    /// Back up files and directories into a new snapshot.
    Backup {
        /// Files and directories to back up.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Tag the snapshot (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Record this as the snapshot's time instead of now (RFC 3339,
        /// or YYYY-MM-DD: UTC midnight), as restic's --time.
        #[arg(long, value_parser = parse_time)]
        time: Option<i64>,
    },
    /// Watch the config's `paths` and take a snapshot whenever they change
    /// (runs until SIGTERM or Ctrl-C).
    Agent,
    /// What the running agent is doing (asks it over its control socket;
    /// needs no password).
    Status,
    /// List snapshots.
    Snapshots,
    /// Every distinct version of a file or directory across the snapshots:
    /// when it appeared, changed (content or metadata) or disappeared.
    Versions {
        /// Path inside the snapshots, `/`-separated (e.g. Documents/a.txt).
        path: String,
    },
    /// What was added, removed or modified between two snapshots (unchanged
    /// subtrees are skipped by tree id).
    Diff {
        /// The older snapshot (a unique prefix, or `latest`).
        from: String,
        /// The newer snapshot.
        to: String,
        /// Only under this path.
        path: Option<String>,
    },
    /// Paths matching a glob in the snapshots (the whole path when the
    /// pattern holds a `/`, else the file name).
    Find {
        /// The pattern: `*`, `?`, `[...]`, `**`.
        pattern: String,
        /// Only in these snapshots (repeatable) [default: all].
        #[arg(long = "snapshot")]
        snapshots: Vec<String>,
        /// Only entries modified after this time (RFC 3339 or YYYY-MM-DD,
        /// UTC) or this long ago (restic's syntax: 7d, 12h, 6m for six
        /// months, 1y5m7d2h).
        #[arg(long, value_parser = parse_when)]
        newer: Option<i64>,
        /// Only entries modified before this time.
        #[arg(long, value_parser = parse_when)]
        older: Option<i64>,
    },
    /// Write a file of a snapshot to standard output.
    Cat {
        /// Snapshot (a unique prefix, or `latest`), or SNAPSHOT:PATH.
        snapshot: String,
        /// Path inside the snapshot.
        path: Option<String>,
    },
    /// List a directory of a snapshot.
    Ls {
        /// Snapshot id (a unique prefix) or `latest`.
        snapshot: String,
        /// Path inside the snapshot, `/`-separated.
        path: Option<String>,
    },
    /// Restore a snapshot (or part of it) into a directory.
    ///
    /// Patterns are gitignore-style (`*`, `?`, `[...]`, `**`; a leading `/`
    /// anchors to the snapshot's root, a trailing `/` matches directories
    /// only, `!` takes back), matched against paths inside the snapshot.
    Restore {
        /// Snapshot id (a unique prefix) or `latest`; SNAPSHOT:PATH restores
        /// only PATH, as --path does.
        snapshot: String,
        /// Restore only this path inside the snapshot (it lands in the
        /// target under its own name).
        #[arg(long)]
        path: Option<String>,
        /// Directory to restore into (created if missing).
        #[arg(long)]
        target: PathBuf,
        /// Restore only what matches (repeatable): a matched directory
        /// with everything below it, and the directories leading there.
        #[arg(long = "include", value_name = "PATTERN")]
        include: Vec<String>,
        /// Like --include, ignoring case (repeatable).
        #[arg(long = "iinclude", value_name = "PATTERN")]
        iinclude: Vec<String>,
        /// Leave out what matches (repeatable); a matched directory is
        /// skipped whole. Wins over --include.
        #[arg(long = "exclude", value_name = "PATTERN")]
        exclude: Vec<String>,
        /// Like --exclude, ignoring case (repeatable).
        #[arg(long = "iexclude", value_name = "PATTERN")]
        iexclude: Vec<String>,
        /// When to replace a file already in the target: always; if-changed
        /// (unless its size and mtime, or its content, match the snapshot's);
        /// never.
        #[arg(long, value_enum, default_value_t = restore::Overwrite::Always)]
        overwrite: restore::Overwrite,
        /// Read the snapshot and the target, write nothing, and list what
        /// would be done to each entry (new, replaced, unchanged, skipped;
        /// with --delete, deleted).
        #[arg(long)]
        dry_run: bool,
        /// After the restore, read back every file it wrote and check it
        /// against the snapshot (exit 1 when one differs).
        #[arg(long, conflicts_with = "dry_run")]
        verify: bool,
        /// Remove from the target what the snapshot does not have, below
        /// the restored path only (what --exclude matches, or --include
        /// does not, stays).
        #[arg(long)]
        delete: bool,
        /// As root, give entries their recorded owner and group ids even
        /// where the recorded names have other ids here (as tar).
        #[arg(long)]
        numeric_owner: bool,
        /// Restore no extended attributes (nor POSIX ACLs and file
        /// capabilities, which are kept in them).
        #[arg(long)]
        no_xattrs: bool,
    },
    /// Serve the snapshots as a read-only file system (FUSE).
    ///
    /// MOUNTPOINT gets `snapshots/<time>/`, `hosts/<host>/<time>/` and a
    /// `latest` link. Runs until SIGINT or SIGTERM, then unmounts.
    Mount {
        /// An existing directory to mount on.
        mountpoint: PathBuf,
        /// Let other users in too (FUSE `allow_other`); each file's
        /// recorded owner and mode still apply.
        #[arg(long)]
        allow_other: bool,
    },
    /// Serve a local web page to browse, download and restore from.
    ///
    /// The page shows a timeline of snapshots, a file browser, a file's
    /// versions side by side, diffs, downloads and restores. Prints its
    /// address, with an access token, as one line (`ringvault ui:
    /// http://127.0.0.1:PORT/#token=...`) and runs until SIGINT or SIGTERM.
    Ui {
        /// Address to listen on: loopback only (127.0.0.1:PORT, [::1]:PORT
        /// or localhost:PORT; port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0", value_parser = crate::ui::parse_listen)]
        listen: std::net::SocketAddr,
    },
    /// Run the agent as a service of this user (systemd, or launchd on
    /// macOS).
    Service {
        /// Service subcommand.
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Remove snapshots by a retention policy (restic's rules; buckets in
    /// UTC), grouped by host and paths. Without --keep-* flags, the config's
    /// [retention] policy.
    Forget {
        /// The policy.
        #[command(flatten)]
        keep: KeepArgs,
        /// Only snapshots of this host.
        #[arg(long)]
        host: Option<String>,
        /// Print what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Prune afterwards.
        #[arg(long)]
        prune: bool,
    },
    /// Reclaim chunks no snapshot reaches: a mark-and-sweep round on every
    /// server that never blocks a backup. Chunks unreferenced for the
    /// config's prune-grace-s go to a trash kept trash-keep-s.
    Prune {
        /// Instead, move every trashed blob back.
        #[arg(long)]
        restore_trash: bool,
    },
    /// Sizes: logical and stored bytes, dedup and compression ratios, for
    /// the repository and each snapshot.
    Stats,
    /// Verify that every chunk reachable from every snapshot has N healthy
    /// copies (metadata only unless --read-data). Exit 0: all healthy; 1:
    /// some chunk has no healthy copy; 4: all present, some short of N.
    Check {
        /// Also fetch every copy from every server and open it.
        #[arg(long)]
        read_data: bool,
    },
    /// Cluster administration.
    Cluster {
        /// Cluster subcommand.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The repository's keys: one per password, each wrapping the same
    /// master key (changing them needs an admin certificate).
    Key {
        /// Key subcommand.
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// `ringvault key ...`
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the keys: id, user, host, creation time; `*` marks the one the
    /// password opened.
    List,
    /// Add a key for a new password (from --new-password-file, else
    /// RINGVAULT_NEW_PASSWORD, else a prompt; an empty one is refused).
    Add {
        /// Read the new password from this file (mode 0600).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// Remove a key by id (a unique prefix of 4 hex digits or more). The key
    /// the current password opens cannot be removed.
    Remove {
        /// The key id.
        id: String,
    },
    /// Change the current password: add a key for the new one, then remove
    /// the current key.
    Passwd {
        /// Read the new password from this file (mode 0600).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
}

/// `ringvault service ...`
#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Write the agent's unit (with this binary and config) and enable and
    /// start it; prints each step.
    Install {
        /// As a user service (the default and only mode; system units: see
        /// systemd/ in the source).
        #[arg(long)]
        user: bool,
        /// Print the unit instead of installing it.
        #[arg(long)]
        print: bool,
        /// Write the unit into this directory instead of the user's.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Write the unit but do not enable or start it.
        #[arg(long)]
        no_start: bool,
    },
}

/// `ringvault cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Make a CA, node and agent certificates, configs and the cluster map.
    Init(ClusterInitArgs),
    /// Each server's state: up or not, map epoch, blobs, bytes, hints,
    /// repair backlog, quarantined blobs, scrub progress, its view of peers.
    Status,
    /// Add a node to the map (new epoch); writes DIR/node-<id>/ with its
    /// certificate and configs. Blobs it now owns move to it.
    AddNode {
        /// The `cluster init` directory (holds ca.key and cluster.toml).
        #[arg(long)]
        dir: PathBuf,
        /// `host:port` the others reach the new node at.
        #[arg(long)]
        address: String,
        /// Node id [default: one above the largest].
        #[arg(long)]
        id: Option<u32>,
        /// Relative capacity, 1 to 1000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Failure domain; replicas prefer distinct zones.
        #[arg(long, default_value = "")]
        zone: String,
    },
    /// Remove a node from the map (new epoch); its blobs move to the new
    /// owners. Keep it running until `cluster status` shows it holds no
    /// blobs, if it still runs.
    RemoveNode {
        /// The `cluster init` directory.
        #[arg(long)]
        dir: PathBuf,
        /// The node.
        #[arg(long)]
        id: u32,
    },
    /// Change a node's weight (new epoch).
    SetWeight {
        /// The `cluster init` directory.
        #[arg(long)]
        dir: PathBuf,
        /// The node.
        #[arg(long)]
        id: u32,
        /// New relative capacity, 1 to 1000.
        #[arg(long)]
        weight: u32,
    },
    /// Issue a certificate for another agent (host) of a repository, with a
    /// role: writer (back up, never delete: for hosts), reader (restore,
    /// check), admin (also forget, prune, manage keys). Writes
    /// DIR/agent-<id>/ (or --out) and prints the certificate's fingerprint.
    AddAgent {
        /// The `cluster init` directory (holds ca.key and cluster.toml).
        #[arg(long)]
        dir: PathBuf,
        /// Repository the certificate is for.
        #[arg(long)]
        repository: String,
        /// Agent id (letters, digits, `-`, `_`, `.`).
        #[arg(long)]
        agent_id: String,
        /// reader, writer or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Output directory [default: DIR/agent-<id>].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a certificate by its SHA-256 fingerprint (new epoch): every
    /// server refuses every request made with it.
    Revoke {
        /// The `cluster init` directory.
        #[arg(long)]
        dir: PathBuf,
        /// The certificate's fingerprint (64 hex digits; colons allowed).
        #[arg(required_unless_present = "cert", conflicts_with = "cert")]
        fingerprint: Option<String>,
        /// Or the certificate file (PEM).
        #[arg(long)]
        cert: Option<PathBuf>,
    },
}

/// Parses a time for `find`: an age in restic's duration syntax
/// (`7d`, `6m` for six months, `1y5m7d2h`: now minus that, on the UTC
/// calendar), RFC 3339 (`2026-11-20T08:00:00Z`, or with a space) or a date
/// (`2026-11-20`, UTC midnight); ns since the Unix epoch.
fn parse_when(text: &str) -> Result<i64, String> {
    match text.parse::<CalendarDuration>() {
        Ok(ago) => {
            let at = ago.before(crate::backup::now_ns());
            i64::try_from(at).map_err(|_| format!("{text:?} ago is before 1677"))
        }
        Err(_) if text.trim().starts_with(|c: char| c.is_ascii_digit()) => {
            parse_time(text).map_err(|_| {
                format!(
                    "{text:?} is neither an age (1y5m7d2h: y, m for months, d, h) nor a time (RFC 3339 or YYYY-MM-DD)"
                )
            })
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Parses an absolute time: RFC 3339 (`2026-11-20T08:00:00Z`, or with a
/// space) or a date (`2026-11-20`, UTC midnight); ns since the Unix epoch.
fn parse_time(text: &str) -> Result<i64, String> {
    let at = if text.len() == 10 {
        humantime::parse_rfc3339_weak(&format!("{text} 00:00:00")).map_err(|e| e.to_string())?
    } else {
        humantime::parse_rfc3339_weak(text).map_err(|e| format!("{text:?}: {e}"))?
    };
    let ns = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?
        .as_nanos();
    i64::try_from(ns).map_err(|_| format!("{text:?} is too far ahead"))
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
        .map_err(|e: ringvault_common::tls::TlsError| e.to_string())
}

/// `forget`'s policy flags (restic's names).
#[derive(Args, Debug, Default)]
pub struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours with one.
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// ... of each of the last N days.
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// ... of each of the last N ISO weeks.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// ... of each of the last N months.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// ... of each of the last N years.
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
    /// Keep every snapshot within this long of the newest, in restic's
    /// syntax: y, m (months), d, h, combined (e.g. 7d, 6m, 1y5m7d2h).
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<CalendarDuration>,
    /// Keep the newest snapshot of each hour within this long of the newest.
    #[arg(long, value_name = "DURATION")]
    keep_within_hourly: Option<CalendarDuration>,
    /// ... of each day.
    #[arg(long, value_name = "DURATION")]
    keep_within_daily: Option<CalendarDuration>,
    /// ... of each ISO week.
    #[arg(long, value_name = "DURATION")]
    keep_within_weekly: Option<CalendarDuration>,
    /// ... of each month.
    #[arg(long, value_name = "DURATION")]
    keep_within_monthly: Option<CalendarDuration>,
    /// ... of each year.
    #[arg(long, value_name = "DURATION")]
    keep_within_yearly: Option<CalendarDuration>,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long, value_name = "TAG")]
    keep_tag: Vec<String>,
}

impl KeepArgs {
    /// The policy these flags give, or `None` when no flag is set.
    fn policy(&self) -> Option<ringvault_common::retention::Policy> {
        let p = ringvault_common::retention::Policy {
            last: self.keep_last.unwrap_or(0),
            hourly: self.keep_hourly.unwrap_or(0),
            daily: self.keep_daily.unwrap_or(0),
            weekly: self.keep_weekly.unwrap_or(0),
            monthly: self.keep_monthly.unwrap_or(0),
            yearly: self.keep_yearly.unwrap_or(0),
            within: self.keep_within.unwrap_or_default(),
            within_hourly: self.keep_within_hourly.unwrap_or_default(),
            within_daily: self.keep_within_daily.unwrap_or_default(),
            within_weekly: self.keep_within_weekly.unwrap_or_default(),
            within_monthly: self.keep_within_monthly.unwrap_or_default(),
            within_yearly: self.keep_within_yearly.unwrap_or_default(),
            tags: self.keep_tag.clone(),
        };
        (!p.is_empty()).then_some(p)
    }
}

/// Arguments of `cluster init`.
#[derive(Args, Debug)]
pub struct ClusterInitArgs {
    /// Output directory.
    #[arg(long)]
    dir: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Host name or IP of each node (repeat once per node, or once for all).
    #[arg(long = "host", default_value = "127.0.0.1")]
    hosts: Vec<String>,
    /// Port of node 1; node i listens on base-port + i - 1.
    #[arg(long, default_value_t = 7401)]
    base_port: u16,
    /// Repository named in the agent certificate.
    #[arg(long, default_value = "default")]
    repository: String,
    /// Agent id named in the agent certificate.
    #[arg(long, default_value = "agent-1")]
    agent_id: String,
    /// Role of that certificate: admin (the default: the operator's own
    /// agent), writer or reader. Give hosts writer certificates with
    /// `cluster add-agent`.
    #[arg(long, default_value = "admin", value_parser = parse_role)]
    role: Role,
    /// N: copies of every chunk [default: min(3, nodes)].
    #[arg(long)]
    replicas: Option<u32>,
    /// W: durable copies before a write is acknowledged [default: min(2, N)].
    #[arg(long)]
    write_quorum: Option<u32>,
}

/// Runs the CLI: parses arguments, runs the command, prints errors with
/// their causes, and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Agent | Command::Ui { .. } | Command::Mount { .. }
    ) {
        die_quietly_on_a_closed_pipe();
    }
    ringvault_net::init_logging(log_filter(&cli));
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The log filter without RINGVAULT_LOG. A one-shot command shows its own
/// warnings (a file skipped, a bad copy read) but not the connection
/// layer's ("unreachable; routing around it"), which the command's own
/// report or error covers; the long-running ones (`agent`, `ui`, `mount`)
/// log every warning. Each `-v` shows more.
fn log_filter(cli: &Cli) -> &'static str {
    let daemon = matches!(
        cli.command,
        Command::Agent | Command::Ui { .. } | Command::Mount { .. }
    );
    match (cli.verbose, daemon) {
        (0, false) => "warn,ringvault_net=error",
        (0, true) | (1, _) => "warn",
        (2, _) => "info",
        _ => "debug",
    }
}

/// Gives SIGPIPE back its default action, as every Unix tool has it: a
/// command whose reader goes away (`ringvault ls latest | head -1`) ends
/// at its next write, quietly, killed by the signal (exit status 141 in a
/// shell), as restic and `ls` do. The Rust runtime ignores SIGPIPE, which
/// turns that write into an error on which `println!` panics (exit 101,
/// "failed printing to stdout"). The long-running commands (`agent`, `ui`,
/// `mount`) keep ignoring it, so a closed log pipe cannot kill a daemon.
#[allow(unsafe_code)]
fn die_quietly_on_a_closed_pipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler code, and this
    // runs at start, before the runtime or any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The async runtime: a worker per core, and a blocking pool of two
/// threads per core for the scan and for sealing and opening chunks. tokio's
/// default of 512 blocking threads let a restore open a chunk on 16 threads
/// at once, and glibc's per-thread arenas then kept 120-150 MiB resident for
/// about 20 MiB of live heap (massif); with 4 threads on 2 cores the peak is
/// the key derivation's 64 MiB and the restore is no slower.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(2 * cores)
        .build()
}

fn parse_chunker_params(s: &str) -> Result<ChunkerParams, String> {
    let parts: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>().map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let [min_size, avg_size, max_size] = parts[..] else {
        return Err("expected MIN,AVG,MAX in bytes".into());
    };
    let params = ChunkerParams {
        min_size,
        avg_size,
        max_size,
        ..ChunkerParams::default()
    };
    params.validate().map_err(|e| e.to_string())?;
    Ok(params)
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<WrongPassword>() {
            return EXIT_WRONG_PASSWORD;
        }
        match cause.downcast_ref::<ClientError>() {
            Some(ClientError::Unreachable(_)) => return EXIT_UNREACHABLE,
            Some(ClientError::Forbidden(_)) => return EXIT_FORBIDDEN,
            _ => {}
        }
    }
    1
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let progress = !cli.no_progress && !cli.json && std::io::stderr().is_terminal();
    match &cli.command {
        Command::Quickstart { dir, stop, once } => {
            if *stop {
                let n = quickstart::stop(&quickstart::home()?)?;
                println!("stopped {n} quickstart server(s)");
                return Ok(0);
            }
            let dir = dir.as_deref().context("quickstart needs a directory")?;
            run_quickstart(&cli, dir, progress, *once).await
        }
        Command::Init { chunker_params } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let password = password::password(&loaded.config, &cli.password_flags(), true)?;
            let chunker = chunker_params.unwrap_or_default();
            repo::init(&loaded.config, &password, KdfParams::default(), chunker).await?;
            println!(
                "created repository {} on the cluster",
                loaded.config.repository
            );
            Ok(0)
        }
        Command::Backup { paths, tags, time } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let report = backup::backup(
                r.clone(),
                BackupOptions {
                    paths: paths.clone(),
                    tags: tags.clone(),
                    progress,
                    time_ns: *time,
                    ..BackupOptions::default()
                },
            )
            .await?;
            r.cluster.close().await;
            print_backup(&cli, &report);
            Ok(if report.errors.is_empty() {
                0
            } else {
                EXIT_INCOMPLETE
            })
        }
        Command::Agent => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let watching =
                daemon::Watching::start(&loaded.config.paths, loaded.config.event_queue)?;
            daemon::run(r.clone(), watching, true).await?;
            r.cluster.close().await;
            Ok(0)
        }
        Command::Service {
            command:
                ServiceCommand::Install {
                    user: _,
                    print,
                    dir,
                    no_start,
                },
        } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            anyhow::ensure!(
                !loaded.config.paths.is_empty(),
                "{} lists no `paths` for the agent to watch",
                loaded.path.display()
            );
            let opts = service::InstallOptions {
                exe: std::env::current_exe().context("finding this program's path")?,
                config: std::path::absolute(&loaded.path)?,
                state_dir: repo::state_dir(&loaded.config)?,
                dir: dir.clone(),
                start: !no_start,
            };
            if *print {
                if cfg!(target_os = "macos") {
                    print!("{}", service::launchd_plist(&opts));
                } else {
                    print!("{}", service::systemd_unit(&opts));
                }
                return Ok(0);
            }
            for step in service::install(&opts)? {
                println!("{step}");
            }
            Ok(0)
        }
        Command::Status => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let answer = status::ask(&status::socket_path(&loaded.config)?).await?;
            print_status(&cli, &answer);
            Ok(0)
        }
        Command::Snapshots => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let snaps = r.snapshots().await?;
            r.cluster.close().await;
            print_snapshots(&cli, &snaps);
            Ok(0)
        }
        Command::Versions { path } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let versions = browse::versions(&r, path).await?;
            r.cluster.close().await;
            print_versions(&cli, &versions);
            Ok(0)
        }
        Command::Diff { from, to, path } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let (a, sa) = r.find_snapshot(from).await?;
            let (b, sb) = r.find_snapshot(to).await?;
            let report = browse::diff(
                &r,
                (a, sa.root),
                (b, sb.root),
                path.as_deref().unwrap_or(""),
            )
            .await?;
            r.cluster.close().await;
            print_diff(&cli, &report);
            Ok(0)
        }
        Command::Find {
            pattern,
            snapshots,
            newer,
            older,
        } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let selected = if snapshots.is_empty() {
                r.snapshots().await?
            } else {
                let mut v = Vec::new();
                for s in snapshots {
                    v.push(r.find_snapshot(s).await?);
                }
                v
            };
            let mut found = browse::find(&r, pattern, &selected).await?;
            found.retain(|f| {
                newer.is_none_or(|t| f.mtime_ns > t) && older.is_none_or(|t| f.mtime_ns < t)
            });
            r.cluster.close().await;
            print_found(&cli, &found);
            Ok(if found.is_empty() { 1 } else { 0 })
        }
        Command::Cat { snapshot, path } => {
            let (snapshot, path) = match (snapshot.split_once(':'), path) {
                (_, Some(p)) => (snapshot.as_str(), p.as_str()),
                (Some((s, p)), None) => (s, p),
                (None, None) => anyhow::bail!("give a path: SNAPSHOT PATH or SNAPSHOT:PATH"),
            };
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let (_, snap) = r.find_snapshot(snapshot).await?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
            browse::cat(&r, snap.root, path, &mut out).await?;
            r.cluster.close().await;
            Ok(0)
        }
        Command::Ls { snapshot, path } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let (id, snap) = r.find_snapshot(snapshot).await?;
            let entries = match path
                .as_deref()
                .map(|p| p.trim_matches('/'))
                .filter(|p| !p.is_empty())
            {
                None => r.read_tree(snap.root).await?.entries,
                Some(p) => {
                    let mut trees = browse::Trees::default();
                    let e = browse::lookup(&r, &mut trees, snap.root, p)
                        .await?
                        .with_context(|| format!("no {p:?} in the snapshot"))?;
                    match e.content {
                        Content::Subtree(t) => r.read_tree(t).await?.entries,
                        _ => vec![e],
                    }
                }
            };
            r.cluster.close().await;
            print_ls(&cli, &id, &entries);
            Ok(0)
        }
        Command::Restore {
            snapshot,
            path,
            target,
            include,
            iinclude,
            exclude,
            iexclude,
            overwrite,
            dry_run,
            verify,
            delete,
            numeric_owner,
            no_xattrs,
        } => {
            let (snapshot, path) = match (snapshot.split_once(':'), path) {
                (Some(_), Some(_)) => {
                    anyhow::bail!("give the path once: SNAPSHOT:PATH or --path PATH")
                }
                (Some((s, p)), None) => (s, Some(p.to_owned())),
                (None, p) => (snapshot.as_str(), p.clone()),
            };
            let options = restore::RestoreOptions {
                path,
                include: include.clone(),
                iinclude: iinclude.clone(),
                exclude: exclude.clone(),
                iexclude: iexclude.clone(),
                overwrite: *overwrite,
                dry_run: *dry_run,
                // The passes after the restore work from what it did.
                list: *verify || *delete,
                numeric_owner: *numeric_owner,
                no_xattrs: *no_xattrs,
                progress: Some(Arc::new(RestoreProgress::new())),
            };
            if *delete
                && target.components().eq(Path::new("/").components())
                && include.is_empty()
                && iinclude.is_empty()
                && exclude.is_empty()
                && iexclude.is_empty()
            {
                anyhow::bail!("--target / --delete needs an --include or --exclude pattern");
            }
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let (id, snap) = r.find_snapshot(snapshot).await?;
            let counters = options.progress.clone().unwrap_or_default();
            let show = if cli.json && !cli.no_progress {
                Show::Json
            } else if progress {
                Show::Bar
            } else {
                Show::Nothing
            };
            let ticker = Ticker::start(counters.clone(), show);
            let report = restore::restore_with(r.clone(), &snap, target, &options).await?;
            let deleted = if *delete {
                Some(
                    restore::delete::delete_extra(
                        &r,
                        &snap,
                        target,
                        &options,
                        &report,
                        Some(&*counters),
                    )
                    .await?,
                )
            } else {
                None
            };
            ticker.finish().await;
            let verified = if *verify {
                let written = restore::verify::written_files(&report);
                Some(
                    restore::verify::verify(&r, &snap, target, options.path.as_deref(), &written)
                        .await?,
                )
            } else {
                None
            };
            r.cluster.close().await;
            let status = counters.status(true);
            for b in &report.bad_copies {
                eprintln!(
                    "warning: bad copy of chunk {} on {}: {} (read from another replica)",
                    b.chunk, b.node, b.reason
                );
            }
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            for (p, e) in &report.errors {
                eprintln!("error: {}: {e}", p.display());
            }
            let (mut gone, delete_errors) = match &deleted {
                Some(d) => (d.deleted.iter().collect(), d.errors.as_slice()),
                None => (Vec::new(), &[][..]),
            };
            gone.sort();
            for (p, e) in delete_errors {
                eprintln!("error: {}: not deleted: {e}", p.display());
            }
            let verify_errors = verified.as_ref().map_or(&[][..], |v| v.errors.as_slice());
            for (p, e) in verify_errors {
                eprintln!("error: {}: verification failed: {e}", p.display());
            }
            // Listed only to plan the passes after it, unless a dry run.
            let listed = if *dry_run { &report.actions[..] } else { &[] };
            let mut actions: Vec<&restore::PlannedAction> = listed.iter().collect();
            actions.sort_by(|a, b| a.path.cmp(&b.path));
            let kind = |k: EntryKind| match k {
                EntryKind::Dir => "dir",
                EntryKind::Symlink => "symlink",
                EntryKind::Fifo => "fifo",
                EntryKind::CharDevice | EntryKind::BlockDevice => "device",
                _ => "file",
            };
            if cli.json {
                let mut out = json!({
                    "snapshot": id.to_hex(), "dry_run": dry_run, "files": report.files,
                    "symlinks": report.symlinks, "specials": report.specials,
                    "dirs": report.dirs, "bytes": report.bytes,
                    "unchanged": report.unchanged, "skipped": report.skipped,
                    "errors": report.errors.len() + delete_errors.len(), "warnings": report.warnings,
                    "bad_copies": report.bad_copies.iter().map(|b| json!({
                        "chunk": b.chunk.to_hex(), "node": b.node.0, "reason": b.reason})).collect::<Vec<_>>(),
                });
                if *dry_run {
                    out["actions"] = actions
                        .iter()
                        .map(|a| {
                            json!({
                                "path": a.path.to_string_lossy(), "kind": kind(a.kind),
                                "action": a.action.as_str(), "size": a.size,
                            })
                        })
                        .collect();
                    if *delete {
                        out["deleted"] = gone.iter().map(|p| p.to_string_lossy()).collect();
                    }
                }
                // restic's summary names.
                out["message_type"] = json!("summary");
                for (k, v) in [
                    ("seconds_elapsed", status.seconds_elapsed),
                    ("total_files", status.total_files),
                    ("files_restored", status.files_restored),
                    ("files_skipped", status.files_skipped),
                    ("files_deleted", status.files_deleted),
                    ("total_bytes", status.total_bytes),
                    ("bytes_restored", status.bytes_restored),
                    ("bytes_skipped", status.bytes_skipped),
                ] {
                    out[k] = json!(v);
                }
                if let Some(v) = &verified {
                    out["files_verified"] = json!(v.files);
                    out["bytes_verified"] = json!(v.bytes);
                    out["verify_errors"] = json!(v.errors.len());
                }
                println!("{out}");
            } else {
                for a in &actions {
                    println!("{:<9} {}", a.action.as_str(), a.path.display());
                }
                if *dry_run {
                    for p in &gone {
                        println!("{:<9} {}", "deleted", p.display());
                    }
                }
                println!(
                    "{} snapshot {} to {}: {} files ({}), {} symlinks, {} directories, \
                     {} unchanged, {} skipped{}{}",
                    if *dry_run {
                        "dry run: would restore"
                    } else {
                        "restored"
                    },
                    id.short(),
                    target.display(),
                    report.files,
                    indicatif::HumanBytes(report.bytes),
                    report.symlinks,
                    report.dirs,
                    report.unchanged,
                    report.skipped,
                    match &deleted {
                        Some(d) => format!(", {} deleted", d.deleted.len()),
                        None => String::new(),
                    },
                    if report.errors.is_empty() && delete_errors.is_empty() {
                        String::new()
                    } else {
                        format!(", {} errors", report.errors.len() + delete_errors.len())
                    }
                );
                if let Some(v) = &verified {
                    println!(
                        "verified {} files ({}) in {}{}",
                        v.files,
                        indicatif::HumanBytes(v.bytes),
                        target.display(),
                        if v.errors.is_empty() {
                            String::new()
                        } else {
                            format!(", {} differ from the snapshot", v.errors.len())
                        }
                    );
                }
            }
            Ok(if !verify_errors.is_empty() {
                // restic's exit status for a failed verification.
                1
            } else if report.errors.is_empty() && delete_errors.is_empty() {
                0
            } else {
                EXIT_INCOMPLETE
            })
        }
        Command::Mount {
            mountpoint,
            allow_other,
        } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let options = crate::mount::MountOptions {
                allow_other: *allow_other,
            };
            let code = crate::mount::run(r.clone(), mountpoint, &options).await;
            r.cluster.close().await;
            code
        }
        Command::Ui { listen } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            crate::ui::run(r.clone(), *listen).await?;
            r.cluster.close().await;
            Ok(0)
        }
        Command::Forget {
            keep,
            host,
            dry_run,
            prune,
        } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let policy = keep
                .policy()
                .unwrap_or_else(|| loaded.config.retention.clone());
            if policy.is_empty() {
                anyhow::bail!(
                    "no retention policy: give --keep-last, --keep-daily, ... or set [retention] in {}",
                    loaded.path.display()
                );
            }
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let report = gc::forget(&r, &policy, host.as_deref(), *dry_run).await?;
            print_forget(&cli, &report);
            if *prune && !*dry_run {
                let p =
                    gc::prune(&r, loaded.config.prune_grace_s, loaded.config.trash_keep_s).await?;
                print_prune(&cli, &p);
            }
            r.cluster.close().await;
            Ok(0)
        }
        Command::Prune { restore_trash } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            if *restore_trash {
                let n = gc::restore_trash(&r).await?;
                r.cluster.close().await;
                if cli.json {
                    println!("{}", json!({ "restored": n }));
                } else {
                    println!("moved {n} blob copies back from the trash");
                }
                return Ok(0);
            }
            let p = gc::prune(&r, loaded.config.prune_grace_s, loaded.config.trash_keep_s).await?;
            r.cluster.close().await;
            print_prune(&cli, &p);
            Ok(if p.skipped.is_empty() {
                0
            } else {
                EXIT_INCOMPLETE
            })
        }
        Command::Stats => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let st = gc::stats(&r).await?;
            r.cluster.close().await;
            print_stats(&cli, &st);
            Ok(0)
        }
        Command::Check { read_data } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let r = repo::open(&loaded.config, &cli.password_flags()).await?;
            let report = check::check(&r, *read_data).await?;
            r.cluster.close().await;
            print_check(&cli, &report);
            Ok(if report.has_loss() {
                1
            } else if report.is_healthy() {
                0
            } else {
                EXIT_DEGRADED
            })
        }
        Command::Cluster {
            command: ClusterCommand::Status,
        } => {
            let loaded = repo::load_config(cli.config.as_deref())?;
            let (cluster, _) = repo::connect(&loaded.config).await?;
            let rows: Vec<StatusRow> = futures::future::join_all(
                cluster.servers().into_iter().map(|(node, address, _)| {
                    let cluster = &cluster;
                    async move { (node, address, cluster.node_status(node).await) }
                }),
            )
            .await;
            cluster.close().await;
            print_cluster_status(&cli, cluster.map().epoch, &rows);
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
        Command::Cluster {
            command:
                ClusterCommand::AddNode {
                    dir,
                    address,
                    id,
                    weight,
                    zone,
                },
        } => {
            let change = cluster::MapChange::AddNode {
                id: *id,
                address: address.clone(),
                weight: *weight,
                zone: zone.clone(),
            };
            print_map_change(&cli, &cluster::change_map(dir, &change).await?);
            Ok(0)
        }
        Command::Cluster {
            command: ClusterCommand::RemoveNode { dir, id },
        } => {
            let change = cluster::MapChange::RemoveNode { id: *id };
            print_map_change(&cli, &cluster::change_map(dir, &change).await?);
            Ok(0)
        }
        Command::Cluster {
            command: ClusterCommand::SetWeight { dir, id, weight },
        } => {
            let change = cluster::MapChange::SetWeight {
                id: *id,
                weight: *weight,
            };
            print_map_change(&cli, &cluster::change_map(dir, &change).await?);
            Ok(0)
        }
        Command::Cluster {
            command:
                ClusterCommand::AddAgent {
                    dir,
                    repository,
                    agent_id,
                    role,
                    out,
                },
        } => {
            let layout = cluster::add_agent(dir, repository, agent_id, *role, out.as_deref())?;
            if cli.json {
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
        Command::Cluster {
            command:
                ClusterCommand::Revoke {
                    dir,
                    fingerprint,
                    cert,
                },
        } => {
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
            print_map_change(&cli, &cluster::change_map(dir, &change).await?);
            Ok(0)
        }
        Command::Key { command } => run_key(&cli, command).await,
        Command::Cluster {
            command: ClusterCommand::Init(a),
        } => {
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
    }
}

async fn run_key(cli: &Cli, command: &KeyCommand) -> anyhow::Result<u8> {
    let loaded = repo::load_config(cli.config.as_deref())?;
    let r = repo::open(&loaded.config, &cli.password_flags()).await?;
    let code = match command {
        KeyCommand::List => {
            let keys = r.keys().await?;
            if cli.json {
                println!("{}", serde_json::to_string(&keys)?);
            } else {
                println!(" {:<16}  {:<12}  {:<20}  created", "id", "user", "host");
                for k in &keys {
                    println!(
                        "{}{:<16}  {:<12}  {:<20}  {}",
                        if k.current { "*" } else { " " },
                        &k.id[..16],
                        k.user,
                        k.host,
                        if k.created_ns == 0 {
                            "-".to_owned()
                        } else {
                            format_time(k.created_ns)
                        }
                    );
                }
            }
            0
        }
        KeyCommand::Add { new_password_file } => {
            let password = password::new_password(new_password_file.as_deref())?;
            let id = r.add_key(&password, KdfParams::default()).await?;
            print_key_change(cli, "added", &id);
            0
        }
        KeyCommand::Remove { id } => {
            let id = r.find_key(id).await?;
            r.remove_key(id).await?;
            print_key_change(cli, "removed", &id);
            0
        }
        KeyCommand::Passwd { new_password_file } => {
            let password = password::new_password(new_password_file.as_deref())?;
            let id = r.add_key(&password, KdfParams::default()).await?;
            r.cluster
                .delete_key(r.key_id)
                .await
                .context("removing the old key (the new one is stored: remove the old one with `ringvault key remove`)")?;
            print_key_change(cli, "replaced the current key by", &id);
            0
        }
    };
    r.cluster.close().await;
    Ok(code)
}

fn print_key_change(cli: &Cli, what: &str, id: &[u8; 32]) {
    let id = hex::encode(id);
    if cli.json {
        println!("{}", json!({ "done": what, "id": id }));
    } else {
        println!("{what} key {}", &id[..16]);
    }
}

async fn run_quickstart(cli: &Cli, dir: &Path, progress: bool, once: bool) -> anyhow::Result<u8> {
    let home = quickstart::home()?;
    let flags = cli.password_flags();
    // A password the user gives is used and written nowhere; only without
    // one does a new layout get a random password file.
    let given = password::given_password(&flags)?;
    let agent_path = quickstart::ensure_layout(&home, given.is_none())?;
    let loaded = repo::load_config(Some(&agent_path))?;
    let started = quickstart::start_servers(&home, &loaded.config).await?;
    if started > 0 {
        eprintln!(
            "started {started} chunk server(s) on {}",
            loaded.config.servers.join(", ")
        );
    } else {
        eprintln!(
            "reusing the running chunk servers on {}",
            loaded.config.servers.join(", ")
        );
    }
    let (password, source) = match given {
        Some(given) => given,
        None => password::password_and_source(&loaded.config, &flags, false)?,
    };
    if quickstart::ensure_repository(&loaded.config, &password).await? {
        match &source {
            PasswordSource::ConfigFile(path) => eprintln!(
                "created the repository; its password is in {} (keep a copy elsewhere)",
                path.display()
            ),
            other => eprintln!(
                "created the repository with the password from {other}; it is written nowhere, so keep it safe"
            ),
        }
    }
    let r = repo::open_with_password(&loaded.config, &password).await?;
    // Watching starts before the first snapshot, so that nothing changed
    // during it is missed.
    let watching = (!once)
        .then(|| daemon::Watching::start(&[dir.to_owned()], loaded.config.event_queue))
        .transpose()?;
    let report = backup::backup(
        r.clone(),
        BackupOptions {
            paths: vec![dir.to_owned()],
            progress,
            ..BackupOptions::default()
        },
    )
    .await?;
    print_backup(cli, &report);
    if !cli.json {
        let cfg = agent_path.display();
        println!();
        println!("Your files are in a three-node cluster on this machine. Next:");
        // The program as it was invoked (./target/release/ringvault, say), so
        // the commands work as printed.
        let rv = std::env::args()
            .next()
            .unwrap_or_else(|| "ringvault".into());
        // The password flag the user gave goes into each command that needs
        // one; a variable must stay set.
        let pw = match &source {
            PasswordSource::FileFlag(f) => format!(" --password-file {}", f.display()),
            PasswordSource::CommandFlag(c) => format!(" --password-command {}", shell_quote(c)),
            _ => String::new(),
        };
        println!("  {rv} --config {cfg}{pw} snapshots");
        if !once {
            println!("  {rv} --config {cfg} status      # what the watching agent is doing");
        }
        println!("  {rv} --config {cfg}{pw} ls latest");
        println!("  {rv} --config {cfg}{pw} restore latest --target /tmp/ringvault-restore");
        println!("  {rv} quickstart --stop        # stop the local cluster");
        println!("(--config may be left out: ringvault finds the quickstart's config by itself)");
        match &source {
            PasswordSource::Env => println!("(each needs RINGVAULT_PASSWORD set, as now)"),
            PasswordSource::FileEnv(_) => {
                println!("(each needs RINGVAULT_PASSWORD_FILE set, as now)");
            }
            PasswordSource::CommandEnv(_) => {
                println!("(each needs RINGVAULT_PASSWORD_COMMAND set, as now)");
            }
            _ => {}
        }
    }
    if let Some(watching) = watching {
        eprintln!(
            "\nwatching {} and taking a snapshot whenever it changes; Ctrl-C to stop watching (the servers keep running)",
            dir.display()
        );
        daemon::run(r.clone(), watching, false).await?;
    }
    r.cluster.close().await;
    Ok(if report.errors.is_empty() {
        0
    } else {
        EXIT_INCOMPLETE
    })
}

/// `text` as one POSIX shell word (single quotes; a `'` becomes `'\''`).
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn print_backup(cli: &Cli, report: &backup::BackupReport) {
    for (p, e) in &report.errors {
        eprintln!("warning: skipped {}: {e}", p.display());
    }
    let s = &report.snapshot.summary;
    if cli.json {
        println!(
            "{}",
            json!({
                "snapshot": report.id.to_hex(),
                "summary": summary_json(&report.snapshot),
                "wire_bytes": report.wire_bytes,
            })
        );
        return;
    }
    println!("snapshot {} saved", report.id.short());
    println!(
        "  files: {}{}, read: {}, new: {}, sent: {} ({} on the wire), took {:.1} s",
        s.files,
        if s.errors > 0 {
            format!(" ({} skipped)", s.errors)
        } else {
            String::new()
        },
        indicatif::HumanBytes(s.bytes_read),
        indicatif::HumanBytes(s.new_bytes),
        indicatif::HumanBytes(s.sent_bytes),
        indicatif::HumanBytes(report.wire_bytes),
        s.duration_ns as f64 / 1e9
    );
}

fn summary_json(s: &Snapshot) -> serde_json::Value {
    let m = &s.summary;
    json!({
        "files": m.files, "dirs": m.dirs, "bytes": m.bytes, "bytes_read": m.bytes_read,
        "new_bytes": m.new_bytes, "sent_bytes": m.sent_bytes, "duration_ns": m.duration_ns,
        "errors": m.errors,
    })
}

fn format_time(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn print_status(cli: &Cli, s: &status::AgentStatus) {
    if cli.json {
        println!("{}", serde_json::to_string(s).unwrap_or_default());
        return;
    }
    println!(
        "agent (pid {}) backing up into {}, watching: {}",
        s.pid,
        s.repository,
        s.paths.join(", ")
    );
    match (&s.in_progress, s.dirty_paths, s.full_scan_pending) {
        (Some(p), _, _) => println!(
            "snapshot in progress for {:.1} s{}: {} files, {} read, {} sent",
            p.elapsed_ms as f64 / 1000.0,
            if p.full_scan { " (full scan)" } else { "" },
            p.files,
            indicatif::HumanBytes(p.bytes_read),
            indicatif::HumanBytes(p.sent_bytes)
        ),
        (None, 0, false) => println!("up to date: nothing waiting"),
        (None, n, full) => println!(
            "waiting: {n} changed path(s){}{}",
            if full { ", a full scan" } else { "" },
            s.next_snapshot_in_ms
                .map(|ms| format!(", snapshot in {:.1} s", ms as f64 / 1000.0))
                .unwrap_or_default()
        ),
    }
    match &s.last_snapshot {
        Some(l) => println!(
            "last snapshot: {} at {}",
            &l.id[..8.min(l.id.len())],
            l.time
        ),
        None => println!("last snapshot: none yet"),
    }
    if let Some(e) = &s.last_error {
        println!("last attempt failed: {e}");
    }
    let up: Vec<String> = s
        .servers
        .iter()
        .map(|v| {
            format!(
                "{} {} ({})",
                v.node,
                v.address,
                if v.up { "up" } else { "down" }
            )
        })
        .collect();
    println!("servers: {}", up.join(", "));
}

fn print_snapshots(cli: &Cli, snaps: &[(SnapshotId, Snapshot)]) {
    let paths = |s: &Snapshot| s.paths.iter().map(|p| display_name(p)).collect::<Vec<_>>();
    if cli.json {
        let list: Vec<_> = snaps
            .iter()
            .map(|(id, s)| {
                json!({
                    "id": id.to_hex(), "short_id": id.short(), "time": format_time(s.time_ns),
                    "host": s.host, "agent": s.agent, "paths": paths(s), "tags": s.tags,
                    "root": s.root.to_hex(), "parent": s.parent.map(|p| p.to_hex()),
                    "summary": summary_json(s),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return;
    }
    println!(
        "{:<8}  {:<20}  {:<12}  {:>8}  {:>10}  PATHS",
        "ID", "TIME", "HOST", "FILES", "SIZE"
    );
    for (id, s) in snaps {
        println!(
            "{:<8}  {:<20}  {:<12}  {:>8}  {:>10}  {}",
            id.short(),
            format_time(s.time_ns),
            s.host,
            s.summary.files,
            indicatif::HumanBytes(s.summary.bytes).to_string(),
            paths(s).join(", ")
        );
    }
    println!("{} snapshot(s)", snaps.len());
}

fn print_versions(cli: &Cli, versions: &[browse::Version]) {
    if cli.json {
        println!("{}", serde_json::to_string(versions).unwrap_or_default());
        return;
    }
    println!(
        "{:<8}  {:<20}  {:<12}  {:<8}  {:>10}  {:<16}  SNAPSHOTS",
        "ID", "TIME", "HOST", "CHANGE", "SIZE", "DIGEST"
    );
    for v in versions {
        let change = match v.change {
            browse::Change::Added => "added",
            browse::Change::Removed => "removed",
            browse::Change::Content => "content",
            browse::Change::Metadata => "metadata",
        };
        println!(
            "{:<8}  {:<20}  {:<12}  {:<8}  {:>10}  {:<16}  {}",
            &v.snapshot[..8],
            format_time(v.time_ns),
            v.host,
            change,
            indicatif::HumanBytes(v.size).to_string(),
            v.digest,
            v.snapshots
        );
    }
}

fn print_diff(cli: &Cli, r: &browse::DiffReport) {
    if cli.json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    for c in &r.changes {
        let mark = match c.change {
            browse::Change::Added => "+",
            browse::Change::Removed => "-",
            browse::Change::Content => "M",
            browse::Change::Metadata => "U",
        };
        let slash = if c.kind == EntryKind::Dir { "/" } else { "" };
        println!("{mark}    {}{slash}", c.path);
    }
    println!(
        "{} change(s) between {} and {}",
        r.changes.len(),
        &r.from[..8],
        &r.to[..8]
    );
}

fn print_found(cli: &Cli, found: &[browse::Found]) {
    if cli.json {
        println!("{}", serde_json::to_string(found).unwrap_or_default());
        return;
    }
    for f in found {
        println!(
            "{}  {:<20}  {:>10}  {}",
            &f.snapshot[..8],
            format_time(f.mtime_ns),
            indicatif::HumanBytes(f.size).to_string(),
            f.path
        );
    }
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Fifo => "fifo",
        EntryKind::CharDevice => "chardev",
        EntryKind::BlockDevice => "blockdev",
        EntryKind::Socket => "socket",
    }
}

fn print_ls(cli: &Cli, id: &SnapshotId, entries: &[Entry]) {
    if cli.json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "name": display_name(&e.name), "kind": kind_name(e.kind), "mode": e.mode & 0o7777,
                    "size": e.size, "mtime": format_time(e.mtime_ns), "uid": e.uid, "gid": e.gid,
                    "target": match &e.content { Content::Symlink(t) => Some(display_name(t)), _ => None },
                })
            })
            .collect();
        println!("{}", json!({ "snapshot": id.to_hex(), "entries": list }));
        return;
    }
    for e in entries {
        let suffix = match (&e.kind, &e.content) {
            (EntryKind::Dir, _) => "/".to_owned(),
            (_, Content::Symlink(t)) => format!(" -> {}", display_name(t)),
            _ => String::new(),
        };
        println!(
            "{:<8} {:o} {:>12} {}  {}{}",
            kind_name(e.kind),
            e.mode & 0o7777,
            e.size,
            format_time(e.mtime_ns),
            display_name(&e.name).escape_debug(),
            suffix
        );
    }
}

fn print_check(cli: &Cli, r: &check::CheckReport) {
    if cli.json {
        println!("{}", check::output::json(r));
    } else {
        print!("{}", check::output::text(r, cli.verbose > 0));
    }
}

type StatusRow = (
    ringvault_common::NodeId,
    String,
    Result<ringvault_common::wire::NodeStatus, ClientError>,
);

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

fn print_forget(cli: &Cli, r: &gc::ForgetReport) {
    if cli.json {
        let groups: Vec<_> = r
            .groups
            .iter()
            .map(|g| {
                json!({
                    "host": g.host, "paths": g.paths,
                    "keep": g.keep.iter().map(|(id, why)| json!({"id": id.to_hex(), "reasons": why})).collect::<Vec<_>>(),
                    "remove": g.remove.iter().map(|id| id.to_hex()).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", json!({ "groups": groups, "applied": r.applied }));
        return;
    }
    for g in &r.groups {
        println!("host {}, paths {}:", g.host, g.paths.join(", "));
        for (id, why) in &g.keep {
            println!("  keep   {}  ({})", id.short(), why.join(", "));
        }
        for id in &g.remove {
            println!("  remove {}", id.short());
        }
    }
    let removed: usize = r.groups.iter().map(|g| g.remove.len()).sum();
    println!(
        "{} {removed} snapshot(s)",
        if r.applied { "removed" } else { "would remove" }
    );
}

fn print_prune(cli: &Cli, p: &gc::PruneReport) {
    let s = &p.sweep;
    if cli.json {
        println!(
            "{}",
            json!({
                "snapshots": p.snapshots, "live_chunks": p.live_chunks,
                "swept": p.swept.iter().map(|n| n.0).collect::<Vec<_>>(),
                "skipped": p.skipped.iter().map(|(n, e)| json!({"node": n.0, "error": e})).collect::<Vec<_>>(),
                "partitions": s.partitions, "partitions_skipped": s.skipped,
                "noted": s.noted, "cleared": s.cleared, "trashed": s.trashed,
                "trashed_bytes": s.trashed_bytes, "expired": s.expired, "expired_bytes": s.expired_bytes,
            })
        );
        return;
    }
    for (n, e) in &p.skipped {
        println!("{n} did not take part: {e}");
    }
    println!(
        "{} snapshots reach {} chunks; {} server(s) swept {} partitions ({} skipped: an owner down or blobs moving)",
        p.snapshots,
        p.live_chunks,
        p.swept.len(),
        s.partitions,
        s.skipped
    );
    println!(
        "unreferenced: {} newly noted (deleted after the grace period if still unreferenced), {} referenced again",
        s.noted, s.cleared
    );
    println!(
        "trash: {} blob copies moved in ({}), {} dropped for good ({})",
        s.trashed,
        indicatif::HumanBytes(s.trashed_bytes),
        s.expired,
        indicatif::HumanBytes(s.expired_bytes)
    );
}

fn print_stats(cli: &Cli, st: &gc::Stats) {
    if cli.json {
        println!(
            "{}",
            json!({
                "logical_bytes": st.logical_bytes, "unique_file_bytes": st.unique_file_bytes,
                "chunks": st.chunks, "stored_bytes": st.stored_bytes, "replicas": st.replicas,
                "stored_bytes_all_replicas": st.stored_bytes * u64::from(st.replicas),
                "dedup_ratio": st.dedup_ratio(), "compression_ratio": st.compression_ratio(),
                "snapshots": st.snapshots.iter().map(|s| json!({
                    "id": s.id.to_hex(), "time_ns": s.time_ns, "host": s.host,
                    "logical_bytes": s.logical_bytes, "chunks": s.chunks,
                    "stored_bytes": s.stored_bytes, "exclusive_bytes": s.exclusive_bytes,
                })).collect::<Vec<_>>(),
            })
        );
        return;
    }
    println!(
        "{:<10} {:>12} {:>8} {:>12} {:>12}",
        "snapshot", "logical", "chunks", "stored", "only here"
    );
    for s in &st.snapshots {
        println!(
            "{:<10} {:>12} {:>8} {:>12} {:>12}",
            s.id.short(),
            indicatif::HumanBytes(s.logical_bytes).to_string(),
            s.chunks,
            indicatif::HumanBytes(s.stored_bytes).to_string(),
            indicatif::HumanBytes(s.exclusive_bytes).to_string()
        );
    }
    println!(
        "repository: {} logical in {} snapshots, {} of distinct files, {} chunks stored in {} per replica ({} with N = {})",
        indicatif::HumanBytes(st.logical_bytes),
        st.snapshots.len(),
        indicatif::HumanBytes(st.unique_file_bytes),
        st.chunks,
        indicatif::HumanBytes(st.stored_bytes),
        indicatif::HumanBytes(st.stored_bytes * u64::from(st.replicas)),
        st.replicas
    );
    println!(
        "dedup ratio {:.2} (logical / distinct file bytes), compression ratio {:.2} (distinct file bytes / stored)",
        st.dedup_ratio(),
        st.compression_ratio()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap's own checks over every subcommand: no two flags share a
        // name or short letter (the global -v among them), and defaults,
        // conflicts and requirements name real arguments.
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    const DAY_NS: i64 = 86_400_000_000_000;

    #[test]
    fn find_ages_are_restic_durations_on_the_calendar() {
        let now = crate::backup::now_ns();
        // `6m` is about six months ago (181 to 184 days), not six minutes.
        let six_months = parse_when("6m").unwrap();
        assert!(
            (181 * DAY_NS..=184 * DAY_NS).contains(&(now - six_months)),
            "6m is {} s ago",
            (now - six_months) / 1_000_000_000
        );
        let two_hours = now - parse_when("2h").unwrap();
        let (hours, minute) = (2 * 3_600_000_000_000, 60_000_000_000);
        assert!((hours - minute..hours + minute).contains(&two_hours));
        let combined = now - parse_when("1y5m7d2h").unwrap();
        assert!((365 + 150 + 7) * DAY_NS < combined && combined < (366 + 154 + 8) * DAY_NS);
        // Absolute times still parse.
        assert_eq!(parse_when("1970-01-02").unwrap(), DAY_NS);
        assert_eq!(parse_when("1970-01-01T00:00:01Z").unwrap(), 1_000_000_000);
        for bad in [
            "",
            "5",
            "90s",
            "2w",
            "-1d",
            "1.5d",
            "5 d",
            "m",
            "yesterday",
            "2026-13-01",
        ] {
            assert!(parse_when(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn keep_within_flags_take_restic_durations() {
        let cli = Cli::try_parse_from(["ringvault", "forget", "--keep-within", "6m"]).unwrap();
        let Command::Forget { keep, .. } = cli.command else {
            panic!("not forget");
        };
        let policy = keep.policy().unwrap();
        assert_eq!(policy.within.to_string(), "6m");
        assert_eq!(policy.within.months, 6);
        let cli = Cli::try_parse_from([
            "ringvault",
            "forget",
            "--keep-within-hourly",
            "1y5m7d2h",
            "--keep-within-yearly",
            "10y",
        ])
        .unwrap();
        let Command::Forget { keep, .. } = cli.command else {
            panic!("not forget");
        };
        let policy = keep.policy().unwrap();
        assert_eq!(policy.within_hourly.to_string(), "1y5m7d2h");
        assert_eq!(policy.within_yearly.years, 10);
        for bad in ["6", "90s", "", "-1d", "1.5d"] {
            assert!(
                Cli::try_parse_from(["ringvault", "forget", "--keep-within", bad]).is_err(),
                "{bad:?}"
            );
        }
        // Zero is valid and turns the rule off.
        let cli = Cli::try_parse_from(["ringvault", "forget", "--keep-within", "0d"]).unwrap();
        let Command::Forget { keep, .. } = cli.command else {
            panic!("not forget");
        };
        assert!(keep.policy().is_none());
    }
}
