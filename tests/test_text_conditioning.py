import pytest
import torch

from diffusekit import zoo
from diffusekit.nets import UNet, build_net
from diffusekit.nets.unet import CrossAttentionBlock

TEXT_UNET = {"name": "unet", "in_channels": 3, "base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
             "attention_resolutions": [4], "num_heads": 2, "image_size": 8, "context_dim": 12}


def _cross_blocks(net):
    return [m for m in net.modules() if isinstance(m, CrossAttentionBlock)]


def _randomise_outputs(net, seed=0):
    """Give the zero-initialised output layers random weights, so every path reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in [net.conv_out, *[b.proj for b in _cross_blocks(net)]]:
            m.weight.copy_(0.2 * torch.randn(m.weight.shape, generator=g))


def test_unet_without_context_dim_is_unchanged():
    """context_dim=None: the zoo's checkpoints load strictly, the config has no new key, no cross-attention."""
    den = zoo.load("digits_unet")  # load_state_dict is strict
    assert "context_dim" not in den.net.config
    assert not _cross_blocks(den.net)
    rebuilt = build_net(den.net.config)
    rebuilt.load_state_dict(den.net.state_dict(), strict=True)
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([10.0, 200.0, 500.0, 900.0]), torch.tensor([0, 3, 7, 10])
    torch.testing.assert_close(rebuilt(x, t, y), den.net(x, t, y), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no cross-attention"):
        den.net(x, t, y, context=torch.zeros(4, 2, 8))


def test_new_cross_attention_starts_as_identity_over_the_same_weights():
    """A text UNet holds the plain UNet's weights plus cross-attention whose zero output projection makes it the
    plain net at initialisation, whatever the context."""
    plain_cfg = {k: v for k, v in TEXT_UNET.items() if k != "context_dim"}
    torch.manual_seed(0)
    plain = build_net(plain_cfg)
    _randomise_outputs(plain)
    text = build_net(TEXT_UNET)
    assert text.config["context_dim"] == 12
    missing, unexpected = text.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".cross." in k or k.startswith("mid_cross.") for k in missing)
    # attention at the 4 x 4 level: one block down, two up, one in the middle
    assert len(_cross_blocks(text)) == 4
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([5.0, 300.0, 999.0])
    context = torch.randn(3, 5, 12)
    torch.testing.assert_close(text(x, t, context=context), plain(x, t), rtol=0, atol=0)


def test_without_attention_the_middle_gets_cross_attention():
    net = UNet(in_channels=1, base_channels=8, channel_mult=[1, 2], attention_resolutions=[], num_heads=2,
               context_dim=6)
    assert len(_cross_blocks(net)) == 1 and net.mid_cross is not None


