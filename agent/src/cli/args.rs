//! The command line's definition: [`Cli`], its subcommands and their
//! flags (clap), and the parsers of their values.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ringvault_common::chunker::ChunkerParams;
use ringvault_common::duration::CalendarDuration;
use ringvault_common::tls::Role;

use crate::password::PasswordFlags;
use crate::restore;

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
    pub(super) fn password_flags(&self) -> PasswordFlags {
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
    Restore(RestoreArgs),
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
            let at = ago.before(crate::host::now_ns());
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
    pub(super) fn policy(&self) -> Option<ringvault_common::retention::Policy> {
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

/// Arguments of `restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id (a unique prefix) or `latest`; SNAPSHOT:PATH restores
    /// only PATH, as --path does.
    pub(super) snapshot: String,
    /// Restore only this path inside the snapshot (it lands in the
    /// target under its own name).
    #[arg(long)]
    pub(super) path: Option<String>,
    /// Directory to restore into (created if missing).
    #[arg(long)]
    pub(super) target: PathBuf,
    /// Restore only what matches (repeatable): a matched directory
    /// with everything below it, and the directories leading there.
    #[arg(long = "include", value_name = "PATTERN")]
    pub(super) include: Vec<String>,
    /// Like --include, ignoring case (repeatable).
    #[arg(long = "iinclude", value_name = "PATTERN")]
    pub(super) iinclude: Vec<String>,
    /// Leave out what matches (repeatable); a matched directory is
    /// skipped whole. Wins over --include.
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub(super) exclude: Vec<String>,
    /// Like --exclude, ignoring case (repeatable).
    #[arg(long = "iexclude", value_name = "PATTERN")]
    pub(super) iexclude: Vec<String>,
    /// When to replace a file already in the target: always; if-changed
    /// (unless its size and mtime, or its content, match the snapshot's);
    /// never.
    #[arg(long, value_enum, default_value_t = restore::Overwrite::Always)]
    pub(super) overwrite: restore::Overwrite,
    /// Read the snapshot and the target, write nothing, and list what
    /// would be done to each entry (new, replaced, unchanged, skipped;
    /// with --delete, deleted).
    #[arg(long)]
    pub(super) dry_run: bool,
    /// After the restore, read back every file it wrote and check it
    /// against the snapshot (exit 1 when one differs).
    #[arg(long, conflicts_with = "dry_run")]
    pub(super) verify: bool,
    /// Remove from the target what the snapshot does not have, below
    /// the restored path only (what --exclude matches, or --include
    /// does not, stays).
    #[arg(long)]
    pub(super) delete: bool,
    /// As root, give entries their recorded owner and group ids even
    /// where the recorded names have other ids here (as tar).
    #[arg(long)]
    pub(super) numeric_owner: bool,
    /// Restore no extended attributes (nor POSIX ACLs and file
    /// capabilities, which are kept in them).
    #[arg(long)]
    pub(super) no_xattrs: bool,
}

/// Arguments of `cluster init`.
#[derive(Args, Debug)]
pub struct ClusterInitArgs {
    /// Output directory.
    #[arg(long)]
    pub(super) dir: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub(super) nodes: u32,
    /// Host name or IP of each node (repeat once per node, or once for all).
    #[arg(long = "host", default_value = "127.0.0.1")]
    pub(super) hosts: Vec<String>,
    /// Port of node 1; node i listens on base-port + i - 1.
    #[arg(long, default_value_t = 7401)]
    pub(super) base_port: u16,
    /// Repository named in the agent certificate.
    #[arg(long, default_value = "default")]
    pub(super) repository: String,
    /// Agent id named in the agent certificate.
    #[arg(long, default_value = "agent-1")]
    pub(super) agent_id: String,
    /// Role of that certificate: admin (the default: the operator's own
    /// agent), writer or reader. Give hosts writer certificates with
    /// `cluster add-agent`.
    #[arg(long, default_value = "admin", value_parser = parse_role)]
    pub(super) role: Role,
    /// N: copies of every chunk [default: min(3, nodes)].
    #[arg(long)]
    pub(super) replicas: Option<u32>,
    /// W: durable copies before a write is acknowledged [default: min(2, N)].
    #[arg(long)]
    pub(super) write_quorum: Option<u32>,
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
        let now = crate::host::now_ns();
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
