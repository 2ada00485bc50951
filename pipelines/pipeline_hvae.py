"""HierarchicalVAEPipeline: unconditional sampling from a ``HierarchicalVAEModel`` (with a temperature per latent
group), and reconstruction of given images.

Imports only torch and diffusers (the model arrives as a registered component), so a published model folder
can carry this file as remote code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from diffusers.image_processor import VaeImageProcessor
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list
ClassLabels = int | str | list | torch.Tensor | None


def _check_generators(generator, batch_size: int) -> None:
    """A list of generators must hold one per image (diffusers' pipelines' message)."""
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"You have passed a list of generators of length {len(generator)}, but requested an effective batch"
            f" size of {batch_size}. Make sure the batch size matches the length of the generators."
        )


def _generators_for(generator, start: int, stop: int):
    """The generators of images ``start:stop``: the one generator, or that slice of a list (one per image)."""
    return generator[start:stop] if isinstance(generator, list) else generator


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents ``a`` and ``b`` (same shape, batch first), image by image: along the
    great circle through them, with the norm interpolated linearly, so that midpoints of Gaussian latents keep a
    typical norm (a straight line passes near 0). ``t`` is a number, or one per image (shape ``(batch,)``); 0 gives
    ``a`` and 1 gives ``b`` exactly. Nearly parallel latents fall back to a straight line."""
    t = torch.as_tensor(t, dtype=torch.float32, device=a.device).reshape(-1, *([1] * (a.ndim - 1)))
    a32, b32 = a.float().flatten(1), b.float().flatten(1)
    cos = (_unit(a32) * _unit(b32)).sum(1).clamp(-1, 1).reshape(-1, *([1] * (a.ndim - 1)))
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    parallel = sin.abs() < 1e-4
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, 1 - t, torch.sin((1 - t) * theta) / safe)
    wb = torch.where(parallel, t, torch.sin(t * theta) / safe)
    out = wa * a.float() + wb * b.float()
    # exact endpoints whatever the rounding of the weights
    out = torch.where(t == 0, a.float(), torch.where(t == 1, b.float(), out))
    return out.to(a.dtype)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class HierarchicalVAEPipelineOutput(ImagePipelineOutput):
    """Output of [`HierarchicalVAEPipeline`].

    images: the images (PIL, numpy or torch, per ``output_type``).
    latents: every group's latent the images were decoded from, a list (top group first) of
        ``(batch, *vae.group_shapes()[i])``; ``pipe(latents=latents)`` decodes them again.
    """

    latents: list = None


def _per_image(function, generator, *tensors):
    """``function(*tensors, generator)`` for the batch, or, with a list of generators, image by image with its own
    generator, so that image i depends on ``generator[i]`` alone (as diffusers' ``randn_tensor`` draws)."""
    if not isinstance(generator, list):
        return function(*tensors, generator)
    return torch.cat([function(*(t[i : i + 1] for t in tensors), g) for i, g in enumerate(generator)])


