//! Errors of the domain core.
//!
//! Rules: bytes that fail a structural check, a MAC or a hash become [`Error::Corrupt`] with what
//! was being decoded; key problems are [`Error::WrongKey`] and never carry key material.
use crate::id::ChunkId;

/// Result alias for the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in pure domain code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Stored bytes failed a structural, MAC or hash check.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// A chunk decoded but its content does not hash to its id.
    #[error("chunk {id} is corrupt: {detail}")]
    CorruptChunk { id: ChunkId, detail: String },
    /// The master key does not match the one the data was sealed with.
    #[error("wrong master key: {0}")]
    WrongKey(String),
    /// Input from a user that cannot be accepted.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// An I/O error with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            what,
            detail: detail.into(),
        }
    }
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
