//! Reading a file without reading its holes.
//!
//! A sparse file (a disk image, a database's preallocated table) may be
//! mostly holes: ranges with no blocks on disk, which read as zeros. The
//! kernel says where they are: `lseek(SEEK_DATA)` finds the next byte that
//! is not in a hole, `lseek(SEEK_HOLE)` the next one that is (the end of
//! the file counts as one). [`HoleReader`] asks, reads the data ranges and
//! makes the holes' zeros in memory, so the bytes it yields are exactly
//! what `read` would yield (the chunks, their ids and the dedup do not
//! change) while a 1 GiB file with 12 KiB of data costs 12 KiB of reads.
//! Where the file system cannot tell (`EINVAL`), the kernel's generic
//! answer (all data, one hole at the end) or a refusal make it read
//! everything, as before. Restore writes long zero runs as holes again
//! (`restore::target::write_sparse`), so the round trip stays sparse.
//!
//! The file may change while it is read; the caller compares its metadata
//! before and after and reads again when it did, as for a plain read.
//!
//! The zeros are then cut and hashed like any bytes, but for long runs
//! [`ZeroRuns`] spares that work too: [`Chunker::cut`] looks at no more
//! than the chunker's largest chunk past a chunk's start, so wherever that
//! much is zero the chunk is the one a window of zeros gives, computed
//! once, with its id. Checking for zeros is a `memcmp`, far cheaper than
//! the rolling hash and the keyed hash it replaces.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use ringvault_common::ChunkId;
use ringvault_common::chunker::Chunker;
use ringvault_common::keys::RepoKeys;
use rustix::io::Errno;

/// Whether `meta` looks sparse: fewer bytes allocated than its length.
/// Only such files are worth asking about holes (two more system calls per
/// data range).
pub(super) fn looks_sparse(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.blocks().saturating_mul(512) < meta.len()
}

/// Bytes taken from a [`HoleReader`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Took {
    /// Bytes appended, data and holes' zeros alike.
    pub logical: usize,
    /// Of those, bytes read from the file (not holes' zeros).
    pub from_disk: usize,
}

/// Reads a file from an offset on, yielding holes as zeros without reading
/// them (see the module notes).
pub(super) struct HoleReader<'a> {
    file: &'a File,
    /// The next byte to yield, from the file's start.
    pos: u64,
    /// What is known about the bytes from `pos` on.
    region: Region,
    /// Whether to ask the file system about holes at all.
    probe: bool,
}

/// What [`HoleReader`] knows about the bytes at its position.
#[derive(Clone, Copy, Debug)]
enum Region {
    /// Nothing yet: ask.
    Unknown,
    /// Data up to this offset (exclusive).
    Data(u64),
    /// A hole up to this offset (exclusive).
    Hole(u64),
}

impl<'a> HoleReader<'a> {
    /// A reader of `file` from offset `pos`; `probe` false reads every
    /// byte (a file that does not look sparse, see [`looks_sparse`]).
    pub(super) fn new(file: &'a File, pos: u64, probe: bool) -> Self {
        Self {
            file,
            pos,
            region: Region::Unknown,
            probe,
        }
    }

    /// Appends up to `want` bytes to `buf`; fewer only at the end of the
    /// file (or where it was cut short while being read).
    ///
    /// # Errors
    /// The read's or the seek's I/O error.
    pub(super) fn take_into(&mut self, buf: &mut Vec<u8>, want: usize) -> std::io::Result<Took> {
        let mut took = Took::default();
        while took.logical < want {
            let left = (want - took.logical) as u64;
            match self.region() {
                Region::Data(end) if end > self.pos => {
                    let n = (end - self.pos).min(left);
                    // The probes moved the file's offset: put it back.
                    let mut f = self.file;
                    f.seek(SeekFrom::Start(self.pos))?;
                    // Into spare capacity: no zeroing of what the read fills.
                    let got = f.take(n).read_to_end(buf)?;
                    self.pos += got as u64;
                    took.logical += got;
                    took.from_disk += got;
                    if (got as u64) < n {
                        // The end of the file came early: it shrank.
                        break;
                    }
                }
                Region::Hole(end) if end > self.pos => {
                    let n = (end - self.pos).min(left);
                    // Bounded by `want`, a usize.
                    let n = n as usize;
                    buf.resize(buf.len() + n, 0);
                    self.pos += n as u64;
                    took.logical += n;
                }
                // At the end of the file.
                _ => break,
            }
        }
        Ok(took)
    }

