"""Reference agreement with the installed diffusers: DPM-Solver(++) multistep and singlestep, SDE-DPM-Solver++(2M)
and UniPC against DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler and UniPCMultistepScheduler driven
in a manual loop, on a tiny random float64 UNet2DModel with identical betas, timesteps and noise.

diffusers computes its sigmas in float32 (and DPMSolverMultistep casts the sample to float32 inside
``step``), so agreement is at the float32 level: we require |ours - theirs| <= 1e-5 (|theirs| + max|theirs|)
elementwise; the measured differences are ~1e-7 of the sample scale.
"""

import diffusers  # the dev extra: a missing diffusers fails the suite rather than skipping it
import pytest
import torch

from diffusekit.core import NetworkDenoiser, VPDiscrete, generators_from_seeds, randn_like
from diffusekit.interop.diffusers import DiffusersNet
from diffusekit.samplers.dpm_solver import (diffusers_multistep_orders, diffusers_singlestep_orders,
                                            grid_diffusers_dpm, sample_dpm_solver_grouped,
                                            sample_dpm_solver_multistep, sample_sde_dpm_solver_pp_2m)
from diffusekit.samplers.unipc import sample_unipc

pytestmark = [pytest.mark.filterwarnings("ignore:.*algorithm_type.*deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


def schedule_of(scheduler) -> VPDiscrete:
    """Our schedule with diffusers' (float32-computed) alphas_cumprod, exactly."""
    abar = scheduler.alphas_cumprod.double()
    return VPDiscrete(1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]]))


@pytest.fixture(scope="module")
def unet():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                    block_out_channels=(8, 16), norm_num_groups=4,
                                    down_block_types=("DownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "UpBlock2D")).double().eval()
        with torch.no_grad():
            for p in net.parameters():  # move off the structured init so every path matters
                p.add_(0.05 * torch.randn_like(p))
    return net.requires_grad_(False)


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def run_diffusers(scheduler, unet, x_T, steps, noises=None):
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for i, t in enumerate(scheduler.timesteps):
        eps = unet(x, t).sample
        extra = {} if noises is None else {"variance_noise": noises[i]}
        x = scheduler.step(eps, t, x, **extra).prev_sample
    return x, scheduler.timesteps


def ours_setup(scheduler, unet, steps, final):
    sched = schedule_of(scheduler)
    ts = grid_diffusers_dpm(sched, steps, final=final)
    return NetworkDenoiser(DiffusersNet(unet, round_time=True), sched, "eps"), ts, sched


def assert_agrees(ours, theirs, timesteps, ts, sched):
    assert torch.equal(sched.timestep_of_t(ts[:-1]).round().long(), timesteps)
    scale = float(theirs.abs().max())
    assert scale > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("steps", [10, 20])  # diffusers' lower_order_final acts only below 15 steps
@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_pp_multistep(unet, x_T, steps, order):
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=order)
    theirs, timesteps = run_diffusers(scheduler, unet, x_T, steps)
    den, ts, sched = ours_setup(scheduler, unet, steps, "zero")
    # diffusers' 3M is our legacy_third_order (half the second difference, globally second order)
    ours = sample_dpm_solver_multistep(den, x_T, ts, order=order, orders=diffusers_multistep_orders(steps, order),
                                       legacy_third_order=True)
    assert_agrees(ours, theirs, timesteps, ts, sched)
    if order == 3:
        exact = sample_dpm_solver_multistep(den, x_T, ts, order=3, orders=diffusers_multistep_orders(steps, 3))
        assert not torch.allclose(exact, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_noise_prediction_multistep(unet, x_T, steps):
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=2, algorithm_type="dpmsolver",
                                                      final_sigmas_type="sigma_min")
    theirs, timesteps = run_diffusers(scheduler, unet, x_T, steps)
    den, ts, sched = ours_setup(scheduler, unet, steps, "sigma_min")
    orders = diffusers_multistep_orders(steps, 2, final_sigmas_type="sigma_min")
    ours = sample_dpm_solver_multistep(den, x_T, ts, order=2, algorithm="dpmsolver", orders=orders)
    assert_agrees(ours, theirs, timesteps, ts, sched)


