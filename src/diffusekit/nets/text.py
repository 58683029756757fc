"""Caption tokenizer and a small transformer text encoder for the captioned digits.

``CaptionTokenizer`` is word-level over the closed vocabulary of :mod:`diffusekit.data.captioned` captions (plus
``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``); ``TextEncoder`` is a pre-LN transformer encoder (Vaswani et al. 2017,
arXiv 1706.03762; pre-LN placement as in GPT-2 / Xiong et al. 2020, arXiv 2002.04745) with learned positions and a
key-padding mask, pooled at the ``<eos>`` token as CLIP's text tower (Radford et al. 2021, arXiv 2103.00020).
The empty caption ``""`` encodes to ``<bos><eos>``: the null caption of classifier-free guidance.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CaptionTokenizer", "TextEncoder", "TransformerBlock", "caption_vocabulary", "SPECIAL_TOKENS"]

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>")
_WORD = re.compile(r"[a-z0-9]+")


def caption_vocabulary() -> list[str]:
    """The words of every caption template in :mod:`diffusekit.data.captioned`, sorted."""
    from ..data.captioned import COLOURS, THICKNESSES

    words = {"a", "the", "digit", "in", "on", "left", "right", "and", "to", "of"}
    words |= set(COLOURS) | set(THICKNESSES) | {str(d) for d in range(10)}
    return sorted(words)


class CaptionTokenizer:
    """Word-level tokenizer: lower-case, words = runs of ``[a-z0-9]`` (punctuation dropped), unknown words -> <unk>.

    Ids: 0 <pad>, 1 <unk>, 2 <bos>, 3 <eos>, then ``words`` in order. A caption becomes
    ``<bos> w_1 ... w_n <eos>`` followed by <pad> up to the batch length.
    """

    def __init__(self, words: list[str] | None = None):
        words = caption_vocabulary() if words is None else list(words)
        if len(set(words)) != len(words) or any(w in SPECIAL_TOKENS or not _WORD.fullmatch(w) for w in words):
            raise ValueError("words must be distinct lower-case [a-z0-9]+ strings, none of them a special token")
        self.words = words
        self.itos = list(SPECIAL_TOKENS) + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = range(4)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def config(self) -> dict:
        """JSON-serialisable constructor arguments: ``CaptionTokenizer(**tok.config())`` rebuilds it."""
        return {"words": list(self.words)}

    def ids(self, caption: str) -> list[int]:
        """``[<bos>, word ids..., <eos>]`` of one caption."""
        if not isinstance(caption, str):
            raise ValueError(f"a caption must be a string; got {type(caption).__name__}")
        body = [self.stoi.get(w, self.unk_id) for w in _WORD.findall(caption.lower())]
        return [self.bos_id, *body, self.eos_id]

    def encode(self, captions: list[str], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, L) int64, mask (B, L) bool, True on <bos>..<eos>); L = ``max_len`` or the longest caption.

        Raises ValueError if a caption needs more than ``max_len`` tokens (truncation would drop <eos>).
        """
        if isinstance(captions, str):
            captions = [captions]
        seqs = [self.ids(c) for c in captions]
        length = max((len(s) for s in seqs), default=2) if max_len is None else int(max_len)
        too_long = [c for c, s in zip(captions, seqs) if len(s) > length]
        if too_long:
            raise ValueError(f"caption {too_long[0]!r} needs more than max_len={length} tokens (with <bos>, <eos>)")
        tokens = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            tokens[i, :len(s)] = torch.tensor(s)
        return tokens, tokens != self.pad_id

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Captions of a (B, L) token tensor: words between <bos> and <eos>, joined by spaces."""
        out = []
        for row in tokens.tolist():
            words = [self.itos[i] for i in row if i not in (self.pad_id, self.bos_id, self.eos_id)]
            out.append(" ".join(words))
        return out


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: ``h = h + MHA(LN(h)); h = h + MLP(LN(h))`` with a key-padding mask.

    ``forward(h (B, L, D), mask (B, L) bool True=keep) -> (B, L, D)``; masked keys get zero attention weight.
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width ({width}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def attention(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L) broadcast over heads, queries
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, L, d_head)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = h + self.attention(self.norm1(h), mask)
        return h + self.mlp(self.norm2(h))


class TextEncoder(nn.Module):
    """Token embedding + learned positions -> ``depth`` pre-LN blocks -> final LayerNorm.

    ``forward(tokens (B, L), mask (B, L) bool True=keep) -> (hidden (B, L, width), pooled (B, width))``: ``hidden``
    is zero at padding, ``pooled`` the hidden state of the last kept token (<eos>), as CLIP's text tower pools its
    end-of-text token (Radford et al. 2021, arXiv 2103.00020). Padding never changes the kept tokens' outputs.
    """

    def __init__(self, vocab_size: int, width: int = 64, depth: int = 2, num_heads: int = 4, max_len: int = 32,
                 mlp_ratio: float = 4.0):
        super().__init__()
        for name, v in (("vocab_size", vocab_size), ("width", width), ("depth", depth), ("num_heads", num_heads),
                        ("max_len", max_len)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.config = {"name": "text_encoder", "vocab_size": vocab_size, "width": width, "depth": depth,
                       "num_heads": num_heads, "max_len": max_len, "mlp_ratio": float(mlp_ratio)}
        self.width, self.max_len = width, max_len
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.randn(max_len, width) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(width, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        for block in self.blocks:  # GPT-2 style: scale residual projections by 1/sqrt(2 depth)
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * depth))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, token_embeddings: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``token_embeddings`` (B, L, width), optional: used instead of ``token_embedding(tokens)`` (soft prompts,
        CoOp, Zhou et al. 2022, arXiv 2109.01134); ``tokens`` then only fixes the shape."""
        if tokens.ndim != 2 or mask.shape != tokens.shape:
            raise ValueError(f"tokens and mask must both be (B, L); got {tuple(tokens.shape)} and {tuple(mask.shape)}")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len={self.max_len}")
        mask = mask.bool()
        if token_embeddings is not None and token_embeddings.shape != (*tokens.shape, self.width):
            raise ValueError(f"token_embeddings must be (B, L, {self.width}) = tokens' shape + width; "
                             f"got {tuple(token_embeddings.shape)}")
        embedded = self.token_embedding(tokens) if token_embeddings is None else token_embeddings
        h = embedded + self.position_embedding[:tokens.shape[1]]
        for block in self.blocks:
            h = block(h, mask)
        h = self.norm(h) * mask[..., None]
        last = mask.long().sum(1).clamp(min=1) - 1  # index of <eos>: masks are contiguous from <bos>
        pooled = h[torch.arange(len(h)), last]
        return h, pooled
