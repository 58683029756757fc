"""Sampler registry: every sampler declares its order, its network calls per step and whether it is stochastic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.grids import check_grid


@dataclass(frozen=True)
class SamplerInfo:
    name: str
    fn: Callable
    order: int  # global order of accuracy of the deterministic solver (0 for stochastic samplers)
    nfe_per_step: int | None  # None: adaptive, the sampler chooses its own steps and reports its NFE
    stochastic: bool

    @property
    def adaptive(self) -> bool:
        return self.nfe_per_step is None


SAMPLERS: dict[str, SamplerInfo] = {}


def register_sampler(name: str, *, order: int, nfe_per_step: int | None, stochastic: bool):
    """Decorator: register ``fn`` under ``name`` and attach ``fn.info``."""

    def wrap(fn):
        info = SamplerInfo(name, fn, order, nfe_per_step, stochastic)
        SAMPLERS[name] = info
        fn.info = info
        return fn

    return wrap


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def grid_steps(denoiser, x: torch.Tensor, ts) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Validate the grid against the denoiser's schedule and list its steps (i, t_i, t_{i+1})."""
    ts = check_grid(ts, denoiser.schedule).to(x.device)
    return [(i, ts[i], ts[i + 1]) for i in range(len(ts) - 1)]
