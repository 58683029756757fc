"""ANT (arXiv 2306.00354): interval clustering, balancers, the stratified training loop, task affinity; and DTR
(arXiv 2310.07138) through the training path."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from diffusekit.core import VPDiscrete
from diffusekit.data import load_dataset
from diffusekit.methods.ant import (NashMTL, PCGrad, UncertaintyWeighting, centre_referenced_cost,
                                    cluster_timesteps, interval_cost, interval_of, log_snr_values, nash_weights,
                                    pcgrad_project, snr_cost, snr_values, stratified_timesteps, task_affinity,
                                    tas_cost, train_intervals, uniform_intervals)
from diffusekit.nets.dit import DiT
from diffusekit.training.config import TrainConfig
from diffusekit.training.losses import DiffusionLoss

# ----------------------------------------------------------------------------- interval clustering


def _brute_force(cost: np.ndarray, k: int) -> float:
    n = cost.shape[0]
    best = math.inf
    for cuts in itertools.combinations(range(1, n), k - 1):
        edges = (0, *cuts, n)
        best = min(best, sum(cost[edges[j], edges[j + 1] - 1] for j in range(k)))
    return best


def _check_partition(intervals, n, k):
    assert len(intervals) == k
    assert intervals[0][0] == 0 and intervals[-1][1] == n - 1
    assert all(lo <= hi for lo, hi in intervals)
    assert all(intervals[j + 1][0] == intervals[j][1] + 1 for j in range(k - 1))


def test_centre_referenced_cost_matches_the_definition():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(9, 9))
    for rounding in ("half_even", "floor"):
        cost = centre_referenced_cost(m, rounding)
        for lo in range(9):
            for hi in range(lo, 9):
                c = lo if lo == hi else (round((lo + hi + 1) / 2) if rounding == "half_even" else (lo + hi + 1) // 2)
                assert lo <= c <= hi
                assert cost[lo, hi] == pytest.approx(m[c, lo:hi + 1].sum(), abs=1e-12)
        assert np.all(np.isinf(cost[np.tril_indices(9, -1)]))


@pytest.mark.parametrize("seed", range(4))
def test_dp_is_exactly_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 10
    values = np.sort(rng.normal(size=n) * 3)  # SNR-like (monotone) and a random affinity matrix
    a = rng.normal(size=(n, n))
    costs = [snr_cost(values), snr_cost(rng.normal(size=n)), tas_cost((a + a.T) / 4)]
    for cost in costs:
        for k in range(1, 6):
            intervals = cluster_timesteps(cost, k)
            _check_partition(intervals, n, k)
            assert interval_cost(cost, intervals) == pytest.approx(_brute_force(cost, k), abs=1e-9)
    # a vector is clustered with the SNR cost
    assert cluster_timesteps(values, 3) == cluster_timesteps(snr_cost(values), 3)


def test_uniform_intervals():
    for n, k in [(1000, 5), (1000, 8), (7, 3), (5, 5)]:
        intervals = cluster_timesteps(np.zeros(n), k, method="uniform")
        _check_partition(intervals, n, k)
        sizes = [hi - lo + 1 for lo, hi in intervals]
        assert max(sizes) - min(sizes) <= 1
    assert uniform_intervals(1000, 5) == [(0, 199), (200, 399), (400, 599), (600, 799), (800, 999)]
    with pytest.raises(ValueError, match="k"):
        cluster_timesteps(np.zeros(4), 5)
    with pytest.raises(ValueError, match="method"):
        cluster_timesteps(np.zeros(4), 2, method="kmeans")


def test_raw_snr_degenerates_where_log_snr_is_balanced():
    """The pitfall: raw SNR spans ~1e4 on linear betas, so the DP spends its intervals on the first timesteps."""
    schedule = VPDiscrete.named("linear", 1000)
    raw = cluster_timesteps(snr_values(schedule), 5)
    log = cluster_timesteps(log_snr_values(schedule), 5)
    _check_partition(raw, 1000, 5)
    _check_partition(log, 1000, 5)
    raw_sizes = [hi - lo + 1 for lo, hi in raw]
    log_sizes = [hi - lo + 1 for lo, hi in log]
    assert raw_sizes[0] <= 2 and raw_sizes[1] <= 3 and raw_sizes[-1] >= 900
    assert all(100 <= s <= 300 for s in log_sizes)


# ----------------------------------------------------------------------------- balancers


def test_pcgrad_removes_conflicting_components():
    g = torch.tensor([[1.0, 0.0, 1.0], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.dot(g[0], g[1]) < 0
    out = pcgrad_project(g, random.Random(0))
    assert torch.dot(out[0], g[1]) >= -1e-12 and torch.dot(out[1], g[0]) >= -1e-12
    assert torch.dot(out[0], g[1]).abs() < 1e-12  # projected onto the normal plane exactly
    torch.testing.assert_close(out[0], g[0] - torch.dot(g[0], g[1]) / g[1].dot(g[1]) * g[1])
    # no conflict: unchanged
    h = torch.tensor([[1.0, 0.5], [0.2, 1.0], [0.3, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(pcgrad_project(h), h)
    # many random tasks: each g_i' ends orthogonal to or agreeing with the last task it was checked against
    # (task orders replayed from the same seeded RNG), and a projection never adds a component along g_i
    rng = torch.Generator().manual_seed(0)
    for trial in range(20):
        g = torch.randn(4, 6, generator=rng, dtype=torch.float64)
        out = pcgrad_project(g, random.Random(trial))
        order = random.Random(trial)
        for i in range(4):
            others = [j for j in range(4) if j != i]
            order.shuffle(others)
            assert torch.dot(out[i], g[others[-1]]) >= -1e-12
            assert torch.dot(out[i], g[i]) <= torch.dot(g[i], g[i]) + 1e-12


def test_pcgrad_balancer_sets_summed_projected_gradients():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1, bias=False)
    x = torch.tensor([[1.0, 0.0, 1.0], [-1.0, 1.0, 0.0]])
    losses = (lin(x).squeeze(1) * torch.tensor([1.0, 1.0]))
    params = list(lin.parameters())
    PCGrad(seed=0).backward(losses, params)
    g = x / 2  # d(L_k / k)/dw = x_k / 2
    expected = pcgrad_project(g.double(), random.Random(0)).sum(0)
    torch.testing.assert_close(lin.weight.grad.reshape(-1).double(), expected, atol=1e-7, rtol=0)


def test_uncertainty_weighting_gradients_and_fixed_point():
    uw = UncertaintyWeighting(3, lr=0.025)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.3, -0.2, 1.0]))
    w = torch.tensor([0.5, 1.5, -1.0], requires_grad=True)
    task_losses = torch.stack([w[0] ** 2, w[1] ** 2, w[2] ** 2]) + torch.tensor([0.1, 0.2, 0.3])
    uw.backward(task_losses, [w])
    s = uw.log_vars.detach()
    L = task_losses.detach()
    torch.testing.assert_close(uw.log_vars.grad, 0.5 * (1 - torch.exp(-s) * L / 3))
    torch.testing.assert_close(w.grad, torch.exp(-s) / 6 * 2 * w.detach())
    # on fixed losses s_k goes to log(L_k / k): weights exp(-s_k)/2 -> k / (2 L_k)
    uw = UncertaintyWeighting(3, lr=0.025)
    fixed = torch.tensor([0.05, 0.3, 0.9])
    for _ in range(3000):
        uw.backward(fixed, [])
        uw.step()
    np.testing.assert_allclose(uw.weights(), (3 / (2 * fixed)).numpy(), rtol=0.02)


def test_nash_weights_solve_the_bargaining_equation():
    rng = torch.Generator().manual_seed(0)
    g = torch.randn(3, 5, generator=rng, dtype=torch.float64)
    gram = g @ g.T
    assert torch.linalg.cond(gram) < 50
    alpha = nash_weights(gram, normalise=False)
    assert np.all(alpha > 0)
    np.testing.assert_allclose(gram.numpy() @ alpha, 1.0 / alpha, rtol=1e-5)
    alpha_n = nash_weights(gram)  # normalised Gram: M = G G^T / |G G^T|_F
    m = (gram / torch.linalg.norm(gram)).numpy()
    np.testing.assert_allclose(m @ alpha_n, 1.0 / alpha_n, rtol=1e-5)
    # orthogonal task gradients of norms n_k: alpha_k = 1 / n_k (each task's update has unit size)
    norms = np.array([0.5, 2.0, 4.0])
    np.testing.assert_allclose(nash_weights(np.diag(norms ** 2), normalise=False), 1 / norms, rtol=1e-5)


def test_nash_balancer_backpropagates_alpha_weighted_losses():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    losses = torch.stack([3 * w[0], 0.5 * w[1]])  # task gradients (3, 0) and (0, 0.5): orthogonal
    nash = NashMTL(2, update_every=25)
    nash.backward(losses, [w])
    # M = diag(9, 0.25) / |.|_F, alpha_k = 1 / sqrt(M_kk); grad = alpha_k * dL_k / 2
    scale = math.sqrt(9**2 + 0.25**2)
    alpha = np.array([1 / math.sqrt(9 / scale), 1 / math.sqrt(0.25 / scale)])
    np.testing.assert_allclose(nash.weights(), alpha, rtol=1e-5)
    torch.testing.assert_close(w.grad, torch.tensor([alpha[0] * 3 / 2, alpha[1] * 0.5 / 2], dtype=torch.float32))


# ----------------------------------------------------------------------------- stratified training, DTR, TAS

TINY_DIT = {"in_channels": 1, "image_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 2,
            "num_classes": 10}


@pytest.fixture(scope="module")
def digits():
    train = load_dataset("digits", "train")
    return train.x[:400], train.y[:400]


@pytest.fixture(scope="module")
def loss():
    return DiffusionLoss(VPDiscrete.named("cosine", 1000), "eps")


def test_stratified_timesteps_fill_every_interval():
    intervals = [(0, 9), (10, 499), (500, 999)]
    n = stratified_timesteps(intervals, 300, torch.Generator().manual_seed(0))
    assert n.shape == (300,)
    for j, (lo, hi) in enumerate(intervals):
        part = n[j * 100:(j + 1) * 100]
        assert int(part.min()) >= lo and int(part.max()) <= hi
        assert len(part.unique()) > min(5, hi - lo)
    assert torch.equal(interval_of(n, intervals), torch.arange(3).repeat_interleave(100))
    with pytest.raises(ValueError, match="divisible"):
        stratified_timesteps(intervals, 100)


def _one_step(beta, digits, loss, balancer="mean", intervals=None, steps=1):
    torch.manual_seed(3)
    net = DiT(**TINY_DIT, dtr_beta=beta)
    cfg = TrainConfig(steps=steps, batch_size=40, lr=1e-3, ema_decay=None, seed=5, progress=False, log_every=5)
    model, history = train_intervals(net, loss, digits, cfg, intervals=intervals, balancer=balancer)
    return model, history


def test_dtr_beta_one_trains_exactly_like_the_plain_dit(digits, loss):
    base, _ = _one_step(None, digits, loss, steps=2)
    full, _ = _one_step(1.0, digits, loss, steps=2)
    routed, _ = _one_step(0.8, digits, loss, steps=2)
    base_state, full_state, routed_state = base.state_dict(), full.state_dict(), routed.state_dict()
    assert all(torch.equal(base_state[k], full_state[k]) for k in base_state)
    assert not all(torch.equal(base_state[k], routed_state[k]) for k in base_state)


def test_same_seed_same_data_and_noise_across_arms(digits, loss):
    """Vanilla and the one-interval stratified arm draw identical batches, noise and timesteps."""
    a, ha = _one_step(None, digits, loss, steps=3)
    b, hb = _one_step(None, digits, loss, intervals=[(0, 999)], steps=3)
    assert ha["loss"] == hb["loss"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_uw_weights_favour_the_low_loss_high_noise_intervals(digits, loss):
    """eps-prediction losses fall with the noise level, so UW's exp(-s_k)/2 ~ k / (2 L_k) rises with k."""
    _, history = _one_step(None, digits, loss, balancer="uw", intervals=uniform_intervals(1000, 4), steps=40)
    weights = history["weights"][-1][1]
    task = np.mean(history["task_loss"][-10:], axis=0)
    assert task[0] > task[-1]
    assert weights[-1] > weights[0] > 0.5
    assert history["balancer"] == "uw" and len(history["task_loss"][0]) == 4


