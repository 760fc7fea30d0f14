//! `restore`: a snapshot, or part of it, back into a directory, with the
//! passes after it (`--delete`, `--verify`), and what it reports.

use std::path::Path;
use std::sync::Arc;

use ringvault_common::tree::EntryKind;
use serde_json::json;

use super::EXIT_INCOMPLETE;
use super::args::RestoreArgs;
use super::ctx::Ctx;
use crate::restore;
use crate::restore::progress::{RestoreProgress, Show, Ticker};

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
