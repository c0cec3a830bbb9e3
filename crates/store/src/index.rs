//! The store: RocksDB index plus pack storage, and the rules that keep them consistent.
//!
//! Column families (keys and values are specified in FORMAT.md):
//! - `chunks`:    chunk id -> [`ChunkLoc`] (only for chunks in *sealed*, durable packs)
//! - `refs`:      chunk id ‖ backup id -> ∅ (backup references chunk; set semantics)
//! - `backups`:   backup id -> [`BackupRecord`] JSON
//! - `manifests`: backup id ‖ block number (u32 BE) -> encoded [`ManifestBlock`]
//! - `keys`:      volume id -> [`WrappedKey`]
//! - `packs`:     pack id -> [`PackInfo`] (sealed packs only)
//!
//! A chunk's reference count is the number of `refs` keys with its id as prefix. Refs are
//! idempotent puts and deletes, so there is no counter to drift, and they are written in the same
//! batches as the manifest blocks that name the chunks.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockvault_core::{
    BackupId, BackupRecord, BackupState, CatalogKey, ChunkId, ManifestBlock, ManifestEntry, PackId,
    VolumeId, WrappedKey,
};
use parking_lot::{Mutex, RwLock};
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    WriteBatch, WriteOptions, DB,
};

use crate::config::{Backend, StoreConfig};
use crate::error::{Error, Result};
use crate::pack::{check_entry, sync_dir, PackStorage, PackWriter};

pub(crate) const CF_CHUNKS: &str = "chunks";
pub(crate) const CF_REFS: &str = "refs";
pub(crate) const CF_BACKUPS: &str = "backups";
pub(crate) const CF_MANIFESTS: &str = "manifests";
pub(crate) const CF_KEYS: &str = "keys";
pub(crate) const CF_PACKS: &str = "packs";
/// Pack id -> when verify last found the whole pack intact (unix seconds, u64 LE). Added in
/// place: an index without it gets it at open; a recovered index starts without entries.
pub(crate) const CF_VERIFIED: &str = "verified";
/// `p` + pack id, or `b` + backup id -> until when it is kept under S3 Object Lock retention
/// (unix seconds, u64 LE); see `retention.rs`. Added in place like `verified`.
pub(crate) const CF_RETAINED: &str = "retained";
const ALL_CFS: [&str; 8] = [
    CF_CHUNKS,
    CF_REFS,
    CF_BACKUPS,
    CF_MANIFESTS,
    CF_KEYS,
    CF_PACKS,
    CF_VERIFIED,
    CF_RETAINED,
];

/// Where a chunk's entry lives: `offset` is the entry header's position in the pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    pub pack: PackId,
    pub offset: u64,
    /// Envelope length (the entry is 40 header bytes longer).
    pub len: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

impl ChunkLoc {
    const ENCODED_LEN: usize = 32;
    pub(crate) fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&self.pack.0);
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..32].copy_from_slice(&self.raw_len.to_le_bytes());
        b
    }
    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != Self::ENCODED_LEN {
            return Err(Error::Corrupt {
                what: "chunk location".into(),
                detail: format!("{} bytes", b.len()),
            });
        }
        Ok(ChunkLoc {
            pack: PackId(b[..16].try_into().expect("16")),
            offset: u64::from_le_bytes(b[16..24].try_into().expect("8")),
            len: u32::from_le_bytes(b[24..28].try_into().expect("4")),
            raw_len: u32::from_le_bytes(b[28..32].try_into().expect("4")),
        })
    }
    /// Bytes the entry occupies in its pack.
    pub fn entry_len(&self) -> u64 {
        blockvault_core::format::PACK_ENTRY_HEADER_LEN + u64::from(self.len)
    }
}

/// What the index knows of a sealed pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackInfo {
    /// Size of the pack file in bytes.
    pub size: u64,
    /// Entries written into it.
    pub entries: u32,
}

impl PackInfo {
    pub(crate) fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..].copy_from_slice(&self.entries.to_le_bytes());
        b
    }
    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != 12 {
            return Err(Error::Corrupt {
                what: "pack info".into(),
                detail: format!("{} bytes", b.len()),
            });
        }
        Ok(PackInfo {
            size: u64::from_le_bytes(b[..8].try_into().expect("8")),
            entries: u32::from_le_bytes(b[8..].try_into().expect("4")),
        })
    }
}

