"""FIND (learned initial-noise policy): direction of the effect on the ring toy model, the regulariser /
clipping bound on drift from N(0, I), determinism and config validation."""

import pytest
import torch

from diffusekit import zoo
from diffusekit.methods.find import (FINDConfig, NoisePolicy, class_prob_reward, ddim_decoder, evaluate_policy,
                                     mode_hit_reward, train_find)


@pytest.fixture(scope="module")
def ring_problem():
    den = zoo.load("toy_ring8")
    return ddim_decoder(den, steps=8), mode_hit_reward([2.0, 0.0], 0.5)


def test_find_raises_target_mode_hit_rate(ring_problem):
    decode, reward = ring_problem
    base, _ = evaluate_policy(None, decode, reward, n=2000, seed=1, shape=(2,))
    policy, hist = train_find(decode, reward, (2,), FINDConfig(iterations=40, batch_size=64, seed=0))
    hit, _ = evaluate_policy(policy, decode, reward, n=2000, seed=1)
    assert 0.05 < base < 0.2  # one of 8 equal modes
    assert hit > base + 0.15
    assert len(hist["reward"]) == 40 and hist["nfe"][-1] == 40 * 64 * 8
    assert sum(hist["reward"][-10:]) / 10 > sum(hist["reward"][:5]) / 5


def test_regulariser_and_prior_clipping_bound_kl(ring_problem):
    decode, reward = ring_problem
    kls = {}
    for name, kw in {"find": {}, "strong_kl": {"kl_weight": 1.0, "regularizer": "kl"},
                     "unclipped_unregularised": {"clip": "none", "kl_weight": 0.0}}.items():
        policy, hist = train_find(decode, reward, (2,), FINDConfig(iterations=40, batch_size=64, seed=0, **kw))
        kls[name] = float(policy.kl_to_prior())
        assert kls[name] == pytest.approx(hist["kl_to_prior"][-1])
    assert kls["strong_kl"] < 1.0
    assert kls["strong_kl"] < kls["find"] < kls["unclipped_unregularised"]


def test_deterministic_given_seed(ring_problem):
    decode, reward = ring_problem
    cfg = FINDConfig(iterations=5, batch_size=16, seed=3)
    p1, h1 = train_find(decode, reward, (2,), cfg)
    p2, h2 = train_find(decode, reward, (2,), cfg)
    assert h1 == h2
    assert torch.equal(p1.mean, p2.mean) and torch.equal(p1.log_std, p2.log_std)


def test_policy_starts_at_standard_normal():
    policy = NoisePolicy((1, 8, 8))
    assert float(policy.kl_to_prior()) == 0.0
    x = policy.sample(3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 8, 8) and not x.requires_grad
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(x).flatten(1).mean(1)
    torch.testing.assert_close(policy.log_prob(x), ref)


@pytest.mark.parametrize("kw, match", [
    ({"iterations": 0}, "iterations"), ({"batch_size": 1.5}, "batch_size"), ({"lr": 0.0}, "lr"),
    ({"kl_weight": -1.0}, "kl_weight"), ({"clip": "ppo"}, "clip"), ({"baseline": "critic"}, "baseline"),
    ({"regularizer": "l1"}, "regularizer"), ({"clip_eps": 1.0}, "clip_eps"),
    ({"baseline_momentum": 1.0}, "baseline_momentum"), ({"ppo_epochs": 3}, "ppo_epochs"),
    ({"grad_clip": 0.0}, "grad_clip"), ({"seed": 1.0}, "seed"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        FINDConfig(**kw)


def test_bad_inputs(ring_problem):
    decode, _ = ring_problem
    with pytest.raises(ValueError, match="radius"):
        mode_hit_reward([0.0, 0.0], 0.0)
    with pytest.raises(ValueError, match="target"):
        class_prob_reward(zoo.load("digits_classifier"), 10)
    with pytest.raises(ValueError, match="reward_fn"):
        train_find(decode, lambda x: torch.zeros(3), (2,), FINDConfig(iterations=1, batch_size=4))
    with pytest.raises(ValueError, match="config"):
        train_find(decode, lambda x: torch.zeros(len(x)), (2,), {"iterations": 1})
    with pytest.raises(ValueError, match="shape"):
        evaluate_policy(None, decode, lambda x: torch.zeros(len(x)), n=4)
