"""What a model family gives the shared training core, the evaluator and the CLI.

The training loop (``hfgen.training``) knows nothing about VAEs or diffusion: a family supplies its presets,
builds its model, scores a batch, bounds the log-likelihood and wraps the model in its pipeline.

Class-conditional models (``--class_conditional``): the loop puts ``num_classes`` (K) and ``class_names`` into the
model config it passes to ``build_model``, and gives ``loss`` and ``bounds`` a ``class_labels`` tensor of class
indices, shape ``(batch,)`` int64, in ``0 .. K``: index K is the null class (label dropout during training; the
model without a label, i.e. ``log p(x)``, in ``bounds``). ``class_labels=None`` means an unconditional model, or
the null class for a conditional one. See ``hfgen.models.labels``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DiffusionPipeline, ModelMixin

from ..models.likelihoods import PIXEL_PASSES


#: what a family's ``sample_images`` gives (``ModelFamily.sample_kind``): the name ``metrics.json`` records under
#: ``sampled_images`` (the images of the plain sample-quality keys) and ``grid_images`` (those of ``samples.png``)
SAMPLED_IMAGES = {
    "draws": "draws from the model",
    "mean": "the mean of p(x | z) for z drawn from the prior",
    "greedy": "the greedy chain of the pixel passes (each pass the mean of p(x_k | x_<k, z) given the earlier passes' "
              "rounded means: neither E[x | z] nor a draw)",
}
#: the suffix of the sample-quality keys of greedy-chain images (``fd_fmnist_greedy``): the plain keys hold draws
GREEDY_SUFFIX = "_greedy"


def add_pixel_passes_arguments(group) -> None:
    """``--pixel_passes`` and ``--pixel_pass_layers``, the same for every family whose p(x | z) is a pixel
    likelihood."""
    group.add_argument("--pixel_passes", type=int, choices=PIXEL_PASSES, default=None,
                       help="decode p(x | z) in this many interleaved passes, each pixel given the pixels of the "
                            "passes before it: 1 (the model default: independent given z), 2 (checkerboard) or 4 "
                            "(the pixels of each 2x2 cell in turn)")
    group.add_argument("--pixel_pass_layers", type=int, default=None,
                       help="residual 3x3 convolutions the passes add before the output layer (default 0)")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel (or ``torch.compile``) wrapper. A family's objective runs the
    wrapper it is given (its forward keeps the processes' gradients in step) and reads the config and helpers of
    the model inside."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


@dataclass
class Preset:
    """A named configuration: model config values and training defaults (flags left unset take these)."""

    model: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass
class Bounds:
    """Upper bounds on -log p(x) per image, in nats (shape ``(batch,)``): the ELBO bound and the tighter
    importance-weighted one (equal to the ELBO bound where a family has only one bound)."""

    nats_per_image_elbo: torch.Tensor
    nats_per_image_iw: torch.Tensor
    #: further per-image figures in nats that the evaluator averages with their standard errors (``bound_terms``):
    #: parts of the bound or comparisons paired with it image by image (the latent diffusion: its VAE's own
    #: N(0, I)-prior ELBO and the prior's gain over it)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class ModelFamily:
    """Base class of a model family. Subclasses set the class attributes and implement the methods."""

    name: str = ""
    #: one line for ``hfgen train --help``
    summary: str = ""
    pipeline_class: type[DiffusionPipeline]
    presets: dict[str, Preset] = {}
    #: model-config keys that the family's command-line flags may override (flag names are these keys)
    model_arguments: tuple[str, ...] = ()
    #: the options ``sample_images`` (and ``hfgen sample``) accept; others are refused with a ValueError
    sampling_options: tuple[str, ...] = ("temperature",)
    #: K of the bounds the loop evaluates every ``--eval_steps`` (1: the ELBO; the diffusion families: stratified
    #: timesteps, whose one-timestep estimate is too heavy-tailed to report, see ``DDPMFamily``)
    validation_importance_samples: int = 1
    #: K of ``hfgen evaluate`` without ``--importance-samples`` / ``--vlb-timesteps``, and of the final evaluation of
    #: training when neither ``--final_importance_samples`` nor the preset sets it (1: the ELBO)
    default_importance_samples: int = 1
    #: the family's flags that name local folders (``training_config.json`` keeps their names, not this machine's
    #: paths: the file is published)
    folder_arguments: tuple[str, ...] = ()
    #: whether ``bounds`` holds K importance samples per image in memory at once (the evaluator then shrinks
    #: its batches as K grows)
    importance_samples_in_batch: bool = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the family's own flags (model config overrides, objective settings); defaults must be None so
        that unset flags take the preset's value."""

    def build_model(self, model_config: dict[str, Any], channels: int, sample_size: int) -> ModelMixin:
        """The model to train. When the data layer zero-padded smaller images to ``sample_size`` the loop puts their
        own ``[height, width]`` in ``model_config["source_size"]``: the model keeps it in its config, its bound may
        score only those pixels (the VAE families), and its pipeline takes and returns images of that size."""
        raise NotImplementedError

    def loss(
        self, model: torch.nn.Module, images: torch.Tensor, step: int, generator: torch.Generator, config: Any,
        class_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training objective for one batch of ``uint8`` images (with their class indices, the null class where
        the label was dropped, for a class-conditional model), and per-batch means for the logs (tensors, not
        Python floats, so that no host-device sync is forced). Must include ``bits_per_dim``."""
        raise NotImplementedError

    def bounds(
        self, model: ModelMixin, images: torch.Tensor, importance_samples: int, generator: torch.Generator,
        class_labels: torch.Tensor | None = None,
    ) -> Bounds:
        """Bounds on ``-log p(x | y)`` for the given class indices, or on ``-log p(x)`` (``None``: the null class of a
        conditional model)."""
        raise NotImplementedError

    def bound_estimator(self, model: ModelMixin, importance_samples: int) -> str:
        """How ``bounds`` estimates its bound with K = ``importance_samples``, in words (``estimator`` in
        ``metrics.json`` and ``hfgen evaluate``'s output)."""
        if importance_samples == 1:
            return "the ELBO of one posterior sample per image"
        return (f"{importance_samples} posterior samples per image (the ELBO their mean, the importance-weighted bound "
                f"K={importance_samples})")

    def bound_terms(self, model: ModelMixin) -> list[str]:
        """The names of the ``Bounds.terms`` that ``bounds`` gives for ``model``, in the order the evaluator keeps
        them (default: none)."""
        return []

    def num_classes(self, model: ModelMixin) -> int:
        """K, the number of classes a class-conditional model was trained on (0: unconditional)."""
        return int(getattr(model.config, "num_classes", 0) or 0)

    def class_names(self, pipeline: DiffusionPipeline) -> list[str] | None:
        """The class names of a class-conditional pipeline, in class-index order (None: unconditional)."""
        names = getattr(self.model_of(pipeline).config, "class_names", None)
        return list(names) if names else None

    #: whether ``bounds`` gives an importance-weighted bound beside the ELBO (DDPM: no; its K is timesteps)
    has_importance_weighted_bound: bool = True

    def image_shape(self, model: ModelMixin) -> tuple[int, int]:
        """(channels, sample_size) of the images the model generates and is evaluated on."""
        return int(model.config.in_channels), int(model.config.sample_size)

    def scored_shape(self, model: ModelMixin) -> tuple[int, int, int]:
        """(C, H, W) of the pixels the model's bound scores: the data's own (``source_size``) or the whole square."""
        size = model.config.sample_size
        height, width = getattr(model.config, "source_size", None) or (size, size)
        return (model.config.in_channels, int(height), int(width))

    def num_dims(self, model: ModelMixin) -> int:
        """C * H * W of the pixels the model's bound scores."""
        channels, height, width = self.scored_shape(model)
        return channels * height * width

    def likelihood_of(self, model: ModelMixin) -> dict[str, Any]:
        """What the bound is a likelihood of: ``{"name": ..., "data": "8-bit" | "dynamically binarized"}``."""
        name = getattr(model.config, "likelihood", "discretized_logistic")
        return {"name": name, "data": "dynamically binarized" if name == "bernoulli" else "8-bit"}

    def make_pipeline(self, model: ModelMixin) -> DiffusionPipeline:
        raise NotImplementedError

    def model_of(self, pipeline: DiffusionPipeline) -> ModelMixin:
        raise NotImplementedError

    def diagnostics(self, model: ModelMixin, images: torch.Tensor,
                    class_labels: torch.Tensor | None = None) -> dict[str, Any]:
        """Extra figures about a trained model on ``uint8`` evaluation ``images`` (e.g. KL and active units per
        latent group): JSON values (numbers or lists of numbers). ``class_labels``: the images' class indices for a
        class-conditional model (None: unconditional, or the null class). The loop logs them at every evaluation
        and merges them into ``metrics.json`` at the end (with the EMA weights). Default: none."""
        return {}

    def configure(self, cfg: argparse.Namespace) -> None:
        """Read the family's own settings once, before the data and the model are built (the latent diffusion: load
        and check its frozen VAE from ``--vae``). Default: nothing."""

    def fit_to_training_data(self, model: ModelMixin, train_images: torch.Tensor,
                             generator: torch.Generator) -> dict[str, Any]:
        """Config values measured on ``uint8`` training images with the final (EMA) weights, set on ``model`` before
        the final folder is written (the VAE: its latents' ``scaling_factor``). Returns them for ``metrics.json``.
        Default: none."""
        return {}

    def check_sampling_options(self, options: dict) -> None:
        """Refuse sampling options the family's sampler does not take (``sampling_options``)."""
        unknown = sorted(set(options) - set(self.sampling_options))
        if unknown:
            raise ValueError(f"the {self.name} family does not take the sampling option(s) {unknown}; it takes "
                             f"{list(self.sampling_options)}")

    def sample_kind(self, model_config: dict, options: dict) -> str:
        """What ``sample_images`` gives for a model of ``model_config`` with sampling ``options``: a key of
        ``SAMPLED_IMAGES``. Default: ``"draws"``."""
        return "draws"

    def sample_images(self, pipeline: DiffusionPipeline, num_images: int, generator: torch.Generator,
                      class_labels=None, crop_to_source: bool = True, **kwargs):
        """PIL images for sample grids (``kwargs`` are sampling options such as ``temperature``). ``class_labels``:
        as the pipelines take it (``hfgen.models.labels.class_label_ids``): None, one class, or one per image.
        ``crop_to_source``: the images at the data's own size (the model's ``source_size``), as the pipelines give
        them by default; False: the padded square the model generates."""
        self.check_sampling_options(kwargs)
        if class_labels is not None:
            kwargs["class_labels"] = class_labels
        return pipeline(batch_size=num_images, generator=generator, crop_to_source=crop_to_source, **kwargs).images


class PixelPassSampling:
    """Sampling of the VAE families (mixed in before ``ModelFamily``): a model whose p(x | z) is decoded in pixel
    passes (``pixel_passes`` 2 or 4) gives draws from the model, each pass drawn given the passes before it; the
    option ``greedy_passes`` gives the greedy chain of pass means instead, whose sample-quality keys are named
    apart (``GREEDY_SUFFIX``). With ``pixel_passes`` 1 the images are the mean of p(x | z)."""

    sampling_options = ("temperature", "greedy_passes")

    def sample_kind(self, model_config: dict, options: dict) -> str:
        if int(model_config.get("pixel_passes", 1)) == 1:
            if options.get("greedy_passes"):
                raise ValueError("greedy_passes decodes the pixel passes of a model with pixel_passes 2 or 4; this "
                                 "model has pixel_passes=1, whose images are already the mean of p(x | z)")
            return "mean"
        return "greedy" if options.get("greedy_passes") else "draws"

    def sample_images(self, pipeline, num_images, generator, class_labels=None, crop_to_source=True, **kwargs):
        self.check_sampling_options(kwargs)
        greedy = bool(kwargs.pop("greedy_passes", False))
        kind = self.sample_kind(dict(self.model_of(pipeline).config), {"greedy_passes": greedy})
        if class_labels is not None:
            kwargs["class_labels"] = class_labels
        return pipeline(batch_size=num_images, generator=generator, sample_pixels=kind == "draws",
                        crop_to_source=crop_to_source, **kwargs).images
