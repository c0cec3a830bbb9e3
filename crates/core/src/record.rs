//! The backup record: what is known about one backup, stored as versioned JSON.
//!
//! Field names follow the Cinder Backups API where one exists (`size`, `object_count`,
//! `is_incremental`, `parent_id`, `data_timestamp`, `created_at`, `encryption_key_id`).
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};
use crate::format::RECORD_VERSION;
use crate::id::{BackupId, VolumeId};

/// Lifecycle of a backup record in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupState {
    /// Being written; its references keep chunks alive only while its writer runs.
    InProgress,
    /// Committed: every chunk it names is durable. Restorable.
    Available,
    /// Failed or interrupted; its references are garbage.
    Error,
    /// Being deleted; its references are garbage.
    Deleting,
}

impl BackupState {
    /// The state's name as stored and shown (`in_progress`, `available`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            BackupState::InProgress => "in_progress",
            BackupState::Available => "available",
            BackupState::Error => "error",
            BackupState::Deleting => "deleting",
        }
    }
}

/// One backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRecord {
    /// Record format version ([`RECORD_VERSION`]).
    pub format: u32,
    pub id: BackupId,
    pub volume_id: VolumeId,
    pub state: BackupState,
    /// Volume size in bytes.
    pub size: u64,
    /// Bytes this backup added to the store (envelopes of chunks the store lacked).
    pub stored_bytes: u64,
    /// Chunks this backup added to the store.
    pub new_chunks: u64,
    /// Chunk entries in the manifest (holes excluded).
    pub object_count: u64,
    /// Bytes of the volume recorded as holes (all-zero chunks).
    pub hole_bytes: u64,
    pub is_incremental: bool,
    pub parent_id: Option<BackupId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the volume's data was read (the start of the backup).
    #[serde(with = "time::serde::rfc3339")]
    pub data_timestamp: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    pub encrypted: bool,
    /// The volume's data key UUID; only for encrypted volumes.
    pub encryption_key_id: Option<uuid::Uuid>,
    /// Chunker parameters the manifest was cut with.
    pub chunker: ChunkerParams,
    /// Number of manifest blocks.
    pub manifest_blocks: u32,
    /// Why the backup failed, for `Error` records.
    pub fail_reason: Option<String>,
}

impl BackupRecord {
    /// JSON encoding as stored in the index.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("record serializes")
    }
    /// Parses a stored record, refusing unknown versions.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let r: BackupRecord = serde_json::from_slice(b)
            .map_err(|e| Error::corrupt("backup record", e.to_string()))?;
        if r.format != RECORD_VERSION {
            return Err(Error::corrupt(
                "backup record",
                format!("unsupported format version {}", r.format),
            ));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_and_version_check() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let r = BackupRecord {
            format: RECORD_VERSION,
            id: BackupId::new(),
            volume_id: VolumeId::new("v").unwrap(),
            state: BackupState::Available,
            size: 10,
            stored_bytes: 5,
            new_chunks: 1,
            object_count: 1,
            hole_bytes: 0,
            is_incremental: true,
            parent_id: Some(BackupId::new()),
            created_at: now,
            data_timestamp: now,
            completed_at: Some(now),
            encrypted: false,
            encryption_key_id: None,
            chunker: ChunkerParams::default(),
            manifest_blocks: 1,
            fail_reason: None,
        };
        assert_eq!(BackupRecord::decode(&r.encode()).unwrap(), r);
        for st in [
            BackupState::InProgress,
            BackupState::Available,
            BackupState::Error,
            BackupState::Deleting,
        ] {
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
        let mut v: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        v["format"] = 99.into();
        assert!(BackupRecord::decode(&serde_json::to_vec(&v).unwrap()).is_err());
    }
}
