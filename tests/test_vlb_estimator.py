"""The default L_vlb estimate against the exact bound: Gaussian data, whose optimal denoiser and expected L_vlb terms
are known in closed form, with T = 1000. The default number of stratified timesteps per image
(``DDPMFamily.default_importance_samples``, what ``hfgen evaluate`` and training use unless told otherwise) lands
within its stated error of the exact bound; the one-timestep estimate, hfgen's old default, mostly does not: it is
unbiased, but L_vlb's mass sits in the terms of the few smallest t, which one uniform timestep per image reaches in
few images, so its mean over a split mostly falls below the bound by more than its own standard error says.
"""

import math
import statistics
import types

import torch

from hfgen.evaluation import summarize_bounds
from hfgen.families import DDPMFamily
from hfgen.models.ddpm import build_scheduler, continuous_variational_bound

T = 1000
#: data N(0, VARIANCE I): below the noise of the first timesteps, so that the small-t terms carry L_vlb's mass, as
#: the fine detail of images does
VARIANCE = 1e-4
IMAGES, DIMS, REPEATS = 20, 256, 40


class ExactDenoiser(torch.nn.Module):
    """The optimal epsilon-prediction of N(0, v I) data: E[x_0 | x_t] = k_t x_t with
    k_t = sqrt(abar_t) v / (abar_t v + 1 - abar_t), so E[eps | x_t] = (1 - sqrt(abar_t) k_t) x_t / sqrt(1 - abar_t)."""

    def __init__(self, alphas_cumprod: torch.Tensor, variance: float):
        super().__init__()
        self.alphas_cumprod, self.variance = alphas_cumprod, variance

    def forward(self, x_t, t, class_labels=None):
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        k = abar.sqrt() * self.variance / (abar * self.variance + 1 - abar)
        return types.SimpleNamespace(sample=((1 - abar.sqrt() * k) * x_t / (1 - abar).sqrt()).float())


def exact_bound(x0: torch.Tensor, scheduler, variance: float) -> torch.Tensor:
    """E over x_1..x_T of every one of the T terms of L_vlb, summed, per image (nats), for the exact denoiser with
    fixed_small variances and the Gaussian decoder: written out here from the closed forms, not through hfgen's
    code. With x_t = a_t x_0 + s_t eps and the model's x_0 = k_t x_t, E (x_0 - k_t x_t)^2 = (1 - k_t a_t)^2 x_0^2 +
    k_t^2 s_t^2, which every reverse KL (a mean mismatch c_t (x_0 - k_t x_t) under the posterior variance) and the
    decoder's Gaussian NLL (variance: the posterior variance of t = 1) take in expectation."""
    betas = scheduler.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    posterior_variance = betas * (1 - abar_prev) / (1 - abar)
    coef_x0 = betas * abar_prev.sqrt() / (1 - abar)
    a, s2 = abar.sqrt(), 1 - abar
    k = a * variance / (abar * variance + s2)
    x2 = x0.double().pow(2).flatten(1)
    squared_error = lambda t: (1 - k[t] * a[t]) ** 2 * x2 + k[t] ** 2 * s2[t]  # noqa: E731
    prior = 0.5 * (abar[-1] * x2 + s2[-1] - 1 - torch.log(s2[-1])).sum(1)
    decoder = 0.5 * (math.log(2 * math.pi) + torch.log(posterior_variance[1])
                     + squared_error(0) / posterior_variance[1]).sum(1)
    weights = 0.5 * coef_x0[1:] ** 2 / posterior_variance[1:]
    kls = (weights * (1 - k[1:] * a[1:]) ** 2).sum() * x2.sum(1) + (weights * k[1:] ** 2 * s2[1:]).sum() * x2.shape[1]
    return prior + decoder + kls


def estimate(model, scheduler, x0, timesteps, generator) -> tuple[float, float]:
    """Mean bound and its stated standard error in bits/dim, as ``hfgen evaluate`` reports them."""
    nats = continuous_variational_bound(model, scheduler, x0, timesteps, generator).nats_per_image.double()
    figures = summarize_bounds([nats.sum().item(), nats.pow(2).sum().item(), 0.0, 0.0, float(len(nats))], DIMS,
                               timesteps, importance_weighted=False)
    return figures["bits_per_dim_elbo"], figures["bits_per_dim_elbo_stderr"]


def test_default_timesteps_land_within_their_stated_error_of_the_exact_bound_and_one_timestep_does_not():
    torch.manual_seed(0)
    scheduler = build_scheduler({"num_train_timesteps": T, "variance_type": "fixed_small", "clip_sample": False})
    model = ExactDenoiser(torch.cumprod(1 - scheduler.betas.double(), 0).float(), VARIANCE)
    default = DDPMFamily.default_importance_samples
    assert default >= 16
    to_bpd = 1 / (DIMS * math.log(2))
    z_default, z_one, z_all, below_one = [], [], [], 0
    for repeat in range(REPEATS):
        generator = torch.Generator().manual_seed(repeat)
        x0 = torch.randn(IMAGES, 1, 1, DIMS, generator=generator) * math.sqrt(VARIANCE)
        exact = exact_bound(x0, scheduler, VARIANCE).mean().item() * to_bpd
        runs = ((default, z_default), (1, z_one)) + (((T - 1, z_all),) if repeat < 4 else ())
        for timesteps, scores in runs:
            mean, stderr = estimate(model, scheduler, x0, timesteps, generator)
            scores.append((mean - exact) / stderr)
        below_one += z_one[-1] < 0
    # every term summed (4 repeats) agrees with the closed form: the test's exact bound is the estimator's target
    assert max(abs(z) for z in z_all) < 3, z_all
    # the default: within 3 stated standard errors in every repeat (observed: |z| <= 1.65)
    assert max(abs(z) for z in z_default) < 3, z_default
    # one timestep: below the exact bound in most repeats (observed 37 of 40, median -0.52 bits/dim), and by more
    # than 3 of its own standard errors in most (observed 32 of 40): its stated error does not cover what it misses
    assert below_one >= 0.6 * REPEATS, below_one
    assert sum(z < -3 for z in z_one) >= REPEATS / 2, sorted(z_one)
    assert statistics.median(z_one) < -3 < statistics.median(z_default)
