//! `bv-e2e`: end-to-end throughput of blockvault's engine on real image files.
//!
//! Each run uses a fresh store: a full backup of `--image`, an incremental backup of `--image2`
//! (or of the same image again), and a restore of that last backup to a new file, which is then
//! compared byte for byte with its source. Throughput is decimal MB (1e6 bytes) of volume size
//! per wall-clock second; stored bytes are the record's `stored_bytes`; pack bytes are the
//! store's sealed pack bytes after the step. Peak RSS is read from `VmHWM` in /proc/self/status
//! (reset before each step through /proc/self/clear_refs when the kernel allows it).
//!
//! `--sparse-gib N` backs up an N GiB sparse file holding a few MiB of random data, to show that
//! memory does not grow with the volume's size. `--generate-mib N` writes a mixed test image
//! (and a modified copy as `--image2`) first. The caller is expected to pre-read images into the
//! page cache (or to drop it) as the measurement requires.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use blockvault_core::{BackupRecord, VolumeId};
use blockvault_engine::{BackupOptions, Engine, EngineOptions, RestoreOptions};
use std::sync::Arc;

use blockvault_s3_test_server::S3Server;
use blockvault_store::{S3Packs, S3Settings, Store, StoreConfig};
use clap::Parser;
use rand::{RngCore, SeedableRng};

#[derive(Parser, Debug)]
#[command(
    name = "bv-e2e",
    about = "End-to-end backup/restore benchmark of blockvault"
)]
struct Args {
    /// Image to back up (full backup, and the restore's reference unless --image2 is given).
    #[arg(long, required_unless_present = "sparse_gib")]
    image: Option<PathBuf>,
    /// Next version of the image, for the incremental backup (default: the same image).
    #[arg(long)]
    image2: Option<PathBuf>,
    /// Directory for stores and restored images (default: a temporary directory).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Runs, each on a fresh store.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Encrypt the volume (the default).
    #[arg(long, overrides_with = "no_encrypt")]
    encrypt: bool,
    /// Do not encrypt the volume.
    #[arg(long, overrides_with = "encrypt")]
    no_encrypt: bool,
    /// Worker threads of the engine (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The engine's byte budget of chunks in flight, in MiB (default: the engine's default).
    #[arg(long, value_name = "MIB")]
    in_flight_mib: Option<u64>,
    /// Also back up a sparse file of this many GiB with a few MiB of random data.
    #[arg(long, value_name = "N")]
    sparse_gib: Option<u64>,
    /// First write a mixed test image of this many MiB to --image (and, with --image2, a copy
    /// of it with --change-pct percent rewritten). Existing files are overwritten.
    #[arg(long, value_name = "MIB")]
    generate_mib: Option<u64>,
    /// Percentage of the image rewritten in the generated --image2.
    #[arg(long, default_value_t = 2.0)]
    change_pct: f64,
    /// Keep each run's store and restored image instead of removing them.
    #[arg(long)]
    keep: bool,
    /// Pack backends to measure, each on its own fresh store in every run, one after the
    /// other: `local` (the store directory) and `s3` (a bucket).
    #[arg(long, value_delimiter = ',', default_value = "local")]
    backends: Vec<BackendKind>,
    /// S3 endpoint for the `s3` backend (e.g. a Ceph RGW at http://127.0.0.1:7480). Without
    /// it, `bv-s3-server` (s3s-fs on 127.0.0.1) is started in the work directory.
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// Bucket for the `s3` backend with --s3-endpoint: s3://BUCKET[/PREFIX].
    #[arg(long, value_name = "URL", default_value = "s3://bv-bench")]
    s3_bucket: String,
    /// Credentials file for --s3-endpoint (aws_access_key_id / aws_secret_access_key lines,
    /// mode 0600); without it, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    #[arg(long, value_name = "FILE")]
    s3_credentials_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BackendKind {
    Local,
    S3,
}

/// Where a run's packs go.
enum Backend {
    Local,
    S3(S3Settings),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::S3(_) => "s3",
        }
    }
}

impl Args {
    fn encrypt(&self) -> bool {
        self.encrypt || !self.no_encrypt
    }
}

