//! `bv-cbt`: a CBT incremental against a re-read incremental, in the same run.
//!
//! Given a base image and a changed copy of it (for example `A.img` and `A2.img` of the shared
//! peer images), it computes the block diff between them (`--block` bytes per block; the extents
//! a changed-block-tracking source such as a dirty bitmap would report), then, `--runs` times:
//! two fresh stores each get a full backup of the base, and the changed copy is backed up as an
//! incremental into one by reading everything and into the other with the diff's extents. The
//! two incrementals alternate which goes first. Each is timed (wall clock) and checked: both
//! must restore to the changed copy byte for byte (compared by BLAKE3) on the first run.
//!
//! It prints, per run and as medians: the time of each incremental, their ratio, bytes read and
//! bytes stored. With `--drop-caches` (root), the page cache is dropped before each timed
//! incremental, so both read from the disk.
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use blockvault_benches::median;
use blockvault_core::VolumeId;
use blockvault_engine::{BackupOptions, Cbt, Engine, EngineOptions, OnMismatch, RestoreOptions};
use blockvault_store::StoreConfig;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "bv-cbt",
    about = "CBT incremental against a re-read incremental"
)]
struct Args {
    /// The image of the parent backup.
    #[arg(long)]
    base: PathBuf,
    /// The changed image backed up as the incremental.
    #[arg(long)]
    new: PathBuf,
    /// Directory for the stores (default: a temporary directory).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Block size of the diff, in bytes.
    #[arg(long, default_value_t = 4096)]
    block: usize,
    /// Timed pairs of incrementals.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Fraction of the unchanged regions the CBT backup samples and compares.
    #[arg(long, default_value_t = 0.0)]
    sample: f64,
    /// Encrypt the volume.
    #[arg(long)]
    encrypt: bool,
    /// Drop the page cache before each timed incremental (needs root).
    #[arg(long)]
    drop_caches: bool,
}

/// The runs of blocks that differ between `a` and `b` (and `b`'s bytes past `a`'s end), as the
/// plain JSON list `--changed-extents` takes.
fn block_diff(a: &Path, b: &Path, block: usize) -> Result<(String, u64, usize)> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    let chunk = (8 << 20) / block * block;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    loop {
        let nb = blockvault_benches::read_full(&mut fb, &mut bb[..chunk])?;
        if nb == 0 {
            break;
        }
        let na = blockvault_benches::read_full(&mut fa, &mut ba[..chunk])?;
        for i in (0..nb).step_by(block) {
            let end = (i + block).min(nb);
            let same = end <= na && ba[i..end] == bb[i..end];
            if !same {
                let at = pos + i as u64;
                match runs.last_mut() {
                    Some((o, l)) if *o + *l == at => *l += (end - i) as u64,
                    _ => runs.push((at, (end - i) as u64)),
                }
            }
        }
        pos += nb as u64;
    }
    let changed = runs.iter().map(|r| r.1).sum();
    let list: Vec<String> = runs
        .iter()
        .map(|(o, l)| format!("{{\"offset\":{o},\"length\":{l}}}"))
        .collect();
    Ok((format!("[{}]", list.join(",")), changed, runs.len()))
}

fn drop_caches() -> Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")
}

fn hash_file(p: &Path) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(p)?;
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize())
}

struct Timed {
    secs: f64,
    read: u64,
    stored: u64,
}

/// A fresh store in `dir` with a full backup of `base`.
fn store_with_full(dir: &Path, args: &Args) -> Result<Engine> {
    let key = dir.join("master.key");
    Engine::init(dir.join("store"), StoreConfig::default(), Some(&key))?;
    let e = Engine::open(dir.join("store"), EngineOptions::default())?;
    let mut o = BackupOptions::new(VolumeId::new("v")?, &args.base);
    o.encrypt = args.encrypt;
    e.backup(o)?;
    Ok(e)
}

