//! Garbage collection: drop dead references, unreferenced chunks, empty and mostly-dead packs,
//! and orphan pack files.
//!
//! Safety against concurrent backups, restores and deletes (the argument is repeated in
//! ARCHITECTURE.md):
//! - A chunk's index entry is removed only under the lifecycle lock, after rechecking (with a
//!   fresh iterator) that no reference to it exists. Writers take the same lock to learn which
//!   chunks exist and write their references in the same critical section, so a chunk a writer
//!   decided to reuse always has a reference by the time GC can look again.
//! - A reference is dead only if its backup is `error` or `deleting` (terminal states), or has no
//!   record and is not being written by this process. Records are written before any reference.
//!   A backup id is not final, though: the control plane deletes a suspended attempt's record and
//!   runs the backup again under the same id, whose references are the same keys. So a backup
//!   found dead in GC's snapshot is checked again under the lifecycle lock (not active, record
//!   absent or terminal) right before each batch of its references or manifest blocks is removed;
//!   a re-run registers as active before its first `add_refs`, which takes the same lock.
//! - A pack is deleted only when no index entry points into it, and only sealed packs (listed in
//!   `packs`) are candidates. Unsealed packs are registered as open before their file exists, so
//!   orphan detection (file neither sealed nor open) cannot hit a pack being written.
//! - Rewriting a pack copies its live entries into a new, fsynced pack, then repoints each chunk
//!   whose location still names the old pack (under the lock), then deletes the old file. A reader
//!   holding a stale location finds the old pack gone and looks the chunk up again.
use std::collections::{HashMap, HashSet};

use blockvault_core::{BackupId, BackupState, ChunkId, ManifestBlock, ManifestEntry, PackId};
use rocksdb::{WriteBatch, WriteOptions};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::index::{ChunkLoc, PackInfo, Store, CF_CHUNKS, CF_PACKS, CF_REFS};
use crate::pack::check_entry;

/// What one GC run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub dead_refs: u64,
    pub deletes_finished: u64,
    pub chunks_removed: u64,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    pub orphan_packs_deleted: u64,
    /// Packs GC would have deleted or rewritten but left alone: they are under S3 Object Lock
    /// retention (see `retention.rs`).
    pub packs_retained: u64,
    pub pack_bytes_before: u64,
    pub pack_bytes_after: u64,
}

impl GcReport {
    /// Bytes of pack storage given back.
    pub fn reclaimed_bytes(&self) -> u64 {
        self.pack_bytes_before.saturating_sub(self.pack_bytes_after)
    }
}

/// GC tuning.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Rewrite a pack when less than this fraction of its bytes is live.
    pub rewrite_below: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions { rewrite_below: 0.5 }
    }
}

const BATCH: usize = 1024;

impl Store {
    /// Runs one garbage collection. Safe to run while backups, restores and deletes run.
    pub fn gc(&self, opts: GcOptions) -> Result<GcReport> {
        let _one_gc = self.gc_lock.lock();
        let mut r = GcReport {
            pack_bytes_before: self.pack_bytes()?,
            ..GcReport::default()
        };
        self.gc_dead_refs(&mut r)?;
        self.gc_delete_unreferenced(&mut r)?;
        self.gc_packs(opts, &mut r)?;
        self.gc_orphan_packs(&mut r)?;
        r.pack_bytes_after = self.pack_bytes()?;
        Ok(r)
    }

    fn pack_bytes(&self) -> Result<u64> {
        Ok(self.sealed_packs()?.iter().map(|p| p.1.size).sum())
    }

    /// Is a reference from `b` dead? Terminal states are final; an unknown backup is rechecked
    /// against the live record and the active set (it may have started after our snapshot).
    fn ref_is_dead(
        &self,
        b: &BackupId,
        snapshot: &HashMap<BackupId, BackupState>,
        cache: &mut HashMap<BackupId, bool>,
    ) -> Result<bool> {
        if let Some(d) = cache.get(b) {
            return Ok(*d);
        }
        let dead = match snapshot.get(b) {
            Some(BackupState::Error | BackupState::Deleting) => true,
            Some(_) => false,
            None => {
                let exists = match self.get_record(b) {
                    Ok(_) => true,
                    Err(Error::BackupNotFound(_)) => false,
                    Err(e) => return Err(e),
                };
                !exists && !self.active.lock().contains(b)
            }
        };
        cache.insert(*b, dead);
        Ok(dead)
    }

