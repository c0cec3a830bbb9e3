//! Backup policies: schedules, the full/incremental pattern, retention, and the runner that
//! applies them to vaults.
//!
//! **Schedule.** Either every `interval_seconds`, or at fixed UTC times of day on chosen days of
//! the week. A vault's next run is the first slot after its last run (or after the vault got the
//! policy). After a restart with missed slots, the runner makes *one* catch-up run and schedules
//! the next slot after it, never a burst.
//!
//! **Pattern.** Each run backs up every volume the vault's resources stand for. Run `n` of a
//! volume (counted from 0) is full when `n % full_every == 0`, incremental otherwise.
//!
//! **Retention** (per volume, over the vault's available backups, newest first; restic's
//! semantics): a backup is kept if any rule keeps it: the newest `max_backups`; those younger than
//! `max_days`; the newest of each of the last `daily` days / `weekly` ISO weeks / `monthly` months
//! that have backups. With no rule set, everything is kept. Parents of kept incrementals are kept
//! too, and deletions go children first, so no incremental is ever left without its parent.
//! Retention is the only thing that removes backups from a locked vault.
//!
//! **Clock.** The runner reads time as a wall-clock base plus tokio's monotonic clock, so tests
//! drive schedules under paused tokio time.
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tonic::Status;
use uuid::Uuid;

use crate::auth::Caller;
use crate::config::Role;
use crate::config::MAX_INTERVAL_SECONDS;
use crate::control::{parse_uuid, Changes, Control, CreateBackup, State};
use crate::model::*;

/// Retention limits: (max_backups, max_days, daily, weekly, monthly).
pub type RetentionSpec = (Option<u32>, Option<u32>, u32, u32, u32);

/// Maps a backup time to its day, week or month bucket.
type Bucket = fn(OffsetDateTime) -> (i32, u32);

/// What Policies.Create / Update carry.
#[derive(Clone, Debug, Default)]
pub struct PolicySpec {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    /// (interval_seconds, days, times), replacing the schedule when given.
    pub schedule: Option<(u64, Vec<String>, Vec<String>)>,
    pub full_every: Option<u32>,
    /// (max_backups, max_days, daily, weekly, monthly), replacing the retention when given.
    pub retention: Option<RetentionSpec>,
}

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_schedule(
    interval: u64,
    days: &[String],
    times: &[String],
) -> Result<(u64, Vec<u8>, Vec<u16>), Status> {
    if interval > 0 {
        if !days.is_empty() || !times.is_empty() {
            return Err(invalid(
                "schedule",
                "give interval_seconds or days/times, not both",
            ));
        }
        if !(60..=MAX_INTERVAL_SECONDS).contains(&interval) {
            return Err(invalid(
                "schedule.interval_seconds",
                format!("{interval} is outside 60..={MAX_INTERVAL_SECONDS} (ten years)"),
            ));
        }
        return Ok((interval, Vec::new(), Vec::new()));
    }
    if times.is_empty() {
        return Err(invalid(
            "schedule",
            "give interval_seconds or at least one time of day",
        ));
    }
    let mut d = Vec::new();
    for (i, day) in days.iter().enumerate() {
        let n = DAYS
            .iter()
            .position(|x| x.eq_ignore_ascii_case(day.trim()))
            .ok_or_else(|| {
                invalid(
                    &format!("schedule.days[{i}]"),
                    format!("{day:?} is not mon..sun"),
                )
            })?;
        if !d.contains(&(n as u8)) {
            d.push(n as u8);
        }
    }
    d.sort_unstable();
    let mut t = Vec::new();
    for (i, hm) in times.iter().enumerate() {
        let bad = || {
            invalid(
                &format!("schedule.times[{i}]"),
                format!("{hm:?} is not HH:MM"),
            )
        };
        let (h, m) = hm.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        if !t.contains(&(h * 60 + m)) {
            t.push(h * 60 + m);
        }
    }
    t.sort_unstable();
    Ok((0, d, t))
}

