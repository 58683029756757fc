"""AFA (adaptive feature aggregation, arXiv 2405.17082) vs static ensembles of biased digits experts.

Experts: three class-conditional digits UNets (``DEMO_NET``: base 16, mults (1, 2), no attention; eps, linear VP
T = 1000, label dropout 0.1). They share an initialisation on purpose: one base net is trained on the whole train
split for a short while, then each copy is fine-tuned on a biased subset (``EXPERT_SUBSETS``): ``0-4`` (95% of
its examples are digits 0-4), ``5-9`` (95% digits 5-9) and ``thick`` (the half of the images with the most ink,
all classes). A shared start makes weight averaging a fair baseline (fine-tunes of one net stay roughly
linearly connected); from independent inits the averaged weights would not be a working network.

Compared, on the digits test split: AFA (aggregators only, trained on the whole train split with the experts
frozen), output averaging (mean eps), weight averaging (mean parameters) and each expert alone. Reported:
eps-MSE per timestep bucket (the same x0, t and eps for every model), digits-FD and class accuracy of
class-conditional samples (DDIM, trailing grid, guidance 1 = the conditional model itself), per-class
accuracy and class coverage (classes whose samples the zoo classifier recognises at >= 50%). A reference that is
not an ensemble, ``generalist``, continues the shared base on the whole train split for as many steps as an
expert's fine-tune plus AFA's training. The softmax
aggregation maps are recorded per t: their spatial spread (mean over pixels of the std over pixels) and the
mean weight each expert gets on test images of digits 0-4 and of 5-9 at every t bucket.
"""

from __future__ import annotations

import copy
import time

import torch

from ..core import NetworkDenoiser, VPDiscrete, schedule_from_config
from ..data import load_dataset
from ..methods.afa import AFAEnsemble, OutputAverage, average_weights, train_afa
from ..metrics import class_accuracy, digits_fd
from ..nets import build_net
from ..training import TrainConfig, Trainer
from ..zoo.recipes import DEMO_NET, DIGITS_LOSS, DIGITS_SCHEDULE, make_loss, sample_digits
from . import bench_progress, register_bench

EXPERT_SUBSETS = ("0-4", "5-9", "thick")
MAJORITY = 0.95  # share of a class-biased expert's examples from its own classes
FULL = {"base_steps": 500, "expert_steps": 1000, "afa_steps": 800, "batch": 64, "afa_hidden": 32, "afa_lr": 2e-3,
        "loss_reps": 8, "n_per_class": 50, "sample_steps": 25}
QUICK = {"base_steps": 100, "expert_steps": 80, "afa_steps": 150, "batch": 32, "afa_hidden": 16, "afa_lr": 2e-3,
         "loss_reps": 1, "n_per_class": 5, "sample_steps": 6}
T_BUCKETS = ((0, 100), (100, 300), (300, 600), (600, 1000))  # integer timesteps, [lo, hi)
MAP_TIMESTEPS = (20, 200, 500, 800, 980)


def biased_subsets(x: torch.Tensor, y: torch.Tensor, *, majority: float = MAJORITY, seed: int = 0) -> dict:
    """Indices of each expert's training subset (see the module docstring): ``0-4`` / ``5-9`` keep every image of
    their classes plus other-class images so that those make up ``1 - majority`` of the subset; ``thick`` is
    the half of the images with the most ink (sum of (x + 1) / 2)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, own in (("0-4", y < 5), ("5-9", y >= 5)):
        inside, outside = own.nonzero().squeeze(1), (~own).nonzero().squeeze(1)
        k = int(round(len(inside) * (1 - majority) / majority))
        out[name] = torch.cat([inside, outside[torch.randperm(len(outside), generator=g)[:k]]])
    ink = ((x + 1) / 2).flatten(1).sum(1)
    out["thick"] = (ink >= ink.median()).nonzero().squeeze(1)
    return out


def _fit(net, data: tuple, steps: int, batch: int, seed: int, lr: float = 2e-3):
    """Train ``net`` (DIGITS_LOSS: eps, label dropout 0.1) and return its EMA copy."""
    config = TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=min(50, steps), ema_decay=0.99,
                         seed=seed, progress=False, log_every=max(1, steps))
    trainer = Trainer(net, make_loss(DIGITS_SCHEDULE, DIGITS_LOSS), data, config)
    trainer.fit()
    return trainer.ema_model.eval()


def train_experts(x: torch.Tensor, y: torch.Tensor, sizes: dict) -> tuple[list, dict, torch.nn.Module]:
    """The shared base net, then one fine-tuned copy per biased subset. Returns (experts, info, base)."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    base = _fit(build_net(DEMO_NET), (x, y), sizes["base_steps"], sizes["batch"], seed=0)
    subsets = biased_subsets(x, y)
    experts = []
    for k, name in enumerate(bench_progress(EXPERT_SUBSETS, desc="afa: experts")):
        idx = subsets[name]
        start = copy.deepcopy(base).train().requires_grad_(True)
        experts.append(_fit(start, (x[idx], y[idx]), sizes["expert_steps"], sizes["batch"], seed=k + 1))
    info = {"subset_sizes": {n: len(subsets[n]) for n in EXPERT_SUBSETS},
            "subset_share_0_4": {n: float((y[subsets[n]] < 5).double().mean()) for n in EXPERT_SUBSETS},
            "seconds": time.perf_counter() - t0}
    return experts, info, base


