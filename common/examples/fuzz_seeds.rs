//! Writes seed inputs for the fuzz targets of `common/fuzz`: a few valid
//! encodings of each format, so the fuzzer starts from inputs that get past
//! the magic and the framing.
//!
//! ```text
//! cargo run -p ringvault-common --example fuzz_seeds -- common/fuzz/corpus
//! ```
//!
//! Each target's seeds go to `<dir>/<target>/seed-<name>`; existing files are
//! overwritten, others are left alone.

use std::path::{Path, PathBuf};

use ringvault_common::chunker::ChunkerParams;
use ringvault_common::fuzzing::MASTER_KEY;
use ringvault_common::keys::{KdfParams, KeyFile, MasterKey, RepoKeys, RepoSecret};
use ringvault_common::placement::{ClusterMap, NodeInfo};
use ringvault_common::seal;
use ringvault_common::snapshot::{Snapshot, Summary};
use ringvault_common::tree::{ChunkRef, Content, Entry, EntryKind, Tree, Xattr};
use ringvault_common::wire::{
    self, CommitMap, Digests, ErrorCode, GcFence, GetBlob, GetNodeStatus, GetRecord, Has, Hello,
    ListPartition, ListSnapshots, ListSnapshotsAndTombstones, NodeStatus, PeerState, PrepareMap,
    PruneMark, PruneSweep, PutBlobs, PutKey, PutSnapshot, Request, Response, StoreState,
    SweepReport, WireError,
};
use ringvault_common::{ChunkId, NodeId, RepoId, SnapshotId};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz_seeds <corpus dir>");
        std::process::exit(2);
    };
    let keys = RepoKeys::derive(&MasterKey::from_bytes(MASTER_KEY));
    let repo = RepoId::new("home-laptop")?;

    for (name, request, payload) in requests(&repo) {
        let mut frame = wire::encode_header(&request);
        frame.extend_from_slice(&payload);
        write(&dir, "wire_request", name, &frame)?;
    }
    for (name, response, payload) in responses(&repo) {
        let mut frame = wire::encode_response(9, &response);
        frame.extend_from_slice(&payload);
        write(&dir, "wire_response", name, &frame)?;
    }
    for (name, tree) in trees() {
        write(&dir, "tree", name, &tree.encode())?;
    }
    for (name, snapshot) in snapshots() {
        // The target takes the record's plaintext: open what seal made.
        let (id, blob) = snapshot.seal(&keys, [1; 24]);
        let plain = seal::open_unchecked(&keys, &ChunkId(id.0), &blob)?;
        write(&dir, "snapshot", name, &plain)?;
        write(&dir, "snapshot", &format!("{name}-sealed"), &blob)?;
    }
    blobs(&dir, &keys)?;
    key_files(&dir)?;
    Ok(())
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)
}

fn cluster_map() -> ClusterMap {
    ClusterMap {
        epoch: 4,
        replicas: 2,
        write_quorum: 2,
        revoked: vec!["ab".repeat(32)],
        nodes: (1..=3)
            .map(|i| NodeInfo {
                id: NodeId(i),
                address: format!("127.0.0.1:{}", 7000 + i),
                weight: i,
                zone: format!("z{}", i % 2),
            })
            .collect(),
    }
}

