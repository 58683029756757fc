"""Pseudo numerical methods: PLMS and PNDM (Liu, Ren, Lin & Zhao 2022, "Pseudo Numerical Methods for
Diffusion Models on Manifolds", arXiv 2202.09778).

A pseudo numerical method keeps the DDIM step as its *transfer function* (paper eq. 9)

    phi(x_s, e, s -> t) = alpha_t (x_s - sigma_s e) / alpha_s + sigma_t e
                        = alpha_t (x~_s + (sigma~_t - sigma~_s) e),     x~ = x/alpha, sigma~ = sigma/alpha,

and only changes the noise estimate e fed to it: a linear combination of eps_hat values (the *gradient
part*). In x~ this is exactly a classical method for dx~/dsigma~ = eps_hat(x~, sigma~), since phi is the
exact solution for constant eps_hat.

* PLMS (paper eq. 12): e = Adams-Bashforth combination of the last k eps_hat values (k = ``order``);
  AB4: e = (55 e_0 - 59 e_1 + 37 e_2 - 9 e_3)/24, newest first. 1 NFE per step once warmed up.
* Warm-up (``warmup``) for the first k - 1 steps, before enough history exists:
    - ``"ab"``: lower-order Adams-Bashforth (AB1 = DDIM, AB2, AB3, ...); 1 NFE per step.
    - ``"heun"``: the first step is a pseudo improved Euler step, e = (e(x_s, s) + e(phi(x_s, e_0), t))/2,
      then AB2, AB3, ...; n + 1 NFE for n steps. This is Stable Diffusion's "PLMS" and diffusers'
      PNDMScheduler(skip_prk_steps=True).
    - ``"prk"``: PNDM, the paper's pseudo Runge-Kutta step (eq. 13) for the first k - 1 steps (3 for
      AB4, as in the paper and diffusers' PNDMScheduler(skip_prk_steps=False)); 4 NFE per warm-up step,
      with the half step at the midpoint in schedule time t; n + 3 (k - 1) NFE for n steps.

Order (honest; measured in tests/test_plms.py on an exact GMM denoiser). Two things limit the global
order of PLMS-k below k:

* the grid: the fixed AB weights assume equal steps in sigma~. On grids uniform in sigma~ (a uniform
  grid of a VE schedule) they are exact; on other smooth grids (uniform in t for VP, Karras, logSNR,
  diffusers' spacings) the mismatch between the fixed weights and the actual step ratios leaves an
  O(h^3) local error, so the global order is min(k, 2). ``variable_step=True`` (our extension, not in
  the paper or diffusers) uses the Adams-Bashforth weights of the actual sigma~ nodes,
  c_j = (1/h) int_{sigma~_s}^{sigma~_t} l_j(sigma~) dsigma~ with l_j the Lagrange basis of the past
  nodes, which removes this limit on any smooth grid;
* the warm-up: each warm-up step's local error enters the global error once, so "ab" (a DDIM first
  step, local O(h^2)) caps the order at 2, "heun" at 3, and "prk" (RK4) keeps k <= 4. The warm-up
  error constant is small, so the cap shows only on fine grids.

The registered default (fixed weights, "ab" warm-up) therefore declares order 2. PNDM with fixed
weights reaches order k on sigma~-uniform grids; ``warmup="prk", variable_step=True`` reaches k on any
grid.

A warm-up evaluation is impossible at sigma_t = 0 (eps_hat is undefined on clean data); a warm-up step
that ends at t = 0 (grids of fewer than k steps) is taken as a plain AB step instead.

The transfer function divides by alpha_s, so a step from alpha_s = 0 (a flow schedule at t = 1) is taken
in the data-prediction variables y = x/sigma, u = alpha/sigma instead (``exponential.rk_step_from_noise``),
with the same NFE: Euler there (= DDIM) for an AB step, Heun for the "heun" warm-up, classical RK4 (midpoint
u_t/2) for the "prk" warm-up. That point's eps_hat never enters the AB history.

``callback``, if given, receives ``{"i", "t", "t_next", "x", "x0_hat"}`` after each step.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.denoiser import Denoiser
from ..core.grids import check_grid
from ..core.noise import GeneratorArg
from .exponential import first_order_to_data, points, rk_step_from_noise
from .registry import grid_shape, register_sampler

# The classical Adams-Bashforth weights for equal steps, newest value first.
AB_COEFFICIENTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}
WARMUPS = ("ab", "heun", "prk")


def ab_coefficients_variable(nodes, target) -> list[float]:
    """Adams-Bashforth weights for unequal steps: the eps values at ``nodes`` (newest first, nodes[0] is
    the current point) are extrapolated by their Lagrange polynomial and averaged over [nodes[0], target]:
    c_j = (1/h) int l_j, h = target - nodes[0]. Equal spacing gives ``AB_COEFFICIENTS``. float64."""
    nodes = np.asarray([float(v) for v in nodes], dtype=np.float64)
    h = float(target) - nodes[0]
    u = (nodes - nodes[0]) / h  # 0, -1, -2, ... for equal steps
    weights = []
    for j in range(len(u)):
        others = np.delete(u, j)
        basis = np.polynomial.polynomial.polyfromroots(others) / np.prod(u[j] - others)
        antiderivative = np.polynomial.polynomial.polyint(basis)
        weights.append(float(np.polynomial.polynomial.polyval(1.0, antiderivative)))
    return weights


def transfer(sched, x: torch.Tensor, eps: torch.Tensor, s, t) -> torch.Tensor:
    """The DDIM transfer function phi(x_s, eps, s -> t) = alpha_t (x_s/alpha_s + (sigma~_t - sigma~_s) eps)
    (PNDM eq. 9), in x's dtype; needs alpha_s > 0."""
    a_s, a_t = sched.alpha(s), sched.alpha(t)
    x_t = (a_t / a_s) * x + a_t * (sched.sigma_tilde(t) - sched.sigma_tilde(s)) * eps
    return x_t.to(x.dtype)


