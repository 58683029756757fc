"""Reproduction benchmarks: ``diffusekit bench NAME [--out DIR] [--quick]``.

Each bench is a function ``run(quick: bool) -> (result: dict, figure)`` registered here; ``run_bench``
checks the output folder first, then writes ``DIR/NAME.json`` (with the command line, the machine's torch
thread count and the wall time) and ``DIR/NAME.png``. ``--quick`` runs the same code path at tiny sizes
(well under a minute). Long loops inside a bench go through :func:`bench_progress`, one tqdm bar on
stderr, shown only on a terminal and switched off by ``--no-progress``.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError


@dataclass(frozen=True)
class BenchEntry:
    name: str
    summary: str
    run: Callable  # run(quick) -> (result dict with a "summary" string, matplotlib figure)


BENCHES: dict[str, BenchEntry] = {}
_PROGRESS = {"enabled": True}


def register_bench(name: str, summary: str):
    def wrap(fn):
        BENCHES[name] = BenchEntry(name, summary, fn)
        return fn

    return wrap


def set_progress(enabled: bool) -> None:
    """Switch the benches' progress bars on or off (they also stay off when stderr is not a terminal)."""
    _PROGRESS["enabled"] = bool(enabled)


def bench_progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None):
    """``iterable`` wrapped in a tqdm bar on stderr (or, without one, a bar to ``update()`` by hand).

    The bar is shown only on a terminal and while progress is on; nested bars of inner loops vanish when
    done, so a finished bench leaves only its outer bars behind.
    """
    from tqdm import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    shown = _PROGRESS["enabled"] and sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, disable=not shown, dynamic_ncols=True,
                leave=False)


def check_bench_output(name: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """Before the bench runs: a known name and an output folder that can take NAME.json and NAME.png."""
    from ..io import check_output_dir, check_output_file

    _load_all()
    if name not in BENCHES:
        raise UserError(f"unknown bench {name!r}; available: {', '.join(sorted(BENCHES))}")
    out = check_output_dir(out, what="--out")
    if out.is_dir():
        for suffix in (".json", ".png"):
            check_output_file(out / f"{name}{suffix}", overwrite=overwrite, what="bench output")
    return out


def run_bench(name: str, *, out: str | Path = "bench_out", quick: bool = False, overwrite: bool = True) -> dict:
    """Run bench ``name`` and write ``out/NAME.json`` and ``out/NAME.png``; returns the result dict.

    The output location is checked before the bench starts (UserError when it cannot be written, or holds
    this bench's files and ``overwrite`` is false).
    """
    from ..io import atomic_write_bytes, atomic_write_json
    from ..plotting import _save_figure

    out = check_bench_output(name, out, overwrite=overwrite)
    t0 = time.perf_counter()
    result, fig = BENCHES[name].run(quick)
    result = {"bench": name, "quick": quick, "command": f"diffusekit bench {name}" + (" --quick" if quick else ""),
              "seconds": time.perf_counter() - t0, "torch_threads": torch.get_num_threads(),
              "machine": platform.machine(), "torch": torch.__version__, **result}
    out.mkdir(parents=True, exist_ok=True)
    files = result.pop("files", None) or {}  # optional extra outputs {file name: bytes}, e.g. wav examples
    atomic_write_json(out / f"{name}.json", {**result, "files": sorted(files)} if files else result)
    for file_name, data in files.items():
        atomic_write_bytes(out / Path(file_name).name, data)
    _save_figure(fig, out / f"{name}.png")
    return result


def _load_all() -> None:
    """Import the bench modules so they register themselves."""
    from . import (  # noqa: F401
        autodiffusion, distill, ditto, ditto2, find, guidance, inverse, momentum, obc, ppap, resshift,
        samplers_baseline, solvers,
    )
    from . import quant  # noqa: F401
    from . import pso, tadsr  # noqa: F401
    from . import cyclediffusion, dpm_ot, flows, interop, latent, score_sde  # noqa: F401
    from . import afa, cdcd, clip, dit, dtr_ant, mode, ras, repa, smooth  # noqa: F401
    from . import dda, difftpt, drive, petal, planner, policy, tsdiff, tta  # noqa: F401
    from . import auffusion, cdcd_music, ditto2_music, ezaudio, makeanaudio2, prodiff, styletts_zs, vocoder  # noqa: F401
    from . import cbb, ditto_talking, eclipse, video  # noqa: F401


_load_all()
