"""The CLI loses nothing and overwrites nothing: signals checkpoint, outputs are checked before the work,
config mistakes and bad options are one line, bugs keep their traceback; defaults and --help."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusekit.cli import build_parser, main
from diffusekit.training.checkpoint import load_checkpoint

RING = ["--data", "gmm_ring8", "--num-examples", "256", "--batch-size", "64", "--no-progress"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "diffusekit.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


# ------------------------------------------------------------------------ SIGTERM, then --resume alone


def test_sigterm_saves_and_resume_with_saved_config_equals_uninterrupted(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    # no periodic checkpoint: the only one on disk is the one the SIGTERM handler writes
    cfg.write_text("net: {name: mlp, hidden: 32, depth: 1}\ntrain: {lr: 2e-3, checkpoint_every: 0, log_every: 10, "
                   "seed: 3}\n")
    flags = ["--config", str(cfg), "--data", "gmm_ring8", "--num-examples", "512", "--batch-size", "64",
             "--steps", "800", "--no-progress"]
    run = tmp_path / "run"
    proc = _cli("train", "--out", str(run), *flags)
    deadline = time.time() + 240
    while not (run / "log.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted: SIGTERM at step" in err and "--resume" in err and "Traceback" not in err
    stopped = json.loads((run / "checkpoint.json").read_text())["step"]
    assert 10 <= stopped < 800
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1] == {**log[-1], "type": "stop", "step": stopped, "reason": "SIGTERM"}
    assert (run / "config.yaml").exists() and not list(run.glob(".*.tmp"))

    # --resume with no other flag: the config (net size, lr, seed, data, steps) comes from config.yaml
    resumed = _cli("train", "--out", str(run), "--resume", "--no-progress")
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err[-2000:]
    assert "to step 800" in out

    fresh = _cli("train", "--out", str(tmp_path / "fresh"), *flags)
    out, err = fresh.communicate(timeout=400)
    assert fresh.returncode == 0, err[-2000:]
    a, meta_a = load_checkpoint(run)
    b, meta_b = load_checkpoint(tmp_path / "fresh")
    assert meta_a["step"] == meta_b["step"] == 800
    names = [n for n in a if n.startswith(("model.", "ema."))]
    assert names and all(torch.equal(a[n], b[n]) for n in names)  # bit-exact
    assert torch.equal(a["history.loss"], b["history.loss"])


# ------------------------------------------------------------------------------- nothing overwritten


def test_train_refuses_a_folder_with_other_files_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(out), "--steps", "2", *RING]) == 2
    assert "already holds files (notes.txt)" in _error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["train", "--out", str(out), "--steps", "2", "--overwrite", *RING]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoint.json").exists()
    log = (out / "log.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--steps", "3", *RING]) == 2
    assert "already holds a checkpoint" in _error_line(capsys)
    assert (out / "log.jsonl").read_bytes() == log
    assert main(["train", "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "pass only one" in _error_line(capsys)


def test_sample_and_eval_refuse_to_replace_a_file(tmp_path, capsys):
    npz = tmp_path / "s.npz"
    base = ["sample", "--model", "zoo:toy_ring8", "--count", "6", "--steps", "3", "--out", str(npz)]
    assert main(base) == 0
    assert f"to {npz}" in capsys.readouterr().out
    before = npz.read_bytes()
    assert main(base + ["--seed", "5"]) == 2
    assert "already exists; pass --overwrite" in _error_line(capsys)
    assert npz.read_bytes() == before
    assert main(base + ["--seed", "5", "--overwrite"]) == 0
    assert npz.read_bytes() != before

    metrics = tmp_path / "m.json"
    metrics.write_text("old")
    capsys.readouterr()
    assert main(["eval", "--samples", str(npz), "--data", "gmm_ring8", "--out", str(metrics)]) == 2
    assert "already exists" in _error_line(capsys) and metrics.read_text() == "old"
    assert main(["eval", "--samples", str(npz), "--data", "gmm_ring8", "--out", str(metrics), "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert f"wrote the metrics to {metrics}" in captured.err
    assert json.loads(metrics.read_text()) == json.loads(captured.out)


@pytest.mark.parametrize("case", ["missing_parent", "folder_as_file", "file_as_parent", "read_only"])
def test_output_location_is_checked_before_the_work(tmp_path, capsys, monkeypatch, case):
    import diffusekit.cli as cli

    calls = []
    monkeypatch.setattr(cli, "load_denoiser", lambda spec: calls.append(spec))  # the work must not start
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.npz").mkdir()
    target = {"missing_parent": tmp_path / "nope" / "s.npz", "folder_as_file": tmp_path / "adir.npz",
              "file_as_parent": tmp_path / "afile" / "s.npz", "read_only": tmp_path / "s.npz"}[case]
    if case == "read_only":  # root ignores permission bits, so the check's view of them is simulated
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    assert main(["sample", "--model", "zoo:toy_ring8", "--out", str(target)]) == 2
    line = _error_line(capsys)
    assert str(target) in line and calls == []
    expected = {"missing_parent": "does not exist", "folder_as_file": "is a folder",
                "file_as_parent": "not a folder", "read_only": "not writable"}[case]
    assert expected in line


def test_bench_checks_its_output_first_and_says_where_it_wrote(tmp_path, capsys, monkeypatch):
    from diffusekit import bench

    ran = []
    entry = bench.BENCHES["obc"]

    def fake_run(quick):
        import matplotlib.pyplot as plt

        ran.append(quick)
        return {"summary": "fake"}, plt.figure()

    monkeypatch.setitem(bench.BENCHES, "obc", bench.BenchEntry("obc", entry.summary, fake_run))
    (tmp_path / "file").write_text("x")
    assert main(["bench", "obc", "--quick", "--out", str(tmp_path / "file")]) == 2
    assert "is not a folder" in _error_line(capsys) and ran == []
    out = tmp_path / "b"
    assert main(["bench", "obc", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert f"wrote {out / 'obc.json'} and {out / 'obc.png'}" in capsys.readouterr().out
    before = (out / "obc.json").read_bytes()
    assert main(["bench", "obc", "--quick", "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in _error_line(capsys)
    assert (out / "obc.json").read_bytes() == before and ran == [True]
    assert main(["bench", "obc", "--quick", "--out", str(out), "--overwrite"]) == 0 and ran == [True, True]


# ------------------------------------------------------------------------------------ config mistakes


@pytest.mark.parametrize("yaml_text, expected", [
    ("loss: {predicton: eps}", "unknown loss option 'predicton'; allowed: prediction, weighting"),
    ("net: {hiden: 8}", "unknown mlp net option 'hiden'; allowed: name, dim, hidden"),
    ("net: {name: unet, base_chanels: 8}", "unknown unet net option 'base_chanels'; allowed: name, in_channels"),
    ("train: 5", "config section 'train' must be a mapping (steps, batch_size, lr"),
    ("train: {stpes: 5}", "unknown TrainConfig fields ['stpes']; allowed: steps, batch_size"),
    ("conditional: maybe", "conditional must be true or false; got 'maybe'"),
    ("train: {progress: 'off'}", "progress must be true or false"),
    ("loss: {scale_input: 'sometimes'}", "loss option 'scale_input' must be true or false"),
    ("data: {name: gmm_ring8, size: 3}", "unknown data option 'size'; allowed: name, n, options"),
    ("schedule: {name: flow, t_mni: 0.1}", "bad options for schedule 'flow'"),
])
def test_config_mistakes_are_one_line(tmp_path, capsys, yaml_text, expected):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text + "\n")
    rc = main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--data", "gmm_ring8", "--steps", "1"])
    assert rc == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: --config {cfg}: ") and expected in line
    assert not (tmp_path / "r").exists()


def test_yaml_number_text_is_read_as_a_number(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {lr: 1e-3, steps: 2, batch_size: 32}\nloss: {label_dropout: 1e-1}\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--data", "moons",
                 "--num-examples", "64", "--conditional", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "r" / "checkpoint.json").read_text())
    assert meta["train_config"]["lr"] == 1e-3 and meta["extra_config"]["loss"]["label_dropout"] == 0.1
    import yaml

    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["train"]["lr"] == 1e-3 and "progress" not in saved["train"]


# ------------------------------------------------------------------------------- user errors vs bugs


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import diffusekit.core as core

    def broken(*a, **k):
        raise ValueError("internal invariant broken")

    monkeypatch.setattr(core, "prior_sample", broken)
    with pytest.raises(ValueError, match="internal invariant broken"):
        main(["sample", "--model", "zoo:toy_ring8", "--count", "4", "--steps", "2", "--out", str(tmp_path / "s.npz")])


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    assert main(["sample", "--model", "zoo:toy_ring8", "--sampler", "nope", "--out", str(tmp_path / "s.npz"),
                 "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: unknown sampler 'nope'")


# ----------------------------------------------------------------------------------- sample options


def test_sample_defaults_come_from_samplers_default(tmp_path):
    from diffusekit.core import generators_from_seeds, prior_sample
    from diffusekit.samplers import DEFAULT, default_timesteps, get_sampler
    from diffusekit.zoo import load

    out = tmp_path / "d.npz"
    assert main(["sample", "--model", "zoo:toy_ring8", "--count", "16", "--seed", "4", "--out", str(out)]) == 0
    den = load("toy_ring8")
    info = get_sampler(DEFAULT["sampler"])
    x_T = prior_sample(den.schedule, (16, 2), generators_from_seeds(4, 16))
    with torch.no_grad():
        want = info.fn(den, x_T, default_timesteps(den, DEFAULT["steps"]), **DEFAULT["options"])
    with np.load(out) as f:
        np.testing.assert_allclose(f["samples"], want.float().numpy(), rtol=0, atol=1e-6)


def test_eta_is_applied_where_it_means_something_and_refused_elsewhere(tmp_path, capsys):
    base = ["sample", "--model", "zoo:toy_ring8", "--count", "8", "--steps", "4", "--grid", "logsnr"]
    outs = {}
    for eta in ("0", "1"):
        outs[eta] = tmp_path / f"ddim{eta}.npz"
        assert main(base + ["--sampler", "ddim", "--eta", eta, "--out", str(outs[eta])]) == 0
    with np.load(outs["0"]) as a, np.load(outs["1"]) as b:
        assert not np.allclose(a["samples"], b["samples"])
    capsys.readouterr()
    assert main(base + ["--sampler", "heun", "--eta", "0.5", "--out", str(tmp_path / "h.npz")]) == 2
    assert "--eta does not apply to sampler 'heun'; samplers with an eta: ddim" in _error_line(capsys)


@pytest.mark.parametrize("grid, expected", [("trailing", "does not apply to the diffusers grid 'trailing'"),
                                            (None, "sets the end of an explicit --grid")])
def test_t_end_is_refused_where_it_means_nothing(tmp_path, capsys, grid, expected):
    argv = ["sample", "--model", "zoo:digits_unet", "--count", "2", "--steps", "3", "--t-end", "0.1",
            "--out", str(tmp_path / "s.png")]
    assert main(argv + (["--grid", grid] if grid else [])) == 2
    assert expected in _error_line(capsys)


def test_t_end_moves_the_end_of_a_free_grid(tmp_path):
    outs = []
    for t_end in ("0", "0.3"):
        outs.append(tmp_path / f"t{t_end}.npz")
        assert main(["sample", "--model", "zoo:toy_ring8", "--count", "8", "--steps", "4", "--grid", "uniform",
                     "--sampler", "euler", "--t-end", t_end, "--out", str(outs[-1])]) == 0
    with np.load(outs[0]) as a, np.load(outs[1]) as b:
        assert not np.allclose(a["samples"], b["samples"])


# ---------------------------------------------------------------------------------------------- --help


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for child, grandchild in _subparsers(sub):  # nested commands by their full path ("policy train")
                    yield f"{name} {child}", grandchild


def test_help_shows_real_defaults_and_the_names(capsys):
    parser = build_parser()
    mine = {"train", "sample", "eval", "bench"}  # demo's flags live in demo.py
    for name, sub in _subparsers(parser):
        text = sub.format_help()
        assert "(default: None)" not in text, name
        if name in mine:
            for action in sub._actions:
                assert action.help, f"{name} {action.option_strings} has no help"
    from diffusekit.core.grids import GRID_NAMES
    from diffusekit.data import available_datasets
    from diffusekit.samplers import DEFAULT, SAMPLERS

    sample_help = dict(_subparsers(parser))["sample"].format_help()
    flat = " ".join(sample_help.split())
    assert all(n in flat for n in SAMPLERS) and all(g in flat for g in GRID_NAMES)
    assert all(d in flat for d in available_datasets())
    assert f"(default: {DEFAULT['sampler']}" in flat and f"(default: {DEFAULT['steps']})" in flat
    assert "(default: 500)" in " ".join(dict(_subparsers(parser))["train"].format_help().split())


def test_bench_progress_is_off_without_a_terminal_or_with_no_progress(monkeypatch):
    from diffusekit.bench import bench_progress, set_progress

    class Tty:
        def isatty(self):
            return True

        def write(self, s):
            pass

        def flush(self):
            pass

    set_progress(True)
    assert bench_progress(range(3), desc="x").disable  # pytest's stderr is not a terminal
    monkeypatch.setattr(sys, "stderr", Tty())
    try:
        assert not bench_progress(range(3), desc="x").disable
        set_progress(False)
        assert bench_progress(range(3), desc="x").disable
    finally:
        set_progress(True)
    assert list(bench_progress(range(3), desc="x")) == [0, 1, 2]


@pytest.mark.parametrize("sampler", ["default", "dpm_solver_pp_2m", "ddim", "heun", "pndm"])
def test_sample_progress_bar_total_is_the_network_calls(sampler):
    from diffusekit.cli import _with_progress
    from diffusekit.core import make_grid
    from diffusekit.sample_cli import _expected_nfe
    from diffusekit.samplers import DEFAULT, default_timesteps, get_sampler
    from diffusekit.zoo import load

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    den = load("toy_ring8")
    info = get_sampler(DEFAULT["sampler"] if sampler == "default" else sampler)
    ts = default_timesteps(den, 6) if sampler == "default" else make_grid("logsnr", den.schedule, 6, t_end=0.0)
    opts = DEFAULT["options"] if sampler == "default" else {}
    bar = Bar()
    with torch.no_grad():
        info.fn(_with_progress(den, bar), torch.randn(5, 2), ts, **opts)
    assert bar.n == _expected_nfe(info, ts) > 0


def test_overwrite_keeps_the_old_run_when_the_new_input_is_bad(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--steps", "2", *RING]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--overwrite", "--steps", "2", "--net", "unet", *RING]) == 2
    assert "unet takes images" in _error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("samples, expected", [(np.zeros((1, 2)), "the metrics need at least 2"),
                                               (np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]]),
                                                "1 of 3 samples contain NaN")])
def test_eval_refuses_samples_the_metrics_cannot_use(tmp_path, capsys, samples, expected):
    npz = tmp_path / "s.npz"
    np.savez(npz, samples=samples)
    assert main(["eval", "--samples", str(npz), "--data", "gmm_ring8"]) == 2
    assert expected in _error_line(capsys)


def test_train_sweeps_a_killed_runs_temp_files(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    orphans = [out / ".checkpoint.safetensors.x1y2.tmp", out / ".checkpoint.json.abcd.tmp"]
    for p in orphans:
        p.write_bytes(b"\0" * 1000)  # what kill -9 during a save leaves behind
    assert main(["train", "--out", str(out), "--steps", "2", *RING]) == 0  # not "other files"
    for p in orphans:
        p.write_bytes(b"\0" * 1000)
    assert main(["train", "--out", str(out), "--resume"]) == 0  # already complete: nothing to train, still swept
    assert not any(p.exists() for p in orphans)
