//! Pack trailers: what lets `recover` rebuild chunk locations from a pack without reading its
//! chunks (FORMAT.md, "Pack file").
//!
//! ```text
//! trailer: "BVTR" | count u32 | entry* | mac (32)
//! entry:   chunk id (32) | entry offset u64 | envelope length u32 | raw length u32
//! footer:  trailer offset u64 | "BVPKEND2"
//! mac = CatalogKey.mac([pack id, "BVTR" | count | entries])
//! ```
//!
//! A pack without a trailer that checks (a version 1 pack, an unfinished one, or one whose
//! tail is damaged) is *scanned*: its entries are self-delimiting, so they are walked from the
//! header on, in windows, and the walk stops at the first entry that does not parse.
use std::io;

use blockvault_core::format::{
    ENVELOPE_HEADER_LEN, PACK_ENTRY_HEADER_LEN, PACK_ENTRY_MAGIC, PACK_FOOTER_LEN,
    PACK_FOOTER_MAGIC, PACK_HEADER_LEN, PACK_MAGIC, PACK_MAGIC_V1, PACK_TRAILER_ENTRY_LEN,
    PACK_TRAILER_MAGIC,
};
use blockvault_core::{CatalogKey, ChunkId, PackId};

use crate::index::ChunkLoc;
use crate::pack::PackStorage;

/// Bytes read per request while scanning a pack.
const SCAN_WINDOW: u64 = 8 << 20;
/// An envelope is at most 16 MiB of payload plus its header, nonce and tag.
const MAX_ENVELOPE: u32 = (16 << 20) + 64;

/// The trailer and footer of a pack whose entries end at `end`.
pub(crate) fn encode(
    id: PackId,
    end: u64,
    entries: &[(ChunkId, ChunkLoc)],
    key: &CatalogKey,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(8 + entries.len() * PACK_TRAILER_ENTRY_LEN + 32 + 16);
    t.extend_from_slice(&PACK_TRAILER_MAGIC);
    t.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (cid, loc) in entries {
        t.extend_from_slice(cid.as_bytes());
        t.extend_from_slice(&loc.offset.to_le_bytes());
        t.extend_from_slice(&loc.len.to_le_bytes());
        t.extend_from_slice(&loc.raw_len.to_le_bytes());
    }
    let mac = key.mac(&[&id.0, &t]);
    t.extend_from_slice(&mac);
    t.extend_from_slice(&end.to_le_bytes());
    t.extend_from_slice(&PACK_FOOTER_MAGIC);
    t
}

/// How a pack's entries were found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PackListing {
    /// From its trailer, MAC checked.
    Trailer,
    /// By walking its entries: a version 1 pack.
    ScannedV1,
    /// By walking its entries, because its trailer is missing or does not check (the reason).
    Scanned(String),
}

/// A pack's entries, as recovered.
pub(crate) struct PackEntries {
    pub entries: Vec<(ChunkId, ChunkLoc)>,
    pub how: PackListing,
}

/// Finds the entries of pack `id` of `size` bytes: from its trailer if that checks, else by a
/// scan. Errors only when the pack cannot be read (or is shorter than a header).
pub(crate) fn read_entries(
    packs: &dyn PackStorage,
    id: PackId,
    size: u64,
    key: &CatalogKey,
) -> io::Result<PackEntries> {
    if size < PACK_HEADER_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{size} bytes, shorter than a pack header"),
        ));
    }
    let header = packs.read_at(id, 0, PACK_HEADER_LEN as usize)?;
    // A damaged header does not make the entries behind it unreadable: scan them.
    let header_problem = if header[8..] != id.0 {
        Some("the header names another pack id")
    } else if header[..8] == PACK_MAGIC_V1 {
        let entries = scan(packs, id, size)?;
        return Ok(PackEntries {
            entries,
            how: PackListing::ScannedV1,
        });
    } else if header[..8] != PACK_MAGIC {
        Some("bad pack magic")
    } else {
        None
    };
    if let Some(why) = header_problem {
        let entries = scan(packs, id, size)?;
        return Ok(PackEntries {
            entries,
            how: PackListing::Scanned(why.into()),
        });
    }
    match from_trailer(packs, id, size, key) {
        Ok(entries) => Ok(PackEntries {
            entries,
            how: PackListing::Trailer,
        }),
        Err(why) => {
            let entries = scan(packs, id, size)?;
            Ok(PackEntries {
                entries,
                how: PackListing::Scanned(why),
            })
        }
    }
}

