//! Retention of a backup's objects (S3 Object Lock) and what GC does with retained packs, on
//! memory packs that behave like a locked bucket; and what a bucket without Object Lock
//! answers (s3s-fs, a real S3 server process).
mod common;
use std::collections::BTreeSet;
use std::sync::Arc;

use blockvault_core::{BackupId, ManifestEntry, PackId, VolumeId};
use blockvault_engine::{BackupOptions, Engine, EngineOptions, ObjectLock, RetentionMode};
use blockvault_s3_test_server::S3Server;
use blockvault_store::{Backend, MemoryPacks, Object, S3Settings, Store, StoreConfig};
use common::*;

const DAY: u64 = 86_400;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn packs_of(engine: &Engine, id: &BackupId) -> BTreeSet<PackId> {
    let mut out = BTreeSet::new();
    for block in engine.store().manifest(id) {
        for e in block.unwrap().entries {
            if let ManifestEntry::Chunk { id, .. } = e {
                out.insert(engine.store().chunk_location(&id).unwrap().unwrap().pack);
            }
        }
    }
    out
}

/// The packs the storage holds.
fn listed(engine: &Engine) -> BTreeSet<PackId> {
    let packs = engine.store().pack_storage().list().unwrap();
    packs.into_iter().collect()
}

#[test]
fn retained_packs_outlive_a_delete_and_gc_leaves_them_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = (dir.path().join("store"), dir.path().join("master.key"));
    let config = StoreConfig {
        pack_target_size: 1 << 20,
        ..StoreConfig::default()
    };
    Engine::init(&store, config, Some(&key)).unwrap();
    let packs = Arc::new(MemoryPacks::with_object_lock());
    let opts = EngineOptions {
        key_file: Some(key),
        ..EngineOptions::default()
    };
    let engine = Engine::new(Store::open_with(&store, packs.clone()).unwrap(), opts).unwrap();
    assert_eq!(engine.object_lock().unwrap(), ObjectLock::Available);
    let backup = |name: &str, seed: u64, encrypt: bool| {
        let img = dir.path().join(format!("{name}.img"));
        write_file(&img, &random_bytes(4 << 20, seed));
        let mut o = BackupOptions::new(VolumeId::new(name).unwrap(), &img);
        o.encrypt = encrypt;
        engine.backup(o).unwrap()
    };
    let a = backup("a", 1, true);
    let b = backup("b", 2, false);
    let a_packs = packs_of(&engine, &a.id);
    assert!(a_packs.len() >= 3, "{} packs", a_packs.len());

    let t = now();
    let (until, renew) = (t + 2 * DAY, t + DAY);
    let r = engine
        .retain_backup(&a.id, RetentionMode::Compliance, until, renew)
        .unwrap();
    assert!(!r.already);
    assert_eq!(
        (r.packs, r.packs_extended),
        (a_packs.len() as u64, a_packs.len() as u64)
    );
    // Manifest part(s), record, wrapped key of the encrypted volume.
    assert!(r.catalog_objects >= 3, "{r:?}");
    for p in &a_packs {
        assert_eq!(packs.retention(Object::Pack(*p)), Some(until), "pack {p}");
        assert_eq!(engine.store().pack_retained_until(*p).unwrap(), Some(until));
    }
    for p in packs_of(&engine, &b.id) {
        assert_eq!(
            packs.retention(Object::Pack(p)),
            None,
            "b's pack {p} is not retained"
        );
    }
    let record = format!("backups/{}/record", a.id);
    assert_eq!(packs.retention(Object::Meta(&record)), Some(until));

    // Within its window a renewal asks nothing; past it, the retention is extended.
    let again = engine
        .retain_backup(&a.id, RetentionMode::Compliance, until + DAY, renew)
        .unwrap();
    assert!(again.already && again.until == until, "{again:?}");
    let later = engine
        .retain_backup(&a.id, RetentionMode::Compliance, until + DAY, until + DAY)
        .unwrap();
    assert_eq!(later.packs_extended, a_packs.len() as u64);
    let p0 = *a_packs.first().unwrap();
    assert_eq!(packs.retention(Object::Pack(p0)), Some(until + DAY));

    // Someone deletes the retained backup anyway: the bucket only hides its catalog objects,
    // and GC, seeing its packs dead, must still leave every one of them in place.
    engine.delete(&a.id).unwrap();
    let hidden = packs.hidden_retained();
    assert!(hidden.iter().any(|n| n.ends_with("/record")), "{hidden:?}");
    let gc = engine.gc().unwrap();
    assert_eq!(gc.packs_retained, a_packs.len() as u64, "{gc:?}");
    assert!(
        a_packs.is_subset(&listed(&engine)),
        "GC removed a retained pack"
    );
    assert!(
        !packs
            .hidden_retained()
            .iter()
            .any(|n| n.starts_with("pack ")),
        "GC deleted a retained pack: {:?}",
        packs.hidden_retained()
    );

    // Packs without retention go as before.
    let b_packs = packs_of(&engine, &b.id);
    engine.delete(&b.id).unwrap();
    let gc = engine.gc().unwrap();
    assert_eq!(gc.packs_deleted, b_packs.len() as u64, "{gc:?}");
    assert!(listed(&engine).is_disjoint(&b_packs));
}

#[test]
fn a_bucket_without_object_lock_says_so() {
    let server = S3Server::start("no-lock");
    let dir = tempfile::tempdir().unwrap();
    let mut s = S3Settings::from_url("s3://no-lock/n").unwrap();
    s.endpoint = Some(server.endpoint().to_string());
    s.credentials_file = Some(server.credentials_file().to_path_buf());
    let config = StoreConfig {
        backend: Backend::S3(s),
        ..StoreConfig::default()
    };
    let (store, key) = (dir.path().join("store"), dir.path().join("master.key"));
    Engine::init(&store, config, Some(&key)).unwrap();
    let opts = EngineOptions {
        key_file: Some(key),
        ..EngineOptions::default()
    };
    let engine = Engine::open(&store, opts).unwrap();
    let img = dir.path().join("v.img");
    write_file(&img, &random_bytes(1 << 20, 3));
    let rec = engine
        .backup(BackupOptions::new(VolumeId::new("v").unwrap(), &img))
        .unwrap();
    match engine.object_lock().unwrap() {
        ObjectLock::Unavailable(why) => assert!(why.contains("Object Lock"), "{why}"),
        ObjectLock::Available => panic!("s3s-fs has no Object Lock"),
    }
    let t = now();
    let e = engine
        .retain_backup(&rec.id, RetentionMode::Governance, t + DAY, t)
        .unwrap_err();
    assert!(e.to_string().contains("PutObjectRetention"), "{e}");
    // The backup is untouched and GC treats its packs as any other.
    for p in packs_of(&engine, &rec.id) {
        assert_eq!(engine.store().pack_retained_until(p).unwrap(), None);
    }
    assert_eq!(
        restore_file(&engine, &dir, rec.id),
        random_bytes(1 << 20, 3)
    );
}

fn restore_file(engine: &Engine, dir: &tempfile::TempDir, id: BackupId) -> Vec<u8> {
    let out = dir.path().join(format!("restore-{id}"));
    engine
        .restore(blockvault_engine::RestoreOptions::new(id, &out))
        .unwrap();
    std::fs::read(out).unwrap()
}
