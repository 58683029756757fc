"""Sampler registry: every sampler declares its order, its exact NFE on a grid and whether it is stochastic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.grids import check_grid


def grid_shape(ts) -> tuple[int, bool]:
    """(number of steps n, whether the grid ends at t = 0) of a grid of n + 1 times (a tensor or sequence).
    t = 0 is the only time with sigma = 0 on every schedule, so this is all an NFE count needs."""
    ts = torch.as_tensor(ts, dtype=torch.float64).flatten()
    if ts.numel() < 2:
        raise ValueError(f"a time grid must have at least 2 points; got {ts.numel()}")
    return ts.numel() - 1, float(ts[-1]) == 0.0


def nfe_per_step_rule(k: int) -> Callable:
    """NFE rule of a sampler with k network calls per step whose step to t = 0 costs 1 (a first-order
    denoising step): k n, minus k - 1 when the grid ends at t = 0 (Heun: 2n - 1; singlestep DPM-Solver-k)."""

    def nfe(ts) -> int:
        n, to_zero = grid_shape(ts)
        return k * n - ((k - 1) if to_zero else 0)

    return nfe


@dataclass(frozen=True)
class SamplerInfo:
    """What a registered sampler declares, for its default options.

    ``order``: global order of accuracy of the deterministic solver (0 for stochastic samplers).
    ``nfe_per_step``: network calls per step away from the grid's ends (None: adaptive).
    ``nfe_rule``: the exact NFE as a function of the grid, see ``nfe``.
    ``students_only``: the sampler runs a distilled student (a consistency function, a one-step generator), not
    any denoiser on any grid (``methods.distill.samplers``).
    """

    name: str
    fn: Callable
    order: int
    nfe_per_step: int | None
    stochastic: bool
    nfe_rule: Callable | None = None
    students_only: bool = False

    @property
    def adaptive(self) -> bool:
        return self.nfe_per_step is None

    def nfe(self, ts) -> int | None:
        """The exact number of denoiser calls of ``fn(denoiser, x, ts)`` with its default options, on any
        schedule (steps from alpha = 0 keep their NFE); None for the adaptive solver, which picks its steps."""
        if self.adaptive:
            return None
        if self.nfe_rule is not None:
            return int(self.nfe_rule(ts))
        return self.nfe_per_step * grid_shape(ts)[0]


SAMPLERS: dict[str, SamplerInfo] = {}


def register_sampler(name: str, *, order: int, nfe_per_step: int | None, stochastic: bool,
                     nfe: Callable | None = None, students_only: bool = False):
    """Decorator: register ``fn`` under ``name`` and attach ``fn.info``. ``nfe(ts) -> int`` gives the exact
    NFE on a grid when it is not ``nfe_per_step`` times the number of steps; ``students_only`` marks a sampler
    of distilled students (see ``SamplerInfo``)."""

    def wrap(fn):
        info = SamplerInfo(name, fn, order, nfe_per_step, stochastic, nfe, students_only)
        SAMPLERS[name] = info
        fn.info = info
        return fn

    return wrap


def register_variant(name: str, fn, *, declared_order: int, nfe_per_step: int, nfe: Callable | None = None,
                     **fixed):
    """Register ``fn`` with some options fixed under ``name`` (passing a fixed option again is an error)."""

    def variant(denoiser, x: torch.Tensor, ts, **options) -> torch.Tensor:
        clash = sorted(set(fixed) & set(options))
        if clash:
            raise ValueError(f"sampler {name!r} fixes {', '.join(clash)}; call {fn.__name__} to choose them")
        return fn(denoiser, x, ts, **fixed, **options)

    variant.__name__ = variant.__qualname__ = f"sample_{name}"
    options = ", ".join(f"{k}={v!r}" for k, v in fixed.items())
    variant.__doc__ = f"``{fn.__name__}({options})``: order {declared_order}, {nfe_per_step} NFE per step."
    return register_sampler(name, order=declared_order, nfe_per_step=nfe_per_step, stochastic=False,
                            nfe=nfe)(variant)


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def grid_steps(denoiser, x: torch.Tensor, ts) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Validate the grid against the denoiser's schedule and list its steps (i, t_i, t_{i+1})."""
    ts = check_grid(ts, denoiser.schedule).to(x.device)
    return [(i, ts[i], ts[i + 1]) for i in range(len(ts) - 1)]
