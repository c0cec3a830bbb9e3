//! `bv-recover`: how long `recover` takes per million chunks, and what a second verify within
//! its period reads, for a local store and a store in a bucket (`bv-s3-server`, or any endpoint).
//!
//! Builds one store per backend from random images (small chunks, so that the chunk count is
//! high for the bytes written), then per run: recovers it (local: in place, the index moved
//! aside; bucket: into an empty directory), and verifies it twice with a one-day period.
//! Prints every run and the medians.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use blockvault_benches::median;
use blockvault_core::{ChunkerParams, VolumeId};
use blockvault_engine::{BackupOptions, Engine, EngineOptions, NoProgress, RecoverFrom};
use blockvault_s3_test_server::S3Server;
use blockvault_store::{Backend, S3Packs, S3Settings, Store, StoreConfig};
use clap::Parser;
use rand::{RngCore, SeedableRng};

#[derive(Parser, Debug)]
#[command(
    name = "bv-recover",
    about = "Recovery and repeated-verify benchmark of blockvault"
)]
struct Args {
    /// MiB of random data backed up (in volumes of 256 MiB).
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Average chunk size in bytes (min = avg / 2, max = avg * 4).
    #[arg(long, default_value_t = 8192)]
    avg_chunk: u32,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Work directory (default: a temporary directory).
    #[arg(long)]
    work: Option<PathBuf>,
    /// `local`, `s3` or both.
    #[arg(long, value_delimiter = ',', default_value = "local,s3")]
    backends: Vec<String>,
    /// S3 endpoint (default: start bv-s3-server in the work directory).
    #[arg(long)]
    s3_endpoint: Option<String>,
    #[arg(long, default_value = "s3://bv-recover")]
    s3_bucket: String,
    #[arg(long)]
    s3_credentials_file: Option<PathBuf>,
}

fn main() -> Result<()> {
    blockvault_engine::memory::tune_allocator();
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let mut server = None;
    let chunker = ChunkerParams {
        min_size: args.avg_chunk / 2,
        avg_size: args.avg_chunk,
        max_size: args.avg_chunk * 4,
    };
    for name in &args.backends {
        let dir = work.join(format!("store-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("master.key");
        let backend = match name.as_str() {
            "local" => Backend::Local,
            "s3" => {
                let mut s = S3Settings::from_url(&args.s3_bucket)?;
                s.prefix = format!("recover-{}", uuid_like());
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
                        s.endpoint = Some(srv.endpoint().to_string());
                        s.credentials_file = Some(srv.credentials_file().to_path_buf());
                    }
                }
                Backend::S3(s)
            }
            other => anyhow::bail!("unknown backend {other}"),
        };
        let store = dir.join("store");
        let config = StoreConfig {
            chunker,
            backend: backend.clone(),
            ..StoreConfig::default()
        };
        Engine::init(&store, config, Some(&key)).context("init")?;
        {
            let e = Engine::open(&store, EngineOptions::default())?;
            let img = dir.join("vol.img");
            let mut left = args.mib;
            let mut n = 0;
            while left > 0 {
                let mib = left.min(256);
                let mut data = vec![0u8; (mib << 20) as usize];
                rand::rngs::StdRng::seed_from_u64(n).fill_bytes(&mut data);
                std::fs::write(&img, &data)?;
                e.backup(BackupOptions::new(VolumeId::new(format!("v{n}"))?, &img))?;
                left -= mib;
                n += 1;
            }
            std::fs::remove_file(&img)?;
        }
        let (mut secs, mut per_m, mut second_bytes, mut second_reqs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut current = store.clone();
        for run in 1..=args.runs {
            let from = match &backend {
                Backend::Local => RecoverFrom::Dir,
                b => {
                    // The node is gone: a new, empty directory.
                    let fresh = dir.join(format!("recovered-{run}"));
                    let _ = std::fs::remove_dir_all(&current);
                    current = fresh;
                    RecoverFrom::Backend(b.clone())
                }
            };
            let t = Instant::now();
            let (engine, report) =
                Engine::recover(&current, from, Some(&key), EngineOptions::default())?;
            let s = t.elapsed().as_secs_f64();
            let chunks = report.chunk_entries.max(1) as f64;
            drop(engine);
            // Verify twice within a day, counting what the second run asks of the bucket.
            let (engine, packs) = match &backend {
                Backend::S3(st) => {
                    let p = Arc::new(S3Packs::new(st.clone())?);
                    let opts = EngineOptions {
                        key_file: Some(key.clone()),
                        ..EngineOptions::default()
                    };
                    (
                        Engine::new(Store::open_with(&current, p.clone())?, opts)?,
                        Some(p),
                    )
                }
                Backend::Local => (Engine::open(&current, EngineOptions::default())?, None),
            };
            let day = Duration::from_secs(86400);
            let first = engine.verify_store_within(day, &NoProgress)?;
            anyhow::ensure!(first.is_clean(), "verify after recover: {first:?}");
            let before = packs.as_ref().map(|p| {
                (
                    p.requests()
                        .bytes_down
                        .load(std::sync::atomic::Ordering::Relaxed),
                    p.requests().total(),
                )
            });
            let second = engine.verify_store_within(day, &NoProgress)?;
            if let (Some(p), Some((b0, r0))) = (&packs, before) {
                second_bytes.push(
                    (p.requests()
                        .bytes_down
                        .load(std::sync::atomic::Ordering::Relaxed)
                        - b0) as f64,
                );
                second_reqs.push((p.requests().total() - r0) as f64);
            }
            println!(
                "run {run} {name}: recovered {} backups, {} chunks, {} packs ({} from trailers) \
                 in {s:.2} s = {:.1} s per million chunks; second verify skipped {} of {} packs",
                report.backups.len(),
                report.chunk_entries,
                report.packs,
                report.packs_from_trailer,
                s / chunks * 1e6,
                second.packs_skipped,
                second.packs_skipped + second.packs_checked,
            );
            secs.push(s);
            per_m.push(s / chunks * 1e6);
        }
        print!(
            "median {name}: recover {:.2} s, {:.1} s per million chunks",
            median(secs),
            median(per_m)
        );
        if !second_bytes.is_empty() {
            print!(
                "; second verify within its period: {} bytes, {} requests to the bucket",
                median(second_bytes),
                median(second_reqs)
            );
        }
        println!();
    }
    Ok(())
}

/// A short random hex tag (a fresh prefix per bench run).
fn uuid_like() -> String {
    format!("{:08x}", rand::random::<u32>())
}
