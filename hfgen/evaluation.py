"""Likelihood bounds over a data set, the figures ``hfgen evaluate`` prints and ``metrics.json`` holds.

All figures are means over images of upper bounds on the negative log-likelihood of the 8-bit images:
``nats_per_image_*`` in nats per image, ``bits_per_dim_*`` the same divided by ``num_dims * ln 2``, where
``num_dims`` counts the data's own pixels (``source_shape``: 784 for Fashion-MNIST, not the 1024 of the 32x32
square it is padded to). ``bound_over`` says what the bound is of: ``"source image"`` when the model scores the
data's own pixels only (the VAE families with ``source_size``), ``"padded image"`` when it scores the padded square
(DDPM; folders trained before ``source_size`` existed): still an upper bound on ``-log p(image)``, since
``p(image) >= p(image, border = 0)``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import torch
from .progress import progress_bar

from .data import SourceShape
from .families.base import Bounds, ModelFamily
from .files import write_json_atomically


def _batch_generator(seed: int, batch_index: int, device: torch.device) -> torch.Generator:
    """The noise of batch ``batch_index`` depends only on (seed, batch_index): results do not depend on how the
    batches are split between processes."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + batch_index)


@torch.no_grad()
def evaluate_likelihood(
    family: ModelFamily,
    model,
    images: torch.Tensor,
    *,
    importance_samples: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    process_index: int = 0,
    num_processes: int = 1,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    show_progress: bool = True,
    progress_file: str | Path | None = None,
    source_shape: SourceShape | None = None,
    class_labels: torch.Tensor | None = None,
) -> dict:
    """Mean ELBO and importance-weighted bounds over ``images`` (``uint8``, ``(N, C, H, W)``).

    With several processes each evaluates every ``num_processes``-th batch and ``reduce_sum`` (e.g.
    ``lambda t: accelerator.reduce(t, "sum")``) adds the per-process sums. Returns a dict with
    ``bits_per_dim_elbo``, ``bits_per_dim_iw``, ``nats_per_image_elbo``, ``nats_per_image_iw``, their standard
    errors over images (``*_stderr``), ``num_samples``, ``importance_samples`` (``vlb_timesteps`` for DDPM, which
    writes no ``*_iw`` keys), ``estimator`` (how the bound was estimated, in words: for a diffusion, the number of
    timesteps per image), ``num_dims``, ``source_shape``, ``sample_shape``, ``bound_over`` and ``likelihood``.
    ``source_shape`` is the images' own shape before zero padding (``hfgen.data.images_and_source_shape``); without
    it the model's own shape is taken.

    A class-conditional model (``family.num_classes(model) > 0``) is scored given ``class_labels`` (int64, one per
    image: bounds on ``-log p(x | y)``), or, without them, as its null class (bounds on ``-log p(x)``);
    ``likelihood["given"]`` says which ("class label" or "nothing (null class)"). ``metrics.json`` and ``hfgen
    evaluate`` keep the null class's figures under the plain keys and the figures given the labels under
    ``given_label_figures``' names.

    With ``progress_file`` (one process only) the sums of every finished batch are saved there (atomically, after
    each batch) and batches already in the file are not evaluated again, so a long evaluation (K=1000 on a whole
    test split) that is stopped resumes where it was. Because each batch's noise depends only on
    (seed, batch index) and the sums are added in batch order, a resumed evaluation gives exactly the figures of an
    uninterrupted one. The file records the model's weights, the images, K, the seed and the batch size; a file
    written for anything else is refused, not reused.
    """
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if importance_samples < 1:
        raise ValueError(f"importance_samples must be >= 1, got {importance_samples}")
    units = bound_units(family, model, images.shape[1:], source_shape)
    likelihood = family.likelihood_of(model)
    num_classes = family.num_classes(model)
    if class_labels is not None:
        if num_classes == 0:
            raise ValueError("class_labels were given, but the model was trained without class labels")
        class_labels = torch.as_tensor(class_labels, dtype=torch.int64)
        if class_labels.shape != images.shape[:1]:
            raise ValueError(f"expected one class label per image ({images.shape[0]}), got shape "
                             f"{tuple(class_labels.shape)}")
        if class_labels.numel() and not 0 <= int(class_labels.min()) <= int(class_labels.max()) < num_classes:
            raise ValueError(f"class labels must be in 0..{num_classes - 1}, got {int(class_labels.min())}.."
                             f"{int(class_labels.max())}")
    if num_classes:
        likelihood = {**likelihood, "given": "class label" if class_labels is not None else "nothing (null class)"}
    device = model.device
    if importance_samples > 1 and getattr(family, "importance_samples_in_batch", True):
        # keep roughly batch_size decoder passes in flight
        batch_size = max(1, min(batch_size, 4096 // importance_samples))
    batch_starts = list(range(0, images.shape[0], batch_size))
    mine = batch_starts[process_index::num_processes]
    # per batch: sums over its images of elbo, elbo^2, iw, iw^2 (nats), and the count
    batch_sums: dict[int, list[float]] = {}
    term_names = family.bound_terms(model)  # per-image figures beside the bound (Bounds.terms), summed the same way
    progress = None
    if progress_file is not None:
        if num_processes != 1:
            raise ValueError(f"progress_file works with one process, got num_processes={num_processes}")
        key = {"model_sha256": _weights_sha256(model), "images_sha256": _tensor_sha256(images),
               "num_images": int(images.shape[0]), "importance_samples": importance_samples,
               "batch_size": batch_size, "seed": seed}
        if class_labels is not None:
            key["class_labels_sha256"] = _tensor_sha256(class_labels)
        if term_names:
            key["bound_terms"] = term_names
        progress = _EvaluationProgress(Path(progress_file), key)
        batch_sums = progress.load()
    todo = [start for start in mine if start // batch_size not in batch_sums]
    bar = progress_bar(total=len(mine), initial=len(mine) - len(todo), desc=f"evaluating (K={importance_samples})",
               disable=not show_progress, leave=False)
    for start in todo:
        x = images[start : start + batch_size].to(device)
        gen = _batch_generator(seed, start // batch_size, device)
        if num_classes:
            labels = None if class_labels is None else class_labels[start : start + batch_size].to(device)
            bounds: Bounds = family.bounds(model, x, importance_samples, gen, class_labels=labels)
        else:
            bounds = family.bounds(model, x, importance_samples, gen)
        elbo = bounds.nats_per_image_elbo.double()
        iw = bounds.nats_per_image_iw.double()
        terms = [bounds.terms[name].double() for name in term_names]
        sums = torch.stack([elbo.sum(), elbo.pow(2).sum(), iw.sum(), iw.pow(2).sum()]
                           + [s for term in terms for s in (term.sum(), term.pow(2).sum())]).cpu().tolist()
        batch_sums[start // batch_size] = [*sums[:4], float(x.shape[0]), *sums[4:]]
        if progress is not None:
            progress.save(batch_sums)
        bar.update(1)
    bar.close()
    totals = [0.0] * (5 + 2 * len(term_names))
    for index in sorted(batch_sums):  # batch order, whatever order the batches were computed in
        totals = [total + value for total, value in zip(totals, batch_sums[index])]
    if reduce_sum is not None:
        totals = reduce_sum(torch.tensor(totals, dtype=torch.float64, device=device)).cpu().tolist()
    figures = summarize_bounds(totals[:5], units["num_dims"], importance_samples,
                               importance_weighted=family.has_importance_weighted_bound)
    if term_names:
        figures["bound_terms"] = {
            name: _term_figures(totals[5 + 2 * i], totals[6 + 2 * i], figures["num_samples"], units["num_dims"])
            for i, name in enumerate(term_names)}
    figures["estimator"] = family.bound_estimator(model, importance_samples)
    return {**figures, **units, "likelihood": likelihood}


def _mean_and_stderr(total: float, total_sq: float, count: int) -> tuple[float, float]:
    """Mean and standard error of the mean of ``count`` values from their sum and sum of squares."""
    mean = total / count
    variance = max(total_sq / count - mean * mean, 0.0) * count / max(count - 1, 1)
    return mean, math.sqrt(variance / count)


def _term_figures(total: float, total_sq: float, count: int, num_dims: int) -> dict:
    """Mean and standard error over images of one of a family's ``Bounds.terms``, in nats per image and bits/dim."""
    mean, stderr = _mean_and_stderr(total, total_sq, count)
    to_bpd = 1.0 / (num_dims * math.log(2.0))
    return {"nats_per_image": mean, "nats_per_image_stderr": stderr, "bits_per_dim": mean * to_bpd,
            "bits_per_dim_stderr": stderr * to_bpd}


def bound_figures(metrics: dict) -> dict:
    """The bounds of an ``evaluate_likelihood`` result (``bits_per_dim_*``, ``nats_per_image_*``, their standard
    errors, ``bound_terms``) and its ``likelihood``."""
    return {key: value for key, value in metrics.items()
            if key.startswith(("bits_per_dim", "nats_per_image")) or key in ("likelihood", "bound_terms")}


#: what the suffix of a class-conditional model's figures given the label says (``bits_per_dim_elbo_given_label``)
GIVEN_LABEL = "_given_label"


def given_label_figures(metrics: dict) -> dict:
    """The bounds of an evaluation given the class labels (bounds on ``-log p(x | y)``) under names that say so:
    ``bits_per_dim_elbo`` -> ``bits_per_dim_elbo_given_label``, ``bits_per_dim_elbo_stderr`` ->
    ``bits_per_dim_elbo_given_label_stderr``, ``bound_terms`` -> ``bound_terms_given_label``. A class-conditional
    model's plain keys hold its bounds on ``-log p(x)``, through its null class (the model without a label)."""
    renamed = {}
    for key, value in bound_figures(metrics).items():
        if key == "likelihood":
            continue
        stem, stderr = (key[: -len("_stderr")], "_stderr") if key.endswith("_stderr") else (key, "")
        renamed[f"{stem}{GIVEN_LABEL}{stderr}"] = value
    return renamed


def bound_units(family: ModelFamily, model, image_shape, source_shape: SourceShape | None) -> dict:
    """``num_dims`` (the data's own C x H x W), ``source_shape``, ``sample_shape`` (what the model sees) and
    ``bound_over``; refuses a model that scores fewer pixels than the data has (its figure would bound nothing)."""
    scored = list(family.scored_shape(model))
    sample_shape = [int(v) for v in image_shape]
    source = source_shape.as_list() if source_shape is not None else scored
    if scored == source:
        bound_over = "source image"
    elif scored == sample_shape and source_shape is not None and not source_shape.mixed_sizes:
        bound_over = "padded image"
    elif scored == sample_shape:
        bound_over = "image as the model sees it"
    else:
        raise ValueError(f"the model scores {'x'.join(map(str, scored))} pixels (source_size in its config) but these "
                         f"images are {'x'.join(map(str, source))} before padding to "
                         f"{'x'.join(map(str, sample_shape))}; expected data of the size the model was trained on")
    return {"num_dims": source[0] * source[1] * source[2], "source_shape": source, "sample_shape": sample_shape,
            "bound_over": bound_over}


def split_label(split: str, num_images: int, split_size: int) -> str:
    """How a card names the images a figure was measured on: ``test``, or ``test[:1000]`` for the first 1,000."""
    return split if num_images >= split_size else f"{split}[:{num_images}]"


def parse_split_label(label: str) -> tuple[str, int | None]:
    """The split name and image count of a ``split_label``: ``("test", None)`` for all of it, ``("test", 1000)`` for
    ``test[:1000]`` (what ``hfgen evaluate --split test --max-samples 1000`` measures)."""
    name, bracket, rest = label.partition("[:")
    if bracket and rest.endswith("]") and rest[:-1].isdigit():
        return name, int(rest[:-1])
    return label, None


def _tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _weights_sha256(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _EvaluationProgress:
    """The per-batch sums of an evaluation in a JSON file, with the key that says what they were computed for."""

    def __init__(self, path: Path, key: dict):
        self.path, self.key = path, key

    def load(self) -> dict[int, list[float]]:
        if not self.path.is_file():
            return {}
        try:
            saved = json.loads(self.path.read_text())
            saved_key, batches = saved["key"], saved["batch_sums"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{self.path} is not an hfgen evaluation progress file ({error}); remove it or pass "
                             f"another path") from error
        different = sorted(name for name in self.key if saved_key.get(name) != self.key[name])
        if different:
            raise ValueError(f"{self.path} holds an evaluation of something else (different {', '.join(different)}); "
                             f"remove it or pass another path")
        return {int(index): values for index, values in batches.items()}

    def save(self, batch_sums: dict[int, list[float]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.path, {"key": self.key, "batch_sums": {str(i): v for i, v in batch_sums.items()}},
                              indent=None)


def summarize_bounds(sums: list[float], num_dims: int, importance_samples: int, *,
                     importance_weighted: bool = True) -> dict:
    """Turn [sum elbo, sum elbo^2, sum iw, sum iw^2, count] (nats) into the reported figures; without an
    importance-weighted bound (DDPM) only the ``*_elbo`` figures, and K is named ``vlb_timesteps``."""
    sum_elbo, sum_sq_elbo, sum_iw, sum_sq_iw, count = sums
    count = int(round(count))
    if count == 0:
        raise ValueError("no images were evaluated")
    to_bpd = 1.0 / (num_dims * math.log(2.0))

    elbo, elbo_se = _mean_and_stderr(sum_elbo, sum_sq_elbo, count)
    iw, iw_se = _mean_and_stderr(sum_iw, sum_sq_iw, count)
    if not importance_weighted:
        return {"bits_per_dim_elbo": elbo * to_bpd, "nats_per_image_elbo": elbo,
                "bits_per_dim_elbo_stderr": elbo_se * to_bpd, "num_samples": count,
                "vlb_timesteps": importance_samples, "num_dims": num_dims}
    return {
        "bits_per_dim_elbo": elbo * to_bpd,
        "bits_per_dim_iw": iw * to_bpd,
        "nats_per_image_elbo": elbo,
        "nats_per_image_iw": iw,
        "bits_per_dim_elbo_stderr": elbo_se * to_bpd,
        "bits_per_dim_iw_stderr": iw_se * to_bpd,
        "num_samples": count,
        "importance_samples": importance_samples,
        "num_dims": num_dims,
    }
