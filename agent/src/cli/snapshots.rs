//! `snapshots`, `versions`, `diff`, `find`, `cat`, `ls`, `mount` and `ui`:
//! reading what the snapshots hold.

use ringvault_common::SnapshotId;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{Content, Entry, EntryKind};
use serde_json::json;

use super::backup::summary_json;
use super::{Cli, format_time};
use crate::backup::display_name;
use crate::browse;

pub(super) fn print_snapshots(cli: &Cli, snaps: &[(SnapshotId, Snapshot)]) {
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

pub(super) fn print_versions(cli: &Cli, versions: &[browse::Version]) {
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

pub(super) fn print_diff(cli: &Cli, r: &browse::DiffReport) {
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

pub(super) fn print_found(cli: &Cli, found: &[browse::Found]) {
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

pub(super) fn print_ls(cli: &Cli, id: &SnapshotId, entries: &[Entry]) {
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
