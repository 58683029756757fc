"""Ditto (Li et al. 2024, "Ditto: Motion-Space Diffusion for Controllable Realtime Talking Head Synthesis",
arXiv 2411.19509): diffusion in an explicit per-frame motion space, streamed in overlapping windows, then a frozen
renderer.

Ditto's LMDM is a transformer over a window of motion frames: FiLM (adaptive LayerNorm) on the diffusion time,
the audio features by cross-attention, the reference (source) motion frame concatenated to every frame's input,
x0-prediction on a cosine schedule, DDIM sampling with classifier-free guidance (learned null embeddings, w = 2),
and streaming in windows that overlap and are cross-faded. Our CPU version, on ``domains.video.talking_faces``:

* ``MotionTransformer``: a 32-frame window of 7-D motion (standardised per dimension), each token the noisy frame
  concatenated with the reference motion frame, sin-cos positions; ``depth`` ``nets.dit.DiTBlock`` s (adaLN-Zero on
  the time embedding = FiLM; self-attention over frames; cross-attention to the window's 16-D audio feature tokens,
  which carry the same positions); ``nets.dit.FinalLayer`` to x0. A learned null context replaces the audio tokens
  of an example when its ``audio_keep`` flag is 0. Our addition (``audio_in_tokens``, on by default): each frame's
  own audio features, linearly embedded, are also added to its token (and dropped with the context), because at our
  budgets cross-attention alone learns the frame alignment slowly (measured at 150 training steps, width 32, depth 2,
  3 test talks: lip-sync correlation 0.35 with cross-attention alone, 0.69 with the per-frame features added).
* ``AudioX0Loss``: L = E ||x0 - f(x_t, t, audio', reference)||^2 with t uniform over the 1000 cosine-schedule
  steps and audio' the null context with probability 0.1 (CFG training, Ho & Salimans 2022, arXiv 2207.12598).
* ``sample_motion``: deterministic DDIM (Song et al. 2021, arXiv 2010.02502) from t = 1 to t = 0 on the guided
  prediction eps = eps_u + w (eps_c - eps_u) (``methods.guidance.GuidedDenoiser``).
* ``stream_motion``: windows of W frames starting every W - O frames; window k > 0 takes as its reference the
  motion already generated at its first frame, and its first O frames are cross-faded with the previous window's
  last O: m = (1 - w_i) m_prev + w_i m_new, w_i = (i + 1) / (O + 1) (a partition of unity, so two windows that agree
  give back exactly their common values). Frames are final, and can be rendered, as soon as no later window
  touches them: the first W - O after the first window.

The pixel-space baseline (a per-frame image denoiser on the rendered frames with the same audio conditioning) is in
``methods.ditto_talking_pixel``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..core import NetworkDenoiser, VPDiscrete
from ..core.grids import grid_uniform
from ..core.noise import prior_sample
from ..core.predictions import prediction_from_x0_eps
from ..domains.video.talking_faces import AUDIO_DIM, MOTION_DIM, N_BANDS, PHONEME_CLASSES
from ..nets.dit import DiTBlock, FinalLayer, sincos_positions
from ..nets.embedding import TimeClassEmbedding
from ..samplers import get_sampler
from ..training.losses import sample_times
from .guidance import GuidedDenoiser

__all__ = ["WINDOW", "OVERLAP", "MotionTransformer", "AudioX0Loss", "motion_schedule", "audio_null_condition",
           "guided", "sample_motion", "stream_motion", "iter_stream_motion", "crossfade_weights", "silence_features",
           "window_generator", "motion_windows", "train_motion_diffusion", "MotionModel", "seam_ratio"]

WINDOW, OVERLAP = 32, 8


def motion_schedule() -> VPDiscrete:
    """Ditto's schedule: the cosine VP chain (Nichol & Dhariwal 2021, arXiv 2102.09672, eq. 17), 1000 steps."""
    return VPDiscrete.named("cosine", 1000)


def silence_features() -> torch.Tensor:
    """The audio feature vector (16,) of a silent frame: log-mel at the floor log(1e-5), phoneme class silence."""
    f = torch.zeros(AUDIO_DIM)
    f[:N_BANDS] = (float(np.log(1e-5)) + 5.0) / 4.0
    f[N_BANDS + PHONEME_CLASSES.index("silence")] = 1.0
    return f


