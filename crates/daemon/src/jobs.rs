//! The job scheduler: queued jobs, the threads that run them, their end, shutdown, and crash
//! recovery. Everything here is synchronous; a job runs on a thread of its own.
//!
//! **Scheduler.** Jobs are queued rows. [`Jobs::dispatch`] starts the oldest queued job whose
//! volume is free while fewer than `concurrency` run; each runs on its own thread, calling the
//! engine. At most one job holds a volume at a time.
//!
//! **Restart.** A job found `running` at start was interrupted: it is marked `failed` ("interrupted
//! ..."), its backup `error`; the engine has already marked the half-written backup `error` and GC
//! reclaims its data. Queued jobs run again. A clean shutdown suspends running jobs back to the
//! queue instead, so they restart from the beginning on the next start.
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockvault_core::{BackupId, BackupRecord, BackupState, VolumeId};
use blockvault_engine::{
    BackupOptions, CancelToken, Cbt, Engine, Error as EngineError, OnMismatch, RestoreOptions,
};
use uuid::Uuid;

use crate::auth::Caller;
use crate::check::parse_uuid;
use crate::config::DedupScope;
use crate::error::{Error, Result};
use crate::hostpath::{HostPaths, Identity};
use crate::metrics::{BackupFigures, Metrics};
use crate::model::*;
use crate::page::{window, PageQuery};
use crate::state::{live, Changes, JobProgress, Rows, Running, State};
use crate::usage::Usage;

const INTERRUPTED: &str =
    "interrupted: the daemon stopped while this job was running; run it again";
const CANCELLED: &str = "cancelled by user";

/// How the scheduler runs jobs.
pub(crate) struct JobsOptions {
    pub(crate) host: HostPaths,
    pub(crate) dedup: DedupScope,
    pub(crate) concurrency: usize,
    pub(crate) max_queued: usize,
}

/// The scheduler and the job calls.
pub struct Jobs {
    rows: Arc<Rows>,
    engine: Arc<Engine>,
    usage: Arc<Usage>,
    metrics: Arc<Metrics>,
    host: HostPaths,
    dedup: DedupScope,
    concurrency: usize,
    max_queued: usize,
    shutting_down: AtomicBool,
}

