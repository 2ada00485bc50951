#!/usr/bin/env bash
# Set up everything hfgen needs on a fresh Debian/Ubuntu machine, idempotently:
#   - Fashion-MNIST's official IDX files from Debian's dataset-fashion-mnist (when apt and root are available;
#     otherwise hfgen falls back to the Hub copy of the data set),
#   - a virtual environment in .venv with torch and hfgen (editable, with the test extras).
# Source it (`. scripts/setup.sh`) to get the environment activated; HFGEN_TORCH overrides the torch requirement.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${HFGEN_FASHION_MNIST_DIR:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's dataset-fashion-mnist" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: /usr/share/datasets/fashion-mnist is missing and apt-get needs root; hfgen will use the Hub copy" >&2
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" >/dev/null 2>&1; then
  # A CPU build where one is on hand; a bare `torch` would pull several GB of CUDA packages.
  pip install -q "${HFGEN_TORCH:-torch==2.13.0}"
fi
if ! python -c "import hfgen, pytest" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.hfgen-installed ]; then
  pip install -q -e ".[dev]"
  touch .venv/.hfgen-installed
fi
