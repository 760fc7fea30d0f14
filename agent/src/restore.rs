//! Restore: a snapshot (or one path in it) back into a target directory.
//!
//! Trees are walked first (directories and symlinks made as they are met),
//! then files are fetched several at a time, each file's chunks fetched
//! ahead in order and opened off the async threads; directory metadata is
//! set last, deepest first. Nothing is ever written outside the target:
//! tree names are checked when trees are decoded (no `/`, NUL, `.`, `..`),
//! files are opened with `O_NOFOLLOW`, and an existing non-directory where a
//! directory should be is an error rather than something to follow.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures::StreamExt;
use ringvault_common::ChunkId;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{Content, Entry, EntryKind, valid_name};

use crate::client::BadCopy;
use crate::repo::Repo;

/// Files restored at once.
const FILES_AT_ONCE: usize = 8;
/// Chunks of one file fetched ahead.
const CHUNKS_AHEAD: usize = 4;

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Regular files written.
    pub files: u64,
    /// Directories made.
    pub dirs: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Entries that could not be restored, with why.
    pub errors: Vec<(PathBuf, String)>,
    /// Bad copies met (and read around) on the servers.
    pub bad_copies: Vec<BadCopy>,
}

struct FileJob {
    dest: PathBuf,
    entry: Entry,
}

/// Restores `snapshot` (or the entry at `path` inside it, `/`-separated)
/// into `target`, which is created if missing.
///
/// # Errors
/// When the snapshot's root or `path` cannot be found or read, or the
/// target cannot be made. Failures of single entries are in the report.
pub async fn restore(
    repo: Arc<Repo>,
    snapshot: &Snapshot,
    path: Option<&str>,
    target: &Path,
) -> anyhow::Result<RestoreReport> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(target)
        .with_context(|| format!("creating {}", target.display()))?;
    let root = repo
        .read_tree(snapshot.root)
        .await
        .context("reading the snapshot's root tree")?;
    let top: Vec<Entry> = match path.map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
        None => root.entries,
        Some(p) => vec![find_entry(&repo, root.entries, p).await?],
    };
    let mut report = RestoreReport::default();
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in top {
        walk(
            &repo,
            entry,
            target.to_owned(),
            &mut files,
            &mut dirs,
            &mut report,
        )
        .await;
    }
    let results: Vec<_> = futures::stream::iter(files)
        .map(|job| {
            let repo = repo.clone();
            async move {
                let r = restore_file(&repo, &job).await;
                (job, r)
            }
        })
        .buffer_unordered(FILES_AT_ONCE)
        .collect()
        .await;
    for (job, r) in results {
        match r {
            Ok(n) => {
                report.files += 1;
                report.bytes += n;
            }
            Err(e) => report.errors.push((job.dest, format!("{e:#}"))),
        }
    }
    for (dest, entry) in dirs.iter().rev() {
        if let Err(e) = set_metadata(dest, entry) {
            report.errors.push((dest.clone(), format!("{e:#}")));
        }
    }
    report.bad_copies = repo.cluster.bad_copies();
    Ok(report)
}

/// Follows a `/`-separated path from the root entries.
///
/// # Errors
/// When a component is missing or not a directory.
pub async fn find_entry(
    repo: &Arc<Repo>,
    mut entries: Vec<Entry>,
    path: &str,
) -> anyhow::Result<Entry> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let entry = entries
            .into_iter()
            .find(|e| e.name == part.as_bytes())
            .with_context(|| format!("no {:?} in the snapshot", parts[..=i].join("/")))?;
        if i + 1 == parts.len() {
            return Ok(entry);
        }
        let Content::Subtree(id) = entry.content else {
            bail!("{:?} is not a directory", parts[..=i].join("/"));
        };
        entries = repo.read_tree(id).await?.entries;
    }
    bail!("empty path")
}

