"""REPA (Yu et al., ICLR 2025, arXiv 2410.06940) on 8 x 8 digits: does aligning a tiny SiT's hidden tokens with a
frozen encoder's patch features speed up training?

Setup. A class-conditional DiT (``nets.dit.DiT``: patch 2 -> 16 tokens, hidden 64, depth 4, 4 heads) trained as SiT
(``methods.repa.sit_loss``: flow path x_t = (1 - t) x0 + t eps, velocity target, label dropout 0.1) with AdamW
(lr 1e-3, batch 128, warm-up 50, EMA 0.99) on the digits train split, for the same number of steps in every arm;
one Trainer seed for all arms, so every arm sees the same data order, the same t / noise / label-dropout draws and
the same DiT initialisation. Arms: lambda in {0 (baseline), 0.1, 0.5, 1} at k = 2, and k in {1, 3} at lambda = 0.5,
all with the zoo digits classifier's 4 x 4 conv features (64 channels) as the frozen target; plus the encoder of a
denoising autoencoder trained here on the digits train split (32 channels, lambda 0.5, k = 2), and, when the zoo
``captions_clip`` asset is built, the small CLIP's image-tower patch tokens on the digits drawn as its captioned RGB
digits (``methods.repa.CLIPPatchEncoder``; lambda 0.5, k = 2).

Measured. digits-FD (``metrics.digits_fd``, zoo classifier features; samples vs the test split) of the EMA net every
``eval_every`` steps: class-balanced samples from fixed noise, DDIM (= Euler on the flow path) with ``SAMPLE_STEPS``
steps, no guidance. Speed-up of an arm: the baseline's final step count over the (linearly interpolated) step at
which the arm first reaches the baseline's final FD. Linear probe: test accuracy of a logistic regression on the
mean-pooled h^(k) (k = 2 for every arm, so the columns compare; null class label) of the final EMA nets at t = 0.5.
"""

from __future__ import annotations

import math
import time

import torch

from ..core import NetworkDenoiser
from ..data import load_dataset
from ..methods.repa import (ClassifierPatchEncoder, CLIPPatchEncoder, REPALoss, REPAModel, linear_probe_accuracy,
                            sit_loss, train_denoising_autoencoder)
from ..metrics import digits_fd
from ..nets import build_net
from ..training import TrainConfig, Trainer
from . import bench_progress, register_bench

NET = {"name": "dit", "in_channels": 1, "image_size": 8, "patch_size": 2, "hidden_size": 64, "depth": 4,
       "num_heads": 4, "num_classes": 10}
TRAIN = {"batch_size": 128, "lr": 1e-3, "warmup_steps": 50, "ema_decay": 0.99}
SAMPLE_STEPS = 20
PROBE_T = 0.5
PROBE_DEPTH = 2
# (name, encoder, lambda, k)
ARMS = (("baseline", "classifier", 0.0, 2), ("lam0.1_k2", "classifier", 0.1, 2), ("lam0.5_k2", "classifier", 0.5, 2),
        ("lam1_k2", "classifier", 1.0, 2), ("lam0.5_k1", "classifier", 0.5, 1), ("lam0.5_k3", "classifier", 0.5, 3),
        ("dae_lam0.5_k2", "dae", 0.5, 2), ("clip_lam0.5_k2", "clip", 0.5, 2))
QUICK_ARMS = ("baseline", "lam0.5_k2")
FULL = {"steps": 800, "eval_every": 200, "n_eval_per_class": 50, "dae_steps": 1500}
QUICK = {"steps": 300, "eval_every": 150, "n_eval_per_class": 20, "dae_steps": 200}


def clip_encoder() -> CLIPPatchEncoder | None:
    """The zoo ``captions_clip`` image tower as a patch encoder, or None while that asset is not built."""
    from .. import zoo

    try:
        clip = zoo.load("captions_clip")
    except (zoo.ZooError, ImportError):
        return None
    return CLIPPatchEncoder(clip) if hasattr(clip, "image_patch_features") else None