def test_masked_context_tokens_do_not_change_the_output():
    torch.manual_seed(1)
    net = build_net(TEXT_UNET)
    _randomise_outputs(net)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([100.0, 700.0])
    context = torch.randn(2, 6, 12)
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 5 + [False]])
    out = net(x, t, context=context, context_mask=mask)
    changed = context.clone()
    changed[0, 3:] = 50 * torch.randn(3, 12)
    changed[1, 5:] = -7.0
    torch.testing.assert_close(net(x, t, context=changed, context_mask=mask), out, rtol=0, atol=1e-6)
    # the same caption without its padding gives the same output too
    torch.testing.assert_close(net(x[:1], t[:1], context=context[:1, :3]), out[:1], rtol=0, atol=1e-5)
    # and a kept token does matter
    changed[0, 0] = torch.randn(12)
    assert (net(x, t, context=changed, context_mask=mask)[0] - out[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="keep at least one"):
        net(x, t, context=context, context_mask=torch.zeros(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="context must be"):
        net(x, t)


# --- text conditioning: loss, null caption, guidance ------------------------------------------------------------


def _tiny_text_model(seed=0):
    from diffusekit.core import VPDiscrete
    from diffusekit.methods.text_conditioning import TextConditionedDenoiser
    from diffusekit.nets.text import CaptionTokenizer, TextEncoder

    torch.manual_seed(seed)
    tokenizer = CaptionTokenizer()
    encoder = TextEncoder(tokenizer.vocab_size, width=12, depth=1, num_heads=2, max_len=24).double()
    net = build_net(TEXT_UNET)
    _randomise_outputs(net, seed)
    net.double()
    return TextConditionedDenoiser(net, VPDiscrete.named("linear", 1000), "eps", tokenizer=tokenizer,
                                   text_encoder=encoder)


CAPTIONS = ["a thick red 3", "a 5 in green", "thin blue digit 7 on the left and a white 1 on the right"]


def test_cfg_on_the_null_caption_interpolates_conditional_and_null_models():
    from diffusekit.methods.text_conditioning import NULL_CAPTION

    den = _tiny_text_model()
    cond = den.condition(CAPTIONS)
    assert cond["context"].shape[:2] == cond["context_mask"].shape and cond["context_mask"].shape[0] == 3
    null = den.null_condition(cond)
    assert null["context_mask"].sum(1).tolist() == [2, 2, 2]  # <bos><eos>, padded to the captions' length
    x, t = torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x0_c = den(x, t, **cond)
    # the padded null condition is exactly the encoded empty caption on its own
    x0_u = den(x, t, **den.condition([NULL_CAPTION] * 3))
    torch.testing.assert_close(den(x, t, **null), x0_u, rtol=0, atol=1e-10)
    assert (x0_c - x0_u).abs().max() > 1e-3  # the caption matters
    torch.testing.assert_close(den.guided(1.0)(x, t, **cond), x0_c, rtol=0, atol=0)
    torch.testing.assert_close(den.guided(0.0)(x, t, **cond), x0_u, rtol=0, atol=1e-10)
    # w = 3 through one batched call equals the explicit formula x0_u + w (x0_c - x0_u) (affine in eps and x0)
    torch.testing.assert_close(den.guided(3.0)(x, t, **cond), x0_u + 3.0 * (x0_c - x0_u), rtol=0, atol=1e-8)


def test_samplers_run_on_the_text_guided_denoiser():
    from diffusekit.core import CountingDenoiser, make_grid, prior_sample
    from diffusekit.methods.text_conditioning import text_to_image
    from diffusekit.samplers import get_sampler

    den = _tiny_text_model()
    x = text_to_image(den, CAPTIONS, guidance=3.0, steps=4, seed=0)
    assert x.shape == (3, 3, 8, 8) and torch.isfinite(x).all() and x.abs().max() <= 1
    torch.testing.assert_close(text_to_image(den, CAPTIONS[:1], guidance=3.0, steps=4, seed=0), x[:1])
    ts = make_grid("trailing", den.schedule, 5)
    x_T = prior_sample(den.schedule, (3, 3, 8, 8), torch.Generator().manual_seed(0))
    for name in ("ddim", "dpm_solver_pp_2m", "heun"):
        counting = CountingDenoiser(den.guided(2.0, rescale=0.5))
        with torch.no_grad():
            out = get_sampler(name).fn(counting, x_T, ts, cond=den.condition(CAPTIONS))
        assert out.shape == x_T.shape and torch.isfinite(out).all() and counting.calls >= 4


def test_text_loss_drops_captions_to_the_null_caption():
    from diffusekit.core import VPDiscrete
    from diffusekit.methods.text_conditioning import TextDiffusionLoss

    den = _tiny_text_model()
    loss = TextDiffusionLoss(VPDiscrete.named("linear", 1000), den.text_encoder, den.tokenizer, caption_dropout=0.5)
    tokens, mask = den.tokenizer.encode(CAPTIONS * 40)
    dropped_tokens, dropped_mask = loss.drop_captions(tokens, mask, torch.Generator().manual_seed(0))
    dropped = (dropped_tokens != tokens).any(1)
    assert 30 < int(dropped.sum()) < 90  # Binomial(120, 0.5)
    null_tokens, null_mask = den.tokenizer.encode([""], max_len=tokens.shape[1])
    assert (dropped_tokens[dropped] == null_tokens).all() and (dropped_mask[dropped] == null_mask).all()
    assert (dropped_tokens[~dropped] == tokens[~dropped]).all()
    x0 = torch.rand(120, 3, 8, 8) * 2 - 1
    per_example = loss(den.net, (x0, tokens, mask), torch.Generator().manual_seed(1))
    assert per_example.shape == (120,) and torch.isfinite(per_example).all()
    # per-example generators: example i's draws do not depend on the rest of the batch
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(4)]  # noqa: E731
    a = loss(den.net, (x0[:4], tokens[:4], mask[:4]), gens())
    b = loss(den.net, (x0[:4], tokens[:4], mask[:4]), gens())
    torch.testing.assert_close(a, b)
    # the encoder stays frozen: no gradient reaches it
    per_example.mean().backward()
    assert all(p.grad is None for p in den.text_encoder.parameters())
    assert any(p.grad is not None for p in den.net.parameters())


# --- the judge and the quick bench (zoo assets) -----------------------------------------------------------------


def test_zoo_judge_reads_real_images_as_its_manifest_says():
    from diffusekit.data.captioned import make_captioned_digits
    from diffusekit.zoo.recipes_t2i import AttributeClassifier, attribute_accuracy, predict_attributes

    judge = zoo.load("captions_judge")
    assert isinstance(judge, AttributeClassifier)
    meta = zoo.manifest("captions_judge")["metrics"]
    for split in ("test", "heldout"):
        data = make_captioned_digits(split, n=200, seed=3)
        acc = attribute_accuracy(predict_attributes(judge, data.images), data.attributes)
        # 200 images: binomial sd of all-correct <= 0.035 around the manifest's 2000 / 1000-image figure
        assert acc["all_correct"] > meta[split]["all_correct"] - 0.1
        assert acc["colour"] > 0.95 and acc["layout"] > 0.95
    # a shuffled request is mostly wrong: the judge compares with what was asked, not with the image
    perm = torch.roll(torch.arange(200), 1)
    shuffled = {k: v[perm] for k, v in data.attributes.items()}
    assert attribute_accuracy(predict_attributes(judge, data.images), shuffled)["all_correct"] < 0.2


def test_quick_bench_guidance_makes_images_follow_their_captions(tmp_path):
    """On the zoo's captions_unet: judged against the captions, guided samples (w = 3) show the requested layout
    and colours far more often than the null caption's samples (what the captions get by chance), and more often
    than w = 1, on seen and on held-out caption combinations alike."""
    from diffusekit.bench import run_bench

    result = run_bench("clip", out=tmp_path, quick=True)
    assert (tmp_path / "clip.json").exists() and (tmp_path / "clip.png").exists()
    table = result["text_to_image"]["table"]
    for name in ("seen", "heldout"):
        null, w3 = table[name]["null"], table[name]["w=3"]
        assert w3["layout"] > null["layout"] + 0.25
        assert w3["colour"] > null["colour"] + 0.15
        assert w3["thickness"] > null["thickness"] + 0.1
    pooled = {w: sum(table[name][w]["colour"] + table[name][w]["layout"] for name in ("seen", "heldout"))
              for w in ("w=1", "w=3")}
    assert pooled["w=3"] > pooled["w=1"]
    real = result["text_to_image"]["real_images"]
    assert all(real[name]["all_correct"] > 0.9 for name in real)  # the judge reads real captioned images
    if result["clip"] is not None:  # zoo captions_clip present: far above chance (1/7 colour, 1/100 recall@1)
        for split in ("test", "heldout"):
            assert result["clip"][split]["zero_shot_colour"] > 0.5
            assert result["clip"][split]["text_to_image@1"] > 0.3
        for name in ("seen", "heldout"):
            assert table[name]["w=3"]["clip_score"] > table[name]["null"]["clip_score"] + 20


def test_captions_unet_recipe_rebuilds_quick_and_loads(tmp_path):
    import shutil

    from diffusekit.methods.text_conditioning import TextConditionedDenoiser
    from diffusekit.zoo.build import build

    for suffix in (".json", ".safetensors"):
        shutil.copy(zoo.ASSETS_DIR / f"captions_judge{suffix}", tmp_path)
    meta = build(["captions_unet"], quick=True, assets_dir=tmp_path, progress=False)["captions_unet"]
    assert meta["training_steps"] == 4 and meta["text"]["frozen"] and meta["net"]["context_dim"] == 64
    den = zoo.load("captions_unet", assets_dir=tmp_path)
    assert isinstance(den, TextConditionedDenoiser)
    shipped = zoo.load("captions_unet")
    # the recipe's frozen encoder is the shipped one (same seeded initialisation)
    for (k, a), (_, b) in zip(den.text_encoder.state_dict().items(), shipped.text_encoder.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
