"""Invariants of the Brownian-bridge process (methods.bridge.process) and of the consecutive bridge's forward pair."""

import math

import pytest
import torch

from diffusekit.methods.bridge import BrownianBridge, ConsecutiveBrownianBridge, grid_bridge


def _frames(seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 6, 6, generator=g) * 2 - 1 for _ in range(3)]


def test_marginals_at_both_ends_are_the_frames():
    bb = BrownianBridge(1000)
    x, y, _ = _frames(0)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(bb.q_sample(x, y, 0, noise), x)
    assert torch.equal(bb.q_sample(x, y, 1000, noise), y)
    # variance 0 at both ends, maximal (max_var / 2) in the middle, symmetric
    assert bb.delta[0] == 0 and bb.delta[-1] == 0
    assert int(bb.delta.argmax()) == 500 and math.isclose(float(bb.delta.max()), 0.5, rel_tol=1e-12)
    torch.testing.assert_close(bb.delta, bb.delta.flip(0), atol=1e-15, rtol=0)
    assert math.isclose(float(BrownianBridge(100, max_var=2.0).delta.max()), 1.0, rel_tol=1e-12)
    # per-sample time indices broadcast
    t = torch.tensor([0, 1000, 0, 1000])
    out = bb.q_sample(x, y, t, noise)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], y[1])


def test_monte_carlo_marginal_at_intermediate_t():
    bb = BrownianBridge(1000)
    g = torch.Generator().manual_seed(2)
    n = 200_000
    x, y = torch.full((n, 1), 0.6), torch.full((n, 1), -0.4)
    for t in (100, 500, 900):
        xt = bb.q_sample(x, y, t, torch.randn(x.shape, generator=g))
        m = t / 1000
        mean, var = 0.6 * (1 - m) - 0.4 * m, 2 * (m - m * m)
        assert abs(xt.mean().item() - mean) < 5 * math.sqrt(var / n)
        assert abs(xt.var().item() / var - 1) < 0.02


def test_posterior_variance_matches_gaussian_conditioning():
    """Var q(x_s | x_t, x) from the joint Gaussian of (x_s, x_t): delta_s - a^2 delta_s^2 / delta_t, a = a_{t|s}."""
    bb = BrownianBridge(1000)
    for s, t in [(100, 300), (400, 500), (10, 990), (700, 999)]:
        m_s, m_t, d_s, d_t = (float(v) for v in (bb.m[s], bb.m[t], bb.delta[s], bb.delta[t]))
        a = (1 - m_t) / (1 - m_s)
        assert math.isclose(bb.posterior_variance(t, s), d_s - a * a * d_s * d_s / d_t, rel_tol=1e-9)
    # from the end point the posterior is the marginal (x_T = y carries no information), to s = 0 it is a point
    assert math.isclose(bb.posterior_variance(1000, 300), float(bb.delta[300]), rel_tol=1e-12)
    assert bb.posterior_variance(300, 0) == 0.0
    with pytest.raises(ValueError):
        bb.posterior_variance(300, 300)


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
def test_one_step_with_true_x0_lands_on_the_marginal(eta):
    bb = BrownianBridge(1000)
    g = torch.Generator().manual_seed(3)
    n = 200_000
    x, y = torch.full((n, 1), 0.3), torch.full((n, 1), -0.7)
    for t, s in [(800, 500), (500, 100), (1000, 600)]:
        if t == 1000 and eta < 1:
            continue  # from x_T = y the noise estimate is undefined; only eta = 1 keeps the marginal there
        xt = bb.q_sample(x, y, t, torch.randn(x.shape, generator=g))
        xs = bb.step(xt, x, y, t, s, eta=eta, generator=g)
        m, var = s / 1000, float(bb.delta[s])
        assert abs(xs.mean().item() - (0.3 * (1 - m) - 0.7 * m)) < 5 * math.sqrt(var / n)
        assert abs(xs.var().item() / var - 1) < 0.02
    # the posterior mean with the true x0 (noise 0) equals the Gaussian-conditioning mean E[x_s | x_t, x]
    t, s = 700, 300
    xt = bb.q_sample(x[:5], y[:5], t, torch.randn(5, 1, generator=g))
    mean = bb.step(xt, x[:5], y[:5], t, s, eta=1.0, noise=torch.zeros(5, 1))
    m_s, m_t, d_s, d_t = (float(v) for v in (bb.m[s], bb.m[t], bb.delta[s], bb.delta[t]))
    a = (1 - m_t) / (1 - m_s)
    mu_s, mu_t = (1 - m_s) * 0.3 - m_s * 0.7, (1 - m_t) * 0.3 - m_t * 0.7
    torch.testing.assert_close(mean, mu_s + a * d_s / d_t * (xt - mu_t), atol=1e-6, rtol=0)
    # a step to s = 0 returns x0_hat exactly
    assert torch.equal(bb.step(xt, x[:5], y[:5], t, 0, eta=1.0, generator=g), x[:5])


