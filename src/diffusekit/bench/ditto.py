"""DITTO vs DITTO-2 noise optimisation on digits: control adherence vs wall time.

The class-conditional digits UNet is run with the null class (unconditional), so all control comes from
the optimised x_T. Control targets: (a) a target class (-log p from the clean digits classifier; accuracy is
reported by that classifier, which the optimisation targets, and by the independent SVM judge of
:mod:`diffusekit.metrics.judge`),
(b) the observed pixels of a reference digit outside the central box (``inpaint_box``), (c) the 4x4
block-average of a reference digit (``super_resolution``), (d) a target mean intensity. Methods, all
decoded with the same multi-step DDIM from the same x_T batch: the unoptimised baseline; DITTO (Adam
on x_T through the full multi-step DDIM); DITTO-2 (Adam through a 1- or 2-step DDIM surrogate, then
multi-step decode). Every optimiser gets the same number of Adam iterations, so the wall-time ratio is the
cost ratio of the differentiable sampler.
"""

from __future__ import annotations

import math
import time

import torch

from ..core import prior_sample
from ..methods.ditto import class_loss, decode, intensity_loss, measurement_loss, optimize_noise
from ..methods.inverse.operators import inpaint_box, super_resolution
from ..metrics import judge_accuracy
from . import bench_progress, register_bench


