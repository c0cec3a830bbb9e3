//! Retention of a backup's objects under S3 Object Lock: every pack holding one of its chunks,
//! its manifest parts, its record and its volume's wrapped key.
//!
//! What is retained is remembered in the `retained` column family (pack id or backup id ->
//! unix seconds), so a renewal asks the bucket only about what would otherwise run out, and so
//! that GC neither deletes nor rewrites a pack before its retention ends (a rewrite would move
//! a locked backup's chunks into a pack without retention).
//!
//! Against a concurrent GC rewrite: the pack set is read and each pack's entry written under
//! the lifecycle lock, before any request; GC repoints chunks and forgets packs under the same
//! lock and skips packs with an entry. So either GC moved the chunks first (and this sees their
//! new pack) or it sees the entry and leaves the pack alone.
use std::collections::BTreeSet;

use blockvault_core::{BackupId, ManifestEntry, PackId};
use rocksdb::WriteBatch;

use crate::catalog::{key_name, part_count, part_name, record_name};
use crate::error::{Error, Result};
use crate::index::{Store, CF_RETAINED};
use crate::pack::{Object, ObjectLock, RetentionMode};

/// What [`Store::retain_backup`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetainReport {
    /// Packs the backup's chunks are in.
    pub packs: u64,
    /// Packs whose retention was set or extended by this call (the others already had it).
    pub packs_extended: u64,
    /// Catalog objects (manifest parts, record, wrapped key) whose retention was set.
    pub catalog_objects: u64,
    /// The backup's retention now (unix seconds).
    pub until: u64,
    /// True when the backup already had a retention of at least `renew_after`, and nothing
    /// was asked of the bucket.
    pub already: bool,
}

fn pack_key(id: PackId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'p');
    k.extend_from_slice(&id.0);
    k
}

fn backup_key(id: &BackupId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'b');
    k.extend_from_slice(id.as_bytes());
    k
}

fn decode_secs(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_le_bytes)
}

impl Store {
    /// Whether this store's objects can be kept under retention (asks the backend).
    pub fn object_lock(&self) -> Result<ObjectLock> {
        self.packs
            .object_lock()
            .map_err(|e| Error::io(self.packs.location(), e))
    }

    /// Until when pack `id` is retained (unix seconds), as this index remembers it.
    pub fn pack_retained_until(&self, id: PackId) -> Result<Option<u64>> {
        self.retained_until(&pack_key(id))
    }

    /// Until when backup `id`'s objects are retained, as this index remembers it.
    pub fn backup_retained_until(&self, id: &BackupId) -> Result<Option<u64>> {
        self.retained_until(&backup_key(id))
    }

    fn retained_until(&self, key: &[u8]) -> Result<Option<u64>> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_RETAINED), key)
            .map_err(Error::db("get retained"))?;
        Ok(v.and_then(|v| decode_secs(&v)))
    }

    /// True when GC must leave pack `id` alone at `now`: it is retained until later.
    pub(crate) fn pack_is_retained(&self, id: PackId, now: u64) -> Result<bool> {
        Ok(self.pack_retained_until(id)?.is_some_and(|t| t > now))
    }

    /// Keeps an available backup's objects under retention until `until` (unix seconds): every
    /// pack one of its chunks is in, its manifest parts, its record and, for an encrypted
    /// backup, its volume's wrapped key. Does nothing when the backup is already retained until
    /// `renew_after` or later. Fails on a backend without object lock.
    pub fn retain_backup(
        &self,
        id: &BackupId,
        mode: RetentionMode,
        until: u64,
        renew_after: u64,
    ) -> Result<RetainReport> {
        let rec = self.get_record(id)?;
        if rec.state != blockvault_core::BackupState::Available {
            return Err(Error::Config(format!("backup {id} is not available")));
        }
        if let Some(t) = self.backup_retained_until(id)? {
            if t >= renew_after.min(until) {
                return Ok(RetainReport {
                    until: t,
                    already: true,
                    ..RetainReport::default()
                });
            }
        }
        let mut report = RetainReport {
            until,
            ..RetainReport::default()
        };
        // The packs, under the lifecycle lock (see the module comment); an entry is written
        // before the request, so GC keeps its hands off from here on even if the request fails.
        let todo: Vec<(PackId, Option<u64>)> = {
            let _g = self.lifecycle.lock();
            let mut packs = BTreeSet::new();
            for block in self.manifest(id) {
                for e in block?.entries {
                    if let ManifestEntry::Chunk { id: c, .. } = e {
                        let loc = self.chunk_location(&c)?.ok_or_else(|| Error::Corrupt {
                            what: format!("backup {id}"),
                            detail: format!("chunk {c} is not in the index"),
                        })?;
                        packs.insert(loc.pack);
                    }
                }
            }
            report.packs = packs.len() as u64;
            let mut todo = Vec::new();
            let mut b = WriteBatch::default();
            for p in packs {
                let had = self.pack_retained_until(p)?;
                if had.is_some_and(|t| t >= until) {
                    continue;
                }
                b.put_cf(self.cf(CF_RETAINED), pack_key(p), until.to_le_bytes());
                todo.push((p, had));
            }
            self.db.write(b).map_err(Error::db("put retained"))?;
            todo
        };
        for (i, &(p, _)) in todo.iter().enumerate() {
            let got = match self.packs.retain(Object::Pack(p), mode, until) {
                Ok(t) => t,
                Err(e) => {
                    // The packs not retained go back to what they had, so GC may handle them.
                    let mut b = WriteBatch::default();
                    for &(q, had) in &todo[i..] {
                        match had {
                            Some(t) => b.put_cf(self.cf(CF_RETAINED), pack_key(q), t.to_le_bytes()),
                            None => b.delete_cf(self.cf(CF_RETAINED), pack_key(q)),
                        }
                    }
                    self.db.write(b).map_err(Error::db("put retained"))?;
                    return Err(Error::io(self.packs.describe(p), e));
                }
            };
            if got > until {
                self.db
                    .put_cf(self.cf(CF_RETAINED), pack_key(p), got.to_le_bytes())
                    .map_err(Error::db("put retained"))?;
            }
            report.packs_extended += 1;
        }
        let mut names: Vec<String> = (0..part_count(rec.manifest_blocks))
            .map(|n| part_name(id, n))
            .collect();
        names.push(record_name(id));
        if rec.encrypted {
            names.push(key_name(&rec.volume_id));
        }
        for name in &names {
            self.packs
                .retain(Object::Meta(name), mode, until)
                .map_err(|e| Error::io(format!("catalog object {name}"), e))?;
            report.catalog_objects += 1;
        }
        self.db
            .put_cf(self.cf(CF_RETAINED), backup_key(id), until.to_le_bytes())
            .map_err(Error::db("put retained"))?;
        Ok(report)
    }

    /// Forgets a pack's retention entry once GC removed the pack.
    pub(crate) fn forget_retention(&self, b: &mut WriteBatch, id: PackId) {
        b.delete_cf(self.cf(CF_RETAINED), pack_key(id));
    }

    /// Forgets a deleted backup's retention entry.
    pub(crate) fn forget_backup_retention(&self, id: &BackupId) -> Result<()> {
        self.db
            .delete_cf(self.cf(CF_RETAINED), backup_key(id))
            .map_err(Error::db("delete retained"))
    }
}
