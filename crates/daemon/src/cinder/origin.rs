//! Where a request says it was sent: the base URL that links in responses point at.
use axum::http::HeaderMap;

/// `http://HOST` from the Host header (`localhost` without one).
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}
