"""Consecutive Brownian Bridge frame interpolation (Lyu et al. 2024, arXiv 2405.05953) against a conditional DDPM that
samples the middle frame from noise and against linear blending, on moving-digit triplets, vs sampling steps.

Data: triplets (frame i - g, frame i, frame i + g) of 24 x 24 one-digit moving-digit clips (1-2 px / frame; train
gaps g = 1, 2, so 1-4 px of motion between neighbours), pixel space in [-1, 1]; evaluation on gap-1 triplets of the
test split (held-out digit images). Models (``methods.bridge.training``): the same small UNet (base 16, mults
(1, 2), one res block, no attention) for both, neighbours concatenated along channels, trained for the same number
of AdamW steps (lr 2e-3, batch 64, grad-clip 1, no EMA):
* ``cbb``: the consecutive bridge (T = 1000, m_t = t / T, max_var 1, objective x_t - x, L1 weighted by
  min(1 / sqrt(delta_t), 5)); joint stepping of both bridges with eta = 1 and shared step noise, clip x0_hat;
  ``cbb_indep`` draws the two bridges' step noise independently (as the reference code);
* ``ddpm_ddim`` / ``ddpm_ancestral``: the conditional DDPM (eps, linear VP, T = 1000) from N(0, I), DDIM with
  eta = 0 / 1 on a uniform grid;
* ``blend``: (y + z) / 2.
Metrics (``methods.bridge.interpolate.interpolation_scores``): PSNR and SSIM (our torch SSIM, equal to
scikit-image's with a 7 x 7 window; data range 2) of every seed's sample to the true middle frame, means over test
triplets and seeds, and ``seed_std``, the across-seed pixel std (8 seeds, 4 in --quick). "steps" are sampler steps;
the CBB's NFE is 2 per step (one batched call over both bridges), the DDPM's 1 per step.
"""

from __future__ import annotations

import os
import tempfile

import torch

from ..methods.bridge import (ConsecutiveBrownianBridge, interpolation_scores, linear_blend, moving_digit_triplets,
                              sample_conditional_ddpm, train_cbb, train_conditional_ddpm)
from . import bench_progress, register_bench

BUDGETS = {True: {"train_clips": 60, "gaps": (1,), "train_steps": 40, "batch_size": 32, "test_triplets": 24,
                  "seeds": 4, "steps": (1, 2, 5), "show_steps": 2},
           False: {"train_clips": 500, "gaps": (1, 2), "train_steps": 600, "batch_size": 64, "test_triplets": 96,
                   "seeds": 8, "steps": (1, 2, 5, 10, 20, 50), "show_steps": 10}}
METHODS = ("cbb", "cbb_indep", "ddpm_ddim", "ddpm_ancestral")
QUICK_METHODS = ("cbb", "ddpm_ddim")


def _sampler(method: str, cbb, net, den, y, z, steps: int):
    if method == "cbb":
        return lambda g: cbb.sample(net, y, z, steps, generator=g)
    if method == "cbb_indep":
        return lambda g: cbb.sample(net, y, z, steps, generator=g, shared_noise=False)
    eta = 0.0 if method == "ddpm_ddim" else 1.0
    return lambda g: sample_conditional_ddpm(den, y, z, steps, eta=eta, generator=g)


def _gif_bytes(frames) -> bytes:
    from ..plotting import save_gif

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "clip.gif")
        save_gif(frames, path, fps=4)
        with open(path, "rb") as f:
            return f.read()


