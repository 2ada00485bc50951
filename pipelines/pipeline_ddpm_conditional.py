"""ClassConditionalDDPMPipeline: class-conditional sampling from a DDPM, with classifier-free guidance.

Imports only torch and diffusers (the network is diffusers' ``UNet2DModel`` with class embeddings), so a published
model folder can carry this file as remote code.

The network holds K + 1 class embeddings: indices ``0 .. K-1`` are the classes it was trained on, in the order of
the pipeline's ``class_names``, and index ``K`` is the *null class*, the network without a label (it was trained
with label dropout, so it is also an unconditional model).

Classifier-free guidance (Ho & Salimans 2022), in diffusers' convention for ``guidance_scale`` ``s``::

    eps = eps_null + s * (eps_y - eps_null)

``s = 1`` is the conditional model (one network pass per step), ``s = 0`` the unconditional, null-class model (one
pass, with the null class), ``s > 1`` strengthens the class at the cost of diversity. The paper writes the same
combination as ``(1 + w) * eps_y - w * eps_null``: its guidance strength ``w`` is ``s - 1``.

Large scales over-brighten (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps Are Flawed",
sec. 3.4): the guided prediction's spread grows with ``s``. ``guidance_rescale`` ``phi`` (diffusers' name for it in
its Stable Diffusion pipelines) scales each image's guided prediction back to the standard deviation of its
conditional one and mixes the two: ``phi * rescaled + (1 - phi) * guided``; 0 (the default) is plain guidance.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence

import torch

from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import UNet2DModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

#: ``guidance_scale`` when none is given: 1.0, the conditional model itself (no guidance)
DEFAULT_GUIDANCE_SCALE = 1.0
#: ``guidance_rescale`` when none is given: 0.0, plain classifier-free guidance
DEFAULT_GUIDANCE_RESCALE = 0.0

ClassLabels = int | str | Sequence[int | str] | torch.Tensor | None

#: the key of a UNet's config where hfgen records ``[height, width]`` of the data's own images, which training
#: zero-padded to the UNet's ``sample_size`` (Fashion-MNIST: ``[28, 28]`` in 32x32). ``UNet2DModel`` has no such
#: argument; diffusers keeps a key with a leading underscore through saving and loading, without its "not expected
#: and will be ignored" warning, so a stock ``DDPMPipeline`` folder carries it too.
SOURCE_SIZE_KEY = "_source_size"


def crop_to_source_size(images: torch.Tensor, source_size: Sequence[int] | None) -> torch.Tensor:
    """``(..., sample_size, sample_size)`` images -> the data's own ``source_size`` ``[height, width]`` from where
    training's zero padding put it (even padding, an odd remainder at the bottom / right: the rule of
    ``hfgen.models.likelihoods.SourceRegion``, written again here because this file is published alone). None:
    the images unchanged."""
    if source_size is None:
        return images
    height, width = (int(value) for value in source_size)
    top, left = (images.shape[-2] - height) // 2, (images.shape[-1] - width) // 2
    return images[..., top : top + height, left : left + width]


# The label resolution below is a copy of hfgen.models.labels (same rules, same messages): this file is published
# alone in a model folder and may import only torch and diffusers. Change both together.
def class_label_ids(class_labels: ClassLabels, class_names: Sequence[str] | None, num_classes: int,
                    batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Class indices, shape ``(n,)`` int64, for ``class_labels``:

    * ``None``: the null class ``num_classes`` for each of ``batch_size`` images (unconditional samples);
    * one class, as an index or a name (or a 0-d tensor): that class for each of ``batch_size`` images;
    * a list, tuple or tensor of indices and/or names, nested or not (flattened in order, as diffusers'
      ``DiTPipeline`` takes ``class_labels``: ``[[1], [1]]`` is ``[1, 1]``): one image per label; ``batch_size`` must
      then be 1 (the pipelines' default) or the number of labels.

    A name must be one of ``class_names``; an index must be in ``0 .. num_classes - 1``. A model trained without
    labels (``num_classes == 0``) takes ``None`` only. Every refusal names the value and what was expected.
    """
    if class_labels is None:
        return torch.full((batch_size,), num_classes, dtype=torch.int64, device=device)
    if num_classes <= 0:
        raise ValueError(f"class_labels={_short(class_labels)} was given, but this model was trained without class "
                         f"labels; train it with --class_conditional to sample a given class")
    names = list(class_names or [str(index) for index in range(num_classes)])
    values = _flat_labels(class_labels)
    if values is None:
        raise ValueError(f"class_labels={_short(class_labels)} is a {type(class_labels).__name__}; expected a class "
                         f"index (int), a class name (str), or a list or tensor of them")
    if isinstance(class_labels, (int, str)) or getattr(class_labels, "ndim", None) == 0:
        values = values * batch_size
    else:
        if not values:
            raise ValueError("class_labels is an empty list; expected at least one class index or name")
        if batch_size not in (1, len(values)):
            raise ValueError(f"class_labels holds {len(values)} labels but batch_size is {batch_size}; pass one label "
                             f"per image (batch_size left at 1 or equal to the number of labels), or one label for all")
    ids = [_class_index(value, names, num_classes) for value in values]
    return torch.tensor(ids, dtype=torch.int64, device=device)


