"""Flows between 2-D distributions: conditional flow matching with independent / OT / Schroedinger-bridge couplings
(Tong et al. 2023, arXiv 2302.00482), 1-rectified flow (Liu et al. 2022, arXiv 2209.03003) and stochastic
interpolants with ODE vs SDE sampling (Albergo, Boffi & Vanden-Eijnden 2023, arXiv 2303.08797); ours next to
torchcfm's matchers trained identically.

Problems (source rho0 -> target rho1, 2-D): ``8gaussians->moons`` (``gmm_ring8`` -> ``moons``, data -> data),
``gaussian->checkerboard`` (N(0, I) -> ``checkerboard``) and ``gmm->gmm`` (four Gaussians on the diagonals,
std 0.3 at radius 2 -> four on the axes, std 0.3 at radius 2.5, ``core.gmm.GaussianMixture``, drawn with equal
counts per component: with multinomial counts the W2 between two 1000-samples is ~0.57, all of it count noise).

Every model is the same ``MLPDenoiserNet(2, hidden=64, depth=3)`` called as net(x, 1000 t), trained by the generic
``Trainer`` (AdamW lr 2e-3, batch 256, no EMA) for the same number of steps from the same initial weights (seed 0;
the interpolant's eta net from seed 1):

* I-CFM, OT-CFM (sigma = 0.1) and SB-CFM (sigma = 0.5, Sinkhorn plan with reg 2 sigma^2) from
  ``methods.flow_matching``; 1-RF = I-CFM with sigma = 0; the same three through torchcfm's
  ``ConditionalFlowMatcher`` / ``ExactOptimalTransportConditionalFlowMatcher`` /
  ``SchrodingerBridgeConditionalFlowMatcher`` (its global-RNG draws, seeded), in one shared loss adapter.
  For data -> data pairs x1 is reshuffled in every batch (fresh independent pairs; OT/SB re-couple the batch).
* Interpolant: linear path, Brownian gamma sqrt(t (1 - t)); a drift net b (``velocity``) and a denoiser eta
  (``noise``, s = -eta/gamma), each for the full step budget; and an under-trained drift (a tenth of the steps)
  paired with the same eta, to show the SDE correcting a poor drift.

Metrics on held-out samples: W2 = sqrt(``ot.emd2``) between n generated and n test target points (exact OT,
squared Euclidean cost) after Euler with 1, 2, 4, 8, 100 steps (Euler-Maruyama for the SDEs); the floor is the
W2 between two independent n-samples of the target. Straightness of the learned ODE (Liu et al. 2022, Def. 2.4)
along the 100-step Euler path x_0 -> x_1 of each sample:

    S = E_x0 sum_k dt ||(x_{k+1} - x_k)/dt - (x_1 - x_0)||^2   (~ E int_0^1 ||v(x_t, t) - (x_1 - x_0)||^2 dt),

0 exactly when every sample moves on a straight line at constant speed (then one Euler step is exact).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..core.gmm import GaussianMixture
from ..data import load_dataset
from ..errors import UserError
from ..methods.flow_matching import CFMLoss, make_matcher
from ..methods.interpolants import (Interpolant, InterpolantFields, InterpolantLoss, grid_interpolant,
                                    network_field, sample_interpolant_sde)
from ..nets import MLPDenoiserNet
from ..training import TrainConfig, Trainer
from . import bench_progress, register_bench

PAIRS = ("8gaussians->moons", "gaussian->checkerboard", "gmm->gmm")
STEPS = (1, 2, 4, 8, 100)
EPSILONS = (0.0, 0.1, 0.5, 1.0, 2.0)
CFM = {"I-CFM": ("independent", 0.1), "OT-CFM": ("ot", 0.1), "SB-CFM": ("sb", 0.5), "1-RF": ("independent", 0.0)}
TORCHCFM = ("I-CFM", "OT-CFM", "SB-CFM")
NET = {"hidden": 64, "depth": 3}
TRAIN = {"lr": 2e-3, "batch_size": 256}
FULL = {"pairs": list(PAIRS), "train_steps": 1000, "n_train": 10_000, "n_test": 1000}
QUICK = {"pairs": ["8gaussians->moons"], "train_steps": 100, "n_train": 2000, "n_test": 300}


def _gmm_pair():
    """Four Gaussians on the diagonals (radius 2) -> four on the axes (radius 2.5), std 0.3 each."""
    diag = 2.0 / math.sqrt(2) * torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=torch.float64)
    axes = 2.5 * torch.tensor([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float64)
    cov = 0.09 * torch.eye(2, dtype=torch.float64).expand(4, 2, 2)
    return GaussianMixture(diag, cov), GaussianMixture(axes, cov)


def _data(pair: str, n: int, split: str):
    """(x0 or None for a Gaussian source, x1), float32, n points each, independent draws per split."""
    offset = 0 if split == "train" else 1
    if pair == "8gaussians->moons":
        return load_dataset("gmm_ring8", split, n=n).x, load_dataset("moons", split, n=n).x
    if pair == "gaussian->checkerboard":
        return None, load_dataset("checkerboard", split, n=n).x
    src, tgt = _gmm_pair()
    return _stratified(src, n, 10 + offset), _stratified(tgt, n, 20 + offset)


def _stratified(mixture: GaussianMixture, n: int, seed: int) -> torch.Tensor:
    """n points of an equal-weight mixture with (as near as possible) equal counts per component, shuffled: the
    W2 between two such samples then measures the shape within modes, not multinomial count noise between them."""
    g = torch.Generator().manual_seed(seed)
    k = mixture.num_components
    labels = torch.arange(n) % k
    z = torch.randn(n, mixture.dim, generator=g, dtype=torch.float64)
    scaled = mixture.eigvals[labels].sqrt() * z  # Sigma_k = U_k diag(s_k) U_k^T
    x = mixture.means[labels] + torch.einsum("nij,nj->ni", mixture.eigvecs[labels], scaled)
    return x[torch.randperm(n, generator=g)].float()


def w2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact W2 between two equal-size empirical measures (``ot.emd2``, squared Euclidean cost)."""
    import ot

    cost = ot.dist(a.detach().double().numpy(), b.detach().double().numpy())
    return float(ot.emd2([], [], cost, numItermax=1_000_000)) ** 0.5


