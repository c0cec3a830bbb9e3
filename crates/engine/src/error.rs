//! Errors of the data plane. Each says what it was about; [`Error::is_retryable`] tells a
//! scheduler whether trying again can help.
use blockvault_core::{BackupId, BackupState, ChunkId, VolumeId};

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in a backup, restore, verify, delete or GC.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] blockvault_store::Error),
    #[error(transparent)]
    Core(#[from] blockvault_core::Error),
    #[error("source {path}: {source}")]
    Source {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("restore target {path}: {source}")]
    Target {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("restore target {path} holds {have} bytes but backup {backup} needs {need}")]
    TargetTooSmall {
        path: String,
        have: u64,
        need: u64,
        backup: BackupId,
    },
    #[error("restore target {0} is not a regular file or block device")]
    TargetKind(String),
    #[error(
        "volume {0} has no available backup to base an incremental on; run a full backup first"
    )]
    NoParent(VolumeId),
    #[error("parent {parent}: {reason}")]
    BadParent { parent: BackupId, reason: String },
    #[error("backup {id} is {state:?}, not available")]
    NotAvailable { id: BackupId, state: BackupState },
    #[error(
        "this store has no master key; create one with `blockvault local init --key-file FILE`"
    )]
    NoMasterKey,
    #[error("key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("wrong master key: {0}")]
    WrongMasterKey(String),
    #[error("chunk {chunk} failed verification: {detail}")]
    Corrupt { chunk: ChunkId, detail: String },
    #[error(
        "changed_extents: the CBT source missed a change: bytes {offset}..{} differ from parent \
         {parent} (the sampling check read {sampled} bytes of unchanged regions)",
        offset + len
    )]
    CbtMismatch {
        parent: BackupId,
        offset: u64,
        len: u64,
        sampled: u64,
    },
    #[error("operation cancelled")]
    Cancelled,
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// True when retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(e) => e.is_retryable(),
            Error::Source { .. } | Error::Target { .. } => true,
            _ => false,
        }
    }

    /// A backup's manifest failed a check ([`blockvault_core::manifest::Coverage`], or the
    /// store's block sequence): a corruption naming the backup. Other errors pass through.
    pub(crate) fn for_manifest(backup: BackupId, e: impl Into<Error>) -> Error {
        let what = format!("manifest of backup {backup}");
        match e.into() {
            Error::Core(blockvault_core::Error::Corrupt { detail, .. }) => {
                Error::Store(blockvault_store::Error::Corrupt { what, detail })
            }
            Error::Store(blockvault_store::Error::Core(blockvault_core::Error::Corrupt {
                what: w,
                detail,
            })) => Error::Store(blockvault_store::Error::Corrupt {
                what,
                detail: format!("{w}: {detail}"),
            }),
            other => other,
        }
    }

    /// Maps store/core corruption of a chunk to [`Error::Corrupt`] naming the chunk.
    pub(crate) fn for_chunk(id: ChunkId, e: impl Into<Error>) -> Error {
        match e.into() {
            Error::Core(blockvault_core::Error::CorruptChunk { detail, .. }) => {
                Error::Corrupt { chunk: id, detail }
            }
            Error::Store(blockvault_store::Error::Corrupt { what, detail }) => Error::Corrupt {
                chunk: id,
                detail: format!("{what}: {detail}"),
            },
            other => other,
        }
    }
}
