//! The control plane's one error type.
//!
//! Every rule of the control plane answers with an [`Error`] that carries what the caller did
//! wrong (or what went wrong inside) in words that name the field or the row. The front ends map
//! it once each: `api.rs` to gRPC status codes, the Cinder REST front end to Cinder's fault
//! bodies and HTTP status codes. Nothing below the front ends knows about either protocol.
use blockvault_engine::Error as EngineError;

/// What went wrong, by the meaning a client acts on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field of the request is malformed or out of range; the message starts with its name.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named row does not exist, or the caller may not see it (the two are not told apart,
    /// so no project learns what another holds).
    #[error("{0}")]
    NotFound(String),
    /// A row with this id or name exists already.
    #[error("{0}")]
    Conflict(String),
    /// The request is well formed but the rows are not in a state that allows it.
    #[error("{0}")]
    Precondition(String),
    /// A limit of the vault or the daemon is reached.
    #[error("{0}")]
    Quota(String),
    /// The caller's role or project does not allow this.
    #[error("{0}")]
    PermissionDenied(String),
    /// No caller, or an unknown token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The operation was cancelled.
    #[error("{0}")]
    Cancelled(String),
    /// The daemon cannot serve this now (it is shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// A fault inside the daemon, the store or the database; not the caller's doing.
    #[error("{0}")]
    Internal(String),
}

/// The control plane's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `field: why`: the form of every refusal of one field.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Error {
        Error::InvalidArgument(format!("{field}: {why}"))
    }
    pub fn invalid_argument(m: impl Into<String>) -> Error {
        Error::InvalidArgument(m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Error {
        Error::NotFound(m.into())
    }
    pub fn already_exists(m: impl Into<String>) -> Error {
        Error::Conflict(m.into())
    }
    pub fn failed_precondition(m: impl Into<String>) -> Error {
        Error::Precondition(m.into())
    }
    pub fn resource_exhausted(m: impl Into<String>) -> Error {
        Error::Quota(m.into())
    }
    pub fn permission_denied(m: impl Into<String>) -> Error {
        Error::PermissionDenied(m.into())
    }
    pub fn unauthenticated(m: impl Into<String>) -> Error {
        Error::Unauthenticated(m.into())
    }
    pub fn unavailable(m: impl Into<String>) -> Error {
        Error::Unavailable(m.into())
    }
    pub fn internal(m: impl std::fmt::Display) -> Error {
        Error::Internal(m.to_string())
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidArgument(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::Precondition(m)
            | Error::Quota(m)
            | Error::PermissionDenied(m)
            | Error::Unauthenticated(m)
            | Error::Cancelled(m)
            | Error::Unavailable(m)
            | Error::Internal(m) => m,
        }
    }
}

/// What an engine error means to a caller of the control plane.
impl From<EngineError> for Error {
    fn from(e: EngineError) -> Error {
        let m = e.to_string();
        match e {
            EngineError::NoMasterKey | EngineError::WrongMasterKey(_) => Error::Precondition(m),
            EngineError::Store(blockvault_store::Error::BackupNotFound(_)) => Error::NotFound(m),
            EngineError::TargetTooSmall { .. } | EngineError::NotAvailable { .. } => {
                Error::Precondition(m)
            }
            EngineError::Cancelled => Error::Cancelled(m),
            _ => Error::Internal(m),
        }
    }
}

impl From<crate::model::DbError> for Error {
    fn from(e: crate::model::DbError) -> Error {
        Error::Internal(e.to_string())
    }
}
