"""Every registered sampler on every schedule kind from its default start, the exact steps from alpha = 0, and
the exact NFE each sampler declares (``SamplerInfo.nfe``)."""

import functools

import numpy as np
import pytest
import torch

from diffusekit.core import (CountingDenoiser, FlowSchedule, VESchedule, VPDiscrete, VPLinear, generators_from_seeds,
                             grid_uniform, make_grid, prior_sample)
from diffusekit.samplers import (SAMPLERS, sample, sample_dpm_solver_multistep, sample_dpm_solver_singlestep,
                                 sample_euler_maruyama, sample_heun, sample_sde_dpm_solver_pp_2m)

SCHEDULES = {
    "vp_discrete": VPDiscrete.named("linear"),
    "vp_zero_snr": VPDiscrete.named("scaled_linear", zero_terminal_snr=True, beta_start=0.00085, beta_end=0.012),
    "vp_cosine": VPDiscrete.named("cosine"),
    "vp_linear": VPLinear(),
    "ve": VESchedule(),
    "flow": FlowSchedule(),
}
STEPS = 24
# mean distance to the reference after 24 logSNR steps, by declared order (measured worst case over the
# schedules: 0.17, 0.072, 0.044); a sampler that mishandles its first step is off by O(1)
TOLERANCE = {1: 0.3, 2: 0.15, 3: 0.08, 4: 0.08}


