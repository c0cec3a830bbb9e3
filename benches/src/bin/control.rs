//! `bv-control`: the daemon's control-plane latency under load, and its end-to-end backup
//! throughput against the library alone.
//!
//! 1. **Latency**: a daemon runs in-process on 127.0.0.1:0 with `--backups` small backups on
//!    record. While two backups of `--image` run back to back (two volumes, concurrency 2), client
//!    tasks call `Backups.Get` and `Backups.List` (detail view, limit 50) for `--seconds` each, over
//!    the real gRPC stack, and then the same two calls over the Cinder REST front end
//!    (`GET /v3/{project}/backups/{id}` and `/backups/detail?limit=50`, one TCP connection per
//!    call, as each `cinder` command makes). Reported: calls per second and p50/p99/max latency.
//! 2. **Throughput**: a full backup of `--image` through the daemon (Create, then Watch until
//!    done) against `Engine::backup` of the same image into a fresh store, alternating, `--runs`
//!    times each; medians and the daemon's overhead in percent. The daemon runs twice per round:
//!    without a vault, and into a vault (whose usage ledger counts every manifest entry), each
//!    followed by an incremental of the unchanged image, where the ledger's share is largest.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use blockvault_core::VolumeId;
use blockvault_daemon::Config;
use blockvault_engine::{BackupOptions, Engine, EngineOptions};
use blockvault_proto::v1 as pb;
use clap::Parser;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

#[derive(Parser, Debug)]
#[command(
    name = "bv-control",
    about = "Control-plane latency and daemon overhead of blockvaultd"
)]
struct Args {
    /// Image for the concurrent backups and the throughput comparison (generated if missing).
    #[arg(long)]
    image: PathBuf,
    /// Size of the image to generate when it does not exist, in MiB.
    #[arg(long, default_value_t = 1024)]
    generate_mib: u64,
    /// Work directory (stores, daemon data).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Seconds of Get and of List load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent client tasks per call type.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Small backups on record before the latency run.
    #[arg(long, default_value_t = 60)]
    backups: usize,
    /// Throughput runs of each kind (0: latency only).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// `engine.nice` values to run the latency part with, in this order.
    #[arg(long, value_delimiter = ',', default_value = "0,10")]
    nice: Vec<i32>,
}

#[derive(Clone)]
struct Token(MetadataValue<Ascii>);
impl Interceptor for Token {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("x-auth-token", self.0.clone());
        Ok(req)
    }
}
type Svc = InterceptedService<Channel, Token>;

#[derive(Clone)]
struct Client {
    volumes: pb::volumes_client::VolumesClient<Svc>,
    backups: pb::backups_client::BackupsClient<Svc>,
    jobs: pb::jobs_client::JobsClient<Svc>,
    vaults: pb::vaults_client::VaultsClient<Svc>,
}

async fn connect(endpoint: &str, token: &str) -> Result<Client> {
    let ch = Channel::from_shared(endpoint.to_string())?
        .connect()
        .await?;
    let t = Token(token.parse()?);
    Ok(Client {
        volumes: pb::volumes_client::VolumesClient::with_interceptor(ch.clone(), t.clone()),
        backups: pb::backups_client::BackupsClient::with_interceptor(ch.clone(), t.clone()),
        jobs: pb::jobs_client::JobsClient::with_interceptor(ch.clone(), t.clone()),
        vaults: pb::vaults_client::VaultsClient::with_interceptor(ch, t),
    })
}

