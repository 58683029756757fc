"""bench petal --quick: PETAL's prediction is better calibrated than TENT's on the continual digits stream, and the
augmentation-averaged teacher targets are what makes it so."""

from diffusekit.bench import run_bench


def test_quick_petal_bench_direction(tmp_path):
    methods = run_bench("petal", out=tmp_path, quick=True)["methods"]
    assert (tmp_path / "petal.json").is_file() and (tmp_path / "petal.png").is_file()
    petal, tent, source = methods["petal"], methods["tent"], methods["source"]
    assert petal["error"] < source["error"] - 0.1
    assert petal["brier"] < tent["brier"] - 0.03 and petal["nll"] < tent["nll"] - 0.1
    assert methods["petal-no-augavg"]["brier"] > petal["brier"] + 0.03
    assert len(petal["per_cycle_error"]) == 2 and 0 < petal["augmented_fraction"] <= 1