fn incremental(
    e: &Engine,
    args: &Args,
    cbt: Option<&str>,
) -> Result<(Timed, blockvault_core::BackupId)> {
    if args.drop_caches {
        drop_caches()?;
    }
    let mut o = BackupOptions::new(VolumeId::new("v")?, &args.new);
    o.incremental = true;
    o.encrypt = args.encrypt;
    o.cbt = cbt.map(|json| Cbt {
        extents: json.as_bytes().into(),
        sample: args.sample,
        on_mismatch: OnMismatch::Fail,
    });
    let t = Instant::now();
    let rec = e.backup(o)?;
    let secs = t.elapsed().as_secs_f64();
    let read = rec.cbt.as_ref().map_or(rec.size, |c| c.read_bytes);
    Ok((
        Timed {
            secs,
            read,
            stored: rec.stored_bytes,
        },
        rec.id,
    ))
}

fn main() -> Result<()> {
    blockvault_engine::memory::tune_allocator();
    let args = Args::parse();
    ensure!(args.runs > 0, "--runs must be positive");
    let tmp;
    let work = match &args.work {
        Some(w) => w.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let t = Instant::now();
    let (json, changed, runs) = block_diff(&args.base, &args.new, args.block)?;
    let size = std::fs::metadata(&args.new)?.len();
    println!(
        "block diff ({} B blocks): {runs} extents, {changed} bytes changed of {size} ({:.2} %), {:.2} s",
        args.block,
        100.0 * changed as f64 / size as f64,
        t.elapsed().as_secs_f64()
    );
    let want = hash_file(&args.new)?;
    let mut ratios = Vec::new();
    let (mut t_full, mut t_cbt) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let (dr, dc) = (
            work.join(format!("reread-{run}")),
            work.join(format!("cbt-{run}")),
        );
        std::fs::create_dir_all(&dr)?;
        std::fs::create_dir_all(&dc)?;
        let (er, ec) = (store_with_full(&dr, &args)?, store_with_full(&dc, &args)?);
        let cbt_first = run % 2 == 1;
        let (r, c) = if cbt_first {
            let c = incremental(&ec, &args, Some(&json))?;
            (incremental(&er, &args, None)?, c)
        } else {
            let r = incremental(&er, &args, None)?;
            (r, incremental(&ec, &args, Some(&json))?)
        };
        if run == 0 {
            for (e, id, what) in [(&er, r.1, "re-read"), (&ec, c.1, "CBT")] {
                let out = work.join(format!("restored-{what}"));
                e.restore(RestoreOptions::new(id, &out))?;
                ensure!(
                    hash_file(&out)? == want,
                    "the {what} incremental does not restore byte-exact"
                );
                std::fs::remove_file(&out)?;
            }
        }
        let ratio = c.0.secs / r.0.secs;
        println!(
            "run {run}: re-read {:.3} s (read {} B, stored {} B) | CBT {:.3} s (read {} B, stored {} B) | CBT/re-read time {:.2} %",
            r.0.secs, r.0.read, r.0.stored, c.0.secs, c.0.read, c.0.stored, 100.0 * ratio
        );
        ensure!(
            c.0.stored <= r.0.stored,
            "the CBT incremental stored more than the re-read"
        );
        ratios.push(ratio);
        t_full.push(r.0.secs);
        t_cbt.push(c.0.secs);
        drop((er, ec));
        std::fs::remove_dir_all(&dr)?;
        std::fs::remove_dir_all(&dc)?;
    }
    println!(
        "median: re-read {:.3} s ({:.0} MB/s of volume), CBT {:.3} s ({:.0} MB/s of volume), CBT/re-read {:.2} %",
        median(t_full.clone()),
        size as f64 / 1e6 / median(t_full),
        median(t_cbt.clone()),
        size as f64 / 1e6 / median(t_cbt),
        100.0 * median(ratios)
    );
    Ok(())
}
