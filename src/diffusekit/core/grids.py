"""Time grids: decreasing sequences t_0 = t_start > t_1 > ... > t_n = t_end of n steps (n + 1 points).

All grids are float64 tensors of schedule time, so every sampler accepts every grid and every schedule.
Default ends: t_start = schedule.t_max, t_end = schedule.t_min (pass ``t_end=0.0`` for a final step to
clean data). Grids that are uniform in a transformed variable (logSNR, Karras sigma) are mapped back
with ``schedule.t_of_lam``.
"""

from __future__ import annotations

import math

import torch

from ._tensor import as_time
from .schedules import Schedule, VPDiscrete

GRID_NAMES = ("uniform", "logsnr", "quadratic", "karras", "linspace", "leading", "trailing")


def _ends(schedule: Schedule, steps: int, t_start, t_end):
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps}")
    t_start = schedule.t_max if t_start is None else float(t_start)
    t_end = schedule.t_min if t_end is None else float(t_end)
    if not 0 <= t_end < t_start <= schedule.t_max * (1 + 1e-12):
        raise ValueError(f"need 0 <= t_end < t_start <= {schedule.t_max}; got t_start={t_start}, t_end={t_end}")
    return int(steps), t_start, t_end


def grid_uniform(schedule: Schedule, steps: int, *, t_start=None, t_end=None) -> torch.Tensor:
    """Uniform in t (DDIM's "uniform" / DPM-Solver's time_uniform)."""
    steps, t_start, t_end = _ends(schedule, steps, t_start, t_end)
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


def grid_quadratic(schedule: Schedule, steps: int, *, t_start=None, t_end=None) -> torch.Tensor:
    """Uniform in sqrt(t) (DDIM's "quadratic" / DPM-Solver's time_quadratic)."""
    steps, t_start, t_end = _ends(schedule, steps, t_start, t_end)
    ts = torch.linspace(t_start**0.5, t_end**0.5, steps + 1, dtype=torch.float64) ** 2
    ts[0], ts[-1] = t_start, t_end
    return ts


def _infinite_ends(schedule: Schedule, steps: int, t_start: float, t_end: float, grid: str, finite_part):
    """Build a grid whose ends may sit at infinite log-SNR: t_end = 0 (lam = +inf, clean data) and/or a
    t_start with alpha = 0 (lam = -inf, pure noise: a flow schedule at t = 1, zero terminal SNR).

    Each infinite end is one step of its own; ``finite_part(m, t_a, t_b)`` spaces the other m steps
    (m + 1 points) between finite ends: t_b = t_end, or t_min when t_end = 0; t_a = t_start, or, from
    alpha = 0, the point whose lam mirrors lam(t_b) about SNR = 1 (lam_a = -lam_b: for a flow schedule
    ending at t_min that is t = 1 - t_min). With both ends infinite and m = 0 the one interior point is
    at SNR = 1 (lam = 0).
    """
    to_data = t_end == 0
    from_noise = float(schedule.alpha(t_start)) == 0
    if not (to_data or from_noise):
        return finite_part(steps, t_start, t_end)
    m = steps - int(to_data) - int(from_noise)
    if m < 0:
        return torch.tensor([t_start, t_end], dtype=torch.float64)
    t_b = schedule.t_min if to_data else t_end
    t_a = t_start
    if from_noise:
        lam_b = float(schedule.lam(t_b))
        if not lam_b > 0:
            raise ValueError(f"a {grid} grid from alpha = 0 (t_start={t_start}) places its first point at "
                             f"lam = -lam(t_end) and needs t_end with SNR > 1 (lam > 0); got lam={lam_b:.3g} "
                             f"at t={t_b}. Pass a smaller t_end, or t_start < {t_start}")
        t_a = float(schedule.t_of_lam(torch.tensor(-lam_b if m > 0 else 0.0, dtype=torch.float64)))
    if m > 0:
        inner = finite_part(m, t_a, t_b)
    else:  # one interior point between two infinite ends, or the one finite end
        inner = torch.tensor([t_a if (from_noise and to_data) else (t_b if from_noise else t_a)], dtype=torch.float64)
    parts = ([torch.tensor([t_start], dtype=torch.float64)] if from_noise else []) + [inner] + \
        ([torch.zeros(1, dtype=torch.float64)] if to_data else [])
    return torch.cat(parts)


