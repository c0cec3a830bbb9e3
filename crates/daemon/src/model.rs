//! Control-plane records (volumes, backups, jobs) and their persistence in the daemon's own
//! RocksDB (`<data_dir>/control`), one column family each, values versioned JSON.
//!
//! The chunk store keeps what the data plane needs (the engine's backup record, manifest and
//! references); the control database keeps what the API adds (names, projects, Cinder statuses,
//! jobs). They are separate so that a copy of the chunk store can be attached to another daemon
//! and its backups imported there (Backups.ImportRecord).
use std::collections::BTreeMap;
use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Version of every control-plane row.
pub const ROW_VERSION: u32 = 1;

const CF_VOLUMES: &str = "volumes";
const CF_BACKUPS: &str = "backups";
const CF_JOBS: &str = "jobs";
const CF_VAULTS: &str = "vaults";
const CF_POLICIES: &str = "policies";
/// Vault usage ledger: `vault ‖ chunk -> count u64 LE ‖ entry size u32 LE` (see `usage.rs`).
pub(crate) const CF_VAULT_CHUNKS: &str = "vault_chunks";
/// Vault usage ledger: `vault ‖ backup -> first u32 LE ‖ end u32 LE ‖ complete u8`, the manifest
/// blocks `[first, end)` of the backup counted in the vault.
pub(crate) const CF_VAULT_CHARGES: &str = "vault_charges";
/// Vault usage ledger: `vault -> used bytes u64 LE`.
pub(crate) const CF_VAULT_USED: &str = "vault_used";
/// Volume ids that were once registered: `volume id -> ""`. An id is never accepted again, so a
/// caller who picks ids cannot step into a former volume's keys, backups or parent chain.
const CF_RETIRED_VOLUMES: &str = "retired_volumes";
/// The changed extents of CBT backup jobs (`job id -> JSON`, as the request gave them), kept
/// apart from the job rows, which are rewritten as they progress; deleted when the job ends.
const CF_JOB_EXTENTS: &str = "job_extents";
const ALL_CFS: [&str; 10] = [
    CF_VOLUMES,
    CF_BACKUPS,
    CF_JOBS,
    CF_VAULTS,
    CF_POLICIES,
    CF_VAULT_CHUNKS,
    CF_VAULT_CHARGES,
    CF_VAULT_USED,
    CF_RETIRED_VOLUMES,
    CF_JOB_EXTENTS,
];

/// A volume's Cinder-style status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeStatus {
    Available,
    InUse,
    BackingUp,
    RestoringBackup,
    Creating,
    Error,
    #[serde(rename = "error_restoring")]
    ErrorRestoring,
}

impl VolumeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeStatus::Available => "available",
            VolumeStatus::InUse => "in-use",
            VolumeStatus::BackingUp => "backing-up",
            VolumeStatus::RestoringBackup => "restoring-backup",
            VolumeStatus::Creating => "creating",
            VolumeStatus::Error => "error",
            VolumeStatus::ErrorRestoring => "error_restoring",
        }
    }
}

/// A backup's Cinder status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    Creating,
    Available,
    Deleting,
    Error,
    Restoring,
    ErrorDeleting,
}

impl BackupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Creating => "creating",
            BackupStatus::Available => "available",
            BackupStatus::Deleting => "deleting",
            BackupStatus::Error => "error",
            BackupStatus::Restoring => "restoring",
            BackupStatus::ErrorDeleting => "error_deleting",
        }
    }

    pub fn parse(s: &str) -> Option<BackupStatus> {
        [
            BackupStatus::Creating,
            BackupStatus::Available,
            BackupStatus::Deleting,
            BackupStatus::Error,
            BackupStatus::Restoring,
            BackupStatus::ErrorDeleting,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Backup,
    Restore,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
        }
    }
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// The job will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A registered volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRow {
    pub format: u32,
    pub id: Uuid,
    pub name: String,
    /// The device or image path, as raw bytes (Linux paths need not be UTF-8).
    pub path: Vec<u8>,
    pub size: u64,
    pub status: VolumeStatus,
    /// The status to return to when the job holding the volume ends.
    pub idle_status: VolumeStatus,
    pub encrypted: bool,
    pub encryption_key_id: Option<Uuid>,
    pub project_id: String,
    pub user_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub busy_job: Option<Uuid>,
    /// Tags (key, value), matched by vault bind rules.
    #[serde(default)]
    pub tags: Vec<(String, String)>,
    /// The server the volume belongs to ("" for none).
    #[serde(default)]
    pub server_id: String,
    /// What the path named when it was registered (rows from before this field have none).
    #[serde(default)]
    pub identity: Option<crate::hostpath::Identity>,
}

