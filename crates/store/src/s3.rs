//! Packs as objects in an S3-compatible bucket (AWS S3, Ceph RGW, MinIO, s3s), through the
//! `object_store` crate.
//!
//! Object names: `<prefix>/packs/<first two hex digits>/<pack id>.pack`, the same relative path
//! as a local store's pack file, so a pack can move between a directory and a bucket unchanged.
//!
//! The [`PackStorage`] trait is synchronous (the data path runs on plain threads); this backend
//! owns a small tokio runtime and every call waits for its future on a channel, so it may be
//! called from any thread, also from inside another tokio runtime's blocking pool.
//!
//! Durability: a sink's `finish` returns only after the PUT (packs up to one part) or the
//! CompleteMultipartUpload succeeded, so an index entry never points into a pack that is not a
//! complete object. Nothing relies on conditional writes: pack ids are random and never reused.
//!
//! Memory: a sink holds at most one part being filled and [`PARTS_IN_FLIGHT`] parts uploading
//! (8 MiB each), whatever the pack size.
use std::fmt;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blockvault_core::PackId;
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    OBJECT_STORE_COALESCE_DEFAULT,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use crate::error::{Error, Result};
use crate::pack::{Object, ObjectLock, PackSink, PackStorage, RetentionMode};
use crate::s3_lock::S3Lock;

/// Size of one multipart part; packs up to this size are uploaded with one PUT.
pub const PART_SIZE: usize = 8 << 20;
/// Parts of one pack uploading at the same time.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Parts uploading at the same time across all packs of a store. Up to four packs are alive in
/// a backup (the open one, two queued for the sealer, the one it finishes), so a bound per pack
/// alone would let four times [`PARTS_IN_FLIGHT`] parts of [`PART_SIZE`] sit in memory; this
/// one keeps the upload side of a backup at `(STORE_PARTS_IN_FLIGHT + 1) * PART_SIZE` however
/// many packs or backups there are.
pub const STORE_PARTS_IN_FLIGHT: usize = 3;
/// Reads a restore or verify keeps in flight against a bucket.
pub const READ_CONCURRENCY: usize = 8;
/// Attempts of one request by this backend (each attempt also has `object_store`'s own retries
/// of throttling, 5xx answers and timeouts).
const ATTEMPTS: u32 = 4;

/// Where a store's packs live in a bucket; recorded in `store.json` (never the credentials).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket ("" or path segments without leading or trailing `/`).
    #[serde(default)]
    pub prefix: String,
    /// Endpoint URL (`http://127.0.0.1:7480` for a local RGW); none means AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region (signing); RGW and most other servers accept any.
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), which RGW, MinIO and s3s need unless
    /// DNS names every bucket. Virtual-hosted style otherwise.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// A file (mode 0600) with `aws_access_key_id` and `aws_secret_access_key` lines, as in
    /// AWS's shared credentials file. None: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` from
    /// the environment.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_true() -> bool {
    true
}

