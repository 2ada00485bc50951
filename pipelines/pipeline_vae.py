"""VAEPipeline: sampling from a ``VAEModel`` (unconditional, or of given classes for a class-conditional model),
and reconstruction of given images.

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
class VAEPipelineOutput(ImagePipelineOutput):
    """Output of [`VAEPipeline`].

    images: the images (PIL, numpy or torch, per ``output_type``).
    latents: the latents z they were decoded from, ``(batch, *vae.latent_shape)``; ``pipe(latents=latents)``
        decodes them again.
    """

    latents: torch.Tensor = None


def _per_image(function, generator, *tensors):
    """``function(*tensors, generator)`` for the batch, or, with a list of generators, image by image with its own
    generator, so that image i depends on ``generator[i]`` alone (as diffusers' ``randn_tensor`` draws)."""
    if not isinstance(generator, list):
        return function(*tensors, generator)
    return torch.cat([function(*(t[i : i + 1] for t in tensors), g) for i, g in enumerate(generator)])


class VAEPipeline(DiffusionPipeline):
    r"""Pipeline for image generation with a [`VAEModel`]: draw ``z ~ N(0, temperature^2 I)`` and decode it. A
    class-conditional model draws ``z`` from the prior of the requested class and decodes it with that class
    (``class_labels``: class names or indices; none given: the null class, i.e. unconditional samples).

    Parameters:
        vae ([`VAEModel`]): the trained VAE.
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
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        temperature: float = 1.0,
        latents: torch.Tensor | None = None,
        class_labels: ClassLabels = None,
        sample_pixels: bool = False,
        decode_batch_size: int = 256,
        output_type: str = "pil",
        return_dict: bool = True,
        crop_to_source: bool = True,
    ) -> VAEPipelineOutput | tuple:
        r"""Generate images.

        Args:
            batch_size (`int`, defaults to 1): number of images.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): makes sampling deterministic; a list
                holds one generator per image, and image i then depends on ``generator[i]`` alone (its latent and its
                pixel noise), as in diffusers' pipelines.
            temperature (`float`, defaults to 1.0): scale of the prior's standard deviation; 0 decodes z = 0.
            latents (`torch.Tensor`, *optional*): the latents to decode, ``(batch_size, *vae.latent_shape)`` (for
                instance the ``latents`` of an earlier output, or ``encode``'s); drawn when not given.
            class_labels (`int`, `str`, `list` or `torch.Tensor`, *optional*): the class of the images (a
                class-conditional model only): one class index or name (``vae.config.class_names``) for every image,
                or a list with one per image (``batch_size`` then left at 1 or equal to its length). None: the null
                class, the model's unconditional samples. A name that is not one of the model's is refused.
            sample_pixels (`bool`, defaults to False): show one draw from p(x | z) instead of its mean
                (the mean is what sample grids usually show; the draw is a true sample of the model).
            decode_batch_size (`int`, defaults to 256): latents decoded at a time (bounds memory).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, defaults to True): return a [`VAEPipelineOutput`] (images and the latents they
                were decoded from) instead of the tuple ``(images, latents)``.
            crop_to_source (`bool`, defaults to True): return the images at the data's own size (``source_size`` in
                the model config: 28x28 for Fashion-MNIST), as the data set has them; False: the padded
                ``sample_size`` square the model generates (32x32). A model without ``source_size`` (trained on
                unpadded data, or before hfgen recorded it) gives its ``sample_size`` either way.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer (the number of images), got {batch_size!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        labels = self.vae.resolve_class_labels(class_labels, batch_size)
        if labels is not None:
            batch_size = labels.shape[0]
        _check_generators(generator, batch_size)
        if latents is None:
            latents = self.vae.sample_latents(batch_size, generator=generator, temperature=temperature,
                                              class_labels=labels)
        else:
            expected = (batch_size, *self.vae.latent_shape)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents must have shape {expected} (batch_size, *vae.latent_shape), got "
                                 f"{tuple(latents.shape)}")
            latents = latents.to(device=self._execution_device, dtype=torch.float32)
        chunks = []
        starts = range(0, batch_size, decode_batch_size)
        # a bar only when decoding takes several chunks (one chunk: nothing worth a bar)
        for start in self.progress_bar(starts) if len(starts) > 1 else starts:
            stop = min(start + decode_batch_size, batch_size)
            z = latents[start:stop]
            y = None if labels is None else labels[start:stop]
            if sample_pixels and y is None:
                chunks.append(_per_image(lambda z, g: self.vae.decode(z, sample_pixels=True, generator=g).sample,
                                         _generators_for(generator, start, stop), z))
            elif sample_pixels:
                chunks.append(_per_image(lambda z, y, g: self.vae.decode(z, y, sample_pixels=True, generator=g).sample,
                                         _generators_for(generator, start, stop), z, y))
            else:
                chunks.append(self.vae.decode(z, y).sample)
        image = self._output_size(torch.cat(chunks).float(), crop_to_source)
        image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image, latents)
        return VAEPipelineOutput(images=image, latents=latents)

    def get_label_ids(self, label: str | int | list) -> list[int]:
        r"""The class indices of class names (or indices), one or a list, as diffusers' ``DiTPipeline.get_label_ids``
        gives them: ``pipe.get_label_ids(["Sneaker", "Bag"])`` -> ``[7, 8]``. A name that is not one of
        ``vae.config.class_names`` is refused, listing the valid ones."""
        labels = list(label) if isinstance(label, (list, tuple)) else [label]
        return self.vae.resolve_class_labels(labels, len(labels)).tolist()

    @torch.no_grad()
    def encode(
        self, images: ImageInput, generator: torch.Generator | list[torch.Generator] | None = None,
        use_posterior_mean: bool = True, class_labels: ClassLabels = None,
    ) -> torch.Tensor:
        r"""The latents of ``images`` (any form ``reconstruct`` takes): the posterior means, or one sample of
        q(z | x) each (``use_posterior_mean=False``, drawn from ``generator``). ``pipe(latents=...)`` decodes them.
        ``class_labels`` (class-conditional models): the images' class, one for all or one per image; None: the
        null class."""
        x = self._to_model_range(images)
        _check_generators(generator, x.shape[0])
        labels = self.vae.resolve_class_labels(class_labels, x.shape[0])
        posterior = self.vae.encode(x.to(device=self._execution_device, dtype=self.vae.dtype), labels).latent_dist
        latents = posterior.mode() if use_posterior_mean else posterior.sample(generator=generator)
        self.maybe_free_model_hooks()
        return latents

    @torch.no_grad()
    def interpolate(self, image_a: ImageInput, image_b: ImageInput, num_steps: int = 8, output_type: str = "pil",
                    return_dict: bool = True, class_labels: int | str | None = None,
                    crop_to_source: bool = True) -> VAEPipelineOutput | tuple:
        r"""``num_steps`` images along the spherical interpolation (``slerp``) between the latents (posterior means)
        of two images; the first and last decode the two images' own latents, as ``reconstruct`` does.
        ``class_labels`` (class-conditional models): one class (index or name) to encode and decode with; None: the
        null class. ``crop_to_source``: as in ``__call__`` (the data's own size by default)."""
        if num_steps < 2:
            raise ValueError(f"num_steps must be >= 2 (the two ends included), got {num_steps}")
        if class_labels is not None and not isinstance(class_labels, (int, str)):
            raise ValueError(f"interpolate takes one class (an index or a name) for both images, got {class_labels!r}")
        a, b = self.encode(image_a, class_labels=class_labels), self.encode(image_b, class_labels=class_labels)
        if a.shape[0] != 1 or b.shape[0] != 1:
            raise ValueError(f"interpolate takes one image at each end, got {a.shape[0]} and {b.shape[0]}")
        t = torch.linspace(0, 1, num_steps)
        latents = slerp(a.expand(num_steps, *a.shape[1:]), b.expand(num_steps, *b.shape[1:]), t)
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
            generator: drives the posterior sample when ``use_posterior_mean`` is False (a list: one per image).
            use_posterior_mean: decode the posterior mean (True) or one sample of q(z | x) (False).
            output_type: `"pil"`, `"np"` or `"pt"`.
            class_labels: (class-conditional models) the images' class, one index or name for all or a list with one
                per image, used to encode and to decode; None: the null class.
            crop_to_source: the reconstructions at the data's own size (True, as in ``__call__``) or the padded
                square the model decodes (False).
        """
        x = self._to_model_range(images)
        _check_generators(generator, x.shape[0])
        labels = self.vae.resolve_class_labels(class_labels, x.shape[0])
        posterior = self.vae.encode(x.to(device=self._execution_device, dtype=self.vae.dtype), labels).latent_dist
        z = posterior.mode() if use_posterior_mean else posterior.sample(generator=generator)
        image = self._output_size(self.vae.decode(z, labels).sample.float(), crop_to_source)
        return self.image_processor.postprocess(image, output_type=output_type)

    def _output_size(self, images: torch.Tensor, crop_to_source: bool) -> torch.Tensor:
        """Decoded images ``(N, C, sample_size, sample_size)`` at the data's own size (the model's ``source_size``)
        when ``crop_to_source``, where the data layer put them inside the padded square; else as decoded."""
        region = self.vae.source_region
        return region.crop(images) if crop_to_source and region is not None else images

    def _to_model_range(self, images: ImageInput) -> torch.Tensor:
        """Images of any accepted form -> float (N, C, sample_size, sample_size) in [-1, 1], checked against the model
        config (images at the data's own size are zero-padded as in training)."""
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
            x = images.float() * (2.0 / 255.0) - 1.0
        elif isinstance(images, torch.Tensor):
            x = images.float()
        else:
            channels = self.vae.config.in_channels
            processor = VaeImageProcessor(
                vae_scale_factor=1, do_resize=False, do_normalize=True,
                do_convert_grayscale=channels == 1, do_convert_rgb=channels == 3,
            )
            x = processor.preprocess(images)
        # Pads the data's own size, rounds to the 8-bit grid, refuses other shapes (naming those it takes).
        return self.vae.to_uint8(x).float() * (2.0 / 255.0) - 1.0
