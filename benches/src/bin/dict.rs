//! `bv-dict`: what zstd dictionaries buy on blockvault's small chunks, before the store uses
//! them (issue "Fewer bytes than any peer").
//!
//! Reads an image, cuts it with the store's default FastCDC parameters, drops zero chunks and
//! duplicates (BLAKE3), and then, on one thread, compresses every unique chunk alone:
//! - without a dictionary at each `--levels` level (what the store does today);
//! - with a dictionary of each `--dict-kib` size, trained (`ZDICT_trainFromBuffer`, through the
//!   `zstd` crate) on a sample of the chunks, at each level. The sample is either spread over
//!   the whole image (every k-th chunk, `spread`) or the image's first chunks (`head`, what a
//!   store sees when it trains during a volume's first full backup); both total `--sample-mib`;
//! - and the unique chunks, in volume order, compressed together in frames of `--frame-kib`
//!   at each level: what borg and rustic get from their 1 to 2 MiB chunks, and what a store
//!   would get by compressing consecutive new chunks as one zstd frame while still deduplicating
//!   chunk by chunk.
//!
//! A chunk is stored raw when zstd does not shrink it, as the envelope does; stored bytes count
//! the dictionary once. Each row gives stored MiB, the ratio to the raw unique bytes, the
//! difference to the store's current setting (level 1, no dictionary), compression and
//! decompression MB/s of one thread, and the training time. Decompression is checked byte for
//! byte against the chunk.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use blockvault_core::chunker::{is_zero, ChunkerParams};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "bv-dict",
    about = "Stored bytes and speed of zstd with and without dictionaries on blockvault's chunks"
)]
struct Args {
    /// Image to read (a raw volume).
    #[arg(long)]
    image: PathBuf,
    /// zstd levels to try.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    levels: Vec<i32>,
    /// Dictionary sizes to try, in KiB.
    #[arg(long, value_delimiter = ',', default_value = "16,64,112")]
    dict_kib: Vec<usize>,
    /// Bytes of chunks to train each dictionary on, in MiB.
    #[arg(long, default_value_t = 8)]
    sample_mib: usize,
    /// Frame sizes of the grouped rows, in KiB.
    #[arg(long, value_delimiter = ',', default_value = "256,1024,2048")]
    frame_kib: Vec<usize>,
}

/// Stored bytes and speeds of one way of compressing the unique chunks.
struct Row {
    name: String,
    stored: u64,
    compress_mb_s: f64,
    decompress_mb_s: f64,
    train_ms: Option<f64>,
}

/// Compresses every chunk alone with `c`, checks it back with `d`; raw when zstd does not shrink.
fn per_chunk(
    name: String,
    chunks: &[&[u8]],
    raw: u64,
    mut c: zstd::bulk::Compressor<'_>,
    mut d: zstd::bulk::Decompressor<'_>,
    extra: u64,
    train_ms: Option<f64>,
) -> Result<Row> {
    let t = Instant::now();
    let packed: Vec<Option<Vec<u8>>> = chunks
        .iter()
        .map(|ch| {
            let z = c.compress(ch)?;
            Ok((z.len() < ch.len()).then_some(z))
        })
        .collect::<Result<_>>()?;
    let ct = t.elapsed().as_secs_f64();
    let stored = extra
        + chunks
            .iter()
            .zip(&packed)
            .map(|(ch, z)| z.as_ref().map_or(ch.len(), Vec::len) as u64)
            .sum::<u64>();
    let t = Instant::now();
    for (ch, z) in chunks.iter().zip(&packed) {
        if let Some(z) = z {
            let back = d.decompress(z, ch.len())?;
            ensure!(back == *ch, "{name}: a chunk did not decompress to itself");
        }
    }
    let dt = t.elapsed().as_secs_f64();
    Ok(Row {
        name,
        stored,
        compress_mb_s: raw as f64 / ct / 1e6,
        decompress_mb_s: raw as f64 / dt / 1e6,
        train_ms,
    })
}

