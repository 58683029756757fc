"""Small tensor helpers shared by the core: float64 time tensors and broadcasting per-sample scalars."""

from __future__ import annotations

import torch

Number = float | int


def as_time(t: torch.Tensor | Number, batch: int | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Return ``t`` as a float64 tensor; with ``batch`` given, expand a scalar to shape (batch,)."""
    out = torch.as_tensor(t, dtype=torch.float64, device=device)
    if batch is not None:
        if out.ndim == 0:
            out = out.expand(batch)
        elif out.shape != (batch,):
            raise ValueError(f"time has shape {tuple(out.shape)}; expected a scalar or shape ({batch},)")
    return out


def per_sample(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a scalar or per-sample coefficient of shape (B,) to broadcast against ``x`` (B, ...), in x's dtype."""
    c = torch.as_tensor(c, device=x.device)
    if c.ndim == 1:
        c = c.reshape(-1, *([1] * (x.ndim - 1)))
    return c.to(x.dtype)