def grid_logsnr(schedule: Schedule, steps: int, *, t_start=None, t_end=None) -> torch.Tensor:
    """Uniform in lam = log(alpha/sigma) (DPM-Solver's recommended logSNR grid, Lu et al. 2022 §3.3).

    An end at infinite lam is one step of its own: t_end = 0 (clean data) is kept as a final step after
    points uniform in lam on [lam(t_start), lam(t_min)]; a t_start with alpha = 0 (the default start of a
    flow schedule) is kept as a first step to lam = -lam(t_end), and the rest is uniform in lam from there
    (see ``_infinite_ends``).
    """
    steps, t_start, t_end = _ends(schedule, steps, t_start, t_end)

    def finite(m, t_a, t_b):
        lam = torch.linspace(float(schedule.lam(t_a)), float(schedule.lam(t_b)), m + 1, dtype=torch.float64)
        ts = schedule.t_of_lam(lam)
        ts[0], ts[-1] = t_a, t_b
        return ts

    return _infinite_ends(schedule, steps, t_start, t_end, "logsnr", finite)


def grid_karras(schedule: Schedule, steps: int, *, rho: float = 7.0, t_start=None, t_end=None) -> torch.Tensor:
    """Karras et al. 2022 (arXiv 2206.00364, eq. 5) in the VE noise level s = sigma/alpha:

        s_i = (s_max^{1/rho} + i/n (s_min^{1/rho} - s_max^{1/rho}))^rho,   i = 0..n,

    mapped to schedule time. t_end = 0 appends a final step to clean data after n - 1 Karras steps; a
    t_start with alpha = 0 (s_max = inf) is a first step of its own, as in ``grid_logsnr``.
    """
    steps, t_start, t_end = _ends(schedule, steps, t_start, t_end)
    if not rho > 0:
        raise ValueError(f"rho must be > 0; got {rho}")

    def finite(m, t_a, t_b):
        s_max, s_min = float(schedule.sigma_tilde(t_a)), float(schedule.sigma_tilde(t_b))
        ramp = torch.linspace(0, 1, m + 1, dtype=torch.float64)
        s = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        ts = schedule.t_of_sigma_tilde(s)
        ts[0], ts[-1] = t_a, t_b
        return ts

    return _infinite_ends(schedule, steps, t_start, t_end, "karras", finite)


def diffusers_timesteps(num_train_timesteps: int, steps: int, spacing: str, *, steps_offset: int = 0) -> torch.Tensor:
    """Integer timesteps as diffusers' schedulers pick them (descending), for N train steps, n steps.

    linspace: round(linspace(0, N - 1, n)) reversed; leading: i * (N // n) + steps_offset, reversed;
    trailing: round(arange(N, 0, -N/n)) - 1.
    """
    n_train, steps = int(num_train_timesteps), int(steps)
    if not 1 <= steps <= n_train:
        raise ValueError(f"steps must be in [1, {n_train}]; got {steps}")
    return _spaced_timesteps(n_train, steps, spacing, steps_offset, trailing_ratio=n_train / steps)


