"""The class-conditional DDPM: ``ClassConditionalDDPMPipeline`` (classifier-free guidance) and the DDPM family's
class-conditional model, loss, bound and folder.

Tiny untrained networks (the ``tiny`` preset's UNet, K = 3 classes, 16x16 images) and a handful of sampling steps:
every figure is a real computation, compared with the same computation done by hand.
"""

import argparse
import ast
import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from hfgen.families import DDPMFamily, family_for_pipeline_class, load_pipeline
from hfgen.hub import publish_files
from hfgen.models import labels as hfgen_labels
from hfgen.pipelines import ClassConditionalDDPMPipeline
from hfgen.pipelines import pipeline_ddpm_conditional as published

from conftest import PYTHON
from test_hub import BLOCK_HFGEN, _env

pytestmark = pytest.mark.usefixtures("one_thread")

CLASS_NAMES = ["shirt", "sneaker", "bag"]
STEPS = 4


def _conditional(variance_type="fixed_small", seed=0):
    """A tiny class-conditional DDPM: (family, pipeline)."""
    family = DDPMFamily()
    config = dict(family.presets["tiny"].model, variance_type=variance_type, num_classes=3, class_names=CLASS_NAMES)
    torch.manual_seed(seed)
    pipeline = family.make_pipeline(family.build_model(config, 1, 16))
    pipeline.set_progress_bar_config(disable=True)
    return family, pipeline


@pytest.fixture(scope="module")
def fixed():
    return _conditional("fixed_small")


@pytest.fixture(scope="module")
def learned():
    return _conditional("learned_range")


def _sample(pipeline, seed=0, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "output_type": "np", **kwargs}
    return pipeline(generator=torch.Generator().manual_seed(seed), **kwargs).images


@torch.no_grad()
def _by_hand(unet, scheduler, class_ids, guidance_scale, seed=0, steps=STEPS, guidance_rescale=0.0):
    """Guided sampling written out: the conditional and null-class outputs from separate network calls, and the
    rescale (Lin et al. 2023) image by image."""
    generator = torch.Generator().manual_seed(seed)
    null_ids = torch.full_like(class_ids, unet.config.num_class_embeds - 1)
    x = randn_tensor((len(class_ids), 1, 16, 16), generator=generator) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        conditional = unet(x, t, class_labels=class_ids).sample
        if guidance_scale == 1:
            output = conditional
        else:
            unconditional = unet(x, t, class_labels=null_ids).sample
            guided = unconditional[:, :1] + guidance_scale * (conditional[:, :1] - unconditional[:, :1])
            if guidance_rescale:
                for i in range(len(guided)):
                    rescaled = guided[i] * conditional[i, :1].std() / guided[i].std()
                    guided[i] = guidance_rescale * rescaled + (1 - guidance_rescale) * guided[i]
            output = torch.cat([guided, conditional[:, 1:]], dim=1)  # learned variance: the conditional pass's
        x = scheduler.step(output, t, x, generator=generator).prev_sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------------------------------------- the model
def test_num_classes_gives_k_plus_one_class_embeddings_and_the_family_reads_them(fixed):
    family, pipeline = fixed
    assert isinstance(pipeline, ClassConditionalDDPMPipeline)
    assert pipeline.unet.config.num_class_embeds == 4
    assert family.num_classes(pipeline.unet) == 3 and pipeline.num_classes == 3 and pipeline.null_class == 3
    assert family.class_names(pipeline) == CLASS_NAMES
    other = DDPMFamily()
    assert other.model_of(pipeline) is pipeline.unet and other.model_class_names == CLASS_NAMES
    assert other.make_pipeline(pipeline.unet).config.class_names == CLASS_NAMES
    # an unconditional model: no class embeddings, a stock DDPMPipeline
    plain = DDPMFamily()
    unet = plain.build_model(plain.presets["tiny"].model, 1, 16)
    assert unet.config.num_class_embeds is None and unet.class_embedding is None
    assert plain.num_classes(unet) == 0 and type(plain.make_pipeline(unet)) is DDPMPipeline
    assert plain.class_names(plain.make_pipeline(unet)) is None


def test_model_config_mistakes_are_refused():
    family = DDPMFamily()
    with pytest.raises(ValueError, match="class_names holds 2 names but num_classes is 3"):
        family.build_model(dict(family.presets["tiny"].model, num_classes=3, class_names=["a", "b"]), 1, 16)
    _, pipeline = _conditional()
    with pytest.raises(ValueError, match="class_names holds 2 names, but the unet has 3 classes"):
        ClassConditionalDDPMPipeline(pipeline.unet, pipeline.scheduler, class_names=["a", "b"])
    plain = DDPMFamily()
    with pytest.raises(ValueError, match="num_class_embeds=None; a class-conditional DDPM needs"):
        ClassConditionalDDPMPipeline(plain.build_model(plain.presets["tiny"].model, 1, 16), pipeline.scheduler)


