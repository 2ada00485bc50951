"""The DDPM family: diffusers' ``UNet2DModel`` + ``DDPMScheduler``, saved as a stock ``DDPMPipeline`` folder.

Objective: the simple loss of Ho et al. (2020), mean squared error of the network's prediction (``epsilon``,
``v_prediction`` or ``sample``) at a uniformly drawn timestep, optionally with Min-SNR-gamma weights
(Hang et al. 2023, via ``diffusers.training_utils.compute_snr``). With ``variance_type="learned_range"`` the
hybrid objective of Nichol & Dhariwal (2021): ``L_simple + vlb_weight * L_vlb``, the L_vlb term at the same
timestep (weighted by T, in nats per dimension) with the mean's gradient stopped, so that it trains the variance
only (``vlb_weight`` 0.001 as in the paper).

Logs: ``bits_per_dim`` is an unbiased single-timestep estimate of L_vlb, not a stand-in: from the same
forward pass as the loss (no extra network call), each image's term at its training timestep ``t`` (drawn
uniformly, so the importance weight is ``T``) plus its exact prior term ``L_T``. It is noisy (the decoder term
``L_0`` enters with weight ``T`` in about ``B / T`` of the images of a batch): smooth it over steps, and read the
evaluation's bound (many timesteps per image) for a figure to report. ``mse`` is the unweighted simple loss.

Bounds: ``L_vlb`` (``hfgen.models.ddpm.variational_bound``); ``importance_samples`` K is the number of
stratified timesteps per image (``K >= T - 1``: every term summed). A DDPM has no importance-weighted bound
here, so both ``Bounds`` fields hold the same L_vlb.

Class-conditional (``num_classes`` K > 0 in the model config): the UNet has K + 1 class embeddings (the last one
the null class, which label dropout trains), ``loss`` and ``bounds`` pass the class indices to it (``bounds``:
L_vlb of ``-log p(x | y)``, of ``-log p(x)`` for the null class or ``None``), and the folder holds a
``ClassConditionalDDPMPipeline`` (classifier-free guidance; ``pipelines/pipeline_ddpm_conditional.py``) with the
``class_names``, which plain diffusers loads with ``trust_remote_code=True``.
"""

from __future__ import annotations

import argparse
import math
import types

import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.training_utils import compute_snr

from ..models.ddpm import (
    BETA_SCHEDULES, PREDICTION_TYPES, SCHEDULER_KEYS, VARIANCE_TYPES, DiffusionTables, add_noise, build_scheduler,
    build_unet, prior_nats, split_output, training_target, variational_bound, vlb_term_nats,
)
from ..models.labels import class_label_ids
from ..models.likelihoods import SourceRegion, uint8_to_unit_interval
from ..pipelines import ClassConditionalDDPMPipeline
from ..pipelines.pipeline_ddpm_conditional import SOURCE_SIZE_KEY, default_inference_steps
from .base import Bounds, ModelFamily, Preset


def _dpm_solver_clipping(clip_sample: bool) -> dict:
    """DPM-Solver++'s settings for ``clip_sample``: it has no such option, but its dynamic thresholding with
    ``sample_max_value=1`` clips every x_0 prediction to [-1, 1], exactly what ``clip_sample`` does in the DDPM and
    DDIM schedulers (the threshold, a quantile of |x_0| clamped to [1, sample_max_value], is then always 1).
    Unlike DDIM's clipping, which keeps the network's unclipped noise for the step, DPM-Solver++ steps from the
    clipped x_0 alone, so clipping helps it (docs/ddpm.md)."""
    return {"thresholding": bool(clip_sample), "sample_max_value": 1.0}


#: ``hfgen sample --scheduler`` choices: the scheduler class and its settings over the folder's scheduler config.
#: DDIM does not inherit the folder's clip_sample=True: on the validation split (two 10-minute `small` models, fixed
#: and learned variances, 20 steps, 300 samples) clipping cost 15-19 in fd_fmnist, and "trailing" spacing was no
#: better than "leading" for one model and far worse for the cosine-schedule one. DPM-Solver++ clips its x_0
#: prediction (dynamic thresholding at 1, see ``_dpm_solver_clipping``) on "linspace" steps, its own default, instead
#: of the "leading" spacing it would inherit from the folder's DDPM config: on validation at 20 steps, fd_fmnist 25.5
#: against 44.7 for what it ran before (leading, unclipped) and 84.7 for linspace unclipped, whose 10-minute models
#: draw saturated white squares (benchmarks/sampler_settings.py, docs/ddpm.md)
SAMPLERS = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {"clip_sample": False, "timestep_spacing": "leading"}),
    "dpm-solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", **_dpm_solver_clipping(True),
                                                   "timestep_spacing": "linspace"}),
}

