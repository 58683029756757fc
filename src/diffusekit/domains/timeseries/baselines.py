"""GluonTS baselines on context windows: seasonal naive (``gluonts.model.seasonal_naive``) and, optionally,
DeepAR (``gluonts.torch.model.deepar``, Salinas et al. 2020, arXiv 1704.04110).

Seasonal naive: y_hat_{C+h} = y_{C+h-k season} with the smallest k >= 1 that lands in the context (GluonTS's
``SeasonalNaivePredictor``); a point forecast (one sample).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def _entries(contexts: np.ndarray, freq: str) -> list[dict]:
    start = pd.Period("2000-01-01", freq=freq)
    return [{"start": start, "target": contexts[m, d], "item_id": f"{m}/{d}"}
            for m in range(contexts.shape[0]) for d in range(contexts.shape[1])]


def seasonal_naive(contexts: np.ndarray, horizon: int, season: int, *, freq: str = "h") -> np.ndarray:
    """Seasonal-naive forecasts of context windows (M, D, C) by GluonTS: returns (1, M, D, H)."""
    from gluonts.dataset.common import ListDataset
    from gluonts.model.seasonal_naive import SeasonalNaivePredictor

    m, d, _ = contexts.shape
    predictor = SeasonalNaivePredictor(prediction_length=horizon, season_length=season)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = ListDataset(_entries(np.asarray(contexts, np.float64), freq), freq=freq)
        out = np.stack([f.samples[0] for f in predictor.predict(data)])  # (M*D, H)
    return out.reshape(1, m, d, horizon)


def deepar(train_values: np.ndarray, contexts: np.ndarray, horizon: int, *, context_length: int, freq: str = "h",
           epochs: int = 5, num_batches_per_epoch: int = 50, num_samples: int = 100, seed: int = 0) -> np.ndarray:
    """DeepAR (GluonTS torch) trained on ``train_values`` (T, D) (one item per variable) and sampled on context
    windows (M, D, C): returns (S, M, D, H). CPU minutes for the defaults."""
    import lightning.pytorch as pl
    from gluonts.dataset.common import ListDataset
    from gluonts.torch.model.deepar import DeepAREstimator

    pl.seed_everything(seed, workers=False, verbose=False)
    start = pd.Period("2000-01-01", freq=freq)
    train = ListDataset([{"start": start, "target": train_values[:, i]} for i in range(train_values.shape[1])],
                        freq=freq)
    import tempfile

    scratch = tempfile.TemporaryDirectory()  # GluonTS adds a ModelCheckpoint callback; keep its files out of cwd
    estimator = DeepAREstimator(freq=freq, prediction_length=horizon, context_length=context_length,
                                num_layers=2, hidden_size=32, batch_size=32,
                                num_batches_per_epoch=num_batches_per_epoch,
                                trainer_kwargs={"max_epochs": epochs, "enable_progress_bar": False,
                                                "enable_model_summary": False, "logger": False,
                                                "default_root_dir": scratch.name,
                                                "accelerator": "cpu"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = estimator.train(train)
        data = ListDataset(_entries(np.asarray(contexts, np.float64), freq), freq=freq)
        predictor.prediction_net.eval()
        forecasts = list(predictor.predict(data, num_samples=num_samples))
    scratch.cleanup()
    m, d, _ = contexts.shape
    out = np.stack([f.samples for f in forecasts], axis=1)  # (S, M*D, H)
    return out.reshape(out.shape[0], m, d, horizon)