class MotionTransformer(nn.Module):
    """Ditto's LMDM at our scale: ``forward(x, t, audio, reference, audio_keep) -> x0_hat``.

    x (B, W, 7) noisy standardised motion; t (B,) network time; audio (B, W, 16); reference (B, 7) standardised;
    audio_keep (B,) in {0, 1} (0: the learned null context). Tokens h_i = Linear([x_i, reference]) + P_i
    (+ keep * Linear'(audio_i) with ``audio_in_tokens``); context
    c_i = Linear(audio_i) + P_i (or the null context); c = MLP(sinusoidal(t)) modulates every block (adaLN-Zero, the
    FiLM of the paper); ``depth`` blocks of self-attention, cross-attention to the context and an MLP."""

    def __init__(self, window: int = WINDOW, width: int = 64, depth: int = 3, heads: int = 4,
                 motion_dim: int = MOTION_DIM, audio_dim: int = AUDIO_DIM, audio_in_tokens: bool = True):
        super().__init__()
        self.config = {"name": "motion_transformer", "window": window, "width": width, "depth": depth,
                       "heads": heads, "motion_dim": motion_dim, "audio_dim": audio_dim,
                       "audio_in_tokens": audio_in_tokens}
        self.input = nn.Linear(2 * motion_dim, width)
        self.audio_tokens = nn.Linear(audio_dim, width) if audio_in_tokens else None
        self.audio = nn.Linear(audio_dim, width)
        self.null_audio = nn.Parameter(torch.randn(window, width) * 0.02)
        self.register_buffer("positions", sincos_positions(window, width, 1), persistent=False)
        self.time = TimeClassEmbedding(width, width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, context_dim=width) for _ in range(depth))
        self.final = FinalLayer(width, motion_dim)
        self.register_buffer("mean", torch.zeros(motion_dim))
        self.register_buffer("std", torch.ones(motion_dim))

    def forward(self, x, t, audio, reference, audio_keep) -> torch.Tensor:
        b, w, _ = x.shape
        if w > self.positions.shape[0]:
            raise ValueError(f"window of {w} frames is longer than the network's {self.positions.shape[0]}")
        pos = self.positions[:w]
        h = self.input(torch.cat([x, reference[:, None, :].expand(b, w, -1)], dim=-1)) + pos
        keep = audio_keep.to(x.dtype)[:, None, None]
        context = keep * (self.audio(audio) + pos) + (1 - keep) * self.null_audio[:w]
        if self.audio_tokens is not None:
            h = h + keep * self.audio_tokens(audio)
        c = self.time(t.expand(b) if t.ndim == 0 else t, None)
        for block in self.blocks:
            h = block(h, c, context=context)
        return self.final(h, c)


def audio_null_condition(cond: dict) -> dict:
    """The CFG null condition of a batch: the same tensors with ``audio_keep`` = 0 (the learned null context)."""
    return {**cond, "audio_keep": torch.zeros_like(cond["audio_keep"])}


