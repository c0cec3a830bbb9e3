//! Content-defined chunking of a byte stream with FastCDC (v2020).
//!
//! [`Chunker`] reads its source in large blocks into one reusable buffer (`4 * max_size`, at
//! least 8 MiB) and cuts it with `fastcdc::v2020`. Memory is bounded by that buffer whatever the
//! volume's size. A cut found by FastCDC depends only on the bytes from the chunk's start to the
//! cut, so the last cut inside a buffer (which may be forced by the buffer's end) is discarded and
//! recomputed after the next refill; the result is identical to chunking the whole stream at once
//! (a proptest below holds it to that).
use std::collections::VecDeque;
use std::io::{ErrorKind, Read};

use fastcdc::v2020::FastCDC;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// FastCDC size parameters, in bytes. Part of a store's config: changing them breaks dedup
/// against older backups (not correctness).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 8 KiB / 32 KiB / 128 KiB: chosen by measurement, see ARCHITECTURE.md ("Chunk sizes").
    fn default() -> Self {
        ChunkerParams {
            min_size: 8 * 1024,
            avg_size: 32 * 1024,
            max_size: 128 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Checks the limits FastCDC v2020 accepts and `min <= avg <= max`.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min_size)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg_size)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size;
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "chunker sizes",
                format!(
                    "{self:?}: need {MINIMUM_MIN}..={MINIMUM_MAX} min, {AVERAGE_MIN}..={AVERAGE_MAX} avg, \
                     {MAXIMUM_MIN}..={MAXIMUM_MAX} max and min <= avg <= max"
                ),
            ))
        }
    }

    /// Cuts an in-memory buffer in one pass; the reference the streaming chunker must match.
    pub fn cut_all(&self, data: &[u8]) -> Vec<(usize, usize)> {
        FastCDC::new(data, self.min_size, self.avg_size, self.max_size)
            .map(|c| (c.offset, c.length))
            .collect()
    }
}

/// One chunk cut from the stream.
#[derive(Debug)]
pub struct RawChunk {
    /// Offset of the chunk's first byte in the volume.
    pub offset: u64,
    /// The chunk's bytes (owned: it travels to a worker thread).
    pub data: Vec<u8>,
}

/// True when every byte of `data` is zero. Checks 4 KiB at a time so the inner loop vectorizes
/// and a non-zero block ends the scan early.
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Streaming FastCDC chunker over any [`Read`].
pub struct Chunker<R> {
    reader: R,
    params: ChunkerParams,
    buf: Vec<u8>,
    /// Valid bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
    /// Volume offset of `buf[start]`.
    offset: u64,
    /// Pending cuts as lengths, starting at `start`.
    cuts: VecDeque<usize>,
}

impl<R: Read> Chunker<R> {
    /// A chunker over `reader`. Fails if `params` are out of FastCDC's range.
    pub fn new(reader: R, params: ChunkerParams) -> Result<Self> {
        let cap = (params.max_size as usize * 4).max(8 << 20);
        Self::with_capacity(reader, params, cap)
    }

    /// A chunker with a read buffer of `capacity` bytes (at least `2 * max_size`).
    pub fn with_capacity(reader: R, params: ChunkerParams, capacity: usize) -> Result<Self> {
        params.validate()?;
        if capacity < 2 * params.max_size as usize {
            return Err(Error::invalid(
                "chunker buffer",
                format!("{capacity} bytes is less than twice the maximum chunk size"),
            ));
        }
        let cap = capacity;
        Ok(Chunker {
            reader,
            params,
            buf: vec![0; cap],
            start: 0,
            end: 0,
            eof: false,
            offset: 0,
            cuts: VecDeque::new(),
        })
    }

    /// Starts over on a new reader, keeping the buffer (no reallocation). Offsets restart at 0.
    pub fn reset(&mut self, reader: R) {
        self.reader = reader;
        self.start = 0;
        self.end = 0;
        self.eof = false;
        self.offset = 0;
        self.cuts.clear();
    }

    /// Moves the unconsumed tail to the front and reads until the buffer is full or EOF.
    fn fill(&mut self) -> std::io::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < self.buf.len() && !self.eof {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<RawChunk>> {
        Ok(self.next_slice()?.map(|(offset, data)| RawChunk {
            offset,
            data: data.to_vec(),
        }))
    }

    /// The next chunk as a borrowed slice with its volume offset, or `None` at the end. Lets
    /// the caller look at a chunk (an all-zero one, say) before deciding to copy it.
    pub fn next_slice(&mut self) -> std::io::Result<Option<(u64, &[u8])>> {
        loop {
            if let Some(len) = self.cuts.pop_front() {
                let (start, offset) = (self.start, self.offset);
                self.start += len;
                self.offset += len as u64;
                return Ok(Some((offset, &self.buf[start..start + len])));
            }
            if !self.eof {
                self.fill()?;
            }
            if self.start == self.end {
                return Ok(None);
            }
            let window = &self.buf[self.start..self.end];
            let p = self.params;
            self.cuts
                .extend(FastCDC::new(window, p.min_size, p.avg_size, p.max_size).map(|c| c.length));
            if !self.eof {
                // The last cut may be forced by the buffer's end rather than the content; the
                // buffer holds >= 4 max-size chunks, so at least one real cut remains.
                self.cuts.pop_back();
            }
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<RawChunk>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that returns at most `step` bytes per call, to exercise refills.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 256,
            avg_size: 1024,
            max_size: 4096,
        }
    }

    fn stream_cuts(data: &[u8], p: ChunkerParams, step: usize) -> Vec<(usize, usize)> {
        stream_cuts_cap(data, p, step, 8 << 20)
    }

    fn stream_cuts_cap(
        data: &[u8],
        p: ChunkerParams,
        step: usize,
        cap: usize,
    ) -> Vec<(usize, usize)> {
        let c = Chunker::with_capacity(Trickle { data, step }, p, cap).unwrap();
        c.map(|r| {
            let r = r.unwrap();
            (r.offset as usize, r.data.len())
        })
        .collect()
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn empty_stream_has_no_chunks() {
        assert!(stream_cuts(&[], small(), 7).is_empty());
    }

    #[test]
    fn streaming_matches_one_shot_across_many_refills() {
        // 20 MiB with default params: more than two 8 MiB buffers.
        let data = pseudo_random(20 << 20, 42);
        let p = ChunkerParams::default();
        let one_shot = p.cut_all(&data);
        assert_eq!(stream_cuts(&data, p, 1 << 20), one_shot);
        assert_eq!(one_shot.iter().map(|c| c.1).sum::<usize>(), data.len());
    }

    #[test]
    fn invalid_params_are_refused() {
        let p = ChunkerParams {
            min_size: 8192,
            avg_size: 4096,
            max_size: 65536,
        };
        assert!(p.validate().is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn chunker_is_deterministic_and_matches_one_shot(
            len in 0usize..40_000, seed in any::<u64>(), step in 1usize..5000,
            cap in 8192usize..20_000
        ) {
            let data = pseudo_random(len, seed);
            let p = small();
            let a = stream_cuts_cap(&data, p, step, cap);
            let b = stream_cuts(&data, p, 4096);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a, p.cut_all(&data));
        }
    }
}
