//! The remote commands (`volume`, `backup`, `job`) against a real `blockvaultd` subprocess (see
//! `common`).
use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng};
use serde_json::Value;

mod common;
use common::{keys, line_keys, message_fields, s, Daemon};

/// The value after `key ` in the CLI's text output (`backup_id <id>` lines).
fn field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {key} in {out:?}"))
        .trim()
        .to_string()
}

/// Checks that the restored volume holds `want` (a new volume may be rounded up with zeros).
fn assert_restored(d: &Daemon, volume_id: &str, want: &[u8]) {
    let v = d.json(&[&"volume", &"show", &volume_id, &"--json"]);
    let mut path = PathBuf::from(s(&v["path"]));
    if path.is_relative() {
        path = d.dir.path().join(path);
    }
    let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(got.len() >= want.len(), "restored volume too small");
    assert!(got[..want.len()] == *want, "restored data differs");
    assert!(
        got[want.len()..].iter().all(|&b| b == 0),
        "restored volume has data past the backup's end"
    );
}

/// Writes a 64 MiB random image followed by 16 MiB of zeros.
fn image(p: &Path) -> Vec<u8> {
    let mut v = vec![0u8; 80 << 20];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut v[..64 << 20]);
    std::fs::write(p, &v).unwrap();
    v
}