impl S3Settings {
    /// Settings from a bucket URL `s3://BUCKET[/PREFIX]`, with AWS defaults for the rest.
    pub fn from_url(url: &str) -> Result<S3Settings> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::Config(format!(
                "bucket URL {url:?} must look like s3://BUCKET[/PREFIX]"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let s = S3Settings {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: None,
            region: default_region(),
            path_style: true,
            credentials_file: None,
        };
        s.validate()?;
        Ok(s)
    }

    /// The bucket URL (`s3://BUCKET/PREFIX`), for messages.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// Checks the names: a bucket name as S3 allows it, a prefix of plain path segments, an
    /// http(s) endpoint without credentials in it.
    pub fn validate(&self) -> Result<()> {
        let b = &self.bucket;
        let bucket_ok = (3..=63).contains(&b.len())
            && b.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
            && b.as_bytes()[0].is_ascii_alphanumeric()
            && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric();
        if !bucket_ok {
            return Err(Error::Config(format!(
                "bucket name {b:?}: 3 to 63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"
            )));
        }
        if !self.prefix.is_empty()
            && self.prefix.split('/').any(|seg| {
                seg.is_empty()
                    || seg == "."
                    || seg == ".."
                    || !seg
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
            })
        {
            return Err(Error::Config(format!(
                "bucket prefix {:?}: '/'-separated segments of letters, digits, '-', '_' or '.'",
                self.prefix
            )));
        }
        if let Some(ep) = &self.endpoint {
            let rest = ep
                .strip_prefix("http://")
                .or_else(|| ep.strip_prefix("https://"));
            match rest {
                Some(r) if !r.is_empty() && !r.contains('@') => {}
                _ => {
                    return Err(Error::Config(format!(
                        "S3 endpoint {ep:?} must be an http:// or https:// URL without credentials"
                    )))
                }
            }
        }
        if self.region.is_empty() || self.region.len() > 64 {
            return Err(Error::Config("S3 region must be 1 to 64 characters".into()));
        }
        Ok(())
    }
}

/// Access key pair.
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Reads the credentials: the settings' file if it names one, else the environment.
fn credentials(s: &S3Settings) -> Result<Credentials> {
    match &s.credentials_file {
        Some(p) => credentials_file(p),
        None => {
            let id = std::env::var("AWS_ACCESS_KEY_ID").ok();
            let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok();
            match (id, secret) {
                (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
                }),
                _ => Err(Error::Config(format!(
                    "no credentials for {}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a credentials file (mode 0600)",
                    s.url()
                ))),
            }
        }
    }
}

/// Parses a credentials file: `key = value` lines (`aws_access_key_id`,
/// `aws_secret_access_key`, optional `aws_session_token`); `#` comments and `[section]` lines
/// are ignored. The file must not be readable by group or others.
fn credentials_file(p: &FsPath) -> Result<Credentials> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(Error::Config(format!(
            "credentials file {} is readable or writable by group or others; run `chmod 600 {}`",
            p.display(),
            p.display()
        )));
    }
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(Error::Config(format!(
                "credentials file {}: a line is not `key = value`",
                p.display()
            )));
        };
        let v = v.trim().to_string();
        match k.trim() {
            "aws_access_key_id" => id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: token,
        }),
        _ => Err(Error::Config(format!(
            "credentials file {} needs aws_access_key_id and aws_secret_access_key",
            p.display()
        ))),
    }
}

/// Requests this backend sent (attempts; `object_store`'s own retries are not seen here).
#[derive(Debug, Default)]
pub struct RequestCounts {
    /// Ranged GETs (after neighbouring ranges were merged).
    pub gets: AtomicU64,
    /// Single-request PUTs of whole packs.
    pub puts: AtomicU64,
    /// CreateMultipartUpload, UploadPart and CompleteMultipartUpload requests.
    pub multipart: AtomicU64,
    /// LIST and DELETE requests.
    pub other: AtomicU64,
    /// Bytes sent in PUT and UploadPart bodies.
    pub bytes_up: AtomicU64,
    /// Bytes received in GET bodies.
    pub bytes_down: AtomicU64,
    /// Requests for catalog objects (PUT, GET, DELETE, LIST under `meta/`).
    pub catalog: AtomicU64,
    /// Parts uploading now, across all packs.
    pub parts_in_flight: AtomicU64,
    /// The most parts that were uploading at once.
    pub parts_in_flight_peak: AtomicU64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        [
            &self.gets,
            &self.puts,
            &self.multipart,
            &self.other,
            &self.catalog,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Number of GET requests `get_ranges` sends for `ranges`: it merges ranges less than
/// [`OBJECT_STORE_COALESCE_DEFAULT`] apart.
fn merged_requests(ranges: &[Range<u64>]) -> u64 {
    let mut v: Vec<_> = ranges.to_vec();
    v.sort_by_key(|r| r.start);
    let mut n = 0;
    let mut end: Option<u64> = None;
    for r in v {
        match end {
            Some(e) if r.start <= e.saturating_add(OBJECT_STORE_COALESCE_DEFAULT) => {
                end = Some(e.max(r.end));
            }
            _ => {
                n += 1;
                end = Some(r.end);
            }
        }
    }
    n
}

/// Pack storage in an S3 bucket.
pub struct S3Packs {
    settings: S3Settings,
    s3: Arc<AmazonS3>,
    lock: Arc<S3Lock>,
    counts: Arc<RequestCounts>,
    /// Permits for parts uploading, [`STORE_PARTS_IN_FLIGHT`] in all.
    parts: Arc<tokio::sync::Semaphore>,
    /// Taken on drop and shut down in the background: dropping a runtime inside another
    /// runtime's thread would panic.
    rt: Option<Runtime>,
}

impl fmt::Debug for S3Packs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Packs")
            .field("bucket", &self.settings.url())
            .finish_non_exhaustive()
    }
}

