//! The `ringvault` command line: [`main`] parses the arguments (see
//! [`Cli`]), runs the command and turns its error into an exit code
//! ([`crate::error`] has the table).
//!
//! Each family of commands has its own module, with the functions that
//! print its results: `backup` (init, backup, the watching agent),
//! `snapshots` (reading snapshots: snapshots, versions, diff, find, cat,
//! ls, mount, ui), `restore`, `maintenance` (forget, prune, stats, check),
//! `key`, `cluster`, and `service` (quickstart, service, status). The
//! clap definitions are in `args`.
//!
//! `--json` output comes from `#[derive(Serialize)]` report types beside
//! the print functions. Their fields are declared in alphabetical order:
//! that is the order in which the `json!` objects they replaced printed
//! their keys (serde_json sorts an object's keys unless built with
//! `preserve_order`), and scripts may read it. Each family's tests check
//! that a report prints as the same `serde_json::Value` would.

mod args;
mod backup;
mod cluster;
mod ctx;
mod key;
mod maintenance;
mod restore;
mod service;
mod snapshots;

use std::process::ExitCode;

use clap::Parser;

pub use args::{
    Cli, ClusterCommand, ClusterInitArgs, Command, KeepArgs, KeyCommand, RestoreArgs,
    ServiceCommand,
};

use self::ctx::Ctx;
use crate::error::ErrorKind;

pub use crate::error::{
    EXIT_DEGRADED, EXIT_FORBIDDEN, EXIT_INCOMPLETE, EXIT_UNREACHABLE, EXIT_WRONG_PASSWORD,
};

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
            ExitCode::from(ErrorKind::of(&e).exit_code())
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

/// Runs the parsed command in its family's module, with one [`Ctx`]
/// (which loads the config and opens the repository once, if the command
/// needs them); its exit code.
async fn run(cli: Cli) -> anyhow::Result<u8> {
    let ctx = Ctx::new(cli);
    match &ctx.cli.command {
        Command::Quickstart { dir, stop, once } => {
            service::run_quickstart(&ctx, dir.as_deref(), *stop, *once).await
        }
        Command::Init { chunker_params } => backup::run_init(&ctx, *chunker_params).await,
        Command::Backup { paths, tags, time } => backup::run_backup(&ctx, paths, tags, *time).await,
        Command::Agent => backup::run_agent(&ctx).await,
        Command::Service { command } => service::run_service(&ctx, command),
        Command::Status => service::run_status(&ctx).await,
        Command::Snapshots => snapshots::run_snapshots(&ctx).await,
        Command::Versions { path } => snapshots::run_versions(&ctx, path).await,
        Command::Diff { from, to, path } => {
            snapshots::run_diff(&ctx, from, to, path.as_deref()).await
        }
        Command::Find {
            pattern,
            snapshots,
            newer,
            older,
        } => snapshots::run_find(&ctx, pattern, snapshots, *newer, *older).await,
        Command::Cat { snapshot, path } => {
            snapshots::run_cat(&ctx, snapshot, path.as_deref()).await
        }
        Command::Ls { snapshot, path } => snapshots::run_ls(&ctx, snapshot, path.as_deref()).await,
        Command::Restore(args) => restore::run_restore(&ctx, args).await,
        Command::Mount {
            mountpoint,
            allow_other,
        } => snapshots::run_mount(&ctx, mountpoint, *allow_other).await,
        Command::Ui { listen } => snapshots::run_ui(&ctx, *listen).await,
        Command::Forget {
            keep,
            host,
            dry_run,
            prune,
        } => maintenance::run_forget(&ctx, keep, host.as_deref(), *dry_run, *prune).await,
        Command::Prune { restore_trash } => maintenance::run_prune(&ctx, *restore_trash).await,
        Command::Stats => maintenance::run_stats(&ctx).await,
        Command::Check { read_data } => maintenance::run_check(&ctx, *read_data).await,
        Command::Cluster { command } => cluster::run_cluster(&ctx, command).await,
        Command::Key { command } => key::run_key(&ctx, command).await,
    }
}

/// Prints `value` as one line of JSON. The report types hold strings,
/// numbers, booleans and lists of them, which always serialize.
fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(value).unwrap_or_default());
}

/// `value` prints as the [`serde_json::Value`] made from it would: its
/// objects' fields are in alphabetical order, as a `json!` object's keys.
#[cfg(test)]
fn prints_as_a_value(value: &impl serde::Serialize) -> bool {
    let direct = serde_json::to_string(value).unwrap_or_default();
    let via_value = serde_json::to_value(value).map(|v| v.to_string());
    via_value.is_ok_and(|v| v == direct)
}

/// `ns` since the Unix epoch as RFC 3339 in UTC, to the second.
fn format_time(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}
