//! The Cinder v3 REST front end driven by the real `cinder` command (python-cinderclient 9.x,
//! installed into a virtualenv by `scripts/ensure-deps.sh`; its path comes from `BV_CINDER`),
//! plus raw HTTP for what the client hides (microversion refusals, field sets per version).
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use blockvault_daemon::config::Role;
use common::*;
use serde_json::Value;

const MIB: usize = 1 << 20;
const MEMBER: &str = "tok-member-p1";
const READER: &str = "tok-reader-p1";
const OTHER: &str = "tok-member-p2";

/// The `cinder` executable: `BV_CINDER`, else the virtualenv `scripts/ensure-deps.sh` makes.
fn cinder_bin() -> PathBuf {
    let p = match std::env::var_os("BV_CINDER") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/blockvault/cinderclient/bin/cinder"),
    };
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/ensure-deps.sh` (it installs python-cinderclient 9.x \
         into a virtualenv) or set BV_CINDER",
        p.display()
    );
    p
}

/// One `cinder` invocation: (exit success, stdout, stderr).
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

struct Cinder {
    bin: PathBuf,
    addr: SocketAddr,
}

impl Cinder {
    fn run(&self, token: &str, project: &str, args: &[&str]) -> Out {
        let o = Command::new(&self.bin)
            .args(["--os-auth-type", "http_basic", "--os-username", "tester"])
            .args(["--os-password", token, "--os-project-id", project])
            .arg("--os-endpoint")
            .arg(format!("http://{}/v3/{project}", self.addr))
            .args(args)
            .env_remove("OS_AUTH_URL")
            .output()
            .expect("run cinder");
        let out = Out {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        eprintln!(
            "$ cinder {} -> {}\n{}{}",
            args.join(" "),
            if out.ok { "ok" } else { "FAILED" },
            out.stdout,
            out.stderr
        );
        out
    }

    /// Runs and expects success.
    fn ok(&self, token: &str, project: &str, args: &[&str]) -> String {
        let o = self.run(token, project, args);
        assert!(o.ok, "cinder {args:?} failed: {}", o.stderr);
        o.stdout
    }

    /// Runs and expects a refusal whose message contains `want`.
    fn refused(&self, token: &str, project: &str, args: &[&str], want: &str) {
        let o = self.run(token, project, args);
        assert!(!o.ok, "cinder {args:?} succeeded: {}", o.stdout);
        assert!(
            o.stderr.contains(want) || o.stdout.contains(want),
            "cinder {args:?}: expected {want:?} in {}{}",
            o.stdout,
            o.stderr
        );
    }
}

/// The value of `key` in a `cinder` property table (`| key | value |`).
fn property(table: &str, key: &str) -> String {
    table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() >= 3 && cells[1] == key).then(|| cells[2].to_string())
        })
        .next()
        .unwrap_or_else(|| panic!("no {key} in\n{table}"))
}

/// The first column (ids) of the rows of a `cinder` list table.
fn ids(table: &str) -> Vec<String> {
    table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() > 2 && cells[1].len() == 36 && cells[1].contains('-'))
                .then(|| cells[1].to_string())
        })
        .collect()
}

/// A raw HTTP/1.1 request: (status, headers, JSON body or Null).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let (status, head, body) = http_raw(addr, method, path, headers, body);
    (
        status,
        head,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

fn basic(token: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("tester:{token}"))
    )
}

fn admin_caller() -> blockvault_daemon::auth::Caller {
    blockvault_daemon::auth::Caller {
        project: "admin".into(),
        user: "admin".into(),
        role: Role::Admin,
    }
}

/// Waits until the backup's row has `status`.
fn wait_status(control: &blockvault_daemon::control::Control, id: &str, status: &str) {
    let admin = admin_caller();
    let t = Instant::now();
    loop {
        let (b, _) = control.backups().get(&admin, id).unwrap();
        if b.status.as_str() == status {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "backup {id} stayed {} (waiting for {status}): {:?}",
            b.status.as_str(),
            b.fail_reason
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until no job of the daemon is queued or running.
fn wait_idle(control: &blockvault_daemon::control::Control) {
    let admin = admin_caller();
    let t = Instant::now();
    loop {
        let (jobs, _) = control
            .jobs()
            .list(&admin, true, "", &Default::default())
            .unwrap();
        if jobs.iter().all(|j| j.state.is_final()) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "jobs still run");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cinder_client_backs_up_lists_restores_exports_and_is_refused() {
    let bin = cinder_bin();
    let dir = tempfile::tempdir().unwrap();
    let d = blockvault_daemon::start(config(
        &dir.path().join("data"),
        vec![
            token(MEMBER, "p1", "alice", Role::Member),
            token(READER, "p1", "rita", Role::Reader),
            token(OTHER, "p2", "bob", Role::Member),
        ],
    ))
    .await
    .unwrap();
    let addr = d.cinder_addr.expect("the Cinder listener is on");
    let control = d.control.clone();
    let admin = d.admin_token.clone();
    let mut g = connect(&d.endpoint(), Some(MEMBER)).await;
    let src = dir.path().join("src.img");
    let mut data = make_image(&src, 3 * MIB, 1);
    let vol = register(&mut g, &src, "src").await;
    let target_path = dir.path().join("target.img");
    make_image(&target_path, 3 * MIB, 2);
    let target = register(&mut g, &target_path, "target").await;
    let c = Cinder { bin, addr };

    let finished = tokio::task::spawn_blocking(move || {
        // Full and incremental backups.
        let full = property(
            &c.ok(MEMBER, "p1", &["backup-create", "--name", "full", &vol.id]),
            "id",
        );
        wait_status(&control, &full, "available");
        let at_full = data.clone();
        data[MIB..MIB + 4096].fill(7);
        std::fs::write(&src, &data).unwrap();
        let out = c.ok(
            MEMBER,
            "p1",
            &["backup-create", "--incremental", "--name", "incr", &vol.id],
        );
        let incr = property(&out, "id");
        wait_status(&control, &incr, "available");

        // Show: the fields of the backup, as the client prints them.
        let show = c.ok(MEMBER, "p1", &["backup-show", &full]);
        assert_eq!(property(&show, "status"), "available");
        assert_eq!(property(&show, "name"), "full");
        assert_eq!(property(&show, "is_incremental"), "False");
        assert_eq!(property(&show, "has_dependent_backups"), "True");
        assert_eq!(property(&show, "volume_id"), vol.id);
        assert_eq!(property(&show, "size"), "1");
        assert_eq!(property(&show, "user_id"), "alice");
        let show = c.ok(MEMBER, "p1", &["backup-show", &incr]);
        assert_eq!(property(&show, "is_incremental"), "True");

        // List: sort, limit, marker; all tenants for admins only.
        let all = ids(&c.ok(MEMBER, "p1", &["backup-list"]));
        assert_eq!(all.len(), 2, "{all:?}");
        let first = ids(&c.ok(
            MEMBER,
            "p1",
            &["backup-list", "--sort", "name:asc", "--limit", "1"],
        ));
        assert_eq!(first, vec![full.clone()]);
        let next = ids(&c.ok(
            MEMBER,
            "p1",
            &["backup-list", "--sort", "name:asc", "--marker", &full],
        ));
        assert_eq!(next, vec![incr.clone()]);
        let desc = ids(&c.ok(MEMBER, "p1", &["backup-list", "--sort", "name:desc"]));
        assert_eq!(desc, vec![incr.clone(), full.clone()]);
        assert!(ids(&c.ok(OTHER, "p2", &["backup-list"])).is_empty());
        let everyone = ids(&c.ok(&admin, "admin", &["backup-list", "--all-tenants"]));
        assert!(everyone.contains(&full) && everyone.contains(&incr));
        // As in Cinder, a member's all_tenants is ignored: still only its own project.
        let mut own = ids(&c.ok(MEMBER, "p1", &["backup-list", "--all-tenants"]));
        own.sort();
        let mut both = vec![full.clone(), incr.clone()];
        both.sort();
        assert_eq!(own, both);

        // Update.
        c.ok(
            MEMBER,
            "p1",
            &[
                "backup-update",
                "--name",
                "full-2",
                "--description",
                "d",
                &full,
            ],
        );
        let show = c.ok(MEMBER, "p1", &["backup-show", &full]);
        assert_eq!(property(&show, "name"), "full-2");
        assert_eq!(property(&show, "description"), "d");

        // Restore to an existing volume, and to a new one; both byte-exact.
        let out = c.ok(
            MEMBER,
            "p1",
            &["backup-restore", "--volume", &target.id, &full],
        );
        assert_eq!(property(&out, "volume_id"), target.id);
        wait_idle(&control);
        assert!(
            std::fs::read(path_of(&target)).unwrap() == at_full,
            "the full backup restores byte-exact over an existing volume"
        );
        let out = c.ok(MEMBER, "p1", &["backup-restore", &incr]);
        let new_volume = property(&out, "volume_id");
        wait_idle(&control);
        let vshow = c.ok(MEMBER, "p1", &["show", &new_volume]);
        assert_eq!(property(&vshow, "status"), "available");
        let member = blockvault_daemon::auth::Caller {
            project: "p1".into(),
            user: "alice".into(),
            role: Role::Member,
        };
        let nv = control.volumes().get(&member, &new_volume).unwrap();
        let nv_path = PathBuf::from(String::from_utf8(nv.path).unwrap());
        assert!(
            std::fs::read(&nv_path).unwrap() == data,
            "the incremental restores byte-exact to a new volume"
        );

        // Refusals: unknown id, another project's backup, a reader's write, a backup with
        // dependents.
        c.refused(
            MEMBER,
            "p1",
            &["backup-show", "6f1a1a8e-0000-4000-8000-000000000000"],
            "No volumebackup with a name or ID",
        );
        c.refused(OTHER, "p2", &["backup-show", &full], "No volumebackup");
        c.refused(READER, "p1", &["backup-delete", &incr], "reader role");
        c.refused(MEMBER, "p1", &["backup-delete", &full], "dependent backups");
        c.refused(
            MEMBER,
            "p1",
            &["backup-reset-state", "--state", "error", &incr],
            "admins only",
        );

        // Admin actions on a third backup: reset its state, force-delete it.
        let extra = property(
            &c.ok(
                MEMBER,
                "p1",
                &["backup-create", "--name", "extra", &target.id],
            ),
            "id",
        );
        wait_status(&control, &extra, "available");
        c.ok(
            &admin,
            "admin",
            &["backup-reset-state", "--state", "error", &extra],
        );
        wait_status(&control, &extra, "error");
        c.ok(&admin, "admin", &["backup-delete", "--force", &extra]);
        let left = ids(&c.ok(MEMBER, "p1", &["backup-list"]));
        assert!(!left.contains(&extra) && left.len() == 2, "{left:?}");

        // Export: the record that another daemon sharing the store imports.
        let out = c.ok(MEMBER, "p1", &["backup-export", &incr]);
        (
            c,
            incr,
            property(&out, "backup_service"),
            property(&out, "backup_url"),
        )
    })
    .await
    .unwrap();
    d.stop().await.unwrap();

    // A second daemon with a copy of the store and the master key, but its own control
    // database: the exported record brings the backup in, and it can be deleted there.
    let (c, incr, service, url) = finished;
    let data_a = dir.path().join("data");
    let data_b = dir.path().join("data-b");
    copy_dir(&data_a.join("store"), &data_b.join("store"));
    std::fs::copy(data_a.join("master.key"), data_b.join("master.key")).unwrap();
    let d = blockvault_daemon::start(config(
        &data_b,
        vec![token(MEMBER, "p1", "alice", Role::Member)],
    ))
    .await
    .unwrap();
    let c = Cinder {
        addr: d.cinder_addr.unwrap(),
        ..c
    };
    let control = d.control.clone();
    tokio::task::spawn_blocking(move || {
        assert!(ids(&c.ok(MEMBER, "p1", &["backup-list"])).is_empty());
        let out = c.ok(MEMBER, "p1", &["backup-import", &service, &url]);
        assert_eq!(property(&out, "id"), incr);
        wait_status(&control, &incr, "available");
        let show = c.ok(MEMBER, "p1", &["backup-show", &incr]);
        assert_eq!(property(&show, "name"), "incr");
        c.ok(MEMBER, "p1", &["backup-delete", &incr]);
        assert!(ids(&c.ok(MEMBER, "p1", &["backup-list"])).is_empty());
    })
    .await
    .unwrap();
    d.stop().await.unwrap();
}

/// The keys of a JSON object.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

/// The field sets of show and list, per microversion, against the response examples of the
/// Cinder API reference (`api-ref/source/v3/samples/backups/*`); the version is negotiated,
/// echoed, and refused with 406 outside 3.0..=3.64; gRPC and REST answer the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_follow_the_microversion_and_match_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let d = blockvault_daemon::start(config(
        &dir.path().join("data"),
        vec![token(MEMBER, "p1", "alice", Role::Member)],
    ))
    .await
    .unwrap();
    let addr = d.cinder_addr.unwrap();
    let mut g = connect(&d.endpoint(), Some(MEMBER)).await;
    let src = dir.path().join("src.img");
    make_image(&src, MIB, 3);
    let vol = register(&mut g, &src, "src").await;
    let b = backup(&mut g, &vol.id, "b", false).await;
    let auth = basic(MEMBER);
    let id = b.id.clone();
    let auth_get = auth.clone();
    let get = move |version: &str, path: &str| {
        let mut h = vec![("Authorization", auth_get.as_str())];
        let hv = format!("volume {version}");
        if !version.is_empty() {
            h.push(("OpenStack-API-Version", hv.as_str()));
        }
        http(addr, "GET", path, &h, "")
    };
    let show = format!("/v3/p1/backups/{}", b.id);
    let auth2 = auth.clone();
    tokio::task::spawn_blocking(move || {
        let auth = auth2;
        // The backup-show sample at 3.56, field by field (plus nothing else).
        let (code, head, v) = get("3.56", &show);
        assert_eq!(code, 200, "{v}");
        assert!(
            head.contains("openstack-api-version: volume 3.56"),
            "{head}"
        );
        let backup = &v["backup"];
        let sample_3_56 = [
            "availability_zone",
            "container",
            "created_at",
            "data_timestamp",
            "description",
            "fail_reason",
            "has_dependent_backups",
            "id",
            "is_incremental",
            "links",
            "metadata",
            "name",
            "object_count",
            "os-backup-project-attr:project_id",
            "size",
            "snapshot_id",
            "status",
            "updated_at",
            "user_id",
            "volume_id",
        ];
        assert_eq!(keys(backup), sample_3_56.map(String::from).to_vec());
        // Types as in the sample.
        for k in [
            "created_at",
            "data_timestamp",
            "id",
            "name",
            "status",
            "volume_id",
        ] {
            assert!(backup[k].is_string(), "{k}: {}", backup[k]);
        }
        for k in ["has_dependent_backups", "is_incremental"] {
            assert!(backup[k].is_boolean(), "{k}");
        }
        for k in ["object_count", "size"] {
            assert!(backup[k].is_u64(), "{k}");
        }
        assert!(backup["metadata"].is_object() && backup["links"].is_array());
        assert_eq!(backup["links"][0]["rel"], "self");
        assert!(backup["links"][0]["href"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v3/p1/backups/{id}")));
        // Cinder's timestamp form: no zone, microseconds.
        let t = backup["created_at"].as_str().unwrap();
        assert_eq!(t.len(), 26, "{t}");
        assert_eq!(&t[19..20], ".");

        // Without the header: 3.0, so none of the later fields.
        let (code, head, v) = get("", &show);
        assert_eq!(code, 200);
        assert!(head.contains("openstack-api-version: volume 3.0"), "{head}");
        for later in [
            "metadata",
            "user_id",
            "os-backup-project-attr:project_id",
            "encryption_key_id",
        ] {
            assert!(v["backup"].get(later).is_none(), "{later} at 3.0");
        }
        // 3.18 adds the project, 3.43 the metadata.
        let (_, _, v) = get("3.18", &show);
        assert!(v["backup"]
            .get("os-backup-project-attr:project_id")
            .is_some());
        assert!(v["backup"].get("metadata").is_none());
        let (_, _, v) = get("3.43", &show);
        assert!(v["backup"].get("metadata").is_some());
        assert!(v["backup"].get("user_id").is_none());

        // The list-detailed sample at 3.45 with with_count: `count`; summaries are id, links,
        // name.
        let (code, _, v) = get("3.45", "/v3/p1/backups/detail?with_count=true");
        assert_eq!(code, 200);
        assert_eq!(keys(&v), vec!["backups", "count"]);
        assert_eq!(v["count"], 1);
        let (_, _, v) = get("3.44", "/v3/p1/backups/detail?with_count=true");
        assert!(v.get("count").is_none(), "count before 3.45");
        let (_, _, v) = get("3.64", "/v3/p1/backups");
        assert_eq!(keys(&v["backups"][0]), vec!["id", "links", "name"]);
        // Paging: backups_links names the next page.
        let (_, _, v) = get("3.64", "/v3/p1/backups?limit=0");
        assert!(v["backups"].as_array().unwrap().is_empty());
        // Versions outside the range, and bad ones, are refused with 406.
        for bad in ["3.65", "2.0", "3.x"] {
            let (code, _, v) = get(bad, &show);
            assert_eq!(code, 406, "{bad}: {v}");
            assert_eq!(v["notAcceptable"]["code"], 406);
        }
        let (code, _, v) = get("latest", &show);
        assert_eq!(code, 200, "{v}");

        // Faults: Cinder's bodies and codes.
        let (code, _, v) = get(
            "3.64",
            "/v3/p1/backups/6f1a1a8e-0000-4000-8000-000000000000",
        );
        assert_eq!(code, 404);
        assert_eq!(v["itemNotFound"]["code"], 404);
        let (code, _, v) = get("3.64", "/v3/p1/backups/not-a-uuid");
        assert_eq!(code, 400);
        assert!(v["badRequest"]["message"]
            .as_str()
            .unwrap()
            .starts_with("backup_id"));
        let (code, _, v) = get("3.64", "/v3/p2/backups");
        assert_eq!(code, 403, "a token acts only in its own project: {v}");
        let (code, _, v) = http(addr, "GET", "/v3/p1/backups", &[], "");
        assert_eq!(code, 401, "{v}");
        let (code, _, v) = http(
            addr,
            "GET",
            "/v3/p1/backups",
            &[("X-Auth-Token", MEMBER)],
            "",
        );
        assert_eq!(code, 200, "X-Auth-Token works too: {v}");
        let (code, _, v) = http(
            addr,
            "POST",
            "/v3/p1/backups",
            &[("Authorization", auth.as_str())],
            "{\"backup\": {\"volume_id\": 7}}",
        );
        assert_eq!(code, 400, "{v}");
        // Version discovery.
        let (code, _, v) = http(addr, "GET", "/", &[], "");
        assert_eq!(code, 200);
        assert_eq!(v["versions"][0]["min_version"], "3.0");
        assert_eq!(v["versions"][0]["version"], "3.64");
        v
    })
    .await
    .unwrap();

    // gRPC and REST answer the same for the same backup.
    let grpc = get_backup(&mut g, &b.id).await;
    let path = format!("/v3/p1/backups/{}", b.id);
    let auth = basic(MEMBER);
    let (_, _, rest) = tokio::task::spawn_blocking(move || {
        http(
            addr,
            "GET",
            &path,
            &[
                ("Authorization", auth.as_str()),
                ("OpenStack-API-Version", "volume 3.64"),
            ],
            "",
        )
    })
    .await
    .unwrap();
    let r = &rest["backup"];
    assert_eq!(r["id"], grpc.id);
    assert_eq!(r["name"], grpc.name);
    assert_eq!(r["status"], grpc.status);
    assert_eq!(r["volume_id"], grpc.volume_id);
    assert_eq!(r["size"], grpc.size);
    assert_eq!(r["object_count"], grpc.object_count);
    assert_eq!(r["is_incremental"], grpc.is_incremental);
    assert_eq!(r["has_dependent_backups"], grpc.has_dependent_backups);
    assert_eq!(r["os-backup-project-attr:project_id"], grpc.project_id);
    assert_eq!(r["user_id"], grpc.user_id);
    d.stop().await.unwrap();
}

/// Cinder's `noauth` (`X-Auth-Token: USER:PROJECT`, no secret) works only when the config asks
/// for it, and then acts as a member of that project only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noauth_only_when_configured() {
    for noauth in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(&dir.path().join("data"), vec![]);
        cfg.cinder.noauth = noauth;
        let d = blockvault_daemon::start(cfg).await.unwrap();
        let addr = d.cinder_addr.unwrap();
        let (own, other, admin_only) = tokio::task::spawn_blocking(move || {
            let h = [("X-Auth-Token", "carol:p7")];
            (
                http(addr, "GET", "/v3/p7/backups", &h, "").0,
                http(addr, "GET", "/v3/p8/backups", &h, "").0,
                http(
                    addr,
                    "POST",
                    "/v3/p7/backups/6f1a1a8e-0000-4000-8000-000000000000/action",
                    &h,
                    "{\"os-force_delete\": {}}",
                )
                .0,
            )
        })
        .await
        .unwrap();
        if noauth {
            assert_eq!(own, 200, "noauth: user:project acts in its project");
            assert_eq!(other, 403, "noauth: and in no other");
            assert_eq!(admin_only, 403, "noauth: a member, not an admin");
        } else {
            assert_eq!((own, other, admin_only), (401, 401, 401));
        }
        d.stop().await.unwrap();
    }
}