@functools.lru_cache(maxsize=None)
def problem(mixture, name):
    """(denoiser, x_T at t_max, reference solution at t = 0): singlestep DPM-Solver-3 on 300 logSNR steps."""
    s = SCHEDULES[name]
    den = mixture.denoiser(s)
    x = prior_sample(s, (200, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = sample_dpm_solver_singlestep(den, x, make_grid("logsnr", s, 300, t_end=0.0), order=3)
    return den, x, ref


def moment_error(x, g):
    return float((x.mean(0) - g.mean()).norm() + (torch.cov(x.T) - g.covariance()).norm())


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_the_reference_is_independent_of_the_first_step_scheme(mixture, name):
    """The reference's first step from alpha = 0 (where there is one) is third-order RK in u; Heun's is the
    trapezoidal rule: on fine grids both reach the same solution, far inside the tolerances below (>= 0.08)."""
    den, x, ref = problem(mixture, name)
    s = SCHEDULES[name]
    assert (float(s.alpha(s.t_max)) == 0) == (name in ("vp_zero_snr", "flow"))
    other = sample_heun(den, x, make_grid("karras", s, 600, t_end=0.0))
    assert float((other - ref).norm(dim=1).mean()) < 1e-3  # measured 1.6e-4 (vp_cosine) .. 2e-5


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", sorted(k for k, v in SAMPLERS.items() if not v.students_only))
def test_every_sampler_from_the_default_start(mixture, name, schedule):
    """From t_max (alpha = 0 on the flow and zero-terminal-SNR schedules) on the default logSNR grid to t = 0:
    finite, and close to the exact ODE solution (deterministic) or to the data's moments (stochastic)."""
    info = SAMPLERS[name]
    den, x, ref = problem(mixture, schedule)
    s = SCHEDULES[schedule]
    ts = make_grid("logsnr", s, STEPS, t_end=0.0)
    assert float(ts[0]) == s.t_max
    if info.stochastic:
        x = prior_sample(s, (2000, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
        ts = make_grid("logsnr", s, 2 * STEPS, t_end=0.0)
        out = sample(name, den, x, ts, generator=generators_from_seeds(3, 2000))
        assert torch.isfinite(out).all()
        # measured 0.04-0.35 (2000 true samples: 0.13; the prior itself: >= 2)
        assert moment_error(out, mixture) < 0.5
    else:
        out = sample(name, den, x, ts)
        assert torch.isfinite(out).all()
        err = float((out - ref).norm(dim=1).mean())
        assert err < TOLERANCE[info.order], err


# ------------------------------------------------------------------------------------------------
# The step from alpha = 0 itself
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _first_step_problem(mixture, lam_1):
    """(denoiser, x at t = 1, t_1 = t(lam_1), reference x at t_1: DPM-Solver-3 on 400 steps)."""
    s = SCHEDULES["flow"]
    den = mixture.denoiser(s)
    x = prior_sample(s, (300, 2), torch.Generator().manual_seed(2), dtype=torch.float64)
    t_1 = float(s.t_of_lam(torch.tensor(lam_1, dtype=torch.float64)))
    return den, x, t_1, sample_dpm_solver_singlestep(den, x, grid_uniform(s, 400, t_start=1.0, t_end=t_1), order=3)


def _first_step_error(mixture, fn, lam_1):
    den, x, t_1, ref = _first_step_problem(mixture, lam_1)
    return float((fn(den, x, torch.tensor([1.0, t_1], dtype=torch.float64)) - ref).norm(dim=1).mean())


@pytest.mark.parametrize("name, local_order", [
    ("ddim", 2), ("euler_sigma", 2), ("dpm_solver_pp_2m", 2), ("unipc_bh2_2", 2), ("plms", 2), ("plms_ghvb", 2),
    ("dpm_solver_2", 3), ("dpm_solver_pp_2s", 3), ("heun", 3), ("dpm_solver_3", 4), ("dpm_solver_pp_3s", 4),
    ("pndm", 5),
])
def test_the_step_from_alpha_zero_has_the_declared_local_order_in_u(mixture, name, local_order):
    """One step from t = 1 (u = alpha/sigma = 0) to u_1 = e^lam_1: its error falls like u_1^(k+1) for the
    Runge-Kutta method of order k it is in the data-prediction variables (y = x/sigma, u)."""
    lams = np.array([-3.0, -3.5, -4.0, -4.5]) + (1.5 if local_order == 5 else 0.0)  # RK4 reaches 1e-11 there
    err = np.array([_first_step_error(mixture, SAMPLERS[name].fn, float(lm)) for lm in lams])
    slope = np.polyfit(lams, np.log(err), 1)[0]  # d log err / d log u
    assert abs(slope - local_order) < 0.3, (slope, err)


def test_euler_maruyama_from_alpha_zero_draws_the_ddpm_posterior(mixture):
    s = SCHEDULES["flow"]
    den = mixture.denoiser(s)
    x = prior_sample(s, (64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = torch.tensor([1.0, 0.7, 0.0], dtype=torch.float64)
    steps = []
    sample_euler_maruyama(den, x, ts, generator=generators_from_seeds(5, 64), callback=steps.append)
    z = torch.stack([torch.randn(2, generator=g, dtype=torch.float64) for g in generators_from_seeds(5, 64)])
    torch.testing.assert_close(steps[0]["x"], 0.3 * den(x, 1.0) + 0.7 * z, rtol=1e-12, atol=1e-12)


def test_sde_dpm_solver_at_eta_zero_is_dpm_solver_pp_2m_from_alpha_zero(mixture):
    s = SCHEDULES["flow"]
    den = mixture.denoiser(s)
    x = prior_sample(s, (64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = make_grid("logsnr", s, 12, t_end=0.0)
    a = sample_sde_dpm_solver_pp_2m(den, x, ts, eta=0.0)
    b = sample_dpm_solver_multistep(den, x, ts, order=2)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_first_order_step_from_alpha_zero_is_ddim(mixture):
    """euler_sigma, euler_ancestral at eta = 0, PLMS and DPM-Solver-1 all take x_t = alpha_t x0_hat +
    sigma_t x_s/sigma_s from alpha = 0, as DDIM does."""
    s = SCHEDULES["vp_zero_snr"]
    den = mixture.denoiser(s)
    x = prior_sample(s, (64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = torch.tensor([1.0, 0.9], dtype=torch.float64)
    ddim = sample("ddim", den, x, ts)
    for name, opts in [("euler_sigma", {}), ("euler_ancestral", {"eta": 0.0}), ("plms", {}), ("dpm_solver_1", {}),
                       ("plms_hb", {}), ("dpm_solver_pp_3m", {}), ("unipc_bh1_3", {})]:
        torch.testing.assert_close(sample(name, den, x, ts, **opts), ddim, rtol=1e-12, atol=1e-12, msg=name)


# ------------------------------------------------------------------------------------------------
# Declared NFE
# ------------------------------------------------------------------------------------------------
def _grids(schedule, n):
    yield grid_uniform(schedule, n)  # ends at t_min
    yield grid_uniform(schedule, n, t_end=0.0)
    yield make_grid("logsnr", schedule, n, t_end=0.0)
    if isinstance(schedule, VPDiscrete):
        yield make_grid("trailing", schedule, n)
        yield make_grid("trailing", schedule, n, final="first")


@pytest.mark.parametrize("schedule", ["vp_discrete", "flow"])
@pytest.mark.parametrize("name", sorted(k for k, v in SAMPLERS.items() if not v.adaptive and not v.students_only))
def test_the_denoiser_is_called_exactly_the_declared_nfe(mixture, name, schedule):
    info = SAMPLERS[name]
    s = SCHEDULES[schedule]
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opts = {"generator": torch.Generator().manual_seed(0)} if info.stochastic else {}
    for n in range(1, 13):
        for ts in _grids(s, n):
            den = CountingDenoiser(mixture.denoiser(s))
            out = sample(name, den, x, ts, **opts)
            assert den.calls == info.nfe(ts), (n, ts.tolist(), den.calls, info.nfe(ts))
            assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


def test_declared_nfe_formulas():
    ts_zero = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)
    ts_min = torch.linspace(1.0, 0.01, 11, dtype=torch.float64)
    assert SAMPLERS["heun"].nfe(ts_zero) == 19 and SAMPLERS["heun"].nfe(ts_min) == 20
    assert SAMPLERS["dpm_solver_3"].nfe(ts_zero) == 28 and SAMPLERS["dpm_solver_pp_2s"].nfe(ts_min) == 20
    assert SAMPLERS["pndm"].nfe(ts_zero) == 19 and SAMPLERS["pndm"].nfe(ts_zero[[0, 5, 10]]) == 5
    assert SAMPLERS["unipc_bh2_3"].nfe(ts_zero) == SAMPLERS["ddim"].nfe(ts_zero) == 10
    assert SAMPLERS["dpm_solver_adaptive"].nfe(ts_zero) is None
