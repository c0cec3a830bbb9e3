//! The catalog: everything a restore needs besides the chunks, written beside the packs as
//! MACed objects, so that the pack storage (a bucket, or a local store's `meta/`) describes the
//! store by itself and `recover` can rebuild a lost or damaged index from it (FORMAT.md,
//! "Catalog objects").
//!
//! ```text
//! store.json                           the store's config
//! keys/<hex of the volume id>          a volume's wrapped data key
//! backups/<backup id>/manifest-NNNNNN  manifest blocks [64·N, 64·N+64) of a backup
//! backups/<backup id>/record           the backup's record and the caller's annotation
//! ```
//!
//! Every object is `CATALOG_MAGIC | kind u8 | body | mac (32)`, the MAC over the object's name
//! and everything before the MAC, so an object cannot be moved to another name.
//!
//! Order (the catalog's half of the durability order): a volume key object is written before
//! the index holds the key; a backup's manifest parts, then its record object, are written after
//! its packs are sealed and before its local commit; a delete removes the record object first.
//! A record object therefore only ever exists for a backup whose packs and manifest are
//! complete. A backup interrupted between its record object and its local commit is rolled back
//! at the next open: its record object is removed before its record is marked `error`.
use blockvault_core::format::{CATALOG_MAGIC, CATALOG_MANIFEST_PART_BLOCKS};
use blockvault_core::{BackupId, BackupRecord, CatalogKey, ManifestBlock, VolumeId, WrappedKey};
use serde::{Deserialize, Serialize};

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::index::Store;
use crate::pack::PackStorage;

/// Name of the catalog copy of the store's config.
pub(crate) const CONFIG_OBJECT: &str = "store.json";
/// Prefix of the volume key objects.
pub(crate) const KEYS_PREFIX: &str = "keys/";
/// Prefix of the backup objects.
pub(crate) const BACKUPS_PREFIX: &str = "backups/";
/// Largest annotation a caller may attach to a record object.
pub const MAX_ANNOTATION: usize = 64 << 10;

/// Kinds of catalog objects (the byte after the magic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Config = 1,
    Key = 2,
    ManifestPart = 3,
    Record = 4,
}

impl Kind {
    /// The kind of a kind byte.
    pub(crate) fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Config,
            2 => Kind::Key,
            3 => Kind::ManifestPart,
            4 => Kind::Record,
            _ => return None,
        })
    }
}

/// True for names the catalog makes: `/`-separated segments of `[A-Za-z0-9._-]` that do not
/// start with a dot. Anything else (`..`, absolute paths, empty segments) is refused before it
/// reaches a file system or a bucket.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && !seg.starts_with('.')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

/// [`valid_name`] as an I/O error, for the backends.
pub(crate) fn check_name(name: &str) -> std::io::Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("bad catalog object name {name:?}"),
        ))
    }
}

pub(crate) fn key_name(volume: &VolumeId) -> String {
    format!("{KEYS_PREFIX}{}", hex::encode(volume.as_str()))
}

pub(crate) fn record_name(id: &BackupId) -> String {
    format!("{BACKUPS_PREFIX}{id}/record")
}

pub(crate) fn part_name(id: &BackupId, part: u32) -> String {
    format!("{BACKUPS_PREFIX}{id}/manifest-{part:06}")
}

/// Number of manifest parts of a backup with `blocks` manifest blocks.
pub(crate) fn part_count(blocks: u32) -> u32 {
    blocks.div_ceil(CATALOG_MANIFEST_PART_BLOCKS)
}

/// Seals `body` as catalog object `name` of `kind`.
pub(crate) fn seal(key: &CatalogKey, name: &str, kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + body.len() + 32);
    out.extend_from_slice(&CATALOG_MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(body);
    let mac = key.mac(&[name.as_bytes(), &out]);
    out.extend_from_slice(&mac);
    out
}

