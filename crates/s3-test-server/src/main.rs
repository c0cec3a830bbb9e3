//! `bv-s3-server`: a real S3 server process for blockvault's tests and benches.
//!
//! It serves [`s3s_fs`] (an S3 implementation over a local directory: one sub-directory per
//! bucket) on `127.0.0.1`, on the port given (0 picks a free one), and prints
//! `listening on http://ADDR` on stdout once it accepts connections, so a test can start it on
//! port 0 and read the address back. Requests are signed (SigV4) with the access and secret key
//! taken from `BV_S3_ACCESS_KEY` and `BV_S3_SECRET_KEY`.
//!
//! Fault injection: `--fail-rate P` makes a fraction P of the requests fail before they reach
//! the store, half of them with `503 SlowDown` (the throttling answer of S3) and half by dropping
//! the connection without an answer; each is logged on stderr as a line starting with
//! `injected fault:`. The faults are spread evenly, not drawn at random: request n (counted from
//! 1 in arrival order) fails when `floor(n * P)` grows, so N requests carry `floor(N * P)` faults
//! and a test's fault count depends only on how many requests it makes. `--delay-ms N` delays every request by N ms (a slow server).
//!
//! Usage: `bv-s3-server [--port N] [--fail-rate P] [--delay-ms N] [--bucket NAME]... ROOT`
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{Body, HttpError, HttpResponse};
use tokio::net::TcpListener;

struct Opts {
    port: u16,
    fail_rate: f64,
    delay: Duration,
    buckets: Vec<String>,
    root: PathBuf,
}

fn usage(msg: &str) -> ! {
    eprintln!("bv-s3-server: {msg}");
    eprintln!(
        "usage: bv-s3-server [--port N] [--fail-rate P] [--delay-ms N] [--bucket NAME]... ROOT"
    );
    std::process::exit(2);
}

fn parse() -> Opts {
    let mut o = Opts {
        port: 0,
        fail_rate: 0.0,
        delay: Duration::ZERO,
        buckets: Vec::new(),
        root: PathBuf::new(),
    };
    let mut root = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--port" => {
                o.port = value("--port")
                    .parse()
                    .unwrap_or_else(|_| usage("bad port"))
            }
            "--fail-rate" => {
                o.fail_rate = value("--fail-rate")
                    .parse()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .unwrap_or_else(|| usage("--fail-rate must be within 0..=1"))
            }
            "--delay-ms" => {
                o.delay = Duration::from_millis(
                    value("--delay-ms")
                        .parse()
                        .unwrap_or_else(|_| usage("bad --delay-ms")),
                )
            }
            "--bucket" => o.buckets.push(value("--bucket")),
            s if s.starts_with('-') => usage(&format!("unknown option {s}")),
            s => {
                if root.replace(PathBuf::from(s)).is_some() {
                    usage("one ROOT only")
                }
            }
        }
    }
    o.root = root.unwrap_or_else(|| usage("ROOT is required"));
    o
}

/// Wraps the S3 service with the configured faults.
#[derive(Clone)]
struct Faulty {
    inner: S3Service,
    fail_rate: f64,
    delay: Duration,
    requests: Arc<AtomicU64>,
}

/// What request `n` (counted from 1) gets: `None` to pass, else the ordinal of its fault
/// (1, 2, ...); faults alternate between `503 SlowDown` (odd) and a dropped connection (even).
fn fault_of(n: u64, rate: f64) -> Option<u64> {
    let before = ((n - 1) as f64 * rate).floor() as u64;
    let now = (n as f64 * rate).floor() as u64;
    (now > before).then_some(now)
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send>>;

impl Service<hyper::Request<Incoming>> for Faulty {
    type Response = HttpResponse;
    type Error = HttpError;
    type Future = BoxFuture;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let fault = fault_of(n, self.fail_rate);
        let this = self.clone();
        Box::pin(async move {
            if !this.delay.is_zero() {
                tokio::time::sleep(this.delay).await;
            }
            if fault.is_some_and(|k| k % 2 == 1) {
                eprintln!(
                    "injected fault: 503 SlowDown for {} {}",
                    req.method(),
                    req.uri()
                );
                return Ok(slow_down());
            }
            if fault.is_some() {
                eprintln!("injected fault: dropped {} {}", req.method(), req.uri());
                return Err(HttpError::new("injected connection drop".into()));
            }
            Service::call(&this.inner, req).await
        })
    }
}

fn slow_down() -> HttpResponse {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
        <Error><Code>SlowDown</Code><Message>injected fault: please reduce your request rate</Message></Error>";
    hyper::Response::builder()
        .status(503)
        .header("content-type", "application/xml")
        .body(Body::from(body.to_string()))
        .expect("static response")
}

fn main() {
    let o = parse();
    let access = std::env::var("BV_S3_ACCESS_KEY").ok();
    let secret = std::env::var("BV_S3_SECRET_KEY").ok();
    if access.is_some() != secret.is_some() {
        usage("BV_S3_ACCESS_KEY and BV_S3_SECRET_KEY go together");
    }
    for b in &o.buckets {
        let dir = o.root.join(b);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            usage(&format!("cannot create bucket {}: {e}", dir.display()));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let Err(e) = rt.block_on(serve(o, access.zip(secret)));
    eprintln!("bv-s3-server: {e}");
    std::process::exit(1);
}

async fn serve(o: Opts, keys: Option<(String, String)>) -> Result<Infallible, String> {
    let fs =
        s3s_fs::FileSystem::new(&o.root).map_err(|e| format!("{}: {e:?}", o.root.display()))?;
    let mut b = S3ServiceBuilder::new(fs);
    if let Some((ak, sk)) = keys {
        b.set_auth(SimpleAuth::from_single(ak, sk));
    }
    let service = Faulty {
        inner: b.build(),
        fail_rate: o.fail_rate,
        delay: o.delay,
        requests: Arc::new(AtomicU64::new(0)),
    };
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], o.port)))
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{addr}");
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("bv-s3-server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::fault_of;

    #[test]
    fn faults_are_spread_evenly_and_alternate() {
        let faults: Vec<(u64, u64)> = (1..=40)
            .filter_map(|n| fault_of(n, 0.1).map(|k| (n, k)))
            .collect();
        assert_eq!(faults, vec![(10, 1), (20, 2), (30, 3), (40, 4)]);
        assert!((1..=50).all(|n| fault_of(n, 1.0).is_some()));
        assert!((1..=50).all(|n| fault_of(n, 0.0).is_none()));
    }
}
