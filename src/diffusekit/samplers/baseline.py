"""Baseline samplers as pure functions over (denoiser, x, ts).

All share one signature: ``sample_<name>(denoiser, x, ts, *, cond=None, generator=None, callback=None, ...)``
with ``ts`` a strictly decreasing grid of schedule times (see ``diffusekit.core.grids``). Each step
s -> t (s > t) calls the denoiser exactly once. Coefficients are computed in float64 and applied in x's
dtype; nothing here disables gradients, so callers may differentiate through a sampler.

``callback``, if given, receives a dict ``{"i", "t", "t_next", "x", "x0_hat"}`` after each step.
"""

from __future__ import annotations

import torch

from ..core.denoiser import Denoiser
from ..core.noise import GeneratorArg, randn_like
from .registry import grid_steps, register_sampler


def _coef(schedule, t):
    """alpha_t, sigma_t as python-float-like 0-d float64 tensors."""
    return schedule.alpha(t), schedule.sigma(t)


def ddim_step_coefficients(schedule, s, t, eta: float) -> tuple[torch.Tensor, ...]:
    """(alpha_s, sigma_s, alpha_t, b, c) of the DDIM(eta) step s -> t (0-d float64 tensors), with
    c = eta sigma_t sqrt(1 - exp(2 (lam_s - lam_t))) (0 for eta = 0 or sigma_t = 0) and b = sqrt(sigma_t^2 - c^2):
    x_t = alpha_t x0_hat + b (x_s - alpha_s x0_hat)/sigma_s + c z (arXiv 2010.02502, eq. 12)."""
    a_s, s_s = _coef(schedule, s)
    a_t, s_t = _coef(schedule, t)
    c = eta * s_t * torch.sqrt(torch.clamp(-torch.expm1(2 * (schedule.lam(s) - schedule.lam(t))), min=0)) \
        if eta > 0 and s_t > 0 else torch.zeros((), dtype=torch.float64)
    return a_s, s_s, a_t, torch.sqrt(s_t**2 - c**2), c


@register_sampler("ddim", order=1, nfe_per_step=1, stochastic=False)
def sample_ddim(denoiser: Denoiser, x: torch.Tensor, ts, *, eta: float = 0.0, cond: dict | None = None,
                generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, arXiv 2010.02502, eq. 12), written for any schedule:

        x_t = alpha_t x0_hat + sqrt(sigma_t^2 - c^2) eps_hat + c z,
        c   = eta * sigma_t * sqrt(1 - exp(2 (lam_s - lam_t))),

    with eps_hat = (x_s - alpha_s x0_hat)/sigma_s. eta = 0 is the deterministic DDIM (first-order in
    lam, identical to DPM-Solver-1); eta = 1 samples the DDPM posterior. Order 1, 1 NFE per step.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    cond = cond or {}
    sched = denoiser.schedule
    for i, s, t in grid_steps(denoiser, x, ts):
        x0 = denoiser(x, s, **cond)
        a_s, s_s, a_t, b, c = ddim_step_coefficients(sched, s, t, eta)
        eps = (x - a_s * x0) / s_s
        x = a_t * x0 + b * eps
        if c > 0:
            x = x + c * randn_like(x, generator)
        x = x.to(x0.dtype)
        if callback is not None:
            callback({"i": i, "t": s, "t_next": t, "x": x, "x0_hat": x0})
    return x


