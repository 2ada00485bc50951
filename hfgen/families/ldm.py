"""The latent diffusion family: a DDPM prior (diffusers' ``UNet2DModel`` + ``DDPMScheduler``) over the latents of a
frozen VAE with a spatial latent, trained in two stages as Stable Diffusion is (``hfgen train vae --preset
small-spatial``, then ``hfgen train ldm --vae DIR``), with a likelihood bound in the field's units.

Objective: each step encodes the batch with the frozen VAE, draws ``z ~ q(z | x)`` (a sample, not the mean),
scales it by the VAE's ``scaling_factor`` s and trains the diffusion on ``s z`` exactly as the DDPM family trains
on pixels (``DDPMFamily.diffusion_objective``: simple loss, Min-SNR, hybrid L_vlb for learned variances), the decoder
term ``L_0`` a Gaussian density since latents are continuous.

Bound (the ELBO of a VAE whose prior is the diffusion; LSGM, Vahdat et al. 2021, eq. 2), per image in nats::

    -log p(x) <= E_q(z|x)[ -log p(x | z) + log q(z | x) - log p(z) ]
    -log p(z)  = -log p_s(s z) - d log s  <=  L_vlb(s z) - d log s

``L_vlb(s z)`` is the diffusion's bound on its density of scaled latents (``continuous_variational_bound``:
``L_T`` and ``L_0`` exact, K stratified timesteps for the KL terms) and ``d log s`` the log-Jacobian of the scaling
(d latent dimensions). One posterior sample per image estimates the expectation, unbiased, so the standard error
over images includes it. There is no importance-weighted form (L_vlb is a stochastic bound on ``-log p(z)``, and a
log-mean-exp of stochastic bounds is not a bound). Beside it ``bounds`` reports, with the same z, the same VAE's
ELBO with its own N(0, I) prior and the prior's gain (their difference, paired per image).

A class-conditional prior (``--class_conditional``) conditions the UNet only (the VAE stays unconditional): the
bound given y replaces ``p(z)`` by ``p(z | y)``; the null class gives ``-log p(x)``.
"""

from __future__ import annotations

import argparse
import math

import torch

from ..models.ddpm import continuous_variational_bound, prior_nats
from ..models.vae import VAEModel, standard_normal_log_density
from ..pipelines import LatentDiffusionPipeline, VAEPipeline
from ..pipelines.pipeline_ldm import check_first_stage, check_latent_components
from .base import Bounds, ModelFamily, Preset
from .ddpm import DDPMFamily, sampler_settings

LDM_PRESETS = {
    "tiny": Preset(
        description="seconds on a CPU; for tests (T = 100)",
        model=dict(block_out_channels=[16, 32], layers_per_block=1, attention_resolutions=[], norm_num_groups=8,
                   dropout=0.0, num_train_timesteps=100, beta_schedule="linear", prediction_type="v_prediction",
                   variance_type="fixed_large", clip_sample=False),
        training=dict(
            train_batch_size=16, learning_rate=2e-3, max_train_steps=20, lr_warmup_steps=2, eval_steps=0,
            sample_steps=0, checkpointing_steps=0, logging_steps=5, eval_max_samples=32, final_eval_max_samples=32,
            num_sample_images=4, ema_decay=0.9,
        ),
    ),
    "small": Preset(
        # v-prediction with beta_t variances: with the zero-initialised output a new prior is exactly N(0, I) over
        # the scaled latents s z, and fixed_large is the true reverse variance of N(0, I) data; on validation after
        # 6 minutes over the same VAE, bound 3.279 against 3.555 for epsilon with fixed_small, whose untrained small-t
        # terms cost more than the N(0, I) prior (docs/ldm.md)
        description="minutes on two CPU cores over a small-spatial VAE's 4x8x8 latents (T = 1000)",
        model=dict(block_out_channels=[64, 128, 128], layers_per_block=1, attention_resolutions=[4],
                   norm_num_groups=16, dropout=0.0, num_train_timesteps=1000, beta_schedule="linear",
                   prediction_type="v_prediction", variance_type="fixed_large", clip_sample=False),
        training=dict(
            train_batch_size=64, learning_rate=1e-3, max_train_steps=6000, max_train_minutes=6.0,
            lr_warmup_steps=100, eval_steps=500, sample_steps=0, checkpointing_steps=500, logging_steps=20,
            eval_max_samples=500, final_eval_max_samples=1000, final_importance_samples=32, num_sample_images=16,
            ema_decay=0.999,
        ),
    ),
}


