"""Linear inverse problems with two priors: pseudo-inverse vs DPS, DDRM, RED-Diff.

Priors: the shipped digits UNet with the null class (8 x 8 digits test images) and the shipped natural-image
patch UNet (``patches_unet``, 16 x 16 grey crops of the held-out test images of the ``patches`` dataset, which
the model never saw; textured crops only, pixel std >= 0.1 on the [-1, 1] scale, about half of all crops). Both
in [-1, 1], y = A x + sigma_y n with sigma_y = 0.05 on the data scale.

Tasks: ``inpaint_box`` (central half-size box missing), ``inpaint_random`` (50% of pixels missing, one fixed
mask), ``sr2`` / ``sr4`` (block averaging), ``deblur`` (separable Gaussian blur, sigma 1 pixel, truncated SVD
at rcond 0.05). Each method gets one sample per image from fixed seeds; reported PSNR / SSIM (data_range 2,
outputs clipped to [-1, 1]) are means over the images, digits-FD (digits only) is against the digits test
split, NFE counts forward network passes (DPS adds one backward pass per step), seconds is the wall time for
the whole batch.

Tuning is held out: each method's settings (DPS's step size zeta, DDRM's eta, RED-Diff's learning rate) are
chosen per task and prior by mean PSNR on tuning images disjoint from the reported ones (digits: the last
images of the test split, reported: the first; patches: the textured test crops after the reported ones, in
the same deterministic draw), from the small grids in ``TUNE_GRID``. ``split`` in the JSON records both
index ranges, ``tuning`` every candidate's tuning PSNR.

``DIR/inverse.json`` maps task -> method -> {psnr, ssim, nfe, seconds, digits_fd, <chosen settings>} for digits
at the top level (beside the run's metadata); ``patches`` holds the same layout (without digits_fd) for the
natural-image patches.
"""

from __future__ import annotations

import time

import torch

from ..core import grid_uniform
from ..methods.inverse import (SOLVERS, gaussian_blur, inpaint_box, inpaint_random, super_resolution)
from ..metrics import digits_fd, psnr, ssim
from ..plotting import grouped_psnr_bars
from . import bench_progress, register_bench
from ._images import textured_test_patches

SIGMA_Y = 0.05
TASKS = {
    "inpaint_box": lambda shape: inpaint_box(shape),
    "inpaint_random": lambda shape: inpaint_random(shape, 0.5, seed=0),
    "sr2": lambda shape: super_resolution(shape, 2),
    "sr4": lambda shape: super_resolution(shape, 4),
    "deblur": lambda shape: gaussian_blur(shape, 1.0),
}
METHODS = ("pinv", "dps", "ddrm", "reddiff")
STEPS = {"pinv": 0, "dps": 50, "ddrm": 20, "reddiff": 50}


PRIORS = {"digits": "digits_unet", "patches": "patches_unet"}
TUNE_GRID = {"pinv": [{}], "dps": [{"zeta": z} for z in (0.5, 1.0, 2.0, 4.0)],
             "ddrm": [{"eta": e, "eta_b": 1.0} for e in (0.85, 1.0)],
             "reddiff": [{"lam": 25.0, "lr": lr} for lr in (0.1, 0.25, 0.5)]}
# quick: the same code path, one tuned setting (DPS's zeta) to keep the run short
QUICK_TUNE_GRID = {"pinv": [{}], "dps": [{"zeta": z} for z in (1.0, 2.0)], "ddrm": [{"eta": 0.85, "eta_b": 1.0}],
                   "reddiff": [{"lam": 25.0, "lr": 0.25}]}