# ---------------------------------------------------------------------------------------------- sampling
def test_samples_with_and_without_labels(fixed):
    _, pipeline = fixed
    unconditional = _sample(pipeline, batch_size=2)
    first = _sample(pipeline, batch_size=2, class_labels=0)
    last = _sample(pipeline, batch_size=2, class_labels=2)
    for images in (unconditional, first, last):
        assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()
        assert images.min() >= 0 and images.max() <= 1
    assert not np.allclose(unconditional, first) and not np.allclose(first, last)
    pil = pipeline(class_labels=["bag", "shirt", "bag"], num_inference_steps=2).images
    assert len(pil) == 3 and pil[0].size == (16, 16)
    assert isinstance(pipeline(class_labels=1, num_inference_steps=1, return_dict=False)[0][0], type(pil[0]))


def test_labels_by_name_and_by_index_give_identical_images(fixed):
    _, pipeline = fixed
    by_index = _sample(pipeline, class_labels=[0, 2, 1], guidance_scale=2.0)
    np.testing.assert_array_equal(_sample(pipeline, class_labels=["shirt", "bag", "sneaker"], guidance_scale=2.0),
                                  by_index)
    np.testing.assert_array_equal(_sample(pipeline, class_labels=torch.tensor([0, 2, 1]), guidance_scale=2.0),
                                  by_index)
    np.testing.assert_array_equal(_sample(pipeline, class_labels=["Shirt", 2, "SNEAKER"], guidance_scale=2.0),
                                  by_index)
    np.testing.assert_array_equal(_sample(pipeline, batch_size=2, class_labels="bag"),
                                  _sample(pipeline, class_labels=[2, 2]))
    assert pipeline.get_label_ids(["bag", "shirt"]) == [2, 0] and pipeline.get_label_ids("sneaker") == [1]
    assert pipeline.labels == {"shirt": 0, "sneaker": 1, "bag": 2}


def test_bad_labels_are_refused_with_what_was_expected(fixed):
    _, pipeline = fixed
    with pytest.raises(ValueError, match=r"class 'dress' is not one of this model's classes; expected one of "
                                         r"'shirt', 'sneaker', 'bag'"):
        pipeline(class_labels="dress", num_inference_steps=1)
    with pytest.raises(ValueError, match=r"class index 3 is out of range; this model has 3 classes \(0..2: 'shirt'"):
        pipeline(class_labels=[0, 3], num_inference_steps=1)
    with pytest.raises(ValueError, match="class index -1 is out of range"):
        pipeline(class_labels=-1, num_inference_steps=1)
    with pytest.raises(ValueError, match="class_labels holds 2 labels but batch_size is 3"):
        pipeline(batch_size=3, class_labels=[0, 1], num_inference_steps=1)
    with pytest.raises(ValueError, match="class 'dress' is not one of"):
        pipeline.get_label_ids(["bag", "dress"])
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        pipeline(class_labels=0, guidance_scale=float("nan"), num_inference_steps=1)
    with pytest.raises(ValueError, match="list of generators of length 1"):
        pipeline(class_labels=[0, 1], generator=[torch.Generator()], num_inference_steps=1)


@pytest.mark.parametrize("value", ["dress", 3, -1, [1.5], 1.5, True, [0, "dress"], [], torch.zeros(2, 2, dtype=torch.long)])
def test_the_published_copy_of_the_label_rules_matches_hfgen_models_labels(value):
    """The pipeline file carries its own copy of hfgen.models.labels (it may import only torch and diffusers)."""
    def outcome(function):
        try:
            return function(value, CLASS_NAMES, 3, 1).tolist()
        except ValueError as error:
            return str(error)

    assert outcome(published.class_label_ids) == outcome(hfgen_labels.class_label_ids)
    assert outcome(published.class_label_ids) != []


