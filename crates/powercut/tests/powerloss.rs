//! Power loss, not only kill -9: the real `blockvault` and `blockvaultd` binaries run on the
//! power-loss file system (`blockvault_powercut`), are SIGKILLed at a random moment during
//! backups, deletes, GC, vault accounting and start-up, and then the power is cut: everything
//! not fsynced (file data, and directory entries not made durable by a directory fsync) is
//! lost. After each cut the harness restarts and checks that every committed backup (its command
//! returned success before the kill) restores byte-exact, that `local verify` is clean, and for
//! the daemon that each vault's usage ledger equals a recount from the store's manifests.
//!
//! The RNG seed is printed; `BLOCKVAULT_POWERCUT_SEED=N` replays a run's choices (the kill
//! moments still depend on timing). `BLOCKVAULT_POWERCUT_CUTS=L,D` sets the number of cuts of
//! the local and the daemon scenario (default 60 and 40; 0 skips a scenario).
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockvault_core::{BackupId, ChunkId, ManifestEntry};
use blockvault_powercut::{say, CutReport, PowerCutMount};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;

const IMAGE: usize = 3 << 20;

/// The binaries next to this test executable (`target/release/deps/powerloss-*` ->
/// `target/release/`).
struct Bins {
    cli: PathBuf,
    daemon: PathBuf,
}

fn bins() -> Bins {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let b = Bins {
        cli: dir.join("blockvault"),
        daemon: dir.join("blockvaultd"),
    };
    for p in [&b.cli, &b.daemon] {
        assert!(
            p.exists(),
            "{} is missing: build the binaries first (cargo test --release --workspace builds \
             them; or cargo build --release --workspace)",
            p.display()
        );
    }
    b
}

/// What was checked, for the report.
#[derive(Default)]
struct Report {
    /// Cuts per scenario and phase.
    cuts: BTreeMap<String, usize>,
    /// Cuts where the process was killed before it finished (the others finished first).
    killed: usize,
    restores: usize,
    restored_bytes: u64,
    verifies: usize,
    usage_checks: usize,
    /// Backups found `error` (interrupted) after a cut.
    interrupted: usize,
    /// Model counters summed over cuts.
    files_reverted: usize,
    dirs_reverted: usize,
    inodes_dropped: usize,
}

impl Report {
    fn cut(&mut self, m: &PowerCutMount, scenario: &str, phase: &str, killed: bool) -> CutReport {
        let r = m.cut();
        *self.cuts.entry(format!("{scenario}/{phase}")).or_default() += 1;
        self.killed += usize::from(killed);
        self.files_reverted += r.files_reverted;
        self.dirs_reverted += r.dirs_reverted;
        self.inodes_dropped += r.inodes_dropped;
        r
    }

    fn total(&self) -> usize {
        self.cuts.values().sum()
    }
}

/// A backup that was committed, with the bytes it must restore to.
#[derive(Clone)]
struct Committed {
    id: String,
    data: Arc<Vec<u8>>,
    /// Index of its volume.
    vol: usize,
}

/// A volume image on the ordinary disk (sources are not what is tested).
struct Volume {
    path: PathBuf,
    data: Vec<u8>,
    encrypt: bool,
    /// Daemon scenario: registered id and vault.
    id: String,
    vault: String,
}

impl Volume {
    fn new(path: PathBuf, rng: &mut StdRng, base: Option<&[u8]>, encrypt: bool) -> Volume {
        let data = match base {
            Some(b) => b.to_vec(),
            None => {
                // Half random data, half holes, in 256 KiB stripes.
                let mut v = vec![0u8; IMAGE];
                for (i, c) in v.chunks_mut(256 << 10).enumerate() {
                    if i % 2 == 0 {
                        rng.fill_bytes(c);
                    }
                }
                v
            }
        };
        let vol = Volume {
            path,
            data,
            encrypt,
            id: String::new(),
            vault: String::new(),
        };
        vol.write();
        vol
    }

