//! One file's restore: deciding what to do with its name in the target
//! (the overwrite policy, comparing with a file already there), then
//! fetching its chunks and writing them, in order or at their offsets,
//! within the restore's byte budget, and finishing it with its length and
//! metadata. The system calls on the target are in the `target` module.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use anyhow::{Context, bail};
use futures::StreamExt;
use ringvault_common::ChunkId;
use ringvault_common::chunker::Chunker;
use ringvault_common::keys::RepoKeys;
use ringvault_common::tree::{ChunkRef, Content, Entry};
use rustix::fs::{FileType, RawMode, Stat};
use tokio::sync::Semaphore;

use super::fetch::Fetcher;
use super::metadata::Meta;
use super::progress::RestoreProgress;
use super::target::{
    create_file, fstat, look, open_to_read, remove_file, set_length, stat_mtime_ns, write_sparse,
};
use super::{
    Action, BYTES_IN_FLIGHT, CHUNKS_AHEAD, CHUNKS_AT_ONCE, FileJob, How, Overwrite, verify,
};
use crate::repo::Repo;

/// What the file tasks share.
pub(super) struct FileCtx {
    pub(super) repo: Arc<Repo>,
    /// Fetches chunks in batches.
    pub(super) fetcher: Fetcher,
    /// Bounds the chunk bytes held, to [`BYTES_IN_FLIGHT`], in KiB.
    pub(super) budget: Semaphore,
    /// Bounds the existing files read at once, to
    /// [`COMPARES_AT_ONCE`](super::COMPARES_AT_ONCE).
    pub(super) compares: Semaphore,
    pub(super) chunker: Chunker,
    pub(super) how: How,
    /// Owners, extended attributes, mode and times.
    pub(super) meta: Arc<Meta>,
    /// Bumped as bytes are written.
    pub(super) progress: Option<Arc<RestoreProgress>>,
}

/// What to do with a file's name in the target.
enum Plan {
    /// Nothing there: make the file.
    New,
    /// Something else there: make the file anew in its place.
    Replace,
    /// The same file there: keep it, setting its mode and mtime through
    /// this descriptor when given.
    Keep(Option<std::fs::File>),
    /// Something there, kept by [`Overwrite::Never`].
    Skip,
}

/// Restores one file as the overwrite policy says (in a dry run, only
/// decides). Returns what was done and the bytes written (in a dry run,
/// those that would be).
///
/// # Errors
/// When what is in the target cannot be looked at, or the file cannot be
/// fetched or written.
pub(super) async fn restore_file(
    ctx: &Arc<FileCtx>,
    job: &Arc<FileJob>,
) -> anyhow::Result<(Action, u64)> {
    let plan = plan_file(ctx, job).await?;
    let action = match plan {
        Plan::New => Action::New,
        Plan::Replace => Action::Replaced,
        Plan::Keep(fix) => {
            if let Some(file) = fix
                && !ctx.how.dry_run
            {
                ctx.meta.apply(file.as_fd(), &job.entry)?;
            }
            return Ok((Action::Unchanged, 0));
        }
        Plan::Skip => return Ok((Action::Skipped, 0)),
    };
    if ctx.how.dry_run {
        return Ok((action, job.entry.size));
    }
    let written = write_file(ctx, job, action == Action::New).await?;
    Ok((action, written))
}

