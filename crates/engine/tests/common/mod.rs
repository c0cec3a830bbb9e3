//! Shared helpers for the engine's integration tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use blockvault_core::{BackupId, BackupRecord, VolumeId};
use blockvault_engine::{BackupOptions, Engine, EngineOptions, RestoreOptions};
use blockvault_store::StoreConfig;
use rand::{Rng, RngCore, SeedableRng};

/// A store in a temp dir, with a master key file beside it.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    engine: Option<Engine>,
}

impl TestStore {
    pub fn new() -> TestStore {
        Self::with_config(StoreConfig::default())
    }
    pub fn with_config(config: StoreConfig) -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let key = dir.path().join("master.key");
        Engine::init(&store, config, Some(&key)).unwrap();
        let engine = Some(Engine::open(&store, EngineOptions::default()).unwrap());
        TestStore { dir, engine }
    }
    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("engine open")
    }
    /// Closes the engine (RocksDB allows one opener per store).
    pub fn close(&mut self) {
        self.engine = None;
    }
    /// Opens the engine again, with `opts`.
    pub fn open(&mut self, opts: EngineOptions) -> blockvault_engine::Result<()> {
        self.engine = None;
        self.engine = Some(Engine::open(self.store_dir(), opts)?);
        Ok(())
    }
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("master.key")
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn backup(
        &self,
        volume: &str,
        src: &Path,
        incremental: bool,
        encrypt: bool,
    ) -> BackupRecord {
        let mut o = BackupOptions::new(VolumeId::new(volume).unwrap(), src);
        o.incremental = incremental;
        o.encrypt = encrypt;
        self.engine().backup(o).unwrap()
    }

    pub fn restore_bytes(&self, id: BackupId) -> Vec<u8> {
        let out = self.dir.path().join(format!("restore-{id}"));
        self.engine()
            .restore(RestoreOptions::new(id, &out))
            .unwrap();
        let data = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        data
    }

    /// Total bytes of pack files on disk.
    pub fn pack_bytes(&self) -> u64 {
        dir_bytes(&self.store_dir().join("packs"))
    }
}

pub fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let md = e.metadata().unwrap();
            n += if md.is_dir() {
                dir_bytes(&e.path())
            } else {
                md.len()
            };
        }
    }
    n
}

/// Every regular file under `p`.
pub fn all_files(p: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                v.extend(all_files(&e.path()));
            } else {
                v.push(e.path());
            }
        }
    }
    v
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Random, zero and compressible regions, like a real disk.
pub fn mixed_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = Vec::with_capacity(len);
    let text = b"the quick brown fox jumps over the lazy block device; ".repeat(64);
    while v.len() < len {
        let n = rng.gen_range(1..(512 << 10)).min(len - v.len());
        match rng.gen_range(0..3) {
            0 => {
                let s = v.len();
                v.resize(s + n, 0);
                rng.fill_bytes(&mut v[s..]);
            }
            1 => v.resize(v.len() + n, 0),
            _ => {
                for i in 0..n {
                    v.push(text[i % text.len()]);
                }
            }
        }
    }
    v
}

pub fn write_file(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap();
}
