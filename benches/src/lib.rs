//! Shared helpers of blockvault's benchmarks: deterministic, "realistic" test data.
//!
//! Block volumes hold a mix of executables and libraries, text (logs, configs, source), data
//! that is already compressed or encrypted (media, archives) and long runs of zeros (unallocated
//! space). [`MixedGen`] produces such a mix from a seed: binaries are real files from the host
//! (`/usr/lib/x86_64-linux-gnu` and friends) when it has them and synthesized otherwise, text is
//! generated log lines, random data stands in for compressed content.
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Where real binaries are read from, in order.
pub const BINARY_DIRS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/bin",
    "/usr/lib",
    "/usr/libexec",
];

/// Reads up to `max` bytes of real binaries from `/usr/lib/x86_64-linux-gnu` (regular files only,
/// in name order, at most 1 MiB from each so the corpus spans many files). Empty when the
/// directory is missing or empty; callers then synthesize binary-like data.
pub fn binary_corpus(max: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(max);
    let Ok(rd) = std::fs::read_dir(BINARY_DIRS[0]) else {
        return out;
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        if out.len() >= max {
            break;
        }
        let Ok(file) = File::open(&f) else { continue };
        let want = (max - out.len()).min(1 << 20) as u64;
        let _ = file.take(want).read_to_end(&mut out);
    }
    out.truncate(max);
    out
}

/// A stream of binary-looking bytes.
pub enum BinarySource {
    /// Cycles through an in-memory corpus, starting each segment at a random offset.
    Corpus(Vec<u8>),
    /// Reads real files one after another (each used once, then the walk wraps around).
    Files {
        files: Vec<PathBuf>,
        next: usize,
        cur: Option<File>,
    },
    /// No real binaries: synthesized records of small integers and pointer-like values.
    Synthetic,
}

impl BinarySource {
    /// A corpus of up to `max` bytes of real binaries, or [`BinarySource::Synthetic`].
    pub fn corpus(max: usize) -> Self {
        let c = binary_corpus(max);
        if c.is_empty() {
            BinarySource::Synthetic
        } else {
            BinarySource::Corpus(c)
        }
    }

    /// Real files under [`BINARY_DIRS`] (regular files of at least 4 KiB, not following symlinks,
    /// in a stable order) totalling at least `want` bytes if the host has that many, or
    /// [`BinarySource::Synthetic`] when there are none.
    pub fn files(want: u64) -> Self {
        let mut files = Vec::new();
        let mut total = 0u64;
        for d in BINARY_DIRS {
            walk(Path::new(d), &mut files, &mut total, want);
            if total >= want {
                break;
            }
        }
        if files.is_empty() {
            BinarySource::Synthetic
        } else {
            BinarySource::Files {
                files,
                next: 0,
                cur: None,
            }
        }
    }

    /// Appends exactly `n` bytes to `out`.
    fn fill(&mut self, rng: &mut StdRng, out: &mut Vec<u8>, n: usize) {
        let target = out.len() + n;
        match self {
            BinarySource::Corpus(c) => {
                let mut pos = rng.gen_range(0..c.len());
                while out.len() < target {
                    let take = (target - out.len()).min(c.len() - pos);
                    out.extend_from_slice(&c[pos..pos + take]);
                    pos = 0;
                }
            }
            BinarySource::Files { files, next, cur } => {
                let mut failures = 0;
                while out.len() < target {
                    if cur.is_none() {
                        *cur = File::open(&files[*next % files.len()]).ok();
                        *next += 1;
                    }
                    let Some(f) = cur.as_mut() else {
                        failures += 1;
                        if failures > files.len() {
                            // Nothing readable after all: fall back to synthetic data.
                            synthetic_binary(rng, out, target - out.len());
                        }
                        continue;
                    };
                    let have = out.len();
                    let want = (target - have) as u64;
                    match f.take(want).read_to_end(out) {
                        Ok(0) | Err(_) => {
                            out.truncate(have);
                            *cur = None;
                            failures += 1;
                            if failures > files.len() {
                                synthetic_binary(rng, out, target - out.len());
                            }
                        }
                        Ok(_) => failures = 0,
                    }
                }
            }
            BinarySource::Synthetic => synthetic_binary(rng, out, n),
        }
    }
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, total: &mut u64, want: u64) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if *total >= want {
            return;
        }
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            walk(&e.path(), files, total, want);
        } else if t.is_file() {
            let len = e.metadata().map_or(0, |m| m.len());
            if len >= 4096 {
                *total += len;
                files.push(e.path());
            }
        }
    }
}

