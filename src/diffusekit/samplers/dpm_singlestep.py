"""Singlestep DPM-Solver / DPM-Solver++ (Lu et al. 2022, arXiv 2206.00927 Alg. 1-2; arXiv 2211.01095 Alg. 1),
with free intermediate points or with grid points as intermediate points (DPM-Solver-fast, diffusers'
DPMSolverSinglestepScheduler). The update (*) and its frames are in ``exponential``; conventions as in
``dpm_solver``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.denoiser import Denoiser
from ..core.noise import GeneratorArg
from .exponential import (Frame, Point, check_algorithm, combine, emit, first_order_to_data, grid_points,
                          model_output, points_at_lam, step_orders, taylor_weights)

SOLVER_TYPES_SINGLESTEP = ("dpmsolver", "midpoint", "taylor")


def check_solver_type(solver_type: str, allowed: Sequence[str]) -> None:
    if solver_type not in allowed:
        raise ValueError(f"unknown solver_type {solver_type!r}; allowed: {', '.join(allowed)}")


def singlestep_weights(order: int, j: int, rs: Sequence[float], g: Sequence[float], solver_type: str) -> list[float]:
    """Weights of (*) for the j-th sub-update of a singlestep method that has outputs at relative
    positions ``rs`` (j = number of outputs beyond m_s, so order j + 1 is the local order of this
    sub-update), with g = [g_1, ..., g_{j+1}] of the sub-update's frame. ``order`` is the order of the
    whole step.

    * j = 1, "dpmsolver"/"midpoint":  w = [g_1/(2 r_1)]      (DPM-Solver-2, Alg. 1; DPM-Solver++(2S))
    * j = 1, "taylor", and the u_2 point of DPM-Solver-3 ("dpmsolver"):  w = [g_2/r_1]
    * j = 2, "dpmsolver"/"midpoint":  w = [0, g_2/r_2]       (DPM-Solver-3's last update, Alg. 2;
      third order iff r_2 = 2/3)
    * j = 2, "taylor": the quadratic through all three outputs (diffusers' "heun").

    In the u-frame of a step from alpha = 0 (g_k = -1/k!) the same weights are explicit Runge-Kutta
    methods in u: the midpoint rule (order 2, r_1 = 1/2) and Heun's third-order method (r = 1/3, 2/3).
    """
    if j == 1:
        use_taylor = solver_type == "taylor" or (solver_type == "dpmsolver" and order == 3)
        return [g[1] / rs[0]] if use_taylor else [0.5 * g[0] / rs[0]]
    if solver_type == "taylor":
        return taylor_weights(rs, g[1:])
    return [0.0] * (j - 1) + [g[1] / rs[-1]]


def singlestep_chain(denoiser, x, m, p_s: Point, inner: Sequence[Point], p_t: Point, data: bool,
                     solver_type: str, cond):
    """The sub-updates of one singlestep update s -> t of order len(inner) + 1 with intermediate points
    ``inner``: u_j at inner[j] by the order-(j + 1) update from s, then x_t. Calls the denoiser at every
    inner point (len(inner) NFE). From alpha_s = 0 every sub-update is in the u-frame and ``data`` must be
    True. Returns (us, x0s, ms): the states at inner + [t], the denoiser outputs and model outputs at
    s + inner."""
    order = len(inner) + 1
    ms, x0s, us = [m], [], []
    for j, p_j in enumerate(list(inner) + [p_t]):
        frame = Frame(p_s, p_j, data)
        g = frame.g(j + 1)
        weights = singlestep_weights(order, j, [frame.r(q) for q in inner[:j]], g, solver_type) if j else []
        us.append(combine(x, frame.ratio, frame.c, g[0], ms, weights))
        if j < len(inner):
            x0s.append(denoiser(us[-1], p_j.t, **cond))
            ms.append(model_output(x0s[-1], us[-1], p_j, data))
    return us, x0s, ms


def intermediate_rs(order: int, r1: float | None, r2: float | None) -> list[float]:
    """The relative positions of the intermediate points of a singlestep update of ``order``."""
    if order == 1:
        return []
    if order == 2:
        r1 = 0.5 if r1 is None else float(r1)
        if not 0 < r1 < 1:
            raise ValueError(f"r1 must be in (0, 1); got {r1}")
        return [r1]
    r1 = 1.0 / 3.0 if r1 is None else float(r1)
    r2 = 2.0 / 3.0 if r2 is None else float(r2)
    if not 0 < r1 < r2 < 1:
        raise ValueError(f"need 0 < r1 < r2 < 1; got r1={r1}, r2={r2}")
    return [r1, r2]


def sample_dpm_solver_singlestep(denoiser: Denoiser, x: torch.Tensor, ts, *, order: int = 3,
                                 algorithm: str = "dpmsolver++", solver_type: str = "dpmsolver",
                                 r1: float | None = None, r2: float | None = None, lower_order_final: bool = False,
                                 orders: Sequence[int] | None = None, cond: dict | None = None,
                                 generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """Singlestep DPM-Solver-k / DPM-Solver++(kS), k = 1, 2, 3: every grid interval s -> t is one step
    with k - 1 intermediate points at lam_s + r_i h (DPM-Solver Alg. 1 and 2; DPM-Solver++ Alg. 1).

    In the notation of (*) (``exponential``), with m_i the model output at s_i = lam^{-1}(lam_s + r_i h):

        k = 1:  x_t = ratio x_s - c g_1(hh) m_s                                                (= DDIM)
        k = 2:  u = DPM-Solver-1(x_s; s -> s_1),  r_1 = 1/2 by default
                x_t = ratio x_s - c [g_1 m_s + g_1/(2 r_1) (m_1 - m_s)]
        k = 3:  u_1 = DPM-Solver-1(x_s; s -> s_1),  r_1 = 1/3, r_2 = 2/3 by default
                u_2 = x_s -> s_2 with m_s, m_1:  - c_2 [g_1 m_s + g_2(hh_2) (r_2/r_1)(m_1 - m_s)]
                x_t = ratio x_s - c [g_1 m_s + g_2/r_2 (m_2 - m_s)]

    These are DPM-Solver's Algorithms 1-2 (noise, ``algorithm="dpmsolver"``) and their data-prediction
    forms (DPM-Solver++, ``"dpmsolver++"``; Alg. 1 there is the k = 2 case). ``solver_type="taylor"``
    replaces each update by the exact polynomial (Taylor) fit of the available outputs (dpm-solver's
    "taylor"); ``"midpoint"`` uses the r_1 form also for u_2 (diffusers' "midpoint"). All are order k
    for the default r's; the k = 3 "dpmsolver"/"midpoint" forms need r_2 = 2/3 for third order.

    A step from alpha_s = 0 (lam_s = -inf) is the same update in the u-frame (u = alpha/sigma, data
    prediction; intermediate points at u = r_i u_t): an explicit Runge-Kutta method of the same order and
    NFE. A step to t = 0 is the first-order step x_t = alpha_t x0_hat (1 NFE).

    Order k; k NFE per step (one at s, k - 1 at the intermediate points), 1 on a step to t = 0: a grid of
    n steps ending at t = 0 costs k n - (k - 1). ``orders`` (one entry per step) overrides ``order``;
    ``lower_order_final=True`` uses order min(order, n - i) at step i of n. ``generator`` is unused.

    Shapes: x (B, ...); ts (n + 1,) float64. Returns x at ts[-1], in x's dtype.
    """
    data = check_algorithm(algorithm)
    check_solver_type(solver_type, SOLVER_TYPES_SINGLESTEP)
    cond = cond or {}
    sched = denoiser.schedule
    ts, pts = grid_points(denoiser, ts)
    n = len(ts) - 1
    orders_ = step_orders(n, order, lower_order_final, orders)
    for i in range(n):
        p_s, p_t = pts[i], pts[i + 1]
        k = orders_[i]
        x0 = denoiser(x, p_s.t, **cond)
        if p_t.sigma == 0:
            x, k = first_order_to_data(x0, p_t), 1
        else:
            frame = Frame(p_s, p_t, data)
            step_data = frame.data  # a u-frame step (alpha_s = 0) always uses x0_hat
            inner = points_at_lam(sched, [frame.lam_at(r) for r in intermediate_rs(k, r1, r2)])
            x = singlestep_chain(denoiser, x, model_output(x0, x, p_s, step_data), p_s, inner, p_t, step_data,
                                 solver_type, cond)[0][-1]
        emit(callback, i, p_s.t, p_t.t, x, x0, k)
    return x


def sample_dpm_solver_grouped(denoiser: Denoiser, x: torch.Tensor, ts, *, orders: Sequence[int],
                              algorithm: str = "dpmsolver++", solver_type: str = "midpoint",
                              cond: dict | None = None, generator: GeneratorArg = None,
                              callback=None) -> torch.Tensor:
    """Singlestep DPM-Solver whose intermediate points are grid points: consecutive groups of
    ``orders[j]`` grid intervals form one singlestep update of order orders[j], evaluated at every grid
    point of the group (as DPM-Solver-fast, DPM-Solver §3.4, and diffusers' DPMSolverSinglestepScheduler).

    Within a group starting at s with grid points s < ... the j-th point after s is reached by the order-j
    update (*) from s using the outputs at s and the j - 1 points before it (r_i from the grid), so the
    whole grid costs exactly 1 NFE per interval (``sum(orders) == len(ts) - 1`` is required).
    ``solver_type``: "midpoint" (diffusers' default; second-order sub-updates use g_1/(2 r), the third
    uses g_2/r_2 (m_2 - m_s), third order only if r_2 = 2/3, e.g. on a uniform-lam grid), "taylor"
    (diffusers' "heun": exact polynomial fits, order k for any r's) or "dpmsolver" (DPM-Solver-3's
    u_2). Use ``diffusers_singlestep_orders`` for diffusers' order pattern. A group that starts at
    alpha = 0 is taken in the u-frame (``exponential``); a step to t = 0 must be a group of order 1
    (raises otherwise). 1 NFE per grid interval; the order is that of the groups.
    """
    data = check_algorithm(algorithm)
    check_solver_type(solver_type, SOLVER_TYPES_SINGLESTEP)
    cond = cond or {}
    ts, pts = grid_points(denoiser, ts)
    n = len(ts) - 1
    orders = [int(k) for k in orders]
    if sum(orders) != n or any(not 1 <= k <= 3 for k in orders):
        raise ValueError(f"orders must be entries in 1..3 summing to the {n} grid steps; got {orders}")
    i = 0
    for k in orders:
        p_s, inner, p_t = pts[i], pts[i + 1:i + k], pts[i + k]
        x0 = denoiser(x, p_s.t, **cond)
        if p_t.sigma == 0:
            if k != 1:
                raise ValueError("a group that reaches t = 0 must have order 1")
            x = first_order_to_data(x0, p_t)
            emit(callback, i, p_s.t, p_t.t, x, x0, 1)
        else:
            step_data = data or p_s.alpha == 0
            us, x0s, _ = singlestep_chain(denoiser, x, model_output(x0, x, p_s, step_data), p_s, inner, p_t,
                                          step_data, solver_type, cond)
            x = us[-1]
            for j, (u, x0_j) in enumerate(zip(us, [x0] + x0s)):
                emit(callback, i + j, pts[i + j].t, pts[i + j + 1].t, u, x0_j, j + 1)
        i += k
    return x


def diffusers_singlestep_orders(steps: int, solver_order: int, *, lower_order_final: bool = False,
                                final_sigmas_type: str = "zero") -> list[int]:
    """Group orders of diffusers' DPMSolverSinglestepScheduler for ``sample_dpm_solver_grouped``.

    diffusers forces lower_order_final=True when final_sigmas_type == "zero" or steps % order != 0, then
    uses per-timestep orders [1, 2, 3] * k + [1, 2] + [1] (order 3, steps % 3 == 0), [1, 2, 3] * k + [1],
    [1, 2, 3] * k + [1, 2], [1, 2] * (k - 1) + [1, 1] or [1, 2] * k + [1] (order 2), and makes the last
    timestep order 1 under final sigma zero. A per-timestep order j is the j-th point of a group, so
    group sizes are read off where the per-timestep order restarts at 1.
    """
    steps, order = int(steps), int(solver_order)
    if order not in (1, 2, 3):
        raise ValueError(f"solver_order must be 1, 2 or 3; got {order}")
    if final_sigmas_type == "zero" or steps % order != 0:
        lower_order_final = True
    if lower_order_final:
        if order == 3:
            tail = {0: [1, 2] + [1], 1: [1], 2: [1, 2]}[steps % 3]
            per_t = [1, 2, 3] * ((steps - len(tail)) // 3) + tail
        elif order == 2:
            per_t = [1, 2] * (steps // 2 - 1) + [1, 1] if steps % 2 == 0 else [1, 2] * (steps // 2) + [1]
        else:
            per_t = [1] * steps
    else:
        per_t = ([1, 2, 3] * (steps // 3)) if order == 3 else ([1, 2] * (steps // 2)) if order == 2 else [1] * steps
    if final_sigmas_type == "zero":
        per_t[-1] = 1
    groups: list[int] = []
    for k in per_t:
        if k == 1:
            groups.append(1)
        else:
            groups[-1] += 1
    return groups


__all__ = ["SOLVER_TYPES_SINGLESTEP", "diffusers_singlestep_orders", "intermediate_rs", "sample_dpm_solver_grouped",
           "sample_dpm_solver_singlestep", "singlestep_chain", "singlestep_weights"]
