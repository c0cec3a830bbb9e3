//! `blockvault local recover`: the index rebuilt from the packs and the catalog, for a local
//! store whose index files are damaged, for a store written before the catalog existed, and
//! for a store whose node is gone, from its bucket.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use blockvault_s3_test_server::S3Server;
use rand::{RngCore, SeedableRng};

fn bv(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blockvault"));
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    for a in args {
        c.arg(a);
    }
    c.output().expect("run blockvault")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "blockvault failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A store with backups of three volumes: `a` (full, incremental), `b` encrypted (full,
/// incremental) and `c` (full, deleted). Returns the surviving backups and their bytes.
fn populate(store: &Path, key: &Path, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (vol, encrypt, seed) in [("a", false, 1u64), ("b", true, 2), ("c", false, 3)] {
        let img = dir.join(format!("{vol}.img"));
        let mut bytes = vec![0u8; 5 << 20];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes[..3 << 20]);
        for incremental in [false, true] {
            if incremental {
                bytes[1 << 20..][..200_000].fill(seed as u8 + 40);
            }
            std::fs::write(&img, &bytes).unwrap();
            let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
                &"local",
                &"backup",
                &"--store",
                &store,
                &"--key-file",
                &key,
                &"--volume",
                &vol,
                &"--source",
                &img,
            ];
            if encrypt {
                args.push(&"--encrypt");
            }
            if incremental {
                args.push(&"--incremental");
            }
            let id = ok(bv(&args)).trim().to_string();
            out.push((id, bytes.clone()));
        }
    }
    // c's incremental is deleted; it must not come back.
    let (gone, _) = out.pop().unwrap();
    ok(bv(&[
        &"local",
        &"delete",
        &"--store",
        &store,
        &"--key-file",
        &key,
        &"--backup",
        &gone,
    ]));
    out
}

fn restores(store: &Path, key: &Path, dir: &Path, want: &[(String, Vec<u8>)]) {
    for (id, bytes) in want {
        let target = dir.join(format!("restored-{id}"));
        let _ = std::fs::remove_file(&target);
        ok(bv(&[
            &"local",
            &"restore",
            &"--store",
            &store,
            &"--key-file",
            &key,
            &"--backup",
            &id,
            &"--target",
            &target,
        ]));
        assert!(std::fs::read(&target).unwrap() == *bytes, "backup {id}");
    }
    ok(bv(&[
        &"local",
        &"verify",
        &"--store",
        &store,
        &"--key-file",
        &key,
    ]));
}

fn recover(args: &[&dyn AsRef<std::ffi::OsStr>]) -> serde_json::Value {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"local", &"recover", &"--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(bv(&all))).unwrap()
}

fn recovered_ids(report: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["record"]["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn ids(want: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut v: Vec<String> = want.iter().map(|(id, _)| id.clone()).collect();
    v.sort();
    v
}

/// Flips a byte in the middle of every file of the index, so RocksDB cannot use any of them.
fn damage_index(store: &Path) -> usize {
    let mut n = 0;
    for f in std::fs::read_dir(store.join("index")).unwrap() {
        let p: PathBuf = f.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        if b.is_empty() || p.ends_with("LOCK") {
            continue;
        }
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&p, &b).unwrap();
        n += 1;
    }
    n
}

/// A local store with a master key, populated: (its temp dir, store, key file, backups).
fn populated_local_store() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<(String, Vec<u8>)>) {
    let d = tempfile::tempdir().unwrap();
    let (store, key) = (d.path().join("store"), d.path().join("master.key"));
    ok(bv(&[
        &"local",
        &"init",
        &"--store",
        &store,
        &"--key-file",
        &key,
    ]));
    let want = populate(&store, &key, d.path());
    (d, store, key, want)
}

#[test]
fn recover_rebuilds_a_damaged_index_from_the_packs() {
    let (d, store, key, want) = populated_local_store();
    assert!(damage_index(&store) > 0);
    let broken = bv(&[
        &"local",
        &"restore",
        &"--store",
        &store,
        &"--backup",
        &want[0].0,
        &"--target",
        &d.path().join("x"),
    ]);
    assert!(
        !broken.status.success(),
        "the damaged index is really unusable"
    );

    let report = recover(&[&"--store", &store, &"--key-file", &key]);
    assert_eq!(recovered_ids(&report), ids(&want), "{report:#}");
    assert_eq!(report["packs_from_trailer"], report["packs"], "{report:#}");
    assert_eq!(report["keys"], 1, "b's data key");
    let aside = PathBuf::from(report["index_moved_to"].as_str().unwrap());
    assert!(aside.is_dir(), "the damaged index is kept");
    restores(&store, &key, d.path(), &want);
}

#[test]
fn a_store_written_before_the_catalog_is_migrated_then_recoverable() {
    let (d, store, key, want) = populated_local_store();
    // Make it what the previous version wrote: version 1 packs (no trailer), no catalog.
    std::fs::remove_dir_all(store.join("meta")).unwrap();
    let mut packs = 0;
    for sub in std::fs::read_dir(store.join("packs")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            let end = u64::from_le_bytes(b[b.len() - 16..b.len() - 8].try_into().unwrap());
            b.truncate(end as usize);
            b[7] = 1;
            std::fs::write(&p, &b).unwrap();
            packs += 1;
        }
    }
    assert!(packs > 0);
    // Any command opens the store and writes its catalog.
    ok(bv(&[
        &"local",
        &"list",
        &"--store",
        &store,
        &"--key-file",
        &key,
    ]));
    assert!(store.join("meta/store.json").is_file());
    restores(&store, &key, d.path(), &want);

    damage_index(&store);
    let report = recover(&[&"--store", &store, &"--key-file", &key]);
    assert_eq!(recovered_ids(&report), ids(&want), "{report:#}");
    assert_eq!(
        report["packs_scanned"].as_array().unwrap().len(),
        packs,
        "{report:#}"
    );
    restores(&store, &key, d.path(), &want);
}

#[test]
fn recover_from_the_bucket_into_an_empty_directory() {
    let server = S3Server::start("cli-recover");
    let d = tempfile::tempdir().unwrap();
    let (store, key) = (d.path().join("store"), d.path().join("master.key"));
    let creds = server.credentials_file();
    let bucket: [&dyn AsRef<std::ffi::OsStr>; 6] = [
        &"--bucket",
        &"s3://cli-recover/n1",
        &"--endpoint",
        &server.endpoint(),
        &"--credentials-file",
        &creds,
    ];
    let mut init: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"local", &"init", &"--store", &store, &"--key-file", &key];
    init.extend_from_slice(&bucket);
    ok(bv(&init));
    let want = populate(&store, &key, d.path());
    std::fs::remove_dir_all(&store).unwrap();

    let other = d.path().join("other.key");
    ok(bv(&[
        &"local",
        &"init",
        &"--store",
        &d.path().join("scratch"),
        &"--key-file",
        &other,
    ]));
    let new_store = d.path().join("new-store");
    let mut wrong: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"local",
        &"recover",
        &"--store",
        &new_store,
        &"--key-file",
        &other,
    ];
    wrong.extend_from_slice(&bucket);
    let o = bv(&wrong);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not the master key"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"--store", &new_store, &"--key-file", &key];
    args.extend_from_slice(&bucket);
    let report = recover(&args);
    assert_eq!(recovered_ids(&report), ids(&want), "{report:#}");
    restores(&new_store, &key, d.path(), &want);
}
