"""PTQ4DM and Q-Diffusion pipelines (issue 9) on the shipped digits UNet: PTQ4DM calibrates where it says
(t ~ N(0.4 T, (0.4 T)^2)) with its quantizer settings, Q-Diffusion at W4A8 beats naive min/max on x0 and eps
error along DDIM-20 trajectories, and every result rebuilds from its declared structure."""

from __future__ import annotations

import pytest
import torch

from diffusekit.methods.quant import quant_layers
from diffusekit.methods.quant.calibration import ptq4dm_calibration, record_trajectories
from diffusekit.methods.quant.pipeline import calibration_trajectories, get_method, quantize_minmax
from diffusekit.methods.quant.ptq import quantize_ptq4dm, quantize_qdiffusion


@pytest.fixture(scope="module")
def digits():
    from diffusekit import zoo

    den = zoo.load("digits_unet")
    traj = calibration_trajectories(den, 32, seed=0)  # DDIM, uniform grid, 20 steps
    n = 32
    ev = record_trajectories(den, n, (1, 8, 8), steps=20, cond={"class_labels": torch.arange(n) % 10}, seed=9)
    return den, traj, ev


def _errors(den, q, ev) -> dict:
    """x0_hat and eps_hat MSE vs the full-precision model on fresh DDIM-20 trajectory inputs, averaged over steps."""
    c = ev.cond["class_labels"]
    x0 = eps = 0.0
    with torch.no_grad():
        for k in range(ev.num_steps):
            x, t = ev.x[k].double(), ev.t[k]
            x0 += (q(x, t, class_labels=c) - den(x, t, class_labels=c)).pow(2).mean().item()
            eps += (q.eps(x, t, class_labels=c) - den.eps(x, t, class_labels=c)).pow(2).mean().item()
    return {"x0": x0 / ev.num_steps, "eps": eps / ev.num_steps}


def test_ptq4dm_calibrates_at_its_stated_times_with_its_quantizer(digits):
    den, traj, _ = digits
    before = {k: v.clone() for k, v in den.net.state_dict().items()}
    res = quantize_ptq4dm(den, 4, 8, traj=traj, seed=3)
    assert get_method("ptq4dm") is quantize_ptq4dm
    cal = res.info["calibration"]
    # NDTC: one sample per trajectory at t ~ N(0.4 T, (0.4 T)^2), T = 1 here, snapped to the 20-step grid:
    # median 0.4 T (not the mirrored 0.6 T of the reference's index, nor the uniform grid's 0.5 T)
    assert cal["method"] == "ptq4dm" and cal["samples"] == traj.num_samples
    expected = ptq4dm_calibration(traj, seed=3).t
    assert cal["t_quantiles"]["median"] == pytest.approx(float(torch.quantile(expected, 0.5)))
    assert abs(cal["t_quantiles"]["median"] - 0.4) < 0.1, cal
    assert cal["t_quantiles"]["q25"] < 0.3 and cal["t_quantiles"]["q75"] < 0.75, cal
    layers = quant_layers(res.net)
    first, last = "embed.mlp.0", "conv_out"
    assert (layers[first].w_quant.bits, layers[first].a_quant.bits) == (8, 8)
    assert (layers[last].w_quant.bits, layers[last].a_quant.bits) == (8, 8)
    inner = [m for n, m in layers.items() if n not in (first, last)]
    assert all(m.w_quant.bits == 4 and m.a_quant.bits == 8 and not m.a_quant.symmetric for m in inner)
    # MSE (L2.4) weight ranges: clipped inside min/max for most channels at 4 bits
    w = layers["mid1.conv1"]
    span = (w.w_quant.scale * (w.w_quant.q_max - w.w_quant.q_min)).detach()
    full = (w.layer.weight.amax(dim=(1, 2, 3)) - w.layer.weight.amin(dim=(1, 2, 3))).detach()
    assert (span < 0.99 * full).float().mean() > 0.5
    assert res.info["structure"] == {"split": [], "quantize_model": {"weight_method": "mse", "first_last_bits": 8},
                                     "attention": None, "temporal_cache": False}
    assert res.finetune_seconds == 0.0 and res.calib_seconds > 0  # the released recipe: no reconstruction
    assert all(torch.equal(v, before[k]) for k, v in den.net.state_dict().items())  # input untouched


