//! GC under stress: backups, deletes, restores and back-to-back GC on one store, all at once.
//!
//! For `BV_GC_STRESS_SECS` seconds (default 45), on one `Engine` shared through an `Arc`:
//! - four backup threads each evolve their own 32 MiB volume image (two of the volumes are
//!   encrypted). Every round rewrites a random 5-15 % of it (fresh random data, zeros, text,
//!   slices of a pool of patterns shared by all volumes, and extents reverted to the version of a
//!   few rounds ago, so that chunks that died with a deleted backup come back while GC collects
//!   them, and cross-volume dedup happens), takes an incremental backup (full the first time) and
//!   records the BLAKE3 of the image at backup time. Every third round does what the control
//!   plane does with a suspended job: the first attempt is cancelled after it has written
//!   references, its `error` record is deleted, and the backup runs again under the same id,
//!   while GC may still hold the first attempt's state in its snapshot;
//! - a delete thread keeps the newest two backups of each volume and deletes the older ones as
//!   they appear, restoring and checking one about every half second first (while GC moves its
//!   chunks around);
//! - a GC thread runs `Engine::gc` back to back, recording each run's duration and report;
//! - a probe thread times full backups of a small, always-new 2 MiB image (deleted again at
//!   once), to see how long GC can hold a backup up (GC takes the store's lifecycle lock per
//!   batch); the same probe also runs with only GC running and on an idle store. The figures are
//!   printed, not asserted.
//!
//! Every backup is checked in the index (manifest complete, every chunk it names indexed and
//! still referenced by it) before it is deleted. Afterwards every remaining backup must restore
//! byte-exact (BLAKE3 of the restored file equals the recorded one), `verify` must be clean
//! before and after a final GC, and the final GC must leave exactly the live data: the index
//! holds exactly the chunks the remaining backups name, packs hold at most twice the live entry
//! bytes (the rewrite threshold is 50 % live), and no pack file exists that the index does not
//! list. Any thread's error or panic fails the test, and every failure names the backup (id,
//! volume and round).
//!
//! A GC that removes a live chunk, deletes a pack that still holds live entries, or drops
//! references or manifest blocks of a live backup (including one re-run under its id) fails the
//! index check, a restore or `verify`; a GC that leaves garbage behind fails the final
//! accounting. The race of a GC that removes chunks without rechecking their references under
//! the lifecycle lock is narrow and is caught only in some runs.
mod common;

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blockvault_core::keys::chunk_id;
use blockvault_core::{BackupId, BackupState, ChunkId, ManifestEntry, VolumeId};
use blockvault_engine::{
    BackupOptions, CancelToken, Engine, EngineOptions, NoProgress, Progress, RestoreOptions,
};
use blockvault_store::{GcReport, StoreConfig};
use common::{all_files, dir_bytes, mixed_bytes, random_bytes};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const MIB: usize = 1 << 20;
const VOLUMES: usize = 4;
const IMAGE_LEN: usize = 32 * MIB;
/// Backups of each volume the delete thread keeps.
const KEEP: usize = 2;
const PATTERNS: usize = 16;
const PROBE_LEN: usize = 2 * MIB;

/// What a backup must restore to.
#[derive(Clone, Copy)]
struct Expected {
    volume: usize,
    round: u64,
    /// BLAKE3 of the image when it was backed up.
    hash: ChunkId,
}

fn describe(id: &BackupId, e: &Expected) -> String {
    format!("backup {id} (volume vol{}, round {})", e.volume, e.round)
}

/// State shared by the threads.
struct Ctl {
    dir: PathBuf,
    /// Backups that exist and what they must restore to.
    expected: Mutex<HashMap<BackupId, Expected>>,
    /// True while a GC run is in progress.
    gc_running: AtomicBool,
}

type Handle<T> = (String, JoinHandle<Result<T, String>>);

/// Runs `f` on a named thread; an error stops every thread that watches `stop`.
fn spawn<T: Send + 'static>(
    name: String,
    stop: &Arc<AtomicBool>,
    f: impl FnOnce(&AtomicBool) -> Result<T, String> + Send + 'static,
) -> Handle<T> {
    let stop = stop.clone();
    let h = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let r = f(&stop);
            if r.is_err() {
                stop.store(true, Ordering::SeqCst);
            }
            r
        })
        .unwrap();
    (name, h)
}