@register_sampler("plms", order=2, nfe_per_step=1, stochastic=False)
def sample_plms(denoiser: Denoiser, x: torch.Tensor, ts, *, order: int = 4, warmup: str = "ab",
                variable_step: bool = False, cond: dict | None = None, generator: GeneratorArg = None,
                callback=None) -> torch.Tensor:
    """PLMS-k / PNDM (Liu et al. 2022, arXiv 2202.09778, eqs. 9, 12, 13; Alg. 1-2): the DDIM transfer
    function with an Adams-Bashforth gradient part of order ``order`` (1..4) in eps_hat:

        e_i       = eps_hat(x_i, t_i) = (x_i - alpha x0_hat) / sigma
        e'        = sum_{j<k} c_j e_{i-j}         (AB_k weights, see module docstring)
        x_{i+1}   = phi(x_i, e', t_i -> t_{i+1})

    ``order=1`` is DDIM; ``order=4`` is the paper's PLMS. ``warmup`` picks the start-up ("ab", "heun" or
    "prk" = PNDM; see the module docstring for NFE). ``variable_step`` uses AB weights for the actual
    sigma~ steps (order k on any grid); the default fixed weights are the paper's and diffusers'.

    Order: min(k, grid limit, warm-up limit) with grid limit k on sigma~-uniform grids or with
    ``variable_step=True``, else 2, and warm-up limit 2 ("ab"), 3 ("heun"), 4 ("prk"); the defaults
    give 2 (declared). NFE: 1 per step with ``warmup="ab"``; n + 1 with "heun"; n + 3 (k - 1) with
    "prk". ``generator`` is unused (deterministic).

    Shapes: x (B, ...) at ts[0]; returns x at ts[-1] with x's shape and dtype.
    """
    if order not in AB_COEFFICIENTS:
        raise ValueError(f"order must be 1, 2, 3 or 4; got {order!r}")
    if warmup not in WARMUPS:
        raise ValueError(f"unknown warmup {warmup!r}; allowed: {', '.join(WARMUPS)}")
    cond = cond or {}
    sched = denoiser.schedule
    ts = check_grid(ts, sched).to(x.device)

    def eps_at(x_, t_):
        x0_ = denoiser(x_, t_, **cond)
        return (x_ - sched.alpha(t_) * x0_) / sched.sigma(t_), x0_

    history: list[torch.Tensor] = []  # eps_hat at the grid points, oldest first
    nodes: list[torch.Tensor] = []  # their sigma~
    for i in range(len(ts) - 1):
        s, t = ts[i], ts[i + 1]
        if sched.alpha(s) == 0:  # pure noise: only ts[0] can be there
            x0 = denoiser(x, s, **cond)
            p_s, p_t = points(sched, ts[i:i + 2])
            if p_t.sigma == 0:
                x = first_order_to_data(x0, p_t).to(x.dtype)
            else:
                method = "euler" if order == 1 else {"ab": "euler", "heun": "heun", "prk": "rk4"}[warmup]
                x = rk_step_from_noise(denoiser, x, x0, p_s, p_t, method, cond)
            if callback is not None:
                callback({"i": i, "t": s, "t_next": t, "x": x, "x0_hat": x0})
            continue
        e, x0 = eps_at(x, s)
        history, nodes = (history + [e])[-order:], (nodes + [sched.sigma_tilde(s)])[-order:]
        lands_on_data = bool(sched.sigma(t) == 0)
        if warmup == "prk" and i < order - 1 and not lands_on_data:
            # Pseudo Runge-Kutta (eq. 13): classical RK4 stages, each advanced by the transfer function.
            mid = 0.5 * (s + t)
            e2, _ = eps_at(transfer(sched, x, e, s, mid), mid)
            e3, _ = eps_at(transfer(sched, x, e2, s, mid), mid)
            e4, _ = eps_at(transfer(sched, x, e3, s, t), t)
            e_step = (e + 2 * e2 + 2 * e3 + e4) / 6
        elif warmup == "heun" and i == 0 and order > 1 and not lands_on_data:
            # Pseudo improved Euler (Stable Diffusion's PLMS start-up, diffusers' skip_prk_steps).
            e2, _ = eps_at(transfer(sched, x, e, s, t), t)
            e_step = (e + e2) / 2
        else:
            if variable_step:
                weights = ab_coefficients_variable(nodes[::-1], sched.sigma_tilde(t))
            else:
                weights = AB_COEFFICIENTS[len(history)]
            e_step = sum(c * e_j for c, e_j in zip(weights, reversed(history)))
        x = transfer(sched, x, e_step, s, t)
        if callback is not None:
            callback({"i": i, "t": s, "t_next": t, "x": x, "x0_hat": x0})
    return x