    /// Changes a few random ranges (new data for the next backup).
    fn mutate(&mut self, rng: &mut StdRng) {
        for _ in 0..rng.gen_range(1..6) {
            let len = rng.gen_range(1..(128 << 10));
            let at = rng.gen_range(0..self.data.len() - len);
            rng.fill_bytes(&mut self.data[at..at + len]);
        }
        self.write();
    }

    fn write(&self) {
        std::fs::write(&self.path, &self.data).unwrap();
    }
}

fn run(bin: &Path, args: &[&dyn AsRef<OsStr>]) -> Output {
    let mut c = Command::new(bin);
    for a in args {
        c.arg(a);
    }
    c.stdin(Stdio::null())
        .env_remove("BLOCKVAULT_ENDPOINT")
        .env_remove("BLOCKVAULT_TOKEN")
        .env_remove("BLOCKVAULT_DATA_DIR")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Context of a failure: the seed and the cut.
#[derive(Clone, Default)]
struct Ctx {
    seed: u64,
    what: String,
}

impl Ctx {
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "POWER-LOSS FAILURE (seed {}, {}): {msg}\nreplay with BLOCKVAULT_POWERCUT_SEED={}",
            self.seed, self.what, self.seed
        )
    }

    fn ok(&self, o: Output, what: &str) -> String {
        if !o.status.success() {
            self.fail(&format!("{what} failed: {}", text(&o)));
        }
        String::from_utf8(o.stdout).unwrap()
    }

    fn json(&self, o: Output, what: &str) -> Value {
        let out = self.ok(o, what);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| self.fail(&format!("{what}: not JSON ({e}): {out}")))
    }
}

