"""Video denoisers for clips ``x`` of shape (B, T, C, H, W): a per-frame 2-D UNet, a factorised space-time 3-D UNet
and a factorised video DiT (the architectures surveyed by Melnik et al. 2024, "Video Diffusion Models: A Survey",
arXiv 2405.03150, Sec. 3 / 4).

* ``PerFrameUNet``: the library's 2-D ``UNet`` applied to every frame on its own (frames never interact): the
  image-model baseline.
* ``FactorisedUNet3D``: the 3-D UNet of Video Diffusion Models (Ho et al. 2022, arXiv 2204.03458, Sec. 3): every
  2-D convolution is a (1, 3, 3) space-only convolution (a 2-D conv over the frames folded into the batch), spatial
  self-attention runs within each frame, and after each residual block a *temporal* attention layer attends, at
  every pixel, over the frames, with a learned relative-position bias (Shaw et al. 2018, arXiv 1803.02155).
* ``VideoDiT``: a DiT (Peebles & Xie 2023, arXiv 2212.09748) over space-time patches of (1, p, p): each block is a
  spatial adaLN-Zero transformer block over the patches of one frame followed by an adaLN-gated temporal attention
  over the frames at each patch position (the factorised space-time attention of Latte, Ma et al. 2024, arXiv
  2401.03048, variant 1).

Temporal mixing is controlled by ``frame_mask`` (T, T) bool, True = frame i may attend to frame j; ``None`` is full
attention. ``frame_mask = eye(T)`` (``independent_frames_mask``) turns temporal mixing off: each frame then attends
only to itself, the softmax weight is exactly 1, and the net is a per-frame function (the "focus on present" mask of
the lucidrains Unet3D). ``joint_frames_mask(T, k)`` is the joint image-video training mask of Ho et al. 2022
(Sec. 3.2): frames 0..k-1 form a video and attend to each other, frames k.. are independent images.

Conditioning: ``class_labels`` (B,) (null class = ``num_classes``, for classifier-free guidance) and, when the net is
built with ``first_frame=True``, ``first_frame`` (B, C, H, W): the clean first frame concatenated as extra input
channels to every frame (zeros = no frame given, the null condition).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...nets.dit import DiTBlock, FinalLayer, sincos_positions
from ...nets.embedding import TimeClassEmbedding, prepare_labels, prepare_time
from ...nets.unet import AttentionBlock, Downsample, ResBlock, UNet, Upsample, group_count

__all__ = ["TemporalAttention", "PerFrameUNet", "FactorisedUNet3D", "VideoDiT", "build_video_net",
           "independent_frames_mask", "joint_frames_mask", "VIDEO_NETS"]


def independent_frames_mask(frames: int, device=None) -> torch.Tensor:
    """(T, T) bool identity: every frame attends only to itself (temporal mixing off)."""
    return torch.eye(frames, dtype=torch.bool, device=device)


def joint_frames_mask(frames: int, video_frames: int, device=None) -> torch.Tensor:
    """(T, T) bool mask of joint image-video training (Ho et al. 2022, arXiv 2204.03458, Sec. 3.2): frames
    ``[0, video_frames)`` attend to each other, every later frame (an independent image) only to itself."""
    if not 0 <= video_frames <= frames:
        raise ValueError(f"video_frames must be in [0, {frames}], got {video_frames}")
    mask = independent_frames_mask(frames, device)
    mask[:video_frames, :video_frames] = True
    return mask


class TemporalAttention(nn.Module):
    """Multi-head self-attention over the frame axis at each spatial position, with a residual connection:

        out_i = x_i + W_o sum_j softmax_j(q_i . k_j / sqrt(d) + b_{h, j - i} + log m_ij) v_j

    with q, k, v = W_{qkv} LN(x), a learned relative-position bias ``b`` per head and frame offset (|j - i| <
    ``max_frames``; Shaw et al. 2018, arXiv 1803.02155, as in the temporal attention of Ho et al. 2022) and the
    frame mask ``m`` (True/False). ``W_o`` starts at zero, so a fresh layer is the identity (the image net's
    behaviour). Shapes: x (N, T, D), mask (T, T) bool or None -> (N, T, D).
    """

    def __init__(self, dim: int, num_heads: int, max_frames: int = 32):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the width {dim} at temporal attention")
        self.num_heads = num_heads
        self.max_frames = int(max_frames)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_bias = nn.Parameter(torch.zeros(num_heads, 2 * max_frames - 1))
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def bias(self, frames: int, mask: torch.Tensor | None, dtype, device) -> torch.Tensor:
        """Additive attention bias (heads, T, T): b_{h, j - i}, and -inf where the mask forbids."""
        if frames > self.max_frames:
            raise ValueError(f"clips have {frames} frames; this net handles at most max_frames={self.max_frames}")
        offsets = torch.arange(frames, device=device)
        index = offsets[None, :] - offsets[:, None] + self.max_frames - 1  # j - i, shifted to >= 0
        bias = self.relative_bias[:, index].to(dtype)
        if mask is not None:
            if tuple(mask.shape) != (frames, frames) or mask.dtype != torch.bool:
                raise ValueError(f"frame_mask must be a bool tensor ({frames}, {frames}), got "
                                 f"{tuple(mask.shape)} {mask.dtype}")
            bias = bias.masked_fill(~mask.to(device)[None], float("-inf"))
        return bias

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, frames, dim = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(self.norm(x)).reshape(n, frames, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(frames, mask, x.dtype, x.device))
        return x + self.proj(a.transpose(1, 2).reshape(n, frames, dim))


def _check_video(x, in_channels: int, image_size: int) -> None:
    if not torch.is_tensor(x) or x.ndim != 5:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must be a video batch (B, T, C, H, W), got {got}")
    if x.shape[2] != in_channels or x.shape[3] != image_size or x.shape[4] != image_size:
        raise ValueError(f"x must have shape (B, T, {in_channels}, {image_size}, {image_size}), got {tuple(x.shape)}")


def _with_first_frame(x: torch.Tensor, first_frame: torch.Tensor | None, enabled: bool) -> torch.Tensor:
    """x (B, T, C, H, W) with the clean first frame (B, C, H, W) (zeros when None) appended as channels."""
    if not enabled:
        if first_frame is not None:
            raise ValueError("this net is not first-frame conditional (first_frame=False): it takes no first_frame")
        return x
    if first_frame is None:
        first_frame = torch.zeros_like(x[:, 0])
    if tuple(first_frame.shape) != (x.shape[0],) + tuple(x.shape[2:]):
        raise ValueError(f"first_frame must have shape {(x.shape[0],) + tuple(x.shape[2:])}, "
                         f"got {tuple(first_frame.shape)}")
    return torch.cat([x, first_frame.to(x.dtype)[:, None].expand_as(x)], dim=2)


class PerFrameUNet(nn.Module):
    """The 2-D image ``UNet`` applied frame by frame: ``f(x)_i = UNet(x_i, t, c)`` (frames never interact; the
    baseline of the survey's Sec. 4). Same interface as the video nets; ``frame_mask`` is accepted and ignored
    (every frame is independent anyway). Extra keyword arguments configure the ``UNet``."""

    def __init__(self, in_channels: int = 1, image_size: int = 16, num_classes: int | None = 10,
                 first_frame: bool = False, base_channels: int = 16, channel_mult=(1, 2),
                 attention_resolutions=(8,), **unet_kwargs):
        super().__init__()
        self.unet = UNet(in_channels=in_channels * (2 if first_frame else 1), out_channels=in_channels,
                         image_size=image_size, num_classes=num_classes, base_channels=base_channels,
                         channel_mult=channel_mult, attention_resolutions=attention_resolutions, **unet_kwargs)
        self.in_channels, self.image_size, self.first_frame = in_channels, image_size, bool(first_frame)
        cfg = {k: v for k, v in self.unet.config.items() if k not in ("name", "in_channels", "out_channels", "dims")}
        self.config = {"name": "per_frame_unet", **cfg, "in_channels": in_channels, "first_frame": self.first_frame}

    def forward(self, x: torch.Tensor, t, class_labels=None, first_frame=None, frame_mask=None) -> torch.Tensor:
        _check_video(x, self.in_channels, self.image_size)
        b, frames = x.shape[:2]
        h = _with_first_frame(x, first_frame, self.first_frame).flatten(0, 1)  # (B T, C', H, W)
        t = prepare_time(t, b, x).repeat_interleave(frames)
        labels = None if class_labels is None else prepare_labels(class_labels, b, self.unet.num_classes, x.device)
        labels = None if labels is None else labels.repeat_interleave(frames)
        return self.unet(h, t, class_labels=labels).reshape(x.shape)


class _Level3D(nn.Module):
    """ResBlock (space-only convs), optional spatial attention, optional temporal attention: one 3-D UNet unit."""

    def __init__(self, res: ResBlock, spatial: AttentionBlock | None, temporal: TemporalAttention | None):
        super().__init__()
        self.res, self.spatial, self.temporal = res, spatial, temporal

    def forward(self, h: torch.Tensor, emb: torch.Tensor, frames: int, mask) -> torch.Tensor:
        h = self.res(h, emb)
        if self.spatial is not None:
            h = self.spatial(h)
        if self.temporal is not None:
            bt, c, height, width = h.shape
            tokens = h.reshape(bt // frames, frames, c, height * width).permute(0, 3, 1, 2).flatten(0, 1)
            tokens = self.temporal(tokens, mask)  # (B H W, T, C)
            h = tokens.reshape(bt // frames, height * width, frames, c).permute(0, 2, 3, 1).reshape(h.shape)
        return h


class FactorisedUNet3D(nn.Module):
    """Factorised space-time 3-D UNet (Ho et al. 2022, arXiv 2204.03458, Sec. 3; survey arXiv 2405.03150, Sec. 4.1).

    The 2-D UNet of ``nets.unet`` inflated to video: frames are folded into the batch for every (1, 3, 3)
    convolution, GroupNorm, spatial self-attention (at ``attention_resolutions``) and down/up-sampling, and a
    ``TemporalAttention`` over the T frames at every pixel follows each residual block (and the middle blocks) at
    the levels whose side is in ``temporal_resolutions`` (default: every level).
    Conditioning e = MLP(sinusoidal(t)) + E[c] enters every ResBlock by scale-shift, as in the 2-D net.
    ``forward(x (B, T, C, H, W), t, class_labels=None, first_frame=None, frame_mask=None) -> (B, T, C, H, W)``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 16, num_classes: int | None = 10,
                 first_frame: bool = False, base_channels: int = 16, channel_mult=(1, 2), num_res_blocks: int = 1,
                 attention_resolutions=(8,), temporal_resolutions=None, num_heads: int = 4, max_frames: int = 32):
        super().__init__()
        level_res = [image_size // 2**i for i in range(len(channel_mult))]
        temporal_resolutions = tuple(level_res if temporal_resolutions is None else temporal_resolutions)
        if not set(temporal_resolutions) <= set(level_res):
            raise ValueError(f"temporal_resolutions {list(temporal_resolutions)} must be level resolutions {level_res}")
        self.config = {"name": "unet3d", "in_channels": in_channels, "image_size": image_size,
                       "num_classes": num_classes, "first_frame": bool(first_frame), "base_channels": base_channels,
                       "channel_mult": list(channel_mult), "num_res_blocks": num_res_blocks,
                       "attention_resolutions": list(attention_resolutions),
                       "temporal_resolutions": list(temporal_resolutions), "num_heads": num_heads,
                       "max_frames": max_frames}
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise ValueError(f"image_size={image_size} must be divisible by 2**(len(channel_mult)-1) = {factor}")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.first_frame = bool(first_frame)
        emb_dim = 4 * base_channels
        self.embed = TimeClassEmbedding(base_channels, emb_dim, num_classes)
        self.conv_in = nn.Conv2d(in_channels * (2 if first_frame else 1), base_channels, 3, padding=1)

        def unit(cin: int, cout: int, res: int) -> _Level3D:
            spatial = AttentionBlock(cout, num_heads) if res in attention_resolutions else None
            temporal = TemporalAttention(cout, num_heads, max_frames) if res in temporal_resolutions else None
            return _Level3D(ResBlock(2, cin, cout, emb_dim, 0.0), spatial, temporal)

        ch, skips = base_channels, [base_channels]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(unit(ch, base_channels * mult, level_res[level]))
                ch = base_channels * mult
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(2, ch))
                skips.append(ch)
        self.mid = nn.ModuleList([unit(ch, ch, level_res[-1]), unit(ch, ch, level_res[-1])])
        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(unit(ch + skips.pop(), base_channels * channel_mult[level], level_res[level]))
                ch = base_channels * channel_mult[level]
            if level != 0:
                self.up.append(Upsample(2, ch))
        self.out_norm = nn.GroupNorm(group_count(ch), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t, class_labels=None, first_frame=None, frame_mask=None) -> torch.Tensor:
        _check_video(x, self.in_channels, self.image_size)
        b, frames = x.shape[:2]
        labels = prepare_labels(class_labels, b, self.num_classes, x.device)
        emb = F.silu(self.embed(prepare_time(t, b, x), labels)).repeat_interleave(frames, dim=0)
        h = self.conv_in(_with_first_frame(x, first_frame, self.first_frame).flatten(0, 1))
        skips = [h]
        for block in self.down:
            h = block(h, emb, frames, frame_mask) if isinstance(block, _Level3D) else block(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb, frames, frame_mask)
        for block in self.up:
            if isinstance(block, _Level3D):
                h = block(torch.cat([h, skips.pop()], dim=1), emb, frames, frame_mask)
            else:
                h = block(h)
        return self.conv_out(F.silu(self.out_norm(h))).reshape(x.shape)


