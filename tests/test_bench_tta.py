"""``bench tta --quick``: the table's structure and the directions of the effects that hold at tiny scale."""

import json

import pytest

from diffusekit.bench import run_bench


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("tta")
    result = run_bench("tta", out=out, quick=True)
    return result, out


def test_quick_bench_writes_the_table_and_figure(quick):
    result, out = quick
    assert (out / "tta.png").stat().st_size > 0
    on_disk = json.loads((out / "tta.json").read_text())
    assert on_disk["summary"] == result["summary"]
    for method in ("source", "tent", "tent+filter"):
        row = result["single"][method]["gaussian_noise"]["5"]
        assert set(row) >= {"error", "brier", "nll", "seconds_per_image"}
        assert 0.0 <= row["error"] <= 1.0 and row["brier"] >= 0.0 and row["nll"] >= 0.0
    assert len(result["continual"]["tent"]["visit_error"]) == len(result["continual"]["domains"])
    assert set(result["batch_size"]["tent"]) == {"1", "64"}
    for name in ("tent", "tent+filter"):
        assert 0.0 <= result["open_set"][name]["gaussian_noise-5"]["rejection_auroc"] <= 1.0


def test_tent_beats_the_source_on_iid_batches(quick):
    single = quick[0]["single"]
    for shift in single["tent"]:
        assert single["tent"][shift]["5"]["error"] < single["source"][shift]["5"]["error"] - 0.05


def test_tent_degrades_at_batch_one_and_in_class_sorted_order(quick):
    result = quick[0]
    bs = result["batch_size"]["tent"]
    assert bs["1"]["error"] > bs["64"]["error"] + 0.05
    for row in result["sorted"]["tent"].values():
        assert row["sorted"]["error"] > row["iid"]["error"] + 0.1
    src = result["batch_size"]["source"]  # the source model has no batch dependence at all
    assert src["1"]["error"] == src["64"]["error"]


def test_filter_drops_unknowns_more_often_than_knowns(quick):
    """The wisdom-of-crowds observation: unknown samples lose confidence in their original class under adaptation
    more often than known ones, so the filter keeps a larger share of the known samples."""
    for key in ("open_set", "open_set_stress"):
        row = quick[0][key]["tent+filter"]["gaussian_noise-5"]
        assert row["kept_known"] > row["kept_unknown"] + 0.05


def test_filter_stops_tent_drifting_in_the_continual_stream_at_a_high_learning_rate(quick):
    """At 100x the recommended learning rate TENT drifts over the continual cycles (error rises from the first to
    the last cycle) and the wisdom-of-crowds filter keeps it from doing so."""
    stress = quick[0]["continual_stress"]
    tent, filtered = stress["tent"]["cycle_error"], stress["tent+filter"]["cycle_error"]
    assert tent[-1] > tent[0] + 0.05
    assert filtered[-1] < tent[-1] - 0.05


def test_dda_is_batch_size_invariant(quick):
    result = quick[0]
    if "dda" in result["missing"]:
        pytest.skip(result["missing"]["dda"])
    dda = result["batch_size"]["dda"]
    assert dda["1"]["error"] == dda["64"]["error"]
    assert dda["1"]["nll"] == pytest.approx(dda["64"]["nll"], rel=1e-5)
