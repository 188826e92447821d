#!/usr/bin/env bash
# Berth and containerd measured side by side, in one run (see docs/benchmarks.md).
#   ./bench/run.sh                      # every row; about 10 minutes on 2 cores
#   ./bench/run.sh --quick              # smoke run, about a minute
#   ./bench/run.sh --rows 'pull_*' --reps 5
#   ./bench/run.sh --list               # the rows
#   ./bench/run.sh --update-docs        # also rewrite docs/benchmarks.md's results
# Installs what is missing first (scripts/setup.sh), then runs the harness
# (bench/berthbench) with the project's venv. Needs root. Results go to
# bench/results/<timestamp>.json and .md; the Debian image's root is cached in
# bench/cache/ after the first run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
./scripts/setup.sh
# The results record the command that produced them, as typed here.
export BERTHBENCH_ENTRY=./bench/run.sh
exec .venv/bin/python -m bench.berthbench "$@"