def _flat_labels(class_labels) -> list | None:
    """The labels of ``class_labels`` in order, nested lists, tuples and tensors (or numpy arrays) flattened; None
    for a value of any other type. The labels themselves are checked by ``_class_index``."""
    if isinstance(class_labels, (int, str)):
        return [class_labels]
    if isinstance(class_labels, torch.Tensor) or hasattr(class_labels, "tolist") and hasattr(class_labels, "ndim"):
        class_labels = class_labels.tolist()  # a 0-d tensor gives its number, any other a nested list
        return [class_labels] if not isinstance(class_labels, list) else _flat_labels(class_labels)
    if isinstance(class_labels, (list, tuple)):
        flat = []
        for value in class_labels:
            nested = isinstance(value, (list, tuple, torch.Tensor)) or (
                hasattr(value, "tolist") and hasattr(value, "ndim"))
            flat.extend(_flat_labels(value) if nested else [value])
        return flat
    return None


def _class_index(value, names: list[str], num_classes: int) -> int:
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        folded = [name.casefold() for name in names]
        if value.casefold() in folded and folded.count(value.casefold()) == 1:
            return folded.index(value.casefold())
        raise ValueError(f"class {value!r} is not one of this model's classes; expected one of "
                         f"{', '.join(map(repr, names))} (or an index 0..{num_classes - 1})")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"class label {value!r} is a {type(value).__name__}; expected a class index (int) or a "
                         f"class name (str)")
    if not 0 <= value < num_classes:
        raise ValueError(f"class index {value} is out of range; this model has {num_classes} classes "
                         f"(0..{num_classes - 1}: {', '.join(map(repr, names))})")
    return value


def _short(value) -> str:
    text = repr(value.tolist() if isinstance(value, torch.Tensor) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_generators(generator, batch_size: int) -> None:
    """A list of generators must hold one per image (diffusers' pipelines' message)."""
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"You have passed a list of generators of length {len(generator)}, but requested an effective batch"
            f" size of {batch_size}. Make sure the batch size matches the length of the generators."
        )


def rescale_guided_prediction(guided: torch.Tensor, conditional: torch.Tensor,
                              guidance_rescale: float) -> torch.Tensor:
    """``guidance_rescale * rescaled + (1 - guidance_rescale) * guided``, where ``rescaled`` is ``guided`` scaled,
    image by image, to the standard deviation (over channels and pixels) of the ``conditional`` prediction (Lin et
    al. 2023, eqs. 15-16)."""
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1.0 - guidance_rescale) * guided


def guided_output(unet, sample: torch.Tensor, timestep: torch.Tensor, class_ids: torch.Tensor, null_class: int,
                  guidance_scale: float, guidance_rescale: float = DEFAULT_GUIDANCE_RESCALE) -> torch.Tensor:
    """The output of a class-conditional ``unet`` that a scheduler steps with: the plain pass for ``class_ids`` at
    ``s = 1``, and otherwise the conditional and null-class inputs as one batch, combined as
    ``out_null + s * (out_y - out_null)`` on the prediction channels (then rescaled by ``guidance_rescale``);
    learned variance channels (beyond the sample's channels) are the conditional pass's. ``s = 0`` is the plain
    null-class pass."""
    null_ids = torch.full_like(class_ids, null_class)
    if guidance_scale in (0.0, 1.0):
        return unet(sample, timestep, class_labels=class_ids if guidance_scale == 1.0 else null_ids).sample
    output = unet(torch.cat([sample, sample]), timestep, class_labels=torch.cat([class_ids, null_ids])).sample
    conditional, unconditional = output.chunk(2)
    channels = sample.shape[1]
    conditional_prediction = conditional[:, :channels]
    prediction = unconditional[:, :channels] + guidance_scale * (conditional_prediction - unconditional[:, :channels])
    if guidance_rescale:
        prediction = rescale_guided_prediction(prediction, conditional_prediction, guidance_rescale)
    return torch.cat([prediction, conditional[:, channels:]], dim=1)


