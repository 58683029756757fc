"""Diffusion transformer (DiT / SiT backbone) for images (B, C, H, W) and 1-D signals (B, C, L).

Peebles & Xie 2023, "Scalable Diffusion Models with Transformers" (arXiv 2212.09748): the input is cut into
non-overlapping patches of side ``p`` (``N = (S / p) ** dims`` tokens of width ``D``), fixed sin-cos (or
learned) positions are added, and ``depth`` transformer blocks with adaLN-Zero conditioning follow:

    (shift1, scale1, gate1, shift2, scale2, gate2) = Linear(SiLU(c)),   c = MLP(sinusoidal(t)) + E[class]
    h <- h + gate1 * Attn(LN(h) * (1 + scale1) + shift1)
    h <- h + CrossAttn(LN(h), context)                      (text conditioning, only when context_dim is set)
    h <- h + gate2 * MLP(LN(h) * (1 + scale2) + shift2)

The modulation and output layers are zero-initialised, so every block starts as the identity and an untrained
net outputs 0. The same backbone trained on the flow / interpolant path is SiT (Ma et al. 2024, arXiv
2401.08740): only the loss and the schedule differ, so it is this class with ``diffusekit.core``'s flow schedule.

Denoising Task Routing (DTR; Park et al., ICLR 2024, arXiv 2310.07138) is built in: with ``dtr_beta`` set, the
timestep task ``tau = round(t)`` (network time, clamped to ``[0, dtr_num_tasks - 1]``) activates the contiguous
channels ``[s_tau, s_tau + w)`` with ``w = floor(beta * D)`` and ``s_tau = round((tau / (T - 1)) ** alpha * (D - w))``;
each block reads only the active channels and adds its update to the full residual stream,
``out = x + Delta_block(x * m_tau)``. ``beta = 1`` activates every channel and is exactly the plain DiT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import TimeClassEmbedding, prepare_labels, prepare_time

__all__ = ["DiT", "DiTBlock", "FinalLayer", "Attention", "CrossAttention", "sincos_positions", "dtr_channel_mask",
           "positive_int", "check_token_geometry"]


def _sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) positions -> (N, dim) with ``[sin(p w_k), cos(p w_k)]``, ``w_k = 10000 ** (-k / (dim / 2))``."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))
    args = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def sincos_positions(grid_size: int, dim: int, dims: int) -> torch.Tensor:
    """Fixed sin-cos position table (N, dim) for a ``grid_size ** dims`` token grid (row-major).

    1-D: the transformer table of Vaswani et al. 2017 over token index. 2-D (as in MAE/DiT): half the
    channels encode the row, half the column, each with the 1-D table. ``dim`` must be divisible by 2 * dims.
    """
    if dim % (2 * dims) != 0:
        raise ValueError(f"hidden_size must be divisible by {2 * dims} for sin-cos positions, got {dim}")
    coords = torch.arange(grid_size)
    if dims == 1:
        return _sincos_1d(coords, dim).float()
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([_sincos_1d(rows.reshape(-1), dim // 2), _sincos_1d(cols.reshape(-1), dim // 2)], dim=1).float()


def dtr_channel_mask(t: torch.Tensor, channels: int, beta: float, alpha: float, num_tasks: int) -> torch.Tensor:
    """DTR routing mask (B, channels) in {0, 1} for network times ``t`` (B,) (Park et al. 2024, Sec. 3).

    Task ``tau = clamp(round(t), 0, T - 1)``; width ``w = floor(beta * C)``; start
    ``s = round((tau / (T - 1)) ** alpha * (C - w))``; channels ``[s, s + w)`` are active. Low-noise tasks use
    the first channels, high-noise tasks slide to the last ones, and neighbouring tasks share most channels.
    """
    width = int(math.floor(beta * channels))
    tau = torch.clamp(torch.round(t.to(torch.float64)), 0, num_tasks - 1)
    start = torch.round((tau / max(num_tasks - 1, 1)) ** alpha * (channels - width))
    idx = torch.arange(channels, device=t.device, dtype=torch.float64)
    mask = (idx[None, :] >= start[:, None]) & (idx[None, :] < start[:, None] + width)
    return mask.to(torch.float32)


def _modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return h * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head self-attention ``softmax(Q K^T / sqrt(d)) V`` with one fused ``qkv`` projection.

    ``forward(h)`` attends every token to every token; shapes (B, N, D) -> (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden_size {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, heads, N, D / heads)."""
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(self.split_heads(q), self.split_heads(k), self.split_heads(v))
        return self.proj(out.transpose(1, 2).reshape(h.shape))


