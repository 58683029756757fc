"""CLI smoke runs on tiny settings, and bad input: one-line error, exit 2, nothing overwritten."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusekit.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--train-seconds", "2", "--steps", "3", "--per-class", "3",
               "--sample-steps", "2", "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("digits_fd", "digits_fd_real", "digits_fd_baseline", "class_accuracy", "train_seconds"):
        assert np.isfinite(metrics[key]), key
    assert metrics["digits_fd_real"] < metrics["digits_fd_baseline"]
    assert (out / "samples.png").stat().st_size > 0 and (out / "loss.png").stat().st_size > 0
    assert "digits-FD" in capsys.readouterr().out


def test_train_resume_sample_eval(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--data", "gmm_ring8", "--num-examples", "512", "--batch-size", "64", "--out", str(run),
            "--no-progress"]
    assert main(base + ["--steps", "4"]) == 0
    ckpt = (run / "checkpoint.safetensors").read_bytes()
    # a second run into the same folder without --resume is refused and leaves the checkpoint alone
    assert main(base + ["--steps", "4"]) == 2
    assert "already holds a checkpoint" in _error_line(capsys)
    assert (run / "checkpoint.safetensors").read_bytes() == ckpt
    assert main(base + ["--steps", "6", "--resume"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 6
    assert (run / "loss.png").exists() and (run / "config.yaml").exists()
    npz = tmp_path / "s.npz"
    assert main(["sample", "--model", str(run), "--out", str(npz), "--count", "50", "--steps", "5",
                 "--grid", "logsnr"]) == 0
    with np.load(npz) as f:
        assert f["samples"].shape == (50, 2)
    capsys.readouterr()
    assert main(["eval", "--samples", str(npz), "--data", "gmm_ring8"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"sliced_wasserstein", "mmd_rbf", "nll"} <= set(metrics)


def test_train_from_yaml(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data: {name: digits, n: 64}\nconditional: true\n"
                   "net: {name: unet, base_channels: 8, attention_resolutions: []}\n"
                   "loss: {prediction: v, weighting: min_snr, label_dropout: 0.2}\n"
                   "train: {steps: 2, batch_size: 16}\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "r" / "checkpoint.json").read_text())
    assert meta["step"] == 2


def test_sample_zoo_png(tmp_path):
    out = tmp_path / "g.png"
    assert main(["sample", "--model", "zoo:digits_unet", "--out", str(out), "--count", "10", "--steps", "3",
                 "--guidance", "2"]) == 0
    assert out.stat().st_size > 0


def test_sample_unconditional_patch_model_infers_its_image_size(tmp_path):
    import numpy as np

    out = tmp_path / "p.npz"
    assert main(["sample", "--model", "zoo:patches_unet", "--out", str(out), "--count", "3", "--steps", "2"]) == 0
    with np.load(out) as f:
        assert f["samples"].shape == (3, 1, 16, 16) and "labels" not in f


# every bench's quick run is asserted for the direction of its effect: solvers, autodiffusion, guidance and
# inverse in their own test files, the others in test_bench_quick.py


def test_every_bench_is_listed(capsys):
    from diffusekit.bench import BENCHES

    assert main(["bench", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in BENCHES)


@pytest.mark.parametrize("argv,expected", [
    (["demo", "--steps", "0", "--out", "{tmp}/d"], "steps must be an integer >= 1"),
    (["train", "--data", "mnist", "--out", "{tmp}/x", "--steps", "1"], "unknown dataset 'mnist'; available:"),
    (["sample", "--model", "zoo:digits_unet", "--sampler", "plms9", "--out", "{tmp}/a.png"], "unknown sampler 'plms9'"),
    (["sample", "--model", "zoo:nope", "--out", "{tmp}/a.png"], "unknown zoo model 'nope'"),
    (["sample", "--model", "zoo:digits_unet", "--out", "{tmp}/a.jpg"], "--out must end in .png or .npz"),
    (["sample", "--model", "zoo:digits_unet", "--grid", "cubic", "--out", "{tmp}/a.png"], "unknown time grid"),
    (["sample", "--model", "zoo:digits_unet", "--class-label", "12", "--out", "{tmp}/a.png"], "--class-label"),
    (["sample", "--model", "zoo:patches_unet", "--guidance", "2", "--out", "{tmp}/a.png"],
     "--guidance 2 needs a class-conditional model"),
    (["sample", "--model", "zoo:patches_unet", "--size", "8", "--out", "{tmp}/a.png"],
     "--size 8 does not match this model's image size 16"),
    (["bench", "nosuchbench"], "unknown bench 'nosuchbench'"),
    (["train", "--data", "gmm_ring8", "--prediction", "noise", "--out", "{tmp}/x"], "unknown prediction type"),
    (["train", "--data", "moons", "--conditional", "--steps", "1", "--out", "{tmp}/x", "--num-examples", "64",
      "--batch-size", "32"], None),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, expected):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = main(argv)
    if expected is None:  # moons has labels, so this one is valid: the control case
        assert rc == 0
        return
    assert rc == 2
    assert expected in _error_line(capsys)
    assert not any(p.suffix in (".png", ".npz") for p in tmp_path.rglob("*"))


def test_corrupt_checkpoint_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "gmm_ring8", "--num-examples", "256", "--batch-size", "64", "--steps", "2",
                 "--out", str(run),
                 "--no-progress"]) == 0
    blob = bytearray((run / "checkpoint.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (run / "checkpoint.safetensors").write_bytes(bytes(blob))
    capsys.readouterr()
    assert main(["sample", "--model", str(run), "--out", str(tmp_path / "s.npz"), "--count", "4", "--steps", "2"]) == 2
    assert "checkpoint" in _error_line(capsys)
    assert not (tmp_path / "s.npz").exists()


def test_nan_loss_is_one_line_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    base = ["train", "--data", "gmm_ring8", "--num-examples", "256", "--batch-size", "64", "--out", str(run),
            "--no-progress"]
    assert main(base + ["--steps", "2"]) == 0
    before = (run / "checkpoint.safetensors").read_bytes()
    from diffusekit.training import losses

    monkeypatch.setattr(losses.DiffusionLoss, "__call__", lambda self, net, batch, g=None: net(
        batch[0], batch[0][:, 0] * 0).sum(1) * float("nan"))
    assert main(base + ["--steps", "4", "--resume"]) == 2
    assert "step 3" in _error_line(capsys)
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_console_script_exit_code(tmp_path):
    exe = Path(sys.executable).with_name("diffusekit")
    proc = subprocess.run([str(exe), "eval", "--samples", str(tmp_path / "missing.npz"), "--data", "digits"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --samples must be an existing .npz")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_train_command_under_torchrun(tmp_path):
    """`diffusekit train` runs unchanged under torchrun (2 CPU processes, gloo)."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "diffusekit.cli", "train", "--data", "gmm_ring8", "--num-examples", "512",
           "--steps", "4", "--batch-size", "64", "--out", str(tmp_path / "ddp"), "--no-progress"]
    cmd.insert(3, "--tee=3")  # each rank's own stdout/stderr, prefixed with its rank, so a failure shows its cause
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((tmp_path / "ddp" / "checkpoint.json").read_text())
    assert meta["step"] == 4
    assert proc.stdout.count("]:trained ") == 1, proc.stdout  # only rank 0 prints the summary ("[default0]:")


