"""λ-ECLIPSE (arXiv 2402.05195 / 2312.04655): the prior is one pass without time, λ = 0 drops the contrastive
gradient, a subject image pulls the predicted embedding toward itself, and the unCLIP decoder follows its
embedding under CFG."""

import inspect

import pytest
import torch

from diffusekit import zoo
from diffusekit.data.captioned import make_captioned_digits
from diffusekit.methods.eclipse import (EclipsePrior, contrastive_term, eclipse_prior_loss, subject_slots)
from diffusekit.methods.eclipse_data import embed_images, render_subjects, single_digit_attributes
from diffusekit.nets.clip import clip_loss


@pytest.fixture(scope="module")
def pipeline():
    torch.set_num_threads(1)
    return zoo.load("captions_eclipse")


@pytest.fixture(scope="module")
def judge():
    return zoo.load("captions_judge")


def test_prior_is_one_forward_pass_without_time_input(pipeline):
    prior = pipeline.prior
    assert list(inspect.signature(EclipsePrior.forward).parameters) == ["self", "hidden", "mask", "text_emb"]
    calls = []
    hooks = [b.register_forward_hook(lambda *_: calls.append(1)) for b in prior.blocks]
    z = pipeline.embed(["a thin red 3", "a 5 in blue"], render_subjects([0, 1], [1, 2], [0, 1], "test")[:, None])
    for h in hooks:
        h.remove()
    assert len(calls) == len(prior.blocks)  # each block ran once for the whole batch: no iterative sampling
    assert z.shape == (2, 64) and torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)
    again = pipeline.embed(["a thin red 3", "a 5 in blue"], render_subjects([0, 1], [1, 2], [0, 1], "test")[:, None])
    assert torch.equal(z, again)


def test_lambda_zero_removes_the_contrastive_gradient():
    g = torch.Generator().manual_seed(0)
    pred = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1).requires_grad_(True)
    target, text = (torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1) for _ in range(2))
    scale = torch.tensor(2.5)
    assert contrastive_term(pred, text, scale).mean().item() == pytest.approx(clip_loss(pred, text, scale).item())

    def grad(lam):
        pred.grad = None
        eclipse_prior_loss(pred, target, text, lam, scale).sum().backward()
        return pred.grad.clone()

    mse_only = torch.autograd.grad(((pred - target) ** 2).sum(), pred)[0]
    contrastive = torch.autograd.grad(contrastive_term(pred, text, scale).sum(), pred)[0]
    assert torch.equal(grad(0.0), mse_only)
    assert contrastive.abs().max() > 1e-3
    assert torch.allclose(grad(0.2), mse_only + 0.2 * contrastive, atol=1e-6)
    with pytest.raises(ValueError, match="λ"):
        eclipse_prior_loss(pred, target, text, -0.1, scale)


def test_subject_slots_number_digit_words_in_reading_order(pipeline):
    tokens, _ = pipeline.tokenizer.encode(["a red 3 on the left and a 7 on the right", "thick cyan digit 2"])
    slots = subject_slots(tokens, pipeline.tokenizer)
    words = [pipeline.tokenizer.itos[i] for i in tokens[0].tolist()]
    assert slots[0, words.index("3")] == 0 and slots[0, words.index("7")] == 1
    assert int((slots[0] >= 0).sum()) == 2 and int((slots[1] >= 0).sum()) == 1


def test_subject_token_pulls_the_embedding_toward_the_subject(pipeline):
    """"a thin red 3" with the "3" replaced by a (blue) 7 lands closer to a red 7 than the words alone do."""
    from diffusekit.data.captioned import render, source_digits

    src_x, src_y = source_digits("test")
    pairs = [(3, 7), (1, 4), (0, 6), (2, 9), (5, 8)]
    closer, margins = [], []
    for a, b in pairs:
        sources = (src_y == b).nonzero().squeeze(1)[:8]  # eight held-out instances of digit b
        n = len(sources)
        subjects = render_subjects(sources, [2] * n, [0] * n, "test")  # blue, thin
        prompts = [f"a thin red {a}"] * n
        z_subject = pipeline.embed(prompts, subjects[:, None])
        z_words = pipeline.embed(prompts)
        target = embed_images(pipeline.clip, render(single_digit_attributes([b] * n, [0] * n, [0] * n, sources), src_x))
        gain = (z_subject * target).sum(1) - (z_words * target).sum(1)
        closer.append((gain > 0).double().mean())
        margins.append(gain.mean())
    assert float(torch.stack(closer).mean()) > 0.8
    assert float(torch.stack(margins).mean()) > 0.05


def test_decoder_cfg_raises_judge_accuracy_over_unconditional(pipeline, judge):
    from diffusekit.zoo.recipes_t2i import attribute_accuracy, predict_attributes

    data = make_captioned_digits("test", n=40, seed=5)
    z = embed_images(pipeline.clip, data.images)
    acc = {w: attribute_accuracy(predict_attributes(judge, pipeline.decode(z, guidance=w, steps=6, seed=0)),
                                 data.attributes) for w in (0.0, 3.0)}
    for attribute in ("colour", "layout", "digit"):
        assert acc[3.0][attribute] > acc[0.0][attribute] + 0.15, (attribute, acc)


def test_bench_eclipse_quick(tmp_path):
    """The quick bench: the contrastive term raises the prior's text alignment; personalised digits take their
    identity from the subject images and colour / stroke / layout from the words; fine-tuning pays per subject."""
    from diffusekit.bench import run_bench

    result = run_bench("eclipse", out=tmp_path, quick=True)
    assert (tmp_path / "eclipse.json").exists() and (tmp_path / "eclipse.png").exists()
    assert (tmp_path / "eclipse_samples.png").exists()
    prior = result["prior_level"]
    gain = [prior[s]["eclipse λ=0.2"]["text_retrieval@1"] - prior[s]["eclipse λ=0"]["text_retrieval@1"]
            for s in ("single", "multi")]
    assert min(gain) > 0 and sum(gain) / 2 > 0.15, gain
    shipped = result["results"]["single"]["eclipse shipped"]
    assert shipped["concept_digit"] > 0.5  # chance 0.1: the digit word was replaced by the subject image
    assert shipped["composition"] > 0.4  # chance 1/14 (colour x stroke), layout also required
    cost = result["cost"]
    assert cost["eclipse λ=0.2"]["per_subject_steps"] == 0
    assert cost["fine-tune"]["per_subject_steps"] > 0
    assert cost["fine-tune"]["trained_parameters"] > 5 * cost["eclipse λ=0.2"]["trained_parameters"]
