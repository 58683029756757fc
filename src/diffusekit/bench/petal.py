"""PETAL's study on the lifelong digits stream: PETAL vs TENT vs the source model, and PETAL's ablations.

PETAL (Brahma & Rai 2023, arXiv 2303.15145) claims a stable error over a long sequence of shifted domains, with
better error, Brier score and NLL than self-training baselines. This study runs every method on the same
:func:`diffusekit.data.shift_streams.continual_stream` (the corruption cycle at severity 5, ``cycles`` times, never
reset) and reports the pooled error / Brier / NLL, the error of every cycle, and for PETAL also the error of the
*student* (the model the SWAG prior and the restoration act on; the prediction is the EMA teacher's):

* ``source``: the classifier with running (source) BatchNorm statistics;
* ``tent``: :mod:`.tent` (BatchNorm affine parameters, entropy, Adam 1e-3);
* ``petal``: :func:`.petal.build` with its defaults;
* ``petal-no-restore`` (restore_quantile 0), ``petal-no-prior`` (spw 0), ``petal-no-augavg`` (threshold 0);
* ``petal-ema0.99`` and the same without restoration and prior: a teacher that follows the student ten times
  faster (the reference class's default ``mt_alpha``), where the student's drift reaches the prediction;
* the stress group: ``tent-stress`` and ``petal-stress*`` at learning rate 1e-2 (PETAL with EMA 0.99), with and
  without restoration and prior, where self-training drifts over the cycles unless held near the source.

Run: ``diffusekit bench petal [--quick] --out DIR`` (writes ``DIR/petal.json`` and ``DIR/petal.png``).
"""

from __future__ import annotations

import time

import torch

from ..methods.tta.base import SourceModel, classification_metrics, run_stream
from . import bench_progress, register_bench

__all__ = ["ABLATIONS", "STRESS", "STRESS_LR", "run_petal_study", "run"]

#: The PETAL variants of the study: name -> overrides of :class:`.petal.PETALAdapter`.
ABLATIONS = {"petal": {}, "petal-no-restore": {"restore_quantile": 0.0}, "petal-no-prior": {"spw": 0.0},
             "petal-no-augavg": {"confidence_threshold": 0.0},
             "petal-ema0.99": {"ema": 0.99},
             "petal-ema0.99-no-restore-no-prior": {"ema": 0.99, "restore_quantile": 0.0, "spw": 0.0}}
#: The stress group: ten times the learning rate (1e-2) for TENT and PETAL's student, and PETAL's teacher at EMA 0.99,
#: where self-training drifts unless something holds the student near the source.
STRESS_LR = 1e-2
STRESS = {"petal-stress": {}, "petal-stress-no-restore": {"restore_quantile": 0.0},
          "petal-stress-no-prior": {"spw": 0.0},
          "petal-stress-no-restore-no-prior": {"restore_quantile": 0.0, "spw": 0.0}}


class _StudentRecorder:
    """Passes PETAL's teacher prediction on to the stream loop and keeps the student's logits of every batch."""

    def __init__(self, adapter):
        self.adapter, self.name, self.student_logits = adapter, adapter.name, []

    def predict(self, x):
        out = self.adapter.predict(x)
        self.student_logits.append(self.adapter.last_student_logits)
        return out

    def reset(self):
        self.adapter.reset()
        self.student_logits = []


def _per_cycle_error(rows: list[dict], cycles: int) -> list[float]:
    per = len(rows) // cycles
    out = []
    for c in range(cycles):
        chunk = rows[c * per: (c + 1) * per]
        out.append(sum(r["error"] * r["count"] for r in chunk) / sum(r["count"] for r in chunk))
    return out


