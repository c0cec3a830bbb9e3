//! `blockvault vault|policy ...`: the vaults and backup policies of a running `blockvaultd`.
//!
//! The same conventions as the other remote commands (`remote`): the connection flags, text by
//! default and the message as JSON with `--json`, gRPC errors as `CODE_NAME: message`.
//!
//! Vault capacities are in GB (10^9 bytes) and usage in MB (10^6 bytes), as in the API; the text
//! output shows both in decimal units.
use std::process::ExitCode;

use anyhow::{bail, Result};
use blockvault_proto::v1::{
    AddResourcesRequest, Billing, CreatePolicyRequest, CreateVaultRequest, DeletePolicyRequest,
    DeleteVaultRequest, GetPolicyRequest, GetVaultRequest, ListPoliciesRequest, ListVaultsRequest,
    Policy, RemoveResourcesRequest, Resource, ResourceExtraInfo, Retention, Schedule,
    UpdatePolicyRequest, UpdateVaultRequest, Vault, VaultBindRules, VaultEvent,
    WatchVaultEventsRequest,
};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{connect, grpc, parse_kv, tags, Conn};
use crate::render::{cell, lines, print_json, value, Fields};

/// Resource type of a volume.
const VOLUME_TYPE: &str = "OS::Cinder::Volume";
/// Resource type of a server (`server:ID`).
const SERVER_TYPE: &str = "OS::Nova::Server";
/// Width of the usage bar, in characters.
const BAR_WIDTH: u128 = 20;

/// `blockvault vault ...`.
#[derive(Args, Debug)]
pub struct VaultArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: VaultCmd,
}

/// `blockvault policy ...`.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: PolicyCmd,
}

