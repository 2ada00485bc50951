"""The latent diffusion family: a DDPM prior (diffusers' ``UNet2DModel`` + ``DDPMScheduler``) over the latents of a
frozen first stage, trained in two stages as Stable Diffusion is, with a likelihood bound in the field's units.
The first stage is one of two kinds:

- a VAE with a spatial latent (``hfgen train vae --preset small-spatial``, then ``hfgen train ldm --vae DIR``): the
  diffusion models its latent scaled by the VAE's ``scaling_factor`` s, ``u = s z``;
- a hierarchical VAE (``hfgen train hvae``, then ``hfgen train ldm --vae DIR [--diffused_groups G]``), LSGM's join:
  the diffusion replaces the prior of its top G latent groups (all at the top resolution), modelling their prior
  noise ``u_i = (z_i - mu_p,i) / sigma_p,i``, stacked along channels; the lower groups keep their conditionals
  ``p(z_i | z_<i)`` and the decoder its pixel passes. A new prior (zero output layer, v-prediction) is N(0, I) over u,
  which is the hierarchical VAE's own prior exactly: the join starts at the hierarchical VAE's bound.

Objective: each step encodes the batch with the frozen first stage, draws ``z ~ q(z | x)`` (a sample, not the mean)
and trains the diffusion on u exactly as the DDPM family trains on pixels (``DDPMFamily.diffusion_objective``:
simple loss, Min-SNR, hybrid L_vlb for learned variances), the decoder term ``L_0`` a Gaussian density since
latents are continuous.

Bound (the ELBO with the diffusion as the prior of the diffused latents; LSGM, Vahdat et al. 2021, eq. 2), per
image in nats, the same z in every term::

    -log p(x) <= E_q[ -log p(x | z) + sum_lower KL(q(z_i | z_<i, x) || p(z_i | z_<i)) + log q(z_d | x) - log p(z_d) ]
    -log p(z_d) = -log p_u(u) - log |det du/dz_d|  <=  L_vlb(u) - log |det du/dz_d|

with z_d the diffused latent (the VAE's z; the hierarchical VAE's top groups, the lower groups' KL analytic given
the sampled groups above; a VAE has none). ``L_vlb(u)`` is the diffusion's bound on its density of u
(``continuous_variational_bound``: ``L_T`` and ``L_0`` exact, K stratified timesteps for the KL terms) and the
log-Jacobian is ``d log s`` for the scaling (d latent dimensions), ``-sum log sigma_p`` for the prior noise. One
posterior sample per image estimates the expectation, unbiased, so the standard error over images includes it.
There is no importance-weighted form (L_vlb is a stochastic bound on ``-log p(z_d)``, and a log-mean-exp of
stochastic bounds is not a bound). Beside it ``bounds`` reports, with the same z, the first stage's own ELBO (the
VAE's with N(0, I); the hierarchical VAE's with its own priors) and the prior's gain (their difference, paired per
image).

End-to-end training (``--train_first_stage``, a hierarchical VAE first stage; LSGM's end-to-end stage): the first
stage is trained together with the prior, on the bound itself. Each step draws one z per image with gradients
(``HierarchicalVAEModel.prior_noise_terms``) and minimises, per image and divided by the 784 pixel dimensions,
``-log p(x | z) + sum_lower KL + log q(z_d | x) + L_T(u) + L_0(u) + (T - 1) L_t(u) + sum log sigma_p`` with t
uniform in 1 .. T-1: an unbiased estimate of the bound above whose gradient reaches the encoder, the decoder, the
lower groups and the UNet (the likelihood weighting of every diffusion term, LSGM's choice for the encoder; the
prior's KL is the diffusion's cross-entropy instead of the Gaussian's). The first stage is then part of the trained
model: it shares the optimiser, the EMA weights and the checkpoints with the UNet, and the folder holds it as
trained.

A class-conditional prior (``--class_conditional``) conditions the UNet; a VAE first stage stays unconditional, a
class-conditional hierarchical VAE (the same classes) takes the class too, for its lower groups, its decoder and the
prior noise it defines: the bound given y replaces every term by its conditional on y; the null class (of both
stages, dropped together during training) gives ``-log p(x)``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from ..models.ddpm import add_noise, continuous_variational_bound, prior_nats, vlb_term_nats
from ..models.hvae import HierarchicalVAEModel
from ..models.vae import VAEModel, standard_normal_log_density
from ..pipelines import HierarchicalVAEPipeline, LatentDiffusionPipeline, VAEPipeline
from ..pipelines.pipeline_ldm import check_first_stage, diffused_groups, diffused_latent_shape, is_hierarchical
from .base import Bounds, ModelFamily, Preset, unwrap_model
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


@dataclass
class FirstStageDraw:
    """One posterior sample z of a batch as the diffusion prior sees it; per-image tensors ``(batch,)`` in nats.

    latents: u, what the diffusion models (``s z`` for a VAE, the top groups' prior noise for a hierarchical VAE).
    log_jacobian: ``log |det du/dz_d|`` of the diffused latent z_d.
    posterior_log_density: ``log q(z_d | x)`` at the sample.
    own_prior_nll: ``-log p(z_d)`` under the first stage's own prior (N(0, I); the hierarchical VAE's priors).
    reconstruction_nll, lower_kl: ``-log p(x | z)`` and the lower groups' KL (0 for a VAE) for the same z; None
        unless asked for (a decoder pass).
    """

    latents: torch.Tensor
    log_jacobian: torch.Tensor
    posterior_log_density: torch.Tensor
    own_prior_nll: torch.Tensor
    reconstruction_nll: torch.Tensor | None = None
    lower_kl: torch.Tensor | None = None


FirstStage = VAEModel | HierarchicalVAEModel


class LatentDiffusionFamily(DDPMFamily):
    name = "ldm"
    summary = "latent diffusion: a DDPM prior over a frozen VAE's or hierarchical VAE's latents (--vae DIR)"
    pipeline_class = LatentDiffusionPipeline
    presets = LDM_PRESETS
    model_arguments = DDPMFamily.model_arguments + ("clip_sample", "diffused_groups")
    folder_arguments = ("vae",)
    # the bound scores what the frozen VAE scores (its own source_size, see scored_shape), and the pipeline crops
    # samples to that size: build_model keeps the loop's source_size out of the latent UNet's config
    has_importance_weighted_bound = False
    importance_samples_in_batch = False
    # 16 stratified timesteps for validation and by default, as the DDPM (one timestep per image puts the small-t KL
    # terms, where L_vlb's mass is, into a few images: the mean over a validation subset then mostly falls below
    # the bound, 3.27 against 3.55 with 16 timesteps on the same model)

    #: the name under which the UNet carries a first stage trained with it (``--train_first_stage``), so that the
    #: loop's optimiser, EMA, gradient clipping, checkpoints and process groups see both networks as one model
    TRAINED_FIRST_STAGE = "first_stage"

    def __init__(self):
        super().__init__()
        self.vae: FirstStage | None = None
        self.train_first_stage = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        group = parser.add_argument_group("latent diffusion")
        group.add_argument("--vae", default=None,
                           help="the frozen first stage, a pipeline folder (or Hub repo id): a VAE with a spatial "
                                "latent and a scaling_factor (hfgen train vae --preset small-spatial), or a "
                                "hierarchical VAE (hfgen train hvae), whose top latent groups' prior the diffusion "
                                "replaces")
        group.add_argument("--diffused_groups", type=int, default=None,
                           help="a hierarchical VAE first stage: how many of its top latent groups the diffusion "
                                "models (default: those at its top resolution; more are resampled to one grid, "
                                "up to all of them)")
        group.add_argument("--train_first_stage", action="store_true",
                           help="LSGM's end-to-end training: train the hierarchical VAE first stage with the prior, "
                                "on the bound (its top groups' Gaussian prior replaced by the diffusion); the folder "
                                "holds the first stage as trained. Default: the first stage is frozen")
        group.add_argument("--clip_sample", action=argparse.BooleanOptionalAction, default=None,
                           help="clip the sampler's x_0 predictions (default off: latents are not in [-1, 1])")

    # ------------------------------------------------------------------ the frozen first stage
    def configure(self, cfg):
        """Load ``--vae`` and check that it can carry a diffusion prior and that the data are what it was trained on."""
        if not getattr(cfg, "vae", None):
            raise ValueError("--vae is required: the folder of a VAE with a spatial latent (hfgen train vae --preset "
                             "small-spatial --output_dir DIR) or of a hierarchical VAE (hfgen train hvae), whose "
                             "latents the diffusion prior learns")
        self.train_first_stage = bool(getattr(cfg, "train_first_stage", False))
        self.set_vae(load_vae(cfg.vae))
        if self.train_first_stage and not is_hierarchical(self.vae):
            raise ValueError(f"--train_first_stage trains a hierarchical VAE first stage with its prior; {cfg.vae} is "
                             f"a VAE with one latent, expected a HierarchicalVAEPipeline folder (hfgen train hvae)")
        config = self.vae.config
        if cfg.sample_size != config.sample_size or (cfg.channels and cfg.channels != config.in_channels):
            raise ValueError(f"the first stage at {cfg.vae} was trained on {config.in_channels}x{config.sample_size}x"
                             f"{config.sample_size} images; got --sample_size {cfg.sample_size}"
                             + (f" and --channels {cfg.channels}" if cfg.channels else "")
                             + "; expected the first stage's own")
        first_stage_classes = int(getattr(config, "num_classes", 0) or 0)
        if first_stage_classes and not getattr(cfg, "class_conditional", False):
            raise ValueError(f"the hierarchical VAE at {cfg.vae} is class-conditional ({first_stage_classes} classes): "
                             f"its prior over the top groups depends on the class, so the diffusion prior must too; "
                             f"expected --class_conditional")
        groups = getattr(cfg, "diffused_groups", None)
        if groups is not None:
            if not is_hierarchical(self.vae):
                raise ValueError(f"--diffused_groups {groups} chooses the top latent groups of a hierarchical VAE; "
                                 f"{cfg.vae} is a VAE with one latent")
            self.vae.prior_noise_shape(groups)  # refuses a G the model does not have, by name

    def set_vae(self, vae: FirstStage) -> None:
        """The first stage: frozen (no gradients, evaluation mode), or trained with the prior
        (``--train_first_stage``)."""
        vae.requires_grad_(self.train_first_stage).train(self.train_first_stage)
        self.vae = vae

    def _require_vae(self, device=None) -> FirstStage:
        if self.vae is None:
            raise ValueError("the latent diffusion family has no first stage yet: configure it with --vae, or load a "
                             "folder")
        if device is not None and self.vae.device != torch.device(device):
            self.vae.to(device)
        return self.vae

    @property
    def hierarchical(self) -> bool:
        """Whether the first stage is a hierarchical VAE."""
        return is_hierarchical(self._require_vae())

    def build_model(self, model_config, channels, sample_size):
        """A ``UNet2DModel`` over the first stage's diffused latents (their channels and size, not the images'), and
        the scheduler. ``channels`` and ``sample_size`` (the images') must be the first stage's."""
        vae = self._require_vae()
        if (channels, sample_size) != (vae.config.in_channels, vae.config.sample_size):
            raise ValueError(f"the data are {channels}x{sample_size}x{sample_size} images but the first stage was "
                             f"trained on {vae.config.in_channels}x{vae.config.sample_size}x{vae.config.sample_size}; "
                             f"expected the first stage's own")
        # the images' source_size is the VAE's (its pipeline crops to it), not the latent UNet's; the number of
        # diffused groups is the UNet's in_channels over the groups' latent channels, not a UNet setting
        config = {key: value for key, value in model_config.items() if key not in ("source_size", "diffused_groups")}
        config.setdefault("clip_sample", False)
        if is_hierarchical(vae):
            classes = int(vae.config.num_classes or 0)
            if classes and int(model_config.get("num_classes") or 0) != classes:
                raise ValueError(f"the hierarchical VAE has {classes} classes but the prior would have "
                                 f"{model_config.get('num_classes') or 0}; expected a prior trained on the same classes "
                                 f"(--class_conditional on the data the hierarchical VAE was trained on)")
            groups = model_config.get("diffused_groups") or vae.top_resolution_groups  # default: the top grid's
            latent_channels, latent_size, _ = vae.prior_noise_shape(groups)
        elif model_config.get("diffused_groups") is not None:
            raise ValueError("diffused_groups chooses the top latent groups of a hierarchical VAE; this first stage is "
                             "a VAE with one latent")
        else:
            latent_channels, latent_size, _ = vae.latent_shape
        unet = super().build_model(config, latent_channels, latent_size)
        diffused_latent_shape(vae, unet)
        # The output convolution starts at zero. With v-prediction a zero output is the exact denoiser of N(0, I)
        # data (E[v | x_t] = sqrt(abar) E[eps | x_t] - sqrt(1 - abar) E[x_0 | x_t] = 0), so a new prior is N(0, I)
        # over u: for a VAE, N(0, s^-2 I) over z, its own N(0, I) prior only when the scaling factor s is 1 (at
        # s = 0.8 its "gain" over the VAE's prior starts at 0.058 nats per latent dimension of moment matching);
        # for a hierarchical VAE, over the prior noise, its own priors exactly. Training learns the latents'
        # departure from it: LSGM's mixed score, with a stock UNet2DModel (guided diffusion zero-initialises this
        # layer too).
        torch.nn.init.zeros_(unet.conv_out.weight)
        torch.nn.init.zeros_(unet.conv_out.bias)
        if self.train_first_stage:
            unet.add_module(self.TRAINED_FIRST_STAGE, vae)
        return unet

    def _unet_alone(self, model):
        """The UNet without a first stage it carries in training (``TRAINED_FIRST_STAGE``): a plain ``UNet2DModel``
        of the same config holding a copy of the UNet's own weights (about 18 MB for the ``small`` prior), which is
        what the pipeline saves and samples with."""
        if self.TRAINED_FIRST_STAGE not in dict(model.named_children()):
            return model
        prefix = self.TRAINED_FIRST_STAGE + "."
        unet = type(model).from_config(model.config).to(device=model.device, dtype=model.dtype)
        unet.load_state_dict({key: value for key, value in model.state_dict().items() if not key.startswith(prefix)})
        return unet.train(model.training)

    def make_pipeline(self, model):
        unet = self._unet_alone(model)
        return LatentDiffusionPipeline(vae=self._require_vae(), unet=unet, scheduler=self._require_scheduler(),
                                       class_names=self._class_names_for(unet) if self.num_classes(unet) else None)

    def model_of(self, pipeline):
        self.set_vae(pipeline.vae)
        return super().model_of(pipeline)

    @property
    def sampling_options(self) -> tuple[str, ...]:
        """The DDPM's, and for a hierarchical VAE first stage its lower groups' ``temperature``,
        ``greedy_passes`` and ``first_stage_guidance_scale``."""
        if self.vae is not None and is_hierarchical(self.vae):
            return DDPMFamily.sampling_options + ("temperature", "greedy_passes", "first_stage_guidance_scale")
        return DDPMFamily.sampling_options

    def sample_kind(self, model_config, options):
        """A VAE first stage: latents drawn by the diffusion prior, decoded by the VAE's mean of p(x | z) (a VAE with
        pixel passes: its greedy chain). A hierarchical VAE, as its own family samples: draws from p(x | z) (pixel
        passes: each drawn given the ones before), or with ``greedy_passes`` the greedy chain."""
        passes = int(self.vae.config.pixel_passes) if self.vae is not None else 1
        if self.vae is not None and is_hierarchical(self.vae) and passes > 1:
            return "greedy" if options.get("greedy_passes") else "draws"
        return "greedy" if passes > 1 else "mean"

    def image_shape(self, model):
        """The first stage's images: the UNet's own shape is the latent's."""
        return ModelFamily.image_shape(self, self._require_vae())

    def scored_shape(self, model):
        """What the frozen first stage's likelihood scores: the data's own pixels (its ``source_size``)."""
        return ModelFamily.scored_shape(self, self._require_vae())

    def likelihood_of(self, model):
        vae = self._require_vae()
        stage = "hierarchical VAE" if is_hierarchical(vae) else "VAE"
        return {"name": f"{vae.config.likelihood} decoder of a {stage} with a latent diffusion prior",
                "data": "8-bit" if vae.config.likelihood != "bernoulli" else "dynamically binarized",
                "first_stage": type(vae).__name__,
                **({"diffused_groups": diffused_groups(vae, model)} if is_hierarchical(vae) else {})}

    # ------------------------------------------------------------------ latents

    def draw_latents(self, model, images: torch.Tensor, generator: torch.Generator, bound_terms: bool = False,
                     class_labels: torch.Tensor | None = None) -> FirstStageDraw:
        """One posterior sample z of ``uint8`` images through the first stage (``FirstStageDraw``; a hierarchical
        VAE's with gradients unless called under ``torch.no_grad``, as ``loss`` and ``bounds`` call it);
        ``bound_terms`` adds ``-log p(x | z)`` and the lower groups' KL for the same z. ``class_labels``: the class
        indices a class-conditional hierarchical VAE encodes and scores with (K, or None: the null class); an
        unconditional first stage does not take them."""
        vae = self._require_vae(images.device)
        if is_hierarchical(vae):
            labels = class_labels if vae.config.num_classes else None
            # with gradients where the caller allows them (end_to_end_loss); loss and bounds call it without
            out = vae.prior_noise_terms(images, diffused_groups(vae, unwrap_model(model)), generator,
                                        bound_terms=bound_terms, class_labels=labels)
            return FirstStageDraw(out.prior_noise, -out.log_prior_scale, out.posterior_log_density,
                                  -out.prior_log_density, out.reconstruction_nll, out.lower_kl)
        batch = vae.pixel_likelihood.prepare(vae.to_uint8(images), generator)
        posterior = vae.encode(batch.model_input.to(vae.dtype)).latent_dist
        z = posterior.sample(generator=generator)
        scale = float(vae.config.scaling_factor)
        reconstruction = lower_kl = None
        if bound_terms:
            reconstruction = -vae.log_prob(vae.decode_parameters(z), batch.target)
            lower_kl = torch.zeros_like(reconstruction)
        log_jacobian = torch.full((z.shape[0],), z[0].numel() * math.log(scale), device=z.device)
        return FirstStageDraw(scale * z, log_jacobian, -posterior.nll(z), -standard_normal_log_density(z),
                              reconstruction, lower_kl)

    #: the per-image figures ``bounds`` gives beside the bound (``Bounds.terms``), nats per image: over a VAE ...
    BOUND_TERMS = ("vae_standard_normal_prior_elbo", "prior_gain", "reconstruction", "latent_prior",
                   "posterior_log_density")
    #: ... and over a hierarchical VAE (its own ELBO; the lower groups' KL; the rest of the diffused top groups)
    HIERARCHICAL_BOUND_TERMS = ("hvae_elbo", "prior_gain", "reconstruction", "lower_groups_kl", "latent_prior",
                                "posterior_log_density")

    def bound_terms(self, model):
        return sorted(self.HIERARCHICAL_BOUND_TERMS if self.hierarchical else self.BOUND_TERMS)

    #: images of each training batch whose reconstruction term enters the logged ``bits_per_dim`` (a decoder pass
    #: over the whole batch would cost about a fifth of the step for a log)
    reconstruction_log_images = 8

    def loss(self, model, images, step, generator, config, class_labels=None):
        if self.train_first_stage:
            return self.end_to_end_loss(model, images, generator, class_labels)
        with torch.no_grad():  # the class (dropped to the null class at the loop's rate) for both stages
            draw = self.draw_latents(model, images, generator, class_labels=class_labels)
        loss, term_nats, logs = self.diffusion_objective(model, draw.latents, generator, config, class_labels,
                                                         decoder="continuous")
        with torch.no_grad():
            # Unbiased estimates, per image: of -log p(z_d) <= L_vlb(u) - log |du/dz_d| at this step's timesteps
            # (importance weight T), and of the reconstruction (and lower groups') terms from the first few images
            # of the batch, drawn again; with log q(z_d | x) they make an unbiased, noisy estimate of the bound. The
            # evaluation gives the figure to report.
            tables = self.tables(images.device)
            latent_dims = draw.latents[0].numel()
            prior = prior_nats(tables, draw.latents) + tables.num_timesteps * term_nats - draw.log_jacobian
            n = self.reconstruction_log_images
            few = self.draw_latents(model, images[:n], generator, bound_terms=True,
                                    class_labels=None if class_labels is None else class_labels[:n])
            rest = (few.reconstruction_nll + few.lower_kl).mean()
            bound = rest + (prior - draw.posterior_log_density).mean()
            logs["latent_prior_nats_per_dim"] = prior.mean() / latent_dims
            logs["bits_per_dim"] = bound / (self.num_dims(unwrap_model(model)) * math.log(2.0))
        return loss, logs

    def end_to_end_loss(self, model, images, generator, class_labels=None):
        """``--train_first_stage``: the bound per image as the module docstring gives it, with one z and one
        timestep t >= 1 per image (``L_T`` and ``L_0`` exact), differentiable in both networks; the loss is its mean
        over the batch in nats per pixel dimension, ``bits_per_dim`` the same figure in bits."""
        draw = self.draw_latents(model, images, generator, bound_terms=True, class_labels=class_labels)
        u = draw.latents.float()
        tables = self.tables(u.device)
        steps = tables.num_timesteps
        t = torch.randint(1, steps, (u.shape[0],), generator=generator, device=u.device)
        t = torch.cat([torch.zeros_like(t), t])  # L_0 and one KL term per image, in one UNet pass
        both = torch.cat([u, u])
        noise = torch.randn(both.shape, generator=generator, device=u.device, dtype=u.dtype)
        x_t = add_noise(tables, both, noise, t)
        output = model(x_t, t, class_labels=None if class_labels is None else torch.cat([class_labels] * 2)).sample
        decoder_nll, kl_term = vlb_term_nats(tables, both, x_t, t, output, decoder="continuous").chunk(2)
        # -log p(z_d) <= L_vlb(u) - log |du/dz_d|
        latent_prior = prior_nats(tables, u) + decoder_nll + (steps - 1) * kl_term - draw.log_jacobian
        bound = draw.reconstruction_nll + draw.lower_kl + draw.posterior_log_density + latent_prior
        num_dims = self.num_dims(unwrap_model(model))
        logs = {"bits_per_dim": bound.mean().detach() / (num_dims * math.log(2.0)),
                "reconstruction_nll": draw.reconstruction_nll.mean().detach(),
                "lower_groups_kl": draw.lower_kl.mean().detach(),
                "diffused_groups_nats": (draw.posterior_log_density + latent_prior).mean().detach(),
                "latent_prior_nats_per_dim": latent_prior.mean().detach() / u[0].numel()}
        return bound.mean() / num_dims, logs

    @torch.no_grad()
    def bounds(self, model, images, importance_samples, generator, class_labels=None):
        """The latent diffusion's ELBO on ``-log p(x)`` (``-log p(x | y)`` given class indices) per image, nats, with
        ``importance_samples`` stratified timesteps for L_vlb and one posterior sample; ``terms`` holds, for the same
        z, the first stage's own ELBO, the prior's gain over it and the parts of the bound."""
        num_classes = self.num_classes(model)
        if num_classes == 0 and class_labels is not None:
            raise ValueError("class_labels were given, but this latent diffusion prior was trained without classes")
        if num_classes and class_labels is None:
            class_labels = torch.full((images.shape[0],), num_classes, dtype=torch.int64, device=images.device)
        draw = self.draw_latents(model, images, generator, bound_terms=True, class_labels=class_labels)
        latent_prior_nll = self.diffused_prior_nats(model, draw.latents, draw.log_jacobian, importance_samples,
                                                    generator, class_labels)
        rest = draw.reconstruction_nll + draw.lower_kl + draw.posterior_log_density
        bound = rest + latent_prior_nll
        own_elbo = rest + draw.own_prior_nll
        terms = {"prior_gain": own_elbo - bound, "reconstruction": draw.reconstruction_nll,
                 "latent_prior": latent_prior_nll, "posterior_log_density": draw.posterior_log_density}
        if self.hierarchical:
            terms.update(hvae_elbo=own_elbo, lower_groups_kl=draw.lower_kl)
        else:
            terms.update(vae_standard_normal_prior_elbo=own_elbo)
        return Bounds(bound, bound, terms=terms)

    def bound_estimator(self, model, importance_samples):
        return f"one posterior sample z per image; the prior's {super().bound_estimator(model, importance_samples)}"

    def diffused_prior_nats(self, model, latents: torch.Tensor, log_jacobian: torch.Tensor | float, timesteps: int,
                            generator: torch.Generator, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """An upper bound on ``-log p(z_d)`` per image (nats) under the diffusion prior over ``latents`` u:
        ``L_vlb(u) - log |du/dz_d|``, ``timesteps`` stratified timesteps for L_vlb."""
        estimate = continuous_variational_bound(model, self._require_scheduler(), latents, timesteps, generator,
                                                tables=self.tables(latents.device), class_labels=class_labels)
        return estimate.nats_per_image - log_jacobian

    def latent_prior_nats(self, model, z: torch.Tensor, scaling_factor: float, timesteps: int,
                          generator: torch.Generator, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """A VAE first stage: ``-log p(z) <= L_vlb(s z) - d log s`` per latent (nats), the log-Jacobian of
        ``z -> s z`` over its d dimensions counted."""
        return self.diffused_prior_nats(model, scaling_factor * z, z[0].numel() * math.log(scaling_factor),
                                        timesteps, generator, class_labels)

    # ------------------------------------------------------------------ sampling
    def sample_images(self, pipeline, num_images, generator, class_labels=None, crop_to_source=True, **kwargs):
        """PIL images through a ``LatentDiffusionPipeline`` on the folder's networks with the sampler asked for
        (``scheduler``: ``ddpm``, ``ddim`` or ``dpm-solver++``; ``steps``; ``clip_sample``, ``timestep_spacing``;
        ``guidance_scale`` and ``guidance_rescale`` for a class-conditional prior, ``first_stage_guidance_scale``
        for a class-conditional hierarchical VAE's lower groups; a hierarchical VAE first stage:
        ``temperature`` of its lower groups and ``greedy_passes``). ``pipeline`` is left unchanged.
        ``crop_to_source``: the images at the data's own size (the VAE's ``source_size``), False: the padded square."""
        self.check_sampling_options(kwargs)
        guidance = {key: kwargs[key] for key in ("guidance_scale", "guidance_rescale", "first_stage_guidance_scale")
                    if kwargs.get(key) is not None}
        if not self.num_classes(pipeline.unet) and guidance:
            raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in guidance.items())} was given, but this latent "
                             f"diffusion prior was trained without class labels; classifier-free guidance needs a "
                             f"prior trained with --class_conditional")
        decoding = {}
        if is_hierarchical(pipeline.vae):  # as the hierarchical VAE family samples: draws unless greedy_passes
            passes = int(pipeline.vae.config.pixel_passes)
            decoding = {"sample_pixels": passes > 1 and not kwargs.get("greedy_passes"),
                        "temperature": kwargs.get("temperature", 1.0)}
        config = pipeline.scheduler.config
        # latents are not images: no clipping unless asked for (DPM-Solver++'s default clips x_0 to [-1, 1])
        name, steps, scheduler_class, extra = sampler_settings(config, kwargs, clip_sample=bool(config.clip_sample))
        variance = {} if name == "ddpm" else {"variance_type": None}
        scheduler = scheduler_class.from_config({**config, **variance}, **extra)
        sampler = LatentDiffusionPipeline(vae=pipeline.vae, unet=pipeline.unet, scheduler=scheduler,
                                          class_names=pipeline.config.class_names)
        sampler.set_progress_bar_config(**getattr(pipeline, "_progress_bar_config", {}))
        return sampler(batch_size=num_images, class_labels=class_labels, generator=generator,
                       num_inference_steps=steps, crop_to_source=crop_to_source, **guidance, **decoding).images


def load_vae(path_or_repo_id: str) -> FirstStage:
    """The first stage of a VAE or hierarchical VAE pipeline folder or Hub repo id, refused with a message naming
    what was expected when the folder holds another family's pipeline, or a model no diffusion prior can sit on
    (``check_first_stage``)."""
    from ..remote_code import pipeline_class_name, read_model_index, resolve_folder

    folder = resolve_folder(path_or_repo_id)
    found = pipeline_class_name(read_model_index(folder))
    pipeline_classes = {cls.__name__: cls for cls in (VAEPipeline, HierarchicalVAEPipeline)}
    if found not in pipeline_classes:
        raise ValueError(f"{path_or_repo_id} holds a {found} (model_index.json); --vae expects a VAEPipeline folder "
                         f"(hfgen train vae --preset small-spatial) or a HierarchicalVAEPipeline folder (hfgen train "
                         f"hvae)")
    vae = pipeline_classes[found].from_pretrained(folder).vae
    try:
        check_first_stage(vae)
    except ValueError as error:
        raise ValueError(f"{path_or_repo_id}: {error}") from None
    return vae
