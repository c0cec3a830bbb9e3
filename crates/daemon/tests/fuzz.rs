//! Fuzz targets for the daemon's decoders of untrusted text (issue 9): the configuration file and
//! the exported backup record of Backups.ImportRecord.
//!
//! - `config`: `Config::parse`; what parses must survive a TOML round trip unchanged.
//! - `export_decode`: `export::decode(url, key)` under a fixed fuzz-only MAC key. Mutations work
//!   on every layer: the base64 text, the JSON envelope, and the payload with its MAC recomputed
//!   so that mutations reach the payload parser. What decodes re-encodes (`export::encode`) and
//!   decodes equal, and never decodes under another key.
//! - `export_payload`: the payload JSON alone (`export::Exported`): decode -> encode -> decode is
//!   the identity, and `export::decode` of the payload under a valid MAC accepts only what parses.
//! - `export_import`: the real `export::import` against a live store (a daemon opened in a
//!   temporary directory, holding one backup imported through a record made with its own key).
//!   Nothing may panic and nothing may import (the one genuine backup is already imported).
//!
//! CI runs each for a few seconds from `fuzz/corpus/<target>/`; see `fuzz/harness.rs` for the
//! environment variables. Regenerate the corpus with
//! `BV_FUZZ_WRITE_CORPUS=1 cargo test --release -p blockvault-daemon --test fuzz -- --ignored write_corpus`.
#[path = "../../../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;

use base64::Engine as _;
use blockvault_core::{BackupId, BackupRecord, ChunkerParams, MasterKey, VolumeId};
use blockvault_daemon::auth::Caller;
use blockvault_daemon::config::{Role, DEFAULT_CONFIG};
use blockvault_daemon::export::{self, Exported, BACKUP_SERVICE, EXPORT_VERSION};
use blockvault_daemon::model::{BackupRow, ROW_VERSION};
use blockvault_daemon::{Config, Daemon};
use blockvault_engine::BackupOptions;
use harness::{check_ok_seeds, fuzz, outcome, signature, Kind, Mutator, Notes, Target};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use time::OffsetDateTime;
use uuid::Uuid;

const KIND: &str = "blockvault-backup-record";
/// The fuzz-only MAC key of the checked-in export records (not a secret).
const FUZZ_KEY: [u8; 32] = *b"blockvault fuzz-only record key!";
const OTHER_KEY: [u8; 32] = *b"blockvault fuzz-only other key!!";

fn corpus_dir(target: &str) -> PathBuf {
    harness::corpus_root(env!("CARGO_MANIFEST_DIR")).join(target)
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let s = harness::load_corpus(&corpus_dir(target));
    assert!(!s.is_empty(), "fuzz/corpus/{target} is empty");
    s
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(s).trim())
        .ok()
}

fn mac(key: &[u8; 32], payload: &str) -> String {
    blake3::keyed_hash(key, payload.as_bytes())
        .to_hex()
        .to_string()
}

/// An export record as `export.rs` writes one: base64 of the JSON envelope, MAC under `key`.
fn wrap_payload(payload: &str, key: &[u8; 32]) -> String {
    let env = serde_json::json!({
        "kind": KIND,
        "format": EXPORT_VERSION,
        "mac": mac(key, payload),
        "payload": payload,
    });
    b64(&serde_json::to_vec(&env).unwrap())
}

/// The payload text of an export record, if it has one.
fn payload_of(url: &[u8]) -> Option<String> {
    let raw = unb64(url)?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    Some(v.get("payload")?.as_str()?.to_string())
}

fn admin() -> Caller {
    Caller {
        project: blockvault_daemon::auth::ADMIN_PROJECT.into(),
        user: "fuzz".into(),
        role: Role::Admin,
    }
}

/// The outcome as a gRPC client sees it (code and message).
fn status_sig<T>(prefix: &str, r: &Result<T, blockvault_daemon::error::Error>) -> String {
    match r {
        Ok(_) => format!("{prefix}:ok"),
        Err(e) => {
            let s = blockvault_daemon::api::status(e.clone());
            signature(&format!("{prefix}:{:?}", s.code()), s.message())
        }
    }
}

fn same(a: &Exported, b: &Exported) -> bool {
    serde_json::to_value(a).unwrap() == serde_json::to_value(b).unwrap()
}

// ------------------------------------------------------------------------------ a live store

