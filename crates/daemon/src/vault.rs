//! Vaults and backup policies (the cloud vault API): validation, capacity and threshold events,
//! locked vaults, resource binding.
//!
//! **Usage.** A vault's `used` is the stored size of the distinct chunks its available backups
//! reference, kept exactly by the usage ledger (`usage.rs`): a chunk shared by several backups of
//! the vault counts once, and a chunk shared with another vault counts in both.

use uuid::Uuid;

use crate::auth::Caller;
use crate::check::{charset, check_tags, max_chars, one_of, parse_uuid};
use crate::error::{Error, Result};
use crate::model::*;
use crate::objectlock::LockKeeper;
use crate::state::{Changes, Rows, State, VaultEvent};

/// Bytes in a GB (the API's capacity unit).
pub const GB: u64 = 1_000_000_000;
/// Bytes in an MB (the API's usage unit).
pub const MB: u64 = 1_000_000;
/// Largest capacity the API accepts, in GB.
pub const MAX_SIZE_GB: i64 = 10_485_760;
/// The `provider_id` reported for vaults.
pub const PROVIDER_ID: &str = "0daac4c5-6707-4851-97ba-169e36266b66";

const RESOURCE_TYPES: [&str; 6] = [
    "OS::Nova::Server",
    "OS::Cinder::Volume",
    "OS::Ironic::BareMetalServer",
    "OS::Native::Server",
    "OS::Sfs::Turbo",
    "OS::Workspace::DesktopV2",
];
const SERVER_TYPES: [&str; 3] = [
    "OS::Nova::Server",
    "OS::Ironic::BareMetalServer",
    "OS::Native::Server",
];
const VOLUME_TYPE: &str = "OS::Cinder::Volume";

/// What Vaults.Create asks for (validated here).
#[derive(Clone, Debug, Default)]
pub struct VaultSpec {
    pub name: String,
    pub description: String,
    pub billing: Option<BillingRow>,
    pub resources: Vec<ResourceRow>,
    pub tags: Vec<(String, String)>,
    pub backup_policy_id: String,
    pub auto_bind: bool,
    pub bind_rules: Vec<(String, String)>,
    pub auto_expand: bool,
    pub threshold: Option<i32>,
    pub smn_notify: Option<bool>,
    pub backup_name_prefix: String,
    pub locked: bool,
    pub enterprise_project_id: String,
    pub demand_billing: bool,
    pub sys_lock_source_service: String,
}

/// What Vaults.Update asks for.
#[derive(Clone, Debug, Default)]
pub struct VaultUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub size_gb: Option<i64>,
    pub auto_bind: Option<bool>,
    pub bind_rules: Option<Vec<(String, String)>>,
    pub auto_expand: Option<bool>,
    pub threshold: Option<i32>,
    pub smn_notify: Option<bool>,
    pub backup_name_prefix: Option<String>,
    pub locked: Option<bool>,
    pub backup_policy_id: Option<String>,
    pub tags: Option<Vec<(String, String)>>,
}

/// A vault with its usage, for answers.
pub struct VaultView {
    pub vault: VaultRow,
    pub used_bytes: u64,
    /// Per resource id: (size in bytes of its volumes, backup bytes, backup count, protecting).
    pub resources: Vec<(u64, u64, u64, bool)>,
}

/// Checks bind rules: at most 5 tags; keys non-empty `[A-Za-z0-9_-]`, values `[A-Za-z0-9._-]`.
fn check_bind_rules(rules: Vec<(String, String)>) -> Result<Vec<(String, String)>> {
    if rules.len() > 5 {
        return Err(Error::invalid(
            "bind_rules.tags",
            format!("{} rules; at most 5 are allowed", rules.len()),
        ));
    }
    let mut out = Vec::new();
    for (i, (k, v)) in rules.into_iter().enumerate() {
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        let kf = format!("bind_rules.tags[{i}].key");
        if k.is_empty() {
            return Err(Error::invalid(&kf, "empty"));
        }
        max_chars(&kf, &k, 36)?;
        charset(&kf, &k, &[])?;
        let vf = format!("bind_rules.tags[{i}].value");
        max_chars(&vf, &v, 43)?;
        charset(&vf, &v, &['.'])?;
        out.push((k, v));
    }
    Ok(out)
}

