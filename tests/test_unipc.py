"""UniPC on the exact GMM denoiser: convergence order with and without the corrector, equivalences with
DDIM and the DPM-Solver multistep updates, NFE accounting, corrector switches and end-point handling."""

import functools

import numpy as np
import pytest
import torch

from diffusekit.core import (CountingDenoiser, FlowSchedule, VESchedule, VPDiscrete, VPLinear,
                             grid_logsnr, grid_uniform, prior_sample)
from diffusekit.samplers.baseline import sample_ddim
from diffusekit.samplers.dpm_solver import sample_dpm_solver_multistep, sample_dpm_solver_singlestep
from diffusekit.samplers.registry import SAMPLERS, get_sampler
from diffusekit.samplers.unipc import sample_unipc


SCHEDULES = {"vp": VPLinear(), "ve": VESchedule(), "flow": FlowSchedule()}
REGISTERED = [f"unipc_{v}_{p}" for v in ("bh1", "bh2") for p in (1, 2, 3)]


@functools.lru_cache(maxsize=None)
def problem(mixture, name):
    """(denoiser, x_T, reference): singlestep DPM-Solver-3 on 1200 logSNR steps (error ~1e-8)."""
    s = SCHEDULES[name]
    den = mixture.denoiser(s)
    x_T = prior_sample(s, (64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    return den, x_T, sample_dpm_solver_singlestep(den, x_T, grid_logsnr(s, 1200), order=3)


def slope(mixture, schedule_name, steps, **options):
    den, x_T, ref = problem(mixture, schedule_name)
    s = SCHEDULES[schedule_name]
    err = np.array([float((sample_unipc(den, x_T, grid_logsnr(s, int(n)), **options) - ref).norm(dim=1).mean())
                    for n in steps])
    assert err.min() > 1e-8, err  # well above the reference's error
    return -np.polyfit(np.log(steps), np.log(err), 1)[0], err


STEPS = np.array([40, 80, 160, 320])


@pytest.mark.parametrize("name", REGISTERED)
def test_convergence_order_with_corrector(mixture, name):
    """UniPC-p with its corrector is order p + 1, as registered."""
    info = get_sampler(name)
    variant, p = name.split("_")[1], int(name.split("_")[2])
    k, err = slope(mixture, "vp", STEPS, order=p, variant=variant)
    assert info.order == p + 1 and abs(k - info.order) < 0.3, (name, k, err)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_convergence_order_predictor_only(mixture, variant, p):
    k, err = slope(mixture, "vp", STEPS, order=p, variant=variant, use_corrector=False)
    assert abs(k - p) < 0.3, (k, err)


@pytest.mark.parametrize("p", [1, 2])
def test_convergence_order_noise_prediction(mixture, p):
    k, err = slope(mixture, "vp", STEPS, order=p, algorithm="dpmsolver")
    assert abs(k - (p + 1)) < 0.3, (k, err)


@pytest.mark.parametrize("schedule", ["ve", "flow"])
@pytest.mark.parametrize("name", ["unipc_bh1_2", "unipc_bh2_2"])
def test_convergence_order_ve_and_flow(mixture, name, schedule):
    k, err = slope(mixture, schedule, np.array([50, 100, 200, 400]), order=2, variant=name.split("_")[1])
    assert abs(k - get_sampler(name).order) < 0.3, (name, schedule, k, err)


@pytest.mark.parametrize("algorithm", ["dpmsolver", "dpmsolver++"])
@pytest.mark.parametrize("t_end", [None, 0.0])
def test_predictor_equivalences(mixture, algorithm, t_end):
    """UniP-1 is DDIM; UniP-2 with B(h) = e^hh - 1 is DPM-Solver(++)-2M (midpoint); UniP-3 with bh2 is the
    exact third-order multistep DPM-Solver (the B(h) factors cancel once a is solved exactly; its order-2
    warm-up step is the midpoint one only for bh2)."""
    s = VPDiscrete.named("linear")
    den = mixture.denoiser(s)
    x = prior_sample(s, (32, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = grid_uniform(s, 12, t_end=t_end)
    ddim = sample_ddim(den, x, ts)
    for variant in ["bh1", "bh2"]:
        unip1 = sample_unipc(den, x, ts, order=1, variant=variant, algorithm=algorithm, use_corrector=False)
        torch.testing.assert_close(unip1, ddim, rtol=1e-12, atol=1e-12)
    unip3 = sample_unipc(den, x, ts, order=3, variant="bh2", algorithm=algorithm, use_corrector=False)
    torch.testing.assert_close(unip3, sample_dpm_solver_multistep(den, x, ts, order=3, algorithm=algorithm),
                               rtol=1e-10, atol=1e-10)
    unip2 = sample_unipc(den, x, ts, order=2, variant="bh2", algorithm=algorithm, use_corrector=False)
    torch.testing.assert_close(unip2, sample_dpm_solver_multistep(den, x, ts, order=2, algorithm=algorithm),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", REGISTERED)
def test_one_network_call_per_step(mixture, name):
    s = VPLinear()
    for t_end in [None, 0.0]:
        den = CountingDenoiser(mixture.denoiser(s))
        x = torch.randn(5, 2)
        out = SAMPLERS[name].fn(den, x, grid_uniform(s, 7, t_end=t_end))
        assert den.calls == 7 * SAMPLERS[name].nfe_per_step
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


def test_corrector_switches(mixture):
    s = VPLinear()
    den = mixture.denoiser(s)
    x = prior_sample(s, (16, 2), torch.Generator().manual_seed(2), dtype=torch.float64)
    ts = grid_logsnr(s, 8)
    off = sample_unipc(den, x, ts, order=2, use_corrector=False)
    torch.testing.assert_close(sample_unipc(den, x, ts, order=2, disable_corrector=range(8)), off, rtol=0, atol=0)

    def states(**options):
        seen = []
        sample_unipc(den, x, ts, order=2, callback=lambda d: seen.append(d["x"]), **options)
        return seen

    on, skip3 = states(), states(disable_corrector=[3])
    # the corrector of step 3's result acts at the start of step 4: steps 0..3 agree, step 4 differs
    for i in range(4):
        torch.testing.assert_close(skip3[i], on[i], rtol=0, atol=0)
    assert not torch.allclose(skip3[4], on[4])


def test_lower_order_final_and_final_step_to_zero(mixture):
    s = VPDiscrete.named("linear")
    den = mixture.denoiser(s)
    x = prior_sample(s, (16, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    for variant in ["bh1", "bh2"]:  # diffusers' bh1 returns NaN on a final step to sigma = 0; we must not
        seen = []
        out = sample_unipc(den, x, grid_logsnr(s, 6, t_end=0.0), order=3, variant=variant, callback=seen.append)
        assert [d["order"] for d in seen] == [1, 2, 3, 3, 3, 1]
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, seen[-1]["x0_hat"], rtol=0, atol=0)
    seen = []
    sample_unipc(den, x, grid_logsnr(s, 6), order=3, lower_order_final=True, callback=seen.append)
    assert [d["order"] for d in seen] == [1, 2, 3, 3, 2, 1]


def test_bad_input(mixture):
    s = VPLinear()
    den = mixture.denoiser(s)
    x, ts = torch.randn(2, 2), grid_uniform(s, 3)
    with pytest.raises(ValueError, match="unknown variant 'bh3'; allowed: bh1, bh2"):
        sample_unipc(den, x, ts, variant="bh3")
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        sample_unipc(den, x, ts, order=4)
    with pytest.raises(ValueError, match="fixes order, variant"):
        get_sampler("unipc_bh2_2").fn(den, x, ts, order=3, variant="bh1")
