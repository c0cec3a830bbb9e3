//! blockvault-engine: the data plane.
//!
//! Backup, restore, verify, delete and GC of block volumes over a [`blockvault_store::Store`].
//! Everything here is synchronous and runs on threads the engine owns:
//!
//! ```text
//! backup:  source --(reader thread: 8 MiB reads, FastCDC)--> chunks
//!          --(worker pool: zero check, BLAKE3, dedup lookup, zstd, AES-GCM)--> sealed chunks
//!          --(writer thread: reorder, refs + manifest batches, pack append, pack seal)--> store
//!          (a CBT incremental's reader cuts only the changed extents and hands on the rest of
//!          the parent's manifest unread: `cbt`)
//! restore: manifest --(dispatcher)--> chunk ids --(workers: read, decrypt, decompress,
//!          BLAKE3 check, pwrite)--> target
//! ```
//! Bytes in flight are bounded by one [`budget::ByteBudget`] shared by every backup of an
//! [`Engine`], and the CPU stages of all concurrent backups share one worker pool, so memory does
//! not grow with the volume's size or with the number of concurrent backups.
//! The async control plane reaches the engine through `spawn_blocking`.

mod assemble;
mod backup;
pub mod budget;
mod cbt;
pub mod device;
mod error;
mod feed;
pub mod memory;
pub mod priority;
mod restore;
mod verify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blockvault_core::{
    BackupId, BackupRecord, BackupState, ChunkId, ChunkKeys, DataKey, DomainIdKey, EnvelopeCodec,
    ManifestBlock, MasterKey, VolumeId,
};
use blockvault_store::{GcOptions, GcReport, Store, StoreConfig};
use parking_lot::Mutex;

pub use backup::BackupOptions;
pub use blockvault_store::{
    ObjectLock, RecoverFrom, RecoverReport, RecoveredBackup, RetainReport, RetentionMode,
};
pub use cbt::{Cbt, OnMismatch};
pub use error::{Error, Result};
pub use restore::{RestoreOptions, RestoreReport};
pub use verify::{ChunkProblem, ManifestProblem, VerifyReport};

/// Receives progress of a long operation. Implementations must be cheap: called per chunk.
pub trait Progress: Send + Sync {
    /// The operation will cover `bytes` bytes.
    fn set_total(&self, _bytes: u64) {}
    /// `bytes` more bytes are done.
    fn advance(&self, _bytes: u64) {}
    /// `bytes` more bytes were added to the store (backups only).
    fn stored(&self, _bytes: u64) {}
    /// `new` more chunks were added to the store, and `found` more (of `found_bytes` raw bytes)
    /// were in it already (backups only; holes are neither).
    fn chunks(&self, _new: u64, _found: u64, _found_bytes: u64) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Cooperative cancellation, checked between chunks.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Per-engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Worker threads for the CPU stages (0: one per core).
    pub threads: usize,
    /// Bytes of chunk data in flight across all backups (default 16 MiB: as fast as 64 MiB on
    /// the peer images, and 40 MiB less resident; benches/README.md, "Peak memory").
    pub max_bytes_in_flight: u64,
    /// Master key file, overriding the store's recorded path.
    pub key_file: Option<PathBuf>,
    /// Nice value of the worker threads (0..=19; see [`priority`]; a value outside is logged and
    /// ignored).
    pub nice: i32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: 0,
            max_bytes_in_flight: 16 << 20,
            key_file: None,
            nice: 0,
        }
    }
}

/// The data plane over one store. Cheap to share (`Arc<Engine>`); every method may be called from
/// several threads at once.
pub struct Engine {
    store: Arc<Store>,
    pool: rayon::ThreadPool,
    threads: usize,
    nice: i32,
    budget: budget::ByteBudget,
    codec: EnvelopeCodec,
    key_file: Option<PathBuf>,
    master: Mutex<Option<Arc<MasterKey>>>,
    volume_keys: Mutex<HashMap<VolumeId, Arc<DataKey>>>,
    /// Chunk id keys of dedup domains, derived once per domain.
    domain_keys: Mutex<HashMap<String, Arc<DomainIdKey>>>,
}

