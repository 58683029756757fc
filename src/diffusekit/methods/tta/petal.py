"""PETAL: probabilistic lifelong test-time adaptation with a self-training prior (Brahma & Rai, CVPR 2023,
arXiv 2303.15145; reference code dhanajitb/petal, ``cifar/petal.py``, class ``PETALFim``).

Three copies of the source classifier, all with BatchNorm on the statistics of the current batch
(:func:`.tent.use_batch_statistics`; at batch size 1 a BatchNorm1d layer keeps the source statistics):

* the **student** theta (every weight and bias trainable), updated by one Adam step per test batch;
* the **teacher** theta', the exponential moving average of the student, whose output is the prediction;
* the **anchor**, the frozen source, used only to measure how confident the source is on the batch.

For each batch x (Algorithm 2 of the paper):

1. Teacher target. If the anchor's mean confidence mean_i max_k p_anchor(k | x_i) < tau, the teacher target is
   averaged over N augmentations, y' = (1/N) sum_n f_theta'(aug_n(x)) (logits); otherwise y' = f_theta'(x).
2. Student loss (Eq. 12 of the appendix): the cross-entropy of the teacher's softmax against the student's,
   plus the SWAG-diagonal source prior N(mu_swag, diag sigma^2_swag) as a regulariser,

       L(theta) = mean_i [ -sum_k softmax(y'_i)_k log softmax(f_theta(x_i))_k ]
                  + SPW * 1/2 * sum_j (theta_j - mu_j)^2 / (sigma^2_j + 1e-6).

3. One Adam step on L; the teacher follows, theta' <- m theta' + (1 - m) theta (m = 0.999).
4. FIM-based restoration: with the Fisher proxy F_j = (dL/dtheta_j)^2 of this batch, the student parameters whose
   F_j lies below the delta-quantile (delta = 3 %) are reset to their source values: the parameters this domain
   does not use go back to the source, which limits drift over a long sequence of domains.

The prediction returned for the batch is the teacher target y' (computed before the update, as in the reference).

The diagonal SWAG posterior (Maddox et al. 2019, arXiv 1902.02476) is the first and second moment of the weights
over SGD iterates on the source data: mu = mean_t theta_t, sigma^2 = mean_t theta_t^2 - mu^2
(:func:`fit_swag_diagonal`).

Digits choices (the paper's are for CIFAR/ImageNet, where they differ):

* augmentations: a random +-1 pixel shift (background fill) and Gaussian noise of std 0.05 on [-1, 1], clamped.
  Flips and rotations change a digit's class; colour jitter has no meaning for grey digits.
* tau = 0.95 instead of 0.92. Measured on ``digits_bn_classifier`` with batch statistics: the mean anchor
  confidence of clean test batches is 0.98 (lowest batch of 16: 0.953, of 64: 0.978), while at severity 5 it is
  0.72-0.94 on every corruption whose error exceeds 2 % (defocus blur 0.944, jpeg 0.910, contrast 0.743) and 0.976
  on brightness (batch-statistics error 0.9 %). 0.95 therefore never triggers on clean batches and triggers on
  every domain where the source errs; 0.92 would miss defocus blur (0.944, batch-statistics error 5.6 %).
* SPW = 1e-5 (paper 1e-9 for CIFAR-10 with a 36M-parameter network): our SWAG variance over 20 one-epoch iterates
  is 6e-9-6e-7 per weight (5-95 % quantiles), so the precision 1/(sigma^2 + 1e-6) is ~1e6 throughout. Measured over
  the first 48 batches of the continual stream, the prior's gradient is 0.4-1.3x the cross-entropy's (median over
  weights) at SPW = 1e-5, a regulariser; at 1e-3 it is 30-600x, which pins the student to mu_swag.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...metrics.digits import _random_shift
from .tent import use_batch_statistics

__all__ = ["PETALAdapter", "build", "fit_swag_diagonal", "fisher_restore", "swag_prior_penalty",
           "augment_digits", "DEFAULT_CONFIDENCE_THRESHOLD"]

#: Anchor-confidence threshold tau for our digits source (see the module docstring for the measurement).
DEFAULT_CONFIDENCE_THRESHOLD = 0.95
#: Damping of the SWAG precision, 1 / (sigma^2 + 1e-6), as in the reference code.
SWAG_DAMPING = 1e-6


def augment_digits(x: torch.Tensor, generator: torch.Generator, *, noise_std: float = 0.05) -> torch.Tensor:
    """One digit-appropriate augmentation of a batch (B, 1, 8, 8) in [-1, 1]: an independent random shift in
    {-1, 0, 1}^2 pixels per image (background -1 fills the uncovered border), plus N(0, noise_std^2) noise,
    clamped to [-1, 1]. No flips or rotations: they change a digit's class."""
    shifted = _random_shift(x, generator)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return (shifted + noise_std * noise).clamp(-1.0, 1.0)


