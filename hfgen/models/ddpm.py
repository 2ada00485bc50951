"""DDPM on diffusers' ``UNet2DModel`` + ``DDPMScheduler``: networks and noise schedules from a flat config, and
the variational bound L_vlb of Ho et al. (2020) in nats per image.

A DDPM folder written by hfgen is a stock ``DDPMPipeline`` folder (a class-conditional one carries its pipeline
file, ``pipelines/pipeline_ddpm_conditional.py``); nothing here is needed to load or sample it.
This file imports only torch, diffusers and its siblings.

The bound (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, sec. 2) for 8-bit images ``x`` scaled to bin centres
``x_0`` in [-1, 1], in diffusers' zero-based timestep indices ``t = 0 .. T-1`` (paper step ``t + 1``)::

    L_vlb = L_T + sum_{t=1}^{T-1} L_t + L_0
    L_T   = KL(q(x_T | x_0) || N(0, I))                                 (prior; no network)
    L_t   = E_q(x_t|x_0) KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))   (Gaussians, closed form given x_t)
    L_0   = E_q(x_0'|x_0) -log p(x | x_0')                              (discretized Gaussian decoder, 8-bit bins)

``p(x_{t-1} | x_t)`` is the sampler's own model: mean from the network's prediction of ``x_0`` (clipped to
``[-1, 1]`` when the scheduler clips, as its sampler does) and the scheduler's variance: ``fixed_small`` (the
posterior variance), ``fixed_large`` (``beta_t``) or ``learned_range`` (Nichol & Dhariwal 2021, eq. 15: the network
outputs a second set of channels ``v`` in about [-1, 1] and the log-variance is
``(v + 1) / 2 * log beta_t + (1 - v) / 2 * log posterior_variance_t``, which diffusers' ``DDPMScheduler`` samples
with). The decoder's mean is the predicted ``x_0``; its variance is the smallest non-zero posterior variance (that
of ``t = 1``) for fixed variances, as in Ho et al.'s code, and the learned one (with that clipped posterior
variance as its lower end) for ``learned_range``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from .likelihoods import log1mexp, uint8_to_unit_interval

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")

#: keys of the flat DDPM model config that describe the scheduler; the rest describe the network
SCHEDULER_KEYS = ("num_train_timesteps", "beta_schedule", "prediction_type", "variance_type", "clip_sample")


def build_unet(config: dict[str, Any], channels: int, sample_size: int, learned_variance: bool = False,
               num_classes: int = 0) -> UNet2DModel:
    """A ``UNet2DModel`` from the network part of a flat config; with ``learned_variance`` it outputs twice the
    image's channels (the prediction, then the variance interpolation ``v``), as ``DDPMScheduler`` expects. With
    ``num_classes`` K > 0 it is class-conditional: ``num_class_embeds = K + 1`` class embeddings (added to the
    timestep embedding), indices ``0 .. K-1`` for the classes and ``K`` for the null class (classifier-free
    guidance; see ``hfgen.models.labels``).

    ``attention_resolutions`` lists the feature-map sizes (pixels) at which a level uses self-attention, e.g.
    ``[16]`` for the DDPM CIFAR-10 network at 32x32; the middle block always has attention.
    """
    widths = list(config["block_out_channels"])
    attention = set(config.get("attention_resolutions", []))
    resolutions = [sample_size // 2**i for i in range(len(widths))]
    down = ["AttnDownBlock2D" if r in attention else "DownBlock2D" for r in resolutions]
    up = ["AttnUpBlock2D" if r in attention else "UpBlock2D" for r in reversed(resolutions)]
    extra = {k: config[k] for k in ("dropout", "norm_num_groups", "attention_head_dim", "downsample_padding",
                                    "flip_sin_to_cos", "freq_shift", "norm_eps") if k in config}
    return UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels * (2 if learned_variance else 1),
        block_out_channels=widths,
        layers_per_block=config["layers_per_block"], down_block_types=down, up_block_types=up,
        num_class_embeds=num_classes + 1 if num_classes > 0 else None, **extra,
    )


def build_scheduler(config: dict[str, Any]) -> DDPMScheduler:
    """A ``DDPMScheduler`` from the scheduler part of a flat config. The linear schedule is scaled with ``T``
    (beta from 1e-4 to 0.02 at T = 1000, as Ho et al.; ``1000 / T`` times those for other ``T``, as Nichol &
    Dhariwal) so that ``x_T`` is close to pure noise whatever ``T`` is."""
    steps = int(config.get("num_train_timesteps", 1000))
    schedule = config.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {schedule!r}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction!r}")
    variance = config.get("variance_type", "fixed_small")
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance!r}")
    scale = 1000.0 / steps
    if schedule == "linear" and 0.02 * scale >= 1.0:
        raise ValueError(f"num_train_timesteps={steps} with the linear schedule scales beta_T to {0.02 * scale:g} "
                         f"(0.02 x 1000 / T), which must stay below 1; expected T >= 21, or beta_schedule "
                         f"'squaredcos_cap_v2'")
    return DDPMScheduler(
        num_train_timesteps=steps, beta_schedule=schedule, beta_start=1e-4 * scale, beta_end=0.02 * scale,
        prediction_type=prediction, variance_type=variance, clip_sample=bool(config.get("clip_sample", True)),
    )


class DiffusionTables:
    """The schedule's per-timestep constants as float32 tensors on one device (computed in float64)."""

    def __init__(self, scheduler: DDPMScheduler, device: torch.device | str):
        cfg = scheduler.config
        if cfg.variance_type not in VARIANCE_TYPES and cfg.variance_type not in ("fixed_small_log", "fixed_large_log"):
            raise ValueError(f"the L_vlb needs a fixed or learned_range variance; this scheduler's variance_type is "
                             f"{cfg.variance_type!r}")
        if getattr(cfg, "thresholding", False):
            raise ValueError("the L_vlb of a scheduler with dynamic thresholding is not supported")
        betas = scheduler.betas.double()
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
        if cfg.variance_type.startswith("fixed_large"):
            model_variance = betas.clone()
        else:
            model_variance = posterior_variance.clone()
        # t = 0 is the decoder; its variance is the posterior variance of t = 1 (never 0)
        model_variance[0] = posterior_variance[1]
        clipped_posterior_variance = posterior_variance.clone()
        clipped_posterior_variance[0] = posterior_variance[1]
        self.learned_variance = cfg.variance_type == "learned_range"
        self.fixed_large = cfg.variance_type.startswith("fixed_large")
        f32 = dict(dtype=torch.float32, device=device)
        self.num_timesteps = len(betas)
        self.prediction_type = cfg.prediction_type
        self.clip_sample = bool(cfg.clip_sample)
        self.clip_range = float(getattr(cfg, "clip_sample_range", 1.0))
        self.alphas_cumprod = alphas_cumprod.to(**f32)
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().to(**f32)
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt().to(**f32)
        self.posterior_mean_coef_x0 = (betas * prev.sqrt() / (1.0 - alphas_cumprod)).to(**f32)
        self.posterior_mean_coef_xt = ((1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod)).to(**f32)
        self.posterior_log_variance = posterior_variance.clamp(min=1e-20).log().to(**f32)
        self.model_log_variance = model_variance.log().to(**f32)
        # the two ends of a learned_range log-variance: log beta_t and the clipped log posterior variance
        self.log_betas = betas.log().to(**f32)
        self.clipped_posterior_log_variance = clipped_posterior_variance.log().to(**f32)
        # prior term L_T per dimension is a function of x_0: keep its constants
        self.last_alpha_cumprod = float(alphas_cumprod[-1])


