//! Changed-block-tracking (CBT) incrementals: read only what changed since the parent.
//!
//! A CBT source (a dirty bitmap, `rbd diff`; see [`blockvault_core::extents`]) reports the
//! extents written since the parent backup. The reader walks the parent's manifest and the
//! extents side by side:
//! - parent entries no extent touches are taken as they are, unread ([`Feed::parent_chunk`]; a
//!   hole stays a hole);
//! - at an extent, reading starts at the start of the parent entry holding the extent's first
//!   byte. That is a cut point of the parent's chunking and the bytes before it are the parent's,
//!   so FastCDC starting there cuts as a full re-read would. Inside a parent hole (zeros, where
//!   any point is as good) it starts at the extent itself;
//! - chunking goes on past the extent's end until a cut lands on a cut point of the parent, or
//!   inside a parent hole. From there on the bytes are the parent's, and so is their chunking:
//!   the manifest is the one a full re-read would make, and the reader skips to the next extent.
//!
//! FastCDC's cut at position `p` depends on the bytes up to and including byte `p`, so a cut is
//! used only once it is final: it ends before the bytes read so far, it is a max-size cut, or it
//! ends a data region. Reads stop a few KiB past the next possible resync point and grow only
//! when no final cut came out of them. The volume's file holes are honoured as in a full read
//! (the chunker restarts at each data region).
//!
//! A CBT source that misses a write would make the backup silently wrong, so [`sample`] can read
//! a fraction of the regions reported unchanged first and compare them with the parent (chunk
//! ids, or zeros for holes) before anything is written.
use std::iter::Peekable;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use blockvault_core::chunker::is_zero;
use blockvault_core::extents::{ChangedExtents, Extent};
use blockvault_core::manifest::Coverage;
use blockvault_core::{ChunkId, ChunkKeys, ChunkerParams, ManifestBlock, ManifestEntry};
use rayon::prelude::*;

use crate::device::Source;
use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::CancelToken;

/// A CBT incremental's inputs ([`crate::BackupOptions::cbt`]).
#[derive(Clone, Debug)]
pub struct Cbt {
    /// The changed extents since the parent, as JSON in one of the forms
    /// [`ChangedExtents::parse`] accepts.
    pub extents: Arc<[u8]>,
    /// Fraction (0 to 1) of the regions reported unchanged to read and compare with the parent
    /// before the backup writes anything. 0 trusts the source.
    pub sample: f64,
    /// What a sampled region that differs from the parent does.
    pub on_mismatch: OnMismatch,
}

/// What a CBT backup does when sampling finds a change its source did not report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnMismatch {
    /// Fail the backup, saying where.
    #[default]
    Fail,
    /// Read the whole volume instead, as an incremental without CBT would.
    FullRead,
}

/// Reads always go this far past the point where the chunking may meet the parent again, so
/// that a cut there is final.
const LOOKAHEAD: u64 = 4096;
/// Holes of the parent are sampled in pieces of this many bytes.
const SAMPLE_PIECE: u64 = 1 << 20;
/// Sampled regions are read and checked in batches of about this many bytes.
const SAMPLE_BATCH: u64 = 16 << 20;

/// Parses and checks the extents for a volume of `size` bytes whose parent covers
/// `parent_size`: a grown volume's new bytes count as changed, and so does the last byte of a
/// shrunk one (its last chunk ends elsewhere now).
pub(crate) fn plan(
    cbt: &Cbt,
    size: u64,
    parent_size: u64,
) -> Result<(ChangedExtents, Vec<Extent>)> {
    let sample_ok = cbt.sample.is_finite() && (0.0..=1.0).contains(&cbt.sample);
    if !sample_ok {
        return Err(Error::Core(blockvault_core::Error::Invalid {
            field: "cbt_sample",
            reason: format!("{} is not a fraction between 0 and 1", cbt.sample),
        }));
    }
    let changed = ChangedExtents::parse(&cbt.extents, size)?;
    let mut extents = changed.extents().to_vec();
    let tail = match size.cmp(&parent_size) {
        std::cmp::Ordering::Greater => Some(Extent {
            offset: parent_size,
            length: size - parent_size,
        }),
        std::cmp::Ordering::Less if size > 0 => Some(Extent {
            offset: size - 1,
            length: 1,
        }),
        _ => None,
    };
    if let Some(mut t) = tail {
        // The tail lies at the end: merge it with the extents it meets.
        while let Some(e) = extents.last().copied().filter(|e| e.end() >= t.offset) {
            extents.pop();
            let offset = e.offset.min(t.offset);
            t = Extent {
                offset,
                length: e.end().max(t.end()) - offset,
            };
        }
        extents.push(t);
    }
    Ok((changed, extents))
}