def swag_prior_penalty(named_params, mean: dict, var: dict) -> torch.Tensor:
    """The negative log of the diagonal SWAG prior up to a constant,
    1/2 sum_j (theta_j - mu_j)^2 / (sigma^2_j + 1e-6) (PETAL, arXiv 2303.15145, Eq. 12 of the appendix), over
    ``named_params`` (an iterable of (name, tensor)); ``mean``/``var`` map the same names to tensors."""
    total = None
    for name, p in named_params:
        term = ((p - mean[name]) ** 2 / (var[name] + SWAG_DAMPING)).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("swag_prior_penalty needs at least one parameter")
    return 0.5 * total


def fit_swag_diagonal(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, *, iterates: int = 20,
                      lr: float = 0.01, seed: int = 0, steps_per_iterate: int | None = None, batch_size: int = 64,
                      momentum: float = 0.9, weight_decay: float = 5e-4) -> tuple[dict, dict]:
    """Diagonal SWAG posterior of ``classifier``'s parameters on source data (Maddox et al. 2019, arXiv
    1902.02476; as PETAL's ``train-swag-diagonal-*.py``): continue training a copy with SGD (momentum, weight
    decay, cross-entropy, +-1 pixel shifts) from the trained source, and after every ``steps_per_iterate`` steps
    (default: one epoch) record the weights; with the T = ``iterates`` snapshots theta_1..theta_T,

        mu = (1/T) sum_t theta_t,    sigma^2 = max((1/T) sum_t theta_t^2 - mu^2, 0).

    Returns ``(mean, var)``: dicts parameter name -> tensor (float32, detached). ``classifier`` is not modified;
    deterministic given ``seed`` (own generator, global RNG untouched).
    """
    for name, v in (("iterates", iterates), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if steps_per_iterate is not None and (isinstance(steps_per_iterate, bool) or not isinstance(
            steps_per_iterate, int) or steps_per_iterate < 1):
        raise ValueError(f"steps_per_iterate must be an integer >= 1 or None, got {steps_per_iterate!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"x and y must hold the same number (>= 2) of samples, got {x.shape[0]} and {y.shape[0]}")
    gen = torch.Generator().manual_seed(int(seed))
    model = copy.deepcopy(classifier).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = steps_per_iterate or -(-x.shape[0] // batch_size)
    first = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    second = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    perm, cursor = torch.randperm(x.shape[0], generator=gen), 0
    for _ in range(iterates):
        for _ in range(steps):
            if cursor + batch_size > x.shape[0]:
                perm, cursor = torch.randperm(x.shape[0], generator=gen), 0
            idx = perm[cursor: cursor + batch_size]
            cursor += batch_size
            loss = F.cross_entropy(model(_random_shift(x[idx].float(), gen)), y[idx].long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            for n, p in model.named_parameters():
                first[n] += p.double()
                second[n] += p.double() ** 2
    mean = {n: (first[n] / iterates).float() for n in first}
    var = {n: (second[n] / iterates - (first[n] / iterates) ** 2).clamp_min(0).float() for n in first}
    return mean, var


@torch.no_grad()
def fisher_restore(student: nn.Module, source_state: dict, grads_sq: dict, quantile: float) -> int:
    """PETAL's FIM-based restoration (arXiv 2303.15145, data-driven parameter restoration; Algorithm 2 lines
    13-15): pool the Fisher proxy F_j = (dL/dtheta_j)^2 of every parameter of ``student`` (``grads_sq``: name ->
    tensor), and reset to ``source_state[name]`` the k = round(quantile * n) entries with the smallest F_j (ties
    broken by position, stable sort) -- the entries below the ``quantile``-quantile of F. Returns k, the number of
    entries reset; every other entry is left untouched."""
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0, 1), got {quantile!r}")
    names = [n for n, _ in student.named_parameters()]
    missing = [n for n in names if n not in grads_sq or n not in source_state]
    if missing:
        raise ValueError(f"grads_sq and source_state need every student parameter; missing {missing[:3]}")
    flat = torch.cat([grads_sq[n].reshape(-1).double() for n in names])
    k = int(round(quantile * flat.numel()))
    if k == 0:
        return 0
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.sort(flat, stable=True).indices[:k]] = True
    offset = 0
    for n, p in student.named_parameters():
        mask = chosen[offset: offset + p.numel()].view_as(p)
        offset += p.numel()
        p.copy_(torch.where(mask, source_state[n].to(p.dtype), p))
    return k


class PETALAdapter:
    """PETAL-FIM test-time adapter (Brahma & Rai 2023, arXiv 2303.15145): student-teacher self-training with an
    EMA teacher, augmentation-averaged teacher targets under low anchor confidence, the diagonal SWAG source prior
    and Fisher-based restoration (module docstring). ``predict(x)`` adapts on the batch and returns the teacher's
    logits (B, K); ``reset()`` returns student, teacher, optimizer and augmentation generator to the source state.

    ``confidence_threshold = 0`` switches augmentation averaging off, ``spw = 0`` the SWAG prior and
    ``restore_quantile = 0`` the restoration (the ablations of the study).
    """

    name = "petal"

    def __init__(self, classifier: nn.Module, swag_mean: dict, swag_var: dict, *, ema: float = 0.999,
                 confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD, n_augment: int = 32,
                 spw: float = 1e-5, restore_quantile: float = 0.03, lr: float = 1e-3, seed: int = 0):
        for label, v, lo, hi in (("ema", ema, 0.0, 1.0), ("confidence_threshold", confidence_threshold, 0.0, 1.0)):
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise ValueError(f"{label} must be in [{lo}, {hi}], got {v!r}")
        if isinstance(n_augment, bool) or not isinstance(n_augment, int) or n_augment < 1:
            raise ValueError(f"n_augment must be an integer >= 1, got {n_augment!r}")
        if not (isinstance(spw, (int, float)) and math.isfinite(spw) and spw >= 0):
            raise ValueError(f"spw must be a finite number >= 0, got {spw!r}")
        if not (isinstance(restore_quantile, (int, float)) and 0 <= restore_quantile < 1):
            raise ValueError(f"restore_quantile must be in [0, 1), got {restore_quantile!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        names = [n for n, _ in classifier.named_parameters()]
        for label, d in (("swag_mean", swag_mean), ("swag_var", swag_var)):
            missing = [n for n in names if n not in d]
            if missing:
                raise ValueError(f"{label} lacks parameters {missing[:3]} of the classifier")
        self.anchor = use_batch_statistics(copy.deepcopy(classifier)).requires_grad_(False)
        self.student = use_batch_statistics(copy.deepcopy(classifier)).requires_grad_(True)
        self.teacher = use_batch_statistics(copy.deepcopy(classifier)).requires_grad_(False)
        # the BatchNorm wrappers rename parameters (body.1.weight -> body.1.bn.weight): key everything by the
        # student's names, matched to the classifier's in module order
        student_names = {n: s for n, (s, _) in zip(names, self.student.named_parameters())}
        self.ema, self.confidence_threshold, self.n_augment = float(ema), float(confidence_threshold), n_augment
        self.spw, self.restore_quantile, self.lr, self.seed = float(spw), float(restore_quantile), float(lr), seed
        self.swag_posterior = ({n: swag_mean[n] for n in names}, {n: swag_var[n] for n in names})  # as given
        self.swag_mean = {student_names[n]: swag_mean[n].detach().float().clone() for n in names}
        self.swag_var = {student_names[n]: swag_var[n].detach().float().clone() for n in names}
        self.source_state = {student_names[n]: p.detach().clone() for n, p in classifier.named_parameters()}
        self.reset()

    def reset(self) -> None:
        """Student and teacher back to the source weights, a fresh Adam state, the augmentation generator back to
        ``seed`` and the counters to zero."""
        with torch.no_grad():
            for model in (self.student, self.teacher):
                for n, p in model.named_parameters():
                    p.copy_(self.source_state[n])
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=self.lr)
        self.generator = torch.Generator().manual_seed(int(self.seed))
        self.steps = self.augmented_steps = 0
        self.last_anchor_confidence = float("nan")
        self.last_augmented = False
        self.last_n_reset = 0
        self.last_student_logits = None

    @torch.no_grad()
    def update_teacher(self) -> None:
        """theta' <- m theta' + (1 - m) theta (m = ``ema``), parameter by parameter."""
        for (_, pt), (_, ps) in zip(self.teacher.named_parameters(), self.student.named_parameters()):
            pt.mul_(self.ema).add_(ps.detach(), alpha=1.0 - self.ema)

    @torch.no_grad()
    def teacher_target(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher logits y' for batch x: averaged over ``n_augment`` augmentations (each normalised with its
        own batch statistics) when the anchor's mean max-softmax on x is below ``confidence_threshold``, else the
        teacher on x. Sets ``last_anchor_confidence`` and ``last_augmented``."""
        confidence = float(F.softmax(self.anchor(x), dim=1).max(dim=1).values.mean())
        self.last_anchor_confidence = confidence
        self.last_augmented = confidence < self.confidence_threshold
        if not self.last_augmented:
            return self.teacher(x)
        total = None
        for _ in range(self.n_augment):
            out = self.teacher(augment_digits(x, self.generator))
            total = out if total is None else total + out
        return total / self.n_augment

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt on batch x (B, C, H, W) and return the teacher target's logits (B, K)."""
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[0] < 1:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"PETAL needs a batch of images (B, C, H, W), got {shape}")
        x = x.float()
        target = self.teacher_target(x)
        with torch.enable_grad():
            student_logits = self.student(x)
            self.last_student_logits = student_logits.detach()
            loss = -(F.softmax(target, dim=1) * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()
            if self.spw > 0:
                loss = loss + self.spw * swag_prior_penalty(self.student.named_parameters(), self.swag_mean,
                                                            self.swag_var)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        grads_sq = {n: (p.grad.detach() ** 2 if p.grad is not None else torch.zeros_like(p))
                    for n, p in self.student.named_parameters()}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.update_teacher()
        self.last_n_reset = fisher_restore(self.student, self.source_state, grads_sq, self.restore_quantile)
        self.steps += 1
        self.augmented_steps += int(self.last_augmented)
        return target


def build(classifier: nn.Module, *, quick: bool = False, seed: int = 0, **overrides) -> PETALAdapter:
    """A ready PETAL adapter for ``classifier`` (the factory of ``methods.tta``): fits the diagonal SWAG posterior
    on the clean digits train split (the classifier's classes only; 20 one-epoch iterates, 5 under ``quick``) and
    returns :class:`PETALAdapter` with the recommended defaults (``quick`` also averages 8 augmentations, not 32).
    ``overrides``: any keyword of :class:`PETALAdapter` (``ema``, ``confidence_threshold``, ``n_augment``, ``spw``,
    ``restore_quantile``, ``lr``) and ``iterates`` / ``swag_lr`` for the SWAG fit."""
    from ...data.digits import load_digits_split

    iterates = overrides.pop("iterates", 5 if quick else 20)
    overrides.setdefault("n_augment", 8 if quick else 32)
    swag_lr = overrides.pop("swag_lr", 0.01)
    allowed = {"ema", "confidence_threshold", "n_augment", "spw", "restore_quantile", "lr", "iterates", "swag_lr"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown PETAL options {unknown}; allowed: {', '.join(sorted(allowed))}")
    x, y = load_digits_split("train")
    if getattr(classifier, "num_classes", 10) != 10:  # e.g. the open-set source on digits 0-4
        keep = y < classifier.num_classes
        x, y = x[keep], y[keep]
    mean, var = fit_swag_diagonal(classifier, x, y, iterates=iterates, lr=swag_lr, seed=seed)
    return PETALAdapter(classifier, mean, var, seed=seed, **overrides)
