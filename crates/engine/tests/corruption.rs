//! A flipped byte in a pack: verify names the chunk and the backup; restore refuses.
mod common;
use std::os::unix::fs::FileExt;

use blockvault_core::format::PACK_ENTRY_HEADER_LEN;
use blockvault_core::ManifestEntry;
use blockvault_engine::{Error, NoProgress, RestoreOptions};
use common::*;

#[test]
fn flipped_pack_byte_is_named_by_verify_and_fails_restore() {
    for encrypt in [false, true] {
        let ts = TestStore::new();
        let data = mixed_bytes(8 << 20, 5);
        let src = ts.path("v.img");
        write_file(&src, &data);
        let rec = ts.backup("v", &src, false, encrypt);
        let other = ts.backup("w", &src, false, encrypt);

        assert!(ts
            .engine()
            .verify(Some(rec.id), &NoProgress)
            .unwrap()
            .is_clean());
        assert!(ts.engine().verify(None, &NoProgress).unwrap().is_clean());

        // Flip one byte in the middle of some chunk's envelope.
        let victim = ts
            .engine()
            .store()
            .manifest(&rec.id)
            .flat_map(|b| b.unwrap().entries)
            .find_map(|e| match e {
                ManifestEntry::Chunk { id, .. } => Some(id),
                ManifestEntry::Hole { .. } => None,
            })
            .unwrap();
        let loc = ts
            .engine()
            .store()
            .chunk_location(&victim)
            .unwrap()
            .unwrap();
        let h = loc.pack.to_hex();
        let pack = ts
            .store_dir()
            .join("packs")
            .join(&h[..2])
            .join(format!("{h}.pack"));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pack)
            .unwrap();
        let at = loc.offset + PACK_ENTRY_HEADER_LEN + u64::from(loc.len) / 2;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
        drop(f);

        for scope in [Some(rec.id), None] {
            let report = ts.engine().verify(scope, &NoProgress).unwrap();
            assert!(!report.is_clean());
            assert_eq!(report.corrupt.len(), 1, "{report:?}");
            let p = &report.corrupt[0];
            assert_eq!(p.chunk, victim.to_hex());
            assert!(p.backups.contains(&rec.id), "{report:?}");
            if !encrypt {
                // Plain volumes share chunks: the other volume's backup is affected too.
                assert!(p.backups.contains(&other.id), "{report:?}");
            }
        }

        let out = ts.path("out.img");
        let err = ts
            .engine()
            .restore(RestoreOptions::new(rec.id, &out))
            .unwrap_err();
        match &err {
            Error::Corrupt { chunk, .. } => assert_eq!(*chunk, victim),
            e => panic!("expected a corrupt-chunk error, got {e}"),
        }
        assert!(err.to_string().contains(&victim.to_hex()));
        assert!(
            !out.exists(),
            "a failed restore must not leave a new target behind"
        );
    }
}

#[test]
fn deleted_pack_is_reported_missing_with_its_backups() {
    let ts = TestStore::new();
    let data = random_bytes(6 << 20, 8);
    let src = ts.path("v.img");
    write_file(&src, &data);
    let rec = ts.backup("v", &src, false, false);
    for p in all_files(&ts.store_dir().join("packs")) {
        std::fs::remove_file(p).unwrap();
    }
    let report = ts.engine().verify(None, &NoProgress).unwrap();
    assert!(report.corrupt.is_empty(), "{report:?}");
    assert!(!report.missing.is_empty());
    assert!(
        report.missing.iter().all(|p| p.backups == vec![rec.id]),
        "{report:?}"
    );
    assert_eq!(
        report.affected_backups().into_iter().collect::<Vec<_>>(),
        vec![rec.id]
    );
    let out = ts.path("out.img");
    assert!(ts
        .engine()
        .restore(RestoreOptions::new(rec.id, &out))
        .is_err());
    assert!(!out.exists());
}
