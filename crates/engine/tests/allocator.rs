//! `memory::tune_allocator`: large buffers freed between small long-lived allocations leave the
//! resident set, also after a large buffer was freed before (which, untuned, raises glibc's mmap
//! threshold so that later ones come from an arena and stay resident).
//!
//! The only test of its binary, so nothing else moves the resident set while it measures.

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn freed_large_buffers_leave_the_resident_set() {
    assert!(blockvault_engine::memory::tune_allocator());
    // A backup's first large buffer (the chunker's 8 MiB), mapped and freed.
    drop(std::hint::black_box(vec![1u8; 8 << 20]));
    let before = rss_kib();
    let mut big = Vec::new();
    let mut small = Vec::new();
    for i in 0..16u8 {
        big.push(std::hint::black_box(vec![i | 1; 4 << 20]));
        small.push(std::hint::black_box(vec![i; 512]));
    }
    let peak = rss_kib();
    drop(big);
    let after = rss_kib();
    assert!(
        peak.saturating_sub(before) >= 60 << 10,
        "the buffers were resident: {before} -> {peak} KiB"
    );
    assert!(
        after.saturating_sub(before) < 8 << 10,
        "freed buffers stayed resident: {before} KiB before, {peak} at the peak, {after} after"
    );
    drop(small);
}
