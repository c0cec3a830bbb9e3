//! Fuzz targets for the store's decoders of bytes that come back from a bucket or a pack
//! directory (issue 10): pack trailers and footers, and catalog objects (manifest parts,
//! records, wrapped keys, the store config). The mutation engine is `fuzz/harness.rs`, the
//! corpus `fuzz/corpus/<target>/`, as for the core targets (`fuzz/README.md`).
//!
//! - `pack_trailer` (input: a whole pack): `recover`'s listing never fails on a pack of at
//!   least a header, and every entry it gives lies inside the pack, in order, without overlap;
//!   a listing from the trailer is exactly what verify and GC trust, and covers the entries
//!   from the header to the trailer. Each input is also tried with its trailer re-MACed under
//!   the fixture key, so mutated entries reach the checks behind a valid MAC.
//! - `catalog_object` (input: kind u8 | name length u8 | name | object): an object opens only
//!   under its own name and kind, and only if it is exactly what the store would seal; what
//!   opens goes through the decoder of its kind.
//! - `catalog_body` (input: kind u8 | name length u8 | name | body): the body is sealed under
//!   the fixture key first, so every mutation reaches the decoders; a manifest part and a record
//!   decode -> encode -> decode to the same value.
//!
//! A long run: `BV_FUZZ_SECS=120 cargo test --release -p blockvault-store --test fuzz --
//! --test-threads 1`. Regenerate the corpus: `BV_FUZZ_WRITE_CORPUS=1 cargo test --release
//! -p blockvault-store --test fuzz -- --ignored write_corpus`.
#[path = "../../../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;

use blockvault_core::chunker::ChunkerParams;
use blockvault_core::format::{
    CATALOG_MAGIC, PACK_ENTRY_MAGIC, PACK_FOOTER_MAGIC, PACK_MAGIC, PACK_MAGIC_V1,
    PACK_TRAILER_MAGIC, RECORD_VERSION,
};
use blockvault_core::{
    BackupId, BackupRecord, CatalogKey, ChunkId, ManifestBlock, ManifestEntry, PackId, WrappedKey,
};
use blockvault_store::fuzzing;
use blockvault_store::{ChunkLoc, PackListing, StoreConfig};
use harness::{check_ok_seeds, fuzz, outcome, signature, Kind, Notes, Target};

const PACK: PackId = PackId([0x5a; 16]);
const HEADER: usize = 24;
const ENTRY_HEADER: u64 = 40;
const FOOTER: usize = 16;

fn key() -> CatalogKey {
    CatalogKey::unauthenticated(&uuid::Uuid::from_u128(
        0x0b10_c4a1_7f00_4e2a_9d1c_55aa_0f0f_1234,
    ))
}

fn corpus_dir(target: &str) -> PathBuf {
    harness::corpus_root(env!("CARGO_MANIFEST_DIR")).join(target)
}

// ---------------------------------------------------------------------------- pack_trailer

/// Lists `pack` and checks what the listing may say; returns the outcome.
fn listing(pack: &[u8], key: &CatalogKey) -> String {
    let r = fuzzing::pack_entries(PACK, pack, key);
    if pack.len() < HEADER {
        assert!(r.is_err(), "a pack shorter than a header listed");
        return "short".into();
    }
    let (entries, how) = r.expect("a pack of at least a header always lists (maybe nothing)");
    let mut next = HEADER as u64;
    for (_, loc) in &entries {
        assert_eq!(loc.pack, PACK);
        assert!(loc.offset >= next, "entry at {} overlaps", loc.offset);
        let stop = loc
            .offset
            .checked_add(ENTRY_HEADER + u64::from(loc.len))
            .expect("entry end overflows");
        assert!(stop <= pack.len() as u64, "entry past the pack's end");
        next = stop;
    }
    let trusted = fuzzing::trusted_entries(PACK, pack, key);
    if how == PackListing::Trailer {
        assert_eq!(
            trusted.as_ref(),
            Some(&entries),
            "listing and trusted entries differ"
        );
        // Contiguous from the header to the trailer the footer names.
        let end = u64::from_le_bytes(pack[pack.len() - FOOTER..][..8].try_into().unwrap());
        let mut at = HEADER as u64;
        for (_, loc) in &entries {
            assert_eq!(loc.offset, at, "a trusted entry is out of place");
            at = loc.offset + ENTRY_HEADER + u64::from(loc.len);
        }
        assert_eq!(at, end, "trusted entries do not reach the trailer");
    } else if pack[..8] == PACK_MAGIC && pack[8..HEADER] == PACK.0 {
        assert!(
            trusted.is_none(),
            "a trailer that checks was not used ({how:?})"
        );
    }
    match how {
        PackListing::Scanned(why) => signature(&format!("scanned:{}", entries.len()), &why),
        how => format!("{how:?}:{}", entries.len()),
    }
}

