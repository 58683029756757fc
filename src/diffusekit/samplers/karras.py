"""Samplers in the VE variable of Karras et al. (2022): Euler, Euler ancestral and Heun with churn.

Any schedule x_t = alpha_t x0 + sigma_t eps is a VE process in the scaled variable

    x~ = x / alpha_t,   sigma~ = sigma_t / alpha_t = exp(-lam_t)   (``schedule.sigma_tilde``),

because x~ = x0 + sigma~ eps. Its probability-flow ODE is the one of Karras et al. (arXiv 2206.00364,
eq. 4 with s = 1, sigma(t) = t):

    dx~/dsigma~ = (x~ - D(x~; sigma~)) / sigma~,   D(x~; sigma~) = x0_hat(alpha_t x~, t).

The samplers below integrate in (x~, sigma~) and hand back x in the schedule's own variable, so they run
unchanged on VP, VE and flow schedules and on any decreasing grid of schedule times ``ts``; a grid that
ends at t = 0 (sigma~ = 0) ends with a step to clean data. This is the variable that k-diffusion and
diffusers' Euler/Heun/Euler-ancestral schedulers step in; Euler in it is DDIM, and differs from our
``sample_euler`` (Euler in schedule time t).

Churn (Karras et al. 2022, Alg. 2): at noise level sigma~_i, with gamma = min(S_churn/N, sqrt(2) - 1)
if S_min <= sigma~_i <= S_max else 0 (N = number of steps), the sample is first pushed up to
sigma^ = (1 + gamma) sigma~_i by fresh noise, x^ = x~ + sqrt(sigma^2 - sigma~_i^2) S_noise z, and the
ODE step then starts from (x^, sigma^). The network is evaluated at the perturbed point, at the schedule
time t^ = t(sigma^) (which lies above t_max when the first step churns; schedules extrapolate there).

A grid that starts at alpha = 0 (a flow schedule at t = 1: sigma~ = inf, x~ undefined) starts with the
limit of the method's step in the data-prediction variables y = x/sigma, u = alpha/sigma = 1/sigma~
(``exponential``), where dy/du = x0_hat is finite: Euler's first step is x~_t = x0_hat + sigma~_t x_s/sigma_s
(exact: it is the limit of x~_s + (sigma~_t - sigma~_s) eps_hat), Heun's is the trapezoidal rule in u (same
NFE), the ancestral step's sigma_up/sigma_down take their limits (sigma_up = min(eta, 1) sigma~_t). No churn
is applied at sigma~ = inf.

All noise comes from ``randn_like(x, generator)``, so a list of per-sample generators makes every sample
independent of the batch it is drawn in. Coefficients are float64; nothing disables gradients.
``callback``, if given, receives ``{"i", "t", "t_next", "x", "x0_hat"}`` after each step (x in the
schedule's variable).
"""

from __future__ import annotations

import math

import torch

from ..core.denoiser import Denoiser
from ..core.noise import GeneratorArg, randn_like
from .exponential import points, rk_step_from_noise
from .registry import grid_steps, nfe_per_step_rule, register_sampler


def _denoise_scaled(denoiser: Denoiser, x_tilde: torch.Tensor, t, cond: dict) -> torch.Tensor:
    """D(x~; sigma~(t)) = x0_hat(alpha_t x~, t)."""
    return denoiser(denoiser.schedule.alpha(t) * x_tilde, t, **cond)


def _gamma(sigma: torch.Tensor, num_steps: int, S_churn: float, S_min: float, S_max: float) -> float:
    """EDM's churn factor gamma_i (Alg. 2, line 4)."""
    if S_churn > 0 and S_min <= float(sigma) <= S_max:
        return min(S_churn / num_steps, math.sqrt(2.0) - 1.0)
    return 0.0