/// Vault commands.
#[derive(Subcommand, Debug)]
enum VaultCmd {
    /// Create a vault; prints its id.
    Create {
        /// Name of the vault (1 to 255 characters).
        #[arg(long, value_name = "N")]
        name: String,
        /// Capacity in GB (10^9 bytes), 1 to 10485760.
        #[arg(long, value_name = "G")]
        size_gb: i64,
        /// Description (at most 255 characters).
        #[arg(long, value_name = "D")]
        description: Option<String>,
        /// What the vault protects: server, disk, turbo, workspace, vmware, rds or file.
        #[arg(long, value_name = "T", default_value = "disk")]
        object_type: String,
        /// Backup consistency: crash_consistent or app_consistent.
        #[arg(long, value_name = "L", default_value = "crash_consistent")]
        consistent_level: String,
        /// Protection type: backup or replication.
        #[arg(long, value_name = "P", default_value = "backup")]
        protect_type: String,
        /// Cloud type: public or hybrid.
        #[arg(long, value_name = "C", default_value = "public")]
        cloud_type: String,
        /// Charging mode: post_paid or pre_paid (recorded only).
        #[arg(long, value_name = "M", default_value = "post_paid")]
        charging_mode: String,
        /// Billing period for pre_paid: year or month.
        #[arg(long, value_name = "P")]
        period_type: Option<String>,
        /// Number of billing periods for pre_paid (at least 1).
        #[arg(long, value_name = "N")]
        period_num: Option<i32>,
        /// Resource to bind (repeatable): TYPE:ID, e.g. OS::Cinder::Volume:<uuid>, or the
        /// shorthands volume:<uuid> and server:<id> (OS::Nova::Server).
        #[arg(long = "resource", value_name = "TYPE:ID", value_parser = parse_resource)]
        resources: Vec<(String, String)>,
        /// Volume not to back up (repeatable); applies to the server resources given here.
        #[arg(long = "exclude-volume", value_name = "ID")]
        exclude_volumes: Vec<String>,
        /// Tag of the vault (repeatable, at most 10, unique keys).
        #[arg(long = "tag", value_name = "K=V", value_parser = parse_kv)]
        tags: Vec<(String, String)>,
        /// Backup policy scheduling backups of the vault's resources.
        #[arg(long, value_name = "ID")]
        policy: Option<String>,
        /// Bind volumes matching the bind tags automatically.
        #[arg(long)]
        auto_bind: bool,
        /// Bind rule tag (repeatable, at most 5): volumes carrying all of them are bound.
        #[arg(long = "bind-tag", value_name = "K=V", value_parser = parse_kv)]
        bind_tags: Vec<(String, String)>,
        /// Grow the capacity instead of refusing a backup that would exceed it.
        #[arg(long)]
        auto_expand: bool,
        /// Usage in percent that raises a vault event, 1 to 100 [default: 80].
        #[arg(long, value_name = "N")]
        threshold: Option<i32>,
        /// Send no threshold events.
        #[arg(long)]
        no_smn_notify: bool,
        /// Prefix of the names of scheduled backups (at most 64 characters).
        #[arg(long, value_name = "P")]
        backup_name_prefix: Option<String>,
        /// Lock the vault: it keeps its backups until retention removes them and cannot be
        /// deleted. Cannot be undone.
        #[arg(long)]
        locked: bool,
    },
    /// List vaults as a table (id, name, used/capacity, threshold, locked, policy).
    List {
        /// Every project's vaults (admins only).
        #[arg(long)]
        all_tenants: bool,
    },
    /// Show one vault, with its usage, resources and tags.
    Show {
        /// UUID of the vault.
        id: String,
    },
    /// Change a vault; only the given settings change.
    Update {
        /// UUID of the vault.
        id: String,
        /// New name.
        #[arg(long, value_name = "N")]
        name: Option<String>,
        /// New description.
        #[arg(long, value_name = "D")]
        description: Option<String>,
        /// New capacity in GB (not below the current usage).
        #[arg(long, value_name = "G")]
        size_gb: Option<i64>,
        /// Bind volumes matching the bind tags automatically.
        #[arg(long, value_name = "BOOL")]
        auto_bind: Option<bool>,
        /// Bind rule tag (repeatable); the given tags replace the old rules.
        #[arg(long = "bind-tag", value_name = "K=V", value_parser = parse_kv)]
        bind_tags: Vec<(String, String)>,
        /// Remove all bind rule tags (combined with --bind-tag: keep only the given ones).
        #[arg(long)]
        clear_bind_tags: bool,
        /// Grow the capacity instead of refusing a backup that would exceed it.
        #[arg(long, value_name = "BOOL")]
        auto_expand: Option<bool>,
        /// New usage threshold in percent, 1 to 100.
        #[arg(long, value_name = "N")]
        threshold: Option<i32>,
        /// Send threshold events.
        #[arg(long, value_name = "BOOL")]
        smn_notify: Option<bool>,
        /// New prefix of the names of scheduled backups.
        #[arg(long, value_name = "P")]
        backup_name_prefix: Option<String>,
        /// Lock the vault (cannot be undone; locking a locked vault is fine).
        #[arg(long)]
        lock: bool,
        /// New backup policy.
        #[arg(long, value_name = "ID", conflicts_with = "no_policy")]
        policy: Option<String>,
        /// Remove the backup policy.
        #[arg(long)]
        no_policy: bool,
        /// Tag (repeatable); the given tags replace all the old ones.
        #[arg(long = "tag", value_name = "K=V", value_parser = parse_kv)]
        tags: Vec<(String, String)>,
        /// Remove all tags (combined with --tag: keep only the given tags).
        #[arg(long)]
        clear_tags: bool,
    },
    /// Delete an empty, unlocked vault.
    Delete {
        /// UUID of the vault.
        id: String,
    },
    /// Bind resources to a vault.
    AddResources {
        /// UUID of the vault.
        id: String,
        /// Resource to bind (repeatable): TYPE:ID, e.g. OS::Cinder::Volume:<uuid>, or the
        /// shorthands volume:<uuid> and server:<id> (OS::Nova::Server).
        #[arg(long = "resource", value_name = "TYPE:ID", value_parser = parse_resource, required = true)]
        resources: Vec<(String, String)>,
        /// Volume not to back up (repeatable); applies to the server resources given here.
        #[arg(long = "exclude-volume", value_name = "ID")]
        exclude_volumes: Vec<String>,
    },
    /// Unbind resources from a vault.
    RemoveResources {
        /// UUID of the vault.
        id: String,
        /// Id of a resource to unbind (repeatable).
        #[arg(long = "resource-id", value_name = "ID", required = true)]
        resource_ids: Vec<String>,
    },
    /// Print vault events (threshold crossings, capacity expansions) as they happen, one line
    /// each (a JSON line with --json), until the daemon ends the stream or Ctrl-C.
    Watch {
        /// UUID of the vault (default: every vault the caller sees).
        id: Option<String>,
    },
}