/// Starts `cmd`, SIGKILLs it after `delay` unless it has exited by then. Returns its output if
/// it exited by itself.
fn run_until(mut cmd: Command, delay: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if t.elapsed() >= delay {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A random kill moment within `scale` (the duration of the last uninterrupted run of that kind),
/// a little past it sometimes so that some commands finish first.
fn delay(rng: &mut StdRng, scale: Duration) -> Duration {
    scale.mul_f64(rng.gen_range(0.0..1.15))
}

/// Makes the store seal packs at 1 MiB (the minimum), so that a backup of a few MiB seals
/// several packs while it runs. Written durably (temp file, fsync, rename, directory fsync).
fn small_packs(store: &Path) {
    let p = store.join("store.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    cfg["pack_target_size"] = Value::from(1u64 << 20);
    let tmp = store.join("store.json.harness");
    let f = std::fs::File::create(&tmp).unwrap();
    f.write_all_at(&serde_json::to_vec_pretty(&cfg).unwrap(), 0)
        .unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    std::fs::File::open(store).unwrap().sync_all().unwrap();
}

/// Restores `id` with `local restore` to a file on the ordinary disk and compares it.
fn check_restore(
    ctx: &Ctx,
    bins: &Bins,
    store: &Path,
    c: &Committed,
    out_dir: &Path,
    report: &mut Report,
) {
    let out = out_dir.join(format!("{}.img", c.id));
    let _ = std::fs::remove_file(&out);
    ctx.ok(
        run(
            &bins.cli,
            &[
                &"local",
                &"restore",
                &"--store",
                &store,
                &"--backup",
                &c.id,
                &"--target",
                &out,
            ],
        ),
        &format!("restore of committed backup {}", c.id),
    );
    let got = std::fs::read(&out).unwrap();
    if got != *c.data {
        let first = got.iter().zip(c.data.iter()).position(|(a, b)| a != b);
        ctx.fail(&format!(
            "committed backup {} restored {} bytes, want {}; first difference at {first:?}",
            c.id,
            got.len(),
            c.data.len()
        ));
    }
    std::fs::remove_file(&out).unwrap();
    report.restores += 1;
    report.restored_bytes += got.len() as u64;
}

fn check_verify(ctx: &Ctx, bins: &Bins, store: &Path, report: &mut Report) {
    // Exit status 3 (damage) or any other failure fails the check.
    ctx.json(
        run(
            &bins.cli,
            &[&"local", &"verify", &"--store", &store, &"--json"],
        ),
        "local verify",
    );
    report.verifies += 1;
}

/// Local scenario: `blockvault local` commands on a store on the mount.
fn local_scenario(
    m: &PowerCutMount,
    bins: &Bins,
    rng: &mut StdRng,
    cuts: usize,
    report: &mut Report,
    seed: u64,
) {
    if cuts == 0 {
        return;
    }
    let disk = tempfile::tempdir().unwrap();
    let store = m.path().join("store");
    // The key in a directory of its own: its entry there must be made durable by init.
    let key = m.path().join("keys").join("master.key");
    std::fs::create_dir(m.path().join("keys")).unwrap();
    std::fs::File::open(m.path()).unwrap().sync_all().unwrap();
    let mut ctx = Ctx {
        seed,
        what: "local: init".into(),
    };
    ctx.ok(
        run(
            &bins.cli,
            &[
                &"local",
                &"init",
                &"--store",
                &store,
                &"--key-file",
                &key,
                &"--chunk-min",
                &"512",
                &"--chunk-avg",
                &"2048",
                &"--chunk-max",
                &"8192",
            ],
        ),
        "local init",
    );
    // A cut right after init: the store must be there.
    report.cut(m, "local", "after-init", false);
    ctx.ok(
        run(&bins.cli, &[&"local", &"list", &"--store", &store]),
        "local list after a cut that followed init",
    );
    if !key.exists() {
        ctx.fail("the master key file created by init is gone after a cut");
    }
    small_packs(&store);

    let mut vols: Vec<Volume> = Vec::new();
    for i in 0..3 {
        let base = if i == 2 {
            Some(vols[0].data.clone())
        } else {
            None
        };
        vols.push(Volume::new(
            disk.path().join(format!("vol{i}.img")),
            rng,
            base.as_deref(),
            i == 1,
        ));
    }
    let out_dir = disk.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();

    let backup_cmd = |v: &Volume, i: usize, incremental: bool| {
        let mut c = Command::new(&bins.cli);
        c.args(["local", "backup", "--store"])
            .arg(&store)
            .arg("--volume")
            .arg(format!("vol{i}"))
            .arg("--source")
            .arg(&v.path);
        if v.encrypt {
            c.arg("--encrypt");
        }
        if incremental {
            c.arg("--incremental");
        }
        c
    };
    let mut committed: Vec<Committed> = Vec::new();
    // Backups whose delete was killed: still restorable if still listed available.
    let mut maybe: Vec<Committed> = Vec::new();
    // Durations of uninterrupted runs, the scale of kill moments.
    let mut scale: HashMap<&str, Duration> = HashMap::new();
    let mut n = 0;
    while n < cuts {
        let phase = match rng.gen_range(0..100) {
            // Too few committed backups: one runs to the end, then the cut.
            _ if committed.len() < 2 => "idle",
            _ if committed.len() > 6 => "delete",
            0..=49 => "backup",
            50..=69 => "delete",
            70..=89 => "gc",
            _ => "idle",
        };
        ctx.what = format!("local cut {} ({phase})", n + 1);
        let mut killed = false;
        match phase {
            "backup" | "idle" => {
                let i = rng.gen_range(0..vols.len());
                vols[i].mutate(rng);
                // An incremental needs an available backup of the volume to base it on.
                let incremental = committed.iter().any(|c| c.vol == i) && rng.gen_bool(0.5);
                let cmd = backup_cmd(&vols[i], i, incremental);
                let t = Instant::now();
                let d = if phase == "idle" {
                    Duration::from_secs(600)
                } else {
                    delay(
                        rng,
                        *scale.get("backup").unwrap_or(&Duration::from_millis(800)),
                    )
                };
                match run_until(cmd, d) {
                    Some(o) => {
                        scale.insert("backup", t.elapsed());
                        let id = ctx.ok(o, "local backup").trim().to_string();
                        committed.push(Committed {
                            id,
                            data: Arc::new(vols[i].data.clone()),
                            vol: i,
                        });
                    }
                    None => killed = true,
                }
            }
            "delete" => {
                let c = committed.swap_remove(rng.gen_range(0..committed.len()));
                let mut cmd = Command::new(&bins.cli);
                cmd.args(["local", "delete", "--store"])
                    .arg(&store)
                    .args(["--backup", &c.id]);
                let t = Instant::now();
                match run_until(
                    cmd,
                    delay(
                        rng,
                        *scale.get("delete").unwrap_or(&Duration::from_millis(300)),
                    ),
                ) {
                    Some(o) => {
                        scale.insert("delete", t.elapsed());
                        ctx.ok(o, "local delete");
                    }
                    None => {
                        killed = true;
                        maybe.push(c);
                    }
                }
            }
            "gc" => {
                let mut cmd = Command::new(&bins.cli);
                cmd.args(["local", "gc", "--store"]).arg(&store);
                let t = Instant::now();
                match run_until(
                    cmd,
                    delay(rng, *scale.get("gc").unwrap_or(&Duration::from_millis(500))),
                ) {
                    Some(o) => {
                        scale.insert("gc", t.elapsed());
                        ctx.ok(o, "local gc");
                    }
                    None => killed = true,
                }
            }
            _ => unreachable!(),
        }
        let r = report.cut(m, "local", phase, killed);
        ctx.what = format!("{} (killed: {killed}, {r:?})", ctx.what);
        n += 1;

        // After the cut: every committed backup is listed available and restores byte-exact.
        let list = ctx.json(
            run(
                &bins.cli,
                &[&"local", &"list", &"--store", &store, &"--json"],
            ),
            "local list",
        );
        let states: HashMap<String, String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for s in states.values() {
            if s == "in_progress" {
                ctx.fail(&format!(
                    "a backup is still in_progress after reopening: {list}"
                ));
            }
        }
        report.interrupted = report
            .interrupted
            .max(states.values().filter(|s| *s == "error").count());
        for c in &committed {
            match states.get(&c.id).map(String::as_str) {
                Some("available") => check_restore(&ctx, bins, &store, c, &out_dir, report),
                other => ctx.fail(&format!(
                    "committed backup {} is {other:?} after the cut: {list}",
                    c.id
                )),
            }
        }
        for c in std::mem::take(&mut maybe) {
            if states.get(&c.id).map(String::as_str) == Some("available") {
                check_restore(&ctx, bins, &store, &c, &out_dir, report);
                committed.push(c);
            }
        }
        check_verify(&ctx, bins, &store, report);
    }
}

/// A `blockvaultd` on the mount.
struct Daemon<'a> {
    bins: &'a Bins,
    data: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon<'_> {
    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let _ = std::fs::remove_file(self.data.join("listen.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bins.daemon)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--cinder-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start blockvaultd");
        self.child = Some(child);
    }

    fn ready(&self) -> bool {
        let addr = std::fs::read_to_string(self.data.join("listen.addr")).unwrap_or_default();
        addr.trim()
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.port() != 0)
    }

    /// Starts the daemon and waits until it listens; returns how long that took.
    fn start(&mut self, ctx: &Ctx) -> Duration {
        let t = Instant::now();
        self.spawn();
        loop {
            if self.ready() {
                return t.elapsed();
            }
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                ctx.fail(&format!(
                    "blockvaultd exited with {s} at start:\n{}",
                    self.log_tail()
                ));
            }
            if t.elapsed() > Duration::from_secs(90) {
                ctx.fail(&format!(
                    "blockvaultd not ready after 90 s:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (clean shutdown) and wait.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM by process id (nix's signal feature is not enabled in the workspace).
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        let l = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bins.cli);
        c.args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .env_remove("BLOCKVAULT_ENDPOINT")
            .env_remove("BLOCKVAULT_TOKEN")
            .env_remove("BLOCKVAULT_DATA_DIR");
        c
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The vault ledger as the control database holds it (FORMAT.md, "Vault usage ledger"): used
/// bytes and chunk -> (count, size), per vault.
type Ledger = HashMap<uuid::Uuid, (u64, Chunks)>;

/// Chunk id -> (manifest entries naming it, pack entry length).
type Chunks = HashMap<[u8; 32], (u64, u64)>;

fn read_ledger(control: &Path) -> Ledger {
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, control).expect("list control column families");
    let db = rocksdb::DB::open_cf_for_read_only(&opts, control, &cfs, false)
        .expect("open the control database read-only");
    let mut out: Ledger = HashMap::new();
    let used = db.cf_handle("vault_used").expect("vault_used");
    for kv in db.iterator_cf(used, rocksdb::IteratorMode::Start) {
        let (k, v) = kv.unwrap();
        let vault = uuid::Uuid::from_slice(&k).unwrap();
        out.entry(vault).or_default().0 = u64::from_le_bytes(v[..8].try_into().unwrap());
    }
    let chunks = db.cf_handle("vault_chunks").expect("vault_chunks");
    for kv in db.iterator_cf(chunks, rocksdb::IteratorMode::Start) {
        let (k, v) = kv.unwrap();
        let vault = uuid::Uuid::from_slice(&k[..16]).unwrap();
        let id: [u8; 32] = k[16..48].try_into().unwrap();
        let count = u64::from_le_bytes(v[..8].try_into().unwrap());
        let size = u64::from_le_bytes(v[8..16].try_into().unwrap());
        out.entry(vault).or_default().1.insert(id, (count, size));
    }
    out
}

/// The ledger a vault should have: over its available backups, each chunk's manifest entries
/// and pack entry length.
fn recount(store: &blockvault_store::Store, backups: &[&str]) -> (u64, Chunks) {
    let mut chunks: Chunks = HashMap::new();
    for b in backups {
        let id: BackupId = b.parse().unwrap();
        for block in store.manifest(&id) {
            for e in block.expect("manifest block").entries {
                if let ManifestEntry::Chunk { id, .. } = e {
                    let ChunkId(raw) = id;
                    let size = store
                        .chunk_location(&id)
                        .expect("index read")
                        .unwrap_or_else(|| panic!("chunk of available backup {b} not indexed"))
                        .entry_len();
                    chunks.entry(raw).or_insert((0, size)).0 += 1;
                }
            }
        }
    }
    (chunks.values().map(|c| c.1).sum(), chunks)
}

fn daemon_scenario(
    m: &PowerCutMount,
    bins: &Bins,
    rng: &mut StdRng,
    cuts: usize,
    report: &mut Report,
    seed: u64,
) {
    if cuts == 0 {
        return;
    }
    let disk = tempfile::tempdir().unwrap();
    let data = m.path().join("data");
    let config = disk.path().join("blockvaultd.toml");
    std::fs::write(
        &config,
        format!(
            "[volumes]\nallowed_paths = [{:?}]\n\n[store]\nchunk_min = 256\nchunk_avg = 1024\nchunk_max = 4096\n\n[gc]\ninterval_seconds = 86400\n",
            disk.path().display().to_string()
        ),
    )
    .unwrap();
    let mut d = Daemon {
        bins,
        data: data.clone(),
        config,
        log: disk.path().join("daemon.log"),
        child: None,
    };
    let mut ctx = Ctx {
        seed,
        what: "daemon: setup".into(),
    };
    d.start(&ctx);
    let vault_a = ctx
        .ok(
            d.cli(&["vault", "create", "--name", "a", "--size-gb", "1"]),
            "vault create",
        )
        .trim()
        .to_string();
    let vault_b = ctx
        .ok(
            d.cli(&["vault", "create", "--name", "b", "--size-gb", "1"]),
            "vault create",
        )
        .trim()
        .to_string();
    let mut vols: Vec<Volume> = Vec::new();
    for i in 0..3 {
        // vol2 starts as a copy of vol0 in the other vault: chunks shared across vaults.
        let base = if i == 2 {
            Some(vols[0].data.clone())
        } else {
            None
        };
        let mut v = Volume::new(
            disk.path().join(format!("dvol{i}.img")),
            rng,
            base.as_deref(),
            false,
        );
        let path = v.path.clone();
        v.id = ctx
            .ok(
                d.cli(&[
                    "volume",
                    "register",
                    "--path",
                    path.to_str().unwrap(),
                    "--name",
                    &format!("dvol{i}"),
                ]),
                "volume register",
            )
            .trim()
            .to_string();
        v.vault = if i == 2 {
            vault_b.clone()
        } else {
            vault_a.clone()
        };
        vols.push(v);
    }
    // A cut once set up: vaults, volumes and the store must still be there.
    d.kill();
    report.cut(m, "daemon", "after-setup", false);
    d.start(&ctx);
    for v in &vols {
        ctx.ok(
            d.cli(&["volume", "show", &v.id]),
            "volume show after a cut that followed setup",
        );
    }
    d.stop();
    small_packs(&data.join("store"));
    let out_dir = disk.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();

    let mut committed: Vec<Committed> = Vec::new();
    let mut maybe: Vec<Committed> = Vec::new();
    let mut scale: HashMap<&str, Duration> = HashMap::new();
    let mut n = 0;
    while n < cuts {
        let startup = d.start(&ctx);
        scale.insert("startup", startup);
        let phase = match rng.gen_range(0..100) {
            // Too few committed backups: one runs to the end, then the cut.
            _ if committed.len() < 2 => "idle",
            _ if committed.len() > 5 => "delete",
            0..=44 => "backup",
            45..=64 => "delete",
            65..=79 => "gc",
            80..=89 => "startup",
            _ => "idle",
        };
        ctx.what = format!("daemon cut {} ({phase})", n + 1);
        let mut killed = true;
        match phase {
            "backup" | "idle" => {
                let i = rng.gen_range(0..vols.len());
                vols[i].mutate(rng);
                let cmd = d.cmd(&[
                    "backup",
                    "create",
                    "--volume",
                    &vols[i].id,
                    "--container",
                    &vols[i].vault,
                    "--wait",
                    "--json",
                ]);
                let t = Instant::now();
                let wait = if phase == "idle" {
                    Duration::from_secs(600)
                } else {
                    delay(
                        rng,
                        *scale.get("backup").unwrap_or(&Duration::from_millis(1500)),
                    )
                };
                let mut child = Some(spawn_piped(cmd));
                let out = wait_or(&mut child, wait);
                if let Some(o) = out {
                    scale.insert("backup", t.elapsed());
                    let b = ctx.json(o, "backup create --wait");
                    if b["job"]["state"] != "succeeded" || b["backup"]["status"] != "available" {
                        ctx.fail(&format!("backup did not succeed: {b}"));
                    }
                    killed = false;
                    committed.push(Committed {
                        id: b["backup"]["id"].as_str().unwrap().to_string(),
                        data: Arc::new(vols[i].data.clone()),
                        vol: i,
                    });
                }
                d.kill();
                reap(child);
            }
            "delete" => {
                let c = committed.swap_remove(rng.gen_range(0..committed.len()));
                let cmd = d.cmd(&["backup", "delete", &c.id]);
                let t = Instant::now();
                let mut child = Some(spawn_piped(cmd));
                match wait_or(
                    &mut child,
                    delay(
                        rng,
                        *scale.get("delete").unwrap_or(&Duration::from_millis(500)),
                    ),
                ) {
                    Some(o) => {
                        scale.insert("delete", t.elapsed());
                        ctx.ok(o, "backup delete");
                        killed = false;
                    }
                    None => maybe.push(c),
                }
                d.kill();
                reap(child);
            }
            "gc" => {
                let cmd = d.cmd(&["gc", "--json"]);
                let t = Instant::now();
                let mut child = Some(spawn_piped(cmd));
                if let Some(o) = wait_or(
                    &mut child,
                    delay(rng, *scale.get("gc").unwrap_or(&Duration::from_millis(800))),
                ) {
                    scale.insert("gc", t.elapsed());
                    ctx.ok(o, "gc");
                    killed = false;
                }
                d.kill();
                reap(child);
            }
            "startup" => {
                // Killed while starting: recovery, ledger completion of available backups.
                d.kill();
                d.spawn();
                std::thread::sleep(delay(rng, startup));
                killed = !d.ready();
                d.kill();
            }
            _ => unreachable!(),
        }
        let label = match phase {
            "backup" => "backup+ledger-count",
            "delete" => "delete+ledger-uncount",
            "startup" => "startup-reconcile",
            p => p,
        };
        let r = report.cut(m, "daemon", label, killed);
        ctx.what = format!("{} (killed: {killed}, {r:?})", ctx.what);
        n += 1;

        // Restart: recovery runs; wait for jobs to settle.
        d.start(&ctx);
        let t = Instant::now();
        loop {
            let jobs = ctx.json(d.cli(&["job", "list", "--json"]), "job list");
            let busy = jobs["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["state"] == "queued" || j["state"] == "running");
            if !busy {
                break;
            }
            if t.elapsed() > Duration::from_secs(120) {
                ctx.fail(&format!("jobs still busy after 120 s: {jobs}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let list = ctx.json(
            d.cli(&["backup", "list", "--detail", "--limit", "1000", "--json"]),
            "backup list",
        );
        let rows: HashMap<String, Value> = list["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["id"].as_str().unwrap().to_string(), b.clone()))
            .collect();
        let status = |id: &str| {
            rows.get(id)
                .and_then(|b| b["status"].as_str())
                .map(str::to_string)
        };
        for c in &committed {
            if status(&c.id).as_deref() != Some("available") {
                ctx.fail(&format!(
                    "committed backup {} is {:?} after the cut:\n{list}\n{}",
                    c.id,
                    status(&c.id),
                    d.log_tail()
                ));
            }
        }
        for c in std::mem::take(&mut maybe) {
            if status(&c.id).as_deref() == Some("available") {
                committed.push(c);
            }
        }
        report.interrupted = report
            .interrupted
            .max(rows.values().filter(|b| b["status"] == "error").count());
        let mut used_mb: HashMap<String, i64> = HashMap::new();
        for v in [&vault_a, &vault_b] {
            let s = ctx.json(d.cli(&["vault", "show", v, "--json"]), "vault show");
            used_mb.insert(v.clone(), s["billing"]["used"].as_i64().unwrap());
        }
        d.stop();

        // With the daemon stopped: verify, restore, recount.
        let store_dir = data.join("store");
        check_verify(&ctx, bins, &store_dir, report);
        for c in &committed {
            check_restore(&ctx, bins, &store_dir, c, &out_dir, report);
        }
        let ledger = read_ledger(&data.join("control"));
        let store = blockvault_store::Store::open(&store_dir).expect("open the store");
        for v in [&vault_a, &vault_b] {
            let available: Vec<&str> = rows
                .values()
                .filter(|b| {
                    b["status"] == "available" && b["container"].as_str() == Some(v.as_str())
                })
                .map(|b| b["id"].as_str().unwrap())
                .collect();
            let (want_used, want_chunks) = recount(&store, &available);
            let vid: uuid::Uuid = v.parse().unwrap();
            let (got_used, got_chunks) = ledger.get(&vid).cloned().unwrap_or_default();
            if got_used != want_used || got_chunks != want_chunks {
                let missing = want_chunks
                    .keys()
                    .filter(|k| !got_chunks.contains_key(*k))
                    .count();
                let extra = got_chunks
                    .keys()
                    .filter(|k| !want_chunks.contains_key(*k))
                    .count();
                let differ = want_chunks
                    .iter()
                    .filter(|(k, w)| got_chunks.get(*k).is_some_and(|g| g != *w))
                    .count();
                ctx.fail(&format!(
                    "vault {v}: ledger says {got_used} bytes in {} chunks, recount {want_used} bytes in {} chunks \
                     ({missing} missing, {extra} extra, {differ} with other counts) over {} available backups",
                    got_chunks.len(),
                    want_chunks.len(),
                    available.len()
                ));
            }
            let mb = used_mb[v.as_str()];
            if mb != want_used.div_ceil(1_000_000) as i64 {
                ctx.fail(&format!(
                    "vault {v}: the API reports {mb} MB, recount {want_used} bytes"
                ));
            }
            report.usage_checks += 1;
        }
    }
    d.stop();
}

fn spawn_piped(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn blockvault")
}

/// Waits up to `d` for `child` to exit; returns its output if it did (taking it).
fn wait_or(child: &mut Option<Child>, d: Duration) -> Option<Output> {
    let t = Instant::now();
    loop {
        if child.as_mut().unwrap().try_wait().unwrap().is_some() {
            return Some(child.take().unwrap().wait_with_output().unwrap());
        }
        if t.elapsed() >= d {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Ends a client whose daemon is gone.
fn reap(child: Option<Child>) {
    if let Some(mut c) = child {
        let t = Instant::now();
        while c.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn committed_backups_and_vault_usage_survive_power_cuts() {
    let Some(m) =
        PowerCutMount::mount_or_skip("committed_backups_and_vault_usage_survive_power_cuts")
    else {
        return;
    };
    let bins = bins();
    let seed = std::env::var("BLOCKVAULT_POWERCUT_SEED")
        .ok()
        .map(|s| s.parse().expect("BLOCKVAULT_POWERCUT_SEED is a number"))
        .unwrap_or_else(|| rand::thread_rng().gen());
    let (local_cuts, daemon_cuts) = match std::env::var("BLOCKVAULT_POWERCUT_CUTS") {
        Ok(s) => {
            let (a, b) = s
                .split_once(',')
                .expect("BLOCKVAULT_POWERCUT_CUTS=LOCAL,DAEMON");
            (a.parse().unwrap(), b.parse().unwrap())
        }
        Err(_) => (60, 40),
    };
    say(&format!(
        "power-loss harness: seed {seed} (BLOCKVAULT_POWERCUT_SEED={seed} replays the choices)"
    ));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report::default();
    let t = Instant::now();
    local_scenario(&m, &bins, &mut rng, local_cuts, &mut report, seed);
    let local_time = t.elapsed();
    daemon_scenario(&m, &bins, &mut rng, daemon_cuts, &mut report, seed);
    let s = m.stats();
    let mut lines = vec![format!(
        "power-loss report (seed {seed}): {} cuts in {:.0} s (local {:.0} s), {} of them killed a running command",
        report.total(),
        t.elapsed().as_secs_f64(),
        local_time.as_secs_f64(),
        report.killed
    )];
    for (phase, n) in &report.cuts {
        lines.push(format!("  {phase:<30} {n}"));
    }
    lines.push(format!(
        "  checked: {} byte-exact restores ({} MiB), {} clean verifies, {} vault usage recounts; \
         at most {} interrupted backups listed at once",
        report.restores,
        report.restored_bytes >> 20,
        report.verifies,
        report.usage_checks,
        report.interrupted
    ));
    lines.push(format!(
        "  thrown away by the cuts: {} files' unsynced bytes, {} directories' unsynced entries, {} inodes; \
         {} file fsyncs, {} directory fsyncs seen",
        report.files_reverted, report.dirs_reverted, report.inodes_dropped, s.fsyncs, s.dir_fsyncs
    ));
    say(&lines.join("\n"));
    assert!(report.total() >= local_cuts + daemon_cuts);
    assert!(report.total() >= 50 || local_cuts + daemon_cuts < 50);
}