    fn gc_dead_refs(&self, r: &mut GcReport) -> Result<()> {
        let states = self.record_states()?;
        // Finish interrupted deletes and drop failed backups' manifests first (cheap, by manifest).
        for (id, st) in &states {
            if !matches!(st, BackupState::Deleting | BackupState::Error) {
                continue;
            }
            if !self.drop_dead_references(id)? {
                continue; // started again under the same id since the snapshot
            }
            if *st == BackupState::Deleting {
                let _g = self.lifecycle.lock();
                let still_deleting = !self.active.lock().contains(id)
                    && matches!(self.get_record(id), Ok(rec) if rec.state == BackupState::Deleting);
                if still_deleting {
                    // A delete interrupted after marking the record removes its catalog
                    // objects (again: idempotent) before the record goes. Only after the check:
                    // a backup run again under this id owns the objects it commits.
                    self.delete_catalog_backup(id)?;
                    let mut wo = WriteOptions::default();
                    wo.set_sync(true);
                    self.db
                        .delete_cf_opt(self.cf(crate::index::CF_BACKUPS), id.as_bytes(), &wo)
                        .map_err(Error::db("delete record"))?;
                    r.deletes_finished += 1;
                }
            }
        }
        // Then sweep every reference for ones the manifests did not cover.
        let mut cache = HashMap::new();
        let mut dead = Vec::new();
        for kv in self
            .db
            .iterator_cf(self.cf(CF_REFS), rocksdb::IteratorMode::Start)
        {
            let (k, _) = kv.map_err(Error::db("iterate refs"))?;
            if k.len() != 48 {
                dead.push(k.to_vec());
                continue;
            }
            let b = BackupId::from_bytes(k[32..].try_into().expect("16"));
            if self.ref_is_dead(&b, &states, &mut cache)? {
                dead.push(k.to_vec());
            }
            if dead.len() >= BATCH {
                r.dead_refs += self.delete_dead_refs(std::mem::take(&mut dead))?;
            }
        }
        r.dead_refs += self.delete_dead_refs(dead)?;
        Ok(())
    }

