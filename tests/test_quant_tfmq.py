"""TFMQ-DM (arXiv 2311.16503) and the temporal feature cache of "Temporal Feature Matters" (arXiv 2407.19547) on
the shipped digits UNet: the temporal block is found by tracing, TIAR touches only it and lowers its feature
error, finite-set calibration beats one shared range on the temporal features, the cache is exact and skips the
block, and the whole method beats naive min/max at W4A8."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from diffusekit.core.grids import make_grid
from diffusekit.methods.quant import calibrate_denoiser, quant_layers, quantize_model
from diffusekit.methods.quant.calibration import uniform_calibration
from diffusekit.methods.quant.checkpoint import rebuild_quantized_net
from diffusekit.methods.quant.pipeline import QuantDenoiser, calibration_trajectories, quantize_minmax
from diffusekit.methods.quant.tfmq import (_choose_cache, disable_temporal_cache, enable_temporal_cache,
                                           find_temporal_modules, finite_set_calibration, quantize_tfmq,
                                           restore_temporal_cache, temporal_feature_error, temporal_features,
                                           temporal_inputs, temporal_layers, tiar)
from diffusekit.samplers import sample_ddim

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    from diffusekit import zoo

    den = zoo.load("digits_unet")
    traj = calibration_trajectories(den, 128, seed=0)
    x_in, t_in = den.net_inputs(traj.x[0, :4].double(), traj.t[0].expand(4))
    modules = find_temporal_modules(den.net, x_in, t_in, {"class_labels": traj.cond["class_labels"][:4]})
    return den, traj, modules


def _x0_error(den, ev, ref):
    """Relative L2 error of x0_hat vs full precision, averaged over the evaluation trajectory's steps."""
    with torch.no_grad():
        return sum(((den(ev.x[k].double(), ev.t[k], **ev.cond) - ref[k]).norm() / ref[k].norm()).item()
                   for k in range(ev.num_steps)) / ev.num_steps


def test_temporal_block_found_by_tracing(digits):
    den, _, modules = digits
    emb_projs = [n for n, _ in den.net.named_modules() if n.endswith("emb_proj")]
    assert modules == ["embed"] + emb_projs and len(emb_projs) == 8

    class Foreign(nn.Module):  # a net of another layout: t -> MLP -> per-channel bias of a conv stack
        def __init__(self):
            super().__init__()
            self.t_mlp = nn.Sequential(nn.Linear(1, 8), nn.SiLU(), nn.Linear(8, 4))
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.out = nn.Conv2d(4, 1, 3, padding=1)

        def forward(self, x, t):
            return self.out(self.conv(x) + self.t_mlp(t[:, None])[:, :, None, None])

    assert find_temporal_modules(Foreign(), torch.randn(3, 1, 5, 5), torch.rand(3)) == ["t_mlp"]
    with pytest.raises(ValueError, match="no module of the net"):
        enable_temporal_cache(den, torch.tensor([0.5]), ["nope"], SHAPE)


def test_tiar_touches_only_the_temporal_block_and_lowers_its_error(digits):
    den, traj, modules = digits
    net = copy.deepcopy(den.net)
    quantize_model(net, 4, 8, act_steps=traj.num_steps)
    qden = QuantDenoiser(net, den, step_times=traj.t)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    stats = tiar(qden, den, modules, traj.t, SHAPE, iters=60, batch_size=16, seed=0)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = {f"{n}.layer.weight" for n in temporal_layers(net, modules)}
    assert changed and changed <= allowed, sorted(changed - allowed)
    # the baked weights lie on their quantizers' grids; the temporal-feature error fell
    for n in temporal_layers(net, modules):
        m = quant_layers(net)[n]
        assert torch.equal(m.w_quant(m.layer.weight), m.layer.weight)
    assert stats["error_after"] < 0.8 * stats["error_before"], stats


def test_fsc_per_step_ranges_beat_one_shared_range_on_temporal_features(digits):
    """A4 activations (weights fp): every emb_proj input SiLU(emb_t) changes with t, so one range for all steps
    wastes the grid at each step; per-step sets (FSC) fit each step. Measured: relative temporal-feature error
    0.174 with per-step sets (32 samples per step) vs 0.334 with one set (128 samples)."""
    den, traj, modules = digits
    per_step = QuantDenoiser(quantize_model(copy.deepcopy(den.net), None, 4, act_steps=traj.num_steps), den,
                             step_times=traj.t)
    finite_set_calibration(per_step, traj, per_step=32)
    shared = QuantDenoiser(quantize_model(copy.deepcopy(den.net), None, 4), den)
    calibrate_denoiser(shared, uniform_calibration(traj, seed=0))
    q = quant_layers(per_step.net)["mid1.emb_proj"].a_quant
    assert q.scale.shape == (traj.num_steps, 1) and float(q.scale.max() / q.scale.min()) > 1.5
    x_in, t_in, cond, steps, _ = temporal_inputs(den, traj.t, SHAPE)
    ref = temporal_features(den.net, modules, x_in, t_in, cond)
    err_fsc = temporal_feature_error(temporal_features(per_step.net, modules, x_in, t_in, cond, steps=steps), ref)
    err_one = temporal_feature_error(temporal_features(shared.net, modules, x_in, t_in, cond), ref)
    assert err_fsc < 0.7 * err_one, (float(err_fsc), float(err_one))


