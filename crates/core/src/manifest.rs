//! The manifest: the ordered list of a backup's chunks and holes.
//!
//! A manifest is a sequence of blocks of up to [`MANIFEST_BLOCK_ENTRIES`] entries, stored one
//! per index key, so neither writing nor reading one ever holds more than a block in memory
//! (a 1 TiB volume at 64 KiB chunks is ~16 M entries, ~4000 blocks). Block encoding:
//!
//! ```text
//! version u8 | start_offset varint | count varint | count x entry
//! entry = 0x01 len varint id[32]    (a stored chunk of len bytes)
//!       | 0x02 len varint           (a hole: len zero bytes, never stored)
//! ```
//! Each block carries its volume start offset, so blocks can be restored independently.
use crate::envelope::MAX_RAW_LEN;
use crate::error::{Error, Result};
use crate::format::{MANIFEST_BLOCK_ENTRIES, MANIFEST_BLOCK_VERSION};
use crate::id::ChunkId;
use crate::varint;

const TAG_CHUNK: u8 = 0x01;
const TAG_HOLE: u8 = 0x02;

/// One manifest entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestEntry {
    /// `len` bytes stored as chunk `id`.
    Chunk { id: ChunkId, len: u32 },
    /// `len` zero bytes, not stored.
    Hole { len: u64 },
}

impl ManifestEntry {
    /// Bytes of the volume this entry covers.
    pub fn len(&self) -> u64 {
        match *self {
            ManifestEntry::Chunk { len, .. } => u64::from(len),
            ManifestEntry::Hole { len } => len,
        }
    }
    /// True for an entry covering no bytes (never produced by the builder).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A block of consecutive entries starting at volume offset `start`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ManifestBlock {
    pub start: u64,
    pub entries: Vec<ManifestEntry>,
}

impl ManifestBlock {
    /// Bytes of the volume covered by the block (saturating: decoded lengths are untrusted;
    /// [`Coverage`] is the checked way to walk a manifest).
    pub fn len(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |n, e| n.saturating_add(e.len()))
    }
    /// True when the block has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Binary encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries.len() * 36);
        out.push(MANIFEST_BLOCK_VERSION);
        varint::put(&mut out, self.start);
        varint::put(&mut out, self.entries.len() as u64);
        for e in &self.entries {
            match e {
                ManifestEntry::Chunk { id, len } => {
                    out.push(TAG_CHUNK);
                    varint::put(&mut out, u64::from(*len));
                    out.extend_from_slice(id.as_bytes());
                }
                ManifestEntry::Hole { len } => {
                    out.push(TAG_HOLE);
                    varint::put(&mut out, *len);
                }
            }
        }
        out
    }

    /// Parses and validates an encoded block.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let corrupt = |d: &str| Error::corrupt("manifest block", d.to_string());
        if buf.first() != Some(&MANIFEST_BLOCK_VERSION) {
            return Err(corrupt("unknown version"));
        }
        let mut pos = 1;
        let start = varint::get(buf, &mut pos)?;
        let count = varint::get(buf, &mut pos)? as usize;
        if count > MANIFEST_BLOCK_ENTRIES * 4 {
            return Err(corrupt("too many entries"));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let tag = *buf.get(pos).ok_or_else(|| corrupt("truncated"))?;
            pos += 1;
            let len = varint::get(buf, &mut pos)?;
            if len == 0 {
                return Err(corrupt("zero-length entry"));
            }
            match tag {
                TAG_CHUNK => {
                    if len > MAX_RAW_LEN as u64 {
                        return Err(corrupt("chunk longer than the maximum"));
                    }
                    let id = buf
                        .get(pos..pos + ChunkId::LEN)
                        .ok_or_else(|| corrupt("truncated chunk id"))?;
                    pos += ChunkId::LEN;
                    entries.push(ManifestEntry::Chunk {
                        id: ChunkId::from_slice(id)?,
                        len: len as u32,
                    });
                }
                TAG_HOLE => entries.push(ManifestEntry::Hole { len }),
                t => return Err(corrupt(&format!("unknown entry tag {t:#04x}"))),
            }
        }
        if pos != buf.len() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(ManifestBlock { start, entries })
    }
}

/// Checks, entry by entry, that a backup's manifest covers exactly `[0, size)` of the volume:
/// each block starts where the previous one ended (no gap, no overlap), no entry ends past
/// `size`, and the entries end exactly at `size` ([`Coverage::finish`]). Holes are entries, so
/// they count as covered. Lengths come from stored bytes and are untrusted: every sum is checked,
/// so an offset near `u64::MAX` is reported instead of wrapping around.
///
/// Entries within a block are contiguous by construction (the block stores lengths, not
/// offsets), so gaps and overlaps can only appear between blocks.
#[derive(Clone, Debug)]
pub struct Coverage {
    size: u64,
    offset: u64,
    blocks: u32,
}

impl Coverage {
    /// A walk over the manifest of a backup of `size` bytes.
    pub fn new(size: u64) -> Self {
        Coverage {
            size,
            offset: 0,
            blocks: 0,
        }
    }

    /// Checks where the next block starts; call it before the block's entries.
    pub fn block(&mut self, block: &ManifestBlock) -> Result<()> {
        let (n, at) = (self.blocks, self.offset);
        if block.start > at {
            return Err(Error::corrupt(
                "manifest",
                format!(
                    "gap: block {n} starts at {}, the previous entries end at {at}",
                    block.start
                ),
            ));
        }
        if block.start < at {
            return Err(Error::corrupt(
                "manifest",
                format!(
                    "overlap: block {n} starts at {}, before the previous entries end at {at}",
                    block.start
                ),
            ));
        }
        self.blocks += 1;
        Ok(())
    }

