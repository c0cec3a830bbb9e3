//! Exact vault usage: a ledger, in the control database, of the chunks each vault's backups
//! reference.
//!
//! A vault's `used` is the stored size (pack entry bytes: header, compressed and encrypted data)
//! of the distinct chunks referenced by its available backups. Three column families hold it:
//!
//! - `vault_chunks`: `vault ‖ chunk -> (count, size)`, where `count` is the number of manifest
//!   entries of the vault's counted backups naming the chunk. A repeated chunk counts once per
//!   entry, so adding and removing a backup are exact inverses without a per-backup chunk set.
//! - `vault_charges`: `vault ‖ backup -> [first, end) + complete`, the backup's manifest blocks
//!   currently counted.
//! - `vault_used`: `vault -> bytes`, the sum of `size` over the vault's `vault_chunks` entries.
//!
//! Each manifest block is counted or uncounted in one atomic batch that updates the three
//! together, so the ledger is consistent after a crash at any moment; the charge row says exactly
//! which blocks are in. Batches are serialised by one mutex held for one block (a moment): counts
//! are read-modify-write. A chunk's size is read from the store when its count goes 0 -> n and
//! kept in the entry, so the decrement never needs the store.
//!
//! Life of a charge: a backup job that the engine committed is charged block by block before the
//! job ends (so `available` implies fully counted); a delete uncharges before the engine drops the
//! manifest. Start-up recovery completes the charges of available backups and undoes the others.
//! A charge can be larger than the bytes the backup added to the store (its chunks may already be
//! stored for another vault or for a deleted backup), so the capacity check runs on the charged
//! figure; a backup that does not fit is uncharged and failed with RESOURCE_EXHAUSTED.
use std::collections::HashMap;
use std::sync::Arc;

use blockvault_core::{BackupId, ChunkId, ManifestBlock, ManifestEntry};
use blockvault_engine::Engine;
use parking_lot::Mutex;
use rocksdb::{Direction, IteratorMode, WriteBatch};
use uuid::Uuid;

use crate::model::{
    BackupStatus, ControlDb, DbError, CF_VAULT_CHARGES, CF_VAULT_CHUNKS, CF_VAULT_USED,
};
use crate::state::Rows;

/// The manifest blocks of a backup counted in a vault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Charge {
    /// First counted block.
    pub first: u32,
    /// One past the last counted block.
    pub end: u32,
    /// Every block of the backup is counted.
    pub complete: bool,
}

impl Charge {
    fn encode(&self) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[..4].copy_from_slice(&self.first.to_le_bytes());
        b[4..8].copy_from_slice(&self.end.to_le_bytes());
        b[8] = u8::from(self.complete);
        b
    }

    fn decode(key: &[u8], v: &[u8]) -> Result<Charge, DbError> {
        let bad = || DbError::Corrupt {
            key: format!("{CF_VAULT_CHARGES}/{}", hex::encode(key)),
            detail: format!("{} bytes", v.len()),
        };
        if v.len() != 9 || v[8] > 1 {
            return Err(bad());
        }
        Ok(Charge {
            first: u32::from_le_bytes(v[..4].try_into().map_err(|_| bad())?),
            end: u32::from_le_bytes(v[4..8].try_into().map_err(|_| bad())?),
            complete: v[8] == 1,
        })
    }
}

fn charge_key(vault: &Uuid, backup: &Uuid) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(vault.as_bytes());
    k[16..].copy_from_slice(backup.as_bytes());
    k
}

fn chunk_key(vault: &Uuid, chunk: &ChunkId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(vault.as_bytes());
    k[16..].copy_from_slice(chunk.as_bytes());
    k
}

fn u64_at(v: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(v.get(at..at + 8)?.try_into().ok()?))
}

impl ControlDb {
    fn cf_handle(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family opened")
    }