def test_ptq4dm_optional_brecq_lowers_eps_error(digits):
    """PTQ4DM's optional BRECQ + AdaRound (off in the released recipe). Measured at W4A8 (32 trajectories, 50
    iterations per block): eps MSE 2.20e-3 -> 1.67e-3; x0 MSE unchanged (1.158 -> 1.154), as the noisiest steps
    dominate it and reconstruction with fixed activation ranges does not reach them."""
    den, traj, ev = digits
    plain = quantize_ptq4dm(den, 4, 8, traj=traj)
    recon = quantize_ptq4dm(den, 4, 8, traj=traj, brecq=True, iters=50)
    e_plain, e_recon = _errors(den, plain.denoiser, ev), _errors(den, recon.denoiser, ev)
    assert e_recon["eps"] < 0.85 * e_plain["eps"], (e_recon, e_plain)
    assert recon.finetune_seconds > 0 and recon.info["reconstruction"]["iters"] == 50
    assert recon.info["structure"] == plain.info["structure"]
    for name, m in quant_layers(recon.net).items():
        assert torch.equal(m.w_quant(m.layer.weight), m.layer.weight), name


@pytest.fixture(scope="module")
def qdiff_w4a8(digits):
    den, traj, _ = digits
    return quantize_qdiffusion(den, 4, 8, traj=traj, num_steps=10, iters=50, seed=0)


def test_qdiffusion_w4a8_beats_naive_minmax(digits, qdiff_w4a8):
    """W4A8 digits UNet, 32 calibration trajectories (Q-Diffusion: 10 evenly spaced steps x 32, 50 iterations per
    block and stage), errors on 32 fresh DDIM-20 trajectories. Measured: x0 MSE 1.44 vs 2.39 for min/max, eps MSE
    1.38e-3 vs 2.80e-3 (the reference's signed activation grid: 1.53, 1.41e-3; with it and only 10 activation
    iterations instead of 50: 1.91, 1.58e-3)."""
    den, traj, ev = digits
    naive = _errors(den, quantize_minmax(den, 4, 8, traj=traj).denoiser, ev)
    qd = _errors(den, qdiff_w4a8.denoiser, ev)
    assert qd["x0"] < 0.9 * naive["x0"], (qd, naive)
    assert qd["eps"] < 0.75 * naive["eps"], (qd, naive)
    info = qdiff_w4a8.info
    assert info["structure"]["split"] == ["skip"] and info["structure"]["attention"] == {"act_symmetric": False}
    assert qdiff_w4a8.finetune_seconds > 0 and qdiff_w4a8.calib_seconds > 0
    for name, m in quant_layers(qdiff_w4a8.net).items():  # AdaRound baked on the grid
        assert torch.equal(m.w_quant(m.layer.weight), m.layer.weight), name


def test_qdiffusion_result_rebuilds_from_its_structure(digits, qdiff_w4a8):
    """The final-network contract: fp net -> split_concat_convs -> quantize_model -> quantize_attention, as
    declared in info["structure"], then a strict load_state_dict reproduces the quantized net exactly."""
    import copy

    from diffusekit.methods.quant import quantize_model, split_concat_convs
    from diffusekit.methods.quant.attention import quantize_attention

    den, _, ev = digits
    st = qdiff_w4a8.info["structure"]
    net = copy.deepcopy(den.net)
    split_concat_convs(net, st["split"])
    quantize_model(net, 4, 8, **st["quantize_model"])
    quantize_attention(net, 8, **st["attention"])
    net.load_state_dict(qdiff_w4a8.net.state_dict(), strict=True)
    x_in, t_in = den.net_inputs(ev.x[5], ev.t[5].expand(ev.x.shape[1]))
    with torch.no_grad():
        assert torch.equal(net(x_in, t_in, **ev.cond), qdiff_w4a8.net(x_in, t_in, **ev.cond))


def test_pipelines_reject_bad_input(digits):
    den, traj, _ = digits
    with pytest.raises(ValueError, match="wbits"):
        quantize_qdiffusion(den, 1, 8, traj=traj)
    with pytest.raises(ValueError, match="Trajectories"):
        quantize_ptq4dm(den, 4, 8, traj=None)
    with pytest.raises(ValueError, match="iters"):
        quantize_ptq4dm(den, 4, 8, traj=traj, brecq=True, iters=0)
