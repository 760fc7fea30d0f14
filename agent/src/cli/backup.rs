//! `init`, `backup` and `agent`: making the repository and snapshots, and
//! what a backup reports.

use std::path::PathBuf;

use ringvault_common::chunker::ChunkerParams;
use ringvault_common::keys::KdfParams;
use ringvault_common::snapshot::Snapshot;
use serde::Serialize;

use super::ctx::Ctx;
use super::{Cli, EXIT_INCOMPLETE, print_json};
use crate::backup::{self, BackupOptions};
use crate::daemon;
use crate::password;
use crate::repo;

/// `init`: creates the repository, with these chunk sizes.
pub(super) async fn run_init(
    ctx: &Ctx,
    chunker_params: Option<ChunkerParams>,
) -> anyhow::Result<u8> {
    let loaded = ctx.config()?;
    let password = password::password(&loaded.config, &ctx.cli.password_flags(), true)?;
    let chunker = chunker_params.unwrap_or_default();
    repo::init(&loaded.config, &password, KdfParams::default(), chunker).await?;
    println!(
        "created repository {} on the cluster",
        loaded.config.repository
    );
    Ok(0)
}

/// `backup`: one snapshot of `paths`; [`EXIT_INCOMPLETE`] when entries
/// were skipped.
pub(super) async fn run_backup(
    ctx: &Ctx,
    paths: &[PathBuf],
    tags: &[String],
    time: Option<i64>,
) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    let report = backup::backup(
        r.clone(),
        BackupOptions {
            paths: paths.to_vec(),
            tags: tags.to_vec(),
            progress: ctx.progress,
            time_ns: time,
            ..BackupOptions::default()
        },
    )
    .await?;
    r.cluster.close().await;
    print_backup(&ctx.cli, &report);
    Ok(if report.errors.is_empty() {
        0
    } else {
        EXIT_INCOMPLETE
    })
}

/// `agent`: watches the config's paths and takes a snapshot whenever they
/// change, until a signal.
pub(super) async fn run_agent(ctx: &Ctx) -> anyhow::Result<u8> {
    let loaded = ctx.config()?;
    let r = ctx.repo().await?;
    let watching = daemon::Watching::start(&loaded.config.paths, loaded.config.event_queue)?;
    daemon::run(r.clone(), watching, true).await?;
    r.cluster.close().await;
    Ok(0)
}

/// Prints a backup's report: its skipped entries as warnings, then the
/// snapshot and its summary.
pub(super) fn print_backup(cli: &Cli, report: &backup::BackupReport) {
    for (p, e) in &report.errors {
        eprintln!("warning: skipped {}: {e}", p.display());
    }
    let s = &report.snapshot.summary;
    if cli.json {
        print_json(&BackupJson {
            snapshot: report.id.to_hex(),
            summary: summary_json(&report.snapshot),
            wire_bytes: report.wire_bytes,
        });
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

/// `backup --json` (and the quickstart's first snapshot).
#[derive(Serialize)]
struct BackupJson {
    snapshot: String,
    summary: SummaryJson,
    wire_bytes: u64,
}

/// A snapshot's summary as `--json` prints it.
#[derive(Serialize)]
pub(super) struct SummaryJson {
    bytes: u64,
    bytes_read: u64,
    dirs: u64,
    duration_ns: u64,
    errors: u64,
    files: u64,
    new_bytes: u64,
    sent_bytes: u64,
}

/// A snapshot's summary as `--json` prints it.
pub(super) fn summary_json(s: &Snapshot) -> SummaryJson {
    let m = &s.summary;
    SummaryJson {
        bytes: m.bytes,
        bytes_read: m.bytes_read,
        dirs: m.dirs,
        duration_ns: m.duration_ns,
        errors: m.errors,
        files: m.files,
        new_bytes: m.new_bytes,
        sent_bytes: m.sent_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::prints_as_a_value;

    #[test]
    fn backup_reports_print_as_their_json_values_did() {
        let summary = SummaryJson {
            bytes: 1,
            bytes_read: 2,
            dirs: 3,
            duration_ns: 4,
            errors: 5,
            files: 6,
            new_bytes: 7,
            sent_bytes: 8,
        };
        let report = BackupJson {
            snapshot: "ab".repeat(32),
            summary,
            wire_bytes: 9,
        };
        assert!(prints_as_a_value(&report));
    }
}
