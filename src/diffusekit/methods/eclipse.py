"""λ-ECLIPSE: a non-diffusion prior from text + subject images to a CLIP image embedding, for personalisation.

ECLIPSE (Patel et al. 2024, "ECLIPSE: A Resource-Efficient Text-to-Image Prior for Image Generations",
arXiv 2312.04655) replaces unCLIP's diffusion prior by one forward pass of a transformer g (no time embedding,
no iterative sampling) trained with

    L = || g(c) - z_img ||^2 + λ InfoNCE(g(c), z_txt)                                               (ECLIPSE eq. 3-4)

over a batch: z_img the frozen CLIP image embedding of the target image, z_txt the frozen CLIP text embedding of
its caption, InfoNCE the symmetric contrastive loss of CLIP (Radford et al. 2021, arXiv 2103.00020) between the
predicted image embeddings and the text embeddings (λ ≈ 0.2). λ-ECLIPSE (Patel et al. 2024, arXiv 2402.05195)
personalises this prior: in the prompt's token sequence the subject word (here the digit word, e.g. "3") is
REPLACED by a projection of the CLIP image embedding of a subject image ("image-text interleaved" input), so
one forward pass maps (text, subject images) to the embedding a frozen unCLIP decoder
(``methods.eclipse_decoder``) turns into an image.

Our instance on the captioned digits (``data.captioned``) with the zoo's small CLIP (``captions_clip``):

* Interleaving (``EclipsePrior.encode_prompt``): the CLIP text tower's input word embeddings at the digit-word
  positions are replaced by ``P f_img(subject)`` (P learned, f_img frozen) through the tower's
  ``token_embeddings=`` hook; the tower (frozen) then gives hidden states h (B, L, D) and the text embedding.
* Prior (``EclipsePrior``): a pre-LN transformer over [h_1..h_L ; W z_txt' ; q] (z_txt' the interleaved prompt's
  CLIP text embedding, q a learned query), output ``normalize(W_o LN(q_out))``: one forward pass, no time input.
  ECLIPSE's prior also receives a noise vector; under a mean-squared objective its optimum ignores it, so ours
  is a deterministic map.
* Training pairs (``recipes_eclipse``): target image + its caption; the subject of a digit word is the SAME
  digit instance as in the target, re-rendered alone, centred, in a random colour and stroke (as λ-ECLIPSE cuts
  its subjects out of the target image), so colour and position must come from the text and identity from the
  subject. A fraction of captions keep all their words (the plain text-to-embedding prior).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.text import TransformerBlock

__all__ = ["EclipsePrior", "eclipse_prior_loss", "contrastive_term", "subject_slots", "DIGIT_WORDS"]

DIGIT_WORDS: tuple[str, ...] = tuple(str(d) for d in range(10))


def subject_slots(tokens: torch.Tensor, tokenizer, words=DIGIT_WORDS) -> torch.Tensor:
    """(B, L) int64: ``s`` at the position of the s-th subject word (a digit word) of each caption, -1 elsewhere.

    Subjects are numbered in reading order, so the s-th subject image goes to the s-th digit word of the prompt.
    """
    ids = torch.tensor([tokenizer.stoi[w] for w in words])
    is_subject = torch.isin(tokens, ids)
    order = is_subject.long().cumsum(1) - 1
    return torch.where(is_subject, order, torch.full_like(order, -1))


def contrastive_term(pred: torch.Tensor, text_emb: torch.Tensor, logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Per-example symmetric InfoNCE between predicted image embeddings and text embeddings (B,).

    ``logits = exp(s) pred @ text_emb^T`` (B, B); example i's term is
    ``(CE(logits[i], i) + CE(logits^T[i], i)) / 2`` (ECLIPSE, arXiv 2312.04655, eq. 4, the CLIP loss of Radford
    et al. 2021, arXiv 2103.00020, Fig. 3); its batch mean equals ``nets.clip.clip_loss``. Inputs L2-normalised.
    """
    scale = torch.as_tensor(logit_scale, dtype=pred.dtype).exp()
    logits = scale * pred @ text_emb.t()
    target = torch.arange(len(pred), device=pred.device)
    return (F.cross_entropy(logits, target, reduction="none")
            + F.cross_entropy(logits.t(), target, reduction="none")) / 2


