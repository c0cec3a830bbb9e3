//! Byte-exact round trips of many shapes of volume, encrypted and not.
mod common;
use blockvault_core::{BackupState, ChunkerParams};
use blockvault_engine::{Error, RestoreOptions};
use blockvault_store::StoreConfig;
use common::*;

fn roundtrip(ts: &TestStore, name: &str, data: &[u8], encrypt: bool) {
    let src = ts.path(&format!("{name}.img"));
    write_file(&src, data);
    let rec = ts.backup(name, &src, false, encrypt);
    assert_eq!(rec.size, data.len() as u64, "{name}");
    assert_eq!(rec.state, BackupState::Available);
    assert_eq!(rec.encrypted, encrypt);
    assert_eq!(rec.encryption_key_id.is_some(), encrypt);
    let back = ts.restore_bytes(rec.id);
    assert!(
        back == data,
        "{name} (encrypt={encrypt}) did not round-trip"
    );
}

#[test]
fn odd_shapes_roundtrip_byte_exact() {
    let ts = TestStore::new();
    for encrypt in [false, true] {
        let e = if encrypt { "enc" } else { "plain" };
        roundtrip(&ts, &format!("empty-{e}"), &[], encrypt);
        roundtrip(&ts, &format!("one-{e}"), &[0x5a], encrypt);
        roundtrip(&ts, &format!("onezero-{e}"), &[0], encrypt);
        roundtrip(
            &ts,
            &format!("mib7-{e}"),
            &random_bytes((1 << 20) + 7, 1),
            encrypt,
        );
        roundtrip(&ts, &format!("zeros-{e}"), &vec![0u8; 3 << 20], encrypt);
        roundtrip(
            &ts,
            &format!("random-{e}"),
            &random_bytes(9 << 20, 2),
            encrypt,
        );
        roundtrip(
            &ts,
            &format!("mixed-{e}"),
            &mixed_bytes(24 << 20, 3),
            encrypt,
        );
    }
}

#[test]
fn size_not_a_multiple_of_any_chunk_size_roundtrips() {
    // A prime number of bytes with small chunks: many chunks, last one ragged.
    let config = StoreConfig {
        chunker: ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
        },
        ..StoreConfig::default()
    };
    let ts = TestStore::with_config(config);
    roundtrip(&ts, "prime", &mixed_bytes(5_000_011, 4), false);
    roundtrip(&ts, "prime-enc", &mixed_bytes(5_000_011, 4), true);
}

#[test]
fn zero_chunks_are_holes_and_restore_sparse() {
    let ts = TestStore::new();
    let mut data = vec![0u8; 32 << 20];
    data[(16 << 20)..(16 << 20) + 100_000].copy_from_slice(&random_bytes(100_000, 9));
    let src = ts.path("sparse.img");
    write_file(&src, &data);
    let rec = ts.backup("sparse", &src, false, false);
    assert!(rec.hole_bytes >= 30 << 20, "hole bytes {}", rec.hole_bytes);
    assert!(rec.stored_bytes < 1 << 20, "stored {}", rec.stored_bytes);
    let out = ts.path("sparse.out");
    ts.engine()
        .restore(RestoreOptions::new(rec.id, &out))
        .unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        allocated < 4 << 20,
        "restored file is not sparse: {allocated} bytes allocated"
    );
}

#[test]
fn restore_over_existing_file_zeroes_old_data_and_refuses_small_targets() {
    let ts = TestStore::new();
    let mut data = random_bytes(4 << 20, 5);
    data[(1 << 20)..(3 << 20)].fill(0);
    let src = ts.path("v.img");
    write_file(&src, &data);
    let rec = ts.backup("v", &src, false, false);

    // An existing target full of other bytes ends up identical.
    let out = ts.path("existing.img");
    write_file(&out, &random_bytes(4 << 20, 6));
    ts.engine()
        .restore(RestoreOptions::new(rec.id, &out))
        .unwrap();
    assert!(std::fs::read(&out).unwrap() == data);

    // A smaller target is refused and left untouched.
    let small = ts.path("small.img");
    let small_data = random_bytes(1 << 20, 7);
    write_file(&small, &small_data);
    let err = ts
        .engine()
        .restore(RestoreOptions::new(rec.id, &small))
        .unwrap_err();
    assert!(matches!(err, Error::TargetTooSmall { .. }), "{err}");
    assert!(err.to_string().contains("needs"), "{err}");
    assert_eq!(std::fs::read(&small).unwrap(), small_data);
}

#[test]
fn incremental_records_parent_and_is_self_contained() {
    let mut ts = TestStore::new();
    let src = ts.path("v.img");
    let mut data = mixed_bytes(16 << 20, 10);
    write_file(&src, &data);
    let full = ts.backup("v", &src, false, false);
    data[5 << 20..(5 << 20) + 4096].copy_from_slice(&random_bytes(4096, 11));
    write_file(&src, &data);
    let inc = ts.backup("v", &src, true, false);
    assert!(inc.is_incremental);
    assert_eq!(inc.parent_id, Some(full.id));
    assert!(
        inc.stored_bytes < 1 << 20,
        "incremental stored {}",
        inc.stored_bytes
    );
    assert!(inc.object_count > 0);
    // Deleting the parent does not break the incremental, even after GC.
    ts.engine().delete(&full.id).unwrap();
    ts.engine().gc().unwrap();
    assert!(ts.restore_bytes(inc.id) == data);
    // An incremental with no full backup of the volume is refused.
    let o = {
        let mut o = blockvault_engine::BackupOptions::new(
            blockvault_core::VolumeId::new("other").unwrap(),
            &src,
        );
        o.incremental = true;
        o
    };
    assert!(matches!(ts.engine().backup(o), Err(Error::NoParent(_))));
    // Records survive a reopen.
    ts.open(Default::default()).unwrap();
    assert_eq!(ts.engine().get(&inc.id).unwrap(), inc);
}

