//! Newtypes for the identifiers of the domain: chunks, packs, backups, volumes.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The identity of a chunk: BLAKE3 of its plaintext (keyed for encrypted volumes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Length of the id in bytes.
    pub const LEN: usize = 32;

    /// Builds an id from a slice that must be exactly 32 bytes long.
    pub fn from_slice(b: &[u8]) -> Result<Self> {
        let a: [u8; 32] = b
            .try_into()
            .map_err(|_| Error::corrupt("chunk id", format!("length {} != 32", b.len())))?;
        Ok(ChunkId(a))
    }
    /// Raw bytes of the id.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Lower-case hex, as shown to operators.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}
impl FromStr for ChunkId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let v = hex::decode(s).map_err(|e| Error::invalid("chunk id", e.to_string()))?;
        ChunkId::from_slice(&v).map_err(|_| Error::invalid("chunk id", "must be 64 hex digits"))
    }
}

/// The identity of a pack file: 128 random bits, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    /// A fresh random pack id.
    pub fn random() -> Self {
        PackId(rand::random())
    }
    /// Lower-case hex, also the pack's file name stem.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(PackId(v.try_into().ok()?))
    }
}
impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({})", self.to_hex())
    }
}

/// The identity of a backup: a UUID, as in the Cinder API.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackupId(pub uuid::Uuid);

impl BackupId {
    /// A fresh random (v4) backup id.
    pub fn new() -> Self {
        BackupId(uuid::Uuid::new_v4())
    }
    /// The 16 raw bytes, used in index keys.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
    /// From 16 raw bytes of an index key.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        BackupId(uuid::Uuid::from_bytes(b))
    }
}
impl Default for BackupId {
    fn default() -> Self {
        Self::new()
    }
}
impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl fmt::Debug for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupId({})", self.0)
    }
}
impl FromStr for BackupId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        uuid::Uuid::parse_str(s.trim())
            .map(BackupId)
            .map_err(|e| Error::invalid("backup id", format!("{s:?} is not a UUID: {e}")))
    }
}

/// The operator's name for a volume: 1 to 255 characters of `[A-Za-z0-9._:-]`.
///
/// The alphabet keeps ids safe in file names, index keys and log lines.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeId(String);

impl VolumeId {
    /// Longest accepted volume id.
    pub const MAX_LEN: usize = 255;

    /// Validates and wraps a volume id.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(Error::invalid(
                "volume id",
                format!("must be 1 to {} characters, got {}", Self::MAX_LEN, s.len()),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
        {
            return Err(Error::invalid(
                "volume id",
                format!("character {c:?} is not allowed (use letters, digits, '.', '_', '-', ':')"),
            ));
        }
        Ok(VolumeId(s))
    }
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for VolumeId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        VolumeId::new(s)
    }
}
impl From<VolumeId> for String {
    fn from(v: VolumeId) -> String {
        v.0
    }
}
impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VolumeId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_id_rules() {
        assert!(VolumeId::new("vol-1.a_b:c").is_ok());
        assert!(VolumeId::new("").is_err());
        assert!(VolumeId::new("a/b").is_err());
        assert!(VolumeId::new("x".repeat(256)).is_err());
    }

    #[test]
    fn chunk_id_hex_roundtrip() {
        let id = ChunkId(*blake3::hash(b"x").as_bytes());
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert!("abc".parse::<ChunkId>().is_err());
    }
}
