//! A manifest must cover exactly `[0, size)` of its backup: a crafted gap, overlap, entry past
//! the size, short manifest or offset near `u64::MAX` is reported by verify (no panic) and
//! refused by restore, which writes nothing past the target's size.
mod common;
use blockvault_core::{BackupRecord, ManifestBlock, ManifestEntry};
use blockvault_engine::{NoProgress, RestoreOptions};
use blockvault_store::RefBatch;
use common::*;

/// How a case rewrites the (single) manifest block of a backup.
type Craft = fn(ManifestBlock) -> Vec<ManifestBlock>;

fn split(b: ManifestBlock, shift: i64) -> Vec<ManifestBlock> {
    let k = b.entries.len() / 2;
    let first = ManifestBlock {
        start: b.start,
        entries: b.entries[..k].to_vec(),
    };
    let start = first.len().checked_add_signed(shift).unwrap();
    let second = ManifestBlock {
        start,
        entries: b.entries[k..].to_vec(),
    };
    vec![first, second]
}

fn cases() -> Vec<(&'static str, &'static str, Craft)> {
    vec![
        ("gap", "gap: block 1 starts", |b| split(b, 4096)),
        ("overlap", "overlap: block 1 starts", |b| split(b, -4096)),
        (
            "entry past the size",
            "ends past the backup's size",
            |mut b| {
                b.entries.push(ManifestEntry::Hole { len: 4096 });
                vec![b]
            },
        ),
        (
            "offset near u64::MAX",
            "ends past the backup's size",
            |mut b| {
                b.entries
                    .insert(1, ManifestEntry::Hole { len: u64::MAX - 10 });
                vec![b]
            },
        ),
        ("short manifest", "covers", |mut b| {
            b.entries.pop();
            vec![b]
        }),
    ]
}

/// Overwrites the backup's manifest through the store's own API.
fn rewrite(ts: &TestStore, rec: &BackupRecord, craft: Craft) {
    let store = ts.engine().store();
    let blocks: Vec<ManifestBlock> = store.manifest(&rec.id).map(|b| b.unwrap()).collect();
    assert_eq!(blocks.len(), 1, "the test volume fits one manifest block");
    let crafted = craft(blocks.into_iter().next().unwrap());
    let batch = RefBatch {
        chunks: Vec::new(),
        blocks: crafted
            .into_iter()
            .enumerate()
            .map(|(n, b)| (n as u32, b))
            .collect(),
        parent: None,
    };
    store.add_refs(&rec.id, &batch).unwrap();
}

#[test]
fn manifest_gap_overlap_overrun_and_overflow_fail_verify_and_restore() {
    let data = mixed_bytes(3 << 20, 21);
    for (name, want, craft) in cases() {
        let ts = TestStore::new();
        let src = ts.path("v.img");
        write_file(&src, &data);
        let good = ts.backup("good", &src, false, false);
        let rec = ts.backup("v", &src, false, false);
        assert!(rec.object_count > 4, "{name}: too few entries to craft");
        rewrite(&ts, &rec, craft);

        let report = ts.engine().verify(Some(rec.id), &NoProgress).unwrap();
        assert!(!report.is_clean(), "{name}: {report:?}");
        assert_eq!(report.manifests.len(), 1, "{name}: {report:?}");
        assert_eq!(report.manifests[0].backup, rec.id);
        let problem = &report.manifests[0].problem;
        assert!(problem.contains(want), "{name}: {problem}");
        assert!(problem.contains(&rec.id.to_string()), "{name}: {problem}");

        let all = ts.engine().verify(None, &NoProgress).unwrap();
        let bad: Vec<_> = all.manifests.iter().map(|p| p.backup).collect();
        assert_eq!(bad, vec![rec.id], "{name}: {all:?}");
        assert!(
            all.corrupt.is_empty() && all.missing.is_empty(),
            "{name}: {all:?}"
        );
        assert!(all.affected_backups().contains(&rec.id));
        assert!(!all.affected_backups().contains(&good.id));

        // A new target: refused, and removed again.
        let out = ts.path("new.img");
        let err = ts
            .engine()
            .restore(RestoreOptions::new(rec.id, &out))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(want) && err.contains(&rec.id.to_string()),
            "{name}: {err}"
        );
        assert!(!out.exists(), "{name}: failed restore left its target");

        // An existing target of exactly the backup's size: refused, never grown.
        let existing = ts.path("existing.img");
        write_file(&existing, &vec![0xAA; data.len()]);
        let err = ts
            .engine()
            .restore(RestoreOptions::new(rec.id, &existing))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{name}: {err}");
        assert_eq!(
            std::fs::metadata(&existing).unwrap().len(),
            data.len() as u64,
            "{name}: restore wrote past the target's size"
        );

        // The untouched backup still verifies and restores.
        assert!(ts
            .engine()
            .verify(Some(good.id), &NoProgress)
            .unwrap()
            .is_clean());
        assert!(ts.restore_bytes(good.id) == data);
    }
}
