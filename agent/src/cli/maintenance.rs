//! `forget`, `prune`, `stats` and `check`: retention, reclaiming space,
//! sizes and verification.

use serde_json::json;

use super::ctx::Ctx;
use super::{Cli, EXIT_DEGRADED, EXIT_INCOMPLETE, KeepArgs};
use crate::check;
use crate::gc;

/// `forget`: removes snapshots by the flags' policy, or the config's
/// without flags; with `prune` (and not `dry_run`), prunes afterwards.
pub(super) async fn run_forget(
    ctx: &Ctx,
    keep: &KeepArgs,
    host: Option<&str>,
    dry_run: bool,
    prune: bool,
) -> anyhow::Result<u8> {
    let loaded = ctx.config()?;
    let policy = keep
        .policy()
        .unwrap_or_else(|| loaded.config.retention.clone());
    if policy.is_empty() {
        anyhow::bail!(
            "no retention policy: give --keep-last, --keep-daily, ... or set [retention] in {}",
            loaded.path.display()
        );
    }
    let r = ctx.repo().await?;
    let report = gc::forget(&r, &policy, host, dry_run).await?;
    print_forget(&ctx.cli, &report);
    if prune && !dry_run {
        let p = gc::prune(&r, loaded.config.prune_grace_s, loaded.config.trash_keep_s).await?;
        print_prune(&ctx.cli, &p);
    }
    r.cluster.close().await;
    Ok(0)
}

/// `prune`: a mark-and-sweep round ([`EXIT_INCOMPLETE`] when a server did
/// not take part), or with `restore_trash`, every trashed blob moved back.
pub(super) async fn run_prune(ctx: &Ctx, restore_trash: bool) -> anyhow::Result<u8> {
    let loaded = ctx.config()?;
    let r = ctx.repo().await?;
    if restore_trash {
        let n = gc::restore_trash(&r).await?;
        r.cluster.close().await;
        if ctx.cli.json {
            println!("{}", json!({ "restored": n }));
        } else {
            println!("moved {n} blob copies back from the trash");
        }
        return Ok(0);
    }
    let p = gc::prune(&r, loaded.config.prune_grace_s, loaded.config.trash_keep_s).await?;
    r.cluster.close().await;
    print_prune(&ctx.cli, &p);
    Ok(if p.skipped.is_empty() {
        0
    } else {
        EXIT_INCOMPLETE
    })
}

/// `stats`: sizes of the repository and of each snapshot.
pub(super) async fn run_stats(ctx: &Ctx) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    let st = gc::stats(&r).await?;
    r.cluster.close().await;
    print_stats(&ctx.cli, &st);
    Ok(0)
}

/// `check`: exit 1 when some chunk has no healthy copy,
/// [`EXIT_DEGRADED`] when some has fewer than N.
pub(super) async fn run_check(ctx: &Ctx, read_data: bool) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    let report = check::check(&r, read_data).await?;
    r.cluster.close().await;
    print_check(&ctx.cli, &report);
    Ok(if report.has_loss() {
        1
    } else if report.is_healthy() {
        0
    } else {
        EXIT_DEGRADED
    })
}

/// Prints the check's report (`check::output`).
fn print_check(cli: &Cli, r: &check::CheckReport) {
    if cli.json {
        println!("{}", check::output::json(r));
    } else {
        print!("{}", check::output::text(r, cli.verbose > 0));
    }
}

/// Prints what `forget` kept and removed, per group.
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

/// Prints what a prune round did.
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

/// Prints the sizes.
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