def run_petal_study(*, cycles: int = 10, quick: bool = False, seed: int = 0):
    """Run source, TENT, PETAL, its ablations and the stress group on the continual digits stream; returns
    ``(result_dict, matplotlib_figure)``. ``quick``: 2 cycles of 100 images per domain and a 5-iterate SWAG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .. import zoo
    from ..data.shift_streams import continual_stream
    from ..methods.tta import petal, tent

    torch.set_num_threads(1)
    if quick:
        cycles = min(cycles, 2)
    stream = continual_stream(cycles=cycles, images_per_domain=100 if quick else 200, batch_size=50, seed=seed)
    classifier = zoo.load("digits_bn_classifier")
    t0 = time.perf_counter()
    base = petal.build(classifier, quick=quick, seed=seed)
    swag_seconds = time.perf_counter() - t0
    adapters = {"source": SourceModel(classifier), "tent": tent.build(classifier, seed=seed)}
    stress = {"lr": STRESS_LR, "ema": 0.99}
    for name, overrides in [*ABLATIONS.items(), *((k, {**stress, **v}) for k, v in STRESS.items())]:
        adapter = petal.PETALAdapter(classifier, *base.swag_posterior, seed=seed,
                                     **{"n_augment": base.n_augment, **overrides})
        adapters[name] = _StudentRecorder(adapter)
        if name == "petal-no-augavg":
            adapters["tent-stress"] = tent.build(classifier, seed=seed, lr=STRESS_LR)
    methods = {}
    for name, adapter in adapters.items():
        bar = bench_progress(total=len(stream), desc=name)
        result = run_stream(adapter, stream, progress=lambda i, err, bar=bar: bar.update(1))
        bar.close()
        entry = {**result.totals(), "per_cycle_error": _per_cycle_error(result.batches, cycles)}
        if isinstance(adapter, _StudentRecorder):
            rows = [classification_metrics(logits, y) for logits, (_, y) in zip(adapter.student_logits, stream)]
            entry["student_error"] = sum(r["error"] * r["count"] for r in rows) / sum(r["count"] for r in rows)
            entry["student_per_cycle_error"] = _per_cycle_error(rows, cycles)
            entry["augmented_fraction"] = adapter.adapter.augmented_steps / max(1, adapter.adapter.steps)
        methods[name] = entry
    lines = [f"{'method':34s} error  Brier  NLL    first->last cycle error   student error"]
    for name, e in methods.items():
        student = f"{e['student_error']:.3f}" if "student_error" in e else "-"
        lines.append(f"{name:34s} {e['error']:.3f}  {e['brier']:.3f}  {e['nll']:.3f}  "
                     f"{e['per_cycle_error'][0]:.3f} -> {e['per_cycle_error'][-1]:.3f}          {student}")
    result = {"summary": "\n".join(lines), "cycles": cycles, "stream": stream.info if hasattr(stream, "info") else {},
              "swag_seconds": swag_seconds, "defaults": {k: getattr(base, k) for k in (
                  "ema", "confidence_threshold", "n_augment", "spw", "restore_quantile", "lr")},
              "methods": methods}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    x = list(range(1, cycles + 1))
    for name, e in methods.items():
        axes[1 if "stress" in name else 0].plot(x, e["per_cycle_error"], marker="o", label=name)
        if "student_per_cycle_error" in e:
            axes[2].plot(x, e["student_per_cycle_error"], marker=".", label=f"{name} (student)")
    axes[0].set(xlabel="cycle", ylabel="error", title="prediction error per cycle (continual digits, sev. 5)")
    axes[1].set(xlabel="cycle", ylabel="error", title=f"stress: lr {STRESS_LR:g} (PETAL EMA 0.99)")
    axes[2].set(xlabel="cycle", ylabel="error", title="PETAL students (what prior and restore regularise)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return result, fig


@register_bench("petal", "PETAL vs TENT vs source on the lifelong digits stream (10 cycles), PETAL's ablations and a "
                "stress group (lr 1e-2)")
def run(quick: bool):
    """The bench entry: :func:`run_petal_study` with the shared bench progress switch."""
    return run_petal_study(quick=quick)
