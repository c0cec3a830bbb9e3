//! The catalog's rules, on a local store (its catalog lives in `STORE/meta/`): what a crash
//! between the record object and the local commit leaves, what a delete removes, and what
//! `recover` believes (only objects whose MAC checks under the master key, at their own name).
mod common;

use blockvault_core::BackupState;
use blockvault_engine::{Engine, EngineOptions, RecoverFrom};
use common::*;

fn meta(ts: &TestStore) -> std::path::PathBuf {
    ts.store_dir().join("meta")
}

fn recover(ts: &mut TestStore) -> blockvault_engine::RecoverReport {
    ts.close();
    let key = ts.key_file();
    let (_, r) = Engine::recover(
        ts.store_dir(),
        RecoverFrom::Dir,
        Some(&key),
        EngineOptions::default(),
    )
    .unwrap();
    ts.open(EngineOptions::default()).unwrap();
    r
}

#[test]
fn a_backup_interrupted_after_its_record_object_is_rolled_back_at_open() {
    let mut ts = TestStore::new();
    let img = ts.path("a.img");
    write_file(&img, &random_bytes(3 << 20, 1));
    let kept = ts.backup("a", &img, false, false);
    let mut rec = ts.backup("a", &img, false, false);
    let record = meta(&ts).join(format!("backups/{}/record", rec.id));
    assert!(record.is_file());
    // What a crash after the record object, before the local commit, leaves on disk.
    rec.state = BackupState::InProgress;
    ts.engine().store().put_record(&rec, true).unwrap();
    ts.close();
    ts.open(EngineOptions::default()).unwrap();
    assert_eq!(ts.engine().get(&rec.id).unwrap().state, BackupState::Error);
    assert!(!record.exists(), "the bucket no longer lists the backup");
    assert!(!meta(&ts).join(format!("backups/{}", rec.id)).exists());
    let r = recover(&mut ts);
    let ids: Vec<_> = r.backups.iter().map(|b| b.record.id).collect();
    assert_eq!(ids, vec![kept.id]);
}

#[test]
fn delete_removes_the_catalog_objects_and_recover_does_not_bring_a_backup_back() {
    let mut ts = TestStore::new();
    let img = ts.path("a.img");
    let data = random_bytes(2 << 20, 2);
    write_file(&img, &data);
    let a = ts.backup("a", &img, false, false);
    let b = ts.backup("a", &img, true, false);
    ts.engine().delete(&a.id).unwrap();
    assert!(!meta(&ts).join(format!("backups/{}", a.id)).exists());
    ts.engine().gc().unwrap();
    let r = recover(&mut ts);
    assert_eq!(r.backups.len(), 1);
    assert_eq!(r.backups[0].record.id, b.id);
    assert_eq!(r.backups[0].missing_chunks, 0);
    assert_eq!(ts.restore_bytes(b.id), data);
}

#[test]
fn recover_believes_only_objects_that_check_at_their_own_name() {
    let mut ts = TestStore::new();
    let img = ts.path("a.img");
    let data = random_bytes(2 << 20, 3);
    write_file(&img, &data);
    let a = ts.backup("a", &img, false, false);
    let b = ts.backup("b", &img, false, false);
    let c = ts.backup("c", &img, false, false);
    let rec = |id: &blockvault_core::BackupId| meta(&ts).join(format!("backups/{id}/record"));
    // a: one flipped bit in its record. b: c's record copied over it (a valid object, at
    // another name).
    let mut bytes = std::fs::read(rec(&a.id)).unwrap();
    bytes[20] ^= 1;
    std::fs::write(rec(&a.id), bytes).unwrap();
    std::fs::copy(rec(&c.id), rec(&b.id)).unwrap();
    let r = recover(&mut ts);
    let ids: Vec<_> = r.backups.iter().map(|x| x.record.id).collect();
    assert_eq!(ids, vec![c.id], "{r:?}");
    assert_eq!(r.backups_damaged.len(), 2, "{r:?}");
    assert!(
        r.backups_damaged.iter().all(|(_, why)| why.contains("MAC")),
        "{r:?}"
    );
    assert_eq!(ts.restore_bytes(c.id), data);
}

#[test]
fn a_damaged_trailer_is_scanned_instead_and_a_missing_manifest_part_is_reported() {
    let mut ts = TestStore::new();
    let img = ts.path("a.img");
    let data = mixed_bytes(4 << 20, 4);
    write_file(&img, &data);
    let a = ts.backup("a", &img, false, true);
    let b = ts.backup("b", &img, false, false);
    // Flip a byte inside one pack's trailer (just before the 16-byte footer and the MAC).
    let pack = all_files(&ts.store_dir().join("packs"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let n = bytes.len();
    bytes[n - 16 - 32 - 1] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    std::fs::remove_file(meta(&ts).join(format!("backups/{}/manifest-000000", b.id))).unwrap();
    let r = recover(&mut ts);
    assert_eq!(r.packs_scanned.len(), 1, "{r:?}");
    assert!(
        matches!(&r.packs_scanned[0].1, why if why.contains("MAC")),
        "{r:?}"
    );
    assert_eq!(r.keys, 1);
    assert_eq!(r.backups.len(), 1);
    assert_eq!(
        ts.restore_bytes(a.id),
        data,
        "the encrypted backup is whole"
    );
    assert_eq!(r.backups_damaged.len(), 1, "{r:?}");
    let lost = ts.engine().get(&b.id).unwrap();
    assert_eq!(lost.state, BackupState::Error);
    assert!(lost.fail_reason.unwrap().contains("recover"));
    let v = ts
        .engine()
        .verify(None, &blockvault_engine::NoProgress)
        .unwrap();
    assert!(v.is_clean(), "{v:?}");
}
