//! The repository master key, the keys derived from it, and the password
//! wrapping that stores it on the cluster.
//!
//! The master key is 32 random bytes made once at `init`. Two keys are
//! derived from it with `blake3::derive_key` (the BLAKE3 paper's KDF mode):
//! one keys chunk ids, one seals blobs and snapshot records. The master key
//! and the repository settings are stored on the cluster inside a
//! [`KeyFile`]: XChaCha20-Poly1305 under a key stretched from the user's
//! password by Argon2id (RFC 9106).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::chunker::ChunkerParams;
use crate::{ChunkId, SnapshotId};

/// Errors from making or opening a [`KeyFile`].
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The password does not open this key file (or the file was altered).
    #[error("wrong password (or a damaged key record)")]
    WrongPassword,
    /// The bytes are not a key file of a version this build reads.
    #[error("not a ringvault key record: {0}")]
    Format(String),
    /// Argon2 refused its parameters.
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// The repository master key: 32 secret bytes, wiped from memory on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// Wraps 32 random bytes (the caller draws them from the OS).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The working keys of an open repository, derived from its [`MasterKey`].
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RepoKeys {
    chunk_id_key: [u8; 32],
    seal_key: [u8; 32],
    repository_id: [u8; 16],
}

impl std::fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoKeys(..)")
    }
}

impl RepoKeys {
    /// Derives the working keys. The context strings are part of the format.
    pub fn derive(master: &MasterKey) -> Self {
        let id = blake3::derive_key("ringvault 2026-11 repository id", &master.0);
        let mut repository_id = [0u8; 16];
        repository_id.copy_from_slice(&id[..16]);
        Self {
            chunk_id_key: blake3::derive_key("ringvault 2026-11 chunk id", &master.0),
            seal_key: blake3::derive_key("ringvault 2026-11 blob seal", &master.0),
            repository_id,
        }
    }

    /// A public name for the repository (32 hex digits), the same for every
    /// password: it tells two repositories apart without revealing a key.
    pub fn repository_id(&self) -> String {
        hex::encode(self.repository_id)
    }

    /// The key for chunk ids: BLAKE3 keyed hashing of plaintext.
    pub fn chunk_id_key(&self) -> &[u8; 32] {
        &self.chunk_id_key
    }

    /// The id of a chunk (or tree) with this plaintext.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.chunk_id_key, plaintext).as_bytes())
    }

    /// The id of a snapshot record with this encoding.
    pub fn snapshot_id(&self, encoded: &[u8]) -> SnapshotId {
        let mut h = blake3::Hasher::new_keyed(&self.chunk_id_key);
        h.update(b"snapshot\0");
        h.update(encoded);
        SnapshotId(*h.finalize().as_bytes())
    }

    /// The XChaCha20-Poly1305 key for blobs and snapshot records.
    pub(crate) fn seal_key(&self) -> &[u8; 32] {
        &self.seal_key
    }
}

/// Argon2id cost parameters, stored in each key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: RFC 9106's second recommended option.
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// The largest memory a key file may ask for (4 GiB), so a hostile
    /// record cannot make us allocate without bound. Key files asking for
    /// more than 64 passes or 64 lanes are refused too.
    pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
}

/// What a key file protects: the master key and the repository's fixed
/// settings.
#[derive(Clone, Serialize, Deserialize)]
pub struct RepoSecret {
    /// The master key bytes.
    pub master_key: [u8; 32],
    /// Chunker settings, fixed at `init`.
    pub chunker: ChunkerParams,
}

impl Drop for RepoSecret {
    fn drop(&mut self) {
        self.master_key.zeroize();
    }
}

/// Who made a key and when: shown by `ringvault key list`, as restic shows
/// a key's user, host and creation time. Stored in the clear but bound to
/// the key by the AEAD's associated data, so it cannot be altered unseen.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyMeta {
    /// Creation time, ns since the Unix epoch.
    pub created_ns: i64,
    /// Host name of the machine that made it.
    pub host: String,
    /// User name that made it.
    pub user: String,
}

