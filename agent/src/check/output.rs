//! How `ringvault check` reports: a summary per server and per cause, and
//! what the cluster will do next, in a few lines whatever the repository's
//! size; chunk ids only with `--verbose` (text) or in `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ringvault_common::NodeId;
use ringvault_common::wire::StoreState;
use serde_json::{Value, json};

use super::{CheckReport, ServerReport};

/// Examples of each kind of finding printed without `--verbose`.
const EXAMPLES: usize = 5;

/// The report as text for people; `verbose` lists every chunk.
pub fn text(r: &CheckReport, verbose: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} snapshots, {} trees, {} chunks checked ({})",
        r.snapshots,
        r.trees,
        r.chunks,
        if r.read_data {
            "every copy read and opened"
        } else {
            "copies counted, data not read"
        }
    );
    out.push_str("\nservers:\n");
    for s in &r.servers {
        let _ = writeln!(
            out,
            "  {:<8} {:<22} {}",
            s.node.to_string(),
            s.address,
            server_line(s, r.replicas)
        );
    }
    let _ = writeln!(
        out,
        "\nchunks: {} with {} copies, {} with fewer, {} lost, {} damaged copies",
        r.healthy,
        r.replicas,
        r.degraded.len(),
        r.lost.len(),
        r.damaged.len()
    );
    findings(&mut out, r, verbose);
    let next = next_steps(r);
    if !next.is_empty() {
        out.push_str("\nnext:\n");
        for line in next {
            let _ = writeln!(out, "  - {line}");
        }
    }
    out.push('\n');
    out.push_str(verdict(r));
    out.push('\n');
    if !verbose && (!r.degraded.is_empty() || !r.lost.is_empty() || !r.damaged.is_empty()) {
        out.push_str("(--verbose lists every chunk)\n");
    }
    out
}

/// One server's state: up or down, its store, the copies it lacks.
fn server_line(s: &ServerReport, replicas: u32) -> String {
    let mut line = match &s.status {
        Ok(st) => match st.store {
            StoreState::Ok => "up, store ok".to_owned(),
            other if st.store_error.is_empty() => format!("up, store {}", other.as_str()),
            other => format!("up, store {}: {}", other.as_str(), st.store_error),
        },
        Err(why) => {
            let mut l = "DOWN".to_owned();
            match s.silent_s {
                Some(secs) => {
                    let _ = write!(l, ", silent for {}", duration(secs));
                }
                None => l.push_str(", no server has a report of it"),
            }
            if s.out {
                l.push_str(", out");
            }
            let _ = write!(l, " ({why})");
            l
        }
    };
    if s.missing > 0 {
        let _ = write!(line, "; {} chunks lack its copy (of {replicas})", s.missing);
    }
    line
}

