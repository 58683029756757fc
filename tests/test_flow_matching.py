"""Flow matching with minibatch couplings: elementwise agreement with torchcfm, the OT plans against POT and a
brute-force assignment, the SB -> OT limit, the Denoiser view, and OT-CFM's straighter paths at tiny scale."""

import itertools
import math
import warnings

import numpy as np
import ot
import pytest
import torch

torchcfm = pytest.importorskip("torchcfm.conditional_flow_matching")

from diffusekit.core import grid_uniform  # noqa: E402
from diffusekit.data.toys import load_gmm_ring8  # noqa: E402
from diffusekit.methods.flow_matching import (CFMDenoiser, CFMLoss, ExactOTCFM, IndependentCFM,  # noqa: E402
                                              SchrodingerBridgeCFM, cfm_extra_config, integrate_flow,
                                              load_cfm_denoiser, make_matcher, ot_plan, sample_plan)
from diffusekit.nets import build_net  # noqa: E402
from diffusekit.samplers import sample_ddim, sample_euler, sample_heun  # noqa: E402
from diffusekit.training import TrainConfig, Trainer  # noqa: E402
from diffusekit.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402


def _batch(shape=(48, 2), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=dtype)
    x1 = 0.5 * torch.randn(shape, generator=g, dtype=dtype) + 2.0
    return x0, x1


def _reference(name, sigma):
    c = torchcfm
    return {"independent": lambda: c.ConditionalFlowMatcher(sigma),
            "ot": lambda: c.ExactOptimalTransportConditionalFlowMatcher(sigma),
            "sb": lambda: c.SchrodingerBridgeConditionalFlowMatcher(sigma, ot_method="sinkhorn"),
            "sb_exact": lambda: c.SchrodingerBridgeConditionalFlowMatcher(sigma, ot_method="exact"),
            "target": lambda: c.TargetConditionalFlowMatcher(sigma),
            "vp": lambda: c.VariancePreservingConditionalFlowMatcher(sigma)}[name]()


def _ours(name, sigma):
    if name == "sb_exact":
        return make_matcher("sb", sigma, ot_method="exact")
    return make_matcher(name, sigma)


def _seeded(fn, seed=123):
    np.random.seed(seed)
    torch.manual_seed(seed)
    return fn()


CASES = [("independent", 0.0), ("independent", 0.2), ("ot", 0.0), ("ot", 0.1), ("sb", 0.5), ("sb_exact", 1.0),
         ("target", 0.0), ("target", 0.05), ("vp", 0.1)]


@pytest.mark.parametrize("name,sigma", CASES)
@pytest.mark.parametrize("shape", [(48, 2), (24, 1, 3, 3)])
def test_matchers_agree_with_torchcfm_elementwise(name, sigma, shape):
    """Same global RNG state (NumPy for the plan, torch for t and eps) -> the same (t, x_t, u_t, eps)."""
    x0, x1 = _batch(shape)
    ref, ours = _reference(name, sigma), _ours(name, sigma)
    t = torch.linspace(0.02, 0.98, shape[0], dtype=torch.float64)[torch.randperm(shape[0])]
    for t_arg in (None, t):
        theirs = _seeded(lambda t_arg=t_arg: ref.sample_location_and_conditional_flow(x0, x1, t_arg, return_noise=True))
        mine = _seeded(lambda t_arg=t_arg: ours.sample_location_and_conditional_flow(x0, x1, t_arg, return_noise=True))
        for a, b, what in zip(theirs, mine, ("t", "x_t", "u_t", "eps")):
            if name.startswith("sb") and what == "u_t":
                # torchcfm divides by D + 1e-8 with D = 2 t (1 - t), we by D: with x_t - mu_t = sigma_t eps the
                # two differ by |(1 - 2t) sigma_t eps| 1e-8 / (D (D + 1e-8)) <= (1e-8 / D) |(1 - 2t)/D sigma_t eps|
                tt = mine[0].reshape(-1, *[1] * (x0.dim() - 1))
                d = 2 * tt * (1 - tt)
                bound = 1e-8 / d * ((1 - 2 * tt) / d * sigma * torch.sqrt(tt * (1 - tt)) * mine[3]).abs()
                assert torch.all((b - a).abs() <= 1.01 * bound + 1e-13), f"{name}: u_t beyond torchcfm's guard"
            else:
                torch.testing.assert_close(b, a, rtol=1e-6, atol=0, msg=f"{name}: {what} differs from torchcfm")


