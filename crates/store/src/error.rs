//! Errors of the chunk store. Every variant carries what it was about (path, chunk, backup).
use blockvault_core::{BackupId, ChunkId, PackId};

/// Result alias for the store crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("index {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("the store at {0} is in use by another blockvault process")]
    Busy(String),
    #[error("{0}")]
    Core(#[from] blockvault_core::Error),
    #[error("chunk {0} is missing from the store")]
    MissingChunk(ChunkId),
    #[error("pack {pack} is missing (chunk {chunk})")]
    MissingPack { pack: PackId, chunk: ChunkId },
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("backup {0} not found")]
    BackupNotFound(BackupId),
    #[error("invalid store config: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    pub(crate) fn db(op: &'static str) -> impl FnOnce(rocksdb::Error) -> Error {
        move |source| Error::Db { op, source }
    }
    /// True when retrying the same operation later may succeed (I/O and index errors).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Io { .. } | Error::Db { .. } | Error::Busy(_))
    }
}
