//! Crash safety of the daemon: `blockvaultd` runs as a subprocess and is killed with SIGKILL in the
//! middle of backups, at several points. After each restart, the interrupted job is reported as
//! failed ("interrupted"), every committed backup restores byte-exact through the daemon, and at
//! the end the whole store verifies clean, before and after GC reclaims the partial data, and the
//! vault's usage ledger equals a count from scratch.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blockvault_engine::{Engine, EngineOptions, NoProgress, RestoreOptions};
use blockvault_proto::v1 as pb;
use common::*;
use rand::{RngCore, SeedableRng};

const MIB: usize = 1 << 20;

/// The daemon process; killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
struct Daemon {
    child: Child,
    endpoint: String,
    token: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon on port 0 with data in `data`; volumes may live in the directory that holds it.
fn spawn(data: &Path) -> Daemon {
    let parent = data.parent().unwrap();
    let config = parent.join("blockvaultd.toml");
    std::fs::write(
        &config,
        format!(
            "[volumes]\nallowed_paths = [{:?}]\n",
            parent.display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blockvaultd"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cinder-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
    launch(cmd, data)
}

/// Starts `cmd` (a blockvaultd) and waits until it has written `<data>/listen.addr`.
fn launch(mut cmd: Command, data: &Path) -> Daemon {
    let addr_file = data.join("listen.addr");
    let _ = std::fs::remove_file(&addr_file);
    let child = cmd
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start blockvaultd");
    let mut d = Daemon {
        child,
        endpoint: String::new(),
        token: String::new(),
    };
    let start = Instant::now();
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            d.endpoint = format!("http://{}", a.trim());
            d.token = std::fs::read_to_string(data.join("admin.token"))
                .unwrap()
                .trim()
                .to_string();
            return d;
        }
        if let Some(st) = d.child.try_wait().unwrap() {
            panic!("blockvaultd exited early: {st}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hash_file(p: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(p).unwrap()).unwrap();
    h.finalize()
}

async fn job(c: &mut Client, id: &str) -> pb::Job {
    c.jobs
        .get(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Restores `backup` through the daemon to a new volume and checks its hash.
async fn check_restore(c: &mut Client, backup: &str, want: &blake3::Hash) {
    let (v, j) = restore(c, backup, "", "").await;
    assert_eq!(j.state, "succeeded", "{j:?}");
    let p = path_of(&v);
    assert_eq!(&hash_file(&p), want, "backup {backup} restored wrong bytes");
    std::fs::remove_file(p).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_backups_loses_no_committed_backup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let img = dir.path().join("vol.img");
    let size = 320 * MIB;
    make_image(&img, size, 21);
    let mut committed: HashMap<String, blake3::Hash> = HashMap::new();

    let mut d = spawn(&data);
    let mut c = connect(&d.endpoint, Some(&d.token)).await;
    let vol = register(&mut c, &img, "vol").await;
    let vault = create_vault(&mut c, "crash", 100).await;
    let r = c
        .backups
        .create(pb::CreateBackupRequest {
            volume_id: vol.id.clone(),
            name: "full".into(),
            container: vault.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wait_job(&mut c, &r.job_id).await.state, "succeeded");
    committed.insert(r.backup.unwrap().id, hash_file(&img));

    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut interrupted = 0;
    // Kill points: right after the request, then at fractions of the bytes done; at 1.0 the
    // backup is committing or being counted in the vault.
    for (round, frac) in [0.0, 0.15, 0.5, 0.85, 1.0].into_iter().enumerate() {
        // Rewrite half of the volume so the backup has real work to do.
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        let mut buf = vec![0u8; size / 2];
        rng.fill_bytes(&mut buf);
        use std::os::unix::fs::FileExt;
        f.write_all_at(&buf, ((round % 2) * size / 2) as u64)
            .unwrap();
        f.sync_all().unwrap();
        let expect = hash_file(&img);

        let r = c
            .backups
            .create(pb::CreateBackupRequest {
                volume_id: vol.id.clone(),
                name: format!("round-{round}"),
                container: vault.clone(),
                incremental: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let backup_id = r.backup.unwrap().id;
        let want = (frac * size as f64) as u64;
        if frac > 0.0 {
            let t = Instant::now();
            loop {
                let j = job(&mut c, &r.job_id).await;
                if j.bytes_done >= want || j.state != "running" && j.state != "queued" {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(120));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        d.child.kill().unwrap();
        d.child.wait().unwrap();

        d = spawn(&data);
        c = connect(&d.endpoint, Some(&d.token)).await;
        // Let any job the restart re-queued finish.
        let j = wait_job(&mut c, &r.job_id).await;
        let b = get_backup(&mut c, &backup_id).await;
        match j.state.as_str() {
            "succeeded" => {
                assert_eq!(b.status, "available");
                committed.insert(backup_id.clone(), expect);
            }
            "failed" => {
                interrupted += 1;
                assert!(j.fail_reason.contains("interrupted"), "{j:?}");
                assert_eq!(b.status, "error");
                assert!(b.fail_reason.contains("interrupted"), "{b:?}");
            }
            other => panic!("job ended {other}: {j:?}"),
        }
        // Every committed backup still restores byte-exact.
        for (id, h) in &committed {
            check_restore(&mut c, id, h).await;
        }
    }
    assert!(
        interrupted >= 2,
        "only {interrupted} rounds were cut mid-backup"
    );
    let used = vault_used_mb(&mut c, &vault).await;
    drop(c);
    drop(d);

    // The whole store verifies clean; GC reclaims the partial data and breaks nothing.
    let store = data.join("store");
    let engine = Engine::open(&store, EngineOptions::default()).unwrap();
    let exact = usage_oracle(engine.store(), committed.keys().map(String::as_str));
    assert_eq!(
        used,
        exact.div_ceil(1_000_000),
        "vault usage after the crashes"
    );
    let report = engine.verify(None, &NoProgress).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let gc = engine.gc().unwrap();
    assert!(gc.reclaimed_bytes() > 0, "{gc:?}");
    let report = engine.verify(None, &NoProgress).unwrap();
    assert!(report.is_clean(), "{report:?}");
    for (id, h) in &committed {
        let out: PathBuf = dir.path().join(format!("{id}.out"));
        engine
            .restore(RestoreOptions::new(id.parse().unwrap(), &out))
            .unwrap();
        assert_eq!(&hash_file(&out), h);
        std::fs::remove_file(out).unwrap();
    }
}

/// `blockvaultd` with no arguments in `cwd`, except that the port comes from the environment
/// (`BLOCKVAULTD_LISTEN`), so the test never takes the default port from a daemon the user runs.
fn spawn_default(cwd: &Path) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blockvaultd"));
    cmd.current_dir(cwd)
        .env("BLOCKVAULTD_LISTEN", "127.0.0.1:0")
        .env("BLOCKVAULTD_CINDER_LISTEN", "127.0.0.1:0")
        .env("BLOCKVAULTD_METRICS_LISTEN", "127.0.0.1:0");
    launch(cmd, &cwd.join("blockvault-data"))
}

/// `blockvaultd` with no arguments: data under the working directory, 127.0.0.1 only, a private
/// admin token, a private data directory. SIGTERM stops it cleanly (exit 0) in the middle of a
/// backup, which then resumes after the restart and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_start_and_sigterm_suspends_the_running_job() {
    use std::os::unix::fs::PermissionsExt;
    // The default listens on 127.0.0.1:8750; checked without binding it.
    assert_eq!(
        blockvault_daemon::Config::default().listen,
        "127.0.0.1:8750".parse().unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut d = spawn_default(dir.path());
    let data = dir.path().join("blockvault-data");
    assert!(
        d.endpoint.starts_with("http://127.0.0.1:"),
        "{}",
        d.endpoint
    );
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "data directory mode");
    let mode = std::fs::metadata(data.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(data.join("store").is_dir() && data.join("control").is_dir());

    let mut c = connect(&d.endpoint, Some(&d.token)).await;
    // The default config allows volumes only in the daemon's own volumes directory.
    let img = data.join("volumes/vol.img");
    make_image(&img, 384 * MIB, 31);
    let vol = register(&mut c, &img, "vol").await;
    let r = start_backup(&mut c, &vol.id).await;
    loop {
        let j = job(&mut c, &r.job_id).await;
        if j.bytes_done > 0 || j.state == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = d.child.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    let t = Instant::now();
    let exit = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "blockvaultd exited {exit}");
    drop(c);
    drop(d);
    // The running job was suspended back to the queue, durably.
    {
        let db = blockvault_daemon::model::ControlDb::open(&data.join("control")).unwrap();
        let rows = db.load().unwrap();
        let j = rows
            .jobs
            .iter()
            .find(|j| j.id.to_string() == r.job_id)
            .unwrap();
        assert_eq!(j.state, blockvault_daemon::model::JobState::Queued, "{j:?}");
        assert!(j.started_at.is_none());
    }

    let d = spawn_default(dir.path());
    let mut c = connect(&d.endpoint, Some(&d.token)).await;
    let j = wait_job(&mut c, &r.job_id).await;
    assert_eq!(j.state, "succeeded", "{j:?}");
    let b = get_backup(&mut c, &r.backup.unwrap().id).await;
    assert_eq!(b.status, "available");
    check_restore(&mut c, &b.id, &hash_file(&img)).await;
}
