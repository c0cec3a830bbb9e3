//! Backup policies: their schedules, the full/incremental pattern and retention rules, checked
//! and stored. `runner.rs` applies them to vaults.
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

use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::Caller;
use crate::check::parse_uuid;
use crate::config::MAX_INTERVAL_SECONDS;
use crate::error::{Error, Result};
use crate::model::*;
use crate::state::{Changes, Rows, State};

/// Retention limits: (max_backups, max_days, daily, weekly, monthly).
pub type RetentionSpec = (Option<u32>, Option<u32>, u32, u32, u32);

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

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_schedule(
    interval: u64,
    days: &[String],
    times: &[String],
) -> Result<(u64, Vec<u8>, Vec<u16>), Error> {
    if interval > 0 {
        if !days.is_empty() || !times.is_empty() {
            return Err(Error::invalid(
                "schedule",
                "give interval_seconds or days/times, not both",
            ));
        }
        if !(60..=MAX_INTERVAL_SECONDS).contains(&interval) {
            return Err(Error::invalid(
                "schedule.interval_seconds",
                format!("{interval} is outside 60..={MAX_INTERVAL_SECONDS} (ten years)"),
            ));
        }
        return Ok((interval, Vec::new(), Vec::new()));
    }
    if times.is_empty() {
        return Err(Error::invalid(
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
                Error::invalid(
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
            Error::invalid(
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

fn bounded(field: &str, v: u32, lo: u32, hi: u32) -> Result<u32> {
    if !(lo..=hi).contains(&v) {
        return Err(Error::invalid(field, format!("{v} is outside {lo}..={hi}")));
    }
    Ok(v)
}

fn check_name(name: &str) -> Result<String> {
    let n = name.trim().to_string();
    if n.is_empty() {
        return Err(Error::invalid("name", "required"));
    }
    if n.chars().count() > 255 {
        return Err(Error::invalid("name", "at most 255 characters"));
    }
    Ok(n)
}

fn apply(p: &mut PolicyRow, spec: PolicySpec) -> Result<()> {
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

fn visible_policy<'a>(st: &'a State, caller: &Caller, id: &str) -> Result<&'a PolicyRow> {
    let id = parse_uuid("policy_id", id)?;
    st.policies
        .get(&id)
        .filter(|p| caller.sees(&p.project_id))
        .ok_or_else(|| Error::not_found(format!("policy {id} not found")))
}

/// The policy calls, over what they need.
pub struct Policies<'a> {
    rows: &'a Rows,
}

impl<'a> Policies<'a> {
    pub(crate) fn new(rows: &'a Rows) -> Policies<'a> {
        Policies { rows }
    }

    /// Policies.Create.
    pub fn create(&self, caller: &Caller, id: &str, spec: PolicySpec) -> Result<PolicyRow> {
        caller.must_write()?;
        let id = if id.is_empty() {
            Uuid::new_v4()
        } else {
            parse_uuid("id", id)?
        };
        if spec.name.is_none() {
            return Err(Error::invalid("name", "required"));
        }
        if spec.schedule.is_none() {
            return Err(Error::invalid("schedule", "required"));
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
        let mut st = self.rows.lock();
        if st.policies.contains_key(&id) {
            return Err(Error::already_exists(format!("policy {id} already exists")));
        }
        Changes {
            policies: vec![p.clone()],
            ..Default::default()
        }
        .commit(&self.rows.db, &mut st)?;
        Ok(p)
    }

    /// Policies.Get.
    pub fn get(&self, caller: &Caller, id: &str) -> Result<PolicyRow> {
        visible_policy(&self.rows.lock(), caller, id).cloned()
    }

    /// Policies.List, oldest first.
    pub fn list(&self, caller: &Caller, all: bool) -> Result<Vec<PolicyRow>> {
        caller.may_list_all(all)?;
        let st = self.rows.lock();
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
    pub fn update(&self, caller: &Caller, id: &str, spec: PolicySpec) -> Result<PolicyRow> {
        caller.must_write()?;
        let mut st = self.rows.lock();
        let mut p = visible_policy(&st, caller, id)?.clone();
        apply(&mut p, spec)?;
        p.updated_at = now();
        Changes {
            policies: vec![p.clone()],
            ..Default::default()
        }
        .commit(&self.rows.db, &mut st)?;
        Ok(p)
    }

    /// Policies.Delete: only a policy no vault uses.
    pub fn delete(&self, caller: &Caller, id: &str) -> Result<()> {
        caller.must_write()?;
        let mut st = self.rows.lock();
        let p = visible_policy(&st, caller, id)?.clone();
        if let Some(v) = st
            .vaults
            .values()
            .find(|v| v.backup_policy_id == Some(p.id))
        {
            return Err(Error::failed_precondition(format!(
                "policy {} is used by vault {}; change the vault first",
                p.id, v.id
            )));
        }
        Changes {
            gone_policies: vec![p.id],
            ..Default::default()
        }
        .commit(&self.rows.db, &mut st)
    }
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
