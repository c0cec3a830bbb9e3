//! The core fuzz targets (issue 9), shared by the `cargo test` fuzzer
//! (`crates/core/tests/fuzz.rs`) and the libFuzzer binaries (`fuzz/fuzz_targets/`).
//!
//! Every check panics on a violated property and returns an outcome signature otherwise:
//! - `envelope` (input: chunk id (32) || envelope): `open`/`open_with` and
//!   `open_in_place`/`open_in_place_with`, with plain ids, with the fixture dedup domain, with the
//!   fixture data key and with a wrong key, agree with an independent reference decoder written
//!   from FORMAT.md; what opens re-seals with every codec and re-opens equal, and does not open
//!   under another id or in another dedup domain.
//! - `envelope_sealed` (input: header (6) || payload): the check sets the AES-GCM flag, encrypts
//!   the payload under the fixture data key with the right associated data, and opens it, so
//!   that mutations reach the decoding behind a valid tag. Same properties.
//! - `manifest_block`: decode -> encode -> decode gives the same block, and the restore-side
//!   `Coverage` walk over it refuses gaps, overflows and overruns instead of wrapping.
//! - `backup_record`: decode -> encode -> decode gives the same record, and encoding is stable.
//! - `wrapped_key`: decode -> encode gives the same bytes; only genuine wraps of the fixture data
//!   key unwrap under the fixture master key, and never for another volume.
//! - `master_key_file`: a parsed key round-trips through its file text, its `Debug` does not show
//!   it, and an error never depends on (so never quotes) the key line.
#![allow(dead_code)]

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use blockvault_core::envelope::MAX_RAW_LEN;
use blockvault_core::format::{
    contexts, ENVELOPE_FLAG_AES_GCM, ENVELOPE_FLAG_ZSTD, ENVELOPE_HEADER_LEN, ENVELOPE_VERSION,
    MANIFEST_BLOCK_ENTRIES, MASTER_KEY_HEADER, NONCE_LEN, TAG_LEN, WRAPPED_KEY_VERSION,
};
use blockvault_core::keys::{ChunkKeys, DomainIdKey};
use blockvault_core::manifest::Coverage;
use blockvault_core::{
    BackupRecord, ChunkId, Compression, DataKey, EnvelopeCodec, ManifestBlock, ManifestEntry,
    MasterKey, VolumeId, WrappedKey,
};

use crate::harness::{fnv, hex, outcome, Kind, Notes, Target};

/// The targets, by corpus directory name.
pub const TARGETS: [&str; 6] = [
    "envelope",
    "envelope_sealed",
    "manifest_block",
    "backup_record",
    "wrapped_key",
    "master_key_file",
];

// ----------------------------------------------------------------------------- fixture keys

/// The fuzz-only master key (not a secret: it protects nothing but the corpus).
pub const MASTER_RAW: [u8; 32] = *b"blockvault fuzz-only master key!";
/// The fuzz-only data key of `FIXTURE_VOLUME`.
pub const DATA_RAW: [u8; 32] = *b"blockvault fuzz-only data key  !";
pub const FIXTURE_VOLUME: &str = "fuzz-volume";
pub const FIXTURE_KEY_ID: u128 = 0x6a1d_7c0e_3b5f_4e8a_9d21_0c4b_7f36_e215;
pub const FIXTURE_NONCE: [u8; NONCE_LEN] = *b"fuzz nonce!!";
pub const FIXTURE_DOMAIN: &str = "fuzz-project";

/// The fixture master key file.
pub fn master_key_text() -> String {
    format!("{MASTER_KEY_HEADER}\n{}\n", hex(&MASTER_RAW))
}

/// The fixture data key wrapped as FORMAT.md says (written here independently of `keys.rs`).
pub fn fixture_wrapped() -> WrappedKey {
    let wrap = blake3::derive_key(contexts::WRAP_KEY, &MASTER_RAW);
    let key_id = uuid::Uuid::from_u128(FIXTURE_KEY_ID);
    let mut aad = vec![WRAPPED_KEY_VERSION];
    aad.extend_from_slice(key_id.as_bytes());
    aad.extend_from_slice(FIXTURE_VOLUME.as_bytes());
    let mut buf = DATA_RAW.to_vec();
    let tag = Aes256Gcm::new((&wrap).into())
        .encrypt_inout_detached(&Nonce::from(FIXTURE_NONCE), &aad, buf.as_mut_slice().into())
        .expect("encrypt 32 bytes");
    buf.extend_from_slice(&tag);
    WrappedKey {
        key_id,
        nonce: FIXTURE_NONCE,
        sealed: buf,
    }
}

