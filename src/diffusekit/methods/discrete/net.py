"""A small transformer over discrete tokens that outputs logits of p_theta(x0 | x_t, c) over K classes.

Token embedding (K + 1 rows, [MASK] = K) + fixed 2-D sin-cos positions over the token grid, then adaLN-Zero DiT blocks
(Peebles & Xie 2023, arXiv 2212.09748; ``diffusekit.nets.dit.DiTBlock``) conditioned on c = MLP(sin(t)) + E[class]
and, with ``context_dim`` set, cross-attention to caption tokens; a modulated LayerNorm and a zero-initialised
linear map give the logits (an untrained net predicts the uniform p(x0)). VQ-Diffusion (arXiv 2111.14822) uses
the same layout with a larger transformer.
"""

from __future__ import annotations

import torch
from torch import nn

from ...nets.dit import DiTBlock, FinalLayer, sincos_positions
from ...nets.embedding import TimeClassEmbedding, prepare_labels, prepare_time

__all__ = ["TokenTransformer"]


class TokenTransformer(nn.Module):
    """``forward(x_t (B, N) long, t (B,) network time, class_labels=None, context=None, context_mask=None,
    caption_tokens=None, caption_mask=None) -> logits (B, N, K)``; N = grid[0] * grid[1] tokens (row-major).

    Caption conditioning: give ``text_encoder`` (e.g. ``nets.text.TextEncoder``; its ``width`` becomes
    ``context_dim``) and call with ``caption_tokens``, ``caption_mask`` (``CaptionTokenizer().encode``); the encoder's
    hidden states are the cross-attention context, trained jointly. Or pass a precomputed ``context`` directly."""

    def __init__(self, num_classes: int, grid: tuple[int, int], *, hidden_size: int = 64, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 2.0, num_labels: int | None = 10,
                 context_dim: int | None = None, text_encoder: nn.Module | None = None):
        super().__init__()
        if text_encoder is not None:
            context_dim = int(text_encoder.width)
        self.text_encoder = text_encoder
        if grid[0] != grid[1]:
            raise ValueError(f"grid must be square, got {grid}")
        self.num_classes, self.grid, self.seq_len = num_classes, tuple(grid), grid[0] * grid[1]
        self.num_labels = num_labels
        self.config = {"num_classes": num_classes, "grid": list(grid), "hidden_size": hidden_size, "depth": depth,
                       "num_heads": num_heads, "mlp_ratio": mlp_ratio, "num_labels": num_labels,
                       "context_dim": context_dim}
        self.token = nn.Embedding(num_classes + 1, hidden_size)
        self.register_buffer("pos", sincos_positions(grid[0], hidden_size, 2)[None], persistent=False)
        self.embed = TimeClassEmbedding(256, hidden_size, num_labels)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, context_dim) for _ in range(depth))
        self.final = FinalLayer(hidden_size, num_classes)  # adaLN-modulated norm, zero-initialised logits

    def forward(self, x_t: torch.Tensor, t, class_labels=None, context=None, context_mask=None,
                caption_tokens=None, caption_mask=None) -> torch.Tensor:
        if caption_tokens is not None:
            if self.text_encoder is None:
                raise ValueError("caption_tokens were given but this network has no text_encoder")
            context, context_mask = self.text_encoder(caption_tokens, caption_mask)[0], caption_mask.bool()
        if x_t.dtype != torch.long or x_t.ndim != 2 or x_t.shape[1] != self.seq_len:
            raise ValueError(f"x_t must be long tokens (B, {self.seq_len}), got {x_t.dtype} {tuple(x_t.shape)}")
        h = self.token(x_t) + self.pos
        t = prepare_time(t, x_t.shape[0], h)
        c = self.embed(t, prepare_labels(class_labels, x_t.shape[0], self.num_labels, h.device))
        for block in self.blocks:
            h = block(h, c, context, context_mask)
        return self.final(h, c)