/// Checks catalog object `name` and returns its body.
pub(crate) fn open<'a>(
    key: &CatalogKey,
    name: &str,
    kind: Kind,
    obj: &'a [u8],
) -> Result<&'a [u8]> {
    let corrupt = |detail: &str| Error::Corrupt {
        what: format!("catalog object {name}"),
        detail: detail.into(),
    };
    if obj.len() < 9 + 32 || obj[..8] != CATALOG_MAGIC {
        return Err(corrupt("not a catalog object (bad magic or too short)"));
    }
    let (signed, mac) = obj.split_at(obj.len() - 32);
    if !key.check(&[name.as_bytes(), signed], mac) {
        return Err(corrupt(
            "MAC does not check (damaged, or written under another master key)",
        ));
    }
    if signed[8] != kind as u8 {
        return Err(corrupt("object of another kind"));
    }
    Ok(&signed[9..])
}

/// The body of a record object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordBody {
    pub record: BackupRecord,
    /// What the caller attached (the daemon: its control row), opaque to the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation: Option<String>,
}

/// Encodes manifest blocks as the body of one manifest part: `count u32 | (len u32 | block)*`.
pub(crate) fn encode_part(blocks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + blocks.iter().map(|b| 4 + b.len()).sum::<usize>());
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in blocks {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    out
}

/// Decodes a manifest part's body.
pub(crate) fn decode_part(name: &str, body: &[u8]) -> Result<Vec<ManifestBlock>> {
    let corrupt = |detail: String| Error::Corrupt {
        what: format!("catalog object {name}"),
        detail,
    };
    let take = |b: &[u8], at: usize| -> Option<u32> {
        b.get(at..at + 4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    };
    let count = take(body, 0).ok_or_else(|| corrupt("truncated".into()))?;
    if count > CATALOG_MANIFEST_PART_BLOCKS {
        return Err(corrupt(format!("{count} blocks in one part")));
    }
    let mut at = 4usize;
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = take(body, at).ok_or_else(|| corrupt("truncated".into()))? as usize;
        at += 4;
        let b = body
            .get(at..at.saturating_add(len))
            .ok_or_else(|| corrupt("truncated block".into()))?;
        out.push(ManifestBlock::decode(b)?);
        at += len;
    }
    if at != body.len() {
        return Err(corrupt("bytes after the last block".into()));
    }
    Ok(out)
}

fn io_error(packs: &dyn PackStorage, name: &str, e: std::io::Error) -> Error {
    Error::Io {
        path: format!("catalog object {name} ({})", packs.location()),
        source: e,
    }
}

/// Reads, checks and returns the body of catalog object `name`; `None` when absent.
pub(crate) fn get(
    packs: &dyn PackStorage,
    key: &CatalogKey,
    name: &str,
    kind: Kind,
) -> Result<Option<Vec<u8>>> {
    let Some(obj) = packs.get_meta(name).map_err(|e| io_error(packs, name, e))? else {
        return Ok(None);
    };
    open(key, name, kind, &obj).map(|b| Some(b.to_vec()))
}

/// Reads the config copy without checking its MAC (the key may depend on what it says).
pub(crate) fn get_config_unchecked(
    packs: &dyn PackStorage,
) -> Result<Option<(StoreConfig, Vec<u8>)>> {
    let Some(obj) = packs
        .get_meta(CONFIG_OBJECT)
        .map_err(|e| io_error(packs, CONFIG_OBJECT, e))?
    else {
        return Ok(None);
    };
    if obj.len() < 9 + 32 || obj[..8] != CATALOG_MAGIC || obj[8] != Kind::Config as u8 {
        return Err(Error::Corrupt {
            what: format!("catalog object {CONFIG_OBJECT}"),
            detail: "not a config object".into(),
        });
    }
    let config: StoreConfig =
        serde_json::from_slice(&obj[9..obj.len() - 32]).map_err(|e| Error::Corrupt {
            what: format!("catalog object {CONFIG_OBJECT}"),
            detail: e.to_string(),
        })?;
    Ok(Some((config, obj)))
}

fn put(
    packs: &dyn PackStorage,
    key: &CatalogKey,
    name: &str,
    kind: Kind,
    body: &[u8],
) -> Result<()> {
    packs
        .put_meta(name, &seal(key, name, kind, body))
        .map_err(|e| io_error(packs, name, e))
}

fn delete(packs: &dyn PackStorage, name: &str) -> Result<()> {
    packs
        .delete_meta(name)
        .map_err(|e| io_error(packs, name, e))
}

