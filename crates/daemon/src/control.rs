//! The control plane's state machine: volumes, backups and jobs, their rules, the job scheduler,
//! and crash recovery. Everything here is synchronous; the gRPC layer calls it through
//! `spawn_blocking`.
//!
//! **State.** All rows live in memory behind one mutex and in the control database. A change is
//! computed under the mutex, written to the database in one synced batch, and only then applied in
//! memory, so what callers see is always durable.
//!
//! **Scheduler.** Jobs are queued rows. [`Control::dispatch`] starts the oldest queued job whose
//! volume is free while fewer than `concurrency` run; each runs on its own thread, calling the
//! engine. At most one job holds a volume at a time.
//!
//! **Restart.** A job found `running` at start was interrupted: it is marked `failed` ("interrupted
//! ..."), its backup `error`; the engine has already marked the half-written backup `error` and GC
//! reclaims its data. Queued jobs run again. A clean shutdown suspends running jobs back to the
//! queue instead, so they restart from the beginning on the next start.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockvault_core::{BackupId, BackupRecord, BackupState, VolumeId};
use blockvault_engine::{
    BackupOptions, CancelToken, Engine, Error as EngineError, Progress, RestoreOptions,
};
use parking_lot::Mutex;
use tonic::Status;
use uuid::Uuid;

use crate::auth::Caller;
use crate::config::DedupScope;
use crate::hostpath::{HostPaths, Identity};
use crate::model::*;
use crate::page::{window, PageQuery};

/// Longest name or description (characters).
pub const MAX_NAME: usize = 255;
/// Most metadata entries on a backup.
pub const MAX_METADATA: usize = 64;
/// Longest metadata key or value (characters).
pub const MAX_METADATA_ITEM: usize = 255;

const INTERRUPTED: &str =
    "interrupted: the daemon stopped while this job was running; run it again";
const CANCELLED: &str = "cancelled by user";

/// Live progress of a running job.
pub struct JobProgress {
    total: AtomicU64,
    done: AtomicU64,
    stored: AtomicU64,
    /// Bytes the job may add to the store (its vault's free capacity); beyond it the job is
    /// cancelled and `over` set.
    limit: u64,
    over: AtomicBool,
    cancel: CancelToken,
}

