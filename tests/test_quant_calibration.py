"""Calibration sets of issue 9 (PTQ4DM, Q-Diffusion, naive baseline), ``calibrate_denoiser`` and Q-Diffusion's
split shortcut quantization, with a direction check on the shipped digits UNet."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from diffusekit.core.denoiser import FunctionDenoiser
from diffusekit.core.schedules import FlowSchedule, VPDiscrete
from diffusekit.methods.quant import quant_layers, quantize_model
from diffusekit.methods.quant.calibration import (CalibrationSet, SplitConv2d, calibrate_denoiser,
                                                  naive_calibration, ptq4dm_calibration, qdiffusion_calibration,
                                                  record_trajectories, single_step_calibration, split_concat_convs,
                                                  uniform_calibration, unet_concat_splits)


def _zero_denoiser(schedule):
    """x0_hat = 0: DDIM then gives x_t = (sigma_t / sigma_s) x_s, so x_t = (sigma_t / sigma_T) x_T exactly."""
    return FunctionDenoiser(lambda x, t, **c: torch.zeros_like(x), schedule)


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_ptq4dm_times_centred_at_0p4_T_with_stated_spread():
    # 100 uniform DDIM steps: recorded times 1.00, 0.99, ..., 0.01 (T = 1)
    traj = record_trajectories(_zero_denoiser(VPDiscrete.named("linear", 1000)), 4000, (1,), steps=100)
    assert traj.num_steps == 100 and math.isclose(float(traj.t[0]), 1.0) and math.isclose(float(traj.t[-1]), 0.01)
    t = ptq4dm_calibration(traj, seed=3).t
    assert t.shape == (4000,)
    # N(0.4 T, (0.4 T)^2) clamped to the recorded range: clamping leaves the median and quartiles
    # (0.4 -+ 0.6745 * 0.4) in place; a mirrored index (noise level T - t) would centre at 0.6 T
    q1, med, q3 = (torch.quantile(t, q).item() for q in (0.25, 0.5, 0.75))
    assert abs(med - 0.4) < 0.025, med
    assert abs(q1 - (0.4 - 0.6745 * 0.4)) < 0.03 and abs(q3 - (0.4 + 0.6745 * 0.4)) < 0.03, (q1, q3)
    # the clamped tails: P(X < 0.015) at the least-noisy step, P(X > 0.995) at T
    low, high = (t == traj.t[-1]).double().mean().item(), (t == traj.t[0]).double().mean().item()
    assert abs(low - _normal_cdf((0.015 - 0.4) / 0.4)) < 0.02, low
    assert abs(high - (1 - _normal_cdf((0.995 - 0.4) / 0.4))) < 0.015, high
    assert set(t.tolist()) <= set(traj.t.tolist())  # every time is a recorded step


def test_ptq4dm_label_is_the_true_noise_level():
    # flow schedule (sigma_t = t) and x0_hat = 0: the state at time t is exactly t * x_T, so the label must
    # be the time whose noise level x actually has, not the mirrored T - t of the reference script
    sched = FlowSchedule()
    n, shape = 64, (16,)
    traj = record_trajectories(_zero_denoiser(sched), n, shape, steps=50, seed=5)
    x_T = torch.randn((n, *shape), generator=torch.Generator().manual_seed(5))
    cal = ptq4dm_calibration(traj, seed=1)
    expected = cal.t.float()[:, None] * x_T
    assert torch.allclose(cal.x, expected, atol=1e-5)
    mirrored = (1 - cal.t.float())[:, None] * x_T
    far = (cal.t - 0.5).abs() > 0.1
    assert far.sum() > 20 and not torch.allclose(cal.x[far], mirrored[far], atol=1e-2)


def test_qdiffusion_covers_every_step_equally():
    traj = record_trajectories(_zero_denoiser(VPDiscrete.named("linear", 1000)), 40, (3,), steps=50, seed=2)
    cal = qdiffusion_calibration(traj, num_steps=10, per_step=8, seed=4)
    assert len(cal) == 80
    times, counts = torch.unique(cal.t, return_counts=True)
    assert len(times) == 10 and torch.all(counts == 8)
    idx = sorted(int((traj.t == tt).nonzero()) for tt in times)
    assert idx[0] == 0 and idx[-1] == 49  # the whole trajectory, first to last step
    gaps = torch.diff(torch.tensor(idx))
    assert int(gaps.max()) - int(gaps.min()) <= 1  # evenly spaced
    # the same trajectories at every step, and each x is that trajectory's recorded state
    lab = cal.x.reshape(10, 8, 3)
    for k, tt in enumerate(torch.unique_consecutive(cal.t)):
        step = int((traj.t == tt).nonzero())
        rows = [int(((traj.x[step] - v).abs().sum(dim=1) == 0).nonzero()[0]) for v in lab[k]]
        if k == 0:
            first = rows
        assert rows == first
    full = qdiffusion_calibration(traj, num_steps=50)
    assert torch.all(torch.unique(full.t, return_counts=True)[1] == 40) and len(full) == 2000
    with pytest.raises(ValueError, match="num_steps"):
        qdiffusion_calibration(traj, num_steps=51)


def test_calibration_sets_deterministic_under_seed():
    sched = VPDiscrete.named("linear", 1000)
    den = FunctionDenoiser(lambda x, t, **c: 0.5 * x, sched)
    a = record_trajectories(den, 16, (4,), steps=10, seed=7)
    b = record_trajectories(den, 16, (4,), steps=10, seed=7)
    c = record_trajectories(den, 16, (4,), steps=10, seed=8)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    data = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(50) % 10
    builders = {
        "ptq4dm": lambda s: ptq4dm_calibration(a, seed=s),
        "qdiffusion": lambda s: qdiffusion_calibration(a, num_steps=5, per_step=6, seed=s),
        "uniform": lambda s: uniform_calibration(a, seed=s),
        "naive": lambda s: naive_calibration(sched, data, 32, cond={"class_labels": labels}, seed=s),
    }
    for name, build in builders.items():
        one, two, other = build(1), build(1), build(2)
        assert torch.equal(one.x, two.x) and torch.equal(one.t, two.t), name
        assert not (torch.equal(one.x, other.x) and torch.equal(one.t, other.t)), name
        assert one.method == name
    nv = builders["naive"](1)
    assert nv.cond["class_labels"].shape == (32,) and nv.t.min() >= sched.t_min and nv.t.max() <= sched.t_max


def test_calibration_set_checks_and_batches():
    cs = CalibrationSet(torch.zeros(5, 2), torch.ones(5, dtype=torch.float64), {"class_labels": torch.arange(5)})
    parts = list(cs.batches(2))
    assert [len(p[0]) for p in parts] == [2, 2, 1] and torch.equal(parts[2][2]["class_labels"], torch.tensor([4]))
    with pytest.raises(ValueError, match="same number"):
        CalibrationSet(torch.zeros(5, 2), torch.ones(4, dtype=torch.float64))


def _digits_eval(den, steps, n=32, seed=99):
    traj = record_trajectories(den, n, (1, 8, 8), steps=steps, cond={"class_labels": torch.arange(n) % 10}, seed=seed)
    with torch.no_grad():
        ref = [den(traj.x[k].double(), traj.t[k], class_labels=traj.cond["class_labels"]) for k in range(steps)]

    def err(q):
        """Relative L2 error of x0_hat vs the full-precision model, averaged over the trajectory's steps."""
        with torch.no_grad():
            return sum(((q(traj.x[k].double(), traj.t[k], class_labels=traj.cond["class_labels"]) - ref[k]).norm()
                        / ref[k].norm()).item() for k in range(steps)) / steps
    return err


