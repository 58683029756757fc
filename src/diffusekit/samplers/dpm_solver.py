"""DPM-Solver, DPM-Solver++ and SDE-DPM-Solver++ as pure functions over (denoiser, x, ts).

Papers: DPM-Solver (Lu, Zhou, Bao, Chen, Li & Zhu 2022, arXiv 2206.00927) and DPM-Solver++ (Lu, Zhou, Bao,
Chen, Li & Zhu 2022, arXiv 2211.01095).

All solvers integrate the probability-flow ODE exactly in its linear part, in lam = log(alpha/sigma)
(DPM-Solver eq. 3.4; its data-prediction counterpart in DPM-Solver++ §3). With h = lam_t - lam_s and a
model output m that is either the noise prediction eps_hat (``algorithm="dpmsolver"``) or the data
prediction x0_hat (``algorithm="dpmsolver++"``), every update here has the one form

    x_t = ratio * x_s - c * [ g_1(hh) m_s + sum_k g_{k+1}(hh) h^k m^(k)(lam_s) ]              (*)

    dpmsolver:    ratio = alpha_t/alpha_s,  c = sigma_t,  hh = +h
    dpmsolver++:  ratio = sigma_t/sigma_s,  c = alpha_t,  hh = -h

    g_1(z) = e^z - 1,   g_{k+1}(z) = g_k(z)/z - 1/k!     (= z phi_{k+1}(z) in exponential-integrator notation)

The lam-derivatives h^k m^(k) are estimated from model outputs at other points: intermediate points of
the step (singlestep) or earlier grid points (multistep). In DPM-Solver's notation g_1 = e^h - 1
(noise) / phi_1 = e^{-h} - 1 (data), and for data prediction g_2 = -phi_2, g_3 = phi_3.

Conventions shared by every function here (as in ``baseline``):

* ``ts`` is a strictly decreasing float64 grid of schedule times (``diffusekit.core.grids``); it works with
  every schedule (VP, VE, flow) because only alpha, sigma, lam and lam^{-1} are used.
* Coefficients are float64 Python numbers applied in x's dtype; nothing disables gradients.
* A step to t = 0 (sigma_t = 0, lam_t = +inf) is always the first-order data-prediction step
  x_t = alpha_t x0_hat (the limit of every form), whatever order was asked for: no lam = inf arithmetic.
  A step from a point with alpha_s = 0 (lam_s = -inf, e.g. a flow schedule at t = 1) is first order too,
  and such a point never enters multistep history.
* ``lower_order_final`` (default False everywhere) is a fixed rule, not a step-count heuristic:
  when True, step i of n uses order min(order, n - i), so the last step is first order, the one before
  at most second order. diffusers' step-count-dependent rules are reproduced only through the explicit
  ``orders=`` argument and the ``diffusers_*_orders`` helpers below.
* ``callback``, if given, receives ``{"i", "t", "t_next", "x", "x0_hat", "order"}`` after each step
  (x0_hat is the denoiser output at t).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..core.denoiser import Denoiser
from ..core.grids import check_grid, diffusers_dpm_timesteps, grid_diffusers_dpm
from ..core.noise import GeneratorArg, randn_like
from ..core.schedules import Schedule
from .registry import register_sampler

ALGORITHMS = ("dpmsolver", "dpmsolver++")


# ------------------------------------------------------------------------------------------------
# Shared exponential-integrator algebra (also used by ``unipc``)
# ------------------------------------------------------------------------------------------------
def _g(z: float, count: int) -> list[float]:
    """[g_1(z), ..., g_count(z)] with g_1 = e^z - 1, g_{k+1} = g_k/z - 1/k! (see the module docstring).

    For |z| < 1 the recursion cancels catastrophically, so the series g_k(z) = sum_{j>=1} z^j/(j+k-1)! is
    used instead (30 terms: truncation below 1e-30).
    """
    if abs(z) < 1.0:
        out = []
        for k in range(1, count + 1):
            term, total = 1.0 / math.factorial(k - 1), 0.0
            for j in range(1, 31):
                term *= z / (j + k - 1)
                total += term
            out.append(total)
        return out
    out = [math.expm1(z)]
    for k in range(1, count):
        out.append(out[-1] / z - 1.0 / math.factorial(k))
    return out


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Solve the small dense system a y = b (Gaussian elimination with partial pivoting, float64)."""
    n = len(b)
    m = [list(row) + [rhs] for row, rhs in zip(a, b)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if m[piv][col] == 0:
            raise ValueError("singular system: two points of a multistep/singlestep update coincide in lam")
        m[col], m[piv] = m[piv], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    y = [0.0] * n
    for r in reversed(range(n)):
        y[r] = (m[r][n] - sum(m[r][c] * y[c] for c in range(r + 1, n))) / m[r][r]
    return y


def _taylor_weights(rs: Sequence[float], gs: Sequence[float]) -> list[float]:
    """Weights w_j with sum_j w_j (m_j - m_0) = sum_k gs[k-1] D_k, where D_k ~ h^k m^(k) come from the
    polynomial through m_0 (at r = 0) and m_j (at r_j = (lam_j - lam_s)/h):

        m_j - m_0 = sum_{k=1}^{K} r_j^k / k! D_k,   j = 1..K.

    With gs = [g_2, ..., g_{K+1}] this makes (*) exact for polynomials of degree K in lam (order K + 1).
    """
    k_max = len(rs)
    # A[j][k] = r_j^(k+1)/(k+1)!; D = A^{-1} diffs, so sum_k g_k D_k = (A^{-T} g) . diffs.
    a_t = [[rs[j] ** (k + 1) / math.factorial(k + 1) for j in range(k_max)] for k in range(k_max)]
    return _solve(a_t, list(gs[:k_max]))


def _combine(x: torch.Tensor, ratio: float, c: float, g1: float, ms: Sequence[torch.Tensor],
             weights: Sequence[float]) -> torch.Tensor:
    """ratio * x - c * (g1 * m_0 + sum_j w_j (m_j - m_0)), in x's dtype."""
    out = ratio * x - (c * g1) * ms[0]
    for w, m in zip(weights, ms[1:]):
        if w != 0.0:
            out = out - (c * w) * (m - ms[0])
    return out


class _Point:
    """alpha, sigma, lam of one schedule time as float64 Python numbers (lam may be +-inf)."""

    __slots__ = ("t", "alpha", "sigma", "lam")

    def __init__(self, t: torch.Tensor, alpha: float, sigma: float, lam: float):
        self.t, self.alpha, self.sigma = t, alpha, sigma
        self.lam = math.inf if sigma == 0 else (-math.inf if alpha == 0 else lam)


def _points(schedule: Schedule, ts: torch.Tensor) -> list[_Point]:
    """_Point for each time of a 1-D float64 CPU tensor (coefficients computed in one vectorised pass)."""
    alpha, sigma, lam = (v.tolist() for v in (schedule.alpha(ts), schedule.sigma(ts), schedule.lam(ts)))
    return [_Point(t, a, s, lm) for t, a, s, lm in zip(ts, alpha, sigma, lam)]


def _check_algorithm(algorithm: str) -> bool:
    """True for data prediction (dpmsolver++)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    return algorithm == "dpmsolver++"


def _frame(p_s: _Point, p_t: _Point, data: bool) -> tuple[float, float, float]:
    """(ratio, c, hh) of (*) for a step s -> t with finite lam at both ends."""
    h = p_t.lam - p_s.lam
    if data:
        return p_t.sigma / p_s.sigma, p_t.alpha, -h
    return p_t.alpha / p_s.alpha, p_t.sigma, h


def _model_output(x0: torch.Tensor, x: torch.Tensor, p: _Point, data: bool) -> torch.Tensor:
    """m = x0_hat (data prediction) or eps_hat = (x - alpha x0_hat)/sigma (noise prediction)."""
    return x0 if data else (x - p.alpha * x0) / p.sigma


def _multistep_frame(history: list, k: int, p_s: _Point, p_t: _Point, data: bool):
    """Quantities of a k-step multistep update from s to t: the exponential-integrator frame (ratio, c, hh) of
    ``_frame``, the newest k history outputs m_0, m_1, ... (history holds (point, m), newest last) and their
    log-SNR offsets r_j = (lam_j - lam_s)/h < 0, j >= 1."""
    ratio, c, hh = _frame(p_s, p_t, data)
    h = p_t.lam - p_s.lam
    used = history[::-1][:k]
    return ratio, c, hh, [m for _, m in used], [(p.lam - p_s.lam) / h for p, _ in used[1:]]


def _special_first_order(x: torch.Tensor, x0: torch.Tensor, p_s: _Point, p_t: _Point) -> torch.Tensor | None:
    """The first-order step at an end of the process, or None for an ordinary step.

    sigma_t = 0: x_t = alpha_t x0_hat (the h -> inf limit of every DPM-Solver update).
    alpha_s = 0: x_t = alpha_t x0_hat + sigma_t x_s/sigma_s (DDIM; eps_hat = x_s/sigma_s exactly there).
    """
    if p_t.sigma == 0:
        return p_t.alpha * x0
    if p_s.alpha == 0:
        return p_t.alpha * x0 + (p_t.sigma / p_s.sigma) * x
    return None


def _grid(denoiser: Denoiser, ts) -> tuple[torch.Tensor, list[_Point]]:
    ts = check_grid(ts, denoiser.schedule).cpu()
    return ts, _points(denoiser.schedule, ts)


def _points_at_lam(schedule: Schedule, lams: Sequence[float]) -> list[_Point]:
    return _points(schedule, schedule.t_of_lam(torch.tensor(list(lams), dtype=torch.float64)))


def _step_orders(n: int, order: int, lower_order_final: bool, orders: Sequence[int] | None,
                 max_order: int = 3) -> list[int]:
    """Requested order of each of n steps: ``orders`` if given, else ``order`` (min(order, n - i) with
    lower_order_final). Warm-up and the special end steps are applied later by the samplers."""
    if orders is not None:
        orders = [int(k) for k in orders]
        if len(orders) != n:
            raise ValueError(f"orders has {len(orders)} entries for a grid of {n} steps; give one per step")
        if any(not 1 <= k <= max_order for k in orders):
            raise ValueError(f"every entry of orders must be in 1..{max_order}; got {orders}")
        return orders
    if int(order) != order or not 1 <= order <= max_order:
        raise ValueError(f"order must be 1, 2 or 3; got {order}")
    if lower_order_final:
        return [min(int(order), n - i) for i in range(n)]
    return [int(order)] * n


def _emit(callback, i, s, t, x, x0, order):
    if callback is not None:
        callback({"i": i, "t": s, "t_next": t, "x": x, "x0_hat": x0, "order": order})


# ------------------------------------------------------------------------------------------------
# Singlestep
# ------------------------------------------------------------------------------------------------
SOLVER_TYPES_SINGLESTEP = ("dpmsolver", "midpoint", "taylor")


def _singlestep_weights(order: int, j: int, rs: Sequence[float], hh: float, solver_type: str) -> list[float]:
    """Weights of (*) for the j-th sub-update of a singlestep method that has outputs at relative
    positions ``rs`` (j = number of outputs beyond m_s, so order j + 1 is the local order of this
    sub-update). ``order`` is the order of the whole step.

    * j = 1, "dpmsolver"/"midpoint":  w = [g_1/(2 r_1)]      (DPM-Solver-2, Alg. 1; DPM-Solver++(2S))
    * j = 1, "taylor", and the u_2 point of DPM-Solver-3 ("dpmsolver"):  w = [g_2/r_1]
    * j = 2, "dpmsolver"/"midpoint":  w = [0, g_2/r_2]       (DPM-Solver-3's last update, Alg. 2;
      third order iff r_2 = 2/3)
    * j = 2, "taylor": the quadratic through all three outputs (diffusers' "heun").
    """
    g = _g(hh, j + 1)
    if j == 1:
        use_taylor = solver_type == "taylor" or (solver_type == "dpmsolver" and order == 3)
        return [g[1] / rs[0]] if use_taylor else [0.5 * g[0] / rs[0]]
    if solver_type == "taylor":
        return _taylor_weights(rs, g[1:])
    return [0.0] * (j - 1) + [g[1] / rs[-1]]


def _singlestep_chain(denoiser, x, m, p_s, inner: Sequence[_Point], p_t, data, solver_type, cond):
    """The sub-updates of one singlestep update s -> t of order len(inner) + 1 with intermediate points
    ``inner``: u_j at inner[j] by the order-(j + 1) update from s, then x_t. Calls the denoiser at every
    inner point (len(inner) NFE). Returns (us, x0s, ms): the states at inner + [t], the denoiser outputs
    and model outputs at s + inner."""
    order = len(inner) + 1
    ms, x0s, us = [m], [], []
    for j, p_j in enumerate(list(inner) + [p_t]):
        ratio, c, hh = _frame(p_s, p_j, data)
        rs_j = [(q.lam - p_s.lam) / (p_j.lam - p_s.lam) for q in inner[:j]]
        weights = _singlestep_weights(order, j, rs_j, hh, solver_type) if j else []
        us.append(_combine(x, ratio, c, _g(hh, 1)[0], ms, weights))
        if j < len(inner):
            x0s.append(denoiser(us[-1], p_j.t, **cond))
            ms.append(_model_output(x0s[-1], us[-1], p_j, data))
    return us, x0s, ms


def _check_solver_type(solver_type: str, allowed: Sequence[str]) -> None:
    if solver_type not in allowed:
        raise ValueError(f"unknown solver_type {solver_type!r}; allowed: {', '.join(allowed)}")


def sample_dpm_solver_singlestep(denoiser: Denoiser, x: torch.Tensor, ts, *, order: int = 3,
                                 algorithm: str = "dpmsolver++", solver_type: str = "dpmsolver",
                                 r1: float | None = None, r2: float | None = None, lower_order_final: bool = False,
                                 orders: Sequence[int] | None = None, cond: dict | None = None,
                                 generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """Singlestep DPM-Solver-k / DPM-Solver++(kS), k = 1, 2, 3: every grid interval s -> t is one step
    with k - 1 intermediate points at lam_s + r_i h (DPM-Solver Alg. 1 and 2; DPM-Solver++ Alg. 1).

    In the notation of (*) (module docstring), with m_i the model output at s_i = lam^{-1}(lam_s + r_i h):

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

    Order k; k NFE per step (one at s, k - 1 at the intermediate points), except that a step to t = 0
    or from alpha_s = 0 is first order (1 NFE). ``orders`` (one entry per step) overrides ``order``;
    ``lower_order_final=True`` uses order min(order, n - i) at step i of n. ``generator`` is unused.

    Shapes: x (B, ...); ts (n + 1,) float64. Returns x at ts[-1], in x's dtype.
    """
    data = _check_algorithm(algorithm)
    _check_solver_type(solver_type, SOLVER_TYPES_SINGLESTEP)
    cond = cond or {}
    sched = denoiser.schedule
    ts, pts = _grid(denoiser, ts)
    n = len(ts) - 1
    step_orders = _step_orders(n, order, lower_order_final, orders)
    for i in range(n):
        p_s, p_t = pts[i], pts[i + 1]
        k = step_orders[i]
        x0 = denoiser(x, p_s.t, **cond)
        special = _special_first_order(x, x0, p_s, p_t)
        if special is not None:
            x, k = special, 1
        else:
            m = _model_output(x0, x, p_s, data)
            rs = _intermediate_rs(k, r1, r2)
            h = p_t.lam - p_s.lam
            inner = _points_at_lam(sched, [p_s.lam + r * h for r in rs])
            x = _singlestep_chain(denoiser, x, m, p_s, inner, p_t, data, solver_type, cond)[0][-1]
        _emit(callback, i, p_s.t, p_t.t, x, x0, k)
    return x


def _intermediate_rs(order: int, r1: float | None, r2: float | None) -> list[float]:
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
    u_2). Use ``diffusers_singlestep_orders`` for diffusers' order pattern. A step to t = 0 must be a
    group of order 1 (raises otherwise). 1 NFE per grid interval; the order is that of the groups.
    """
    data = _check_algorithm(algorithm)
    _check_solver_type(solver_type, SOLVER_TYPES_SINGLESTEP)
    cond = cond or {}
    ts, pts = _grid(denoiser, ts)
    n = len(ts) - 1
    orders = [int(k) for k in orders]
    if sum(orders) != n or any(not 1 <= k <= 3 for k in orders):
        raise ValueError(f"orders must be entries in 1..3 summing to the {n} grid steps; got {orders}")
    i = 0
    for k in orders:
        p_s, inner, p_t = pts[i], pts[i + 1:i + k], pts[i + k]
        x0 = denoiser(x, p_s.t, **cond)
        special = _special_first_order(x, x0, p_s, pts[i + 1])
        if special is not None or p_t.sigma == 0:
            if k != 1:
                raise ValueError("a group that starts at alpha = 0 or reaches t = 0 must have order 1")
            x = special
            _emit(callback, i, p_s.t, p_t.t, x, x0, 1)
        else:
            us, x0s, _ = _singlestep_chain(denoiser, x, _model_output(x0, x, p_s, data), p_s, inner, p_t, data,
                                           solver_type, cond)
            x = us[-1]
            for j, (u, x0_j) in enumerate(zip(us, [x0] + x0s)):
                _emit(callback, i + j, pts[i + j].t, pts[i + j + 1].t, u, x0_j, j + 1)
        i += k
    return x


# ------------------------------------------------------------------------------------------------
# Multistep
# ------------------------------------------------------------------------------------------------
SOLVER_TYPES_MULTISTEP = ("midpoint", "taylor")


def _multistep_weights(rs: Sequence[float], hh: float, solver_type: str, legacy_third_order: bool) -> list[float]:
    """Weights of (*) for a multistep update with earlier outputs at relative positions rs (< 0)."""
    g = _g(hh, len(rs) + 1)
    if len(rs) == 1:
        return [g[1] / rs[0]] if solver_type == "taylor" else [0.5 * g[0] / rs[0]]
    gs = list(g[1:])
    if legacy_third_order:
        gs[1] *= 0.5
    return _taylor_weights(rs, gs)


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

    (notation of (*) in the module docstring; D_1 ~ h m', D_2 ~ h^2 m'' are the derivatives of the
    quadratic through the three outputs). ``legacy_third_order=True`` uses D_2/2, as the dpm-solver
    reference code, diffusers (DPMSolverMultistepScheduler) and k-diffusion (dpmpp_3m_sde) do; that
    leaves a local error c g_3 h^2 m''/2 = O(h^3), so the legacy 3M is globally second order only
    (kept to reproduce those implementations).

    Warm-up: step i uses at most order i + 1 (no history yet); ``orders`` (one per step) overrides
    ``order``; ``lower_order_final=True`` uses min(order, n - i) at step i of n. A step to t = 0 is the
    first-order step x_t = alpha_t x0_hat. Order k (nominal: the first k - 1 warm-up steps are of lower
    order at the noisy end, where the model is nearly affine, so the effect is tiny); 1 NFE per step.
    ``generator`` is unused.

    Shapes: x (B, ...); ts (n + 1,) float64. Returns x at ts[-1], in x's dtype.
    """
    data = _check_algorithm(algorithm)
    _check_solver_type(solver_type, SOLVER_TYPES_MULTISTEP)
    cond = cond or {}
    ts, pts = _grid(denoiser, ts)
    n = len(ts) - 1
    step_orders = _step_orders(n, order, lower_order_final, orders)
    history: list[tuple[_Point, torch.Tensor]] = []  # (point, m), newest last
    keep = max(step_orders)
    for i in range(n):
        p_s, p_t = pts[i], pts[i + 1]
        x0 = denoiser(x, p_s.t, **cond)
        special = _special_first_order(x, x0, p_s, p_t)
        if special is not None:
            x, k = special, 1
            history = []  # a point with alpha = 0 (infinite lam) cannot serve as history
        else:
            m = _model_output(x0, x, p_s, data)
            history = (history + [(p_s, m)])[-keep:]
            k = min(step_orders[i], len(history))
            ratio, c, hh, ms, rs = _multistep_frame(history, k, p_s, p_t, data)
            weights = _multistep_weights(rs, hh, solver_type, legacy_third_order) if rs else []
            x = _combine(x, ratio, c, _g(hh, 1)[0], ms, weights)
        _emit(callback, i, p_s.t, p_t.t, x, x0, k)
    return x


# ------------------------------------------------------------------------------------------------
# SDE-DPM-Solver++(2M)
# ------------------------------------------------------------------------------------------------
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
    The first step (no history) and, with ``lower_order_final``, the last step have C = 0. A step to
    t = 0 returns alpha_t x0_hat and draws no noise. Noise: one ``randn_like(x, generator)`` per step
    with sigma_t > 0, so per-sample generators give batch-size-invariant samples. Stochastic; 1 NFE
    per step.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    _check_solver_type(solver_type, SOLVER_TYPES_MULTISTEP)
    cond = cond or {}
    ts, pts = _grid(denoiser, ts)
    n = len(ts) - 1
    prev: tuple[_Point, torch.Tensor] | None = None
    for i in range(n):
        p_s, p_t = pts[i], pts[i + 1]
        x0 = denoiser(x, p_s.t, **cond)
        k = 1
        if p_t.sigma == 0:
            x = p_t.alpha * x0
        else:
            h = p_t.lam - p_s.lam  # +inf when alpha_s = 0: then e^{-h} = 0 and the update stays finite
            hh = -(1.0 + eta) * h
            ratio = p_t.sigma / p_s.sigma * math.exp(-eta * h)
            g1, g2 = _g(hh, 2) if math.isfinite(hh) else (-1.0, -1.0)
            ms, weights = [x0], []
            use_second = prev is not None and not (lower_order_final and i == n - 1) and math.isfinite(h)
            if use_second:
                r = (prev[0].lam - p_s.lam) / h  # < 0
                ms.append(prev[1])
                weights = [g2 / r] if solver_type == "taylor" else [0.5 * g1 / r]
                k = 2
            x = _combine(x, ratio, p_t.alpha, g1, ms, weights)
            noise_std = p_t.sigma * math.sqrt(-math.expm1(-2.0 * eta * h)) if eta > 0 else 0.0
            if noise_std > 0:
                x = x + noise_std * randn_like(x, generator)
        prev = (p_s, x0) if math.isfinite(p_s.lam) else None
        _emit(callback, i, p_s.t, p_t.t, x, x0, k)
    return x


# ------------------------------------------------------------------------------------------------
# Adaptive step size
# ------------------------------------------------------------------------------------------------
def sample_dpm_solver_adaptive(denoiser: Denoiser, x: torch.Tensor, ts, *, order: int = 3,
                               algorithm: str = "dpmsolver++", atol: float = 0.0078, rtol: float = 0.05,
                               h_init: float = 0.05, theta: float = 0.9, max_nfe: int = 10_000,
                               stats: dict | None = None, cond: dict | None = None,
                               generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """DPM-Solver with adaptive step size (DPM-Solver, arXiv 2206.00927, §3.3 and appendix: the embedded
    pairs "DPM-Solver-12" (order=2) and "DPM-Solver-23" (order=3)). Only the ends of ``ts`` are used:
    it integrates from ts[0] to ts[-1], choosing its own steps in lam.

    Each attempt s -> t = lam^{-1}(lam_s + h) computes a pair sharing model outputs:
    order 2: x_low = DPM-Solver-1, x_high = DPM-Solver-2 (r_1 = 1/2);
    order 3: x_low = DPM-Solver-2 (r_1 = 1/3), x_high = DPM-Solver-3 (r_1 = 1/3, r_2 = 2/3).
    With delta = max(atol, rtol max(|x_low|, |x_prev|)) elementwise and
    E = max over the batch of RMS((x_high - x_low)/delta) over each sample, the attempt is accepted if
    E <= 1 (x <- x_high, x_prev <- x_low); in either case h <- min(theta h E^{-1/order}, lam_end - lam_s).
    The first h is ``h_init`` (in lam). Defaults atol = 0.0078, rtol = 0.05, theta = 0.9 are the paper's
    (for data in [-1, 1]); tighten them for accurate solves.

    Differences from the reference code: m_s is reused after a rejected attempt (it does not change), so
    an attempt costs order - 1 NFE plus 1 per accepted step; the last step lands exactly on t_end.
    The step sizes are shared by the batch (E is a batch max), so samples depend on their batch.

    If ts[-1] = 0 (infinite lam), the adaptive part ends at ts[-2] and one first-order data-prediction
    step x = alpha x0_hat finishes (1 NFE); a grid [t_start, 0] is rejected (pass [t_start, t_min, 0]).

    NFE: variable. Pass ``stats={}`` to receive ``nfe``, ``accepted``, ``rejected`` and ``ts`` (accepted
    times). ``callback`` is called after each accepted step. Raises RuntimeError past ``max_nfe``.
    """
    data = _check_algorithm(algorithm)
    if order not in (2, 3):
        raise ValueError(f"order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23); got {order}")
    if not (atol > 0 and rtol >= 0 and h_init > 0 and 0 < theta <= 1):
        raise ValueError("need atol > 0, rtol >= 0, h_init > 0 and 0 < theta <= 1")
    cond = cond or {}
    sched = denoiser.schedule
    ts, pts = _grid(denoiser, ts)
    p_end, denoise_to_zero = pts[-1], pts[-1].sigma == 0
    if denoise_to_zero:
        if len(pts) < 3:
            raise ValueError("the adaptive solver cannot reach t = 0 (lam = inf) directly; pass a grid "
                             "[t_start, t_min, 0] to finish with a denoising step")
        p_end = pts[-2]
    p_s = pts[0]
    if not math.isfinite(p_s.lam):
        raise ValueError("the adaptive solver needs a finite lam at t_start (alpha > 0 and sigma > 0)")
    info = {"nfe": 0, "accepted": 0, "rejected": 0, "ts": [float(p_s.t)]}

    def call(u, p):
        info["nfe"] += 1
        return denoiser(u, p.t, **cond)

    rs = [0.5] if order == 2 else [1.0 / 3.0, 2.0 / 3.0]
    x_prev, h, step = x, float(h_init), 0
    x0_s = None
    while p_s.lam < p_end.lam:
        if x0_s is None:  # m_s does not change after a rejected attempt
            x0_s = call(x, p_s)
        m_s = _model_output(x0_s, x, p_s, data)
        p_t = p_end if p_s.lam + h >= p_end.lam else _points_at_lam(sched, [p_s.lam + h])[0]
        h_step = p_t.lam - p_s.lam
        inner = _points_at_lam(sched, [p_s.lam + r * h_step for r in rs])
        info["nfe"] += len(inner)
        if info["nfe"] > max_nfe:
            raise RuntimeError(f"adaptive DPM-Solver exceeded max_nfe={max_nfe}; loosen atol/rtol")
        us, _, ms = _singlestep_chain(denoiser, x, m_s, p_s, inner, p_t, data, "dpmsolver", cond)
        x_high = us[-1]
        # the lower-order partner: DPM-Solver-1, or DPM-Solver-2 through s_1 (r_1 = 1/3)
        ratio, c, hh = _frame(p_s, p_t, data)
        low_weights = [] if order == 2 else _singlestep_weights(2, 1, [rs[0]], hh, "dpmsolver")
        x_low = _combine(x, ratio, c, _g(hh, 1)[0], ms[:order - 1], low_weights)
        delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
        e = float(((x_high - x_low) / delta).flatten(1).pow(2).mean(1).sqrt().max())
        if e <= 1.0:
            x_prev, x = x_low, x_high
            _emit(callback, step, p_s.t, p_t.t, x, x0_s, order)
            step += 1
            info["accepted"] += 1
            info["ts"].append(float(p_t.t))
            p_s, x0_s = p_t, None
        else:
            info["rejected"] += 1
        h = min(theta * h * e ** (-1.0 / order) if e > 0 else math.inf, p_end.lam - p_s.lam)
    if denoise_to_zero:
        x0 = call(x, p_end)
        x = pts[-1].alpha * x0
        _emit(callback, step, p_end.t, pts[-1].t, x, x0, 1)
        info["ts"].append(0.0)
    if stats is not None:
        stats.update(info)
    return x


# ------------------------------------------------------------------------------------------------
# diffusers conventions, as explicit helpers
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Registered variants
# ------------------------------------------------------------------------------------------------
def _variant(name: str, fn, *, declared_order: int, nfe_per_step: int, **fixed):
    """Register ``fn`` with some options fixed under ``name`` (passing a fixed option again is an error)."""

    def variant(denoiser: Denoiser, x: torch.Tensor, ts, **options) -> torch.Tensor:
        clash = sorted(set(fixed) & set(options))
        if clash:
            raise ValueError(f"sampler {name!r} fixes {', '.join(clash)}; call {fn.__name__} to choose them")
        return fn(denoiser, x, ts, **fixed, **options)

    variant.__name__ = variant.__qualname__ = f"sample_{name}"
    options = ", ".join(f"{k}={v!r}" for k, v in fixed.items())
    variant.__doc__ = f"``{fn.__name__}({options})``: order {declared_order}, {nfe_per_step} NFE per step."
    return register_sampler(name, order=declared_order, nfe_per_step=nfe_per_step, stochastic=False)(variant)


_single, _multi = sample_dpm_solver_singlestep, sample_dpm_solver_multistep
sample_dpm_solver_1 = _variant("dpm_solver_1", _single, declared_order=1, nfe_per_step=1, order=1,
                               algorithm="dpmsolver")
sample_dpm_solver_2 = _variant("dpm_solver_2", _single, declared_order=2, nfe_per_step=2, order=2,
                               algorithm="dpmsolver")
sample_dpm_solver_3 = _variant("dpm_solver_3", _single, declared_order=3, nfe_per_step=3, order=3,
                               algorithm="dpmsolver")
sample_dpm_solver_pp_2s = _variant("dpm_solver_pp_2s", _single, declared_order=2, nfe_per_step=2, order=2,
                                   algorithm="dpmsolver++")
sample_dpm_solver_pp_3s = _variant("dpm_solver_pp_3s", _single, declared_order=3, nfe_per_step=3, order=3,
                                   algorithm="dpmsolver++")
sample_dpm_solver_2m = _variant("dpm_solver_2m", _multi, declared_order=2, nfe_per_step=1, order=2,
                                algorithm="dpmsolver")
sample_dpm_solver_3m = _variant("dpm_solver_3m", _multi, declared_order=3, nfe_per_step=1, order=3,
                                algorithm="dpmsolver")
sample_dpm_solver_pp_2m = _variant("dpm_solver_pp_2m", _multi, declared_order=2, nfe_per_step=1, order=2,
                                   algorithm="dpmsolver++")
sample_dpm_solver_pp_3m = _variant("dpm_solver_pp_3m", _multi, declared_order=3, nfe_per_step=1, order=3,
                                   algorithm="dpmsolver++")
del _single, _multi
register_sampler("sde_dpm_solver_pp_2m", order=0, nfe_per_step=1, stochastic=True)(sample_sde_dpm_solver_pp_2m)
# sample_dpm_solver_adaptive chooses its own steps: it is registered (at the end of this module) with
# nfe_per_step=None, and reports the NFE it used through ``stats``.

__all__ = [
    "ALGORITHMS", "diffusers_dpm_timesteps", "diffusers_multistep_orders", "diffusers_singlestep_orders",
    "grid_diffusers_dpm", "sample_dpm_solver_1", "sample_dpm_solver_2", "sample_dpm_solver_2m", "sample_dpm_solver_3",
    "sample_dpm_solver_3m", "sample_dpm_solver_adaptive", "sample_dpm_solver_grouped", "sample_dpm_solver_multistep",
    "sample_dpm_solver_pp_2m", "sample_dpm_solver_pp_2s", "sample_dpm_solver_pp_3m", "sample_dpm_solver_pp_3s",
    "sample_dpm_solver_singlestep", "sample_sde_dpm_solver_pp_2m",
]
register_sampler("dpm_solver_adaptive", order=3, nfe_per_step=None, stochastic=False)(sample_dpm_solver_adaptive)