fn check_billing(b: Option<BillingRow>) -> Result<BillingRow> {
    let mut b = b.ok_or_else(|| Error::invalid("billing", "required"))?;
    if b.cloud_type.is_empty() {
        b.cloud_type = "public".into();
    }
    one_of("billing.cloud_type", &b.cloud_type, &["public", "hybrid"])?;
    one_of(
        "billing.consistent_level",
        &b.consistent_level,
        &["crash_consistent", "app_consistent"],
    )?;
    one_of(
        "billing.object_type",
        &b.object_type,
        &[
            "server",
            "disk",
            "turbo",
            "workspace",
            "vmware",
            "rds",
            "file",
        ],
    )?;
    one_of(
        "billing.protect_type",
        &b.protect_type,
        &["backup", "replication"],
    )?;
    check_size(b.size_gb)?;
    if b.charging_mode.is_empty() {
        b.charging_mode = "post_paid".into();
    }
    one_of(
        "billing.charging_mode",
        &b.charging_mode,
        &["post_paid", "pre_paid"],
    )?;
    if b.charging_mode == "pre_paid" {
        one_of("billing.period_type", &b.period_type, &["year", "month"])?;
        if b.period_num < 1 {
            return Err(Error::invalid(
                "billing.period_num",
                "required (at least 1) for pre_paid",
            ));
        }
    } else if !b.period_type.is_empty() {
        one_of("billing.period_type", &b.period_type, &["year", "month"])?;
    }
    max_chars("billing.console_url", &b.console_url, 255)?;
    Ok(b)
}

fn check_size(gb: i64) -> Result<()> {
    if !(1..=MAX_SIZE_GB).contains(&gb) {
        return Err(Error::invalid(
            "billing.size",
            format!("{gb} GB is outside 1..={MAX_SIZE_GB}"),
        ));
    }
    Ok(())
}

fn check_threshold(t: i32) -> Result<i32> {
    if !(1..=100).contains(&t) {
        return Err(Error::invalid(
            "threshold",
            format!("{t} is outside 1..=100"),
        ));
    }
    Ok(t)
}

/// Checks resources against the project's volumes.
fn check_resources(
    st: &State,
    project: &str,
    resources: Vec<ResourceRow>,
    start: usize,
) -> Result<Vec<ResourceRow>> {
    let mut out = Vec::new();
    for (i, r) in resources.into_iter().enumerate() {
        let f = format!("resources[{}]", start + i);
        one_of(&format!("{f}.type"), &r.kind, &RESOURCE_TYPES)?;
        if r.id.trim().is_empty() {
            return Err(Error::invalid(&format!("{f}.id"), "empty"));
        }
        max_chars(&format!("{f}.id"), &r.id, 255)?;
        max_chars(&format!("{f}.name"), &r.name, 255)?;
        if r.kind == VOLUME_TYPE {
            let id = parse_uuid(&format!("{f}.id"), &r.id)?;
            if st.volumes.get(&id).is_none_or(|v| v.project_id != project) {
                return Err(Error::invalid(
                    &format!("{f}.id"),
                    format!("no registered volume {id} in this project"),
                ));
            }
            if !r.exclude_volumes.is_empty() {
                return Err(Error::invalid(
                    &format!("{f}.extra_info.exclude_volumes"),
                    "only server resources exclude volumes",
                ));
            }
        } else if !SERVER_TYPES.contains(&r.kind.as_str()) {
            return Err(Error::invalid(
                &format!("{f}.type"),
                format!(
                    "{} resources cannot be backed up by a block storage node",
                    r.kind
                ),
            ));
        }
        if r.exclude_volumes.len() > 1000 {
            return Err(Error::invalid(
                &format!("{f}.extra_info.exclude_volumes"),
                "at most 1000 volumes",
            ));
        }
        for (j, x) in r.exclude_volumes.iter().enumerate() {
            parse_uuid(&format!("{f}.extra_info.exclude_volumes[{j}]"), x)?;
        }
        out.push(ResourceRow {
            id: r.id.trim().to_string(),
            ..r
        });
    }
    Ok(out)
}

