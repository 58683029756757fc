"""DITTO-2 with a distilled surrogate vs DITTO through the full sampler, on digits: ``diffusekit bench ditto2``.

DITTO-2 (Novack et al. 2024, arXiv 2405.20289) optimises the initial noise x_T through a 1-2 step distilled
student and decodes the result with the full multi-step sampler. Here the teacher is the class-conditional
``digits_unet`` run with the null class (unconditional: all control comes from x_T), decoded by DDIM on the
trailing grid (``decode_steps``); the control is a target class, L = -log p(class | x0) from the zoo CNN
``digits_classifier`` (``ditto.class_loss``). Rows, all with the same Adam iterations, lr and norm regulariser
from the same x_T batch, all decoded by the same full sampler:

* ``baseline``: no optimisation;
* ``ditto_full``: DITTO (arXiv 2401.12179): Adam through the full ``decode_steps``-step sampler;
* ``ditto2_ddim_stand_in``: the surrogate is the teacher's own 2-step DDIM (no training);
* ``ditto2_zoo_student``: the surrogate is the zoo's ``digits_student_2step`` (when shipped; consistency
  distillation of the conditional teacher) run by its native sampling (consistency sampling, its re-injected
  noise fixed so the map is deterministic); ``ditto2_zoo_student_1step``: the paper's surrogate, the one-step
  consistency model f(x_T, t_0);
* ``ditto2_progressive_student``: a 2-step progressive-distillation student (Salimans & Ho 2022, arXiv
  2202.00512) trained here: 16 -> 8 -> 4 -> 2 steps on the trailing grid (quick: 8 -> 4 -> 2),
  ``distill_steps`` optimizer steps a round, on the digits train split with the null class (the unconditional
  model the control runs through). ``students`` in the JSON gives each student's source, training time (not
  counted in ``seconds``) and sampling.

Per row: ``control_loss_median`` (median over examples of L at the decoded x0), ``target_accuracy_cnn`` (the
network optimised against, optimistic by construction) and ``target_accuracy_judge`` (the independent RBF-SVM of
``metrics.judge``), ``surrogate_gap`` = mean |G_s(x_T*) - G(x_T*)| (how well the surrogate stands for the full
sampler at the optimised noise), ``seconds_median`` (optimisation + decode, median over ``repeats`` runs) and
``optimiser_nfe``.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..core import make_grid, prior_sample
from ..data import load_dataset
from ..methods.distill import progressive_distill
from ..methods.ditto import _resolve_sampler, class_loss, decode, ditto2, optimize_noise, student_surrogate_grid
from ..metrics import judge_accuracy
from ..training.config import TrainConfig
from . import bench_progress, register_bench

ZOO_STUDENT = "digits_student_2step"


def _config(quick: bool) -> dict:
    if quick:
        return {"batch": 10, "iters": 20, "decode_steps": 10, "repeats": 1, "distill_start": 8, "distill_steps": 60,
                "distill_batch": 32}
    return {"batch": 20, "iters": 30, "decode_steps": 20, "repeats": 3, "distill_start": 16, "distill_steps": 300,
            "distill_batch": 64}


def zoo_surrogate() -> tuple:
    """(student, native sampling, description) of the zoo's 2-step digits student, or (None, None, why not)."""
    from .. import zoo

    try:
        student = zoo.load(ZOO_STUDENT)
        meta = zoo.manifest(ZOO_STUDENT)
    except Exception as e:  # not shipped (yet)
        return None, None, {"source": f"zoo:{ZOO_STUDENT} not available ({type(e).__name__}: {e})"}
    native = (meta.get("student") or {}).get("native")
    if not (isinstance(native, dict) and "sampler" in native):
        return None, None, {"source": f"zoo:{ZOO_STUDENT} has no native sampling in its manifest"}
    return student, native, {"source": f"zoo:{ZOO_STUDENT}", "method": meta["student"].get("method"),
                             "train_seconds": meta.get("training_seconds"),
                             "train_steps": (meta.get("training") or {}).get("steps")}


