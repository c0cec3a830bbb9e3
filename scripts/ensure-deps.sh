#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build blockvault: libclang (for librocksdb-sys's
# bindgen) and a C++ compiler. Idempotent; does nothing when everything is present.
set -euo pipefail

# bindgen loads libclang through clang-sys, which looks for `libclang.so`, `libclang-*.so` and
# `libclang.so.*` in LIBCLANG_PATH, `llvm-config --libdir` and the usual library directories.
# `libclang-cpp.so.N` (the C++ API, shipped on the machine image as libclang-cpp14) is not
# libclang and does not count.
is_libclang() {
  local name
  name=$(basename "$1")
  [[ $name == libclang-cpp* ]] && return 1
  [[ $name == libclang.so || $name == libclang.so.* || $name =~ ^libclang-[0-9.]+\.so$ ]]
}

have_libclang() {
  local dirs=() d f
  [[ -n ${LIBCLANG_PATH:-} ]] && dirs+=("$LIBCLANG_PATH")
  command -v llvm-config >/dev/null && dirs+=("$(llvm-config --libdir)")
  dirs+=(/usr/lib/llvm-*/lib /usr/local/llvm*/lib /usr/lib /usr/lib64 /usr/local/lib
    /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu)
  for d in "${dirs[@]}"; do
    [[ -d $d ]] || continue
    for f in "$d"/libclang*.so*; do
      [[ -e $f ]] && is_libclang "$f" && return 0
    done
  done
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
