"""DPM-Solver / DPM-Solver++ / SDE-DPM-Solver++ on the exact GMM denoiser: convergence order, equivalences,
NFE accounting, end-point handling, batch invariance and the adaptive solver."""

import functools

import numpy as np
import pytest
import torch

from diffusekit.core import (CountingDenoiser, FlowSchedule, VESchedule, VPDiscrete, VPLinear,
                             generators_from_seeds, grid_logsnr, grid_uniform, prior_sample)
from diffusekit.samplers.baseline import sample_ddim
from diffusekit.samplers.dpm_solver import (diffusers_dpm_timesteps, diffusers_multistep_orders,
                                            diffusers_singlestep_orders, sample_dpm_solver_adaptive,
                                            sample_dpm_solver_grouped, sample_dpm_solver_multistep,
                                            sample_dpm_solver_singlestep, sample_sde_dpm_solver_pp_2m)
from diffusekit.samplers.registry import SAMPLERS, get_sampler


SCHEDULES = {"vp": VPLinear(), "ve": VESchedule(), "flow": FlowSchedule()}
FIXED_STEP = ["dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_2s", "dpm_solver_pp_3s", "dpm_solver_2m",
              "dpm_solver_3m", "dpm_solver_pp_2m", "dpm_solver_pp_3m"]


