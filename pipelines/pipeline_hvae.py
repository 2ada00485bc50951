"""HierarchicalVAEPipeline: unconditional sampling from a ``HierarchicalVAEModel`` (with a temperature per latent
group), and reconstruction of given images.

Imports only torch and diffusers (the model arrives as a registered component), so a published model folder
can carry this file as remote code.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from diffusers.image_processor import VaeImageProcessor
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list


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


def _per_image(function, generator, *tensors):
    """``function(*tensors, generator)`` for the batch, or, with a list of generators, image by image with its own
    generator, so that image i depends on ``generator[i]`` alone (as diffusers' ``randn_tensor`` draws)."""
    if not isinstance(generator, list):
        return function(*tensors, generator)
    return torch.cat([function(*(t[i : i + 1] for t in tensors), g) for i, g in enumerate(generator)])


class HierarchicalVAEPipeline(DiffusionPipeline):
    r"""Pipeline for unconditional image generation with a [`HierarchicalVAEModel`]: run the top-down path with each
    latent group drawn from its prior ``N(mu_p, (temperature * sigma_p)^2)``, then decode the pixels.

    Parameters:
        vae ([`HierarchicalVAEModel`]): the trained hierarchical VAE.
    """

    model_cpu_offload_seq = "vae"

    # hfgen sets these (hfgen.remote_code.install_hooks) when this file is imported as part of the hfgen package:
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
        temperature: float | list[float] = 1.0,
        latents: torch.Tensor | None = None,
        sample_pixels: bool = False,
        decode_batch_size: int = 256,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images.

        Args:
            batch_size (`int`, defaults to 1): number of images.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): makes sampling deterministic; a list
                holds one generator per image, and image i then depends on ``generator[i]`` alone (every group's
                latent and the pixel noise), as in diffusers' pipelines.
            temperature (`float` or `list[float]`, defaults to 1.0): scale of each group's prior standard deviation,
                one number for all groups or one per group (top group first); 0 takes the prior mean.
            latents (`torch.Tensor`, *optional*): the top group's latent z_1, ``(batch_size, *vae.group_shapes()[0])``;
                drawn at the top group's temperature when not given. With a fixed ``latents`` and temperature 0 for
                the other groups the images are deterministic.
            sample_pixels (`bool`, defaults to False): show one draw from p(x | z) instead of its mean.
            decode_batch_size (`int`, defaults to 256): images generated at a time (bounds memory).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.
        """
        temperatures = self.vae._temperatures(temperature)  # validates: one number or one per group, >= 0
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        _check_generators(generator, batch_size)
        device = self._execution_device
        top_shape = (batch_size, *self.vae.group_shapes()[0])
        if latents is None:
            mean, log_scale = self.vae.top_prior()
            eps = randn_tensor(top_shape, generator=generator, device=device, dtype=torch.float32)
            latents = mean + temperatures[0] * torch.exp(log_scale) * eps
        elif tuple(latents.shape) != top_shape:
            raise ValueError(f"latents must have shape {top_shape}, got {tuple(latents.shape)}")
        chunks = []
        for start in self.progress_bar(range(0, batch_size, decode_batch_size)):
            stop = min(start + decode_batch_size, batch_size)
            chunk_generator = _generators_for(generator, start, stop)
            z1 = latents[start:stop].to(device)
            params = self.vae.generate_parameters(z1.shape[0], generator=chunk_generator, temperature=temperatures,
                                                  top_latent=z1)
            if sample_pixels:
                chunks.append(_per_image(lambda p, g: self.vae.decode_image(p, sample_pixels=True, generator=g),
                                         chunk_generator, params))
            else:
                chunks.append(self.vae.decode_image(params))
        image = torch.cat(chunks).float()
        image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    @torch.no_grad()
    def reconstruct(
        self,
        images: ImageInput,
        generator: torch.Generator | None = None,
        use_posterior_mean: bool = True,
        output_type: str = "pil",
    ) -> PIL.Image.Image | np.ndarray | torch.Tensor:
        r"""Encode ``images`` and decode them again.

        Args:
            images: PIL images, a numpy array (N, H, W, C) in [0, 1], or a tensor: ``uint8`` in {0..255} or float in
                [-1, 1], shaped (N, C, H, W); height, width and channels must match the model's config.
            generator: drives the posterior samples when ``use_posterior_mean`` is False (a list: one per image).
            use_posterior_mean: every group at its posterior mean (True) or one sample of q (False).
            output_type: `"pil"`, `"np"` or `"pt"`.
        """
        if isinstance(images, torch.Tensor):
            x = images
        else:
            channels = self.vae.config.in_channels
            processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False, do_normalize=True,
                                          do_convert_grayscale=channels == 1, do_convert_rgb=channels == 3)
            x = processor.preprocess(images)
        _check_generators(generator, x.shape[0])
        params = self.vae.reconstruct_parameters(x.to(self._execution_device), generator=generator,
                                                 use_posterior_mean=use_posterior_mean)
        image = self.vae.decode_image(params).float()
        self.maybe_free_model_hooks()
        return self.image_processor.postprocess(image, output_type=output_type)
