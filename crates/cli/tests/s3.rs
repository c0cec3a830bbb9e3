//! `blockvault local` with the packs in a bucket of a real S3 server process: `init` takes the
//! bucket, endpoint and credentials once; every other command finds them in the store's config.
use std::path::Path;
use std::process::{Command, Output};

use blockvault_s3_test_server::{S3Server, ACCESS_KEY, SECRET_KEY};
use rand::{RngCore, SeedableRng};

fn bv(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blockvault"));
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    for a in args {
        c.arg(a);
    }
    c.output().expect("run blockvault")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "blockvault failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn image(p: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v[..len / 2]);
    std::fs::write(p, &v).unwrap();
    v
}

#[test]
fn local_commands_keep_packs_in_the_bucket_named_at_init() {
    let server = S3Server::start("cli-bucket");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let creds = server.credentials_file();
    ok(bv(&[
        &"local",
        &"init",
        &"--store",
        &store,
        &"--key-file",
        &d.path().join("master.key"),
        &"--bucket",
        &"s3://cli-bucket/node-1",
        &"--endpoint",
        &server.endpoint(),
        &"--credentials-file",
        &creds,
    ]));
    let config = std::fs::read_to_string(store.join("store.json")).unwrap();
    assert!(
        config.contains("cli-bucket") && !config.contains(SECRET_KEY),
        "{config}"
    );

    let img = d.path().join("vol.img");
    let data = image(&img, 24 << 20, 1);
    let full = ok(bv(&[
        &"local",
        &"backup",
        &"--store",
        &store,
        &"--volume",
        &"vol-1",
        &"--source",
        &img,
        &"--encrypt",
    ]))
    .trim()
    .to_string();
    let mut changed = data.clone();
    changed[5 << 20..6 << 20].fill(7);
    std::fs::write(&img, &changed).unwrap();
    let incr = ok(bv(&[
        &"local",
        &"backup",
        &"--store",
        &store,
        &"--volume",
        &"vol-1",
        &"--source",
        &img,
        &"--incremental",
    ]))
    .trim()
    .to_string();
    assert!(server.bytes_under("cli-bucket/node-1/packs") > 10 << 20);

    for (id, want) in [(&full, &data), (&incr, &changed)] {
        let out = d.path().join(format!("r-{id}"));
        ok(bv(&[
            &"local",
            &"restore",
            &"--store",
            &store,
            &"--backup",
            id,
            &"--target",
            &out,
        ]));
        assert!(
            std::fs::read(&out).unwrap() == *want,
            "backup {id} round-trips"
        );
    }
    ok(bv(&[&"local", &"verify", &"--store", &store]));
    ok(bv(&[
        &"local",
        &"delete",
        &"--store",
        &store,
        &"--backup",
        &full,
    ]));
    ok(bv(&[&"local", &"gc", &"--store", &store]));
    let out = d.path().join("after-gc");
    ok(bv(&[
        &"local",
        &"restore",
        &"--store",
        &store,
        &"--backup",
        &incr,
        &"--target",
        &out,
    ]));
    assert!(std::fs::read(&out).unwrap() == changed);
}

#[test]
fn init_takes_credentials_from_the_environment_and_refuses_bad_ones() {
    let server = S3Server::start("cli-env");
    let d = tempfile::tempdir().unwrap();
    let init = |store: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>], env: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_blockvault"));
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        c.args(["local", "init", "--store"]).arg(store);
        c.args(["--bucket", "s3://cli-env", "--endpoint", server.endpoint()]);
        for e in extra {
            c.arg(e);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // From the environment.
    let good = init(
        &d.path().join("env"),
        &[],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ],
    );
    ok(good);
    // No credentials at all.
    let o = init(&d.path().join("none"), &[], &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    // A wrong secret: the server refuses, init fails naming the bucket, no store is left.
    let o = init(
        &d.path().join("wrong"),
        &[],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("s3://cli-env"), "{err}");
    assert!(
        !err.contains("not-the-secret"),
        "the secret is never printed: {err}"
    );
    assert!(!d.path().join("wrong/store.json").exists());
    // A credentials file others can read is refused.
    let loose = d.path().join("loose");
    std::fs::copy(server.credentials_file(), &loose).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = init(
        &d.path().join("loose-store"),
        &[&"--credentials-file", &loose],
        &[],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("chmod 600"));
}
