//! Reading a backup's files: the byte budget, packs of small files and
//! trees, cutting changed files into chunks (reading each twice as little as
//! it can: holes skipped, a file changed during its read read again), and
//! sealing what goes into a pack.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::bail;
use bytes::Bytes;
use ringvault_common::ChunkId;
use ringvault_common::seal;
use ringvault_common::tree::ChunkRef;

use crate::fsutil::times;
use crate::host::now_ns;
use crate::index::FileRecord;

use super::walk::{Pack, WalkError, Walker};
use super::{Pinned, UPLOAD_BUDGET, Upload, sparse};

/// Read size for large files, bytes.
const READ_BLOCK: usize = 4 << 20;
/// Small files and trees share read buffers ("packs") of this size, bytes:
/// one allocation and one budget reservation for dozens of them rather than
/// one each (53k small allocations of every size left glibc's heap
/// fragmented: 35 MB resident beyond the live heap).
const PACK_BYTES: usize = 2 << 20;
/// Files and trees up to this size go into a pack, bytes.
const PACK_ITEM_MAX: usize = 256 << 10;
/// A file modified this close to its read is "racy": recorded in the
/// snapshot but not in the index, so the next backup reads it again (git's
/// racy-clean rule; 2 s covers file systems with coarse timestamps).
const RACY_WINDOW_NS: i64 = 2_000_000_000;
/// Tries to read a file that keeps changing before giving up on it.
const READ_ATTEMPTS: usize = 3;