fn check_policy(st: &State, project: &str, id: &str) -> Result<Option<Uuid>> {
    if id.is_empty() {
        return Ok(None);
    }
    let id = parse_uuid("backup_policy_id", id)?;
    if st.policies.get(&id).is_none_or(|p| p.project_id != project) {
        return Err(Error::not_found(format!(
            "backup_policy_id: policy {id} not found"
        )));
    }
    Ok(Some(id))
}

/// Bytes the vault's available backups occupy (see the module docs).
pub(crate) fn used_bytes(st: &State, vault: &Uuid) -> u64 {
    st.usage.get(vault).copied().unwrap_or(0)
}

/// A vault's capacity in bytes.
pub(crate) fn capacity(v: &VaultRow) -> u64 {
    (v.billing.size_gb.max(0) as u64).saturating_mul(GB)
}

/// The vault a new backup goes to, checking that it has room (RESOURCE_EXHAUSTED otherwise).
pub(crate) fn vault_for_backup(
    st: &State,
    vol: &VolumeRow,
    container: &str,
) -> Result<Option<Uuid>> {
    if container.is_empty() {
        return Ok(None);
    }
    let v = st
        .vaults
        .values()
        .filter(|v| v.project_id == vol.project_id)
        .find(|v| v.id.to_string() == container || v.name == container)
        .ok_or_else(|| {
            Error::not_found(format!("container: no vault {container:?} in this project"))
        })?;
    if v.auto_expand {
        return Ok(Some(v.id));
    }
    let used = used_bytes(st, &v.id);
    // Expect about what the volume's newest backup in this vault added.
    let expect = st
        .backups
        .values()
        .filter(|b| b.vault_id == Some(v.id) && b.volume_id == vol.id)
        .filter(|b| b.status == BackupStatus::Available)
        .max_by_key(|b| b.created_at)
        .map_or(0, |b| b.stored_bytes);
    let cap = capacity(v);
    if used >= cap || used + expect > cap {
        return Err(Error::resource_exhausted(format!(
            "vault {} ({}) is full: {} MB used of {} GB{}; raise its capacity, delete backups, \
             or turn on auto_expand",
            v.id,
            v.name,
            used.div_ceil(MB),
            v.billing.size_gb,
            if used < cap {
                format!(
                    " and this volume's last backup added {} MB",
                    expect.div_ceil(MB)
                )
            } else {
                String::new()
            }
        )));
    }
    Ok(Some(v.id))
}

/// Bytes the backup may add before its vault is full (unbounded without a vault or with
/// auto_expand).
pub(crate) fn free_bytes_for(st: &State, backup: &Uuid) -> u64 {
    let Some(v) = st
        .backups
        .get(backup)
        .and_then(|b| b.vault_id)
        .and_then(|v| st.vaults.get(&v))
    else {
        return u64::MAX;
    };
    if v.auto_expand {
        return u64::MAX;
    }
    capacity(v).saturating_sub(used_bytes(st, &v.id))
}

/// The failure reason of a backup stopped because its vault filled up.
pub(crate) fn capacity_message(st: &State, backup: &Uuid) -> String {
    let v = st
        .backups
        .get(backup)
        .and_then(|b| b.vault_id)
        .and_then(|v| st.vaults.get(&v));
    match v {
        Some(v) => format!(
            "RESOURCE_EXHAUSTED: the backup would exceed the capacity of vault {} ({}), {} GB \
             with {} MB used; raise the capacity or turn on auto_expand",
            v.id,
            v.name,
            v.billing.size_gb,
            used_bytes(st, &v.id).div_ceil(MB)
        ),
        None => "RESOURCE_EXHAUSTED: vault capacity exceeded".into(),
    }
}

/// Re-evaluates a vault after its usage changed: grows the capacity under auto_expand, and raises
/// a threshold event once per upward crossing (re-armed when usage falls below). Returns the vault
/// row to write, if changed.
pub(crate) fn after_usage_change(rows: &Rows, st: &State, vault: Uuid) -> Vec<VaultRow> {
    let Some(old) = st.vaults.get(&vault) else {
        return Vec::new();
    };
    let used = used_bytes(st, &vault);
    let mut v = old.clone();
    let mut events = Vec::new();
    if v.auto_expand && used > capacity(&v) {
        let before = v.billing.size_gb;
        v.billing.size_gb = (used.div_ceil(GB) as i64).clamp(1, MAX_SIZE_GB);
        events.push((
            "capacity_expanded",
            format!(
                "vault {} ({}) grew from {before} GB to {} GB to hold {} MB (auto_expand)",
                v.id,
                v.name,
                v.billing.size_gb,
                used.div_ceil(MB)
            ),
        ));
    }
    evaluate_threshold(&mut v, used, &mut events);
    emit(rows, &v, used, events);
    if &v != old {
        vec![v]
    } else {
        Vec::new()
    }
}