const MB: f64 = 1e6;
const MIB: f64 = (1u64 << 20) as f64;

/// Peak resident set size, per step and for the whole process.
struct PeakRss {
    process_kib: u64,
    resettable: bool,
}

fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl PeakRss {
    fn new() -> Self {
        PeakRss {
            process_kib: vm_hwm_kib().unwrap_or(0),
            resettable: true,
        }
    }
    /// Starts a step: folds the current peak into the process peak and resets the kernel's.
    fn start_step(&mut self) {
        self.process_kib = self.process_kib.max(vm_hwm_kib().unwrap_or(0));
        self.resettable = self.resettable && std::fs::write("/proc/self/clear_refs", "5").is_ok();
    }
    /// Peak RSS since the step started (since process start when resets are unavailable).
    fn step_peak_kib(&mut self) -> u64 {
        let p = vm_hwm_kib().unwrap_or(0);
        self.process_kib = self.process_kib.max(p);
        p
    }
    fn process_peak_kib(&mut self) -> u64 {
        self.step_peak_kib();
        self.process_kib
    }
}

/// What one step measured.
#[derive(Clone, Copy, Default)]
struct Step {
    secs: f64,
    mb_s: f64,
    stored: Option<u64>,
    pack_bytes: Option<u64>,
    rss_kib: u64,
    /// Object-store requests of the step (S3 only).
    requests: Option<u64>,
}

const STEPS: [&str; 3] = ["full", "incremental", "restore"];

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / MB)
}

fn mib_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn print_step(run: usize, backend: &str, name: &str, size: u64, s: &Step) {
    println!(
        "run {run}  {backend:<5} {name:<12} {:>9}  {:>7.2} s  {:>8.1} MB/s  stored {:>10}  packs {:>10}  peak RSS {:>10}{}",
        mb(size),
        s.secs,
        s.mb_s,
        s.stored.map_or("-".into(), mb),
        s.pack_bytes.map_or("-".into(), mb),
        mib_kib(s.rss_kib),
        s.requests.map_or(String::new(), |r| format!("  requests {r}")),
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn file_size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("stat {}", p.display()))?
        .len())
}

/// Compares two files in 8 MiB blocks; fails at the first difference.
fn compare(a: &Path, b: &Path) -> Result<()> {
    const BLOCK: usize = 8 << 20;
    let (la, lb) = (file_size(a)?, file_size(b)?);
    ensure!(
        la == lb,
        "RESTORE MISMATCH: {} is {la} bytes, {} is {lb} bytes",
        a.display(),
        b.display()
    );
    let mut fa = File::open(a).with_context(|| format!("open {}", a.display()))?;
    let mut fb = File::open(b).with_context(|| format!("open {}", b.display()))?;
    let (mut ba, mut bb) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut off = 0u64;
    loop {
        let na = blockvault_benches::read_full(&mut fa, &mut ba)?;
        let nb = blockvault_benches::read_full(&mut fb, &mut bb)?;
        ensure!(
            na == nb,
            "RESTORE MISMATCH: short read at offset {off} ({na} vs {nb} bytes)"
        );
        if na == 0 {
            break;
        }
        if ba[..na] != bb[..nb] {
            let i = ba[..na]
                .iter()
                .zip(&bb[..nb])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            bail!(
                "RESTORE MISMATCH: {} and {} differ at byte offset {}",
                a.display(),
                b.display(),
                off + i as u64
            );
        }
        off += na as u64;
    }
    ensure!(off == la, "RESTORE MISMATCH: compared {off} of {la} bytes");
    Ok(())
}