def test_split_concat_convs_exact_in_fp_and_separate_quantizers():
    from diffusekit import zoo

    den = zoo.load("digits_unet")
    net = copy.deepcopy(den.net)
    splits = unet_concat_splits(net)
    assert splits == {"up.0.res": 64, "up.1.res": 64, "up.3.res": 64, "up.4.res": 32}
    names = split_concat_convs(net)
    assert names == ["up.0.res.skip", "up.1.res.skip", "up.3.res.skip", "up.4.res.skip"]
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((8,), 500.0)
    y = torch.arange(8)
    with torch.no_grad():
        assert torch.allclose(net(x, t, class_labels=y), den.net(x, t, class_labels=y), atol=1e-5)
    quantize_model(net, 4, 8)
    layers = quant_layers(net)
    assert "up.0.res.skip.conv_a" in layers and "up.0.res.skip.conv_b" in layers
    for name in names:  # C_deep + C_skip = the original shortcut's input channels
        a, b = layers[name + ".conv_a"], layers[name + ".conv_b"]
        assert a.layer.in_channels == splits[name[:-5]]
        assert a.layer.in_channels + b.layer.in_channels == den.net.get_submodule(name).in_channels
        assert a.a_quant is not b.a_quant and a.w_quant is not b.w_quant
    with pytest.raises(ValueError, match="before quantize_model"):
        unet_concat_splits(net)
    conv = nn.Conv2d(6, 4, 3, padding=1, stride=2)
    sc = SplitConv2d(conv, 2)
    z = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        assert torch.allclose(sc(z), conv(z), atol=1e-6)
    with pytest.raises(ValueError, match="split"):
        SplitConv2d(conv, 6)


@pytest.fixture(scope="module")
def digits():
    from diffusekit import zoo
    from diffusekit.data.digits import load_digits_split

    den = zoo.load("digits_unet")
    x0, y = load_digits_split("train")
    return den, x0, y


