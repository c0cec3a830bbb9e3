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

use blockvault_core::chunker::Chunker;
use blockvault_core::extents::Extent;
use blockvault_core::format::RECORD_VERSION;
use blockvault_core::manifest::ManifestBuilder;
use blockvault_core::{
    BackupId, BackupRecord, BackupState, CbtStats, ChunkId, ChunkerParams, DataKey, ManifestBlock,
    ManifestEntry, PackId, VolumeId,
};
use blockvault_store::{PackWriter, RefBatch};
use time::OffsetDateTime;

use crate::cbt::{self, Cbt, OnMismatch, ParentCursor};
use crate::device::Source;
use crate::error::{Error, Result};
use crate::feed::{Feed, Item, Processed};
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
    /// Changed-block tracking: read only the extents that changed since the parent (needs
    /// `incremental`; see [`Cbt`]).
    pub cbt: Option<Cbt>,
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
            cbt: None,
            progress: Arc::new(NoProgress),
            cancel: CancelToken::default(),
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
    /// Bytes of the volume the reader read.
    read_bytes: u64,
}

/// A CBT incremental, planned: its inputs, its parent, what to read, and what it found.
struct CbtPlan {
    cbt: Cbt,
    parent: BackupRecord,
    extents: Vec<Extent>,
    stats: CbtStats,
}

/// Feeds the whole volume: each data region chunked, the holes between them recorded unread.
/// Returns the bytes read.
fn read_all(feed: &mut Feed<'_>, source: &Source, params: ChunkerParams) -> Result<u64> {
    let src_err = |e: std::io::Error| Error::Source {
        path: source.path.display().to_string(),
        source: e,
    };
    let (mut pos, mut read) = (0u64, 0u64);
    let mut chunker: Option<Chunker<std::io::Take<&std::fs::File>>> = None;
    for region in source.data_regions() {
        let (start, end) = region.map_err(src_err)?;
        feed.hole(start - pos);
        let mut file = &source.file;
        file.seek(SeekFrom::Start(start)).map_err(src_err)?;
        let reader = file.take(end - start);
        let chunker = match chunker.as_mut() {
            Some(c) => {
                c.reset(reader);
                c
            }
            None => chunker.insert(Chunker::new(reader, params)?),
        };
        while let Some((offset, data)) = chunker.next_slice().map_err(src_err)? {
            if !feed.chunk(start + offset, data)? {
                return Ok(read);
            }
        }
        read += end - start;
        pos = end;
    }
    feed.hole(source.size.saturating_sub(pos));
    Ok(read)
}