impl Jobs {
    pub(crate) fn new(
        rows: Arc<Rows>,
        engine: Arc<Engine>,
        usage: Arc<Usage>,
        metrics: Arc<Metrics>,
        opts: JobsOptions,
    ) -> Jobs {
        Jobs {
            rows,
            engine,
            usage,
            metrics,
            host: opts.host,
            dedup: opts.dedup,
            concurrency: opts.concurrency.max(1),
            max_queued: opts.max_queued.max(1),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Refuses a new job when the queue is full.
    pub(crate) fn check_queue(&self, st: &State) -> Result<()> {
        let queued = st
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .count();
        if queued >= self.max_queued {
            return Err(Error::resource_exhausted(format!(
                "{queued} jobs are queued, the most this daemon accepts ([jobs] max_queued); \
                 try again when some have run"
            )));
        }
        Ok(())
    }

    /// Checks, just before a job touches a volume's path, that it still resolves to an allowed
    /// path naming the device or file that was registered.
    fn check_volume_path(
        &self,
        path: &[u8],
        identity: Option<Identity>,
    ) -> Result<PathBuf, EngineError> {
        let p = Path::new(OsStr::from_bytes(path));
        let checked = self
            .host
            .check(p)
            .map_err(|e| EngineError::Internal(format!("the volume's {e}")))?;
        if identity.is_some_and(|i| i != checked.identity) {
            return Err(EngineError::Internal(format!(
                "the volume's path {} names another device or file than when it was registered",
                p.display()
            )));
        }
        Ok(checked.path)
    }

    /// Jobs.Get: the row with live progress.
    pub fn get(&self, caller: &Caller, id: &str) -> Result<JobRow> {
        let id = parse_uuid("job_id", id)?;
        let st = self.rows.lock();
        let j = st
            .jobs
            .get(&id)
            .filter(|j| caller.sees(&j.project_id))
            .ok_or_else(|| Error::not_found(format!("job {id} not found")))?;
        Ok(live(&st, j))
    }

    /// The job's current row, unchecked (for Watch, after the first check).
    pub fn snapshot(&self, id: &Uuid) -> Option<JobRow> {
        let st = self.rows.lock();
        st.jobs.get(id).map(|j| live(&st, j))
    }

    /// Jobs.List, newest first.
    pub fn list(
        &self,
        caller: &Caller,
        all_tenants: bool,
        state: &str,
        page: &PageQuery,
    ) -> Result<(Vec<JobRow>, Option<Uuid>), Error> {
        caller.may_list_all(all_tenants)?;
        let want = if state.is_empty() {
            None
        } else {
            Some(JobState::parse(state).ok_or_else(|| {
                Error::invalid_argument(format!("state: unknown job state {state:?}"))
            })?)
        };
        let st = self.rows.lock();
        let mut v: Vec<&JobRow> = st
            .jobs
            .values()
            .filter(|j| all_tenants || j.project_id == caller.project)
            .filter(|j| want.is_none_or(|s| j.state == s))
            .collect();
        v.sort_by_key(|j| std::cmp::Reverse(j.seq));
        let (range, next) = window(&v, |j| j.id, page, "jobs")?;
        Ok((v[range].iter().map(|j| live(&st, j)).collect(), next))
    }

    /// Jobs.Cancel.
    pub fn cancel(self: &Arc<Self>, caller: &Caller, id: &str) -> Result<JobRow> {
        caller.must_write()?;
        let id = parse_uuid("job_id", id)?;
        let mut st = self.rows.lock();
        let j = st
            .jobs
            .get(&id)
            .filter(|j| caller.sees(&j.project_id))
            .ok_or_else(|| Error::not_found(format!("job {id} not found")))?
            .clone();
        match j.state {
            JobState::Queued => {
                let ch = end_job(&st, j, Err(CANCELLED.into()), JobState::Cancelled);
                ch.commit(&self.rows.db, &mut st)?;
                let row = st.jobs[&id].clone();
                drop(st);
                self.rows.bump();
                tracing::info!(job = %id, "queued job cancelled");
                Ok(row)
            }
            JobState::Running => {
                if let Some(r) = st.running.get(&id) {
                    r.cancel.cancel();
                }
                tracing::info!(job = %id, "cancelling running job");
                Ok(live(&st, &j))
            }
            s => Err(Error::failed_precondition(format!(
                "job {id} already ended ({})",
                s.as_str()
            ))),
        }
    }

    /// Starts queued jobs while there is room. Called after every change to the queue.
    pub fn dispatch(self: &Arc<Self>) {
        if self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let mut started = false;
        let mut st = self.rows.lock();
        while st.running.len() < self.concurrency {
            let busy: HashSet<Uuid> = st
                .running
                .keys()
                .filter_map(|id| st.jobs.get(id).map(|j| j.volume_id))
                .collect();
            let Some(mut job) = st
                .jobs
                .values()
                .filter(|j| j.state == JobState::Queued && !busy.contains(&j.volume_id))
                .min_by_key(|j| j.seq)
                .cloned()
            else {
                break;
            };
            job.state = JobState::Running;
            job.started_at = Some(now());
            let mut ch = Changes::default();
            if let Some(v) = st.volumes.get(&job.volume_id) {
                let mut v = v.clone();
                v.busy_job = Some(job.id);
                v.status = match (job.kind, job.new_volume) {
                    (JobKind::Backup, _) => VolumeStatus::BackingUp,
                    (JobKind::Restore, false) => VolumeStatus::RestoringBackup,
                    (JobKind::Restore, true) => VolumeStatus::Creating,
                };
                ch.volumes.push(v);
            }
            ch.jobs.push(job.clone());
            if let Err(e) = ch.commit(&self.rows.db, &mut st) {
                tracing::error!(job = %job.id, error = %e.message(), "cannot start job");
                break;
            }
            let cancel = CancelToken::default();
            let limit = match job.kind {
                JobKind::Backup => crate::vault::free_bytes_for(&st, &job.backup_id),
                JobKind::Restore => u64::MAX,
            };
            let run = Running {
                cancel: cancel.clone(),
                progress: Arc::new(JobProgress::new(limit, cancel)),
                suspend: Arc::new(AtomicBool::new(false)),
            };
            st.running.insert(job.id, run.clone());
            let me = self.clone();
            let id = job.id;
            let spawned = std::thread::Builder::new()
                .name(format!("bv-job-{}", &id.to_string()[..8]))
                .spawn(move || {
                    // The job's threads (and those it starts) yield the CPU to the API.
                    let nice = me.engine.nice();
                    if nice > 0 {
                        if let Err(e) = blockvault_engine::priority::set_thread_nice(nice) {
                            tracing::warn!(job = %id, error = %e, "cannot lower the job's priority");
                        }
                    }
                    // A panic (a bug, or input no check foresaw) fails only this job, with a
                    // reason; the daemon and every other job go on.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let outcome = me.execute(&job, &run);
                        me.charge_backup(&job, &run, outcome)
                    }))
                    .unwrap_or_else(|panic| {
                        let why = panic_message(&panic);
                        tracing::error!(job = %id, panic = %why, "job panicked");
                        Err(EngineError::Internal(format!("internal error: {why}")))
                    });
                    me.finish(id, outcome);
                    me.dispatch();
                });
            if let Err(e) = spawned {
                tracing::error!(job = %id, error = %e, "cannot start job thread");
                st.running.remove(&id);
                break;
            }
            tracing::info!(job = %id, "job started");
            started = true;
        }
        drop(st);
        if started {
            self.rows.bump();
        }
    }

    /// Runs a job's engine operation (on the job's thread).
    fn execute(&self, job: &JobRow, run: &Running) -> Result<(), EngineError> {
        let backup = BackupId(job.backup_id);
        match job.kind {
            JobKind::Backup => {
                // A suspended earlier attempt left an unfinished record: drop it first.
                match self.engine.get(&backup) {
                    Ok(r) if r.state == BackupState::Available => return Ok(()),
                    Ok(_) => self.engine.delete(&backup)?,
                    Err(_) => {}
                }
                let (row, identity) = {
                    let st = self.rows.lock();
                    let row = st.backups.get(&job.backup_id).cloned();
                    let source = job.source.as_deref().unwrap_or_default();
                    // The source is the volume's path or, with snapshot_id, another volume's.
                    let identity = st
                        .volumes
                        .values()
                        .find(|v| v.path == source && v.project_id == job.project_id)
                        .and_then(|v| v.identity);
                    (row, identity)
                };
                let row = row.ok_or_else(|| EngineError::Internal("backup row vanished".into()))?;
                let volume = VolumeId::new(job.volume_id.to_string())?;
                let source =
                    self.check_volume_path(job.source.as_deref().unwrap_or_default(), identity)?;
                let mut opts = BackupOptions::new(volume, source);
                opts.id = Some(backup);
                opts.incremental = row.parent_id.is_some();
                opts.parent = row.parent_id.map(BackupId);
                opts.encrypt = row.encrypted;
                // Unencrypted volumes dedup within their project unless the node is configured
                // as one global domain (encrypted volumes are keyed by their own data key).
                opts.dedup_domain = match self.dedup {
                    DedupScope::Project => Some(job.project_id.clone()),
                    DedupScope::Global => None,
                };
                // The row goes into the catalog with the record, so a node recovered from the
                // bucket lists this backup again with its Cinder fields (`adopt.rs`).
                opts.annotation = serde_json::to_string(&row).ok();
                if let Some(c) = job.cbt {
                    let extents = self
                        .rows
                        .db
                        .job_extents(&job.id)
                        .map_err(|e| EngineError::Internal(e.to_string()))?
                        .ok_or_else(|| {
                            EngineError::Internal("the job's changed extents are missing".into())
                        })?;
                    opts.cbt = Some(Cbt {
                        extents: extents.into(),
                        sample: f64::from(c.sample_ppm) / 1e6,
                        on_mismatch: if c.full_read_on_mismatch {
                            OnMismatch::FullRead
                        } else {
                            OnMismatch::Fail
                        },
                    });
                }
                opts.progress = run.progress.clone();
                opts.cancel = run.cancel.clone();
                self.engine.backup(opts).map(|_| ())
            }
            JobKind::Restore => {
                let target = job.target.clone().unwrap_or_default();
                let target = if job.new_volume {
                    // A new image under the restore directory, named by the daemon.
                    PathBuf::from(OsStr::from_bytes(&target))
                } else {
                    let identity = self
                        .rows
                        .lock()
                        .volumes
                        .get(&job.volume_id)
                        .and_then(|v| v.identity);
                    self.check_volume_path(&target, identity)?
                };
                let mut opts = RestoreOptions::new(backup, target);
                opts.progress = run.progress.clone();
                opts.cancel = run.cancel.clone();
                self.engine.restore(opts).map(|_| ())
            }
        }
    }

    /// Counts a backup the engine committed in its vault's usage (`usage.rs`) before the job ends,
    /// so an `available` backup is always counted. A backup that does not fit the vault (the
    /// charge counts chunks already stored for others too) is uncounted and failed as over
    /// capacity, unless the vault has auto_expand.
    fn charge_backup(
        &self,
        job: &JobRow,
        run: &Running,
        outcome: Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        if job.kind != JobKind::Backup || outcome.is_err() {
            return outcome;
        }
        let vault = {
            let st = self.rows.lock();
            st.backups
                .get(&job.backup_id)
                .and_then(|b| b.vault_id)
                .and_then(|v| st.vaults.get(&v))
                .map(|v| (v.id, v.auto_expand, crate::vault::capacity(v)))
        };
        let Some((vault, auto_expand, cap)) = vault else {
            return Ok(());
        };
        let undo = |res: Result<(), EngineError>| {
            if let Err(e) = self.usage.uncharge(vault, job.backup_id) {
                tracing::error!(backup = %job.backup_id, error = %e, "undoing a vault charge");
            }
            res
        };
        match self
            .usage
            .charge(vault, job.backup_id, &|| run.cancel.is_cancelled())
        {
            Ok(crate::usage::Charged::Done(used)) => {
                if !auto_expand && used > cap {
                    run.progress.over.store(true, Ordering::SeqCst);
                    let res = undo(Err(EngineError::Cancelled));
                    // The refused backup keeps nothing: without its record and references, GC
                    // reclaims what only it stored.
                    if let Err(e) = self.engine.delete(&BackupId(job.backup_id)) {
                        tracing::error!(backup = %job.backup_id, error = %e,
                                        "dropping a backup refused for capacity");
                    }
                    return res;
                }
                Ok(())
            }
            // Shutdown: keep what is counted; start-up reconciliation settles it.
            Ok(crate::usage::Charged::Stopped) if run.suspend.load(Ordering::SeqCst) => {
                Err(EngineError::Cancelled)
            }
            Ok(crate::usage::Charged::Stopped) => undo(Err(EngineError::Cancelled)),
            Err(e) => undo(Err(EngineError::Internal(format!(
                "counting the backup in vault {vault}: {e}"
            )))),
        }
    }

    /// Records a job's end.
    fn finish(&self, id: Uuid, outcome: Result<(), EngineError>) {
        let mut st = self.rows.lock();
        let Some(run) = st.running.remove(&id) else {
            return;
        };
        let Some(mut job) = st.jobs.get(&id).cloned() else {
            return;
        };
        job.bytes_done = run.progress.done.load(Ordering::Relaxed);
        job.bytes_total = run
            .progress
            .total
            .load(Ordering::Relaxed)
            .max(job.bytes_total);
        job.bytes_stored = run.progress.stored.load(Ordering::Relaxed);
        let cancelled = matches!(outcome, Err(EngineError::Cancelled));
        let ch = if cancelled && run.suspend.load(Ordering::SeqCst) {
            // Shutdown: back to the queue; the next start runs it again from the beginning.
            job.state = JobState::Queued;
            job.started_at = None;
            job.bytes_done = 0;
            job.bytes_stored = 0;
            let mut ch = Changes::default();
            if let Some(v) = st.volumes.get(&job.volume_id) {
                let mut v = v.clone();
                v.busy_job = None;
                // A backup leaves its volume as it was; a restore target stays marked until the
                // re-run finishes it.
                if job.kind == JobKind::Backup {
                    v.status = v.idle_status;
                }
                ch.volumes.push(v);
            }
            ch.jobs.push(job);
            ch
        } else {
            let over = run.progress.over.load(Ordering::SeqCst);
            let (state, res) = match outcome {
                Ok(()) => (JobState::Succeeded, Ok(())),
                Err(EngineError::Cancelled) if over => (
                    JobState::Failed,
                    Err(crate::vault::capacity_message(&st, &job.backup_id)),
                ),
                Err(EngineError::Cancelled) => (JobState::Cancelled, Err(CANCELLED.to_string())),
                Err(e) => (JobState::Failed, Err(e.to_string())),
            };
            let kind = job.kind;
            let restored_new = kind == JobKind::Restore && job.new_volume && res.is_ok();
            let mut ch = end_job(&st, job, res, state);
            if restored_new {
                for v in &mut ch.volumes {
                    match self.host.check(Path::new(OsStr::from_bytes(&v.path))) {
                        Ok(c) => v.identity = Some(c.identity),
                        Err(e) => tracing::warn!(volume = %v.id, error = %e, "restored image"),
                    }
                }
            }
            if state == JobState::Succeeded {
                if let Some(b) = ch.backups.first_mut() {
                    if let Ok(rec) = self.engine.get(&BackupId(b.id)) {
                        if b.status == BackupStatus::Available
                            && rec.state == BackupState::Available
                        {
                            fill_from_record(b, &rec);
                        }
                    }
                }
            }
            if kind == JobKind::Backup {
                if let Some(vid) = ch.backups.first().and_then(|b| b.vault_id) {
                    ch.vaults = crate::vault::after_usage_change(&self.rows, &st, vid);
                }
            }
            ch
        };
        if let Err(e) = ch.commit(&self.rows.db, &mut st) {
            tracing::error!(job = %id, error = %e.message(), "cannot record the end of a job");
        }
        let j = &st.jobs[&id];
        tracing::info!(job = %id, state = j.state.as_str(), reason = j.fail_reason.as_deref().unwrap_or(""), "job ended");
        let ended = j.state.is_final().then(|| j.clone());
        drop(st);
        self.rows.bump();
        if let Some(j) = ended {
            self.count(&j, &run.progress);
        }
    }

    /// Counts an ended job in the metrics.
    fn count(&self, job: &JobRow, p: &JobProgress) {
        let seconds = match (job.started_at, job.finished_at) {
            (Some(s), Some(f)) => (f - s).as_seconds_f64().max(0.0),
            _ => 0.0,
        };
        self.metrics
            .job_finished(job.kind.as_str(), job.state.as_str(), seconds);
        match job.kind {
            JobKind::Backup => self.metrics.backup_done(BackupFigures {
                read: p.done.load(Ordering::Relaxed),
                stored: p.stored.load(Ordering::Relaxed),
                new_chunks: p.new_chunks.load(Ordering::Relaxed),
                deduplicated_chunks: p.found_chunks.load(Ordering::Relaxed),
                deduplicated: p.found_bytes.load(Ordering::Relaxed),
            }),
            JobKind::Restore => self.metrics.restore_done(p.done.load(Ordering::Relaxed)),
        }
    }

    /// First step of shutdown: start no more jobs, suspend running ones (they go back to the
    /// queue), and end Watch streams.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        {
            let st = self.rows.lock();
            for r in st.running.values() {
                r.suspend.store(true, Ordering::SeqCst);
                r.cancel.cancel();
            }
        }
        self.rows.bump();
    }

    /// Last step of shutdown: wait (up to `wait`) for suspended jobs to stop, then flush both
    /// databases.
    pub fn finish_shutdown(&self, wait: Duration) {
        self.begin_shutdown();
        let deadline = Instant::now() + wait;
        while !self.rows.lock().running.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = self.rows.db.flush() {
            tracing::warn!(error = %e, "flushing the control database");
        }
        if let Err(e) = self.engine.flush() {
            tracing::warn!(error = %e, "flushing the store index");
        }
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Forgets finished jobs that ended more than `days` days ago (0: never). Returns how many.
    pub fn prune(&self, days: u32) -> usize {
        if days == 0 {
            return 0;
        }
        self.prune_before(now() - time::Duration::days(i64::from(days)))
    }

    /// Forgets finished jobs that ended before `cut`. Returns how many.
    pub fn prune_before(&self, cut: time::OffsetDateTime) -> usize {
        let mut st = self.rows.lock();
        let old: Vec<Uuid> = st
            .jobs
            .values()
            .filter(|j| j.state.is_final() && j.finished_at.is_some_and(|t| t < cut))
            .map(|j| j.id)
            .collect();
        if old.is_empty() {
            return 0;
        }
        let mut t = self.rows.db.txn();
        for id in &old {
            t.delete_job(id);
        }
        if let Err(e) = t.commit() {
            tracing::warn!(error = %e, "pruning finished jobs");
            return 0;
        }
        for id in &old {
            st.jobs.remove(id);
        }
        tracing::info!(jobs = old.len(), %cut, "forgot finished jobs");
        old.len()
    }

    /// Persists live progress of running jobs (not synced; called periodically).
    pub fn save_progress(&self) {
        let st = self.rows.lock();
        let mut t = self.rows.db.txn();
        for id in st.running.keys() {
            if let Some(j) = st.jobs.get(id) {
                t.job(&live(&st, j));
            }
        }
        if let Err(e) = t.commit_lazy() {
            tracing::warn!(error = %e, "saving job progress");
        }
    }
}

