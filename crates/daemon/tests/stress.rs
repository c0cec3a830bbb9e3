//! GC under load through the daemon: 4 backup jobs at a time (one per volume, each changing its
//! volume between backups), a task deleting older backups, and a loop of Maintenance.RunGc, all
//! together for BV_STRESS_SECS seconds (default 40). Afterwards every remaining backup restores
//! byte-exact, the whole store verifies clean, and the deleted backups' space was reclaimed.
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockvault_engine::{Engine, EngineOptions, NoProgress};
use blockvault_proto::v1 as pb;
use common::*;
use parking_lot::Mutex;
use rand::{Rng, RngCore, SeedableRng};

const MIB: usize = 1 << 20;

fn hash(b: &[u8]) -> blake3::Hash {
    blake3::hash(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_deletes_and_gc_together() {
    let secs: u64 = std::env::var("BV_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cfg = config(&data, vec![]);
    cfg.jobs.concurrency = 4;
    cfg.gc.interval_seconds = 0;
    let d = blockvault_daemon::start(cfg).await.unwrap();
    let c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let ch = tonic::transport::Channel::from_shared(d.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token: tonic::metadata::MetadataValue<_> = d.admin_token.parse().unwrap();

    // backup id -> (volume index, content hash); shared by the tasks.
    let live: Arc<Mutex<HashMap<String, (usize, blake3::Hash)>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for v in 0..4usize {
        let mut c = c.clone();
        let live = live.clone();
        let stop = stop.clone();
        let img = dir.path().join(format!("v{v}.img"));
        let mut content = make_image(&img, 24 * MIB, v as u64);
        let vol = register(&mut c, &img, &format!("v{v}")).await.id;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + v as u64);
            let mut made = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // Rewrite 5-15 % of the volume at a random place.
                let len = content.len() * rng.gen_range(5..15) / 100;
                let at = rng.gen_range(0..content.len() - len);
                rng.fill_bytes(&mut content[at..at + len]);
                std::fs::write(&img, &content).unwrap();
                let h = hash(&content);
                let r = c
                    .backups
                    .create(pb::CreateBackupRequest {
                        volume_id: vol.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let j = wait_job(&mut c, &r.job_id).await;
                assert_eq!(j.state, "succeeded", "{j:?}");
                live.lock().insert(j.backup_id, (v, h));
                made += 1;
            }
            made
        }));
    }
    // Deleter: keeps the newest 2 backups of each volume.
    let deleter = {
        let mut c = c.clone();
        let live = live.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut deleted = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let list = c
                    .backups
                    .list(pb::ListBackupsRequest {
                        detail: true,
                        sort: "created_at:desc".into(),
                        filters: [("status".to_string(), "available".to_string())].into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .backups;
                let mut seen: HashMap<String, usize> = HashMap::new();
                for b in list {
                    let n = seen.entry(b.volume_id.clone()).or_default();
                    *n += 1;
                    if *n > 2 {
                        c.backups
                            .delete(pb::DeleteBackupRequest {
                                backup_id: b.id.clone(),
                            })
                            .await
                            .unwrap();
                        live.lock().remove(&b.id);
                        deleted += 1;
                    }
                }
            }
            deleted
        })
    };
    // GC loop.
    let gc = {
        let stop = stop.clone();
        let mut m = pb::maintenance_client::MaintenanceClient::with_interceptor(
            ch,
            move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("x-auth-token", token.clone());
                Ok(r)
            },
        );
        tokio::spawn(async move {
            let (mut runs, mut reclaimed, mut longest) = (0u32, 0u64, 0f64);
            while !stop.load(Ordering::Relaxed) {
                let r = m.run_gc(pb::RunGcRequest {}).await.unwrap().into_inner();
                runs += 1;
                reclaimed += r.reclaimed_bytes;
                longest = longest.max(r.seconds);
            }
            (runs, reclaimed, longest)
        })
    };
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut made = 0;
    for t in tasks {
        made += t.await.unwrap();
    }
    let deleted = deleter.await.unwrap();
    let (runs, reclaimed, longest) = gc.await.unwrap();
    eprintln!(
        "{:.0} s: {made} backups, {deleted} deleted, {runs} GC runs reclaimed {reclaimed} bytes \
         (longest run {longest:.3} s)",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        made >= 8 && deleted >= 1 && runs >= 2,
        "too little happened"
    );
    assert!(reclaimed > 0, "GC reclaimed nothing");

    // Every remaining backup restores byte-exact through the daemon.
    let mut c = c.clone();
    let expected = live.lock().clone();
    for (id, (_, h)) in &expected {
        let (v, j) = restore(&mut c, id, "", "").await;
        assert_eq!(j.state, "succeeded", "{j:?}");
        let p = path_of(&v);
        assert_eq!(
            &hash(&std::fs::read(&p).unwrap()),
            h,
            "backup {id} restored wrong bytes"
        );
        std::fs::remove_file(p).unwrap();
    }
    d.stop().await.unwrap();

    // The store verifies clean, and what is left is about the live data.
    let engine = Engine::open(data.join("store"), EngineOptions::default()).unwrap();
    let report = engine.verify(None, &NoProgress).unwrap();
    assert!(report.is_clean(), "{report:?}");
    engine.gc().unwrap();
    let stats = engine.store().stats().unwrap();
    assert!(
        stats.pack_bytes <= 2 * stats.live_bytes + (1 << 20),
        "packs {} vs live {}",
        stats.pack_bytes,
        stats.live_bytes
    );
    assert_eq!(
        engine.list().unwrap().len(),
        expected.len(),
        "records left besides the live backups"
    );
}