/// `pack` with the trailer its footer names re-MACed under `key`, if the footer names one.
fn remac(pack: &[u8], key: &CatalogKey) -> Option<Vec<u8>> {
    if pack.len() < HEADER + 8 + 32 + FOOTER || pack[pack.len() - 8..] != PACK_FOOTER_MAGIC {
        return None;
    }
    let end = u64::from_le_bytes(pack[pack.len() - FOOTER..][..8].try_into().unwrap());
    let end = usize::try_from(end).ok()?;
    let mac_at = pack.len() - FOOTER - 32;
    if end < HEADER || end.checked_add(8).is_none_or(|e| e > mac_at) {
        return None;
    }
    let mac = key.mac(&[&PACK.0, &pack[end..mac_at]]);
    let mut out = pack.to_vec();
    out[mac_at..mac_at + 32].copy_from_slice(&mac);
    Some(out)
}

fn check_pack(input: &[u8], _notes: &mut Notes) -> String {
    let key = key();
    let mut sig = listing(input, &key);
    if let Some(p) = remac(input, &key) {
        sig.push('|');
        sig.push_str(&listing(&p, &key));
    }
    sig
}

// ------------------------------------------------------------------- catalog_object / body

/// Splits `kind | name length | name | rest`.
fn split(input: &[u8]) -> Option<(u8, &str, &[u8])> {
    let (&kind, rest) = input.split_first()?;
    let (&n, rest) = rest.split_first()?;
    let name = std::str::from_utf8(rest.get(..n as usize)?).ok()?;
    Some((kind, name, &rest[n as usize..]))
}

/// [`outcome`] with the object's name taken out of error messages (it varies with the input).
fn named<T, E: std::fmt::Display>(
    prefix: &str,
    name: &str,
    r: &Result<T, E>,
    ok: impl Fn(&T) -> String,
) -> String {
    match r {
        Ok(v) => format!("{prefix}:ok:{}", ok(v)),
        Err(e) if name.is_empty() => signature(&format!("{prefix}:err"), &e.to_string()),
        Err(e) => signature(
            &format!("{prefix}:err"),
            &e.to_string().replace(name, "NAME"),
        ),
    }
}

/// Runs the decoder of `kind` over `body`; checks the round trips.
fn decode(kind: u8, name: &str, body: &[u8]) -> String {
    match kind {
        1 => outcome(
            "config",
            &serde_json::from_slice::<StoreConfig>(body),
            |_| String::new(),
        ),
        2 => outcome("key", &WrappedKey::decode(body), |k| {
            assert_eq!(k.encode(), body, "a wrapped key re-encodes differently");
            String::new()
        }),
        3 => {
            let r = fuzzing::decode_part(name, body);
            if let Ok(blocks) = &r {
                let enc: Vec<Vec<u8>> = blocks.iter().map(ManifestBlock::encode).collect();
                let back = fuzzing::decode_part(name, &fuzzing::encode_part(&enc))
                    .expect("a re-encoded part decodes");
                assert_eq!(&back, blocks, "part decode -> encode -> decode changed it");
            }
            named("part", name, &r, |b| b.len().to_string())
        }
        4 => {
            let r = fuzzing::decode_record(body);
            if let Ok((rec, ann)) = &r {
                let back = fuzzing::decode_record(&fuzzing::encode_record(rec, ann.as_deref()))
                    .expect("a re-encoded record decodes");
                assert_eq!(
                    (&back.0, &back.1),
                    (rec, ann),
                    "record round trip changed it"
                );
            }
            outcome("record", &r, |(_, a)| a.is_some().to_string())
        }
        _ => "no-kind".into(),
    }
}

