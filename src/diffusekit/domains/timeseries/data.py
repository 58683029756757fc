"""Time series for TSDiff: named statsmodels series, a synthetic series with known truth, user input, windows.

A :class:`Series` holds values of shape (T, D) (time x variables, D = 1 for univariate series), a pandas
``Period`` start, a GluonTS/pandas frequency string and the seasonal period used by seasonal naive.

Named series (no downloads; all ship with statsmodels):

* ``co2``: Mauna Loa CO2 (ppm), weekly 1958..2001 resampled to monthly means (526 months; the weekly gaps are
  interpolated first by ``diffusekit.data.series.series_values``), season 12.
* ``sunspots``: yearly mean sunspot number 1700..2008 (309 years), season 11 (the solar cycle).
* ``elnino``: monthly sea-surface temperature 1950..2010, the 12 month columns flattened row by row (732
  months), season 12.
* ``nile``: yearly Nile flow volume at Aswan 1871..1970 (100 years), season 1 (no seasonality).
* ``elec_equip``: monthly euro-area electrical-equipment orders index 1995..2016 (257 months), season 12.
* ``macrodata``: quarterly US macro data 1959..2009, 3 variables (realgdp, realcons, realinv) as a
  multivariate example (203 quarters), season 4.
* ``synthetic``: y_t = level + slope t + amplitude sin(2 pi t / 24 + phase) + noise_std z_t, z_t ~ N(0, 1)
  iid, hourly, season 24, with the generating parameters kept in ``Series.truth`` (seeded).

Windows (Kollovieh et al. 2023, arXiv 2307.11494, Sec. 4: context + prediction windows) are (N, D, C + H)
arrays; :class:`WindowScaler` scales each window by statistics of its context only, with an exact inverse.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

NAMED_SERIES = ("co2", "sunspots", "elnino", "nile", "elec_equip", "macrodata", "synthetic")
TEST_FRACTION = 0.2
SYNTHETIC_TRUTH = {"level": 10.0, "slope": 0.004, "amplitude": 2.0, "period": 24, "phase": 0.5, "noise_std": 0.3}


@dataclasses.dataclass
class Series:
    """A regularly sampled series: ``values`` float64 (T, D), ``columns`` (D names), ``start`` (pd.Period),
    ``freq`` (pandas offset alias), ``season`` (seasonal period in steps), ``truth`` (generating parameters of
    synthetic data, else None)."""

    name: str
    values: np.ndarray
    columns: list[str]
    start: pd.Period
    freq: str
    season: int
    truth: dict | None = None

    @property
    def length(self) -> int:
        """Number of time steps T."""
        return int(self.values.shape[0])

    @property
    def dim(self) -> int:
        """Number of variables D."""
        return int(self.values.shape[1])

    def index(self) -> pd.PeriodIndex:
        """The T periods of the values."""
        return pd.period_range(self.start, periods=self.length, freq=self.freq)

    def to_frame(self) -> pd.DataFrame:
        """The values as a DataFrame indexed by period, one column per variable."""
        return pd.DataFrame(self.values, index=self.index(), columns=self.columns)


def synthetic_series(length: int = 1200, seed: int = 0, **overrides) -> Series:
    """Seasonal + trend + noise with known parameters (``SYNTHETIC_TRUTH``, overridable), hourly, season 24:
    y_t = level + slope t + amplitude sin(2 pi t / period + phase) + noise_std z_t, z ~ N(0, 1) from
    ``default_rng(seed)``."""
    truth = {**SYNTHETIC_TRUTH, **overrides}
    t = np.arange(length, dtype=np.float64)
    z = np.random.default_rng(seed).standard_normal(length)
    y = (truth["level"] + truth["slope"] * t + truth["amplitude"] * np.sin(2 * np.pi * t / truth["period"]
                                                                            + truth["phase"]) + truth["noise_std"] * z)
    return Series("synthetic", y[:, None], ["y"], pd.Period("2000-01-01 00:00", freq="h"), "h",
                  int(truth["period"]), {**truth, "seed": seed, "length": length})


def load_named_series(name: str, seed: int = 0) -> Series:
    """The named series ``name`` (one of ``NAMED_SERIES``; see the module docstring). ``seed`` only affects
    ``synthetic``."""
    if name == "synthetic":
        return synthetic_series(seed=seed)
    if name == "co2":
        from ...data.series import series_values

        values, _ = series_values("co2")
        from statsmodels.datasets import co2

        weekly = pd.Series(np.asarray(values), index=co2.load_pandas().data.index)
        monthly = weekly.resample("MS").mean().dropna()
        return Series("co2", monthly.to_numpy()[:, None], ["co2"], pd.Period(monthly.index[0], freq="M"), "M", 12)
    if name == "sunspots":
        from statsmodels.datasets import sunspots

        frame = sunspots.load_pandas().data
        return Series("sunspots", frame["SUNACTIVITY"].to_numpy(np.float64)[:, None], ["sunactivity"],
                      pd.Period(int(frame["YEAR"].iloc[0]), freq="Y"), "Y", 11)
    if name == "elnino":
        from statsmodels.datasets import elnino

        frame = elnino.load_pandas().data
        values = frame.drop(columns="YEAR").to_numpy(np.float64).reshape(-1)  # row by row: Jan..Dec of each year
        return Series("elnino", values[:, None], ["sst"], pd.Period(f"{int(frame['YEAR'].iloc[0])}-01", freq="M"),
                      "M", 12)
    if name == "nile":
        from statsmodels.datasets import nile

        frame = nile.load_pandas().data
        return Series("nile", frame["volume"].to_numpy(np.float64)[:, None], ["volume"],
                      pd.Period(int(frame["year"].iloc[0]), freq="Y"), "Y", 1)
    if name == "elec_equip":
        from statsmodels.datasets import elec_equip

        frame = elec_equip.load().data
        return Series("elec_equip", frame.iloc[:, 0].to_numpy(np.float64)[:, None], ["orders"],
                      pd.Period(frame.index[0], freq="M"), "M", 12)
    if name == "macrodata":
        from statsmodels.datasets import macrodata

        frame = macrodata.load_pandas().data
        cols = ["realgdp", "realcons", "realinv"]
        return Series("macrodata", frame[cols].to_numpy(np.float64), cols, pd.Period("1959Q1", freq="Q"), "Q", 4)
    raise ValueError(f"unknown series {name!r}; available: {', '.join(NAMED_SERIES)}")


def as_series(obj, *, name: str | None = None, freq: str | None = None, season: int | None = None) -> Series:
    """Any user series as a :class:`Series`: a named series, a CSV path (first column the time index if it parses
    as dates, every numeric column a variable), a pandas DataFrame (columns = variables) or Series, a numpy array
    or torch tensor of shape (T,) or (T, D). ``freq`` defaults to the index's frequency or ``"D"``; ``season``
    to 1. Raises ValueError on empty, non-numeric or non-finite data."""
    if isinstance(obj, Series):
        return obj
    if isinstance(obj, (str, Path)) and str(obj) in NAMED_SERIES:
        return load_named_series(str(obj))
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise ValueError(f"no such series file {str(path)!r}; give a CSV path or one of {', '.join(NAMED_SERIES)}")
        frame = pd.read_csv(path)
        first = frame.columns[0]
        if not pd.api.types.is_numeric_dtype(frame[first]):
            try:
                frame = frame.set_index(pd.DatetimeIndex(pd.to_datetime(frame[first])))
                frame = frame.drop(columns=first)
            except (ValueError, TypeError):
                raise ValueError(f"{path}: first column {first!r} is neither numeric nor a date") from None
        return as_series(frame, name=name or path.stem, freq=freq, season=season)
    if isinstance(obj, pd.Series):
        obj = obj.to_frame(name=obj.name if obj.name is not None else "y")
    if isinstance(obj, pd.DataFrame):
        numeric = obj.select_dtypes(include="number")
        if numeric.shape[1] == 0:
            raise ValueError("the DataFrame has no numeric column")
        start, freq = _start_and_freq(obj.index, freq)
        return _checked(name or "frame", numeric.to_numpy(np.float64), [str(c) for c in numeric.columns], start, freq,
                        season)
    if hasattr(obj, "detach"):  # torch tensor
        obj = obj.detach().cpu().numpy()
    values = np.asarray(obj, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"an array series must have shape (T,) or (T, D); got {values.shape}")
    freq = freq or "D"
    cols = [f"y{i}" for i in range(values.shape[1])] if values.shape[1] > 1 else ["y"]
    return _checked(name or "array", values, cols, pd.Period("2000-01-01", freq=freq), freq, season)


def _start_and_freq(index, freq: str | None) -> tuple[pd.Period, str]:
    if isinstance(index, pd.PeriodIndex) and len(index):
        return index[0], freq or index.freqstr
    if isinstance(index, pd.DatetimeIndex) and len(index):
        freq = freq or pd.infer_freq(index) if len(index) >= 3 else freq
        freq = freq or "D"
        return pd.Period(index[0], freq=_period_alias(freq)), _period_alias(freq)
    freq = freq or "D"
    return pd.Period("2000-01-01", freq=freq), freq


def _period_alias(freq: str) -> str:
    """Datetime offset aliases such as ``MS``/``ME``/``QS-OCT`` as period aliases (``M``, ``Q``)."""
    base = freq.split("-")[0]
    return {"MS": "M", "ME": "M", "QS": "Q", "QE": "Q", "YS": "Y", "YE": "Y", "AS": "Y", "A": "Y"}.get(base, base)


def _checked(name, values, columns, start, freq, season) -> Series:
    if values.shape[0] < 3:
        raise ValueError(f"series {name!r} has {values.shape[0]} time steps; need at least 3")
    if not np.isfinite(values).all():
        raise ValueError(f"series {name!r} holds NaN or infinite values; fill or drop them first")
    season = 1 if season is None else int(season)
    if season < 1:
        raise ValueError(f"season must be >= 1; got {season}")
    return Series(name, values, columns, start, freq, season)


def train_test_split(series: Series, test_length: int | None = None) -> tuple[int, Series]:
    """Split by time: the index s where the test part starts (default the last ``TEST_FRACTION``) and the train
    part ``values[:s]`` as its own Series."""
    test_length = int(round(TEST_FRACTION * series.length)) if test_length is None else int(test_length)
    if not 0 < test_length < series.length:
        raise ValueError(f"test_length must be in 1..{series.length - 1}; got {test_length}")
    s = series.length - test_length
    return s, dataclasses.replace(series, values=series.values[:s])


def make_windows(values: np.ndarray, length: int, stride: int = 1, first: int = 0, last: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows of ``values`` (T, D): returns (windows (N, D, length), starts (N,)) for window starts
    ``first, first + stride, ...`` with the window's end ``start + length <= last`` (default T)."""
    last = values.shape[0] if last is None else last
    starts = np.arange(first, last - length + 1, stride, dtype=np.int64)
    if len(starts) == 0:
        raise ValueError(f"no window of length {length} fits in time steps {first}..{last}")
    idx = starts[:, None] + np.arange(length)[None, :]
    return np.transpose(values[idx], (0, 2, 1)).copy(), starts


