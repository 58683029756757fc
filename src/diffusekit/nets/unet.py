"""Small U-Net denoiser for images (B, C, H, W) and 1-D signals (B, C, L).

Architecture in the style of Ho et al. 2020 (DDPM) and Dhariwal & Nichol 2021 ("Diffusion
models beat GANs", ADM): residual blocks with GroupNorm/SiLU and a scale-shift injection of
the time/class embedding, multi-head self-attention at chosen resolutions, strided-conv
downsampling, nearest-neighbour + conv upsampling, and one skip connection per encoder
block. The final convolution is zero-initialised, so an untrained net outputs 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import TimeClassEmbedding, prepare_labels, prepare_time

__all__ = ["UNet", "group_count", "ScaledDotProductAttention", "CrossAttentionBlock"]


def group_count(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """Number of GroupNorm groups for ``channels``: the largest divisor ``g`` of ``channels``
    with ``g <= max_groups`` and ``channels / g >= min_group_size`` (at least 1)."""
    limit = max(1, min(max_groups, channels // min_group_size))
    for g in range(limit, 0, -1):
        if channels % g == 0:
            return g
    return 1


def _conv(dims: int, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Module:
    cls = nn.Conv2d if dims == 2 else nn.Conv1d
    return cls(cin, cout, kernel, stride=stride, padding=padding)


class ResBlock(nn.Module):
    """Residual block with scale-shift conditioning.

    ``h = conv1(SiLU(GN1(x)))``; ``(s, b) = Linear(e)``;
    ``h = conv2(Dropout(SiLU(GN2(h) * (1 + s) + b)))``; ``out = skip(x) + h``
    where ``skip`` is the identity or a 1x1 conv when channel counts differ.
    Shapes: x (B, cin, *spatial), e (B, emb_dim) -> (B, cout, *spatial).
    """

    def __init__(self, dims: int, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(group_count(cin), cin)
        self.conv1 = _conv(dims, cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(group_count(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(dims, cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else _conv(dims, cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(emb).chunk(2, dim=1)
        extra = (1,) * (h.ndim - 2)
        h = self.norm2(h) * (1 + scale.reshape(*scale.shape, *extra)) + shift.reshape(*shift.shape, *extra)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class ScaledDotProductAttention(nn.Module):
    """softmax(q k^T / sqrt(d)) v as a parameter-free module (Vaswani et al. 2017, arXiv 1706.03762, eq. 1).

    It only calls ``F.scaled_dot_product_attention``; being a module, it gives quantization a place to
    fake-quantize the attention matmul inputs (``methods.quant.attention.quantize_attention`` swaps it), and
    it adds no state_dict key. Shapes: q (..., N, d), k (..., M, d), v (..., M, d_v) -> (..., N, d_v).
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection.

    ``out = x + W_o MHA(W_qkv GN(x))`` with tokens = flattened spatial positions;
    softmax(q k^T / sqrt(d_head)) v per head (Vaswani et al. 2017).
    Shapes: (B, C, *spatial) -> (B, C, *spatial).
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels} at attention levels")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(group_count(channels), channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        self.attention = ScaledDotProductAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        h = self.norm(x).reshape(b, c, -1)
        n = h.shape[-1]
        qkv = self.qkv(h).reshape(b, 3, self.num_heads, c // self.num_heads, n).transpose(-1, -2)
        q, k, v = qkv.unbind(1)  # each (B, heads, N, d)
        a = self.attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, c, n)
        return x + self.proj(a).reshape(x.shape)


