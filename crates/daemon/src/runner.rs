//! The policy runner: applies each vault's backup policy on a clock, backing up the vault's
//! volumes when a slot is due and pruning what the retention rules no longer keep.
//!
//! **Clock.** The runner reads time as a wall-clock base plus tokio's monotonic clock, so tests
//! drive schedules under paused tokio time.
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::Caller;
use crate::config::Role;
use crate::control::{Control, CreateBackup};
use crate::error::Error;
use crate::model::*;
use crate::policy::next_slot;
use crate::state::{Changes, State};

/// Maps a backup time to its day, week or month bucket.
type Bucket = fn(OffsetDateTime) -> (i32, u32);

/// Applies policies to vaults on a clock.
#[derive(Clone)]
pub struct PolicyRunner {
    control: Arc<Control>,
    base_wall: OffsetDateTime,
    base: tokio::time::Instant,
}

impl PolicyRunner {
    /// A runner whose clock starts at the current wall time.
    pub fn new(control: Arc<Control>) -> PolicyRunner {
        PolicyRunner {
            control,
            base_wall: now(),
            base: tokio::time::Instant::now(),
        }
    }

    /// The runner's notion of now: wall base plus tokio's monotonic time since the start.
    pub fn now(&self) -> OffsetDateTime {
        let t = self.base_wall + (tokio::time::Instant::now() - self.base);
        t.replace_nanosecond(t.microsecond() * 1000).unwrap_or(t)
    }

