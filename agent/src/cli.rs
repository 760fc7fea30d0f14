//! The `ringvault` command line: [`main`] parses the arguments (see
//! [`Cli`]), runs the command and turns its error into an exit code.
//!
//! Each family of commands has its own module, with the functions that
//! print its results: `backup` (init, backup, the watching agent),
//! `snapshots` (reading snapshots: snapshots, versions, diff, find, cat,
//! ls, mount, ui), `restore`, `maintenance` (forget, prune, stats, check),
//! `key`, `cluster`, and `service` (quickstart, service, status). The
//! clap definitions are in `args`.

mod args;
mod backup;
mod cluster;
mod key;
mod maintenance;
mod service;
mod snapshots;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use ringvault_common::keys::KdfParams;
use ringvault_common::tree::{Content, EntryKind};
use serde_json::json;

pub use args::{
    Cli, ClusterCommand, ClusterInitArgs, Command, KeepArgs, KeyCommand, ServiceCommand,
};

use self::backup::print_backup;
use self::cluster::{StatusRow, print_cluster_status, print_map_change};
use self::key::run_key;
use self::maintenance::{print_check, print_forget, print_prune, print_stats};
use self::service::{print_status, run_quickstart};
use self::snapshots::{print_diff, print_found, print_ls, print_snapshots, print_versions};
use crate::backup::BackupOptions;
use crate::browse;
use crate::check;
use crate::client::ClientError;
use crate::cluster::ClusterInit;
use crate::daemon;
use crate::gc;
use crate::password;
use crate::quickstart;
use crate::repo::{self, WrongPassword};
use crate::restore;
use crate::restore::progress::{RestoreProgress, Show, Ticker};
use crate::status;
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
            let report = crate::backup::backup(
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
            let opts = crate::service::InstallOptions {
                exe: std::env::current_exe().context("finding this program's path")?,
                config: std::path::absolute(&loaded.path)?,
                state_dir: repo::state_dir(&loaded.config)?,
                dir: dir.clone(),
                start: !no_start,
            };
            if *print {
                if cfg!(target_os = "macos") {
                    print!("{}", crate::service::launchd_plist(&opts));
                } else {
                    print!("{}", crate::service::systemd_unit(&opts));
                }
                return Ok(0);
            }
            for step in crate::service::install(&opts)? {
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
            let change = crate::cluster::MapChange::AddNode {
                id: *id,
                address: address.clone(),
                weight: *weight,
                zone: zone.clone(),
            };
            print_map_change(&cli, &crate::cluster::change_map(dir, &change).await?);
            Ok(0)
        }
        Command::Cluster {
            command: ClusterCommand::RemoveNode { dir, id },
        } => {
            let change = crate::cluster::MapChange::RemoveNode { id: *id };
            print_map_change(&cli, &crate::cluster::change_map(dir, &change).await?);
            Ok(0)
        }
        Command::Cluster {
            command: ClusterCommand::SetWeight { dir, id, weight },
        } => {
            let change = crate::cluster::MapChange::SetWeight {
                id: *id,
                weight: *weight,
            };
            print_map_change(&cli, &crate::cluster::change_map(dir, &change).await?);
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
            let layout =
                crate::cluster::add_agent(dir, repository, agent_id, *role, out.as_deref())?;
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
            let change = crate::cluster::MapChange::Revoke { fingerprint };
            print_map_change(&cli, &crate::cluster::change_map(dir, &change).await?);
            Ok(0)
        }
        Command::Key { command } => run_key(&cli, command).await,
        Command::Cluster {
            command: ClusterCommand::Init(a),
        } => {
            let replicas = a.replicas.unwrap_or(a.nodes.min(3));
            let layout = crate::cluster::init(&ClusterInit {
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

pub(super) fn format_time(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}
