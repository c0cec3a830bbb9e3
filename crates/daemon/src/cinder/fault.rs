//! Cinder's fault bodies, `{"itemNotFound": {"code": 404, "message": "..."}}`, and the one
//! mapping of the control plane's errors onto them. A rule that refuses because of a backup's or
//! volume's state is `badRequest` (400), as Cinder answers `InvalidBackup` and `InvalidVolume`.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::Error;

/// An error answer.
#[derive(Debug)]
pub struct Fault {
    status: StatusCode,
    message: String,
}

impl Fault {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Fault {
        Fault {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Fault {
        Fault::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_acceptable(message: impl Into<String>) -> Fault {
        Fault::new(StatusCode::NOT_ACCEPTABLE, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Fault {
        Fault::new(StatusCode::UNAUTHORIZED, message)
    }

    /// The key Cinder names the fault by.
    fn name(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "badRequest",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "itemNotFound",
            405 => "badMethod",
            406 => "notAcceptable",
            409 => "conflictingRequest",
            413 => "overLimit",
            415 => "badMediaType",
            501 => "notImplemented",
            503 => "serviceUnavailable",
            _ => "computeFault",
        }
    }
}

impl From<Error> for Fault {
    fn from(e: Error) -> Fault {
        let status = match &e {
            Error::InvalidArgument(_) | Error::Precondition(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) | Error::Cancelled(_) => StatusCode::CONFLICT,
            Error::Quota(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Fault::new(status, e.message())
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        let body =
            json!({ self.name(): { "code": self.status.as_u16(), "message": self.message } });
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Basic realm=\"blockvault\""),
            );
        }
        res
    }
}

/// Any path or method this API does not have.
pub async fn no_route() -> Fault {
    Fault::new(StatusCode::NOT_FOUND, "The resource could not be found.")
}
