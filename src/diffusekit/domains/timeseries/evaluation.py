"""Forecast evaluation through GluonTS (``gluonts.evaluation.Evaluator``), plus our own pinball-CRPS for a
cross-check.

Metrics (as TSDiff reports them, Kollovieh et al. 2023, arXiv 2307.11494, Sec. 5.1):

* ``crps``: GluonTS ``mean_wQuantileLoss`` over quantiles 0.1, ..., 0.9, the CRPS approximation
  mean_q 2 sum |pinball_q(y, F^-1(q))| / sum |y|.
* ``nd``: sum |y - median| / sum |y|; ``nrmse``: sqrt(mean (y - mean)^2) / mean |y|.
* ``coverage80``: the fraction of targets inside the central 80 % interval [F^-1(0.1), F^-1(0.9)],
  GluonTS ``Coverage[0.9] - Coverage[0.1]`` (ideal 0.8).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

QUANTILES = tuple(round(0.1 * i, 1) for i in range(1, 10))


def _evaluator():
    from gluonts.evaluation import Evaluator

    return Evaluator(quantiles=QUANTILES, num_workers=0)


def gluonts_metrics(samples: np.ndarray, truth: np.ndarray, *, freq: str = "h") -> dict:
    """GluonTS metrics of sample forecasts ``samples`` (S, M, D, H) against ``truth`` (M, D, H), both in raw units;
    every (window, variable) pair is one GluonTS item. A point forecast is S = 1. Returns crps, nd, nrmse,
    coverage80 (GluonTS) and crps_by_horizon: our :func:`pinball_crps` at each lead time 1..H (the same weighted
    quantile loss restricted to one step; it agrees with GluonTS's over the whole window, tested)."""
    from gluonts.model.forecast import SampleForecast

    samples, truth = np.asarray(samples, np.float64), np.asarray(truth, np.float64)
    if samples.ndim != 4 or samples.shape[1:] != truth.shape:
        raise ValueError(f"samples must be (S, M, D, H) matching truth (M, D, H); got {samples.shape}, {truth.shape}")
    horizon = truth.shape[-1]
    start = pd.Period("2000-01-01", freq=freq)
    targets, forecasts = [], []
    for m in range(truth.shape[0]):
        for d in range(truth.shape[1]):
            index = pd.period_range(start, periods=horizon, freq=freq)
            targets.append(pd.DataFrame(truth[m, d], index=index))
            forecasts.append(SampleForecast(samples[:, m, d, :], start_date=start, item_id=f"{m}/{d}"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agg, _ = _evaluator()(iter(targets), iter(forecasts), num_series=len(targets))
    by_horizon = [pinball_crps(samples[..., h], truth[..., h]) for h in range(horizon)]
    return {"crps": float(agg["mean_wQuantileLoss"]), "nd": float(agg["ND"]), "nrmse": float(agg["NRMSE"]),
            "coverage80": float(agg["Coverage[0.9]"] - agg["Coverage[0.1]"]), "crps_by_horizon": by_horizon}


def pinball_crps(samples: np.ndarray, truth: np.ndarray, quantiles=QUANTILES) -> float:
    """Our own mean weighted quantile loss: mean_q 2 sum |(y - F^-1(q)) (q - 1[y < F^-1(q)])| / sum |y|, with
    F^-1(q) the empirical sample quantile (numpy ``quantile``, linear). samples (S, ...), truth (...)."""
    samples, truth = np.asarray(samples, np.float64), np.asarray(truth, np.float64)
    denom = np.abs(truth).sum()
    losses = []
    for q in quantiles:
        pred = np.quantile(samples, q, axis=0)
        e = truth - pred
        losses.append(2 * np.maximum(q * e, (q - 1) * e).sum() / denom)
    return float(np.mean(losses))
