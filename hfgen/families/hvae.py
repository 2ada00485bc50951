"""The hierarchical VAE family: presets, the objective with its stabilisers, bounds and diagnostics for
``HierarchicalVAEModel``.

Objective (nats per dimension): ``(reconstruction_nll + kl_weight * sum_i c_i * max(KL_i, free_nats)) / D``
plus ``spectral_reg_coeff * sum of the conv weights' largest singular values``, where

- ``kl_weight`` rises linearly from 0 to 1 over ``--kl_warmup_steps`` (KL warm-up);
- ``c_i`` balances the groups while the KL is warming up (``--kl_balancing``): groups with more KL get a larger
  share, which keeps the others from collapsing early (NVAE's KL balancing); afterwards every ``c_i`` is 1;
- ``free_nats`` (``--free_nats_per_group``) puts a floor under each group's batch-mean KL (free bits);
- the model itself bounds every log-scale (``log_scale_bound``); the loop clips the gradient norm, skips
  gradient-norm spikes (``--skip_grad_norm_factor``, on in every preset here) and keeps EMA weights.

``elbo`` and ``bits_per_dim`` in the logs are always the plain ELBO, whatever the stabilisers do to the loss.
"""

from __future__ import annotations

import argparse

import torch

from ..models.blocks import CELL_TYPES
from ..models.hvae import POSTERIORS, HierarchicalVAEModel
from ..models.likelihoods import LIKELIHOODS
from ..pipelines import HierarchicalVAEPipeline
from .base import Bounds, ModelFamily, PixelPassSampling, Preset, add_pixel_passes_arguments, unwrap_model

HVAE_PRESETS = {
    "tiny": Preset(
        description="seconds on a CPU; for tests",
        model=dict(block_out_channels=[8, 8, 8, 8], encoder_blocks_per_scale=1, groups_per_scale=[1, 1, 1, 1],
                   decoder_blocks_per_group=0, output_blocks=0, latent_channels=2),
        training=dict(
            train_batch_size=16, learning_rate=2e-3, max_train_steps=20, lr_warmup_steps=2, kl_warmup_steps=0,
            kl_balancing=True, free_nats_per_group=0.0, spectral_reg_coeff=0.0, skip_grad_norm_factor=20.0,
            skip_grad_norm_warmup=5, eval_steps=0, sample_steps=0, checkpointing_steps=0, logging_steps=5,
            eval_max_samples=64, final_eval_max_samples=64, final_importance_samples=4, num_sample_images=16,
            ema_decay=0.9,
        ),
    ),
    # Reshaped for bits/dim per CPU minute (docs/baselines.md, chosen on the validation split after 10 minutes of
    # 2 vCPUs): no latent group and no encoder cell at full resolution (the full-resolution group carried 0.01-0.25
    # nats and its convolutions a quarter of the FLOPs; the image is still decoded at full resolution), and batch 16
    # for more optimizer steps (validation ELBO 3.225 against 3.239 at batch 32, 3.314 at 64 and 3.354 for the old
    # preset), and Adam's beta2 at 0.99 (validation ELBO 3.168 against 3.190 with 0.999, back to back on the same
    # machine, and lower at every 1,000 steps). On 2026-12-05 eight more candidates (VDVAE's bottleneck and NVAE's
    # inverted-residual cells, more groups at 8x8 and 4x4, Adamax, batch 8, bf16, a 5-logistic mixture, 8-channel
    # groups) came within the seed spread of this preset or behind it. On 2026-12-06 p(x | z) in four interleaved
    # passes with six residual pass layers took the validation ELBO from 3.065 to 2.977 at the same 10 minutes
    # (0, 1 and 3 layers: 3.030, 3.008, 2.987), at 270 img/s against 434: 10,000 steps are about 10 minutes on 2
    # cores of an AVX-512 EPYC family 26 (10,115 on 2026-12-06; about 18 minutes on a family 25 one); the figures in
    # docs come from --max_train_minutes 10.
    "small": Preset(
        description="about 10 minutes on two CPU cores (Fashion-MNIST 32x32)",
        model=dict(block_out_channels=[16, 32, 32, 64], encoder_blocks_per_scale=[0, 1, 1, 1],
                   groups_per_scale=[0, 2, 2, 2], decoder_blocks_per_group=1, output_blocks=0, latent_channels=4,
                   pixel_passes=4, pixel_pass_layers=6),
        training=dict(
            train_batch_size=16, learning_rate=2e-3, adam_beta2=0.99, max_train_steps=10000, lr_warmup_steps=50,
            kl_warmup_steps=200, kl_balancing=True, free_nats_per_group=0.0, spectral_reg_coeff=0.0,
            skip_grad_norm_factor=20.0, skip_grad_norm_warmup=20, eval_steps=1000, sample_steps=1000,
            checkpointing_steps=1000, logging_steps=20, eval_max_samples=1000, final_eval_max_samples=1000,
            final_importance_samples=16, num_sample_images=64, ema_decay=0.998,
        ),
    ),
    "base": Preset(
        description="about a GPU hour (Fashion-MNIST 32x32)",
        model=dict(block_out_channels=[64, 128, 128, 256], encoder_blocks_per_scale=[2, 2, 2, 2],
                   groups_per_scale=[2, 4, 4, 4], decoder_blocks_per_group=2, output_blocks=1, latent_channels=16,
                   use_squeeze_excitation=True),
        training=dict(
            train_batch_size=128, learning_rate=1e-3, max_train_steps=60000, lr_warmup_steps=1000,
            kl_warmup_steps=5000, kl_balancing=True, free_nats_per_group=0.0, spectral_reg_coeff=0.0,
            skip_grad_norm_factor=20.0, skip_grad_norm_warmup=100, eval_steps=5000, sample_steps=5000,
            checkpointing_steps=5000, logging_steps=100, eval_max_samples=10000, final_eval_max_samples=10000,
            final_importance_samples=256, num_sample_images=64, ema_decay=0.9995,
        ),
    ),
}


