//! The scheduled store verify (`[verify]`): every `interval_seconds`, a verify of the whole
//! store that reads only the packs not found intact within `period_seconds`
//! (`Engine::verify_store_within`). The engine remembers each intact pack as it goes, so a run
//! cut short by a shutdown or a crash resumes where it stopped. Each run's report (damaged
//! chunks and the backups that need them) is written to `DATA_DIR/verify-report.json` (0600)
//! and logged.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::VerifyConfig;
use crate::control::Control;

/// Name of the last report in the data directory.
pub const REPORT_FILE: &str = "verify-report.json";

/// First run this long after the start (or after `interval`, if shorter).
const FIRST_RUN: Duration = Duration::from_secs(60);

/// Writes `body` to `dir/REPORT_FILE` atomically, mode 0600.
fn write_report(dir: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{REPORT_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(REPORT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Runs the verify on its schedule until the daemon shuts down.
pub async fn scheduled_verify(
    control: Arc<Control>,
    cfg: VerifyConfig,
    data_dir: PathBuf,
    turn: Arc<tokio::sync::Mutex<()>>,
) {
    if cfg.interval_seconds == 0 {
        return;
    }
    let interval = Duration::from_secs(cfg.interval_seconds);
    let mut wait = interval.min(FIRST_RUN);
    loop {
        tokio::time::sleep(wait).await;
        wait = interval;
        if control.jobs().is_shutting_down() {
            return;
        }
        let _turn = turn.lock().await;
        let c = control.clone();
        let period = Duration::from_secs(cfg.period_seconds);
        let run = tokio::task::spawn_blocking(move || {
            c.engine()
                .verify_store_within(period, &blockvault_engine::NoProgress)
        })
        .await;
        match run {
            Ok(Ok(r)) => {
                if r.is_clean() {
                    tracing::info!(
                        packs_checked = r.packs_checked,
                        packs_skipped = r.packs_skipped,
                        chunks = r.chunks_checked,
                        "scheduled verify: clean"
                    );
                } else {
                    tracing::warn!(corrupt = r.corrupt.len(), missing = r.missing.len(),
                                   manifests = r.manifests.len(),
                                   backups = ?r.affected_backups(),
                                   "scheduled verify found damage (see {REPORT_FILE})");
                }
                let body = serde_json::to_vec_pretty(&r).expect("report serializes");
                if let Err(e) = write_report(&data_dir, &body) {
                    tracing::warn!(error = %e, "could not write {REPORT_FILE}");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "scheduled verify failed"),
            Err(e) => tracing::warn!(error = %e, "scheduled verify task failed"),
        }
    }
}
