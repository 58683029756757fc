"""CDCD: Discrete Contrastive Diffusion (Zhu, Wu, Olszewski, Ren, Tulyakov & Yan, ICLR 2023, arXiv 2206.07771).

On top of the discrete VB objective (``methods.discrete.MaskReplaceDiffusion``), CDCD pushes the conditional model
p_theta(. | x_t, c) away from negative samples x0^neg that do not match the condition c, which the paper derives as a
lower bound on the mutual information between c and the output (a contrastive, InfoNCE-style bound; Sec. 3):

    step-wise (parallel):  L = L_vb - lambda_c w_t mean_k KL(q(x_{t-1} | x_t, x0^neg_k) || p_theta(x_{t-1} | x_t, c))
    sample-wise (aux.):    L = L_vb - lambda_c w_t mean_k KL(x0^neg_k || p_theta(x0 | x_t, c))

with x_t the noised positive, w_t = 1 + t / T (the adaptive weight of the reference code) and, at t = 1, the decoder
term -log p_theta(x0^neg | x_1) in both modes (as the reference ``_train_loss`` does). Negatives:

* intra: the sample's own token sequence cut into 8 contiguous chunks whose order is shuffled (the reference's
  ``shift_time(x, "random")``; for a digit token grid, rows or half-rows swapped);
* inter: training samples of another class (CDCD draws them from precomputed lists of non-matching pairs).

The sign pushes p_theta *away* from the negatives, so the term is unbounded below (a KL can grow without limit).
The paper keeps lambda_c tiny (5e-5); we also bound it: each token's negative KL is clipped at ``margin`` nats
(default log K, the KL of the uniform prediction from a one-hot), i.e. the push stops for a token once the model
gives the negative less than chance probability, and the term can subtract at most lambda_c w_t margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..training import TrainConfig, Trainer
from .discrete import MaskReplaceDiffusion, categorical_kl

__all__ = ["MODES", "NEGATIVES", "CDCDLoss", "chunk_shuffle", "inter_class_negatives", "contrastive_kl",
           "train_discrete", "sample_tokens"]

MODES = ("step", "sample")
NEGATIVES = ("intra", "inter")


def chunk_shuffle(x0: torch.Tensor, generator=None, *, num_chunks: int = 8) -> torch.Tensor:
    """Intra negative of each sequence (B, N): cut into ``num_chunks`` contiguous chunks (N divisible by it) and put
    them back in a random order that is not the identity (CDCD's chunk-permuted sequence)."""
    b, n = x0.shape
    if num_chunks < 2 or n % num_chunks:
        raise ValueError(f"sequence length {n} must be divisible by num_chunks = {num_chunks} >= 2")
    size = n // num_chunks
    keys = torch.rand(b, num_chunks, generator=generator)
    order = keys.argsort(-1)
    ident = torch.arange(num_chunks)
    fixed = (order == ident).all(-1)
    order[fixed] = order[fixed].roll(1, dims=-1)  # a permutation that moves every chunk
    index = (order[:, :, None] * size + torch.arange(size)).reshape(b, n).to(x0.device)
    return x0.gather(1, index)


def inter_class_negatives(labels: torch.Tensor, pool_tokens: torch.Tensor, pool_labels: torch.Tensor,
                          num_negatives: int, generator=None) -> torch.Tensor:
    """(num_negatives, B, N) token sequences drawn uniformly from the pool among those whose label differs from
    ``labels[b]`` (inter negatives)."""
    other = pool_labels[None, :] != labels[:, None]                            # (B, P)
    if not bool(other.any(-1).all()):
        raise ValueError("every example needs at least one pool sample of another class")
    weights = other.to(torch.float64)
    pick = torch.multinomial(weights, num_negatives, replacement=True, generator=generator)  # (B, n)
    return pool_tokens[pick.T]


def contrastive_kl(process: MaskReplaceDiffusion, terms: dict, negatives: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-token divergence of the model from each negative, (n, B, N).

    ``mode="step"``: KL(q(x_{t-1} | x_t, x0^neg) || p_theta(x_{t-1} | x_t, c)); ``"sample"``: KL(x0^neg || p_theta(x0 |
    x_t, c)) = -log p_theta(x0^neg | x_t, c). At t = 1 both are -log p_theta(x0^neg | x_1) (the decoder term)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    t, x_t, model_post = terms["t"], terms["x_t"], terms["model_posterior"]
    out = []
    for neg in negatives:
        if mode == "step":
            kl = categorical_kl(process.true_posterior(x_t, neg, t), model_post)
        else:
            kl = -terms["log_x0"].gather(-1, neg[..., None])[..., 0]
            decoder = -model_post.clamp_min(1e-30).log().gather(-1, neg[..., None])[..., 0]
            kl = torch.where((t == 1)[:, None], decoder, kl)
        out.append(kl)
    return torch.stack(out)


class CDCDLoss:
    """Per-example CDCD training loss ``loss(model, (tokens, labels), generator) -> (B,)`` for ``Trainer``.

    L = L_vb + lambda_aux w_t CE(x0, p_theta(x0 | x_t, c)) - lambda_c w_t mean_k mean_tokens min(KL_neg, margin),
    w_t = 1 + t / T; ``lambda_c = 0`` is exactly ``process.vb_loss`` (VQ-Diffusion's loss with uniform t and
    unit mask weights). The batch is (tokens, labels, *extra);
    ``condition(batch) -> dict`` gives the model's conditioning keywords (default ``{"class_labels": labels}``; for
    captions e.g. ``lambda b: {"caption_tokens": b[2], "caption_mask": b[3]}`` with ``labels`` an id of the caption's
    content, so inter negatives are samples of other captions). ``pool``: (tokens, labels) to draw inter negatives
    from (the training set)."""

    def __init__(self, process: MaskReplaceDiffusion, *, lambda_c: float = 0.0, mode: str = "step",
                 negatives: str = "intra", num_negatives: int = 10, num_chunks: int = 8, margin: float | None = None,
                 aux_weight: float = 5e-4, adaptive_aux: bool = True,
                 pool: Sequence[torch.Tensor] | None = None, condition=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        if lambda_c < 0 or num_negatives < 1:
            raise ValueError("lambda_c must be >= 0 and num_negatives >= 1")
        if negatives == "inter" and lambda_c > 0 and pool is None:
            raise ValueError("inter negatives need pool=(tokens, labels)")
        self.process, self.lambda_c, self.mode, self.negatives = process, float(lambda_c), mode, negatives
        self.num_negatives, self.num_chunks = int(num_negatives), int(num_chunks)
        self.margin = math.log(process.num_classes) if margin is None else float(margin)
        self.aux_weight, self.adaptive_aux = float(aux_weight), bool(adaptive_aux)
        self.pool = pool
        self.condition = condition if condition is not None else (lambda batch: {"class_labels": batch[1]})
        self.config = {"lambda_c": self.lambda_c, "mode": mode, "negatives": negatives,
                       "num_negatives": self.num_negatives, "num_chunks": self.num_chunks, "margin": self.margin,
                       "aux_weight": self.aux_weight, "adaptive_aux": self.adaptive_aux}

    def make_negatives(self, x0: torch.Tensor, labels: torch.Tensor, generator=None) -> torch.Tensor:
        """(num_negatives, B, N) negatives of the configured kind."""
        if self.negatives == "intra":
            return torch.stack([chunk_shuffle(x0, generator, num_chunks=self.num_chunks)
                                for _ in range(self.num_negatives)])
        return inter_class_negatives(labels, self.pool[0], self.pool[1], self.num_negatives, generator)

    def __call__(self, model, batch, generator=None) -> torch.Tensor:
        x0, labels = batch[0], batch[1]
        terms = self.process.loss_terms(model, x0, generator, **self.condition(batch))
        loss = self.process.vb_loss(terms, aux_weight=self.aux_weight, adaptive_aux=self.adaptive_aux)
        if self.lambda_c == 0:
            return loss.float()
        neg = contrastive_kl(self.process, terms, self.make_negatives(x0, labels, generator), self.mode)
        w = 1.0 + terms["t"].to(torch.float64) / self.process.num_steps
        push = neg.clamp_max(self.margin).mean(-1).mean(0)                     # (B,)
        return (loss - self.lambda_c * w * push).float()


def train_discrete(net: torch.nn.Module, loss_fn, tokens: torch.Tensor, labels: torch.Tensor, *extra: torch.Tensor,
                   steps: int, seed: int = 0, batch_size: int = 64, lr: float = 1e-3, max_seconds: float | None = None,
                   progress: bool = False):
    """Train ``net`` with ``loss_fn(model, (tokens, labels, *extra), generator)`` (AdamW, 50-step warm-up, grad clip
    1, no EMA) with the shared ``Trainer``; returns (net in eval mode, {"steps", "seconds"})."""
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps), ema_decay=None,
                      seed=seed, max_seconds=max_seconds, progress=progress, log_every=10 ** 9)
    hist = Trainer(net, loss_fn, (tokens, labels, *extra), cfg).fit()
    net.eval()
    return net, {"steps": int(hist.get("step", steps)), "seconds": float(hist.get("seconds", float("nan")))}


@torch.no_grad()
def sample_tokens(process: MaskReplaceDiffusion, net: torch.nn.Module, labels: torch.Tensor | None,
                  seeds: Sequence[int], seq_len: int, **cond) -> torch.Tensor:
    """Conditional ancestral samples (B, N), one generator per sample seeded by ``seeds`` (batch invariant);
    ``labels`` are class labels (None for caption conditioning through ``**cond``)."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    if labels is not None:
        cond["class_labels"] = labels
    return process.sample(net, len(gens), seq_len, gens, **cond)
