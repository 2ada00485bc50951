import contextlib
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


@contextlib.contextmanager
def one_torch_thread():
    """Compute on one torch thread, restored afterwards: tiny networks gain nothing from several, and on a shared
    machine the threads of one process spin waiting for each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """``one_torch_thread`` for a whole test module: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with one_torch_thread():
        yield


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


#: the flags of the tiny runs ``tiny_runs`` trains (seconds each)
TINY_RUN = ["--preset", "tiny", "--dataset", "fashion_mnist", "--max_train_samples", "64", "--max_train_steps", "2",
            "--eval_max_samples", "16", "--final_eval_max_samples", "16", "--final_importance_samples", "2",
            "--num_sample_images", "4", "--report_to", "none"]
#: ``ldm-hvae``: the latent diffusion family over the hierarchical VAE run (the join)
TINY_RUNS = [(family, conditional) for family in ("vae", "hvae", "ddpm", "ldm", "ldm-hvae")
             for conditional in (False, True)]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Folders of tiny training runs, ``{(family, conditional): folder}``: each family, unconditional and
    class-conditional, named ``<family>-unconditional`` / ``<family>-conditional``. Latent diffusion is trained over
    the unconditional VAE run (its latent is spatial), and as ``ldm-hvae`` over the unconditional hierarchical VAE run
    (the join); the hierarchical VAEs have the ``small`` preset's six latent groups (``--groups_per_scale 0 2 2 2``),
    so that code written for that preset runs on them."""
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST IDX files not found in {FASHION_MNIST_DIR}")
    from hfgen.families import FAMILIES
    from hfgen.training import build_parser, train

    root = tmp_path_factory.mktemp("tiny-runs")
    folders = {}
    with one_torch_thread():
        for family_name, conditional in TINY_RUNS:
            folder = root / f"{family_name}-{'conditional' if conditional else 'unconditional'}"
            args = ["--output_dir", str(folder), *TINY_RUN] + (["--class_conditional"] if conditional else [])
            if family_name == "ldm":
                args += ["--vae", str(folders[("vae", False)])]
            if family_name == "ldm-hvae":
                args += ["--vae", str(folders[("hvae", False)])]
            if family_name == "hvae":
                args += ["--groups_per_scale", "0", "2", "2", "2"]
            family = FAMILIES[family_name.split("-")[0]]()
            train(family, build_parser(family).parse_args(args))
            reset_accelerate_state()
            folders[(family_name, conditional)] = folder
    return folders


def pytest_configure(config):
    """Under pytest-xdist (``scripts/test.sh`` runs one worker per core) each worker computes on one thread, so
    that the workers do not fight over the cores; a plain ``pytest`` run keeps torch's default."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)