DDPM_PRESETS = {
    "tiny": Preset(
        description="seconds on a CPU; for tests (T = 100)",
        model=dict(block_out_channels=[16, 32], layers_per_block=1, attention_resolutions=[16], norm_num_groups=8,
                   dropout=0.0, num_train_timesteps=100, beta_schedule="linear", prediction_type="epsilon",
                   variance_type="fixed_small"),
        training=dict(
            train_batch_size=16, learning_rate=2e-3, max_train_steps=20, lr_warmup_steps=2, eval_steps=0,
            sample_steps=0, checkpointing_steps=0, logging_steps=5, eval_max_samples=32, final_eval_max_samples=32,
            num_sample_images=4, ema_decay=0.9,
        ),
    ),
    "small": Preset(
        # learned variances on the cosine schedule: on the validation split after 10 CPU minutes, L_vlb 4.34 against
        # 5.01 bits/dim for fixed_small on the linear schedule (validation[:500], 16 timesteps); batch 32 at LR 2e-3
        # (1.6x the optimizer steps): 3.85 against 4.34 at batch 64 and LR 1e-3. A cheaper net with more steps
        # scored 4.01. v-prediction at batch 16 draws the samples: fd_fmnist 12.4 against 24.2 for epsilon at batch
        # 32 (500 DPM-Solver++ 20-step samples against validation) for 0.09 bits/dim of bound (3.79 against 3.71);
        # epsilon at batch 16 has the best bound, 3.57, and fd 22.5 (docs/baselines.md).
        description="10 minutes of training on two CPU cores (Fashion-MNIST 32x32, T = 1000, learned variances, "
                    "v-prediction)",
        model=dict(block_out_channels=[32, 64, 64], layers_per_block=1, attention_resolutions=[8],
                   norm_num_groups=16, dropout=0.0, num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                   prediction_type="v_prediction", variance_type="learned_range"),
        training=dict(
            train_batch_size=16, learning_rate=2e-3, max_train_steps=6000, max_train_minutes=10.0,
            lr_warmup_steps=50, eval_steps=250, sample_steps=0, checkpointing_steps=250, logging_steps=20,
            eval_max_samples=100, final_eval_max_samples=500, final_importance_samples=16, num_sample_images=16,
            ema_decay=0.995,
        ),
    ),
    "ddpm-cifar": Preset(
        description="the DDPM paper's 35.7M CIFAR-10 network (Ho et al. 2020): GPU days",
        model=dict(block_out_channels=[128, 256, 256, 256], layers_per_block=2, attention_resolutions=[16],
                   norm_num_groups=32, dropout=0.1, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
                   norm_eps=1e-6, num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon",
                   variance_type="fixed_small"),
        training=dict(
            train_batch_size=128, learning_rate=2e-4, max_train_steps=800000, lr_warmup_steps=5000,
            max_grad_norm=1.0, eval_steps=50000, sample_steps=10000, checkpointing_steps=10000, logging_steps=100,
            eval_max_samples=1000, final_eval_max_samples=10000, final_importance_samples=1000,
            num_sample_images=64, ema_decay=0.9999,
        ),
    ),
}


