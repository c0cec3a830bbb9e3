//! Master keys, per-volume data keys, key wrapping and keyed chunk ids.
//!
//! - The **master key** (32 random bytes) lives in a key file outside the store. Only its
//!   fingerprint (a BLAKE3 derivation, not the key) is kept in the store, so a wrong key is
//!   refused before anything is read or written.
//! - Each encrypted volume has a **data key** (32 random bytes) wrapped with AES-256-GCM under a
//!   wrapping key derived from the master key; the volume id and the key's UUID
//!   (`encryption_key_id`) are bound in as associated data.
//! - From a data key two independent subkeys are derived: one keys BLAKE3 for chunk ids (so
//!   equal data in two encrypted volumes gets unrelated ids) and one is the AES-256-GCM chunk key.
//! - Unencrypted volumes share plain BLAKE3 ids unless they are backed up in a **dedup domain**
//!   (a project): then ids are keyed BLAKE3 under a [`DomainIdKey`] derived from the master key
//!   and the domain's name, so the store cannot tell whether two domains hold equal data.
//!   [`ChunkKeys`] says which of the three ways a backup's chunks are named and sealed.
//!
//! Key bytes are zeroized on drop and every `Debug` impl here is redacted.
use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::format::{contexts, MASTER_KEY_HEADER, NONCE_LEN, TAG_LEN, WRAPPED_KEY_VERSION};
use crate::id::{ChunkId, VolumeId};

/// The store-wide master key that wraps every volume's data key.
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(fingerprint {})", self.fingerprint())
    }
}

impl MasterKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut bytes[..]);
        MasterKey { bytes }
    }

    /// A public, non-reversible fingerprint (32 hex digits) recorded in the store's config.
    pub fn fingerprint(&self) -> String {
        let d = blake3::derive_key(contexts::MASTER_FINGERPRINT, &self.bytes[..]);
        hex::encode(&d[..16])
    }

    /// The key file's text: a header line and 64 hex digits.
    pub fn to_file_contents(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{MASTER_KEY_HEADER}\n{}\n",
            hex::encode(&self.bytes[..])
        ))
    }

    /// Parses a key file's text. Errors never quote the file's content.
    pub fn parse(contents: &str) -> Result<Self> {
        let mut lines = contents.lines();
        if lines.next().map(str::trim) != Some(MASTER_KEY_HEADER) {
            return Err(Error::WrongKey(format!(
                "not a blockvault key file (first line must be {MASTER_KEY_HEADER:?})"
            )));
        }
        let hex_line = Zeroizing::new(lines.next().unwrap_or("").trim().to_string());
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_line.as_bytes(), &mut bytes[..])
            .map_err(|_| Error::WrongKey("key file's second line must be 64 hex digits".into()))?;
        Ok(MasterKey { bytes })
    }

    /// The key that authenticates records this store's daemon exports (keyed BLAKE3 MACs), so a
    /// record can be checked only by a holder of the master key and forged by nobody else.
    pub fn record_mac_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(
            contexts::RECORD_MAC_KEY,
            &self.bytes[..],
        ))
    }

    /// The chunk id key of dedup domain `domain`: `BLAKE3.derive_key(DEDUP_DOMAIN_ID_KEY,
    /// master key ‖ domain)`. The master key has a fixed length, so the input is unambiguous.
    pub fn dedup_domain_id_key(&self, domain: &str) -> DomainIdKey {
        let mut h = blake3::Hasher::new_derive_key(contexts::DEDUP_DOMAIN_ID_KEY);
        h.update(&self.bytes[..]);
        h.update(domain.as_bytes());
        DomainIdKey {
            key: Zeroizing::new(*h.finalize().as_bytes()),
        }
    }

    /// The key of the store's catalog MACs (pack trailers, catalog objects in the bucket):
    /// `BLAKE3.derive_key(CATALOG_MAC_KEY, master key)`.
    pub fn catalog_key(&self) -> CatalogKey {
        CatalogKey {
            key: Zeroizing::new(blake3::derive_key(
                contexts::CATALOG_MAC_KEY,
                &self.bytes[..],
            )),
            authenticated: true,
        }
    }

    fn wrapping_cipher(&self) -> Aes256Gcm {
        let k = Zeroizing::new(blake3::derive_key(contexts::WRAP_KEY, &self.bytes[..]));
        Aes256Gcm::new((&*k).into())
    }

    fn wrap_aad(volume: &VolumeId, key_id: &uuid::Uuid) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64);
        aad.push(WRAPPED_KEY_VERSION);
        aad.extend_from_slice(key_id.as_bytes());
        aad.extend_from_slice(volume.as_str().as_bytes());
        aad
    }

    /// Wraps `key` for `volume`.
    pub fn wrap(&self, volume: &VolumeId, key: &DataKey) -> WrappedKey {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut buf = key.raw.to_vec();
        let tag = self
            .wrapping_cipher()
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &Self::wrap_aad(volume, &key.key_id),
                buf.as_mut_slice().into(),
            )
            .expect("AES-GCM encryption of 32 bytes cannot fail");
        buf.extend_from_slice(&tag);
        WrappedKey {
            key_id: key.key_id,
            nonce,
            sealed: buf,
        }
    }

    /// Unwraps `volume`'s data key. A wrong master key gives [`Error::WrongKey`].
    pub fn unwrap(&self, volume: &VolumeId, w: &WrappedKey) -> Result<DataKey> {
        if w.sealed.len() != 32 + TAG_LEN {
            return Err(Error::corrupt("wrapped key", "bad length"));
        }
        let mut buf = Zeroizing::new(w.sealed[..32].to_vec());
        let tag = aes_gcm::Tag::try_from(&w.sealed[32..])
            .map_err(|_| Error::corrupt("wrapped key", "bad tag length"))?;
        self.wrapping_cipher()
            .decrypt_inout_detached(
                &Nonce::from(w.nonce),
                &Self::wrap_aad(volume, &w.key_id),
                buf.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| {
                Error::WrongKey(format!(
                    "the master key cannot unwrap the data key of volume {volume}"
                ))
            })?;
        let mut raw = Zeroizing::new([0u8; 32]);
        raw.copy_from_slice(&buf);
        Ok(DataKey::from_raw(raw, w.key_id))
    }
}