/// The first scheduled slot strictly after `after`; `None` when there is none that time can
/// represent (rows are validated, but a stored row is still not trusted to keep arithmetic in
/// range).
pub fn next_slot(p: &PolicyRow, after: OffsetDateTime) -> Option<OffsetDateTime> {
    if p.interval_seconds > 0 {
        let secs = i64::try_from(p.interval_seconds).ok()?;
        return after.checked_add(time::Duration::seconds(secs));
    }
    let midnight = after.replace_time(time::Time::MIDNIGHT);
    for day in 0..8i64 {
        let date = midnight.checked_add(time::Duration::days(day))?;
        let wd = date.weekday().number_days_from_monday();
        if !p.days.is_empty() && !p.days.contains(&wd) {
            continue;
        }
        for &m in &p.times {
            let at = date.checked_add(time::Duration::minutes(i64::from(m)))?;
            if at > after {
                return Some(at);
            }
        }
    }
    // Unreachable with at least one time and a valid day list; be safe.
    after.checked_add(time::Duration::days(1))
}

/// Upper bounds of the policy's counts: far beyond any use, and small enough that no count
/// overflows a time or a sum.
const MAX_FULL_EVERY: u32 = 10_000;
const MAX_KEEP_BACKUPS: u32 = 100_000;
const MAX_KEEP_DAYS: u32 = 36_600;
const MAX_KEEP_WEEKS: u32 = 5_200;
const MAX_KEEP_MONTHS: u32 = 1_200;

fn bounded(field: &str, v: u32, lo: u32, hi: u32) -> Result<u32, Status> {
    if !(lo..=hi).contains(&v) {
        return Err(invalid(field, format!("{v} is outside {lo}..={hi}")));
    }
    Ok(v)
}

fn check_name(name: &str) -> Result<String, Status> {
    let n = name.trim().to_string();
    if n.is_empty() {
        return Err(invalid("name", "required"));
    }
    if n.chars().count() > 255 {
        return Err(invalid("name", "at most 255 characters"));
    }
    Ok(n)
}

fn apply(p: &mut PolicyRow, spec: PolicySpec) -> Result<(), Status> {
    if let Some(n) = spec.name {
        p.name = check_name(&n)?;
    }
    if let Some(e) = spec.enabled {
        p.enabled = e;
    }
    if let Some((i, d, t)) = spec.schedule {
        let (i, d, t) = parse_schedule(i, &d, &t)?;
        p.interval_seconds = i;
        p.days = d;
        p.times = t;
    }
    if let Some(f) = spec.full_every {
        p.full_every = bounded("full_every", f, 0, MAX_FULL_EVERY)?;
    }
    if let Some((max, days, daily, weekly, monthly)) = spec.retention {
        if let Some(m) = max {
            bounded("retention.max_backups", m, 1, MAX_KEEP_BACKUPS)?;
        }
        if let Some(d) = days {
            bounded("retention.max_days", d, 1, MAX_KEEP_DAYS)?;
        }
        bounded("retention.daily", daily, 0, MAX_KEEP_DAYS)?;
        bounded("retention.weekly", weekly, 0, MAX_KEEP_WEEKS)?;
        bounded("retention.monthly", monthly, 0, MAX_KEEP_MONTHS)?;
        p.max_backups = max;
        p.max_days = days;
        p.keep_daily = daily;
        p.keep_weekly = weekly;
        p.keep_monthly = monthly;
    }
    Ok(())
}

fn visible_policy<'a>(st: &'a State, caller: &Caller, id: &str) -> Result<&'a PolicyRow, Status> {
    let id = parse_uuid("policy_id", id)?;
    st.policies
        .get(&id)
        .filter(|p| caller.sees(&p.project_id))
        .ok_or_else(|| Status::not_found(format!("policy {id} not found")))
}

