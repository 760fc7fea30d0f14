//! End-to-end tests through fault-injection proxies: real chunk-server
//! processes, each behind a `FaultProxy`, and the real `ringvault` binary.

use std::path::Path;

use ringvault_tests::{TestCluster, tree_diff};
use serde_json::Value;

/// Backs up `src` and returns the command's JSON report.
fn backup(c: &TestCluster, src: &Path) -> Value {
    let out = c
        .ok(&["--json", "backup", src.to_str().expect("UTF-8 temp path")])
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

#[test]
fn backup_succeeds_with_one_replica_partitioned() {
    let c = TestCluster::start_with_proxies(3, 3, 2).unwrap();
    c.ok(&["init"]).unwrap();
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"first file").unwrap();
    std::fs::write(
        src.join("sub/b.bin"),
        (0..200_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();

    let first = backup(&c, &src);
    assert_eq!(first["summary"]["errors"], 0, "{first}");
    assert!(
        c.proxy(0).forwarded() > 0,
        "nothing reached node 0 through its proxy"
    );

    // Node 2 unreachable from the agent and from both other servers:
    // N = 3, W = 2 still has a quorum.
    c.proxy(2).cut(true);
    std::fs::write(src.join("c.txt"), b"written during the partition").unwrap();
    let second = backup(&c, &src);
    assert_eq!(second["summary"]["errors"], 0, "{second}");
    assert!(c.proxy(2).dropped() > 0, "the partition dropped nothing");

    // The latest snapshot holds c.txt: the second backup made it.
    let target = c.dir.path().join("restore");
    c.ok(&["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    assert_eq!(tree_diff(&src, &target.join("src")), None);
}