    /// Under the lifecycle lock: is `b` still dead? (Not being written, and its record is gone or
    /// terminal.) A backup found dead earlier may have been started again under the same id.
    fn still_dead(&self, b: &BackupId) -> Result<bool> {
        if self.active.lock().contains(b) {
            return Ok(false);
        }
        match self.get_record(b) {
            Ok(rec) => Ok(matches!(
                rec.state,
                BackupState::Error | BackupState::Deleting
            )),
            Err(Error::BackupNotFound(_)) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Deletes reference keys found dead, rechecking their backups under the lifecycle lock.
    fn delete_dead_refs(&self, keys: Vec<Vec<u8>>) -> Result<u64> {
        let _g = self.lifecycle.lock();
        let mut dead: HashMap<BackupId, bool> = HashMap::new();
        let mut b = WriteBatch::default();
        let mut n = 0;
        for k in keys {
            if k.len() == 48 {
                let id = BackupId::from_bytes(k[32..].try_into().expect("16"));
                let d = match dead.get(&id) {
                    Some(d) => *d,
                    None => {
                        let d = self.still_dead(&id)?;
                        dead.insert(id, d);
                        d
                    }
                };
                if !d {
                    continue;
                }
            }
            b.delete_cf(self.cf(CF_REFS), k);
            n += 1;
        }
        self.db.write(b).map_err(Error::db("gc delete refs"))?;
        Ok(n)
    }

    /// Removes a dead backup's manifest blocks and the references they list, one block per
    /// batch, each under the lifecycle lock after checking that the backup is still dead.
    /// Returns false when it stopped because the backup is alive again.
    fn drop_dead_references(&self, id: &BackupId) -> Result<bool> {
        let refs_cf = self.cf(CF_REFS);
        let man_cf = self.cf(crate::index::CF_MANIFESTS);
        for n in 0u32.. {
            let _g = self.lifecycle.lock();
            if !self.still_dead(id)? {
                return Ok(false);
            }
            let key = crate::index::manifest_key(id, n);
            let Some(v) = self
                .db
                .get_pinned_cf(man_cf, key)
                .map_err(Error::db("get manifest block"))?
            else {
                break;
            };
            // A damaged block cannot be parsed for its refs; the sweep below removes them.
            let mut b = WriteBatch::default();
            if let Ok(block) = ManifestBlock::decode(&v) {
                for e in &block.entries {
                    if let ManifestEntry::Chunk { id: c, .. } = e {
                        b.delete_cf(refs_cf, crate::index::ref_key(c, id));
                    }
                }
            }
            b.delete_cf(man_cf, key);
            drop(v);
            self.db.write(b).map_err(Error::db("drop refs"))?;
        }
        Ok(true)
    }

    /// Is there a reference to `id`? An iterator that stops on an error is an error, not "no
    /// reference": GC must never remove a chunk because a read failed.
    fn has_ref(it: &mut rocksdb::DBRawIterator<'_>, id: &ChunkId) -> Result<bool> {
        it.seek(id.as_bytes());
        if it.valid() {
            return Ok(it.key().is_some_and(|k| k.starts_with(id.as_bytes())));
        }
        it.status().map_err(Error::db("iterate refs"))?;
        Ok(false)
    }

    /// Removes index entries of chunks nobody references (rechecked under the lifecycle lock).
    pub fn gc_delete_unreferenced(&self, r: &mut GcReport) -> Result<()> {
        let mut candidates = Vec::new();
        {
            let mut refs = self.db.raw_iterator_cf(self.cf(CF_REFS));
            for c in self.chunks() {
                let (id, _) = c?;
                if !Self::has_ref(&mut refs, &id)? {
                    candidates.push(id);
                }
                if candidates.len() >= BATCH {
                    r.chunks_removed +=
                        self.remove_if_unreferenced(&std::mem::take(&mut candidates))?;
                }
            }
        }
        r.chunks_removed += self.remove_if_unreferenced(&candidates)?;
        Ok(())
    }

    fn remove_if_unreferenced(&self, ids: &[ChunkId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let _g = self.lifecycle.lock();
        // A fresh iterator: it sees every reference written before we took the lock.
        let mut refs = self.db.raw_iterator_cf(self.cf(CF_REFS));
        let mut b = WriteBatch::default();
        let mut n = 0;
        for id in ids {
            if !Self::has_ref(&mut refs, id)? {
                b.delete_cf(self.cf(CF_CHUNKS), id.as_bytes());
                n += 1;
            }
        }
        drop(refs);
        self.db.write(b).map_err(Error::db("gc remove chunks"))?;
        Ok(n)
    }

    fn gc_packs(&self, opts: GcOptions, r: &mut GcReport) -> Result<()> {
        // Snapshot the sealed packs *before* counting live bytes: a pack sealed after the
        // snapshot is not a candidate, and one sealed before it has its chunk entries (written
        // in the same batch) visible to the count. The other order deletes freshly sealed packs
        // (caught by `gc_running_while_backups_write_breaks_nothing`).
        let sealed = self.sealed_packs()?;
        let mut live: HashMap<PackId, u64> = HashMap::new();
        for c in self.chunks() {
            let (_, loc) = c?;
            *live.entry(loc.pack).or_default() += loc.entry_len();
        }
        let mut rewrite = HashSet::new();
        let now = blockvault_core::unix_now();
        for (id, info) in sealed {
            let l = live.get(&id).copied().unwrap_or(0);
            let candidate = l == 0 || (l as f64) < opts.rewrite_below * info.size as f64;
            if candidate && self.pack_is_retained(id, now)? {
                r.packs_retained += 1;
            } else if l == 0 {
                self.forget_pack(id)?;
                r.packs_deleted += 1;
            } else if candidate {
                rewrite.insert(id);
            }
        }
        if rewrite.is_empty() {
            return Ok(());
        }
        let mut moving: Vec<(ChunkId, ChunkLoc)> = Vec::new();
        for c in self.chunks() {
            let (id, loc) = c?;
            if rewrite.contains(&loc.pack) {
                moving.push((id, loc));
            }
        }
        // Copy live entries into new packs, sealing each at the target size. On an error the
        // pack being written is abandoned, so it becomes an orphan the next GC removes.
        let mut writer = self.new_pack()?;
        let mut moved = Vec::new();
        let copied = (|| -> Result<()> {
            for (id, loc) in moving {
                let raw = self
                    .packs
                    .read_at(loc.pack, loc.offset, loc.entry_len() as usize)
                    .map_err(|e| Error::io(self.packs.describe(loc.pack), e))?;
                // A corrupt entry is not copied; verify reports it, and its old pack is kept.
                let Ok(env) = check_entry(raw, &id) else {
                    rewrite.remove(&loc.pack);
                    continue;
                };
                writer
                    .append(id, loc.raw_len, &env)
                    .map_err(|e| Error::io(self.packs.describe(writer.id()), e))?;
                moved.push((id, loc));
                if writer.size() >= self.config().pack_target_size {
                    let next = self.new_pack()?;
                    self.commit_rewrite(std::mem::replace(&mut writer, next), &mut moved)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = copied {
            self.abandon_pack(writer);
            return Err(e);
        }
        self.commit_rewrite(writer, &mut moved)?;
        for id in rewrite {
            // Retained since the snapshot: its chunks were not repointed (`commit_rewrite`),
            // and it stays.
            let _g = self.lifecycle.lock();
            if self.pack_is_retained(id, now)? {
                r.packs_retained += 1;
                continue;
            }
            self.forget_pack(id)?;
            r.packs_rewritten += 1;
        }
        Ok(())
    }

    /// Seals a GC pack, then repoints chunks that still live where they were copied from.
    fn commit_rewrite(
        &self,
        writer: crate::pack::PackWriter,
        moved: &mut Vec<(ChunkId, ChunkLoc)>,
    ) -> Result<()> {
        let id = writer.id();
        if writer.is_empty() {
            self.abandon_pack(writer);
            let _ = self.packs.delete(id);
            return Ok(());
        }
        let res = (|| {
            let crate::pack::SealedPack { size, entries } = writer
                .finish()
                .map_err(|e| Error::io(self.packs.describe(id), e))?;
            let old: HashMap<ChunkId, ChunkLoc> = moved.drain(..).collect();
            let _g = self.lifecycle.lock();
            let now = blockvault_core::unix_now();
            let mut b = WriteBatch::default();
            for (cid, new_loc) in &entries {
                let Some(was) = old.get(cid).copied() else {
                    continue;
                };
                // A pack retained since GC chose it keeps its chunks where a retention covers
                // them; the copy stays unreferenced and a later GC removes it.
                if self.pack_is_retained(was.pack, now)? {
                    continue;
                }
                if self.chunk_location(cid)? == Some(was) {
                    b.put_cf(self.cf(CF_CHUNKS), cid.as_bytes(), new_loc.encode());
                }
            }
            let info = PackInfo {
                size,
                entries: entries.len() as u32,
            };
            b.put_cf(self.cf(CF_PACKS), id.0, info.encode());
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            self.db.write_opt(b, &wo).map_err(Error::db("gc repoint"))
        })();
        self.open_packs.lock().remove(&id);
        res
    }

    /// Removes a sealed pack from the index, then its file.
    fn forget_pack(&self, id: PackId) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .delete_cf_opt(self.cf(CF_PACKS), id.0, &wo)
            .map_err(Error::db("forget pack"))?;
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(crate::index::CF_VERIFIED), id.0);
        self.forget_retention(&mut b, id);
        self.db.write(b).map_err(Error::db("forget pack"))?;
        self.packs
            .delete(id)
            .map_err(|e| Error::io(self.packs.describe(id), e))
    }

    fn gc_orphan_packs(&self, r: &mut GcReport) -> Result<()> {
        // Order matters: list files, then snapshot open packs, then read sealed packs.
        let files = self
            .packs
            .list()
            .map_err(|e| Error::io("pack storage", e))?;
        let open = self.open_packs.lock().clone();
        let sealed: HashSet<PackId> = self.sealed_packs()?.into_iter().map(|p| p.0).collect();
        for id in files {
            if !open.contains(&id) && !sealed.contains(&id) {
                self.packs
                    .delete(id)
                    .map_err(|e| Error::io(self.packs.describe(id), e))?;
                r.orphan_packs_deleted += 1;
            }
        }
        Ok(())
    }
}
