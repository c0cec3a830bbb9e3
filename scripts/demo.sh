#!/usr/bin/env bash
# End-to-end demo on a fresh machine: builds blockvault, makes a 256 MiB ext4 sample image, backs
# it up (encrypted), changes it, takes an incremental, restores both and compares byte for byte.
# DEMO_DIR=dir keeps the work files there (default: a new temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
cargo build --release --locked -p blockvault-cli
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/blockvault"
W="${DEMO_DIR:-$(mktemp -d)}"
mkdir -p "$W"
echo "== work dir: $W"

img="$W/sample.img"
rm -f "$img"
truncate -s 256M "$img"
if ! mkfs.ext4 -q -F -d /usr/share/doc "$img" 2>/dev/null; then
  # No mkfs.ext4 (or the tree did not fit): random data, zeros and text instead.
  head -c 64M /dev/urandom | dd of="$img" conv=notrunc status=none
  yes "blockvault sample text" | head -c 64M | dd of="$img" bs=1M seek=128 conv=notrunc status=none
fi

rm -rf "$W/store" "$W/master.key" "$W"/restore-*.img
set -x
"$BIN" local init --store "$W/store" --key-file "$W/master.key"
full=$("$BIN" local backup --store "$W/store" --volume sample --source "$img" --encrypt)
cp --sparse=always "$img" "$W/sample-v1.img"
head -c 8M /dev/urandom | dd of="$img" bs=1M seek=100 conv=notrunc status=none
incr=$("$BIN" local backup --store "$W/store" --volume sample --source "$img" --incremental --json \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["id"]); print("stored", r["stored_bytes"], "bytes of", r["size"], file=sys.stderr)')
"$BIN" local list --store "$W/store"
"$BIN" local restore --store "$W/store" --backup "$full" --target "$W/restore-full.img"
"$BIN" local restore --store "$W/store" --backup "$incr" --target "$W/restore-incr.img"
cmp "$W/sample-v1.img" "$W/restore-full.img"
cmp "$img" "$W/restore-incr.img"
"$BIN" local verify --store "$W/store"
set +x
echo "== OK: both restores are byte-identical to their sources"
