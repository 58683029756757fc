"""EzAudio's denoiser at CPU scale: a 1-D DiT over log-mel frames with AdaLN-SOLA and masked-input channels.

Hai et al. 2024, "EzAudio: Enhancing Text-to-Audio Generation with Efficient Diffusion Transformer" (arXiv
2409.10819), §3.2-3.3. What is kept from the paper's UDiT and what is not:

* **Tokens.** The paper runs on a 1-D waveform-VAE latent (128 channels at 50 Hz); we use the frames of the compact
  log-mel image directly (64 mels, one token per 60-ms frame, ``domains.audio.text2audio.compact_mel_image``): the
  image is already small, so no autoencoder (patch size 1, as the paper).
* **Masked-input channels.** The token of frame j is ``Linear([x_t[:, j], c_known[:, j], m_j])`` (64 + 64 + 1 inputs):
  the noisy frame, the clean frame where it is known (a learned mask embedding where it is not) and the mask flag
  m_j (1 = to generate). With m = 1 everywhere the model is a plain text-to-audio generator.
* **AdaLN-SOLA.** DiT's adaLN-Zero (Peebles & Xie 2023, arXiv 2212.09748) gives every block its own
  Linear(D, 6D) on the time embedding c. EzAudio shares one modulation across blocks and adds a rank-r adapter per
  block: ``mod_l = W_shared SiLU(c) + B_l A_l SiLU(c)`` (A_l: D -> r, B_l: r -> 6D, B_l zero-initialised), which
  cuts the modulation parameters from depth * 6 D^2 to 6 D^2 + depth * r (D + 6 D).
* **Text.** Cross-attention in every block to the frozen caption encoder's hidden states (``nets.dit.CrossAttention``).
* Not kept: U-ViT long skips, qk-LayerNorm, GEGLU and RoPE (fixed sin-cos positions instead); our 4-block net is
  too shallow for long skips to matter and trains stably without qk-norm.

The blocks are ``nets.dit.DiTBlock`` (self-attention, cross-attention, MLP, adaLN-Zero gates) with the block's own
modulation replaced by the SOLA one, and ``nets.dit.FinalLayer``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nets.dit import DiTBlock, FinalLayer, positive_int, sincos_positions
from ..nets.embedding import TimeClassEmbedding, prepare_time

__all__ = ["SOLABlock", "EzAudioDiT"]


class SOLABlock(DiTBlock):
    """A ``DiTBlock`` whose six modulation vectors come from outside (AdaLN-SOLA) instead of its own adaLN layer.

    ``forward(h (B, N, D), modulation (B, 6D), context, context_mask)``; the modulation is chunked into
    (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) exactly as DiT's.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None):
        super().__init__(dim, num_heads, mlp_ratio, context_dim)
        del self.adaLN

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(m[:, None, :] for m in c.chunk(6, dim=1))


