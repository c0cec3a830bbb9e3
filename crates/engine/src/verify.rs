//! Verify: read back chunks and check them against their ids.
//!
//! For one backup: every chunk its manifest names. For the whole store: every manifest's chunks
//! are looked up (missing ones reported with the backups naming them), then every stored chunk
//! that an available backup needs is read, pack by pack, decrypted with the key of a volume that
//! references it, decompressed and hashed. A store verify remembers which packs it found intact
//! and when, and with a period skips those checked within it (`verify_store_within`).
//! Problems name the chunk and the available backups that reference it. Every manifest walked is
//! also checked to cover exactly `[0, size)` of its record (contiguous blocks, no entry past the
//! size, checked sums); a manifest that does not is a [`ManifestProblem`] naming the backup.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use blockvault_core::manifest::Coverage;
use blockvault_core::{
    BackupId, BackupRecord, BackupState, ChunkId, ChunkKeys, EnvelopeCodec, ManifestEntry,
};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::{Engine, Progress, VolumeKeys};

/// One damaged or missing chunk.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ChunkProblem {
    /// Chunk id (hex).
    pub chunk: String,
    pub problem: String,
    /// Available backups that reference the chunk (and so cannot be restored).
    pub backups: Vec<BackupId>,
}

/// A backup whose manifest is damaged or does not cover exactly `[0, size)` of its volume.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ManifestProblem {
    pub backup: BackupId,
    pub problem: String,
}

/// Result of a verify run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub backups_checked: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub corrupt: Vec<ChunkProblem>,
    pub missing: Vec<ChunkProblem>,
    /// Backups whose manifest cannot be read or has a gap, an overlap or an entry past the size.
    pub manifests: Vec<ManifestProblem>,
    /// Packs read and checked (store verify only).
    pub packs_checked: u64,
    /// Packs skipped because a run within the period found them intact (store verify only).
    pub packs_skipped: u64,
}

impl VerifyReport {
    fn problem_count(&self) -> usize {
        self.corrupt.len() + self.missing.len()
    }

    /// True when nothing is damaged or missing.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty() && self.manifests.is_empty()
    }
    /// Every backup affected by a problem.
    pub fn affected_backups(&self) -> BTreeSet<BackupId> {
        self.corrupt
            .iter()
            .chain(&self.missing)
            .flat_map(|p| p.backups.iter().copied())
            .chain(self.manifests.iter().map(|p| p.backup))
            .collect()
    }
}

const BATCH: usize = 512;
/// Entries of a batch read with one `read_envelopes` call.
const READ_RUN: usize = 64;

/// Largest set of chunk ids remembered to skip duplicates within one backup's verify.
const MAX_SEEN: usize = 1 << 20;

impl Engine {
    fn check_chunk(
        id: &ChunkId,
        env: blockvault_store::Result<blockvault_store::EntryBytes>,
        keys: ChunkKeys<'_>,
    ) -> std::result::Result<u64, Error> {
        let mut env = env.map_err(|e| Error::for_chunk(*id, e))?;
        let plain = EnvelopeCodec::open_in_place_with(id, &mut env, keys)
            .map_err(|e| Error::for_chunk(*id, e))?;
        Ok(plain.len() as u64)
    }

    /// Walks `rec`'s manifest, checking that it decodes and covers exactly `[0, size)`, and
    /// hands every entry to `f`. A damaged manifest is returned as `Ok(Some(problem))` after
    /// the entries before the damage were handed out; index failures are errors.
    fn walk_manifest(
        &self,
        rec: &BackupRecord,
        mut f: impl FnMut(&ManifestEntry) -> Result<()>,
    ) -> Result<Option<ManifestProblem>> {
        let problem = |e: Error| ManifestProblem {
            backup: rec.id,
            problem: Error::for_manifest(rec.id, e).to_string(),
        };
        let mut coverage = Coverage::new(rec.size);
        for block in self.store.manifest(&rec.id) {
            let block = match block {
                Ok(b) => b,
                Err(
                    e
                    @ (blockvault_store::Error::Corrupt { .. } | blockvault_store::Error::Core(_)),
                ) => return Ok(Some(problem(e.into()))),
                Err(e) => return Err(e.into()),
            };
            if let Err(e) = coverage.block(&block) {
                return Ok(Some(problem(e.into())));
            }
            for e in &block.entries {
                if let Err(err) = coverage.entry(e) {
                    return Ok(Some(problem(err.into())));
                }
                f(e)?;
            }
        }
        Ok(coverage.finish().err().map(|e| problem(e.into())))
    }

