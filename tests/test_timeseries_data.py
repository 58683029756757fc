"""Series loading, user input, windows, scaling round trips, GluonTS conversion and metric cross-checks."""

import numpy as np
import pandas as pd
import pytest
import torch

from diffusekit.domains.timeseries.baselines import seasonal_naive
from diffusekit.domains.timeseries.data import (NAMED_SERIES, WindowScaler, as_series, forecast_windows,
                                                load_named_series, make_windows, synthetic_series, to_list_dataset,
                                                to_pandas_dataset, train_test_split)
from diffusekit.domains.timeseries.evaluation import gluonts_metrics, pinball_crps


@pytest.mark.parametrize("name", NAMED_SERIES)
def test_named_series_are_finite_and_regular(name):
    s = load_named_series(name)
    assert s.values.ndim == 2 and s.values.shape[1] == len(s.columns) and np.isfinite(s.values).all()
    assert len(s.index()) == s.length and s.season >= 1
    assert len(list(to_list_dataset(s))) == s.dim


def test_elnino_is_flattened_row_by_row():
    from statsmodels.datasets import elnino

    frame = elnino.load_pandas().data
    s = load_named_series("elnino")
    assert s.length == 12 * len(frame)
    assert s.values[13, 0] == frame.iloc[1, 2]  # Feb of the second year


def test_synthetic_series_matches_its_generating_parameters():
    s = synthetic_series(length=2400, seed=3)
    tr = s.truth
    t = np.arange(s.length)
    clean = tr["level"] + tr["slope"] * t + tr["amplitude"] * np.sin(2 * np.pi * t / tr["period"] + tr["phase"])
    resid = s.values[:, 0] - clean
    assert abs(resid.std() - tr["noise_std"]) < 0.05 * tr["noise_std"]
    assert abs(resid.mean()) < 4 * tr["noise_std"] / np.sqrt(s.length)
    assert np.array_equal(synthetic_series(length=2400, seed=3).values, s.values)
    assert not np.array_equal(synthetic_series(length=2400, seed=4).values, s.values)


def test_as_series_accepts_frames_arrays_tensors_and_csv(tmp_path):
    values = np.random.default_rng(0).normal(size=(50, 2))
    index = pd.date_range("2020-01-01", periods=50, freq="MS")
    frame = pd.DataFrame(values, index=index, columns=["a", "b"])
    s = as_series(frame)
    assert s.columns == ["a", "b"] and s.freq == "M" and np.array_equal(s.values, values)
    assert np.array_equal(as_series(values).values, values)
    assert np.array_equal(as_series(torch.tensor(values)).values, values)
    uni = as_series(pd.Series(values[:, 0]))
    assert uni.values.shape == (50, 1)
    path = tmp_path / "x.csv"
    frame.rename_axis("date").to_csv(path)
    from_csv = as_series(path)
    assert from_csv.columns == ["a", "b"] and np.allclose(from_csv.values, values) and from_csv.freq == "M"
    with pytest.raises(ValueError, match="NaN"):
        as_series(np.array([1.0, np.nan, 2.0, 3.0]))
    with pytest.raises(ValueError, match="shape"):
        as_series(np.zeros((4, 2, 2)))
    with pytest.raises(ValueError, match="no such series file"):
        as_series(tmp_path / "missing.csv")


def test_multivariate_gluonts_datasets():
    s = load_named_series("macrodata")
    (entry,) = list(to_list_dataset(s, multivariate=True))
    assert entry["target"].shape == (3, s.length)
    assert len(list(to_pandas_dataset(s))) == 3


def test_windows_and_split_by_time():
    s = synthetic_series(length=300)
    split, train = train_test_split(s, test_length=60)
    assert split == 240 and train.length == 240
    tr, te = forecast_windows(s, split, 48, 12)
    assert tr.shape == (240 - 60 + 1, 1, 60)
    assert te.shape == (5, 1, 60)
    assert np.array_equal(te[0, 0, 48:], s.values[240:252, 0])  # first test prediction window starts at the split
    assert np.array_equal(tr[-1, 0], s.values[180:240, 0])  # the last train window ends before the split
    w, starts = make_windows(np.arange(20.0)[:, None], 5, stride=3)
    assert np.array_equal(starts, [0, 3, 6, 9, 12, 15]) and np.array_equal(w[2, 0], np.arange(6.0, 11.0))


@pytest.mark.parametrize("kind", ["mean", "standard"])
def test_window_scaler_round_trip(kind):
    rng = np.random.default_rng(1)
    windows = 300 + 5 * rng.normal(size=(7, 3, 40))
    sc = WindowScaler(kind, context=30).fit(windows)
    z = sc.transform(windows)
    assert np.allclose(sc.inverse(z), windows, rtol=0, atol=1e-9)
    samples = rng.normal(size=(4, 7, 3, 40))
    assert np.allclose(sc.transform(sc.inverse(samples)), samples, atol=1e-9)
    ctx = z[..., :30]
    if kind == "mean":
        assert np.allclose(np.abs(ctx).mean(-1), 1.0)
    else:
        assert np.allclose(ctx.mean(-1), 0.0, atol=1e-9) and np.allclose(ctx.std(-1), 1.0)
    # the future does not leak into the scaling
    other = windows.copy()
    other[..., 30:] += 1000
    assert np.array_equal(WindowScaler(kind, 30).fit(other).scale, sc.scale)


def test_our_pinball_crps_matches_gluonts():
    rng = np.random.default_rng(2)
    truth = 10 + rng.normal(size=(3, 2, 12))
    samples = 10 + 1.3 * rng.normal(size=(200, 3, 2, 12))
    ours = pinball_crps(samples, truth)
    theirs = gluonts_metrics(samples, truth)["crps"]
    assert abs(ours - theirs) < 0.02 * theirs
    # per lead time: a forecast whose error grows with the horizon scores worse further out
    drift = truth[None] + np.linspace(0, 3, 12) * rng.normal(size=(200, 3, 2, 12))
    by_step = gluonts_metrics(drift, truth)["crps_by_horizon"]
    assert len(by_step) == 12 and by_step[0] < by_step[5] < by_step[11]
    # a sharper, correct forecast scores better
    assert gluonts_metrics(truth[None] + 0.1 * rng.normal(size=(200, 3, 2, 12)), truth)["crps"] < theirs


def test_coverage_of_calibrated_gaussian_samples_is_about_80_percent():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(40, 1, 24))
    samples = rng.normal(size=(400, 40, 1, 24))
    assert abs(gluonts_metrics(samples + 5, truth + 5)["coverage80"] - 0.8) < 0.05


def test_seasonal_naive_repeats_the_last_season():
    contexts = np.arange(2 * 30.0).reshape(2, 1, 30) + 1
    out = seasonal_naive(contexts, horizon=10, season=7)
    assert out.shape == (1, 2, 1, 10)
    expected = np.stack([contexts[m, 0, 30 - 7 + (h % 7)] for m in range(2) for h in range(10)]).reshape(2, 10)
    assert np.allclose(out[0, :, 0], expected)