def test_temporal_cache_equals_recomputation_and_skips_the_block(digits):
    den, traj, modules = digits
    net = quantize_model(copy.deepcopy(den.net), 4, 8, act_steps=traj.num_steps)
    qden = QuantDenoiser(net, den, step_times=traj.t)
    finite_set_calibration(qden, traj, per_step=16)
    ts = make_grid("uniform", den.schedule, 20, t_end=0.0)  # the calibration sampler's grid
    assert torch.allclose(ts[:-1], traj.t)
    x_T = torch.randn(12, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cond = {"class_labels": torch.arange(12) % 11}  # includes the null class row 10
    with torch.no_grad():
        plain = sample_ddim(qden, x_T.clone(), ts, cond=cond)
        enable_temporal_cache(qden, traj.t, modules, SHAPE)
        calls = []
        hook = net.embed.mlp.register_forward_hook(lambda *a: calls.append(1))
        cached = sample_ddim(qden, x_T.clone(), ts, cond=cond)
        assert not calls  # the embedding MLP never ran
        t_off = torch.full((4,), 0.333, dtype=torch.float64)
        off_grid = qden.raw(x_T[:4], t_off, class_labels=cond["class_labels"][:4])
        assert calls  # a time off the cached grid computes the block
        hook.remove()
        assert torch.equal(plain, cached)
        # a checkpoint round trip: tables and times travel in the state_dict
        state = {k: v.clone() for k, v in net.state_dict().items()}
        fresh = quantize_model(copy.deepcopy(den.net), 4, 8, act_steps=traj.num_steps)
        restore_temporal_cache(fresh, state, den.num_classes)
        fresh.load_state_dict(state)
        again = sample_ddim(QuantDenoiser(fresh, den, step_times=traj.t), x_T.clone(), ts, cond=cond)
        assert torch.equal(again, plain)
        twin = copy.deepcopy(qden.net)  # a deep copy carries its own cache and lookup
        disable_temporal_cache(twin)
        assert torch.equal(sample_ddim(qden, x_T.clone(), ts, cond=cond), plain)
        disable_temporal_cache(net)
        assert not [k for k in net.state_dict() if "temporal_cache" in k]
        off_plain = qden.raw(x_T[:4], t_off, class_labels=cond["class_labels"][:4])
        assert torch.equal(off_grid, off_plain)
    # the disturbance-aware choice keeps the variant with the lower temporal-feature error
    choice = _choose_cache(qden, den, modules, traj.t, SHAPE, 8, "auto")
    assert choice["variant"] == min(choice["errors"], key=choice["errors"].get)
    assert set(choice["errors"]) == {"tib", "fp"}


def test_tfmq_w4a8_beats_naive_minmax(digits):
    """Same 128 calibration trajectories; x0 error vs full precision on 32 fresh DDIM trajectories."""
    den, traj, _ = digits
    ev = calibration_trajectories(den, 32, seed=99)
    with torch.no_grad():
        ref = [den(ev.x[k].double(), ev.t[k], **ev.cond) for k in range(ev.num_steps)]
    naive = _x0_error(quantize_minmax(den, 4, 8, traj=traj).denoiser, ev, ref)
    res = quantize_tfmq(den, 4, 8, traj=traj, quick=True, tiar_iters=20, recon_iters=20, fsc_per_step=32,
                        temporal_cache="auto")
    assert res.denoiser.step_times is not None and res.info["structure"]["quantize_model"]["act_steps"] == 20
    assert res.info["structure"]["temporal_cache"] and res.info["temporal_cache"]["variant"] in ("tib", "fp")
    ours = _x0_error(res.denoiser, ev, ref)
    assert ours < 0.85 * naive, (ours, naive)
    assert all(m.a_quant.mode == "quant" for m in quant_layers(res.net).values())
    # final-network contract: every weight on its grid; the structure (with the cache) rebuilds the net
    assert all(torch.equal(m.w_quant(m.layer.weight), m.layer.weight) for m in quant_layers(res.net).values())
    net = rebuild_quantized_net(res.net.config, 4, 8, res.info["structure"], res.net.state_dict())
    x, t = ev.x[5].double(), ev.t[5]
    with torch.no_grad():
        assert torch.equal(QuantDenoiser(net, den, step_times=traj.t)(x, t, **ev.cond), res.denoiser(x, t, **ev.cond))
