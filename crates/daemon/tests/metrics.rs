//! The Prometheus endpoint of a real daemon: a scrape passes `promtool check metrics` (from
//! Debian's `prometheus` package, unpacked by `scripts/ensure-deps.sh`; its path comes from
//! `BV_PROMTOOL`), and the counters move as backups, a restore, GC and gRPC and REST calls run.
//! Also: JSON log lines when `log_format = "json"`.
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blockvault_daemon::config::Role;
use blockvault_proto::v1 as pb;
use common::*;
use tonic::Code;

const MIB: usize = 1 << 20;

/// `promtool`: `BV_PROMTOOL`, else where `scripts/ensure-deps.sh` unpacks it.
fn promtool() -> PathBuf {
    let p = match std::env::var_os("BV_PROMTOOL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/blockvault/promtool/usr/bin/promtool"),
    };
    assert!(
        p.is_file(),
        "promtool not found at {} (run scripts/ensure-deps.sh, which unpacks Debian's \
         prometheus package, or set BV_PROMTOOL)",
        p.display()
    );
    p
}

/// One scrape: (sample line without value -> value), and the raw text.
fn scrape(addr: SocketAddr) -> (HashMap<String, f64>, String) {
    let (status, head, body) = http_raw(addr, "GET", "/metrics", &[], "");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("content-type: text/plain"), "{head}");
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name and value");
            (k.to_string(), v.parse::<f64>().expect("a number"))
        })
        .collect();
    (samples, body)
}

