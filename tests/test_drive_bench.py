"""bench drive --quick: DiffusionDrive at 2 steps against the vanilla diffusion policy, direction of the effect."""

import torch

from diffusekit.bench import run_bench

torch.set_num_threads(1)


def test_quick_bench_drive_direction(tmp_path):
    result = run_bench("drive", out=tmp_path, quick=True)
    assert (tmp_path / "drive.json").exists() and (tmp_path / "drive.png").exists()
    dd, v2, v20 = (result["rows"][n] for n in ("DiffusionDrive-2", "vanilla-2", "vanilla-20"))
    assert dd["nfe"] == 2 and v2["nfe"] == 2 and v20["nfe"] == 20
    # anchored truncated diffusion at 2 steps: closer best plan and more valid manoeuvres than vanilla at 2 steps
    assert dd["min_ade"] < 0.6 * v2["min_ade"]
    assert dd["coverage"] > v2["coverage"] + 0.3
    # and as many valid manoeuvres, with a safer chosen plan, as vanilla with 10x the steps (the full run agrees;
    # there the vanilla policy at 20 steps has the lower min-ADE, see docs/benchmarks.md)
    assert dd["coverage"] >= v20["coverage"] and dd["collision"] <= v20["collision"]
    assert dd["collision"] < v2["collision"]
    assert result["rows"]["DiffusionDrive-1"]["nfe"] == 1
    for row in (dd, v2, v20):
        assert 0 <= row["collision"] <= 1 and 0 <= row["coverage"] <= 1 and row["diversity"] > 0