/// Keys every check uses.
pub struct Fixture {
    pub master: MasterKey,
    pub volume: VolumeId,
    pub other_volume: VolumeId,
    /// The fixture data key, obtained through the public unwrap path.
    pub dk: DataKey,
    /// Another data key.
    pub wrong: DataKey,
    /// The id key of dedup domain `FIXTURE_DOMAIN`, and of another domain.
    pub domain: DomainIdKey,
    pub other_domain: DomainIdKey,
    /// The AES-256-GCM key of `dk`'s chunks (FORMAT.md, "Chunk id").
    pub cipher: Aes256Gcm,
    /// `fixture_wrapped().encode()`.
    pub genuine_wrapped: Vec<u8>,
}

impl Fixture {
    pub fn new() -> Self {
        let master = MasterKey::parse(&master_key_text()).expect("fixture master key parses");
        let volume = VolumeId::new(FIXTURE_VOLUME).expect("valid volume id");
        let dk = master
            .unwrap(&volume, &fixture_wrapped())
            .expect("the fixture wrapped key unwraps (FORMAT.md and keys.rs agree)");
        let k = blake3::derive_key(contexts::CHUNK_AEAD_KEY, &DATA_RAW);
        let domain = master.dedup_domain_id_key(FIXTURE_DOMAIN);
        let other_domain = master.dedup_domain_id_key("other-project");
        Fixture {
            master,
            volume,
            other_volume: VolumeId::new("other-volume").expect("valid volume id"),
            dk,
            wrong: DataKey::generate(),
            domain,
            other_domain,
            cipher: Aes256Gcm::new((&k).into()),
            genuine_wrapped: fixture_wrapped().encode(),
        }
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

// ------------------------------------------------------------------ reference envelope decoder

fn envelope_aad(header: &[u8], id: &ChunkId) -> Vec<u8> {
    let mut a = header.to_vec();
    a.extend_from_slice(id.as_bytes());
    a
}

/// The plaintext of a header and (decrypted) payload, before the id check.
pub fn ref_payload(header: &[u8], payload: &[u8]) -> Result<Vec<u8>, String> {
    if header[0] != ENVELOPE_VERSION {
        return Err("version".into());
    }
    let flags = header[1];
    if flags & !(ENVELOPE_FLAG_ZSTD | ENVELOPE_FLAG_AES_GCM) != 0 {
        return Err("flags".into());
    }
    let raw_len = u32::from_le_bytes(header[2..6].try_into().unwrap()) as usize;
    if raw_len > MAX_RAW_LEN {
        return Err("raw_len".into());
    }
    let plain = if flags & ENVELOPE_FLAG_ZSTD != 0 {
        zstd::bulk::Decompressor::new()
            .unwrap()
            .decompress(payload, raw_len)
            .map_err(|e| format!("zstd {e}"))?
    } else {
        payload.to_vec()
    };
    if plain.len() != raw_len {
        return Err("length".into());
    }
    Ok(plain)
}

/// Opens an envelope as FORMAT.md describes it. `cipher` is the chunk key of
/// `keys.data_key()` (the reference does not derive it from a `DataKey`).
pub fn ref_open(
    id: &ChunkId,
    env: &[u8],
    keys: ChunkKeys<'_>,
    cipher: &Aes256Gcm,
) -> Result<Vec<u8>, String> {
    if env.len() < ENVELOPE_HEADER_LEN {
        return Err("short".into());
    }
    let header = &env[..ENVELOPE_HEADER_LEN];
    let plain = if env[1] & ENVELOPE_FLAG_AES_GCM == 0 {
        if keys.data_key().is_some() {
            return Err("plain chunk with a key".into());
        }
        ref_payload(header, &env[ENVELOPE_HEADER_LEN..])?
    } else {
        if keys.data_key().is_none() {
            return Err("encrypted chunk without a key".into());
        }
        if env.len() < ENVELOPE_HEADER_LEN + NONCE_LEN + TAG_LEN {
            return Err("encrypted too short".into());
        }
        let body = ENVELOPE_HEADER_LEN + NONCE_LEN;
        let tag_at = env.len() - TAG_LEN;
        let mut ct = env[body..tag_at].to_vec();
        let nonce: [u8; NONCE_LEN] = env[ENVELOPE_HEADER_LEN..body].try_into().unwrap();
        let tag = aes_gcm::Tag::try_from(&env[tag_at..]).unwrap();
        cipher
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &envelope_aad(header, id),
                ct.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| "auth".to_string())?;
        ref_payload(header, &ct)?
    };
    if keys.chunk_id(&plain) != *id {
        return Err("id".into());
    }
    Ok(plain)
}

pub fn codecs() -> [EnvelopeCodec; 3] {
    [
        EnvelopeCodec {
            compression: Compression::None,
        },
        EnvelopeCodec {
            compression: Compression::Zstd { level: 1 },
        },
        EnvelopeCodec {
            compression: Compression::Zstd { level: -5 },
        },
    ]
}

fn lens<E>(r: &Result<Vec<u8>, E>) -> Result<usize, ()> {
    r.as_ref().map(Vec::len).map_err(|_| ())
}

/// Opens `env` under `keys` every way the public API allows and compares with the reference.
/// `cipher` is the chunk key of `keys.data_key()`, if any.
fn open_all_ways(
    id: &ChunkId,
    env: &[u8],
    keys: ChunkKeys<'_>,
    cipher: &Aes256Gcm,
    what: &str,
) -> String {
    let want = ref_open(id, env, keys, cipher);
    let got = EnvelopeCodec::open_with(id, env, keys);
    let mut copy = env.to_vec();
    let got_in_place = EnvelopeCodec::open_in_place_with(id, &mut copy, keys);
    match (&want, &got) {
        (Ok(w), Ok(g)) => assert_eq!(w, g, "{what}: open and the reference disagree"),
        (Err(_), Err(_)) => {}
        _ => panic!(
            "{what}: open and the reference disagree: reference {:?} ({:?}), open {:?}",
            lens(&want),
            want.as_ref().err(),
            got.as_ref().map(Vec::len).map_err(|e| e.to_string()),
        ),
    }
    match (&got, &got_in_place) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}: open and open_in_place disagree"),
        (Err(_), Err(_)) => {}
        _ => panic!(
            "{what}: open and open_in_place disagree: {:?} vs {:?}",
            lens(&got),
            lens(&got_in_place)
        ),
    }
    if !matches!(keys, ChunkKeys::Domain(_)) {
        // The Option<&DataKey> entry points are the same thing.
        let old = EnvelopeCodec::open(id, env, keys.data_key());
        let mut copy = env.to_vec();
        let old_in_place = EnvelopeCodec::open_in_place(id, &mut copy, keys.data_key());
        assert_eq!(
            lens(&old),
            lens(&got),
            "{what}: open and open_with disagree"
        );
        assert_eq!(
            lens(&old_in_place),
            lens(&got),
            "{what}: open_in_place and open_in_place_with disagree"
        );
    }
    if let Ok(plain) = &got {
        for c in codecs() {
            let sealed = c.seal(id, plain, keys.data_key());
            let back =
                EnvelopeCodec::open_with(id, &sealed, keys).expect("a re-sealed chunk opens");
            assert_eq!(&back, plain, "{what}: re-sealed chunk differs");
        }
        let mut other = *id;
        other.0[0] ^= 1;
        assert!(
            EnvelopeCodec::open_with(&other, env, keys).is_err(),
            "{what}: an envelope opened under another id"
        );
    }
    outcome(what, &got, |p| format!("{}", p.len().min(2)))
}

