//! The restore pipeline: manifest -> parallel read, decrypt, decompress, verify -> pwrite.
//!
//! Every chunk is checked against its BLAKE3 id before a byte of it reaches the target; the first
//! failure stops the restore and names the chunk. A target file created by the restore is removed
//! again on failure, so a failed restore never leaves a plausible-looking image behind.
use std::path::PathBuf;
use std::sync::Arc;

use blockvault_core::manifest::Coverage;
use blockvault_core::{BackupId, BackupState, ChunkId, ChunkKeys, EnvelopeCodec, ManifestEntry};
use parking_lot::Mutex;
use serde::Serialize;

use crate::assemble::{Assembler, Segment};
use crate::device::Target;
use crate::error::{Error, Result};
use crate::{CancelToken, Engine, NoProgress, Progress};

/// What to restore where.
#[derive(Clone)]
pub struct RestoreOptions {
    pub backup: BackupId,
    /// A block device or image file; a missing path becomes a new sparse file.
    pub target: PathBuf,
    pub progress: Arc<dyn Progress>,
    pub cancel: CancelToken,
}

impl RestoreOptions {
    /// Restore `backup` to `target`.
    pub fn new(backup: BackupId, target: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            backup,
            target: target.into(),
            progress: Arc::new(NoProgress),
            cancel: CancelToken::default(),
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub backup_id: BackupId,
    pub target: String,
    pub bytes: u64,
    pub chunks: u64,
    pub hole_bytes: u64,
}

/// Writer threads: they mostly wait for the disk.
const WRITERS: usize = 3;
/// Completed segments queued for the writers.
const WRITE_QUEUE: usize = 6;

struct Work {
    id: ChunkId,
    offset: u64,
    len: u32,
}

/// Consecutive manifest entries read by one worker with one [`Store::read_envelopes`] call, so
/// neighbouring entries of a pack become one ranged request on an object store.
///
/// [`Store::read_envelopes`]: blockvault_store::Store::read_envelopes
const BATCH_CHUNKS: usize = 64;
/// A batch is also closed at this many plaintext bytes.
const BATCH_BYTES: u64 = 4 << 20;

impl Engine {
    /// Restores a backup byte for byte.
    pub fn restore(&self, opts: RestoreOptions) -> Result<RestoreReport> {
        let rec = self.store.get_record(&opts.backup)?;
        if rec.state != BackupState::Available {
            return Err(Error::NotAvailable {
                id: rec.id,
                state: rec.state,
            });
        }
        let keys = self
            .record_keys(&rec)?
            .ok_or_else(|| Error::WrongMasterKey("volume has no data key".into()))?;
        let target = Target::open(&opts.target, rec.size, rec.id)?;
        opts.progress.set_total(rec.size);
        let result = self.restore_into(&rec, &target, keys.chunk_keys(), &opts);
        match result {
            Ok(r) => {
                target.sync()?;
                Ok(r)
            }
            Err(e) => {
                if target.created {
                    let _ = std::fs::remove_file(&target.path);
                }
                Err(e)
            }
        }
    }

