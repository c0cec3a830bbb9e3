//! Shared by the tests that drive a real `blockvaultd` subprocess (`remote.rs`, `vault.rs`): the
//! CLI finds the daemon's endpoint and admin token through `--data-dir`, as an operator on the
//! daemon's machine would.
// Each test crate uses a different subset of the helpers.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running daemon in a temporary directory; killed (and reaped) on drop.
pub struct Daemon {
    child: Child,
    /// The temporary directory (the daemon's working directory).
    pub dir: tempfile::TempDir,
    /// The daemon's data directory.
    pub data: PathBuf,
}

impl Daemon {
    /// Starts `blockvaultd --data-dir <tmp>/data --listen 127.0.0.1:0` and waits until it has
    /// written `listen.addr` and `admin.token`.
    pub fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_blockvault")).with_file_name("blockvaultd");
        assert!(
            bin.exists(),
            "{} is missing: build it first (cargo build --release -p blockvault-daemon)",
            bin.display()
        );
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        // Volumes may be registered in the test's directory (not only in the daemon's own).
        let config = dir.path().join("blockvaultd.toml");
        std::fs::write(
            &config,
            format!(
                "[volumes]\nallowed_paths = [{:?}]\n",
                dir.path().display().to_string()
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--cinder-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut d = Daemon { child, dir, data };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.ready() {
                return d;
            }
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("blockvaultd exited with {status}:\n{}", d.log());
            }
            if Instant::now() > deadline {
                panic!("blockvaultd not ready after 60 s:\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Both files are written (the address with a real port).
    pub fn ready(&self) -> bool {
        let addr = std::fs::read_to_string(self.data.join("listen.addr")).unwrap_or_default();
        let token = std::fs::read_to_string(self.data.join("admin.token")).unwrap_or_default();
        matches!(addr.trim().parse::<SocketAddr>(), Ok(a) if a.port() != 0)
            && !token.trim().is_empty()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs the CLI with `--data-dir` pointing at the daemon's data directory.
    pub fn bv(&self, args: &[&dyn AsRef<OsStr>]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_blockvault"));
        for a in args {
            c.arg(a);
        }
        c.arg("--data-dir")
            .arg(&self.data)
            .env_remove("BLOCKVAULT_ENDPOINT")
            .env_remove("BLOCKVAULT_TOKEN")
            .env_remove("BLOCKVAULT_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run blockvault")
    }

    /// Starts the CLI in the background with stdout piped (for commands that stream).
    pub fn spawn(&self, args: &[&dyn AsRef<OsStr>]) -> Child {
        let mut c = Command::new(env!("CARGO_BIN_EXE_blockvault"));
        for a in args {
            c.arg(a);
        }
        c.arg("--data-dir")
            .arg(&self.data)
            .env_remove("BLOCKVAULT_ENDPOINT")
            .env_remove("BLOCKVAULT_TOKEN")
            .env_remove("BLOCKVAULT_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run blockvault")
    }

    /// Runs the CLI, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&dyn AsRef<OsStr>]) -> String {
        let o = self.bv(args);
        assert!(
            o.status.success(),
            "blockvault {:?} failed: {}\n{}\ndaemon log:\n{}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs the CLI, which must succeed, and parses its JSON output.
    pub fn json(&self, args: &[&dyn AsRef<OsStr>]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Runs the CLI, which must fail with exit status 1; returns stderr.
    pub fn fails(&self, args: &[&dyn AsRef<OsStr>]) -> String {
        let o = self.bv(args);
        assert_eq!(
            o.status.code(),
            Some(1),
            "blockvault {:?} should fail: {}\n{}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stderr).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON string's contents (panics on anything else).
pub fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

/// The field names of message `name` of `blockvault.v1`, in the proto file's order.
pub fn message_fields(name: &str) -> Vec<String> {
    use prost::Message;
    let fds = prost_types::FileDescriptorSet::decode(blockvault_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    fds.file
        .iter()
        .filter(|f| f.package() == "blockvault.v1")
        .flat_map(|f| &f.message_type)
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no message {name}"))
        .field
        .iter()
        .map(|f| f.name().to_string())
        .collect()
}

/// A JSON object's keys, in order.
pub fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

/// The keys of `key: value` lines, in order.
pub fn line_keys(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| Some(l.split_once(": ")?.0.trim_end().to_string()))
        .collect()
}