class EzAudioDiT(nn.Module):
    """``forward(x, t, context=None, context_mask=None, known=None, known_mask=None) -> v_hat`` over mel frames.

    Shapes: x (B, n_mels, frames) noisy mel frames; t (B,) network time; context (B, L, context_dim) and
    context_mask (B, L) bool: the encoded caption; known (B, n_mels, frames) the clean frames (values where
    known_mask = 0 are used, the rest is replaced by the mask embedding); known_mask (B, frames) in {0, 1},
    1 = frame to generate. ``known=None`` means nothing is known (known_mask = 1 everywhere).

    Per block l: ``mod_l = shared(SiLU(c)) + B_l(A_l(SiLU(c)))`` with c = MLP(sinusoidal(t)) (AdaLN-SOLA, rank
    ``adapter_rank``; ``adapter_rank=0`` turns the adapters off and every block uses the shared modulation only).
    """

    def __init__(self, n_mels: int = 64, frames: int = 32, hidden_size: int = 96, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 2.0, context_dim: int | None = 64, adapter_rank: int = 8):
        super().__init__()
        n_mels, frames = positive_int("n_mels", n_mels), positive_int("frames", frames)
        hidden_size, depth = positive_int("hidden_size", hidden_size), positive_int("depth", depth)
        num_heads = positive_int("num_heads", num_heads)
        adapter_rank = positive_int("adapter_rank", adapter_rank, 0)
        if hidden_size % num_heads != 0 or hidden_size % 2 != 0:
            raise ValueError(f"hidden_size {hidden_size} must be even and divisible by num_heads {num_heads}")
        self.config = {"name": "ezaudio_dit", "n_mels": n_mels, "frames": frames, "hidden_size": hidden_size,
                       "depth": depth, "num_heads": num_heads, "mlp_ratio": float(mlp_ratio),
                       "context_dim": context_dim, "adapter_rank": adapter_rank}
        self.n_mels, self.frames, self.context_dim = n_mels, frames, context_dim
        self.embed_in = nn.Linear(2 * n_mels + 1, hidden_size)
        self.mask_embedding = nn.Parameter(torch.zeros(n_mels))
        self.register_buffer("pos", sincos_positions(frames, hidden_size, 1)[None], persistent=False)
        self.time_embed = TimeClassEmbedding(256, hidden_size, None)
        self.shared_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        nn.init.zeros_(self.shared_modulation[1].weight)
        nn.init.zeros_(self.shared_modulation[1].bias)
        self.adapters = nn.ModuleList()
        if adapter_rank > 0:
            for _ in range(depth):
                adapter = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, adapter_rank, bias=False),
                                        nn.Linear(adapter_rank, 6 * hidden_size, bias=False))
                nn.init.zeros_(adapter[2].weight)
                self.adapters.append(adapter)
        self.blocks = nn.ModuleList(SOLABlock(hidden_size, num_heads, mlp_ratio, context_dim) for _ in range(depth))
        self.final = FinalLayer(hidden_size, n_mels)

    def tokens(self, x: torch.Tensor, known: torch.Tensor | None, known_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, n_mels, F) inputs -> (B, F, D) tokens from [x_t, known-or-mask-embedding, mask flag] + positions."""
        b = x.shape[0]
        if known is None:
            known = torch.zeros_like(x)
            known_mask = torch.ones(b, self.frames, dtype=x.dtype, device=x.device)
        elif known_mask is None or tuple(known_mask.shape) != (b, self.frames):
            raise ValueError(f"known_mask must be given with known, shape (B={b}, {self.frames})")
        if tuple(known.shape) != tuple(x.shape):
            raise ValueError(f"known must have x's shape {tuple(x.shape)}, got {tuple(known.shape)}")
        m = known_mask.to(x.dtype)[:, None, :]  # (B, 1, F)
        filled = known * (1 - m) + self.mask_embedding.to(x.dtype)[None, :, None] * m
        inputs = torch.cat([x, filled, m], dim=1).transpose(1, 2)  # (B, F, 2 n_mels + 1)
        return self.embed_in(inputs) + self.pos.to(x.dtype)

    def forward(self, x: torch.Tensor, t, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_tensor(x) or x.ndim != 3 or tuple(x.shape[1:]) != (self.n_mels, self.frames):
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.n_mels}, {self.frames}), got {got}")
        if self.context_dim is not None and context is None:
            raise ValueError("this network is text-conditional: pass context (B, L, context_dim) (the null caption "
                             "for unconditional outputs)")
        t = prepare_time(t, x.shape[0], x)
        c = self.time_embed(t, None)
        shared = self.shared_modulation(c)
        h = self.tokens(x, known, known_mask)
        for i, block in enumerate(self.blocks):
            modulation = shared + self.adapters[i](c) if len(self.adapters) else shared
            h = block(h, modulation, context if self.context_dim is not None else None, context_mask)
        return self.final(h, c).transpose(1, 2)