@register_sampler("ddpm", order=0, nfe_per_step=1, stochastic=True)
def sample_ddpm(denoiser: Denoiser, x: torch.Tensor, ts, *, cond: dict | None = None,
                generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, arXiv 2006.11239, Alg. 2) for any schedule and grid.

    Each step draws from the Gaussian posterior q(x_t | x_s, x0 = x0_hat), with alpha_{s|t} = alpha_s/alpha_t,
    sigma_{s|t}^2 = sigma_s^2 - alpha_{s|t}^2 sigma_t^2:

        mean = alpha_{s|t} sigma_t^2 / sigma_s^2 * x_s + alpha_t sigma_{s|t}^2 / sigma_s^2 * x0_hat
        var  = sigma_{s|t}^2 sigma_t^2 / sigma_s^2          (diffusers' "fixed_small")

    No noise is added on a step to t = 0. 1 NFE per step.
    """
    cond = cond or {}
    sched = denoiser.schedule
    for i, s, t in grid_steps(denoiser, x, ts):
        x0 = denoiser(x, s, **cond)
        a_s, s_s = _coef(sched, s)
        a_t, s_t = _coef(sched, t)
        a_ts = a_s / a_t
        var_ts = s_s**2 - a_ts**2 * s_t**2
        mean = (a_ts * s_t**2 / s_s**2) * x + (a_t * var_ts / s_s**2) * x0
        std = torch.sqrt(torch.clamp(var_ts * s_t**2 / s_s**2, min=0))
        x = mean + std * randn_like(x, generator) if std > 0 else mean
        if callback is not None:
            callback({"i": i, "t": s, "t_next": t, "x": x, "x0_hat": x0})
    return x


@register_sampler("euler", order=1, nfe_per_step=1, stochastic=False)
def sample_euler(denoiser: Denoiser, x: torch.Tensor, ts, *, cond: dict | None = None,
                 generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE in schedule time (Song et al. 2021, arXiv 2011.13456):

        dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat,   x_{t} = x_s + (t - s) dx/dt|_s.

    For VE this is k-diffusion's Euler (dx/dsigma = (x - x0_hat)/sigma); for flow it is flow-matching
    Euler x_t = x_s + (t - s) v. Order 1, 1 NFE per step. ``generator`` is unused (deterministic).
    """
    cond = cond or {}
    sched = denoiser.schedule
    for i, s, t in grid_steps(denoiser, x, ts):
        x0 = denoiser(x, s, **cond)
        a_s, s_s = _coef(sched, s)
        eps = (x - a_s * x0) / s_s
        x = x + (t - s) * (sched.d_alpha(s) * x0 + sched.d_sigma(s) * eps)
        x = x.to(x0.dtype)
        if callback is not None:
            callback({"i": i, "t": s, "t_next": t, "x": x, "x0_hat": x0})
    return x


@register_sampler("euler_maruyama", order=0, nfe_per_step=1, stochastic=True)
def sample_euler_maruyama(denoiser: Denoiser, x: torch.Tensor, ts, *, cond: dict | None = None,
                          generator: GeneratorArg = None, callback=None, final_denoise: bool = True) -> torch.Tensor:
    """Euler–Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6, Anderson 1982):

        dx = [f(t) x - g(t)^2 score] dt + g(t) dW_bar,   f = d log alpha/dt,   g^2 = -2 sigma^2 dlam/dt,
        score = -(x - alpha x0_hat)/sigma^2,

    stepping x_t = x_s - (s - t)(f x_s - g^2 score) + g sqrt(s - t) z. With ``final_denoise`` (default)
    the last step returns x0_hat instead (removing the last step's noise, as is standard). At alpha_s = 0
    (a flow or zero-terminal-SNR schedule at t = 1) f and g^2 are infinite: that step is the exact solution
    of the reverse SDE with x0_hat held fixed, the DDPM posterior, which there is x_t = alpha_t x0_hat +
    sigma_t z. 1 NFE per step.
    """
    cond = cond or {}
    sched = denoiser.schedule
    steps = grid_steps(denoiser, x, ts)
    for i, s, t in steps:
        x0 = denoiser(x, s, **cond)
        if final_denoise and i == len(steps) - 1:
            x = x0
        elif sched.alpha(s) == 0:
            a_t, s_t = _coef(sched, t)
            x = a_t * x0 + s_t * randn_like(x, generator) if s_t > 0 else a_t * x0
            x = x.to(x0.dtype)
        else:
            a_s, s_s = _coef(sched, s)
            f = sched.d_log_alpha(s)
            g2 = -2 * s_s**2 * sched.d_lam(s)
            score = -(x - a_s * x0) / s_s**2
            dt = s - t
            x = x - dt * (f * x - g2 * score) + torch.sqrt(g2 * dt) * randn_like(x, generator)
            x = x.to(x0.dtype)
        if callback is not None:
            callback({"i": i, "t": s, "t_next": t, "x": x, "x0_hat": x0})
    return x


def sample(name: str, denoiser: Denoiser, x: torch.Tensor, ts, **options) -> torch.Tensor:
    """Run a registered sampler by name (see ``diffusekit.samplers.SAMPLERS``)."""
    from .registry import get_sampler

    return get_sampler(name).fn(denoiser, x, ts, **options)


__all__ = ["sample", "sample_ddim", "sample_ddpm", "sample_euler", "sample_euler_maruyama"]
