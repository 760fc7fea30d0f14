//! The write-back buffer of one file: its unsynced 4 KiB pages and its
//! logical size, over the durable (backing) file.
//!
//! A write copies its bytes into whole pages, reading the rest of each page
//! from the backing file the first time it is touched (read-modify-write,
//! as a page cache does; bytes past the backing file's end read as zeros).
//! Reads see the dirty pages over the backing file, up to the logical size.
//! [`Dirty::persist`] writes every page back and sets the length (what an
//! fsync makes durable); [`Dirty::persist_some`] writes only the pages a
//! chooser picks, each page whole or not at all, and extends the file only
//! as far as the pages written reach (what a power loss may leave when the
//! disk had already taken some of the page cache, in any order).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes per page: the unit that is written back (or lost) whole.
pub const PAGE: u64 = 4096;

/// The unsynced state of one file; see the module docs.
#[derive(Debug)]
pub struct Dirty {
    /// Page index to its [`PAGE`] bytes.
    pages: BTreeMap<u64, Box<[u8]>>,
    /// What `stat` shows: the durable size, grown by writes and set by
    /// truncates.
    size: u64,
}

impl Dirty {
    /// No dirty pages over a backing file of `durable_size` bytes.
    pub fn new(durable_size: u64) -> Self {
        Self {
            pages: BTreeMap::new(),
            size: durable_size,
        }
    }

    /// The logical size, bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Dirty pages held.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Buffers `data` at byte `offset`.
    ///
    /// # Errors
    /// When a page cannot be read from `backing`.
    pub fn write(&mut self, backing: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let (index, within) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - within).min(data.len() - done);
            let page = match self.pages.entry(index) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(read_page(backing, index, self.size)?)
                }
            };
            page[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        self.size = self.size.max(offset + data.len() as u64);
        Ok(())
    }

    /// Up to `len` bytes from byte `offset`, stopping at the logical size.
    ///
    /// # Errors
    /// When `backing` cannot be read.
    pub fn read(&self, backing: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let end = self.size.min(offset.saturating_add(len as u64));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let (index, within) = (pos / PAGE, (pos % PAGE) as usize);
            let n = ((PAGE as usize - within) as u64).min(end - pos) as usize;
            match self.pages.get(&index) {
                Some(page) => out.extend_from_slice(&page[within..within + n]),
                None => {
                    let page = read_page(backing, index, self.size)?;
                    out.extend_from_slice(&page[within..within + n]);
                }
            }
            pos += n as u64;
        }
        Ok(out)
    }

    /// Sets the logical size to `len` (the backing file is truncated by
    /// the caller): pages past it go, and the bytes past it in the last
    /// page read as zeros if the file grows again.
    pub fn truncate(&mut self, len: u64) {
        self.pages.retain(|&index, _| index * PAGE < len);
        if let Some(page) = self.pages.get_mut(&(len / PAGE)) {
            page[(len % PAGE) as usize..].fill(0);
        }
        self.size = len;
    }

    /// Writes every dirty page to `backing` and sets its length to the
    /// logical size; returns the pages written.
    ///
    /// # Errors
    /// When `backing` cannot be written.
    pub fn persist(&self, backing: &File) -> io::Result<u64> {
        let written = self.persist_some(backing, |_| true)?;
        if backing.metadata()?.len() != self.size {
            backing.set_len(self.size)?;
        }
        Ok(written)
    }

    /// Writes the dirty pages `keep` picks (called once per page, in page
    /// order) to `backing`, each whole up to the logical size; the file
    /// grows only as far as those reach. Returns the pages written.
    ///
    /// # Errors
    /// When `backing` cannot be written.
    pub fn persist_some(
        &self,
        backing: &File,
        mut keep: impl FnMut(u64) -> bool,
    ) -> io::Result<u64> {
        let mut written = 0;
        for (&index, page) in &self.pages {
            if !keep(index) {
                continue;
            }
            let start = index * PAGE;
            let n = self.size.saturating_sub(start).min(PAGE) as usize;
            if n > 0 {
                backing.write_all_at(&page[..n], start)?;
                written += 1;
            }
        }
        Ok(written)
    }
}

/// Page `index` as the backing file holds it, zeros past its end or past
/// `size`.
fn read_page(backing: &File, index: u64, size: u64) -> io::Result<Box<[u8]>> {
    let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
    let start = index * PAGE;
    let want = size.saturating_sub(start).min(PAGE) as usize;
    let mut got = 0;
    while got < want {
        match backing.read_at(&mut page[got..want], start + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (dir, f)
    }

    fn contents(f: &File) -> Vec<u8> {
        let len = f.metadata().unwrap().len() as usize;
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn writes_stay_in_memory_until_persisted() {
        let (_d, f) = file_with(b"durable");
        let mut d = Dirty::new(7);
        d.write(&f, 5, b"ABCDEFGH").unwrap();
        assert_eq!(d.size(), 13);
        assert_eq!(d.read(&f, 0, 100).unwrap(), b"durabABCDEFGH");
        assert_eq!(contents(&f), b"durable", "nothing reached the file");
        assert_eq!(d.persist(&f).unwrap(), 1);
        assert_eq!(contents(&f), b"durabABCDEFGH");
    }

    #[test]
    fn a_write_spanning_pages_reads_back_and_persists_whole() {
        let (_d, f) = file_with(b"");
        let mut d = Dirty::new(0);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        d.write(&f, 3000, &data).unwrap();
        assert_eq!(d.pages(), 4, "bytes 3000..13000 touch pages 0..=3");
        let back = d.read(&f, 0, 20_000).unwrap();
        assert_eq!(back.len(), 13_000);
        assert!(back[..3000].iter().all(|&b| b == 0));
        assert_eq!(&back[3000..], &data[..]);
        d.persist(&f).unwrap();
        assert_eq!(contents(&f), back);
    }

    #[test]
    fn persisting_some_pages_leaves_holes_and_a_short_file() {
        let (_d, f) = file_with(b"");
        let mut d = Dirty::new(0);
        d.write(&f, 0, &vec![7u8; 3 * PAGE as usize]).unwrap();
        // Only the middle page reaches the disk.
        assert_eq!(d.persist_some(&f, |i| i == 1).unwrap(), 1);
        let got = contents(&f);
        assert_eq!(got.len(), 2 * PAGE as usize);
        assert!(got[..PAGE as usize].iter().all(|&b| b == 0));
        assert!(got[PAGE as usize..].iter().all(|&b| b == 7));
    }

    #[test]
    fn truncate_drops_pages_and_zeroes_the_tail_of_the_last() {
        let (_d, f) = file_with(b"");
        let mut d = Dirty::new(0);
        d.write(&f, 0, &vec![1u8; 2 * PAGE as usize]).unwrap();
        d.truncate(100);
        assert_eq!(d.pages(), 1);
        d.write(&f, 200, b"x").unwrap();
        let back = d.read(&f, 0, 1000).unwrap();
        assert_eq!(back.len(), 201);
        assert!(back[..100].iter().all(|&b| b == 1));
        assert!(back[100..200].iter().all(|&b| b == 0));
        assert_eq!(back[200], b'x');
    }
}
