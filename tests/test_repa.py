"""REPA (Yu et al. 2024, arXiv 2410.06940): loss invariants, frozen encoder, hook, target grid, quick bench."""

import pytest
import torch

from diffusekit import zoo
from diffusekit.data import load_dataset
from diffusekit.methods.repa import (ClassifierPatchEncoder, REPALoss, REPAModel, capture_block_output,
                                     features_on_token_grid, negative_cosine_alignment, save_repa_denoiser, sit_loss,
                                     train_denoising_autoencoder)
from diffusekit.nets.dit import DiT
from diffusekit.training import TrainConfig, Trainer

NET = {"in_channels": 1, "image_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 4, "num_heads": 4,
       "num_classes": 10}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train")


@pytest.fixture(scope="module")
def encoder():
    return ClassifierPatchEncoder(zoo.load("digits_classifier"))


def _model(depth=2, seed=0, z_dim=64):
    torch.manual_seed(seed)
    net = DiT(**NET)
    # adaLN-Zero starts every block as the identity; perturb so blocks differ and gradients reach every layer
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return REPAModel(net, depth, z_dim)


def _grads(module):
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in module.named_parameters()}


def test_lambda_zero_is_exactly_the_base_loss_and_gradients(digits, encoder):
    batch = (digits.x[:16], digits.y[:16])
    model = _model()
    base = sit_loss(label_dropout=0.1)
    out = {}
    for name, fn in (("base", base), ("repa0", REPALoss(encoder, weight=0.0, base_loss=base))):
        model.zero_grad(set_to_none=True)
        loss = fn(model, batch, torch.Generator().manual_seed(3))
        loss.mean().backward()
        out[name] = (loss.detach(), _grads(model.net), _grads(model.projector))
    assert torch.equal(out["base"][0], out["repa0"][0])
    for n, g in out["base"][1].items():
        assert torch.equal(g, out["repa0"][1][n]), n
    assert all(g is None for g in out["repa0"][2].values())  # lambda = 0: the projector is not trained

    # lambda > 0: the same draws give the same diffusion term; the difference is lambda * L_proj of h^(2)
    repa = REPALoss(encoder, weight=0.5, base_loss=base)
    total = repa(model, batch, torch.Generator().manual_seed(3)).detach()
    with capture_block_output(model.net, 2) as store:
        diffusion = base(model, batch, torch.Generator().manual_seed(3)).detach()
    y = repa.targets(batch[0], (4, 4))
    proj = negative_cosine_alignment(model.projector(store["h"]), y).detach()
    torch.testing.assert_close(diffusion, out["base"][0])
    torch.testing.assert_close(total, diffusion + 0.5 * proj, rtol=1e-6, atol=1e-7)


def test_projector_and_dit_learn_the_encoder_stays_frozen(digits, encoder):
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = _model()
    loss = REPALoss(encoder, weight=1.0)
    loss(model, (digits.x[:16], digits.y[:16]), torch.Generator().manual_seed(0)).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    assert model.net.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    # a few Trainer steps: the projector's weights move and the encoder's do not; the alignment improves
    model = _model()
    p0 = [p.detach().clone() for p in model.projector.parameters()]
    cfg = TrainConfig(steps=30, batch_size=32, lr=3e-3, warmup_steps=0, ema_decay=0.9, seed=0, progress=False,
                      log_every=30)
    x, y = digits.x[:256], digits.y[:256]
    first = REPALoss(encoder, weight=1.0)
    first(model, (x[:64], y[:64]), torch.Generator().manual_seed(9))
    cos_before = -first.last["proj"]
    trainer = Trainer(model, loss, (x, y), cfg)
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(p0, model.projector.parameters()))
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    first(model, (x[:64], y[:64]), torch.Generator().manual_seed(9))
    assert -first.last["proj"] > cos_before + 0.1, (cos_before, -first.last["proj"])
    # the EMA copy carries the projector too; the denoiser itself is model.net
    assert isinstance(trainer.ema_model, REPAModel)