/// Makes directories and symlinks under `parent`, collecting files and
/// directories for later. Errors are recorded, never fatal.
async fn walk(
    repo: &Arc<Repo>,
    entry: Entry,
    parent: PathBuf,
    files: &mut Vec<FileJob>,
    dirs: &mut Vec<(PathBuf, Entry)>,
    report: &mut RestoreReport,
) {
    // Names were checked when their tree was decoded; checked again here
    // because this is the line that keeps writes inside the target.
    if !valid_name(&entry.name) {
        report.errors.push((
            parent,
            format!(
                "refused entry name {:?}",
                String::from_utf8_lossy(&entry.name)
            ),
        ));
        return;
    }
    let dest = parent.join(std::ffi::OsStr::from_bytes(&entry.name));
    let result: anyhow::Result<()> = async {
        match (&entry.kind, &entry.content) {
            (EntryKind::Dir, Content::Subtree(id)) => {
                make_dir(&dest)?;
                report.dirs += 1;
                let tree = repo.read_tree(*id).await?;
                dirs.push((dest.clone(), entry.clone()));
                for child in tree.entries {
                    Box::pin(walk(repo, child, dest.clone(), files, dirs, report)).await;
                }
                Ok(())
            }
            (EntryKind::File, Content::Chunks(_)) => {
                files.push(FileJob {
                    dest: dest.clone(),
                    entry: entry.clone(),
                });
                Ok(())
            }
            (EntryKind::Symlink, Content::Symlink(target)) => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &dest)
                    .with_context(|| format!("making symlink {}", dest.display()))?;
                let mtime = filetime::FileTime::from_unix_time(
                    entry.mtime_ns.div_euclid(1_000_000_000),
                    entry.mtime_ns.rem_euclid(1_000_000_000) as u32,
                );
                filetime::set_symlink_file_times(&dest, mtime, mtime)?;
                Ok(())
            }
            (kind, _) => bail!("{kind:?} entries are not restored yet"),
        }
    }
    .await;
    if let Err(e) = result {
        report.errors.push((dest, format!("{e:#}")));
    }
}

/// Makes a directory; an existing directory is fine, anything else there
/// (a file, a symlink) is an error.
fn make_dir(dest: &Path) -> anyhow::Result<()> {
    match DirBuilder::new().mode(0o700).create(dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(dest)?;
            if m.file_type().is_dir() {
                Ok(())
            } else {
                bail!("{} exists and is not a directory", dest.display())
            }
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", dest.display())),
    }
}

async fn restore_file(repo: &Arc<Repo>, job: &FileJob) -> anyhow::Result<u64> {
    let Content::Chunks(chunks) = &job.entry.content else {
        bail!("not a file");
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&job.dest)
        .with_context(|| format!("creating {}", job.dest.display()))?;
    let mut fetches = futures::stream::iter(chunks.iter().copied())
        .map(|id: ChunkId| {
            let repo = repo.clone();
            async move {
                repo.read_chunk(id)
                    .await
                    .with_context(|| format!("chunk {id}"))
            }
        })
        .buffered(CHUNKS_AHEAD);
    let mut written = 0u64;
    while let Some(data) = fetches.next().await {
        let data = data?;
        file.write_all(&data)
            .with_context(|| format!("writing {}", job.dest.display()))?;
        written += data.len() as u64;
    }
    if written != job.entry.size {
        bail!(
            "restored {written} bytes, the snapshot says {}",
            job.entry.size
        );
    }
    drop(file);
    set_metadata(&job.dest, &job.entry)?;
    Ok(written)
}

/// Sets mode and mtime on a restored file or directory. Ownership is not
/// restored yet (restic does it only when run as root).
fn set_metadata(dest: &Path, entry: &Entry) -> anyhow::Result<()> {
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(entry.mode & 0o7777))
        .with_context(|| format!("setting the mode of {}", dest.display()))?;
    let mtime = filetime::FileTime::from_unix_time(
        entry.mtime_ns.div_euclid(1_000_000_000),
        entry.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_times(dest, mtime, mtime)
        .with_context(|| format!("setting the mtime of {}", dest.display()))?;
    Ok(())
}
