//! The backup pipeline.
//!
//! Three stages overlap:
//! 1. **reader** (one thread per backup): reads the volume in 8 MiB blocks, cuts chunks with
//!    FastCDC, takes each chunk's size from the shared byte budget, and hands it to the pool;
//! 2. **workers** (the engine's pool, shared by all backups): zero check, BLAKE3 id, a dedup
//!    lookup, and for chunks the store lacks, zstd and AES-GCM sealing;
//! 3. **writer** (the calling thread): puts results back in volume order, records references and
//!    manifest blocks in groups (asking the store, under its lifecycle lock, which chunks exist),
//!    appends missing chunks to a pack, and seals packs as they fill.
//!
//! Durability order (see ARCHITECTURE.md): `in_progress` record -> per group: references and
//! manifest blocks -> pack fsync -> pack's index entries -> final manifest block and `available`
//! record in one synced batch. A crash anywhere before the last step leaves the backup
//! `in_progress`; the next open marks it `error` and GC reclaims what only it used.
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blockvault_core::chunker::{is_zero, Chunker, RawChunk};
use blockvault_core::format::RECORD_VERSION;
use blockvault_core::manifest::ManifestBuilder;
use blockvault_core::{
    BackupId, BackupRecord, BackupState, ChunkId, ChunkKeys, DataKey, EnvelopeCodec, ManifestBlock,
    ManifestEntry, PackId, VolumeId,
};
use blockvault_store::{PackWriter, RefBatch, Store};
use time::OffsetDateTime;

use crate::device::Source;
use crate::error::{Error, Result};
use crate::{CancelToken, Engine, NoProgress, Progress, VolumeKeys};

/// What to back up and how.
#[derive(Clone)]
pub struct BackupOptions {
    pub volume: VolumeId,
    pub source: PathBuf,
    /// Record the backup as an incremental of `parent` (or of the volume's newest backup).
    pub incremental: bool,
    pub parent: Option<BackupId>,
    /// Encrypt the volume. A volume that already has a data key is always encrypted.
    pub encrypt: bool,
    /// The dedup domain of an unencrypted volume (the daemon passes the project id): chunk ids
    /// are keyed BLAKE3 under a key derived from the master key and the domain, so volumes
    /// dedup only within their domain and the store cannot tell whether another domain holds
    /// the same data. Needs the store's master key. `None`: the global domain (plain BLAKE3).
    /// Ignored for encrypted volumes, whose ids are keyed by their own data key.
    pub dedup_domain: Option<String>,
    /// Use this id for the new backup (the control plane assigns ids up front).
    pub id: Option<BackupId>,
    /// Text kept with the backup's record in the catalog, at most
    /// [`blockvault_store::MAX_ANNOTATION`] bytes, given back by `recover` (the daemon stores
    /// its control row here, so a recovered node lists its backups with their Cinder fields).
    pub annotation: Option<String>,
    pub progress: Arc<dyn Progress>,
    pub cancel: CancelToken,
}

impl BackupOptions {
    /// Options for a full, unencrypted backup of `source` as `volume`.
    pub fn new(volume: VolumeId, source: impl Into<PathBuf>) -> Self {
        BackupOptions {
            volume,
            source: source.into(),
            incremental: false,
            parent: None,
            encrypt: false,
            dedup_domain: None,
            id: None,
            annotation: None,
            progress: Arc::new(NoProgress),
            cancel: CancelToken::default(),
        }
    }
}

/// A worker's verdict on one chunk.
enum Processed {
    Hole,
    Chunk {
        id: ChunkId,
        /// Kept when the chunk looked stored already (needed only if GC removes it meanwhile).
        data: Option<Vec<u8>>,
        envelope: Option<Vec<u8>>,
    },
}

struct Item {
    seq: u64,
    len: u32,
    result: Result<Processed>,
}

impl Item {
    /// Budget bytes this item holds: chunks sent to a worker hold their length, holes nothing.
    fn held(&self) -> u64 {
        match self.result {
            Ok(Processed::Hole) => 0,
            _ => u64::from(self.len),
        }
    }
}

/// Totals a backup accumulates.
#[derive(Default)]
struct Totals {
    stored_bytes: u64,
    new_chunks: u64,
    hole_bytes: u64,
}

