//! Fuzz targets for the core decoders of untrusted bytes (issue 9): manifest blocks, chunk
//! envelopes (with and without a data key, and behind a valid AES-GCM tag), backup records,
//! wrapped data keys and master key files. The targets and their checks are in
//! `fuzz/core_targets.rs` (shared with the libFuzzer binaries of `fuzz/`), the mutation engine in
//! `fuzz/harness.rs`.
//!
//! CI runs each target for a few seconds from `fuzz/corpus/<target>/`. A long run:
//!
//! ```text
//! BV_FUZZ_SECS=120 cargo test --release -p blockvault-core --test fuzz -- --test-threads 1
//! ```
//! Regenerate the corpus from real encodings:
//! `BV_FUZZ_WRITE_CORPUS=1 cargo test --release -p blockvault-core --test fuzz -- --ignored write_corpus`.
#[path = "../../../fuzz/core_targets.rs"]
mod core_targets;
#[path = "../../../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;

use blockvault_core::chunker::ChunkerParams;
use blockvault_core::envelope::MAX_RAW_LEN;
use blockvault_core::format::{
    ENVELOPE_FLAG_AES_GCM, ENVELOPE_HEADER_LEN, MANIFEST_BLOCK_VERSION, MASTER_KEY_HEADER,
    RECORD_VERSION,
};
use blockvault_core::keys::{chunk_id, ChunkKeys};
use blockvault_core::{BackupId, BackupRecord, BackupState, ChunkId, ManifestBlock, ManifestEntry};
use core_targets::{codecs, Fixture, FIXTURE_KEY_ID, MASTER_RAW};
use harness::{check_ok_seeds, fuzz, signature};
use time::OffsetDateTime;

fn corpus_dir(target: &str) -> PathBuf {
    harness::corpus_root(env!("CARGO_MANIFEST_DIR")).join(target)
}

/// Checks the target's `ok-*` seeds, then fuzzes it from its corpus.
fn run(name: &'static str) {
    let fx = Fixture::new();
    let seeds = harness::load_corpus(&corpus_dir(name));
    assert!(!seeds.is_empty(), "fuzz/corpus/{name} is empty");
    check_ok_seeds(name, &seeds, true, |s| core_targets::accept(&fx, name, s));
    fuzz(core_targets::target(name, &fx), seeds);
}

#[test]
fn fuzz_envelope() {
    run("envelope");
}

#[test]
fn fuzz_envelope_sealed() {
    run("envelope_sealed");
}

#[test]
fn fuzz_manifest_block() {
    run("manifest_block");
}

#[test]
fn fuzz_backup_record() {
    run("backup_record");
}

#[test]
fn fuzz_wrapped_key() {
    run("wrapped_key");
}

#[test]
fn fuzz_master_key_file() {
    run("master_key_file");
}

/// The signature helper keeps numbers, ids and quoted input out of the outcome (or the corpus
/// would grow with every distinct field name).
#[test]
fn signature_normalises_input() {
    assert_eq!(
        signature("x", "unknown field `abc` at line 3 column 17"),
        signature("x", "unknown field `zz` at line 4 column 1")
    );
    assert_eq!(
        signature("x", "store 6a1d7c0e-3b5f-4e8a-9d21-0c4b7f36e215 differs"),
        signature("x", "store 00000000-0000-0000-0000-000000000001 differs")
    );
    assert_ne!(
        signature("x", "truncated"),
        signature("x", "trailing bytes")
    );
}

