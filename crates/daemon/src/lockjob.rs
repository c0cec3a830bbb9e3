//! The job that keeps locked vaults' backups under S3 Object Lock retention (`objectlock.rs`):
//! at start, whenever a vault is locked or a job ends, and every hour, each available backup
//! of a locked vault whose retention would end within half of `object_lock_days` is retained
//! for `object_lock_days` more. The store remembers what it retained, so a run that finds
//! nothing due makes no request. A failure is logged and tried again at the next run.
use std::sync::Arc;
use std::time::Duration;

use blockvault_core::BackupId;
use uuid::Uuid;

use crate::control::Control;
use crate::model::BackupStatus;
use crate::objectlock::LockKeeper;

/// Longest time between two runs.
const RUN_EVERY: Duration = Duration::from_secs(3600);

/// Available backups of locked vaults.
fn locked_backups(control: &Control) -> Vec<Uuid> {
    let st = control.rows.lock();
    st.backups
        .values()
        .filter(|b| b.status == BackupStatus::Available)
        .filter(|b| {
            b.vault_id
                .and_then(|v| st.vaults.get(&v))
                .is_some_and(|v| v.locked)
        })
        .map(|b| b.id)
        .collect()
}

/// One run: with `probe`, asks the store whether it can lock (one request to a bucket; the
/// hourly runs do, so a bucket that gains or loses Object Lock is noticed), then retains what
/// is due. Returns the backups retained.
pub fn run_once(control: &Control, keeper: &LockKeeper, probe: bool) -> usize {
    if probe {
        match control.engine().object_lock() {
            Ok(s) => keeper.set_support(s),
            Err(e) => {
                tracing::warn!(error = %e, "could not ask the store about S3 Object Lock");
                return 0;
            }
        }
    }
    if !keeper.enforced() {
        return 0;
    }
    let (until, renew_after) = keeper.options.window(blockvault_core::unix_now());
    let mut n = 0;
    for id in locked_backups(control) {
        match control
            .engine()
            .retain_backup(&BackupId(id), keeper.options.mode, until, renew_after)
        {
            Ok(r) if r.already => {}
            Ok(r) => {
                n += 1;
                tracing::info!(backup = %id, packs = r.packs, extended = r.packs_extended,
                               catalog_objects = r.catalog_objects, until = r.until,
                               "backup of a locked vault retained");
            }
            // Deleted or no longer available since the list was made.
            Err(e) if !control.rows.lock().backups.contains_key(&id) => {
                tracing::debug!(backup = %id, error = %e, "backup gone before its retention");
            }
            Err(e) => {
                tracing::warn!(backup = %id, error = %e, "could not retain a backup of a locked vault")
            }
        }
    }
    n
}

/// The `object_lock` field of a vault; asks the store first when nobody has yet.
pub fn vault_status(control: &Control, locked: bool) -> String {
    let keeper = control.lock_keeper();
    if locked && !keeper.asked() {
        match control.engine().object_lock() {
            Ok(s) => keeper.set_support(s),
            Err(e) => tracing::warn!(error = %e, "could not ask the store about S3 Object Lock"),
        }
    }
    keeper.status(locked)
}

/// Runs [`run_once`] until the daemon shuts down.
pub async fn keep_locked_vaults(control: Arc<Control>) {
    let keeper = control.lock_keeper().clone();
    let mut jobs = control.subscribe();
    let mut probed: Option<std::time::Instant> = None;
    loop {
        if control.jobs().is_shutting_down() {
            return;
        }
        let probe = probed.is_none_or(|t| t.elapsed() >= RUN_EVERY);
        if probe {
            probed = Some(std::time::Instant::now());
        }
        let (c, k) = (control.clone(), keeper.clone());
        let _ = tokio::task::spawn_blocking(move || run_once(&c, &k, probe)).await;
        tokio::select! {
            _ = keeper.sleep(RUN_EVERY) => {}
            r = jobs.changed() => if r.is_err() { return },
        }
    }
}