    /// The region at `pos`, asking the file system when it is not known.
    fn region(&mut self) -> Region {
        let known = match self.region {
            Region::Data(end) | Region::Hole(end) => end > self.pos,
            Region::Unknown => false,
        };
        if !known {
            self.region = self.probe_at(self.pos);
        }
        self.region
    }

    /// What is at `pos`: data up to the next hole, a hole up to the next
    /// data, or (at or past the end) an empty region.
    fn probe_at(&mut self, pos: u64) -> Region {
        if !self.probe {
            return Region::Data(u64::MAX);
        }
        match rustix::fs::seek(self.file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(data) if data > pos => Region::Hole(data),
            Ok(_) => match rustix::fs::seek(self.file, rustix::fs::SeekFrom::Hole(pos)) {
                Ok(hole) if hole > pos => Region::Data(hole),
                // Cannot be (pos is data); read it plainly.
                _ => self.give_up(),
            },
            // No data at or after `pos`: a hole up to the end, or the end.
            Err(Errno::NXIO) => match self.file.metadata() {
                Ok(m) if m.len() > pos => Region::Hole(m.len()),
                Ok(_) => Region::Hole(pos),
                Err(_) => self.give_up(),
            },
            // The file system does not know (or refuses): read everything.
            Err(_) => self.give_up(),
        }
    }

    /// Reads every byte from now on.
    fn give_up(&mut self) -> Region {
        self.probe = false;
        Region::Data(u64::MAX)
    }
}

/// Compared against, to find zeros: 64 KiB.
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// The chunk that starts a run of zeros at least as long as the chunker's
/// largest chunk (see the module notes).
#[derive(Clone, Copy, Debug)]
pub(super) struct ZeroRuns {
    /// The chunker's largest chunk, bytes.
    max: usize,
    /// The length [`Chunker::cut`] gives for a window of `max` zeros.
    len: usize,
    /// That chunk's id.
    id: ChunkId,
}

impl ZeroRuns {
    /// Cuts and hashes one window of zeros (the chunker's largest chunk:
    /// 8 MiB by default) to know the chunk.
    pub(super) fn new(chunker: &Chunker, keys: &RepoKeys) -> Self {
        let max = chunker.max_size();
        let zeros = vec![0u8; max];
        // A window of `max` bytes always lets `cut` decide; the fallback
        // (the whole window) is what it would answer then anyway.
        let len = chunker.cut(&zeros, false).unwrap_or(max);
        Self {
            max,
            len,
            id: keys.chunk_id(&zeros[..len]),
        }
    }

