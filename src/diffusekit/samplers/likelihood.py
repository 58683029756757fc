"""Probability-flow ODE: accurate reference solves and exact log-likelihoods.

For x_t = alpha_t x0 + sigma_t eps, the probability-flow ODE (Song et al. 2021, arXiv 2011.13456, eq. 13)
written with the denoiser x0_hat = D(x, t) and eps_hat = (x - alpha x0_hat)/sigma is

    dx/dt = f(x, t) = alpha' x0_hat + sigma' eps_hat = (sigma'/sigma) x + (alpha' - sigma' alpha/sigma) x0_hat,

and along its trajectories the density obeys the instantaneous change of variables (Chen et al. 2018,
arXiv 1806.07366, Thm. 1; used for likelihoods by Grathwohl et al. 2019, FFJORD, arXiv 1810.01367, and
Song et al. 2021, App. D.2):

    d log p_t(x(t)) / dt = -div f = -(D sigma'/sigma + (alpha' - sigma' alpha/sigma) div_x x0_hat),

with D the per-sample dimension. Integrating data -> noise from t_min to t_max gives

    log p_{t_min}(x) = log p_{t_max}(x(t_max)) + int_{t_min}^{t_max} div f dt,

and p_{t_max} is replaced by the prior N(0, (alpha_T^2 + sigma_T^2) I) (``schedule.prior_std()``). Only the
divergence of the denoiser is needed: exactly by autograd (D backward passes; low dimensions) or by
Hutchinson's estimator E_z[z^T (d x0_hat/dx) z] (Hutchinson 1989; FFJORD), one vector-Jacobian product
per probe, with Rademacher or Gaussian probes drawn per sample and held fixed along the trajectory.
The trajectory itself does not depend on the probes, so the log p estimate is unbiased up to the
solver's discretisation error.

``solve_pf_ode`` integrates the same ODE with scipy's adaptive DOP853 in (x~ = x/alpha, log sigma~) to
tight tolerances: a sampler-independent reference for convergence tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core._tensor import as_time
from ..core.denoiser import Denoiser
from ..core.grids import grid_logsnr
from ..core.noise import GeneratorArg, randn

SOLVERS = ("rk4", "heun", "scipy")
DIVERGENCES = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
_EXACT_MAX_DIM = 32  # "auto" uses the exact divergence up to this many dimensions per sample


# ------------------------------------------------------------------------------------------------
# Drift and divergence
# ------------------------------------------------------------------------------------------------
def _drift_coefficients(schedule, t):
    """(a, b) with f = a x + b x0_hat: a = sigma'/sigma, b = alpha' - sigma' alpha/sigma (float64)."""
    t = as_time(t)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    a = schedule.d_sigma(t) / sigma
    return a, schedule.d_alpha(t) - a * alpha


def pf_ode_drift(denoiser: Denoiser, x: torch.Tensor, t, **cond) -> torch.Tensor:
    """f(x, t) = dx/dt of the probability-flow ODE in schedule time (1 NFE). t > 0 (needs sigma > 0)."""
    a, b = _drift_coefficients(denoiser.schedule, t)
    return (a * x + b * denoiser(x, t, **cond)).to(x.dtype)