    /// Used bytes of every vault with a ledger.
    pub(crate) fn vault_usage(&self) -> Result<HashMap<Uuid, u64>, DbError> {
        self.db
            .iterator_cf(self.cf_handle(CF_VAULT_USED), IteratorMode::Start)
            .map(|kv| {
                let (k, v) = kv?;
                let bad = || DbError::Corrupt {
                    key: format!("{CF_VAULT_USED}/{}", hex::encode(&k)),
                    detail: format!("{} bytes", v.len()),
                };
                let id = Uuid::from_slice(&k).map_err(|_| bad())?;
                Ok((id, u64_at(&v, 0).ok_or_else(bad)?))
            })
            .collect()
    }

    /// Every charge row: (vault, backup, charge).
    pub(crate) fn charges(&self) -> Result<Vec<(Uuid, Uuid, Charge)>, DbError> {
        self.db
            .iterator_cf(self.cf_handle(CF_VAULT_CHARGES), IteratorMode::Start)
            .map(|kv| {
                let (k, v) = kv?;
                let c = Charge::decode(&k, &v)?;
                let bad = || DbError::Corrupt {
                    key: format!("{CF_VAULT_CHARGES}/{}", hex::encode(&k)),
                    detail: "bad key".into(),
                };
                let vault = Uuid::from_slice(k.get(..16).ok_or_else(bad)?).map_err(|_| bad())?;
                let backup = Uuid::from_slice(k.get(16..).ok_or_else(bad)?).map_err(|_| bad())?;
                Ok((vault, backup, c))
            })
            .collect()
    }

    fn charge_row(&self, vault: &Uuid, backup: &Uuid) -> Result<Option<Charge>, DbError> {
        let key = charge_key(vault, backup);
        self.db
            .get_pinned_cf(self.cf_handle(CF_VAULT_CHARGES), key)?
            .map(|v| Charge::decode(&key, &v))
            .transpose()
    }

    /// Writes (or with `None` deletes) a backup's charge row on its own; the counts are
    /// unchanged, so no ledger lock is needed.
    fn put_charge_row(
        &self,
        vault: &Uuid,
        backup: &Uuid,
        row: Option<Charge>,
    ) -> Result<(), DbError> {
        let cf = self.cf_handle(CF_VAULT_CHARGES);
        let key = charge_key(vault, backup);
        match row {
            Some(c) => self.db.put_cf(cf, key, c.encode())?,
            None => self.db.delete_cf(cf, key)?,
        }
        Ok(())
    }

    fn used_of(&self, vault: &Uuid) -> Result<u64, DbError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf_handle(CF_VAULT_USED), vault.as_bytes())?
            .and_then(|v| u64_at(&v, 0))
            .unwrap_or(0))
    }

    /// The vault's chunk entries (for tests and audits): chunk -> (count, size).
    pub fn vault_chunks(&self, vault: &Uuid) -> Result<HashMap<ChunkId, (u64, u64)>, DbError> {
        let prefix = *vault.as_bytes();
        let mut out = HashMap::new();
        for kv in self.db.iterator_cf(
            self.cf_handle(CF_VAULT_CHUNKS),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            let bad = || DbError::Corrupt {
                key: format!("{CF_VAULT_CHUNKS}/{}", hex::encode(&k)),
                detail: format!("{} bytes", v.len()),
            };
            let id: [u8; 32] = k[16..].try_into().map_err(|_| bad())?;
            let count = u64_at(&v, 0).ok_or_else(bad)?;
            let size = u64_at(&v, 8).ok_or_else(bad)?;
            out.insert(ChunkId(id), (count, size));
        }
        Ok(out)
    }
}

