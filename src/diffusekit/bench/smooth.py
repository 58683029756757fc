"""Smooth Diffusion (Guo et al., CVPR 2024, arXiv 2312.04410): does the step-wise variation regulariser make
DDIM-inverted interpolation smoother on digits?

The zoo ``digits_unet`` (class-conditional, eps, linear VP T = 1000) is fine-tuned once per lambda_reg with LoRA
rank 8 (``methods.smooth_diffusion.finetune_smooth``: AdamW, constant lr, batch 64, no EMA, the digits train
split, label dropout 0.1). All arms use the same seed, so they see the same batches, times and noises: the only
difference is the regulariser (lambda_reg = 0 is the plain L_simple control). Each fine-tuned model is then
evaluated on the same held-out pairs of same-class test digits: DDIM inversion (eta = 0, trailing grid), slerp of
the two x_T over 16 frames with the class fixed, DDIM decoding; smoothness = per-pair std and max of the 15
consecutive-frame distances (pixel L2 and digits-classifier feature L2), averaged over pairs; inversion MSE of the
endpoints; the spread of the step-wise variation v on test digits (what L_reg pulls together); and quality:
digits-FD (samples vs the test split) and class accuracy of class-conditional DDIM samples at guidance 1.
"""

from __future__ import annotations

import time

import torch

from ..core import make_grid
from ..data import load_dataset
from ..methods.smooth_diffusion import evaluate_smoothness, finetune_smooth, variation_stats
from ..metrics import digits_features
from . import bench_progress, register_bench

FULL = {"lambdas": (0.0, 0.1, 1.0), "steps": 400, "batch_size": 64, "lr": 1e-3, "pairs": 20, "grid_steps": 20,
        "frames": 16, "fd_per_class": 50, "fd_steps": 20, "variation_batch": 256}
QUICK = {"lambdas": (0.0, 1.0), "steps": 60, "batch_size": 32, "lr": 2e-3, "pairs": 10, "grid_steps": 10,
         "frames": 16, "fd_per_class": 10, "fd_steps": 10, "variation_batch": 128}
LORA_RANK = 8
SHOW_PAIRS = 2


def same_class_pairs(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` pairs of distinct images of one class, classes in turn 0, 1, ..., 9, 0, ...: (x_a, x_b, labels)."""
    xa, xb, labels = [], [], []
    for j in range(n):
        c, k = j % 10, j // 10
        idx = (y == c).nonzero().flatten()
        xa.append(x[idx[2 * k]])
        xb.append(x[idx[2 * k + 1]])
        labels.append(c)
    return torch.stack(xa), torch.stack(xb), torch.tensor(labels)


def _arm_name(lam) -> str:
    return "pretrained" if lam is None else f"lambda={lam:g}"


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo
    from ..plotting import image_grid
    from ..zoo.recipes import evaluate_digits

    cfg = QUICK if quick else FULL
    base = zoo.load("digits_unet")
    classifier = zoo.load("digits_classifier")
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    x_a, x_b, labels = same_class_pairs(test.x, test.y, cfg["pairs"])
    ts = make_grid("trailing", base.schedule, cfg["grid_steps"])
    cond = {"class_labels": labels}

    def features(x):
        return digits_features(x, classifier)

    g = torch.Generator().manual_seed(123)
    pick = torch.randperm(len(test.x), generator=g)[:cfg["variation_batch"]]
    x_var, y_var = test.x[pick], test.y[pick]

    # show the pairs whose endpoints differ most (same-class pairs are often near-identical)
    shown = (x_a - x_b).flatten(1).norm(dim=1).argsort(descending=True)[:SHOW_PAIRS]
    arms, strips = {}, {}
    for lam in bench_progress([None, *cfg["lambdas"]], desc="smooth: arms"):
        t0 = time.perf_counter()
        if lam is None:
            den, info = base, {"seconds": 0.0}
        else:
            den, info = finetune_smooth(base, train.x, train.y, lambda_reg=lam, steps=cfg["steps"],
                                        batch_size=cfg["batch_size"], lr=cfg["lr"], lora_rank=LORA_RANK, seed=0)
        train_seconds = time.perf_counter() - t0
        metrics, frames = evaluate_smoothness(den, x_a, x_b, ts, cond=cond, frames=cfg["frames"], features=features)
        metrics["variation"] = variation_stats(den, x_var, cond={"class_labels": y_var},
                                               generator=torch.Generator().manual_seed(7))
        quality, _ = evaluate_digits(den, classifier, n_per_class=cfg["fd_per_class"], guidance=1.0,
                                     steps=cfg["fd_steps"], seed=0, solver="ddim")
        metrics["digits_fd"] = quality["digits_fd"]
        metrics["class_accuracy"] = quality["class_accuracy"]
        metrics["train_seconds"] = train_seconds
        if lam is not None:
            metrics["final_loss"] = info["final_loss"]
            metrics["mean_variation"] = info["mean_variation"]
        arms[_arm_name(lam)] = metrics
        strips[_arm_name(lam)] = frames[shown]

    names = list(arms)
    fig = plt.figure(figsize=(14, 9))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.3, 1.0])
    ax = fig.add_subplot(grid[0, :])
    rows = torch.cat([strips[n][p] for p in range(SHOW_PAIRS) for n in names])
    side = x_a.shape[-1]
    ax.imshow(image_grid(rows, cfg["frames"]), cmap="gray", vmin=0, vmax=255)
    ax.set_yticks([(i + 0.5) * (side + 1) for i in range(len(names) * SHOW_PAIRS)],
                  [f"pair {p} {n}" for p in range(SHOW_PAIRS) for n in names], fontsize=8)
    ax.set_xticks([])
    ax.set_title(f"DDIM-inversion slerp interpolation, {cfg['frames']} frames, {cfg['grid_steps']} DDIM steps, "
                 "class fixed", fontsize=9)
    panels = [("pixel std of consecutive distances", lambda m: m["pixel"]["std"]),
              ("feature std of consecutive distances", lambda m: m["feature"]["std"]),
              ("inversion MSE", lambda m: m["inversion_mse"]),
              ("digits-FD (guidance 1)", lambda m: m["digits_fd"])]
    colors = ["0.6"] + [f"C{i}" for i in range(len(names) - 1)]
    for k, (title, get) in enumerate(panels):
        ax = fig.add_subplot(grid[1, k])
        values = [get(arms[n]) for n in names]
        ax.bar(range(len(names)), values, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()

    def line(n):
        m = arms[n]
        return (f"{n}: pixel std/max {m['pixel']['std']:.3f}/{m['pixel']['max']:.3f}, feature std "
                f"{m['feature']['std']:.3f}, inversion MSE {m['inversion_mse']:.4f}, v std/mean "
                f"{m['variation']['std_over_mean']:.3f}, FD {m['digits_fd']:.2f}, acc {m['class_accuracy']:.3f}")

    result = {"config": {**cfg, "lambdas": list(cfg["lambdas"]), "lora_rank": LORA_RANK, "sampler": "ddim eta=0",
                         "grid": "trailing"},
              "arms": arms, "summary": " | ".join(line(n) for n in names)}
    return result, fig


register_bench("smooth", "Smooth Diffusion: step-wise variation regulariser on digits_unet (LoRA), smoothness of "
                         "DDIM-inversion slerp interpolation, inversion MSE, FD")(_run)