class DDPMFamily(ModelFamily):
    name = "ddpm"
    summary = "DDPM in pixel space: diffusers UNet2DModel + DDPMScheduler"
    pipeline_class = DDPMPipeline
    presets = DDPM_PRESETS
    model_arguments = ("block_out_channels", "layers_per_block", "attention_resolutions", "dropout",
                       "norm_num_groups", "num_train_timesteps", "beta_schedule", "prediction_type", "variance_type")
    sampling_options = ("scheduler", "steps", "clip_sample", "timestep_spacing", "guidance_scale", "guidance_rescale")
    # bounds() runs its K timesteps one after another over the batch: the evaluator need not shrink batches
    importance_samples_in_batch = False
    # Unless asked for another K, every bound hfgen prints, logs or writes uses 16 stratified timesteps per image
    # (presets may ask for more; ddpm-cifar 1000). The one-timestep estimate is unbiased but so skewed that it mostly
    # lands below L_vlb: the terms of small t, where L_vlb's mass is, reach a few images with a large weight and
    # most images none. With the exact denoiser of Gaussian data
    # (T = 1000, 20 images of 256 dims, 40 repeats; tests/test_vlb_estimator.py) it was below the exact bound in 37
    # of 40 repeats, median -0.52 bits/dim, in 32 by more than 3 of its own standard errors; 16 timesteps gave
    # -0.003 +- 0.015 bits/dim (mean and spread over repeats), always within 1.7 standard errors
    validation_importance_samples = 16
    default_importance_samples = 16
    # one bound, L_vlb, whose K is a number of timesteps; and the network scores the whole padded square (the
    # border cannot be marginalised out of a diffusion), so its bits/dim are of the padded image over the
    # data's own dimensions: still an upper bound, since p(image) >= p(image, border = 0). The data's own size is
    # kept for sampling only (SOURCE_SIZE_KEY in the UNet config), where scored_shape does not read it.
    has_importance_weighted_bound = False

    def __init__(self):
        # The scheduler belongs to the pipeline folder, not to the network: the family keeps the one of the
        # model it built or was given (build_model / model_of), and its constant tables per device.
        self.scheduler: DDPMScheduler | None = None
        self._tables: dict[str, DiffusionTables] = {}
        # Likewise the class names of a class-conditional model (pipeline config, not network config).
        self.model_class_names: list[str] | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("DDPM model and objective (unset flags take the preset's value)")
        group.add_argument("--block_out_channels", type=int, nargs="+", default=None,
                           help="UNet widths per resolution, full resolution first")
        group.add_argument("--layers_per_block", type=int, default=None, help="UNet residual blocks per resolution")
        group.add_argument("--attention_resolutions", type=int, nargs="*", default=None,
                           help="feature-map sizes (pixels) whose level has self-attention")
        group.add_argument("--dropout", type=float, default=None, help="dropout rate in the UNet's residual blocks")
        group.add_argument("--norm_num_groups", type=int, default=None,
                           help="GroupNorm groups in the UNet (must divide every width)")
        group.add_argument("--num_train_timesteps", type=int, default=None, help="T, the diffusion's timesteps")
        group.add_argument("--beta_schedule", choices=BETA_SCHEDULES, default=None,
                           help="the noise schedule: linear (Ho et al. 2020) or squaredcos_cap_v2 (cosine, Nichol & "
                                "Dhariwal 2021)")
        group.add_argument("--prediction_type", choices=PREDICTION_TYPES, default=None,
                           help="what the UNet predicts: the noise (epsilon), v (v_prediction) or x_0 (sample)")
        group.add_argument("--variance_type", choices=VARIANCE_TYPES, default=None,
                           help="the reverse process's variance (sampler and L_vlb): fixed_small, fixed_large, or "
                                "learned_range (Nichol & Dhariwal 2021; trained with the hybrid objective)")
        group.add_argument("--vlb_weight", type=float, default=None,
                           help="lambda of the hybrid objective L_simple + lambda * L_vlb (learned_range only; "
                                "default 0.001)")
        group.add_argument("--snr_gamma", type=float, default=None,
                           help="Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5.0; unset: plain MSE")

    # ------------------------------------------------------------------ model, pipeline
    def build_model(self, model_config, channels, sample_size):
        """A ``UNet2DModel`` (and the family's ``DDPMScheduler``) from a flat config. ``num_classes`` K > 0 makes it
        class-conditional (K + 1 class embeddings); ``class_names`` (K names, default ``"0" .. "K-1"``) are kept for
        ``make_pipeline``. ``source_size`` goes into the UNet config as ``_source_size`` (``SOURCE_SIZE_KEY``), for
        samples at the data's own size; the bound still scores the whole square."""
        network = {k: v for k, v in model_config.items()
                   if k not in (*SCHEDULER_KEYS, "num_classes", "class_names", "source_size")}
        num_classes = int(model_config.get("num_classes") or 0)
        names = model_config.get("class_names")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {num_classes}")
        if names and len(names) != num_classes:
            raise ValueError(f"class_names holds {len(names)} names but num_classes is {num_classes}; expected one "
                             f"name per class")
        self.scheduler = build_scheduler({k: v for k, v in model_config.items() if k in SCHEDULER_KEYS})
        self._tables = {}
        self.model_class_names = ([str(name) for name in names] if names else
                                  [str(index) for index in range(num_classes)]) if num_classes else None
        unet = build_unet(network, channels, sample_size,
                          learned_variance=self.scheduler.config.variance_type == "learned_range",
                          num_classes=num_classes)
        if model_config.get("source_size") is not None:
            SourceRegion(sample_size, model_config["source_size"])  # refuses a size that does not fit the square
            unet.register_to_config(**{SOURCE_SIZE_KEY: [int(v) for v in model_config["source_size"]]})
        return unet

    def make_pipeline(self, model):
        """A stock ``DDPMPipeline``, or a ``ClassConditionalDDPMPipeline`` (with the class names) for a
        class-conditional network."""
        if self.num_classes(model):
            return ClassConditionalDDPMPipeline(unet=model, scheduler=self._require_scheduler(),
                                                class_names=self._class_names_for(model))
        return DDPMPipeline(unet=model, scheduler=self._require_scheduler())

    def model_of(self, pipeline):
        self.scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self._tables = {}
        self.model_class_names = self.class_names(pipeline)
        return pipeline.unet

    def _class_names_for(self, model) -> list[str]:
        names = self.model_class_names
        if names is None or len(names) != self.num_classes(model):
            return [str(index) for index in range(self.num_classes(model))]
        return list(names)

    def num_classes(self, model):
        """K: the UNet's class embeddings less the null class (0: unconditional)."""
        embeddings = getattr(model.config, "num_class_embeds", None)
        return int(embeddings) - 1 if embeddings else 0

    def class_names(self, pipeline):
        """The class names of a ``ClassConditionalDDPMPipeline`` (its config); None for a ``DDPMPipeline``."""
        if not self.num_classes(pipeline.unet):
            return None
        names = getattr(pipeline.config, "class_names", None)
        return list(names) if names else [str(index) for index in range(self.num_classes(pipeline.unet))]

    def _require_scheduler(self) -> DDPMScheduler:
        if self.scheduler is None:
            raise ValueError("the DDPM family has no noise schedule yet: call build_model or model_of first")
        return self.scheduler

    def tables(self, device: torch.device) -> DiffusionTables:
        key = str(device)
        if key not in self._tables:
            self._tables[key] = DiffusionTables(self._require_scheduler(), device)
        return self._tables[key]

    # ------------------------------------------------------------------ objective
    def loss(self, model, images, step, generator, config, class_labels=None):
        x0 = uint8_to_unit_interval(images)
        loss, term_nats, logs = self.diffusion_objective(model, x0, generator, config, class_labels)
        with torch.no_grad():
            # Unbiased one-timestep estimate of L_vlb per image: t ~ Uniform{0..T-1}, importance weight T.
            tables = self.tables(images.device)
            nats = prior_nats(tables, x0) + tables.num_timesteps * term_nats
            source_shape = getattr(config, "source_shape", None)  # the data's own C, H, W (set by the loop)
            num_dims = math.prod(source_shape) if source_shape else x0[0].numel()
            bits_per_dim = nats.mean() / (num_dims * math.log(2.0))
        return loss, {"bits_per_dim": bits_per_dim, **logs}

    def diffusion_objective(self, model, x0, generator, config, class_labels=None, decoder="discretized"):
        """The diffusion's training objective on data ``x0`` (images in [-1, 1], or a latent diffusion's scaled
        latents with ``decoder="continuous"``): the simple loss at one uniform timestep per sample (Min-SNR weighted
        with ``config.snr_gamma``), plus the hybrid L_vlb term for learned variances. Returns ``(loss, term_nats,
        logs)``: ``term_nats`` is each sample's L_vlb term at its timestep (nats, detached), which ``T *
        term_nats + L_T`` turns into an unbiased estimate of L_vlb."""
        device = x0.device
        tables = self.tables(device)
        batch = x0.shape[0]
        t = torch.randint(0, tables.num_timesteps, (batch,), generator=generator, device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        x_t = add_noise(tables, x0, noise, t)
        output = model(x_t, t, class_labels=class_labels).sample
        target = training_target(tables, x0, noise, t)
        prediction, _ = split_output(tables, output.float())
        mse = (prediction - target).pow(2).flatten(1).mean(1)
        gamma = getattr(config, "snr_gamma", None)
        if gamma:
            snr = compute_snr(types.SimpleNamespace(alphas_cumprod=tables.alphas_cumprod), t)
            clipped = torch.clamp(snr, max=gamma)
            if tables.prediction_type == "epsilon":
                weight = clipped / snr
            elif tables.prediction_type == "v_prediction":
                weight = clipped / (snr + 1.0)
            else:
                weight = clipped
            loss = (weight * mse).mean()
        else:
            loss = mse.mean()
        logs = {"mse": mse.mean().detach()}
        if tables.learned_variance:
            # L_vlb = T * E_t[L_t]: this timestep's term, weighted by T, per dimension; the mean's gradient stopped
            term_nats = vlb_term_nats(tables, x0, x_t, t, output, stop_mean_gradient=True, decoder=decoder)
            vlb_per_dim = term_nats / x0[0].numel()
            weight = getattr(config, "vlb_weight", None)
            loss = loss + (0.001 if weight is None else weight) * tables.num_timesteps * vlb_per_dim.mean()
            logs["vlb_term_nats_per_dim"] = vlb_per_dim.mean().detach()
            term_nats = term_nats.detach()  # the same term the log needs: not computed twice
        else:
            with torch.no_grad():
                term_nats = vlb_term_nats(tables, x0, x_t, t, output.detach(), decoder=decoder)
        return loss, term_nats, logs

    def likelihood_of(self, model):
        return {"name": "discretized_gaussian_decoder", "data": "8-bit"}

    def bounds(self, model, images, importance_samples, generator, class_labels=None):
        """L_vlb per image: of ``-log p(x | y)`` for class indices ``class_labels``, of ``-log p(x)`` for an
        unconditional network or, given ``None``, the null class of a conditional one."""
        scheduler = self._require_scheduler()
        num_classes = self.num_classes(model)
        if num_classes == 0 and class_labels is not None:
            raise ValueError("class_labels were given, but this DDPM was built without classes (its UNet has no "
                             "class embeddings); build it with num_classes in the model config")
        if num_classes and class_labels is None:
            class_labels = torch.full((images.shape[0],), num_classes, dtype=torch.int64, device=images.device)
        elif class_labels is not None:
            class_labels = class_labels.to(device=images.device, dtype=torch.int64)
        estimate = variational_bound(model, scheduler, images, importance_samples, generator,
                                     tables=self.tables(images.device), class_labels=class_labels)
        return Bounds(estimate.nats_per_image, estimate.nats_per_image)

    def bound_estimator(self, model, importance_samples):
        T = self._require_scheduler().config.num_train_timesteps
        if importance_samples >= T - 1:
            return f"L_vlb with every one of its T = {T} terms summed"
        return (f"L_vlb with L_T and L_0 exact and its {T - 1} reverse-step KL terms from {importance_samples} "
                f"stratified timesteps per image (unbiased; {T - 1} or more sum every term)")

    # ------------------------------------------------------------------ sampling
    def sample_images(self, pipeline, num_images, generator, class_labels=None, crop_to_source=True, **kwargs):
        """PIL images. Options: ``scheduler`` (``ddpm``, ``ddim`` or ``dpm-solver++``; default: the folder's
        DDPM scheduler), ``steps`` (default: T for ddpm, 50 for the others), and ``clip_sample`` /
        ``timestep_spacing`` to override the sampler's settings (defaults: ``SAMPLERS``). The trained network is
        reused; ``pipeline`` itself is left unchanged. A class-conditional pipeline also takes ``class_labels``
        (``ClassConditionalDDPMPipeline``'s; None: the null class), ``guidance_scale`` (classifier-free guidance,
        diffusers' convention) and ``guidance_rescale`` (defaults: the pipeline's); an unconditional one refuses
        them. ``crop_to_source``: the images at the data's own size (``_source_size`` in the UNet config, which
        diffusers' own ``DDPMPipeline`` does not read: the family crops its samples), False: the padded square."""
        self.check_sampling_options(kwargs)
        conditional = self.num_classes(pipeline.unet) > 0
        guidance = {key: kwargs[key] for key in ("guidance_scale", "guidance_rescale") if kwargs.get(key) is not None}
        if not conditional:
            if class_labels is not None:
                class_label_ids(class_labels, None, 0, num_images)  # refuses, in the words every family uses
            if guidance:
                given = ", ".join(f"{key}={value!r}" for key, value in guidance.items())
                raise ValueError(f"{given} was given, but this DDPM was trained without class labels; "
                                 f"classifier-free guidance needs a model trained with --class_conditional")
        config = pipeline.scheduler.config
        name, steps, scheduler_class, extra = sampler_settings(config, kwargs)
        scheduler = scheduler_class.from_config(config, **extra)
        unet = pipeline.unet
        if config.variance_type == "learned_range" and name != "ddpm":
            # DDIM and DPM-Solver++ use the prediction only (DPM-Solver's own split assumes 3 channels)
            unet, scheduler = _PredictionOnly(unet), scheduler_class.from_config(
                {**config, "variance_type": None}, **extra)
        if conditional:
            sampler = ClassConditionalDDPMPipeline(unet=unet, scheduler=scheduler,
                                                   class_names=self.class_names(pipeline))
            call = {"class_labels": class_labels, "crop_to_source": crop_to_source, **guidance}
        else:
            sampler, call = DDPMPipeline(unet=unet, scheduler=scheduler), {}
        sampler.set_progress_bar_config(**getattr(pipeline, "_progress_bar_config", {}))
        images = sampler(batch_size=num_images, generator=generator, num_inference_steps=steps, **call).images
        source_size = pipeline.unet.config.get(SOURCE_SIZE_KEY)
        if conditional or not crop_to_source or source_size is None:
            return images
        region = SourceRegion(pipeline.unet.config.sample_size, source_size)  # where the data layer put the images
        return [image.crop((region.left, region.top, region.left + region.width, region.top + region.height))
                for image in images]


def sampler_settings(config, options: dict, clip_sample: bool | None = None):
    """``(name, steps, scheduler_class, settings)`` of the sampling options ``scheduler``, ``steps``, ``clip_sample``
    and ``timestep_spacing`` over a folder's scheduler ``config``: the ``SAMPLERS`` entry (default ``ddpm``), the
    steps (default: ``default_inference_steps``, the pipelines' own: T for ddpm, else 50 and fewer than T;
    checked against T) and the settings ``from_config`` takes.
    ``clip_sample`` replaces the sampler's own default (the latent diffusion: its folder's, off)."""
    name = options.get("scheduler") or "ddpm"
    if name not in SAMPLERS:
        raise ValueError(f"scheduler must be one of {sorted(SAMPLERS)}, got {name!r}")
    scheduler_class, settings = SAMPLERS[name]
    steps = options.get("steps") or default_inference_steps(config.num_train_timesteps, scheduler_class)
    if not 1 <= steps <= config.num_train_timesteps:
        raise ValueError(f"steps must be in [1, {config.num_train_timesteps}], got {steps}")
    settings = {**settings, **({} if clip_sample is None else {"clip_sample": clip_sample}),
                **{key: options[key] for key in ("clip_sample", "timestep_spacing") if options.get(key) is not None}}
    if scheduler_class is DPMSolverMultistepScheduler and "clip_sample" in settings:
        settings.update(_dpm_solver_clipping(settings.pop("clip_sample")))
    return name, steps, scheduler_class, settings


class _PredictionOnly(torch.nn.Module):
    """A learned-variance UNet seen by a sampler that has no use for the variance: its forward returns the
    prediction channels only. Shares the UNet's weights, config, dtype and device."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.config = unet.config

    @property
    def dtype(self):
        return self.unet.dtype

    @property
    def device(self):
        return self.unet.device

    def forward(self, sample, timestep, *args, **kwargs):
        output = self.unet(sample, timestep, *args, **kwargs)
        output.sample = output.sample[:, : self.config.in_channels]
        return output
