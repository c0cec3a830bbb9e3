//! Microversions: `OpenStack-API-Version: volume 3.N` (or `volume latest`) is negotiated on
//! every request, echoed on every answer, and answered with 406 outside `MIN..=MAX`; a request
//! without it is served as 3.0. Version discovery lives at `/` and `/v3/`.
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::fault::Fault;

/// The oldest microversion served (3.0: the v3 API itself).
pub const MIN_VERSION: Version = Version(0);
/// The newest microversion served: 3.64 (`encryption_key_id` in backup details). The field
/// sets that grow on the way: 3.9 backup update, 3.18 `os-backup-project-attr:project_id`,
/// 3.43 backup metadata, 3.45 `count` with `with_count`, 3.56 `user_id`.
pub const MAX_VERSION: Version = Version(64);

const HEADER: &str = "openstack-api-version";

/// A microversion 3.N, as N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32);

impl Version {
    /// At least 3.`minor`?
    pub fn at_least(self, minor: u32) -> bool {
        self.0 >= minor
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "3.{}", self.0)
    }
}

/// The version a request asks for: `Ok(None)` without the header.
fn requested(headers: &HeaderMap) -> Result<Option<Version>, String> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(None);
    };
    let text = v
        .to_str()
        .map_err(|_| "OpenStack-API-Version is not valid text".to_string())?;
    // `service version[, service version...]`: only `volume` is ours.
    for part in text.split(',') {
        let mut words = part.split_whitespace();
        let (Some(service), Some(version), None) = (words.next(), words.next(), words.next())
        else {
            return Err(format!(
                "OpenStack-API-Version {text:?} is not \"volume 3.N\""
            ));
        };
        if service != "volume" {
            continue;
        }
        if version == "latest" {
            return Ok(Some(MAX_VERSION));
        }
        let minor = version
            .strip_prefix("3.")
            .and_then(|m| m.parse::<u32>().ok())
            .filter(|_| !version.ends_with('.'));
        return match minor {
            Some(m) => Ok(Some(Version(m))),
            None => Err(format!(
                "Version {version} is not supported by the API. Minimum is {MIN_VERSION} and \
                 maximum is {MAX_VERSION}."
            )),
        };
    }
    Ok(None)
}

/// Middleware: negotiates the version into the request's extensions and echoes it.
pub async fn negotiate(mut req: Request, next: Next) -> Response {
    let version = match requested(req.headers()) {
        Ok(None) => MIN_VERSION,
        Ok(Some(v)) if (MIN_VERSION..=MAX_VERSION).contains(&v) => v,
        Ok(Some(v)) => {
            return Fault::not_acceptable(format!(
                "Version {v} is not supported by the API. Minimum is {MIN_VERSION} and maximum \
                 is {MAX_VERSION}."
            ))
            .into_response()
        }
        Err(m) => return Fault::not_acceptable(m).into_response(),
    };
    req.extensions_mut().insert(version);
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("volume {version}")) {
        h.insert(HEADER, v);
    }
    h.insert("vary", HeaderValue::from_static("OpenStack-API-Version"));
    res
}

/// `GET /` and `GET /v3/`: the one version this endpoint serves.
pub async fn versions(headers: HeaderMap) -> Json<Value> {
    let base = super::origin::base_url(&headers);
    Json(json!({
        "versions": [{
            "id": "v3.0",
            "status": "CURRENT",
            "version": MAX_VERSION.to_string(),
            "min_version": MIN_VERSION.to_string(),
            "updated": "2024-01-01T00:00:00Z",
            "links": [
                {"rel": "describedby", "type": "text/html",
                 "href": "https://docs.openstack.org/"},
                {"rel": "self", "href": format!("{base}/v3/")},
            ],
            "media-types": [{
                "base": "application/json",
                "type": "application/vnd.openstack.volume+json;version=3",
            }],
        }]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(v: &str) -> Result<Option<Version>, String> {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_str(v).unwrap());
        requested(&h)
    }

    #[test]
    fn versions_parse_and_refuse() {
        assert_eq!(requested(&HeaderMap::new()), Ok(None));
        assert_eq!(ask("volume 3.45"), Ok(Some(Version(45))));
        assert_eq!(ask("compute 2.1, volume 3.9"), Ok(Some(Version(9))));
        assert_eq!(ask("volume latest"), Ok(Some(MAX_VERSION)));
        assert_eq!(ask("compute 2.1"), Ok(None));
        for bad in [
            "volume 2.0",
            "volume 3.",
            "volume 3.x",
            "volume",
            "volume 3.1 3.2",
        ] {
            assert!(ask(bad).is_err(), "{bad}");
        }
    }
}
