"""Improved precision and recall (Kynkäänniemi et al. 2019): each feature set's manifold is the union of balls
around its points reaching their k-th nearest neighbour; precision is the fraction of generated points inside
the real manifold, recall the fraction of real points inside the generated one."""

from __future__ import annotations

import torch


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(features: torch.Tensor, k: int = 3, batch_size: int = 1000) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} needs more than k points; got {n}")
    radii = []
    for start in range(0, n, batch_size):
        d = _pairwise_distances(features[start:start + batch_size], features)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself (distance 0)
    return torch.cat(radii)


def coverage_fraction(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``points`` within ``radii[i]`` of some ``centers[i]``."""
    inside = []
    for start in range(0, points.shape[0], batch_size):
        d = _pairwise_distances(points[start:start + batch_size], centers)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch_size: int = 1000,
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """``(precision, recall)`` of ``fake`` features against ``real`` features with k-NN manifolds."""
    if real_radii is None:
        real_radii = knn_radii(real, k, batch_size)
    fake_radii = knn_radii(fake, k, batch_size)
    return (coverage_fraction(fake, real, real_radii, batch_size),
            coverage_fraction(real, fake, fake_radii, batch_size))