@pytest.mark.parametrize("fixture", ["fixed", "learned"])
def test_guidance_scale_one_is_the_conditional_model_and_zero_the_null_class(fixture, request):
    _, pipeline = request.getfixturevalue(fixture)
    labels = [0, 2]
    conditional = _sample(pipeline, class_labels=labels, guidance_scale=1.0)
    np.testing.assert_array_equal(_sample(pipeline, class_labels=labels), conditional)  # the default scale is 1
    assert published.DEFAULT_GUIDANCE_SCALE == 1.0
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    np.testing.assert_allclose(conditional, _by_hand(pipeline.unet, scheduler, torch.tensor(labels), 1.0), atol=1e-6)
    null = _sample(pipeline, class_labels=labels, guidance_scale=0.0)
    np.testing.assert_array_equal(null, _sample(pipeline, batch_size=2))  # class_labels=None: the null class
    np.testing.assert_allclose(null, _by_hand(pipeline.unet, scheduler, torch.tensor([3, 3]), 1.0), atol=1e-6)
    assert not np.allclose(null, conditional)
    # without labels there is nothing to guide towards: a scale other than 0 or 1 is refused, not silently ignored
    with pytest.raises(ValueError, match="guidance_scale=4.0 needs class_labels"):
        _sample(pipeline, batch_size=2, guidance_scale=4.0)


@pytest.mark.parametrize("fixture", ["fixed", "learned"])
def test_batched_guidance_equals_the_two_passes_done_separately(fixture, request):
    _, pipeline = request.getfixturevalue(fixture)
    labels = torch.tensor([1, 0, 2])
    for scale in (3.0, 0.5):
        guided = _sample(pipeline, class_labels=labels, guidance_scale=scale)
        by_hand = _by_hand(pipeline.unet, DDPMScheduler.from_config(pipeline.scheduler.config), labels, scale)
        # batches of 6 and of 3 round differently; a wrong combination would be off by ~0.1
        np.testing.assert_allclose(guided, by_hand, atol=1e-4)
    assert not np.allclose(guided, _sample(pipeline, class_labels=labels))
    # DDIM, directly in the pipeline: the same
    ddim = DDIMScheduler.from_config(pipeline.scheduler.config, clip_sample=False)
    pipe = ClassConditionalDDPMPipeline(pipeline.unet if fixture == "fixed" else _prediction_only(pipeline.unet),
                                        ddim, CLASS_NAMES)
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_sample(pipe, class_labels=labels, guidance_scale=2.5),
                               _by_hand(pipe.unet, DDIMScheduler.from_config(ddim.config), labels, 2.5), atol=1e-4)


@pytest.mark.parametrize("fixture", ["fixed", "learned"])
def test_guidance_rescale_matches_its_definition(fixture, request):
    _, pipeline = request.getfixturevalue(fixture)
    labels = torch.tensor([1, 0, 2])
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    plain = _sample(pipeline, class_labels=labels, guidance_scale=4.0)
    assert published.DEFAULT_GUIDANCE_RESCALE == 0.0
    np.testing.assert_array_equal(_sample(pipeline, class_labels=labels, guidance_scale=4.0, guidance_rescale=0.0),
                                  plain)
    rescaled = _sample(pipeline, class_labels=labels, guidance_scale=4.0, guidance_rescale=0.7)
    np.testing.assert_allclose(rescaled, _by_hand(pipeline.unet, scheduler, labels, 4.0, guidance_rescale=0.7),
                               atol=1e-4)
    assert np.abs(rescaled - plain).max() > 1e-3
    # at s = 1 there is no guided prediction to rescale
    np.testing.assert_array_equal(_sample(pipeline, class_labels=labels, guidance_rescale=1.0),
                                  _sample(pipeline, class_labels=labels))


def test_a_fully_rescaled_prediction_has_the_conditional_spread():
    generator = torch.Generator().manual_seed(0)
    guided, conditional = torch.randn(2, 3, 8, 8, generator=generator) * torch.tensor([5.0, 0.2]).view(2, 1, 1, 1), \
        torch.randn(2, 3, 8, 8, generator=generator)
    full = published.rescale_guided_prediction(guided, conditional, 1.0)
    torch.testing.assert_close(full.flatten(1).std(1), conditional.flatten(1).std(1))
    torch.testing.assert_close(full / full.flatten(1).std(1).view(2, 1, 1, 1),
                               guided / guided.flatten(1).std(1).view(2, 1, 1, 1))  # only the scale changes
    torch.testing.assert_close(published.rescale_guided_prediction(guided, conditional, 0.25),
                               0.25 * full + 0.75 * guided)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), True, "0.5"])
def test_a_guidance_rescale_outside_0_1_is_refused(fixed, value):
    _, pipeline = fixed
    with pytest.raises(ValueError, match=r"guidance_rescale must be a number in \[0, 1\]"):
        _sample(pipeline, class_labels=[0], guidance_scale=2.0, guidance_rescale=value)


def _prediction_only(unet):
    from hfgen.families.ddpm import _PredictionOnly

    return _PredictionOnly(unet)


