#!/usr/bin/env bash
# ruff (lint + format check) and mypy over the project's own code.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=()
for d in src tests scripts bench; do [[ -e $d ]] && paths+=("$d"); done
.venv/bin/ruff check "${paths[@]}"
.venv/bin/ruff format --check "${paths[@]}"
.venv/bin/mypy
