"""Optimal boundary conditions (Ma et al., ICLR 2024; Monte-Carlo variant) for a conditional DDPM SR model,
x2 SR on 8 x 8 digits and on 16 x 16 natural-image patches, deterministic DDIM (eta = 0) with 10 and 50 uniform
steps.

The conditional DDPM SR baseline of ``bench resshift`` (small UNet, eps prediction, linear VP 1000, upsampled LR
concatenated) is trained for a fixed number of steps on the digits train split or on 20,000 crops of the patches
train images; patch test images are textured crops (pixel std >= 0.1) of the held-out test images. K candidates
x_T ~ N(0, I) (fixed seed) are scored by mean PSNR on a reference set of the first N_ref train pairs; the best one
is selected, separately for each step count. On the first N_test test images we compare: random x_T (mean over the
K candidates, each used as a shared x_T, = mean over random draws), x_T = 0, the selected OBC x_T, and a per-image
oracle (best of the K candidates per test image by PSNR; an upper bound for any shared x_T chosen from those K).
PSNR / SSIM (data_range 2) are means over the test images; seconds is DDIM wall time for the test images with one
x_T (oracle: all K); select_seconds is the reference-set search.
"""

from __future__ import annotations

import time

import torch

from ..core import VPDiscrete
from ..methods.obc import decode_with_boundary, select_boundary_condition, sr_with_boundary
from ..methods.resshift import sr_pairs, train_ddpm_sr
from ..metrics import psnr, ssim
from ..plotting import grouped_psnr_bars
from . import bench_progress, register_bench
from ._images import SR_TRAIN_PATCHES, SR_TRAIN_PATCHES_QUICK, sr_images

METHODS = ("random", "zero", "obc", "oracle")
DATASETS = ("digits", "patches")
STEPS = (10, 50)
QUICK_STEPS = (4, 8)
TRAIN_STEPS = {"digits": 800, "patches": 600}


@torch.no_grad()
def _all_candidates(den, cands, hr, lr, steps, chunk):
    """Per-(candidate, image) PSNR and SSIM matrices (K, N)."""
    n = lr.shape[0]
    ps, ss = [], []
    for start in range(0, cands.shape[0], chunk):
        c = cands[start:start + chunk]
        k = c.shape[0]
        x_T = c[:, None].expand(k, n, *c.shape[1:]).reshape(k * n, *c.shape[1:]).contiguous()
        lr_k = lr.repeat(k, 1, 1, 1)
        hr_k = hr.repeat(k, 1, 1, 1)
        out = decode_with_boundary(den, x_T, lr_k, steps)
        ps.append(psnr(out, hr_k).reshape(k, n))
        ss.append(ssim(out, hr_k, data_range=2.0).reshape(k, n))
    return torch.cat(ps).double(), torch.cat(ss).double()


