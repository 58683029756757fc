"""diffusers' own networks as selectable backbones: ``diffusekit train --net diffusers_unet2d`` (or ``diffusers_dit``).

Each wrapper keeps our contract ``forward(x, t, class_labels=None)`` (t: network time, shape (B,) or scalar)
and a JSON ``config`` with a ``"name"`` key, and holds the diffusers model as ``.model`` so that exporting a
trained network is a plain ``model.save_pretrained`` (``diffusekit.interop.export``). The network time our
discrete VP schedule passes (n = tN - 1, the integer train step) is exactly diffusers' ``timestep``, so an
exported model gives the same output in a diffusers pipeline.

* ``DiffusersUNet2D``: diffusers' ``UNet2DModel`` (the DDPM UNet of Ho et al. 2020, arXiv 2006.11239, with
  residual blocks, group norm and optional self-attention at the lowest resolution).
* ``DiffusersDiT``: diffusers' ``DiTTransformer2DModel`` (Peebles & Xie 2023, arXiv 2212.09748: patchified
  transformer with adaLN-Zero conditioning on time and class).

Class conditioning uses our convention: ``num_classes`` real classes plus a null class at index
``num_classes`` (classifier-free guidance); ``class_labels=None`` means the null class. diffusers is
imported when a backbone is built, not when ``diffusekit.nets`` is imported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _labels(class_labels, num_classes: int | None, x: torch.Tensor, *, always: bool) -> torch.Tensor | None:
    """class_labels as (B,) long, None -> the null class (index num_classes), or None for an unconditional net
    that takes no labels (``always=False``)."""
    if num_classes is None and not always:
        if class_labels is not None:
            raise ValueError("this network is unconditional: it takes no class labels")
        return None
    null = 0 if num_classes is None else num_classes
    if class_labels is None:
        return torch.full((x.shape[0],), null, dtype=torch.long, device=x.device)
    return torch.as_tensor(class_labels, device=x.device).long().expand(x.shape[0])


def _time(t, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device)
    return t.reshape(1).expand(x.shape[0]) if t.ndim == 0 else t


class DiffusersUNet2D(nn.Module):
    """diffusers' ``UNet2DModel`` behind our ``forward(x, t, class_labels=None)``.

    Args: in_channels, out_channels (default in_channels), image_size (diffusers' sample_size),
    block_out_channels (one entry per resolution, each a multiple of norm_num_groups), layers_per_block,
    attention (self-attention blocks at the lowest resolution), norm_num_groups, num_classes (None:
    unconditional; else a class embedding of num_classes + 1 entries, the last being the null class).
    """

    def __init__(self, in_channels: int = 1, out_channels: int | None = None, image_size: int = 8,
                 block_out_channels: Sequence[int] = (32, 64), layers_per_block: int = 1, attention: bool = False,
                 norm_num_groups: int = 8, num_classes: int | None = None):
        super().__init__()
        import diffusers

        block_out_channels = [int(c) for c in block_out_channels]
        if not block_out_channels or any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(f"block_out_channels must be non-empty multiples of norm_num_groups={norm_num_groups}; "
                             f"got {block_out_channels}")
        if image_size % 2 ** (len(block_out_channels) - 1):
            raise ValueError(f"image_size {image_size} must be divisible by 2^{len(block_out_channels) - 1} "
                             f"for {len(block_out_channels)} resolutions")
        out_channels = in_channels if out_channels is None else int(out_channels)
        down = ["DownBlock2D"] * len(block_out_channels)
        up = ["UpBlock2D"] * len(block_out_channels)
        if attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.num_classes = num_classes
        self.model = diffusers.UNet2DModel(
            sample_size=int(image_size), in_channels=int(in_channels), out_channels=out_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=int(layers_per_block),
            down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=int(norm_num_groups),
            num_class_embeds=None if num_classes is None else int(num_classes) + 1)
        self.config = {"name": "diffusers_unet2d", "in_channels": int(in_channels), "out_channels": out_channels,
                       "image_size": int(image_size), "block_out_channels": block_out_channels,
                       "layers_per_block": int(layers_per_block), "attention": bool(attention),
                       "norm_num_groups": int(norm_num_groups), "num_classes": num_classes}

    def forward(self, x: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        labels = _labels(class_labels, self.num_classes, x, always=False)
        return self.model(x, _time(t, x), class_labels=labels).sample


class DiffusersDiT(nn.Module):
    """diffusers' ``DiTTransformer2DModel`` (Peebles & Xie 2023, arXiv 2212.09748) behind our contract.

    Args: in_channels, image_size, patch_size, num_layers, num_heads, head_dim, num_classes (None:
    unconditional, which DiT's adaLN-Zero realises as a single always-used label). The output has
    in_channels channels (no learned variance).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, patch_size: int = 2, num_layers: int = 2,
                 num_heads: int = 2, head_dim: int = 16, num_classes: int | None = None):
        super().__init__()
        import diffusers

        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be divisible by patch_size {patch_size}")
        self.num_classes = num_classes
        self.model = diffusers.DiTTransformer2DModel(
            num_attention_heads=int(num_heads), attention_head_dim=int(head_dim), in_channels=int(in_channels),
            out_channels=int(in_channels), num_layers=int(num_layers), sample_size=int(image_size),
            patch_size=int(patch_size), num_embeds_ada_norm=(num_classes or 0) + 1, norm_num_groups=1)
        for module in self.model.modules():  # diffusers' DiT drops 10% of labels in training; our loss does that
            if hasattr(module, "dropout_prob"):
                module.dropout_prob = 0.0
        self.config = {"name": "diffusers_dit", "in_channels": int(in_channels), "image_size": int(image_size),
                       "patch_size": int(patch_size), "num_layers": int(num_layers), "num_heads": int(num_heads),
                       "head_dim": int(head_dim), "num_classes": num_classes}

    def forward(self, x: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        labels = _labels(class_labels, self.num_classes, x, always=True)
        return self.model(x, timestep=_time(t, x), class_labels=labels).sample
