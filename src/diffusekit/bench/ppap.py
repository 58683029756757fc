"""PPAP on digits: guiding the unconditional digits model with multi-expert classifiers (Go et al. 2023).

Four guidance classifiers, all used through ``ClassifierGuidedDenoiser`` (eps hook) on the unconditional zoo
digits model (null labels), DDIM trailing grid, target classes cycled 0..9:

* ``clean``: the zoo clean classifier used as-is on x_t (no training);
* ``noisy_single``: one noise-aware classifier (``train_noisy_classifier``) trained with labels, all parameters;
* ``full_experts``: N = 4 fully fine-tuned copies of the clean classifier, one per equal-width t range, labels;
* ``ppap_lora``: N = 4 LoRA (+ bias) experts on the frozen clean classifier, data-free: distilled (KL to the clean
  classifier's temperature-0.25 soft labels on x0) on unlabeled samples of the unconditional model itself.

Reported: target-class accuracy of the guided samples by the independent SVM judge (``judge_accuracy``,
:mod:`diffusekit.metrics.judge`, never differentiated) and by the zoo classifier (``accuracy``; optimistic for
``clean`` and ``ppap_lora``, whose guide is that network or distilled from it), digits-FD, trainable parameters
(for experts: summed over the N experts) and whether labels were used.
"""

from __future__ import annotations

import time

import torch

from ..core import make_grid, prior_sample
from ..data import load_dataset
from ..methods.classifier_guidance import ClassifierGuidedDenoiser, train_noisy_classifier
from ..methods.ppap import (clean_as_noisy, count_parameters, distill_experts, generate_distillation_data,
                            partition_times, train_full_experts)
from ..metrics import class_accuracy, digits_fd, judge_accuracy
from ..samplers import sample_ddim
from . import register_bench


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo

    n_experts = 4
    # quick: the same code path at sizes that finish in ~15 s on a busy 2-core machine
    n_distill = 256 if quick else 2000
    expert_steps = 30 if quick else 300
    noisy_steps = 120 if quick else 1200
    n_per_class = 4 if quick else 20
    steps = 8 if quick else 20
    scales = [0, 3, 10] if quick else [0, 1, 3, 10]

    den, clf = zoo.load("digits_unet"), zoo.load("digits_classifier")
    schedule = den.schedule
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    edges = partition_times(schedule, n_experts)
    timing = {}

    t0 = time.perf_counter()
    x0 = generate_distillation_data(den, n_distill, steps=10, seed=1)
    timing["generate_distillation_data"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ppap = distill_experts(clf, x0, schedule, edges, steps=expert_steps, seed=0)
    timing["ppap_lora"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = train_full_experts(clf, train.x, train.y, schedule, edges, steps=expert_steps, seed=0)
    timing["full_experts"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    noisy = train_noisy_classifier(schedule, train.x, train.y, steps=noisy_steps, seed=0)
    timing["noisy_single"] = time.perf_counter() - t0

    guides = {"clean": (clean_as_noisy(clf), 0, False), "noisy_single": (noisy, count_parameters(noisy), True),
              "full_experts": (full, sum(count_parameters(e) for e in full.experts), True),
              "ppap_lora": (ppap, sum(count_parameters(e) for e in ppap.experts), False)}

    labels = torch.arange(10).repeat(n_per_class)
    null = torch.full_like(labels, den.null_class)
    x_T = prior_sample(schedule, (len(labels), 1, 8, 8), torch.Generator().manual_seed(0))
    ts = make_grid("trailing", schedule, steps)
    results, examples = {}, {}
    for name, (guide, n_params, uses_labels) in guides.items():
        results[name] = {"trainable_params": n_params, "uses_labels": uses_labels,
                         "train_seconds": timing.get(name, 0.0), "by_scale": {}}
        for s in scales:
            if s == 0 and name != "clean":
                results[name]["by_scale"]["0"] = results["clean"]["by_scale"]["0"]
                continue
            with torch.no_grad():
                x = sample_ddim(ClassifierGuidedDenoiser(den, guide, float(s)), x_T, ts,
                                cond={"class_labels": null, "guidance_labels": labels}).clamp(-1, 1)
            results[name]["by_scale"][str(s)] = {"accuracy": class_accuracy(x, labels, classifier=clf),
                                                 "judge_accuracy": judge_accuracy(x, labels),
                                                 "digits_fd": digits_fd(x, test.x, classifier=clf)}
            examples[(name, s)] = x[:10]

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name in guides:
        xs = [max(s, 0.3) for s in scales]
        line, = axes[0].plot(xs, [results[name]["by_scale"][str(s)]["judge_accuracy"] for s in scales], marker="o",
                             label=f"{name} ({results[name]['trainable_params']} params): judge")
        axes[0].plot(xs, [results[name]["by_scale"][str(s)]["accuracy"] for s in scales], ls=":",
                     color=line.get_color(), label=f"{name}: zoo classifier")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("guidance scale (0 plotted at 0.3)")
    axes[0].set_ylabel("target-class accuracy (solid: SVM judge, dotted: zoo CNN)")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    s_hi = scales[-1]
    tiles = torch.cat([torch.cat(list(examples[(n, s_hi)][:, 0]), dim=1) for n in guides], dim=0)
    axes[1].imshow(tiles.numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[1].set_yticks([8 * i + 3.5 for i in range(len(guides))], list(guides), fontsize=7)
    axes[1].set_xticks([8 * c + 3.5 for c in range(10)], [str(c) for c in range(10)])
    axes[1].set_title(f"guided samples, scale {s_hi} (same x_T)", fontsize=9)
    fig.tight_layout()

    hi = str(s_hi)
    summary = "; ".join(
        f"{n}: judge acc {results[n]['by_scale'][hi]['judge_accuracy']:.2f} "
        f"(zoo {results[n]['by_scale'][hi]['accuracy']:.2f}) FD {results[n]['by_scale'][hi]['digits_fd']:.1f} "
        f"({results[n]['trainable_params']} params{', labels' if results[n]['uses_labels'] else ''})"
        for n in guides)
    summary = f"uncond. judge acc {results['clean']['by_scale']['0']['judge_accuracy']:.2f}; scale {hi}: " + summary
    return {"n_experts": n_experts, "edges": edges.tolist(), "n_distill": n_distill, "expert_steps": expert_steps,
            "noisy_classifier_steps": noisy_steps, "n_per_class": n_per_class, "ddim_steps": steps,
            "scales": scales, "backbone_params": count_parameters(clf, trainable_only=False),
            "timing_seconds": timing, "results": results, "summary": summary}, fig


register_bench("ppap", "PPAP: multi-expert LoRA data-free guidance vs clean / noise-aware / full experts (digits)")(
    _run)
