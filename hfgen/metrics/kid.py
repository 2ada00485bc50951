"""Kernel inception distance in hfgen's feature space (``kid_fmnist``): the unbiased estimator of the squared
MMD with the polynomial kernel ``k(x, y) = (x.y / D + 1)^3`` (Bińkowski et al. 2018), averaged over subsets."""

from __future__ import annotations

import torch

#: images per KID subset (Bińkowski et al. 2018's 1,000); ``hfgen evaluate`` asks for twice as many generated images,
#: so that the subsets differ and ``kid_fmnist_std`` measures their spread (with fewer than 1,000 every subset holds
#: all generated images and the std is that of the reference side alone, 1e-16 when it is small too)
KID_SUBSET_SIZE = 1000
KID_MIN_SAMPLES = 2 * KID_SUBSET_SIZE


def polynomial_mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 between samples ``x`` ``(m, D)`` and ``y`` ``(n, D)`` (m, n >= 2), in float64."""
    x, y = x.double(), y.double()
    m, n, dim = x.shape[0], y.shape[0], x.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"need at least 2 samples on each side, got {m} and {n}")
    k_xx = (x @ x.T / dim + coef0).pow(degree)
    k_yy = (y @ y.T / dim + coef0).pow(degree)
    k_xy = (x @ y.T / dim + coef0).pow(degree)
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return float(sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2 * k_xy.sum() / (m * n))


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, num_subsets: int = 100, subset_size: int = KID_SUBSET_SIZE,
                    seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the unbiased polynomial MMD^2 over ``num_subsets`` random subsets of
    ``min(subset_size, len(real), len(fake))`` images from each side (drawn without replacement within a subset)."""
    size = min(subset_size, real.shape[0], fake.shape[0])
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_subsets):
        i = torch.randperm(real.shape[0], generator=generator)[:size]
        j = torch.randperm(fake.shape[0], generator=generator)[:size]
        values.append(polynomial_mmd2_unbiased(real[i], fake[j]))
    values_t = torch.tensor(values, dtype=torch.float64)
    std = float(values_t.std()) if num_subsets > 1 else 0.0
    return float(values_t.mean()), std
