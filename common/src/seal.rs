//! Sealing a chunk into a blob, and opening it again.
//!
//! Blob format (all integers little endian):
//!
//! ```text
//! "RVB"  version:u8 = 1  flags:u8  nonce:[u8; 24]  ciphertext  tag:[u8; 16]
//! flags bit 0: plaintext was zstd-compressed before encryption
//! ```
//!
//! The cipher is XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha) keyed by
//! [`RepoKeys`]; the associated data is the chunk id followed by the 5 header
//! bytes, so a blob stored under another id, or with a flipped flag, fails to
//! open. After decryption the plaintext is hashed again and must match the id.

use std::cell::RefCell;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use crate::ChunkId;
use crate::keys::RepoKeys;

/// Bytes a blob adds to its (compressed) plaintext: header, nonce and tag.
pub const BLOB_OVERHEAD: usize = HEADER_LEN + 24 + 16;
/// Largest plaintext a blob may hold, bytes (16 MiB: FastCDC's maximum chunk).
pub const MAX_PLAINTEXT: usize = 16 * 1024 * 1024;
/// Largest blob, bytes.
pub const MAX_BLOB: usize = MAX_PLAINTEXT + MAX_PLAINTEXT / 64 + 1024;

const MAGIC: &[u8; 3] = b"RVB";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 5;
const FLAG_ZSTD: u8 = 1;
/// zstd level used for chunks. On the benchmark dataset (1.71 GB of unique
/// chunks, one thread, context reused) levels 1/2/3 store 567/544/527 MB in
/// 2.9/3.4/4.4 s: level 2 keeps the repository within 3% of restic's (which
/// uses about level 3) for a third of level 3's extra CPU time, and the
/// initial backup is CPU-bound on 2 cores (docs/benchmarks.md).
const ZSTD_LEVEL: i32 = 2;

thread_local! {
    // A zstd context per thread, reused: creating one per chunk costs more
    // than compressing a small file.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compresses `src` into `dst` with this thread's context; `None` when it
/// does not fit (it did not shrink) or zstd fails.
fn compress_into(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    COMPRESSOR.with_borrow_mut(|c| {
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        c.as_mut()?.compress_to_buffer(src, dst).ok()
    })
}

/// Errors from [`open`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Not a blob of a version this build reads.
    #[error("not a ringvault blob (bad header)")]
    Header,
    /// Decryption failed: the blob was altered, truncated or stored under
    /// another id.
    #[error("blob does not authenticate as chunk {0}")]
    Authentication(ChunkId),
    /// The zstd stream inside is damaged or too large.
    #[error("blob for chunk {0} does not decompress")]
    Decompress(ChunkId),
    /// Decrypted fine but the plaintext's hash is not the id.
    #[error("blob content does not hash to chunk {0}")]
    Mismatch(ChunkId),
    /// The plaintext is larger than [`MAX_PLAINTEXT`].
    #[error("chunk of {0} bytes exceeds the maximum blob size")]
    TooLarge(usize),
}

/// Seals `plaintext` (whose id is `id`) into a blob, compressing it with
/// zstd first when that makes it smaller. `nonce` must be 24 fresh random
/// bytes. `compress: false` skips zstd (for data known not to shrink).
///
/// # Errors
/// [`SealError::TooLarge`] for plaintext over [`MAX_PLAINTEXT`] bytes.
pub fn seal(
    keys: &RepoKeys,
    id: &ChunkId,
    plaintext: &[u8],
    nonce: [u8; 24],
    compress: bool,
) -> Result<Vec<u8>, SealError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(SealError::TooLarge(plaintext.len()));
    }
    let mut out = Vec::with_capacity(BLOB_OVERHEAD + plaintext.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&nonce);
    let body_start = out.len();
    let mut flags = 0;
    if compress {
        // zstd::bulk writes into spare capacity; give it room for the plaintext
        // and keep the result only if it is smaller.
        out.resize(body_start + plaintext.len(), 0);
        match compress_into(plaintext, &mut out[body_start..]) {
            Some(n) if n < plaintext.len() => {
                out.truncate(body_start + n);
                flags |= FLAG_ZSTD;
            }
            _ => {
                out.truncate(body_start);
                out.extend_from_slice(plaintext);
            }
        }
    } else {
        out.extend_from_slice(plaintext);
    }
    out[4] = flags;
    let aad = associated_data(id, &out[..HEADER_LEN]);
    let cipher = XChaCha20Poly1305::new(keys.seal_key().into());
    let (head, body) = out.split_at_mut(body_start);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&head[HEADER_LEN..]), &aad, body)
        .map_err(|_| SealError::TooLarge(plaintext.len()))?;
    out.extend_from_slice(&tag);
    // Compression may have left most of the plaintext-sized allocation
    // unused; blobs wait in upload queues, so give it back.
    if out.capacity() > out.len() + out.len() / 4 {
        out.shrink_to_fit();
    }
    Ok(out)
}

