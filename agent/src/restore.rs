//! Restore: a snapshot (or one path in it) back into a target directory.
//!
//! Trees are walked first (directories and symlinks made as they are met),
//! then files are restored several at a time, each by its own task, its
//! chunks fetched ahead and opened on the blocking pool and written in
//! order, long zero runs left as holes; directory metadata is
//! set last, deepest first. Nothing is ever written outside the target:
//! tree names are checked when trees are decoded (no `/`, NUL, `.`, `..`),
//! files are opened with `O_NOFOLLOW`, and an existing non-directory where a
//! directory should be is an error rather than something to follow.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures::StreamExt;
use ringvault_common::ChunkId;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{Content, Entry, EntryKind, valid_name};
use tokio::sync::{Semaphore, mpsc};

use crate::client::BadCopy;
use crate::repo::Repo;

/// Files restored at once.
const FILES_AT_ONCE: usize = 16;
/// Chunks of one file fetched ahead.
const CHUNKS_AHEAD: usize = 4;
/// Chunks fetched or being written at once, over all files: this bounds
/// the memory of a restore to this many chunks, each held sealed and
/// opened: about 2 MiB per chunk on average, 32 MiB at most.
const CHUNKS_IN_FLIGHT: usize = 16;
/// Files found by the walk and waiting for a task.
const FILE_QUEUE: usize = 1024;

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
    // The walk runs ahead in its own task, handing files over as it meets
    // them; each file is then restored by its own task, so that chunks are
    // fetched, opened and written on every core at once.
    let (file_tx, mut file_rx) = tokio::sync::mpsc::channel(FILE_QUEUE);
    // In a JoinSet so that it is stopped if this function returns early.
    let mut walker = tokio::task::JoinSet::new();
    {
        let repo = repo.clone();
        let target = target.to_owned();
        walker.spawn(async move {
            let mut walked = Walked::default();
            for entry in top {
                walk(&repo, entry, target.clone(), &file_tx, &mut walked).await;
            }
            walked
        });
    }
    let in_flight = Arc::new(Semaphore::new(CHUNKS_IN_FLIGHT));
    let mut report = RestoreReport::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut walking = true;
    while walking || !tasks.is_empty() {
        tokio::select! {
            job = file_rx.recv(), if walking && tasks.len() < FILES_AT_ONCE => match job {
                Some(job) => {
                    let (repo, in_flight) = (repo.clone(), in_flight.clone());
                    tasks.spawn(async move {
                        let r = restore_file(&repo, &job, &in_flight).await;
                        (job.dest, r)
                    });
                }
                None => walking = false,
            },
            Some(joined) = tasks.join_next() => {
                let (dest, r) = joined.context("a restore task failed")?;
                match r {
                    Ok(n) => {
                        report.files += 1;
                        report.bytes += n;
                    }
                    Err(e) => report.errors.push((dest, format!("{e:#}"))),
                }
            }
        }
    }
    let Walked {
        dirs,
        dir_count,
        errors,
    } = walker
        .join_next()
        .await
        .context("the restore walk vanished")?
        .context("the restore walk failed")?;
    report.dirs = dir_count;
    report.errors.extend(errors);
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

/// What the walk gathered besides the files it handed over.
#[derive(Default)]
struct Walked {
    /// Directories made, parents first, for their metadata at the end.
    dirs: Vec<(PathBuf, Entry)>,
    dir_count: u64,
    errors: Vec<(PathBuf, String)>,
}

/// Makes directories and symlinks under `parent` and hands files to
/// `files`. Errors are recorded, never fatal.
async fn walk(
    repo: &Arc<Repo>,
    entry: Entry,
    parent: PathBuf,
    files: &mpsc::Sender<FileJob>,
    walked: &mut Walked,
) {
    // Names were checked when their tree was decoded; checked again here
    // because this is the line that keeps writes inside the target.
    if !valid_name(&entry.name) {
        walked.errors.push((
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
                walked.dir_count += 1;
                let tree = repo.read_tree(*id).await?;
                walked.dirs.push((dest.clone(), entry.clone()));
                for child in tree.entries {
                    Box::pin(walk(repo, child, dest.clone(), files, walked)).await;
                }
                Ok(())
            }
            (EntryKind::File, Content::Chunks(_)) => {
                let job = FileJob {
                    dest: dest.clone(),
                    entry: entry.clone(),
                };
                // A closed channel means the restore is failing already.
                let _ = files.send(job).await;
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
        walked.errors.push((dest, format!("{e:#}")));
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

async fn restore_file(
    repo: &Arc<Repo>,
    job: &FileJob,
    in_flight: &Arc<Semaphore>,
) -> anyhow::Result<u64> {
    let Content::Chunks(chunks) = &job.entry.content else {
        bail!("not a file");
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&job.dest)
        .with_context(|| format!("creating {}", job.dest.display()))?;
    let mut fetches = futures::stream::iter(chunks.iter().copied())
        .map(|id: ChunkId| {
            let (repo, in_flight) = (repo.clone(), in_flight.clone());
            async move {
                // Held until the chunk is written. The semaphore is fair, so
                // a file's earlier chunk never waits behind its later ones.
                let permit = in_flight.acquire_owned().await?;
                let data = repo
                    .read_chunk(id)
                    .await
                    .with_context(|| format!("chunk {id}"))?;
                anyhow::Ok((data, permit))
            }
        })
        .buffered(CHUNKS_AHEAD);
    let mut written = 0u64;
    while let Some(fetched) = fetches.next().await {
        let (data, _permit) = fetched?;
        write_sparse(&file, &data, written)
            .with_context(|| format!("writing {}", job.dest.display()))?;
        written += data.len() as u64;
    }
    // A trailing hole was skipped, not written: give the file its length.
    file.set_len(written)
        .with_context(|| format!("writing {}", job.dest.display()))?;
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

/// Zero runs at least this long (bytes) are left as holes rather than
/// written, so sparse files stay sparse (and long zero runs in dense files
/// become holes, as with restic's `--sparse` and GNU cp's default).
const HOLE_BYTES: usize = 64 * 1024;

/// Writes `data` at `offset` of a freshly created file, skipping zero runs
/// of at least [`HOLE_BYTES`] that start on a [`HOLE_BYTES`] boundary of
/// the data.
///
/// # Errors
/// The write's I/O error.
fn write_sparse(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut start = 0; // first byte not yet written
    let mut at = 0;
    while at < data.len() {
        let end = (at + HOLE_BYTES).min(data.len());
        if end - at == HOLE_BYTES && data[at..end].iter().all(|&b| b == 0) {
            file.write_all_at(&data[start..at], offset + start as u64)?;
            start = end;
        }
        at = end;
    }
    file.write_all_at(&data[start..], offset + start as u64)
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
