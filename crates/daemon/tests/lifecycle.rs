//! The full lifecycle through a real daemon and the generated client: register, full and
//! incremental backups, restores to new and existing volumes (byte-exact), update, the
//! dependents rule on delete, and export/import between two daemons sharing a copy of the store.
mod common;

use blockvault_proto::v1 as pb;
use common::*;
use tonic::Code;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_incremental_restore_update_delete() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(&dir.path().join("data")).await;
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;

    let img = dir.path().join("vol.img");
    let v1 = make_image(&img, 24 * MIB + 4096, 1);
    let vol = register(&mut c, &img, "vol").await;
    assert_eq!(vol.size_bytes as usize, v1.len());
    assert_eq!(vol.size, 1);
    assert_eq!(vol.status, "available");

    // An incremental needs a full backup first.
    let r = c
        .backups
        .create(pb::CreateBackupRequest {
            volume_id: vol.id.clone(),
            incremental: true,
            ..Default::default()
        })
        .await;
    assert_code(r, Code::FailedPrecondition);

    let full = backup(&mut c, &vol.id, "full", false).await;
    // The job reports its progress: every byte done, bytes stored, a rate, nothing left.
    let job = c
        .jobs
        .get(pb::GetJobRequest {
            job_id: full.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.kind, "backup");
    assert_eq!(job.state, "succeeded");
    assert_eq!(job.backup_id, full.id);
    assert_eq!(job.bytes_total as usize, v1.len());
    assert_eq!(job.bytes_done, job.bytes_total);
    assert_eq!(job.bytes_stored, full.stored_bytes);
    assert!(job.rate_bytes_per_sec > 0.0, "{job:?}");
    assert_eq!(job.eta_seconds, Some(0.0));
    assert!(!job.started_at.is_empty() && !job.finished_at.is_empty());
    // Watching a finished job sends its final state once and ends.
    let mut w = c
        .jobs
        .watch(pb::WatchJobRequest {
            job_id: full.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.message().await.unwrap().unwrap().state, "succeeded");
    assert!(w.message().await.unwrap().is_none());
    assert_eq!(full.status, "available");
    assert!(!full.is_incremental);
    assert_eq!(full.size_bytes as usize, v1.len());
    assert!(full.object_count > 0);
    assert!(!full.data_timestamp.is_empty());
    assert!(full.encryption_key_id.is_none());
    assert_eq!(full.project_id, "admin");

    // Change 1 MiB and take an incremental.
    let mut v2 = v1.clone();
    v2[3 * MIB..4 * MIB].fill(0xAB);
    std::fs::write(&img, &v2).unwrap();
    let incr = backup(&mut c, &vol.id, "incr", true).await;
    assert!(incr.is_incremental);
    assert_eq!(incr.parent_id, full.id);
    assert!(incr.stored_bytes < full.stored_bytes / 4, "{incr:?}");
    assert!(get_backup(&mut c, &full.id).await.has_dependent_backups);

    // Restore the incremental to a new volume.
    let (nv, job) = restore(&mut c, &incr.id, "", "r1").await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    assert_eq!(nv.name, "r1");
    assert_eq!(nv.status, "available");
    assert_same(&path_of(&nv), &v2);

    // Restore the full backup to an existing, registered volume.
    let tgt = dir.path().join("target.img");
    std::fs::write(&tgt, vec![7u8; v1.len() + 8192]).unwrap();
    let tv = register(&mut c, &tgt, "target").await;
    let (tv2, job) = restore(&mut c, &full.id, &tv.id, "ignored").await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    assert_eq!(tv2.id, tv.id);
    assert_eq!(tv2.status, "available");
    let got = std::fs::read(&tgt).unwrap();
    assert!(got[..v1.len()] == v1[..], "existing-volume restore differs");
    assert_eq!(get_backup(&mut c, &full.id).await.status, "available");

    // A target smaller than the backup is refused.
    let small = dir.path().join("small.img");
    std::fs::write(&small, vec![0u8; MIB]).unwrap();
    let sv = register(&mut c, &small, "small").await;
    let r = c
        .backups
        .restore(pb::RestoreBackupRequest {
            backup_id: full.id.clone(),
            volume_id: sv.id.clone(),
            name: String::new(),
        })
        .await;
    assert!(assert_code(r, Code::FailedPrecondition)
        .message()
        .contains("needs"));

    // In-use volumes need force.
    c.volumes
        .update(pb::UpdateVolumeRequest {
            volume_id: vol.id.clone(),
            status: Some("in-use".into()),
            name: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let r = c
        .backups
        .create(pb::CreateBackupRequest {
            volume_id: vol.id.clone(),
            ..Default::default()
        })
        .await;
    assert_code(r, Code::FailedPrecondition);
    let forced = c
        .backups
        .create(pb::CreateBackupRequest {
            volume_id: vol.id.clone(),
            force: true,
            name: "forced".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forced.backup.as_ref().unwrap().status, "creating");
    assert_eq!(wait_job(&mut c, &forced.job_id).await.state, "succeeded");

    // Update name, description and metadata.
    let mut meta = std::collections::HashMap::new();
    meta.insert("tier".to_string(), "gold".to_string());
    let up = c
        .backups
        .update(pb::UpdateBackupRequest {
            backup_id: incr.id.clone(),
            name: Some("renamed".into()),
            description: Some("after the change".into()),
            metadata: Some(pb::Metadata { items: meta }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(up.name, "renamed");
    assert_eq!(up.description, "after the change");
    assert_eq!(up.metadata.get("tier").map(String::as_str), Some("gold"));
    let again = get_backup(&mut c, &incr.id).await;
    assert_eq!(again.name, "renamed");
    assert!(again.updated_at >= again.created_at);

    // Delete: the full backup has a dependent incremental.
    let del = |id: &str| pb::DeleteBackupRequest {
        backup_id: id.into(),
    };
    let r = c.backups.delete(del(&full.id)).await;
    assert!(assert_code(r, Code::FailedPrecondition)
        .message()
        .contains("dependent"));
    c.backups.delete(del(&incr.id)).await.unwrap();
    assert_code(
        c.backups
            .get(pb::GetBackupRequest {
                backup_id: incr.id.clone(),
            })
            .await,
        Code::NotFound,
    );
    c.backups.delete(del(&full.id)).await.unwrap();
    let left = c
        .backups
        .list(pb::ListBackupsRequest {
            detail: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.backups.len(), 1);
    assert_eq!(left.backups[0].name, "forced");
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_on_one_daemon_import_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("a");
    let a = start(&a_dir).await;
    let mut ca = connect(&a.endpoint(), Some(&a.admin_token)).await;
    let img = dir.path().join("vol.img");
    let data = make_image(&img, 12 * MIB, 5);
    let vol = register(&mut ca, &img, "vol").await;
    let b1 = backup(&mut ca, &vol.id, "exported", false).await;
    let rec = ca
        .backups
        .export_record(pb::ExportRecordRequest {
            backup_id: b1.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.backup_service, "blockvault.chunkstore");
    // Importing into the daemon that has it: ALREADY_EXISTS.
    assert_code(
        ca.backups.import_record(rec.clone()).await,
        Code::AlreadyExists,
    );
    a.stop().await.unwrap();

    // Daemon B gets a copy of A's store (and master key), but its own control database.
    let b_dir = dir.path().join("b");
    copy_dir(&a_dir.join("store"), &b_dir.join("store"));
    std::fs::copy(a_dir.join("master.key"), b_dir.join("master.key")).unwrap();
    let b = start(&b_dir).await;
    let mut cb = connect(&b.endpoint(), Some(&b.admin_token)).await;
    assert_code(
        cb.backups
            .get(pb::GetBackupRequest {
                backup_id: b1.id.clone(),
            })
            .await,
        Code::NotFound,
    );

    // A tampered record is refused.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = String::from_utf8(b64.decode(&rec.backup_url).unwrap()).unwrap();
    let forged = raw.replace("exported", "forged!!");
    assert_ne!(raw, forged);
    let bad = pb::BackupRecord {
        backup_service: rec.backup_service.clone(),
        backup_url: b64.encode(forged),
    };
    let s = assert_code(cb.backups.import_record(bad).await, Code::InvalidArgument);
    assert!(s.message().contains("MAC"), "{s:?}");
    let garbage = pb::BackupRecord {
        backup_service: rec.backup_service.clone(),
        backup_url: "not base64 at all!".into(),
    };
    assert_code(
        cb.backups.import_record(garbage).await,
        Code::InvalidArgument,
    );

    let imported = cb
        .backups
        .import_record(rec.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(imported.id, b1.id);
    assert_eq!(imported.status, "available");
    assert_eq!(imported.name, "exported");
    assert_eq!(imported.size_bytes, b1.size_bytes);
    assert_code(
        cb.backups.import_record(rec.clone()).await,
        Code::AlreadyExists,
    );
    let (nv, job) = restore(&mut cb, &b1.id, "", "on-b").await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    assert_same(&path_of(&nv), &data);
    b.stop().await.unwrap();

    // A daemon with a different store (and master key) cannot even check the record's MAC.
    let c = start(&dir.path().join("c")).await;
    let mut cc = connect(&c.endpoint(), Some(&c.admin_token)).await;
    let s = assert_code(cc.backups.import_record(rec).await, Code::InvalidArgument);
    assert!(s.message().contains("MAC"), "{s:?}");
    c.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_volume_reports_its_key_id() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let d = start(&dir.path().join("data")).await;
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let img = dir.path().join("secret.img");
    let data = make_image(&img, 6 * MIB, 8);
    let vol = c
        .volumes
        .register(pb::RegisterVolumeRequest {
            name: "secret".into(),
            path: img.as_os_str().as_bytes().to_vec(),
            encrypted: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(vol.encrypted);
    let key_id = vol
        .encryption_key_id
        .clone()
        .expect("encrypted volume has a key id");
    uuid::Uuid::parse_str(&key_id).unwrap();
    let b = backup(&mut c, &vol.id, "enc", false).await;
    assert_eq!(b.encryption_key_id.as_deref(), Some(key_id.as_str()));
    let (nv, job) = restore(&mut c, &b.id, "", "").await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    assert_same(&path_of(&nv), &data);
    // The volume restored from an encrypted backup is encrypted too (under its own key), so its
    // backups are.
    assert!(nv.encrypted, "{nv:?}");
    let nkey = nv
        .encryption_key_id
        .clone()
        .expect("restored volume has a key id");
    assert_ne!(nkey, key_id);
    let nb = backup(&mut c, &nv.id, "enc-again", false).await;
    assert_eq!(nb.encryption_key_id.as_deref(), Some(nkey.as_str()));
    let (nv2, job) = restore(&mut c, &nb.id, "", "").await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    assert_same(&path_of(&nv2), &data);

    // A plain volume reports none.
    let plain = dir.path().join("plain.img");
    make_image(&plain, MIB, 2);
    let pv = register(&mut c, &plain, "plain").await;
    assert!(pv.encryption_key_id.is_none());
    let pb_ = backup(&mut c, &pv.id, "plain", false).await;
    assert!(pb_.encryption_key_id.is_none());
    d.stop().await.unwrap();
}

/// `[verify]`: the daemon verifies the store on its schedule and writes the report, which
/// names a damaged chunk and the backup that needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_verify_reports_damage_and_the_backups_it_hits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cfg = config(&data, vec![]);
    cfg.verify.interval_seconds = 1;
    cfg.verify.period_seconds = 0;
    let d = blockvault_daemon::start(cfg).await.unwrap();
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let img = dir.path().join("v.img");
    make_image(&img, 4 * MIB, 3);
    let vol = register(&mut c, &img, "v").await;
    let b = backup(&mut c, &vol.id, "b", false).await;
    let report_file = data.join(blockvault_daemon::verify::REPORT_FILE);
    let read_report = || -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(&report_file).ok()?).ok()
    };
    let mut clean = None;
    for _ in 0..100 {
        if let Some(r) = read_report().filter(|r| r["chunks_checked"].as_u64() > Some(0)) {
            clean = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let clean = clean.expect("a verify ran and checked the backup's chunks");
    assert!(clean["corrupt"].as_array().unwrap().is_empty(), "{clean:#}");

    // Damage every pack's middle byte: some chunk of the backup is hit.
    for sub in std::fs::read_dir(data.join("store/packs")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut bytes = std::fs::read(&p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
            std::fs::write(&p, bytes).unwrap();
        }
    }
    let mut damaged = None;
    for _ in 0..100 {
        if let Some(r) = read_report().filter(|r| !r["corrupt"].as_array().unwrap().is_empty()) {
            damaged = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let damaged = damaged.expect("the next run found the damage");
    let hit = &damaged["corrupt"][0];
    assert_eq!(
        hit["backups"][0].as_str(),
        Some(b.id.as_str()),
        "{damaged:#}"
    );
    d.stop().await.unwrap();
}

/// A data directory from before the catalog: the store's migration writes the backups' record
/// objects, and the daemon adds each backup's row to them once, so a later recovery from the
/// bucket lists them with their Cinder fields too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_data_dir_from_before_the_catalog_reach_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = start(&data).await;
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let img = dir.path().join("v.img");
    make_image(&img, 3 * MIB, 4);
    let vol = register(&mut c, &img, "v").await;
    let b = backup(&mut c, &vol.id, "named-before", false).await;
    d.stop().await.unwrap();
    // What the previous version left: no catalog, no marker.
    std::fs::remove_dir_all(data.join("store/meta")).unwrap();
    std::fs::remove_file(data.join(blockvault_daemon::adopt::ANNOTATED_MARKER)).unwrap();

    let d = start(&data).await;
    d.stop().await.unwrap();
    assert!(data
        .join(blockvault_daemon::adopt::ANNOTATED_MARKER)
        .exists());
    let engine = blockvault_engine::Engine::open(
        data.join("store"),
        blockvault_engine::EngineOptions {
            key_file: Some(data.join("master.key")),
            ..Default::default()
        },
    )
    .unwrap();
    let id: blockvault_core::BackupId = b.id.parse().unwrap();
    let note = engine.store().annotation(&id).unwrap().expect("annotated");
    let row: serde_json::Value = serde_json::from_str(&note).unwrap();
    assert_eq!(row["name"], "named-before");
    assert_eq!(row["id"].as_str(), Some(b.id.as_str()));
}

/// Threads of this process as (name, nice value), from /proc.
fn threads() -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue; // the thread ended
        };
        let Ok(comm) = std::fs::read_to_string(t.path().join("comm")) else {
            continue;
        };
        // Fields after the `(comm)`: state is field 3, nice field 19.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let nice = rest.split(' ').nth(16).unwrap().parse().unwrap();
        out.push((comm.trim().to_string(), nice));
    }
    out
}

/// The data plane (worker pool, job threads) runs at `engine.nice`; the API's threads do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_workers_run_at_the_configured_nice_value() {
    // Other tests of this binary run daemons at the default (10); 13 is this one's alone.
    const NICE: i32 = 13;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("data"), vec![]);
    cfg.engine.nice = NICE;
    let d = blockvault_daemon::start(cfg).await.unwrap();
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let img = dir.path().join("vol.img");
    make_image(&img, 256 * MIB, 5);
    let vol = register(&mut c, &img, "vol").await;

    let ours = || {
        threads()
            .into_iter()
            .filter(|(n, nice)| n.starts_with("bv-worker-") && *nice == NICE)
            .count()
    };
    assert_eq!(
        ours(),
        2,
        "both workers of engine.threads = 2 at nice {NICE}: {:?}",
        threads()
    );
    let me = threads();
    assert!(
        me.iter()
            .any(|(n, nice)| n.starts_with("tokio-") && *nice < NICE),
        "the runtime's threads keep their priority: {me:?}"
    );

    let job = start_backup(&mut c, &vol.id).await.job_id;
    let name = format!("bv-job-{}", &job[..8]);
    let mut seen = false;
    let t0 = std::time::Instant::now();
    while !seen && t0.elapsed() < std::time::Duration::from_secs(60) {
        seen = threads()
            .iter()
            .any(|(n, nice)| *n == name && *nice == NICE);
        let state = c
            .jobs
            .get(pb::GetJobRequest {
                job_id: job.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .state;
        if !seen && matches!(state.as_str(), "succeeded" | "failed" | "cancelled") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(
        seen,
        "job thread {name} never ran at nice {NICE}: {:?}",
        threads()
    );
    assert_eq!(wait_job(&mut c, &job).await.state, "succeeded");
    d.stop().await.unwrap();
}