def _sample(net: torch.nn.Module, labels: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    from ..zoo.recipes import sample_digits

    den = NetworkDenoiser(net, sit_loss().schedule, "velocity")
    return sample_digits(den, labels, guidance=1.0, steps=steps, seed=seed, solver="ddim")


def steps_to_reach(steps: list[int], fd: list[float], target: float) -> float | None:
    """First step at which the curve (steps, fd) reaches ``fd <= target``, linearly interpolated between the two
    evaluations around the crossing (None if it never does)."""
    prev_s, prev_f = 0, math.inf
    for s, f in zip(steps, fd):
        if f <= target:
            if not math.isfinite(prev_f):
                return float(s)
            return prev_s + (s - prev_s) * (prev_f - target) / (prev_f - f)
        prev_s, prev_f = s, f
    return None


def train_arm(encoder: torch.nn.Module, weight: float, depth: int, data: tuple, *, steps: int, eval_every: int,
              eval_fn, seed: int = 0) -> tuple[Trainer, dict, float]:
    """Train one arm (the DiT built under ``seed``, then the projector), return (trainer, history, seconds)."""
    torch.manual_seed(seed)
    net = build_net(NET)
    model = REPAModel(net, depth, encoder.feature_dim)
    loss = REPALoss(encoder, weight=weight, base_loss=sit_loss(label_dropout=0.1))
    cfg = TrainConfig(steps=steps, eval_every=eval_every, seed=seed, progress=False, log_every=steps, **TRAIN)
    trainer = Trainer(model, loss, data, cfg, eval_fn=eval_fn)
    t0 = time.perf_counter()
    history = trainer.fit()
    return trainer, history, time.perf_counter() - t0


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo

    sizes = QUICK if quick else FULL
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    data = (train.x, train.y)
    classifier = zoo.load("digits_classifier")
    encoders = {"classifier": ClassifierPatchEncoder(classifier)}
    t0 = time.perf_counter()
    if not quick and (clip := clip_encoder()) is not None:
        encoders["clip"] = clip
    arms = [a for a in ARMS if (not quick or a[0] in QUICK_ARMS) and (a[1] != "clip" or "clip" in encoders)]
    if any(a[1] == "dae" for a in arms):
        encoders["dae"] = train_denoising_autoencoder(train.x, steps=sizes["dae_steps"], seed=0)
    dae_seconds = time.perf_counter() - t0
    labels = torch.arange(10).repeat_interleave(sizes["n_eval_per_class"])

    def eval_fn(model, step):
        samples = _sample(model.net, labels, SAMPLE_STEPS, seed=1234)
        return {"digits_fd": digits_fd(samples, test.x, classifier=classifier)}

    results = {}
    for name, enc_name, weight, depth in bench_progress(arms, desc="repa: arms"):
        trainer, history, seconds = train_arm(encoders[enc_name], weight, depth, data, steps=sizes["steps"],
                                              eval_every=sizes["eval_every"], eval_fn=eval_fn)
        net = trainer.ema_model.net
        results[name] = {
            "encoder": enc_name, "lambda": weight, "k": depth, "train_seconds": seconds,
            "steps": [e["step"] for e in history["evals"]],
            "digits_fd": [e["metrics"]["digits_fd"] for e in history["evals"]],
            "final_loss": sum(history["loss"][-20:]) / len(history["loss"][-20:]),
            "linear_probe": linear_probe_accuracy(net, PROBE_DEPTH, (train.x, train.y), (test.x, test.y), t=PROBE_T),
        }
    torch.manual_seed(0)
    probe_init = linear_probe_accuracy(build_net(NET), PROBE_DEPTH, (train.x, train.y), (test.x, test.y), t=PROBE_T)

    base = results["baseline"]
    target, total = base["digits_fd"][-1], base["steps"][-1]
    for r in results.values():
        reached = steps_to_reach(r["steps"], r["digits_fd"], target)
        r["steps_to_baseline_fd"] = reached
        r["speedup"] = total / reached if reached else None

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, r in results.items():
        axes[0].plot(r["steps"], r["digits_fd"], marker="o", label=name, lw=2.5 if name == "baseline" else 1.2,
                     color="black" if name == "baseline" else None)
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel(f"digits-FD (EMA, {SAMPLE_STEPS}-step Euler, no guidance)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[0].set_title("FD vs step (lower is better)", fontsize=9)
    names = list(results)
    axes[1].bar(range(len(names)), [results[n]["digits_fd"][-1] for n in names], color="tab:blue")
    axes[1].set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
    axes[1].set_title(f"final digits-FD at step {total}", fontsize=9)
    axes[2].bar(range(len(names)), [results[n]["linear_probe"] for n in names], color="tab:green")
    axes[2].axhline(probe_init, color="gray", ls="--", label="untrained DiT")
    axes[2].set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize=7)
    axes[2].set_title(f"linear probe on mean-pooled h^({PROBE_DEPTH}) at t = {PROBE_T}", fontsize=9)
    fig.tight_layout()

    def fmt(r):
        sp = f"x{r['speedup']:.2f}" if r["speedup"] else "never"
        return f"FD {r['digits_fd'][-1]:.2f}, probe {r['linear_probe']:.3f}, speed-up {sp}"

    summary = f"steps {total}; " + "; ".join(f"{n}: {fmt(r)}" for n, r in results.items()) + \
        f"; untrained probe {probe_init:.3f}"
    return {"net": NET, "train": {**TRAIN, "steps": sizes["steps"]}, "sizes": sizes, "sample_steps": SAMPLE_STEPS,
            "probe": {"t": PROBE_T, "depth": PROBE_DEPTH, "untrained": probe_init}, "dae_seconds": dae_seconds,
            "arms": results, "summary": summary}, fig


register_bench("repa", "REPA: digits-FD vs step and linear probe of a tiny SiT for lambda in {0, 0.1, 0.5, 1}, "
                       "k in {1, 2, 3}, classifier vs denoising-AE targets")(_run)
