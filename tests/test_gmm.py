import math

import pytest
import torch
from scipy.stats import multivariate_normal

from diffusekit.core import FlowSchedule, GaussianMixture, VESchedule, VPDiscrete, VPLinear


def test_log_prob_matches_scipy(mixture):
    g = mixture  # the shared test mixture (conftest)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    ref = sum(float(w) * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
              for w, m, c in zip(g.weights, g.means, g.covs))
    torch.testing.assert_close(g.log_prob(x), torch.log(torch.as_tensor(ref)), rtol=1e-10, atol=1e-10)


def test_sampling_moments(mixture):
    g = mixture  # the shared test mixture (conftest)
    x = g.sample(200_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x.mean(0), g.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), g.covariance(), atol=0.02, rtol=0)


@pytest.mark.parametrize("schedule,t", [(VPDiscrete.named("linear"), 0.3), (VPLinear(), 0.6), (VESchedule(), 0.8),
                                        (FlowSchedule(), 0.5)], ids=["vp_discrete", "vp_linear", "ve", "flow"])
def test_posterior_mean_against_monte_carlo(mixture, schedule, t):
    """E[x0 | x_t] by self-normalised importance sampling over prior draws, weights N(x_t; alpha x0, sigma^2 I)."""
    g = mixture  # the shared test mixture (conftest)
    alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
    x0 = g.sample(400_000, torch.Generator().manual_seed(2))
    points = torch.tensor([[1.0, 0.5], [-0.5, -1.0], [0.2, 1.2]], dtype=torch.float64) * max(alpha, 0.5)
    exact = g.denoiser(schedule)(points, t)
    for p, e in zip(points, exact):
        logw = -((p - alpha * x0) ** 2).sum(1) / (2 * sigma**2)
        w = torch.softmax(logw, 0)
        ess = 1 / (w**2).sum()
        assert ess > 500, "Monte-Carlo estimate too weak to be a check"
        mc = (w[:, None] * x0).sum(0)
        mc_se = torch.sqrt((w[:, None] ** 2 * (x0 - mc) ** 2).sum(0))
        assert torch.all((mc - e).abs() < 5 * mc_se + 1e-3), (mc, e, mc_se)


def test_denoiser_limits(mixture):
    g = mixture  # the shared test mixture (conftest)
    s = VPLinear()
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(g.denoiser(s)(x, 0.0), x)  # sigma = 0: x0 = x / alpha, alpha = 1
    far = g.denoiser(FlowSchedule())(x, 1.0)  # alpha = 0: the posterior mean is the data mean
    torch.testing.assert_close(far, g.mean().expand(5, 2))


def test_marginal_density_is_gaussian_convolution(mixture):
    g = mixture  # the shared test mixture (conftest)
    alpha, sigma = 0.6, 0.8
    x = torch.randn(20, 2, dtype=torch.float64)
    ref = sum(float(w) * multivariate_normal(alpha * m.numpy(), (alpha**2 * c + sigma**2 * torch.eye(2)).numpy()).pdf(
        x.numpy()) for w, m, c in zip(g.weights, g.means, g.covs))
    torch.testing.assert_close(g.marginal_log_prob(x, alpha, sigma), torch.log(torch.as_tensor(ref)))


def test_bad_mixtures(mixture):
    with pytest.raises(ValueError, match="covs must have shape"):
        GaussianMixture(torch.zeros(2, 3), torch.eye(2).expand(2, 2, 2))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(torch.zeros(1, 2), -torch.eye(2)[None])
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 2\)"):
        mixture.denoiser(VPLinear())(torch.zeros(3, 4), 0.5)
    assert math.isclose(float(mixture.weights.sum()), 1.0)
