//! Rebuilding a store's index from its packs and its catalog (`blockvault local recover`).
//!
//! Two cases, one procedure:
//! - **repair**: a local store whose index is damaged or lost. Its `store.json` (or, if that is
//!   damaged too, the catalog's copy) says where the packs are; the damaged index is moved
//!   aside to `index.damaged-<unix time>`, never deleted.
//! - **disaster recovery**: an empty directory and a bucket. The config comes from the
//!   bucket's catalog, with the backend and key file the operator names.
//!
//! Then: every pack's entries (from its trailer, or by a scan) become chunk locations; every
//! volume key object becomes a key; every record object whose manifest parts check becomes an
//! `available` backup with its manifest and references. What the catalog says is believed only
//! after its MAC checks (under the master key, for a store that has one).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use blockvault_core::manifest::Coverage;
use blockvault_core::{
    BackupId, BackupRecord, BackupState, CatalogKey, ManifestEntry, MasterKey, PackId, VolumeId,
    WrappedKey,
};
use parking_lot::Mutex;
use rocksdb::WriteBatch;
use serde::Serialize;

use crate::catalog::{self, Kind, RecordBody};
use crate::config::{Backend, StoreConfig, CONFIG_FILE};
use crate::error::{Error, Result};
use crate::index::{
    manifest_key, ref_key, PackInfo, Store, CF_CHUNKS, CF_KEYS, CF_MANIFESTS, CF_PACKS, CF_REFS,
};
use crate::pack::{LocalPacks, PackStorage};
use crate::trailer::{self, PackListing};

/// A backup `recover` brought back.
#[derive(Clone, Debug, Serialize)]
pub struct RecoveredBackup {
    pub record: BackupRecord,
    /// What the writer attached to the record (the daemon: its control row).
    pub annotation: Option<String>,
    /// Chunks its manifest names that no pack holds (0 for an intact backup).
    pub missing_chunks: u64,
}

/// What one `recover` run found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecoverReport {
    /// Where the damaged index was moved, if there was one.
    pub index_moved_to: Option<PathBuf>,
    pub packs: u64,
    /// Packs whose entries came from their trailer.
    pub packs_from_trailer: u64,
    /// Packs whose entries were found by a scan, and why.
    pub packs_scanned: Vec<(String, String)>,
    /// Packs that could not be read at all (left alone, not registered).
    pub packs_unreadable: Vec<(String, String)>,
    /// Chunk entries found in packs (a chunk in two packs counts twice).
    pub chunk_entries: u64,
    pub keys: u64,
    /// Key objects that did not check.
    pub keys_damaged: Vec<(String, String)>,
    pub backups: Vec<RecoveredBackup>,
    /// Record objects that could not be used, and why (their backups are recorded `error`
    /// when the record itself checked).
    pub backups_damaged: Vec<(String, String)>,
    pub seconds: f64,
}

/// Where `recover` reads the store from.
pub enum RecoverFrom {
    /// The store in the directory itself (repair).
    Dir,
    /// A bucket (or any backend), into an empty directory.
    Backend(Backend),
}

/// Moves `dir/index` aside unless no index is there. Refuses while a process has it open.
fn move_index_aside(dir: &Path) -> Result<Option<PathBuf>> {
    let index = dir.join("index");
    if !index.exists() {
        return Ok(None);
    }
    let secs = blockvault_core::unix_now();
    let mut aside = dir.join(format!("index.damaged-{secs}"));
    let mut n = 1;
    while aside.exists() {
        aside = dir.join(format!("index.damaged-{secs}-{n}"));
        n += 1;
    }
    std::fs::rename(&index, &aside).map_err(|e| Error::io(&index, e))?;
    crate::pack::sync_dir(dir)?;
    Ok(Some(aside))
}

/// The key the catalog of a store with `config` is MACed under.
fn catalog_key(config: &StoreConfig, master: Option<&MasterKey>) -> Result<CatalogKey> {
    match (&config.master_fingerprint, master) {
        (None, _) => Ok(CatalogKey::unauthenticated(&config.store_id)),
        (Some(fp), None) => Err(Error::Config(format!(
            "store {} has a master key (fingerprint {fp}): name its key file",
            config.store_id
        ))),
        (Some(fp), Some(m)) if m.fingerprint() != *fp => Err(Error::Config(format!(
            "the key given is not the master key of store {} (fingerprint {fp})",
            config.store_id
        ))),
        (Some(_), Some(m)) => Ok(m.catalog_key()),
    }
}

/// The catalog's copy of the config, MAC checked.
fn catalog_config(packs: &dyn PackStorage, master: Option<&MasterKey>) -> Result<StoreConfig> {
    let (config, obj) = catalog::get_config_unchecked(packs)?.ok_or_else(|| {
        Error::Config(format!(
            "{} holds no blockvault store (no catalog object {})",
            packs.location(),
            catalog::CONFIG_OBJECT
        ))
    })?;
    let key = catalog_key(&config, master)?;
    catalog::open(&key, catalog::CONFIG_OBJECT, Kind::Config, &obj)?;
    config.validate()?;
    Ok(config)
}