class _TemporalDiTBlock(nn.Module):
    """adaLN-gated temporal attention: h + gate(c) * TemporalAttention-update(modulate(LN(h), shift, scale))."""

    def __init__(self, dim: int, num_heads: int, max_frames: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = TemporalAttention(dim, num_heads, max_frames)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        nn.init.zeros_(self.adaLN[1].weight)
        nn.init.zeros_(self.adaLN[1].bias)
        nn.init.normal_(self.attn.proj.weight, std=0.02)  # the adaLN gate (zero at init) keeps the block an identity

    def forward(self, h: torch.Tensor, c: torch.Tensor, mask) -> torch.Tensor:
        shift, scale, gate = (m[:, None, :] for m in self.adaLN(c).chunk(3, dim=1))
        u = self.norm(h) * (1 + scale) + shift
        return h + gate * (self.attn(u, mask) - u)


class VideoDiT(nn.Module):
    """Video DiT over (1, p, p) space-time patches with factorised attention (Latte, arXiv 2401.03048, variant 1;
    survey arXiv 2405.03150, Sec. 4.2): tokens z (B, T, N, D) = patch-embed(x_i) + sincos-2-D(position); every block
    is a spatial ``DiTBlock`` (adaLN-Zero, Peebles & Xie 2023, arXiv 2212.09748) over the N patches of each frame,
    then a gated ``TemporalAttention`` over the T frames at each patch position. Output: adaLN final layer and
    unpatchify. ``forward(x (B, T, C, H, W), t, class_labels=None, first_frame=None, frame_mask=None)``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 16, num_classes: int | None = 10,
                 first_frame: bool = False, patch_size: int = 2, hidden_size: int = 64, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 2.0, max_frames: int = 32):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
        self.config = {"name": "video_dit", "in_channels": in_channels, "image_size": image_size,
                       "num_classes": num_classes, "first_frame": bool(first_frame), "patch_size": patch_size,
                       "hidden_size": hidden_size, "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio,
                       "max_frames": max_frames}
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.first_frame, self.patch_size = bool(first_frame), patch_size
        self.grid = image_size // patch_size
        self.patch = nn.Conv2d(in_channels * (2 if first_frame else 1), hidden_size, patch_size, stride=patch_size)
        self.register_buffer("pos", sincos_positions(self.grid, hidden_size, 2)[None], persistent=False)
        self.embed = TimeClassEmbedding(hidden_size, hidden_size, num_classes)
        self.spatial = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.temporal = nn.ModuleList(_TemporalDiTBlock(hidden_size, num_heads, max_frames) for _ in range(depth))
        self.final = FinalLayer(hidden_size, patch_size**2 * in_channels)

    def forward(self, x: torch.Tensor, t, class_labels=None, first_frame=None, frame_mask=None) -> torch.Tensor:
        _check_video(x, self.in_channels, self.image_size)
        b, frames = x.shape[:2]
        labels = prepare_labels(class_labels, b, self.num_classes, x.device)
        c = self.embed(prepare_time(t, b, x), labels)  # (B, D)
        c_frames = c.repeat_interleave(frames, dim=0)
        h = self.patch(_with_first_frame(x, first_frame, self.first_frame).flatten(0, 1))  # (B T, D, g, g)
        h = h.flatten(2).transpose(1, 2) + self.pos.to(h.dtype)  # (B T, N, D)
        n, d = h.shape[1:]
        for spatial, temporal in zip(self.spatial, self.temporal):
            h = spatial(h, c_frames)
            tokens = h.reshape(b, frames, n, d).transpose(1, 2).flatten(0, 1)  # (B N, T, D)
            tokens = temporal(tokens, c.repeat_interleave(n, dim=0), frame_mask)
            h = tokens.reshape(b, n, frames, d).transpose(1, 2).flatten(0, 1)
        out = self.final(h, c_frames)  # (B T, N, p p C)
        p, g, ch = self.patch_size, self.grid, self.in_channels
        out = out.reshape(b * frames, g, g, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(x.shape)


VIDEO_NETS = {"per_frame_unet": PerFrameUNet, "unet3d": FactorisedUNet3D, "video_dit": VideoDiT}


def build_video_net(config: dict) -> nn.Module:
    """A video net from its ``config`` dict (the ``config`` attribute of a built net, as saved in zoo manifests)."""
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in VIDEO_NETS:
        raise ValueError(f"unknown video net {name!r}; allowed: {', '.join(VIDEO_NETS)}")
    for key in ("channel_mult", "attention_resolutions", "temporal_resolutions"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    return VIDEO_NETS[name](**cfg)