/// A password-wrapped [`RepoSecret`], as stored on the cluster and cached by
/// the agent. A repository has one per password, all wrapping the same
/// master key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyFile {
    /// Argon2id parameters used for this password.
    pub kdf: KdfParams,
    /// Argon2 salt, 16 random bytes.
    pub salt: [u8; 16],
    /// XChaCha20 nonce, 24 random bytes.
    pub nonce: [u8; 24],
    /// Encrypted postcard encoding of the [`RepoSecret`], with its tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// Who made it and when (empty for keys made before version 2).
    pub meta: KeyMeta,
}

/// Version 1 of the encoding: no [`KeyMeta`].
#[derive(Deserialize)]
struct KeyFileV1 {
    kdf: KdfParams,
    salt: [u8; 16],
    nonce: [u8; 24],
    #[serde(with = "serde_bytes")]
    ciphertext: Vec<u8>,
}

const KEY_MAGIC_V1: &[u8; 4] = b"RVK1";
const KEY_AAD_V1: &[u8] = b"ringvault key file v1";
const KEY_MAGIC: &[u8; 4] = b"RVK2";
const KEY_AAD: &[u8] = b"ringvault key file v2";

impl KeyFile {
    /// Wraps `secret` under `password`. `salt` and `nonce` must be fresh
    /// random bytes.
    ///
    /// # Errors
    /// [`KeyError::Kdf`] if Argon2 rejects `kdf`.
    pub fn wrap(
        secret: &RepoSecret,
        password: &[u8],
        kdf: KdfParams,
        salt: [u8; 16],
        nonce: [u8; 24],
        meta: KeyMeta,
    ) -> Result<Self, KeyError> {
        let mut wrapping = stretch(password, &kdf, &salt)?;
        let cipher = XChaCha20Poly1305::new((&wrapping).into());
        wrapping.zeroize();
        let mut plain = postcard::to_stdvec(secret).map_err(|e| KeyError::Format(e.to_string()))?;
        let aad = aad(&meta);
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Format("encryption failed".into()))?;
        plain.zeroize();
        Ok(Self {
            kdf,
            salt,
            nonce,
            ciphertext,
            meta,
        })
    }

    /// Opens the key file with `password`.
    ///
    /// # Errors
    /// [`KeyError::WrongPassword`] when the password (or the record) is wrong,
    /// [`KeyError::Kdf`] for parameters out of bounds.
    pub fn unwrap_secret(&self, password: &[u8]) -> Result<RepoSecret, KeyError> {
        if self.kdf.memory_kib > KdfParams::MAX_MEMORY_KIB
            || self.kdf.iterations > 64
            || self.kdf.parallelism > 64
        {
            return Err(KeyError::Kdf("key file asks for too much work".into()));
        }
        let mut wrapping = stretch(password, &self.kdf, &self.salt)?;
        let cipher = XChaCha20Poly1305::new((&wrapping).into());
        wrapping.zeroize();
        let aad = aad(&self.meta);
        let mut plain = cipher
            .decrypt(
                XNonce::from_slice(&self.nonce),
                Payload {
                    msg: &self.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::WrongPassword)?;
        let secret: Result<RepoSecret, _> = postcard::from_bytes(&plain);
        plain.zeroize();
        let secret = secret.map_err(|e| KeyError::Format(e.to_string()))?;
        secret
            .chunker
            .validate()
            .map_err(|e| KeyError::Format(e.to_string()))?;
        Ok(secret)
    }

    /// Encodes as `"RVK2"` + postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = KEY_MAGIC.to_vec();
        // Invariant: postcard serialization of plain data into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).expect("postcard to vec"));
        out
    }

    /// Decodes bytes made by [`KeyFile::encode`].
    ///
    /// # Errors
    /// [`KeyError::Format`] for anything else.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() > 4096 {
            return Err(KeyError::Format("key record too large".into()));
        }
        let format = |e: postcard::Error| KeyError::Format(e.to_string());
        if let Some(body) = bytes.strip_prefix(KEY_MAGIC_V1.as_slice()) {
            let v1: KeyFileV1 = postcard::from_bytes(body).map_err(format)?;
            return Ok(Self {
                kdf: v1.kdf,
                salt: v1.salt,
                nonce: v1.nonce,
                ciphertext: v1.ciphertext,
                meta: KeyMeta::default(),
            });
        }
        let body = bytes
            .strip_prefix(KEY_MAGIC.as_slice())
            .ok_or_else(|| KeyError::Format("bad magic".into()))?;
        postcard::from_bytes(body).map_err(format)
    }
}

