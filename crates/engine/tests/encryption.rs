//! Encryption: no plaintext in the store, wrong keys refused, dedup domains separated.
mod common;
use std::collections::HashSet;

use blockvault_core::{ChunkId, ManifestEntry};
use blockvault_engine::{BackupOptions, EngineOptions, Error};
use common::*;

const MARKER: &[u8] = b"BLOCKVAULT-SECRET-MARKER-7f3a9c1e";

fn chunk_ids(ts: &TestStore, id: &blockvault_core::BackupId) -> HashSet<ChunkId> {
    let mut s = HashSet::new();
    for b in ts.engine().store().manifest(id) {
        for e in b.unwrap().entries {
            if let ManifestEntry::Chunk { id, .. } = e {
                s.insert(id);
            }
        }
    }
    s
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn marker_appears_nowhere_in_the_store() {
    let mut ts = TestStore::new();
    // The marker repeated in compressible and incompressible surroundings.
    let mut data = mixed_bytes(8 << 20, 1);
    for i in 0..200 {
        let at = i * 40_000;
        data[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    let src = ts.path("secret.img");
    write_file(&src, &data);
    let rec = ts.backup("secret", &src, false, true);
    // Flush RocksDB memtables so everything the index holds is in files too.
    ts.engine().store().flush().unwrap();
    ts.close();
    let files = all_files(&ts.store_dir());
    assert!(files.len() > 3);
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!contains(&bytes, MARKER), "marker found in {}", f.display());
    }
    ts.open(EngineOptions::default()).unwrap();
    assert!(ts.restore_bytes(rec.id) == data);
}

#[test]
fn wrong_master_key_is_refused_and_changes_nothing() {
    let mut ts = TestStore::new();
    let src = ts.path("v.img");
    write_file(&src, &random_bytes(2 << 20, 2));
    let rec = ts.backup("v", &src, false, true);
    let before = all_files(&ts.store_dir().join("packs")).len();

    let wrong = ts.path("wrong.key");
    blockvault_engine::load_or_create_key(&wrong).unwrap();
    ts.open(EngineOptions {
        key_file: Some(wrong),
        ..Default::default()
    })
    .unwrap();
    let mut o = BackupOptions::new(blockvault_core::VolumeId::new("v").unwrap(), &src);
    o.encrypt = true;
    let err = ts.engine().backup(o).unwrap_err();
    assert!(matches!(err, Error::WrongMasterKey(_)), "{err}");
    let key_text = std::fs::read_to_string(ts.key_file()).unwrap();
    assert!(!err.to_string().contains(key_text.lines().nth(1).unwrap()));
    let out = ts.path("out.img");
    let err = ts
        .engine()
        .restore(blockvault_engine::RestoreOptions::new(rec.id, &out))
        .unwrap_err();
    assert!(matches!(err, Error::WrongMasterKey(_)), "{err}");
    assert!(
        !out.exists(),
        "a refused restore must not create its target"
    );
    assert_eq!(ts.engine().list().unwrap().len(), 1, "no record was added");
    assert_eq!(all_files(&ts.store_dir().join("packs")).len(), before);

    // A key file that is not a key file at all.
    let junk = ts.path("junk.key");
    std::fs::write(&junk, "not a key").unwrap();
    ts.open(EngineOptions {
        key_file: Some(junk),
        ..Default::default()
    })
    .unwrap();
    assert!(ts
        .engine()
        .verify(Some(rec.id), &blockvault_engine::NoProgress)
        .is_err());
}

#[test]
fn dedup_domains_encrypted_separate_plain_shared() {
    let ts = TestStore::new();
    let data = mixed_bytes(6 << 20, 3);
    let src = ts.path("same.img");
    write_file(&src, &data);
    let e1 = ts.backup("enc1", &src, false, true);
    let e2 = ts.backup("enc2", &src, false, true);
    let p1 = ts.backup("plain1", &src, false, false);
    let p2 = ts.backup("plain2", &src, false, false);
    let (ie1, ie2) = (chunk_ids(&ts, &e1.id), chunk_ids(&ts, &e2.id));
    let (ip1, ip2) = (chunk_ids(&ts, &p1.id), chunk_ids(&ts, &p2.id));
    assert!(!ie1.is_empty());
    assert!(ie1.is_disjoint(&ie2), "two encrypted volumes share chunks");
    assert!(ie1.is_disjoint(&ip1));
    assert_eq!(ip1, ip2, "two plain volumes must share every chunk");
    assert!(
        e2.stored_bytes > 0,
        "second encrypted volume must store its own chunks"
    );
    assert_eq!(
        p2.stored_bytes, 0,
        "second plain volume must store nothing new"
    );
    assert_ne!(e1.encryption_key_id, e2.encryption_key_id);
    for id in [e1.id, e2.id, p1.id, p2.id] {
        assert!(ts.restore_bytes(id) == data);
    }
}
