"""bench dda --quick: the guided projection beats the source and unguided SDEdit on noise, blur and JPEG."""

from diffusekit.bench import run_bench


def test_quick_dda_bench_direction(tmp_path):
    result = run_bench("dda", out=tmp_path, quick=True)
    rows = result["results"]
    assert (tmp_path / "dda.json").is_file() and (tmp_path / "dda.png").is_file()
    source, sdedit = rows["source"]["mean_error"], rows["sdedit_ddim10"]["mean_error"]
    for name in ("dda_ddim5", "dda_ddim10_default"):
        assert rows[name]["mean_error"] < source - 0.08, (name, rows[name]["mean_error"], source)
        assert rows[name]["mean_error"] < sdedit - 0.03, (name, rows[name]["mean_error"], sdedit)
        assert rows[name]["backward_per_image"] == rows[name]["nfe_per_image"] > 0
    assert rows["sdedit_ddim10"]["backward_per_image"] == 0
    assert result["agreement"]["dda_ddim10_default"] == 1.0
