"""The pixel likelihoods are proper distributions over 8-bit (or binary) images."""

import math

import mpmath
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


# ---------------------------------------------------------------------------------------------- exact tails
# Reference bin masses come from mpmath at 60 significant digits: far in the tails float64's own Phi(b) - Phi(a)
# is 0 (100 grey levels off at the decoder's scale is about 110 standard deviations).

mpmath.mp.dps = 60

_DECODER_STD = 0.007  # about the DDPM decoder's standard deviation on the [-1, 1] scale (posterior std at t = 1)


def _reference_log_mass(cdf, value: int, mean: float, scale: float) -> float:
    """log P(8-bit bin ``value``) under a symmetric distribution with CDF ``cdf(z)`` at ``mean``, ``scale``."""
    centre = mpmath.mpf(value) * 2 / 255 - 1
    lower = -mpmath.inf if value == 0 else (centre - mpmath.mpf(1) / 255 - mean) / scale
    upper = mpmath.inf if value == 255 else (centre + mpmath.mpf(1) / 255 - mean) / scale
    if lower + upper > 0:  # upper tail: the same mass as the mirrored interval, which needs no 1 - 1e-2600
        lower, upper = -upper, -lower
    return float(mpmath.log(cdf(upper) - cdf(lower)))


@pytest.mark.parametrize("levels_off", [0, 3, 10, 30, 100, -10, -30, -100])
@pytest.mark.parametrize("value", [0, 77, 255])
def test_discretized_gaussian_decoder_is_exact_far_in_the_tails(value, levels_off):
    from hfgen.models.ddpm import discretized_gaussian_nll

    mean = (value - levels_off) * 2 / 255 - 1  # the pixel is `levels_off` grey levels above the mean
    x0 = uint8_to_unit_interval(torch.tensor([value], dtype=torch.uint8))
    nll = discretized_gaussian_nll(x0, torch.tensor([mean]), torch.tensor([2 * math.log(_DECODER_STD)]))
    expected = -_reference_log_mass(mpmath.ncdf, value, mean, _DECODER_STD)
    assert torch.isfinite(nll).all()
    assert float(nll) == pytest.approx(expected, rel=2e-5, abs=1e-4)  # float32 arithmetic, up to ~5e4 nats


@pytest.mark.parametrize("levels_off", [0, 3, 10, 30, 100, -10, -30, -100])
@pytest.mark.parametrize("value", [0, 77, 255])
def test_discretized_logistic_is_exact_far_in_the_tails(value, levels_off):
    scale = math.exp(-5.0)  # a sharp decoder: 100 grey levels off is ~ 116 scales
    mean = (value - levels_off) * 2 / 255 - 1
    lik = get_likelihood("discretized_logistic")
    params = torch.tensor([mean, math.log(scale)]).view(1, 2, 1, 1)
    log_p = lik.log_prob(params, uint8_to_unit_interval(torch.tensor([value], dtype=torch.uint8).view(1, 1, 1, 1)))
    expected = _reference_log_mass(lambda z: 1 / (1 + mpmath.exp(-z)), value, mean, scale)
    assert float(log_p) == pytest.approx(expected, rel=2e-5, abs=1e-4)


def test_exact_tails_have_finite_gradients():
    from hfgen.models.ddpm import discretized_gaussian_nll

    x0 = uint8_to_unit_interval(torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8))
    mean = torch.tensor([0.9, -0.9, 0.0, -0.95, -0.9], requires_grad=True)
    log_variance = torch.full((5,), 2 * math.log(_DECODER_STD), requires_grad=True)
    discretized_gaussian_nll(x0, mean, log_variance).sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_variance.grad).all()
    params = torch.stack([mean.detach(), torch.full((5,), -5.0)]).t().reshape(5, 2, 1, 1).requires_grad_()
    get_likelihood("discretized_logistic").log_prob(params, x0.view(5, 1, 1, 1)).sum().backward()
    assert torch.isfinite(params.grad).all()
