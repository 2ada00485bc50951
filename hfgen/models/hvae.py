"""HierarchicalVAEModel: a VAE with a hierarchy of latent groups over several scales (NVAE / VDVAE class).

    bottom-up   x -> residual cells at each scale (full resolution first); the activation at every scale is kept
    top-down    a learned constant at the lowest scale, then for each group i = 1..m (top first):
                    h <- cells_i(h)
                    p(z_i | z_<i)      = N(mu_p(h), sigma_p(h)^2)            (the prior: top-down state only)
                    q(z_i | z_<i, x)   from h and the bottom-up activation at the same scale, either
                        "product":  N(mu_p, sigma_p^2) x N(mu_e, sigma_e^2), normalised (precision-weighted,
                                     Ladder VAE), or
                        "residual": N(mu_p + dmu, (sigma_p * exp(dlog_sigma))^2) (NVAE's residual normal)
                    h <- h + W z_i
                and upsampling between scales; generation runs the same top-down path with z_i drawn from the prior.
    p(x | z)    a pixel likelihood (``likelihoods.py``) on the full-resolution top-down state, every pixel independent
                given z, or (``pixel_passes`` 2 or 4) in interleaved passes, each given the pixels of the passes before.

A class-conditional model (``num_classes`` K > 0) has a learned embedding of a class y in ``0 .. K`` (K: the null
class, the model without a label) that modulates the top-down state before every group's cells (FiLM), so every
prior p(z_i | z_<i, y), every posterior q(z_i | z_<i, x, y) and p(x | z, y) depend on it, and the bottom-up path's
first feature map; see ``HierarchicalVAEModel``.

Groups are numbered top-down: group 0 is the top (lowest resolution) one, and ``kl_per_group[:, i]`` is
``KL(q(z_i | z_<i, x) || p(z_i | z_<i))`` in nats per image for the sampled upper latents. All log-likelihood
figures are per image, in nats, over the 8-bit image; ``bits_per_dim`` divides by ``C * H * W * ln 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from diffusers.utils.torch_utils import randn_tensor

from .blocks import (ClassFiLM, CheckpointedSequential, Downsample, Upsample, check_cell_type, num_groups_for,
                     residual_cell)
from .likelihoods import (InterleavedPixelPasses, SourceRegion, check_pixel_passes, decode_pixels, get_likelihood,
                          nats_to_bits_per_dim, score_pixels, unit_interval_to_uint8)
from .modeling_utils import CheckedModelMixin
from .vae import (ClassLabelsMixin, LikelihoodBoundsOutput, check_class_config, check_class_ids,
                  check_generator_list, execution_device)

POSTERIORS = ("residual", "product")
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class HierarchicalVAEOutput(BaseOutput):
    """Output of ``HierarchicalVAEModel.forward``; per-image tensors have shape ``(batch,)``.

    loss: scalar, the batch mean of ``(reconstruction_nll + kl_weight * kl) / num_dims`` (nats per dimension).
    reconstruction_nll: ``-log p(x | z)`` for one posterior sample, nats per image.
    kl: the sum of ``kl_per_group`` over groups, nats per image.
    kl_per_group: ``(batch, num_groups)``, analytic KL of each group given the sampled upper groups, nats, top first.
    elbo: ``-(reconstruction_nll + kl)``, a lower bound on ``log p(x)``, nats per image.
    bits_per_dim: ``-elbo`` in bits per dimension.
    """

    # Defaults let Accelerate rebuild the output from a dict when it casts mixed-precision outputs to fp32.
    loss: torch.Tensor = None
    reconstruction_nll: torch.Tensor = None
    kl: torch.Tensor = None
    kl_per_group: torch.Tensor = None
    elbo: torch.Tensor = None
    bits_per_dim: torch.Tensor = None


@dataclass
class HierarchicalVAEEncoderOutput(BaseOutput):
    """Output of ``HierarchicalVAEModel.encode``: lists with one tensor per latent group, top first, each
    ``(batch, *group_shapes()[i])``.

    latent_means: the posterior means, every group given the means of the groups above it (what
        ``reconstruct_parameters`` decodes by default); ``pipeline(latents=latent_means)`` decodes the same image.
    latents: one sample of the posterior, every group given the samples above it.
    latent_log_scales: the log standard deviations of q for ``latents``.
    """

    latent_means: list = None
    latents: list = None
    latent_log_scales: list = None


@dataclass
class HierarchicalVAEPriorNoiseOutput(BaseOutput):
    """Output of ``HierarchicalVAEModel.encode_prior_noise``: the top groups of one posterior sample z seen through
    the model's own priors, as a diffusion prior over them models them (the latent diffusion family's join; LSGM).
    Per-image tensors have shape ``(batch,)``, in nats.

    prior_noise: ``(batch, *prior_noise_shape(num_groups))``: ``eps_i = (z_i - mu_p,i) / sigma_p,i`` of each top group
        i (its prior ``p(z_i | z_<i) = N(mu_p,i, sigma_p,i^2)`` given the sampled groups above it), the groups
        stacked along channels on one grid, top first (``stack_prior_noise``). Under the model's own prior, eps ~
        N(0, I).
    log_prior_scale: the sum of ``log sigma_p,i`` over the top groups' units: ``-log |det d eps / d z_top|``.
    posterior_log_density: ``log q(z_top | x)`` at the sample.
    prior_log_density: ``log p(z_top)`` under the model's own priors at the same sample.
    lower_kl: the sum over the groups below of the analytic ``KL(q(z_i | z_<i, x) || p(z_i | z_<i))`` given the
        sampled groups above (None unless ``bound_terms``).
    reconstruction_nll: ``-log p(x | z)`` for the same z (None unless ``bound_terms``).
    """

    prior_noise: torch.Tensor = None
    log_prior_scale: torch.Tensor = None
    posterior_log_density: torch.Tensor = None
    prior_log_density: torch.Tensor = None
    lower_kl: torch.Tensor = None
    reconstruction_nll: torch.Tensor = None


def _guided_mean(mean_y: torch.Tensor, mean_null: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance of a Gaussian prior's mean: ``mu_null + s * (mu_y - mu_null)``."""
    return mean_null + guidance_scale * (mean_y - mean_null)


