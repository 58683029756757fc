"""DITTO: inference-time optimisation of the initial noise x_T through a differentiable sampler.

DITTO (Novack, McAuley, Berg-Kirkpatrick & Bryan 2024, arXiv 2401.12179) treats a deterministic sampler
as a differentiable map x_0 = G(x_T) and minimises a control loss on its output with Adam,

    x_T* = argmin_{x_T}  L(G(x_T)) + w_reg * R(x_T),      R(x_T) = (||x_T|| / sqrt(d) - 1)^2,

back-propagating through every denoiser call (optionally with gradient checkpointing). R keeps x_T near
the Gaussian shell ||x_T|| ~ sqrt(d) where the model was trained (the prior regulariser; ``renorm``
instead projects back onto the shell after every Adam step).

DITTO-2 (Novack et al. 2024, arXiv 2405.20289) makes the loop cheap: optimise x_T through a 1-2 step
surrogate G_s (there a consistency-distilled model; here few-step DDIM of the same model), then decode
x_T* with a multi-step sampler. ``optimize_noise`` implements both (pick ``steps``); ``decode`` and
``ditto2`` give the two-stage recipe. Control losses return per-example values of shape (B,).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ..core import Denoiser, make_grid

ControlLoss = Callable[[torch.Tensor], torch.Tensor]  # x0 (B, ...) -> per-example loss (B,)


class CheckpointedDenoiser(Denoiser):
    """Wraps a denoiser so that each call is gradient-checkpointed: activations are recomputed in the
    backward pass, so memory grows with the number of steps by one x-sized tensor per step only."""

    def __init__(self, denoiser: Denoiser):
        super().__init__(denoiser.schedule)
        self.inner = denoiser

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return checkpoint(lambda x_: self.inner.denoise(x_, t, **cond), x, use_reentrant=False)


def _resolve_sampler(sampler) -> Callable:
    if callable(sampler):
        return sampler
    from ..samplers import get_sampler

    info = get_sampler(sampler)
    if info.stochastic:
        raise ValueError(f"sampler {sampler!r} is stochastic; DITTO needs a deterministic sampler (e.g. 'ddim')")
    return info.fn


def generate(denoiser: Denoiser, x_T: torch.Tensor, *, sampler="ddim", steps: int = 20, grid: str = "trailing",
             cond: dict | None = None) -> torch.Tensor:
    """x_0 = G(x_T): the deterministic ``steps``-step sampler on the ``grid`` time grid. Gradients are NOT
    disabled (wrap in ``torch.no_grad()`` to decode). NFE = steps x the sampler's NFE per step."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    ts = make_grid(grid, denoiser.schedule, steps)
    return _resolve_sampler(sampler)(denoiser, x_T, ts, cond=cond or {})


def decode(denoiser: Denoiser, x_T: torch.Tensor, *, sampler="ddim", steps: int = 50, grid: str = "trailing",
           cond: dict | None = None) -> torch.Tensor:
    """Decode (optimised) noise with a multi-step sampler, without gradients (DITTO-2's final stage)."""
    with torch.no_grad():
        return generate(denoiser, x_T, sampler=sampler, steps=steps, grid=grid, cond=cond)


def shell_radius(x: torch.Tensor) -> torch.Tensor:
    """||x|| / sqrt(d) per example, shape (B,); ~1 for x ~ N(0, I) in high dimension."""
    flat = x.reshape(x.shape[0], -1)
    return flat.norm(dim=1) / flat.shape[1] ** 0.5


def norm_regulariser(x_T: torch.Tensor) -> torch.Tensor:
    """R(x_T) = (||x_T|| / sqrt(d) - 1)^2 per example, shape (B,): a soft Gaussian-shell prior."""
    return (shell_radius(x_T) - 1.0) ** 2


