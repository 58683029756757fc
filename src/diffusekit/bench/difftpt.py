"""DiffTPT (Feng et al., ICCV 2023, arXiv 2308.06038) vs TPT (Shu et al., NeurIPS 2022, arXiv 2209.07511) vs
zero-shot CLIP on the captioned digits, clean and corrupted.

Classifier: the zoo's ``captions_clip`` (frozen), zero-shot digit identity of the single-digit images of the
captioned-digits test split (``methods.tta.difftpt.test_data``), with the prompt "a {thickness} {colour} k" read
zero-shot from each image. Target domains: clean and ``data.corruptions.corrupt`` (gaussian noise 3 and 5, shot
noise 3, defocus blur 2, JPEG 3; seed 0). Methods, every one per image with the prompt reset after it:

* ``zero_shot``: the initial prompt, no tuning;
* ``tpt``: 15 augmentation views + the original, confidence selection (30 %), 4 AdamW steps (lr 5e-3);
* ``difftpt``: 7 augmentation + 8 diffusion views (SDEdit from the zoo's ``captions_unet``, null caption, t0 = 0.2,
  4 DDIM eta = 1 steps) + the original, cosine filter (80 %), confidence selection, the same tuning;
* ``difftpt_nofilter``: the same views without the cosine filter.

Besides accuracy / NLL / seconds per image (``methods.tta.base.run_stream``), the bench reads the views themselves
under the initial prompt: the per-view accuracy of augmentation vs diffusion views and the accuracy of each kind's
averaged prediction -- what the entropy objective is fed. ``--quick``: 24 images, clean and gaussian noise 3,
the quick settings (3 + 4 views, 3 sampler steps, 2 tuning steps).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from ..methods.tta import difftpt as D
from ..methods.tta.base import run_stream
from . import bench_progress, register_bench

CONDITIONS_FULL = (("clean", 0), ("gaussian_noise", 3), ("gaussian_noise", 5), ("shot_noise", 3),
                   ("defocus_blur", 2), ("jpeg", 3))
CONDITIONS_QUICK = (("clean", 0), ("gaussian_noise", 3))
METHODS = ("zero_shot", "tpt", "difftpt", "difftpt_nofilter")
N_IMAGES = {"full": 100, "quick": 24}
BATCH = 8


def _adapters(clip, generator_model, quick: bool) -> dict:
    return {"zero_shot": D.build_zero_shot(clip),
            "tpt": D.build_tpt(clip, quick=quick),
            "difftpt": D.build(clip, quick=quick, generator_model=generator_model),
            "difftpt_nofilter": D.build(clip, quick=quick, generator_model=generator_model, rho=None)}


def _view_statistics(trace: list, labels: torch.Tensor, n_aug: int, n_diffusion: int) -> dict:
    """Per-view accuracy and averaged-prediction accuracy of each kind of view under the initial prompt."""
    out = {}
    for kind, sl in (("augmentation", slice(1, 1 + n_aug)), ("diffusion", slice(1 + n_aug, 1 + n_aug + n_diffusion))):
        if sl.stop == sl.start:
            continue
        per_view, averaged = [], []
        for record, y in zip(trace, labels.tolist()):
            logits = record["view_logits"][sl]
            per_view.append(float((logits.argmax(1) == y).double().mean()))
            averaged.append(float(logits.softmax(1).mean(0).argmax() == y))
        out[kind] = {"per_view_accuracy": float(np.mean(per_view)), "averaged_accuracy": float(np.mean(averaged))}
    return out


def _corrupted(x: torch.Tensor, name: str, severity: int) -> torch.Tensor:
    from ..data.corruptions import corrupt

    return x if name == "clean" else corrupt(x, name, severity, seed=0)


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo
    from ..plotting import image_grid

    torch.set_num_threads(1)
    clip, generator_model = zoo.load("captions_clip"), D.image_generator()
    n = N_IMAGES["quick" if quick else "full"]
    conditions = CONDITIONS_QUICK if quick else CONDITIONS_FULL
    x, y = D.test_data("test", n=n, seed=0)
    adapters = _adapters(clip, generator_model, quick)
    table, views, shown = {}, {}, {}
    for name, severity in bench_progress(conditions, desc="difftpt: conditions"):
        key = name if name == "clean" else f"{name}{severity}"
        xc = _corrupted(x, name, severity)
        batches = [(xc[i:i + BATCH], y[i:i + BATCH]) for i in range(0, n, BATCH)]
        table[key] = {}
        for method in bench_progress(METHODS, desc=f"difftpt: {key}"):
            adapter = adapters[method]
            adapter.trace = []
            totals = run_stream(adapter, batches).totals()
            table[key][method] = {"accuracy": 1 - totals["error"], "nll": totals["nll"], "brier": totals["brier"],
                                  "seconds_per_image": totals["seconds_per_image"]}
            if method == "difftpt_nofilter":  # the unfiltered pool: every view's own prediction
                cfg = adapter.config
                views[key] = _view_statistics(adapter.trace, y, cfg.n_aug, cfg.n_diffusion)
            if method == "difftpt":
                table[key][method]["views_kept"] = [float(np.mean([r["kept"][i] for r in adapter.trace]))
                                                    for i in (0, 1)]  # after the cosine filter, after selection
            adapter.trace = None
        if name in ("clean", "gaussian_noise"):
            ad = adapters["difftpt"]
            shown[key] = ad.views(xc[:1])
    mean = {m: float(np.mean([table[k][m]["accuracy"] for k in table])) for m in METHODS}
    corrupted = [k for k in table if k != "clean"]
    mean_corrupted = {m: float(np.mean([table[k][m]["accuracy"] for k in corrupted])) for m in METHODS}
    cfg = adapters["difftpt"].config
    result = {"model": "captions_clip (frozen), soft prompt of 3 context tokens; views from captions_unet SDEdit",
              "num_images": n, "conditions": [k for k in table], "settings": {
                  "difftpt": asdict(cfg), "tpt": asdict(adapters["tpt"].config)},
              "table": table, "views": views, "mean_accuracy": mean,
              "mean_accuracy_corrupted": mean_corrupted}
    result["summary"] = (
        "mean accuracy " + ", ".join(f"{m} {mean[m]:.3f}" for m in METHODS)
        + " | corrupted only " + ", ".join(f"{m} {mean_corrupted[m]:.3f}" for m in METHODS)
        + " | per-view accuracy aug/diffusion " + ", ".join(
            f"{k} {v['augmentation']['per_view_accuracy']:.2f}/{v['diffusion']['per_view_accuracy']:.2f}"
            for k, v in views.items())
        + f" | s/img tpt {np.mean([table[k]['tpt']['seconds_per_image'] for k in table]):.3f}, difftpt "
          f"{np.mean([table[k]['difftpt']['seconds_per_image'] for k in table]):.3f}")

    fig = plt.figure(figsize=(15, 8.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[1.5, 1], width_ratios=[1.4, 1])
    axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])]
    keys, width = list(table), 0.2
    ax = axes[0]
    for j, m in enumerate(METHODS):
        ax.bar(np.arange(len(keys)) + (j - 1.5) * width, [table[k][m]["accuracy"] for k in keys], width, label=m)
    ax.set_xticks(range(len(keys)), keys, fontsize=8, rotation=15)
    ax.set_ylabel("zero-shot digit accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(f"captions_clip, {n} single-digit test images per condition", fontsize=9)
    ax = axes[1]
    for j, (kind, stat) in enumerate((("augmentation", "per_view_accuracy"), ("diffusion", "per_view_accuracy"),
                                      ("augmentation", "averaged_accuracy"), ("diffusion", "averaged_accuracy"))):
        ax.bar(np.arange(len(keys)) + (j - 1.5) * width, [views[k][kind][stat] for k in keys], width,
               label=f"{kind[:4]}. {stat.split('_')[0]}", hatch="" if j < 2 else "//", color=f"C{j % 2 + 4}")
    ax.set_xticks(range(len(keys)), keys, fontsize=8, rotation=15)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("views under the initial prompt: per view / averaged", fontsize=9)
    ax = axes[2]
    rows = torch.cat([v for v in shown.values()])
    ax.imshow(image_grid(rows, len(next(iter(shown.values())))))
    ax.set_yticks([(i + 0.5) * 25 for i in range(len(shown))], list(shown), fontsize=7)
    ax.set_xticks([])
    ax.set_title(f"original | {cfg.n_aug} aug. | {cfg.n_diffusion} SDEdit (t0 {cfg.sdedit_t})", fontsize=9)
    fig.tight_layout()
    return result, fig


register_bench("difftpt", "DiffTPT vs TPT vs zero-shot CLIP: test-time prompt tuning with diffusion views")(_run)