/// Joins a thread; its error or panic goes to `errors`.
fn join<T>((name, h): Handle<T>, errors: &mut Vec<String>) -> Option<T> {
    match h.join() {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            errors.push(format!("{name}: {e}"));
            None
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            errors.push(format!("{name} panicked: {msg}"));
            None
        }
    }
}

/// Sleeps until `deadline`, or until `stop` is set or a thread ended early.
fn wait(deadline: Instant, stop: &AtomicBool, finished: impl Fn() -> bool) {
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) && !finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
}

/// Rewrites a random 5-15 % of `image` (and of its file) in 4 KiB-aligned extents: new random
/// data, slices of the shared patterns, the same extent's content of `old` (an earlier version,
/// whose backups are deleted by now, so its chunks are dead or dying), zeros, or mixed data.
fn modify(
    rng: &mut StdRng,
    image: &mut [u8],
    old: &[u8],
    file: &std::fs::File,
    patterns: &[Vec<u8>],
) -> std::io::Result<()> {
    let len = image.len();
    let goal = len * rng.gen_range(5..=15) / 100;
    let mut changed = 0;
    while changed < goal {
        let n = (rng.gen_range(16 << 10..=MIB).min(goal - changed + 4095) / 4096).max(1) * 4096;
        let at = rng.gen_range(0..=(len - n) / 4096) * 4096;
        let region = &mut image[at..at + n];
        match rng.gen_range(0..20) {
            0..=6 => rng.fill_bytes(region),
            7..=11 => {
                // A slice of a shared pattern: its chunks recur across rounds and volumes.
                let p = &patterns[rng.gen_range(0..patterns.len())];
                let off = rng.gen_range(0..=(p.len() - n) / 4096) * 4096;
                region.copy_from_slice(&p[off..off + n]);
            }
            // Back to an earlier version: chunks GC may be collecting at this moment come back.
            12..=15 => region.copy_from_slice(&old[at..at + n]),
            16..=17 => region.fill(0),
            _ => region.copy_from_slice(&mixed_bytes(n, rng.gen())),
        }
        file.write_all_at(region, at as u64)?;
        changed += n;
    }
    Ok(())
}

/// Cancels a backup once `after` bytes of it have been recorded (references written).
struct CancelAfter {
    token: CancelToken,
    after: u64,
    done: AtomicU64,
}

impl Progress for CancelAfter {
    fn advance(&self, bytes: u64) {
        if self.done.fetch_add(bytes, Ordering::SeqCst) + bytes >= self.after {
            self.token.cancel();
        }
    }
}

/// What a backup thread did.
#[derive(Default)]
struct VolumeStats {
    backups: u64,
    /// Rounds whose first attempt was cancelled midway, deleted and re-run with the same id.
    reruns: u64,
}

