"""Pixel likelihoods p(x | decoder output) for 8-bit images, shared by the VAE and the hierarchical VAE.

Every likelihood works on 8-bit data (``uint8`` tensors of shape ``(batch, channels, height, width)``) and
returns ``log p(x)`` **per image, in nats**, as a bound on the probability of the *discrete* 8-bit image, so
that all likelihoods (and all model families) are compared on one scale:

- ``bernoulli``: the image is dynamically binarized (each pixel is 1 with probability ``x / 255``); the
  likelihood is that of the binary image, so its bits/dim are those of binarized data (the usual
  "dynamically binarized" benchmark), not of the 8-bit data.
- ``discretized_logistic``: the probability mass of each of the 256 bins under a (mixture of) logistic(s),
  PixelCNN++ style; with ``num_mixtures > 1`` and RGB data the channels are coupled by linear coefficients.
- ``gaussian``: a continuous Gaussian density on uniformly dequantized data; ``log p`` includes the
  change of variables from [-1, 1] back to the 8-bit grid, so it is a lower bound on the discrete
  log-likelihood (Theis et al., 2016).

The decoder emits ``num_params(channels)`` channels; ``log_prob`` reads them. Model inputs are images scaled
to [-1, 1], produced by :meth:`PixelLikelihood.prepare`, which also draws the binarization or dequantization
noise from the given generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOODS = ("bernoulli", "discretized_logistic", "gaussian")
#: ``pixel_passes`` choices: 1, every pixel independent given z; 2, a checkerboard; 4, the four pixels of every
#: 2x2 cell in turn (``InterleavedPixelPasses``)
PIXEL_PASSES = (1, 2, 4)

# Number of bins of 8-bit data, and half of one bin's width on the [-1, 1] scale.
_NUM_BINS = 256
_HALF_BIN = 1.0 / (_NUM_BINS - 1)
_LOG_SCALE_MIN = -7.0
_LN2 = math.log(2.0)


def uint8_to_unit_interval(x_uint8: torch.Tensor) -> torch.Tensor:
    """Map 8-bit pixels {0..255} to bin centres in [-1, 1]."""
    return x_uint8.float() * (2.0 / 255.0) - 1.0


def unit_interval_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map images in [-1, 1] to the nearest 8-bit value (clamped)."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate on the whole range (Maechler 2012): ``log(-expm1(x))`` near
    zero, ``log1p(-exp(x))`` further out."""
    near_zero = x > -_LN2
    # each branch sees only inputs in its own range, so the branch not taken never puts inf or NaN in a gradient
    close = torch.log(-torch.expm1(torch.where(near_zero, x, -_LN2)))
    far = torch.log1p(-torch.exp(torch.where(near_zero, -_LN2, x)))
    return torch.where(near_zero, close, far)