@dataclass
class _GroupStats:
    """What one pass records for one latent group (per image unless said otherwise)."""

    kl: torch.Tensor  # analytic KL(q || p), (B,)
    log_q_minus_log_p: torch.Tensor | None  # at the sample, (B,)
    kl_per_unit: torch.Tensor | None  # analytic KL(q || p) of each unit, (B, C, H, W); only when asked for


def _soft_clamp(x: torch.Tensor, bound: float) -> torch.Tensor:
    """``bound * tanh(x / bound)``: smooth, identity near 0, never beyond +-bound (0 switches it off)."""
    return bound * torch.tanh(x / bound) if bound > 0 else x


def _gaussian_log_density(z, mean, log_scale):
    """log N(z; mean, exp(log_scale)^2) summed over all but the first dimension."""
    return (-0.5 * ((z - mean) * torch.exp(-log_scale)).pow(2) - log_scale - 0.5 * _LOG_2PI).flatten(1).sum(1)


def _gaussian_kl_per_unit(mean_q, log_scale_q, mean_p, log_scale_p):
    """KL(N(mean_q, s_q^2) || N(mean_p, s_p^2)) of each latent unit (nats), the shape of its arguments."""
    ratio = torch.exp(2 * (log_scale_q - log_scale_p))
    diff = (mean_q - mean_p) * torch.exp(-log_scale_p)
    return 0.5 * (ratio + diff.pow(2) - 1) - (log_scale_q - log_scale_p)


def _gaussian_kl(mean_q, log_scale_q, mean_p, log_scale_p):
    """KL(N(mean_q, s_q^2) || N(mean_p, s_p^2)) summed over all but the first dimension (nats per image)."""
    return _gaussian_kl_per_unit(mean_q, log_scale_q, mean_p, log_scale_p).flatten(1).sum(1)


def _regrid(units: torch.Tensor, scale: int, to_scale: int) -> torch.Tensor:
    """``(batch, c, h, w)`` units at scale index ``scale`` (resolution ``sample_size / 2**scale``) rearranged onto
    the grid of ``to_scale``: space-to-depth onto a coarser grid (``c * 4**k`` channels), depth-to-space onto a finer
    one (``c / 4**k``). Every unit kept once, so a density is unchanged."""
    if scale < to_scale:
        return nn.functional.pixel_unshuffle(units, 2 ** (to_scale - scale))
    if scale > to_scale:
        return nn.functional.pixel_shuffle(units, 2 ** (scale - to_scale))
    return units


def _as_list(value, length: int, name: str) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * length
    if len(values) != length or any(int(v) < 0 for v in values):
        raise ValueError(f"{name} must be one non-negative integer or a list of {length}, got {value}")
    return [int(v) for v in values]


class _LatentGroup(nn.Module):
    """One group of the top-down path: residual cells, the prior, the posterior and the projection of z back."""

    def __init__(self, width, latent_channels, num_cells, use_se, embed_dim=0, cell_type="resnet"):
        super().__init__()
        self.cells = CheckpointedSequential(
            [residual_cell(cell_type, width, width, use_se) for _ in range(num_cells)])
        self.prior = nn.Sequential(nn.SiLU(), nn.Conv2d(width, 2 * latent_channels, 3, padding=1))
        self.posterior = nn.Sequential(
            nn.Conv2d(2 * width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 2 * latent_channels, 3, padding=1))
        self.z_proj = nn.Conv2d(latent_channels, width, 1)
        # Start with p = N(0, I) and (residual form) q = p: the KL starts at 0 and grows only as it pays off.
        for conv in (self.prior[1], self.posterior[2]):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.gradient_checkpointing = False  # set by ModelMixin.enable_gradient_checkpointing
        # class-conditional models: the class embedding modulates the top-down state before the cells
        self.film = ClassFiLM(embed_dim, width) if embed_dim else None

    def prior_parameters(self, h: torch.Tensor) -> torch.Tensor:
        return self._maybe_checkpointed(self.prior, h)

    def posterior_parameters(self, h: torch.Tensor, bottom_up: torch.Tensor) -> torch.Tensor:
        return self._maybe_checkpointed(lambda a, b: self.posterior(torch.cat([a, b], dim=1)), h, bottom_up)

    def _maybe_checkpointed(self, function, *inputs):
        """With gradient checkpointing on, the activations inside ``function`` (deterministic) are recomputed in
        the backward pass instead of stored."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(function, *inputs)
        return function(*inputs)


class _BottomUp(nn.Module):
    def __init__(self, in_channels, widths, blocks_per_scale, use_se, embed_dim=0, cell_type="resnet"):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.stages = nn.ModuleList(
            CheckpointedSequential([residual_cell(cell_type, w, w, use_se) for _ in range(n)])
            for w, n in zip(widths, blocks_per_scale))
        self.downsample = nn.ModuleList(Downsample(widths[i], widths[i + 1]) for i in range(len(widths) - 1))
        self.film = ClassFiLM(embed_dim, widths[0]) if embed_dim else None  # class-conditional models only

    def forward(self, x: torch.Tensor, class_embedding: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The activation at every scale, full resolution first."""
        h = self.conv_in(x)
        if self.film is not None:
            h = self.film(h, class_embedding)
        activations = []
        for i, stage in enumerate(self.stages):
            h = stage(h)
            activations.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        return activations


