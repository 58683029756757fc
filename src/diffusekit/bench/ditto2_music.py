"""DITTO-2 on music (Novack et al. 2024, arXiv 2405.20289): noise optimisation for intensity, melody and structure
through a consistency-distilled one-step student vs DITTO (arXiv 2401.12179) through the full sampler.
``diffusekit bench ditto2_music``.

Model: an unconditional 1-D UNet over piano rolls (12 scale degrees x 32 beats, velocity-coded, x in [-1, 1]) of
the motion-driven melodies of ``domains.audio.music`` with linear dynamics ramps (``methods.ditto2_music``),
v-prediction on the linear VP schedule, decoded by DDIM on the trailing grid (``decode_steps``). Its
consistency-distilled student (Song et al. 2023, Alg. 2, Heun teacher on an 18-point Karras grid, initialised from
the teacher) is the DITTO-2 surrogate, run as the one-step consistency map f(x_T, t_max).

Controls (per example, differentiable read-outs of the roll, see ``methods.ditto2_music``): ``intensity`` (smoothed
loudness curve to a crescendo / decrescendo target), ``melody`` (soft pitch read-out to the notes of a held-out
test melody) and ``structure`` (second half = first half). Rows, all from the same x_T batch with the same Adam
iterations, lr and norm regulariser, all decoded by the same full DDIM sampler:

* ``none``: no optimisation;
* ``ditto``: DITTO, Adam through the full ``decode_steps``-step DDIM chain (``decode_steps`` NFE an iteration);
* ``ditto2``: DITTO-2, Adam through the one-step consistency student (1 NFE an iteration);
* ``ditto2_ddim1``: the same loop through the teacher's own one-step DDIM (no distillation: is the student
  needed?).

Per row and control: ``loss`` (mean control loss of the decoded output), ``accuracy`` (hard read-out, see
``control_accuracy``), ``monophony`` (fraction of beats with at most one sounding degree; the data has 1.0: does
the output stay music-like?), ``sounding`` (fraction of beats with a sounding note: a silent roll trivially
repeats itself; the data's value is ``data_sounding``), ``seconds`` (optimisation + decode) and ``optimiser_nfe``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..core import prior_sample
from ..domains.audio.music import render_audio
from ..methods.ditto import decode, ditto2, optimize_noise
from ..methods.ditto2_music import (CONTROLS, control_accuracy, distill_roll_student, hard_notes, intensity_loss,
                                    intensity_targets, melody_loss, melody_targets, monophony, music_rolls,
                                    roll_activity, smoothed_loudness, structure_loss, train_roll_teacher)
from . import bench_progress, register_bench

FULL = {"train_rolls": 600, "teacher_steps": 2000, "cd_steps": 500, "batch": 16, "iters": 40, "decode_steps": 20,
        "lr": 0.1, "reg_weight": 10.0}
QUICK = {"train_rolls": 300, "teacher_steps": 250, "cd_steps": 60, "batch": 8, "iters": 15, "decode_steps": 10,
         "lr": 0.1, "reg_weight": 10.0}
ROWS = ("none", "ditto", "ditto2", "ditto2_ddim1")


def _targets(batch: int, beats: int) -> tuple[dict, dict]:
    """Control targets and losses for a batch: crescendo/decrescendo envelopes, held-out test melodies."""
    _, test_tokens = music_rolls(batch, seed=0, split="test")
    pitch, voiced = melody_targets(test_tokens)
    envelope = intensity_targets(batch, beats)
    targets = {"intensity": {"envelope": envelope}, "melody": {"pitch": pitch, "voiced": voiced}, "structure": {}}
    losses = {"intensity": intensity_loss(envelope), "melody": melody_loss(pitch, voiced),
              "structure": structure_loss()}
    return targets, losses


def _roll_audio(x0: torch.Tensor) -> np.ndarray:
    """The decoded roll (P, N) as audio: the loudest sounding degree of each beat at its velocity."""
    notes = hard_notes(x0[None])[0]
    velocity = roll_activity(x0[None])[0].amax(0)
    return render_audio((notes + 1).numpy(), velocities=velocity.numpy())


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..domains.audio.wavio import wav_bytes

    cfg = QUICK if quick else FULL
    n, iters, dsteps = cfg["batch"], cfg["iters"], cfg["decode_steps"]
    opt = {"iters": iters, "lr": cfg["lr"], "reg_weight": cfg["reg_weight"]}
    x_train, _ = music_rolls(cfg["train_rolls"], seed=0, split="train")
    teacher, teacher_info = train_roll_teacher(x_train, steps=cfg["teacher_steps"])
    student, native, student_info = distill_roll_student(teacher, x_train, steps=cfg["cd_steps"])
    x_T = prior_sample(teacher.schedule, (n, *x_train.shape[1:]), torch.Generator().manual_seed(0))
    targets, losses = _targets(n, x_train.shape[-1])

    def run(row, loss_fn):
        if row == "none":
            return decode(teacher, x_T, steps=dsteps), 0
        if row == "ditto":
            x_opt, hist = optimize_noise(teacher, loss_fn, x_T, steps=dsteps, **opt)
            return decode(teacher, x_opt, steps=dsteps), iters * hist["nfe_per_iter"]
        if row == "ditto2":
            x0, _, hist = ditto2(teacher, loss_fn, x_T, decode_steps=dsteps, student=student, student_sampling=native,
                                 **opt)
        else:
            x0, _, hist = ditto2(teacher, loss_fn, x_T, surrogate_steps=1, decode_steps=dsteps, **opt)
        return x0, iters * hist["nfe_per_iter"]

    table, shown = {c: {} for c in CONTROLS}, {c: {} for c in CONTROLS}
    bar = bench_progress(desc="ditto2_music: controls x rows", total=len(CONTROLS) * len(ROWS))
    for control in CONTROLS:
        loss_fn = losses[control]
        for row in ROWS:
            t0 = time.perf_counter()
            x0, nfe = run(row, loss_fn)
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                per = loss_fn(x0)
                acc = control_accuracy(control, x0, targets[control])
            table[control][row] = {"loss": float(per.mean()), "loss_median": float(per.median()),
                                    "accuracy": float(acc.mean()), "accuracy_se": float(acc.std() / n ** 0.5),
                                    "monophony": float(monophony(x0).mean()),
                                    "sounding": float((hard_notes(x0) >= 0).double().mean()), "seconds": seconds,
                                    "optimiser_nfe": nfe, "decode_nfe": dsteps}
            shown[control][row] = x0[0]
            bar.update()
    bar.close()
    with torch.no_grad():
        data_mono = float(monophony(x_train[:n]).mean())
        data_sounding = float((hard_notes(x_train) >= 0).double().mean())

    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    colors = {"none": "grey", "ditto": "C0", "ditto2": "C1", "ditto2_ddim1": "C2"}
    for k, control in enumerate(CONTROLS):
        ax = axes[0, k]
        for row in ROWS:
            r = table[control][row]
            ax.scatter(max(r["seconds"], 1e-2), r["accuracy"], s=60, color=colors[row], label=row)
            ax.annotate(f"{r['optimiser_nfe']} NFE", (max(r["seconds"], 1e-2), r["accuracy"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("seconds (optimise + decode)")
        ax.set_ylabel(f"{control} accuracy")
        ax.set_title(f"{control}: accuracy vs wall time, batch {n}, {iters} Adam iters", fontsize=9)
        ax = axes[1, k]
        rolls = [roll_activity(shown[control][r][None])[0].numpy()[::-1] for r in ("none", "ditto", "ditto2")]
        gap = np.full((1, rolls[0].shape[1]), 0.5)
        ax.imshow(np.concatenate([rolls[0], gap, rolls[1], gap, rolls[2]]), aspect="auto", cmap="magma",
                  interpolation="nearest", vmin=0, vmax=1)
        height = rolls[0].shape[0]
        if control == "melody":
            pitch, voiced = targets["melody"]["pitch"][0], targets["melody"]["voiced"][0]
            beats = torch.nonzero(voiced)[:, 0]
            for j in range(3):
                ax.scatter(beats, (j * (height + 1) + height - 1 - pitch[beats]).numpy(), s=6, color="cyan")
        if control == "intensity":
            for j, r in enumerate(("none", "ditto", "ditto2")):
                top = j * (height + 1) + height - 0.5
                ax.plot(top - 3 * targets["intensity"]["envelope"][0].numpy(), color="cyan", lw=1)
                ax.plot(top - 3 * smoothed_loudness(shown[control][r][None])[0].numpy(), color="white", lw=1, ls=":")
        ax.set_yticks([height / 2 + j * (height + 1) for j in range(3)], ["none", "DITTO", "DITTO-2"], fontsize=8)
        ax.set_xlabel("beat")
        ax.set_title(f"{control}: example 0 (cyan = target)", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()

    files = {}
    if not quick:
        for control in ("intensity", "melody"):
            for row in ("none", "ditto2"):
                files[f"ditto2_music_{control}_{row}.wav"] = wav_bytes(_roll_audio(shown[control][row]))

    def line(control):
        t = table[control]
        return (f"{control}: acc none {t['none']['accuracy']:.2f} / DITTO {t['ditto']['accuracy']:.2f} "
                f"({t['ditto']['seconds']:.1f}s, {t['ditto']['optimiser_nfe']} NFE) / DITTO-2 "
                f"{t['ditto2']['accuracy']:.2f} ({t['ditto2']['seconds']:.1f}s, {t['ditto2']['optimiser_nfe']} NFE) "
                f"/ 1-step DDIM surrogate {t['ditto2_ddim1']['accuracy']:.2f}")

    return {"config": cfg, "rows": list(ROWS), "teacher": teacher_info, "student": {**student_info, "sampling": native},
            "data_monophony": data_mono, "data_sounding": data_sounding, "table": table,
            "summary": "; ".join(line(c) for c in CONTROLS),
            "files": files}, fig


register_bench("ditto2_music", "DITTO-2 on piano-roll music: intensity / melody / structure control through a "
                               "consistency-distilled 1-step student vs DITTO through the full sampler")(_run)
