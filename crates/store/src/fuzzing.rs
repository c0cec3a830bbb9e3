//! Entry points for the store's fuzz targets (`crates/store/tests/fuzz.rs`): the decoders of
//! bytes that come back from a bucket or a pack directory (pack trailers, catalog objects),
//! with what they need around them. Not an API: hidden from the docs, and free to change.
use blockvault_core::{BackupRecord, CatalogKey, ChunkId, ManifestBlock, PackId};

use crate::catalog::{self, Kind, RecordBody};
use crate::error::{Error, Result};
use crate::index::ChunkLoc;
use crate::pack::{MemoryPacks, PackStorage};
use crate::trailer::{self, PackListing};

/// The entries of pack `id` whose bytes are `pack`, as `recover` finds them.
pub fn pack_entries(
    id: PackId,
    pack: &[u8],
    key: &CatalogKey,
) -> std::io::Result<(Vec<(ChunkId, ChunkLoc)>, PackListing)> {
    let packs = memory_pack(id, pack)?;
    let r = trailer::read_entries(&packs, id, pack.len() as u64, key)?;
    Ok((r.entries, r.how))
}

/// The entries of pack `id` from its trailer, when that checks (as verify and GC trust them).
pub fn trusted_entries(
    id: PackId,
    pack: &[u8],
    key: &CatalogKey,
) -> Option<Vec<(ChunkId, ChunkLoc)>> {
    let packs = memory_pack(id, pack).ok()?;
    trailer::trusted_entries(&packs, id, pack.len() as u64, key)
}

fn memory_pack(id: PackId, pack: &[u8]) -> std::io::Result<MemoryPacks> {
    let packs = MemoryPacks::default();
    let mut sink = packs.create(id)?;
    sink.write_all(pack)?;
    sink.finish()?;
    Ok(packs)
}

/// The trailer and footer the pack writer appends after entries ending at `end`.
pub fn seal_trailer(
    id: PackId,
    end: u64,
    entries: &[(ChunkId, ChunkLoc)],
    key: &CatalogKey,
) -> Vec<u8> {
    trailer::encode(id, end, entries, key)
}

fn kind(b: u8) -> Result<Kind> {
    Kind::from_byte(b).ok_or_else(|| Error::Config(format!("no catalog object kind {b}")))
}

/// Seals `body` as catalog object `name` of kind byte `kind`.
pub fn seal_object(key: &CatalogKey, name: &str, kind_byte: u8, body: &[u8]) -> Result<Vec<u8>> {
    Ok(catalog::seal(key, name, kind(kind_byte)?, body))
}

/// Checks catalog object `name` of kind byte `kind` and returns its body.
pub fn open_object(key: &CatalogKey, name: &str, kind_byte: u8, obj: &[u8]) -> Result<Vec<u8>> {
    catalog::open(key, name, kind(kind_byte)?, obj).map(<[u8]>::to_vec)
}

/// Decodes the body of a manifest part.
pub fn decode_part(name: &str, body: &[u8]) -> Result<Vec<ManifestBlock>> {
    catalog::decode_part(name, body)
}

/// Encodes manifest blocks (already encoded) as the body of a manifest part.
pub fn encode_part(blocks: &[Vec<u8>]) -> Vec<u8> {
    catalog::encode_part(blocks)
}

/// Decodes the body of a record object: the record and its annotation.
pub fn decode_record(body: &[u8]) -> Result<(BackupRecord, Option<String>)> {
    let b: RecordBody = serde_json::from_slice(body).map_err(|e| Error::Corrupt {
        what: "record object".into(),
        detail: e.to_string(),
    })?;
    Ok((b.record, b.annotation))
}

/// Encodes a record object's body.
pub fn encode_record(record: &BackupRecord, annotation: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&RecordBody {
        record: record.clone(),
        annotation: annotation.map(str::to_string),
    })
    .expect("record serializes")
}