fn check_object(input: &[u8], _notes: &mut Notes) -> String {
    let key = key();
    let Some((kind, name, obj)) = split(input) else {
        return "unsplit".into();
    };
    let r = fuzzing::open_object(&key, name, kind, obj);
    let Ok(body) = r else {
        return named("open", name, &r, |_| String::new());
    };
    let again = fuzzing::seal_object(&key, name, kind, &body).unwrap();
    assert_eq!(
        again, obj,
        "an object opened that the store would not have sealed so"
    );
    let other = format!("{name}x");
    assert!(
        fuzzing::open_object(&key, &other, kind, obj).is_err(),
        "an object opened under another name"
    );
    for k in 1..=4u8 {
        if k != kind {
            assert!(
                fuzzing::open_object(&key, name, k, obj).is_err(),
                "opened as kind {k}"
            );
        }
    }
    format!("open:ok|{}", decode(kind, name, &body))
}

fn check_body(input: &[u8], _notes: &mut Notes) -> String {
    let key = key();
    let Some((kind, name, body)) = split(input) else {
        return "unsplit".into();
    };
    let Ok(obj) = fuzzing::seal_object(&key, name, kind, body) else {
        return "no-kind".into();
    };
    let opened = fuzzing::open_object(&key, name, kind, &obj).expect("a sealed object opens");
    assert_eq!(opened, body);
    decode(kind, name, body)
}

// -------------------------------------------------------------------------------- targets

