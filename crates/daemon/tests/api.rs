//! The API's rules through a real daemon: listing, auth and projects, bad input, health and
//! reflection, the scheduler (concurrency, one job per volume, cancel, restart).
mod common;

use std::collections::HashMap;
use std::time::Duration;

use blockvault_daemon::config::Role;
use blockvault_proto::v1 as pb;
use common::*;
use tonic::Code;

const MIB: usize = 1 << 20;

fn list_req(sort: &str) -> pb::ListBackupsRequest {
    pb::ListBackupsRequest {
        sort: sort.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sorts_pages_and_counts_fifty_backups() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(&dir.path().join("data")).await;
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let mut vols = Vec::new();
    for i in 0..5 {
        let p = dir.path().join(format!("v{i}.img"));
        make_image(&p, 64 * 1024, i);
        vols.push(register(&mut c, &p, &format!("v{i}")).await.id);
    }
    let mut jobs = Vec::new();
    for i in 0..50 {
        let r = c
            .backups
            .create(pb::CreateBackupRequest {
                volume_id: vols[i % 5].clone(),
                name: format!("b{:02}", (i * 37) % 50),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        jobs.push(r.job_id);
    }
    for j in &jobs {
        assert_eq!(wait_job(&mut c, j).await.state, "succeeded");
    }

    // Sort by name, ascending and descending, with limit and offset.
    let mut r = list_req("name:asc");
    r.limit = Some(10);
    r.with_count = true;
    let page = c.backups.list(r).await.unwrap().into_inner();
    assert_eq!(page.count, Some(50));
    let names: Vec<_> = page.summaries.iter().map(|s| s.name.clone()).collect();
    assert_eq!(
        names,
        (0..10).map(|i| format!("b{i:02}")).collect::<Vec<_>>()
    );
    assert!(page.backups.is_empty(), "summary view only");
    let mut r = list_req("name:desc");
    r.offset = 5;
    r.limit = Some(3);
    r.detail = true;
    let page = c.backups.list(r).await.unwrap().into_inner();
    assert_eq!(page.count, None);
    let names: Vec<_> = page.backups.iter().map(|b| b.name.clone()).collect();
    assert_eq!(names, vec!["b44", "b43", "b42"]);

    // Marker paging visits every backup exactly once, in the unpaged order.
    let all: Vec<String> = c
        .backups
        .list(list_req("size:asc,created_at:desc"))
        .await
        .unwrap()
        .into_inner()
        .summaries
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(all.len(), 50);
    let mut seen = Vec::new();
    let mut marker = String::new();
    loop {
        let mut r = list_req("size:asc,created_at:desc");
        r.limit = Some(7);
        r.marker = marker.clone();
        let page = c.backups.list(r).await.unwrap().into_inner();
        if page.summaries.is_empty() {
            break;
        }
        marker = page.summaries.last().unwrap().id.clone();
        seen.extend(page.summaries.into_iter().map(|s| s.id));
    }
    assert_eq!(seen, all);

    // Default order: newest first.
    let def = c.backups.list(list_req("")).await.unwrap().into_inner();
    let newest = c
        .backups
        .list(list_req("created_at:desc,id:desc"))
        .await
        .unwrap();
    assert_eq!(def.summaries, newest.into_inner().summaries);

    // Filters.
    let mut r = list_req("");
    r.filters = HashMap::from([("volume_id".to_string(), vols[2].clone())]);
    r.with_count = true;
    assert_eq!(
        c.backups.list(r).await.unwrap().into_inner().count,
        Some(10)
    );
    let mut r = list_req("");
    r.filters = HashMap::from([("name".to_string(), "b07".to_string())]);
    assert_eq!(
        c.backups
            .list(r)
            .await
            .unwrap()
            .into_inner()
            .summaries
            .len(),
        1
    );
    let mut r = list_req("");
    r.filters = HashMap::from([("status".to_string(), "available".to_string())]);
    assert_eq!(
        c.backups
            .list(r)
            .await
            .unwrap()
            .into_inner()
            .summaries
            .len(),
        50
    );

    // Bad parameters.
    let mut r = list_req("");
    r.marker = uuid::Uuid::new_v4().to_string();
    assert_code(c.backups.list(r).await, Code::InvalidArgument);
    let mut r = list_req("");
    r.marker = "not-a-uuid".into();
    assert_code(c.backups.list(r).await, Code::InvalidArgument);
    assert_code(
        c.backups.list(list_req("colour:asc")).await,
        Code::InvalidArgument,
    );
    assert_code(
        c.backups.list(list_req("name:sideways")).await,
        Code::InvalidArgument,
    );
    let mut r = list_req("");
    r.filters = HashMap::from([("owner".to_string(), "x".to_string())]);
    assert_code(c.backups.list(r).await, Code::InvalidArgument);
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_are_isolated_and_roles_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = vec![
        token(
            "token-a-member-0123456789",
            "project-a",
            "alice",
            Role::Member,
        ),
        token(
            "token-a-reader-0123456789",
            "project-a",
            "rita",
            Role::Reader,
        ),
        token(
            "token-b-member-0123456789",
            "project-b",
            "bob",
            Role::Member,
        ),
    ];
    let d = blockvault_daemon::start(config(&dir.path().join("data"), tokens))
        .await
        .unwrap();
    let ep = d.endpoint();
    let mut a = connect(&ep, Some("token-a-member-0123456789")).await;
    let mut r = connect(&ep, Some("token-a-reader-0123456789")).await;
    let mut b = connect(&ep, Some("token-b-member-0123456789")).await;
    let mut admin = connect(&ep, Some(&d.admin_token)).await;

    let img = dir.path().join("a.img");
    make_image(&img, 2 * MIB, 9);
    let vol = register(&mut a, &img, "a-vol").await;
    assert_eq!(vol.project_id, "project-a");
    let bk = backup(&mut a, &vol.id, "a-backup", false).await;
    assert_eq!(bk.project_id, "project-a");
    assert_eq!(bk.user_id, "alice");
    let job_id = bk.job_id.clone();

    // Project B sees none of it.
    let vid = || pb::GetVolumeRequest {
        volume_id: vol.id.clone(),
    };
    let bid = || pb::GetBackupRequest {
        backup_id: bk.id.clone(),
    };
    assert_code(b.volumes.get(vid()).await, Code::NotFound);
    assert_code(b.backups.get(bid()).await, Code::NotFound);
    assert_code(
        b.jobs
            .get(pb::GetJobRequest {
                job_id: job_id.clone(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        b.jobs
            .watch(pb::WatchJobRequest {
                job_id: job_id.clone(),
            })
            .await,
        Code::NotFound,
    );
    let listed = b.backups.list(list_req("")).await.unwrap().into_inner();
    assert!(listed.summaries.is_empty());
    let vols = b
        .volumes
        .list(pb::ListVolumesRequest::default())
        .await
        .unwrap();
    assert!(vols.into_inner().volumes.is_empty());
    let jobs = b.jobs.list(pb::ListJobsRequest::default()).await.unwrap();
    assert!(jobs.into_inner().jobs.is_empty());
    assert_code(
        b.backups
            .delete(pb::DeleteBackupRequest {
                backup_id: bk.id.clone(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        b.backups
            .restore(pb::RestoreBackupRequest {
                backup_id: bk.id.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        b.backups
            .create(pb::CreateBackupRequest {
                volume_id: vol.id.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        b.backups
            .export_record(pb::ExportRecordRequest {
                backup_id: bk.id.clone(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        b.jobs
            .cancel(pb::CancelJobRequest {
                job_id: job_id.clone(),
            })
            .await,
        Code::NotFound,
    );
    // all_tenants is for admins.
    let mut all = list_req("");
    all.all_tenants = true;
    assert_code(b.backups.list(all.clone()).await, Code::PermissionDenied);
    assert_eq!(
        admin
            .backups
            .list(all)
            .await
            .unwrap()
            .into_inner()
            .summaries
            .len(),
        1
    );

    // The reader reads but cannot write.
    assert_eq!(r.backups.get(bid()).await.unwrap().into_inner().id, bk.id);
    assert_code(
        r.backups
            .create(pb::CreateBackupRequest {
                volume_id: vol.id.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        r.backups
            .delete(pb::DeleteBackupRequest {
                backup_id: bk.id.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        r.volumes
            .register(pb::RegisterVolumeRequest {
                path: b"/dev/null".to_vec(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );

    // No token, or a wrong one.
    let mut none = connect(&ep, None).await;
    assert_code(none.volumes.get(vid()).await, Code::Unauthenticated);
    let mut wrong = connect(&ep, Some("not-a-token-at-all-xxxxx")).await;
    assert_code(
        wrong.backups.list(list_req("")).await,
        Code::Unauthenticated,
    );
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_the_daemon_keeps_serving() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let d = start(&dir.path().join("data")).await;
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let img = dir.path().join("v.img");
    make_image(&img, 4 * MIB, 3);
    let vol = register(&mut c, &img, "v").await;
    let unknown = uuid::Uuid::new_v4().to_string();

    // Unknown ids and malformed UUIDs.
    assert_code(
        c.backups
            .get(pb::GetBackupRequest {
                backup_id: unknown.clone(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        c.volumes
            .get(pb::GetVolumeRequest {
                volume_id: unknown.clone(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        c.jobs
            .get(pb::GetJobRequest {
                job_id: unknown.clone(),
            })
            .await,
        Code::NotFound,
    );
    for bad in [
        "",
        "1234",
        "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
        "../../etc",
    ] {
        assert_code(
            c.backups
                .get(pb::GetBackupRequest {
                    backup_id: bad.into(),
                })
                .await,
            Code::InvalidArgument,
        );
        assert_code(
            c.backups
                .create(pb::CreateBackupRequest {
                    volume_id: bad.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
    }
    // Device paths that do not exist, including one that is not UTF-8.
    let missing = dir.path().join("nope.img");
    let s = assert_code(
        c.volumes
            .register(pb::RegisterVolumeRequest {
                path: missing.as_os_str().as_bytes().to_vec(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(s.message().contains("does not exist"), "{s:?}");
    let mut non_utf8 = dir.path().as_os_str().as_bytes().to_vec();
    non_utf8.extend_from_slice(b"/\xff\xfe-missing.img");
    assert_code(
        c.volumes
            .register(pb::RegisterVolumeRequest {
                path: non_utf8,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.volumes
            .register(pb::RegisterVolumeRequest {
                path: b"/tmp/a\0b".to_vec(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.volumes
            .register(pb::RegisterVolumeRequest {
                path: dir.path().as_os_str().as_bytes().to_vec(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    // An existing image whose name is not UTF-8 is a fine volume.
    let mut odd = dir.path().as_os_str().as_bytes().to_vec();
    odd.extend_from_slice(b"/vol-\xff.img");
    let odd_path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&odd));
    let odd_data = make_image(&odd_path, 3 * MIB, 4);
    let ov = c
        .volumes
        .register(pb::RegisterVolumeRequest {
            path: odd.clone(),
            name: "odd".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ov.path, odd);
    let ob = backup(&mut c, &ov.id, "odd", false).await;
    let (nv, _) = restore(&mut c, &ob.id, "", "").await;
    assert_eq!(nv.name, format!("restore_backup_{}", ob.id));
    assert_same(&path_of(&nv), &odd_data);
    // The same path twice, or the same id twice.
    assert_code(
        c.volumes
            .register(pb::RegisterVolumeRequest {
                path: odd.clone(),
                ..Default::default()
            })
            .await,
        Code::AlreadyExists,
    );

    // Names and metadata over the limits.
    let long = "x".repeat(256);
    assert_code(
        c.backups
            .create(pb::CreateBackupRequest {
                volume_id: vol.id.clone(),
                name: long.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.volumes
            .register(pb::RegisterVolumeRequest {
                name: long.clone(),
                path: img.as_os_str().as_bytes().to_vec(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    let too_many: HashMap<String, String> = (0..65)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let long_value = HashMap::from([("k".to_string(), long.clone())]);
    let empty_key = HashMap::from([(String::new(), "v".to_string())]);
    for metadata in [too_many, long_value, empty_key] {
        let s = assert_code(
            c.backups
                .create(pb::CreateBackupRequest {
                    volume_id: vol.id.clone(),
                    metadata,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert!(s.message().starts_with("metadata"), "{s:?}");
    }
    let ok_name = "y".repeat(255);
    let b = backup(&mut c, &vol.id, &ok_name, false).await;
    assert_eq!(b.name, ok_name);
    assert_code(
        c.volumes
            .update(pb::UpdateVolumeRequest {
                volume_id: vol.id.clone(),
                status: Some("broken".into()),
                name: None,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );

    // Still serving: health says so and a normal call works.
    let ch = tonic::transport::Channel::from_shared(d.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "blockvault.v1.Backups".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(get_backup(&mut c, &b.id).await.status, "available");

    // Reflection lists the services without any proto file.
    use tonic_reflection::pb::v1 as refl;
    let mut rc = refl::server_reflection_client::ServerReflectionClient::new(ch);
    let req = refl::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            refl::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = rc
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(refl::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for s in [
        "blockvault.v1.Volumes",
        "blockvault.v1.Backups",
        "blockvault.v1.Jobs",
    ] {
        assert!(names.contains(&s), "{names:?}");
    }
    d.stop().await.unwrap();
}

/// Polls until `f` holds (at most 60 s).
async fn until<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(mut f: F) {
    for _ in 0..1200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached in 60 s");
}

async fn job(c: &mut Client, id: &str) -> pb::Job {
    c.jobs
        .get(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_limits_queues_cancels_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cfg = config(&data, vec![]);
    cfg.jobs.concurrency = 1;
    let d = blockvault_daemon::start(cfg.clone()).await.unwrap();
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let big = dir.path().join("big.img");
    make_image(&big, 512 * MIB, 11);
    let small = dir.path().join("small.img");
    make_image(&small, MIB, 12);
    let bv = register(&mut c, &big, "big").await;
    let sv = register(&mut c, &small, "small").await;
    let create = |v: &str, name: &str| pb::CreateBackupRequest {
        volume_id: v.into(),
        name: name.into(),
        ..Default::default()
    };

    // Concurrency 1: the second job waits while the first runs.
    let first = c
        .backups
        .create(create(&bv.id, "big-1"))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .backups
        .create(create(&sv.id, "small-1"))
        .await
        .unwrap()
        .into_inner();
    let third = c
        .backups
        .create(create(&sv.id, "small-2"))
        .await
        .unwrap()
        .into_inner();
    until(|| {
        let mut c = c.clone();
        let id = first.job_id.clone();
        async move { job(&mut c, &id).await.state == "running" }
    })
    .await;
    assert_eq!(job(&mut c, &second.job_id).await.state, "queued");
    let v = c
        .volumes
        .get(pb::GetVolumeRequest {
            volume_id: bv.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.status, "backing-up");
    assert_eq!(v.busy_job_id.as_deref(), Some(first.job_id.as_str()));

    // Cancel the queued third job: it ends at once and its backup is in error.
    let cancelled = c
        .jobs
        .cancel(pb::CancelJobRequest {
            job_id: third.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, "cancelled");
    let tb = get_backup(&mut c, &third.backup.as_ref().unwrap().id).await;
    assert_eq!(tb.status, "error");
    assert!(tb.fail_reason.contains("cancelled"));
    assert_code(
        c.jobs
            .cancel(pb::CancelJobRequest {
                job_id: third.job_id.clone(),
            })
            .await,
        Code::FailedPrecondition,
    );

    // Cancel the running first job.
    c.jobs
        .cancel(pb::CancelJobRequest {
            job_id: first.job_id.clone(),
        })
        .await
        .unwrap();
    let j1 = wait_job(&mut c, &first.job_id).await;
    assert_eq!(j1.state, "cancelled", "{j1:?}");
    let b1 = get_backup(&mut c, &first.backup.as_ref().unwrap().id).await;
    assert_eq!(b1.status, "error");
    assert_eq!(wait_job(&mut c, &second.job_id).await.state, "succeeded");
    let v = c
        .volumes
        .get(pb::GetVolumeRequest {
            volume_id: bv.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.status, "available");
    assert!(v.busy_job_id.is_none());

    // A running job and a queued one survive a clean restart and finish afterwards.
    let run = c
        .backups
        .create(create(&bv.id, "big-2"))
        .await
        .unwrap()
        .into_inner();
    let queued = c
        .backups
        .create(create(&sv.id, "small-3"))
        .await
        .unwrap()
        .into_inner();
    until(|| {
        let mut c = c.clone();
        let id = run.job_id.clone();
        async move { job(&mut c, &id).await.bytes_done > 0 }
    })
    .await;
    d.stop().await.unwrap();
    let d = blockvault_daemon::start(cfg).await.unwrap();
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    assert_eq!(wait_job(&mut c, &run.job_id).await.state, "succeeded");
    assert_eq!(wait_job(&mut c, &queued.job_id).await.state, "succeeded");
    let b = get_backup(&mut c, &run.backup.as_ref().unwrap().id).await;
    assert_eq!(b.status, "available");
    let (nv, j) = restore(&mut c, &b.id, "", "after-restart").await;
    assert_eq!(j.state, "succeeded");
    assert_same(&path_of(&nv), &std::fs::read(&big).unwrap());
    d.stop().await.unwrap();
}

/// Runs openssl; false when it is missing.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let made = openssl(
        p,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=blockvault test CA",
        ],
    ) && openssl(
        p,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ) && {
        std::fs::write(
            p.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(
            p,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        )
    };
    if !made {
        eprintln!("openssl is not available; skipping the TLS test");
        return;
    }
    let mut cfg = config(&p.join("data"), vec![]);
    cfg.tls = Some(blockvault_daemon::config::TlsConfig {
        cert_file: p.join("server.pem"),
        key_file: p.join("server.key"),
    });
    let d = blockvault_daemon::start(cfg).await.unwrap();
    let port = d.addr.port();

    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let ca = Certificate::from_pem(std::fs::read(p.join("ca.pem")).unwrap());
    let ch = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let t: tonic::metadata::MetadataValue<_> = d.admin_token.parse().unwrap();
    let mut vols =
        pb::volumes_client::VolumesClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("x-auth-token", t.clone());
            Ok(r)
        });
    let listed = vols.list(pb::ListVolumesRequest::default()).await.unwrap();
    assert!(listed.into_inner().volumes.is_empty());

    // Plaintext is refused.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut v = pb::volumes_client::VolumesClient::new(ch);
        assert!(v.list(pb::ListVolumesRequest::default()).await.is_err());
    }
    d.stop().await.unwrap();
}
