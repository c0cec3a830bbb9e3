//! The gRPC services: thin adapters from `blockvault.v1` messages to [`Control`].
//!
//! Each call takes the caller from the request (attached by the auth interceptor), moves the
//! synchronous work to a blocking thread, and converts the rows back to messages.
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use blockvault_proto::v1 as pb;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::{caller, Caller};
use crate::control::{Control, CreateBackup, ListQuery};
use crate::error::Error;
use crate::export;
use crate::model::{gib_ceil, BackupRow, BillingRow, JobRow, JobState, ResourceRow, VolumeRow};
use crate::page::PageQuery;
use crate::policy::PolicySpec;
use crate::vault::{VaultSpec, VaultUpdate, VaultView};

/// The three services over one control plane.
#[derive(Clone)]
pub struct Api {
    control: Arc<Control>,
}

impl Api {
    pub fn new(control: Arc<Control>) -> Api {
        Api { control }
    }

    /// Runs `f` with the caller on a blocking thread.
    async fn call<Req, T>(
        &self,
        req: Request<Req>,
        f: impl FnOnce(&Arc<Control>, &Caller, Req) -> Result<T, Error> + Send + 'static,
    ) -> Result<Response<T>, Status>
    where
        Req: Send + 'static,
        T: Send + 'static,
    {
        let who = caller(&req)?;
        let control = self.control.clone();
        let msg = req.into_inner();
        tokio::task::spawn_blocking(move || f(&control, &who, msg))
            .await
            .map_err(|e| Status::internal(format!("request task failed: {e}")))?
            .map(Response::new)
            .map_err(status)
    }
}

/// The one mapping of the control plane's errors to gRPC status codes.
pub fn status(e: Error) -> Status {
    match e {
        Error::InvalidArgument(m) => Status::invalid_argument(m),
        Error::NotFound(m) => Status::not_found(m),
        Error::Conflict(m) => Status::already_exists(m),
        Error::Precondition(m) => Status::failed_precondition(m),
        Error::Quota(m) => Status::resource_exhausted(m),
        Error::PermissionDenied(m) => Status::permission_denied(m),
        Error::Unauthenticated(m) => Status::unauthenticated(m),
        Error::Cancelled(m) => Status::cancelled(m),
        Error::Unavailable(m) => Status::unavailable(m),
        Error::Internal(m) => Status::internal(m),
    }
}

