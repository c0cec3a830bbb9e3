//! What a handler knows of its request: the caller (from the token), the negotiated version, the
//! project in the URL (the caller acts only there; admins in any project), the base URL for
//! links, and the query parameters; and how it runs a control call on a blocking thread.
use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use base64::Engine as _;
use serde::de::DeserializeOwned;

use super::fault::Fault;
use super::origin::base_url;
use super::version::{Version, MIN_VERSION};
use super::Shared;
use crate::auth::Caller;
use crate::config::Role;
use crate::control::Control;
use crate::error::Error;

/// An authenticated request inside one project.
pub struct Call {
    pub caller: Caller,
    pub version: Version,
    /// The project of the URL (`/v3/{project_id}/...`).
    pub project: String,
    /// `http://host:port` as the client addressed us, for links.
    pub base: String,
    /// Query parameters, in order.
    pub params: Vec<(String, String)>,
    control: Arc<Control>,
}

impl Call {
    /// Runs `f` on a blocking thread with the control plane and the caller.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Control, &Caller) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Fault> {
        let control = self.control.clone();
        let caller = self.caller.clone();
        tokio::task::spawn_blocking(move || f(&control, &caller))
            .await
            .map_err(|e| Fault::from(Error::internal(format!("request task failed: {e}"))))?
            .map_err(Fault::from)
    }

    /// The first value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The token of a request: HTTP Basic `USER:TOKEN` (what `cinder --os-auth-type http_basic`
/// sends), else `X-Auth-Token`.
fn token(headers: &HeaderMap) -> Result<Option<String>, Fault> {
    if let Some(v) = headers.get("authorization") {
        let text = v
            .to_str()
            .map_err(|_| Fault::unauthorized("Authorization is not valid text"))?;
        let Some(b64) = text
            .strip_prefix("Basic ")
            .or_else(|| text.strip_prefix("basic "))
        else {
            return Err(Fault::unauthorized(
                "Authorization: only Basic is supported (user:token)",
            ));
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| Fault::unauthorized("Authorization: Basic credentials are not base64"))?;
        let text = String::from_utf8(raw)
            .map_err(|_| Fault::unauthorized("Authorization: Basic credentials are not UTF-8"))?;
        let (_user, secret) = text.split_once(':').ok_or_else(|| {
            Fault::unauthorized("Authorization: Basic credentials are not user:token")
        })?;
        return Ok(Some(secret.to_string()));
    }
    match headers.get("x-auth-token") {
        Some(v) => Ok(Some(
            v.to_str()
                .map_err(|_| Fault::unauthorized("X-Auth-Token is not valid text"))?
                .to_string(),
        )),
        None => Ok(None),
    }
}

/// The caller behind the request's token.
fn authenticate(headers: &HeaderMap, shared: &Shared) -> Result<Caller, Fault> {
    let Some(token) = token(headers)? else {
        return Err(Fault::unauthorized(
            "authentication required: HTTP Basic user:token, or X-Auth-Token",
        ));
    };
    if let Some(c) = shared.auth.lookup(&token) {
        return Ok(c);
    }
    if shared.noauth {
        // Cinder's noauth: `user:project`, a member of that project, no secret.
        if let Some((user, project)) = token.split_once(':') {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 255
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            };
            if ok(user) && ok(project) {
                return Ok(Caller {
                    project: project.to_string(),
                    user: user.to_string(),
                    role: Role::Member,
                });
            }
        }
    }
    Err(Fault::unauthorized("unknown token"))
}

impl FromRequestParts<Shared> for Call {
    type Rejection = Fault;

    async fn from_request_parts(parts: &mut Parts, shared: &Shared) -> Result<Call, Fault> {
        let version = parts
            .extensions
            .get::<Version>()
            .copied()
            .unwrap_or(MIN_VERSION);
        let project = parts
            .uri
            .path()
            .split('/')
            .nth(2)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Fault::bad_request("project_id: missing from the URL"))?
            .to_string();
        let caller = authenticate(&parts.headers, shared)?;
        let caller = if caller.role == Role::Admin {
            // An admin acts in the URL's project (and sees every project).
            Caller {
                project: project.clone(),
                ..caller
            }
        } else if caller.project == project {
            caller
        } else {
            return Err(Fault::from(Error::permission_denied(format!(
                "project_id: the token of user {} acts in project {}, not in {project}",
                caller.user, caller.project
            ))));
        };
        let params = match parts.uri.query() {
            None => Vec::new(),
            Some(_) => {
                let Query(p) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
                    .map_err(|e| Fault::bad_request(format!("query string: {e}")))?;
                p
            }
        };
        Ok(Call {
            caller,
            version,
            project,
            base: base_url(&parts.headers),
            params,
            control: shared.control.clone(),
        })
    }
}

/// Parses a JSON request body into `T`, refusing what does not fit with a bad request naming
/// the place.
pub fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Fault> {
    serde_json::from_slice(bytes).map_err(|e| Fault::bad_request(format!("request body: {e}")))
}
