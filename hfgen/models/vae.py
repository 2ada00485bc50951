"""VAEModel: a convolutional variational autoencoder with a Gaussian latent, trained on the ELBO.

    q(z | x) = N(mu(x), diag sigma(x)^2)      encoder: residual conv blocks, downsampling to the latent
    p(z)     = N(0, I)
    p(x | z)                                  decoder: residual conv blocks + a pixel likelihood (likelihoods.py)

A class-conditional model (``num_classes`` K > 0) conditions all three on a class y in ``0 .. K`` (K: the null
class, the model without a label): q(z | x, y), p(z | y) = N(mu_y, diag sigma_y^2) (learned, one Gaussian per
class) and p(x | z, y); see ``VAEModel``.

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
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from diffusers.utils.torch_utils import randn_tensor

from .blocks import ClassFiLM, CheckpointedSequential, Downsample, ResidualBlock, Upsample, num_groups_for
from .labels import class_label_ids
from .likelihoods import (InterleavedPixelPasses, SourceRegion, check_pixel_passes, decode_pixels, get_likelihood,
                          nats_to_bits_per_dim, score_pixels, unit_interval_to_uint8)
from .modeling_utils import CheckedModelMixin


@dataclass
class VAEOutput(BaseOutput):
    """Output of ``VAEModel.forward``; every per-image tensor has shape ``(batch,)``.

    loss: scalar training objective, the batch mean of ``(reconstruction_nll + kl_weight * kl) / num_dims``
        (nats per dimension, so learning rates do not depend on the image size).
    reconstruction_nll: ``-log p(x | z)`` for one posterior sample, nats per image.
    kl: ``KL(q(z | x) || p(z))`` (class-conditional: ``KL(q(z | x, y) || p(z | y))``), nats per image (analytic).
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
    """Upper bounds on the negative log-likelihood ``-log p(x)`` per image, in nats (shape ``(batch,)``); on
    ``-log p(x | y)`` for a class-conditional model given class labels.

    nats_per_image_elbo: the negative ELBO, averaged over the ``importance_samples`` posterior samples.
    nats_per_image_iw: the negative importance-weighted bound (IWAE, Burda et al. 2016) with the same samples;
        never above ``nats_per_image_elbo`` and tighter as ``importance_samples`` grows.
    """

    nats_per_image_elbo: torch.Tensor = None
    nats_per_image_iw: torch.Tensor = None


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over all but the first dimension."""
    return (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


def check_class_config(num_classes: int, class_names) -> None:
    """Refuse a class-conditional config that does not hold together: K >= 0, and K distinct names if any."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: a model trained without class labels), got {num_classes}")
    if class_names is not None:
        names = list(class_names)
        if len(names) != num_classes:
            raise ValueError(f"class_names holds {len(names)} names but num_classes is {num_classes}; expected one "
                             f"name per class, in class-index order")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be distinct, got {names}")


