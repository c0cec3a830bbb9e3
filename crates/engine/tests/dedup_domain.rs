//! Per-project dedup domains for unencrypted volumes: equal data in two domains shares no chunk
//! id (the store cannot tell one project that another stores the same content), volumes of one
//! domain dedup fully, and backups without a domain stay in the global domain of plain BLAKE3.
mod common;
use std::collections::HashSet;
use std::path::Path;

use blockvault_core::keys::chunk_id;
use blockvault_core::{BackupRecord, ChunkId, ManifestEntry, VolumeId};
use blockvault_engine::{BackupOptions, Engine, EngineOptions, Error, NoProgress};
use blockvault_store::StoreConfig;
use common::*;

fn chunk_ids(engine: &Engine, rec: &BackupRecord) -> HashSet<ChunkId> {
    engine
        .store()
        .manifest(&rec.id)
        .flat_map(|b| b.unwrap().entries)
        .filter_map(|e| match e {
            ManifestEntry::Chunk { id, .. } => Some(id),
            ManifestEntry::Hole { .. } => None,
        })
        .collect()
}

fn backup_in(
    engine: &Engine,
    volume: &str,
    src: &Path,
    domain: Option<&str>,
    encrypt: bool,
) -> blockvault_engine::Result<BackupRecord> {
    let mut o = BackupOptions::new(VolumeId::new(volume).unwrap(), src);
    o.dedup_domain = domain.map(str::to_string);
    o.encrypt = encrypt;
    engine.backup(o)
}

fn assert_restores_and_verifies(ts: &TestStore, recs: &[&BackupRecord], data: &[u8]) {
    for rec in recs {
        assert!(ts.restore_bytes(rec.id) == data, "{}", rec.volume_id);
        let report = ts.engine().verify(Some(rec.id), &NoProgress).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert!(report.chunks_checked > 0);
    }
    let all = ts.engine().verify(None, &NoProgress).unwrap();
    assert!(all.is_clean(), "{all:?}");
}

#[test]
fn dedup_domains_share_no_chunk_and_dedup_within() {
    let mut ts = TestStore::new();
    let data = mixed_bytes(6 << 20, 31);
    let src = ts.path("base.img");
    write_file(&src, &data);
    let e = ts.engine();
    let a = backup_in(e, "p1-a", &src, Some("p1"), false).unwrap();
    let b = backup_in(e, "p2-b", &src, Some("p2"), false).unwrap();
    let c = backup_in(e, "p1-c", &src, Some("p1"), false).unwrap();
    let g = backup_in(e, "global", &src, None, false).unwrap();
    assert_eq!(a.dedup_domain.as_deref(), Some("p1"));
    assert_eq!(b.dedup_domain.as_deref(), Some("p2"));
    assert_eq!(g.dedup_domain, None);
    assert!(!a.encrypted && !b.encrypted);

    let (ia, ib, ic, ig) = (
        chunk_ids(e, &a),
        chunk_ids(e, &b),
        chunk_ids(e, &c),
        chunk_ids(e, &g),
    );
    assert!(!ia.is_empty());
    assert!(ia.is_disjoint(&ib), "two domains share chunk ids");
    assert!(ia.is_disjoint(&ig) && ib.is_disjoint(&ig));
    assert_eq!(ia, ic, "one domain must dedup fully");
    assert_eq!(
        c.stored_bytes, 0,
        "the second volume of p1 stored data again"
    );
    assert!(b.stored_bytes > 0, "p2 must store its own chunks");
    // The global domain is plain BLAKE3 of the chunk's bytes, as before domains existed.
    let mut at = 0usize;
    for entry in e.store().manifest(&g.id).flat_map(|b| b.unwrap().entries) {
        let len = entry.len() as usize;
        if let ManifestEntry::Chunk { id, .. } = entry {
            assert_eq!(id, chunk_id(&data[at..at + len], None));
        }
        at += len;
    }
    assert_eq!(at, data.len());
    // Three id spaces in the index: p1, p2, global.
    assert_eq!(
        e.store().stats().unwrap().chunks,
        (ia.len() + ib.len() + ig.len()) as u64
    );
    assert_restores_and_verifies(&ts, &[&a, &b, &c, &g], &data);

    // A fresh engine derives the domain keys again from the master key.
    ts.open(EngineOptions::default()).unwrap();
    assert_restores_and_verifies(&ts, &[&a, &b, &c, &g], &data);
}

#[test]
fn dedup_domain_needs_the_master_key_and_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    Engine::init(&store, StoreConfig::default(), None).unwrap();
    let e = Engine::open(&store, EngineOptions::default()).unwrap();
    let src = dir.path().join("v.img");
    write_file(&src, &mixed_bytes(1 << 20, 2));
    let err = backup_in(&e, "v", &src, Some("p1"), false).unwrap_err();
    assert!(matches!(err, Error::NoMasterKey), "{err:?}");
    // Without a domain, a store without a master key works as before.
    backup_in(&e, "v", &src, None, false).unwrap();

    let ts = TestStore::new();
    let err = backup_in(ts.engine(), "v", &src, Some(""), false).unwrap_err();
    assert!(err.to_string().contains("dedup_domain"), "{err}");
}

#[test]
fn encrypted_volumes_ignore_the_dedup_domain() {
    let ts = TestStore::new();
    let data = mixed_bytes(3 << 20, 4);
    let src = ts.path("v.img");
    write_file(&src, &data);
    let plain = backup_in(ts.engine(), "plain", &src, Some("p1"), false).unwrap();
    let enc = backup_in(ts.engine(), "enc", &src, Some("p1"), true).unwrap();
    assert!(enc.encrypted);
    assert_eq!(
        enc.dedup_domain, None,
        "encrypted ids are keyed by the data key"
    );
    assert!(chunk_ids(ts.engine(), &plain).is_disjoint(&chunk_ids(ts.engine(), &enc)));
    // An incremental of the encrypted volume, still with the domain set, dedups with its parent.
    let mut o = BackupOptions::new(VolumeId::new("enc").unwrap(), &src);
    o.dedup_domain = Some("p1".into());
    o.incremental = true;
    let inc = ts.engine().backup(o).unwrap();
    assert_eq!(inc.stored_bytes, 0);
    assert_restores_and_verifies(&ts, &[&plain, &enc, &inc], &data);
}

#[test]
fn store_written_before_domains_still_opens_restores_and_verifies() {
    let mut ts = TestStore::new();
    let data = mixed_bytes(3 << 20, 9);
    let src = ts.path("v.img");
    write_file(&src, &data);
    let plain = ts.backup("plain", &src, false, false);
    let enc = ts.backup("enc", &src, false, true);
    // Records without a domain are written exactly as before the field existed.
    for rec in [&plain, &enc] {
        let v: serde_json::Value = serde_json::from_slice(&rec.encode()).unwrap();
        assert!(v.get("dedup_domain").is_none(), "{v}");
    }
    ts.close();
    ts.open(EngineOptions::default()).unwrap();
    let back = ts.engine().get(&plain.id).unwrap();
    assert_eq!(back.dedup_domain, None);
    assert_restores_and_verifies(&ts, &[&plain, &enc], &data);
    // An incremental without a domain still dedups with the old backup.
    let inc = ts.backup("plain", &src, true, false);
    assert_eq!(inc.stored_bytes, 0);
}
