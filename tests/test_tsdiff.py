"""TSDiff self-guidance energies, samplers, refinement, conditional model and TSTR at tiny scale.

Most direction checks use the exact denoiser of Gaussian windows x0 ~ N(0, Sigma), Sigma_ij = rho^|i - j|:
x0_hat(x_t) = alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1 x_t, so the true forecast distribution is known.
"""

import numpy as np
import pytest
import torch

from diffusekit.core import NetworkDenoiser
from diffusekit.domains.timeseries.guidance import (ddpm_step, energy_grad, mse_energy, quantile_energy,
                                                    quantile_levels, sample_self_guided, sample_unconditional)
from diffusekit.domains.timeseries.refine import refine, refinement_energy
from diffusekit.domains.timeseries.tsdiff import (ResidualDilatedConvNet, TSDiffConfig, forecast_mask,
                                                  sample_conditional, train_conditional, tsdiff_schedule)
from diffusekit.domains.timeseries.tstr import ar_bootstrap_windows, fit_ridge, ridge_forecast

L, C = 16, 12


class GaussianEpsNet(torch.nn.Module):
    """eps of the exact posterior mean for x0 ~ N(0, Sigma) under the TSDiff schedule (network time = timestep)."""

    def __init__(self, rho=0.9):
        super().__init__()
        idx = torch.arange(L, dtype=torch.float64)
        self.register_buffer("cov", rho ** (idx[:, None] - idx[None, :]).abs())
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.schedule = tsdiff_schedule()

    def forward(self, x, t_in, cond=None):
        t = self.schedule.t_of_timestep(t_in.reshape(-1).expand(x.shape[0]))
        a, s = self.schedule.alpha(t).to(x.dtype), self.schedule.sigma(t).to(x.dtype)
        eye = torch.eye(L, dtype=x.dtype)
        gain = a[:, None, None] * self.cov @ torch.linalg.inv(a[:, None, None] ** 2 * self.cov + s[:, None, None] ** 2
                                                              * eye)
        x0 = (gain @ x[:, 0, :, None])[..., 0][:, None]
        return (x - a[:, None, None] * x0) / s[:, None, None]


@pytest.fixture(scope="module")
def gauss():
    net = GaussianEpsNet()
    den = NetworkDenoiser(net, tsdiff_schedule())
    g = torch.Generator().manual_seed(0)
    y = torch.linalg.cholesky(net.cov) @ torch.randn(L, 6, generator=g, dtype=torch.float64)
    y = y.T[:, None, :]  # (6, 1, L) draws of the prior
    cov = net.cov
    cond_mean = (cov[C:, :C] @ torch.linalg.solve(cov[:C, :C], y[:, 0, :C].T)).T  # exact E[future | context]
    return den, y, cond_mean


def test_energy_gradients_match_closed_form():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 2, 9, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 2, 9, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 2, 9, generator=g) > 0.4).double()
    q = torch.tensor([0.1, 0.3, 0.7, 0.9], dtype=torch.float64)
    (g_mse,) = torch.autograd.grad(mse_energy(x0, y, mask).sum(), x0)
    assert torch.allclose(g_mse, -2 * mask * (y - x0))
    (g_q,) = torch.autograd.grad(quantile_energy(x0, y, mask, q).sum(), x0)
    e = y - x0
    qq = q[:, None, None]
    assert torch.allclose(g_q, -mask * torch.where(e > 0, qq, qq - 1))
    # the pinball loss at q = 0.5 is half the absolute error
    assert torch.allclose(quantile_energy(x0, y, mask, torch.full((4,), 0.5, dtype=torch.float64)),
                          0.5 * (mask * e.abs()).flatten(1).sum(1))


@pytest.mark.parametrize("energy", ["mse", "quantile"])
def test_guidance_gradient_through_the_network_matches_finite_differences(energy):
    torch.manual_seed(0)
    net = ResidualDilatedConvNet(channels=1, length=L, hidden=8, num_blocks=3).double()
    torch.nn.init.normal_(net.head[-1].weight, std=0.3)
    den = NetworkDenoiser(net, tsdiff_schedule())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, L, generator=g, dtype=torch.float64)
    y = torch.randn(2, 1, L, generator=g, dtype=torch.float64)
    mask = forecast_mask(1, C, L - C).double()
    t = tsdiff_schedule().t_of_timestep(torch.tensor([30, 70])).double()
    q = torch.tensor([0.25, 0.75], dtype=torch.float64)
    grad, _ = energy_grad(den, x, t, y, mask, q, energy)
    fn = mse_energy if energy == "mse" else quantile_energy

    def total(z):
        return fn(den.denoise(z, t), y, mask, q).sum()

    h = 1e-6
    for b, j in [(0, 0), (0, 7), (1, 13), (1, 15)]:
        dz = torch.zeros_like(x)
        dz[b, 0, j] = h
        fd = (total(x + dz) - total(x - dz)) / (2 * h)
        assert abs(float(fd) - float(grad[b, 0, j])) < 1e-5 * max(1.0, abs(float(fd)))


def test_quantile_levels():
    assert torch.allclose(quantile_levels(4), torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64))


