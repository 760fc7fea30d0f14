//! `snapshots`, `versions`, `diff`, `find`, `cat`, `ls`, `mount` and `ui`:
//! reading what the snapshots hold.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use ringvault_common::SnapshotId;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{Content, Entry, EntryKind};
use serde_json::json;

use super::backup::summary_json;
use super::ctx::Ctx;
use super::{Cli, format_time};
use crate::backup::display_name;
use crate::browse;

/// `snapshots`: lists them.
pub(super) async fn run_snapshots(ctx: &Ctx) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    let snaps = r.snapshots().await?;
    r.cluster.close().await;
    print_snapshots(&ctx.cli, &snaps);
    Ok(0)
}

/// `versions`: every distinct version of `path` across the snapshots.
pub(super) async fn run_versions(ctx: &Ctx, path: &str) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    let versions = browse::versions(&r, path).await?;
    r.cluster.close().await;
    print_versions(&ctx.cli, &versions);
    Ok(0)
}

/// `diff`: what changed between two snapshots, under `path` if given.
pub(super) async fn run_diff(
    ctx: &Ctx,
    from: &str,
    to: &str,
    path: Option<&str>,
) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    let (a, sa) = r.find_snapshot(from).await?;
    let (b, sb) = r.find_snapshot(to).await?;
    let report = browse::diff(&r, (a, sa.root), (b, sb.root), path.unwrap_or("")).await?;
    r.cluster.close().await;
    print_diff(&ctx.cli, &report);
    Ok(0)
}

/// `find`: paths matching `pattern` in the chosen snapshots (all when
/// none is named), modified after `newer` and before `older`; exit 1 when
/// none matches.
pub(super) async fn run_find(
    ctx: &Ctx,
    pattern: &str,
    snapshots: &[String],
    newer: Option<i64>,
    older: Option<i64>,
) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
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
    found.retain(|f| newer.is_none_or(|t| f.mtime_ns > t) && older.is_none_or(|t| f.mtime_ns < t));
    r.cluster.close().await;
    print_found(&ctx.cli, &found);
    Ok(if found.is_empty() { 1 } else { 0 })
}

/// `cat`: writes a file of a snapshot to standard output; the path comes
/// as its own argument or as SNAPSHOT:PATH.
pub(super) async fn run_cat(ctx: &Ctx, snapshot: &str, path: Option<&str>) -> anyhow::Result<u8> {
    let (snapshot, path) = match (snapshot.split_once(':'), path) {
        (_, Some(p)) => (snapshot, p),
        (Some((s, p)), None) => (s, p),
        (None, None) => anyhow::bail!("give a path: SNAPSHOT PATH or SNAPSHOT:PATH"),
    };
    let r = ctx.repo().await?;
    let (_, snap) = r.find_snapshot(snapshot).await?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
    browse::cat(&r, snap.root, path, &mut out).await?;
    r.cluster.close().await;
    Ok(0)
}

/// `ls`: a directory of a snapshot (its root without `path`), or the one
/// entry `path` names when it is not a directory.
pub(super) async fn run_ls(ctx: &Ctx, snapshot: &str, path: Option<&str>) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    let (id, snap) = r.find_snapshot(snapshot).await?;
    let entries = match path.map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
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
    print_ls(&ctx.cli, &id, &entries);
    Ok(0)
}

/// `mount`: serves the snapshots on `mountpoint` until a signal.
pub(super) async fn run_mount(
    ctx: &Ctx,
    mountpoint: &Path,
    allow_other: bool,
) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    let options = crate::mount::MountOptions { allow_other };
    let code = crate::mount::run(r.clone(), mountpoint, &options).await;
    r.cluster.close().await;
    code
}

/// `ui`: serves the browsing page on `listen` until a signal.
pub(super) async fn run_ui(ctx: &Ctx, listen: SocketAddr) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    crate::ui::run(r.clone(), listen).await?;
    r.cluster.close().await;
    Ok(0)
}

