//! Restore output: decoded chunks are gathered into aligned segments of [`SEGMENT`] bytes, and a
//! whole segment is written at once, with `O_DIRECT` where the target allows it.
//!
//! Why: a restore writes every byte of the volume once and never reads it back. Through the page
//! cache that costs a copy into the cache, page allocation and write-back work per 4 KiB, which on
//! this class of machine is several times the CPU of everything else in the kernel path (see
//! ARCHITECTURE.md, "Restore"). Chunks have arbitrary sizes and offsets, so they cannot be written
//! with `O_DIRECT` one by one; assembled into 4 KiB-aligned segments they can.
//!
//! Every byte of a live segment is set exactly once, by a chunk copied in (workers) or by a hole
//! zeroed (the manifest reader); the thread that sets the last byte hands the segment to the
//! writer. Holes of a new (sparse) target are not written: only the data runs of a segment are,
//! widened to 4 KiB boundaries (the widened part holds zeros, which is what the file reads there
//! anyway). Whole segments of holes are skipped for a new file and go through [`Target::zero`]
//! otherwise (a punched hole, or zeros on a block device). The last partial 4 KiB block of the
//! restored range is written through the page cache, so nothing beyond the backup's size is ever
//! touched, on a larger device included.
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::device::Target;
use crate::error::{Error, Result};

/// Bytes per segment (a multiple of [`ALIGN`]).
pub(crate) const SEGMENT: u64 = 4 << 20;
/// Alignment of `O_DIRECT` offsets, lengths and buffers.
const ALIGN: u64 = 4096;
/// Spare segment buffers kept for reuse.
const POOL: usize = 12;
/// Start write-back after this many bytes written through the page cache.
const WRITEBACK_EVERY: u64 = 64 << 20;

/// A zero-initialised buffer whose usable part starts on an [`ALIGN`] boundary.
pub(crate) struct AlignedBuf {
    raw: Vec<u8>,
    at: usize,
}

impl AlignedBuf {
    fn new() -> AlignedBuf {
        let raw = vec![0u8; (SEGMENT + ALIGN) as usize];
        // Moving the Vec does not move its heap allocation, so the offset stays valid.
        let at = raw.as_ptr().align_offset(ALIGN as usize);
        AlignedBuf { raw, at }
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.at..self.at + SEGMENT as usize]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.at..self.at + SEGMENT as usize]
    }
}

/// A segment being filled.
pub(crate) struct Segment {
    index: u64,
    /// Bytes not set yet.
    remaining: u64,
    buf: AlignedBuf,
    /// Ranges (segment-relative) to write: data, and holes unless the target is sparse.
    runs: Vec<(u64, u64)>,
}

/// Gathers a restore's output into segments; see the module docs.
pub(crate) struct Assembler<'t> {
    target: &'t Target,
    /// The restored range is `[0, size)`.
    size: u64,
    /// Holes are left unwritten (a new, sparse file).
    sparse: bool,
    /// A second handle on the target opened with `O_DIRECT`, while it works.
    direct: Option<File>,
    direct_failed: AtomicBool,
    live: Mutex<HashMap<u64, Segment>>,
    pool: Mutex<Vec<AlignedBuf>>,
    buffered: AtomicU64,
}

impl<'t> Assembler<'t> {
    pub(crate) fn new(target: &'t Target, size: u64) -> Assembler<'t> {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&target.path)
            .map_err(|e| tracing::debug!(error = %e, "no O_DIRECT on the restore target"))
            .ok();
        Assembler {
            target,
            size,
            sparse: target.created,
            direct,
            direct_failed: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            pool: Mutex::new(Vec::new()),
            buffered: AtomicU64::new(0),
        }
    }

    fn segment_len(&self, index: u64) -> u64 {
        SEGMENT.min(self.size - index * SEGMENT)
    }