@functools.lru_cache(maxsize=None)
def problem(mixture, name):
    """(denoiser, x_T, reference x at t_min) for a schedule; the reference is singlestep DPM-Solver-3 on
    1200 logSNR steps (3600 NFE), independent of the multistep solvers; its error is ~1e-8, far below
    the errors regressed on."""
    s = SCHEDULES[name]
    den = mixture.denoiser(s)
    x_T = prior_sample(s, (64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = sample_dpm_solver_singlestep(den, x_T, grid_logsnr(s, 1200), order=3)
    return den, x_T, ref


def slope(mixture, fn, schedule_name, steps, **options):
    den, x_T, ref = problem(mixture, schedule_name)
    s = SCHEDULES[schedule_name]
    err = np.array([float((fn(den, x_T, grid_logsnr(s, int(n)), **options) - ref).norm(dim=1).mean())
                    for n in steps])
    assert err.min() > 1e-9, err  # stay well above the reference error and float64 round-off
    return -np.polyfit(np.log(steps), np.log(err), 1)[0], err


STEPS = np.array([40, 80, 160, 320])
# Noise-prediction multistep reaches its asymptotic regime later (eps_hat varies fastest near t_min, where
# the data-prediction form is smooth), so it is regressed on finer grids.
FINE_STEPS = np.array([80, 160, 320, 640])


def steps_for(name):
    return FINE_STEPS if name in ("dpm_solver_2m", "dpm_solver_3m") else STEPS


@pytest.mark.parametrize("name", FIXED_STEP)
def test_convergence_order_vp(mixture, name):
    """Slope of log-error vs log-steps on fine logSNR grids ending at t_min, against the declared order."""
    info = get_sampler(name)
    k, err = slope(mixture, info.fn, "vp", steps_for(name))
    assert abs(k - info.order) < 0.3, (name, k, err)


@pytest.mark.parametrize("schedule", ["ve", "flow"])
@pytest.mark.parametrize("name", ["dpm_solver_pp_2m", "dpm_solver_pp_3m", "dpm_solver_2m", "dpm_solver_3m"])
def test_convergence_order_ve_and_flow(mixture, name, schedule):
    info = get_sampler(name)
    k, err = slope(mixture, info.fn, schedule, steps_for(name))
    assert abs(k - info.order) < 0.3, (name, schedule, k, err)


@pytest.mark.parametrize("algorithm", ["dpmsolver", "dpmsolver++"])
def test_taylor_variants_keep_their_order(mixture, algorithm):
    k2, err2 = slope(mixture, sample_dpm_solver_multistep, "vp", STEPS, order=2, solver_type="taylor",
                     algorithm=algorithm)
    k3, err3 = slope(mixture, sample_dpm_solver_singlestep, "vp", STEPS, order=3, solver_type="taylor",
                     algorithm=algorithm)
    assert abs(k2 - 2) < 0.3 and abs(k3 - 3) < 0.3, (k2, err2, k3, err3)


def test_grouped_singlestep_is_third_order_on_a_uniform_lam_grid(mixture):
    """Groups of three grid points form DPM-Solver-3 steps with r1 = 1/3, r2 = 2/3 on a logSNR grid."""
    den, x_T, ref = problem(mixture, "vp")
    s = SCHEDULES["vp"]
    single = sample_dpm_solver_singlestep(den, x_T, grid_logsnr(s, 7), order=3, solver_type="dpmsolver")
    grouped = sample_dpm_solver_grouped(den, x_T, grid_logsnr(s, 21), orders=[3] * 7, solver_type="dpmsolver")
    torch.testing.assert_close(grouped, single, rtol=1e-10, atol=1e-10)
    groups = np.array([40, 80, 160, 320])  # diffusers' "midpoint" form: slower to reach its asymptotic order
    err = np.array([float((sample_dpm_solver_grouped(den, x_T, grid_logsnr(s, 3 * int(k)), orders=[3] * int(k))
                           - ref).norm(dim=1).mean()) for k in groups])
    k = -np.polyfit(np.log(groups), np.log(err), 1)[0]
    assert abs(k - 3) < 0.3, (k, err)


def test_legacy_third_order_multistep_is_only_second_order(mixture):
    """dpm-solver/diffusers/k-diffusion's 3M uses half the second-difference term: local error O(h^3)."""
    k, err = slope(mixture, sample_dpm_solver_multistep, "vp", STEPS, order=3, legacy_third_order=True)
    assert abs(k - 2) < 0.3, (k, err)
    k_fixed, _ = slope(mixture, sample_dpm_solver_multistep, "vp", STEPS, order=3)
    assert k_fixed > k + 0.5


@pytest.mark.parametrize("schedule", ["vp", "ve", "flow"])
@pytest.mark.parametrize("t_end", [None, 0.0])
def test_first_order_is_ddim(mixture, schedule, t_end):
    s = SCHEDULES[schedule]
    den, x_T, _ = problem(mixture, schedule)
    ts = grid_uniform(s, 12, t_end=t_end)
    ddim = sample_ddim(den, x_T, ts)
    for algorithm in ["dpmsolver", "dpmsolver++"]:
        single = sample_dpm_solver_singlestep(den, x_T, ts, order=1, algorithm=algorithm)
        multi = sample_dpm_solver_multistep(den, x_T, ts, order=1, algorithm=algorithm)
        torch.testing.assert_close(single, ddim, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(multi, single, rtol=1e-12, atol=1e-12)


def test_sde_with_eta_zero_is_dpm_solver_pp_2m(mixture):
    den, x_T, _ = problem(mixture, "vp")
    ts = grid_logsnr(SCHEDULES["vp"], 15, t_end=0.0)
    for solver_type in ["midpoint", "taylor"]:
        sde = sample_sde_dpm_solver_pp_2m(den, x_T, ts, eta=0.0, solver_type=solver_type)
        ode = sample_dpm_solver_multistep(den, x_T, ts, order=2, solver_type=solver_type)
        torch.testing.assert_close(sde, ode, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FIXED_STEP + ["sde_dpm_solver_pp_2m"])
def test_network_calls_match_the_declared_nfe(mixture, name):
    s = VPLinear()
    info = SAMPLERS[name]
    opts = {"generator": torch.Generator().manual_seed(0)} if info.stochastic else {}
    for t_end, extra in [(None, 0), (0.0, 1 - info.nfe_per_step)]:  # a step to t = 0 is one denoising call
        den = CountingDenoiser(mixture.denoiser(s))
        x = torch.randn(5, 2)
        out = info.fn(den, x, grid_uniform(s, 7, t_end=t_end), **opts)
        assert den.calls == 7 * info.nfe_per_step + extra
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


def test_lower_order_final_is_the_documented_rule_for_any_step_count(mixture):
    s = VPLinear()
    den = mixture.denoiser(s)
    x = torch.randn(3, 2, dtype=torch.float64)

    def orders_used(ts, **options):
        seen = []
        sample_dpm_solver_multistep(den, x, ts, order=3, callback=lambda d: seen.append(d["order"]), **options)
        return seen

    for n in [5, 30]:
        assert orders_used(grid_uniform(s, n)) == [1, 2] + [3] * (n - 2)
        assert orders_used(grid_uniform(s, n), lower_order_final=True) == [1, 2] + [3] * (n - 4) + [2, 1]
        # a final step to t = 0 is first order whatever was asked
        assert orders_used(grid_uniform(s, n, t_end=0.0)) == [1, 2] + [3] * (n - 3) + [1]
    counting = CountingDenoiser(den)
    sample_dpm_solver_singlestep(counting, x, grid_uniform(s, 5), order=3, lower_order_final=True)
    assert counting.calls == 3 + 3 + 3 + 2 + 1


@pytest.mark.parametrize("sampler", [sample_dpm_solver_singlestep, sample_dpm_solver_multistep])
@pytest.mark.parametrize("algorithm", ["dpmsolver", "dpmsolver++"])
def test_step_to_zero_is_a_pure_denoise_and_never_nan(mixture, sampler, algorithm):
    s = VPDiscrete.named("linear")
    den = mixture.denoiser(s)
    x = prior_sample(s, (16, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    seen = []
    out = sampler(den, x, grid_logsnr(s, 6, t_end=0.0), order=3, algorithm=algorithm, callback=seen.append)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, seen[-1]["x0_hat"], rtol=0, atol=0)


@pytest.mark.parametrize("name", FIXED_STEP + ["sde_dpm_solver_pp_2m"])
def test_flow_from_pure_noise_at_t_one(mixture, name):
    """Flow at t = 1 has alpha = 0 (lam = -inf): that step is first order and leaves no history."""
    s = FlowSchedule()
    den = mixture.denoiser(s)
    x = prior_sample(s, (256, 2), torch.Generator().manual_seed(2), dtype=torch.float64)
    out = get_sampler(name).fn(den, x, grid_uniform(s, 40, t_end=0.0), generator=generators_from_seeds(3, 256))
    assert torch.isfinite(out).all()
    assert float(mixture.log_prob(out).mean()) > -3.0  # lands on the data, not in the void


def test_sde_batch_size_invariance_with_per_sample_generators(mixture):
    s = VPDiscrete.named("linear")
    den = mixture.denoiser(s)
    seeds = list(range(100, 112))
    x = prior_sample(s, (12, 2), generators_from_seeds(seeds), dtype=torch.float64)
    ts = grid_logsnr(s, 10, t_end=0.0)
    full = sample_sde_dpm_solver_pp_2m(den, x, ts, generator=generators_from_seeds(seeds))
    part = sample_sde_dpm_solver_pp_2m(den, x[3:5], ts, generator=generators_from_seeds(seeds[3:5]))
    torch.testing.assert_close(part, full[3:5], rtol=1e-12, atol=1e-12)
    other = sample_sde_dpm_solver_pp_2m(den, x, ts, generator=generators_from_seeds([s + 50 for s in seeds]))
    assert not torch.allclose(other, full)


def test_sde_samples_the_mixture(mixture):
    g = mixture  # the shared test mixture (conftest)
    s = VPLinear()
    x = prior_sample(s, (4000, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    out = sample_sde_dpm_solver_pp_2m(g.denoiser(s), x, grid_logsnr(s, 100, t_end=0.0),
                                      generator=torch.Generator().manual_seed(4))
    moment_error = float((out.mean(0) - g.mean()).norm() + (torch.cov(out.T) - g.covariance()).norm())
    assert moment_error < 0.15  # Monte-Carlo noise at 4000 samples is ~0.04


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_error_follows_the_tolerance_and_reports_its_nfe(mixture, order):
    den, x_T, ref = problem(mixture, "vp")
    s = SCHEDULES["vp"]
    errors, nfes = [], []
    for tol in [1e-3, 1e-4, 1e-5]:
        counting, stats = CountingDenoiser(den), {}
        out = sample_dpm_solver_adaptive(counting, x_T, grid_logsnr(s, 1), order=order, atol=tol, rtol=tol,
                                         stats=stats)
        assert counting.calls == stats["nfe"] == stats["accepted"] * order + stats["rejected"] * (order - 1)
        assert stats["ts"][0] == s.t_max and stats["ts"][-1] == s.t_min
        errors.append(float((out - ref).norm(dim=1).mean()))
        nfes.append(stats["nfe"])
    assert errors[0] > errors[1] > errors[2] and nfes[0] < nfes[1] < nfes[2], (errors, nfes)
    assert errors[-1] < 1e-4


def test_adaptive_to_zero_and_bad_grids(mixture):
    s = VPLinear()
    den = CountingDenoiser(mixture.denoiser(s))
    x = prior_sample(s, (8, 2), torch.Generator().manual_seed(5), dtype=torch.float64)
    stats, seen = {}, []
    out = sample_dpm_solver_adaptive(den, x, torch.tensor([1.0, 1e-3, 0.0], dtype=torch.float64), stats=stats,
                                     callback=seen.append)
    assert stats["ts"][-2:] == [1e-3, 0.0] and den.calls == stats["nfe"] and len(seen) == stats["accepted"] + 1
    torch.testing.assert_close(out, seen[-1]["x0_hat"], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\[t_start, t_min, 0\]"):
        sample_dpm_solver_adaptive(den, x, torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="max_nfe"):
        sample_dpm_solver_adaptive(den, x, grid_logsnr(s, 1), atol=1e-9, rtol=1e-9, max_nfe=50)


def test_float32_and_gradients(mixture):
    s = VPLinear()
    den = mixture.denoiser(s)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    sample_dpm_solver_multistep(den, x, grid_uniform(s, 4), order=3).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    out = sample_dpm_solver_singlestep(den, torch.randn(4, 2), grid_uniform(s, 4), order=3)
    assert out.dtype == torch.float32


def test_diffusers_order_and_spacing_helpers():
    assert diffusers_multistep_orders(10, 3) == [3] * 8 + [2, 1]  # lower_order_final below 15 steps
    assert diffusers_multistep_orders(20, 3) == [3] * 19 + [1]  # only final sigma zero
    assert diffusers_multistep_orders(20, 3, final_sigmas_type="sigma_min") == [3] * 20
    assert diffusers_singlestep_orders(12, 3) == [3, 3, 3, 2, 1]
    assert diffusers_singlestep_orders(9, 3, final_sigmas_type="sigma_min") == [3, 3, 3]
    assert diffusers_singlestep_orders(10, 2, final_sigmas_type="sigma_min") == [2] * 5
    assert diffusers_singlestep_orders(9, 2, final_sigmas_type="sigma_min") == [2] * 4 + [1]
    assert diffusers_dpm_timesteps(1000, 10, "linspace").tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    assert diffusers_dpm_timesteps(1000, 9, "leading").tolist() == list(range(900, 0, -100))
    assert diffusers_dpm_timesteps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))


def test_bad_input(mixture):
    s = VPLinear()
    den = mixture.denoiser(s)
    x, ts = torch.randn(2, 2), grid_uniform(s, 3)
    with pytest.raises(ValueError, match="unknown algorithm 'dpm'; allowed: dpmsolver, dpmsolver\\+\\+"):
        sample_dpm_solver_multistep(den, x, ts, algorithm="dpm")
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        sample_dpm_solver_singlestep(den, x, ts, order=4)
    with pytest.raises(ValueError, match="one per step"):
        sample_dpm_solver_multistep(den, x, ts, orders=[1, 2])
    with pytest.raises(ValueError, match="unknown solver_type 'heun'"):
        sample_dpm_solver_multistep(den, x, ts, solver_type="heun")
    with pytest.raises(ValueError, match="fixes order"):
        get_sampler("dpm_solver_pp_2m").fn(den, x, ts, order=3)
    with pytest.raises(ValueError, match="summing to the 3 grid steps"):
        sample_dpm_solver_grouped(den, x, ts, orders=[2, 2])
    with pytest.raises(ValueError, match="need 0 < r1 < r2 < 1"):
        sample_dpm_solver_singlestep(den, x, ts, order=3, r1=0.7, r2=0.5)