fn requests(repo: &RepoId) -> Vec<(&'static str, Request, Vec<u8>)> {
    let repo = || repo.clone();
    let ids = vec![ChunkId([1; 32]), ChunkId([2; 32])];
    vec![
        (
            "hello",
            Request::Hello(Hello {
                protocol: wire::PROTOCOL_VERSION,
                epoch: 4,
            }),
            vec![],
        ),
        (
            "has",
            Request::Has(Has {
                repo: repo(),
                ids: ids.clone(),
                local_only: true,
            }),
            vec![],
        ),
        (
            "put-blobs",
            Request::PutBlobs(PutBlobs {
                repo: repo(),
                blobs: vec![(ChunkId([1; 32]), 3), (ChunkId([2; 32]), 2)],
                local_only: false,
            }),
            b"abcde".to_vec(),
        ),
        (
            "get-blob",
            Request::GetBlob(GetBlob {
                repo: repo(),
                id: ChunkId([3; 32]),
            }),
            vec![],
        ),
        (
            "put-snapshot",
            Request::PutSnapshot(PutSnapshot {
                repo: repo(),
                id: SnapshotId([4; 32]),
                local_only: false,
                fence: vec![(
                    NodeId(1),
                    GcFence {
                        boot: 7,
                        counter: 2,
                        active: false,
                    },
                )],
            }),
            b"record".to_vec(),
        ),
        (
            "list-snapshots",
            Request::ListSnapshots(ListSnapshots { repo: repo() }),
            vec![],
        ),
        (
            "list-snapshots-and-tombstones",
            Request::ListSnapshotsAndTombstones(ListSnapshotsAndTombstones { repo: repo() }),
            vec![],
        ),
        (
            "put-key",
            Request::PutKey(PutKey {
                repo: repo(),
                id: [3; 32],
                local_only: true,
            }),
            b"RVK1key".to_vec(),
        ),
        (
            "digests",
            Request::Digests(Digests {
                partitions: wire::bitmap_of([0, 7, 65_535]),
                per_partition: true,
            }),
            vec![],
        ),
        (
            "list-partition",
            Request::ListPartition(ListPartition {
                partition: 513,
                after: Some((repo(), ChunkId([5; 32]))),
            }),
            vec![],
        ),
        ("node-status", Request::NodeStatus(GetNodeStatus), vec![]),
        (
            "prepare-map",
            Request::PrepareMap(PrepareMap {
                epoch: 5,
                digest: cluster_map().digest(),
                base: 4,
            }),
            vec![],
        ),
        (
            "commit-map",
            Request::CommitMap(CommitMap { map: cluster_map() }),
            vec![],
        ),
        (
            "get-record",
            Request::GetRecord(GetRecord {
                repo: repo(),
                kind: 2,
                key: [6; 32],
            }),
            vec![],
        ),
        (
            "prune-sweep",
            Request::PruneSweep(PruneSweep {
                repo: repo(),
                round: 77,
                grace_s: 86_400,
                trash_keep_s: 604_800,
            }),
            vec![],
        ),
        (
            "prune-mark",
            Request::PruneMark(PruneMark {
                repo: repo(),
                round: 77,
                ids,
            }),
            vec![],
        ),
    ]
}

fn responses(repo: &RepoId) -> Vec<(&'static str, Response, Vec<u8>)> {
    vec![
        (
            "hello",
            Response::Hello {
                protocol: wire::PROTOCOL_VERSION,
                node: NodeId(2),
                map: cluster_map(),
            },
            vec![],
        ),
        (
            "has",
            Response::Has {
                present: vec![true, false],
            },
            vec![],
        ),
        ("data", Response::Data, b"payload bytes".to_vec()),
        (
            "snapshots",
            Response::Snapshots {
                records: vec![(SnapshotId([1; 32]), 4), (SnapshotId([2; 32]), 1)],
            },
            b"abcde".to_vec(),
        ),
        (
            "error",
            Response::Error(WireError::new(ErrorCode::QuorumNotReached, "1 of 2 copies")),
            vec![],
        ),
        (
            "keys",
            Response::Keys {
                keys: vec![(repo.clone(), ChunkId([3; 32]))],
                more: true,
            },
            vec![],
        ),
        (
            "node-status",
            Response::NodeStatus(NodeStatus {
                node: NodeId(1),
                epoch: 4,
                blobs: 10,
                bytes: 4096,
                hints: 1,
                repair_backlog: 2,
                quarantined: 0,
                scrub_bytes: 1024,
                scrub_cycles: 3,
                peers: vec![(NodeId(2), PeerState::Up), (NodeId(3), PeerState::Out)],
                store: StoreState::Full,
                store_error: "no space left on device".into(),
                store_error_at: 1_700_000_000,
                free_bytes: 1 << 20,
                peers_silent_s: vec![(NodeId(3), 700)],
                out_after_s: 600,
            }),
            vec![],
        ),
        (
            "record-keys",
            Response::RecordKeys {
                keys: vec![(1, repo.clone(), [4; 32])],
                same: false,
            },
            vec![],
        ),
        (
            "swept",
            Response::Swept(SweepReport {
                partitions: 5,
                trashed: 2,
                trashed_bytes: 900,
                ..SweepReport::default()
            }),
            vec![],
        ),
        (
            "prepared",
            Response::Prepared {
                granted: true,
                highest: 5,
            },
            vec![],
        ),
        (
            "snapshots-and-tombstones",
            Response::SnapshotsAndTombstones {
                records: vec![(SnapshotId([1; 32]), 4), (SnapshotId([2; 32]), 1)],
                tombstones: 2,
            },
            [&b"abcde"[..], &[3; 32], &[4; 32]].concat(),
        ),
    ]
}

