//! Identities: [`ChunkId`], [`SnapshotId`], [`NodeId`] and [`RepoId`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Error returned when an identity cannot be parsed from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The text is not 64 lowercase or uppercase hex digits.
    #[error("{0:?} is not a 64-digit hex id")]
    BadHex(String),
    /// A repository name that is empty, longer than 64 bytes, or holds a
    /// character other than ASCII letters, digits, `-`, `_` and `.`.
    #[error("{0:?} is not a valid repository name (1 to 64 of [A-Za-z0-9._-])")]
    BadRepo(String),
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id as 64 lowercase hex digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, as shown in listings.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| IdError::BadHex(s.to_owned()))?;
                Ok(Self(out))
            }
        }
    };
}

hash_id!(
    /// A chunk's identity: the BLAKE3 keyed hash (32 bytes) of its plaintext,
    /// keyed by [`crate::keys::RepoKeys::chunk_id_key`]. Trees are chunks too.
    ChunkId
);

hash_id!(
    /// A snapshot's identity: the BLAKE3 keyed hash (32 bytes) of its encoded
    /// record.
    SnapshotId
);

impl ChunkId {
    /// The partition (0..2^16) this id falls in: its first two bytes, big
    /// endian. Placement assigns replicas per partition.
    pub fn partition(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }
}

/// A chunk server's identity within its cluster map (small integers, chosen
/// by the operator at `cluster init`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

/// A repository (tenant) name: 1 to 64 bytes of `[A-Za-z0-9._-]`.
///
/// Every blob, snapshot and key is stored under its repository; a client
/// certificate names the one repository it may use.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
#[serde(try_from = "String", into = "String")]
pub struct RepoId(String);

impl RepoId {
    /// Longest repository name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates and wraps a repository name.
    ///
    /// # Errors
    /// [`IdError::BadRepo`] for an empty, too long or oddly charactered name.
    pub fn new(name: &str) -> Result<Self, IdError> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && name != "."
            && name != "..";
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(IdError::BadRepo(name.to_owned()))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RepoId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(&s)
    }
}

impl From<RepoId> for String {
    fn from(r: RepoId) -> String {
        r.0
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RepoId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId([7; 32]);
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert!("xyz".parse::<ChunkId>().is_err());
    }

    #[test]
    fn repo_names() {
        assert!(RepoId::new("home-laptop_1.x").is_ok());
        for bad in ["", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(RepoId::new(bad).is_err(), "{bad:?}");
        }
    }
}
