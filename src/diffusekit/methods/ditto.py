"""DITTO: inference-time optimisation of the initial noise x_T through a differentiable sampler.

DITTO (Novack, McAuley, Berg-Kirkpatrick & Bryan 2024, arXiv 2401.12179) treats a deterministic sampler
as a differentiable map x_0 = G(x_T) and minimises a control loss on its output with Adam,

    x_T* = argmin_{x_T}  L(G(x_T)) + w_reg * R(x_T),      R(x_T) = (||x_T|| / sqrt(d) - 1)^2,

back-propagating through every denoiser call (optionally with gradient checkpointing). R keeps x_T near
the Gaussian shell ||x_T|| ~ sqrt(d) where the model was trained (the prior regulariser; ``renorm``
instead projects back onto the shell after every Adam step).

DITTO-2 (Novack et al. 2024, arXiv 2405.20289) makes the loop cheap: optimise x_T through a 1-2 step
surrogate G_s, then decode x_T* with a multi-step sampler,

    x_T* = argmin_{x_T}  L(G_s(x_T)) + w_reg * R(x_T),      x_0 = G_teacher(x_T*).

The paper's surrogate is a consistency-distilled student of the same model; ``ditto2(..., student=S,
student_sampling={"sampler", "steps", "ts"})`` takes any distilled student (a Denoiser from
``methods.distill``: progressive, consistency, SLAM, BOOT, ...) with its native sampling, and without one
falls back to a few-step DDIM of the teacher itself as a stand-in. ``optimize_noise`` implements both loops
(pick ``steps`` or an explicit grid ``ts``); ``decode`` and ``ditto2`` give the two-stage recipe. Control
losses return per-example values of shape (B,).
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


def _resolve_sampler(sampler, *, seed: int = 0) -> Callable:
    """A deterministic ``fn(denoiser, x, ts, cond=...)``: a callable as is, or a registered sampler by name.
    ``"consistency"`` (multistep consistency sampling of a distilled student, Song et al. 2023, Alg. 1, on a grid
    [t_0, ..., t_{n-1}, t_n = 0] with n network calls: ``methods.distill.samplers.sample_consistency``)
    re-injects noise between steps; here that noise comes from a generator re-seeded with ``seed`` on every
    call, so the map x_T -> x_0 is deterministic and differentiable in x_T."""
    if callable(sampler):
        return sampler
    if sampler == "consistency":
        from .distill.samplers import sample_consistency

        def sample_consistency_fixed_noise(denoiser, x, ts, cond=None):
            return sample_consistency(denoiser, x, ts, generator=torch.Generator(x.device).manual_seed(seed),
                                      cond=cond)

        return sample_consistency_fixed_noise
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
                   callback: Callable | None = None, ts=None) -> tuple[torch.Tensor, dict]:
    """DITTO (arXiv 2401.12179, Alg. 1) / DITTO-2 surrogate stage (arXiv 2405.20289): Adam on x_T,

        loss(x_T) = sum_b [ L_b(G(x_T)_b) + reg_weight * (||x_T,b|| / sqrt(d) - 1)^2 ],

    with G the deterministic ``steps``-step ``sampler`` (name or ``fn(denoiser, x, ts, cond=...)``) on
    ``grid``, or on the explicit time grid ``ts`` when given (``steps`` and ``grid`` are then unused).
    Summing over the batch keeps the examples independent (Adam is per-coordinate). With ``renorm`` x_T is
    projected back to radius sqrt(d) after every step. Cost per iteration: ``steps``
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
    if ts is None:
        ts = make_grid(grid, denoiser.schedule, steps)
    else:
        ts = torch.as_tensor(ts, dtype=torch.float64).flatten()
        steps = len(ts) - 1
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


def student_surrogate_grid(student: Denoiser, sampling: dict, grid: str = "trailing") -> torch.Tensor:
    """The time grid of a distilled student's native sampling ``{"sampler", "steps", "ts"}`` (the distillation
    contract of ``methods.distill``): ``ts`` when given, else ``make_grid(grid, schedule, steps)``. float64."""
    if not isinstance(sampling, dict) or "sampler" not in sampling:
        raise ValueError("student_sampling must be a dict with 'sampler', 'steps' and optionally 'ts' (the "
                         f"student's native sampling); got {sampling!r}")
    ts = sampling.get("ts")
    if ts is not None:
        return torch.as_tensor(ts, dtype=torch.float64).flatten()
    steps = sampling.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"student_sampling['steps'] must be a positive integer when 'ts' is None; got {steps!r}")
    return make_grid(grid, student.schedule, steps)


def ditto2(denoiser: Denoiser, loss_fn: ControlLoss, x_T: torch.Tensor, *, surrogate_steps: int = 1,
           decode_steps: int = 20, sampler="ddim", grid: str = "trailing", cond: dict | None = None,
           student: Denoiser | None = None, student_sampling: dict | None = None,
           **opt_kwargs) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """DITTO-2 (Novack et al. 2024, arXiv 2405.20289, Sec. 3): optimise x_T through a cheap surrogate G_s,

        x_T* = argmin_{x_T} L(G_s(x_T)) + reg_weight * R(x_T)          (``optimize_noise``),

    then decode x_0 = G(x_T*) with the full ``decode_steps``-step ``sampler`` of ``denoiser`` (the teacher).
    G_s is, as in the paper, a distilled student when ``student`` is given: ``student`` any Denoiser (e.g. a
    progressive-distillation ``NetworkDenoiser``, a ``ConsistencyDenoiser``) run by its native sampling
    ``student_sampling = {"sampler": name or fn, "steps": k, "ts": times or None (then ``grid``)}`` (``"consistency"``
    sampling uses fixed re-injected noise, see ``_resolve_sampler``). The student must start from the same
    noise level as the teacher's decode grid (same x_T). Without a student, G_s is the teacher's own
    ``surrogate_steps``-step ``sampler`` (the DDIM stand-in). Cost per Adam iteration: the surrogate's NFE
    forward + backward passes. Returns (x0, x_T*, history); history["surrogate"] describes G_s.
    """
    if student is None:
        if student_sampling is not None:
            raise ValueError("student_sampling was given without a student")
        x_opt, hist = optimize_noise(denoiser, loss_fn, x_T, sampler=sampler, steps=surrogate_steps, grid=grid,
                                     cond=cond, **opt_kwargs)
        hist["surrogate"] = {"kind": "teacher_few_step", "sampler": sampler if isinstance(sampler, str) else "custom",
                             "steps": surrogate_steps}
    else:
        if student_sampling is None:
            raise ValueError("a student surrogate needs student_sampling = {'sampler', 'steps', 'ts'} (its native "
                             "sampling)")
        ts = student_surrogate_grid(student, student_sampling, grid)
        t_decode = float(make_grid(grid, denoiser.schedule, decode_steps)[0])
        if abs(float(ts[0]) - t_decode) > 1e-6 * max(1.0, abs(t_decode)):
            raise ValueError(f"the student's grid starts at t = {float(ts[0])} but the teacher's decode grid at "
                             f"t = {t_decode}; both must start from the same x_T")
        s_sampler = student_sampling["sampler"]
        x_opt, hist = optimize_noise(student, loss_fn, x_T, sampler=s_sampler, ts=ts, cond=cond, **opt_kwargs)
        hist["surrogate"] = {"kind": "student", "sampler": s_sampler if isinstance(s_sampler, str) else "custom",
                             "steps": hist["steps"], "ts": [float(t) for t in ts]}
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
           "measurement_loss", "norm_regulariser", "optimize_noise", "shell_radius", "student_surrogate_grid"]