    fn restore_into(
        &self,
        rec: &blockvault_core::BackupRecord,
        target: &Target,
        keys: ChunkKeys<'_>,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        let failed = || failure.lock().is_some();
        let fail = |e: Error| {
            let mut f = failure.lock();
            if f.is_none() {
                *f = Some(e);
            }
        };
        // Readers: one per core, or as many reads as the pack storage wants in flight (an
        // object store), whichever is more.
        let readers = self
            .threads
            .max(self.store.pack_storage().read_concurrency());
        let (tx, rx) = crossbeam_channel::bounded::<Vec<Work>>(readers * 2);
        // Completed segments wait here for the writers; the bound keeps memory flat while
        // absorbing the disk's jitter.
        let (done_tx, done_rx) = crossbeam_channel::bounded::<Segment>(WRITE_QUEUE);
        let asm = Assembler::new(target, rec.size);
        let mut report = RestoreReport {
            backup_id: rec.id,
            target: target.path.display().to_string(),
            bytes: 0,
            chunks: 0,
            hole_bytes: 0,
        };
        std::thread::scope(|s| {
            let (fail, failed, asm) = (&fail, &failed, &asm);
            // Several writers keep more than one O_DIRECT write in flight.
            for _ in 0..WRITERS {
                let done_rx = done_rx.clone();
                s.spawn(move || {
                    for seg in done_rx.iter() {
                        if failed() {
                            continue;
                        }
                        if let Err(e) = asm.write(seg) {
                            fail(e);
                        }
                    }
                });
            }
            drop(done_rx);
            for _ in 0..readers {
                let rx = rx.clone();
                let done_tx = done_tx.clone();
                s.spawn(move || {
                    for batch in rx.iter() {
                        if failed() {
                            continue;
                        }
                        let ids: Vec<ChunkId> = batch.iter().map(|w| w.id).collect();
                        let envs = self.store.read_envelopes(&ids);
                        for (w, env) in batch.iter().zip(envs) {
                            let r = env
                                .map_err(|e| Error::for_chunk(w.id, e))
                                .and_then(|mut env| {
                                    EnvelopeCodec::open_in_place_with(&w.id, &mut env, keys)
                                        .map_err(|e| Error::for_chunk(w.id, e))
                                })
                                .and_then(|plain| {
                                    if plain.len() != w.len as usize {
                                        return Err(Error::Corrupt {
                                            chunk: w.id,
                                            detail: format!(
                                                "{} bytes, manifest says {}",
                                                plain.len(),
                                                w.len
                                            ),
                                        });
                                    }
                                    asm.data(w.offset, &plain, &done_tx);
                                    Ok(())
                                });
                            match r {
                                Ok(()) => opts.progress.advance(u64::from(w.len)),
                                Err(e) => {
                                    fail(e);
                                    break;
                                }
                            }
                        }
                    }
                });
            }
            drop(rx);
            // Every entry is checked before anything is written for it: no gap, no overlap,
            // nothing past the record's size (so nothing past the target's end), no overflow.
            let mut coverage = Coverage::new(rec.size);
            let mut batch = Vec::with_capacity(BATCH_CHUNKS);
            let mut batch_bytes = 0u64;
            'blocks: for block in self.store.manifest(&rec.id) {
                if failed() {
                    break;
                }
                if opts.cancel.is_cancelled() {
                    fail(Error::Cancelled);
                    break;
                }
                let block = match block {
                    Ok(b) => b,
                    Err(e) => {
                        fail(Error::for_manifest(rec.id, e));
                        break;
                    }
                };
                if let Err(e) = coverage.block(&block) {
                    fail(Error::for_manifest(rec.id, e));
                    break;
                }
                for e in block.entries {
                    let offset = match coverage.entry(&e) {
                        Ok(o) => o,
                        Err(err) => {
                            fail(Error::for_manifest(rec.id, err));
                            break 'blocks;
                        }
                    };
                    match e {
                        ManifestEntry::Chunk { id, len } => {
                            report.chunks += 1;
                            batch.push(Work { id, offset, len });
                            batch_bytes += u64::from(len);
                            if batch.len() >= BATCH_CHUNKS || batch_bytes >= BATCH_BYTES {
                                batch_bytes = 0;
                                let full =
                                    std::mem::replace(&mut batch, Vec::with_capacity(BATCH_CHUNKS));
                                if tx.send(full).is_err() {
                                    break 'blocks;
                                }
                            }
                        }
                        ManifestEntry::Hole { len } => {
                            report.hole_bytes += len;
                            if let Err(e) = asm.hole(offset, len, &done_tx) {
                                fail(e);
                                break;
                            }
                            opts.progress.advance(len);
                        }
                    }
                }
            }
            if !batch.is_empty() && !failed() {
                let _ = tx.send(batch);
            }
            drop(tx);
            drop(done_tx);
            report.bytes = coverage.offset();
            if let Err(e) = coverage.finish() {
                fail(Error::for_manifest(rec.id, e));
            }
        });
        match failure.into_inner() {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}