def test_ddpm_step_matches_diffusers():
    from diffusers import DDPMScheduler

    sched = tsdiff_schedule()
    ref = DDPMScheduler(num_train_timesteps=100, beta_start=1e-4, beta_end=0.1, beta_schedule="linear",
                        clip_sample=False, variance_type="fixed_small")
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    for n in (99, 40, 1, 0):
        ours = ddpm_step(sched, x, eps, n, torch.Generator().manual_seed(9))
        theirs = ref.step(eps, n, x, generator=torch.Generator().manual_seed(9)).prev_sample
        assert torch.allclose(ours, theirs, atol=1e-5), n


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("energy,scale", [("mse", 0.1), ("quantile", 1.0)])
def test_self_guidance_forecasts_better_than_unguided(gauss, sampler, energy, scale):
    den, y, cond_mean = gauss
    mask = forecast_mask(1, C, L - C).double()

    def err(s):
        smp = sample_self_guided(den, y, mask, 16, energy=energy, scale=s, sampler=sampler, steps=25,
                                 generator=torch.Generator().manual_seed(4))
        assert smp.shape == (16, *y.shape)
        return float(((smp.mean(0)[:, 0, C:] - cond_mean) ** 2).mean()), float(((smp - y)[..., :C] ** 2).mean())

    horizon_guided, ctx_guided = err(scale)
    horizon_free, ctx_free = err(0.0)
    assert ctx_guided < 0.5 * ctx_free  # the context is followed
    assert horizon_guided < 0.5 * horizon_free  # and the forecast moves towards E[future | context]


def test_quantile_guidance_orders_the_samples(gauss):
    den, y, _ = gauss
    mask = forecast_mask(1, C, L - C).double()
    smp = sample_self_guided(den, y, mask, 9, energy="quantile", scale=1.0, sampler="ddim", steps=25,
                             generator=torch.Generator().manual_seed(5))
    level = (smp - y)[..., C - 4:].mean(dim=(1, 2, 3))  # (S,): signed offset near the forecast start
    assert float(level[-3:].mean()) > float(level[:3].mean())
    rank = np.corrcoef(np.arange(9), level.numpy())[0, 1]
    assert rank > 0.7


@pytest.mark.parametrize("method", ["ml", "langevin"])
def test_refinement_pulls_a_biased_forecast_towards_the_truth(gauss, method):
    den, y, cond_mean = gauss
    mask = forecast_mask(1, C, L - C).double()
    init = y.clone()
    init[..., C:] = cond_mean[:, None] + 2.0  # a base forecast that is 2 too high
    traj = refine(den, init, y, mask, method=method, iterations=60, lr=0.1, generator=torch.Generator().manual_seed(6))
    assert len(traj) == 61

    def bias(z):
        return float((z[:, 0, C:] - cond_mean).mean())

    assert abs(bias(traj[-1])) < 0.5 * abs(bias(traj[0]))
    g = torch.Generator().manual_seed(7)
    e0 = float(sum(refinement_energy(den, traj[0], y, mask, tau=20, prior_scale=1.0, generator=g).mean()
                   for _ in range(10)))
    e1 = float(sum(refinement_energy(den, traj[-1], y, mask, tau=20, prior_scale=1.0, generator=g).mean()
                   for _ in range(10)))
    assert e1 < e0


def test_unconditional_samples_have_the_data_covariance(gauss):
    den, _, _ = gauss
    smp = sample_unconditional(den, 400, (1, L), steps=50, generator=torch.Generator().manual_seed(8))
    emp = torch.cov(smp[:, 0].T.double())
    assert float((emp - den.net.cov).abs().max()) < 0.3


def test_conditional_model_learns_and_keeps_the_observations():
    g = torch.Generator().manual_seed(10)
    t = torch.arange(L, dtype=torch.float32)
    phase = 6.28 * torch.rand(256, 1, 1, generator=g)
    windows = torch.sin(0.5 * t + phase) + 0.05 * torch.randn(256, 1, L, generator=g)
    mask = forecast_mask(1, C, L - C)
    cfg = TSDiffConfig(hidden=16, num_blocks=4, steps=150, batch_size=32, lr=2e-3, ema_decay=None)
    den, hist = train_conditional(windows, mask, cfg)
    assert np.mean(hist["loss"][-20:]) < 0.6 * np.mean(hist["loss"][:20])
    test = windows[:4]
    smp = sample_conditional(den, test, mask, 4, generator=torch.Generator().manual_seed(11))
    assert torch.equal(smp[..., :C], test[None, ..., :C].expand(4, -1, -1, -1))
    err_cond = float(((smp.mean(0)[..., C:] - test[..., C:]) ** 2).mean())
    assert err_cond < 0.5 * float((test[..., C:] ** 2).mean())  # better than forecasting 0 (the mean)


def test_ar_bootstrap_and_linear_forecaster():
    rng = np.random.default_rng(0)
    n, length, phi = 400, 40, 0.8
    x = np.zeros((n, length))
    x[:, 0] = rng.normal(size=n) / np.sqrt(1 - phi**2)
    for i in range(1, length):
        x[:, i] = phi * x[:, i - 1] + rng.normal(size=n)
    windows = x[:, None]
    synth = ar_bootstrap_windows(windows, 300, order=1, rng=np.random.default_rng(1))
    lag1 = np.corrcoef(synth[:, 0, 10:-1].ravel(), synth[:, 0, 11:].ravel())[0, 1]
    assert abs(lag1 - phi) < 0.05
    model = fit_ridge(synth, context=30)
    pred = ridge_forecast(model, windows[:, :, :30], 10)
    mse = ((pred - windows[..., 30:]) ** 2).mean()
    noise = fit_ridge(rng.normal(size=(300, 1, 40)), context=30)
    assert mse < ((ridge_forecast(noise, windows[:, :, :30], 10) - windows[..., 30:]) ** 2).mean()
