"""`diffusekit quantize` end to end (quantize -> sample -> eval), quantized checkpoints (structure replayed on
load, per-step sets, int8 kernels), the method registry, and bad input ending in one error line with nothing
written."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffusekit import zoo
from diffusekit.cli import load_denoiser, main
from diffusekit.core import NetworkDenoiser
from diffusekit.core.grids import make_grid
from diffusekit.core.noise import prior_sample
from diffusekit.quant_cli import read_calibration_file
from diffusekit.methods.quant.calibration import calibrate_denoiser, qdiffusion_calibration, split_concat_convs
from diffusekit.methods.quant.checkpoint import save_quantized
from diffusekit.methods.quant.int8 import int8_layers
from diffusekit.methods.quant.modules import quant_layers, quantize_model
from diffusekit.methods.quant.pipeline import (METHODS, QuantDenoiser, QuantResult, available_methods,
                                               calibration_trajectories, get_method, quantize_minmax)
from diffusekit.samplers import sample_ddim
from diffusekit.training.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def digits():
    return zoo.load("digits_unet")


@pytest.fixture(scope="module")
def traj(quantized, digits):
    """The CLI's calibration trajectories (256, its default), read back from its --save-calib file."""
    got = read_calibration_file(quantized["calib"], (1, 8, 8), 10)
    assert torch.allclose(got.x[:, :4], calibration_trajectories(digits, 4, seed=0).x, atol=1e-4)  # same draws
    return got


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """zoo:digits_unet quantized by the CLI, minmax W8A8 (and the same with int8 kernels from the same
    trajectories), with the default 256 calibration trajectories (with 32-128 the random-step min/max ranges miss
    some steps and a few samples diverge)."""
    root = tmp_path_factory.mktemp("quant")
    outs, calib = {}, root / "calib.npz"
    for name, extra in (("w8a8", ["--save-calib", str(calib)]), ("int8", ["--int8-kernels", "--calib", str(calib)])):
        out = root / name
        code = main(["quantize", "--model", "zoo:digits_unet", "--method", "minmax", "--wbits", "8", "--abits", "8",
                     "--out", str(out), "--no-progress", *extra])
        assert code == 0
        outs[name] = out
    return {**outs, "calib": calib}


