//! A small, dependency-light mutation fuzzer shared by the `fuzz` integration tests of
//! blockvault-core and blockvault-daemon (issue 9).
//!
//! Each target starts from a checked-in corpus directory (`fuzz/corpus/<target>/`), mutates
//! (bit flips, byte insert/delete, truncation, splicing, interesting integers and LEB128 varints,
//! dictionary tokens, and for text targets token- and line-level edits), and runs the target's
//! checks under `catch_unwind`. A panic anywhere in a check is a crash: its input is minimised,
//! saved under `$TMPDIR/blockvault-fuzz/<target>/crashes/` and printed hex-encoded, and the test
//! fails at the end of the run. Coverage feedback is coarse but effective for decoders whose
//! errors say which check failed: every input that produces a new *outcome signature* (the
//! normalised error message, or a summary of the decoded value) joins the in-memory corpus.
//!
//! Environment:
//! - `BV_FUZZ_SECS` / `BV_FUZZ_ITERS`: bound of each target (default 3 s or 1 000 000 inputs,
//!   whichever comes first; setting only one of them lifts the other).
//! - `BV_FUZZ_SEED`: base seed (printed by every run) to reproduce a run.
//! - `BV_FUZZ_INPUT`: a file to run instead of fuzzing (use with a test-name filter).
//! - `BV_FUZZ_CORPUS`: another corpus root (default: `fuzz/corpus` of the repository).
//! - `BV_FUZZ_SAVE_QUEUE=1`: also save inputs that found a new outcome (for curating the corpus).
//! - `BV_FUZZ_REPORT`: a file to append one summary line per target to.
//! - `BV_FUZZ_PRINT_OUTCOMES=1`: print every new outcome signature (to tune the signatures).
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a check of one input may record besides its outcome.
#[derive(Default)]
pub struct Notes {
    soft: Vec<&'static str>,
}

impl Notes {
    /// Records a property that does not hold but is not a crash (reported, does not fail).
    pub fn soft(&mut self, what: &'static str) {
        self.soft.push(what);
    }
}

/// How inputs of a target are shaped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Binary formats.
    Binary,
    /// Text formats (JSON, TOML, base64...): token- and line-level mutations too.
    Text,
}

/// A custom mutation step: gets the fuzzer's generic mutator to reuse on inner layers.
pub type CustomMutator = dyn Fn(&Mutator, &[u8], &mut StdRng) -> Vec<u8>;

/// The checks of a target: returns the outcome signature, panics on a violated property.
pub type Check<'a> = dyn Fn(&[u8], &mut Notes) -> String + 'a;

/// One fuzz target.
pub struct Target<'a> {
    pub name: &'static str,
    pub kind: Kind,
    /// Longest input tried.
    pub max_len: usize,
    /// Tokens worth inserting (magic bytes, keywords...). Text targets add tokens of the corpus.
    pub dict: Vec<Vec<u8>>,
    /// Integers worth writing (besides the usual boundaries).
    pub ints: Vec<u64>,
    /// Also write integers as LEB128 varints (formats that use them).
    pub leb128: bool,
    /// Replaces the generic mutation for some iterations (structure-aware layers).
    pub custom: Option<Box<CustomMutator>>,
    /// Share of iterations that use `custom` (0..=100).
    pub custom_percent: u32,
    /// Runs the checks; returns the outcome signature. Panics on a violated property.
    pub check: Box<Check<'a>>,
}

impl<'a> Target<'a> {
    pub fn new(
        name: &'static str,
        kind: Kind,
        check: impl Fn(&[u8], &mut Notes) -> String + 'a,
    ) -> Self {
        Target {
            name,
            kind,
            max_len: 1 << 16,
            dict: Vec::new(),
            ints: Vec::new(),
            leb128: false,
            custom: None,
            custom_percent: 0,
            check: Box::new(check),
        }
    }
}

