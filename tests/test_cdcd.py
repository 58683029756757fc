import math

import pytest
import torch

from diffusekit.methods.cdcd import CDCDLoss, chunk_shuffle, contrastive_kl, inter_class_negatives
from diffusekit.methods.discrete import MaskReplaceDiffusion


class FreeLogits(torch.nn.Module):
    """A 'network' whose x0 logits are free parameters (B, N, K), so a gradient step moves p_theta directly."""

    def __init__(self, b, n, k, seed=0):
        super().__init__()
        self.logits = torch.nn.Parameter(0.1 * torch.randn(b, n, k, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x_t, t, class_labels=None):
        return self.logits


def test_chunk_shuffle_permutes_whole_chunks_and_never_returns_the_input():
    x = torch.arange(64).repeat(50, 1)
    out = chunk_shuffle(x, torch.Generator().manual_seed(0), num_chunks=8)
    for row in out:
        chunks = row.reshape(8, 8)
        assert sorted(chunks[:, 0].tolist()) == list(range(0, 64, 8))             # every chunk once
        assert torch.equal(chunks - chunks[:, :1], torch.arange(8).expand(8, 8))  # chunks kept contiguous
        assert not torch.equal(row, x[0])
    with pytest.raises(ValueError):
        chunk_shuffle(torch.zeros(2, 10, dtype=torch.long), num_chunks=8)


def test_inter_negatives_come_from_other_classes():
    pool = torch.arange(40)[:, None].repeat(1, 4)
    pool_labels = torch.arange(40) % 4
    labels = torch.tensor([0, 1, 2, 3, 0])
    neg = inter_class_negatives(labels, pool, pool_labels, 6, torch.Generator().manual_seed(0))
    assert neg.shape == (6, 5, 4)
    assert bool((pool_labels[neg[..., 0]] != labels[None, :]).all())


@pytest.mark.parametrize("absorbing", [True, False])
@pytest.mark.parametrize("mode", ["step", "sample"])
def test_lambda_zero_is_exactly_the_vb_loss_and_the_term_is_bounded(absorbing, mode):
    proc = MaskReplaceDiffusion(6, 20, absorbing=absorbing)
    x0 = torch.randint(0, 6, (16, 8), generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % 4
    net = FreeLogits(16, 8, 6)
    plain = proc.vb_loss(proc.loss_terms(net, x0, torch.Generator().manual_seed(2), class_labels=labels),
                         aux_weight=0.3)
    zero = CDCDLoss(proc, lambda_c=0.0, mode=mode, aux_weight=0.3)(net, (x0, labels), torch.Generator().manual_seed(2))
    assert torch.equal(zero, plain.float())
    lam = 0.5
    loss = CDCDLoss(proc, lambda_c=lam, mode=mode, aux_weight=0.3)
    with_c = loss(net, (x0, labels), torch.Generator().manual_seed(2))
    push = (plain.float() - with_c)  # = lambda_c w_t mean min(KL_neg, margin) >= 0
    assert bool((push >= -1e-6).all()) and bool((push > 0).any())
    assert bool((push <= lam * 2 * loss.margin + 1e-5).all())
    assert math.isclose(loss.margin, math.log(6))


@pytest.mark.parametrize("mode", ["step", "sample"])
@pytest.mark.parametrize("negatives", ["intra", "inter"])
def test_contrastive_gradient_moves_p_theta_away_from_the_negatives(mode, negatives):
    proc = MaskReplaceDiffusion(6, 20, absorbing=False)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, 6, (32, 8), generator=g)
    labels = torch.arange(32) % 4
    pool = (torch.randint(0, 6, (64, 8), generator=g), torch.arange(64) % 4)
    probs_of_negatives = {}
    for lam in (0.0, 1.0):
        net = FreeLogits(32, 8, 6)
        loss = CDCDLoss(proc, lambda_c=lam, mode=mode, negatives=negatives, num_negatives=4, margin=50.0, pool=pool)
        gen = torch.Generator().manual_seed(4)
        loss(net, (x0, labels), gen).sum().backward()  # sum: each example's logits get an O(1) gradient
        with torch.no_grad():
            net.logits -= 0.5 * net.logits.grad
        # the same negatives and x_t as in the step
        gen = torch.Generator().manual_seed(4)
        terms = proc.loss_terms(net, x0, gen, class_labels=labels)
        neg = loss.make_negatives(x0, labels, gen) if lam else CDCDLoss(
            proc, lambda_c=1.0, mode=mode, negatives=negatives, num_negatives=4, pool=pool).make_negatives(
            x0, labels, gen)
        probs_of_negatives[lam] = contrastive_kl(proc, terms, neg, mode).mean().item()
    # larger divergence from the negatives after the contrastive step than after the plain step
    assert probs_of_negatives[1.0] > probs_of_negatives[0.0] + 1e-3, probs_of_negatives


def test_quick_bench_contrastive_models_move_away_from_negatives_and_keep_accuracy(tmp_path):
    from diffusekit.bench import run_bench

    torch.set_num_threads(1)
    result = run_bench("cdcd", out=tmp_path, quick=True)
    assert (tmp_path / "cdcd.json").exists() and (tmp_path / "cdcd.png").exists()
    table = result["table"]
    base = [table["baseline"], table["baseline seed 1"]]
    assert min(r["accuracy"] for r in base) > 0.25  # trained well above chance (0.1) in the quick budget
    # the term does what it optimises: each contrastive model is further from its own kind of negative than
    # either lambda_c = 0 seed (the seed-to-seed spread is the yardstick)
    for kind, factor in (("step-intra", 2.0), ("step-inter", 1.0)):
        row = table[f"{kind} 0.1"]
        assert row["neg_divergence"][kind] > factor * max(r["neg_divergence"][kind] for r in base), (kind, row)
    # conditional accuracy with the contrastive term >= without (two contrastive models vs two seeds of lambda_c = 0)
    cdcd = [table["step-intra 0.1"]["accuracy"], table["step-inter 0.1"]["accuracy"]]
    assert sum(cdcd) / 2 >= sum(r["accuracy"] for r in base) / 2, table


def test_caption_conditioning_path_trains_the_text_encoder_and_samples():
    from diffusekit.data.captioned import make_captioned_digits
    from diffusekit.methods.cdcd import sample_tokens
    from diffusekit.methods.discrete import GreyLevelTokens, TokenTransformer
    from diffusekit.nets.text import CaptionTokenizer, TextEncoder

    data = make_captioned_digits("train", n=24, size=16, seed=0)
    grey = GreyLevelTokens(4, image_size=16)
    tokens = grey.encode(data.images.amax(1, keepdim=True))                    # (24, 256) brightness tokens
    caption_ids, caption_mask = CaptionTokenizer().encode(data.captions)
    group = data.attributes["digit_0"] * 10 + data.attributes["colour_0"]        # inter negatives: other content
    tok = CaptionTokenizer()
    torch.manual_seed(0)
    net = TokenTransformer(4, grey.grid, hidden_size=32, depth=1, num_heads=2, num_labels=None,
                           text_encoder=TextEncoder(tok.vocab_size, width=32, depth=1, num_heads=2))
    proc = MaskReplaceDiffusion(4, 10, absorbing=True)
    loss = CDCDLoss(proc, lambda_c=0.1, mode="step", negatives="inter", num_negatives=2, pool=(tokens, group),
                    condition=lambda b: {"caption_tokens": b[2], "caption_mask": b[3]})
    with torch.no_grad():  # past the zero-initialised output layer, as after a few optimiser steps
        net.final.linear.weight.normal_(0, 0.5)
    loss(net, (tokens, group, caption_ids, caption_mask), torch.Generator().manual_seed(0)).mean().backward()
    # the caption reaches the loss: the (zero-initialised) cross-attention output projection gets a gradient
    assert float(net.blocks[0].cross.proj.weight.grad.abs().sum()) > 0
    out = sample_tokens(proc, net, None, [0, 1], grey.seq_len, caption_tokens=caption_ids[:2],
                        caption_mask=caption_mask[:2])
    assert out.shape == (2, 256) and int(out.max()) < 4
    alone = sample_tokens(proc, net, None, [1], grey.seq_len, caption_tokens=caption_ids[1:2],
                          caption_mask=caption_mask[1:2])
    assert torch.equal(alone[0], out[1])
