"""TENT (arXiv 2006.10726), the open-set wisdom-of-crowds filter (arXiv 2308.06879) and the TTA method registry."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from diffusekit import zoo
from diffusekit.data.shift_streams import single_stream
from diffusekit.methods.tta import registry
from diffusekit.methods.tta.open_set import OpenSetFilter, crowd_selection, filtered_entropy_loss
from diffusekit.methods.tta.source import bn_affine_parameters
from diffusekit.methods.tta.tent import Tent, build, build_filtered, softmax_entropy


@pytest.fixture(scope="module")
def classifier():
    return zoo.load("digits_bn_classifier")


@pytest.fixture(scope="module")
def batches():
    return list(single_stream("gaussian_noise", 5, batch_size=48, seed=0))[:4]


def _bn_affine_names(model):
    names = set()
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            names |= {f"{mod_name}.weight", f"{mod_name}.bias"}
    return names


def _unwrapped_state(tent):
    """The adapted model's state under the source classifier's names (BatchStatisticsNorm adds '.bn')."""
    return {k.replace(".bn.", "."): v for k, v in tent.model.state_dict().items()}


def test_tent_touches_only_bn_affine_parameters(classifier, batches):
    before = copy.deepcopy(classifier.state_dict())
    tent = build(classifier)
    for x, _ in batches:
        tent.predict(x)
    after = _unwrapped_state(tent)
    affine = _bn_affine_names(classifier)
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= affine  # every BN gamma/beta may move, nothing else does
    assert len(changed) >= len(affine) // 2
    for k, v in classifier.state_dict().items():  # the caller's classifier is untouched
        assert torch.equal(v, before[k])
    trainable = [p for p in tent.model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in bn_affine_parameters(tent.model)}


def test_bn_uses_batch_statistics(classifier, batches):
    x = batches[0][0]
    tent = build(classifier, lr=0.0)
    reference = copy.deepcopy(classifier).train()  # train-mode BN normalises with the batch statistics
    with torch.no_grad():
        expected = reference(x)
        running = classifier(x)
    got = tent.predict(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - running).abs().max() > 1e-2  # and not with the running (source) statistics


def test_batch_of_one_normalises_conv_layers_per_image(classifier, batches):
    x = batches[0][0][:1]
    tent = build(classifier, lr=0.0)
    reference = copy.deepcopy(classifier)
    for m in reference.modules():  # BatchNorm2d: the image's own spatial statistics; BatchNorm1d: running ones
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(tent.predict(x), expected, rtol=1e-5, atol=1e-5)


def test_one_adam_step_on_the_mean_entropy_per_batch(classifier, batches):
    x = batches[0][0]
    tent = build(classifier)
    manual = copy.deepcopy(tent.model)
    params = bn_affine_parameters(manual)
    opt = torch.optim.Adam(params, lr=1e-3)
    logits = manual(x)
    softmax_entropy(logits).mean().backward()
    opt.step()
    returned = tent.predict(x)
    torch.testing.assert_close(returned, logits.detach())  # the prediction is the forward used for the update
    for p, q in zip(bn_affine_parameters(tent.model), params):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    h = softmax_entropy(torch.tensor([[0.0, 0.0], [100.0, 0.0]]))
    assert h[0].item() == pytest.approx(math.log(2)) and h[1].item() == pytest.approx(0.0, abs=1e-30)


def test_reset_restores_the_source_state_exactly(classifier, batches):
    tent = build(classifier)
    fresh = build(classifier)
    start = copy.deepcopy(tent.model.state_dict())
    for x, _ in batches:
        tent.predict(x)
    assert any(not torch.equal(v, tent.model.state_dict()[k]) for k, v in start.items())
    tent.reset()
    for k, v in start.items():
        assert torch.equal(v, tent.model.state_dict()[k])
    assert not tent.optimizer.state  # no Adam moments left
    for x, _ in batches:  # and it adapts again exactly like a fresh adapter
        assert torch.equal(tent.predict(x), fresh.predict(x))


def test_episodic_tent_predicts_every_batch_from_the_source(classifier, batches):
    episodic = build(classifier, episodic=True)
    for x, _ in batches:
        assert torch.equal(episodic.predict(x), build(classifier).predict(x))
    x = batches[0][0]
    assert torch.equal(episodic.predict(x), episodic.predict(x))


def test_crowd_selection_keeps_exactly_the_samples_whose_original_class_gained():
    source = torch.tensor([[2.0, 0.0, 0.0],    # c = 0
                           [0.0, 3.0, 0.0],    # c = 1
                           [0.0, 0.0, 1.0],    # c = 2
                           [1.0, 0.5, 0.0],    # c = 0
                           [0.0, 1.0, 2.0]])   # c = 2
    adapted = torch.tensor([[4.0, 0.0, 0.0],   # p(0) up -> keep
                            [0.0, 1.0, 0.0],   # p(1) down -> drop
                            [0.0, 0.0, 1.0],   # unchanged (p equal) -> keep (>=)
                            [0.0, 3.0, 0.0],   # prediction flipped to class 1, p(0) down -> drop
                            [5.0, 1.0, 2.0]])  # p(2) down (class 0 now wins) -> drop
    assert crowd_selection(adapted, source).tolist() == [True, False, True, False, False]
    alpha = 0.3
    loss = filtered_entropy_loss(adapted, source, alpha)
    h = softmax_entropy(adapted)
    mean_p = adapted.softmax(1).mean(0)
    expected = (h[0] + h[2]) / 2 + alpha * (mean_p * mean_p.log()).sum()
    torch.testing.assert_close(loss, expected)
    # nothing kept: only the diversity term, no NaN
    none_kept = filtered_entropy_loss(adapted[[1, 3]], source[[1, 3]], alpha)
    mean_p = adapted[[1, 3]].softmax(1).mean(0)
    torch.testing.assert_close(none_kept, alpha * (mean_p * mean_p.log()).sum())


def test_filtered_loss_has_no_gradient_from_dropped_samples():
    source = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    adapted = torch.tensor([[3.0, 0.0], [0.0, 1.0]], requires_grad=True)  # sample 1 lost confidence: dropped
    filtered_entropy_loss(adapted, source, alpha=0.0).backward()
    assert adapted.grad[1].abs().max() == 0 and adapted.grad[0].abs().max() > 0


def test_filter_on_tent_first_step_equals_tent_with_the_diversity_term(classifier, batches):
    """On the first batch the adapted model equals the source copy, so every sample is kept: with alpha = 0 the
    filtered update is TENT's update, bit for bit."""
    x = batches[0][0]
    tent, filtered = build(classifier), build_filtered(classifier, alpha=0.0)
    assert torch.equal(tent.predict(x), filtered.predict(x))
    assert bool(filtered.last_kept.all())
    for p, q in zip(bn_affine_parameters(tent.model), bn_affine_parameters(filtered.base.model)):
        assert torch.equal(p, q)
    filtered.reset()
    assert filtered.last_kept is None and not filtered.base.optimizer.state
    assert filtered.name == "tent+filter"


