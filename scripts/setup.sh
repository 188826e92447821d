#!/usr/bin/env bash
# Installs everything Berth needs on a Debian 12 host, as root, and is cheap
# to re-run: each step checks first and does nothing when already satisfied.
#   - Debian packages (runtime peers, protos for stub generation, test tools)
#   - a virtualenv in .venv with Berth installed editable plus dev tools
#   - the generated protobuf/gRPC stubs under src/berth/api
#   - links for berthd, berth and the shim on PATH (/usr/local/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc
  containerd runc docker-registry busybox-static skopeo
  golang-github-containerd-containerd-dev golang-github-gogo-protobuf-dev
  golang-github-containerd-cgroups-dev
  containernetworking-plugins iproute2 iptables criu debootstrap
  util-linux procps openssl ca-certificates
)

log() { printf '[setup] %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian containerd package may start its own daemon on systemd hosts; Berth
# only needs its client (ctr) and shim, and bench/ starts an isolated peer.

PY=${BERTH_PYTHON:-}
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
      PY=$(command -v "$cand"); break
    fi
  done
fi
[[ -n "$PY" ]] || { log "no Python >= 3.11 found"; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
  log "creating virtualenv with $PY"
  "$PY" -m venv .venv
fi

stamp_dir=.venv/.berth-stamps
mkdir -p "$stamp_dir"
dep_hash=$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -f "$stamp_dir/deps-$dep_hash" ]]; then
  log "installing Python packages"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f "$stamp_dir"/deps-*
  touch "$stamp_dir/deps-$dep_hash"
fi

# Berth's own protos (proto/) count too: a changed service must regenerate.
gen_hash=$( (cat scripts/gen_stubs.py; find proto -name '*.proto' -print0 2>/dev/null | sort -z |
  xargs -0 -r cat; dpkg-query -W golang-github-containerd-containerd-dev \
  golang-github-gogo-protobuf-dev golang-github-containerd-cgroups-dev) | sha256sum | cut -c1-16)
if [[ ! -f "$stamp_dir/stubs-$gen_hash" || ! -f src/berth/api/__init__.py ]]; then
  log "generating API stubs"
  .venv/bin/python scripts/gen_stubs.py
  rm -f "$stamp_dir"/stubs-*
  touch "$stamp_dir/stubs-$gen_hash"
fi

# Byte-compile Berth (and the venv, for packages pip left uncompiled): the CLI
# and every shim start are short-lived processes, and with
# PYTHONDONTWRITEBYTECODE set (common in CI and containers) Python would
# re-compile every module on every start — about 90 ms per `berth` command.
# compileall skips files whose .pyc is current, so re-runs cost ~0.2 s.
.venv/bin/python -m compileall -q -j 0 src/berth .venv/lib/python3*/site-packages >/dev/null ||
  log "some modules could not be byte-compiled; commands will start slower"

for exe in berthd berth containerd-shim-berth-v2; do
  if [[ -x .venv/bin/$exe && "$(readlink /usr/local/bin/$exe 2>/dev/null)" != "$ROOT/.venv/bin/$exe" ]]; then
    ln -sf "$ROOT/.venv/bin/$exe" /usr/local/bin/$exe
  fi
done
log "ready"
