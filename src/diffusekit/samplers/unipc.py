"""UniPC: unified predictor-corrector (Zhao, Bai, Rao, Zhou & Lu 2023, arXiv 2302.04867), as a pure function.

UniPC-p pairs the multistep predictor UniP-p with the corrector UniC-p. The corrector re-solves the
previous step with the model output just evaluated at the predicted point, so it raises the order by one
at no extra NFE (the corrected point is not re-evaluated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..core.denoiser import Denoiser
from ..core.noise import GeneratorArg
from ..core.grids import check_grid
from .exponential import (Frame, check_algorithm, combine, g_coefficients, model_output, run_multistep, solve_small,
                          step_orders)
from .registry import register_variant

VARIANTS = ("bh1", "bh2")


def _b_of_h(hh: float, variant: str) -> float:
    """B(h): bh1 = hh, bh2 = e^hh - 1 (the paper's two choices; hh = -h for data prediction, +h for noise)."""
    return hh if variant == "bh1" else math.expm1(hh)


def _unipc_weights(rs: Sequence[float], hh: float, variant: str) -> list[float]:
    """Weights w_m of x_t = ratio x - c [g_1 m_0 + sum_m w_m (m_m - m_0)] for outputs at relative positions
    rs (r_m = (lam_m - lam_s)/h; negative for history, 1 for the corrector's new point).

    UniPC (paper §3): w_m = B(h) a_m / r_m with a = R^{-1} Phi / B(h), R[k][m] = r_m^k and
    Phi_k = (k + 1)! g_{k+2}(hh), k = 0..K-1. As in the reference code, a single difference uses
    a_1 = 1/2 instead (UniP-2 and UniC-1), which keeps the order since Phi_0/B(h) = 1/2 + O(h); this is
    where bh1 and bh2 differ. With K >= 2 points the B(h) factors cancel and the update is the exact
    polynomial fit (the exponential Adams-Bashforth/-Moulton weights).
    """
    big_b = _b_of_h(hh, variant)
    if len(rs) == 1:
        return [0.5 * big_b / rs[0]]
    g = g_coefficients(hh, len(rs) + 1)
    r_mat = [[r**k for r in rs] for k in range(len(rs))]
    phi = [math.factorial(k + 1) * g[k + 1] / big_b for k in range(len(rs))]
    return [big_b * a / r for a, r in zip(solve_small(r_mat, phi), rs)]


def sample_unipc(denoiser: Denoiser, x: torch.Tensor, ts, *, order: int = 2, variant: str = "bh2",
                 algorithm: str = "dpmsolver++", use_corrector: bool = True, disable_corrector: Sequence[int] = (),
                 lower_order_final: bool = False, orders: Sequence[int] | None = None, cond: dict | None = None,
                 generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """UniPC-p (Zhao, Bai, Rao, Zhou & Lu 2023, arXiv 2302.04867: multistep UniP-p + UniC-p, §3).

    With m the data prediction x0_hat (``algorithm="dpmsolver++"``, the paper's UniPC) or noise prediction
    eps_hat (``"dpmsolver"``), h = lam_t - lam_s, ratio/c/hh/g_k as in ``dpm_solver`` (x_t = ratio x - c [...]),
    D_m = m_m - m_s for earlier outputs at r_m = (lam_m - lam_s)/h:

        UniP-p (predictor):
            x~_t = ratio x_s - c g_1 m_s - c B(h) sum_{m=1}^{p-1} a_m D_m / r_m
        UniC-p (corrector), once m_t = model(x~_t, t) is known, adding r_p = 1, D_p = m_t - m_s:
            x_t^c = ratio x_s - c g_1 m_s - c B(h) sum_{m=1}^{p} a^c_m D_m / r_m

    with a solving R_p a = Phi_p/B(h) (see ``_unipc_weights``; a = 1/2 for a single difference) and
    B(h) = hh ("bh1") or e^hh - 1 ("bh2"). The corrected x_t^c replaces x~_t at the start of the next
    step; m_t (evaluated at x~_t) is kept as history, so the corrector costs no NFE.

    Order: UniP-p is order p; with the corrector the method is order p + 1 (nominal: the warm-up steps at
    the noisy end are of lower order, where the model is nearly affine, as for multistep DPM-Solver).
    Warm-up: step i uses at most order i + 1; its corrector uses the order of the predictor it corrects.
    ``lower_order_final=True`` uses order min(order, n - i) at step i of n (diffusers' UniPC default, with
    no step-count threshold); ``orders`` (one per step) overrides ``order``. ``use_corrector=False`` gives UniP alone;
    ``disable_corrector`` lists the steps i whose result is not corrected (diffusers' option).
    Final step: its predictor result is returned uncorrected (correcting it would cost one more NFE). A
    step to t = 0 is the first-order step x_t = alpha_t x0_hat; a step from alpha_s = 0 is first order,
    uncorrected, and leaves no history. 1 NFE per step. ``generator`` is unused.

    ``callback`` gets ``{"i", "t", "t_next", "x", "x0_hat", "order"}`` after each step, x being the
    predictor's (uncorrected) result. Shapes: x (B, ...); ts (n + 1,) float64.
    """
    data = check_algorithm(algorithm)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    n = len(check_grid(ts, denoiser.schedule)) - 1
    skip = {int(i) for i in disable_corrector}
    pending = {}  # step i -> (x_s, frame of s -> t, [(point, m)] used by its predictor, newest first)

    def update(i, x, used, p_s, p_t):
        frame = Frame(p_s, p_t, data)
        rs = [frame.r(p) for p, _ in used[1:]]
        pending.clear()
        pending[i] = (x, frame, used)
        return combine(x, frame.ratio, frame.c, frame.g(1)[0], [m for _, m in used],
                       _unipc_weights(rs, frame.hh, variant) if rs else [])

    def correct(i, x, x0, p_s):
        if not use_corrector or (i - 1) in skip or (i - 1) not in pending:
            return x
        x_prev, frame, used = pending[i - 1]
        rs = [frame.r(p) for p, _ in used[1:]] + [1.0]
        # m at the predicted point (the corrected point is never evaluated): the corrector costs no NFE
        ms = [m for _, m in used] + [model_output(x0, x, p_s, data)]
        return combine(x_prev, frame.ratio, frame.c, frame.g(1)[0], ms, _unipc_weights(rs, frame.hh, variant))

    return run_multistep(denoiser, x, ts, data=data, orders=step_orders(n, order, lower_order_final, orders),
                         update=update, correct=correct, cond=cond, callback=callback)


def _register(name: str, variant: str, order: int):
    return register_variant(name, sample_unipc, declared_order=order + 1, nfe_per_step=1, variant=variant, order=order)


sample_unipc_bh1_1 = _register("unipc_bh1_1", "bh1", 1)
sample_unipc_bh1_2 = _register("unipc_bh1_2", "bh1", 2)
sample_unipc_bh1_3 = _register("unipc_bh1_3", "bh1", 3)
sample_unipc_bh2_1 = _register("unipc_bh2_1", "bh2", 1)
sample_unipc_bh2_2 = _register("unipc_bh2_2", "bh2", 2)
sample_unipc_bh2_3 = _register("unipc_bh2_3", "bh2", 3)

__all__ = ["VARIANTS", "sample_unipc", "sample_unipc_bh1_1", "sample_unipc_bh1_2", "sample_unipc_bh1_3",
           "sample_unipc_bh2_1", "sample_unipc_bh2_2", "sample_unipc_bh2_3"]
