//! The control plane's state: every row in memory behind one mutex and in the control database,
//! the live progress of running jobs, and the two bells that ring after a change (job changes,
//! vault events).
//!
//! A change is computed under the mutex as a [`Changes`], written to the database in one synced
//! batch, and only then applied in memory, so what callers see is always durable.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use blockvault_engine::{CancelToken, Progress};
use parking_lot::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::*;

/// Something that happened to a vault.
#[derive(Clone, Debug)]
pub struct VaultEvent {
    pub vault_id: Uuid,
    pub project_id: String,
    pub kind: &'static str,
    pub used_mb: i64,
    pub capacity_gb: i64,
    pub threshold: i32,
    pub message: String,
    pub at: time::OffsetDateTime,
}

/// Live progress of a running job.
pub struct JobProgress {
    pub(crate) total: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) stored: AtomicU64,
    /// Chunks added to the store, chunks found in it, and the raw bytes of those found.
    pub(crate) new_chunks: AtomicU64,
    pub(crate) found_chunks: AtomicU64,
    pub(crate) found_bytes: AtomicU64,
    /// Bytes the job may add to the store (its vault's free capacity); beyond it the job is
    /// cancelled and `over` set.
    pub(crate) limit: u64,
    pub(crate) over: AtomicBool,
    pub(crate) cancel: CancelToken,
}

impl JobProgress {
    pub(crate) fn new(limit: u64, cancel: CancelToken) -> JobProgress {
        JobProgress {
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            new_chunks: AtomicU64::new(0),
            found_chunks: AtomicU64::new(0),
            found_bytes: AtomicU64::new(0),
            limit,
            over: AtomicBool::new(false),
            cancel,
        }
    }
}