/// The summary of one target's run.
#[derive(Debug)]
pub struct Summary {
    pub target: &'static str,
    pub seed: u64,
    pub execs: u64,
    pub secs: f64,
    pub seeds: usize,
    pub corpus: usize,
    /// Distinct outcome classes (signatures by their first characters).
    pub outcomes: usize,
    pub crashes: Vec<Crash>,
    pub slow: Option<(Duration, Vec<u8>)>,
    pub notes: Vec<(&'static str, u64, Vec<u8>)>,
}

/// One distinct panic.
#[derive(Debug, Clone)]
pub struct Crash {
    pub message: String,
    pub input: Vec<u8>,
    pub saved: PathBuf,
    pub hits: u64,
}

// ------------------------------------------------------------------------------ panic capture

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static CAPTURED: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                    (*s).to_string()
                } else if let Some(s) = info.payload().downcast_ref::<String>() {
                    s.clone()
                } else {
                    "<non-string panic payload>".to_string()
                };
                let at = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_else(|| "<unknown location>".into());
                CAPTURED.with(|c| *c.borrow_mut() = Some(format!("{msg} (at {at})")));
            } else {
                default(info);
            }
        }));
    });
}

/// Runs `f`, returning the panic message (with its location) if it panicked.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let outer = CAPTURING.with(|c| c.replace(true));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    CAPTURING.with(|c| c.set(outer));
    r.map_err(|_| {
        CAPTURED
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| "<panic without message>".into())
    })
}

// --------------------------------------------------------------------------------- utilities

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// FNV-1a, for file names and per-target seeds.
pub fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Normalises an error message into an outcome signature: numbers, hex ids and quoted input
/// removed, so that "at line 3 column 7", "store 6a1d..." or "unknown field `x`" do not make
/// every input look new.
pub fn signature(prefix: &str, msg: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 64);
    out.push_str(prefix);
    out.push(':');
    let mut quote: Option<char> = None;
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        let hexish = word.len() >= 8 && word.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if hexish || word.chars().all(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.extend(word.chars().filter(|c| !c.is_ascii_digit()));
        }
        word.clear();
    };
    for line in msg.lines() {
        // TOML and JSON errors quote the offending line as "3 | text" / "  |   ^".
        let t = line.trim_start();
        if t.starts_with('|')
            || t.split_once(" |")
                .is_some_and(|(n, _)| n.trim().parse::<u64>().is_ok())
        {
            continue;
        }
        // Quoted input may itself hold quotes: before ", expected" (serde's list of what was
        // expected, which is not input), drop everything between the first and the last quote.
        let (head, tail) = match line.find(", expected") {
            Some(i) => line.split_at(i),
            None => (line, ""),
        };
        let collapse = |s: &str, q: char| match (s.find(q), s.rfind(q)) {
            (Some(a), Some(b)) if b > a => format!("{}{q}{}", &s[..=a], &s[b + 1..]),
            _ => s.to_string(),
        };
        let line = collapse(&collapse(head, '"'), '`') + tail;
        for c in line.chars() {
            match quote {
                Some(q) if c == q => {
                    quote = None;
                    out.push(c);
                }
                Some(_) => {}
                None if c == '`' => {
                    flush(&mut word, &mut out);
                    quote = Some(c);
                    out.push(c);
                }
                None if c.is_ascii_alphanumeric() || c == '-' => word.push(c),
                None => {
                    flush(&mut word, &mut out);
                    out.push(c);
                }
            }
        }
        flush(&mut word, &mut out);
        out.push(' ');
        if out.len() > 240 {
            break;
        }
    }
    let mut cut = out.len().min(240);
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    out
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

/// The repository's corpus root (or `BV_FUZZ_CORPUS`).
pub fn corpus_root(manifest_dir: &str) -> PathBuf {
    std::env::var_os("BV_FUZZ_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(manifest_dir).join("../../fuzz/corpus"))
}

/// Reads every file of a corpus directory, sorted by name.
pub fn load_corpus(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let data = std::fs::read(e.path()).expect("read a corpus file");
                (name, data)
            })
            .collect(),
        Err(e) => panic!("corpus directory {}: {e}", dir.display()),
    };
    v.sort();
    v
}