def _spaced_timesteps(end: int, count: int, spacing: str, steps_offset: int, *, trailing_ratio: float) -> torch.Tensor:
    """``count`` descending integer timesteps below ``end`` in one of diffusers' three spacings (trailing uses
    its own stride ``trailing_ratio``, so its count is implied)."""
    if spacing == "linspace":
        ts = torch.linspace(0, end - 1, count, dtype=torch.float64).round().flip(0)
    elif spacing == "leading":
        ts = (torch.arange(count, dtype=torch.float64) * (end // count)).round().flip(0) + steps_offset
    elif spacing == "trailing":
        ts = torch.round(torch.arange(end, 0, -trailing_ratio, dtype=torch.float64)) - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; allowed: linspace, leading, trailing")
    return ts.to(torch.int64)


def grid_diffusers(schedule: VPDiscrete, steps: int, *, spacing: str = "leading", steps_offset: int = 0,
                   final: str = "zero") -> torch.Tensor:
    """diffusers' integer timesteps as schedule times t = (n + 1)/N, plus a final point.

    ``final="zero"`` ends at t = 0 (clean data: DDIM with set_alpha_to_one, DDPM's last step);
    ``final="first"`` ends at the first train step t = 1/N (DDIM with set_alpha_to_one=False).
    """
    if not isinstance(schedule, VPDiscrete):
        raise ValueError("diffusers spacings need a discrete schedule (VPDiscrete)")
    ts = schedule.t_of_timestep(diffusers_timesteps(schedule.num_train_timesteps, steps, spacing,
                                                    steps_offset=steps_offset))
    if final not in ("zero", "first"):
        raise ValueError(f"unknown final {final!r}; allowed: zero, first")
    end = 0.0 if final == "zero" else 1.0 / schedule.num_train_timesteps
    return torch.cat([ts, as_time([end])])


def diffusers_dpm_timesteps(num_train_timesteps: int, steps: int, spacing: str = "linspace", *,
                            steps_offset: int = 0, clipped_idx: int = 0) -> torch.Tensor:
    """Integer timesteps (descending) as diffusers' DPMSolverMultistep/-Singlestep and UniPCMultistep
    schedulers pick them in ``set_timesteps`` (they differ from DDIM/DDPM's, see ``diffusers_timesteps``):

        linspace: round(linspace(0, N - 1 - clipped_idx, n + 1)) reversed, last (0) dropped
        leading:  i * ((N - clipped_idx) // (n + 1)) for i = n..1, plus steps_offset
        trailing: round(arange(N - clipped_idx, 0, -N/n)) - 1

    ``clipped_idx`` is the number of final train steps removed by diffusers' ``lambda_min_clipped``
    (see ``grid_diffusers_dpm``). For N = 1000, n = 10, linspace gives 999, 899, ..., 100 (never 0).
    """
    n_train, n = int(num_train_timesteps), int(steps)
    if not 1 <= n < n_train:
        raise ValueError(f"steps must be in [1, {n_train - 1}]; got {steps}")
    last = n_train - int(clipped_idx)
    if spacing == "trailing":
        return _spaced_timesteps(last, n, spacing, steps_offset, trailing_ratio=n_train / n)
    return _spaced_timesteps(last, n + 1, spacing, steps_offset, trailing_ratio=n_train / n)[:-1]  # drop the 0


def grid_diffusers_dpm(schedule: VPDiscrete, steps: int, *, spacing: str = "linspace", final: str = "zero",
                       steps_offset: int = 0, lambda_min_clipped: float = -math.inf) -> torch.Tensor:
    """diffusers' DPM-Solver/UniPC grid as schedule times t = (n + 1)/N plus the final point.

    ``final="zero"`` (diffusers' final_sigmas_type="zero", its default) ends at t = 0; ``"sigma_min"``
    ends at the first train step t = 1/N. ``lambda_min_clipped`` drops the train steps whose lam is below
    it before spacing (diffusers: "critical for cosine"); it only moves the grid's start.
    """
    if not isinstance(schedule, VPDiscrete):
        raise ValueError("diffusers spacings need a discrete schedule (VPDiscrete)")
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"unknown final {final!r}; allowed: zero, sigma_min")
    n_train = schedule.num_train_timesteps
    lam_train = schedule.lam(schedule.t_of_timestep(torch.arange(n_train)))
    clipped_idx = int(torch.searchsorted(lam_train.flip(0), torch.tensor([float(lambda_min_clipped)],
                                                                         dtype=torch.float64)))
    steps_int = diffusers_dpm_timesteps(n_train, steps, spacing, steps_offset=steps_offset, clipped_idx=clipped_idx)
    end = 0.0 if final == "zero" else 1.0 / n_train
    return torch.cat([schedule.t_of_timestep(steps_int), torch.tensor([end], dtype=torch.float64)])


_GRID_OPTIONS = {"uniform": ("t_start", "t_end"), "logsnr": ("t_start", "t_end"), "quadratic": ("t_start", "t_end"),
                 "karras": ("rho", "t_start", "t_end"), "linspace": ("final", "steps_offset"),
                 "leading": ("final", "steps_offset"), "trailing": ("final", "steps_offset")}


def make_grid(name: str, schedule: Schedule, steps: int, **options) -> torch.Tensor:
    """Dispatch by name: uniform, logsnr, quadratic, karras, or a diffusers spacing (linspace, leading, trailing).

    Options: t_start, t_end (and rho for karras) for the continuous grids; final ("zero" or "first") and
    steps_offset for the diffusers spacings, whose times are fixed integer train steps (no t_start/t_end).
    """
    if name not in _GRID_OPTIONS:
        raise ValueError(f"unknown time grid {name!r}; allowed: {', '.join(GRID_NAMES)}")
    allowed = _GRID_OPTIONS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"the {name} grid does not take {', '.join(unknown)}; allowed options: {', '.join(allowed)}")
    builders = {"uniform": grid_uniform, "logsnr": grid_logsnr, "quadratic": grid_quadratic, "karras": grid_karras}
    if name in builders:
        return builders[name](schedule, steps, **options)
    return grid_diffusers(schedule, steps, spacing=name, **options)


def check_grid(ts: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Validate a user grid: 1-D, at least 2 points, strictly decreasing, inside [0, t_max]."""
    ts = as_time(ts)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"a time grid must be 1-D with at least 2 points; got shape {tuple(ts.shape)}")
    if bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError("a time grid must be strictly decreasing (from noise to data)")
    schedule.check_time(ts)
    return ts
