"""Captioned compositional digits, caption tokenizer, text encoder and the small CLIP (Radford et al. 2021,
arXiv 2103.00020): determinism, held-out combinations, caption round trips, padding invariance, the InfoNCE
loss, a tiny training run beating chance, and the shipped ``captions_clip`` zoo asset."""

import math

import numpy as np
import pytest
import torch

from diffusekit.data.captioned import (ATTRIBUTE_KEYS, COLOURS, HELDOUT_PAIRS, attribute_row, caption_for,
                                       make_captioned_digits, parse_caption, render, source_digits)
from diffusekit.nets.clip import CLIPModel, clip_loss, retrieval_recall, train_clip, zero_shot_accuracy
from diffusekit.nets.text import CaptionTokenizer, TextEncoder

HELDOUT = {(d, COLOURS.index(c)) for d, c in HELDOUT_PAIRS}


def _pairs(data, k):
    present = data.attributes[f"digit_{k}"] >= 0
    return set(zip(data.attributes[f"digit_{k}"][present].tolist(), data.attributes[f"colour_{k}"][present].tolist()))


def test_dataset_is_deterministic_and_seed_dependent():
    a, b = make_captioned_digits("train", n=300, seed=3), make_captioned_digits("train", n=300, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert all(torch.equal(a.attributes[k], b.attributes[k]) for k in ATTRIBUTE_KEYS)
    c = make_captioned_digits("train", n=300, seed=4)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (300, 3, 24, 24) and a.images.min() >= -1 and a.images.max() <= 1
    assert make_captioned_digits("test", n=10, size=32).images.shape == (10, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown split"):
        make_captioned_digits("valid")


def test_heldout_pairs_only_in_heldout_split():
    for split in ("train", "test"):
        d = make_captioned_digits(split, n=3000)
        assert not (_pairs(d, 0) | _pairs(d, 1)) & HELDOUT
        assert len(_pairs(d, 0) | _pairs(d, 1)) == 70 - len(HELDOUT)  # every other pair does occur
    h = make_captioned_digits("heldout", n=500)
    assert _pairs(h, 0) == HELDOUT  # the first digit always has a held-out pair, and all of them occur
    assert set(h.attributes["num_digits"].tolist()) == {1, 2}


def test_captions_round_trip_through_parser_and_renderer():
    d = make_captioned_digits("heldout", n=400, seed=1)
    no_source = [k for k in ATTRIBUTE_KEYS if not k.startswith("source")]
    for i, caption in enumerate(d.captions):
        row = attribute_row(d.attributes, i)
        assert parse_caption(caption) == {k: row[k] for k in no_source}, caption
        for template in range(4):
            for phrase in range(3):
                for explicit in (True, False):
                    assert parse_caption(caption_for(row, template, phrase, explicit)) == {k: row[k] for k in no_source}
    for form in ("on the left and", "on the right and", "to the left of", "to the right of", " in ", "digit"):
        assert sum(form in c for c in d.captions) > 20, form  # every arrangement and phrase template is used
    assert torch.equal(render(d.attributes, source_digits("heldout")[0], 24), d.images)
    # a thick digit covers strictly more ink than the same digit drawn thin
    row = attribute_row(d.attributes, 0)
    one = {k: torch.tensor([v]) for k, v in row.items()}
    thin = render({**one, "thickness_0": torch.tensor([0])}, source_digits("heldout")[0])
    thick = render({**one, "thickness_0": torch.tensor([1])}, source_digits("heldout")[0])
    assert (thick >= thin).all() and (thick > thin).any()


def test_tokenizer_round_trip_null_caption_and_mask():
    tok = CaptionTokenizer()
    captions = ["a thick red 3 on the left and a thin blue 7 on the right", "A 5 in green.", "", "a purple 3"]
    tokens, mask = tok.encode(captions)
    assert tokens.shape == mask.shape == (4, 17) and tokens.dtype == torch.long and mask.dtype == torch.bool
    assert tok.decode(tokens)[:3] == [captions[0], "a 5 in green", ""]
    assert tokens[2, :2].tolist() == [tok.bos_id, tok.eos_id] and mask[2].sum() == 2  # null caption
    assert tokens[3, 2] == tok.unk_id
    assert torch.equal(mask, tokens != tok.pad_id) and (mask.sum(1) == torch.tensor([17, 6, 2, 5])).all()
    padded, pmask = tok.encode(captions, max_len=20)
    assert torch.equal(padded[:, :17], tokens) and not pmask[:, 17:].any()
    with pytest.raises(ValueError, match="max_len=4"):
        tok.encode(captions, max_len=4)
    assert CaptionTokenizer(**tok.config()).itos == tok.itos


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    tok = CaptionTokenizer()
    enc = TextEncoder(tok.vocab_size, width=32, depth=2, num_heads=4, max_len=32).eval()
    captions = ["a thick red 3 to the left of a blue 7", "", "cyan digit 4"]
    tokens, mask = tok.encode(captions)
    long_tokens, long_mask = tok.encode(captions, max_len=32)
    junk = torch.where(long_mask, long_tokens, torch.randint(4, tok.vocab_size, long_tokens.shape))  # garbage pads
    with torch.no_grad():
        h, pooled = enc(tokens, mask)
        h_long, pooled_long = enc(junk, long_mask)
    torch.testing.assert_close(pooled_long, pooled, atol=1e-5, rtol=0)
    torch.testing.assert_close(h_long[:, :tokens.shape[1]], h, atol=1e-5, rtol=0)
    assert (h_long[~long_mask] == 0).all() and h.shape == (3, tokens.shape[1], 32) and pooled.shape == (3, 32)
    assert (pooled[0] - pooled[2]).abs().max() > 1e-3  # and does read the words


def test_clip_loss_prefers_matching_pairs():
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07))
    matched, shuffled = clip_loss(emb, emb, scale), clip_loss(emb, emb[torch.roll(torch.arange(16), 1)], scale)
    assert matched < shuffled
    logits = scale.exp() * emb @ emb.t()  # by hand: the mean of the row-wise and column-wise cross-entropies
    by_hand = -(logits.diag() - logits.logsumexp(1)).mean() / 2 - (logits.diag() - logits.logsumexp(0)).mean() / 2
    torch.testing.assert_close(matched, by_hand)
    assert abs(float(clip_loss(emb[:, :1] * 0 + 1, emb[:, :1] * 0 + 1, scale)) - math.log(16)) < 1e-5  # no signal