def optimize_noise(denoiser: Denoiser, loss_fn: ControlLoss, x_T: torch.Tensor, *, sampler="ddim", steps: int = 2,
                   iters: int = 50, lr: float = 0.1, reg_weight: float = 10.0, renorm: bool = False,
                   grid: str = "trailing", cond: dict | None = None, checkpointing: bool = False,
                   callback: Callable | None = None) -> tuple[torch.Tensor, dict]:
    """DITTO (arXiv 2401.12179, Alg. 1) / DITTO-2 surrogate stage (arXiv 2405.20289): Adam on x_T,

        loss(x_T) = sum_b [ L_b(G(x_T)_b) + reg_weight * (||x_T,b|| / sqrt(d) - 1)^2 ],

    with G the deterministic ``steps``-step ``sampler`` (name or ``fn(denoiser, x, ts, cond=...)``) on
    ``grid``. Summing over the batch keeps the examples independent (Adam is per-coordinate). With
    ``renorm`` x_T is projected back to radius sqrt(d) after every step. Cost per iteration: ``steps``
    forward + backward denoiser passes (x2 forward with ``checkpointing``).

    x_T: (B, ...). loss_fn(x0) -> (B,). Returns (x_T*, history) where x_T* is detached and history has
    per-iteration lists "loss" (mean control loss of the CURRENT iterate, before the update), "reg",
    "radius" (mean ||x_T||/sqrt(d)), "grad_norm", plus "seconds" (total) and the settings.
    """
    if iters < 0:
        raise ValueError(f"iters must be >= 0; got {iters}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0; got {lr}")
    if reg_weight < 0:
        raise ValueError(f"reg_weight must be >= 0; got {reg_weight}")
    den = CheckpointedDenoiser(denoiser) if checkpointing else denoiser
    sample_fn = _resolve_sampler(sampler)
    nfe_per_step = getattr(getattr(sample_fn, "info", None), "nfe_per_step", None) or 1
    ts = make_grid(grid, denoiser.schedule, steps)
    cond = cond or {}
    d = x_T[0].numel()
    x = x_T.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    hist = {"loss": [], "reg": [], "radius": [], "grad_norm": []}
    t0 = time.perf_counter()
    for it in range(iters):
        opt.zero_grad(set_to_none=True)
        control = loss_fn(sample_fn(den, x, ts, cond=cond))
        if control.shape != (x.shape[0],):
            raise ValueError(f"loss_fn must return per-example losses of shape ({x.shape[0]},); "
                             f"got {tuple(control.shape)}")
        reg = norm_regulariser(x)
        (control.sum() + reg_weight * reg.sum()).backward()
        hist["loss"].append(float(control.detach().mean()))
        hist["reg"].append(float(reg.detach().mean()))
        hist["radius"].append(float(shell_radius(x.detach()).mean()))
        hist["grad_norm"].append(float(x.grad.norm()))
        opt.step()
        if renorm:
            with torch.no_grad():
                x.mul_(d ** 0.5 / x.reshape(x.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (x.ndim - 1)))
        if callback is not None:
            callback({"i": it, "x_T": x.detach(), "loss": hist["loss"][-1]})
    hist.update(seconds=time.perf_counter() - t0, steps=steps, iters=iters, lr=lr, reg_weight=reg_weight,
                renorm=renorm, nfe_per_iter=steps * nfe_per_step)
    return x.detach(), hist


def ditto2(denoiser: Denoiser, loss_fn: ControlLoss, x_T: torch.Tensor, *, surrogate_steps: int = 1,
           decode_steps: int = 20, sampler="ddim", grid: str = "trailing", cond: dict | None = None,
           **opt_kwargs) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """DITTO-2 (arXiv 2405.20289): optimise x_T through the ``surrogate_steps``-step sampler, then decode
    x_T* with the ``decode_steps``-step sampler. Returns (x0, x_T*, history)."""
    x_opt, hist = optimize_noise(denoiser, loss_fn, x_T, sampler=sampler, steps=surrogate_steps, grid=grid,
                                 cond=cond, **opt_kwargs)
    return decode(denoiser, x_opt, sampler=sampler, steps=decode_steps, grid=grid, cond=cond), x_opt, hist


# -- control losses (per-example, shape (B,)) -----------------------------------------------------------
def class_loss(classifier: Callable, labels: torch.Tensor) -> ControlLoss:
    """L(x0) = -log softmax(classifier(x0))[label] for a CLEAN classifier (target-class control)."""
    import torch.nn.functional as F

    def loss(x0: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(classifier(x0).float(), dim=-1)
        return -logp.gather(1, labels.long().reshape(-1, 1).to(logp.device)).squeeze(1)

    return loss


def measurement_loss(operator, y: torch.Tensor) -> ControlLoss:
    """L(x0) = mean over measurements of (A x0 - y)^2, with A a linear operator with ``apply`` (e.g.
    ``inpaint_box`` for region control, ``super_resolution`` for low-resolution control)."""

    def loss(x0: torch.Tensor) -> torch.Tensor:
        r = operator.apply(x0) - y.to(x0.dtype)
        return r.reshape(r.shape[0], -1).pow(2).mean(dim=1)

    return loss


def intensity_loss(target: float | torch.Tensor, mask: torch.Tensor | None = None) -> ControlLoss:
    """L(x0) = (mean intensity of x0 over ``mask`` (all pixels if None) - target)^2 ("brightness" control)."""

    def loss(x0: torch.Tensor) -> torch.Tensor:
        flat = x0.reshape(x0.shape[0], -1)
        if mask is None:
            mean = flat.mean(dim=1)
        else:
            m = mask.to(x0.dtype).expand_as(x0[0]).reshape(-1)
            mean = (flat * m).sum(dim=1) / m.sum()
        return (mean - torch.as_tensor(target, dtype=x0.dtype)) ** 2

    return loss


__all__ = ["CheckpointedDenoiser", "ControlLoss", "class_loss", "decode", "ditto2", "generate", "intensity_loss",
           "measurement_loss", "norm_regulariser", "optimize_noise", "shell_radius"]
