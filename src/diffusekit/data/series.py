"""Univariate time series bundled with statsmodels, cut into sliding windows.

``co2``
    Weekly atmospheric CO2 at Mauna Loa (ppm), 1958-03-29 .. 2001-12-29, 2,284 weeks
    (``statsmodels.datasets.co2``). The 59 missing weeks are filled by linear interpolation in
    time. Default ``window`` 64.
``sunspots``
    Yearly mean sunspot number (``SUNACTIVITY``), 1700 .. 2008, 309 years
    (``statsmodels.datasets.sunspots``). Default ``window`` 32.

Split (chronological, independent of ``seed``): with L points and ``s = round(0.8 L)``, train
holds the windows lying entirely in points ``[0, s)`` and test those lying entirely in ``[s, L)``;
windows straddling ``s`` are dropped. Inside each part, windows start at its first point and
advance by ``stride``; they are returned in time order and ``n`` takes the first ``n``.

Values are standardised with the mean and (population) standard deviation of the *train part*
``[0, s)`` for both splits, so ``raw = x * info["std"] + info["mean"]``.

* ``x``: float32, shape ``(N, 1, window)``; ``y``: None.
* options: ``window`` (int, 2 .. length of the test part: 457 for co2, 62 for sunspots) and
  ``stride`` (int >= 1, default 1).
* info: ``mean``, ``std`` (floats, raw units), ``units``, ``frequency``, ``split_index`` (s),
  ``series_length`` (L), ``starts`` (int64 (N,), index of each window's first point in the full
  series), ``start_times`` (float64 (N,), decimal year of each window's first point),
  ``value_range`` = None (standardised values are unbounded), ``num_classes`` = None.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ._common import DatasetSplit, check_int, check_n_available

TRAIN_FRACTION = 0.8
SERIES_DEFAULT_WINDOW = {"co2": 64, "sunspots": 32}
_UNITS = {"co2": "ppm CO2", "sunspots": "yearly mean sunspot number"}
_FREQUENCY = {"co2": "weekly", "sunspots": "yearly"}


@functools.lru_cache(maxsize=None)
def series_values(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The full raw series ``name`` as read-only float64 arrays ``(values, decimal_years)``; cached.

    For ``co2`` the missing weeks are linearly interpolated in time.
    """
    if name == "co2":
        from statsmodels.datasets import co2

        frame = co2.load_pandas().data
        values = frame["co2"].to_numpy(dtype=np.float64)
        index = frame.index
        years = (index.year + (index.day_of_year - 1) / np.where(index.is_leap_year, 366.0, 365.0)).to_numpy()
        years = np.asarray(years, dtype=np.float64)
        missing = np.isnan(values)
        if missing.any():
            values = values.copy()
            values[missing] = np.interp(years[missing], years[~missing], values[~missing])
    elif name == "sunspots":
        from statsmodels.datasets import sunspots

        frame = sunspots.load_pandas().data
        values = frame["SUNACTIVITY"].to_numpy(dtype=np.float64)
        years = frame["YEAR"].to_numpy(dtype=np.float64)
    else:
        raise ValueError(f"unknown series {name!r}; available: co2, sunspots")
    values, years = np.array(values), np.array(years)
    values.flags.writeable = False
    years.flags.writeable = False
    return values, years


def _split_index(length: int) -> int:
    return int(round(TRAIN_FRACTION * length))


def load_series(name: str, split: str, n: int | None, seed: int, window: int, stride: int = 1) -> DatasetSplit:
    """Windows of series ``name`` for ``split`` (see the module docstring); ``seed`` is ignored."""
    del seed  # the split is chronological and the windows are in time order
    values, years = series_values(name)
    length = len(values)
    s = _split_index(length)
    window = check_int(f"{name} option window", window, 2, length - s)
    stride = check_int(f"{name} option stride", stride, 1)

    offset, part_len = (0, s) if split == "train" else (s, length - s)
    starts = offset + np.arange(0, part_len - window + 1, stride, dtype=np.int64)
    n = check_n_available(n, len(starts), f"{name}/{split} (window={window}, stride={stride})")
    starts = starts[:n]

    train_part = values[:s]
    mean, std = float(train_part.mean()), float(train_part.std())
    windows = values[starts[:, None] + np.arange(window)[None, :]]  # (n, window), a fresh copy
    x = torch.from_numpy(((windows - mean) / std).astype(np.float32))[:, None, :]
    info = {
        "value_range": None,
        "num_classes": None,
        "mean": mean,
        "std": std,
        "units": _UNITS[name],
        "frequency": _FREQUENCY[name],
        "split_index": s,
        "series_length": length,
        "window": window,
        "stride": stride,
        "starts": torch.from_numpy(starts.copy()),
        "start_times": torch.from_numpy(years[starts]),
    }
    return DatasetSplit(name, x, None, info)


def load_co2(split: str, n: int | None, seed: int, window: int = SERIES_DEFAULT_WINDOW["co2"], stride: int = 1):
    """Registry loader for ``co2``: weekly Mauna Loa CO2 windows, shape (N, 1, window)."""
    return load_series("co2", split, n, seed, window, stride)


def load_sunspots(
    split: str, n: int | None, seed: int, window: int = SERIES_DEFAULT_WINDOW["sunspots"], stride: int = 1
):
    """Registry loader for ``sunspots``: yearly sunspot-number windows, shape (N, 1, window)."""
    return load_series("sunspots", split, n, seed, window, stride)