impl Store {
    /// The key of this store's catalog MACs. A store with a master key needs it set by the
    /// engine ([`Store::set_catalog_key`]) before anything that writes the catalog.
    pub(crate) fn catalog_key(&self) -> Result<CatalogKey> {
        self.catalog.read().clone().ok_or_else(|| {
            Error::Config(
                "writing to this store needs its master key (the catalog is MACed under it)".into(),
            )
        })
    }

    /// Sets the catalog key of a store with a master key (`master.catalog_key()`). Writes the
    /// catalog copy of the config if the store has none yet (a store from before the catalog
    /// existed is then migrated: see [`Store::migrate_catalog`]).
    pub fn set_catalog_key(&self, key: CatalogKey) -> Result<()> {
        if self.config().master_fingerprint.is_some() && !key.is_authenticated() {
            return Err(Error::Config(
                "a store with a master key needs the catalog key derived from it".into(),
            ));
        }
        *self.catalog.write() = Some(key);
        self.migrate_catalog()
    }

    /// True once this store's catalog holds its config: every store made or migrated by this
    /// version.
    pub fn has_catalog(&self) -> Result<bool> {
        Ok(self
            .packs
            .get_meta(CONFIG_OBJECT)
            .map_err(|e| io_error(&*self.packs, CONFIG_OBJECT, e))?
            .is_some())
    }

    /// Writes the catalog copy of the config.
    pub(crate) fn put_catalog_config(&self) -> Result<()> {
        let key = self.catalog_key()?;
        let body = serde_json::to_vec_pretty(self.config()).expect("config serializes");
        put(&*self.packs, &key, CONFIG_OBJECT, Kind::Config, &body)
    }

    /// Brings the catalog of a store written before it existed up to date: every volume key,
    /// then every available backup's manifest and record, then (last, so an interrupted
    /// migration runs again) the config. Does nothing when the config object exists.
    pub fn migrate_catalog(&self) -> Result<()> {
        if self.catalog.read().is_none() || self.has_catalog()? {
            return Ok(());
        }
        for (volume, wrapped) in self.volume_keys()? {
            self.put_catalog_key(&volume, &wrapped)?;
        }
        for rec in self.list_records()? {
            if rec.state == blockvault_core::BackupState::Available {
                self.put_catalog_backup(&rec, None, None)?;
            }
        }
        self.put_catalog_config()?;
        Ok(())
    }

    /// Writes a volume's wrapped key object.
    pub(crate) fn put_catalog_key(&self, volume: &VolumeId, wrapped: &WrappedKey) -> Result<()> {
        let key = self.catalog_key()?;
        put(
            &*self.packs,
            &key,
            &key_name(volume),
            Kind::Key,
            &wrapped.encode(),
        )
    }

    /// Writes a committed backup's manifest parts, then its record object. The manifest is
    /// what the index holds for `rec`, followed by `last` (the block the commit adds).
    pub(crate) fn put_catalog_backup(
        &self,
        rec: &BackupRecord,
        last: Option<(u32, &ManifestBlock)>,
        annotation: Option<&str>,
    ) -> Result<()> {
        let key = self.catalog_key()?;
        let mut part = Vec::new();
        let mut n = 0u32;
        let mut next_part = 0u32;
        let flush = |blocks: &mut Vec<Vec<u8>>, next_part: &mut u32| -> Result<()> {
            let name = part_name(&rec.id, *next_part);
            put(
                &*self.packs,
                &key,
                &name,
                Kind::ManifestPart,
                &encode_part(blocks),
            )?;
            blocks.clear();
            *next_part += 1;
            Ok(())
        };
        let tail = last.map(|(_, b)| Ok(b.clone()));
        for block in self.manifest(&rec.id).chain(tail) {
            part.push(block?.encode());
            n += 1;
            if part.len() as u32 == CATALOG_MANIFEST_PART_BLOCKS {
                flush(&mut part, &mut next_part)?;
            }
        }
        if !part.is_empty() {
            flush(&mut part, &mut next_part)?;
        }
        if n != rec.manifest_blocks {
            return Err(Error::Corrupt {
                what: format!("manifest of backup {}", rec.id),
                detail: format!("{n} blocks, the record says {}", rec.manifest_blocks),
            });
        }
        self.put_catalog_record(&key, rec, annotation)
    }