/// A resource bound to a vault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRow {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub exclude_volumes: Vec<String>,
}

/// A vault's billing/capacity block (the recorded-only fields are kept as given).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingRow {
    pub cloud_type: String,
    pub consistent_level: String,
    pub object_type: String,
    pub protect_type: String,
    /// Capacity in GB (10^9 bytes).
    pub size_gb: i64,
    pub charging_mode: String,
    pub period_type: String,
    pub period_num: i32,
    pub is_auto_renew: bool,
    pub is_auto_pay: bool,
    pub console_url: String,
    pub is_multi_az: bool,
}

/// A vault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultRow {
    pub format: u32,
    pub id: Uuid,
    pub project_id: String,
    pub user_id: String,
    pub name: String,
    pub description: String,
    pub billing: BillingRow,
    pub resources: Vec<ResourceRow>,
    pub tags: Vec<(String, String)>,
    pub backup_policy_id: Option<Uuid>,
    pub auto_bind: bool,
    pub bind_rules: Vec<(String, String)>,
    pub auto_expand: bool,
    pub threshold: i32,
    pub smn_notify: bool,
    pub backup_name_prefix: String,
    pub locked: bool,
    pub enterprise_project_id: String,
    pub demand_billing: bool,
    pub sys_lock_source_service: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Usage is at or above the threshold (an event fired; re-armed when usage drops below).
    pub above_threshold: bool,
    pub threshold_events: i64,
    /// Scheduled runs so far, per resource volume (drives the full/incremental pattern).
    pub runs: BTreeMap<Uuid, u64>,
    /// When the policy last ran for this vault.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_run: Option<OffsetDateTime>,
}

/// A backup policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRow {
    pub format: u32,
    pub id: Uuid,
    pub project_id: String,
    pub name: String,
    pub enabled: bool,
    /// Seconds between runs (0 when day/time rules are used).
    pub interval_seconds: u64,
    /// Days of the week, 0 = Monday .. 6 = Sunday; empty = every day.
    pub days: Vec<u8>,
    /// Minutes after midnight UTC.
    pub times: Vec<u16>,
    pub full_every: u32,
    pub max_backups: Option<u32>,
    pub max_days: Option<u32>,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A backup as the API sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRow {
    pub format: u32,
    pub id: Uuid,
    pub project_id: String,
    pub user_id: String,
    pub name: String,
    pub description: String,
    pub container: String,
    pub metadata: BTreeMap<String, String>,
    pub availability_zone: String,
    pub snapshot_id: Option<Uuid>,
    pub volume_id: Uuid,
    pub status: BackupStatus,
    pub fail_reason: Option<String>,
    pub is_incremental: bool,
    pub parent_id: Option<Uuid>,
    /// Volume size in bytes.
    pub size: u64,
    pub object_count: u64,
    pub stored_bytes: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub data_timestamp: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub encrypted: bool,
    pub encryption_key_id: Option<Uuid>,
    /// The job that made it or restores it.
    pub job_id: Option<Uuid>,
    /// The vault it belongs to.
    #[serde(default)]
    pub vault_id: Option<Uuid>,
    /// What a CBT incremental read and what its sampling found (from the engine's record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cbt: Option<blockvault_core::CbtStats>,
}

/// A CBT backup job's options; its extents are in the control database beside the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCbt {
    /// The fraction of unchanged regions to sample, in millionths.
    pub sample_ppm: u32,
    /// A sampled mismatch falls back to a full read instead of failing the backup.
    pub full_read_on_mismatch: bool,
}

