"""EDA-DM (arXiv 2401.04585): TDAC's calibration budget follows the density and diversity of the per-step
features, and the method (TDAC + FBR) beats naive min/max at W4A8 on the shipped digits UNet."""

from __future__ import annotations

import pytest
import torch

from diffusekit.methods.quant import quant_layers
from diffusekit.methods.quant.calibration import Trajectories
from diffusekit.methods.quant.checkpoint import rebuild_quantized_net
from diffusekit.methods.quant.edadm import (quantize_edadm, tdac_allocation, tdac_calibration, tdac_scores,
                                            trajectory_features)
from diffusekit.methods.quant.pipeline import QuantDenoiser, calibration_trajectories, quantize_minmax


def _features(outlier_scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """(S=5, N=16, C=4, 2, 2): steps 0, 1, 3, 4 share one feature map up to small noise; step 2 points in random
    directions (far from the others, so not dense, but the most diverse)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(16, 4, 2, 2, generator=g)
    f = base.expand(5, -1, -1, -1, -1) + 0.01 * torch.randn(5, 16, 4, 2, 2, generator=g)
    f = f.clone()
    f[2] = outlier_scale * torch.randn(16, 4, 2, 2, generator=g)
    return f


def test_tdac_scores_follow_density_and_diversity():
    scores = tdac_scores(_features(), r=0.5, lam=1.2)
    # density: each typical step has the 3 other typical steps within r; the odd one has none
    assert scores["density"].tolist() == [3.0, 3.0, 0.0, 3.0, 3.0]
    assert int(scores["diversity"].argmax()) == 2
    # w = minmax(d) + lam minmax(c): the diverse step gets lam = 1.2, the others 1 (+ their tiny diversity)
    counts = tdac_allocation(scores["weight"], 100)
    assert int(counts.sum()) == 100 and int(counts.argmax()) == 2
    # density alone (lam = 0) starves the lone step; diversity alone gives everything to it
    assert tdac_allocation(tdac_scores(_features(), r=0.5, lam=0.0)["weight"], 100)[2] == 0
    div_only = tdac_scores(_features(), r=1e-9, lam=1.0)  # nothing is within r: density constant
    assert div_only["density"].eq(0).all()
    assert tdac_allocation(div_only["weight"], 100)[2] == max(tdac_allocation(div_only["weight"], 100))
    # largest-remainder rounding keeps the total
    assert tdac_allocation(torch.tensor([1.0, 1.0, 1.0]), 10).tolist() in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    with pytest.raises(ValueError, match="budget"):
        tdac_allocation(torch.ones(3), 0)


def test_tdac_calibration_takes_each_trajectory_at_its_allotted_step():
    s, n = 5, 16
    x = torch.arange(s * n, dtype=torch.float32).reshape(s, n, 1)
    traj = Trajectories(x, torch.linspace(1, 0.2, s, dtype=torch.float64), {"class_labels": torch.arange(n)})
    feats = _features()
    cal = tdac_calibration(traj, feats, 12, r=0.5, seed=3)
    expected = tdac_allocation(tdac_scores(feats, r=0.5)["weight"], 12)
    steps = torch.tensor([int((traj.t == t).nonzero()) for t in cal.t])
    assert torch.bincount(steps, minlength=s).tolist() == expected.tolist()
    assert torch.equal(cal.x[:, 0], x[steps, torch.arange(12), 0])  # trajectory i at its step
    assert torch.equal(cal.cond["class_labels"], torch.arange(12))
    assert not torch.equal(steps, steps.sort().values)  # shuffled over the slots
    with pytest.raises(ValueError, match="features must be"):
        tdac_calibration(traj, feats[:3], 12)


@pytest.fixture(scope="module")
def digits():
    from diffusekit import zoo

    den = zoo.load("digits_unet")
    traj = calibration_trajectories(den, 128, seed=0)
    return den, traj, trajectory_features(den, traj)


def test_tdac_on_digits_is_not_uniform_and_ordered_by_weight(digits):
    den, traj, feats = digits
    assert feats.shape == (20, 128, 64, 4, 4)  # the mid attention's input, every step
    w = tdac_scores(feats)["weight"]
    counts = tdac_allocation(w, 128)
    assert int(counts.max() - counts.min()) >= 2  # uniform would give 6 or 7 everywhere
    order = torch.argsort(w)
    assert torch.all(counts[order][1:] >= counts[order][:-1])


def test_edadm_w4a8_beats_naive_minmax(digits):
    """Same 128 calibration trajectories; x0 error vs full precision on 32 fresh DDIM trajectories."""
    den, traj, feats = digits
    ev = calibration_trajectories(den, 32, seed=99)
    with torch.no_grad():
        ref = [den(ev.x[k].double(), ev.t[k], **ev.cond) for k in range(ev.num_steps)]

    def x0_error(q):
        with torch.no_grad():
            return sum(((q(ev.x[k].double(), ev.t[k], **ev.cond) - ref[k]).norm() / ref[k].norm()).item()
                       for k in range(ev.num_steps)) / ev.num_steps

    naive = x0_error(quantize_minmax(den, 4, 8, traj=traj).denoiser)
    res = quantize_edadm(den, 4, 8, traj=traj, quick=True, iters=10, features=feats)
    assert res.denoiser.step_times is None and res.info["structure"]["quantize_model"]["first_last_bits"] == 8
    assert sum(res.info["tdac"]["allocation"]) == 128
    ours = x0_error(res.denoiser)
    assert ours < 0.7 * naive, (ours, naive)
    # final-network contract: every weight on its grid; the structure rebuilds the net for a checkpoint
    assert all(torch.equal(m.w_quant(m.layer.weight), m.layer.weight) for m in quant_layers(res.net).values())
    net = rebuild_quantized_net(res.net.config, 4, 8, res.info["structure"], res.net.state_dict())
    x, t = ev.x[5].double(), ev.t[5]
    with torch.no_grad():
        assert torch.equal(QuantDenoiser(net, den)(x, t, **ev.cond), res.denoiser(x, t, **ev.cond))