    /// The chunk starting at `block[at]`, when the `max` bytes from there
    /// are all zero: its length and id, as [`Chunker::cut`] and the keyed
    /// hash would give them. `zero_end` carries, from one call to the next
    /// on the same block, how far the block is known to hold zeros, so
    /// that each byte is checked about once.
    pub(super) fn cut(
        &self,
        block: &[u8],
        at: usize,
        zero_end: &mut usize,
    ) -> Option<(usize, ChunkId)> {
        let need = at.checked_add(self.max)?;
        if block.len() < need {
            return None;
        }
        let mut from = (*zero_end).max(at);
        while from < need {
            let to = (from + ZEROS.len()).min(need);
            if block[from..to] != ZEROS[..to - from] {
                *zero_end = from;
                return None;
            }
            from = to;
        }
        *zero_end = need;
        Some((self.len, self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringvault_common::chunker::ChunkerParams;
    use std::os::unix::fs::{FileExt, MetadataExt};

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    /// Reads all of `f` through a [`HoleReader`] in takes of `step` bytes.
    fn read_all(f: &File, probe: bool, step: usize) -> (Vec<u8>, usize) {
        let mut r = HoleReader::new(f, 0, probe);
        let (mut out, mut disk) = (Vec::new(), 0);
        loop {
            let took = r.take_into(&mut out, step).unwrap();
            disk += took.from_disk;
            if took.logical < step {
                return (out, disk);
            }
        }
    }

    #[test]
    fn holes_come_back_as_zeros_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        // 64 MiB: 4 KiB of data at 1 MiB and at 40 MiB + 123, a trailing hole.
        let size = 64u64 << 20;
        let (a, b) = (pattern(4096, 1), pattern(4096, 2));
        f.write_all_at(&a, 1 << 20).unwrap();
        f.write_all_at(&b, (40 << 20) + 123).unwrap();
        f.set_len(size).unwrap();
        let meta = f.metadata().unwrap();
        let mut expected = vec![0u8; size as usize];
        expected[1 << 20..(1 << 20) + 4096].copy_from_slice(&a);
        expected[(40 << 20) + 123..(40 << 20) + 123 + 4096].copy_from_slice(&b);

        for step in [1 << 20, 4 << 20, 12345] {
            let (plain, disk) = read_all(&f, false, step);
            assert!(plain == expected, "a plain read differs (step {step})");
            assert_eq!(disk, size as usize);
            let (holey, disk) = read_all(&f, true, step);
            assert!(holey == expected, "a hole-aware read differs (step {step})");
            if meta.blocks() * 512 < 1 << 20 {
                // The file system keeps holes: only the data blocks are read.
                assert!(disk < 1 << 20, "{disk} bytes read for 8 KiB of data");
                assert!(looks_sparse(&meta));
            } else {
                eprintln!("the temp directory's file system keeps no holes");
            }
        }
    }

    #[test]
    fn a_dense_file_and_an_empty_one_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dense");
        let data = pattern(3 << 20, 7);
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        assert!(!looks_sparse(&f.metadata().unwrap()));
        let (read, disk) = read_all(&f, true, 1 << 20);
        assert!(read == data);
        assert_eq!(disk, data.len());

        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let f = File::open(&empty).unwrap();
        assert_eq!(read_all(&f, true, 100), (Vec::new(), 0));
    }

    #[test]
    fn reading_starts_at_the_offset_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all_at(b"abc", 10 << 20).unwrap();
        let mut r = HoleReader::new(&f, (10 << 20) - 2, true);
        let mut out = Vec::new();
        let took = r.take_into(&mut out, 100).unwrap();
        assert_eq!(out, b"\0\0abc");
        assert_eq!(took.logical, 5);
    }

    #[test]
    fn zero_runs_cut_and_name_chunks_as_the_chunker_and_the_hash_do() {
        let keys = RepoKeys::derive(&ringvault_common::keys::MasterKey::from_bytes([3; 32]));
        for avg in [4096u32, 8192] {
            let chunker = Chunker::new(ChunkerParams {
                min_size: avg / 4,
                avg_size: avg,
                max_size: avg * 4,
                ..ChunkerParams::default()
            })
            .unwrap();
            let zeros = ZeroRuns::new(&chunker, &keys);
            // Data, zero runs of every length around the largest chunk,
            // data between them, a trailing run.
            let mut data = pattern(10_000, 1);
            for (i, run) in [1, 100, 4 * avg - 1, 4 * avg, 4 * avg + 1, 40 * avg + 7]
                .iter()
                .enumerate()
            {
                data.resize(data.len() + *run as usize, 0);
                data.extend_from_slice(&pattern(3000 + i * 977, i as u8 + 2));
            }
            data.resize(data.len() + 30 * avg as usize, 0);
            let expected: Vec<(usize, ChunkId)> = chunker
                .split(&data)
                .map(|c| (c.len(), keys.chunk_id(c)))
                .collect();
            let (mut got, mut at, mut zero_end, mut fast) = (Vec::new(), 0, 0, 0);
            while at < data.len() {
                let cut = match zeros.cut(&data, at, &mut zero_end) {
                    Some(c) => {
                        fast += 1;
                        c
                    }
                    None => {
                        let len = chunker.cut(&data[at..], true).unwrap();
                        (len, keys.chunk_id(&data[at..at + len]))
                    }
                };
                got.push(cut);
                at += cut.0;
            }
            assert!(got == expected, "avg {avg}: the chunks differ");
            assert!(fast > 10, "avg {avg}: the zero runs were cut the slow way");
        }
    }
}
