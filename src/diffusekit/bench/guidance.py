"""Guidance on the digits model: CFG scale x rescale phi, and gradient guidance of the unconditional model.

Part 1 (``GuidedDenoiser``: CFG, Ho & Salimans 2022, with rescale phi, Lin et al. 2023): for each scale w and
phi, class-conditional DDIM samples (trailing grid, same x_T and labels everywhere) of the zoo digits model.
Metrics: class accuracy of the zoo classifier (``accuracy``) and of the independent SVM judge
(``judge_accuracy``, :mod:`diffusekit.metrics.judge`); diversity = mean pairwise L2 distance between samples of the same
class (averaged over classes); saturation = fraction of pixels with |x| > 1 in the final sample before clipping;
digits-FD of the clipped samples against the test split.

Part 2 (unconditional model, null labels): classifier guidance with a noise-aware classifier trained here
(Dhariwal & Nichol 2021) and universal guidance with the clean zoo classifier through the denoiser (Bansal et
al. 2023) at a few scales; accuracy, diversity and FD. Classifier guidance uses the eps hook (the score shift of
the paper). Universal guidance is shown with the x0 hook (x0_hat += scale * grad) and, at one scale, with the eps
hook: there the sigma^2/alpha factor is ~1/alpha ~ 150 at the first steps of the discrete VP schedule, and a
clean classifier's gradient on a blurry x0_hat is not small there, so samples saturate (measured: FD > 240 at
scale 1). The universal-guidance objective is the zoo classifier itself, so its
``accuracy`` is optimistic (optimised against the scorer); ``judge_accuracy`` comes from an RBF-SVM on pixels
that no method ever differentiates, and is the figure to quote. FD uses the zoo classifier's features.
"""

from __future__ import annotations

import time

import torch

from ..core import make_grid, prior_sample
from ..data import load_dataset
from ..methods.classifier_guidance import (ClassifierGuidedDenoiser, UniversalGuidedDenoiser, classifier_log_prob,
                                           train_noisy_classifier)
from ..methods.guidance import GuidedDenoiser
from ..metrics import class_accuracy, digits_fd, judge_accuracy
from ..samplers import sample_ddim
from . import bench_progress, register_bench