def straightness(traj: torch.Tensor, ts: torch.Tensor) -> float:
    """Mean over samples of sum_k dt_k ||(x_{k+1} - x_k)/dt_k - (x_K - x_0)||^2 (module docstring); traj (K+1, B, D)."""
    x = traj.double()
    dt = (ts[1:] - ts[:-1]).abs().to(x)
    vel = (x[1:] - x[:-1]) / dt[:, None, None]
    chord = x[-1] - x[0]
    return float((dt[:, None] * ((vel - chord) ** 2).sum(-1)).sum(0).mean())


class _ShuffledPairs:
    """Wraps a data -> data loss: x1 is permuted within each batch (independent pairs drawn afresh each step)."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, net, batch, generator=None):
        x0, x1 = batch
        return self.loss(net, (x0, x1[torch.randperm(x1.shape[0], generator=generator)]), generator)


class _TorchCFMLoss:
    """torchcfm's matcher in the same per-example loss: mean_j (v(x_t, 1000 t) - u_t)_j^2 (global-RNG draws)."""

    def __init__(self, matcher, gaussian_source: bool):
        self.matcher, self.gaussian_source = matcher, gaussian_source

    def __call__(self, net, batch, generator=None):
        if self.gaussian_source:
            x1 = batch[0]
            x0 = torch.randn(x1.shape, generator=generator)
        else:
            x0, x1 = batch
            x1 = x1[torch.randperm(x1.shape[0], generator=generator)]
        t, xt, ut = self.matcher.sample_location_and_conditional_flow(x0, x1)
        return ((net(xt, 1000 * t) - ut) ** 2).flatten(1).mean(1)


def _torchcfm_matcher(name: str, sigma: float):
    try:
        from torchcfm.conditional_flow_matching import (ConditionalFlowMatcher,
                                                        ExactOptimalTransportConditionalFlowMatcher,
                                                        SchrodingerBridgeConditionalFlowMatcher)
    except ImportError:
        raise UserError("bench flows compares against torchcfm, which is not installed: pip install --no-deps "
                        "torchcfm (`make setup` does; its own dependency chain pulls a CUDA torchvision)") from None

    if name == "I-CFM":
        return ConditionalFlowMatcher(sigma=sigma)
    if name == "OT-CFM":
        return ExactOptimalTransportConditionalFlowMatcher(sigma=sigma)
    return SchrodingerBridgeConditionalFlowMatcher(sigma=sigma, ot_method="sinkhorn")