/// What the pipeline produced, for the commit.
struct Outcome {
    totals: Totals,
    /// Manifest blocks already written (the last block gets this number).
    blocks_written: u32,
    last_block: Option<ManifestBlock>,
    object_count: u64,
    /// Bytes the manifest covers.
    bytes: u64,
}

/// Holes are handed to the writer in pieces of at most this many bytes.
const HOLE_PIECE: u64 = 1 << 30;

/// Groups of this many results share one index batch.
const GROUP: usize = 256;

fn process(
    store: &Store,
    codec: EnvelopeCodec,
    keys: ChunkKeys<'_>,
    chunk: RawChunk,
) -> Result<Processed> {
    let id = keys.chunk_id(&chunk.data);
    if store.has_chunk(&id)? {
        return Ok(Processed::Chunk {
            id,
            data: Some(chunk.data),
            envelope: None,
        });
    }
    let envelope = codec.seal(&id, &chunk.data, keys.data_key());
    Ok(Processed::Chunk {
        id,
        data: None,
        envelope: Some(envelope),
    })
}

impl Engine {
    /// Backs up a volume. Returns the committed record.
    pub fn backup(&self, opts: BackupOptions) -> Result<BackupRecord> {
        let source = Source::open(&opts.source)?;
        let data_timestamp = OffsetDateTime::now_utc();
        let has_key = self.store.volume_key(&opts.volume)?.is_some();
        let key = if opts.encrypt || has_key {
            self.volume_key(&opts.volume, true)?
        } else {
            None
        };
        let keys = match (&key, &opts.dedup_domain) {
            (Some(k), _) => VolumeKeys::Encrypted(k.clone()),
            (None, Some(d)) if d.is_empty() => {
                return Err(Error::Core(blockvault_core::Error::Invalid {
                    field: "dedup_domain",
                    reason: "must not be empty".into(),
                }))
            }
            (None, Some(d)) => VolumeKeys::Domain(self.domain_key(d)?),
            (None, None) => VolumeKeys::Plain,
        };
        let parent = self.resolve_parent(&opts)?;
        let id = opts.id.unwrap_or_default();
        let mut rec = BackupRecord {
            format: RECORD_VERSION,
            id,
            volume_id: opts.volume.clone(),
            state: BackupState::InProgress,
            size: source.size,
            stored_bytes: 0,
            new_chunks: 0,
            object_count: 0,
            hole_bytes: 0,
            is_incremental: parent.is_some(),
            parent_id: parent,
            created_at: data_timestamp,
            data_timestamp,
            completed_at: None,
            encrypted: key.is_some(),
            encryption_key_id: key.as_ref().map(|k| k.key_id()),
            chunker: self.store.config().chunker,
            manifest_blocks: 0,
            fail_reason: None,
            dedup_domain: match keys {
                VolumeKeys::Domain(_) => opts.dedup_domain.clone(),
                VolumeKeys::Plain | VolumeKeys::Encrypted(_) => None,
            },
        };
        let _active = self.store.begin_backup(&rec)?;
        opts.progress.set_total(source.size);
        match self.run_backup(&rec, source, keys, &opts) {
            Ok(out) => {
                rec.state = BackupState::Available;
                rec.stored_bytes = out.totals.stored_bytes;
                rec.new_chunks = out.totals.new_chunks;
                rec.hole_bytes = out.totals.hole_bytes;
                rec.object_count = out.object_count;
                rec.manifest_blocks = out.blocks_written + u32::from(out.last_block.is_some());
                rec.completed_at = Some(OffsetDateTime::now_utc());
                let last = out.last_block.as_ref().map(|b| (out.blocks_written, b));
                self.store
                    .commit_backup(&rec, last, opts.annotation.as_deref())?;
                tracing::info!(backup = %rec.id, volume = %rec.volume_id, size = rec.size,
                               stored = rec.stored_bytes, "backup committed");
                Ok(rec)
            }
            Err(e) => {
                rec.state = BackupState::Error;
                rec.fail_reason = Some(e.to_string());
                // Best effort: the record explains the failure; GC reclaims the rest.
                let _ = self.store.put_record(&rec, true);
                tracing::warn!(backup = %rec.id, error = %e, "backup failed");
                Err(e)
            }
        }
    }