fn evaluate_threshold(v: &mut VaultRow, used: u64, events: &mut Vec<(&'static str, String)>) {
    let cap = capacity(v).max(1);
    let above = used.saturating_mul(100) >= cap.saturating_mul(v.threshold as u64);
    if above && !v.above_threshold {
        v.above_threshold = true;
        if v.smn_notify {
            v.threshold_events += 1;
            events.push((
                "threshold_exceeded",
                format!(
                    "vault {} ({}) is {} % full ({} MB of {} GB), at or above its threshold of \
                     {} %",
                    v.id,
                    v.name,
                    used.saturating_mul(100) / cap,
                    used.div_ceil(MB),
                    v.billing.size_gb,
                    v.threshold
                ),
            ));
        }
    } else if !above && v.above_threshold {
        v.above_threshold = false;
    }
}

fn emit(rows: &Rows, v: &VaultRow, used: u64, events: Vec<(&'static str, String)>) {
    for (kind, message) in events {
        tracing::warn!(vault = %v.id, kind, threshold_events = v.threshold_events, "{message}");
        rows.emit(VaultEvent {
            vault_id: v.id,
            project_id: v.project_id.clone(),
            kind,
            used_mb: used.div_ceil(MB) as i64,
            capacity_gb: v.billing.size_gb,
            threshold: v.threshold,
            message,
            at: now(),
        });
    }
}

/// Vaults whose bind rules `vol` matches and that do not hold it yet, with it added. A vault
/// that holds `max` resources already is left alone (logged).
pub(crate) fn auto_bind(st: &State, vol: &VolumeRow, max: usize) -> Vec<VaultRow> {
    st.vaults
        .values()
        .filter(|v| v.project_id == vol.project_id && v.auto_bind && !v.bind_rules.is_empty())
        .filter(|v| {
            let room = v.resources.len() < max;
            if !room {
                tracing::warn!(vault = %v.id, volume = %vol.id, max,
                               "auto_bind: the vault is full of resources; not bound");
            }
            room
        })
        .filter(|v| v.bind_rules.iter().all(|r| vol.tags.contains(r)))
        .filter(|v| !v.resources.iter().any(|r| r.id == vol.id.to_string()))
        .map(|v| {
            let mut v = v.clone();
            v.resources.push(ResourceRow {
                id: vol.id.to_string(),
                kind: VOLUME_TYPE.into(),
                name: vol.name.clone(),
                exclude_volumes: Vec::new(),
            });
            tracing::info!(vault = %v.id, volume = %vol.id, "volume bound by auto_bind rules");
            v
        })
        .collect()
}

/// Binds every volume of the project that matches `v`'s rules.
fn bind_matching(st: &State, v: &mut VaultRow, max: usize) {
    if !v.auto_bind || v.bind_rules.is_empty() {
        return;
    }
    let mut vols: Vec<&VolumeRow> = st
        .volumes
        .values()
        .filter(|vol| vol.project_id == v.project_id)
        .filter(|vol| v.bind_rules.iter().all(|r| vol.tags.contains(r)))
        .collect();
    vols.sort_by_key(|vol| vol.created_at);
    for vol in vols {
        if v.resources.len() >= max {
            tracing::warn!(vault = %v.id, max, "auto_bind: the vault is full of resources");
            break;
        }
        if !v.resources.iter().any(|r| r.id == vol.id.to_string()) {
            v.resources.push(ResourceRow {
                id: vol.id.to_string(),
                kind: VOLUME_TYPE.into(),
                name: vol.name.clone(),
                exclude_volumes: Vec::new(),
            });
        }
    }
}

/// The volumes a vault's resources stand for: volume resources, and the volumes of server
/// resources minus their exclusions.
pub(crate) fn resource_volumes(st: &State, v: &VaultRow) -> Vec<Uuid> {
    volumes_of(st, &v.project_id, &v.resources)
}

/// The volumes of `project` that `resources` stand for, in order, without repeats.
fn volumes_of(st: &State, project: &str, resources: &[ResourceRow]) -> Vec<Uuid> {
    let mut out = Vec::new();
    for r in resources {
        if r.kind == VOLUME_TYPE {
            if let Ok(id) = Uuid::parse_str(&r.id) {
                if st.volumes.contains_key(&id) && !out.contains(&id) {
                    out.push(id);
                }
            }
        } else {
            let mut vols: Vec<&VolumeRow> = st
                .volumes
                .values()
                .filter(|vol| vol.project_id == project && vol.server_id == r.id)
                .filter(|vol| !r.exclude_volumes.contains(&vol.id.to_string()))
                .collect();
            vols.sort_by_key(|vol| vol.created_at);
            for vol in vols {
                if !out.contains(&vol.id) {
                    out.push(vol.id);
                }
            }
        }
    }
    out
}

fn view(st: &State, v: &VaultRow) -> VaultView {
    let used = used_bytes(st, &v.id);
    let resources = v
        .resources
        .iter()
        .map(|r| {
            let vols = volumes_of(st, &v.project_id, std::slice::from_ref(r));
            let size = vols
                .iter()
                .filter_map(|id| st.volumes.get(id))
                .map(|x| x.size)
                .sum();
            let backups: Vec<&BackupRow> = st
                .backups
                .values()
                .filter(|b| b.vault_id == Some(v.id) && vols.contains(&b.volume_id))
                .collect();
            let protecting = vols
                .iter()
                .filter_map(|id| st.volumes.get(id))
                .any(|x| x.busy_job.is_some());
            (
                size,
                backups.iter().map(|b| b.stored_bytes).sum(),
                backups.len() as u64,
                protecting,
            )
        })
        .collect();
    VaultView {
        vault: v.clone(),
        used_bytes: used,
        resources,
    }
}

fn visible_vault<'a>(st: &'a State, caller: &Caller, id: &str) -> Result<&'a VaultRow> {
    let id = parse_uuid("vault_id", id)?;
    st.vaults
        .get(&id)
        .filter(|v| caller.sees(&v.project_id))
        .ok_or_else(|| Error::not_found(format!("vault {id} not found")))
}

