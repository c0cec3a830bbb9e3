//! The `blockvault local` commands, driven as an operator would: as a process.
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{RngCore, SeedableRng};

fn bv(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blockvault"));
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

fn image(p: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v[..len / 2]);
    std::fs::write(p, &v).unwrap();
    v
}

/// `local list --json` as parsed records.
fn list_json(store: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(bv(&[&"local", &"list", &"--store", &store, &"--json"]))).unwrap();
    v.as_array().unwrap().clone()
}

/// Runs `local backup` of `img` as `volume` (plus `extra` flags).
fn local_backup(store: &Path, volume: &str, img: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"local",
        &"backup",
        &"--store",
        &store,
        &"--volume",
        &volume,
        &"--source",
        &img,
    ];
    for e in extra {
        args.push(e);
    }
    bv(&args)
}

/// Runs `local backup` of `img` as `volume` (plus `extra` flags) and returns the printed id.
fn backup_id(store: &Path, volume: &str, img: &Path, extra: &[&str]) -> String {
    ok(local_backup(store, volume, img, extra))
        .trim()
        .to_string()
}

/// Runs `local restore` of `id` to `out`.
fn restore(store: &Path, id: &str, out: &Path) -> Output {
    bv(&[
        &"local",
        &"restore",
        &"--store",
        &store,
        &"--backup",
        &id,
        &"--target",
        &out,
    ])
}

/// Restores `id` to `out` through the CLI and returns the restored bytes (removing the file).
fn restore_bytes(store: &Path, id: &str, out: &Path) -> Vec<u8> {
    ok(restore(store, id, out));
    let data = std::fs::read(out).unwrap();
    std::fs::remove_file(out).unwrap();
    data
}

/// A temp dir with an initialized store (with a key file) and an image of `len` bytes.
fn setup(len: usize, seed: u64) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, Vec<u8>) {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let key = d.path().join("k.key");
    let img = d.path().join("disk.img");
    let data = image(&img, len, seed);
    ok(bv(&[
        &"local",
        &"init",
        &"--store",
        &store,
        &"--key-file",
        &key,
    ]));
    (d, store, key, img, data)
}

