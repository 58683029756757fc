"""Interoperability with the Hugging Face diffusers library, both ways.

* diffusers -> diffusekit: ``load_diffusers_denoiser(path)`` turns a local diffusers-format folder into a
  ``Denoiser`` with the exactly matching schedule (``schedule_from_diffusers_config``), and
  ``diffusers_grid(scheduler, steps, schedule)`` gives the time grid a diffusers scheduler would use.
* diffusekit -> diffusers: ``DiffuseKitScheduler`` runs any of our fixed-grid samplers inside a diffusers
  pipeline; ``export_diffusers`` writes a model trained here on a diffusers backbone as a diffusers folder.

diffusers is imported lazily: ``import diffusekit.interop`` works without it.
"""

from __future__ import annotations

__all__ = ["DiffuseKitScheduler", "DiffusersNet", "diffusers_grid", "export_diffusers", "load_diffusers_denoiser",
           "schedule_from_diffusers_config"]


def __getattr__(name):
    if name in ("DiffusersNet", "diffusers_grid", "load_diffusers_denoiser", "schedule_from_diffusers_config"):
        from . import diffusers as module
    elif name == "DiffuseKitScheduler":
        from . import scheduler as module
    elif name == "export_diffusers":
        from . import export as module
    else:
        raise AttributeError(f"module 'diffusekit.interop' has no attribute {name!r}")
    return getattr(module, name)
