"""``diffusekit zoo build``: retrain the shipped assets and write them with their manifests."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..core import grid_logsnr, prior_sample
from ..data import load_dataset, ring8_mixture
from ..metrics import gmm_nll, mode_coverage, sliced_wasserstein
from ..metrics.digits import train_digits_classifier
from ..samplers import sample_ddim
from ..training.trainer import TrainConfig
from . import ASSETS_DIR, MODELS, load, write_asset
from .recipes_clip import CLIP_BUDGETS, build_captions_clip
from .recipes_tta import TTA_BUDGETS, build_digits04_bn_classifier, build_digits_bn_classifier
from .recipes_t2i import T2I_QUICK_BUDGET, build_captions_judge, build_captions_unet
from .recipes import (DIGITS_DIT_NET, DIGITS_DIT_TRAIN, DIGITS_LOSS, DIGITS_NET, DIGITS_SCHEDULE, DIGITS_STUDENT_CD,
                      DIGITS_STUDENT_STEPS,
                      DIGITS_STUDENT_TRAIN, PATCHES_LOSS, PATCHES_NET, PATCHES_SCHEDULE, PATCHES_TRAIN_N, RING_LOSS,
                      RING_NET, RING_SCHEDULE, best_training_free_2nfe, choose_consistency_tau, draw_digits_with,
                      evaluate_digits, evaluate_patches, train_model)

# Full-size budgets (the shipped assets) and --quick budgets (smoke tests).
BUDGETS = {
    "full": {"classifier_epochs": 40, "digits_steps": 6_000, "dit_steps": 5_000, "ring_steps": 12_000,
             "patches_steps": 6_000,
             "patches_eval_n": 256, "patches_samples": 1_000, "patches_train_n": PATCHES_TRAIN_N,
             "patches_likelihood_steps": 50, "student_steps": DIGITS_STUDENT_TRAIN["steps"], "student_eval_n": 100},
    "quick": {"classifier_epochs": 1, "digits_steps": 4, "dit_steps": 4, "ring_steps": 4, "patches_steps": 4,
              "patches_eval_n": 4, "patches_samples": 8, "patches_train_n": 256, "patches_likelihood_steps": 2,
              "student_steps": 4, "student_eval_n": 2},
}


def build_digits_classifier(budget: dict, assets_dir: Path, progress: bool) -> dict:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    t0 = time.perf_counter()
    clf = train_digits_classifier(train.x, train.y, epochs=budget["classifier_epochs"], seed=0)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        acc = float((clf(test.x).argmax(1) == test.y).double().mean())
    meta = {"kind": "classifier", "net": {k: v for k, v in clf.config.items() if k != "name"},
            "training": {"epochs": budget["classifier_epochs"], "seed": 0, "data": "digits train split"},
            "training_seconds": seconds, "metrics": {"test_accuracy": acc}}
    return write_asset("digits_classifier", clf.state_dict(), meta, assets_dir)


def build_digits_unet(budget: dict, assets_dir: Path, progress: bool) -> dict:
    train = load_dataset("digits", "train")
    config = TrainConfig(steps=budget["digits_steps"], batch_size=128, lr=2e-3, warmup_steps=100, ema_decay=0.999,
                         log_every=100, progress=progress)
    trainer, loss, history = train_model(DIGITS_NET, DIGITS_SCHEDULE, DIGITS_LOSS, (train.x, train.y), config)
    classifier = load("digits_classifier", assets_dir=assets_dir)
    denoiser = loss.denoiser(trainer.ema_model.eval())
    metrics = {}
    for guidance in (1.0, 2.0):
        m, _ = evaluate_digits(denoiser, classifier, guidance=guidance)
        metrics[f"guidance_{guidance:g}"] = m
    meta = {"kind": "denoiser", "net": DIGITS_NET, "schedule": DIGITS_SCHEDULE, "loss": DIGITS_LOSS,
            "training": config.to_dict(), "training_seconds": history["seconds"],
            "final_loss": sum(history["loss"][-100:]) / max(1, len(history["loss"][-100:])), "metrics": metrics}
    return write_asset("digits_unet", trainer.ema_model.state_dict(), meta, assets_dir)


def build_digits_dit(budget: dict, assets_dir: Path, progress: bool) -> dict:
    """The class-conditional digits DiT (``DIGITS_DIT_NET``): same data, schedule and loss as ``digits_unet``."""
    train = load_dataset("digits", "train")
    config = TrainConfig(steps=budget["dit_steps"], log_every=100, progress=progress, **DIGITS_DIT_TRAIN)
    trainer, loss, history = train_model(DIGITS_DIT_NET, DIGITS_SCHEDULE, DIGITS_LOSS, (train.x, train.y), config)
    classifier = load("digits_classifier", assets_dir=assets_dir)
    denoiser = loss.denoiser(trainer.ema_model.eval())
    metrics = {}
    for guidance in (1.0, 2.0):
        for solver in ("ddim", "default"):
            m, _ = evaluate_digits(denoiser, classifier, guidance=guidance, solver=solver)
            metrics[f"guidance_{guidance:g}" + ("" if solver == "ddim" else "_default_sampler")] = m
    meta = {"kind": "denoiser", "net": DIGITS_DIT_NET, "schedule": DIGITS_SCHEDULE, "loss": DIGITS_LOSS,
            "training": config.to_dict(), "training_seconds": history["seconds"],
            "final_loss": sum(history["loss"][-100:]) / max(1, len(history["loss"][-100:])), "metrics": metrics}
    return write_asset("digits_dit", trainer.ema_model.state_dict(), meta, assets_dir)


def build_toy_ring8(budget: dict, assets_dir: Path, progress: bool) -> dict:
    train = load_dataset("gmm_ring8", "train")
    config = TrainConfig(steps=budget["ring_steps"], batch_size=256, lr=1e-3, warmup_steps=100, ema_decay=0.999,
                         log_every=100, progress=progress)
    trainer, loss, history = train_model(RING_NET, RING_SCHEDULE, RING_LOSS, (train.x,), config)
    denoiser = loss.denoiser(trainer.ema_model.eval())
    mixture = ring8_mixture()
    n = 5000
    with torch.no_grad():
        x_T = prior_sample(denoiser.schedule, (n, 2), torch.Generator().manual_seed(0))
        x = sample_ddim(denoiser, x_T, grid_logsnr(denoiser.schedule, 100, t_end=0.0)).double()
    truth = mixture.sample(n, torch.Generator().manual_seed(1))
    metrics = {"nll": gmm_nll(x, mixture), "nll_true_samples": gmm_nll(truth, mixture),
               "sliced_wasserstein": sliced_wasserstein(x, truth, generator=torch.Generator().manual_seed(2)),
               "mode_coverage": mode_coverage(x, mixture.means, radius=0.45),
               "sampler": "ddim, 100 logsnr steps", "num_samples": n}
    meta = {"kind": "denoiser", "net": RING_NET, "schedule": RING_SCHEDULE, "loss": RING_LOSS,
            "training": config.to_dict(), "training_seconds": history["seconds"], "metrics": metrics}
    return write_asset("toy_ring8", trainer.ema_model.state_dict(), meta, assets_dir)


def build_patches_unet(budget: dict, assets_dir: Path, progress: bool) -> dict:
    train = load_dataset("patches", "train", n=budget["patches_train_n"])
    config = TrainConfig(steps=budget["patches_steps"], batch_size=64, lr=1e-3, warmup_steps=200, ema_decay=0.999,
                         log_every=100, progress=progress)
    trainer, loss, history = train_model(PATCHES_NET, PATCHES_SCHEDULE, PATCHES_LOSS, (train.x,), config)
    denoiser = loss.denoiser(trainer.ema_model.eval())
    metrics = evaluate_patches(denoiser, train.x, n_eval=budget["patches_eval_n"],
                               n_samples=budget["patches_samples"],
                               likelihood_steps=budget["patches_likelihood_steps"])
    meta = {"kind": "denoiser", "net": PATCHES_NET, "schedule": PATCHES_SCHEDULE, "loss": PATCHES_LOSS,
            "data": {"name": "patches", "split": "train", "n": budget["patches_train_n"], "size": 16, "grey": True},
            "training": config.to_dict(), "training_seconds": history["seconds"],
            "final_loss": sum(history["loss"][-100:]) / max(1, len(history["loss"][-100:])), "metrics": metrics}
    return write_asset("patches_unet", trainer.ema_model.state_dict(), meta, assets_dir)


def build_digits_student_2step(budget: dict, assets_dir: Path, progress: bool) -> dict:
    """Consistency distillation of digits_unet (``recipes.DIGITS_STUDENT_*``), 2-step consistency sampling with tau
    chosen on the train split; metrics on the test split beside the teacher (DDIM 50) and its best 2-NFE
    training-free solver, all at guidance 1 on the same noise."""
    from ..metrics import class_accuracy, digits_fd
    from ..methods.distill import samplers  # noqa: F401  (registers the consistency sampler)
    from ..methods.distill.checkpoint import student_config
    from ..methods.distill.consistency import consistency_distill

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    teacher = load("digits_unet", assets_dir=assets_dir)
    classifier = load("digits_classifier", assets_dir=assets_dir)
    config = TrainConfig(**{**DIGITS_STUDENT_TRAIN, "steps": budget["student_steps"]}, progress=progress)
    torch.manual_seed(config.seed)
    result = consistency_distill(teacher, (train.x, train.y), config, **DIGITS_STUDENT_CD)
    student, grid = result.model, result.ts
    choice = choose_consistency_tau(student, grid, classifier, n_per_class=max(2, budget["student_eval_n"] // 2))
    ts = [float(grid[0]), choice["tau"], 0.0]
    native = {"sampler": "consistency", "steps": DIGITS_STUDENT_STEPS, "ts": ts}
    labels = torch.arange(10).repeat_interleave(budget["student_eval_n"])
    x = draw_digits_with(student, "consistency", torch.tensor(ts, dtype=torch.float64), labels, seed=0)
    metrics = {"student": {"digits_fd": digits_fd(x, test.x, classifier=classifier),
                           "class_accuracy": class_accuracy(x, labels, classifier=classifier),
                           "sampler": "consistency, 2 steps", "timesteps": ts, "nfe": 2},
               "teacher_ddim_50": evaluate_digits(teacher, classifier, n_per_class=budget["student_eval_n"],
                                                  guidance=1.0, steps=50)[0],
               "training_free_2nfe": best_training_free_2nfe(teacher, classifier, n_per_class=budget["student_eval_n"]),
               "tau_search": choice, "num_samples": len(labels), "guidance_scale": 1.0}
    metrics["teacher_ddim_50"].pop("sampler_timesteps", None)
    extra = student_config(student, native, method="consistency", teacher="zoo:digits_unet",
                           distillation={**DIGITS_STUDENT_CD, "grid": grid.tolist()})
    meta = {"kind": "student", "net": DIGITS_NET, "schedule": DIGITS_SCHEDULE, "loss": extra["loss"],
            "student": extra["student"], "training": config.to_dict(), "training_seconds": result.history["seconds"],
            "final_loss": sum(result.history["loss"][-50:]) / max(1, len(result.history["loss"][-50:])),
            "metrics": metrics}
    return write_asset("digits_student_2step", student.inner.net.state_dict(), meta, assets_dir)


BUILDERS = {"digits_classifier": build_digits_classifier, "digits_unet": build_digits_unet,
            "toy_ring8": build_toy_ring8, "patches_unet": build_patches_unet,
            "digits_student_2step": build_digits_student_2step, "digits_dit": build_digits_dit}
BUILDERS.update({"captions_judge": build_captions_judge, "captions_unet": build_captions_unet})  # recipes_t2i
BUDGETS["quick"].update(T2I_QUICK_BUDGET)

BUILDERS["captions_clip"] = build_captions_clip  # recipes_clip
BUILDERS.update({"digits_bn_classifier": build_digits_bn_classifier,  # recipes_tta
                 "digits04_bn_classifier": build_digits04_bn_classifier})
for _kind, _tta_budget in TTA_BUDGETS.items():
    BUDGETS[_kind].update(_tta_budget)
for _kind, _clip_budget in CLIP_BUDGETS.items():
    BUDGETS[_kind].update(_clip_budget)
for _kind in BUDGETS:
    BUDGETS[_kind]["kind"] = _kind  # recipes with their own budgets pick them by this


def _lazy_builder(spec: str):
    """A builder imported on first use ("module:function" under diffusekit.zoo), so `zoo build --only X` does not
    import every domain."""
    def build_lazily(budget: dict, assets_dir: Path, progress: bool) -> dict:
        import importlib

        module, _, function = spec.partition(":")
        return getattr(importlib.import_module(module, __package__), function)(budget, assets_dir, progress)

    build_lazily.__name__ = spec.partition(":")[2]
    return build_lazily


BUILDERS.update({  # audio (issue 16), video and personalisation (issue 17): each recipe reads budget["kind"]
    "speech_prodiff": _lazy_builder(".recipes_audio:build_speech_prodiff"),
    "events_auffusion": _lazy_builder(".recipes_audio:build_events_auffusion"),
    "events_ezaudio": _lazy_builder(".recipes_ezaudio:build_events_ezaudio"),
    "events_makeanaudio2": _lazy_builder(".recipes_makeanaudio2:build_events_makeanaudio2"),
    "moving_digits_video": _lazy_builder(".recipes_video:build_moving_digits_video"),
    "moving_digits_cbb": _lazy_builder(".recipes_cbb:build_moving_digits_cbb"),
    "captions_eclipse": _lazy_builder(".recipes_eclipse:build_captions_eclipse"),
})


def build(names=None, *, quick: bool = False, assets_dir: Path = ASSETS_DIR, progress: bool = True) -> dict:
    """Train and write the named assets (default: all, classifier first since digits metrics use it)."""
    names = list(MODELS) if not names else list(names)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown zoo model {unknown[0]!r}; available: {', '.join(MODELS)}")
    budget = BUDGETS["quick" if quick else "full"]
    return {name: BUILDERS[name](budget, Path(assets_dir), progress) for name in MODELS if name in names}