/// A panicking check is caught, reported with its location, and fails the run.
#[test]
fn a_panicking_decoder_is_reported() {
    let r = harness::catch(|| {
        let v: Vec<u8> = Vec::new();
        v[1]
    });
    let msg = r.unwrap_err();
    assert!(msg.contains("index out of bounds"), "{msg}");
    assert!(msg.contains("fuzz.rs"), "{msg}");
    let t = harness::Target::new("selftest", harness::Kind::Binary, |input, _| {
        assert!(input.len() < 3, "long input");
        String::new()
    });
    let bounds = harness::Bounds {
        secs: None,
        iters: Some(200),
    };
    let r = harness::catch(|| harness::fuzz_with(t, vec![("a".into(), vec![1, 2])], bounds));
    let msg = r.unwrap_err();
    assert!(msg.contains("long input"), "{msg}");
    assert!(
        msg.contains("input (3 bytes"),
        "minimised to 3 bytes: {msg}"
    );
}

// -------------------------------------------------------------------------------- the corpus

/// A record, built from JSON so that fields added later (with serde defaults) need no change.
fn record(i: u8) -> BackupRecord {
    let t = OffsetDateTime::from_unix_timestamp(1_780_000_000 + i64::from(i))
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    serde_json::from_value(serde_json::json!({
        "format": RECORD_VERSION,
        "id": BackupId(uuid::Uuid::from_u128(0x1000 + u128::from(i))),
        "volume_id": format!("vol-{i}"),
        "state": "available",
        "size": 1u64 << 30,
        "stored_bytes": 123_456,
        "new_chunks": 7,
        "object_count": 42,
        "hole_bytes": 1 << 20,
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

/// Writes the seed corpus from real encodings. Run it when a format changes.
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

    // manifest_block
    let id = |n: u8| ChunkId(*blake3::hash(&[n]).as_bytes());
    let blk = |start: u64, entries: Vec<ManifestEntry>| ManifestBlock { start, entries }.encode();
    w("manifest_block", "ok-empty", &blk(0, vec![]));
    w(
        "manifest_block",
        "ok-chunks-and-holes",
        &blk(
            65536,
            vec![
                ManifestEntry::Chunk {
                    id: id(1),
                    len: 32768,
                },
                ManifestEntry::Hole { len: 1 << 20 },
                ManifestEntry::Chunk { id: id(2), len: 1 },
                ManifestEntry::Chunk {
                    id: id(3),
                    len: MAX_RAW_LEN as u32,
                },
            ],
        ),
    );
    w(
        "manifest_block",
        "ok-extremes",
        &blk(
            u64::MAX,
            vec![
                ManifestEntry::Hole { len: u64::MAX },
                ManifestEntry::Hole { len: 1 },
            ],
        ),
    );
    let many: Vec<ManifestEntry> = (0..300)
        .map(|i| {
            if i % 3 == 0 {
                ManifestEntry::Hole { len: 4096 }
            } else {
                ManifestEntry::Chunk {
                    id: id(i as u8),
                    len: 8192 + i,
                }
            }
        })
        .collect();
    w("manifest_block", "ok-300-entries", &blk(1 << 40, many));
    let mut overlong = vec![MANIFEST_BLOCK_VERSION, 0x80, 0x00, 0x81, 0x00];
    overlong.extend_from_slice(&[0x02, 0x85, 0x80, 0x00]);
    w("manifest_block", "edge-overlong-varints", &overlong);
    let mut v = vec![MANIFEST_BLOCK_VERSION, 0];
    v.extend_from_slice(&[0x81, 0x80, 0x01]); // count 16385 > 4 * 4096
    w("manifest_block", "edge-too-many", &v);
    w(
        "manifest_block",
        "edge-varint-overflow",
        &[
            MANIFEST_BLOCK_VERSION,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x02,
        ],
    );
    w(
        "manifest_block",
        "edge-zero-len",
        &[MANIFEST_BLOCK_VERSION, 0, 1, 0x02, 0],
    );
    w(
        "manifest_block",
        "edge-unknown-tag",
        &[MANIFEST_BLOCK_VERSION, 0, 1, 0x03, 1],
    );
    let mut t = blk(0, vec![ManifestEntry::Chunk { id: id(9), len: 10 }]);
    t.truncate(t.len() - 5);
    w("manifest_block", "edge-truncated-id", &t);
    let mut t = blk(0, vec![ManifestEntry::Hole { len: 5 }]);
    t.push(0);
    w("manifest_block", "edge-trailing", &t);
    w("manifest_block", "edge-version", &[2, 0, 0]);

    // envelope (id || envelope) and envelope_sealed (header || payload)
    let fx = Fixture::new();
    let dk = &fx.dk;
    let text = b"blockvault fuzz corpus ".repeat(200);
    let noise: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let cat = |id: &ChunkId, env: &[u8]| [id.as_bytes().as_slice(), env].concat();
    for (name, data) in [
        ("empty", &b""[..]),
        ("text", &text[..]),
        ("noise", &noise[..]),
    ] {
        for (cname, c) in [("raw", codecs()[0]), ("zstd", codecs()[1])] {
            let pid = chunk_id(data, None);
            let env = c.seal(&pid, data, None);
            w(
                "envelope",
                &format!("ok-plain-{cname}-{name}"),
                &cat(&pid, &env),
            );
            w("envelope_sealed", &format!("ok-{cname}-{name}"), &env);
            let kid = chunk_id(data, Some(dk));
            let env = c.seal(&kid, data, Some(dk));
            w(
                "envelope",
                &format!("ok-keyed-{cname}-{name}"),
                &cat(&kid, &env),
            );
            let did = ChunkKeys::Domain(&fx.domain).chunk_id(data);
            let env = c.seal(&did, data, None);
            w(
                "envelope",
                &format!("ok-domain-{cname}-{name}"),
                &cat(&did, &env),
            );
        }
    }
    let pid = chunk_id(&text, None);
    let env = codecs()[1].seal(&pid, &text, None);
    let mut bad_len = env.clone();
    bad_len[2..6].copy_from_slice(&((text.len() as u32) - 1).to_le_bytes());
    w("envelope", "edge-zstd-wrong-raw-len", &cat(&pid, &bad_len));
    w("envelope_sealed", "edge-zstd-wrong-raw-len", &bad_len);
    let mut big = env.clone();
    big[2..6].copy_from_slice(&(MAX_RAW_LEN as u32 + 1).to_le_bytes());
    w("envelope", "edge-raw-len-too-big", &cat(&pid, &big));
    w("envelope_sealed", "edge-raw-len-too-big", &big);
    let mut trunc = env.clone();
    trunc.truncate(env.len() - 3);
    w("envelope", "edge-zstd-truncated", &cat(&pid, &trunc));
    w("envelope_sealed", "edge-zstd-truncated", &trunc);
    let mut two = env.clone();
    two.extend_from_slice(&env[ENVELOPE_HEADER_LEN..]);
    w("envelope", "edge-zstd-two-frames", &cat(&pid, &two));
    w("envelope_sealed", "edge-zstd-two-frames", &two);
    let mut skippable = env[..ENVELOPE_HEADER_LEN].to_vec();
    skippable.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
    skippable.extend_from_slice(&env[ENVELOPE_HEADER_LEN..]);
    w(
        "envelope",
        "edge-zstd-skippable-frame",
        &cat(&pid, &skippable),
    );
    w("envelope_sealed", "edge-zstd-skippable-frame", &skippable);
    let mut flags = env.clone();
    flags[1] |= 0x80;
    w("envelope", "edge-unknown-flag", &cat(&pid, &flags));
    w("envelope_sealed", "edge-unknown-flag", &flags);
    let mut version = env.clone();
    version[0] = 2;
    w("envelope", "edge-version", &cat(&pid, &version));
    w("envelope_sealed", "edge-version", &version);
    w("envelope", "edge-short-header", &cat(&pid, &[1, 0, 0]));
    w(
        "envelope",
        "edge-encrypted-too-short",
        &cat(&pid, &[1, ENVELOPE_FLAG_AES_GCM, 0, 0, 0, 0, 1, 2, 3]),
    );
    w("envelope_sealed", "edge-short-header", &[1, 1]);

    // backup_record
    w("backup_record", "ok-available", &record(1).encode());
    let mut r = record(2);
    r.is_incremental = true;
    r.parent_id = Some(BackupId(uuid::Uuid::from_u128(1)));
    r.encrypted = true;
    r.encryption_key_id = Some(uuid::Uuid::from_u128(FIXTURE_KEY_ID));
    r.created_at = OffsetDateTime::from_unix_timestamp_nanos(1_780_000_000_123_456_789)
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(5, 30, 0).unwrap());
    w("backup_record", "ok-incremental-encrypted", &r.encode());
    let mut r = record(3);
    r.state = BackupState::Error;
    r.completed_at = None;
    r.fail_reason = Some("disk \"vanished\" \u{1F4A5}\n\\".into());
    r.size = u64::MAX;
    r.manifest_blocks = u32::MAX;
    w("backup_record", "ok-error-extremes", &r.encode());
    let mut r = record(4);
    r.state = BackupState::InProgress;
    w("backup_record", "ok-in-progress", &r.encode());
    let pretty = serde_json::to_vec_pretty(&record(5)).unwrap();
    w("backup_record", "ok-pretty", &pretty);
    let mut v: serde_json::Value = serde_json::from_slice(&record(10).encode()).unwrap();
    v["dedup_domain"] = "project-a".into();
    w(
        "backup_record",
        "ok-dedup-domain",
        &serde_json::to_vec(&v).unwrap(),
    );
    let mut v: serde_json::Value = serde_json::from_slice(&record(6).encode()).unwrap();
    v["format"] = 2.into();
    w(
        "backup_record",
        "edge-format-2",
        &serde_json::to_vec(&v).unwrap(),
    );
    let mut v: serde_json::Value = serde_json::from_slice(&record(7).encode()).unwrap();
    v["extra"] = 1.into();
    w(
        "backup_record",
        "edge-unknown-field",
        &serde_json::to_vec(&v).unwrap(),
    );
    let mut v: serde_json::Value = serde_json::from_slice(&record(8).encode()).unwrap();
    v["volume_id"] = "a/b".into();
    w(
        "backup_record",
        "edge-bad-volume-id",
        &serde_json::to_vec(&v).unwrap(),
    );
    let mut v: serde_json::Value = serde_json::from_slice(&record(9).encode()).unwrap();
    v["created_at"] = "2026-13-01T00:00:00Z".into();
    w(
        "backup_record",
        "edge-bad-time",
        &serde_json::to_vec(&v).unwrap(),
    );

    // wrapped_key
    let wk = core_targets::fixture_wrapped().encode();
    w("wrapped_key", "ok-fixture", &wk);
    w(
        "wrapped_key",
        "ok-real-wrap",
        &fx.master.wrap(&fx.volume, dk).encode(),
    );
    w("wrapped_key", "edge-short", &wk[..wk.len() - 1]);
    let mut v2 = wk.clone();
    v2[0] = 2;
    w("wrapped_key", "edge-version", &v2);

    // master_key_file
    w(
        "master_key_file",
        "ok-fixture",
        core_targets::master_key_text().as_bytes(),
    );
    w(
        "master_key_file",
        "ok-crlf-spaces",
        format!(
            "  {MASTER_KEY_HEADER}  \r\n  {}  \r\n",
            harness::hex(&MASTER_RAW)
        )
        .as_bytes(),
    );
    w(
        "master_key_file",
        "edge-short-key",
        format!("{MASTER_KEY_HEADER}\n{}\n", harness::hex(&MASTER_RAW[..31])).as_bytes(),
    );
    w(
        "master_key_file",
        "edge-no-key-line",
        format!("{MASTER_KEY_HEADER}\n").as_bytes(),
    );
    w(
        "master_key_file",
        "edge-wrong-header",
        format!("blockvault-master-key-v2\n{}\n", harness::hex(&MASTER_RAW)).as_bytes(),
    );
}
