"""ResShift (pixel space, T = 4) vs a conditional DDPM SR baseline on 8 x 8 digits, x2 and x4 SR.

HR images are the digits train split in [-1, 1]; the LR input is the 2 x 2 / 4 x 4 block average,
upsampled back to 8 x 8 by the pseudo-inverse (= nearest neighbour), no measurement noise. Both models
are the same small UNet (base 32, mults (1, 2), no attention) with the upsampled LR concatenated as an
extra input channel, trained with the same wall-clock budget (AdamW lr 2e-3, batch 64, no EMA).
ResShift: kappa 2, p 0.2, power 0.3, x0 prediction, 4 posterior steps. Baseline: eps prediction, linear
VP schedule (1000 steps), DDPM ancestral sampling with 4 and 50 uniform steps. PSNR / SSIM (data_range 2)
are means over the digits test split (one sample per image, fixed seeds); seconds is sampling wall time
for the whole batch; train_seconds / train_steps report each model's training.
"""

from __future__ import annotations

import time

import torch

from ..core import VPDiscrete
from ..methods.resshift import ResShift, sample_ddpm_sr, sr_pairs, train_ddpm_sr, train_resshift
from ..metrics import psnr, ssim
from ..plotting import grouped_psnr_bars
from . import register_bench

TASKS = {"sr2": 2, "sr4": 4}
METHODS = ("pinv", "ddpm@4", "ddpm@50", "resshift@4")
NFE = {"pinv": 0, "ddpm@4": 4, "ddpm@50": 50, "resshift@4": 4}


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data import load_dataset
    from ..plotting import image_grid

    budget = 8.0 if quick else 55.0
    n = 64 if quick else None
    n_show = 6
    x_train = load_dataset("digits", "train").x
    x_test = load_dataset("digits", "test").x
    if n is not None:
        x_test = x_test[:n]
    table, shown, train_info = {}, {}, {}
    for k, (task, factor) in enumerate(TASKS.items()):
        x, y = sr_pairs(x_train, factor)
        _, yt = sr_pairs(x_test, factor)
        rs = ResShift(4, kappa=2.0, min_noise_level=0.2, power=0.3)
        net, info_rs = train_resshift(rs, x, y, max_seconds=budget, seed=k)
        den, info_dd = train_ddpm_sr(VPDiscrete.named("linear", 1000), x, y, max_seconds=budget, seed=k)
        train_info[task] = {"resshift": info_rs, "ddpm": info_dd}
        rows = {"truth": x_test[:n_show], "lr_up": yt[:n_show]}
        table[task] = {}
        for method in METHODS:
            g = torch.Generator().manual_seed(1000 + k)
            t0 = time.perf_counter()
            with torch.no_grad():
                if method == "pinv":
                    out = yt
                elif method.startswith("ddpm"):
                    out = sample_ddpm_sr(den, yt, NFE[method], g)
                else:
                    out = rs.sample(net, yt, g)
            seconds = time.perf_counter() - t0
            out = out.clamp(-1, 1)
            table[task][method] = {"psnr": float(psnr(out, x_test).mean()),
                                   "ssim": float(ssim(out, x_test, data_range=2.0).mean()),
                                   "nfe": NFE[method], "seconds": seconds}
            rows[method] = out[:n_show]
        shown[task] = rows

    fig, axes = plt.subplots(1, 3, figsize=(13, 5))
    for ax, (task, rows) in zip(axes, shown.items()):
        ax.imshow(image_grid(torch.cat(list(rows.values())), n_show), cmap="gray", vmin=0, vmax=255)
        ax.set_yticks([(i + 0.5) * 9 for i in range(len(rows))], list(rows))
        ax.set_xticks([])
        ax.set_title(task, fontsize=9)
    ax = axes[-1]
    grouped_psnr_bars(ax, table, TASKS, METHODS, labels={m: f"{m} (NFE {NFE[m]})" for m in METHODS})
    ax.set_xticks(range(len(TASKS)), list(TASKS))
    ax.set_title(f"mean PSNR over {len(x_test)} digits test images", fontsize=9)
    fig.tight_layout()
    summary = "PSNR/SSIM " + "; ".join(
        f"{t}: " + ", ".join(f"{m} {table[t][m]['psnr']:.2f}/{table[t][m]['ssim']:.3f}" for m in METHODS)
        for t in TASKS)
    return {"num_images": len(x_test), "train_budget_s": budget, "train": train_info,
            "resshift": rs.config, "baseline": "conditional DDPM, eps, linear VP 1000, ancestral, uniform grid",
            "table": table, "summary": summary}, fig


register_bench("resshift", "ResShift (T=4) vs conditional DDPM SR (4 / 50 steps) on digits SR x2 / x4")(_run)
