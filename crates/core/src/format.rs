//! Every on-disk magic number and format version, frozen in one place (see FORMAT.md).
//!
//! Changing a value here is a format change: bump the version, keep the reader of the old one.

/// First 8 bytes of a version 1 pack file (no trailer; still read).
pub const PACK_MAGIC_V1: [u8; 8] = *b"BVPACK\0\x01";
/// First 8 bytes of a version 2 pack file (entries, then an authenticated trailer).
pub const PACK_MAGIC: [u8; 8] = *b"BVPACK\0\x02";
/// Magic that opens a pack's trailer ("BVTR").
pub const PACK_TRAILER_MAGIC: [u8; 4] = *b"BVTR";
/// Last 8 bytes of a version 2 pack, after the trailer's offset (u64 LE).
pub const PACK_FOOTER_MAGIC: [u8; 8] = *b"BVPKEND2";
/// Length of a pack footer: trailer offset (8) + footer magic (8).
pub const PACK_FOOTER_LEN: u64 = 16;
/// Length of one trailer entry: chunk id (32) + entry offset u64 + envelope length u32 + raw
/// length u32.
pub const PACK_TRAILER_ENTRY_LEN: usize = 48;
/// First 8 bytes of every catalog object (config, key, manifest part, record).
pub const CATALOG_MAGIC: [u8; 8] = *b"BVCAT\0\0\x01";
/// Manifest blocks per catalog manifest part.
pub const CATALOG_MANIFEST_PART_BLOCKS: u32 = 64;
/// Pack file header length: magic + 16-byte pack id.
pub const PACK_HEADER_LEN: u64 = 24;
/// Magic that opens every chunk entry inside a pack ("BVCE").
pub const PACK_ENTRY_MAGIC: [u8; 4] = *b"BVCE";
/// Length of a pack entry header: magic(4) + chunk id(32) + envelope length(4).
pub const PACK_ENTRY_HEADER_LEN: u64 = 40;

/// Envelope format version (first byte of every envelope).
pub const ENVELOPE_VERSION: u8 = 1;
/// Envelope header length: version(1) + flags(1) + raw length(4).
pub const ENVELOPE_HEADER_LEN: usize = 6;
/// Envelope flag: payload is zstd-compressed.
pub const ENVELOPE_FLAG_ZSTD: u8 = 0b01;
/// Envelope flag: payload is AES-256-GCM sealed (12-byte nonce after the header, 16-byte tag at end).
pub const ENVELOPE_FLAG_AES_GCM: u8 = 0b10;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;

/// Manifest block format version (first byte of every manifest block).
pub const MANIFEST_BLOCK_VERSION: u8 = 1;
/// Number of entries per manifest block written by this version.
pub const MANIFEST_BLOCK_ENTRIES: usize = 4096;

/// Backup record format version (field `format` of the JSON record).
pub const RECORD_VERSION: u32 = 1;
/// Store config format version (field `format` of `store.json`).
pub const STORE_CONFIG_VERSION: u32 = 1;
/// Master key file: first line.
pub const MASTER_KEY_HEADER: &str = "blockvault-master-key-v1";
/// Wrapped data key format version.
pub const WRAPPED_KEY_VERSION: u8 = 1;

/// BLAKE3 derive_key contexts. Never change them: they define chunk ids and keys on disk.
pub mod contexts {
    pub const CHUNK_ID_KEY: &str = "blockvault 2026-11 chunk id key v1";
    pub const CHUNK_AEAD_KEY: &str = "blockvault 2026-11 chunk aes-256-gcm key v1";
    pub const MASTER_FINGERPRINT: &str = "blockvault 2026-11 master key fingerprint v1";
    pub const WRAP_KEY: &str = "blockvault 2026-11 data key wrapping key v1";
    pub const RECORD_MAC_KEY: &str = "blockvault 2026-12 exported record mac key v1";
    /// Keyed with the master key followed by the domain's UTF-8 bytes: the chunk id key of an
    /// unencrypted volume's backups in a dedup domain.
    pub const DEDUP_DOMAIN_ID_KEY: &str = "blockvault 2026-12 dedup domain id key v1";
    /// Keyed with the master key (or, in a store without one, the store id): pack trailer and
    /// catalog object MACs.
    pub const CATALOG_MAC_KEY: &str = "blockvault 2026-12 catalog mac key v1";
}
