"""How many pixel values an image has: `num_dimensions` (C * H * W) and `SourceShape` (a split's own image size
before zero padding), the D that bits/dim divide by."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError


def num_dimensions(channels: int, sample_size: int) -> int:
    """The number of pixel values per image, C * H * W: the D that turns nats per image into bits/dim."""
    if channels < 1 or sample_size < 1:
        raise DataError(f"channels={channels} and sample_size={sample_size}; expected both to be positive integers")
    return channels * sample_size * sample_size


@dataclass(frozen=True)
class SourceShape:
    """``(channels, height, width)`` of a split's own images before zero padding: the dimensions that bits/dim
    divide by (784 for Fashion-MNIST's 28x28 images, though models see them padded to 32x32). Images that were
    resized count at the size the model sees; a split whose images come in several sizes counts the whole square
    (``mixed_sizes``), since no one size describes it."""

    channels: int
    height: int
    width: int
    mixed_sizes: bool = False

    @property
    def num_dims(self) -> int:
        return self.channels * self.height * self.width

    def is_padded(self, sample_size: int) -> bool:
        """Whether the model's ``sample_size`` square adds a zero border around these images."""
        return (self.height, self.width) != (sample_size, sample_size)

    def as_list(self) -> list[int]:
        return [self.channels, self.height, self.width]
