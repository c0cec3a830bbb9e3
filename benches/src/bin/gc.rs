//! `bv-gc`: garbage collection on a store holding tens of GB of logical data.
//!
//! Builds one store from one synthetic volume: a mixed image of `--image-mib` MiB
//! ([`blockvault_benches::write_mixed_image`]) is backed up in full, then changed in place round
//! after round (`--change-pct` percent per round, in scattered 4 KiB-aligned extents of 16 KiB to
//! 1 MiB of new mixed data, like [`blockvault_benches::write_modified_copy`]) and backed up as an
//! incremental each time, until the backups' sizes add up to `--logical-gb` GiB. BLAKE3 hashes of
//! each version's 8 MiB blocks are kept to check restores later.
//!
//! Then three timed GCs, each after a deletion step:
//! 1. every other backup is deleted, the newest kept (the full backup goes with them);
//! 2. the older half of the backups left is deleted;
//! 3. nothing is deleted: the GC only scans (its fixed cost on this store).
//!
//! Then backup throughput with and without GC, in the same run: `--gc-runs` pairs of incremental
//! backups (the image changed by `--change-pct` before each), one with nothing else running and
//! one while a thread runs GC back to back; before the GC one, the oldest backup is deleted so the
//! GC has data to reclaim. Pairs alternate which goes first; medians are printed.
//!
//! For each GC it prints every `GcReport` field, pack bytes before and after, live bytes, the packs
//! the GC removed and wrote (by diffing the sealed-pack list), GC wall time, and the process's RSS
//! before the GC and its peak during it (`VmHWM`, reset through /proc/self/clear_refs). Last,
//! the whole store is verified and the oldest and the newest remaining backups are restored and
//! compared block by block with the versions they were taken from (a difference fails the run).
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use blockvault_benches::{BinarySource, MixedGen};
use blockvault_core::keys::chunk_id;
use blockvault_core::{BackupId, ChunkId, PackId, VolumeId};
use blockvault_engine::{BackupOptions, Engine, EngineOptions, NoProgress, RestoreOptions};
use blockvault_store::{GcReport, StoreConfig, StoreStats};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(
    name = "bv-gc",
    about = "Garbage-collection benchmark of blockvault on a store with many backups"
)]
struct Args {
    /// Directory for the image, the store and restored images (default: a temporary directory).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Size of the volume image in MiB.
    #[arg(long, default_value_t = 1024)]
    image_mib: u64,
    /// Back up until the backups' sizes add up to this many GiB.
    #[arg(long, default_value_t = 20)]
    logical_gb: u64,
    /// Percentage of the image rewritten before each incremental backup.
    #[arg(long, default_value_t = 15.0)]
    change_pct: f64,
    /// Do not encrypt the volume (encrypted by default).
    #[arg(long)]
    no_encrypt: bool,
    /// Worker threads of the engine (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Pairs of incremental backups timed with and without GC running alongside.
    #[arg(long, default_value_t = 3)]
    gc_runs: usize,
    /// With --work: keep the store and the image instead of removing them at the end.
    #[arg(long)]
    keep: bool,
}

const MB: f64 = 1e6;
const GIB: f64 = (1u64 << 30) as f64;
/// Restores are compared in blocks of this size.
const BLOCK: usize = 8 << 20;

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / MB)
}

/// A `/proc/self/status` field in KiB (`VmHWM`, `VmRSS`).
fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the kernel's peak-RSS counter; false when not allowed.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// BLAKE3 of each 8 MiB block of a file.
fn block_hashes(path: &Path) -> Result<Vec<ChunkId>> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; BLOCK];
    let mut out = Vec::new();
    loop {
        let n = blockvault_benches::read_full(&mut f, &mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            return Ok(out);
        }
        out.push(chunk_id(&buf[..n], None));
    }
}

