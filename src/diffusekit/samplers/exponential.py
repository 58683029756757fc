"""Exponential-integrator machinery shared by DPM-Solver(++), UniPC and the momentum samplers.

Papers: DPM-Solver (Lu, Zhou, Bao, Chen, Li & Zhu 2022, arXiv 2206.00927, eqs. 3.4-3.6), DPM-Solver++
(Lu et al. 2022, arXiv 2211.01095, §3, eq. 8), UniPC (Zhao et al. 2023, arXiv 2302.04867, §3).

The probability-flow ODE of x_t = alpha_t x0 + sigma_t eps is linear in x apart from the model output, so it
is integrated exactly in its linear part, in lam = log(alpha/sigma). With h = lam_t - lam_s and a model
output m that is the noise prediction eps_hat (``data=False``, "dpmsolver") or the data prediction x0_hat
(``data=True``, "dpmsolver++"), every update of those samplers has the one form

    x_t = ratio * x_s - c * [ g_1 m_s + sum_k g_{k+1} D_k ],      D_k ~ h^k m^(k)(lam_s)         (*)

    lam-frame, noise:  ratio = alpha_t/alpha_s,  c = sigma_t,  g_k = g_k(+h)
    lam-frame, data:   ratio = sigma_t/sigma_s,  c = alpha_t,  g_k = g_k(-h)

    g_1(z) = e^z - 1,   g_{k+1}(z) = g_k(z)/z - 1/k!     (= z phi_{k+1}(z) in exponential-integrator notation)

The derivatives D_k are estimated from outputs m_j at other points at relative positions r_j; with the
polynomial m_j - m_s = sum_k r_j^k/k! D_k the combination is linear in the differences m_j - m_s, so an
update is (ratio, c, g_1, weights w_j) applied by ``combine``.

**The step from alpha_s = 0** (lam_s = -inf: a flow schedule at t = 1, a zero-terminal-SNR VP schedule at
t = 1) has no lam-frame: h is infinite. The data-prediction ODE is finite there in the variables
y = x/sigma, u = alpha/sigma = e^lam (DPM-Solver++ eq. 8 with the change of variable u = e^lam):

    dy/du = x0_hat,   so   x_t = (sigma_t/sigma_s) x_s + sigma_t int_{u_s}^{u_t} x0_hat du,

which is (*) in the **u-frame**: ratio = sigma_t/sigma_s, c = alpha_t, g_k = -1/k!, positions
r_j = u_j/u_t = exp(lam_j - lam_t) (u_s = 0). Its first-order step is DDIM,
x_t = alpha_t x0_hat + sigma_t x_s/sigma_s (exact in the limit alpha_s -> 0, since eps_hat = x_s/sigma_s
there), and an order-k singlestep update with the same fractions r_i of the step (now of u instead of lam)
is an explicit Runge-Kutta method of order k in (y, u). ``Frame`` gives whichever frame applies.

**The step to sigma_t = 0** (lam_t = +inf) is always x_t = alpha_t x0_hat (the h -> inf limit of every
update): ``first_order_to_data``.

All coefficients are float64 Python numbers; tensors stay in their dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..core.grids import check_grid
from ..core.schedules import Schedule

ALGORITHMS = ("dpmsolver", "dpmsolver++")


# ------------------------------------------------------------------------------------------------
# Coefficients
# ------------------------------------------------------------------------------------------------
def g_coefficients(z: float, count: int) -> list[float]:
    """[g_1(z), ..., g_count(z)] with g_1 = e^z - 1, g_{k+1} = g_k/z - 1/k! (DPM-Solver eq. 3.6 / DPM-Solver++
    §3.2 written as z phi_k(z)). z = -inf (a step from alpha = 0 in the lam-frame) gives its limit
    g_1 = -1, g_{k>1} = -1/(k-1)!, used by SDE-DPM-Solver++ for the data-only part of the step.

    For |z| < 1 the recursion cancels catastrophically, so the series g_k(z) = sum_{j>=1} z^j/(j+k-1)! is
    used instead (30 terms: truncation below 1e-30).
    """
    if z == -math.inf:
        return [-1.0] + [-1.0 / math.factorial(k - 1) for k in range(2, count + 1)]
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


def solve_small(a: list[list[float]], b: list[float]) -> list[float]:
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


def taylor_weights(rs: Sequence[float], gs: Sequence[float]) -> list[float]:
    """Weights w_j with sum_j w_j (m_j - m_0) = sum_k gs[k-1] D_k, where D_k ~ h^k m^(k) come from the
    polynomial through m_0 (at r = 0) and m_j (at r_j):

        m_j - m_0 = sum_{k=1}^{K} r_j^k / k! D_k,   j = 1..K.

    With gs = [g_2, ..., g_{K+1}] this makes (*) exact for polynomials of degree K in the frame's variable
    (order K + 1); DPM-Solver §3.2 / DPM-Solver++ §3 (the multistep weights of Alg. 2 and their
    higher-order extension).
    """
    k_max = len(rs)
    # A[j][k] = r_j^(k+1)/(k+1)!; D = A^{-1} diffs, so sum_k g_k D_k = (A^{-T} g) . diffs.
    a_t = [[rs[j] ** (k + 1) / math.factorial(k + 1) for j in range(k_max)] for k in range(k_max)]
    return solve_small(a_t, list(gs[:k_max]))


def combine(x: torch.Tensor, ratio: float, c: float, g1: float, ms: Sequence[torch.Tensor],
            weights: Sequence[float]) -> torch.Tensor:
    """The update (*): ratio * x - c * (g1 * m_0 + sum_j w_j (m_j - m_0)), in x's dtype."""
    out = ratio * x - (c * g1) * ms[0]
    for w, m in zip(weights, ms[1:]):
        if w != 0.0:
            out = out - (c * w) * (m - ms[0])
    return out