async fn register(c: &mut Client, path: &Path) -> Result<String> {
    use std::os::unix::ffi::OsStrExt;
    Ok(c.volumes
        .register(pb::RegisterVolumeRequest {
            path: path.as_os_str().as_bytes().to_vec(),
            name: path.file_name().unwrap().to_string_lossy().into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .id)
}

/// Creates a backup (into `container` when not empty) and waits for its job; returns the
/// seconds from Create to the job's end.
async fn backup(c: &mut Client, volume: &str, container: &str, incremental: bool) -> Result<f64> {
    let t = Instant::now();
    let r = c
        .backups
        .create(pb::CreateBackupRequest {
            volume_id: volume.into(),
            container: container.into(),
            incremental,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut s = c
        .jobs
        .watch(pb::WatchJobRequest { job_id: r.job_id })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(j) = s.message().await? {
        last = Some(j);
    }
    let last = last.context("empty watch")?;
    ensure!(last.state == "succeeded", "backup job ended {last:?}");
    Ok(t.elapsed().as_secs_f64())
}

/// One HTTP/1.1 GET on a new connection; fails unless the answer is 200.
async fn rest_get(addr: std::net::SocketAddr, path: &str, auth: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\
         OpenStack-API-Version: volume 3.64\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    ensure!(
        resp.starts_with(b"HTTP/1.1 200"),
        "GET {path}: {}",
        String::from_utf8_lossy(&resp[..resp.len().min(200)])
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn config(dir: &Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    // The operator runs the bench on images wherever they are; only the daemon's own files
    // stay unregistrable.
    c.volumes.allowed_paths = vec![PathBuf::from("/")];
    c.cinder.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".parse().unwrap();
    c
}

/// Runs `call` from `clients` tasks for `secs`; returns (calls per second, sorted latencies).
async fn load<F, Fut>(clients: usize, secs: u64, call: F) -> Result<(f64, Vec<Duration>)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for _ in 0..clients {
        let stop = stop.clone();
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                call().await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = all.len() as f64 / t0.elapsed().as_secs_f64();
    all.sort();
    Ok((rate, all))
}

fn report(name: &str, rate: f64, lat: &[Duration]) {
    println!(
        "| {name} | {rate:.0} | {:.2} | {:.2} | {:.2} | {} |",
        percentile(lat, 0.5).as_secs_f64() * 1e3,
        percentile(lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
        lat.len()
    );
}

/// Seconds of a full backup of `image` through a fresh daemon (Create until the job ends), then
/// of an incremental of the unchanged image; into a vault when `vault`.
async fn daemon_backup(work: &Path, image: &Path, run: usize, vault: bool) -> Result<(f64, f64)> {
    let ddir = work.join(format!("daemon-{run}"));
    let _ = std::fs::remove_dir_all(&ddir);
    let d = blockvault_daemon::start(config(&ddir)).await?;
    let mut c = connect(&d.endpoint(), &d.admin_token).await?;
    let v = register(&mut c, image).await?;
    let container = if vault {
        c.vaults
            .create(pb::CreateVaultRequest {
                name: "bench".into(),
                billing: Some(pb::Billing {
                    consistent_level: "crash_consistent".into(),
                    object_type: "disk".into(),
                    protect_type: "backup".into(),
                    size: 1000,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?
            .into_inner()
            .id
    } else {
        String::new()
    };
    let full = backup(&mut c, &v, &container, false).await?;
    let incr = backup(&mut c, &v, &container, true).await?;
    d.stop().await?;
    std::fs::remove_dir_all(&ddir)?;
    Ok((full, incr))
}

/// Seconds of `Engine::backup` of `image` into a fresh store.
async fn library_backup(work: &Path, image: &Path, run: usize) -> Result<f64> {
    let sdir = work.join(format!("lib-{run}"));
    let _ = std::fs::remove_dir_all(&sdir);
    let cfg = config(&sdir);
    let image = image.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<f64> {
        Engine::init(&sdir, cfg.store_config(), None)?;
        let e = Engine::open(&sdir, EngineOptions::default())?;
        let t = Instant::now();
        e.backup(BackupOptions::new(VolumeId::new("v")?, image))?;
        let s = t.elapsed().as_secs_f64();
        drop(e);
        std::fs::remove_dir_all(&sdir)?;
        Ok(s)
    })
    .await?
}

/// Part 1: Get and List latency over gRPC and REST while two full backups run, with the
/// daemon's data-plane threads at `nice`.
async fn latency(args: &Args, work: &Path, size: u64, nice: i32) -> Result<()> {
    let ddir = work.join("latency");
    let _ = std::fs::remove_dir_all(&ddir);
    let mut cfg = config(&ddir);
    cfg.engine.nice = nice;
    let d = blockvault_daemon::start(cfg).await?;
    let mut c = connect(&d.endpoint(), &d.admin_token).await?;
    let small = work.join("small.img");
    std::fs::write(&small, blockvault_benches::mixed_buffer(256 << 10, 3))?;
    let sv = register(&mut c, &small).await?;
    for _ in 0..args.backups {
        backup(&mut c, &sv, "", false).await?;
    }
    let copy = work.join("second.img");
    std::fs::copy(&args.image, &copy)?;
    let v1 = register(&mut c, &args.image).await?;
    let v2 = register(&mut c, &copy).await?;
    let busy = Arc::new(AtomicBool::new(true));
    let mut loaders = Vec::new();
    for v in [v1.clone(), v2] {
        let mut c = c.clone();
        let busy = busy.clone();
        loaders.push(tokio::spawn(async move {
            let mut n = 0u32;
            while busy.load(Ordering::Relaxed) {
                backup(&mut c, &v, "", false).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let any = c
        .backups
        .list(pb::ListBackupsRequest {
            limit: Some(1),
            ..Default::default()
        })
        .await?
        .into_inner()
        .summaries[0]
        .id
        .clone();
    let any_id = any.clone();
    let get = {
        let c = c.clone();
        move || {
            let mut c = c.clone();
            let id = any.clone();
            async move {
                c.backups
                    .get(pb::GetBackupRequest { backup_id: id })
                    .await?;
                Ok(())
            }
        }
    };
    let list = {
        let c = c.clone();
        move || {
            let mut c = c.clone();
            async move {
                let r = c
                    .backups
                    .list(pb::ListBackupsRequest {
                        detail: true,
                        limit: Some(50),
                        ..Default::default()
                    })
                    .await?;
                ensure!(r.into_inner().backups.len() == 50);
                Ok(())
            }
        }
    };
    let (get_rate, get_lat) = load(args.clients, args.seconds, get).await?;
    let (list_rate, list_lat) = load(args.clients, args.seconds, list).await?;
    let cinder = d.cinder_addr.context("the Cinder REST listener is off")?;
    // HTTP Basic `user:token`, as `cinder --os-auth-type http_basic` sends it.
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{}", d.admin_token))
    );
    let rest_get_one = {
        let (auth, path) = (auth.clone(), format!("/v3/admin/backups/{any_id}"));
        move || {
            let (auth, path) = (auth.clone(), path.clone());
            async move { rest_get(cinder, &path, &auth).await }
        }
    };
    let rest_list = {
        let auth = auth.clone();
        move || {
            let auth = auth.clone();
            async move { rest_get(cinder, "/v3/admin/backups/detail?limit=50", &auth).await }
        }
    };
    let (rget_rate, rget_lat) = load(args.clients, args.seconds, rest_get_one).await?;
    let (rlist_rate, rlist_lat) = load(args.clients, args.seconds, rest_list).await?;
    busy.store(false, Ordering::Relaxed);
    let mut backups_during = 0;
    for l in loaders {
        backups_during += l.await??;
    }
    println!(
        "## Control-plane latency while two backups of {} MB run (engine.nice = {nice})",
        size / 1_000_000
    );
    println!();
    println!("| call | calls/s | p50 ms | p99 ms | max ms | calls |");
    println!("|---|---|---|---|---|---|");
    report("Backups.Get", get_rate, &get_lat);
    report("Backups.List detail, 50 items", list_rate, &list_lat);
    report("REST GET /backups/{id}", rget_rate, &rget_lat);
    report("REST GET /backups/detail?limit=50", rlist_rate, &rlist_lat);
    println!();
    println!(
        "({} clients per call type, {} s each; {backups_during} backups completed meanwhile)",
        args.clients, args.seconds
    );
    d.stop().await?;
    let _ = v1;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    blockvault_engine::memory::tune_allocator();
    let args = Args::parse();
    if !args.image.exists() {
        eprintln!(
            "generating {} MiB image {}",
            args.generate_mib,
            args.image.display()
        );
        blockvault_benches::write_mixed_image(&args.image, args.generate_mib << 20, 7)?;
    }
    let tmp = tempfile::tempdir()?;
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let size = std::fs::metadata(&args.image)?.len();

    // ---- 1. latency while two backups run, at each nice value
    for &nice in &args.nice {
        latency(&args, &work, size, nice).await?;
    }

    // ---- 2. throughput: daemon vs library, and the vault ledger's cost
    if args.runs == 0 {
        return Ok(());
    }
    let mb_s = |secs: f64| size as f64 / secs / 1e6;
    let (mut lib, mut dfull, mut dincr, mut vfull, mut vincr) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        // Rotate which goes first, so none always runs on a warmer machine.
        for step in 0..3 {
            match (run + step) % 3 {
                0 => lib.push(mb_s(library_backup(&work, &args.image, run).await?)),
                1 => {
                    let (f, i) = daemon_backup(&work, &args.image, run, false).await?;
                    dfull.push(mb_s(f));
                    dincr.push(mb_s(i));
                }
                _ => {
                    let (f, i) = daemon_backup(&work, &args.image, run, true).await?;
                    vfull.push(mb_s(f));
                    vincr.push(mb_s(i));
                }
            }
        }
        eprintln!(
            "run {run}: library {:.0}, daemon {:.0} (incr {:.0}), daemon+vault {:.0} (incr {:.0}) MB/s",
            lib[run], dfull[run], dincr[run], vfull[run], vincr[run]
        );
    }
    let ml = median(&mut lib);
    let (md, mdi) = (median(&mut dfull), median(&mut dincr));
    let (mv, mvi) = (median(&mut vfull), median(&mut vincr));
    println!();
    println!(
        "## Backup of {} MB: daemon vs library, with and without a vault (median of {})",
        size / 1_000_000,
        args.runs
    );
    println!();
    println!("| path | full MB/s | incremental (unchanged) MB/s |");
    println!("|---|---|---|");
    println!("| library (Engine::backup) | {ml:.0} | |");
    println!("| daemon (Create + Watch) | {md:.0} | {mdi:.0} |");
    println!("| daemon, into a vault | {mv:.0} | {mvi:.0} |");
    println!();
    println!(
        "daemon overhead on the full backup: {:.1} %",
        (ml - md) / ml * 100.0
    );
    println!(
        "vault ledger cost: full {:.1} %, incremental {:.1} %",
        (md - mv) / md * 100.0,
        (mdi - mvi) / mdi * 100.0
    );
    Ok(())
}
