"""`diffusekit bench quant --quick`: the direction of the effects it reports, not only that it writes files.

Naive min/max loses clearly more at W4A8 than at W8A8; the better method of the quick run (the first available of
``QUICK_PREFERENCE``: PTQ4DM, then Q-Diffusion, EDA-DM, TFMQ-DM, EfficientDM) beats min/max at W4A8 in eps-MSE
against the fp model; the int8 deploy row is real int8 (a quarter of the fp32 weight bytes plus scales), and on
the trained digits model the int8 kernels' samples stay close to the fake-quant ones."""

from __future__ import annotations

import json
import math

import pytest

from diffusekit.bench import run_bench
from diffusekit.bench.quant import QUICK_PREFERENCE

REQUIRED = {"model", "method", "wbits", "abits", "digits_fd", "eps_mse_vs_fp", "weight_bytes", "calib_seconds",
            "finetune_seconds"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = run_bench("quant", out=out, quick=True)
    return out, result


def _row(result, method, wbits, abits):
    rows = [r for r in result["rows"] if (r["method"], r["wbits"], r["abits"]) == (method, wbits, abits)]
    assert len(rows) == 1, (method, wbits, abits)
    assert "error" not in rows[0], rows[0]["error"]
    return rows[0]


def test_files_and_rows(bench):
    out, result = bench
    on_disk = json.loads((out / "quant.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(result["rows"]))
    assert (out / "quant.png").stat().st_size > 10_000
    assert on_disk["sampler"] == {"sampler": "ddim", "grid": "uniform", "steps": 20}
    fp = _row(result, "fp32", 32, 32)
    for r in result["rows"]:
        assert REQUIRED <= set(r), sorted(REQUIRED - set(r))
        assert r["model"] == "digits_unet" and (r["wbits"], r["abits"]) in ((32, 32), (8, 8), (4, 8))
        if r["method"] != "fp32":
            assert len(r["eps_mse_per_step"]) == 20
            # 8- or 4-bit weights plus the fp32 rest: well under the fp32 bytes
            assert r["weight_bytes"] < (0.4 if r["wbits"] == 8 else 0.3) * fp["weight_bytes"]
    assert len(result["methods"]) == 2 and result["methods"][0] == "minmax"


def test_minmax_w4a8_worse_than_w8a8(bench):
    _, result = bench
    w8, w4 = _row(result, "minmax", 8, 8), _row(result, "minmax", 4, 8)
    # measured: eps-MSE 6.3e-4 -> 2.9e-3 (4.6x); samples from the same noise drift further from fp
    assert w4["eps_mse_vs_fp"] > 2 * w8["eps_mse_vs_fp"], (w4["eps_mse_vs_fp"], w8["eps_mse_vs_fp"])
    assert w4["sample_rmse_vs_fp"] > w8["sample_rmse_vs_fp"]
    assert math.isfinite(w8["digits_fd"]) and w8["class_accuracy"] > 0.8


def test_better_method_beats_minmax_at_w4a8(bench):
    _, result = bench
    better = [m for m in result["methods"] if m != "minmax"]
    if not better:
        pytest.skip(f"none of {', '.join(QUICK_PREFERENCE)} is available in this build")
    ours, base = _row(result, better[0], 4, 8), _row(result, "minmax", 4, 8)
    assert ours["eps_mse_vs_fp"] < base["eps_mse_vs_fp"], (better[0], ours["eps_mse_vs_fp"], base["eps_mse_vs_fp"])


def test_int8_deploy(bench):
    _, result = bench
    d = result["int8_deploy"]
    assert 0.24 < d["weight_bytes_ratio"] < 0.3  # int8 weights, fp32 biases/norms/scales
    assert d["fp32_seconds"] > 0 and d["int8_seconds"] > 0 and d["speedup"] == d["fp32_seconds"] / d["int8_seconds"]
    assert math.isfinite(d["max_abs_diff_vs_fakequant"])
    # on the trained digits model the int8 kernels' samples follow the fake-quant model's far more closely than
    # fake-quant follows fp32 (same noise, 20 DDIM steps)
    c = d["trained_model_check"]["digits_unet"]
    assert c["mean_abs_diff_vs_fakequant"] < 0.5 * c["mean_abs_diff_fakequant_vs_fp32"], c