impl Store {
    /// Rebuilds the index of the store in `dir` (see the module docs) and opens the store.
    /// `master` is the store's master key (required when the store has one); `key_file` is
    /// recorded as the store's key file for a disaster recovery.
    pub fn recover(
        dir: impl AsRef<Path>,
        from: RecoverFrom,
        master: Option<&MasterKey>,
        key_file: Option<PathBuf>,
    ) -> Result<(Store, RecoverReport)> {
        let dir = dir.as_ref();
        let started = Instant::now();
        let mut report = RecoverReport::default();
        let (config, packs, save_config) = match from {
            RecoverFrom::Dir => match StoreConfig::load(dir) {
                Ok(c) => {
                    let packs = c.backend.open(dir)?;
                    (c, packs, false)
                }
                Err(e) if dir.join(CONFIG_FILE).exists() => {
                    // A damaged store.json: a local store's catalog has a copy.
                    let packs: Arc<dyn PackStorage> = Arc::new(LocalPacks::new(dir.join("packs"))?);
                    let c = catalog_config(&*packs, master).map_err(|e2| {
                        Error::Config(format!("{e}; and the catalog's copy: {e2}"))
                    })?;
                    if !c.backend.is_local() {
                        return Err(Error::Config(format!(
                            "{e}; name the bucket to recover from it"
                        )));
                    }
                    (c, packs, true)
                }
                Err(e) => return Err(e),
            },
            RecoverFrom::Backend(backend) => {
                if dir.join(CONFIG_FILE).exists() {
                    return Err(Error::Config(format!(
                        "{} already holds a store: recover it in place (without a bucket), or \
                         recover the bucket into an empty directory",
                        dir.display()
                    )));
                }
                crate::index::create_store_dir(dir)?;
                let packs = backend.open(dir)?;
                let mut c = catalog_config(&*packs, master)?;
                c.backend = backend;
                c.key_file = key_file.or(c.key_file);
                (c, packs, true)
            }
        };
        let key = catalog_key(&config, master)?;
        report.index_moved_to = move_index_aside(dir)?;
        let store = Store::open_parts(dir, config.clone(), packs)?;
        *store.catalog.write() = Some(key.clone());

        store.recover_packs(&key, &mut report)?;
        store.recover_keys(&key, master, &mut report)?;
        store.recover_backups(&key, &mut report)?;
        store.flush()?;
        if save_config {
            // Last: a directory with a config is a complete store.
            config.save(dir)?;
        }
        if !store.has_catalog()? {
            store.put_catalog_config()?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok((store, report))
    }

    /// Registers every pack and its chunks, several packs at a time.
    fn recover_packs(&self, key: &CatalogKey, report: &mut RecoverReport) -> Result<()> {
        let listed = self
            .packs
            .list_sized()
            .map_err(|e| Error::io(self.packs.location(), e))?;
        let threads = self
            .packs
            .read_concurrency()
            .max(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .min(listed.len().max(1));
        let next = AtomicUsize::new(0);
        let out = Mutex::new((Vec::new(), Ok(())));
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(id, size)) = listed.get(i) else {
                        break;
                    };
                    let r = self.recover_pack(id, size, key);
                    let mut o = out.lock();
                    match r {
                        Ok(x) => o.0.push(x),
                        Err(e) => {
                            if o.1.is_ok() {
                                o.1 = Err(e);
                            }
                            break;
                        }
                    }
                });
            }
        });
        let (found, res) = out.into_inner();
        res?;
        for (id, listing, entries) in found {
            report.packs += 1;
            report.chunk_entries += entries;
            match listing {
                Ok(PackListing::Trailer) => report.packs_from_trailer += 1,
                Ok(PackListing::ScannedV1) => report
                    .packs_scanned
                    .push((id.to_hex(), "version 1 pack (no trailer)".into())),
                Ok(PackListing::Scanned(why)) => report.packs_scanned.push((id.to_hex(), why)),
                Err(why) => {
                    report.packs -= 1;
                    report.packs_unreadable.push((id.to_hex(), why));
                }
            }
        }
        Ok(())
    }

    /// One pack: its entries into `chunks`, itself into `packs`. A pack that cannot be read is
    /// reported (`Err` in the listing), not fatal; an index write that fails is.
    #[allow(clippy::type_complexity)]
    fn recover_pack(
        &self,
        id: PackId,
        size: u64,
        key: &CatalogKey,
    ) -> Result<(PackId, std::result::Result<PackListing, String>, u64)> {
        let found = match trailer::read_entries(&*self.packs, id, size, key) {
            Ok(f) => f,
            Err(e) => return Ok((id, Err(e.to_string()), 0)),
        };
        let mut b = WriteBatch::default();
        for (cid, loc) in &found.entries {
            b.put_cf(self.cf(CF_CHUNKS), cid.as_bytes(), loc.encode());
        }
        let info = PackInfo {
            size,
            entries: found.entries.len() as u32,
        };
        b.put_cf(self.cf(CF_PACKS), id.0, info.encode());
        self.db.write(b).map_err(Error::db("recover pack"))?;
        Ok((id, Ok(found.how), found.entries.len() as u64))
    }

    /// Every volume key object, checked (and unwrapped, when the master key is known).
    fn recover_keys(
        &self,
        key: &CatalogKey,
        master: Option<&MasterKey>,
        report: &mut RecoverReport,
    ) -> Result<()> {
        let names = self
            .packs
            .list_meta(catalog::KEYS_PREFIX)
            .map_err(|e| Error::io(self.packs.location(), e))?;
        for name in names {
            match self.recover_key(key, master, &name) {
                Ok(()) => report.keys += 1,
                Err(e) => report.keys_damaged.push((name, e.to_string())),
            }
        }
        Ok(())
    }

    fn recover_key(&self, key: &CatalogKey, master: Option<&MasterKey>, name: &str) -> Result<()> {
        let volume = name
            .strip_prefix(catalog::KEYS_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| VolumeId::new(s).ok())
            .ok_or_else(|| Error::Corrupt {
                what: format!("catalog object {name}"),
                detail: "the name is not a hex volume id".into(),
            })?;
        let body =
            catalog::get(&*self.packs, key, name, Kind::Key)?.ok_or_else(|| Error::Corrupt {
                what: format!("catalog object {name}"),
                detail: "vanished while listed".into(),
            })?;
        let wrapped = WrappedKey::decode(&body)?;
        if let Some(m) = master {
            m.unwrap(&volume, &wrapped)?;
        }
        self.db
            .put_cf(self.cf(CF_KEYS), volume.as_str(), wrapped.encode())
            .map_err(Error::db("recover key"))
    }

    /// Every record object whose manifest checks.
    fn recover_backups(&self, key: &CatalogKey, report: &mut RecoverReport) -> Result<()> {
        let names = self
            .packs
            .list_meta(catalog::BACKUPS_PREFIX)
            .map_err(|e| Error::io(self.packs.location(), e))?;
        for name in names.iter().filter(|n| n.ends_with("/record")) {
            let body = match catalog::get(&*self.packs, key, name, Kind::Record) {
                Ok(Some(b)) => b,
                Ok(None) => continue, // deleted since the listing
                Err(e) => {
                    report.backups_damaged.push((name.clone(), e.to_string()));
                    continue;
                }
            };
            let parsed: std::result::Result<RecordBody, _> = serde_json::from_slice(&body);
            let rb = match parsed {
                Ok(rb) if catalog::record_name(&rb.record.id) == *name => rb,
                Ok(_) => {
                    report
                        .backups_damaged
                        .push((name.clone(), "the record names another backup".into()));
                    continue;
                }
                Err(e) => {
                    report.backups_damaged.push((name.clone(), e.to_string()));
                    continue;
                }
            };
            let mut rec = rb.record;
            match self.recover_manifest(key, &rec) {
                Ok(missing) => {
                    rec.state = BackupState::Available;
                    self.put_record(&rec, false)?;
                    report.backups.push(RecoveredBackup {
                        record: rec,
                        annotation: rb.annotation,
                        missing_chunks: missing,
                    });
                }
                Err(e) => {
                    // The record is genuine but its manifest is not whole: keep the record, as
                    // `error`, so the operator sees what was lost.
                    self.drop_references(&rec.id)?;
                    rec.state = BackupState::Error;
                    rec.fail_reason = Some(format!("recover: {e}"));
                    self.put_record(&rec, false)?;
                    report.backups_damaged.push((name.clone(), e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Writes a backup's manifest blocks and references from its manifest parts, after
    /// checking them; returns how many of its chunks no pack holds.
    fn recover_manifest(&self, key: &CatalogKey, rec: &BackupRecord) -> Result<u64> {
        let id: BackupId = rec.id;
        let mut cov = Coverage::new(rec.size);
        let mut n = 0u32;
        let mut missing = 0u64;
        for part in 0..catalog::part_count(rec.manifest_blocks) {
            let name = catalog::part_name(&id, part);
            let body =
                catalog::get(&*self.packs, key, &name, Kind::ManifestPart)?.ok_or_else(|| {
                    Error::Corrupt {
                        what: format!("catalog object {name}"),
                        detail: "missing".into(),
                    }
                })?;
            let mut b = WriteBatch::default();
            for block in catalog::decode_part(&name, &body)? {
                cov.block(&block)?;
                let mut chunks = Vec::new();
                for e in &block.entries {
                    cov.entry(e)?;
                    if let ManifestEntry::Chunk { id: c, .. } = e {
                        b.put_cf(self.cf(CF_REFS), ref_key(c, &id), []);
                        chunks.push(*c);
                    }
                }
                for c in &chunks {
                    if !self.has_chunk(c)? {
                        missing += 1;
                    }
                }
                b.put_cf(self.cf(CF_MANIFESTS), manifest_key(&id, n), block.encode());
                n += 1;
            }
            self.db.write(b).map_err(Error::db("recover manifest"))?;
        }
        if n != rec.manifest_blocks {
            return Err(Error::Corrupt {
                what: format!("manifest of backup {id}"),
                detail: format!("{n} blocks, the record says {}", rec.manifest_blocks),
            });
        }
        cov.finish()?;
        Ok(missing)
    }
}
