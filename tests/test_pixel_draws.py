"""Pixel draws are draws from the scored model: a Gaussian likelihood's draws fall in the bins whose masses the bound
scores, and with pixel passes every pass sees, when scored, the context it is decoded with (tiny configs, CPU)."""

import math

import pytest
import torch

from hfgen import HierarchicalVAEModel, VAEModel
from hfgen.models.likelihoods import get_likelihood

# 8x8 squares around 6x6 images: the border is what the context of the pixels next to it holds
MODELS = {
    "vae": (VAEModel, dict(sample_size=8, block_out_channels=[8, 16], latent_channels=2, latent_dim=4,
                           source_size=(6, 6))),
    "hvae": (HierarchicalVAEModel, dict(sample_size=8, block_out_channels=[8, 8, 8], groups_per_scale=[0, 1, 1],
                                        encoder_blocks_per_scale=[0, 1, 1], latent_channels=2, output_blocks=0,
                                        source_size=(6, 6))),
}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gaussian_pass_model(name):
    """A tiny Gaussian-likelihood model with 4 passes whose zero-initialised layers (the context convolution among
    them) are perturbed, so that every pixel's parameters depend on its decoded neighbours and on the border."""
    cls, config = MODELS[name]
    torch.manual_seed(0)
    model = cls(**config, likelihood="gaussian", pixel_passes=4, pixel_pass_layers=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("name", MODELS)
def test_gaussian_passes_score_each_pass_given_the_context_it_is_decoded_with(name):
    """Decode one image pass by pass with pixel draws, recording the parameters each pass is drawn from; then score
    that image the way the bound does (dequantized at random, several times): every pixel gets exactly the
    parameters it was drawn from, those next to the border included, whatever the dequantization noise."""
    model = _gaussian_pass_model(name)
    passes, output = model.interleaved_passes, (model.decoder.conv_out if name == "vae" else model.conv_out)
    likelihood = model.pixel_likelihood
    with torch.no_grad():
        if name == "vae":
            state = model.decode_parameters(torch.randn(2, 4, generator=_gen(1)))
        else:
            state = model.reconstruct_parameters(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
        drawn_from = []
        draw = likelihood.sample

        def recording_sample(params, channels, generator=None):
            drawn_from.append(params)
            return draw(params, channels, generator)

        likelihood.sample = recording_sample
        try:
            image = passes.decode(state, output, likelihood, 1, sample_pixels=True, generator=_gen(2))
        finally:
            del likelihood.sample
        assert len(drawn_from) == 4
        x_uint8 = model.to_uint8(image)
        assert (x_uint8[..., 1:7, 1:7] > 0).any() and not x_uint8[..., 0, :].any()  # real pixels, a zero border
        for seed in range(4):
            target = likelihood.prepare(x_uint8, _gen(10 + seed)).target
            scored = passes.parameters_given(state, likelihood.as_image(target), output)
            for k in range(4):
                decoded = passes.decoded[k].bool().expand_as(scored)
                torch.testing.assert_close(scored[decoded], drawn_from[k][decoded], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mean_level,scale_bins", [(250.5, 1.0), (256.0, 2.0)])
def test_gaussian_draws_fall_in_the_bins_the_likelihood_scores(mean_level, scale_bins):
    """The frequency of each 8-bit value among Gaussian draws is the mass of its bin under the density
    ``log_prob`` scores (integrated over the bin), the mass above 1 (which the bound leaves out) going to 255.
    Mean and scale in units of the 256 bins; the second case puts half the mass above the top bin."""
    likelihood = get_likelihood("gaussian")
    n = 40_000
    mean = mean_level / 128.0 - 1.0
    params = torch.tensor([mean, math.log(scale_bins * 2.0 / 256)]).view(1, 2, 1, 1)
    draws = likelihood.sample(params.expand(n, -1, -1, -1), 1, _gen(3))
    levels = (draws + 1.0) * 127.5
    assert (levels - levels.round()).abs().max() < 1e-4
    frequency = torch.bincount(levels.round().long().flatten(), minlength=256).double() / n
    # the bins' masses from log_prob: the midpoint rule over 400 points per bin of the [0, 256) scale
    offsets = (torch.arange(400, dtype=torch.float64) + 0.5) / 400
    points = (torch.arange(256, dtype=torch.float64).view(-1, 1) + offsets).flatten()
    density = likelihood.log_prob(params.expand(points.numel(), -1, -1, -1),
                                  (points / 128.0 - 1.0).float().view(-1, 1, 1, 1)).double().exp()
    mass = density.view(256, 400).mean(1)
    mass[255] += 1.0 - mass.sum()  # the mass outside [-1, 1]: above 1 here (below -1 it is below 1e-30)
    tolerance = 5 * (mass * (1 - mass) / n).sqrt() + 1e-4
    assert ((frequency - mass).abs() <= tolerance).all(), (frequency - mass).abs().max()
    assert mass.max() > 0.3  # the case is not vacuous