/// Binary-looking data without real binaries: 16-byte records of a counter, a small integer and
/// a pointer-like value, interleaved with short random runs (compresses roughly like code).
fn synthetic_binary(rng: &mut StdRng, out: &mut Vec<u8>, n: usize) {
    let target = out.len() + n;
    let mut counter: u32 = rng.gen();
    while out.len() < target {
        if rng.gen_ratio(1, 8) {
            let k = rng.gen_range(4..64);
            let mut b = [0u8; 64];
            rng.fill_bytes(&mut b[..k]);
            out.extend_from_slice(&b[..k]);
        } else {
            counter = counter.wrapping_add(rng.gen_range(1..16));
            out.extend_from_slice(&counter.to_le_bytes());
            out.extend_from_slice(&rng.gen_range(0u32..4096).to_le_bytes());
            let ptr = 0x5555_5555_0000u64 + rng.gen_range(0u64..1 << 20) * 8;
            out.extend_from_slice(&ptr.to_le_bytes());
        }
    }
    out.truncate(target);
}

const WORDS: [&str; 48] = [
    "volume",
    "backup",
    "chunk",
    "restore",
    "request",
    "completed",
    "failed",
    "retrying",
    "connection",
    "established",
    "timeout",
    "user",
    "session",
    "opened",
    "closed",
    "for",
    "the",
    "of",
    "to",
    "in",
    "with",
    "from",
    "node",
    "disk",
    "write",
    "read",
    "cache",
    "miss",
    "hit",
    "queue",
    "depth",
    "latency",
    "ms",
    "bytes",
    "handler",
    "GET",
    "POST",
    "/api/v1/volumes",
    "200",
    "404",
    "500",
    "status",
    "worker",
    "started",
    "stopped",
    "config",
    "reload",
    "ok",
];
const LEVELS: [&str; 4] = ["INFO", "DEBUG", "WARN", "ERROR"];
const UNITS: [&str; 8] = [
    "nginx", "sshd", "systemd", "kernel", "postgres", "cron", "dockerd", "app",
];

/// Text-ish data: syslog-like lines of words, numbers and hex ids.
fn text(rng: &mut StdRng, out: &mut Vec<u8>, n: usize) {
    let target = out.len() + n;
    while out.len() < target {
        let line = format!(
            "2026-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {} {}[{}]: ",
            rng.gen_range(1..13),
            rng.gen_range(1..29),
            rng.gen_range(0..24),
            rng.gen_range(0..60),
            rng.gen_range(0..60),
            rng.gen_range(0..1000),
            LEVELS[rng.gen_range(0..LEVELS.len())],
            UNITS[rng.gen_range(0..UNITS.len())],
            rng.gen_range(100..40000),
        );
        out.extend_from_slice(line.as_bytes());
        for i in 0..rng.gen_range(4..14) {
            if i > 0 {
                out.push(b' ');
            }
            match rng.gen_range(0..10) {
                0 => out.extend_from_slice(format!("id={:016x}", rng.gen::<u64>()).as_bytes()),
                1 => out.extend_from_slice(rng.gen_range(0..100_000).to_string().as_bytes()),
                _ => out.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes()),
            }
        }
        out.push(b'\n');
    }
    out.truncate(target);
}

/// Generates mixed data segment by segment.
pub struct MixedGen {
    rng: StdRng,
    bins: BinarySource,
    seg_min: usize,
    seg_max: usize,
}

impl MixedGen {
    /// A generator with segments of `seg_min..=seg_max` bytes (rounded to 4 KiB when both are at
    /// least 4 KiB, like file-system blocks). Mix by bytes: 35% binaries, 20% text, 20% random,
    /// 25% zeros.
    pub fn new(seed: u64, bins: BinarySource, seg_min: usize, seg_max: usize) -> Self {
        assert!(0 < seg_min && seg_min <= seg_max);
        MixedGen {
            rng: StdRng::seed_from_u64(seed),
            bins,
            seg_min,
            seg_max,
        }
    }

    /// Appends one segment to `out`, no longer than `limit` bytes.
    fn segment(&mut self, out: &mut Vec<u8>, limit: usize) {
        let mut n = self.rng.gen_range(self.seg_min..=self.seg_max);
        if self.seg_min >= 4096 {
            n = (n / 4096).max(1) * 4096;
        }
        let n = n.min(limit);
        match self.rng.gen_range(0..100) {
            0..=34 => self.bins.fill(&mut self.rng, out, n),
            35..=54 => text(&mut self.rng, out, n),
            55..=74 => {
                let at = out.len();
                out.resize(at + n, 0);
                self.rng.fill_bytes(&mut out[at..]);
            }
            _ => out.resize(out.len() + n, 0),
        }
    }

