//! The control plane: the rows, the ledger, the scheduler and the settings, opened together,
//! and the calls of each resource over them. Everything here is synchronous; the front ends call
//! it through `spawn_blocking`.
//!
//! Each resource's calls live in a module of their own and take only what they need:
//! [`Volumes`], [`Backups`] and [`Jobs`] here; vaults (`vault.rs`) and policies (`policy.rs`).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockvault_engine::{Engine, Error as EngineError};
use blockvault_store::GcReport;
use uuid::Uuid;

use crate::backups::Backups;
use crate::config::DedupScope;
use crate::hostpath::HostPaths;
use crate::jobs::{recover, Jobs, JobsOptions};
use crate::metrics::Metrics;
use crate::model::*;
use crate::policy::Policies;
use crate::state::{Rows, State};
use crate::usage::Usage;
use crate::vault::Vaults;
use crate::volumes::Volumes;

pub use crate::backups::{BackupPage, CreateBackup, ListQuery};

/// Settings of the control plane (from the daemon's config).
#[derive(Clone, Debug)]
pub struct ControlOptions {
    /// Jobs that may run at once.
    pub concurrency: usize,
    /// Where restores to new volumes create their images.
    pub restore_dir: PathBuf,
    /// Which host paths may be registered.
    pub host: HostPaths,
    /// Jobs that may wait in the queue.
    pub max_queued: usize,
    /// Resources one vault may bind.
    pub max_vault_resources: usize,
    /// Dedup domain of unencrypted volumes.
    pub dedup: DedupScope,
    /// Key of the MACs on exported records (derived from the master key).
    pub record_key: Option<zeroize::Zeroizing<[u8; 32]>>,
    /// Retention of locked vaults' backups in a bucket with S3 Object Lock.
    pub object_lock: crate::objectlock::ObjectLockOptions,
}

impl ControlOptions {
    /// Options for tests and embedding: `restore_dir` is the only allowed volume directory.
    pub fn new(restore_dir: PathBuf) -> ControlOptions {
        ControlOptions {
            concurrency: 2,
            host: HostPaths::new(&[], &restore_dir, &[]),
            restore_dir,
            max_queued: 1000,
            max_vault_resources: 256,
            dedup: DedupScope::Project,
            record_key: None,
            object_lock: Default::default(),
        }
    }
}

/// The control plane.
pub struct Control {
    engine: Arc<Engine>,
    pub(crate) rows: Arc<Rows>,
    pub(crate) usage: Arc<Usage>,
    jobs: Arc<Jobs>,
    metrics: Arc<Metrics>,
    restore_dir: PathBuf,
    host: HostPaths,
    pub(crate) max_vault_resources: usize,
    pub(crate) record_key: Option<zeroize::Zeroizing<[u8; 32]>>,
    lock_keeper: Arc<crate::objectlock::LockKeeper>,
}

impl Control {
    /// Opens the control database, recovers from an unclean stop, and returns the control plane.
    /// Call [`Jobs::dispatch`] to start queued jobs.
    pub fn open(
        engine: Arc<Engine>,
        dir: &Path,
        opts: ControlOptions,
    ) -> Result<Arc<Control>, String> {
        let restore_dir = opts.restore_dir.clone();
        std::fs::create_dir_all(&restore_dir)
            .map_err(|e| format!("restore directory {}: {e}", restore_dir.display()))?;
        let db = ControlDb::open(dir).map_err(|e| e.to_string())?;
        // RocksDB fsyncs inside its directory, not a new directory's entry in the parent.
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        std::fs::File::open(parent.unwrap_or(Path::new(".")))
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("control database {}: {e}", dir.display()))?;
        let loaded = db.load().map_err(|e| e.to_string())?;
        let mut st = State {
            next_seq: loaded.jobs.iter().map(|j| j.seq + 1).max().unwrap_or(0),
            volumes: loaded.volumes.into_iter().map(|v| (v.id, v)).collect(),
            backups: loaded.backups.into_iter().map(|b| (b.id, b)).collect(),
            jobs: loaded.jobs.into_iter().map(|j| (j.id, j)).collect(),
            vaults: loaded.vaults.into_iter().map(|v| (v.id, v)).collect(),
            policies: loaded.policies.into_iter().map(|p| (p.id, p)).collect(),
            usage: db.vault_usage().map_err(|e| e.to_string())?,
            retired: loaded.retired.into_iter().collect(),
            running: HashMap::new(),
        };
        recover(&db, &mut st).map_err(|e| e.message().to_string())?;
        let deleting: Vec<Uuid> = st
            .backups
            .values()
            .filter(|b| b.status == BackupStatus::Deleting)
            .map(|b| b.id)
            .collect();
        let rows = Arc::new(Rows::new(db, st));
        let usage = Arc::new(Usage::new(rows.clone(), engine.clone()));
        let metrics = Arc::new(Metrics::new());
        let jobs = Arc::new(Jobs::new(
            rows.clone(),
            engine.clone(),
            usage.clone(),
            metrics.clone(),
            JobsOptions {
                host: opts.host.clone(),
                dedup: opts.dedup,
                concurrency: opts.concurrency,
                max_queued: opts.max_queued,
            },
        ));
        let control = Arc::new(Control {
            usage,
            jobs,
            metrics,
            engine,
            rows,
            restore_dir,
            host: opts.host,
            max_vault_resources: opts.max_vault_resources.max(1),
            record_key: opts.record_key,
            lock_keeper: Arc::new(crate::objectlock::LockKeeper::new(opts.object_lock)),
        });
        control
            .usage
            .reconcile()
            .map_err(|e| format!("reconciling vault usage: {e}"))?;
        for id in deleting {
            tracing::info!(backup = %id, "finishing a delete interrupted by a restart");
            control.backups().finish_delete(id);
        }
        Ok(control)
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The daemon's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs GC on the store and counts the run in the metrics. Blocking.
    pub fn gc(&self) -> Result<GcReport, EngineError> {
        let t0 = std::time::Instant::now();
        let r = self.engine.gc();
        let reclaimed = r.as_ref().ok().map(GcReport::reclaimed_bytes);
        self.metrics.gc_done(reclaimed, t0.elapsed().as_secs_f64());
        r
    }

    /// What a vault lock means in the store, and the bell of the job that renews it.
    pub fn lock_keeper(&self) -> &Arc<crate::objectlock::LockKeeper> {
        &self.lock_keeper
    }

    /// A receiver that changes whenever a job changes state.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rows.subscribe()
    }

    /// Volumes: register, list, show, update, unregister.
    pub fn volumes(&self) -> Volumes<'_> {
        Volumes::new(
            &self.rows,
            &self.engine,
            &self.host,
            self.max_vault_resources,
        )
    }

    /// Backups: create, list, show, update, delete, restore, export and import.
    pub fn backups(&self) -> Backups<'_> {
        Backups::new(
            &self.rows,
            &self.engine,
            &self.usage,
            &self.jobs,
            &self.restore_dir,
        )
    }

    /// Jobs and the scheduler.
    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// Vaults: create, list, show, update, delete, bind and unbind resources, watch events.
    pub fn vaults(&self) -> Vaults<'_> {
        Vaults::new(&self.rows, self.max_vault_resources, &self.lock_keeper)
    }

    /// Backup policies: create, list, show, update, delete.
    pub fn policies(&self) -> Policies<'_> {
        Policies::new(&self.rows)
    }
}