def nats_to_bits_per_dim(nats_per_image: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """Convert a negative log-likelihood in nats per image to bits per dimension."""
    return nats_per_image / (num_dims * math.log(2.0))


def bits_per_dim_to_nats(bits_per_dim: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """Convert bits per dimension to nats per image."""
    return bits_per_dim * num_dims * math.log(2.0)


class SourceRegion:
    """Where a data set's own ``height x width`` images lie inside the ``sample_size`` square a model sees: the
    data layer zero-pads them evenly (an odd remainder at the bottom / right; ``hfgen.data`` pads with this class,
    so the rule is written once). A model whose ``p(x | z)`` factorises over pixels scores only this region, which
    makes its bound one on the image itself, the border being a fixed function of it (zeros); its decoded images
    get that border back, and its pipelines take and return images of either size (``to_sample_size``, ``crop``)."""

    def __init__(self, sample_size: int, source_size):
        height, width = (int(v) for v in source_size)
        if not (1 <= height <= sample_size and 1 <= width <= sample_size):
            raise ValueError(f"source_size={list(source_size)} must fit inside sample_size={sample_size}: expected "
                             f"1 <= height, width <= {sample_size}")
        self.sample_size, self.height, self.width = sample_size, height, width
        self.top, self.left = (sample_size - height) // 2, (sample_size - width) // 2
        #: the region's rows and columns of the square, as slices (``square[..., rows, columns]``)
        self.rows, self.columns = slice(self.top, self.top + height), slice(self.left, self.left + width)

    @staticmethod
    def num_dims(region: "SourceRegion | None", channels: int, sample_size: int) -> int:
        """C * H * W of the pixels a model with this region (None: the whole square) scores."""
        if region is None:
            return channels * sample_size * sample_size
        return channels * region.height * region.width

    @staticmethod
    def log_prob(region: "SourceRegion | None", likelihood: "PixelLikelihood", params: torch.Tensor,
                 target: torch.Tensor) -> torch.Tensor:
        """``likelihood.log_prob`` over the region's pixels only (all of them when ``region`` is None)."""
        if region is not None:
            params, target = region.crop(params), region.crop(target)
        return likelihood.log_prob(params, target)

    @staticmethod
    def to_sample_size(region: "SourceRegion | None", images: torch.Tensor, channels: int,
                       sample_size: int) -> torch.Tensor:
        """Images ``(batch, channels, H, W)`` (``uint8``, or floats in [-1, 1]) as the model takes them: at its
        ``sample_size`` as they are, at the data's own size (the region's) zero-padded as the data layer pads them
        (8-bit 0, i.e. -1 for floats). Any other shape is refused, naming the sizes a model accepts."""
        square = (channels, sample_size, sample_size)
        own = None if region is None or (region.height, region.width) == (sample_size, sample_size) else (
            channels, region.height, region.width)
        if images.ndim == 4 and tuple(images.shape[1:]) == square:
            return images
        if images.ndim == 4 and own is not None and tuple(images.shape[1:]) == own:
            return region.pad(images, 0 if images.dtype == torch.uint8 else -1.0)
        if own is None:
            raise ValueError(f"expected images of shape (batch, {channels}, {sample_size}, {sample_size}) (channels, "
                             f"height, width from the model config), got {tuple(images.shape)}")
        raise ValueError(f"expected images of shape (batch, {channels}, {own[1]}, {own[2]}) (the data's own size, "
                         f"source_size in the model config) or (batch, {channels}, {sample_size}, {sample_size}) (the "
                         f"model's sample_size, zero-padded), got {tuple(images.shape)}")

    def crop(self, tensor: torch.Tensor) -> torch.Tensor:
        """The region of a ``(..., sample_size, sample_size)`` tensor."""
        return tensor[..., self.rows, self.columns]

    def pad(self, images: torch.Tensor, value: float) -> torch.Tensor:
        """``(..., height, width)`` images of the region's size -> ``(..., sample_size, sample_size)``, the border
        at ``value`` (the data layer's zero padding: 0 for 8-bit images, -1 for images in [-1, 1])."""
        square = images.new_full((*images.shape[:-2], self.sample_size, self.sample_size), value)
        square[..., self.rows, self.columns] = images
        return square

    def with_zero_border(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] with the padded border set to the padding value (8-bit 0, i.e. -1)."""
        bottom = self.sample_size - self.top - self.height
        right = self.sample_size - self.left - self.width
        return F.pad(self.crop(images), (self.left, right, self.top, bottom), value=-1.0)


@dataclass
class PreparedBatch:
    """A batch ready for a likelihood model.

    model_input: images in [-1, 1] as the encoder sees them (binarized or dequantized where the likelihood
        asks for it), float32, shape (B, C, H, W).
    target: what ``log_prob`` scores: binary {0, 1} for Bernoulli, bin centres in [-1, 1] for the
        discretized logistic, dequantized values in [-1, 1] for the Gaussian.
    """

    model_input: torch.Tensor
    target: torch.Tensor


class PixelLikelihood:
    """Base class: the decoder's output parameterises ``p(x | z)`` independently per pixel (given z)."""

    name: str = ""

    def __init__(self, num_mixtures: int = 1):
        if num_mixtures < 1:
            raise ValueError(f"num_mixtures must be a positive integer, got {num_mixtures}")
        self.num_mixtures = num_mixtures

    def num_params(self, channels: int) -> int:
        """Channels the decoder must output for an image of ``channels`` channels."""
        raise NotImplementedError

    def prepare(self, x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> PreparedBatch:
        target = uint8_to_unit_interval(x_uint8)
        return PreparedBatch(model_input=target, target=target)

    def log_prob(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log p(target | params) summed over pixels and channels: shape (B,), nats per image."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor, channels: int) -> torch.Tensor:
        """The expected image in [-1, 1] (what a sample grid usually shows)."""
        raise NotImplementedError

    def as_image(self, target: torch.Tensor) -> torch.Tensor:
        """A ``target`` as pixel values in [-1, 1] (what later passes of ``InterleavedPixelPasses`` see)."""
        return target

    def sample(self, params: torch.Tensor, channels: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw of every pixel, returned in [-1, 1] on the 8-bit (or binary) grid."""
        raise NotImplementedError


def _uniform(shape, like: torch.Tensor, generator: torch.Generator | None, low: float = 0.0, high: float = 1.0):
    """Uniform noise on ``like``'s device, drawn from ``generator`` (which may live on the CPU)."""
    gen_device = generator.device if generator is not None else like.device
    u = torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float32)
    return (u.to(like.device) * (high - low) + low)


class BernoulliLikelihood(PixelLikelihood):
    name = "bernoulli"

    def num_params(self, channels: int) -> int:
        return channels

    def prepare(self, x_uint8, generator=None):
        probs = x_uint8.float() / 255.0
        binary = (_uniform(probs.shape, probs, generator) < probs).float()
        return PreparedBatch(model_input=binary * 2.0 - 1.0, target=binary)

    def log_prob(self, params, target):
        logits = params.float()
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)

    def mean(self, params, channels):
        return torch.sigmoid(params.float()) * 2.0 - 1.0

    def as_image(self, target):
        return target * 2.0 - 1.0

    def sample(self, params, channels, generator=None):
        probs = torch.sigmoid(params.float())
        return (_uniform(probs.shape, probs, generator) < probs).float() * 2.0 - 1.0


def _bin_of(dequantized: torch.Tensor) -> torch.Tensor:
    """The 8-bit value whose bin ``[x, x + 1) * 2 / 256 - 1`` holds each value in [-1, 1] (clamped to 0..255)."""
    return torch.floor((dequantized.float() + 1.0) * (_NUM_BINS / 2.0)).clamp(0, _NUM_BINS - 1)


class GaussianLikelihood(PixelLikelihood):
    """Per-pixel Gaussian with a learned mean and log-scale on uniformly dequantized data: pixel value ``x`` is the
    bin ``[x, x + 1) * 2 / 256 - 1`` of the [-1, 1] scale. ``sample`` returns the bin of a Gaussian draw, so draws
    follow the bin masses the bound is built on (the mass outside [-1, 1], which the bound leaves out, goes to the
    end bins)."""

    name = "gaussian"

    def num_params(self, channels: int) -> int:
        return 2 * channels

    def prepare(self, x_uint8, generator=None):
        noise = _uniform(x_uint8.shape, x_uint8.float(), generator)
        dequantized = (x_uint8.float() + noise) * (2.0 / _NUM_BINS) - 1.0
        return PreparedBatch(model_input=dequantized, target=dequantized)

    def as_image(self, target):
        """The 8-bit image a dequantized ``target`` came from, as bin centres in [-1, 1]: the dequantization noise
        never reaches what later pixel passes see."""
        return uint8_to_unit_interval(_bin_of(target))

    def _split(self, params):
        mean, log_scale = params.float().chunk(2, dim=1)
        return mean, log_scale.clamp(min=_LOG_SCALE_MIN)

    def log_prob(self, params, target):
        mean, log_scale = self._split(params)
        z = (target - mean) * torch.exp(-log_scale)
        log_density = -0.5 * z.pow(2) - log_scale - 0.5 * math.log(2 * math.pi)
        # Density on [-1, 1] -> density on the [0, 256) grid, whose unit-width bins hold the discrete mass.
        log_density = log_density - math.log(_NUM_BINS / 2.0)
        return log_density.flatten(1).sum(1)

    def mean(self, params, channels):
        return self._split(params)[0].clamp(-1, 1)

    def sample(self, params, channels, generator=None):
        mean, log_scale = self._split(params)
        gen_device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=gen_device).to(mean.device)
        return uint8_to_unit_interval(_bin_of(mean + eps * torch.exp(log_scale)))


class DiscretizedLogisticLikelihood(PixelLikelihood):
    """Discretized logistic, or a mixture of ``num_mixtures`` of them, over the 256 bins of each channel.

    Decoder output layout (per pixel): ``num_mixtures`` mixture logits, then ``num_mixtures * C`` means,
    ``num_mixtures * C`` log-scales and, for RGB with a mixture, ``num_mixtures * 3`` channel-coupling
    coefficients (green depends on red; blue on red and green), as in PixelCNN++.
    With ``num_mixtures == 1`` there are no mixture logits and no coupling: one logistic per channel.
    """

    name = "discretized_logistic"

    def _couples_channels(self, channels: int) -> bool:
        return self.num_mixtures > 1 and channels == 3

    def num_params(self, channels: int) -> int:
        k = self.num_mixtures
        if k == 1:
            return 2 * channels
        coupling = 3 if self._couples_channels(channels) else 0
        return k + k * (2 * channels + coupling)

    def _split(self, params: torch.Tensor, channels: int):
        """Return logits (B,K,H,W), means (B,K,C,H,W), log_scales (B,K,C,H,W), coeffs (B,K,3,H,W) | None."""
        params = params.float()
        b, _, h, w = params.shape
        k = self.num_mixtures
        if k == 1:
            means, log_scales = params.chunk(2, dim=1)
            logits = params.new_zeros(b, 1, h, w)
            return logits, means.unsqueeze(1), log_scales.clamp(min=_LOG_SCALE_MIN).unsqueeze(1), None
        logits = params[:, :k]
        rest = params[:, k:]
        means = rest[:, : k * channels].reshape(b, k, channels, h, w)
        log_scales = rest[:, k * channels : 2 * k * channels].reshape(b, k, channels, h, w)
        coeffs = None
        if self._couples_channels(channels):
            coeffs = torch.tanh(rest[:, 2 * k * channels :].reshape(b, k, 3, h, w))
        return logits, means, log_scales.clamp(min=_LOG_SCALE_MIN), coeffs

    @staticmethod
    def _coupled_means(means, coeffs, target):
        """Shift the green and blue means by the (observed) red and green values, per component."""
        if coeffs is None:
            return means
        x = target.unsqueeze(1)  # (B,1,3,H,W)
        red = means[:, :, 0]
        green = means[:, :, 1] + coeffs[:, :, 0] * x[:, :, 0]
        blue = means[:, :, 2] + coeffs[:, :, 1] * x[:, :, 0] + coeffs[:, :, 2] * x[:, :, 1]
        return torch.stack([red, green, blue], dim=2)

    def log_prob(self, params, target):
        channels = target.shape[1]
        logits, means, log_scales, coeffs = self._split(params, channels)
        means = self._coupled_means(means, coeffs, target)
        x = target.unsqueeze(1)  # (B,1,C,H,W), bin centres in [-1, 1]
        centred = x - means
        inv_scale = torch.exp(-log_scales)
        upper = inv_scale * (centred + _HALF_BIN)
        lower = inv_scale * (centred - _HALF_BIN)
        # log P(bin) with no clamp and no density fallback, exact in the far tails on both sides:
        # lowest bin log sigmoid(upper); highest bin log(1 - sigmoid(lower)) = log sigmoid(-lower); interior bins
        # sigmoid(u) - sigmoid(l) = sigmoid(u) sigmoid(-l) (1 - e^(l - u)), where l - u = -2 * half-bin / scale.
        log_mass_interior = F.logsigmoid(upper) + F.logsigmoid(-lower) + log1mexp(lower - upper)
        log_mass = torch.where(
            x < -1.0 + _HALF_BIN,
            F.logsigmoid(upper),
            torch.where(x > 1.0 - _HALF_BIN, F.logsigmoid(-lower), log_mass_interior),
        )
        # Channels are independent given the component (coupling already applied): sum them, then mix.
        log_mass = log_mass.sum(dim=2) + torch.log_softmax(logits, dim=1)  # (B,K,H,W)
        return torch.logsumexp(log_mass, dim=1).flatten(1).sum(1)

    def _component(self, logits, generator):
        """Draw one mixture component per pixel (Gumbel-max), returned as a one-hot (B,K,1,H,W)."""
        u = _uniform(logits.shape, logits, generator, 1e-5, 1.0 - 1e-5)
        choice = torch.argmax(logits - torch.log(-torch.log(u)), dim=1)
        return F.one_hot(choice, self.num_mixtures).permute(0, 3, 1, 2).unsqueeze(2).float()

    def mean(self, params, channels):
        logits, means, log_scales, coeffs = self._split(params, channels)
        weights = torch.softmax(logits, dim=1).unsqueeze(2)
        if coeffs is None:
            return (weights * means).sum(1).clamp(-1, 1)
        # With coupled channels the mean of green depends on red: fill the channels in order.
        out = torch.zeros_like(means[:, 0])
        for c in range(3):
            coupled = self._coupled_means(means, coeffs, out)
            out[:, c] = (weights[:, :, 0] * coupled[:, :, c]).sum(1).clamp(-1, 1)
        return out

    def sample(self, params, channels, generator=None):
        logits, means, log_scales, coeffs = self._split(params, channels)
        one_hot = self._component(logits, generator)
        mean = (one_hot * means).sum(1)
        log_scale = (one_hot * log_scales).sum(1)
        u = _uniform(mean.shape, mean, generator, 1e-5, 1.0 - 1e-5)
        noise = torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        x = (mean + noise).clamp(-1, 1)
        if coeffs is not None:
            c = (one_hot * coeffs).sum(1)
            red = x[:, 0]
            green = (x[:, 1] + c[:, 0] * red).clamp(-1, 1)
            blue = (x[:, 2] + c[:, 1] * red + c[:, 2] * green).clamp(-1, 1)
            x = torch.stack([red, green, blue], dim=1)
        return unit_interval_to_uint8(x).float() * (2.0 / 255.0) - 1.0


def check_pixel_passes(passes: int, layers: int = 0) -> None:
    """Refuse a ``pixel_passes`` or ``pixel_pass_layers`` value a model cannot be built with."""
    if passes not in PIXEL_PASSES:
        raise ValueError(f"pixel_passes must be one of {PIXEL_PASSES}, got {passes}")
    if layers < 0:
        raise ValueError(f"pixel_pass_layers must be >= 0, got {layers}")
    if layers and passes == 1:
        raise ValueError(f"pixel_pass_layers={layers} belongs to the passes of pixel_passes 2 or 4; with "
                         f"pixel_passes=1 set pixel_pass_layers=0 (--pixel_pass_layers 0)")


class InterleavedPixelPasses(nn.Module):
    """``p(x | z)`` as a product over ``passes`` interleaved sets of pixels, each conditioned on the sets before it:
    ``p(x | z) = prod_k p(x_k | x_<k, z)``, with every ``p(x_k | x_<k, z)`` the chosen pixel likelihood,
    independent over the pixels of set k. Two passes split the image as a checkerboard; four take the pixels of
    each 2x2 cell in the order top-left, bottom-right, top-right, bottom-left, so that from the second pass on
    every pixel has decoded neighbours (diagonal, then horizontal and vertical ones). The likelihood stays exact,
    so a bound built on it stays a bound, and sampling takes ``passes`` steps, not one per pixel.

    The already decoded pixels (and the known border of a ``SourceRegion``) enter through one 3x3 convolution
    that is added to the decoder's last feature map before its output nonlinearity, followed by ``layers``
    residual 3x3 convolutions (``h + silu(conv(h))``) before the output layer; all of them start at zero, so an
    untrained model is the independent one. Training scores every pass at once (teacher forcing: one copy of the
    feature map per pass)."""

    def __init__(self, passes: int, in_channels: int, width: int, sample_size: int,
                 region: "SourceRegion | None" = None, layers: int = 0):
        super().__init__()
        check_pixel_passes(passes, layers)
        rows = torch.arange(sample_size).view(-1, 1) % 2
        cols = torch.arange(sample_size).view(1, -1) % 2
        if passes == 2:
            order = (rows + cols) % 2
        else:  # 2x2 cells: (0, 0) -> 0, (1, 1) -> 1, (0, 1) -> 2, (1, 0) -> 3; one pass (unused here): all 0
            order = torch.where(rows == cols, rows, 2 + rows) if passes == 4 else torch.zeros_like(rows + cols)
        known = torch.zeros(sample_size, sample_size, dtype=torch.bool)
        if region is not None:  # the border is a fixed function of the image: every pass may see it
            known[:] = True
            region.crop(known)[...] = False
        self.passes = passes
        # (passes, 1, H, W): which pixels pass k may see, and which it decodes
        self.register_buffer("visible", torch.stack([(order < k) | known for k in range(passes)])[:, None].float(),
                             persistent=False)
        self.register_buffer("decoded", torch.stack([(order == k) & ~known for k in range(passes)])[:, None].float(),
                             persistent=False)
        self.context = nn.Conv2d(2 * in_channels, width, 3, padding=1)
        self.layers = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1) for _ in range(layers)])
        for conv in (self.context, *self.layers):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def _head(self, pre_activation: torch.Tensor, output: nn.Module) -> torch.Tensor:
        """The likelihood's parameters from the decoder's state plus the context of the decoded pixels."""
        h = nn.functional.silu(pre_activation)
        for conv in self.layers:
            h = h + nn.functional.silu(conv(h))
        return output(h)

    def _context(self, image: torch.Tensor, k) -> torch.Tensor:
        """The context convolution of what pass(es) ``k`` see of ``image`` (``(..., C, H, W)`` in [-1, 1])."""
        visible = self.visible[k].unsqueeze(1).to(image.dtype)  # (passes in k, 1, 1, H, W)
        seen = image * visible
        return self.context(torch.cat([seen, visible.expand_as(seen)], dim=-3).flatten(0, -4))

    def parameters_given(self, state: torch.Tensor, image: torch.Tensor, output: nn.Module) -> torch.Tensor:
        """The likelihood's parameters of every pixel given the pixels of the passes before its own (teacher
        forcing): ``state`` is the decoder's pre-activation feature map ``(B, width, H, W)``, ``image`` the target
        ``(B, C, H, W)`` in [-1, 1] (``likelihood.as_image`` of the target: the 8-bit image, never its
        dequantization noise), ``output`` the layer from ``silu(features)`` to the parameters. What each pass sees is
        what ``decode`` gives it: earlier passes' pixels on the 8-bit grid, the border at the padding value."""
        b = state.shape[0]
        image = uint8_to_unit_interval(unit_interval_to_uint8(image)).to(state.dtype)  # the grid decode() sees
        image = torch.where(self.visible[0].bool(), -1.0, image)  # the known border: decode()'s padding value
        context = self._context(image.unsqueeze(0), slice(None)).view(self.passes, b, *state.shape[1:])
        params = self._head((state.unsqueeze(0) + context).flatten(0, 1), output)
        params = params.view(self.passes, b, *params.shape[1:])
        return (params * self.decoded.unsqueeze(1).to(params.dtype)).sum(0)

    def decode(self, state: torch.Tensor, output: nn.Module, likelihood: PixelLikelihood, channels: int,
               sample_pixels: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] decoded pass by pass: each pass takes the likelihood's mean (or, ``sample_pixels``,
        one draw from ``generator``) given the pixels before it, which later passes see on the 8-bit grid."""
        b, _, h, w = state.shape
        image = torch.full((b, channels, h, w), -1.0, device=state.device, dtype=state.dtype)
        for k in range(self.passes):
            params = self._head(state + self._context(image.unsqueeze(0), slice(k, k + 1)), output)
            drawn = (likelihood.sample(params, channels, generator) if sample_pixels
                     else likelihood.mean(params, channels))
            values = uint8_to_unit_interval(unit_interval_to_uint8(drawn)).to(state.dtype)
            image = torch.where(self.decoded[k].bool(), values, image)
        return image


def score_pixels(likelihood: PixelLikelihood, passes: InterleavedPixelPasses | None, region: SourceRegion | None,
                 params: torch.Tensor, target: torch.Tensor, output: nn.Module) -> torch.Tensor:
    """``log p(x | z)`` per image (nats) over the region's pixels (the padded border is not scored). ``params`` are
    the likelihood's parameters, or with ``passes`` the decoder's state, which becomes each pass's parameters given
    the passes before it (``output``: the layer from ``silu(state)`` to the parameters); ``target`` as
    ``likelihood.prepare`` gives it."""
    if passes is not None:
        params = passes.parameters_given(params, likelihood.as_image(target), output)
    return SourceRegion.log_prob(region, likelihood, params, target)


def decode_pixels(likelihood: PixelLikelihood, passes: InterleavedPixelPasses | None, region: SourceRegion | None,
                  params: torch.Tensor, output: nn.Module, channels: int, sample_pixels: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] from the decoder's output (``params``, or with ``passes`` its state, as for
    ``score_pixels``): the likelihood's mean, or one draw from ``generator`` if ``sample_pixels``; with ``passes``,
    pass by pass, each given the pixels decoded before it. The region's border is set back to the padding value."""
    if passes is not None:
        image = passes.decode(params, output, likelihood, channels, sample_pixels, generator)
    elif sample_pixels:
        image = likelihood.sample(params, channels, generator)
    else:
        image = likelihood.mean(params, channels)
    return image if region is None else region.with_zero_border(image)


def get_likelihood(name: str, num_mixtures: int = 1) -> PixelLikelihood:
    """Build a likelihood by its config name (``bernoulli``, ``discretized_logistic`` or ``gaussian``)."""
    classes = {
        "bernoulli": BernoulliLikelihood,
        "discretized_logistic": DiscretizedLogisticLikelihood,
        "gaussian": GaussianLikelihood,
    }
    if name not in classes:
        raise ValueError(f"unknown likelihood {name!r}; expected one of {', '.join(LIKELIHOODS)}")
    if name != "discretized_logistic" and num_mixtures != 1:
        raise ValueError(f"num_mixtures={num_mixtures} is only meaningful for 'discretized_logistic'; use 1 for {name!r}")
    return classes[name](num_mixtures=num_mixtures)