/// The vault calls, over what they need.
pub struct Vaults<'a> {
    rows: &'a Rows,
    /// Resources one vault may bind (`[vaults] max_resources`).
    max_resources: usize,
    lock_keeper: &'a LockKeeper,
}

impl<'a> Vaults<'a> {
    pub(crate) fn new(
        rows: &'a Rows,
        max_resources: usize,
        lock_keeper: &'a LockKeeper,
    ) -> Vaults<'a> {
        Vaults {
            rows,
            max_resources,
            lock_keeper,
        }
    }

    /// Refuses more resources than a vault may bind (`[vaults] max_resources`).
    fn check_resource_count(&self, field: &str, n: usize) -> Result<()> {
        if n > self.max_resources {
            return Err(Error::resource_exhausted(format!(
                "{field}: {n} resources; a vault binds at most {} ([vaults] max_resources)",
                self.max_resources
            )));
        }
        Ok(())
    }

    /// Vaults.Create.
    pub fn create(&self, caller: &Caller, spec: VaultSpec) -> Result<VaultView> {
        caller.must_write()?;
        let name = spec.name.trim().to_string();
        if name.is_empty() {
            return Err(Error::invalid("name", "required"));
        }
        max_chars("name", &name, 255)?;
        max_chars("description", &spec.description, 255)?;
        let billing = check_billing(spec.billing)?;
        let tags = check_tags("tags", spec.tags)?;
        let bind_rules = check_bind_rules(spec.bind_rules)?;
        let threshold = check_threshold(spec.threshold.unwrap_or(80))?;
        max_chars("backup_name_prefix", &spec.backup_name_prefix, 64)?;
        charset("backup_name_prefix", &spec.backup_name_prefix, &['.'])?;
        if !spec.sys_lock_source_service.is_empty() {
            one_of(
                "sys_lock_source_service",
                &spec.sys_lock_source_service,
                &["SMB"],
            )?;
        }
        max_chars("enterprise_project_id", &spec.enterprise_project_id, 64)?;
        let mut st = self.rows.lock();
        let resources = check_resources(&st, &caller.project, spec.resources, 0)?;
        self.check_resource_count("resources", resources.len())?;
        let policy = check_policy(&st, &caller.project, &spec.backup_policy_id)?;
        if st
            .vaults
            .values()
            .any(|v| v.project_id == caller.project && v.name == name)
        {
            return Err(Error::already_exists(format!(
                "a vault named {name:?} exists"
            )));
        }
        let mut v = VaultRow {
            format: ROW_VERSION,
            id: Uuid::new_v4(),
            project_id: caller.project.clone(),
            user_id: caller.user.clone(),
            name,
            description: spec.description,
            billing,
            resources,
            tags,
            backup_policy_id: policy,
            auto_bind: spec.auto_bind,
            bind_rules,
            auto_expand: spec.auto_expand,
            threshold,
            smn_notify: spec.smn_notify.unwrap_or(true),
            backup_name_prefix: spec.backup_name_prefix,
            locked: spec.locked,
            enterprise_project_id: if spec.enterprise_project_id.is_empty() {
                "0".into()
            } else {
                spec.enterprise_project_id
            },
            demand_billing: spec.demand_billing,
            sys_lock_source_service: spec.sys_lock_source_service,
            created_at: now(),
            above_threshold: false,
            threshold_events: 0,
            runs: Default::default(),
            last_run: None,
        };
        bind_matching(&st, &mut v, self.max_resources);
        Changes::vault(v.clone()).commit(&self.rows.db, &mut st)?;
        tracing::info!(vault = %v.id, name = %v.name, size_gb = v.billing.size_gb, "vault created");
        if v.locked {
            self.lock_keeper.wake();
        }
        Ok(view(&st, &v))
    }

    /// Vaults.Get.
    pub fn get(&self, caller: &Caller, id: &str) -> Result<VaultView> {
        let st = self.rows.lock();
        let v = visible_vault(&st, caller, id)?;
        Ok(view(&st, v))
    }

    /// Vaults.List, oldest first.
    pub fn list(
        &self,
        caller: &Caller,
        all_tenants: bool,
        page: &crate::page::PageQuery,
    ) -> Result<(Vec<VaultView>, Option<Uuid>), Error> {
        caller.may_list_all(all_tenants)?;
        let st = self.rows.lock();
        let mut v: Vec<&VaultRow> = st
            .vaults
            .values()
            .filter(|v| all_tenants || v.project_id == caller.project)
            .collect();
        v.sort_by_key(|v| (v.created_at, v.id));
        let (range, next) = crate::page::window(&v, |v| v.id, page, "vaults")?;
        Ok((v[range].iter().map(|v| view(&st, v)).collect(), next))
    }

    /// Vaults.Update.
    pub fn update(&self, caller: &Caller, id: &str, u: VaultUpdate) -> Result<VaultView> {
        caller.must_write()?;
        let mut st = self.rows.lock();
        let mut v = visible_vault(&st, caller, id)?.clone();
        if let Some(n) = u.name {
            let n = n.trim().to_string();
            if n.is_empty() {
                return Err(Error::invalid("name", "empty"));
            }
            max_chars("name", &n, 255)?;
            if st
                .vaults
                .values()
                .any(|o| o.id != v.id && o.project_id == v.project_id && o.name == n)
            {
                return Err(Error::already_exists(format!("a vault named {n:?} exists")));
            }
            v.name = n;
        }
        if let Some(d) = u.description {
            max_chars("description", &d, 255)?;
            v.description = d;
        }
        if let Some(size) = u.size_gb {
            check_size(size)?;
            let used = used_bytes(&st, &v.id);
            if (size as u64).saturating_mul(GB) < used {
                return Err(Error::failed_precondition(format!(
                    "billing.size: {size} GB is less than the {} MB in use",
                    used.div_ceil(MB)
                )));
            }
            v.billing.size_gb = size;
        }
        if let Some(r) = u.bind_rules {
            v.bind_rules = check_bind_rules(r)?;
        }
        if let Some(b) = u.auto_bind {
            v.auto_bind = b;
        }
        if let Some(b) = u.auto_expand {
            v.auto_expand = b;
        }
        if let Some(t) = u.threshold {
            v.threshold = check_threshold(t)?;
        }
        if let Some(b) = u.smn_notify {
            v.smn_notify = b;
        }
        if let Some(p) = u.backup_name_prefix {
            max_chars("backup_name_prefix", &p, 64)?;
            charset("backup_name_prefix", &p, &['.'])?;
            v.backup_name_prefix = p;
        }
        if let Some(l) = u.locked {
            if !l && v.locked {
                return Err(Error::failed_precondition(format!(
                    "vault {} is locked; a locked vault cannot be unlocked",
                    v.id
                )));
            }
            v.locked = v.locked || l;
        }
        if let Some(p) = u.backup_policy_id {
            v.backup_policy_id = check_policy(&st, &v.project_id, &p)?;
        }
        if let Some(t) = u.tags {
            v.tags = check_tags("tags", t)?;
        }
        bind_matching(&st, &mut v, self.max_resources);
        let used = used_bytes(&st, &v.id);
        let mut events = Vec::new();
        evaluate_threshold(&mut v, used, &mut events);
        emit(self.rows, &v, used, events);
        Changes::vault(v.clone()).commit(&self.rows.db, &mut st)?;
        if v.locked {
            self.lock_keeper.wake();
        }
        Ok(view(&st, &v))
    }

    /// Vaults.Delete: only an unlocked vault without backups.
    pub fn delete(&self, caller: &Caller, id: &str) -> Result<()> {
        caller.must_write()?;
        let mut st = self.rows.lock();
        let v = visible_vault(&st, caller, id)?.clone();
        if v.locked {
            return Err(Error::failed_precondition(format!(
                "vault {} is locked and cannot be deleted",
                v.id
            )));
        }
        let n = st
            .backups
            .values()
            .filter(|b| b.vault_id == Some(v.id))
            .count();
        if n > 0 {
            return Err(Error::failed_precondition(format!(
                "vault {} still holds {n} backups; delete them first",
                v.id
            )));
        }
        Changes {
            gone_vaults: vec![v.id],
            ..Default::default()
        }
        .commit(&self.rows.db, &mut st)
    }

    /// Vaults.AddResources.
    pub fn add_resources(
        &self,
        caller: &Caller,
        id: &str,
        resources: Vec<ResourceRow>,
    ) -> Result<VaultView> {
        caller.must_write()?;
        let mut st = self.rows.lock();
        let mut v = visible_vault(&st, caller, id)?.clone();
        let new = check_resources(&st, &v.project_id, resources, v.resources.len())?;
        self.check_resource_count("resources", v.resources.len().saturating_add(new.len()))?;
        for r in new {
            if v.resources.iter().any(|o| o.id == r.id) {
                return Err(Error::already_exists(format!(
                    "resource {} is already bound to vault {}",
                    r.id, v.id
                )));
            }
            v.resources.push(r);
        }
        Changes::vault(v.clone()).commit(&self.rows.db, &mut st)?;
        Ok(view(&st, &v))
    }

    /// Vaults.RemoveResources.
    pub fn remove_resources(&self, caller: &Caller, id: &str, ids: &[String]) -> Result<VaultView> {
        caller.must_write()?;
        let mut st = self.rows.lock();
        let mut v = visible_vault(&st, caller, id)?.clone();
        for rid in ids {
            let before = v.resources.len();
            v.resources.retain(|r| &r.id != rid);
            if v.resources.len() == before {
                return Err(Error::not_found(format!(
                    "resource {rid} is not bound to vault {}",
                    v.id
                )));
            }
        }
        Changes::vault(v.clone()).commit(&self.rows.db, &mut st)?;
        Ok(view(&st, &v))
    }

    /// Checks that the caller may watch `vault_id` ("" for all it sees).
    pub fn check_watch(&self, caller: &Caller, vault_id: &str) -> Result<Option<Uuid>> {
        if vault_id.is_empty() {
            return Ok(None);
        }
        let st = self.rows.lock();
        Ok(Some(visible_vault(&st, caller, vault_id)?.id))
    }

    /// A receiver of vault events.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<VaultEvent> {
        self.rows.vault_events()
    }
}