def test_sample_search_grid_is_cached_with_the_checkpoint(tmp_path, capsys):
    from diffusekit.cli import load_denoiser
    from diffusekit.samplers import defaults

    run = tmp_path / "run"
    assert main(["train", "--data", "gmm_ring8", "--num-examples", "256", "--batch-size", "64", "--steps", "3",
                 "--out", str(run), "--no-progress"]) == 0
    plain = ["sample", "--model", str(run), "--count", "8", "--steps", "4", "--no-progress", "--out"]
    capsys.readouterr()
    assert main(plain + [str(tmp_path / "before.npz")]) == 0
    assert "fixed fallback grid is used; add --search-grid" in capsys.readouterr().err
    assert main(["sample", "--model", str(run), "--out", str(tmp_path / "a.npz"), "--count", "8", "--steps", "4",
                 "--search-grid", "--no-progress"]) == 0
    assert main(plain + [str(tmp_path / "after.npz")]) == 0
    assert "fallback" not in capsys.readouterr().err.split("searching the default grid")[-1]
    stored = defaults.load_grid_file(run)
    assert len(stored) == 1
    searched = torch.tensor(next(iter(stored.values()))["ts"], dtype=torch.float64)
    defaults._MEMORY.clear()  # a later process: only the checkpoint folder remembers the search
    den = load_denoiser(str(run))
    torch.testing.assert_close(defaults.default_timesteps(den, 4, cache_dir=run), searched, rtol=0, atol=0)
    defaults._MEMORY.clear()
    fallback = defaults.fallback_timesteps(den.schedule, 4)
    torch.testing.assert_close(defaults.default_timesteps(den, 4), fallback, rtol=0, atol=0)  # no cache given
    assert not torch.equal(fallback, searched)
    assert main(["sample", "--model", str(run), "--out", str(tmp_path / "b.npz"), "--count", "8", "--steps", "4",
                 "--search-grid", "--grid", "logsnr"]) == 2