class LatentDiffusionFamily(DDPMFamily):
    name = "ldm"
    summary = "latent diffusion: a DDPM prior over a frozen VAE's latents (--vae DIR)"
    pipeline_class = LatentDiffusionPipeline
    presets = LDM_PRESETS
    model_arguments = DDPMFamily.model_arguments + ("clip_sample",)
    folder_arguments = ("vae",)
    # the bound scores what the frozen VAE scores (its own source_size, see scored_shape), and the pipeline crops
    # samples to that size: build_model keeps the loop's source_size out of the latent UNet's config
    has_importance_weighted_bound = False
    importance_samples_in_batch = False
    # 16 stratified timesteps for validation and by default, as the DDPM (one timestep per image puts the small-t KL
    # terms, where L_vlb's mass is, into a few images: the mean over a validation subset then mostly falls below
    # the bound, 3.27 against 3.55 with 16 timesteps on the same model)

    def __init__(self):
        super().__init__()
        self.vae: VAEModel | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        group = parser.add_argument_group("latent diffusion")
        group.add_argument("--vae", default=None,
                           help="the frozen first stage: a VAE pipeline folder (or Hub repo id) with a spatial latent "
                                "and a scaling_factor, e.g. written by `hfgen train vae --preset small-spatial`")
        group.add_argument("--clip_sample", action=argparse.BooleanOptionalAction, default=None,
                           help="clip the sampler's x_0 predictions (default off: latents are not in [-1, 1])")

    # ------------------------------------------------------------------ the frozen first stage
    def configure(self, cfg):
        """Load ``--vae`` and check that it can carry a diffusion prior and that the data are what it was trained on."""
        if not getattr(cfg, "vae", None):
            raise ValueError("--vae is required: the folder of a VAE with a spatial latent (hfgen train vae --preset "
                             "small-spatial --output_dir DIR), whose latents the diffusion prior learns")
        self.set_vae(load_vae(cfg.vae))
        config = self.vae.config
        if cfg.sample_size != config.sample_size or (cfg.channels and cfg.channels != config.in_channels):
            raise ValueError(f"the VAE at {cfg.vae} was trained on {config.in_channels}x{config.sample_size}x"
                             f"{config.sample_size} images; got --sample_size {cfg.sample_size}"
                             + (f" and --channels {cfg.channels}" if cfg.channels else "")
                             + "; expected the VAE's own")

    def set_vae(self, vae: VAEModel) -> None:
        """The frozen first stage: no gradients, evaluation mode."""
        vae.requires_grad_(False).eval()
        self.vae = vae

    def _require_vae(self, device=None) -> VAEModel:
        if self.vae is None:
            raise ValueError("the latent diffusion family has no VAE yet: configure it with --vae, or load a folder")
        if device is not None and self.vae.device != torch.device(device):
            self.vae.to(device)
        return self.vae

    def build_model(self, model_config, channels, sample_size):
        """A ``UNet2DModel`` over the VAE's latents (its channels and size, not the images'), and the scheduler.
        ``channels`` and ``sample_size`` (the images') must be the VAE's."""
        vae = self._require_vae()
        if (channels, sample_size) != (vae.config.in_channels, vae.config.sample_size):
            raise ValueError(f"the data are {channels}x{sample_size}x{sample_size} images but the VAE was trained on "
                             f"{vae.config.in_channels}x{vae.config.sample_size}x{vae.config.sample_size}; expected "
                             f"the VAE's own")
        # the images' source_size is the VAE's (its pipeline crops to it), not the latent UNet's
        config = {key: value for key, value in model_config.items() if key != "source_size"}
        config.setdefault("clip_sample", False)
        latent_channels, latent_size, _ = vae.latent_shape
        unet = super().build_model(config, latent_channels, latent_size)
        check_latent_components(vae, unet)
        # The output convolution starts at zero. With v-prediction a zero output is the exact denoiser of N(0, I)
        # data (E[v | x_t] = sqrt(abar) E[eps | x_t] - sqrt(1 - abar) E[x_0 | x_t] = 0), so a new prior is N(0, I)
        # over the scaled latents s z, which is N(0, s^-2 I) over z: the VAE's own N(0, I) prior only when the
        # scaling factor s is 1 (at s = 0.8 its "gain" over the VAE's prior starts at 0.058 nats per latent
        # dimension of moment matching). Training learns the latents' departure from it: LSGM's mixed score, with a
        # stock UNet2DModel (guided diffusion zero-initialises this layer too).
        torch.nn.init.zeros_(unet.conv_out.weight)
        torch.nn.init.zeros_(unet.conv_out.bias)
        return unet

    def make_pipeline(self, model):
        return LatentDiffusionPipeline(vae=self._require_vae(), unet=model, scheduler=self._require_scheduler(),
                                       class_names=self._class_names_for(model) if self.num_classes(model) else None)

    def model_of(self, pipeline):
        self.set_vae(pipeline.vae)
        return super().model_of(pipeline)

    def sample_kind(self, model_config, options):
        """Latents drawn by the diffusion prior, decoded by the VAE's mean of p(x | z) (the pipeline's
        ``decode_latents``; a VAE with pixel passes: its greedy chain)."""
        passes = int(self.vae.config.pixel_passes) if self.vae is not None else 1
        return "greedy" if passes > 1 else "mean"

    def image_shape(self, model):
        """The VAE's images: the UNet's own shape is the latent's."""
        return ModelFamily.image_shape(self, self._require_vae())

    def scored_shape(self, model):
        """What the frozen VAE's likelihood scores: the data's own pixels (its ``source_size``)."""
        return ModelFamily.scored_shape(self, self._require_vae())

    def likelihood_of(self, model):
        return {"name": f"{self._require_vae().config.likelihood} decoder of a VAE with a latent diffusion prior",
                "data": "8-bit" if self.vae.config.likelihood != "bernoulli" else "dynamically binarized"}

    # ------------------------------------------------------------------ latents
    def _encode(self, images: torch.Tensor, generator: torch.Generator):
        """The VAE's view of ``uint8`` images: (prepared batch, posterior q(z | x))."""
        vae = self._require_vae(images.device)
        batch = vae.pixel_likelihood.prepare(vae.to_uint8(images), generator)
        posterior = vae.encode(batch.model_input.to(vae.dtype)).latent_dist
        return batch, posterior

    #: the per-image figures ``bounds`` gives beside the bound (``Bounds.terms``), nats per image
    BOUND_TERMS = ("vae_standard_normal_prior_elbo", "prior_gain", "reconstruction", "latent_prior",
                   "posterior_log_density")

    def bound_terms(self, model):
        return sorted(self.BOUND_TERMS)

    #: images of each training batch whose reconstruction term enters the logged ``bits_per_dim`` (a decoder pass
    #: over the whole batch would cost about a fifth of the step for a log)
    reconstruction_log_images = 8

    def loss(self, model, images, step, generator, config, class_labels=None):
        with torch.no_grad():
            batch, posterior = self._encode(images, generator)
            z = posterior.sample(generator=generator)
            scale = self.vae.config.scaling_factor
        loss, term_nats, logs = self.diffusion_objective(model, scale * z, generator, config, class_labels,
                                                         decoder="continuous")
        with torch.no_grad():
            # Unbiased estimates, per image: of -log p(z) <= L_vlb(s z) - d log s at this step's timesteps
            # (importance weight T), and of the reconstruction term from the first few images of the batch; with
            # log q(z | x) they make an unbiased, noisy estimate of the bound. The evaluation gives the figure to
            # report.
            tables = self.tables(images.device)
            latent_dims = z[0].numel()
            prior = prior_nats(tables, scale * z) + tables.num_timesteps * term_nats - latent_dims * math.log(scale)
            few = slice(0, self.reconstruction_log_images)
            reconstruction = -self.vae.log_prob(self.vae.decode_parameters(z[few]), batch.target[few])
            bound = reconstruction.mean() + (prior - posterior.nll(z)).mean()
            logs["latent_prior_nats_per_dim"] = prior.mean() / latent_dims
            logs["bits_per_dim"] = bound / (self.num_dims(model) * math.log(2.0))
        return loss, logs

    @torch.no_grad()
    def bounds(self, model, images, importance_samples, generator, class_labels=None):
        """The latent diffusion's ELBO on ``-log p(x)`` (``-log p(x | y)`` given class indices) per image, nats, with
        ``importance_samples`` stratified timesteps for L_vlb and one posterior sample; ``terms`` holds, for the same
        z, the VAE's own N(0, I)-prior ELBO, the prior's gain over it and the parts of the bound."""
        num_classes = self.num_classes(model)
        if num_classes == 0 and class_labels is not None:
            raise ValueError("class_labels were given, but this latent diffusion prior was trained without classes")
        if num_classes and class_labels is None:
            class_labels = torch.full((images.shape[0],), num_classes, dtype=torch.int64, device=images.device)
        batch, posterior = self._encode(images, generator)
        z = posterior.sample(generator=generator)
        vae = self.vae
        reconstruction_nll = -vae.log_prob(vae.decode_parameters(z), batch.target)
        log_q = -posterior.nll(z)
        latent_prior_nll = self.latent_prior_nats(model, z, float(vae.config.scaling_factor), importance_samples,
                                                  generator, class_labels)
        standard_normal_nll = -standard_normal_log_density(z)
        bound = reconstruction_nll + log_q + latent_prior_nll
        vae_elbo = reconstruction_nll + log_q + standard_normal_nll
        terms = {"vae_standard_normal_prior_elbo": vae_elbo, "prior_gain": vae_elbo - bound,
                 "reconstruction": reconstruction_nll, "latent_prior": latent_prior_nll, "posterior_log_density": log_q}
        return Bounds(bound, bound, terms=terms)

    def bound_estimator(self, model, importance_samples):
        return f"one posterior sample z per image; the prior's {super().bound_estimator(model, importance_samples)}"

    def latent_prior_nats(self, model, z: torch.Tensor, scaling_factor: float, timesteps: int,
                          generator: torch.Generator, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """An upper bound on ``-log p(z)`` per latent (nats) under the diffusion prior over scaled latents:
        ``L_vlb(s z) - d log s``, the log-Jacobian of ``z -> s z`` over its d dimensions counted, ``timesteps``
        stratified timesteps for L_vlb."""
        estimate = continuous_variational_bound(model, self._require_scheduler(), scaling_factor * z, timesteps,
                                                generator, tables=self.tables(z.device), class_labels=class_labels)
        return estimate.nats_per_image - z[0].numel() * math.log(scaling_factor)

    # ------------------------------------------------------------------ sampling
    def sample_images(self, pipeline, num_images, generator, class_labels=None, crop_to_source=True, **kwargs):
        """PIL images through a ``LatentDiffusionPipeline`` on the folder's networks with the sampler asked for
        (``scheduler``: ``ddpm``, ``ddim`` or ``dpm-solver++``; ``steps``; ``clip_sample``, ``timestep_spacing``;
        ``guidance_scale`` and ``guidance_rescale`` for a class-conditional prior). ``pipeline`` is left unchanged.
        ``crop_to_source``: the images at the data's own size (the VAE's ``source_size``), False: the padded square."""
        self.check_sampling_options(kwargs)
        guidance = {key: kwargs[key] for key in ("guidance_scale", "guidance_rescale") if kwargs.get(key) is not None}
        if not self.num_classes(pipeline.unet) and guidance:
            raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in guidance.items())} was given, but this latent "
                             f"diffusion prior was trained without class labels; classifier-free guidance needs a "
                             f"prior trained with --class_conditional")
        config = pipeline.scheduler.config
        # latents are not images: no clipping unless asked for (DPM-Solver++'s default clips x_0 to [-1, 1])
        name, steps, scheduler_class, extra = sampler_settings(config, kwargs, clip_sample=bool(config.clip_sample))
        variance = {} if name == "ddpm" else {"variance_type": None}
        scheduler = scheduler_class.from_config({**config, **variance}, **extra)
        sampler = LatentDiffusionPipeline(vae=pipeline.vae, unet=pipeline.unet, scheduler=scheduler,
                                          class_names=pipeline.config.class_names)
        sampler.set_progress_bar_config(**getattr(pipeline, "_progress_bar_config", {}))
        return sampler(batch_size=num_images, class_labels=class_labels, generator=generator,
                       num_inference_steps=steps, crop_to_source=crop_to_source, **guidance).images


def load_vae(path_or_repo_id: str) -> VAEModel:
    """The ``VAEModel`` of a VAE pipeline folder or Hub repo id, refused with a message naming what was expected when
    the folder holds another family's pipeline or a VAE without a spatial latent or ``scaling_factor``."""
    from ..remote_code import pipeline_class_name, read_model_index, resolve_folder

    folder = resolve_folder(path_or_repo_id)
    found = pipeline_class_name(read_model_index(folder))
    if found != VAEPipeline.__name__:
        raise ValueError(f"{path_or_repo_id} holds a {found} (model_index.json); --vae expects a VAEPipeline folder "
                         f"(hfgen train vae --preset small-spatial)")
    vae = VAEPipeline.from_pretrained(folder).vae
    try:
        check_first_stage(vae)
    except ValueError as error:
        raise ValueError(f"{path_or_repo_id}: {error}") from None
    return vae