/// When a policy runs (`--interval-seconds`, or `--at` with optional `--day`).
#[derive(Args, Debug)]
struct ScheduleFlags {
    /// Run every this many seconds (at least 60).
    #[arg(long, value_name = "S", conflicts_with_all = ["at", "day"])]
    interval_seconds: Option<u64>,
    /// Run at this time of day, UTC (repeatable or comma-separated).
    #[arg(long, value_name = "HH:MM", value_delimiter = ',', value_parser = parse_hhmm)]
    at: Vec<String>,
    /// Run only on this day of the week (repeatable or comma-separated; default every day).
    #[arg(
        long,
        value_name = "DAY",
        value_delimiter = ',',
        requires = "at",
        value_parser = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    )]
    day: Vec<String>,
}

impl ScheduleFlags {
    /// The schedule, if one was given.
    fn schedule(self) -> Option<Schedule> {
        if let Some(s) = self.interval_seconds {
            Some(Schedule {
                interval_seconds: s,
                ..Schedule::default()
            })
        } else if !self.at.is_empty() {
            Some(Schedule {
                interval_seconds: 0,
                days: self.day,
                times: self.at,
            })
        } else {
            None
        }
    }
}

/// How long a policy keeps backups.
#[derive(Args, Debug)]
struct RetentionFlags {
    /// Keep at most N backups per resource (newest first).
    #[arg(long, value_name = "N")]
    keep_max: Option<u32>,
    /// Keep backups for D days.
    #[arg(long, value_name = "D")]
    keep_days: Option<u32>,
    /// Keep the newest backup of each of the last N days.
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N ISO weeks.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
}

impl RetentionFlags {
    /// The retention, if any keep flag was given.
    fn retention(&self) -> Option<Retention> {
        let any = self.keep_max.is_some()
            || self.keep_days.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some();
        any.then(|| Retention {
            max_backups: self.keep_max,
            max_days: self.keep_days,
            daily: self.keep_daily.unwrap_or(0),
            weekly: self.keep_weekly.unwrap_or(0),
            monthly: self.keep_monthly.unwrap_or(0),
        })
    }
}

/// Policy commands.
#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Create a backup policy; prints its id.
    #[command(group(ArgGroup::new("when").args(["interval_seconds", "at"]).required(true)))]
    Create {
        /// Name of the policy (1 to 255 characters).
        #[arg(long, value_name = "N")]
        name: String,
        /// UUID to create the policy under (default: a new one).
        #[arg(long, value_name = "UUID")]
        id: Option<String>,
        /// Scheduled runs happen (the default).
        #[arg(long, conflicts_with = "disabled")]
        enabled: bool,
        /// Create the policy disabled: no scheduled runs.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        schedule: ScheduleFlags,
        /// Every N-th run of a resource is a full backup, the others incremental (0 or 1: all
        /// full).
        #[arg(long, value_name = "N", default_value_t = 0)]
        full_every: u32,
        #[command(flatten)]
        retention: RetentionFlags,
    },
    /// List backup policies as a table.
    List {
        /// Every project's policies (admins only).
        #[arg(long)]
        all_tenants: bool,
    },
    /// Show one backup policy.
    Show {
        /// UUID of the policy.
        id: String,
    },
    /// Change a backup policy; only the given settings change. Schedule flags replace the whole
    /// schedule, keep flags the whole retention.
    Update {
        /// UUID of the policy.
        id: String,
        /// New name.
        #[arg(long, value_name = "N")]
        name: Option<String>,
        /// Enable scheduled runs.
        #[arg(long, conflicts_with = "disabled")]
        enabled: bool,
        /// Disable scheduled runs.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        schedule: ScheduleFlags,
        /// Every N-th run of a resource is a full backup (0 or 1: all full).
        #[arg(long, value_name = "N")]
        full_every: Option<u32>,
        #[command(flatten)]
        retention: RetentionFlags,
        /// Remove every retention limit: keep all backups.
        #[arg(
            long,
            conflicts_with_all = ["keep_max", "keep_days", "keep_daily", "keep_weekly", "keep_monthly"]
        )]
        keep_all: bool,
    },
    /// Delete a backup policy that no vault uses.
    Delete {
        /// UUID of the policy.
        id: String,
    },
}

