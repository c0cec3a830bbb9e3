//! The S3 Object Lock requests `object_store` does not make: GetObjectLockConfiguration,
//! PutObjectRetention and GetObjectRetention. They are signed with `object_store`'s own SigV4
//! authorizer and sent through its HTTP client, with the backend's credentials and endpoint.
//!
//! A bucket has Object Lock only when it was created with it (which also turns on
//! versioning); then a DELETE without a version id adds a delete marker and the retained
//! version stays, so nothing here changes how packs are written, read or deleted.
use std::io;

use base64::Engine as _;
use bytes::Bytes;
use md5::Digest as _;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::ClientOptions;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::pack::{ObjectLock, RetentionMode};
use crate::s3::S3Settings;

/// Signs and sends Object Lock requests for one bucket.
pub(crate) struct S3Lock {
    /// The bucket's URL, without a trailing `/` (path-style: `endpoint/bucket`).
    base: String,
    region: String,
    credential: AwsCredential,
    client: HttpClient,
}

/// Bytes of `s` outside the unreserved set (and `/`) percent-encoded, as S3 keys are in URLs.
fn encode_key(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of the first `<tag>…</tag>` in `xml`.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

fn rfc3339(secs: u64) -> io::Result<String> {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "retention out of range"))?;
    t.format(&Rfc3339)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

impl S3Lock {
    pub(crate) fn new(
        settings: &S3Settings,
        credential: AwsCredential,
        options: &ClientOptions,
    ) -> io::Result<S3Lock> {
        let base = match &settings.endpoint {
            Some(ep) if settings.path_style => {
                format!("{}/{}", ep.trim_end_matches('/'), settings.bucket)
            }
            Some(ep) => {
                let (scheme, host) = ep.split_once("://").unwrap_or(("https", ep));
                format!(
                    "{scheme}://{}.{}",
                    settings.bucket,
                    host.trim_end_matches('/')
                )
            }
            None if settings.path_style => format!(
                "https://s3.{}.amazonaws.com/{}",
                settings.region, settings.bucket
            ),
            None => format!(
                "https://{}.s3.{}.amazonaws.com",
                settings.bucket, settings.region
            ),
        };
        let client = ReqwestConnector::default()
            .connect(options)
            .map_err(|e| io::Error::other(format!("S3 client: {e}")))?;
        Ok(S3Lock {
            base,
            region: settings.region.clone(),
            credential,
            client,
        })
    }

    /// Sends one signed request; returns the status and body.
    async fn send(
        &self,
        method: http::Method,
        url: String,
        body: Vec<u8>,
    ) -> io::Result<(u16, String)> {
        let what = format!("{method} {url}");
        let mut b = http::Request::builder().method(method).uri(&url);
        if !body.is_empty() {
            let md5 = md5::Md5::digest(&body);
            b = b
                .header(
                    "content-md5",
                    base64::engine::general_purpose::STANDARD.encode(md5),
                )
                .header("content-type", "application/xml");
        }
        let mut req = b
            .body(HttpRequestBody::from(Bytes::from(body)))
            .map_err(|e| io::Error::other(format!("{what}: {e}")))?;
        AwsAuthorizer::new(&self.credential, "s3", &self.region)
            .try_authorize(&mut req, None)
            .map_err(|e| io::Error::other(format!("{what}: signing: {e}")))?;
        let resp = self
            .client
            .execute(req)
            .await
            .map_err(|e| io::Error::other(format!("{what}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .bytes()
            .await
            .map_err(|e| io::Error::other(format!("{what}: reading the answer: {e}")))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// GetObjectLockConfiguration: whether the bucket has Object Lock enabled.
    pub(crate) async fn configuration(&self) -> io::Result<ObjectLock> {
        let url = format!("{}/?object-lock=", self.base);
        let (status, body) = self.send(http::Method::GET, url, Vec::new()).await?;
        if status == 200 && element(&body, "ObjectLockEnabled") == Some("Enabled") {
            return Ok(ObjectLock::Available);
        }
        if matches!(status, 401 | 403) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "GetObjectLockConfiguration of {}: {status} {}",
                    self.base,
                    element(&body, "Code").unwrap_or("")
                ),
            ));
        }
        if status >= 500 && status != 501 {
            return Err(io::Error::other(format!(
                "GetObjectLockConfiguration of {}: {status}",
                self.base
            )));
        }
        let code = element(&body, "Code").unwrap_or("no Object Lock configuration");
        Ok(ObjectLock::Unavailable(format!(
            "the bucket has no S3 Object Lock (GetObjectLockConfiguration answered {status} {code}); \
             Object Lock can only be enabled when a bucket is created"
        )))
    }

    /// PutObjectRetention of `key` until `until`; when the bucket refuses because the object
    /// already has a later retention (which only an extension may change), that one counts.
    pub(crate) async fn put_retention(
        &self,
        key: &str,
        mode: RetentionMode,
        until: u64,
    ) -> io::Result<u64> {
        let url = format!("{}/{}?retention=", self.base, encode_key(key));
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            mode.as_s3(),
            rfc3339(until)?
        );
        let (status, answer) = self
            .send(http::Method::PUT, url.clone(), body.into_bytes())
            .await?;
        if (200..300).contains(&status) {
            return Ok(until);
        }
        if let Some(have) = self.get_retention(key).await? {
            if have >= until {
                return Ok(have);
            }
        }
        let kind = match status {
            404 => io::ErrorKind::NotFound,
            401 | 403 => io::ErrorKind::PermissionDenied,
            400 | 501 => io::ErrorKind::Unsupported,
            _ => io::ErrorKind::Other,
        };
        Err(io::Error::new(
            kind,
            format!(
                "PutObjectRetention {url}: {status} {} {}",
                element(&answer, "Code").unwrap_or(""),
                element(&answer, "Message").unwrap_or("")
            ),
        ))
    }

    /// GetObjectRetention of `key`: its retain-until date, if it has one.
    pub(crate) async fn get_retention(&self, key: &str) -> io::Result<Option<u64>> {
        let url = format!("{}/{}?retention=", self.base, encode_key(key));
        let (status, body) = self.send(http::Method::GET, url, Vec::new()).await?;
        if status != 200 {
            return Ok(None);
        }
        Ok(element(&body, "RetainUntilDate")
            .and_then(|d| OffsetDateTime::parse(d, &Rfc3339).ok())
            .and_then(|t| u64::try_from(t.unix_timestamp()).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_answers() {
        assert_eq!(encode_key("p/packs/ab/x y.pack"), "p/packs/ab/x%20y.pack");
        let xml = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled>\
                   </ObjectLockConfiguration>";
        assert_eq!(element(xml, "ObjectLockEnabled"), Some("Enabled"));
        assert_eq!(element(xml, "Rule"), None);
        assert_eq!(element("<Code>x", "Code"), None);
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert!(rfc3339(u64::MAX).is_err());
    }
}
