"""CDCD (Zhu et al., ICLR 2023, arXiv 2206.07771): does the contrastive term make class-conditional discrete diffusion
follow its class more often, and what does it cost in diversity and digits-FD?

Tokens: 8 x 8 digits as 2 x 2 patches k-means'd to a 16-code codebook (16 tokens per digit, ``PatchVQTokens``, fitted
on the train split; decode = codebook lookup). Process: the absorbing mask chain, T = 80 (CDCD's T). Network: a
2-block token transformer (width 64, adaLN-Zero DiT blocks, class embedding). Loss: L_vb + lambda_aux (1 + t / T) CE
with CDCD's lambda_aux = 5e-4, plus the CDCD term for lambda_c in {1e-4, 1e-3, 1e-2} x {step-wise, sample-wise} x
{intra (8 chunks shuffled), inter (other-class samples)} negatives, 10 negatives, per-token KL clipped at log K.
Every model is trained from the same initialisation, data order and loss noise (seed 0; AdamW lr 1e-3, batch 64,
no EMA) for the same number of steps; ``lambda_c = 0`` is also trained with seed 1 to show the seed-to-seed spread.

Measured per model, from 50 samples per class drawn with the same per-sample seeds (ancestral, T steps):
* ``accuracy``: fraction of decoded samples the zoo ``digits_classifier`` assigns to the requested class
  (``accuracy_se`` its binomial standard error);
* ``digits_fd``: Frechet distance of classifier features to the test split;
* ``diversity``: mean pairwise L2 distance between decoded samples of the same class (averaged over classes), and
  ``unique``: fraction of distinct token sequences;
* ``neg_divergence``: on the test tokens at fixed (t, x_t, negatives), the mean per-token KL of the model from the
  negatives of each kind (what the contrastive term maximises), and ``test_vb``: the test L_vb.
"""

from __future__ import annotations

import time

import torch

from ..data import load_dataset
from ..methods.cdcd import CDCDLoss, contrastive_kl, sample_tokens, train_discrete
from ..methods.discrete import MaskReplaceDiffusion, PatchVQTokens, TokenTransformer
from ..metrics import class_accuracy, digits_fd, digits_features
from . import bench_progress, register_bench

NET = {"hidden_size": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0}
FULL = {"steps": 600, "lambdas": (1e-4, 1e-3, 1e-2, 1e-1), "per_class": 50, "num_steps": 80}
QUICK = {"steps": 200, "lambdas": (1e-1,), "per_class": 10, "num_steps": 20}
VARIANTS = (("step", "intra"), ("step", "inter"), ("sample", "intra"), ("sample", "inter"))
AUX_WEIGHT = 5e-4
CONTROL_AUX_WEIGHT = 1.0  # control: is a gain just "more x0 signal"? the baseline with a 2000x larger aux CE


