//! Protocol tests on the in-process tier ([`ringvault_tests::inproc`]):
//! real servers and the agent's real client on loopback sockets in this
//! process, each node on a `MemStore` the test looks into directly.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringvault::client::ClientError;
use ringvault_common::ChunkId;
use ringvault_common::tls::Role;
use ringvault_tests::inproc::{InprocCluster, blobs, fast_settings, wait_until};

/// The client's request timeout: long enough for a coordinator that must
/// first find its peers down to answer, on a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A short timeout, where a test wants the client to move on from a
/// stopped node quickly.
const FAILOVER: Duration = Duration::from_secs(2);

/// The ids of `blobs`.
fn ids(blobs: &[(ChunkId, Bytes)]) -> Vec<ChunkId> {
    blobs.iter().map(|(id, _)| *id).collect()
}

/// Reads every blob back through `client` and compares its bytes.
async fn assert_reads(client: &ringvault::client::Cluster, blobs: &[(ChunkId, Bytes)]) {
    for (id, bytes) in blobs {
        let got: Bytes = client
            .get(id, |b| async move { Ok::<_, String>(b) })
            .await
            .unwrap_or_else(|e| panic!("reading {id}: {e}"));
        assert_eq!(&got, bytes, "blob {id} came back different");
    }
}

/// For each of `ids`, how many of the running nodes `on` hold it.
fn copies_on(c: &InprocCluster, on: &[usize], ids: &[ChunkId]) -> Vec<usize> {
    ids.iter()
        .map(|id| {
            on.iter()
                .filter(|&&i| c.held_on(i, std::slice::from_ref(id)) == 1)
                .count()
        })
        .collect()
}

/// A write is acknowledged with W copies and reaches N; reads fail over to
/// the next replica when the first is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reaches_n_copies_and_reads_fail_over_to_the_next_replica() {
    let mut c = InprocCluster::start(3, 3, 2, fast_settings())
        .await
        .unwrap();
    let client = c.client("a", Role::Writer, TIMEOUT).await.unwrap();
    let data = blobs(24, 64 << 10, 1);
    client.put(data.clone()).await.unwrap();
    let ids = ids(&data);
    wait_until(
        "N = 3 copies of every blob",
        Duration::from_secs(20),
        || c.copies(&ids).iter().all(|&n| n == 3).then_some(()),
    )
    .await
    .unwrap();
    // The first replica of the first blob goes away: reads of every blob
    // still return its bytes.
    let first = c.map().ranked(&ids[0])[0];
    let i = (0..3).find(|&i| c.id(i) == first).unwrap();
    c.stop_node(i).await.unwrap();
    assert_reads(&client, &data).await;
}

/// With two of three servers down and W = 2, a write fails naming the
/// quorum, and what was acknowledged before reads from the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_a_write_fails_and_acknowledged_blobs_still_read() {
    let mut c = InprocCluster::start(3, 3, 2, fast_settings())
        .await
        .unwrap();
    let client = c.client("a", Role::Writer, TIMEOUT).await.unwrap();
    let before = blobs(8, 32 << 10, 2);
    client.put(before.clone()).await.unwrap();
    let before_ids = ids(&before);
    wait_until(
        "N = 3 copies of every blob",
        Duration::from_secs(20),
        || c.copies(&before_ids).iter().all(|&n| n == 3).then_some(()),
    )
    .await
    .unwrap();
    c.stop_node(1).await.unwrap();
    c.stop_node(2).await.unwrap();
    let after = blobs(8, 32 << 10, 3);
    let err = client.put(after.clone()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::QuorumNotReached { needed: 2, .. })
            || err.to_string().contains("quorum"),
        "the error does not name the quorum: {err}"
    );
    assert_reads(&client, &before).await;
}