def _x0(den, n=16, seed=3):
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    t = torch.full((n,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        return den(x, t, class_labels=torch.arange(n) % 10)


def test_checkpoint_reloads_the_in_memory_result_exactly(digits, traj, quantized):
    loaded = load_denoiser(str(quantized["w8a8"]))
    assert isinstance(loaded, QuantDenoiser) and len(quant_layers(loaded.net)) > 10
    ref = quantize_minmax(digits, 8, 8, traj=traj, seed=0).denoiser  # what the CLI computed (same seed, n, grid)
    assert torch.equal(_x0(loaded), _x0(ref))
    meta = json.loads((quantized["w8a8"] / "checkpoint.json").read_text())
    q = meta["extra_config"]["quant"]
    assert meta["extra_config"]["kind"] == "quantized" and (q["method"], q["wbits"], q["abits"]) == ("minmax", 8, 8)
    assert q["source"]["sampler"] == {"sampler": "ddim", "grid": "uniform", "steps": 20}
    assert 0.3 < q["weight_bytes"]["ratio"] < 0.36  # int8 weights + fp32 biases/norms/scales


def test_int8_kernels_checkpoint_runs_int8_and_matches_fake_quant(quantized, digits):
    fake = load_denoiser(str(quantized["w8a8"]))
    real = load_denoiser(str(quantized["int8"]))
    assert int8_layers(real.net) and not quant_layers(real.net)
    # same integer grids: they differ only where float summation order flips a rounding inside the net, far
    # less than the quantization error itself
    gap, qerr = (_x0(real) - _x0(fake)).abs(), (_x0(fake) - _x0(digits)).abs()
    assert (gap <= 1e-4).float().mean() >= 0.85
    assert gap.mean() <= 0.2 * qerr.mean(), (gap.mean(), qerr.mean())


def test_quantize_then_sample_then_eval(quantized, tmp_path, digits, capsys):
    samples = tmp_path / "s.npz"
    assert main(["sample", "--model", str(quantized["w8a8"]), "--count", "40", "--sampler", "ddim", "--steps", "20",
                 "--grid", "uniform", "--out", str(samples), "--no-progress"]) == 0
    metrics = tmp_path / "m.json"
    assert main(["eval", "--samples", str(samples), "--data", "digits", "--out", str(metrics)]) == 0
    got = json.loads(metrics.read_text())
    assert got["num_samples"] == 40 and np.isfinite(got["digits_fd"]) and got["class_accuracy"] > 0.8
    # W8A8 keeps the fp model's samples from the same noise: far closer than two fp samples of other seeds
    with np.load(samples) as f:
        xq = torch.from_numpy(f["samples"])
    x_T = prior_sample(digits.schedule, (40, 1, 8, 8), [torch.Generator().manual_seed(i) for i in range(40)])
    with torch.no_grad():
        xf = sample_ddim(digits, x_T, make_grid("uniform", digits.schedule, 20, t_end=0.0),
                         cond={"class_labels": torch.arange(40) % 10})
    same_noise = (xq - xf).pow(2).mean().sqrt().item()
    other_noise = (xf - xf.roll(10, 0)).pow(2).mean().sqrt().item()  # same class, other seed
    assert same_noise < 0.2 * other_noise, (same_noise, other_noise)


def test_split_structure_roundtrip(digits, traj, tmp_path):
    # a non-minmax structure: split shortcut convs, first/last at 8 bits, symmetric activations
    net = copy.deepcopy(digits.net)
    split = split_concat_convs(net, ("skip",))
    kw = {"first_last_bits": 8, "act_symmetric": True}
    quantize_model(net, 4, 8, **kw)
    den = QuantDenoiser(net, digits)
    calibrate_denoiser(den, qdiffusion_calibration(traj, 5, per_step=32))
    result = QuantResult(den, "qdiffusion", 4, 8, info={"structure": {"split": ["skip"], "quantize_model": kw,
                                                                        "attention": None, "temporal_cache": False}})
    assert split
    save_quantized(tmp_path / "q", result, {"model": "zoo:digits_unet"})
    loaded = load_denoiser(str(tmp_path / "q"))
    assert torch.equal(_x0(loaded), _x0(den))


def test_per_step_sets_roundtrip(digits, traj, tmp_path):
    net = quantize_model(copy.deepcopy(digits.net), 8, 4, act_steps=2)
    den = QuantDenoiser(net, digits, step_times=traj.t[[5, 15]])
    for k, s in enumerate((5, 15)):  # set k calibrated on step s only
        cal = qdiffusion_calibration(traj, traj.num_steps, per_step=32)
        keep = cal.t == traj.t[s]
        cal.x, cal.t, cal.cond = cal.x[keep], cal.t[keep], {c: v[keep] for c, v in cal.cond.items()}
        calibrate_denoiser(den, cal, step=k)
    result = QuantResult(den, "tfmq", 8, 4, info={"structure": {"split": [], "quantize_model": {"act_steps": 2},
                                                                  "attention": None, "temporal_cache": False}})
    save_quantized(tmp_path / "q", result, {"model": "zoo:digits_unet"})
    loaded = load_denoiser(str(tmp_path / "q"))
    assert torch.equal(loaded.step_times, den.step_times)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in (0.9, 0.1):  # both sets used, each equal to the in-memory one
        tt = torch.full((8,), t, dtype=torch.float64)
        with torch.no_grad():
            assert torch.equal(loaded(x, tt, class_labels=torch.arange(8)), den(x, tt, class_labels=torch.arange(8)))
    with pytest.raises(CheckpointError, match="int8"):  # per-step sets cannot run on the int8 kernels
        save_quantized(tmp_path / "q8", result, {"model": "zoo:digits_unet"}, int8_kernels=True)
    assert not (tmp_path / "q8").exists()


def test_unknown_structure_key_is_one_line_error(quantized, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in quantized["w8a8"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    meta = json.loads((bad / "checkpoint.json").read_text())
    meta["extra_config"]["quant"]["structure"]["lookup_tables"] = True
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown quant structure key.*lookup_tables"):
        load_denoiser(str(bad))


def test_registry():
    assert set(METHODS) == {"minmax", "ptq4dm", "qdiffusion", "tfmq", "edadm", "efficientdm"}
    assert "minmax" in available_methods() and get_method("minmax") is quantize_minmax
    with pytest.raises(ValueError, match="unknown quantization method 'gptq'.*minmax"):
        get_method("gptq")


def test_minmax_leaves_the_fp_model_untouched(digits, traj):
    before = {k: v.clone() for k, v in digits.net.state_dict().items()}
    result = quantize_minmax(digits, 4, 8, traj=traj)
    assert not quant_layers(digits.net) and result.info["structure"]["quantize_model"] == {}
    assert all(torch.equal(before[k], v) for k, v in digits.net.state_dict().items())


def _run_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _argv(out, *extra, wbits="8", abits="8", method="minmax", model="zoo:digits_unet"):
    return ["quantize", "--model", model, "--method", method, "--wbits", wbits, "--abits", abits, "--out", str(out),
            "--calib-samples", "8", "--no-progress", *extra]


@pytest.mark.parametrize("kw, extra, match", [
    ({"wbits": "3"}, [], "--wbits 3 is not supported; choose 4 or 8"),
    ({"abits": "16"}, [], "--abits 16 is not supported"),
    ({"method": "gptq"}, [], "unknown quantization method 'gptq'"),
    ({"abits": "4"}, ["--int8-kernels"], "--int8-kernels needs --wbits 8 --abits 8"),
    ({}, ["--calib-samples", "0"], "--calib-samples must be >= 1"),
    ({"model": "zoo:nope"}, [], "unknown zoo model 'nope'"),
    ({"model": "zoo:digits_classifier"}, [], "classifier, not a diffusion model"),
])
def test_bad_flags_write_nothing(tmp_path, capsys, kw, extra, match):
    out = tmp_path / "out"
    assert match in _run_error(capsys, _argv(out, *extra, **kw))
    assert not out.exists()


def test_existing_out_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "already holds files; pass --overwrite" in _run_error(capsys, _argv(out))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_corrupt_or_quantized_model_refused(quantized, tmp_path, capsys):
    bad = tmp_path / "corrupt"
    bad.mkdir()
    for f in quantized["w8a8"].iterdir():
        data = f.read_bytes()
        (bad / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    out = tmp_path / "out"
    assert "corrupt" in _run_error(capsys, _argv(out, model=str(bad)))
    assert "already quantized" in _run_error(capsys, _argv(out, model=str(quantized["w8a8"])))
    assert not out.exists()


def test_no_quantizable_layer_refused(tmp_path, capsys, monkeypatch, digits):
    class Scale(nn.Module):
        config = {"name": "unet", "in_channels": 1, "image_size": 8}

        def __init__(self):
            super().__init__()
            self.g = nn.Parameter(torch.ones(()))

        def forward(self, x, t, **cond):
            return self.g * x

    monkeypatch.setattr("diffusekit.cli.load_denoiser", lambda spec: NetworkDenoiser(Scale(), digits.schedule))
    out = tmp_path / "out"
    assert "no nn.Linear or nn.Conv2d layer to quantize" in _run_error(capsys, _argv(out))
    assert not out.exists()


def test_calibration_file(tmp_path, capsys, digits):
    out, calib = tmp_path / "out", tmp_path / "calib.npz"
    assert main(_argv(out, "--save-calib", str(calib))) == 0
    with np.load(calib) as f:
        assert f["x"].shape == (20, 8, 1, 8, 8) and f["t"].shape == (20,) and f["class_labels"].shape == (8,)
    # reading the saved trajectories back gives the same checkpoint as recording them
    assert main(_argv(tmp_path / "out2", "--calib", str(calib))) == 0
    a, b = load_denoiser(str(out)), load_denoiser(str(tmp_path / "out2"))
    assert torch.equal(_x0(a), _x0(b))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    assert "unreadable calibration file" in _run_error(capsys, _argv(tmp_path / "o3", "--calib", str(garbage)))
    wrong = tmp_path / "wrong.npz"
    with np.load(calib) as f:
        np.savez(wrong, x=f["x"][:, :, :, :4], t=f["t"], class_labels=f["class_labels"])
    assert "this model needs (steps, samples, 1, 8, 8)" in _run_error(capsys, _argv(tmp_path / "o3", "--calib",
                                                                                    str(wrong)))
    unlabeled = tmp_path / "unlabeled.npz"
    with np.load(calib) as f:
        np.savez(unlabeled, x=f["x"], t=f["t"])
    assert "needs class_labels" in _run_error(capsys, _argv(tmp_path / "o3", "--calib", str(unlabeled)))
    assert not (tmp_path / "o3").exists() and not Path(tmp_path / "o3").exists()
