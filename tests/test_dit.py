"""DiT backbone: the denoiser contract, exact patch round trip, DTR routing, cross-attention masking."""

import pytest
import torch
import torch.nn.functional as F

from diffusekit.core import NetworkDenoiser, grid_logsnr, prior_sample, schedule_from_config
from diffusekit.nets import build_net, count_parameters
from diffusekit.nets.dit import DiT, dtr_channel_mask, sincos_positions
from diffusekit.samplers import DEFAULT, sample

torch.set_num_threads(1)


def _randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers random weights so that every path of the net contributes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


def test_untrained_dit_outputs_zero_and_config_round_trips():
    net = DiT(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(net(x, torch.full((4,), 500.0), class_labels=torch.arange(4)), torch.zeros_like(x))
    clone = build_net(net.config)
    clone.load_state_dict(_randomise(net).state_dict(), strict=True)
    assert torch.equal(clone(x, 3.0), net(x, 3.0))
    assert count_parameters(net) == count_parameters(clone)


@pytest.mark.parametrize("dims,size,patch,channels", [(2, 8, 2, 1), (2, 12, 4, 3), (1, 16, 4, 2)])
def test_unpatchify_inverts_patch_extraction(dims, size, patch, channels):
    net = DiT(in_channels=channels, image_size=size, patch_size=patch, hidden_size=16, depth=1, num_heads=2,
              dims=dims)
    x = torch.randn(2, channels, *([size] * dims))
    if dims == 2:  # row-major patches with (row-in-patch, col-in-patch, channel) inside each patch
        tokens = x.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, C, g, g, p, p)
        tokens = tokens.permute(0, 2, 3, 4, 5, 1).reshape(2, net.num_tokens, -1)
    else:
        tokens = x.unfold(2, patch, patch).permute(0, 2, 3, 1).reshape(2, net.num_tokens, -1)
    assert torch.equal(net.unpatchify(tokens), x)


def test_sincos_positions_are_distinct_and_bounded():
    table = sincos_positions(4, 32, 2)
    assert table.shape == (16, 32) and table.abs().max() <= 1.0
    assert torch.cdist(table, table).add(torch.eye(16) * 10).min() > 0.1  # no two positions coincide
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(4, 30, 2)


def test_dtr_mask_matches_the_paper_offsets():
    """C = 1024, beta = 0.8, alpha = 4: starts 0 (t <= ~220), 13 (t = 500), 65 (t = 750), 205 (t = 999), i.e. the
    official table round(linspace(0, 1, T) ** alpha * (C - w))."""
    t = torch.tensor([0.0, 200.0, 500.0, 750.0, 999.0])
    mask = dtr_channel_mask(t, 1024, 0.8, 4.0, 1000)
    assert torch.equal(mask.sum(1), torch.full((5,), 819.0))
    starts = mask.argmax(1).tolist()
    assert starts == [0, 0, 13, 65, 205]
    # contiguous active window
    for row, s in zip(mask, starts):
        assert torch.equal(row.nonzero().flatten(), torch.arange(s, s + 819))


def test_dtr_beta_one_is_exactly_the_plain_dit():
    base = _randomise(DiT(image_size=8, patch_size=2, hidden_size=32, depth=3, num_heads=4, num_classes=10))
    routed = DiT(image_size=8, patch_size=2, hidden_size=32, depth=3, num_heads=4, num_classes=10, dtr_beta=1.0)
    routed.load_state_dict(base.state_dict(), strict=True)
    x, t, y = torch.randn(5, 1, 8, 8), torch.tensor([0.0, 10.0, 400.0, 800.0, 999.0]), torch.arange(5)
    assert torch.equal(routed(x, t, class_labels=y), base(x, t, class_labels=y))
    partial = DiT(image_size=8, patch_size=2, hidden_size=32, depth=3, num_heads=4, num_classes=10, dtr_beta=0.5)
    partial.load_state_dict(base.state_dict(), strict=True)
    assert not torch.allclose(partial(x, t, class_labels=y), base(x, t, class_labels=y))


def test_dtr_block_only_reads_active_channels():
    """out = x + Delta(x * m): changing inactive input channels changes the output only by the same change."""
    net = _randomise(DiT(image_size=8, patch_size=2, hidden_size=16, depth=1, num_heads=2, dtr_beta=0.5))
    block = net.blocks[0]
    t = torch.tensor([999.0])
    mask = net.routing_mask(t)
    c = net.condition(t)
    h = torch.randn(1, 16, 16)
    bump = torch.randn(1, 16, 16) * (1 - mask)[:, None, :]
    delta = block(h + bump, c, channel_mask=mask) - block(h, c, channel_mask=mask)
    assert torch.allclose(delta, bump, atol=1e-6)