fn entry(name: &[u8], kind: EntryKind, content: Content) -> Entry {
    Entry {
        name: name.to_vec(),
        kind,
        mode: 0o100_644,
        uid: 1000,
        gid: 1000,
        mtime_ns: 1_700_000_000_000_000_000,
        ctime_ns: 1_700_000_000_000_000_001,
        size: 12,
        inode: 42,
        device: 2049,
        rdev: 0,
        xattrs: vec![],
        content,
        user: vec![],
        group: vec![],
        links: 1,
    }
}

fn trees() -> Vec<(&'static str, Tree)> {
    let mut file = entry(
        b"notes \xff.txt",
        EntryKind::File,
        Content::Chunks(vec![
            ChunkRef {
                id: ChunkId([1; 32]),
                len: Some(5),
            },
            ChunkRef {
                id: ChunkId([2; 32]),
                len: Some(7),
            },
        ]),
    );
    file.xattrs = vec![Xattr {
        name: b"user.mime".to_vec(),
        value: b"text/plain".to_vec(),
    }];
    let mut every_kind = Tree {
        entries: vec![
            file,
            entry(b"src", EntryKind::Dir, Content::Subtree(ChunkId([3; 32]))),
            entry(
                b"link",
                EntryKind::Symlink,
                Content::Symlink(b"../x".to_vec()),
            ),
            entry(b"fifo", EntryKind::Fifo, Content::None),
            entry(b"tty", EntryKind::CharDevice, Content::None),
            entry(b"sda", EntryKind::BlockDevice, Content::None),
            entry(b"sock", EntryKind::Socket, Content::None),
        ],
        more: vec![],
    };
    every_kind.sort();
    let head = Tree {
        entries: vec![entry(b"a", EntryKind::File, Content::Chunks(vec![]))],
        more: vec![ChunkId([4; 32]), ChunkId([5; 32])],
    };
    vec![
        ("empty", Tree::default()),
        ("every-kind", every_kind),
        ("head-with-parts", head),
    ]
}

fn snapshots() -> Vec<(&'static str, Snapshot)> {
    let first = Snapshot {
        time_ns: 1_700_000_000_000_000_000,
        host: "laptop".into(),
        agent: "agent-1".into(),
        paths: vec![serde_bytes::ByteBuf::from(b"/home/x".to_vec())],
        root: ChunkId([1; 32]),
        parent: None,
        tags: vec![],
        summary: Summary::default(),
    };
    let second = Snapshot {
        parent: Some(SnapshotId([2; 32])),
        tags: vec!["daily".into(), "pre-upgrade".into()],
        summary: Summary {
            files: 10,
            dirs: 2,
            bytes: 4096,
            bytes_read: 1024,
            new_bytes: 512,
            sent_bytes: 300,
            duration_ns: 1_000_000,
            errors: 1,
        },
        ..first.clone()
    };
    vec![("first", first), ("second", second)]
}

fn blobs(dir: &Path, keys: &RepoKeys) -> Result<(), Box<dyn std::error::Error>> {
    let noise: Vec<u8> = (0..2000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(dir, "blob", "empty", b"")?;
    write(dir, "blob", "text", b"hello world, hello world")?;
    write(dir, "blob", "zeros", &[0; 4000])?;
    write(dir, "blob", "noise", &noise)?;
    // Sealed under the id the target opens raw bytes with, so open_unchecked
    // succeeds on them.
    let fixed = ChunkId([1; 32]);
    write(
        dir,
        "blob",
        "sealed",
        &seal::seal(keys, &fixed, b"hello world", [2; 24], false)?,
    )?;
    write(
        dir,
        "blob",
        "sealed-zstd",
        &seal::seal(keys, &fixed, &[b'a'; 500], [2; 24], true)?,
    )?;
    // A zstd frame, which the target also seals as a compressed body.
    write(
        dir,
        "blob",
        "zstd-frame",
        &zstd::bulk::compress(b"hello hello hello hello hello", 2)?,
    )?;
    Ok(())
}

fn key_files(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let secret = RepoSecret {
        master_key: [9; 32],
        chunker: ChunkerParams::default(),
    };
    let cheap = KdfParams {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };
    let mut key_file = KeyFile::wrap(
        &secret,
        b"pw",
        cheap,
        [1; 16],
        [2; 24],
        ringvault_common::keys::KeyMeta {
            created_ns: 1,
            host: "h".into(),
            user: "u".into(),
        },
    )?;
    write(dir, "key_file", "cheap", &key_file.encode())?;
    key_file.kdf = KdfParams::default();
    write(dir, "key_file", "default-kdf", &key_file.encode())?;
    Ok(())
}
