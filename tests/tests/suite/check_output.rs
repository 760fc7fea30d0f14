//! `ringvault check` reads like a report (issue 14, point 4): with a
//! server down it summarises per server and per cause in a few lines,
//! says what the cluster will do next and when, lists chunks only with
//! `--verbose` or in `--json`, and the connection layer's warnings stay
//! out of a client command's output.

use std::time::Duration;

use crate::{fast_cluster, make_files};
use ringvault_tests::{TestCluster, wait_for};
use serde_json::Value;

/// Files of one chunk each (below the test chunker's 16 KiB minimum): one
/// tree blob and 200 chunks, so a per-chunk report would print hundreds of
/// lines.
const FILES: usize = 200;
/// The chunks of the snapshot: the files' and three trees (the source
/// directory's parent, `src`, `src/data`).
const CHUNKS: usize = FILES + 3;

/// A 3-server cluster (N=3, W=2) whose every chunk has its three copies.
fn healthy_cluster() -> TestCluster {
    let c = fast_cluster(3, 3, 2, false);
    let src = c.dir.path().join("src");
    make_files(&src, "data", FILES, 2048, 31);
    c.ok(&["backup", src.to_str().unwrap()]).unwrap();
    wait_for(
        "every chunk to have 3 copies",
        Duration::from_secs(60),
        || (c.check(false).ok()?.0 == 0).then_some(()),
    )
    .unwrap();
    c
}

#[test]
#[ignore = "fault test: run with --include-ignored"]
fn with_a_server_down_check_summarises_per_server_and_says_what_comes_next() {
    let mut c = healthy_cluster();
    c.kill(1);

    let out = c.run(&["check"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Exit 4: every chunk readable, some short of N copies.
    assert_eq!(out.status.code(), Some(4), "{text}\n{stderr}");
    println!("check with node-2 down:\n{text}");
    assert!(
        text.lines().count() <= 25,
        "{} lines for {FILES} short chunks:\n{text}",
        text.lines().count()
    );
    let node2 = text
        .lines()
        .find(|l| l.trim_start().starts_with("node-2 "))
        .unwrap_or_else(|| panic!("no line for node-2:\n{text}"));
    assert!(
        node2.contains("DOWN") && node2.contains("silent for"),
        "{node2}"
    );
    assert!(
        node2.contains(&format!("{} chunks lack its copy", CHUNKS)),
        "every chunk and tree lacks node-2's copy: {node2}"
    );
    for l in text.lines().filter(|l| l.trim_start().starts_with("node-")) {
        assert!(
            l.contains("node-2") || l.contains("up, store ok"),
            "a live server reported other than up and ok: {l}"
        );
    }
    for what in [
        "when it answers again, repair copies to it what it missed",
        "out-after-s = 600",
        "some are short of copies",
        "--verbose lists every chunk",
    ] {
        assert!(text.contains(what), "{what:?} missing from:\n{text}");
    }
    assert_eq!(
        chunk_ids(&text),
        0,
        "chunks listed without --verbose:\n{text}"
    );
    assert!(
        !stderr.contains("routing around") && !stderr.contains("unreachable"),
        "the connection layer's warnings reached a client command's output:\n{stderr}"
    );

    let out = c.run(&["check", "--verbose"]).unwrap();
    let verbose = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Asked for, the warnings are there: the filter hides them, nothing
    // else does.
    assert!(
        stderr.contains("unreachable; routing around it"),
        "--verbose did not show the connection warnings:\n{stderr}"
    );
    let listed = verbose
        .lines()
        .filter(|l| chunk_ids(l) == 1 && l.contains("2 of 3 copies, lacking on node-2"))
        .count();
    assert_eq!(
        listed, CHUNKS,
        "--verbose lists every short chunk:\n{verbose}"
    );

    let out = c.run(&["--json", "check"]).unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let servers = report["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3, "{report}");
    assert_eq!(servers[1]["state"], "down", "{report}");
    assert_eq!(servers[1]["missing_copies"], CHUNKS, "{report}");
    assert!(servers[1]["silent_s"].is_u64(), "{report}");
    assert_eq!(report["out_after_s"], 600, "{report}");
    let degraded = report["degraded"].as_array().unwrap();
    assert_eq!(degraded.len(), CHUNKS, "{report}");
    assert!(
        degraded
            .iter()
            .all(|d| d["missing_on"] == serde_json::json!([2])),
        "{report}"
    );

    c.restart(1).unwrap();
    wait_for(
        "repair to refill node-2 once it is back",
        Duration::from_secs(60),
        || (c.check(false).ok()?.0 == 0).then_some(()),
    )
    .unwrap();
    let text = c.ok(&["check"]).unwrap();
    assert!(text.contains("no errors were found"), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with("node-") && l.contains("up, store ok"))
            .count(),
        3,
        "{text}"
    );
}

/// How many chunk ids (64 hex digits) `text` names.
fn chunk_ids(text: &str) -> usize {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == 64)
        .count()
}
