"""AFA (arXiv 2405.17082): exact equivalences of the block-wise ensemble, frozen experts, and the direction of the
effect in the quick bench."""

import pytest
import torch
import torch.nn.functional as F

from diffusekit.bench import run_bench
from diffusekit.core import VPDiscrete
from diffusekit.data import load_dataset
from diffusekit.methods.afa import AFAEnsemble, OutputAverage, aggregation_points, average_weights, train_afa
from diffusekit.nets import UNet
from diffusekit.nets.unet import _Level

CONFIG = {"in_channels": 1, "base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
          "attention_resolutions": (4,), "num_heads": 2, "num_classes": 10}


def _expert(seed: int) -> UNet:
    torch.manual_seed(seed)
    net = UNet(**CONFIG)
    with torch.no_grad():  # the zero-initialised output conv would make every expert output 0
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval()


def _inputs(batch: int = 5):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 1, 8, 8, generator=g), torch.rand(batch, generator=g) * 999,
            torch.randint(0, 11, (batch,), generator=g))


def _uniform_feature_average(experts, x, t, labels):
    """Reference: the experts run block by block and every block output is replaced by the plain mean."""
    mean = lambda fs: torch.stack(fs).mean(0)  # noqa: E731
    embs = [F.silu(e.embed(t, labels)) for e in experts]
    run = lambda b, h, emb: b(h, emb) if isinstance(b, _Level) else b(h)  # noqa: E731
    h = mean([e.conv_in(x) for e in experts])
    skips = [h]
    for i in range(len(experts[0].down)):
        h = mean([run(e.down[i], h, emb) for e, emb in zip(experts, embs)])
        skips.append(h)
    h = mean([e.mid2(e.mid_attn(e.mid1(h, emb)), emb) for e, emb in zip(experts, embs)])
    for i, block in enumerate(experts[0].up):
        inp = torch.cat([h, skips.pop()], 1) if isinstance(block, _Level) else h
        feats = [run(e.up[i], inp, emb) for e, emb in zip(experts, embs)]
        h = mean(feats) if i < len(experts[0].up) - 1 else None
    return mean([e.conv_out(F.silu(e.out_norm(f))) for e, f in zip(experts, feats)])


@torch.no_grad()
def test_init_is_the_uniform_blockwise_feature_average():
    experts = [_expert(s) for s in range(3)]
    ens = AFAEnsemble(experts, hidden=8, attention_heads=2)
    x, t, labels = _inputs()
    out, maps = ens(x, t, labels, return_weights=True)
    assert len(maps) == len(aggregation_points(experts[0])) == len(ens.aggregators)
    for a in maps:
        torch.testing.assert_close(a, torch.full_like(a, 1 / 3), atol=0, rtol=0)
    torch.testing.assert_close(out, _uniform_feature_average(experts, x, t, labels), atol=1e-6, rtol=1e-5)
    # feature averaging is not output averaging (the experts differ)
    assert (out - OutputAverage(experts)(x, t, labels)).abs().max() > 1e-3


@torch.no_grad()
def test_identical_experts_give_the_single_expert():
    e = _expert(0)
    x, t, labels = _inputs()
    assert torch.equal(AFAEnsemble([e, e], hidden=8)(x, t, labels), e(x, t, labels))  # weights 1/2: exact
    # weights 1/3 round in float32; the rounding compounds over the 10 aggregation points (~20 ulp)
    torch.testing.assert_close(AFAEnsemble([e, e, e], hidden=8)(x, t, labels), e(x, t, labels), atol=1e-5, rtol=1e-5)
    assert torch.equal(average_weights([e, e])(x, t, labels), e(x, t, labels))
    a, b = _expert(1), _expert(2)
    merged = average_weights([a, b]).state_dict()
    for k, v in a.state_dict().items():
        torch.testing.assert_close(merged[k], (v + b.state_dict()[k]) / 2, atol=0, rtol=0)


@torch.no_grad()
def test_one_hot_aggregators_select_one_expert_exactly():
    experts = [_expert(s) for s in range(3)]
    x, t, labels = _inputs()
    for k in range(3):
        ens = AFAEnsemble(experts, hidden=8)
        for agg in ens.aggregators:  # logits -inf except for expert k: softmax is exactly one-hot
            agg.conv_out.bias.copy_(torch.where(torch.arange(3) == k, 0.0, float("-inf")))
        out, maps = ens(x, t, labels, return_weights=True)
        assert torch.equal(out, experts[k](x, t, labels))
        assert all(torch.equal(a[:, k], torch.ones_like(a[:, k])) for a in maps)


def test_only_the_aggregators_learn():
    experts = [_expert(s) for s in range(2)]
    ens = AFAEnsemble(experts, hidden=8)
    x, t, labels = _inputs(8)
    ens.train()
    assert not any(e.training for e in ens.experts)
    ens(x, t, labels).pow(2).mean().backward()
    assert all(p.grad is None for p in ens.experts.parameters())
    assert all(p.grad is not None for p in ens.trainable_parameters())
    before_experts = {k: v.clone() for k, v in ens.experts.state_dict().items()}
    before_aggs = [p.detach().clone() for p in ens.trainable_parameters()]
    data = load_dataset("digits", "train", n=64)
    history = train_afa(ens, (data.x, data.y), VPDiscrete.named("linear", 1000), steps=3, batch_size=16)
    assert len(history["loss"]) == 3
    assert all(torch.equal(v, ens.experts.state_dict()[k]) for k, v in before_experts.items())
    assert all(torch.equal(v, e.state_dict()[k]) for e in experts for k, v in e.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(before_aggs, ens.trainable_parameters()))


def test_rejects_mixed_architectures():
    other = UNet(**{**CONFIG, "base_channels": 16})
    with pytest.raises(ValueError, match="one architecture"):
        AFAEnsemble([_expert(0), other])


def test_quick_bench_afa_beats_static_merges_and_routes_by_class(tmp_path):
    r = run_bench("afa", out=tmp_path, quick=True)
    loss = {name: row["test_loss"]["all"] for name, row in r["table"].items()}
    best_expert = min(v for k, v in loss.items() if k.startswith("expert_"))
    assert loss["afa"] < 0.99 * loss["output_avg"]
    assert loss["afa"] < 0.99 * best_expert
    assert loss["afa"] < 0.99 * r["afa"]["init_test_loss"]  # training the aggregators helped
    # the aggregator learned to route: the 0-4 expert weighs more on digits 0-4 than on 5-9, and vice versa
    for stats in r["aggregation"].values():
        assert stats["mean_weight_0_4"][0] > stats["mean_weight_5_9"][0] + 0.05
        assert stats["mean_weight_5_9"][1] > stats["mean_weight_0_4"][1] + 0.05
        assert stats["spatial_std"] > 0.01
    assert (tmp_path / "afa.png").stat().st_size > 0