/// Rewrites about `frac` of the file in place with new mixed data, in scattered 4 KiB-aligned
/// extents of 16 KiB to 1 MiB (as `write_modified_copy` does, without the copy). Returns the
/// bytes written.
fn modify_in_place(path: &Path, frac: f64, seed: u64, corpus: &[u8]) -> Result<u64> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let bins = if corpus.is_empty() {
        BinarySource::Synthetic
    } else {
        BinarySource::Corpus(corpus.to_vec())
    };
    let mut g = MixedGen::new(seed ^ 0x9e37_79b9, bins, 4096, 64 << 10);
    let goal = (len as f64 * frac.clamp(0.0, 1.0)) as u64;
    let mut changed = 0u64;
    while changed < goal && len >= 4096 {
        let n = rng.gen_range(16u64 << 10..=1 << 20).min(goal - changed);
        let n = (n.div_ceil(4096) * 4096).min(len / 4096 * 4096);
        let at = rng.gen_range(0..=(len - n) / 4096) * 4096;
        f.write_all_at(&g.buffer(n as usize), at)
            .with_context(|| format!("write {}", path.display()))?;
        changed += n;
    }
    f.sync_all()?;
    Ok(changed)
}

/// One backup of the series.
struct Backup {
    id: BackupId,
    round: usize,
    size: u64,
    blocks: Vec<ChunkId>,
}

/// What one deletion step and its GC measured.
struct Phase {
    name: &'static str,
    deleted: usize,
    delete_secs: f64,
    left: usize,
    logical_left: u64,
    before: StoreStats,
    after: StoreStats,
    gc_secs: f64,
    /// Process RSS before the GC and its peak during the GC.
    rss_kib: (Option<u64>, Option<u64>),
    /// Sealed packs the GC removed, and packs it wrote (count, bytes).
    removed: (usize, u64),
    written: (usize, u64),
    report: GcReport,
}

/// Sealed packs by id.
fn packs(engine: &Engine) -> Result<HashMap<PackId, u64>> {
    Ok(engine
        .store()
        .sealed_packs()?
        .into_iter()
        .map(|(id, info)| (id, info.size))
        .collect())
}

/// Packs of `a` missing from `b`: (count, bytes).
fn missing(a: &HashMap<PackId, u64>, b: &HashMap<PackId, u64>) -> (usize, u64) {
    a.iter()
        .filter(|(id, _)| !b.contains_key(id))
        .fold((0, 0), |(n, bytes), (_, size)| (n + 1, bytes + size))
}

fn run_phase(
    engine: &Engine,
    name: &'static str,
    backups: &mut Vec<Backup>,
    delete: impl Fn(usize, usize) -> bool,
) -> Result<Phase> {
    let before = engine.store().stats()?;
    let n = backups.len();
    let t = Instant::now();
    let mut kept = Vec::new();
    let mut deleted = 0;
    for (i, b) in std::mem::take(backups).into_iter().enumerate() {
        if delete(i, n) {
            engine
                .delete(&b.id)
                .with_context(|| format!("delete backup {} (round {})", b.id, b.round))?;
            deleted += 1;
        } else {
            kept.push(b);
        }
    }
    let delete_secs = t.elapsed().as_secs_f64();
    *backups = kept;
    let packs_before = packs(engine)?;
    let rss_before = status_kib("VmRSS:");
    let resettable = reset_peak_rss();
    let t = Instant::now();
    let report = engine.gc().context("gc")?;
    let gc_secs = t.elapsed().as_secs_f64();
    let rss_peak = if resettable {
        status_kib("VmHWM:")
    } else {
        None
    };
    let after = engine.store().stats()?;
    let packs_after = packs(engine)?;
    println!(
        "{name}: deleted {deleted} backups in {delete_secs:.2} s; GC {gc_secs:.2} s, reclaimed {}: \
         {report:?}",
        mb(report.reclaimed_bytes())
    );
    Ok(Phase {
        name,
        deleted,
        delete_secs,
        left: backups.len(),
        logical_left: backups.iter().map(|b| b.size).sum(),
        before,
        after,
        gc_secs,
        rss_kib: (rss_before, rss_peak),
        removed: missing(&packs_before, &packs_after),
        written: missing(&packs_after, &packs_before),
        report,
    })
}

