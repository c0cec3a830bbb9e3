//! Prometheus metrics: what the daemon counts (jobs, bytes, GC runs, requests) and the text it
//! renders for a scrape.
//!
//! Counters and histograms move when something happens (a job ends, a GC run ends, a request is
//! answered). Gauges describe the present (jobs per state, vault usage, the pack store) and are
//! set from a [`Snapshot`] just before each render; a gauge no snapshot sets any more (a deleted
//! vault) disappears from the next scrape. Every label value comes from a closed set or from the
//! daemon's own ids, never from raw request text, so a hostile client cannot grow the series
//! without bound.
//!
//! The recorder is this daemon's own, not the process-global one: two daemons in one process
//! (tests, benches) keep separate figures.
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;

/// Seconds: request latency buckets, 0.5 ms to 10 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Seconds: job and GC duration buckets, 0.1 s to 12 h.
const RUN_BUCKETS: &[f64] = &[
    0.1,
    0.5,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
];

/// gRPC status names by code (the `code` label), as grpc-go and tonic spell them.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// What a backup job did to the store, for the byte and chunk counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct BackupFigures {
    /// Bytes read from the volume.
    pub read: u64,
    /// Bytes added to the store (sealed chunk envelopes).
    pub stored: u64,
    /// Chunks added to the store.
    pub new_chunks: u64,
    /// Chunks the store had already.
    pub deduplicated_chunks: u64,
    /// Raw bytes of those chunks.
    pub deduplicated: u64,
}

/// One vault's usage, for the vault gauges.
#[derive(Clone, Debug)]
pub struct VaultFigures {
    pub vault_id: String,
    pub project_id: String,
    pub used: u64,
    /// `None`: no capacity set.
    pub capacity: Option<u64>,
}

/// The present state, read for each scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// (kind, state, how many jobs) for every pair there is.
    pub jobs: Vec<(&'static str, &'static str, u64)>,
    pub vaults: Vec<VaultFigures>,
    /// Sealed packs in the store, and their bytes.
    pub packs: u64,
    pub pack_bytes: u64,
}

