//! The end-to-end suite: real `ringvault-chunkserver` processes on
//! loopback, the real `ringvault` binary, real files. One test binary with
//! a module per area (STYLE.md). The fault tests in [`durability`] are
//! `#[ignore]`d; CI runs them with `-- --include-ignored`.

mod agent;
mod browse;
mod check_output;
mod durability;
mod e2e;
mod fidelity;
mod hostile_clients;
mod hostile_servers;
mod hostile_trees;
mod inproc;
mod mount;
mod passwords;
mod powerfail;
mod proxy;
mod restore_options;
mod restore_passes;
mod retention;
mod security;
mod sick_node;
mod store_health;
mod trust;
mod ui;

/// Server settings for fault tests: fast probes, short routing-around,
/// frequent repair rounds, scrub off unless a test turns it on, no
/// metrics endpoint.
pub const FAST: &str = "probe-interval-ms = 200\nroute-around-ms = 1500\nrepair-interval-ms = 300\nscrub-cycle-s = 0\nmetrics-listen = \"\"\n";

/// Small chunks so that test files span many of them.
pub const TEST_CHUNKS: &str = "16384,65536,262144";

/// A cluster of `nodes` servers with [`FAST`] settings, N = `replicas`,
/// W = `quorum`, behind fault proxies if `proxies`, and a repository made
/// with [`TEST_CHUNKS`].
pub fn fast_cluster(
    nodes: u32,
    replicas: u32,
    quorum: u32,
    proxies: bool,
) -> ringvault_tests::TestCluster {
    let c = ringvault_tests::TestCluster::with(ringvault_tests::ClusterOptions {
        nodes,
        replicas,
        quorum,
        proxies,
        server_config: FAST.into(),
    })
    .unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    c
}

/// `n` pseudo-random bytes from `seed` (xorshift: incompressible, and the
/// same for the same seed).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `files` files `f<i>.bin` of `size` random bytes each (seeds `seed`,
/// `seed + 1`, ...) under `root/name/`, replacing earlier ones; returns
/// that directory.
pub fn make_files(
    root: &std::path::Path,
    name: &str,
    files: usize,
    size: usize,
    seed: u64,
) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..files {
        std::fs::write(
            dir.join(format!("f{i}.bin")),
            random_bytes(size, seed + i as u64),
        )
        .unwrap();
    }
    dir
}