impl Drop for S3Packs {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn io_err(what: &str, e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            io::Error::new(io::ErrorKind::NotFound, format!("{what}: not found"))
        }
        e => io::Error::other(format!("{what}: {e}")),
    }
}

/// Errors worth another attempt: everything but answers that would not change.
fn retryable(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
    )
}

/// Runs `op` up to [`ATTEMPTS`] times with exponential backoff.
async fn attempt<T, F, Fut>(mut op: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    let mut n = 1;
    loop {
        match op().await {
            Err(e) if n < ATTEMPTS && retryable(&e) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                n += 1;
            }
            r => return r,
        }
    }
}

/// HTTP options of every request to the bucket.
fn client_options(settings: &S3Settings) -> ClientOptions {
    let http = settings
        .endpoint
        .as_deref()
        .is_some_and(|ep| ep.starts_with("http://"));
    ClientOptions::new()
        .with_timeout(Duration::from_secs(120))
        .with_connect_timeout(Duration::from_secs(10))
        .with_allow_http(http)
}

impl S3Packs {
    /// Connects to the bucket (no request is made until the first call).
    pub fn new(settings: S3Settings) -> Result<S3Packs> {
        settings.validate()?;
        let creds = credentials(&settings)?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&creds.access_key_id)
            .with_secret_access_key(&creds.secret_access_key)
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 6,
                retry_timeout: Duration::from_secs(120),
            })
            .with_client_options(client_options(&settings));
        let credential = object_store::aws::AwsCredential {
            key_id: creds.access_key_id,
            secret_key: creds.secret_access_key,
            token: creds.session_token.clone(),
        };
        let lock = S3Lock::new(&settings, credential, &client_options(&settings))
            .map_err(|e| Error::Config(format!("S3 bucket {}: {e}", settings.url())))?;
        if let Some(t) = creds.session_token {
            b = b.with_token(t);
        }
        if let Some(ep) = &settings.endpoint {
            b = b.with_endpoint(ep);
        }
        let s3 = b
            .build()
            .map_err(|e| Error::Config(format!("S3 bucket {}: {e}", settings.url())))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bv-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", e))?;
        Ok(S3Packs {
            settings,
            s3: Arc::new(s3),
            lock: Arc::new(lock),
            counts: Arc::default(),
            parts: Arc::new(tokio::sync::Semaphore::new(STORE_PARTS_IN_FLIGHT)),
            rt: Some(rt),
        })
    }

    /// Requests sent so far.
    pub fn requests(&self) -> &RequestCounts {
        &self.counts
    }

    /// The settings this backend was made from.
    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// Checks that the bucket answers and the credentials are accepted (one LIST request).
    pub fn probe(&self) -> Result<()> {
        let s3 = self.s3.clone();
        let prefix = self.key("packs");
        self.run(async move {
            use futures::StreamExt;
            let mut l = s3.list(Some(&prefix));
            match l.next().await {
                Some(Err(e)) => Err(e),
                _ => Ok(()),
            }
        })
        .map_err(|e| Error::Config(format!("S3 bucket {}: {e}", self.settings.url())))
    }

    fn key(&self, rel: &str) -> Path {
        if self.settings.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.settings.prefix))
        }
    }

    fn pack_key(&self, id: PackId) -> Path {
        let h = id.to_hex();
        self.key(&format!("packs/{}/{h}.pack", &h[..2]))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.as_ref().expect("runtime lives until drop").handle()
    }

    /// Runs `fut` on this backend's runtime and waits for it on the calling thread.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        block(self.handle(), fut)
    }
}