def _diversity(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean pairwise L2 distance between that class's images."""
    out = []
    for c in labels.unique():
        x = images[labels == c].flatten(1)
        d = torch.cdist(x, x)
        n = x.shape[0]
        out.append(float(d.sum() / (n * (n - 1))))
    return sum(out) / len(out)


@torch.no_grad()
def _neg_divergence(process, net, tokens, labels, pool, seed: int = 123) -> tuple[dict, float]:
    """Mean per-token KL from the negatives of each (mode, kind) on fixed test (t, x_t, negatives); test L_vb."""
    out = {}
    for mode, kind in VARIANTS:
        gen = torch.Generator().manual_seed(seed)
        terms = process.loss_terms(net, tokens, gen, class_labels=labels)
        maker = CDCDLoss(process, lambda_c=1.0, mode=mode, negatives=kind, pool=pool)
        out[f"{mode}-{kind}"] = float(contrastive_kl(process, terms, maker.make_negatives(tokens, labels, gen),
                                                     mode).mean())
    gen = torch.Generator().manual_seed(seed)
    return out, float(process.loss_terms(net, tokens, gen, class_labels=labels)["vb"].mean())


def _run(quick: bool):
    return run_config(QUICK if quick else FULL, quick=quick, variants=VARIANTS[:2] if quick else VARIANTS)


def run_config(cfg: dict, *, quick: bool = False, variants=VARIANTS):
    """The bench for a config dict like ``FULL`` (steps, lambdas, per_class, num_steps) and a subset of ``VARIANTS``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo
    from ..plotting import image_grid

    classifier = zoo.load("digits_classifier")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    codec = PatchVQTokens.fit(train.x, 16, 2, seed=0)
    x_train, x_test = codec.encode(train.x), codec.encode(test.x)
    process = MaskReplaceDiffusion(codec.num_classes, cfg["num_steps"], absorbing=True)
    labels = torch.arange(10).repeat_interleave(cfg["per_class"])
    seeds = range(len(labels))
    runs = [("baseline", 0.0, "step", "intra", 0, AUX_WEIGHT), ("baseline seed 1", 0.0, "step", "intra", 1, AUX_WEIGHT),
            ("baseline aux 1", 0.0, "step", "intra", 0, CONTROL_AUX_WEIGHT)]
    runs += [(f"{mode}-{kind} {lam:g}", lam, mode, kind, 0, AUX_WEIGHT) for mode, kind in variants
             for lam in cfg["lambdas"]]
    reference = codec.decode(x_test)
    table, shown = {}, {}
    for name, lam, mode, kind, seed, aux in bench_progress(runs, desc="cdcd: models"):
        torch.manual_seed(seed)
        net = TokenTransformer(codec.num_classes, codec.grid, num_labels=10, **NET)
        loss = CDCDLoss(process, lambda_c=lam, mode=mode, negatives=kind, aux_weight=aux,
                        pool=(x_train, train.y))
        net, info = train_discrete(net, loss, x_train, train.y, steps=cfg["steps"], seed=seed)
        t0 = time.perf_counter()
        tokens = sample_tokens(process, net, labels, seeds, codec.seq_len)
        images = codec.decode(tokens)
        neg, test_vb = _neg_divergence(process, net, x_test, test.y, (x_train, train.y))
        acc = class_accuracy(images, labels, classifier=classifier)
        table[name] = {"lambda_c": lam, "mode": mode, "negatives": kind, "seed": seed, "aux_weight": aux, "train": info,
                       "sample_seconds": time.perf_counter() - t0, "accuracy": acc,
                       "accuracy_se": (acc * (1 - acc) / len(labels)) ** 0.5,
                       "digits_fd": digits_fd(images, test.x, classifier=classifier),
                       "diversity": _diversity(images, labels),
                       "unique": len({tuple(r) for r in tokens.tolist()}) / len(labels),
                       "neg_divergence": neg, "test_vb": test_vb}
        shown[name] = images[torch.cat([torch.arange(10) * cfg["per_class"], torch.arange(10) * cfg["per_class"] + 1])]
    ref = {"accuracy": class_accuracy(reference, test.y, classifier=classifier),
           "digits_fd_vq_test_vs_test": 0.0 if quick else digits_fd(reference, test.x, classifier=classifier),
           "diversity": _diversity(reference, test.y),
           "feature_dim": int(digits_features(reference[:2], classifier).shape[1])}

    fig = plt.figure(figsize=(17, 9))
    layout = fig.add_gridspec(2, 30)
    top = [fig.add_subplot(layout[0, 10 * i:10 * i + 9]) for i in range(3)]
    lambdas = (0.0,) + tuple(cfg["lambdas"])
    for ax, metric in zip(top, ("accuracy", "digits_fd", "diversity")):
        for mode, kind in VARIANTS:
            names = ["baseline"] + [f"{mode}-{kind} {lam:g}" for lam in cfg["lambdas"]]
            if names[1] not in table:
                continue
            ax.plot(range(len(lambdas)), [table[n][metric] for n in names], "o-", label=f"{mode}, {kind}")
        ax.axhline(table["baseline seed 1"][metric], color="grey", ls=":", label="lambda_c = 0, seed 1")
        ax.axhline(table["baseline aux 1"][metric], color="black", ls="--", label="lambda_c = 0, lambda_aux = 1")
        ax.set_xticks(range(len(lambdas)), [f"{v:g}" for v in lambdas])
        ax.set_xlabel("lambda_c")
        ax.set_title(metric + (" (requested class)" if metric == "accuracy" else ""), fontsize=9)
    top[0].legend(fontsize=7)
    grid_names = ["baseline"] + [f"step-inter {lam:g}" for lam in cfg["lambdas"][-3:]] + ["sample-inter 0.1"]
    grid_names = [n for n in grid_names if n in table]
    for i, name in enumerate(grid_names[:5]):
        ax = fig.add_subplot(layout[1, 6 * i:6 * i + 6])
        ax.imshow(image_grid(shown[name], 5), cmap="gray", vmin=0, vmax=255)
        ax.set_axis_off()
        ax.set_title(f"{name}\n(rows: classes 0-4, 5-9, twice)", fontsize=8)
    fig.tight_layout()
    base = table["baseline"]
    summary = (f"baseline acc {base['accuracy']:.3f} (seed 1: {table['baseline seed 1']['accuracy']:.3f}, "
               f"lambda_aux 1: {table['baseline aux 1']['accuracy']:.3f}, se {base['accuracy_se']:.3f}); " + ", ".join(
                   f"{n} {r['accuracy']:.3f}" for n, r in table.items() if r["lambda_c"] > 0))
    return {"config": {**cfg, "net": NET, "aux_weight": AUX_WEIGHT, "tokens": "2x2 patch VQ, 16 codes",
                       "process": process.config, "num_samples": len(labels)},
            "reference_vq_test": ref, "table": table, "summary": summary}, fig


register_bench("cdcd", "CDCD contrastive discrete diffusion: conditional accuracy / diversity / FD vs lambda_c, "
                       "step- vs sample-wise, intra vs inter negatives")(_run)
