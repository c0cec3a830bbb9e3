//! Exported backup records (Cinder's export_record / import_record).
//!
//! `backup_url` is base64 of a JSON envelope:
//! `{"kind": "blockvault-backup-record", "format": 2, "mac": "<keyed BLAKE3 hex of payload>",
//! "payload": "<JSON text>"}`. The MAC is keyed BLAKE3 under a key derived from the daemon's
//! master key ([`blockvault_core::MasterKey::record_mac_key`]), so only a daemon holding that
//! key can make a record that imports: a tenant cannot forge or edit one. The payload carries the
//! id of the store holding the data, the control-plane row (name, metadata, ...), the engine's
//! record, and a BLAKE3 digest of the backup's manifest. Import refuses a record whose MAC does
//! not check, a record of another store, and a record whose engine record or manifest the local
//! store does not hold exactly, so an imported backup is always restorable. What the backup *is*
//! (volume, parent, size, encryption) is taken from the store's own record, never from the
//! submitted row, and a volume or parent of another project is refused.
use base64::Engine as _;
use blockvault_core::{BackupId, BackupRecord, BackupState};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Caller;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::model::BackupRow;

/// Cinder's `backup_service` for blockvault records.
pub const BACKUP_SERVICE: &str = "blockvault.chunkstore";
const KIND: &str = "blockvault-backup-record";
/// Version of the exported record (2: keyed MAC instead of a plain checksum).
pub const EXPORT_VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    kind: String,
    format: u32,
    mac: String,
    payload: String,
}

/// The content of an exported record, once its MAC has been checked.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exported {
    pub store_id: Uuid,
    pub backup: BackupRow,
    pub record: BackupRecord,
    pub manifest_digest: String,
}

fn mac(key: &[u8; 32], payload: &str) -> blake3::Hash {
    blake3::keyed_hash(key, payload.as_bytes())
}

/// Decodes a `backup_url` and checks its MAC under `key`. Untrusted input: every failure is an
/// INVALID_ARGUMENT naming `backup_url`, never a panic.
pub fn decode(url: &str, key: &[u8; 32]) -> Result<Exported> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(url.trim())
        .map_err(|e| Error::invalid_argument(format!("backup_url: not base64: {e}")))?;
    let env: Envelope = serde_json::from_slice(&raw)
        .map_err(|e| Error::invalid_argument(format!("backup_url: not a backup record: {e}")))?;
    if env.kind != KIND || env.format != EXPORT_VERSION {
        return Err(Error::invalid_argument(format!(
            "backup_url: unsupported backup record {:?} version {} (this daemon reads version \
             {EXPORT_VERSION})",
            env.kind, env.format
        )));
    }
    let given = blake3::Hash::from_hex(env.mac.as_bytes()).map_err(|_| {
        Error::invalid_argument("backup_url: the record's mac is not 64 hex digits")
    })?;
    // blake3::Hash compares in constant time.
    if given != mac(key, &env.payload) {
        return Err(Error::invalid_argument(
            "backup_url: the record's MAC does not check: it was altered, damaged, or exported \
             by a daemon with another master key",
        ));
    }
    serde_json::from_str(&env.payload)
        .map_err(|e| Error::invalid_argument(format!("backup_url: record payload: {e}")))
}

/// Encodes a record with its MAC under `key` (the inverse of [`decode`]).
pub fn encode(e: &Exported, key: &[u8; 32]) -> String {
    let payload = serde_json::to_string(e).expect("payload serializes");
    let env = Envelope {
        kind: KIND.into(),
        format: EXPORT_VERSION,
        mac: mac(key, &payload).to_hex().to_string(),
        payload,
    };
    base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(&env).expect("envelope serializes"))
}

fn record_key(control: &Control) -> Result<&[u8; 32]> {
    control
        .record_key
        .as_deref()
        .ok_or_else(|| Error::failed_precondition("this daemon has no master key to sign records"))
}

/// BLAKE3 over the backup's manifest blocks, in order.
fn manifest_digest(control: &Control, id: &BackupId) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut blocks = 0u32;
    for b in control.engine().manifest(id) {
        let b = b.map_err(|e| Error::failed_precondition(format!("manifest of {id}: {e}")))?;
        h.update(&b.encode());
        blocks += 1;
    }
    h.update(&blocks.to_le_bytes());
    Ok(h.finalize().to_hex().to_string())
}

/// Backups.ExportRecord: (backup_service, backup_url).
pub fn export(control: &Control, caller: &Caller, id: &str) -> Result<(String, String)> {
    let key = record_key(control)?;
    let (backup, record) = control.backups().exportable(caller, id)?;
    let exported = Exported {
        store_id: control.engine().store_id(),
        manifest_digest: manifest_digest(control, &record.id)?,
        backup,
        record,
    };
    Ok((BACKUP_SERVICE.to_string(), encode(&exported, key)))
}

/// Backups.ImportRecord: checks the record against the local store and adds the backup.
pub fn import(control: &Control, caller: &Caller, service: &str, url: &str) -> Result<BackupRow> {
    caller.must_write()?;
    if service != BACKUP_SERVICE {
        return Err(Error::invalid_argument(format!(
            "backup_service: {service:?} is not {BACKUP_SERVICE:?}"
        )));
    }
    let p = decode(url, record_key(control)?)?;
    let ours = control.engine().store_id();
    if p.store_id != ours {
        return Err(Error::failed_precondition(format!(
            "the record belongs to store {}, this daemon's store is {ours}; attach a copy of \
             that store first",
            p.store_id
        )));
    }
    if p.backup.id != p.record.id.0 {
        return Err(Error::invalid_argument("backup record ids disagree"));
    }
    let id = p.record.id;
    let local = match control.engine().get(&id) {
        Ok(r) => r,
        Err(blockvault_engine::Error::Store(blockvault_store::Error::BackupNotFound(_))) => {
            return Err(Error::failed_precondition(format!(
                "this daemon's store does not hold backup {id}"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if local.state != BackupState::Available || local != p.record {
        return Err(Error::failed_precondition(format!(
            "the store's record of backup {id} differs from the imported one"
        )));
    }
    if manifest_digest(control, &id)? != p.manifest_digest {
        return Err(Error::failed_precondition(format!(
            "the store's manifest of backup {id} differs from the exported one"
        )));
    }
    // What the backup is comes from the store's record, not from the submitted row.
    let mut row = p.backup;
    row.volume_id = Uuid::parse_str(local.volume_id.as_str()).map_err(|_| {
        Error::failed_precondition(format!(
            "backup {id} belongs to volume {:?}, which is not a daemon volume id",
            local.volume_id.as_str()
        ))
    })?;
    row.parent_id = local.parent_id.map(|p| p.0);
    row.is_incremental = local.is_incremental;
    row.size = local.size;
    row.encrypted = local.encrypted;
    row.encryption_key_id = local.encryption_key_id;
    row.object_count = local.object_count;
    row.stored_bytes = local.stored_bytes;
    row.snapshot_id = None;
    control.backups().insert_imported(caller, row)
}
