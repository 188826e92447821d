#!/usr/bin/env bash
# Berth's main job, from a fresh Debian 12 machine, as root: install what is
# missing, start berthd, talk to it with the real ctr, build a busybox image
# offline, import it with `berth images import`, and run a first container
# with `berth run`.
#
# Environment overrides (used by the test that keeps this script honest):
#   BERTH_ROOT, BERTH_STATE, BERTH_ADDRESS, BERTH_LOG, BERTH_PIDFILE
#   BERTH_SKIP_SETUP=1 to skip scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${BERTH_SKIP_SETUP:-0} == 1 ]] || ./scripts/setup.sh

ROOT=${BERTH_ROOT:-/var/lib/berth}
STATE=${BERTH_STATE:-/run/berth}
SOCK=${BERTH_ADDRESS:-$STATE/berth.sock}
LOG=${BERTH_LOG:-/var/log/berthd.log}
PIDFILE=${BERTH_PIDFILE:-$STATE/berthd.pid}
CTR=(ctr --address "$SOCK")
BERTH=(.venv/bin/berth --address "$SOCK")
IMAGE=docker.io/library/busybox:berth-demo

# ctr waits 10 s for a socket that does not exist, so look before asking.
if ! { [[ -S "$SOCK" ]] && "${CTR[@]}" --timeout 5s version >/dev/null 2>&1; }; then
  echo "starting berthd (root $ROOT, socket $SOCK, log $LOG)"
  mkdir -p "$(dirname "$LOG")"
  nohup .venv/bin/berthd --root "$ROOT" --state "$STATE" --address "$SOCK" >>"$LOG" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do
    [[ -S "$SOCK" ]] && "${CTR[@]}" version >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "berthd failed to start; see $LOG" >&2; tail -5 "$LOG" >&2; exit 1; }
    sleep 0.1
  done
  echo "$pid" >"$PIDFILE"
fi

set -x
"${CTR[@]}" version
"${CTR[@]}" plugins ls
"${CTR[@]}" namespaces create demo purpose=first-run 2>/dev/null || true
"${CTR[@]}" namespaces ls

# A busybox image built offline from the host's busybox-static, imported as an
# OCI archive. `berth images import` stores the content, then has berthd
# unpack it into the overlayfs snapshotter (as `ctr images import` does).
scripts/build-test-image --oci-tar "$STATE/busybox-demo.tar" --name "$IMAGE" >/dev/null
"${BERTH[@]}" images import "$STATE/busybox-demo.tar"
rm -f "$STATE/busybox-demo.tar"
"${BERTH[@]}" images ls

# The first container: created, run, waited for and removed.
"${BERTH[@]}" run --rm "$IMAGE" hello echo "Hello from Berth"
set +x
echo
echo "berthd is running (pid $(cat "$PIDFILE" 2>/dev/null || echo '?')); stop it with: kill \$(cat $PIDFILE)"