    /// Sets `[offset, offset + len)` in the segments it covers: `fill(dst, at)` fills `dst`, the
    /// covered part of one segment, whose first byte is byte `at` of the range. Completed
    /// segments go to `done`.
    fn set(
        &self,
        offset: u64,
        len: u64,
        is_data: bool,
        done: &Sender<Segment>,
        mut fill: impl FnMut(&mut [u8], u64),
    ) {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let index = at / SEGMENT;
            let seg_start = index * SEGMENT;
            let to = (end - seg_start).min(self.segment_len(index));
            let from = at - seg_start;
            let complete = {
                let mut live = self.live.lock();
                let seg = live.entry(index).or_insert_with(|| Segment {
                    index,
                    remaining: self.segment_len(index),
                    buf: self.pool.lock().pop().unwrap_or_else(AlignedBuf::new),
                    runs: Vec::new(),
                });
                fill(
                    &mut seg.buf.bytes_mut()[from as usize..to as usize],
                    at - offset,
                );
                if is_data || !self.sparse {
                    seg.runs.push((from, to));
                }
                seg.remaining -= to - from;
                if seg.remaining == 0 {
                    live.remove(&index)
                } else {
                    None
                }
            };
            if let Some(seg) = complete {
                // The writer is gone only after a failure, which is reported there.
                let _ = done.send(seg);
            }
            at = seg_start + to;
        }
    }

    /// A decoded chunk: `data` belongs at `offset`.
    pub(crate) fn data(&self, offset: u64, data: &[u8], done: &Sender<Segment>) {
        self.set(offset, data.len() as u64, true, done, |dst, at| {
            dst.copy_from_slice(&data[at as usize..at as usize + dst.len()]);
        });
    }

    /// A hole: `len` zero bytes at `offset`.
    pub(crate) fn hole(&self, offset: u64, len: u64, done: &Sender<Segment>) -> Result<()> {
        let end = offset + len;
        // Whole segments not started yet need no buffer.
        let first_whole = offset.div_ceil(SEGMENT);
        let end_whole = if end == self.size {
            self.size.div_ceil(SEGMENT)
        } else {
            end / SEGMENT
        };
        if first_whole >= end_whole {
            self.set(offset, len, false, done, |dst, _| dst.fill(0));
            return Ok(());
        }
        let (whole_from, whole_to) = (first_whole * SEGMENT, (end_whole * SEGMENT).min(end));
        self.set(offset, whole_from - offset, false, done, |dst, _| {
            dst.fill(0)
        });
        if !self.sparse {
            self.target.zero(whole_from, whole_to - whole_from)?;
        }
        self.set(whole_to, end - whole_to, false, done, |dst, _| dst.fill(0));
        Ok(())
    }

    /// Writes a completed segment (on the writer thread) and recycles its buffer.
    pub(crate) fn write(&self, seg: Segment) -> Result<()> {
        let base = seg.index * SEGMENT;
        // The last partial block of the range goes through the page cache.
        let direct_end = self.size / ALIGN * ALIGN;
        let mut runs = seg.runs;
        runs.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
        for (from, to) in runs {
            let from = from / ALIGN * ALIGN;
            let to = to.div_ceil(ALIGN) * ALIGN;
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        for (from, to) in merged {
            let (abs_from, abs_to) = (base + from, (base + to).min(self.size));
            let split = abs_to.min(direct_end.max(abs_from));
            if split > abs_from {
                self.write_direct(
                    &seg.buf.bytes()[from as usize..(split - base) as usize],
                    abs_from,
                )?;
            }
            if abs_to > split {
                self.write_buffered(
                    &seg.buf.bytes()[(split - base) as usize..(abs_to - base) as usize],
                    split,
                )?;
            }
        }
        let mut pool = self.pool.lock();
        if pool.len() < POOL {
            pool.push(seg.buf);
        }
        Ok(())
    }

    fn write_direct(&self, data: &[u8], offset: u64) -> Result<()> {
        if let Some(f) = self
            .direct
            .as_ref()
            .filter(|_| !self.direct_failed.load(Ordering::Relaxed))
        {
            match f.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                // Some file systems accept the flag at open but not the write.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(error = %e, "O_DIRECT write refused; using the page cache");
                    self.direct_failed.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    return Err(Error::Target {
                        path: self.target.path.display().to_string(),
                        source: e,
                    })
                }
            }
        }
        self.write_buffered(data, offset)
    }

    fn write_buffered(&self, data: &[u8], offset: u64) -> Result<()> {
        self.target.write_at(data, offset)?;
        let len = data.len() as u64;
        let before = self.buffered.fetch_add(len, Ordering::Relaxed);
        if (before + len) / WRITEBACK_EVERY != before / WRITEBACK_EVERY {
            self.target.start_writeback();
        }
        Ok(())
    }
}
