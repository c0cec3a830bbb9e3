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
    /// The dedup domain of an unencrypted backup whose chunk ids are keyed by the domain's id
    /// key ([`crate::keys::MasterKey::dedup_domain_id_key`]); `None` for the global domain and
    /// for encrypted backups (keyed by their data key). Absent in records written before the
    /// field existed, and omitted when `None`, so such records are unchanged byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_domain: Option<String>,
    /// How a CBT incremental read its volume ([`CbtStats`]); `None` for backups that read
    /// everything. Omitted when `None`, like `dedup_domain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cbt: Option<CbtStats>,
}

/// What a changed-block-tracking incremental read, and what its sampling check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CbtStats {
    /// The form the changed extents came in (`plain`, `rbd-diff`, `nbd-dirty-map`).
    pub source: String,
    /// Bytes the changed extents cover.
    pub changed_bytes: u64,
    /// Bytes of the volume read and chunked: the changed extents, widened to the parent's chunk
    /// boundaries until the chunking met the parent's cut points again (sampling excluded).
    pub read_bytes: u64,
    /// Bytes of regions reported unchanged that were read and compared with the parent.
    pub sampled_bytes: u64,
    /// The offset of the first sampled region that differed from the parent (the CBT source
    /// missed a change); `None` when every sampled region matched.
    pub mismatch_offset: Option<u64>,
    /// After a mismatch, the backup read the whole volume instead (as configured).
    pub full_read: bool,
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

    /// A record as written before `dedup_domain` existed.
    const OLD_RECORD: &str = r#"{"format":1,"id":"5f0c8a52-8a3e-4a4e-9d38-3c1b1c0c2f11","volume_id":"vol-1","state":"available","size":1048576,"stored_bytes":524288,"new_chunks":16,"object_count":32,"hole_bytes":0,"is_incremental":false,"parent_id":null,"created_at":"2026-11-20T10:00:00Z","data_timestamp":"2026-11-20T10:00:00Z","completed_at":"2026-11-20T10:00:05Z","encrypted":false,"encryption_key_id":null,"chunker":{"min_size":8192,"avg_size":32768,"max_size":131072},"manifest_blocks":1,"fail_reason":null}"#;

    #[test]
    fn record_without_dedup_domain_still_parses_and_reencodes_unchanged() {
        let r = BackupRecord::decode(OLD_RECORD.as_bytes()).unwrap();
        assert_eq!(r.dedup_domain, None);
        assert_eq!(r.size, 1 << 20);
        let old: serde_json::Value = serde_json::from_str(OLD_RECORD).unwrap();
        let new: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        assert_eq!(old, new);
    }

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
            dedup_domain: None,
            cbt: None,
        };
        assert_eq!(BackupRecord::decode(&r.encode()).unwrap(), r);
        let with_domain = BackupRecord {
            dedup_domain: Some("p1".into()),
            cbt: Some(CbtStats {
                source: "rbd-diff".into(),
                changed_bytes: 4096,
                read_bytes: 65536,
                sampled_bytes: 8192,
                mismatch_offset: None,
                full_read: false,
            }),
            ..r.clone()
        };
        assert_eq!(
            BackupRecord::decode(&with_domain.encode()).unwrap(),
            with_domain
        );
        for st in [
            BackupState::InProgress,
            BackupState::Available,
            BackupState::Error,
            BackupState::Deleting,
        ] {
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
        // Without a domain the field is omitted: the record is what older versions wrote.
        let v: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        assert!(v.get("dedup_domain").is_none(), "{v}");
        assert!(v.get("cbt").is_none(), "{v}");
        let mut v: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        v["format"] = 99.into();
        assert!(BackupRecord::decode(&serde_json::to_vec(&v).unwrap()).is_err());
    }
}
