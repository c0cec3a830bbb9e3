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
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    pub concurrency: usize,
    pub keep_finished_days: u32,
    /// Jobs that may wait in the queue at once, across all projects.
    pub max_queued: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            concurrency: 2,
            keep_finished_days: 30,
            max_queued: 1000,
        }
    }
}

/// `[gc]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    pub interval_seconds: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_seconds: 3600,
        }
    }
}

/// `[verify]`: the scheduled store verify.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Seconds between runs (0: never). The first run starts a minute after the daemon.
    pub interval_seconds: u64,
    /// A pack found intact less than this many seconds ago is not read again (0: every run
    /// reads every pack).
    pub period_seconds: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            interval_seconds: 24 * 3600,
            period_seconds: 30 * 24 * 3600,
        }
    }
}

/// `[engine]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub threads: usize,
    pub max_in_flight_mib: u64,
    pub key_file: Option<PathBuf>,
    /// Nice value of the data plane's threads (job threads and workers), so API calls keep
    /// their latency while backups fill the cores.
    pub nice: i32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: 0,
            max_in_flight_mib: blockvault_engine::EngineOptions::default().max_bytes_in_flight
                >> 20,
            key_file: None,
            nice: 10,
        }
    }
}

/// `[store]`: used when the daemon creates its store.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    pub zstd_level: i32,
    /// Packs in an S3-compatible bucket, `s3://BUCKET[/PREFIX]`; none: under the data dir.
    pub bucket: Option<String>,
    /// S3 endpoint URL (none: AWS).
    pub endpoint: Option<String>,
    /// S3 signing region.
    pub region: String,
    /// Path-style addressing (RGW, MinIO); false: virtual-hosted style.
    pub path_style: bool,
    /// Credentials file (mode 0600, `aws_access_key_id` / `aws_secret_access_key`); none: the
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment variables.
    pub credentials_file: Option<PathBuf>,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            chunk_min: 8192,
            chunk_avg: 32768,
            chunk_max: 131072,
            zstd_level: 1,
            bucket: None,
            endpoint: None,
            region: "us-east-1".into(),
            path_style: true,
            credentials_file: None,
        }
    }
}

impl StoreSection {
    /// The pack backend these settings name.
    pub fn backend(&self) -> Result<blockvault_store::Backend, String> {
        let Some(url) = &self.bucket else {
            return Ok(blockvault_store::Backend::Local);
        };
        let mut s = blockvault_store::S3Settings::from_url(url)
            .map_err(|e| format!("store.bucket: {e}"))?;
        s.endpoint = self.endpoint.clone();
        s.region = self.region.clone();
        s.path_style = self.path_style;
        s.credentials_file = self.credentials_file.clone();
        if let Some(p) = &s.credentials_file {
            if !p.is_absolute() {
                return Err("store.credentials_file must be an absolute path".into());
            }
        }
        s.validate().map_err(|e| format!("store: {e}"))?;
        Ok(blockvault_store::Backend::S3(s))
    }
}

/// Which dedup domain unencrypted volumes share (`[volumes] dedup`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupScope {
    /// One keyed domain per project: no tenant can learn what another tenant stores.
    #[default]
    Project,
    /// One domain for the whole node (single-tenant nodes): identical data of two projects is
    /// stored once, and a project can tell whether some content is stored by someone.
    Global,
}

/// `[volumes]`: what may be registered as a volume.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumesConfig {
    /// Path prefixes under which block devices and image files may be registered (resolved,
    /// symlinks followed, before the check). The restore directory is always allowed; the data
    /// directory, key file and token files never are.
    pub allowed_paths: Vec<PathBuf>,
    pub dedup: DedupScope,
}

/// `[vaults]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultsConfig {
    /// Resources (volumes and servers) one vault may bind.
    pub max_resources: usize,
    /// On a bucket with S3 Object Lock, how a locked vault's backups are retained
    /// (`compliance`: nobody can shorten it; `governance`: a user with
    /// s3:BypassGovernanceRetention can).
    pub object_lock_mode: blockvault_engine::RetentionMode,
    /// Days of retention from each renewal (1..=36500); renewed when half is left.
    pub object_lock_days: u64,
}

