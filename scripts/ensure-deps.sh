#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test blockvault: libclang (for
# librocksdb-sys's bindgen), a C++ compiler, nbdinfo (libnbd-bin, for the CBT tests),
# python-cinderclient (the real `cinder` command the Cinder REST tests drive) in a virtualenv, and
# `promtool` (which checks the daemon's /metrics scrape) unpacked from Debian's `prometheus`
# package. Idempotent; does nothing when everything is present.
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
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# nbdinfo reads a qcow2 image's dirty bitmap over NBD in the CBT tests (which skip without it).
command -v nbdinfo >/dev/null || missing+=(libnbd-bin)

if ((${#missing[@]})); then
  echo "ensure-deps: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) == 0 ]] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# python-cinderclient, pinned, in its own virtualenv (PyPI): `BV_CINDER` in scripts/test.sh.
CINDER_VENV="${BV_CINDERCLIENT_VENV:-$HOME/.cache/blockvault/cinderclient}"
CINDERCLIENT_VERSION=9.10.0
if [[ ! -x $CINDER_VENV/bin/cinder ]] ||
  [[ $("$CINDER_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("python-cinderclient"))' 2>/dev/null) != "$CINDERCLIENT_VERSION" ]]; then
  echo "ensure-deps: installing python-cinderclient $CINDERCLIENT_VERSION into $CINDER_VENV" >&2
  python3 -m venv "$CINDER_VENV"
  "$CINDER_VENV/bin/pip" install -q --disable-pip-version-check "python-cinderclient==$CINDERCLIENT_VERSION"
fi

# promtool, from Debian's `prometheus` package, unpacked (not installed: installing would also
# start a Prometheus server on the machine): `BV_PROMTOOL` in scripts/test.sh.
PROMTOOL_DIR="${BV_PROMTOOL_DIR:-$HOME/.cache/blockvault/promtool}"
if [[ ! -x $PROMTOOL_DIR/usr/bin/promtool ]]; then
  echo "ensure-deps: unpacking promtool from Debian's prometheus package into $PROMTOOL_DIR" >&2
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    SUDO=""
    [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    (cd "$tmp" && apt-get download prometheus >/dev/null)
  fi
  mkdir -p "$PROMTOOL_DIR"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$PROMTOOL_DIR"
  rm -rf "$tmp"
fi