@torch.no_grad()
def loss_by_bucket(net, schedule: VPDiscrete, x: torch.Tensor, y: torch.Tensor, *, reps: int, seed: int = 0) -> dict:
    """Test eps-MSE per timestep bucket (``T_BUCKETS``) and overall: each image is noised ``reps`` times per bucket
    at a uniform integer timestep of the bucket, with draws fixed by ``seed`` (identical for every model)."""
    den = NetworkDenoiser(net, schedule, "eps")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for lo, hi in T_BUCKETS:
        losses = []
        for _ in range(reps):
            n = torch.randint(lo, hi, (len(x),), generator=g)
            t = schedule.t_of_timestep(n)
            eps = torch.randn(x.shape, generator=g)
            pred = den.raw(schedule.add_noise(x, t, eps), t, class_labels=y)
            losses.append(((pred - eps) ** 2).flatten(1).mean(1))
        out[f"{lo}-{hi}"] = float(torch.cat(losses).mean())
    weights = [hi - lo for lo, hi in T_BUCKETS]  # uniform t over [0, T): bucket means weighted by width
    out["all"] = sum(w * out[f"{lo}-{hi}"] for w, (lo, hi) in zip(weights, T_BUCKETS)) / sum(weights)
    return out


@torch.no_grad()
def aggregation_statistics(ensemble: AFAEnsemble, schedule: VPDiscrete, x: torch.Tensor, y: torch.Tensor,
                           seed: int = 0) -> dict:
    """Per map timestep: mean weight of each expert on digits 0-4 and 5-9 (over pixels and aggregation points),
    and the spatial spread (std over pixels, averaged over images, experts and points)."""
    g = torch.Generator().manual_seed(seed)
    stats = {}
    for n in MAP_TIMESTEPS:
        t = schedule.t_of_timestep(torch.full((len(x),), n))
        x_t = schedule.add_noise(x, t, torch.randn(x.shape, generator=g))
        _, maps = ensemble(x_t.float(), schedule.network_time(t).float(), y, return_weights=True)
        per_image = torch.stack([a.flatten(2).mean(2) for a in maps]).mean(0)  # (B, M)
        spread = torch.stack([a.flatten(2).std(2).mean() for a in maps if a[0, 0].numel() > 1]).mean()
        stats[str(n)] = {"mean_weight_0_4": per_image[y < 5].mean(0).tolist(),
                         "mean_weight_5_9": per_image[y >= 5].mean(0).tolist(),
                         "spatial_std": float(spread)}
    return stats