// --------------------------------------------------------------------------------- parsing

/// Parses `TYPE:ID`, with the shorthands `volume:ID` and `server:ID`. The type may itself contain
/// colons (`OS::Cinder::Volume:ID`): the id is what follows the last one.
fn parse_resource(s: &str) -> Result<(String, String), String> {
    let err = || {
        format!(
            "expected TYPE:ID (e.g. OS::Cinder::Volume:<uuid>, volume:<uuid> or server:<id>), \
             got {s:?}"
        )
    };
    if let Some((t, id)) = s.split_once(':') {
        let short = match t.to_ascii_lowercase().as_str() {
            "volume" => Some(VOLUME_TYPE),
            "server" => Some(SERVER_TYPE),
            _ => None,
        };
        if let Some(t) = short {
            return if id.is_empty() {
                Err(err())
            } else {
                Ok((t.to_string(), id.to_string()))
            };
        }
    }
    match s.rsplit_once(':') {
        Some((t, id)) if !t.is_empty() && !t.ends_with(':') && !id.is_empty() => {
            Ok((t.to_string(), id.to_string()))
        }
        _ => Err(err()),
    }
}

/// Parses a time of day, `HH:MM` (24-hour clock).
fn parse_hhmm(s: &str) -> Result<String, String> {
    let ok = match s.split_once(':') {
        Some((h, m)) if h.len() == 2 && m.len() == 2 => matches!(
            (h.parse::<u8>(), m.parse::<u8>()),
            (Ok(h), Ok(m)) if h < 24 && m < 60
        ),
        _ => false,
    };
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "expected a time of day HH:MM (00:00 to 23:59), got {s:?}"
        ))
    }
}

/// Whether a resource type is one of the server types (groups of volumes).
fn is_server(t: &str) -> bool {
    t.ends_with("Server")
}

/// The resources to bind; `exclude` goes to every server resource.
fn resources(list: Vec<(String, String)>, exclude: Vec<String>) -> Result<Vec<Resource>> {
    if !exclude.is_empty() && !list.iter().any(|(t, _)| is_server(t)) {
        bail!("--exclude-volume applies to server resources, and no server --resource was given");
    }
    Ok(list
        .into_iter()
        .map(|(t, id)| Resource {
            extra_info: (is_server(&t) && !exclude.is_empty()).then(|| ResourceExtraInfo {
                exclude_volumes: exclude.clone(),
            }),
            id,
            r#type: t,
            ..Resource::default()
        })
        .collect())
}

// ---------------------------------------------------------------------------------- output

/// A byte count in decimal units (`460 MB`, `1 GB`, `1.5 TB`), as vault sizes are given.
fn si(bytes: u128) -> String {
    const U: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut i = 0;
    let mut div = 1u128;
    while i < U.len() - 1 && bytes >= div * 1000 {
        div *= 1000;
        i += 1;
    }
    if bytes.is_multiple_of(div) {
        return format!("{} {}", bytes / div, U[i]);
    }
    let v = format!("{:.1}", bytes as f64 / div as f64);
    format!("{} {}", v.strip_suffix(".0").unwrap_or(&v), U[i])
}

/// Used bytes, capacity bytes and whole percent used of a vault.
fn usage(b: &Billing) -> (u128, u128, u128) {
    let used = u128::from(b.used.max(0).unsigned_abs()) * 1_000_000;
    let cap = u128::from(b.size.max(0).unsigned_abs()) * 1_000_000_000;
    let pct = (used * 100).checked_div(cap).unwrap_or(0);
    (used, cap, pct)
}

/// `used  [#########-----------]  45 % (460 MB of 1 GB)`.
fn usage_line(b: &Billing) -> String {
    let (used, cap, pct) = usage(b);
    let fill = (used * BAR_WIDTH)
        .checked_div(cap)
        .unwrap_or(0)
        .min(BAR_WIDTH);
    format!(
        "used  [{}{}]  {pct} % ({} of {})",
        "#".repeat(fill as usize),
        "-".repeat((BAR_WIDTH - fill) as usize),
        si(used),
        si(cap)
    )
}

