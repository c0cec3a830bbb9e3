//! The daemon with its packs in a bucket of a real S3 server process (`[store] bucket`,
//! `endpoint`, `credentials_file`), driven through the generated gRPC client.
mod common;

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
