"""Devices and precision on the CPU: bf16 autocast training and sampling, fp16 with a gradient scaler,
channels-last and torch.compile against eager, and the one-line errors for devices that are not there.

No GPU is used (none is available where these tests run); everything here is the CPU path of the same code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusekit import runtime, zoo
from diffusekit.cli import main
from diffusekit.core import VPDiscrete, generators_from_seeds, prior_sample
from diffusekit.data import load_dataset
from diffusekit.errors import UserError
from diffusekit.nets import build_net
from diffusekit.samplers import get_sampler
from diffusekit.training import DiffusionLoss, TrainConfig, Trainer

NET = {"name": "mlp", "dim": 2, "hidden": 64, "depth": 2, "time_embed_dim": 16}
# bf16 keeps 8 mantissa bits (relative rounding 2^-9); through a 10-step sampler the digits UNet's samples
# (values in [-1, 1]) moved by RMS 0.0056, max 0.056 when measured; the bounds allow ~3x that.
BF16_SAMPLE_RMS, BF16_SAMPLE_MAX = 0.02, 0.15


def _train(precision: str, steps: int = 150, out_dir=None, **extra):
    torch.manual_seed(0)
    net = build_net(NET)
    dtypes = set()
    net.blocks[0].fc1.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    loss = DiffusionLoss(VPDiscrete.named("linear", 100), "eps")
    cfg = TrainConfig(steps=steps, batch_size=64, lr=3e-3, ema_decay=None, progress=False, precision=precision,
                      loss_noise="per_example", **extra)
    trainer = Trainer(net, loss, (load_dataset("gmm_ring8", "train", n=1024).x,), cfg, out_dir=out_dir)
    return trainer, trainer.fit()["loss"], dtypes


@pytest.fixture(scope="module")
def fp32_run():
    return _train("fp32")


def test_bf16_training_loss_falls_and_stays_close_to_fp32(fp32_run):
    _, fp32, fp32_dtypes = fp32_run
    _, bf16, bf16_dtypes = _train("bf16")
    assert fp32_dtypes == {torch.float32} and bf16_dtypes == {torch.bfloat16}  # autocast really ran
    first, last = np.mean(bf16[:20]), np.mean(bf16[-30:])
    assert last < 0.8 * first
    # same data and noise: the two curves differ only by rounding; over the last 30 steps within 5%
    assert abs(last - np.mean(fp32[-30:])) < 0.05 * np.mean(fp32[-30:])
    assert bf16 != fp32


def test_fp16_training_with_the_gradient_scaler_resumes(tmp_path):
    trainer, losses, dtypes = _train("fp16", steps=12, out_dir=tmp_path, checkpoint_every=6)
    assert dtypes == {torch.float16} and all(np.isfinite(losses))
    scale = trainer.grad_scaler.get_scale()
    again, _, _ = _train("fp16", steps=12, out_dir=None)
    again.resume(tmp_path)
    assert again.grad_scaler.get_scale() == scale and again.step == 12


def _sample(denoiser, count=8, steps=6):
    x_T = prior_sample(denoiser.schedule, (count, 1, 8, 8), generators_from_seeds(0, count))
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64) * denoiser.schedule.t_max
    with torch.no_grad():
        return get_sampler("ddim").fn(denoiser, x_T, ts)


@pytest.fixture(scope="module")
def digits_fp32():
    return _sample(zoo.load("digits_unet"))


def test_bf16_sampling_close_to_fp32(digits_fp32):
    bf16 = _sample(runtime.prepare_denoiser(zoo.load("digits_unet"), "cpu", "bf16"))
    assert bf16.dtype == torch.float32
    diff = bf16 - digits_fp32
    assert 1e-4 < diff.pow(2).mean().sqrt() < BF16_SAMPLE_RMS and diff.abs().max() < BF16_SAMPLE_MAX


def test_network_device_boundary_in_the_trainer_is_exact(fp32_run):
    """The path of `train --device cuda` (network behind the device boundary, data and loss on the CPU), run
    with the CPU as the device: the same function, so the same loss curve bit for bit."""
    _, fp32, _ = fp32_run
    torch.manual_seed(0)
    net = build_net(NET)
    cfg = TrainConfig(steps=20, batch_size=64, lr=3e-3, ema_decay=None, progress=False, loss_noise="per_example")
    trainer = Trainer(net, DiffusionLoss(VPDiscrete.named("linear", 100), "eps"),
                      (load_dataset("gmm_ring8", "train", n=1024).x,), cfg, network_device="cpu")
    assert type(trainer.train_model).__name__ == "DeviceNetwork"
    assert trainer.fit()["loss"] == fp32[:20]


def test_channels_last_matches_contiguous(digits_fp32):
    cl = _sample(runtime.prepare_denoiser(zoo.load("digits_unet"), "cpu", channels_last=True))
    assert (cl - digits_fp32).abs().max() < 1e-4  # other conv kernels: float32 rounding only


class _Tiny(torch.nn.Module):
    """A network small enough to compile in seconds (compilation time grows with the graph)."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2 = torch.nn.Linear(3, 32), torch.nn.Linear(32, 2)

    def forward(self, x, t):
        return self.lin2(torch.nn.functional.silu(self.lin1(torch.cat([x, t[:, None] / 1000], 1))))


def test_compile_matches_eager():
    reason = runtime.compile_unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(reason)
    torch.manual_seed(0)
    eager = _Tiny().eval()
    compiled = _Tiny().eval()
    compiled.load_state_dict(eager.state_dict())
    loss = DiffusionLoss(VPDiscrete.named("linear", 100))
    den = runtime.prepare_denoiser(loss.denoiser(compiled), "cpu", compile=True)
    assert type(den.net.inner).__name__ == "OptimizedModule"
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    t = torch.full((16,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(den(x, t), loss.denoiser(eager)(x, t), atol=1e-5, rtol=1e-5)


def test_compile_without_a_compiler_is_a_one_line_error(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in runtime.compile_unavailable_reason("cpu")
    with pytest.raises(UserError, match="--compile: torch.compile on the CPU needs a C\\+\\+ compiler"):
        runtime.compile_module(torch.nn.Linear(2, 2), "cpu")


def test_devices(monkeypatch):
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="--device must be one of auto, cpu, cuda, mps"):
        runtime.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda: this torch build .* sees no CUDA device"):
        runtime.resolve_device("cuda")
    assert runtime.resolve_device("auto").type in ("cpu", "mps")


def test_cli_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base = ["sample", "--model", "zoo:digits_unet", "--count", "4", "--steps", "4", "--no-progress"]
    assert main([*base, "--precision", "bf16", "--channels-last", "--out", str(tmp_path / "s.npz")]) == 0
    assert np.isfinite(np.load(tmp_path / "s.npz")["samples"]).all()
    assert main([*base, "--device", "cuda", "--out", str(tmp_path / "c.npz")]) == 2
    assert "error: --device cuda:" in capsys.readouterr().err and not (tmp_path / "c.npz").exists()
    train = ["train", "--data", "gmm_ring8", "--num-examples", "64", "--steps", "2", "--batch-size", "16",
             "--no-progress"]
    assert main([*train, "--device", "cuda", "--out", str(tmp_path / "run_cuda")]) == 2
    assert "error: --device cuda:" in capsys.readouterr().err
    assert main([*train, "--precision", "bf16", "--out", str(tmp_path / "run")]) == 0
    assert "precision: bf16" in (tmp_path / "run" / "config.yaml").read_text()