fn print_table(phases: &[Phase]) {
    let head: Vec<&str> = phases.iter().map(|p| p.name).collect();
    println!("| | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(phases.len()));
    let row = |label: &str, f: &dyn Fn(&Phase) -> String| {
        let cells: Vec<String> = phases.iter().map(f).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    row("backups deleted", &|p| p.deleted.to_string());
    row("delete wall time", &|p| format!("{:.2} s", p.delete_secs));
    row("backups left (logical)", &|p| {
        format!("{} ({:.1} GiB)", p.left, p.logical_left as f64 / GIB)
    });
    row("pack bytes before", &|p| mb(p.before.pack_bytes));
    row("pack bytes after", &|p| mb(p.after.pack_bytes));
    row("live bytes after", &|p| mb(p.after.live_bytes));
    row("packs before / after", &|p| {
        format!("{} / {}", p.before.packs, p.after.packs)
    });
    row("chunks before / after", &|p| {
        format!("{} / {}", p.before.chunks, p.after.chunks)
    });
    row("**GC wall time**", &|p| format!("**{:.2} s**", p.gc_secs));
    row("packs removed by GC (bytes)", &|p| {
        format!("{} ({})", p.removed.0, mb(p.removed.1))
    });
    row("packs written by GC (bytes)", &|p| {
        format!("{} ({})", p.written.0, mb(p.written.1))
    });
    row("process RSS before GC / peak during GC", &|p| {
        let f = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
        format!("{} / {}", f(p.rss_kib.0), f(p.rss_kib.1))
    });
    row("reclaimed (`reclaimed_bytes`)", &|p| {
        mb(p.report.reclaimed_bytes())
    });
    row("`pack_bytes_before`", &|p| mb(p.report.pack_bytes_before));
    row("`pack_bytes_after`", &|p| mb(p.report.pack_bytes_after));
    row("`dead_refs`", &|p| p.report.dead_refs.to_string());
    row("`deletes_finished`", &|p| {
        p.report.deletes_finished.to_string()
    });
    row("`chunks_removed`", &|p| p.report.chunks_removed.to_string());
    row("`packs_deleted`", &|p| p.report.packs_deleted.to_string());
    row("`packs_rewritten`", &|p| {
        p.report.packs_rewritten.to_string()
    });
    row("`orphan_packs_deleted`", &|p| {
        p.report.orphan_packs_deleted.to_string()
    });
}

/// Restores a backup to a new file and compares its block hashes; removes the file after.
fn check_restore(engine: &Engine, work: &Path, b: &Backup) -> Result<f64> {
    let target = work.join(format!("restore-{}.img", b.id));
    let t = Instant::now();
    engine
        .restore(RestoreOptions::new(b.id, &target))
        .with_context(|| format!("restore backup {} (round {})", b.id, b.round))?;
    let secs = t.elapsed().as_secs_f64();
    let got = block_hashes(&target)?;
    std::fs::remove_file(&target)?;
    ensure!(
        got.len() == b.blocks.len(),
        "RESTORE MISMATCH: backup {} (round {}) restored {} blocks, expected {}",
        b.id,
        b.round,
        got.len(),
        b.blocks.len()
    );
    if let Some(i) = got.iter().zip(&b.blocks).position(|(x, y)| x != y) {
        anyhow::bail!(
            "RESTORE MISMATCH: backup {} (round {}) differs in the 8 MiB block at offset {}",
            b.id,
            b.round,
            i * BLOCK
        );
    }
    Ok(secs)
}

fn main() -> Result<()> {
    blockvault_engine::memory::tune_allocator();
    let args = Args::parse();
    let encrypt = !args.no_encrypt;
    let tmp;
    let work: PathBuf = match &args.work {
        Some(w) => {
            std::fs::create_dir_all(w).with_context(|| format!("create {}", w.display()))?;
            w.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("bv-gc-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let image = work.join("volume.img");
    let store_dir = work.join("store");
    ensure!(
        !store_dir.exists(),
        "{} already exists; use an empty --work directory",
        store_dir.display()
    );
    let size = args.image_mib << 20;
    let target = args.logical_gb << 30;

    let t = Instant::now();
    blockvault_benches::write_mixed_image(&image, size, 42)
        .with_context(|| format!("generate {}", image.display()))?;
    println!(
        "bv-gc: generated {} ({} MiB) in {:.1} s; {}, work dir {}",
        image.display(),
        args.image_mib,
        t.elapsed().as_secs_f64(),
        if encrypt {
            "encrypted"
        } else {
            "not encrypted"
        },
        work.display()
    );

    let key = work.join("master.key");
    Engine::init(
        &store_dir,
        StoreConfig::default(),
        encrypt.then_some(key.as_path()),
    )
    .with_context(|| format!("init store {}", store_dir.display()))?;
    let opts = EngineOptions {
        threads: args.threads,
        ..EngineOptions::default()
    };
    let engine = Engine::open(&store_dir, opts)?;
    let volume = VolumeId::new("gc-bench-vol")?;

    // ---- Build: a full backup, then incrementals until the logical target is reached.
    let corpus = blockvault_benches::binary_corpus(8 << 20);
    let build = Instant::now();
    let mut backups: Vec<Backup> = Vec::new();
    let (mut logical, mut stored, mut backup_secs) = (0u64, 0u64, 0f64);
    while logical < target {
        let round = backups.len();
        let mut changed = 0;
        if round > 0 {
            changed = modify_in_place(
                &image,
                args.change_pct / 100.0,
                1000 + round as u64,
                &corpus,
            )?;
        }
        let blocks = block_hashes(&image)?;
        let mut o = BackupOptions::new(volume.clone(), &image);
        o.encrypt = encrypt;
        o.incremental = round > 0;
        let t = Instant::now();
        let rec = engine
            .backup(o)
            .with_context(|| format!("backup round {round}"))?;
        let secs = t.elapsed().as_secs_f64();
        backup_secs += secs;
        logical += rec.size;
        stored += rec.stored_bytes;
        println!(
            "backup {round:>3}: {} rewritten, {secs:.2} s, stored {}, logical so far {:.2} GiB",
            mb(changed),
            mb(rec.stored_bytes),
            logical as f64 / GIB
        );
        backups.push(Backup {
            id: rec.id,
            round,
            size: rec.size,
            blocks,
        });
    }
    let built = engine.store().stats()?;
    let index_bytes = dir_bytes(&store_dir.join("index"));
    println!();
    println!(
        "built in {:.1} s ({:.1} s in backups): {} backups of {:.2} GiB, logical {:.2} GiB \
         ({} bytes), stored {}, {} packs of {}, {} chunks, index {} on disk",
        build.elapsed().as_secs_f64(),
        backup_secs,
        backups.len(),
        size as f64 / GIB,
        logical as f64 / GIB,
        logical,
        mb(stored),
        built.packs,
        mb(built.pack_bytes),
        built.chunks,
        mb(index_bytes)
    );

    // ---- Deletions and GCs.
    // Phase 1 keeps the newest backup and every other one going back.
    let phases = vec![
        run_phase(&engine, "every other deleted", &mut backups, |i, n| {
            (n - 1 - i) % 2 == 1
        })?,
        run_phase(&engine, "older half deleted", &mut backups, |i, n| {
            i < n / 2
        })?,
        run_phase(&engine, "nothing deleted", &mut backups, |_, _| false)?,
    ];

    // ---- Backup throughput with and without GC running alongside.
    let mut alone = Vec::new();
    let mut with_gc = Vec::new();
    let mut gc_passes = Vec::new();
    let mut next_round = backups.last().map_or(0, |b| b.round + 1);
    for run in 0..args.gc_runs {
        for step in 0..2 {
            let gc = (run + step) % 2 == 1;
            if gc && backups.len() > 1 {
                let old = backups.remove(0);
                engine.delete(&old.id)?;
            }
            modify_in_place(
                &image,
                args.change_pct / 100.0,
                1000 + next_round as u64,
                &corpus,
            )?;
            let blocks = block_hashes(&image)?;
            let mut o = BackupOptions::new(volume.clone(), &image);
            o.encrypt = encrypt;
            o.incremental = true;
            let done = std::sync::atomic::AtomicBool::new(false);
            let (rec, secs, passes) = std::thread::scope(|s| -> Result<_> {
                let looper = gc.then(|| {
                    s.spawn(|| -> Result<(usize, u64)> {
                        let (mut n, mut reclaimed) = (0, 0);
                        while !done.load(std::sync::atomic::Ordering::SeqCst) {
                            reclaimed += engine.gc()?.reclaimed_bytes();
                            n += 1;
                        }
                        Ok((n, reclaimed))
                    })
                });
                let t = Instant::now();
                let rec = engine.backup(o);
                let secs = t.elapsed().as_secs_f64();
                done.store(true, std::sync::atomic::Ordering::SeqCst);
                let passes = match looper {
                    Some(h) => Some(h.join().expect("gc thread")?),
                    None => None,
                };
                Ok((rec?, secs, passes))
            })?;
            let rate = rec.size as f64 / MB / secs;
            match passes {
                Some((n, reclaimed)) => {
                    println!(
                        "incremental {next_round} with GC running: {rate:.0} MB/s ({secs:.2} s); \
                         {n} GC passes meanwhile reclaimed {}",
                        mb(reclaimed)
                    );
                    with_gc.push(rate);
                    gc_passes.push(n);
                }
                None => {
                    println!("incremental {next_round} alone: {rate:.0} MB/s ({secs:.2} s)");
                    alone.push(rate);
                }
            }
            backups.push(Backup {
                id: rec.id,
                round: next_round,
                size: rec.size,
                blocks,
            });
            next_round += 1;
        }
    }

    // ---- Checks.
    let t = Instant::now();
    let v = engine.verify(None, &NoProgress).context("verify")?;
    let verify_secs = t.elapsed().as_secs_f64();
    ensure!(v.is_clean(), "VERIFY FAILED: {v:?}");
    let mut restores = Vec::new();
    let oldest = backups.first().context("no backup left")?;
    let newest = backups.last().context("no backup left")?;
    for b in [oldest, newest] {
        let secs = check_restore(&engine, &work, b)?;
        restores.push(format!(
            "round {} in {secs:.2} s ({:.0} MB/s)",
            b.round,
            b.size as f64 / MB / secs
        ));
    }

    println!();
    println!(
        "== GC on {} backups of a {} MiB volume ({:.1} GiB logical, {:.0} % rewritten per \
         round, {}) ==",
        phases[0].left + phases[0].deleted,
        args.image_mib,
        logical as f64 / GIB,
        args.change_pct,
        if encrypt {
            "encrypted"
        } else {
            "not encrypted"
        }
    );
    println!();
    print_table(&phases);
    println!();
    println!(
        "verify (whole store, {} backups, {} chunks, {}): clean in {verify_secs:.1} s",
        v.backups_checked,
        v.chunks_checked,
        mb(v.bytes_checked)
    );
    println!(
        "restores compared with their source versions: {}",
        restores.join("; ")
    );
    if !alone.is_empty() && !with_gc.is_empty() {
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (a, g) = (median(&mut alone), median(&mut with_gc));
        println!(
            "incremental backup ({:.0} % changed), median of {}: alone {a:.0} MB/s, with GC \
             running {g:.0} MB/s ({:+.1} %; {} GC passes per backup, median)",
            args.change_pct,
            alone.len(),
            (g - a) / a * 100.0,
            {
                gc_passes.sort();
                gc_passes[gc_passes.len() / 2]
            }
        );
    }

    drop(engine);
    if args.keep {
        println!("kept {}", work.display());
    } else if args.work.is_some() {
        std::fs::remove_dir_all(&store_dir)?;
        std::fs::remove_file(&image)?;
        let _ = std::fs::remove_file(&key);
    }
    Ok(())
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            n += match e.metadata() {
                Ok(md) if md.is_dir() => dir_bytes(&e.path()),
                Ok(md) => md.len(),
                Err(_) => 0,
            };
        }
    }
    n
}