    fn resolve_parent(&self, opts: &BackupOptions) -> Result<Option<BackupId>> {
        if !opts.incremental {
            return Ok(None);
        }
        match opts.parent {
            Some(p) => {
                let rec = self.store.get_record(&p).map_err(|e| Error::BadParent {
                    parent: p,
                    reason: e.to_string(),
                })?;
                let reason = if rec.volume_id != opts.volume {
                    format!("belongs to volume {}, not {}", rec.volume_id, opts.volume)
                } else if rec.state != BackupState::Available {
                    format!("is {:?}, not available", rec.state)
                } else {
                    return Ok(Some(p));
                };
                Err(Error::BadParent { parent: p, reason })
            }
            None => self
                .latest(&opts.volume)?
                .map(|r| Some(r.id))
                .ok_or_else(|| Error::NoParent(opts.volume.clone())),
        }
    }

    /// Runs the three stages.
    fn run_backup(
        &self,
        rec: &BackupRecord,
        source: Source,
        keys: VolumeKeys,
        opts: &BackupOptions,
    ) -> Result<Outcome> {
        let abort = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::unbounded::<Item>();
        let chunker_params = rec.chunker;
        let source_path = source.path.display().to_string();

        std::thread::scope(|s| {
            // Stage 1: reader.
            let reader = {
                let abort = abort.clone();
                let cancel = opts.cancel.clone();
                let keys = keys.clone();
                let store = self.store.clone();
                let codec = self.codec;
                let budget = &self.budget;
                let pool = &self.pool;
                s.spawn(move || -> Result<()> {
                    let src_err = |e| Error::Source {
                        path: source_path.clone(),
                        source: e,
                    };
                    let mut seq = 0u64;
                    let mut pos = 0u64;
                    let mut chunker: Option<Chunker<std::io::Take<&std::fs::File>>> = None;
                    // Holes of the file are recorded without being read; the manifest builder
                    // merges the pieces.
                    let hole = |seq: &mut u64, mut len: u64| {
                        while len > 0 {
                            let piece = len.min(HOLE_PIECE);
                            let _ = tx.send(Item {
                                seq: *seq,
                                len: piece as u32,
                                result: Ok(Processed::Hole),
                            });
                            *seq += 1;
                            len -= piece;
                        }
                    };
                    for region in source.data_regions() {
                        let (start, end) = region.map_err(src_err)?;
                        hole(&mut seq, start - pos);
                        let mut file = &source.file;
                        file.seek(SeekFrom::Start(start)).map_err(src_err)?;
                        let reader = file.take(end - start);
                        let chunker = match chunker.as_mut() {
                            Some(c) => {
                                c.reset(reader);
                                c
                            }
                            None => chunker.insert(Chunker::new(reader, chunker_params)?),
                        };
                        loop {
                            if cancel.is_cancelled() {
                                return Err(Error::Cancelled);
                            }
                            if abort.load(Ordering::Relaxed) {
                                return Ok(());
                            }
                            let Some((offset, data)) = chunker.next_slice().map_err(src_err)?
                            else {
                                break;
                            };
                            let len = data.len() as u32;
                            // All-zero chunks become holes right here: no copy, no worker.
                            if is_zero(data) {
                                hole(&mut seq, u64::from(len));
                                continue;
                            }
                            let chunk = RawChunk {
                                offset: start + offset,
                                data: data.to_vec(),
                            };
                            if !budget.acquire(u64::from(len), &abort) {
                                return Ok(());
                            }
                            let tx = tx.clone();
                            let keys = keys.clone();
                            let store = store.clone();
                            pool.spawn(move || {
                                let result = process(&store, codec, keys.chunk_keys(), chunk);
                                let _ = tx.send(Item { seq, len, result });
                            });
                            seq += 1;
                        }
                        pos = end;
                    }
                    hole(&mut seq, source.size.saturating_sub(pos));
                    Ok(())
                })
            };

            // Stage 3: writer, on this thread.
            // Stage 4: sealer. Packs are fsynced and indexed off the writer's thread, so the
            // pipeline keeps running while the disk flushes; the commit waits for it below.
            let (seal_tx, seal_rx) = crossbeam_channel::bounded::<PackWriter>(2);
            let (done_tx, done_rx) = crossbeam_channel::unbounded::<PackId>();
            let sealer = {
                let store = &self.store;
                s.spawn(move || -> Result<()> {
                    for p in seal_rx {
                        let id = p.id();
                        store.seal_pack(p)?;
                        let _ = done_tx.send(id);
                    }
                    Ok(())
                })
            };
            let written = self.write_stage(
                rec,
                &rx,
                keys.chunk_keys().data_key(),
                &opts.progress,
                Sealer {
                    tx: seal_tx,
                    done: done_rx,
                },
            );
            let sealed = sealer
                .join()
                .map_err(|_| Error::Internal("sealer thread panicked".into()))
                .and_then(|r| r);
            if written.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            // Drain whatever is still in flight so the shared budget is returned.
            for item in rx.iter() {
                self.budget.release(item.held());
            }
            let read = reader
                .join()
                .map_err(|_| Error::Internal("reader thread panicked".into()))?;
            // The sealer's own error first: a writer that found the sealer gone only knows
            // that it stopped, the sealer knows why (a pack upload that kept failing, say).
            sealed?;
            let out = written?;
            read?;
            if out.bytes != rec.size {
                return Err(Error::Source {
                    path: opts.source.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("read {} bytes, expected {}", out.bytes, rec.size),
                    ),
                });
            }
            Ok(out)
        })
    }

    fn write_stage(
        &self,
        rec: &BackupRecord,
        rx: &crossbeam_channel::Receiver<Item>,
        key: Option<&DataKey>,
        progress: &Arc<dyn Progress>,
        sealer: Sealer,
    ) -> Result<Outcome> {
        let mut w = Writer {
            engine: self,
            sealer,
            backup: rec.id,
            key,
            pack: None,
            sealing: Default::default(),
            builder: ManifestBuilder::default(),
            blocks_written: 0,
            pending_blocks: Vec::new(),
            group: Vec::with_capacity(GROUP),
            totals: Totals::default(),
        };
        let res = (|| {
            let mut reorder: BTreeMap<u64, Item> = BTreeMap::new();
            let mut next = 0u64;
            loop {
                // Block for a result only when nothing in order is ready; flush the group first
                // so its chunks' memory is returned to the budget while we wait.
                let item = match rx.try_recv() {
                    Ok(i) => Some(i),
                    Err(crossbeam_channel::TryRecvError::Empty) => {
                        w.flush_group(progress)?;
                        rx.recv().ok()
                    }
                    Err(crossbeam_channel::TryRecvError::Disconnected) => None,
                };
                let Some(item) = item else { break };
                reorder.insert(item.seq, item);
                while let Some(item) = reorder.remove(&next) {
                    next += 1;
                    w.accept(item)?;
                    if w.group.len() >= GROUP {
                        w.flush_group(progress)?;
                    }
                }
            }
            if !reorder.is_empty() {
                return Err(Error::Internal("backup pipeline lost a chunk".into()));
            }
            w.flush_group(progress)?;
            w.seal_pack()?;
            Ok(Outcome {
                last_block: w.builder.finish(),
                bytes: w.builder.offset(),
                object_count: w.builder.chunk_count(),
                blocks_written: w.blocks_written,
                totals: std::mem::take(&mut w.totals),
            })
        })();
        if res.is_err() {
            if let Some(p) = w.pack.take() {
                self.store.abandon_pack(p);
            }
            for (len, p) in w.group.drain(..) {
                if matches!(p, Processed::Chunk { .. }) {
                    self.budget.release(u64::from(len));
                }
            }
        }
        res
    }
}

