"""What a training run does with an --output_dir that already holds something, and with one it fails in."""

import json

import numpy as np
import PIL.Image
import pytest

from hfgen.data import DataError
from hfgen.families import DDPMFamily, VAEFamily
from hfgen.training import build_parser, list_checkpoints, train

from conftest import requires_fashion_mnist, reset_accelerate_state

pytestmark = requires_fashion_mnist

TINY = ["--preset", "tiny", "--max_train_samples", "64", "--final_eval_max_samples", "16", "--report_to", "none",
        "--num_sample_images", "1", "--max_train_steps", "2"]


def _train(family, out, *extra):
    try:
        return train(family, build_parser(family).parse_args(["--output_dir", str(out), *TINY, *extra]))
    finally:
        reset_accelerate_state()


def _snapshot(folder):
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_folder_holding_a_run_is_refused_unless_resumed_with_the_same_config_or_overwritten(tmp_path):
    out = tmp_path / "run"
    _train(VAEFamily(), out, "--checkpointing_steps", "2")
    before = _snapshot(out)

    # another family into a finished VAE's folder: refused, naming what the folder holds and what to do
    with pytest.raises(ValueError, match=r"already holds a finished vae run \(1 checkpoint\(s\)\).*"
                                         r"--resume_from_checkpoint latest.*--overwrite_output_dir") as refused:
        _train(DDPMFamily(), out)
    assert "\n" not in str(refused.value)
    # the same family with no resume asked for: refused too (the old checkpoints would mix with the new run)
    with pytest.raises(ValueError, match="already holds a finished vae run"):
        _train(VAEFamily(), out)
    # a resume with another family or model shape names the setting, found there vs expected here
    with pytest.raises(ValueError, match=r"cannot resume: family: 'vae' there, 'ddpm' here"):
        _train(DDPMFamily(), out, "--resume_from_checkpoint", "latest")
    with pytest.raises(ValueError, match=r"model config latent_channels: 4 there, 8 here"):
        _train(VAEFamily(), out, "--resume_from_checkpoint", "latest", "--latent_channels", "8")
    with pytest.raises(ValueError, match=r"--class_conditional: False there, True here"):
        _train(VAEFamily(), out, "--resume_from_checkpoint", "latest", "--class_conditional")
    # --overwrite_output_dir cannot also resume from the checkpoint it would delete
    with pytest.raises(ValueError, match="--overwrite_output_dir would delete the checkpoint"):
        _train(VAEFamily(), out, "--resume_from_checkpoint", "latest", "--overwrite_output_dir")
    assert _snapshot(out) == before  # nothing written by any refused run

    # a config that the check cannot see (no model config recorded): the checkpoint's tensors are refused in one line
    recorded = json.loads((out / "training_config.json").read_text())
    (out / "training_config.json").write_text(json.dumps({k: v for k, v in recorded.items() if k != "model_config"}))
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint-2 holds another model than these settings build "
                                         r"\(size mismatch for .*\); expected a checkpoint of the same family") as bad:
        _train(VAEFamily(), out, "--resume_from_checkpoint", "latest", "--latent_channels", "8")
    assert "\n" not in str(bad.value)
    (out / "training_config.json").write_text(json.dumps(recorded))

    # the same family and config resumes (and continues to more steps)
    assert _train(VAEFamily(), out, "--resume_from_checkpoint", "latest", "--max_train_steps", "3")["train_steps"] == 3

    # --overwrite_output_dir clears the folder first: a DDPM's folder with none of the VAE's files left
    _train(DDPMFamily(), out, "--overwrite_output_dir")
    assert (out / "unet").is_dir() and not (out / "vae").exists() and not list_checkpoints(out)
    assert not list(out.glob("pipeline_vae.py"))
    assert json.loads((out / "training_config.json").read_text())["family"] == "ddpm"


def test_a_folder_of_other_files_is_refused_and_left_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"--output_dir .*notes is not empty \(todo.txt\) and holds no training run"):
        _train(VAEFamily(), out)
    assert [p.name for p in out.iterdir()] == ["todo.txt"] and (out / "todo.txt").read_text() == "keep me"
    # --overwrite_output_dir never clears the folder the command runs in (or one above it)
    monkeypatch.chdir(out)
    with pytest.raises(ValueError, match=r"^--overwrite_output_dir would clear .*notes, the current folder"):
        _train(VAEFamily(), ".", "--overwrite_output_dir")
    assert (out / "todo.txt").read_text() == "keep me"
    # an empty folder is fine, and so is a new one
    (out / "todo.txt").unlink()
    assert _train(VAEFamily(), out)["train_steps"] == 2
    # a finished run without checkpoints has nothing to resume: "latest" would train it again over its own files
    with pytest.raises(ValueError, match=r"holds a finished vae run \(0 checkpoint\(s\)\): no checkpoint to resume "
                                         r"from .*expected --overwrite_output_dir"):
        _train(VAEFamily(), out, "--resume_from_checkpoint", "latest")


def test_class_conditional_on_unlabelled_splits_stops_with_the_message_and_leaves_no_folder(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "test"):  # splits, no class folders: an imagefolder's ClassLabel then names the splits
        (data / split).mkdir(parents=True)
        for index in range(20):  # 18 train images once validation is held out
            PIL.Image.fromarray(np.full((28, 28), 10 * index, np.uint8)).save(data / split / f"{index}.png")
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"--class_conditional needs class labels in the 'train' split .*no class for "
                                        r"18 of 18 images \(its declared classes: 'test', 'train'\); expected a "
                                        r"class for every image") as error:
        _train(VAEFamily(), out, "--dataset", str(data), "--class_conditional", "--train_batch_size", "4")
    assert "\n" not in str(error.value)
    assert not out.exists()  # the folder the failed run created is gone


def test_settings_that_would_surprise_are_refused_before_the_folder_is_made(tmp_path):
    import importlib.util

    import torch

    out = tmp_path / "run"
    if importlib.util.find_spec("wandb") is None:  # Accelerate alone would drop the tracker and log nothing
        with pytest.raises(ValueError, match=r"^--report_to wandb: wandb is not installed, so nothing would be "
                                             r"logged; expected `pip install wandb` first"):
            _train(VAEFamily(), out, "--report_to", "wandb")
    with pytest.raises(ValueError, match=r"^--report_to 'tensorbord': expected one tracker of .*tensorboard"):
        _train(VAEFamily(), out, "--report_to", "tensorbord")
    if not torch.cuda.is_available():  # float16 autocast on a CPU: many times slower, and nothing said
        with pytest.raises(ValueError, match=r"^--mixed_precision fp16 on a CPU: .*expected --mixed_precision no"):
            _train(VAEFamily(), out, "--mixed_precision", "fp16")
    assert not out.exists()