def test_a_list_of_generators_makes_each_image_depend_on_its_own(fixed):
    _, pipeline = fixed
    pair = pipeline(class_labels=[0, 2], guidance_scale=2.0, generator=[torch.Generator().manual_seed(s)
                                                                         for s in (5, 6)],
                    num_inference_steps=STEPS, output_type="np").images
    alone = _sample(pipeline, seed=6, class_labels=[2], guidance_scale=2.0)
    np.testing.assert_allclose(pair[1:], alone, atol=1e-5)


@pytest.mark.parametrize("fixture", ["fixed", "learned"])
@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm-solver++"])
def test_swapped_samplers_take_labels_and_guidance(fixture, scheduler, request):
    family, pipeline = request.getfixturevalue(fixture)

    def images(**kwargs):
        out = family.sample_images(pipeline, 2, torch.Generator().manual_seed(0), scheduler=scheduler, steps=3,
                                   **kwargs)
        return np.stack([np.asarray(image) for image in out])

    by_name = images(class_labels=["bag", "shirt"], guidance_scale=2.0)
    assert by_name.shape == (2, 16, 16) and np.isfinite(by_name).all()
    np.testing.assert_array_equal(images(class_labels=[2, 0], guidance_scale=2.0), by_name)
    assert not np.array_equal(images(class_labels=[2, 0]), by_name)
    assert not np.array_equal(images(), images(class_labels=[2, 0]))
    assert type(pipeline) is ClassConditionalDDPMPipeline and type(pipeline.scheduler) is DDPMScheduler  # unchanged


def test_an_unconditional_ddpm_refuses_labels_and_guidance():
    family = DDPMFamily()
    pipeline = family.make_pipeline(family.build_model(family.presets["tiny"].model, 1, 16))
    with pytest.raises(ValueError, match=r"class_labels=\[0, 1\] was given, but this model was trained without "
                                         r"class labels"):
        family.sample_images(pipeline, 2, torch.Generator(), class_labels=[0, 1], steps=1)
    with pytest.raises(ValueError, match="guidance_scale=2.0 was given, but this DDPM was trained without class"):
        family.sample_images(pipeline, 2, torch.Generator(), guidance_scale=2.0, steps=1)
    with pytest.raises(ValueError, match="guidance_rescale=0.7 was given, but this DDPM was trained without class"):
        family.sample_images(pipeline, 2, torch.Generator(), guidance_rescale=0.7, steps=1)
    with pytest.raises(ValueError, match="does not take the sampling option"):
        family.sample_images(pipeline, 2, torch.Generator(), temperature=0.5)


# ---------------------------------------------------------------------------------------------- loss and bound
@pytest.mark.parametrize("fixture", ["fixed", "learned"])
def test_loss_and_bounds_take_labels(fixture, request):
    family, pipeline = request.getfixturevalue(fixture)
    unet = pipeline.unet
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3])  # 3: a dropped label, the null class
    config = argparse.Namespace(snr_gamma=None, vlb_weight=None)
    loss, logs = family.loss(unet, images, 0, torch.Generator().manual_seed(0), config, class_labels=labels)
    assert torch.isfinite(loss) and torch.isfinite(logs["bits_per_dim"])
    unet.zero_grad()
    loss.backward()
    assert unet.class_embedding.weight.grad.abs().sum(1).gt(0).all()  # every class, the null class too
    unet.zero_grad()

    def bound(class_labels):
        return family.bounds(unet, images, 4, torch.Generator().manual_seed(0), class_labels=class_labels)

    null, given = bound(None), bound(labels.clamp(max=2))
    assert torch.isfinite(given.nats_per_image_elbo).all() and torch.isfinite(null.nats_per_image_elbo).all()
    assert not torch.allclose(given.nats_per_image_elbo, null.nats_per_image_elbo)
    assert torch.equal(given.nats_per_image_elbo, given.nats_per_image_iw)
    # None is the null class K: log p(x)
    torch.testing.assert_close(bound(torch.full((4,), 3)).nats_per_image_elbo, null.nats_per_image_elbo,
                               rtol=0, atol=0)
    plain = DDPMFamily()
    unconditional = plain.build_model(plain.presets["tiny"].model, 1, 16)
    with pytest.raises(ValueError, match="class_labels were given, but this DDPM was built without classes"):
        plain.bounds(unconditional, images, 4, torch.Generator(), class_labels=labels)


