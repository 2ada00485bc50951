"""Reference features of a data set split, computed once and cached.

The cache file is keyed by the data set, the split, the preprocessing (sample size, channels, resize mode,
number of images) and the feature network's hash, under ``$HFGEN_CACHE`` (default ``~/.cache/hfgen``) in
``reference/``. It holds the features themselves (KID and precision/recall need them), their mean and
covariance (float64) and the k-NN radii for precision/recall.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .feature_net import FeatureNet, extract_features, feature_net_hash, load_feature_net
from .frechet import feature_statistics
from .precision_recall import knn_radii

CACHE_ENV = "HFGEN_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hfgen").expanduser()


@dataclass
class ReferenceStatistics:
    features: torch.Tensor  # (N, D) float32
    mean: torch.Tensor  # (D,) float64
    cov: torch.Tensor  # (D, D) float64
    knn_radii: torch.Tensor  # (N,) float64, for precision/recall with k = `k`
    k: int
    key: dict
    from_cache: bool = False

    @classmethod
    def from_features(cls, features: torch.Tensor, k: int = 3, key: dict | None = None) -> "ReferenceStatistics":
        mean, cov = feature_statistics(features)
        return cls(features.float(), mean, cov, knn_radii(features, k), k, key or {})


def reference_key(dataset: str, split: str, *, sample_size: int = 32, channels: int = 1, resize_mode: str = "auto",
                  max_samples: int | None = None, feature_net: str = "fmnist", k: int = 3,
                  network_hash: str | None = None, config_name: str | None = None,
                  image_column: str | None = None) -> dict:
    """The cache key; ``network_hash`` defaults to the shipped network's ``feature_net_hash(feature_net)``.
    ``config_name`` and ``image_column`` enter the key only when given."""
    if dataset and os.path.exists(dataset):
        dataset = str(Path(dataset).resolve())
    key = {"dataset": dataset, "split": split, "sample_size": sample_size, "channels": channels,
           "resize_mode": resize_mode, "max_samples": max_samples or None, "feature_net": feature_net,
           "feature_net_hash": network_hash or feature_net_hash(feature_net), "k": k}
    if config_name or image_column:
        key.update(config_name=config_name, image_column=image_column)
    if split in ("train", "validation"):  # since "validation" is held out of "train", neither is what it was
        key["validation_held_out_of_train"] = True
    return key


def cache_path(key: dict, directory: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(key["dataset"]).name or "data")[:40]
    return (directory or cache_dir()) / "reference" / f"{stem}-{key['split']}-{digest}.safetensors"


def _cached_tensors(key: dict, cache_directory, use_cache: bool, compute) -> tuple[dict[str, torch.Tensor], bool]:
    """``(tensors, from_cache)``: the cache file of ``key`` when present, else ``compute()``, saved atomically
    (temporary file renamed over the target) when ``use_cache``."""
    path = cache_path(key, Path(cache_directory).expanduser() if cache_directory else None)
    if use_cache and path.is_file():
        return load_file(str(path)), True
    tensors = compute()
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(tmp),
                  metadata={"key": json.dumps(key, sort_keys=True)})
        os.replace(tmp, path)
    return tensors, False


def reference_statistics(
    dataset: str = "fashion_mnist",
    split: str = "test",
    *,
    sample_size: int = 32,
    channels: int = 1,
    resize_mode: str = "auto",
    convert_channels: bool = False,
    max_samples: int | None = None,
    net: FeatureNet | None = None,
    feature_net: str = "fmnist",
    k: int = 3,
    batch_size: int = 500,
    use_cache: bool = True,
    cache_directory: str | os.PathLike | None = None,
    show_progress: bool = True,
    images: torch.Tensor | None = None,
    config_name: str | None = None,
    image_column: str | None = None,
) -> ReferenceStatistics:
    """Features and statistics of a split, from the cache when present (else computed and cached).

    ``images`` may pass the split's uint8 tensor when the caller has already loaded it (it must be the images
    the key describes). A local-path data set is keyed by its resolved path, not its content: clear the cache
    after changing the files.
    """
    key = reference_key(dataset, split, sample_size=sample_size, channels=channels, resize_mode=resize_mode,
                        max_samples=max_samples, feature_net=feature_net, k=k, config_name=config_name,
                        image_column=image_column)

    def compute() -> dict[str, torch.Tensor]:
        split_images = _split_images(images, dataset, split, sample_size=sample_size, channels=channels,
                                     resize_mode=resize_mode, convert_channels=convert_channels,
                                     max_samples=max_samples, config_name=config_name, image_column=image_column,
                                     show_progress=show_progress)
        network = net if net is not None else load_feature_net(feature_net)
        features = extract_features(network, split_images, batch_size, show_progress,
                                    description=f"features ({split})")
        stats = ReferenceStatistics.from_features(features, k)
        return {"features": stats.features, "mean": stats.mean, "cov": stats.cov, "knn_radii": stats.knn_radii}

    tensors, from_cache = _cached_tensors(key, cache_directory, use_cache, compute)
    return ReferenceStatistics(tensors["features"], tensors["mean"], tensors["cov"], tensors["knn_radii"], k, key,
                               from_cache=from_cache)


def _split_images(images, dataset, split, *, sample_size, channels, resize_mode, convert_channels, max_samples,
                  config_name, image_column, show_progress) -> torch.Tensor:
    """The split as uint8 ``(N, C, H, W)``: ``images`` when the caller has them, else loaded by the data layer."""
    if images is None:
        from ..data import images_to_uint8, load_image_dataset

        data = load_image_dataset(dataset, split, config_name=config_name, image_column=image_column)
        return images_to_uint8(data, sample_size=sample_size, channels=channels, resize_mode=resize_mode,
                               convert_channels=convert_channels, max_samples=max_samples or None,
                               show_progress=show_progress, description=f"{split} images")
    return images[:max_samples] if max_samples else images


@dataclass
class FrechetReference:
    """Mean and covariance of a split's features (all ``fid_inception`` needs; the 2048-d features themselves are
    not kept)."""

    mean: torch.Tensor  # (D,) float64
    cov: torch.Tensor  # (D, D) float64
    num_images: int
    key: dict
    from_cache: bool = False


def inception_reference_statistics(
    weights: str | os.PathLike,
    dataset: str = "fashion_mnist",
    split: str = "test",
    *,
    sample_size: int = 32,
    channels: int = 1,
    resize_mode: str = "auto",
    convert_channels: bool = False,
    max_samples: int | None = None,
    net=None,
    batch_size: int = 50,
    use_cache: bool = True,
    cache_directory: str | os.PathLike | None = None,
    show_progress: bool = True,
    images: torch.Tensor | None = None,
    config_name: str | None = None,
    image_column: str | None = None,
) -> FrechetReference:
    """Inception-v3 feature statistics of a split for ``fid_inception``, cached like ``reference_statistics``;
    the key holds the SHA-256 (first 16 hex digits) of the weight file ``weights`` instead of the shipped
    network's hash, so other weights never reuse them."""
    from .inception import extract_inception_features, inception_weights_hash, load_inception

    if not Path(weights).expanduser().is_file():
        load_inception(weights)  # raises FileNotFoundError naming the path
    key = reference_key(dataset, split, sample_size=sample_size, channels=channels, resize_mode=resize_mode,
                        max_samples=max_samples, feature_net="inception_v3_fid", k=0,
                        network_hash=inception_weights_hash(weights), config_name=config_name,
                        image_column=image_column)

    def compute() -> dict[str, torch.Tensor]:
        split_images = _split_images(images, dataset, split, sample_size=sample_size, channels=channels,
                                     resize_mode=resize_mode, convert_channels=convert_channels,
                                     max_samples=max_samples, config_name=config_name, image_column=image_column,
                                     show_progress=show_progress)
        network = net if net is not None else load_inception(weights)
        features = extract_inception_features(network, split_images, batch_size, show_progress,
                                              description=f"Inception features ({split})")
        mean, cov = feature_statistics(features)
        return {"mean": mean, "cov": cov, "num_images": torch.tensor(int(features.shape[0]))}

    tensors, from_cache = _cached_tensors(key, cache_directory, use_cache, compute)
    return FrechetReference(tensors["mean"], tensors["cov"], int(tensors["num_images"]), key, from_cache=from_cache)
