#!/usr/bin/env bash
# Set up, then run the whole test suite (CPU).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/scripts/setup.sh"
# one worker per core (pytest-xdist), each file on one worker so that its module fixtures are built once
python -m pytest -q -n "${HFGEN_TEST_WORKERS:-2}" --dist loadfile tests "$@"
