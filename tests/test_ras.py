"""RAS (Liu et al. 2025, arXiv 2502.10389): token-subset DiT forward with a K/V cache, equivalence with plain sampling
at r = 1, dense reset steps that refresh the cache, and the quick bench's direction."""

from __future__ import annotations

import pytest
import torch

from diffusekit.core import CFGDenoiser, FlowSchedule, NetworkDenoiser, VPDiscrete, make_grid
from diffusekit.nets import build_net
from diffusekit.samplers import sample_ddim, sample_euler
from diffusekit.samplers.ras import dit_token_forward, patch_tokens, sample_ras


def _dit(seed: int = 0, **kw):
    torch.manual_seed(seed)
    net = build_net({"name": "dit", "hidden_size": 32, "depth": 2, "num_heads": 2, "num_classes": 10, **kw})
    with torch.no_grad():  # adaLN-Zero starts as the identity: give every zero-initialised layer weights
        for p in net.parameters():
            if p.ndim > 1 and p.abs().max() == 0:
                p.normal_(0, 0.05)
    return net.eval()


@pytest.mark.parametrize("extra", [{}, {"dtr_beta": 0.5}, {"dims": 1, "image_size": 16, "in_channels": 2}])
def test_token_forward_with_every_token_active_equals_the_dit(extra):
    net = _dit(**extra)
    shape = (3, net.in_channels) + (net.image_size,) * net.dims
    x, t, y = torch.randn(shape), torch.tensor([5.0, 400.0, 990.0]), torch.tensor([1, 4, 10])
    every = torch.arange(net.num_tokens).expand(3, -1)
    with torch.no_grad():
        full = net(x, t, y)
        tokens = dit_token_forward(net, x, t, every, [], class_labels=y)
        assert torch.allclose(net.unpatchify(tokens), full, atol=1e-6, rtol=0)
        # a subset attending over a cache filled at the same (x, t) gives the full forward's tokens exactly
        cache = []
        dit_token_forward(net, x, t, every, cache, class_labels=y)
        subset = torch.tensor([[0, 3, 5], [1, 2, 7], [4, 6, 7]])
        part = dit_token_forward(net, x, t, subset, cache, class_labels=y)
    full_tokens = torch.gather(tokens, 1, subset[:, :, None].expand(-1, -1, tokens.shape[-1]))
    assert torch.allclose(part, full_tokens, atol=1e-6, rtol=0)
    assert torch.equal(net.unpatchify(patch_tokens(net, x)), x)  # patch_tokens inverts unpatchify's grid


def test_token_forward_with_cross_attention_context():
    net = _dit(context_dim=8)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([100.0, 700.0])
    ctx, mask = torch.randn(2, 5, 8), torch.tensor([[True] * 5, [True, True, False, False, False]])
    every = torch.arange(net.num_tokens).expand(2, -1)
    with torch.no_grad():
        full = net(x, t, context=ctx, context_mask=mask)
        tokens = dit_token_forward(net, x, t, every, [], context=ctx, context_mask=mask)
    assert torch.allclose(net.unpatchify(tokens), full, atol=1e-6, rtol=0)


def test_ratio_one_is_plain_sampling():
    net = _dit()
    y = torch.tensor([0, 3, 7])
    x_T = torch.randn(3, 1, 8, 8)
    vp = VPDiscrete.named("linear", 1000)
    den = NetworkDenoiser(net, vp, "eps")
    ts = make_grid("trailing", vp, 8)
    with torch.no_grad():
        assert torch.allclose(sample_ras(den, x_T, ts, sample_ratio=1.0, cond={"class_labels": y}),
                              sample_ddim(den, x_T, ts, cond={"class_labels": y}), atol=1e-6, rtol=0)
        assert torch.allclose(sample_ras(den, x_T, ts, sample_ratio=1.0, guidance=2.0, cond={"class_labels": y}),
                              sample_ddim(CFGDenoiser(den, 2.0), x_T, ts, cond={"class_labels": y}), atol=1e-6, rtol=0)
        flow = FlowSchedule()
        den_f = NetworkDenoiser(net, flow, "velocity")
        ts_f = make_grid("uniform", flow, 8)
        euler = sample_euler(den_f, x_T, ts_f, cond={"class_labels": y})
        assert torch.allclose(sample_ras(den_f, x_T, ts_f, sample_ratio=1.0, cond={"class_labels": y}), euler,
                              atol=1e-6, rtol=0)
        # DDIM(eta = 0) on the flow schedule is the same Euler step
        assert torch.allclose(sample_ras(den_f, x_T, ts_f, sample_ratio=1.0, step="ddim", cond={"class_labels": y}),
                              euler, atol=1e-5, rtol=0)


