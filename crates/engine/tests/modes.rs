//! Images a restore creates are 0600, plain and decrypted ones alike; an existing target keeps
//! its mode.
mod common;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use blockvault_engine::RestoreOptions;
use common::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn restored_new_images_are_0600_plain_and_encrypted() {
    let ts = TestStore::new();
    let data = mixed_bytes(2 << 20, 8);
    let src = ts.path("v.img");
    write_file(&src, &data);
    for (volume, encrypt) in [("plain", false), ("secret", true)] {
        let rec = ts.backup(volume, &src, false, encrypt);
        assert_eq!(rec.encrypted, encrypt);
        let out = ts.path(&format!("{volume}-restored.img"));
        ts.engine()
            .restore(RestoreOptions::new(rec.id, &out))
            .unwrap();
        assert_eq!(mode(&out), 0o600, "{volume}");
        assert!(std::fs::read(&out).unwrap() == data);

        // An existing target is the operator's: its mode is left alone.
        let existing = ts.path(&format!("{volume}-existing.img"));
        write_file(&existing, &vec![0u8; data.len()]);
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640)).unwrap();
        ts.engine()
            .restore(RestoreOptions::new(rec.id, &existing))
            .unwrap();
        assert_eq!(mode(&existing), 0o640, "{volume}");
    }
}
