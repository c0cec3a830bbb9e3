//! CBT incrementals through a real daemon and the generated client: Backups.Create with
//! changed_extents reads only those, restores byte-exact, reports what it read and sampled; a
//! list that misses a write fails the job when sampled; bad lists are INVALID_ARGUMENT naming
//! the field.
mod common;

use std::os::unix::fs::FileExt;

use blockvault_proto::v1 as pb;
use common::*;
use tonic::Code;

const MIB: usize = 1 << 20;

fn plain(extents: &[(usize, usize)]) -> String {
    let v: Vec<_> = extents
        .iter()
        .map(|(o, l)| serde_json::json!({"offset": o, "length": l}))
        .collect();
    serde_json::to_string(&v).unwrap()
}

fn cbt_request(volume: &str, json: &str, sample: f64) -> pb::CreateBackupRequest {
    pb::CreateBackupRequest {
        volume_id: volume.into(),
        incremental: true,
        changed_extents: json.into(),
        cbt_sample: sample,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbt_incremental_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(&dir.path().join("data")).await;
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let img = dir.path().join("vol.img");
    let mut data = make_image(&img, 32 * MIB, 1);
    let vol = register(&mut c, &img, "vol").await;
    backup(&mut c, &vol.id, "full", false).await;

    // The guest writes three runs; the CBT source reports them.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    let writes = [(MIB + 17, 5000), (9 * MIB, 200_000), (31 * MIB, 4096)];
    for (i, (at, len)) in writes.iter().enumerate() {
        let run = vec![0x30 + i as u8; *len];
        f.write_all_at(&run, *at as u64).unwrap();
        data[*at..at + len].copy_from_slice(&run);
    }
    drop(f);

    // Bad input is refused before anything is queued, naming the field.
    for (json, sample, field) in [
        ("not json", 0.0, "changed_extents"),
        (
            r#"[{"offset": 0, "length": 999999999999}]"#,
            0.0,
            "changed_extents",
        ),
        (
            r#"[{"offset": 0, "length": 1}, {"offset": 0, "length": 1, "exists": true}]"#,
            0.0,
            "changed_extents",
        ),
        ("[]", 1.5, "cbt_sample"),
        ("[]", f64::NAN, "cbt_sample"),
    ] {
        let r = c.backups.create(cbt_request(&vol.id, json, sample)).await;
        let s = assert_code(r, Code::InvalidArgument);
        assert!(s.message().contains(field), "{json}: {}", s.message());
    }
    let mut full_with_extents = cbt_request(&vol.id, "[]", 0.0);
    full_with_extents.incremental = false;
    let s = assert_code(
        c.backups.create(full_with_extents).await,
        Code::InvalidArgument,
    );
    assert!(s.message().contains("changed_extents"), "{}", s.message());

    // The CBT incremental.
    let r = c
        .backups
        .create(cbt_request(&vol.id, &plain(&writes), 0.1))
        .await
        .unwrap()
        .into_inner();
    let job = wait_job(&mut c, &r.job_id).await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    let b = get_backup(&mut c, &r.backup.unwrap().id).await;
    assert!(b.is_incremental);
    let cbt = b.cbt.clone().expect("the backup reports its CBT figures");
    assert_eq!(cbt.source, "plain");
    assert_eq!(cbt.changed_bytes, 5000 + 200_000 + 4096);
    assert!(
        cbt.read_bytes >= cbt.changed_bytes && cbt.read_bytes < 4 * MIB as u64,
        "{cbt:?}"
    );
    assert!(
        cbt.sampled_bytes > 0 && cbt.mismatch_offset.is_none(),
        "{cbt:?}"
    );
    let (restored, job) = restore(&mut c, &b.id, "", "restored").await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    assert_same(&path_of(&restored), &data);

    // A write the source does not report fails the job when sampling finds it.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0xEE; 3000], 20 * MIB as u64).unwrap();
    drop(f);
    let r = c
        .backups
        .create(cbt_request(&vol.id, &plain(&writes), 1.0))
        .await
        .unwrap()
        .into_inner();
    let job = wait_job(&mut c, &r.job_id).await;
    assert_eq!(job.state, "failed", "{job:?}");
    assert!(job.fail_reason.contains("missed a change"), "{job:?}");
    let b = get_backup(&mut c, &r.backup.unwrap().id).await;
    assert_eq!(b.status, "error");
    assert!(b.fail_reason.contains("changed_extents"), "{b:?}");

    // With the fall-back asked for, the same request reads everything and is right.
    let mut req = cbt_request(&vol.id, &plain(&writes), 1.0);
    req.cbt_full_read_on_mismatch = true;
    let r = c.backups.create(req).await.unwrap().into_inner();
    let job = wait_job(&mut c, &r.job_id).await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    let b = get_backup(&mut c, &r.backup.unwrap().id).await;
    let cbt = b.cbt.clone().unwrap();
    assert!(cbt.full_read && cbt.mismatch_offset.is_some(), "{cbt:?}");
    data[20 * MIB..20 * MIB + 3000].fill(0xEE);
    let (restored, _) = restore(&mut c, &b.id, "", "restored-2").await;
    assert_same(&path_of(&restored), &data);
}

async fn until_running(c: &Client, job_id: &str) {
    for _ in 0..2000 {
        let j = c
            .jobs
            .clone()
            .get(pb::GetJobRequest {
                job_id: job_id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if j.state == "running" && j.bytes_done > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("job {job_id} did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_cbt_backup_keeps_its_extents_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("data"), vec![]);
    cfg.jobs.concurrency = 1;
    let d = blockvault_daemon::start(cfg.clone()).await.unwrap();
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let small = dir.path().join("small.img");
    let mut data = make_image(&small, 8 * MIB, 2);
    let sv = register(&mut c, &small, "small").await;
    backup(&mut c, &sv.id, "full", false).await;
    let big = dir.path().join("big.img");
    make_image(&big, 256 * MIB, 3);
    let bv = register(&mut c, &big, "big").await;

    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&small)
        .unwrap();
    f.write_all_at(&[0x5A; 10_000], 3 * MIB as u64).unwrap();
    drop(f);
    data[3 * MIB..3 * MIB + 10_000].fill(0x5A);

    // The big backup holds the only job slot, so the CBT backup waits in the queue.
    let running = start_backup(&mut c, &bv.id).await;
    until_running(&c, &running.job_id).await;
    let queued = c
        .backups
        .create(cbt_request(&sv.id, &plain(&[(3 * MIB, 10_000)]), 1.0))
        .await
        .unwrap()
        .into_inner();
    let j = c
        .jobs
        .get(pb::GetJobRequest {
            job_id: queued.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        j.state, "queued",
        "the test needs the CBT job still queued: {j:?}"
    );
    d.stop().await.unwrap();

    let d = blockvault_daemon::start(cfg).await.unwrap();
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let job = wait_job(&mut c, &queued.job_id).await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    let b = get_backup(&mut c, &queued.backup.unwrap().id).await;
    let cbt = b.cbt.clone().expect("CBT figures after the restart");
    assert_eq!(cbt.changed_bytes, 10_000, "{cbt:?}");
    assert!(cbt.read_bytes < MIB as u64, "{cbt:?}");
    let (restored, _) = restore(&mut c, &b.id, "", "restored").await;
    assert_same(&path_of(&restored), &data);
    d.stop().await.unwrap();
}
