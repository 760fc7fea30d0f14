//! Per-stage throughput of the backup pipeline's CPU work, in bytes/s:
//! FastCDC chunking, keyed BLAKE3 chunk ids (beside raw BLAKE3 on the same
//! input), sealing (zstd at the blob level, 2, then XChaCha20-Poly1305) and opening, and
//! placement lookups.
//!
//! Input: `RINGVAULT_BENCH_FILE` (a real file, first 64 MiB) if set, else
//! 64 MiB of half pseudo-random, half repetitive text.

#![allow(missing_docs)] // criterion's macros make undocumented items

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringvault_common::chunker::{Chunker, ChunkerParams};
use ringvault_common::keys::{MasterKey, RepoKeys};
use ringvault_common::placement::{ClusterMap, NodeInfo};
use ringvault_common::{ChunkId, NodeId, seal};

fn input() -> Vec<u8> {
    if let Ok(path) = std::env::var("RINGVAULT_BENCH_FILE") {
        let mut data = std::fs::read(&path).expect("RINGVAULT_BENCH_FILE readable");
        data.truncate(64 << 20);
        return data;
    }
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut data: Vec<u8> = (0..32 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let text = b"fn main() { println!(\"hello, world\"); } // a line of source code\n";
    while data.len() < 64 << 20 {
        data.extend_from_slice(text);
    }
    data
}

fn stages(c: &mut Criterion) {
    let data = input();
    let chunker = Chunker::new(ChunkerParams::default()).expect("default params");
    let keys = RepoKeys::derive(&MasterKey::from_bytes([7; 32]));
    let chunks: Vec<&[u8]> = chunker.split(&data).collect();

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("fastcdc", |b| {
        b.iter(|| chunker.split(black_box(&data)).count())
    });
    g.bench_function("blake3-raw", |b| b.iter(|| blake3::hash(black_box(&data))));
    g.bench_function("chunk-ids-keyed-blake3", |b| {
        b.iter(|| {
            for c in &chunks {
                black_box(keys.chunk_id(c));
            }
        })
    });
    g.bench_function("seal", |b| {
        b.iter(|| {
            for c in &chunks {
                let _ = black_box(seal::seal(&keys, &ChunkId([0; 32]), c, [1; 24], true));
            }
        })
    });
    let sealed: Vec<(ChunkId, Vec<u8>)> = chunks
        .iter()
        .map(|c| {
            let id = keys.chunk_id(c);
            (id, seal::seal(&keys, &id, c, [1; 24], true).expect("fits"))
        })
        .collect();
    g.bench_function("open", |b| {
        b.iter(|| {
            sealed
                .iter()
                .filter(|(id, blob)| seal::open(&keys, id, blob).is_ok())
                .count()
        })
    });
    g.finish();

    let map = ClusterMap {
        epoch: 1,
        replicas: 3,
        write_quorum: 2,
        revoked: Vec::new(),
        nodes: (1..=20)
            .map(|i| NodeInfo {
                id: NodeId(i),
                address: String::new(),
                weight: 1,
                zone: String::new(),
            })
            .collect(),
    };
    let mut g = c.benchmark_group("placement");
    g.throughput(Throughput::Elements(1));
    g.bench_function("replicas-of-20-nodes", |b| {
        let mut i = 0u8;
        b.iter(|| {
            i = i.wrapping_add(1);
            map.replicas(&ChunkId([i; 32]))
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
