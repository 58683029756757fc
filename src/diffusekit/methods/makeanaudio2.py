"""Make-An-Audio 2 (Huang et al. 2023, "Make-An-Audio 2: Temporal-Enhanced Text-to-Audio Generation", arXiv
2305.18474): structured captions for temporal order, two text encoders, an in-context DiT over (latent) frames.

* **Structured captions** (paper §3.1): "<event& order>@<event& order>" lists the events in time order with a place
  word (start / mid / end / all); our clips carry it (``domains.audio.events.SoundClip.structured``). The paper
  parses natural captions with an LLM; ours are generated with the clip.
* **Dual text encoders** (§3.2): the natural caption goes through one frozen encoder (CLAP in the paper), the
  structured caption through another (T5); each is projected by its own MLP, and the projected tokens condition the
  denoiser. Ours are two differently seeded frozen ``TextEncoder``s over the same tokenizer
  (``text2audio.frozen_text_encoder``).
* **In-context DiT for variable-length audio** (§3.3; ConcatDiT): a transformer over the token sequence
  ``[time token, MLP_1(c_plain), MLP_2(c_structured), frame tokens]`` with full self-attention (text padding masked
  out); the noisy frames (the paper: 1-D VAE latents; ours: the 64-band compact mel frames, one token per 60 ms)
  are embedded by a linear layer with sin-cos positions, and only the frame tokens are read out. Nothing depends
  on the number of frames, so one network generates any length.
* Training: v prediction (see ``DualCaptionLoss``) on the linear VP schedule (T = 1000), both captions dropped
  together with probability 0.1 (Ho & Salimans 2022, arXiv 2207.12598); sampling: DDIM with CFG on the pair of
  null captions.

The baseline is the same network trained and sampled with unordered captions (``text2audio.unordered_caption``
in both slots: which events, not their order). Measured: event-order accuracy from a frame-level event classifier
(``FrameEventClassifier``) on the generated mel frames.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core import VPDiscrete
from ..core import noise
from ..core._tensor import per_sample
from ..core.denoiser import NetworkDenoiser
from ..core.grids import grid_uniform
from ..core.predictions import prediction_from_x0_eps
from ..domains.audio.text2audio import FRAME_SECONDS, FRAMES, audio_tokenizer, frozen_text_encoder, train_net
from ..nets.dit import _sincos_1d
from ..nets.embedding import timestep_embedding
from ..nets.text import TransformerBlock
from ..samplers import get_sampler
from ..training.losses import DiffusionLoss, _per_example, loss_weight, sample_times
from .guidance import GuidedDenoiser
from .thresholding import StaticThresholdDenoiser

__all__ = ["InContextDiT", "DualNullCaption", "DualCaptionDenoiser", "DualCaptionLoss", "train_makeanaudio2",
           "sample_mel_frames", "FrameEventClassifier", "event_order_correct"]


def _mlp(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, cout), nn.GELU(), nn.Linear(cout, cout))


class InContextDiT(nn.Module):
    """Make-An-Audio 2's in-context (concatenation) DiT: ``forward(x (B, n_mels, F), t (B,), context (B, L1, C),
    context_mask (B, L1), structured (B, L2, C), structured_mask (B, L2)) -> (B, n_mels, F)``.

    Tokens: h = [e_t ; MLP_1(context) + s_1 ; MLP_2(structured) + s_2 ; W x_f + pos(f) + s_3], with
    e_t = MLP(sinusoidal(t)) and learned segment embeddings s_k; ``depth`` pre-LN transformer blocks
    (``nets.text.TransformerBlock``) with a key-padding mask over the text tokens; output = zero-initialised linear
    read-out of the frame tokens. Any F works (sin-cos positions are computed for the call's length).
    """

    def __init__(self, n_mels: int = 64, context_dim: int = 64, hidden_size: int = 128, depth: int = 4,
                 num_heads: int = 4):
        super().__init__()
        self.config = {"name": "incontext_dit", "n_mels": n_mels, "context_dim": context_dim,
                       "hidden_size": hidden_size, "depth": depth, "num_heads": num_heads}
        self.hidden_size = hidden_size
        self.time_mlp = _mlp(hidden_size, hidden_size)
        self.plain_mlp, self.structured_mlp = _mlp(context_dim, hidden_size), _mlp(context_dim, hidden_size)
        self.segment = nn.Parameter(torch.zeros(3, hidden_size))
        self.frame_in = nn.Linear(n_mels, hidden_size)
        self.blocks = nn.ModuleList(TransformerBlock(hidden_size, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden_size)
        self.frame_out = nn.Linear(hidden_size, n_mels)
        nn.init.zeros_(self.frame_out.weight)
        nn.init.zeros_(self.frame_out.bias)

    def forward(self, x: torch.Tensor, t, context: torch.Tensor, context_mask: torch.Tensor,
                structured: torch.Tensor, structured_mask: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.config["n_mels"]:
            raise ValueError(f"x must be (B, {self.config['n_mels']}, F); got {tuple(x.shape)}")
        b, _, frames = x.shape
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(b) if torch.as_tensor(t).ndim == 0 else t
        time_token = self.time_mlp(timestep_embedding(t.to(x.dtype), self.hidden_size))[:, None]  # (B, 1, D)
        plain = self.plain_mlp(context.to(x.dtype)) + self.segment[0]  # (B, L1, D)
        struct = self.structured_mlp(structured.to(x.dtype)) + self.segment[1]  # (B, L2, D)
        pos = _sincos_1d(torch.arange(frames, device=x.device), self.hidden_size).to(x.dtype)
        frame_tokens = self.frame_in(x.transpose(1, 2)) + pos + self.segment[2]  # (B, F, D)
        h = torch.cat([time_token, plain, struct, frame_tokens], dim=1)
        keep = torch.ones(b, 1, dtype=torch.bool, device=x.device)
        mask = torch.cat([keep, context_mask.bool(), structured_mask.bool(), keep.expand(b, frames)], dim=1)
        for block in self.blocks:
            h = block(h, mask)
        return self.frame_out(self.norm(h[:, -frames:])).transpose(1, 2)  # (B, n_mels, F)


class DualNullCaption:
    """``null_condition`` for ``GuidedDenoiser``: both captions replaced by the encoded empty caption (padded,
    masked) — the unconditional branch of CFG over the pair (plain, structured)."""

    def __init__(self, plain_null: dict, structured_null: dict):
        self.plain, self.structured = plain_null, structured_null

    @staticmethod
    def _pad(null: dict, like: torch.Tensor, like_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept = int(null["context_mask"].sum())
        if like.shape[1] < kept:
            raise ValueError(f"context length {like.shape[1]} is shorter than the null caption's {kept} tokens")
        ctx, mask = torch.zeros_like(like), torch.zeros_like(like_mask, dtype=torch.bool)
        ctx[:, :kept] = null["context"][:, :kept].to(like)
        mask[:, :kept] = True
        return ctx, mask

    def __call__(self, cond: dict) -> dict:
        c1, m1 = self._pad(self.plain, cond["context"], cond["context_mask"])
        c2, m2 = self._pad(self.structured, cond["structured"], cond["structured_mask"])
        return {"context": c1, "context_mask": m1, "structured": c2, "structured_mask": m2}


def _encode(tokenizer, encoder, captions: list[str]) -> dict:
    tokens, mask = tokenizer.encode(list(captions), max_len=encoder.max_len)
    with torch.no_grad():
        hidden, _ = encoder(tokens, mask)
    return {"context": hidden, "context_mask": mask}


class DualCaptionDenoiser(NetworkDenoiser):
    """``NetworkDenoiser`` of an ``InContextDiT`` with its tokenizer and two frozen encoders.
    ``condition(plain, structured) -> cond``; ``null_condition`` (``DualNullCaption``)."""

    def __init__(self, net, schedule, prediction: str = "eps", *, tokenizer, plain_encoder, structured_encoder):
        super().__init__(net, schedule, prediction)
        self.tokenizer, self.plain_encoder, self.structured_encoder = tokenizer, plain_encoder, structured_encoder
        self.null_condition = DualNullCaption(_encode(tokenizer, plain_encoder, [""]),
                                              _encode(tokenizer, structured_encoder, [""]))

    def condition(self, plain: list[str], structured: list[str]) -> dict:
        """{"context", "context_mask"} of the plain captions, {"structured", "structured_mask"} of the others."""
        if len(plain) != len(structured):
            raise ValueError(f"need one structured caption per caption; got {len(plain)} and {len(structured)}")
        a = _encode(self.tokenizer, self.plain_encoder, plain)
        b = _encode(self.tokenizer, self.structured_encoder, structured)
        return {**a, "structured": b["context"], "structured_mask": b["context_mask"]}


class DualCaptionLoss(DiffusionLoss):
    """Per-example loss with two captions (a ``Trainer`` loss). Batch = ``(x0 (B, n_mels, F), plain tokens, plain
    mask, structured tokens, structured mask)``:

        L_i = w(t_i) mean_j (F_theta(x_t, t_i, tau_1(y'_i), tau_2(s'_i))_j - target_j)^2,

    where (y', s') = ("", "") with probability ``caption_dropout`` (one coin for both, so the null pair is the
    unconditional model of CFG), tau_1, tau_2 the frozen encoders, F the network's ``prediction`` (default "v":
    target v = alpha_t eps - sigma_t x0, Salimans & Ho 2022 arXiv 2202.00512). Draws: t, eps, then the dropout coins.

    Why v and not eps: in x0 terms the eps loss weighs errors by alpha_t^2 / sigma_t^2, nearly 0 at the high noise
    levels where the event order is decided (the frames are invisible there, only the text can tell), while the v
    loss weighs them by 1 / sigma_t^2 >= 1. With eps the full bench's structured model stayed at chance order
    accuracy after 1500 steps (0.57 vs 0.50 unordered).
    """

    def __init__(self, schedule, tokenizer, plain_encoder, structured_encoder, *, caption_dropout: float = 0.1,
                 prediction: str = "v"):
        if not 0 <= caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1); got {caption_dropout}")
        super().__init__(schedule, prediction)
        self.tokenizer, self.caption_dropout = tokenizer, float(caption_dropout)
        self.plain_encoder, self.structured_encoder = plain_encoder, structured_encoder
        self.null_tokens, self.null_mask = tokenizer.encode([""])

    def _drop(self, tokens, mask, drop):
        null_tokens = torch.full_like(tokens, self.tokenizer.pad_id)
        null_mask = torch.zeros_like(mask, dtype=torch.bool)
        kept = self.null_tokens.shape[1]
        null_tokens[:, :kept], null_mask[:, :kept] = self.null_tokens, self.null_mask
        return torch.where(drop, null_tokens, tokens), torch.where(drop, null_mask, mask.bool())

    def __call__(self, net, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x0, tok1, mask1, tok2, mask2 = batch
        b = x0.shape[0]
        t = sample_times(self.schedule, b, generator, method=self.time_sampling).to(x0.device)
        eps = noise.randn(x0.shape, generator, dtype=x0.dtype).to(x0.device)
        x_t = self.schedule.add_noise(x0, t, eps)
        drop = (_per_example(generator, b, lambda n, g: torch.rand(n, generator=g)) < self.caption_dropout)[:, None]
        tok1, mask1 = self._drop(tok1, mask1, drop)
        tok2, mask2 = self._drop(tok2, mask2, drop)
        with torch.no_grad():
            c1, _ = self.plain_encoder(tok1, mask1)
            c2, _ = self.structured_encoder(tok2, mask2)
        out = self.denoiser(net).raw(x_t, t, context=c1, context_mask=mask1, structured=c2, structured_mask=mask2)
        target = prediction_from_x0_eps(x0, eps, t, self.schedule, self.prediction)
        per_example = ((out - target) ** 2).flatten(1).mean(1)
        weight = loss_weight(t, self.schedule, self.prediction, self.weighting)
        return per_example * per_sample(weight, per_example)


def train_makeanaudio2(frames: torch.Tensor, plain: list[str], structured: list[str], *, steps: int,
                       batch_size: int = 32, lr: float = 1e-3, seed: int = 0, hidden_size: int = 96, depth: int = 3,
                       prediction: str = "v", progress: bool = False) -> tuple[DualCaptionDenoiser, dict]:
    """Train a fresh ``InContextDiT`` on (mel frames (N, 64, F) in [-1, 1], plain captions, structured captions)
    with ``DualCaptionLoss``; the two frozen encoders are ``frozen_text_encoder`` seeded ``seed`` and ``seed + 1``.
    Returns (``DualCaptionDenoiser``, {"steps", "seconds"})."""
    if frames.ndim != 3 or len(plain) != frames.shape[0] or len(structured) != frames.shape[0]:
        raise ValueError(f"frames must be (N, n_mels, F) with one plain and one structured caption each; got "
                         f"{tuple(frames.shape)}, {len(plain)}, {len(structured)}")
    tokenizer = audio_tokenizer()
    enc1, enc2 = frozen_text_encoder(tokenizer, seed=seed), frozen_text_encoder(tokenizer, seed=seed + 1)
    tok1, mask1 = tokenizer.encode(plain, max_len=enc1.max_len)
    tok2, mask2 = tokenizer.encode(structured, max_len=enc2.max_len)
    schedule = VPDiscrete.named("linear", 1000)
    loss = DualCaptionLoss(schedule, tokenizer, enc1, enc2, prediction=prediction)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InContextDiT(frames.shape[1], enc1.width, hidden_size, depth)
    info = train_net(net, loss, (frames.float(), tok1, mask1, tok2, mask2), steps=steps, batch_size=batch_size,
                     lr=lr, seed=seed, progress=progress)
    return DualCaptionDenoiser(net, schedule, prediction, tokenizer=tokenizer, plain_encoder=enc1,
                               structured_encoder=enc2), info


@torch.no_grad()
def sample_mel_frames(denoiser: DualCaptionDenoiser, plain: list[str], structured: list[str], *,
                      guidance: float = 3.0, steps: int = 25, seed: int = 0, frames: int = FRAMES) -> torch.Tensor:
    """(N, 64, frames) mel frames: deterministic DDIM (``steps`` uniform steps, 1 NFE each) on
    ``eps = eps(x, null, null) + w (eps(x, c_plain, c_struct) - eps(x, null, null))`` (w = ``guidance``; 1 = no
    CFG), x0_hat clipped to [-1, 1]; ``frames`` may differ from the training length (variable-length generation)."""
    cond = denoiser.condition(plain, structured)
    n_mels = denoiser.net.config["n_mels"]
    x_T = noise.prior_sample(denoiser.schedule, (len(plain), n_mels, frames), torch.Generator().manual_seed(seed))
    guided = denoiser if guidance == 1.0 else GuidedDenoiser(denoiser, guidance,
                                                              null_condition=denoiser.null_condition)
    ts = grid_uniform(denoiser.schedule, steps)
    return get_sampler("ddim").fn(StaticThresholdDenoiser(guided), x_T, ts, cond=cond).clamp(-1, 1)


class FrameEventClassifier:
    """Frame-level event classifier (silence or an event kind per 60-ms frame): logistic regression (scikit-learn)
    on a window of ``2 * context + 1`` frames (edge-padded) of 64 mel bands, trained on real clips' frames labelled
    from their annotations (a frame belongs to the event covering its centre)."""

    def __init__(self, context: int = 2):
        from sklearn.linear_model import LogisticRegression

        self.context = context
        self.model = LogisticRegression(C=1.0, max_iter=2000)

    def windows(self, frames: torch.Tensor) -> np.ndarray:
        x = np.asarray(torch.as_tensor(frames, dtype=torch.float32))  # (N, n_mels, F)
        k = self.context
        padded = np.pad(x, ((0, 0), (0, 0), (k, k)), mode="edge")
        stacked = np.concatenate([padded[:, :, i:i + x.shape[2]] for i in range(2 * k + 1)], axis=1)
        return stacked.transpose(0, 2, 1).reshape(-1, stacked.shape[1])  # (N * F, n_mels * (2k + 1))

    @staticmethod
    def frame_labels(events_per_clip, frames: int) -> np.ndarray:
        centres = (np.arange(frames) + 0.5) * FRAME_SECONDS
        labels = np.full((len(events_per_clip), frames), "silence", dtype=object)
        for i, events in enumerate(events_per_clip):
            for e in events:
                labels[i, (centres >= e.onset) & (centres < e.offset)] = e.kind
        return labels.reshape(-1)

    def fit(self, frames: torch.Tensor, events_per_clip) -> FrameEventClassifier:
        self.model.fit(self.windows(frames), self.frame_labels(events_per_clip, frames.shape[2]))
        return self

    def probabilities(self, frames: torch.Tensor) -> tuple[np.ndarray, list[str]]:
        """(N, F, classes) per-frame class probabilities and the class names."""
        p = self.model.predict_proba(self.windows(frames))
        return p.reshape(frames.shape[0], frames.shape[2], -1), [str(c) for c in self.model.classes_]


def event_order_correct(classifier: FrameEventClassifier, frames: torch.Tensor, orders: list[tuple[str, str]]
                        ) -> np.ndarray:
    """For each clip and requested order (first kind, second kind): whether the probability-weighted time centroid
    of the first kind, sum_f f p_a(f) / sum_f p_a(f), comes before the second kind's. (N,) bool."""
    probs, classes = classifier.probabilities(frames)
    times = np.arange(frames.shape[2], dtype=np.float64)
    out = []
    for p, (a, b) in zip(probs, orders):
        pa, pb = p[:, classes.index(a)], p[:, classes.index(b)]
        ca = (times * pa).sum() / max(pa.sum(), 1e-12)
        cb = (times * pb).sum() / max(pb.sum(), 1e-12)
        out.append(ca < cb)
    return np.asarray(out)