/// Decides what to do with `job`'s name in the target (see the module
/// notes), reading the file there when its content decides.
///
/// # Errors
/// When what is there cannot be looked at, or is a directory (and the
/// policy is not [`Overwrite::Never`]).
async fn plan_file(ctx: &Arc<FileCtx>, job: &Arc<FileJob>) -> anyhow::Result<Plan> {
    let Some(dir) = job.dir.fd() else {
        // Dry run, in a directory that is not there yet.
        return Ok(Plan::New);
    };
    if job.dir.fresh {
        return Ok(Plan::New);
    }
    let name = OsStr::from_bytes(&job.entry.name);
    let Some(st) = look(dir, name)? else {
        return Ok(Plan::New);
    };
    let kind = FileType::from_raw_mode(st.st_mode);
    match ctx.how.overwrite {
        Overwrite::Never => return Ok(Plan::Skip),
        _ if kind.is_dir() => bail!("a directory is in the way (left alone)"),
        Overwrite::Always => return Ok(Plan::Replace),
        Overwrite::IfChanged => {}
    }
    let entry = &job.entry;
    if !kind.is_file() || u64::try_from(st.st_size).ok() != Some(entry.size) {
        return Ok(Plan::Replace);
    }
    let same_mtime = stat_mtime_ns(&st) == i128::from(entry.mtime_ns);
    let same_mode = st.st_mode & 0o7777 == (entry.mode & 0o7777) as RawMode;
    if same_mtime && same_mode {
        return Ok(Plan::Keep(None));
    }
    if st.st_nlink != 1 {
        // Also linked from elsewhere, maybe outside the target: neither
        // read nor changed.
        return Ok(Plan::Replace);
    }
    let _permit = ctx
        .compares
        .acquire()
        .await
        .context("the restore is shutting down")?;
    let (ctx, job) = (ctx.clone(), job.clone());
    tokio::task::spawn_blocking(move || {
        // Invariant: `plan_file` returned above unless the directory is open.
        let Some(dir) = job.dir.fd() else {
            return Ok(Plan::New);
        };
        compare_file(
            dir,
            &job.entry,
            &st,
            same_mtime,
            &ctx.chunker,
            &ctx.repo.keys,
        )
    })
    .await
    .context("comparing with the existing file")?
}

/// `if-changed`, for a regular file `name` in `dir` of the snapshot's size
/// and one link (`seen`): keeps it if its mtime (`same_mtime`) or its
/// chunks match `entry`'s, through a descriptor to set its mode and mtime.
///
/// # Errors
/// When it cannot be read.
fn compare_file(
    dir: BorrowedFd<'_>,
    entry: &Entry,
    seen: &Stat,
    same_mtime: bool,
    chunker: &Chunker,
    keys: &RepoKeys,
) -> anyhow::Result<Plan> {
    if !matches!(entry.content, Content::Chunks(_)) {
        bail!("not a file");
    }
    // Should a FIFO have taken its place since, opening it neither waits
    // for a writer nor reads from one (`fstat` tells).
    let Ok(file) = open_to_read(dir, OsStr::from_bytes(&entry.name)) else {
        // Unreadable (or gone): write it anew.
        return Ok(Plan::Replace);
    };
    let st = fstat(file.as_fd()).context("looking at the existing file")?;
    let same = FileType::from_raw_mode(st.st_mode).is_file()
        && st.st_nlink == 1
        && (st.st_dev, st.st_ino) == (seen.st_dev, seen.st_ino)
        && u64::try_from(st.st_size).ok() == Some(entry.size);
    if !same {
        return Ok(Plan::Replace);
    }
    if same_mtime
        || same_chunks(&file, chunker, keys, &entry.chunk_ids().collect::<Vec<_>>())
            .context("reading the existing file")?
    {
        Ok(Plan::Keep(Some(file)))
    } else {
        Ok(Plan::Replace)
    }
}

