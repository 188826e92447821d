#!/usr/bin/env bash
# Berth's main job, from a fresh Debian 12 machine, as root: install what is
# missing, start berthd on its default socket, and talk to it with the real ctr.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

SOCK=${BERTH_ADDRESS:-/run/berth/berth.sock}
LOG=${BERTH_LOG:-/var/log/berthd.log}

if ! ctr --address "$SOCK" version >/dev/null 2>&1; then
  echo "starting berthd (log: $LOG)"
  nohup berthd --address "$SOCK" >>"$LOG" 2>&1 &
  echo $! > /run/berthd.pid
  for _ in $(seq 1 100); do
    ctr --address "$SOCK" version >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

set -x
ctr --address "$SOCK" version
ctr --address "$SOCK" plugins ls
ctr --address "$SOCK" namespaces create demo purpose=first-run 2>/dev/null || true
ctr --address "$SOCK" namespaces ls
set +x
echo
echo "berthd is running (pid $(cat /run/berthd.pid 2>/dev/null || echo '?')); stop it with: kill \$(cat /run/berthd.pid)"