impl Walker {
    /// Waits for room for a buffer of `bytes` in the upload budget, after
    /// handing over the pack (whose budget could be what is missing).
    fn reserve(&mut self, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit, WalkError> {
        self.flush_pack()?;
        self.reserve_unflushed(bytes)
    }

    fn reserve_unflushed(
        &self,
        bytes: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, WalkError> {
        // The budget is counted in KiB; one buffer never waits for more than
        // the whole budget.
        let permits = bytes.div_ceil(1024).clamp(1, UPLOAD_BUDGET >> 10) as u32;
        self.handle
            .block_on(self.budget.clone().acquire_many_owned(permits))
            .map_err(|_| WalkError::Fatal(anyhow::anyhow!("upload budget closed")))
    }

    /// Takes the current pack if it has room for `len` more bytes, else
    /// hands it over and starts a new one; put it back in `self.pack`.
    fn pack_with_room(&mut self, len: usize) -> Result<Pack, WalkError> {
        if let Some(pack) = self.pack.take() {
            if pack.buf.capacity() - pack.buf.len() >= len {
                return Ok(pack);
            }
            self.pack = Some(pack);
            self.flush_pack()?;
        }
        Ok(Pack {
            buf: Vec::with_capacity(PACK_BYTES.max(len)),
            permit: self.reserve_unflushed(PACK_BYTES.max(len))?,
            items: Vec::new(),
        })
    }

    /// Hands the pack's chunks to the uploader.
    pub(super) fn flush_pack(&mut self) -> Result<(), WalkError> {
        let Some(pack) = self.pack.take() else {
            return Ok(());
        };
        let bytes = Bytes::from_owner(Pinned {
            data: pack.buf,
            _permit: pack.permit,
        });
        for (id, range) in pack.items {
            self.send(id, bytes.slice(range))?;
        }
        Ok(())
    }

    /// Reads a small file (`size` bytes by its metadata) into the pack and
    /// cuts it; `None` when it turned out larger (read it the long way).
    fn read_small(
        &mut self,
        f: &mut File,
        size: usize,
    ) -> Result<Option<Vec<ChunkRef>>, WalkError> {
        let mut pack = self.pack_with_room(size + 1)?;
        let start = pack.buf.len();
        // One byte past the size, to see the end without another read.
        let read = f.take(size as u64 + 1).read_to_end(&mut pack.buf);
        let n = match read {
            Ok(n) if n <= size => n,
            other => {
                pack.buf.truncate(start);
                self.pack = Some(pack);
                other?;
                f.seek(SeekFrom::Start(0))?;
                return Ok(None);
            }
        };
        let mut chunks = Vec::new();
        let mut offset = start;
        while let Some(len) = self.chunker.cut(&pack.buf[offset..], true) {
            let id = self.repo.keys.chunk_id(&pack.buf[offset..offset + len]);
            pack.items.push((id, offset..offset + len));
            chunks.push(chunk_ref(id, len));
            offset += len;
        }
        self.pack = Some(pack);
        self.counters
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(Some(chunks))
    }

    /// The chunk of a long zero run (computed at the first sparse file).
    fn zero_finder(&mut self) -> sparse::ZeroRuns {
        *self
            .zero_runs
            .get_or_insert_with(|| sparse::ZeroRuns::new(&self.chunker, &self.repo.keys))
    }

    /// Hands a chunk to the uploader.
    fn send(&self, id: ChunkId, data: Bytes) -> Result<(), WalkError> {
        self.tx
            .blocking_send(Upload { id, data })
            .map_err(|_| WalkError::Fatal(anyhow::anyhow!("the uploader stopped (see its error)")))
    }

    /// Hands an encoded tree (or tree part) to the uploader; returns its id.
    pub(super) fn store_blob(&mut self, encoded: Vec<u8>) -> anyhow::Result<ChunkId> {
        if encoded.len() > seal::MAX_PLAINTEXT {
            bail!(
                "a tree of {} bytes is too large for one blob",
                encoded.len()
            );
        }
        let id = self.repo.keys.chunk_id(&encoded);
        if encoded.len() <= PACK_ITEM_MAX {
            let mut pack = self
                .pack_with_room(encoded.len())
                .map_err(WalkError::into_anyhow)?;
            let start = pack.buf.len();
            pack.buf.extend_from_slice(&encoded);
            pack.items.push((id, start..pack.buf.len()));
            self.pack = Some(pack);
            return Ok(id);
        }
        let sent = self.reserve(encoded.len()).and_then(|permit| {
            let data = Bytes::from_owner(Pinned {
                data: encoded,
                _permit: permit,
            });
            self.send(id, data)
        });
        sent.map(|()| id).map_err(WalkError::into_anyhow)
    }

    /// A file's chunk list and the metadata that goes with it: from the
    /// index when its fingerprint is unchanged and its chunks are known to
    /// be stored (see the module docs), else by reading it, with the
    /// metadata of the `fstat` after a read that the file did not change
    /// during.
    pub(super) fn file(
        &mut self,
        path: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<(Vec<ChunkRef>, std::fs::Metadata), WalkError> {
        let key = path.as_os_str().as_bytes();
        let fence = self.fence_tag.unwrap_or(0);
        if let Some(rec) = self.index.get(key)
            && rec.same_file(&fingerprint(meta, Vec::new()))
            && rec.chunks.iter().all(|c| c.len.is_some())
        {
            let vouched = self.fence_tag == Some(rec.fence);
            if vouched || rec.chunks.iter().all(|c| self.confirmed.contains(&c.id)) {
                if !vouched {
                    // Confirmed under this fence: next time, no question.
                    let rec = FileRecord {
                        fence,
                        ..rec.clone()
                    };
                    self.updates.push(key, &rec).map_err(WalkError::Fatal)?;
                }
                return Ok((rec.chunks, meta.clone()));
            }
            tracing::debug!(path = %path.display(), "a chunk from the index is gone; reading again");
        }
        for _ in 0..READ_ATTEMPTS {
            let read_start = now_ns();
            let (chunks, before, after) = self.read_chunks(path)?;
            let read: u64 = chunks.iter().filter_map(|c| c.len).map(u64::from).sum();
            if fingerprint(&before, Vec::new()).same_file(&fingerprint(&after, Vec::new()))
                && read == after.len()
            {
                let (mtime_ns, _) = times(&after);
                let racy = mtime_ns >= read_start - RACY_WINDOW_NS;
                if !racy {
                    let mut rec = fingerprint(&after, chunks.clone());
                    rec.fence = fence;
                    self.updates.push(key, &rec).map_err(WalkError::Fatal)?;
                }
                return Ok((chunks, after));
            }
            tracing::debug!(path = %path.display(), "changed while read; reading again");
        }
        Err(WalkError::Skip(format!(
            "kept changing while read ({READ_ATTEMPTS} attempts)"
        )))
    }

    /// Reads, chunks and hands over a file; returns its chunks and its
    /// metadata before and after the read.
    fn read_chunks(
        &mut self,
        path: &Path,
    ) -> Result<(Vec<ChunkRef>, std::fs::Metadata, std::fs::Metadata), WalkError> {
        let mut f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let before = f.metadata()?;
        if !before.is_file() {
            return Err(WalkError::Skip("no longer a regular file".into()));
        }
        if before.len() <= PACK_ITEM_MAX as u64
            && let Some(chunks) = self.read_small(&mut f, before.len() as usize)?
        {
            let after = f.metadata()?;
            return Ok((chunks, before, after));
        }
        // Holes are not read: they come back as zeros, cut without the
        // chunker's work where they are long (see `sparse`).
        let holes = sparse::looks_sparse(&before);
        let mut reader = sparse::HoleReader::new(&f, 0, holes);
        let zeros = holes.then(|| self.zero_finder());
        // Each block: the tail of the last one that held no boundary yet,
        // then up to READ_BLOCK fresh bytes (a small file's whole size).
        let mut remaining = before.len();
        let mut carry = Bytes::new();
        let mut chunks = Vec::new();
        loop {
            // One byte past the expected size, to see the end without another
            // read; a file that grew since its stat is read on in full blocks.
            let expected = usize::try_from(remaining).unwrap_or(usize::MAX);
            let want = if expected == 0 {
                READ_BLOCK
            } else {
                expected.min(READ_BLOCK)
            } + 1;
            let permit = self.reserve(carry.len() + want)?;
            let mut block = Vec::with_capacity(carry.len() + want);
            block.extend_from_slice(&carry);
            // The old block's budget is released once its last chunk is.
            drop(std::mem::take(&mut carry));
            let took = reader.take_into(&mut block, want)?;
            let n = took.logical;
            let eof = n < want;
            remaining = remaining.saturating_sub(n as u64);
            self.counters
                .bytes_read
                .fetch_add(took.from_disk as u64, Ordering::Relaxed);
            let block_bytes = Bytes::from_owner(Pinned {
                data: block,
                _permit: permit,
            });
            let (mut offset, mut zero_end) = (0, 0);
            loop {
                let zero = zeros
                    .as_ref()
                    .and_then(|z| z.cut(&block_bytes, offset, &mut zero_end));
                let (len, id) = match zero {
                    Some(cut) => cut,
                    None => match self.chunker.cut(&block_bytes[offset..], eof) {
                        Some(len) => {
                            let id = self.repo.keys.chunk_id(&block_bytes[offset..offset + len]);
                            (len, id)
                        }
                        None => break,
                    },
                };
                let data = block_bytes.slice(offset..offset + len);
                offset += len;
                self.send(id, data)?;
                chunks.push(chunk_ref(id, len));
            }
            if eof {
                break;
            }
            carry = block_bytes.slice(offset..);
        }
        let after = f.metadata()?;
        Ok((chunks, before, after))
    }
}

fn fingerprint(m: &std::fs::Metadata, chunks: Vec<ChunkRef>) -> FileRecord {
    let (mtime_ns, ctime_ns) = times(m);
    FileRecord {
        size: m.len(),
        mtime_ns,
        ctime_ns,
        inode: m.ino(),
        device: m.dev(),
        chunks,
        fence: 0,
    }
}

/// A chunk cut by the chunker (whose chunks are at most 16 MiB, so the
/// length fits).
fn chunk_ref(id: ChunkId, len: usize) -> ChunkRef {
    ChunkRef {
        id,
        len: u32::try_from(len).ok(),
    }
}
