"""Multistep DPM-Solver / DPM-Solver++(kM) and SDE-DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095 Alg. 2
and §4). The update (*) and its frames are in ``exponential``; conventions as in ``dpm_solver``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..core.denoiser import Denoiser
from ..core.noise import GeneratorArg, randn_like
from .dpm_singlestep import check_solver_type
from ..core.grids import check_grid
from .exponential import (Frame, Point, check_algorithm, combine, emit, g_coefficients, grid_points, multistep_weights,
                          run_multistep, step_orders)

SOLVER_TYPES_MULTISTEP = ("midpoint", "taylor")


def sample_dpm_solver_multistep(denoiser: Denoiser, x: torch.Tensor, ts, *, order: int = 2,
                                algorithm: str = "dpmsolver++", solver_type: str = "midpoint",
                                lower_order_final: bool = False, orders: Sequence[int] | None = None,
                                legacy_third_order: bool = False, cond: dict | None = None,
                                generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """Multistep DPM-Solver / DPM-Solver++(kM), k = 1, 2, 3 (DPM-Solver++ Alg. 2 for k = 2; k = 3 is
    the third-order Adams-type extension the dpm-solver code provides, here with the exact coefficient).
    One model call per step; the outputs m_{i-1}, m_{i-2} of earlier steps estimate the lam-derivatives.
    With h = lam_t - lam_{s0}, r_0 = h_0/h, r_1 = h_1/h
    (h_0 = lam_{s0} - lam_{s1}, h_1 = lam_{s1} - lam_{s2}), D1_0 = (m_0 - m_1)/r_0, D1_1 = (m_1 - m_2)/r_1:

        k = 1:  x_t = ratio x - c g_1 m_0                                          (= DDIM)
        k = 2:  x_t = ratio x - c [g_1 m_0 + g_1/2 D1_0]             ("midpoint": DPM-Solver++ Alg. 2)
                x_t = ratio x - c [g_1 m_0 + g_2 D1_0]               ("taylor": diffusers' "heun")
        k = 3:  D_1 = D1_0 + r_0/(r_0 + r_1) (D1_0 - D1_1),  D_2 = 2 (D1_0 - D1_1)/(r_0 + r_1)
                x_t = ratio x - c [g_1 m_0 + g_2 D_1 + g_3 D_2]

    (notation of (*) in ``exponential``; D_1 ~ h m', D_2 ~ h^2 m'' are the derivatives of the
    quadratic through the three outputs). ``legacy_third_order=True`` uses D_2/2, as the dpm-solver
    reference code, diffusers (DPMSolverMultistepScheduler) and k-diffusion (dpmpp_3m_sde) do; that
    leaves a local error c g_3 h^2 m''/2 = O(h^3), so the legacy 3M is globally second order only
    (kept to reproduce those implementations).

    Warm-up: step i uses at most order i + 1 (no history yet); ``orders`` (one per step) overrides
    ``order``; ``lower_order_final=True`` uses min(order, n - i) at step i of n. A step to t = 0 is the
    first-order step x_t = alpha_t x0_hat; a step from alpha_s = 0 is the first-order u-frame step
    x_t = alpha_t x0_hat + (sigma_t/sigma_s) x_s and leaves no history (warm-up restarts after it).
    Order k (nominal: the first k - 1 warm-up steps are of lower order at the noisy end, where the model
    is nearly affine, so the effect is tiny); 1 NFE per step. ``generator`` is unused.

    Shapes: x (B, ...); ts (n + 1,) float64. Returns x at ts[-1], in x's dtype.
    """
    data = check_algorithm(algorithm)
    check_solver_type(solver_type, SOLVER_TYPES_MULTISTEP)
    n = len(check_grid(ts, denoiser.schedule)) - 1

    def update(i, x, used, p_s, p_t):
        frame = Frame(p_s, p_t, data)
        rs = [frame.r(p) for p, _ in used[1:]]
        weights = multistep_weights(rs, frame.hh, solver_type, legacy_third_order) if rs else []
        return combine(x, frame.ratio, frame.c, frame.g(1)[0], [m for _, m in used], weights)

    return run_multistep(denoiser, x, ts, data=data, orders=step_orders(n, order, lower_order_final, orders),
                         update=update, cond=cond, callback=callback)


def sample_sde_dpm_solver_pp_2m(denoiser: Denoiser, x: torch.Tensor, ts, *, eta: float = 1.0,
                                solver_type: str = "midpoint", lower_order_final: bool = False,
                                cond: dict | None = None, generator: GeneratorArg = None,
                                callback=None) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (the SDE solver of DPM-Solver++, Lu et al. 2022, arXiv 2211.01095; diffusers'
    "sde-dpmsolver++"; the eta generalisation as in k-diffusion's dpmpp_2m_sde). Exact in the linear
    part of the reverse SDE in lam with data prediction; with h = lam_t - lam_s, h_eta = (1 + eta) h,
    r = h_prev/h, D = (x0_s - x0_prev)/r:

        x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t (1 - e^{-h_eta}) x0_s + C
              + sigma_t sqrt(1 - e^{-2 eta h}) z,                         z ~ N(0, I)
        C   = alpha_t (1 - e^{-h_eta}) D / 2                      ("midpoint", diffusers' default)
        C   = alpha_t ((e^{-h_eta} - 1)/h_eta + 1) D              ("taylor", diffusers' "heun")

    eta = 1 is the paper's SDE solver (diffusers "sde-dpmsolver++"); eta = 0 is DPM-Solver++(2M).
    The first step (no history) and, with ``lower_order_final``, the last step have C = 0. A step from
    alpha_s = 0 (h = inf) takes the limit: x_t = (sigma_t/sigma_s) x_s + alpha_t x0_s at eta = 0 (the
    u-frame step), x_t = alpha_t x0_s + sigma_t z for eta > 0 (the DDPM posterior there). A step to
    t = 0 returns alpha_t x0_hat and draws no noise. Noise: one ``randn_like(x, generator)`` per step
    with sigma_t > 0, so per-sample generators give batch-size-invariant samples. Stochastic; 1 NFE
    per step.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    check_solver_type(solver_type, SOLVER_TYPES_MULTISTEP)
    cond = cond or {}
    ts, pts = grid_points(denoiser, ts)
    n = len(ts) - 1
    prev: tuple[Point, torch.Tensor] | None = None
    for i in range(n):
        p_s, p_t = pts[i], pts[i + 1]
        x0 = denoiser(x, p_s.t, **cond)
        k = 1
        if p_t.sigma == 0:
            x = p_t.alpha * x0
        else:
            h = p_t.lam - p_s.lam  # +inf when alpha_s = 0: then e^{-h} = 0 and the update stays finite
            hh = -(1.0 + eta) * h
            ratio = p_t.sigma / p_s.sigma * (math.exp(-eta * h) if eta > 0 else 1.0)
            g1, g2 = g_coefficients(hh, 2)
            ms, weights = [x0], []
            use_second = prev is not None and not (lower_order_final and i == n - 1) and math.isfinite(h)
            if use_second:
                r = (prev[0].lam - p_s.lam) / h  # < 0
                ms.append(prev[1])
                weights = [g2 / r] if solver_type == "taylor" else [0.5 * g1 / r]
                k = 2
            x = combine(x, ratio, p_t.alpha, g1, ms, weights)
            noise_std = p_t.sigma * math.sqrt(-math.expm1(-2.0 * eta * h)) if eta > 0 else 0.0
            if noise_std > 0:
                x = x + noise_std * randn_like(x, generator)
        prev = (p_s, x0) if math.isfinite(p_s.lam) else None
        emit(callback, i, p_s.t, p_t.t, x, x0, k)
    return x


def diffusers_multistep_orders(steps: int, solver_order: int, *, lower_order_final: bool = True,
                               euler_at_final: bool = False, final_sigmas_type: str = "zero") -> list[int]:
    """The per-step orders diffusers' DPMSolverMultistepScheduler uses (before warm-up), for ``orders=``.

    diffusers makes the last step first order if euler_at_final, or final_sigmas_type == "zero", or
    (lower_order_final and steps < 15), and the second-to-last at most second order if
    (lower_order_final and steps < 15). The "< 15" threshold silently changes the numerics with the
    step count; our ``lower_order_final`` option has no threshold.
    """
    low = lower_order_final and steps < 15
    orders = [int(solver_order)] * int(steps)
    if steps >= 2 and low:
        orders[-2] = min(orders[-2], 2)
    if euler_at_final or final_sigmas_type == "zero" or low:
        orders[-1] = 1
    return orders


__all__ = ["SOLVER_TYPES_MULTISTEP", "diffusers_multistep_orders", "sample_dpm_solver_multistep",
           "sample_sde_dpm_solver_pp_2m"]
