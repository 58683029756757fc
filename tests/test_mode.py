"""MoDE (Reuss et al., ICLR 2025, arXiv 2412.12953): noise-only routing, top-k mixture, load balancing, fused expert
cache, and the quick bench's direction."""

from __future__ import annotations


import pytest
import torch

from diffusekit.core import NetworkDenoiser, VPDiscrete, make_grid
from diffusekit.methods.mode import MoDELoss, precompute_for_grid, routing_entropy
from diffusekit.nets import build_net
from diffusekit.nets.mode import MoDE
from diffusekit.samplers import sample_ddim
from diffusekit.training import DiffusionLoss


def _net(seed: int = 0, **kw) -> MoDE:
    torch.manual_seed(seed)
    cfg = {"name": "mode", "hidden_size": 32, "depth": 2, "num_heads": 2, "num_classes": 10, **kw}
    net = build_net(cfg)
    torch.nn.init.normal_(net.out.weight, std=0.2)  # zero-initialised output would hide every difference
    for block in net.blocks:
        torch.nn.init.normal_(block.router[2].weight, std=1.0)  # decisive, time-dependent routing
    return net.eval()


@pytest.mark.parametrize("router_input", ["noise", "noise_and_class"])
def test_fused_cached_experts_equal_dynamic_routing(router_input):
    net = _net(router_input=router_input)
    x = torch.randn(6, 1, 8, 8)
    t = torch.tensor([3.0, 120.0, 480.0, 480.0, 760.0, 999.0])
    y = torch.tensor([0, 1, 2, 3, 10, 9])
    with torch.no_grad():
        dynamic = net(x, t, y)
        net.precompute_experts(t)
        fused = net(x, t, y)
        assert net.blocks[0].last_routing is None  # the cached path did not route
        shared_t = torch.full((6,), 480.0)  # one cache entry for the whole batch (the plain-matmul path)
        fused_shared = net(x, shared_t, y)
        net.clear_expert_cache()
        dynamic_shared = net(x, shared_t, y)
    assert (fused - dynamic).abs().max() < 1e-5
    assert (fused_shared - dynamic_shared).abs().max() < 1e-5
    assert dynamic.abs().max() > 0.1  # a real output, not zeros


def test_cache_only_used_for_cached_times_and_in_eval_mode():
    net = _net()
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    net.precompute_experts(torch.tensor([100.0]))
    with torch.no_grad():
        net(x, torch.tensor([100.0, 250.0]), y)  # 250 is not cached -> dynamic routing for the batch
    assert net.blocks[0].last_routing is not None
    net.train()
    net(x, torch.tensor([100.0, 100.0]), y)
    assert net.blocks[0].last_routing is not None  # training never reads the cache


def test_routing_depends_only_on_time_and_class():
    net = _net(router_input="noise_and_class")
    t = torch.full((4,), 300.0)
    y = torch.tensor([2, 2, 2, 2])
    with torch.no_grad():
        net(torch.randn(4, 1, 8, 8), t, y)
        first = [b.last_routing[1].clone() for b in net.blocks]
        net(torch.randn(4, 1, 8, 8) * 3, t, y)
        second = [b.last_routing[1] for b in net.blocks]
    for a, b in zip(first, second):
        assert torch.equal(a, b) and (a == a[0]).all()  # same (t, class) -> same experts, whatever x
    probs = net.routing(torch.tensor([10.0, 990.0]))["probs"]
    assert not torch.allclose(probs[:, 0], probs[:, 1])  # ... but the noise level does move the router
    noise_only = _net(router_input="noise")
    r = noise_only.routing(torch.tensor([300.0, 300.0]), torch.tensor([1, 7]))["probs"]
    assert torch.equal(r[:, 0], r[:, 1])  # the paper's router ignores the class


def test_topk_weights_sum_to_one_on_k_experts():
    net = _net(num_experts=4, top_k=2)
    routing = net.routing(torch.linspace(0, 999, 7))
    assert torch.allclose(routing["weight"].sum(-1), torch.ones(2, 7))
    assert ((routing["usage"] > 0).sum(-1) == 2).all()
    assert torch.allclose(routing["probs"].sum(-1), torch.ones(2, 7))