/// Lost chunks, damaged copies, unreadable trees and size mismatches, by
/// cause, with examples (all with `verbose`).
fn findings(out: &mut String, r: &CheckReport, verbose: bool) {
    let limit = if verbose { usize::MAX } else { EXAMPLES };
    if !r.lost.is_empty() {
        let with_down_owner = r
            .lost
            .iter()
            .filter(|id| {
                r.missing_on
                    .get(id)
                    .is_some_and(|nodes| nodes.iter().any(|n| down(r, *n)))
            })
            .count();
        let _ = writeln!(
            out,
            "\nlost: {} chunks have no good copy on a server that answered{}",
            r.lost.len(),
            if with_down_owner > 0 {
                format!(
                    "; {with_down_owner} of them belong to a server that is down and may come back with it"
                )
            } else {
                String::new()
            }
        );
        examples(out, r.lost.iter().map(|c| format!("chunk {c}")), limit);
    }
    if !r.damaged.is_empty() {
        let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (_, node, _) in &r.damaged {
            *per_node.entry(*node).or_default() += 1;
        }
        out.push_str("\ndamaged copies (quarantined where they are; repair replaces them from a good copy):\n");
        for (node, n) in per_node {
            let _ = writeln!(out, "  {node}: {n}");
        }
        examples(
            out,
            r.damaged
                .iter()
                .map(|(c, node, why)| format!("chunk {c} on {node}: {why}")),
            limit,
        );
    }
    if !r.unreadable_trees.is_empty() {
        let _ = writeln!(
            out,
            "\nunreadable trees: {} (what they hold was not checked)",
            r.unreadable_trees.len()
        );
        examples(
            out,
            r.unreadable_trees
                .iter()
                .map(|(t, why)| format!("tree {t}: {why}")),
            limit,
        );
    }
    if !r.size_mismatches.is_empty() {
        let _ = writeln!(
            out,
            "\nsize mismatches: {} (these files would not restore to their recorded size)",
            r.size_mismatches.len()
        );
        examples(
            out,
            r.size_mismatches
                .iter()
                .map(|(t, why)| format!("tree {t}: {why}")),
            limit,
        );
    }
    if verbose && !r.degraded.is_empty() {
        out.push_str("\nshort of copies:\n");
        for (c, n) in &r.degraded {
            let lacking = r.missing_on.get(c).map(|nodes| {
                nodes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let _ = writeln!(
                out,
                "  chunk {c}: {n} of {} copies{}",
                r.replicas,
                match lacking {
                    Some(l) if !l.is_empty() => format!(", lacking on {l}"),
                    _ => String::new(),
                }
            );
        }
    }
}

/// Writes up to `limit` of `items`, then how many more there are.
fn examples(out: &mut String, items: impl ExactSizeIterator<Item = String>, limit: usize) {
    let total = items.len();
    for item in items.take(limit) {
        let _ = writeln!(out, "  {item}");
    }
    if total > limit {
        let _ = writeln!(out, "  ... and {} more", total - limit);
    }
}

/// What the cluster will do about what the check found, per server.
fn next_steps(r: &CheckReport) -> Vec<String> {
    let mut next = Vec::new();
    let out_after = r.out_after_s();
    for s in &r.servers {
        if s.is_up() {
            if s.missing > 0 {
                next.push(format!(
                    "{}: repair is copying its {} missing copies to it now",
                    s.node, s.missing
                ));
            }
            continue;
        }
        let mut line = format!(
            "{}: when it answers again, repair copies to it what it missed",
            s.node
        );
        match (s.out, s.silent_s, out_after) {
            (true, _, _) => line.push_str(
                "; it is out (silent past out-after-s), so the other servers are copying its chunks elsewhere now",
            ),
            (false, Some(silent), Some(after)) => {
                let _ = write!(
                    line,
                    "; if it stays silent, the other servers copy its chunks elsewhere in about {} (out-after-s = {after})",
                    duration(after.saturating_sub(silent))
                );
            }
            _ => {}
        }
        next.push(line);
    }
    if !r.damaged.is_empty() {
        next.push("damaged copies are quarantined and replaced from a good copy by repair".into());
    }
    next
}

/// The last line: the verdict the exit code also gives.
fn verdict(r: &CheckReport) -> &'static str {
    if r.is_healthy() {
        "no errors were found"
    } else if r.has_loss() {
        "DATA IS MISSING OR WRONG: see above"
    } else if r.copies_ok() {
        "every chunk has its copies, but a server's store is failing: see above"
    } else {
        "every chunk is readable; some are short of copies: see above"
    }
}

/// Whether `node` did not answer the check.
fn down(r: &CheckReport, node: NodeId) -> bool {
    r.servers.iter().any(|s| s.node == node && !s.is_up())
}

/// Seconds as people read them: "45 s", "12 min", "3 h 5 min", "2 d 4 h".
fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The report as one JSON object: the counts, every finding with its chunk
/// ids, and every server's state.
pub fn json(r: &CheckReport) -> Value {
    let nodes = |c| {
        r.missing_on
            .get(c)
            .map(|ns: &Vec<NodeId>| ns.iter().map(|n| n.0).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    json!({
        "snapshots": r.snapshots, "trees": r.trees, "chunks": r.chunks,
        "replicas": r.replicas, "read_data": r.read_data, "healthy": r.healthy,
        "degraded": r.degraded.iter().map(|(c, n)| json!({"chunk": c.to_hex(), "copies": n, "missing_on": nodes(c)})).collect::<Vec<_>>(),
        "lost": r.lost.iter().map(|c| c.to_hex()).collect::<Vec<_>>(),
        "damaged": r.damaged.iter().map(|(c, n, why)| json!({"chunk": c.to_hex(), "node": n.0, "reason": why})).collect::<Vec<_>>(),
        "unreadable_trees": r.unreadable_trees.iter().map(|(c, why)| json!({"tree": c.to_hex(), "reason": why})).collect::<Vec<_>>(),
        "size_mismatches": r.size_mismatches.iter().map(|(c, why)| json!({"tree": c.to_hex(), "reason": why})).collect::<Vec<_>>(),
        "stores": r.stores.iter().map(|(n, st, why)| json!({"node": n.0, "store": st.as_str(), "error": why})).collect::<Vec<_>>(),
        "servers": r.servers.iter().map(server_json).collect::<Vec<_>>(),
        "out_after_s": r.out_after_s(),
        "ok": r.is_healthy(),
    })
}

/// One server in the JSON report.
fn server_json(s: &ServerReport) -> Value {
    match &s.status {
        Ok(st) => json!({
            "node": s.node.0, "address": s.address, "state": "up",
            "store": st.store.as_str(),
            "store_error": (!st.store_error.is_empty()).then_some(&st.store_error),
            "missing_copies": s.missing,
        }),
        Err(why) => json!({
            "node": s.node.0, "address": s.address,
            "state": if s.out { "out" } else { "down" },
            "error": why, "silent_s": s.silent_s,
            "missing_copies": s.missing,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(600), "10 min");
        assert_eq!(duration(3 * 3600 + 5 * 60), "3 h 5 min");
        assert_eq!(duration(2 * 86_400 + 4 * 3600), "2 d 4 h");
    }
}