def divergence_exact(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    """(fn(x), div fn(x)) with the exact divergence sum_i d fn_i / d x_i per sample, shape (B,).

    ``fn`` must map (B, ...) -> (B, ...) sample-wise; costs one forward and D backward passes."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        flat = out.reshape(out.shape[0], -1)
        div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for i in range(flat.shape[1]):
            (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1])
            div = div + grad.reshape(x.shape[0], -1)[:, i].to(torch.float64)
    return out.detach(), div


def divergence_hutchinson(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, probes: torch.Tensor):
    """(fn(x), estimate of div fn(x)) by Hutchinson's estimator, averaged over probes z of shape
    (M, B, ...) with E[z z^T] = I: div ~ (1/M) sum_m z_m^T (d fn/dx) z_m. One backward pass per probe."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for m in range(probes.shape[0]):
            z = probes[m].to(out.dtype)
            (vjp,) = torch.autograd.grad((out * z).sum(), x, retain_graph=m + 1 < probes.shape[0])
            div = div + (vjp * z).reshape(x.shape[0], -1).sum(1).to(torch.float64)
    return out.detach(), div / probes.shape[0]


def draw_probes(x: torch.Tensor, num_probes: int = 1, kind: str = "rademacher",
                generator: GeneratorArg = None) -> torch.Tensor:
    """Hutchinson probes of shape (num_probes, B, ...): Rademacher (+-1) or standard Gaussian, drawn per
    sample when ``generator`` is a list (so a sample's estimate does not depend on its batch)."""
    if kind not in PROBES:
        raise ValueError(f"unknown probe kind {kind!r}; allowed: {', '.join(PROBES)}")
    if int(num_probes) != num_probes or num_probes < 1:
        raise ValueError(f"num_probes must be a positive integer; got {num_probes}")
    shape = (x.shape[0], int(num_probes), *x.shape[1:])
    z = randn(shape, generator, dtype=x.dtype, device=x.device).transpose(0, 1)  # (M, B, ...)
    return torch.sign(z) if kind == "rademacher" else z


# ------------------------------------------------------------------------------------------------
# Log-likelihood
# ------------------------------------------------------------------------------------------------
@dataclass
class PFLikelihood:
    """Result of ``pf_ode_log_likelihood``; all per-sample tensors have shape (B,) and are float64 nats."""

    log_prob: torch.Tensor  # log p_{t_min}(x) = prior_log_prob + delta_log_prob
    prior_log_prob: torch.Tensor  # log N(x_T; 0, prior_std^2 I)
    delta_log_prob: torch.Tensor  # int_{t_min}^{t_max} div f dt
    x_T: torch.Tensor  # the encoded point x(t_max)
    nfe: int  # denoiser evaluations


def _gaussian_log_prob(x: torch.Tensor, std: float) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    d = flat.shape[1]
    return -0.5 * (flat**2).sum(1) / std**2 - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)


