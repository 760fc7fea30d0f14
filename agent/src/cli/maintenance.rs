//! `forget`, `prune`, `stats` and `check`: retention, reclaiming space,
//! sizes and verification.

use serde::Serialize;

use super::cluster::NodeErrorJson;
use super::ctx::Ctx;
use super::{Cli, EXIT_DEGRADED, EXIT_INCOMPLETE, KeepArgs, print_json};
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
            print_json(&RestoredJson { restored: n });
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

/// `prune --restore-trash --json`: blob copies moved back.
#[derive(Serialize)]
struct RestoredJson {
    restored: u64,
}

/// `forget --json`: each group's decisions, and whether they were applied.
#[derive(Serialize)]
struct ForgetJson<'a> {
    applied: bool,
    groups: Vec<GroupJson<'a>>,
}

/// A group (host, paths) in `forget --json`.
#[derive(Serialize)]
struct GroupJson<'a> {
    host: &'a str,
    keep: Vec<KeptJson<'a>>,
    paths: &'a [String],
    remove: Vec<String>,
}

/// A kept snapshot and the rules that kept it.
#[derive(Serialize)]
struct KeptJson<'a> {
    id: String,
    reasons: &'a [&'static str],
}

/// `prune --json`: the mark phase's counts, the servers that swept or did
/// not, and the sweep's totals.
#[derive(Serialize)]
struct PruneJson {
    cleared: u64,
    expired: u64,
    expired_bytes: u64,
    live_chunks: usize,
    noted: u64,
    partitions: u64,
    partitions_skipped: u64,
    skipped: Vec<NodeErrorJson>,
    snapshots: usize,
    swept: Vec<u32>,
    trashed: u64,
    trashed_bytes: u64,
}

/// `stats --json`: the repository's sizes and ratios, and each snapshot's.
#[derive(Serialize)]
struct StatsJson<'a> {
    chunks: usize,
    compression_ratio: f64,
    dedup_ratio: f64,
    logical_bytes: u64,
    replicas: u32,
    snapshots: Vec<SnapshotStatsJson<'a>>,
    stored_bytes: u64,
    stored_bytes_all_replicas: u64,
    unique_file_bytes: u64,
}

/// A snapshot's sizes in `stats --json`.
#[derive(Serialize)]
struct SnapshotStatsJson<'a> {
    chunks: usize,
    exclusive_bytes: u64,
    host: &'a str,
    id: String,
    logical_bytes: u64,
    stored_bytes: u64,
    time_ns: i64,
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
        let groups = r
            .groups
            .iter()
            .map(|g| GroupJson {
                host: &g.host,
                keep: g
                    .keep
                    .iter()
                    .map(|(id, why)| KeptJson {
                        id: id.to_hex(),
                        reasons: why,
                    })
                    .collect(),
                paths: &g.paths,
                remove: g.remove.iter().map(|id| id.to_hex()).collect(),
            })
            .collect();
        print_json(&ForgetJson {
            applied: r.applied,
            groups,
        });
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
        print_json(&PruneJson {
            cleared: s.cleared,
            expired: s.expired,
            expired_bytes: s.expired_bytes,
            live_chunks: p.live_chunks,
            noted: s.noted,
            partitions: s.partitions,
            partitions_skipped: s.skipped,
            skipped: p.skipped.iter().map(NodeErrorJson::from).collect(),
            snapshots: p.snapshots,
            swept: p.swept.iter().map(|n| n.0).collect(),
            trashed: s.trashed,
            trashed_bytes: s.trashed_bytes,
        });
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
        print_json(&StatsJson {
            chunks: st.chunks,
            compression_ratio: st.compression_ratio(),
            dedup_ratio: st.dedup_ratio(),
            logical_bytes: st.logical_bytes,
            replicas: st.replicas,
            snapshots: st
                .snapshots
                .iter()
                .map(|s| SnapshotStatsJson {
                    chunks: s.chunks,
                    exclusive_bytes: s.exclusive_bytes,
                    host: &s.host,
                    id: s.id.to_hex(),
                    logical_bytes: s.logical_bytes,
                    stored_bytes: s.stored_bytes,
                    time_ns: s.time_ns,
                })
                .collect(),
            stored_bytes: st.stored_bytes,
            stored_bytes_all_replicas: st.stored_bytes * u64::from(st.replicas),
            unique_file_bytes: st.unique_file_bytes,
        });
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
    use crate::cli::prints_as_a_value;

    #[test]
    fn maintenance_reports_print_as_their_json_values_did() {
        assert!(prints_as_a_value(&RestoredJson { restored: 3 }));
        let paths = ["/home".to_owned()];
        let reasons = ["last", "daily"];
        assert!(prints_as_a_value(&ForgetJson {
            applied: true,
            groups: vec![GroupJson {
                host: "h",
                keep: vec![KeptJson {
                    id: "ab".repeat(32),
                    reasons: &reasons,
                }],
                paths: &paths,
                remove: vec!["cd".repeat(32)],
            }],
        }));
        let skipped = [(ringvault_common::NodeId(2), "down".to_owned())];
        assert!(prints_as_a_value(&PruneJson {
            cleared: 1,
            expired: 2,
            expired_bytes: 3,
            live_chunks: 4,
            noted: 5,
            partitions: 6,
            partitions_skipped: 7,
            skipped: skipped.iter().map(NodeErrorJson::from).collect(),
            snapshots: 8,
            swept: vec![1, 3],
            trashed: 9,
            trashed_bytes: 10,
        }));
        // Ratios, including the 0/0 one a float cannot hold (null).
        for ratio in [1.5, 1.0, 0.018_867_924_528_301_886, f64::NAN] {
            let stats = StatsJson {
                chunks: 1,
                compression_ratio: ratio,
                dedup_ratio: ratio,
                logical_bytes: 2,
                replicas: 3,
                snapshots: vec![SnapshotStatsJson {
                    chunks: 4,
                    exclusive_bytes: 5,
                    host: "h",
                    id: "ab".repeat(32),
                    logical_bytes: 6,
                    stored_bytes: 7,
                    time_ns: -8,
                }],
                stored_bytes: 9,
                stored_bytes_all_replicas: 27,
                unique_file_bytes: 10,
            };
            assert!(prints_as_a_value(&stats));
        }
    }
}
