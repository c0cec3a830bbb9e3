//! Backups: the rules of the Cinder Backups API for creating (queuing a job), listing, showing,
//! updating, deleting, restoring (queuing a job), exporting and importing a backup.
use std::collections::{BTreeMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use blockvault_core::extents::ChangedExtents;
use blockvault_core::{BackupId, BackupRecord, VolumeId};
use blockvault_engine::{Engine, Error as EngineError};
use uuid::Uuid;

use crate::auth::Caller;
use crate::check::{check_len, check_metadata, parse_uuid};
use crate::error::{Error, Result};
use crate::jobs::Jobs;
use crate::model::*;
use crate::page::{window, PageQuery};
use crate::state::{visible_backup, visible_volume, Changes, Rows, State};
use crate::usage::Usage;

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
    /// Changed-block tracking: the extents changed since the parent, as JSON.
    pub changed_extents: Option<Arc<[u8]>>,
    /// With `changed_extents`: the fraction of unchanged regions to sample (0 to 1).
    pub cbt_sample: f64,
    /// With `changed_extents`: a sampled mismatch reads everything instead of failing.
    pub cbt_full_read_on_mismatch: bool,
}

/// Most bytes of changed extents a request may carry (a gRPC message holds 4 MiB by default).
const MAX_CHANGED_EXTENTS: usize = 16 << 20;

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

/// The backup calls, over what they need.
pub struct Backups<'a> {
    rows: &'a Rows,
    engine: &'a Engine,
    usage: &'a Usage,
    jobs: &'a Arc<Jobs>,
    restore_dir: &'a Path,
}