def progressive_surrogate(teacher, cfg: dict) -> tuple:
    """(student, native sampling, description): a 2-step progressive-distillation student of ``teacher``
    (Salimans & Ho 2022, arXiv 2202.00512) on the trailing grid, trained here on digits with the null class."""
    train = load_dataset("digits", "train")
    data = (train.x, torch.full_like(train.y, teacher.null_class))
    t0 = time.perf_counter()
    rounds = progressive_distill(teacher, make_grid("trailing", teacher.schedule, cfg["distill_start"]), data,
                                 TrainConfig(steps=cfg["distill_steps"], batch_size=cfg["distill_batch"], lr=1e-4,
                                             warmup_steps=0, grad_clip=1.0, ema_decay=None, seed=0, progress=False,
                                             log_every=cfg["distill_steps"]),
                                 final_steps=2)
    student = rounds[-1].student
    student.net.requires_grad_(False)
    native = {"sampler": "ddim", "steps": rounds[-1].steps, "ts": [float(t) for t in rounds[-1].ts]}
    return student, native, {"source": "progressive distillation here (null class)",
                             "rounds": f"{cfg['distill_start']} -> 2", "steps_per_round": cfg["distill_steps"],
                             "train_seconds": time.perf_counter() - t0}


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo

    cfg = _config(quick)
    n, iters, dsteps = cfg["batch"], cfg["iters"], cfg["decode_steps"]
    lr, reg_weight = 0.1, 10.0
    den, clf = zoo.load("digits_unet"), zoo.load("digits_classifier")
    for p in list(den.net.parameters()) + list(clf.parameters()):
        p.requires_grad_(False)
    surrogates, students_info = {}, {}  # row -> (student, sampling)
    zs, znative, students_info["zoo"] = zoo_surrogate()
    if zs is not None:
        surrogates["ditto2_zoo_student"] = (zs, znative)
        if znative["sampler"] == "consistency" and znative["steps"] > 1:  # the paper's surrogate: the 1-step f(x_T)
            surrogates["ditto2_zoo_student_1step"] = (zs, {"sampler": "consistency", "steps": 1,
                                                           "ts": [float(znative["ts"][0]), 0.0]})
    ps, pnative, students_info["progressive"] = progressive_surrogate(den, cfg)
    surrogates["ditto2_progressive_student"] = (ps, pnative)
    for row, (_, sampling) in surrogates.items():
        students_info.setdefault("sampling", {})[row] = sampling
    labels = torch.arange(n) % 10
    cond = {"class_labels": torch.full_like(labels, den.null_class)}
    x_T = prior_sample(den.schedule, (n, 1, 8, 8), torch.Generator().manual_seed(0))
    loss_fn = class_loss(clf, labels)

    def full_map(x):
        return decode(den, x, steps=dsteps, cond=cond)

    def run(row):
        if row == "baseline":
            return x_T, None, full_map(x_T)
        if row == "ditto_full":
            x_opt, hist = optimize_noise(den, loss_fn, x_T, steps=dsteps, iters=iters, lr=lr, reg_weight=reg_weight,
                                         cond=cond)
            return x_opt, hist, full_map(x_opt)
        if row == "ditto2_ddim_stand_in":
            x0, x_opt, hist = ditto2(den, loss_fn, x_T, surrogate_steps=2, decode_steps=dsteps, iters=iters, lr=lr,
                                     reg_weight=reg_weight, cond=cond)
            return x_opt, hist, x0
        student, sampling = surrogates[row]
        x0, x_opt, hist = ditto2(den, loss_fn, x_T, decode_steps=dsteps, student=student, student_sampling=sampling,
                                 iters=iters, lr=lr, reg_weight=reg_weight, cond=cond)
        return x_opt, hist, x0

    def surrogate(row, x):
        with torch.no_grad():
            if row == "ditto2_ddim_stand_in":
                return decode(den, x, steps=2, cond=cond)
            if row in surrogates:
                student, sampling = surrogates[row]
                return _resolve_sampler(sampling["sampler"])(student, x, student_surrogate_grid(student, sampling),
                                                             cond=cond)
            return full_map(x)

    rows = ("baseline", "ditto_full", "ditto2_ddim_stand_in", *surrogates)
    table, shown = {}, {}
    bar = bench_progress(desc="ditto2: rows x repeats", total=len(rows) * cfg["repeats"])
    for row in rows:
        times = []
        for _ in range(cfg["repeats"]):
            t0 = time.perf_counter()
            x_opt, hist, x0 = run(row)
            times.append(time.perf_counter() - t0)
            bar.update()
        with torch.no_grad():
            per_example = loss_fn(x0)
            table[row] = {
                "control_loss_median": float(per_example.median()),
                "control_loss_mean": float(per_example.mean()),
                "target_accuracy_cnn": float((clf(x0).argmax(1) == labels).double().mean()),
                "target_accuracy_judge": judge_accuracy(x0.clamp(-1, 1), labels),
                "surrogate_gap": float((surrogate(row, x_opt) - x0).abs().mean()),
                "seconds_median": statistics.median(times), "seconds_all": times,
                "x_T_radius": float((x_opt.reshape(n, -1).norm(dim=1) / 8.0).mean()),
            }
            if hist is not None:
                table[row]["surrogate_loss_first_last"] = [hist["loss"][0], hist["loss"][-1]]
                table[row]["optimiser_nfe"] = iters * hist["nfe_per_iter"]
        shown[row] = x0[:10].clamp(-1, 1)
    bar.close()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    short = {"baseline": "base", "ditto_full": f"DITTO-{dsteps}", "ditto2_ddim_stand_in": "D2: DDIM-2",
             "ditto2_zoo_student": "D2: zoo", "ditto2_zoo_student_1step": "D2: zoo-1",
             "ditto2_progressive_student": "D2: PD-2"}
    names = [short[r] for r in rows]
    nr = len(rows)
    colors = ["grey", "C0", "C1", "C2", "C3", "C4"][:nr]
    axes[0].bar(range(nr), [table[r]["seconds_median"] for r in rows], color=colors)
    axes[0].set_xticks(range(nr), names, fontsize=8)
    axes[0].set_ylabel("seconds (median): optimise + decode")
    axes[0].set_title(f"wall time, {iters} Adam iters, batch {n}", fontsize=9)
    for k, (key, label) in enumerate((("target_accuracy_cnn", "zoo CNN (optimised against)"),
                                      ("target_accuracy_judge", "SVM judge (independent)"))):
        axes[1].bar([i + 0.4 * k - 0.2 for i in range(nr)], [table[r][key] for r in rows], width=0.4, label=label)
    axes[1].set_xticks(range(nr), names, fontsize=8)
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=7)
    axes[1].set_title(f"target-class accuracy after the {dsteps}-step decode", fontsize=9)
    grid = torch.cat([torch.cat(list(shown[r][:, 0]), dim=1) for r in rows], dim=0)
    axes[2].imshow(grid.numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[2].set_yticks([4 + 8 * i for i in range(nr)], names, fontsize=8)
    axes[2].set_xticks([])
    axes[2].set_title("decoded samples (targets 0..9)", fontsize=9)
    fig.tight_layout()

    full = table["ditto_full"]

    def line(r):
        row = table[r]
        return (f"{short[r]} acc {row['target_accuracy_cnn']:.2f}/{row['target_accuracy_judge']:.2f}, median loss "
                f"{row['control_loss_median']:.3g}, {row['seconds_median']:.1f}s"
                + (f" ({full['seconds_median'] / row['seconds_median']:.1f}x faster than DITTO), gap "
                   f"{row['surrogate_gap']:.3f}" if r not in ("baseline", "ditto_full") else ""))

    summary = (f"class control, target accuracy CNN/judge after the {dsteps}-step decode: "
               + "; ".join(line(r) for r in rows))
    return {"config": cfg, "lr": lr, "reg_weight": reg_weight, "model": "digits_unet (null class)",
            "decode": f"ddim, {dsteps} steps, trailing", "students": students_info,
            "rows": table, "summary": summary}, fig


register_bench("ditto2", "DITTO-2 noise optimisation through a distilled 2-step student vs DITTO through the full "
                         "sampler on digits: class control accuracy and wall time")(_run)
