//! The chunk envelope: how one chunk's bytes are stored.
//!
//! ```text
//! version u8 | flags u8 | raw_len u32 LE | [nonce 12] | payload | [tag 16]
//! ```
//! `flags` bit 0: payload is zstd; bit 1: AES-256-GCM (nonce after the header, tag at the end).
//! The associated data of the AEAD is the 6-byte header followed by the chunk id, so an envelope
//! cannot be moved to another id or have its flags altered unnoticed. Opening an envelope always
//! re-derives the chunk id from the plaintext and compares it: a mismatch is
//! [`Error::CorruptChunk`], never data.
use std::cell::RefCell;

use aes_gcm::aead::AeadInOut;
use aes_gcm::Nonce;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{
    ENVELOPE_FLAG_AES_GCM, ENVELOPE_FLAG_ZSTD, ENVELOPE_HEADER_LEN, ENVELOPE_VERSION, NONCE_LEN,
    TAG_LEN,
};
use crate::id::ChunkId;
use crate::keys::{ChunkKeys, DataKey};

/// Largest plaintext an envelope may carry (FastCDC's largest maximum chunk size).
pub const MAX_RAW_LEN: usize = 16 << 20;

/// Compression setting of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "algorithm", deny_unknown_fields)]
pub enum Compression {
    /// Store chunks raw.
    None,
    /// zstd at the given level (negative levels are zstd's fast modes).
    Zstd { level: i32 },
}

impl Default for Compression {
    /// zstd level 1, chosen by measurement (see ARCHITECTURE.md, "Compression level").
    fn default() -> Self {
        Compression::Zstd { level: 1 }
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Compresses `src` with a per-thread context into a per-thread scratch buffer and hands the
/// result to `f` (no zero-filling of the output buffer, no allocation per chunk).
fn zstd_compress<T>(level: i32, src: &[u8], f: impl FnOnce(&[u8]) -> T) -> std::io::Result<T> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            s.reserve(zstd::zstd_safe::compress_bound(src.len()));
            c.as_mut()
                .expect("set above")
                .1
                .compress_to_buffer(src, &mut *s)?;
            Ok(f(&s))
        })
    })
}

fn zstd_decompress(src: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        let mut out = Vec::with_capacity(raw_len);
        d.as_mut()
            .expect("set above")
            .decompress_to_buffer(src, &mut out)?;
        Ok(out)
    })
}

/// Seals and opens chunk envelopes with one compression setting.
#[derive(Clone, Copy, Debug, Default)]
pub struct EnvelopeCodec {
    pub compression: Compression,
}

fn aad(header: &[u8], id: &ChunkId) -> [u8; ENVELOPE_HEADER_LEN + 32] {
    let mut a = [0u8; ENVELOPE_HEADER_LEN + 32];
    a[..ENVELOPE_HEADER_LEN].copy_from_slice(header);
    a[ENVELOPE_HEADER_LEN..].copy_from_slice(id.as_bytes());
    a
}

impl EnvelopeCodec {
    /// Seals `plain` (whose id is `id`) into an envelope, encrypted when `key` is given.
    /// A chunk that zstd does not shrink is stored raw.
    pub fn seal(&self, id: &ChunkId, plain: &[u8], key: Option<&DataKey>) -> Vec<u8> {
        assert!(plain.len() <= MAX_RAW_LEN, "chunk larger than MAX_RAW_LEN");
        let body = ENVELOPE_HEADER_LEN + if key.is_some() { NONCE_LEN } else { 0 };
        let mut flags = 0u8;
        let mut out = Vec::new();
        if let Compression::Zstd { level } = self.compression {
            let _ = zstd_compress(level, plain, |z| {
                if z.len() < plain.len() {
                    out.reserve_exact(body + z.len() + TAG_LEN);
                    out.resize(body, 0);
                    out.extend_from_slice(z);
                    flags |= ENVELOPE_FLAG_ZSTD;
                }
            });
        }
        if flags & ENVELOPE_FLAG_ZSTD == 0 {
            out.clear();
            out.reserve_exact(body + plain.len() + TAG_LEN);
            out.resize(body, 0);
            out.extend_from_slice(plain);
        }
        if key.is_some() {
            flags |= ENVELOPE_FLAG_AES_GCM;
        }
        out[0] = ENVELOPE_VERSION;
        out[1] = flags;
        out[2..6].copy_from_slice(&(plain.len() as u32).to_le_bytes());
        if let Some(k) = key {
            let mut nonce = [0u8; NONCE_LEN];
            rand::thread_rng().fill_bytes(&mut nonce);
            out[ENVELOPE_HEADER_LEN..body].copy_from_slice(&nonce);
            let a = aad(&out[..ENVELOPE_HEADER_LEN], id);
            let tag = k
                .cipher()
                .encrypt_inout_detached(&Nonce::from(nonce), &a, (&mut out[body..]).into())
                .expect("AES-GCM encryption of a bounded chunk cannot fail");
            out.extend_from_slice(&tag);
        }
        out
    }