def _check_churn(S_churn: float, S_min: float, S_max: float, S_noise: float) -> None:
    if S_churn < 0:
        raise ValueError(f"S_churn must be >= 0; got {S_churn}")
    if S_min < 0 or S_max < S_min:
        raise ValueError(f"need 0 <= S_min <= S_max; got S_min={S_min}, S_max={S_max}")
    if S_noise < 0:
        raise ValueError(f"S_noise must be >= 0; got {S_noise}")


def _churn(denoiser: Denoiser, x_tilde: torch.Tensor, t, sigma, gamma: float, S_noise: float,
           generator: GeneratorArg):
    """Raise the noise level from sigma~ = sigma to sigma^ = (1 + gamma) sigma: returns (x^, t^, sigma^)."""
    if gamma <= 0:
        return x_tilde, t, sigma
    sigma_hat = sigma * (1.0 + gamma)
    t_hat = denoiser.schedule.t_of_sigma_tilde(sigma_hat)
    x_hat = x_tilde + torch.sqrt(sigma_hat**2 - sigma**2) * S_noise * randn_like(x_tilde, generator)
    return x_hat, t_hat, sigma_hat


def _from_noise(denoiser: Denoiser, x: torch.Tensor, i: int, s, t, cond: dict, method: str, callback):
    """The first step from alpha_s = 0 by the u-frame ``method`` ("euler"/"heun"): returns x~_t (in x0_hat's
    dtype) and reports the step to ``callback`` like any other step."""
    sched = denoiser.schedule
    x0 = denoiser(x, s, **cond)
    p_s, p_t = points(sched, torch.stack([s, t]).cpu())
    if p_t.sigma == 0:
        x_tilde = x0
    else:
        x_tilde = (rk_step_from_noise(denoiser, x, x0, p_s, p_t, method, cond) / sched.alpha(t)).to(x0.dtype)
    if callback is not None:
        callback({"i": i, "t": s, "t_next": t, "x": sched.alpha(t) * x_tilde, "x0_hat": x0})
    return x_tilde