    /// Accounts for the next entry; returns the volume offset it starts at.
    pub fn entry(&mut self, e: &ManifestEntry) -> Result<u64> {
        let at = self.offset;
        let end = at
            .checked_add(e.len())
            .filter(|end| *end <= self.size)
            .ok_or_else(|| {
                Error::corrupt(
                    "manifest",
                    format!(
                        "an entry of {} bytes at offset {at} ends past the backup's size {}",
                        e.len(),
                        self.size
                    ),
                )
            })?;
        self.offset = end;
        Ok(at)
    }

    /// Checks that the entries seen end exactly at the backup's size.
    pub fn finish(&self) -> Result<()> {
        if self.offset != self.size {
            return Err(Error::corrupt(
                "manifest",
                format!(
                    "covers {} bytes, the backup's size is {}",
                    self.offset, self.size
                ),
            ));
        }
        Ok(())
    }

    /// Bytes covered so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Blocks seen so far.
    pub fn blocks(&self) -> u32 {
        self.blocks
    }
}

/// Builds a manifest block by block: merges adjacent holes and hands out each full block.
#[derive(Debug, Default)]
pub struct ManifestBuilder {
    current: ManifestBlock,
    offset: u64,
    chunks: u64,
}

impl ManifestBuilder {
    /// Appends an entry; returns a block when one is full.
    pub fn push(&mut self, e: ManifestEntry) -> Option<ManifestBlock> {
        debug_assert!(!e.is_empty());
        if let (ManifestEntry::Hole { len }, Some(ManifestEntry::Hole { len: prev })) =
            (&e, self.current.entries.last_mut())
        {
            *prev += len;
            self.offset += len;
            return None;
        }
        if matches!(e, ManifestEntry::Chunk { .. }) {
            self.chunks += 1;
        }
        self.offset += e.len();
        self.current.entries.push(e);
        (self.current.entries.len() >= MANIFEST_BLOCK_ENTRIES).then(|| self.take())
    }

    fn take(&mut self) -> ManifestBlock {
        let next = ManifestBlock {
            start: self.offset,
            entries: Vec::with_capacity(MANIFEST_BLOCK_ENTRIES),
        };
        std::mem::replace(&mut self.current, next)
    }

    /// The last, partial block (if any entries are pending).
    pub fn finish(&mut self) -> Option<ManifestBlock> {
        (!self.current.entries.is_empty()).then(|| self.take())
    }

    /// Bytes covered so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Chunk (non-hole) entries so far.
    pub fn chunk_count(&self) -> u64 {
        self.chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = ManifestEntry> {
        prop_oneof![
            (any::<[u8; 32]>(), 1u32..=(MAX_RAW_LEN as u32)).prop_map(|(id, len)| {
                ManifestEntry::Chunk {
                    id: ChunkId(id),
                    len,
                }
            }),
            (1u64..u64::MAX / 2).prop_map(|len| ManifestEntry::Hole { len }),
        ]
    }

    fn walk(size: u64, blocks: &[ManifestBlock]) -> Result<()> {
        let mut c = Coverage::new(size);
        for b in blocks {
            c.block(b)?;
            for e in &b.entries {
                c.entry(e)?;
            }
        }
        c.finish()
    }

    #[test]
    fn coverage_finds_gaps_overlaps_overruns_and_overflow() {
        let chunk = |len| ManifestEntry::Chunk {
            id: ChunkId([1; 32]),
            len,
        };
        let block = |start, entries: Vec<ManifestEntry>| ManifestBlock { start, entries };
        let good = [
            block(0, vec![chunk(10), ManifestEntry::Hole { len: 20 }]),
            block(30, vec![chunk(5)]),
        ];
        walk(35, &good).unwrap();
        walk(0, &[]).unwrap();
        let cases: [(&str, u64, Vec<ManifestBlock>); 5] = [
            ("gap", 35, vec![good[0].clone(), block(31, vec![chunk(4)])]),
            (
                "overlap",
                35,
                vec![good[0].clone(), block(29, vec![chunk(6)])],
            ),
            ("ends past", 34, good.to_vec()),
            ("covers 35 bytes", 36, good.to_vec()),
            (
                "ends past",
                u64::MAX,
                vec![block(
                    0,
                    vec![chunk(10), ManifestEntry::Hole { len: u64::MAX - 5 }],
                )],
            ),
        ];
        for (want, size, blocks) in cases {
            let e = walk(size, &blocks).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    proptest! {
        #[test]
        fn block_roundtrip(start in any::<u64>(), entries in proptest::collection::vec(entry(), 0..200)) {
            let b = ManifestBlock { start, entries };
            prop_assert_eq!(ManifestBlock::decode(&b.encode()).unwrap(), b);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ManifestBlock::decode(&bytes);
        }

        #[test]
        fn builder_blocks_cover_everything(lens in proptest::collection::vec((any::<bool>(), 1u32..100_000), 0..10_000)) {
            let mut b = ManifestBuilder::default();
            let mut blocks = Vec::new();
            let mut total = 0u64;
            for (hole, len) in &lens {
                total += u64::from(*len);
                let e = if *hole { ManifestEntry::Hole { len: u64::from(*len) } }
                        else { ManifestEntry::Chunk { id: ChunkId([7; 32]), len: *len } };
                blocks.extend(b.push(e));
            }
            blocks.extend(b.finish());
            let mut off = 0;
            for blk in &blocks {
                prop_assert_eq!(blk.start, off);
                off += blk.len();
            }
            prop_assert_eq!(off, total);
            prop_assert_eq!(b.offset(), total);
        }
    }
}