def test_targets_sit_on_the_token_grid(digits, encoder):
    x = digits.x[:5]
    feats = encoder(x)
    assert feats.shape == (5, 64, 4, 4)
    model = _model()
    y = REPALoss(encoder).targets(x, (model.net.grid_size,) * 2)
    assert y.shape == (5, model.net.num_tokens, 64)
    # pooling a finer map averages each 2 x 2 block; tokens are row-major like the DiT's patchify
    fine = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)
    tok = features_on_token_grid(fine, (4, 4))
    assert tok.shape == (1, 16, 2)
    r, c = 1, 2  # token 6
    torch.testing.assert_close(tok[0, r * 4 + c], fine[0, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mean((-1, -2)))
    patches = model.net.patch.weight.new_zeros(1, 1, 8, 8)
    patches[0, 0, 2 * r, 2 * c] = 1.0  # a pixel inside patch (r, c) changes only token r * 4 + c
    diff = (model.net.embed_tokens(patches) - model.net.embed_tokens(torch.zeros_like(patches))).abs().sum(-1)[0]
    assert diff.argmax().item() == r * 4 + c and (diff > 0).sum().item() == 1
    # the denoising-AE encoder also gives a 4 x 4 map
    dae = train_denoising_autoencoder(digits.x[:256], steps=5, seed=0)
    assert dae(x).shape == (5, dae.feature_dim, 4, 4)
    assert all(not p.requires_grad for p in dae.parameters())


def test_cosine_alignment_bounds():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 16, 12, generator=g), torch.randn(8, 16, 12, generator=g)
    v = negative_cosine_alignment(a, b)
    assert v.shape == (8,) and bool((v >= -1).all() and (v <= 1).all())
    torch.testing.assert_close(negative_cosine_alignment(a, 3.0 * a), -torch.ones(8))
    torch.testing.assert_close(negative_cosine_alignment(a, -a), torch.ones(8))
    with pytest.raises(ValueError):
        negative_cosine_alignment(a, b[:, :4])


@pytest.mark.parametrize("depth", [1, 3])
def test_hook_captures_the_output_of_block_k(digits, depth):
    net = _model(depth).net.eval()
    x, labels = digits.x[:6], digits.y[:6]
    t = torch.linspace(50.0, 950.0, 6)
    with capture_block_output(net, depth) as store:
        net(x, t, class_labels=labels)
    with torch.no_grad():
        c = net.condition(t, labels)
        h = net.embed_tokens(x)
        for block in net.blocks[:depth]:
            h = block(h, c, None, None, net.routing_mask(t))
        h_next = net.blocks[depth](h, c, None, None, None)
    torch.testing.assert_close(store["h"], h)
    assert not torch.allclose(store["h"], h_next)
    assert not net.blocks[depth - 1]._forward_hooks  # removed on exit
    with pytest.raises(ValueError, match="encoder depth"):
        REPAModel(net, 5, 8)
    with pytest.raises(ValueError):
        REPALoss(torch.nn.Identity(), weight=-1.0)


def test_saved_denoiser_drops_the_projector_and_loads_for_sampling(tmp_path):
    from diffusekit.training.checkpoint import load_checkpoint, load_inference_net

    model = _model()
    save_repa_denoiser(tmp_path / "ckpt", model, model, step=3)
    tensors, meta = load_checkpoint(tmp_path / "ckpt")
    assert not any("projector" in k for k in tensors)
    net = load_inference_net(tensors, meta, "test")
    x = torch.zeros(2, 1, 8, 8)
    torch.testing.assert_close(net(x, torch.ones(2) * 500, class_labels=torch.tensor([1, 2])),
                               model.net.eval()(x, torch.ones(2) * 500, class_labels=torch.tensor([1, 2])))


def test_clip_encoder_reads_the_patches_over_the_digit(digits):
    from diffusekit.methods.repa import CLIPPatchEncoder
    from diffusekit.nets.clip import CLIPModel

    torch.manual_seed(0)
    enc = CLIPPatchEncoder(CLIPModel())
    x = digits.x[:3]
    rgb = enc.render(x)
    assert rgb.shape == (3, 3, 24, 24)
    inside = torch.zeros(24, 24, dtype=torch.bool)
    inside[6:18, 6:18] = True
    assert bool((rgb[:, :, ~inside] == -1).all()) and rgb[:, :, inside].max() > 0  # a digit centred on black
    feats = enc(x)
    assert feats.shape == (3, enc.feature_dim, 4, 4)
    full = enc.clip.image_patch_features(rgb).transpose(1, 2).reshape(3, -1, 6, 6)
    torch.testing.assert_close(feats, full[:, :, 1:5, 1:5])
    assert all(not p.requires_grad for p in enc.parameters())


def test_quick_bench_repa_beats_the_baseline_at_equal_steps(tmp_path):
    from diffusekit.bench import run_bench

    torch.set_num_threads(1)
    arms = run_bench("repa", out=tmp_path, quick=True)["arms"]
    base, repa = arms["baseline"], arms["lam0.5_k2"]
    assert base["steps"] == repa["steps"] and len(base["steps"]) >= 2
    # same steps, data order, noise and initialisation: the aligned SiT's samples are closer to the test digits and
    # its block-2 tokens carry more class information (linear probe on noisy inputs at t = 0.5)
    assert repa["digits_fd"][-1] < base["digits_fd"][-1], (repa["digits_fd"], base["digits_fd"])
    assert repa["linear_probe"] > base["linear_probe"], (repa["linear_probe"], base["linear_probe"])
    assert (tmp_path / "repa.png").is_file()