/// Spawns `fut` on `rt` and waits for its output on the calling thread (a plain channel, so this
/// works from any thread, unlike `Runtime::block_on`).
fn block<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    // The task only ends without sending if it panicked or the runtime shut down, which happens
    // in drop only.
    rx.recv().expect("S3 task ended without an answer")
}

impl PackStorage for S3Packs {
    fn create(&self, id: PackId) -> io::Result<Box<dyn PackSink>> {
        Ok(Box::new(S3Sink {
            rt: self.handle().clone(),
            s3: self.s3.clone(),
            key: self.pack_key(id),
            buf: Vec::new(),
            upload: None,
            size: 0,
            counts: self.counts.clone(),
            parts: self.parts.clone(),
        }))
    }

    fn read_at(&self, id: PackId, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let range = offset..offset + len as u64;
        let mut v = self.read_ranges(id, std::slice::from_ref(&range))?;
        Ok(v.pop().expect("one range, one answer"))
    }

    fn read_ranges(&self, id: PackId, ranges: &[Range<u64>]) -> io::Result<Vec<Vec<u8>>> {
        let key = self.pack_key(id);
        let what = format!("GET {}", self.describe(id));
        let s3 = self.s3.clone();
        let want: Vec<Range<u64>> = ranges.to_vec();
        let counts = self.counts.clone();
        let requests = merged_requests(ranges);
        let got = self.run(async move {
            // `get_ranges` merges neighbouring ranges into one request and runs the requests
            // in parallel.
            attempt(|| {
                let (s3, key, want) = (s3.clone(), key.clone(), want.clone());
                RequestCounts::add(&counts.gets, requests);
                let counts = counts.clone();
                async move {
                    let got = s3.get_ranges(&key, &want).await?;
                    let n: usize = got.iter().map(Bytes::len).sum();
                    RequestCounts::add(&counts.bytes_down, n as u64);
                    Ok(got)
                }
            })
            .await
        });
        let got = got.map_err(|e| io_err(&what, e))?;
        got.into_iter()
            .zip(ranges)
            .map(|(b, r)| {
                if b.len() as u64 == r.end - r.start {
                    Ok(b.to_vec())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{what}: short read at {}", r.start),
                    ))
                }
            })
            .collect()
    }

    fn read_concurrency(&self) -> usize {
        READ_CONCURRENCY
    }

    fn delete(&self, id: PackId) -> io::Result<()> {
        let what = format!("DELETE {}", self.describe(id));
        let r = self.retried(self.pack_key(id), count_other, |s3, key| async move {
            s3.delete(&key).await
        });
        match r {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err(&what, e)),
        }
    }

    fn list_sized(&self) -> io::Result<Vec<(PackId, u64)>> {
        let prefix = self.key("packs");
        let s3 = self.s3.clone();
        let what = format!("LIST {}/packs", self.settings.url());
        let counts = self.counts.clone();
        let names = self.run(async move {
            attempt(|| {
                let (s3, prefix) = (s3.clone(), prefix.clone());
                RequestCounts::add(&counts.other, 1);
                async move {
                    use futures::TryStreamExt;
                    s3.list(Some(&prefix))
                        .map_ok(|m| m.location.filename().map(|n| (n.to_string(), m.size)))
                        .try_collect::<Vec<_>>()
                        .await
                }
            })
            .await
        });
        let names = names.map_err(|e| io_err(&what, e))?;
        Ok(names
            .into_iter()
            .flatten()
            .filter_map(|(n, size)| {
                Some((n.strip_suffix(".pack").and_then(PackId::from_hex)?, size))
            })
            .collect())
    }

    fn describe(&self, id: PackId) -> String {
        format!("s3://{}/{}", self.settings.bucket, self.pack_key(id))
    }

    fn location(&self) -> String {
        self.settings.url()
    }

    fn put_meta(&self, name: &str, body: &[u8]) -> io::Result<()> {
        let key = self.meta_key(name)?;
        let what = format!("PUT s3://{}/{key}", self.settings.bucket);
        let data = PutPayload::from(Bytes::copy_from_slice(body));
        self.retried(key, count_catalog, move |s3, key| {
            let data = data.clone();
            async move { s3.put(&key, data).await }
        })
        .map(|_| ())
        .map_err(|e| io_err(&what, e))
    }

    fn get_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let key = self.meta_key(name)?;
        let what = format!("GET s3://{}/{key}", self.settings.bucket);
        let r = self.retried(key, count_catalog, |s3, key| async move {
            s3.get(&key).await?.bytes().await
        });
        match r {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io_err(&what, e)),
        }
    }

    fn delete_meta(&self, name: &str) -> io::Result<()> {
        let key = self.meta_key(name)?;
        let what = format!("DELETE s3://{}/{key}", self.settings.bucket);
        let r = self.retried(key, count_catalog, |s3, key| async move {
            s3.delete(&key).await
        });
        match r {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err(&what, e)),
        }
    }

    fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>> {
        let dir = self.meta_key(prefix.trim_end_matches('/'))?;
        let root = self.key("meta");
        let what = format!("LIST s3://{}/{dir}", self.settings.bucket);
        let found = self.retried(dir, count_catalog, |s3, dir| async move {
            use futures::TryStreamExt;
            s3.list(Some(&dir))
                .map_ok(|m| m.location)
                .try_collect::<Vec<_>>()
                .await
        });
        let found = found.map_err(|e| io_err(&what, e))?;
        let mut out: Vec<String> = found
            .iter()
            .filter_map(|loc| {
                let rel: Vec<String> = loc
                    .prefix_match(&root)?
                    .map(|p| p.as_ref().to_string())
                    .collect();
                Some(rel.join("/"))
            })
            .filter(|n| n.starts_with(prefix) && crate::catalog::valid_name(n))
            .collect();
        out.sort();
        Ok(out)
    }

    fn object_lock(&self) -> io::Result<ObjectLock> {
        RequestCounts::add(&self.counts.other, 1);
        let lock = self.lock.clone();
        self.run(async move { lock.configuration().await })
    }

    fn retain(&self, object: Object<'_>, mode: RetentionMode, until: u64) -> io::Result<u64> {
        let key = match object {
            Object::Pack(id) => self.pack_key(id),
            Object::Meta(name) => self.meta_key(name)?,
        };
        RequestCounts::add(&self.counts.other, 1);
        let lock = self.lock.clone();
        self.run(async move {
            let mut delay = Duration::from_millis(200);
            let mut n = 1;
            loop {
                match lock.put_retention(key.as_ref(), mode, until).await {
                    Err(e) if n < ATTEMPTS && e.kind() == io::ErrorKind::Other => {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        n += 1;
                    }
                    r => return r,
                }
            }
        })
    }
}

