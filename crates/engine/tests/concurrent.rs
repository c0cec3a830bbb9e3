//! Several backups writing into one store at once share the worker pool and byte budget.
mod common;
use blockvault_engine::NoProgress;
use common::*;

#[test]
fn four_concurrent_backups_into_one_store_all_restore() {
    let ts = TestStore::new();
    // Overlapping content: each volume shares half its data with the next.
    let base = mixed_bytes(48 << 20, 40);
    let vols: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let mut v = base[((i * 8) << 20)..((i * 8) << 20) + (16 << 20)].to_vec();
            v.extend_from_slice(&random_bytes(8 << 20, 41 + i as u64));
            v
        })
        .collect();
    let recs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = vols
            .iter()
            .enumerate()
            .map(|(i, data)| {
                let ts = &ts;
                s.spawn(move || {
                    let src = ts.path(&format!("c{i}.img"));
                    write_file(&src, data);
                    ts.backup(&format!("c{i}"), &src, false, i % 2 == 1)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rec, data) in recs.iter().zip(&vols) {
        assert!(
            ts.restore_bytes(rec.id) == *data,
            "volume {} differs",
            rec.volume_id
        );
    }
    let report = ts.engine().verify(None, &NoProgress).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.backups_checked, 4);
}