/// A fresh store with an engine over it, and the S3 backend's request counters.
fn fresh_engine(
    dir: &Path,
    args: &Args,
    backend: &Backend,
) -> Result<(Engine, Option<Arc<S3Packs>>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let store = dir.join("store");
    let key = dir.join("master.key");
    let config = StoreConfig {
        backend: match backend {
            Backend::Local => blockvault_store::Backend::Local,
            Backend::S3(s) => blockvault_store::Backend::S3(s.clone()),
        },
        ..StoreConfig::default()
    };
    Engine::init(&store, config, args.encrypt().then_some(key.as_path()))
        .with_context(|| format!("init store {}", store.display()))?;
    let defaults = EngineOptions::default();
    let opts = EngineOptions {
        threads: args.threads,
        max_bytes_in_flight: args
            .in_flight_mib
            .map_or(defaults.max_bytes_in_flight, |m| m << 20),
        ..defaults
    };
    match backend {
        Backend::Local => Ok((
            Engine::open(&store, opts)
                .with_context(|| format!("open store {}", store.display()))?,
            None,
        )),
        Backend::S3(s) => {
            let packs = Arc::new(S3Packs::new(s.clone())?);
            let st = Store::open_with(&store, packs.clone())?;
            Ok((Engine::new(st, opts)?, Some(packs)))
        }
    }
}

fn requests(p: &Option<Arc<S3Packs>>) -> Option<u64> {
    p.as_ref().map(|p| p.requests().total())
}

fn pack_bytes(e: &Engine) -> Result<u64> {
    Ok(e.store().stats()?.pack_bytes)
}

/// Times a backup and collects its step figures.
fn timed_backup(
    (e, packs): &(Engine, Option<Arc<S3Packs>>),
    opts: BackupOptions,
    rss: &mut PeakRss,
) -> Result<(BackupRecord, Step)> {
    let src = opts.source.display().to_string();
    let req0 = requests(packs);
    rss.start_step();
    let t = Instant::now();
    let rec = e.backup(opts).with_context(|| format!("backup of {src}"))?;
    let secs = t.elapsed().as_secs_f64();
    let rss_kib = rss.step_peak_kib();
    let step = Step {
        secs,
        mb_s: rec.size as f64 / MB / secs,
        stored: Some(rec.stored_bytes),
        pack_bytes: Some(pack_bytes(e)?),
        rss_kib,
        requests: requests(packs).zip(req0).map(|(a, b)| a - b),
    };
    Ok((rec, step))
}

