"""LatentDiffusionPipeline: a diffusion prior over the latents of a frozen first stage (latent diffusion), with
classifier-free guidance for a class-conditional prior.

    z_T ~ N(0, I)  --UNet2DModel + scheduler-->  z_0 (diffused latents)  --first stage-->  image

The first stage is hfgen's ``VAEModel`` with a spatial latent (the UNet models its latents scaled by
``vae.config.scaling_factor``, unit variance on training data, as in diffusers' own latent pipelines), or hfgen's
``HierarchicalVAEModel``, whose top latent groups' prior the diffusion replaces (LSGM's join of a score model and an
NVAE-class hierarchical VAE): the UNet models their prior noise ``(z_i - mu_p,i) / sigma_p,i``, and the top-down path
draws the lower groups and decodes. A VAE is unconditional; a hierarchical VAE may be class-conditional with the
prior's classes (it then draws and decodes given the same class). A class-conditional UNet holds K + 1 class embeddings,
the last the null class (trained with label dropout); guidance follows diffusers' convention
``eps_null + s * (eps_y - eps_null)``.

Imports only torch and diffusers (and the guidance rules of ``pipeline_ddpm_conditional``, joined into this file
when a folder is saved), so a published folder can carry it as remote code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffusers import DDPMScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import UNet2DModel
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .pipeline_ddpm_conditional import (
    DEFAULT_GUIDANCE_RESCALE, DEFAULT_GUIDANCE_SCALE, ClassLabels, StepCallbackMixin, _check_generators,
    class_label_ids, guided_output, scheduler_step_kwargs,
)


@dataclass
class LatentDiffusionPipelineOutput(ImagePipelineOutput):
    """``images`` (PIL images, a numpy array or a tensor, as ``output_type`` says; with ``output_type="latent"``
    the denoised scaled latents ``z_0``) and ``latents``, the initial noise ``z_T`` the images were drawn from:
    ``pipe(latents=out.latents, ...)`` draws the same images with a deterministic sampler (DDIM, DPM-Solver++)."""

    latents: torch.Tensor = None


def is_hierarchical(vae: ModelMixin) -> bool:
    """Whether the first stage is a hierarchical VAE (latent groups, ``encode_prior_noise``) rather than a VAE with
    one spatial latent."""
    return hasattr(vae, "prior_noise_shape")


def check_first_stage(vae: ModelMixin) -> None:
    """Refuse a first stage that a diffusion prior cannot sit on (a VAE with a vector latent, without
    ``scaling_factor`` or class-conditional), each with a message naming what was expected. A hierarchical VAE needs
    no scaling factor: the diffusion models its top groups' prior noise ``(z - mu_p) / sigma_p``, which its own prior
    already puts at unit scale (see ``LatentDiffusionPipeline``); a class-conditional one takes a prior with the same
    classes (``diffused_latent_shape``)."""
    config = vae.config
    if is_hierarchical(vae):
        return
    if getattr(config, "num_classes", 0):
        raise ValueError(f"the VAE is class-conditional (num_classes={config.num_classes}); a latent diffusion takes "
                         f"a VAE trained without labels, and the prior carries the classes")
    if getattr(config, "latent_dim", None):
        raise ValueError(f"the VAE has a vector latent (latent_dim={config.latent_dim}); a latent diffusion needs a "
                         f"spatial latent (latent_dim None), e.g. a VAE trained with --preset small-spatial (or "
                         f"--latent_dim 0)")
    if getattr(config, "scaling_factor", None) is None:
        raise ValueError("the VAE has no scaling_factor in vae/config.json; expected one measured on its training "
                         "data (hfgen writes it at the end of VAE training: retrain, or set vae.register_to_config("
                         "scaling_factor=vae.latent_scaling_factor(train_images)))")


def diffused_latent_shape(vae: ModelMixin, unet: UNet2DModel) -> tuple[int, int, int]:
    """``check_first_stage``, and the shape of one image's latent the UNet models, refusing a UNet whose input is
    not the first stage's latent: a VAE's latent, or the prior noise of a hierarchical VAE's top G groups stacked
    along channels on one grid (``prior_noise_shape(G)``; G is the one whose shape the UNet takes)."""
    check_first_stage(vae)
    unet_shape = _unet_input_shape(unet)
    if is_hierarchical(vae):
        num_classes = int(vae.config.num_classes or 0)
        embeddings = unet.config.num_class_embeds or 0
        if num_classes and embeddings != num_classes + 1:
            raise ValueError(f"the hierarchical VAE is class-conditional with {num_classes} classes, but the UNet has "
                             f"num_class_embeds={unet.config.num_class_embeds}; expected a class-conditional prior "
                             f"with the same classes ({num_classes + 1} embeddings, the last the null class)")
        try:
            vae.prior_noise_groups(unet_shape)
        except ValueError as error:
            raise ValueError(f"the UNet takes inputs of shape {unet_shape} (in_channels, sample_size), which is not a "
                             f"prior trained on this hierarchical VAE's top groups: {error}") from None
        return unet_shape
    latent_shape = tuple(vae.latent_shape)
    if unet_shape != latent_shape:
        raise ValueError(f"the UNet takes inputs of shape {unet_shape} (in_channels, sample_size) but the VAE's latent "
                         f"has shape {latent_shape}; expected a prior trained on this VAE's latents")
    return latent_shape


def diffused_groups(vae: ModelMixin, unet: UNet2DModel) -> int:
    """G, the hierarchical VAE's top groups the UNet models (those whose stacked prior noise has the UNet's input
    shape; 0: a VAE first stage)."""
    return vae.prior_noise_groups(_unet_input_shape(unet)) if is_hierarchical(vae) else 0


def _unet_input_shape(unet: UNet2DModel) -> tuple[int, int, int]:
    """(in_channels, height, width) of one input of the UNet (``sample_size`` an int or a pair)."""
    size = unet.config.sample_size
    return (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))


def _per_image(function, generator, *tensors):
    """``function(*tensors, generator)`` for the batch, or, given a list of generators, image by image with its
    own, so that image i depends on ``generator[i]`` alone."""
    if not isinstance(generator, list):
        return function(*tensors, generator)
    return torch.cat([function(*(t[i : i + 1] for t in tensors), g) for i, g in enumerate(generator)])


class LatentDiffusionPipeline(StepCallbackMixin, DiffusionPipeline):
    r"""Pipeline for (class-conditional) image generation with a diffusion prior over a VAE's latents.

    The first stage is one of two kinds:

    - a VAE with one spatial latent z: the diffusion draws ``s z`` (``s``, the VAE config's ``scaling_factor``),
      and ``vae.decode(latents / s)`` gives the images;
    - a hierarchical VAE (LSGM's join): the diffusion replaces the prior of its top G latent groups (G =
      ``unet.in_channels / vae.config.latent_channels``; groups at its top resolution). It draws their prior noise
      ``eps_i = (z_i - mu_p,i) / sigma_p,i``, stacked along channels; the top-down path then sets
      ``z_i = mu_p,i + sigma_p,i * eps_i`` group by group, draws the groups below from their own conditionals
      ``p(z_i | z_<i)`` at ``temperature``, and the decoder gives the pixels. Under the hierarchical VAE's own prior
      eps ~ N(0, I): a new diffusion prior (zero output layer) is that prior exactly.

    Parameters:
        vae ([`ModelMixin`]): the frozen first stage: hfgen's ``VAEModel`` with a spatial latent and a
            ``scaling_factor`` in its config (unconditional), or hfgen's ``HierarchicalVAEModel`` (unconditional, or
            class-conditional with the prior's classes).
        unet ([`UNet2DModel`]): the denoiser over the diffused latents (``latent_shape``); ``num_class_embeds =
            K + 1`` for a class-conditional prior (index K: the null class). Its output is the scheduler's prediction, followed by the variance channels when the
            scheduler's ``variance_type`` is ``learned_range``.
        scheduler ([`SchedulerMixin`]): the sampler: the folder's [`DDPMScheduler`] (the training schedule), or one
            made from its config, e.g. ``DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)``.
        class_names (`list[str]`, *optional*): the K class names in index order (``model_index.json``).
    """

    model_cpu_offload_seq = "unet->vae"
    # callback_on_step_end reads and may replace ``latents``: here the scaled latents being denoised (z_t)

    # hfgen fills these (hfgen.pipeline_hooks.install_hooks); in the copy a published folder carries they stay None
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

    def __init__(self, vae: ModelMixin, unet: UNet2DModel, scheduler: SchedulerMixin,
                 class_names: list[str] | None = None):
        super().__init__()
        diffused_latent_shape(vae, unet)  # refuses a first stage and a UNet that do not fit together
        num_classes = (unet.config.num_class_embeds or 1) - 1
        if class_names is not None:
            class_names = [str(name) for name in class_names]
            if len(class_names) != num_classes:
                raise ValueError(f"class_names holds {len(class_names)} names, but the unet has {num_classes} classes "
                                 f"(num_class_embeds={unet.config.num_class_embeds}, the last being the null class); "
                                 f"expected one name per class")
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)
        self.register_to_config(class_names=class_names)  # a setting: self.config.class_names
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False, do_normalize=True)

    @property
    def num_classes(self) -> int:
        """K, the number of classes of a class-conditional prior (0: unconditional)."""
        return (self.unet.config.num_class_embeds or 1) - 1

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image's diffused latent: a VAE's latent, or the stacked prior noise of a
        hierarchical VAE's top ``diffused_groups`` groups."""
        return diffused_latent_shape(self.vae, self.unet)

    @property
    def diffused_groups(self) -> int:
        """G, the hierarchical VAE's top groups the diffusion models (0: a VAE first stage)."""
        return diffused_groups(self.vae, self.unet)

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        r"""The class indices of class names, as ``class_labels`` takes them (a name is matched exactly, else
        case-insensitively when that is unambiguous)."""
        names = [label] if isinstance(label, str) else list(label)
        return class_label_ids(names, self.config.class_names, self.num_classes, len(names)).tolist()

    def group_temperatures(self, temperature: float | list[float] = 1.0) -> list[float] | None:
        """The prior temperature of every group of a hierarchical first stage: 1 for the diffused ones, then
        ``temperature`` (one number, or one per lower group, top first, each >= 0); None for a VAE first stage,
        which refuses any temperature but 1."""
        if not is_hierarchical(self.vae):
            if temperature != 1.0:
                raise ValueError(f"temperature={temperature!r} sets the lower latent groups of a hierarchical VAE; "
                                 f"this first stage is a VAE with one latent")
            return None
        num_groups = self.diffused_groups
        lower = self.vae.num_groups - num_groups
        given = [temperature] * lower if isinstance(temperature, (int, float)) else list(temperature)
        if len(given) != lower or any(float(t) < 0 for t in given):
            raise ValueError(f"temperature must be one number >= 0 or a list of {lower} (one per latent group below "
                             f"the {num_groups} the diffusion draws), got {temperature}")
        return [1.0] * num_groups + [float(t) for t in given]

    def decode_latents(self, latents: torch.Tensor, temperature: float | list[float] = 1.0,
                       sample_pixels: bool = False, generator=None, class_ids: torch.Tensor | None = None,
                       guidance_scale: float = 1.0) -> torch.Tensor:
        """Images in [-1, 1] for diffused latents: a VAE's ``vae.decode(latents / scaling_factor).sample``; a
        hierarchical VAE's top-down path from the prior noise of its top groups, the groups below drawn at
        ``temperature`` (``group_temperatures``). ``sample_pixels``: one draw of p(x | z) instead of its mean
        (``generator``: one, or one per image). ``class_ids`` ``(batch,)``: a class-conditional hierarchical VAE's
        classes (K: the null class; None: the null class for every image), whose lower groups' prior means are
        guided at ``guidance_scale`` (``HierarchicalVAEModel.generate_parameters``)."""
        temperatures = self.group_temperatures(temperature)
        vae = self.vae
        conditional = bool(getattr(vae.config, "num_classes", 0)) and class_ids is not None
        if class_ids is None:  # a stand-in, so that a generator list slices one tensor per image either way
            class_ids = torch.zeros(latents.shape[0], dtype=torch.int64, device=latents.device)
        if temperatures is None:
            def decode(z, ids, image_generator):
                return vae.decode(z / vae.config.scaling_factor, sample_pixels=sample_pixels,
                                  generator=image_generator).sample
        else:
            def decode(noise, ids, image_generator):
                params = vae.generate_parameters(noise.shape[0], generator=image_generator, temperature=temperatures,
                                                 prior_noise=noise, class_labels=ids if conditional else None,
                                                 guidance_scale=guidance_scale if conditional else 1.0)
                return vae.decode_image(params, sample_pixels=sample_pixels, generator=image_generator)
        # a generator list: image by image, where a draw is made (lower groups, pixels); else the whole batch
        drawn = sample_pixels or temperatures is not None
        return _per_image(decode, generator if drawn else None, latents, class_ids)

    def _step_output(self, output: torch.Tensor, channels: int) -> torch.Tensor:
        """The network output as the scheduler takes it: with variance channels for a DDPM scheduler that learns
        them, the prediction channels only for any other sampler."""
        if output.shape[1] == channels:
            return output
        config = self.scheduler.config
        if isinstance(self.scheduler, DDPMScheduler) and config.variance_type in ("learned", "learned_range"):
            return output
        if getattr(config, "variance_type", None) in ("learned", "learned_range"):
            raise ValueError(f"{type(self.scheduler).__name__} has variance_type={config.variance_type!r}, which it "
                             f"cannot use with {channels}-channel latents; make it with "
                             f"{type(self.scheduler).__name__}.from_config(pipe.scheduler.config, variance_type=None)")
        return output[:, :channels]

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: ClassLabels = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        guidance_rescale: float = DEFAULT_GUIDANCE_RESCALE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        crop_to_source: bool = True,
        temperature: float | list[float] = 1.0,
        sample_pixels: bool = False,
        first_stage_guidance_scale: float | None = None,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict] | PipelineCallback
        | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> LatentDiffusionPipelineOutput | tuple:
        r"""Generate images (of given classes, for a class-conditional prior).

        Args:
            batch_size (`int`, defaults to 1): number of images when ``class_labels`` is one class or None.
            class_labels (`int`, `str`, `list` or `torch.Tensor`, *optional*): one class index or name for every
                image, or a list of them (one image each; nested lists and tensors are flattened, as ``DiTPipeline``
                takes them). None: the null class (unconditional samples).
            guidance_scale (`float`, defaults to 1): ``s >= 0`` in ``eps_null + s * (eps_y - eps_null)``; 1 is the
                conditional prior (one pass), 0 the unconditional one; other values need ``class_labels``. A
                class-conditional hierarchical VAE first stage guides its lower groups' prior means at the same
                scale (``mu_null + s * (mu_y - mu_null)``), or at ``first_stage_guidance_scale``.
            guidance_rescale (`float`, defaults to 0): Lin et al. (2023)'s rescale ``phi`` in [0, 1].
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): one, or one per image (image i
                then depends on ``generator[i]`` alone).
            num_inference_steps (`int`, *optional*): sampling steps, at most the scheduler's ``num_train_timesteps``
                T; default ``default_inference_steps``: T for the DDPM sampler, 50 (and fewer than T) for others.
            latents (`torch.Tensor`, *optional*): the initial noise ``z_T``, shape ``(batch, *latent_shape)``
                (e.g. ``out.latents`` of an earlier call); drawn with ``generator`` when not given.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"`, or `"latent"` (the denoised diffused
                latents, not decoded: a VAE's scaled latents, a hierarchical VAE's top groups' prior noise).
            return_dict (`bool`, defaults to True): return a [`LatentDiffusionPipelineOutput`] instead of a tuple.
            crop_to_source (`bool`, defaults to True): decoded images at the data's own size (the VAE config's
                ``source_size``: 28x28 for Fashion-MNIST), as the data set has them; False: the padded
                ``sample_size`` square the VAE decodes (32x32). A VAE without ``source_size`` gives its
                ``sample_size`` either way.
            temperature (`float` or `list[float]`, defaults to 1.0): a hierarchical VAE first stage only: the prior
                temperature of the latent groups below the diffused ones (one number, or one per group, top first);
                1 draws them from the model.
            sample_pixels (`bool`, defaults to False): decode one draw of p(x | z) instead of its mean (a decoder
                in pixel passes: each pass drawn given the ones before, rather than the greedy chain of pass means).
            first_stage_guidance_scale (`float`, *optional*): a class-conditional hierarchical VAE first stage only:
                the guidance scale of its lower groups' prior means, when it should differ from ``guidance_scale``
                (None: the same).
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*): called
                after each step as ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` with the
                tensors named in ``callback_on_step_end_tensor_inputs``; the dict it returns may replace them.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): the tensors the callback
                gets, from ``pipe._callback_tensor_inputs``.

        Returns:
            [`LatentDiffusionPipelineOutput`] or `tuple`: ``(images, latents)``.
        """
        self.group_temperatures(temperature)  # refused before any step, not after the last
        first_stage_scale = guidance_scale if first_stage_guidance_scale is None else first_stage_guidance_scale
        if first_stage_guidance_scale is not None and not getattr(self.vae.config, "num_classes", 0):
            raise ValueError(f"first_stage_guidance_scale={first_stage_guidance_scale!r} guides a class-conditional "
                             f"hierarchical VAE first stage; this one takes no class (guidance_scale guides the "
                             f"prior)")
        if is_hierarchical(self.vae) and self.vae.config.num_classes:
            self.vae.check_guidance_scale(first_stage_scale, None)  # a bad scale refused before any step
        num_inference_steps, tensor_names = self._check_call(
            batch_size, num_inference_steps, class_labels, guidance_scale, guidance_rescale, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        conditional = self.num_classes > 0
        if latents is not None and class_labels is None and batch_size == 1:
            batch_size = latents.shape[0]
        class_ids = class_label_ids(class_labels, self.config.class_names, self.num_classes, batch_size,
                                    device=device)
        guided = class_labels is not None  # without labels: the null class, one pass
        self._guidance_scale = guidance_scale
        batch = class_ids.shape[0]
        _check_generators(generator, batch)
        shape = (batch, *self.latent_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (batch, *pipe.latent_shape), got "
                             f"{tuple(latents.shape)}")
        initial = latents.to(device=device, dtype=self.unet.dtype)
        latents = initial * self.scheduler.init_noise_sigma

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        step_kwargs = scheduler_step_kwargs(self.scheduler, generator)
        channels = shape[1]
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = self.scheduler.scale_model_input(latents, t)
            if conditional:
                scale = float(self._guidance_scale) if guided else 1.0
                output = guided_output(self.unet, model_input, t, class_ids, self.num_classes, scale,
                                       float(guidance_rescale))
            else:
                output = self.unet(model_input, t).sample
            latents = self.scheduler.step(self._step_output(output, channels), t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                available = {"latents": latents}
                outputs = callback_on_step_end(self, i, t, {name: available[name] for name in tensor_names})
                latents = outputs.pop("latents", latents)

        if output_type == "latent":
            images = latents
        else:
            # a class-conditional hierarchical VAE: its lower groups guided at the prior's scale, or their own
            images = self.decode_latents(latents, temperature, sample_pixels, generator,
                                         class_ids if guided else None,
                                         float(first_stage_scale) if guided else 1.0).float()
            region = self.vae.source_region  # where the data's own images lie in the square (None: all of it)
            if crop_to_source and region is not None:
                images = region.crop(images)
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, initial)
        return LatentDiffusionPipelineOutput(images=images, latents=initial)
