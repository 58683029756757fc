import math

import pytest
import torch

from diffusekit.core import VPDiscrete
from diffusekit.data import load_dataset
from diffusekit.methods.resshift import (ResShift, eta_schedule, sample_ddpm_sr, sr_pairs, train_ddpm_sr,
                                         train_resshift)
from diffusekit.metrics import psnr


def test_eta_schedule_monotone_and_ends():
    for T, p, kappa in [(4, 0.2, 2.0), (15, 0.04, 2.0), (10, 0.3, 0.5)]:
        eta = eta_schedule(T, kappa=kappa, min_noise_level=p)
        assert eta.shape == (T,)
        assert torch.all(eta[1:] > eta[:-1])
        assert math.isclose(eta[0].sqrt().item(), min(p / kappa, p), rel_tol=1e-12)
        assert math.isclose(eta[-1].sqrt().item(), 0.99, rel_tol=1e-12)
    # the journal's 4-step values
    torch.testing.assert_close(eta_schedule(4), torch.tensor([0.01, 0.2705, 0.5797, 0.9801], dtype=torch.float64),
                               atol=5e-4, rtol=0)
    # larger power -> slower early shift (smaller intermediate etas)
    assert torch.all(eta_schedule(6, power=1.0)[1:-1] < eta_schedule(6, power=0.3)[1:-1])


def test_forward_marginal_mean_var():
    rs = ResShift(4, kappa=2.0)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.3)
    y = torch.full((n, 1), -0.5)
    for t in range(4):
        xt = rs.q_sample(x0, y, t, torch.randn(x0.shape, generator=g))
        eta = rs.etas[t].item()
        mean, var = 0.3 + eta * (-0.5 - 0.3), 4.0 * eta
        assert abs(xt.mean().item() - mean) < 5 * math.sqrt(var / n)
        assert abs(xt.var().item() / var - 1) < 0.02


def test_oracle_sampler_recovers_x0_and_posterior_is_consistent():
    rs = ResShift(4, kappa=2.0)
    x0 = load_dataset("digits", "test").x[:16]
    _, y = sr_pairs(x0, 2)
    oracle = lambda x, yy, t: x0  # noqa: E731
    seen = {}
    out = rs.sample(oracle, y, torch.Generator().manual_seed(0), callback=lambda d: seen.setdefault(d["t"], d["x"]))
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=0)
    # the intermediate states are noisy but already close: std at t_index 0 is kappa sqrt(eta_1) = 0.2
    assert (seen[1] - x0).abs().max() > 0.05
    # with the oracle, one posterior step from the exact forward marginal at t gives the marginal at t - 1
    g = torch.Generator().manual_seed(1)
    n = 200_000
    a, b = torch.full((n, 1), 0.4), torch.full((n, 1), -0.6)
    for t in range(1, 4):
        xt = rs.q_sample(a, b, t, torch.randn(a.shape, generator=g))
        mean, std = rs.posterior(xt, a, t)
        xs = mean + std * torch.randn(a.shape, generator=g)
        eta = rs.etas[t - 1].item()
        assert abs(xs.mean().item() - (0.4 + eta * (-1.0))) < 0.01
        assert abs(xs.var().item() / (4.0 * eta) - 1) < 0.03


def test_resshift_beats_ddpm_at_4_steps_sr2():
    torch.set_num_threads(1)
    x = load_dataset("digits", "train").x
    x, y = sr_pairs(x, 2)
    xt = load_dataset("digits", "test").x[:128]
    _, yt = sr_pairs(xt, 2)
    rs = ResShift(4)
    net, _ = train_resshift(rs, x, y, steps=40, max_seconds=None, seed=0)
    den, _ = train_ddpm_sr(VPDiscrete.named("linear", 1000), x, y, steps=40, max_seconds=None, seed=0)
    p_rs = psnr(rs.sample(net, yt, torch.Generator().manual_seed(0)), xt).mean().item()
    p_dd = psnr(sample_ddpm_sr(den, yt, 4, torch.Generator().manual_seed(0)), xt).mean().item()
    assert p_rs > p_dd + 1.0, (p_rs, p_dd)


def test_invalid_schedule_args():
    with pytest.raises(ValueError):
        eta_schedule(0)
    with pytest.raises(ValueError):
        eta_schedule(4, kappa=-1)
