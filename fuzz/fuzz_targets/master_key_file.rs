//! libFuzzer target `master_key_file`: the same check as the `cargo test` fuzzer's (fuzz/core_targets.rs).
#![no_main]
#[path = "../core_targets.rs"]
mod core_targets;
#[path = "../harness.rs"]
mod harness;

use std::sync::OnceLock;

static FIXTURE: OnceLock<core_targets::Fixture> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let fx = FIXTURE.get_or_init(core_targets::Fixture::new);
    let _ = core_targets::check_master_key_file(fx, data, &mut harness::Notes::default());
});
