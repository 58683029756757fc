"""Attention-matmul quantization (issue 9): the UNet routes attention through ``ScaledDotProductAttention``;
``quantize_attention`` swaps it for Q-Diffusion's fake-quantized q, k, v and softmax probabilities.

Measured on digits_unet (attention quantizers only, min/max ranges from 320 trajectory inputs, relative L2
error of x0_hat vs full precision averaged over the 20 DDIM steps of 32 fresh trajectories): A4 0.028,
A6 0.0060, A8 0.0015, A10 0.00038 (about 4x per 2 bits, the 1/2^b of a uniform grid); A4 with 16-bit
softmax 0.017; A4 with one (Delta, z) set per sampling step 0.022.
"""

import copy

import pytest
import torch
from torch import nn

from diffusekit import zoo
from diffusekit.methods.quant import calibrate, quant_layers, quantize_model, set_act_mode, weight_bytes
from diffusekit.methods.quant.attention import QuantAttention, attention_layers, quantize_attention
from diffusekit.methods.quant.calibration import calibrate_denoiser, qdiffusion_calibration, record_trajectories
from diffusekit.methods.quant.pipeline import QuantDenoiser
from diffusekit.nets import ScaledDotProductAttention

STEPS = 20


@pytest.fixture(scope="module")
def digits():
    den = zoo.load("digits_unet")
    traj = record_trajectories(den, 64, (1, 8, 8), steps=STEPS, cond={"class_labels": torch.arange(64) % 10}, seed=0)
    ev = record_trajectories(den, 32, (1, 8, 8), steps=STEPS, cond={"class_labels": torch.arange(32) % 10}, seed=99)
    y = ev.cond["class_labels"]
    with torch.no_grad():
        ref = [den(ev.x[k].double(), ev.t[k], class_labels=y) for k in range(STEPS)]

    def err(q):
        """Relative L2 error of x0_hat vs full precision, averaged over the evaluation trajectory's steps."""
        with torch.no_grad():
            return sum(((q(ev.x[k].double(), ev.t[k], class_labels=y) - ref[k]).norm() / ref[k].norm()).item()
                       for k in range(STEPS)) / STEPS
    return den, traj, err


def test_module_is_parameter_free_and_equals_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    m = ScaledDotProductAttention()
    assert not list(m.parameters()) and not m.state_dict()
    ref = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
    assert torch.allclose(m(q, k, v), ref, atol=1e-6)


def test_swap_bit_identical_when_off_and_touches_only_attention(digits):
    den = digits[0]
    net = copy.deepcopy(den.net)
    before_types = {n: type(m) for n, m in net.named_modules()}
    before_state = net.state_dict()
    quantize_attention(net, 4)
    names = set(attention_layers(net))
    assert names == {n for n, t in before_types.items() if t is ScaledDotProductAttention}
    assert len(names) == 4  # down.2, mid, up.0, up.1
    after_types = {n: type(m) for n, m in net.named_modules()}
    changed = {n for n in after_types if after_types[n] is not before_types.get(n)}
    assert all(any(n == a or n.startswith(a + ".") for a in names) for n in changed)
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before_state.items())
    assert all(any(k.startswith(a + ".") for a in names) for k in set(state) - set(before_state))
    set_act_mode(net, "off")
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(16, 1, 8, 8, generator=g), torch.rand(16, generator=g) * 900, torch.arange(16) % 10
    with torch.no_grad():
        assert torch.equal(net(x, t, class_labels=y), den.net(x, t, class_labels=y))


def test_error_falls_as_bits_rise_and_calibrate_sets_all_ranges(digits):
    den, traj, err = digits
    cs = qdiffusion_calibration(traj, num_steps=STEPS, per_step=16)
    errs = {}
    for bits in (4, 6, 8):
        q = copy.deepcopy(den)
        quantize_attention(q.net, bits)
        calibrate_denoiser(q, cs)
        errs[bits] = err(q)
    # about 4x per 2 bits measured (0.028, 0.0060, 0.0015)
    assert errs[6] < 0.5 * errs[4] and errs[8] < 0.5 * errs[6], errs
    assert errs[8] > 0  # really quantized
    q = copy.deepcopy(den)
    quantize_attention(q.net, 4, softmax_bits=16)
    calibrate_denoiser(q, cs)
    assert err(q) < 0.8 * errs[4]  # measured 0.017 vs 0.028: 4-bit probabilities are a large share

    # one calibrate call sets the layer quantizers and the attention quantizers of a quantized net
    q = copy.deepcopy(den)
    quantize_model(q.net, 8, 8)
    quantize_attention(q.net, 8)
    calibrate_denoiser(q, cs)
    for m in attention_layers(q.net).values():
        assert all(bool(aq.initialized.all()) for aq in m.activation_quantizers())
        assert m.p_quant.zero_point.item() == 0 and m.p_quant.scale.item() <= 1 / 255 + 1e-6
    assert quant_layers(q.net)
    wb = weight_bytes(q.net)
    assert wb["qparam_bytes"] > 0


def test_per_step_sets_follow_t(digits):
    den, traj, err = digits
    q = copy.deepcopy(den)
    quantize_attention(q.net, 4, act_steps=STEPS)
    lab = traj.cond["class_labels"][:16]

    def run(net, b):
        net(*den.net_inputs(b[0], b[1]), class_labels=lab)

    for k in range(STEPS):
        calibrate(q.net, lambda k=k: [(traj.x[k][:16], traj.t[k].expand(16))], step=k, run=run)
    qa = next(iter(attention_layers(q.net).values())).q_quant
    assert qa.scale.shape == (STEPS, 1) and bool(qa.initialized.all())
    assert qa.scale.detach().std() > 0  # the steps got different ranges
    per_step = err(QuantDenoiser(q.net, den, step_times=traj.t))
    single = copy.deepcopy(den)
    quantize_attention(single.net, 4)
    calibrate_denoiser(single, qdiffusion_calibration(traj, num_steps=STEPS, per_step=16))
    assert per_step < err(single)  # measured 0.022 vs 0.028


def test_bad_input():
    with pytest.raises(ValueError, match="ScaledDotProductAttention"):
        quantize_attention(nn.Sequential(nn.Linear(2, 2)), 8)
    net = quantize_attention(zoo.load("digits_unet").net, 8)
    with pytest.raises(ValueError, match="already"):
        quantize_attention(net, 8)
    with pytest.raises(ValueError, match="bit width"):
        QuantAttention(1)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(RuntimeError, match="not initialised"), torch.no_grad():
        net(torch.randn(2, 1, 8, 8, generator=g), torch.ones(2))
