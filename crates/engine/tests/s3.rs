//! The data path through the S3 backend, against a real S3 server process (`bv-s3-server`:
//! s3s-fs on 127.0.0.1:0, SigV4 checked): full, incremental, encrypted, restore, verify, delete
//! and GC, also GC while a backup writes; and a server that fails 10 % of its requests.
mod common;
use std::collections::HashSet;

use blockvault_core::{BackupId, BackupState, VolumeId};
use blockvault_engine::{BackupOptions, Engine, EngineOptions, NoProgress, RestoreOptions};
use blockvault_s3_test_server::{Options, S3Server};
use blockvault_store::{Backend, S3Settings, StoreConfig};
use common::*;

const BUCKET: &str = "blockvault-e2e";

struct S3Store {
    server: S3Server,
    dir: tempfile::TempDir,
    engine: Engine,
}

impl S3Store {
    fn new(server: S3Server, prefix: &str) -> S3Store {
        Self::with_pack_size(server, prefix, 12 << 20)
    }

    fn with_pack_size(server: S3Server, prefix: &str, pack_target_size: u64) -> S3Store {
        let dir = tempfile::tempdir().unwrap();
        let mut s = S3Settings::from_url(&format!("s3://{BUCKET}/{prefix}")).unwrap();
        s.endpoint = Some(server.endpoint().to_string());
        s.credentials_file = Some(server.credentials_file().to_path_buf());
        let config = StoreConfig {
            // Small packs: many objects, several multipart uploads per backup.
            pack_target_size,
            backend: Backend::S3(s),
            ..StoreConfig::default()
        };
        let store = dir.path().join("store");
        let key = dir.path().join("master.key");
        Engine::init(&store, config, Some(&key)).unwrap();
        let engine = Engine::open(
            &store,
            EngineOptions {
                key_file: Some(key),
                ..EngineOptions::default()
            },
        )
        .unwrap();
        S3Store {
            server,
            dir,
            engine,
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn backup(&self, volume: &str, data: &[u8], incremental: bool, encrypt: bool) -> BackupId {
        let src = self.path(&format!("{volume}.img"));
        write_file(&src, data);
        let mut o = BackupOptions::new(VolumeId::new(volume).unwrap(), &src);
        o.incremental = incremental;
        o.encrypt = encrypt;
        let rec = self.engine.backup(o).unwrap();
        assert_eq!(rec.state, BackupState::Available);
        rec.id
    }

    fn restore(&self, id: BackupId) -> Vec<u8> {
        let out = self.path(&format!("restore-{id}"));
        self.engine.restore(RestoreOptions::new(id, &out)).unwrap();
        let data = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        data
    }

    /// Pack objects in the bucket, and the sealed packs of the index.
    fn packs(&self) -> (HashSet<String>, HashSet<String>) {
        let store = self.engine.store();
        let listed = store
            .pack_storage()
            .list()
            .unwrap()
            .into_iter()
            .map(|p| p.to_hex())
            .collect();
        let sealed = store
            .sealed_packs()
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.to_hex())
            .collect();
        (listed, sealed)
    }
}

fn versions() -> Vec<Vec<u8>> {
    let v1 = mixed_bytes(40 << 20, 1);
    let mut v2 = v1.clone();
    v2[4 << 20..16 << 20].copy_from_slice(&random_bytes(12 << 20, 2));
    let mut v3 = v2.clone();
    v3[30 << 20..34 << 20].copy_from_slice(&random_bytes(4 << 20, 3));
    vec![v1, v2, v3]
}

#[test]
fn full_incremental_restore_verify_delete_gc_through_s3() {
    let s = S3Store::new(S3Server::start(BUCKET), "node-a");
    let vs = versions();
    let mut ids = Vec::new();
    for (i, v) in vs.iter().enumerate() {
        ids.push(s.backup("vol-a", v, i > 0, false));
    }
    let enc = s.backup("vol-enc", &vs[0], false, true);
    // The packs are objects in the bucket, under the prefix; nothing is in the store dir.
    let (listed, sealed) = s.packs();
    assert_eq!(
        listed, sealed,
        "every sealed pack is an object, and no other"
    );
    assert!(s.server.bytes_under(&format!("{BUCKET}/node-a/packs")) > 40 << 20);
    assert!(!s.path("store/packs").exists() || dir_bytes(&s.path("store/packs")) == 0);

    for (id, v) in ids.iter().zip(&vs) {
        assert!(s.restore(*id) == *v, "backup {id} round-trips");
    }
    assert!(s.restore(enc) == vs[0], "encrypted backup round-trips");
    let report = s.engine.verify(None, &NoProgress).unwrap();
    assert!(report.is_clean(), "{report:?}");
    for id in ids.iter().chain([&enc]) {
        assert!(s.engine.verify(Some(*id), &NoProgress).unwrap().is_clean());
    }

    // Delete the first version and the encrypted backup; GC removes their objects.
    let before = s.server.bytes_under(BUCKET);
    s.engine.delete(&ids[0]).unwrap();
    s.engine.delete(&enc).unwrap();
    let r = s.engine.gc().unwrap();
    let after = s.server.bytes_under(BUCKET);
    eprintln!("gc: {r:?}; bucket bytes {before} -> {after}");
    assert!(r.packs_deleted + r.packs_rewritten > 0, "{r:?}");
    assert!(before - after > 8 << 20, "reclaimed {}", before - after);
    let (listed, sealed) = s.packs();
    assert_eq!(listed, sealed, "GC left no dead objects behind");
    for (id, v) in ids[1..].iter().zip(&vs[1..]) {
        assert!(s.restore(*id) == *v, "survivor {id} round-trips after GC");
    }
    assert!(s.engine.verify(None, &NoProgress).unwrap().is_clean());
}

#[test]
fn gc_while_a_backup_writes_to_s3() {
    let s = S3Store::new(S3Server::start(BUCKET), "node-b");
    let vs = versions();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut all: Vec<(BackupId, usize)> = Vec::new();
    std::thread::scope(|sc| {
        let gc = sc.spawn(|| {
            let mut runs = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || runs < 2 {
                s.engine.gc().unwrap();
                runs += 1;
            }
            runs
        });
        for round in 0..5 {
            let which = round % vs.len();
            all.push((s.backup("vol-b", &vs[which], round > 0, false), which));
            if round >= 2 {
                s.engine.delete(&all[round - 2].0).unwrap();
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        eprintln!("gc ran {} times during the backups", gc.join().unwrap());
    });
    s.engine.gc().unwrap();
    assert!(s.engine.verify(None, &NoProgress).unwrap().is_clean());
    for (id, which) in &all[all.len() - 2..] {
        assert!(s.restore(*id) == vs[*which], "backup {id} round-trips");
    }
    let (listed, sealed) = s.packs();
    assert_eq!(listed, sealed);
}

/// A server that answers 10 % of the requests with 503 SlowDown or a dropped connection: every
/// backup completes (retries) or fails with a reason, and every completed one restores.
#[test]
fn a_flaky_server_loses_nothing_committed() {
    let server = S3Server::start_with(Options {
        buckets: vec![BUCKET.into()],
        fail_rate: 0.10,
        ..Options::default()
    });
    // 1 MiB packs: a hundred uploads, so the faults hit backups too.
    let s = S3Store::with_pack_size(server, "flaky", 1 << 20);
    let vs = versions();
    let mut done = Vec::new();
    let mut failed = 0;
    for round in 0..4 {
        let which = round % vs.len();
        let src = s.path("flaky.img");
        write_file(&src, &vs[which]);
        let mut o = BackupOptions::new(VolumeId::new("vol-f").unwrap(), &src);
        o.incremental = round > 0;
        match s.engine.backup(o) {
            Ok(rec) => done.push((rec.id, which)),
            Err(e) => {
                eprintln!("backup {round} failed: {e}");
                failed += 1;
            }
        }
    }
    let faults = s.server.injected_faults();
    eprintln!(
        "{} backups completed, {failed} failed; the server injected {faults} faults",
        done.len()
    );
    assert!(
        faults >= 3,
        "the server failed requests during the backups: {faults}"
    );
    assert!(!done.is_empty(), "retries carry most backups through");
    for (id, which) in &done {
        assert!(s.restore(*id) == vs[*which], "backup {id} round-trips");
    }
    assert!(s.engine.verify(None, &NoProgress).unwrap().is_clean());
    let faults = s.server.injected_faults();
    eprintln!("{faults} faults in all, restores and verify included");
    assert!(faults >= 10, "{faults}");
}

/// The server goes away in the middle of the volumes' backups: the backup that is running fails
/// with a reason naming the bucket, and once the server is back (same port, same objects) every
/// backup committed before still restores byte for byte.
#[test]
fn a_server_that_goes_away_fails_the_backup_and_keeps_what_was_committed() {
    let objects = tempfile::tempdir().unwrap();
    let opts = Options {
        buckets: vec![BUCKET.into()],
        root: Some(objects.path().to_path_buf()),
        ..Options::default()
    };
    let mut s = S3Store::with_pack_size(S3Server::start_with(opts.clone()), "outage", 1 << 20);
    let vs = versions();
    let committed = s.backup("vol-o", &vs[0], false, false);
    let port = s.server.port();
    s.server.stop();
    let src = s.path("outage.img");
    write_file(&src, &vs[1]);
    let mut o = BackupOptions::new(VolumeId::new("vol-o").unwrap(), &src);
    o.incremental = true;
    let t = std::time::Instant::now();
    let err = s
        .engine
        .backup(o)
        .expect_err("no server, no backup")
        .to_string();
    eprintln!("failed after {:.1} s: {err}", t.elapsed().as_secs_f64());
    assert!(err.contains(BUCKET), "the reason names the bucket: {err}");
    let failed = s
        .engine
        .list()
        .unwrap()
        .into_iter()
        .find(|r| r.id != committed)
        .expect("the failed backup has a record");
    assert_eq!(failed.state, BackupState::Error, "{failed:?}");
    assert!(failed.fail_reason.is_some());

    s.server = S3Server::start_with(Options {
        port: Some(port),
        ..opts
    });
    assert!(
        s.restore(committed) == vs[0],
        "the committed backup is intact"
    );
    s.engine.gc().unwrap();
    assert!(
        s.restore(committed) == vs[0],
        "and survives GC of the failed one"
    );
    assert!(s.engine.verify(None, &NoProgress).unwrap().is_clean());
}
