"""Likelihood bounds over a data set, the figures ``hfgen evaluate`` prints and ``metrics.json`` holds.

All figures are means over images of upper bounds on the negative log-likelihood of the 8-bit images:
``nats_per_image_*`` in nats per image, ``bits_per_dim_*`` the same divided by ``num_dims * ln 2``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .families.base import Bounds, ModelFamily


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
) -> dict:
    """Mean ELBO and importance-weighted bounds over ``images`` (``uint8``, ``(N, C, H, W)``).

    With several processes each evaluates every ``num_processes``-th batch and ``reduce_sum`` (e.g.
    ``lambda t: accelerator.reduce(t, "sum")``) adds the per-process sums. Returns a dict with
    ``bits_per_dim_elbo``, ``bits_per_dim_iw``, ``nats_per_image_elbo``, ``nats_per_image_iw``, their standard
    errors over images (``*_stderr``), ``num_samples``, ``importance_samples`` and ``num_dims``.
    """
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if importance_samples < 1:
        raise ValueError(f"importance_samples must be >= 1, got {importance_samples}")
    device = model.device
    if importance_samples > 1 and getattr(family, "importance_samples_in_batch", True):
        # keep roughly batch_size decoder passes in flight
        batch_size = max(1, min(batch_size, 4096 // importance_samples))
    batch_starts = list(range(0, images.shape[0], batch_size))
    mine = batch_starts[process_index::num_processes]
    # sums over images of: elbo, elbo^2, iw, iw^2 (nats), and the count
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    bar = tqdm(mine, desc=f"evaluating (K={importance_samples})", disable=not show_progress, leave=False)
    for start in bar:
        x = images[start : start + batch_size].to(device)
        gen = _batch_generator(seed, start // batch_size, device)
        bounds: Bounds = family.bounds(model, x, importance_samples, gen)
        elbo = bounds.nats_per_image_elbo.double()
        iw = bounds.nats_per_image_iw.double()
        sums += torch.stack([elbo.sum(), elbo.pow(2).sum(), iw.sum(), iw.pow(2).sum(),
                             torch.tensor(float(x.shape[0]), dtype=torch.float64, device=device)])
    if reduce_sum is not None:
        sums = reduce_sum(sums)
    return summarize_bounds(sums.cpu().tolist(), family.num_dims(model), importance_samples)


def summarize_bounds(sums: list[float], num_dims: int, importance_samples: int) -> dict:
    """Turn [sum elbo, sum elbo^2, sum iw, sum iw^2, count] (nats) into the reported figures."""
    sum_elbo, sum_sq_elbo, sum_iw, sum_sq_iw, count = sums
    count = int(round(count))
    if count == 0:
        raise ValueError("no images were evaluated")
    to_bpd = 1.0 / (num_dims * math.log(2.0))

    def mean_and_stderr(total, total_sq):
        mean = total / count
        var = max(total_sq / count - mean * mean, 0.0) * count / max(count - 1, 1)
        return mean, math.sqrt(var / count)

    elbo, elbo_se = mean_and_stderr(sum_elbo, sum_sq_elbo)
    iw, iw_se = mean_and_stderr(sum_iw, sum_sq_iw)
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
