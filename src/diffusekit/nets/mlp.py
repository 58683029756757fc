"""Residual MLP denoiser for low-dimensional vectors (toy 2-D data, GMMs, features)."""

from __future__ import annotations

import torch
from torch import nn

from .embedding import TimeClassEmbedding, prepare_labels, prepare_time

__all__ = ["MLPDenoiserNet"]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class _ResidualMLPBlock(nn.Module):
    """``h <- h + W2 SiLU(W1 LayerNorm(h) + P e)`` where ``e`` is the conditioning vector."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.fc1(self.norm(h)) + self.emb_proj(emb)
        return h + self.fc2(self.act(z))


class MLPDenoiserNet(nn.Module):
    """Residual MLP ``f(x, t, c)`` for vector data.

    Computation (B = batch)::

        e  = SiLU(MLP(sinusoidal(t, time_embed_dim)) + E[c])    # (B, hidden)
        h  = W_in x                                               # (B, hidden)
        h  = h + W2 SiLU(W1 LN(h) + P e)        (depth times)
        y  = W_out SiLU(LN(h))                                    # (B, dim), W_out zero-init

    The output layer is zero-initialised, so an untrained net outputs 0 for every input.

    Args:
        dim: data dimension; input and output have shape (B, dim).
        hidden: width of the residual stream.
        depth: number of residual blocks.
        time_embed_dim: width of the sinusoidal time embedding (max period 10000).
        num_classes: None (unconditional) or number of classes; the table has
            ``num_classes + 1`` rows, row ``num_classes`` being the null class.

    ``forward(x, t, class_labels=None)``: x (B, dim); t float (B,) or scalar network time
    (roughly [-2000, 2000]); class_labels long (B,) in [0, num_classes] or None (= all null).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, time_embed_dim: int = 64,
                 num_classes: int | None = None):
        super().__init__()
        dim = _check_int("dim", dim, 1)
        hidden = _check_int("hidden", hidden, 1)
        depth = _check_int("depth", depth, 0)
        time_embed_dim = _check_int("time_embed_dim", time_embed_dim, 2)
        if num_classes is not None:
            num_classes = _check_int("num_classes", num_classes, 1)
        self.config = {
            "name": "mlp",
            "dim": dim,
            "hidden": hidden,
            "depth": depth,
            "time_embed_dim": time_embed_dim,
            "num_classes": num_classes,
        }
        self.dim = dim
        self.num_classes = num_classes
        self.embed = TimeClassEmbedding(time_embed_dim, hidden, num_classes)
        self.emb_act = nn.SiLU()
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([_ResidualMLPBlock(hidden, hidden) for _ in range(depth)])
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.dim}), got {shape}")
        batch = x.shape[0]
        t = prepare_time(t, batch, x)
        labels = prepare_labels(class_labels, batch, self.num_classes, x.device)
        emb = self.emb_act(self.embed(t, labels))
        h = self.input(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(torch.nn.functional.silu(self.out_norm(h)))