/// A daemon in a temporary directory holding one backup, imported through a record made with
/// the daemon's own MAC key.
struct Live {
    _dir: tempfile::TempDir,
    daemon: Daemon,
    store_id: Uuid,
    key: [u8; 32],
    /// The record that was imported (or refused) and, if it was imported, `export::export`'s.
    crafted: String,
    exported: Option<String>,
}

fn live() -> Live {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.engine.threads = 1;
    config.cinder.enabled = false;
    let key_file = config.key_file();
    let daemon = Daemon::open(config).expect("open a daemon in a temporary directory");
    let master = MasterKey::parse(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let key = *master.record_mac_key();
    let control = daemon.control().clone();
    let image = dir.path().join("volume.img");
    let mut data = vec![0u8; 512 << 10];
    StdRng::seed_from_u64(9).fill_bytes(&mut data[..256 << 10]);
    std::fs::write(&image, &data).unwrap();
    // Daemon volumes are named by UUIDs.
    let volume = VolumeId::new(Uuid::from_u128(0x5eed).to_string()).unwrap();
    let rec = control
        .engine()
        .backup(BackupOptions::new(volume, &image))
        .expect("back up the fuzz volume");
    let mut h = blake3::Hasher::new();
    let mut blocks = 0u32;
    for b in control.engine().store().manifest(&rec.id) {
        h.update(&b.unwrap().encode());
        blocks += 1;
    }
    h.update(&blocks.to_le_bytes());
    let store_id = control.engine().store().config().store_id;
    let payload = Exported {
        store_id,
        backup: row(&rec),
        record: rec.clone(),
        manifest_digest: h.finalize().to_hex().to_string(),
    };
    let crafted = wrap_payload(&serde_json::to_string(&payload).unwrap(), &key);
    let exported = match export::import(&control, &admin(), BACKUP_SERVICE, &crafted) {
        Ok(_) => {
            let (service, url) = export::export(&control, &admin(), &rec.id.to_string())
                .expect("export the imported backup");
            assert_eq!(service, BACKUP_SERVICE);
            Some(url)
        }
        Err(e) => {
            println!(
                "fuzz: the live daemon refused the crafted record ({:?}: {}); export_import \
                 fuzzes without an imported backup",
                blockvault_daemon::api::status(e.clone()).code(),
                e.message()
            );
            None
        }
    };
    Live {
        _dir: dir,
        daemon,
        store_id,
        key,
        crafted,
        exported,
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A control row for `rec`, as the daemon would have written it (built from JSON, so that fields
/// added later with serde defaults need no change here).
fn row(rec: &BackupRecord) -> BackupRow {
    let volume = Uuid::parse_str(rec.volume_id.as_str()).unwrap_or(Uuid::from_u128(0x5eed));
    serde_json::from_value(serde_json::json!({
        "format": ROW_VERSION,
        "id": rec.id.0,
        "project_id": "p1",
        "user_id": "u1",
        "name": "nightly",
        "description": "a \"quoted\" description \u{e9}",
        "container": "",
        "metadata": { "origin": "fuzz" },
        "availability_zone": "nova",
        "snapshot_id": null,
        "volume_id": volume,
        "status": "available",
        "fail_reason": null,
        "is_incremental": rec.is_incremental,
        "parent_id": rec.parent_id,
        "size": rec.size,
        "object_count": rec.object_count,
        "stored_bytes": rec.stored_bytes,
        "data_timestamp": rfc3339(rec.data_timestamp),
        "created_at": rfc3339(rec.created_at),
        "updated_at": rfc3339(rec.created_at),
        "encrypted": rec.encrypted,
        "encryption_key_id": rec.encryption_key_id,
        "job_id": Uuid::from_u128(0x70b),
        "vault_id": null,
    }))
    .expect("a backup row from JSON")
}

/// Tokens of the payloads of `seeds`: field names and values worth inserting.
fn payload_dict(seeds: &[(String, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut d: Vec<Vec<u8>> = [
        "\"kind\"",
        "\"format\"",
        "\"mac\"",
        "\"checksum\"",
        "\"payload\"",
        "\"store_id\"",
        "\"backup\"",
        "\"record\"",
        "\"manifest_digest\"",
        "null",
        "\"creating\"",
        "\"available\"",
        "\"error_deleting\"",
        "\"9999-12-31T23:59:59.999999999-23:59\"",
        "\"0000-01-01T00:00:00+23:59\"",
        "\"2026-12-31T23:59:60Z\"",
        "\"00000000-0000-0000-0000-000000000000\"",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut seen = std::collections::HashSet::new();
    for (_, u) in seeds {
        let text = payload_of(u).unwrap_or_else(|| String::from_utf8_lossy(u).into_owned());
        for t in harness::tokens(text.as_bytes()) {
            if t.len() > 1 && t.len() < 80 && seen.insert(t.to_vec()) {
                d.push(t.to_vec());
            }
        }
    }
    d
}

/// Mutates an export record layer by layer: the base64 text, the JSON envelope, or (mostly) the
/// payload with its MAC recomputed under `key`.
fn export_mutator(key: [u8; 32]) -> Box<harness::CustomMutator> {
    Box::new(move |m: &Mutator, input: &[u8], rng: &mut StdRng| {
        let Some(raw) = unb64(input) else {
            return m.mutate(input, input, rng);
        };
        let layer = rng.gen_range(0..4);
        let parsed = serde_json::from_slice::<serde_json::Value>(&raw);
        match (layer, parsed) {
            (1..=3, Ok(serde_json::Value::Object(mut obj))) => {
                let payload = obj
                    .get("payload")
                    .and_then(|p| p.as_str())
                    .unwrap_or("")
                    .to_string();
                let new = m.mutate(payload.as_bytes(), payload.as_bytes(), rng);
                let new = String::from_utf8_lossy(&new).into_owned();
                if layer < 3 {
                    // The usual case: a payload under a valid MAC.
                    obj.insert("mac".into(), mac(&key, &new).into());
                }
                obj.insert("payload".into(), new.into());
                b64(&serde_json::to_vec(&obj).unwrap()).into_bytes()
            }
            _ => b64(&m.mutate(&raw, &raw, rng)).into_bytes(),
        }
    })
}

/// The record seeds re-made for the live store: its store id, its MAC key.
fn retarget(seeds: &[(String, Vec<u8>)], store_id: Uuid, key: &[u8; 32]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, url) in seeds {
        let Some(p) = payload_of(url) else { continue };
        let Ok(serde_json::Value::Object(mut o)) = serde_json::from_str::<serde_json::Value>(&p)
        else {
            continue;
        };
        o.insert("store_id".into(), store_id.to_string().into());
        let text = serde_json::to_string(&o).unwrap();
        out.push((
            format!("retarget-{name}"),
            wrap_payload(&text, key).into_bytes(),
        ));
    }
    out
}

// ------------------------------------------------------------------------------- the targets

#[test]
fn fuzz_config() {
    let seeds = seeds("config");
    check_ok_seeds("config", &seeds, false, |s| {
        Config::parse(&String::from_utf8_lossy(s)).map(|_| ())
    });
    let mut t = Target::new("config", Kind::Text, |input, notes: &mut Notes| {
        let text = String::from_utf8_lossy(input);
        let r = Config::parse(&text);
        if let Ok(c) = &r {
            let _ = (c.restore_dir(), c.key_file());
            if c.store_config().chunker.validate().is_err() {
                notes.soft("accepts chunk sizes that ChunkerParams::validate refuses");
            }
            let v: toml::Value = toml::from_str(&text).expect("a parsed config is TOML");
            match toml::to_string(&v) {
                Ok(again) => {
                    let c2 = Config::parse(&again).unwrap_or_else(|e| {
                        panic!("a config re-serialised by toml no longer parses: {e}")
                    });
                    assert_eq!(&c2, c, "a config changed through a TOML round trip");
                }
                Err(_) => notes.soft("toml cannot re-serialise a parsed config"),
            }
        }
        outcome("config", &r, |c| {
            format!(
                "{}:{}:{}:{}",
                c.tokens.len().min(2),
                c.tls.is_some(),
                c.restore_dir.is_some(),
                c.engine.key_file.is_some()
            )
        })
    });
    t.max_len = 1 << 14;
    t.dict = [
        "[tls]",
        "[[tokens]]",
        "[volumes]",
        "[vaults]",
        "[server]",
        "cert_file = \"c.pem\"",
        "key_file = \"k.pem\"",
        "token = \"0123456789abcdef0123\"",
        "role = \"admin\"",
        "role = \"reader\"",
        "dedup = \"global\"",
        "allowed_paths = [\"/dev/\", \"rel/\"]",
        "\"[::1]:8750\"",
        "\"0.0.0.0:0\"",
        "\"127.0.0.1:65536\"",
        "\"localhost:8750\"",
        "restore_dir = \"/tmp\"",
        "1979-05-27T07:32:00Z",
        "{ }",
        "= {",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz(t, seeds);
}

#[test]
fn fuzz_export_decode() {
    let seeds = seeds("export_decode");
    check_ok_seeds("export_decode", &seeds, false, |s| {
        export::decode(&String::from_utf8_lossy(s), &FUZZ_KEY)
            .map(|_| ())
            .map_err(|e| e.message().to_string())
    });
    let mut t = Target::new("export_decode", Kind::Text, |input, _notes| {
        let url = String::from_utf8_lossy(input);
        let r = export::decode(&url, &FUZZ_KEY);
        if let Ok(e) = &r {
            assert!(
                export::decode(&url, &OTHER_KEY).is_err(),
                "a record decoded under another MAC key"
            );
            let again = export::encode(e, &FUZZ_KEY);
            let back = export::decode(&again, &FUZZ_KEY).expect("a re-encoded record decodes");
            assert!(
                same(&back, e),
                "decode -> encode -> decode changed the record"
            );
        }
        status_sig("decode", &r)
    });
    t.max_len = 1 << 15;
    t.dict = payload_dict(&seeds);
    t.custom = Some(export_mutator(FUZZ_KEY));
    t.custom_percent = 70;
    fuzz(t, seeds);
}

#[test]
fn fuzz_export_payload() {
    let seeds = seeds("export_payload");
    check_ok_seeds("export_payload", &seeds, false, |s| {
        serde_json::from_slice::<Exported>(s)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let mut t = Target::new("export_payload", Kind::Text, |input, _notes| {
        let text = String::from_utf8_lossy(input);
        let direct = serde_json::from_str::<Exported>(&text);
        if let Ok(p) = &direct {
            let enc = serde_json::to_string(p).unwrap();
            let back: Exported = serde_json::from_str(&enc).expect("a re-encoded payload decodes");
            assert!(
                same(&back, p),
                "decode -> encode -> decode changed the payload"
            );
        }
        let decoded = export::decode(&wrap_payload(&text, &FUZZ_KEY), &FUZZ_KEY);
        if let Ok(d) = &decoded {
            let p = direct
                .as_ref()
                .expect("export::decode accepted a payload that does not parse");
            assert!(same(d, p), "export::decode and serde disagree on a payload");
        }
        format!(
            "{}|{}",
            outcome("payload", &direct, |p| format!(
                "{}",
                p.backup.id == p.record.id.0
            )),
            status_sig("decode", &decoded)
        )
    });
    t.max_len = 1 << 15;
    t.dict = payload_dict(&seeds);
    fuzz(t, seeds);
}

#[test]
fn fuzz_export_import() {
    let live = live();
    let control = live.daemon.control().clone();
    let caller = admin();
    let mut seeds = seeds("export_import");
    let extra = retarget(&seeds, live.store_id, &live.key);
    seeds.extend(extra);
    seeds.push(("live-crafted".into(), live.crafted.clone().into_bytes()));
    if let Some(u) = &live.exported {
        seeds.push(("live-exported".into(), u.clone().into_bytes()));
    }
    let imported = live.exported.is_some();
    let mut t = Target::new("export_import", Kind::Text, |input, _notes| {
        let url = String::from_utf8_lossy(input);
        // A few inputs also vary the service name.
        let service = if input.first().is_some_and(|b| b % 61 == 0) {
            "blockvault.chunkstore "
        } else {
            BACKUP_SERVICE
        };
        let r = export::import(&control, &caller, service, &url);
        if let Ok(row) = &r {
            panic!(
                "import accepted a record (backup {}); {}",
                row.id,
                if imported {
                    "the only genuine backup was imported already"
                } else {
                    "the crafted genuine record was refused, so nothing should import"
                }
            );
        }
        status_sig("import", &r)
    });
    t.max_len = 1 << 15;
    t.dict = payload_dict(&seeds);
    t.custom = Some(export_mutator(live.key));
    t.custom_percent = 70;
    fuzz(t, seeds);
}

// -------------------------------------------------------------------------------- the corpus

fn fixed_record(i: u8) -> BackupRecord {
    let t = rfc3339(OffsetDateTime::from_unix_timestamp(1_780_000_000 + i64::from(i)).unwrap());
    serde_json::from_value(serde_json::json!({
        "format": blockvault_core::format::RECORD_VERSION,
        "id": Uuid::from_u128(0xb000 + u128::from(i)),
        "volume_id": Uuid::from_u128(0x5eed).to_string(),
        "state": "available",
        "size": 512 << 10,
        "stored_bytes": 250_000,
        "new_chunks": 9,
        "object_count": 9,
        "hole_bytes": 256 << 10,
        "is_incremental": false,
        "parent_id": null,
        "created_at": t,
        "data_timestamp": t,
        "completed_at": t,
        "encrypted": false,
        "encryption_key_id": null,
        "chunker": ChunkerParams::default(),
        "manifest_blocks": 1,
        "fail_reason": null,
    }))
    .expect("a record from JSON")
}

/// Writes the seed corpus. Run it when a format changes.
#[test]
#[ignore]
fn write_corpus() {
    if std::env::var_os("BV_FUZZ_WRITE_CORPUS").is_none() {
        println!("set BV_FUZZ_WRITE_CORPUS=1 to rewrite fuzz/corpus");
        return;
    }
    let w = |target: &str, name: &str, data: &[u8]| {
        harness::write_seed(&corpus_dir(target), name, data);
    };

    // config
    w("config", "ok-default", DEFAULT_CONFIG.as_bytes());
    let enabled: String = DEFAULT_CONFIG
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if [
                    "[[tokens]]",
                    "token =",
                    "project =",
                    "user =",
                    "role =",
                    "[tls]",
                ]
                .iter()
                .any(|p| rest.starts_with(p)) =>
            {
                rest.to_string()
            }
            Some(rest)
                if rest.starts_with("cert_file =")
                    || rest.starts_with("key_file = \"/etc/blockvault/tls") =>
            {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    w("config", "ok-tokens-tls", enabled.as_bytes());
    let inline = r#"listen = "[::1]:0"
data_dir = "/var/lib/blockvault"
restore_dir = "/srv/volumes"
log = "debug"
jobs = { concurrency = 1, keep_finished_days = 0, max_queued = 1 }
gc = { interval_seconds = 0 }
engine = { threads = 1024, max_in_flight_mib = 1, key_file = "/etc/blockvault/master.key" }
store = { chunk_min = 64, chunk_avg = 256, chunk_max = 1024, zstd_level = 19 }
volumes = { allowed_paths = ["/dev/", "/var/lib/images/"], dedup = "global" }
vaults = { max_resources = 1 }
server = { max_message_bytes = 1024, max_concurrent_streams = 1, keepalive_seconds = 1, keepalive_timeout_seconds = 1 }
tokens = [
  { token = "ffffffffffffffff", project = "p", user = "u", role = "reader" },
  { token = "eeeeeeeeeeeeeeeeeeee", project = "q", user = "v", role = "admin" },
]
"#;
    w("config", "ok-inline-tables", inline.as_bytes());
    w("config", "ok-empty", b"");
    w(
        "config",
        "ok-partial",
        b"[jobs]\nconcurrency = 3\n\n[store]\nzstd_level = 3\n",
    );
    w(
        "config",
        "edge-unknown-key",
        format!("{DEFAULT_CONFIG}\nlisten_port = 1\n").as_bytes(),
    );
    w(
        "config",
        "edge-zero-concurrency",
        DEFAULT_CONFIG
            .replace("concurrency = 2", "concurrency = 0")
            .as_bytes(),
    );
    w(
        "config",
        "edge-negative-usize",
        DEFAULT_CONFIG
            .replace("concurrency = 2", "concurrency = -1")
            .as_bytes(),
    );
    w(
        "config",
        "edge-duplicate-table",
        format!("{DEFAULT_CONFIG}\n[gc]\ninterval_seconds = 1\n").as_bytes(),
    );
    w(
        "config",
        "edge-short-token",
        inline.replace("ffffffffffffffff", "short").as_bytes(),
    );
    w(
        "config",
        "edge-bad-listen",
        inline.replace("[::1]:0", "localhost:99999").as_bytes(),
    );
    w(
        "config",
        "edge-relative-path",
        inline.replace("\"/dev/\"", "\"dev/\"").as_bytes(),
    );
    w(
        "config",
        "edge-chunk-sizes",
        inline
            .replace("chunk_min = 64", "chunk_min = 63")
            .as_bytes(),
    );
    w(
        "config",
        "edge-huge-interval",
        inline
            .replace(
                "interval_seconds = 0",
                "interval_seconds = 18446744073709551615",
            )
            .as_bytes(),
    );

    // export_decode / export_import: records under the fuzz-only key of a store that is not
    // the fuzz run's (export_import re-makes them for its live store); export_payload: payloads.
    let rec = fixed_record(1);
    let payload = Exported {
        store_id: Uuid::from_u128(0x5704e),
        backup: row(&rec),
        record: rec.clone(),
        manifest_digest: blake3::hash(b"manifest").to_hex().to_string(),
    };
    let text = serde_json::to_string(&payload).unwrap();
    let mut r2 = fixed_record(2);
    r2.is_incremental = true;
    r2.parent_id = Some(BackupId(Uuid::from_u128(0xb001)));
    r2.encrypted = true;
    r2.encryption_key_id = Some(Uuid::from_u128(0xcafe));
    let mut row2 = row(&r2);
    row2.snapshot_id = Some(Uuid::from_u128(0x5a));
    row2.vault_id = Some(Uuid::from_u128(0x7a));
    row2.data_timestamp = None;
    row2.metadata.insert("\u{1F4A5}".into(), "\\\"".into());
    let p2 = Exported {
        store_id: Uuid::from_u128(0x5704e),
        backup: row2,
        record: r2,
        manifest_digest: "0".repeat(64),
    };
    let text2 = serde_json::to_string_pretty(&p2).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["backup"]["id"] = Uuid::from_u128(1).to_string().into();
    let disagree = serde_json::to_string(&v).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["backup"]["status"] = "restoring".into();
    v["record"]["state"] = "deleting".into();
    v["record"]["volume_id"] = "not-a-uuid".into();
    let states = serde_json::to_string(&v).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["checksum"] = "00".into();
    let unknown = serde_json::to_string(&v).unwrap();
    for (name, t) in [
        ("ok-basic", &text),
        ("ok-incremental-encrypted", &text2),
        ("ok-ids-disagree", &disagree),
        ("ok-other-states", &states),
        ("edge-unknown-field", &unknown),
    ] {
        w("export_payload", name, t.as_bytes());
        for target in ["export_decode", "export_import"] {
            w(target, name, wrap_payload(t, &FUZZ_KEY).as_bytes());
        }
    }
    w("export_payload", "edge-empty-object", b"{}");
    w("export_payload", "edge-not-json", b"{\"store_id\":");
    let env = |kind: &str, format: u32, mac: &str, payload: &str| {
        b64(&serde_json::to_vec(&serde_json::json!({
            "kind": kind, "format": format, "mac": mac, "payload": payload,
        }))
        .unwrap())
    };
    let good_mac = mac(&FUZZ_KEY, &text);
    let edges = [
        ("edge-not-base64", "not base64 at all!".to_string()),
        ("edge-not-json", b64(b"{\"kind\": ")),
        ("edge-empty", String::new()),
        (
            "edge-kind",
            env("cinder-backup", EXPORT_VERSION, &good_mac, &text),
        ),
        ("edge-version-1", env(KIND, 1, &good_mac, &text)),
        (
            "edge-wrong-mac",
            env(KIND, EXPORT_VERSION, &"0".repeat(64), &text),
        ),
        ("edge-short-mac", env(KIND, EXPORT_VERSION, "abc", &text)),
        ("edge-other-key", wrap_payload(&text, &OTHER_KEY)),
        (
            "edge-payload-not-json",
            wrap_payload("{\"store_id\":", &FUZZ_KEY),
        ),
        (
            "edge-checksum-envelope",
            b64(&serde_json::to_vec(&serde_json::json!({
                "kind": KIND, "format": 1,
                "checksum": blake3::hash(text.as_bytes()).to_hex().to_string(), "payload": text,
            }))
            .unwrap()),
        ),
        (
            "edge-url-safe-base64",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
                base64::engine::general_purpose::STANDARD
                    .decode(wrap_payload(&text, &FUZZ_KEY))
                    .unwrap(),
            ),
        ),
        (
            "edge-whitespace",
            format!("\n  {}  \n", wrap_payload(&text, &FUZZ_KEY)),
        ),
    ];
    for (name, url) in edges {
        for target in ["export_decode", "export_import"] {
            w(target, name, url.as_bytes());
        }
    }
}
