//! blockvault-store: where chunks are kept.
//!
//! A store is a directory with three things in it:
//! - `store.json`: the store's config (chunker sizes, compression, key file, master key
//!   fingerprint), written once at `init` ([`StoreConfig`]);
//! - pack files, append-only, each holding many chunk envelopes, behind the narrow
//!   [`PackStorage`] trait: local files, an S3-compatible bucket ([`S3Packs`]), memory, and a
//!   fault-injecting wrapper for tests ([`FaultyPacks`]); `store.json` names the backend;
//! - `index/`: a RocksDB database with one column family per kind of fact: chunk locations,
//!   references, backup records, manifests, volume keys and sealed packs ([`Store`]).
//!
//! Durability order, relied on by every crash argument in ARCHITECTURE.md:
//! 1. chunk envelopes are appended to a pack, and the pack is fsynced (file and directory);
//! 2. only then does one index batch record the chunk locations and the sealed pack;
//! 3. a backup record becomes `available` last, in one synced batch with its final manifest block.
//!
//! The store also owns the *lifecycle lock* that makes dedup safe against a concurrent GC: see
//! [`Store::add_refs`] and [`Store::gc_delete_unreferenced`].

mod catalog;
mod config;
mod error;
mod faulty;
#[doc(hidden)]
pub mod fuzzing;
mod gc;
mod index;
mod pack;
mod recover;
mod retention;
mod s3;
mod s3_lock;
mod trailer;

pub use catalog::MAX_ANNOTATION;
pub use config::{Backend, StoreConfig, CONFIG_FILE};
pub use error::{Error, Result};
pub use faulty::{FaultCounts, Faults, FaultyPacks};
pub use gc::{GcOptions, GcReport};
pub use index::{ActiveGuard, ChunkLoc, PackInfo, RefBatch, Store, StoreStats};
pub use pack::{
    EntryBytes, LocalPacks, MemoryPacks, Object, ObjectLock, PackSink, PackStorage, PackWriter,
    RetentionMode,
};
pub use recover::{RecoverFrom, RecoverReport, RecoveredBackup};
pub use retention::RetainReport;
pub use s3::{
    RequestCounts, S3Packs, S3Settings, PARTS_IN_FLIGHT, PART_SIZE, STORE_PARTS_IN_FLIGHT,
};
pub use trailer::PackListing;