/// Counts (`add`) or uncounts one manifest block in `vault` and writes `next` as the backup's
/// charge row, atomically. Returns the vault's used bytes afterwards.
/// The caller holds the ledger lock.
fn apply_block(
    rows: &Rows,
    engine: &Engine,
    vault: &Uuid,
    backup: &Uuid,
    block: &ManifestBlock,
    add: bool,
    next: Charge,
) -> Result<u64, String> {
    let db = &rows.db;
    let mut occurrences: HashMap<ChunkId, u64> = HashMap::new();
    for e in &block.entries {
        if let ManifestEntry::Chunk { id, .. } = e {
            *occurrences.entry(*id).or_default() += 1;
        }
    }
    let keys: Vec<(ChunkId, u64, [u8; 48])> = occurrences
        .into_iter()
        .map(|(id, n)| (id, n, chunk_key(vault, &id)))
        .collect();
    let cf = db.cf_handle(CF_VAULT_CHUNKS);
    let current = db
        .db
        .multi_get_cf(keys.iter().map(|(_, _, k)| (cf, k.as_slice())));
    let mut used = db.used_of(vault).map_err(|e| e.to_string())?;
    let mut b = WriteBatch::default();
    for ((id, n, key), cur) in keys.iter().zip(current) {
        let cur = cur.map_err(|e| format!("vault ledger read: {e}"))?;
        let (old, mut size) = match cur {
            Some(v) => (u64_at(&v, 0).unwrap_or(0), u64_at(&v, 8).unwrap_or(0)),
            None => (0, 0),
        };
        let new = if add {
            if old == 0 {
                size = engine
                    .stored_size(id)
                    .map_err(|e| e.to_string())?
                    .unwrap_or(0);
                used += size;
            }
            old + n
        } else {
            if old < *n {
                tracing::error!(vault = %vault, backup = %backup, chunk = %id,
                    "vault ledger: a chunk count would go below zero; usage may be off");
            }
            if old > 0 && old <= *n {
                used = used.saturating_sub(size);
            }
            old.saturating_sub(*n)
        };
        if new > 0 {
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&new.to_le_bytes());
            v[8..].copy_from_slice(&size.to_le_bytes());
            b.put_cf(cf, key, v);
        } else if old > 0 {
            b.delete_cf(cf, key);
        }
    }
    b.put_cf(
        db.cf_handle(CF_VAULT_CHARGES),
        charge_key(vault, backup),
        next.encode(),
    );
    b.put_cf(
        db.cf_handle(CF_VAULT_USED),
        vault.as_bytes(),
        used.to_le_bytes(),
    );
    db.db
        .write(b)
        .map_err(|e| format!("vault ledger write: {e}"))?;
    rows.lock().usage.insert(*vault, used);
    Ok(used)
}

/// How a charge ended.
pub(crate) enum Charged {
    /// Every block is counted; the vault's used bytes afterwards.
    Done(u64),
    /// `stop` asked to stop between blocks; the blocks counted so far stay counted.
    Stopped,
}

/// The ledger: what each vault's backups take, chunk by chunk, in the control database.
pub(crate) struct Usage {
    rows: Arc<Rows>,
    engine: Arc<Engine>,
    /// Serialises the ledger's read-modify-write batches; taken before the rows' mutex, never
    /// while holding it.
    lock: Mutex<()>,
}

impl Usage {
    pub(crate) fn new(rows: Arc<Rows>, engine: Arc<Engine>) -> Usage {
        Usage {
            rows,
            engine,
            lock: Mutex::new(()),
        }
    }

