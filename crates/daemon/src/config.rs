//! The daemon's configuration: TOML, every key documented in `config/blockvaultd.toml`, which is
//! also the built-in default. Unknown keys are refused.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use blockvault_core::{ChunkerParams, Compression};
use serde::Deserialize;

/// The default configuration file, embedded: `blockvaultd` without `--config` runs on it.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/blockvaultd.toml");

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only, in its own project.
    Reader,
    /// Read and write in its own project.
    Member,
    /// Everything, in every project.
    Admin,
}

/// One access token.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: String,
    pub project: String,
    pub user: String,
    pub role: Role,
}

/// `[jobs]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    pub concurrency: usize,
    pub keep_finished_days: u32,
}

/// `[gc]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    pub interval_seconds: u64,
}

/// `[engine]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub threads: usize,
    pub max_in_flight_mib: u64,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// `[store]`: used when the daemon creates its store.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    pub zstd_level: i32,
}

/// `[tls]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub restore_dir: Option<PathBuf>,
    pub log: String,
    pub jobs: JobsConfig,
    pub gc: GcConfig,
    pub engine: EngineConfig,
    pub store: StoreSection,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse(DEFAULT_CONFIG).expect("the embedded default config parses")
    }
}

impl Config {
    /// Parses and checks a config text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn validate(&self) -> Result<(), String> {
        if self.jobs.concurrency == 0 {
            return Err("jobs.concurrency must be at least 1".into());
        }
        if self.engine.max_in_flight_mib == 0 {
            return Err("engine.max_in_flight_mib must be at least 1".into());
        }
        if !(1..=19).contains(&self.store.zstd_level) {
            return Err("store.zstd_level must be within 1..=19".into());
        }
        let s = &self.store;
        if !(s.chunk_min <= s.chunk_avg && s.chunk_avg <= s.chunk_max) {
            return Err(
                "store chunk sizes must satisfy chunk_min <= chunk_avg <= chunk_max".into(),
            );
        }
        for t in &self.tokens {
            if t.token.len() < 16 {
                return Err(format!(
                    "the token of user {:?} is shorter than 16 characters",
                    t.user
                ));
            }
            if t.project.is_empty() || t.user.is_empty() {
                return Err("every token needs a project and a user".into());
            }
        }
        Ok(())
    }

    /// Where restores to new volumes create their files.
    pub fn restore_dir(&self) -> PathBuf {
        self.restore_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("volumes"))
    }

    /// The master key file.
    pub fn key_file(&self) -> PathBuf {
        self.engine
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    /// Chunk store settings for a new store.
    pub fn store_config(&self) -> blockvault_store::StoreConfig {
        blockvault_store::StoreConfig {
            chunker: ChunkerParams {
                min_size: self.store.chunk_min,
                avg_size: self.store.chunk_avg,
                max_size: self.store.chunk_max,
            },
            compression: Compression::Zstd {
                level: self.store.zstd_level,
            },
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_parses_and_matches_the_documented_defaults() {
        let c = Config::parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8750".parse().unwrap());
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.data_dir, PathBuf::from("blockvault-data"));
        assert_eq!(c.jobs.concurrency, 2);
        assert_eq!(c.jobs.keep_finished_days, 30);
        assert_eq!(c.gc.interval_seconds, 3600);
        assert_eq!(c.restore_dir(), PathBuf::from("blockvault-data/volumes"));
        assert_eq!(c.key_file(), PathBuf::from("blockvault-data/master.key"));
        assert!(c.tokens.is_empty() && c.tls.is_none());
        let sc = c.store_config();
        assert_eq!(sc.chunker, ChunkerParams::default());
        assert_eq!(sc.compression, Compression::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let top = format!("{DEFAULT_CONFIG}\nlisten_port = 1\n");
        assert!(Config::parse(&top).unwrap_err().contains("listen_port"));
        let nested = DEFAULT_CONFIG.replace("concurrency = 2", "concurrency = 2\nparallel = 3");
        assert!(Config::parse(&nested).unwrap_err().contains("parallel"));
    }

    #[test]
    fn commented_examples_parse_when_enabled() {
        let text = DEFAULT_CONFIG
            .lines()
            .map(|l| {
                for p in [
                    "# [[tokens]]",
                    "# token =",
                    "# project =",
                    "# user =",
                    "# role =",
                ] {
                    if l.starts_with(p) {
                        return l.trim_start_matches("# ").to_string();
                    }
                }
                l.to_string()
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.tokens.len(), 1);
        assert_eq!(c.tokens[0].role, Role::Member);
    }

    #[test]
    fn bad_values_are_refused() {
        let c = DEFAULT_CONFIG.replace("concurrency = 2", "concurrency = 0");
        assert!(Config::parse(&c).is_err());
        let c = DEFAULT_CONFIG.replace("role = \"member\"", "role = \"owner\"");
        let c = c.replace("# [[tokens]]", "[[tokens]]");
        let c = c
            .replace("# token =", "token =")
            .replace("# project =", "project =");
        let c = c
            .replace("# user =", "user =")
            .replace("# role =", "role =");
        assert!(Config::parse(&c).unwrap_err().contains("owner"));
    }
}