@pytest.mark.parametrize("algorithm, final, solver_type, order, steps, lower_order_final", [
    ("dpmsolver++", "zero", "midpoint", 3, 12, False),
    ("dpmsolver++", "zero", "heun", 2, 9, False),
    ("dpmsolver++", "zero", "heun", 3, 20, True),
    ("dpmsolver", "sigma_min", "midpoint", 3, 9, False),
    ("dpmsolver", "sigma_min", "heun", 2, 12, True),
])
def test_dpm_solver_singlestep(unet, x_T, algorithm, final, solver_type, order, steps, lower_order_final):
    scheduler = diffusers.DPMSolverSinglestepScheduler(solver_order=order, algorithm_type=algorithm,
                                                       solver_type=solver_type, final_sigmas_type=final,
                                                       lower_order_final=lower_order_final)
    theirs, timesteps = run_diffusers(scheduler, unet, x_T, steps)
    den, ts, sched = ours_setup(scheduler, unet, steps, final)
    groups = diffusers_singlestep_orders(steps, order, lower_order_final=lower_order_final, final_sigmas_type=final)
    ours = sample_dpm_solver_grouped(den, x_T, ts, orders=groups, algorithm=algorithm,
                                     solver_type={"midpoint": "midpoint", "heun": "taylor"}[solver_type])
    assert_agrees(ours, theirs, timesteps, ts, sched)


@pytest.mark.parametrize("steps", [10, 20])
def test_sde_dpm_solver_pp_2m_with_the_same_noise(unet, x_T, steps):
    """diffusers takes the draws through step(variance_noise=...); ours come from per-sample generators,
    one draw per step, so replaying the same generators gives diffusers the same noise."""
    replay = generators_from_seeds([5, 6])
    noises = [randn_like(x_T, replay) for _ in range(steps)]
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=2, algorithm_type="sde-dpmsolver++")
    theirs, timesteps = run_diffusers(scheduler, unet, x_T, steps, noises)
    den, ts, sched = ours_setup(scheduler, unet, steps, "zero")
    ours = sample_sde_dpm_solver_pp_2m(den, x_T, ts, generator=generators_from_seeds([5, 6]))
    assert_agrees(ours, theirs, timesteps, ts, sched)


@pytest.mark.parametrize("variant, order, final, steps", [
    ("bh2", 1, "zero", 10), ("bh2", 2, "zero", 10), ("bh2", 3, "zero", 10), ("bh2", 3, "sigma_min", 20),
    # diffusers' bh1 returns NaN on a final step to sigma = 0 (it forms B(h) * 0 with B(h) = h = -inf)
    ("bh1", 1, "sigma_min", 10), ("bh1", 2, "sigma_min", 10), ("bh1", 3, "sigma_min", 10),
])
def test_unipc(unet, x_T, variant, order, final, steps):
    scheduler = diffusers.UniPCMultistepScheduler(solver_order=order, solver_type=variant, final_sigmas_type=final)
    theirs, timesteps = run_diffusers(scheduler, unet, x_T, steps)
    den, ts, sched = ours_setup(scheduler, unet, steps, final)
    # diffusers' UniPC lower_order_final (default True) has no step-count threshold: ours with True
    ours = sample_unipc(den, x_T, ts, order=order, variant=variant, lower_order_final=True)
    assert_agrees(ours, theirs, timesteps, ts, sched)


def test_unipc_disable_corrector(unet, x_T):
    scheduler = diffusers.UniPCMultistepScheduler(solver_order=2, disable_corrector=[0, 4])
    theirs, timesteps = run_diffusers(scheduler, unet, x_T, 8)
    den, ts, sched = ours_setup(scheduler, unet, 8, "zero")
    ours = sample_unipc(den, x_T, ts, order=2, lower_order_final=True, disable_corrector=[0, 4])
    assert_agrees(ours, theirs, timesteps, ts, sched)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [7, 10, 25])
def test_timestep_spacing(spacing, steps):
    for cls in (diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler):
        scheduler = cls(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
        scheduler.set_timesteps(steps)
        sched = schedule_of(scheduler)
        ts = grid_diffusers_dpm(sched, steps, spacing=spacing, steps_offset=scheduler.config.steps_offset)
        assert torch.equal(sched.timestep_of_t(ts[:-1]).round().long(), scheduler.timesteps)


def test_lambda_min_clipped():
    scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1,
                                                      final_sigmas_type="sigma_min")
    scheduler.set_timesteps(10)
    sched = schedule_of(scheduler)
    ts = grid_diffusers_dpm(sched, 10, lambda_min_clipped=-5.1, final="sigma_min")
    assert int(scheduler.timesteps[0]) < 999  # the clip is active
    assert torch.equal(sched.timestep_of_t(ts[:-1]).round().long(), scheduler.timesteps)
    assert float(ts[-1]) == 1 / 1000
