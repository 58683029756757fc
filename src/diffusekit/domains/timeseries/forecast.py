"""One call from a series (name, CSV path, DataFrame, array or tensor; uni- or multivariate) to forecast samples.

``forecast_samples(data, horizon, method=...)`` trains the chosen model on every window of C + H steps of the
series (each scaled by its context's mean and std) and forecasts the H steps after its end:

* ``tsdiff`` / ``tsdiff-quantile``: TSDiff self-guidance with the MSE / quantile energy (DDIM, 50 steps;
  Kollovieh et al. 2023, arXiv 2307.11494, Sec. 3.1);
* ``tsdiff-refine``: the seasonal-naive forecast refined by 20 overdamped Langevin steps under the diffusion
  energy (Sec. 3.2);
* ``conditional``: the same backbone trained with the context as conditioning channels;
* ``seasonal-naive``: GluonTS seasonal naive (one sample).
"""

from __future__ import annotations

import numpy as np
import torch

METHODS = ("tsdiff", "tsdiff-quantile", "tsdiff-refine", "conditional", "seasonal-naive")
GUIDANCE = {"tsdiff": ("mse", 0.1), "tsdiff-quantile": ("quantile", 2.0)}


def forecast_samples(data, horizon: int, *, method: str = "tsdiff-quantile", context: int | None = None,
                     samples: int = 32, train_steps: int = 1000, scale: float | None = None, seed: int = 0,
                     progress: bool = False, hidden: int = 32, num_blocks: int = 6) -> np.ndarray:
    """Forecast samples (S, D, H) in the data's units for the H steps after the series ends (see the module
    docstring). ``data``: anything ``data.as_series`` accepts; ``context`` defaults to min(96, (T - H) // 2);
    ``scale`` overrides the self-guidance scale (default 0.1 MSE, 2 quantile)."""
    from .baselines import seasonal_naive
    from .data import WindowScaler, as_series, make_windows
    from .guidance import sample_self_guided
    from .refine import refine
    from .tsdiff import TSDiffConfig, forecast_mask, sample_conditional, train_conditional, train_tsdiff

    if method not in METHODS:
        raise ValueError(f"unknown forecasting method {method!r}; allowed: {', '.join(METHODS)}")
    series = as_series(data)
    context = min(96, (series.length - horizon) // 2) if context is None else int(context)
    if horizon < 1 or context < 2 or context + horizon > series.length:
        raise ValueError(f"context {context} + horizon {horizon} must fit in the {series.length} steps of the series")
    d = series.dim
    last = series.values[-context:].T[None]  # (1, D, C)
    naive = seasonal_naive(last, horizon, min(series.season, context))  # (1, 1, D, H)
    if method == "seasonal-naive":
        return naive[:, 0]
    windows, _ = make_windows(series.values, context + horizon)
    x_train = torch.tensor(WindowScaler("standard", context).fit(windows).transform(windows), dtype=torch.float32)
    query = np.concatenate([last, np.zeros((1, d, horizon))], -1)
    scaler = WindowScaler("standard", context).fit(query)
    y = torch.tensor(scaler.transform(query), dtype=torch.float32)
    mask = forecast_mask(d, context, horizon)
    cfg = TSDiffConfig(hidden=hidden, num_blocks=num_blocks, steps=train_steps, seed=seed)
    g = torch.Generator().manual_seed(seed)
    if method == "conditional":
        den, _ = train_conditional(x_train, mask, cfg, progress=progress)
        smp = sample_conditional(den, y, mask, samples, generator=g)
    else:
        den, _ = train_tsdiff(x_train, cfg, progress=progress)
        if method == "tsdiff-refine":
            init = np.concatenate([last, naive[0]], -1).repeat(samples, 0)  # (S, D, C + H)
            init = torch.tensor(scaler.transform(init), dtype=torch.float32)
            traj = refine(den, init, y.repeat(samples, 1, 1), mask, method="langevin", iterations=20, generator=g)
            smp = traj[-1][:, None]
        else:
            energy, default_scale = GUIDANCE[method]
            smp = sample_self_guided(den, y, mask, samples, energy=energy,
                                     scale=default_scale if scale is None else scale, sampler="ddim", steps=50,
                                     generator=g, progress=progress)
    return scaler.inverse(smp.numpy())[:, 0, :, context:]