fn count_other(c: &RequestCounts) {
    RequestCounts::add(&c.other, 1);
}

fn count_catalog(c: &RequestCounts) {
    RequestCounts::add(&c.catalog, 1);
}

impl S3Packs {
    /// Runs `op(client, key)` on this backend's runtime with [`attempt`]'s retries, counting
    /// every attempt with `count`.
    fn retried<T, F, Fut>(
        &self,
        key: Path,
        count: fn(&RequestCounts),
        op: F,
    ) -> object_store::Result<T>
    where
        T: Send + 'static,
        F: Fn(Arc<AmazonS3>, Path) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = object_store::Result<T>> + Send + 'static,
    {
        let (s3, counts) = (self.s3.clone(), self.counts.clone());
        self.run(async move {
            attempt(|| {
                count(&counts);
                op(s3.clone(), key.clone())
            })
            .await
        })
    }

    /// The object key of catalog object `name`: `PREFIX/meta/NAME`.
    fn meta_key(&self, name: &str) -> io::Result<Path> {
        crate::catalog::check_name(name)?;
        Ok(self.key(&format!("meta/{name}")))
    }
}

/// An upload in progress: the multipart id, the parts done and the parts uploading.
struct Upload {
    id: String,
    parts: Vec<PartId>,
    in_flight: std::collections::VecDeque<tokio::task::JoinHandle<object_store::Result<PartId>>>,
}