/// One backup thread: evolves its volume and backs it up until stopped.
///
/// Every third round copies what the control plane does with a suspended job: the first attempt
/// is cancelled after it has written references, its `error` record is deleted, and the backup
/// runs again under the same id. GC may still hold the old attempt's state in its snapshot.
fn backup_loop(
    engine: &Engine,
    ctl: &Ctl,
    v: usize,
    mut image: Vec<u8>,
    patterns: &[Vec<u8>],
    stop: &AtomicBool,
) -> Result<VolumeStats, String> {
    let mut rng = StdRng::seed_from_u64(1000 + v as u64);
    let path = ctl.dir.join(format!("vol{v}.img"));
    std::fs::write(&path, &image).map_err(|e| format!("write {}: {e}", path.display()))?;
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let volume = VolumeId::new(format!("vol{v}")).unwrap();
    let mut st = VolumeStats::default();
    let mut old = image.clone();
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if round.is_multiple_of(4) {
            old.copy_from_slice(&image);
        }
        if round > 0 {
            modify(&mut rng, &mut image, &old, &file, patterns)
                .map_err(|e| format!("modify {}: {e}", path.display()))?;
        }
        let hash = chunk_id(&image, None);
        let id = BackupId::new();
        let mut o = BackupOptions::new(volume.clone(), &path);
        o.incremental = round > 0;
        o.encrypt = v % 2 == 1;
        o.id = Some(id);
        let what = format!("backup {id} (volume vol{v}, round {round})");
        if round % 3 == 2 {
            let mut first = o.clone();
            first.cancel = CancelToken::default(); // not shared with the re-run
            first.progress = Arc::new(CancelAfter {
                token: first.cancel.clone(),
                after: (IMAGE_LEN / 4) as u64,
                done: AtomicU64::new(0),
            });
            match engine.backup(first) {
                Err(blockvault_engine::Error::Cancelled) => {
                    engine
                        .delete(&id)
                        .map_err(|e| format!("{what}: delete of the cancelled attempt: {e}"))?;
                    st.reruns += 1;
                }
                Err(e) => return Err(format!("{what}: first attempt failed: {e}")),
                // Finished before it saw the cancellation: an ordinary round.
                Ok(_) => o.id = None,
            }
        }
        if o.id.is_some() {
            engine
                .backup(o)
                .map_err(|e| format!("{what}: backup failed: {e}"))?;
        }
        let exp = Expected {
            volume: v,
            round,
            hash,
        };
        ctl.expected.lock().unwrap().insert(id, exp);
        st.backups += 1;
        round += 1;
    }
    Ok(st)
}

/// Restores `id` to a new file and compares its BLAKE3 with the recorded one.
fn check_restore(engine: &Engine, dir: &Path, id: BackupId, exp: &Expected) -> Result<(), String> {
    let target = dir.join(format!("restore-{id}.img"));
    engine
        .restore(RestoreOptions::new(id, &target))
        .map_err(|e| format!("{}: restore failed: {e}", describe(&id, exp)))?;
    let data = std::fs::read(&target).map_err(|e| format!("read {}: {e}", target.display()))?;
    std::fs::remove_file(&target).map_err(|e| format!("remove {}: {e}", target.display()))?;
    if data.len() != IMAGE_LEN || chunk_id(&data, None) != exp.hash {
        return Err(format!(
            "{}: the restored image ({} bytes) differs from the image that was backed up",
            describe(&id, exp),
            data.len()
        ));
    }
    Ok(())
}

/// Checks in the index that a backup is intact: its manifest has all its blocks, and every chunk
/// it names is indexed and still carries this backup's reference. Cheap (no chunk is read), so it
/// runs on every backup before it is deleted: a GC that dropped a live backup's references, or
/// the manifest of a backup re-run under its id, is caught here even if the chunks were not
/// removed yet.
fn check_index(engine: &Engine, id: BackupId, exp: &Expected) -> Result<(), String> {
    let what = describe(&id, exp);
    let store = engine.store();
    let rec = engine
        .get(&id)
        .map_err(|e| format!("{what}: record: {e}"))?;
    if rec.state != BackupState::Available {
        return Err(format!("{what}: is {}, not available", rec.state.as_str()));
    }
    let mut blocks = 0u32;
    for block in store.manifest(&id) {
        let block = block.map_err(|e| format!("{what}: manifest: {e}"))?;
        blocks += 1;
        for e in block.entries {
            let ManifestEntry::Chunk { id: c, .. } = e else {
                continue;
            };
            if !store.has_chunk(&c).map_err(|e| format!("{what}: {e}"))? {
                return Err(format!("{what}: chunk {c} is missing from the index"));
            }
            if !store
                .referrers(&c)
                .map_err(|e| format!("{what}: {e}"))?
                .contains(&id)
            {
                return Err(format!("{what}: its reference to chunk {c} is gone"));
            }
        }
    }
    if blocks != rec.manifest_blocks {
        return Err(format!(
            "{what}: the manifest has {blocks} of {} blocks",
            rec.manifest_blocks
        ));
    }
    Ok(())
}

/// Backups beyond the newest `KEEP` of each volume, oldest first.
fn victims(ctl: &Ctl) -> Vec<(BackupId, Expected)> {
    let mut by_volume: HashMap<usize, Vec<(BackupId, Expected)>> = HashMap::new();
    for (id, e) in ctl.expected.lock().unwrap().iter() {
        by_volume.entry(e.volume).or_default().push((*id, *e));
    }
    let mut out = Vec::new();
    for mut v in by_volume.into_values() {
        v.sort_by_key(|(_, e)| std::cmp::Reverse(e.round));
        out.extend(v.into_iter().skip(KEEP));
    }
    out.sort_by_key(|(_, e)| e.round);
    out
}