/// Prints the snapshots: a table, or a JSON array.
fn print_snapshots(cli: &Cli, snaps: &[(SnapshotId, Snapshot)]) {
    let paths = |s: &Snapshot| s.paths.iter().map(|p| display_name(p)).collect::<Vec<_>>();
    if cli.json {
        let list: Vec<_> = snaps
            .iter()
            .map(|(id, s)| {
                json!({
                    "id": id.to_hex(), "short_id": id.short(), "time": format_time(s.time_ns),
                    "host": s.host, "agent": s.agent, "paths": paths(s), "tags": s.tags,
                    "root": s.root.to_hex(), "parent": s.parent.map(|p| p.to_hex()),
                    "summary": summary_json(s),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return;
    }
    println!(
        "{:<8}  {:<20}  {:<12}  {:>8}  {:>10}  PATHS",
        "ID", "TIME", "HOST", "FILES", "SIZE"
    );
    for (id, s) in snaps {
        println!(
            "{:<8}  {:<20}  {:<12}  {:>8}  {:>10}  {}",
            id.short(),
            format_time(s.time_ns),
            s.host,
            s.summary.files,
            indicatif::HumanBytes(s.summary.bytes).to_string(),
            paths(s).join(", ")
        );
    }
    println!("{} snapshot(s)", snaps.len());
}

/// Prints the versions of a path.
fn print_versions(cli: &Cli, versions: &[browse::Version]) {
    if cli.json {
        println!("{}", serde_json::to_string(versions).unwrap_or_default());
        return;
    }
    println!(
        "{:<8}  {:<20}  {:<12}  {:<8}  {:>10}  {:<16}  SNAPSHOTS",
        "ID", "TIME", "HOST", "CHANGE", "SIZE", "DIGEST"
    );
    for v in versions {
        let change = match v.change {
            browse::Change::Added => "added",
            browse::Change::Removed => "removed",
            browse::Change::Content => "content",
            browse::Change::Metadata => "metadata",
        };
        println!(
            "{:<8}  {:<20}  {:<12}  {:<8}  {:>10}  {:<16}  {}",
            &v.snapshot[..8],
            format_time(v.time_ns),
            v.host,
            change,
            indicatif::HumanBytes(v.size).to_string(),
            v.digest,
            v.snapshots
        );
    }
}

/// Prints what changed between two snapshots.
fn print_diff(cli: &Cli, r: &browse::DiffReport) {
    if cli.json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    for c in &r.changes {
        let mark = match c.change {
            browse::Change::Added => "+",
            browse::Change::Removed => "-",
            browse::Change::Content => "M",
            browse::Change::Metadata => "U",
        };
        let slash = if c.kind == EntryKind::Dir { "/" } else { "" };
        println!("{mark}    {}{slash}", c.path);
    }
    println!(
        "{} change(s) between {} and {}",
        r.changes.len(),
        &r.from[..8],
        &r.to[..8]
    );
}

/// Prints what `find` found.
fn print_found(cli: &Cli, found: &[browse::Found]) {
    if cli.json {
        println!("{}", serde_json::to_string(found).unwrap_or_default());
        return;
    }
    for f in found {
        println!(
            "{}  {:<20}  {:>10}  {}",
            &f.snapshot[..8],
            format_time(f.mtime_ns),
            indicatif::HumanBytes(f.size).to_string(),
            f.path
        );
    }
}

/// The name `ls` gives an entry's kind.
fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Fifo => "fifo",
        EntryKind::CharDevice => "chardev",
        EntryKind::BlockDevice => "blockdev",
        EntryKind::Socket => "socket",
    }
}

/// Prints a directory listing of snapshot `id`.
fn print_ls(cli: &Cli, id: &SnapshotId, entries: &[Entry]) {
    if cli.json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "name": display_name(&e.name), "kind": kind_name(e.kind), "mode": e.mode & 0o7777,
                    "size": e.size, "mtime": format_time(e.mtime_ns), "uid": e.uid, "gid": e.gid,
                    "target": match &e.content { Content::Symlink(t) => Some(display_name(t)), _ => None },
                })
            })
            .collect();
        println!("{}", json!({ "snapshot": id.to_hex(), "entries": list }));
        return;
    }
    for e in entries {
        let suffix = match (&e.kind, &e.content) {
            (EntryKind::Dir, _) => "/".to_owned(),
            (_, Content::Symlink(t)) => format!(" -> {}", display_name(t)),
            _ => String::new(),
        };
        println!(
            "{:<8} {:o} {:>12} {}  {}{}",
            kind_name(e.kind),
            e.mode & 0o7777,
            e.size,
            format_time(e.mtime_ns),
            display_name(&e.name).escape_debug(),
            suffix
        );
    }
}