/// Splits an `envelope` input into its chunk id (zero-padded) and envelope.
pub fn split_id(input: &[u8]) -> (ChunkId, &[u8]) {
    let mut id = [0u8; 32];
    let n = input.len().min(32);
    id[..n].copy_from_slice(&input[..n]);
    (ChunkId(id), &input[n..])
}

/// The envelope an `envelope_sealed` input stands for, with the id it must open under.
pub fn seal_input(fx: &Fixture, input: &[u8]) -> (ChunkId, Vec<u8>) {
    let mut header = [0u8; ENVELOPE_HEADER_LEN];
    let n = input.len().min(ENVELOPE_HEADER_LEN);
    header[..n].copy_from_slice(&input[..n]);
    header[1] |= ENVELOPE_FLAG_AES_GCM;
    let payload = &input[n..];
    let id = match ref_payload(&header, payload) {
        Ok(plain) => ChunkKeys::Encrypted(&fx.dk).chunk_id(&plain),
        Err(_) => ChunkId([0x42; 32]),
    };
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&fnv(input).to_le_bytes());
    let mut env = header.to_vec();
    env.extend_from_slice(&nonce);
    let mut ct = payload.to_vec();
    let tag = fx
        .cipher
        .encrypt_inout_detached(
            &Nonce::from(nonce),
            &envelope_aad(&header, &id),
            ct.as_mut_slice().into(),
        )
        .expect("encrypt");
    env.extend_from_slice(&ct);
    env.extend_from_slice(&tag);
    (id, env)
}