/// The keys one backup's chunks are named (and sealed) with, owned: see [`ChunkKeys`].
#[derive(Clone)]
pub(crate) enum VolumeKeys {
    Plain,
    Domain(Arc<DomainIdKey>),
    Encrypted(Arc<DataKey>),
}

impl VolumeKeys {
    pub(crate) fn chunk_keys(&self) -> ChunkKeys<'_> {
        match self {
            VolumeKeys::Plain => ChunkKeys::Plain,
            VolumeKeys::Domain(k) => ChunkKeys::Domain(k),
            VolumeKeys::Encrypted(k) => ChunkKeys::Encrypted(k),
        }
    }
}

impl Engine {
    /// An engine over an opened store.
    pub fn new(store: Store, opts: EngineOptions) -> Result<Engine> {
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            opts.threads
        };
        let nice = opts.nice;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bv-worker-{i}"))
            .start_handler(move |_| {
                if nice > 0 {
                    if let Err(e) = priority::set_thread_nice(nice) {
                        tracing::warn!(error = %e, "cannot lower a worker thread's priority");
                    }
                }
            })
            .build()
            .map_err(|e| Error::Internal(format!("worker pool: {e}")))?;
        let min_budget = 4 * u64::from(store.config().chunker.max_size);
        let codec = EnvelopeCodec {
            compression: store.config().compression,
        };
        let key_file = opts.key_file.or_else(|| store.config().key_file.clone());
        let engine = Engine {
            store: Arc::new(store),
            pool,
            threads,
            nice,
            budget: budget::ByteBudget::new(opts.max_bytes_in_flight.max(min_budget)),
            codec,
            key_file,
            master: Mutex::new(None),
            volume_keys: Mutex::new(HashMap::new()),
            domain_keys: Mutex::new(HashMap::new()),
        };
        // A store with a master key MACs its catalog under it: load it now if it is there, so
        // that writes work (and a store from before the catalog is migrated). Without the key
        // file, reads still work and writes say what is missing.
        if engine.store.config().master_fingerprint.is_some() {
            match engine.master_key() {
                Ok(k) => engine.store.set_catalog_key(k.catalog_key())?,
                Err(e) => {
                    tracing::warn!(error = %e, "master key not loaded: the store is read-only")
                }
            }
        } else {
            engine.store.migrate_catalog()?;
        }
        Ok(engine)
    }

    /// Rebuilds the index of a store from its packs and catalog (`blockvault local recover`):
    /// repairs the store in `dir`, or recovers a bucket into the empty directory `dir`.
    /// `key_file` is the store's master key file (required when the store has one).
    pub fn recover(
        dir: impl AsRef<Path>,
        from: RecoverFrom,
        key_file: Option<&Path>,
        opts: EngineOptions,
    ) -> Result<(Engine, RecoverReport)> {
        let master = key_file.map(read_key_file).transpose()?;
        let abs = key_file
            .map(|p| {
                std::path::absolute(p).map_err(|e| Error::KeyFile {
                    path: p.display().to_string(),
                    source: e,
                })
            })
            .transpose()?;
        let (store, report) = Store::recover(dir, from, master.as_ref(), abs.clone())?;
        let opts = EngineOptions {
            key_file: opts.key_file.or(abs),
            ..opts
        };
        Ok((Self::new(store, opts)?, report))
    }

    /// Opens the store in `dir` and builds an engine over it.
    pub fn open(dir: impl AsRef<Path>, opts: EngineOptions) -> Result<Engine> {
        Self::new(Store::open(dir)?, opts)
    }

    /// Creates a store in `dir`. With `key_file`, the store supports encrypted volumes: an
    /// existing key file is used (and checked), a missing one is created with mode 0600.
    pub fn init(dir: impl AsRef<Path>, config: StoreConfig, key_file: Option<&Path>) -> Result<()> {
        let dir = dir.as_ref();
        let key = key_file.map(load_or_create_key).transpose()?;
        let mut store = Store::init(dir, config)?;
        if let (Some(path), Some(key)) = (key_file, key) {
            let abs = std::path::absolute(path).map_err(|e| Error::KeyFile {
                path: path.display().to_string(),
                source: e,
            })?;
            store.set_master_key(abs, &key)?;
        } else {
            store.migrate_catalog()?;
        }
        Ok(())
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Worker threads of the pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Nice value of the data plane's threads ([`EngineOptions::nice`]).
    pub fn nice(&self) -> i32 {
        self.nice
    }

    /// The master key, loaded once and checked against the store's fingerprint.
    fn master_key(&self) -> Result<Arc<MasterKey>> {
        let mut m = self.master.lock();
        if let Some(k) = m.as_ref() {
            return Ok(k.clone());
        }
        let expected = self
            .store
            .config()
            .master_fingerprint
            .clone()
            .ok_or(Error::NoMasterKey)?;
        let path = self.key_file.as_ref().ok_or(Error::NoMasterKey)?;
        let key = read_key_file(path)?;
        if key.fingerprint() != expected {
            return Err(Error::WrongMasterKey(format!(
                "the key in {} is not this store's master key",
                path.display()
            )));
        }
        let key = Arc::new(key);
        *m = Some(key.clone());
        Ok(key)
    }

    /// The data key of an encrypted volume; with `create`, makes one for a volume without.
    fn volume_key(&self, volume: &VolumeId, create: bool) -> Result<Option<Arc<DataKey>>> {
        if let Some(k) = self.volume_keys.lock().get(volume) {
            return Ok(Some(k.clone()));
        }
        let wrapped = match self.store.volume_key(volume)? {
            Some(w) => w,
            None if create => {
                let master = self.master_key()?;
                let fresh = DataKey::generate();
                self.store
                    .put_volume_key_if_absent(volume, &master.wrap(volume, &fresh))?
            }
            None => return Ok(None),
        };
        let key = self
            .master_key()?
            .unwrap(volume, &wrapped)
            .map_err(|e| Error::WrongMasterKey(e.to_string()))?;
        let key = Arc::new(key);
        self.volume_keys.lock().insert(volume.clone(), key.clone());
        Ok(Some(key))
    }

    /// The chunk id key of dedup domain `domain`, derived from the master key once and cached.
    fn domain_key(&self, domain: &str) -> Result<Arc<DomainIdKey>> {
        if let Some(k) = self.domain_keys.lock().get(domain) {
            return Ok(k.clone());
        }
        let key = Arc::new(self.master_key()?.dedup_domain_id_key(domain));
        self.domain_keys
            .lock()
            .insert(domain.to_string(), key.clone());
        Ok(key)
    }

    /// The keys `rec`'s chunks were named with: its volume's data key if it is encrypted, its
    /// dedup domain's id key if it has one, else plain ids. `None` when an encrypted backup's
    /// volume has no data key in the store.
    pub(crate) fn record_keys(&self, rec: &BackupRecord) -> Result<Option<VolumeKeys>> {
        if rec.encrypted {
            return Ok(self
                .volume_key(&rec.volume_id, false)?
                .map(VolumeKeys::Encrypted));
        }
        Ok(Some(match &rec.dedup_domain {
            Some(d) => VolumeKeys::Domain(self.domain_key(d)?),
            None => VolumeKeys::Plain,
        }))
    }

    /// Makes `volume` an encrypted volume: creates its data key unless it has one, and returns
    /// the key's `encryption_key_id`. Needs the store's master key.
    pub fn ensure_volume_key(&self, volume: &VolumeId) -> Result<uuid::Uuid> {
        let key = self
            .volume_key(volume, true)?
            .ok_or_else(|| Error::Internal("data key was not created".into()))?;
        Ok(key.key_id())
    }

    /// The `encryption_key_id` of a volume, if it is encrypted.
    pub fn encryption_key_id(&self, volume: &VolumeId) -> Result<Option<uuid::Uuid>> {
        Ok(self.store.volume_key(volume)?.map(|w| w.key_id))
    }

    /// All backup records, oldest first.
    pub fn list(&self) -> Result<Vec<BackupRecord>> {
        Ok(self.store.list_records()?)
    }

    /// One backup record.
    pub fn get(&self, id: &BackupId) -> Result<BackupRecord> {
        Ok(self.store.get_record(id)?)
    }

    /// The newest available backup of `volume`.
    pub fn latest(&self, volume: &VolumeId) -> Result<Option<BackupRecord>> {
        Ok(self
            .list()?
            .into_iter()
            .rfind(|r| &r.volume_id == volume && r.state == BackupState::Available))
    }

    /// Deletes a backup's record and references. Its chunks are reclaimed by [`Engine::gc`].
    /// Every backup is self-contained, so deleting a parent never breaks its incrementals.
    pub fn delete(&self, id: &BackupId) -> Result<()> {
        Ok(self.store.delete_backup(id)?)
    }

    /// Replaces the annotation of an available backup in the catalog (the daemon's control row,
    /// after a change of name, description or metadata).
    pub fn annotate(&self, id: &BackupId, annotation: &str) -> Result<()> {
        Ok(self.store.annotate(id, annotation)?)
    }

    /// A backup's manifest, block by block, in order (the daemon counts vault usage from it
    /// and digests it into exported records).
    pub fn manifest(&self, id: &BackupId) -> impl Iterator<Item = Result<ManifestBlock>> + '_ {
        self.store.manifest(id).map(|b| b.map_err(Error::from))
    }

    /// Bytes a stored chunk takes in its pack (its entry), if the store holds it.
    pub fn stored_size(&self, id: &ChunkId) -> Result<Option<u64>> {
        Ok(self.store.chunk_location(id)?.map(|l| l.entry_len()))
    }

    /// How many sealed packs the store has, and their bytes (cheap: one pass over the pack
    /// table, not the chunk index).
    pub fn pack_totals(&self) -> Result<(u64, u64)> {
        let packs = self.store.sealed_packs()?;
        Ok((packs.len() as u64, packs.iter().map(|(_, p)| p.size).sum()))
    }

    /// The store's id: exported records name it, and import refuses another store's.
    pub fn store_id(&self) -> uuid::Uuid {
        self.store.config().store_id
    }

    /// Writes the index's memory tables to disk (at shutdown; every commit is durable without).
    pub fn flush(&self) -> Result<()> {
        Ok(self.store.flush()?)
    }

    /// Whether the store can keep objects under retention (S3 Object Lock); one request to a
    /// bucket.
    pub fn object_lock(&self) -> Result<ObjectLock> {
        Ok(self.store.object_lock()?)
    }

    /// Keeps an available backup restorable from the bucket until `until` (unix seconds)
    /// whatever anyone does with the bucket's credentials: its packs, manifest, record and
    /// wrapped key go under S3 Object Lock retention in `mode`. Asks nothing when the backup is
    /// already retained until `renew_after`. GC leaves retained packs alone.
    pub fn retain_backup(
        &self,
        id: &BackupId,
        mode: RetentionMode,
        until: u64,
        renew_after: u64,
    ) -> Result<RetainReport> {
        Ok(self.store.retain_backup(id, mode, until, renew_after)?)
    }

    /// Runs garbage collection (safe while backups and restores run).
    pub fn gc(&self) -> Result<GcReport> {
        Ok(self.store.gc(GcOptions::default())?)
    }
}

/// Reads a master key file.
pub fn read_key_file(path: &Path) -> Result<MasterKey> {
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| Error::KeyFile {
            path: path.display().to_string(),
            source: e,
        })?);
    MasterKey::parse(&text).map_err(|e| Error::WrongMasterKey(format!("{}: {e}", path.display())))
}

/// Loads the key in `path`, or creates a new key file there (mode 0600, fsynced).
pub fn load_or_create_key(path: &Path) -> Result<MasterKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return read_key_file(path);
    }
    let key = MasterKey::generate();
    let err = |e| Error::KeyFile {
        path: path.display().to_string(),
        source: e,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(key.to_file_contents().as_bytes())
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    // The new file's directory entry is durable only once the directory is fsynced.
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(Path::new(".")))
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(key)
}