/// A queued, running or finished job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRow {
    pub format: u32,
    pub id: Uuid,
    /// Queue order.
    pub seq: u64,
    pub kind: JobKind,
    pub state: JobState,
    pub project_id: String,
    pub user_id: String,
    pub backup_id: Uuid,
    /// The volume the job holds: read by a backup, written by a restore.
    pub volume_id: Uuid,
    /// Backups: the path to read (the volume's, or its snapshot's).
    pub source: Option<Vec<u8>>,
    /// Restores: the path to write, and whether the restore creates it (a new volume).
    pub target: Option<Vec<u8>>,
    pub new_volume: bool,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_stored: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub fail_reason: Option<String>,
    /// Backups with changed-block tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cbt: Option<JobCbt>,
}

/// Rows loaded at start.
#[derive(Default)]
pub struct Loaded {
    pub volumes: Vec<VolumeRow>,
    pub backups: Vec<BackupRow>,
    pub jobs: Vec<JobRow>,
    pub vaults: Vec<VaultRow>,
    pub policies: Vec<PolicyRow>,
    /// Ids of unregistered volumes.
    pub retired: Vec<Uuid>,
}

/// Errors of the control database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("control database: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("control database row {key}: {detail}")]
    Corrupt { key: String, detail: String },
}

/// The control database.
pub struct ControlDb {
    pub(crate) db: DB,
}

/// Changes written together, atomically and durably.
#[derive(Default)]
pub struct Txn {
    batch: WriteBatch,
    puts: usize,
}

