"""Shipped assets: hashes match manifests, loading works, tampering is caught, the build command runs."""

import math
import shutil

import pytest
import torch

from diffusekit import zoo
from diffusekit.core import NetworkDenoiser
from diffusekit.data import load_dataset
from diffusekit.metrics.digits import DigitsClassifier


@pytest.mark.parametrize("name", zoo.MODELS)
def test_asset_hash_matches_manifest(name):
    meta = zoo.manifest(name)
    assert zoo.sha256_file(zoo.ASSETS_DIR / meta["file"]) == meta["sha256"]
    assert meta["bytes"] < 5_000_000
    for key in ("training_seconds", "metrics", "net"):
        assert key in meta


def test_loaded_models_work():
    clf = zoo.load("digits_classifier")
    assert isinstance(clf, DigitsClassifier)
    test = load_dataset("digits", "test")
    with torch.no_grad():
        acc = float((clf(test.x).argmax(1) == test.y).double().mean())
    assert acc >= 0.95
    den = zoo.load("digits_unet")
    assert isinstance(den, NetworkDenoiser) and den.num_classes == 10
    out = den(torch.zeros(2, 1, 8, 8), 0.5, class_labels=torch.tensor([1, 2]))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    ring = zoo.load("toy_ring8")
    assert ring(torch.zeros(3, 2), 0.3).shape == (3, 2)


def test_tampered_asset_is_refused(tmp_path):
    for f in zoo.ASSETS_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "toy_ring8.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(zoo.ZooError, match="do not match the sha256"):
        zoo.load("toy_ring8", assets_dir=tmp_path)
    with pytest.raises(zoo.ZooError, match="unknown zoo model 'cifar'"):
        zoo.load("cifar")


def test_quick_build_writes_loadable_assets(tmp_path):
    from diffusekit.zoo.build import build

    metas = build(["digits_classifier", "toy_ring8", "patches_unet"], quick=True, assets_dir=tmp_path, progress=False)
    assert set(metas) == {"digits_classifier", "toy_ring8", "patches_unet"}
    assert isinstance(zoo.load("toy_ring8", assets_dir=tmp_path), NetworkDenoiser)
    patch_metrics = metas["patches_unet"]["metrics"]
    assert all(math.isfinite(patch_metrics[k]) for k in ("bpd_test", "gaussian_bpd_test", "gradient_kurtosis_samples"))
    assert isinstance(zoo.load("patches_unet", assets_dir=tmp_path), NetworkDenoiser)
    assert not list(tmp_path.glob("*.tmp"))


def test_patch_model_denoises_held_out_textured_patches():
    """One-step Tweedie denoising with the shipped patch prior beats the noisy input at noise 0.2 (data scale)."""
    from diffusekit.metrics import psnr

    den = zoo.load("patches_unet")
    sched = den.schedule
    x = load_dataset("patches", "test", n=64, seed=5, min_std=0.1).x
    ts = torch.arange(1, sched.num_train_timesteps + 1, dtype=torch.float64) / sched.num_train_timesteps
    k = int((sched.sigma(ts) / sched.alpha(ts) - 0.2).abs().argmin())  # grid time with sigma/alpha ~ 0.2
    t, alpha, sigma = ts[k], float(sched.alpha(ts[k])), float(sched.sigma(ts[k]))
    noisy = x + (sigma / alpha) * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0_hat = den(alpha * noisy, t.expand(len(x)))
    gain = float(psnr(x0_hat.clamp(-1, 1), x).mean() - psnr(noisy.clamp(-1, 1), x).mean())
    assert gain > 3.0, gain