# ------------------------------------------------------------------------------------------------
# Points and frames
# ------------------------------------------------------------------------------------------------
class Point:
    """alpha, sigma, lam of one schedule time as float64 Python numbers (lam may be +-inf)."""

    __slots__ = ("t", "alpha", "sigma", "lam")

    def __init__(self, t: torch.Tensor, alpha: float, sigma: float, lam: float):
        self.t, self.alpha, self.sigma = t, alpha, sigma
        self.lam = math.inf if sigma == 0 else (-math.inf if alpha == 0 else lam)


def points(schedule: Schedule, ts: torch.Tensor) -> list[Point]:
    """A ``Point`` for each time of a 1-D float64 CPU tensor (coefficients in one vectorised pass)."""
    alpha, sigma, lam = (v.tolist() for v in (schedule.alpha(ts), schedule.sigma(ts), schedule.lam(ts)))
    return [Point(t, a, s, lm) for t, a, s, lm in zip(ts, alpha, sigma, lam)]


def points_at_lam(schedule: Schedule, lams: Sequence[float]) -> list[Point]:
    return points(schedule, schedule.t_of_lam(torch.tensor(list(lams), dtype=torch.float64)))


def grid_points(denoiser, ts) -> tuple[torch.Tensor, list[Point]]:
    """Validate a grid against the denoiser's schedule; return it (float64, CPU) and its points."""
    ts = check_grid(ts, denoiser.schedule).cpu()
    return ts, points(denoiser.schedule, ts)