def test_tiny_clip_beats_chance_zero_shot():
    torch.set_num_threads(1)
    tok = CaptionTokenizer()
    train = make_captioned_digits("train", n=2000)
    config = {"embed_dim": 32, "image_width": 32, "image_depth": 2, "patch_size": 4,
              "text": {"vocab_size": tok.vocab_size, "width": 32, "depth": 1, "num_heads": 4}}
    model, history = train_clip(train, steps=150, batch_size=64, lr=2e-3, seed=0, model_config=config)
    assert np.mean(history["loss"][-20:]) < np.mean(history["loss"][:20]) - 2.0  # measured 4.2 -> 1.2
    test = make_captioned_digits("test", n=300)
    colour = zero_shot_accuracy(model, tok, test, "colour")
    assert colour > 0.8, colour  # chance 1/7; measured 0.99 (seeds 0, 1)
    recall = retrieval_recall(model, tok, test, k=(5,))
    assert recall["text_to_image@5"] > 0.6, recall  # chance ~0.05 in galleries of 100; measured 0.96


def test_zoo_clip_loads_and_reproduces_its_manifest():
    from diffusekit import zoo

    model = zoo.load("captions_clip")
    meta = zoo.manifest("captions_clip")
    assert isinstance(model, CLIPModel) and meta["kind"] == "clip"
    tok = model.tokenizer
    test = make_captioned_digits("test", n=meta["metrics"]["test"]["n"]).subset(slice(0, 300))
    x = test.images[:4]
    assert model.image_patch_features(x).shape == (4, 36, model.config["image_width"])
    assert torch.allclose(model.encode_image(x).norm(dim=-1), torch.ones(4))
    for attribute in ("digit", "colour"):
        full = meta["metrics"]["test"][f"zero_shot_{attribute}"]
        acc = zero_shot_accuracy(model, tok, test, attribute)
        assert abs(acc - full) <= 4 * math.sqrt(max(full * (1 - full), 0.01) / 300), (attribute, acc, full)
    assert meta["metrics"]["test"]["zero_shot_colour"] > 0.9 and meta["metrics"]["test"]["zero_shot_digit"] > 0.5