impl ControlDb {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<ControlDb, DbError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = ALL_CFS
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        Ok(ControlDb {
            db: DB::open_cf_descriptors(&opts, dir, cfs)?,
        })
    }

    /// Every row.
    pub fn load(&self) -> Result<Loaded, DbError> {
        Ok(Loaded {
            volumes: self.load_cf(CF_VOLUMES)?,
            backups: self.load_cf(CF_BACKUPS)?,
            jobs: self.load_cf(CF_JOBS)?,
            vaults: self.load_cf(CF_VAULTS)?,
            policies: self.load_cf(CF_POLICIES)?,
            retired: self.load_keys(CF_RETIRED_VOLUMES)?,
        })
    }

    fn load_keys(&self, cf: &str) -> Result<Vec<Uuid>, DbError> {
        let h = self.db.cf_handle(cf).expect("column family opened");
        self.db
            .iterator_cf(h, IteratorMode::Start)
            .map(|kv| {
                let (k, _) = kv?;
                Uuid::from_slice(&k).map_err(|e| DbError::Corrupt {
                    key: format!("{cf}/{}", hex::encode(&k)),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    fn load_cf<T: DeserializeOwned>(&self, cf: &str) -> Result<Vec<T>, DbError> {
        let h = self.db.cf_handle(cf).expect("column family opened");
        self.db
            .iterator_cf(h, IteratorMode::Start)
            .map(|kv| {
                let (k, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| DbError::Corrupt {
                    key: format!("{cf}/{}", hex::encode(&k)),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    /// Applies `txn` in one synced batch.
    pub fn commit(&self, txn: Txn) -> Result<(), DbError> {
        self.write(txn, true)
    }

    /// Applies `txn` without waiting for the disk (progress counters).
    pub fn commit_lazy(&self, txn: Txn) -> Result<(), DbError> {
        self.write(txn, false)
    }

    fn write(&self, txn: Txn, sync: bool) -> Result<(), DbError> {
        if txn.puts == 0 {
            return Ok(());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        Ok(self.db.write_opt(txn.batch, &wo)?)
    }

    /// The changed extents of CBT backup job `job`, if it has them.
    pub fn job_extents(&self, job: &Uuid) -> Result<Option<Vec<u8>>, DbError> {
        let h = self
            .db
            .cf_handle(CF_JOB_EXTENTS)
            .expect("column family opened");
        Ok(self.db.get_cf(h, job.as_bytes())?)
    }

    /// Flushes memtables (clean shutdown).
    pub fn flush(&self) -> Result<(), DbError> {
        for cf in ALL_CFS {
            self.db
                .flush_cf(self.db.cf_handle(cf).expect("column family opened"))?;
        }
        Ok(())
    }

    /// A new transaction.
    pub fn txn(&self) -> TxnBuilder<'_> {
        TxnBuilder {
            db: self,
            txn: Txn::default(),
        }
    }
}

/// Collects the puts and deletes of one transaction.
pub struct TxnBuilder<'a> {
    db: &'a ControlDb,
    txn: Txn,
}

impl TxnBuilder<'_> {
    fn put<T: Serialize>(&mut self, cf: &str, id: &Uuid, row: &T) -> &mut Self {
        let h = self.db.db.cf_handle(cf).expect("column family opened");
        let v = serde_json::to_vec(row).expect("rows serialize");
        self.txn.batch.put_cf(h, id.as_bytes(), v);
        self.txn.puts += 1;
        self
    }

    pub fn volume(&mut self, v: &VolumeRow) -> &mut Self {
        self.put(CF_VOLUMES, &v.id, v)
    }

    pub fn backup(&mut self, b: &BackupRow) -> &mut Self {
        self.put(CF_BACKUPS, &b.id, b)
    }

    pub fn job(&mut self, j: &JobRow) -> &mut Self {
        self.put(CF_JOBS, &j.id, j)
    }

    /// The changed extents of CBT backup job `job`.
    pub fn job_extents(&mut self, job: &Uuid, json: &[u8]) -> &mut Self {
        let h = self
            .db
            .db
            .cf_handle(CF_JOB_EXTENTS)
            .expect("column family opened");
        self.txn.batch.put_cf(h, job.as_bytes(), json);
        self.txn.puts += 1;
        self
    }

    /// Forgets a job's changed extents (when it ends).
    pub fn delete_job_extents(&mut self, job: &Uuid) -> &mut Self {
        self.delete(CF_JOB_EXTENTS, job)
    }

    pub fn vault(&mut self, v: &VaultRow) -> &mut Self {
        self.put(CF_VAULTS, &v.id, v)
    }

    pub fn policy(&mut self, p: &PolicyRow) -> &mut Self {
        self.put(CF_POLICIES, &p.id, p)
    }

    pub fn delete_vault(&mut self, id: &Uuid) -> &mut Self {
        self.delete(CF_VAULT_USED, id);
        self.delete(CF_VAULTS, id)
    }

    pub fn delete_policy(&mut self, id: &Uuid) -> &mut Self {
        self.delete(CF_POLICIES, id)
    }

    /// Removes a volume and retires its id for good.
    pub fn delete_volume(&mut self, id: &Uuid) -> &mut Self {
        let h = self
            .db
            .db
            .cf_handle(CF_RETIRED_VOLUMES)
            .expect("column family opened");
        self.txn.batch.put_cf(h, id.as_bytes(), b"");
        self.delete(CF_VOLUMES, id)
    }

    pub fn delete_job(&mut self, id: &Uuid) -> &mut Self {
        self.delete(CF_JOBS, id)
    }

    pub fn delete_backup(&mut self, id: &Uuid) -> &mut Self {
        self.delete(CF_BACKUPS, id)
    }

    fn delete(&mut self, cf: &str, id: &Uuid) -> &mut Self {
        let h = self.db.db.cf_handle(cf).expect("column family opened");
        self.txn.batch.delete_cf(h, id.as_bytes());
        self.txn.puts += 1;
        self
    }

    /// Writes the transaction durably.
    pub fn commit(&mut self) -> Result<(), DbError> {
        self.db.commit(std::mem::take(&mut self.txn))
    }

    /// Writes the transaction without syncing.
    pub fn commit_lazy(&mut self) -> Result<(), DbError> {
        self.db.commit_lazy(std::mem::take(&mut self.txn))
    }
}

/// GiB, rounded up (Cinder's size unit).
pub fn gib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 30)
}

/// Current time, to the second (RFC 3339 without fractions, like Cinder).
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}
