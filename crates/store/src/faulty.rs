//! A [`PackStorage`] wrapper that injects faults: failed calls, short reads and slow calls, at
//! seeded random. Used by the conformance suite and by tests of what the store and the engine
//! do when their storage misbehaves.
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blockvault_core::PackId;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::pack::{Object, ObjectLock, PackSink, PackStorage, RetentionMode};

/// What to inject, each a probability per call.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// A call fails with an I/O error without reaching the inner storage (for a sink: its
    /// `write_all` or `finish` fails and the pack never becomes visible).
    pub error_rate: f64,
    /// A read returns fewer bytes than asked.
    pub short_read_rate: f64,
    /// Every call sleeps this long first.
    pub delay: Duration,
    /// Seed of the random choices.
    pub seed: u64,
}

/// Counts of what was injected.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub short_reads: AtomicU64,
}

/// Pack storage that misbehaves as [`Faults`] says.
pub struct FaultyPacks {
    inner: Arc<dyn PackStorage>,
    faults: Faults,
    rng: Arc<Mutex<StdRng>>,
    counts: Arc<FaultCounts>,
}

impl FaultyPacks {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn PackStorage>, faults: Faults) -> FaultyPacks {
        FaultyPacks {
            inner,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(faults.seed))),
            faults,
            counts: Arc::default(),
        }
    }

    /// What was injected so far.
    pub fn counts(&self) -> &FaultCounts {
        &self.counts
    }

    fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().gen::<f64>() < p
    }

    /// Common start of every call: delay, count, maybe fail.
    fn enter(&self, what: &str) -> io::Result<()> {
        enter(&self.faults, &self.rng, &self.counts, what)
    }

    fn shorten(&self, mut v: Vec<u8>) -> Vec<u8> {
        if !v.is_empty() && self.roll(self.faults.short_read_rate) {
            self.counts.short_reads.fetch_add(1, Ordering::Relaxed);
            let keep = self.rng.lock().gen_range(0..v.len());
            v.truncate(keep);
        }
        v
    }
}

fn enter(faults: &Faults, rng: &Mutex<StdRng>, counts: &FaultCounts, what: &str) -> io::Result<()> {
    if !faults.delay.is_zero() {
        std::thread::sleep(faults.delay);
    }
    counts.calls.fetch_add(1, Ordering::Relaxed);
    if faults.error_rate > 0.0 && rng.lock().gen::<f64>() < faults.error_rate {
        counts.errors.fetch_add(1, Ordering::Relaxed);
        return Err(io::Error::other(format!("injected fault in {what}")));
    }
    Ok(())
}

struct FaultySink {
    inner: Box<dyn PackSink>,
    faults: Faults,
    rng: Arc<Mutex<StdRng>>,
    counts: Arc<FaultCounts>,
}

impl PackSink for FaultySink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        enter(&self.faults, &self.rng, &self.counts, "pack write")?;
        self.inner.write_all(buf)
    }
    fn finish(self: Box<Self>) -> io::Result<()> {
        enter(&self.faults, &self.rng, &self.counts, "pack finish")?;
        self.inner.finish()
    }
}

impl PackStorage for FaultyPacks {
    fn create(&self, id: PackId) -> io::Result<Box<dyn PackSink>> {
        self.enter("pack create")?;
        Ok(Box::new(FaultySink {
            inner: self.inner.create(id)?,
            faults: self.faults.clone(),
            rng: self.rng.clone(),
            counts: self.counts.clone(),
        }))
    }
    fn read_at(&self, id: PackId, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.enter("pack read")?;
        Ok(self.shorten(self.inner.read_at(id, offset, len)?))
    }
    fn read_ranges(&self, id: PackId, ranges: &[Range<u64>]) -> io::Result<Vec<Vec<u8>>> {
        self.enter("pack read")?;
        let v = self.inner.read_ranges(id, ranges)?;
        Ok(v.into_iter().map(|b| self.shorten(b)).collect())
    }
    fn read_concurrency(&self) -> usize {
        self.inner.read_concurrency()
    }
    fn delete(&self, id: PackId) -> io::Result<()> {
        self.enter("pack delete")?;
        self.inner.delete(id)
    }
    fn list_sized(&self) -> io::Result<Vec<(PackId, u64)>> {
        self.enter("pack list")?;
        self.inner.list_sized()
    }
    fn describe(&self, id: PackId) -> String {
        format!("{} (fault-injecting)", self.inner.describe(id))
    }
    fn location(&self) -> String {
        format!("{} (fault-injecting)", self.inner.location())
    }
    fn put_meta(&self, name: &str, body: &[u8]) -> io::Result<()> {
        self.enter("catalog put")?;
        self.inner.put_meta(name, body)
    }
    fn get_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.enter("catalog get")?;
        self.inner.get_meta(name)
    }
    fn delete_meta(&self, name: &str) -> io::Result<()> {
        self.enter("catalog delete")?;
        self.inner.delete_meta(name)
    }
    fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.enter("catalog list")?;
        self.inner.list_meta(prefix)
    }
    fn object_lock(&self) -> io::Result<ObjectLock> {
        self.enter("object lock")?;
        self.inner.object_lock()
    }
    fn retain(&self, object: Object<'_>, mode: RetentionMode, until: u64) -> io::Result<u64> {
        self.enter("retain")?;
        self.inner.retain(object, mode, until)
    }
}