    /// `len` bytes of mixed data.
    pub fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + self.seg_max);
        while out.len() < len {
            let limit = len - out.len();
            self.segment(&mut out, limit);
        }
        out
    }

    /// Writes `len` bytes of mixed data to `w`, holding at most one segment in memory.
    pub fn write_to(&mut self, w: &mut impl Write, len: u64) -> io::Result<()> {
        let mut done = 0u64;
        let mut seg = Vec::with_capacity(self.seg_max);
        while done < len {
            seg.clear();
            let limit = usize::try_from(len - done).unwrap_or(usize::MAX);
            self.segment(&mut seg, limit);
            w.write_all(&seg)?;
            done += seg.len() as u64;
        }
        Ok(())
    }
}

/// `len` bytes of mixed data built from [`binary_corpus`] (~8 MiB of real binaries, or synthetic
/// ones) with segments of 4 KiB to 64 KiB, so that every 64 KiB chunk is itself a mix.
pub fn mixed_buffer(len: usize, seed: u64) -> Vec<u8> {
    MixedGen::new(seed, BinarySource::corpus(8 << 20), 4096, 64 << 10).buffer(len)
}

/// Writes a mixed image of `len` bytes to `path` (segments of 16 KiB to 2 MiB; binaries are real
/// files, each used once while the host has enough of them, so dedup is not inflated).
pub fn write_mixed_image(path: &Path, len: u64, seed: u64) -> io::Result<()> {
    let bins = BinarySource::files(len / 2);
    let mut g = MixedGen::new(seed, bins, 16 << 10, 2 << 20);
    let mut w = BufWriter::with_capacity(8 << 20, File::create(path)?);
    g.write_to(&mut w, len)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Copies `src` to `dst`, then overwrites about `change_frac` of it in place with new mixed data
/// in scattered 4 KiB-aligned regions of 16 KiB to 1 MiB: the next day's version of a volume.
/// Returns the number of bytes overwritten.
pub fn write_modified_copy(src: &Path, dst: &Path, change_frac: f64, seed: u64) -> io::Result<u64> {
    std::fs::copy(src, dst)?;
    let len = std::fs::metadata(dst)?.len();
    let mut f = std::fs::OpenOptions::new().write(true).open(dst)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut g = MixedGen::new(
        seed ^ 0x9e37_79b9,
        BinarySource::corpus(8 << 20),
        4096,
        64 << 10,
    );
    let goal = (len as f64 * change_frac.clamp(0.0, 1.0)) as u64;
    let mut changed = 0u64;
    while changed < goal && len >= 4096 {
        let n = rng.gen_range(16u64 << 10..=1 << 20).min(goal - changed);
        let n = (n.div_ceil(4096) * 4096).min(len / 4096 * 4096);
        let at = rng.gen_range(0..=(len - n) / 4096) * 4096;
        let data = g.buffer(n as usize);
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&data)?;
        changed += n;
    }
    f.sync_all()?;
    Ok(changed)
}

/// Reads until `buf` is full or EOF; returns the bytes read.
pub fn read_full(f: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The median of `v` (for an even count, the upper of the two middle values).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_data_is_deterministic_and_exact() {
        let a = MixedGen::new(5, BinarySource::Synthetic, 4096, 64 << 10).buffer(1 << 20);
        let b = MixedGen::new(5, BinarySource::Synthetic, 4096, 64 << 10).buffer(1 << 20);
        assert_eq!(a.len(), 1 << 20);
        assert_eq!(a, b);
        assert!(a.contains(&0) && a.iter().any(|&x| x != 0));
    }

    #[test]
    fn modified_copy_changes_about_the_requested_fraction() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
        let mut f = File::create(&src).unwrap();
        MixedGen::new(1, BinarySource::Synthetic, 4096, 64 << 10)
            .write_to(&mut f, 8 << 20)
            .unwrap();
        drop(f);
        let changed = write_modified_copy(&src, &dst, 0.05, 2).unwrap();
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert_eq!(a.len(), b.len());
        let differing = a
            .chunks(4096)
            .zip(b.chunks(4096))
            .filter(|(x, y)| x != y)
            .count();
        let goal = (8u64 << 20) / 20;
        assert!((goal..goal + 4096).contains(&changed), "{changed}");
        assert!(differing > 0 && differing as u64 * 4096 <= changed);
    }
}
