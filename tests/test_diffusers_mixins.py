"""diffusers' own pipeline tests on hfgen's pipelines: ``PipelineTesterMixin``, ``PipelineLatentTesterMixin`` and
``PipelineKarrasSchedulerTesterMixin`` from diffusers' test suite (vendored unchanged in
``tests/diffusers_upstream``, see its README), one test class per pipeline, unconditional and class-conditional, and
diffusers' own ``DDPMPipeline`` as the control in the same run.

Components are tiny (8x8 RGB images, 4- and 8-channel layers): the whole file takes about 100 s of CPU, 13 s of
them importing diffusers' test module.
Images are RGB because ``test_pt_np_pil_outputs_equivalent`` compares a PIL image with the numpy output pixel by
pixel, which assumes three channels; hfgen's grayscale path is the same code. Every test diffusers skips on a CPU
(float16, offloading, xformers, device moves) skips here with diffusers' own decorator and reason; the tests hfgen
cannot meaningfully run skip with a sentence saying why, below.
"""

import unittest

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils.import_utils import is_scipy_available, is_torchsde_available

from diffusers_upstream.pipelines.pipeline_params import (
    CLASS_CONDITIONED_IMAGE_GENERATION_BATCH_PARAMS,
    CLASS_CONDITIONED_IMAGE_GENERATION_PARAMS,
    UNCONDITIONAL_IMAGE_GENERATION_BATCH_PARAMS,
    UNCONDITIONAL_IMAGE_GENERATION_PARAMS,
)
from diffusers_upstream.testing_utils import CaptureLogger
from diffusers_upstream.pipelines.test_pipelines_common import (
    PipelineKarrasSchedulerTesterMixin,
    PipelineLatentTesterMixin,
    PipelineTesterMixin,
)
from hfgen import (
    ClassConditionalDDPMPipeline,
    HierarchicalVAEModel,
    HierarchicalVAEPipeline,
    LatentDiffusionPipeline,
    VAEModel,
    VAEPipeline,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: a second thread only adds its spinning
NUM_CLASSES = 3
#: hfgen's VAEs sample in one decoder pass (no steps) and no hfgen pipeline takes a prompt
NO_STEPS_NO_PROMPTS = PipelineTesterMixin.required_optional_params - {"num_inference_steps", "num_images_per_prompt"}
NO_PROMPTS = PipelineTesterMixin.required_optional_params - {"num_images_per_prompt"}

MULTI_VAE_REASON = (
    "test_multi_vae swaps in diffusers' AutoencoderKL, AsymmetricAutoencoderKL, ConsistencyDecoderVAE and "
    "AutoencoderTiny; hfgen's pipelines sample and bound hfgen's own VAE (its prior, class labels and pixel "
    "likelihood), which those autoencoders do not have")
HVAE_GUIDANCE_WITHOUT_CLASSES_REASON = (
    "a hierarchical VAE trained without classes has nothing to guide towards: hfgen refuses guidance_scale other than "
    "1 (a ValueError naming the value) instead of silently sampling the same images, so a user who asked for guidance "
    "learns that it did nothing")
GUIDANCE_WITHOUT_LABELS_REASON = (
    "an unconditional prior has no class to guide towards: hfgen refuses guidance_scale other than 0 or 1 without "
    "class_labels (a ValueError naming the value) instead of silently sampling the same images, so a user who "
    "asked for guidance learns that it did nothing")
KARRAS_DEPENDENCIES_REASON = (
    "LMSDiscreteScheduler needs scipy and DPMSolverSDEScheduler needs torchsde (pip install -e '.[dev]' installs "
    "both)")


def _generator(device, seed):
    return torch.Generator(device="cpu" if str(device).startswith("mps") else device).manual_seed(seed)


def _unet(in_channels, sample_size, num_class_embeds=None):
    """diffusers' UNet2DModel at its smallest: two resolutions of 4 and 8 channels, no attention."""
    return UNet2DModel(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                       block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       num_class_embeds=num_class_embeds)


def _perturbed(model):
    """Some layers start at zero (a new model's samples would then not depend on everything under test)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


class _SkipsWhereHfgenDiffers:
    def test_multi_vae(self):
        pytest.skip(MULTI_VAE_REASON)


class _KarrasSchedulers(PipelineKarrasSchedulerTesterMixin):
    @unittest.skipUnless(is_scipy_available() and is_torchsde_available(), KARRAS_DEPENDENCIES_REASON)
    def test_karras_schedulers_shape(self, *args, **kwargs):
        super().test_karras_schedulers_shape(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- the VAEs
class VAEPipelineFastTests(_SkipsWhereHfgenDiffers, PipelineLatentTesterMixin, PipelineTesterMixin,
                           unittest.TestCase):
    pipeline_class = VAEPipeline
    params = UNCONDITIONAL_IMAGE_GENERATION_PARAMS
    batch_params = UNCONDITIONAL_IMAGE_GENERATION_BATCH_PARAMS
    required_optional_params = NO_STEPS_NO_PROMPTS
    image_params = frozenset()  # __call__ takes no image (reconstruct and encode do)
    image_latents_params = frozenset()
    num_classes = 0

    def get_dummy_components(self):
        torch.manual_seed(0)
        vae = VAEModel(in_channels=3, sample_size=8, block_out_channels=(4, 8), layers_per_block=1, latent_channels=2,
                       num_classes=self.num_classes)
        return {"vae": _perturbed(vae)}

    def get_dummy_inputs(self, device, seed=0):
        inputs = {"generator": _generator(device, seed), "output_type": "np"}
        if self.num_classes:
            inputs["class_labels"] = [1]
        else:
            inputs["batch_size"] = 1
        return inputs

    def test_inference_batch_single_identical(self):
        # no num_inference_steps to copy into the batched call (diffusers' own step-less pipelines do the same)
        self._test_inference_batch_single_identical(batch_size=3, additional_params_copy_to_batched_inputs=[])


class ClassConditionalVAEPipelineFastTests(VAEPipelineFastTests):
    params = CLASS_CONDITIONED_IMAGE_GENERATION_PARAMS
    batch_params = CLASS_CONDITIONED_IMAGE_GENERATION_BATCH_PARAMS
    num_classes = NUM_CLASSES


class HierarchicalVAEPipelineFastTests(VAEPipelineFastTests):
    pipeline_class = HierarchicalVAEPipeline

    def get_dummy_components(self):
        torch.manual_seed(0)
        vae = HierarchicalVAEModel(in_channels=3, sample_size=8, block_out_channels=(4, 4), groups_per_scale=(1, 1),
                                   latent_channels=2, decoder_blocks_per_group=1, output_blocks=0,
                                   num_classes=self.num_classes)
        return {"vae": _perturbed(vae)}

    def test_cfg(self):
        if not self.num_classes:
            pytest.skip(HVAE_GUIDANCE_WITHOUT_CLASSES_REASON)
        super().test_cfg()


class ClassConditionalHierarchicalVAEPipelineFastTests(HierarchicalVAEPipelineFastTests):
    params = CLASS_CONDITIONED_IMAGE_GENERATION_PARAMS
    batch_params = CLASS_CONDITIONED_IMAGE_GENERATION_BATCH_PARAMS
    num_classes = NUM_CLASSES


# ---------------------------------------------------------------------------------------------- diffusion
class DDPMPipelineControlFastTests(PipelineTesterMixin, unittest.TestCase):
    """diffusers' own DDPMPipeline (what hfgen's unconditional DDPM folders load as), run through the same mixins:
    the control. Its ``__call__`` has neither ``latents`` nor prompts. No Karras-scheduler test: DDPMPipeline passes
    ``generator`` to every ``scheduler.step``, which PNDM, LMS and UniPC do not take (diffusers does not run that
    mixin on it either)."""

    pipeline_class = DDPMPipeline
    params = UNCONDITIONAL_IMAGE_GENERATION_PARAMS
    batch_params = UNCONDITIONAL_IMAGE_GENERATION_BATCH_PARAMS
    required_optional_params = NO_PROMPTS - {"latents"}

    def get_dummy_components(self):
        torch.manual_seed(0)
        return {"unet": _unet(3, 8).eval(), "scheduler": DDPMScheduler()}

    def get_dummy_inputs(self, device, seed=0):
        return {"batch_size": 1, "generator": _generator(device, seed), "num_inference_steps": 2, "output_type": "np"}


class ClassConditionalDDPMPipelineFastTests(_KarrasSchedulers, PipelineTesterMixin, unittest.TestCase):
    pipeline_class = ClassConditionalDDPMPipeline
    params = CLASS_CONDITIONED_IMAGE_GENERATION_PARAMS
    batch_params = CLASS_CONDITIONED_IMAGE_GENERATION_BATCH_PARAMS
    required_optional_params = NO_PROMPTS

    def get_dummy_components(self):
        torch.manual_seed(0)
        return {"unet": _unet(3, 8, NUM_CLASSES + 1).eval(), "scheduler": DDPMScheduler()}

    def get_dummy_inputs(self, device, seed=0):
        return {"class_labels": [1], "generator": _generator(device, seed), "num_inference_steps": 2,
                "output_type": "np"}


class LatentDiffusionPipelineFastTests(_SkipsWhereHfgenDiffers, _KarrasSchedulers, PipelineLatentTesterMixin,
                                       PipelineTesterMixin, unittest.TestCase):
    pipeline_class = LatentDiffusionPipeline
    params = UNCONDITIONAL_IMAGE_GENERATION_PARAMS
    batch_params = UNCONDITIONAL_IMAGE_GENERATION_BATCH_PARAMS
    required_optional_params = NO_PROMPTS
    image_params = frozenset()
    image_latents_params = frozenset()
    num_classes = 0

    def get_dummy_components(self):
        torch.manual_seed(0)
        vae = _perturbed(VAEModel(in_channels=3, sample_size=8, block_out_channels=(4, 8), layers_per_block=1,
                                  latent_channels=2, scaling_factor=1.5))
        unet = _unet(2, 4, self.num_classes + 1 if self.num_classes else None).eval()
        return {"vae": vae, "unet": unet, "scheduler": DDPMScheduler()}

    def get_dummy_inputs(self, device, seed=0):
        inputs = {"generator": _generator(device, seed), "num_inference_steps": 2, "output_type": "np"}
        if self.num_classes:
            inputs["class_labels"] = [1]
        else:
            inputs["batch_size"] = 1
        return inputs

    def test_cfg(self):
        if not self.num_classes:
            pytest.skip(GUIDANCE_WITHOUT_LABELS_REASON)
        super().test_cfg()

    def test_callback_cfg(self):
        if not self.num_classes:
            pytest.skip(GUIDANCE_WITHOUT_LABELS_REASON)
        super().test_callback_cfg()


class ClassConditionalLatentDiffusionPipelineFastTests(LatentDiffusionPipelineFastTests):
    params = CLASS_CONDITIONED_IMAGE_GENERATION_PARAMS
    batch_params = CLASS_CONDITIONED_IMAGE_GENERATION_BATCH_PARAMS
    num_classes = NUM_CLASSES


class JoinedLatentDiffusionPipelineFastTests(LatentDiffusionPipelineFastTests):
    """The join: the diffusion prior over a hierarchical VAE's top group (its prior noise), the rest drawn by the
    hierarchical VAE."""

    def get_dummy_components(self):
        torch.manual_seed(0)
        vae = _perturbed(HierarchicalVAEModel(in_channels=3, sample_size=8, block_out_channels=(4, 4),
                                              groups_per_scale=(1, 1), latent_channels=2, decoder_blocks_per_group=1,
                                              output_blocks=0))
        unet = _unet(2, 4, self.num_classes + 1 if self.num_classes else None).eval()
        return {"vae": vae, "unet": unet, "scheduler": DDPMScheduler()}


class ClassConditionalJoinedLatentDiffusionPipelineFastTests(JoinedLatentDiffusionPipelineFastTests):
    params = CLASS_CONDITIONED_IMAGE_GENERATION_PARAMS
    batch_params = CLASS_CONDITIONED_IMAGE_GENERATION_BATCH_PARAMS
    num_classes = NUM_CLASSES


# ---------------------------------------------------------------------------------------------- beyond the mixins
def _ldm(num_classes=NUM_CLASSES):
    test = (ClassConditionalLatentDiffusionPipelineFastTests if num_classes else LatentDiffusionPipelineFastTests)()
    pipe = LatentDiffusionPipeline(**test.get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ddpm():
    pipe = ClassConditionalDDPMPipeline(**ClassConditionalDDPMPipelineFastTests().get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_diffusion_pipelines_are_importable_from_hfgen():
    import hfgen
    from hfgen.pipelines import pipeline_ddpm_conditional, pipeline_ldm

    assert hfgen.LatentDiffusionPipeline is pipeline_ldm.LatentDiffusionPipeline
    assert hfgen.ClassConditionalDDPMPipeline is pipeline_ddpm_conditional.ClassConditionalDDPMPipeline
    assert {"LatentDiffusionPipeline", "ClassConditionalDDPMPipeline"} <= set(hfgen.__all__)


SAMPLERS = {
    "UniPC": lambda config: diffusers.UniPCMultistepScheduler.from_config(config),
    "PNDM": lambda config: diffusers.PNDMScheduler.from_config(config, skip_prk_steps=True),
    "Euler": lambda config: diffusers.EulerDiscreteScheduler.from_config(config),
    "DDIM": lambda config: diffusers.DDIMScheduler.from_config(config),
    "DPM-Solver++": lambda config: diffusers.DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++"),
}


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("make_pipe", [_ddpm, _ldm], ids=["ClassConditionalDDPMPipeline", "LatentDiffusionPipeline"])
def test_deterministic_samplers_draw_through_the_diffusion_pipelines(make_pipe, sampler):
    """Samplers whose ``step`` takes no generator (PNDM, UniPC) run too; with a deterministic sampler the images are
    a function of the initial noise alone, whatever generator the call is given."""
    pipe = make_pipe()
    pipe.scheduler = SAMPLERS[sampler](pipe.scheduler.config)
    noise = torch.randn(2, pipe.unet.config.in_channels, *(2 * [pipe.unet.config.sample_size]),
                        generator=torch.Generator().manual_seed(1))
    draw = {"class_labels": [0, 2], "guidance_scale": 2.0, "num_inference_steps": 4, "output_type": "np",
            "latents": noise}
    images = pipe(generator=torch.Generator().manual_seed(0), **draw).images
    again = pipe(generator=torch.Generator().manual_seed(5), **draw).images
    assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
    np.testing.assert_array_equal(images, again)
    assert not np.array_equal(images, pipe(**{**draw, "latents": -noise}).images)


@pytest.mark.parametrize("sampler", ["DDPM", *SAMPLERS])
@pytest.mark.parametrize("make_pipe", [_ddpm, _ldm], ids=["ClassConditionalDDPMPipeline", "LatentDiffusionPipeline"])
def test_a_call_without_steps_samples_every_training_step_of_ddpm_and_50_of_the_others(make_pipe, sampler):
    """No ``num_inference_steps``: all T steps of the DDPM sampler the model was trained with; other samplers 50 and
    fewer than T (diffusers' multistep solvers index past their schedule at T steps), so that a card's sampler swap
    followed by a plain call runs."""
    pipe = make_pipe()
    if sampler != "DDPM":
        pipe.scheduler = SAMPLERS[sampler](pipe.scheduler.config)
    T = pipe.scheduler.config.num_train_timesteps
    images = pipe(class_labels=[1], generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.isfinite(images).all()
    expected = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    expected.set_timesteps(T if sampler == "DDPM" else min(50, T - 1))  # (PNDM adds a warm-up step to the count)
    assert pipe.num_timesteps == len(expected.timesteps)


@pytest.mark.parametrize("make_pipe", [_ddpm, _ldm, lambda: _ldm(num_classes=0)],
                         ids=["ClassConditionalDDPMPipeline", "LatentDiffusionPipeline", "unconditional latent"])
def test_impossible_sampling_calls_are_one_line_value_errors_naming_the_value(make_pipe):
    pipe = make_pipe()
    labels = {"class_labels": 1} if pipe.num_classes else {}
    refusals = [
        ({"num_inference_steps": 0}, "num_inference_steps must be a positive integer .*got 0"),
        ({"num_inference_steps": 2.5}, "num_inference_steps must be a positive integer .*got 2.5"),
        ({"batch_size": 0}, "batch_size must be a positive integer .*got 0"),
        ({"guidance_scale": -1.0}, r"guidance_scale must be a finite number >= 0 .*got -1.0"),
        ({"callback_on_step_end": lambda *args: args[-1], "callback_on_step_end_tensor_inputs": ["noise"]},
         r"`callback_on_step_end_tensor_inputs` has to be in \['latents'\], but found \['noise'\]"),
    ]
    for call, message in refusals:
        with pytest.raises(ValueError, match=message) as refused:
            pipe(**{"num_inference_steps": 2, **labels, **call})
        assert "\n" not in str(refused.value)
    unlabelled = "needs class_labels" if pipe.num_classes else "trained without class labels"
    unlabelled = f"guidance_scale=3.0 (was given, but this model was )?{unlabelled}"
    with pytest.raises(ValueError, match=unlabelled) as refused:
        pipe(num_inference_steps=2, guidance_scale=3.0)
    assert "\n" not in str(refused.value)
    for scale in (0.0, 1.0):  # both the null class without labels: nothing to refuse
        assert pipe(num_inference_steps=2, guidance_scale=scale, output_type="np").images.shape == (1, 8, 8, 3)


@pytest.mark.parametrize("pipeline_class", [VAEPipeline, HierarchicalVAEPipeline])
def test_vae_pipelines_refuse_a_batch_of_no_images(pipeline_class):
    tests = {VAEPipeline: VAEPipelineFastTests, HierarchicalVAEPipeline: HierarchicalVAEPipelineFastTests}
    pipe = pipeline_class(**tests[pipeline_class]().get_dummy_components())
    for batch_size in (0, -2):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer .*got {batch_size}$"):
            pipe(batch_size=batch_size)


def test_class_labels_are_taken_as_dit_pipeline_takes_them():
    """Ints, names, and nested lists or tensors of them, flattened: ``[[1], [1]]`` is what diffusers' batch tests
    make of DiT's ``[1]``."""
    pipe = _ldm()
    pipe.register_to_config(class_names=["shirt", "sneaker", "bag"])

    def draw(labels):
        return pipe(class_labels=labels, generator=[torch.Generator().manual_seed(i) for i in range(3)],
                    num_inference_steps=2, output_type="np").images

    flat = draw([1, 2, 1])
    for same in ([[1], [2], [1]], torch.tensor([[1], [2], [1]]), ["sneaker", ["bag"], torch.tensor(1)],
                 np.array([1, 2, 1])):
        np.testing.assert_array_equal(draw(same), flat)
    for bad, message in (({1}, r"class_labels=\{1\} is a set; expected a class index"),
                         ([[1.5]], "class label 1.5 is a float; expected a class index"),
                         ([[]], "class_labels is an empty list")):
        with pytest.raises(ValueError, match=message):
            draw(bad)


def test_pickled_weights_save_and_load_as_diffusers_does(tmp_path, monkeypatch):
    """``safe_serialization=False`` writes .bin files; loading reads them with ``torch.load(weights_only=True)``,
    logs each component in diffusers' words and sets ``name_or_path``."""
    pipe = _ldm()
    pipe.save_pretrained(tmp_path, safe_serialization=False)
    for name in ("vae", "unet"):
        assert [p.name for p in (tmp_path / name).glob("diffusion_pytorch_model.*")] == [
            "diffusion_pytorch_model.bin"]
    loads = []
    original_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(kwargs) or original_load(*args, **kwargs))
    logger = diffusers.utils.logging.get_logger("diffusers.pipelines.pipeline_utils")
    level = logger.level
    logger.setLevel(diffusers.logging.INFO)
    try:
        with CaptureLogger(logger) as log:
            loaded = LatentDiffusionPipeline.from_pretrained(tmp_path)
    finally:
        logger.setLevel(level)
    assert len(loads) == 2 and all(kwargs.get("weights_only") is True for kwargs in loads)
    for name, class_name in (("vae", "VAEModel"), ("unet", "UNet2DModel"), ("scheduler", "DDPMScheduler")):
        assert f"Loaded {name} as {class_name} from `{name}` subfolder of {tmp_path}.\n" in log.out
    assert loaded.name_or_path == tmp_path
    for name in ("vae", "unet"):
        original = getattr(pipe, name).state_dict()
        assert all(torch.equal(value, original[key]) for key, value in getattr(loaded, name).state_dict().items())
    with pytest.raises(FileNotFoundError, match=r"vae has no diffusion_pytorch_model\.safetensors .*"
                                                r"\(use_safetensors=True\); found \['diffusion_pytorch_model\.bin'\]"):
        LatentDiffusionPipeline.from_pretrained(tmp_path, use_safetensors=True)


def test_a_variant_loads_where_it_exists_and_plain_weights_elsewhere(tmp_path):
    """diffusers' rule: the variant for each component that has it, the plain weights for the others, and a
    ValueError only when no component has it."""
    pipe = _ldm()
    pipe.save_pretrained(tmp_path)
    changed = _ldm().vae
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(1.0)
    changed.save_pretrained(tmp_path / "vae", variant="ema")
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path, variant="ema")
    for name, expected in (("vae", changed), ("unet", pipe.unet)):
        state = expected.state_dict()
        assert all(torch.equal(value, state[key]) for key, value in getattr(loaded, name).state_dict().items())
    with pytest.raises(ValueError, match=r"You are trying to load the model files of the `variant=fp16`, but no "
                                         r"such modeling files are available\."):
        LatentDiffusionPipeline.from_pretrained(tmp_path, variant="fp16")
