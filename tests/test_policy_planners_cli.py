"""``diffusekit policy`` with the planners: maze (Diffuser family) and driving scenes (DiffusionDrive)."""

import json

import pytest

from diffusekit.cli import main


@pytest.mark.parametrize("env, method, data", [("maze", "autoregressive", "3"), ("drive", "diffusiondrive", "60")])
def test_planner_train_eval_round_trip(tmp_path, capsys, env, method, data):
    out = tmp_path / "run"
    assert main(["policy", "train", "--env", env, "--method", method, "--out", str(out), "--steps", "5",
                 "--demos", data, "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "planner" and config["env"] == env and config["method"] == method
    assert main(["policy", "train", "--env", env, "--method", method, "--out", str(out), "--steps", "5",
                 "--demos", data]) == 2  # nothing overwritten without --overwrite
    capsys.readouterr()
    report = tmp_path / "r.json"
    assert main(["policy", "eval", "--policy", str(out), "--episodes", "2", "--json", str(report), "--gif",
                 str(tmp_path / "a.gif"), "--no-progress"]) == 0
    line = capsys.readouterr().out
    summary = json.loads(report.read_text())["summary"]
    if env == "maze":
        assert "network calls" in line and "return" in line and summary["nfe"]["total"] == 32  # 31 steps + inverse
    else:
        assert summary["n_scenes"] == 2 and summary["nfe"] == 2 and 0 <= summary["coverage"] <= 1
    assert (tmp_path / "a.gif").stat().st_size > 0
    assert main(["policy", "eval", "--policy", str(out), "--sampler", "ddim"]) == 2
    assert main(["policy", "eval", "--policy", str(out), "--method", "mse"]) == 2


def test_planner_cli_refuses_a_policy_method_on_the_maze(tmp_path, capsys):
    assert main(["policy", "train", "--env", "maze", "--method", "diffusion", "--out", str(tmp_path / "x")]) == 2
    assert "not a maze planner; allowed: diffuser, trajectory_diffuser, autoregressive" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