    /// Runs every due vault once and applies retention everywhere; returns the ids of the
    /// backups queued, and when the next run is due.
    pub fn tick(&self) -> (Vec<Uuid>, Option<OffsetDateTime>) {
        let now = self.now();
        let mut queued = Vec::new();
        let (due, next) = self.due(now);
        for vault in due {
            // A panic in one vault's run (a bug, or a row no check foresaw) is logged and
            // skips that vault only; every other vault's schedule still fires.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run_vault(vault, now)
            })) {
                Ok(q) => queued.extend(q),
                Err(p) => {
                    tracing::error!(vault = %vault, panic = %crate::jobs::panic_message(&p),
                                          "policy run panicked")
                }
            }
        }
        if let Err(p) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.apply_retention(now)))
        {
            tracing::error!(panic = %crate::jobs::panic_message(&p), "retention panicked");
        }
        (queued, next.map(|n| n.max(now)))
    }

    /// Vaults due at `now`, and the earliest future due time.
    fn due(&self, now: OffsetDateTime) -> (Vec<Uuid>, Option<OffsetDateTime>) {
        let st = self.control.rows.lock();
        let mut due = Vec::new();
        let mut next: Option<OffsetDateTime> = None;
        for v in st.vaults.values() {
            let Some(p) = v.backup_policy_id.and_then(|p| st.policies.get(&p)) else {
                continue;
            };
            if !p.enabled {
                continue;
            }
            let base = v.last_run.unwrap_or(v.created_at.max(p.updated_at));
            // A policy whose next slot lies beyond representable time never runs again; it
            // must not stop the others.
            let Some(at) = next_slot(p, base) else {
                continue;
            };
            if at <= now {
                due.push(v.id);
                if let Some(after) = next_slot(p, now) {
                    next = Some(next.map_or(after, |n| n.min(after)));
                }
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (due, next)
    }

    /// One run of a vault's policy: a backup of each of its volumes (one catch-up run however
    /// many slots were missed).
    fn run_vault(&self, vault: Uuid, now: OffsetDateTime) -> Vec<Uuid> {
        let (v, p, vols) = {
            let st = self.control.rows.lock();
            let Some(v) = st.vaults.get(&vault).cloned() else {
                return Vec::new();
            };
            let Some(p) = v
                .backup_policy_id
                .and_then(|p| st.policies.get(&p))
                .cloned()
            else {
                return Vec::new();
            };
            let vols: Vec<(Uuid, String)> = crate::vault::resource_volumes(&st, &v)
                .into_iter()
                .filter_map(|id| st.volumes.get(&id).map(|x| (id, x.name.clone())))
                .collect();
            (v, p, vols)
        };
        let system = Caller {
            project: v.project_id.clone(),
            user: format!("policy:{}", p.id),
            role: Role::Member,
        };
        let mut queued = Vec::new();
        let mut runs = v.runs.clone();
        let stamp = now
            .format(&time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        for (vol, vol_name) in vols {
            let n = runs.get(&vol).copied().unwrap_or(0);
            let incremental = p.full_every > 1 && n % u64::from(p.full_every) != 0;
            let name = format!("{}{}_{}", v.backup_name_prefix, vol_name, stamp);
            let req = CreateBackup {
                volume_id: vol.to_string(),
                name: name.chars().take(255).collect(),
                description: format!("scheduled by policy {}", p.name),
                container: v.id.to_string(),
                incremental,
                force: true,
                at: Some(now),
                ..Default::default()
            };
            let mut res = self.control.backups().create(&system, req.clone());
            if incremental
                && res
                    .as_ref()
                    .is_err_and(|e| matches!(e, Error::Precondition(_)))
            {
                // Nothing to base an incremental on (e.g. the last run failed): make a full one.
                res = self.control.backups().create(
                    &system,
                    CreateBackup {
                        incremental: false,
                        ..req
                    },
                );
            }
            match res {
                Ok((b, _)) => {
                    queued.push(b.id);
                    runs.insert(vol, n + 1);
                }
                Err(e) => {
                    tracing::warn!(vault = %v.id, volume = %vol, error = %e.message(),
                                   "scheduled backup not started");
                }
            }
        }
        let mut st = self.control.rows.lock();
        if let Some(cur) = st.vaults.get(&vault).cloned() {
            let mut cur = cur;
            cur.runs = runs;
            cur.last_run = Some(now);
            if let Err(e) = Changes::vault(cur).commit(&self.control.rows.db, &mut st) {
                tracing::error!(vault = %vault, error = %e.message(), "recording a policy run");
            }
        }
        tracing::info!(vault = %vault, policy = %p.id, backups = queued.len(), "policy run");
        queued
    }

    /// Deletes what the policies of all vaults no longer keep.
    pub fn apply_retention(&self, now: OffsetDateTime) {
        let doomed = {
            let st = self.control.rows.lock();
            let mut doomed = Vec::new();
            for v in st.vaults.values() {
                if let Some(p) = v.backup_policy_id.and_then(|p| st.policies.get(&p)) {
                    doomed.extend(prune_list(&st, v, p, now));
                }
            }
            doomed
        };
        for id in doomed {
            match self.control.backups().delete_checked(id, true, false) {
                Ok(()) => tracing::info!(backup = %id, "pruned by retention"),
                Err(e) => {
                    tracing::warn!(backup = %id, error = %e.message(), "retention could not delete")
                }
            }
        }
    }

    /// Runs the schedule until the control plane shuts down.
    pub async fn run(self) {
        let mut changes = self.control.subscribe();
        loop {
            let runner = self.clone();
            let next = tokio::task::spawn_blocking(move || runner.tick().1)
                .await
                .ok()
                .flatten();
            let wait = next
                .map(|n| (n - self.now()).unsigned_abs())
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = changes.changed() => if r.is_err() { return },
            }
            if self.control.jobs().is_shutting_down() {
                return;
            }
        }
    }
}

/// Backups of `v` the policy `p` no longer keeps, children before parents.
fn prune_list(st: &State, v: &VaultRow, p: &PolicyRow, now: OffsetDateTime) -> Vec<Uuid> {
    let any_rule = p.max_backups.is_some()
        || p.max_days.is_some()
        || p.keep_daily > 0
        || p.keep_weekly > 0
        || p.keep_monthly > 0;
    if !any_rule {
        return Vec::new();
    }
    let mut by_volume: BTreeMap<Uuid, Vec<&BackupRow>> = BTreeMap::new();
    for b in st.backups.values() {
        if b.vault_id == Some(v.id) && b.status == BackupStatus::Available {
            by_volume.entry(b.volume_id).or_default().push(b);
        }
    }
    // Failed backups hold no data; they go first (they may name parents as incrementals).
    let mut doomed: Vec<Uuid> = st
        .backups
        .values()
        .filter(|b| b.vault_id == Some(v.id) && b.status == BackupStatus::Error)
        .map(|b| b.id)
        .collect();
    for (_, mut list) in by_volume {
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        let mut keep: HashSet<Uuid> = HashSet::new();
        if let Some(n) = p.max_backups {
            keep.extend(list.iter().take(n as usize).map(|b| b.id));
        }
        if let Some(d) = p.max_days {
            // Beyond representable time every backup is young enough.
            match now.checked_sub(time::Duration::days(i64::from(d))) {
                Some(cut) => keep.extend(list.iter().filter(|b| b.created_at > cut).map(|b| b.id)),
                None => keep.extend(list.iter().map(|b| b.id)),
            }
        }
        let buckets: [(u32, Bucket); 3] = [
            (p.keep_daily, |t| (t.year(), t.ordinal() as u32)),
            (p.keep_weekly, |t| {
                let (y, w, _) = t.to_iso_week_date();
                (y, u32::from(w))
            }),
            (p.keep_monthly, |t| (t.year(), u8::from(t.month()) as u32)),
        ];
        for (n, bucket) in buckets {
            let mut seen = Vec::new();
            for b in &list {
                if seen.len() as u32 >= n {
                    break;
                }
                let k = bucket(b.created_at);
                if !seen.contains(&k) {
                    seen.push(k);
                    keep.insert(b.id);
                }
            }
        }
        // Parents of kept incrementals stay (Cinder's dependency rule).
        let mut stack: Vec<Uuid> = keep.iter().copied().collect();
        while let Some(id) = stack.pop() {
            if let Some(parent) = st.backups.get(&id).and_then(|b| b.parent_id) {
                if keep.insert(parent) {
                    stack.push(parent);
                }
            }
        }
        // Newest first = children before their parents.
        doomed.extend(list.iter().filter(|b| !keep.contains(&b.id)).map(|b| b.id));
    }
    doomed
}