def _diversity(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise L2 distance between samples of the same label, averaged over labels."""
    vals = []
    for c in labels.unique():
        xc = x[labels == c].flatten(1).double()
        if len(xc) > 1:
            d = torch.cdist(xc, xc)
            vals.append(d.sum() / (len(xc) * (len(xc) - 1)))
    return float(torch.stack(vals).mean())


def _metrics(x_raw: torch.Tensor, labels: torch.Tensor, clf, reference: torch.Tensor) -> dict:
    x = x_raw.clamp(-1, 1)
    return {"accuracy": class_accuracy(x, labels, classifier=clf), "judge_accuracy": judge_accuracy(x, labels),
            "diversity": _diversity(x, labels),
            "saturation": float((x_raw.abs() > 1).double().mean()),
            "digits_fd": digits_fd(x, reference, classifier=clf)}


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo

    scales = [1, 3, 8] if quick else [1, 2, 3, 5, 8]
    phis = [0.0, 0.75] if quick else [0.0, 0.5, 0.75, 1.0]
    n_per_class = 4 if quick else 20
    steps = 8 if quick else 20
    clf_steps = 150 if quick else 1500
    grad_scales = {"classifier": [0, 3, 10] if quick else [0, 1, 3, 10, 30],
                   "universal": [0, 0.3] if quick else [0, 0.1, 0.3, 1], "universal_eps": [1]}

    den, clf = zoo.load("digits_unet"), zoo.load("digits_classifier")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    labels = torch.arange(10).repeat_interleave(n_per_class)
    null = torch.full_like(labels, den.null_class)
    x_T = prior_sample(den.schedule, (len(labels), 1, 8, 8), torch.Generator().manual_seed(0))
    ts = make_grid("trailing", den.schedule, steps)

    def sample(d, **cond):
        with torch.no_grad():
            return sample_ddim(d, x_T, ts, cond=cond)

    n_runs = len(phis) * len(scales) + 1 + sum(map(len, grad_scales.values()))  # samplings + classifier training
    runs = bench_progress(desc="guidance: runs", total=n_runs)
    cfg, examples = {}, {}
    for phi in phis:
        cfg[str(phi)] = {}
        for w in scales:
            runs.update()
            x = sample(GuidedDenoiser(den, float(w), rescale=phi), class_labels=labels)
            cfg[str(phi)][str(w)] = _metrics(x, labels, clf, test.x)
            examples[(phi, w)] = x[::n_per_class].clamp(-1, 1)

    runs.update()
    t0 = time.perf_counter()
    noisy_clf = train_noisy_classifier(den.schedule, train.x, train.y, steps=clf_steps, seed=0)
    clf_seconds = time.perf_counter() - t0
    grad = {"classifier": {}, "universal": {}, "universal_eps": {}}
    for s in grad_scales["classifier"]:
        runs.update()
        x = sample(ClassifierGuidedDenoiser(den, noisy_clf, float(s)), class_labels=null, guidance_labels=labels)
        grad["classifier"][str(s)] = _metrics(x, labels, clf, test.x)
        examples[("classifier", s)] = x[::n_per_class].clamp(-1, 1)
    objective = classifier_log_prob(clf)
    for kind, hook in (("universal", "x0"), ("universal_eps", "eps")):
        for s in grad_scales[kind]:
            runs.update()
            x = sample(UniversalGuidedDenoiser(den, objective, float(s), hook=hook), class_labels=null,
                       guidance_labels=labels)
            grad[kind][str(s)] = _metrics(x, labels, clf, test.x)
            examples[(kind, s)] = x[::n_per_class].clamp(-1, 1)
    runs.close()

    fig = plt.figure(figsize=(16, 9))
    grid = fig.add_gridspec(2, 5)
    for k, key in enumerate(("accuracy", "judge_accuracy", "digits_fd", "saturation", "diversity")):
        ax = fig.add_subplot(grid[0, k])
        for phi in phis:
            ax.plot(scales, [cfg[str(phi)][str(w)][key] for w in scales], marker="o", label=f"CFG phi={phi}")
        for kind, style in (("classifier", "s--"), ("universal", "^:"), ("universal_eps", "x")):
            ss = grad_scales[kind]
            ax.plot([max(s, 0.05) for s in ss], [grad[kind][str(s)][key] for s in ss], style, color="grey" if
                    kind == "classifier" else "black", label=f"{kind} guid. (uncond.)")
        ax.set_xscale("log")
        ax.set_xlabel("guidance scale (0 plotted at 0.05)")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=6)
    rows = [(phis[0], w) for w in scales] + [(phis[-1], scales[-1])] + \
           [("classifier", grad_scales["classifier"][-1]), ("universal", grad_scales["universal"][-1]),
            ("universal_eps", grad_scales["universal_eps"][-1])]
    ax = fig.add_subplot(grid[1, :])
    tiles = torch.cat([torch.cat(list(examples[r][:, 0]), dim=1) for r in rows], dim=0)  # (8 rows, 80)
    ax.imshow(tiles.numpy(), cmap="gray", vmin=-1, vmax=1)
    ax.set_yticks([8 * i + 3.5 for i in range(len(rows))],
                  [f"CFG w={r[1]} phi={r[0]}" if not isinstance(r[0], str) else f"{r[0]} s={r[1]} (uncond.)"
                   for r in rows], fontsize=7)
    ax.set_xticks([8 * c + 3.5 for c in range(10)], [str(c) for c in range(10)])
    ax.set_title("examples: one sample per class (same x_T)", fontsize=9)
    fig.tight_layout()

    w_hi = str(scales[-1])
    c_hi, u_hi = str(grad_scales["classifier"][-1]), str(grad_scales["universal"][-1])
    summary = (f"CFG w={w_hi}: acc {cfg['0.0'][w_hi]['accuracy']:.2f}, sat {cfg['0.0'][w_hi]['saturation']:.3f}, "
               f"FD {cfg['0.0'][w_hi]['digits_fd']:.1f} (phi 0) vs acc {cfg[str(phis[-1])][w_hi]['accuracy']:.2f}, "
               f"sat {cfg[str(phis[-1])][w_hi]['saturation']:.3f}, FD {cfg[str(phis[-1])][w_hi]['digits_fd']:.1f} "
               f"(phi {phis[-1]}); w=1 acc {cfg['0.0']['1']['accuracy']:.2f}; uncond. acc "
               f"{grad['classifier']['0']['accuracy']:.2f} -> classifier guid. s={c_hi} "
               f"{grad['classifier'][c_hi]['accuracy']:.2f} (FD {grad['classifier'][c_hi]['digits_fd']:.1f}) "
               f"(judge {grad['classifier'][c_hi]['judge_accuracy']:.2f}), "
               f"universal s={u_hi} {grad['universal'][u_hi]['accuracy']:.2f} "
               f"(judge {grad['universal'][u_hi]['judge_accuracy']:.2f}) "
               f"(FD {grad['universal'][u_hi]['digits_fd']:.1f}); eps-hook universal s=1 "
               f"{grad['universal_eps']['1']['accuracy']:.2f} (FD {grad['universal_eps']['1']['digits_fd']:.1f})")
    return {"scales": scales, "rescale_phi": phis, "n_per_class": n_per_class, "ddim_steps": steps,
            "grid": "trailing", "cfg": cfg, "gradient_guidance": grad, "gradient_guidance_scales": grad_scales,
            "noisy_classifier": {"steps": clf_steps, "train_seconds": clf_seconds}, "summary": summary}, fig


register_bench("guidance", "CFG scale x rescale phi on digits; classifier/universal guidance of the uncond. model")(
    _run)
