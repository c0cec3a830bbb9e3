//! The `vault` and `policy` commands (and volume tags) against a real `blockvaultd` subprocess
//! (see `common`).
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use serde_json::Value;

mod common;
use common::{keys, message_fields, s, Daemon};

#[test]
fn vaults_and_policies_through_the_daemon() {
    let d = Daemon::start();

    // A policy running hourly, keeping 7 backups.
    let policy = d
        .ok(&[
            &"policy",
            &"create",
            &"--name",
            &"hourly",
            &"--interval-seconds",
            &"3600",
            &"--full-every",
            &"4",
            &"--keep-max",
            &"7",
        ])
        .trim()
        .to_string();
    let p = d.json(&[&"policy", &"show", &policy, &"--json"]);
    assert_eq!(p["name"], "hourly", "{p}");
    assert_eq!(p["enabled"], true, "{p}");
    assert_eq!(p["schedule"]["interval_seconds"], 3600, "{p}");
    assert_eq!(p["full_every"], 4, "{p}");
    assert_eq!(p["retention"]["max_backups"], 7, "{p}");
    assert_eq!(keys(&p), message_fields("Policy"));
    assert_eq!(keys(&p["retention"]), message_fields("Retention"));
    let text = d.ok(&[&"policy", &"show", &policy]);
    assert!(text.contains("every 3600 s"), "{text}");

    // A tagged volume.
    let img = d.dir.path().join("vol.img");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let vol = d
        .ok(&[
            &"volume",
            &"register",
            &"--path",
            &img,
            &"--name",
            &"v1",
            &"--tag",
            &"env=prod",
            &"--server-id",
            &"srv-1",
        ])
        .trim()
        .to_string();
    let v = d.json(&[&"volume", &"show", &vol, &"--json"]);
    assert_eq!(
        v["tags"],
        serde_json::json!([{ "key": "env", "value": "prod" }]),
        "{v}"
    );
    assert_eq!(v["server_id"], "srv-1", "{v}");
    let v = d.json(&[&"volume", &"update", &vol, &"--clear-tags", &"--json"]);
    assert_eq!(v["tags"], serde_json::json!([]), "{v}");
    assert_eq!(v["server_id"], "srv-1", "{v}");

    // A 1 GB vault with the policy, the volume and a tag.
    let resource = format!("volume:{vol}");
    let vault = d
        .ok(&[
            &"vault",
            &"create",
            &"--name",
            &"vault-1",
            &"--size-gb",
            &"1",
            &"--policy",
            &policy,
            &"--resource",
            &resource,
            &"--tag",
            &"team=ops",
        ])
        .trim()
        .to_string();
    let v = d.json(&[&"vault", &"show", &vault, &"--json"]);
    assert_eq!(v["id"], vault.as_str(), "{v}");
    assert_eq!(v["name"], "vault-1", "{v}");
    assert_eq!(keys(&v), message_fields("Vault"));
    assert_eq!(keys(&v["billing"]), message_fields("Billing"));
    assert_eq!(v["billing"]["size"], 1, "{v}");
    assert_eq!(v["billing"]["object_type"], "disk", "{v}");
    assert_eq!(v["billing"]["consistent_level"], "crash_consistent", "{v}");
    assert_eq!(v["billing"]["protect_type"], "backup", "{v}");
    assert_eq!(v["billing"]["used"], 0, "{v}");
    assert_eq!(v["threshold"], 80, "{v}");
    assert_eq!(v["backup_policy_id"], policy.as_str(), "{v}");
    assert_eq!(v["locked"], false, "{v}");
    let res = v["resources"].as_array().unwrap();
    assert_eq!(res.len(), 1, "{v}");
    assert_eq!(res[0]["id"], vol.as_str(), "{v}");
    assert_eq!(res[0]["type"], "OS::Cinder::Volume", "{v}");
    assert_eq!(
        v["tags"],
        serde_json::json!([{ "key": "team", "value": "ops" }]),
        "{v}"
    );

    // The text view draws the usage as a bar and lists the resource.
    let text = d.ok(&[&"vault", &"show", &vault]);
    assert!(
        text.contains("used  [--------------------]  0 % (0 B of 1 GB)"),
        "{text}"
    );
    assert!(text.contains(&vol), "{text}");
    assert!(text.contains("team=ops"), "{text}");

    // Locking is one-way and idempotent; a locked vault cannot be deleted.
    let v = d.json(&[&"vault", &"update", &vault, &"--lock", &"--json"]);
    assert_eq!(v["locked"], true, "{v}");
    let v = d.json(&[
        &"vault",
        &"update",
        &vault,
        &"--lock",
        &"--threshold",
        &"90",
        &"--json",
    ]);
    assert_eq!(v["locked"], true, "{v}");
    assert_eq!(v["threshold"], 90, "{v}");
    let err = d.fails(&[&"vault", &"delete", &vault]);
    assert!(err.starts_with("error: FAILED_PRECONDITION: "), "{err}");

    let list = d.json(&[&"vault", &"list", &"--json"]);
    let vaults = list["vaults"].as_array().unwrap();
    assert_eq!(vaults.len(), 1, "{list}");
    assert_eq!(vaults[0]["id"], vault.as_str(), "{list}");
    let table = d.ok(&[&"vault", &"list"]);
    assert!(table.contains(&vault) && table.contains(&policy), "{table}");

    let list = d.json(&[&"policy", &"list", &"--json"]);
    let ids: Vec<String> = list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p: &Value| s(&p["id"]))
        .collect();
    assert_eq!(ids, [policy], "{list}");

    // An unknown vault is NOT_FOUND.
    let err = d.fails(&[&"vault", &"show", &"00000000-0000-0000-0000-000000000000"]);
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
}

