//! `blockvault volume|backup|job|gc ...`: drive a running `blockvaultd` over gRPC (connection in
//! `client.rs`, output in `render.rs`); `vault` and `policy` commands are in `vault.rs`.
//! gRPC errors are reported as `CODE_NAME: message` (e.g. `NOT_FOUND: backup ... not found`).
use std::io::{IsTerminal, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use blockvault_proto::v1::{
    jobs_client::JobsClient, BackupRecord, CancelJobRequest, CreateBackupRequest,
    DeleteBackupRequest, ExportRecordRequest, GetBackupRequest, GetJobRequest, GetVolumeRequest,
    Job, ListBackupsRequest, ListJobsRequest, ListVolumesRequest, Metadata, RegisterVolumeRequest,
    RestoreBackupRequest, UnregisterVolumeRequest, UpdateBackupRequest, UpdateVolumeRequest,
    WatchJobRequest,
};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::cbt::CbtArgs;
use crate::client::{connect, grpc, parse_kv, tags, Clients, Conn, Svc};
use crate::render::{cell, human, print_json, show, value};
use crate::vault::{PolicyArgs, VaultArgs};

/// `blockvault volume ...`.
#[derive(Args, Debug)]
pub struct VolumeArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: VolumeCmd,
}

/// `blockvault backup ...`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: BackupCmd,
}

/// `blockvault gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    conn: Conn,
}

/// `blockvault job ...`.
#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: JobCmd,
}

/// Volume commands.
#[derive(Subcommand, Debug)]
enum VolumeCmd {
    /// Register a block device or raw image file as a volume; prints its id.
    Register {
        /// Block device or image file, as seen by the daemon.
        #[arg(long, value_name = "PATH")]
        path: PathBuf,
        /// Human name of the volume.
        #[arg(long, value_name = "N")]
        name: Option<String>,
        /// UUID to register the volume under (default: a new one).
        #[arg(long, value_name = "UUID")]
        id: Option<String>,
        /// Encrypt the volume's backups under a per-volume data key.
        #[arg(long)]
        encrypted: bool,
        /// Tag (repeatable, at most 10, unique keys); vault bind rules match tags.
        #[arg(long = "tag", value_name = "K=V", value_parser = parse_kv)]
        tags: Vec<(String, String)>,
        /// The server this volume belongs to (vault server resources group its volumes).
        #[arg(long, value_name = "S")]
        server_id: Option<String>,
    },
    /// List the project's volumes.
    List {
        /// Every project's volumes (admins only).
        #[arg(long)]
        all_tenants: bool,
    },
    /// Show one volume.
    Show {
        /// UUID of the volume.
        id: String,
    },
    /// Rename a volume, set its status, tags or server.
    Update {
        /// UUID of the volume.
        id: String,
        /// New name.
        #[arg(long, value_name = "N")]
        name: Option<String>,
        /// New status.
        #[arg(long, value_name = "S", value_parser = ["available", "in-use"])]
        status: Option<String>,
        /// Tag (repeatable); the given tags replace all the old ones.
        #[arg(long = "tag", value_name = "K=V", value_parser = parse_kv)]
        tags: Vec<(String, String)>,
        /// Remove all tags (combined with --tag: keep only the given tags).
        #[arg(long)]
        clear_tags: bool,
        /// New server id ("" for none).
        #[arg(long, value_name = "S")]
        server_id: Option<String>,
    },
    /// Forget a volume (its device and its backups stay).
    Unregister {
        /// UUID of the volume.
        id: String,
    },
}

