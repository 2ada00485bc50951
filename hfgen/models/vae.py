"""VAEModel: a convolutional variational autoencoder with a Gaussian latent, trained on the ELBO.

    q(z | x) = N(mu(x), diag sigma(x)^2)      encoder: residual conv blocks, downsampling to the latent
    p(z)     = N(0, I)
    p(x | z)                                  decoder: residual conv blocks + a pixel likelihood (likelihoods.py)

All log-likelihood figures are per image, in nats, over the 8-bit image (see ``likelihoods.py``); divide by
``num_dims * ln 2`` (``nats_to_bits_per_dim``) for bits per dimension, where ``num_dims = C * H * W`` of the
data's own images: with ``source_size`` (Fashion-MNIST's 28x28 seen padded to 32x32) only those pixels are scored,
so the bound is one on the 28x28 image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from diffusers.utils.torch_utils import randn_tensor

from .blocks import CheckpointedSequential, Downsample, ResidualBlock, Upsample, num_groups_for
from .likelihoods import SourceRegion, get_likelihood, nats_to_bits_per_dim, unit_interval_to_uint8


@dataclass
class VAEOutput(BaseOutput):
    """Output of ``VAEModel.forward``; every per-image tensor has shape ``(batch,)``.

    loss: scalar training objective, the batch mean of ``(reconstruction_nll + kl_weight * kl) / num_dims``
        (nats per dimension, so learning rates do not depend on the image size).
    reconstruction_nll: ``-log p(x | z)`` for one posterior sample, nats per image.
    kl: ``KL(q(z | x) || p(z))``, nats per image (analytic).
    elbo: ``log p(x | z) - KL``, a lower bound on ``log p(x)``, nats per image (a negative number).
    bits_per_dim: ``-elbo`` in bits per dimension.
    """

    # Defaults let Accelerate rebuild the output from a dict when it casts mixed-precision outputs to fp32.
    loss: torch.Tensor = None
    reconstruction_nll: torch.Tensor = None
    kl: torch.Tensor = None
    elbo: torch.Tensor = None
    bits_per_dim: torch.Tensor = None


@dataclass
class LikelihoodBoundsOutput(BaseOutput):
    """Upper bounds on the negative log-likelihood ``-log p(x)`` per image, in nats (shape ``(batch,)``).

    nats_per_image_elbo: the negative ELBO, averaged over the ``importance_samples`` posterior samples.
    nats_per_image_iw: the negative importance-weighted bound (IWAE, Burda et al. 2016) with the same samples;
        never above ``nats_per_image_elbo`` and tighter as ``importance_samples`` grows.
    """

    nats_per_image_elbo: torch.Tensor = None
    nats_per_image_iw: torch.Tensor = None


def _standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over all but the first dimension."""
    return (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


def _resolution_stack(width: int, widths: list[int], layers_per_block: int, resample: type[nn.Module]):
    """Residual blocks at each resolution of ``widths``, with ``resample`` (Downsample or Upsample) between
    resolutions; returns the stack and its output width."""
    blocks: list[nn.Module] = []
    for level, out_width in enumerate(widths):
        for _ in range(layers_per_block):
            blocks.append(ResidualBlock(width, out_width))
            width = out_width
        if level < len(widths) - 1:
            blocks.append(resample(width))
    return CheckpointedSequential(blocks), width


class VAEEncoder(nn.Module):
    """x in [-1, 1] -> mean and log-variance of q(z | x), concatenated along channels: ``(B, 2 * latent_channels,
    s, s)`` for a spatial latent, or ``(B, 2 * latent_dim, 1, 1)`` through a linear layer for a vector latent."""

    def __init__(self, in_channels, block_out_channels, layers_per_block, latent_channels, latent_dim, size):
        super().__init__()
        widths = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks, width = _resolution_stack(widths[0], widths, layers_per_block, Downsample)
        self.norm_out = nn.GroupNorm(num_groups_for(width), width, eps=1e-6)
        if latent_dim:
            self.conv_out = nn.Conv2d(width, latent_channels, 3, padding=1)
            self.to_vector = nn.Linear(latent_channels * size * size, 2 * latent_dim)
        else:
            self.conv_out = nn.Conv2d(width, 2 * latent_channels, 3, padding=1)
            self.to_vector = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.conv_in(x))
        h = self.conv_out(nn.functional.silu(self.norm_out(h)))
        if self.to_vector is None:
            return h
        return self.to_vector(nn.functional.silu(h).flatten(1))[:, :, None, None]


