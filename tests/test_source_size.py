"""Pipelines at the data's own size: a model trained on images the data layer zero-padded (Fashion-MNIST's 28x28 in
a 32x32 square) takes images at 28x28 or 32x32, and returns samples and reconstructions at 28x28 unless asked for
the padded square (``crop_to_source=False``); every family, tiny models on the CPU."""

from __future__ import annotations

import logging

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline

from hfgen.data import images_to_uint8
from hfgen.families.ddpm import DDPMFamily
from hfgen.families.hvae import HVAEFamily
from hfgen.families.ldm import LatentDiffusionFamily
from hfgen.families.vae import VAEFamily
from hfgen.metrics import generate_uint8
from hfgen.models import VAEModel
from hfgen.models.likelihoods import SourceRegion
from hfgen.pipelines import ClassConditionalDDPMPipeline
from hfgen.pipelines.pipeline_ddpm_conditional import SOURCE_SIZE_KEY, crop_to_source_size

SOURCE = [28, 28]


def _images(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """Random 8-bit images ``(n, 1, size, size)``."""
    return torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _build(family, extra: dict | None = None):
    """The family's tiny model as the training loop builds it from padded 28x28 data, in its pipeline."""
    torch.manual_seed(0)
    config = {**family.presets["tiny"].model, "source_size": SOURCE, **(extra or {})}
    pipeline = family.make_pipeline(family.build_model(config, 1, 32).eval())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pipelines_pad_as_the_data_layer_does_and_crop_where_it_padded():
    # an odd margin too: 27x29 in 32x32 puts the extra row at the bottom and the extra column on the right
    for height, width in ((28, 28), (27, 29)):
        own = _images(3, size=32, seed=1)[:, :, :height, :width].contiguous()
        dataset = datasets.Dataset.from_dict({"image": [PIL.Image.fromarray(image[0].numpy()) for image in own]})
        padded_by_data_layer = images_to_uint8(dataset, sample_size=32, show_progress=False)
        region = SourceRegion(32, (height, width))
        assert torch.equal(SourceRegion.to_sample_size(region, own, 1, 32), padded_by_data_layer)
        assert torch.equal(region.crop(padded_by_data_layer), own)
        # the DDPM pipeline file's own copy of the rule (it is published alone) crops the same pixels
        assert torch.equal(crop_to_source_size(padded_by_data_layer, (height, width)), own)
    floats = own.float() * (2 / 255) - 1
    padded = SourceRegion.to_sample_size(region, floats, 1, 32)
    assert padded.shape == (3, 1, 32, 32) and bool((padded[..., :2, :] == -1).all())  # 8-bit 0 in [-1, 1]


@pytest.mark.parametrize("family_class", [VAEFamily, HVAEFamily], ids=["vae", "hvae"])
def test_vae_pipelines_take_and_return_the_data_s_own_size(family_class):
    pipeline = _build(family_class())
    own, padded = _images(2), None
    padded = SourceRegion(32, SOURCE).pad(own, 0)

    # reconstruct: 28x28 in, 28x28 out; the padded square in gives the same; the square out on request
    out = pipeline.reconstruct(own, output_type="pt")
    assert out.shape == (2, 1, 28, 28)
    torch.testing.assert_close(pipeline.reconstruct(padded, output_type="pt"), out, atol=0, rtol=0)
    square = pipeline.reconstruct(own, output_type="pt", crop_to_source=False)
    assert square.shape == (2, 1, 32, 32)
    torch.testing.assert_close(square[:, :, 2:30, 2:30], out, atol=0, rtol=0)
    assert float(square[:, :, :2].abs().max()) == 0.0  # the zero border the model decodes

    # encode: the same latents from either size (PIL images at 28x28 too)
    pil_images = [PIL.Image.fromarray(image[0].numpy()) for image in own]
    if family_class is VAEFamily:
        torch.testing.assert_close(pipeline.encode(own), pipeline.encode(padded), atol=0, rtol=0)
        torch.testing.assert_close(pipeline.encode(pil_images), pipeline.encode(padded), atol=1e-6, rtol=0)
    else:
        for a, b in zip(pipeline.encode(own).latent_means, pipeline.encode(padded).latent_means):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        # NVAE-style variations of a 28x28 image come at 28x28
        variations = pipeline(images=own[:1], keep_groups=1, batch_size=2, generator=_generator(), output_type="np")
        assert variations.images.shape == (2, 28, 28, 1)

    # interpolate between 28x28 PIL images: 28x28 frames
    frames = pipeline.interpolate(pil_images[0], pil_images[1], num_steps=3, output_type="np").images
    assert frames.shape == (3, 28, 28, 1)

    # samples: 28x28 by default, the 32x32 square on request, the same pixels inside it
    samples = pipeline(batch_size=2, generator=_generator(), output_type="np").images
    squares = pipeline(batch_size=2, generator=_generator(), output_type="np", crop_to_source=False).images
    assert samples.shape == (2, 28, 28, 1) and squares.shape == (2, 32, 32, 1)
    np.testing.assert_array_equal(squares[:, 2:30, 2:30], samples)
    assert [image.size for image in pipeline(batch_size=2, generator=_generator()).images] == [(28, 28)] * 2

    # any other size: one line naming it and both sizes the model takes
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 1, 28, 28\) \(the data's own size, "
                                         r"source_size in the model config\) or \(batch, 1, 32, 32\) .* got "
                                         r"\(2, 1, 30, 30\)"):
        pipeline.reconstruct(_images(2, size=30))
    with pytest.raises(ValueError, match=r"\(batch, 1, 28, 28\) .* or \(batch, 1, 32, 32\) .* got \(1, 1, 30, 30\)"):
        pipeline.encode(_images(1, size=30))


