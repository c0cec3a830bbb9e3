#!/usr/bin/env bash
# The project's test command (README, and CI via .ci/run): installs missing system packages,
# checks formatting, then builds and runs every test in release mode (one profile for tests,
# benches and the binaries, so RocksDB's C++ is compiled once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
cargo fmt --all -- --check
cargo test --release --workspace --locked "$@"