class AudioX0Loss:
    """x0-prediction loss with audio dropout, for any net ``f(x, t, audio=, reference=, audio_keep=)``:

        L_i = mean_j (f(x_t, t, a', r)_j - x0_j)^2,   x_t = alpha_t x0 + sigma_t eps,

    t uniform over the schedule's integer steps, a' = null with probability ``audio_dropout`` (Ho & Salimans 2022,
    arXiv 2207.12598, Alg. 1). Batches are (x0, audio, reference); randomness from the trainer's generator."""

    def __init__(self, schedule=None, audio_dropout: float = 0.1):
        if not 0 <= audio_dropout < 1:
            raise ValueError(f"audio_dropout must be in [0, 1); got {audio_dropout}")
        self.schedule = schedule or motion_schedule()
        self.audio_dropout = float(audio_dropout)

    def denoiser(self, net: nn.Module) -> NetworkDenoiser:
        return NetworkDenoiser(net, self.schedule, "x0")

    def __call__(self, net: nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x0, audio, reference = batch
        b = x0.shape[0]
        t = sample_times(self.schedule, b, generator)
        eps = torch.randn(x0.shape, generator=generator)
        keep = (torch.rand(b, generator=generator) >= self.audio_dropout).float()
        out = self.denoiser(net).raw(self.schedule.add_noise(x0, t, eps), t, audio=audio, reference=reference,
                                    audio_keep=keep)
        target = prediction_from_x0_eps(x0, eps, t, self.schedule, "x0")
        return ((out - target) ** 2).flatten(1).mean(1)


def guided(denoiser: NetworkDenoiser, guidance: float):
    """CFG on the audio: eps = eps_u + w (eps_c - eps_u) with the null context (``w = 1``: the conditional model)."""
    return denoiser if guidance == 1.0 else GuidedDenoiser(denoiser, guidance, null_condition=audio_null_condition)


class MotionModel:
    """A trained ``MotionTransformer`` with its schedule; motion in and out in the renderer's units (standardised
    inside by the mean and std stored in the net)."""

    def __init__(self, net: MotionTransformer, schedule=None):
        self.net = net.eval()
        self.schedule = schedule or motion_schedule()
        self.denoiser = NetworkDenoiser(self.net, self.schedule, "x0")

    @property
    def window(self) -> int:
        return int(self.net.config["window"])

    def normalise(self, motion: torch.Tensor) -> torch.Tensor:
        return (motion - self.net.mean) / self.net.std

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.net.std + self.net.mean


@torch.no_grad()
def sample_motion(model: MotionModel, audio: torch.Tensor, reference: torch.Tensor, *, steps: int = 10,
                  guidance: float = 2.0, generator: torch.Generator | None = None, eta: float = 0.0) -> torch.Tensor:
    """One window: audio (B, W, 16), reference motion (B, 7) -> motion (B, W, 7), by DDIM(``eta``) with ``steps``
    uniform steps from t = 1 to t = 0 on the CFG denoiser (``steps`` NFE, each one batched call of 2B when
    ``guidance != 1``). The prior noise comes from ``generator``."""
    audio = torch.as_tensor(audio, dtype=torch.float32)
    b, w, _ = audio.shape
    x = prior_sample(model.schedule, (b, w, MOTION_DIM), generator)
    cond = {"audio": audio, "reference": model.normalise(torch.as_tensor(reference, dtype=torch.float32)),
            "audio_keep": torch.ones(b)}
    ts = grid_uniform(model.schedule, steps, t_end=0.0)
    z = get_sampler("ddim").fn(guided(model.denoiser, guidance), x, ts, eta=eta, cond=cond, generator=generator)
    return model.denormalise(z)


def crossfade_weights(overlap: int) -> torch.Tensor:
    """w_i = (i + 1) / (O + 1), i = 0..O-1: the new window's weight on the i-th overlapping frame."""
    return torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)