def check_class_ids(class_labels: torch.Tensor | None, num_classes: int, batch_size: int,
                    device: torch.device) -> torch.Tensor | None:
    """The class indices a model's ``forward`` / bounds / decoding take, checked: ``None`` (an unconditional model;
    the null class K of a conditional one) or an integer tensor of shape ``(batch_size,)`` (a 0-d tensor or an int:
    the same class for every image) in ``0 .. K``. Returns int64 indices on ``device``, or None for an
    unconditional model. Indices on an accelerator are not range-checked here (that would wait for the device);
    the embedding lookup refuses them there."""
    if not num_classes:
        if class_labels is not None:
            raise ValueError("class_labels were given, but this model was trained without class labels "
                             "(num_classes=0); pass class_labels=None, or train with --class_conditional")
        return None
    if class_labels is None:
        return torch.full((batch_size,), num_classes, dtype=torch.int64, device=device)
    ids = torch.as_tensor(class_labels)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"class_labels must hold integer class indices, got a {ids.dtype} tensor")
    if ids.ndim == 0:
        ids = ids.expand(batch_size)
    if tuple(ids.shape) != (batch_size,):
        raise ValueError(f"class_labels must have shape ({batch_size},) (one class index per image), got "
                         f"{tuple(ids.shape)}")
    if ids.device.type == "cpu" and ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) <= num_classes):
        raise ValueError(f"class_labels must be in 0..{num_classes} ({num_classes}: the null class), got values "
                         f"from {int(ids.min())} to {int(ids.max())}")
    return ids.to(device=device, dtype=torch.int64)


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

    def __init__(self, in_channels, block_out_channels, layers_per_block, latent_channels, latent_dim, size,
                 embed_dim=0):
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
        # class conditioning (class-conditional models only): FiLM at full resolution and at the latent's
        self.film_in = ClassFiLM(embed_dim, widths[0]) if embed_dim else None
        self.film_out = ClassFiLM(embed_dim, width) if embed_dim else None

    def forward(self, x: torch.Tensor, class_embedding: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_in(x)
        if self.film_in is not None:
            h = self.film_in(h, class_embedding)
        h = self.blocks(h)
        if self.film_out is not None:
            h = self.film_out(h, class_embedding)
        h = self.conv_out(nn.functional.silu(self.norm_out(h)))
        if self.to_vector is None:
            return h
        return self.to_vector(nn.functional.silu(h).flatten(1))[:, :, None, None]


class VAEDecoder(nn.Module):
    """z -> the pixel likelihood's parameters at full resolution (the encoder's widths in reverse); a vector
    latent first goes through a linear layer to a ``(latent_channels, s, s)`` feature map."""

    def __init__(self, latent_channels, block_out_channels, layers_per_block, out_channels, latent_dim, size,
                 embed_dim=0):
        super().__init__()
        widths = list(reversed(block_out_channels))
        self.from_vector = nn.Linear(latent_dim, latent_channels * size * size) if latent_dim else None
        self.feature_shape = (latent_channels, size, size)
        self.conv_in = nn.Conv2d(latent_channels, widths[0], 3, padding=1)
        self.blocks, width = _resolution_stack(widths[0], widths, layers_per_block, Upsample)
        self.norm_out = nn.GroupNorm(num_groups_for(width), width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)
        # class conditioning (class-conditional models only): FiLM at the latent's resolution and at full resolution
        self.film_in = ClassFiLM(embed_dim, widths[0]) if embed_dim else None
        self.film_out = ClassFiLM(embed_dim, width) if embed_dim else None

    def forward(self, z: torch.Tensor, class_embedding: torch.Tensor | None = None,
                return_state: bool = False) -> torch.Tensor:
        """The likelihood's parameters, or with ``return_state`` the full-resolution state before the output
        nonlinearity and ``conv_out`` (what ``InterleavedPixelPasses`` decodes)."""
        if self.from_vector is not None:
            z = nn.functional.silu(self.from_vector(z.flatten(1))).view(-1, *self.feature_shape)
        h = self.conv_in(z)
        if self.film_in is not None:
            h = self.film_in(h, class_embedding)
        h = self.blocks(h)
        if self.film_out is not None:
            h = self.film_out(h, class_embedding)
        state = self.norm_out(h)
        return state if return_state else self.conv_out(nn.functional.silu(state))


class ClassLabelsMixin:
    """``resolve_class_labels`` of a model whose config has ``num_classes`` and ``class_names`` (the VAE and the
    hierarchical VAE): what their pipelines call to turn ``class_labels`` into class indices."""

    def resolve_class_labels(self, class_labels, batch_size: int = 1) -> torch.Tensor | None:
        """Class indices (int64, on the device the model computes on) for a pipeline's ``class_labels``: None, one
        class or a list of classes, each an index or one of ``config.class_names`` (see
        ``hfgen.models.labels.class_label_ids``; a wrong name is refused naming the valid ones). ``None`` gives the
        null class for ``batch_size`` images on a conditional model, and None on an unconditional one."""
        if class_labels is None and not self.config.num_classes:
            return None
        return class_label_ids(class_labels, self.config.class_names, self.config.num_classes, batch_size,
                               device=execution_device(self))


class VAEModel(CheckedModelMixin, ConfigMixin, ClassLabelsMixin):
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
        num_classes (`int`, defaults to 0): K, the number of classes of a class-conditional model (0: a model
            trained without labels, with no class parameters at all).
        class_names (`list[str]`, *optional*): the K class names in class-index order (pipelines take a class by
            name or by index).
        scaling_factor (`float`, *optional*): diffusers' latent scaling convention: ``1 / std`` of posterior samples
            ``z ~ q(z | x)`` over training images (``latent_scaling_factor``), so that a latent diffusion prior sees
            ``z * scaling_factor`` at about unit variance and decodes ``vae.decode(latents / scaling_factor)``.
            Measured and stored at the end of training; None in folders written before it existed.
        pixel_passes (`int`, defaults to 1): 1, pixels independent given z; 2 or 4, p(x | z) decoded in that many
            interleaved passes (checkerboard, or the pixels of each 2x2 cell in turn), each pixel's likelihood
            given the pixels of the passes before it (``InterleavedPixelPasses``): an exact likelihood, sampled in
            that many steps. ``decode_parameters`` then gives the decoder's state, which ``log_prob`` and ``decode``
            take. Configs saved before the option load as 1.
        pixel_pass_layers (`int`, defaults to 0): residual 3x3 convolutions the passes add between the decoder's
            state (plus the context of the decoded pixels) and the output layer.

    Class conditioning (K > 0). Class indices run over ``0 .. K``: ``0 .. K-1`` are the data's classes and K is the
    *null class*, the model without a label (training drops labels to it, so the same weights also model p(x)).
    A learned embedding of ``block_out_channels[-1]`` numbers per class (K + 1 rows) conditions

    * the encoder, q(z | x, y): FiLM (a per-channel scale and shift from the embedding, ``ClassFiLM``) after its
      input conv and before its output layers, at the latent's resolution;
    * the decoder, p(x | z, y): FiLM after its input conv and before its output layers, at full resolution;
    * the prior, p(z | y) = N(mu_y, diag exp(log_sigma_y)^2): a learned mean and log-scale of the latent's shape
      per class (``prior_mean``, ``prior_log_scale``), starting at N(0, I); the KL is the closed form between two
      diagonal Gaussians and the importance-weighted bound uses log p(z | y).

    The FiLM projections start at zero, so a new conditional model computes what an unconditional one does until
    training makes the labels matter. ``class_labels=None`` on a conditional model means the null class; class
    labels given to a model trained without them are refused.
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
        num_classes: int = 0,
        class_names: list[str] | None = None,
        scaling_factor: float | None = None,
        pixel_passes: int = 1,
        pixel_pass_layers: int = 0,
    ):
        super().__init__()
        if scaling_factor is not None and not (math.isfinite(scaling_factor) and scaling_factor > 0):
            raise ValueError(f"scaling_factor must be a finite number > 0 (1 / the latents' standard deviation), got "
                             f"{scaling_factor!r}")
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
        check_pixel_passes(pixel_passes, pixel_pass_layers)
        self.pixel_likelihood = get_likelihood(likelihood, num_mixtures)
        self.source_region = SourceRegion(sample_size, source_size) if source_size is not None else None
        if latent_dim is not None and latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1 (or None for a spatial latent), got {latent_dim}")
        check_class_config(num_classes, class_names)
        size = sample_size // factor
        # class-conditional parts are created only when K > 0 (and after the others), so that an unconditional
        # model has the same parameters, and the same initial values for a given seed, as before they existed
        embed_dim = int(block_out_channels[-1]) if num_classes else 0
        self.encoder = VAEEncoder(in_channels, block_out_channels, layers_per_block, latent_channels, latent_dim, size,
                                  embed_dim)
        self.decoder = VAEDecoder(
            latent_channels, block_out_channels, layers_per_block, self.pixel_likelihood.num_params(in_channels),
            latent_dim, size, embed_dim,
        )
        if num_classes:
            self.class_embedding = nn.Embedding(num_classes + 1, embed_dim)
            self.prior_mean = nn.Parameter(torch.zeros(num_classes + 1, *self.latent_shape))
            self.prior_log_scale = nn.Parameter(torch.zeros(num_classes + 1, *self.latent_shape))
        else:
            self.class_embedding = None
            self.prior_mean = self.prior_log_scale = None
        self.interleaved_passes = (InterleavedPixelPasses(pixel_passes, in_channels, int(block_out_channels[0]),
                                                          sample_size, self.source_region, pixel_pass_layers)
                                   if pixel_passes > 1 else None)

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
        """``log p(x | z)`` per image (nats) over the data's own pixels (the padded border is not scored). With
        ``pixel_passes`` > 1, ``params`` is the decoder's state and each pass is scored given the ones before it."""
        return score_pixels(self.pixel_likelihood, self.interleaved_passes, self.source_region, params, target,
                            self.decoder.conv_out)

    # ------------------------------------------------------------------ class labels
    def _class_ids(self, class_labels, batch_size: int, device) -> torch.Tensor | None:
        return check_class_ids(class_labels, self.config.num_classes, batch_size, device)

    def _class_embedding(self, ids: torch.Tensor | None) -> torch.Tensor | None:
        return None if ids is None else self.class_embedding(ids).to(self.dtype)

    def prior(self, class_labels: torch.Tensor | None = None, batch_size: int = 1) -> DiagonalGaussianDistribution | None:
        """p(z | y) for class indices ``class_labels`` (``(batch,)``, in ``0 .. K``; None: the null class) as a
        ``DiagonalGaussianDistribution`` of shape ``(batch, *latent_shape)``, or None for an unconditional model,
        whose prior is N(0, I)."""
        ids = self._class_ids(class_labels, batch_size, self.device)
        return self._prior(ids)

    def _prior(self, ids: torch.Tensor | None) -> DiagonalGaussianDistribution | None:
        if ids is None:
            return None
        mean, log_scale = self.prior_mean[ids].float(), self.prior_log_scale[ids].float()
        return DiagonalGaussianDistribution(torch.cat([mean, 2 * log_scale], dim=1))

    def to_uint8(self, sample: torch.Tensor) -> torch.Tensor:
        """Check an image batch's shape and return it as 8-bit data at the model's ``sample_size``.

        ``sample`` is either ``uint8`` in {0..255} or float in [-1, 1] (rounded to the 8-bit grid), shaped
        ``(batch, in_channels, sample_size, sample_size)`` or, with ``source_size``, at the data's own size (then
        zero-padded as the data layer pads it)."""
        sample = SourceRegion.to_sample_size(self.source_region, sample, self.config.in_channels,
                                             self.config.sample_size)
        return sample if sample.dtype == torch.uint8 else unit_interval_to_uint8(sample)

    # ------------------------------------------------------------------ encode / decode
    # The entry points a pipeline calls besides forward carry diffusers' ``apply_forward_hook``: under
    # ``enable_model_cpu_offload`` (accelerate's CpuOffload hook) the model moves to the execution device first.
    @apply_forward_hook
    def encode(self, x: torch.Tensor, class_labels: torch.Tensor | None = None,
               return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Posterior q(z | x) (class-conditional: q(z | x, y) for class indices ``class_labels`` of shape
        ``(batch,)``, None: the null class) for images ``x`` in [-1, 1] as a ``DiagonalGaussianDistribution``."""
        ids = self._class_ids(class_labels, x.shape[0], x.device)
        moments = self.encoder(x, self._class_embedding(ids)).float()
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode_parameters(self, z: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The pixel likelihood's parameters for latents ``z`` (and class indices ``class_labels``, ``(batch,)``;
        None: the null class of a conditional model); with ``pixel_passes`` > 1 the decoder's state, which
        ``log_prob`` and ``decode`` turn into each pass's parameters given the pixels of the passes before it."""
        ids = self._class_ids(class_labels, z.shape[0], z.device)
        return self.decoder(z.to(self.dtype), self._class_embedding(ids),
                            return_state=self.interleaved_passes is not None)

    @apply_forward_hook
    def decode(
        self,
        z: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        sample_pixels: bool = False,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DecoderOutput | tuple:
        """Images in [-1, 1] for latents ``z`` (and class indices ``class_labels``, ``(batch,)``; None: the null
        class of a conditional model): the likelihood's mean, or one pixel sample if ``sample_pixels``."""
        image = decode_pixels(self.pixel_likelihood, self.interleaved_passes, self.source_region,
                              self.decode_parameters(z, class_labels), self.decoder.conv_out, self.config.in_channels,
                              sample_pixels, generator)
        return DecoderOutput(sample=image) if return_dict else (image,)

    # ------------------------------------------------------------------ objective
    def forward(
        self,
        sample: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        kl_weight: float = 1.0,
        return_dict: bool = True,
    ) -> VAEOutput | tuple:
        """One-sample ELBO for a batch of images (``uint8``, or float in [-1, 1]); see ``VAEOutput``.

        ``class_labels`` (class-conditional models): class indices ``(batch,)`` int64 in ``0 .. K`` (K, or None:
        the null class), giving the ELBO on ``log p(x | y)``. ``generator`` drives the binarization/dequantization
        noise and the reparameterised sample ``z = mu + sigma * eps``; ``kl_weight`` scales the KL in ``loss`` only
        (KL warm-up), never in ``elbo``.
        """
        x_uint8 = self.to_uint8(sample)
        ids = self._class_ids(class_labels, x_uint8.shape[0], x_uint8.device)
        batch = self.pixel_likelihood.prepare(x_uint8, generator)
        posterior = self.encode(batch.model_input.to(self.dtype), ids).latent_dist
        z = posterior.sample(generator=generator)
        reconstruction_nll = -self.log_prob(self.decode_parameters(z, ids), batch.target)
        prior = self._prior(ids)
        kl = posterior.kl() if prior is None else posterior.kl(prior)
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
        class_labels: torch.Tensor | None = None,
        importance_samples: int = 1,
        generator: torch.Generator | None = None,
        max_decode_batch: int = 1024,
    ) -> LikelihoodBoundsOutput:
        """ELBO and importance-weighted bounds on ``-log p(x)`` per image (nats), from ``importance_samples``
        posterior samples per image; decodes at most ``max_decode_batch`` latents at a time. With class indices
        ``class_labels`` (``(batch,)``, class-conditional models) the bounds are on ``-log p(x | y)``, with
        ``log w = log p(x | z, y) + log p(z | y) - log q(z | x, y)``; None gives the null class's, i.e. ``-log p(x)``."""
        if importance_samples < 1:
            raise ValueError(f"importance_samples must be >= 1, got {importance_samples}")
        x_uint8 = self.to_uint8(sample)
        ids = self._class_ids(class_labels, x_uint8.shape[0], x_uint8.device)
        batch = self.pixel_likelihood.prepare(x_uint8, generator)
        posterior = self.encode(batch.model_input.to(self.dtype), ids).latent_dist
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
            chunk_ids = None if ids is None else ids[start:stop].repeat(importance_samples)
            log_px_given_z = self.log_prob(self.decode_parameters(z, chunk_ids), target)
            prior = self._prior(chunk_ids)
            log_pz = standard_normal_log_density(z) if prior is None else -prior.nll(z)
            log_w = log_px_given_z + log_pz + q.nll(z)
            log_weights[start:stop] = log_w.view(importance_samples, n).t()
        nll_elbo = -log_weights.mean(dim=1)
        nll_iw = -(torch.logsumexp(log_weights, dim=1) - math.log(importance_samples))
        return LikelihoodBoundsOutput(nats_per_image_elbo=nll_elbo, nats_per_image_iw=nll_iw)

    @torch.no_grad()
    def latent_scaling_factor(self, sample: torch.Tensor, generator: torch.Generator | None = None,
                              batch_size: int = 256) -> float:
        """``1 / std`` of one posterior sample ``z ~ q(z | x)`` per image of ``sample`` (``uint8`` or [-1, 1]), all
        latent elements pooled: the ``scaling_factor`` that brings the latents a diffusion prior sees to unit
        variance (Rombach et al. 2022's convention, diffusers' ``AutoencoderKL.config.scaling_factor``). Images of
        a class-conditional model are encoded with the null class."""
        total = total_sq = count = 0.0
        for start in range(0, sample.shape[0], batch_size):
            x_uint8 = self.to_uint8(sample[start : start + batch_size].to(self.device))
            batch = self.pixel_likelihood.prepare(x_uint8, generator)
            z = self.encode(batch.model_input.to(self.dtype)).latent_dist.sample(generator=generator).double()
            total, total_sq, count = total + float(z.sum()), total_sq + float(z.pow(2).sum()), count + z.numel()
        if count < 2:
            raise ValueError(f"latent_scaling_factor needs at least one image, got {sample.shape[0]}")
        variance = (total_sq - total * total / count) / (count - 1)
        if not variance > 0:
            raise ValueError(f"the posterior samples have variance {variance!r}; cannot scale them to unit variance")
        return 1.0 / math.sqrt(variance)

    @torch.no_grad()
    @apply_forward_hook
    def sample_latents(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None,
        temperature: float = 1.0, class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw z ~ N(0, temperature^2 I) for ``batch_size`` images on the device the model computes on; with a list
        of generators (one per image, as diffusers' ``randn_tensor`` takes it) image i's latent is ``generator[i]``'s.
        A class-conditional model draws from its class prior, ``z = mu_y + temperature * sigma_y * eps``, for class
        indices ``class_labels`` (``(batch_size,)``; None: the null class)."""
        check_generator_list(generator, batch_size)
        device = execution_device(self)
        ids = self._class_ids(class_labels, batch_size, device)
        shape = (batch_size, *self.latent_shape)
        eps = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        if ids is None:
            return eps * temperature
        prior = self._prior(ids)
        return prior.mean + temperature * prior.std * eps


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