/// Backup commands.
#[derive(Subcommand, Debug)]
enum BackupCmd {
    /// Start a backup of a volume; prints the backup id and the job id.
    Create {
        /// UUID of the volume to back up.
        #[arg(long, value_name = "ID")]
        volume: String,
        /// Name of the backup.
        #[arg(long, value_name = "N")]
        name: Option<String>,
        /// Description of the backup.
        #[arg(long, value_name = "D")]
        description: Option<String>,
        /// Container name, recorded with the backup.
        #[arg(long, value_name = "C")]
        container: Option<String>,
        /// Incremental backup on top of the volume's newest available backup.
        #[arg(long)]
        incremental: bool,
        /// Allow backing up an in-use volume.
        #[arg(long)]
        force: bool,
        /// Metadata entry (repeatable).
        #[arg(long, value_name = "K=V", value_parser = parse_kv)]
        metadata: Vec<(String, String)>,
        /// Read the data from this registered snapshot volume.
        #[arg(long, value_name = "ID")]
        snapshot: Option<String>,
        #[command(flatten)]
        cbt: CbtArgs,
        /// Watch the job until it ends; exit status 1 unless it succeeds.
        #[arg(long)]
        wait: bool,
    },
    /// List backups as a table (id, name, status, size, volume), or the response with --json.
    List {
        /// Ask for the detail view (the text table always uses it).
        #[arg(long)]
        detail: bool,
        /// Sort keys, `key[:asc|desc][,...]` (default created_at:desc,id:desc).
        #[arg(long, value_name = "S")]
        sort: Option<String>,
        /// At most this many backups.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Skip this many backups.
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: u32,
        /// Start after the backup with this id.
        #[arg(long, value_name = "ID")]
        marker: Option<String>,
        /// Also report the total number of matching backups.
        #[arg(long)]
        with_count: bool,
        /// Every project's backups (admins only).
        #[arg(long)]
        all_tenants: bool,
        /// Filter (repeatable): status=S, volume_id=ID or name=N.
        #[arg(long, value_name = "K=V", value_parser = parse_kv)]
        filter: Vec<(String, String)>,
    },
    /// Show one backup.
    Show {
        /// UUID of the backup.
        id: String,
    },
    /// Change a backup's name, description or metadata.
    Update {
        /// UUID of the backup.
        id: String,
        /// New name.
        #[arg(long, value_name = "N")]
        name: Option<String>,
        /// New description.
        #[arg(long, value_name = "D")]
        description: Option<String>,
        /// Metadata entry (repeatable); the given entries replace all the old ones.
        #[arg(long, value_name = "K=V", value_parser = parse_kv)]
        metadata: Vec<(String, String)>,
        /// Remove all metadata (combined with --metadata: keep only the given entries).
        #[arg(long)]
        clear_metadata: bool,
    },
    /// Delete a backup (refused while incrementals depend on it).
    Delete {
        /// UUID of the backup.
        id: String,
    },
    /// Restore a backup to an existing volume or to a new one; prints the volume id and job id.
    Restore {
        /// UUID of the backup.
        id: String,
        /// Restore to this registered volume.
        #[arg(long, value_name = "ID", conflicts_with = "name")]
        volume: Option<String>,
        /// Restore to a new volume with this name (default restore_backup_<backup id>).
        #[arg(long, value_name = "NEW")]
        name: Option<String>,
        /// Watch the job until it ends; exit status 1 unless it succeeds.
        #[arg(long)]
        wait: bool,
    },
    /// Print a backup's exported record as JSON, for `backup import` on another daemon.
    Export {
        /// UUID of the backup.
        id: String,
    },
    /// Import an exported record; prints the backup id.
    Import {
        /// JSON file written by `backup export` (`-` for stdin).
        #[arg(long, value_name = "F")]
        file: PathBuf,
    },
}

/// Job commands.
#[derive(Subcommand, Debug)]
enum JobCmd {
    /// Show one job.
    Show {
        /// UUID of the job.
        id: String,
    },
    /// List the project's jobs, newest first.
    List {
        /// Every project's jobs (admins only).
        #[arg(long)]
        all_tenants: bool,
        /// Only jobs in this state (queued, running, succeeded, failed, cancelled).
        #[arg(long, value_name = "S")]
        state: Option<String>,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// UUID of the job.
        id: String,
    },
    /// Follow a job until it ends; exit status 0 only if it succeeded. With --json, prints every
    /// update as one JSON line.
    Watch {
        /// UUID of the job.
        id: String,
    },
}