/// RFC 3339, or "" for none.
fn ts(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

fn volume_pb(v: VolumeRow) -> pb::Volume {
    pb::Volume {
        id: v.id.to_string(),
        name: v.name,
        path: v.path,
        size_bytes: v.size,
        size: gib_ceil(v.size),
        status: v.status.as_str().into(),
        encrypted: v.encrypted,
        encryption_key_id: v.encryption_key_id.map(|k| k.to_string()),
        project_id: v.project_id,
        user_id: v.user_id,
        created_at: ts(Some(v.created_at)),
        updated_at: ts(Some(v.updated_at)),
        busy_job_id: v.busy_job.map(|j| j.to_string()),
        tags: tags_pb(v.tags),
        server_id: v.server_id,
    }
}

fn tags_pb(t: Vec<(String, String)>) -> Vec<pb::Tag> {
    t.into_iter()
        .map(|(key, value)| pb::Tag { key, value })
        .collect()
}

fn tags_in(t: Vec<pb::Tag>) -> Vec<(String, String)> {
    t.into_iter().map(|t| (t.key, t.value)).collect()
}

fn resource_in(r: pb::Resource) -> ResourceRow {
    ResourceRow {
        id: r.id,
        kind: r.r#type,
        name: r.name,
        exclude_volumes: r.extra_info.map(|e| e.exclude_volumes).unwrap_or_default(),
    }
}

fn billing_in(b: pb::Billing) -> BillingRow {
    BillingRow {
        cloud_type: b.cloud_type,
        consistent_level: b.consistent_level,
        object_type: b.object_type,
        protect_type: b.protect_type,
        size_gb: b.size,
        charging_mode: b.charging_mode,
        period_type: b.period_type,
        period_num: b.period_num,
        is_auto_renew: b.is_auto_renew,
        is_auto_pay: b.is_auto_pay,
        console_url: b.console_url,
        is_multi_az: b.is_multi_az,
    }
}

fn vault_pb(c: &Control, view: VaultView) -> pb::Vault {
    let v = view.vault;
    let spec_code = match v.billing.object_type.as_str() {
        "server" => "vault.backup.server.normal",
        "turbo" => "vault.backup.turbo.normal",
        _ => "vault.backup.volume.normal",
    };
    let resources = v
        .resources
        .into_iter()
        .zip(view.resources)
        .map(
            |(r, (size, backup_size, backup_count, busy))| pb::Resource {
                id: r.id,
                r#type: r.kind,
                name: r.name,
                extra_info: Some(pb::ResourceExtraInfo {
                    exclude_volumes: r.exclude_volumes,
                }),
                protect_status: if busy { "protecting" } else { "available" }.into(),
                size: gib_ceil(size) as i64,
                backup_size: backup_size as i64,
                backup_count: backup_count as i64,
            },
        )
        .collect();
    let b = v.billing;
    pb::Vault {
        id: v.id.to_string(),
        name: v.name,
        description: v.description,
        billing: Some(pb::Billing {
            allocated: b.size_gb,
            used: view.used_bytes.div_ceil(crate::vault::MB) as i64,
            status: if v.locked { "locked" } else { "available" }.into(),
            spec_code: spec_code.into(),
            cloud_type: b.cloud_type,
            consistent_level: b.consistent_level,
            object_type: b.object_type,
            protect_type: b.protect_type,
            size: b.size_gb,
            charging_mode: b.charging_mode,
            period_type: b.period_type,
            period_num: b.period_num,
            is_auto_renew: b.is_auto_renew,
            is_auto_pay: b.is_auto_pay,
            console_url: b.console_url,
            is_multi_az: b.is_multi_az,
        }),
        resources,
        tags: tags_pb(v.tags),
        backup_policy_id: v
            .backup_policy_id
            .map(|p| p.to_string())
            .unwrap_or_default(),
        auto_bind: v.auto_bind,
        bind_rules: Some(pb::VaultBindRules {
            tags: tags_pb(v.bind_rules),
        }),
        auto_expand: v.auto_expand,
        threshold: v.threshold,
        smn_notify: v.smn_notify,
        backup_name_prefix: v.backup_name_prefix,
        locked: v.locked,
        created_at: ts(Some(v.created_at)),
        project_id: v.project_id,
        user_id: v.user_id,
        enterprise_project_id: v.enterprise_project_id,
        provider_id: crate::vault::PROVIDER_ID.into(),
        demand_billing: v.demand_billing,
        object_lock: crate::lockjob::vault_status(c, v.locked),
        sys_lock_source_service: v.sys_lock_source_service,
        threshold_events: v.threshold_events,
    }
}

fn backup_pb(b: BackupRow, has_dependent_backups: bool) -> pb::Backup {
    pb::Backup {
        id: b.id.to_string(),
        name: b.name,
        description: b.description,
        status: b.status.as_str().into(),
        fail_reason: b.fail_reason.unwrap_or_default(),
        volume_id: b.volume_id.to_string(),
        container: b.container,
        size: gib_ceil(b.size),
        size_bytes: b.size,
        object_count: b.object_count,
        is_incremental: b.is_incremental,
        parent_id: b.parent_id.map(|p| p.to_string()).unwrap_or_default(),
        has_dependent_backups,
        availability_zone: b.availability_zone,
        snapshot_id: b.snapshot_id.map(|s| s.to_string()).unwrap_or_default(),
        created_at: ts(Some(b.created_at)),
        updated_at: ts(Some(b.updated_at)),
        data_timestamp: ts(b.data_timestamp),
        project_id: b.project_id,
        user_id: b.user_id,
        metadata: b.metadata.into_iter().collect(),
        encryption_key_id: if b.encrypted {
            b.encryption_key_id.map(|k| k.to_string())
        } else {
            None
        },
        stored_bytes: b.stored_bytes,
        job_id: b.job_id.map(|j| j.to_string()).unwrap_or_default(),
        cbt: b.cbt.map(|c| pb::CbtResult {
            source: c.source,
            changed_bytes: c.changed_bytes,
            read_bytes: c.read_bytes,
            sampled_bytes: c.sampled_bytes,
            mismatch_offset: c.mismatch_offset,
            full_read: c.full_read,
        }),
    }
}

/// A job message; rate and ETA come from the bytes done since it started.
pub fn job_pb(j: JobRow) -> pb::Job {
    let (rate, eta) = match (j.state, j.started_at) {
        (JobState::Running, Some(start)) => {
            let secs = (OffsetDateTime::now_utc() - start)
                .as_seconds_f64()
                .max(1e-3);
            let rate = j.bytes_done as f64 / secs;
            let left = j.bytes_total.saturating_sub(j.bytes_done) as f64;
            (rate, (rate > 0.0).then(|| left / rate))
        }
        (_, Some(start)) if j.state.is_final() => {
            let end = j.finished_at.unwrap_or(start);
            let secs = (end - start).as_seconds_f64().max(1e-3);
            (j.bytes_done as f64 / secs, Some(0.0))
        }
        _ => (0.0, None),
    };
    pb::Job {
        id: j.id.to_string(),
        kind: j.kind.as_str().into(),
        state: j.state.as_str().into(),
        backup_id: j.backup_id.to_string(),
        volume_id: j.volume_id.to_string(),
        project_id: j.project_id,
        bytes_done: j.bytes_done,
        bytes_total: j.bytes_total,
        bytes_stored: j.bytes_stored,
        rate_bytes_per_sec: rate,
        eta_seconds: eta,
        created_at: ts(Some(j.created_at)),
        started_at: ts(j.started_at),
        finished_at: ts(j.finished_at),
        fail_reason: j.fail_reason.unwrap_or_default(),
    }
}

fn sorted(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

#[tonic::async_trait]
impl pb::volumes_server::Volumes for Api {
    async fn register(
        &self,
        req: Request<pb::RegisterVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        self.call(req, |c, who, r| {
            c.volumes()
                .register(
                    who,
                    &r.id,
                    &r.name,
                    &r.path,
                    r.encrypted,
                    tags_in(r.tags),
                    &r.server_id,
                )
                .map(volume_pb)
        })
        .await
    }

    async fn list(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        self.call(req, |c, who, r| {
            let page = PageQuery {
                limit: r.limit,
                offset: r.offset,
                marker: r.marker,
            };
            let (volumes, next) = c.volumes().list(who, r.all_tenants, &page)?;
            Ok(pb::ListVolumesResponse {
                volumes: volumes.into_iter().map(volume_pb).collect(),
                next_marker: marker(next),
            })
        })
        .await
    }

    async fn get(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        self.call(req, |c, who, r| {
            c.volumes().get(who, &r.volume_id).map(volume_pb)
        })
        .await
    }

    async fn update(
        &self,
        req: Request<pb::UpdateVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        self.call(req, |c, who, r| {
            c.volumes()
                .update(
                    who,
                    &r.volume_id,
                    r.name.as_deref(),
                    r.status.as_deref(),
                    r.replace_tags.then(|| tags_in(r.tags)),
                    r.server_id.as_deref(),
                )
                .map(volume_pb)
        })
        .await
    }

    async fn unregister(
        &self,
        req: Request<pb::UnregisterVolumeRequest>,
    ) -> Result<Response<pb::UnregisterVolumeResponse>, Status> {
        self.call(req, |c, who, r| {
            c.volumes()
                .unregister(who, &r.volume_id)
                .map(|()| pb::UnregisterVolumeResponse {})
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::backups_server::Backups for Api {
    async fn create(
        &self,
        req: Request<pb::CreateBackupRequest>,
    ) -> Result<Response<pb::CreateBackupResponse>, Status> {
        self.call(req, |c, who, r| {
            let (b, j) = c.backups().create(
                who,
                CreateBackup {
                    volume_id: r.volume_id,
                    name: r.name,
                    description: r.description,
                    container: r.container,
                    incremental: r.incremental,
                    force: r.force,
                    metadata: sorted(r.metadata),
                    availability_zone: r.availability_zone,
                    snapshot_id: r.snapshot_id,
                    at: None,
                    changed_extents: (!r.changed_extents.is_empty())
                        .then(|| r.changed_extents.into_bytes().into()),
                    cbt_sample: r.cbt_sample,
                    cbt_full_read_on_mismatch: r.cbt_full_read_on_mismatch,
                },
            )?;
            Ok(pb::CreateBackupResponse {
                backup: Some(backup_pb(b, false)),
                job_id: j.id.to_string(),
            })
        })
        .await
    }

    async fn list(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        self.call(req, |c, who, r| {
            let page = c.backups().list(
                who,
                &ListQuery {
                    sort: r.sort,
                    page: PageQuery {
                        limit: r.limit,
                        offset: r.offset,
                        marker: r.marker,
                    },
                    all_tenants: r.all_tenants,
                    filters: sorted(r.filters),
                },
            )?;
            let mut out = pb::ListBackupsResponse {
                count: r.with_count.then_some(page.count),
                next_marker: marker(page.next),
                ..Default::default()
            };
            for b in page.backups {
                if r.detail {
                    let dep = page.parents.contains(&b.id);
                    out.backups.push(backup_pb(b, dep));
                } else {
                    out.summaries.push(pb::BackupSummary {
                        id: b.id.to_string(),
                        name: b.name,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn get(
        &self,
        req: Request<pb::GetBackupRequest>,
    ) -> Result<Response<pb::Backup>, Status> {
        self.call(req, |c, who, r| {
            let (b, dep) = c.backups().get(who, &r.backup_id)?;
            Ok(backup_pb(b, dep))
        })
        .await
    }

    async fn update(
        &self,
        req: Request<pb::UpdateBackupRequest>,
    ) -> Result<Response<pb::Backup>, Status> {
        self.call(req, |c, who, r| {
            let (b, dep) = c.backups().update(
                who,
                &r.backup_id,
                r.name.as_deref(),
                r.description.as_deref(),
                r.metadata.map(|m| sorted(m.items)),
            )?;
            Ok(backup_pb(b, dep))
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteBackupRequest>,
    ) -> Result<Response<pb::DeleteBackupResponse>, Status> {
        self.call(req, |c, who, r| {
            c.backups()
                .delete(who, &r.backup_id)
                .map(|()| pb::DeleteBackupResponse {})
        })
        .await
    }

    async fn restore(
        &self,
        req: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupResponse>, Status> {
        self.call(req, |c, who, r| {
            let (backup, volume, job) =
                c.backups()
                    .restore(who, &r.backup_id, &r.volume_id, &r.name)?;
            Ok(pb::RestoreBackupResponse {
                backup_id: backup.to_string(),
                volume_id: volume.id.to_string(),
                volume_name: volume.name,
                job_id: job.id.to_string(),
            })
        })
        .await
    }

    async fn export_record(
        &self,
        req: Request<pb::ExportRecordRequest>,
    ) -> Result<Response<pb::BackupRecord>, Status> {
        self.call(req, |c, who, r| {
            let (backup_service, backup_url) = export::export(c, who, &r.backup_id)?;
            Ok(pb::BackupRecord {
                backup_service,
                backup_url,
            })
        })
        .await
    }

    async fn import_record(
        &self,
        req: Request<pb::BackupRecord>,
    ) -> Result<Response<pb::Backup>, Status> {
        self.call(req, |c, who, r| {
            let b = export::import(c, who, &r.backup_service, &r.backup_url)?;
            Ok(backup_pb(b, false))
        })
        .await
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::Job, Status>> + Send>>;

#[tonic::async_trait]
impl pb::jobs_server::Jobs for Api {
    async fn get(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.call(req, |c, who, r| c.jobs().get(who, &r.job_id).map(job_pb))
            .await
    }

    async fn list(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.call(req, |c, who, r| {
            let page = PageQuery {
                limit: r.limit,
                offset: r.offset,
                marker: r.marker,
            };
            let (jobs, next) = c.jobs().list(who, r.all_tenants, &r.state, &page)?;
            Ok(pb::ListJobsResponse {
                jobs: jobs.into_iter().map(job_pb).collect(),
                next_marker: marker(next),
            })
        })
        .await
    }

    type WatchStream = JobStream;

    async fn watch(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let first = self
            .call(req, |c, who, r| c.jobs().get(who, &r.job_id))
            .await?
            .into_inner();
        let control = self.control.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut changes = control.subscribe();
            let mut last: Option<pb::Job> = None;
            let id = first.id;
            while let Some(row) = control.jobs().snapshot(&id) {
                let done = row.state.is_final();
                let msg = job_pb(row);
                let changed = last.as_ref().is_none_or(|l| {
                    l.state != msg.state
                        || l.bytes_done != msg.bytes_done
                        || l.bytes_stored != msg.bytes_stored
                });
                if changed {
                    if tx.send(Ok(msg.clone())).await.is_err() {
                        break;
                    }
                    last = Some(msg);
                }
                if done {
                    break;
                }
                if control.jobs().is_shutting_down() {
                    let _ = tx
                        .send(Err(Status::unavailable("the daemon is shutting down")))
                        .await;
                    break;
                }
                // A client that went away ends the stream at once, whether or not the job
                // moves: abandoned streams must not pile up tasks.
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.call(req, |c, who, r| c.jobs().cancel(who, &r.job_id).map(job_pb))
            .await
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::VaultEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::vaults_server::Vaults for Api {
    async fn create(
        &self,
        req: Request<pb::CreateVaultRequest>,
    ) -> Result<Response<pb::Vault>, Status> {
        self.call(req, |c, who, r| {
            c.vaults()
                .create(
                    who,
                    VaultSpec {
                        name: r.name,
                        description: r.description,
                        billing: r.billing.map(billing_in),
                        resources: r.resources.into_iter().map(resource_in).collect(),
                        tags: tags_in(r.tags),
                        backup_policy_id: r.backup_policy_id,
                        auto_bind: r.auto_bind,
                        bind_rules: r.bind_rules.map(|b| tags_in(b.tags)).unwrap_or_default(),
                        auto_expand: r.auto_expand,
                        threshold: r.threshold,
                        smn_notify: r.smn_notify,
                        backup_name_prefix: r.backup_name_prefix,
                        locked: r.locked,
                        enterprise_project_id: r.enterprise_project_id,
                        demand_billing: r.demand_billing,
                        sys_lock_source_service: r.sys_lock_source_service,
                    },
                )
                .map(|v| vault_pb(c, v))
        })
        .await
    }

    async fn get(&self, req: Request<pb::GetVaultRequest>) -> Result<Response<pb::Vault>, Status> {
        self.call(req, |c, who, r| {
            c.vaults().get(who, &r.vault_id).map(|v| vault_pb(c, v))
        })
        .await
    }

    async fn list(
        &self,
        req: Request<pb::ListVaultsRequest>,
    ) -> Result<Response<pb::ListVaultsResponse>, Status> {
        self.call(req, |c, who, r| {
            let page = PageQuery {
                limit: r.limit,
                offset: r.offset,
                marker: r.marker,
            };
            let (vaults, next) = c.vaults().list(who, r.all_tenants, &page)?;
            Ok(pb::ListVaultsResponse {
                vaults: vaults.into_iter().map(|v| vault_pb(c, v)).collect(),
                next_marker: marker(next),
            })
        })
        .await
    }

    async fn update(
        &self,
        req: Request<pb::UpdateVaultRequest>,
    ) -> Result<Response<pb::Vault>, Status> {
        self.call(req, |c, who, r| {
            c.vaults()
                .update(
                    who,
                    &r.vault_id,
                    VaultUpdate {
                        name: r.name,
                        description: r.description,
                        size_gb: r.size,
                        auto_bind: r.auto_bind,
                        bind_rules: r.bind_rules.map(|b| tags_in(b.tags)),
                        auto_expand: r.auto_expand,
                        threshold: r.threshold,
                        smn_notify: r.smn_notify,
                        backup_name_prefix: r.backup_name_prefix,
                        locked: r.locked,
                        backup_policy_id: r.backup_policy_id,
                        tags: r.replace_tags.then(|| tags_in(r.tags)),
                    },
                )
                .map(|v| vault_pb(c, v))
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteVaultRequest>,
    ) -> Result<Response<pb::DeleteVaultResponse>, Status> {
        self.call(req, |c, who, r| {
            c.vaults()
                .delete(who, &r.vault_id)
                .map(|()| pb::DeleteVaultResponse {})
        })
        .await
    }

    async fn add_resources(
        &self,
        req: Request<pb::AddResourcesRequest>,
    ) -> Result<Response<pb::Vault>, Status> {
        self.call(req, |c, who, r| {
            c.vaults()
                .add_resources(
                    who,
                    &r.vault_id,
                    r.resources.into_iter().map(resource_in).collect(),
                )
                .map(|v| vault_pb(c, v))
        })
        .await
    }

    async fn remove_resources(
        &self,
        req: Request<pb::RemoveResourcesRequest>,
    ) -> Result<Response<pb::Vault>, Status> {
        self.call(req, |c, who, r| {
            c.vaults()
                .remove_resources(who, &r.vault_id, &r.resource_ids)
                .map(|v| vault_pb(c, v))
        })
        .await
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        req: Request<pb::WatchVaultEventsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = caller(&req)?;
        let only = self
            .control
            .vaults()
            .check_watch(&who, &req.get_ref().vault_id)
            .map_err(status)?;
        let mut events = self.control.vaults().events();
        let mut changes = self.control.subscribe();
        let control = self.control.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = events.recv() => match e {
                        Ok(e) => {
                            if only.is_some_and(|v| v != e.vault_id) || !who.sees(&e.project_id) {
                                continue;
                            }
                            let msg = pb::VaultEvent {
                                vault_id: e.vault_id.to_string(),
                                kind: e.kind.into(),
                                used_mb: e.used_mb,
                                capacity_gb: e.capacity_gb,
                                threshold: e.threshold,
                                message: e.message,
                                at: ts(Some(e.at)),
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                break;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx.send(Err(Status::data_loss(format!("{n} vault events were dropped; watch again")))).await;
                            break;
                        }
                        Err(_) => break,
                    },
                    r = changes.changed() => {
                        if r.is_err() || control.jobs().is_shutting_down() {
                            break;
                        }
                    }
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The next page's marker on the wire ("" on the last page).
fn marker(next: Option<uuid::Uuid>) -> String {
    next.map(|u| u.to_string()).unwrap_or_default()
}

fn policy_pb(p: crate::model::PolicyRow) -> pb::Policy {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    pb::Policy {
        id: p.id.to_string(),
        name: p.name,
        enabled: p.enabled,
        schedule: Some(pb::Schedule {
            interval_seconds: p.interval_seconds,
            days: p
                .days
                .iter()
                .map(|d| DAYS[*d as usize % 7].to_string())
                .collect(),
            times: p
                .times
                .iter()
                .map(|m| format!("{:02}:{:02}", m / 60, m % 60))
                .collect(),
        }),
        full_every: p.full_every,
        retention: Some(pb::Retention {
            max_backups: p.max_backups,
            max_days: p.max_days,
            daily: p.keep_daily,
            weekly: p.keep_weekly,
            monthly: p.keep_monthly,
        }),
        project_id: p.project_id,
        created_at: ts(Some(p.created_at)),
        updated_at: ts(Some(p.updated_at)),
    }
}

fn schedule_in(s: pb::Schedule) -> (u64, Vec<String>, Vec<String>) {
    (s.interval_seconds, s.days, s.times)
}

fn retention_in(r: pb::Retention) -> crate::policy::RetentionSpec {
    (r.max_backups, r.max_days, r.daily, r.weekly, r.monthly)
}

#[tonic::async_trait]
impl pb::policies_server::Policies for Api {
    async fn create(
        &self,
        req: Request<pb::CreatePolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.call(req, |c, who, r| {
            c.policies()
                .create(
                    who,
                    &r.id,
                    PolicySpec {
                        name: Some(r.name),
                        enabled: Some(r.enabled),
                        schedule: r.schedule.map(schedule_in),
                        full_every: Some(r.full_every),
                        retention: Some(retention_in(r.retention.unwrap_or_default())),
                    },
                )
                .map(policy_pb)
        })
        .await
    }

    async fn get(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.call(req, |c, who, r| {
            c.policies().get(who, &r.policy_id).map(policy_pb)
        })
        .await
    }

    async fn list(
        &self,
        req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        self.call(req, |c, who, r| {
            Ok(pb::ListPoliciesResponse {
                policies: c
                    .policies()
                    .list(who, r.all_tenants)?
                    .into_iter()
                    .map(policy_pb)
                    .collect(),
            })
        })
        .await
    }

    async fn update(
        &self,
        req: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.call(req, |c, who, r| {
            c.policies()
                .update(
                    who,
                    &r.policy_id,
                    PolicySpec {
                        name: r.name,
                        enabled: r.enabled,
                        schedule: r.schedule.map(schedule_in),
                        full_every: r.full_every,
                        retention: r.retention.map(retention_in),
                    },
                )
                .map(policy_pb)
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        self.call(req, |c, who, r| {
            c.policies()
                .delete(who, &r.policy_id)
                .map(|()| pb::DeletePolicyResponse {})
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for Api {
    async fn run_gc(
        &self,
        req: Request<pb::RunGcRequest>,
    ) -> Result<Response<pb::GcReport>, Status> {
        self.call(req, |c, who, _| {
            if who.role != crate::config::Role::Admin {
                return Err(Error::permission_denied(
                    "garbage collection is for admins only",
                ));
            }
            let t = std::time::Instant::now();
            let r = c.gc().map_err(Error::from)?;
            Ok(pb::GcReport {
                reclaimed_bytes: r.reclaimed_bytes(),
                dead_refs: r.dead_refs,
                deletes_finished: r.deletes_finished,
                chunks_removed: r.chunks_removed,
                packs_deleted: r.packs_deleted,
                packs_rewritten: r.packs_rewritten,
                orphan_packs_deleted: r.orphan_packs_deleted,
                pack_bytes_before: r.pack_bytes_before,
                pack_bytes_after: r.pack_bytes_after,
                seconds: t.elapsed().as_secs_f64(),
            })
        })
        .await
    }
}