def test_reset_steps_refresh_the_kv_cache_and_ras_steps_compute_fewer_tokens():
    net = _dit()
    vp = VPDiscrete.named("linear", 1000)
    den = NetworkDenoiser(net, vp, "eps")
    ts = make_grid("trailing", vp, 10)
    y = torch.tensor([2, 5])
    seen = {}

    def keep(info):
        seen[info["i"]] = info["x0_hat"]

    xs = {}
    stats = {}
    with torch.no_grad():
        sample_ras(den, torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), ts, sample_ratio=0.5,
                   start_step=3, reset_steps=(6,), cond={"class_labels": y}, stats=stats,
                   callback=lambda info: (keep(info), xs.__setitem__(info["i"] + 1, info["x"])))
        x_at_reset = xs[6]
        fresh = den(x_at_reset, ts[6], class_labels=y)  # a dense forward from scratch at the reset step
        x_at_ras = xs[7]
        dense_at_ras = den(x_at_ras, ts[7], class_labels=y)
    assert stats["dense_steps"] == [0, 1, 2, 6]
    assert stats["active_per_step"] == [16, 16, 16, 8, 8, 8, 16, 8, 8, 8]
    assert abs(stats["token_fraction"] - (4 * 16 + 6 * 8) / 160) < 1e-12
    assert torch.allclose(seen[6], fresh, atol=1e-5, rtol=0)  # reset step: every token, fresh K/V
    assert not torch.allclose(seen[7], dense_at_ras, atol=1e-3)  # RAS step: cached tokens and stale K/V


def test_selection_caches_low_or_high_score_tokens():
    net = _dit()
    vp = VPDiscrete.named("linear", 1000)
    den = NetworkDenoiser(net, vp, "eps")
    ts = make_grid("trailing", vp, 6)
    x_T = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        low = sample_ras(den, x_T, ts, sample_ratio=0.5, start_step=2, cache="low")
        high = sample_ras(den, x_T, ts, sample_ratio=0.5, start_step=2, cache="high")
        dense = sample_ras(den, x_T, ts, sample_ratio=1.0)
    assert not torch.allclose(low, high)
    assert not torch.allclose(low, dense)


def test_bad_arguments_are_rejected():
    unet = build_net({"name": "unet", "in_channels": 1, "base_channels": 8, "channel_mult": [1],
                      "num_res_blocks": 1, "attention_resolutions": []})
    vp = VPDiscrete.named("linear", 1000)
    ts = make_grid("trailing", vp, 4)
    with pytest.raises(ValueError, match="DiT"):
        sample_ras(NetworkDenoiser(unet, vp, "eps"), torch.randn(1, 1, 8, 8), ts)
    den = NetworkDenoiser(_dit(), vp, "eps")
    for bad in ({"sample_ratio": 0.0}, {"metric": "max"}, {"cache": "middle"}, {"start_step": 0}):
        with pytest.raises(ValueError):
            sample_ras(den, torch.randn(1, 1, 8, 8), ts, **bad)


def test_ras_quick_bench_saves_compute_with_bounded_error(tmp_path):
    from diffusekit.bench import run_bench

    r = run_bench("ras", out=tmp_path, quick=True)
    rows, var = r["settings"], r["dense_sample_variance"]
    half = rows["ras0.5_low"]
    assert half["token_fraction"] < 0.8 and half["flops_per_sample"] < 0.85 * rows["dense"]["flops_per_sample"]
    assert half["mse_to_dense"] < 0.25 * var  # close to the dense sample from the same noise
    assert rows["ras0.25_low"]["mse_to_dense"] > rows["ras0.75_low"]["mse_to_dense"]  # less compute, more error
    assert rows["dense"]["mse_to_dense"] == 0.0
