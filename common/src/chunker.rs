//! Content-defined chunking with FastCDC (Xia et al., "The Design of Fast
//! Content-Defined Chunking for Data Deduplication Based Storage Systems",
//! IEEE TPDS 2020), through the `fastcdc` crate's 2020 cut function.
//!
//! [`Chunker`] is push-based: the caller keeps a buffer that starts at a chunk
//! boundary, asks [`Chunker::cut`] where the chunk ends, and refills. A
//! boundary is only reported once more data cannot move it, so boundaries do
//! not depend on how the input was split into reads (a property test checks
//! this).

use fastcdc::v2020::{self, Normalization};
use serde::{Deserialize, Serialize};

/// Chunk size settings, fixed for a repository at `init` (they decide every
/// boundary, so changing them would defeat deduplication).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk, bytes (except a file's last).
    pub min_size: u32,
    /// Target average, bytes (FastCDC achieves 1.2-1.7x this on real files).
    pub avg_size: u32,
    /// Largest chunk, bytes.
    pub max_size: u32,
    /// FastCDC normalization level (0-3).
    pub normalization: u8,
}

impl Default for ChunkerParams {
    /// 512 KiB / 1 MiB / 8 MiB, restic's sizes, normalization level 1.
    fn default() -> Self {
        Self {
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 8 * 1024 * 1024,
            normalization: 1,
        }
    }
}

/// Chunker settings outside what FastCDC accepts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid chunker settings {0:?}: sizes must be even, min in 64..=1MiB, avg in 256..=4MiB, max in 1KiB..=16MiB, min <= avg <= max, level <= 3"
)]
pub struct ChunkerParamsError(pub ChunkerParams);

impl ChunkerParams {
    /// Checks the bounds FastCDC asserts only in debug builds.
    ///
    /// # Errors
    /// [`ChunkerParamsError`] when out of bounds.
    pub fn validate(&self) -> Result<(), ChunkerParamsError> {
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0
            && self.normalization <= 3;
        if ok {
            Ok(())
        } else {
            Err(ChunkerParamsError(*self))
        }
    }
}

/// A FastCDC 2020 chunker with fixed settings.
#[derive(Clone, Debug)]
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    masks: (u64, u64),
}

impl Chunker {
    /// Makes a chunker.
    ///
    /// # Errors
    /// [`ChunkerParamsError`] for settings out of bounds.
    pub fn new(params: ChunkerParams) -> Result<Self, ChunkerParamsError> {
        params.validate()?;
        let level = match params.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        Ok(Self {
            min: params.min_size as usize,
            avg: params.avg_size as usize,
            max: params.max_size as usize,
            masks: v2020::select_masks(params.avg_size as usize, level),
        })
    }

    /// Largest chunk, bytes: a buffer holding this much past a chunk start
    /// always lets [`Chunker::cut`] decide.
    pub fn max_size(&self) -> usize {
        self.max
    }

    /// Where the chunk starting at `data[0]` ends, as a length.
    ///
    /// A boundary found inside `data` is final: FastCDC takes the first
    /// position past `min` whose rolling hash matches, so more input cannot
    /// move it. When none is found, the chunk ends at `max` if `data` holds
    /// that much, at the end of `data` if `eof`; otherwise more input is
    /// needed and the answer is `None`. Empty data has no chunk.
    pub fn cut(&self, data: &[u8], eof: bool) -> Option<usize> {
        if data.is_empty() {
            return None;
        }
        let window = &data[..data.len().min(self.max)];
        let (mask_s, mask_l) = self.masks;
        let (_, len) = v2020::cut(
            window,
            self.min,
            self.avg,
            self.max,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        let len = len.clamp(1, window.len());
        (len < window.len() || window.len() == self.max || eof).then_some(len)
    }

    /// Cuts a whole in-memory buffer (a file that fits in memory) into chunk
    /// lengths.
    pub fn split<'a>(&'a self, mut data: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        std::iter::from_fn(move || {
            let len = self.cut(data, true)?;
            let (chunk, rest) = data.split_at(len);
            data = rest;
            Some(chunk)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> Chunker {
        Chunker::new(ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            normalization: 1,
        })
        .unwrap()
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Pushes `data` through the chunker in reads of the given sizes, the way
    /// the agent does, and returns chunk lengths.
    fn streamed(c: &Chunker, data: &[u8], reads: &[usize]) -> Vec<usize> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut r = 0;
        loop {
            let eof = pos == data.len();
            while let Some(n) = c.cut(&buf, eof) {
                out.push(n);
                buf.drain(..n);
            }
            if eof {
                return out;
            }
            let step = reads[r % reads.len()].max(1).min(data.len() - pos);
            r += 1;
            buf.extend_from_slice(&data[pos..pos + step]);
            pos += step;
        }
    }

    #[test]
    fn golden_boundaries() {
        // A change here changes every repository's deduplication: review it.
        let data = pseudo_random(200_000, 42);
        let lens: Vec<usize> = small().split(&data).map(<[u8]>::len).collect();
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        assert_eq!(lens, GOLDEN, "chunk boundaries changed");
    }

    const GOLDEN: &[usize] = &[
        8293, 4190, 4951, 2538, 8961, 2583, 7439, 6096, 2917, 4191, 2227, 3694, 5995, 1762, 6424,
        5092, 5364, 3120, 6847, 4393, 10156, 4099, 4869, 1774, 11074, 5353, 6885, 5940, 5086, 6285,
        2054, 5319, 4002, 4415, 1435, 1980, 4634, 1144, 4164, 6823, 5312, 120,
    ];

    #[test]
    fn rejects_bad_params() {
        let odd = ChunkerParams {
            avg_size: 3,
            ..ChunkerParams::default()
        };
        assert!(Chunker::new(odd).is_err());
        let huge = ChunkerParams {
            max_size: 64 * 1024 * 1024,
            ..ChunkerParams::default()
        };
        assert!(Chunker::new(huge).is_err());
    }

    proptest! {
        #[test]
        fn boundaries_do_not_depend_on_reads(seed in any::<u64>(), len in 0usize..120_000,
                                              reads in proptest::collection::vec(1usize..40_000, 1..8)) {
            let c = small();
            let data = pseudo_random(len, seed);
            let whole: Vec<usize> = c.split(&data).map(<[u8]>::len).collect();
            prop_assert_eq!(streamed(&c, &data, &reads), whole.clone());
            prop_assert_eq!(whole.iter().sum::<usize>(), len);
            prop_assert!(whole.iter().all(|&n| n <= 16384));
        }
    }
}
