"""``diffusekit demo``: train a class-conditional digits model from scratch and judge its samples.

Steps: train the demo recipe (``zoo.recipes.DEMO_NET`` / ``DEMO_TRAIN``: a small UNet sized for a 2-core CPU)
for a fixed number of optimizer steps, so the same seed gives the same metrics on any machine, however busy
(``train_seconds`` adds a wall-clock cap, off by default); sample 100 digits per class with the project's
default solver (``samplers.DEFAULT``) at guidance scale ``guidance`` (default 1: the plain conditional model)
and again at ``extra_guidance`` (default 2: classifier-free guidance); write ``samples.png`` (10 x 10, a row
per class), ``loss.png`` and ``metrics.json``. Metrics use the shipped digits classifier
(``zoo:digits_classifier``): ``digits_fd`` (samples vs the test split), ``digits_fd_real`` (train split vs test
split: the real data's own distance), ``digits_fd_baseline`` (a per-pixel Gaussian fitted to the train split vs
test split), ``class_accuracy``, all at ``guidance``, and under ``by_guidance`` the FD and accuracy at both
scales; the sampler, its grid, steps, options and NFE; the training steps, seconds and threads.
``samples.png`` shows the samples at ``guidance``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from . import zoo
from .errors import UserError
from .data import load_dataset
from .plotting import atomic_write_json, save_image_grid, save_loss_plot
from .runtime import ThreadGovernor
from .training.trainer import TrainConfig
from .zoo.recipes import (DEMO_NET, DEMO_TRAIN, DIGITS_LOSS, DIGITS_SCHEDULE, evaluate_digits, train_model)




def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def _check_scale(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def run_demo(out: str | Path = "demo_out", *, seed: int = 0, steps: int = DEMO_TRAIN["steps"],
             train_seconds: float | None = None, guidance: float = 1.0, extra_guidance: float = 2.0,
             sample_steps: int | None = None, n_per_class: int = 100, progress: bool = True) -> dict:
    """Run the demo; returns the metrics dict (also written to ``out/metrics.json``).

    ``steps``: optimizer steps (batch 128). ``train_seconds``: optional wall-clock cap on training (None: none;
    with a cap the result depends on the machine's speed). ``sample_steps``: steps of the default solver
    (None: ``samplers.DEFAULT["steps"]``). Raises ValueError on a nonsense argument before any work.
    """
    seed = _check_int("seed", seed, 0)
    steps = _check_int("steps", steps, 1)
    n_per_class = _check_int("n_per_class", n_per_class, 1)
    if sample_steps is not None:
        sample_steps = _check_int("sample_steps", sample_steps, 1)
    if train_seconds is not None and (isinstance(train_seconds, bool) or not isinstance(train_seconds, (int, float))
                                      or not train_seconds > 0 or not math.isfinite(train_seconds)):
        raise UserError(f"train_seconds must be a finite number > 0 or None (no cap); got {train_seconds!r}")
    guidance = _check_scale("guidance", guidance)
    extra_guidance = _check_scale("extra_guidance", extra_guidance)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    classifier = zoo.load("digits_classifier")
    train = load_dataset("digits", "train")
    # the trainer re-fits the thread count to the cores other processes leave free (runtime.ThreadGovernor)
    config = TrainConfig(**{**DEMO_TRAIN, "steps": steps}, seed=seed, log_every=100, max_seconds=train_seconds,
                         progress=progress)
    trainer, loss, history = train_model(DEMO_NET, DIGITS_SCHEDULE, DIGITS_LOSS, (train.x, train.y), config,
                                         seed=seed, thread_governor=ThreadGovernor())
    denoiser = loss.denoiser(trainer.ema_model.eval())
    headline, samples = evaluate_digits(denoiser, classifier, n_per_class=n_per_class, guidance=guidance,
                                        steps=sample_steps, seed=seed, solver="default")
    by_guidance = {f"{guidance:g}": {k: headline[k] for k in ("digits_fd", "class_accuracy")}}
    if extra_guidance != guidance:
        extra, _ = evaluate_digits(denoiser, classifier, n_per_class=n_per_class, guidance=extra_guidance,
                                   steps=sample_steps, seed=seed, solver="default")
        by_guidance[f"{extra_guidance:g}"] = {k: extra[k] for k in ("digits_fd", "class_accuracy")}
    metrics = {
        **headline,
        "by_guidance": by_guidance,
        "train_seconds": history["seconds"],
        "train_steps": history["step"],
        "train_steps_requested": steps,
        "train_stopped_early": history["stopped_early"],
        "final_loss": sum(history["loss"][-100:]) / max(1, len(history["loss"][-100:])),
        "seed": seed,
        "net": DEMO_NET,
        "train_steps_by_threads": history["steps_by_threads"],
    }
    out.mkdir(parents=True, exist_ok=True)
    grid = samples.reshape(10, n_per_class, 1, 8, 8)[:, :10].reshape(-1, 1, 8, 8)
    save_image_grid(grid, out / "samples.png", nrow=min(10, n_per_class))
    save_loss_plot(history["loss"], out / "loss.png", title=f"digits UNet, {history['step']} steps")
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def summary(metrics: dict, out: Path) -> str:
    m = metrics
    scales = "; ".join(f"guidance {w}: FD {v['digits_fd']:.2f}, accuracy {v['class_accuracy']:.3f}"
                       for w, v in m["by_guidance"].items())
    stopped = (f" (stopped by --train-seconds before {m['train_steps_requested']}: the figures depend on this"
               " machine's speed)") if m["train_stopped_early"] else ""
    threads = ", ".join(f"{n} steps on {k} thread{'' if k == '1' else 's'}"
                        for k, n in sorted(m["train_steps_by_threads"].items(), reverse=True))
    return (f"trained {m['train_steps']} steps in {m['train_seconds']:.0f} s ({threads})"
            f"{stopped}; {m['num_samples']} samples with {m['sampler']} (NFE {m['nfe']})\n"
            f"  digits-FD {m['digits_fd']:.2f}  (real train-vs-test {m['digits_fd_real']:.2f}, "
            f"per-pixel Gaussian {m['digits_fd_baseline']:.2f})\n"
            f"  class accuracy {m['class_accuracy']:.3f}  at guidance {m['guidance_scale']:g}\n"
            f"  {scales}\n"
            f"  wrote {out / 'samples.png'}, {out / 'loss.png'}, {out / 'metrics.json'}")


def add_demo_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="seed of the network, data order, noise and samples "
                   "(default: %(default)s)")
    d.add_argument("--steps", type=int, default=DEMO_TRAIN["steps"],
                   help="optimizer steps at batch 128 (default: %(default)s; about 2 minutes on 2 idle cores)")
    d.add_argument("--train-seconds", type=float, default=None,
                   help="optional wall-clock cap on training; the metrics then depend on the machine's speed "
                        "(default: no cap)")
    d.add_argument("--guidance", type=float, default=1.0,
                   help="guidance scale of the headline metrics and grid (default: %(default)s)")
    d.add_argument("--extra-guidance", type=float, default=2.0,
                   help="a second guidance scale to evaluate (default: %(default)s)")
    d.add_argument("--sample-steps", type=int, default=None,
                   help="steps of the default solver (default: samplers.DEFAULT['steps'])")
    d.add_argument("--per-class", type=int, default=100,
                   help="samples per class for the metrics (default: %(default)s)")
    d.add_argument("--no-progress", action="store_true", help="hide the training progress bar")


def run_demo_from_args(args) -> int:
    metrics = run_demo(args.out, seed=args.seed, steps=args.steps, train_seconds=args.train_seconds,
                       guidance=args.guidance, extra_guidance=args.extra_guidance, sample_steps=args.sample_steps,
                       n_per_class=args.per_class, progress=not args.no_progress)
    print(summary(metrics, Path(args.out)))
    return 0
