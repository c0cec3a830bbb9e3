//! Starts `bv-s3-server` (this package's binary: s3s-fs on 127.0.0.1, port 0) as a child
//! process for a test or a bench, and stops it on drop.
//!
//! The binary is looked up next to the running executable (`target/<profile>/`, the parent of
//! `deps/` for tests and benches), or at `$BV_S3_SERVER`. `cargo test --workspace` builds it.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "blockvault-test";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "blockvault-test-secret";

/// How to start the server.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Buckets created before the server starts.
    pub buckets: Vec<String>,
    /// Fraction of requests that fail (half `503 SlowDown`, half a dropped connection), spread
    /// evenly over the requests in arrival order rather than drawn at random.
    pub fail_rate: f64,
    /// Delay of every request, in milliseconds.
    pub delay_ms: u64,
    /// Where the objects live; a temp dir owned by the server when none.
    pub root: Option<PathBuf>,
    /// Port to listen on (0 or none: any free port).
    pub port: Option<u16>,
}

/// A running server.
pub struct S3Server {
    child: Child,
    endpoint: String,
    root: PathBuf,
    credentials: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Path of the `bv-s3-server` binary.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BV_S3_SERVER") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("bv-s3-server");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release --workspace` (or set BV_S3_SERVER)",
        bin.display()
    );
    bin
}

impl S3Server {
    /// Starts a server with one bucket.
    pub fn start(bucket: &str) -> S3Server {
        Self::start_with(Options {
            buckets: vec![bucket.to_string()],
            ..Options::default()
        })
    }

    /// Starts a server as `o` says and waits until it accepts connections.
    pub fn start_with(o: Options) -> S3Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = o.root.clone().unwrap_or_else(|| tmp.path().join("objects"));
        std::fs::create_dir_all(&root).expect("server root");
        let mut cmd = Command::new(binary());
        cmd.env("BV_S3_ACCESS_KEY", ACCESS_KEY)
            .env("BV_S3_SECRET_KEY", SECRET_KEY)
            .arg("--fail-rate")
            .arg(o.fail_rate.to_string())
            .arg("--delay-ms")
            .arg(o.delay_ms.to_string())
            .arg("--port")
            .arg(o.port.unwrap_or(0).to_string());
        for b in &o.buckets {
            cmd.arg("--bucket").arg(b);
        }
        let log = tmp.path().join("server.log");
        let mut child = cmd
            .arg(&root)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("start bv-s3-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the server's address");
        let endpoint = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("bv-s3-server said {line:?}"))
            .to_string();
        let credentials = tmp.path().join("credentials");
        write_private(
            &credentials,
            &format!("aws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        );
        S3Server {
            child,
            endpoint,
            root,
            credentials,
            log,
            _tmp: tmp,
        }
    }

    /// Stops the server process (the objects stay in [`S3Server::root`]).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("endpoint has a port")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    /// The directory holding the buckets (one sub-directory each).
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// A credentials file (mode 0600) with the server's key pair.
    pub fn credentials_file(&self) -> &Path {
        &self.credentials
    }
    /// Faults injected so far (see `Options::fail_rate`).
    pub fn injected_faults(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("injected fault:"))
            .count()
    }
    /// The server's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Bytes of the objects under `bucket/prefix`.
    pub fn bytes_under(&self, rel: &str) -> u64 {
        fn walk(p: &Path) -> u64 {
            match std::fs::read_dir(p) {
                Ok(rd) => rd
                    .flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => walk(&e.path()),
                        Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
                        Err(_) => 0,
                    })
                    .sum(),
                Err(_) => 0,
            }
        }
        walk(&self.root.join(rel))
    }
}

fn write_private(p: &Path, body: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .expect("credentials file");
    f.write_all(body.as_bytes()).expect("write credentials");
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