def _psnr(mse: torch.Tensor) -> float:
    """Mean PSNR over examples on the [-1, 1] scale (peak-to-peak 2)."""
    return float((10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean())


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo

    n = 8 if quick else 20
    decode_steps = 10 if quick else 20
    iters = 8 if quick else 30
    lr, reg_weight = 0.1, 10.0
    den, clf = zoo.load("digits_unet"), zoo.load("digits_classifier")
    for p in list(den.net.parameters()) + list(clf.parameters()):
        p.requires_grad_(False)
    labels = torch.arange(n) % 10
    cond = {"class_labels": torch.full_like(labels, den.null_class)}
    x_T = prior_sample(den.schedule, (n, 1, 8, 8), torch.Generator().manual_seed(0))
    ref = decode(den, prior_sample(den.schedule, (n, 1, 8, 8), torch.Generator().manual_seed(1)),
                 steps=decode_steps, cond=cond).clamp(-1, 1)
    box, sr = inpaint_box((1, 8, 8)), super_resolution((1, 8, 8), 2)
    base_intensity = float(decode(den, x_T, steps=decode_steps, cond=cond).mean())
    intensity_target = base_intensity + 0.3  # "brighter" digits (more ink)

    def class_metrics(x0):
        with torch.no_grad():
            return {"target_class_accuracy": float((clf(x0).argmax(1) == labels).double().mean()),
                    "judge_target_class_accuracy": judge_accuracy(x0.clamp(-1, 1), labels)}

    def region_metrics(op):
        def metrics(x0):
            mse = (op.apply(x0.clamp(-1, 1)) - op.apply(ref)).reshape(n, -1).pow(2).mean(1)
            return {"psnr_controlled_region": _psnr(mse)}
        return metrics

    def intensity_metrics(x0):
        return {"mean_abs_intensity_error": float((x0.reshape(n, -1).mean(1) - intensity_target).abs().mean())}

    targets = {
        "class": (class_loss(clf, labels), class_metrics),
        "inpaint_box": (measurement_loss(box, box.apply(ref)), region_metrics(box)),
        "low_res": (measurement_loss(sr, sr.apply(ref)), region_metrics(sr)),
        "intensity": (intensity_loss(intensity_target), intensity_metrics),
    }
    methods = {"baseline": None, f"ditto_full_{decode_steps}step": decode_steps,
               "ditto2_surrogate_1step": 1, "ditto2_surrogate_2step": 2}
    table, examples = {}, {}
    runs = bench_progress(desc="ditto: target x method", total=len(targets) * len(methods))
    for tname, (loss_fn, metrics) in targets.items():
        table[tname] = {}
        for mname, opt_steps in methods.items():
            runs.update()
            t0 = time.perf_counter()
            if opt_steps is None:
                x_opt, hist = x_T, None
            else:
                x_opt, hist = optimize_noise(den, loss_fn, x_T, steps=opt_steps, iters=iters, lr=lr,
                                             reg_weight=reg_weight, cond=cond)
            x0 = decode(den, x_opt, steps=decode_steps, cond=cond)
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                row = {"control_loss": float(loss_fn(x0).mean()), "seconds": seconds,
                       "x_T_radius": float((x_opt.reshape(n, -1).norm(dim=1) / 8.0).mean()), **metrics(x0)}
            if hist is not None:
                row["surrogate_loss_first_last"] = [hist["loss"][0], hist["loss"][-1]]
                row["optimiser_nfe"] = iters * hist["nfe_per_iter"]
            table[tname][mname] = row
            examples[(tname, mname)] = x0[:8].clamp(-1, 1)
    runs.close()

    names = list(methods)
    fig, axes = plt.subplots(2, len(targets) + 1, figsize=(4 * (len(targets) + 1), 7),
                             gridspec_kw={"height_ratios": [1, 1]})
    for j, tname in enumerate(targets):
        ax = axes[0, j]
        ax.bar(range(len(names)), [table[tname][m]["control_loss"] for m in names],
               color=["grey", "C0", "C1", "C2"])
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), ["base", "DITTO", "D2-1", "D2-2"])
        ax.set_title(f"{tname}: control loss ({decode_steps}-step decode)", fontsize=9)
        ax = axes[1, j]
        rows = []
        for m in names:
            imgs = examples[(tname, m)]  # (8, 1, 8, 8)
            rows.append(torch.cat(list(imgs[:, 0]), dim=1))
        ax.imshow(torch.cat(rows, dim=0).numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_yticks([4 + 8 * i for i in range(len(names))], ["base", "DITTO", "D2-1", "D2-2"])
        ax.set_xticks([])
        ax.set_title(f"{tname}: samples", fontsize=9)
    ax = axes[0, -1]
    for k, m in enumerate(names):
        ax.bar(k, sum(table[t][m]["seconds"] for t in targets) / len(targets), color=["grey", "C0", "C1", "C2"][k])
    ax.set_xticks(range(len(names)), ["base", "DITTO", "D2-1", "D2-2"])
    ax.set_ylabel("seconds per target (opt + decode)")
    ax.set_title(f"wall time, {iters} Adam iters, batch {n}", fontsize=9)
    ax = axes[1, -1]
    for k, (key, label) in enumerate((("target_class_accuracy", "zoo CNN (optimised against)"),
                                      ("judge_target_class_accuracy", "SVM judge (independent)"))):
        ax.bar([i + 0.4 * k - 0.2 for i in range(len(names))], [table["class"][m][key] for m in names], width=0.4,
               label=label)
    ax.set_xticks(range(len(names)), ["base", "DITTO", "D2-1", "D2-2"])
    ax.set_ylim(0, 1)
    ax.set_title("class target: accuracy", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()

    full, d2 = f"ditto_full_{decode_steps}step", "ditto2_surrogate_2step"
    speedup = sum(table[t][full]["seconds"] for t in targets) / sum(table[t][d2]["seconds"] for t in targets)
    cls = table["class"]
    summary = (f"class acc (zoo CNN / SVM judge) base {cls['baseline']['target_class_accuracy']:.2f}"
               f"/{cls['baseline']['judge_target_class_accuracy']:.2f}"
               f" / DITTO {cls[full]['target_class_accuracy']:.2f}/{cls[full]['judge_target_class_accuracy']:.2f}"
               f" / D2-1step {cls['ditto2_surrogate_1step']['target_class_accuracy']:.2f}"
               f"/{cls['ditto2_surrogate_1step']['judge_target_class_accuracy']:.2f}"
               f" / D2-2step {cls[d2]['target_class_accuracy']:.2f}/{cls[d2]['judge_target_class_accuracy']:.2f}; "
               + "; ".join(f"{t} PSNR base {table[t]['baseline']['psnr_controlled_region']:.1f} / DITTO "
                           f"{table[t][full]['psnr_controlled_region']:.1f} / D2-2step "
                           f"{table[t][d2]['psnr_controlled_region']:.1f} dB" for t in ("inpaint_box", "low_res"))
               + f"; intensity |err| base {table['intensity']['baseline']['mean_abs_intensity_error']:.3f} / DITTO "
               f"{table['intensity'][full]['mean_abs_intensity_error']:.3f} / D2-2step "
               f"{table['intensity'][d2]['mean_abs_intensity_error']:.3f}; DITTO-2 (2-step) is {speedup:.1f}x faster "
               f"than DITTO through {decode_steps} steps at equal Adam iterations")
    if not all(math.isfinite(r["control_loss"]) for t in table.values() for r in t.values()):
        summary += " (WARNING: non-finite losses)"
    return {"batch": n, "decode_steps": decode_steps, "adam_iters": iters, "lr": lr, "reg_weight": reg_weight,
            "intensity_target": intensity_target, "grid": "trailing", "model": "digits_unet (null class)",
            "targets": table, "summary": summary}, fig


register_bench("ditto", "DITTO (full-sampler) vs DITTO-2 (1-2 step surrogate) noise optimisation on digits")(_run)