def eclipse_prior_loss(pred: torch.Tensor, target: torch.Tensor, text_emb: torch.Tensor, lam: float,
                       logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Per-example ECLIPSE loss (arXiv 2312.04655, eq. 3-4): ``|| g(c)_i - z_img,i ||^2 + λ InfoNCE_i``.

    ``pred`` (B, E) the prior's L2-normalised output, ``target`` (B, E) the frozen CLIP image embeddings, ``text_emb``
    (B, E) the frozen CLIP text embeddings of the captions, ``lam`` = λ >= 0. With λ = 0 the contrastive term is not
    computed, so it contributes no gradient.
    """
    if lam < 0:
        raise ValueError(f"lam (λ) must be >= 0; got {lam}")
    mse = ((pred - target) ** 2).sum(1)
    if lam == 0:
        return mse
    return mse + lam * contrastive_term(pred, text_emb, logit_scale)


class EclipsePrior(nn.Module):
    """The λ-ECLIPSE prior (Patel et al. 2024, arXiv 2402.05195; ECLIPSE arXiv 2312.04655): no time input.

    ``forward(hidden (B, L, D_t), mask (B, L) bool, text_emb (B, E)) -> (B, E)`` L2-normalised: tokens
    ``[W_h h_1, ..., W_h h_L, W_t text_emb, q]`` (padding masked), ``depth`` pre-LN transformer blocks, the query's
    output through LayerNorm and ``W_o``, normalised. ``subject_projection`` (E -> D_t) maps a subject's CLIP image
    embedding to a word embedding of the CLIP text tower (``encode_prompt``).
    """

    def __init__(self, text_width: int = 64, embed_dim: int = 64, width: int = 64, depth: int = 3,
                 num_heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        self.config = {"text_width": text_width, "embed_dim": embed_dim, "width": width, "depth": depth,
                       "num_heads": num_heads, "mlp_ratio": float(mlp_ratio)}
        self.subject_projection = nn.Linear(embed_dim, text_width)
        self.hidden_in, self.text_in = nn.Linear(text_width, width), nn.Linear(embed_dim, width)
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(width, num_heads, mlp_ratio) for _ in range(depth))
        self.norm, self.out = nn.LayerNorm(width), nn.Linear(width, embed_dim)
        for block in self.blocks:
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * depth))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        b = hidden.shape[0]
        h = torch.cat([self.hidden_in(hidden), self.text_in(text_emb)[:, None], self.query.expand(b, -1, -1)], 1)
        keep = torch.cat([mask.bool(), torch.ones(b, 2, dtype=torch.bool, device=mask.device)], 1)
        for block in self.blocks:
            h = block(h, keep)
        return F.normalize(self.out(self.norm(h[:, -1])), dim=-1)

    def encode_prompt(self, clip, tokens: torch.Tensor, mask: torch.Tensor, subject_embeddings: torch.Tensor | None,
                      slots: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The interleaved prompt under the frozen CLIP text tower: (hidden (B, L, D_t), text_emb (B, E)).

        Word embeddings ``e_j = E[token_j]``, except ``e_j = P subject_embeddings[b, slots[b, j]]`` where
        ``slots >= 0`` (λ-ECLIPSE's subject-token replacement); ``subject_embeddings`` (B, S, E) are CLIP image
        embeddings of the subject images. Gradients reach P through the frozen tower.
        """
        encoder = clip.text_encoder
        words = encoder.token_embedding(tokens)  # (B, L, D_t)
        if subject_embeddings is not None and slots is not None and bool((slots >= 0).any()):
            if int(slots.max()) >= subject_embeddings.shape[1]:
                raise ValueError(f"a prompt has {int(slots.max()) + 1} subject words but only "
                                 f"{subject_embeddings.shape[1]} subject embeddings were given")
            projected = self.subject_projection(subject_embeddings)  # (B, S, D_t)
            picked = torch.gather(projected, 1, slots.clamp(min=0)[..., None].expand(-1, -1, words.shape[-1]))
            words = torch.where((slots >= 0)[..., None], picked, words)
        hidden, pooled = encoder(tokens, mask, token_embeddings=words)
        return hidden, F.normalize(clip.text_projection(pooled), dim=-1)

    def embed(self, clip, tokens: torch.Tensor, mask: torch.Tensor, subject_embeddings: torch.Tensor | None = None,
              slots: torch.Tensor | None = None) -> torch.Tensor:
        """One forward pass: interleaved prompt -> predicted CLIP image embedding (B, E)."""
        hidden, text_emb = self.encode_prompt(clip, tokens, mask, subject_embeddings, slots)
        return self(hidden, mask, text_emb)


class EclipsePriorLoss:
    """``Trainer`` loss for the prior: batch = (tokens, mask, slots, subject_embeddings (B, S, E), z_img (B, E),
    z_txt (B, E)); returns ``eclipse_prior_loss`` per example with the frozen CLIP's logit scale."""

    def __init__(self, clip, lam: float):
        if lam < 0:
            raise ValueError(f"lam (λ) must be >= 0; got {lam}")
        self.clip = clip.eval().requires_grad_(False)
        self.lam = float(lam)
        self.logit_scale = float(clip.logit_scale.detach().clamp(max=math.log(100)))

    def __call__(self, prior: EclipsePrior, batch, generator=None) -> torch.Tensor:
        tokens, mask, slots, subjects, z_img, z_txt = batch
        pred = prior.embed(self.clip, tokens, mask, subjects, slots)
        return eclipse_prior_loss(pred, z_img, z_txt, self.lam, self.logit_scale)


__all__ += ["EclipsePriorLoss"]
