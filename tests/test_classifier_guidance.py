"""Gradient guidance wrappers: scale 0 is the plain denoiser, and on the unconditional digits model classifier,
universal and reward guidance move samples in the intended direction (tiny, deterministic)."""

import pytest
import torch

from diffusekit import zoo
from diffusekit.core import make_grid, prior_sample
from diffusekit.data import load_dataset
from diffusekit.methods.classifier_guidance import (ClassifierGuidedDenoiser, RewardGuidedDenoiser,
                                                    UniversalGuidedDenoiser, classifier_log_prob,
                                                    sample_post_corrected, train_noisy_classifier)
from diffusekit.metrics import class_accuracy
from diffusekit.samplers import sample_ddim

N, STEPS = 40, 12


@pytest.fixture(scope="module")
def setup():
    den, clf = zoo.load("digits_unet"), zoo.load("digits_classifier")
    y = torch.arange(10).repeat(N // 10)
    null = torch.full_like(y, den.null_class)
    x_T = prior_sample(den.schedule, (N, 1, 8, 8), torch.Generator().manual_seed(0))
    ts = make_grid("trailing", den.schedule, STEPS)
    return den, clf, y, null, x_T, ts


def _sample(den, x_T, ts, **cond):
    with torch.no_grad():
        return sample_ddim(den, x_T, ts, cond=cond).clamp(-1, 1)


def _ink(x):
    """A toy reward: mean brightness per sample, (B,)."""
    return x.flatten(1).mean(1)


def test_scale_zero_is_the_plain_denoiser(setup):
    den, clf, y, null, x_T, _ = setup
    x, t = x_T[:8], torch.full((8,), 0.6, dtype=torch.float64)
    plain = den(x, t, class_labels=null[:8])
    nc = train_noisy_classifier(den.schedule, load_dataset("digits", "train").x[:64],
                                load_dataset("digits", "train").y[:64], steps=2, seed=0)
    for wrapped in (ClassifierGuidedDenoiser(den, nc, 0.0), UniversalGuidedDenoiser(den, classifier_log_prob(clf), 0)):
        torch.testing.assert_close(wrapped(x, t, class_labels=null[:8], guidance_labels=y[:8]), plain, rtol=0, atol=0)
    torch.testing.assert_close(RewardGuidedDenoiser(den, _ink, 0.0)(x, t, class_labels=null[:8]), plain, rtol=0, atol=0)


def test_eps_hook_is_the_score_shift(setup):
    """hook "eps": eps_hat' = eps_hat - scale sigma grad, i.e. x0_hat' = x0_hat + scale sigma^2/alpha grad."""
    den, _, _, null, x_T, _ = setup
    x, t = x_T[:4].double(), torch.full((4,), 0.5, dtype=torch.float64)
    reward = lambda x0: -(x0 ** 2).flatten(1).sum(1)  # noqa: E731
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(reward(den(xg, t, class_labels=null[:4])).sum(), xg)
    eps_plain = den.eps(x, t, class_labels=null[:4])
    eps_guided = RewardGuidedDenoiser(den, reward, 2.0).eps(x, t, class_labels=null[:4])
    torch.testing.assert_close(eps_guided, eps_plain - 2.0 * den.schedule.sigma(t)[:, None, None, None] * g)


def test_invalid_options_raise(setup):
    den, clf = setup[0], setup[1]
    with pytest.raises(ValueError, match="hook"):
        UniversalGuidedDenoiser(den, classifier_log_prob(clf), 1.0, hook="mean")
    with pytest.raises(ValueError, match="scale"):
        RewardGuidedDenoiser(den, _ink, float("nan"))


def test_classifier_guidance_hits_the_target_class_more_often(setup):
    den, clf, y, null, x_T, ts = setup
    train = load_dataset("digits", "train")
    nc = train_noisy_classifier(den.schedule, train.x, train.y, steps=150, seed=0)
    base = class_accuracy(_sample(den, x_T, ts, class_labels=null), y, classifier=clf)
    guided = class_accuracy(_sample(ClassifierGuidedDenoiser(den, nc, 10.0), x_T, ts, class_labels=null,
                                    guidance_labels=y), y, classifier=clf)
    assert guided >= base + 0.2, (base, guided)


def test_universal_guidance_hits_the_target_class_more_often(setup):
    den, clf, y, null, x_T, ts = setup
    base = class_accuracy(_sample(den, x_T, ts, class_labels=null), y, classifier=clf)
    objective = classifier_log_prob(clf)
    for hook, scale in (("eps", 3.0), ("x0", 0.3)):
        guided = class_accuracy(_sample(UniversalGuidedDenoiser(den, objective, scale, hook=hook), x_T, ts,
                                        class_labels=null, guidance_labels=y), y, classifier=clf)
        assert guided >= base + 0.2, (hook, base, guided)
    post = sample_post_corrected(den, x_T, ts, objective=objective, step_size=0.3, guidance_labels=y,
                                 cond={"class_labels": null}).clamp(-1, 1)
    assert class_accuracy(post, y, classifier=clf) >= base + 0.2


def test_reward_guidance_increases_the_reward(setup):
    den, _, _, null, x_T, ts = setup
    base = _ink(_sample(den, x_T, ts, class_labels=null)).mean()
    guided = _ink(_sample(RewardGuidedDenoiser(den, _ink, 50.0), x_T, ts, class_labels=null)).mean()
    assert guided > base + 0.05, (float(base), float(guided))
