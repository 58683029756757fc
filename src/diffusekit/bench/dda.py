"""``bench dda``: DDA's projection with fast solvers against the reference protocol, and SDA, on corrupted digits.

DDA (Gao et al. 2023, arXiv 2207.03442) projects each target image back toward the source domain with a diffusion
model: noise it to t_start, then denoise with low-pass structure guidance x -= s * grad ||phi_D(x_target) -
phi_D(x0_hat(x_t))||_2, and classify with the self-ensemble f(x) + f(proj x). The reference runs 50 DDPM steps
per image, which users found too slow (issue #1 of its repository); this bench measures how far our DDIM grids
can cut that: error per corruption, network evaluations and milliseconds per image for

* the source classifier (zoo ``digits_bn_classifier``),
* SDEdit (the same projection without guidance, s = 0),
* DDA with the reference protocol (DDPM, 50 steps) and with DDPM 10 and DDIM 5 / 10 / 20 steps,
* SDA (Guo et al. 2025, arXiv 2406.04295): the classifier fine-tuned on projected class-conditional samples of
  the same model, ensembled with the source,

and the fraction of predictions on which each DDA grid agrees with the reference. Targets: the digits test split
under gaussian noise, defocus blur, contrast and JPEG at severity 5. DDA's settings (t_start 0.2, s 1, D 2) were
tuned on the train split (``methods/tta/dda.py``).
"""

from __future__ import annotations

import torch

from . import bench_progress, register_bench

CORRUPTIONS = ("gaussian_noise", "defocus_blur", "contrast", "jpeg")
#: name -> DDA overrides (None = the source classifier alone)
VARIANTS = {
    "source": None,
    "sdedit_ddim10": dict(steps=10, eta=0.0, guidance_scale=0.0),
    "dda_ddpm50_reference": dict(steps=50, eta=1.0),
    "dda_ddpm10": dict(steps=10, eta=1.0),
    "dda_ddim5": dict(steps=5, eta=0.0),
    "dda_ddim10_default": dict(steps=10, eta=0.0),
    "dda_ddim20": dict(steps=20, eta=0.0),
}
QUICK_VARIANTS = ("source", "sdedit_ddim10", "dda_ddim5", "dda_ddim10_default")


def _mean(row: dict, names) -> float:
    return sum(row[c]["error"] for c in names) / len(names)


@register_bench("dda", "DDA projection: DDIM 5/10/20 vs the 50-step DDPM reference (error, NFE, ms per image), "
                "SDEdit without guidance, and SDA, on corrupted digits")
def run(quick: bool):
    import matplotlib.pyplot as plt

    from .. import zoo
    from ..data import load_dataset
    from ..data.corruptions import corrupt
    from ..methods.tta import dda, sda
    from ..methods.tta.base import SourceModel, run_stream

    torch.set_num_threads(1)
    classifier, denoiser = zoo.load("digits_bn_classifier"), zoo.load("digits_unet")
    test = load_dataset("digits", "test")
    n = 48 if quick else test.x.shape[0]
    x, y = test.x[:n], test.y[:n]
    corruptions = CORRUPTIONS[:2] + CORRUPTIONS[3:] if quick else CORRUPTIONS
    data = {c: corrupt(x, c, 5, seed=0) for c in corruptions}

    def batches(c, size=64):
        return [(data[c][i:i + size], y[i:i + size]) for i in range(0, n, size)]

    variants = {k: v for k, v in VARIANTS.items() if not quick or k in QUICK_VARIANTS}
    results, predictions = {}, {}
    for name, overrides in bench_progress(list(variants.items()), desc="dda variants"):
        adapter = SourceModel(classifier) if overrides is None else dda.build(classifier, denoiser=denoiser, seed=0,
                                                                              **overrides)
        row, preds = {}, []
        for c in corruptions:
            adapter.reset()
            totals = run_stream(adapter, batches(c)).totals()
            row[c] = {k: totals[k] for k in ("error", "brier", "nll", "seconds_per_image")}
        if overrides is not None:
            adapter.reset()
            with torch.no_grad():
                preds = torch.cat([adapter.predict(xb).argmax(1) for c in corruptions for xb, _ in batches(c)])
            predictions[name] = preds
            row["nfe_per_image"], row["backward_per_image"] = adapter.nfe_per_image, adapter.backward_per_image
        row["mean_error"] = _mean(row, corruptions)
        row["mean_error_without_contrast"] = _mean(row, [c for c in corruptions if c != "contrast"])
        row["ms_per_image"] = 1e3 * sum(row[c]["seconds_per_image"] for c in corruptions) / len(corruptions)
        results[name] = row
    reference = "dda_ddpm50_reference" if "dda_ddpm50_reference" in predictions else "dda_ddim10_default"
    agreement = {k: float((v == predictions[reference]).double().mean()) for k, v in predictions.items()}
    if not quick:
        adapter = sda.build(classifier, denoiser=denoiser, seed=0)
        row = {}
        for c in corruptions:
            adapter.reset()
            totals = run_stream(adapter, batches(c)).totals()
            row[c] = {k: totals[k] for k in ("error", "brier", "nll", "seconds_per_image")}
        row["nfe_per_image"] = adapter.nfe_per_image
        row["mean_error"] = _mean(row, corruptions)
        row["mean_error_without_contrast"] = _mean(row, [c for c in corruptions if c != "contrast"])
        row["ms_per_image"] = 1e3 * sum(row[c]["seconds_per_image"] for c in corruptions) / len(corruptions)
        row["preparation"] = {k: v for k, v in adapter.preparation.items() if isinstance(v, (int, float, bool, str))}
        results["sda_ddim10"] = row

    lines = [f"{'method':22s} " + " ".join(f"{c[:12]:>12s}" for c in corruptions) + "   mean   NFE    ms/img"]
    for name, row in results.items():
        lines.append(f"{name:22s} " + " ".join(f"{row[c]['error']:12.3f}" for c in corruptions)
                     + f"  {row['mean_error']:.3f}  {row.get('nfe_per_image', 0):>4}  {row['ms_per_image']:7.1f}")
    lines.append("agreement with " + reference + ": " + ", ".join(f"{k} {v:.2f}" for k, v in agreement.items()))
    result = {"summary": "\n".join(lines), "images": n, "corruptions": list(corruptions), "severity": 5,
              "dda_defaults": {k: v for k, v in dda.DEFAULTS.items() if isinstance(v, (int, float, str))},
              "results": results, "agreement_reference": reference, "agreement": agreement}

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    names = list(results)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        axes[0].bar([j + i * width for j in range(len(corruptions))], [results[name][c]["error"] for c in corruptions],
                    width, label=name)
    axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(corruptions))], corruptions)
    axes[0].set(ylabel="error (severity 5)", title=f"DDA / SDA on corrupted digits ({n} test images)")
    axes[0].legend(fontsize=7)
    for name in names:
        if name == "source":
            axes[1].axhline(results[name]["mean_error_without_contrast"], color="k", ls="--", label="source")
            continue
        axes[1].scatter(results[name]["ms_per_image"], results[name]["mean_error_without_contrast"], label=name)
    axes[1].set(xlabel="ms per image (CPU, 1 thread, batch 64)", ylabel="mean error (without contrast)",
                title="cost vs error")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return result, fig
