"""diffusers' side of the solvers bench: its option space, the manual scheduler loop and NFE matching.

Every deterministic scheduler diffusers ships for eps-prediction VP models, each over its own options:

* ``DDIMScheduler`` and ``PNDMScheduler`` (PLMS, skip_prk_steps): timestep_spacing linspace / leading / trailing.
* ``DPMSolverMultistepScheduler``: spacing x {plain, use_karras_sigmas, use_exponential_sigmas,
  use_beta_sigmas, use_lu_lambdas} x solver_order 1-3 x algorithm_type dpmsolver++ / dpmsolver x solver_type
  midpoint / heun (order 2; diffusers' third-order multistep update ignores it) x lower_order_final x
  euler_at_final (both for dpmsolver++ at order >= 2; the eps-form "dpmsolver" with its defaults).
* ``DPMSolverSinglestepScheduler``: {plain, karras, exponential, beta} x order 1-3 x algorithm_type x
  solver_type (order >= 2) x lower_order_final (order >= 2; it has no timestep_spacing option).
* ``UniPCMultistepScheduler``: spacing x {plain, karras, exponential, beta} x order 1-3 x bh1 / bh2 x
  lower_order_final.
* ``DEISMultistepScheduler``: spacing x {plain, karras, exponential, beta} x order 1-3 x lower_order_final.
* ``EulerDiscreteScheduler``, ``HeunDiscreteScheduler``, ``KDPM2DiscreteScheduler``, ``LMSDiscreteScheduler``:
  spacing x {plain, karras, exponential, beta}.

The sigma options replace the spacing's timesteps, so with them only the default spacing is listed (the
others give the same grid). Options are crossed only where the scheduler offers them. The stochastic
schedulers (DDPM, ancestral, SDE variants) are left out: their error to the ODE solution is not solver error.

The loop is the standard manual one (set_timesteps, scale_model_input, model, step) with our float64
betas (diffusers' float32 schedule tensors are replaced). The sample starts from our x_T at t = 1
(timestep 999), as x_T / alpha(1) for the sigma-space (Euler-type) schedulers, whose sample is x/alpha. The
model is the exact denoiser as eps = (x - alpha x0_hat)/sigma, evaluated at the timestep diffusers passes
(integer, as for a network; DPM-Solver with sigma options rounds it) or, for the sigma-space schedulers,
at the sigma their step uses. Spacings whose first timestep is below 999 (leading) start from the same x_T
there, as a user's loop does.
"""

from __future__ import annotations

import math
from itertools import product

import torch

from ..core import VPDiscrete

SPACINGS = ("linspace", "leading", "trailing")
SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
SHORT = {"DDIMScheduler": "DDIM", "PNDMScheduler": "PNDM", "DPMSolverMultistepScheduler": "DPMMS",
         "DPMSolverSinglestepScheduler": "DPMSS", "UniPCMultistepScheduler": "UniPC",
         "DEISMultistepScheduler": "DEIS", "EulerDiscreteScheduler": "Euler", "HeunDiscreteScheduler": "Heun",
         "KDPM2DiscreteScheduler": "KDPM2", "LMSDiscreteScheduler": "LMS"}
DEFAULT_CONFIG = ("DPMSolverMultistepScheduler", {})  # diffusers' own defaults: DPM++ 2M, linspace, lof


def _grid_options(spacing: bool, lu: bool = False) -> list[dict]:
    opts = [{"timestep_spacing": s} for s in SPACINGS] if spacing else [{}]
    opts += [{o: True} for o in SIGMA_OPTIONS + (("use_lu_lambdas",) if lu else ())]
    return opts


def _orders(algorithms=(None,), lof=True, eaf=False) -> list[dict]:
    """Order x algorithm x solver_type x lower_order_final (x euler_at_final) combinations, leaving out the
    ones diffusers provably ignores: lower_order_final and euler_at_final at order 1, solver_type at order 1
    and (multistep only, ``eaf=True``) at order 3, and for the eps-form algorithm "dpmsolver" only its
    defaults (lower_order_final on, euler_at_final off)."""
    out = []
    for order, algo in product((1, 2, 3), algorithms):
        plus = algo in (None, "dpmsolver++")
        types = ("midpoint", "heun") if algo is not None and order == 2 or (algo is not None and order == 3
                                                                            and not eaf) else (None,)
        los = (True, False) if lof and order > 1 and plus else ((True,) if lof else (None,))
        eafs = (False, True) if eaf and order > 1 and plus else ((False,) if eaf else (None,))
        for solver_type, lo, ea in product(types, los, eafs):
            cfg = {"solver_order": order}
            if algo is not None:
                cfg["algorithm_type"] = algo
            if solver_type is not None:
                cfg["solver_type"] = solver_type
            if lo is not None:
                cfg["lower_order_final"] = lo
            if ea is not None:
                cfg["euler_at_final"] = ea
            out.append(cfg)
    return out


