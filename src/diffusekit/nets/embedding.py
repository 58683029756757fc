"""Time and class embeddings shared by the denoiser networks, plus input checks."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "timestep_embedding",
    "TimeClassEmbedding",
    "prepare_time",
    "prepare_labels",
]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a real-valued time input.

    With ``half = dim // 2`` and frequencies ``w_k = max_period ** (-k / half)`` for
    ``k = 0 .. half-1``, the embedding is ``[cos(t w_0), .., cos(t w_{half-1}),
    sin(t w_0), .., sin(t w_{half-1})]`` (zero-padded by one column when ``dim`` is odd).
    Reference: Vaswani et al. 2017, "Attention is all you need", Sec. 3.5; used for
    diffusion time by Ho et al. 2020 (DDPM).

    Args:
        t: float tensor of shape (B,), any real values (e.g. 1000 * schedule time).
        dim: embedding width (>= 2).
        max_period: longest period of the sinusoids (controls the lowest frequency).

    Returns:
        Tensor of shape (B, dim) with the dtype of ``t`` (float32 if ``t`` is not float).
    """
    if dim < 2:
        raise ValueError(f"embedding dim must be >= 2, got {dim}")
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got shape {tuple(t.shape)}")
    dtype = t.dtype if t.is_floating_point() else torch.float32
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float64)
    freqs = torch.exp(-math.log(max_period) * k / half).to(dtype)
    args = t.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2 == 1:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


def prepare_time(t, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Validate the network time input and broadcast it to shape (B,) on ``like``'s device.

    Accepts a Python number, a 0-d tensor, a (1,) tensor or a (B,) tensor. The result is
    float32 (float64 if ``like`` is float64), whatever the dtype of ``like``.
    """
    if not torch.is_tensor(t):
        try:
            t = torch.as_tensor(t, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"t must be a number or a float tensor of shape (B,), got {type(t).__name__}") from exc
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"t must be a real-valued tensor, got dtype {t.dtype}")
    if t.ndim == 0 or (t.ndim == 1 and t.shape[0] == 1):
        t = t.reshape(1).expand(batch)
    elif t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"t must be a scalar or have shape ({batch},), got shape {tuple(t.shape)}")
    # float32 at least: low-precision times (|t| up to ~2000) would ruin the high frequencies
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return t.to(device=like.device, dtype=dtype)


def prepare_labels(class_labels, batch: int, num_classes: int | None, device) -> torch.Tensor | None:
    """Validate class labels; ``None`` -> all null class (index ``num_classes``).

    Returns None for unconditional nets (``num_classes is None``), else a long tensor (B,).
    """
    if num_classes is None:
        if class_labels is not None:
            raise ValueError("class_labels were given but the network is unconditional (num_classes=None)")
        return None
    if class_labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if not torch.is_tensor(class_labels):
        class_labels = torch.as_tensor(class_labels)
    if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool:
        raise ValueError(f"class_labels must be an integer tensor, got dtype {class_labels.dtype}")
    if class_labels.ndim == 0:
        class_labels = class_labels.reshape(1).expand(batch)
    if class_labels.ndim != 1 or class_labels.shape[0] != batch:
        raise ValueError(f"class_labels must have shape ({batch},), got shape {tuple(class_labels.shape)}")
    if batch > 0:
        lo, hi = int(class_labels.min()), int(class_labels.max())
        if lo < 0 or hi > num_classes:
            raise ValueError(
                f"class_labels must lie in [0, {num_classes}] ({num_classes} = null class), got range [{lo}, {hi}]"
            )
    return class_labels.to(device=device, dtype=torch.long)


class TimeClassEmbedding(nn.Module):
    """Conditioning vector ``e = MLP(sinusoidal(t)) + E[c]``.

    ``MLP`` is Linear(freq_dim, out_dim) -> SiLU -> Linear(out_dim, out_dim); ``E`` is an
    embedding table with ``num_classes + 1`` rows (row ``num_classes`` = null class used for
    classifier-free guidance), present only when ``num_classes`` is not None.

    Shapes: t (B,), labels (B,) long or None -> (B, out_dim).
    """

    def __init__(self, freq_dim: int, out_dim: int, num_classes: int | None = None, max_period: float = 10000.0):
        super().__init__()
        self.freq_dim = int(freq_dim)
        self.max_period = float(max_period)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.class_embed = nn.Embedding(num_classes + 1, out_dim) if num_classes is not None else None

    def forward(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        freq = timestep_embedding(t, self.freq_dim, self.max_period)
        emb = self.mlp(freq.to(self.mlp[0].weight.dtype))
        if self.class_embed is not None:
            if labels is None:
                raise ValueError("labels must be given (use the null index) for a class-conditional embedding")
            emb = emb + self.class_embed(labels)
        return emb
