import math

import pytest
import torch

from diffusekit.core import CountingDenoiser, VESchedule, VPLinear, generators_from_seeds, \
    grid_karras, prior_sample
from diffusekit.samplers.karras import sample_heun
from diffusekit.samplers.likelihood import (bits_per_dim, divergence_exact, divergence_hutchinson, draw_probes,
                                            pf_ode_drift, pf_ode_log_likelihood, solve_pf_ode)


SCHEDULES = [VPLinear(t_min=1e-4), VESchedule(sigma_min=1e-3)]


def test_exact_divergence_of_a_linear_map():
    a = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, 5, dtype=torch.float64)
    out, div = divergence_exact(lambda y: y @ a.T, x)
    torch.testing.assert_close(out, x @ a.T)
    torch.testing.assert_close(div, torch.full((7,), float(torch.trace(a)), dtype=torch.float64))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(mixture, kind):
    """Mean over many probes -> exact divergence of the GMM denoiser, within 5 standard errors."""
    s = VPLinear()
    den = mixture.denoiser(s)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fn = lambda y: den(y, 0.3)  # noqa: E731
    _, exact = divergence_exact(fn, x)
    probes = draw_probes(x, 4000, kind, generators_from_seeds(0, 6))
    assert probes.shape == (4000, 6, 2)
    if kind == "rademacher":
        assert set(probes.unique().tolist()) == {-1.0, 1.0}
    single = torch.stack([divergence_hutchinson(fn, x, probes[m:m + 1])[1] for m in range(200)])  # (200, 6)
    _, estimate = divergence_hutchinson(fn, x, probes)
    stderr = single.std(0) / math.sqrt(4000)
    assert bool(((estimate - exact).abs() <= 5 * stderr + 1e-12).all()), (estimate, exact, stderr)
    # per-sample generators: a sample's probes do not depend on its batch
    torch.testing.assert_close(draw_probes(x[2:4], 3, kind, generators_from_seeds([2, 3])),
                               draw_probes(x, 3, kind, generators_from_seeds(0, 6))[:, 2:4], rtol=0, atol=0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["vp_linear", "ve"])
def test_log_likelihood_matches_the_exact_gmm_density(mixture, schedule):
    g = mixture  # the shared test mixture (conftest)
    den = CountingDenoiser(g.denoiser(schedule))
    x = g.sample(64, torch.Generator().manual_seed(2))
    exact_t_min = g.marginal_log_prob(x, schedule.alpha(schedule.t_min), schedule.sigma(schedule.t_min))
    exact_prior = lambda y: g.marginal_log_prob(y, schedule.alpha(schedule.t_max), schedule.sigma(schedule.t_max))  # noqa: E731
    # adaptive solve with the exact p_T: only solver error remains
    adaptive = pf_ode_log_likelihood(den, x, solver="scipy", prior_log_prob=exact_prior)
    assert float((adaptive.log_prob - exact_t_min).abs().max()) < 2e-4
    # fixed-step RK4 (4 NFE per step) with the default Gaussian prior: prior mismatch ~0.01-0.02 nats
    den.calls = 0
    rk4 = pf_ode_log_likelihood(den, x, solver="rk4", steps=50)
    assert den.calls == rk4.nfe == 200
    assert float((rk4.log_prob - exact_t_min).abs().max()) < 0.03
    assert float((rk4.log_prob - g.log_prob(x)).abs().max()) < 0.03  # t_min is small: p_{t_min} ~ p_0
    torch.testing.assert_close(rk4.log_prob, rk4.prior_log_prob + rk4.delta_log_prob)
    heun = pf_ode_log_likelihood(den, x, solver="heun", steps=100, prior_log_prob=exact_prior)
    assert float((heun.log_prob - exact_t_min).abs().max()) < 0.05


def test_hutchinson_log_likelihood_agrees_in_expectation(mixture):
    s = VPLinear(t_min=1e-3)
    g = mixture  # the shared test mixture (conftest)
    den = g.denoiser(s)
    x = g.sample(16, torch.Generator().manual_seed(3)).repeat(64, 1)  # 64 independent probes per point
    exact_prior = lambda y: g.marginal_log_prob(y, s.alpha(s.t_max), s.sigma(s.t_max))  # noqa: E731
    exact = pf_ode_log_likelihood(den, x[:16], steps=30, prior_log_prob=exact_prior).log_prob
    hutch = pf_ode_log_likelihood(den, x, steps=30, divergence="hutchinson", probe="rademacher",
                                  generator=generators_from_seeds(0, len(x)), prior_log_prob=exact_prior).log_prob
    per_point = hutch.reshape(64, 16)
    stderr = per_point.std(0) / 8
    assert float(per_point.std(0).min()) > 0  # the estimate is random
    assert float(((per_point.mean(0) - exact).abs() / stderr).max()) < 5


def test_encoding_is_reversible_and_matches_the_samplers(mixture):
    s = VESchedule()
    den = mixture.denoiser(s)
    x_T = prior_sample(s, (20, 2), torch.Generator().manual_seed(4), dtype=torch.float64)
    x_0 = solve_pf_ode(den, x_T, s.t_max, s.t_min)
    torch.testing.assert_close(solve_pf_ode(den, x_0, s.t_min, s.t_max), x_T, rtol=1e-6, atol=1e-6)
    heun = sample_heun(den, x_T, grid_karras(s, 400))
    assert float((heun - x_0).norm(dim=1).max()) < 1e-3
    # pf_ode_drift is dx/dt: one Euler step of it matches a tiny reference step
    x, t, h = x_0, 1.0, 1e-6
    step = solve_pf_ode(den, x, t, t - h, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close((x - step) / h, pf_ode_drift(den, x, t), rtol=1e-4, atol=1e-4)


def test_bits_per_dim():
    lp = torch.tensor([-2.0 * math.log(2.0), 0.0])
    torch.testing.assert_close(bits_per_dim(lp, 2), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # 8-bit data on [-1, 1]: +7 bits per dimension (bins of width 2/256 = 2^-7)
    torch.testing.assert_close(bits_per_dim(lp, 2, bins=256), torch.tensor([8.0, 7.0], dtype=torch.float64))


def test_bad_input(mixture):
    s = VPLinear()
    den = mixture.denoiser(s)
    x = torch.randn(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown solver"):
        pf_ode_log_likelihood(den, x, solver="euler")
    with pytest.raises(ValueError, match="sigma\\(t_min\\) > 0"):
        pf_ode_log_likelihood(den, x, t_min=0.0)
    with pytest.raises(ValueError, match="unknown probe kind"):
        draw_probes(x, 1, "uniform")
    with pytest.raises(ValueError, match="0 < sigma~ < inf"):
        solve_pf_ode(den, x, 1.0, 0.0)