/// One group of a backup's progress, written atomically by [`Store::add_refs`].
#[derive(Debug, Default)]
pub struct RefBatch {
    /// Every chunk the backup references in this group (duplicates allowed).
    pub chunks: Vec<ChunkId>,
    /// Manifest blocks completed in this group, with their numbers.
    pub blocks: Vec<(u32, ManifestBlock)>,
    /// A CBT incremental's parent, and which of `chunks` were taken from its manifest. While the
    /// parent is `available` (checked under the lifecycle lock), its references keep those
    /// chunks stored, so they are reported present without being looked up.
    pub parent: Option<(BackupId, Vec<bool>)>,
}

/// Space accounting of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    pub packs: u64,
    pub pack_bytes: u64,
    pub chunks: u64,
    /// Bytes of pack entries the index points at.
    pub live_bytes: u64,
    pub backups: u64,
}

pub(crate) fn ref_key(chunk: &ChunkId, backup: &BackupId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(chunk.as_bytes());
    k[32..].copy_from_slice(backup.as_bytes());
    k
}

pub(crate) fn manifest_key(backup: &BackupId, block: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(backup.as_bytes());
    k[16..].copy_from_slice(&block.to_be_bytes());
    k
}

/// A chunk store: index, packs, and the in-process coordination between writers and GC.
pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    pub(crate) db: DB,
    pub(crate) packs: Arc<dyn PackStorage>,
    /// The lifecycle lock. Held for a moment by a writer while it checks which chunks exist and
    /// writes its references, and by GC while it rechecks and removes unreferenced chunks. This
    /// makes "chunk exists, so reference it instead of storing it" atomic with respect to GC.
    pub(crate) lifecycle: Mutex<()>,
    /// Backups being written by this process. RocksDB's lock file guarantees one process per store.
    pub(crate) active: Mutex<HashSet<BackupId>>,
    /// Packs created but not yet sealed. Registered before the file exists.
    pub(crate) open_packs: Mutex<HashSet<PackId>>,
    /// Serializes GC runs.
    pub(crate) gc_lock: Mutex<()>,
    /// The key of the catalog MACs (`catalog.rs`); `None` until the engine supplies the master
    /// key's, in a store that has one.
    pub(crate) catalog: RwLock<Option<CatalogKey>>,
    /// This store's entry in [`OPEN_HERE`]. Declared after `db` so that it is dropped after the
    /// database has closed and released its lock.
    _open_here: OpenHere,
}

/// Keeps a backup marked active (its references protected from GC) until dropped.
pub struct ActiveGuard<'a> {
    store: &'a Store,
    id: BackupId,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.store.active.lock().remove(&self.id);
    }
}

fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_max_background_jobs(2);
    o.set_keep_log_file_num(4);
    o.set_max_total_wal_size(256 << 20);
    o
}

fn cf_options(name: &str) -> Options {
    let mut o = Options::default();
    if name == CF_CHUNKS || name == CF_REFS {
        // Most dedup lookups of a full backup miss: a Bloom filter answers them from memory.
        let mut b = BlockBasedOptions::default();
        b.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&b);
    }
    o
}

/// Store directories (device, inode) that this process has open or is opening.
///
/// Why a registry as well as the lock probe: RocksDB locks `index/LOCK` with a classic POSIX
/// record lock (`F_SETLK`), and the kernel drops a process's record locks on a file when the
/// process closes *any* descriptor of that file. Probing the lock file of a store this process
/// has open would therefore silently release that store's lock. So a store already open here is
/// Busy without touching its lock file, and the probe only ever runs on a lock this process does
/// not hold, where closing the probe's descriptor releases nothing.
static OPEN_HERE: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// A store directory's entry in [`OPEN_HERE`], removed on drop.
struct OpenHere {
    key: (u64, u64),
    lock: PathBuf,
}

impl OpenHere {
    /// Claims `dir` for one `Store` of this process: Busy when this process has it open already
    /// or another process holds its index lock.
    fn claim(dir: &Path) -> Result<OpenHere> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        let key = (md.dev(), md.ino());
        let lock = dir.join("index").join("LOCK");
        // Held across the probe, so no other thread of this process opens this store meanwhile.
        let mut open = OPEN_HERE.lock();
        if open.contains(&key) || probe(&lock)? {
            return Err(Error::Busy(dir.display().to_string()));
        }
        open.push(key);
        Ok(OpenHere { key, lock })
    }

    /// True when another process holds the index lock. Only called while this claim is held
    /// and before (or after a failed) open, so this process does not hold the lock itself.
    fn lock_held(&self) -> Result<bool> {
        probe(&self.lock)
    }
}

