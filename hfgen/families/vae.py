"""The Gaussian VAE family: presets, objective (negative ELBO with KL warm-up) and bounds for ``VAEModel``."""

from __future__ import annotations

import argparse

from ..models.likelihoods import LIKELIHOODS
from ..models.vae import VAEModel
from ..pipelines import VAEPipeline
from .base import Bounds, ModelFamily, PixelPassSampling, Preset, add_pixel_passes_arguments

VAE_PRESETS = {
    "tiny": Preset(
        description="seconds on a CPU; for tests",
        model=dict(block_out_channels=[8, 16], layers_per_block=1, latent_channels=4),
        training=dict(
            train_batch_size=16, learning_rate=2e-3, max_train_steps=20, lr_warmup_steps=2, kl_warmup_steps=0,
            eval_steps=0, sample_steps=0, checkpointing_steps=0, logging_steps=5, eval_max_samples=64,
            final_eval_max_samples=64, final_importance_samples=4, num_sample_images=16, ema_decay=0.9,
        ),
    ),
    # p(x | z) in four interleaved passes with two residual pass layers (docs/baselines.md, 2026-12-06): validation
    # ELBO 3.115 after 10 minutes of 2 vCPUs against 3.271 for independent pixels the same night, at 422 img/s
    # against 714.
    "small": Preset(
        description="a few minutes on two CPU cores (Fashion-MNIST 32x32)",
        model=dict(block_out_channels=[16, 32, 64], layers_per_block=1, latent_channels=8, latent_dim=32,
                   pixel_passes=4, pixel_pass_layers=2),
        training=dict(
            train_batch_size=64, learning_rate=2e-3, max_train_steps=1200, lr_warmup_steps=100,
            kl_warmup_steps=300, eval_steps=400, sample_steps=400, checkpointing_steps=400, logging_steps=20,
            eval_max_samples=1000, final_eval_max_samples=1000, final_importance_samples=16,
            num_sample_images=64, ema_decay=0.998,
        ),
    ),
    "small-spatial": Preset(
        description="the small VAE with a 4x8x8 spatial latent, the first stage of a latent diffusion (hfgen train ldm "
                    "--vae DIR); a few minutes on two CPU cores",
        model=dict(block_out_channels=[16, 32, 64], layers_per_block=1, latent_channels=4, latent_dim=0),
        training=dict(
            train_batch_size=64, learning_rate=2e-3, max_train_steps=1200, lr_warmup_steps=100,
            kl_warmup_steps=300, eval_steps=400, sample_steps=0, checkpointing_steps=400, logging_steps=20,
            eval_max_samples=1000, final_eval_max_samples=1000, final_importance_samples=16,
            num_sample_images=64, ema_decay=0.998,
        ),
    ),
    "base": Preset(
        description="about a GPU hour (Fashion-MNIST 32x32)",
        model=dict(block_out_channels=[64, 128, 256], layers_per_block=2, latent_channels=16, latent_dim=64),
        training=dict(
            train_batch_size=128, learning_rate=1e-3, max_train_steps=60000, lr_warmup_steps=1000,
            kl_warmup_steps=5000, eval_steps=5000, sample_steps=5000, checkpointing_steps=5000,
            logging_steps=100, eval_max_samples=10000, final_eval_max_samples=10000,
            final_importance_samples=256, num_sample_images=64, ema_decay=0.9995,
        ),
    ),
}


class VAEFamily(PixelPassSampling, ModelFamily):
    name = "vae"
    summary = "Gaussian VAE (ELBO; --preset small-spatial is the first stage of a latent diffusion)"
    pipeline_class = VAEPipeline
    presets = VAE_PRESETS
    model_arguments = ("block_out_channels", "layers_per_block", "latent_channels", "latent_dim", "likelihood",
                       "num_mixtures", "pixel_passes", "pixel_pass_layers")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("VAE model (unset flags take the preset's value)")
        group.add_argument("--block_out_channels", type=int, nargs="+", default=None,
                           help="encoder widths per resolution, full resolution first")
        group.add_argument("--layers_per_block", type=int, default=None,
                           help="residual blocks per resolution, in the encoder and in the decoder")
        group.add_argument("--latent_channels", type=int, default=None,
                           help="channels of the spatial latent z (with --latent_dim: of the feature map before the "
                                "linear layers)")
        group.add_argument("--latent_dim", type=int, default=None,
                           help="a vector latent of this many dimensions (0: a spatial latent of latent_channels)")
        group.add_argument("--likelihood", choices=LIKELIHOODS, default=None,
                           help="pixel likelihood (default: discretized_logistic)")
        group.add_argument("--num_mixtures", type=int, default=None,
                           help="logistic mixture components (discretized_logistic only; default 1)")
        add_pixel_passes_arguments(group)
        group.add_argument("--kl_warmup_steps", type=int, default=None,
                           help="linearly raise the KL weight from 0 to 1 over this many steps (0: off)")

    def build_model(self, model_config, channels, sample_size):
        """A ``VAEModel``; ``num_classes`` and ``class_names`` in ``model_config`` (set by the training loop with
        ``--class_conditional``) make it class-conditional."""
        config = dict(model_config)
        if not config.get("latent_dim"):  # 0 on the command line: a spatial latent
            config["latent_dim"] = None
        if "num_classes" in config:
            config["num_classes"] = int(config["num_classes"] or 0)
        return VAEModel(in_channels=channels, sample_size=sample_size, **config)

    def loss(self, model, images, step, generator, config, class_labels=None):
        warmup = config.kl_warmup_steps or 0
        kl_weight = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        out = model(images, class_labels=class_labels, generator=generator, kl_weight=kl_weight)
        logs = {
            "bits_per_dim": out.bits_per_dim.mean().detach(),
            "reconstruction_nll": out.reconstruction_nll.mean().detach(),
            "kl": out.kl.mean().detach(),
        }
        return out.loss, logs

    def bounds(self, model, images, importance_samples, generator, class_labels=None):
        out = model.log_likelihood_bounds(images, class_labels=class_labels, importance_samples=importance_samples,
                                          generator=generator)
        return Bounds(out.nats_per_image_elbo, out.nats_per_image_iw)

    #: training images whose posterior samples set the latents' ``scaling_factor`` (the first N)
    scaling_factor_images = 10000

    def fit_to_training_data(self, model, train_images, generator):
        """The latents' ``scaling_factor`` (``VAEModel.latent_scaling_factor``: 1 / std of one posterior sample per
        image, over the first ``scaling_factor_images`` training images), stored in the model config so that a
        latent diffusion over this VAE (``hfgen train ldm --vae DIR``) reads it, as diffusers' latent pipelines read
        ``vae.config.scaling_factor``."""
        images = train_images[: self.scaling_factor_images]
        factor = model.latent_scaling_factor(images, generator)
        model.register_to_config(scaling_factor=factor)
        return {"latent_scaling_factor": factor, "latent_scaling_factor_images": int(images.shape[0])}

    def make_pipeline(self, model):
        return VAEPipeline(vae=model)

    def model_of(self, pipeline):
        return pipeline.vae
