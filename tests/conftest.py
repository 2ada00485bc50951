import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = Path(os.environ.get("HFGEN_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

requires_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason=f"Fashion-MNIST IDX files not found in {FASHION_MNIST_DIR} "
    "(scripts/setup.sh installs Debian's dataset-fashion-mnist)")


def reset_accelerate_state():
    """Accelerate's state is a process-wide singleton: reset it between in-process training runs."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    reset_accelerate_state()


@pytest.fixture
def run_env():
    """Environment for subprocesses: offline, quiet, this checkout importable."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return env


PYTHON = sys.executable