impl Control {
    /// Policies.Create.
    pub fn create_policy(
        &self,
        caller: &Caller,
        id: &str,
        spec: PolicySpec,
    ) -> Result<PolicyRow, Status> {
        caller.must_write()?;
        let id = if id.is_empty() {
            Uuid::new_v4()
        } else {
            parse_uuid("id", id)?
        };
        if spec.name.is_none() {
            return Err(invalid("name", "required"));
        }
        if spec.schedule.is_none() {
            return Err(invalid("schedule", "required"));
        }
        let t = now();
        let mut p = PolicyRow {
            format: ROW_VERSION,
            id,
            project_id: caller.project.clone(),
            name: String::new(),
            enabled: true,
            interval_seconds: 0,
            days: Vec::new(),
            times: Vec::new(),
            full_every: 0,
            max_backups: None,
            max_days: None,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            created_at: t,
            updated_at: t,
        };
        apply(&mut p, spec)?;
        let mut st = self.state.lock();
        if st.policies.contains_key(&id) {
            return Err(Status::already_exists(format!(
                "policy {id} already exists"
            )));
        }
        Changes {
            policies: vec![p.clone()],
            ..Default::default()
        }
        .commit(&self.db, &mut st)?;
        Ok(p)
    }

    /// Policies.Get.
    pub fn get_policy(&self, caller: &Caller, id: &str) -> Result<PolicyRow, Status> {
        visible_policy(&self.state.lock(), caller, id).cloned()
    }

    /// Policies.List, oldest first.
    pub fn list_policies(&self, caller: &Caller, all: bool) -> Result<Vec<PolicyRow>, Status> {
        caller.may_list_all(all)?;
        let st = self.state.lock();
        let mut v: Vec<PolicyRow> = st
            .policies
            .values()
            .filter(|p| all || p.project_id == caller.project)
            .cloned()
            .collect();
        v.sort_by_key(|p| (p.created_at, p.id));
        Ok(v)
    }

    /// Policies.Update.
    pub fn update_policy(
        &self,
        caller: &Caller,
        id: &str,
        spec: PolicySpec,
    ) -> Result<PolicyRow, Status> {
        caller.must_write()?;
        let mut st = self.state.lock();
        let mut p = visible_policy(&st, caller, id)?.clone();
        apply(&mut p, spec)?;
        p.updated_at = now();
        Changes {
            policies: vec![p.clone()],
            ..Default::default()
        }
        .commit(&self.db, &mut st)?;
        Ok(p)
    }