def check_guidance(guidance_scale, guidance_rescale) -> None:
    """Refuse a ``guidance_scale`` that is not a finite number >= 0 and a ``guidance_rescale`` outside [0, 1]."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(
            guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1: the conditional model, 0: the "
                         f"unconditional one, above 1: guided towards the class), got {guidance_scale!r}")
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, (int, float)) or not (
            0.0 <= guidance_rescale <= 1.0):
        raise ValueError(f"guidance_rescale must be a number in [0, 1] (0: plain guidance, 1: the guided "
                         f"prediction fully rescaled to the conditional one's spread), got {guidance_rescale!r}")


def check_sampling_arguments(batch_size, num_inference_steps, class_labels, num_classes: int, guidance_scale,
                             guidance_rescale) -> None:
    """Refuse, naming the value and what was expected, a call the diffusion pipelines cannot sample: a
    ``batch_size`` or ``num_inference_steps`` that is not a positive integer, a bad ``guidance_scale`` or
    ``guidance_rescale`` (``check_guidance``), and guidance without ``class_labels``, which would change nothing:
    without labels the pipeline samples the null class, which guidance leaves as it is."""
    for name, value, what in (("batch_size", batch_size, "the number of images"),
                              ("num_inference_steps", num_inference_steps, "denoising steps, at most the "
                                                                           "scheduler's num_train_timesteps")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer ({what}), got {value!r}")
    check_guidance(guidance_scale, guidance_rescale)
    if class_labels is None and guidance_scale not in (0, 1):
        if num_classes:
            raise ValueError(f"guidance_scale={guidance_scale!r} needs class_labels: without them the pipeline samples "
                             f"the unconditional (null-class) model, which guidance leaves unchanged; pass the classes "
                             f"to guide towards, or leave guidance_scale at 1")
        raise ValueError(f"guidance_scale={guidance_scale!r} was given, but this model was trained without class "
                         f"labels: there is no class to guide towards; leave guidance_scale at 1")


def default_inference_steps(num_train_timesteps: int, scheduler_class: type) -> int:
    """The sampling steps when a call names none: every one of the T training steps for the DDPM sampler the model
    was trained with (``DDPMScheduler``); for other samplers (DDIM, DPM-Solver++, UniPC, ...) 50, and fewer than T,
    since diffusers' multistep solvers index past the end of their schedule when asked for all T steps."""
    if issubclass(scheduler_class, DDPMScheduler):
        return num_train_timesteps
    return max(1, min(50, num_train_timesteps - 1))


def scheduler_step_kwargs(scheduler, generator) -> dict:
    """``{"generator": generator}`` for a scheduler whose ``step`` draws noise with one (DDPM, DDIM with eta, the
    ancestral and SDE samplers), else ``{}``: PNDM, UniPC, LMS and other deterministic steps take none."""
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


def callback_tensor_names(callback_on_step_end, tensor_inputs: list[str], allowed: list[str]) -> list[str]:
    """The tensors ``callback_on_step_end`` gets each step (a ``PipelineCallback`` names its own), refusing names the
    pipeline does not have (diffusers' message)."""
    if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
        tensor_inputs = callback_on_step_end.tensor_inputs
    unknown = [name for name in tensor_inputs if name not in allowed]
    if unknown:
        raise ValueError(f"`callback_on_step_end_tensor_inputs` has to be in {allowed}, but found {unknown}")
    return list(tensor_inputs)


