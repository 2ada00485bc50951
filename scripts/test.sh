#!/usr/bin/env bash
# Set up, then run the whole test suite (CPU).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/scripts/setup.sh"
python -m pytest -q tests "$@"