/// The writer's handle on the sealer thread.
struct Sealer {
    /// Full packs go to the sealer; dropping this ends it.
    tx: crossbeam_channel::Sender<PackWriter>,
    /// Ids of packs the sealer has made durable and indexed.
    done: crossbeam_channel::Receiver<PackId>,
}

/// The writer stage's state.
struct Writer<'a> {
    engine: &'a Engine,
    sealer: Sealer,
    backup: BackupId,
    key: Option<&'a DataKey>,
    pack: Option<PackWriter>,
    /// Chunk ids of packs handed to the sealer and not yet known to be indexed.
    sealing: Vec<(PackId, std::collections::HashSet<ChunkId>)>,
    builder: ManifestBuilder,
    blocks_written: u32,
    pending_blocks: Vec<(u32, ManifestBlock)>,
    /// In-order results not yet recorded: (length, verdict).
    group: Vec<(u32, Processed)>,
    totals: Totals,
}

impl Writer<'_> {
    fn accept(&mut self, item: Item) -> Result<()> {
        let len = item.len;
        let p = match item.result {
            Ok(p) => p,
            Err(e) => {
                self.engine.budget.release(u64::from(len));
                return Err(e);
            }
        };
        let entry = match &p {
            Processed::Hole => {
                self.totals.hole_bytes += u64::from(len);
                ManifestEntry::Hole {
                    len: u64::from(len),
                }
            }
            Processed::Chunk { id, .. } => ManifestEntry::Chunk { id: *id, len },
        };
        if let Some(block) = self.builder.push(entry) {
            self.pending_blocks.push((self.blocks_written, block));
            self.blocks_written += 1;
        }
        self.group.push((len, p));
        Ok(())
    }

    /// Records the group's references and blocks, then stores the chunks the store lacks.
    fn flush_group(&mut self, progress: &Arc<dyn Progress>) -> Result<()> {
        if self.group.is_empty() && self.pending_blocks.is_empty() {
            return Ok(());
        }
        // Forget packs the sealer has indexed *before* asking the index what exists, so that
        // every chunk of this backup is either found in the index or in `sealing`.
        for id in self.sealer.done.try_iter() {
            self.sealing.retain(|(p, _)| *p != id);
        }
        let batch = RefBatch {
            chunks: self
                .group
                .iter()
                .filter_map(|(_, p)| match p {
                    Processed::Chunk { id, .. } => Some(*id),
                    Processed::Hole => None,
                })
                .collect(),
            blocks: std::mem::take(&mut self.pending_blocks),
        };
        let present = self.engine.store.add_refs(&self.backup, &batch)?;
        let mut present = present.into_iter();
        let mut done = 0u64;
        let mut stored = 0u64;
        let (mut new, mut found, mut found_bytes) = (0u64, 0u64, 0u64);
        for (len, p) in std::mem::take(&mut self.group) {
            done += u64::from(len);
            let Processed::Chunk { id, data, envelope } = p else {
                continue;
            };
            self.engine.budget.release(u64::from(len));
            if present.next().expect("one flag per chunk")
                || self.pack.as_ref().is_some_and(|w| w.contains(&id))
                || self.sealing.iter().any(|(_, ids)| ids.contains(&id))
            {
                found += 1;
                found_bytes += u64::from(len);
                continue;
            }
            new += 1;
            let envelope = match (envelope, data) {
                (Some(e), _) => e,
                // Looked stored to the worker, but GC removed it before we referenced it.
                (None, Some(d)) => self.engine.codec.seal(&id, &d, self.key),
                (None, None) => unreachable!("a chunk carries its data or its envelope"),
            };
            stored += self.append(id, len, &envelope)?;
        }
        if stored > 0 {
            progress.stored(stored);
        }
        if new + found > 0 {
            progress.chunks(new, found, found_bytes);
        }
        progress.advance(done);
        Ok(())
    }

    /// Appends a chunk to the open pack; returns the bytes it adds to the store.
    fn append(&mut self, id: ChunkId, len: u32, envelope: &[u8]) -> Result<u64> {
        let store = &self.engine.store;
        if self.pack.is_none() {
            self.pack = Some(store.new_pack()?);
        }
        let pack = self.pack.as_mut().expect("set above");
        pack.append(id, len, envelope).map_err(|e| {
            Error::Store(blockvault_store::Error::Io {
                path: store.pack_storage().describe(pack.id()),
                source: e,
            })
        })?;
        let added = blockvault_core::format::PACK_ENTRY_HEADER_LEN + envelope.len() as u64;
        self.totals.stored_bytes += added;
        self.totals.new_chunks += 1;
        if pack.size() >= store.config().pack_target_size {
            self.seal_pack()?;
        }
        Ok(added)
    }

    fn seal_pack(&mut self) -> Result<()> {
        if let Some(p) = self.pack.take() {
            self.sealing
                .push((p.id(), p.chunk_ids().copied().collect()));
            if let Err(crossbeam_channel::SendError(p)) = self.sealer.tx.send(p) {
                // The sealer stopped on an error, which its join reports.
                self.engine.store.abandon_pack(p);
                return Err(Error::Internal("pack sealer stopped".into()));
            }
        }
        Ok(())
    }
}
