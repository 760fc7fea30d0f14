//! `restore --verify`: after the restore, every file it wrote is read back
//! and checked against the snapshot, as restic's `--verify` does.
//!
//! A file is checked when the restore wrote it (new or replaced; a hard
//! link too, through its own name); files kept as they were are not. Its
//! size must be the snapshot's, and its bytes, cut where the snapshot's
//! chunks end and hashed with the repository's chunk-id key, must give
//! the snapshot's chunk ids in order. A tree of version 1 records no chunk
//! lengths: such a file is cut again with the repository's chunker, which
//! cuts the same bytes in the same places. The first chunk that differs
//! names the file and the offset where it starts; every file is checked,
//! whatever the others gave. Files are opened as the restore opens them:
//! beneath the target one component at a time, following no symlink,
//! through the `target` module; the bytes are read here.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ringvault_common::ChunkId;
use ringvault_common::chunker::Chunker;
use ringvault_common::keys::RepoKeys;
use ringvault_common::snapshot::Snapshot;
use ringvault_common::tree::{Content, Entry, EntryKind};
use rustix::fs::FileType;
use tokio::sync::Semaphore;

use super::after::{dirs_above, for_each_level};
use super::target::{fstat, open_beneath, open_existing, open_to_read};
use super::{Action, RestoreReport};
use crate::repo::Repo;

/// Files read back at once, each through a buffer of up to one chunk (the
/// chunker's largest, 8 MiB by default; twice that for version-1 trees).
const VERIFY_AT_ONCE: usize = 4;

/// Test hook: when set, verification waits, before it reads anything,
/// until the file this names exists (at most 120 s), after creating the
/// file named by it with `.waiting` appended. The end-to-end tests use it
/// to change a restored file before it is verified.
pub const HOLD_BEFORE_VERIFY_ENV: &str = "RINGVAULT_TEST_HOLD_BEFORE_VERIFY";

/// What verification found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Files read back and found as in the snapshot.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files that differ from the snapshot (or could not be read), with why.
    pub errors: Vec<(PathBuf, String)>,
}

/// Why a restored file failed verification.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    /// It could not be opened or read.
    #[error("cannot read it: {0}")]
    Unreadable(#[source] std::io::Error),
    /// Something else than a regular file is at its name.
    #[error("not a regular file")]
    NotAFile,
    /// Its size differs from the snapshot's.
    #[error("{found} bytes, the snapshot has {expected}")]
    Size {
        /// Bytes on disk.
        found: u64,
        /// Bytes in the snapshot.
        expected: u64,
    },
    /// Its bytes differ from the snapshot's, from the chunk at `offset`.
    #[error(
        "content differs from the snapshot's in the chunk at offset {offset} (chunk {index} of {count})"
    )]
    Content {
        /// Where the first chunk that differs starts, bytes.
        offset: u64,
        /// That chunk's index, from 1.
        index: usize,
        /// The snapshot's chunks in the file.
        count: usize,
    },
}

/// The paths of the files `report` says were written (new or replaced):
/// it must come from a restore with [`RestoreOptions::list`] set.
///
/// [`RestoreOptions::list`]: super::RestoreOptions::list
pub fn written_files(report: &RestoreReport) -> HashSet<PathBuf> {
    report
        .actions
        .iter()
        .filter(|a| a.kind == EntryKind::File && matches!(a.action, Action::New | Action::Replaced))
        .map(|a| a.path.clone())
        .collect()
}

