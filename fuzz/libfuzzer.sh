#!/usr/bin/env bash
# Runs every libFuzzer target of fuzz/ (the core decoders; the same checks as the `cargo test`
# fuzzer, from the same corpus) for SECS seconds each, and prints one summary line per target.
#
#   cargo install cargo-fuzz        # once
#   bash fuzz/libfuzzer.sh 120      # 2 minutes per target
#
# The stable toolchain runs cargo-fuzz with RUSTC_BOOTSTRAP=1. Builds go to
# $BV_FUZZ_TARGET_DIR (default ~/.cache/blockvault/fuzz-target: their flags differ from the
# workspace's, so they never share its target directory). New inputs and crash artifacts go under
# $BV_FUZZ_WORK (default $TMPDIR/blockvault-libfuzzer); the checked-in corpus is only read.
# Exits non-zero if any target crashed.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
work="${BV_FUZZ_WORK:-${TMPDIR:-/tmp}/blockvault-libfuzzer}"
target_dir="${BV_FUZZ_TARGET_DIR:-$HOME/.cache/blockvault/fuzz-target}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "libfuzzer.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
  exit 2
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build --target-dir "$target_dir"
failed=0
for t in $(cargo fuzz list); do
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  set +e
  cargo fuzz run --target-dir "$target_dir" "$t" "$work/$t/corpus" "corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" \
    >"$work/$t/log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$t/log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$work/$t/log" | tail -1 | grep -o '[0-9]*')
  crashes=$(find "$work/$t/artifacts" -type f | wc -l)
  echo "libfuzzer-summary target=$t secs=$secs execs=${execs:-?} cov=${cov:-?} crashes=$crashes exit=$rc log=$work/$t/log"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    grep -E 'panicked at|ERROR: |SUMMARY' "$work/$t/log" | head -5 || true
  fi
done
exit "$failed"