class VAEDecoder(nn.Module):
    """z -> the pixel likelihood's parameters at full resolution (the encoder's widths in reverse); a vector
    latent first goes through a linear layer to a ``(latent_channels, s, s)`` feature map."""

    def __init__(self, latent_channels, block_out_channels, layers_per_block, out_channels, latent_dim, size):
        super().__init__()
        widths = list(reversed(block_out_channels))
        self.from_vector = nn.Linear(latent_dim, latent_channels * size * size) if latent_dim else None
        self.feature_shape = (latent_channels, size, size)
        self.conv_in = nn.Conv2d(latent_channels, widths[0], 3, padding=1)
        self.blocks, width = _resolution_stack(widths[0], widths, layers_per_block, Upsample)
        self.norm_out = nn.GroupNorm(num_groups_for(width), width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.from_vector is not None:
            z = nn.functional.silu(self.from_vector(z.flatten(1))).view(-1, *self.feature_shape)
        h = self.blocks(self.conv_in(z))
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class VAEModel(ModelMixin, ConfigMixin):
    r"""A Gaussian-latent VAE for images, with a choice of pixel likelihood.

    Parameters:
        in_channels (`int`, defaults to 1): image channels (1 grayscale, 3 RGB).
        sample_size (`int`, defaults to 32): image height and width in pixels; must be divisible by
            ``2 ** (len(block_out_channels) - 1)``.
        block_out_channels (`list[int]`): encoder widths per resolution, from full resolution down; the latent
            lives at ``sample_size / 2 ** (len(block_out_channels) - 1)`` pixels square.
        layers_per_block (`int`): residual blocks per resolution in the encoder and in the decoder.
        latent_channels (`int`): channels of the spatial latent z, or (with ``latent_dim``) of the feature map
            next to the linear layers.
        latent_dim (`int`, *optional*): make z a vector of this many dimensions (linear layers between it and the
            lowest-resolution feature map). A vector latent gives samples with global structure; a spatial latent
            (the default, ``None``) reaches better likelihoods but its prior samples lack global coherence.
        likelihood (`str`): ``"discretized_logistic"``, ``"bernoulli"`` or ``"gaussian"``.
        num_mixtures (`int`): logistic mixture components (``discretized_logistic`` only).
        source_size (`list[int]`, *optional*): ``[height, width]`` of the data's own images when the data layer
            zero-padded them to ``sample_size`` (``[28, 28]`` for Fashion-MNIST at 32): ``p(x | z)`` then scores
            those pixels only (a bound on the image itself, in its own ``num_dims``) and decoded images get the
            zero border back. ``None``: every pixel of the square is data.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        sample_size: int = 32,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        layers_per_block: int = 1,
        latent_channels: int = 8,
        latent_dim: int | None = None,
        likelihood: str = "discretized_logistic",
        num_mixtures: int = 1,
        source_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not block_out_channels or any(int(w) < 1 for w in block_out_channels):
            raise ValueError(f"block_out_channels must be a non-empty list of positive widths, got {block_out_channels}")
        factor = 2 ** (len(block_out_channels) - 1)
        if sample_size < factor or sample_size % factor:
            raise ValueError(
                f"sample_size={sample_size} must be a multiple of {factor} (2 ** (len(block_out_channels) - 1) "
                f"for block_out_channels={list(block_out_channels)})"
            )
        if layers_per_block < 1 or latent_channels < 1:
            raise ValueError(
                f"layers_per_block and latent_channels must be >= 1, got {layers_per_block} and {latent_channels}"
            )
        self.pixel_likelihood = get_likelihood(likelihood, num_mixtures)
        self.source_region = SourceRegion(sample_size, source_size) if source_size is not None else None
        if latent_dim is not None and latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1 (or None for a spatial latent), got {latent_dim}")
        size = sample_size // factor
        self.encoder = VAEEncoder(in_channels, block_out_channels, layers_per_block, latent_channels, latent_dim, size)
        self.decoder = VAEDecoder(
            latent_channels, block_out_channels, layers_per_block, self.pixel_likelihood.num_params(in_channels),
            latent_dim, size,
        )

    # ------------------------------------------------------------------ shapes
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of z for one image; ``(latent_dim, 1, 1)`` for a vector latent."""
        if self.config.latent_dim:
            return (self.config.latent_dim, 1, 1)
        size = self.config.sample_size // 2 ** (len(self.config.block_out_channels) - 1)
        return (self.config.latent_channels, size, size)

    @property
    def num_dims(self) -> int:
        """C * H * W of one of the data's own images (``source_size``, else the whole square): the D in bits per
        dimension."""
        return SourceRegion.num_dims(self.source_region, self.config.in_channels, self.config.sample_size)

    def log_prob(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``log p(x | z)`` per image (nats) over the data's own pixels (the padded border is not scored)."""
        return SourceRegion.log_prob(self.source_region, self.pixel_likelihood, params, target)

    def to_uint8(self, sample: torch.Tensor) -> torch.Tensor:
        """Check an image batch's shape and return it as 8-bit data.

        ``sample`` is either ``uint8`` in {0..255} or float in [-1, 1] (rounded to the 8-bit grid)."""
        expected = (self.config.in_channels, self.config.sample_size, self.config.sample_size)
        if sample.ndim != 4 or tuple(sample.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(channels, height, width from the model config), got {tuple(sample.shape)}"
            )
        return sample if sample.dtype == torch.uint8 else unit_interval_to_uint8(sample)

    # ------------------------------------------------------------------ encode / decode
    # The entry points a pipeline calls besides forward carry diffusers' ``apply_forward_hook``: under
    # ``enable_model_cpu_offload`` (accelerate's CpuOffload hook) the model moves to the execution device first.
    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Posterior q(z | x) for images ``x`` in [-1, 1] as a ``DiagonalGaussianDistribution``."""
        moments = self.encoder(x).float()
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode_parameters(self, z: torch.Tensor) -> torch.Tensor:
        """The pixel likelihood's parameters for latents ``z``."""
        return self.decoder(z.to(self.dtype))

    @apply_forward_hook
    def decode(
        self,
        z: torch.Tensor,
        sample_pixels: bool = False,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DecoderOutput | tuple:
        """Images in [-1, 1] for latents ``z``: the likelihood's mean, or one pixel sample if ``sample_pixels``."""
        params = self.decode_parameters(z)
        channels = self.config.in_channels
        if sample_pixels:
            image = self.pixel_likelihood.sample(params, channels, generator)
        else:
            image = self.pixel_likelihood.mean(params, channels)
        if self.source_region is not None:
            image = self.source_region.with_zero_border(image)
        return DecoderOutput(sample=image) if return_dict else (image,)

    # ------------------------------------------------------------------ objective
    def forward(
        self,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        kl_weight: float = 1.0,
        return_dict: bool = True,
    ) -> VAEOutput | tuple:
        """One-sample ELBO for a batch of images (``uint8``, or float in [-1, 1]); see ``VAEOutput``.

        ``generator`` drives the binarization/dequantization noise and the reparameterised sample
        ``z = mu + sigma * eps``; ``kl_weight`` scales the KL in ``loss`` only (KL warm-up), never in ``elbo``.
        """
        batch = self.pixel_likelihood.prepare(self.to_uint8(sample), generator)
        posterior = self.encode(batch.model_input.to(self.dtype)).latent_dist
        z = posterior.sample(generator=generator)
        reconstruction_nll = -self.log_prob(self.decode_parameters(z), batch.target)
        kl = posterior.kl()
        elbo = -(reconstruction_nll + kl)
        loss = ((reconstruction_nll + kl_weight * kl) / self.num_dims).mean()
        out = VAEOutput(
            loss=loss,
            reconstruction_nll=reconstruction_nll,
            kl=kl,
            elbo=elbo,
            bits_per_dim=nats_to_bits_per_dim(-elbo, self.num_dims),
        )
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def log_likelihood_bounds(
        self,
        sample: torch.Tensor,
        importance_samples: int = 1,
        generator: torch.Generator | None = None,
        max_decode_batch: int = 1024,
    ) -> LikelihoodBoundsOutput:
        """ELBO and importance-weighted bounds on ``-log p(x)`` per image (nats), from ``importance_samples``
        posterior samples per image; decodes at most ``max_decode_batch`` latents at a time."""
        if importance_samples < 1:
            raise ValueError(f"importance_samples must be >= 1, got {importance_samples}")
        batch = self.pixel_likelihood.prepare(self.to_uint8(sample), generator)
        posterior = self.encode(batch.model_input.to(self.dtype)).latent_dist
        num_images = batch.target.shape[0]
        log_weights = torch.empty(num_images, importance_samples, device=batch.target.device)
        images_per_chunk = max(1, max_decode_batch // importance_samples)
        for start in range(0, num_images, images_per_chunk):
            stop = min(start + images_per_chunk, num_images)
            n = stop - start
            # (K * n) posterior samples: the K samples of image i are rows i, n + i, 2n + i, ...
            moments = posterior.parameters[start:stop].repeat(importance_samples, 1, 1, 1)
            q = DiagonalGaussianDistribution(moments)
            z = q.sample(generator=generator)
            target = batch.target[start:stop].repeat(importance_samples, 1, 1, 1)
            log_px_given_z = self.log_prob(self.decode_parameters(z), target)
            log_w = log_px_given_z + _standard_normal_log_density(z) + q.nll(z)
            log_weights[start:stop] = log_w.view(importance_samples, n).t()
        nll_elbo = -log_weights.mean(dim=1)
        nll_iw = -(torch.logsumexp(log_weights, dim=1) - math.log(importance_samples))
        return LikelihoodBoundsOutput(nats_per_image_elbo=nll_elbo, nats_per_image_iw=nll_iw)

    @torch.no_grad()
    @apply_forward_hook
    def sample_latents(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Draw z ~ N(0, temperature^2 I) for ``batch_size`` images on the device the model computes on; with a list
        of generators (one per image, as diffusers' ``randn_tensor`` takes it) image i's latent is ``generator[i]``'s."""
        check_generator_list(generator, batch_size)
        shape = (batch_size, *self.latent_shape)
        return randn_tensor(shape, generator=generator, device=execution_device(self), dtype=torch.float32) * temperature


def execution_device(model: nn.Module) -> torch.device:
    """The device ``model`` computes on: its parameters' device, or under accelerate's offload hooks (whose
    parameters may sit on the CPU or the meta device between calls) the hooks' execution device, found as
    diffusers' ``DiffusionPipeline._execution_device`` finds it."""
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        hooks = getattr(hook, "hooks", (hook,))  # accelerate's SequentialHook chains several
        for h in hooks:
            device = getattr(h, "execution_device", None)
            if device is not None:
                return torch.device(device)
    return next(model.parameters()).device


def check_generator_list(generator, batch_size: int) -> None:
    """Refuse a list of generators whose length is not the batch size, with diffusers' pipelines' message."""
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"You have passed a list of generators of length {len(generator)}, but requested an effective batch"
            f" size of {batch_size}. Make sure the batch size matches the length of the generators."
        )