    /// Policies.Delete: only a policy no vault uses.
    pub fn delete_policy(&self, caller: &Caller, id: &str) -> Result<(), Status> {
        caller.must_write()?;
        let mut st = self.state.lock();
        let p = visible_policy(&st, caller, id)?.clone();
        if let Some(v) = st
            .vaults
            .values()
            .find(|v| v.backup_policy_id == Some(p.id))
        {
            return Err(Status::failed_precondition(format!(
                "policy {} is used by vault {}; change the vault first",
                p.id, v.id
            )));
        }
        Changes {
            gone_policies: vec![p.id],
            ..Default::default()
        }
        .commit(&self.db, &mut st)
    }
}

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
                    tracing::error!(vault = %vault, panic = %crate::control::panic_message(&p),
                                          "policy run panicked")
                }
            }
        }
        if let Err(p) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.apply_retention(now)))
        {
            tracing::error!(panic = %crate::control::panic_message(&p), "retention panicked");
        }
        (queued, next.map(|n| n.max(now)))
    }

    /// Vaults due at `now`, and the earliest future due time.
    fn due(&self, now: OffsetDateTime) -> (Vec<Uuid>, Option<OffsetDateTime>) {
        let st = self.control.state.lock();
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
            let st = self.control.state.lock();
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
            let mut res = self.control.create_backup(&system, req.clone());
            if incremental
                && res
                    .as_ref()
                    .is_err_and(|e| e.code() == tonic::Code::FailedPrecondition)
            {
                // Nothing to base an incremental on (e.g. the last run failed): make a full one.
                res = self.control.create_backup(
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
        let mut st = self.control.state.lock();
        if let Some(cur) = st.vaults.get(&vault).cloned() {
            let mut cur = cur;
            cur.runs = runs;
            cur.last_run = Some(now);
            if let Err(e) = Changes::vault(cur).commit(&self.control.db, &mut st) {
                tracing::error!(vault = %vault, error = %e.message(), "recording a policy run");
            }
        }
        tracing::info!(vault = %vault, policy = %p.id, backups = queued.len(), "policy run");
        queued
    }

    /// Deletes what the policies of all vaults no longer keep.
    pub fn apply_retention(&self, now: OffsetDateTime) {
        let doomed = {
            let st = self.control.state.lock();
            let mut doomed = Vec::new();
            for v in st.vaults.values() {
                if let Some(p) = v.backup_policy_id.and_then(|p| st.policies.get(&p)) {
                    doomed.extend(prune_list(&st, v, p, now));
                }
            }
            doomed
        };
        for id in doomed {
            match self.control.delete_checked(id, true) {
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
            if self.control.is_shutting_down() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn policy(days: &[&str], times: &[&str]) -> PolicyRow {
        let t = datetime!(2026-11-01 0:00 UTC);
        let mut p = PolicyRow {
            format: ROW_VERSION,
            id: Uuid::new_v4(),
            project_id: "p".into(),
            name: "n".into(),
            enabled: true,
            interval_seconds: 0,
            days: vec![],
            times: vec![],
            full_every: 0,
            max_backups: None,
            max_days: None,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            created_at: t,
            updated_at: t,
        };
        let days: Vec<String> = days.iter().map(|s| s.to_string()).collect();
        let times: Vec<String> = times.iter().map(|s| s.to_string()).collect();
        apply(
            &mut p,
            PolicySpec {
                schedule: Some((0, days, times)),
                ..Default::default()
            },
        )
        .unwrap();
        p
    }

    #[test]
    fn day_and_time_rules_pick_the_next_utc_slot() {
        // 2026-11-24 is a Tuesday.
        let p = policy(&["mon", "wed"], &["01:30", "13:00"]);
        let tue_noon = datetime!(2026-11-24 12:00 UTC);
        assert_eq!(
            next_slot(&p, tue_noon),
            Some(datetime!(2026-11-25 1:30 UTC))
        );
        assert_eq!(
            next_slot(&p, datetime!(2026-11-25 1:30 UTC)),
            Some(datetime!(2026-11-25 13:00 UTC))
        );
        assert_eq!(
            next_slot(&p, datetime!(2026-11-25 13:00 UTC)),
            Some(datetime!(2026-11-30 1:30 UTC))
        );
        let every_day = policy(&[], &["23:59"]);
        assert_eq!(
            next_slot(&every_day, datetime!(2026-12-31 23:59 UTC)),
            Some(datetime!(2027-01-01 23:59 UTC))
        );
    }

    #[test]
    fn stored_rows_out_of_range_give_no_slot_instead_of_a_panic() {
        let mut p = policy(&[], &["01:00"]);
        p.times.clear();
        p.interval_seconds = 18_446_744_073_709_551;
        assert_eq!(next_slot(&p, datetime!(2026-11-24 12:00 UTC)), None);
        p.interval_seconds = u64::MAX;
        assert_eq!(next_slot(&p, datetime!(2026-11-24 12:00 UTC)), None);
    }

    #[test]
    fn schedules_are_validated() {
        let bad = |i: u64, d: &[&str], t: &[&str]| {
            let d: Vec<String> = d.iter().map(|s| s.to_string()).collect();
            let t: Vec<String> = t.iter().map(|s| s.to_string()).collect();
            parse_schedule(i, &d, &t).unwrap_err().message().to_string()
        };
        assert!(bad(30, &[], &[]).starts_with("schedule.interval_seconds"));
        assert!(bad(3600, &["mon"], &[]).starts_with("schedule"));
        assert!(bad(0, &[], &[]).starts_with("schedule"));
        assert!(bad(0, &["funday"], &["01:00"]).starts_with("schedule.days[0]"));
        assert!(bad(0, &[], &["24:00"]).starts_with("schedule.times[0]"));
        assert!(bad(0, &[], &["1:60"]).starts_with("schedule.times[0]"));
        assert!(bad(0, &[], &["noon"]).starts_with("schedule.times[0]"));
        assert_eq!(parse_schedule(60, &[], &[]).unwrap().0, 60);
        assert!(bad(18_446_744_073_709_551, &[], &[]).starts_with("schedule.interval_seconds"));
    }
}
