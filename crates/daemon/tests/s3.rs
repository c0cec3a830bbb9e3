//! The daemon with its packs in a bucket of a real S3 server process (`[store] bucket`,
//! `endpoint`, `credentials_file`), driven through the generated gRPC client.
mod common;

use blockvault_proto::v1 as pb;
use blockvault_s3_test_server::S3Server;
use common::*;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_restores_go_through_the_bucket() {
    let server = S3Server::start("daemon-bucket");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("data"), vec![]);
    cfg.store.bucket = Some("s3://daemon-bucket/node-1".into());
    cfg.store.endpoint = Some(server.endpoint().to_string());
    cfg.store.credentials_file = Some(server.credentials_file().to_path_buf());
    let d = blockvault_daemon::start(cfg).await.unwrap();
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;

    let img = dir.path().join("vol.img");
    let v1 = make_image(&img, 20 * MIB, 1);
    let vol = register(&mut c, &img, "vol").await;
    let full = backup(&mut c, &vol.id, "full", false).await;
    let mut v2 = v1.clone();
    v2[3 * MIB..4 * MIB].fill(9);
    std::fs::write(&img, &v2).unwrap();
    let incr = backup(&mut c, &vol.id, "incr", true).await;
    assert!(server.bytes_under("daemon-bucket/node-1/packs") > 8 * MIB as u64);
    let local_packs = dir.path().join("data/store/packs");
    assert!(
        !local_packs.exists() || std::fs::read_dir(&local_packs).unwrap().next().is_none(),
        "no pack on the node's disk"
    );

    for (b, want) in [(&full, &v1), (&incr, &v2)] {
        let (v, job) = restore(&mut c, &b.id, "", &format!("r-{}", b.name)).await;
        assert_eq!(job.state, "succeeded", "{job:?}");
        assert_same(&path_of(&v), want);
    }
    d.stop().await.unwrap();
}

/// The disaster: three volumes (one encrypted) with incrementals and a deleted backup;
/// the node's data directory is lost entirely; a new node with only the bucket settings and
/// the master key starts, recovers the store, and lists, restores and verifies every backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_comes_back_from_the_bucket_and_the_master_key() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let server = S3Server::start("dr-bucket");
    let dir = tempfile::tempdir().unwrap();
    let node = |data: &std::path::Path| {
        let mut cfg = config(data, vec![]);
        cfg.store.bucket = Some("s3://dr-bucket/node".into());
        cfg.store.endpoint = Some(server.endpoint().to_string());
        cfg.store.credentials_file = Some(server.credentials_file().to_path_buf());
        cfg
    };
    let data = dir.path().join("data");
    let d = blockvault_daemon::start(node(&data)).await.unwrap();
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;

    // name -> (backup, the bytes it must restore)
    let mut want: Vec<(pb::Backup, Vec<u8>)> = Vec::new();
    let mut deleted = None;
    for (i, encrypted) in [false, false, true].into_iter().enumerate() {
        let img = dir.path().join(format!("vol{i}.img"));
        let mut bytes = make_image(&img, (6 + 3 * i) * MIB, 40 + i as u64);
        let vol = c
            .volumes
            .register(pb::RegisterVolumeRequest {
                name: format!("vol{i}"),
                path: img.as_os_str().as_bytes().to_vec(),
                encrypted,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let full = backup(&mut c, &vol.id, &format!("full{i}"), false).await;
        want.push((full, bytes.clone()));
        for round in 0..2u8 {
            bytes[(round as usize + 1) * MIB..][..MIB / 2].fill(round + 7);
            std::fs::write(&img, &bytes).unwrap();
            let incr = backup(&mut c, &vol.id, &format!("incr{i}-{round}"), true).await;
            assert!(incr.is_incremental);
            want.push((incr, bytes.clone()));
        }
        if i == 1 {
            // A second full backup of this volume, deleted: it must not come back.
            let gone = backup(&mut c, &vol.id, "deleted", false).await;
            c.backups
                .delete(pb::DeleteBackupRequest {
                    backup_id: gone.id.clone(),
                })
                .await
                .unwrap();
            deleted = Some(gone.id);
        }
    }
    // A change after the commit reaches the catalog too.
    let renamed = c
        .backups
        .update(pb::UpdateBackupRequest {
            backup_id: want[1].0.id.clone(),
            name: Some("renamed".into()),
            description: Some("changed after its backup".into()),
            metadata: None,
        })
        .await
        .unwrap()
        .into_inner();
    want[1].0 = renamed;
    let deleted = deleted.unwrap();
    // The delete finishes in the background.
    for _ in 0..200 {
        let r = c
            .backups
            .get(pb::GetBackupRequest {
                backup_id: deleted.clone(),
            })
            .await;
        if r.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    d.stop().await.unwrap();

    // The node is lost: only the master key survives (kept off-node by the operator).
    let key = std::fs::read(data.join("master.key")).unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    let data2 = dir.path().join("new-node");
    std::fs::create_dir(&data2).unwrap();
    std::fs::set_permissions(&data2, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(data2.join("master.key"), &key).unwrap();
    std::fs::set_permissions(
        data2.join("master.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let d = blockvault_daemon::start(node(&data2)).await.unwrap();
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let listed = c
        .backups
        .list(pb::ListBackupsRequest {
            detail: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .backups;
    let mut got: Vec<String> = listed.iter().map(|b| b.id.clone()).collect();
    let mut expected: Vec<String> = want.iter().map(|(b, _)| b.id.clone()).collect();
    got.sort();
    expected.sort();
    assert_eq!(
        got, expected,
        "every committed backup, and not the deleted one"
    );
    for (b, bytes) in &want {
        let now = listed.iter().find(|x| x.id == b.id).unwrap();
        assert_eq!(now.status, "available");
        for (field, a, z) in [
            ("name", &b.name, &now.name),
            ("description", &b.description, &now.description),
            ("volume_id", &b.volume_id, &now.volume_id),
            ("project_id", &b.project_id, &now.project_id),
        ] {
            assert_eq!(a, z, "{field} of {}", b.id);
        }
        assert_eq!(b.is_incremental, now.is_incremental);
        assert_eq!(b.size, now.size);
        assert_eq!(b.object_count, now.object_count);
        assert_eq!(b.encryption_key_id, now.encryption_key_id);
        let (v, job) = restore(&mut c, &b.id, "", &format!("r-{}", b.name)).await;
        assert_eq!(job.state, "succeeded", "{job:?}");
        assert_same(&path_of(&v), bytes);
    }
    d.stop().await.unwrap();

    let engine = blockvault_engine::Engine::open(
        data2.join("store"),
        blockvault_engine::EngineOptions::default(),
    )
    .unwrap();
    let report = engine.verify(None, &blockvault_engine::NoProgress).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.backups_checked as usize, want.len());
}