impl JobProgress {
    fn new(limit: u64, cancel: CancelToken) -> JobProgress {
        JobProgress {
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stored: AtomicU64::new(0),
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
}

#[derive(Clone)]
struct Running {
    cancel: CancelToken,
    progress: Arc<JobProgress>,
    /// Cancelled by shutdown: go back to the queue rather than end.
    suspend: Arc<AtomicBool>,
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
    retired: HashSet<Uuid>,
    running: HashMap<Uuid, Running>,
    next_seq: u64,
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
    fn volume(v: VolumeRow) -> Changes {
        Changes {
            volumes: vec![v],
            ..Default::default()
        }
    }

    /// One backup row.
    fn backup(b: BackupRow) -> Changes {
        Changes {
            backups: vec![b],
            ..Default::default()
        }
    }

    /// Writes durably, then applies in memory.
    pub(crate) fn commit(self, db: &ControlDb, st: &mut State) -> Result<(), Status> {
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
        t.commit().map_err(internal)?;
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

/// What Backups.Create asks for.
#[derive(Clone, Debug, Default)]
pub struct CreateBackup {
    pub volume_id: String,
    pub name: String,
    pub description: String,
    pub container: String,
    pub incremental: bool,
    pub force: bool,
    pub metadata: BTreeMap<String, String>,
    pub availability_zone: String,
    pub snapshot_id: String,
    /// Creation time to record (the policy scheduler's clock); now when unset.
    pub at: Option<time::OffsetDateTime>,
}

/// Backups.List parameters.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub sort: String,
    pub page: PageQuery,
    pub all_tenants: bool,
    pub filters: BTreeMap<String, String>,
}

/// A page of backups.
pub struct BackupPage {
    pub backups: Vec<BackupRow>,
    /// Ids of backups other backups depend on.
    pub parents: HashSet<Uuid>,
    /// Matching backups before paging.
    pub count: u64,
    /// Marker of the next page, if rows remain.
    pub next: Option<Uuid>,
}

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
    pub(crate) db: ControlDb,
    pub(crate) state: Mutex<State>,
    pub(crate) events: tokio::sync::broadcast::Sender<crate::vault::VaultEvent>,
    /// Serialises the usage ledger's read-modify-write batches (`usage.rs`); taken before
    /// `state`, never while holding it.
    pub(crate) ledger: Mutex<()>,
    concurrency: usize,
    restore_dir: PathBuf,
    host: HostPaths,
    max_queued: usize,
    pub(crate) max_vault_resources: usize,
    dedup: DedupScope,
    pub(crate) record_key: Option<zeroize::Zeroizing<[u8; 32]>>,
    lock_keeper: Arc<crate::objectlock::LockKeeper>,
    changes: tokio::sync::watch::Sender<u64>,
    shutting_down: AtomicBool,
}

impl Control {
    /// Opens the control database, recovers from an unclean stop, and returns the control plane.
    /// Call [`Control::dispatch`] to start queued jobs.
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
        let control = Arc::new(Control {
            engine,
            db,
            state: Mutex::new(st),
            concurrency: opts.concurrency.max(1),
            restore_dir,
            // Resolved now that the restore directory exists.
            host: opts.host,
            max_queued: opts.max_queued.max(1),
            max_vault_resources: opts.max_vault_resources.max(1),
            dedup: opts.dedup,
            record_key: opts.record_key,
            lock_keeper: Arc::new(crate::objectlock::LockKeeper::new(opts.object_lock)),
            changes: tokio::sync::watch::channel(0).0,
            events: tokio::sync::broadcast::channel(256).0,
            ledger: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
        });
        control
            .reconcile_usage()
            .map_err(|e| format!("reconciling vault usage: {e}"))?;
        for id in deleting {
            tracing::info!(backup = %id, "finishing a delete interrupted by a restart");
            control.finish_delete(id);
        }
        Ok(control)
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// What a vault lock means in the store, and the bell of the job that renews it.
    pub fn lock_keeper(&self) -> &Arc<crate::objectlock::LockKeeper> {
        &self.lock_keeper
    }

    /// A receiver that changes whenever a job changes state.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    // ------------------------------------------------------------------------------- volumes

    /// Volumes.Register.
    #[allow(clippy::too_many_arguments)]
    pub fn register_volume(
        &self,
        caller: &Caller,
        id: &str,
        name: &str,
        path: &[u8],
        encrypted: bool,
        tags: Vec<(String, String)>,
        server_id: &str,
    ) -> Result<VolumeRow, Status> {
        caller.must_write()?;
        let id = if id.is_empty() {
            Uuid::new_v4()
        } else {
            parse_uuid("id", id)?
        };
        check_len("name", name)?;
        check_len("server_id", server_id)?;
        let tags = crate::vault::check_tags("tags", tags)?;
        let path_os = check_path(path)?;
        let checked = self
            .host
            .check(path_os)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let size = checked.size;
        let identity = checked.identity;
        let path = checked.path.as_os_str().as_bytes().to_vec();
        {
            let st = self.state.lock();
            self.check_new_volume(&st, caller, id, identity)?;
        }
        if self
            .engine
            .encryption_key_id(&VolumeId::new(id.to_string()).map_err(|e| internal(e.to_string()))?)
            .map_err(engine_status)?
            .is_some()
        {
            return Err(Status::already_exists(format!(
                "id: {id} was used before and cannot be used again"
            )));
        }
        let encryption_key_id = if encrypted {
            let vid = VolumeId::new(id.to_string()).map_err(|e| internal(e.to_string()))?;
            Some(self.engine.ensure_volume_key(&vid).map_err(engine_status)?)
        } else {
            None
        };
        let t = now();
        let row = VolumeRow {
            format: ROW_VERSION,
            id,
            name: name.to_string(),
            path: path.to_vec(),
            size,
            status: VolumeStatus::Available,
            idle_status: VolumeStatus::Available,
            encrypted,
            encryption_key_id,
            project_id: caller.project.clone(),
            user_id: caller.user.clone(),
            created_at: t,
            updated_at: t,
            busy_job: None,
            tags,
            server_id: server_id.to_string(),
            identity: Some(identity),
        };
        let mut st = self.state.lock();
        self.check_new_volume(&st, caller, id, identity)?;
        let mut ch = Changes::volume(row.clone());
        ch.vaults = crate::vault::auto_bind(&st, &row, self.max_vault_resources);
        ch.commit(&self.db, &mut st)?;
        tracing::info!(volume = %id, path = %path_os.to_string_lossy(), size, encrypted, "volume registered");
        Ok(row)
    }

    /// Refuses an id that is or was in use, and a device or file that is registered already
    /// (in any project; the answer names no other project's volume).
    fn check_new_volume(
        &self,
        st: &State,
        caller: &Caller,
        id: Uuid,
        identity: Identity,
    ) -> Result<(), Status> {
        if st.volumes.contains_key(&id)
            || st.retired.contains(&id)
            || st.backups.values().any(|b| b.volume_id == id)
        {
            return Err(Status::already_exists(format!(
                "id: {id} was used before and cannot be used again"
            )));
        }
        if let Some(v) = st.volumes.values().find(|v| v.identity == Some(identity)) {
            return Err(Status::already_exists(if caller.sees(&v.project_id) {
                format!("path: already registered as volume {}", v.id)
            } else {
                "path: this device or file is already registered as a volume".to_string()
            }));
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

    /// Refuses a new job when the queue is full.
    fn check_queue(&self, st: &State) -> Result<(), Status> {
        let queued = st
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .count();
        if queued >= self.max_queued {
            return Err(Status::resource_exhausted(format!(
                "{queued} jobs are queued, the most this daemon accepts ([jobs] max_queued); \
                 try again when some have run"
            )));
        }
        Ok(())
    }

    /// Volumes.List, oldest first.
    pub fn list_volumes(
        &self,
        caller: &Caller,
        all_tenants: bool,
        page: &PageQuery,
    ) -> Result<(Vec<VolumeRow>, Option<Uuid>), Status> {
        caller.may_list_all(all_tenants)?;
        let st = self.state.lock();
        let mut v: Vec<&VolumeRow> = st
            .volumes
            .values()
            .filter(|v| all_tenants || v.project_id == caller.project)
            .collect();
        v.sort_by_key(|v| (v.created_at, v.id));
        let (range, next) = window(&v, |v| v.id, page, "volumes")?;
        Ok((v[range].iter().map(|v| (*v).clone()).collect(), next))
    }

    /// Volumes.Get.
    pub fn get_volume(&self, caller: &Caller, id: &str) -> Result<VolumeRow, Status> {
        let id = parse_uuid("volume_id", id)?;
        let st = self.state.lock();
        visible_volume(&st, caller, &id).cloned()
    }

    /// Volumes.Update.
    pub fn update_volume(
        &self,
        caller: &Caller,
        id: &str,
        name: Option<&str>,
        status: Option<&str>,
        tags: Option<Vec<(String, String)>>,
        server_id: Option<&str>,
    ) -> Result<VolumeRow, Status> {
        caller.must_write()?;
        let id = parse_uuid("volume_id", id)?;
        let tags = tags
            .map(|t| crate::vault::check_tags("tags", t))
            .transpose()?;
        if let Some(s) = server_id {
            check_len("server_id", s)?;
        }
        let mut st = self.state.lock();
        let mut v = visible_volume(&st, caller, &id)?.clone();
        if let Some(t) = tags {
            v.tags = t;
        }
        if let Some(s) = server_id {
            v.server_id = s.to_string();
        }
        if let Some(n) = name {
            check_len("name", n)?;
            v.name = n.to_string();
        }
        if let Some(s) = status {
            let new = match s {
                "available" => VolumeStatus::Available,
                "in-use" => VolumeStatus::InUse,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "status: {other:?} is not one of available, in-use"
                    )))
                }
            };
            if v.busy_job.is_some() || v.status == VolumeStatus::Creating {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is {}; its status can change when the job ends",
                    v.status.as_str()
                )));
            }
            v.status = new;
            v.idle_status = new;
        }
        v.updated_at = now();
        let mut ch = Changes::volume(v.clone());
        ch.vaults = crate::vault::auto_bind(&st, &v, self.max_vault_resources);
        ch.commit(&self.db, &mut st)?;
        Ok(v)
    }

    /// Volumes.Unregister.
    pub fn unregister_volume(&self, caller: &Caller, id: &str) -> Result<(), Status> {
        caller.must_write()?;
        let id = parse_uuid("volume_id", id)?;
        let mut st = self.state.lock();
        visible_volume(&st, caller, &id)?;
        if let Some(j) = st
            .jobs
            .values()
            .find(|j| j.volume_id == id && !j.state.is_final())
        {
            return Err(Status::failed_precondition(format!(
                "volume {id} is used by {} job {}",
                j.state.as_str(),
                j.id
            )));
        }
        Changes {
            gone_volumes: vec![id],
            ..Default::default()
        }
        .commit(&self.db, &mut st)?;
        Ok(())
    }

    // ------------------------------------------------------------------------------- backups

    /// Backups.Create: records the backup (`creating`) and queues its job.
    pub fn create_backup(
        self: &Arc<Self>,
        caller: &Caller,
        req: CreateBackup,
    ) -> Result<(BackupRow, JobRow), Status> {
        caller.must_write()?;
        let volume_id = parse_uuid("volume_id", &req.volume_id)?;
        check_len("name", &req.name)?;
        check_len("description", &req.description)?;
        check_len("container", &req.container)?;
        check_len("availability_zone", &req.availability_zone)?;
        check_metadata(&req.metadata)?;
        let snapshot_id = if req.snapshot_id.is_empty() {
            None
        } else {
            Some(parse_uuid("snapshot_id", &req.snapshot_id)?)
        };
        let mut st = self.state.lock();
        self.check_queue(&st)?;
        let vol = visible_volume(&st, caller, &volume_id)?.clone();
        let vault_id = crate::vault::vault_for_backup(&st, &vol, &req.container)?;
        match vol.idle_status {
            VolumeStatus::Available => {}
            VolumeStatus::InUse if req.force => {}
            VolumeStatus::InUse => {
                return Err(Status::failed_precondition(format!(
                    "volume {volume_id} is in-use; pass force to back it up anyway"
                )))
            }
            other => {
                return Err(Status::failed_precondition(format!(
                    "volume {volume_id} is {}; it must be available (or in-use with force)",
                    other.as_str()
                )))
            }
        }
        let source = match snapshot_id {
            None => vol.path.clone(),
            Some(s) => {
                let snap = st
                    .volumes
                    .get(&s)
                    .filter(|v| v.project_id == vol.project_id)
                    .ok_or_else(|| {
                        Status::not_found(format!("snapshot {s} is not a registered volume"))
                    })?;
                snap.path.clone()
            }
        };
        let parent = if req.incremental {
            let p = st
                .backups
                .values()
                .filter(|b| {
                    b.volume_id == volume_id
                        && matches!(b.status, BackupStatus::Available | BackupStatus::Restoring)
                })
                .max_by_key(|b| (b.data_timestamp, b.created_at, b.id))
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "volume {volume_id} has no available backup to base an incremental on; \
                         create a full backup first"
                    ))
                })?;
            Some(p.id)
        } else {
            None
        };
        let t = req.at.unwrap_or_else(now);
        let backup_id = Uuid::new_v4();
        let job_id = Uuid::new_v4();
        let backup = BackupRow {
            format: ROW_VERSION,
            id: backup_id,
            project_id: vol.project_id.clone(),
            user_id: caller.user.clone(),
            name: req.name,
            description: req.description,
            container: req.container,
            metadata: req.metadata,
            availability_zone: req.availability_zone,
            snapshot_id,
            volume_id,
            status: BackupStatus::Creating,
            fail_reason: None,
            is_incremental: parent.is_some(),
            parent_id: parent,
            size: vol.size,
            object_count: 0,
            stored_bytes: 0,
            data_timestamp: None,
            created_at: t,
            updated_at: t,
            encrypted: vol.encrypted,
            encryption_key_id: vol.encryption_key_id,
            job_id: Some(job_id),
            vault_id,
        };
        let job = JobRow {
            format: ROW_VERSION,
            id: job_id,
            seq: st.next_seq,
            kind: JobKind::Backup,
            state: JobState::Queued,
            project_id: vol.project_id.clone(),
            user_id: caller.user.clone(),
            backup_id,
            volume_id,
            source: Some(source),
            target: None,
            new_volume: false,
            bytes_done: 0,
            bytes_total: vol.size,
            bytes_stored: 0,
            created_at: t,
            started_at: None,
            finished_at: None,
            fail_reason: None,
        };
        Changes {
            backups: vec![backup.clone()],
            jobs: vec![job.clone()],
            ..Default::default()
        }
        .commit(&self.db, &mut st)?;
        st.next_seq += 1;
        drop(st);
        tracing::info!(backup = %backup_id, job = %job_id, volume = %volume_id,
                       incremental = backup.is_incremental, "backup queued");
        self.dispatch();
        Ok((backup, job))
    }

    /// Backups.Get.
    pub fn get_backup(&self, caller: &Caller, id: &str) -> Result<(BackupRow, bool), Status> {
        let id = parse_uuid("backup_id", id)?;
        let st = self.state.lock();
        let b = visible_backup(&st, caller, &id)?.clone();
        let dependent = st.backups.values().any(|o| o.parent_id == Some(id));
        Ok((b, dependent))
    }

    /// Backups.List.
    pub fn list_backups(&self, caller: &Caller, q: &ListQuery) -> Result<BackupPage, Status> {
        caller.may_list_all(q.all_tenants)?;
        let sort = parse_sort(&q.sort)?;
        let mut status = None;
        let mut volume = None;
        let mut name = None;
        for (k, v) in &q.filters {
            match k.as_str() {
                "status" => {
                    status = Some(BackupStatus::parse(v).ok_or_else(|| {
                        Status::invalid_argument(format!("filter status: unknown status {v:?}"))
                    })?)
                }
                "volume_id" => volume = Some(v.clone()),
                "name" => name = Some(v.clone()),
                other => {
                    return Err(Status::invalid_argument(format!(
                        "unknown filter {other:?}; filters are status, volume_id, name"
                    )))
                }
            }
        }
        let st = self.state.lock();
        let mut rows: Vec<&BackupRow> = st
            .backups
            .values()
            .filter(|b| q.all_tenants || b.project_id == caller.project)
            .filter(|b| status.is_none_or(|s| b.status == s))
            .filter(|b| {
                volume
                    .as_ref()
                    .is_none_or(|v| b.volume_id.to_string() == *v)
            })
            .filter(|b| name.as_ref().is_none_or(|n| b.name == *n))
            .collect();
        rows.sort_by(|a, b| {
            for (key, desc) in &sort {
                let o = compare(a, b, *key);
                let o = if *desc { o.reverse() } else { o };
                if o.is_ne() {
                    return o;
                }
            }
            a.id.cmp(&b.id)
        });
        let count = rows.len() as u64;
        let (range, next) = window(&rows, |b| b.id, &q.page, "backups")?;
        let parents = st.backups.values().filter_map(|b| b.parent_id).collect();
        Ok(BackupPage {
            backups: rows[range].iter().map(|b| (*b).clone()).collect(),
            parents,
            count,
            next,
        })
    }

    /// Backups.Update.
    pub fn update_backup(
        &self,
        caller: &Caller,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<(BackupRow, bool), Status> {
        caller.must_write()?;
        let id = parse_uuid("backup_id", id)?;
        if let Some(n) = name {
            check_len("name", n)?;
        }
        if let Some(d) = description {
            check_len("description", d)?;
        }
        if let Some(m) = &metadata {
            check_metadata(m)?;
        }
        let mut st = self.state.lock();
        let mut b = visible_backup(&st, caller, &id)?.clone();
        if let Some(n) = name {
            b.name = n.to_string();
        }
        if let Some(d) = description {
            b.description = d.to_string();
        }
        if let Some(m) = metadata {
            b.metadata = m;
        }
        b.updated_at = now();
        Changes::backup(b.clone()).commit(&self.db, &mut st)?;
        let dependent = st.backups.values().any(|o| o.parent_id == Some(id));
        drop(st);
        if b.status == BackupStatus::Available {
            // The catalog's copy of the row follows; the control database stays the authority
            // while the node lives, so a failure here is logged, not returned.
            let text = serde_json::to_string(&b).expect("row serializes");
            if let Err(e) = self.engine.annotate(&BackupId(id), &text) {
                tracing::warn!(backup = %id, error = %e, "could not update the catalog's copy of the row");
            }
        }
        Ok((b, dependent))
    }

    /// Backups.Delete: `deleting` while references are dropped, then gone (or `error_deleting`).
    pub fn delete_backup(&self, caller: &Caller, id: &str) -> Result<(), Status> {
        caller.must_write()?;
        let id = parse_uuid("backup_id", id)?;
        visible_backup(&self.state.lock(), caller, &id)?;
        self.delete_checked(id, false)
    }

    /// Deletes a backup after the checks every delete passes: status, dependents, and (unless
    /// `by_retention`) the vault lock.
    pub(crate) fn delete_checked(&self, id: Uuid, by_retention: bool) -> Result<(), Status> {
        {
            let mut st = self.state.lock();
            let mut b = st
                .backups
                .get(&id)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("backup {id} not found")))?;
            if !matches!(b.status, BackupStatus::Available | BackupStatus::Error) {
                return Err(Status::failed_precondition(format!(
                    "backup {id} is {}; only available or error backups can be deleted",
                    b.status.as_str()
                )));
            }
            if let Some(d) = st.backups.values().find(|o| o.parent_id == Some(id)) {
                return Err(Status::failed_precondition(format!(
                    "backup {id} has dependent backups (incremental {} is based on it); \
                     delete them first",
                    d.id
                )));
            }
            if let Some(v) = b.vault_id.and_then(|v| st.vaults.get(&v)) {
                if v.locked && !by_retention {
                    return Err(Status::failed_precondition(format!(
                        "backup {id} is in locked vault {}; only the vault's retention policy \
                         removes it",
                        v.id
                    )));
                }
            }
            b.status = BackupStatus::Deleting;
            b.updated_at = now();
            Changes::backup(b).commit(&self.db, &mut st)?;
        }
        match self.finish_delete(id) {
            Some(reason) => Err(Status::internal(format!(
                "deleting backup {id} failed (status error_deleting): {reason}"
            ))),
            None => Ok(()),
        }
    }

    /// Drops a `deleting` backup's data references and its row; on failure marks it
    /// `error_deleting` and returns the reason.
    fn finish_delete(&self, id: Uuid) -> Option<String> {
        let vault = self.state.lock().backups.get(&id).and_then(|b| b.vault_id);
        let uncharged = match vault {
            Some(v) => self
                .uncharge(v, id)
                .map_err(|e| format!("uncounting the backup from vault {v}: {e}")),
            None => Ok(()),
        };
        let res = uncharged.and_then(|()| match self.engine.delete(&BackupId(id)) {
            Ok(()) => Ok(()),
            Err(EngineError::Store(blockvault_store::Error::BackupNotFound(_))) => Ok(()),
            Err(e) => Err(e.to_string()),
        });
        let mut st = self.state.lock();
        let outcome = match res {
            Ok(()) => {
                let mut ch = Changes {
                    gone_backups: vec![id],
                    ..Default::default()
                };
                if let Some(vid) = st.backups.get(&id).and_then(|b| b.vault_id) {
                    ch.vaults = crate::vault::after_usage_change(self, &st, vid);
                }
                ch
            }
            Err(ref reason) => {
                let Some(mut b) = st.backups.get(&id).cloned() else {
                    return Some(reason.clone());
                };
                b.status = BackupStatus::ErrorDeleting;
                b.fail_reason = Some(reason.clone());
                b.updated_at = now();
                Changes::backup(b)
            }
        };
        if let Err(e) = outcome.commit(&self.db, &mut st) {
            return Some(e.message().to_string());
        }
        tracing::info!(backup = %id, ok = res.is_ok(), "backup delete finished");
        res.err()
    }

    /// Backups.Restore: to an existing volume (`volume_id`) or to a new one.
    /// Returns (backup id, volume, job).
    pub fn restore_backup(
        self: &Arc<Self>,
        caller: &Caller,
        backup_id: &str,
        volume_id: &str,
        name: &str,
    ) -> Result<(Uuid, VolumeRow, JobRow), Status> {
        caller.must_write()?;
        let backup_id = parse_uuid("backup_id", backup_id)?;
        let target_id = if volume_id.is_empty() {
            None
        } else {
            Some(parse_uuid("volume_id", volume_id)?)
        };
        check_len("name", name)?;
        let mut st = self.state.lock();
        self.check_queue(&st)?;
        let mut backup = visible_backup(&st, caller, &backup_id)?.clone();
        if backup.status != BackupStatus::Available {
            return Err(Status::failed_precondition(format!(
                "backup {backup_id} is {}; only an available backup can be restored",
                backup.status.as_str()
            )));
        }
        let t = now();
        let job_id = Uuid::new_v4();
        let (volume, target, new_volume) = match target_id {
            Some(vid) => {
                let mut v = visible_volume(&st, caller, &vid)?.clone();
                if v.project_id != backup.project_id {
                    return Err(Status::permission_denied(format!(
                        "volume_id: volume {vid} is not in the backup's project; a backup is \
                         restored only to a volume of its own project"
                    )));
                }
                if v.status != VolumeStatus::Available || v.busy_job.is_some() {
                    return Err(Status::failed_precondition(format!(
                        "volume {vid} is {}; a restore target must be available",
                        v.status.as_str()
                    )));
                }
                if v.size < backup.size {
                    return Err(Status::failed_precondition(format!(
                        "volume {vid} holds {} bytes but backup {backup_id} needs {}",
                        v.size, backup.size
                    )));
                }
                v.status = VolumeStatus::RestoringBackup;
                v.updated_at = t;
                let path = v.path.clone();
                (v, path, false)
            }
            None => {
                let id = Uuid::new_v4();
                let path = self.restore_dir.join(format!("{id}.img"));
                // A volume restored from an encrypted backup is encrypted too, under its own key.
                let encryption_key_id = if backup.encrypted {
                    let vid = VolumeId::new(id.to_string()).map_err(|e| internal(e.to_string()))?;
                    Some(self.engine.ensure_volume_key(&vid).map_err(engine_status)?)
                } else {
                    None
                };
                let name = if name.is_empty() {
                    format!("restore_backup_{backup_id}")
                } else {
                    name.to_string()
                };
                let v = VolumeRow {
                    format: ROW_VERSION,
                    id,
                    name,
                    path: path.as_os_str().as_bytes().to_vec(),
                    size: backup.size,
                    status: VolumeStatus::Creating,
                    idle_status: VolumeStatus::Available,
                    encrypted: backup.encrypted,
                    encryption_key_id,
                    project_id: backup.project_id.clone(),
                    user_id: caller.user.clone(),
                    created_at: t,
                    updated_at: t,
                    busy_job: None,
                    tags: Vec::new(),
                    server_id: String::new(),
                    identity: None,
                };
                let p = v.path.clone();
                (v, p, true)
            }
        };
        backup.status = BackupStatus::Restoring;
        backup.job_id = Some(job_id);
        backup.updated_at = t;
        let job = JobRow {
            format: ROW_VERSION,
            id: job_id,
            seq: st.next_seq,
            kind: JobKind::Restore,
            state: JobState::Queued,
            project_id: backup.project_id.clone(),
            user_id: caller.user.clone(),
            backup_id,
            volume_id: volume.id,
            source: None,
            target: Some(target),
            new_volume,
            bytes_done: 0,
            bytes_total: backup.size,
            bytes_stored: 0,
            created_at: t,
            started_at: None,
            finished_at: None,
            fail_reason: None,
        };
        Changes {
            volumes: vec![volume.clone()],
            backups: vec![backup],
            jobs: vec![job.clone()],
            ..Default::default()
        }
        .commit(&self.db, &mut st)?;
        st.next_seq += 1;
        drop(st);
        tracing::info!(backup = %backup_id, volume = %volume.id, job = %job_id, new_volume, "restore queued");
        self.dispatch();
        Ok((backup_id, volume, job))
    }

    /// A backup row for export (must be available) and the engine's record of it.
    pub(crate) fn exportable(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(BackupRow, BackupRecord), Status> {
        let id = parse_uuid("backup_id", id)?;
        let b = {
            let st = self.state.lock();
            visible_backup(&st, caller, &id)?.clone()
        };
        if b.status != BackupStatus::Available {
            return Err(Status::failed_precondition(format!(
                "backup {id} is {}; only an available backup can be exported",
                b.status.as_str()
            )));
        }
        let rec = self.engine.get(&BackupId(id)).map_err(engine_status)?;
        Ok((b, rec))
    }

    /// Adds an imported backup row (checked by the caller against the store).
    pub(crate) fn insert_imported(
        &self,
        caller: &Caller,
        mut b: BackupRow,
    ) -> Result<BackupRow, Status> {
        caller.must_write()?;
        let mut st = self.state.lock();
        if st.backups.contains_key(&b.id) {
            return Err(Status::already_exists(format!(
                "backup {} already exists",
                b.id
            )));
        }
        // The backup joins the caller's project: its volume and its parent must not be another
        // project's (their keys, parent chain and dependents rule are scoped to the project).
        let foreign = |project: &str| project != caller.project;
        if st
            .volumes
            .get(&b.volume_id)
            .is_some_and(|v| foreign(&v.project_id))
            || st
                .backups
                .values()
                .any(|o| o.volume_id == b.volume_id && foreign(&o.project_id))
        {
            return Err(Status::permission_denied(format!(
                "backup_url: backup {} belongs to a volume of another project",
                b.id
            )));
        }
        if let Some(parent) = b.parent_id.and_then(|p| st.backups.get(&p)) {
            if foreign(&parent.project_id) {
                return Err(Status::permission_denied(format!(
                    "backup_url: the parent of backup {} belongs to another project",
                    b.id
                )));
            }
        }
        b.project_id = caller.project.clone();
        b.user_id = caller.user.clone();
        b.status = BackupStatus::Available;
        b.job_id = None;
        b.fail_reason = None;
        b.updated_at = now();
        // The vault it came from, if this daemon has it in the caller's project.
        b.vault_id = b.vault_id.filter(|v| {
            st.vaults
                .get(v)
                .is_some_and(|v| v.project_id == caller.project)
        });
        Changes::backup(b.clone()).commit(&self.db, &mut st)?;
        drop(st);
        if let Some(vault) = b.vault_id {
            if let Err(e) = self.charge(vault, b.id, &|| false) {
                return Err(internal(format!(
                    "imported, but counting it in vault {vault} failed: {e}"
                )));
            }
            let mut st = self.state.lock();
            let ch = Changes {
                vaults: crate::vault::after_usage_change(self, &st, vault),
                ..Default::default()
            };
            ch.commit(&self.db, &mut st)?;
        }
        Ok(b)
    }

    // ---------------------------------------------------------------------------------- jobs

    /// Jobs.Get: the row with live progress.
    pub fn get_job(&self, caller: &Caller, id: &str) -> Result<JobRow, Status> {
        let id = parse_uuid("job_id", id)?;
        let st = self.state.lock();
        let j = st
            .jobs
            .get(&id)
            .filter(|j| caller.sees(&j.project_id))
            .ok_or_else(|| Status::not_found(format!("job {id} not found")))?;
        Ok(live(&st, j))
    }

    /// The job's current row, unchecked (for Watch, after the first check).
    pub fn job_snapshot(&self, id: &Uuid) -> Option<JobRow> {
        let st = self.state.lock();
        st.jobs.get(id).map(|j| live(&st, j))
    }

    /// Jobs.List, newest first.
    pub fn list_jobs(
        &self,
        caller: &Caller,
        all_tenants: bool,
        state: &str,
        page: &PageQuery,
    ) -> Result<(Vec<JobRow>, Option<Uuid>), Status> {
        caller.may_list_all(all_tenants)?;
        let want = if state.is_empty() {
            None
        } else {
            Some(JobState::parse(state).ok_or_else(|| {
                Status::invalid_argument(format!("state: unknown job state {state:?}"))
            })?)
        };
        let st = self.state.lock();
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
    pub fn cancel_job(self: &Arc<Self>, caller: &Caller, id: &str) -> Result<JobRow, Status> {
        caller.must_write()?;
        let id = parse_uuid("job_id", id)?;
        let mut st = self.state.lock();
        let j = st
            .jobs
            .get(&id)
            .filter(|j| caller.sees(&j.project_id))
            .ok_or_else(|| Status::not_found(format!("job {id} not found")))?
            .clone();
        match j.state {
            JobState::Queued => {
                let ch = end_job(&st, j, Err(CANCELLED.into()), JobState::Cancelled);
                ch.commit(&self.db, &mut st)?;
                let row = st.jobs[&id].clone();
                drop(st);
                self.bump();
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
            s => Err(Status::failed_precondition(format!(
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
        let mut st = self.state.lock();
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
            if let Err(e) = ch.commit(&self.db, &mut st) {
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
            self.bump();
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
                    let st = self.state.lock();
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
                        .state
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
            let st = self.state.lock();
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
            if let Err(e) = self.uncharge(vault, job.backup_id) {
                tracing::error!(backup = %job.backup_id, error = %e, "undoing a vault charge");
            }
            res
        };
        match self.charge(vault, job.backup_id, &|| run.cancel.is_cancelled()) {
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
        let mut st = self.state.lock();
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
                    ch.vaults = crate::vault::after_usage_change(self, &st, vid);
                }
            }
            ch
        };
        if let Err(e) = ch.commit(&self.db, &mut st) {
            tracing::error!(job = %id, error = %e.message(), "cannot record the end of a job");
        }
        let j = &st.jobs[&id];
        tracing::info!(job = %id, state = j.state.as_str(), reason = j.fail_reason.as_deref().unwrap_or(""), "job ended");
        drop(st);
        self.bump();
    }

    /// First step of shutdown: start no more jobs, suspend running ones (they go back to the
    /// queue), and end Watch streams.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        {
            let st = self.state.lock();
            for r in st.running.values() {
                r.suspend.store(true, Ordering::SeqCst);
                r.cancel.cancel();
            }
        }
        self.bump();
    }

    /// Last step of shutdown: wait (up to `wait`) for suspended jobs to stop, then flush both
    /// databases.
    pub fn finish_shutdown(&self, wait: Duration) {
        self.begin_shutdown();
        let deadline = Instant::now() + wait;
        while !self.state.lock().running.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "flushing the control database");
        }
        if let Err(e) = self.engine.store().flush() {
            tracing::warn!(error = %e, "flushing the store index");
        }
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Forgets finished jobs that ended more than `days` days ago (0: never). Returns how many.
    pub fn prune_jobs(&self, days: u32) -> usize {
        if days == 0 {
            return 0;
        }
        self.prune_jobs_before(now() - time::Duration::days(i64::from(days)))
    }

    /// Forgets finished jobs that ended before `cut`. Returns how many.
    pub fn prune_jobs_before(&self, cut: time::OffsetDateTime) -> usize {
        let mut st = self.state.lock();
        let old: Vec<Uuid> = st
            .jobs
            .values()
            .filter(|j| j.state.is_final() && j.finished_at.is_some_and(|t| t < cut))
            .map(|j| j.id)
            .collect();
        if old.is_empty() {
            return 0;
        }
        let mut t = self.db.txn();
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
        let st = self.state.lock();
        let mut t = self.db.txn();
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
    ch.jobs.push(job);
    ch
}

/// A job row with the live counters of its run, if it runs.
fn live(st: &State, j: &JobRow) -> JobRow {
    let mut j = j.clone();
    if let Some(r) = st.running.get(&j.id) {
        j.bytes_done = r.progress.done.load(Ordering::Relaxed);
        j.bytes_total = r.progress.total.load(Ordering::Relaxed).max(j.bytes_total);
        j.bytes_stored = r.progress.stored.load(Ordering::Relaxed);
    }
    j
}

/// Start-up recovery after an unclean stop (see the module docs).
fn recover(db: &ControlDb, st: &mut State) -> Result<(), Status> {
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

fn compare(a: &BackupRow, b: &BackupRow, key: SortKey) -> std::cmp::Ordering {
    match key {
        SortKey::Id => a.id.cmp(&b.id),
        SortKey::Name => a.name.cmp(&b.name),
        SortKey::Status => a.status.as_str().cmp(b.status.as_str()),
        SortKey::CreatedAt => a.created_at.cmp(&b.created_at),
        SortKey::UpdatedAt => a.updated_at.cmp(&b.updated_at),
        SortKey::Size => a.size.cmp(&b.size),
        SortKey::VolumeId => a.volume_id.cmp(&b.volume_id),
        SortKey::DataTimestamp => a.data_timestamp.cmp(&b.data_timestamp),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SortKey {
    Id,
    Name,
    Status,
    CreatedAt,
    UpdatedAt,
    Size,
    VolumeId,
    DataTimestamp,
}

/// Parses Cinder's `key[:dir],...` sort syntax; default `created_at:desc,id:desc`.
fn parse_sort(s: &str) -> Result<Vec<(SortKey, bool)>, Status> {
    let s = if s.trim().is_empty() {
        "created_at:desc,id:desc"
    } else {
        s
    };
    s.split(',')
        .map(|part| {
            let (k, dir) = part.trim().split_once(':').unwrap_or((part.trim(), "asc"));
            let key = match k.trim() {
                "id" => SortKey::Id,
                "name" => SortKey::Name,
                "status" => SortKey::Status,
                "created_at" => SortKey::CreatedAt,
                "updated_at" => SortKey::UpdatedAt,
                "size" => SortKey::Size,
                "volume_id" => SortKey::VolumeId,
                "data_timestamp" => SortKey::DataTimestamp,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "sort: unknown key {other:?}; keys are id, name, status, created_at, \
                         updated_at, size, volume_id, data_timestamp"
                    )))
                }
            };
            let desc = match dir.trim() {
                "asc" => false,
                "desc" => true,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "sort: unknown direction {other:?}; use asc or desc"
                    )))
                }
            };
            Ok((key, desc))
        })
        .collect()
}

