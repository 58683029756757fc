"""``bench tadsr --quick`` and ``bench pso --quick``: they write JSON + PNG and show the direction of each effect."""

import json

import pytest
import torch

from diffusekit.bench import run_bench


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_bench_tadsr_quick(tmp_path):
    res = run_bench("tadsr", out=tmp_path, quick=True)
    assert (tmp_path / "tadsr.json").exists() and (tmp_path / "tadsr.png").exists()
    assert json.loads((tmp_path / "tadsr.json").read_text())["bench"] == "tadsr"
    for name in ("digits", "patches"):
        for group in ("T=4", "T=15"):
            row = res["datasets"][name]["table"][group]
            assert row["tadsr@1"]["nfe"] == 1 and row["teacher@T"]["nfe"] == int(group[2:])
            # one student step reproduces the teacher's T-step chain better than the teacher's own single step
            # (quick, measured: +0.95 to +1.35 dB)
            assert row["tadsr@1"]["psnr_to_teacher"] > row["teacher@1"]["psnr_to_teacher"] + 0.3, (name, group, row)


def test_bench_pso_quick(tmp_path):
    res = run_bench("pso", out=tmp_path, quick=True)
    assert (tmp_path / "pso.json").exists() and (tmp_path / "pso.png").exists()
    table = res["table"]
    assert table["pso"]["nfe"] == table["student"]["nfe"] == 4
    # PSO moves the 4-step samples toward the target classes (quick, measured: 0.13 -> 0.34, FD 723 -> 505)
    assert table["pso"]["target_fraction"] > table["student"]["target_fraction"] + 0.1
    assert table["pso"]["target_fd"] < 0.9 * table["student"]["target_fd"]
    # ... and keeps more of the student's fine detail than naive fine-tuning at equal updates (quick, measured:
    # Laplacian energy ratio 0.77 vs 0.66; the student 0.74)
    assert table["pso"]["hf_ratio"] > table["naive"]["hf_ratio"] + 0.05