/// A pack being uploaded: one PUT if it stays within [`PART_SIZE`], else a multipart upload
/// whose parts go up while the pack is written.
struct S3Sink {
    rt: tokio::runtime::Handle,
    s3: Arc<AmazonS3>,
    key: Path,
    buf: Vec<u8>,
    upload: Option<Upload>,
    size: u64,
    counts: Arc<RequestCounts>,
    /// The store's permits for parts uploading (see [`STORE_PARTS_IN_FLIGHT`]).
    parts: Arc<tokio::sync::Semaphore>,
}

impl S3Sink {
    fn what(&self) -> String {
        format!("upload of {}", self.key)
    }

    /// Sends the full buffer as the next part, after waiting for the oldest part if
    /// [`PARTS_IN_FLIGHT`] are uploading already, and for a permit of the store's
    /// [`STORE_PARTS_IN_FLIGHT`]. The permits are held by upload tasks only, which end on their
    /// own (done, or failed after their retries), so waiting for one cannot deadlock.
    fn send_part(&mut self) -> io::Result<()> {
        let data = PutPayload::from(Bytes::from(std::mem::take(&mut self.buf)));
        let counts = self.counts.clone();
        if self.upload.is_none() {
            let (s3, key) = (self.s3.clone(), self.key.clone());
            let counts = counts.clone();
            let id = block(&self.rt, async move {
                attempt(|| {
                    let (s3, key) = (s3.clone(), key.clone());
                    RequestCounts::add(&counts.multipart, 1);
                    async move { s3.create_multipart(&key).await }
                })
                .await
            })
            .map_err(|e| io_err(&self.what(), e))?;
            self.upload = Some(Upload {
                id,
                parts: Vec::new(),
                in_flight: Default::default(),
            });
        }
        let what = self.what();
        let up = self.upload.as_mut().expect("just set");
        if up.in_flight.len() >= PARTS_IN_FLIGHT {
            let oldest = up.in_flight.pop_front().expect("non-empty");
            let part = wait_part(&self.rt, oldest).map_err(|e| io_err(&what, e))?;
            up.parts.push(part);
        }
        let idx = up.parts.len() + up.in_flight.len();
        let (s3, key, id) = (self.s3.clone(), self.key.clone(), up.id.clone());
        let permits = self.parts.clone();
        // The semaphore is never closed, so acquiring fails only if that changes.
        let permit = block(&self.rt, async move { permits.acquire_owned().await })
            .map_err(|_| io::Error::other(format!("{what}: upload permits closed")))?;
        let task = self.rt.spawn(async move {
            let _permit = permit;
            let now = counts.parts_in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            counts
                .parts_in_flight_peak
                .fetch_max(now, Ordering::Relaxed);
            let r = attempt(|| {
                let (s3, key, id, data) = (s3.clone(), key.clone(), id.clone(), data.clone());
                RequestCounts::add(&counts.multipart, 1);
                RequestCounts::add(&counts.bytes_up, data.content_length() as u64);
                async move { s3.put_part(&key, &id, idx, data).await }
            })
            .await;
            counts.parts_in_flight.fetch_sub(1, Ordering::Relaxed);
            r
        });
        up.in_flight.push_back(task);
        Ok(())
    }
}

fn wait_part(
    rt: &tokio::runtime::Handle,
    task: tokio::task::JoinHandle<object_store::Result<PartId>>,
) -> object_store::Result<PartId> {
    block(rt, async move {
        task.await
            .unwrap_or_else(|e| Err(object_store::Error::JoinError { source: e }))
    })
}

