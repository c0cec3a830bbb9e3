//! `blockvault`: the operator's command line.
//!
//! `blockvault local ...` drives the data plane directly on a store directory, without the
//! daemon. The CLI is thin: it parses flags, builds options, calls the engine, and prints the
//! result (text, or JSON with `--json`). Progress bars are drawn only when stderr is a terminal.
//!
//! `blockvault volume|backup|job ...` drive a running `blockvaultd` over gRPC (see `remote`);
//! `blockvault vault|policy ...` manage its vaults and backup policies (see `vault`).
//!
//! Exit status: 0 success, 1 error, 3 `verify` or `recover` found damage.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use blockvault_core::{BackupId, BackupRecord, ChunkerParams, Compression, VolumeId};
use blockvault_engine::{
    BackupOptions, Cbt, Engine, EngineOptions, OnMismatch, Progress, RecoverFrom, RestoreOptions,
};
use blockvault_store::{Backend, S3Settings, StoreConfig};
use clap::{Args, Parser, Subcommand};

mod cbt;
mod client;
mod remote;
mod render;
mod vault;

use render::{human, print_json};

#[derive(Parser)]
#[command(
    name = "blockvault",
    version,
    about = "Backup engine for block volumes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Operate directly on a local store (no daemon).
    #[command(subcommand)]
    Local(Local),
    /// Manage volumes registered with blockvaultd.
    Volume(remote::VolumeArgs),
    /// Create, list, restore and delete backups through blockvaultd.
    Backup(remote::BackupArgs),
    /// Show, follow and cancel blockvaultd's background jobs.
    Job(remote::JobArgs),
    /// Manage vaults: capacity, usage threshold, bound resources, backup policy, lock.
    Vault(vault::VaultArgs),
    /// Manage backup policies: schedule, full-backup cadence and retention.
    Policy(vault::PolicyArgs),
    /// Run garbage collection in blockvaultd now (admins only; it also runs on a schedule).
    Gc(remote::GcArgs),
}