/// About `budget` bytes of chunks: every k-th over all of them (`spread`) or the first ones.
fn sample<'a>(chunks: &[&'a [u8]], budget: usize, spread: bool) -> Vec<&'a [u8]> {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let mut out = Vec::new();
    let mut taken = 0;
    if spread {
        let step = (total / budget.max(1)).max(1);
        for c in chunks.iter().step_by(step) {
            out.push(*c);
        }
    } else {
        for c in chunks {
            if taken >= budget {
                break;
            }
            taken += c.len();
            out.push(*c);
        }
    }
    out
}

fn main() -> Result<()> {
    let args = Args::parse();
    let data = std::fs::read(&args.image).with_context(|| args.image.display().to_string())?;
    let params = ChunkerParams::default();
    let mut seen = std::collections::HashSet::new();
    let mut chunks: Vec<&[u8]> = Vec::new();
    for (off, len) in params.cut_all(&data) {
        let c = &data[off..off + len];
        if is_zero(c) || !seen.insert(*blake3::hash(c).as_bytes()) {
            continue;
        }
        chunks.push(c);
    }
    let raw: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    println!(
        "## {}: {} MiB, {} unique non-zero chunks of {} MiB (average {} KiB)",
        args.image.display(),
        data.len() >> 20,
        chunks.len(),
        raw >> 20,
        raw / chunks.len().max(1) as u64 / 1024
    );
    println!();

    let mut rows = Vec::new();
    for &level in &args.levels {
        rows.push(per_chunk(
            format!("per chunk, level {level}, no dictionary"),
            &chunks,
            raw,
            zstd::bulk::Compressor::new(level)?,
            zstd::bulk::Decompressor::new()?,
            0,
            None,
        )?);
    }
    for spread in [true, false] {
        let s = sample(&chunks, args.sample_mib << 20, spread);
        let sample_bytes: usize = s.iter().map(|c| c.len()).sum();
        for &kib in &args.dict_kib {
            let t = Instant::now();
            let dict = zstd::dict::from_samples(&s, kib << 10)
                .with_context(|| format!("training a {kib} KiB dictionary"))?;
            let train_ms = t.elapsed().as_secs_f64() * 1e3;
            for &level in &args.levels {
                rows.push(per_chunk(
                    format!(
                        "per chunk, level {level}, {kib} KiB dictionary ({}, {} MiB sample)",
                        if spread { "spread" } else { "head" },
                        sample_bytes >> 20
                    ),
                    &chunks,
                    raw,
                    zstd::bulk::Compressor::with_dictionary(level, &dict)?,
                    zstd::bulk::Decompressor::with_dictionary(&dict)?,
                    dict.len() as u64,
                    Some(train_ms),
                )?);
            }
        }
    }
    let unique: Vec<u8> = chunks.concat();
    for &kib in &args.frame_kib {
        let frames: Vec<&[u8]> = unique.chunks(kib << 10).collect();
        for &level in &args.levels {
            rows.push(per_chunk(
                format!("frames of {kib} KiB of consecutive unique chunks, level {level}"),
                &frames,
                raw,
                zstd::bulk::Compressor::new(level)?,
                zstd::bulk::Decompressor::new()?,
                0,
                None,
            )?);
        }
    }
    let base = rows
        .iter()
        .find(|r| r.name == "per chunk, level 1, no dictionary")
        .map(|r| r.stored);
    println!("| compression | stored MiB | ratio | vs level 1 today | compress MB/s | decompress MB/s | train ms |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.3} | {} | {:.0} | {:.0} | {} |",
            r.name,
            r.stored as f64 / (1 << 20) as f64,
            raw as f64 / r.stored as f64,
            base.map_or("-".into(), |b| format!(
                "{:+.1} %",
                (r.stored as f64 - b as f64) / b as f64 * 100.0
            )),
            r.compress_mb_s,
            r.decompress_mb_s,
            r.train_ms.map_or("-".into(), |t| format!("{t:.0}"))
        );
    }
    Ok(())
}
