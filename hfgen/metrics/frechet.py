"""Fréchet distance between Gaussians fitted to two feature sets (in hfgen's feature network: ``fd_fmnist``)."""

from __future__ import annotations

import torch


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``features`` ``(N, D)``, in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"expected features of shape (N >= 2, D), got {tuple(features.shape)}")
    x = features.double()
    mean = x.mean(0)
    centered = x - mean
    return mean, centered.T @ centered / (x.shape[0] - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """``|m1 - m2|^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^(1/2))``.

    The trace term uses ``tr((C1 C2)^(1/2)) = tr((C1^(1/2) C2 C1^(1/2))^(1/2))``, a symmetric PSD matrix whose
    eigenvalues are computed in float64 and clamped at zero, so no complex parts or NaNs appear when the
    covariances are singular (fewer images than feature dimensions, dead ReLU units).
    """
    mean1, cov1, mean2, cov2 = (t.double().cpu() for t in (mean1, cov1, mean2, cov2))
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mean1 - mean2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * trace_sqrt
    return float(value.clamp_min(0))


def frechet_distance_of_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