def test_grid_and_step_validation():
    assert grid_bridge(1).tolist() == [1000, 0]
    assert grid_bridge(4).tolist() == [1000, 750, 500, 250, 0]
    for n in (1, 2, 5, 10, 20, 50):
        grid = grid_bridge(n)
        assert len(grid) == n + 1 and grid[0] == 1000 and grid[-1] == 0 and bool((grid[1:] < grid[:-1]).all())
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError):
            grid_bridge(bad)
    bb = BrownianBridge(10)
    x = torch.zeros(2, 1)
    with pytest.raises(ValueError):
        bb.step(x, x, x, 5, 2, eta=1.5)
    with pytest.raises(ValueError):
        bb.q_sample(x, x, 11, x)


def test_consecutive_pair_shares_its_noise():
    cbb = ConsecutiveBrownianBridge(1000)
    x, y, z = _frames(4)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    for t in (0, 1, 250, 500, 999, 1000):
        xy, xz = cbb.q_sample_pair(x, y, z, t, noise)
        # shared eps: the two states differ by exactly m_t (y - z); at t = 0 both are the middle frame
        torch.testing.assert_close(xy - xz, (t / 1000) * (y - z), atol=1e-6, rtol=0)
        if t == 0:
            assert torch.equal(xy, x) and torch.equal(xz, x)
        if t == 1000:
            assert torch.equal(xy, y) and torch.equal(xz, z)
    assert cbb.net_time(300, side="prev", batch=2).tolist() == [700.0, 700.0]
    assert cbb.net_time(300, side="next", batch=2).tolist() == [1300.0, 1300.0]


class _OracleNet(torch.nn.Module):
    """Returns state - x for a known middle frame x (the exact 'x_t - x' objective), counting its calls."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.x, self.calls, self.batches = x, 0, []

    def forward(self, inp, tau):
        self.calls += 1
        self.batches.append(inp.shape[0])
        reps = inp.shape[0] // self.x.shape[0]
        return inp[:, :1] - self.x.repeat(reps, 1, 1, 1)


@pytest.mark.parametrize("shared", [True, False])
def test_joint_sampling_with_the_oracle_recovers_the_middle_frame(shared):
    cbb = ConsecutiveBrownianBridge(1000)
    x, y, z = _frames(6)
    for steps in (1, 2, 5, 20):
        net = _OracleNet(x)
        seen = []
        out = cbb.sample(net, y, z, steps, generator=torch.Generator().manual_seed(7), shared_noise=shared,
                         callback=seen.append)
        torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
        assert net.calls == steps and all(b == 2 * x.shape[0] for b in net.batches)  # one batched call per step
        assert [d["t"] for d in seen] == grid_bridge(steps)[:-1].tolist()
        if steps >= 2:  # intermediate states are noisy and, with shared noise, stay consecutive
            d = seen[0]
            m = d["s"] / 1000
            assert (d["x_prev"] - cbb.bridge.marginal_mean(x, y, d["s"])).abs().max() > 0.01
            gap = (d["x_prev"] - d["x_next"] - m * (y - z)).abs().max()
            assert (gap < 1e-5) if shared else (gap > 1e-3)


def test_loss_is_per_example_and_zero_for_the_oracle():
    cbb = ConsecutiveBrownianBridge(1000)
    x, y, z = _frames(8, n=6)

    class Exact(torch.nn.Module):
        def forward(self, inp, tau):
            return inp[:, :1] - x

    loss = cbb.loss(Exact(), (y, x, z), torch.Generator().manual_seed(0))
    assert loss.shape == (6,) and float(loss.abs().max()) < 1e-6
    zero = cbb.loss(lambda inp, tau: torch.zeros_like(inp[:, :1]), (y, x, z), torch.Generator().manual_seed(0))
    assert bool((zero > 0).all()) and float(zero.max()) <= 5 * 2.0  # weight <= 5, |state - x| <= 2 per pixel
