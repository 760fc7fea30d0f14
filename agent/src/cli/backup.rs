//! `init`, `backup` and `agent`: making the repository and snapshots, and
//! what a backup reports.

use ringvault_common::snapshot::Snapshot;
use serde_json::json;

use super::Cli;
use crate::backup;

pub(super) fn print_backup(cli: &Cli, report: &backup::BackupReport) {
    for (p, e) in &report.errors {
        eprintln!("warning: skipped {}: {e}", p.display());
    }
    let s = &report.snapshot.summary;
    if cli.json {
        println!(
            "{}",
            json!({
                "snapshot": report.id.to_hex(),
                "summary": summary_json(&report.snapshot),
                "wire_bytes": report.wire_bytes,
            })
        );
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

pub(super) fn summary_json(s: &Snapshot) -> serde_json::Value {
    let m = &s.summary;
    json!({
        "files": m.files, "dirs": m.dirs, "bytes": m.bytes, "bytes_read": m.bytes_read,
        "new_bytes": m.new_bytes, "sent_bytes": m.sent_bytes, "duration_ns": m.duration_ns,
        "errors": m.errors,
    })
}