    /// Counts `backup`'s manifest in `vault`, resuming where an earlier attempt stopped.
    /// `stop` is asked between blocks.
    pub(crate) fn charge(
        &self,
        vault: Uuid,
        backup: Uuid,
        stop: &dyn Fn() -> bool,
    ) -> Result<Charged, String> {
        let row = self
            .rows
            .db
            .charge_row(&vault, &backup)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if row.complete {
            return Ok(Charged::Done(
                self.rows.db.used_of(&vault).map_err(|e| e.to_string())?,
            ));
        }
        if row.first > 0 {
            // Half uncounted (never expected for a backup being charged): start over.
            self.uncharge(vault, backup)?;
            return self.charge(vault, backup, stop);
        }
        let mut n = 0u32;
        for block in self.engine.manifest(&BackupId(backup)) {
            let block = block.map_err(|e| format!("manifest of backup {backup}: {e}"))?;
            n += 1;
            if n <= row.end {
                continue;
            }
            if stop() {
                return Ok(Charged::Stopped);
            }
            let _g = self.lock.lock();
            let next = Charge {
                first: 0,
                end: n,
                complete: false,
            };
            apply_block(
                &self.rows,
                &self.engine,
                &vault,
                &backup,
                &block,
                true,
                next,
            )?;
        }
        let done = Charge {
            first: 0,
            end: n,
            complete: true,
        };
        self.rows
            .db
            .put_charge_row(&vault, &backup, Some(done))
            .map_err(|e| e.to_string())?;
        Ok(Charged::Done(
            self.rows.db.used_of(&vault).map_err(|e| e.to_string())?,
        ))
    }