#[derive(Args)]
struct StoreArg {
    /// Store directory.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Master key file (default: the one recorded at `init`).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Worker threads for hashing, compression and encryption (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Where `local init` puts the packs: the store directory (the default) or an S3 bucket.
/// The store directory keeps the index and `store.json`, which records the bucket (never the
/// credentials); every other `local` command reads it from there.
#[derive(Args)]
struct BucketArgs {
    /// Keep packs in an S3-compatible bucket: s3://BUCKET[/PREFIX].
    #[arg(long, value_name = "URL")]
    bucket: Option<String>,
    /// S3 endpoint, e.g. http://127.0.0.1:7480 for a local Ceph RGW (default: AWS).
    #[arg(long, value_name = "URL", requires = "bucket")]
    endpoint: Option<String>,
    /// S3 region used for signing.
    #[arg(long, default_value = "us-east-1", requires = "bucket")]
    region: String,
    /// Virtual-hosted-style addressing (BUCKET.endpoint) instead of path style.
    #[arg(long, requires = "bucket")]
    virtual_hosted: bool,
    /// File (mode 0600) with aws_access_key_id and aws_secret_access_key lines; without it
    /// the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables are used.
    #[arg(long, value_name = "FILE", requires = "bucket")]
    credentials_file: Option<PathBuf>,
}

impl BucketArgs {
    fn backend(self) -> Result<Backend> {
        let Some(url) = self.bucket else {
            return Ok(Backend::Local);
        };
        let mut s = S3Settings::from_url(&url)?;
        s.endpoint = self.endpoint;
        s.region = self.region;
        s.path_style = !self.virtual_hosted;
        s.credentials_file = self
            .credentials_file
            .map(|p| std::path::absolute(&p).with_context(|| p.display().to_string()))
            .transpose()?;
        s.validate()?;
        Ok(Backend::S3(s))
    }
}

#[derive(Subcommand)]
enum Local {
    /// Create a store. With --key-file, encrypted volumes are possible; a missing key file is
    /// created (mode 0600) with a new random master key.
    Init {
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// FastCDC minimum chunk size in bytes.
        #[arg(long, default_value_t = ChunkerParams::default().min_size)]
        chunk_min: u32,
        /// FastCDC average chunk size in bytes.
        #[arg(long, default_value_t = ChunkerParams::default().avg_size)]
        chunk_avg: u32,
        /// FastCDC maximum chunk size in bytes.
        #[arg(long, default_value_t = ChunkerParams::default().max_size)]
        chunk_max: u32,
        /// zstd level (-7..=19).
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        zstd_level: i32,
        /// Store chunks uncompressed.
        #[arg(long)]
        no_compression: bool,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Back up a block device or raw image; prints the new backup's id (or its record with --json).
    Backup {
        #[command(flatten)]
        store: StoreArg,
        /// Volume id (letters, digits, '.', '_', '-', ':').
        #[arg(long)]
        volume: String,
        /// Block device or image file to read.
        #[arg(long, value_name = "PATH")]
        source: PathBuf,
        /// Record as an incremental of --parent, or of the volume's newest backup.
        #[arg(long)]
        incremental: bool,
        /// Parent backup id for --incremental.
        #[arg(long, requires = "incremental")]
        parent: Option<String>,
        /// Encrypt this volume (a volume with a data key is always encrypted).
        #[arg(long)]
        encrypt: bool,
        #[command(flatten)]
        cbt: cbt::CbtArgs,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup to a block device or file (a missing file is created, sparse).
    Restore {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        backup: String,
        #[arg(long, value_name = "PATH")]
        target: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List backups.
    List {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
    /// Check every chunk of one backup, or of the whole store. Exit status 3 on damage.
    Verify {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        backup: Option<String>,
        /// Whole store only: skip packs a verify found intact less than this many seconds ago
        /// (0: read every pack). Intact packs are remembered as they are checked.
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 0,
            conflicts_with = "backup"
        )]
        period: u64,
        #[arg(long)]
        json: bool,
    },
    /// Delete a backup (its space is reclaimed by `gc`).
    Delete {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        backup: String,
    },
    /// Reclaim space of deleted and failed backups.
    Gc {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a store's index from its packs and catalog. Without --bucket: repair the store
    /// in --store (its damaged index is moved aside, never deleted). With --bucket: recover a
    /// lost node's store from the bucket into the empty directory --store.
    Recover {
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// The store's master key file (required when the store has one).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        #[command(flatten)]
        bucket: BucketArgs,
        #[arg(long)]
        json: bool,
    },
}

/// A terminal progress bar; hidden when stderr is not a terminal.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn bytes(msg: &'static str) -> Arc<Bar> {
        let pb = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_message(msg);
        Arc::new(Bar(pb))
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn engine(s: &StoreArg) -> Result<Engine> {
    let opts = EngineOptions {
        threads: s.threads,
        key_file: s.key_file.clone(),
        ..EngineOptions::default()
    };
    Engine::open(&s.store, opts).with_context(|| format!("opening store {}", s.store.display()))
}

fn parse_backup(s: &str) -> Result<BackupId> {
    Ok(s.parse::<BackupId>()?)
}

fn print_list(records: &[BackupRecord]) {
    println!(
        "{:<36}  {:<16}  {:<11}  {:>10}  {:>10}  {:<4}  created",
        "id", "volume", "state", "size", "stored", "incr"
    );
    for r in records {
        println!(
            "{:<36}  {:<16}  {:<11}  {:>10}  {:>10}  {:<4}  {}",
            r.id.to_string(),
            r.volume_id.as_str(),
            r.state.as_str(),
            human(r.size),
            human(r.stored_bytes),
            if r.is_incremental { "yes" } else { "no" },
            r.created_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        );
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cmd = match cli.cmd {
        Top::Local(cmd) => cmd,
        Top::Volume(a) => return remote::run(remote::Remote::Volume(a)),
        Top::Backup(a) => return remote::run(remote::Remote::Backup(a)),
        Top::Job(a) => return remote::run(remote::Remote::Job(a)),
        Top::Vault(a) => return remote::run(remote::Remote::Vault(a)),
        Top::Policy(a) => return remote::run(remote::Remote::Policy(a)),
        Top::Gc(a) => return remote::run(remote::Remote::Gc(a)),
    };
    match cmd {
        Local::Init {
            store,
            key_file,
            chunk_min,
            chunk_avg,
            chunk_max,
            zstd_level,
            no_compression,
            bucket,
        } => {
            let config = StoreConfig {
                chunker: ChunkerParams {
                    min_size: chunk_min,
                    avg_size: chunk_avg,
                    max_size: chunk_max,
                },
                compression: if no_compression {
                    Compression::None
                } else {
                    Compression::Zstd { level: zstd_level }
                },
                backend: bucket.backend()?,
                ..StoreConfig::default()
            };
            let config_backend = config.backend.describe();
            Engine::init(&store, config, key_file.as_deref())
                .with_context(|| format!("initializing store {}", store.display()))?;
            eprintln!(
                "initialized store {} (packs: {})",
                store.display(),
                config_backend
            );
        }
        Local::Backup {
            store,
            volume,
            source,
            incremental,
            parent,
            encrypt,
            cbt,
            json,
        } => {
            let e = engine(&store)?;
            let mut o = BackupOptions::new(VolumeId::new(volume)?, source);
            o.incremental = incremental;
            o.parent = parent.as_deref().map(parse_backup).transpose()?;
            o.encrypt = encrypt;
            o.cbt = cbt.read_extents()?.map(|extents| Cbt {
                extents: extents.into(),
                sample: cbt.sample(),
                on_mismatch: if cbt.full_read_on_mismatch() {
                    OnMismatch::FullRead
                } else {
                    OnMismatch::Fail
                },
            });
            let bar = Bar::bytes("backup");
            o.progress = bar.clone();
            let rec = e.backup(o)?;
            drop(bar);
            if json {
                print_json(&rec)?;
            } else {
                if let Some(c) = &rec.cbt {
                    eprintln!(
                        "changed-block tracking: {} changed, {} read of {}, {} sampled{}",
                        human(c.changed_bytes),
                        human(c.read_bytes),
                        human(rec.size),
                        human(c.sampled_bytes),
                        c.mismatch_offset
                            .map(|at| format!(
                                " (differed from the parent at byte {at}: read everything)"
                            ))
                            .unwrap_or_default()
                    );
                }
                println!("{}", rec.id);
            }
        }
        Local::Restore {
            store,
            backup,
            target,
            json,
        } => {
            let e = engine(&store)?;
            let mut o = RestoreOptions::new(parse_backup(&backup)?, target);
            let bar = Bar::bytes("restore");
            o.progress = bar.clone();
            let report = e.restore(o)?;
            drop(bar);
            if json {
                print_json(&report)?;
            } else {
                eprintln!(
                    "restored {} ({}) to {}",
                    report.backup_id,
                    human(report.bytes),
                    report.target
                );
            }
        }
        Local::List { store, json } => {
            let records = engine(&store)?.list()?;
            if json {
                print_json(&records)?;
            } else {
                print_list(&records);
            }
        }
        Local::Verify {
            store,
            backup,
            period,
            json,
        } => {
            let e = engine(&store)?;
            let backup = backup.as_deref().map(parse_backup).transpose()?;
            let bar = Bar::bytes("verify");
            let report = match backup {
                Some(id) => e.verify(Some(id), bar.as_ref())?,
                None => {
                    e.verify_store_within(std::time::Duration::from_secs(period), bar.as_ref())?
                }
            };
            drop(bar);
            if json {
                print_json(&report)?;
            } else {
                for p in report.corrupt.iter().chain(&report.missing) {
                    let b: Vec<String> = p.backups.iter().map(|b| b.to_string()).collect();
                    println!(
                        "DAMAGED chunk {}: {} (backups: {})",
                        p.chunk,
                        p.problem,
                        b.join(", ")
                    );
                }
                for m in &report.manifests {
                    println!("DAMAGED manifest of backup {}: {}", m.backup, m.problem);
                }
                if report.packs_skipped > 0 {
                    println!(
                        "skipped {} pack(s) found intact within the period",
                        report.packs_skipped
                    );
                }
                println!(
                    "checked {} chunks ({}) of {} backup(s): {} corrupt, {} missing, {} bad \
                     manifest(s)",
                    report.chunks_checked,
                    human(report.bytes_checked),
                    report.backups_checked,
                    report.corrupt.len(),
                    report.missing.len(),
                    report.manifests.len()
                );
            }
            if !report.is_clean() {
                return Ok(ExitCode::from(3));
            }
        }
        Local::Delete { store, backup } => {
            let id = parse_backup(&backup)?;
            engine(&store)?.delete(&id)?;
            eprintln!("deleted {id}; run `blockvault local gc` to reclaim its space");
        }
        Local::Recover {
            store,
            key_file,
            bucket,
            json,
        } => {
            let from = match bucket.backend()? {
                Backend::Local => RecoverFrom::Dir,
                b => RecoverFrom::Backend(b),
            };
            let (_, r) =
                Engine::recover(&store, from, key_file.as_deref(), EngineOptions::default())
                    .with_context(|| format!("recovering store {}", store.display()))?;
            if json {
                print_json(&r)?;
            } else {
                if let Some(p) = &r.index_moved_to {
                    eprintln!("the old index was moved to {}", p.display());
                }
                for (p, why) in &r.packs_unreadable {
                    println!("UNREADABLE pack {p}: {why}");
                }
                for (name, why) in r.backups_damaged.iter().chain(&r.keys_damaged) {
                    println!("DAMAGED {name}: {why}");
                }
                for b in r.backups.iter().filter(|b| b.missing_chunks > 0) {
                    println!(
                        "INCOMPLETE backup {}: {} chunks are in no pack",
                        b.record.id, b.missing_chunks
                    );
                }
                println!(
                    "recovered {} backup(s), {} volume key(s), {} chunk entries in {} packs \
                     ({} from trailers, {} scanned) in {:.1} s",
                    r.backups.len(),
                    r.keys,
                    r.chunk_entries,
                    r.packs,
                    r.packs_from_trailer,
                    r.packs_scanned.len(),
                    r.seconds
                );
            }
            let damaged = !r.packs_unreadable.is_empty()
                || !r.backups_damaged.is_empty()
                || !r.keys_damaged.is_empty()
                || r.backups.iter().any(|b| b.missing_chunks > 0);
            if damaged {
                return Ok(ExitCode::from(3));
            }
        }
        Local::Gc { store, json } => {
            let r = engine(&store)?.gc()?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "reclaimed {} ({} packs deleted, {} rewritten, {} chunks removed)",
                    human(r.reclaimed_bytes()),
                    r.packs_deleted + r.orphan_packs_deleted,
                    r.packs_rewritten,
                    r.chunks_removed
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Like other Unix tools, end quietly when the reader of our output goes away
/// (`blockvault ... | head`): Rust starts with SIGPIPE ignored, which turns that write into a
/// panic. The one `unsafe` of the CLI (the workspace denies it elsewhere).
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: `signal` with `SIG_DFL` has no memory-safety preconditions; it is called first
    // thing in `main`, before any other thread exists, so no handler state is shared.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    blockvault_engine::memory::tune_allocator();
    default_sigpipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
