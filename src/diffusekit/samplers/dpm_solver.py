"""DPM-Solver, DPM-Solver++ and SDE-DPM-Solver++: the registered variants, over the modules that implement them.

Papers: DPM-Solver (Lu, Zhou, Bao, Chen, Li & Zhu 2022, arXiv 2206.00927) and DPM-Solver++ (Lu, Zhou, Bao,
Chen, Li & Zhu 2022, arXiv 2211.01095).

All solvers integrate the probability-flow ODE exactly in its linear part, in lam = log(alpha/sigma)
(DPM-Solver eq. 3.4; its data-prediction counterpart in DPM-Solver++ §3). Every update has the one form

    x_t = ratio * x_s - c * [ g_1(hh) m_s + sum_k g_{k+1}(hh) h^k m^(k)(lam_s) ]              (*)

    dpmsolver:    ratio = alpha_t/alpha_s,  c = sigma_t,  hh = +h,  m = eps_hat
    dpmsolver++:  ratio = sigma_t/sigma_s,  c = alpha_t,  hh = -h,  m = x0_hat

    g_1(z) = e^z - 1,   g_{k+1}(z) = g_k(z)/z - 1/k!     (= z phi_{k+1}(z) in exponential-integrator notation)

with its coefficients, frames and end-point cases in ``exponential``. The lam-derivatives h^k m^(k) are
estimated from model outputs at other points: intermediate points of the step (singlestep,
``dpm_singlestep``) or earlier grid points (multistep, ``dpm_multistep``); ``dpm_adaptive`` chooses its
own steps. In DPM-Solver's notation g_1 = e^h - 1 (noise) / phi_1 = e^{-h} - 1 (data), and for data
prediction g_2 = -phi_2, g_3 = phi_3.

Conventions shared by every solver here (as in ``baseline``):

* ``ts`` is a strictly decreasing float64 grid of schedule times (``diffusekit.core.grids``); it works with
  every schedule (VP, VE, flow) because only alpha, sigma, lam and lam^{-1} are used.
* Coefficients are float64 Python numbers applied in x's dtype; nothing disables gradients.
* A step to t = 0 (sigma_t = 0, lam_t = +inf) is always the first-order data-prediction step
  x_t = alpha_t x0_hat (the limit of every form), whatever order was asked for: no lam = inf arithmetic.
* A step from a point with alpha_s = 0 (lam_s = -inf, e.g. a flow schedule at t = 1) is taken in the
  u-frame (u = alpha/sigma, data prediction; ``exponential``): singlestep solvers keep their order and
  NFE there; multistep solvers take the first-order step x_t = alpha_t x0_hat + (sigma_t/sigma_s) x_s, and
  such a point never enters multistep history.
* ``lower_order_final`` (default False everywhere) is a fixed rule, not a step-count heuristic:
  when True, step i of n uses order min(order, n - i), so the last step is first order, the one before
  at most second order. diffusers' step-count-dependent rules are reproduced only through the explicit
  ``orders=`` argument and the ``diffusers_*_orders`` helpers.
* ``callback``, if given, receives ``{"i", "t", "t_next", "x", "x0_hat", "order"}`` after each step
  (x0_hat is the denoiser output at t).
"""

from __future__ import annotations

from ..core.grids import diffusers_dpm_timesteps, grid_diffusers_dpm
from .dpm_adaptive import sample_dpm_solver_adaptive
from .dpm_multistep import (SOLVER_TYPES_MULTISTEP, diffusers_multistep_orders, sample_dpm_solver_multistep,
                            sample_sde_dpm_solver_pp_2m)
from .dpm_singlestep import (SOLVER_TYPES_SINGLESTEP, diffusers_singlestep_orders, sample_dpm_solver_grouped,
                             sample_dpm_solver_singlestep)
from .exponential import ALGORITHMS
from .registry import nfe_per_step_rule, register_sampler, register_variant

_single, _multi = sample_dpm_solver_singlestep, sample_dpm_solver_multistep
sample_dpm_solver_1 = register_variant("dpm_solver_1", _single, declared_order=1, nfe_per_step=1, order=1,
                                       algorithm="dpmsolver")
sample_dpm_solver_2 = register_variant("dpm_solver_2", _single, declared_order=2, nfe_per_step=2,
                                       nfe=nfe_per_step_rule(2), order=2, algorithm="dpmsolver")
sample_dpm_solver_3 = register_variant("dpm_solver_3", _single, declared_order=3, nfe_per_step=3,
                                       nfe=nfe_per_step_rule(3), order=3, algorithm="dpmsolver")
sample_dpm_solver_pp_2s = register_variant("dpm_solver_pp_2s", _single, declared_order=2, nfe_per_step=2,
                                           nfe=nfe_per_step_rule(2), order=2, algorithm="dpmsolver++")
sample_dpm_solver_pp_3s = register_variant("dpm_solver_pp_3s", _single, declared_order=3, nfe_per_step=3,
                                           nfe=nfe_per_step_rule(3), order=3, algorithm="dpmsolver++")
sample_dpm_solver_2m = register_variant("dpm_solver_2m", _multi, declared_order=2, nfe_per_step=1, order=2,
                                        algorithm="dpmsolver")
sample_dpm_solver_3m = register_variant("dpm_solver_3m", _multi, declared_order=3, nfe_per_step=1, order=3,
                                        algorithm="dpmsolver")
sample_dpm_solver_pp_2m = register_variant("dpm_solver_pp_2m", _multi, declared_order=2, nfe_per_step=1, order=2,
                                           algorithm="dpmsolver++")
sample_dpm_solver_pp_3m = register_variant("dpm_solver_pp_3m", _multi, declared_order=3, nfe_per_step=1, order=3,
                                           algorithm="dpmsolver++")
del _single, _multi
register_sampler("sde_dpm_solver_pp_2m", order=0, nfe_per_step=1, stochastic=True)(sample_sde_dpm_solver_pp_2m)
# The adaptive solver chooses its own steps and reports its NFE through ``stats``.
register_sampler("dpm_solver_adaptive", order=3, nfe_per_step=None, stochastic=False)(sample_dpm_solver_adaptive)

__all__ = [
    "ALGORITHMS", "SOLVER_TYPES_MULTISTEP", "SOLVER_TYPES_SINGLESTEP", "diffusers_dpm_timesteps",
    "diffusers_multistep_orders", "diffusers_singlestep_orders", "grid_diffusers_dpm", "sample_dpm_solver_1",
    "sample_dpm_solver_2", "sample_dpm_solver_2m", "sample_dpm_solver_3", "sample_dpm_solver_3m",
    "sample_dpm_solver_adaptive", "sample_dpm_solver_grouped", "sample_dpm_solver_multistep",
    "sample_dpm_solver_pp_2m", "sample_dpm_solver_pp_2s", "sample_dpm_solver_pp_3m", "sample_dpm_solver_pp_3s",
    "sample_dpm_solver_singlestep", "sample_sde_dpm_solver_pp_2m",
]
