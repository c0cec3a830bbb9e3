//! CBT incrementals: given the extents that changed since the parent, a backup reads only those
//! (widened to the parent's chunk boundaries) and restores byte-exact, storing no more than an
//! incremental that reads everything; a sampling check catches a CBT source that missed a write.
mod common;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use blockvault_core::{BackupRecord, BackupState, ManifestEntry, VolumeId};
use blockvault_engine::{BackupOptions, Cbt, Error, OnMismatch};
use common::*;
use rand::{Rng, RngCore, SeedableRng};

/// Writes `n` random runs (and, with `zeros`, some runs of zeros) into `data`; returns the
/// written ranges, as a CBT source reports them.
fn scribble(data: &mut [u8], n: usize, seed: u64, zeros: bool) -> Vec<(u64, u64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut written = Vec::new();
    for _ in 0..n {
        let len = if rng.gen_bool(0.2) {
            rng.gen_range(64 << 10..1 << 20)
        } else {
            rng.gen_range(1..16 << 10)
        };
        let at = rng.gen_range(0..data.len() - len);
        if zeros && rng.gen_bool(0.2) {
            data[at..at + len].fill(0);
        } else {
            rng.fill_bytes(&mut data[at..at + len]);
        }
        written.push((at as u64, len as u64));
    }
    written
}

fn plain_json(extents: &[(u64, u64)]) -> String {
    let v: Vec<_> = extents
        .iter()
        .map(|(o, l)| serde_json::json!({"offset": o, "length": l}))
        .collect();
    serde_json::to_string(&v).unwrap()
}

fn rbd_json(extents: &[(u64, u64)]) -> String {
    let v: Vec<_> = extents
        .iter()
        .enumerate()
        .map(|(i, (o, l))| {
            let exists = if i % 3 == 0 { "false" } else { "true" };
            serde_json::json!({"offset": o, "length": l, "exists": exists})
        })
        .collect();
    serde_json::to_string(&v).unwrap()
}

/// What `nbdinfo --map --json` prints for a dirty bitmap of `granularity`: the whole disk, in
/// clean (type 0) and dirty (type 1) runs.
fn nbd_json(extents: &[(u64, u64)], size: u64, granularity: u64) -> String {
    let mut dirty = vec![false; size.div_ceil(granularity) as usize];
    for (o, l) in extents {
        for g in o / granularity..=(o + l - 1) / granularity {
            dirty[g as usize] = true;
        }
    }
    let mut v = Vec::new();
    let mut i = 0;
    while i < dirty.len() {
        let j = (i..dirty.len())
            .find(|&j| dirty[j] != dirty[i])
            .unwrap_or(dirty.len());
        let offset = i as u64 * granularity;
        let end = (j as u64 * granularity).min(size);
        let (ty, desc) = if dirty[i] { (1, "dirty") } else { (0, "clean") };
        v.push(
            serde_json::json!({"offset": offset, "length": end - offset, "type": ty,
                                  "description": desc}),
        );
        i = j;
    }
    serde_json::to_string(&v).unwrap()
}

fn cbt(json: &str, sample: f64, on_mismatch: OnMismatch) -> Cbt {
    Cbt {
        extents: json.as_bytes().into(),
        sample,
        on_mismatch,
    }
}

fn backup_with(
    ts: &TestStore,
    volume: &str,
    src: &Path,
    encrypt: bool,
    c: Option<Cbt>,
) -> blockvault_engine::Result<BackupRecord> {
    let mut o = BackupOptions::new(VolumeId::new(volume).unwrap(), src);
    o.incremental = true;
    o.encrypt = encrypt;
    o.cbt = c;
    ts.engine().backup(o)
}

fn entries(ts: &TestStore, rec: &BackupRecord) -> Vec<ManifestEntry> {
    let mut v: Vec<ManifestEntry> = Vec::new();
    for b in ts.engine().store().manifest(&rec.id) {
        for e in b.unwrap().entries {
            // Merge holes across blocks so manifests compare by content.
            match (v.last_mut(), e) {
                (Some(ManifestEntry::Hole { len: a }), ManifestEntry::Hole { len: b }) => *a += b,
                _ => v.push(e),
            }
        }
    }
    v
}

/// A CBT store and a re-read store, each with a full backup of `base`.
fn pair(base: &[u8], encrypt: bool) -> (TestStore, TestStore) {
    let (a, b) = (TestStore::new(), TestStore::new());
    for ts in [&a, &b] {
        let src = ts.path("v.img");
        write_file(&src, base);
        ts.backup("v", &src, false, encrypt);
    }
    (a, b)
}

