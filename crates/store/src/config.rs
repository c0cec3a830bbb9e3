//! `store.json`: a store's fixed settings.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockvault_core::format::STORE_CONFIG_VERSION;
use blockvault_core::{ChunkerParams, Compression};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pack::{LocalPacks, PackStorage};
use crate::s3::{S3Packs, S3Settings};

/// File name of the config inside the store directory.
pub const CONFIG_FILE: &str = "store.json";

/// A store's settings, written once by `init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// [`STORE_CONFIG_VERSION`].
    pub format: u32,
    /// Random id of the store, for logs and exported records.
    pub store_id: uuid::Uuid,
    pub chunker: ChunkerParams,
    pub compression: Compression,
    /// Packs are sealed when they reach this many bytes.
    pub pack_target_size: u64,
    /// Where the master key file lives (absolute), if the store supports encryption.
    pub key_file: Option<PathBuf>,
    /// Fingerprint of the master key, checked before any encrypted operation.
    pub master_fingerprint: Option<String>,
    /// Where the packs live. Absent in the file means local (every store written before the
    /// field existed), so a local store's config is unchanged.
    #[serde(default, skip_serializing_if = "Backend::is_local")]
    pub backend: Backend,
}

/// A store's pack backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Backend {
    /// Pack files under `STORE/packs/`.
    #[default]
    Local,
    /// Objects in an S3-compatible bucket.
    S3(S3Settings),
}

impl Backend {
    /// True for the local backend.
    pub fn is_local(&self) -> bool {
        matches!(self, Backend::Local)
    }

    /// Opens the pack storage of a store in `dir`.
    pub(crate) fn open(&self, dir: &Path) -> Result<Arc<dyn PackStorage>> {
        match self {
            Backend::Local => Ok(Arc::new(LocalPacks::new(dir.join("packs"))?)),
            Backend::S3(s) => Ok(Arc::new(S3Packs::new(s.clone())?)),
        }
    }

    /// True when this backend already holds a store's catalog (for a local backend: in
    /// `dir/meta/`): a store to recover, not to create over.
    pub fn holds_store(&self, dir: &Path) -> Result<bool> {
        match self {
            Backend::Local => Ok(dir
                .join("meta")
                .join(crate::catalog::CONFIG_OBJECT)
                .exists()),
            Backend::S3(s) => S3Packs::new(s.clone())?
                .get_meta(crate::catalog::CONFIG_OBJECT)
                .map(|o| o.is_some())
                .map_err(|e| Error::Config(format!("S3 bucket {}: {e}", s.url()))),
        }
    }

    /// A description for messages: `local` or the bucket URL and endpoint.
    pub fn describe(&self) -> String {
        match self {
            Backend::Local => "local".into(),
            Backend::S3(s) => s.to_string(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            format: STORE_CONFIG_VERSION,
            store_id: uuid::Uuid::new_v4(),
            chunker: ChunkerParams::default(),
            compression: Compression::default(),
            pack_target_size: 64 << 20,
            key_file: None,
            master_fingerprint: None,
            backend: Backend::Local,
        }
    }
}

impl StoreConfig {
    /// Checks the values a user could have set.
    pub fn validate(&self) -> Result<()> {
        if self.format != STORE_CONFIG_VERSION {
            return Err(Error::Config(format!(
                "unsupported store format {}",
                self.format
            )));
        }
        self.chunker.validate()?;
        if let Compression::Zstd { level } = self.compression {
            if !(-7..=19).contains(&level) {
                return Err(Error::Config(format!(
                    "zstd level {level} is outside -7..=19"
                )));
            }
        }
        if let Backend::S3(s3) = &self.backend {
            s3.validate()?;
        }
        if !(1 << 20..=4 << 30).contains(&self.pack_target_size) {
            return Err(Error::Config(
                "pack_target_size must be 1 MiB to 4 GiB".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn load(dir: &Path) -> Result<Self> {
        let p = dir.join(CONFIG_FILE);
        let text = std::fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Config(format!(
                    "{} is not a blockvault store (no {CONFIG_FILE}; run `blockvault local init`)",
                    dir.display()
                ))
            } else {
                Error::io(&p, e)
            }
        })?;
        let c: StoreConfig = serde_json::from_slice(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
        c.validate()?;
        Ok(c)
    }

    /// Writes the config atomically (temp file, fsync, rename, fsync dir).
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let p = dir.join(CONFIG_FILE);
        let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
        let body = serde_json::to_vec_pretty(self).expect("config serializes");
        crate::pack::write_durably(&tmp, &body)?;
        std::fs::rename(&tmp, &p).map_err(|e| Error::io(&p, e))?;
        crate::pack::sync_dir(dir)
    }
}