def test_filter_wraps_only_entropy_based_adapters(classifier):
    from diffusekit.methods.tta.base import SourceModel

    with pytest.raises(ValueError, match="adapt_step"):
        OpenSetFilter(SourceModel(classifier))
    with pytest.raises(ValueError, match="alpha"):
        OpenSetFilter(build(classifier), alpha=-1.0)


def test_tent_needs_batchnorm_and_valid_options():
    with pytest.raises(ValueError, match="BatchNorm"):
        Tent(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    with pytest.raises(ValueError, match="steps"):
        Tent(zoo.load("digits_bn_classifier"), steps=0)


def test_tent_adapts_toward_lower_entropy(classifier, batches):
    """Direction of the method's effect: repeated TENT steps on one batch lower its mean prediction entropy."""
    x = batches[0][0]
    tent = build(classifier, lr=1e-2)
    entropies = [float(softmax_entropy(tent.predict(x)).mean()) for _ in range(10)]
    assert entropies[-1] < entropies[0] - 0.05


def test_registry_builds_available_methods_and_reports_missing_ones(classifier, monkeypatch):
    assert registry.available_methods()[:3] == ["source", "tent", "tent+filter"]
    assert registry.build_method("tent", classifier).name == "tent"
    assert registry.build_method("tent+filter", classifier).name == "tent+filter"
    assert registry.build_method("source", classifier).name == "source"
    with pytest.raises(ValueError, match="unknown method 'bogus'"):
        registry.build_method("bogus", classifier)
    monkeypatch.setitem(registry.METHODS, "ghost", ("no_such_module", "build", "a method not written yet"))
    assert "is not available yet" in registry.method_status("ghost")
    with pytest.raises(registry.MethodUnavailable, match="no_such_module is missing"):
        registry.build_method("ghost", classifier)


def test_source_entropy_reference_matches_functional(classifier, batches):
    x = batches[0][0]
    with torch.no_grad():
        logits = classifier(x)
    p = F.softmax(logits, 1)
    torch.testing.assert_close(softmax_entropy(logits), -(p * p.log()).sum(1))
