"""The `hfgen` command on a folder written by a real (tiny) training run."""

import json
import subprocess

import numpy as np
import PIL.Image
import pytest

from hfgen.cli import main
from hfgen.families import VAEFamily
from hfgen.training import build_parser, train

from conftest import PYTHON, ROOT, requires_fashion_mnist, reset_accelerate_state

pytestmark = requires_fashion_mnist
EVALUATE_KEYS = ("bits_per_dim_elbo", "bits_per_dim_iw", "nats_per_image_elbo", "nats_per_image_iw",
                 "num_samples", "importance_samples")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "vae"
    args = build_parser(VAEFamily()).parse_args([
        "--output_dir", str(out), "--preset", "tiny", "--max_train_samples", "256", "--max_train_steps", "5",
        "--final_eval_max_samples", "32", "--final_importance_samples", "4", "--report_to", "none"])
    train(VAEFamily(), args)
    reset_accelerate_state()
    return out


def test_evaluate_prints_the_metrics_json_keys(trained, capsys):
    assert main(["evaluate", str(trained), "--dataset", "fashion_mnist", "--split", "test",
                 "--max-samples", "32", "--importance-samples", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((trained / "metrics.json").read_text())
    for key in EVALUATE_KEYS:
        assert key in printed and key in saved
    # the machine in words a reader can look up (its CPU and threads), not just "cpu"
    assert saved["device"].endswith(("thread", "threads")) and saved["device"] != "cpu"
    assert printed["num_samples"] == 32 and printed["importance_samples"] == 4
    # the same images, K and seed as the end of training: the same figures
    assert printed["bits_per_dim_elbo"] == pytest.approx(saved["bits_per_dim_elbo"], rel=1e-5)
    assert printed["bits_per_dim_iw"] <= printed["bits_per_dim_elbo"]


def test_write_metrics_records_a_later_evaluation_in_the_folder_and_its_card(trained, tmp_path, capsys):
    import shutil

    folder = tmp_path / "vae"
    shutil.copytree(trained, folder)
    before = json.loads((folder / "metrics.json").read_text())
    assert before["importance_samples"] == 4 and before["num_samples"] == 32
    assert main(["evaluate", str(folder), "--max-samples", "16", "--importance-samples", "8",
                 "--write-metrics"]) == 0
    printed = json.loads(capsys.readouterr().out)
    after = json.loads((folder / "metrics.json").read_text())
    # the new bound replaces the old one; the training figures stay
    for key in EVALUATE_KEYS + ("bits_per_dim_elbo_stderr", "bits_per_dim_iw_stderr"):
        assert after[key] == printed[key]
    assert after["num_samples"] == 16 and after["importance_samples"] == 8
    for key in ("train_steps", "train_seconds", "train_img_per_s", "num_parameters", "preset"):
        assert after[key] == before[key]
    card = (folder / "README.md").read_text()
    assert f"{printed['bits_per_dim_iw']:.4f}" in card and "K=8" in card
    assert "K=4)" not in card
    # a Hub repo id has no folder to write: refused before any evaluation, nothing written
    assert main(["evaluate", "someone/not-a-folder", "--write-metrics"]) == 2
    assert "not-a-folder" in capsys.readouterr().err


def test_sample_writes_a_grid_deterministically(trained, tmp_path, capsys):
    for name in ("a.png", "b.png"):
        assert main(["sample", str(trained), "--num-images", "6", "--seed", "3", "--out", str(tmp_path / name),
                     "--temperature", "0.7"]) == 0
    a, b = (np.asarray(PIL.Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert a.shape == (56, 84, 3)  # 2 rows x 3 columns of the data's own 28x28
    assert np.array_equal(a, b)
    # the padded squares the model generates, on request: the same images inside a 2-pixel zero border
    assert main(["sample", str(trained), "--num-images", "6", "--seed", "3", "--out", str(tmp_path / "c.png"),
                 "--temperature", "0.7", "--no-crop-to-source"]) == 0
    c = np.asarray(PIL.Image.open(tmp_path / "c.png"))
    assert c.shape == (64, 96, 3) and np.array_equal(c[2:30, 2:30], a[:28, :28]) and c[:2].max() == 0


def test_errors_name_the_problem(trained, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["sample", str(tmp_path / "empty")]) == 2
    assert "model_index.json" in capsys.readouterr().err
    rgb = tmp_path / "rgb" / "train"
    rgb.mkdir(parents=True)
    for i in range(3):
        PIL.Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(rgb / f"{i}.png")
    assert main(["evaluate", str(trained), "--dataset", str(tmp_path / "rgb"), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "3" in err and "1" in err and "channel" in err
    # a sampling option of another family: refused in the command line's own spelling, naming what it takes
    assert main(["sample", str(trained), "--clip-sample", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "--clip-sample" in err and "--temperature" in err and not (tmp_path / "x.png").exists()


def test_console_script_runs_in_a_fresh_process(trained, tmp_path, run_env):
    result = subprocess.run([PYTHON, "-m", "hfgen.cli", "sample", str(trained), "--num-images", "2",
                             "--out", str(tmp_path / "g.png")], cwd=ROOT, env=run_env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["num_images"] == 2


def test_hfgen_train_takes_the_scripts_flags_in_both_spellings(tmp_path):
    from hfgen.families import DDPMFamily
    from hfgen.training import build_parser

    args = build_parser(DDPMFamily()).parse_args(["--output-dir", "x", "--max-train-steps", "7",
                                                  "--max_train_minutes=2", "--block-out-channels", "8", "16"])
    assert (args.output_dir, args.max_train_steps, args.max_train_minutes) == ("x", 7, 2.0)
    assert args.block_out_channels == [8, 16]
    assert main(["train", "gan"]) == 2
    out = tmp_path / "run"
    assert main(["train", "vae", "--preset", "tiny", "--output-dir", str(out), "--max-train-steps", "2",
                 "--max-train-samples", "64", "--report-to", "none", "--num-sample-images", "1"]) == 0
    reset_accelerate_state()
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 2


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _one_line_error(capsys, command: str) -> str:
    """The error ``main`` printed: exactly one line, ``hfgen COMMAND: error: ...``, and no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hfgen")]
    assert "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f"hfgen {command}: error: ")
    return lines[0]


def test_mistakes_are_refused_in_one_line_naming_the_value_and_what_was_expected(trained, tmp_path, capsys,
                                                                               monkeypatch):
    import huggingface_hub.constants
    import torch

    before = _snapshot(trained)
    assert main(["sample", str(trained), "--out", str(tmp_path / "out")]) == 2
    error = _one_line_error(capsys, "sample")
    assert f"--out '{tmp_path / 'out'}': no image file extension; expected a file name ending in .png" in error
    assert main(["sample", str(trained), "--device", "banana", "--out", str(tmp_path / "a.png")]) == 2
    assert "--device 'banana': not a device name; expected cpu, cuda" in _one_line_error(capsys, "sample")
    if not torch.cuda.is_available():
        assert main(["evaluate", str(trained), "--device", "cuda"]) == 2
        assert "--device cuda: this machine has no cuda device" in _one_line_error(capsys, "evaluate")
    # a flag of the diffusion families on a VAE, and a KID whose subsets would all be the same images
    assert main(["evaluate", str(trained), "--vlb-timesteps", "3", "--max-samples", "8"]) == 2
    error = _one_line_error(capsys, "evaluate")
    assert "--vlb-timesteps 3: the vae family has no L_vlb timesteps; expected --importance-samples" in error
    assert main(["evaluate", str(trained), "--metrics", "kid", "--num-samples", "200"]) == 2
    assert "--num-samples 200 with --metrics kid" in (error := _one_line_error(capsys, "evaluate"))
    assert "expected --num-samples 2000 or more" in error
    # publishing without a connection: what failed, not huggingface_hub's traceback
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["publish", str(trained), "--repo-id", "someone/hfgen-vae"]) == 2
    error = _one_line_error(capsys, "publish")
    assert "could not reach the Hub to publish to 'someone/hfgen-vae' (OfflineModeIsEnabled" in error
    assert "expected a network connection" in error
    assert not (tmp_path / "out").exists() and not (tmp_path / "a.png").exists() and list(tmp_path.iterdir()) == []
    assert _snapshot(trained) == before


def test_every_training_flag_says_what_it_does():
    from hfgen.families import FAMILIES

    for name, family in FAMILIES.items():
        parser = build_parser(family())
        formatter = parser._get_formatter()
        for action in parser._actions:
            assert action.help and action.help.strip(), f"{name}: {action.option_strings} has no help"
            text = formatter._expand_help(action)
            assert text.count("(default:") <= 1, f"{name}: {action.option_strings}: {text}"
            assert "(default: None)" not in text, f"{name}: {action.option_strings}: {text}"


def test_the_command_line_parser_imports_neither_torch_nor_diffusers(run_env):
    code = ("import sys, hfgen.cli; hfgen.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'accelerate', 'datasets') if m in sys.modules))")
    result = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
    # and the package's names still import on first use
    result = subprocess.run([PYTHON, "-c", "import hfgen; print(hfgen.VAEPipeline.__name__, hfgen.VAEModel.__name__)"],
                            cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["VAEPipeline", "VAEModel"], result.stderr[-2000:]
