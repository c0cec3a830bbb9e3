//! A locked vault in storage: on a bucket with S3 Object Lock (a one-node Ceph RGW started by
//! `scripts/ceph-rgw.sh`), the daemon puts every object of the vault's backups under
//! retention and the bucket refuses to destroy them; on a store that cannot, the vault says so.
//! Checked from outside with `curl --aws-sigv4`, a client that is not blockvault's.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use blockvault_engine::RetentionMode;
use blockvault_proto::v1 as pb;
use common::*;

const MIB: usize = 1 << 20;
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const AK: &str = "BLOCKVAULTTESTKEY";
const SK: &str = "blockvault-test-secret-key-0001";

async fn locked_vault(c: &mut Client, name: &str) -> pb::Vault {
    c.vaults
        .create(pb::CreateVaultRequest {
            name: name.into(),
            billing: Some(billing(10)),
            locked: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_store_says_it_does_not_enforce_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(&dir.path().join("data")).await;
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;
    let v = locked_vault(&mut c, "locked").await;
    assert!(
        v.object_lock.starts_with("not enforced by storage: ")
            && v.object_lock
                .contains("cannot keep objects under retention"),
        "{}",
        v.object_lock
    );
    let id = create_vault(&mut c, "open", 10).await;
    let open = c
        .vaults
        .get(pb::GetVaultRequest { vault_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.object_lock, "");
    d.stop().await.unwrap();
}

/// A one-node Ceph with RGW under a temporary directory, stopped on drop.
struct Ceph {
    dir: PathBuf,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ceph-rgw.sh")
}

impl Ceph {
    /// None (and a note on stderr) where Ceph is not installed.
    fn start(dir: &Path, bucket: &str) -> Option<Ceph> {
        let installed = ["radosgw", "ceph-mon", "ceph-osd", "s3cmd"]
            .iter()
            .all(|b| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {b}")])
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
        if !installed {
            eprintln!(
                "SKIPPED: Ceph (radosgw, ceph-mon, ceph-osd) is not installed; \
                 `bash scripts/ceph-rgw.sh start DIR` installs it"
            );
            return None;
        }
        let dir = dir.join("ceph");
        let port = free_port();
        let out = Command::new("bash")
            .arg(script())
            .args(["start", dir.to_str().unwrap(), bucket])
            .env("OBJECT_LOCK", "1")
            .env("PORT", port.to_string())
            .env("MON_PORT", free_port().to_string())
            .output()
            .unwrap();
        let ceph = Ceph { dir, port };
        assert!(
            out.status.success(),
            "ceph-rgw.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(ceph)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A signed request; returns the HTTP status and the body.
    fn curl(&self, method: &str, path_and_query: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "-X", method, "--aws-sigv4", "aws:amz:us-east-1:s3"])
            .args(["--user", &format!("{AK}:{SK}")])
            .args(["-H", &format!("x-amz-content-sha256: {EMPTY_SHA256}")])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("{}{path_and_query}", self.endpoint()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_string())
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
    }
}

/// The texts of every `<tag>…</tag>` in `xml`.
fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}

fn encode(s: &str) -> String {
    s.replace('/', "%2F")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_vault_on_an_object_lock_bucket_cannot_be_destroyed_through_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ceph) = Ceph::start(dir.path(), "lockb") else {
        return;
    };
    let mut cfg = config(&dir.path().join("data"), vec![]);
    cfg.store.bucket = Some("s3://lockb/node".into());
    cfg.store.endpoint = Some(ceph.endpoint());
    cfg.store.credentials_file = Some(ceph.dir.join("credentials"));
    cfg.vaults.object_lock_mode = RetentionMode::Governance;
    cfg.vaults.object_lock_days = 1;
    let d = blockvault_daemon::start(cfg).await.unwrap();
    let mut c = connect(&d.endpoint(), Some(&d.admin_token)).await;

    let vault = locked_vault(&mut c, "locked").await;
    assert_eq!(
        vault.object_lock,
        "enforced: S3 Object Lock GOVERNANCE, 1 days, renewed while the backup exists"
    );
    let img = dir.path().join("vol.img");
    let bytes = make_image(&img, 6 * MIB, 5);
    let vol = register(&mut c, &img, "vol").await;
    let r = c
        .backups
        .create(pb::CreateBackupRequest {
            volume_id: vol.id.clone(),
            name: "kept".into(),
            container: vault.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let job = wait_job(&mut c, &r.job_id).await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    let backup = r.backup.unwrap();

    // Every pack and the record end up retained for a day (the job runs when the backup's job
    // ends); read back from the bucket.
    let (code, list) = ceph.curl(
        "GET",
        &format!("/lockb?list-type=2&prefix={}", encode("node/packs/")),
    );
    assert_eq!(code, 200, "{list}");
    let packs = elements(&list, "Key");
    assert!(!packs.is_empty(), "{list}");
    let record = format!("node/meta/backups/{}/record", backup.id);
    let now = time::OffsetDateTime::now_utc();
    let deadline = Instant::now() + Duration::from_secs(60);
    for key in packs.iter().chain([&record]) {
        let answer = loop {
            let (code, body) = ceph.curl("GET", &format!("/lockb/{key}?retention="));
            if code == 200 {
                break body;
            }
            assert!(
                Instant::now() < deadline,
                "{key} not retained: {code} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(elements(&answer, "Mode"), ["GOVERNANCE"], "{answer}");
        let until = time::OffsetDateTime::parse(
            &elements(&answer, "RetainUntilDate")[0],
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!(until > now + time::Duration::hours(23), "{key}: {until}");
    }

    // Someone with the bucket's credentials tries to destroy a pack: the bucket refuses.
    let (_, versions) = ceph.curl(
        "GET",
        &format!("/lockb?prefix={}&versions=", encode(&packs[0])),
    );
    let version = elements(&versions, "VersionId");
    assert_eq!(version.len(), 1, "{versions}");
    let (code, body) = ceph.curl(
        "DELETE",
        &format!("/lockb/{}?versionId={}", packs[0], version[0]),
    );
    assert_eq!(code, 403, "a retained pack version was deleted: {body}");

    // And the daemon still restores it byte-exact.
    let (v, job) = restore(&mut c, &backup.id, "", "back").await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    assert_same(&path_of(&v), &bytes);
    d.stop().await.unwrap();
}