    fn put_catalog_record(
        &self,
        key: &CatalogKey,
        rec: &BackupRecord,
        annotation: Option<&str>,
    ) -> Result<()> {
        if annotation.is_some_and(|a| a.len() > MAX_ANNOTATION) {
            return Err(Error::Config(format!(
                "annotation of backup {} is over {MAX_ANNOTATION} bytes",
                rec.id
            )));
        }
        let body = serde_json::to_vec(&RecordBody {
            record: rec.clone(),
            annotation: annotation.map(str::to_string),
        })
        .expect("record serializes");
        put(
            &*self.packs,
            key,
            &record_name(&rec.id),
            Kind::Record,
            &body,
        )
    }

    /// Replaces the annotation in an available backup's record object (the daemon calls this
    /// when a backup's name, description or metadata change).
    pub fn annotate(&self, id: &BackupId, annotation: &str) -> Result<()> {
        let rec = self.get_record(id)?;
        if rec.state != blockvault_core::BackupState::Available {
            return Err(Error::Config(format!("backup {id} is not available")));
        }
        let key = self.catalog_key()?;
        self.put_catalog_record(&key, &rec, Some(annotation))
    }

    /// The annotation in a backup's record object, if it has one.
    pub fn annotation(&self, id: &BackupId) -> Result<Option<String>> {
        let key = self.catalog_key()?;
        let name = record_name(id);
        let Some(body) = get(&*self.packs, &key, &name, Kind::Record)? else {
            return Ok(None);
        };
        let b: RecordBody = serde_json::from_slice(&body).map_err(|e| Error::Corrupt {
            what: format!("catalog object {name}"),
            detail: e.to_string(),
        })?;
        Ok(b.annotation)
    }

    /// Removes a backup's catalog objects: the record first, so a backup is never listed
    /// without its manifest. Idempotent.
    pub(crate) fn delete_catalog_backup(&self, id: &BackupId) -> Result<()> {
        delete(&*self.packs, &record_name(id))?;
        let prefix = format!("{BACKUPS_PREFIX}{id}/");
        let names = self
            .packs
            .list_meta(&prefix)
            .map_err(|e| io_error(&*self.packs, &prefix, e))?;
        for name in names {
            delete(&*self.packs, &name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn objects_open_only_under_their_key_name_and_kind() {
        let key = CatalogKey::unauthenticated(&uuid::Uuid::new_v4());
        let obj = seal(&key, "backups/a/record", Kind::Record, b"body");
        assert_eq!(
            open(&key, "backups/a/record", Kind::Record, &obj).unwrap(),
            b"body"
        );
        assert!(open(&key, "backups/b/record", Kind::Record, &obj).is_err());
        assert!(open(&key, "backups/a/record", Kind::Key, &obj).is_err());
        let other = CatalogKey::unauthenticated(&uuid::Uuid::new_v4());
        assert!(open(&other, "backups/a/record", Kind::Record, &obj).is_err());
    }

    /// Manifest parts from a bucket are untrusted: damaged ones are errors, never panics.
    #[test]
    fn damaged_manifest_parts_never_panic() {
        let mut block = ManifestBlock::default();
        for i in 0..50u8 {
            block.entries.push(blockvault_core::ManifestEntry::Chunk {
                len: 1000 + u32::from(i),
                id: blockvault_core::ChunkId([i; 32]),
            });
        }
        let body = encode_part(&[block.encode(), block.encode()]);
        assert_eq!(decode_part("p", &body).unwrap().len(), 2);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..3000 {
            let mut b = body.clone();
            if rng.gen_bool(0.5) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            } else {
                b.truncate(rng.gen_range(0..b.len()));
            }
            let _ = decode_part("p", &b);
        }
    }

    #[test]
    fn names_the_store_never_makes_are_refused() {
        for bad in [
            "", "/x", "x/", "a//b", "../x", "x/..", ".x", "x/.y", "a b", "é",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for good in ["store.json", "keys/6162", "backups/0a-b/manifest-000001"] {
            assert!(valid_name(good), "{good:?}");
        }
    }
}