class CrossAttention(nn.Module):
    """Pre-norm cross-attention to a context sequence (text tokens), zero-initialised output.

    ``forward(h, context, context_mask)``: queries from ``LN(h)`` (B, N, D), keys/values from ``context``
    (B, L, context_dim); ``context_mask`` (B, L) bool, True = attend (padding tokens are ignored). Returns
    the update (B, N, D) that the block adds to ``h``. Rombach et al. 2022 (LDM, arXiv 2112.10752).
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = h.shape
        heads = self.num_heads
        q = self.q(self.norm(h)).reshape(b, n, heads, d // heads).transpose(1, 2)
        k, v = self.kv(context).chunk(2, dim=-1)
        k = k.reshape(b, -1, heads, d // heads).transpose(1, 2)
        v = v.reshape(b, -1, heads, d // heads).transpose(1, 2)
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (DiT, Sec. 3.2), optional cross-attention and DTR channel routing.

    ``forward(h, c, context=None, context_mask=None, channel_mask=None)``: h (B, N, D), c (B, D), channel_mask
    (B, D) in {0, 1} or None. With a mask ``m`` the block computes ``x + Delta(x * m)`` (DTR).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.cross = CrossAttention(dim, context_dim, num_heads) if context_dim is not None else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN[1].weight)
        nn.init.zeros_(self.adaLN[1].bias)

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), each (B, 1, D)."""
        return tuple(m[:, None, :] for m in self.adaLN(c).chunk(6, dim=1))

    def forward(self, h: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, channel_mask: torch.Tensor | None = None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        residual = h
        if channel_mask is not None:
            mask = channel_mask[:, None, :].to(h.dtype)
            h = h * mask
        h = h + gate_msa * self.attn(_modulate(self.norm1(h), shift_msa, scale_msa))
        if self.cross is not None:
            if context is None:
                raise ValueError("this network is text-conditional (context_dim is set): pass context=(B, L, "
                                 "context_dim), e.g. the encoded null caption for unconditional outputs")
            h = h + self.cross(h, context, context_mask)
        h = h + gate_mlp * self.mlp(_modulate(self.norm2(h), shift_mlp, scale_mlp))
        if channel_mask is not None:
            h = h + residual * (1 - mask)
        return h


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a zero-initialised linear map to ``patch_area * out_channels``."""

    def __init__(self, dim: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_features)
        for layer in (self.adaLN[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = (m[:, None, :] for m in self.adaLN(c).chunk(2, dim=1))
        return self.linear(_modulate(self.norm(h), shift, scale))


def positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum`` (not a bool), else a one-line ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_token_geometry(dims, image_size: int, patch_size: int, hidden_size: int, num_heads: int) -> None:
    """One-line ValueErrors for a patch-token transformer whose dims, patching or head split cannot work."""
    if dims not in (1, 2) or isinstance(dims, bool):
        raise ValueError(f"dims must be 1 (signals) or 2 (images), got {dims!r}")
    if image_size % patch_size != 0:
        raise ValueError(f"image_size {image_size} must be divisible by patch_size {patch_size}")
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")


class DiT(nn.Module):
    """Diffusion transformer with ``forward(x, t, class_labels=None, context=None, context_mask=None)``.

    Args:
        in_channels / out_channels: channels of x and of the output (out defaults to in).
        image_size: side S of the (square) image, or the length L of a 1-D signal (``dims=1``).
        patch_size: patch side p; S must be divisible by p; N = (S / p) ** dims tokens.
        hidden_size, depth, num_heads, mlp_ratio: transformer width D, blocks, heads, MLP width ratio.
        num_classes: None (unconditional) or the class count; the class table has a null row at index
            ``num_classes`` (classifier-free guidance), as in the UNet.
        context_dim: None, or the width of text-token embeddings for cross-attention in every block.
        dims: 2 for images (B, C, S, S), 1 for signals/token sequences (B, C, L).
        pos_embed: "sincos" (fixed) or "learned".
        dtr_beta, dtr_alpha, dtr_num_tasks: Denoising Task Routing (None = off); see the module docstring.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, patch_size: int = 2, hidden_size: int = 128,
                 depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0, num_classes: int | None = None,
                 context_dim: int | None = None, dims: int = 2, pos_embed: str = "sincos",
                 out_channels: int | None = None, dtr_beta: float | None = None, dtr_alpha: float = 4.0,
                 dtr_num_tasks: int = 1000):
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        out_channels = in_channels if out_channels is None else positive_int("out_channels", out_channels)
        image_size = positive_int("image_size", image_size)
        patch_size = positive_int("patch_size", patch_size)
        hidden_size = positive_int("hidden_size", hidden_size)
        depth = positive_int("depth", depth)
        num_heads = positive_int("num_heads", num_heads)
        check_token_geometry(dims, image_size, patch_size, hidden_size, num_heads)
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        if num_classes is not None:
            num_classes = positive_int("num_classes", num_classes)
        if context_dim is not None:
            context_dim = positive_int("context_dim", context_dim)
        if dtr_beta is not None and not (isinstance(dtr_beta, (int, float)) and 0.0 < dtr_beta <= 1.0):
            raise ValueError(f"dtr_beta must be None or in (0, 1], got {dtr_beta!r}")
        if not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        self.config = {"name": "dit", "in_channels": in_channels, "image_size": image_size, "patch_size": patch_size,
                       "hidden_size": hidden_size, "depth": depth, "num_heads": num_heads,
                       "mlp_ratio": float(mlp_ratio), "num_classes": num_classes, "context_dim": context_dim,
                       "dims": dims, "pos_embed": pos_embed, "out_channels": out_channels,
                       "dtr_beta": None if dtr_beta is None else float(dtr_beta), "dtr_alpha": float(dtr_alpha),
                       "dtr_num_tasks": positive_int("dtr_num_tasks", dtr_num_tasks, 2)}
        self.in_channels, self.out_channels = in_channels, out_channels
        self.image_size, self.patch_size, self.dims = image_size, patch_size, dims
        self.hidden_size, self.num_classes, self.context_dim = hidden_size, num_classes, context_dim
        self.grid_size = image_size // patch_size
        self.num_tokens = self.grid_size**dims
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.patch = conv(in_channels, hidden_size, patch_size, stride=patch_size)
        if pos_embed == "sincos":
            self.register_buffer("pos", sincos_positions(self.grid_size, hidden_size, dims)[None], persistent=False)
        else:
            self.pos = nn.Parameter(torch.randn(1, self.num_tokens, hidden_size) * 0.02)
        self.embed = TimeClassEmbedding(256, hidden_size, num_classes)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, context_dim) for _ in range(depth))
        self.final = FinalLayer(hidden_size, patch_size**dims * out_channels)

    def _check_input(self, x) -> None:
        if not torch.is_tensor(x):
            raise ValueError(f"x must be a tensor, got {type(x).__name__}")
        layout = "(B, C, H, W)" if self.dims == 2 else "(B, C, L)"
        expected = (self.in_channels,) + (self.image_size,) * self.dims
        if x.ndim != self.dims + 2 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape {layout} = (B, {', '.join(map(str, expected))}) for this DiT "
                             f"(in_channels={self.in_channels}, image_size={self.image_size}), got {tuple(x.shape)}")

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patchify and add positions: (B, C, *spatial) -> (B, N, D)."""
        return self.patch(x).flatten(2).transpose(1, 2) + self.pos.to(x.dtype)

    def condition(self, t: torch.Tensor, class_labels=None) -> torch.Tensor:
        """Conditioning vector c (B, D) from network time t (B,) and class labels (None -> null class)."""
        labels = prepare_labels(class_labels, t.shape[0], self.num_classes, t.device)
        return self.embed(t, labels)

    def routing_mask(self, t: torch.Tensor) -> torch.Tensor | None:
        """DTR channel mask (B, D) for network times t (B,), or None when DTR is off."""
        if self.config["dtr_beta"] is None:
            return None
        return dtr_channel_mask(t, self.hidden_size, self.config["dtr_beta"], self.config["dtr_alpha"],
                                self.config["dtr_num_tasks"])

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, p**dims * C_out) -> (B, C_out, *spatial), inverting the patch grid (row-major)."""
        b, g, p, c = tokens.shape[0], self.grid_size, self.patch_size, self.out_channels
        if self.dims == 1:
            return tokens.reshape(b, g, p, c).permute(0, 3, 1, 2).reshape(b, c, g * p)
        return tokens.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t, class_labels=None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
        t = prepare_time(t, x.shape[0], x)
        if self.context_dim is None and context is not None:
            raise ValueError("context was given but this DiT has no cross-attention (context_dim=None)")
        if context is not None:
            if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != self.context_dim:
                raise ValueError(f"context must have shape (B={x.shape[0]}, L, {self.context_dim}), "
                                 f"got {tuple(context.shape)}")
            if context_mask is not None:
                if context_mask.shape != context.shape[:2] or context_mask.dtype != torch.bool:
                    raise ValueError(f"context_mask must be a bool tensor of shape {tuple(context.shape[:2])}")
                if not bool(context_mask.any(dim=1).all()):
                    raise ValueError("context_mask masks every token of some caption; keep at least one "
                                     "(the encoded null caption has <bos>/<eos>)")
        c = self.condition(t, class_labels)
        h = self.embed_tokens(x)
        mask = self.routing_mask(t)
        for block in self.blocks:
            h = block(h, c, context, context_mask, mask)
        return self.unpatchify(self.final(h, c))
