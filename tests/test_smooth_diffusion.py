"""Smooth Diffusion (arXiv 2312.04410): the step-wise variation is the Jacobian-transpose-vector product, the loss
reduces to L_simple at lambda_reg = 0, the running mean and lazy weighting follow their equations, LoRA starts at
the base model and trains only its factors, DDIM inversion is faithful with the exact GMM denoiser, slerp's
endpoint and norm properties, and the quick bench's direction (the regulariser makes interpolation smoother)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusekit.bench import run_bench
from diffusekit.core import GaussianMixture, NetworkDenoiser, VPDiscrete, grid_uniform
from diffusekit.core.predictions import x0_from_prediction
from diffusekit.methods.smooth_diffusion import (SmoothDiffusionLoss, add_lora, consecutive_distances, ddim_invert,
                                                 interpolation_frames, inversion_mse, lora_parameters, slerp,
                                                 slerp_frames, smoothness_stats, step_variation, variation_probe)
from diffusekit.nets import build_net
from diffusekit.samplers import sample_ddim
from diffusekit.training.losses import DiffusionLoss

SCHED = VPDiscrete.named("linear", 1000)


def tiny_net(num_classes=None, seed=0):
    torch.manual_seed(seed)
    net = build_net({"name": "mlp", "dim": 6, "hidden": 32, "depth": 2, "time_embed_dim": 16,
                     "num_classes": num_classes})
    with torch.no_grad():  # the output layer is zero-initialised; give the network a non-trivial Jacobian
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def test_step_variation_is_the_jacobian_transpose_vector_product():
    net = tiny_net()
    den = NetworkDenoiser(net, SCHED, "eps")
    g = torch.Generator().manual_seed(1)
    b = 5
    x0 = torch.randn(b, 6, generator=g, dtype=torch.float64)
    net.double()
    t = SCHED.t_of_timestep(torch.tensor([3, 100, 400, 700, 999]))
    y = variation_probe(x0.shape, SCHED.sigma(t), g, dtype=torch.float64)
    # the probe's scale: sigma_t / sqrt(D) per example
    z = y * math.sqrt(6) / SCHED.sigma(t)[:, None]
    assert float(z.std()) == pytest.approx(1.0, abs=0.5)

    def x0_hat_of(eps):
        x_t = SCHED.add_noise(x0, t, eps)
        return x0_from_prediction(den.raw(x_t, t), x_t, t, SCHED, "eps")

    eps = torch.randn(b, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    v = step_variation(x0_hat_of(eps), eps, y)
    _, jty = torch.autograd.functional.vjp(x0_hat_of, eps.detach(), y)
    torch.testing.assert_close(v, jty.norm(dim=1), rtol=1e-10, atol=1e-12)
    # the eps-prediction identity J = (sigma/alpha)(I - sigma d eps_theta / d x_t) makes v nontrivial
    trivial = (SCHED.sigma(t) / SCHED.alpha(t)) * y.norm(dim=1)
    assert not torch.allclose(v, trivial, rtol=1e-3)
    # create_graph: v is differentiable in the network's weights
    v.sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert len(grads) > len(list(net.parameters())) // 2 and any(float(gr.abs().sum()) > 0 for gr in grads)


def test_lambda_zero_is_exactly_l_simple_and_lambda_adds_the_penalty():
    net = tiny_net(num_classes=3)
    x0 = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 3
    plain = DiffusionLoss(SCHED, "eps", label_dropout=0.2)(net, (x0, labels), torch.Generator().manual_seed(5))
    smooth0 = SmoothDiffusionLoss(SCHED, "eps", lambda_reg=0.0, label_dropout=0.2)
    got = smooth0(net, (x0, labels), torch.Generator().manual_seed(5))
    assert torch.equal(got, plain)
    # lambda > 0: same L_simple part (same draws), plus lambda (v - a_bar)^2 >= 0, with a nonzero spread
    smooth = SmoothDiffusionLoss(SCHED, "eps", lambda_reg=2.0, label_dropout=0.2, init_mean="zero")
    reg = smooth(net, (x0, labels), torch.Generator().manual_seed(5))
    extra = (reg - plain).detach()
    assert bool((extra >= -1e-7).all()) and float(extra.max()) > 1e-4
    # a_bar started at 0, so after one call it is 0.01 mean(v)
    assert smooth.mean_variation.item() == pytest.approx(0.01 * smooth.last["mean_v"], rel=1e-5)
    torch.testing.assert_close(extra.mean(), torch.tensor(2.0 * smooth.last["L_reg"]), rtol=1e-4, atol=1e-7)


def test_running_mean_update_and_lazy_weighting():
    loss = SmoothDiffusionLoss(SCHED, init_mean="zero")
    assert loss.update_mean(torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(0.02)
    assert loss.update_mean(torch.tensor([4.0])).item() == pytest.approx(0.02 + 0.01 * (4.0 - 0.02))
    first = SmoothDiffusionLoss(SCHED, init_mean="first_batch", decay=0.1)
    assert first.mean_variation is None
    assert first.update_mean(torch.tensor([1.0, 3.0])).item() == pytest.approx(2.0)
    assert first.update_mean(torch.tensor([4.0])).item() == pytest.approx(2.2)
    state = first.state_dict()
    again = SmoothDiffusionLoss(SCHED, decay=0.1)
    again.load_state_dict(state)
    assert again.mean_variation.item() == pytest.approx(2.2) and again.calls == first.calls
    # lazy: every 2nd call, on the first 3 of 8 examples, weighted by k B / b; the others get plain L_simple
    net = tiny_net()
    x0 = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    lazy = SmoothDiffusionLoss(SCHED, lambda_reg=1.0, reg_every=2, reg_batch=3)
    means = []
    for call in range(4):
        out = lazy(net, (x0,), torch.Generator().manual_seed(call))
        plain = SmoothDiffusionLoss(SCHED, lambda_reg=0.0)(net, (x0,), torch.Generator().manual_seed(call))
        if call % 2:
            torch.testing.assert_close(out, plain)
        else:
            torch.testing.assert_close(out[3:], plain[3:])
            penalty = (out[:3] - plain[:3]).detach() / (2 * 8 / 3)
            assert float(penalty.mean()) == pytest.approx(lazy.last["L_reg"], rel=1e-4)
        means.append(lazy.mean_variation.item())
    assert means[0] == means[1] and means[2] == means[3] and means[1] != means[2]


def test_bad_options_are_refused():
    for kwargs in ({"lambda_reg": -1.0}, {"decay": 0.0}, {"reg_every": 0}, {"reg_batch": 0},
                   {"init_mean": "ones"}):
        with pytest.raises(ValueError):
            SmoothDiffusionLoss(SCHED, **kwargs)
    with pytest.raises(ValueError, match="must require grad"):
        step_variation(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))


def test_lora_starts_at_the_base_and_trains_only_its_factors():
    torch.manual_seed(0)
    net = build_net({"name": "unet", "in_channels": 1, "base_channels": 8, "channel_mult": [1, 2],
                     "num_res_blocks": 1, "attention_resolutions": [4], "num_classes": 10})
    x, t, c = torch.randn(3, 1, 8, 8), torch.tensor([10.0, 500.0, 900.0]), torch.tensor([1, 2, 3])
    before = net(x, t, class_labels=c)
    names = add_lora(net, 8)
    assert names and torch.equal(net(x, t, class_labels=c), before)
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(net)}
    loss = SmoothDiffusionLoss(SCHED)(net, (x, c), torch.Generator().manual_seed(0))
    loss.mean().backward()
    assert all(p.grad is not None for p in trainable)
    assert sum(float(p.grad.abs().sum()) for p in lora_parameters(net)[1::2]) > 0  # the B factors move first


def test_ddim_inversion_then_generation_reconstructs_with_the_exact_gmm_denoiser():
    g = torch.Generator().manual_seed(0)
    means = 1.2 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    a = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    mixture = GaussianMixture(means, 0.1 * a @ a.transpose(1, 2) + 0.1 * torch.eye(4, dtype=torch.float64))
    den = mixture.denoiser(SCHED)
    x0 = mixture.sample(64, g)
    errs = {}
    for steps in (20, 500):
        ts = grid_uniform(SCHED, steps, t_end=0.0)
        x_T = ddim_invert(den, x0, ts)
        errs[steps] = float(((sample_ddim(den, x_T, ts) - x0) ** 2).mean())
    assert errs[500] < 0.1 * errs[20] and errs[500] < 1e-3
    # the inverted latents look like the prior (unit variance), not like the data
    assert float(x_T.std()) == pytest.approx(1.0, abs=0.25)
    # the interpolation path starts and ends at the reconstructions of its two images
    ts = grid_uniform(SCHED, 200, t_end=0.0)
    frames, latents = interpolation_frames(den, x0[:8], x0[8:16], ts, frames=5)
    assert frames.shape == (8, 5, 4) and latents.shape == (2, 8, 4)
    torch.testing.assert_close(frames[:, 0], sample_ddim(den, latents[0], ts))
    assert float(((frames[:, -1] - x0[8:16]) ** 2).mean()) < 1e-2
    assert inversion_mse(den, x0[:8], ts) < 1e-2


def test_slerp_endpoints_norm_and_fallback():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(4, 3, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    torch.testing.assert_close(slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(slerp(z0, z1, 1.0), z1)
    z1n = z1 * (z0.flatten(1).norm(dim=1) / z1.flatten(1).norm(dim=1))[:, None, None]
    frames = slerp_frames(z0, z1n, 16)
    assert frames.shape == (4, 16, 3, 5)
    torch.testing.assert_close(frames.flatten(2).norm(dim=2), z0.flatten(1).norm(dim=1)[:, None].expand(4, 16))
    # equal angular steps: consecutive frames equally far apart
    d = consecutive_distances(frames)
    torch.testing.assert_close(d, d[:, :1].expand_as(d), rtol=1e-4, atol=1e-6)
    assert smoothness_stats(d)["std"] < 1e-5
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(slerp(e0, e1, 0.5), torch.tensor([[1.0, 1.0]]) / math.sqrt(2))
    # parallel latents: linear interpolation
    torch.testing.assert_close(slerp(e0, 3 * e0, 0.5), 2 * e0)
    with pytest.raises(ValueError):
        slerp_frames(z0, z1, 1)


def test_quick_bench_regulariser_smooths_interpolation(tmp_path):
    result = run_bench("smooth", out=tmp_path, quick=True)
    arms = result["arms"]
    control, smooth = arms["lambda=0"], arms["lambda=1"]
    # the paper's claim: more even interpolation steps (lower std of consecutive-frame distances)
    assert smooth["pixel"]["std"] < control["pixel"]["std"]
    # what L_reg optimises directly: a smaller relative spread of the step-wise variation on held-out digits
    assert smooth["variation"]["std_over_mean"] < control["variation"]["std_over_mean"]
    assert (tmp_path / "smooth.png").exists() and (tmp_path / "smooth.json").exists()