class HierarchicalVAEModel(CheckedModelMixin, ConfigMixin, ClassLabelsMixin):
    r"""A hierarchical VAE for images: groups of Gaussian latents over several scales, a shared top-down path for
    inference and generation, and a choice of pixel likelihood.

    Parameters:
        in_channels (`int`, defaults to 1): image channels.
        sample_size (`int`, defaults to 32): image height and width; divisible by ``2 ** (len(block_out_channels) - 1)``.
        block_out_channels (`list[int]`): width of each scale, full resolution first (scale ``s`` has
            ``sample_size / 2 ** s`` pixels square); the bottom-up and top-down paths share them.
        encoder_blocks_per_scale (`int` or `list[int]`): bottom-up residual cells at each scale.
        groups_per_scale (`int` or `list[int]`): latent groups at each scale, full resolution first (0 allowed
            except at the lowest scale).
        decoder_blocks_per_group (`int`): top-down residual cells before each group.
        output_blocks (`int`): residual cells at full resolution after the last group.
        latent_channels (`int`): channels of each latent group.
        posterior (`str`): ``"residual"`` (NVAE) or ``"product"`` (precision-weighted, Ladder VAE).
        use_squeeze_excitation (`bool`): squeeze-excitation in every residual cell.
        log_scale_bound (`float`): soft bound ``b * tanh(. / b)`` on every predicted log-scale (0: none).
        likelihood (`str`), num_mixtures (`int`): the pixel likelihood, as in ``VAEModel``.
        source_size (`list[int]`, *optional*): ``[height, width]`` of the data's own images inside the zero-padded
            ``sample_size`` square, as in ``VAEModel``: only they are scored, and decoded images get the border back.
        num_classes (`int`, defaults to 0): K, the number of classes of a class-conditional model (0: a model
            trained without labels, with no class parameters at all).
        class_names (`list[str]`, *optional*): the K class names in class-index order.
        cell_type (`str`, defaults to ``"resnet"``): the residual cell used everywhere (bottom-up, top-down and
            output cells; ``blocks.residual_cell``): ``"resnet"`` (``ResidualBlock``: GroupNorm, SiLU, 3x3 conv,
            twice), ``"bottleneck"`` (``BottleneckBlock``, VDVAE's: 1x1 to a quarter of the width, two 3x3, 1x1
            back, no normalisation) or ``"inverted_residual"`` (``InvertedResidualBlock``, NVAE's generative cell:
            1x1 expansion by 3, depthwise 5x5, 1x1 back). Configs saved before the option load as ``"resnet"``.
        pixel_passes (`int`, defaults to 1): p(x | z) in 1, 2 or 4 interleaved passes, as in ``VAEModel``; with
            more than one, ``generate_parameters`` and ``reconstruct_parameters`` give the decoder's state, which
            ``log_prob`` and ``decode_image`` take; pixel_pass_layers (`int`, defaults to 0): their extra layers.

    Class conditioning (K > 0). Class indices run over ``0 .. K``, K being the *null class* (the model without a
    label; training drops labels to it). A learned embedding of ``block_out_channels[-1]`` numbers per class
    (K + 1 rows) gives a per-channel scale and shift (FiLM, ``ClassFiLM``) of the top-down state before every
    group's cells, the first of them acting on the learned initial state: every prior p(z_i | z_<i, y) is then
    conditional, every posterior too (it is computed from the same top-down state), and so is p(x | z, y). The
    bottom-up path's first feature map gets a FiLM of its own. The KL per group is the same closed form as without
    labels. The FiLM projections start at zero, so a new conditional model computes what an unconditional one does
    (p(z_i | ...) = N(0, I) for every class at first). ``class_labels=None`` on a conditional model means the null
    class; class labels given to a model trained without them are refused.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        sample_size: int = 32,
        block_out_channels: tuple[int, ...] = (32, 32, 64, 64),
        encoder_blocks_per_scale: int | tuple[int, ...] = 1,
        groups_per_scale: int | tuple[int, ...] = (1, 2, 2, 2),
        decoder_blocks_per_group: int = 1,
        output_blocks: int = 1,
        latent_channels: int = 8,
        posterior: str = "residual",
        use_squeeze_excitation: bool = False,
        log_scale_bound: float = 5.0,
        likelihood: str = "discretized_logistic",
        num_mixtures: int = 1,
        source_size: tuple[int, int] | None = None,
        num_classes: int = 0,
        class_names: list[str] | None = None,
        cell_type: str = "resnet",
        pixel_passes: int = 1,
        pixel_pass_layers: int = 0,
    ):
        super().__init__()
        widths = [int(w) for w in block_out_channels]
        num_scales = len(widths)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"block_out_channels must be a non-empty list of positive widths, got {block_out_channels}")
        factor = 2 ** (num_scales - 1)
        if sample_size < factor or sample_size % factor:
            raise ValueError(f"sample_size={sample_size} must be a multiple of {factor} "
                             f"(2 ** (len(block_out_channels) - 1) for block_out_channels={widths})")
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
        if latent_channels < 1 or decoder_blocks_per_group < 0 or output_blocks < 0:
            raise ValueError("latent_channels must be >= 1, decoder_blocks_per_group and output_blocks >= 0")
        enc_blocks = _as_list(encoder_blocks_per_scale, num_scales, "encoder_blocks_per_scale")
        groups = _as_list(groups_per_scale, num_scales, "groups_per_scale")
        if groups[-1] < 1:
            raise ValueError(f"the lowest scale needs at least one latent group, got groups_per_scale={groups}")
        check_class_config(num_classes, class_names)
        check_cell_type(cell_type)
        check_pixel_passes(pixel_passes, pixel_pass_layers)
        self.pixel_likelihood = get_likelihood(likelihood, num_mixtures)
        self.source_region = SourceRegion(sample_size, source_size) if source_size is not None else None
        # class-conditional parts exist only when K > 0 and are created after the others in each module, so an
        # unconditional model has the same parameters, and initial values for a given seed, as before
        embed_dim = widths[-1] if num_classes else 0

        self.bottom_up = _BottomUp(in_channels, widths, enc_blocks, use_squeeze_excitation, embed_dim, cell_type)
        top_size = sample_size // factor
        self.top_state = nn.Parameter(torch.zeros(1, widths[-1], top_size, top_size))
        # Top-down, lowest scale first: the groups of each scale, then an upsampling to the next scale.
        self.group_scale: list[int] = []  # the scale index (0 = full resolution) of each group, top first
        td_groups, upsample = [], []
        for scale in reversed(range(num_scales)):
            for _ in range(groups[scale]):
                td_groups.append(_LatentGroup(widths[scale], latent_channels, decoder_blocks_per_group,
                                              use_squeeze_excitation, embed_dim, cell_type))
                self.group_scale.append(scale)
            if scale > 0:
                upsample.append(Upsample(widths[scale], widths[scale - 1]))
        self.groups = nn.ModuleList(td_groups)
        self.upsample = nn.ModuleList(upsample)
        self.output_cells = CheckpointedSequential(
            [residual_cell(cell_type, widths[0], widths[0], use_squeeze_excitation) for _ in range(output_blocks)])
        self.norm_out = nn.GroupNorm(num_groups_for(widths[0]), widths[0], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[0], self.pixel_likelihood.num_params(in_channels), 3, padding=1)
        self.class_embedding = nn.Embedding(num_classes + 1, embed_dim) if num_classes else None
        self.interleaved_passes = (InterleavedPixelPasses(pixel_passes, in_channels, widths[0], sample_size,
                                                          self.source_region, pixel_pass_layers)
                                   if pixel_passes > 1 else None)
        self._power_iteration_vectors: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ shapes
    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def num_dims(self) -> int:
        """C * H * W of one of the data's own images (``source_size``, else the whole square): the D in bits per
        dimension."""
        return SourceRegion.num_dims(self.source_region, self.config.in_channels, self.config.sample_size)

    def log_prob(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``log p(x | z)`` per image (nats) over the data's own pixels (the padded border is not scored). With
        ``pixel_passes`` > 1, ``params`` is the decoder's state and each pass is scored given the ones before it."""
        return score_pixels(self.pixel_likelihood, self.interleaved_passes, self.source_region, params, target,
                            self.conv_out)

    def group_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, height, width) of each latent group, top first."""
        size = self.config.sample_size
        return [(self.config.latent_channels, size // 2**s, size // 2**s) for s in self.group_scale]

    @property
    def top_resolution_groups(self) -> int:
        """How many latent groups lie at the top (lowest) resolution: the groups ``prior_noise_shape`` stacks as
        they are, without resampling."""
        return self.group_scale.count(self.group_scale[0])

    def _prior_noise_grid(self, num_groups: int) -> int:
        """The scale index of the grid the top ``num_groups`` groups are stacked on: the finest of their own scales
        to which every coarser group folds out exactly (depth-to-space needs its channels to divide by 4 per
        halving); groups finer than it fold in (space-to-depth, always exact). The top scale always qualifies."""
        most = self.num_groups
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or not 1 <= num_groups <= most:
            top_shape = self.group_shapes()[0]
            raise ValueError(f"the top {num_groups} latent groups cannot carry one diffusion prior: this hierarchical "
                             f"VAE has {most} group(s), {self.top_resolution_groups} at its top resolution "
                             f"{top_shape[1]}x{top_shape[2]} (groups_per_scale={list(self.config.groups_per_scale)}); "
                             f"expected 1 to {most}")
        scales = self.group_scale[:num_groups]
        channels = self.config.latent_channels
        return next(grid for grid in sorted(set(scales))
                    if all(channels % 4 ** (s - grid) == 0 for s in scales if s > grid))

    def _prior_noise_channels(self, num_groups: int) -> list[int]:
        """Channels each of the top ``num_groups`` groups takes on the stacking grid, top first."""
        grid = self._prior_noise_grid(num_groups)
        channels = self.config.latent_channels
        return [channels * 4 ** (grid - s) if s <= grid else channels // 4 ** (s - grid)
                for s in self.group_scale[:num_groups]]

    def prior_noise_shape(self, num_groups: int) -> tuple[int, int, int]:
        """(channels, height, width) of the prior noise of the top ``num_groups`` groups stacked along channels
        (``encode_prior_noise``): what a diffusion prior over them models. Groups at the top resolution stack as
        they are; with groups at several resolutions (LSGM's "all groups on one grid") each is resampled to one
        grid by an exact rearrangement of its units (space-to-depth, or depth-to-space; ``_prior_noise_grid``),
        which changes no density: the stacked noise holds every unit of every group once."""
        grid = self._prior_noise_grid(num_groups)
        size = self.config.sample_size // 2**grid
        return (sum(self._prior_noise_channels(num_groups)), size, size)

    def prior_noise_groups(self, shape) -> int:
        """G, the number of top groups whose stacked prior noise has ``shape`` (channels, height, width): what a
        diffusion prior of that input shape models. Refused, naming the shapes this model has, if none."""
        shapes = [self.prior_noise_shape(g) for g in range(1, self.num_groups + 1)]
        if tuple(shape) not in shapes:
            raise ValueError(f"no top groups of this hierarchical VAE stack to shape {tuple(shape)}; the top G groups "
                             f"stack to {', '.join(f'G={g}: {s}' for g, s in enumerate(shapes, 1))}")
        return shapes.index(tuple(shape)) + 1

    def stack_prior_noise(self, noise: list[torch.Tensor]) -> torch.Tensor:
        """The prior noise of the top ``len(noise)`` groups (one ``(batch, *group_shapes()[i])`` tensor each, top
        first) on one grid, stacked along channels: ``split_prior_noise``'s inverse."""
        grid = self._prior_noise_grid(len(noise))
        return torch.cat([_regrid(eps, scale, grid) for eps, scale in zip(noise, self.group_scale)], dim=1)

    def split_prior_noise(self, prior_noise: torch.Tensor) -> list[torch.Tensor]:
        """Stacked prior noise ``(batch, *prior_noise_shape(G))`` as one tensor per group at its own resolution,
        top first."""
        if prior_noise.ndim != 4:
            raise ValueError(f"prior_noise must have shape (batch, channels, h, w), got {tuple(prior_noise.shape)}")
        num_groups = self.prior_noise_groups(prior_noise.shape[1:])
        grid = self._prior_noise_grid(num_groups)
        return [_regrid(eps, grid, scale) for eps, scale
                in zip(prior_noise.split(self._prior_noise_channels(num_groups), dim=1), self.group_scale)]

    def to_uint8(self, sample: torch.Tensor) -> torch.Tensor:
        """Check an image batch's shape; return it as 8-bit data (``uint8`` as is, floats in [-1, 1] rounded) at the
        model's ``sample_size`` (with ``source_size``, images at the data's own size are zero-padded as the data
        layer pads them)."""
        sample = SourceRegion.to_sample_size(self.source_region, sample, self.config.in_channels,
                                             self.config.sample_size)
        return sample if sample.dtype == torch.uint8 else unit_interval_to_uint8(sample)

    # ------------------------------------------------------------------ class labels
    def _class_embedding(self, class_labels, batch_size: int, device) -> torch.Tensor | None:
        """The class embeddings ``(batch_size, embed_dim)`` of class indices (checked; None: the null class), or
        None for an unconditional model."""
        ids = check_class_ids(class_labels, self.config.num_classes, batch_size, device)
        return None if ids is None else self.class_embedding(ids).to(self.dtype)

    def _temperatures(self, temperature) -> list[float]:
        if isinstance(temperature, (int, float)):
            temps = [float(temperature)] * self.num_groups
        else:
            temps = [float(t) for t in temperature]
        if len(temps) != self.num_groups or any(t < 0 for t in temps):
            raise ValueError(f"temperature must be one number >= 0 or a list of {self.num_groups} (one per group), "
                             f"got {temperature}")
        return temps

    # ------------------------------------------------------------------ the top-down path
    def _split(self, params: torch.Tensor):
        mean, log_scale = params.float().chunk(2, dim=1)
        return mean, _soft_clamp(log_scale, self.config.log_scale_bound)

    def _posterior(self, group: _LatentGroup, h, bottom_up, prior_mean, prior_log_scale):
        mean_e, log_scale_e = self._split(group.posterior_parameters(h, bottom_up))
        if self.config.posterior == "residual":
            return prior_mean + mean_e, prior_log_scale + log_scale_e
        # Product of the prior and the encoder's Gaussian factor: precisions add, means are precision-weighted.
        prec_p, prec_e = torch.exp(-2 * prior_log_scale), torch.exp(-2 * log_scale_e)
        precision = prec_p + prec_e
        mean = (prior_mean * prec_p + mean_e * prec_e) / precision
        return mean, -0.5 * torch.log(precision)

    def _top_down(self, batch_size, activations=None, generator=None, temperatures=None, latents=(),
                  use_mean=False, want_log_ratio=False, want_kl_per_unit=False, record=None, class_embedding=None,
                  prior_noise=(), num_groups_to_run=None, guidance_scale=None):
        """Run the top-down path: with ``activations`` (inference) z_i ~ q, else z_i ~ p at ``temperatures`` except
        for the first ``len(latents)`` groups, which take the given ``latents``, or the first ``len(prior_noise)``
        groups, which take ``mu_p + sigma_p * prior_noise[i]``. ``record``, a list, receives each group's z
        (inference: with the posterior's and the prior's mean and log-scale, as ``(z, mean, log_scale, prior_mean,
        prior_log_scale)``). ``class_embedding`` ``(batch_size, embed_dim)``: a conditional model's class.
        ``num_groups_to_run`` stops after that many groups (no likelihood parameters: None). ``guidance_scale`` s
        (generation only; ``class_embedding`` then holds the classes' embeddings, then the null class's, ``2 *
        batch_size`` rows): two top-down states, given y and given the null class, share every z, and each group's
        prior mean is ``mu_null + s * (mu_y - mu_null)`` with the scale of p(z_i | z_<i, y); the likelihood
        parameters are those given y. Returns the likelihood parameters and one ``_GroupStats`` per group
        (inference only)."""
        guided = guidance_scale is not None
        h = self.top_state.expand(2 * batch_size if guided else batch_size, -1, -1, -1).to(self.dtype)
        stats: list[_GroupStats] = []
        up = iter(self.upsample)
        scale = self.group_scale[0]
        for i, group in enumerate(self.groups):
            if self.group_scale[i] != scale:
                h = next(up)(h)
                scale = self.group_scale[i]
            if group.film is not None:
                h = group.film(h, class_embedding)
            h = group.cells(h)
            prior_mean, prior_log_scale = self._split(group.prior_parameters(h))
            if guided:  # classifier-free guidance of the group's prior mean; the class's own scale
                prior_mean = _guided_mean(*prior_mean.chunk(2), guidance_scale)
                prior_log_scale = prior_log_scale.chunk(2)[0]
            if activations is not None:
                mean, log_scale = self._posterior(group, h, activations[scale], prior_mean, prior_log_scale)
                if use_mean:
                    z = mean
                else:
                    eps = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                    z = mean + torch.exp(log_scale) * eps
                log_ratio = None
                if want_log_ratio:
                    log_ratio = (_gaussian_log_density(z, mean, log_scale)
                                 - _gaussian_log_density(z, prior_mean, prior_log_scale))
                kl_per_unit = _gaussian_kl_per_unit(mean, log_scale, prior_mean, prior_log_scale)
                stats.append(_GroupStats(kl=kl_per_unit.flatten(1).sum(1), log_q_minus_log_p=log_ratio,
                                         kl_per_unit=kl_per_unit if want_kl_per_unit else None))
                if record is not None:
                    record.append((z, mean, log_scale, prior_mean, prior_log_scale))
            elif i < len(latents):
                z = latents[i].to(device=prior_mean.device, dtype=prior_mean.dtype)
            elif i < len(prior_noise):
                eps = prior_noise[i].to(device=prior_mean.device, dtype=prior_mean.dtype)
                z = prior_mean + torch.exp(prior_log_scale) * eps
            else:
                z = prior_mean
                if temperatures[i] > 0:
                    eps = randn_tensor(prior_mean.shape, generator=generator, device=prior_mean.device,
                                       dtype=prior_mean.dtype)
                    z = prior_mean + temperatures[i] * torch.exp(prior_log_scale) * eps
            if record is not None and activations is None:
                record.append(z)
            if num_groups_to_run is not None and i + 1 == num_groups_to_run:
                return None, stats
            h = h + group.z_proj((torch.cat([z, z]) if guided else z).to(h.dtype))
        if guided:
            h = h[:batch_size]  # the state given y decodes
        for rest in up:  # scales below the last group's
            h = rest(h)
        h = self.output_cells(h)
        state = self.norm_out(h)
        if self.interleaved_passes is not None:  # p(x | z) needs the pixels of earlier passes: log_prob and
            return state, stats                  # decode_image take it from here
        return self.conv_out(nn.functional.silu(state)), stats

    # ------------------------------------------------------------------ objective
    def forward(
        self,
        sample: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        kl_weight: float = 1.0,
        return_dict: bool = True,
    ) -> HierarchicalVAEOutput | tuple:
        """One-sample ELBO for images (``uint8``, or float in [-1, 1]); see ``HierarchicalVAEOutput``.
        ``class_labels`` (class-conditional models): class indices ``(batch,)`` int64 in ``0 .. K`` (K, or None: the
        null class), giving the ELBO on ``log p(x | y)``. ``kl_weight`` scales the KL in ``loss`` only (KL warm-up)."""
        batch = self.pixel_likelihood.prepare(self.to_uint8(sample), generator)
        x = batch.model_input.to(self.dtype)
        emb = self._class_embedding(class_labels, x.shape[0], x.device)
        params, stats = self._top_down(x.shape[0], self.bottom_up(x, emb), generator, class_embedding=emb)
        reconstruction_nll = -self.log_prob(params, batch.target)
        kl_per_group = torch.stack([s.kl for s in stats], dim=1)
        kl = kl_per_group.sum(1)
        elbo = -(reconstruction_nll + kl)
        loss = ((reconstruction_nll + kl_weight * kl) / self.num_dims).mean()
        out = HierarchicalVAEOutput(loss=loss, reconstruction_nll=reconstruction_nll, kl=kl, kl_per_group=kl_per_group,
                                    elbo=elbo, bits_per_dim=nats_to_bits_per_dim(-elbo, self.num_dims))
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
        """ELBO and importance-weighted bounds on ``-log p(x)`` per image (nats) from ``importance_samples``
        posterior samples per image (log w = log p(x|z) + sum_i [log p(z_i|z_<i) - log q(z_i|z_<i,x)]). With class
        indices ``class_labels`` (``(batch,)``, class-conditional models) every term is conditioned on y and the
        bounds are on ``-log p(x | y)``; None gives the null class's, i.e. ``-log p(x)``."""
        if importance_samples < 1:
            raise ValueError(f"importance_samples must be >= 1, got {importance_samples}")
        batch = self.pixel_likelihood.prepare(self.to_uint8(sample), generator)
        x = batch.model_input.to(self.dtype)
        emb = self._class_embedding(class_labels, x.shape[0], x.device)
        activations = self.bottom_up(x, emb)
        num_images, k = x.shape[0], importance_samples
        log_weights = torch.empty(num_images, k, device=x.device)
        images_per_chunk = max(1, max_decode_batch // k)
        for start in range(0, num_images, images_per_chunk):
            stop = min(start + images_per_chunk, num_images)
            n = stop - start
            # rows i, n + i, 2n + i, ... are the K samples of image i
            acts = [a[start:stop].repeat(k, 1, 1, 1) for a in activations]
            chunk_emb = None if emb is None else emb[start:stop].repeat(k, 1)
            params, stats = self._top_down(n * k, acts, generator, want_log_ratio=True, class_embedding=chunk_emb)
            log_px = self.log_prob(params, batch.target[start:stop].repeat(k, 1, 1, 1))
            log_w = log_px - torch.stack([s.log_q_minus_log_p for s in stats], dim=1).sum(1)
            log_weights[start:stop] = log_w.view(k, n).t()
        nll_elbo = -log_weights.mean(dim=1)
        nll_iw = -(torch.logsumexp(log_weights, dim=1) - math.log(k))
        return LikelihoodBoundsOutput(nats_per_image_elbo=nll_elbo, nats_per_image_iw=nll_iw)

    # ------------------------------------------------------------------ generation and reconstruction
    # The entry points a pipeline calls besides forward carry diffusers' ``apply_forward_hook``: under
    # ``enable_model_cpu_offload`` (accelerate's CpuOffload hook) the model moves to the execution device first.
    @torch.no_grad()
    @apply_forward_hook
    def top_prior(self, class_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-scale of p(z_1), each ``(1, *group_shapes()[0])``: the top group depends on no other latent.
        A class-conditional model gives p(z_1 | y) for class indices ``class_labels`` (``(batch,)``; None: the null
        class), each ``(batch, *group_shapes()[0])``."""
        h = self.top_state.to(self.dtype)
        if self.config.num_classes:
            batch = 1 if class_labels is None else torch.as_tensor(class_labels).reshape(-1).shape[0]
            emb = self._class_embedding(class_labels, batch, h.device)
            h = self.groups[0].film(h.expand(batch, -1, -1, -1), emb)
        else:
            self._class_embedding(class_labels, 1, h.device)  # refuses labels for an unconditional model
        h = self.groups[0].cells(h)
        return self._split(self.groups[0].prior(h))

    @torch.no_grad()
    @apply_forward_hook
    def sample_top_latent(self, batch_size: int, generator=None, temperature: float = 1.0,
                          class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """z_1 ~ p(z_1) (class-conditional: p(z_1 | y) for class indices ``class_labels``, ``(batch_size,)``; None:
        the null class) with its standard deviation scaled by ``temperature``; with a list of generators (one per
        image) image i's draw is ``generator[i]``'s."""
        check_generator_list(generator, batch_size)
        if self.config.num_classes:  # one class index per image (a single one for all: expanded)
            class_labels = check_class_ids(class_labels, self.config.num_classes, batch_size, execution_device(self))
        mean, log_scale = self.top_prior(class_labels)
        eps = randn_tensor((batch_size, *mean.shape[1:]), generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + temperature * torch.exp(log_scale) * eps

    def check_guidance_scale(self, guidance_scale: float, class_labels) -> float | None:
        """The classifier-free guidance scale ``generate_parameters`` applies: None where there is nothing to guide
        (s = 1, or no class labels: the null class); refused for a model trained without classes or a negative or
        non-finite s."""
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if guidance_scale == 1:
            return None
        if not self.config.num_classes:
            raise ValueError(f"guidance_scale={guidance_scale} guides a class-conditional model, but this one was "
                             f"trained without class labels; use guidance_scale=1, or train with --class_conditional")
        return None if class_labels is None else float(guidance_scale)

    def guided_top_prior(self, class_labels, guidance_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``top_prior`` with its mean guided as ``generate_parameters`` guides the groups below (``guidance_scale``
        s: ``mu_null + s * (mu_y - mu_null)``, the class's scale)."""
        mean, log_scale = self.top_prior(class_labels)
        guidance = self.check_guidance_scale(guidance_scale, class_labels)
        if guidance is not None:
            mean = _guided_mean(mean, self.top_prior(None)[0], guidance)
        return mean, log_scale

    def check_latents(self, latents, batch_size: int) -> list[torch.Tensor]:
        """``latents`` (a tensor for the top group, or a list with one tensor per group for any prefix of the groups,
        top first) as a list, each checked against ``(batch_size, *group_shapes()[i])``."""
        if latents is None:
            return []
        given = [latents] if isinstance(latents, torch.Tensor) else list(latents)
        shapes = self.group_shapes()
        if len(given) > self.num_groups:
            raise ValueError(f"latents holds {len(given)} groups, but the model has {self.num_groups}; expected a "
                             f"list of at most {self.num_groups} tensors (top group first)")
        for i, z in enumerate(given):
            expected = (batch_size, *shapes[i])
            if not isinstance(z, torch.Tensor) or tuple(z.shape) != expected:
                got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                raise ValueError(f"latents must have shape {expected} for group {i} (batch_size, *group_shapes()[{i}]), "
                                 f"got {got}")
        return given

    @torch.no_grad()
    @apply_forward_hook
    def generate_parameters(self, batch_size: int, generator=None, temperature=1.0, top_latent=None, latents=None,
                            return_latents: bool = False, class_labels: torch.Tensor | None = None,
                            prior_noise: torch.Tensor | None = None, guidance_scale: float = 1.0):
        """The pixel likelihood's parameters for ``batch_size`` images drawn from the prior; ``temperature``
        scales each group's prior standard deviation (one number, or a list with one per group, top first).
        ``latents`` fixes the first groups (a list of tensors, one per group, any prefix; ``top_latent`` is the
        same as ``latents=[top_latent]``): with temperature 0 for the rest the result is deterministic. With a list
        of generators (one per image) image i's draws are ``generator[i]``'s alone. ``return_latents`` also returns
        every group's z (a list, top first). ``class_labels``: class indices ``(batch_size,)`` of a conditional
        model (None: the null class). ``prior_noise`` ``(batch_size, *prior_noise_shape(G))`` sets the top G
        groups to ``mu_p + sigma_p * eps`` given the groups above (``encode_prior_noise``'s inverse: what a diffusion
        prior over them drew); their temperatures are not used. ``guidance_scale`` s (a class-conditional model
        given ``class_labels``): classifier-free guidance of every drawn group's prior mean, ``mu_null + s * (mu_y -
        mu_null)`` (the null class's and the class's, each given the same z above; the scale stays the class's):
        1 is p(z | y), 0 the null class's p(z), s > 1 moves each group further towards its class."""
        if sum(x is not None for x in (top_latent, latents, prior_noise)) > 1:
            raise ValueError("give one of top_latent, latents (a list, one tensor per group) or prior_noise")
        check_generator_list(generator, batch_size)
        given = self.check_latents([top_latent] if top_latent is not None else latents, batch_size)
        noise = []
        if prior_noise is not None:
            noise = self.split_prior_noise(prior_noise)
            if prior_noise.shape[0] != batch_size:
                raise ValueError(f"prior_noise holds {prior_noise.shape[0]} images, expected batch_size={batch_size}")
        emb = self._class_embedding(class_labels, batch_size, execution_device(self))
        guidance = self.check_guidance_scale(guidance_scale, class_labels)
        if guidance is not None:  # the null class's state beside the class's
            emb = torch.cat([emb, self._class_embedding(None, batch_size, emb.device)])
        drawn: list[torch.Tensor] = []
        params = self._top_down(batch_size, temperatures=self._temperatures(temperature), generator=generator,
                                latents=given, record=drawn, class_embedding=emb, prior_noise=noise,
                                guidance_scale=guidance)[0]
        return (params, drawn) if return_latents else params

    @torch.no_grad()
    @apply_forward_hook
    def encode(self, sample: torch.Tensor, class_labels: torch.Tensor | None = None, generator=None,
               return_dict: bool = True):
        """Each group's posterior for images (``uint8`` or [-1, 1]); see ``HierarchicalVAEEncoderOutput``.

        ``latent_means`` runs the top-down path with every group at its posterior mean (the latents
        ``reconstruct_parameters`` decodes by default); ``latents`` is one sample of q (each group given the
        sampled groups above it), drawn from ``generator`` (one per image when a list). ``class_labels``: class
        indices ``(batch,)`` of a conditional model (None: the null class)."""
        x = self._model_input(sample)
        check_generator_list(generator, x.shape[0])
        emb = self._class_embedding(class_labels, x.shape[0], x.device)
        activations = self.bottom_up(x, emb)
        means: list = []
        samples: list = []
        self._top_down(x.shape[0], activations, use_mean=True, record=means, class_embedding=emb)
        self._top_down(x.shape[0], activations, generator, record=samples, class_embedding=emb)
        out = HierarchicalVAEEncoderOutput(latent_means=[m[0] for m in means], latents=[z[0] for z in samples],
                                           latent_log_scales=[z[2] for z in samples])
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    @apply_forward_hook
    def encode_prior_noise(self, sample: torch.Tensor, num_groups: int, generator=None, bound_terms: bool = False,
                           class_labels: torch.Tensor | None = None) -> HierarchicalVAEPriorNoiseOutput:
        """One posterior sample z of images (``uint8`` or [-1, 1]) seen through the model's own priors: the prior
        noise of the top ``num_groups`` groups and the densities a bound with another prior over it needs (see
        ``HierarchicalVAEPriorNoiseOutput``). ``bound_terms`` also runs the rest of the top-down path with the same
        z for the lower groups' KL and ``-log p(x | z)``; without it only the top groups are computed. The images
        are prepared as ``forward`` prepares them (the likelihood's own rounding or binarization, from
        ``generator``). Without gradients; ``prior_noise_terms`` computes the same with them (training the model
        together with a prior over its top groups)."""
        return self.prior_noise_terms(sample, num_groups, generator, bound_terms, class_labels)

    def prior_noise_terms(self, sample: torch.Tensor, num_groups: int, generator=None, bound_terms: bool = False,
                          class_labels: torch.Tensor | None = None) -> HierarchicalVAEPriorNoiseOutput:
        """``encode_prior_noise`` with gradients: every output is differentiable in the model's parameters through
        the reparameterised sample."""
        self.prior_noise_shape(num_groups)  # refuses a G the model does not have, by name
        batch = self.pixel_likelihood.prepare(self.to_uint8(sample), generator)
        x = batch.model_input.to(self.dtype)
        emb = self._class_embedding(class_labels, x.shape[0], x.device)
        record: list = []
        params, stats = self._top_down(x.shape[0], self.bottom_up(x, emb), generator, record=record,
                                       class_embedding=emb, num_groups_to_run=None if bound_terms else num_groups)
        top = record[:num_groups]
        noise = self.stack_prior_noise([(z - prior_mean) * torch.exp(-prior_log_scale)
                                        for z, _, _, prior_mean, prior_log_scale in top])
        lower_kl = reconstruction_nll = None
        if bound_terms:
            lower_kl = sum((s.kl for s in stats[num_groups:]), torch.zeros(x.shape[0], device=x.device))
            reconstruction_nll = -self.log_prob(params, batch.target)
        return HierarchicalVAEPriorNoiseOutput(
            prior_noise=noise,
            log_prior_scale=sum(r[4].flatten(1).sum(1) for r in top),
            posterior_log_density=sum(_gaussian_log_density(z, mean, log_scale) for z, mean, log_scale, _, _ in top),
            prior_log_density=sum(_gaussian_log_density(z, m, s) for z, _, _, m, s in top),
            lower_kl=lower_kl, reconstruction_nll=reconstruction_nll)

    def _model_input(self, sample: torch.Tensor) -> torch.Tensor:
        """Images (``uint8`` or [-1, 1]) checked, rounded to the 8-bit grid and put in [-1, 1] on the device the
        model computes on."""
        x = self.to_uint8(sample).float() * (2.0 / 255.0) - 1.0
        return x.to(device=execution_device(self), dtype=self.dtype)

    @torch.no_grad()
    @apply_forward_hook
    def reconstruct_parameters(self, sample: torch.Tensor, generator=None, use_posterior_mean: bool = True,
                               class_labels: torch.Tensor | None = None):
        """The pixel likelihood's parameters after encoding images (``uint8`` or [-1, 1]) with every group at its
        posterior mean (or one posterior sample); ``class_labels``: class indices ``(batch,)`` of a conditional
        model, used to encode and to decode (None: the null class)."""
        x = self._model_input(sample)
        check_generator_list(generator, x.shape[0])
        emb = self._class_embedding(class_labels, x.shape[0], x.device)
        return self._top_down(x.shape[0], self.bottom_up(x, emb), generator, use_mean=use_posterior_mean,
                              class_embedding=emb)[0]

    @apply_forward_hook
    def decode_image(self, params: torch.Tensor, sample_pixels: bool = False, generator=None) -> torch.Tensor:
        """Images in [-1, 1]: the likelihood's mean, or one pixel sample if ``sample_pixels`` (``pixel_passes`` > 1:
        pass by pass, each given the pixels decoded before it)."""
        return decode_pixels(self.pixel_likelihood, self.interleaved_passes, self.source_region, params,
                             self.conv_out, self.config.in_channels, sample_pixels, generator)

    # ------------------------------------------------------------------ diagnostics and regularisation
    @torch.no_grad()
    def posterior_statistics(self, sample: torch.Tensor, generator=None, threshold: float = 0.01,
                             batch_size: int = 250, class_labels: torch.Tensor | None = None) -> dict:
        """KL per group (mean nats per image) and active units per group, upper groups sampled from q.

        A unit is active when its KL(q || p), averaged over the images, exceeds ``threshold`` nats: the posterior
        then says something about the image that the prior does not. (Burda et al.'s Cov_x(E_q[z]) test does not
        carry over to a hierarchy: below the top group the prior mean itself varies with the image through the
        upper latents, so a group whose posterior equals its prior would still count as active.) A group with no
        active units has collapsed to its prior. ``class_labels`` (a conditional model; ``(num_images,)``): the
        images' classes (None: the null class).
        """
        kl_sum = torch.zeros(self.num_groups, dtype=torch.float64)
        kl_per_unit_sum: list[torch.Tensor | None] = [None] * self.num_groups
        for start in range(0, sample.shape[0], batch_size):
            batch = self.pixel_likelihood.prepare(self.to_uint8(sample[start : start + batch_size]), generator)
            x = batch.model_input.to(self.dtype)
            labels = None if class_labels is None else torch.as_tensor(class_labels)[start : start + batch_size]
            emb = self._class_embedding(labels, x.shape[0], x.device)
            _, stats = self._top_down(x.shape[0], self.bottom_up(x, emb), generator, want_kl_per_unit=True,
                                      class_embedding=emb)
            for i, s in enumerate(stats):
                kl_sum[i] += s.kl.double().sum().cpu()
                unit_sum = s.kl_per_unit.double().sum(0).flatten().cpu()
                kl_per_unit_sum[i] = unit_sum if kl_per_unit_sum[i] is None else kl_per_unit_sum[i] + unit_sum
        num_images = max(sample.shape[0], 1)
        mean_kl_per_unit = [total / num_images for total in kl_per_unit_sum]
        return {
            "kl_per_group": (kl_sum / num_images).tolist(),
            "active_units_per_group": [int((kl > threshold).sum()) for kl in mean_kl_per_unit],
            "units_per_group": [int(kl.numel()) for kl in mean_kl_per_unit],
        }

    def spectral_penalty(self, iterations: int = 1) -> torch.Tensor:
        """Sum over conv layers of the largest singular value of the (out, in * k * k) weight matrix, estimated
        by power iteration whose vectors persist between calls (not saved: they re-converge in a few steps)."""
        total = torch.zeros((), device=self.device)
        for name, module in self.named_modules():
            if not isinstance(module, nn.Conv2d) or module.weight.shape[1] * module.weight[0, 0].numel() < 2:
                continue
            w = module.weight.flatten(1).float()
            u = self._power_iteration_vectors.get(name)
            if u is None or u.device != w.device:
                u = nn.functional.normalize(torch.randn(w.shape[0], device=w.device), dim=0)
            with torch.no_grad():
                for _ in range(iterations):
                    v = nn.functional.normalize(w.t() @ u, dim=0, eps=1e-8)
                    u = nn.functional.normalize(w @ v, dim=0, eps=1e-8)
            self._power_iteration_vectors[name] = u
            total = total + torch.dot(u, w @ v)
        return total