/// The associated data of a key file: a label and its metadata (the
/// version 1 label alone for a key without metadata).
fn aad(meta: &KeyMeta) -> Vec<u8> {
    if *meta == KeyMeta::default() {
        return KEY_AAD_V1.to_vec();
    }
    let mut aad = KEY_AAD.to_vec();
    // Invariant: postcard serialization of plain data into a Vec cannot fail.
    aad.extend(postcard::to_stdvec(meta).expect("postcard to vec"));
    aad
}

fn stretch(password: &[u8], kdf: &KdfParams, salt: &[u8; 16]) -> Result<[u8; 32], KeyError> {
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> KdfParams {
        KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn wrap_and_unwrap() {
        let secret = RepoSecret {
            master_key: [9; 32],
            chunker: ChunkerParams::default(),
        };
        let meta = KeyMeta {
            created_ns: 5,
            host: "h".into(),
            user: "u".into(),
        };
        let kf = KeyFile::wrap(&secret, b"pw", cheap(), [1; 16], [2; 24], meta).unwrap();
        let back = KeyFile::decode(&kf.encode()).unwrap();
        assert_eq!(back.unwrap_secret(b"pw").unwrap().master_key, [9; 32]);
        assert!(matches!(
            back.unwrap_secret(b"nope"),
            Err(KeyError::WrongPassword)
        ));
        // The metadata is bound to the key: altered, it no longer opens.
        let mut forged = back.clone();
        forged.meta.host = "elsewhere".into();
        assert!(matches!(
            forged.unwrap_secret(b"pw"),
            Err(KeyError::WrongPassword)
        ));
    }

    #[test]
    fn version_1_key_files_still_open() {
        let secret = RepoSecret {
            master_key: [9; 32],
            chunker: ChunkerParams::default(),
        };
        let kf = KeyFile::wrap(
            &secret,
            b"pw",
            cheap(),
            [1; 16],
            [2; 24],
            KeyMeta::default(),
        )
        .unwrap();
        // The version 1 encoding: the same fields without the metadata.
        #[derive(Serialize)]
        struct V1<'a> {
            kdf: KdfParams,
            salt: [u8; 16],
            nonce: [u8; 24],
            #[serde(with = "serde_bytes")]
            ciphertext: &'a [u8],
        }
        let mut v1 = KEY_MAGIC_V1.to_vec();
        v1.extend(
            postcard::to_stdvec(&V1 {
                kdf: kf.kdf,
                salt: kf.salt,
                nonce: kf.nonce,
                ciphertext: &kf.ciphertext,
            })
            .unwrap(),
        );
        let back = KeyFile::decode(&v1).unwrap();
        assert_eq!(back.unwrap_secret(b"pw").unwrap().master_key, [9; 32]);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Ok(kf) = KeyFile::decode(&bytes) {
                let _ = kf.unwrap_secret(b"pw");
            }
            let mut framed = KEY_MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            if let Ok(mut kf) = KeyFile::decode(&framed) {
                kf.kdf = cheap();
                let _ = kf.unwrap_secret(b"pw");
            }
        }
    }

    #[test]
    fn derived_keys_differ() {
        let k = RepoKeys::derive(&MasterKey::from_bytes([3; 32]));
        assert_ne!(k.chunk_id_key(), k.seal_key());
        assert_ne!(
            k.chunk_id(b"a"),
            RepoKeys::derive(&MasterKey::from_bytes([4; 32])).chunk_id(b"a")
        );
    }
}
