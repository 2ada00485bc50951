"""Convolutional building blocks shared by the VAE and the hierarchical VAE.

All blocks keep the spatial size unless their name says otherwise, take and return ``(B, C, H, W)`` tensors,
and import only torch, so that a published model folder can carry them as remote code.
"""

from __future__ import annotations

import torch
from torch import nn


def num_groups_for(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= ``max_groups`` that divides ``channels`` with at least 4 channels a group
    (1 for very narrow layers), so that GroupNorm works for any width in a config."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0 and channels // groups >= 4:
            return groups
    return 1


class SqueezeExcitation(nn.Module):
    """Channel gating from globally pooled features (Hu et al., 2018)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.SiLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv, twice, plus a (1x1 projected when widths differ) skip connection.

    The last conv of the residual branch starts at zero, so a freshly built network is the identity on its
    residual path: deep stacks start stable, which matters for likelihood models trained without warm-up tricks.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, use_squeeze_excitation: bool = False):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = nn.GroupNorm(num_groups_for(in_channels), in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(num_groups_for(out_channels), out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.squeeze_excitation = SqueezeExcitation(out_channels) if use_squeeze_excitation else nn.Identity()
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + self.squeeze_excitation(h)


class BottleneckBlock(nn.Module):
    """The bottleneck residual block of very deep VAEs (Child 2021, VDVAE), without normalisation as there:

        SiLU -> 1x1 conv to a quarter of the width -> SiLU -> 3x3 -> SiLU -> 3x3 -> SiLU -> 1x1 back to full width

    plus a (1x1 projected when widths differ) skip connection, as ``ResidualBlock``. The narrow middle makes the two
    3x3 convolutions cheap: about a quarter of ``ResidualBlock``'s FLOPs at the same width. The middle width is
    ``out_channels // 4``, but at least ``min(8, out_channels)``. The last 1x1 conv starts at zero, so a freshly
    built block is the identity on its residual path (VDVAE scales that layer down instead; zero is the limit of its
    scaling and what the other cells here do). With ``use_squeeze_excitation`` the branch is gated as in
    ``ResidualBlock``.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, use_squeeze_excitation: bool = False):
        super().__init__()
        out_channels = out_channels or in_channels
        hidden = max(out_channels // 4, min(8, out_channels))
        self.reduce = nn.Conv2d(in_channels, hidden, 1)
        self.conv1 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.expand = nn.Conv2d(hidden, out_channels, 1)
        nn.init.zeros_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)
        self.squeeze_excitation = SqueezeExcitation(out_channels) if use_squeeze_excitation else nn.Identity()
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.reduce(self.act(x))
        h = self.conv1(self.act(h))
        h = self.conv2(self.act(h))
        h = self.expand(self.act(h))
        return self.skip(x) + self.squeeze_excitation(h)


class InvertedResidualBlock(nn.Module):
    """The generative cell of NVAE (Vahdat & Kautz 2020, NVAE), an inverted residual (MobileNetV2-style) block:

        GroupNorm -> 1x1 conv expanding the width ``expansion`` times -> SiLU -> depthwise 5x5 conv (one filter per
        channel) -> SiLU -> 1x1 conv back to ``out_channels`` -> (squeeze-excitation)

    plus a (1x1 projected when widths differ) skip connection, as ``ResidualBlock``. The depthwise conv sees a
    5x5 neighbourhood at a small cost, and most of the FLOPs are in the two 1x1 convs. NVAE normalises with batch
    norm after every conv; one GroupNorm on the input keeps the block independent of the batch, as the rest of the
    house. The last 1x1 conv starts at zero, so a freshly built block is the identity on its residual path.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, use_squeeze_excitation: bool = False,
                 expansion: int = 3):
        super().__init__()
        out_channels = out_channels or in_channels
        hidden = expansion * in_channels
        self.norm = nn.GroupNorm(num_groups_for(in_channels), in_channels, eps=1e-6)
        self.expand = nn.Conv2d(in_channels, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, 5, padding=2, groups=hidden)
        self.project = nn.Conv2d(hidden, out_channels, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)
        self.squeeze_excitation = SqueezeExcitation(out_channels) if use_squeeze_excitation else nn.Identity()
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(self.norm(x))
        h = self.depthwise(self.act(h))
        h = self.project(self.act(h))
        return self.skip(x) + self.squeeze_excitation(h)


CELL_TYPES = ("resnet", "bottleneck", "inverted_residual")
_CELLS = {"resnet": ResidualBlock, "bottleneck": BottleneckBlock, "inverted_residual": InvertedResidualBlock}


def check_cell_type(cell_type: str) -> str:
    """``cell_type`` if it names a residual cell of ``residual_cell``, else a ValueError naming it and the choices."""
    if cell_type not in _CELLS:
        raise ValueError(f"cell_type must be one of {CELL_TYPES}, got {cell_type!r}: 'resnet' (ResidualBlock, "
                         f"the default), 'bottleneck' (BottleneckBlock, VDVAE) or 'inverted_residual' "
                         f"(InvertedResidualBlock, NVAE)")
    return cell_type


def residual_cell(cell_type: str, in_channels: int, out_channels: int | None = None,
                  use_squeeze_excitation: bool = False) -> nn.Module:
    """A residual cell of the kind ``cell_type`` names (one of ``CELL_TYPES``): ``"resnet"`` is ``ResidualBlock``,
    ``"bottleneck"`` ``BottleneckBlock`` and ``"inverted_residual"`` ``InvertedResidualBlock``. Every one keeps the
    spatial size, projects its skip when the widths differ and is the identity on its residual path when built."""
    return _CELLS[check_cell_type(cell_type)](in_channels, out_channels, use_squeeze_excitation)


class Downsample(nn.Module):
    """Halve height and width with a strided 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class CheckpointedSequential(nn.Module):
    """Runs blocks in order; with ``gradient_checkpointing`` on (set by diffusers'
    ``ModelMixin.enable_gradient_checkpointing``) each block's activations are recomputed in the backward pass."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block, x)
            else:
                x = block(x)
        return x


class ClassFiLM(nn.Module):
    """Feature-wise affine conditioning on a class embedding (FiLM, Perez et al., 2018):
    ``h * (1 + scale(e)) + shift(e)``, one scale and one shift per channel, from embeddings ``e`` of shape
    ``(B, embed_dim)``.

    The projection starts at zero, so a freshly built class-conditional network computes what the unconditional
    one does, and the labels' influence grows only as training finds it useful."""

    def __init__(self, embed_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(embedding).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        return h * (1 + scale) + shift
