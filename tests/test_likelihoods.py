"""The pixel likelihoods are proper distributions over 8-bit (or binary) images."""

import math

import pytest
import torch

from hfgen.models.likelihoods import (
    get_likelihood,
    nats_to_bits_per_dim,
    bits_per_dim_to_nats,
    uint8_to_unit_interval,
    unit_interval_to_uint8,
)


def _all_values_one_pixel(channels=1):
    """uint8 images (256, channels, 1, 1) holding every 8-bit value once."""
    return torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1).repeat(1, channels, 1, 1)


@pytest.mark.parametrize("num_mixtures", [1, 3])
def test_discretized_logistic_masses_sum_to_one(num_mixtures):
    torch.manual_seed(0)
    lik = get_likelihood("discretized_logistic", num_mixtures)
    params = torch.randn(1, lik.num_params(1), 1, 1) * 2
    params = params.repeat(256, 1, 1, 1)
    target = uint8_to_unit_interval(_all_values_one_pixel())
    log_mass = lik.log_prob(params, target)
    assert torch.isclose(torch.logsumexp(log_mass, 0), torch.tensor(0.0), atol=1e-4)


def test_discretized_logistic_rgb_coupled_masses_sum_to_one_over_one_channel_slice():
    # With the red and green values fixed, the masses over all blue values must sum to the (red, green) marginal.
    torch.manual_seed(1)
    lik = get_likelihood("discretized_logistic", 2)
    params = torch.randn(1, lik.num_params(3), 1, 1).repeat(256 * 256, 1, 1, 1)
    values = torch.arange(256, dtype=torch.uint8)
    red_green_blue = torch.stack(torch.meshgrid(values, values, indexing="ij"), -1).view(-1, 2)
    x = torch.cat([torch.full((256 * 256, 1), 77, dtype=torch.uint8), red_green_blue], 1).view(-1, 3, 1, 1)
    total = torch.logsumexp(lik.log_prob(params, uint8_to_unit_interval(x)), 0)
    # Sum over green and blue for red = 77 equals the red marginal, which is at most 1.
    assert total <= 1e-4
    assert total > math.log(1e-6)


def test_bernoulli_matches_closed_form():
    lik = get_likelihood("bernoulli")
    logits = torch.tensor([[[[0.3]]]])
    one = torch.ones(1, 1, 1, 1)
    assert torch.isclose(lik.log_prob(logits, one), torch.log(torch.sigmoid(torch.tensor(0.3))))
    batch = lik.prepare(torch.tensor([[[[0, 255]]]], dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert batch.target.tolist() == [[[[0.0, 1.0]]]]  # 0 and 255 binarize deterministically


def test_gaussian_is_bound_on_discrete_likelihood():
    # For a narrow Gaussian centred on a bin, E_u[log p(x + u)] <= log P(bin) <= 0: the bound stays below zero
    # in nats once the change of variables to the 8-bit grid is included.
    lik = get_likelihood("gaussian")
    x = torch.full((512, 1, 1, 1), 128, dtype=torch.uint8)
    batch = lik.prepare(x, torch.Generator().manual_seed(0))
    centre = (128.5 * 2 / 256) - 1
    params = torch.cat([torch.full((512, 1, 1, 1), centre), torch.full((512, 1, 1, 1), math.log(0.003))], 1)
    log_p = lik.log_prob(params, batch.target)
    assert log_p.mean() < 0
    assert log_p.mean() > -2.0  # a good fit costs little


def test_unit_conversions():
    x = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(unit_interval_to_uint8(uint8_to_unit_interval(x)), x)
    assert math.isclose(nats_to_bits_per_dim(1024 * math.log(2), 1024), 1.0)
    assert math.isclose(bits_per_dim_to_nats(1.0, 1024), 1024 * math.log(2))


def test_unknown_likelihood_is_named():
    with pytest.raises(ValueError, match="'poisson'.*bernoulli"):
        get_likelihood("poisson")
    with pytest.raises(ValueError, match="num_mixtures=3"):
        get_likelihood("bernoulli", 3)