/// Copies the engine's figures into a finished backup's row.
fn fill_from_record(b: &mut BackupRow, rec: &BackupRecord) {
    b.size = rec.size;
    b.object_count = rec.object_count;
    b.stored_bytes = rec.stored_bytes;
    b.data_timestamp = Some(rec.data_timestamp);
    b.is_incremental = rec.is_incremental;
    b.encrypted = rec.encrypted;
    b.encryption_key_id = rec.encryption_key_id;
    b.cbt = rec.cbt.clone();
}

/// The changes that end `job` in `state` (`res` carries the failure reason).
fn end_job(st: &State, mut job: JobRow, res: Result<(), String>, state: JobState) -> Changes {
    let t = now();
    job.state = state;
    job.finished_at = Some(t);
    job.fail_reason = res.as_ref().err().cloned();
    let mut ch = Changes::default();
    if let Some(mut b) = st.backups.get(&job.backup_id).cloned() {
        b.updated_at = t;
        match job.kind {
            JobKind::Backup => match &res {
                Ok(()) => b.status = BackupStatus::Available,
                Err(reason) => {
                    b.status = BackupStatus::Error;
                    b.fail_reason = Some(reason.clone());
                }
            },
            JobKind::Restore => {
                if b.status == BackupStatus::Restoring {
                    b.status = BackupStatus::Available;
                }
            }
        }
        ch.backups.push(b);
    }
    if let Some(mut v) = st.volumes.get(&job.volume_id).cloned() {
        if v.busy_job.is_none() || v.busy_job == Some(job.id) {
            v.busy_job = None;
            if job.kind == JobKind::Restore {
                // A restore that never started left an existing target untouched.
                let ran = job.started_at.is_some();
                v.idle_status = match (&res, job.new_volume, ran) {
                    (Ok(()), _, _) => VolumeStatus::Available,
                    (Err(_), true, _) => VolumeStatus::Error,
                    (Err(_), false, true) => VolumeStatus::ErrorRestoring,
                    (Err(_), false, false) => v.idle_status,
                };
            }
            v.status = v.idle_status;
            v.updated_at = t;
            ch.volumes.push(v);
        }
    }
    if job.cbt.is_some() {
        ch.gone_job_extents.push(job.id);
    }
    ch.jobs.push(job);
    ch
}

