//! Entry points for fuzzing the decoders of untrusted bytes.
//!
//! Each function takes arbitrary bytes, runs one decoder on them and, when
//! the bytes decode, the methods that later run over the decoded value. They
//! are the single place both the cargo-fuzz targets in `common/fuzz/` and the
//! corpus replay test (`common/tests/fuzz_corpus.rs`) call, so a corpus
//! input means the same thing to both.
//!
//! None of them may panic on any input. The `assert!`s here check
//! round-trip properties (decode, encode, decode gives the same value; a
//! sealed value opens to itself): a failure is a real bug, not a fuzzing
//! artefact. Not part of the stable API.

use std::sync::OnceLock;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::keys::{KdfParams, KeyFile, MasterKey, RepoKeys};
use crate::placement::ClusterMap;
use crate::seal::{self, SealError};
use crate::snapshot::{Snapshot, SnapshotError};
use crate::tree::Tree;
use crate::wire::{self, CommitMap, Digests, Request, Response};
use crate::{ChunkId, SnapshotId};

/// The master key every target seals and opens with; a seed generator
/// sealing inputs for these targets derives its keys from it too.
pub const MASTER_KEY: [u8; 32] = [7; 32];

/// Fuzzes a request frame as a server receives it: [`wire::decode_frame`]
/// into a [`Request`], then [`Request::validate`] against the payload, the
/// accessors a server consults before dispatch, and what a server does with
/// the cluster map of a valid [`Request::CommitMap`]. A decoded request must
/// encode and decode back to itself. Must never panic.
pub fn wire_request(data: &[u8]) {
    let Ok((request, payload)) = wire::decode_frame::<Request>(data) else {
        return;
    };
    let valid = request.validate(payload).is_ok();
    let _ = (
        request.kind(),
        request.repo().map(|r| r.as_str()),
        request.is_internal(),
        request.is_map_change(),
    );
    if let Request::Digests(Digests { partitions, .. }) = &request {
        let _ = wire::bitmap_has(partitions, u16::MAX);
    }
    if let (true, Request::CommitMap(CommitMap { map })) = (valid, &request) {
        use_valid_map(map);
    }

    let mut frame = wire::encode_header(&request);
    frame.extend_from_slice(payload);
    let back = wire::decode_frame::<Request>(&frame);
    assert_eq!(back, Ok((request, payload)), "request round trip");
}

/// Fuzzes a response frame as an agent or a server receives it:
/// [`wire::decode_response`] (the epoch-prefixed header every response has)
/// and [`wire::decode_frame`] of a bare [`Response`], then what a receiver
/// does with the decoded value: the cluster map of a hello if it validates,
/// the peer states of a node status, the text of an error, the records and
/// tombstones of a snapshot listing. A decoded response must encode and
/// decode back to itself. Must never panic.
pub fn wire_response(data: &[u8]) {
    let _ = wire::decode_frame::<Response>(data);
    let Ok((epoch, response, payload)) = wire::decode_response(data) else {
        return;
    };
    match &response {
        Response::Hello { map, .. } if map.validate().is_ok() => use_valid_map(map),
        Response::NodeStatus(status) => {
            for (_, state) in &status.peers {
                let _ = state.as_str();
            }
            let _ = status.store.as_str();
        }
        Response::Error(error) => {
            let _ = error.to_string();
        }
        Response::SnapshotsAndTombstones {
            records,
            tombstones,
        } => {
            if let Ok(listing) = crate::listing::split(records, *tombstones, payload) {
                let shown = crate::listing::merge([listing]);
                assert!(shown.len() <= records.len(), "merge shows only listed ids");
            }
        }
        _ => {}
    }

    let mut frame = wire::encode_response(epoch, &response);
    frame.extend_from_slice(payload);
    let back = wire::decode_response(&frame);
    assert_eq!(back, Ok((epoch, response, payload)), "response round trip");
}

/// Fuzzes [`Tree::decode`] (a tree blob's plaintext, written by whoever
/// holds the repository key). When the bytes decode, it checks that the
/// tree encodes and decodes back to itself, that [`Tree::get`] finds every
/// entry, runs [`Tree::join`] with the tree standing in for each part its
/// `more` names, and checks that [`Tree::split`] then [`Tree::join`] gives
/// the directory back. Must never panic.
pub fn tree(data: &[u8]) {
    let Ok(tree) = Tree::decode(data) else {
        return;
    };
    assert_eq!(
        Tree::decode(&tree.encode()).as_ref(),
        Ok(&tree),
        "tree round trip"
    );
    for entry in &tree.entries {
        assert!(tree.get(&entry.name).is_some(), "get finds every entry");
    }

    let flat = Tree {
        entries: tree.entries.clone(),
        more: Vec::new(),
    };
    // A hostile head may name many parts; a few are enough to exercise join.
    if tree.more.len() <= 8 {
        let parts = vec![flat.clone(); tree.more.len()];
        let _ = Tree::join(tree.clone(), parts);
    }

    // Part sizes from the input, so the cut points vary between runs.
    let part_bytes = 1 + data.len() % 512;
    let mut parts = flat.clone().split(part_bytes);
    for part in &parts {
        assert_eq!(
            Tree::decode(&part.encode()).as_ref(),
            Ok(part),
            "part round trip"
        );
    }
    let mut head = parts.remove(0);
    // join checks only that there is one id per part.
    head.more = vec![ChunkId([0; 32]); parts.len()];
    assert_eq!(Tree::join(head, parts), Ok(flat), "split then join");
}