# ---------------------------------------------------------------------------------------------- the folder
@pytest.fixture(scope="module")
def folder(learned, tmp_path_factory):
    """The learned-variance model saved as training saves it, and its guided samples (``expected.npy``)."""
    _, pipeline = learned
    path = tmp_path_factory.mktemp("conditional-ddpm") / "folder"
    pipeline.save_pretrained(path)
    np.save(path.parent / "expected.npy", _sample(pipeline, class_labels=["bag", 0], guidance_scale=2.0))
    return path


def test_folder_layout(folder):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ddpm_conditional", "ClassConditionalDDPMPipeline"]
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert index["class_names"] == CLASS_NAMES
    assert (folder / "pipeline_ddpm_conditional.py").read_text() == Path(published.__file__).read_text()
    assert sorted(p.name for p in folder.rglob("*.py")) == ["pipeline_ddpm_conditional.py"]
    imported = set()
    for node in ast.walk(ast.parse((folder / "pipeline_ddpm_conditional.py").read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "collections", "inspect", "math", "numbers", "torch", "diffusers"}, imported
    # what hfgen publish uploads: the pipeline file, configs and weights (class_names is a setting, not a component)
    assert publish_files(folder) == ["model_index.json", "pipeline_ddpm_conditional.py",
                                     "scheduler/scheduler_config.json", "unet/config.json",
                                     "unet/diffusion_pytorch_model.safetensors"]


def test_hfgen_loads_the_folder_into_its_own_class(folder):
    pipeline, family = load_pipeline(str(folder))
    assert type(pipeline) is ClassConditionalDDPMPipeline  # hfgen's class: no code from the folder ran
    assert type(pipeline).__module__ == "hfgen.pipelines.pipeline_ddpm_conditional"
    assert isinstance(family, DDPMFamily) and family.class_names(pipeline) == CLASS_NAMES
    assert isinstance(family_for_pipeline_class("ClassConditionalDDPMPipeline"), DDPMFamily)
    assert family.model_of(pipeline) is pipeline.unet and family.num_classes(pipeline.unet) == 3
    pipeline.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_sample(pipeline, class_labels=["bag", 0], guidance_scale=2.0),
                               np.load(folder.parent / "expected.npy"), atol=1e-5)
    renamed = ClassConditionalDDPMPipeline.from_pretrained(folder, class_names=["a", "b", "c"])
    assert renamed.config.class_names == ["a", "b", "c"]


PLAIN_DIFFUSERS = BLOCK_HFGEN + textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline

    folder, out = json.loads(sys.argv[1])
    try:
        DiffusionPipeline.from_pretrained(folder)
        raise SystemExit(f"{folder} loaded without trust_remote_code")
    except ValueError as error:
        assert "trust_remote_code" in str(error), error
    ran = [m for m in sys.modules if m.endswith(".pipeline_ddpm_conditional")]
    assert not ran, f"code of {folder} ran before the refusal: {ran}"
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=["bag", 0], guidance_scale=2.0, num_inference_steps=4,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    np.save(out, images)
    print(json.dumps([type(pipe).__module__, type(pipe).__name__, type(pipe.unet).__module__,
                      pipe.config.class_names, pipe.get_label_ids("sneaker")]))
""")


def test_plain_diffusers_loads_the_folder_only_with_trust_remote_code(folder, tmp_path):
    out = tmp_path / "plain.npy"
    result = subprocess.run([PYTHON, "-c", PLAIN_DIFFUSERS, json.dumps([str(folder), str(out)])],
                            env=_env(tmp_path, HF_HUB_OFFLINE="1"), cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    module, name, unet_module, names, ids = json.loads(result.stdout.strip().splitlines()[-1])
    assert (module, name) == ("diffusers_modules.local.pipeline_ddpm_conditional", "ClassConditionalDDPMPipeline")
    assert unet_module.startswith("diffusers.models") and names == CLASS_NAMES and ids == [1]
    np.testing.assert_allclose(np.load(out), np.load(folder.parent / "expected.npy"), atol=1e-5)


def test_an_unconditional_ddpm_folder_is_still_a_stock_ddpm_pipeline_folder(tmp_path):
    family = DDPMFamily()
    pipeline = family.make_pipeline(family.build_model(family.presets["tiny"].model, 1, 16))
    pipeline.save_pretrained(tmp_path / "plain")
    index = json.loads((tmp_path / "plain" / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and "class_names" not in index
    assert not list((tmp_path / "plain").rglob("*.py"))
    loaded, loaded_family = load_pipeline(str(tmp_path / "plain"))
    assert type(loaded) is DDPMPipeline and isinstance(loaded_family, DDPMFamily)
    assert loaded_family.class_names(loaded) is None and loaded_family.num_classes(loaded.unet) == 0
