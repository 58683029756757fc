"""Momentum samplers: heavy ball (HB) and generalized heavy ball (GHVB) on PLMS and DPM-Solver++.

Paper: Wizadwongsa, Chinchuthakun, Khungurn, Raj & Suwajanakorn 2023, "Diffusion Sampling with Momentum for
Mitigating Divergence Artifacts", ICLR 2024, arXiv 2307.11118 (Alg. 1 = HB, eq. 14; Alg. 2 = GHVB, eq. 19).
Coefficients follow the authors' reference code (sWizad/momentum-diffusion, ``AdamBmixer``), whose indices
are right where the printed algorithms have typos.

High-order multistep methods have small stability regions; at low NFE and high guidance the effective
step leaves them and samples blow up ("divergence artifacts"). Momentum enlarges the stability region.

In PLMS's variables x~ = x/alpha, sigma~ = sigma/alpha the PF-ODE is dx~/dsigma~ = eps_hat(x~, sigma~), and a
step delta = sigma~_{n+1} - sigma~_n (< 0) is applied through the DDIM transfer function
x_{n+1} = alpha_{n+1} (x_n/alpha_n + delta * e_step) (``plms.transfer``; a step from alpha = 0 is the
u-frame Euler step of ``exponential`` instead, and its e_n stays out of the mixer). With e_n = eps_hat at step n,
c = min(order, n + 1) values of history, and AB_c / GHVB_c weights listed by ``ghvb_coefficients``:

* HB (Alg. 1):    e^ = AB_c(e_n, e_{n-1}, ...);  v_n = e^ (n = 0),  v_n = (1 - beta) v_{n-1} + beta e^;
                  e_step = v_n.                          First order for beta < 1 (paper Theorem 1).
* GHVB (Alg. 2):  v_n = e_n (n = 0),  v_n = (1 - beta) v_{n-1} + beta e_n;
                  e_step = (1/beta) sum_j b_j(beta) v_{n-j}  (average first, then combine).

beta = 1 gives PLMS-k exactly (bit for bit here). A "momentum number" m (the paper's configs: GHVB 3.8,
HB 3.9, ...) means order ceil(m) and beta = frac(m), or 1 for integers (``momentum_number``).

DPM-Solver++(2M) with HB (reference ``MomentumDPMSolverMultistepScheduler``, midpoint only): with the data
prediction m_i = x0_hat, h = lam_t - lam_s and r_0 = h_0/h,

    D = m_0 + (m_0 - m_1)/(2 r_0);   v = D (first second-order step),  v <- (1 - beta) v + beta D;
    x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) v.

Warm-up (lower-order) steps and the final step to t = 0 are plain DPM-Solver++ steps that leave v alone,
as in the reference. Here D is, for any order k and solver type, the bracket of ``dpm_solver``'s update (*)
divided by g_1 (order 1 and 3 and "taylor" are our extensions; order 2 "midpoint" is the paper's).

DPM-Solver++(2M) with GHVB is our extension (not in the paper or its code): average the data predictions,
v <- (1 - beta) v + beta m_0 (v = m_0 at the first step), then extrapolate the averages with the GHVB-2
weight, D = v_0 + (2 - beta)/(2 beta) (v_0 - v_1)/r_0 (= the midpoint D at beta = 1; on equal steps this is
the GHVB-2 mixer of ``ghvb_coefficients``).

Orders (declared for the registered defaults; measured in tests/test_momentum.py on an exact GMM denoiser):
HB is first order (beta < 1). GHVB-r is order r in the paper (Theorem 2), but the reference starts with an
Euler step and v_0 = e_0 (a transient of size O(h) (1 - beta)^n in v), and PLMS's fixed weights assume equal
steps in sigma~; both cap the global order at 2, which is what we declare and measure.

``callback``, if given, receives ``{"i", "t", "t_next", "x", "x0_hat"}`` after each step (plus ``"order"``
for the DPM-Solver++ variants).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..core.denoiser import Denoiser
from ..core.grids import check_grid
from ..core.noise import GeneratorArg
from .exponential import (Frame, combine, first_order_to_data, multistep_weights, points, rk_step_from_noise,
                          run_multistep, step_orders)
from .plms import transfer
from .registry import register_sampler

METHODS = ("hb", "ghvb")
MAX_ORDER = 5  # the reference mixer's largest order


def ghvb_coefficients(count: int, beta: float) -> list[float]:
    """GHVB weights (1/beta) b_j(beta) for the ``count`` newest velocities, newest first (float64):

        1: [beta]
        2: [2 + beta, -(2 - beta)] / 2
        3: [18 + 5 beta, -(24 - 8 beta), 6 - beta] / 12
        4: [46 + 9 beta, -(78 - 19 beta), 42 - 5 beta, -(10 - beta)] / 24
        5: [1650 + 251 beta, -(3420 - 646 beta), 2880 - 264 beta, -(1380 - 106 beta), 270 - 19 beta] / 720

    each divided by beta (arXiv 2307.11118 eq. 19; reference ``AdamBmixer``). beta = 1 gives the
    Adams-Bashforth weights, bit for bit equal to ``plms.AB_COEFFICIENTS`` for count <= 4.
    """
    b = float(beta)
    table = {
        1: (b,),
        2: ((2 + b) / 2, -(2 - b) / 2),
        3: ((18 + 5 * b) / 12, -(24 - 8 * b) / 12, (6 - b) / 12),
        4: ((46 + 9 * b) / 24, -(78 - 19 * b) / 24, (42 - 5 * b) / 24, -(10 - b) / 24),
        5: ((1650 + 251 * b) / 720, -(3420 - 646 * b) / 720, (2880 - 264 * b) / 720, -(1380 - 106 * b) / 720,
            (270 - 19 * b) / 720),
    }
    if count not in table:
        raise ValueError(f"count must be 1..{MAX_ORDER}; got {count!r}")
    return [w / b for w in table[count]]


def momentum_number(m: float) -> tuple[int, float]:
    """The paper's momentum number m -> (order, beta): order ceil(m), beta = frac(m), or 1 for integers.
    E.g. 3.8 -> (4, 0.8), 1.9 -> (2, 0.9), 4 -> (4, 1.0)."""
    m = float(m)
    if not 0 < m <= MAX_ORDER:
        raise ValueError(f"momentum number must be in (0, {MAX_ORDER}]; got {m}")
    order = math.ceil(m)
    beta = m - math.floor(m)
    return order, (1.0 if beta == 0 else beta)


def _check_options(method: str, order: int, beta: float, max_order: int) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown momentum method {method!r}; allowed: {', '.join(METHODS)}")
    if isinstance(order, bool) or int(order) != order or not 1 <= order <= max_order:
        raise ValueError(f"order must be an integer in 1..{max_order}; got {order!r}")
    if not (isinstance(beta, (int, float)) and 0 < beta <= 1):
        raise ValueError(f"beta must be a number in (0, 1] (1 = no momentum); got {beta!r}")


class MomentumMixer:
    """Turn the newest derivative e_n into the step direction of HB or GHVB on r-step Adams-Bashforth.

    One instance per solve: it holds the velocity v and the last ``order`` history values (see the module
    docstring for the updates). Works on tensors or floats, in their dtype; coefficients are float64.
    """

    def __init__(self, method: str, order: int, beta: float):
        _check_options(method, order, beta, MAX_ORDER)
        self.method, self.order, self.beta = method, int(order), float(beta)
        self.v = None
        self.history: list = []  # oldest first: e (HB) or v (GHVB)

    def _mix(self, beta: float):
        weights = ghvb_coefficients(len(self.history), beta)
        return sum(c * h for c, h in zip(weights, reversed(self.history)))

    def _average(self, value):
        if self.v is None or self.beta == 1.0:
            return value
        return (1.0 - self.beta) * self.v + self.beta * value

    def __call__(self, e):
        if self.method == "hb":
            self.history = (self.history + [e])[-self.order:]
            self.v = self._average(self._mix(1.0))
            return self.v
        self.v = self._average(e)
        self.history = (self.history + [self.v])[-self.order:]
        return self._mix(self.beta)


# ------------------------------------------------------------------------------------------------
# PLMS with momentum
# ------------------------------------------------------------------------------------------------
def _sample_plms_momentum(method: str, denoiser: Denoiser, x: torch.Tensor, ts, *, order: int, beta: float,
                          cond: dict | None, callback) -> torch.Tensor:
    mixer = MomentumMixer(method, order, beta)
    cond = cond or {}
    sched = denoiser.schedule
    ts = check_grid(ts, sched).to(x.device)
    for i in range(len(ts) - 1):
        s, t = ts[i], ts[i + 1]
        x0 = denoiser(x, s, **cond)
        if sched.alpha(s) == 0:  # pure noise (only ts[0]): the u-frame Euler step; e stays out of the mixer
            p_s, p_t = points(sched, ts[i:i + 2])
            x = first_order_to_data(x0, p_t).to(x.dtype) if p_t.sigma == 0 else \
                rk_step_from_noise(denoiser, x, x0, p_s, p_t, "euler", cond)
        else:
            e = (x - sched.alpha(s) * x0) / sched.sigma(s)
            x = transfer(sched, x, mixer(e), s, t)
        if callback is not None:
            callback({"i": i, "t": s, "t_next": t, "x": x, "x0_hat": x0})
    return x


@register_sampler("plms_hb", order=1, nfe_per_step=1, stochastic=False)
def sample_plms_hb(denoiser: Denoiser, x: torch.Tensor, ts, *, order: int = 4, beta: float = 0.8,
                   cond: dict | None = None, generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """PLMS-k with Polyak's heavy ball (Wizadwongsa et al. 2023, arXiv 2307.11118, Alg. 1, eq. 14):

        e_n = eps_hat(x_n, t_n),   e^ = AB_c(e_n, ..., e_{n-c+1}),   c = min(order, n + 1)
        v_n = (1 - beta) v_{n-1} + beta e^   (v_0 = e^),    x_{n+1} = phi(x_n, v_n, t_n -> t_{n+1})

    phi is PLMS's DDIM transfer. ``order`` 1..5 (AB order), ``beta`` in (0, 1]; beta = 1 is
    ``sample_plms(order=order, warmup="ab")`` bit for bit (order <= 4). Defaults: PLMS4 with HB 0.8
    (momentum number 3.8 with method "hb"). Order 1 (beta < 1, Theorem 1); 1 NFE per step.
    ``generator`` is unused. Shapes: x (B, ...) at ts[0]; returns x at ts[-1] in x's shape and dtype.
    """
    return _sample_plms_momentum("hb", denoiser, x, ts, order=order, beta=beta, cond=cond, callback=callback)


@register_sampler("plms_ghvb", order=2, nfe_per_step=1, stochastic=False)
def sample_plms_ghvb(denoiser: Denoiser, x: torch.Tensor, ts, *, order: int = 4, beta: float = 0.8,
                     cond: dict | None = None, generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """Generalized heavy ball on PLMS (Wizadwongsa et al. 2023, arXiv 2307.11118, Alg. 2, eq. 19):

        v_n = (1 - beta) v_{n-1} + beta e_n   (v_0 = e_0),
        e_step = (1/beta) sum_{j<c} b_j(beta) v_{n-j},   c = min(order, n + 1),
        x_{n+1} = phi(x_n, e_step, t_n -> t_{n+1})

    with b_j from ``ghvb_coefficients``. ``order`` 1..5, ``beta`` in (0, 1]; beta = 1 is PLMS-k (bit for
    bit, order <= 4). Defaults: GHVB 3.8 (order 4, beta 0.8), the paper's DiT/SD setting.

    Order: the paper's Theorem 2 gives r = ``order``; with the reference's Euler start (v_0 = e_0) and
    fixed equal-step weights the measured global order is min(order, 2) (declared 2). 1 NFE per step.
    ``generator`` is unused. Shapes as ``sample_plms_hb``.
    """
    return _sample_plms_momentum("ghvb", denoiser, x, ts, order=order, beta=beta, cond=cond, callback=callback)


# ------------------------------------------------------------------------------------------------
# DPM-Solver++ (multistep) with momentum
# ------------------------------------------------------------------------------------------------
def _sample_dpm_pp_momentum(method: str, denoiser: Denoiser, x: torch.Tensor, ts, *, order: int, beta: float,
                            solver_type: str, lower_order_final: bool, cond: dict | None,
                            callback) -> torch.Tensor:
    max_order = 3 if method == "hb" else 2
    _check_options(method, order, beta, max_order)
    if solver_type not in ("midpoint", "taylor") or (method == "ghvb" and solver_type != "midpoint"):
        allowed = "midpoint, taylor" if method == "hb" else "midpoint"
        raise ValueError(f"unknown solver_type {solver_type!r} for {method}; allowed: {allowed}")
    n = len(check_grid(ts, denoiser.schedule)) - 1
    state = {"v": None}  # the velocity: a running average of D (HB) or of x0_hat (GHVB)

    def average(value):
        v = state["v"]
        state["v"] = value if (v is None or beta == 1.0) else (1.0 - beta) * v + beta * value
        return state["v"]

    def update(i, x, used, p_s, p_t):  # used: newest first, x0_hat (HB) or its running average (GHVB)
        frame = Frame(p_s, p_t, True)
        k, ms, rs = len(used), [m for _, m in used], [frame.r(p) for p, _ in used[1:]]
        g1 = frame.g(1)[0]
        if method == "hb":
            weights = multistep_weights(rs, frame.hh, solver_type, False) if rs else []
            if k < order:  # warm-up or lower-order final step: plain, v untouched
                return combine(x, frame.ratio, frame.c, g1, ms, weights)
            d = ms[0]
            for w, m in zip(weights, ms[1:]):
                d = d + (w / g1) * (m - ms[0])
            return frame.ratio * x - (frame.c * g1) * average(d)
        d = ms[0] if k == 1 else ms[0] + ((2.0 - beta) / (2.0 * beta) / rs[0]) * (ms[1] - ms[0])
        return frame.ratio * x - (frame.c * g1) * d

    output = (lambda x0, x, p: x0) if method == "hb" else (lambda x0, x, p: average(x0))
    return run_multistep(denoiser, x, ts, data=True, orders=step_orders(n, order, lower_order_final, None),
                         update=update, output=output, cond=cond, callback=callback)


@register_sampler("dpm_solver_pp_hb", order=1, nfe_per_step=1, stochastic=False)
def sample_dpm_solver_pp_hb(denoiser: Denoiser, x: torch.Tensor, ts, *, order: int = 2, beta: float = 0.8,
                            solver_type: str = "midpoint", lower_order_final: bool = False,
                            cond: dict | None = None, generator: GeneratorArg = None,
                            callback=None) -> torch.Tensor:
    """DPM-Solver++(kM) with heavy ball (Wizadwongsa et al. 2023, arXiv 2307.11118, §4 and reference
    ``MomentumDPMSolverMultistepScheduler``; DPM-Solver++: Lu et al. 2022, arXiv 2211.01095, Alg. 2):

        D   = m_0 + sum_j (w_j/g_1)(m_j - m_0)       (k = 2 midpoint: D = m_0 + (m_0 - m_1)/(2 r_0))
        v   = (1 - beta) v + beta D                  (v = D at the first full-order step)
        x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) v

    m = x0_hat, w_j the multistep weights of ``sample_dpm_solver_multistep``. Warm-up steps (fewer than
    ``order`` outputs), lower-order final steps and the step to t = 0 are plain and leave v alone.
    ``order`` 1..3 (2 is the paper's; 1, 3 and ``solver_type="taylor"`` are extensions); beta = 1 is
    ``sample_dpm_solver_multistep(algorithm="dpmsolver++")`` up to rounding. Defaults: DPM++(2M) HB 0.8
    (the paper's Table 1 setting). Order 1 (beta < 1); 1 NFE per step. ``generator`` is unused.
    Shapes: x (B, ...); ts (n + 1,) float64. Returns x at ts[-1], in x's dtype.
    """
    return _sample_dpm_pp_momentum("hb", denoiser, x, ts, order=order, beta=beta, solver_type=solver_type,
                                   lower_order_final=lower_order_final, cond=cond, callback=callback)


@register_sampler("dpm_solver_pp_ghvb", order=2, nfe_per_step=1, stochastic=False)
def sample_dpm_solver_pp_ghvb(denoiser: Denoiser, x: torch.Tensor, ts, *, order: int = 2, beta: float = 0.8,
                              lower_order_final: bool = False, cond: dict | None = None,
                              generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """DPM-Solver++(2M) with generalized heavy ball: OUR EXTENSION of arXiv 2307.11118 (Alg. 2) to the
    exponential integrator of DPM-Solver++ (arXiv 2211.01095); not in the paper or its code.

        v_i = (1 - beta) v_{i-1} + beta x0_hat_i     (v_0 = x0_hat_0)
        D   = v_0 + (2 - beta)/(2 beta) (v_0 - v_1)/r_0      (D = v_0 on the first step or order 1)
        x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) D

    On equal lam steps D is the GHVB-2 mixer of ``ghvb_coefficients``; beta = 1 is DPM-Solver++(2M)
    (midpoint) up to rounding. ``order`` 1 or 2 (order 1 is plain EMA of x0_hat, first order); the step
    to t = 0 is plain. Order 2 (declared; measured); 1 NFE per step. ``generator`` is unused.
    Shapes: x (B, ...); ts (n + 1,) float64. Returns x at ts[-1], in x's dtype.
    """
    return _sample_dpm_pp_momentum("ghvb", denoiser, x, ts, order=order, beta=beta, solver_type="midpoint",
                                   lower_order_final=lower_order_final, cond=cond, callback=callback)


# ------------------------------------------------------------------------------------------------
# The same mixers on a plain ODE (for the paper's toy-ODE stability illustration)
# ------------------------------------------------------------------------------------------------
def solve_ode_momentum(f: Callable, x0: torch.Tensor, t0: float, t1: float, steps: int, *, method: str = "hb",
                       order: int = 2, beta: float = 1.0) -> torch.Tensor:
    """Integrate dx/dt = f(x, t) from t0 to t1 in ``steps`` equal steps with HB or GHVB on AB-``order``
    (beta = 1: plain Adams-Bashforth with an AB1, AB2, ... start), using the same ``MomentumMixer`` as the
    samplers: x_{n+1} = x_n + delta * mixer(f(x_n, t_n)), delta = (t1 - t0)/steps. Returns the trajectory,
    shape (steps + 1, *x0.shape)."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    mixer = MomentumMixer(method, order, beta)
    delta = (float(t1) - float(t0)) / steps
    xs = [x0]
    for i in range(int(steps)):
        xs.append(xs[-1] + delta * mixer(f(xs[-1], float(t0) + i * delta)))
    return torch.stack(xs)


__all__ = ["METHODS", "MomentumMixer", "ghvb_coefficients", "momentum_number", "sample_dpm_solver_pp_ghvb",
           "sample_dpm_solver_pp_hb", "sample_plms_ghvb", "sample_plms_hb", "solve_ode_momentum"]