def test_a_model_without_source_size_behaves_as_before():
    """Folders trained before hfgen recorded ``source_size``: 32x32 in and out, 28x28 refused as before."""
    torch.manual_seed(0)
    pipeline = VAEFamily().make_pipeline(VAEModel(block_out_channels=[8, 16], latent_channels=4).eval())
    assert pipeline.reconstruct(_images(1, size=32), output_type="pt").shape == (1, 1, 32, 32)
    assert pipeline(generator=_generator(), output_type="np").images.shape == (1, 32, 32, 1)
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 1, 32, 32\) \(channels, height, width "
                                         r"from the model config\), got \(1, 1, 28, 28\)$"):
        pipeline.reconstruct(_images(1))


def test_conditional_ddpm_records_the_source_size_and_samples_at_it(tmp_path, caplog):
    family = DDPMFamily()
    pipeline = _build(family, {"num_classes": 2, "class_names": ["a", "b"]})
    assert isinstance(pipeline, ClassConditionalDDPMPipeline)
    assert pipeline.unet.config[SOURCE_SIZE_KEY] == SOURCE
    assert family.scored_shape(pipeline.unet) == (1, 32, 32)  # the bound still scores the padded square
    call = dict(class_labels=["a", "b"], num_inference_steps=2, output_type="np")
    samples = pipeline(generator=_generator(), **call).images
    squares = pipeline(generator=_generator(), crop_to_source=False, **call).images
    assert samples.shape == (2, 28, 28, 1) and squares.shape == (2, 32, 32, 1)
    np.testing.assert_array_equal(squares[:, 2:30, 2:30], samples)
    images = family.sample_images(pipeline, 2, _generator(), class_labels="b", steps=2)
    assert [image.size for image in images] == [(28, 28)] * 2
    # the key survives saving and loading, without diffusers' "not expected and will be ignored" warning
    pipeline.save_pretrained(tmp_path / "ddpm")
    with caplog.at_level(logging.WARNING):
        loaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path / "ddpm")
    assert loaded.unet.config[SOURCE_SIZE_KEY] == SOURCE
    assert "not expected" not in caplog.text


def test_unconditional_ddpm_is_cropped_by_the_family_and_stock_diffusers_gives_the_square(tmp_path):
    family = DDPMFamily()
    pipeline = _build(family)
    assert type(pipeline) is DDPMPipeline and pipeline.unet.config[SOURCE_SIZE_KEY] == SOURCE
    images = family.sample_images(pipeline, 2, _generator(), steps=2)
    squares = family.sample_images(pipeline, 2, _generator(), steps=2, crop_to_source=False)
    assert [image.size for image in images] == [(28, 28)] * 2 and squares[0].size == (32, 32)
    np.testing.assert_array_equal(np.asarray(squares[0])[2:30, 2:30], np.asarray(images[0]))
    # diffusers' own DDPMPipeline knows nothing of the key: it returns the padded square the UNet generates
    pipeline.save_pretrained(tmp_path / "ddpm")
    stock = DDPMPipeline.from_pretrained(tmp_path / "ddpm")
    stock.set_progress_bar_config(disable=True)
    assert stock.unet.config[SOURCE_SIZE_KEY] == SOURCE
    assert stock(num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 1)


def test_latent_diffusion_samples_at_its_vae_s_source_size():
    torch.manual_seed(0)
    family = LatentDiffusionFamily()
    family.set_vae(VAEModel(block_out_channels=[8, 16], latent_channels=4, source_size=SOURCE, scaling_factor=1.5))
    pipeline = _build(family)
    assert SOURCE_SIZE_KEY not in pipeline.unet.config  # the latent UNet's input is no image: the VAE keeps the size
    samples = pipeline(generator=_generator(), num_inference_steps=2, output_type="np")
    squares = pipeline(generator=_generator(), num_inference_steps=2, output_type="np", crop_to_source=False)
    assert samples.images.shape == (1, 28, 28, 1) and squares.images.shape == (1, 32, 32, 1)
    np.testing.assert_array_equal(squares.images[:, 2:30, 2:30], samples.images)
    assert family.sample_images(pipeline, 2, _generator(), steps=2)[0].size == (28, 28)


def test_sample_quality_sees_samples_padded_back_as_the_data_are():
    """``generate_uint8`` pads the 28x28 samples to the feature network's 32x32 as the data layer pads: for a VAE
    (which decodes the zero border itself) exactly the padded square it generates, so its fd figures are unchanged."""
    family = VAEFamily()
    pipeline = _build(family)
    images = generate_uint8(family, pipeline, 3, seed=0, show_progress=False, channels=1, sample_size=32)
    squares = generate_uint8(family, pipeline, 3, seed=0, show_progress=False, channels=1, crop_to_source=False)
    assert images.shape == squares.shape == (3, 1, 32, 32)
    assert torch.equal(images, squares)