/// Start-up recovery after an unclean stop (see the module docs).
pub(crate) fn recover(db: &ControlDb, st: &mut State) -> Result<()> {
    let interrupted: Vec<JobRow> = st
        .jobs
        .values()
        .filter(|j| j.state == JobState::Running)
        .cloned()
        .collect();
    for j in interrupted {
        tracing::warn!(job = %j.id, kind = j.kind.as_str(), "job was interrupted by a restart");
        let ch = end_job(st, j, Err(INTERRUPTED.into()), JobState::Failed);
        ch.commit(db, st)?;
    }
    let queued: HashSet<Uuid> = st
        .jobs
        .values()
        .filter(|j| j.state == JobState::Queued)
        .map(|j| j.backup_id)
        .collect();
    let mut ch = Changes::default();
    for v in st.volumes.values() {
        if v.busy_job.is_some() {
            let mut v = v.clone();
            v.busy_job = None;
            v.status = v.idle_status;
            ch.volumes.push(v);
        }
    }
    for b in st.backups.values() {
        let orphan = !queued.contains(&b.id);
        let fix = match b.status {
            BackupStatus::Restoring if orphan => Some((BackupStatus::Available, None)),
            BackupStatus::Creating if orphan => {
                Some((BackupStatus::Error, Some(INTERRUPTED.to_string())))
            }
            _ => None,
        };
        if let Some((status, reason)) = fix {
            let mut b = b.clone();
            b.status = status;
            if reason.is_some() {
                b.fail_reason = reason;
            }
            ch.backups.push(b);
        }
    }
    ch.commit(db, st)
}

/// The text of a caught panic.
pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}