def test_balance_loss_is_one_at_uniform_usage_and_larger_when_collapsed():
    net = _net(num_experts=4, top_k=2)
    x, t = torch.randn(8, 1, 8, 8), torch.linspace(0, 999, 8)
    for block in net.blocks:  # uniform router: softmax = 1/E for every input
        torch.nn.init.zeros_(block.router[2].weight)
        torch.nn.init.zeros_(block.router[2].bias)
    net(x, t)
    assert abs(net.aux_loss()["balance"].item() - 1.0) < 1e-6
    for block in net.blocks:  # collapsed router: nearly all mass on expert 0
        block.router[2].bias.data = torch.tensor([8.0, 0.0, 0.0, 0.0])
    net(x, t)
    assert net.aux_loss()["balance"].item() > 1.8


def test_mode_loss_adds_gamma_times_balance_per_example():
    net = _net()
    net.train()
    base = DiffusionLoss(VPDiscrete.named("linear", 1000), "eps")
    batch = (torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,)))
    plain = base(net, batch, torch.Generator().manual_seed(3))
    balance = net.aux_loss()["balance"].item()
    with_aux = MoDELoss(base, balance_weight=0.01)(net, batch, torch.Generator().manual_seed(3))
    assert torch.allclose(with_aux - plain, torch.full((5,), 0.01 * balance), atol=1e-6)
    with_aux.mean().backward()
    assert net.blocks[0].router[0].weight.grad.abs().sum() > 0  # the router learns through the balance term


def test_one_dimensional_mode_and_sampling_with_the_cache():
    net = _net(dims=1, image_size=16, in_channels=3, num_classes=None)
    assert net(torch.randn(2, 3, 16), torch.tensor([5.0, 600.0])).shape == (2, 3, 16)
    sched = VPDiscrete.named("linear", 1000)
    den = NetworkDenoiser(net, sched, "eps")
    ts = make_grid("trailing", sched, 6)
    x_T = torch.randn(3, 3, 16)
    with torch.no_grad():
        dynamic = sample_ddim(den, x_T, ts)
        precompute_for_grid(den, ts)
        fused = sample_ddim(den, x_T, ts)
    assert (dynamic - fused).abs().max() <= 1e-5 * dynamic.abs().max()  # a random net's eps blows x up
    assert net.blocks[0].last_routing is None


def _matmul_calls(fn) -> int:
    """Number of matrix-multiply kernels (mm, addmm, bmm, baddbmm) dispatched while running ``fn``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names = {"mm", "addmm", "bmm", "baddbmm"}

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in names:
                Count.calls += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.calls


def test_fused_forward_runs_fewer_kernels_at_equal_output():
    """Expert caching: per block, one fused SwiGLU (3 matmuls) replaces the router MLP and top-k experts (the
    saving is counted in kernels, not wall time, so the test is deterministic on a busy machine; ``bench mode``
    times it)."""
    net = _net(hidden_size=64, depth=2, num_experts=4, top_k=2)
    x, t, y = torch.randn(64, 1, 8, 8), torch.full((64,), 400.0), torch.arange(64) % 10
    with torch.no_grad():
        net.clear_expert_cache()
        dynamic = net(x, t, y)
        dynamic_calls = _matmul_calls(lambda: net(x, t, y))
        net.precompute_experts(t[:1])
        fused = net(x, t, y)
        fused_calls = _matmul_calls(lambda: net(x, t, y))
    assert fused_calls < dynamic_calls
    assert (fused - dynamic).abs().max() < 1e-5


def test_routing_entropy_mutual_information():
    e = 4
    same = torch.full((5, e), 1.0 / e)
    assert abs(routing_entropy(same)["mutual_information"]) < 1e-9
    one_hot = torch.eye(e)  # each time its own expert: MI = log E
    assert abs(routing_entropy(one_hot)["mutual_information"] - torch.log(torch.tensor(4.0)).item()) < 1e-6


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="top_k"):
        MoDE(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="router_input"):
        MoDE(router_input="x")


def test_mode_quick_bench_direction(tmp_path):
    from diffusekit.bench import run_bench

    r = run_bench("mode", out=tmp_path, quick=True)
    variants, caching = r["variants"], r["caching"]
    assert variants["mode"]["params_active"] < variants["mode"]["params_total"]
    assert abs(variants["mode"]["params_active"] - variants["dense_active"]["params_active"]) < \
        0.01 * variants["dense_active"]["params_active"]  # equal active parameters (router aside)
    assert variants["mode"]["flops_per_forward"] < 0.75 * variants["dense_total"]["flops_per_forward"]
    assert caching["flops_per_forward_fused"] < caching["flops_per_forward_dynamic"]  # no router, same experts
    assert caching["max_abs_diff"] < 1e-3  # 10 DDIM steps from the same x_T
    assert (tmp_path / "mode.png").stat().st_size > 0