fn visible_volume<'a>(st: &'a State, caller: &Caller, id: &Uuid) -> Result<&'a VolumeRow, Status> {
    st.volumes
        .get(id)
        .filter(|v| caller.sees(&v.project_id))
        .ok_or_else(|| Status::not_found(format!("volume {id} not found")))
}

fn visible_backup<'a>(st: &'a State, caller: &Caller, id: &Uuid) -> Result<&'a BackupRow, Status> {
    st.backups
        .get(id)
        .filter(|b| caller.sees(&b.project_id))
        .ok_or_else(|| Status::not_found(format!("backup {id} not found")))
}

/// Parses a UUID argument.
pub fn parse_uuid(field: &str, s: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(s.trim())
        .map_err(|_| Status::invalid_argument(format!("{field}: {s:?} is not a UUID")))
}

fn check_len(field: &str, s: &str) -> Result<(), Status> {
    let n = s.chars().count();
    if n > MAX_NAME {
        return Err(Status::invalid_argument(format!(
            "{field}: {n} characters; at most {MAX_NAME} are allowed"
        )));
    }
    Ok(())
}

fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), Status> {
    if m.len() > MAX_METADATA {
        return Err(Status::invalid_argument(format!(
            "metadata: {} entries; at most {MAX_METADATA} are allowed",
            m.len()
        )));
    }
    for (k, v) in m {
        let kn = k.chars().count();
        if kn == 0 || kn > MAX_METADATA_ITEM {
            return Err(Status::invalid_argument(format!(
                "metadata: keys must have 1 to {MAX_METADATA_ITEM} characters ({kn} given)"
            )));
        }
        if v.chars().count() > MAX_METADATA_ITEM {
            return Err(Status::invalid_argument(format!(
                "metadata: the value of {k:?} is longer than {MAX_METADATA_ITEM} characters"
            )));
        }
    }
    Ok(())
}

fn check_path(path: &[u8]) -> Result<&Path, Status> {
    if path.is_empty() {
        return Err(Status::invalid_argument("path: empty"));
    }
    if path.contains(&0) {
        return Err(Status::invalid_argument("path: contains a NUL byte"));
    }
    if path.len() > 4096 {
        return Err(Status::invalid_argument("path: longer than 4096 bytes"));
    }
    Ok(Path::new(OsStr::from_bytes(path)))
}

/// Maps an engine error to a gRPC status.
pub fn engine_status(e: EngineError) -> Status {
    match &e {
        EngineError::NoMasterKey | EngineError::WrongMasterKey(_) => {
            Status::failed_precondition(e.to_string())
        }
        EngineError::Store(blockvault_store::Error::BackupNotFound(_)) => {
            Status::not_found(e.to_string())
        }
        EngineError::TargetTooSmall { .. } | EngineError::NotAvailable { .. } => {
            Status::failed_precondition(e.to_string())
        }
        EngineError::Cancelled => Status::cancelled(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}