def _run_dataset(name: str, quick: bool, n_show: int):
    train_steps, k_cand, n_ref, n_test = (20, 6, 6, 12) if quick else (TRAIN_STEPS[name], 32, 32, 96)
    steps_list = QUICK_STEPS if quick else STEPS
    x_train, x_test = sr_images(name, n_test=n_test,
                                n_train_patches=SR_TRAIN_PATCHES_QUICK if quick else SR_TRAIN_PATCHES)
    x, y = sr_pairs(x_train, 2)
    _, yt = sr_pairs(x_test, 2)
    den, info = train_ddpm_sr(VPDiscrete.named("linear", 1000), x, y, steps=train_steps, max_seconds=None, seed=0)
    cands = torch.randn(k_cand, *x.shape[1:], generator=torch.Generator().manual_seed(1234))
    ref_hr, ref_lr = x[:n_ref], y[:n_ref]

    table, selection, rows = {}, {}, {"truth": x_test[:n_show], "lr_up": yt[:n_show]}
    for steps in bench_progress(steps_list, desc=f"obc {name}: step counts"):
        t0 = time.perf_counter()
        best, scores = select_boundary_condition(den, cands, ref_hr, ref_lr, ts=steps)
        sel_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        p_all, s_all = _all_candidates(den, cands, x_test, yt, steps, chunk=max(1, 1536 // n_test))
        all_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out_zero = sr_with_boundary(den, torch.zeros_like(cands[0]), yt, steps)
        zero_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out_obc = sr_with_boundary(den, cands[best], yt, steps)
        obc_s = time.perf_counter() - t0
        idx = p_all.argmax(0)
        cols = torch.arange(p_all.shape[1])
        per_cand = p_all.mean(1)
        table[f"ddim@{steps}"] = {
            "random": {"psnr": float(per_cand.mean()), "psnr_std_over_draws": float(per_cand.std()),
                       "ssim": float(s_all.mean()), "seconds": all_s / k_cand},
            "zero": {"psnr": float(psnr(out_zero, x_test).mean()),
                     "ssim": float(ssim(out_zero, x_test, data_range=2.0).mean()), "seconds": zero_s},
            "obc": {"psnr": float(psnr(out_obc, x_test).mean()),
                    "ssim": float(ssim(out_obc, x_test, data_range=2.0).mean()), "seconds": obc_s,
                    "test_rank_among_candidates": int((per_cand > per_cand[best]).sum()) + 1},
            "oracle": {"psnr": float(p_all[idx, cols].mean()), "ssim": float(s_all[idx, cols].mean()),
                       "seconds": all_s},
        }
        selection[f"ddim@{steps}"] = {"best_index": best, "ref_psnr_best": float(scores[best]),
                                      "ref_psnr_mean": float(scores.mean()), "ref_psnr_min": float(scores.min()),
                                      "ref_test_corr": float(torch.corrcoef(torch.stack([scores, per_cand]))[0, 1]),
                                      "select_seconds": sel_s}
        if steps == steps_list[0]:
            rows[f"random@{steps}"] = sr_with_boundary(den, cands[0], yt[:n_show], steps)
            rows[f"zero@{steps}"] = out_zero[:n_show]
            rows[f"obc@{steps}"] = out_obc[:n_show]
    result = {"num_test_images": n_test, "num_candidates": k_cand, "num_reference": n_ref,
              "train_steps": train_steps, "train": info, "selection": selection, "table": table}
    return result, rows, x_test.shape[-1]


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import image_grid

    n_show = 6
    fig, axes = plt.subplots(2, 2, figsize=(11, 10))
    results, summaries = {}, []
    for d, name in enumerate(bench_progress(DATASETS, desc="obc: datasets")):
        results[name], rows, side = _run_dataset(name, quick, n_show)
        table = results[name]["table"]
        ax = axes[d, 0]
        ax.imshow(image_grid(torch.cat(list(rows.values())), n_show), cmap="gray", vmin=0, vmax=255)
        ax.set_yticks([(i + 0.5) * (side + 1) for i in range(len(rows))], list(rows))
        ax.set_xticks([])
        ax.set_title(f"{name} SR x2 (test)", fontsize=9)
        ax = axes[d, 1]
        keys = list(table)
        grouped_psnr_bars(ax, table, keys, METHODS)
        ax.set_xticks(range(len(keys)), keys)
        lo = min(table[k][m]["psnr"] for k in keys for m in METHODS)
        ax.set_ylim(lo - 1.0, None)
        ax.set_title(f"{name}: K={results[name]['num_candidates']} candidates, |R|={results[name]['num_reference']}, "
                     f"{results[name]['num_test_images']} test images", fontsize=9)
        summaries.append(f"{name} PSNR/SSIM " + "; ".join(
            f"{k}: " + ", ".join(f"{m} {table[k][m]['psnr']:.2f}/{table[k][m]['ssim']:.3f}" for m in METHODS)
            for k in keys))
    fig.tight_layout()
    return {"model": "conditional DDPM, eps, linear VP 1000, DDIM eta=0, uniform grid", "datasets": results,
            "summary": " | ".join(summaries)}, fig


register_bench("obc", "Optimal boundary condition (shared x_T, Monte-Carlo) for DDIM SR x2 on digits and "
                      "natural patches")(_run)