class HierarchicalVAEPipeline(DiffusionPipeline):
    r"""Pipeline for image generation with a [`HierarchicalVAEModel`]: run the top-down path with each latent group
    drawn from its prior ``N(mu_p, (temperature * sigma_p)^2)``, then decode the pixels. A class-conditional model
    runs it for the requested class (``class_labels``: class names or indices; none given: the null class, i.e.
    unconditional samples).

    Parameters:
        vae ([`HierarchicalVAEModel`]): the trained hierarchical VAE.
    """

    model_cpu_offload_seq = "vae"

    # hfgen sets these (hfgen.pipeline_hooks.install_hooks) when this file is imported as part of the hfgen package:
    # from_pretrained then reads a folder or Hub repo into hfgen's own model classes without running code from it,
    # and save_pretrained also writes the code files that let plain diffusers load the folder with
    # trust_remote_code=True. In the copy a published folder carries they stay None: diffusers' own methods apply.
    _hfgen_components: dict = {}
    _hfgen_from_pretrained = None
    _hfgen_save_pretrained = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if cls._hfgen_from_pretrained is None:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls._hfgen_from_pretrained(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        if type(self)._hfgen_save_pretrained is None:
            return super().save_pretrained(save_directory, **kwargs)
        return type(self)._hfgen_save_pretrained(self, save_directory, **kwargs)

    def __init__(self, vae: ModelMixin):
        super().__init__()
        self.register_modules(vae=vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False, do_normalize=True)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        temperature: float | list[float] = 1.0,
        latents: torch.Tensor | list[torch.Tensor] | None = None,
        images: ImageInput | None = None,
        keep_groups: int | None = None,
        class_labels: ClassLabels = None,
        guidance_scale: float = 1.0,
        sample_pixels: bool = False,
        decode_batch_size: int = 256,
        output_type: str = "pil",
        return_dict: bool = True,
        crop_to_source: bool = True,
    ) -> HierarchicalVAEPipelineOutput | tuple:
        r"""Generate images.

        Args:
            batch_size (`int`, *optional*): number of images; defaults to 1, or with ``images`` to one per image.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): makes sampling deterministic; a list
                holds one generator per image, and image i then depends on ``generator[i]`` alone (every group's
                latent and the pixel noise), as in diffusers' pipelines.
            temperature (`float` or `list[float]`, defaults to 1.0): scale of each group's prior standard deviation,
                one number for all groups or one per group (top group first); 0 takes the prior mean.
            latents (`torch.Tensor` or `list[torch.Tensor]`, *optional*): latents to start from: a list with one
                tensor per group for any number of groups from the top, ``(batch_size, *vae.group_shapes()[i])``
                each (a tensor alone is the top group's); the groups below are drawn from the prior at their
                temperature. The ``latents`` of an earlier output, or ``encode``'s, decode the same images again.
            images (*optional*), keep_groups (`int`, *optional*): NVAE's "keep the top ``keep_groups`` groups of an
                image's posterior (their means, as ``encode`` gives them), draw the rest from the prior at
                ``temperature``": variations of ``images`` that keep their coarse content (PIL images, numpy or
                tensors as ``reconstruct`` takes them). ``batch_size`` then must be a multiple of the number of
                images; each image fills ``batch_size / len(images)`` consecutive places.
            class_labels (`int`, `str`, `list` or `torch.Tensor`, *optional*): the class of the images (a
                class-conditional model only): one class index or name (``vae.config.class_names``) for every image,
                or a list with one per image (``batch_size`` then left unset, or equal to its length); with
                ``images``, one for all of them or one per given image (used to encode them and to generate). None:
                the null class, the model's unconditional samples. A name that is not one of the model's is refused.
            guidance_scale (`float`, defaults to 1): classifier-free guidance of a class-conditional model's priors:
                every drawn group's prior mean becomes ``mu_null + s * (mu_y - mu_null)`` given the same groups
                above (the class's scale kept); 1 draws from p(x | y), 0 from the null class's p(x), s > 1 moves each
                group towards its class. Needs ``class_labels``; a model trained without classes takes only 1.
            sample_pixels (`bool`, defaults to False): show one draw from p(x | z) instead of its mean.
            decode_batch_size (`int`, defaults to 256): images generated at a time (bounds memory).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, defaults to True): return a [`HierarchicalVAEPipelineOutput`] (images and every
                group's latents) instead of the tuple ``(images, latents)``.
            crop_to_source (`bool`, defaults to True): return the images at the data's own size (``source_size`` in
                the model config: 28x28 for Fashion-MNIST), as the data set has them; False: the padded
                ``sample_size`` square the model generates (32x32). A model without ``source_size`` (trained on
                unpadded data, or before hfgen recorded it) gives its ``sample_size`` either way.
        """
        temperatures = self.vae._temperatures(temperature)  # validates: one number or one per group, >= 0
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer (the number of images), got {batch_size!r}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        device = self._execution_device
        if (images is None) != (keep_groups is None):
            raise ValueError("images and keep_groups go together (keep the top keep_groups groups of each image's "
                             f"posterior); got images={'None' if images is None else 'given'}, keep_groups={keep_groups}")
        if images is not None:
            if latents is not None:
                raise ValueError("give either latents or images with keep_groups, not both")
            if not 0 <= keep_groups <= self.vae.num_groups:
                raise ValueError(f"keep_groups must be between 0 and {self.vae.num_groups} (the model's groups), "
                                 f"got {keep_groups}")
            num_images = self._preprocess(images).shape[0]
            image_labels = self.vae.resolve_class_labels(class_labels, num_images)
            means = self.encode(images, class_labels=class_labels).latent_means[:keep_groups]
            batch_size = batch_size or num_images
            if batch_size % num_images:
                raise ValueError(f"batch_size must be a multiple of the number of images ({num_images}), got "
                                 f"{batch_size}")
            latents = [z.repeat_interleave(batch_size // num_images, dim=0) for z in means]
            labels = None if image_labels is None else image_labels.repeat_interleave(batch_size // num_images)
        else:
            labels = self.vae.resolve_class_labels(class_labels, batch_size or 1)
            batch_size = (batch_size or 1) if labels is None else labels.shape[0]
        _check_generators(generator, batch_size)
        self.vae.check_guidance_scale(guidance_scale, labels)  # refused before any work
        given = [z.to(device) for z in self.vae.check_latents(latents, batch_size)]
        if not given:
            mean, log_scale = self.vae.guided_top_prior(labels, guidance_scale)
            top_shape = (batch_size, *self.vae.group_shapes()[0])
            eps = randn_tensor(top_shape, generator=generator, device=device, dtype=torch.float32)
            given = [mean + temperatures[0] * torch.exp(log_scale) * eps]
        chunks, drawn = [], []
        starts = range(0, batch_size, decode_batch_size)
        # a bar only when decoding takes several chunks (one chunk: nothing worth a bar)
        for start in self.progress_bar(starts) if len(starts) > 1 else starts:
            stop = min(start + decode_batch_size, batch_size)
            chunk_generator = _generators_for(generator, start, stop)
            params, chunk_latents = self.vae.generate_parameters(
                stop - start, generator=chunk_generator, temperature=temperatures,
                latents=[z[start:stop] for z in given], return_latents=True,
                class_labels=None if labels is None else labels[start:stop], guidance_scale=guidance_scale)
            drawn.append(chunk_latents)
            if sample_pixels:
                chunks.append(_per_image(lambda p, g: self.vae.decode_image(p, sample_pixels=True, generator=g),
                                         chunk_generator, params))
            else:
                chunks.append(self.vae.decode_image(params))
        image = self._output_size(torch.cat(chunks).float(), crop_to_source)
        image = self.image_processor.postprocess(image, output_type=output_type)
        latents = [torch.cat(group) for group in zip(*drawn)]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image, latents)
        return HierarchicalVAEPipelineOutput(images=image, latents=latents)

    def get_label_ids(self, label: str | int | list) -> list[int]:
        r"""The class indices of class names (or indices), one or a list, as diffusers' ``DiTPipeline.get_label_ids``
        gives them: ``pipe.get_label_ids(["Sneaker", "Bag"])`` -> ``[7, 8]``. A name that is not one of
        ``vae.config.class_names`` is refused, listing the valid ones."""
        labels = list(label) if isinstance(label, (list, tuple)) else [label]
        return self.vae.resolve_class_labels(labels, len(labels)).tolist()

    @torch.no_grad()
    def encode(self, images: ImageInput, generator: torch.Generator | list[torch.Generator] | None = None,
               class_labels: ClassLabels = None):
        r"""Each group's posterior for ``images`` (any form ``reconstruct`` takes), as the model's ``encode`` gives it:
        ``latent_means`` (every group at its posterior mean given the means above it: ``pipe(latents=latent_means)``
        decodes what ``reconstruct`` gives) and ``latents`` (one posterior sample, drawn from ``generator``).
        ``class_labels`` (class-conditional models): the images' class, one for all or one per image; None: the
        null class (then ``pipe(latents=latent_means)`` decodes what ``reconstruct`` gives; with a class, pass the
        same ``class_labels`` to both)."""
        x = self._preprocess(images)
        _check_generators(generator, x.shape[0])
        labels = self.vae.resolve_class_labels(class_labels, x.shape[0])
        out = self.vae.encode(x.to(self._execution_device), labels, generator=generator)
        self.maybe_free_model_hooks()
        return out

    @torch.no_grad()
    def interpolate(self, image_a: ImageInput, image_b: ImageInput, num_steps: int = 8, output_type: str = "pil",
                    return_dict: bool = True, class_labels: int | str | None = None,
                    crop_to_source: bool = True) -> HierarchicalVAEPipelineOutput | tuple:
        r"""``num_steps`` images along the spherical interpolation (``slerp``), group by group, between the posterior
        means of two images; the first and last decode the two images' own latents, as ``reconstruct`` does.
        ``class_labels`` (class-conditional models): one class (index or name) to encode and decode with; None: the
        null class. ``crop_to_source``: as in ``__call__`` (the data's own size by default)."""
        if num_steps < 2:
            raise ValueError(f"num_steps must be >= 2 (the two ends included), got {num_steps}")
        if class_labels is not None and not isinstance(class_labels, (int, str)):
            raise ValueError(f"interpolate takes one class (an index or a name) for both images, got {class_labels!r}")
        a = self.encode(image_a, class_labels=class_labels).latent_means
        b = self.encode(image_b, class_labels=class_labels).latent_means
        if a[0].shape[0] != 1 or b[0].shape[0] != 1:
            raise ValueError(f"interpolate takes one image at each end, got {a[0].shape[0]} and {b[0].shape[0]}")
        t = torch.linspace(0, 1, num_steps)
        latents = [slerp(za.expand(num_steps, *za.shape[1:]), zb.expand(num_steps, *zb.shape[1:]), t)
                   for za, zb in zip(a, b)]
        return self(batch_size=num_steps, latents=latents, class_labels=class_labels, output_type=output_type,
                    return_dict=return_dict, crop_to_source=crop_to_source)

    @torch.no_grad()
    def reconstruct(
        self,
        images: ImageInput,
        generator: torch.Generator | None = None,
        use_posterior_mean: bool = True,
        output_type: str = "pil",
        class_labels: ClassLabels = None,
        crop_to_source: bool = True,
    ) -> PIL.Image.Image | np.ndarray | torch.Tensor:
        r"""Encode ``images`` and decode them again.

        Args:
            images: PIL images, a numpy array (N, H, W, C) in [0, 1], or a tensor: ``uint8`` in {0..255} or float in
                [-1, 1], shaped (N, C, H, W); channels as in the model's config, height and width the data's own
                (``source_size``: zero-padded as in training) or the model's ``sample_size``.
            generator: drives the posterior samples when ``use_posterior_mean`` is False (a list: one per image).
            use_posterior_mean: every group at its posterior mean (True) or one sample of q (False).
            output_type: `"pil"`, `"np"` or `"pt"`.
            class_labels: (class-conditional models) the images' class, one index or name for all or a list with one
                per image, used to encode and to decode; None: the null class.
            crop_to_source: the reconstructions at the data's own size (True, as in ``__call__``) or the padded
                square the model decodes (False).
        """
        x = self._preprocess(images)
        _check_generators(generator, x.shape[0])
        labels = self.vae.resolve_class_labels(class_labels, x.shape[0])
        params = self.vae.reconstruct_parameters(x.to(self._execution_device), generator=generator,
                                                 use_posterior_mean=use_posterior_mean, class_labels=labels)
        image = self._output_size(self.vae.decode_image(params).float(), crop_to_source)
        self.maybe_free_model_hooks()
        return self.image_processor.postprocess(image, output_type=output_type)

    def _output_size(self, images: torch.Tensor, crop_to_source: bool) -> torch.Tensor:
        """Decoded images ``(N, C, sample_size, sample_size)`` at the data's own size (the model's ``source_size``)
        when ``crop_to_source``, where the data layer put them inside the padded square; else as decoded."""
        region = self.vae.source_region
        return region.crop(images) if crop_to_source and region is not None else images

    def _preprocess(self, images: ImageInput) -> torch.Tensor:
        """Images of any accepted form -> a tensor the model takes (``uint8`` as is, otherwise floats in [-1, 1]), at
        the data's own size or the model's (the model pads the first and refuses other sizes, ``vae.to_uint8``)."""
        if isinstance(images, torch.Tensor):
            return images
        channels = self.vae.config.in_channels
        processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False, do_normalize=True,
                                      do_convert_grayscale=channels == 1, do_convert_rgb=channels == 3)
        return processor.preprocess(images)