/// Prints a vault: the message as JSON, or settings, a usage bar, tags and resources as text.
fn show_vault(v: &Vault, json: bool) -> Result<()> {
    if json {
        return print_json(v);
    }
    let b = v.billing.clone().unwrap_or_default();
    let yes_no = |b: bool| json!(if b { "yes" } else { "no" });
    let billing = [
        ("object_type", &b.object_type),
        ("consistent_level", &b.consistent_level),
        ("protect_type", &b.protect_type),
        ("cloud_type", &b.cloud_type),
        ("charging_mode", &b.charging_mode),
        ("spec_code", &b.spec_code),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={v}"))
    .collect::<Vec<_>>()
    .join(", ");
    let f: Fields = vec![
        ("id", json!(v.id)),
        ("name", json!(v.name)),
        ("description", json!(v.description)),
        ("status", json!(b.status)),
        ("capacity", json!(si(usage(&b).1))),
        ("threshold", json!(format!("{} %", v.threshold))),
        ("smn_notify", yes_no(v.smn_notify)),
        ("auto_expand", yes_no(v.auto_expand)),
        ("locked", yes_no(v.locked)),
        ("object_lock", json!(v.object_lock)),
        ("policy", json!(v.backup_policy_id)),
        ("auto_bind", yes_no(v.auto_bind)),
        (
            "bind_rules",
            v.bind_rules
                .as_ref()
                .map_or(Ok(Value::Null), |r| value(&r.tags))?,
        ),
        ("backup_name_prefix", json!(v.backup_name_prefix)),
        ("billing", json!(billing)),
        ("tags", value(&v.tags)?),
        ("project_id", json!(v.project_id)),
        ("user_id", json!(v.user_id)),
        ("created_at", json!(v.created_at)),
    ];
    lines(&f);
    println!("{}", usage_line(&b));
    if v.resources.is_empty() {
        println!("resources: none");
        return Ok(());
    }
    println!("resources:");
    println!(
        "  {:<20}  {:<36}  {:<16}  {:>8}  {:>7}  {:>10}  {:<10}  excluded",
        "type", "id", "name", "size", "backups", "stored", "status"
    );
    for r in &v.resources {
        let excluded = r
            .extra_info
            .as_ref()
            .map(|e| e.exclude_volumes.join(","))
            .unwrap_or_default();
        println!(
            "  {:<20}  {:<36}  {:<16}  {:>8}  {:>7}  {:>10}  {:<10}  {}",
            r.r#type,
            r.id,
            cell(&r.name, 16),
            format!("{} GB", r.size),
            r.backup_count,
            si(u128::from(r.backup_size.max(0).unsigned_abs())),
            cell(&r.protect_status, 10),
            cell(&excluded, 80)
        );
    }
    Ok(())
}

/// One line describing a vault event: its time, vault, kind and message (or usage, if the
/// daemon sent no message).
fn event_line(e: &VaultEvent) -> String {
    let head = format!("{} vault {} {}", e.at, e.vault_id, e.kind);
    if !e.message.is_empty() {
        return format!("{head}: {}", e.message);
    }
    let b = Billing {
        used: e.used_mb,
        size: e.capacity_gb,
        ..Billing::default()
    };
    let (used, cap, pct) = usage(&b);
    format!(
        "{head}: used {} of {} ({pct} %, threshold {} %)",
        si(used),
        si(cap),
        e.threshold
    )
}

/// A schedule as text: `every 3600 s`, `daily at 02:00`, `mon,fri at 02:00,14:00`.
fn schedule_text(s: Option<&Schedule>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.interval_seconds > 0 => format!("every {} s", s.interval_seconds),
        Some(s) if s.times.is_empty() => "-".into(),
        Some(s) => format!(
            "{} at {}",
            if s.days.is_empty() {
                "daily".to_string()
            } else {
                s.days.join(",")
            },
            s.times.join(",")
        ),
    }
}

