//! `restore`: a snapshot, or part of it, back into a directory, with the
//! passes after it (`--delete`, `--verify`), and what it reports.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use ringvault_common::tree::EntryKind;
use serde::Serialize;

use super::args::RestoreArgs;
use super::ctx::Ctx;
use super::{EXIT_INCOMPLETE, print_json};
use crate::restore;
use crate::restore::progress::{RestoreProgress, Show, Ticker};

/// `restore --json`'s last line: the restore's counts, then restic's
/// summary names (`message_type` "summary", `seconds_elapsed`,
/// `total_files` ... `bytes_skipped`), with `actions` (and with `--delete`,
/// `deleted`) on a dry run and the `--verify` counts after a verification.
#[derive(Serialize)]
struct RestoreJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    actions: Option<Vec<ActionJson<'a>>>,
    bad_copies: Vec<BadCopyJson<'a>>,
    bytes: u64,
    bytes_restored: u64,
    bytes_skipped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_verified: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<Vec<Cow<'a, str>>>,
    dirs: u64,
    dry_run: bool,
    errors: usize,
    files: u64,
    files_deleted: u64,
    files_restored: u64,
    files_skipped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    files_verified: Option<u64>,
    message_type: &'static str,
    seconds_elapsed: u64,
    skipped: u64,
    snapshot: String,
    specials: u64,
    symlinks: u64,
    total_bytes: u64,
    total_files: u64,
    unchanged: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify_errors: Option<usize>,
    warnings: &'a [String],
}

/// What a dry run would do to an entry.
#[derive(Serialize)]
struct ActionJson<'a> {
    action: &'static str,
    kind: &'static str,
    path: Cow<'a, str>,
    size: u64,
}

/// A copy of a chunk that did not open, read from another replica.
#[derive(Serialize)]
struct BadCopyJson<'a> {
    chunk: String,
    node: u32,
    reason: &'a str,
}

/// `restore`: exit 1 when a verified file differs from the snapshot,
/// [`EXIT_INCOMPLETE`] when entries could not be restored or deleted.
pub(super) async fn run_restore(ctx: &Ctx, args: &RestoreArgs) -> anyhow::Result<u8> {
    let RestoreArgs {
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
    } = args;
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
    let r = ctx.repo().await?;
    let (id, snap) = r.find_snapshot(snapshot).await?;
    let counters = options.progress.clone().unwrap_or_default();
    let show = if ctx.cli.json && !ctx.cli.no_progress {
        Show::Json
    } else if ctx.progress {
        Show::Bar
    } else {
        Show::Nothing
    };
    let ticker = Ticker::start(counters.clone(), show);
    let report = restore::restore_with(r.clone(), &snap, target, &options).await?;
    let deleted = if *delete {
        Some(
            restore::delete::delete_extra(&r, &snap, target, &options, &report, Some(&*counters))
                .await?,
        )
    } else {
        None
    };
    ticker.finish().await;
    let verified = if *verify {
        let written = restore::verify::written_files(&report);
        Some(restore::verify::verify(&r, &snap, target, options.path.as_deref(), &written).await?)
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
    if ctx.cli.json {
        print_json(&RestoreJson {
            actions: dry_run.then(|| {
                actions
                    .iter()
                    .map(|a| ActionJson {
                        action: a.action.as_str(),
                        kind: kind(a.kind),
                        path: a.path.to_string_lossy(),
                        size: a.size,
                    })
                    .collect()
            }),
            bad_copies: report
                .bad_copies
                .iter()
                .map(|b| BadCopyJson {
                    chunk: b.chunk.to_hex(),
                    node: b.node.0,
                    reason: &b.reason,
                })
                .collect(),
            bytes: report.bytes,
            bytes_restored: status.bytes_restored,
            bytes_skipped: status.bytes_skipped,
            bytes_verified: verified.as_ref().map(|v| v.bytes),
            deleted: (*dry_run && *delete)
                .then(|| gone.iter().map(|p| p.to_string_lossy()).collect()),
            dirs: report.dirs,
            dry_run: *dry_run,
            errors: report.errors.len() + delete_errors.len(),
            files: report.files,
            files_deleted: status.files_deleted,
            files_restored: status.files_restored,
            files_skipped: status.files_skipped,
            files_verified: verified.as_ref().map(|v| v.files),
            message_type: "summary",
            seconds_elapsed: status.seconds_elapsed,
            skipped: report.skipped,
            snapshot: id.to_hex(),
            specials: report.specials,
            symlinks: report.symlinks,
            total_bytes: status.total_bytes,
            total_files: status.total_files,
            unchanged: report.unchanged,
            verify_errors: verified.as_ref().map(|v| v.errors.len()),
            warnings: &report.warnings,
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::prints_as_a_value;

    #[test]
    fn restore_summaries_print_as_their_json_values_did() {
        let warnings = ["a warning".to_owned()];
        for (dry_run, delete, verified) in [
            (false, false, false),
            (true, false, false),
            (true, true, false),
            (false, true, true),
        ] {
            let summary = RestoreJson {
                actions: dry_run.then(|| {
                    vec![ActionJson {
                        action: "new",
                        kind: "file",
                        path: "/t/a.txt".into(),
                        size: 7,
                    }]
                }),
                bad_copies: vec![BadCopyJson {
                    chunk: "ab".repeat(32),
                    node: 2,
                    reason: "bad tag",
                }],
                bytes: 1,
                bytes_restored: 2,
                bytes_skipped: 3,
                bytes_verified: verified.then_some(4),
                deleted: (dry_run && delete).then(|| vec!["/t/old".into()]),
                dirs: 5,
                dry_run,
                errors: 6,
                files: 7,
                files_deleted: 8,
                files_restored: 9,
                files_skipped: 10,
                files_verified: verified.then_some(11),
                message_type: "summary",
                seconds_elapsed: 12,
                skipped: 13,
                snapshot: "cd".repeat(32),
                specials: 14,
                symlinks: 15,
                total_bytes: 16,
                total_files: 17,
                unchanged: 18,
                verify_errors: verified.then_some(0),
                warnings: &warnings,
            };
            assert!(prints_as_a_value(&summary));
        }
    }
}