fn probe(lock: &Path) -> Result<bool> {
    index_lock_held(lock).map_err(|e| Error::io(lock, e))
}

impl Drop for OpenHere {
    fn drop(&mut self) {
        OPEN_HERE.lock().retain(|k| *k != self.key);
    }
}

/// True when RocksDB's `LOCK` file is locked. RocksDB takes a classic POSIX record lock on it
/// (`F_SETLK`); an open-file-description lock probe (`F_OFD_GETLK`) conflicts with any such
/// lock. Must not be called on a lock this process holds (see [`OPEN_HERE`]).
#[cfg(target_os = "linux")]
fn index_lock_held(lock: &Path) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let f = match std::fs::File::open(lock) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut probe = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // Must be 0 for OFD locks.
        l_pid: 0,
    };
    nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_GETLK(&mut probe))?;
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}

/// Without OFD locks there is no probe; RocksDB's own lock still refuses a second opener, and
/// that failure is reported as an I/O error.
#[cfg(not(target_os = "linux"))]
fn index_lock_held(_lock: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// Classifies a failed open of the index by RocksDB's status code (never by message text).
fn open_error(index: &Path, e: rocksdb::Error) -> Error {
    use rocksdb::ErrorKind;
    let path = || {
        crate::error::damaged_file(e.as_ref())
            .map_or_else(|| index.display().to_string(), str::to_string)
    };
    match e.kind() {
        ErrorKind::Corruption => Error::corrupt_index(Some(index), &e),
        ErrorKind::IOError => Error::Io {
            path: path(),
            source: std::io::Error::other(e.to_string()),
        },
        ErrorKind::NotSupported | ErrorKind::InvalidArgument => Error::IndexIncompatible {
            path: index.display().to_string(),
            detail: e.to_string(),
        },
        _ => Error::Db {
            op: "open",
            source: e,
        },
    }
}

/// Creates the directory of a new store (an existing empty one is fine) and makes it 0700: its
/// packs and index hold the data of unencrypted volumes, so only the store's owner may enter.
/// A directory that already holds a store is refused untouched.
pub(crate) fn create_store_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        // A new directory's entry is durable only once its parent is fsynced.
        Ok(()) => crate::pack::sync_dir(
            dir.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(Error::io(dir, e)),
    }
    if dir.join(crate::config::CONFIG_FILE).exists() {
        return Err(Error::Config(format!(
            "{} already holds a blockvault store",
            dir.display()
        )));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(dir, e))
}

/// Lists the packs once, to check a remote backend answers and accepts the credentials.
fn probe_packs(packs: &dyn PackStorage, backend: &Backend) -> Result<()> {
    packs.list().map(drop).map_err(|e| {
        Error::Config(format!(
            "pack storage {} does not answer: {e}",
            backend.describe()
        ))
    })
}

impl Store {
    /// Creates a new store in `dir` (which must not hold one already) and opens it.
    pub fn init(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        let dir = dir.as_ref();
        config.validate()?;
        create_store_dir(dir)?;
        // The index is created before the config: a directory with a config is a complete store.
        let packs = config.backend.open(dir)?;
        if let Backend::S3(_) = &config.backend {
            // One request, so a wrong endpoint, bucket or key fails `init`, not the first backup.
            probe_packs(&*packs, &config.backend)?;
        }
        let s = Self::open_parts(dir, config.clone(), packs)?;
        config.save(dir)?;
        Ok(s)
    }

