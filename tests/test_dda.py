"""DDA (arXiv 2207.03442): nothing is updated, s = 0 is SDEdit, phi_D is a projection, the guidance gradient is
right, the projection moves corrupted digits toward the clean ones, and predictions do not depend on the batch."""

import copy

import pytest
import torch

from diffusekit import zoo
from diffusekit.core.denoiser import CountingDenoiser, NetworkDenoiser
from diffusekit.core.noise import generators_from_seeds, randn_like
from diffusekit.data.corruptions import corrupt
from diffusekit.data.digits import load_digits_split
from diffusekit.methods.cyclediffusion import sdedit
from diffusekit.methods.tta import dda
from diffusekit.samplers import sample_ddim

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    return zoo.load("digits_bn_classifier").eval(), zoo.load("digits_unet")


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits_split("test")
    return x[:48], y[:48]


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_lowpass_is_a_mean_preserving_projection():
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for d in (1, 2, 4, 8):
        p = dda.lowpass(x, d)
        torch.testing.assert_close(dda.lowpass(p, d), p, rtol=0, atol=1e-14)
        torch.testing.assert_close(p.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), rtol=0, atol=1e-14)
        # orthogonal: the residual is orthogonal to every low-pass image
        y = torch.randn_like(x)
        assert abs(float(((x - p) * dda.lowpass(y, d)).sum())) < 1e-10
    assert not torch.allclose(dda.lowpass(x, 2), x)
    with pytest.raises(ValueError):
        dda.lowpass(x, 3)


def test_guidance_gradient_matches_finite_differences(models, digits):
    _, den = models
    den64 = NetworkDenoiser(copy.deepcopy(den.net).double(), den.schedule, den.prediction)
    x_target = digits[0][:2].double()
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor(0.3, dtype=torch.float64)
    x_s = den.schedule.alpha(t) * x_target + den.schedule.sigma(t) * torch.randn(x_target.shape, generator=gen,
                                                                                 dtype=torch.float64)
    cond = {"class_labels": torch.full((2,), den.null_class)}
    _, grad = dda.guidance_gradient(den64, x_s, t, x_target, 2, cond)

    def energy(z):
        with torch.no_grad():
            return float(dda.guidance_energy(x_target, den64(z, t, **cond), 2).sum())

    for _ in range(3):
        v = torch.randn(x_s.shape, generator=gen, dtype=torch.float64)
        h = 1e-5
        fd = (energy(x_s + h * v) - energy(x_s - h * v)) / (2 * h)
        assert fd == pytest.approx(float((grad * v).sum()), rel=1e-5, abs=1e-8)


def test_zero_guidance_is_sdedit_exactly(models, digits):
    _, den = models
    x = corrupt(digits[0][:6], "gaussian_noise", 5, seed=0)
    ts = dda.projection_grid(0.4, 5)
    null = {"class_labels": torch.full((6,), den.null_class)}
    for eta in (1.0, 0.0):
        got = dda.project(x, den, t_start=0.4, steps=5, guidance_scale=0.0, eta=eta, seed=3, clamp=False)
        gens = generators_from_seeds(3, 6)
        if eta == 1.0:  # SDEdit as the CycleDiffusion module implements it (DDPM posterior steps)
            ref = sdedit(den, x, ts, cond=null, generator=gens)
        else:
            x_t0 = (den.schedule.alpha(ts[0]) * x + den.schedule.sigma(ts[0]) * randn_like(x, gens)).to(x.dtype)
            with torch.no_grad():
                ref = sample_ddim(den, x_t0, ts, eta=0.0, cond=null, generator=gens)
        assert torch.equal(got, ref)
    # and guidance does change it
    guided = dda.project(x, den, t_start=0.4, steps=5, guidance_scale=1.0, eta=0.0, seed=3, clamp=False)
    assert not torch.allclose(guided, ref)


def test_dda_updates_nothing_and_counts_its_network_calls(models, digits):
    clf, den = models
    before_clf, before_net = _state(clf), _state(den.net)
    grads_before = [p.grad for p in list(clf.parameters()) + list(den.net.parameters())]
    counting = CountingDenoiser(den)
    adapter = dda.build(clf, quick=True, denoiser=counting)
    x = corrupt(digits[0][:16], "defocus_blur", 5, seed=0)
    for chunk in x.split(8):
        adapter.predict(chunk)
    assert counting.calls == 2 * adapter.nfe_per_image  # one network call per step per batch
    assert adapter.backward_per_image == adapter.nfe_per_image
    for before, module in ((before_clf, clf), (before_net, den.net)):
        after = module.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(g is None for g in grads_before)
    assert all(p.grad is None for p in list(clf.parameters()) + list(den.net.parameters()))
    assert not clf.training


def test_projection_moves_noisy_digits_toward_the_clean_ones(models, digits):
    clf, den = models
    x, y = digits
    x_bad = corrupt(x, "gaussian_noise", 5, seed=0)
    x_proj = dda.project_dataset(x_bad, den, seed=0, **dda.QUICK_DEFAULTS)
    mse_bad = float(((x_bad - x) ** 2).mean())
    mse_proj = float(((x_proj - x) ** 2).mean())
    assert mse_proj < 0.7 * mse_bad  # measured 0.54 (MSE 0.295 -> 0.159)
    with torch.no_grad():
        err_bad = float((clf(x_bad).argmax(1) != y).float().mean())
        err_dda = float(((clf(x_bad) + clf(x_proj)).argmax(1) != y).float().mean())
    assert err_dda < err_bad - 0.1  # measured 0.44 -> 0.23


def test_dda_predictions_do_not_depend_on_the_batch_size(models, digits):
    clf, den = models
    x = corrupt(digits[0][:12], "jpeg", 5, seed=0)
    adapter = dda.build(clf, quick=True, denoiser=den, seed=5)
    whole = adapter.predict(x)
    adapter.reset()
    ones = torch.cat([adapter.predict(x[i: i + 1]) for i in range(x.shape[0])])
    torch.testing.assert_close(ones, whole, rtol=1e-4, atol=1e-4)
    adapter.reset()
    again = adapter.predict(x)
    assert torch.equal(again, whole)
    # the offline cache computes the same projections as the adapter's stream
    cached = dda.project_dataset(x, den, batch_size=5, seed=5, **adapter.projection)
    adapter.reset()
    torch.testing.assert_close(cached, adapter.project(x), rtol=1e-4, atol=1e-4)


def test_projected_dataset_round_trips_through_safetensors(tmp_path):
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    dda.save_projected(tmp_path / "proj.safetensors", x, {"t_start": 0.2, "steps": 10})
    back, settings = dda.load_projected(tmp_path / "proj.safetensors")
    assert torch.equal(back, x) and settings == {"t_start": 0.2, "steps": 10}


def test_bad_options_are_rejected(models):
    clf, den = models
    with pytest.raises(ValueError, match="unknown DDA option"):
        dda.build(clf, denoiser=den, t_star=0.3)
    with pytest.raises(ValueError, match="t_start"):
        dda.build(clf, denoiser=den, t_start=1.5)
    with pytest.raises(ValueError, match="guidance_scale"):
        dda.project(torch.zeros(1, 1, 8, 8), den, guidance_scale=-1.0)