def pndm_nfe(ts, order: int = 4) -> int:
    """NFE of ``sample_pndm`` on a grid: 1 per step plus 3 for each pseudo Runge-Kutta warm-up step, i.e. each
    of the first order - 1 steps that does not end at t = 0: n + 3 min(order - 1, n) (one fewer warm-up
    step when the grid ends at t = 0 within them)."""
    n, to_zero = grid_shape(ts)
    warm = min(order - 1, n) - (1 if to_zero and n <= order - 1 else 0)
    return n + 3 * warm


@register_sampler("pndm", order=2, nfe_per_step=1, stochastic=False, nfe=pndm_nfe)
def sample_pndm(denoiser: Denoiser, x: torch.Tensor, ts, *, order: int = 4, variable_step: bool = False,
                cond: dict | None = None, generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """PNDM (Liu et al. 2022, arXiv 2202.09778, Alg. 2): ``sample_plms(..., warmup="prk")``. The first
    order - 1 steps are pseudo Runge-Kutta steps (4 NFE each), then PLMS; n + 3 (order - 1) NFE for
    n >= order steps (``pndm_nfe``: registered with nfe_per_step=1, its asymptotic rate). Order 2 with the
    default fixed AB weights on general grids (see the module docstring; 4 on sigma~-uniform grids)."""
    return sample_plms(denoiser, x, ts, order=order, warmup="prk", variable_step=variable_step, cond=cond,
                       generator=generator, callback=callback)


__all__ = ["AB_COEFFICIENTS", "ab_coefficients_variable", "pndm_nfe", "sample_plms", "sample_pndm", "transfer"]
