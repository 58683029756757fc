"""Sampler registry: every sampler declares its order, its network calls per step and whether it is stochastic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerInfo:
    name: str
    fn: Callable
    order: int  # global order of accuracy of the deterministic solver (0 for stochastic samplers)
    nfe_per_step: int
    stochastic: bool


SAMPLERS: dict[str, SamplerInfo] = {}


def register_sampler(name: str, *, order: int, nfe_per_step: int, stochastic: bool):
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