/// Fuzzes the snapshot record decoder. First [`Snapshot::open`] on the raw
/// bytes as a sealed record (random bytes never authenticate, so this
/// covers the blob header checks). Then the bytes are taken as the
/// *plaintext* of a record, sealed as [`Snapshot::seal`] does under the id
/// that plaintext has, and opened: this reaches the magic check and the
/// postcard decoding behind the AEAD. A sealed record must open (or fail
/// only as [`SnapshotError::Format`]), and a decoded snapshot must seal and
/// open back to itself. Must never panic.
pub fn snapshot(data: &[u8]) {
    let keys = fixed_keys();
    let _ = Snapshot::open(keys, &SnapshotId([0; 32]), data);

    let id = keys.snapshot_id(data);
    let Ok(blob) = seal::seal(keys, &ChunkId(id.0), data, [3; 24], true) else {
        return;
    };
    match Snapshot::open(keys, &id, &blob) {
        Ok(snapshot) => {
            let (id, blob) = snapshot.seal(keys, [4; 24]);
            let back = Snapshot::open(keys, &id, &blob);
            assert_eq!(back.ok().as_ref(), Some(&snapshot), "snapshot round trip");
        }
        Err(SnapshotError::Format(..)) => {}
        Err(e) => panic!("a record sealed with the repository keys fails to open: {e}"),
    }
}

/// Fuzzes the blob opener. [`seal::open`] and [`seal::open_unchecked`] on
/// the raw bytes under a fixed id; then the bytes sealed as a chunk's
/// plaintext, compressed and not, must open to the same bytes, and not
/// under another id or with one byte flipped. Last, the bytes are sealed as
/// an already-compressed body (zstd flag set) so that the bounded zstd
/// decoder behind the AEAD sees arbitrary frames. Must never panic.
pub fn blob(data: &[u8]) {
    let keys = fixed_keys();
    let fixed = ChunkId([1; 32]);
    let _ = seal::open(keys, &fixed, data);
    let _ = seal::open_unchecked(keys, &fixed, data);

    let id = keys.chunk_id(data);
    for compress in [false, true] {
        let blob = match seal::seal(keys, &id, data, [5; 24], compress) {
            Ok(blob) => blob,
            Err(e) => {
                assert!(data.len() > seal::MAX_PLAINTEXT, "seal failed: {e}");
                return;
            }
        };
        assert!(blob.len() <= seal::MAX_BLOB, "blob over MAX_BLOB");
        assert_eq!(
            seal::open(keys, &id, &blob).as_deref(),
            Ok(data),
            "blob round trip"
        );
        assert!(seal::open(keys, &fixed, &blob).is_err() || id == fixed);
        let mut flipped = blob.clone();
        let at = data.len() % flipped.len();
        flipped[at] ^= 0x01;
        assert!(
            seal::open(keys, &id, &flipped).is_err(),
            "flipped byte {at} opens"
        );
    }

    match seal::open_unchecked(keys, &fixed, &seal_as_compressed(keys, &fixed, data)) {
        Ok(plain) => assert!(plain.len() <= seal::MAX_PLAINTEXT),
        Err(SealError::Decompress(_) | SealError::TooLarge(_)) => {}
        Err(e) => panic!("a blob sealed with the repository keys fails to open: {e}"),
    }
}

/// Fuzzes [`KeyFile::decode`], the wrapped repository key a server hands to
/// any agent of the repository. A decoded key file must encode and decode
/// back to itself; when its Argon2 parameters are cheap, unwrapping it with
/// a wrong password runs the parameter checks and must fail. Must never
/// panic.
pub fn key_file(data: &[u8]) {
    let Ok(key_file) = KeyFile::decode(data) else {
        return;
    };
    let back = KeyFile::decode(&key_file.encode());
    assert_eq!(back.ok().as_ref(), Some(&key_file), "key file round trip");

    let KdfParams {
        memory_kib,
        iterations,
        parallelism,
    } = key_file.kdf;
    if memory_kib <= 64 && iterations <= 2 && parallelism <= 4 {
        assert!(key_file.unwrap_secret(b"not the password").is_err());
    }
}

/// What receivers do with a cluster map that passed [`ClusterMap::validate`]:
/// digest it (map changes compare digests) and place chunks on it.
fn use_valid_map(map: &ClusterMap) {
    let _ = map.digest();
    for id in [ChunkId([0; 32]), ChunkId([0xff; 32])] {
        let _ = map.replicas(&id);
        let _ = map.ranked(&id);
    }
}

/// The repository keys every target seals and opens with, derived once from
/// a fixed master key.
fn fixed_keys() -> &'static RepoKeys {
    static KEYS: OnceLock<RepoKeys> = OnceLock::new();
    KEYS.get_or_init(|| RepoKeys::derive(&MasterKey::from_bytes(MASTER_KEY)))
}

/// A blob in [`seal`]'s format whose body is `body` as given with the zstd
/// flag set, as if it were a compressed plaintext: no real writer makes one,
/// but it lets the fuzzer reach the decompressor, which only ever sees
/// authenticated bytes.
fn seal_as_compressed(keys: &RepoKeys, id: &ChunkId, body: &[u8]) -> Vec<u8> {
    let nonce = [6u8; 24];
    let header = *b"RVB\x01\x01";
    let mut aad = id.0.to_vec();
    aad.extend_from_slice(&header);
    let mut sealed = body.to_vec();
    let cipher = XChaCha20Poly1305::new(keys.seal_key().into());
    let mut blob = header.to_vec();
    blob.extend_from_slice(&nonce);
    // Encryption fails only past the cipher's 256 GiB message limit.
    if let Ok(tag) = cipher.encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut sealed)
    {
        blob.extend_from_slice(&sealed);
        blob.extend_from_slice(&tag);
    }
    blob
}