#[test]
fn repeated_chunks_are_stored_once_even_across_pack_seals() {
    // Small packs: repeats of a chunk arrive while its pack is still with the sealer.
    let ts = TestStore::with_config(StoreConfig {
        pack_target_size: 1 << 20,
        ..StoreConfig::default()
    });
    let block = random_bytes(6 << 20, 12);
    let data = block.repeat(4);
    let src = ts.path("rep.img");
    write_file(&src, &data);
    let rec = ts.backup("rep", &src, false, false);
    let distinct: std::collections::HashSet<_> = ts
        .engine()
        .store()
        .manifest(&rec.id)
        .flat_map(|b| b.unwrap().entries)
        .filter_map(|e| match e {
            blockvault_core::ManifestEntry::Chunk { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(
        rec.new_chunks,
        distinct.len() as u64,
        "a chunk was stored twice"
    );
    assert!(rec.stored_bytes < (7 << 20), "stored {}", rec.stored_bytes);
    assert!(ts.restore_bytes(rec.id) == data);
}

#[test]
fn sparse_source_file_holes_are_skipped_and_restore_exactly() {
    use std::os::unix::fs::FileExt;
    let ts = TestStore::new();
    let src = ts.path("thin.img");
    let size: u64 = (256 << 20) + 12345;
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(size).unwrap();
    let mut expect = vec![0u8; size as usize];
    // Data at unaligned offsets, one region touching the end of the file.
    for (i, at) in [5_000u64, 40 << 20, (100 << 20) + 777, size - 70_000]
        .into_iter()
        .enumerate()
    {
        let d = random_bytes(if i == 3 { 70_000 } else { 3 << 20 }, 60 + i as u64);
        f.write_all_at(&d, at).unwrap();
        expect[at as usize..at as usize + d.len()].copy_from_slice(&d);
    }
    drop(f);
    let source = blockvault_engine::device::Source::open(&src).unwrap();
    let regions: Vec<_> = source.data_regions().map(|r| r.unwrap()).collect();
    eprintln!("data regions: {regions:?}");
    assert!(!regions.is_empty());
    for enc in [false, true] {
        let rec = ts.backup(&format!("thin-{enc}"), &src, false, enc);
        assert_eq!(rec.size, size);
        assert!(rec.hole_bytes > 200 << 20, "hole bytes {}", rec.hole_bytes);
        assert!(
            ts.restore_bytes(rec.id) == expect,
            "sparse source did not round-trip"
        );
    }
}

/// The restore writes 4 MiB segments (with O_DIRECT where possible): holes that cross segment
/// boundaries, a segment that is all hole, a ragged last block, and targets that are new,
/// existing, and larger than the backup (whose bytes beyond the backup stay untouched).
#[test]
fn restore_segments_holes_and_larger_targets() {
    const SEG: usize = 4 << 20;
    let config = StoreConfig {
        chunker: ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
        },
        ..StoreConfig::default()
    };
    let ts = TestStore::with_config(config);
    let size = 4 * SEG + 12_345;
    let mut data = mixed_bytes(size, 21);
    data[SEG - 50_000..SEG + 70_000].fill(0); // across the first boundary
    data[2 * SEG - 100_000..3 * SEG + 300_000].fill(0); // a whole segment and parts of two
    data[size - 40_000..].fill(0); // the ragged end
    let src = ts.path("seg.img");
    write_file(&src, &data);
    for encrypt in [false, true] {
        let rec = ts.backup(&format!("seg-{encrypt}"), &src, false, encrypt);
        assert!(rec.hole_bytes > SEG as u64, "hole bytes {}", rec.hole_bytes);

        // A new file: exact, and the all-hole segment is not allocated.
        let out = ts.path(&format!("seg-{encrypt}.new"));
        ts.engine()
            .restore(RestoreOptions::new(rec.id, &out))
            .unwrap();
        assert!(std::fs::read(&out).unwrap() == data, "new target differs");
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
        assert!(
            allocated <= (size - SEG) as u64,
            "restored file is not sparse: {allocated} bytes allocated of {size}"
        );

        // An existing file of the same size, full of other bytes.
        let same = ts.path(&format!("seg-{encrypt}.same"));
        write_file(&same, &random_bytes(size, 22));
        ts.engine()
            .restore(RestoreOptions::new(rec.id, &same))
            .unwrap();
        assert!(
            std::fs::read(&same).unwrap() == data,
            "existing target differs"
        );

        // A larger existing file: the backup's bytes, then the old bytes untouched.
        let big = ts.path(&format!("seg-{encrypt}.big"));
        let mut old = vec![0xAAu8; size + 10_000];
        old[size..].copy_from_slice(&random_bytes(10_000, 23));
        write_file(&big, &old);
        ts.engine()
            .restore(RestoreOptions::new(rec.id, &big))
            .unwrap();
        let got = std::fs::read(&big).unwrap();
        assert_eq!(got.len(), size + 10_000);
        assert!(
            got[..size] == data[..],
            "larger target: restored part differs"
        );
        assert!(
            got[size..] == old[size..],
            "larger target: bytes beyond the backup changed"
        );
    }
}