/// Writes a corpus file (used by the corpus generators).
pub fn write_seed(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("create the corpus directory");
    std::fs::write(dir.join(name), data).expect("write a corpus file");
}

/// The directory of a target's crash files and queue.
pub fn work_dir(target: &str) -> PathBuf {
    std::env::temp_dir().join("blockvault-fuzz").join(target)
}

// ---------------------------------------------------------------------------------- mutation

const INTS: [u64; 22] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
    i32::MIN as u32 as u64,
    (-1i64) as u64,
    0xdead_beef,
];

const TEXT_INTS: [&str; 24] = [
    "0",
    "-0",
    "1",
    "-1",
    "255",
    "256",
    "65535",
    "2147483647",
    "2147483648",
    "-2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e309",
    "-1e400",
    "0.5",
    "1.0",
    "340282366920938463463374607431768211456",
];

const TEXT_TOKENS: [&str; 40] = [
    "\"",
    "'",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\udfff",
    "\\uffff",
    "\u{0}",
    "\u{feff}",
    "\u{10ffff}",
    "é",
    "\r\n",
    "\n",
    "\t",
    " ",
    "{",
    "}",
    "[",
    "]",
    "[[",
    "]]",
    ":",
    ",",
    "=",
    ".",
    "#",
    "null",
    "true",
    "false",
    "nan",
    "inf",
    "-inf",
    "\"\"\"",
    "'''",
    "0x",
    "0o",
    "0b",
    "_",
    "+",
    "\"\"",
];

/// The generic mutator of a target.
pub struct Mutator {
    kind: Kind,
    max_len: usize,
    dict: Vec<Vec<u8>>,
    ints: Vec<u64>,
    leb128: bool,
}

fn leb(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// Splits text into tokens: runs of word characters, quoted strings, whitespace, single
/// punctuation characters.
pub fn tokens(b: &[u8]) -> Vec<&[u8]> {
    let word = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'+' | b':');
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if word(c) || c >= 0x80 {
            while i < b.len() && (word(b[i]) || b[i] >= 0x80) {
                i += 1;
            }
        } else if c == b'"' || c == b'\'' {
            i += 1;
            while i < b.len() && b[i] != c && b[i] != b'\n' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
        } else if c.is_ascii_whitespace() {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
        } else {
            i += 1;
        }
        out.push(&b[start..i]);
    }
    out
}

impl Mutator {
    fn interesting(&self, rng: &mut StdRng) -> u64 {
        if !self.ints.is_empty() && rng.gen_bool(0.4) {
            let v = self.ints[rng.gen_range(0..self.ints.len())];
            match rng.gen_range(0..4) {
                0 => v.wrapping_add(1),
                1 => v.wrapping_sub(1),
                _ => v,
            }
        } else {
            INTS[rng.gen_range(0..INTS.len())]
        }
    }

    fn int_bytes(&self, rng: &mut StdRng) -> Vec<u8> {
        let v = self.interesting(rng);
        match rng.gen_range(0..if self.leb128 { 8 } else { 6 }) {
            0 => vec![v as u8],
            1 => (v as u16).to_le_bytes().to_vec(),
            2 => (v as u32).to_le_bytes().to_vec(),
            3 => v.to_le_bytes().to_vec(),
            4 => (v as u32).to_be_bytes().to_vec(),
            5 => v.to_be_bytes().to_vec(),
            6 => leb(v),
            _ => {
                // An overlong varint: a continuation byte too many, or 10+ bytes.
                let mut l = leb(v);
                let last = l.len() - 1;
                l[last] |= 0x80;
                l.push(0);
                if rng.gen_bool(0.3) {
                    l.splice(0..0, [0x80u8; 9]);
                }
                l
            }
        }
    }