// -------------------------------------------------------------------------------- the checks

pub fn check_envelope(fx: &Fixture, input: &[u8], _notes: &mut Notes) -> String {
    let (id, env) = split_id(input);
    let plain = ChunkKeys::Plain;
    let domain = ChunkKeys::Domain(&fx.domain);
    let mut sig = open_all_ways(&id, env, plain, &fx.cipher, "plain");
    sig += &open_all_ways(&id, env, domain, &fx.cipher, "|domain");
    sig += &open_all_ways(&id, env, ChunkKeys::Encrypted(&fx.dk), &fx.cipher, "|keyed");
    assert!(
        EnvelopeCodec::open_with(&id, env, ChunkKeys::Encrypted(&fx.wrong)).is_err(),
        "an envelope opened with a wrong data key"
    );
    // A plain envelope whose payload decodes: also try the ids of that payload, so that mutated
    // envelopes can open (and go through the round trip), and check the domains stay apart.
    if env.len() >= ENVELOPE_HEADER_LEN && env[1] & ENVELOPE_FLAG_AES_GCM == 0 {
        if let Ok(p) = ref_payload(&env[..ENVELOPE_HEADER_LEN], &env[ENVELOPE_HEADER_LEN..]) {
            let plain_id = plain.chunk_id(&p);
            let domain_id = domain.chunk_id(&p);
            sig += &open_all_ways(&plain_id, env, plain, &fx.cipher, "|plain-own-id");
            sig += &open_all_ways(&domain_id, env, domain, &fx.cipher, "|domain-own-id");
            assert!(
                EnvelopeCodec::open_with(&plain_id, env, domain).is_err()
                    && EnvelopeCodec::open_with(&domain_id, env, plain).is_err()
                    && EnvelopeCodec::open_with(
                        &domain_id,
                        env,
                        ChunkKeys::Domain(&fx.other_domain)
                    )
                    .is_err(),
                "a chunk opened outside its dedup domain"
            );
        }
    }
    sig
}

pub fn check_envelope_sealed(fx: &Fixture, input: &[u8], _notes: &mut Notes) -> String {
    let (id, env) = seal_input(fx, input);
    let sig = open_all_ways(
        &id,
        &env,
        ChunkKeys::Encrypted(&fx.dk),
        &fx.cipher,
        "sealed",
    );
    assert!(
        EnvelopeCodec::open(&id, &env, None).is_err(),
        "an encrypted envelope opened without a key"
    );
    sig
}

fn bucket(n: usize) -> u32 {
    usize::BITS - n.leading_zeros()
}

pub fn check_manifest_block(_fx: &Fixture, input: &[u8], notes: &mut Notes) -> String {
    let r = ManifestBlock::decode(input);
    if let Ok(b) = &r {
        let enc = b.encode();
        let back = ManifestBlock::decode(&enc).expect("a re-encoded block decodes");
        assert_eq!(&back, b, "decode -> encode -> decode changed the block");
        if enc != input {
            notes.soft("accepts a non-canonical encoding (overlong varints)");
        }
        let mut end = Some(b.start);
        for e in &b.entries {
            end = end.and_then(|x| x.checked_add(e.len()));
        }
        if end.is_none() {
            notes.soft("decodes a block that ends past u64::MAX (Coverage must refuse it)");
        }
        // The restore-side walk: a first block must start at 0 and its entries must fit the
        // backup's size; it refuses (never wraps, never panics) otherwise.
        for size in [u64::MAX, end.unwrap_or(u64::MAX), b.start.saturating_add(1)] {
            let mut c = Coverage::new(size);
            let ok = c.block(b).is_ok();
            assert_eq!(
                ok,
                b.start == 0,
                "Coverage::block of a first block starting at {}",
                b.start
            );
            if !ok {
                continue;
            }
            let mut at = Some(0u64);
            for e in &b.entries {
                match c.entry(e) {
                    Ok(off) => {
                        assert_eq!(Some(off), at, "Coverage::entry offset");
                        at = at.and_then(|a| a.checked_add(e.len()));
                        assert!(
                            at.is_some_and(|a| a <= size),
                            "Coverage accepted an overflow"
                        );
                    }
                    Err(_) => {
                        let fits = at
                            .and_then(|a| a.checked_add(e.len()))
                            .is_some_and(|x| x <= size);
                        assert!(!fits, "Coverage refused an entry that fits");
                        at = None;
                        break;
                    }
                }
            }
            if let Some(a) = at {
                assert_eq!(c.offset(), a);
                assert_eq!(c.finish().is_ok(), a == size, "Coverage::finish");
            }
        }
        if b.entries.len() > MANIFEST_BLOCK_ENTRIES {
            notes.soft("accepts more entries than a block of this version holds");
        }
    }
    outcome("manifest", &r, |b| {
        let holes = b
            .entries
            .iter()
            .filter(|e| matches!(e, ManifestEntry::Hole { .. }))
            .count();
        format!("{}:{}", bucket(b.entries.len()), bucket(holes))
    })
}