    /// Opens an envelope and checks that its plaintext hashes to `id`.
    pub fn open(id: &ChunkId, env: &[u8], key: Option<&DataKey>) -> Result<Vec<u8>> {
        Self::open_with(id, env, key.into())
    }

    /// [`EnvelopeCodec::open`] for any [`ChunkKeys`] (dedup domains included).
    pub fn open_with(id: &ChunkId, env: &[u8], keys: ChunkKeys<'_>) -> Result<Vec<u8>> {
        if env.get(1).is_some_and(|f| f & ENVELOPE_FLAG_AES_GCM != 0) {
            Self::open_in_place_with(id, &mut env.to_vec(), keys)
        } else {
            Self::open_plain(id, env, keys)
        }
    }

    /// Like [`EnvelopeCodec::open`], but decrypts inside `env` (clobbering it) instead of
    /// copying the ciphertext first: the restore and verify hot path.
    pub fn open_in_place(id: &ChunkId, env: &mut [u8], key: Option<&DataKey>) -> Result<Vec<u8>> {
        Self::open_in_place_with(id, env, key.into())
    }

    /// [`EnvelopeCodec::open_in_place`] for any [`ChunkKeys`] (dedup domains included).
    pub fn open_in_place_with(
        id: &ChunkId,
        env: &mut [u8],
        keys: ChunkKeys<'_>,
    ) -> Result<Vec<u8>> {
        let bad = |detail: &str| Error::CorruptChunk {
            id: *id,
            detail: detail.to_string(),
        };
        if env.len() < ENVELOPE_HEADER_LEN || env[1] & ENVELOPE_FLAG_AES_GCM == 0 {
            return Self::open_plain(id, env, keys);
        }
        let k = keys
            .data_key()
            .ok_or_else(|| bad("chunk is encrypted but no data key was given"))?;
        let body = ENVELOPE_HEADER_LEN + NONCE_LEN;
        if env.len() < body + TAG_LEN {
            return Err(bad("encrypted envelope too short"));
        }
        let tag_at = env.len() - TAG_LEN;
        let (head, rest) = env.split_at_mut(body);
        let (ct, tag) = rest.split_at_mut(tag_at - body);
        k.cipher()
            .decrypt_inout_detached(
                &Nonce::try_from(&head[ENVELOPE_HEADER_LEN..])
                    .map_err(|_| bad("bad nonce length"))?,
                &aad(&head[..ENVELOPE_HEADER_LEN], id),
                ct.into(),
                &aes_gcm::Tag::try_from(&*tag).map_err(|_| bad("bad tag length"))?,
            )
            .map_err(|_| bad("AES-GCM authentication failed"))?;
        // Now a plaintext envelope: header, then payload (nonce and tag skipped).
        Self::decode_payload(id, &head[..ENVELOPE_HEADER_LEN], ct, keys)
    }

    /// Opens an envelope without the AES-GCM flag.
    fn open_plain(id: &ChunkId, env: &[u8], keys: ChunkKeys<'_>) -> Result<Vec<u8>> {
        let bad = |detail: &str| Error::CorruptChunk {
            id: *id,
            detail: detail.to_string(),
        };
        if env.len() < ENVELOPE_HEADER_LEN {
            return Err(bad("envelope shorter than its header"));
        }
        if env[1] & ENVELOPE_FLAG_AES_GCM != 0 {
            return Err(bad("encrypted envelope opened as plain"));
        }
        if keys.data_key().is_some() {
            return Err(bad("chunk of an encrypted volume is not encrypted"));
        }
        Self::decode_payload(
            id,
            &env[..ENVELOPE_HEADER_LEN],
            &env[ENVELOPE_HEADER_LEN..],
            keys,
        )
    }