/// Opens a blob made by [`seal`] for chunk `id` and checks that its
/// plaintext hashes to `id`.
///
/// # Errors
/// [`SealError`] for a malformed, altered, misfiled or oversized blob.
pub fn open(keys: &RepoKeys, id: &ChunkId, blob: &[u8]) -> Result<Vec<u8>, SealError> {
    let plain = open_unchecked(keys, id, blob)?;
    if keys.chunk_id(&plain) != *id {
        return Err(SealError::Mismatch(*id));
    }
    Ok(plain)
}

/// Like [`open`] without the final hash check; for records (snapshots) whose
/// id is not the hash of their plaintext under the chunk key.
///
/// # Errors
/// As [`open`], minus [`SealError::Mismatch`].
pub fn open_unchecked(keys: &RepoKeys, id: &ChunkId, blob: &[u8]) -> Result<Vec<u8>, SealError> {
    if blob.len() < BLOB_OVERHEAD || &blob[..3] != MAGIC || blob[3] != VERSION {
        return Err(SealError::Header);
    }
    if blob.len() > MAX_BLOB {
        return Err(SealError::TooLarge(blob.len()));
    }
    let flags = blob[4];
    if flags & !FLAG_ZSTD != 0 {
        return Err(SealError::Header);
    }
    let aad = associated_data(id, &blob[..HEADER_LEN]);
    let nonce = XNonce::from_slice(&blob[HEADER_LEN..HEADER_LEN + 24]);
    let body_end = blob.len() - 16;
    let tag = Tag::from_slice(&blob[body_end..]);
    let mut body = blob[HEADER_LEN + 24..body_end].to_vec();
    let cipher = XChaCha20Poly1305::new(keys.seal_key().into());
    cipher
        .decrypt_in_place_detached(nonce, &aad, &mut body, tag)
        .map_err(|_| SealError::Authentication(*id))?;
    if flags & FLAG_ZSTD == 0 {
        return Ok(body);
    }
    decompress_bounded(&body).ok_or(SealError::Decompress(*id))
}

fn decompress_bounded(data: &[u8]) -> Option<Vec<u8>> {
    // The frame header states the content size; refuse anything over the
    // bound before allocating.
    let size = zstd::zstd_safe::get_frame_content_size(data).ok()??;
    if size > MAX_PLAINTEXT as u64 {
        return None;
    }
    let out = DECOMPRESSOR.with_borrow_mut(|d| {
        if d.is_none() {
            *d = zstd::bulk::Decompressor::new().ok();
        }
        d.as_mut()?.decompress(data, size as usize).ok()
    })?;
    (out.len() as u64 == size).then_some(out)
}

fn associated_data(id: &ChunkId, header: &[u8]) -> [u8; 32 + HEADER_LEN] {
    let mut aad = [0u8; 32 + HEADER_LEN];
    aad[..32].copy_from_slice(&id.0);
    aad[32..].copy_from_slice(header);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use proptest::prelude::*;

    fn keys() -> RepoKeys {
        RepoKeys::derive(&MasterKey::from_bytes([5; 32]))
    }

    #[test]
    fn round_trip_compressible_and_not() {
        let k = keys();
        for data in [
            vec![0u8; 100_000],
            (0..100_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ] {
            let id = k.chunk_id(&data);
            let blob = seal(&k, &id, &data, [1; 24], true).unwrap();
            assert_eq!(open(&k, &id, &blob).unwrap(), data);
        }
        let id = k.chunk_id(&[0u8; 100_000]);
        assert!(seal(&k, &id, &[0u8; 100_000], [1; 24], true).unwrap().len() < 1000);
    }

    #[test]
    fn tamper_is_detected() {
        let k = keys();
        let data = b"hello world".to_vec();
        let id = k.chunk_id(&data);
        let blob = seal(&k, &id, &data, [1; 24], false).unwrap();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x40;
            assert!(open(&k, &id, &bad).is_err(), "flip at {i}");
        }
        assert!(open(&k, &ChunkId([0; 32]), &blob).is_err());
        assert!(open(&k, &id, &blob[..blob.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let k = keys();
            let _ = open(&k, &ChunkId([0; 32]), &bytes);
            let mut framed = b"RVB\x01\x01".to_vec();
            framed.extend_from_slice(&bytes);
            prop_assert!(open(&k, &ChunkId([0; 32]), &framed).is_err());
        }
    }
}