def check_algorithm(algorithm: str) -> bool:
    """True for data prediction (dpmsolver++)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    return algorithm == "dpmsolver++"


class Frame:
    """The coefficients of (*) for one step s -> t with sigma_t > 0: ``ratio``, ``c``, ``g(count)`` and the
    relative position ``r(p)`` of another point p. ``data`` says which model output the frame expects
    (a u-frame always expects x0_hat). See the module docstring."""

    __slots__ = ("ratio", "c", "hh", "data", "_lam_s", "_lam_t", "_h")

    def __init__(self, p_s: Point, p_t: Point, data: bool):
        self._lam_s, self._lam_t = p_s.lam, p_t.lam
        if p_s.alpha == 0:  # u-frame
            self.ratio, self.c, self.hh, self.data, self._h = p_t.sigma / p_s.sigma, p_t.alpha, None, True, None
            return
        h = self._h = p_t.lam - p_s.lam
        self.data = data
        if data:
            self.ratio, self.c, self.hh = p_t.sigma / p_s.sigma, p_t.alpha, -h
        else:
            self.ratio, self.c, self.hh = p_t.alpha / p_s.alpha, p_t.sigma, h

    @property
    def u_frame(self) -> bool:
        return self.hh is None

    def g(self, count: int) -> list[float]:
        """[g_1, ..., g_count] of this frame (u-frame: -1/k!)."""
        if self.u_frame:
            return [-1.0 / math.factorial(k) for k in range(1, count + 1)]
        return g_coefficients(self.hh, count)

    def r(self, p: Point) -> float:
        """Relative position of p in the step: (lam_p - lam_s)/h, or u_p/u_t in the u-frame."""
        if self.u_frame:
            return math.exp(p.lam - self._lam_t)
        return (p.lam - self._lam_s) / self._h

    def lam_at(self, r: float) -> float:
        """lam of the point at relative position r (inverse of ``r``)."""
        if self.u_frame:
            return self._lam_t + math.log(r)
        return self._lam_s + r * self._h


def model_output(x0: torch.Tensor, x: torch.Tensor, p: Point, data: bool) -> torch.Tensor:
    """m = x0_hat (data prediction) or eps_hat = (x - alpha x0_hat)/sigma (noise prediction)."""
    return x0 if data else (x - p.alpha * x0) / p.sigma


def first_order_to_data(x0: torch.Tensor, p_t: Point) -> torch.Tensor:
    """The step to sigma_t = 0: x_t = alpha_t x0_hat (the h -> inf limit of every update (*))."""
    return p_t.alpha * x0


def first_order_from_noise(x: torch.Tensor, x0: torch.Tensor, p_s: Point, p_t: Point) -> torch.Tensor:
    """The first-order u-frame step from alpha_s = 0: x_t = alpha_t x0_hat + (sigma_t/sigma_s) x_s (DDIM;
    eps_hat = x_s/sigma_s exactly there)."""
    return p_t.alpha * x0 + (p_t.sigma / p_s.sigma) * x


def special_first_order(x: torch.Tensor, x0: torch.Tensor, p_s: Point, p_t: Point) -> torch.Tensor | None:
    """The first-order step at an end of the process (``first_order_to_data`` if sigma_t = 0, else
    ``first_order_from_noise`` if alpha_s = 0), or None for an ordinary step."""
    if p_t.sigma == 0:
        return first_order_to_data(x0, p_t)
    if p_s.alpha == 0:
        return first_order_from_noise(x, x0, p_s, p_t)
    return None


# ------------------------------------------------------------------------------------------------
# Multistep history
# ------------------------------------------------------------------------------------------------
def push_history(history: list, p: Point, m: torch.Tensor, keep: int) -> list:
    """Append (p, m) to a multistep history (newest last), keeping the newest ``keep`` entries. A point with
    infinite lam (alpha = 0) cannot serve as history in the lam-frame: it clears the history instead."""
    if not math.isfinite(p.lam):
        return []
    return (history + [(p, m)])[-keep:]


def multistep_weights(rs: Sequence[float], hh: float, solver_type: str, legacy_third_order: bool) -> list[float]:
    """Weights of (*) for a multistep update with earlier outputs at relative positions rs (< 0):
    one difference: g_1/(2 r) ("midpoint", DPM-Solver++ Alg. 2) or g_2/r ("taylor", diffusers' "heun");
    two or more: ``taylor_weights`` (``legacy_third_order`` halves g_3, as dpm-solver's and diffusers'
    3M do, which leaves them second order)."""
    g = g_coefficients(hh, len(rs) + 1)
    if len(rs) == 1:
        return [g[1] / rs[0]] if solver_type == "taylor" else [0.5 * g[0] / rs[0]]
    gs = list(g[1:])
    if legacy_third_order:
        gs[1] *= 0.5
    return taylor_weights(rs, gs)


def step_orders(n: int, order: int, lower_order_final: bool, orders: Sequence[int] | None,
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


def run_multistep(denoiser, x: torch.Tensor, ts, *, data: bool, orders: Sequence[int], update,
                  output=None, correct=None, cond: dict | None = None, callback=None) -> torch.Tensor:
    """The loop every multistep exponential integrator here shares (DPM-Solver++(kM) Alg. 2, UniPC, the momentum
    variants): one denoiser call per step, the exact end-point steps, the history and the warm-up.

    For step i: x0_hat = D(x, t_i); ``correct(i, x, x0, p_s)`` may replace x (UniPC's corrector of the previous
    step). A step to sigma = 0 or from alpha = 0 is ``special_first_order`` and clears the history; any
    other step pushes (p_s, m) with m = ``output(x0, x, p_s)`` (default: ``model_output``) and takes
    ``update(i, x, used, p_s, p_t)`` with ``used`` the newest k entries (newest first),
    k = min(orders[i], history length): the warm-up. 1 NFE per step. Returns x at ts[-1].
    """
    cond = cond or {}
    ts, pts = grid_points(denoiser, ts)
    keep = max(orders)
    history: list[tuple[Point, torch.Tensor]] = []  # (point, m), newest last
    for i in range(len(ts) - 1):
        p_s, p_t = pts[i], pts[i + 1]
        x0 = denoiser(x, p_s.t, **cond)
        if correct is not None:
            x = correct(i, x, x0, p_s)
        special = special_first_order(x, x0, p_s, p_t)
        if special is not None:
            x, k, history = special, 1, []
        else:
            m = model_output(x0, x, p_s, data) if output is None else output(x0, x, p_s)
            history = push_history(history, p_s, m, keep)
            k = min(orders[i], len(history))
            x = update(i, x, history[::-1][:k], p_s, p_t)
        emit(callback, i, p_s.t, p_t.t, x, x0, k)
    return x


def emit(callback, i, s, t, x, x0, order):
    """Call ``callback`` (if any) with the step dict ``{"i", "t", "t_next", "x", "x0_hat", "order"}``."""
    if callback is not None:
        callback({"i": i, "t": s, "t_next": t, "x": x, "x0_hat": x0, "order": order})


# ------------------------------------------------------------------------------------------------
# Runge-Kutta steps from alpha = 0 in the u-frame (for samplers that do not step in lam)
# ------------------------------------------------------------------------------------------------
RK_FROM_NOISE = ("euler", "heun", "rk4")


def rk_step_from_noise(denoiser, x: torch.Tensor, x0_s: torch.Tensor, p_s: Point, p_t: Point, method: str,
                       cond: dict) -> torch.Tensor:
    """One explicit Runge-Kutta step of dy/du = x0_hat (y = x/sigma, u = alpha/sigma; see the module
    docstring) from alpha_s = 0 (u_s = 0) to t with sigma_t > 0, given x0_s = x0_hat(x_s, s):

        euler: x_t = (sigma_t/sigma_s) x_s + alpha_t k_1                                    (= DDIM, 0 NFE)
        heun:  x_t = (sigma_t/sigma_s) x_s + alpha_t (k_1 + k_2)/2, k_2 at the Euler point   (1 NFE)
        rk4:   classical RK4 with stages at u_t/2 (lam_t - log 2) and u_t                    (3 NFE)

    The NFE listed are the calls beyond x0_s. Used where a sampler's own variable is singular at alpha = 0
    (Karras' sigma~ = sigma/alpha, PLMS's transfer function) to keep its order and its NFE per step.
    """
    if method not in RK_FROM_NOISE:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(RK_FROM_NOISE)}")
    base = (p_t.sigma / p_s.sigma) * x

    def state(p: Point, slope: torch.Tensor) -> torch.Tensor:
        return ((p.sigma / p_s.sigma) * x + p.alpha * slope).to(x.dtype)

    if method == "euler":
        return (base + p_t.alpha * x0_s).to(x.dtype)
    if method == "heun":
        k2 = denoiser(state(p_t, x0_s), p_t.t, **cond)
        return (base + p_t.alpha * 0.5 * (x0_s + k2)).to(x.dtype)
    p_m = points_at_lam(denoiser.schedule, [p_t.lam - math.log(2.0)])[0]
    # state at u_m = u_t/2 with slope k: y_s + u_m k, i.e. x = (sigma_m/sigma_s) x_s + alpha_m k
    k2 = denoiser(state(p_m, x0_s), p_m.t, **cond)
    k3 = denoiser(state(p_m, k2), p_m.t, **cond)
    k4 = denoiser(state(p_t, k3), p_t.t, **cond)
    return (base + p_t.alpha * (x0_s + 2 * k2 + 2 * k3 + k4) / 6).to(x.dtype)


__all__ = ["ALGORITHMS", "Frame", "Point", "RK_FROM_NOISE", "check_algorithm", "combine", "emit",
           "first_order_from_noise", "first_order_to_data", "g_coefficients", "grid_points",
           "model_output", "multistep_weights", "points", "points_at_lam", "push_history",
           "rk_step_from_noise", "run_multistep", "solve_small", "special_first_order", "step_orders",
           "taylor_weights"]