def _train(loss, data, steps: int, seed: int = 0):
    """A fresh MLP (initial weights from ``seed``) fitted with ``loss``; returns (net, seconds)."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # torchcfm's plan sampler draws from NumPy's global RNG
    net = MLPDenoiserNet(2, **NET)
    cfg = TrainConfig(steps=steps, seed=seed, ema_decay=None, progress=False, log_every=10**9, **TRAIN)
    t0 = time.perf_counter()
    Trainer(net, loss, data, cfg).fit()
    net.eval()
    return net, time.perf_counter() - t0


def _draw_source(x0_test, n: int):
    if x0_test is not None:
        return x0_test[:n]
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(123))


@torch.no_grad()
def _evaluate(fields, x0, x1_test, eps: float = 0.0, *, with_straightness: bool = True) -> dict:
    """W2 at every Euler step count (SDE when eps > 0) and the straightness of the 100-step ODE path."""
    row = {"w2": {}}
    for steps in STEPS:
        ts = grid_interpolant(steps)
        path = [x0]
        x = sample_interpolant_sde(fields, x0, ts, eps=eps, generator=torch.Generator().manual_seed(7),
                                   callback=lambda info, p=path: p.append(info["x"]))
        row["w2"][str(steps)] = w2(x, x1_test)
        if steps == max(STEPS) and with_straightness and eps == 0:
            row["straightness"] = straightness(torch.stack(path), ts)
    return row


def _velocity_fields(net):
    """A CFM velocity network as interpolant fields (same time convention: net(x, 1000 t), t: 0 -> 1)."""
    return InterpolantFields(Interpolant("linear", "zero"), velocity=network_field(net))


def _run_pair(pair: str, sizes: dict) -> tuple[dict, dict]:
    steps_budget = sizes["train_steps"]
    x0_train, x1_train = _data(pair, sizes["n_train"], "train")
    x0_test, x1_test = _data(pair, sizes["n_test"], "test")
    _, x1_other = _data(pair, sizes["n_test"], "train")  # an independent target draw of n_test points: W2 floor
    gaussian = x0_train is None
    data = (x1_train,) if gaussian else (x0_train, x1_train)
    x0 = _draw_source(x0_test, sizes["n_test"])
    out = {"floor_w2": w2(x1_other, x1_test), "methods": {}, "torchcfm": {}, "interpolant": {}, "train_seconds": {}}
    shown = {}
    for name, (matcher, sigma) in bench_progress(CFM.items(), desc=f"flows {pair}: CFM", total=len(CFM)):
        loss = CFMLoss(make_matcher(matcher, sigma), source="gaussian" if gaussian else "data")
        net, sec = _train(loss if gaussian else _ShuffledPairs(loss), data, steps_budget)
        out["train_seconds"][name] = sec
        out["methods"][name] = _evaluate(_velocity_fields(net), x0, x1_test)
        shown[name] = net
    for name in bench_progress(TORCHCFM, desc=f"flows {pair}: torchcfm"):
        net, sec = _train(_TorchCFMLoss(_torchcfm_matcher(name, CFM[name][1]), gaussian), data, steps_budget)
        out["train_seconds"][f"torchcfm {name}"] = sec
        out["torchcfm"][name] = _evaluate(_velocity_fields(net), x0, x1_test)
    b_loss = InterpolantLoss("linear", "brownian", "velocity")
    eta_loss = InterpolantLoss("linear", "brownian", "noise")
    b_net, out["train_seconds"]["interpolant b"] = _train(b_loss, data, steps_budget, seed=0)
    eta_net, out["train_seconds"]["interpolant eta"] = _train(eta_loss, data, steps_budget, seed=1)
    short = max(1, steps_budget // 10)
    b_short, out["train_seconds"]["interpolant b (short)"] = _train(b_loss, data, short, seed=0)
    for label, drift in (("trained", b_net), ("under-trained", b_short)):
        fields = InterpolantFields(b_loss.interpolant, velocity=b_loss.field(drift), noise=eta_loss.field(eta_net))
        out["interpolant"][label] = {f"eps={e:g}": _evaluate(fields, x0, x1_test, e) for e in EPSILONS}
    out["interpolant"]["train_steps"] = {"b": steps_budget, "eta": steps_budget, "b (under-trained)": short}
    shown["data"] = (x0, x1_test)
    return out, shown


def _plot(results: dict, shown: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 3, figsize=(15, 4.2 * len(results)), squeeze=False)
    colors = {"I-CFM": "C0", "OT-CFM": "C1", "SB-CFM": "C2", "1-RF": "C3"}
    for r, (pair, res) in enumerate(results.items()):
        ax = axes[r, 0]
        for name, row in res["methods"].items():
            ax.plot(STEPS, [row["w2"][str(s)] for s in STEPS], "o-", color=colors[name],
                    label=f"{name} (S={row['straightness']:.2f})")
        for name, row in res["torchcfm"].items():
            ax.plot(STEPS, [row["w2"][str(s)] for s in STEPS], "x--", color=colors[name], alpha=0.6,
                    label=f"torchcfm {name}")
        ax.axhline(res["floor_w2"], color="gray", lw=0.8, ls=":", label="W2 floor (two target samples)")
        ax.set(xscale="log", xlabel="Euler steps", ylabel="W2", title=f"{pair}: CFM couplings")
        ax.legend(fontsize=7)
        ax = axes[r, 1]
        for label, ls in (("trained", "-"), ("under-trained", "--")):
            for k, (key, row) in enumerate(res["interpolant"][label].items()):
                ax.plot(STEPS, [row["w2"][str(s)] for s in STEPS], ls, marker="o", ms=3, color=f"C{k}",
                        label=f"{label} b, {key}")
        ax.axhline(res["floor_w2"], color="gray", lw=0.8, ls=":")
        ax.set(xscale="log", xlabel="Euler(-Maruyama) steps", ylabel="W2",
               title=f"{pair}: interpolant ODE (eps=0) vs SDE")
        ax.legend(fontsize=6, ncol=2)
        ax = axes[r, 2]
        x0, x1 = shown[pair]["data"]
        ax.scatter(x1[:, 0], x1[:, 1], s=2, color="lightgray", label="target")
        for name in ("I-CFM", "OT-CFM"):
            with torch.no_grad():
                x = sample_interpolant_sde(_velocity_fields(shown[pair][name]), x0, grid_interpolant(2), eps=0.0)
            ax.scatter(x[:, 0], x[:, 1], s=2, color=colors[name], label=f"{name}, 2 Euler steps")
        ax.set(title=f"{pair}: 2-step samples", aspect="equal")
        ax.legend(fontsize=7, markerscale=4)
    fig.tight_layout()
    return fig


def _summary(results: dict) -> str:
    parts = []
    for pair, res in results.items():
        m = res["methods"]
        cfm = ", ".join(f"{k} S {v['straightness']:.3f} W2@2 {v['w2']['2']:.3f} W2@100 {v['w2']['100']:.3f}"
                        for k, v in m.items())
        tc = ", ".join(f"{k} W2@100 {v['w2']['100']:.3f}" for k, v in res["torchcfm"].items())
        it = res["interpolant"]
        sde = " ".join(f"{k} {v['w2']['100']:.3f}/{it['under-trained'][k]['w2']['100']:.3f}"
                       for k, v in it["trained"].items())
        parts.append(f"{pair} (floor {res['floor_w2']:.3f}): {cfm}; torchcfm {tc}; interpolant W2@100 "
                     f"trained/under-trained b: {sde}")
    return " | ".join(parts)


def _run(quick: bool):
    sizes = QUICK if quick else FULL
    results, shown = {}, {}
    for pair in bench_progress(sizes["pairs"], desc="flows: pairs"):
        results[pair], shown[pair] = _run_pair(pair, sizes)
    fig = _plot(results, shown)
    return {"sizes": sizes, "net": {"name": "mlp", "dim": 2, **NET}, "train": TRAIN, "steps": list(STEPS),
            "epsilons": list(EPSILONS), "cfm": {k: {"matcher": m, "sigma": s} for k, (m, s) in CFM.items()},
            "results": results, "summary": _summary(results)}, fig


register_bench("flows", "CFM couplings (I / OT / SB), 1-RF and stochastic interpolants (ODE vs SDE eps) on 2-D pairs: "
                        "W2 vs Euler steps, straightness, ours vs torchcfm")(_run)