#[test]
fn cbt_incremental_of_random_data_equals_a_full_reread() {
    let base = random_bytes(48 << 20, 1);
    let (c, r) = pair(&base, false);
    let mut new = base.clone();
    let written = scribble(&mut new, 40, 2, false);
    for ts in [&c, &r] {
        write_file(&ts.path("v.img"), &new);
    }
    let json = plain_json(&written);
    let rc = backup_with(
        &c,
        "v",
        &c.path("v.img"),
        false,
        Some(cbt(&json, 0.0, OnMismatch::Fail)),
    )
    .unwrap();
    let rr = backup_with(&r, "v", &r.path("v.img"), false, None).unwrap();
    assert!(
        c.restore_bytes(rc.id) == new,
        "CBT backup does not restore byte-exact"
    );
    // The chunking met the parent's again after every extent: the same manifest as a re-read.
    assert_eq!(entries(&c, &rc), entries(&r, &rr));
    assert_eq!(rc.stored_bytes, rr.stored_bytes);
    let stats = rc.cbt.clone().expect("CBT stats recorded");
    assert_eq!(stats.source, "plain");
    assert!(!stats.full_read && stats.mismatch_offset.is_none());
    assert!(stats.changed_bytes > 0 && stats.read_bytes >= stats.changed_bytes);
    assert!(
        stats.read_bytes < new.len() as u64 / 3,
        "read {} of {} bytes",
        stats.read_bytes,
        new.len()
    );
    // The stats survive in the catalog.
    assert_eq!(c.engine().get(&rc.id).unwrap().cbt, Some(stats));
    assert!(rr.cbt.is_none());
}

#[test]
fn cbt_incremental_of_mixed_sparse_data_restores_and_stores_no_more() {
    // A sparse image: data regions and file holes, zeros and compressible runs inside them.
    let size = 64u64 << 20;
    let write_sparse = |path: &Path, data: &[u8]| {
        let mut f = std::fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        for (i, block) in data.chunks(1 << 20).enumerate() {
            if block.iter().any(|&b| b != 0) {
                f.seek(SeekFrom::Start((i as u64) << 20)).unwrap();
                f.write_all(block).unwrap();
            }
        }
    };
    let mut base = mixed_bytes(size as usize, 3);
    base[8 << 20..20 << 20].fill(0);
    for (json_form, seed, encrypt) in [("plain", 4, false), ("rbd", 5, true), ("nbd", 6, false)] {
        let (c, r) = (TestStore::new(), TestStore::new());
        for ts in [&c, &r] {
            write_sparse(&ts.path("v.img"), &base);
            ts.backup("v", &ts.path("v.img"), false, encrypt);
        }
        let mut new = base.clone();
        let written = scribble(&mut new, 60, seed, true);
        for ts in [&c, &r] {
            write_sparse(&ts.path("v.img"), &new);
        }
        let json = match json_form {
            "plain" => plain_json(&written),
            "rbd" => rbd_json(&written),
            _ => nbd_json(&written, size, 64 << 10),
        };
        let c_opts = cbt(&json, 0.05, OnMismatch::Fail);
        let rc = backup_with(&c, "v", &c.path("v.img"), encrypt, Some(c_opts)).unwrap();
        let rr = backup_with(&r, "v", &r.path("v.img"), encrypt, None).unwrap();
        assert!(c.restore_bytes(rc.id) == new, "{json_form}: not byte-exact");
        assert!(
            rc.stored_bytes <= rr.stored_bytes,
            "{json_form}: CBT stored {} bytes, the re-read {}",
            rc.stored_bytes,
            rr.stored_bytes
        );
        let stats = rc.cbt.unwrap();
        assert!(stats.sampled_bytes > 0, "{json_form}: nothing sampled");
        assert_eq!(stats.mismatch_offset, None, "{json_form}");
        assert!(
            stats.read_bytes < size / 2,
            "{json_form}: read {}",
            stats.read_bytes
        );
    }
}

#[test]
fn a_grown_and_a_shrunk_volume_restore_byte_exact() {
    let base = mixed_bytes(16 << 20, 7);
    for new_len in [20 << 20, (12 << 20) + 4321] {
        let (c, _r) = pair(&base, false);
        let mut new = base.clone();
        new.resize(new_len, 0);
        if new_len > base.len() {
            rand::rngs::StdRng::seed_from_u64(8).fill_bytes(&mut new[base.len()..]);
        }
        let written = scribble(&mut new, 10, 9, false);
        write_file(&c.path("v.img"), &new);
        let json = plain_json(&written);
        let rec = backup_with(
            &c,
            "v",
            &c.path("v.img"),
            false,
            Some(cbt(&json, 1.0, OnMismatch::Fail)),
        )
        .unwrap();
        assert_eq!(rec.size, new_len as u64);
        assert!(
            c.restore_bytes(rec.id) == new,
            "size {new_len}: not byte-exact"
        );
    }
}

