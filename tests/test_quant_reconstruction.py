"""AdaRound and BRECQ block reconstruction (issue 9): the rounding variables start on the float weight, the baked
weights lie on the quantizer grid, and block reconstruction beats plain rounding on a foreign module and on the
shipped digits UNet at W4A8."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from diffusekit.methods.quant import calibrate, quant_layers, quantize_model, set_act_mode
from diffusekit.methods.quant.reconstruction import (AdaRoundQuantizer, adaround_beta, find_blocks,
                                                     reconstruct_blocks, rectified_sigmoid)


def _foreign_net(seed: int = 0) -> nn.Module:
    """A network diffusekit knows nothing about: block "0" is a nested conv stack, then a Linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))


def _data(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_rectified_sigmoid_and_beta_schedule():
    v = torch.linspace(-20, 20, 1001)
    h = rectified_sigmoid(v)
    assert float(h.min()) == 0.0 and float(h.max()) == 1.0  # stretched past [0, 1], then clipped
    assert abs(float(rectified_sigmoid(torch.zeros(1))) - 0.5) < 1e-7
    # beta: 20 through the 20 % warm-up, then linear to 2 at the last iteration
    assert adaround_beta(0, 100) == 20.0 and adaround_beta(19, 100) == 20.0
    assert adaround_beta(60, 100) == pytest.approx(11.0) and adaround_beta(100, 100) == pytest.approx(2.0)


def test_adaround_init_reproduces_the_fractional_part():
    torch.manual_seed(0)
    layer = nn.Linear(40, 24)
    net = quantize_model(nn.Sequential(layer), 4, None)
    wq = quant_layers(net)["0"].w_quant
    ada = AdaRoundQuantizer(wq, layer.weight)
    delta = wq.scale.detach()[:, None]
    w_div = layer.weight.detach() / delta
    frac = w_div - torch.floor(w_div)
    assert torch.allclose(ada.h(), frac, atol=1e-6, rtol=0)
    # soft weight = the float weight clipped to the representable range (the zero point's rounding can leave
    # the extreme weight up to Delta / 2 outside it); float32 holds integers up to 15 to ~1e-6 relative
    z = wq.zero_point.detach()[:, None]
    clipped = (torch.clamp(w_div + z, 0, 15) - z) * delta
    assert torch.allclose(ada(), clipped, atol=1e-5 * float(delta.max()), rtol=0)
    # by at most Delta / 2, and only weights within Delta of their row's min or max
    w = layer.weight.detach()
    gap = (clipped - w).abs()
    assert bool(torch.all(gap <= 0.5 * delta * (1 + 1e-4)))
    edge = (w >= w.amax(dim=1, keepdim=True) - delta) | (w <= w.amin(dim=1, keepdim=True) + delta)
    assert bool(torch.all(edge[gap > 1e-5 * delta]))
    # hard rounding at the start = round to nearest, i.e. the plain quantizer
    assert torch.equal(ada.hard_weight(), wq(layer.weight).detach())


def test_block_reconstruction_on_a_foreign_module_lowers_error_and_bakes_grid_weights():
    fp = _foreign_net()
    q = quantize_model(copy.deepcopy(fp), 3, None)
    nearest = copy.deepcopy(q)
    float_w = {n: m.layer.weight.detach().clone() for n, m in quant_layers(q).items()}
    x_cal, x_test = _data(256, 1), _data(256, 2)
    assert find_blocks(q) == ["0.0", "0.2", "3"]  # no known block type: one block per layer
    stats = reconstruct_blocks(q, fp, lambda: [(x_cal[i:i + 64],) for i in range(0, 256, 64)], blocks=["0", "3"],
                               iters=200, seed=0)
    assert list(stats) == ["0", "3"] and stats["0"]["layers"] == ["0.0", "0.2"]
    # measured block MSE (nearest -> reconstructed): "0" 1.19e-3 -> 0.93e-3, "3" 2.2e-4 -> 1.3e-4
    for name, s in stats.items():
        assert s["mse_after"] < 0.9 * s["mse_before"], (name, s)
    with torch.no_grad():
        err_ada = (q(x_test) - fp(x_test)).pow(2).mean().item()
        err_nearest = (nearest(x_test) - fp(x_test)).pow(2).mean().item()
    # measured on held-out inputs: 2.68e-4 nearest -> 1.91e-4 reconstructed (1.28e-4 on the calibration inputs)
    assert err_ada < 0.85 * err_nearest, (err_ada, err_nearest)
    flipped = 0
    for name, m in quant_layers(q).items():
        w = m.layer.weight.detach()
        assert torch.equal(m.w_quant(w), w), name  # exactly on the grid
        delta = m.w_quant.scale.detach().reshape(-1, *([1] * (w.dim() - 1)))
        lo = torch.floor(float_w[name] / delta) * delta
        # rounded down or up from the float weight, nothing else
        assert bool(torch.all(((w - lo).abs() < 1e-4 * delta) | ((w - lo - delta).abs() < 1e-4 * delta))), name
        flipped += int((w != quant_layers(nearest)[name].w_quant(float_w[name])).sum())
    assert flipped > 0  # some rounding decisions differ from round-to-nearest
    assert all(p.requires_grad for p in q.parameters() if p is not None and p.dim() > 1)  # flags restored


def test_learned_activation_steps_and_layer_loss_lower_block_error():
    fp = _foreign_net(1)
    x_cal = _data(256, 3)
    batches = lambda: [(x_cal[i:i + 64],) for i in range(0, 256, 64)]  # noqa: E731
    q = quantize_model(copy.deepcopy(fp), 8, 4)
    calibrate(q, batches)
    before = copy.deepcopy(q)
    stats = reconstruct_blocks(q, fp, batches, blocks=["0"], iters=200, adaround=False, learn_act=True,
                               lr_act=4e-3)
    assert stats["0"]["mse_after"] < 0.9 * stats["0"]["mse_before"], stats
    steps = [(m.a_quant.scale.item(), quant_layers(before)[n].a_quant.scale.item()) for n, m in quant_layers(q).items()
             if n.startswith("0.")]
    assert all(a != b for a, b in steps)  # only the block's activation steps moved ...
    assert quant_layers(q)["3"].a_quant.scale.item() == quant_layers(before)["3"].a_quant.scale.item()
    for n, m in quant_layers(q).items():  # ... and no weight did
        assert torch.equal(m.layer.weight, quant_layers(before)[n].layer.weight)
    # the per-layer term (EDA-DM's fine-grained reconstruction) with AdaRound: still lowers the block error
    q2 = quantize_model(copy.deepcopy(fp), 3, None)
    s2 = reconstruct_blocks(q2, fp, batches, blocks=["0"], iters=150, layer_loss_weight=0.8, qdrop_prob=0.5)
    assert s2["0"]["mse_after"] < s2["0"]["mse_before"], s2


def test_reconstruction_rejects_bad_input():
    fp = _foreign_net()
    q = quantize_model(copy.deepcopy(fp), 4, 8)
    batches = lambda: [(_data(8, 0),)]  # noqa: E731
    with pytest.raises(ValueError, match="nothing to learn"):
        reconstruct_blocks(q, fp, batches, adaround=False)
    with pytest.raises(ValueError, match="overlap"):
        reconstruct_blocks(q, fp, batches, blocks=["0", "0.0"])
    with pytest.raises(ValueError, match="not a submodule"):
        reconstruct_blocks(q, fp, batches, blocks=["nope"])
    with pytest.raises(ValueError, match="quantized layer"):
        reconstruct_blocks(fp, fp, batches)
    set_act_mode(q, "off")
    with pytest.raises(ValueError, match="learn_act"):
        reconstruct_blocks(q, fp, batches, learn_act=True, adaround=False)
    with pytest.raises(ValueError, match="no calibration batch"):
        reconstruct_blocks(q, fp, lambda: [])


def test_digits_unet_w4a8_block_reconstruction_beats_plain_rounding():
    """W4A8 digits UNet, min/max weights and activation ranges, 160 trajectory samples (10 evenly spaced steps of
    16 DDIM-20 trajectories), AdaRound + BRECQ with activations quantized, 60 iterations per block.

    Measured: every one of the 13 blocks' output MSE drops (ratios 0.67 embed ... 0.93 conv_in, e.g. up.2.conv
    0.244 -> 0.193), and the network output (eps) MSE on fresh trajectories 2.76e-3 -> 2.11e-3."""
    from diffusekit import zoo
    from diffusekit.methods.quant.calibration import qdiffusion_calibration, record_trajectories

    den = zoo.load("digits_unet")
    n = 16
    traj = record_trajectories(den, n, (1, 8, 8), steps=20, cond={"class_labels": torch.arange(n) % 10}, seed=0)
    cal = qdiffusion_calibration(traj, num_steps=10)
    ev = qdiffusion_calibration(record_trajectories(den, 16, (1, 8, 8), steps=20,
                                                    cond={"class_labels": torch.arange(16) % 10}, seed=5), 20)

    def batches(cs):
        return lambda: [lambda net, x=x, t=t, c=c: net(*den.net_inputs(x, t), **c) for x, t, c in cs.batches(80)]

    net = quantize_model(copy.deepcopy(den.net), 4, 8)
    calibrate(net, batches(cal), run=lambda m, item: item(m))
    nearest = copy.deepcopy(net)
    stats = reconstruct_blocks(net, den.net, batches(cal), iters=60, seed=0)
    assert {"embed", "down.0.res", "mid1", "up.4.res", "conv_out"} <= set(stats)
    assert all(s["mse_after"] < s["mse_before"] for s in stats.values()), stats
    with torch.no_grad():
        x_in, t_in = den.net_inputs(ev.x, ev.t)
        ref = den.net(x_in, t_in, **ev.cond)
        err = {k: (m(x_in, t_in, **ev.cond) - ref).pow(2).mean().item() for k, m in
               (("nearest", nearest), ("brecq", net))}
    assert err["brecq"] < 0.85 * err["nearest"], err