/// Hinted handoff and the out rule (Dynamo, DeCandia et al., SOSP 2007,
/// 4.6): a replica that is down is routed around, its writes land on the
/// next node as hints, and no copies are made while it is merely down;
/// once out, its partitions get new owners that repair fills to N; back,
/// it pulls its partitions again and the stand-ins drop their copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_replica_is_routed_around_with_hints_and_re_replicated_only_once_out() {
    // Long enough for the steps before the check below to fit in it on a
    // loaded machine (about 4 s unloaded: a 2 s timeout on the stopped
    // node, the hint, 1 s of watching).
    const OUT_AFTER: Duration = Duration::from_secs(15);
    let settings = ringvault_chunkserver::node::Settings {
        out_after: OUT_AFTER,
        ..fast_settings()
    };
    let mut c = InprocCluster::start(4, 3, 2, settings).await.unwrap();
    let client = c.client("a", Role::Writer, FAILOVER).await.unwrap();
    let first = blobs(24, 32 << 10, 4);
    client.put(first.clone()).await.unwrap();
    let first_ids = ids(&first);
    wait_until(
        "N = 3 copies of every blob",
        Duration::from_secs(20),
        || c.copies(&first_ids).iter().all(|&n| n == 3).then_some(()),
    )
    .await
    .unwrap();
    let held_by_stopped: Vec<ChunkId> = first_ids
        .iter()
        .copied()
        .filter(|id| c.held_on(2, std::slice::from_ref(id)) == 1)
        .collect();
    assert!(!held_by_stopped.is_empty(), "node 3 held none of 24 blobs");

    let running = [0, 1, 3];
    // Its last answer to a probe is at most a probe round (100 ms, plus the
    // 500 ms probe timeout) before this; out-after counts from there.
    let stopped = Instant::now();
    c.stop_node(2).await.unwrap();
    let short_at_stop = copies_on(&c, &running, &held_by_stopped);
    // Writes meant for node 3 land on a node further along the ring, which
    // keeps them as hints: a copy on a node that is not one of its owners.
    let second = blobs(24, 32 << 10, 5);
    client.put(second.clone()).await.unwrap();
    // The coordinator answers at W copies and finishes the other writes
    // in the background: wait for the hint to land.
    let owners = |id: &ChunkId| c.map().ranked(id)[..3].to_vec();
    let hinted = || {
        second
            .iter()
            .filter(|(id, _)| owners(id).contains(&c.id(2)))
            .filter(|(id, _)| {
                running
                    .iter()
                    .any(|&i| !owners(id).contains(&c.id(i)) && c.held_on(i, &[*id]) == 1)
            })
            .count()
    };
    wait_until(
        "a write meant for node 3 to land as a hint",
        Duration::from_secs(5),
        || (hinted() > 0).then_some(()),
    )
    .await
    .unwrap();
    // Down, not yet out: no copies of what node 3 held are made. (Compared
    // with the copies when it stopped, not with N - 1: a replica write that
    // timed out under load may have left a stand-in's copy beside the
    // owner's, which handoff drops later.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still_short = copies_on(&c, &running, &held_by_stopped);
    assert!(
        stopped.elapsed() < OUT_AFTER,
        "the test was too slow to see the short-failure window"
    );
    assert_eq!(
        still_short, short_at_stop,
        "copies were made before out-after"
    );

    // Out: its partitions get new owners, which repair fills to N.
    let all: Vec<ChunkId> = first_ids.iter().chain(&ids(&second)).copied().collect();
    wait_until(
        "N = 3 copies on the running nodes",
        Duration::from_secs(30),
        || {
            copies_on(&c, &running, &all)
                .iter()
                .all(|&n| n >= 3)
                .then_some(())
        },
    )
    .await
    .unwrap();
    assert!(
        stopped.elapsed() + Duration::from_secs(1) >= OUT_AFTER,
        "re-replicated {:?} after the stop, before out-after",
        stopped.elapsed()
    );

    // Back: it pulls its partitions; the stand-ins drop their copies.
    c.start_node(2).unwrap();
    wait_until(
        "hints handed back and exactly N copies everywhere",
        Duration::from_secs(30),
        || (c.total(|s| s.hints) == 0 && c.copies(&all).iter().all(|&n| n == 3)).then_some(()),
    )
    .await
    .unwrap();
    assert!(c.held_on(2, &all) > 0, "node 3 pulled nothing back");
    assert_reads(&client, &first).await;
    assert_reads(&client, &second).await;
}

/// A copy that rots is found by scrub, quarantined, and replaced by a good
/// copy from a co-replica; reads never return the rotten bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotten_copy_is_quarantined_by_scrub_and_repaired_from_a_co_replica() {
    let settings = ringvault_chunkserver::node::Settings {
        scrub_cycle: Duration::from_secs(1),
        scrub_bytes_per_s: 1 << 30,
        ..fast_settings()
    };
    let c = InprocCluster::start(3, 3, 2, settings).await.unwrap();
    let client = c.client("a", Role::Writer, TIMEOUT).await.unwrap();
    let data = blobs(8, 32 << 10, 6);
    client.put(data.clone()).await.unwrap();
    let all = ids(&data);
    wait_until(
        "N = 3 copies of every blob",
        Duration::from_secs(20),
        || c.copies(&all).iter().all(|&n| n == 3).then_some(()),
    )
    .await
    .unwrap();
    let repo = InprocCluster::repo();
    let rotten: Vec<ChunkId> = all[..3].to_vec();
    use ringvault_chunkserver::store::BlobStore;
    let store = c.store(0);
    for id in &rotten {
        assert!(store.corrupt(&repo, id), "node 1 did not hold {id}");
        assert!(store.get_blob(&repo, id).is_err(), "the rot went unseen");
    }
    // Nothing reads the blobs: only scrub can find the rot, and only repair
    // can put a good copy back (the store refuses to read a rotten one).
    wait_until(
        "scrub and repair to replace the rotten copies on node 1",
        Duration::from_secs(30),
        || {
            data[..3]
                .iter()
                .all(|(id, bytes)| store.get_blob(&repo, id).ok().flatten().as_ref() == Some(bytes))
                .then_some(())
        },
    )
    .await
    .unwrap();
    assert_reads(&client, &data).await;
}
