//! The hostile-tenant suite: members and readers of two projects attack a real daemon through the
//! generated gRPC clients. Every attack must be refused with a clear error (and without side
//! effects); the count of attacks tried and refused is printed for the record.
mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use blockvault_daemon::config::Role;
use blockvault_proto::v1 as pb;
use common::*;
use tonic::Code;

const A: &str = "token-a-member-0123456789";
const A_READER: &str = "token-a-reader-0123456789";
const B: &str = "token-b-member-0123456789";
const MIB: usize = 1 << 20;

/// Counts attacks and refusals.
#[derive(Default)]
struct Tally {
    tried: usize,
    refused: usize,
}

impl Tally {
    /// Records one attack that must fail with `code`; returns the error message.
    fn refused<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        r: Result<T, tonic::Status>,
        code: Code,
    ) -> String {
        self.tried += 1;
        match r {
            Err(s) if s.code() == code => {
                self.refused += 1;
                s.message().to_string()
            }
            other => panic!("attack {what:?} was not refused with {code:?}: {other:?}"),
        }
    }
}

async fn register_raw(c: &mut Client, path: &Path, id: &str) -> Result<pb::Volume, tonic::Status> {
    c.volumes
        .register(pb::RegisterVolumeRequest {
            id: id.into(),
            name: "x".into(),
            path: path.as_os_str().as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tenants_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = root.join("data");
    let tokens = vec![
        token(A, "project-a", "alice", Role::Member),
        token(A_READER, "project-a", "rita", Role::Reader),
        token(B, "project-b", "bob", Role::Member),
    ];
    let mut cfg = config(&data, tokens);
    // Images live in <root>/images; /dev is allowed so that a character device can be tried.
    cfg.volumes.allowed_paths = vec![root.join("images"), "/dev/".into()];
    let d = blockvault_daemon::start(cfg).await.unwrap();
    let ep = d.endpoint();
    let mut a = connect(&ep, Some(A)).await;
    let mut ar = connect(&ep, Some(A_READER)).await;
    let mut b = connect(&ep, Some(B)).await;
    let mut admin = connect(&ep, Some(&d.admin_token)).await;
    let mut t = Tally::default();

    std::fs::create_dir_all(root.join("images")).unwrap();
    let img = root.join("images/a.img");
    let a_data = make_image(&img, 2 * MIB, 1);
    let vol = register(&mut a, &img, "a-vol").await;

    // 1. The daemon's own secrets, directly, through a symlink, and through `..`.
    let m = t.refused(
        "register the admin token",
        register_raw(&mut a, &data.join("admin.token"), "").await,
        Code::InvalidArgument,
    );
    assert!(m.starts_with("path:"), "{m}");
    t.refused(
        "register the master key",
        register_raw(&mut a, &data.join("master.key"), "").await,
        Code::InvalidArgument,
    );
    std::os::unix::fs::symlink(data.join("master.key"), root.join("images/key.img")).unwrap();
    t.refused(
        "register a symlink to the master key",
        register_raw(&mut a, &root.join("images/key.img"), "").await,
        Code::InvalidArgument,
    );
    t.refused(
        "register through ..",
        register_raw(&mut a, &root.join("images/../data/admin.token"), "").await,
        Code::InvalidArgument,
    );
    t.refused(
        "register a store file",
        register_raw(&mut a, &data.join("store/store.json"), "").await,
        Code::InvalidArgument,
    );
    t.refused(
        "register a host file outside the allowed paths",
        register_raw(&mut a, Path::new("/etc/passwd"), "").await,
        Code::InvalidArgument,
    );
    // "Not allowed" and "does not exist" are one answer.
    let x = t.refused(
        "probe for a host file",
        register_raw(&mut a, Path::new("/etc/shadow"), "").await,
        Code::InvalidArgument,
    );
    let y = t.refused(
        "probe for a missing file",
        register_raw(&mut a, Path::new("/etc/no-such-file"), "").await,
        Code::InvalidArgument,
    );
    assert_eq!(
        x.replace("/etc/shadow", "P"),
        y.replace("/etc/no-such-file", "P")
    );

    // 2. A FIFO must be refused at once (opening it without O_NONBLOCK would hang the call).
    let fifo = root.join("images/fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), register_raw(&mut a, &fifo, ""))
        .await
        .expect("registering a FIFO hung");
    let m = t.refused("register a FIFO", r, Code::InvalidArgument);
    assert!(m.contains("FIFO"), "{m}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let m = t.refused(
        "register a character device",
        register_raw(&mut a, Path::new("/dev/null"), "").await,
        Code::InvalidArgument,
    );
    assert!(m.contains("character device"), "{m}");

    // 3. Another project's device under an alias (a hard link and a symlink).
    std::fs::hard_link(&img, root.join("images/alias.img")).unwrap();
    std::os::unix::fs::symlink(&img, root.join("images/link.img")).unwrap();
    for alias in ["images/alias.img", "images/link.img", "images/a.img"] {
        let m = t.refused(
            "register another project's image under an alias",
            register_raw(&mut b, &root.join(alias), "").await,
            Code::AlreadyExists,
        );
        assert!(
            !m.contains(&vol.id),
            "the answer names project A's volume: {m}"
        );
    }

    // 3b. Identical data in two projects shares nothing: B's copy of A's image stores its
    // chunks again (a global dedup domain would store nothing and tell B that A holds it).
    let copy = root.join("images/copy.img");
    std::fs::copy(&img, &copy).unwrap();
    let b_copy = register(&mut b, &copy, "copy").await;
    let a_first = backup(&mut a, &vol.id, "a0", false).await;
    let b_first = backup(&mut b, &b_copy.id, "b0", false).await;
    assert!(a_first.stored_bytes > 0);
    t.tried += 1;
    assert_eq!(
        b_first.stored_bytes, a_first.stored_bytes,
        "project B's identical data was deduplicated against project A's"
    );
    t.refused += 1;
    let again = backup(&mut b, &b_copy.id, "b1", false).await;
    assert_eq!(again.stored_bytes, 0, "dedup within a project still works");

    // 4. Readers write nothing; other projects see nothing.
    t.refused(
        "a reader registers",
        register_raw(&mut ar, &root.join("images/other.img"), "").await,
        Code::PermissionDenied,
    );
    let bk = backup(&mut a, &vol.id, "a1", false).await;
    t.refused(
        "project B reads A's backup",
        b.backups
            .get(pb::GetBackupRequest {
                backup_id: bk.id.clone(),
            })
            .await,
        Code::NotFound,
    );

    // 5. Restores go only to the caller's own volumes or to new volumes in the restore dir.
    let b_img = root.join("images/b.img");
    make_image(&b_img, 2 * MIB, 2);
    let b_vol = register(&mut b, &b_img, "b-vol").await;
    t.refused(
        "A restores onto B's volume",
        a.backups
            .restore(pb::RestoreBackupRequest {
                backup_id: bk.id.clone(),
                volume_id: b_vol.id.clone(),
                name: String::new(),
            })
            .await,
        Code::NotFound,
    );
    t.refused(
        "B restores A's backup",
        b.backups
            .restore(pb::RestoreBackupRequest {
                backup_id: bk.id.clone(),
                volume_id: b_vol.id.clone(),
                name: String::new(),
            })
            .await,
        Code::NotFound,
    );
    t.refused(
        "an admin restores A's backup over B's volume",
        admin
            .backups
            .restore(pb::RestoreBackupRequest {
                backup_id: bk.id.clone(),
                volume_id: b_vol.id.clone(),
                name: String::new(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_same(&b_img, &std::fs::read(&b_img).unwrap());

    // 6. Volume ids: a deleted volume's id, and another project's id, are never accepted again.
    let spare = root.join("images/spare.img");
    make_image(&spare, MIB, 3);
    let id = uuid::Uuid::new_v4().to_string();
    let v = register_raw(&mut b, &spare, &id).await.unwrap();
    b.volumes
        .unregister(pb::UnregisterVolumeRequest {
            volume_id: v.id.clone(),
        })
        .await
        .unwrap();
    t.refused(
        "reuse a deleted volume's id",
        register_raw(&mut b, &spare, &id).await,
        Code::AlreadyExists,
    );
    t.refused(
        "take another project's volume id",
        register_raw(&mut b, &spare, &vol.id).await,
        Code::AlreadyExists,
    );
    t.refused(
        "project A takes project B's retired volume id",
        register_raw(&mut a, &spare, &id).await,
        Code::AlreadyExists,
    );

    // 7. Forged export records.
    let rec = a
        .backups
        .export_record(pb::ExportRecordRequest {
            backup_id: bk.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&rec.backup_url)
        .unwrap();
    let mut env: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let payload = env["payload"].as_str().unwrap().to_string();
    // (a) edit the payload and recompute a plain hash as the MAC;
    let edited = payload.replace("\"a1\"", "\"forged\"");
    assert_ne!(edited, payload);
    env["payload"] = serde_json::Value::String(edited.clone());
    env["mac"] = serde_json::Value::String(blake3::hash(edited.as_bytes()).to_hex().to_string());
    let forged = base64::engine::general_purpose::STANDARD.encode(env.to_string());
    t.refused(
        "import an edited record",
        a.backups
            .import_record(pb::BackupRecord {
                backup_service: rec.backup_service.clone(),
                backup_url: forged,
            })
            .await,
        Code::InvalidArgument,
    );
    // (b) a genuine record of project A's backup, imported by project B after A deletes its row
    // (so the id is free): the backup's volume belongs to project A.
    let vol_a2_img = root.join("images/a2.img");
    make_image(&vol_a2_img, MIB, 4);
    let vol_a2 = register(&mut a, &vol_a2_img, "a2").await;
    let bk2 = backup(&mut a, &vol_a2.id, "a2", false).await;
    let rec2 = a
        .backups
        .export_record(pb::ExportRecordRequest {
            backup_id: bk2.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    t.refused(
        "import a record of another project's volume",
        b.backups.import_record(rec2.clone()).await,
        Code::AlreadyExists,
    );
    t.refused(
        "import a record of a backup that is not in the store",
        b.backups
            .import_record(pb::BackupRecord {
                backup_service: rec2.backup_service.clone(),
                backup_url: "bm90IGEgcmVjb3Jk".into(),
            })
            .await,
        Code::InvalidArgument,
    );

    // 8. Numeric fields that would overflow a time or a size computation.
    let mut policies = pb::policies_client::PoliciesClient::new(
        tonic::transport::Channel::from_shared(ep.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut req = tonic::Request::new(pb::CreatePolicyRequest {
        name: "overflow".into(),
        enabled: true,
        schedule: Some(pb::Schedule {
            interval_seconds: 18_446_744_073_709_551,
            ..Default::default()
        }),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-auth-token", A.parse().unwrap());
    let m = t.refused(
        "a policy whose interval overflows time",
        policies.create(req).await,
        Code::InvalidArgument,
    );
    assert!(m.starts_with("schedule.interval_seconds"), "{m}");
    let mut req = tonic::Request::new(pb::CreatePolicyRequest {
        name: "keep".into(),
        enabled: true,
        schedule: Some(pb::Schedule {
            interval_seconds: 3600,
            ..Default::default()
        }),
        retention: Some(pb::Retention {
            max_days: Some(u32::MAX),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-auth-token", A.parse().unwrap());
    let m = t.refused(
        "a retention of u32::MAX days",
        policies.create(req).await,
        Code::InvalidArgument,
    );
    assert!(m.starts_with("retention.max_days"), "{m}");
    t.refused(
        "a vault of i64::MAX GB",
        a.vaults
            .create(pb::CreateVaultRequest {
                name: "huge".into(),
                billing: Some(billing(i64::MAX)),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    t.refused(
        "a page marker that is not a UUID",
        a.volumes
            .list(pb::ListVolumesRequest {
                marker: "../../etc".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );

    // Nothing above broke the daemon or project A's data.
    let (restored, job) = restore(&mut a, &bk.id, "", "back").await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    assert_same(&path_of(&restored), &a_data);
    println!(
        "hostile-tenant suite: {} attacks tried, {} refused",
        t.tried, t.refused
    );
    assert_eq!(t.tried, t.refused);
    d.stop().await.unwrap();
}

/// 1000 Watch streams opened and abandoned: the daemon's task count returns to its baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_watch_streams_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = blockvault_daemon::start(config(&dir.path().join("data"), vec![]))
        .await
        .unwrap();
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let vault = create_vault(&mut c, "w", 10).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    // Settle the connection's own tasks first.
    c.vaults
        .get(pb::GetVaultRequest {
            vault_id: vault.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = metrics.num_alive_tasks();
    for round in 0..10 {
        let mut streams = Vec::new();
        for _ in 0..100 {
            // Vault event streams wait for events that never come.
            let s = c
                .vaults
                .watch(pb::WatchVaultEventsRequest {
                    vault_id: vault.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            streams.push(s);
        }
        assert!(
            metrics.num_alive_tasks() >= baseline + 100,
            "round {round}: the streams' tasks are not counted"
        );
        drop(streams);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = metrics.num_alive_tasks();
        if n <= baseline + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} tasks alive after abandoning 1000 streams (baseline {baseline})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.stop().await.unwrap();
}

/// Both reflection versions list the services: v1 (grpcurl) and v1alpha (Python's
/// grpcio-reflection and older tools).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_the_services() {
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let d = blockvault_daemon::start(config(&dir.path().join("data"), vec![]))
        .await
        .unwrap();
    let ch = tonic::transport::Channel::from_shared(d.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let mut r = ServerReflectionClient::new(ch.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut s = r
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let resp = s.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(l)) = resp.message_response else {
            panic!("no list in {resp:?}");
        };
        let names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"blockvault.v1.Backups".to_string()),
            "{names:?}"
        );
    }
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut r = ServerReflectionClient::new(ch);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut s = r
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let resp = s.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(l)) = resp.message_response else {
            panic!("no list in {resp:?}");
        };
        assert!(l.service.iter().any(|s| s.name == "blockvault.v1.Volumes"));
    }
    d.stop().await.unwrap();
}

/// A config that holds only `[[tokens]]` starts a daemon; every other key takes its default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_of_only_tokens_starts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blockvaultd.toml");
    std::fs::write(
        &path,
        format!("[[tokens]]\ntoken = \"{A}\"\nproject = \"p\"\nuser = \"u\"\nrole = \"member\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = blockvault_daemon::Config::load(&path).unwrap_err();
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = blockvault_daemon::Config::load(&path).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8750".parse().unwrap());
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.cinder.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".parse().unwrap();
    c.data_dir = dir.path().join("data");
    let d = blockvault_daemon::start(c).await.unwrap();
    let mut m = connect(&d.endpoint(), Some(A)).await;
    let l = m
        .volumes
        .list(pb::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(l.volumes.is_empty());
    d.stop().await.unwrap();
    // A key file readable by others is refused at start, naming the file and the fix.
    let key = dir.path().join("data/master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = blockvault_daemon::Config::load(&path).unwrap();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.cinder.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".parse().unwrap();
    c.data_dir = dir.path().join("data");
    let e = match blockvault_daemon::start(c).await {
        Ok(_) => panic!("a world-readable key file was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("master.key") && e.contains("chmod 600"), "{e}");
}

/// A store attached to a second daemon: a record of project A's volume imported by project B is
/// refused, so B cannot join A's parent chain or dedup domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_keep_projects_apart() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = || {
        vec![
            token(A, "project-a", "alice", Role::Member),
            token(B, "project-b", "bob", Role::Member),
        ]
    };
    let one = dir.path().join("one");
    let d = blockvault_daemon::start(config(&one, tokens()))
        .await
        .unwrap();
    let mut a = connect(&d.endpoint(), Some(A)).await;
    let img = dir.path().join("a.img");
    make_image(&img, 2 * MIB, 7);
    let vol = register(&mut a, &img, "a").await;
    let full = backup(&mut a, &vol.id, "full", false).await;
    let incr = backup(&mut a, &vol.id, "incr", true).await;
    let mut recs = Vec::new();
    for id in [&full.id, &incr.id] {
        recs.push(
            a.backups
                .export_record(pb::ExportRecordRequest {
                    backup_id: id.clone(),
                })
                .await
                .unwrap()
                .into_inner(),
        );
    }
    d.stop().await.unwrap();

    let two = dir.path().join("two");
    copy_dir(&one.join("store"), &two.join("store"));
    std::fs::copy(one.join("master.key"), two.join("master.key")).unwrap();
    let d = blockvault_daemon::start(config(&two, tokens()))
        .await
        .unwrap();
    let mut a = connect(&d.endpoint(), Some(A)).await;
    let mut b = connect(&d.endpoint(), Some(B)).await;
    let got = a
        .backups
        .import_record(recs[0].clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.project_id, "project-a");
    assert_eq!(got.size, full.size);
    let s = assert_code(
        b.backups.import_record(recs[1].clone()).await,
        Code::PermissionDenied,
    );
    assert!(s.message().starts_with("backup_url:"), "{s:?}");
    d.stop().await.unwrap();
}

/// A member's policy whose interval would overflow time is refused, and another project's
/// schedule still fires (under paused time).
#[tokio::test(start_paused = true)]
async fn an_overflowing_policy_stops_no_other_schedule() {
    use blockvault_daemon::auth::Caller;
    use blockvault_daemon::policy::PolicySpec;
    use blockvault_daemon::runner::PolicyRunner;
    use blockvault_daemon::vault::VaultSpec;
    let member = |p: &str| Caller {
        project: p.into(),
        user: format!("{p}-user"),
        role: Role::Member,
    };
    let dir = tempfile::tempdir().unwrap();
    let daemon = blockvault_daemon::Daemon::open(config(&dir.path().join("data"), vec![])).unwrap();
    let c = daemon.control().clone();
    let e = c
        .policies()
        .create(
            &member("a"),
            "",
            PolicySpec {
                name: Some("overflow".into()),
                enabled: Some(true),
                schedule: Some((18_446_744_073_709_551, vec![], vec![])),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(
        e,
        blockvault_daemon::error::Error::InvalidArgument(_)
    ));
    assert!(
        e.message().starts_with("schedule.interval_seconds"),
        "{e:?}"
    );
    let e = c
        .policies()
        .create(
            &member("a"),
            "",
            PolicySpec {
                name: Some("forever".into()),
                enabled: Some(true),
                schedule: Some((3600, vec![], vec![])),
                retention: Some((None, Some(u32::MAX), u32::MAX, 0, 0)),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.message().starts_with("retention.max_days"), "{e:?}");

    let img = dir.path().join("b.img");
    make_image(&img, 1 << 20, 5);
    let vol = c
        .volumes()
        .register(
            &member("b"),
            "",
            "b",
            img.as_os_str().as_bytes(),
            false,
            vec![],
            "",
        )
        .unwrap();
    let policy = c
        .policies()
        .create(
            &member("b"),
            "",
            PolicySpec {
                name: Some("hourly".into()),
                enabled: Some(true),
                schedule: Some((3600, vec![], vec![])),
                ..Default::default()
            },
        )
        .unwrap();
    c.vaults()
        .create(
            &member("b"),
            VaultSpec {
                name: "b".into(),
                billing: Some(blockvault_daemon::model::BillingRow {
                    cloud_type: String::new(),
                    consistent_level: "crash_consistent".into(),
                    object_type: "disk".into(),
                    protect_type: "backup".into(),
                    size_gb: 10,
                    charging_mode: String::new(),
                    period_type: String::new(),
                    period_num: 0,
                    is_auto_renew: false,
                    is_auto_pay: false,
                    console_url: String::new(),
                    is_multi_az: false,
                }),
                resources: vec![blockvault_daemon::model::ResourceRow {
                    id: vol.id.to_string(),
                    kind: "OS::Cinder::Volume".into(),
                    name: "b".into(),
                    exclude_volumes: vec![],
                }],
                backup_policy_id: policy.id.to_string(),
                ..Default::default()
            },
        )
        .unwrap();
    let runner = PolicyRunner::new(c.clone());
    tokio::time::advance(Duration::from_secs(3600)).await;
    let (queued, _) = runner.tick();
    assert_eq!(queued.len(), 1, "project b's hourly run did not fire");
    // Let the scheduled backup finish before the directory goes away.
    for _ in 0..6000 {
        let (jobs, _) = c
            .jobs()
            .list(&member("b"), false, "", &Default::default())
            .unwrap();
        if jobs.iter().all(|j| j.state.is_final()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the scheduled backup did not finish");
}