impl<'a> Backups<'a> {
    pub(crate) fn new(
        rows: &'a Rows,
        engine: &'a Engine,
        usage: &'a Usage,
        jobs: &'a Arc<Jobs>,
        restore_dir: &'a Path,
    ) -> Backups<'a> {
        Backups {
            rows,
            engine,
            usage,
            jobs,
            restore_dir,
        }
    }

    /// Backups.Create: records the backup (`creating`) and queues its job.
    pub fn create(&self, caller: &Caller, req: CreateBackup) -> Result<(BackupRow, JobRow)> {
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
        let cbt = check_cbt(&req)?;
        // Parsed before the lock is taken (a list may hold a few MiB of JSON); its end is
        // checked against the volume's registered size below, and the engine checks it again
        // against the size it reads.
        let extents_end = req
            .changed_extents
            .as_ref()
            .map(|json| ChangedExtents::parse(json, u64::MAX))
            .transpose()
            .map_err(|e| Error::invalid_argument(e.to_string()))?
            .map(|c| c.extents().last().map_or(0, |e| e.end()));
        let mut st = self.rows.lock();
        self.jobs.check_queue(&st)?;
        let vol = visible_volume(&st, caller, &volume_id)?.clone();
        let vault_id = crate::vault::vault_for_backup(&st, &vol, &req.container)?;
        match vol.idle_status {
            VolumeStatus::Available => {}
            VolumeStatus::InUse if req.force => {}
            VolumeStatus::InUse => {
                return Err(Error::failed_precondition(format!(
                    "volume {volume_id} is in-use; pass force to back it up anyway"
                )))
            }
            other => {
                return Err(Error::failed_precondition(format!(
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
                        Error::not_found(format!("snapshot {s} is not a registered volume"))
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
                    Error::failed_precondition(format!(
                        "volume {volume_id} has no available backup to base an incremental on; \
                         create a full backup first"
                    ))
                })?;
            Some(p.id)
        } else {
            None
        };
        if let Some(end) = extents_end.filter(|end| *end > vol.size) {
            return Err(Error::invalid(
                "changed_extents",
                format!(
                    "the extents end at byte {end}, past the volume's size of {} bytes",
                    vol.size
                ),
            ));
        }
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
            cbt: None,
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
            cbt,
        };
        Changes {
            backups: vec![backup.clone()],
            jobs: vec![job.clone()],
            job_extents: req
                .changed_extents
                .map(|json| (job_id, json))
                .into_iter()
                .collect(),
            ..Default::default()
        }
        .commit(&self.rows.db, &mut st)?;
        st.next_seq += 1;
        drop(st);
        tracing::info!(backup = %backup_id, job = %job_id, volume = %volume_id,
                       incremental = backup.is_incremental, "backup queued");
        self.jobs.dispatch();
        Ok((backup, job))
    }

    /// Backups.Get.
    pub fn get(&self, caller: &Caller, id: &str) -> Result<(BackupRow, bool)> {
        let id = parse_uuid("backup_id", id)?;
        let st = self.rows.lock();
        let b = visible_backup(&st, caller, &id)?.clone();
        let dependent = st.backups.values().any(|o| o.parent_id == Some(id));
        Ok((b, dependent))
    }

    /// Backups.List.
    pub fn list(&self, caller: &Caller, q: &ListQuery) -> Result<BackupPage> {
        caller.may_list_all(q.all_tenants)?;
        let sort = parse_sort(&q.sort)?;
        let mut status = None;
        let mut volume = None;
        let mut name = None;
        for (k, v) in &q.filters {
            match k.as_str() {
                "status" => {
                    status = Some(BackupStatus::parse(v).ok_or_else(|| {
                        Error::invalid_argument(format!("filter status: unknown status {v:?}"))
                    })?)
                }
                "volume_id" => volume = Some(v.clone()),
                "name" => name = Some(v.clone()),
                other => {
                    return Err(Error::invalid_argument(format!(
                        "unknown filter {other:?}; filters are status, volume_id, name"
                    )))
                }
            }
        }
        let st = self.rows.lock();
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
    pub fn update(
        &self,
        caller: &Caller,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<(BackupRow, bool)> {
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
        let mut st = self.rows.lock();
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
        Changes::backup(b.clone()).commit(&self.rows.db, &mut st)?;
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
    pub fn delete(&self, caller: &Caller, id: &str) -> Result<()> {
        caller.must_write()?;
        let id = parse_uuid("backup_id", id)?;
        visible_backup(&self.rows.lock(), caller, &id)?;
        self.delete_checked(id, false, false)
    }

    /// Cinder's `os-force_delete` (admins): deletes a backup whatever its status, unless a job
    /// still works on it (cancel the job first). Dependents and vault locks still refuse.
    pub fn force_delete(&self, caller: &Caller, id: &str) -> Result<()> {
        must_be_admin(caller, "os-force_delete")?;
        let id = parse_uuid("backup_id", id)?;
        {
            let st = self.rows.lock();
            visible_backup(&st, caller, &id)?;
            if let Some(j) = active_job(&st, id) {
                return Err(Error::failed_precondition(format!(
                    "backup {id} is used by {} job {}; cancel the job first",
                    j.state.as_str(),
                    j.id
                )));
            }
        }
        self.delete_checked(id, false, true)
    }

    /// Cinder's `os-reset_status` (admins): sets the status of a backup that no job works on to
    /// `available` or `error`, to mend one left behind by a fault.
    pub fn reset_status(&self, caller: &Caller, id: &str, status: &str) -> Result<BackupRow> {
        must_be_admin(caller, "os-reset_status")?;
        let id = parse_uuid("backup_id", id)?;
        let status = match status {
            "available" => BackupStatus::Available,
            "error" => BackupStatus::Error,
            other => {
                return Err(Error::invalid(
                    "status",
                    format!("{other:?} is not one of available, error"),
                ))
            }
        };
        let mut st = self.rows.lock();
        let mut b = visible_backup(&st, caller, &id)?.clone();
        if let Some(j) = active_job(&st, id) {
            return Err(Error::failed_precondition(format!(
                "backup {id} is used by {} job {}; its status changes when the job ends",
                j.state.as_str(),
                j.id
            )));
        }
        b.status = status;
        b.updated_at = now();
        Changes::backup(b.clone()).commit(&self.rows.db, &mut st)?;
        tracing::info!(backup = %id, status = status.as_str(), "backup status reset");
        Ok(b)
    }

    /// Deletes a backup after the checks every delete passes: status (unless `force`),
    /// dependents, and (unless `by_retention`) the vault lock.
    pub(crate) fn delete_checked(&self, id: Uuid, by_retention: bool, force: bool) -> Result<()> {
        {
            let mut st = self.rows.lock();
            let mut b = st
                .backups
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("backup {id} not found")))?;
            if !force && !matches!(b.status, BackupStatus::Available | BackupStatus::Error) {
                return Err(Error::failed_precondition(format!(
                    "backup {id} is {}; only available or error backups can be deleted",
                    b.status.as_str()
                )));
            }
            if let Some(d) = st.backups.values().find(|o| o.parent_id == Some(id)) {
                return Err(Error::failed_precondition(format!(
                    "backup {id} has dependent backups (incremental {} is based on it); \
                     delete them first",
                    d.id
                )));
            }
            if let Some(v) = b.vault_id.and_then(|v| st.vaults.get(&v)) {
                if v.locked && !by_retention {
                    return Err(Error::failed_precondition(format!(
                        "backup {id} is in locked vault {}; only the vault's retention policy \
                         removes it",
                        v.id
                    )));
                }
            }
            b.status = BackupStatus::Deleting;
            b.updated_at = now();
            Changes::backup(b).commit(&self.rows.db, &mut st)?;
        }
        match self.finish_delete(id) {
            Some(reason) => Err(Error::internal(format!(
                "deleting backup {id} failed (status error_deleting): {reason}"
            ))),
            None => Ok(()),
        }
    }

    /// Drops a `deleting` backup's data references and its row; on failure marks it
    /// `error_deleting` and returns the reason.
    pub(crate) fn finish_delete(&self, id: Uuid) -> Option<String> {
        let vault = self.rows.lock().backups.get(&id).and_then(|b| b.vault_id);
        let uncharged = match vault {
            Some(v) => self
                .usage
                .uncharge(v, id)
                .map_err(|e| format!("uncounting the backup from vault {v}: {e}")),
            None => Ok(()),
        };
        let res = uncharged.and_then(|()| match self.engine.delete(&BackupId(id)) {
            Ok(()) => Ok(()),
            Err(EngineError::Store(blockvault_store::Error::BackupNotFound(_))) => Ok(()),
            Err(e) => Err(e.to_string()),
        });
        let mut st = self.rows.lock();
        let outcome = match res {
            Ok(()) => {
                let mut ch = Changes {
                    gone_backups: vec![id],
                    ..Default::default()
                };
                if let Some(vid) = st.backups.get(&id).and_then(|b| b.vault_id) {
                    ch.vaults = crate::vault::after_usage_change(self.rows, &st, vid);
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
        if let Err(e) = outcome.commit(&self.rows.db, &mut st) {
            return Some(e.message().to_string());
        }
        tracing::info!(backup = %id, ok = res.is_ok(), "backup delete finished");
        res.err()
    }

    /// Backups.Restore: to an existing volume (`volume_id`) or to a new one.
    /// Returns (backup id, volume, job).
    pub fn restore(
        &self,
        caller: &Caller,
        backup_id: &str,
        volume_id: &str,
        name: &str,
    ) -> Result<(Uuid, VolumeRow, JobRow)> {
        caller.must_write()?;
        let backup_id = parse_uuid("backup_id", backup_id)?;
        let target_id = if volume_id.is_empty() {
            None
        } else {
            Some(parse_uuid("volume_id", volume_id)?)
        };
        check_len("name", name)?;
        let mut st = self.rows.lock();
        self.jobs.check_queue(&st)?;
        let mut backup = visible_backup(&st, caller, &backup_id)?.clone();
        if backup.status != BackupStatus::Available {
            return Err(Error::failed_precondition(format!(
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
                    return Err(Error::permission_denied(format!(
                        "volume_id: volume {vid} is not in the backup's project; a backup is \
                         restored only to a volume of its own project"
                    )));
                }
                if v.status != VolumeStatus::Available || v.busy_job.is_some() {
                    return Err(Error::failed_precondition(format!(
                        "volume {vid} is {}; a restore target must be available",
                        v.status.as_str()
                    )));
                }
                if v.size < backup.size {
                    return Err(Error::failed_precondition(format!(
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
                    let vid = VolumeId::new(id.to_string()).map_err(Error::internal)?;
                    Some(self.engine.ensure_volume_key(&vid).map_err(Error::from)?)
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
            cbt: None,
        };
        Changes {
            volumes: vec![volume.clone()],
            backups: vec![backup],
            jobs: vec![job.clone()],
            ..Default::default()
        }
        .commit(&self.rows.db, &mut st)?;
        st.next_seq += 1;
        drop(st);
        tracing::info!(backup = %backup_id, volume = %volume.id, job = %job_id, new_volume, "restore queued");
        self.jobs.dispatch();
        Ok((backup_id, volume, job))
    }

    /// A backup row for export (must be available) and the engine's record of it.
    pub(crate) fn exportable(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(BackupRow, BackupRecord)> {
        let id = parse_uuid("backup_id", id)?;
        let b = {
            let st = self.rows.lock();
            visible_backup(&st, caller, &id)?.clone()
        };
        if b.status != BackupStatus::Available {
            return Err(Error::failed_precondition(format!(
                "backup {id} is {}; only an available backup can be exported",
                b.status.as_str()
            )));
        }
        let rec = self.engine.get(&BackupId(id)).map_err(Error::from)?;
        Ok((b, rec))
    }

    /// Adds an imported backup row (checked by the caller against the store).
    pub(crate) fn insert_imported(&self, caller: &Caller, mut b: BackupRow) -> Result<BackupRow> {
        caller.must_write()?;
        let mut st = self.rows.lock();
        if st.backups.contains_key(&b.id) {
            return Err(Error::already_exists(format!(
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
            return Err(Error::permission_denied(format!(
                "backup_url: backup {} belongs to a volume of another project",
                b.id
            )));
        }
        if let Some(parent) = b.parent_id.and_then(|p| st.backups.get(&p)) {
            if foreign(&parent.project_id) {
                return Err(Error::permission_denied(format!(
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
        Changes::backup(b.clone()).commit(&self.rows.db, &mut st)?;
        drop(st);
        if let Some(vault) = b.vault_id {
            if let Err(e) = self.usage.charge(vault, b.id, &|| false) {
                return Err(Error::internal(format!(
                    "imported, but counting it in vault {vault} failed: {e}"
                )));
            }
            let mut st = self.rows.lock();
            let ch = Changes {
                vaults: crate::vault::after_usage_change(self.rows, &st, vault),
                ..Default::default()
            };
            ch.commit(&self.rows.db, &mut st)?;
        }
        Ok(b)
    }
}

fn compare(a: &BackupRow, b: &BackupRow, key: SortKey) -> std::cmp::Ordering {
    match key {
        SortKey::Id => a.id.cmp(&b.id),
        SortKey::Name => a.name.cmp(&b.name),
        SortKey::Error => a.status.as_str().cmp(b.status.as_str()),
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
    Error,
    CreatedAt,
    UpdatedAt,
    Size,
    VolumeId,
    DataTimestamp,
}

/// Parses Cinder's `key[:dir],...` sort syntax; default `created_at:desc,id:desc`.
fn parse_sort(s: &str) -> Result<Vec<(SortKey, bool)>> {
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
                // `display_name` is the column name the cinder client sends for `name`.
                "name" | "display_name" => SortKey::Name,
                "status" => SortKey::Error,
                "created_at" => SortKey::CreatedAt,
                "updated_at" => SortKey::UpdatedAt,
                "size" => SortKey::Size,
                "volume_id" => SortKey::VolumeId,
                "data_timestamp" => SortKey::DataTimestamp,
                other => {
                    return Err(Error::invalid_argument(format!(
                        "sort: unknown key {other:?}; keys are id, name, status, created_at, \
                         updated_at, size, volume_id, data_timestamp"
                    )))
                }
            };
            let desc = match dir.trim() {
                "asc" => false,
                "desc" => true,
                other => {
                    return Err(Error::invalid_argument(format!(
                        "sort: unknown direction {other:?}; use asc or desc"
                    )))
                }
            };
            Ok((key, desc))
        })
        .collect()
}

/// Refuses callers other than admins.
fn must_be_admin(caller: &Caller, what: &str) -> Result<()> {
    if caller.role != crate::config::Role::Admin {
        return Err(Error::permission_denied(format!(
            "{what} is for admins only; user {} is not an admin",
            caller.user
        )));
    }
    Ok(())
}

/// The queued or running job of a backup, if any.
fn active_job(st: &State, backup: Uuid) -> Option<&JobRow> {
    st.jobs
        .values()
        .find(|j| j.backup_id == backup && !j.state.is_final())
}

/// Checks a Create request's CBT fields (the extents themselves are checked against the
/// volume's size once it is known).
fn check_cbt(req: &CreateBackup) -> Result<Option<JobCbt>> {
    let Some(json) = &req.changed_extents else {
        if req.cbt_sample != 0.0 || req.cbt_full_read_on_mismatch {
            return Err(Error::invalid(
                "cbt_sample",
                "the CBT options need changed_extents",
            ));
        }
        return Ok(None);
    };
    if !req.incremental {
        return Err(Error::invalid(
            "changed_extents",
            "only an incremental backup takes changed extents: they say what changed since \
             its parent",
        ));
    }
    if json.len() > MAX_CHANGED_EXTENTS {
        return Err(Error::invalid(
            "changed_extents",
            format!("{} bytes, at most {MAX_CHANGED_EXTENTS}", json.len()),
        ));
    }
    if !(req.cbt_sample.is_finite() && (0.0..=1.0).contains(&req.cbt_sample)) {
        return Err(Error::invalid(
            "cbt_sample",
            format!("{} is not a fraction between 0 and 1", req.cbt_sample),
        ));
    }
    Ok(Some(JobCbt {
        sample_ppm: (req.cbt_sample * 1e6).round() as u32,
        full_read_on_mismatch: req.cbt_full_read_on_mismatch,
    }))
}