    /// Opens an existing store; its packs are where its config says.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref();
        let config = StoreConfig::load(dir)?;
        let packs = config.backend.open(dir)?;
        Self::open_parts(dir, config, packs)
    }

    /// Opens an existing store whose packs live in `packs`.
    pub fn open_with(dir: impl AsRef<Path>, packs: Arc<dyn PackStorage>) -> Result<Store> {
        let dir = dir.as_ref();
        let config = StoreConfig::load(dir)?;
        Self::open_parts(dir, config, packs)
    }

    /// Creates a store whose packs live in `packs` (tests, future object-store backends).
    pub fn init_with(
        dir: impl AsRef<Path>,
        config: StoreConfig,
        packs: Arc<dyn PackStorage>,
    ) -> Result<Store> {
        let dir = dir.as_ref();
        config.validate()?;
        create_store_dir(dir)?;
        let s = Self::open_parts(dir, config.clone(), packs)?;
        config.save(dir)?;
        Ok(s)
    }

    pub(crate) fn open_parts(
        dir: &Path,
        config: StoreConfig,
        packs: Arc<dyn PackStorage>,
    ) -> Result<Store> {
        let index = dir.join("index");
        let cfs = ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, cf_options(n)));
        // Busy is decided by this process's registry and a probe of RocksDB's lock, never by
        // RocksDB's error message ("block checksum mismatch" contains "lock" too).
        let open_here = OpenHere::claim(dir)?;
        let db = match DB::open_cf_descriptors(&db_options(), &index, cfs) {
            Ok(db) => db,
            // Another process may have taken the lock since the probe.
            Err(e) if e.kind() == rocksdb::ErrorKind::IOError && open_here.lock_held()? => {
                return Err(Error::Busy(dir.display().to_string()))
            }
            Err(e) => return Err(open_error(&index, e)),
        };
        let catalog = match config.master_fingerprint {
            None => Some(CatalogKey::unauthenticated(&config.store_id)),
            Some(_) => None,
        };
        let store = Store {
            dir: dir.to_path_buf(),
            config,
            catalog: RwLock::new(catalog),
            db,
            packs,
            lifecycle: Mutex::new(()),
            active: Mutex::new(HashSet::new()),
            open_packs: Mutex::new(HashSet::new()),
            gc_lock: Mutex::new(()),
            _open_here: open_here,
        };
        store.recover_interrupted()?;
        Ok(store)
    }

    /// A backup left `in_progress` by an earlier process was interrupted: mark it `error`, after
    /// removing any record object it wrote before its local commit (so the bucket never lists a
    /// backup this index gave up on). Its references and any chunks only it used are reclaimed
    /// by the next GC.
    fn recover_interrupted(&self) -> Result<()> {
        for mut rec in self.list_records()? {
            if rec.state == BackupState::InProgress {
                self.delete_catalog_backup(&rec.id)?;
                rec.state = BackupState::Error;
                rec.fail_reason =
                    Some("interrupted: the process stopped before the backup was committed".into());
                self.put_record(&rec, true)?;
            }
        }
        Ok(())
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }
    /// Pack storage (for tools that inspect packs).
    pub fn pack_storage(&self) -> &Arc<dyn PackStorage> {
        &self.packs
    }

    /// Records the master key file and fingerprint in the config (init time), and from then on
    /// MACs the catalog under the master key; the catalog's config copy is rewritten.
    pub fn set_master_key(
        &mut self,
        key_file: PathBuf,
        master: &blockvault_core::MasterKey,
    ) -> Result<()> {
        self.config.key_file = Some(key_file);
        self.config.master_fingerprint = Some(master.fingerprint());
        self.config.save(&self.dir)?;
        *self.catalog.write() = Some(master.catalog_key());
        self.put_catalog_config()
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    // ---------------------------------------------------------------- chunks

    /// Where `id` is stored, if it is in a sealed pack.
    pub fn chunk_location(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        self.db
            .get_pinned_cf(self.cf(CF_CHUNKS), id.as_bytes())
            .map_err(Error::db("get chunk"))?
            .map(|v| ChunkLoc::decode(&v))
            .transpose()
    }

    /// True when `id` is stored in a sealed pack.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_CHUNKS), id.as_bytes())
            .map_err(Error::db("get chunk"))?
            .is_some())
    }

    /// Reads `id`'s envelope, checking the pack entry's magic and id.
    ///
    /// GC may move a chunk to a new pack and delete the old one between our index lookup and the
    /// read; a missing pack therefore triggers one fresh lookup before it is reported.
    pub fn read_envelope(&self, id: &ChunkId) -> Result<crate::pack::EntryBytes> {
        let mut last_pack = None;
        for _ in 0..3 {
            let loc = self.chunk_location(id)?.ok_or(Error::MissingChunk(*id))?;
            if last_pack == Some(loc.pack) {
                break;
            }
            match self
                .packs
                .read_at(loc.pack, loc.offset, loc.entry_len() as usize)
            {
                Ok(raw) => {
                    return check_entry(raw, id).map_err(|detail| Error::Corrupt {
                        what: format!("chunk {id} in {}", self.packs.describe(loc.pack)),
                        detail,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => last_pack = Some(loc.pack),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(Error::Corrupt {
                        what: format!("chunk {id} in {}", self.packs.describe(loc.pack)),
                        detail: "pack is shorter than the index says".into(),
                    })
                }
                Err(e) => return Err(Error::io(self.packs.describe(loc.pack), e)),
            }
        }
        Err(Error::MissingPack {
            pack: last_pack.expect("set on the NotFound path"),
            chunk: *id,
        })
    }

    /// Reads the envelopes of several chunks, answering in the order asked: one
    /// [`PackStorage::read_ranges`] call per pack, so neighbouring entries of one pack (a
    /// manifest's chunks usually are) cost one request on an object store. A pack that fails as
    /// a whole is retried chunk by chunk through [`Store::read_envelope`], which also follows a
    /// chunk that GC moved meanwhile.
    pub fn read_envelopes(&self, ids: &[ChunkId]) -> Vec<Result<crate::pack::EntryBytes>> {
        let mut out: Vec<Option<Result<crate::pack::EntryBytes>>> =
            ids.iter().map(|_| None).collect();
        let mut by_pack: Vec<(PackId, Vec<(usize, ChunkLoc)>)> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match self.chunk_location(id) {
                Ok(Some(loc)) => match by_pack.iter_mut().find(|(p, _)| *p == loc.pack) {
                    Some((_, v)) => v.push((i, loc)),
                    None => by_pack.push((loc.pack, vec![(i, loc)])),
                },
                Ok(None) => out[i] = Some(Err(Error::MissingChunk(*id))),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        for (pack, entries) in by_pack {
            let ranges: Vec<_> = entries
                .iter()
                .map(|(_, l)| l.offset..l.offset + l.entry_len())
                .collect();
            match self.packs.read_ranges(pack, &ranges) {
                Ok(bufs) if bufs.len() == entries.len() => {
                    for ((i, _), raw) in entries.iter().zip(bufs) {
                        // A bad entry is read once more on its own before it is reported.
                        out[*i] = Some(match check_entry(raw, &ids[*i]) {
                            Ok(e) => Ok(e),
                            Err(_) => self.read_envelope(&ids[*i]),
                        });
                    }
                }
                _ => {
                    for (i, _) in entries {
                        out[i] = Some(self.read_envelope(&ids[i]));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.expect("every chunk answered"))
            .collect()
    }

    /// Every indexed chunk, in id order.
    pub fn chunks(&self) -> impl Iterator<Item = Result<(ChunkId, ChunkLoc)>> + '_ {
        self.db
            .iterator_cf(self.cf(CF_CHUNKS), IteratorMode::Start)
            .map(|kv| {
                let (k, v) = kv.map_err(Error::db("iterate chunks"))?;
                Ok((ChunkId::from_slice(&k)?, ChunkLoc::decode(&v)?))
            })
    }

    /// The backups that reference `id`.
    pub fn referrers(&self, id: &ChunkId) -> Result<Vec<BackupId>> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_REFS),
            IteratorMode::From(id.as_bytes(), Direction::Forward),
        );
        for kv in it {
            let (k, _) = kv.map_err(Error::db("iterate refs"))?;
            if k.len() != 48 || k[..32] != id.as_bytes()[..] {
                break;
            }
            out.push(BackupId::from_bytes(k[32..].try_into().expect("16")));
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- packs

    /// Starts a new pack. It is registered as open before its file exists, so GC never mistakes
    /// it for an orphan.
    pub fn new_pack(&self) -> Result<PackWriter> {
        let id = PackId::random();
        self.open_packs.lock().insert(id);
        let sink = self.packs.create(id).map_err(|e| {
            self.open_packs.lock().remove(&id);
            Error::io(self.packs.describe(id), e)
        })?;
        let key = self.catalog_key().inspect_err(|_| {
            self.open_packs.lock().remove(&id);
        })?;
        PackWriter::new(id, sink, key).map_err(|e| Error::io(self.packs.describe(id), e))
    }

    /// Makes a pack durable, then records its chunks' locations and the pack in one batch.
    /// Durability order: pack fsync happens-before the index entries that point into it.
    pub fn seal_pack(&self, w: PackWriter) -> Result<()> {
        let id = w.id();
        let res = self.seal_inner(w);
        self.open_packs.lock().remove(&id);
        res
    }

    fn seal_inner(&self, w: PackWriter) -> Result<()> {
        let id = w.id();
        let crate::pack::SealedPack { size, entries } = w
            .finish()
            .map_err(|e| Error::io(self.packs.describe(id), e))?;
        let mut b = WriteBatch::default();
        for (cid, loc) in &entries {
            b.put_cf(self.cf(CF_CHUNKS), cid.as_bytes(), loc.encode());
        }
        let info = PackInfo {
            size,
            entries: entries.len() as u32,
        };
        b.put_cf(self.cf(CF_PACKS), id.0, info.encode());
        self.db.write(b).map_err(Error::db("seal pack"))
    }

    /// When verify last found pack `id` intact (unix seconds).
    pub fn pack_verified_at(&self, id: PackId) -> Result<Option<u64>> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_VERIFIED), id.0)
            .map_err(Error::db("get pack verified"))?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_le_bytes))
    }

    /// Records that verify found pack `id` intact at `secs` (unix seconds), or with `None`
    /// that it found damage (the pack is then due at every run).
    pub fn set_pack_verified(&self, id: PackId, secs: Option<u64>) -> Result<()> {
        match secs {
            Some(t) => self.db.put_cf(self.cf(CF_VERIFIED), id.0, t.to_le_bytes()),
            None => self.db.delete_cf(self.cf(CF_VERIFIED), id.0),
        }
        .map_err(Error::db("put pack verified"))
    }

    /// The entries of sealed pack `id` (of `size` bytes) as its trailer lists them, when the
    /// trailer checks under this store's catalog key; `None` otherwise (a version 1 pack, a
    /// damaged trailer, a read that failed, or no key to check it with).
    pub fn pack_entries(&self, id: PackId, size: u64) -> Option<Vec<(ChunkId, ChunkLoc)>> {
        let key = self.catalog.read().clone()?;
        crate::trailer::trusted_entries(&*self.packs, id, size, &key)
    }

    /// Gives up on an unsealed pack: it stays an orphan file until GC removes it.
    pub fn abandon_pack(&self, w: PackWriter) {
        self.open_packs.lock().remove(&w.id());
    }

    /// Sealed packs and their sizes.
    pub fn sealed_packs(&self) -> Result<Vec<(PackId, PackInfo)>> {
        self.db
            .iterator_cf(self.cf(CF_PACKS), IteratorMode::Start)
            .map(|kv| {
                let (k, v) = kv.map_err(Error::db("iterate packs"))?;
                let id = PackId(k[..].try_into().map_err(|_| Error::Corrupt {
                    what: "pack key".into(),
                    detail: format!("{} bytes", k.len()),
                })?);
                Ok((id, PackInfo::decode(&v)?))
            })
            .collect()
    }

    // ---------------------------------------------------------------- references and manifests

    /// Writes a group of a backup's references and manifest blocks, and reports which of the
    /// group's chunks are already stored (`true`) so the caller stores only the others.
    ///
    /// Runs under the lifecycle lock: a chunk found here cannot be removed by GC afterwards,
    /// because GC rechecks references under the same lock before it removes anything, and the
    /// references written here are visible by then.
    pub fn add_refs(&self, backup: &BackupId, batch: &RefBatch) -> Result<Vec<bool>> {
        let chunks_cf = self.cf(CF_CHUNKS);
        let refs_cf = self.cf(CF_REFS);
        let mut b = WriteBatch::default();
        for id in &batch.chunks {
            b.put_cf(refs_cf, ref_key(id, backup), []);
        }
        for (n, block) in &batch.blocks {
            b.put_cf(
                self.cf(CF_MANIFESTS),
                manifest_key(backup, *n),
                block.encode(),
            );
        }
        let _g = self.lifecycle.lock();
        // A backup is marked `deleting` before its references go, so an available parent
        // still references every chunk of its manifest, and GC removes none of them while the
        // lock is held; once this batch is written, its own references keep them.
        let from_parent = match &batch.parent {
            Some((p, flags)) if flags.len() == batch.chunks.len() => match self.get_record(p) {
                Ok(r) if r.state == BackupState::Available => Some(flags),
                Ok(_) | Err(Error::BackupNotFound(_)) => None,
                Err(e) => return Err(e),
            },
            _ => None,
        };
        let lookup: Vec<&ChunkId> = batch
            .chunks
            .iter()
            .enumerate()
            .filter(|(i, _)| !from_parent.is_some_and(|f| f[*i]))
            .map(|(_, id)| id)
            .collect();
        let mut found = self
            .db
            .multi_get_cf(lookup.iter().map(|id| (chunks_cf, id.as_bytes())))
            .into_iter()
            .map(|r| r.map(|v| v.is_some()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::db("multi-get chunks"))?
            .into_iter();
        let present = (0..batch.chunks.len())
            .map(|i| from_parent.is_some_and(|f| f[i]) || found.next().unwrap_or(false))
            .collect();
        self.db.write(b).map_err(Error::db("write refs"))?;
        Ok(present)
    }

    /// Streams a backup's manifest, block by block.
    pub fn manifest(&self, backup: &BackupId) -> impl Iterator<Item = Result<ManifestBlock>> + '_ {
        let prefix = *backup.as_bytes();
        let mut expect = 0u32;
        self.db
            .iterator_cf(
                self.cf(CF_MANIFESTS),
                IteratorMode::From(&prefix, Direction::Forward),
            )
            .take_while(move |kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(move |kv| {
                let (k, v) = kv.map_err(Error::db("iterate manifest"))?;
                let n = k
                    .get(16..)
                    .and_then(|n| <[u8; 4]>::try_from(n).ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| Error::Corrupt {
                        what: format!("manifest of backup {}", BackupId::from_bytes(prefix)),
                        detail: format!("manifest key of {} bytes", k.len()),
                    })?;
                if n != expect {
                    return Err(Error::Corrupt {
                        what: format!("manifest of backup {}", BackupId::from_bytes(prefix)),
                        detail: format!("block {expect} is missing"),
                    });
                }
                expect += 1;
                Ok(ManifestBlock::decode(&v)?)
            })
    }

    // ---------------------------------------------------------------- records

    /// Stores a record (synced when `sync`).
    pub fn put_record(&self, rec: &BackupRecord, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .put_cf_opt(self.cf(CF_BACKUPS), rec.id.as_bytes(), rec.encode(), &wo)
            .map_err(Error::db("put record"))
    }

    /// One record.
    pub fn get_record(&self, id: &BackupId) -> Result<BackupRecord> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_BACKUPS), id.as_bytes())
            .map_err(Error::db("get record"))?
            .ok_or(Error::BackupNotFound(*id))?;
        Ok(BackupRecord::decode(&v)?)
    }

    /// Every record, oldest first.
    pub fn list_records(&self) -> Result<Vec<BackupRecord>> {
        let mut v = self
            .db
            .iterator_cf(self.cf(CF_BACKUPS), IteratorMode::Start)
            .map(|kv| {
                let (_, v) = kv.map_err(Error::db("iterate records"))?;
                Ok(BackupRecord::decode(&v)?)
            })
            .collect::<Result<Vec<_>>>()?;
        v.sort_by_key(|r| (r.created_at, r.id));
        Ok(v)
    }

    /// Starts a backup: writes its `in_progress` record and protects its references from GC
    /// until the guard is dropped.
    pub fn begin_backup(&self, rec: &BackupRecord) -> Result<ActiveGuard<'_>> {
        debug_assert_eq!(rec.state, BackupState::InProgress);
        self.active.lock().insert(rec.id);
        let guard = ActiveGuard {
            store: self,
            id: rec.id,
        };
        self.put_record(rec, false)?;
        Ok(guard)
    }

    /// Commits a backup: writes its catalog objects (manifest parts, then the record with
    /// `annotation`), then its last manifest block and its `available` record in one synced
    /// batch. Every pack holding its new chunks must be sealed before this is called.
    pub fn commit_backup(
        &self,
        rec: &BackupRecord,
        last_block: Option<(u32, &ManifestBlock)>,
        annotation: Option<&str>,
    ) -> Result<()> {
        self.put_catalog_backup(rec, last_block, annotation)?;
        let mut b = WriteBatch::default();
        if let Some((n, block)) = last_block {
            b.put_cf(
                self.cf(CF_MANIFESTS),
                manifest_key(&rec.id, n),
                block.encode(),
            );
        }
        b.put_cf(self.cf(CF_BACKUPS), rec.id.as_bytes(), rec.encode());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(b, &wo)
            .map_err(Error::db("commit backup"))
            .inspect_err(|_| {
                // The backup fails: the bucket must not keep listing it (best effort; an
                // interrupted backup's record object is also removed at the next open).
                let _ = self.delete_catalog_backup(&rec.id);
            })
    }

    /// Deletes a backup: marks it `deleting` (synced), drops its references and manifest, then
    /// its record. A crash midway leaves a `deleting` record that GC finishes.
    pub fn delete_backup(&self, id: &BackupId) -> Result<()> {
        let mut rec = self.get_record(id)?;
        if self.active.lock().contains(id) {
            return Err(Error::Config(format!(
                "backup {id} is still being written; cancel it first"
            )));
        }
        if rec.state != BackupState::Deleting {
            rec.state = BackupState::Deleting;
            self.put_record(&rec, true)?;
        }
        self.delete_catalog_backup(id)?;
        self.drop_references(id)?;
        self.forget_backup_retention(id)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .delete_cf_opt(self.cf(CF_BACKUPS), id.as_bytes(), &wo)
            .map_err(Error::db("delete record"))
    }

    /// Removes a backup's references and manifest blocks (record untouched).
    pub(crate) fn drop_references(&self, id: &BackupId) -> Result<()> {
        let refs_cf = self.cf(CF_REFS);
        let man_cf = self.cf(CF_MANIFESTS);
        let mut n = 0u32;
        loop {
            let key = manifest_key(id, n);
            let Some(v) = self
                .db
                .get_pinned_cf(man_cf, key)
                .map_err(Error::db("get manifest block"))?
            else {
                break;
            };
            // A damaged block cannot be parsed for its refs; GC's dead-ref sweep removes them.
            let mut b = WriteBatch::default();
            if let Ok(block) = ManifestBlock::decode(&v) {
                for e in &block.entries {
                    if let ManifestEntry::Chunk { id: c, .. } = e {
                        b.delete_cf(refs_cf, ref_key(c, id));
                    }
                }
            }
            b.delete_cf(man_cf, key);
            self.db.write(b).map_err(Error::db("drop refs"))?;
            n += 1;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- keys

    /// The wrapped data key of `volume`, if it is an encrypted volume.
    pub fn volume_key(&self, volume: &VolumeId) -> Result<Option<WrappedKey>> {
        self.db
            .get_pinned_cf(self.cf(CF_KEYS), volume.as_str())
            .map_err(Error::db("get volume key"))?
            .map(|v| WrappedKey::decode(&v).map_err(Error::from))
            .transpose()
    }

    /// Stores `volume`'s wrapped data key (synced) unless one exists; returns the stored one.
    pub fn put_volume_key_if_absent(
        &self,
        volume: &VolumeId,
        key: &WrappedKey,
    ) -> Result<WrappedKey> {
        let _g = self.lifecycle.lock();
        if let Some(k) = self.volume_key(volume)? {
            return Ok(k);
        }
        // The bucket holds the key before any backup the index lets use it.
        self.put_catalog_key(volume, key)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(self.cf(CF_KEYS), volume.as_str(), key.encode(), &wo)
            .map_err(Error::db("put volume key"))?;
        Ok(key.clone())
    }

    /// Every volume's wrapped data key.
    pub fn volume_keys(&self) -> Result<Vec<(VolumeId, WrappedKey)>> {
        self.db
            .iterator_cf(self.cf(CF_KEYS), IteratorMode::Start)
            .map(|kv| {
                let (k, v) = kv.map_err(Error::db("iterate keys"))?;
                let volume = std::str::from_utf8(&k)
                    .ok()
                    .and_then(|s| VolumeId::new(s).ok())
                    .ok_or_else(|| Error::Corrupt {
                        what: "volume key".into(),
                        detail: "key of the keys column family is not a volume id".into(),
                    })?;
                Ok((volume, WrappedKey::decode(&v)?))
            })
            .collect()
    }

    // ---------------------------------------------------------------- accounting

    /// Packs, chunks and bytes in the store.
    pub fn stats(&self) -> Result<StoreStats> {
        let mut s = StoreStats::default();
        for p in self.sealed_packs()? {
            s.packs += 1;
            s.pack_bytes += p.1.size;
        }
        for c in self.chunks() {
            let (_, loc) = c?;
            s.chunks += 1;
            s.live_bytes += loc.entry_len();
        }
        s.backups = self.list_records()?.len() as u64;
        Ok(s)
    }

    /// Flushes memtables so the index files on disk are current (used before copying a store).
    pub fn flush(&self) -> Result<()> {
        for cf in ALL_CFS {
            self.db.flush_cf(self.cf(cf)).map_err(Error::db("flush"))?;
        }
        sync_dir(&self.dir)
    }

    /// Loads every record into a map (GC and verify use it to classify references).
    pub(crate) fn record_states(&self) -> Result<HashMap<BackupId, BackupState>> {
        Ok(self
            .list_records()?
            .into_iter()
            .map(|r| (r.id, r.state))
            .collect())
    }
}
