"""TAD-SR (He et al. 2024, arXiv 2408.07476): a one-step SR student distilled from a ResShift teacher, against
that teacher at 1 step and at its full T = 4 and T = 15 steps, x2 SR on 8 x 8 digits and 16 x 16 natural patches.

Data as in ``bench resshift`` (:func:`~diffusekit.bench._images.sr_images`): HR train images, the LR input is the
2 x 2 block average upsampled by the pseudo-inverse. For each dataset and T, a ResShift teacher (kappa 2, power
0.3, p = 0.2 for T = 4 as in ``bench resshift``, p = 0.04 for T = 15 as in ResShift's 15-step setting; the small
conditional UNet of :func:`~diffusekit.methods.resshift.make_sr_net`; AdamW lr 2e-3, batch 64) is trained with
ResShift's own code, then distilled twice from the same starting weights on the same budget:

* ``student-mse``: the distillation term alone (||x0_S - x0_T||^2 to the teacher's T-step DDIM chain);
* ``tadsr``: + HSD (weight 1, t' < 3) + the time-aware discriminator (weight 0.02, real = HR data).

Rows (one sample per test image, fixed seeds, the same x_T for every method that takes one): ``pinv`` (the
upsampled input), ``teacher@1`` (the teacher's single x0 prediction at T - 1: what the student starts from),
``teacher@T`` (ResShift's posterior sampling, T NFE), ``teacher@T-ddim`` (the deterministic chain the student is
distilled toward), ``student-mse@1``, ``tadsr@1``. Metrics: ``psnr`` / ``ssim`` to the ground truth (data range
2), ``psnr_to_teacher`` to ``teacher@T-ddim`` from the same x_T (how well one step reproduces the teacher),
``hf_ratio`` = Laplacian energy / that of the ground truth (1 = as much fine detail as the real images, < 1
blurrier), ``nfe``, ``seconds``. PSNR to the ground truth rewards the blurry posterior mean, so ``teacher@1``
scores well there; the paper reports perceptual metrics (not available here).

Measured (full run, 1 thread, 476 s wall; 360 digits / 128 patch test images), PSNR to
the ground truth / PSNR to the teacher's DDIM chain / hf_ratio:

======================= ==================== ==================== ==================== ====================
method                  digits T=4           digits T=15          patches T=4          patches T=15
======================= ==================== ==================== ==================== ====================
teacher@1               21.09 / 27.2 / 0.86  21.34 / 25.9 / 0.88  31.44 / 36.9 / 0.39  31.43 / 39.3 / 0.30
teacher@T               20.55 / 26.0 / 0.94  20.74 / 25.9 / 0.92  30.51 / 35.0 / 0.49  31.39 / 45.5 / 0.34
teacher@T-ddim          20.45 /  --  / 0.94  20.43 /  --  / 0.93  30.42 /  --  / 0.51  31.34 /  --  / 0.35
student-mse@1           20.29 / 34.3 / 0.92  20.39 / 32.8 / 0.90  30.51 / 45.9 / 0.49  31.33 / 44.1 / 0.32
tadsr@1                 20.43 / 33.1 / 0.92  20.43 / 32.3 / 0.92  29.99 / 42.2 / 0.58  31.20 / 43.9 / 0.35
======================= ==================== ==================== ==================== ====================

One student step reproduces the T-step teacher 4.6-9 dB better than the teacher's own single step and recovers
most of the teacher's fine detail (hf_ratio), at the teacher's PSNR to the ground truth (within 0.2 dB of
teacher@T-ddim, except tadsr on patches at T = 4: -0.4 dB). HSD + the time-aware discriminator add fine detail
only on patches at T = 4 (0.49 -> 0.58, above the teacher's 0.51); elsewhere they match the distillation term
alone at this budget (150 updates).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..methods.distill.tadsr import tadsr_distill, tadsr_sample, teacher_chain
from ..methods.resshift import ResShift, sr_pairs, train_resshift
from ..metrics import psnr, ssim
from ..plotting import grouped_psnr_bars
from . import bench_progress, register_bench
from ._images import sr_images

DATASETS = ("digits", "patches")
TEACHER_STEPS = (4, 15)
RESSHIFT_OPTIONS = {4: {"kappa": 2.0, "min_noise_level": 0.2, "power": 0.3},
                    15: {"kappa": 2.0, "min_noise_level": 0.04, "power": 0.3}}
METHODS = ("pinv", "teacher@1", "teacher@T", "teacher@T-ddim", "student-mse@1", "tadsr@1")
VARIANTS = {"student-mse@1": {"hsd_weight": 0.0, "adv_weight": 0.0}, "tadsr@1": {}}
FULL = {"teacher_steps": {"digits": 600, "patches": 400}, "distill_steps": 150, "base_channels": 32,
        "n_test": {"digits": None, "patches": 128}, "n_train_patches": 5000}
QUICK = {"teacher_steps": {"digits": 30, "patches": 20}, "distill_steps": 8, "base_channels": 16,
         "n_test": {"digits": 32, "patches": 12}, "n_train_patches": 400}
FACTOR = 2


def hf_energy(x: torch.Tensor) -> float:
    """Mean squared response of the 3 x 3 Laplacian (valid region): the images' high-frequency energy."""
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=x.dtype).view(1, 1, 3, 3)
    c = x.shape[1]
    return float(F.conv2d(x, lap.expand(c, 1, 3, 3), groups=c).pow(2).mean())