class StepCallbackMixin:
    """What diffusers' ``callback_on_step_end`` convention reads from a diffusion pipeline, shared by
    ``ClassConditionalDDPMPipeline`` and ``LatentDiffusionPipeline``: the tensors a callback may get and replace, and
    the current call's guidance scale and number of steps (set by ``__call__``)."""

    #: the tensors ``callback_on_step_end`` may read and replace: ``latents``, the sample being denoised (x_t)
    _callback_tensor_inputs = ["latents"]

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the current (or last) call; a ``callback_on_step_end`` may change
        ``pipe._guidance_scale`` between steps (diffusers' convention)."""
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        """The number of denoising steps of the current (or last) call."""
        return self._num_timesteps

    def _check_call(self, batch_size, num_inference_steps, class_labels, guidance_scale, guidance_rescale,
                    output_type, callback_on_step_end, callback_on_step_end_tensor_inputs) -> tuple[int, list[str]]:
        """The checks both diffusion pipelines' ``__call__`` start with (each refusal names the value): returns the
        number of steps (``default_inference_steps`` when None) and the tensor names the step callback gets."""
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if num_inference_steps is None:
            num_inference_steps = default_inference_steps(self.scheduler.config.num_train_timesteps,
                                                          type(self.scheduler))
        check_sampling_arguments(batch_size, num_inference_steps, class_labels, self.num_classes, guidance_scale,
                                 guidance_rescale)
        tensor_names = callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs,
                                             self._callback_tensor_inputs)
        return num_inference_steps, tensor_names


