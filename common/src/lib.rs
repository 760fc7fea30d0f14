//! The sans-IO core of ringvault, shared by the agent and the chunk servers.
//!
//! Nothing here opens a socket, spawns a task, reads the clock or touches the
//! file system: bytes, randomness and time come in as arguments. The I/O shells
//! (`ringvault` the agent, `ringvault-chunkserver` the server) build on it.
//!
//! # Formats and invariants
//!
//! - A **chunk** is a run of file bytes cut by FastCDC 2020 ([`chunker`]); its
//!   [`ChunkId`] is the BLAKE3 keyed hash of the plaintext with a key derived
//!   from the repository master key ([`keys`]).
//! - A **blob** is a sealed chunk ([`seal`]): `"RVB" version flags nonce(24)
//!   ciphertext tag(16)`, XChaCha20-Poly1305 with the chunk id and the header as
//!   associated data. Servers only ever see blobs.
//! - A **tree** is one directory ([`tree`]), postcard-encoded behind a magic
//!   and a version, sealed and stored as a blob whose id is the keyed hash of
//!   its encoding, so an unchanged subtree costs nothing in the next snapshot.
//! - A **snapshot** ([`snapshot`]) names a root tree; sealed records are kept
//!   on every server, and a forgotten one leaves a tombstone there. An agent
//!   shows no snapshot any live server holds a tombstone for ([`listing`]).
//! - The **cluster map** and **placement** ([`placement`]) decide which N nodes
//!   hold a chunk: 2^16 partitions keyed by the id's prefix, each assigned
//!   nodes by weighted rendezvous hashing.
//! - The **wire protocol** ([`wire`]) is one QUIC stream per request, framed
//!   as length-prefixed postcard headers and bounded payloads.
//!
//! postcard encodes enum variants by index: for every wire and disk enum,
//! declaration order is the format. Append new variants only.
//!
//! Every decoder of untrusted bytes is bounded and returns an error; none
//! panics.

pub mod chunker;
pub mod config;
pub mod duration;
#[doc(hidden)]
pub mod fuzzing;
pub mod gc;
pub mod id;
pub mod keys;
pub mod listing;
pub mod placement;
pub mod repair;
pub mod replication;
pub mod retention;
pub mod routing;
pub mod seal;
pub mod snapshot;
pub mod tls;
pub mod tree;
pub mod wire;

/// A file a chunk server keeps in its data directory, so that backup tools
/// (ringvault's agent among them) know to skip the directory.
pub const DATA_DIR_TAG: &str = "RINGVAULT-DATA.TAG";

pub use id::{ChunkId, NodeId, RepoId, SnapshotId};