    fn pick_token(&self, rng: &mut StdRng) -> Vec<u8> {
        if !self.dict.is_empty() && rng.gen_bool(0.7) {
            self.dict[rng.gen_range(0..self.dict.len())].clone()
        } else if self.kind == Kind::Text {
            if rng.gen_bool(0.5) {
                TEXT_INTS[rng.gen_range(0..TEXT_INTS.len())]
                    .as_bytes()
                    .to_vec()
            } else {
                TEXT_TOKENS[rng.gen_range(0..TEXT_TOKENS.len())]
                    .as_bytes()
                    .to_vec()
            }
        } else {
            self.int_bytes(rng)
        }
    }

    fn pos(rng: &mut StdRng, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            rng.gen_range(0..=len)
        }
    }

    /// One byte-level mutation.
    fn byte_step(&self, d: &mut Vec<u8>, other: &[u8], rng: &mut StdRng) {
        let n = d.len();
        match rng.gen_range(0..14) {
            0 if n > 0 => {
                let p = rng.gen_range(0..n);
                d[p] ^= 1 << rng.gen_range(0..8);
            }
            1 if n > 0 => {
                let p = rng.gen_range(0..n);
                d[p] = rng.gen();
            }
            2 => {
                let p = Self::pos(rng, n);
                let b = if rng.gen_bool(0.5) {
                    rng.gen()
                } else {
                    [0u8, 0x7f, 0x80, 0xff, 1, 2][rng.gen_range(0..6)]
                };
                d.insert(p, b);
            }
            3 if n > 0 => {
                let p = rng.gen_range(0..n);
                let most = if rng.gen_bool(0.8) { 4 } else { n };
                let l = rng.gen_range(1..=(n - p).min(most));
                d.drain(p..p + l);
            }
            4 if n > 0 => d.truncate(rng.gen_range(0..n)),
            5 if n > 0 => {
                // Duplicate a range.
                let p = rng.gen_range(0..n);
                let l = rng.gen_range(1..=(n - p).min(64));
                let chunk = d[p..p + l].to_vec();
                let at = Self::pos(rng, n);
                d.splice(at..at, chunk);
            }
            6 if !other.is_empty() => {
                // Splice: our prefix, the other input's suffix.
                let a = Self::pos(rng, n);
                let b = rng.gen_range(0..other.len());
                d.truncate(a);
                d.extend_from_slice(&other[b..]);
            }
            7 if !other.is_empty() => {
                // Insert a piece of the other input.
                let b = rng.gen_range(0..other.len());
                let l = rng.gen_range(1..=(other.len() - b).min(64));
                let at = Self::pos(rng, n);
                d.splice(at..at, other[b..b + l].iter().copied());
            }
            8 => {
                // Overwrite with an interesting integer.
                let v = self.int_bytes(rng);
                let at = Self::pos(rng, n.saturating_sub(v.len()));
                let end = (at + v.len()).min(n);
                d.splice(at..end, v);
            }
            9 => {
                let v = self.int_bytes(rng);
                let at = Self::pos(rng, n);
                d.splice(at..at, v);
            }
            10 => {
                let t = self.pick_token(rng);
                let at = Self::pos(rng, n);
                if rng.gen_bool(0.5) || n == 0 {
                    d.splice(at..at, t);
                } else {
                    let end = (at + t.len()).min(n);
                    d.splice(at..end, t);
                }
            }
            11 if n > 0 => {
                // Small arithmetic on a byte.
                let p = rng.gen_range(0..n);
                let delta: i8 = rng.gen_range(-16..=16);
                d[p] = d[p].wrapping_add(delta as u8);
            }
            12 if n >= 4 => {
                // Small arithmetic on a little-endian u32.
                let p = rng.gen_range(0..=n - 4);
                let v = u32::from_le_bytes(d[p..p + 4].try_into().expect("4 bytes"));
                let delta: i32 = rng.gen_range(-64..=64);
                d[p..p + 4].copy_from_slice(&v.wrapping_add(delta as u32).to_le_bytes());
            }
            13 if n > 1 => {
                // Swap two bytes.
                let a = rng.gen_range(0..n);
                let b = rng.gen_range(0..n);
                d.swap(a, b);
            }
            _ => {
                let b = rng.gen();
                d.push(b);
            }
        }
    }

    /// One token- or line-level mutation of text.
    fn text_step(&self, d: &mut Vec<u8>, other: &[u8], rng: &mut StdRng) {
        if rng.gen_bool(0.25) {
            return self.line_step(d, other, rng);
        }
        let toks: Vec<Vec<u8>> = tokens(d).into_iter().map(<[u8]>::to_vec).collect();
        if toks.is_empty() {
            d.extend(self.pick_token(rng));
            return;
        }
        let mut toks = toks;
        let n = toks.len();
        let i = rng.gen_range(0..n);
        match rng.gen_range(0..8) {
            0 => {
                toks.remove(i);
            }
            1 => {
                let t = toks[i].clone();
                toks.insert(i, t);
            }
            2 => {
                let j = rng.gen_range(0..n);
                toks.swap(i, j);
            }
            3 => toks[i] = self.pick_token(rng),
            4 => toks.insert(i, self.pick_token(rng)),
            5 => {
                // A token of the other input.
                let o = tokens(other);
                if !o.is_empty() {
                    toks[i] = o[rng.gen_range(0..o.len())].to_vec();
                }
            }
            6 => {
                // A number becomes an interesting number; a string an interesting string.
                let t = &toks[i];
                if t.first().is_some_and(|c| c.is_ascii_digit() || *c == b'-') {
                    toks[i] = TEXT_INTS[rng.gen_range(0..TEXT_INTS.len())]
                        .as_bytes()
                        .to_vec();
                } else if t.first() == Some(&b'"') {
                    let inner = self.pick_token(rng);
                    let mut s = vec![b'"'];
                    s.extend_from_slice(&inner);
                    if rng.gen_bool(0.3) {
                        s.extend(std::iter::repeat_n(b'x', rng.gen_range(1..300)));
                    }
                    s.push(b'"');
                    toks[i] = s;
                } else {
                    toks[i] = self.pick_token(rng);
                }
            }
            _ => {
                // Repeat a token many times (deep nesting, long keys).
                let t = toks[i].clone();
                let most = if rng.gen_bool(0.1) { 2000 } else { 16 };
                let times = rng.gen_range(2..most);
                for _ in 0..times {
                    toks.insert(i, t.clone());
                }
            }
        }
        *d = toks.concat();
    }

    fn line_step(&self, d: &mut Vec<u8>, other: &[u8], rng: &mut StdRng) {
        let mut lines: Vec<Vec<u8>> = d.split(|c| *c == b'\n').map(<[u8]>::to_vec).collect();
        let n = lines.len();
        let i = rng.gen_range(0..n);
        match rng.gen_range(0..4) {
            0 if n > 1 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                let j = rng.gen_range(0..n);
                lines.swap(i, j);
            }
            _ => {
                let o: Vec<&[u8]> = other.split(|c| *c == b'\n').collect();
                lines.insert(i, o[rng.gen_range(0..o.len())].to_vec());
            }
        }
        *d = lines.join(&b'\n');
    }

    /// A havoc stack of 1 to 16 mutations of `input`.
    pub fn mutate(&self, input: &[u8], other: &[u8], rng: &mut StdRng) -> Vec<u8> {
        let mut d = input.to_vec();
        let steps = 1usize << rng.gen_range(0..5);
        for _ in 0..steps {
            if self.kind == Kind::Text && rng.gen_bool(0.7) {
                self.text_step(&mut d, other, rng);
            } else {
                self.byte_step(&mut d, other, rng);
            }
            if d.len() > self.max_len {
                d.truncate(self.max_len);
            }
        }
        d
    }
}

