//! Backup rows and the catalog's annotations. Every backup is committed with its control row as
//! the annotation of its record object (`control.rs`). Here:
//! - [`Control::adopt_recovered`]: the daemon started on an empty data directory that points
//!   at a bucket holding a store (`server.rs`) recovers the store, then rebuilds its backup
//!   rows from those annotations;
//! - [`Control::annotate_all`]: a data directory from before annotations existed (its backups'
//!   record objects were written by the store's catalog migration, without rows) has every
//!   available row annotated once, so those backups too come back with their Cinder fields.
//!
//! The engine's record wins over the annotation for every fact about the data (size, counts,
//! encryption, parent); the annotation gives the Cinder fields (project, user, name,
//! description, container, metadata, availability zone). Vaults, policies and volumes are not
//! in the catalog: a recovered row names a vault only if this control database has that vault.
use blockvault_engine::RecoveredBackup;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::control::Control;
use crate::model::{BackupRow, BackupStatus, ROW_VERSION};
use crate::state::Changes;

/// The row of a recovered backup whose annotation is missing or unreadable: visible to admins,
/// named after its id.
fn bare_row(b: &RecoveredBackup) -> BackupRow {
    let r = &b.record;
    BackupRow {
        format: ROW_VERSION,
        id: r.id.0,
        project_id: String::new(),
        user_id: String::new(),
        name: format!("recovered-{}", r.id),
        description: "recovered from the bucket without its control row".into(),
        container: String::new(),
        metadata: Default::default(),
        availability_zone: String::new(),
        snapshot_id: None,
        volume_id: Uuid::parse_str(r.volume_id.as_str()).unwrap_or(Uuid::nil()),
        status: BackupStatus::Available,
        fail_reason: None,
        is_incremental: false,
        parent_id: None,
        size: 0,
        object_count: 0,
        stored_bytes: 0,
        data_timestamp: None,
        created_at: r.created_at,
        updated_at: r.created_at,
        encrypted: false,
        encryption_key_id: None,
        job_id: None,
        vault_id: None,
        cbt: None,
    }
}

/// Marker in the data directory: every available backup's row is in the catalog.
pub const ANNOTATED_MARKER: &str = "catalog-annotated";

impl Control {
    /// Annotates every available backup's record object with its row, unless the data
    /// directory's marker says this was done; then writes the marker (fsynced). Returns how
    /// many backups it annotated.
    pub fn annotate_all(&self, data_dir: &std::path::Path) -> Result<usize, String> {
        let marker = data_dir.join(ANNOTATED_MARKER);
        if marker.exists() {
            return Ok(0);
        }
        let rows: Vec<BackupRow> = self
            .rows
            .lock()
            .backups
            .values()
            .filter(|b| b.status == BackupStatus::Available)
            .cloned()
            .collect();
        let mut n = 0;
        for row in &rows {
            let text = serde_json::to_string(row).expect("row serializes");
            // A row the store cannot annotate (its record is gone or not available) is left;
            // the backup itself is then not restorable either.
            match self
                .engine()
                .annotate(&blockvault_core::BackupId(row.id), &text)
            {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(backup = %row.id, error = %e, "not annotated"),
            }
        }
        std::fs::write(&marker, b"")
            .and_then(|()| std::fs::File::open(data_dir)?.sync_all())
            .map_err(|e| format!("{}: {e}", marker.display()))?;
        Ok(n)
    }

    /// Writes a row for every recovered backup this control database does not know; returns
    /// how many it wrote.
    pub fn adopt_recovered(&self, backups: &[RecoveredBackup]) -> Result<usize, String> {
        let mut st = self.rows.lock();
        let mut changes = Changes::default();
        for b in backups {
            let r = &b.record;
            if st.backups.contains_key(&r.id.0) {
                continue;
            }
            let mut row = b
                .annotation
                .as_deref()
                .and_then(|a| serde_json::from_str::<BackupRow>(a).ok())
                .filter(|row| row.id == r.id.0)
                .unwrap_or_else(|| bare_row(b));
            row.status = BackupStatus::Available;
            row.fail_reason = None;
            row.job_id = None;
            row.is_incremental = r.is_incremental;
            row.parent_id = r.parent_id.map(|p| p.0);
            row.size = r.size;
            row.object_count = r.object_count;
            row.stored_bytes = r.stored_bytes;
            row.data_timestamp = Some(r.data_timestamp);
            row.encrypted = r.encrypted;
            row.encryption_key_id = r.encryption_key_id;
            row.updated_at = OffsetDateTime::now_utc();
            if row.vault_id.is_some_and(|v| !st.vaults.contains_key(&v)) {
                row.vault_id = None;
            }
            changes.backups.push(row);
        }
        let n = changes.backups.len();
        changes
            .commit(&self.rows.db, &mut st)
            .map_err(|e| e.message().to_string())?;
        Ok(n)
    }
}