def image_split(prior: str, n: int, n_tune: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(reported images, tuning images, split record) for a prior; the two sets are disjoint."""
    from ..data import load_dataset

    if prior == "digits":
        test = load_dataset("digits", "test").x
        if n + n_tune > len(test):
            raise ValueError(f"{n} reported + {n_tune} tuning images exceed the {len(test)} digits test images")
        m = len(test)
        return test[:n], test[m - n_tune:], {"source": "digits test split", "reported": [0, n],
                                             "tuning": [m - n_tune, m]}
    x = textured_test_patches(n + n_tune)
    return x[:n], x[n:], {"source": "textured patches test crops (one deterministic draw)",
                          "reported": [0, n], "tuning": [n, n + n_tune]}


def _restore(den, method, task_index, op, y, options):
    """One restoration per measurement (the prior unconditional: the null class for a conditional model)."""
    n = y.shape[0]
    ts = grid_uniform(den.schedule, max(STEPS[method], 1), t_end=0.0)
    gens = [torch.Generator().manual_seed(1000 * task_index + i) for i in range(n)]
    cond = {"class_labels": torch.full((n,), den.null_class)} if den.num_classes is not None else {}
    with torch.set_grad_enabled(method == "dps"):
        out = SOLVERS[method](den, y, op, ts, sigma_y=SIGMA_Y, cond=cond, generator=gens, **options)
    return out.detach().clamp(-1, 1)


def _tune(den, method, k, op, x_tune, grid) -> tuple[dict, list]:
    """The setting of ``grid`` with the best mean PSNR on the tuning images (measured with its own noise)."""
    if len(grid) == 1:
        return grid[0], []
    y = op.measure(x_tune, SIGMA_Y, torch.Generator().manual_seed(500 + k))
    scores = [(float(psnr(_restore(den, method, k, op, y, opts), x_tune).mean()), i)
              for i, opts in enumerate(grid)]
    best = max(scores)[1]
    return grid[best], [{**grid[i], "tuning_psnr": score} for score, i in scores]


def _solve_tasks(prior: str, n: int, n_tune: int, n_show: int, grid: dict):
    """task -> method -> metrics, the images to show, the split and the tuning record, for one prior."""
    from .. import zoo
    from ..data import load_dataset

    den = zoo.load(PRIORS[prior])
    x, x_tune, split = image_split(prior, n, n_tune)
    shape = tuple(x.shape[1:])
    reference = load_dataset("digits", "test").x if prior == "digits" else None
    clf = zoo.load("digits_classifier") if prior == "digits" else None
    table, shown, tuning = {}, {}, {}
    for k, (task, make) in enumerate(bench_progress(TASKS.items(), desc=f"inverse {prior}: tasks", total=len(TASKS))):
        op = make(shape)
        y = op.measure(x, SIGMA_Y, torch.Generator().manual_seed(100 + k))
        rows = {"truth": x[:n_show], "y": (y if y.shape == x.shape else op.pinv(y))[:n_show]}
        table[task], tuning[task] = {}, {}
        for method in METHODS:
            options, tuning[task][method] = _tune(den, method, k, op, x_tune, grid[method])
            t0 = time.perf_counter()
            out = _restore(den, method, k, op, y, options)
            seconds = time.perf_counter() - t0
            row = {"psnr": float(psnr(out, x).mean()), "ssim": float(ssim(out, x, data_range=2.0).mean()),
                   "nfe": STEPS[method], "seconds": seconds, **options}
            if reference is not None:
                row["digits_fd"] = digits_fd(out, reference, classifier=clf)
            table[task][method] = row
            rows[method] = out[:n_show]
        shown[task] = rows
    return table, shown, x.shape[-1], split, tuning


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import image_grid

    n = {"digits": 8 if quick else 128, "patches": 4 if quick else 64}
    n_tune = {"digits": 4 if quick else 16, "patches": 2 if quick else 8}
    grid = QUICK_TUNE_GRID if quick else TUNE_GRID
    n_show = 6
    fig, axes = plt.subplots(4, 3, figsize=(13, 17))
    result = {"num_images": n, "num_tuning_images": n_tune, "tune_grid": grid, "split": {}, "tuning": {},
              "sigma_y": SIGMA_Y, "steps": STEPS,
              "priors": {"digits": "digits_unet, null class (unconditional), digits test split",
                         "patches": "patches_unet (unconditional), 16 x 16 textured crops (std >= 0.1) of the "
                                    "patches test images"}}
    summaries = []
    for p, prior in enumerate(PRIORS):
        shown_per_row = min(n_show, n[prior])
        table, shown, side, result["split"][prior], result["tuning"][prior] = _solve_tasks(
            prior, n[prior], n_tune[prior], shown_per_row, grid)
        for ax, (task, rows) in zip(axes[2 * p:2 * p + 2].flat, shown.items()):
            ax.imshow(image_grid(torch.cat(list(rows.values())), shown_per_row), cmap="gray", vmin=0, vmax=255)
            ax.set_yticks([(i + 0.5) * (side + 1) for i in range(len(rows))], list(rows))
            ax.set_xticks([])
            ax.set_title(f"{prior}: {task} (sigma_y={SIGMA_Y})", fontsize=9)
        ax = axes[2 * p + 1, -1]
        grouped_psnr_bars(ax, table, TASKS, METHODS, labels={m: f"{m} (NFE {STEPS[m]})" for m in METHODS})
        ax.set_xticks(range(len(TASKS)), list(TASKS), fontsize=8, rotation=20)
        ax.set_title(f"{prior}: mean PSNR over {n[prior]} test images", fontsize=9)
        if prior == "digits":
            result.update(table)  # the issue's layout: task -> method -> {psnr, ssim, nfe, seconds, ...}
        else:
            result[prior] = table
        summaries.append(f"{prior} PSNR dB pinv/DPS/DDRM/RED-Diff: " + "; ".join(
            f"{t} " + "/".join(f"{table[t][m]['psnr']:.1f}" for m in METHODS) for t in TASKS))
    fig.tight_layout()
    result["summary"] = " | ".join(summaries)
    return result, fig


register_bench("inverse", "pinv / DPS / DDRM / RED-Diff on digits and natural patches: inpainting, SR x2/x4, "
                          "deblurring (sigma_y 0.05)")(_run)
