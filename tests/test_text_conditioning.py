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
