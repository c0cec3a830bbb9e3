#!/usr/bin/env bash
# The project's test command (README, and CI via .ci/run): installs missing system packages,
# checks formatting, then builds and runs every test in release mode (one profile for tests,
# benches and the binaries, so RocksDB's C++ is compiled once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
export BV_CINDER="${BV_CINDERCLIENT_VENV:-$HOME/.cache/blockvault/cinderclient}/bin/cinder"
export BV_PROMTOOL="${BV_PROMTOOL_DIR:-$HOME/.cache/blockvault/promtool}/usr/bin/promtool"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "test.sh: rustfmt is not installed; skipping the format check" >&2
fi
cargo test --release --workspace --locked "$@"