/// Reads back `written` (files a restore of `snapshot`, or of `path` in
/// it, wrote into `target`; see [`written_files`]) and checks each against
/// the snapshot (see the module notes).
///
/// # Errors
/// When the target cannot be opened or a tree read; files that differ are
/// in the report.
pub async fn verify(
    repo: &Arc<Repo>,
    snapshot: &Snapshot,
    target: &Path,
    path: Option<&str>,
    written: &HashSet<PathBuf>,
) -> anyhow::Result<VerifyReport> {
    hold_before_verify().await;
    let root = Arc::new(open_existing(target)?);
    let chunker =
        Arc::new(Chunker::new(repo.chunker).context("the repository's chunker settings")?);
    let dirs = dirs_above(target, written);
    let mut jobs = Vec::new();
    for_each_level(
        repo,
        snapshot,
        target,
        path,
        |d| dirs.contains(d),
        |level| {
            for entry in level.entries {
                if entry.kind != EntryKind::File {
                    continue;
                }
                let dest = level.target.join(OsStr::from_bytes(&entry.name));
                if written.contains(&dest) {
                    jobs.push((dest, level.names.clone(), entry));
                }
            }
        },
    )
    .await?;
    let at_once = Arc::new(Semaphore::new(VERIFY_AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for (dest, names, entry) in jobs {
        let permit = at_once
            .clone()
            .acquire_owned()
            .await
            .context("verification is shutting down")?;
        let (root, chunker, repo) = (root.clone(), chunker.clone(), repo.clone());
        tasks.spawn_blocking(move || {
            let _permit = permit;
            let checked = check_file(root.as_fd(), &names, &entry, &repo.keys, &chunker);
            (dest, checked)
        });
    }
    let mut report = VerifyReport::default();
    while let Some(joined) = tasks.join_next().await {
        let (dest, checked) = joined.context("a verification task failed")?;
        match checked {
            Ok(bytes) => {
                report.files += 1;
                report.bytes += bytes;
            }
            Err(e) => report.errors.push((dest, e.to_string())),
        }
    }
    report.errors.sort();
    Ok(report)
}

/// Checks file `entry` in the directory `dir` names below `root` against
/// its entry; returns its size.
///
/// # Errors
/// What differs, or why it could not be read.
pub(super) fn check_file(
    root: BorrowedFd<'_>,
    dir: &[Vec<u8>],
    entry: &Entry,
    keys: &RepoKeys,
    chunker: &Chunker,
) -> Result<u64, Mismatch> {
    let Content::Chunks(refs) = &entry.content else {
        return Err(Mismatch::NotAFile);
    };
    let dir = open_beneath(root, dir.iter().map(Vec::as_slice)).map_err(Mismatch::Unreadable)?;
    // A FIFO in its place is neither waited on nor read.
    let file = open_to_read(dir.as_fd(), OsStr::from_bytes(&entry.name)).map_err(|e| {
        match rustix::io::Errno::from_io_error(&e) {
            Some(rustix::io::Errno::LOOP) => Mismatch::NotAFile,
            _ => Mismatch::Unreadable(e),
        }
    })?;
    let st = fstat(file.as_fd()).map_err(Mismatch::Unreadable)?;
    if !FileType::from_raw_mode(st.st_mode).is_file() {
        return Err(Mismatch::NotAFile);
    }
    let found = u64::try_from(st.st_size).unwrap_or(0);
    if found != entry.size {
        return Err(Mismatch::Size {
            found,
            expected: entry.size,
        });
    }
    let ids: Vec<ChunkId> = refs.iter().map(|c| c.id).collect();
    // The recorded lengths, when there are all and they add up (a
    // snapshot's lengths are not trusted to size a buffer beyond the
    // chunker's largest chunk).
    let lens: Option<Vec<usize>> = refs
        .iter()
        .map(|c| {
            c.len
                .map(|l| l as usize)
                .filter(|&l| l <= chunker.max_size())
        })
        .collect();
    match lens.filter(|l| l.iter().map(|&n| n as u64).sum::<u64>() == entry.size) {
        Some(lens) => by_lengths(&file, &ids, &lens, keys)?,
        None => by_cutting(&file, entry.size, &ids, chunker, keys)?,
    }
    Ok(found)
}

/// Compares `file` with chunks `ids` of lengths `lens`.
fn by_lengths(
    file: &std::fs::File,
    ids: &[ChunkId],
    lens: &[usize],
    keys: &RepoKeys,
) -> Result<(), Mismatch> {
    let mut buf = vec![0u8; lens.iter().copied().max().unwrap_or(0)];
    let mut offset = 0u64;
    for (i, (id, &len)) in ids.iter().zip(lens).enumerate() {
        let chunk = &mut buf[..len];
        file.read_exact_at(chunk, offset)
            .map_err(|e| match e.kind() {
                // Shorter than its size said a moment ago.
                std::io::ErrorKind::UnexpectedEof => content(offset, i, ids.len()),
                _ => Mismatch::Unreadable(e),
            })?;
        if keys.chunk_id(chunk) != *id {
            return Err(content(offset, i, ids.len()));
        }
        offset += len as u64;
    }
    Ok(())
}

/// Cuts `file` (of `size` bytes) with `chunker` and compares the chunks
/// with `ids`, through a buffer of at most twice the largest chunk.
pub(super) fn by_cutting(
    mut file: &std::fs::File,
    size: u64,
    ids: &[ChunkId],
    chunker: &Chunker,
    keys: &RepoKeys,
) -> Result<(), Mismatch> {
    let max = chunker.max_size();
    let cap = usize::try_from(size)
        .map_or(2 * max, |s| s.saturating_add(1).min(2 * max))
        .max(1);
    let mut buf = vec![0u8; cap];
    // Bytes read and not yet cut: `buf[start..end]`, from file offset
    // `offset` on.
    let (mut start, mut end, mut eof, mut offset) = (0, 0, false, 0u64);
    let mut next = ids.iter().enumerate();
    loop {
        if !eof && end - start < max {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            while end < buf.len() {
                match file.read(&mut buf[end..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => end += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Mismatch::Unreadable(e)),
                }
            }
        }
        let at = next.clone().next().map_or(ids.len(), |(i, _)| i);
        match chunker.cut(&buf[start..end], eof) {
            Some(len) => match next.next() {
                Some((_, id)) if keys.chunk_id(&buf[start..start + len]) == *id => {
                    start += len;
                    offset += len as u64;
                }
                _ => return Err(content(offset, at, ids.len())),
            },
            None if eof && next.next().is_none() => return Ok(()),
            // Fewer chunks than the snapshot's, or more bytes than the
            // buffer holds (it grew).
            None => return Err(content(offset, at, ids.len())),
        }
    }
}

fn content(offset: u64, index: usize, count: usize) -> Mismatch {
    Mismatch::Content {
        offset,
        index: index + 1,
        count,
    }
}

/// See [`HOLD_BEFORE_VERIFY_ENV`].
async fn hold_before_verify() {
    crate::backup::test_hold(HOLD_BEFORE_VERIFY_ENV).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringvault_common::chunker::ChunkerParams;
    use ringvault_common::tree::ChunkRef;

    fn keys() -> RepoKeys {
        RepoKeys::derive(&ringvault_common::keys::MasterKey::from_bytes([7; 32]))
    }

    fn chunker() -> Chunker {
        Chunker::new(ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            ..ChunkerParams::default()
        })
        .unwrap()
    }

    fn pseudo_random(n: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// A file entry for `data`, cut by `chunker`; with or without lengths.
    fn entry(name: &[u8], data: &[u8], lengths: bool) -> Entry {
        let c = chunker();
        let chunks = c
            .split(data)
            .map(|p| ChunkRef {
                id: keys().chunk_id(p),
                len: lengths.then_some(p.len() as u32),
            })
            .collect::<Vec<_>>();
        assert!(chunks.len() > 5);
        Entry {
            name: name.to_vec(),
            kind: EntryKind::File,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            size: data.len() as u64,
            inode: 0,
            device: 0,
            rdev: 0,
            xattrs: Vec::new(),
            content: Content::Chunks(chunks),
            user: Vec::new(),
            group: Vec::new(),
            links: 1,
        }
    }

    fn check(root: &Path, entry: &Entry) -> Result<u64, Mismatch> {
        let fd = open_existing(root).unwrap();
        check_file(fd.as_fd(), &[b"d".to_vec()], entry, &keys(), &chunker())
    }

    #[test]
    fn a_file_passes_only_with_the_snapshots_bytes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let path = dir.path().join("d/f");
        let data = pseudo_random(100_000);
        for lengths in [true, false] {
            let e = entry(b"f", &data, lengths);
            std::fs::write(&path, &data).unwrap();
            assert_eq!(check(dir.path(), &e).unwrap(), 100_000);

            // One byte changed: named by the chunk that holds it.
            let mut changed = data.clone();
            changed[60_000] ^= 1;
            std::fs::write(&path, &changed).unwrap();
            match check(dir.path(), &e) {
                Err(Mismatch::Content { offset, index, .. }) => {
                    assert!(offset <= 60_000 && offset + 16384 > 60_000, "{offset}");
                    assert!(index > 1);
                }
                other => panic!("lengths {lengths}: {other:?}"),
            }

            // Shorter, longer.
            std::fs::write(&path, &data[..99_999]).unwrap();
            assert!(matches!(
                check(dir.path(), &e),
                Err(Mismatch::Size {
                    found: 99_999,
                    expected: 100_000
                })
            ));
            let mut longer = data.clone();
            longer.push(0);
            std::fs::write(&path, &longer).unwrap();
            assert!(matches!(check(dir.path(), &e), Err(Mismatch::Size { .. })));
        }
    }

    #[test]
    fn a_symlink_or_a_missing_file_fails_and_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let data = pseudo_random(50_000);
        let e = entry(b"f", &data, true);
        std::fs::write(outside.path().join("f"), &data).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        assert!(matches!(
            check(dir.path(), &e),
            Err(Mismatch::Unreadable(_))
        ));
        std::os::unix::fs::symlink(outside.path().join("f"), dir.path().join("d/f")).unwrap();
        assert!(matches!(check(dir.path(), &e), Err(Mismatch::NotAFile)));
        // Nor a symlinked directory on the way.
        std::fs::remove_dir_all(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("d")).unwrap();
        assert!(matches!(
            check(dir.path(), &e),
            Err(Mismatch::Unreadable(_))
        ));
    }
}
