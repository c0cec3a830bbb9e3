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
use crate::export;
use crate::model::{gib_ceil, BackupRow, JobRow, JobState, VolumeRow};

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
        f: impl FnOnce(&Arc<Control>, &Caller, Req) -> Result<T, Status> + Send + 'static,
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
            c.register_volume(who, &r.id, &r.name, &r.path, r.encrypted)
                .map(volume_pb)
        })
        .await
    }

    async fn list(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        self.call(req, |c, who, r| {
            Ok(pb::ListVolumesResponse {
                volumes: c
                    .list_volumes(who, r.all_tenants)?
                    .into_iter()
                    .map(volume_pb)
                    .collect(),
            })
        })
        .await
    }

    async fn get(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        self.call(req, |c, who, r| {
            c.get_volume(who, &r.volume_id).map(volume_pb)
        })
        .await
    }

    async fn update(
        &self,
        req: Request<pb::UpdateVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        self.call(req, |c, who, r| {
            c.update_volume(who, &r.volume_id, r.name.as_deref(), r.status.as_deref())
                .map(volume_pb)
        })
        .await
    }

    async fn unregister(
        &self,
        req: Request<pb::UnregisterVolumeRequest>,
    ) -> Result<Response<pb::UnregisterVolumeResponse>, Status> {
        self.call(req, |c, who, r| {
            c.unregister_volume(who, &r.volume_id)
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
            let (b, j) = c.create_backup(
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
            let page = c.list_backups(
                who,
                &ListQuery {
                    sort: r.sort,
                    limit: r.limit,
                    offset: r.offset,
                    marker: r.marker,
                    all_tenants: r.all_tenants,
                    filters: sorted(r.filters),
                },
            )?;
            let mut out = pb::ListBackupsResponse {
                count: r.with_count.then_some(page.count),
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
            let (b, dep) = c.get_backup(who, &r.backup_id)?;
            Ok(backup_pb(b, dep))
        })
        .await
    }

    async fn update(
        &self,
        req: Request<pb::UpdateBackupRequest>,
    ) -> Result<Response<pb::Backup>, Status> {
        self.call(req, |c, who, r| {
            let (b, dep) = c.update_backup(
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
            c.delete_backup(who, &r.backup_id)
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
                c.restore_backup(who, &r.backup_id, &r.volume_id, &r.name)?;
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
        self.call(req, |c, who, r| c.get_job(who, &r.job_id).map(job_pb))
            .await
    }

    async fn list(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.call(req, |c, who, r| {
            Ok(pb::ListJobsResponse {
                jobs: c
                    .list_jobs(who, r.all_tenants, &r.state)?
                    .into_iter()
                    .map(job_pb)
                    .collect(),
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
            .call(req, |c, who, r| c.get_job(who, &r.job_id))
            .await?
            .into_inner();
        let control = self.control.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut changes = control.subscribe();
            let mut last: Option<pb::Job> = None;
            let id = first.id;
            while let Some(row) = control.job_snapshot(&id) {
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
                if control.is_shutting_down() {
                    let _ = tx
                        .send(Err(Status::unavailable("the daemon is shutting down")))
                        .await;
                    break;
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
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
        self.call(req, |c, who, r| c.cancel_job(who, &r.job_id).map(job_pb))
            .await
    }
}
