#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build blockvault: libclang (for librocksdb-sys's
# bindgen) and a C++ compiler. Idempotent; does nothing when everything is present.
set -euo pipefail

have_libclang() {
  ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' && return 0
  compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null && return 0
  return 1
}

missing=()
have_libclang || missing+=(libclang-dev)
command -v g++ >/dev/null || missing+=(g++)
command -v losetup >/dev/null || missing+=(mount)

if ((${#missing[@]})); then
  echo "ensure-deps: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) == 0 ]] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
