"""hfgen.evaluation: a stopped likelihood evaluation resumes from its progress file to the same figures."""

import json

import pytest
import torch

from hfgen import VAEModel
from hfgen.evaluation import evaluate_likelihood
from hfgen.families import VAEFamily


def _setup():
    torch.manual_seed(0)
    model = VAEModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4).eval()
    images = torch.randint(0, 256, (10, 1, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return VAEFamily(), model, images


class _Stop(Exception):
    pass


def _stopping_after(family, calls: int):
    """The family, whose ``bounds`` raises after ``calls`` batches: a run killed mid-way."""
    real_bounds, count = family.bounds, {"n": 0}

    def bounds(*args, **kwargs):
        if count["n"] == calls:
            raise _Stop
        count["n"] += 1
        return real_bounds(*args, **kwargs)

    family.bounds = bounds
    return family


def test_stopped_evaluation_resumes_to_identical_figures(tmp_path):
    family, model, images = _setup()
    options = dict(importance_samples=8, batch_size=3, seed=5, show_progress=False)
    straight = evaluate_likelihood(family, model, images, **options)

    progress = tmp_path / "eval-progress.json"
    with pytest.raises(_Stop):
        evaluate_likelihood(_stopping_after(VAEFamily(), 2), model, images, progress_file=progress, **options)
    saved = json.loads(progress.read_text())
    assert sorted(saved["batch_sums"]) == ["0", "1"]  # two of the four batches (3, 3, 3, 1 images) were finished
    # the resumed run evaluates only the two missing batches and reports exactly the uninterrupted figures
    resumed = evaluate_likelihood(_stopping_after(VAEFamily(), 2), model, images, progress_file=progress, **options)
    assert resumed == straight
    assert sorted(json.loads(progress.read_text())["batch_sums"]) == ["0", "1", "2", "3"]
    # a finished file gives the figures without evaluating anything
    assert evaluate_likelihood(_stopping_after(VAEFamily(), 0), model, images, progress_file=progress,
                               **options) == straight


def test_progress_file_of_another_evaluation_is_refused(tmp_path):
    family, model, images = _setup()
    progress = tmp_path / "eval-progress.json"
    evaluate_likelihood(family, model, images, importance_samples=4, batch_size=5, show_progress=False,
                        progress_file=progress)
    with pytest.raises(ValueError, match="different importance_samples"):
        evaluate_likelihood(family, model, images, importance_samples=8, batch_size=5, show_progress=False,
                            progress_file=progress)
    with pytest.raises(ValueError, match="different images_sha256"):
        evaluate_likelihood(family, model, images[:6], importance_samples=4, batch_size=5, show_progress=False,
                            progress_file=progress)
    progress.write_text("not json")
    with pytest.raises(ValueError, match="not an hfgen evaluation progress file"):
        evaluate_likelihood(family, model, images, importance_samples=4, batch_size=5, show_progress=False,
                            progress_file=progress)