/// Groups of this many results share one index batch.
const GROUP: usize = 256;

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
            cbt: None,
        };
        let mut plan = opts
            .cbt
            .as_ref()
            .map(|c| self.plan_cbt(c, &rec, &source))
            .transpose()?;
        let _active = self.store.begin_backup(&rec)?;
        opts.progress.set_total(source.size);
        let result = self
            .sample_cbt(&rec, &source, &keys, plan.as_mut(), &opts.cancel)
            .and_then(|()| {
                let plan = plan.as_ref().filter(|p| !p.stats.full_read);
                self.run_backup(&rec, source, keys, &opts, plan)
            });
        rec.cbt = plan.map(|p| p.stats);
        match result {
            Ok(out) => {
                rec.state = BackupState::Available;
                rec.stored_bytes = out.totals.stored_bytes;
                rec.new_chunks = out.totals.new_chunks;
                rec.hole_bytes = out.totals.hole_bytes;
                rec.object_count = out.object_count;
                rec.manifest_blocks = out.blocks_written + u32::from(out.last_block.is_some());
                rec.completed_at = Some(OffsetDateTime::now_utc());
                if let Some(s) = rec.cbt.as_mut() {
                    s.read_bytes = out.read_bytes;
                }
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

    /// Checks a CBT incremental's inputs against its parent, before anything is written.
    fn plan_cbt(&self, c: &Cbt, rec: &BackupRecord, source: &Source) -> Result<CbtPlan> {
        let Some(parent_id) = rec.parent_id else {
            return Err(Error::Core(blockvault_core::Error::Invalid {
                field: "changed_extents",
                reason: "only an incremental backup takes changed extents: they say what \
                         changed since its parent"
                    .into(),
            }));
        };
        let parent = self.store.get_record(&parent_id)?;
        if parent.encrypted != rec.encrypted
            || parent.encryption_key_id != rec.encryption_key_id
            || parent.dedup_domain != rec.dedup_domain
        {
            return Err(Error::BadParent {
                parent: parent_id,
                reason: "its chunks are named under other keys (the volume's encryption or \
                         dedup domain changed), so a CBT incremental cannot take them; back up \
                         without changed extents"
                    .into(),
            });
        }
        let (changed, extents) = cbt::plan(c, source.size, parent.size)?;
        Ok(CbtPlan {
            cbt: c.clone(),
            stats: CbtStats {
                source: changed.source().name().into(),
                changed_bytes: changed.changed_bytes(),
                read_bytes: 0,
                sampled_bytes: 0,
                mismatch_offset: None,
                full_read: false,
            },
            parent,
            extents,
        })
    }

    /// Compares the sample of unchanged regions a CBT incremental asks for with its parent;
    /// after a mismatch, fails or turns the backup into a full read, as asked.
    fn sample_cbt(
        &self,
        rec: &BackupRecord,
        source: &Source,
        keys: &VolumeKeys,
        plan: Option<&mut CbtPlan>,
        cancel: &CancelToken,
    ) -> Result<()> {
        let Some(p) = plan else { return Ok(()) };
        if p.cbt.sample <= 0.0 {
            return Ok(());
        }
        let id = rec.id.as_bytes();
        let seed = u64::from_le_bytes(id[..8].try_into().expect("16-byte id"));
        let parent = p.parent.id;
        let blocks = self.store.manifest(&parent).map(|b| b.map_err(Error::from));
        let s = cbt::sample(
            &self.pool,
            source,
            keys.chunk_keys(),
            blocks,
            p.parent.size,
            &p.extents,
            p.cbt.sample,
            seed,
            cancel,
        )
        .map_err(|e| Error::for_manifest(parent, e))?;
        p.stats.sampled_bytes = s.bytes;
        if let Some((offset, len)) = s.mismatch {
            p.stats.mismatch_offset = Some(offset);
            match p.cbt.on_mismatch {
                OnMismatch::Fail => {
                    return Err(Error::CbtMismatch {
                        parent,
                        offset,
                        len,
                        sampled: s.bytes,
                    })
                }
                OnMismatch::FullRead => {
                    tracing::warn!(backup = %rec.id, offset, len,
                                   "the CBT source missed a change: reading the whole volume");
                    p.stats.full_read = true;
                }
            }
        }
        Ok(())
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

    /// Runs the three stages: a full read of `source`, or with `cbt` only its changed extents.
    fn run_backup(
        &self,
        rec: &BackupRecord,
        source: Source,
        keys: VolumeKeys,
        opts: &BackupOptions,
        cbt: Option<&CbtPlan>,
    ) -> Result<Outcome> {
        let abort = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::unbounded::<Item>();
        let chunker_params = rec.chunker;

        std::thread::scope(|s| {
            // Stage 1: reader.
            let reader = {
                let mut feed = Feed {
                    tx,
                    seq: 0,
                    keys: keys.clone(),
                    store: self.store.clone(),
                    codec: self.codec,
                    budget: &self.budget,
                    pool: &self.pool,
                    abort: abort.clone(),
                    cancel: opts.cancel.clone(),
                };
                let store = &self.store;
                s.spawn(move || -> Result<u64> {
                    let Some(p) = cbt else {
                        return read_all(&mut feed, &source, chunker_params);
                    };
                    let parent = p.parent.id;
                    let blocks = store.manifest(&parent).map(|b| b.map_err(Error::from));
                    ParentCursor::new(blocks, p.parent.size)
                        .and_then(|mut cursor| {
                            cbt::read_changed(
                                &mut feed,
                                &source,
                                chunker_params,
                                &mut cursor,
                                &p.extents,
                            )
                        })
                        .map_err(|e| Error::for_manifest(parent, e))
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
            let mut out = written?;
            out.read_bytes = read?;
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
            parent: rec.parent_id,
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
                read_bytes: 0,
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
    parent: Option<BackupId>,
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
            Processed::Chunk { id, .. } | Processed::Parent { id } => {
                ManifestEntry::Chunk { id: *id, len }
            }
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
        let (chunks, from_parent): (Vec<ChunkId>, Vec<bool>) = self
            .group
            .iter()
            .filter_map(|(_, p)| match p {
                Processed::Chunk { id, .. } => Some((*id, false)),
                Processed::Parent { id } => Some((*id, true)),
                Processed::Hole => None,
            })
            .unzip();
        let batch = RefBatch {
            chunks,
            blocks: std::mem::take(&mut self.pending_blocks),
            parent: self
                .parent
                .filter(|_| from_parent.contains(&true))
                .map(|p| (p, from_parent)),
        };
        let present = self.engine.store.add_refs(&self.backup, &batch)?;
        let mut present = present.into_iter();
        let mut done = 0u64;
        let mut stored = 0u64;
        let (mut new, mut found, mut found_bytes) = (0u64, 0u64, 0u64);
        let mut group = std::mem::take(&mut self.group).into_iter();
        while let Some((len, p)) = group.next() {
            done += u64::from(len);
            let (id, data, envelope) = match p {
                Processed::Hole => continue,
                Processed::Parent { id } => (id, None, None),
                Processed::Chunk { id, data, envelope } => {
                    self.engine.budget.release(u64::from(len));
                    (id, data, envelope)
                }
            };
            if present.next().expect("one flag per chunk")
                || self.pack.as_ref().is_some_and(|w| w.contains(&id))
                || self.sealing.iter().any(|(_, ids)| ids.contains(&id))
            {
                found += 1;
                found_bytes += u64::from(len);
                continue;
            }
            new += 1;
            let added = match (envelope, data) {
                (Some(e), _) => self.append(id, len, &e),
                // Looked stored to the worker, but GC removed it before we referenced it.
                (None, Some(d)) => {
                    let e = self.engine.codec.seal(&id, &d, self.key);
                    self.append(id, len, &e)
                }
                // A parent's chunk, which its references should have kept stored.
                (None, None) => Err(match self.parent {
                    Some(parent) => Error::BadParent {
                        parent,
                        reason: format!(
                            "its chunk {id} is no longer stored (was it deleted during this \
                             backup?)"
                        ),
                    },
                    None => Error::Internal(format!("chunk {id} came without its data")),
                }),
            };
            match added {
                Ok(n) => stored += n,
                Err(e) => {
                    // Return what the rest of the group holds of the budget.
                    for (len, p) in group {
                        if matches!(p, Processed::Chunk { .. }) {
                            self.engine.budget.release(u64::from(len));
                        }
                    }
                    return Err(e);
                }
            }
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