    /// Checks the header, decompresses the (decrypted) payload and verifies the id.
    fn decode_payload(
        id: &ChunkId,
        header: &[u8],
        payload: &[u8],
        keys: ChunkKeys<'_>,
    ) -> Result<Vec<u8>> {
        let bad = |detail: &str| Error::CorruptChunk {
            id: *id,
            detail: detail.to_string(),
        };
        if header[0] != ENVELOPE_VERSION {
            return Err(bad(&format!("unknown envelope version {}", header[0])));
        }
        let flags = header[1];
        if flags & !(ENVELOPE_FLAG_ZSTD | ENVELOPE_FLAG_AES_GCM) != 0 {
            return Err(bad(&format!("unknown envelope flags {flags:#04x}")));
        }
        let raw_len = u32::from_le_bytes(header[2..6].try_into().expect("4 bytes")) as usize;
        if raw_len > MAX_RAW_LEN {
            return Err(bad("raw length out of range"));
        }
        let plain = if flags & ENVELOPE_FLAG_ZSTD != 0 {
            zstd_decompress(payload, raw_len).map_err(|e| bad(&format!("zstd: {e}")))?
        } else {
            payload.to_vec()
        };
        if plain.len() != raw_len {
            return Err(bad(&format!(
                "decoded {} bytes, header says {raw_len}",
                plain.len()
            )));
        }
        if keys.chunk_id(&plain) != *id {
            return Err(bad("content does not match its BLAKE3 id"));
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{chunk_id, MasterKey};
    use proptest::prelude::*;

    fn codecs() -> [EnvelopeCodec; 3] {
        [
            EnvelopeCodec {
                compression: Compression::None,
            },
            EnvelopeCodec {
                compression: Compression::Zstd { level: 1 },
            },
            EnvelopeCodec {
                compression: Compression::Zstd { level: -3 },
            },
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn envelope_roundtrip(data in proptest::collection::vec(any::<u8>(), 0..20_000),
                              repeat in 1usize..4, encrypt in any::<bool>()) {
            let data: Vec<u8> = data.repeat(repeat);
            let key = encrypt.then(DataKey::generate);
            let id = chunk_id(&data, key.as_ref());
            for c in codecs() {
                let env = c.seal(&id, &data, key.as_ref());
                prop_assert_eq!(EnvelopeCodec::open(&id, &env, key.as_ref()).unwrap(), data.clone());
            }
        }

        #[test]
        fn any_flipped_byte_is_detected(data in proptest::collection::vec(any::<u8>(), 1..4000),
                                        pos in any::<usize>(), bit in 0u8..8, encrypt in any::<bool>()) {
            let key = encrypt.then(DataKey::generate);
            let id = chunk_id(&data, key.as_ref());
            let mut env = codecs()[1].seal(&id, &data, key.as_ref());
            let p = pos % env.len();
            env[p] ^= 1 << bit;
            prop_assert!(EnvelopeCodec::open(&id, &env, key.as_ref()).is_err());
        }
    }

    #[test]
    fn incompressible_is_stored_raw_and_compressible_is_not() {
        let c = EnvelopeCodec::default();
        let noise: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let id = chunk_id(&noise, None);
        let env = c.seal(&id, &noise, None);
        assert!(env.len() <= noise.len() + ENVELOPE_HEADER_LEN);
        let text = b"hello world ".repeat(4000);
        let id = chunk_id(&text, None);
        let env = c.seal(&id, &text, None);
        assert_eq!(env[1] & ENVELOPE_FLAG_ZSTD, ENVELOPE_FLAG_ZSTD);
        assert!(env.len() < text.len() / 10);
    }

    #[test]
    fn dedup_domain_chunks_open_only_in_their_domain() {
        let m = MasterKey::generate();
        let (p1, p2) = (m.dedup_domain_id_key("p1"), m.dedup_domain_id_key("p2"));
        let data = b"tenant data".repeat(100);
        let keys = ChunkKeys::Domain(&p1);
        let id = keys.chunk_id(&data);
        let env = EnvelopeCodec::default().seal(&id, &data, keys.data_key());
        assert_eq!(EnvelopeCodec::open_with(&id, &env, keys).unwrap(), data);
        let mut inplace = env.clone();
        assert_eq!(
            EnvelopeCodec::open_in_place_with(&id, &mut inplace, keys).unwrap(),
            data
        );
        assert!(EnvelopeCodec::open_with(&id, &env, ChunkKeys::Domain(&p2)).is_err());
        assert!(EnvelopeCodec::open(&id, &env, None).is_err());
    }

    #[test]
    fn wrong_key_and_wrong_id_are_refused() {
        let k1 = DataKey::generate();
        let k2 = DataKey::generate();
        let data = b"secret data".repeat(100);
        let id = chunk_id(&data, Some(&k1));
        let env = EnvelopeCodec::default().seal(&id, &data, Some(&k1));
        assert!(EnvelopeCodec::open(&id, &env, Some(&k2)).is_err());
        assert!(EnvelopeCodec::open(&id, &env, None).is_err());
        let other = chunk_id(b"x", Some(&k1));
        assert!(EnvelopeCodec::open(&other, &env, Some(&k1)).is_err());
    }
}