/// Whether `file`, cut by `chunker` and hashed with `keys`, is `chunks`
/// (as `restore --verify` checks a file: see [`verify`]). Reads through a
/// buffer of at most twice the largest chunk (less for a small file) and
/// stops at the first chunk that differs.
///
/// # Errors
/// The read's I/O error.
fn same_chunks(
    file: &std::fs::File,
    chunker: &Chunker,
    keys: &RepoKeys,
    chunks: &[ChunkId],
) -> std::io::Result<bool> {
    let size = file.metadata()?.len();
    match verify::by_cutting(file, size, chunks, chunker, keys) {
        Ok(()) => Ok(true),
        Err(verify::Mismatch::Unreadable(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

/// Writes `job`'s file anew in its directory (`free`: its name was seen
/// free), zero runs left as holes, then its metadata. Returns the bytes
/// written. A file of one chunk or none is made, written and finished in
/// one call on the blocking pool once its chunk is here; a larger one has
/// its chunks fetched ahead and written at their offsets as they come
/// ([`write_at_offsets`]), or in order for a version 1 tree
/// ([`write_in_order`]), and is removed again if that fails.
///
/// # Errors
/// When the file cannot be made, a chunk fetched, or the data written, or
/// the length written differs from the snapshot's.
async fn write_file(ctx: &Arc<FileCtx>, job: &Arc<FileJob>, free: bool) -> anyhow::Result<u64> {
    let Content::Chunks(chunks) = &job.entry.content else {
        bail!("not a file");
    };
    // What a chunk holds of the budget, in KiB: its length where the tree
    // gives it (version 2), else the most one chunk of this file can hold;
    // at most the whole budget, which a larger chunk then takes alone.
    let most = job.entry.size.min(ctx.chunker.max_size() as u64);
    let bytes = move |c: &ChunkRef| c.len.map_or(most, |l| u64::from(l).min(most));
    let held = move |c: &ChunkRef| {
        u32::try_from(bytes(c).div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min((BYTES_IN_FLIGHT >> 10) as u32)
    };
    if chunks.len() <= 1 {
        let _held = ctx
            .budget
            .acquire_many(chunks.first().map_or(0, held))
            .await?;
        let first = chunks.first().map(|c| (c.id, bytes(c) as usize));
        let (files, job) = (ctx.clone(), job.clone());
        let write = move |data: Vec<u8>| {
            let dir = job.dir.fd().context("its directory was not made")?;
            let file = create_file(dir, OsStr::from_bytes(&job.entry.name), free)?;
            let sized = write_sparse(&file, &data, 0).context("writing")?;
            if let Some(p) = &files.progress {
                p.wrote(data.len() as u64);
            }
            finish_file(&files, &job, &file, data.len() as u64, sized)
        };
        return match first {
            // Written in the blocking call that opens the chunk. Its errors
            // name the chunk.
            Some((id, bytes)) => ctx.fetcher.chunk_then(id, bytes, write).await,
            None => tokio::task::spawn_blocking(move || write(Vec::new()))
                .await
                .context("writing the file")?,
        };
    }
    let dir = job.dir.fd().context("its directory was not made")?;
    let file = create_file(dir, OsStr::from_bytes(&job.entry.name), free)?;
    let file = Arc::new(file);
    let written = match chunk_offsets(chunks) {
        Some(places) => write_at_offsets(ctx, job, file.clone(), places).await,
        None => write_in_order(ctx, job, &file, chunks, bytes, held).await,
    };
    if written.is_err()
        && let Some(dir) = job.dir.fd()
    {
        // Made here (O_EXCL): a file that failed is not left with holes
        // or a tail missing where the chunks that failed go. The error
        // says why; nothing else of it is worth keeping.
        let _ = remove_file(dir, OsStr::from_bytes(&job.entry.name));
    }
    written
}

/// Writes a file of a version 1 tree: offsets are known only once the
/// chunks before are here, so chunks are written in order as they come,
/// [`CHUNKS_AHEAD`] fetched ahead; then its length and metadata.
/// `bytes` and `held` give a chunk's expected length (bytes) and its share
/// of the budget (KiB).
///
/// # Errors
/// As [`write_file`].
async fn write_in_order(
    ctx: &Arc<FileCtx>,
    job: &Arc<FileJob>,
    file: &std::fs::File,
    chunks: &[ChunkRef],
    bytes: impl Fn(&ChunkRef) -> u64 + Copy,
    held: impl Fn(&ChunkRef) -> u32 + Copy,
) -> anyhow::Result<u64> {
    let mut fetches = futures::stream::iter(chunks.iter().copied())
        .map(|c: ChunkRef| async move {
            let id = c.id;
            // Held until the chunk is written. The semaphore is fair, so
            // a file's earlier chunk never waits behind its later ones.
            let permit = ctx.budget.acquire_many(held(&c)).await?;
            // Its errors name the chunk.
            let data = ctx.fetcher.chunk(id, bytes(&c) as usize).await?;
            anyhow::Ok((data, permit))
        })
        .buffered(CHUNKS_AHEAD);
    let mut written = 0u64;
    while let Some(fetched) = fetches.next().await {
        let (data, _permit) = fetched?;
        write_sparse(file, &data, written).context("writing")?;
        written += data.len() as u64;
        if let Some(p) = &ctx.progress {
            p.wrote(data.len() as u64);
        }
    }
    finish_file(ctx, job, file, written, false)
}

/// Each distinct chunk of a file with the offsets, bytes, where it goes
/// and its length, in the order of first use; `None` when the tree does
/// not record every chunk's length (version 1).
fn chunk_offsets(chunks: &[ChunkRef]) -> Option<Vec<(ChunkId, u32, Vec<u64>)>> {
    let mut places: Vec<(ChunkId, u32, Vec<u64>)> = Vec::new();
    let mut index: HashMap<ChunkId, usize> = HashMap::new();
    let mut offset = 0u64;
    for c in chunks {
        let len = c.len?;
        let i = *index.entry(c.id).or_insert_with(|| {
            places.push((c.id, len, Vec::new()));
            places.len() - 1
        });
        places[i].2.push(offset);
        offset += u64::from(len);
    }
    Some(places)
}

/// Writes a file whose chunk lengths the tree records: each distinct
/// chunk is fetched once and written, in the blocking call that opened
/// it, at every offset where the file holds it, [`CHUNKS_AT_ONCE`] chunks
/// at once in any order (a file of one repeated chunk, such as a sparse
/// file's zeros, costs one fetch). Then its length and metadata.
///
/// # Errors
/// As [`write_file`]; also when a chunk opens to another length than the
/// tree records.
async fn write_at_offsets(
    ctx: &Arc<FileCtx>,
    job: &Arc<FileJob>,
    file: Arc<std::fs::File>,
    places: Vec<(ChunkId, u32, Vec<u64>)>,
) -> anyhow::Result<u64> {
    let mut writes = futures::stream::iter(places)
        .map(|(id, len, offsets)| {
            let (file, files) = (file.clone(), ctx.clone());
            async move {
                let held = u32::try_from(u64::from(len).div_ceil(1024))
                    .unwrap_or(u32::MAX)
                    .min((BYTES_IN_FLIGHT >> 10) as u32);
                // Held until the chunk is written everywhere it goes.
                let _permit = ctx.budget.acquire_many(held).await?;
                let write = move |data: Vec<u8>| {
                    if data.len() != len as usize {
                        bail!(
                            "chunk {id} opens to {} bytes, its tree records {len}",
                            data.len()
                        );
                    }
                    for &offset in &offsets {
                        write_sparse(&file, &data, offset).context("writing")?;
                        if let Some(p) = &files.progress {
                            p.wrote(u64::from(len));
                        }
                    }
                    Ok(u64::from(len) * offsets.len() as u64)
                };
                // Its errors name the chunk.
                ctx.fetcher.chunk_then(id, len as usize, write).await
            }
        })
        .buffer_unordered(CHUNKS_AT_ONCE);
    let mut written = 0u64;
    while let Some(bytes) = writes.next().await {
        written += bytes?;
    }
    finish_file(ctx, job, &file, written, false)
}

/// Gives a written file its length (a trailing hole was skipped, not
/// written; `sized`: the writes already reached it, so no call is needed)
/// and its metadata, after checking that `written` bytes are the
/// snapshot's size. Returns `written`.
///
/// # Errors
/// When the length or the metadata cannot be set, or the sizes differ.
fn finish_file(
    ctx: &FileCtx,
    job: &FileJob,
    file: &std::fs::File,
    written: u64,
    sized: bool,
) -> anyhow::Result<u64> {
    if !sized {
        set_length(file, written).context("writing")?;
    }
    if written != job.entry.size {
        bail!(
            "restored {written} bytes, the snapshot says {}",
            job.entry.size
        );
    }
    ctx.meta.apply(file.as_fd(), &job.entry)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::target::dir_fd;
    use ringvault_common::tree::{ChunkRef, EntryKind};

    fn keys() -> RepoKeys {
        RepoKeys::derive(&ringvault_common::keys::MasterKey::from_bytes([7; 32]))
    }

    fn small_chunker() -> Chunker {
        Chunker::new(ringvault_common::chunker::ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            normalization: 1,
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

    #[test]
    fn same_chunks_is_true_only_for_the_same_bytes() {
        let (chunker, keys) = (small_chunker(), keys());
        let data = pseudo_random(300_000);
        let ids: Vec<ChunkId> = chunker.split(&data).map(|c| keys.chunk_id(c)).collect();
        assert!(ids.len() > 10);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let check = |bytes: &[u8], ids: &[ChunkId]| {
            std::fs::write(&path, bytes).unwrap();
            same_chunks(&std::fs::File::open(&path).unwrap(), &chunker, &keys, ids).unwrap()
        };
        assert!(check(&data, &ids));
        let mut edited = data.clone();
        edited[150_000] ^= 1;
        assert!(!check(&edited, &ids));
        assert!(!check(&data[..299_999], &ids));
        assert!(!check(&data, &ids[..ids.len() - 1]));
        assert!(check(b"", &[]));
        assert!(!check(b"x", &[]));
    }

    fn file_entry(name: &[u8], data: &[u8], mode: u32, mtime_ns: i64) -> Entry {
        let (chunker, keys) = (small_chunker(), keys());
        Entry {
            name: name.to_vec(),
            kind: EntryKind::File,
            mode,
            uid: 0,
            gid: 0,
            mtime_ns,
            ctime_ns: 0,
            size: data.len() as u64,
            inode: 0,
            device: 0,
            rdev: 0,
            xattrs: vec![],
            content: Content::Chunks(
                chunker
                    .split(data)
                    .map(|c| ChunkRef {
                        id: keys.chunk_id(c),
                        len: Some(c.len() as u32),
                    })
                    .collect(),
            ),
            user: vec![],
            group: vec![],
            links: 1,
        }
    }

    #[test]
    fn an_existing_file_is_kept_only_when_its_content_matches_and_it_has_one_link() {
        let (chunker, keys) = (small_chunker(), keys());
        let tmp = tempfile::tempdir().unwrap();
        let data = pseudo_random(50_000);
        let entry = file_entry(b"f", &data, 0o100600, 1_000_000_000_123_456_789);
        let path = tmp.path().join("f");
        let fd = dir_fd(tmp.path());
        let plan = |same_mtime| {
            let st = look(fd.as_fd(), OsStr::new("f")).unwrap().unwrap();
            compare_file(fd.as_fd(), &entry, &st, same_mtime, &chunker, &keys).unwrap()
        };
        std::fs::write(&path, &data).unwrap();
        assert!(matches!(plan(false), Plan::Keep(Some(_))), "same bytes");
        let mut edited = data.clone();
        edited[10] ^= 1;
        std::fs::write(&path, &edited).unwrap();
        assert!(matches!(plan(false), Plan::Replace), "other bytes");
        assert!(
            matches!(plan(true), Plan::Keep(Some(_))),
            "size and mtime trusted"
        );
        std::fs::write(&path, &data).unwrap();
        std::fs::hard_link(&path, tmp.path().join("elsewhere")).unwrap();
        assert!(
            matches!(plan(false), Plan::Replace),
            "linked from elsewhere"
        );
    }
}
