"""Quick runs of the method benches: same code path as the full bench, files written, and the direction of
each paper's effect asserted (the full bench measures its size)."""

from __future__ import annotations

import json

import torch

from diffusekit.cli import main


def _quick(tmp_path, name) -> dict:
    assert main(["bench", name, "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["quick"] is True and result["bench"] == name and result["summary"]
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    return result


def test_ppap_quick_data_free_experts_beat_the_clean_classifier(tmp_path):
    r = _quick(tmp_path, "ppap")["results"]
    top = str(max(int(s) for s in r["clean"]["by_scale"]))
    unguided = r["clean"]["by_scale"]["0"]["judge_accuracy"]
    assert r["ppap_lora"]["by_scale"][top]["judge_accuracy"] > r["clean"]["by_scale"][top]["judge_accuracy"]
    assert r["ppap_lora"]["by_scale"][top]["judge_accuracy"] > unguided + 0.1
    assert r["ppap_lora"]["uses_labels"] is False and r["noisy_single"]["uses_labels"] is True
    assert r["ppap_lora"]["trainable_params"] < r["full_experts"]["trainable_params"]


def test_find_quick_raises_the_reward_over_the_gaussian_prior(tmp_path):
    r = _quick(tmp_path, "find")
    assert r["ring8"]["variants"]["find"]["final_reward"] > r["ring8"]["baseline_hit_rate"] + 0.1
    assert r["digits"]["variants"]["find"]["final_reward"] > r["digits"]["baseline_reward"]


def test_ditto_quick_lowers_every_control_loss(tmp_path):
    targets = _quick(tmp_path, "ditto")["targets"]
    for name, rows in targets.items():
        base = rows["baseline"]["control_loss"]
        assert rows["ditto_full_10step"]["control_loss"] < base, name
        assert rows["ditto2_surrogate_2step"]["control_loss"] < base, name
    assert targets["class"]["ditto_full_10step"]["target_class_accuracy"] > \
        targets["class"]["baseline"]["target_class_accuracy"]


def test_obc_quick_selected_boundary_beats_a_random_one(tmp_path):
    table = _quick(tmp_path, "obc")["datasets"]["digits"]["table"]
    for steps, row in table.items():
        assert row["obc"]["psnr"] > row["random"]["psnr"], steps
        assert row["oracle"]["psnr"] >= row["obc"]["psnr"] - 1e-9, steps  # best per image bounds any shared choice


def test_resshift_quick_beats_ddpm_at_equal_steps(tmp_path):
    datasets = _quick(tmp_path, "resshift")["datasets"]
    for name, entry in datasets.items():
        for task, row in entry["table"].items():
            assert row["resshift@4"]["psnr"] > row["ddpm@4"]["psnr"], (name, task)


def test_bench_samplers_baseline_quick_errors_fall_with_more_steps(tmp_path):
    result = _quick(tmp_path, "samplers_baseline")
    for problem in result["problems"].values():
        for name in ("ddim", "euler"):  # first-order ODE solvers: about half the error at twice the steps
            err = problem["samplers"][name]
            assert err["10"]["trajectory_error"] < 0.6 * err["5"]["trajectory_error"]


def test_bench_momentum_quick_heavy_ball_damps_divergence(tmp_path):
    result = _quick(tmp_path, "momentum")
    toy = result["toy_ode"]
    exact = torch.tensor(toy["exact"])
    err = {k: float((torch.tensor(v) - exact).norm()) for k, v in toy["final"].items()}
    assert err["hb0.8"] < 0.1 * err["ab2"]  # AB2 is unstable on the stiff toy ODE, heavy ball is not
    digits = result["digits"]["methods"]
    assert digits["plms4_hb0.8"]["5"]["far_outside_fraction"] < digits["plms4"]["5"]["far_outside_fraction"]
    assert digits["plms4_hb0.8"]["5"]["digits_fd"] < digits["plms4"]["5"]["digits_fd"]
    gmm = result["guided_gmm"]["methods"]
    assert gmm["plms4_hb0.8"]["5"]["blow_up"] < gmm["plms4"]["5"]["blow_up"]
