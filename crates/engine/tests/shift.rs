//! Shift resistance: one byte inserted at offset 0 of a 256 MiB random volume.
mod common;
use common::*;

#[test]
fn one_byte_insert_at_start_stores_under_two_percent() {
    let ts = TestStore::new();
    let size = 256 << 20;
    let data = random_bytes(size, 77);
    let src = ts.path("v.img");
    write_file(&src, &data);
    let full = ts.backup("v", &src, false, true);

    let mut shifted = Vec::with_capacity(size + 1);
    shifted.push(0xA5);
    shifted.extend_from_slice(&data);
    write_file(&src, &shifted);
    let inc = ts.backup("v", &src, true, true);
    let pct = inc.stored_bytes as f64 * 100.0 / shifted.len() as f64;
    eprintln!(
        "incremental after 1-byte insert stored {} bytes ({pct:.3} %)",
        inc.stored_bytes
    );
    assert!(pct < 2.0, "incremental stored {pct:.3} % of the volume");

    assert!(
        ts.restore_bytes(full.id) == data,
        "full backup did not round-trip"
    );
    assert!(
        ts.restore_bytes(inc.id) == shifted,
        "incremental did not round-trip"
    );
}
