"""SDA (arXiv 2406.04295): the synthetic domain, fine-tuning only a copy, the build cache and the direction against
DDA at tiny scale."""

import pytest
import torch

from diffusekit import zoo
from diffusekit.data.corruptions import corrupt
from diffusekit.data.digits import load_digits_split
from diffusekit.methods.tta import dda, sda

torch.set_num_threads(1)

TINY = {"n_per_class": 8, "epochs": 10}


@pytest.fixture(scope="module")
def models():
    return zoo.load("digits_bn_classifier").eval(), zoo.load("digits_unet")


@pytest.fixture(scope="module")
def built(models):
    clf, den = models
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    sda.clear_cache()
    adapter = sda.build(clf, quick=True, denoiser=den, **TINY)
    return adapter, before


def test_synthetic_domain_is_labelled_class_conditional_data(built, models):
    clf, den = models
    adapter, _ = built
    x_syn, y_syn = next(iter(sda._SYNTHETIC_CACHE.values()))
    assert x_syn.shape == (80, 1, 8, 8) and torch.equal(y_syn, torch.arange(10).repeat_interleave(8))
    assert float(x_syn.min()) >= -1 and float(x_syn.max()) <= 1
    with torch.no_grad():  # the CFG samples, after the projection, carry their class
        assert float((clf(x_syn).argmax(1) == y_syn).float().mean()) > 0.8
    assert adapter.preparation["synthetic_images"] == 80 and not adapter.preparation["cache_hit"]


def test_finetuning_changes_only_the_copy(built, models):
    clf, _ = models
    adapter, before = built
    after = clf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the source classifier is untouched
    assert adapter.source is clf
    tuned = adapter.synthetic_classifier.state_dict()
    assert any(not torch.equal(before[k], tuned[k]) for k in before if before[k].is_floating_point())
    # bn="reestimate" moved the running statistics; bn="frozen" keeps them and moves only weights
    x_syn, y_syn = next(iter(sda._SYNTHETIC_CACHE.values()))
    frozen = sda.finetune_on_synthetic(clf, x_syn, y_syn, epochs=2, bn="frozen")
    stats = [k for k in before if "running_" in k]
    assert stats and all(torch.equal(before[k], frozen.state_dict()[k]) for k in stats)
    assert any(not torch.equal(before[k], tuned[k]) for k in stats)
    with pytest.raises(ValueError, match="bn must be"):
        sda.finetune_on_synthetic(clf, x_syn, y_syn, bn="train")


def test_second_build_hits_the_cache(built, models):
    clf, _ = models
    again = sda.build(clf, quick=True, denoiser=zoo.load("digits_unet"), **TINY)  # a fresh load of the same weights
    assert again.preparation["cache_hit"]
    first, _ = built
    second = again.synthetic_classifier.state_dict()
    assert all(torch.equal(v, second[k]) for k, v in first.synthetic_classifier.state_dict().items())


def test_sda_is_no_worse_than_dda_and_updates_nothing(built, models):
    clf, den = models
    adapter, _ = built
    x, y = load_digits_split("test")
    x, y = x[:64], y[:64]
    x_bad = corrupt(x, "defocus_blur", 5, seed=0)
    tuned_before = {k: v.clone() for k, v in adapter.synthetic_classifier.state_dict().items()}
    dda_adapter = dda.build(clf, quick=True, denoiser=den)
    with torch.no_grad():
        err_source = float((clf(x_bad).argmax(1) != y).float().mean())
    err_dda = float((dda_adapter.predict(x_bad).argmax(1) != y).float().mean())
    err_sda = float((adapter.predict(x_bad).argmax(1) != y).float().mean())
    assert err_dda < err_source
    # measured at full scale the gain of SDA over DDA is below one point (docs/benchmarks.md): allow one image
    assert err_sda <= err_dda + 1 / 64
    after = adapter.synthetic_classifier.state_dict()
    assert all(torch.equal(tuned_before[k], after[k]) for k in tuned_before)
    assert adapter.nfe_per_image == dda_adapter.nfe_per_image
