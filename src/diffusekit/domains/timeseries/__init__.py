"""Time-series forecasting with diffusion models (TSDiff, Kollovieh et al. 2023, arXiv 2307.11494) on GluonTS
containers, baselines and metrics (imported lazily: GluonTS is loaded only by the functions that use it).

* ``data``: named statsmodels series and a synthetic one with known parameters; ``as_series`` takes a DataFrame,
  array, tensor or CSV (uni- or multivariate); windows, time split, exact scaling round trips, GluonTS datasets;
* ``tsdiff``: the unconditional window model (and the per-task conditional baseline); ``guidance``: MSE and
  quantile self-guidance (DDPM, DDIM); ``refine``: ML and Langevin refinement of base forecasts; ``tstr``: the
  linear predictive score; ``missing``: RM / BM-B / BM-E scenarios; ``baselines``: seasonal naive and DeepAR;
  ``evaluation``: GluonTS CRPS (mean wQL), ND, NRMSE, coverage; ``forecast``: one call behind ``diffusekit
  forecast``.
"""

from .data import NAMED_SERIES, Series, WindowScaler, as_series, forecast_windows, load_named_series, make_windows
from .forecast import forecast_samples
from .guidance import mse_energy, quantile_energy, sample_self_guided
from .refine import refine
from .tsdiff import TSDiffConfig, train_conditional, train_tsdiff

__all__ = ["NAMED_SERIES", "Series", "TSDiffConfig", "WindowScaler", "as_series", "forecast_samples",
           "forecast_windows", "load_named_series", "make_windows", "mse_energy", "quantile_energy", "refine",
           "sample_self_guided", "train_conditional", "train_tsdiff"]