    /// Uncounts whatever of `backup` is counted in `vault` (nothing if it has no charge row).
    /// A manifest block that cannot be read any more stays counted (an over-count, logged).
    pub(crate) fn uncharge(&self, vault: Uuid, backup: Uuid) -> Result<(), String> {
        let Some(row) = self
            .rows
            .db
            .charge_row(&vault, &backup)
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let mut n = 0u32;
        for block in self.engine.manifest(&BackupId(backup)) {
            if n >= row.end {
                break;
            }
            n += 1;
            if n <= row.first {
                continue;
            }
            let block = match block {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(vault = %vault, backup = %backup, error = %e,
                        "vault ledger: cannot read the manifest to uncount it; the vault's \
                         usage stays over-counted by that backup's remaining chunks");
                    break;
                }
            };
            let _g = self.lock.lock();
            let next = Charge {
                first: n,
                end: row.end,
                complete: row.complete,
            };
            apply_block(
                &self.rows,
                &self.engine,
                &vault,
                &backup,
                &block,
                false,
                next,
            )?;
        }
        self.rows
            .db
            .put_charge_row(&vault, &backup, None)
            .map_err(|e| e.to_string())?;
        // The caller drops the manifest next. The uncount must be durable first: were it lost in
        // a power cut after the manifest is gone, nothing could uncount the backup any more. The
        // WAL is sequential, so syncing it makes every batch above durable.
        self.rows
            .db
            .db
            .flush_wal(true)
            .map_err(|e| format!("vault ledger sync: {e}"))
    }

    /// Start-up reconciliation: completes the charges of available backups in vaults (also
    /// charging ones that have none, e.g. from before the ledger existed) and undoes the charges
    /// of every other backup, except `deleting` ones, whose delete uncharges them.
    pub(crate) fn reconcile(&self) -> Result<(), String> {
        let charges = self.rows.db.charges().map_err(|e| e.to_string())?;
        let (undo, todo) = {
            let st = self.rows.lock();
            let counted = |vault: &Uuid, backup: &Uuid| {
                st.backups.get(backup).is_some_and(|b| {
                    b.vault_id == Some(*vault)
                        && matches!(b.status, BackupStatus::Available | BackupStatus::Restoring)
                })
            };
            let undo: Vec<(Uuid, Uuid)> = charges
                .iter()
                .filter(|(v, b, _)| {
                    !counted(v, b)
                        && st
                            .backups
                            .get(b)
                            .is_none_or(|r| r.status != BackupStatus::Deleting)
                })
                .map(|(v, b, _)| (*v, *b))
                .collect();
            let complete: std::collections::HashSet<Uuid> = charges
                .iter()
                .filter(|(_, _, c)| c.complete)
                .map(|(_, b, _)| *b)
                .collect();
            let todo: Vec<(Uuid, Uuid)> = st
                .backups
                .values()
                .filter(|b| !complete.contains(&b.id))
                .filter_map(|b| b.vault_id.map(|v| (v, b.id)))
                .filter(|(v, b)| counted(v, b))
                .collect();
            (undo, todo)
        };
        for (vault, backup) in undo {
            tracing::info!(vault = %vault, backup = %backup, "vault ledger: undoing the charge of a backup that is not available");
            self.uncharge(vault, backup)?;
        }
        for (vault, backup) in todo {
            tracing::info!(vault = %vault, backup = %backup, "vault ledger: completing the charge of an available backup");
            self.charge(vault, backup, &|| false)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use blockvault_engine::{Engine, EngineOptions};
    use rand::{RngCore, SeedableRng};

    use super::*;
    use crate::auth::Caller;
    use crate::config::Role;
    use crate::control::{Control, CreateBackup};
    use crate::model::JobState;
    use crate::state::Changes;
    use crate::vault::VaultSpec;

    fn admin() -> Caller {
        Caller {
            project: "p".into(),
            user: "u".into(),
            role: Role::Admin,
        }
    }

    fn open(dir: &Path) -> Arc<Control> {
        let engine = Engine::open(dir.join("store"), EngineOptions::default()).unwrap();
        let mut opts = crate::control::ControlOptions::new(dir.join("restore"));
        opts.concurrency = 1;
        // This store has no master key, so no per-project dedup domain.
        opts.dedup = crate::config::DedupScope::Global;
        opts.host =
            crate::hostpath::HostPaths::new(&[dir.to_path_buf()], &dir.join("restore"), &[]);
        Control::open(Arc::new(engine), &dir.join("control"), opts).unwrap()
    }

    /// Reopens after `control` is gone (job threads drop their handles when they end).
    fn reopen(dir: &Path, control: Arc<Control>) -> Arc<Control> {
        let t = Instant::now();
        let mut control = Some(control);
        loop {
            match Arc::try_unwrap(control.take().unwrap()) {
                Ok(c) => {
                    drop(c);
                    return open(dir);
                }
                Err(c) => control = Some(c),
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "control still shared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn backup(control: &Arc<Control>, volume: &str, vault: &str) -> Uuid {
        let (b, j) = control
            .backups()
            .create(
                &admin(),
                CreateBackup {
                    volume_id: volume.into(),
                    container: vault.into(),
                    ..Default::default()
                },
            )
            .unwrap();
        let t = Instant::now();
        while !control
            .jobs()
            .get(&admin(), &j.id.to_string())
            .unwrap()
            .state
            .is_final()
        {
            assert!(t.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(10));
        }
        let j = control.jobs().get(&admin(), &j.id.to_string()).unwrap();
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        b.id
    }

    /// Used bytes recounted from the manifests of `backups`.
    fn recount(control: &Control, backups: &[Uuid]) -> u64 {
        let store = control.engine().store();
        let mut seen = HashSet::new();
        let mut used = 0;
        for b in backups {
            for block in store.manifest(&BackupId(*b)) {
                for e in block.unwrap().entries {
                    if let ManifestEntry::Chunk { id, .. } = e {
                        if seen.insert(id) {
                            used += store.chunk_location(&id).unwrap().unwrap().entry_len();
                        }
                    }
                }
            }
        }
        used
    }

    fn used(control: &Control, vault: &Uuid) -> u64 {
        let st = control.rows.lock();
        st.usage.get(vault).copied().unwrap_or(0)
    }

    /// Stops a charge after `blocks` blocks, as a crash would.
    fn charge_partially(control: &Control, vault: Uuid, backup: Uuid, blocks: usize) {
        control.usage.uncharge(vault, backup).unwrap();
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let stop = || asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= blocks;
        assert!(matches!(
            control.usage.charge(vault, backup, &stop).unwrap(),
            Charged::Stopped
        ));
        let row = control
            .rows
            .db
            .charge_row(&vault, &backup)
            .unwrap()
            .unwrap();
        assert_eq!(
            (row.first, row.end, row.complete),
            (0, blocks as u32, false)
        );
    }

    #[test]
    fn restart_completes_or_undoes_half_done_charges() {
        let dir = tempfile::tempdir().unwrap();
        // Small chunks so that 24 MiB makes several manifest blocks.
        let config = blockvault_store::StoreConfig {
            chunker: blockvault_core::ChunkerParams {
                min_size: 1024,
                avg_size: 2048,
                max_size: 8192,
            },
            ..Default::default()
        };
        Engine::init(dir.path().join("store"), config, None).unwrap();
        // 24 MiB of random data, half repeated: repeated chunks.
        let mut data = vec![0u8; 24 << 20];
        rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut data[..12 << 20]);
        data.copy_within(..12 << 20, 12 << 20);
        let img = dir.path().join("vol.img");
        std::fs::write(&img, &data).unwrap();

        let control = open(dir.path());
        let vol = control
            .volumes()
            .register(
                &admin(),
                "",
                "v",
                img.as_os_str().as_encoded_bytes(),
                false,
                vec![],
                "",
            )
            .unwrap();
        let spec = VaultSpec {
            name: "x".into(),
            billing: Some(crate::model::BillingRow {
                size_gb: 10,
                consistent_level: "crash_consistent".into(),
                object_type: "disk".into(),
                protect_type: "backup".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let vault = control.vaults().create(&admin(), spec).unwrap().vault.id;
        let vid = vault.to_string();
        let vol = vol.id.to_string();
        let a = backup(&control, &vol, &vid);
        let b = backup(&control, &vol, &vid);
        let exact = recount(&control, &[a, b]);
        assert!(exact > 12 << 20, "{exact}");
        assert_eq!(used(&control, &vault), exact);
        let blocks = control.engine().manifest(&BackupId(a)).count();
        assert!(blocks >= 3, "{blocks} manifest blocks");

        // An available backup whose charge was cut short is completed at start-up.
        charge_partially(&control, vault, a, 1);
        let control = reopen(dir.path(), control);
        assert_eq!(used(&control, &vault), exact);
        assert!(
            control
                .rows
                .db
                .charge_row(&vault, &a)
                .unwrap()
                .unwrap()
                .complete
        );

        // A backup that did not become available (a job cut short while counting it) is
        // uncounted at start-up, whatever part of it was counted.
        charge_partially(&control, vault, b, 2);
        {
            let mut st = control.rows.lock();
            let mut row = st.backups[&b].clone();
            row.status = BackupStatus::Error;
            Changes {
                backups: vec![row],
                ..Default::default()
            }
            .commit(&control.rows.db, &mut st)
            .unwrap();
        }
        let control = reopen(dir.path(), control);
        assert_eq!(used(&control, &vault), recount(&control, &[a]));
        assert!(control.rows.db.charge_row(&vault, &b).unwrap().is_none());
        // The entries left are exactly a's distinct chunks, each counted once per occurrence.
        let chunks = control.rows.db.vault_chunks(&vault).unwrap();
        let mut want: HashMap<ChunkId, u64> = HashMap::new();
        for block in control.engine().manifest(&BackupId(a)) {
            for e in block.unwrap().entries {
                if let ManifestEntry::Chunk { id, .. } = e {
                    *want.entry(id).or_default() += 1;
                }
            }
        }
        let got: HashMap<ChunkId, u64> = chunks.iter().map(|(k, (n, _))| (*k, *n)).collect();
        assert_eq!(got, want);
        assert!(want.values().any(|n| *n > 1), "the image repeats chunks");

        // Deleting both leaves nothing behind.
        control.backups().delete_checked(b, false, false).unwrap();
        control.backups().delete_checked(a, false, false).unwrap();
        assert_eq!(used(&control, &vault), 0);
        assert!(control.rows.db.vault_chunks(&vault).unwrap().is_empty());
        assert!(control.rows.db.charges().unwrap().is_empty());
    }
}
