"""Sample-quality figures of a model: generate images through the family's pipeline, embed them with the
feature network, compare with a data set split's reference features."""

from __future__ import annotations

import time

import numpy as np
import torch
from ..families.base import GREEDY_SUFFIX

from ..models.likelihoods import SourceRegion
from ..progress import progress_bar

from .feature_net import FeatureNet, extract_features, load_feature_net
from .frechet import feature_statistics, frechet_distance
from .kid import KID_SUBSET_SIZE, kernel_distance
from .precision_recall import precision_recall
from .reference import ReferenceStatistics

SAMPLE_QUALITY_METRICS = ("fd", "kid", "pr")
#: the figures of generated images that ``evaluate_samples`` names after what it generated
_SAMPLE_FIGURES = ("fd_fmnist", "kid_fmnist", "kid_fmnist_std", "precision", "recall", "fid_inception")


def pil_to_uint8(images) -> torch.Tensor:
    """PIL images (or a numpy/torch batch in [0, 1]) -> uint8 ``(N, C, H, W)``."""
    if isinstance(images, torch.Tensor):
        return (images.clamp(0, 1) * 255).round().to(torch.uint8)
    if isinstance(images, np.ndarray):
        array = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
        if array.ndim == 3:
            array = array[..., None]
        return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    arrays = [np.asarray(image) for image in images]
    array = np.stack(arrays)
    if array.ndim == 3:
        array = array[:, None]
    else:
        array = array.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))


def generate_uint8(family, pipeline, num_images: int, *, batch_size: int = 256, seed: int = 0,
                   show_progress: bool = True, channels: int | None = None, sample_size: int | None = None,
                   class_labels=None, **options) -> torch.Tensor:
    """``num_images`` samples as uint8 ``(N, C, H, W)`` through ``family.sample_images`` in batches; batch ``b``
    uses a generator seeded from ``(seed, b)``. ``options`` (e.g. ``temperature``; ``scheduler``, ``steps`` and
    ``guidance_scale`` for DDPM) go to the family's sampler. ``class_labels`` (a class-conditional model): one class
    index or name per image (a list of ``num_images``), or None for the model's null class.

    The samples are the data's own size (the pipelines' default); with ``sample_size`` (the feature network's, the
    size of the data layer's reference images) smaller ones are zero-padded to it as the data layer pads its
    images, so that they are compared as the data are. A VAE decodes that zero border itself, so its figures are
    what the padded square gives; a DDPM's generated border is replaced by the data's zeros."""
    if class_labels is not None and len(class_labels) != num_images:
        raise ValueError(f"class_labels holds {len(class_labels)} labels; expected one per image ({num_images})")
    device = getattr(pipeline, "device", torch.device("cpu"))
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    batches = []
    bar = progress_bar(total=num_images, desc="sampling", disable=not show_progress, leave=False, unit="img")
    for index, start in enumerate(range(0, num_images, batch_size)):
        n = min(batch_size, num_images - start)
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)
        if class_labels is not None:
            options["class_labels"] = list(class_labels[start : start + n])
        images = pil_to_uint8(family.sample_images(pipeline, n, generator, **options))
        if channels == 1 and images.shape[1] == 3:
            images = images[:, :1]
        if sample_size is not None and tuple(images.shape[2:]) != (sample_size, sample_size):
            images = SourceRegion(sample_size, images.shape[2:]).pad(images, 0)
        batches.append(images)
        bar.update(n)
    bar.close()
    return torch.cat(batches)


def sample_quality(
    fake_features: torch.Tensor,
    reference: ReferenceStatistics,
    metrics=SAMPLE_QUALITY_METRICS,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> dict:
    """``fd_fmnist``, ``kid_fmnist``/``kid_fmnist_std``, ``precision``/``recall`` of generated features against
    the reference, for the ``metrics`` asked for (``fd``, ``kid``, ``pr``)."""
    unknown = set(metrics) - set(SAMPLE_QUALITY_METRICS)
    if unknown:
        raise ValueError(f"unknown sample-quality metrics {sorted(unknown)}; expected some of {SAMPLE_QUALITY_METRICS}")
    out: dict = {}
    if "fd" in metrics:
        out["fd_fmnist"] = frechet_distance(*feature_statistics(fake_features), reference.mean, reference.cov)
    if "kid" in metrics:
        out["kid_fmnist"], out["kid_fmnist_std"] = kernel_distance(reference.features, fake_features, kid_subsets,
                                                                   kid_subset_size, seed)
    if "pr" in metrics:
        out["precision"], out["recall"] = precision_recall(reference.features, fake_features, reference.k,
                                                           real_radii=reference.knn_radii)
        out["pr_k"] = reference.k
    return out


def evaluate_samples(family, pipeline, reference: ReferenceStatistics, *, num_samples: int = 10000,
                     metrics=SAMPLE_QUALITY_METRICS, batch_size: int = 256, seed: int = 0,
                     net: FeatureNet | None = None, show_progress: bool = True, inception_net=None,
                     inception_reference=None, **options) -> dict:
    """Generate ``num_samples`` images and score them; also reports ``num_generated`` and ``sample_img_per_s``.

    With ``inception_net`` (``hfgen.metrics.load_inception``) and its ``inception_reference``
    (``inception_reference_statistics``), the same images also give ``fid_inception``. The figures are named after
    what was generated (``ModelFamily.sample_kind``): under their plain keys with ``sampled_images`` saying what the
    images were (``draws``; a VAE without pixel passes: ``mean``), or, for the greedy chain of a pass decoder
    (``greedy_passes=True``), under keys of their own (``fd_fmnist_greedy``, ...)."""
    kind = family.sample_kind(dict(family.model_of(pipeline).config), options)
    net = net if net is not None else load_feature_net(reference.key.get("feature_net", "fmnist"))
    started = time.perf_counter()
    images = generate_uint8(family, pipeline, num_samples, batch_size=batch_size, seed=seed,
                            show_progress=show_progress, channels=net.config.in_channels,
                            sample_size=net.config.sample_size, **options)
    seconds = time.perf_counter() - started
    features = extract_features(net, images, show_progress=show_progress, description="features (generated)")
    out = sample_quality(features, reference, metrics, seed=seed)
    if inception_net is not None:
        from .inception import extract_inception_features

        inception_features = extract_inception_features(inception_net, images, show_progress=show_progress,
                                                        description="Inception features (generated)")
        out["fid_inception"] = frechet_distance(*feature_statistics(inception_features), inception_reference.mean,
                                                inception_reference.cov)
        out["fid_inception_num_reference"] = inception_reference.num_images
    if kind == "greedy":
        out = {key + GREEDY_SUFFIX if key in _SAMPLE_FIGURES else key: value for key, value in out.items()}
    else:
        out["sampled_images"] = kind
    out.update(num_generated=int(images.shape[0]), sample_seconds=seconds,
               sample_img_per_s=images.shape[0] / max(seconds, 1e-9), num_reference=int(reference.features.shape[0]))
    return out