// ---------------------------------------------------------------------------------- the loop

/// Bounds of a run, from the environment.
pub struct Bounds {
    pub secs: Option<f64>,
    pub iters: Option<u64>,
}

impl Bounds {
    pub fn from_env() -> Self {
        let secs = std::env::var("BV_FUZZ_SECS")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok());
        let iters = env_u64("BV_FUZZ_ITERS");
        match (secs, iters) {
            (None, None) => Bounds {
                secs: Some(3.0),
                iters: Some(1_000_000),
            },
            (s, i) => Bounds { secs: s, iters: i },
        }
    }
}

/// The base seed (`BV_FUZZ_SEED`, else from the clock).
pub fn base_seed() -> u64 {
    env_u64("BV_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    })
}

fn run_one(t: &Target<'_>, input: &[u8]) -> (Result<String, String>, Notes, Duration) {
    let mut notes = Notes::default();
    let t0 = Instant::now();
    let r = catch(|| (t.check)(input, &mut notes));
    (r, notes, t0.elapsed())
}

fn crash_key(msg: &str) -> String {
    // Same place, same kind of message: one crash. The location is in "(at file:line:col)".
    match msg.rfind("(at ") {
        Some(i) => {
            let head: String = msg[..i]
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .take(80)
                .collect();
            format!("{}{}", head, &msg[i..])
        }
        None => msg
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(120)
            .collect(),
    }
}

/// Shrinks a crashing input while it still panics the same way.
fn minimise(t: &Target<'_>, input: &[u8], key: &str) -> Vec<u8> {
    let mut best = input.to_vec();
    let mut budget = 4000u32;
    let still = |c: &[u8]| -> bool {
        let (r, _, _) = run_one(t, c);
        matches!(r, Err(m) if crash_key(&m) == key)
    };
    let mut chunk = best.len().next_power_of_two().max(1);
    while chunk >= 1 && budget > 0 {
        let mut i = 0;
        while i < best.len() && budget > 0 {
            let end = (i + chunk).min(best.len());
            let mut cand = best.clone();
            cand.drain(i..end);
            budget -= 1;
            if still(&cand) {
                best = cand;
            } else {
                i += chunk;
            }
        }
        chunk /= 2;
    }
    best
}

fn save(dir: &Path, sub: &str, data: &[u8]) -> PathBuf {
    let d = dir.join(sub);
    let _ = std::fs::create_dir_all(&d);
    let p = d.join(format!("{:016x}", fnv(data)));
    let _ = std::fs::write(&p, data);
    p
}

fn show(data: &[u8]) -> String {
    if data.len() > 4096 {
        format!("{}... ({} bytes)", hex(&data[..4096]), data.len())
    } else {
        hex(data)
    }
}

/// Fuzzes `t` from `seeds` within the environment's bounds; panics at the end if it crashed.
pub fn fuzz(t: Target<'_>, seeds: Vec<(String, Vec<u8>)>) -> Summary {
    fuzz_with(t, seeds, Bounds::from_env())
}

/// [`fuzz`] within explicit bounds.
pub fn fuzz_with(t: Target<'_>, seeds: Vec<(String, Vec<u8>)>, bounds: Bounds) -> Summary {
    let base = base_seed();
    let seed = base ^ fnv(t.name.as_bytes());
    let dir = work_dir(t.name);
    let mut mutator = Mutator {
        kind: t.kind,
        max_len: t.max_len,
        dict: t.dict.clone(),
        ints: t.ints.clone(),
        leb128: t.leb128,
    };
    if t.kind == Kind::Text {
        // Every word and string of the seeds is a dictionary token.
        let mut seen = HashSet::new();
        for (_, s) in &seeds {
            for tok in tokens(s) {
                if tok.len() > 1 && tok.len() < 64 && seen.insert(tok.to_vec()) {
                    mutator.dict.push(tok.to_vec());
                }
            }
        }
    }
    let save_queue = std::env::var_os("BV_FUZZ_SAVE_QUEUE").is_some();
    let print_outcomes = std::env::var_os("BV_FUZZ_PRINT_OUTCOMES").is_some();
    println!(
        "fuzz {}: seed {:#x} (BV_FUZZ_SEED={base:#x}), bounds {:?} s / {:?} inputs, {} seeds",
        t.name,
        seed,
        bounds.secs,
        bounds.iters,
        seeds.len()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut outcomes: HashSet<String> = HashSet::new();
    // Outcomes by the first characters of each `|`-separated part: a class may add only a few
    // inputs to the corpus, so that messages quoting input in ways the signature misses cannot
    // flood it.
    let mut classes: HashMap<String, u32> = HashMap::new();
    let mut crashes: HashMap<String, Crash> = HashMap::new();
    let mut notes: HashMap<&'static str, (u64, Vec<u8>)> = HashMap::new();
    let mut slow: Option<(Duration, Vec<u8>)> = None;
    let mut execs = 0u64;
    let start = Instant::now();

    let mut record = |input: &[u8],
                      r: Result<String, String>,
                      n: Notes,
                      took: Duration,
                      corpus: &mut Vec<Vec<u8>>,
                      is_seed: bool| {
        for s in n.soft {
            let e = notes.entry(s).or_insert_with(|| (0, input.to_vec()));
            e.0 += 1;
        }
        if slow.as_ref().is_none_or(|(d, _)| took > *d) {
            slow = Some((took, input.to_vec()));
        }
        match r {
            Ok(sig) => {
                if print_outcomes && !outcomes.contains(&sig) {
                    println!("fuzz {}: new outcome {sig}", t.name);
                }
                let class: Vec<String> = sig
                    .split('|')
                    .map(|part| part.chars().take(56).collect())
                    .collect();
                let class = class.join("|");
                let n = classes.entry(class).or_insert(0);
                let new = outcomes.insert(sig);
                if (new && *n < 8) || is_seed {
                    *n += 1;
                    if corpus.len() < 4096 {
                        corpus.push(input.to_vec());
                    }
                    if save_queue && !is_seed {
                        save(&dir, "queue", input);
                    }
                }
            }
            Err(msg) => {
                let key = crash_key(&msg);
                if let Some(c) = crashes.get_mut(&key) {
                    c.hits += 1;
                } else {
                    crashes.insert(
                        key,
                        Crash {
                            message: msg,
                            input: input.to_vec(),
                            saved: PathBuf::new(),
                            hits: 1,
                        },
                    );
                }
            }
        }
    };

    for (name, s) in &seeds {
        let (r, n, took) = run_one(&t, s);
        if let Err(m) = &r {
            println!("fuzz {}: seed {name} panics: {m}", t.name);
        }
        record(s, r, n, took, &mut corpus, true);
        execs += 1;
    }
    if let Some(path) = std::env::var_os("BV_FUZZ_INPUT") {
        let data = std::fs::read(&path).expect("read BV_FUZZ_INPUT");
        let (r, n, took) = run_one(&t, &data);
        println!(
            "fuzz {}: {} -> {:?} (notes {:?}, {took:?})",
            t.name,
            Path::new(&path).display(),
            r,
            n.soft
        );
        record(&data, r, n, took, &mut corpus, true);
        execs += 1;
    } else {
        if corpus.is_empty() {
            corpus.push(Vec::new());
        }
        loop {
            if bounds.iters.is_some_and(|n| execs >= n)
                || bounds
                    .secs
                    .is_some_and(|s| start.elapsed().as_secs_f64() >= s)
            {
                break;
            }
            let a = rng.gen_range(0..corpus.len());
            let b = rng.gen_range(0..corpus.len());
            let child = match &t.custom {
                Some(c) if rng.gen_range(0..100) < t.custom_percent => {
                    c(&mutator, &corpus[a], &mut rng)
                }
                _ => mutator.mutate(&corpus[a], &corpus[b], &mut rng),
            };
            let (r, n, took) = run_one(&t, &child);
            record(&child, r, n, took, &mut corpus, false);
            execs += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();

    // Minimise, save and show every distinct crash.
    let mut crash_list: Vec<Crash> = Vec::new();
    let mut keys: Vec<String> = crashes.keys().cloned().collect();
    keys.sort();
    for k in keys {
        let mut c = crashes.remove(&k).expect("key from the map");
        save(&dir, "crashes", &c.input);
        let small = minimise(&t, &c.input, &k);
        c.input = small;
        c.saved = save(&dir, "crashes", &c.input);
        crash_list.push(c);
    }
    let mut note_list: Vec<(&'static str, u64, Vec<u8>)> =
        notes.into_iter().map(|(k, (n, i))| (k, n, i)).collect();
    note_list.sort_by_key(|(k, _, _)| *k);

    let summary = Summary {
        target: t.name,
        seed,
        execs,
        secs,
        seeds: seeds.len(),
        corpus: corpus.len(),
        outcomes: classes.len(),
        crashes: crash_list,
        slow,
        notes: note_list,
    };
    let line = format!(
        "fuzz-summary target={} seed={:#x} execs={} secs={:.1} execs_per_sec={:.0} seeds={} corpus={} outcomes={} crashes={} slowest_ms={:.1} notes={}",
        summary.target,
        base,
        summary.execs,
        summary.secs,
        summary.execs as f64 / summary.secs.max(1e-9),
        summary.seeds,
        summary.corpus,
        summary.outcomes,
        summary.crashes.len(),
        summary.slow.as_ref().map_or(0.0, |(d, _)| d.as_secs_f64() * 1000.0),
        summary
            .notes
            .iter()
            .map(|(k, n, _)| format!("{k:?}x{n}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    println!("{line}");
    if let Some(p) = std::env::var_os("BV_FUZZ_REPORT") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    for (k, n, input) in &summary.notes {
        println!(
            "fuzz {}: note {k:?} ({n} inputs), first: {}",
            summary.target,
            show(input)
        );
    }
    if let Some((d, input)) = &summary.slow {
        if *d > Duration::from_millis(500) {
            let p = save(&dir, "slow", input);
            println!(
                "fuzz {}: slowest input took {d:?}, saved as {}",
                summary.target,
                p.display()
            );
        }
    }
    if !summary.crashes.is_empty() {
        let mut msg = format!(
            "fuzz {}: {} distinct crash(es) (BV_FUZZ_SEED={base:#x}):\n",
            summary.target,
            summary.crashes.len()
        );
        for c in &summary.crashes {
            msg.push_str(&format!(
                "  panic: {}\n  hits: {}\n  input ({} bytes, saved as {}): {}\n  reproduce: BV_FUZZ_INPUT={} cargo test --release --test fuzz {}\n",
                c.message,
                c.hits,
                c.input.len(),
                c.saved.display(),
                show(&c.input),
                c.saved.display(),
                summary.target,
            ));
        }
        println!("{msg}");
        panic!("{msg}");
    }
    summary
}

/// Outcome signature of a `Result` with a displayable error.
pub fn outcome<T, E: std::fmt::Display>(
    prefix: &str,
    r: &Result<T, E>,
    ok: impl Fn(&T) -> String,
) -> String {
    match r {
        Ok(v) => format!("{prefix}:ok:{}", ok(v)),
        Err(e) => signature(&format!("{prefix}:err"), &e.to_string()),
    }
}

/// Checks that every seed whose name starts with `ok-` passes `accept` (the corpus is kept in
/// step with the formats); with `strict` a failure panics, otherwise it is printed.
pub fn check_ok_seeds(
    target: &str,
    seeds: &[(String, Vec<u8>)],
    strict: bool,
    accept: impl Fn(&[u8]) -> Result<(), String>,
) {
    let mut bad = Vec::new();
    for (name, s) in seeds {
        if name.starts_with("ok-") {
            if let Err(e) = accept(s) {
                bad.push(format!("{name}: {e}"));
            }
        }
    }
    if !bad.is_empty() {
        let msg = format!(
            "fuzz {target}: seeds named ok-* no longer decode (regenerate with BV_FUZZ_WRITE_CORPUS=1 cargo test --release --test fuzz -- --ignored write_corpus):\n  {}",
            bad.join("\n  ")
        );
        if strict {
            panic!("{msg}");
        } else {
            println!("{msg}");
        }
    }
}

/// Hashes anything hashable (outcome summaries).
pub fn hash_of(v: &impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}