#[test]
fn local_lifecycle_through_the_cli() {
    let (d, store, key, img, data) = setup(6 << 20, 1);
    assert!(key.exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // init twice is refused.
    assert!(!bv(&[&"local", &"init", &"--store", &store])
        .status
        .success());

    let full = ok(bv(&[
        &"local",
        &"backup",
        &"--store",
        &store,
        &"--volume",
        &"vol1",
        &"--source",
        &img,
        &"--encrypt",
    ]));
    let full = full.trim().to_string();
    assert_eq!(full.len(), 36, "prints the backup id: {full:?}");

    let mut data2 = data.clone();
    data2[100] ^= 0xff;
    std::fs::write(&img, &data2).unwrap();
    let rec: serde_json::Value = serde_json::from_str(&ok(bv(&[
        &"local",
        &"backup",
        &"--store",
        &store,
        &"--volume",
        &"vol1",
        &"--source",
        &img,
        &"--incremental",
        &"--encrypt",
        &"--json",
    ])))
    .unwrap();
    assert_eq!(rec["is_incremental"], true);
    assert_eq!(rec["parent_id"], full.as_str());
    assert_eq!(rec["size"], 6 << 20);
    assert!(rec["encryption_key_id"].is_string());
    let inc = rec["id"].as_str().unwrap().to_string();

    assert_eq!(list_json(&store).len(), 2);
    let text = ok(bv(&[&"local", &"list", &"--store", &store]));
    assert!(text.contains(&full) && text.contains(&inc));

    for (id, want) in [(&full, &data), (&inc, &data2)] {
        let out = d.path().join(format!("{id}.out"));
        assert!(restore_bytes(&store, id, &out) == *want);
    }
    ok(bv(&[&"local", &"verify", &"--store", &store]));
    ok(bv(&[
        &"local",
        &"verify",
        &"--store",
        &store,
        &"--backup",
        &inc,
    ]));

    ok(bv(&[
        &"local",
        &"delete",
        &"--store",
        &store,
        &"--backup",
        &full,
    ]));
    let gc: serde_json::Value =
        serde_json::from_str(&ok(bv(&[&"local", &"gc", &"--store", &store, &"--json"]))).unwrap();
    assert!(gc["pack_bytes_before"].is_u64());

    // Bad input: clear errors, non-zero exit.
    let o = bv(&[
        &"local",
        &"restore",
        &"--store",
        &store,
        &"--backup",
        &"not-a-uuid",
        &"--target",
        &d.path().join("x"),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a UUID"));
    let o = bv(&[
        &"local",
        &"backup",
        &"--store",
        &store,
        &"--volume",
        &"v/1",
        &"--source",
        &img,
    ]);
    assert!(!o.status.success());
    let o = bv(&[
        &"local",
        &"backup",
        &"--store",
        &store,
        &"--volume",
        &"v2",
        &"--source",
        &d.path().join("missing.img"),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.img"));
    let o = bv(&[&"local", &"list", &"--store", &d.path().join("nostore")]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a blockvault store"));
}

#[test]
fn closed_output_pipe_ends_quietly() {
    let (_d, store, _key, img, _) = setup(1 << 20, 41);
    for v in ["a", "b", "c"] {
        backup_id(&store, v, &img, &[]);
    }
    // The reader goes away before the CLI writes (opening the store comes first), as with
    // `blockvault local list | head -0`.
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blockvault"))
            .args(["local", "list", "--json", "--store"])
            .arg(&store)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.success() || out.status.signal() == Some(libc_sigpipe()),
            "{:?}: {err}",
            out.status
        );
    }
}

/// SIGPIPE's number on Linux.
fn libc_sigpipe() -> i32 {
    13
}

#[test]
fn corruption_makes_verify_and_restore_exit_non_zero() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let img = d.path().join("disk.img");
    image(&img, 4 << 20, 2);
    ok(bv(&[&"local", &"init", &"--store", &store]));
    let id = backup_id(&store, "v", &img, &[]);
    let id = id.as_str();
    // Flip a byte in the middle of the (only) pack's payload.
    let pack = walk(&store.join("packs"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let mut b = [0u8];
    f.read_exact_at(&mut b, len / 2).unwrap();
    f.write_all_at(&[b[0] ^ 0x80], len / 2).unwrap();

    let o = bv(&[&"local", &"verify", &"--store", &store, &"--json"]);
    assert_eq!(o.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["corrupt"][0]["backups"][0], id);
    let out = d.path().join("out.img");
    let o = restore(&store, id, &out);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("chunk") && err.contains("failed verification"),
        "{err}"
    );
    assert!(!out.exists());
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            v.extend(walk(&e.path()));
        } else {
            v.push(e.path());
        }
    }
    v
}

/// Kill -9 a backup at several points; every committed backup must still restore, the killed
/// one must show as interrupted, and GC + verify must leave a clean store.
#[test]
fn kill_9_during_backup_leaves_committed_backups_restorable() {
    let (d, store, _key, img, first) = setup(8 << 20, 3);
    let committed = backup_id(&store, "v", &img, &["--encrypt"]);

    // A bigger, different image so the killed backups write packs.
    let big = d.path().join("big.img");
    let mut v = vec![0u8; 192 << 20];
    rand::rngs::StdRng::seed_from_u64(9).fill_bytes(&mut v);
    std::fs::write(&big, &v).unwrap();
    drop(v);
    for delay_ms in [30u64, 150, 400, 900] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blockvault"))
            .args([
                "local",
                "backup",
                "--volume",
                "v",
                "--encrypt",
                "--incremental",
            ])
            .arg("--store")
            .arg(&store)
            .arg("--source")
            .arg(&big)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let records = list_json(&store);
        for r in &records {
            let state = r["state"].as_str().unwrap();
            assert!(state == "available" || state == "error", "{r}");
            if state == "error" {
                let why = r["fail_reason"].as_str().unwrap();
                assert!(why.contains("interrupted"), "{r}");
            }
        }
        if status.success() {
            assert_eq!(records.last().unwrap()["state"], "available");
        }
        assert!(records
            .iter()
            .any(|r| r["id"] == committed.as_str() && r["state"] == "available"));
        let out = d.path().join(format!("after-kill-{delay_ms}.img"));
        assert!(restore_bytes(&store, &committed, &out) == first);
    }
    let interrupted = list_json(&store)
        .iter()
        .filter(|r| r["state"] == "error")
        .count();
    assert!(interrupted > 0, "no kill landed inside a backup");
    ok(bv(&[&"local", &"gc", &"--store", &store]));
    ok(bv(&[&"local", &"verify", &"--store", &store]));
    let out = d.path().join("final.img");
    assert!(restore_bytes(&store, &committed, &out) == first);
}

/// Runs a tool the test needs; `None` (with the reason printed) when it is not installed.
fn tool(name: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Option<Output> {
    let mut c = Command::new(name);
    for a in args {
        c.arg(a);
    }
    match c.output() {
        Ok(o) => {
            assert!(
                o.status.success(),
                "{name} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(o)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: {name} is not installed (Debian: qemu-utils, libnbd-bin)");
            None
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

#[test]
fn cbt_incremental_from_a_qcow2_dirty_bitmap() {
    // The VM disk is a qcow2 image with a persistent dirty bitmap, as a hypervisor keeps it;
    // qemu-img convert gives the raw views that are backed up.
    let (d, store, _key, _img, _data) = setup(4096, 1);
    let raw0 = d.path().join("v0.raw");
    let mut base = vec![0u8; 48 << 20];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut base[..40 << 20]);
    std::fs::write(&raw0, &base).unwrap();
    let qcow = d.path().join("disk.qcow2");
    let convert = |from: &Path, fmt: &str, to: &Path, ofmt: &str| {
        tool(
            "qemu-img",
            &[&"convert", &"-f", &fmt, &"-O", &ofmt, &from, &to],
        )
    };
    if convert(&raw0, "raw", &qcow, "qcow2").is_none() {
        return;
    }
    tool("qemu-img", &[&"bitmap", &"--add", &qcow, &"bm0"]).unwrap();
    let full = backup_id(&store, "vm", &raw0, &[]);

    // The guest writes: data, zeros, and past the old data's end; the bitmap marks them dirty.
    tool(
        "qemu-io",
        &[
            &"-f",
            &"qcow2",
            &"-c",
            &"write -P 0x5c 3M 64k",
            &"-c",
            &"write -P 0x11 20M 300k",
            &"-c",
            &"write -z 30M 1M",
            &"-c",
            &"write -P 0x77 42M 5k",
            &qcow,
        ],
    )
    .unwrap();
    let raw1 = d.path().join("v1.raw");
    convert(&qcow, "qcow2", &raw1, "raw").unwrap();

    // The dirty bitmap, as the NBD context qemu-nbd exports it, read with nbdinfo.
    let sock = d.path().join("nbd.sock");
    tool(
        "qemu-nbd",
        &[
            &"--fork",
            &"--read-only",
            &"-f",
            &"qcow2",
            &"-B",
            &"bm0",
            &format!("--socket={}", sock.display()),
            &qcow,
        ],
    )
    .unwrap();
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let Some(map) = tool(
        "nbdinfo",
        &[&"--map=qemu:dirty-bitmap:bm0", &"--json", &uri],
    ) else {
        return;
    };
    let map_file = d.path().join("dirty.json");
    std::fs::write(&map_file, &map.stdout).unwrap();

    let map_path = map_file.display().to_string();
    let out = ok(local_backup(
        &store,
        "vm",
        &raw1,
        &[
            "--incremental",
            "--changed-extents",
            &map_path,
            "--cbt-sample",
            "0.5",
            "--json",
        ],
    ));
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["parent_id"], full.as_str());
    let cbt = &rec["cbt"];
    assert_eq!(cbt["source"], "nbd-dirty-map", "{rec}");
    assert_eq!(cbt["mismatch_offset"], serde_json::Value::Null, "{rec}");
    let read = cbt["read_bytes"].as_u64().unwrap();
    assert!(
        read > 0 && read < 8 << 20,
        "read {read} bytes of 48 MiB: {rec}"
    );
    assert!(cbt["sampled_bytes"].as_u64().unwrap() > 0, "{rec}");
    let id = rec["id"].as_str().unwrap();
    let want = std::fs::read(&raw1).unwrap();
    assert!(restore_bytes(&store, id, &d.path().join("r.raw")) == want);

    // A list that leaves out the last write since the full backup is caught by sampling
    // everything.
    let mut lie: Vec<serde_json::Value> = serde_json::from_slice(&map.stdout).unwrap();
    let last_dirty = lie.iter().rposition(|e| e["type"] == 1).unwrap();
    lie[last_dirty]["type"] = 0.into();
    lie[last_dirty]["description"] = "clean".into();
    std::fs::write(&map_file, serde_json::to_vec(&lie).unwrap()).unwrap();
    let o = local_backup(
        &store,
        "vm",
        &raw1,
        &[
            "--incremental",
            "--parent",
            &full,
            "--changed-extents",
            &map_path,
            "--cbt-sample",
            "1",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missed a change"), "{err}");

    // Bad input names the field.
    std::fs::write(&map_file, b"[{\"offset\": 0, \"length\": -1}]").unwrap();
    let o = local_backup(
        &store,
        "vm",
        &raw1,
        &["--incremental", "--changed-extents", &map_path],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("changed_extents"),
        "{err}"
    );
}