pub fn check_backup_record(_fx: &Fixture, input: &[u8], _notes: &mut Notes) -> String {
    let r = BackupRecord::decode(input);
    if let Ok(rec) = &r {
        let enc = rec.encode();
        let back = BackupRecord::decode(&enc).expect("a re-encoded record decodes");
        assert_eq!(&back, rec, "decode -> encode -> decode changed the record");
        assert_eq!(back.encode(), enc, "encoding is not stable");
    }
    outcome("record", &r, |r| {
        format!(
            "{}:{}:{}:{}:{}",
            r.state.as_str(),
            r.encrypted,
            r.parent_id.is_some(),
            r.completed_at.is_some(),
            r.fail_reason.is_some()
        )
    })
}

pub fn check_wrapped_key(fx: &Fixture, input: &[u8], _notes: &mut Notes) -> String {
    let r = WrappedKey::decode(input);
    let mut unwrapped = false;
    if let Ok(w) = &r {
        assert_eq!(w.encode(), input, "decode -> encode changed the bytes");
        if let Ok(k) = fx.master.unwrap(&fx.volume, w) {
            // Only genuine wraps of the fixture data key authenticate.
            let probe = |k: &DataKey| ChunkKeys::Encrypted(k).chunk_id(b"probe");
            assert!(
                k.key_id() == fx.dk.key_id() && probe(&k) == probe(&fx.dk),
                "a forged wrapped key unwrapped"
            );
            unwrapped = true;
        }
        assert!(
            fx.master.unwrap(&fx.other_volume, w).is_err(),
            "a wrapped key unwrapped for another volume"
        );
    }
    outcome("wrapped", &r, |_| unwrapped.to_string())
}

pub fn check_master_key_file(_fx: &Fixture, input: &[u8], _notes: &mut Notes) -> String {
    let text = String::from_utf8_lossy(input);
    let r = MasterKey::parse(&text);
    match &r {
        Ok(m) => {
            let file = m.to_file_contents();
            let back = MasterKey::parse(&file).expect("a written key file parses");
            assert_eq!(back.fingerprint(), m.fingerprint(), "key file round trip");
            let key_hex = file.lines().nth(1).unwrap().to_string();
            assert!(
                !format!("{m:?}").contains(&key_hex),
                "Debug of a master key shows the key"
            );
        }
        Err(e) => {
            // The error must not depend on the key line's content: replace it with same-length
            // junk and compare.
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= 2 && !lines[1].trim().is_empty() {
                lines[1] = "Z".repeat(lines[1].len());
                if let Err(e2) = MasterKey::parse(&lines.join("\n")) {
                    assert_eq!(
                        e.to_string(),
                        e2.to_string(),
                        "a key file error depends on (quotes?) the key line"
                    );
                }
            }
        }
    }
    outcome("masterkey", &r, |_| String::new())
}

/// The check of a target, by name.
pub fn check(name: &str) -> fn(&Fixture, &[u8], &mut Notes) -> String {
    match name {
        "envelope" => check_envelope,
        "envelope_sealed" => check_envelope_sealed,
        "manifest_block" => check_manifest_block,
        "backup_record" => check_backup_record,
        "wrapped_key" => check_wrapped_key,
        "master_key_file" => check_master_key_file,
        _ => panic!("no core fuzz target {name}"),
    }
}