/// A parsed remote command.
pub enum Remote {
    /// `blockvault volume ...`.
    Volume(VolumeArgs),
    /// `blockvault backup ...`.
    Backup(BackupArgs),
    /// `blockvault job ...`.
    Job(JobArgs),
    /// `blockvault vault ...`.
    Vault(VaultArgs),
    /// `blockvault policy ...`.
    Policy(PolicyArgs),
    /// `blockvault gc`.
    Gc(GcArgs),
}

/// Runs a remote command on a single-threaded tokio runtime.
pub fn run(cmd: Remote) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        match cmd {
            Remote::Volume(a) => volume(&a.conn, a.cmd).await,
            Remote::Backup(a) => backup(&a.conn, a.cmd).await,
            Remote::Job(a) => job(&a.conn, a.cmd).await,
            Remote::Vault(a) => crate::vault::vault(a).await,
            Remote::Policy(a) => crate::vault::policy(a).await,
            Remote::Gc(a) => gc(&a.conn).await,
        }
    })
}

/// `blockvault gc`: runs garbage collection in the daemon now (admins only).
async fn gc(conn: &Conn) -> Result<ExitCode> {
    let mut m = connect(conn).await?.maintenance;
    let r = m
        .run_gc(blockvault_proto::v1::RunGcRequest {})
        .await
        .map_err(grpc)?
        .into_inner();
    let v = json!({
        "reclaimed_bytes": r.reclaimed_bytes,
        "dead_refs": r.dead_refs,
        "deletes_finished": r.deletes_finished,
        "chunks_removed": r.chunks_removed,
        "packs_deleted": r.packs_deleted,
        "packs_rewritten": r.packs_rewritten,
        "orphan_packs_deleted": r.orphan_packs_deleted,
        "pack_bytes_before": r.pack_bytes_before,
        "pack_bytes_after": r.pack_bytes_after,
        "seconds": r.seconds,
    });
    if conn.json {
        print_json(&v)?;
    } else {
        println!(
            "reclaimed {} ({} chunks, {} packs deleted, {} rewritten) in {:.2} s",
            human(r.reclaimed_bytes),
            r.chunks_removed,
            r.packs_deleted,
            r.packs_rewritten,
            r.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------- output

// -------------------------------------------------------------------------------- commands

/// Runs a `volume` subcommand.
async fn volume(conn: &Conn, cmd: VolumeCmd) -> Result<ExitCode> {
    let mut c = connect(conn).await?.volumes;
    let json = conn.json;
    match cmd {
        VolumeCmd::Register {
            path,
            name,
            id,
            encrypted,
            tags: t,
            server_id,
        } => {
            let v = c
                .register(RegisterVolumeRequest {
                    id: id.unwrap_or_default(),
                    name: name.unwrap_or_default(),
                    path: path.as_os_str().as_bytes().to_vec(),
                    encrypted,
                    tags: tags(t),
                    server_id: server_id.unwrap_or_default(),
                })
                .await
                .map_err(grpc)?
                .into_inner();
            if json {
                print_json(&v)?;
            } else {
                println!("{}", v.id);
            }
        }
        VolumeCmd::List { all_tenants } => {
            // Every page, following the daemon's markers.
            let mut vs = Vec::new();
            let mut marker = String::new();
            loop {
                let r = c
                    .list(ListVolumesRequest {
                        all_tenants,
                        marker,
                        ..Default::default()
                    })
                    .await
                    .map_err(grpc)?
                    .into_inner();
                vs.extend(r.volumes);
                if r.next_marker.is_empty() {
                    break;
                }
                marker = r.next_marker;
            }
            if json {
                print_json(&json!({ "volumes": vs }))?;
            } else {
                println!(
                    "{:<36}  {:<20}  {:<16}  {:>10}  {:<3}  path",
                    "id", "name", "status", "size", "enc"
                );
                for v in &vs {
                    println!(
                        "{:<36}  {:<20}  {:<16}  {:>10}  {:<3}  {}",
                        v.id,
                        cell(&v.name, 20),
                        v.status,
                        human(v.size_bytes),
                        if v.encrypted { "yes" } else { "no" },
                        String::from_utf8_lossy(&v.path)
                    );
                }
            }
        }
        VolumeCmd::Show { id } => {
            let v = c
                .get(GetVolumeRequest { volume_id: id })
                .await
                .map_err(grpc)?
                .into_inner();
            show(&v, json)?;
        }
        VolumeCmd::Update {
            id,
            name,
            status,
            tags: t,
            clear_tags,
            server_id,
        } => {
            let replace_tags = clear_tags || !t.is_empty();
            let v = c
                .update(UpdateVolumeRequest {
                    volume_id: id,
                    name,
                    status,
                    tags: tags(t),
                    replace_tags,
                    server_id,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            show(&v, json)?;
        }
        VolumeCmd::Unregister { id } => {
            c.unregister(UnregisterVolumeRequest {
                volume_id: id.clone(),
            })
            .await
            .map_err(grpc)?;
            if json {
                print_json(&json!({ "id": id, "unregistered": true }))?;
            } else {
                eprintln!("unregistered volume {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a `backup` subcommand.
async fn backup(conn: &Conn, cmd: BackupCmd) -> Result<ExitCode> {
    let Clients {
        mut backups,
        mut jobs,
        ..
    } = connect(conn).await?;
    let json = conn.json;
    match cmd {
        BackupCmd::Create {
            volume,
            name,
            description,
            container,
            incremental,
            force,
            metadata,
            snapshot,
            cbt,
            wait,
        } => {
            let changed_extents = match cbt.read_extents()? {
                Some(json) => String::from_utf8(json)
                    .map_err(|_| anyhow!("--changed-extents: the file is not UTF-8"))?,
                None => String::new(),
            };
            let r = backups
                .create(CreateBackupRequest {
                    volume_id: volume,
                    name: name.unwrap_or_default(),
                    description: description.unwrap_or_default(),
                    container: container.unwrap_or_default(),
                    incremental,
                    force,
                    metadata: metadata.into_iter().collect(),
                    availability_zone: String::new(),
                    snapshot_id: snapshot.unwrap_or_default(),
                    changed_extents,
                    cbt_sample: cbt.sample(),
                    cbt_full_read_on_mismatch: cbt.full_read_on_mismatch(),
                })
                .await
                .map_err(grpc)?
                .into_inner();
            let backup_id = r.backup.as_ref().map(|b| b.id.clone()).unwrap_or_default();
            let final_job = if wait {
                Some(watch(&mut jobs, &r.job_id, Lines::Stderr).await?)
            } else {
                None
            };
            if json {
                let mut out = value(&r)?;
                if let Some(j) = &final_job {
                    // The backup as it is now, after the job.
                    if let Ok(b) = backups
                        .get(GetBackupRequest {
                            backup_id: backup_id.clone(),
                        })
                        .await
                    {
                        out["backup"] = value(b.get_ref())?;
                    }
                    out["job"] = value(j)?;
                }
                print_json(&out)?;
            } else {
                println!("backup_id {backup_id}");
                println!("job_id {}", r.job_id);
            }
            if let Some(j) = final_job {
                return Ok(job_outcome(&j));
            }
        }
        BackupCmd::List {
            detail,
            sort,
            limit,
            offset,
            marker,
            with_count,
            all_tenants,
            filter,
        } => {
            let r = backups
                .list(ListBackupsRequest {
                    // The table needs the detail view.
                    detail: detail || !json,
                    sort: sort.unwrap_or_default(),
                    limit,
                    offset,
                    marker: marker.unwrap_or_default(),
                    with_count,
                    all_tenants,
                    filters: filter.into_iter().collect(),
                })
                .await
                .map_err(grpc)?
                .into_inner();
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "{:<36}  {:<20}  {:<14}  {:>10}  {:<36}  incr",
                    "id", "name", "status", "size", "volume"
                );
                for b in &r.backups {
                    println!(
                        "{:<36}  {:<20}  {:<14}  {:>10}  {:<36}  {}",
                        b.id,
                        cell(&b.name, 20),
                        b.status,
                        human(b.size_bytes),
                        b.volume_id,
                        if b.is_incremental { "yes" } else { "no" }
                    );
                }
                if let Some(n) = r.count {
                    println!("{n} matching backup(s)");
                }
            }
        }
        BackupCmd::Show { id } => {
            let b = backups
                .get(GetBackupRequest { backup_id: id })
                .await
                .map_err(grpc)?
                .into_inner();
            show(&b, json)?;
        }
        BackupCmd::Update {
            id,
            name,
            description,
            metadata,
            clear_metadata,
        } => {
            let metadata = (clear_metadata || !metadata.is_empty()).then(|| Metadata {
                items: metadata.into_iter().collect(),
            });
            let b = backups
                .update(UpdateBackupRequest {
                    backup_id: id,
                    name,
                    description,
                    metadata,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            show(&b, json)?;
        }
        BackupCmd::Delete { id } => {
            backups
                .delete(DeleteBackupRequest {
                    backup_id: id.clone(),
                })
                .await
                .map_err(grpc)?;
            if json {
                print_json(&json!({ "id": id, "deleted": true }))?;
            } else {
                eprintln!("deleted backup {id}");
            }
        }
        BackupCmd::Restore {
            id,
            volume,
            name,
            wait,
        } => {
            let r = backups
                .restore(RestoreBackupRequest {
                    backup_id: id,
                    volume_id: volume.unwrap_or_default(),
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(grpc)?
                .into_inner();
            let final_job = if wait {
                Some(watch(&mut jobs, &r.job_id, Lines::Stderr).await?)
            } else {
                None
            };
            if json {
                let mut out = value(&r)?;
                if let Some(j) = &final_job {
                    out["job"] = value(j)?;
                }
                print_json(&out)?;
            } else {
                println!("volume_id {}", r.volume_id);
                println!("job_id {}", r.job_id);
            }
            if let Some(j) = final_job {
                return Ok(job_outcome(&j));
            }
        }
        BackupCmd::Export { id } => {
            let r = backups
                .export_record(ExportRecordRequest { backup_id: id })
                .await
                .map_err(grpc)?
                .into_inner();
            print_json(&r)?;
        }
        BackupCmd::Import { file } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the record from stdin")?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let record = parse_record(&text, &file)?;
            let b = backups
                .import_record(record)
                .await
                .map_err(grpc)?
                .into_inner();
            if json {
                print_json(&b)?;
            } else {
                println!("{}", b.id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses a record written by `backup export`.
fn parse_record(text: &str, file: &Path) -> Result<BackupRecord> {
    let v: Value =
        serde_json::from_str(text).with_context(|| format!("{} is not JSON", file.display()))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{}: missing string field {k:?}", file.display()))
    };
    Ok(BackupRecord {
        backup_service: field("backup_service")?,
        backup_url: field("backup_url")?,
    })
}

/// Runs a `job` subcommand.
async fn job(conn: &Conn, cmd: JobCmd) -> Result<ExitCode> {
    let mut c = connect(conn).await?.jobs;
    let json = conn.json;
    match cmd {
        JobCmd::Show { id } => {
            let j = c
                .get(GetJobRequest { job_id: id })
                .await
                .map_err(grpc)?
                .into_inner();
            show(&j, json)?;
        }
        JobCmd::List { all_tenants, state } => {
            let mut js = Vec::new();
            let mut marker = String::new();
            let state = state.unwrap_or_default();
            loop {
                let r = c
                    .list(ListJobsRequest {
                        all_tenants,
                        state: state.clone(),
                        marker,
                        ..Default::default()
                    })
                    .await
                    .map_err(grpc)?
                    .into_inner();
                js.extend(r.jobs);
                if r.next_marker.is_empty() {
                    break;
                }
                marker = r.next_marker;
            }
            if json {
                print_json(&json!({ "jobs": js }))?;
            } else {
                println!(
                    "{:<36}  {:<7}  {:<9}  {:>21}  {:<36}  created",
                    "id", "kind", "state", "progress", "backup"
                );
                for j in &js {
                    println!(
                        "{:<36}  {:<7}  {:<9}  {:>21}  {:<36}  {}",
                        j.id,
                        j.kind,
                        j.state,
                        format!("{}/{}", human(j.bytes_done), human(j.bytes_total)),
                        cell(&j.backup_id, 36),
                        j.created_at
                    );
                }
            }
        }
        JobCmd::Cancel { id } => {
            let j = c
                .cancel(CancelJobRequest { job_id: id })
                .await
                .map_err(grpc)?
                .into_inner();
            show(&j, json)?;
        }
        JobCmd::Watch { id } => {
            let lines = if json { Lines::Json } else { Lines::Stdout };
            let j = watch(&mut c, &id, lines).await?;
            if !json && std::io::stderr().is_terminal() {
                // The bar is gone; say how it ended.
                println!("{}", state_line(&j));
            }
            return Ok(job_outcome(&j));
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ----------------------------------------------------------------------------------- watch

/// Where `watch` reports when no progress bar is drawn (or, for JSON, in addition to it).
#[derive(Clone, Copy, PartialEq)]
enum Lines {
    /// A line per state change on stdout.
    Stdout,
    /// A line per state change on stderr (stdout is kept for the command's result).
    Stderr,
    /// Every update as a JSON line on stdout.
    Json,
}

/// One line describing a job's state.
fn state_line(j: &Job) -> String {
    let mut s = format!(
        "job {} {} {} {}/{}",
        j.id,
        j.kind,
        j.state,
        human(j.bytes_done),
        human(j.bytes_total)
    );
    if !j.fail_reason.is_empty() {
        s.push_str(": ");
        s.push_str(&j.fail_reason);
    }
    s
}

/// A progress bar fed from the server's progress reports.
struct JobBar(indicatif::ProgressBar);

impl JobBar {
    fn new() -> JobBar {
        let pb = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{wide_bar}] {bytes}/{total_bytes} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        JobBar(pb)
    }

    fn update(&self, j: &Job) {
        self.0.set_prefix(format!("{} {}", j.kind, j.state));
        self.0.set_length(j.bytes_total);
        self.0.set_position(j.bytes_done);
        if matches!(
            j.state.as_str(),
            "queued" | "succeeded" | "failed" | "cancelled"
        ) {
            self.0.set_message("");
            return;
        }
        let mut msg = format!("{}/s", human(j.rate_bytes_per_sec.max(0.0) as u64));
        if let Some(eta) = j.eta_seconds.filter(|e| e.is_finite() && *e >= 0.0) {
            msg.push_str(&format!(
                " eta {}",
                indicatif::HumanDuration(Duration::from_secs_f64(eta))
            ));
        }
        self.0.set_message(msg);
    }
}

impl Drop for JobBar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Follows `Jobs.Watch` until the stream ends; returns the last state seen.
async fn watch(c: &mut JobsClient<Svc>, id: &str, lines: Lines) -> Result<Job> {
    let mut stream = c
        .watch(WatchJobRequest {
            job_id: id.to_string(),
        })
        .await
        .map_err(grpc)?
        .into_inner();
    let bar = std::io::stderr().is_terminal().then(JobBar::new);
    let mut last: Option<Job> = None;
    while let Some(j) = stream.message().await.map_err(grpc)? {
        if let Some(b) = &bar {
            b.update(&j);
        }
        let changed = !matches!(&last, Some(l) if l.state == j.state);
        match lines {
            Lines::Json => println!("{}", serde_json::to_string(&j)?),
            Lines::Stdout if bar.is_none() && changed => println!("{}", state_line(&j)),
            Lines::Stderr if bar.is_none() && changed => eprintln!("{}", state_line(&j)),
            _ => {}
        }
        last = Some(j);
    }
    drop(bar);
    let j = last.ok_or_else(|| anyhow!("the watch stream of job {id} ended without a state"))?;
    if !matches!(j.state.as_str(), "succeeded" | "failed" | "cancelled") {
        bail!(
            "the watch stream of job {id} ended while the job was {}",
            j.state
        );
    }
    Ok(j)
}

/// Exit status for a finished job; explains a failure on stderr.
fn job_outcome(j: &Job) -> ExitCode {
    if j.state == "succeeded" {
        ExitCode::SUCCESS
    } else {
        let reason = if j.fail_reason.is_empty() {
            "no reason given"
        } else {
            &j.fail_reason
        };
        eprintln!("error: job {} {}: {reason}", j.id, j.state);
        ExitCode::FAILURE
    }
}
