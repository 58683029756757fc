"""``diffusekit forecast``: outputs (JSON / CSV + fan chart), multivariate CSV input, one-line input errors."""

import json

import numpy as np
import pandas as pd
import pytest

from diffusekit.cli import main


def test_seasonal_naive_json_and_fan_chart(tmp_path):
    out = tmp_path / "f.json"
    assert main(["forecast", "--data", "sunspots", "--horizon", "11", "--method", "seasonal-naive",
                 "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["horizon"] == 11 and len(res["time"]) == 11 and res["time"][0] == "2009"
    from diffusekit.domains.timeseries.data import load_named_series

    values = load_named_series("sunspots").values[:, 0]
    assert np.allclose(res["variables"]["sunactivity"]["mean"], values[-11:], rtol=1e-6)  # season 11
    assert (tmp_path / "f.png").stat().st_size > 1000
    # nothing is overwritten without --overwrite
    assert main(["forecast", "--data", "sunspots", "--method", "seasonal-naive", "--out", str(out)]) == 2


def test_tsdiff_quantile_on_a_multivariate_csv(tmp_path):
    t = np.arange(90)
    frame = pd.DataFrame({"date": pd.date_range("2001-01-01", periods=90, freq="D"),
                          "a": np.sin(2 * np.pi * t / 7), "b": 5 + np.cos(2 * np.pi * t / 7)})
    path = tmp_path / "two.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "f.csv"
    assert main(["forecast", "--data", str(path), "--horizon", "7", "--context", "28", "--method", "tsdiff-quantile",
                 "--train-steps", "20", "--samples", "4", "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert len(table) == 14 and set(table["variable"]) == {"a", "b"}
    assert table["time"].iloc[0] == "2001-04-01"
    qs = table[[f"q{q / 10:g}" for q in range(1, 10)]].to_numpy()
    assert np.isfinite(qs).all() and (np.diff(qs, axis=1) >= -1e-9).all()  # quantiles are ordered
    assert (tmp_path / "f.png").exists()


@pytest.mark.parametrize("argv,message", [
    (["--data", "nope"], "not a bundled series"),
    (["--data", "nile", "--horizon", "0"], "--horizon must be >= 1"),
    (["--data", "nile", "--samples", "1"], "--samples must be >= 2"),
    (["--data", "nile", "--horizon", "90"], "fewer than 8 training windows"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, message):
    assert main(["forecast", *argv, "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "f.json").exists()


def test_bad_output_suffix(tmp_path, capsys):
    assert main(["forecast", "--data", "nile", "--out", str(tmp_path / "f.txt")]) == 2
    assert "--out must end in .json or .csv" in capsys.readouterr().err


def test_forecast_samples_accepts_a_dataframe_and_a_tensor_directly():
    import torch

    from diffusekit.domains.timeseries.forecast import forecast_samples

    t = np.arange(60)
    frame = pd.DataFrame({"x": np.sin(2 * np.pi * t / 6), "z": np.cos(2 * np.pi * t / 6)})
    smp = forecast_samples(frame, 6, method="tsdiff", context=18, samples=3, train_steps=10)
    assert smp.shape == (3, 2, 6) and np.isfinite(smp).all()
    naive = forecast_samples(torch.tensor(frame.to_numpy()), 6, method="seasonal-naive", context=18)
    assert naive.shape == (1, 2, 6)
    with pytest.raises(ValueError, match="unknown forecasting method"):
        forecast_samples(frame, 6, method="prophet")
