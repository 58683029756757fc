"""``diffusekit bench tsdiff --quick``: runs, writes its files, and shows the directions TSDiff claims."""

import json

import pytest


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import torch

    from diffusekit.bench import run_bench

    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    result = run_bench("tsdiff", out=out, quick=True)
    torch.set_num_threads(threads)
    return out, result


def test_files_and_metrics(quick):
    out, result = quick
    assert json.loads((out / "tsdiff.json").read_text())["bench"] == "tsdiff"
    assert (out / "tsdiff.png").stat().st_size > 1000
    methods = result["datasets"]["synthetic"]["methods"]
    for m in methods.values():
        assert 0 <= m["coverage80"] <= 1 and m["crps"] > 0


def test_guidance_uses_the_context(quick):
    m = quick[1]["datasets"]["synthetic"]["methods"]
    assert m["guided_mse"]["crps"] < 0.7 * m["unguided"]["crps"]
    assert m["guided_quantile"]["crps"] < 0.7 * m["unguided"]["crps"]
    assert m["conditional"]["crps"] < 0.7 * m["unguided"]["crps"]


def test_guided_intervals_are_better_calibrated_than_unguided(quick):
    # The paper's claim that quantile guidance calibrates better than MSE guidance did not hold in our runs
    # (equal coverage in --quick, lower in the full bench), so it is reported, not asserted.
    m = quick[1]["datasets"]["synthetic"]["methods"]
    for energy in ("mse", "quantile"):
        assert abs(m[f"guided_{energy}"]["coverage80"] - 0.8) < abs(m["unguided"]["coverage80"] - 0.8)


def test_refinement_improves_the_seasonal_naive_forecast(quick):
    m = quick[1]["datasets"]["synthetic"]["methods"]
    curve = m["refine_ml"]["crps_by_iteration"]
    assert curve[0] == pytest.approx(m["seasonal_naive"]["crps"], rel=1e-4)  # starts from the base forecast
    assert curve[-1] < curve[0]