fn target(name: &'static str) -> Target<'static> {
    let mut t = match name {
        "pack_trailer" => Target::new(name, Kind::Binary, check_pack),
        "catalog_object" => Target::new(name, Kind::Binary, check_object),
        "catalog_body" => Target::new(name, Kind::Binary, check_body),
        _ => panic!("no store fuzz target {name}"),
    };
    t.max_len = 1 << 16;
    t.dict = vec![
        PACK_MAGIC.to_vec(),
        PACK_MAGIC_V1.to_vec(),
        PACK_ENTRY_MAGIC.to_vec(),
        PACK_TRAILER_MAGIC.to_vec(),
        PACK_FOOTER_MAGIC.to_vec(),
        CATALOG_MAGIC.to_vec(),
        PACK.0.to_vec(),
        b"\"annotation\":".to_vec(),
        b"\"record\":".to_vec(),
        b"null".to_vec(),
    ];
    t.ints = vec![
        HEADER as u64,
        ENTRY_HEADER,
        48,
        64,
        (16 << 20) + 64,
        (16 << 20) + 65,
    ];
    t.leb128 = name == "catalog_body";
    t
}

/// Whether a seed decodes all the way (the `ok-*` seeds must).
fn accept(name: &str, seed: &[u8]) -> Result<(), String> {
    let key = key();
    match name {
        "pack_trailer" => match fuzzing::pack_entries(PACK, seed, &key) {
            Ok((_, PackListing::Trailer | PackListing::ScannedV1)) => Ok(()),
            Ok((_, how)) => Err(format!("{how:?}")),
            Err(e) => Err(e.to_string()),
        },
        "catalog_object" | "catalog_body" => {
            let (kind, n, rest) = split(seed).ok_or("does not split")?;
            let body = if name == "catalog_object" {
                fuzzing::open_object(&key, n, kind, rest).map_err(|e| e.to_string())?
            } else {
                rest.to_vec()
            };
            let d = decode(kind, n, &body);
            (d.contains(":ok:")).then_some(()).ok_or(d)
        }
        _ => Err(format!("no target {name}")),
    }
}

fn run(name: &'static str) {
    let seeds = harness::load_corpus(&corpus_dir(name));
    assert!(!seeds.is_empty(), "fuzz/corpus/{name} is empty");
    check_ok_seeds(name, &seeds, true, |s| accept(name, s));
    fuzz(target(name), seeds);
}

#[test]
fn fuzz_pack_trailer() {
    run("pack_trailer");
}

#[test]
fn fuzz_catalog_object() {
    run("catalog_object");
}

#[test]
fn fuzz_catalog_body() {
    run("catalog_body");
}

// -------------------------------------------------------------------------------- the corpus

/// A pack of `n` stored entries with magic `magic`; with `trailer`, sealed as the writer does.
fn pack(n: usize, magic: [u8; 8], trailer: bool) -> Vec<u8> {
    let mut body = magic.to_vec();
    body.extend_from_slice(&PACK.0);
    let mut entries = Vec::new();
    for i in 0..n {
        let raw = 5 + i as u32 * 3;
        let mut env = vec![1u8, 0];
        env.extend_from_slice(&raw.to_le_bytes());
        env.extend(std::iter::repeat_n(i as u8, raw as usize));
        let cid = ChunkId(*blake3::hash(&[i as u8]).as_bytes());
        entries.push((
            cid,
            ChunkLoc {
                pack: PACK,
                offset: body.len() as u64,
                len: env.len() as u32,
                raw_len: raw,
            },
        ));
        body.extend_from_slice(&PACK_ENTRY_MAGIC);
        body.extend_from_slice(cid.as_bytes());
        body.extend_from_slice(&(env.len() as u32).to_le_bytes());
        body.extend_from_slice(&env);
    }
    if trailer {
        let end = body.len() as u64;
        body.extend_from_slice(&fuzzing::seal_trailer(PACK, end, &entries, &key()));
    }
    body
}

fn record(annotated: bool) -> Vec<u8> {
    let t = "2026-12-02T10:00:00Z";
    let rec: BackupRecord = serde_json::from_value(serde_json::json!({
        "format": RECORD_VERSION,
        "id": BackupId(uuid::Uuid::from_u128(0x2000)),
        "volume_id": "vol-1",
        "state": "available",
        "size": 1u64 << 30,
        "stored_bytes": 1234,
        "new_chunks": 3,
        "object_count": 9,
        "hole_bytes": 0,
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
    .expect("a record from JSON");
    let ann = annotated.then_some(r#"{"name":"nightly","project_id":"p1"}"#);
    fuzzing::encode_record(&rec, ann)
}

fn framed(kind: u8, name: &str, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(rest);
    v
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
    w("pack_trailer", "ok-v2-three", &pack(3, PACK_MAGIC, true));
    w("pack_trailer", "ok-v2-empty", &pack(0, PACK_MAGIC, true));
    w("pack_trailer", "ok-v1-two", &pack(2, PACK_MAGIC_V1, false));
    let mut torn = pack(3, PACK_MAGIC, true);
    torn.truncate(torn.len() - 20);
    w("pack_trailer", "edge-torn-tail", &torn);
    let mut bad = pack(2, PACK_MAGIC, true);
    let at = bad.len() - FOOTER - 1;
    bad[at] ^= 1;
    w("pack_trailer", "edge-bad-mac", &bad);

    let key = key();
    let id = BackupId(uuid::Uuid::from_u128(0x2000));
    let block = |start: u64| {
        ManifestBlock {
            start,
            entries: vec![
                ManifestEntry::Chunk {
                    id: ChunkId(*blake3::hash(&start.to_le_bytes()).as_bytes()),
                    len: 32768,
                },
                ManifestEntry::Hole { len: 1 << 20 },
            ],
        }
        .encode()
    };
    let part = fuzzing::encode_part(&[block(0), block(1_081_344)]);
    let part_name = format!("backups/{id}/manifest-000000");
    let record_name = format!("backups/{id}/record");
    let config = serde_json::to_vec(&StoreConfig::default()).unwrap();
    let bodies: [(&str, u8, &str, Vec<u8>); 4] = [
        ("ok-part", 3, &part_name, part),
        ("ok-record", 4, &record_name, record(true)),
        ("ok-record-plain", 4, &record_name, record(false)),
        ("ok-config", 1, "store.json", config),
    ];
    for (seed, kind, name, body) in &bodies {
        w("catalog_body", seed, &framed(*kind, name, body));
        let obj = fuzzing::seal_object(&key, name, *kind, body).unwrap();
        w("catalog_object", seed, &framed(*kind, name, &obj));
    }
    w(
        "catalog_body",
        "edge-key",
        &framed(2, "keys/766f6c2d31", &[1; 61]),
    );
    w(
        "catalog_object",
        "edge-wrong-kind",
        &framed(4, &part_name, &{
            fuzzing::seal_object(&key, &part_name, 3, &bodies[0].3).unwrap()
        }),
    );
}
