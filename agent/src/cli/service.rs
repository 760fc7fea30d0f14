//! `quickstart`, `service` and `status`: a local cluster in one command,
//! the agent as a service of this user, and what the running agent does.

use std::path::Path;

use anyhow::Context;

use super::backup::print_backup;
use super::ctx::Ctx;
use super::{Cli, EXIT_INCOMPLETE, ServiceCommand};
use crate::backup::{self, BackupOptions};
use crate::daemon;
use crate::password::{self, PasswordSource};
use crate::quickstart;
use crate::repo;
use crate::status;

/// `quickstart`: starts the local cluster (made on first use), backs up
/// `dir` and watches it unless `once`; with `stop`, stops the servers.
pub(super) async fn run_quickstart(
    ctx: &Ctx,
    dir: Option<&Path>,
    stop: bool,
    once: bool,
) -> anyhow::Result<u8> {
    if stop {
        let n = quickstart::stop(&quickstart::home()?)?;
        println!("stopped {n} quickstart server(s)");
        return Ok(0);
    }
    let dir = dir.context("quickstart needs a directory")?;
    start_quickstart(ctx, dir, once).await
}

/// `service install`: writes the agent's unit, and enables and starts it
/// (or prints it).
pub(super) fn run_service(ctx: &Ctx, command: &ServiceCommand) -> anyhow::Result<u8> {
    let ServiceCommand::Install {
        user: _,
        print,
        dir,
        no_start,
    } = command;
    let loaded = ctx.config()?;
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

/// `status`: asks the running agent over its control socket.
pub(super) async fn run_status(ctx: &Ctx) -> anyhow::Result<u8> {
    let loaded = ctx.config()?;
    let answer = status::ask(&status::socket_path(&loaded.config)?).await?;
    print_status(&ctx.cli, &answer);
    Ok(0)
}

/// The quickstart with a directory: servers, repository, first snapshot,
/// what to run next, then watching.
async fn start_quickstart(ctx: &Ctx, dir: &Path, once: bool) -> anyhow::Result<u8> {
    let home = quickstart::home()?;
    let flags = ctx.cli.password_flags();
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
            progress: ctx.progress,
            ..BackupOptions::default()
        },
    )
    .await?;
    print_backup(&ctx.cli, &report);
    if !ctx.cli.json {
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

/// Prints the running agent's status.
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
