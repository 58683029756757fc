"""The default sampler, grid and step count: one place, read by the CLI, the demo and the README.

``DEFAULT`` names a registered sampler and a ``make_grid`` grid; ``default_timesteps(denoiser, steps)``
returns the grid the default uses for that model at that many steps, on every schedule kind.
(First cut: a fixed grid; the measured choice replaces it, see issue 8.)
"""

from __future__ import annotations

import torch

from ..core.grids import make_grid

DEFAULT: dict = {"sampler": "dpm_solver_pp_3m", "grid": "logsnr", "steps": 10, "options": {}}


def default_timesteps(denoiser, steps: int | None = None) -> torch.Tensor:
    """The default time grid for ``denoiser`` (its schedule) at ``steps`` steps (default ``DEFAULT['steps']``)."""
    steps = DEFAULT["steps"] if steps is None else steps
    return make_grid(DEFAULT["grid"], denoiser.schedule, steps, t_end=0.0)
