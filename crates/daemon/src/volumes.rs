//! Volumes: registering a device or image file, listing, showing, updating and unregistering
//! it, under the rules of the Cinder volume fields the backups API refers to.
use std::os::unix::ffi::OsStrExt;

use blockvault_core::VolumeId;
use blockvault_engine::Engine;
use uuid::Uuid;

use crate::auth::Caller;
use crate::check::{check_len, check_path, parse_uuid};
use crate::error::{Error, Result};
use crate::hostpath::{HostPaths, Identity};
use crate::model::*;
use crate::page::{window, PageQuery};
use crate::state::{visible_volume, Changes, Rows, State};

/// The volume calls, over what they need.
pub struct Volumes<'a> {
    rows: &'a Rows,
    engine: &'a Engine,
    host: &'a HostPaths,
    max_vault_resources: usize,
}

impl<'a> Volumes<'a> {
    pub(crate) fn new(
        rows: &'a Rows,
        engine: &'a Engine,
        host: &'a HostPaths,
        max_vault_resources: usize,
    ) -> Volumes<'a> {
        Volumes {
            rows,
            engine,
            host,
            max_vault_resources,
        }
    }

    /// Volumes.Register.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        caller: &Caller,
        id: &str,
        name: &str,
        path: &[u8],
        encrypted: bool,
        tags: Vec<(String, String)>,
        server_id: &str,
    ) -> Result<VolumeRow> {
        caller.must_write()?;
        let id = if id.is_empty() {
            Uuid::new_v4()
        } else {
            parse_uuid("id", id)?
        };
        check_len("name", name)?;
        check_len("server_id", server_id)?;
        let tags = crate::check::check_tags("tags", tags)?;
        let path_os = check_path(path)?;
        let checked = self
            .host
            .check(path_os)
            .map_err(|e| Error::invalid_argument(e.to_string()))?;
        let size = checked.size;
        let identity = checked.identity;
        let path = checked.path.as_os_str().as_bytes().to_vec();
        {
            let st = self.rows.lock();
            self.check_new_volume(&st, caller, id, identity)?;
        }
        if self
            .engine
            .encryption_key_id(&VolumeId::new(id.to_string()).map_err(Error::internal)?)
            .map_err(Error::from)?
            .is_some()
        {
            return Err(Error::already_exists(format!(
                "id: {id} was used before and cannot be used again"
            )));
        }
        let encryption_key_id = if encrypted {
            let vid = VolumeId::new(id.to_string()).map_err(Error::internal)?;
            Some(self.engine.ensure_volume_key(&vid).map_err(Error::from)?)
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
        let mut st = self.rows.lock();
        self.check_new_volume(&st, caller, id, identity)?;
        let mut ch = Changes::volume(row.clone());
        ch.vaults = crate::vault::auto_bind(&st, &row, self.max_vault_resources);
        ch.commit(&self.rows.db, &mut st)?;
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
    ) -> Result<()> {
        if st.volumes.contains_key(&id)
            || st.retired.contains(&id)
            || st.backups.values().any(|b| b.volume_id == id)
        {
            return Err(Error::already_exists(format!(
                "id: {id} was used before and cannot be used again"
            )));
        }
        if let Some(v) = st.volumes.values().find(|v| v.identity == Some(identity)) {
            return Err(Error::already_exists(if caller.sees(&v.project_id) {
                format!("path: already registered as volume {}", v.id)
            } else {
                "path: this device or file is already registered as a volume".to_string()
            }));
        }
        Ok(())
    }

    /// Volumes.List, oldest first.
    pub fn list(
        &self,
        caller: &Caller,
        all_tenants: bool,
        page: &PageQuery,
    ) -> Result<(Vec<VolumeRow>, Option<Uuid>), Error> {
        caller.may_list_all(all_tenants)?;
        let st = self.rows.lock();
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
    pub fn get(&self, caller: &Caller, id: &str) -> Result<VolumeRow> {
        let id = parse_uuid("volume_id", id)?;
        let st = self.rows.lock();
        visible_volume(&st, caller, &id).cloned()
    }

    /// Volumes.Update.
    pub fn update(
        &self,
        caller: &Caller,
        id: &str,
        name: Option<&str>,
        status: Option<&str>,
        tags: Option<Vec<(String, String)>>,
        server_id: Option<&str>,
    ) -> Result<VolumeRow> {
        caller.must_write()?;
        let id = parse_uuid("volume_id", id)?;
        let tags = tags
            .map(|t| crate::check::check_tags("tags", t))
            .transpose()?;
        if let Some(s) = server_id {
            check_len("server_id", s)?;
        }
        let mut st = self.rows.lock();
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
                    return Err(Error::invalid_argument(format!(
                        "status: {other:?} is not one of available, in-use"
                    )))
                }
            };
            if v.busy_job.is_some() || v.status == VolumeStatus::Creating {
                return Err(Error::failed_precondition(format!(
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
        ch.commit(&self.rows.db, &mut st)?;
        Ok(v)
    }

    /// Volumes.Unregister.
    pub fn unregister(&self, caller: &Caller, id: &str) -> Result<()> {
        caller.must_write()?;
        let id = parse_uuid("volume_id", id)?;
        let mut st = self.rows.lock();
        visible_volume(&st, caller, &id)?;
        if let Some(j) = st
            .jobs
            .values()
            .find(|j| j.volume_id == id && !j.state.is_final())
        {
            return Err(Error::failed_precondition(format!(
                "volume {id} is used by {} job {}",
                j.state.as_str(),
                j.id
            )));
        }
        Changes {
            gone_volumes: vec![id],
            ..Default::default()
        }
        .commit(&self.rows.db, &mut st)?;
        Ok(())
    }
}
