"""DiffTPT / TPT (arXiv 2308.06038, 2209.07511): selection rules, the soft-prompt hook, per-image reset, frozen CLIP,
entropy descent and the quick bench's direction."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffusekit import zoo
from diffusekit.methods.tta import difftpt
from diffusekit.data.captioned import COLOURS, THICKNESSES
from diffusekit.methods.tta import base


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return zoo.load("captions_clip"), difftpt.image_generator()


@pytest.fixture(scope="module")
def images():
    return difftpt.test_data("test", n=6, seed=0)


def test_cosine_filter_keeps_the_most_similar_views():
    angles = torch.tensor([0.0, 1.2, 0.3, 2.5, 0.9, 0.1, 3.0, 0.6, 1.8, 0.45])  # view 0 is the reference
    features = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.linspace(0.5, 3.0, 10)[:, None]
    for rho in (0.8, 0.5, 0.25, 1.0):
        keep = difftpt.cosine_filter(features, features[0], rho)
        expected = torch.argsort(angles)[:math.ceil(rho * 10)].sort().values  # smaller angle = higher cosine
        assert torch.equal(keep, expected), rho
    assert len(difftpt.cosine_filter(features[:7], features[0], 0.8)) == 6  # ceil(5.6)
    with pytest.raises(ValueError):
        difftpt.cosine_filter(features, features[0], 0.0)


def test_confidence_selection_keeps_the_lowest_entropy_views():
    sharpness = torch.tensor([0.5, 4.0, 1.0, 8.0, 0.1, 2.0, 6.0, 3.0, 0.0, 5.0])
    logits = torch.zeros(10, 10)
    logits[torch.arange(10), torch.arange(10) % 10] = sharpness  # sharper one-hot bump -> lower entropy
    keep = difftpt.select_confident(logits, 0.3)
    assert torch.equal(keep, torch.tensor([3, 6, 9]))
    assert len(difftpt.select_confident(logits, 0.1)) == 1
    p = logits.softmax(1)
    entropy = -(p * p.log()).sum(1)
    assert entropy[keep].max() < entropy[[i for i in range(10) if i not in keep.tolist()]].min()


def test_marginal_entropy_is_the_entropy_of_the_mean_prediction():
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(0)) * 3
    p_bar = logits.softmax(1).mean(0)
    assert torch.allclose(difftpt.marginal_entropy(logits), -(p_bar * p_bar.log()).sum(), atol=1e-6)


def test_soft_prompt_hook_reproduces_hard_prompts(models, images):
    clip, _ = models
    captions = ["a thick red 3", "a thin blue 7 on the left and a thick green 1 on the right"]
    tokens, mask = clip.tokenizer.encode(captions)
    assert torch.equal(clip.encode_text(tokens, mask),
                       clip.encode_text(tokens, mask, clip.text_encoder.token_embedding(tokens)))
    prompt = difftpt.PromptTuner(clip)
    context = prompt.initial_context(clip.encode_image(images[0][:1])[0])
    weight = clip.text_encoder.token_embedding.weight
    words = [clip.tokenizer.itos[int((weight == row).all(1).nonzero()[0, 0])] for row in context]
    assert words[0] == "a" and words[1] in THICKNESSES and words[2] in COLOURS  # the initial context is words
    expected = clip.encode_text(*clip.tokenizer.encode([f"a {words[1]} {words[2]} {k}" for k in range(10)]))
    assert torch.allclose(prompt.class_embeddings(context), expected, atol=1e-6)


def test_views_are_deterministic_and_in_range(models, images):
    _, generator_model = models
    x = images[0][:1]
    a = difftpt.augment_views(x, 5, torch.Generator().manual_seed(3))
    b = difftpt.augment_views(x, 5, torch.Generator().manual_seed(3))
    assert a.shape == (5, 3, 24, 24) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a[0], a[1])
    s = difftpt.sdedit_views(generator_model, x, 3, torch.Generator().manual_seed(0), t0=0.2, steps=2)
    assert s.shape == (3, 3, 24, 24) and s.min() >= -1 and s.max() <= 1
    assert F.cosine_similarity(s.flatten(1), x.flatten(1)).min() > 0.5  # a variation, not a new image


def test_prompt_resets_per_image_and_predictions_do_not_depend_on_order(models, images):
    clip, generator_model = models
    x, _ = images
    adapter = difftpt.build(clip, quick=True, generator_model=generator_model)
    assert isinstance(adapter, base.TestTimeAdapter) and adapter.name == "difftpt"
    initial = adapter.context.detach().clone()
    logits_a = adapter.predict(x[:1])
    assert len(adapter.last_losses) == adapter.config.steps + 1  # the prompt was tuned ...
    assert adapter.last_losses[-1] != adapter.last_losses[0]
    assert torch.equal(adapter.context.detach(), initial)  # ... and reset bit-exactly before the next image
    b_after_a = adapter.predict(x[1:2])
    fresh = difftpt.build(clip, quick=True, generator_model=generator_model)
    b_alone = fresh.predict(x[1:2])
    assert torch.equal(b_after_a, b_alone)
    both = fresh.predict(x[:2])  # a batch is the images one by one
    assert torch.equal(both, torch.cat([logits_a, b_alone]))
    assert logits_a.shape == (1, 10)


def test_only_the_prompt_context_is_learned(models, images):
    clip, generator_model = models
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    unet_before = {k: v.clone() for k, v in generator_model.net.state_dict().items()}
    adapter = difftpt.build(clip, quick=True, generator_model=generator_model)
    seen = []
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append([p for group in self.param_groups for p in group["params"]])
        return original_step(self, *args, **kwargs)

    torch.optim.AdamW.step = spy
    try:
        adapter.predict(images[0][:2])
    finally:
        torch.optim.AdamW.step = original_step
    assert seen and all(len(ps) == 1 and ps[0] is adapter.context for ps in seen)
    assert all(p.grad is None for p in clip.parameters())
    assert all(torch.equal(v, before[k]) for k, v in clip.state_dict().items())
    assert all(torch.equal(v, unet_before[k]) for k, v in generator_model.net.state_dict().items())


def test_marginal_entropy_decreases_over_the_tuning_steps(models, images):
    clip, generator_model = models
    adapter = difftpt.build(clip, generator_model=generator_model, n_aug=3, n_diffusion=4, sdedit_steps=2, steps=4)
    for i in range(4):
        adapter.predict(images[0][i:i + 1])
        losses = adapter.last_losses
        assert len(losses) == 5 and losses[-1] < losses[0], (i, losses)
    tpt = difftpt.build_tpt(clip, n_aug=7, steps=4)
    tpt.predict(images[0][:1])
    assert tpt.last_losses[-1] < tpt.last_losses[0]
    assert tpt.last_kept == (8, 3)  # no cosine filter; ceil(0.3 * 8) views selected


def test_settings_are_validated(models):
    clip, _ = models
    with pytest.raises(ValueError, match="unknown DiffTPT setting"):
        difftpt.build_tpt(clip, learning_rate=1.0)
    with pytest.raises(ValueError):
        difftpt.DiffTPTConfig(rho=1.5)
    with pytest.raises(ValueError):
        difftpt.DiffTPTConfig(similarity="pixels")
    with pytest.raises(ValueError, match="generator_model"):
        difftpt.DiffTPT(clip, difftpt.DIFFTPT_DEFAULTS)


def test_test_data_is_single_digit_and_prefix_stable():
    x, y = difftpt.test_data("test", n=10)
    x_all, y_all = difftpt.test_data("test")
    assert x.shape == (10, 3, 24, 24) and torch.equal(x, x_all[:10]) and torch.equal(y, y_all[:10])
    assert y.min() >= 0 and y.max() <= 9


def test_quick_bench_diffusion_views_beat_augmentation_views(tmp_path):
    from diffusekit.bench import run_bench

    r = run_bench("difftpt", out=tmp_path, quick=True)
    assert (tmp_path / "difftpt.json").exists() and (tmp_path / "difftpt.png").exists()
    for key, v in r["views"].items():  # the mechanism: diffusion variations keep the digit far more often
        assert v["diffusion"]["per_view_accuracy"] > v["augmentation"]["per_view_accuracy"] + 0.1, key
    mean = r["mean_accuracy"]
    assert mean["difftpt"] >= mean["tpt"]  # the claim (a tie at this scale; see the full bench for its size)
    assert mean["difftpt"] >= mean["zero_shot"]