def _sample_metrics(net, schedule, classifier, test_x, n_per_class: int, steps: int) -> dict:
    labels = torch.arange(10).repeat_interleave(n_per_class)
    samples = sample_digits(NetworkDenoiser(net, schedule, "eps"), labels, guidance=1.0, steps=steps, seed=0)
    per_class = [class_accuracy(samples[labels == c], labels[labels == c], classifier=classifier) for c in range(10)]
    return {"digits_fd": digits_fd(samples, test_x, classifier=classifier),
            "class_accuracy": class_accuracy(samples, labels, classifier=classifier),
            "accuracy_0_4": sum(per_class[:5]) / 5, "accuracy_5_9": sum(per_class[5:]) / 5,
            "class_coverage": sum(a >= 0.5 for a in per_class), "per_class_accuracy": per_class}, samples


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo
    from ..plotting import image_grid

    sizes = QUICK if quick else FULL
    schedule = schedule_from_config(DIGITS_SCHEDULE)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    classifier = zoo.load("digits_classifier")
    experts, expert_info, base = train_experts(train.x, train.y, sizes)
    # reference, not an ensemble: the shared base trained on the whole train split for as many more steps as an
    # expert's fine-tune plus AFA's training (one model, all data)
    t0 = time.perf_counter()
    generalist = _fit(copy.deepcopy(base).train().requires_grad_(True), (train.x, train.y),
                      sizes["expert_steps"] + sizes["afa_steps"], sizes["batch"], seed=10)
    expert_info["generalist_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ensemble = AFAEnsemble(experts, hidden=sizes["afa_hidden"])
    init_loss = loss_by_bucket(ensemble, schedule, test.x, test.y, reps=sizes["loss_reps"])["all"]
    history = train_afa(ensemble, (train.x, train.y), schedule, steps=sizes["afa_steps"], batch_size=sizes["batch"],
                        lr=sizes["afa_lr"])
    ensemble.eval()
    afa_seconds = time.perf_counter() - t0

    models = {"afa": ensemble, "output_avg": OutputAverage(experts), "weight_avg": average_weights(experts)}
    models.update({f"expert_{name}": e for name, e in zip(EXPERT_SUBSETS, experts)})
    models["generalist"] = generalist
    table, shown = {}, {}
    for name, net in bench_progress(models.items(), desc="afa: evaluate", total=len(models)):
        t1 = time.perf_counter()
        losses = loss_by_bucket(net, schedule, test.x, test.y, reps=sizes["loss_reps"])
        metrics, samples = _sample_metrics(net, schedule, classifier, test.x, sizes["n_per_class"],
                                           sizes["sample_steps"])
        table[name] = {"test_loss": losses, **metrics, "eval_seconds": time.perf_counter() - t1}
        shown[name] = samples.reshape(10, -1, 1, 8, 8)[:, 0]
    stats = aggregation_statistics(ensemble, schedule, test.x, test.y)
    n_show = 4  # a few test images of digits 0-4 and 5-9 for the maps
    show_idx = torch.cat([(test.y < 5).nonzero()[:n_show // 2, 0], (test.y >= 5).nonzero()[:n_show // 2, 0]])

    fig = plt.figure(figsize=(15, 10))
    grid = fig.add_gridspec(3, 4)
    ax = fig.add_subplot(grid[0, :2])
    names = list(table)
    buckets = [f"{lo}-{hi}" for lo, hi in T_BUCKETS] + ["all"]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([b + (i - len(names) / 2 + 0.5) * width for b in range(len(buckets))],
               [table[name]["test_loss"][b] / table["output_avg"]["test_loss"][b] for b in buckets], width, label=name)
    ax.set_xticks(range(len(buckets)), [f"t {b}" for b in buckets])
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_ylim(0.85, 1.2)
    ax.set_title("test eps-MSE per timestep bucket, relative to output averaging (lower is better)", fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    ax = fig.add_subplot(grid[0, 2])
    ax.bar(range(len(names)), [table[n]["digits_fd"] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
    ax.set_title("digits-FD (lower is better)", fontsize=9)
    ax = fig.add_subplot(grid[0, 3])
    for k, (key, label) in enumerate((("accuracy_0_4", "digits 0-4"), ("accuracy_5_9", "digits 5-9"))):
        ax.bar([i + (k - 0.5) * 0.4 for i in range(len(names))], [table[n][key] for n in names], 0.4, label=label)
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
    ax.set_ylim(0.5, 1.0)
    ax.set_title("class accuracy of conditional samples", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax = fig.add_subplot(grid[1, :2])
    ts = [int(n) for n in stats]
    for m, name in enumerate(EXPERT_SUBSETS):
        ax.plot(ts, [stats[str(n)]["mean_weight_0_4"][m] for n in ts], "-o", label=f"{name} on digits 0-4")
        ax.plot(ts, [stats[str(n)]["mean_weight_5_9"][m] for n in ts], "--s", label=f"{name} on digits 5-9")
    ax.axhline(1 / len(experts), color="grey", lw=0.5)
    ax.set_xlabel("timestep")
    ax.set_title("mean AFA weight per expert (all aggregation points)", fontsize=9)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[1, 2:])
    rows = torch.cat([shown[n] for n in names])
    ax.imshow(image_grid(rows, 10), cmap="gray", vmin=0, vmax=255)
    ax.set_yticks([(i + 0.5) * 9 for i in range(len(names))], names, fontsize=7)
    ax.set_xticks([])
    ax.set_title("one sample per class", fontsize=9)
    ax = fig.add_subplot(grid[2, :])
    ax.imshow(_map_mosaic(ensemble, schedule, test.x[show_idx], test.y[show_idx]), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks([(j + 0.5) * 9 * (len(experts) + 1) for j in range(len(MAP_TIMESTEPS))],
                  [f"t={n}: x_t, " + ", ".join(EXPERT_SUBSETS) for n in MAP_TIMESTEPS], fontsize=7)
    ax.set_yticks([(i + 0.5) * 9 for i in range(len(show_idx))], [f"digit {int(c)}" for c in test.y[show_idx]],
                  fontsize=7)
    ax.set_title("AFA weights at conv_in (8x8) per expert", fontsize=9)
    fig.tight_layout()

    a = table["afa"]["test_loss"]["all"]
    best_name = min((n for n in table if n.startswith("expert_")), key=lambda n: table[n]["test_loss"]["all"])
    loss_all = {n: table[n]["test_loss"]["all"] for n in table}
    summary = (f"test eps-MSE: AFA {a:.4f} (uniform-feature init {init_loss:.4f}), output avg "
               f"{loss_all['output_avg']:.4f}, weight avg {loss_all['weight_avg']:.4f}, "
               f"best expert {best_name} {loss_all[best_name]:.4f}, generalist (one net, all data, not an ensemble) "
               f"{loss_all['generalist']:.4f}; digits-FD / accuracy: "
               + ", ".join(f"{n} {table[n]['digits_fd']:.2f}/{table[n]['class_accuracy']:.3f}" for n in table))
    return {"sizes": sizes, "experts": expert_info, "expert_net": DEMO_NET,
            "afa": {"aggregator_params": sum(p.numel() for p in ensemble.trainable_parameters()),
                    "expert_params": sum(p.numel() for p in experts[0].parameters()),
                    "points": ensemble.points, "init_test_loss": init_loss, "train_seconds": afa_seconds,
                    "final_train_loss": sum(history["loss"][-50:]) / len(history["loss"][-50:])},
            "table": table, "best_expert": best_name, "aggregation": stats, "summary": summary}, fig


@torch.no_grad()
def _map_mosaic(ensemble: AFAEnsemble, schedule: VPDiscrete, x: torch.Tensor, y: torch.Tensor):
    """Image rows: one test image each; per map timestep a block of x_t (rescaled to [0, 1]) then the conv_in
    weight map of every expert."""
    import numpy as np

    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(len(x)):
        cells = []
        for n in MAP_TIMESTEPS:
            t = schedule.t_of_timestep(torch.tensor([n]))
            x_t = schedule.add_noise(x[i:i + 1], t, torch.randn((1, *x.shape[1:]), generator=g)).float()
            _, maps = ensemble(x_t, schedule.network_time(t).float(), y[i:i + 1], return_weights=True)
            cells.append(((x_t[0, 0].clamp(-2, 2) + 2) / 4).numpy())
            cells.extend(maps[0][0, m].numpy() for m in range(ensemble.num_experts))
        rows.append(np.concatenate([np.pad(c, ((0, 1), (0, 1)), constant_values=np.nan) for c in cells], axis=1))
    return np.concatenate(rows, axis=0)


register_bench("afa", "AFA (adaptive feature aggregation) vs output / weight averaging and single biased digits "
                      "experts: loss per t, digits-FD, class accuracy, aggregation maps")(_run)