fn run_once(
    args: &Args,
    run: usize,
    work: &Path,
    image: &Path,
    rss: &mut PeakRss,
    backend: &Backend,
) -> Result<[Step; 3]> {
    let encrypt = args.encrypt();
    let bname = backend.name();
    let dir = work.join(format!("run-{run}-{bname}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let ep = fresh_engine(&dir, args, backend)?;
    let e = &ep.0;
    let volume = VolumeId::new("bench-vol")?;
    let image2 = args.image2.as_deref().unwrap_or(image);

    let mut full = BackupOptions::new(volume.clone(), image);
    full.encrypt = encrypt;
    let (rec1, s_full) = timed_backup(&ep, full, rss)?;
    print_step(run, bname, STEPS[0], rec1.size, &s_full);

    let mut inc = BackupOptions::new(volume, image2);
    inc.encrypt = encrypt;
    inc.incremental = true;
    inc.parent = Some(rec1.id);
    let (rec2, s_inc) = timed_backup(&ep, inc, rss)?;
    ensure!(rec2.is_incremental, "the second backup is not incremental");
    print_step(run, bname, STEPS[1], rec2.size, &s_inc);

    let target = dir.join("restored.img");
    let req0 = requests(&ep.1);
    rss.start_step();
    let t = Instant::now();
    let report = e
        .restore(RestoreOptions::new(rec2.id, &target))
        .context("restore")?;
    let secs = t.elapsed().as_secs_f64();
    let s_res = Step {
        secs,
        mb_s: report.bytes as f64 / MB / secs,
        stored: None,
        pack_bytes: None,
        rss_kib: rss.step_peak_kib(),
        requests: requests(&ep.1).zip(req0).map(|(a, b)| a - b),
    };
    print_step(run, bname, STEPS[2], report.bytes, &s_res);
    compare(image2, &target)?;
    println!(
        "run {run}  restore verified: {} equals {}",
        target.display(),
        image2.display()
    );

    if let Some(p) = &ep.1 {
        let r = p.requests();
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        let stored = rec1.stored_bytes + rec2.stored_bytes;
        println!(
            "run {run}  {bname:<5} requests: backups {} ({:.0} per GiB stored), restore {} ({:.0} per GiB restored); {} MB up, {} MB down",
            s_full.requests.unwrap_or(0) + s_inc.requests.unwrap_or(0),
            (s_full.requests.unwrap_or(0) + s_inc.requests.unwrap_or(0)) as f64 / gib(stored),
            s_res.requests.unwrap_or(0),
            s_res.requests.unwrap_or(0) as f64 / gib(report.bytes),
            r.bytes_up.load(std::sync::atomic::Ordering::Relaxed) / 1_000_000,
            r.bytes_down.load(std::sync::atomic::Ordering::Relaxed) / 1_000_000,
        );
    }
    drop(ep);
    if !args.keep {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok([s_full, s_inc, s_res])
}

fn print_medians(backend: &str, runs: &[[Step; 3]], size: u64, encrypt: bool) {
    println!();
    println!(
        "== {backend}: medians over {} run(s): volume {}, {} ==",
        runs.len(),
        mb(size),
        if encrypt {
            "encrypted"
        } else {
            "not encrypted"
        }
    );
    println!(
        "{:<12} {:>10} {:>14} {:>14} {:>14}",
        "step", "MB/s", "stored", "pack bytes", "peak RSS"
    );
    for (i, name) in STEPS.iter().enumerate() {
        let col = |f: &dyn Fn(&Step) -> Option<f64>| -> Option<f64> {
            let v: Option<Vec<f64>> = runs.iter().map(|r| f(&r[i])).collect();
            v.map(median)
        };
        let mbs = col(&|s| Some(s.mb_s)).unwrap_or(f64::NAN);
        let stored = col(&|s| s.stored.map(|b| b as f64));
        let packs = col(&|s| s.pack_bytes.map(|b| b as f64));
        let rss = col(&|s| Some(s.rss_kib as f64)).unwrap_or(0.0);
        let fmt_mb = |v: Option<f64>| v.map_or("-".to_string(), |b| format!("{:.1} MB", b / MB));
        println!(
            "{name:<12} {mbs:>10.1} {:>14} {:>14} {:>14}",
            fmt_mb(stored),
            fmt_mb(packs),
            format!("{:.1} MiB", rss / 1024.0)
        );
    }
}

/// Creates a sparse file of `gib` GiB with 4 MiB of random data at five offsets.
fn make_sparse(path: &Path, gib: u64) -> Result<u64> {
    let size = gib << 30;
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.set_len(size)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut buf = vec![0u8; 4 << 20];
    let mut data = 0u64;
    for k in 0..5u64 {
        let at = (size / 5 * k).min(size.saturating_sub(buf.len() as u64)) & !4095;
        rng.fill_bytes(&mut buf);
        use std::os::unix::fs::FileExt;
        f.write_all_at(&buf, at)?;
        data += buf.len() as u64;
    }
    f.flush()?;
    f.sync_all()?;
    Ok(data)
}

fn sparse_run(args: &Args, gib: u64, work: &Path, rss: &mut PeakRss) -> Result<()> {
    let encrypt = args.encrypt();
    let dir = work.join("sparse");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let img = dir.join("sparse.img");
    let data = make_sparse(&img, gib)?;
    let e = fresh_engine(&dir, args, &Backend::Local)?;
    let mut o = BackupOptions::new(VolumeId::new("sparse-vol")?, &img);
    o.encrypt = encrypt;
    let (rec, s) = timed_backup(&e, o, rss)?;
    println!();
    println!(
        "sparse {gib} GiB ({} of random data, {}): {:.2} s, {:.1} MB/s, stored {}, holes {}, \
         packs {}, peak RSS {}",
        mb(data),
        if encrypt {
            "encrypted"
        } else {
            "not encrypted"
        },
        s.secs,
        s.mb_s,
        mb(rec.stored_bytes),
        mb(rec.hole_bytes),
        s.pack_bytes.map_or("-".into(), mb),
        mib_kib(s.rss_kib),
    );
    drop(e);
    if !args.keep {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    blockvault_engine::memory::tune_allocator();
    let args = Args::parse();
    let encrypt = args.encrypt();
    let tmp;
    let work: PathBuf = match &args.work {
        Some(w) => {
            std::fs::create_dir_all(w).with_context(|| format!("create {}", w.display()))?;
            w.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("bv-e2e-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };

    if let (Some(n), Some(image)) = (args.generate_mib, &args.image) {
        let t = Instant::now();
        blockvault_benches::write_mixed_image(image, n << 20, 42)
            .with_context(|| format!("generate {}", image.display()))?;
        println!(
            "generated {} ({n} MiB) in {:.1} s",
            image.display(),
            t.elapsed().as_secs_f64()
        );
        if let Some(image2) = &args.image2 {
            let changed =
                blockvault_benches::write_modified_copy(image, image2, args.change_pct / 100.0, 43)
                    .with_context(|| format!("generate {}", image2.display()))?;
            println!(
                "generated {} ({:.1} MiB rewritten)",
                image2.display(),
                changed as f64 / MIB
            );
        }
    }

    let mut rss = PeakRss::new();
    println!(
        "bv-e2e: {} worker thread(s), {}, work dir {}",
        if args.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            args.threads
        },
        if encrypt {
            "encrypted"
        } else {
            "not encrypted"
        },
        work.display()
    );

    if let Some(image) = &args.image {
        let size = file_size(image)?;
        if let Some(i2) = &args.image2 {
            let s2 = file_size(i2)?;
            if s2 != size {
                println!("note: --image2 is {s2} bytes, --image {size} bytes");
            }
        }
        let mut server: Option<S3Server> = None;
        let mut backends: Vec<Backend> = Vec::new();
        for k in &args.backends {
            backends.push(match k {
                BackendKind::Local => Backend::Local,
                BackendKind::S3 => {
                    let mut s = S3Settings::from_url(&args.s3_bucket)?;
                    match &args.s3_endpoint {
                        Some(ep) => {
                            s.endpoint = Some(ep.clone());
                            s.credentials_file = args.s3_credentials_file.clone();
                        }
                        None => {
                            let srv = server.get_or_insert_with(|| {
                                S3Server::start_with(blockvault_s3_test_server::Options {
                                    buckets: vec![s.bucket.clone()],
                                    root: Some(work.join("s3-objects")),
                                    ..Default::default()
                                })
                            });
                            println!("bv-s3-server at {}", srv.endpoint());
                            s.endpoint = Some(srv.endpoint().to_string());
                            s.credentials_file = Some(srv.credentials_file().to_path_buf());
                        }
                    }
                    Backend::S3(s)
                }
            });
        }
        let mut results: Vec<Vec<[Step; 3]>> = backends.iter().map(|_| Vec::new()).collect();
        for run in 1..=args.runs {
            for (b, r) in backends.iter().zip(&mut results) {
                if let Backend::S3(s) = b {
                    // A fresh prefix per run: a fresh store in the same bucket.
                    let mut s = s.clone();
                    s.prefix = [
                        s.prefix.as_str(),
                        &format!("run-{run}-{}", std::process::id()),
                    ]
                    .iter()
                    .filter(|p| !p.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("/");
                    r.push(run_once(
                        &args,
                        run,
                        &work,
                        image,
                        &mut rss,
                        &Backend::S3(s),
                    )?);
                } else {
                    r.push(run_once(&args, run, &work, image, &mut rss, b)?);
                }
            }
        }
        for (b, r) in backends.iter().zip(&results) {
            if !r.is_empty() {
                print_medians(b.name(), r, size, encrypt);
            }
        }
    }

    if let Some(gib) = args.sparse_gib {
        sparse_run(&args, gib, &work, &mut rss)?;
    }

    println!();
    println!(
        "process peak RSS (VmHWM): {}{}",
        mib_kib(rss.process_peak_kib()),
        if rss.resettable {
            ""
        } else {
            " (per-step peaks are process peaks: /proc/self/clear_refs unavailable)"
        }
    );
    Ok(())
}