impl Progress for JobProgress {
    fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
    fn stored(&self, bytes: u64) {
        let now = self.stored.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if now > self.limit && !self.over.swap(true, Ordering::SeqCst) {
            self.cancel.cancel();
        }
    }
    fn chunks(&self, new: u64, found: u64, found_bytes: u64) {
        self.new_chunks.fetch_add(new, Ordering::Relaxed);
        self.found_chunks.fetch_add(found, Ordering::Relaxed);
        self.found_bytes.fetch_add(found_bytes, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub(crate) struct Running {
    pub(crate) cancel: CancelToken,
    pub(crate) progress: Arc<JobProgress>,
    /// Cancelled by shutdown: go back to the queue rather than end.
    pub(crate) suspend: Arc<AtomicBool>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) volumes: HashMap<Uuid, VolumeRow>,
    pub(crate) backups: HashMap<Uuid, BackupRow>,
    pub(crate) jobs: HashMap<Uuid, JobRow>,
    pub(crate) vaults: HashMap<Uuid, VaultRow>,
    pub(crate) policies: HashMap<Uuid, PolicyRow>,
    /// Used bytes per vault, from the usage ledger (`usage.rs`).
    pub(crate) usage: HashMap<Uuid, u64>,
    /// Ids of unregistered volumes, never accepted again.
    pub(crate) retired: HashSet<Uuid>,
    pub(crate) running: HashMap<Uuid, Running>,
    pub(crate) next_seq: u64,
}

/// Rows to write together.
#[derive(Default)]
pub(crate) struct Changes {
    pub(crate) volumes: Vec<VolumeRow>,
    pub(crate) backups: Vec<BackupRow>,
    pub(crate) jobs: Vec<JobRow>,
    pub(crate) vaults: Vec<VaultRow>,
    pub(crate) policies: Vec<PolicyRow>,
    pub(crate) gone_volumes: Vec<Uuid>,
    pub(crate) gone_backups: Vec<Uuid>,
    pub(crate) gone_vaults: Vec<Uuid>,
    pub(crate) gone_policies: Vec<Uuid>,
    /// Changed extents of new CBT backup jobs (kept in the database only).
    pub(crate) job_extents: Vec<(Uuid, Arc<[u8]>)>,
    /// Jobs whose changed extents are no longer needed.
    pub(crate) gone_job_extents: Vec<Uuid>,
}

impl Changes {
    /// One vault row.
    pub(crate) fn vault(v: VaultRow) -> Changes {
        Changes {
            vaults: vec![v],
            ..Default::default()
        }
    }

    /// One volume row.
    pub(crate) fn volume(v: VolumeRow) -> Changes {
        Changes {
            volumes: vec![v],
            ..Default::default()
        }
    }

    /// One backup row.
    pub(crate) fn backup(b: BackupRow) -> Changes {
        Changes {
            backups: vec![b],
            ..Default::default()
        }
    }

    /// Writes durably, then applies in memory.
    pub(crate) fn commit(self, db: &ControlDb, st: &mut State) -> Result<()> {
        let mut t = db.txn();
        for v in &self.volumes {
            t.volume(v);
        }
        for b in &self.backups {
            t.backup(b);
        }
        for j in &self.jobs {
            t.job(j);
        }
        for (id, json) in &self.job_extents {
            t.job_extents(id, json);
        }
        for id in &self.gone_job_extents {
            t.delete_job_extents(id);
        }
        for id in &self.gone_volumes {
            t.delete_volume(id);
        }
        for id in &self.gone_backups {
            t.delete_backup(id);
        }
        for v in &self.vaults {
            t.vault(v);
        }
        for p in &self.policies {
            t.policy(p);
        }
        for id in &self.gone_vaults {
            t.delete_vault(id);
        }
        for id in &self.gone_policies {
            t.delete_policy(id);
        }
        t.commit().map_err(Error::from)?;
        for v in self.volumes {
            st.volumes.insert(v.id, v);
        }
        for b in self.backups {
            st.backups.insert(b.id, b);
        }
        for j in self.jobs {
            st.jobs.insert(j.id, j);
        }
        for id in self.gone_volumes {
            st.volumes.remove(&id);
            st.retired.insert(id);
        }
        for id in self.gone_backups {
            st.backups.remove(&id);
        }
        for v in self.vaults {
            st.vaults.insert(v.id, v);
        }
        for p in self.policies {
            st.policies.insert(p.id, p);
        }
        for id in self.gone_vaults {
            st.vaults.remove(&id);
            st.usage.remove(&id);
        }
        for id in self.gone_policies {
            st.policies.remove(&id);
        }
        Ok(())
    }
}

/// The rows and the bells: what every part of the control plane shares.
pub(crate) struct Rows {
    pub(crate) db: ControlDb,
    state: Mutex<State>,
    /// Rings (counts up) whenever a job changes state.
    changes: tokio::sync::watch::Sender<u64>,
    events: tokio::sync::broadcast::Sender<VaultEvent>,
}

impl Rows {
    pub(crate) fn new(db: ControlDb, state: State) -> Rows {
        Rows {
            db,
            state: Mutex::new(state),
            changes: tokio::sync::watch::channel(0).0,
            events: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// The rows in memory (never held across a call into the engine or a wait).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// A receiver that changes whenever a job changes state.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Rings the job bell.
    pub(crate) fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// A receiver of vault events.
    pub(crate) fn vault_events(&self) -> tokio::sync::broadcast::Receiver<VaultEvent> {
        self.events.subscribe()
    }

    /// Sends a vault event to whoever listens.
    pub(crate) fn emit(&self, e: VaultEvent) {
        let _ = self.events.send(e);
    }
}

pub(crate) fn visible_volume<'a>(
    st: &'a State,
    caller: &Caller,
    id: &Uuid,
) -> Result<&'a VolumeRow> {
    st.volumes
        .get(id)
        .filter(|v| caller.sees(&v.project_id))
        .ok_or_else(|| Error::not_found(format!("volume {id} not found")))
}

pub(crate) fn visible_backup<'a>(
    st: &'a State,
    caller: &Caller,
    id: &Uuid,
) -> Result<&'a BackupRow> {
    st.backups
        .get(id)
        .filter(|b| caller.sees(&b.project_id))
        .ok_or_else(|| Error::not_found(format!("backup {id} not found")))
}

/// A job row with the live counters of its run, if it runs.
pub(crate) fn live(st: &State, j: &JobRow) -> JobRow {
    let mut j = j.clone();
    if let Some(r) = st.running.get(&j.id) {
        j.bytes_done = r.progress.done.load(Ordering::Relaxed);
        j.bytes_total = r.progress.total.load(Ordering::Relaxed).max(j.bytes_total);
        j.bytes_stored = r.progress.stored.load(Ordering::Relaxed);
    }
    j
}
