"""DITTO / DITTO-2 noise optimisation: direction-of-effect tests at tiny scale on the digits zoo models."""

import pytest
import torch

from diffusekit import zoo
from diffusekit.core import prior_sample
from diffusekit.methods.ditto import (CheckpointedDenoiser, class_loss, decode, ditto2, generate, intensity_loss,
                                      measurement_loss, optimize_noise, shell_radius)
from diffusekit.methods.inverse.operators import inpaint_box, super_resolution

B = 6


@pytest.fixture(scope="module")
def models():
    den, clf = zoo.load("digits_unet"), zoo.load("digits_classifier")
    for p in list(den.net.parameters()) + list(clf.parameters()):
        p.requires_grad_(False)
    return den, clf


@pytest.fixture(scope="module")
def setup(models):
    den, clf = models
    labels = torch.arange(B) % 10
    cond = {"class_labels": torch.full_like(labels, den.null_class)}
    x_T = prior_sample(den.schedule, (B, 1, 8, 8), torch.Generator().manual_seed(0))
    return den, clf, labels, cond, x_T


def test_full_sampler_ditto_reduces_class_loss(setup):
    den, clf, labels, cond, x_T = setup
    loss = class_loss(clf, labels)
    x_opt, hist = optimize_noise(den, loss, x_T, steps=6, iters=8, lr=0.1, cond=cond)
    before = loss(decode(den, x_T, steps=6, cond=cond)).mean()
    after = loss(decode(den, x_opt, steps=6, cond=cond)).mean()
    assert after < 0.5 * before
    assert hist["loss"][0] == pytest.approx(float(before), rel=1e-4)
    assert len(hist["loss"]) == 8 and hist["nfe_per_iter"] == 6


def test_surrogate_reduces_loss_and_transfers_to_multistep_decode(setup):
    den, clf, labels, cond, x_T = setup
    loss = class_loss(clf, labels)
    x0, x_opt, hist = ditto2(den, loss, x_T, surrogate_steps=2, decode_steps=20, iters=25, cond=cond)
    assert hist["loss"][-1] < 0.2 * hist["loss"][0]  # on the surrogate itself
    base = loss(decode(den, x_T, steps=20, cond=cond)).mean()
    assert loss(x0).mean() < 0.5 * base  # the optimised noise still helps the 20-step sampler


def test_surrogate_measurement_and_intensity_controls_transfer(setup):
    den, _, _, cond, x_T = setup
    ref = decode(den, prior_sample(den.schedule, (B, 1, 8, 8), torch.Generator().manual_seed(1)), steps=20,
                 cond=cond)
    for op in (inpaint_box((1, 8, 8)), super_resolution((1, 8, 8), 2)):
        loss = measurement_loss(op, op.apply(ref))
        x0, _, _ = ditto2(den, loss, x_T, surrogate_steps=2, decode_steps=20, iters=25, cond=cond)
        assert loss(x0).mean() < 0.7 * loss(decode(den, x_T, steps=20, cond=cond)).mean()
    bright = intensity_loss(0.0)
    x0, _, _ = ditto2(den, bright, x_T, surrogate_steps=2, decode_steps=20, iters=25, cond=cond)
    assert bright(x0).mean() < 0.5 * bright(decode(den, x_T, steps=20, cond=cond)).mean()


def test_regulariser_keeps_noise_on_the_gaussian_shell(setup):
    den, clf, labels, cond, x_T = setup
    loss = class_loss(clf, labels)
    kw = dict(steps=2, iters=30, lr=0.2, cond=cond)
    r0 = shell_radius(x_T)
    free, _ = optimize_noise(den, loss, x_T, reg_weight=0.0, **kw)
    held, hist = optimize_noise(den, loss, x_T, reg_weight=100.0, **kw)
    drift_free = (shell_radius(free) - 1).abs().mean()
    drift_held = (shell_radius(held) - 1).abs().mean()
    assert drift_held < 0.1 and drift_held < drift_free
    assert (shell_radius(held) - 1).abs().max() <= max(0.1, float((r0 - 1).abs().max()) + 0.05)
    projected, _ = optimize_noise(den, loss, x_T, reg_weight=0.0, renorm=True, **kw)
    torch.testing.assert_close(shell_radius(projected), torch.ones(B), rtol=0, atol=1e-5)


def test_gradients_flow_through_the_sampler_and_checkpointing_matches(setup):
    den, clf, labels, cond, x_T = setup
    loss = class_loss(clf, labels)
    grads = []
    for ckpt in (False, True):
        x = x_T.clone().requires_grad_(True)
        d = CheckpointedDenoiser(den) if ckpt else den
        loss(generate(d, x, steps=3, cond=cond)).sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0 and torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1])
    _, hist = optimize_noise(den, loss, x_T, steps=3, iters=2, checkpointing=True, cond=cond)
    assert all(g > 0 for g in hist["grad_norm"])


def test_input_validation(setup):
    den, clf, labels, cond, x_T = setup
    with pytest.raises(ValueError, match="stochastic"):
        optimize_noise(den, class_loss(clf, labels), x_T, sampler="ddpm", iters=1, cond=cond)
    with pytest.raises(ValueError, match="per-example"):
        optimize_noise(den, lambda x0: x0.sum(), x_T, iters=1, cond=cond)
    with pytest.raises(ValueError, match="lr"):
        optimize_noise(den, class_loss(clf, labels), x_T, lr=0.0, cond=cond)