def test_pcgrad_and_nash_arms_train(digits, loss):
    for balancer in ("pcgrad", "nash"):
        _, history = _one_step(None, digits, loss, balancer=balancer, intervals=uniform_intervals(1000, 4), steps=6)
        assert len(history["loss"]) == 6 and all(math.isfinite(v) for v in history["loss"])
    assert len(history["weights"][-1][1]) == 4


def test_task_affinity_is_a_cosine_matrix_with_local_structure(digits, loss):
    model, _ = _one_step(None, digits, loss, steps=30)
    steps = [0, 50, 100, 400, 450, 500, 900, 950, 999]
    tas = task_affinity(model, loss, digits[0][:64], steps, labels=digits[1][:64]).numpy()
    assert tas.shape == (9, 9)
    np.testing.assert_allclose(np.diag(tas), 1.0, atol=1e-9)
    np.testing.assert_allclose(tas, tas.T, atol=1e-12)
    assert np.all(np.abs(tas) <= 1 + 1e-9)
    # nearby timesteps share gradient directions more than far-apart ones (the block-diagonal structure)
    near = np.mean([tas[i, i + 1] for i in (0, 1, 3, 4, 6, 7)])
    far = np.mean([tas[i, j] for i in (0, 1, 2) for j in (6, 7, 8)])
    assert near > far + 0.2