class CrossAttentionBlock(nn.Module):
    """Multi-head cross-attention from the feature map to a context sequence, with a residual connection.

    ``out = x + W_o MHA(q = W_q GN(x), k = W_k LN(c), v = W_v LN(c))`` with queries from the flattened spatial
    positions and keys/values from the context tokens ``c`` (B, L, context_dim); softmax(q k^T / sqrt(d_head)) v
    per head over the kept tokens only (``context_mask`` (B, L) bool, True = keep). This is the text conditioning
    of latent diffusion (Rombach et al. 2022, arXiv 2112.10752, §3.3) and Imagen (Saharia et al. 2022, arXiv
    2205.11487). ``W_o`` is zero-initialised, so a new block starts as the identity.
    Shapes: x (B, C, *spatial), context (B, L, context_dim), context_mask (B, L) or None -> (B, C, *spatial).
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int):
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels} at cross-attention")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(group_count(channels), channels)
        self.context_norm = nn.LayerNorm(context_dim)
        self.to_q = nn.Conv1d(channels, channels, 1)
        self.to_kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c = x.shape[:2]
        heads, d = self.num_heads, c // self.num_heads
        q = self.to_q(self.norm(x).reshape(b, c, -1))  # (B, C, N)
        q = q.reshape(b, heads, d, -1).transpose(-1, -2)  # (B, heads, N, d)
        kv = self.to_kv(self.context_norm(context))  # (B, L, 2C)
        k, v = kv.reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, d)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, L), True = attend
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, N, d)
        a = a.transpose(-1, -2).reshape(b, c, -1)
        return x + self.proj(a).reshape(x.shape)


class Downsample(nn.Module):
    """Stride-2 3-wide convolution: spatial size / 2."""

    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.conv = _conv(dims, channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3-wide convolution."""

    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.conv = _conv(dims, channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """A ResBlock optionally followed by attention and cross-attention (one U-Net stage unit)."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None, cross: CrossAttentionBlock | None = None):
        super().__init__()
        self.res = res
        self.attn = attn
        if cross is not None:  # no attribute at all otherwise: the state dict stays as without text conditioning
            self.cross = cross

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context=None, context_mask=None) -> torch.Tensor:
        x = self.res(x, emb)
        x = self.attn(x) if self.attn is not None else x
        cross = getattr(self, "cross", None)
        return cross(x, context, context_mask) if cross is not None else x


def _int_tuple(name: str, value, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}")
    out = tuple(value)
    if not allow_empty and len(out) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {value!r}")
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}")
    return out


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class UNet(nn.Module):
    """U-Net ``f(x, t, c)`` for images (``dims=2``, x (B, C, H, W)) or signals (``dims=1``, x (B, C, L)).

    Conditioning: ``e = SiLU(MLP(sinusoidal(t, base_channels)) + E[c])`` of width
    ``4 * base_channels``, injected into every ResBlock by scale-shift
    (``GN(h) * (1 + s) + b``). Level ``i`` (``i = 0 .. len(channel_mult)-1``) has
    ``base_channels * channel_mult[i]`` channels and spatial side ``image_size / 2**i``.

    Encoder: conv_in, then per level ``num_res_blocks`` ResBlocks (+ attention if the level's
    resolution is in ``attention_resolutions``) and a stride-2 downsample (except the last
    level); every block output is kept as a skip. Middle: ResBlock, attention (if the lowest
    resolution is listed), ResBlock. Decoder: per level ``num_res_blocks + 1`` ResBlocks
    each taking the concatenation with one skip, then an upsample (except level 0).
    Output: GroupNorm, SiLU, zero-initialised 3-wide conv to ``out_channels``.

    Args:
        in_channels, out_channels: channel counts (``out_channels=None`` -> ``in_channels``).
        base_channels: channels at level 0.
        channel_mult: channel multiplier per level; the net downsamples
            ``len(channel_mult) - 1`` times, so spatial sides must be divisible by
            ``2 ** (len(channel_mult) - 1)``.
        num_res_blocks: ResBlocks per encoder level.
        attention_resolutions: spatial side lengths at which self-attention is used; each must
            be one of the level resolutions ``image_size // 2**i``.
        num_heads: attention heads (must divide the channel count at attention levels).
        dropout: dropout probability inside ResBlocks.
        num_classes: None (unconditional) or class count; embedding table of size
            ``num_classes + 1`` with the null class at index ``num_classes``.
        dims: 2 for images, 1 for 1-D signals.
        image_size: spatial side length (signal length for ``dims=1``) the net is planned for
            (default 8 = the digits data). It only
            decides where attention goes; when any attention block is placed, inputs must
            have exactly this side length (all spatial sides), otherwise any divisible size works.
        context_dim: None (no text conditioning; the net is exactly the one without this argument) or the width
            of a context sequence (e.g. text-encoder hidden states). Then every self-attention block is followed
            by a ``CrossAttentionBlock`` (and, without attention resolutions, the middle gets one), and
            ``forward`` requires ``context``.

    ``forward(x, t, class_labels=None, context=None, context_mask=None)``: t float (B,) or scalar network
    time (roughly [-2000, 2000]); class_labels long (B,) in [0, num_classes] or None (= all null class);
    context float (B, L, context_dim) and context_mask bool (B, L) (True = keep; None = keep all), only with
    ``context_dim``. Returns a tensor of shape (B, out_channels, *spatial).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (4,),
        num_heads: int = 4,
        dropout: float = 0.0,
        num_classes: int | None = None,
        dims: int = 2,
        image_size: int = 8,
        context_dim: int | None = None,
    ):
        super().__init__()
        in_channels = _check_int("in_channels", in_channels, 1)
        out_channels = in_channels if out_channels is None else _check_int("out_channels", out_channels, 1)
        base_channels = _check_int("base_channels", base_channels, 1)
        channel_mult = _int_tuple("channel_mult", channel_mult, allow_empty=False)
        num_res_blocks = _check_int("num_res_blocks", num_res_blocks, 1)
        attention_resolutions = _int_tuple("attention_resolutions", attention_resolutions, allow_empty=True)
        num_heads = _check_int("num_heads", num_heads, 1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        if num_classes is not None:
            num_classes = _check_int("num_classes", num_classes, 1)
        if dims not in (1, 2) or isinstance(dims, bool):
            raise ValueError(f"dims must be 1 (signals) or 2 (images), got {dims!r}")
        image_size = _check_int("image_size", image_size, 1)
        if context_dim is not None:
            context_dim = _check_int("context_dim", context_dim, 1)
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor != 0:
            raise ValueError(
                f"image_size={image_size} must be divisible by 2**(len(channel_mult)-1) = {factor}"
            )
        level_res = [image_size // 2**i for i in range(len(channel_mult))]
        missing = [r for r in attention_resolutions if r not in level_res]
        if missing:
            raise ValueError(
                f"attention_resolutions {missing} are not level resolutions {level_res} for image_size={image_size}"
                " (set image_size to the data's side length or change attention_resolutions)"
            )

        self.config = {
            "name": "unet",
            "in_channels": in_channels,
            "out_channels": out_channels,
            "base_channels": base_channels,
            "channel_mult": list(channel_mult),
            "num_res_blocks": num_res_blocks,
            "attention_resolutions": list(attention_resolutions),
            "num_heads": num_heads,
            "dropout": float(dropout),
            "num_classes": num_classes,
            "dims": dims,
            "image_size": image_size,
        }
        if context_dim is not None:  # absent otherwise, so configs of nets without text stay as they were
            self.config["context_dim"] = context_dim
        self.context_dim = context_dim
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.dims = dims
        self.image_size = image_size
        self.factor = factor
        self.has_attention = len(attention_resolutions) > 0

        emb_dim = 4 * base_channels
        self.embed = TimeClassEmbedding(base_channels, emb_dim, num_classes)
        self.conv_in = _conv(dims, in_channels, base_channels, 3, padding=1)

        def attn(ch: int, res: int) -> AttentionBlock | None:
            return AttentionBlock(ch, num_heads) if res in attention_resolutions else None

        def cross(ch: int, res: int) -> CrossAttentionBlock | None:
            if context_dim is None or res not in attention_resolutions:
                return None
            return CrossAttentionBlock(ch, context_dim, num_heads)

        ch = base_channels
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            out_ch = base_channels * mult
            for _ in range(num_res_blocks):
                self.down.append(_Level(ResBlock(dims, ch, out_ch, emb_dim, dropout), attn(out_ch, level_res[level]),
                                        cross(out_ch, level_res[level])))
                ch = out_ch
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(dims, ch))
                skip_channels.append(ch)

        self.mid1 = ResBlock(dims, ch, ch, emb_dim, dropout)
        self.mid_attn = attn(ch, level_res[-1])
        if context_dim is not None and (self.mid_attn is not None or not self.has_attention):
            self.mid_cross = CrossAttentionBlock(ch, context_dim, num_heads)
        self.mid2 = ResBlock(dims, ch, ch, emb_dim, dropout)

        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            out_ch = base_channels * channel_mult[level]
            for _ in range(num_res_blocks + 1):
                cin = ch + skip_channels.pop()
                self.up.append(_Level(ResBlock(dims, cin, out_ch, emb_dim, dropout), attn(out_ch, level_res[level]),
                                      cross(out_ch, level_res[level])))
                ch = out_ch
            if level != 0:
                self.up.append(Upsample(dims, ch))

        self.out_norm = nn.GroupNorm(group_count(ch), ch)
        self.conv_out = _conv(dims, ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _check_input(self, x) -> None:
        if not torch.is_tensor(x):
            raise ValueError(f"x must be a tensor, got {type(x).__name__}")
        layout = "(B, C, H, W)" if self.dims == 2 else "(B, C, L)"
        if x.ndim != self.dims + 2:
            raise ValueError(f"x must have shape {layout} for dims={self.dims}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels, got shape {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if any(s % self.factor != 0 or s == 0 for s in spatial):
            raise ValueError(
                f"spatial size {spatial} must be divisible by 2**(len(channel_mult)-1) = {self.factor}"
            )
        if self.has_attention and any(s != self.image_size for s in spatial):
            raise ValueError(
                f"spatial size {spatial} must equal image_size={self.image_size} (attention placement depends on it);"
                " build the net with image_size matching the data"
            )

    def _check_context(self, context, context_mask, batch: int, like: torch.Tensor):
        if self.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("this UNet has no cross-attention (context_dim=None): it takes no context")
            return None, None
        if not torch.is_tensor(context) or context.ndim != 3 or context.shape[0] != batch \
                or context.shape[2] != self.context_dim:
            got = tuple(context.shape) if torch.is_tensor(context) else type(context).__name__
            raise ValueError(f"context must be a float tensor (B={batch}, L, {self.context_dim}), got {got}")
        context = context.to(like.dtype)
        if context_mask is not None:
            if not torch.is_tensor(context_mask) or tuple(context_mask.shape) != tuple(context.shape[:2]):
                got = tuple(context_mask.shape) if torch.is_tensor(context_mask) else type(context_mask).__name__
                raise ValueError(f"context_mask must be a bool tensor {tuple(context.shape[:2])}, got {got}")
            context_mask = context_mask.to(device=like.device, dtype=torch.bool)
            if not bool(context_mask.any(1).all()):
                raise ValueError("every row of context_mask must keep at least one token")
        return context, context_mask

    def forward(self, x: torch.Tensor, t, class_labels=None, context=None, context_mask=None) -> torch.Tensor:
        self._check_input(x)
        batch = x.shape[0]
        t = prepare_time(t, batch, x)
        labels = prepare_labels(class_labels, batch, self.num_classes, x.device)
        context, context_mask = self._check_context(context, context_mask, batch, x)
        emb = F.silu(self.embed(t, labels))

        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb, context, context_mask) if isinstance(block, _Level) else block(h)
            skips.append(h)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        mid_cross = getattr(self, "mid_cross", None)
        if mid_cross is not None:
            h = mid_cross(h, context, context_mask)
        h = self.mid2(h, emb)
        for block in self.up:
            if isinstance(block, _Level):
                h = block(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
            else:
                h = block(h)
        return self.conv_out(F.silu(self.out_norm(h)))
