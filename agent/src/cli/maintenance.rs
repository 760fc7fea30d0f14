//! `forget`, `prune`, `stats` and `check`: retention, reclaiming space,
//! sizes and verification.

use serde_json::json;

use super::Cli;
use crate::check;
use crate::gc;

pub(super) fn print_check(cli: &Cli, r: &check::CheckReport) {
    if cli.json {
        println!("{}", check::output::json(r));
    } else {
        print!("{}", check::output::text(r, cli.verbose > 0));
    }
}

pub(super) fn print_forget(cli: &Cli, r: &gc::ForgetReport) {
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

pub(super) fn print_prune(cli: &Cli, p: &gc::PruneReport) {
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

pub(super) fn print_stats(cli: &Cli, st: &gc::Stats) {
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