def iter_stream_motion(sample_window, audio: torch.Tensor, reference: torch.Tensor, *, window: int = WINDOW,
                       overlap: int = OVERLAP, carry_reference: bool = True) -> Iterator[torch.Tensor]:
    """Streaming inference: yields (B, n, 7) chunks of final motion frames in order, whose lengths add up to T.

    ``sample_window(audio_w (B, W, 16), reference (B, 7), k) -> motion (B, W, 7)`` samples window k (it owns the
    noise, e.g. a generator seeded by k). Window k covers frames [k S, k S + W), S = W - O; audio past the end is
    padded with ``silence_features`` and the padded frames dropped. Window k > 0 gets as reference the motion
    already produced at its first frame (the previous window's last frame when O = 0; with ``carry_reference``
    False every window keeps ``reference``: the naive chunking the tests compare with), and its first O frames are
    cross-faded with the previous window's tail (``crossfade_weights``)."""
    audio = torch.as_tensor(audio, dtype=torch.float32)
    b, total, _ = audio.shape
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window); got overlap={overlap}, window={window}")
    stride = window - overlap
    windows = max(1, -(-(total - overlap) // stride))
    padded = windows * stride + overlap
    if padded > total:
        audio = torch.cat([audio, silence_features().expand(b, padded - total, -1)], dim=1)
    fade = crossfade_weights(overlap)[None, :, None]
    tail, emitted, ref = None, 0, torch.as_tensor(reference, dtype=torch.float32)
    for k in range(windows):
        m = sample_window(audio[:, k * stride:k * stride + window], ref, k)
        if tail is not None and overlap:
            m = torch.cat([(1 - fade) * tail + fade * m[:, :overlap], m[:, overlap:]], dim=1)
        last = k == windows - 1
        final = m if last else m[:, :stride]
        take = min(final.shape[1], total - emitted)
        if take > 0:
            yield final[:, :take]
            emitted += take
        tail = m[:, stride:]
        if carry_reference and not last:
            ref = m[:, stride] if overlap else m[:, -1]


def stream_motion(model: MotionModel, audio: torch.Tensor, reference: torch.Tensor, *, steps: int = 10,
                  guidance: float = 2.0, seed: int = 0, overlap: int = OVERLAP, eta: float = 0.0,
                  carry_reference: bool = True) -> torch.Tensor:
    """The whole streamed motion (B, T, 7) for audio (B, T, 16) (``iter_stream_motion`` with ``sample_motion``;
    window k draws its noise from ``window_generator(seed, k)``)."""

    def window_fn(a, r, k):
        return sample_motion(model, a, r, steps=steps, guidance=guidance, generator=window_generator(seed, k),
                             eta=eta)

    chunks = iter_stream_motion(window_fn, audio, reference, window=model.window, overlap=overlap,
                                carry_reference=carry_reference)
    return torch.cat(list(chunks), 1)


def window_generator(seed: int, k: int) -> torch.Generator:
    """The noise generator of streaming window k (seeded from (seed, k) by numpy's SeedSequence)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))


def motion_windows(motion: np.ndarray, audio: np.ndarray, *, window: int = WINDOW, stride: int = 4):
    """Training windows from talks (N, T, 7), (N, T, 16): (motion (M, W, 7), audio (M, W, 16), reference (M, 7)),
    the reference being the window's first motion frame (what streaming conditions each window on)."""
    n, t, _ = motion.shape
    starts = range(0, t - window + 1, stride)
    m = np.stack([motion[i, s:s + window] for i in range(n) for s in starts])
    a = np.stack([audio[i, s:s + window] for i in range(n) for s in starts])
    return torch.from_numpy(m), torch.from_numpy(a), torch.from_numpy(m[:, 0].copy())


def train_motion_diffusion(motion: np.ndarray, audio: np.ndarray, *, steps: int, batch_size: int = 32,
                           lr: float = 2e-3, seed: int = 0, width: int = 64, depth: int = 3,
                           audio_dropout: float = 0.1, audio_in_tokens: bool = True,
                           progress: bool = False) -> tuple[MotionModel, dict]:
    """Train a fresh ``MotionTransformer`` with ``AudioX0Loss`` on the windows of talks (N, T, 7) / (N, T, 16)
    (``motion_windows``, stride 4), motion standardised per dimension; returns the ``MotionModel`` and
    {"steps", "seconds", "windows", "params"}."""
    from ..domains.audio.text2audio import train_net

    m, a, r = motion_windows(motion, audio)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MotionTransformer(width=width, depth=depth, audio_in_tokens=audio_in_tokens)
    flat = m.reshape(-1, MOTION_DIM)
    net.mean.copy_(flat.mean(0))
    net.std.copy_(flat.std(0).clamp_min(1e-3))
    norm = ((m - net.mean) / net.std, a, (r - net.mean) / net.std)
    loss = AudioX0Loss(motion_schedule(), audio_dropout)
    info = train_net(net, loss, norm, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    info.update(windows=int(m.shape[0]), params=sum(p.numel() for p in net.parameters()))
    return MotionModel(net, loss.schedule), info


def seam_ratio(motion: torch.Tensor, *, window: int = WINDOW, overlap: int = OVERLAP) -> float:
    """Mean frame-to-frame motion change |m_{i+1} - m_i| (averaged over dimensions and talks) at the streaming seams
    (where a window's cross-fade starts and ends) divided by its mean elsewhere; about 1 = no visible seam."""
    step = (motion[:, 1:] - motion[:, :-1]).abs().mean(dim=(0, 2))
    stride = window - overlap
    seams = sorted({i for k in range(1, motion.shape[1] // stride + 1)
                    for i in (k * stride - 1, k * stride + overlap - 1) if 0 <= i < step.shape[0]})
    mask = torch.zeros(step.shape[0], dtype=torch.bool)
    mask[seams] = True
    return float(step[mask].mean() / step[~mask].mean())
