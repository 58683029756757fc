"""Samplers of distilled students that are not ODE solvers, registered in ``diffusekit.samplers``.

* ``consistency``: multistep consistency sampling (Song et al. 2023, arXiv 2303.01469, Alg. 1) of a consistency
  function f (a Denoiser whose x0_hat is f(x_t, t), e.g. ``ConsistencyDenoiser``). On a grid
  ts = [t_0, t_1, ..., t_{n-1}, t_n] (n steps, decreasing):

      x = f(x_T, t_0);   for k = 1..n-1:  x_{t_k} = alpha(t_k) (x + sqrt(s(t_k)^2 - s_min^2) z_k),  x = f(x_{t_k}, t_k)

  with s = sigma/alpha and z_k ~ N(0, I). The last grid point t_n only closes the grid (the result is f's
  clean estimate, so t_n = 0 by convention); n network calls. Stochastic (fresh noise at every step after the
  first), so it declares order 0.
* ``one_step``: a one-step generator (e.g. BOOT's student, Gu et al. 2023, arXiv 2306.05544): x0 = G(x_T, t_0)
  on a grid of exactly one step [t_0, t_1]; 1 network call. It is the first step of ``consistency`` and of
  DDIM to t = 0, kept as its own name so a checkpoint can say "sample me in one step".

This module is imported by the student checkpoint loader and by ``diffusekit distill`` / ``diffusekit sample``
when they need these names, so the registry holds them from then on.
"""

from __future__ import annotations

import torch

from ...core.denoiser import Denoiser
from ...samplers.registry import grid_steps, register_sampler
from .consistency import consistency_sample


class _BoundaryLevel(Denoiser):
    """The same denoiser carrying the boundary noise level ``s_min`` that ``consistency_sample`` reads."""

    def __init__(self, inner: Denoiser, s_min: float):
        super().__init__(inner.schedule)
        self.inner = inner
        self.s_min = float(s_min)

    def denoise(self, x, t, **cond):
        return self.inner.denoise(x, t, **cond)


def boundary_level(denoiser: Denoiser) -> float:
    """s_min of a consistency function: its own ``s_min`` when it has one (``ConsistencyDenoiser``), else
    s(t_min) of its schedule (the boundary ``ConsistencyDenoiser`` uses by default)."""
    s_min = getattr(denoiser, "s_min", None)
    if s_min is not None:
        return float(s_min)
    sched = denoiser.schedule
    return float(sched.sigma_tilde(torch.tensor(sched.t_min, dtype=torch.float64)))


@register_sampler("consistency", order=0, nfe_per_step=1, stochastic=True, students_only=True)
def sample_consistency(denoiser: Denoiser, x: torch.Tensor, ts, *, generator=None, cond: dict | None = None,
                       s_min: float | None = None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, arXiv 2303.01469, Alg. 1) on ``ts`` (n + 1 points,
    n >= 1 evaluations at ts[0..n-1]; ts[n] closes the grid). x: (B, ...) at ts[0]. ``generator``: one
    generator or one per sample. ``s_min``: the boundary noise level (default: ``boundary_level(denoiser)``).
    Returns the data estimate, x's shape and dtype."""
    steps = grid_steps(denoiser, x, ts)
    times = torch.stack([t for _, t, _ in steps])
    level = boundary_level(denoiser) if s_min is None else float(s_min)
    return consistency_sample(_BoundaryLevel(denoiser, level), x, times, generator=generator, cond=cond)


def _one_step_nfe(ts) -> int:
    return 1


@register_sampler("one_step", order=0, nfe_per_step=1, stochastic=False, nfe=_one_step_nfe, students_only=True)
def sample_one_step(denoiser: Denoiser, x: torch.Tensor, ts, *, cond: dict | None = None) -> torch.Tensor:
    """One-step generation x0 = G(x, ts[0]) (a generator student, e.g. BOOT, Gu et al. 2023, arXiv 2306.05544).
    ``ts`` must be one step [t_0, t_1] (t_1 = 0 by convention); 1 network call. x: (B, ...) at t_0."""
    steps = grid_steps(denoiser, x, ts)
    if len(steps) != 1:
        raise ValueError(f"the one_step sampler takes a grid of one step (2 points); got {len(steps)} steps")
    return denoiser(x, steps[0][1], **(cond or {})).to(x.dtype)


STUDENT_SAMPLERS = ("consistency", "one_step")

__all__ = ["STUDENT_SAMPLERS", "boundary_level", "sample_consistency", "sample_one_step"]
