"""Gradient guidance as Denoiser wrappers: classifier guidance, universal guidance, reward guidance.

All three add the gradient of a differentiable objective to the denoiser's prediction. With
g = grad_x objective (x of shape (B, ...), objective of shape (B,)) there are two places to put it:

* ``hook="eps"`` (score shift; Dhariwal & Nichol 2021, arXiv 2105.05233, Alg. 2 / guided-diffusion's
  ``condition_score``; Bansal et al. 2023, arXiv 2302.07121, forward guidance eq. 6):

      eps_hat' = eps_hat - scale * sigma_t * g      <=>   x0_hat' = x0_hat + scale * sigma_t^2 / alpha_t * g

  since x0_hat = (x - sigma_t eps_hat) / alpha_t. With objective = log p(y | x_t) this samples
  p(x_t) p(y | x_t)^scale: the added score is scale * g.
* ``hook="x0"`` (mean shift in x0_hat):  x0_hat' = x0_hat + scale * g, a step of constant size in x0 space
  at every t (the DDIM mean then moves by alpha_next * scale * g). Stronger than ``"eps"`` at low noise.

A third position, the post-step correction x_next <- x_next + step_size * g (DPS, Chung et al. 2023,
arXiv 2209.14687, Alg. 1; Bansal et al.'s guidance applied after the step), cannot be a Denoiser since it
acts on the sampler's output; :func:`sample_post_corrected` wraps any one-step sampler with it.

Objectives:

* :class:`ClassifierGuidedDenoiser`: a noise-aware classifier p(y | x_t, t), trained on forward-noised data
  by :func:`train_noisy_classifier` (Dhariwal & Nichol §4, Alg. 1/2). Gradient of log p(y | x_t, t) w.r.t. x_t;
  the denoiser is not differentiated (one extra classifier forward/backward per call).
* :class:`UniversalGuidedDenoiser`: any objective of x0_hat, typically a CLEAN classifier's log p(y | x0_hat)
  (Bansal et al. 2023). The gradient is taken w.r.t. x_t through the denoiser (one network forward and
  backward per call).
* :class:`RewardGuidedDenoiser`: the same for a reward r(x0_hat) with no labels; guidance as sampling from
  p(x) exp(scale r(x)) ("optimisation as conditional sampling").

Gradients are computed under ``torch.enable_grad`` inside the wrappers, so they work inside ``torch.no_grad``
sampling loops; the returned x0_hat is detached. Labels for the objective are passed at call time as
``guidance_labels`` (shape (B,)); all other keyword arguments go to the wrapped denoiser unchanged (for an
unconditional model, e.g. ``class_labels=null``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core._tensor import per_sample
from ..core.denoiser import Denoiser
from ..core.schedules import Schedule
from ..nets.embedding import timestep_embedding
from ..samplers.baseline import sample_ddim

HOOKS = ("eps", "x0")

__all__ = [
    "HOOKS", "NoisyClassifier", "train_noisy_classifier", "classifier_log_prob", "guidance_shift",
    "ClassifierGuidedDenoiser", "UniversalGuidedDenoiser", "RewardGuidedDenoiser", "sample_post_corrected",
]


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"guidance scale must be a finite number; got {scale!r}")
    return float(scale)


def _check_hook(hook: str) -> str:
    if hook not in HOOKS:
        raise ValueError(f"hook must be one of {HOOKS} (post-step correction: sample_post_corrected); got {hook!r}")
    return hook


def guidance_shift(g: torch.Tensor, x: torch.Tensor, t: torch.Tensor, schedule: Schedule, scale: float,
                   hook: str) -> torch.Tensor:
    """The x0_hat increment for gradient g (B, ...) at times t (B,): scale sigma^2/alpha g ("eps") or scale g ("x0")."""
    if hook == "x0":
        return scale * g
    alpha, sigma = per_sample(schedule.alpha(t), x), per_sample(schedule.sigma(t), x)
    return scale * sigma**2 / alpha * g


# ---------------------------------------------------------------- noise-aware classifier

class NoisyClassifier(nn.Module):
    """Time-conditioned CNN p(y | x_t, t) for (B, C, H, W) images, H and W divisible by 4.

    conv3x3(C->c) +emb SiLU conv3x3(c->c) SiLU avgpool2 conv3x3(c->2c) +emb SiLU avgpool2 global-mean
    Linear(2c->num_classes). The time input is the schedule's ``network_time(t)`` through a sinusoidal
    embedding and an MLP, added per channel (as in ADM's encoder classifier, much smaller).
    """

    def __init__(self, schedule: Schedule, *, in_channels: int = 1, channels: int = 32, num_classes: int = 10,
                 emb_dim: int = 64):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("channels", channels), ("num_classes", num_classes),
                        ("emb_dim", emb_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.schedule = schedule
        self.config = {"in_channels": in_channels, "channels": channels, "num_classes": num_classes,
                       "emb_dim": emb_dim}
        c = channels
        self.emb_dim = emb_dim
        self.emb = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU())
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1)
        self.emb1 = nn.Linear(emb_dim, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.conv3 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.emb3 = nn.Linear(emb_dim, 2 * c)
        self.conv4 = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.head = nn.Linear(2 * c, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for x_t (B, C, H, W) at schedule times t (B,) (float64 or any float)."""
        dtype = self.head.weight.dtype
        t_in = self.schedule.network_time(t.to(torch.float64)).to(dtype=dtype, device=x.device)
        e = self.emb(timestep_embedding(t_in, self.emb_dim))
        h = F.silu(self.conv1(x.to(dtype)) + self.emb1(e)[:, :, None, None])
        h = F.avg_pool2d(F.silu(self.conv2(h)), 2)
        h = F.silu(self.conv3(h) + self.emb3(e)[:, :, None, None])
        h = F.avg_pool2d(F.silu(self.conv4(h)), 2)
        return self.head(h.mean(dim=(2, 3)))


def train_noisy_classifier(schedule: Schedule, x: torch.Tensor, y: torch.Tensor, *, steps: int, seed: int,
                           batch_size: int = 128, lr: float = 2e-3, channels: int = 32) -> NoisyClassifier:
    """Train a :class:`NoisyClassifier` on x_t = alpha_t x + sigma_t eps, t ~ U[t_min, t_max], with cross-entropy
    (Dhariwal & Nichol 2021, arXiv 2105.05233, §4: the classifier is trained on the diffusion's noised data).

    Adam with a cosine decay of ``lr`` to 0 over ``steps``; deterministic given ``seed`` (the global RNG is left
    untouched). Returns the classifier in eval mode. Args: x (N, C, H, W), y (N,) integer labels.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (N, C, H, W) with N >= 1, got {tuple(x.shape)}")
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.shape != (x.shape[0],):
        raise ValueError(f"y must be integer labels of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
    x, y = x.detach().float(), y.long()
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = NoisyClassifier(schedule, in_channels=x.shape[1], channels=channels,
                                num_classes=max(10, int(y.max()) + 1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps)))
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
        t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(len(idx), generator=gen,
                                                                            dtype=torch.float64)
        x0 = x[idx]
        x_t = schedule.add_noise(x0, t, torch.randn(x0.shape, generator=gen)).float()
        loss = F.cross_entropy(model(x_t, t), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


# ---------------------------------------------------------------- wrappers

class ClassifierGuidedDenoiser(Denoiser):
    """Classifier guidance with a noise-aware classifier (Dhariwal & Nichol 2021, arXiv 2105.05233, Alg. 2):

        eps_hat' = eps_hat - scale * sigma_t * grad_{x_t} log p(y | x_t, t)

    i.e. x0_hat' = x0_hat + scale * sigma_t^2 / alpha_t * grad (``hook="eps"``; ``hook="x0"`` adds scale * grad).
    ``classifier(x_t, t) -> logits`` with t the schedule time (B,). Call with ``guidance_labels`` (B,) plus the
    wrapped denoiser's own conditioning. 1 NFE + one classifier forward/backward per call; ``scale = 0`` is the
    wrapped denoiser exactly.
    """

    def __init__(self, denoiser: Denoiser, classifier: Callable, scale: float, *, hook: str = "eps"):
        super().__init__(denoiser.schedule)
        self.inner, self.classifier = denoiser, classifier
        self.scale, self.hook = _check_scale(scale), _check_hook(hook)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, *, guidance_labels: torch.Tensor, **cond) -> torch.Tensor:
        x0 = self.inner.denoise(x, t, **cond)
        if self.scale == 0.0:
            return x0
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = F.log_softmax(self.classifier(xg, t).float(), dim=-1)
            sel = logp.gather(1, guidance_labels.long().reshape(-1, 1)).sum()
            (g,) = torch.autograd.grad(sel, xg)
        return x0 + guidance_shift(g, x, t, self.schedule, self.scale, self.hook).to(x0.dtype)


def classifier_log_prob(classifier: Callable) -> Callable:
    """objective(x0_hat, labels) = log softmax(classifier(x0_hat))[labels], shape (B,), for a CLEAN classifier."""

    def objective(x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(classifier(x0).float(), dim=-1)
        return logp.gather(1, labels.long().reshape(-1, 1)).squeeze(1)

    return objective


class UniversalGuidedDenoiser(Denoiser):
    """Universal (forward) guidance (Bansal et al. 2023, arXiv 2302.07121, eq. 6) with an objective of x0_hat:

        g = grad_{x_t} objective(x0_hat(x_t), y)      (through the denoiser)
        hook "eps": eps_hat' = eps_hat - scale * sigma_t * g   (x0_hat' = x0_hat + scale sigma_t^2/alpha_t g)
        hook "x0":  x0_hat'  = x0_hat + scale * g

    ``objective(x0_hat, labels) -> (B,)`` (e.g. :func:`classifier_log_prob`; a loss enters as its negative).
    Call with ``guidance_labels`` (B,) plus the wrapped denoiser's conditioning. 1 NFE with a backward pass per
    call (about 2-3x the cost of a plain evaluation); ``scale = 0`` is the wrapped denoiser exactly. Bansal et
    al.'s backward guidance (an inner optimisation in x0 space) and self-recurrence are not implemented.
    """

    def __init__(self, denoiser: Denoiser, objective: Callable, scale: float, *, hook: str = "eps"):
        super().__init__(denoiser.schedule)
        self.inner, self.objective = denoiser, objective
        self.scale, self.hook = _check_scale(scale), _check_hook(hook)

    def _objective(self, x0: torch.Tensor, labels) -> torch.Tensor:
        return self.objective(x0) if labels is None else self.objective(x0, labels)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, *, guidance_labels: torch.Tensor | None = None,
                **cond) -> torch.Tensor:
        if self.scale == 0.0:
            return self.inner.denoise(x, t, **cond)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = self.inner.denoise(xg, t, **cond)
            (g,) = torch.autograd.grad(self._objective(x0, guidance_labels).sum(), xg)
        return x0.detach() + guidance_shift(g, x, t, self.schedule, self.scale, self.hook).to(x0.dtype)


class RewardGuidedDenoiser(UniversalGuidedDenoiser):
    """Reward guidance: :class:`UniversalGuidedDenoiser` with ``objective = reward(x0_hat) -> (B,)`` and no labels,
    approximately sampling p(x) exp(scale * r(x)) (optimisation as conditional sampling)."""

    def __init__(self, denoiser: Denoiser, reward: Callable, scale: float, *, hook: str = "eps"):
        super().__init__(denoiser, reward, scale, hook=hook)


# ---------------------------------------------------------------- post-step correction

def sample_post_corrected(denoiser: Denoiser, x: torch.Tensor, ts, *, objective: Callable, step_size: float,
                          guidance_labels: torch.Tensor | None = None, normalize: bool = False,
                          cond: dict | None = None, sampler: Callable = sample_ddim, **options) -> torch.Tensor:
    """Post-step guidance (DPS, Chung et al. 2023, arXiv 2209.14687, Alg. 1; DDA): for each step s -> t

        x_t = sampler_step(x_s);   x_t <- x_t + step_size * g,   g = grad_{x_s} objective(x0_hat(x_s))

    with the gradient through the denoiser from the same evaluation as the step (1 NFE + one backward per step).
    ``normalize=True`` uses g / ||g|| per sample (DPS's non-squared-norm step), so ``step_size`` is then a
    distance in x. ``sampler`` must be a one-step method of the common signature (DDIM, DDPM, Euler; not a
    multistep solver, whose history this loop would reset); ``options`` (eta, generator, ...) go to it.
    x (B, ...) and ts (a decreasing grid) as for the samplers; returns x at ts[-1], detached.
    """
    step_size = _check_scale(step_size)
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"ts must be a 1-d grid with at least 2 times; got shape {tuple(ts.shape)}")
    cond = cond or {}
    seen: dict = {}
    for i in range(ts.numel() - 1):
        seen.clear()
        with torch.enable_grad():
            xs = x.detach().requires_grad_(True)
            x_next = sampler(denoiser, xs, ts[i:i + 2], cond=cond, callback=seen.update, **options)
            x0 = seen["x0_hat"]
            obj = objective(x0) if guidance_labels is None else objective(x0, guidance_labels)
            (g,) = torch.autograd.grad(obj.sum(), xs)
        if normalize:
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (g.ndim - 1)))
        x = (x_next.detach() + step_size * g).to(x_next.dtype)
    return x