fn get(s: &HashMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

/// What `key` grew by between two scrapes.
fn delta(a: &HashMap<String, f64>, b: &HashMap<String, f64>, key: &str) -> f64 {
    get(b, key) - get(a, key)
}

fn promtool_check(text: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{}{}\n--- scrape ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_and_promtool_accepts_the_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let member = "m".repeat(32);
    let d = blockvault_daemon::start(config(
        &dir.path().join("data"),
        vec![token(&member, "p1", "u1", Role::Member)],
    ))
    .await
    .unwrap();
    let maddr = d.metrics_addr.expect("the metrics listener is on");
    let (before, text) = tokio::task::spawn_blocking(move || scrape(maddr))
        .await
        .unwrap();
    promtool_check(&text);
    // Every pair of job kind and state is there from the start.
    assert_eq!(
        get(&before, r#"blockvault_jobs{kind="backup",state="running"}"#),
        0.0
    );
    assert!(before.contains_key(r#"blockvault_jobs{kind="restore",state="succeeded"}"#));

    let mut c = connect(&d.endpoint(), Some(&member)).await;
    let img = dir.path().join("v.img");
    let data = make_image(&img, 8 * MIB, 7);
    let vol = register(&mut c, &img, "v").await;
    let vault = create_vault(&mut c, "vault", 10).await;
    let create = |incremental: bool| pb::CreateBackupRequest {
        volume_id: vol.id.clone(),
        container: vault.clone(),
        incremental,
        ..Default::default()
    };
    let r = c.backups.create(create(false)).await.unwrap().into_inner();
    assert_eq!(wait_job(&mut c, &r.job_id).await.state, "succeeded");
    let full = r.backup.unwrap().id;
    // A second full backup of the same bytes: every chunk is found in the store.
    let r = c.backups.create(create(false)).await.unwrap().into_inner();
    assert_eq!(wait_job(&mut c, &r.job_id).await.state, "succeeded");
    let (v, j) = restore(&mut c, &full, "", "restored").await;
    assert_eq!(j.state, "succeeded", "{j:?}");
    assert_same(&path_of(&v), &data);
    // A refused call and a made-up method.
    assert_code(
        c.backups
            .get(pb::GetBackupRequest {
                backup_id: uuid::Uuid::new_v4().to_string(),
            })
            .await,
        Code::NotFound,
    );
    let ch = tonic::transport::Channel::from_shared(d.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    // Without a token the interceptor refuses it; with one the service does not know it.
    let made_up: Result<tonic::Response<()>, _> = grpc
        .unary(
            tonic::Request::new(()),
            "/blockvault.v1.Backups/NoSuchMethod-67890".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_code(made_up, Code::Unauthenticated);
    let mut authed = tonic::Request::new(());
    authed
        .metadata_mut()
        .insert("x-auth-token", member.parse().unwrap());
    grpc.ready().await.unwrap();
    let made_up: Result<tonic::Response<()>, _> = grpc
        .unary(
            authed,
            "/blockvault.v1.Backups/NoSuchMethod-12345".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_code(made_up, Code::Unimplemented);
    // GC through the API, as an admin.
    let token: tonic::metadata::MetadataValue<_> = d.admin_token.parse().unwrap();
    let mut m = pb::maintenance_client::MaintenanceClient::with_interceptor(
        ch,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("x-auth-token", token.clone());
            Ok(r)
        },
    );
    m.run_gc(pb::RunGcRequest {}).await.unwrap();
    // REST: a show that succeeds and one that is not found, by route template.
    let rest = d.cinder_addr.unwrap();
    let path = format!("/v3/p1/backups/{full}");
    let missing = format!("/v3/p1/backups/{}", uuid::Uuid::new_v4());
    let member2 = member.clone();
    let (after, text) = tokio::task::spawn_blocking(move || {
        let h = [("X-Auth-Token", member2.as_str())];
        assert_eq!(http_raw(rest, "GET", &path, &h, "").0, 200);
        assert_eq!(http_raw(rest, "GET", &missing, &h, "").0, 404);
        assert_eq!(http_raw(rest, "GET", "/no/such/route", &h, "").0, 404);
        scrape(maddr)
    })
    .await
    .unwrap();
    promtool_check(&text);

    let size = (8 * MIB) as f64;
    let d_ = |k: &str| delta(&before, &after, k);
    assert_eq!(
        d_(r#"blockvault_jobs_finished_total{kind="backup",state="succeeded"}"#),
        2.0
    );
    assert_eq!(
        d_(r#"blockvault_jobs_finished_total{kind="restore",state="succeeded"}"#),
        1.0
    );
    assert_eq!(
        get(
            &after,
            r#"blockvault_jobs{kind="backup",state="succeeded"}"#
        ),
        2.0
    );
    assert_eq!(
        d_(r#"blockvault_job_run_duration_seconds_count{kind="backup",state="succeeded"}"#),
        2.0
    );
    assert_eq!(d_("blockvault_backup_read_bytes_total"), 2.0 * size);
    assert_eq!(d_("blockvault_restore_bytes_total"), size);
    let stored = d_("blockvault_backup_stored_bytes_total");
    assert!(stored > 0.0 && stored < 2.0 * size, "stored {stored}");
    let new = d_(r#"blockvault_backup_chunks_total{outcome="new"}"#);
    let found = d_(r#"blockvault_backup_chunks_total{outcome="deduplicated"}"#);
    assert!(new > 0.0, "no new chunks");
    // The second backup found every chunk of the first.
    assert!(found >= new, "new {new}, deduplicated {found}");
    let dedup = d_("blockvault_backup_deduplicated_bytes_total");
    // make_image leaves about a fifth of the volume zero: holes, neither new nor found.
    assert!(
        dedup >= size * 0.6 && dedup <= size,
        "deduplicated bytes {dedup} of {size}"
    );
    assert_eq!(d_(r#"blockvault_gc_runs_total{result="ok"}"#), 1.0);
    assert_eq!(d_("blockvault_gc_run_duration_seconds_count"), 1.0);
    let labels = format!(r#"{{vault_id="{vault}",project_id="p1"}}"#);
    let used = get(&after, &format!("blockvault_vault_used_bytes{labels}"));
    assert!(used >= stored * 0.5, "vault used {used}, stored {stored}");
    assert_eq!(
        get(&after, &format!("blockvault_vault_capacity_bytes{labels}")),
        10e9,
        "GB is 10^9 bytes, as vault.rs counts"
    );
    assert!(get(&after, "blockvault_pack_store_bytes") >= stored);
    assert!(get(&after, "blockvault_packs") >= 1.0);
    assert_eq!(
        d_(r#"blockvault_grpc_requests_total{method="/blockvault.v1.Backups/Create",code="OK"}"#),
        2.0
    );
    assert_eq!(
        d_(
            r#"blockvault_grpc_requests_total{method="/blockvault.v1.Backups/Get",code="NotFound"}"#
        ),
        1.0
    );
    assert_eq!(
        d_(r#"blockvault_grpc_requests_total{method="other",code="Unimplemented"}"#),
        1.0,
        "the made-up method is counted as other"
    );
    assert_eq!(
        d_(r#"blockvault_grpc_requests_total{method="other",code="Unauthenticated"}"#),
        1.0
    );
    assert!(
        !text.contains("NoSuchMethod"),
        "a made-up path became a label"
    );
    assert!(
        d_(
            r#"blockvault_grpc_request_duration_seconds_count{method="/blockvault.v1.Backups/Create"}"#
        ) >= 2.0
    );
    let route = r#"route="/v3/{project_id}/backups/{backup_id}""#;
    assert_eq!(
        d_(&format!(
            r#"blockvault_rest_requests_total{{method="GET",{route},code="200"}}"#
        )),
        1.0
    );
    assert_eq!(
        d_(&format!(
            r#"blockvault_rest_requests_total{{method="GET",{route},code="404"}}"#
        )),
        1.0
    );
    assert_eq!(
        d_(r#"blockvault_rest_requests_total{method="GET",route="unmatched",code="404"}"#),
        1.0
    );
    assert!(!text.contains(&full), "a backup id became a label");

    // A deleted vault's gauges leave the scrape.
    let gone = create_vault(&mut c, "gone", 1).await;
    let key = format!(r#"blockvault_vault_capacity_bytes{{vault_id="{gone}",project_id="p1"}}"#);
    let (s, _) = tokio::task::spawn_blocking(move || scrape(maddr))
        .await
        .unwrap();
    assert!(s.contains_key(&key), "{key}");
    c.vaults
        .delete(pb::DeleteVaultRequest {
            vault_id: gone.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (s, _) = tokio::task::spawn_blocking(move || scrape(maddr))
        .await
        .unwrap();
    assert!(!s.contains_key(&key), "{key} is still scraped");
    d.stop().await.unwrap();
}

/// `log_format = "json"`: every line blockvaultd logs is one JSON object with a timestamp, a
/// level and a message.
#[test]
fn json_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("blockvaultd.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlog_format = \"json\"\nlisten = \"127.0.0.1:0\"\n\
             [cinder]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            data
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_blockvaultd"))
        .arg("--config")
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    for line in out.lines() {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        for k in ["timestamp", "level", "message"] {
            assert!(v.get(k).is_some(), "no {k}: {line}");
        }
        let serving = v["message"] == "blockvaultd serving";
        lines.push(v);
        if serving || Instant::now() > deadline {
            break;
        }
    }
    terminate(&mut child);
    let serving = lines
        .iter()
        .find(|v| v["message"] == "blockvaultd serving")
        .unwrap_or_else(|| panic!("no serving line in {lines:?}"));
    assert_eq!(serving["level"], "INFO");
    assert!(
        serving["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{serving}"
    );
    assert!(
        lines
            .iter()
            .any(|v| v["message"] == "metrics serving at /metrics"),
        "{lines:?}"
    );
}

/// Stops the daemon with SIGTERM (through the `kill` command) and waits for it.
fn terminate(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
