//! Exported backup records (Cinder's export_record / import_record).
//!
//! `backup_url` is base64 of a JSON envelope:
//! `{"kind": "blockvault-backup-record", "format": 1, "checksum": "<BLAKE3 hex of payload>",
//! "payload": "<JSON text>"}`. The payload carries the id of the store holding the data, the
//! control-plane row (name, metadata, ...), the engine's record, and a BLAKE3 digest of the
//! backup's manifest. Import refuses a damaged or edited record (checksum), a record of another
//! store, and a record whose engine record or manifest the local store does not hold exactly, so an
//! imported backup is always restorable.
use base64::Engine as _;
use blockvault_core::{BackupId, BackupRecord, BackupState};
use serde::{Deserialize, Serialize};
use tonic::Status;
use uuid::Uuid;

use crate::auth::Caller;
use crate::control::{engine_status, Control};
use crate::model::BackupRow;

/// Cinder's `backup_service` for blockvault records.
pub const BACKUP_SERVICE: &str = "blockvault.chunkstore";
const KIND: &str = "blockvault-backup-record";
/// Version of the exported record.
pub const EXPORT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    kind: String,
    format: u32,
    checksum: String,
    payload: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    store_id: Uuid,
    backup: BackupRow,
    record: BackupRecord,
    manifest_digest: String,
}

/// BLAKE3 over the backup's manifest blocks, in order.
fn manifest_digest(control: &Control, id: &BackupId) -> Result<String, Status> {
    let mut h = blake3::Hasher::new();
    let mut blocks = 0u32;
    for b in control.engine().store().manifest(id) {
        let b = b.map_err(|e| Status::failed_precondition(format!("manifest of {id}: {e}")))?;
        h.update(&b.encode());
        blocks += 1;
    }
    h.update(&blocks.to_le_bytes());
    Ok(h.finalize().to_hex().to_string())
}

/// Backups.ExportRecord: (backup_service, backup_url).
pub fn export(control: &Control, caller: &Caller, id: &str) -> Result<(String, String), Status> {
    let (backup, record) = control.exportable(caller, id)?;
    let payload = Payload {
        store_id: control.engine().store().config().store_id,
        manifest_digest: manifest_digest(control, &record.id)?,
        backup,
        record,
    };
    let payload = serde_json::to_string(&payload).expect("payload serializes");
    let env = Envelope {
        kind: KIND.into(),
        format: EXPORT_VERSION,
        checksum: blake3::hash(payload.as_bytes()).to_hex().to_string(),
        payload,
    };
    let url = base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(&env).expect("envelope serializes"));
    Ok((BACKUP_SERVICE.to_string(), url))
}

/// Backups.ImportRecord: checks the record against the local store and adds the backup.
pub fn import(
    control: &Control,
    caller: &Caller,
    service: &str,
    url: &str,
) -> Result<BackupRow, Status> {
    caller.must_write()?;
    if service != BACKUP_SERVICE {
        return Err(Status::invalid_argument(format!(
            "backup_service: {service:?} is not {BACKUP_SERVICE:?}"
        )));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(url.trim())
        .map_err(|e| Status::invalid_argument(format!("backup_url is not base64: {e}")))?;
    let env: Envelope = serde_json::from_slice(&raw)
        .map_err(|e| Status::invalid_argument(format!("backup_url is not a backup record: {e}")))?;
    if env.kind != KIND || env.format != EXPORT_VERSION {
        return Err(Status::invalid_argument(format!(
            "unsupported backup record {:?} version {} (this daemon reads version {EXPORT_VERSION})",
            env.kind, env.format
        )));
    }
    if blake3::hash(env.payload.as_bytes()).to_hex().as_str() != env.checksum {
        return Err(Status::invalid_argument(
            "backup record checksum mismatch: the record was altered or damaged",
        ));
    }
    let p: Payload = serde_json::from_str(&env.payload)
        .map_err(|e| Status::invalid_argument(format!("backup record payload: {e}")))?;
    let ours = control.engine().store().config().store_id;
    if p.store_id != ours {
        return Err(Status::failed_precondition(format!(
            "the record belongs to store {}, this daemon's store is {ours}; attach a copy of \
             that store first",
            p.store_id
        )));
    }
    if p.backup.id != p.record.id.0 {
        return Err(Status::invalid_argument("backup record ids disagree"));
    }
    let id = p.record.id;
    let local = match control.engine().get(&id) {
        Ok(r) => r,
        Err(blockvault_engine::Error::Store(blockvault_store::Error::BackupNotFound(_))) => {
            return Err(Status::failed_precondition(format!(
                "this daemon's store does not hold backup {id}"
            )))
        }
        Err(e) => return Err(engine_status(e)),
    };
    if local.state != BackupState::Available || local != p.record {
        return Err(Status::failed_precondition(format!(
            "the store's record of backup {id} differs from the imported one"
        )));
    }
    if manifest_digest(control, &id)? != p.manifest_digest {
        return Err(Status::failed_precondition(format!(
            "the store's manifest of backup {id} differs from the exported one"
        )));
    }
    control.insert_imported(caller, p.backup)
}