    fn available_referrers(&self, id: &ChunkId) -> Result<Vec<BackupId>> {
        let mut v = Vec::new();
        for b in self.store.referrers(id)? {
            if matches!(self.store.get_record(&b), Ok(r) if r.state == BackupState::Available) {
                v.push(b);
            }
        }
        Ok(v)
    }

    /// Checks a batch in parallel on the engine's pool and files each failure.
    fn check_batch(
        &self,
        batch: &[(ChunkId, VolumeKeys)],
        report: &mut VerifyReport,
    ) -> Result<()> {
        // Runs of neighbouring entries are read together (one request per pack on an object
        // store), the runs in parallel.
        let results: Vec<_> = self.pool.install(|| {
            batch
                .par_chunks(READ_RUN)
                .flat_map_iter(|run| {
                    let ids: Vec<ChunkId> = run.iter().map(|(id, _)| *id).collect();
                    let envs = self.store.read_envelopes(&ids);
                    run.iter()
                        .zip(envs)
                        .map(|((id, keys), env)| {
                            (*id, Self::check_chunk(id, env, keys.chunk_keys()))
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        });
        for (id, r) in results {
            report.chunks_checked += 1;
            match r {
                Ok(n) => report.bytes_checked += n,
                Err(e) => {
                    let missing = matches!(
                        e,
                        Error::Store(
                            blockvault_store::Error::MissingChunk(_)
                                | blockvault_store::Error::MissingPack { .. }
                        )
                    );
                    let p = ChunkProblem {
                        chunk: id.to_hex(),
                        problem: e.to_string(),
                        backups: self.available_referrers(&id)?,
                    };
                    if missing {
                        report.missing.push(p);
                    } else {
                        report.corrupt.push(p);
                    }
                }
            }
        }
        Ok(())
    }

    /// Verifies one backup, or with `None` the whole store.
    pub fn verify(
        &self,
        backup: Option<BackupId>,
        progress: &dyn Progress,
    ) -> Result<VerifyReport> {
        match backup {
            Some(id) => self.verify_backup(id, progress),
            None => self.verify_store_within(std::time::Duration::ZERO, progress),
        }
    }

    fn verify_backup(&self, id: BackupId, progress: &dyn Progress) -> Result<VerifyReport> {
        let rec = self.store.get_record(&id)?;
        if rec.state != BackupState::Available {
            return Err(Error::NotAvailable {
                id,
                state: rec.state,
            });
        }
        // An encrypted backup whose data key is gone still gets its chunks checked: each one is
        // then reported ("encrypted but no data key was given").
        let keys = self.record_keys(&rec)?.unwrap_or(VolumeKeys::Plain);
        progress.set_total(rec.size);
        let mut report = VerifyReport {
            backups_checked: 1,
            ..Default::default()
        };
        let mut seen = HashSet::new();
        let mut batch = Vec::with_capacity(BATCH);
        let problem = self.walk_manifest(&rec, |e| {
            progress.advance(e.len());
            if let ManifestEntry::Chunk { id: c, .. } = *e {
                if seen.len() < MAX_SEEN && !seen.insert(c) {
                    return Ok(());
                }
                batch.push((c, keys.clone()));
                if batch.len() >= BATCH {
                    let checked = self.check_batch(&batch, &mut report);
                    batch.clear();
                    return checked;
                }
            }
            Ok(())
        })?;
        self.check_batch(&batch, &mut report)?;
        report.manifests.extend(problem);
        Ok(report)
    }

    /// Verifies the whole store, pack by pack, skipping packs found intact less than `period`
    /// ago (`Duration::ZERO`: every pack). Every pack found intact is remembered with the time,
    /// as it is checked, so a run stopped by a crash or a shutdown resumes where it stopped; a
    /// pack with a damaged chunk is not, so every run reports it again. The manifest checks
    /// (coverage, chunks missing from the index) read the index only and always run.
    pub fn verify_store_within(
        &self,
        period: std::time::Duration,
        progress: &dyn Progress,
    ) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let records: HashMap<BackupId, _> = self
            .store
            .list_records()?
            .into_iter()
            .filter(|r| r.state == BackupState::Available)
            .map(|r| (r.id, r))
            .collect();
        // 1. Every chunk named by an available backup must be indexed.
        let mut missing: BTreeMap<ChunkId, BTreeSet<BackupId>> = BTreeMap::new();
        for rec in records.values() {
            report.backups_checked += 1;
            let problem = self.walk_manifest(rec, |e| {
                if let ManifestEntry::Chunk { id, .. } = *e {
                    if !self.store.has_chunk(&id)? {
                        missing.entry(id).or_default().insert(rec.id);
                    }
                }
                Ok(())
            })?;
            report.manifests.extend(problem);
        }
        report.manifests.sort_by_key(|p| p.backup);
        report.missing = missing
            .into_iter()
            .map(|(id, b)| ChunkProblem {
                chunk: id.to_hex(),
                problem: format!("chunk {id} is missing from the store"),
                backups: b.into_iter().collect(),
            })
            .collect();
        // 2. Every stored chunk that an available backup references must open and hash right:
        // pack by pack, in the order the trailer lists them, so an object store serves each
        // run of entries with one ranged GET.
        let now = blockvault_core::unix_now();
        let mut due = Vec::new();
        for (pack, info) in self.store.sealed_packs()? {
            let fresh = !period.is_zero()
                && self
                    .store
                    .pack_verified_at(pack)?
                    .is_some_and(|t| now.saturating_sub(t) < period.as_secs());
            if fresh {
                report.packs_skipped += 1;
            } else {
                due.push((pack, info));
            }
        }
        progress.set_total(due.iter().map(|p| p.1.size).sum());
        let mut untrusted = HashSet::new();
        for (pack, info) in due {
            let Some(entries) = self.store.pack_entries(pack, info.size) else {
                untrusted.insert(pack);
                continue;
            };
            let problems = report.problem_count();
            // A copy the index does not point at (GC moved the chunk) is not needed.
            let wanted =
                entries
                    .into_iter()
                    .filter_map(|(id, loc)| match self.store.chunk_location(&id) {
                        Ok(at) if at == Some(loc) => Some(Ok(id)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e.into())),
                    });
            self.check_chunks(wanted, &records, &mut report)?;
            progress.advance(info.size);
            report.packs_checked += 1;
            let intact = report.problem_count() == problems;
            self.store.set_pack_verified(pack, intact.then_some(now))?;
        }
        // 3. Packs without a trailer that checks (version 1, or damaged): their chunks are
        // found in the index instead, in one pass over it.
        if !untrusted.is_empty() {
            let problems = report.problem_count();
            let wanted = self.store.chunks().filter_map(|c| match c {
                Ok((id, loc)) if untrusted.contains(&loc.pack) => {
                    progress.advance(loc.entry_len());
                    Some(Ok(id))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e.into())),
            });
            self.check_chunks(wanted, &records, &mut report)?;
            report.packs_checked += untrusted.len() as u64;
            let intact = report.problem_count() == problems;
            for pack in untrusted {
                self.store.set_pack_verified(pack, intact.then_some(now))?;
            }
        }
        Ok(report)
    }

    /// Checks `chunks` that an available backup needs, in batches, in the order given.
    fn check_chunks(
        &self,
        chunks: impl Iterator<Item = Result<ChunkId>>,
        records: &HashMap<BackupId, BackupRecord>,
        report: &mut VerifyReport,
    ) -> Result<()> {
        let mut batch = Vec::with_capacity(BATCH);
        for id in chunks {
            let id = id?;
            if let Some(keys) = self.owner_keys(&id, records)? {
                batch.push((id, keys));
            }
            if batch.len() >= BATCH {
                self.check_batch(&batch, report)?;
                batch.clear();
            }
        }
        self.check_batch(&batch, report)
    }

    /// The keys chunk `id` is checked with: those of any available backup that references it
    /// (every backup naming a chunk named it under the same keys: ids of different volume keys
    /// or domains differ). `None` for a chunk no available backup needs (garbage for GC).
    fn owner_keys(
        &self,
        id: &ChunkId,
        records: &HashMap<BackupId, BackupRecord>,
    ) -> Result<Option<VolumeKeys>> {
        let Some(owner) = self
            .store
            .referrers(id)?
            .into_iter()
            .find_map(|b| records.get(&b))
        else {
            return Ok(None);
        };
        Ok(Some(self.record_keys(owner)?.unwrap_or(VolumeKeys::Plain)))
    }
}