/// The entries of a version 2 pack whose trailer checks; `None` for anything else.
pub(crate) fn trusted_entries(
    packs: &dyn PackStorage,
    id: PackId,
    size: u64,
    key: &CatalogKey,
) -> Option<Vec<(ChunkId, ChunkLoc)>> {
    // The MAC binds the trailer to the pack id, so the header need not be read.
    from_trailer(packs, id, size, key).ok()
}

/// Reads and checks the trailer. `Err` carries why it was not usable; I/O errors included
/// (the scan then tries the pack once more, and reports a pack that cannot be read).
fn from_trailer(
    packs: &dyn PackStorage,
    id: PackId,
    size: u64,
    key: &CatalogKey,
) -> Result<Vec<(ChunkId, ChunkLoc)>, String> {
    let min_trailer = 8 + 32;
    if size < PACK_HEADER_LEN + min_trailer + PACK_FOOTER_LEN {
        return Err("too short for a trailer".into());
    }
    let footer = packs
        .read_at(id, size - PACK_FOOTER_LEN, PACK_FOOTER_LEN as usize)
        .map_err(|e| format!("footer: {e}"))?;
    if footer[8..] != PACK_FOOTER_MAGIC {
        return Err("no footer (the pack was not finished, or its tail is damaged)".into());
    }
    let end = u64::from_le_bytes(footer[..8].try_into().expect("8 bytes"));
    if end < PACK_HEADER_LEN || end > size - PACK_FOOTER_LEN - min_trailer {
        return Err(format!("footer points at {end}, outside the pack"));
    }
    let t = packs
        .read_at(id, end, (size - PACK_FOOTER_LEN - end) as usize)
        .map_err(|e| format!("trailer: {e}"))?;
    if t[..4] != PACK_TRAILER_MAGIC {
        return Err("bad trailer magic".into());
    }
    let count = u32::from_le_bytes(t[4..8].try_into().expect("4 bytes")) as usize;
    let body_len = count
        .checked_mul(PACK_TRAILER_ENTRY_LEN)
        .and_then(|n| n.checked_add(8))
        .filter(|n| n + 32 == t.len())
        .ok_or_else(|| format!("trailer of {} bytes cannot list {count} entries", t.len()))?;
    let (body, mac) = t.split_at(body_len);
    if !key.check(&[&id.0, body], mac) {
        return Err("trailer MAC does not check (damaged, or another master key)".into());
    }
    let mut out = Vec::with_capacity(count);
    let mut next = PACK_HEADER_LEN;
    for e in body[8..].chunks_exact(PACK_TRAILER_ENTRY_LEN) {
        let cid = ChunkId(e[..32].try_into().expect("32 bytes"));
        let offset = u64::from_le_bytes(e[32..40].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(e[40..44].try_into().expect("4 bytes"));
        let raw_len = u32::from_le_bytes(e[44..48].try_into().expect("4 bytes"));
        // A MAC that checks was made by this store's writer, which only writes entries in
        // order; check anyway, so no location ever points outside the entries.
        let stop = offset.saturating_add(PACK_ENTRY_HEADER_LEN + u64::from(len));
        if offset != next || stop > end || len > MAX_ENVELOPE {
            return Err(format!("trailer entry at {offset} is out of place"));
        }
        next = stop;
        out.push((
            cid,
            ChunkLoc {
                pack: id,
                offset,
                len,
                raw_len,
            },
        ));
    }
    if next != end {
        return Err("trailer entries do not reach the trailer".into());
    }
    Ok(out)
}

/// Walks a pack's entries from its header on, reading [`SCAN_WINDOW`] bytes at a time. Stops
/// at the end of the pack or at the first thing that is not a whole entry (the trailer of a
/// version 2 pack, or the torn tail of an unfinished one).
fn scan(packs: &dyn PackStorage, id: PackId, size: u64) -> io::Result<Vec<(ChunkId, ChunkLoc)>> {
    let need = PACK_ENTRY_HEADER_LEN + ENVELOPE_HEADER_LEN as u64;
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = 0u64;
    let mut pos = PACK_HEADER_LEN;
    while pos + need <= size {
        if pos + need > buf_start + buf.len() as u64 {
            let n = SCAN_WINDOW.min(size - pos);
            buf = packs.read_at(id, pos, n as usize)?;
            buf_start = pos;
        }
        let at = (pos - buf_start) as usize;
        let h = &buf[at..at + need as usize];
        if h[..4] != PACK_ENTRY_MAGIC {
            break;
        }
        let cid = ChunkId(h[4..36].try_into().expect("32 bytes"));
        let len = u32::from_le_bytes(h[36..40].try_into().expect("4 bytes"));
        let raw_len = u32::from_le_bytes(h[42..46].try_into().expect("4 bytes"));
        let stop = pos + PACK_ENTRY_HEADER_LEN + u64::from(len);
        if len > MAX_ENVELOPE || (len as usize) < ENVELOPE_HEADER_LEN || stop > size {
            break;
        }
        out.push((
            cid,
            ChunkLoc {
                pack: id,
                offset: pos,
                len,
                raw_len,
            },
        ));
        pos = stop;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::pack::{MemoryPacks, PackStorage};

    /// A version 2 pack of `n` entries in `packs`; returns its id, bytes and entries.
    fn pack(packs: &MemoryPacks, n: usize, key: &CatalogKey) -> (PackId, Vec<u8>) {
        let id = PackId::random();
        let mut body = PACK_MAGIC.to_vec();
        body.extend_from_slice(&id.0);
        let mut entries = Vec::new();
        for i in 0..n {
            // An envelope header (version 1, no flags, raw length) and a stored payload.
            let raw = 10 + i as u32 * 7;
            let mut env = vec![1u8, 0];
            env.extend_from_slice(&raw.to_le_bytes());
            env.extend(std::iter::repeat_n(i as u8, raw as usize));
            let cid = ChunkId([i as u8; 32]);
            entries.push((
                cid,
                ChunkLoc {
                    pack: id,
                    offset: body.len() as u64,
                    len: env.len() as u32,
                    raw_len: raw,
                },
            ));
            body.extend_from_slice(&PACK_ENTRY_MAGIC);
            body.extend_from_slice(cid.as_bytes());
            body.extend_from_slice(&(env.len() as u32).to_le_bytes());
            body.extend_from_slice(&env);
        }
        let end = body.len() as u64;
        body.extend_from_slice(&encode(id, end, &entries, key));
        let mut sink = packs.create(id).unwrap();
        sink.write_all(&body).unwrap();
        sink.finish().unwrap();
        (id, body)
    }

    #[test]
    fn an_intact_trailer_lists_the_entries() {
        let key = CatalogKey::unauthenticated(&uuid::Uuid::new_v4());
        let packs = MemoryPacks::default();
        let (id, body) = pack(&packs, 20, &key);
        let got = read_entries(&packs, id, body.len() as u64, &key).unwrap();
        assert_eq!(got.how, PackListing::Trailer);
        assert_eq!(got.entries.len(), 20);
        let other = CatalogKey::unauthenticated(&uuid::Uuid::new_v4());
        let scanned = read_entries(&packs, id, body.len() as u64, &other).unwrap();
        assert!(matches!(scanned.how, PackListing::Scanned(_)));
        assert_eq!(
            scanned.entries, got.entries,
            "the scan finds the same entries"
        );
    }

    /// Damaged and truncated packs (bytes from a bucket are untrusted): never a panic, and
    /// every location returned lies inside the pack.
    #[test]
    fn damaged_packs_never_panic_nor_point_outside() {
        let key = CatalogKey::unauthenticated(&uuid::Uuid::new_v4());
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let packs = MemoryPacks::default();
        let (_, body) = pack(&packs, 12, &key);
        for _ in 0..3000 {
            let mut b = body.clone();
            match rng.gen_range(0..3) {
                0 => {
                    for _ in 0..rng.gen_range(1..4) {
                        let i = rng.gen_range(0..b.len());
                        b[i] = rng.gen();
                    }
                }
                1 => b.truncate(rng.gen_range(0..b.len())),
                _ => {
                    let i = rng.gen_range(0..b.len());
                    b[i..].iter_mut().for_each(|x| *x = rng.gen());
                }
            }
            let id = PackId(
                b.get(8..24)
                    .and_then(|s| s.try_into().ok())
                    .unwrap_or([0; 16]),
            );
            let mem = MemoryPacks::default();
            let mut sink = mem.create(id).unwrap();
            sink.write_all(&b).unwrap();
            sink.finish().unwrap();
            if let Ok(found) = read_entries(&mem, id, b.len() as u64, &key) {
                for (_, loc) in found.entries {
                    assert!(
                        loc.offset + PACK_ENTRY_HEADER_LEN + u64::from(loc.len) <= b.len() as u64
                    );
                }
            }
        }
    }
}