/// The parent's manifest entries with their volume offsets, checked for gaps and overlaps.
struct ParentEntries<I> {
    blocks: I,
    entries: std::vec::IntoIter<ManifestEntry>,
    coverage: Coverage,
}

impl<I: Iterator<Item = Result<ManifestBlock>>> ParentEntries<I> {
    fn new(blocks: I, size: u64) -> Self {
        ParentEntries {
            blocks,
            entries: Vec::new().into_iter(),
            coverage: Coverage::new(size),
        }
    }

    fn next_entry(&mut self) -> Result<Option<(u64, ManifestEntry)>> {
        loop {
            if let Some(e) = self.entries.next() {
                return Ok(Some((self.coverage.entry(&e)?, e)));
            }
            match self.blocks.next().transpose()? {
                Some(b) => {
                    self.coverage.block(&b)?;
                    self.entries = b.entries.into_iter();
                }
                None => {
                    self.coverage.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}

/// A position in the parent's manifest: `pos` is the start of `cur`, or inside it when it is a
/// hole (or, between extents of a read window, anywhere: see [`ParentCursor::resync_at`]).
pub(crate) struct ParentCursor<I> {
    entries: ParentEntries<I>,
    /// The entry holding `pos`; `None` past the parent's end.
    cur: Option<(u64, ManifestEntry)>,
    pos: u64,
    size: u64,
}

impl<I: Iterator<Item = Result<ManifestBlock>>> ParentCursor<I> {
    /// A cursor at the start of the manifest `blocks` of a parent of `size` bytes.
    pub(crate) fn new(blocks: I, size: u64) -> Result<Self> {
        let mut entries = ParentEntries::new(blocks, size);
        let cur = entries.next_entry()?;
        Ok(ParentCursor {
            entries,
            cur,
            pos: 0,
            size,
        })
    }

    /// Moves `cur` forward to the entry holding `pos`.
    fn settle(&mut self) -> Result<()> {
        while let Some((s, e)) = self.cur {
            if s + e.len() > self.pos {
                break;
            }
            self.cur = self.entries.next_entry()?;
        }
        Ok(())
    }

    /// Hands on the parent from `pos` up to `x` (at most the parent's end): whole chunks that end
    /// by `x`, and holes. Returns where it stopped: `x`, the start of the chunk that holds `x`,
    /// or in a hole that holds `x` the last multiple of `zero_cut` from the hole's start. A run
    /// of zeros is cut every `zero_cut` bytes from where it starts, so that is where a full
    /// re-read would have a cut too.
    fn emit_until(&mut self, x: u64, zero_cut: u64, feed: &mut Feed<'_>) -> Result<u64> {
        let x = x.min(self.size);
        while self.pos < x {
            self.settle()?;
            let Some((s, e)) = self.cur else { break };
            match e {
                ManifestEntry::Chunk { id, len } => {
                    if s != self.pos {
                        return Err(Error::Internal(format!(
                            "CBT reader: at {} inside the parent's chunk at {s}",
                            self.pos
                        )));
                    }
                    if s + u64::from(len) > x {
                        break;
                    }
                    feed.parent_chunk(id, len);
                    self.pos += u64::from(len);
                }
                ManifestEntry::Hole { len } => {
                    let to = if s + len <= x {
                        s + len
                    } else {
                        s + (x - s) / zero_cut * zero_cut
                    };
                    if to <= self.pos {
                        break;
                    }
                    feed.hole(to - self.pos);
                    self.pos = to;
                }
            }
        }
        Ok(self.pos)
    }

    /// Moves to `y` (what lies before it was read instead) and says whether the chunking is
    /// back in step with the parent there: `y` is a cut point of the parent, lies in one of its
    /// holes, or is past its end. Positions before the cursor's are never in step.
    fn resync_at(&mut self, y: u64) -> Result<bool> {
        if y < self.pos {
            return Ok(false);
        }
        self.pos = y;
        self.settle()?;
        Ok(match self.cur {
            None => true,
            Some((_, ManifestEntry::Hole { .. })) => true,
            Some((s, ManifestEntry::Chunk { .. })) => s == y,
        })
    }

    /// The first position at or after `t` where the chunking can be back in step.
    fn next_resync(&mut self, t: u64) -> Result<u64> {
        if self.resync_at(t)? {
            return Ok(t);
        }
        Ok(self.cur.map_or(t, |(s, e)| s + e.len()))
    }
}

/// Reads and chunks the windows around changed extents.
struct Windows<'s> {
    source: &'s Source,
    params: ChunkerParams,
    buf: Vec<u8>,
    /// The data region last looked up.
    region: Option<(u64, u64)>,
    read_bytes: u64,
}

impl Windows<'_> {
    /// The data region holding `pos`, or the next one after it (`(size, size)` if none).
    fn region_at(&mut self, pos: u64) -> Result<(u64, u64)> {
        if let Some((r0, r1)) = self.region {
            if r0 <= pos && pos < r1 {
                return Ok((pos, r1));
            }
        }
        let size = self.source.size;
        let r = match self.source.data_regions_from(pos).next().transpose() {
            Ok(r) => r.unwrap_or((size, size)),
            Err(e) => {
                return Err(Error::Source {
                    path: self.source.path.display().to_string(),
                    source: e,
                })
            }
        };
        self.region = Some(r);
        Ok(r)
    }

    /// Chunks the volume from `a` (a point where the chunking is in step with the parent's) over
    /// `first` and the extents it runs into, until it is in step again. Returns where it stopped,
    /// or `None` when the pipeline aborted.
    fn window<I, E>(
        &mut self,
        feed: &mut Feed<'_>,
        parent: &mut ParentCursor<I>,
        a: u64,
        first: Extent,
        extents: &mut Peekable<E>,
    ) -> Result<Option<u64>>
    where
        I: Iterator<Item = Result<ManifestBlock>>,
        E: Iterator<Item = Extent>,
    {
        let size = self.source.size;
        let p = self.params;
        let max = u64::from(p.max_size);
        let mut pos = a;
        let mut t = first.end();
        let mut b = parent.next_resync(t)?;
        // The least a read asks for; doubles while reads yield no final cut.
        let mut least = u64::from(p.min_size) + LOOKAHEAD;
        let mut buf = std::mem::take(&mut self.buf);
        let res = (|| loop {
            absorb(parent, extents, pos, &mut t, &mut b)?;
            if pos >= t && parent.resync_at(pos)? {
                return Ok(Some(pos));
            }
            if pos >= size {
                return Ok(Some(pos));
            }
            let (r0, r1) = self.region_at(pos)?;
            if r0 > pos {
                // A hole of the file: zeros, not read.
                feed.hole(r0 - pos);
                pos = r0;
                continue;
            }
            let want = (b + LOOKAHEAD).max(pos + least);
            let end = r1.min(want).min(pos + buf.len() as u64);
            let n = (end - pos) as usize;
            self.source
                .file
                .read_exact_at(&mut buf[..n], pos)
                .map_err(|e| Error::Source {
                    path: self.source.path.display().to_string(),
                    source: e,
                })?;
            self.read_bytes += n as u64;
            let at_end = end == r1;
            let before = pos;
            for (offset, length) in p.cut_all(&buf[..n]) {
                let last = offset + length;
                if !(at_end || last < n || length as u64 == max) {
                    break;
                }
                if !feed.chunk(pos, &buf[offset..last])? {
                    return Ok(None);
                }
                pos += length as u64;
                absorb(parent, extents, pos, &mut t, &mut b)?;
                if pos >= t && parent.resync_at(pos)? {
                    return Ok(Some(pos));
                }
            }
            least = if pos == before {
                (least * 2).min(buf.len() as u64)
            } else {
                u64::from(p.min_size) + LOOKAHEAD
            };
        })();
        self.buf = buf;
        res
    }
}

/// Takes the extents the window has reached (starting before `max(pos, b)`) into it: the
/// window must then cover them too.
fn absorb<I, E>(
    parent: &mut ParentCursor<I>,
    extents: &mut Peekable<E>,
    pos: u64,
    t: &mut u64,
    b: &mut u64,
) -> Result<()>
where
    I: Iterator<Item = Result<ManifestBlock>>,
    E: Iterator<Item = Extent>,
{
    while let Some(e) = extents.next_if(|e| e.offset < pos.max(*b)) {
        if e.end() > *t {
            *t = e.end();
            *b = parent.next_resync(*t)?;
        }
    }
    Ok(())
}

/// Feeds the pipeline a CBT incremental: the parent's entries where nothing changed, freshly
/// chunked windows around `extents` (sorted, disjoint). Returns the bytes read.
pub(crate) fn read_changed<I>(
    feed: &mut Feed<'_>,
    source: &Source,
    params: ChunkerParams,
    parent: &mut ParentCursor<I>,
    extents: &[Extent],
) -> Result<u64>
where
    I: Iterator<Item = Result<ManifestBlock>>,
{
    let cap = (params.max_size as usize * 4).max(8 << 20);
    let zero_cut = params
        .cut_all(&vec![0u8; 2 * params.max_size as usize])
        .first()
        .map_or(u64::from(params.max_size), |c| c.1 as u64);
    let mut w = Windows {
        source,
        params,
        buf: vec![0; cap],
        region: None,
        read_bytes: 0,
    };
    let mut it = extents.iter().copied().peekable();
    while let Some(e) = it.next() {
        if feed.stopped()? {
            return Ok(w.read_bytes);
        }
        let a = parent.emit_until(e.offset, zero_cut, feed)?;
        if w.window(feed, parent, a, e, &mut it)?.is_none() {
            return Ok(w.read_bytes);
        }
    }
    parent.emit_until(source.size, zero_cut, feed)?;
    Ok(w.read_bytes)
}

/// What [`sample`] found.
pub(crate) struct Sampled {
    /// Bytes read and compared.
    pub(crate) bytes: u64,
    /// The first region that differed from the parent: (offset, length).
    pub(crate) mismatch: Option<(u64, u64)>,
}

/// One region reported unchanged: the parent's chunk there, or `None` for zeros.
struct Unit {
    offset: u64,
    len: u64,
    id: Option<ChunkId>,
}

/// A deterministic pseudo-random draw in `[0, 1)` for the unit at `offset` (splitmix64).
fn draw(seed: u64, offset: u64) -> f64 {
    let mut z = seed ^ offset.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Reads about `fraction` of the regions of the parent (`blocks`, `parent_size` bytes) that no
/// changed extent touches, and compares each with the parent: a chunk's id under `keys`, a
/// hole's zeros. `seed` picks the regions. Stops at the first mismatch, and between batches
/// when `cancel` is set.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sample<I>(
    pool: &rayon::ThreadPool,
    source: &Source,
    keys: ChunkKeys<'_>,
    blocks: I,
    parent_size: u64,
    extents: &[Extent],
    fraction: f64,
    seed: u64,
    cancel: &CancelToken,
) -> Result<Sampled>
where
    I: Iterator<Item = Result<ManifestBlock>>,
{
    let mut out = Sampled {
        bytes: 0,
        mismatch: None,
    };
    if fraction <= 0.0 {
        return Ok(out);
    }
    let limit = parent_size.min(source.size);
    let mut entries = ParentEntries::new(blocks, parent_size);
    let mut ext = extents.iter().peekable();
    let mut batch: Vec<Unit> = Vec::new();
    let mut batch_bytes = 0u64;
    let untouched = |ext: &mut Peekable<std::slice::Iter<'_, Extent>>, offset: u64, len: u64| {
        while ext.next_if(|e| e.end() <= offset).is_some() {}
        ext.peek().is_none_or(|e| e.offset >= offset + len)
    };
    let check = |batch: &mut Vec<Unit>, out: &mut Sampled| -> Result<()> {
        let results: Vec<Result<bool>> = pool.install(|| {
            batch
                .par_iter()
                .map(|u| {
                    let mut data = vec![0u8; u.len as usize];
                    source
                        .file
                        .read_exact_at(&mut data, u.offset)
                        .map_err(|e| Error::Source {
                            path: source.path.display().to_string(),
                            source: e,
                        })?;
                    Ok(match u.id {
                        Some(id) => keys.chunk_id(&data) == id,
                        None => is_zero(&data),
                    })
                })
                .collect()
        });
        for (u, r) in batch.iter().zip(results) {
            out.bytes += u.len;
            if !r? && out.mismatch.is_none() {
                out.mismatch = Some((u.offset, u.len));
            }
        }
        batch.clear();
        Ok(())
    };
    while let Some((start, e)) = entries.next_entry()? {
        if start >= limit {
            break;
        }
        let units: Vec<Unit> = match e {
            ManifestEntry::Chunk { id, len } => vec![Unit {
                offset: start,
                len: u64::from(len),
                id: Some(id),
            }],
            ManifestEntry::Hole { len } => {
                let end = (start + len).min(limit);
                (start..end)
                    .step_by(SAMPLE_PIECE as usize)
                    .map(|o| Unit {
                        offset: o,
                        len: SAMPLE_PIECE.min(end - o),
                        id: None,
                    })
                    .collect()
            }
        };
        for u in units {
            if u.offset + u.len > limit || !untouched(&mut ext, u.offset, u.len) {
                continue;
            }
            if fraction < 1.0 && draw(seed, u.offset) >= fraction {
                continue;
            }
            batch_bytes += u.len;
            batch.push(u);
            if batch_bytes >= SAMPLE_BATCH {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                check(&mut batch, &mut out)?;
                batch_bytes = 0;
                if out.mismatch.is_some() {
                    return Ok(out);
                }
            }
        }
    }
    check(&mut batch, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbt(json: &str) -> Cbt {
        Cbt {
            extents: json.as_bytes().into(),
            sample: 0.0,
            on_mismatch: OnMismatch::Fail,
        }
    }

    #[test]
    fn a_grown_volume_reads_its_new_bytes_and_a_shrunk_one_its_last() {
        let (_, e) = plan(&cbt(r#"[{"offset":0,"length":10}]"#), 100, 50).unwrap();
        assert_eq!(
            e,
            [
                Extent {
                    offset: 0,
                    length: 10
                },
                Extent {
                    offset: 50,
                    length: 50
                }
            ]
        );
        let (_, e) = plan(&cbt(r#"[{"offset":40,"length":20}]"#), 100, 50).unwrap();
        assert_eq!(
            e,
            [Extent {
                offset: 40,
                length: 60
            }]
        );
        let (_, e) = plan(&cbt("[]"), 40, 50).unwrap();
        assert_eq!(
            e,
            [Extent {
                offset: 39,
                length: 1
            }]
        );
        let (_, e) = plan(&cbt("[]"), 50, 50).unwrap();
        assert!(e.is_empty());
    }

    #[test]
    fn sample_fraction_is_checked() {
        for bad in [-0.1, 1.5, f64::NAN] {
            let mut c = cbt("[]");
            c.sample = bad;
            let e = plan(&c, 10, 10).unwrap_err().to_string();
            assert!(e.contains("cbt_sample"), "{e}");
        }
    }

    #[test]
    fn draws_spread_over_the_unit_interval() {
        let n = 10_000;
        let below = (0..n).filter(|i| draw(7, i * 65536) < 0.25).count();
        assert!((2200..2800).contains(&below), "{below}");
    }
}