def _example_gif(cbb, net, steps: int) -> bytes:
    """Two test clips: every other frame kept, the dropped ones interpolated; panels truth | CBB | blend."""
    from ..domains.video.moving_digits import moving_digits
    from ..plotting import image_grid

    clips = moving_digits(2, seed=7, split="test").videos  # (2, 8, 1, 24, 24)
    kept = clips[:, 0::2]  # frames 0, 2, 4, 6
    y, z = kept[:, :-1].reshape(-1, 1, 24, 24), kept[:, 1:].reshape(-1, 1, 24, 24)
    with torch.no_grad():
        mid = cbb.sample(net, y, z, steps, generator=torch.Generator().manual_seed(0)).reshape(2, 3, 1, 24, 24)
    blend = linear_blend(y, z).reshape(2, 3, 1, 24, 24)
    frames = []
    for f in range(7):
        cbb_f = kept[:, f // 2] if f % 2 == 0 else mid[:, f // 2]
        blend_f = kept[:, f // 2] if f % 2 == 0 else blend[:, f // 2]
        panel = torch.stack([clips[:, f], cbb_f, blend_f], dim=1).reshape(-1, 1, 24, 24)
        grid = image_grid(panel, 3)
        frames.append(grid.repeat(4, axis=0).repeat(4, axis=1))
    return _gif_bytes(frames)


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import image_grid

    b = BUDGETS[quick]
    methods = QUICK_METHODS if quick else METHODS
    prev, mid, nxt = moving_digit_triplets(b["train_clips"], seed=0, split="train", gaps=b["gaps"])
    ty, tx, tz = (v[:b["test_triplets"]] for v in moving_digit_triplets(64, seed=1, split="test", gaps=(1,)))
    cbb = ConsecutiveBrownianBridge(1000)
    train = {}
    for name in bench_progress(("cbb", "ddpm"), desc="cbb: training"):
        if name == "cbb":
            net, train["cbb"] = train_cbb(cbb, prev, mid, nxt, steps=b["train_steps"], batch_size=b["batch_size"])
        else:
            den, train["ddpm"] = train_conditional_ddpm(prev, mid, nxt, steps=b["train_steps"],
                                                        batch_size=b["batch_size"])
    seeds = range(b["seeds"])
    table = {"blend": interpolation_scores(lambda g: linear_blend(ty, tz), tx, seeds=range(1))}
    shown = {"prev": ty[:8], "truth": tx[:8], "next": tz[:8], "blend": linear_blend(ty, tz)[:8]}
    jobs = [(m, s) for m in methods for s in b["steps"]]
    for method, steps in bench_progress(jobs, desc="cbb: sampling"):
        fn = _sampler(method, cbb, net, den, ty, tz, steps)
        scores = interpolation_scores(fn, tx, seeds=seeds)
        scores["nfe"] = steps * (2 if method.startswith("cbb") else 1)
        table.setdefault(method, {})[str(steps)] = scores
        if steps == b["show_steps"] and method in ("cbb", "ddpm_ddim"):
            shown[f"{method}@{steps}"] = fn(torch.Generator().manual_seed(0))[:8]

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    for ax, key, label in zip(axes[:3], ("psnr", "ssim", "seed_std"),
                              ("PSNR to the true middle frame (dB)", "SSIM", "across-seed pixel std")):
        for method in methods:
            ax.plot(b["steps"], [table[method][str(s)][key] for s in b["steps"]], "o-", label=method)
        if key != "seed_std":
            ax.axhline(table["blend"][key], color="k", ls="--", label="blend (y+z)/2")
        ax.set_xscale("log")
        ax.set_xlabel("sampler steps")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[3].imshow(image_grid(torch.cat(list(shown.values())), 8), cmap="gray", vmin=0, vmax=255)
    axes[3].set_yticks([(i + 0.5) * 25 for i in range(len(shown))], list(shown))
    axes[3].set_xticks([])
    axes[3].set_title("test triplets: neighbours, truth, interpolations (seed 0)", fontsize=9)
    fig.suptitle(f"Consecutive Brownian Bridge vs conditional DDPM from noise ({b['train_steps']} training steps "
                 f"each, {len(prev)} train triplets)", fontsize=10)
    fig.tight_layout()

    few = str(b["steps"][1])
    summary = (f"at {few} steps: cbb PSNR {table['cbb'][few]['psnr']:.2f} / SSIM {table['cbb'][few]['ssim']:.3f} / "
               f"seed std {table['cbb'][few]['seed_std']:.3f}; ddpm(DDIM) {table['ddpm_ddim'][few]['psnr']:.2f} / "
               f"{table['ddpm_ddim'][few]['ssim']:.3f} / {table['ddpm_ddim'][few]['seed_std']:.3f}; "
               f"blend {table['blend']['psnr']:.2f} / {table['blend']['ssim']:.3f}")
    files = {} if quick else {"cbb_example.gif": _example_gif(cbb, net, b["show_steps"])}
    return {"budget": {k: list(v) if isinstance(v, tuple) else v for k, v in b.items()}, "cbb": cbb.config,
            "num_train_triplets": len(prev), "num_test_triplets": len(tx), "train": train, "table": table,
            "summary": summary, "files": files}, fig


register_bench("cbb", "Consecutive Brownian Bridge frame interpolation vs conditional DDPM from noise and linear "
                      "blending: PSNR/SSIM/seed variance vs steps")(_run)