/// A volume's data key, as stored: wrapped under the master key.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The volume's `encryption_key_id`.
    pub key_id: uuid::Uuid,
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext of the 32-byte key followed by the GCM tag.
    pub sealed: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({})", self.key_id)
    }
}

impl WrappedKey {
    /// Binary form: version(1) key_id(16) nonce(12) sealed(48).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + 16 + NONCE_LEN + self.sealed.len());
        v.push(WRAPPED_KEY_VERSION);
        v.extend_from_slice(self.key_id.as_bytes());
        v.extend_from_slice(&self.nonce);
        v.extend_from_slice(&self.sealed);
        v
    }
    /// Parses [`WrappedKey::encode`]'s output.
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != 1 + 16 + NONCE_LEN + 32 + TAG_LEN || b[0] != WRAPPED_KEY_VERSION {
            return Err(Error::corrupt("wrapped key", "bad length or version"));
        }
        Ok(WrappedKey {
            key_id: uuid::Uuid::from_slice(&b[1..17]).expect("16 bytes"),
            nonce: b[17..29].try_into().expect("12 bytes"),
            sealed: b[29..].to_vec(),
        })
    }
}

/// A volume's data key with its derived subkeys.
pub struct DataKey {
    raw: Zeroizing<[u8; 32]>,
    id_key: Zeroizing<[u8; 32]>,
    cipher: Aes256Gcm,
    key_id: uuid::Uuid,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey({})", self.key_id)
    }
}

impl DataKey {
    /// A fresh data key with a fresh `encryption_key_id`.
    pub fn generate() -> Self {
        let mut raw = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut raw[..]);
        Self::from_raw(raw, uuid::Uuid::new_v4())
    }

    fn from_raw(raw: Zeroizing<[u8; 32]>, key_id: uuid::Uuid) -> Self {
        let id_key = Zeroizing::new(blake3::derive_key(contexts::CHUNK_ID_KEY, &raw[..]));
        let aead = Zeroizing::new(blake3::derive_key(contexts::CHUNK_AEAD_KEY, &raw[..]));
        DataKey {
            raw,
            id_key,
            cipher: Aes256Gcm::new((&*aead).into()),
            key_id,
        }
    }

    /// The key's UUID, reported as the volume's `encryption_key_id`.
    pub fn key_id(&self) -> uuid::Uuid {
        self.key_id
    }

    pub(crate) fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}

/// The key of a store's catalog MACs: pack trailers and the catalog objects (config, wrapped
/// keys, manifests, records) that make a bucket self-describing.
///
/// A store with a master key uses [`MasterKey::catalog_key`]: only a holder of the master key
/// can write a catalog object that checks. A store without one has no secret, so its catalog is
/// checksummed under a key derived from the public store id ([`CatalogKey::unauthenticated`]):
/// that finds damage, not forgery.
#[derive(Clone)]
pub struct CatalogKey {
    key: Zeroizing<[u8; 32]>,
    authenticated: bool,
}

impl fmt::Debug for CatalogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CatalogKey(..)")
    }
}

impl CatalogKey {
    /// The checksum key of a store without a master key:
    /// `BLAKE3.derive_key(CATALOG_MAC_KEY, store id bytes)`.
    pub fn unauthenticated(store_id: &uuid::Uuid) -> Self {
        CatalogKey {
            key: Zeroizing::new(blake3::derive_key(
                contexts::CATALOG_MAC_KEY,
                store_id.as_bytes(),
            )),
            authenticated: false,
        }
    }

    /// True when derived from a master key.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Keyed BLAKE3 over `parts`, each prefixed by its length (u64 LE), so that no two lists of
    /// parts give the same input.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        *h.finalize().as_bytes()
    }

    /// Checks a MAC made by [`CatalogKey::mac`] in constant time.
    pub fn check(&self, parts: &[&[u8]], mac: &[u8]) -> bool {
        let want = blake3::Hash::from(self.mac(parts));
        <[u8; 32]>::try_from(mac).is_ok_and(|m| want == blake3::Hash::from(m))
    }
}

