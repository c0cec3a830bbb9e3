//! Delete + GC: space comes back, survivors stay restorable, also while backups write.
mod common;
use blockvault_core::BackupId;
use blockvault_engine::NoProgress;
use blockvault_store::StoreConfig;
use common::*;

fn small_packs() -> StoreConfig {
    StoreConfig {
        pack_target_size: 1 << 20,
        ..StoreConfig::default()
    }
}

/// Three versions of a volume, each rewriting a large region of the previous one.
fn versions() -> Vec<Vec<u8>> {
    let v1 = random_bytes(24 << 20, 1);
    let mut v2 = v1.clone();
    v2[..12 << 20].copy_from_slice(&random_bytes(12 << 20, 2));
    let mut v3 = v2.clone();
    v3[16 << 20..20 << 20].copy_from_slice(&random_bytes(4 << 20, 3));
    vec![v1, v2, v3]
}

#[test]
fn delete_first_of_three_then_gc_reclaims_and_others_restore() {
    let ts = TestStore::with_config(small_packs());
    let src = ts.path("v.img");
    let vs = versions();
    let mut ids = Vec::new();
    for (i, v) in vs.iter().enumerate() {
        write_file(&src, v);
        ids.push(ts.backup("v", &src, i > 0, true).id);
    }
    let before = ts.pack_bytes();
    ts.engine().delete(&ids[0]).unwrap();
    let r = ts.engine().gc().unwrap();
    let after = ts.pack_bytes();
    eprintln!("gc: {r:?}, pack bytes {before} -> {after}");
    // v1's first 12 MiB are referenced by nobody else.
    assert!(
        before - after >= 10 << 20,
        "reclaimed only {} bytes",
        before - after
    );
    assert!(r.packs_deleted + r.packs_rewritten > 0);
    assert!(ts.engine().get(&ids[0]).is_err(), "deleted record is gone");
    for (id, v) in ids[1..].iter().zip(&vs[1..]) {
        assert!(ts.restore_bytes(*id) == *v);
    }
    assert!(ts.engine().verify(None, &NoProgress).unwrap().is_clean());
    // A second GC finds nothing more to do.
    let again = ts.engine().gc().unwrap();
    assert_eq!(again.reclaimed_bytes(), 0, "{again:?}");
}

#[test]
fn gc_running_while_backups_write_breaks_nothing() {
    let ts = TestStore::with_config(small_packs());
    let vs = versions();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut kept: Vec<(BackupId, usize)> = Vec::new();
    std::thread::scope(|s| {
        let gc = s.spawn(|| {
            let mut runs = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || runs < 2 {
                ts.engine().gc().unwrap();
                runs += 1;
            }
            runs
        });
        // Six backups cycling through the versions; after each, delete the one two back.
        let mut all = Vec::new();
        for round in 0..6 {
            let which = round % vs.len();
            let src = ts.path(&format!("v{round}.img"));
            write_file(&src, &vs[which]);
            let rec = ts.backup("v", &src, round > 0, false);
            all.push((rec.id, which));
            if round >= 2 {
                let (old, _) = all[round - 2];
                ts.engine().delete(&old).unwrap();
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let runs = gc.join().unwrap();
        eprintln!("gc ran {runs} times during the backups");
        kept = all[all.len() - 2..].to_vec();
    });
    ts.engine().gc().unwrap();
    let report = ts.engine().verify(None, &NoProgress).unwrap();
    assert!(report.is_clean(), "{report:?}");
    for (id, which) in kept {
        assert!(
            ts.restore_bytes(id) == vs[which],
            "backup {id} did not round-trip"
        );
    }
    // Deleted versions' unique data is gone: the store holds about two versions' worth.
    assert!(ts.pack_bytes() < 40 << 20, "pack bytes {}", ts.pack_bytes());
}