def kl_objective(kl_per_group: torch.Tensor, kl_weight: float, balancing: bool, free_nats: float) -> torch.Tensor:
    """The KL part of the loss in nats per image (a scalar): ``kl_weight * sum_i c_i * max(mean_b KL_i, free_nats)``
    for ``kl_per_group`` of shape (batch, groups); see the module docstring."""
    kl_mean = kl_per_group.mean(0)
    kl_term = kl_mean.clamp(min=free_nats) if free_nats > 0 else kl_mean
    if balancing and kl_weight < 1.0:
        share = kl_mean.detach().abs() + 0.01
        kl_term = kl_term * (share * (share.numel() / share.sum()))
    return kl_weight * kl_term.sum()


class HVAEFamily(PixelPassSampling, ModelFamily):
    name = "hvae"
    summary = "hierarchical VAE: latent groups at several scales, per-group KL"
    pipeline_class = HierarchicalVAEPipeline
    presets = HVAE_PRESETS
    #: a class-conditional model also takes classifier-free guidance of its groups' prior means
    sampling_options = PixelPassSampling.sampling_options + ("guidance_scale",)
    model_arguments = ("block_out_channels", "encoder_blocks_per_scale", "groups_per_scale", "decoder_blocks_per_group",
                       "output_blocks", "latent_channels", "posterior", "use_squeeze_excitation", "log_scale_bound",
                       "likelihood", "num_mixtures", "cell_type", "pixel_passes", "pixel_pass_layers")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("hierarchical VAE model (unset flags take the preset's value)")
        group.add_argument("--block_out_channels", type=int, nargs="+", default=None,
                           help="width of each scale, full resolution first (one scale per entry)")
        group.add_argument("--encoder_blocks_per_scale", type=int, nargs="+", default=None,
                           help="bottom-up residual cells per scale (one number or one per scale)")
        group.add_argument("--groups_per_scale", type=int, nargs="+", default=None,
                           help="latent groups per scale, full resolution first (one number or one per scale)")
        group.add_argument("--decoder_blocks_per_group", type=int, default=None,
                           help="top-down residual cells before each latent group")
        group.add_argument("--output_blocks", type=int, default=None, help="residual cells after the last group")
        group.add_argument("--latent_channels", type=int, default=None, help="channels of each latent group")
        group.add_argument("--posterior", choices=POSTERIORS, default=None,
                           help="residual (NVAE; the model default) or product (precision-weighted, Ladder VAE)")
        group.add_argument("--use_squeeze_excitation", action=argparse.BooleanOptionalAction, default=None,
                           help="squeeze-and-excitation (channel gating) in every residual cell (NVAE)")
        group.add_argument("--cell_type", choices=CELL_TYPES, default=None,
                           help="residual cell of every encoder, decoder and output stage: resnet (GroupNorm, SiLU, "
                                "3x3 conv, twice; the model default), bottleneck (VDVAE: 1x1 to a quarter of the "
                                "width, two 3x3, 1x1 back) or inverted_residual (NVAE: 1x1 expansion by 3, "
                                "depthwise 5x5, 1x1 back)")
        group.add_argument("--log_scale_bound", type=float, default=None,
                           help="soft bound on every latent log-scale (0: none; model default 5)")
        group.add_argument("--likelihood", choices=LIKELIHOODS, default=None,
                           help="pixel likelihood (default: discretized_logistic)")
        group.add_argument("--num_mixtures", type=int, default=None,
                           help="logistic mixture components (discretized_logistic only; default 1)")
        add_pixel_passes_arguments(group)
        objective = parser.add_argument_group("hierarchical VAE objective (unset flags take the preset's value)")
        objective.add_argument("--kl_warmup_steps", type=int, default=None,
                               help="linearly raise the KL weight from 0 to 1 over this many steps (0: off)")
        objective.add_argument("--kl_balancing", action=argparse.BooleanOptionalAction, default=None,
                               help="balance the KL across groups during the KL warm-up")
        objective.add_argument("--free_nats_per_group", type=float, default=None,
                               help="free bits: floor on each group's batch-mean KL, nats (0: off)")
        objective.add_argument("--spectral_reg_coeff", type=float, default=None,
                               help="weight of the spectral regulariser of the conv weights (0: off)")

    def build_model(self, model_config, channels, sample_size):
        """A ``HierarchicalVAEModel``; ``num_classes`` and ``class_names`` in ``model_config`` (set by the training
        loop with ``--class_conditional``) make it class-conditional."""
        config = dict(model_config)
        if "num_classes" in config:
            config["num_classes"] = int(config["num_classes"] or 0)
        return HierarchicalVAEModel(in_channels=channels, sample_size=sample_size, **config)

    def loss(self, model, images, step, generator, config, class_labels=None):
        warmup = config.kl_warmup_steps or 0
        kl_weight = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        out = model(images, class_labels=class_labels, generator=generator, kl_weight=kl_weight)
        num_dims = unwrap_model(model).num_dims
        kl = kl_objective(out.kl_per_group, kl_weight, bool(getattr(config, "kl_balancing", False)),
                          float(getattr(config, "free_nats_per_group", 0.0) or 0.0))
        loss = (out.reconstruction_nll.mean() + kl) / num_dims
        spectral = float(getattr(config, "spectral_reg_coeff", 0.0) or 0.0)
        logs = {
            "bits_per_dim": out.bits_per_dim.mean().detach(),
            "reconstruction_nll": out.reconstruction_nll.mean().detach(),
            "kl": out.kl.mean().detach(),
        }
        if spectral > 0:
            penalty = unwrap_model(model).spectral_penalty()
            loss = loss + spectral * penalty
            logs["spectral_penalty"] = penalty.detach()
        kl_groups = out.kl_per_group.mean(0).detach()
        logs.update({f"kl_group_{i:02d}": kl_groups[i] for i in range(kl_groups.numel())})
        return loss, logs

    def bounds(self, model, images, importance_samples, generator, class_labels=None):
        out = model.log_likelihood_bounds(images, class_labels=class_labels, importance_samples=importance_samples,
                                          generator=generator)
        return Bounds(out.nats_per_image_elbo, out.nats_per_image_iw)

    def diagnostics(self, model, images, class_labels=None):
        """KL per group (mean nats per image), active units per group (mean KL(q || p) of the unit > 0.01 nats) and
        units per group, over at most 1000 of the images, groups top first. A class-conditional model is given the
        images' own classes (q(z|x,y) against p(z|y)), as in training."""
        model = unwrap_model(model)
        generator = torch.Generator(device=model.device).manual_seed(0)
        if class_labels is not None:
            class_labels = class_labels[:1000].to(model.device)
        return model.posterior_statistics(images[:1000].to(model.device), generator=generator,
                                          class_labels=class_labels)

    def make_pipeline(self, model):
        return HierarchicalVAEPipeline(vae=model)

    def model_of(self, pipeline):
        return pipeline.vae
