import pytest
import torch

from diffusekit.data import load_dataset
from diffusekit.methods.discrete import (GreyLevelTokens, MaskReplaceDiffusion, PatchVQTokens, TokenTransformer,
                                         sample_categorical)

CHAINS = {"absorbing": dict(absorbing=True), "mask_replace": dict(absorbing=False)}


@pytest.fixture(params=list(CHAINS))
def chain(request):
    return MaskReplaceDiffusion(5, 12, **CHAINS[request.param])


def test_rows_of_forward_and_posterior_sum_to_one(chain):
    g = torch.Generator().manual_seed(0)
    K, T = chain.num_classes, chain.num_steps
    x0 = torch.randint(0, K, (7, 9), generator=g)
    for t in range(1, T + 1):
        q = chain.q_probs(x0, torch.full((7,), t))
        torch.testing.assert_close(q.sum(-1), torch.ones(7, 9, dtype=torch.float64), atol=1e-12, rtol=0)
        assert bool((q >= 0).all())
        x_t = chain.q_sample(x0, torch.full((7,), t), g)
        p0 = torch.softmax(torch.randn(7, 9, K, generator=g, dtype=torch.float64), -1)
        for post in (chain.posterior(x_t, p0, t), chain.true_posterior(x_t, x0, t)):
            torch.testing.assert_close(post.sum(-1), torch.ones(7, 9, dtype=torch.float64), atol=1e-12, rtol=0)
            assert bool((post >= 0).all())


def test_closed_form_equals_composed_one_step_transitions(chain):
    composed = torch.eye(chain.num_states, dtype=torch.float64)
    for t in range(1, chain.num_steps + 1):
        composed = composed @ chain.Q[t]
        torch.testing.assert_close(chain.Q_bar[t], composed, atol=1e-12, rtol=0)


def test_absorbing_chain_is_all_mask_at_T():
    chain = MaskReplaceDiffusion(4, 80, absorbing=True)
    x0 = torch.randint(0, 4, (16, 64), generator=torch.Generator().manual_seed(0))
    assert bool((chain.q_sample(x0, 80, torch.Generator().manual_seed(1)) == 4).all())
    assert bool((chain.prior_sample(16, 64, torch.Generator().manual_seed(2)) == 4).all())
    assert float(chain.beta.abs().max()) == 0.0 and float(chain.beta_bar.abs().max()) == 0.0
    # ... and the mask-and-replace chain is not: about 10% of the tokens are real classes at T
    mr = MaskReplaceDiffusion(4, 80, absorbing=False)
    frac = (mr.q_sample(x0, 80, torch.Generator().manual_seed(1)) < 4).double().mean().item()
    assert 0.07 < frac < 0.13


def _one_step(chain, t, i, j) -> float:
    """q(x_t = j | x_{t-1} = i) from the scalar one-step parameters."""
    K = chain.num_classes
    a, b, c = float(chain.alpha[t]), float(chain.beta[t]), float(chain.gamma[t])
    if i == K:
        return 1.0 if j == K else 0.0
    return c if j == K else b + (a if i == j else 0.0)


def _marginal(chain, t, k, i) -> float:
    """q(x_t = i | x0 = k) from the scalar cumulative parameters."""
    K = chain.num_classes
    if i == K:
        return float(chain.gamma_bar[t])
    return float(chain.beta_bar[t]) + (float(chain.alpha_bar[t]) if i == k else 0.0)


def test_posterior_equals_brute_force_bayes(chain):
    K, S = chain.num_classes, chain.num_states
    for t in (1, 2, 5, chain.num_steps):
        for k in range(K):
            for j in range(S):
                evidence = _marginal(chain, t, k, j)
                if evidence == 0.0:
                    continue  # impossible pair (absorbing chain): covered by the next test
                brute = torch.tensor([_one_step(chain, t, i, j) * _marginal(chain, t - 1, k, i) for i in range(S)],
                                     dtype=torch.float64) / evidence
                x_t, x0 = torch.tensor([[j]]), torch.tensor([[k]])
                torch.testing.assert_close(chain.true_posterior(x_t, x0, t)[0, 0], brute, atol=1e-12, rtol=1e-9)
                torch.testing.assert_close(chain.posterior(x_t, chain.one_hot(x0), t)[0, 0], brute, atol=1e-12,
                                           rtol=1e-9)