def _run_one(rs: ResShift, x, y, xt, yt, cfg: dict, steps: int, seed: int):
    teacher, info = train_resshift(rs, x, y, steps=steps, max_seconds=None, seed=seed,
                                   base_channels=cfg["base_channels"])
    x_T = rs.prior_sample(yt, torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        ref = teacher_chain(rs, teacher, x_T, yt)
    students, train = {}, {"teacher": info}
    for name, kw in VARIANTS.items():
        res = tadsr_distill(rs, teacher, x, y, steps=cfg["distill_steps"], batch_size=32, lr=5e-4, seed=seed, **kw)
        students[name] = res.student.net
        train[name] = {"steps": res.history["steps"], "seconds": res.history["seconds"]}
    hf_gt = hf_energy(xt)
    rows, shown = {}, {}
    for method in METHODS:
        t0 = time.perf_counter()
        with torch.no_grad():
            if method == "pinv":
                out, nfe = yt, 0
            elif method == "teacher@1":
                out, nfe = tadsr_sample(rs, teacher, yt, x_T=x_T), 1
            elif method == "teacher@T":
                out, nfe = rs.sample(teacher, yt, torch.Generator().manual_seed(2000 + seed)), rs.num_steps
            elif method == "teacher@T-ddim":
                out, nfe = teacher_chain(rs, teacher, x_T, yt), rs.num_steps
            else:
                out, nfe = tadsr_sample(rs, students[method], yt, x_T=x_T), 1
        seconds = time.perf_counter() - t0
        out = out.clamp(-1, 1)
        rows[method] = {"psnr": float(psnr(out, xt).mean()), "ssim": float(ssim(out, xt, data_range=2.0).mean()),
                        "psnr_to_teacher": float(psnr(out, ref).mean()) if method != "teacher@T-ddim" else None,
                        "hf_ratio": hf_energy(out) / hf_gt, "nfe": nfe, "seconds": seconds}
        shown[method] = out
    return rows, shown, train


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import image_grid

    cfg = QUICK if quick else FULL
    n_show = 6
    fig, axes = plt.subplots(len(DATASETS), 3, figsize=(14, 9))
    results, summaries = {}, []
    for d, name in enumerate(bench_progress(DATASETS, desc="tadsr: datasets")):
        x_train, x_test = sr_images(name, n_test=cfg["n_test"][name], n_train_patches=cfg["n_train_patches"])
        x, y = sr_pairs(x_train, FACTOR)
        _, yt = sr_pairs(x_test, FACTOR)
        table, train = {}, {}
        for k, T in enumerate(bench_progress(TEACHER_STEPS, desc=f"tadsr {name}: teachers")):
            rs = ResShift(T, **RESSHIFT_OPTIONS[T])
            table[f"T={T}"], shown, train[f"T={T}"] = _run_one(rs, x, y, x_test, yt, cfg, cfg["teacher_steps"][name],
                                                               seed=k)
            ax = axes[d, k]
            rows = [x_test[:n_show]] + [shown[m][:n_show] for m in METHODS]
            side = x_test.shape[-1]
            ax.imshow(image_grid(torch.cat(rows), n_show), cmap="gray", vmin=0, vmax=255)
            ax.set_yticks([(i + 0.5) * (side + 1) for i in range(len(rows))], ["truth", *METHODS], fontsize=7)
            ax.set_xticks([])
            ax.set_title(f"{name}, ResShift T={T}", fontsize=9)
        ax = axes[d, -1]
        grouped_psnr_bars(ax, table, list(table), METHODS)
        ax.set_xticks(range(len(table)), list(table))
        ax.set_title(f"{name}: mean PSNR to ground truth over {len(x_test)} test images", fontsize=9)
        results[name] = {"num_train_images": len(x_train), "num_test_images": len(x_test), "train": train,
                         "table": table}
        summaries.append(f"{name} " + "; ".join(
            f"{g}: " + ", ".join(f"{m} {r[m]['psnr']:.2f}dB/{r[m]['ssim']:.3f}"
                                 + (f" (to teacher {r[m]['psnr_to_teacher']:.1f})" if r[m]["psnr_to_teacher"]
                                    and m.endswith("@1") else "") for m in METHODS)
            for g, r in table.items()))
    fig.tight_layout()
    return {"config": cfg, "factor": FACTOR, "resshift": {str(T): RESSHIFT_OPTIONS[T] for T in TEACHER_STEPS},
            "datasets": results, "summary": " | ".join(summaries)}, fig


register_bench("tadsr", "TAD-SR one-step student vs its ResShift teacher at 1, 4 and 15 steps, x2 SR on digits "
                        "and natural patches")(_run)