def _at(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return table[t].view(-1, 1, 1, 1)


def add_noise(tables: DiffusionTables, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _at(tables.sqrt_alphas_cumprod, t) * x0 + _at(tables.sqrt_one_minus_alphas_cumprod, t) * noise


def training_target(tables: DiffusionTables, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network regresses on for the scheduler's ``prediction_type``."""
    if tables.prediction_type == "epsilon":
        return noise
    if tables.prediction_type == "sample":
        return x0
    # v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022)
    return _at(tables.sqrt_alphas_cumprod, t) * noise - _at(tables.sqrt_one_minus_alphas_cumprod, t) * x0


def predicted_x0(tables: DiffusionTables, model_output: torch.Tensor, x_t: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
    """The network's estimate of ``x_0``, clipped as the scheduler's sampler clips it."""
    a, s = _at(tables.sqrt_alphas_cumprod, t), _at(tables.sqrt_one_minus_alphas_cumprod, t)
    if tables.prediction_type == "epsilon":
        x0 = (x_t - s * model_output) / a
    elif tables.prediction_type == "sample":
        x0 = model_output
    else:
        x0 = a * x_t - s * model_output
    if tables.clip_sample:
        x0 = x0.clamp(-tables.clip_range, tables.clip_range)
    return x0


def _normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def log_normal_interval_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``log(Phi(upper) - Phi(lower))`` for standard-normal ``lower < upper`` (``-inf`` / ``+inf`` allowed), with
    no clamp: computed on the side of zero where both ends lie in the tail that ``log_ndtr`` resolves, as
    ``log Phi(b) + log(1 - Phi(a) / Phi(b))`` with ``(a, b) = (lower, upper)`` or, mirrored, ``(-upper, -lower)``.
    """
    mirror = (lower + upper) > 0
    a = torch.where(mirror, -upper, lower)
    b = torch.where(mirror, -lower, upper)
    log_b = torch.special.log_ndtr(b)
    return log_b + log1mexp(torch.special.log_ndtr(a) - log_b)


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """-log P(8-bit bin of ``x0`` | N(mean, e^log_variance)) per element, in nats; ``x0`` holds bin centres in
    [-1, 1] (bin width 2/255); the outermost bins extend to -inf and +inf. Exact in the tails (no clamp): a pixel
    100 grey levels off its mean costs what it should, not a capped 27.6 nats."""
    inv_std = torch.exp(-0.5 * log_variance)
    centred = x0 - mean
    upper = torch.where(x0 > 0.999, torch.full_like(centred, math.inf), inv_std * (centred + 1.0 / 255.0))
    lower = torch.where(x0 < -0.999, torch.full_like(centred, -math.inf), inv_std * (centred - 1.0 / 255.0))
    return -log_normal_interval_mass(lower, upper)


def prior_nats(tables: DiffusionTables, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per image, in nats."""
    mean = math.sqrt(tables.last_alpha_cumprod) * x0
    logvar = torch.full_like(x0, math.log(1.0 - tables.last_alpha_cumprod))
    return _normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).sum(1)


def split_output(tables: DiffusionTables, model_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The network's prediction (epsilon, v or x_0) and, for ``learned_range``, its variance channels ``v``."""
    if not tables.learned_variance:
        return model_output, None
    return model_output.chunk(2, dim=1)


def model_log_variance(tables: DiffusionTables, t: torch.Tensor, variance_output: torch.Tensor | None) -> torch.Tensor:
    """log of the reverse step's variance at ``t``: the fixed table, or ``learned_range``'s interpolation between
    log beta_t and the clipped log posterior variance (``DDPMScheduler``'s formula, ``frac = (v + 1) / 2``)."""
    if variance_output is None:
        return _at(tables.model_log_variance, t)
    frac = (variance_output.float() + 1.0) / 2.0
    return frac * _at(tables.log_betas, t) + (1.0 - frac) * _at(tables.clipped_posterior_log_variance, t)


def gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """-log N(x0; mean, e^log_variance) per element, in nats: the decoder of a diffusion over continuous data
    (a latent diffusion's scaled latents), a density rather than a bin mass."""
    return 0.5 * (math.log(2 * math.pi) + log_variance + (x0 - mean) ** 2 * torch.exp(-log_variance))


#: what the decoder term L_0 scores: ``"discretized"`` 8-bit bins of an image in [-1, 1] (a probability mass),
#: ``"continuous"`` a Gaussian density of continuous data such as latents (nats of a density)
DECODERS = ("discretized", "continuous")


def vlb_term_nats(tables: DiffusionTables, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                  model_output: torch.Tensor, stop_mean_gradient: bool = False,
                  decoder: str = "discretized") -> torch.Tensor:
    """The L_vlb term of timestep ``t`` (per image, nats) given ``x_t ~ q(x_t | x_0)`` and the network's output
    at ``(x_t, t)``: the KL of the reverse step for ``t >= 1``, the decoder's NLL for ``t = 0`` (``decoder``:
    ``"discretized"`` 8-bit bins, or ``"continuous"`` a Gaussian density, see ``DECODERS``).
    ``stop_mean_gradient``: the mean enters as a constant, so that the term trains only a learned variance
    (Nichol & Dhariwal's hybrid objective)."""
    prediction, variance_output = split_output(tables, model_output.float())
    if stop_mean_gradient:
        prediction = prediction.detach()
    x0_hat = predicted_x0(tables, prediction, x_t, t)
    coef_x0, coef_xt = _at(tables.posterior_mean_coef_x0, t), _at(tables.posterior_mean_coef_xt, t)
    model_mean = coef_x0 * x0_hat + coef_xt * x_t
    model_logvar = model_log_variance(tables, t, variance_output)
    true_mean = coef_x0 * x0 + coef_xt * x_t
    kl = _normal_kl(true_mean, _at(tables.posterior_log_variance, t), model_mean, model_logvar).flatten(1).sum(1)
    if decoder == "discretized":
        decoder_nll = discretized_gaussian_nll(x0, model_mean, model_logvar)
    elif decoder == "continuous":
        # fixed_large's variance is beta_t at every step, the decoder's included (beta_0 = Var(x_0 | x_1) for N(0, I)
        # data); the 8-bit decoder keeps Ho et al.'s posterior variance of t = 1, which a bin of width 2/255 needs
        decoder_logvar = _at(tables.log_betas, t) if tables.fixed_large and variance_output is None else model_logvar
        decoder_nll = gaussian_nll(x0, model_mean, decoder_logvar)
    else:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    return torch.where(t == 0, decoder_nll.flatten(1).sum(1), kl)


def stratum_edges(num_timesteps: int, strata: int) -> list[tuple[int, int]]:
    """``strata`` contiguous, non-empty strata ``[lo, hi)`` covering ``1 .. T-1``, geometrically spaced: the KL
    terms are largest and change fastest at small t, so small t get narrow strata (lower variance than equal
    strata); each stratum's one draw is weighted by its width, which keeps the estimate unbiased."""
    T = num_timesteps
    edges = torch.logspace(0, math.log10(T), strata + 1, dtype=torch.float64).round().long().tolist()
    edges[0], edges[-1] = 1, T
    for i in range(1, strata):  # strictly increasing, leaving room for the strata still to come
        edges[i] = min(max(edges[i], edges[i - 1] + 1), T - (strata - i))
    return list(zip(edges[:-1], edges[1:]))


@dataclass
class VLBEstimate:
    """Per-image L_vlb in nats (``nats_per_image``) and how it was obtained."""

    nats_per_image: torch.Tensor
    timesteps_per_image: int
    exact: bool


@torch.no_grad()
def variational_bound(unet: UNet2DModel, scheduler: DDPMScheduler, images: torch.Tensor, timesteps: int,
                      generator: torch.Generator, tables: DiffusionTables | None = None,
                      class_labels: torch.Tensor | None = None) -> VLBEstimate:
    """L_vlb per image in nats for ``uint8`` images: a bound on ``-log p(x)``, or on ``-log p(x | y)`` for a
    class-conditional network given ``class_labels`` (int64 class indices, shape ``(batch,)``; the null class
    gives the bound on ``-log p(x)``), which every network pass receives.

    ``L_T`` and the decoder term ``L_0`` are always computed exactly (one network pass for ``L_0``). The sum of
    the ``T - 1`` KL terms is summed exactly when ``timesteps >= T - 1``; otherwise it is estimated by
    stratified sampling: ``{1 .. T-1}`` is cut into ``timesteps`` contiguous, geometrically spaced strata
    (``stratum_edges``) and one timestep is drawn uniformly from each, weighted by its stratum's size. Each image's estimate is unbiased and
    independent of the others', so the standard error over images that ``hfgen evaluate`` reports includes the
    timestep-sampling variance. Each image also draws its own ``x_t ~ q(x_t | x_0)`` per term (one sample), as in
    Ho et al.'s and Nichol & Dhariwal's bits/dim evaluations; that part is a Monte Carlo estimate even when exact.
    """
    return _variational_bound(unet, tables or DiffusionTables(scheduler, images.device), uint8_to_unit_interval(images),
                              timesteps, generator, class_labels, decoder="discretized")


@torch.no_grad()
def continuous_variational_bound(unet: UNet2DModel, scheduler: DDPMScheduler, x0: torch.Tensor, timesteps: int,
                                 generator: torch.Generator, tables: DiffusionTables | None = None,
                                 class_labels: torch.Tensor | None = None) -> VLBEstimate:
    """L_vlb per sample in nats for continuous data ``x0`` (float, e.g. a latent diffusion's scaled latents): an
    upper bound on ``-log p(x0)`` of the density the diffusion defines (``-log p(x0 | y)`` given ``class_labels``),
    with a Gaussian decoder density as ``L_0``. Estimated as ``variational_bound`` is (``L_T`` and ``L_0`` exact,
    ``timesteps`` stratified KL terms). The scheduler must not clip (``clip_sample=False``): clipping assumes
    data in [-1, 1]."""
    tables = tables or DiffusionTables(scheduler, x0.device)
    if tables.clip_sample:
        raise ValueError("the bound of continuous data needs a scheduler with clip_sample=False (clipping x_0 to "
                         f"[-{tables.clip_range:g}, {tables.clip_range:g}] assumes images); got clip_sample=True")
    return _variational_bound(unet, tables, x0.float(), timesteps, generator, class_labels, decoder="continuous")


def _variational_bound(unet, tables: DiffusionTables, x0: torch.Tensor, timesteps: int, generator: torch.Generator,
                       class_labels: torch.Tensor | None, decoder: str) -> VLBEstimate:
    device = x0.device
    T = tables.num_timesteps
    batch = x0.shape[0]
    total = prior_nats(tables, x0)

    def term(t: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        x_t = add_noise(tables, x0, noise, t)
        return vlb_term_nats(tables, x0, x_t, t, unet(x_t, t, class_labels=class_labels).sample, decoder=decoder)

    total = total + term(torch.zeros(batch, dtype=torch.long, device=device))
    exact = timesteps >= T - 1
    if exact:
        for s in range(1, T):
            total = total + term(torch.full((batch,), s, dtype=torch.long, device=device))
    else:
        for lo, hi in stratum_edges(T, timesteps):
            u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
            t = (lo + (u * (hi - lo)).floor().long()).clamp(max=hi - 1)
            total = total + (hi - lo) * term(t)
    return VLBEstimate(total, T if exact else timesteps + 1, exact)