/// A retention as text: `max 7 backups, 30 days, 7 daily, 4 weekly, 12 monthly` or `keep all`.
fn retention_text(r: Option<&Retention>) -> String {
    let Some(r) = r else {
        return "keep all".into();
    };
    let mut parts = Vec::new();
    if let Some(n) = r.max_backups {
        parts.push(format!("max {n} backups"));
    }
    if let Some(d) = r.max_days {
        parts.push(format!("{d} days"));
    }
    for (n, what) in [
        (r.daily, "daily"),
        (r.weekly, "weekly"),
        (r.monthly, "monthly"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if parts.is_empty() {
        "keep all".into()
    } else {
        parts.join(", ")
    }
}

/// Prints a policy: the message as JSON, or `key: value` lines with readable schedule and
/// retention.
fn show_policy(p: &Policy, json: bool) -> Result<()> {
    if json {
        return print_json(p);
    }
    lines(&vec![
        ("id", json!(p.id)),
        ("name", json!(p.name)),
        ("enabled", json!(if p.enabled { "yes" } else { "no" })),
        ("schedule", json!(schedule_text(p.schedule.as_ref()))),
        ("full_every", json!(p.full_every)),
        ("retention", json!(retention_text(p.retention.as_ref()))),
        ("project_id", json!(p.project_id)),
        ("created_at", json!(p.created_at)),
        ("updated_at", json!(p.updated_at)),
    ]);
    Ok(())
}

// -------------------------------------------------------------------------------- commands

/// Runs a `vault` subcommand.
pub async fn vault(a: VaultArgs) -> Result<ExitCode> {
    let json = a.conn.json;
    let mut c = connect(&a.conn).await?.vaults;
    match a.cmd {
        VaultCmd::Create {
            name,
            size_gb,
            description,
            object_type,
            consistent_level,
            protect_type,
            cloud_type,
            charging_mode,
            period_type,
            period_num,
            resources: res,
            exclude_volumes,
            tags: t,
            policy,
            auto_bind,
            bind_tags,
            auto_expand,
            threshold,
            no_smn_notify,
            backup_name_prefix,
            locked,
        } => {
            let resources = resources(res, exclude_volumes)?;
            let v = c
                .create(CreateVaultRequest {
                    name,
                    description: description.unwrap_or_default(),
                    billing: Some(Billing {
                        cloud_type,
                        consistent_level,
                        object_type,
                        protect_type,
                        size: size_gb,
                        charging_mode,
                        period_type: period_type.unwrap_or_default(),
                        period_num: period_num.unwrap_or(0),
                        ..Billing::default()
                    }),
                    resources,
                    tags: tags(t),
                    backup_policy_id: policy.unwrap_or_default(),
                    auto_bind,
                    bind_rules: (!bind_tags.is_empty()).then(|| VaultBindRules {
                        tags: tags(bind_tags),
                    }),
                    auto_expand,
                    threshold,
                    smn_notify: no_smn_notify.then_some(false),
                    backup_name_prefix: backup_name_prefix.unwrap_or_default(),
                    locked,
                    ..CreateVaultRequest::default()
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
        VaultCmd::List { all_tenants } => {
            let mut vs = Vec::new();
            let mut marker = String::new();
            loop {
                let r = c
                    .list(ListVaultsRequest {
                        all_tenants,
                        marker,
                        ..Default::default()
                    })
                    .await
                    .map_err(grpc)?
                    .into_inner();
                vs.extend(r.vaults);
                if r.next_marker.is_empty() {
                    break;
                }
                marker = r.next_marker;
            }
            if json {
                print_json(&json!({ "vaults": vs }))?;
            } else {
                println!(
                    "{:<36}  {:<20}  {:>21}  {:>9}  {:<6}  policy",
                    "id", "name", "used/capacity", "threshold", "locked"
                );
                for v in &vs {
                    let (used, cap, pct) = usage(&v.billing.clone().unwrap_or_default());
                    println!(
                        "{:<36}  {:<20}  {:>21}  {:>9}  {:<6}  {}",
                        v.id,
                        cell(&v.name, 20),
                        format!("{}/{} {pct}%", si(used), si(cap)),
                        format!("{} %", v.threshold),
                        if v.locked { "yes" } else { "no" },
                        cell(&v.backup_policy_id, 36)
                    );
                }
            }
        }
        VaultCmd::Show { id } => {
            let v = c
                .get(GetVaultRequest { vault_id: id })
                .await
                .map_err(grpc)?
                .into_inner();
            show_vault(&v, json)?;
        }
        VaultCmd::Update {
            id,
            name,
            description,
            size_gb,
            auto_bind,
            bind_tags,
            clear_bind_tags,
            auto_expand,
            threshold,
            smn_notify,
            backup_name_prefix,
            lock,
            policy,
            no_policy,
            tags: t,
            clear_tags,
        } => {
            let bind_rules = (clear_bind_tags || !bind_tags.is_empty()).then(|| VaultBindRules {
                tags: tags(bind_tags),
            });
            let replace_tags = clear_tags || !t.is_empty();
            let v = c
                .update(UpdateVaultRequest {
                    vault_id: id,
                    name,
                    description,
                    size: size_gb,
                    auto_bind,
                    bind_rules,
                    auto_expand,
                    threshold,
                    smn_notify,
                    backup_name_prefix,
                    locked: lock.then_some(true),
                    backup_policy_id: if no_policy {
                        Some(String::new())
                    } else {
                        policy
                    },
                    tags: tags(t),
                    replace_tags,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            show_vault(&v, json)?;
        }
        VaultCmd::Delete { id } => {
            c.delete(DeleteVaultRequest {
                vault_id: id.clone(),
            })
            .await
            .map_err(grpc)?;
            if json {
                print_json(&json!({ "id": id, "deleted": true }))?;
            } else {
                eprintln!("deleted vault {id}");
            }
        }
        VaultCmd::AddResources {
            id,
            resources: res,
            exclude_volumes,
        } => {
            let resources = resources(res, exclude_volumes)?;
            let v = c
                .add_resources(AddResourcesRequest {
                    vault_id: id,
                    resources,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            show_vault(&v, json)?;
        }
        VaultCmd::RemoveResources { id, resource_ids } => {
            let v = c
                .remove_resources(RemoveResourcesRequest {
                    vault_id: id,
                    resource_ids,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            show_vault(&v, json)?;
        }
        VaultCmd::Watch { id } => {
            let mut stream = c
                .watch(WatchVaultEventsRequest {
                    vault_id: id.unwrap_or_default(),
                })
                .await
                .map_err(grpc)?
                .into_inner();
            let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
            loop {
                let e = tokio::select! {
                    m = stream.message() => m.map_err(grpc)?,
                    _ = &mut interrupt => None,
                };
                let Some(e) = e else { break };
                if json {
                    println!("{}", serde_json::to_string(&e)?);
                } else {
                    println!("{}", event_line(&e));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a `policy` subcommand.
pub async fn policy(a: PolicyArgs) -> Result<ExitCode> {
    let json = a.conn.json;
    let mut c = connect(&a.conn).await?.policies;
    match a.cmd {
        PolicyCmd::Create {
            name,
            id,
            enabled: _,
            disabled,
            schedule,
            full_every,
            retention,
        } => {
            let p = c
                .create(CreatePolicyRequest {
                    id: id.unwrap_or_default(),
                    name,
                    enabled: !disabled,
                    schedule: schedule.schedule(),
                    full_every,
                    retention: retention.retention(),
                })
                .await
                .map_err(grpc)?
                .into_inner();
            if json {
                print_json(&p)?;
            } else {
                println!("{}", p.id);
            }
        }
        PolicyCmd::List { all_tenants } => {
            let ps = c
                .list(ListPoliciesRequest { all_tenants })
                .await
                .map_err(grpc)?
                .into_inner()
                .policies;
            if json {
                print_json(&json!({ "policies": ps }))?;
            } else {
                println!(
                    "{:<36}  {:<20}  {:<7}  {:<24}  {:>10}  retention",
                    "id", "name", "enabled", "schedule", "full_every"
                );
                for p in &ps {
                    println!(
                        "{:<36}  {:<20}  {:<7}  {:<24}  {:>10}  {}",
                        p.id,
                        cell(&p.name, 20),
                        if p.enabled { "yes" } else { "no" },
                        cell(&schedule_text(p.schedule.as_ref()), 24),
                        p.full_every,
                        retention_text(p.retention.as_ref())
                    );
                }
            }
        }
        PolicyCmd::Show { id } => {
            let p = c
                .get(GetPolicyRequest { policy_id: id })
                .await
                .map_err(grpc)?
                .into_inner();
            show_policy(&p, json)?;
        }
        PolicyCmd::Update {
            id,
            name,
            enabled,
            disabled,
            schedule,
            full_every,
            retention,
            keep_all,
        } => {
            let retention = if keep_all {
                Some(Retention::default())
            } else {
                retention.retention()
            };
            let p = c
                .update(UpdatePolicyRequest {
                    policy_id: id,
                    name,
                    enabled: if enabled {
                        Some(true)
                    } else {
                        disabled.then_some(false)
                    },
                    schedule: schedule.schedule(),
                    full_every,
                    retention,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            show_policy(&p, json)?;
        }
        PolicyCmd::Delete { id } => {
            c.delete(DeletePolicyRequest {
                policy_id: id.clone(),
            })
            .await
            .map_err(grpc)?;
            if json {
                print_json(&json!({ "id": id, "deleted": true }))?;
            } else {
                eprintln!("deleted policy {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        // clap checks argument ids (conflicts, groups, requires) only in debug builds.
        <crate::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn resources_parse() {
        assert_eq!(
            parse_resource("OS::Cinder::Volume:abc").unwrap(),
            (VOLUME_TYPE.to_string(), "abc".to_string())
        );
        assert_eq!(
            parse_resource("volume:abc").unwrap(),
            (VOLUME_TYPE.to_string(), "abc".to_string())
        );
        assert_eq!(
            parse_resource("Server:s1").unwrap(),
            (SERVER_TYPE.to_string(), "s1".to_string())
        );
        assert!(parse_resource("abc").is_err());
        assert!(parse_resource("volume:").is_err());
        assert!(parse_resource("OS::Cinder::Volume::abc").is_err());
        assert!(parse_resource(":abc").is_err());
    }

    #[test]
    fn exclude_volumes_go_to_servers() {
        let r = resources(
            vec![
                (SERVER_TYPE.into(), "s".into()),
                (VOLUME_TYPE.into(), "v".into()),
            ],
            vec!["x".into()],
        )
        .unwrap();
        assert_eq!(r[0].extra_info.as_ref().unwrap().exclude_volumes, ["x"]);
        assert!(r[1].extra_info.is_none());
        assert!(resources(vec![(VOLUME_TYPE.into(), "v".into())], vec!["x".into()]).is_err());
    }

    #[test]
    fn times_parse() {
        assert!(parse_hhmm("02:30").is_ok());
        assert!(parse_hhmm("23:59").is_ok());
        assert!(parse_hhmm("24:00").is_err());
        assert!(parse_hhmm("2:30").is_err());
        assert!(parse_hhmm("02:60").is_err());
    }

    #[test]
    fn usage_bar() {
        let b = Billing {
            used: 460,
            size: 1,
            ..Billing::default()
        };
        assert_eq!(
            usage_line(&b),
            "used  [#########-----------]  46 % (460 MB of 1 GB)"
        );
        let b = Billing {
            used: 3000,
            size: 2,
            ..Billing::default()
        };
        assert_eq!(
            usage_line(&b),
            "used  [####################]  150 % (3 GB of 2 GB)"
        );
        let empty = Billing::default();
        assert_eq!(
            usage_line(&empty),
            "used  [--------------------]  0 % (0 B of 0 B)"
        );
        assert_eq!(si(1_500_000_000), "1.5 GB");
        assert_eq!(si(999), "999 B");
    }

    #[test]
    fn schedules_and_retention_read_well() {
        let s = Schedule {
            interval_seconds: 0,
            days: vec!["mon".into(), "fri".into()],
            times: vec!["02:00".into()],
        };
        assert_eq!(schedule_text(Some(&s)), "mon,fri at 02:00");
        let r = Retention {
            max_backups: Some(7),
            weekly: 4,
            ..Retention::default()
        };
        assert_eq!(retention_text(Some(&r)), "max 7 backups, 4 weekly");
        assert_eq!(retention_text(None), "keep all");
    }
}
