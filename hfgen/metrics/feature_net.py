"""The Fashion-MNIST feature network that hfgen owns and ships: a small conv classifier whose penultimate layer
(128 numbers per image) is the feature space of ``fd_fmnist``, ``kid_fmnist`` and precision/recall.

Input: the data layer's uint8 images, ``(N, 1, 32, 32)`` (Fashion-MNIST zero-padded from 28 to 32). The weights
live in the package (``hfgen/metrics/weights/fmnist``, written by ``training/train_feature_net.py``) and load by
name: ``load_feature_net("fmnist")``. ``feature_net_hash`` identifies them, so cached reference statistics of
another network are never reused.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import ConfigMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..models.modeling_utils import CheckedModelMixin
from ..progress import progress_bar

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FEATURE_NETS = ("fmnist",)
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class FeatureNet(CheckedModelMixin, ConfigMixin):
    """Conv classifier: ``len(channels)`` stages of (3x3 conv, BatchNorm, ReLU) x ``convs_per_stage`` then 2x2
    max-pooling (the first stage's first convolution has stride 2 instead, with ``strided_stem``), a linear layer of ``feature_dim`` units (ReLU) -- the features -- and the class logits."""

    @register_to_config
    def __init__(self, in_channels: int = 1, sample_size: int = 32, channels: list[int] = (32, 64, 128),
                 convs_per_stage: int = 1, feature_dim: int = 128, num_classes: int = 10, dropout: float = 0.3,
                 strided_stem: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for stage, width in enumerate(channels):
            for index in range(convs_per_stage):
                # a stride-2 first convolution instead of conv + pool at full resolution: 4x cheaper on a CPU
                stride = 2 if strided_stem and stage == 0 and index == 0 else 1
                layers += [nn.Conv2d(previous, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                previous = width
            if not (strided_stem and stage == 0):
                layers.append(nn.MaxPool2d(2))
        self.conv = nn.Sequential(*layers)
        side = sample_size // 2 ** len(channels)
        self.fc = nn.Linear(previous * side * side, feature_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 images (0..255) -> floats in [-1, 1]; float input is taken to be in [-1, 1] already."""
        if images.dtype == torch.uint8:
            return images.float() * (2.0 / 255.0) - 1.0
        return images.float()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features, ``(N, feature_dim)``."""
        h = self.conv(self.preprocess(images))
        return torch.relu(self.fc(h.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.drop(self.features(images)))


def feature_net_path(name: str = "fmnist") -> Path:
    if name not in FEATURE_NETS:
        raise ValueError(f"unknown feature network {name!r}; expected one of {FEATURE_NETS}")
    path = WEIGHTS_DIR / name
    if not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{path / WEIGHTS_NAME} is missing; train it with `python training/train_feature_net.py`")
    return path


def load_feature_net(name: str = "fmnist", device: torch.device | str | None = None) -> FeatureNet:
    """The shipped feature network ``name`` in eval mode (on ``device``, default CPU)."""
    net = FeatureNet.from_pretrained(feature_net_path(name), use_safetensors=True)
    net.float().eval().requires_grad_(False)  # weights are shipped in float16
    if device is not None:
        net.to(device)
    return net


@lru_cache(maxsize=None)
def feature_net_hash(name: str = "fmnist") -> str:
    """First 16 hex digits of the SHA-256 of the network's config and weight files."""
    path = feature_net_path(name)
    digest = hashlib.sha256()
    for file in ("config.json", WEIGHTS_NAME):
        digest.update((path / file).read_bytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def extract_features(net: FeatureNet, images: torch.Tensor, batch_size: int = 500, show_progress: bool = True,
                     description: str = "features") -> torch.Tensor:
    """Features of ``images`` (uint8, ``(N, C, H, W)``, any device) in batches; float32 on the CPU."""
    expected = (net.config.in_channels, net.config.sample_size, net.config.sample_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"the feature network takes images of shape (N, {', '.join(map(str, expected))}); got "
                         f"{tuple(images.shape)} (Fashion-MNIST-like data: 1 channel, sample_size 32)")
    device = net.device
    out = []
    for start in progress_bar(range(0, images.shape[0], batch_size), desc=description, disable=not show_progress,
                      leave=False):
        out.append(net.features(images[start:start + batch_size].to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, net.config.feature_dim)
