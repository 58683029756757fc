"""DTR (Park et al. 2024, arXiv 2310.07138) and ANT (Go et al. 2023, arXiv 2306.00354) on a tiny digits DiT.

Model: class-conditional DiT on 8 x 8 digits (patch 2 -> 16 tokens, hidden 64, depth 4, 4 heads), eps prediction,
linear ``vp_discrete`` schedule (T = 1000; the cosine one ends at alpha = 5e-5, where eps-prediction's x0 estimate
is amplified 2e4-fold: a 1500-step pilot on it stalled at digits-FD ~190), AdamW lr 1e-3 (50 warmup steps), batch
80, grad clip 1, EMA 0.99, no label dropout. Every arm trains for the same number of steps from the same initial
weights, with the same data order and the same noise draws (``methods.ant.train_intervals``; only the timesteps
and the use of the losses differ). Arms: vanilla; DTR beta 0.8 and 0.6 (alpha 4); ANT with k = 5 intervals (the
DP on log-SNR, and for UW and Nash also uniform) under no balancing (stratified batches only), UW, PCGrad and
Nash-MTL; DTR 0.8 + ANT-UW (log-SNR DP). PCGrad costs k backward passes per step, so only its log-SNR arm runs in
the full bench.

Measured: digits-FD (zoo ``digits_classifier``; 500 samples, 50 per class, DDIM 10 trailing steps, no guidance,
against the test split) of the EMA model every ``eval_every`` steps; the held-out eps-MSE on the test images per
timestep bucket (5 equal buckets of 200 timesteps, 4 timesteps each, fixed noise); the learned UW weights
exp(-s_k)/2 and Nash alpha; the task affinity matrix (cosine of full-model gradients, 256 training images) over
30 evenly spaced timesteps of the trained vanilla model, with the intervals the DP finds on it; the intervals on
log-SNR, raw SNR and uniform. The four main arms run a second seed (mean and spread of the final FD).

``--quick``: vanilla, DTR 0.8, ANT-UW and ANT-Nash (log-SNR DP) for 60 steps (warmup 10, EMA 0.9), 50 samples,
TAS over 8 timesteps of 64 images.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..core import VPDiscrete
from ..data import load_dataset
from ..methods.ant import (cluster_timesteps, log_snr_values, loss_by_interval, snr_values, task_affinity,
                           tas_cost, train_intervals, uniform_intervals)
from ..metrics import digits_fd
from ..nets import build_net
from ..training.config import TrainConfig
from ..training.losses import DiffusionLoss
from . import bench_progress, register_bench

NET = {"name": "dit", "in_channels": 1, "image_size": 8, "patch_size": 2, "hidden_size": 64, "depth": 4,
       "num_heads": 4, "num_classes": 10}
T = 1000
K = 5
DTR_ALPHA = 4.0
# arm -> (dtr_beta, intervals: None | "uniform" | "dp", balancer)
ARMS = {
    "vanilla": (None, None, "mean"),
    "dtr0.8": (0.8, None, "mean"),
    "dtr0.6": (0.6, None, "mean"),
    "ant-none-dp": (None, "dp", "mean"),
    "ant-uw-uniform": (None, "uniform", "uw"),
    "ant-uw-dp": (None, "dp", "uw"),
    "ant-pcgrad-dp": (None, "dp", "pcgrad"),
    "ant-nash-uniform": (None, "uniform", "nash"),
    "ant-nash-dp": (None, "dp", "nash"),
    "dtr0.8+ant-uw-dp": (0.8, "dp", "uw"),
}
MAIN_ARMS = ("vanilla", "dtr0.8", "ant-uw-dp", "dtr0.8+ant-uw-dp")
QUICK_ARMS = ("vanilla", "dtr0.8", "ant-uw-dp", "ant-nash-dp")
FULL = {"steps": 500, "eval_every": 125, "seeds": (0, 1), "n_per_class": 50, "tas_timesteps": 30,
        "tas_images": 256, "sample_steps": 10, "warmup_steps": 50, "ema_decay": 0.99}
QUICK = {"steps": 60, "eval_every": 30, "seeds": (0,), "n_per_class": 5, "tas_timesteps": 8, "tas_images": 64,
         "sample_steps": 5, "warmup_steps": 10, "ema_decay": 0.9}


def schedule() -> VPDiscrete:
    return VPDiscrete.named("linear", T)


def make_net(dtr_beta: float | None, seed: int) -> torch.nn.Module:
    """The bench DiT (same initial weights for every arm of a seed: DTR adds no parameters)."""
    torch.manual_seed(seed)
    return build_net({**NET, "dtr_beta": dtr_beta, "dtr_alpha": DTR_ALPHA})


def train_config(cfg: dict, seed: int) -> TrainConfig:
    return TrainConfig(steps=cfg["steps"], batch_size=80, lr=1e-3, warmup_steps=cfg["warmup_steps"], grad_clip=1.0,
                       ema_decay=cfg["ema_decay"], seed=seed, log_every=10, progress=False)


def sample_fd(loss: DiffusionLoss, model, classifier, reference: torch.Tensor, *, n_per_class: int, steps: int,
              seed: int = 0) -> float:
    """digits-FD of ``n_per_class`` DDIM samples per class (no guidance) against ``reference``."""
    from ..zoo.recipes import sample_digits

    labels = torch.arange(10).repeat_interleave(n_per_class)
    x = sample_digits(loss.denoiser(model), labels, guidance=1.0, steps=steps, seed=seed, solver="ddim")
    return float(digits_fd(x, reference, classifier=classifier))


def run_arm(arm: str, seed: int, cfg: dict, data: tuple, test: tuple, intervals: dict, classifier) -> dict:
    beta, kind, balancer = ARMS[arm]
    loss = DiffusionLoss(schedule(), "eps")
    buckets = uniform_intervals(T, K)

    def evaluate(model, step):
        metrics = {"fd": sample_fd(loss, model, classifier, test[0], n_per_class=cfg["n_per_class"],
                                   steps=cfg["sample_steps"])}
        for j, v in enumerate(loss_by_interval(model, loss, test[0], buckets, labels=test[1])):
            metrics[f"bucket{j}"] = v
        return metrics

    net = make_net(beta, seed)
    t0, cpu0 = time.perf_counter(), time.process_time()
    _, history = train_intervals(net, loss, data, train_config(cfg, seed),
                                 intervals=intervals[kind] if kind is not None else None, balancer=balancer,
                                 eval_fn=evaluate, eval_every=cfg["eval_every"])
    evals = history["evals"]
    return {"seed": seed, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
            "steps": [e["step"] for e in evals],
            "fd": [e["fd"] for e in evals],
            "bucket_loss": [[e[f"bucket{j}"] for j in range(K)] for e in evals],
            "weights": history["weights"], "intervals": history["intervals"],
            "final_train_loss": float(np.mean(history["loss"][-20:])), "model": net}


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo

    cfg = QUICK if quick else FULL
    arms = QUICK_ARMS if quick else tuple(ARMS)
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    classifier = zoo.load("digits_classifier")
    sched = schedule()
    intervals = {"uniform": uniform_intervals(T, K), "dp": cluster_timesteps(log_snr_values(sched), K)}
    raw_snr_intervals = cluster_timesteps(snr_values(sched), K)

    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    # every arm on the first seed, the main arms on the others
    jobs = [(arm, seed) for i, seed in enumerate(cfg["seeds"]) for arm in arms if i == 0 or arm in MAIN_ARMS]
    vanilla_model = None
    for arm, seed in bench_progress(jobs, desc="dtr_ant: arms"):
        r = run_arm(arm, seed, cfg, (train.x, train.y), (test.x, test.y), intervals, classifier)
        model = r.pop("model")
        if arm == "vanilla" and seed == cfg["seeds"][0]:
            vanilla_model = model
        runs[arm].append(r)

    # task affinity of the trained vanilla model (raw weights) over evenly spaced timesteps
    tas_steps = np.linspace(0, T - 1, cfg["tas_timesteps"]).round().astype(int).tolist()
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(train.x.shape[0], generator=g)[:cfg["tas_images"]]
    loss = DiffusionLoss(sched, "eps")
    t0 = time.perf_counter()
    tas = task_affinity(vanilla_model, loss, train.x[pick], tas_steps, labels=train.y[pick]).numpy()
    tas_seconds = time.perf_counter() - t0
    tas_groups = cluster_timesteps(tas_cost(tas), K)
    tas_intervals = [(tas_steps[lo], tas_steps[hi]) for lo, hi in tas_groups]
    # block structure: mean affinity of timestep pairs within the same log-SNR interval vs across intervals
    group = np.searchsorted([hi for _, hi in intervals["dp"]], tas_steps)
    same = group[:, None] == group[None, :]
    off = ~np.eye(len(tas_steps), dtype=bool)
    tas_within = float(tas[same & off].mean())
    tas_across = float(tas[~same].mean())
    near = np.abs(np.subtract.outer(np.arange(len(tas_steps)), np.arange(len(tas_steps)))) == 1
    far = np.abs(np.subtract.outer(np.arange(len(tas_steps)), np.arange(len(tas_steps)))) >= len(tas_steps) // 2

    table = {}
    for arm in arms:
        finals = [r["fd"][-1] for r in runs[arm]]
        buckets = np.array([r["bucket_loss"][-1] for r in runs[arm]])
        table[arm] = {"fd_mean": float(np.mean(finals)), "fd_std": float(np.std(finals)), "fd_per_seed": finals,
                      "bucket_loss_mean": buckets.mean(0).tolist(),
                      "seconds_mean": float(np.mean([r["seconds"] for r in runs[arm]])),
                      "cpu_seconds_mean": float(np.mean([r["cpu_seconds"] for r in runs[arm]])),
                      "seeds": [r["seed"] for r in runs[arm]]}
        w = runs[arm][0]["weights"][-1][1]
        if w is not None:
            table[arm]["final_weights"] = w

    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    ax = axes[0, 0]
    for arm in arms:
        fds = np.array([r["fd"] for r in runs[arm]])
        ax.plot(runs[arm][0]["steps"], fds.mean(0), marker="o", label=f"{arm} ({len(fds)} seeds)",
                lw=2 if arm in MAIN_ARMS else 1)
    ax.set_xlabel("training step")
    ax.set_ylabel("digits-FD (mean over seeds)")
    ax.set_yscale("log")
    ax.set_title("convergence (EMA model, DDIM)")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    base = np.array(table["vanilla"]["bucket_loss_mean"])
    for arm in arms:
        ax.plot(range(K), np.array(table[arm]["bucket_loss_mean"]) / base, marker="o", label=arm)
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_xticks(range(K), [f"{lo}-{hi}" for lo, hi in uniform_intervals(T, K)], fontsize=7)
    ax.set_xlabel("timestep bucket")
    ax.set_ylabel("held-out eps-MSE / vanilla's")
    ax.set_title("final per-bucket loss relative to vanilla")
    ax = axes[0, 2]
    for arm in [a for a in ("vanilla", "dtr0.8", "ant-uw-dp") if a in arms]:
        curves = np.array([r["bucket_loss"] for r in runs[arm]]).mean(0)
        for j in (0, K - 1):
            ax.plot(runs[arm][0]["steps"], curves[:, j], marker=".", label=f"{arm} bucket {j}",
                    ls="-" if j == 0 else "--")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out eps-MSE")
    ax.set_title("per-bucket loss vs step (lowest / highest noise)")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    im = ax.imshow(tas, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(0, len(tas_steps), max(1, len(tas_steps) // 6)),
                  tas_steps[::max(1, len(tas_steps) // 6)], fontsize=7)
    ax.set_yticks(range(0, len(tas_steps), max(1, len(tas_steps) // 6)),
                  tas_steps[::max(1, len(tas_steps) // 6)], fontsize=7)
    for lo, _ in tas_groups[1:]:
        ax.axhline(lo - 0.5, color="k", lw=1)
        ax.axvline(lo - 0.5, color="k", lw=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("task affinity (vanilla model), lines: DP on TAS")
    ax = axes[1, 1]
    for arm in [a for a in arms if ARMS[a][2] in ("uw", "nash")]:
        w = np.array([ws for _, ws in runs[arm][0]["weights"]])
        steps = [s for s, _ in runs[arm][0]["weights"]]
        for j in range(K):
            ax.plot(steps, w[:, j], color=f"C{j}", ls="-" if "uw" in arm else ":", lw=1,
                    label=f"{arm} k={j}" if "dtr" not in arm else None)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_title("task weights: UW exp(-s_k)/2 (solid), Nash alpha (dotted)")
    ax.legend(fontsize=5, ncol=2)
    ax = axes[1, 2]
    rows = {"uniform": intervals["uniform"], "DP log-SNR": intervals["dp"], "DP raw SNR": raw_snr_intervals,
            "DP TAS": tas_intervals}
    for i, ivs in enumerate(rows.values()):
        for j, (lo, hi) in enumerate(ivs):
            ax.barh(i, hi - lo + 1, left=lo, color=f"C{j}", edgecolor="k")
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel("timestep")
    ax.set_title(f"k = {K} intervals")
    fig.tight_layout()

    def fmt(arm):
        return f"{arm} {table[arm]['fd_mean']:.2f}+-{table[arm]['fd_std']:.2f}"

    summary = (f"final digits-FD after {cfg['steps']} steps (main arms {len(cfg['seeds'])} seeds, mean+-std): "
               + ", ".join(fmt(a) for a in arms)
               + f" | TAS within/across log-SNR intervals {tas_within:.2f}/{tas_across:.2f}"
               + f" | log-SNR DP {intervals['dp']}, raw-SNR DP {raw_snr_intervals}")
    return {"config": {**cfg, "seeds": list(cfg["seeds"]), "net": NET, "schedule": "vp_discrete linear 1000",
                       "k": K, "dtr_alpha": DTR_ALPHA, "batch_size": 80, "lr": 1e-3,
                       "main_arms": list(MAIN_ARMS)},
            "arms": {a: {"dtr_beta": ARMS[a][0], "intervals": ARMS[a][1], "balancer": ARMS[a][2]} for a in arms},
            "intervals": {"uniform": intervals["uniform"], "log_snr_dp": intervals["dp"],
                          "raw_snr_dp": raw_snr_intervals, "tas_dp": tas_intervals},
            "table": table, "runs": runs,
            "tas": {"timesteps": tas_steps, "matrix": tas.tolist(), "within_interval_mean": tas_within,
                    "across_interval_mean": tas_across, "neighbour_mean": float(tas[near].mean()),
                    "far_mean": float(tas[far].mean()), "seconds": tas_seconds},
            "summary": summary}, fig


register_bench("dtr_ant", "DTR channel routing and ANT timestep-interval multi-task training (UW / PCGrad / Nash) "
                          "on a tiny digits DiT: digits-FD and per-bucket loss vs step, task affinity")(_run)
