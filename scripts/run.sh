#!/usr/bin/env bash
# Builds (installing libclang-dev if missing) and runs the daemon, blockvaultd, in the foreground.
# With no arguments it uses the built-in default config: data in ./blockvault-data, listening on
# 127.0.0.1:8750, an admin token written to ./blockvault-data/admin.token (mode 0600).
# Arguments are passed on, e.g. `bash scripts/run.sh --config config/blockvaultd.toml`.
# SIGTERM or Ctrl-C stop it cleanly.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
(cd "$root" && bash scripts/ensure-deps.sh && cargo build --release --locked -p blockvault-daemon -p blockvault-cli)
exec "${CARGO_TARGET_DIR:-$root/target}/release/blockvaultd" "$@"