def test_cross_attention_ignores_masked_context_tokens_and_is_required():
    net = _randomise(DiT(in_channels=3, image_size=8, patch_size=4, hidden_size=16, depth=2, num_heads=2,
                         context_dim=8))
    x, context = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = net(x, 100.0, context=context, context_mask=mask)
    changed = context.clone()
    changed[0, 3:] = torch.randn(2, 8) * 100
    assert torch.allclose(net(x, 100.0, context=changed, context_mask=mask), out, atol=1e-6)
    truncated = net(x[:1], 100.0, context=context[:1, :3], context_mask=mask[:1, :3])
    assert torch.allclose(truncated, out[:1], atol=1e-5)
    with pytest.raises(ValueError, match="text-conditional"):
        net(x, 100.0)
    with pytest.raises(ValueError, match="at least one"):
        net(x, 100.0, context=context, context_mask=torch.zeros(2, 5, dtype=torch.bool))


def test_patch_tokens_attend_globally_and_positions_matter():
    """A pixel change in one patch changes the output of a far patch (global attention); positions break
    permutation equivariance."""
    net = _randomise(DiT(image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4))
    x = torch.randn(1, 1, 8, 8)
    y = x.clone()
    y[..., 0, 0] += 1.0
    diff = (net(y, 10.0) - net(x, 10.0)).abs()
    assert diff[..., 6:, 6:].max() > 1e-4
    flipped = net(x.flip(-1), 10.0).flip(-1)
    assert not torch.allclose(flipped, net(x, 10.0), atol=1e-4)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        DiT(image_size=9, patch_size=2)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiT(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="dtr_beta"):
        DiT(dtr_beta=1.5)
    net = DiT(image_size=8, patch_size=2, hidden_size=16, depth=1, num_heads=2)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        net(torch.randn(2, 1, 16, 16), 1.0)
    with pytest.raises(ValueError, match="no cross-attention"):
        net(torch.randn(2, 1, 8, 8), 1.0, context=torch.randn(2, 3, 4))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm_solver_pp_2m", "heun", DEFAULT["sampler"]])
def test_samplers_run_on_a_dit_denoiser(sampler):
    net = _randomise(DiT(image_size=8, patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=10)).eval()
    denoiser = NetworkDenoiser(net, schedule_from_config({"name": "vp_discrete", "beta_schedule": "linear",
                                                          "num_train_timesteps": 1000}), "eps")
    x = prior_sample(denoiser.schedule, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = sample(sampler, denoiser, x, grid_logsnr(denoiser.schedule, 4),
                     cond={"class_labels": torch.tensor([1, 2, 3])}, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_dit_learns_a_denoising_task_quickly():
    """Twenty Adam steps on a fixed batch lower the eps-prediction error: gradients reach every block."""
    torch.manual_seed(0)
    net = DiT(image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10)
    x0 = torch.randn(16, 1, 8, 8).clamp(-1, 1)
    noise = torch.randn_like(x0)
    xt = 0.6 * x0 + 0.8 * noise
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = F.mse_loss(net(xt, 400.0, class_labels=torch.arange(16) % 10), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is not None for p in net.blocks[-1].parameters())


def test_train_and_sample_a_dit_from_the_cli(tmp_path):
    """`diffusekit train --net dit` fills the data shape into the DiT config (images and 1-D signals) and the
    checkpoint samples with the default sampler."""
    from diffusekit.cli import main
    from diffusekit.train_cli import default_net

    assert main(["train", "--data", "digits", "--net", "dit", "--conditional", "--steps", "2", "--batch-size", "8",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["sample", "--model", str(tmp_path / "run"), "--count", "4", "--steps", "2",
                 "--out", str(tmp_path / "s.png"), "--no-progress"]) == 0
    assert (tmp_path / "s.png").exists()
    signal = default_net((10, 2, 16), None, {"name": "dit", "patch_size": 4})
    assert signal["dims"] == 1 and signal["image_size"] == 16 and signal["in_channels"] == 2
    assert build_net(signal)(torch.randn(3, 2, 16), 5.0).shape == (3, 2, 16)


def test_zoo_digits_dit_is_a_working_class_conditional_model():
    """The shipped digits DiT: a DiT behind the NetworkDenoiser contract whose manifest records class accuracy >= 0.9
    (the recipe's bar), and whose samples of a few classes are recognised by the digits classifier."""
    from diffusekit import zoo
    from diffusekit.metrics import class_accuracy
    from diffusekit.zoo.recipes import sample_digits

    den = zoo.load("digits_dit")
    assert isinstance(den.net, DiT) and den.num_classes == 10
    meta = zoo.manifest("digits_dit")
    assert meta["metrics"]["guidance_1_default_sampler"]["class_accuracy"] >= 0.9
    labels = torch.arange(10).repeat_interleave(3)
    x = sample_digits(den, labels, guidance=1.0, solver="default", seed=1)
    assert class_accuracy(x, labels, classifier=zoo.load("digits_classifier")) >= 0.8
