//! Shared helpers: a real daemon on 127.0.0.1:0 and generated tonic clients.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use blockvault_daemon::config::{Role, TokenConfig};
use blockvault_daemon::{Config, Running};
use blockvault_proto::v1 as pb;
use pb::backups_client::BackupsClient;
use pb::jobs_client::JobsClient;
use pb::vaults_client::VaultsClient;
use pb::volumes_client::VolumesClient;
use rand::{RngCore, SeedableRng};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Adds `x-auth-token` to every call (or nothing, for unauthenticated tests).
#[derive(Clone)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("x-auth-token", t.clone());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Token>;

/// Clients of the services with one token.
#[derive(Clone)]
pub struct Client {
    pub volumes: VolumesClient<Svc>,
    pub backups: BackupsClient<Svc>,
    pub jobs: JobsClient<Svc>,
    pub vaults: VaultsClient<Svc>,
}

pub async fn connect(endpoint: &str, token: Option<&str>) -> Client {
    let ch = Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let t = Token(token.map(|t| t.parse().unwrap()));
    Client {
        volumes: VolumesClient::with_interceptor(ch.clone(), t.clone()),
        backups: BackupsClient::with_interceptor(ch.clone(), t.clone()),
        jobs: JobsClient::with_interceptor(ch.clone(), t.clone()),
        vaults: VaultsClient::with_interceptor(ch, t),
    }
}

/// A test config: port 0, data in `dir`, small in-flight budget; volumes may be registered in
/// the directory that holds `dir` (the test's temporary directory).
pub fn config(dir: &Path, tokens: Vec<TokenConfig>) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        tokens,
        ..Default::default()
    };
    c.engine.threads = 2;
    c.cinder.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".parse().unwrap();
    c.volumes.allowed_paths = dir.parent().map(Path::to_path_buf).into_iter().collect();
    c
}

pub async fn start(dir: &Path) -> Running {
    blockvault_daemon::start(config(dir, vec![])).await.unwrap()
}

pub fn token(token: &str, project: &str, user: &str, role: Role) -> TokenConfig {
    TokenConfig {
        token: token.into(),
        project: project.into(),
        user: user.into(),
        role,
    }
}

/// Writes a volume image: random data with some all-zero stretches.
pub fn make_image(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size];
    rng.fill_bytes(&mut data);
    let mut off = 0;
    while off < size {
        let z = (size / 8).min(size - off);
        data[off..off + z / 2].fill(0);
        off += z.max(1) * 3;
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// Registers `path` as a volume.
pub async fn register(c: &mut Client, path: &Path, name: &str) -> pb::Volume {
    use std::os::unix::ffi::OsStrExt;
    c.volumes
        .register(pb::RegisterVolumeRequest {
            name: name.into(),
            path: path.as_os_str().as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Watches a job to its end and returns its last state.
pub async fn wait_job(c: &mut Client, job_id: &str) -> pb::Job {
    let mut s = c
        .jobs
        .watch(pb::WatchJobRequest {
            job_id: job_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last: Option<pb::Job> = None;
    while let Some(j) = s.message().await.unwrap() {
        // Progress only moves forward within one stream.
        if let Some(l) = &last {
            assert!(j.bytes_done >= l.bytes_done, "{l:?} -> {j:?}");
            assert!(j.bytes_stored >= l.bytes_stored, "{l:?} -> {j:?}");
        }
        last = Some(j);
    }
    let last = last.expect("watch sent at least one message");
    assert!(
        ["succeeded", "failed", "cancelled"].contains(&last.state.as_str()),
        "{last:?}"
    );
    last
}

/// Queues a full backup of `volume`; returns the backup and its job id.
pub async fn start_backup(c: &mut Client, volume: &str) -> pb::CreateBackupResponse {
    c.backups
        .create(pb::CreateBackupRequest {
            volume_id: volume.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Creates a backup and waits for its job to succeed; returns the finished backup.
pub async fn backup(c: &mut Client, volume: &str, name: &str, incremental: bool) -> pb::Backup {
    let r = c
        .backups
        .create(pb::CreateBackupRequest {
            volume_id: volume.into(),
            name: name.into(),
            incremental,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let job = wait_job(c, &r.job_id).await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    get_backup(c, &r.backup.unwrap().id).await
}

pub async fn get_backup(c: &mut Client, id: &str) -> pb::Backup {
    c.backups
        .get(pb::GetBackupRequest {
            backup_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Restores and waits; returns (volume, final job).
pub async fn restore(
    c: &mut Client,
    backup: &str,
    volume: &str,
    name: &str,
) -> (pb::Volume, pb::Job) {
    let r = c
        .backups
        .restore(pb::RestoreBackupRequest {
            backup_id: backup.into(),
            volume_id: volume.into(),
            name: name.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let job = wait_job(c, &r.job_id).await;
    let v = c
        .volumes
        .get(pb::GetVolumeRequest {
            volume_id: r.volume_id,
        })
        .await
        .unwrap()
        .into_inner();
    (v, job)
}

pub fn path_of(v: &pb::Volume) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(&v.path))
}

/// Asserts a call failed with `code`.
pub fn assert_code<T: std::fmt::Debug>(r: Result<T, Status>, code: Code) -> Status {
    match r {
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            s
        }
    }
}

/// Asserts two files hold the same bytes.
pub fn assert_same(a: &Path, expected: &[u8]) {
    let got = std::fs::read(a).unwrap();
    assert_eq!(got.len(), expected.len(), "{}", a.display());
    assert!(got == expected, "{} differs", a.display());
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A vault's usage computed from scratch, independently of the daemon's ledger: the pack-entry
/// bytes of the distinct chunks named by the manifests of `backups`.
pub fn usage_oracle<'a>(
    store: &blockvault_store::Store,
    backups: impl IntoIterator<Item = &'a str>,
) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for b in backups {
        let id: blockvault_core::BackupId = b.parse().unwrap();
        for block in store.manifest(&id) {
            for e in block.unwrap().entries {
                if let blockvault_core::ManifestEntry::Chunk { id, .. } = e {
                    if seen.insert(id) {
                        total += store.chunk_location(&id).unwrap().unwrap().entry_len();
                    }
                }
            }
        }
    }
    total
}

/// A valid billing block of `size` GB (the vault API's required enums set).
pub fn billing(size: i64) -> pb::Billing {
    pb::Billing {
        consistent_level: "crash_consistent".into(),
        object_type: "disk".into(),
        protect_type: "backup".into(),
        size,
        ..Default::default()
    }
}

/// Creates a vault of `size_gb` GB and returns its id.
pub async fn create_vault(c: &mut Client, name: &str, size_gb: i64) -> String {
    c.vaults
        .create(pb::CreateVaultRequest {
            name: name.into(),
            billing: Some(billing(size_gb)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

/// A vault's `used`, in MB.
pub async fn vault_used_mb(c: &mut Client, vault: &str) -> u64 {
    c.vaults
        .get(pb::GetVaultRequest {
            vault_id: vault.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .billing
        .unwrap()
        .used as u64
}

/// Ids of the available backups in `vault` (admin view).
pub async fn available_in(c: &mut Client, vault: &str) -> Vec<String> {
    c.backups
        .list(pb::ListBackupsRequest {
            detail: true,
            all_tenants: true,
            filters: [("status".to_string(), "available".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .backups
        .into_iter()
        .filter(|b| b.container == vault)
        .map(|b| b.id)
        .collect()
}

/// A raw HTTP/1.1 request: (status, lower-cased head, body).
pub fn http_raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}
