"""Train-on-synthetic, test-on-real: the linear predictive score (Kollovieh et al., NeurIPS 2023,
arXiv 2307.11494, Sec. 5.3).

A Ridge regression from the (scaled) context to the (scaled) prediction window, y_hat = W x_ctx + b, is fitted
on windows from a generator (TSDiff samples, real train windows, or an AR bootstrap) and scored on real test
windows (ND / NRMSE in raw units, via GluonTS). A good generator gives a score close to training on real data.

AR bootstrap baseline: an AR(p) model x_t = sum_i phi_i x_{t-i} + c + r_t fitted by least squares to the pooled
scaled train windows; a synthetic window starts from the first p values of a random real window and rolls
forward with residuals r resampled from the fit (the classic residual bootstrap).
"""

from __future__ import annotations

import numpy as np


def fit_ridge(windows: np.ndarray, context: int, alpha: float = 1.0):
    """sklearn Ridge from flattened context (D C) to flattened prediction window (D H) of windows (N, D, C + H)."""
    from sklearn.linear_model import Ridge

    n = windows.shape[0]
    return Ridge(alpha=alpha).fit(windows[..., :context].reshape(n, -1), windows[..., context:].reshape(n, -1))


def ridge_forecast(model, contexts: np.ndarray, horizon: int) -> np.ndarray:
    """Point forecasts (M, D, H) of scaled contexts (M, D, C)."""
    m, d, _ = contexts.shape
    return model.predict(contexts.reshape(m, -1)).reshape(m, d, horizon)


def ar_bootstrap_windows(train_windows: np.ndarray, num: int, order: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` AR(order) residual-bootstrap windows shaped like ``train_windows`` (N, D, L), per variable."""
    n, d, length = train_windows.shape
    out = np.empty((num, d, length))
    for v in range(d):
        series = train_windows[:, v, :]
        lags = np.stack([series[:, order - i - 1: length - i - 1] for i in range(order)], -1).reshape(-1, order)
        target = series[:, order:].reshape(-1)
        design = np.concatenate([lags, np.ones((len(lags), 1))], 1)
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        resid = target - design @ coef
        starts = rng.integers(0, n, num)
        x = np.empty((num, length))
        x[:, :order] = series[starts, :order]
        for t in range(order, length):
            x[:, t] = x[:, t - order:t][:, ::-1] @ coef[:order] + coef[order] + rng.choice(resid, num)
        out[:, v] = x
    return out


def linear_predictive_score(train_windows: np.ndarray, test_windows_scaled: np.ndarray, scaler, test_truth: np.ndarray,
                            context: int, *, freq: str = "h", alpha: float = 1.0) -> dict:
    """Fit Ridge on ``train_windows`` (scaled, (N, D, C + H)) and score on real test windows: returns the GluonTS
    nd / nrmse / crps (point forecast) of the unscaled forecasts against ``test_truth`` (M, D, H)."""
    from .evaluation import gluonts_metrics

    horizon = test_truth.shape[-1]
    model = fit_ridge(train_windows, context, alpha)
    pred = ridge_forecast(model, test_windows_scaled[..., :context], horizon)
    full = np.concatenate([test_windows_scaled[..., :context], pred], -1)
    raw = scaler.inverse(full)[..., context:]
    return gluonts_metrics(raw[None], test_truth, freq=freq)