#[test]
fn backup_restore_and_delete_through_the_daemon() {
    let d = Daemon::start();
    let img = d.dir.path().join("vol.img");
    let mut data = image(&img);

    let vol = d
        .ok(&[&"volume", &"register", &"--path", &img, &"--name", &"v1"])
        .trim()
        .to_string();
    let v = d.json(&[&"volume", &"show", &vol, &"--json"]);
    assert_eq!(s(&v["name"]), "v1");
    assert_eq!(v["size_bytes"], data.len() as u64);
    assert_eq!(PathBuf::from(s(&v["path"])), img);
    // Every message is printed whole, in the proto file's field order.
    assert_eq!(keys(&v), message_fields("Volume"));
    let vl = d.json(&[&"volume", &"list", &"--json"]);
    assert_eq!(vl["volumes"].as_array().unwrap().len(), 1);

    // A full backup, waited for.
    let full = d.json(&[
        &"backup",
        &"create",
        &"--volume",
        &vol,
        &"--name",
        &"full",
        &"--metadata",
        &"k=v",
        &"--wait",
        &"--json",
    ]);
    let full_id = s(&full["backup"]["id"]);
    assert_eq!(full["job"]["state"], "succeeded", "{full}");
    assert_eq!(full["backup"]["status"], "available", "{full}");
    assert_eq!(full["backup"]["metadata"]["k"], "v");
    assert_eq!(keys(&full["backup"]), message_fields("Backup"));
    assert_eq!(keys(&full["job"]), message_fields("Job"));
    let text = d.ok(&[&"backup", &"show", &full_id]);
    assert_eq!(line_keys(&text), message_fields("Backup"), "{text}");
    assert!(text.contains("metadata:") && text.contains("k=v"), "{text}");

    // Change 1 MiB, then an incremental (text output).
    rand::rngs::StdRng::seed_from_u64(8).fill_bytes(&mut data[(10 << 20)..(11 << 20)]);
    std::fs::write(&img, &data).unwrap();
    let out = d.ok(&[
        &"backup",
        &"create",
        &"--volume",
        &vol,
        &"--incremental",
        &"--wait",
    ]);
    let inc_id = field(&out, "backup_id");
    assert!(!field(&out, "job_id").is_empty());

    let list = d.json(&[&"backup", &"list", &"--json"]);
    assert_eq!(list["summaries"].as_array().unwrap().len(), 2, "{list}");
    let detail = d.json(&[&"backup", &"list", &"--detail", &"--with-count", &"--json"]);
    assert_eq!(detail["count"], 2, "{detail}");
    let inc = detail["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == inc_id.as_str())
        .unwrap();
    assert_eq!(inc["is_incremental"], true);
    assert_eq!(inc["parent_id"], full_id.as_str());
    let table = d.ok(&[&"backup", &"list"]);
    assert!(
        table.contains(&full_id) && table.contains(&inc_id),
        "{table}"
    );

    // Update, export, import (the record is known here already).
    let u = d.json(&[
        &"backup",
        &"update",
        &full_id,
        &"--description",
        &"first",
        &"--clear-metadata",
        &"--json",
    ]);
    assert_eq!(u["description"], "first");
    assert_eq!(u["metadata"], serde_json::json!({}));
    let rec = d.ok(&[&"backup", &"export", &full_id]);
    let recv: Value = serde_json::from_str(&rec).unwrap();
    assert!(recv["backup_url"].as_str().is_some_and(|u| !u.is_empty()));
    let rec_file = d.dir.path().join("record.json");
    std::fs::write(&rec_file, rec).unwrap();
    let err = d.fails(&[&"backup", &"import", &"--file", &rec_file]);
    assert!(err.contains("ALREADY_EXISTS"), "{err}");

    // Restore the incremental to a new volume and compare.
    let r = d.json(&[
        &"backup", &"restore", &inc_id, &"--name", &"r1", &"--wait", &"--json",
    ]);
    assert_eq!(r["job"]["state"], "succeeded", "{r}");
    assert_eq!(r["volume_name"], "r1");
    assert_restored(&d, &s(&r["volume_id"]), &data);

    // The full backup has a dependent incremental.
    let err = d.fails(&[&"backup", &"delete", &full_id]);
    assert!(err.contains("FAILED_PRECONDITION"), "{err}");
    d.ok(&[&"backup", &"delete", &inc_id]);
    d.ok(&[&"backup", &"delete", &full_id]);
    let err = d.fails(&[&"backup", &"show", &full_id]);
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");

    let jobs = d.json(&[&"job", &"list", &"--json"]);
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{jobs:?}");
    assert_eq!(jobs.iter().filter(|j| j["kind"] == "backup").count(), 2);

    // Watching a finished job prints its final state and succeeds.
    let jid = s(&r["job_id"]);
    let out = d.ok(&[&"job", &"watch", &jid]);
    assert!(out.contains("succeeded"), "{out}");
}

#[test]
fn a_wrong_token_is_unauthenticated() {
    let d = Daemon::start();
    let err = d.fails(&[&"volume", &"list", &"--token", &"not-the-token"]);
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    // The right one (read from the data directory) works.
    d.ok(&[&"volume", &"list"]);
}

#[test]
fn cbt_incremental_through_backup_create() {
    let d = Daemon::start();
    let img = d.dir.path().join("vol.img");
    let mut data = image(&img);
    let vol = d
        .ok(&[&"volume", &"register", &"--path", &img, &"--name", &"v1"])
        .trim()
        .to_string();
    d.ok(&[&"backup", &"create", &"--volume", &vol, &"--wait"]);

    // Two writes, reported in `rbd diff --format json` form.
    rand::rngs::StdRng::seed_from_u64(9).fill_bytes(&mut data[(5 << 20)..(5 << 20) + 70_000]);
    data[(70 << 20)..(70 << 20) + 4096].fill(0x42);
    std::fs::write(&img, &data).unwrap();
    let extents = d.dir.path().join("diff.json");
    std::fs::write(
        &extents,
        format!(
            r#"[{{"offset": {}, "length": 70000, "exists": "true"}},
                {{"offset": {}, "length": 4096, "exists": "true"}}]"#,
            5 << 20,
            70 << 20
        ),
    )
    .unwrap();
    let inc = d.json(&[
        &"backup",
        &"create",
        &"--volume",
        &vol,
        &"--incremental",
        &"--changed-extents",
        &extents,
        &"--cbt-sample",
        &"0.25",
        &"--wait",
        &"--json",
    ]);
    assert_eq!(inc["job"]["state"], "succeeded", "{inc}");
    let cbt = &inc["backup"]["cbt"];
    assert_eq!(cbt["source"], "rbd-diff", "{inc}");
    assert_eq!(cbt["changed_bytes"], 74_096, "{inc}");
    let read = cbt["read_bytes"].as_u64().unwrap();
    assert!(read < 2 << 20, "read {read} bytes of 80 MiB: {inc}");
    let inc_id = s(&inc["backup"]["id"]);
    let r = d.json(&[
        &"backup", &"restore", &inc_id, &"--name", &"r1", &"--wait", &"--json",
    ]);
    assert_eq!(r["job"]["state"], "succeeded", "{r}");
    assert_restored(&d, &s(&r["volume_id"]), &data);

    // A bad list is refused at once, naming the field.
    std::fs::write(&extents, b"[{\"offset\": 1}]").unwrap();
    let err = d.fails(&[
        &"backup",
        &"create",
        &"--volume",
        &vol,
        &"--incremental",
        &"--changed-extents",
        &extents,
    ]);
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("changed_extents"),
        "{err}"
    );
}
