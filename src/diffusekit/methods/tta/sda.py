"""SDA: synthetic-domain alignment (Guo et al., CVPR 2025, arXiv 2406.04295, "Everything to the Synthetic:
Diffusion-driven Test-time Adaptation via Synthetic-Domain Alignment").

DDA (:mod:`.dda`) projects target inputs toward the source domain, but the projection lands on the *diffusion
model's* domain, which is not the source domain the classifier was trained on: a domain gap remains. SDA closes it
from the classifier's side, in two stages.

Stage 1 (once, before any test data): synthesise a labelled data set with a class-conditional diffusion model
(the paper: DiT-XL/2, 50 images per class, cfg 1.0), pass it through the same unconditional projection as the
target data will be (the paper's "Mix of Diffusion": noise to t_start and denoise with DDA's low-pass guidance),
and fine-tune a copy of the source classifier on it (SGD lr 5e-4, momentum 0.9, weight decay 1e-4, batch 64):

    x_syn ~ p_theta(x | y) (CFG scale w),   x_syn' = project(x_syn),   theta_syn = argmin CE(f_theta(x_syn'), y).

Stage 2 (test time, nothing updated): project each target input and ensemble

    logits = f_source(x) + f_syn(project(x)).

Here the class-conditional model is the zoo's ``digits_unet`` with CFG (``core.CFGDenoiser``) and the default fast
sampler; the projection is :func:`.dda.project` with the same settings at both stages. Our source classifier has
BatchNorm: ``bn="frozen"`` keeps the source running statistics during fine-tuning (eval mode, only weights move),
``bn="reestimate"`` (the default, the better of the two on held-out corruptions of the digits train split, by less
than one percentage point) trains with batch statistics and so re-estimates the running statistics on the synthetic
data.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from ...core import Denoiser
from ...core.denoiser import CFGDenoiser
from ...core.noise import generators_from_seeds, prior_sample
from . import dda

__all__ = ["SDAAdapter", "build", "synthesize_domain", "finetune_on_synthetic", "DEFAULTS", "QUICK_DEFAULTS",
           "clear_cache"]

#: recommended settings (the projection is DDA's; see docs/benchmarks.md for how they were chosen)
DEFAULTS = {"n_per_class": 200, "cfg_scale": 1.5, "sample_steps": 10, "epochs": 10, "lr": 5e-4, "momentum": 0.9,
            "weight_decay": 1e-4, "batch_size": 64, "bn": "reestimate", "projection": dict(dda.DEFAULTS)}
QUICK_DEFAULTS = {**DEFAULTS, "n_per_class": 20, "projection": dict(dda.QUICK_DEFAULTS)}

_SYNTHETIC_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def clear_cache() -> None:
    """Forget the synthetic data sets cached by :func:`build` in this process."""
    _SYNTHETIC_CACHE.clear()


def synthesize_domain(denoiser: Denoiser, n_per_class: int, *, num_classes: int | None = None,
                      cfg_scale: float = DEFAULTS["cfg_scale"], sample_steps: int = DEFAULTS["sample_steps"],
                      projection: dict | None = None, seed: int = 0, shape: tuple = (1, 8, 8),
                      batch_size: int = 256, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """SDA's stage-1 data (arXiv 2406.04295, Sec. 3.2): ``n_per_class`` class-conditional samples per class from
    ``denoiser`` with classifier-free guidance x0 = x0_u + w (x0_c - x0_u), w = ``cfg_scale`` (``CFGDenoiser``),
    drawn with the default sampler (``samplers.DEFAULT``) in ``sample_steps`` steps from prior noise seeded per
    sample, then passed through DDA's projection (:func:`.dda.project_dataset` with ``projection``; None skips it).

    ``shape``: one image's (C, H, W). Returns (x_syn (N, C, H, W) in [-1, 1], y_syn (N,)),
    N = n_per_class * num_classes, in class-major order.
    """
    from ...samplers import DEFAULT, default_timesteps, sample

    num_classes = denoiser.num_classes if num_classes is None else int(num_classes)
    if not num_classes:
        raise ValueError("synthesize_domain needs a class-conditional denoiser (or num_classes)")
    if isinstance(n_per_class, bool) or int(n_per_class) != n_per_class or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    labels = torch.arange(num_classes).repeat_interleave(int(n_per_class))
    guided = CFGDenoiser(denoiser, float(cfg_scale))
    ts = default_timesteps(denoiser, int(sample_steps))
    starts = range(0, labels.numel(), int(batch_size))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="synthesise", unit="batch")
    xs = []
    for i in starts:
        y = labels[i: i + int(batch_size)]
        gens = generators_from_seeds(int(seed) * 1_000_003 + i, y.numel())
        x_T = prior_sample(denoiser.schedule, (y.numel(), *tuple(shape)), gens)
        with torch.no_grad():
            xs.append(sample(DEFAULT["sampler"], guided, x_T, ts, cond={"class_labels": y}, generator=gens,
                             **DEFAULT["options"]).clamp(-1, 1))
    x_syn = torch.cat(xs)
    if projection is not None:
        x_syn = dda.project_dataset(x_syn, denoiser, seed=int(seed) * 1_000_003 + 7, progress=progress, **projection)
    return x_syn, labels


def finetune_on_synthetic(classifier: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                          epochs: int = DEFAULTS["epochs"], lr: float = DEFAULTS["lr"],
                          momentum: float = DEFAULTS["momentum"], weight_decay: float = DEFAULTS["weight_decay"],
                          batch_size: int = DEFAULTS["batch_size"], bn: str = DEFAULTS["bn"],
                          seed: int = 0) -> torch.nn.Module:
    """Fine-tune a deep copy of ``classifier`` on the synthetic domain (x, y) (arXiv 2406.04295, Sec. 3.2):
    SGD with momentum and weight decay on the cross-entropy, ``epochs`` passes in shuffled batches (the paper:
    lr 5e-4, momentum 0.9, wd 1e-4, batch 64). ``bn="frozen"``: BatchNorm keeps its source running statistics
    (eval mode throughout); ``bn="reestimate"``: train mode, so the running statistics move to the synthetic data.
    The source ``classifier`` is untouched. Deterministic given ``seed``. Returns the copy in eval mode.
    """
    if bn not in ("frozen", "reestimate"):
        raise ValueError(f"bn must be 'frozen' or 'reestimate', got {bn!r}")
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y must hold the same positive number of samples, got {x.shape[0]} and {y.shape[0]}")
    model = copy.deepcopy(classifier)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay))
    gen = torch.Generator().manual_seed(int(seed))
    model.train(bn == "reestimate")
    x, y = x.detach(), y.long()
    for _ in range(int(epochs)):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], int(batch_size)):
            idx = perm[i: i + int(batch_size)]
            if bn == "reestimate" and idx.numel() < 2:  # BatchNorm needs two samples in train mode
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


class SDAAdapter:
    """SDA at test time (arXiv 2406.04295, Sec. 3.3): logits = f_source(x) + f_syn(project(x)); nothing is updated.

    ``projection_kwargs``: :func:`.dda.project` options (t_start, steps, guidance_scale, downsample, eta) and
    ``denoiser``. The i-th image of the stream since ``reset`` is projected with generator seed ``seed + i``
    (batch-size invariant, as :class:`.dda.DDAAdapter`). ``preparation``: stage-1 cost, filled in by :func:`build`.
    """

    name = "sda"

    def __init__(self, source: torch.nn.Module, synthetic_classifier: torch.nn.Module, projection_kwargs: dict, *,
                 seed: int = 0):
        kwargs = dict(projection_kwargs)
        if "denoiser" not in kwargs:
            raise ValueError("projection_kwargs must include the projection's denoiser")
        self.denoiser = kwargs.pop("denoiser")
        self.source = source.eval()
        self.synthetic_classifier = synthetic_classifier.eval()
        self.projection = kwargs
        self.seed = int(seed)
        self.seen = 0
        self.preparation: dict = {}

    @property
    def nfe_per_image(self) -> int:
        return int(self.projection.get("steps", dda.DEFAULTS["steps"]))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        gens = generators_from_seeds(self.seed + self.seen, x.shape[0])
        self.seen += x.shape[0]
        x_proj = dda.project(x, self.denoiser, generator=gens, **self.projection)
        with torch.no_grad():
            return self.source(x) + self.synthetic_classifier(x_proj)

    def reset(self) -> None:
        self.seen = 0


def build(classifier: torch.nn.Module, *, quick: bool = False, seed: int = 0, denoiser: Denoiser | None = None,
          progress: bool = False, **overrides) -> SDAAdapter:
    """SDA with the recommended settings (``DEFAULTS``; ``QUICK_DEFAULTS`` with ``quick``): synthesise and project
    the synthetic domain with the zoo's ``digits_unet`` (cached per process and settings, so a second call is fast),
    fine-tune a copy of ``classifier`` on it and return the adapter. ``overrides``: any key of ``DEFAULTS``
    (``projection`` as a dict of :func:`.dda.project` options merged into the default one).
    ``adapter.preparation`` holds the stage-1 seconds (synthesis, fine-tuning) and whether the cache was hit."""
    if denoiser is None:
        from ... import zoo

        denoiser = zoo.load("digits_unet")
    base = QUICK_DEFAULTS if quick else DEFAULTS
    unknown = set(overrides) - set(base)
    if unknown:
        raise ValueError(f"unknown SDA option(s) {sorted(unknown)}; allowed: {', '.join(sorted(base))}")
    cfg = {**base, **overrides, "projection": {**base["projection"], **overrides.get("projection", {})}}
    from ...samplers.defaults import model_fingerprint

    key = (model_fingerprint(denoiser), cfg["n_per_class"], float(cfg["cfg_scale"]), int(cfg["sample_steps"]),
           int(seed), tuple(sorted(cfg["projection"].items())))
    t0 = time.perf_counter()
    cached = key in _SYNTHETIC_CACHE
    if not cached:
        _SYNTHETIC_CACHE[key] = synthesize_domain(denoiser, cfg["n_per_class"], cfg_scale=cfg["cfg_scale"],
                                                  sample_steps=cfg["sample_steps"], projection=cfg["projection"],
                                                  seed=seed, progress=progress)
    x_syn, y_syn = _SYNTHETIC_CACHE[key]
    t1 = time.perf_counter()
    synthetic = finetune_on_synthetic(classifier, x_syn, y_syn, epochs=cfg["epochs"], lr=cfg["lr"],
                                      momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                                      batch_size=cfg["batch_size"], bn=cfg["bn"], seed=seed)
    adapter = SDAAdapter(classifier, synthetic, {"denoiser": denoiser, **cfg["projection"]}, seed=seed)
    adapter.preparation = {"synthesis_seconds": t1 - t0, "finetune_seconds": time.perf_counter() - t1,
                           "cache_hit": cached, "synthetic_images": int(y_syn.numel())}
    return adapter
