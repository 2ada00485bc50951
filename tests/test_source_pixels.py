"""Bits/dim over the data's own pixels: a VAE-family model with ``source_size`` scores only the 28x28 image inside
its zero-padded 32x32 input, so its bound is a bound on that image and its dimensions are 784."""

import pytest
import torch

from hfgen import HierarchicalVAEModel, VAEModel
from hfgen.data import SourceShape
from hfgen.evaluation import evaluate_likelihood
from hfgen.families import DDPMFamily, HVAEFamily, VAEFamily

TINY = {
    "vae": (VAEModel, VAEFamily, dict(block_out_channels=(8, 16), latent_channels=4)),
    "hvae": (HierarchicalVAEModel, HVAEFamily, dict(block_out_channels=(8, 8), groups_per_scale=(1, 1),
                                                     latent_channels=2)),
}


def _padded_images(n=6, seed=0):
    """28x28 uint8 images zero-padded to 32x32 as the data layer pads them, and the 28x28 images alone."""
    inner = torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return torch.nn.functional.pad(inner, (2, 2, 2, 2)), inner


def _decoder_output_layer(model):
    return model.decoder.conv_out if isinstance(model, VAEModel) else model.conv_out


@pytest.mark.parametrize("name", ["vae", "hvae"])
@pytest.mark.parametrize("likelihood", ["discretized_logistic", "bernoulli"])
def test_padded_pixels_change_no_bound(name, likelihood):
    model_class, _, config = TINY[name]
    torch.manual_seed(0)
    model = model_class(sample_size=32, source_size=[28, 28], likelihood=likelihood, **config).eval()
    padded, _ = _padded_images()
    assert model.num_dims == 784

    def bounds():
        out = model.log_likelihood_bounds(padded, importance_samples=3, generator=torch.Generator().manual_seed(1))
        return out.nats_per_image_elbo, out.nats_per_image_iw

    before = bounds()
    # whatever the decoder says about the border, the bound of the 28x28 image is the same
    border = torch.ones(1, 1, 32, 32)
    border[..., 2:30, 2:30] = 0
    hook = _decoder_output_layer(model).register_forward_hook(lambda m, i, out: out + 50.0 * border)
    after = bounds()
    hook.remove()
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ... and it is the 28x28 image's own likelihood: the pixel likelihood on the cropped decoder output
    with torch.no_grad():
        x = model.pixel_likelihood.prepare(padded, torch.Generator().manual_seed(2))
        decoded = model.reconstruct_parameters(padded) if name == "hvae" else model.decode_parameters(
            model.encode(x.model_input).latent_dist.mode())
        cropped = model.pixel_likelihood.log_prob(decoded[..., 2:30, 2:30], x.target[..., 2:30, 2:30])
        torch.testing.assert_close(model.log_prob(decoded, x.target), cropped)


@pytest.mark.parametrize("name", ["vae", "hvae"])
def test_decoded_images_get_the_zero_border_back(name):
    model_class, _, config = TINY[name]
    model = model_class(sample_size=32, source_size=[28, 28], **config).eval()
    pipe_images = (model.decode(model.sample_latents(4, torch.Generator().manual_seed(0))).sample if name == "vae"
                   else model.decode_image(model.reconstruct_parameters(_padded_images(4)[0])))
    assert pipe_images.shape == (4, 1, 32, 32)
    assert (pipe_images[..., :2, :] == -1).all() and (pipe_images[..., :, 30:] == -1).all()
    assert (pipe_images[..., 2:30, 2:30] > -1).any()


@pytest.mark.parametrize("name", ["vae", "hvae"])
def test_evaluation_divides_by_the_source_dimensions_and_names_the_bound(name):
    model_class, family_class, config = TINY[name]
    padded, _ = _padded_images()
    family = family_class()
    own = model_class(sample_size=32, source_size=[28, 28], **config).eval()
    figures = evaluate_likelihood(family, own, padded, source_shape=SourceShape(1, 28, 28), show_progress=False)
    assert figures["num_dims"] == 784 and figures["bound_over"] == "source image"
    assert figures["source_shape"] == [1, 28, 28] and figures["sample_shape"] == [1, 32, 32]
    assert figures["bits_per_dim_elbo"] == pytest.approx(figures["nats_per_image_elbo"] / (784 * 0.6931471805599453))
    assert figures["likelihood"] == {"name": "discretized_logistic", "data": "8-bit"}
    # a model that scores the whole square (a folder trained before source_size): the padded image's bound,
    # over the same 784 dimensions
    old = model_class(sample_size=32, **config).eval()
    figures = evaluate_likelihood(family, old, padded, source_shape=SourceShape(1, 28, 28), show_progress=False)
    assert figures["num_dims"] == 784 and figures["bound_over"] == "padded image"
    # a model of 28x28 images cannot bound images whose own size is 32x32
    with pytest.raises(ValueError, match="scores 1x28x28 pixels .* but these images are 1x32x32"):
        evaluate_likelihood(family, own, padded, source_shape=SourceShape(1, 32, 32), show_progress=False)


def test_ddpm_bound_is_of_the_padded_image_over_the_source_dimensions():
    family = DDPMFamily()
    unet = family.build_model(family.presets["tiny"].model, 1, 32).eval()
    padded, _ = _padded_images(2)
    figures = evaluate_likelihood(family, unet, padded, importance_samples=2, source_shape=SourceShape(1, 28, 28),
                                  show_progress=False)
    assert figures["num_dims"] == 784 and figures["bound_over"] == "padded image"
    assert figures["vlb_timesteps"] == 2 and not [key for key in figures if key.endswith("_iw")]
    assert "importance_samples" not in figures