impl Default for VaultsConfig {
    fn default() -> Self {
        let o = crate::objectlock::ObjectLockOptions::default();
        VaultsConfig {
            max_resources: 256,
            object_lock_mode: o.mode,
            object_lock_days: o.days,
        }
    }
}

/// `[server]`: limits of the gRPC server.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
    /// Concurrent streams (calls) per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval and the time to wait for its answer, in seconds.
    pub keepalive_seconds: u64,
    pub keepalive_timeout_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_bytes: 4 << 20,
            max_concurrent_streams: 128,
            keepalive_seconds: 60,
            keepalive_timeout_seconds: 20,
        }
    }
}

/// `[cinder]`: the Cinder v3 REST front end.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CinderConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Cinder's `noauth`: `X-Auth-Token: USER:PROJECT`, no secret (test beds only).
    pub noauth: bool,
}

impl Default for CinderConfig {
    fn default() -> Self {
        CinderConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_CINDER_PORT)),
            noauth: false,
        }
    }
}

/// `[metrics]`: the Prometheus scrape endpoint (`GET /metrics`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)),
        }
    }
}

/// How log lines look (`log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// `[tls]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The whole configuration. Every key is optional and takes the default documented in
/// `config/blockvaultd.toml`; unknown keys are an error.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub restore_dir: Option<PathBuf>,
    pub log: String,
    pub log_format: LogFormat,
    pub jobs: JobsConfig,
    pub gc: GcConfig,
    pub verify: VerifyConfig,
    pub engine: EngineConfig,
    pub store: StoreSection,
    pub volumes: VolumesConfig,
    pub vaults: VaultsConfig,
    pub server: ServerConfig,
    pub cinder: CinderConfig,
    pub metrics: MetricsConfig,
    pub tokens: Vec<TokenConfig>,
    pub tls: Option<TlsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            data_dir: PathBuf::from("blockvault-data"),
            restore_dir: None,
            log: "info".into(),
            log_format: LogFormat::Text,
            jobs: JobsConfig::default(),
            gc: GcConfig::default(),
            verify: VerifyConfig::default(),
            engine: EngineConfig::default(),
            store: StoreSection::default(),
            volumes: VolumesConfig::default(),
            vaults: VaultsConfig::default(),
            server: ServerConfig::default(),
            cinder: CinderConfig::default(),
            metrics: MetricsConfig::default(),
            tokens: Vec::new(),
            tls: None,
        }
    }
}

/// The longest interval of any timer (GC, policy schedules): ten years. Longer ones would
/// overflow time arithmetic for no use.
pub const MAX_INTERVAL_SECONDS: u64 = 10 * 366 * 86_400;

/// The default port of the gRPC listener.
pub const DEFAULT_PORT: u16 = 8750;

/// The default port of the Cinder REST listener (Cinder's own).
pub const DEFAULT_CINDER_PORT: u16 = 8776;

/// The default port of the Prometheus scrape endpoint.
pub const DEFAULT_METRICS_PORT: u16 = 9750;

/// Refuses a secret file (key, token) that group or others may read, as ssh does with private
/// keys.
pub fn check_private(path: &Path, what: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what} {} has mode {:04o}: it must not be readable or writable by group or others \
             (run: chmod 600 {})",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

