//! One suite, every pack backend: the local directory, memory, the fault-injecting wrapper (with
//! only delays for the cases that expect success), and the S3 backend against a real S3 server
//! process (`bv-s3-server`, s3s-fs on 127.0.0.1:0). Then the fault cases: injected errors and
//! short reads surface as errors, never as wrong bytes.
use std::io;
use std::sync::Arc;
use std::time::Duration;

use blockvault_core::PackId;
use blockvault_s3_test_server::S3Server;
use blockvault_store::{
    Backend, Faults, FaultyPacks, LocalPacks, MemoryPacks, PackStorage, S3Packs, S3Settings, Store,
    StoreConfig, PART_SIZE, STORE_PARTS_IN_FLIGHT,
};
use rand::{Rng, RngCore, SeedableRng};

struct Backends {
    list: Vec<(&'static str, Arc<dyn PackStorage>)>,
    _dir: tempfile::TempDir,
    _server: S3Server,
}

fn s3_settings(server: &S3Server, prefix: &str) -> S3Settings {
    let mut s = S3Settings::from_url(&format!("s3://packs-test/{prefix}")).unwrap();
    s.endpoint = Some(server.endpoint().to_string());
    s.credentials_file = Some(server.credentials_file().to_path_buf());
    s
}

fn backends() -> Backends {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start("packs-test");
    let s3 = S3Packs::new(s3_settings(&server, "conformance")).unwrap();
    s3.probe().unwrap();
    let list: Vec<(&'static str, Arc<dyn PackStorage>)> = vec![
        (
            "local",
            Arc::new(LocalPacks::new(dir.path().join("packs")).unwrap()),
        ),
        ("memory", Arc::new(MemoryPacks::default())),
        (
            "faulty(slow)",
            Arc::new(FaultyPacks::new(
                Arc::new(MemoryPacks::default()),
                Faults {
                    delay: Duration::from_millis(2),
                    ..Faults::default()
                },
            )),
        ),
        ("s3", Arc::new(s3)),
    ];
    Backends {
        list,
        _dir: dir,
        _server: server,
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Writes `body` as pack `id` in uneven pieces.
fn put(p: &dyn PackStorage, id: PackId, body: &[u8]) {
    let mut sink = p.create(id).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(body.len() as u64);
    let mut rest = body;
    while !rest.is_empty() {
        let n = rng.gen_range(1..=rest.len().min(3 << 20));
        sink.write_all(&rest[..n]).unwrap();
        rest = &rest[n..];
    }
    sink.finish().unwrap();
}

#[test]
fn every_backend_stores_reads_lists_and_deletes_packs_alike() {
    let b = backends();
    // Sizes: empty-bodied, small, exactly one part, and several parts (multipart on S3).
    let sizes = [24usize, 4000, PART_SIZE, 2 * PART_SIZE + 12345];
    for (name, p) in &b.list {
        let p = &**p;
        let mut ids = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let id = PackId::random();
            let body = random(size, i as u64);
            put(p, id, &body);
            // Whole and ranged reads give back exactly what was written.
            assert_eq!(p.read_at(id, 0, size).unwrap(), body, "{name}: whole read");
            let mut rng = rand::rngs::StdRng::seed_from_u64(99);
            let ranges: Vec<_> = (0..20)
                .map(|_| {
                    let a = rng.gen_range(0..size as u64);
                    a..rng.gen_range(a..=size as u64)
                })
                .collect();
            let got = p.read_ranges(id, &ranges).unwrap();
            for (r, g) in ranges.iter().zip(&got) {
                assert_eq!(
                    &g[..],
                    &body[r.start as usize..r.end as usize],
                    "{name}: range {r:?}"
                );
            }
            // A read past the end is an error, never a short buffer.
            assert!(
                p.read_at(id, size as u64 - 1, 2).is_err(),
                "{name}: read past the end"
            );
            ids.push(id);
        }
        let mut listed = p.list().unwrap();
        listed.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(listed, want, "{name}: list");

        let missing = PackId::random();
        assert_eq!(
            p.read_at(missing, 0, 1).unwrap_err().kind(),
            io::ErrorKind::NotFound,
            "{name}: missing pack"
        );
        p.delete(ids[0]).unwrap();
        p.delete(ids[0]).unwrap();
        p.delete(missing).unwrap();
        assert_eq!(
            p.read_at(ids[0], 0, 1).unwrap_err().kind(),
            io::ErrorKind::NotFound,
            "{name}: deleted pack"
        );
        assert!(
            !p.list().unwrap().contains(&ids[0]),
            "{name}: deleted listed"
        );
        assert!(
            p.describe(ids[1]).contains(&ids[1].to_hex()),
            "{name}: describe"
        );
    }
}

#[test]
fn an_unfinished_s3_pack_is_not_readable() {
    let server = S3Server::start("packs-test");
    let p = S3Packs::new(s3_settings(&server, "unfinished")).unwrap();
    let id = PackId::random();
    let mut sink = p.create(id).unwrap();
    sink.write_all(&random(PART_SIZE * 2 + 10, 1)).unwrap();
    assert_eq!(
        p.read_at(id, 0, 1).unwrap_err().kind(),
        io::ErrorKind::NotFound,
        "parts uploaded, upload not completed"
    );
    drop(sink);
    assert!(p.list().unwrap().is_empty());
}

/// Four packs uploading at once (a backup's open pack, two queued for the sealer and the one it
/// finishes, or several backups) keep at most [`STORE_PARTS_IN_FLIGHT`] parts in flight
/// together, so the memory of the upload side does not grow with the number of packs.
#[test]
fn parts_in_flight_are_bounded_across_packs() {
    use blockvault_s3_test_server::Options;
    let server = S3Server::start_with(Options {
        buckets: vec!["packs-test".into()],
        delay_ms: 150,
        ..Options::default()
    });
    let p = Arc::new(S3Packs::new(s3_settings(&server, "bounded")).unwrap());
    let ids: Vec<PackId> = (0..4).map(|_| PackId::random()).collect();
    let threads: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let p = p.clone();
            std::thread::spawn(move || {
                let mut sink = p.create(id).unwrap();
                sink.write_all(&random(PART_SIZE * 3 + 10, i as u64))
                    .unwrap();
                sink.finish().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let peak = p
        .requests()
        .parts_in_flight_peak
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (2..=STORE_PARTS_IN_FLIGHT as u64).contains(&peak),
        "{peak} parts were uploading at once"
    );
    for id in ids {
        assert_eq!(p.read_at(id, 0, 4).unwrap().len(), 4, "pack {id} is whole");
    }
}

/// The store writes byte-identical packs through every backend: the same chunks give the same
/// pack bytes (apart from the pack id in the header).
#[test]
fn packs_written_through_every_backend_are_byte_identical() {
    let b = backends();
    let chunks: Vec<Vec<u8>> = (0..50).map(|i| random(1000 + i * 37, i as u64)).collect();
    let mut bodies = Vec::new();
    for (name, p) in &b.list {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::init_with(dir.path().join("s"), StoreConfig::default(), p.clone()).unwrap();
        let mut w = store.new_pack().unwrap();
        for c in &chunks {
            let id = blockvault_core::ChunkId::from_slice(blake3::hash(c).as_bytes()).unwrap();
            w.append(id, c.len() as u32, c).unwrap();
        }
        let id = w.id();
        let size = w.size() as usize;
        store.seal_pack(w).unwrap();
        let mut body = p.read_at(id, 0, size).unwrap();
        body[8..24].fill(0);
        bodies.push((name, body));
    }
    for (name, body) in &bodies[1..] {
        assert!(body == &bodies[0].1, "{name} differs from {}", bodies[0].0);
    }
}

#[test]
fn injected_errors_and_short_reads_are_errors_never_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn PackStorage> = Arc::new(MemoryPacks::default());
    // Fill a store through a well-behaved view of the same memory.
    let store =
        Store::init_with(dir.path().join("s"), StoreConfig::default(), inner.clone()).unwrap();
    let chunks: Vec<Vec<u8>> = (0..200).map(|i| random(500 + i, i as u64)).collect();
    let mut w = store.new_pack().unwrap();
    let mut ids = Vec::new();
    for c in &chunks {
        let id = blockvault_core::ChunkId::from_slice(blake3::hash(c).as_bytes()).unwrap();
        w.append(id, c.len() as u32, c).unwrap();
        ids.push(id);
    }
    store.seal_pack(w).unwrap();
    drop(store);

    let faulty = Arc::new(FaultyPacks::new(
        inner,
        Faults {
            error_rate: 0.2,
            short_read_rate: 0.2,
            seed: 7,
            ..Faults::default()
        },
    ));
    let store = Store::open_with(dir.path().join("s"), faulty.clone()).unwrap();
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..5 {
        for (id, c) in ids.iter().zip(&chunks) {
            match store.read_envelope(id) {
                Ok(e) => {
                    assert_eq!(&e[..], &c[..], "a read that succeeds has the right bytes");
                    ok += 1;
                }
                Err(_) => failed += 1,
            }
        }
    }
    let counts = faulty.counts();
    let injected = counts.errors.load(std::sync::atomic::Ordering::Relaxed)
        + counts
            .short_reads
            .load(std::sync::atomic::Ordering::Relaxed);
    assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    assert!(injected as usize >= failed, "every failure was injected");

    // Writes: a sink whose finish fails leaves no sealed pack behind.
    let mut sealed = 0;
    for i in 0..20 {
        let Ok(mut w) = store.new_pack() else {
            continue;
        };
        let c = random(100, 1000 + i);
        if w.append(
            blockvault_core::ChunkId::from_slice(blake3::hash(&c).as_bytes()).unwrap(),
            100,
            &c,
        )
        .is_err()
        {
            store.abandon_pack(w);
            continue;
        }
        if store.seal_pack(w).is_ok() {
            sealed += 1;
        }
    }
    assert_eq!(store.sealed_packs().unwrap().len(), 1 + sealed);
}

#[test]
fn store_json_records_the_backend_and_a_local_store_keeps_the_old_format() {
    let server = S3Server::start("packs-test");
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        backend: Backend::S3(s3_settings(&server, "recorded")),
        ..StoreConfig::default()
    };
    let store = Store::init(dir.path().join("s3store"), config.clone()).unwrap();
    drop(store);
    let text = std::fs::read_to_string(dir.path().join("s3store/store.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["backend"]["kind"], "s3");
    assert_eq!(v["backend"]["bucket"], "packs-test");
    assert!(
        !text.contains(blockvault_s3_test_server::SECRET_KEY),
        "no secret in store.json"
    );
    let store = Store::open(dir.path().join("s3store")).unwrap();
    assert_eq!(store.config().backend, config.backend);

    Store::init(dir.path().join("local"), StoreConfig::default()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("local/store.json")).unwrap();
    assert!(
        !text.contains("backend"),
        "a local store.json is what older versions wrote"
    );

    // A bucket that does not exist, or a wrong secret, fails init with the bucket named.
    let mut bad = s3_settings(&server, "x");
    bad.bucket = "no-such-bucket".into();
    let e = Store::init(
        dir.path().join("bad"),
        StoreConfig {
            backend: Backend::S3(bad),
            ..StoreConfig::default()
        },
    )
    .err()
    .expect("missing bucket refused")
    .to_string();
    assert!(e.contains("s3://no-such-bucket"), "{e}");
}

/// Catalog objects (`put_meta` and friends) behave alike on every backend: put replaces, get
/// of a missing name is `None`, list is sorted and scoped by prefix, delete is idempotent, and
/// names the store would never make are refused before they reach a disk or a bucket.
#[test]
fn every_backend_keeps_catalog_objects_alike() {
    let b = backends();
    for (name, p) in &b.list {
        assert_eq!(p.get_meta("backups/x/record").unwrap(), None, "{name}");
        p.put_meta("backups/b1/manifest-000000", b"m0").unwrap();
        p.put_meta("backups/b1/record", b"first").unwrap();
        p.put_meta("backups/b1/record", b"second").unwrap();
        p.put_meta("backups/b2/record", b"other").unwrap();
        p.put_meta("keys/6162", &random(3000, 9)).unwrap();
        p.put_meta("store.json", b"{}").unwrap();
        assert_eq!(
            p.get_meta("backups/b1/record").unwrap().as_deref(),
            Some(&b"second"[..]),
            "{name}: put replaces"
        );
        assert_eq!(
            p.list_meta("backups/").unwrap(),
            vec![
                "backups/b1/manifest-000000",
                "backups/b1/record",
                "backups/b2/record"
            ],
            "{name}"
        );
        assert_eq!(
            p.list_meta("backups/b2/").unwrap(),
            vec!["backups/b2/record"]
        );
        assert_eq!(p.list_meta("keys/").unwrap(), vec!["keys/6162"], "{name}");
        assert_eq!(p.get_meta("keys/6162").unwrap().unwrap(), random(3000, 9));
        p.delete_meta("backups/b1/record").unwrap();
        p.delete_meta("backups/b1/record").unwrap();
        assert_eq!(p.get_meta("backups/b1/record").unwrap(), None, "{name}");
        assert!(
            p.list().unwrap().is_empty(),
            "{name}: catalog objects are not packs"
        );
        for bad in ["../escape", "/abs", "a//b", ".hidden", "keys/x y"] {
            let e = p.put_meta(bad, b"x").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name}: {bad}");
        }
    }
}