def option_space(level: str = "full") -> list[tuple[str, str, dict]]:
    """[(label, scheduler class name, config)] of diffusers' deterministic configurations.

    ``level``: "full" (every option above), or "quick" (DPM-Solver multistep and UniPC over spacing and
    sigma options at orders 2-3, DDIM trailing: the configurations that win the full search).
    """
    space = []
    if level == "quick":
        for grid, order in product(_grid_options(True, lu=True), (2, 3)):
            space.append(("DPMSolverMultistepScheduler", {"solver_order": order, **grid}))
        for grid in _grid_options(True):
            space.append(("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh2", **grid}))
        space.append(("DDIMScheduler", {"timestep_spacing": "trailing", "set_alpha_to_one": True,
                                        "clip_sample": False}))
    elif level == "full":
        for s in SPACINGS:
            space.append(("DDIMScheduler", {"timestep_spacing": s, "set_alpha_to_one": True, "clip_sample": False}))
            space.append(("PNDMScheduler", {"timestep_spacing": s, "skip_prk_steps": True, "set_alpha_to_one": True}))
        for grid in _grid_options(True, lu=True):
            for cfg in _orders(("dpmsolver++", "dpmsolver"), eaf=True):
                space.append(("DPMSolverMultistepScheduler", {**cfg, **grid}))
        for grid in _grid_options(False):
            for cfg in _orders(("dpmsolver++", "dpmsolver")):
                space.append(("DPMSolverSinglestepScheduler", {**cfg, **grid}))
        for grid in _grid_options(True):
            for cfg in _orders():
                for bh in ("bh1", "bh2"):
                    space.append(("UniPCMultistepScheduler", {**cfg, **grid, "solver_type": bh}))
            for cfg in _orders():
                space.append(("DEISMultistepScheduler", {**cfg, **grid}))
            for cls in ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                        "LMSDiscreteScheduler"):
                space.append((cls, dict(grid)))
    else:
        raise ValueError(f"unknown level {level!r}; allowed: full, quick")
    space.append(DEFAULT_CONFIG)
    seen, out = set(), []
    for cls, cfg in space:
        label = config_label(cls, cfg)
        if label not in seen:
            seen.add(label)
            out.append((label, cls, cfg))
    return out


def config_label(cls_name: str, config: dict) -> str:
    if not config:
        return f"{SHORT[cls_name]}(defaults)"
    short = {"timestep_spacing": "", "solver_order": "o", "algorithm_type": "", "solver_type": "",
             "lower_order_final": "lof=", "euler_at_final": "eaf=", "use_karras_sigmas": "karras",
             "use_exponential_sigmas": "exponential", "use_beta_sigmas": "beta", "use_lu_lambdas": "lu_lambdas"}
    parts = []
    for k, v in config.items():
        if k in ("set_alpha_to_one", "clip_sample", "skip_prk_steps"):
            continue
        if isinstance(v, bool) and k.startswith("use_"):
            parts.append(short[k])
        elif isinstance(v, bool):
            parts.append(f"{short.get(k, k + '=')}{int(v)}")
        else:
            parts.append(f"{short.get(k, k + '=')}{v}")
    return f"{SHORT[cls_name]}({','.join(parts)})"


def _diffusers():
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # DPMSolverSinglestep announces its lower_order_final switch
    return diffusers