impl Config {
    /// Parses and checks a config text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Reads and checks a config file. A file that holds tokens must be private (0600).
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let c = Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if !c.tokens.is_empty() {
            check_private(path, "config file (it holds tokens)")?;
        }
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        if self.jobs.concurrency == 0 {
            return Err("jobs.concurrency must be at least 1".into());
        }
        if self.jobs.max_queued == 0 {
            return Err("jobs.max_queued must be at least 1".into());
        }
        if self.vaults.max_resources == 0 {
            return Err("vaults.max_resources must be at least 1".into());
        }
        if !(1..=36_500).contains(&self.vaults.object_lock_days) {
            return Err("vaults.object_lock_days must be within 1..=36500".into());
        }
        if !(1024..=(256 << 20)).contains(&self.server.max_message_bytes) {
            return Err("server.max_message_bytes must be within 1024..=268435456".into());
        }
        if self.server.max_concurrent_streams == 0 {
            return Err("server.max_concurrent_streams must be at least 1".into());
        }
        if self.server.keepalive_seconds == 0 || self.server.keepalive_timeout_seconds == 0 {
            return Err(
                "server.keepalive_seconds and keepalive_timeout_seconds must be at least 1".into(),
            );
        }
        if self.engine.max_in_flight_mib == 0 || self.engine.max_in_flight_mib > (1 << 20) {
            return Err("engine.max_in_flight_mib must be within 1..=1048576".into());
        }
        if !(0..=blockvault_engine::priority::MAX_NICE).contains(&self.engine.nice) {
            return Err(format!(
                "engine.nice must be within 0..={}",
                blockvault_engine::priority::MAX_NICE
            ));
        }
        if self.engine.threads > 1024 {
            return Err("engine.threads must be at most 1024".into());
        }
        if self.jobs.concurrency > 1024 {
            return Err("jobs.concurrency must be at most 1024".into());
        }
        for (key, v) in [
            ("gc.interval_seconds", self.gc.interval_seconds),
            ("verify.interval_seconds", self.verify.interval_seconds),
            ("verify.period_seconds", self.verify.period_seconds),
        ] {
            if v > MAX_INTERVAL_SECONDS {
                return Err(format!("{key} must be at most {MAX_INTERVAL_SECONDS}"));
            }
        }
        for (i, p) in self.volumes.allowed_paths.iter().enumerate() {
            if !p.is_absolute() {
                return Err(format!(
                    "volumes.allowed_paths[{i}] must be an absolute path"
                ));
            }
        }
        if !(1..=19).contains(&self.store.zstd_level) {
            return Err("store.zstd_level must be within 1..=19".into());
        }
        self.store.backend()?;
        self.store_config()
            .chunker
            .validate()
            .map_err(|e| format!("store chunk sizes (chunk_min, chunk_avg, chunk_max): {e}"))?;
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
            // Checked by `validate`.
            backend: self.store.backend().unwrap_or_default(),
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
    fn every_key_is_optional() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let c = Config::parse(
            "[[tokens]]\ntoken = \"0123456789abcdef0123\"\nproject = \"p\"\nuser = \"u\"\nrole = \"member\"\n",
        )
        .unwrap();
        assert_eq!(c.tokens.len(), 1);
        assert_eq!(c.jobs, JobsConfig::default());
        let c = Config::parse("listen = \"127.0.0.1:9\"\n[jobs]\nconcurrency = 3\n").unwrap();
        assert_eq!(c.jobs.concurrency, 3);
        assert_eq!(c.jobs.keep_finished_days, 30);
        assert_eq!(c.log, "info");
    }

    #[test]
    fn the_default_file_is_the_built_in_default() {
        assert_eq!(Config::parse(DEFAULT_CONFIG).unwrap(), Config::default());
    }

    #[test]
    fn secret_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("k");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = check_private(&f, "key file").unwrap_err();
        assert!(e.contains("0640") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_private(&f, "key file").unwrap();
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
        for bad in [
            "[gc]\ninterval_seconds = 18446744073709551",
            "[store]\nchunk_min = 1",
            "[server]\nmax_message_bytes = 1",
            "[jobs]\nmax_queued = 0",
            "[engine]\nnice = 20",
            "[engine]\nnice = -1",
            "[volumes]\nallowed_paths = [\"relative/dir\"]",
            "[volumes]\ndedup = \"none\"",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
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
