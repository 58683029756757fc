import math

import numpy as np
import pytest
import torch

from diffusekit.core import (CountingDenoiser, FlowSchedule, VESchedule, VPDiscrete, VPLinear,
                             generators_from_seeds, grid_karras, prior_sample)
from diffusekit.samplers.baseline import sample_ddim
from diffusekit.samplers.karras import sample_euler_ancestral, sample_euler_sigma, sample_heun
from diffusekit.samplers.likelihood import solve_pf_ode


def moment_error(x, g):
    return float((x.mean(0) - g.mean()).norm() + (torch.cov(x.T) - g.covariance()).norm())


def measured_order(smooth_mixture, fn, schedule, steps, *, grid=grid_karras, n=100, **options):
    """Slope of log(mean error) vs log(steps) against an adaptive DOP853 reference from the same x_T."""
    den = smooth_mixture.denoiser(schedule)
    x = prior_sample(schedule, (n, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = grid(schedule, 2)
    ref = solve_pf_ode(den, x, ts[0], ts[-1])
    err = np.array([float((fn(den, x, grid(schedule, int(k)), **options) - ref).norm(dim=1).mean())
                    for k in steps])
    return -np.polyfit(np.log(steps), np.log(err), 1)[0], err


@pytest.mark.parametrize("schedule", [VPLinear(), VESchedule()], ids=["vp_linear", "ve"])
@pytest.mark.parametrize("fn,declared", [(sample_heun, 2), (sample_euler_sigma, 1)], ids=["heun", "euler_sigma"])
def test_convergence_order(smooth_mixture, schedule, fn, declared):
    assert fn.info.order == declared
    slope, err = measured_order(smooth_mixture, fn, schedule, [8, 16, 32, 64] if declared == 2 else [32, 64, 128, 256])
    assert abs(slope - declared) < 0.3, (slope, err)


@pytest.mark.parametrize("schedule", [VPDiscrete.named("linear"), VPLinear(), VESchedule(), FlowSchedule()],
                         ids=lambda s: type(s).__name__)
def test_heun_solves_the_pf_ode_for_every_schedule(smooth_mixture, schedule):
    """Through x~ = x/alpha, one Heun works for VP (discrete and continuous), VE and flow schedules."""
    den = smooth_mixture.denoiser(schedule)
    x = prior_sample(schedule, (50, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = grid_karras(schedule, 2)
    ref = solve_pf_ode(den, x, ts[0], ts[-1], rtol=1e-9, atol=1e-9)
    e50, e100 = (float((sample_heun(den, x, grid_karras(schedule, n)) - ref).norm(dim=1).max()) for n in (50, 100))
    assert e100 < 1e-2 and 3.0 < e50 / e100 < 5.0, (e50, e100)


def test_nfe_accounting(smooth_mixture):
    s = VPLinear()
    den = CountingDenoiser(smooth_mixture.denoiser(s))
    x = torch.randn(4, 2, dtype=torch.float64)
    gen = lambda: generators_from_seeds(0, 4)  # noqa: E731
    cases = [
        (sample_heun, {}, grid_karras(s, 7), 14),
        (sample_heun, {}, grid_karras(s, 7, t_end=0.0), 13),  # final Euler step to sigma = 0
        (sample_heun, {"S_churn": 5.0, "generator": gen()}, grid_karras(s, 7, t_end=0.0), 13),
        (sample_euler_sigma, {}, grid_karras(s, 7), 7),
        (sample_euler_sigma, {"S_churn": 5.0, "generator": gen()}, grid_karras(s, 7), 7),
        (sample_euler_sigma, {"S_churn": 5.0, "diffusers_churn": True, "generator": gen()}, grid_karras(s, 7), 7),
        (sample_euler_ancestral, {"generator": gen()}, grid_karras(s, 7, t_end=0.0), 7),
    ]
    for fn, opts, ts, expected in cases:
        den.calls = 0
        out = fn(den, x, ts, **opts)
        assert den.calls == expected, (fn.__name__, opts, den.calls)
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert sample_heun.info.nfe_per_step == 2 and sample_euler_ancestral.info.nfe_per_step == 1


@pytest.mark.parametrize("fn,opts", [
    (sample_euler_ancestral, {"eta": 1.0}),
    (sample_euler_ancestral, {"eta": 0.5, "s_noise": 1.01}),
    (sample_heun, {"S_churn": 40.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}),
    (sample_euler_sigma, {"S_churn": 10.0}),
    (sample_euler_sigma, {"S_churn": 10.0, "diffusers_churn": True}),
], ids=["ancestral", "ancestral_eta", "heun_churn", "euler_churn", "euler_diffusers_churn"])
def test_batch_size_invariance_with_per_sample_generators(mixture, fn, opts):
    s = VPDiscrete.named("linear")
    den = mixture.denoiser(s)
    seeds = list(range(200, 210))
    x = prior_sample(s, (10, 2), generators_from_seeds(seeds), dtype=torch.float64)
    ts = grid_karras(s, 12, t_end=0.0)
    full = fn(den, x, ts, generator=generators_from_seeds(seeds), **opts)
    part = fn(den, x[4:7], ts, generator=generators_from_seeds(seeds[4:7]), **opts)
    torch.testing.assert_close(part, full[4:7], rtol=1e-12, atol=1e-12)
    again = fn(den, x, ts, generator=generators_from_seeds(seeds), **opts)
    torch.testing.assert_close(again, full, rtol=0, atol=0)


def test_deterministic_limits_and_the_ddim_equivalence(mixture):
    s = VPLinear()
    den = mixture.denoiser(s)
    x = prior_sample(s, (16, 2), torch.Generator().manual_seed(2), dtype=torch.float64)
    ts = grid_karras(s, 10, t_end=0.0)
    euler = sample_euler_sigma(den, x, ts)
    torch.testing.assert_close(sample_euler_ancestral(den, x, ts, eta=0.0), euler, rtol=1e-12, atol=1e-12)
    # Euler in (x~, sigma~) is DDIM step for step: x~_t = x0_hat + sigma~_t eps_hat
    torch.testing.assert_close(euler, sample_ddim(den, x, ts), rtol=1e-12, atol=1e-12)
    # churn outside [S_min, S_max] is no churn at all
    torch.testing.assert_close(sample_heun(den, x, ts, S_churn=30.0, S_min=1e6, generator=torch.Generator()),
                               sample_heun(den, x, ts), rtol=0, atol=0)


@pytest.mark.parametrize("schedule", [VPLinear(), VESchedule()], ids=["vp_linear", "ve"])
def test_stochastic_samplers_sample_the_mixture(mixture, schedule):
    g = mixture  # the shared test mixture (conftest)
    den = g.denoiser(schedule)
    x = prior_sample(schedule, (6000, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    # Monte-Carlo noise of this statistic at 6000 samples is ~0.065 (true samples); at 30 steps both are ~0.3.
    ancestral = sample_euler_ancestral(den, x, grid_karras(schedule, 200, t_end=0.0),
                                       generator=torch.Generator().manual_seed(4))
    churned = sample_heun(den, x, grid_karras(schedule, 60, t_end=0.0), S_churn=30.0,
                          generator=torch.Generator().manual_seed(5))
    assert moment_error(ancestral, g) < 0.15
    assert moment_error(churned, g) < 0.15


def test_callback_and_dtype(smooth_mixture):
    s = VESchedule()
    seen = []
    x = torch.randn(3, 2) * 80
    out = sample_heun(smooth_mixture.denoiser(s), x, grid_karras(s, 5, t_end=0.0), callback=seen.append)
    assert [d["i"] for d in seen] == list(range(5)) and float(seen[-1]["t_next"]) == 0.0
    assert out.dtype == torch.float32 and torch.equal(seen[-1]["x"].to(out.dtype), out)


def test_bad_input(smooth_mixture):
    s = VPLinear()
    den = smooth_mixture.denoiser(s)
    x, ts = torch.randn(2, 2), grid_karras(s, 3)
    with pytest.raises(ValueError, match="S_churn must be >= 0"):
        sample_heun(den, x, ts, S_churn=-1)
    with pytest.raises(ValueError, match="S_min <= S_max"):
        sample_euler_sigma(den, x, ts, S_min=2.0, S_max=1.0)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        sample_euler_ancestral(den, x, ts, eta=-0.1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_heun(den, x, ts.flip(0))
    assert math.isinf(sample_heun.__kwdefaults__["S_max"])