def test_digits_unet_trajectory_calibration_direction(digits):
    """W4A8 digits UNet, min/max ranges, x0_hat error vs full precision averaged over the 20 steps of fresh
    DDIM trajectories (256 calibration samples per set).

    Measured (3 seeds of trajectories and draws): time-step-aware Q-Diffusion 0.636 / 0.663 / 0.651,
    PTQ4DM 0.679 / 0.679 / 0.655, naive forward-noised data 0.703 / 0.656 / 0.652, a single (last,
    least-noisy) step 2.65 / 2.71 / 3.24. So the trajectory sets do NOT reliably beat the naive baseline at
    this scale (the shipped model's samples match its training data, and the W4 weight error dominates);
    what holds is Q-Diffusion's ablation: one calibration step misses the activation ranges of the noisy
    steps and is about 4x worse than steps spread over the whole trajectory.
    """
    den, x0, y = digits
    steps, n = 20, 256
    err = _digits_eval(den, steps)
    traj = record_trajectories(den, n, (1, 8, 8), steps=steps, cond={"class_labels": torch.arange(n) % 10}, seed=0)
    sets = {"ptq4dm": ptq4dm_calibration(traj, seed=1),
            "qdiffusion": qdiffusion_calibration(traj, num_steps=10, per_step=n // 10),
            "naive": naive_calibration(den.schedule, x0, n, cond={"class_labels": y}, seed=1),
            "single_step": single_step_calibration(traj)}
    errs = {}
    for name, cs in sets.items():
        q = copy.deepcopy(den)
        quantize_model(q.net, 4, 8)
        calibrate_denoiser(q, cs, "minmax")
        assert all(bool(m.a_quant.initialized.all()) for m in quant_layers(q.net).values())
        errs[name] = err(q)
    assert errs["qdiffusion"] < 0.35 * errs["single_step"], errs
    assert errs["ptq4dm"] < 0.35 * errs["single_step"], errs
    # the three full-range sets agree within 15 % (no reliable ranking among them at this scale)
    full = [errs["qdiffusion"], errs["ptq4dm"], errs["naive"]]
    assert max(full) < 1.15 * min(full), errs


def test_split_shortcut_quantization_lowers_skip_conv_error(digits):
    """Q-Diffusion's split: the decoder shortcut's input concat(h_deep, skip) is bimodal (measured ranges on
    the digits UNet: up.3 deep -32.9..52.6 vs skip -3.7..3.1, up.4 -20.4..15.5 vs -3.4..2.8), so one
    activation range wastes most of the grid on the skip half. Measured relative output error of the shortcut
    convs at W4A8 (up.0, up.1, up.3, up.4): 0.159 0.136 0.241 0.097 unsplit, 0.153 0.126 0.111 0.055 split;
    at A4 (activations only) 0.795 -> 0.416 (up.3) and 0.557 -> 0.204 (up.4); whole-model x0 error over the
    trajectory at A4 11.4 -> 9.6, at W4A8 unchanged (0.750 vs 0.760: the W4 weight error dominates)."""
    den, _, _ = digits
    n, steps = 128, 20
    traj = record_trajectories(den, n, (1, 8, 8), steps=steps, cond={"class_labels": torch.arange(n) % 10}, seed=0)
    cal = qdiffusion_calibration(traj, num_steps=10, per_step=n // 10)
    ev_traj = record_trajectories(den, 32, (1, 8, 8), steps=steps, cond={"class_labels": torch.arange(32) % 10},
                                  seed=9)
    ev = qdiffusion_calibration(ev_traj, num_steps=steps)
    names = ["up.0.res.skip", "up.1.res.skip", "up.3.res.skip", "up.4.res.skip"]
    splits = unet_concat_splits(den.net)

    def io(net, cs):
        got = {}
        hooks = [net.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: got.__setitem__(name, (i[0].detach(), o.detach()))) for name in names]
        with torch.no_grad():
            net(*den.net_inputs(cs.x, cs.t), **cs.cond)
        for h in hooks:
            h.remove()
        return got

    fp = io(den.net, ev)
    for name in ("up.3.res.skip", "up.4.res.skip"):  # bimodal input: the skip half's range is much narrower
        x, k = fp[name][0], splits[name[:-len(".skip")]]
        assert x[:, :k].abs().max() > 4 * x[:, k:].abs().max(), name
    rel = {}
    for split in (False, True):
        q = copy.deepcopy(den)
        if split:
            split_concat_convs(q.net)
        quantize_model(q.net, 4, 8)
        calibrate_denoiser(q, cal)
        out = io(q.net, ev)
        rel[split] = {name: ((out[name][1] - fp[name][1]).norm() / fp[name][1].norm()).item() for name in names}
    for name in ("up.3.res.skip", "up.4.res.skip"):
        assert rel[True][name] < 0.7 * rel[False][name], rel
    assert sum(rel[True].values()) < sum(rel[False].values()), rel


def test_default_sampler_trajectories_record_every_evaluation():
    sched = VPDiscrete.named("linear", 1000)
    den = FunctionDenoiser(lambda x, t, **c: 0.5 * x, sched)
    from diffusekit.samplers import default_timesteps

    traj = record_trajectories(den, 8, (2,), steps=6, grid="default", seed=0)
    ts = default_timesteps(den, 6)
    assert traj.num_steps == 6 and torch.allclose(traj.t, ts[:-1].to(traj.t))
    with pytest.raises(ValueError, match="deterministic"):
        record_trajectories(den, 8, (2,), steps=6, sampler="ddpm")
