"""Reproduction benchmarks: ``diffusekit bench NAME [--out DIR] [--quick]``.

Each bench is a function ``run(quick: bool) -> (result: dict, figure)`` registered here; ``run_bench``
writes ``DIR/NAME.json`` (with the command line, the machine's torch thread count and the wall time) and
``DIR/NAME.png``. ``--quick`` runs the same code path at tiny sizes (well under a minute).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class BenchEntry:
    name: str
    summary: str
    run: Callable  # run(quick) -> (result dict with a "summary" string, matplotlib figure)


BENCHES: dict[str, BenchEntry] = {}


def register_bench(name: str, summary: str):
    def wrap(fn):
        BENCHES[name] = BenchEntry(name, summary, fn)
        return fn

    return wrap


def run_bench(name: str, *, out: str | Path = "bench_out", quick: bool = False) -> dict:
    from ..plotting import _save_figure, atomic_write_json

    _load_all()
    if name not in BENCHES:
        raise ValueError(f"unknown bench {name!r}; available: {', '.join(sorted(BENCHES))}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    t0 = time.perf_counter()
    result, fig = BENCHES[name].run(quick)
    result = {"bench": name, "quick": quick, "command": f"diffusekit bench {name}" + (" --quick" if quick else ""),
              "seconds": time.perf_counter() - t0, "torch_threads": torch.get_num_threads(),
              "machine": platform.machine(), "torch": torch.__version__, **result}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", result)
    _save_figure(fig, out / f"{name}.png")
    return result


def _load_all() -> None:
    """Import the bench modules so they register themselves."""
    from . import (  # noqa: F401
        autodiffusion, ditto, find, guidance, inverse, momentum, obc, ppap, resshift, samplers_baseline, solvers,
    )


_load_all()