/// The chunk id key of one dedup domain of unencrypted volumes
/// ([`MasterKey::dedup_domain_id_key`]).
pub struct DomainIdKey {
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for DomainIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DomainIdKey(..)")
    }
}

/// How one backup's chunks are named (and, for encrypted volumes, sealed).
#[derive(Clone, Copy, Debug, Default)]
pub enum ChunkKeys<'a> {
    /// An unencrypted volume in the global dedup domain: plain BLAKE3 ids.
    #[default]
    Plain,
    /// An unencrypted volume in a dedup domain: BLAKE3 keyed by the domain's id key.
    Domain(&'a DomainIdKey),
    /// An encrypted volume: BLAKE3 keyed by the data key's id subkey; AES-256-GCM envelopes.
    Encrypted(&'a DataKey),
}

impl<'a> ChunkKeys<'a> {
    /// The chunk id of `data` under these keys.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        match self {
            ChunkKeys::Plain => ChunkId(*blake3::hash(data).as_bytes()),
            ChunkKeys::Domain(k) => ChunkId(*blake3::keyed_hash(&k.key, data).as_bytes()),
            ChunkKeys::Encrypted(k) => ChunkId(*blake3::keyed_hash(&k.id_key, data).as_bytes()),
        }
    }
    /// The data key envelopes are encrypted with, for encrypted volumes.
    pub fn data_key(&self) -> Option<&'a DataKey> {
        match self {
            ChunkKeys::Encrypted(k) => Some(k),
            ChunkKeys::Plain | ChunkKeys::Domain(_) => None,
        }
    }
}

impl<'a> From<Option<&'a DataKey>> for ChunkKeys<'a> {
    fn from(key: Option<&'a DataKey>) -> Self {
        key.map_or(ChunkKeys::Plain, ChunkKeys::Encrypted)
    }
}

/// The chunk id of `data`: plain BLAKE3, or keyed BLAKE3 under the volume's id subkey
/// (see [`ChunkKeys::chunk_id`] for dedup domains).
pub fn chunk_id(data: &[u8], key: Option<&DataKey>) -> ChunkId {
    ChunkKeys::from(key).chunk_id(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_wrong_key() {
        let m = MasterKey::generate();
        let v = VolumeId::new("vol1").unwrap();
        let dk = DataKey::generate();
        let w = WrappedKey::decode(&m.wrap(&v, &dk).encode()).unwrap();
        let back = m.unwrap(&v, &w).unwrap();
        assert_eq!(back.key_id(), dk.key_id());
        assert_eq!(chunk_id(b"abc", Some(&back)), chunk_id(b"abc", Some(&dk)));
        let other = MasterKey::generate();
        assert!(matches!(other.unwrap(&v, &w), Err(Error::WrongKey(_))));
        // The wrapped key is bound to its volume.
        let v2 = VolumeId::new("vol2").unwrap();
        assert!(m.unwrap(&v2, &w).is_err());
    }

    #[test]
    fn key_file_roundtrip_and_redaction() {
        let m = MasterKey::generate();
        let text = m.to_file_contents();
        let back = MasterKey::parse(&text).unwrap();
        assert_eq!(back.fingerprint(), m.fingerprint());
        let hex_key = text.lines().nth(1).unwrap().to_string();
        assert!(!format!("{m:?}").contains(&hex_key));
        let err = MasterKey::parse("garbage\nzz").unwrap_err().to_string();
        assert!(!err.contains("zz"));
    }

    #[test]
    fn dedup_domain_ids_depend_on_domain_and_master_key() {
        let m = MasterKey::generate();
        let (p1, p2) = (m.dedup_domain_id_key("p1"), m.dedup_domain_id_key("p2"));
        let id = |k: &DomainIdKey| ChunkKeys::Domain(k).chunk_id(b"same");
        assert_eq!(id(&p1), id(&m.dedup_domain_id_key("p1")));
        assert_ne!(id(&p1), id(&p2));
        assert_ne!(id(&p1), chunk_id(b"same", None));
        assert_ne!(
            id(&p1),
            id(&MasterKey::generate().dedup_domain_id_key("p1"))
        );
        // Frozen derivation: derive_key over master key ‖ domain.
        let mut material = m.bytes.to_vec();
        material.extend_from_slice(b"p1");
        let k = blake3::derive_key(contexts::DEDUP_DOMAIN_ID_KEY, &material);
        assert_eq!(id(&p1).0, *blake3::keyed_hash(&k, b"same").as_bytes());
        assert_eq!(format!("{p1:?}"), "DomainIdKey(..)");
        assert!(ChunkKeys::Domain(&p1).data_key().is_none());
    }

    #[test]
    fn keyed_ids_differ_between_volumes() {
        let a = DataKey::generate();
        let b = DataKey::generate();
        assert_ne!(chunk_id(b"same", Some(&a)), chunk_id(b"same", Some(&b)));
        assert_ne!(chunk_id(b"same", Some(&a)), chunk_id(b"same", None));
    }
}