#[test]
fn vault_watch_reports_a_threshold_crossing() {
    let d = Daemon::start();
    let img = d.dir.path().join("vol.img");
    let mut data = vec![0u8; 16 << 20];
    rand::rngs::StdRng::seed_from_u64(11).fill_bytes(&mut data);
    std::fs::write(&img, &data).unwrap();
    let vol = d
        .ok(&[&"volume", &"register", &"--path", &img])
        .trim()
        .to_string();

    // 16 MB of random data is over 1 % of 1 GB.
    let vault = d
        .ok(&[
            &"vault",
            &"create",
            &"--name",
            &"small",
            &"--size-gb",
            &"1",
            &"--threshold",
            &"1",
        ])
        .trim()
        .to_string();
    let resource = format!("OS::Cinder::Volume:{vol}");
    let v = d.json(&[
        &"vault",
        &"add-resources",
        &vault,
        &"--resource",
        &resource,
        &"--json",
    ]);
    assert_eq!(v["resources"].as_array().unwrap().len(), 1, "{v}");

    // Follow the vault's events (JSON lines) from a reader thread.
    let mut watch = d.spawn(&[&"vault", &"watch", &vault, &"--json"]);
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // Give the watch call time to reach the daemon before the backup starts.
    std::thread::sleep(Duration::from_secs(1));

    let b = d.json(&[
        &"backup",
        &"create",
        &"--volume",
        &vol,
        &"--container",
        &vault,
        &"--wait",
        &"--json",
    ]);
    assert_eq!(b["job"]["state"], "succeeded", "{b}");
    let line = rx.recv_timeout(Duration::from_secs(30));
    let _ = watch.kill();
    let _ = watch.wait();
    let line = line.unwrap_or_else(|e| panic!("no vault event ({e}):\n{}", d.log()));
    let e: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(e["vault_id"], vault.as_str(), "{e}");
    assert_eq!(e["kind"], "threshold_exceeded", "{e}");
    assert_eq!(e["threshold"], 1, "{e}");
    assert!(e["used_mb"].as_i64().unwrap() >= 16, "{e}");

    let v = d.json(&[&"vault", &"show", &vault, &"--json"]);
    assert!(v["billing"]["used"].as_i64().unwrap() >= 16, "{v}");
    assert_eq!(v["resources"][0]["backup_count"], 1, "{v}");
    let text = d.ok(&[&"vault", &"show", &vault]);
    // About 17 MB of 1 GB: 1 %, less than one bar step of 5 %.
    assert!(
        text.contains("used  [--------------------]  1 % (1"),
        "{text}"
    );

    let v = d.json(&[
        &"vault",
        &"remove-resources",
        &vault,
        &"--resource-id",
        &vol,
        &"--json",
    ]);
    assert_eq!(v["resources"], serde_json::json!([]), "{v}");
    // The vault still holds the backup.
    let err = d.fails(&[&"vault", &"delete", &vault]);
    assert!(err.starts_with("error: FAILED_PRECONDITION: "), "{err}");
}

/// `blockvault gc` reclaims a deleted backup's space through the daemon.
#[test]
fn gc_on_demand_reclaims_deleted_backups() {
    let d = Daemon::start();
    let img = d.dir.path().join("gc.img");
    let data: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&img, data).unwrap();
    let vol = d
        .ok(&[&"volume", &"register", &"--path", &img])
        .trim()
        .to_string();
    let b = d.json(&[
        &"backup",
        &"create",
        &"--volume",
        &vol,
        &"--wait",
        &"--json",
    ]);
    let id = s(&b["backup"]["id"]);
    d.ok(&[&"backup", &"delete", &id]);
    let r = d.json(&[&"gc", &"--json"]);
    assert!(r["reclaimed_bytes"].as_u64().unwrap() > 100_000, "{r}");
    assert_eq!(r["pack_bytes_after"], 0, "{r}");
    assert!(r["chunks_removed"].as_u64().unwrap() > 0, "{r}");
    let text = d.ok(&[&"gc"]);
    assert!(text.starts_with("reclaimed"), "{text}");
}
