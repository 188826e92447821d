#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine, as root:
#   installs what is missing (scripts/setup.sh), lints, type-checks, then runs
#   unit and integration tests against real berthd, ctr, runc and registry.
# Extra arguments go to pytest (e.g. scripts/test.sh -k namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/lint.sh
exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
