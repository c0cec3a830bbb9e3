//! File modes: the store directory is 0700 and pack files and `store.json` are 0600, so other
//! users of a shared storage node cannot read volume data or the store's settings.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use blockvault_core::ChunkId;
use blockvault_store::{Store, StoreConfig};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn files(p: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            v.extend(files(&e.path()));
        } else {
            v.push(e.path());
        }
    }
    v
}

fn write_a_pack(s: &Store) {
    let mut w = s.new_pack().unwrap();
    w.append(ChunkId([7; 32]), 3, b"abc").unwrap();
    s.seal_pack(w).unwrap();
}

#[test]
fn store_dir_is_0700_and_packs_and_config_are_0600() {
    let tmp = tempfile::tempdir().unwrap();
    // A new directory, with missing parents, and an existing empty one that was 0755.
    let new = tmp.path().join("a/b/store");
    let existing = tmp.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in [new, existing] {
        let s = Store::init(&dir, StoreConfig::default()).unwrap();
        write_a_pack(&s);
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        assert_eq!(mode(&dir.join("store.json")), 0o600);
        let packs: Vec<_> = files(&dir.join("packs"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .collect();
        assert_eq!(packs.len(), 1);
        assert_eq!(mode(&packs[0]), 0o600, "{}", packs[0].display());
        // The index lives inside the 0700 directory.
        assert!(dir.join("index").is_dir());
    }
}

#[test]
fn init_over_an_existing_store_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    drop(Store::init(&dir, StoreConfig::default()).unwrap());
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let config = std::fs::read(dir.join("store.json")).unwrap();
    assert!(Store::init(&dir, StoreConfig::default()).is_err());
    assert_eq!(mode(&dir), 0o750);
    assert_eq!(std::fs::read(dir.join("store.json")).unwrap(), config);
}
