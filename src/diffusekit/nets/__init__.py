"""Denoiser networks: ``forward(x, t, class_labels=None)`` with network time ``t`` of shape (B,).

Every net keeps its constructor arguments in ``net.config`` (JSON-serialisable, with a
``"name"`` key) so that ``build_net(net.config)`` rebuilds the same architecture.
"""

from __future__ import annotations

from torch import nn

from .diffusers_backbones import DiffusersDiT, DiffusersUNet2D
from .dit import DiT
from .mode import MoDE
from .embedding import TimeClassEmbedding, timestep_embedding
from .mlp import MLPDenoiserNet
from .unet import ScaledDotProductAttention, UNet

__all__ = [
    "MLPDenoiserNet",
    "UNet",
    "DiT",
    "MoDE",
    "ScaledDotProductAttention",
    "NETS",
    "build_net",
    "count_parameters",
    "timestep_embedding",
    "TimeClassEmbedding",
]

NETS: dict[str, type[nn.Module]] = {"mlp": MLPDenoiserNet, "unet": UNet, "dit": DiT, "mode": MoDE}
NETS.update({"diffusers_unet2d": DiffusersUNet2D, "diffusers_dit": DiffusersDiT})  # diffusers imported when built


def build_net(config: dict) -> nn.Module:
    """Rebuild a network from its ``config`` dict (``{"name": ..., **constructor_kwargs}``).

    Raises ValueError if ``config`` is not a dict with a known ``"name"``.
    """
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"config must be a dict with a 'name' key (one of {sorted(NETS)}), got {config!r}")
    name = config["name"]
    if name not in NETS:
        raise ValueError(f"unknown net name {name!r}; known names: {sorted(NETS)}")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    return NETS[name](**kwargs)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Total number of scalar parameters (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