@register_sampler("euler_sigma", order=1, nfe_per_step=1, stochastic=False)
def sample_euler_sigma(denoiser: Denoiser, x: torch.Tensor, ts, *, S_churn: float = 0.0, S_min: float = 0.0,
                       S_max: float = float("inf"), S_noise: float = 1.0, diffusers_churn: bool = False,
                       cond: dict | None = None, generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """Euler's method in (x~, sigma~) with optional churn: Karras et al. 2022 (arXiv 2206.00364), Alg. 2
    without the second-order correction (k-diffusion's ``sample_euler``, diffusers' EulerDiscreteScheduler):

        x^      = x~_i + sqrt(sigma^2 - sigma_i^2) S_noise z,     sigma^ = (1 + gamma_i) sigma_i
        d       = (x^ - D(x^; sigma^)) / sigma^
        x~_{i+1} = x^ + (sigma_{i+1} - sigma^) d

    With S_churn = 0 (default) this is deterministic, first order, and step for step the same as DDIM
    (eta = 0) on the same grid, since DDIM reads x~_t = x0_hat + sigma~_t eps_hat = x~_s + (sigma~_t -
    sigma~_s) eps_hat exactly. Our ``sample_euler`` (Euler in t) is a different method.
    1 NFE per step.

    ``diffusers_churn=True`` reproduces diffusers' EulerDiscreteScheduler, whose ``step`` receives a model
    output already evaluated at the unperturbed (x~_i, sigma_i): it adds the churn noise afterwards and
    reuses that eps_hat, x~_{i+1} = x^ + (sigma_{i+1} - sigma^) eps_hat(x~_i, sigma_i). This only
    approximates Alg. 2 (it is not the EDM method) and is here for agreement with diffusers.

    Shapes: x (B, ...) in the schedule's variable at ts[0]; returns x at ts[-1] with x's shape and dtype.
    """
    _check_churn(S_churn, S_min, S_max, S_noise)
    cond = cond or {}
    sched = denoiser.schedule
    steps = grid_steps(denoiser, x, ts)
    x_tilde = x / sched.alpha(steps[0][1])
    for i, s, t in steps:
        if sched.alpha(s) == 0:
            x_tilde = _from_noise(denoiser, x, i, s, t, cond, "euler", callback)
            continue
        sigma, sigma_next = sched.sigma_tilde(s), sched.sigma_tilde(t)
        gamma = _gamma(sigma, len(steps), S_churn, S_min, S_max)
        if diffusers_churn:
            x0 = _denoise_scaled(denoiser, x_tilde, s, cond)
            d = (x_tilde - x0) / sigma
            x_hat, _, sigma_hat = _churn(denoiser, x_tilde, s, sigma, gamma, S_noise, generator)
        else:
            x_hat, t_hat, sigma_hat = _churn(denoiser, x_tilde, s, sigma, gamma, S_noise, generator)
            x0 = _denoise_scaled(denoiser, x_hat, t_hat, cond)
            d = (x_hat - x0) / sigma_hat
        x_tilde = (x_hat + (sigma_next - sigma_hat) * d).to(x0.dtype)
        if callback is not None:
            callback({"i": i, "t": s, "t_next": t, "x": sched.alpha(t) * x_tilde, "x0_hat": x0})
    return (sched.alpha(steps[-1][2]) * x_tilde).to(x.dtype)


@register_sampler("euler_ancestral", order=0, nfe_per_step=1, stochastic=True)
def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, ts, *, eta: float = 1.0, s_noise: float = 1.0,
                           cond: dict | None = None, generator: GeneratorArg = None,
                           callback=None) -> torch.Tensor:
    """Euler ancestral sampling in (x~, sigma~) (k-diffusion's ``sample_euler_ancestral``; diffusers'
    EulerAncestralDiscreteScheduler is eta = 1). A step sigma_s -> sigma_t splits the target variance
    sigma_t^2 into a deterministic part sigma_down^2 and fresh noise sigma_up^2, taken from the DDPM
    posterior (Ho et al. 2020, arXiv 2006.11239) written in the VE variable:

        sigma_up   = min(sigma_t, eta sqrt(sigma_t^2 (sigma_s^2 - sigma_t^2) / sigma_s^2))
        sigma_down = sqrt(sigma_t^2 - sigma_up^2)
        x~_t       = x~_s + (sigma_down - sigma_s) (x~_s - D(x~_s; sigma_s)) / sigma_s + s_noise sigma_up z

    eta = 0 is the deterministic ``sample_euler_sigma``. A step to sigma_t = 0 returns D (no noise).
    Stochastic (no ODE order); 1 NFE per step.

    Shapes: x (B, ...) in the schedule's variable at ts[0]; returns x at ts[-1] with x's shape and dtype.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    if s_noise < 0:
        raise ValueError(f"s_noise must be >= 0; got {s_noise}")
    cond = cond or {}
    sched = denoiser.schedule
    steps = grid_steps(denoiser, x, ts)
    x_tilde = x / sched.alpha(steps[0][1])
    for i, s, t in steps:
        sigma, sigma_next = sched.sigma_tilde(s), sched.sigma_tilde(t)
        if torch.isinf(sigma):  # alpha_s = 0: the limits var_up -> sigma_next^2, x~ -> x0 + sigma_down eps_hat
            x0 = denoiser(x, s, **cond)
            var_up = sigma_next**2
        else:
            x0 = _denoise_scaled(denoiser, x_tilde, s, cond)
            var_up = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
        sigma_up = torch.clamp(eta * torch.sqrt(torch.clamp(var_up, min=0)), max=sigma_next)
        sigma_down = torch.sqrt(sigma_next**2 - sigma_up**2)
        if torch.isinf(sigma):
            x_tilde = x0 + sigma_down * (x / sched.sigma(s))
        else:
            x_tilde = x_tilde + (sigma_down - sigma) * (x_tilde - x0) / sigma
        if sigma_up > 0:
            x_tilde = x_tilde + s_noise * sigma_up * randn_like(x_tilde, generator)
        x_tilde = x_tilde.to(x0.dtype)
        if callback is not None:
            callback({"i": i, "t": s, "t_next": t, "x": sched.alpha(t) * x_tilde, "x0_hat": x0})
    return (sched.alpha(steps[-1][2]) * x_tilde).to(x.dtype)


@register_sampler("heun", order=2, nfe_per_step=2, stochastic=False, nfe=nfe_per_step_rule(2))
def sample_heun(denoiser: Denoiser, x: torch.Tensor, ts, *, S_churn: float = 0.0, S_min: float = 0.0,
                S_max: float = float("inf"), S_noise: float = 1.0, cond: dict | None = None,
                generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """Heun's method with stochastic churn: Karras et al. 2022 (arXiv 2206.00364), Algorithm 2, in
    (x~, sigma~) for any schedule:

        gamma_i  = min(S_churn/N, sqrt(2) - 1) if S_min <= sigma_i <= S_max else 0
        sigma^   = (1 + gamma_i) sigma_i,   x^ = x~_i + sqrt(sigma^2 - sigma_i^2) S_noise z_i
        d        = (x^ - D(x^; sigma^)) / sigma^
        x~_{i+1} = x^ + (sigma_{i+1} - sigma^) d                                  (Euler predictor)
        if sigma_{i+1} > 0:
            d'       = (x~_{i+1} - D(x~_{i+1}; sigma_{i+1})) / sigma_{i+1}
            x~_{i+1} = x^ + (sigma_{i+1} - sigma^) (d + d') / 2                    (trapezoidal corrector)

    S_churn = 0 (default) is the deterministic second-order Heun sampler (EDM Alg. 1; diffusers'
    HeunDiscreteScheduler, k-diffusion's ``sample_heun``). EDM's ImageNet-64 setting is S_churn = 40,
    S_min = 0.05, S_max = 50, S_noise = 1.003. EDM's round_sigma (snapping sigma to a discrete model's
    levels) is left to the grid. Order 2; 2 NFE per step, except a final step to sigma~ = 0, which is an
    Euler step (1 NFE): a grid of n steps ending at t = 0 costs 2n - 1 NFE.

    Shapes: x (B, ...) in the schedule's variable at ts[0]; returns x at ts[-1] with x's shape and dtype.
    """
    _check_churn(S_churn, S_min, S_max, S_noise)
    cond = cond or {}
    sched = denoiser.schedule
    steps = grid_steps(denoiser, x, ts)
    x_tilde = x / sched.alpha(steps[0][1])
    for i, s, t in steps:
        if sched.alpha(s) == 0:
            x_tilde = _from_noise(denoiser, x, i, s, t, cond, "heun", callback)
            continue
        sigma, sigma_next = sched.sigma_tilde(s), sched.sigma_tilde(t)
        gamma = _gamma(sigma, len(steps), S_churn, S_min, S_max)
        x_hat, t_hat, sigma_hat = _churn(denoiser, x_tilde, s, sigma, gamma, S_noise, generator)
        x0 = _denoise_scaled(denoiser, x_hat, t_hat, cond)
        d = (x_hat - x0) / sigma_hat
        x_tilde = x_hat + (sigma_next - sigma_hat) * d
        if sigma_next > 0:
            x0_next = _denoise_scaled(denoiser, x_tilde.to(x0.dtype), t, cond)
            d_next = (x_tilde - x0_next) / sigma_next
            x_tilde = x_hat + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)
        x_tilde = x_tilde.to(x0.dtype)
        if callback is not None:
            callback({"i": i, "t": s, "t_next": t, "x": sched.alpha(t) * x_tilde, "x0_hat": x0})
    return (sched.alpha(steps[-1][2]) * x_tilde).to(x.dtype)


__all__ = ["sample_euler_ancestral", "sample_euler_sigma", "sample_heun"]