/// The daemon's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A recorder with every metric described (Prometheus HELP and unit).
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_request_duration_seconds".into()),
                REQUEST_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Suffix("_run_duration_seconds".into()),
                    RUN_BUCKETS,
                )
            })
            .expect("the bucket lists are not empty")
            // Gauges are all set per scrape: one that was not set for a while belongs to
            // something that is gone.
            .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(1)))
            .build_recorder();
        let handle = recorder.handle();
        let m = Metrics { recorder, handle };
        m.with(|| {
            describe_gauge!(
                "blockvault_jobs",
                "Jobs in the job table, by kind and state."
            );
            describe_counter!(
                "blockvault_jobs_finished_total",
                "Jobs that ended, by kind and final state."
            );
            describe_histogram!(
                "blockvault_job_run_duration_seconds",
                Unit::Seconds,
                "How long ended jobs ran, by kind and final state."
            );
            describe_counter!(
                "blockvault_backup_read_bytes_total",
                Unit::Bytes,
                "Bytes backup jobs read from volumes."
            );
            describe_counter!(
                "blockvault_backup_stored_bytes_total",
                Unit::Bytes,
                "Bytes backup jobs added to the store (compressed, sealed chunks)."
            );
            describe_counter!(
                "blockvault_backup_deduplicated_bytes_total",
                Unit::Bytes,
                "Bytes of chunks backup jobs found in the store already."
            );
            describe_counter!(
                "blockvault_backup_chunks_total",
                "Chunks backup jobs cut, by outcome (new: stored; deduplicated: found)."
            );
            describe_counter!(
                "blockvault_restore_bytes_total",
                Unit::Bytes,
                "Bytes restore jobs wrote."
            );
            describe_counter!("blockvault_gc_runs_total", "GC runs, by result.");
            describe_counter!(
                "blockvault_gc_reclaimed_bytes_total",
                Unit::Bytes,
                "Bytes GC removed from the pack store."
            );
            describe_histogram!(
                "blockvault_gc_run_duration_seconds",
                Unit::Seconds,
                "How long GC runs took."
            );
            describe_gauge!(
                "blockvault_vault_used_bytes",
                Unit::Bytes,
                "Bytes a vault's backups use."
            );
            describe_gauge!(
                "blockvault_vault_capacity_bytes",
                Unit::Bytes,
                "A vault's capacity (vaults without one are left out)."
            );
            describe_gauge!("blockvault_packs", "Sealed packs in the chunk store.");
            describe_gauge!(
                "blockvault_pack_store_bytes",
                Unit::Bytes,
                "Bytes of packs in the chunk store."
            );
            describe_counter!(
                "blockvault_grpc_requests_total",
                "gRPC calls answered, by method and status code."
            );
            describe_histogram!(
                "blockvault_grpc_request_duration_seconds",
                Unit::Seconds,
                "Time to a gRPC call's response headers, by method."
            );
            describe_counter!(
                "blockvault_rest_requests_total",
                "Cinder REST requests answered, by method, route and status code."
            );
            describe_histogram!(
                "blockvault_rest_request_duration_seconds",
                Unit::Seconds,
                "Time to a Cinder REST response, by method and route."
            );
        });
        // Counters start at 0 rather than at their first event, so that a rate over the first
        // backup is there too.
        m.with(|| {
            for kind in ["backup", "restore"] {
                for state in ["succeeded", "failed", "cancelled"] {
                    metrics::counter!(
                        "blockvault_jobs_finished_total",
                        "kind" => kind,
                        "state" => state
                    )
                    .absolute(0);
                }
            }
            for name in [
                "blockvault_backup_read_bytes_total",
                "blockvault_backup_stored_bytes_total",
                "blockvault_backup_deduplicated_bytes_total",
                "blockvault_restore_bytes_total",
                "blockvault_gc_reclaimed_bytes_total",
            ] {
                metrics::counter!(name).absolute(0);
            }
            for outcome in ["new", "deduplicated"] {
                metrics::counter!("blockvault_backup_chunks_total", "outcome" => outcome)
                    .absolute(0);
            }
            for result in ["ok", "error"] {
                metrics::counter!("blockvault_gc_runs_total", "result" => result).absolute(0);
            }
        });
        m
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// A job ended in `state` after `seconds`.
    pub fn job_finished(&self, kind: &'static str, state: &'static str, seconds: f64) {
        self.with(|| {
            metrics::counter!("blockvault_jobs_finished_total", "kind" => kind, "state" => state)
                .increment(1);
            metrics::histogram!(
                "blockvault_job_run_duration_seconds",
                "kind" => kind,
                "state" => state
            )
            .record(seconds);
        });
    }

    /// A backup job ended, having done `f`.
    pub fn backup_done(&self, f: BackupFigures) {
        self.with(|| {
            metrics::counter!("blockvault_backup_read_bytes_total").increment(f.read);
            metrics::counter!("blockvault_backup_stored_bytes_total").increment(f.stored);
            metrics::counter!("blockvault_backup_deduplicated_bytes_total")
                .increment(f.deduplicated);
            metrics::counter!("blockvault_backup_chunks_total", "outcome" => "new")
                .increment(f.new_chunks);
            metrics::counter!("blockvault_backup_chunks_total", "outcome" => "deduplicated")
                .increment(f.deduplicated_chunks);
        });
    }

    /// A restore job ended, having written `bytes`.
    pub fn restore_done(&self, bytes: u64) {
        self.with(|| metrics::counter!("blockvault_restore_bytes_total").increment(bytes));
    }

    /// A GC run ended (`reclaimed` is `None` when it failed).
    pub fn gc_done(&self, reclaimed: Option<u64>, seconds: f64) {
        self.with(|| {
            let result = if reclaimed.is_some() { "ok" } else { "error" };
            metrics::counter!("blockvault_gc_runs_total", "result" => result).increment(1);
            metrics::counter!("blockvault_gc_reclaimed_bytes_total")
                .increment(reclaimed.unwrap_or(0));
            metrics::histogram!("blockvault_gc_run_duration_seconds").record(seconds);
        });
    }

    /// A gRPC call to `method` (a served `/package.Service/Method` path) was answered with
    /// status `code` after `seconds`. The caller maps paths the server does not serve to one
    /// label (see [`grpc_code_name`]).
    pub fn grpc_request(&self, method: String, code: &'static str, seconds: f64) {
        self.with(|| {
            metrics::counter!(
                "blockvault_grpc_requests_total",
                "method" => method.clone(),
                "code" => code
            )
            .increment(1);
            metrics::histogram!("blockvault_grpc_request_duration_seconds", "method" => method)
                .record(seconds);
        });
    }

    /// A REST request (`method` one of a closed set, `route` a route template) was answered
    /// with `status` after `seconds`.
    pub fn rest_request(&self, method: &'static str, route: String, status: u16, seconds: f64) {
        self.with(|| {
            metrics::counter!(
                "blockvault_rest_requests_total",
                "method" => method,
                "route" => route.clone(),
                "code" => status.to_string()
            )
            .increment(1);
            metrics::histogram!(
                "blockvault_rest_request_duration_seconds",
                "method" => method,
                "route" => route
            )
            .record(seconds);
        });
    }

    /// The Prometheus text exposition of everything, with the gauges set from `now`.
    pub fn render(&self, now: &Snapshot) -> String {
        self.with(|| {
            for (kind, state, n) in &now.jobs {
                metrics::gauge!("blockvault_jobs", "kind" => *kind, "state" => *state)
                    .set(*n as f64);
            }
            for v in &now.vaults {
                let labels = [
                    ("vault_id", v.vault_id.clone()),
                    ("project_id", v.project_id.clone()),
                ];
                metrics::gauge!("blockvault_vault_used_bytes", &labels).set(v.used as f64);
                if let Some(c) = v.capacity {
                    metrics::gauge!("blockvault_vault_capacity_bytes", &labels).set(c as f64);
                }
            }
            metrics::gauge!("blockvault_packs").set(now.packs as f64);
            metrics::gauge!("blockvault_pack_store_bytes").set(now.pack_bytes as f64);
        });
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// The `code` label for a gRPC status code number.
pub fn grpc_code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|c| GRPC_CODES.get(c))
        .copied()
        .unwrap_or("Unknown")
}

/// The `method` label for an HTTP method: the standard ones, else `other`.
pub fn http_method_name(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
