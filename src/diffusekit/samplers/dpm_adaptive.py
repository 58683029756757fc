"""DPM-Solver with adaptive step size (Lu et al. 2022, arXiv 2206.00927, §3.3 and Appendix C): the embedded
pairs DPM-Solver-12 and DPM-Solver-23. The update (*) and its frames are in ``exponential``.
"""

from __future__ import annotations

import math

import torch

from ..core.denoiser import Denoiser
from ..core.noise import GeneratorArg
from .dpm_singlestep import intermediate_rs, singlestep_chain, singlestep_weights
from .exponential import (Frame, check_algorithm, combine, emit, grid_points, model_output, points_at_lam)


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

    The ends of lam: if ts[-1] = 0 (lam = +inf), the adaptive part ends at ts[-2] and one first-order
    data-prediction step x = alpha x0_hat finishes (1 NFE); if alpha = 0 at ts[0] (lam = -inf), one
    order-``order`` singlestep update in the u-frame (``exponential``) goes to ts[1] first (``order`` NFE)
    and the adaptive part starts there. So a grid [t_start, 0] (or [1, t_end] on a flow schedule) is
    rejected: pass [t_start, t_min, 0] (or [1, t_1, ..., t_end]).

    NFE: variable. Pass ``stats={}`` to receive ``nfe``, ``accepted``, ``rejected`` and ``ts`` (accepted
    times). ``callback`` is called after each accepted step. Raises RuntimeError past ``max_nfe``.
    """
    data = check_algorithm(algorithm)
    if order not in (2, 3):
        raise ValueError(f"order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23); got {order}")
    if not (atol > 0 and rtol >= 0 and h_init > 0 and 0 < theta <= 1):
        raise ValueError("need atol > 0, rtol >= 0, h_init > 0 and 0 < theta <= 1")
    cond = cond or {}
    sched = denoiser.schedule
    ts, pts = grid_points(denoiser, ts)
    from_noise, denoise_to_zero = pts[0].alpha == 0, pts[-1].sigma == 0
    if len(pts) < 2 + int(from_noise) + int(denoise_to_zero):
        raise ValueError("the adaptive solver needs a finite lam at both ends of its adaptive part; pass a grid "
                         "with an interior point after an alpha = 0 start and before t = 0, e.g. "
                         "[t_start, t_min, 0] or [1, t_1, t_end]")
    p_end = pts[-2] if denoise_to_zero else pts[-1]
    info = {"nfe": 0, "accepted": 0, "rejected": 0, "ts": [float(pts[0].t)]}

    def call(u, p):
        info["nfe"] += 1
        return denoiser(u, p.t, **cond)

    step = 0
    p_s = pts[0]
    if from_noise:
        p_t = pts[1]
        x0 = call(x, p_s)
        frame = Frame(p_s, p_t, True)
        inner = points_at_lam(sched, [frame.lam_at(r) for r in intermediate_rs(order, None, None)])
        info["nfe"] += len(inner)
        x = singlestep_chain(denoiser, x, x0, p_s, inner, p_t, True, "dpmsolver", cond)[0][-1]
        emit(callback, step, p_s.t, p_t.t, x, x0, order)
        step += 1
        info["ts"].append(float(p_t.t))
        p_s = p_t

    rs = [0.5] if order == 2 else [1.0 / 3.0, 2.0 / 3.0]
    x_prev, h = x, float(h_init)
    x0_s = None
    while p_s.lam < p_end.lam:
        if x0_s is None:  # m_s does not change after a rejected attempt
            x0_s = call(x, p_s)
        m_s = model_output(x0_s, x, p_s, data)
        p_t = p_end if p_s.lam + h >= p_end.lam else points_at_lam(sched, [p_s.lam + h])[0]
        frame = Frame(p_s, p_t, data)
        inner = points_at_lam(sched, [frame.lam_at(r) for r in rs])
        info["nfe"] += len(inner)
        if info["nfe"] > max_nfe:
            raise RuntimeError(f"adaptive DPM-Solver exceeded max_nfe={max_nfe}; loosen atol/rtol")
        us, _, ms = singlestep_chain(denoiser, x, m_s, p_s, inner, p_t, data, "dpmsolver", cond)
        x_high = us[-1]
        # the lower-order partner: DPM-Solver-1, or DPM-Solver-2 through s_1 (r_1 = 1/3)
        g = frame.g(2)
        low_weights = [] if order == 2 else singlestep_weights(2, 1, [rs[0]], g, "dpmsolver")
        x_low = combine(x, frame.ratio, frame.c, g[0], ms[:order - 1], low_weights)
        delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
        e = float(((x_high - x_low) / delta).flatten(1).pow(2).mean(1).sqrt().max())
        if e <= 1.0:
            x_prev, x = x_low, x_high
            emit(callback, step, p_s.t, p_t.t, x, x0_s, order)
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
        emit(callback, step, p_end.t, pts[-1].t, x, x0, 1)
        info["ts"].append(0.0)
    if stats is not None:
        stats.update(info)
    return x


__all__ = ["sample_dpm_solver_adaptive"]