#[test]
fn a_missed_write_is_caught_by_sampling_and_fails_or_falls_back() {
    let base = random_bytes(16 << 20, 10);
    let (c, _r) = pair(&base, false);
    let mut new = base.clone();
    let written = scribble(&mut new[..12 << 20], 8, 11, false);
    // A write far from the others that the CBT source "forgets".
    new[15 << 20..(15 << 20) + 5000].fill(0xAB);
    write_file(&c.path("v.img"), &new);
    let json = plain_json(&written);

    let e = backup_with(
        &c,
        "v",
        &c.path("v.img"),
        false,
        Some(cbt(&json, 1.0, OnMismatch::Fail)),
    )
    .unwrap_err();
    assert!(matches!(e, Error::CbtMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("changed_extents") && msg.contains("missed a change"),
        "{msg}"
    );
    let failed = c.engine().list().unwrap().into_iter().last().unwrap();
    assert_eq!(failed.state, BackupState::Error);
    let stats = failed.cbt.expect("the failed record says what was sampled");
    let at = stats.mismatch_offset.expect("mismatch recorded");
    assert!(
        ((15 << 20) - (1 << 20)..(15 << 20) + 5000).contains(&at),
        "{at}"
    );
    assert!(stats.sampled_bytes > 0);

    // Without the check the lie goes unnoticed (the test can fail): the backup is wrong.
    let blind = backup_with(
        &c,
        "v",
        &c.path("v.img"),
        false,
        Some(cbt(&json, 0.0, OnMismatch::Fail)),
    )
    .unwrap();
    assert!(c.restore_bytes(blind.id) != new);
    c.engine().delete(&blind.id).unwrap();

    // Falling back to a full read gives a correct backup and says so.
    let rec = backup_with(
        &c,
        "v",
        &c.path("v.img"),
        false,
        Some(cbt(&json, 1.0, OnMismatch::FullRead)),
    )
    .unwrap();
    assert!(c.restore_bytes(rec.id) == new);
    let stats = rec.cbt.unwrap();
    assert!(stats.full_read);
    assert!(stats.mismatch_offset.is_some());
    assert_eq!(stats.read_bytes, new.len() as u64);
}

#[test]
fn bad_extents_are_refused_naming_the_field_before_anything_is_written() {
    let base = random_bytes(4 << 20, 12);
    let (c, _r) = pair(&base, false);
    let src = c.path("v.img");
    let before = c.engine().list().unwrap().len();
    for (json, want) in [
        ("not json", "not JSON"),
        (
            r#"[{"offset": 0, "length": 99999999}]"#,
            "past the volume's size",
        ),
        (r#"[{"offset": 0, "length": 0}]"#, "length must be positive"),
        (r#"{"offset": 0}"#, "JSON array"),
        (
            r#"[{"offset": 0, "length": 1, "colour": 1}]"#,
            "unknown key",
        ),
    ] {
        let e = backup_with(&c, "v", &src, false, Some(cbt(json, 0.0, OnMismatch::Fail)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("changed_extents") && e.contains(want),
            "{json}: {e}"
        );
    }
    let e = backup_with(&c, "v", &src, false, Some(cbt("[]", 2.0, OnMismatch::Fail)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cbt_sample"), "{e}");
    // A full backup has no parent to take the unchanged regions from.
    let mut o = BackupOptions::new(VolumeId::new("v").unwrap(), &src);
    o.cbt = Some(cbt("[]", 0.0, OnMismatch::Fail));
    let e = c.engine().backup(o).unwrap_err().to_string();
    assert!(
        e.contains("changed_extents") && e.contains("incremental"),
        "{e}"
    );
    assert_eq!(
        c.engine().list().unwrap().len(),
        before,
        "a refused backup left a record"
    );
}

#[test]
fn no_changes_reads_nothing_and_takes_the_parent_whole() {
    let base = mixed_bytes(24 << 20, 13);
    let (c, _r) = pair(&base, true);
    let parent = c
        .engine()
        .latest(&VolumeId::new("v").unwrap())
        .unwrap()
        .unwrap();
    let rec = backup_with(
        &c,
        "v",
        &c.path("v.img"),
        true,
        Some(cbt("[]", 0.0, OnMismatch::Fail)),
    )
    .unwrap();
    assert_eq!(rec.stored_bytes, 0);
    assert_eq!(rec.cbt.as_ref().unwrap().read_bytes, 0);
    assert_eq!(entries(&c, &rec), entries(&c, &parent));
    assert!(c.restore_bytes(rec.id) == base);
}

#[test]
fn parent_chunks_are_taken_unlooked_only_while_the_parent_is_available() {
    use blockvault_core::{BackupId, ChunkId};
    use blockvault_store::RefBatch;
    let base = random_bytes(1 << 20, 14);
    let (c, _r) = pair(&base, false);
    let parent = c
        .engine()
        .latest(&VolumeId::new("v").unwrap())
        .unwrap()
        .unwrap();
    let store = c.engine().store();
    // A chunk no store holds, flagged as the parent's: reported present only while the parent
    // is available (its references would keep a real one of its chunks stored).
    let batch = || RefBatch {
        chunks: vec![ChunkId([7; 32]), ChunkId([8; 32])],
        blocks: Vec::new(),
        parent: Some((parent.id, vec![true, false])),
    };
    let child = BackupId::new();
    assert_eq!(store.add_refs(&child, &batch()).unwrap(), [true, false]);
    c.engine().delete(&parent.id).unwrap();
    assert_eq!(store.add_refs(&child, &batch()).unwrap(), [false, false]);
}
