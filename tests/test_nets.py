"""Tests for diffusekit.nets: shapes, conditioning, config round trip, validation, gradients."""

import json

import pytest
import torch

from diffusekit.nets import MLPDenoiserNet, UNet, build_net, count_parameters, timestep_embedding


def _unzero_output(net: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised output layer random weights so inputs reach the output."""
    g = torch.Generator().manual_seed(seed)
    last = net.conv_out if isinstance(net, UNet) else net.out
    with torch.no_grad():
        last.weight.copy_(0.1 * torch.randn(last.weight.shape, generator=g))
        last.bias.copy_(0.1 * torch.randn(last.bias.shape, generator=g))


def _small_unet(**kw) -> UNet:
    cfg = dict(in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
               num_heads=2)
    cfg.update(kw)
    torch.manual_seed(0)
    return UNet(**cfg)


# ----------------------------------------------------------------------------- embedding


def test_timestep_embedding_values():
    t = torch.tensor([0.0, 1.0, -1500.0, 2000.0])
    e = timestep_embedding(t, 16)
    assert e.shape == (4, 16)
    assert torch.allclose(e[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    # first frequency is 1: cos(t), sin(t); last frequency is 10000**(-7/8)
    assert torch.allclose(e[:, 0], torch.cos(t), atol=1e-5)
    assert torch.allclose(e[:, 8], torch.sin(t), atol=1e-5)
    w = 10000.0 ** (-7 / 8)
    assert torch.allclose(e[:, 7], torch.cos(t * w), atol=1e-4)
    assert timestep_embedding(t, 7).shape == (4, 7)
    assert torch.isfinite(e).all()


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("num_classes", [None, 5])
def test_mlp_shapes_and_zero_init(num_classes):
    torch.manual_seed(0)
    net = MLPDenoiserNet(3, hidden=32, depth=2, time_embed_dim=16, num_classes=num_classes)
    x = torch.randn(7, 3)
    y = net(x, torch.rand(7) * 1000)
    assert y.shape == x.shape
    assert torch.all(y == 0)  # zero-initialised output layer
    _unzero_output(net)
    assert net(x, 500.0).shape == x.shape  # scalar time broadcast


@pytest.mark.parametrize(
    "shape, kw",
    [
        ((3, 1, 8, 8), dict()),
        ((2, 3, 16, 16), dict(in_channels=3, image_size=16, attention_resolutions=(8,))),
        ((2, 3, 32, 32), dict(in_channels=3, image_size=32, channel_mult=(1, 2, 2), attention_resolutions=(8,))),
        ((2, 3, 12, 20), dict(in_channels=3, attention_resolutions=())),  # no attention: any divisible size
        ((2, 2, 32), dict(in_channels=2, dims=1, image_size=32, attention_resolutions=(16,))),
        ((2, 1, 128), dict(dims=1, image_size=128, channel_mult=(1, 2, 2, 2), attention_resolutions=(16,))),
        ((2, 1, 48), dict(dims=1, attention_resolutions=(), num_res_blocks=2)),
    ],
)
def test_unet_shapes(shape, kw):
    net = _small_unet(**kw)
    x = torch.randn(shape)
    out = net(x, torch.rand(shape[0]) * 1000)
    assert out.shape == x.shape
    assert torch.all(out == 0)  # zero-initialised final conv
    _unzero_output(net)
    out = net(x, torch.rand(shape[0]) * 1000)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().sum() > 0


def test_unet_out_channels():
    net = _small_unet(in_channels=3, out_channels=6, image_size=8)
    assert net(torch.randn(2, 3, 8, 8), 10.0).shape == (2, 6, 8, 8)


def test_time_input_matters_and_scalar_broadcast():
    net = _small_unet()
    _unzero_output(net)
    x = torch.randn(4, 1, 8, 8)
    a = net(x, torch.full((4,), 100.0))
    assert torch.allclose(a, net(x, 100.0))
    assert torch.allclose(a, net(x, torch.tensor(100.0)))
    assert torch.allclose(a, net(x, torch.tensor([100.0])))
    assert not torch.allclose(a, net(x, torch.full((4,), -1500.0)))


# ----------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_class_labels_change_output(kind):
    if kind == "mlp":
        torch.manual_seed(0)
        net = MLPDenoiserNet(2, hidden=32, depth=2, num_classes=4)
        x = torch.randn(5, 2)
    else:
        net = _small_unet(num_classes=4)
        x = torch.randn(5, 1, 8, 8)
    t = torch.rand(5) * 1000
    null = torch.full((5,), 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    # zero-initialised output: all labels give identical (zero) outputs before training
    assert torch.equal(net(x, t, labels), net(x, t, null))
    _unzero_output(net)
    out_null = net(x, t, null)
    assert torch.allclose(net(x, t), out_null)  # None means all-null
    out_lab = net(x, t, labels)
    assert not torch.allclose(out_lab, out_null)
    # each sample depends only on its own label
    out_0 = net(x, t, torch.zeros(5, dtype=torch.long))
    assert torch.allclose(out_0[0], out_lab[0]) and torch.allclose(out_0[4], out_lab[4])
    assert not torch.allclose(out_0[1], out_lab[1])


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("kind", ["mlp", "unet", "unet1d"])
def test_build_net_round_trip(kind):
    if kind == "mlp":
        net = MLPDenoiserNet(4, hidden=32, depth=3, time_embed_dim=8, num_classes=3)
        x = torch.randn(6, 4)
    elif kind == "unet":
        net = _small_unet(num_classes=3, dropout=0.1)
        x = torch.randn(6, 1, 8, 8)
    else:
        net = _small_unet(dims=1, in_channels=2, image_size=16, attention_resolutions=(8,), num_classes=3)
        x = torch.randn(6, 2, 16)
    _unzero_output(net)
    config = json.loads(json.dumps(net.config))  # JSON-serialisable
    assert config["name"] == ("mlp" if kind == "mlp" else "unet")
    clone = build_net(config)
    assert type(clone) is type(net) and clone.config == net.config
    clone.load_state_dict(net.state_dict())
    net.eval()
    clone.eval()
    t = torch.rand(6) * 1000
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.equal(net(x, t, labels), clone(x, t, labels))
    assert count_parameters(clone) == count_parameters(net) > 0


def test_build_net_errors():
    with pytest.raises(ValueError, match="mlp"):
        build_net({"name": "transformer"})
    with pytest.raises(ValueError):
        build_net({"dim": 2})


def test_count_parameters():
    lin = torch.nn.Linear(3, 4)
    assert count_parameters(lin) == 16
    lin.bias.requires_grad_(False)
    assert count_parameters(lin, trainable_only=True) == 12


# ----------------------------------------------------------------------------- validation


def test_bad_labels():
    net = _small_unet(num_classes=3)
    x, t = torch.randn(2, 1, 8, 8), torch.ones(2)
    for bad in (torch.tensor([0, 4]), torch.tensor([-1, 0]), torch.tensor([0.0, 1.0]), torch.tensor([0, 1, 2])):
        with pytest.raises(ValueError):
            net(x, t, bad)
    net(x, t, torch.tensor([3, 3]))  # the null class is allowed
    uncond = _small_unet()
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, torch.tensor([0, 1]))
    mlp = MLPDenoiserNet(2, hidden=8, depth=1, num_classes=2)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        mlp(torch.randn(2, 2), t, torch.tensor([0, 3]))


def test_bad_shapes():
    net = _small_unet(attention_resolutions=())
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(2, 1, 7, 8), torch.ones(2))
    with pytest.raises(ValueError, match="channels"):
        net(torch.randn(2, 3, 8, 8), torch.ones(2))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(2, 1, 8), torch.ones(2))
    with pytest.raises(ValueError, match="t must"):
        net(torch.randn(2, 1, 8, 8), torch.ones(3))
    with pytest.raises(ValueError, match="divisible"):
        _small_unet(dims=1, attention_resolutions=(), channel_mult=(1, 2, 2))(torch.randn(2, 1, 10), 1.0)
    attn = _small_unet()  # image_size=8, attention at 4
    with pytest.raises(ValueError, match="image_size"):
        attn(torch.randn(2, 1, 16, 16), torch.ones(2))
    mlp = MLPDenoiserNet(3, hidden=8, depth=1)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        mlp(torch.randn(2, 4), torch.ones(2))


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="attention_resolutions"):
        UNet(image_size=16, attention_resolutions=(4,))
    with pytest.raises(ValueError, match="num_heads"):
        UNet(base_channels=32, num_heads=5)
    with pytest.raises(ValueError, match="dims"):
        UNet(dims=3)
    with pytest.raises(ValueError, match="image_size"):
        UNet(image_size=6, channel_mult=(1, 2, 2), attention_resolutions=())
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(channel_mult=())
    with pytest.raises(ValueError, match="dropout"):
        UNet(dropout=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        MLPDenoiserNet(2, num_classes=0)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("kind", ["mlp", "unet2d", "unet1d"])
def test_gradients_reach_all_parameters(kind):
    if kind == "mlp":
        torch.manual_seed(0)
        net = MLPDenoiserNet(2, hidden=16, depth=2, num_classes=3)
        x = torch.randn(8, 2)
    elif kind == "unet2d":
        net = _small_unet(num_classes=3, num_res_blocks=2)
        x = torch.randn(8, 1, 8, 8)
    else:
        net = _small_unet(num_classes=3, dims=1, image_size=16, attention_resolutions=(16, 8))
        x = torch.randn(8, 1, 16)
    _unzero_output(net)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # includes the null class
    loss = (net(x, torch.rand(8) * 1000, labels) - x).square().mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_zero_init_still_trains_output_layer():
    """With the zero final layer, only it gets a gradient at first; one step unzeroes it."""
    net = _small_unet()
    x = torch.randn(4, 1, 8, 8)
    (net(x, torch.ones(4)) - x).square().mean().backward()
    assert net.conv_out.weight.grad.abs().sum() > 0
    assert net.conv_in.weight.grad.abs().sum() == 0


def test_recipe_nets_and_the_shipped_digits_asset():
    """The shipped digits_unet keeps its config and state-dict layout; the demo net is the small, attention-free one."""
    from diffusekit import zoo
    from diffusekit.nets.unet import AttentionBlock
    from diffusekit.zoo.recipes import DEMO_NET, DIGITS_NET

    state, meta = zoo.load_state("digits_unet")
    assert meta["net"] == DIGITS_NET
    built = build_net(meta["net"]).state_dict()
    assert {k: tuple(v.shape) for k, v in built.items()} == {k: tuple(v.shape) for k, v in state.items()}
    demo = build_net(DEMO_NET)
    assert not any(isinstance(m, AttentionBlock) for m in demo.modules())
    assert count_parameters(demo) < count_parameters(build_net(DIGITS_NET)) / 3
