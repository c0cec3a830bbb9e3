//! A store verify that remembers: packs found intact within the period are not read again (on
//! S3: no GET at all), packs added since are, a damaged pack is reported by every run, and a
//! period of zero is the full verify.
mod common;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use blockvault_core::format::PACK_ENTRY_HEADER_LEN;
use blockvault_core::{ManifestEntry, VolumeId};
use blockvault_engine::{BackupOptions, Engine, EngineOptions, NoProgress};
use blockvault_s3_test_server::S3Server;
use blockvault_store::{Backend, S3Packs, S3Settings, Store, StoreConfig};
use common::*;

const DAY: Duration = Duration::from_secs(86400);

#[test]
fn a_second_verify_within_its_period_reads_nothing_from_the_bucket() {
    let server = S3Server::start("verify-period");
    let dir = tempfile::tempdir().unwrap();
    let mut s = S3Settings::from_url("s3://verify-period/n").unwrap();
    s.endpoint = Some(server.endpoint().to_string());
    s.credentials_file = Some(server.credentials_file().to_path_buf());
    let config = StoreConfig {
        pack_target_size: 2 << 20,
        backend: Backend::S3(s.clone()),
        ..StoreConfig::default()
    };
    let (store, key) = (dir.path().join("store"), dir.path().join("master.key"));
    Engine::init(&store, config, Some(&key)).unwrap();
    // The engine over a backend whose request counts the test can read.
    let packs = Arc::new(S3Packs::new(s).unwrap());
    let opts = EngineOptions {
        key_file: Some(key),
        ..EngineOptions::default()
    };
    let engine = Engine::new(Store::open_with(&store, packs.clone()).unwrap(), opts).unwrap();
    let backup = |name: &str, data: &[u8], encrypt: bool| {
        let img = dir.path().join(format!("{name}.img"));
        write_file(&img, data);
        let mut o = BackupOptions::new(VolumeId::new(name).unwrap(), &img);
        o.encrypt = encrypt;
        engine.backup(o).unwrap()
    };
    backup("a", &mixed_bytes(6 << 20, 1), false);
    backup("b", &random_bytes(3 << 20, 2), true);
    let sealed = engine.store().sealed_packs().unwrap().len() as u64;
    assert!(sealed >= 3, "{sealed} packs");

    let down = || packs.requests().bytes_down.load(Ordering::Relaxed);
    let gets = || packs.requests().gets.load(Ordering::Relaxed);
    let first = engine.verify_store_within(DAY, &NoProgress).unwrap();
    assert!(first.is_clean(), "{first:?}");
    assert_eq!((first.packs_checked, first.packs_skipped), (sealed, 0));
    assert!(first.chunks_checked > 0);

    let (d0, g0) = (down(), gets());
    let second = engine.verify_store_within(DAY, &NoProgress).unwrap();
    assert!(second.is_clean(), "{second:?}");
    assert_eq!((second.packs_checked, second.packs_skipped), (0, sealed));
    assert_eq!(second.chunks_checked, 0);
    assert_eq!((down() - d0, gets() - g0), (0, 0), "no byte, no GET");

    // A new backup's packs are due; the others still are not.
    backup("c", &random_bytes(2 << 20, 3), false);
    let now = engine.store().sealed_packs().unwrap().len() as u64;
    let third = engine.verify_store_within(DAY, &NoProgress).unwrap();
    assert_eq!(
        (third.packs_checked, third.packs_skipped),
        (now - sealed, sealed)
    );

    // Period zero: everything again.
    let d1 = down();
    let full = engine.verify(None, &NoProgress).unwrap();
    assert!(full.is_clean());
    assert_eq!((full.packs_checked, full.packs_skipped), (now, 0));
    let pack_bytes: u64 = engine
        .store()
        .sealed_packs()
        .unwrap()
        .iter()
        .map(|p| p.1.size)
        .sum();
    assert!(
        down() - d1 > pack_bytes / 2,
        "the full verify downloads the packs"
    );
}

#[test]
fn a_damaged_pack_is_reported_by_every_run_and_intact_ones_are_skipped() {
    let ts = TestStore::new();
    let img = ts.path("v.img");
    write_file(&img, &mixed_bytes(6 << 20, 9));
    let rec = ts.backup("v", &img, false, true);
    let img2 = ts.path("w.img");
    write_file(&img2, &random_bytes(2 << 20, 10));
    let other = ts.backup("w", &img2, false, false);
    let e = ts.engine();
    assert!(e.verify_store_within(DAY, &NoProgress).unwrap().is_clean());
    let packs = e.store().sealed_packs().unwrap().len() as u64;

    // Flip a byte inside one of v's chunks.
    let victim = e
        .store()
        .manifest(&rec.id)
        .flat_map(|b| b.unwrap().entries)
        .find_map(|x| match x {
            ManifestEntry::Chunk { id, .. } => Some(id),
            ManifestEntry::Hole { .. } => None,
        })
        .unwrap();
    let loc = e.store().chunk_location(&victim).unwrap().unwrap();
    let h = loc.pack.to_hex();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(
            ts.store_dir()
                .join("packs")
                .join(&h[..2])
                .join(format!("{h}.pack")),
        )
        .unwrap();
    let at = loc.offset + PACK_ENTRY_HEADER_LEN + u64::from(loc.len) / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 1], at).unwrap();
    drop(f);

    // Within the period the damage is not seen (that is the point of the period) ...
    assert!(e.verify_store_within(DAY, &NoProgress).unwrap().is_clean());
    // ... a full verify sees it, and from then on every run reads that pack again.
    for period in [Duration::ZERO, DAY, DAY] {
        let r = e.verify_store_within(period, &NoProgress).unwrap();
        assert_eq!(r.corrupt.len(), 1, "{r:?}");
        assert_eq!(r.corrupt[0].chunk, victim.to_hex());
        assert_eq!(r.corrupt[0].backups, vec![rec.id]);
        assert!(!r.corrupt[0].backups.contains(&other.id));
        if !period.is_zero() {
            assert_eq!((r.packs_checked, r.packs_skipped), (1, packs - 1), "{r:?}");
        }
    }
}