def test_absorbing_reverse_keeps_unmasked_tokens_and_ignores_impossible_x0():
    chain = MaskReplaceDiffusion(4, 10, absorbing=True)
    x_t = torch.tensor([[2, 4]])                         # token 2 unmasked, one [MASK]
    p0 = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1]]], dtype=torch.float64)
    post = chain.posterior(x_t, p0, 6)
    torch.testing.assert_close(post[0, 0], torch.tensor([0, 0, 1.0, 0, 0], dtype=torch.float64))
    # at a masked token: unmask with probability (gamma_bar_t - gamma_bar_{t-1}) / gamma_bar_t, to x0 ~ p0
    g_t, g_s = float(chain.gamma_bar[6]), float(chain.gamma_bar[5])
    expect = torch.cat([p0[0, 1] * (g_t - g_s) / g_t, torch.tensor([g_s / g_t], dtype=torch.float64)])
    torch.testing.assert_close(post[0, 1], expect, atol=1e-12, rtol=0)


def _oracle(x0: torch.Tensor, K: int, scale: float = 1e4):
    def model(x_t, t, **cond):
        return torch.nn.functional.one_hot(x0, K).to(torch.float64) * scale
    return model


def test_vb_loss_is_zero_for_the_true_x0_and_positive_otherwise(chain):
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, chain.num_classes, (32, 6), generator=g)
    terms = chain.loss_terms(_oracle(x0, chain.num_classes), x0, torch.Generator().manual_seed(4))
    assert float(terms["vb"].abs().max()) < 1e-9 and float(terms["aux"].abs().max()) < 1e-9
    assert bool((terms["t"] == 1).any()) and bool((terms["t"] > 1).any())
    wrong = (x0 + 1) % chain.num_classes
    bad = chain.loss_terms(_oracle(wrong, chain.num_classes, 3.0), x0, torch.Generator().manual_seed(4))
    assert float(bad["vb"].min()) >= 0 and float(bad["vb"].mean()) > 1e-3


def test_oracle_reverse_chain_recovers_x0(chain):
    x0 = torch.randint(0, chain.num_classes, (8, 10), generator=torch.Generator().manual_seed(5))
    out = chain.sample(_oracle(x0, chain.num_classes), 8, 10, torch.Generator().manual_seed(6))
    assert torch.equal(out, x0)


def test_sampling_is_batch_size_invariant_with_per_sample_generators():
    torch.manual_seed(0)
    net = TokenTransformer(4, (4, 4), hidden_size=32, depth=1, num_heads=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))  # leave the zero init so the prediction depends on the input
    chain = MaskReplaceDiffusion(4, 20, absorbing=False)
    labels = torch.arange(6) % 10
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    big = chain.sample(net, 6, 16, gens(range(6)), class_labels=labels)
    small = chain.sample(net, 2, 16, gens([2, 3]), class_labels=labels[2:4])
    assert torch.equal(big[2:4], small)
    assert not torch.equal(big[0], big[1])


def test_sample_categorical_matches_probabilities():
    probs = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64).expand(1, 40000, 3)
    draws = sample_categorical(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws[0], minlength=3).double() / 40000
    torch.testing.assert_close(freq, probs[0, 0], atol=0.01, rtol=0)


def test_token_codecs_round_trip():
    x = load_dataset("digits", "train").x
    grey = GreyLevelTokens(4)
    tok = grey.encode(x)
    assert tok.shape == (x.shape[0], 64) and int(tok.max()) == 3 and int(tok.min()) == 0
    assert torch.equal(grey.encode(grey.decode(tok)), tok)
    assert float((grey.decode(tok) - x).abs().max()) <= 1 / 3 + 1e-6
    vq = PatchVQTokens.fit(x[:400], 16, 2, seed=0)
    codes = vq.encode(x[:50])
    assert codes.shape == (50, 16) and vq.decode(codes).shape == (50, 1, 8, 8)
    assert torch.equal(vq.encode(vq.decode(codes)), codes)


def test_bad_arguments():
    with pytest.raises(ValueError):
        MaskReplaceDiffusion(1, 10)
    chain = MaskReplaceDiffusion(4, 10)
    with pytest.raises(ValueError):
        chain.q_probs(torch.tensor([[4]]), 1)  # [MASK] is not a data token
    with pytest.raises(ValueError):
        chain.q_probs(torch.tensor([[0]]), 11)
