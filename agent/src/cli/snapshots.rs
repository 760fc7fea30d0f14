//! `snapshots`, `versions`, `diff`, `find`, `cat`, `ls`, `mount` and `ui`:
//! reading what the snapshots hold.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use ringvault_common::SnapshotId;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{Content, Entry, EntryKind};
use serde::Serialize;

use super::backup::{SummaryJson, summary_json};
use super::ctx::Ctx;
use super::{Cli, format_time, print_json};
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

/// `mount`: serves the snapshots on `mountpoint` until a signal; 0 after a
/// clean unmount ([`crate::error::EXIT_FUSE_UNAVAILABLE`] when this
/// machine cannot mount, from the error).
pub(super) async fn run_mount(
    ctx: &Ctx,
    mountpoint: &Path,
    allow_other: bool,
) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    let options = crate::mount::MountOptions { allow_other };
    let mounted = crate::mount::mount(r.clone(), mountpoint, &options).await;
    r.cluster.close().await;
    mounted.map(|()| 0)
}

/// `ui`: serves the browsing page on `listen` until a signal.
pub(super) async fn run_ui(ctx: &Ctx, listen: SocketAddr) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    crate::ui::run(r.clone(), listen).await?;
    r.cluster.close().await;
    Ok(0)
}

/// A snapshot in `snapshots --json`.
#[derive(Serialize)]
struct SnapshotJson<'a> {
    agent: &'a str,
    host: &'a str,
    id: String,
    parent: Option<String>,
    paths: Vec<String>,
    root: String,
    short_id: String,
    summary: SummaryJson,
    tags: &'a [String],
    time: String,
}

/// `ls --json`: the snapshot and the entries listed.
#[derive(Serialize)]
struct LsJson {
    entries: Vec<EntryJson>,
    snapshot: String,
}

/// An entry in `ls --json`; `target` is a symlink's, else null.
#[derive(Serialize)]
struct EntryJson {
    gid: u32,
    kind: &'static str,
    mode: u32,
    mtime: String,
    name: String,
    size: u64,
    target: Option<String>,
    uid: u32,
}

/// Prints the snapshots: a table, or a JSON array.
fn print_snapshots(cli: &Cli, snaps: &[(SnapshotId, Snapshot)]) {
    let paths = |s: &Snapshot| s.paths.iter().map(|p| display_name(p)).collect::<Vec<_>>();
    if cli.json {
        let list: Vec<_> = snaps
            .iter()
            .map(|(id, s)| SnapshotJson {
                agent: &s.agent,
                host: &s.host,
                id: id.to_hex(),
                parent: s.parent.map(|p| p.to_hex()),
                paths: paths(s),
                root: s.root.to_hex(),
                short_id: id.short(),
                summary: summary_json(s),
                tags: &s.tags,
                time: format_time(s.time_ns),
            })
            .collect();
        print_json(&list);
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
        let entries = entries
            .iter()
            .map(|e| EntryJson {
                gid: e.gid,
                kind: kind_name(e.kind),
                mode: e.mode & 0o7777,
                mtime: format_time(e.mtime_ns),
                name: display_name(&e.name),
                size: e.size,
                target: match &e.content {
                    Content::Symlink(t) => Some(display_name(t)),
                    _ => None,
                },
                uid: e.uid,
            })
            .collect();
        print_json(&LsJson {
            entries,
            snapshot: id.to_hex(),
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::prints_as_a_value;

    #[test]
    fn snapshot_reports_print_as_their_json_values_did() {
        let tags = ["t".to_owned()];
        let snapshot = Snapshot {
            time_ns: 0,
            host: "host".into(),
            agent: "agent-1".into(),
            paths: vec![],
            root: ringvault_common::ChunkId([1; 32]),
            parent: None,
            tags: tags.to_vec(),
            summary: ringvault_common::snapshot::Summary::default(),
        };
        for parent in [None, Some("cd".repeat(32))] {
            let s = SnapshotJson {
                agent: &snapshot.agent,
                host: &snapshot.host,
                id: "ab".repeat(32),
                parent,
                paths: vec!["/home".into()],
                root: snapshot.root.to_hex(),
                short_id: "abababab".into(),
                summary: summary_json(&snapshot),
                tags: &tags,
                time: format_time(snapshot.time_ns),
            };
            assert!(prints_as_a_value(&[s]));
        }
        for target in [None, Some("a.txt".to_owned())] {
            let ls = LsJson {
                entries: vec![EntryJson {
                    gid: 1,
                    kind: "symlink",
                    mode: 0o777,
                    mtime: format_time(0),
                    name: "link".into(),
                    size: 0,
                    target,
                    uid: 2,
                }],
                snapshot: "ab".repeat(32),
            };
            assert!(prints_as_a_value(&ls));
        }
    }
}