/// Is a seed named `ok-*` of `target` (still) accepted by its decoder?
pub fn accept(fx: &Fixture, target: &str, seed: &[u8]) -> Result<(), String> {
    let e = |r: Result<(), blockvault_core::Error>| r.map_err(|e| e.to_string());
    match target {
        "envelope" => {
            let (id, env) = split_id(seed);
            let all = [
                ChunkKeys::Plain,
                ChunkKeys::Domain(&fx.domain),
                ChunkKeys::Encrypted(&fx.dk),
            ];
            let opened = all
                .into_iter()
                .any(|k| EnvelopeCodec::open_with(&id, env, k).is_ok());
            opened
                .then_some(())
                .ok_or_else(|| "opens with none of the fixture keys".to_string())
        }
        "envelope_sealed" => {
            let (id, env) = seal_input(fx, seed);
            e(EnvelopeCodec::open(&id, &env, Some(&fx.dk)).map(|_| ()))
        }
        "manifest_block" => e(ManifestBlock::decode(seed).map(|_| ())),
        "backup_record" => e(BackupRecord::decode(seed).map(|_| ())),
        "wrapped_key" => e(WrappedKey::decode(seed).map(|_| ())),
        "master_key_file" => e(MasterKey::parse(&String::from_utf8_lossy(seed)).map(|_| ())),
        _ => Err(format!("no core fuzz target {target}")),
    }
}

fn strs(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// The `cargo test` fuzz target `name` over `fx`: its check, input kind and dictionary.
pub fn target<'a>(name: &'static str, fx: &'a Fixture) -> Target<'a> {
    let f = check(name);
    let kind = match name {
        "backup_record" | "master_key_file" => Kind::Text,
        _ => Kind::Binary,
    };
    let mut t = Target::new(name, kind, move |input, notes| f(fx, input, notes));
    let envelope_dict = vec![
        vec![ENVELOPE_VERSION, 0],
        vec![ENVELOPE_VERSION, ENVELOPE_FLAG_ZSTD],
        vec![ENVELOPE_VERSION, ENVELOPE_FLAG_AES_GCM],
        vec![ENVELOPE_VERSION, ENVELOPE_FLAG_AES_GCM | ENVELOPE_FLAG_ZSTD],
        vec![0x28, 0xb5, 0x2f, 0xfd],
        vec![0x50, 0x2a, 0x4d, 0x18],
    ];
    match name {
        "envelope" | "envelope_sealed" => {
            t.max_len = 1 << 18;
            t.ints = vec![MAX_RAW_LEN as u64, MAX_RAW_LEN as u64 + 1, 0xfd2fb528];
            t.dict = envelope_dict;
        }
        "manifest_block" => {
            t.max_len = 1 << 18;
            t.leb128 = true;
            t.ints = vec![
                MAX_RAW_LEN as u64,
                MAX_RAW_LEN as u64 + 1,
                MANIFEST_BLOCK_ENTRIES as u64,
                MANIFEST_BLOCK_ENTRIES as u64 * 4,
                MANIFEST_BLOCK_ENTRIES as u64 * 4 + 1,
            ];
            t.dict = vec![
                vec![0x01],
                vec![0x02],
                vec![0x80, 0x80, 0x80],
                vec![0xff; 10],
            ];
        }
        "backup_record" => {
            t.max_len = 1 << 14;
            t.dict = strs(&[
                "\"in_progress\"",
                "\"available\"",
                "\"error\"",
                "\"deleting\"",
                "\"1970-01-01T00:00:00Z\"",
                "\"9999-12-31T23:59:59.999999999-23:59\"",
                "\"0000-01-01T00:00:00+23:59\"",
                "\"2026-02-30T00:00:00Z\"",
                "\"2026-12-31T23:59:60Z\"",
                "\"00000000-0000-0000-0000-000000000000\"",
                "\"ffffffff-ffff-ffff-ffff-ffffffffffff\"",
                "\"{6a1d7c0e-3b5f-4e8a-9d21-0c4b7f36e215}\"",
                "\"urn:uuid:6a1d7c0e-3b5f-4e8a-9d21-0c4b7f36e215\"",
                "\"a/b\"",
                "\"\"",
            ]);
        }
        "wrapped_key" => t.max_len = 256,
        "master_key_file" => {
            t.max_len = 4096;
            t.dict = vec![
                MASTER_KEY_HEADER.as_bytes().to_vec(),
                hex(&MASTER_RAW).into_bytes(),
                b"\r\n".to_vec(),
                b"\xc2\xa0".to_vec(),
            ];
        }
        _ => {}
    }
    t
}
