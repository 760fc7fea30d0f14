//! The ringvault agent: the `ringvault` command line and the library it is
//! made of.
//!
//! - [`repo`] opens a repository: config, TLS, the cluster, the password
//!   ([`password`] says where it comes from).
//! - [`client`] talks to the cluster, routing by placement with failover.
//! - [`backup`] scans, chunks, deduplicates, seals and uploads, then writes
//!   trees and the snapshot record; [`index`] remembers file fingerprints so
//!   unchanged files are not read again.
//! - [`restore`] writes a snapshot back, never outside its target.
//! - [`cluster`] and [`quickstart`] make certificates, configs and a local
//!   cluster; [`cli`] ties it together.
//!
//! The agent never holds a repository-wide chunk index: it asks the
//! cluster in batches, remembering only a bounded set of ids seen during
//! one backup.

pub mod backup;
pub mod browse;
pub mod check;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod daemon;
pub mod error;
pub mod exclude;
pub mod fsmeta;
pub mod fsutil;
pub mod gc;
pub mod host;
pub mod index;
pub mod mount;
pub mod password;
pub mod quickstart;
pub mod repo;
pub mod restore;
pub mod service;
pub mod status;
pub mod tree_cache;
pub mod ui;
pub mod vfs;
pub mod watch;
