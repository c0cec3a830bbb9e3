//! blockvault-core: the pure domain of the backup engine.
//!
//! Everything here is synchronous, allocation-conscious and free of I/O policy: no tokio, no
//! tonic, no RocksDB. This is where a volume's bytes are *cut* into content-defined chunks
//! ([`chunker`]), *named* by BLAKE3 ([`id`]), *sealed* into a compressed, optionally encrypted
//! envelope ([`envelope`], [`keys`]) and *listed* in a streamable manifest ([`manifest`]). The
//! backup record ([`record`]) and every magic number and format version ([`format`]) are frozen
//! here so that the store, the engine and (later) the control plane agree on one definition.
//!
//! Invariants held by this crate:
//! - A [`ChunkId`] is BLAKE3 of the plaintext, keyed for encrypted volumes and for dedup
//!   domains ([`ChunkKeys`]); decoding an envelope always re-derives and checks it, so corrupt
//!   bytes surface as [`Error::Corrupt`], never as silently wrong data.
//! - Bytes from disk are untrusted: every decoder bounds-checks and returns an error, never panics.
//! - Key material is zeroized on drop and never printed (`Debug` is redacted).

pub mod chunker;
pub mod clock;
pub mod envelope;
pub mod error;
pub mod extents;
pub mod format;
pub mod id;
pub mod keys;
pub mod manifest;
pub mod record;
pub mod varint;

pub use chunker::{Chunker, ChunkerParams};
pub use clock::unix_now;
pub use envelope::{Compression, EnvelopeCodec};
pub use error::{Error, Result};
pub use id::{BackupId, ChunkId, PackId, VolumeId};
pub use keys::{CatalogKey, ChunkKeys, DataKey, DomainIdKey, MasterKey, WrappedKey};
pub use manifest::{ManifestBlock, ManifestEntry};
pub use record::{BackupRecord, BackupState, CbtStats};
