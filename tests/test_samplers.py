import numpy as np
import pytest
import torch

from diffusekit.core import (CFGDenoiser, CountingDenoiser, FlowSchedule, VESchedule, VPDiscrete,
                             VPLinear, generators_from_seeds, grid_karras, grid_uniform, make_grid, prior_sample)
from diffusekit.samplers import SAMPLERS, get_sampler, sample, sample_ddim, sample_ddpm, sample_euler


SCHEDULES = [VPDiscrete.named("linear"), VPLinear(), VESchedule(), FlowSchedule()]


def grid(schedule, n):
    return grid_karras(schedule, n, t_end=0.0) if schedule.kind == "ve" else grid_uniform(schedule, n, t_end=0.0)


def moment_error(x, g):
    """Distance of the sample's first two moments from the mixture's exact ones."""
    return float((x.mean(0) - g.mean()).norm() + (torch.cov(x.T) - g.covariance()).norm())


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_ddim_with_exact_denoiser_converges_to_the_data_distribution(mixture, schedule):
    g = mixture  # the shared test mixture (conftest)
    den = g.denoiser(schedule)
    x_T = prior_sample(schedule, (20_000, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = [moment_error(sample_ddim(den, x_T, grid(schedule, n)), g) for n in (4, 16, 64, 256)]
    # Monte-Carlo noise of this statistic at 20k samples is ~0.02 (measured on true samples); a sampler
    # with a wrong coefficient plateaus far above it instead of falling.
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 and errors[-1] < errors[0] / 10, errors
    nll = -float(g.log_prob(sample_ddim(den, x_T, grid(schedule, 256))).mean())
    nll_true = -float(g.log_prob(g.sample(20_000, torch.Generator().manual_seed(1))).mean())
    assert abs(nll - nll_true) < 0.1


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_first_order_convergence_on_fine_grids(mixture, name):
    """Slope of log-error vs log-steps against a fine reference solve of the same ODE from the same x_T."""
    g = mixture  # the shared test mixture (conftest)
    s = VPLinear()
    den = g.denoiser(s)
    x_T = prior_sample(s, (500, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    fn = get_sampler(name).fn
    ref = fn(den, x_T, grid_uniform(s, 8192))
    steps = np.array([64, 128, 256, 512])
    err = np.array([float((fn(den, x_T, grid_uniform(s, int(n))) - ref).norm(dim=1).mean()) for n in steps])
    slope = -np.polyfit(np.log(steps), np.log(err), 1)[0]
    assert abs(slope - get_sampler(name).order) < 0.3, (slope, err)


def test_ddpm_equals_ddim_eta_one_with_the_same_noise(mixture):
    g = mixture  # the shared test mixture (conftest)
    s = VPDiscrete.named("linear")
    den = g.denoiser(s)
    x = prior_sample(s, (64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = make_grid("leading", s, 20)
    a = sample_ddpm(den, x, ts, generator=generators_from_seeds(7, 64))
    b = sample_ddim(den, x, ts, eta=1.0, generator=generators_from_seeds(7, 64))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(k for k, v in SAMPLERS.items()
                                         if not v.adaptive and not v.students_only))  # adaptive: own module
def test_one_network_call_per_step_and_shapes(mixture, name):
    s = VPLinear()
    den = CountingDenoiser(mixture.denoiser(s))
    x = torch.randn(5, 2)
    ts = grid_uniform(s, 7)
    out = sample(name, den, x, ts, **({"generator": torch.Generator().manual_seed(0)}
                                     if SAMPLERS[name].stochastic else {}))
    assert den.calls == SAMPLERS[name].nfe(ts)  # every grid and sampler: tests/test_sampler_ends.py
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["ddpm", "euler_maruyama", "ddim"])
def test_batch_size_invariance_with_per_sample_generators(mixture, name):
    s = VPDiscrete.named("linear")
    den = mixture.denoiser(s)
    seeds = list(range(100, 112))
    x = prior_sample(s, (12, 2), generators_from_seeds(seeds), dtype=torch.float64)
    opts = {"eta": 0.7} if name == "ddim" else {}
    full = sample(name, den, x, grid_uniform(s, 10), generator=generators_from_seeds(seeds), **opts)
    part = sample(name, den, x[3:5], grid_uniform(s, 10), generator=generators_from_seeds(seeds[3:5]), **opts)
    torch.testing.assert_close(part, full[3:5], rtol=1e-12, atol=1e-12)


def test_euler_maruyama_samples_the_mixture(mixture):
    g = mixture  # the shared test mixture (conftest)
    s = VPLinear()
    x_T = prior_sample(s, (8000, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    x = sample("euler_maruyama", g.denoiser(s), x_T, grid_uniform(s, 400, t_end=1e-3),
               generator=torch.Generator().manual_seed(4))
    assert moment_error(x, g) < 0.1


def test_callback_sees_every_step_and_reaches_the_final_time(mixture):
    s = VPLinear()
    seen = []
    ts = grid_uniform(s, 5, t_end=0.0)
    sample_euler(mixture.denoiser(s), torch.randn(3, 2), ts, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(5))
    assert float(seen[-1]["t_next"]) == 0.0


def test_samplers_are_differentiable(mixture):
    s = VPLinear()
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    sample_ddim(mixture.denoiser(s), x, grid_uniform(s, 4)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_sampler_input(mixture):
    s = VPLinear()
    # the list is sorted; methods.distill.samplers adds "consistency" before "ddim" once something imports it
    with pytest.raises(ValueError, match=r"unknown sampler 'plms2'; available: (consistency, )?ddim, ddpm"):
        get_sampler("plms2")
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_ddim(mixture.denoiser(s), torch.randn(2, 2), torch.tensor([0.1, 0.5]))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        sample_ddim(mixture.denoiser(s), torch.randn(2, 2), grid_uniform(s, 3), eta=-1)
    with pytest.raises(ValueError, match="one per sample"):
        sample_ddpm(mixture.denoiser(s), torch.randn(3, 2), grid_uniform(s, 3), generator=generators_from_seeds(0, 2))


class _TinyConditional(torch.nn.Module):
    """x0-predicting toy net: output = label embedding (null label -> 0)."""

    def __init__(self):
        super().__init__()
        self.config = {"num_classes": 3}
        self.emb = torch.nn.Embedding(4, 2)

    def forward(self, x, t, class_labels=None):
        return self.emb(class_labels) + 0 * x


def test_cfg_scale_one_is_conditional_and_zero_is_unconditional():
    from diffusekit.core import NetworkDenoiser

    s = VPLinear()
    den = NetworkDenoiser(_TinyConditional().double(), s, "x0")
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    null = torch.full_like(y, 3)
    torch.testing.assert_close(CFGDenoiser(den, 1.0)(x, 0.5, class_labels=y), den(x, 0.5, class_labels=y))
    torch.testing.assert_close(CFGDenoiser(den, 0.0)(x, 0.5, class_labels=y), den(x, 0.5, class_labels=null))
    c, u = den(x, 0.5, class_labels=y), den(x, 0.5, class_labels=null)
    torch.testing.assert_close(CFGDenoiser(den, 3.0)(x, 0.5, class_labels=y), u + 3 * (c - u))
    counting = CountingDenoiser(CFGDenoiser(den, 3.0))
    counting(x, 0.5, class_labels=y)
    assert counting.calls == 1
