"""Forecasting with missing values in the context (Kollovieh et al., NeurIPS 2023, arXiv 2307.11494, Sec. 5.1,
"missing value" scenarios): TSDiff self-guidance simply drops the missing entries from the observation mask; the
task-specific conditional model is trained once per scenario on windows masked the same way.

Scenarios on a window of C context + H prediction steps (the prediction window is never observed), with a
missing fraction p of the context (default 0.5):

* ``RM`` (random missing): every context entry is missing independently with probability p;
* ``BM-B`` (blackout at the beginning): the first round(p C) context steps are missing;
* ``BM-E`` (blackout at the end): the last round(p C) context steps are missing (the hardest: the most recent
  history is gone).
"""

from __future__ import annotations

import torch

SCENARIOS = ("RM", "BM-B", "BM-E")


def scenario_masks(kind: str, n: int, channels: int, context: int, horizon: int, *, missing_fraction: float = 0.5,
                   generator: torch.Generator) -> torch.Tensor:
    """Observation masks (n, D, C + H), 1 = observed, for scenario ``kind`` (see the module docstring)."""
    if kind not in SCENARIOS:
        raise ValueError(f"unknown missing-value scenario {kind!r}; allowed: {', '.join(SCENARIOS)}")
    if not 0 <= missing_fraction < 1:
        raise ValueError(f"missing_fraction must be in [0, 1); got {missing_fraction}")
    mask = torch.zeros(n, channels, context + horizon)
    k = int(round(missing_fraction * context))
    if kind == "RM":
        mask[..., :context] = (torch.rand(n, channels, context, generator=generator) >= missing_fraction).float()
    elif kind == "BM-B":
        mask[..., k:context] = 1.0
    else:
        mask[..., : context - k] = 1.0
    return mask