class ClassConditionalDDPMPipeline(StepCallbackMixin, DiffusionPipeline):
    r"""Pipeline for class-conditional image generation with a DDPM trained with label dropout, with
    classifier-free guidance (Ho & Salimans 2022).

    Parameters:
        unet ([`UNet2DModel`]): the denoiser, with ``num_class_embeds = K + 1`` class embeddings (index K: the null
            class). Its output is the scheduler's prediction (``epsilon``, ``v_prediction`` or ``sample``), followed
            by the variance channels when the scheduler's ``variance_type`` is ``learned_range``.
        scheduler ([`SchedulerMixin`]): the sampler: the folder's [`DDPMScheduler`], or one made from its config
            (for instance [`DDIMScheduler`] or [`DPMSolverMultistepScheduler`]).
        class_names (`list[str]`, *optional*): the names of the K classes in index order; kept in the pipeline's
            config (``model_index.json``). Without them the classes are named ``"0"``, ``"1"``, ...
    """

    model_cpu_offload_seq = "unet"

    # hfgen sets these (hfgen.pipeline_hooks.install_hooks) when this file is imported as part of the hfgen package:
    # from_pretrained then reads a folder or Hub repo into diffusers' classes without running code from it, and
    # save_pretrained also writes this file into the folder so that plain diffusers can load it with
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

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, class_names: list[str] | None = None):
        super().__init__()
        num_embeds = unet.config.num_class_embeds
        if not num_embeds or num_embeds < 2:
            raise ValueError(f"unet has num_class_embeds={num_embeds}; a class-conditional DDPM needs K + 1 >= 2 "
                             f"class embeddings (K classes and the null class). Sample an unconditional UNet with "
                             f"diffusers' DDPMPipeline")
        if class_names is not None:
            class_names = [str(name) for name in class_names]
            if len(class_names) != num_embeds - 1:
                raise ValueError(f"class_names holds {len(class_names)} names, but the unet has {num_embeds - 1} "
                                 f"classes (num_class_embeds={num_embeds}, the last being the null class); expected "
                                 f"one name per class")
        self.register_modules(unet=unet, scheduler=scheduler)
        # a setting, not a module: read it as self.config.class_names (an attribute of the same name would be
        # taken for a component by DiffusionPipeline.__setattr__)
        self.register_to_config(class_names=class_names)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False, do_normalize=True)

    @property
    def num_classes(self) -> int:
        """K, the number of classes (the network's class embeddings less the null class)."""
        return self.unet.config.num_class_embeds - 1

    @property
    def null_class(self) -> int:
        """The index of the null class (the model without a label): K."""
        return self.num_classes

    @property
    def labels(self) -> dict[str, int]:
        """Class index by class name."""
        names = self.config.class_names or [str(index) for index in range(self.num_classes)]
        return {name: index for index, name in enumerate(names)}

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        r"""The class indices of class names, as ``class_labels`` takes them (a name is matched exactly, else
        case-insensitively when that is unambiguous).

        Args:
            label (`str` or `list[str]`): one class name or a list of them.
        """
        names = [label] if isinstance(label, str) else list(label)
        return class_label_ids(names, self.config.class_names, self.num_classes, len(names)).tolist()

    def _predict(self, sample: torch.Tensor, timestep: torch.Tensor, class_ids: torch.Tensor,
                 guidance_scale: float, guidance_rescale: float = DEFAULT_GUIDANCE_RESCALE) -> torch.Tensor:
        """The network output that the scheduler steps with (``guided_output``)."""
        return guided_output(self.unet, sample, timestep, class_ids, self.null_class, guidance_scale,
                             guidance_rescale)

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
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict] | PipelineCallback
        | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images of given classes.

        Args:
            batch_size (`int`, defaults to 1): number of images when ``class_labels`` is one class or None.
            class_labels (`int`, `str`, `list` or `torch.Tensor`, *optional*): the classes to sample: one class
                index (``0 .. K-1``) or name for every image, or a list (nested lists and tensors are flattened, as
                ``DiTPipeline`` takes them) with one per image (``batch_size`` is then left at 1 or equal to its
                length). None samples the null class: the unconditional model.
            guidance_scale (`float`, defaults to `DEFAULT_GUIDANCE_SCALE`): ``s >= 0`` in
                ``eps_null + s * (eps_y - eps_null)``. 1 is the conditional model (one network pass per step), 0 the
                unconditional (null-class) model (one pass), other values two passes, run as one batch; values other
                than 0 and 1 need ``class_labels``. Ho & Salimans' guidance strength ``w`` is ``s - 1``.
            guidance_rescale (`float`, defaults to `DEFAULT_GUIDANCE_RESCALE`): ``phi`` in ``[0, 1]``: each guided
                prediction is scaled to the standard deviation of its conditional one and mixed,
                ``phi * rescaled + (1 - phi) * guided`` (Lin et al. 2023), against the over-brightening of large
                scales; 0 is plain guidance. Used only when guidance runs (``s`` other than 0 and 1).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): makes sampling deterministic; a
                list holds one generator per image, and image i then depends on ``generator[i]`` alone.
            num_inference_steps (`int`, *optional*): sampling steps, at most the scheduler's ``num_train_timesteps``
                T; default ``default_inference_steps``: T for the DDPM sampler, 50 (and fewer than T) for others.
            latents (`torch.Tensor`, *optional*): the initial noise x_T, shape ``(batch, channels, height, width)``;
                drawn with ``generator`` when not given.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"`, or `"latent"`: the denoised tensor as
                the loop leaves it (in the model's [-1, 1] range, not clipped or converted), diffusers' name for it.
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.
            crop_to_source (`bool`, defaults to True): return the images at the data's own size (the UNet config's
                ``_source_size``: 28x28 for Fashion-MNIST), as the data set has them; False: the padded
                ``sample_size`` square the UNet generates (32x32). A UNet without ``_source_size`` (trained on
                unpadded data, or before hfgen recorded it) gives its ``sample_size`` either way.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*): called
                after each step as ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` with the
                tensors named in ``callback_on_step_end_tensor_inputs``; the dict it returns may replace them.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): the tensors the callback
                gets, from ``pipe._callback_tensor_inputs``.

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the images (``images``), or the tuple ``(images,)``.
        """
        num_inference_steps, tensor_names = self._check_call(
            batch_size, num_inference_steps, class_labels, guidance_scale, guidance_rescale, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        if latents is not None and class_labels is None and batch_size == 1:
            batch_size = latents.shape[0]
        class_ids = class_label_ids(class_labels, self.config.class_names, self.num_classes, batch_size,
                                    device=device)
        batch = class_ids.shape[0]
        _check_generators(generator, batch)
        # without labels: the null class, one pass (guidance is then 0 or 1, both the null-class model)
        guided = class_labels is not None
        self._guidance_scale = guidance_scale

        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        shape = (batch, self.unet.config.in_channels, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (batch, unet in_channels, sample_size, sample_size), "
                             f"got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        step_kwargs = scheduler_step_kwargs(self.scheduler, generator)
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = self.scheduler.scale_model_input(latents, t)
            scale = float(self._guidance_scale) if guided else 1.0
            model_output = self._predict(model_input, t, class_ids, scale, float(guidance_rescale))
            latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                available = {"latents": latents}
                outputs = callback_on_step_end(self, i, t, {name: available[name] for name in tensor_names})
                latents = outputs.pop("latents", latents)

        if output_type == "latent":
            image = latents
        else:
            if crop_to_source:
                latents = crop_to_source_size(latents, self.unet.config.get(SOURCE_SIZE_KEY))
            image = self.image_processor.postprocess(latents.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