/// Checks a backup's index entries, then deletes it.
fn delete_one(engine: &Engine, ctl: &Ctl, id: BackupId, exp: &Expected) -> Result<(), String> {
    check_index(engine, id, exp)?;
    ctl.expected.lock().unwrap().remove(&id);
    engine
        .delete(&id)
        .map_err(|e| format!("{}: delete failed: {e}", describe(&id, exp)))
}

/// The delete thread: deletes old backups as they appear, restoring and checking one of them
/// about every half second first (restoring every one would not keep up with the backups).
/// Returns (deleted, checked).
fn delete_loop(engine: &Engine, ctl: &Ctl, stop: &AtomicBool) -> Result<(u64, u64), String> {
    let (mut deleted, mut checked) = (0, 0);
    let mut last_check = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        for (id, exp) in victims(ctl) {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if last_check.elapsed() >= Duration::from_millis(500) {
                check_restore(engine, &ctl.dir, id, &exp)?;
                checked += 1;
                last_check = Instant::now();
            }
            delete_one(engine, ctl, id, &exp)?;
            deleted += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((deleted, checked))
}

/// What the GC runs of a phase did.
#[derive(Default)]
struct GcStats {
    runs: u64,
    /// Runs on a store without any sealed pack yet.
    empty_runs: u64,
    /// Durations of the other runs.
    durations: Vec<Duration>,
    total: GcReport,
    reclaimed: u64,
    /// Largest pack bytes any run saw.
    peak_pack_bytes: u64,
}

impl GcStats {
    fn add(&mut self, r: &GcReport, d: Duration) {
        self.runs += 1;
        if r.pack_bytes_before == 0 {
            // Before the first pack was sealed: nothing to scan, not worth a duration.
            self.empty_runs += 1;
        } else {
            self.durations.push(d);
        }
        self.reclaimed += r.reclaimed_bytes();
        self.peak_pack_bytes = self.peak_pack_bytes.max(r.pack_bytes_before);
        let t = &mut self.total;
        t.dead_refs += r.dead_refs;
        t.deletes_finished += r.deletes_finished;
        t.chunks_removed += r.chunks_removed;
        t.packs_deleted += r.packs_deleted;
        t.packs_rewritten += r.packs_rewritten;
        t.orphan_packs_deleted += r.orphan_packs_deleted;
    }
    fn merge(&mut self, o: GcStats) {
        self.runs += o.runs;
        self.empty_runs += o.empty_runs;
        self.durations.extend(o.durations);
        self.reclaimed += o.reclaimed;
        self.peak_pack_bytes = self.peak_pack_bytes.max(o.peak_pack_bytes);
        let (t, u) = (&mut self.total, &o.total);
        t.dead_refs += u.dead_refs;
        t.deletes_finished += u.deletes_finished;
        t.chunks_removed += u.chunks_removed;
        t.packs_deleted += u.packs_deleted;
        t.packs_rewritten += u.packs_rewritten;
        t.orphan_packs_deleted += u.orphan_packs_deleted;
    }
}

fn timed_gc(engine: &Engine, ctl: &Ctl, stats: &mut GcStats) -> Result<(), String> {
    ctl.gc_running.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let r = engine.gc();
    let d = t.elapsed();
    ctl.gc_running.store(false, Ordering::SeqCst);
    let r = r.map_err(|e| format!("GC run {} failed: {e}", stats.runs + 1))?;
    stats.add(&r, d);
    Ok(())
}

/// The GC thread: GC back to back until stopped.
fn gc_loop(engine: &Engine, ctl: &Ctl, stop: &AtomicBool) -> Result<GcStats, String> {
    let mut s = GcStats::default();
    while !stop.load(Ordering::SeqCst) {
        timed_gc(engine, ctl, &mut s)?;
    }
    Ok(s)
}

/// Times a full backup of a new small image (deleted again at once); says whether a GC ran at
/// its start or end.
fn probe_once(engine: &Engine, ctl: &Ctl, seed: u64) -> Result<(Duration, bool), String> {
    let path = ctl.dir.join("probe.img");
    std::fs::write(&path, random_bytes(PROBE_LEN, seed))
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    let o = BackupOptions::new(VolumeId::new("probe").unwrap(), &path);
    let gc_before = ctl.gc_running.load(Ordering::SeqCst);
    let t = Instant::now();
    let rec = engine
        .backup(o)
        .map_err(|e| format!("probe backup {seed} failed: {e}"))?;
    let d = t.elapsed();
    let gc = gc_before || ctl.gc_running.load(Ordering::SeqCst);
    engine
        .delete(&rec.id)
        .map_err(|e| format!("delete of probe backup {}: {e}", rec.id))?;
    Ok((d, gc))
}

/// Probes until stopped, one every 150 ms.
fn probe_loop(
    engine: &Engine,
    ctl: &Ctl,
    seed: u64,
    stop: &AtomicBool,
) -> Result<Vec<(Duration, bool)>, String> {
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        out.push(probe_once(engine, ctl, seed + out.len() as u64)?);
        std::thread::sleep(Duration::from_millis(150));
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "n=…, median …, max …" of some durations.
fn summary(v: &[Duration]) -> String {
    let mut v = v.to_vec();
    v.sort();
    match v.last() {
        None => "n=0".into(),
        Some(max) => format!(
            "n={}, median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
            v.len(),
            ms(v[v.len() / 2]),
            ms(v[v.len() * 9 / 10]),
            ms(*max)
        ),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB as f64)
}

#[test]
fn gc_under_concurrent_backups_deletes_and_restores_keeps_every_live_backup() {
    let secs: u64 = std::env::var("BV_GC_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    // Small packs: many of them, so GC deletes and rewrites packs, not just index entries.
    let config = StoreConfig {
        pack_target_size: 4 << 20,
        ..StoreConfig::default()
    };
    Engine::init(&store_dir, config, Some(&tmp.path().join("master.key"))).unwrap();
    // A small byte budget keeps the reader close to the writer, so a cancellation requested once
    // references are written reaches the reader before it is done.
    let opts = EngineOptions {
        max_bytes_in_flight: 8 << 20,
        ..EngineOptions::default()
    };
    let engine = Arc::new(Engine::open(&store_dir, opts).unwrap());
    let ctl = Arc::new(Ctl {
        dir: tmp.path().to_path_buf(),
        expected: Mutex::new(HashMap::new()),
        gc_running: AtomicBool::new(false),
    });
    let patterns: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..PATTERNS)
            .map(|i| random_bytes(MIB, 500 + i as u64))
            .collect(),
    );
    let mut errors = Vec::new();

    // ---- Phase 1: everything at once.
    let stop = Arc::new(AtomicBool::new(false));
    let images: Vec<Vec<u8>> = (0..VOLUMES)
        .map(|v| mixed_bytes(IMAGE_LEN, 100 + v as u64))
        .collect();
    let backups: Vec<Handle<VolumeStats>> = images
        .into_iter()
        .enumerate()
        .map(|(v, image)| {
            let (e, c, p) = (engine.clone(), ctl.clone(), patterns.clone());
            spawn(format!("backup-vol{v}"), &stop, move |stop| {
                backup_loop(&e, &c, v, image, &p, stop)
            })
        })
        .collect();
    let started = Instant::now();
    let deleter = {
        let (e, c) = (engine.clone(), ctl.clone());
        spawn("delete".into(), &stop, move |stop| {
            delete_loop(&e, &c, stop)
        })
    };
    let gc = {
        let (e, c) = (engine.clone(), ctl.clone());
        spawn("gc".into(), &stop, move |stop| gc_loop(&e, &c, stop))
    };
    let probe = {
        let (e, c) = (engine.clone(), ctl.clone());
        spawn("probe".into(), &stop, move |stop| {
            probe_loop(&e, &c, 1 << 20, stop)
        })
    };
    wait(started + Duration::from_secs(secs), &stop, || {
        backups.iter().any(|(_, h)| h.is_finished())
            || deleter.1.is_finished()
            || probe.1.is_finished()
            || gc.1.is_finished()
    });
    let stress_secs = started.elapsed().as_secs_f64();
    let (made, reruns) = backups
        .into_iter()
        .filter_map(|h| join(h, &mut errors))
        .fold((0, 0), |(b, r), s| (b + s.backups, r + s.reruns));
    let (mut deleted, checked) = join(deleter, &mut errors).unwrap_or_default();
    let mut gc_stats = join(gc, &mut errors).unwrap_or_default();
    let (stress_gc_runs, stress_gc_durations) = (gc_stats.runs, gc_stats.durations.clone());
    let probe_stress = join(probe, &mut errors).unwrap_or_default();
    assert!(errors.is_empty(), "threads failed:\n{}", errors.join("\n"));

    // Thin out to the newest KEEP per volume (the delete thread may lag behind).
    for (id, exp) in victims(&ctl) {
        delete_one(&engine, &ctl, id, &exp).unwrap();
        deleted += 1;
    }

    // ---- Phase 2: GC alone (it has the last deletions to collect) against the probe.
    let stop = Arc::new(AtomicBool::new(false));
    let gc = {
        let (e, c) = (engine.clone(), ctl.clone());
        spawn("gc-alone".into(), &stop, move |stop| gc_loop(&e, &c, stop))
    };
    let probe = {
        let (e, c) = (engine.clone(), ctl.clone());
        spawn("probe-gc-alone".into(), &stop, move |stop| {
            probe_loop(&e, &c, 2 << 20, stop)
        })
    };
    wait(Instant::now() + Duration::from_secs(5), &stop, || {
        gc.1.is_finished() || probe.1.is_finished()
    });
    let gc_alone = join(gc, &mut errors).unwrap_or_default();
    let probe_gc_alone = join(probe, &mut errors).unwrap_or_default();
    assert!(errors.is_empty(), "threads failed:\n{}", errors.join("\n"));
    let gc_alone_runs = gc_alone.runs;
    gc_stats.merge(gc_alone);

    // ---- Phase 3: the probe on an idle store.
    let probe_idle: Vec<Duration> = (0..10)
        .map(|i| probe_once(&engine, &ctl, (3 << 20) + i).unwrap().0)
        .collect();

    // ---- Checks.
    let remaining: Vec<(BackupId, Expected)> = {
        let mut v: Vec<_> = ctl
            .expected
            .lock()
            .unwrap()
            .iter()
            .map(|(id, e)| (*id, *e))
            .collect();
        v.sort_by_key(|(_, e)| (e.volume, e.round));
        v
    };
    assert_eq!(remaining.len(), VOLUMES * KEEP, "backups left to check");
    let restore_all = |when: &str| {
        let failures: Vec<String> = remaining
            .iter()
            .filter_map(|(id, exp)| check_restore(&engine, &ctl.dir, *id, exp).err())
            .collect();
        assert!(
            failures.is_empty(),
            "{when}: {} of {} remaining backups do not restore:\n{}",
            failures.len(),
            remaining.len(),
            failures.join("\n")
        );
    };
    let names: HashMap<BackupId, String> = remaining
        .iter()
        .map(|(id, e)| (*id, describe(id, e)))
        .collect();
    let verify = |when: &str| {
        let r = engine.verify(None, &NoProgress).unwrap();
        let affected: Vec<String> = r
            .affected_backups()
            .iter()
            .map(|id| {
                names
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| format!("backup {id} (not expected to exist)"))
            })
            .collect();
        assert!(
            r.is_clean(),
            "{when}: verify found problems in {affected:?}: {r:?}"
        );
        assert_eq!(r.backups_checked, remaining.len() as u64, "{when}");
    };
    for (id, exp) in &remaining {
        check_index(&engine, *id, exp).unwrap();
    }
    restore_all("after the stress");
    verify("after the stress");

    let mut last = GcStats::default();
    timed_gc(&engine, &ctl, &mut last).unwrap();
    gc_stats.merge(last);
    verify("after the final GC");
    for (id, exp) in &remaining {
        check_index(&engine, *id, exp).unwrap();
    }
    restore_all("after the final GC");

    // ---- Space: after a quiescent GC the store holds exactly the live data.
    let store = engine.store();
    let stats = store.stats().unwrap();
    let mut live: HashSet<ChunkId> = HashSet::new();
    for (id, _) in &remaining {
        for block in store.manifest(id) {
            for e in block.unwrap().entries {
                if let ManifestEntry::Chunk { id: c, .. } = e {
                    live.insert(c);
                }
            }
        }
    }
    let live_bytes: u64 = live
        .iter()
        .map(|c| store.chunk_location(c).unwrap().unwrap().entry_len())
        .sum();
    let packs_dir = store_dir.join("packs");
    let (pack_files, pack_file_bytes) = (all_files(&packs_dir).len() as u64, dir_bytes(&packs_dir));

    let max_gc = gc_stats.durations.iter().max().copied().unwrap_or_default();
    let probe_stress_gc: Vec<Duration> = probe_stress.iter().filter(|p| p.1).map(|p| p.0).collect();
    let probe_stress_all: Vec<Duration> = probe_stress.iter().map(|p| p.0).collect();
    let probe_gc_alone: Vec<Duration> = probe_gc_alone.iter().map(|p| p.0).collect();
    let t = &gc_stats.total;
    eprintln!(
        "gc_stress: {stress_secs:.1} s of stress, {VOLUMES} volumes of {}",
        mib(IMAGE_LEN as u64)
    );
    eprintln!(
        "  backups made {made} ({reruns} of them re-run under their id after a cancelled attempt), \
         deleted {deleted} ({checked} of them restored and checked first), remaining {}",
        remaining.len()
    );
    eprintln!(
        "  GC runs {} ({} during the stress, {gc_alone_runs} alone, 1 final), bytes reclaimed {} \
         (sum of per-run pack_bytes_before - pack_bytes_after)",
        gc_stats.runs,
        stress_gc_runs,
        mib(gc_stats.reclaimed)
    );
    eprintln!(
        "  GC totals: dead refs {}, deletes finished {}, chunks removed {}, packs deleted {}, \
         packs rewritten {}, orphan packs deleted {}",
        t.dead_refs,
        t.deletes_finished,
        t.chunks_removed,
        t.packs_deleted,
        t.packs_rewritten,
        t.orphan_packs_deleted
    );
    eprintln!(
        "  GC duration: during the stress {} (plus {} runs before the first pack was sealed); \
         max over all runs {:.1} ms",
        summary(&stress_gc_durations),
        gc_stats.empty_runs,
        ms(max_gc)
    );
    eprintln!(
        "  probe backup of {} (not asserted): idle {}; GC alone {}; stress {} \
         (overlapping a GC: {})",
        mib(PROBE_LEN as u64),
        summary(&probe_idle),
        summary(&probe_gc_alone),
        summary(&probe_stress_all),
        summary(&probe_stress_gc)
    );
    eprintln!(
        "  store after the final GC: {} packs, pack bytes {} (peak seen by GC {}), live bytes {}, \
         {} chunks, {} backups",
        stats.packs,
        mib(stats.pack_bytes),
        mib(gc_stats.peak_pack_bytes),
        mib(stats.live_bytes),
        stats.chunks,
        stats.backups
    );

    assert!(made > (VOLUMES * KEEP) as u64, "only {made} backups made");
    assert!(deleted > 0, "nothing was deleted");
    assert!(
        gc_stats.reclaimed > 0,
        "GC reclaimed nothing after {deleted} deletions"
    );
    assert_eq!(stats.backups, remaining.len() as u64, "records left over");
    assert_eq!(
        stats.chunks,
        live.len() as u64,
        "the index holds chunks that no remaining backup names (or lacks some)"
    );
    assert_eq!(stats.live_bytes, live_bytes, "live bytes");
    assert!(
        stats.pack_bytes <= 2 * stats.live_bytes,
        "packs hold {} for {} of live entries",
        stats.pack_bytes,
        stats.live_bytes
    );
    assert_eq!(
        (pack_files, pack_file_bytes),
        (stats.packs, stats.pack_bytes),
        "pack files on disk (count, bytes) vs sealed packs in the index: orphans left behind"
    );
}