def forecast_windows(series: Series, split: int, context: int, horizon: int, stride: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Train windows lying in ``[0, split)`` (stride 1) and test windows whose prediction part starts at
    ``split, split + stride, ...`` (default stride = horizon; context may reach back into the train part).
    Returns (train (N, D, C + H), test (M, D, C + H))."""
    train, _ = make_windows(series.values, context + horizon, 1, 0, split)
    first = split - context
    if first < 0:
        raise ValueError(f"context {context} is longer than the train part ({split} steps)")
    test, _ = make_windows(series.values, context + horizon, stride or horizon, first)
    return train, test


class WindowScaler:
    """Per-window, per-variable scaling by statistics of the context only (so forecasting never sees the future).

    * ``mean`` (TSDiff / GluonTS ``MeanScaler``, arXiv 2307.11494 Sec. 4): x' = x / m, m = mean_context |x|
      (1 where it is 0).
    * ``standard``: x' = (x - mu) / s, mu and s the context mean and standard deviation (s floored at
      1e-8 + 1e-3 |mu|): for series far from zero (co2 around 350 ppm) mean scaling leaves ~1 % variation.

    ``fit(windows)`` stores (N, D, 1) loc and scale; ``transform``/``inverse`` are exact inverses of each other
    for any array shaped (N, D, L) or (S, N, D, L).
    """

    def __init__(self, kind: str = "standard", context: int | None = None):
        if kind not in ("mean", "standard"):
            raise ValueError(f"unknown scaling {kind!r}; allowed: mean, standard")
        self.kind, self.context = kind, context

    def fit(self, windows: np.ndarray, observed: np.ndarray | None = None) -> WindowScaler:
        """Statistics of each window's context (N, D, L) -> loc, scale (N, D, 1); only entries with ``observed``
        > 0 count when a mask is given (missing values)."""
        ctx = windows[..., : self.context] if self.context else windows
        w = np.ones_like(ctx) if observed is None else (observed[..., : ctx.shape[-1]] > 0).astype(np.float64)
        n = np.maximum(w.sum(-1, keepdims=True), 1.0)
        if self.kind == "mean":
            m = (np.abs(ctx) * w).sum(-1, keepdims=True) / n
            self.loc, self.scale = np.zeros_like(m), np.where(m > 0, m, 1.0)
        else:
            mu = (ctx * w).sum(-1, keepdims=True) / n
            sd = np.sqrt((((ctx - mu) ** 2) * w).sum(-1, keepdims=True) / n)
            self.loc, self.scale = mu, np.maximum(sd, 1e-8 + 1e-3 * np.abs(mu))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """x' = (x - loc) / scale."""
        return (x - self.loc) / self.scale

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """x = x' scale + loc (exact inverse of ``transform``)."""
        return x * self.scale + self.loc


def to_list_dataset(series: Series, *, end: int | None = None, multivariate: bool = False):
    """A GluonTS ``ListDataset`` of ``values[:end]``: one univariate entry per variable, or (``multivariate``)
    one entry with a (D, T) target."""
    from gluonts.dataset.common import ListDataset

    values = series.values[:end]
    if multivariate:
        return ListDataset([{"start": series.start, "target": values.T, "item_id": series.name}], freq=series.freq,
                           one_dim_target=False)
    return ListDataset([{"start": series.start, "target": values[:, d], "item_id": f"{series.name}/{c}"}
                        for d, c in enumerate(series.columns)], freq=series.freq)


def to_pandas_dataset(series: Series):
    """A GluonTS ``PandasDataset`` with one univariate item per variable (long format by column)."""
    from gluonts.dataset.pandas import PandasDataset

    frame = series.to_frame()
    return PandasDataset({c: frame[c] for c in series.columns}, freq=series.freq)