def make_scheduler(cls_name: str, config: dict, schedule: VPDiscrete):
    """A diffusers scheduler with our betas, its float32 schedule tensors replaced by our float64 ones."""
    diffusers = _diffusers()
    sch = getattr(diffusers, cls_name)(num_train_timesteps=schedule.num_train_timesteps, beta_start=1e-4,
                                       beta_end=0.02, beta_schedule="linear", **config)
    abar = schedule.alphas_cumprod.clone()
    sch.betas = schedule.betas.clone()
    sch.alphas = 1.0 - sch.betas
    sch.alphas_cumprod = abar
    if hasattr(sch, "final_alpha_cumprod"):  # DDIM, PNDM with set_alpha_to_one
        sch.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(sch, "alpha_t"):  # DPM-Solver, UniPC, DEIS
        sch.alpha_t, sch.sigma_t = abar.sqrt(), (1 - abar).sqrt()
        sch.lambda_t = torch.log(sch.alpha_t) - torch.log(sch.sigma_t)
    return sch


def _model_calls(cls_name: str, config: dict, schedule, steps: int) -> int:
    sch = make_scheduler(cls_name, config, schedule)
    sch.set_timesteps(steps)
    return len(sch.timesteps)


def steps_for(cls_name, config, schedule, target, cache) -> int | None:
    """The number of inference steps whose model-call count is ``target`` (None if there is none)."""
    for n in range(max(1, target // 2 - 1), target + 2):
        key = (cls_name, tuple(sorted(config.items())), n)
        if key not in cache:
            try:
                cache[key] = _model_calls(cls_name, config, schedule, n)
            except (ValueError, RuntimeError, IndexError, ZeroDivisionError):
                cache[key] = None
        if cache[key] == target:
            return n
    return None


class TimestepToTime:
    """diffusers timestep tau (possibly fractional) -> our t: log sigma~ linear between train steps."""

    def __init__(self, schedule: VPDiscrete):
        self.schedule = schedule
        abar = schedule.alphas_cumprod
        self.log_sigma = 0.5 * torch.log((1 - abar) / abar)

    def __call__(self, tau) -> float:
        tau = float(tau)
        n = self.schedule.num_train_timesteps
        if abs(tau - round(tau)) < 1e-9:
            return (round(tau) + 1) / n
        lo = min(max(int(math.floor(tau)), 0), n - 2)
        w = tau - lo
        log_s = (1 - w) * self.log_sigma[lo] + w * self.log_sigma[lo + 1]
        return float(self.schedule.t_of_sigma_tilde(torch.exp(log_s)))


def run_diffusers(cls_name, config, steps, eps_model, x_T, schedule, target):
    """The manual diffusers loop from x_T at t = 1; returns the final sample (x, or x/alpha = x at sigma 0)."""
    sch = make_scheduler(cls_name, config, schedule)
    sch.set_timesteps(steps)
    first = float(sch.timesteps[0])
    if first > schedule.num_train_timesteps - 1 + 1e-3:
        raise AssertionError(f"{cls_name} {config}: first timestep {first} beyond the last train step")
    init = float(sch.init_noise_sigma)
    alpha_T = float(schedule.alpha(schedule.t_max))
    sigma_space = init > 1.5
    x = x_T / alpha_T if sigma_space else x_T.clone()
    calls = 0
    for tau in sch.timesteps:
        x_in = sch.scale_model_input(x, tau)
        # sigma-space schedulers step with sigmas[step_index], which for fractional timesteps diffusers
        # interpolates; the exact model is evaluated at that sigma
        sigma = float(sch.sigmas[sch.step_index]) if sigma_space else None
        eps = eps_model(x_in, tau, sigma)
        calls += 1
        x = sch.step(eps, tau, x).prev_sample
    if calls != target:
        raise AssertionError(f"{cls_name} {config} with {steps} steps made {calls} model calls, not {target}")
    return x.to(x_T.dtype)


def gmm_eps_model(den, schedule):
    """The exact denoiser ``den`` as diffusers' eps model (at its timestep, or at sigma for sigma-space ones)."""
    to_t = TimestepToTime(schedule)

    def eps_model(x_in, tau, sigma=None):
        t = to_t(tau) if sigma is None else float(schedule.t_of_sigma_tilde(sigma))
        x_in = x_in.to(torch.float64)
        a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
        return (x_in - a * den(x_in, t)) / s

    return eps_model


def unet_eps_model(den, labels):
    """A NetworkDenoiser's eps network called with diffusers' timestep, as in a user's loop."""
    net = den.net
    dtype = next(net.parameters()).dtype

    def eps_model(x_in, tau, sigma=None):
        t_in = torch.full((x_in.shape[0],), float(tau), dtype=dtype)
        return net(x_in.to(dtype), t_in, class_labels=labels).to(x_in.dtype)

    return eps_model