@pytest.mark.parametrize("name,sigma", [("independent", 0.3), ("sb", 0.7), ("target", 0.1), ("vp", 0.2)])
def test_conditional_flow_is_the_time_derivative_of_the_path(name, sigma):
    """u_t(x_t | x0, x1) = d/dt (mu_t + sigma_t eps) with (x0, x1, eps) held fixed (central differences)."""
    m = make_matcher(name, sigma)
    x0, x1 = _batch((40, 3))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t, h = torch.linspace(0.05, 0.95, 40, dtype=torch.float64), 1e-6
    xt = m.sample_xt(x0, x1, t, eps)
    numeric = (m.sample_xt(x0, x1, t + h, eps) - m.sample_xt(x0, x1, t - h, eps)) / (2 * h)
    torch.testing.assert_close(m.conditional_flow(x0, x1, t, xt), numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["ot", "sb"])
def test_guided_labels_follow_the_coupling_like_torchcfm(name):
    x0, x1 = _batch((32, 2))
    y0, y1 = torch.arange(32), torch.arange(32) + 100
    ref = _reference(name, 0.3)
    ours = make_matcher(name, 0.3)
    theirs = _seeded(lambda: ref.guided_sample_location_and_conditional_flow(x0, x1, y0, y1, return_noise=True))
    mine = _seeded(lambda: ours.guided_sample_location_and_conditional_flow(x0, x1, y0, y1, return_noise=True))
    for k in (0, 1, 3, 4, 5):
        torch.testing.assert_close(mine[k], theirs[k], rtol=1e-6, atol=0)
    # the label travels with its sample: at t = 1 and sigma = 0, x_t is exactly the chosen x1
    t1 = torch.ones(32, dtype=torch.float64)
    _, xt, _, y0s, y1s = make_matcher("ot").guided_sample_location_and_conditional_flow(
        x0, x1, y0, y1, t1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(xt, x1[y1s - 100])
    assert not torch.equal(y0s, torch.arange(32)) or not torch.equal(y1s, torch.arange(32) + 100)


def test_exact_plan_is_pot_emd_and_beats_every_permutation():
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    plan = ot_plan(x0, x1, "exact")
    cost = ot.dist(x0.numpy(), x1.numpy())  # squared Euclidean
    np.testing.assert_allclose(plan, ot.emd(ot.unif(6), ot.unif(6), cost), rtol=0, atol=1e-15)
    np.testing.assert_allclose(plan.sum(1), 1 / 6, rtol=1e-12)
    np.testing.assert_allclose(plan.sum(0), 1 / 6, rtol=1e-12)
    brute = min(cost[range(6), list(p)].mean() for p in itertools.permutations(range(6)))
    assert math.isclose(float((plan * cost).sum()), brute, rel_tol=1e-12)
    # the plan is a permutation (generic points): every pair drawn from it is a matched pair
    i, j = sample_plan(x0, x1, "exact", generator=torch.Generator().manual_seed(0), num_pairs=500)
    assert set(zip(i.tolist(), j.tolist())) <= set(zip(*np.nonzero(plan)))
    # an identity-cost batch is matched to itself
    assert np.allclose(np.diag(ot_plan(x0, x0, "exact")), 1 / 6)


def test_sinkhorn_plan_marginals_and_sigma_to_zero_limit_is_exact_ot():
    g = torch.Generator().manual_seed(5)
    x0, x1 = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
    a = np.full(8, 1 / 8)
    exact = ot_plan(x0, x1, "exact")
    distances = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # POT: "did not converge" in 1000 iterations at the small regs
        for sigma in (1.0, 0.5, 0.25, 0.1, 0.05, 0.02):
            matcher = SchrodingerBridgeCFM(sigma)
            assert matcher.reg == 2 * sigma**2
            plan = ot_plan(x0, x1, "sinkhorn", matcher.reg)
            np.testing.assert_allclose(plan.sum(1), a, rtol=1e-6)
            np.testing.assert_allclose(plan.sum(0), a, rtol=1e-2)
            distances.append(np.abs(plan - exact).sum())
    assert distances[0] > 1.0  # at sigma = 1 entropy spreads the plan well away from the matching
    assert all(d0 > d1 for d0, d1 in zip(distances[:4], distances[1:4]))
    assert max(distances[4:]) < 0.01  # sigma -> 0: the SB coupling is the exact OT coupling


def test_degenerate_plans_warn_and_fall_back_to_uniform():
    x0, x1 = _batch((8, 2))
    for bad in (np.zeros((8, 8)), np.full((8, 8), np.nan)):
        with pytest.warns(RuntimeWarning, match="uniform plan"):
            i, j = sample_plan(x0, x1, plan=bad, generator=torch.Generator().manual_seed(0), num_pairs=4000)
        counts = np.bincount((i * 8 + j).numpy(), minlength=64)
        assert counts.min() > 20  # every pair is drawn: the uniform plan
    # a reg too small for the costs: the standard solver underflows, the log-domain solve still gives a plan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plan = ot_plan(50 * x0, x1, "sinkhorn", 1e-3)
    assert np.isfinite(plan).all() and math.isclose(plan.sum(), 1.0, rel_tol=1e-6)


def test_generator_reproducible_and_inputs_checked():
    x0, x1 = _batch((16, 2))
    for name in ("independent", "ot", "sb", "target", "vp"):
        m = make_matcher(name, 0.5 if name == "sb" else 0.0)
        a = m.sample_location_and_conditional_flow(x0, x1, generator=torch.Generator().manual_seed(4))
        b = m.sample_location_and_conditional_flow(x0, x1, generator=torch.Generator().manual_seed(4))
        for u, v in zip(a, b):
            assert torch.equal(u, v)
        assert a[1].shape == x0.shape and a[2].shape == x0.shape and a[0].shape == (16,)
    with pytest.raises(ValueError, match="unknown flow matcher 'rf'; allowed: independent, ot, sb, target, vp"):
        make_matcher("rf")
    with pytest.raises(ValueError, match="sigma > 0"):
        make_matcher("sb", 0.0)
    with pytest.raises(ValueError, match="sigma must be"):
        IndependentCFM(-1.0)
    with pytest.raises(ValueError, match="shape"):
        ExactOTCFM().sample_location_and_conditional_flow(x0, x1, torch.rand(3))
    with pytest.raises(ValueError, match="unknown OT plan method"):
        ot_plan(x0, x1, "greedy")
    with pytest.raises(ValueError, match="unknown CFM source"):
        CFMLoss(IndependentCFM(), source="noise")


def test_cfm_loss_is_the_matcher_regression_and_carries_labels():
    net = build_net({"name": "mlp", "dim": 2, "hidden": 16, "depth": 1, "num_classes": 3}).double()
    torch.nn.init.normal_(net.out.weight)
    x0, x1 = _batch((12, 2))
    labels = torch.arange(12) % 3
    for source, batch in (("gaussian", (x1, labels)), ("data", (x0, x1, labels))):
        loss = CFMLoss(make_matcher("ot"), source=source)
        got = loss(net, batch, torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)
        src = torch.randn(x1.shape, generator=g, dtype=x1.dtype) if source == "gaussian" else x0
        t, xt, ut, _, y = loss.matcher.guided_sample_location_and_conditional_flow(src, x1, None, labels, generator=g)
        want = ((net(xt, 1000 * t, class_labels=y) - ut) ** 2).mean(1)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        assert got.shape == (12,)
    assert CFMLoss(make_matcher("sb", 0.5)).config()["matcher"] == {"name": "sb", "sigma": 0.5, "ot_method": "sinkhorn"}
    with pytest.raises(ValueError, match="no Denoiser view"):
        CFMLoss(IndependentCFM(), source="data").denoiser(net)


def test_per_example_generators_make_independent_cfm_split_invariant():
    """With one generator per example (the Trainer's loss_noise="per_example") an example's loss does not depend
    on the batch it sits in for independent pairs; a minibatch OT coupling does (that is the method)."""
    net = build_net({"name": "mlp", "dim": 2, "hidden": 16, "depth": 1}).double()
    torch.nn.init.normal_(net.out.weight)
    _, x1 = _batch((10, 2))

    def gens():
        return [torch.Generator().manual_seed(100 + k) for k in range(10)]

    for name, invariant in (("independent", True), ("vp", True), ("ot", False)):
        loss = CFMLoss(make_matcher(name))
        whole = loss(net, (x1,), gens())
        g = gens()
        halves = torch.cat([loss(net, (x1[:5],), g[:5]), loss(net, (x1[5:],), g[5:])])
        assert torch.allclose(whole, halves, rtol=1e-12, atol=0) == invariant, name
    with pytest.raises(ValueError, match="got 3 generators for a batch of 10"):
        CFMLoss(make_matcher("independent"))(net, (x1,), gens()[:3])


def test_denoiser_view_euler_and_ddim_reproduce_plain_euler_on_the_field():
    torch.manual_seed(0)
    net = build_net({"name": "mlp", "dim": 2, "hidden": 32, "depth": 2}).double()
    torch.nn.init.normal_(net.out.weight, std=0.5)
    den = CFMLoss(make_matcher("ot")).denoiser(net)
    assert isinstance(den, CFMDenoiser) and den.schedule.kind == "flow"
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ts = grid_uniform(den.schedule, 12, t_start=1.0, t_end=0.0)  # our time s = 1 - t
    plain = integrate_flow(net, x0, 12)
    with torch.no_grad():
        torch.testing.assert_close(sample_euler(den, x0, ts), plain, rtol=0, atol=1e-12)
        torch.testing.assert_close(sample_ddim(den, x0, ts), plain, rtol=0, atol=1e-12)
        # our velocity is minus the torchcfm field, at t = 1 - s
        s = torch.full((64,), 0.3, dtype=torch.float64)
        x0_hat = den(x0, s)
        torch.testing.assert_close(x0_hat, x0 + 0.3 * net(x0, torch.full((64,), 700.0, dtype=torch.float64)))


def test_denoiser_view_is_the_same_ode_for_higher_order_samplers_and_round_trips_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    net = build_net({"name": "mlp", "dim": 2, "hidden": 32, "depth": 2, "num_classes": 3}).double()
    torch.nn.init.normal_(net.out.weight, std=0.3)
    loss = CFMLoss(make_matcher("sb", 0.5))
    den = loss.denoiser(net)
    x0 = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(32) % 3
    with torch.no_grad():
        # plain Euler on v converges at first order to Heun's solution on the Denoiser view: the same ODE
        ref = sample_heun(den, x0, grid_uniform(den.schedule, 1600, t_start=1.0, t_end=0.0),
                          cond={"class_labels": labels})
        errors = [float((integrate_flow(net, x0, n, cond={"class_labels": labels}) - ref).abs().max())
                  for n in (200, 400, 800)]
        assert errors[-1] < 1e-3
        assert all(1.7 < e0 / e1 < 2.3 for e0, e1 in zip(errors, errors[1:])), errors
        save_checkpoint(tmp_path / "ck", model=net, ema_model=net, optimizer=None, step=0,
                        extra_config=cfm_extra_config(loss))
        tensors, meta = load_checkpoint(tmp_path / "ck")
        loaded = load_cfm_denoiser(tensors, meta, tmp_path / "ck")
        assert isinstance(loaded, CFMDenoiser) and not loaded.net.training
        # the rebuilt network is float32 (build_net's default), the saved one float64
        torch.testing.assert_close(loaded(x0, 0.4, class_labels=labels), den(x0, 0.4, class_labels=labels),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="not a flow-matching checkpoint"):
        load_cfm_denoiser(tensors, {**meta, "extra_config": {"kind": "trained"}}, tmp_path / "ck")


# ------------------------------------------------------------------------------------------------
# Direction of the paper's effect: N(0, I) -> 8 Gaussians on a ring, OT-CFM vs I-CFM, 300 steps each

@pytest.fixture(scope="module")
def trained_fields():
    train = load_gmm_ring8("train", 4096, 0).x
    nets = {}
    for name in ("independent", "ot"):
        torch.manual_seed(0)
        net = build_net({"name": "mlp", "dim": 2, "hidden": 64, "depth": 2})
        cfg = TrainConfig(steps=300, batch_size=256, lr=2e-3, ema_decay=None, progress=False, seed=0)
        Trainer(net, CFMLoss(make_matcher(name)), (train,), cfg).fit()
        nets[name] = net.eval()
    return nets


def _straightness_and_w2(net, n=800):
    """E_k |v(x_k, t_k) - (x_1 - x_0)|^2 along the model's 100-step Euler path, and W2 of the 1-step sample."""
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    x1, path = integrate_flow(net, x0, 100, return_path=True)
    with torch.no_grad():
        v = torch.stack([net(path[k], torch.full((n,), 10.0 * k)) for k in range(100)])
    straightness = float(((v - (x1 - x0)) ** 2).sum(-1).mean())
    one_step = integrate_flow(net, x0, 1).double().numpy()
    test = load_gmm_ring8("test", n, 0).x.double().numpy()
    w2 = math.sqrt(ot.emd2(ot.unif(n), ot.unif(n), ot.dist(one_step, test)))
    return straightness, w2


def test_ot_cfm_paths_are_straighter_than_independent_cfm(trained_fields):
    s_ind, w_ind = _straightness_and_w2(trained_fields["independent"])
    s_ot, w_ot = _straightness_and_w2(trained_fields["ot"])
    assert s_ot < 0.25 * s_ind, (s_ot, s_ind)
    assert w_ot < 0.5 * w_ind, (w_ot, w_ind)