def pf_ode_log_likelihood(denoiser: Denoiser, x: torch.Tensor, *, t_min: float | None = None,
                          t_max: float | None = None, steps: int = 100, ts=None, solver: str = "rk4",
                          divergence: str = "auto", probe: str = "rademacher", num_probes: int = 1,
                          prior_std: float | None = None, prior_log_prob: Callable | None = None,
                          rtol: float = 1e-6, atol: float = 1e-6, cond: dict | None = None,
                          generator: GeneratorArg = None) -> PFLikelihood:
    """Log-likelihood of data ``x`` under the probability-flow ODE of ``denoiser`` (Song et al. 2021,
    arXiv 2011.13456, App. D.2; FFJORD, Grathwohl et al. 2019, arXiv 1810.01367):

        log p_{t_min}(x) = log p_T(x(T)) + int_{t_min}^{T} div f(x(t), t) dt    (module docstring)

    Args:
        x: (B, ...) data, taken as the state at t_min (default ``schedule.t_min``; it must have sigma > 0).
        t_max: end of the integration (default ``schedule.t_max``).
        solver: "rk4" (classical 4th order, 4 NFE/step) or "heun" (2 NFE/step) on the time grid ``ts``
            (increasing from t_min to t_max; default ``steps`` points uniform in log-SNR), or "scipy"
            (adaptive RK45 in t with ``rtol``/``atol``).
        divergence: "exact" (autograd, D backward passes per NFE), "hutchinson" (``num_probes`` probes of
            kind ``probe``, fixed along the path, drawn with ``generator``), or "auto" (exact for
            D <= 32 per sample, else Hutchinson).
        prior_std: std of the Gaussian prior at t_max (default ``schedule.prior_std()``, i.e. unit-scale
            data); ``prior_log_prob`` (a function x_T -> (B,)) replaces the Gaussian entirely.

    Returns a ``PFLikelihood`` (per-sample log p in nats, its prior and divergence parts, x(T), NFE).
    The ODE state is detached between steps: the result is not differentiable with respect to x.
    See ``bits_per_dim`` for bits/dim.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; allowed: {', '.join(SOLVERS)}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; allowed: {', '.join(DIVERGENCES)}")
    cond = cond or {}
    sched = denoiser.schedule
    t_min = sched.t_min if t_min is None else float(t_min)
    t_max = sched.t_max if t_max is None else float(t_max)
    if not 0 < t_min < t_max <= sched.t_max * (1 + 1e-12) or float(sched.sigma(t_min)) <= 0:
        raise ValueError(f"need 0 < t_min < t_max <= {sched.t_max} with sigma(t_min) > 0; "
                         f"got t_min={t_min}, t_max={t_max}")
    dims = x[0].numel()
    if divergence == "auto":
        divergence = "exact" if dims <= _EXACT_MAX_DIM else "hutchinson"
    probes = draw_probes(x, num_probes, probe, generator) if divergence == "hutchinson" else None
    nfe = 0

    def rhs(x_, t_):
        """(f(x, t), div f(x, t)) with one denoiser evaluation."""
        nonlocal nfe
        nfe += 1
        a, b = _drift_coefficients(sched, t_)
        fn = lambda y: denoiser(y, t_, **cond)  # noqa: E731
        x0, div_x0 = divergence_exact(fn, x_) if probes is None else divergence_hutchinson(fn, x_, probes)
        return (a * x_ + b * x0).to(x_.dtype), dims * a + b * div_x0

    delta = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    state = x.detach()
    if solver == "scipy":
        state, delta = _solve_likelihood_scipy(rhs, state, t_min, t_max, rtol, atol)
    else:
        if ts is None:
            ts = grid_logsnr(sched, steps, t_start=t_max, t_end=t_min).flip(0)
        ts = as_time(ts)
        if ts.ndim != 1 or ts.numel() < 2 or bool((ts[1:] <= ts[:-1]).any()):
            raise ValueError("ts must be a strictly increasing 1-D grid from t_min to t_max")
        for t0, t1 in zip(ts[:-1], ts[1:]):
            h = t1 - t0
            if solver == "rk4":
                k1, d1 = rhs(state, t0)
                k2, d2 = rhs(state + (h / 2) * k1, t0 + h / 2)
                k3, d3 = rhs(state + (h / 2) * k2, t0 + h / 2)
                k4, d4 = rhs(state + h * k3, t1)
                state = state + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
                delta = delta + (h / 6) * (d1 + 2 * d2 + 2 * d3 + d4)
            else:
                k1, d1 = rhs(state, t0)
                k2, d2 = rhs(state + h * k1, t1)
                state = state + (h / 2) * (k1 + k2)
                delta = delta + (h / 2) * (d1 + d2)
        t_max = float(ts[-1])
    if prior_log_prob is not None:
        prior = torch.as_tensor(prior_log_prob(state), dtype=torch.float64)
    else:
        std = sched.prior_std() if prior_std is None else float(prior_std)
        prior = _gaussian_log_prob(state, std)
    return PFLikelihood(log_prob=prior + delta, prior_log_prob=prior, delta_log_prob=delta, x_T=state, nfe=nfe)


def _solve_likelihood_scipy(rhs, x: torch.Tensor, t_min: float, t_max: float, rtol: float, atol: float):
    from scipy.integrate import solve_ivp

    batch, n = x.shape[0], x[0].numel()

    def f(t, y):
        xt = torch.from_numpy(y[: batch * n]).reshape(x.shape).to(x.dtype)
        dx, div = rhs(xt, torch.tensor(t, dtype=torch.float64))
        return np.concatenate([dx.detach().double().cpu().numpy().ravel(), div.cpu().numpy()])

    y0 = np.concatenate([x.double().cpu().numpy().ravel(), np.zeros(batch)])
    sol = solve_ivp(f, (t_min, t_max), y0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"scipy solve_ivp failed: {sol.message}")
    y = torch.from_numpy(sol.y[:, -1])
    return y[: batch * n].reshape(x.shape).to(x.dtype).to(x.device), y[batch * n:].to(x.device)


def bits_per_dim(log_prob: torch.Tensor, num_dims: int, *, bins: int | None = None,
                 data_range: float = 2.0) -> torch.Tensor:
    """Bits per dimension -log p / (D ln 2). With ``bins`` (e.g. 256 for 8-bit images scaled to a range of
    width ``data_range``, 2 for [-1, 1]), the continuous density is turned into a probability of the
    discrete bin under uniform dequantisation: log P = log p + D log(data_range/bins) (Theis et al. 2016,
    arXiv 1511.01844), i.e. +7 bits/dim for 8-bit data on [-1, 1]."""
    log_prob = torch.as_tensor(log_prob, dtype=torch.float64)
    if bins is not None:
        log_prob = log_prob + num_dims * math.log(data_range / bins)
    return -log_prob / (num_dims * math.log(2.0))


# ------------------------------------------------------------------------------------------------
# Reference solve
# ------------------------------------------------------------------------------------------------
def solve_pf_ode(denoiser: Denoiser, x: torch.Tensor, t_start, t_end, *, rtol: float = 1e-10,
                 atol: float = 1e-10, method: str = "DOP853", cond: dict | None = None) -> torch.Tensor:
    """Solve the probability-flow ODE from x at t_start to t_end (either direction) with scipy's adaptive
    ``method`` in the variables of Karras et al. 2022 (arXiv 2206.00364), x~ = x/alpha and u = log sigma~:

        dx~/du = x~ - D(alpha_t x~, t),   t = t(sigma~ = e^u),

    which is smooth at both ends for every schedule. Both ends need 0 < sigma~ < inf, except that t_start
    may be pure noise (alpha = 0, sigma~ = inf: a flow schedule at t = 1): the solve then starts in the
    data-prediction variables y = x/sigma, v = alpha/sigma, dy/dv = D(sigma_t y, t), from v = 0 up to
    v = min(1, 1/sigma~_end), and continues as above. A reference for solver convergence tests (float64;
    returns x at t_end with x's dtype). Not differentiable.
    """
    from scipy.integrate import solve_ivp

    cond = cond or {}
    sched = denoiser.schedule
    t_start, t_end = as_time(t_start), as_time(t_end)
    s0, s1 = float(sched.sigma_tilde(t_start)), float(sched.sigma_tilde(t_end))
    from_noise = s0 == math.inf and 0 < s1 < math.inf
    if not ((0 < s0 < math.inf or from_noise) and 0 < s1 < math.inf):
        raise ValueError(f"solve_pf_ode needs 0 < sigma~ < inf at both ends (or alpha = 0 at t_start); "
                         f"got {s0} and {s1}")

    def solve(f, span, y0):
        sol = solve_ivp(f, span, y0, method=method, rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"scipy solve_ivp failed: {sol.message}")
        return torch.from_numpy(sol.y[:, -1]).reshape(x.shape)

    def denoise(xt, t):
        return denoiser(xt.to(x.dtype), t, **cond).to(torch.float64)

    x64 = x.detach().to(torch.float64).cpu()
    if from_noise:  # dy/dv = D(sigma y, t(v)) from v = 0 (y = x/sigma, v = alpha/sigma = 1/sigma~)
        v1 = min(1.0, 1.0 / s1)

        def f_noise(v, y):
            y = torch.from_numpy(y).reshape(x.shape)
            t = sched.t_of_lam(torch.tensor(math.log(v) if v > 0 else -math.inf, dtype=torch.float64))
            return denoise(sched.sigma(t) * y, t).numpy().ravel()

        y = solve(f_noise, (0.0, v1), (x64 / sched.sigma(t_start)).numpy().ravel())
        t_start = sched.t_of_lam(torch.tensor(math.log(v1), dtype=torch.float64))
        s0 = float(sched.sigma_tilde(t_start))
        x64 = y * sched.sigma(t_start)

    def f(u, y):
        xt = torch.from_numpy(y).reshape(x.shape)
        t = sched.t_of_sigma_tilde(torch.tensor(math.exp(u), dtype=torch.float64))
        return (xt - denoise(sched.alpha(t) * xt, t)).numpy().ravel()

    out = x64 / sched.alpha(t_start)
    if s0 != s1:
        out = solve(f, (math.log(s0), math.log(s1)), out.numpy().ravel())
    return (out * sched.alpha(t_end)).to(dtype=x.dtype, device=x.device)


__all__ = ["PFLikelihood", "bits_per_dim", "divergence_exact", "divergence_hutchinson", "draw_probes",
           "pf_ode_drift", "pf_ode_log_likelihood", "solve_pf_ode"]