impl PackSink for S3Sink {
    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        self.size += buf.len() as u64;
        while !buf.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(PART_SIZE);
            }
            let n = (PART_SIZE - self.buf.len()).min(buf.len());
            self.buf.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.buf.len() == PART_SIZE {
                self.send_part()?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let what = self.what();
        let Some(_) = self.upload else {
            let (s3, key) = (self.s3.clone(), self.key.clone());
            let data = PutPayload::from(Bytes::from(std::mem::take(&mut self.buf)));
            let counts = self.counts.clone();
            return block(&self.rt, async move {
                attempt(|| {
                    let (s3, key, data) = (s3.clone(), key.clone(), data.clone());
                    RequestCounts::add(&counts.puts, 1);
                    RequestCounts::add(&counts.bytes_up, data.content_length() as u64);
                    async move { s3.put(&key, data).await }
                })
                .await
            })
            .map(|_| ())
            .map_err(|e| io_err(&what, e));
        };
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        let mut up = self.upload.take().expect("checked");
        while let Some(t) = up.in_flight.pop_front() {
            match wait_part(&self.rt, t) {
                Ok(p) => up.parts.push(p),
                Err(e) => {
                    self.upload = Some(up);
                    return Err(io_err(&what, e));
                }
            }
        }
        let (s3, key, size) = (self.s3.clone(), self.key.clone(), self.size);
        let id = up.id.clone();
        let parts = std::mem::take(&mut up.parts);
        let counts = self.counts.clone();
        let done = block(&self.rt, async move {
            let r = attempt(|| {
                let (s3, key, id, parts) = (s3.clone(), key.clone(), id.clone(), parts.clone());
                RequestCounts::add(&counts.multipart, 1);
                async move { s3.complete_multipart(&key, &id, parts).await }
            })
            .await;
            match r {
                Ok(_) => Ok(()),
                // The server may have completed the upload and lost the answer: a retry then
                // finds no such upload. The object is there, whole, if its size is the pack's.
                Err(e) => match s3.head(&key).await {
                    Ok(m) if m.size == size => Ok(()),
                    _ => Err(e),
                },
            }
        });
        match done {
            Ok(()) => Ok(()),
            Err(e) => {
                self.upload = Some(Upload {
                    id: up.id,
                    parts: Vec::new(),
                    in_flight: Default::default(),
                });
                Err(io_err(&what, e))
            }
        }
    }
}

impl Drop for S3Sink {
    /// A sink dropped unfinished (the backup failed) aborts its multipart upload, in the
    /// background: the parts would otherwise stay billed in the bucket.
    fn drop(&mut self) {
        if let Some(up) = self.upload.take() {
            for t in up.in_flight {
                t.abort();
            }
            let (s3, key, id) = (self.s3.clone(), self.key.clone(), up.id);
            self.rt.spawn(async move {
                let _ = s3.abort_multipart(&key, &id).await;
            });
        }
    }
}

/// Bucket settings usable in messages and logs: no credentials are part of them.
impl fmt::Display for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())?;
        if let Some(ep) = &self.endpoint {
            write!(f, " at {ep}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls() {
        let s = S3Settings::from_url("s3://my-bucket/a/b/").unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("my-bucket", "a/b"));
        assert_eq!(s.url(), "s3://my-bucket/a/b");
        assert!(S3Settings::from_url("s3://b").is_err(), "too short");
        assert!(S3Settings::from_url("https://bucket").is_err());
        assert!(S3Settings::from_url("s3://Bucket").is_err());
        assert!(S3Settings::from_url("s3://bucket/../x").is_err());
        assert!(S3Settings::from_url("s3://bucket/a//b").is_err());
        let mut s = S3Settings::from_url("s3://bucket").unwrap();
        s.endpoint = Some("http://user:pw@host".into());
        assert!(s.validate().is_err(), "credentials in the endpoint");
        s.endpoint = Some("ftp://host".into());
        assert!(s.validate().is_err());
        s.endpoint = Some("http://127.0.0.1:7480".into());
        s.validate().unwrap();
    }

    #[test]
    fn credentials_file_rules() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("creds");
        std::fs::write(
            &p,
            "[default]\n# test\naws_access_key_id = AK\naws_secret_access_key = SK\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = credentials_file(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = credentials_file(&p).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("AK", "SK")
        );
        assert!(!format!("{c:?}").contains("SK"), "Debug hides the secret");
        std::fs::write(&p, "aws_access_key_id = AK\n").unwrap();
        assert!(credentials_file(&p).is_err());
    }
}
