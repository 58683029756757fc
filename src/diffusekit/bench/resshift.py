"""ResShift (pixel space, T = 4) vs a conditional DDPM SR baseline, x2 and x4 SR, on 8 x 8 digits and on
16 x 16 natural-image patches.

HR images: the digits train split, or 20,000 crops of the train images of the ``patches`` dataset, in [-1, 1];
the LR input is the 2 x 2 / 4 x 4 block average, upsampled back by the pseudo-inverse (= nearest neighbour), no
measurement noise. Both models are the same small UNet (base 32, mults (1, 2), no attention) with the upsampled
LR concatenated as an extra input channel, trained for the same number of optimizer steps (AdamW lr 2e-3, batch
64, no EMA; 800 steps on digits, 600 on patches), so neither is favoured by CPU load. ResShift: kappa 2, p 0.2,
power 0.3, x0 prediction, 4 posterior steps. Baseline: eps prediction, linear VP schedule (1000 steps), DDPM
ancestral sampling with 4 and 50 uniform steps. PSNR / SSIM (data_range 2) are means over the test images (the
digits test split; 256 textured crops, pixel std >= 0.1, of the held-out patches test images), one sample per
image from fixed seeds; seconds is sampling wall time for the whole batch; train_seconds / train_steps report
each model's training.
"""

from __future__ import annotations

import time

import torch

from ..core import VPDiscrete
from ..methods.resshift import ResShift, sample_ddpm_sr, sr_pairs, train_ddpm_sr, train_resshift
from ..metrics import psnr, ssim
from ..plotting import grouped_psnr_bars
from . import bench_progress, register_bench
from ._images import SR_TRAIN_PATCHES_QUICK, sr_images

TASKS = {"sr2": 2, "sr4": 4}
METHODS = ("pinv", "ddpm@4", "ddpm@50", "resshift@4")
NFE = {"pinv": 0, "ddpm@4": 4, "ddpm@50": 50, "resshift@4": 4}
DATASETS = ("digits", "patches")
RESSHIFT_OPTIONS = {"kappa": 2.0, "min_noise_level": 0.2, "power": 0.3}
TRAIN_STEPS = {"digits": 800, "patches": 600}


def _run_dataset(name: str, quick: bool, train_steps: int, n_show: int):
    if quick:
        x_train, x_test = sr_images(name, n_test=32 if name == "digits" else 12,
                                    n_train_patches=SR_TRAIN_PATCHES_QUICK)
    else:
        x_train, x_test = sr_images(name, n_test=None)
    table, shown, train_info = {}, {}, {}
    for k, (task, factor) in enumerate(bench_progress(TASKS.items(), desc=f"resshift {name}: tasks", total=len(TASKS))):
        x, y = sr_pairs(x_train, factor)
        _, yt = sr_pairs(x_test, factor)
        rs = ResShift(4, **RESSHIFT_OPTIONS)
        net, info_rs = train_resshift(rs, x, y, steps=train_steps, max_seconds=None, seed=k)
        den, info_dd = train_ddpm_sr(VPDiscrete.named("linear", 1000), x, y, steps=train_steps, max_seconds=None,
                                     seed=k)
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
    return {"num_train_images": len(x_train), "num_test_images": len(x_test), "train": train_info,
            "table": table}, shown, x_test.shape[-1]


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import image_grid

    train_steps = {name: 8 for name in DATASETS} if quick else TRAIN_STEPS
    n_show = 6
    fig, axes = plt.subplots(2, 3, figsize=(13, 10))
    results, summaries = {}, []
    for d, name in enumerate(bench_progress(DATASETS, desc="resshift: datasets")):
        results[name], shown, side = _run_dataset(name, quick, train_steps[name], n_show)
        table = results[name]["table"]
        for ax, (task, rows) in zip(axes[d], shown.items()):
            ax.imshow(image_grid(torch.cat(list(rows.values())), n_show), cmap="gray", vmin=0, vmax=255)
            ax.set_yticks([(i + 0.5) * (side + 1) for i in range(len(rows))], list(rows))
            ax.set_xticks([])
            ax.set_title(f"{name}: {task}", fontsize=9)
        ax = axes[d, -1]
        grouped_psnr_bars(ax, table, TASKS, METHODS, labels={m: f"{m} (NFE {NFE[m]})" for m in METHODS})
        ax.set_xticks(range(len(TASKS)), list(TASKS))
        ax.set_title(f"{name}: mean PSNR over {results[name]['num_test_images']} test images", fontsize=9)
        summaries.append(f"{name} PSNR/SSIM " + "; ".join(
            f"{t}: " + ", ".join(f"{m} {table[t][m]['psnr']:.2f}/{table[t][m]['ssim']:.3f}" for m in METHODS)
            for t in TASKS))
    fig.tight_layout()
    rs = ResShift(4, **RESSHIFT_OPTIONS)
    return {"train_steps": train_steps, "resshift": rs.config,
            "baseline": "conditional DDPM, eps, linear VP 1000, ancestral, uniform grid",
            "datasets": results, "summary": " | ".join(summaries)}, fig


register_bench("resshift", "ResShift (T=4) vs conditional DDPM SR (4 / 50 steps), SR x2 / x4 on digits and "
                           "natural patches")(_run)
