"""Inception-v3 features for ``fid_inception``, from a weight file the user already has; nothing is downloaded.

The network is the "FID Inception" of TensorFlow's original FID code (the 2015-12-05 ImageNet graph), in the
layout of the weight file that the ``pytorch-fid`` project distributes (``pt_inception-2015-12-05-*.pth``, a
plain state dict). hfgen builds the network itself and loads that file with ``torch.load(weights_only=True)``;
a ``.safetensors`` file holding the same state dict works too. Parameter names follow that file
(``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight``).

How images are scored (as the standard FID network expects them): uint8 ``(N, C, H, W)`` with C = 1 or 3 ->
floats in [0, 1] -> grayscale repeated to 3 channels -> bilinear resize to 299x299 (``align_corners=False``) ->
scaled to [-1, 1] -> the network -> global average pool of the last block: 2048 numbers per image.

The FID variant differs from the usual Inception-v3 in its pooling branches: the average pools of the
"A", "C" and first "E" blocks leave padded zeros out of the average (as TensorFlow does), and the second "E" block
(``Mixed_7c``) max-pools instead. Figures computed here are comparable with published FIDs only with those
weights, and only at equal numbers of images (the estimator is biased by the sample count).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from ..progress import progress_bar

INCEPTION_INPUT_SIZE = 299  # pixels, each side
INCEPTION_FEATURE_DIM = 2048
INCEPTION_NUM_CLASSES = 1008  # the 2015-12-05 graph's logits (ImageNet classes plus unused ones); not used for FID
# Buffers that files written by older PyTorch versions lack; the network does not use them in eval mode.
OPTIONAL_KEY_SUFFIXES = (".num_batches_tracked",)


class ConvBNReLU(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, as in the TensorFlow graph), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _average_pool_without_padding(x: torch.Tensor) -> torch.Tensor:
    """3x3 average pool, stride 1, whose border averages count only real pixels (TensorFlow's behaviour)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | average pool -> 1x1."""

    def __init__(self, in_channels: int, pool_channels: int):
        super().__init__()
        self.branch1x1 = ConvBNReLU(in_channels, 64, 1)
        self.branch5x5_1 = ConvBNReLU(in_channels, 48, 1)
        self.branch5x5_2 = ConvBNReLU(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBNReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBNReLU(96, 96, 3, padding=1)
        self.branch_pool = ConvBNReLU(in_channels, pool_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        five = self.branch5x5_2(self.branch5x5_1(x))
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pooled = self.branch_pool(_average_pool_without_padding(x))
        return torch.cat([self.branch1x1(x), five, double, pooled], 1)


class ReductionB(nn.Module):
    """35x35 -> 17x17: 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | 3x3 max pool stride 2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = ConvBNReLU(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBNReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBNReLU(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), double, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 and 7x1)."""

    def __init__(self, in_channels: int, mid: int):
        super().__init__()
        self.branch1x1 = ConvBNReLU(in_channels, 192, 1)
        self.branch7x7_1 = ConvBNReLU(in_channels, mid, 1)
        self.branch7x7_2 = ConvBNReLU(mid, mid, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBNReLU(mid, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBNReLU(in_channels, mid, 1)
        self.branch7x7dbl_2 = ConvBNReLU(mid, mid, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBNReLU(mid, mid, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBNReLU(mid, mid, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBNReLU(mid, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBNReLU(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            double = layer(double)
        pooled = self.branch_pool(_average_pool_without_padding(x))
        return torch.cat([self.branch1x1(x), single, double, pooled], 1)


class ReductionD(nn.Module):
    """17x17 -> 8x8: 1x1 -> 3x3 stride 2 | 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2 | 3x3 max pool stride 2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = ConvBNReLU(in_channels, 192, 1)
        self.branch3x3_2 = ConvBNReLU(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBNReLU(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBNReLU(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBNReLU(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBNReLU(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = self.branch3x3_2(self.branch3x3_1(x))
        long = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([short, long, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class MixedE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs; ``max_pool`` selects the FID graph's pooling of ``Mixed_7c``."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBNReLU(in_channels, 320, 1)
        self.branch3x3_1 = ConvBNReLU(in_channels, 384, 1)
        self.branch3x3_2a = ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBNReLU(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBNReLU(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.branch3x3_1(x)
        split = torch.cat([self.branch3x3_2a(stem), self.branch3x3_2b(stem)], 1)
        stem = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        double = torch.cat([self.branch3x3dbl_3a(stem), self.branch3x3dbl_3b(stem)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _average_pool_without_padding(x)
        return torch.cat([self.branch1x1(x), split, double, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as the FID weights expect it; ``features`` gives the 2048-d pool features of uint8 images."""

    feature_dim = INCEPTION_FEATURE_DIM

    def __init__(self, num_classes: int = INCEPTION_NUM_CLASSES):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBNReLU(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBNReLU(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBNReLU(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBNReLU(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBNReLU(80, 192, 3)
        self.Mixed_5b = MixedA(192, pool_channels=32)
        self.Mixed_5c = MixedA(256, pool_channels=64)
        self.Mixed_5d = MixedA(288, pool_channels=64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = MixedC(768, mid=128)
        self.Mixed_6c = MixedC(768, mid=160)
        self.Mixed_6d = MixedC(768, mid=160)
        self.Mixed_6e = MixedC(768, mid=192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = MixedE(1280, max_pool=False)
        self.Mixed_7c = MixedE(2048, max_pool=True)
        # The classifier is part of the weight file; FID does not use it.
        self.fc = nn.Linear(INCEPTION_FEATURE_DIM, num_classes)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 1 or 3, H, W)`` (or floats in [0, 1]) -> floats in [-1, 1], ``(N, 3, 299, 299)``."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception-v3 takes images of shape (N, 1 or 3, H, W); got {tuple(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE), mode="bilinear",
                          align_corners=False)
        return 2.0 * x - 1.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Average-pooled output of ``Mixed_7c``, ``(N, 2048)``."""
        x = self.preprocess(images)
        for layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3):
            x = layer(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (1008 of them for the FID weights)."""
        return self.fc(self.features(images))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # a truncated or foreign file
            raise ValueError(f"could not read Inception-v3 weights from {path} as safetensors: {error}") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, or a file that is not a state dict of tensors
        raise ValueError(f"could not read Inception-v3 weights from {path} as a PyTorch state dict "
                         f"(torch.load with weights_only=True): {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (got {type(state).__name__}); expected the "
                         f"FID Inception weights (pt_inception-2015-12-05-*.pth) or a .safetensors file of them")
    return state


def _summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_inception(weights: str | os.PathLike, device: torch.device | str | None = None) -> FIDInceptionV3:
    """The FID Inception-v3 with the weights of the local file ``weights`` (``.pth`` state dict or
    ``.safetensors``), in eval mode on ``device`` (default CPU). Never downloads anything.

    Raises ``FileNotFoundError`` naming the path when there is no such file, and ``ValueError`` naming the file
    and the missing / unexpected / wrongly shaped parameters when the file is not this network's weights.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception-v3 weight file {str(path)!r} does not exist; pass the path of a local "
                                f"copy of pytorch-fid's pt_inception-2015-12-05-*.pth (hfgen never downloads it)")
    state = _read_state_dict(path)
    net = FIDInceptionV3()
    expected = net.state_dict()
    optional = {k for k in expected if k.endswith(OPTIONAL_KEY_SUFFIXES)}
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    misshapen = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
                       if k in state and state[k].shape != v.shape)
    if missing or unexpected or misshapen:
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {_summarise(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_summarise(unexpected)}")
        if misshapen:
            problems.append(f"wrong shapes ({len(misshapen)}): {_summarise(misshapen)}")
        raise ValueError(f"{path} is not a complete FID Inception-v3 state dict: " + "; ".join(problems))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    net.eval().requires_grad_(False)
    if device is not None:
        net.to(device)
    return net


@lru_cache(maxsize=None)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def inception_weights_hash(weights: str | os.PathLike) -> str:
    """First 16 hex digits of the SHA-256 of the weight file (keys the cached reference statistics)."""
    path = Path(weights).expanduser().resolve()
    stat = path.stat()
    return _file_hash(str(path), stat.st_size, stat.st_mtime_ns)


@torch.no_grad()
def extract_inception_features(net: FIDInceptionV3, images: torch.Tensor, batch_size: int = 50,
                               show_progress: bool = True, description: str = "Inception features") -> torch.Tensor:
    """2048-d pool features of uint8 ``images`` ``(N, 1 or 3, H, W)`` in batches; float32 ``(N, 2048)`` on the CPU."""
    device = next(net.parameters()).device
    out = []
    for start in progress_bar(range(0, images.shape[0], batch_size), desc=description, disable=not show_progress,
                      leave=False):
        out.append(net.features(images[start:start + batch_size].to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, INCEPTION_FEATURE_DIM)
