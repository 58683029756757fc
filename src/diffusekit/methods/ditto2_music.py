"""DITTO-2 for music: inference-time noise optimisation for intensity, melody and structure controls on a small
piano-roll diffusion model, through its consistency-distilled one-step student.

DITTO (Novack, McAuley, Berg-Kirkpatrick & Bryan 2024, arXiv 2401.12179) optimises the initial noise x_T of a
music diffusion model so that a differentiable feature of the output matches a target,

    x_T* = argmin_{x_T} L(f(G(x_T)), y) + w R(x_T),

back-propagating through the whole sampler G. DITTO-2 (Novack et al. 2024, arXiv 2405.20289) distils the model
with consistency distillation and optimises through the one-step student G_s instead, then decodes x_T* with a
multi-step sampler. The loops are ``methods.ditto`` (``optimize_noise``, ``ditto2``); the student is
``methods.distill.consistency_distill`` (Song et al. 2023, arXiv 2303.01469, Alg. 2). This module adds the music:

* data: piano rolls (12 scale-degree rows x 32 beats) of the motion-driven melodies of ``domains.audio.music``
  with a dynamics curve (velocity ramps linearly from v_0 to v_1 ~ U[0.3, 1] over the piece), scaled to
  x = 2 v - 1 in [-1, 1] (-1 = silence); a 1-D UNet over beats (pitch rows as channels) is the teacher;
* the paper's three music controls with differentiable read-outs of the roll, a = (x + 1) / 2 clipped to [0, 1]:
  - intensity: loudness l_b = sum_p a_{p,b}, smoothed over a ``window``-beat moving average (DITTO's smoothed
    loudness curve); L = mean_b (l~_b - y_b)^2 against a target envelope y;
  - melody: soft pitch read-out p^_b = sum_p p softmax_p(a_{p,b} / tau) (tau = 0.05); L = mean over the target's
    voiced beats of (p^_b - y_b)^2 (in scale degrees) plus (1 - max_p a_{p,b})^2 so those beats sound;
  - structure: L = mean (x_{:, :N/2} - x_{:, N/2:})^2 + (mean_b l_b - 0.5)^2 (the second half repeats the first
    at a data-like note density; without the density term silence is the easiest repetition);
  with hard accuracies read from the decoded roll (a note sounds when max_p a > 0.2, at argmax_p a).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..core import NetworkDenoiser, VPDiscrete
from ..domains.audio.music import SPLITS, MusicConfig, motion_music_pairs, piano_roll
from ..nets import UNet
from ..training import DiffusionLoss, TrainConfig, Trainer
from .distill import consistency_distill

__all__ = ["CONTROLS", "music_rolls", "roll_activity", "smoothed_loudness", "soft_pitch", "hard_notes",
           "intensity_loss", "melody_loss", "structure_loss", "control_accuracy", "monophony", "train_roll_teacher",
           "distill_roll_student", "intensity_targets", "melody_targets"]

CONTROLS = ("intensity", "melody", "structure")
PITCH_TEMPERATURE = 0.05
SOUNDING = 0.2  # a note sounds when its velocity a > 0.2 (the data's velocities are >= 0.3)


def music_rolls(count: int, *, seed: int = 0, split: str = "train", config: MusicConfig | None = None):
    """(count, num_degrees, beats) float32 rolls in [-1, 1] and their tokens (count, beats): melody i of
    ``motion_music_pairs(count, 1)`` with velocities ramping linearly from v_0 to v_1 ~ U[0.3, 1]
    (generator ``default_rng([seed, split, i, 0])``). ``config``: the data sizes (None: ``MusicConfig()``)."""
    config = config or MusicConfig()
    pairs = motion_music_pairs(count, 1, seed=seed, split=split, config=config)
    rolls = []
    for i, tokens in enumerate(pairs.tokens.numpy()):
        v0, v1 = np.random.default_rng([seed, SPLITS[split], i, 0]).uniform(0.3, 1.0, size=2)
        rolls.append(2.0 * piano_roll(tokens, config, np.linspace(v0, v1, config.beats)) - 1.0)
    return torch.as_tensor(np.stack(rolls)), pairs.tokens


def roll_activity(x0: torch.Tensor) -> torch.Tensor:
    """a = clip((x0 + 1) / 2, 0, 1): the velocity of every (pitch, beat), (B, P, N)."""
    return ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)


def smoothed_loudness(x0: torch.Tensor, window: int = 4) -> torch.Tensor:
    """(B, N) loudness l_b = sum_p a_{p,b} averaged over a centred ``window``-beat moving window (edge-replicated)."""
    loud = roll_activity(x0).sum(1, keepdim=True)
    left = (window - 1) // 2
    padded = F.pad(loud, (left, window - 1 - left), mode="replicate")
    return F.avg_pool1d(padded, window, stride=1)[:, 0]


def soft_pitch(x0: torch.Tensor, temperature: float = PITCH_TEMPERATURE) -> torch.Tensor:
    """(B, N) soft pitch p^_b = sum_p p softmax_p(a_{p,b} / temperature), in scale degrees (row index)."""
    weights = torch.softmax(roll_activity(x0) / temperature, dim=1)
    rows = torch.arange(x0.shape[1], dtype=x0.dtype, device=x0.device)
    return (weights * rows[None, :, None]).sum(1)


def hard_notes(x0: torch.Tensor) -> torch.Tensor:
    """(B, N) long: -1 for a silent beat (max_p a <= SOUNDING = 0.2), else the loudest degree argmax_p a."""
    a = roll_activity(x0)
    top, idx = a.max(1)
    return torch.where(top > SOUNDING, idx, torch.full_like(idx, -1))


def monophony(x0: torch.Tensor) -> torch.Tensor:
    """(B,) fraction of beats with at most one sounding degree (a > SOUNDING): 1.0 for the data (one note per beat)."""
    return ((roll_activity(x0) > SOUNDING).sum(1) <= 1).double().mean(-1)


def intensity_loss(target: torch.Tensor, window: int = 4):
    """L(x0) = mean_b (smoothed_loudness(x0)_b - target_b)^2 per example (B,); target (B, N) (DITTO intensity)."""

    def loss(x0: torch.Tensor) -> torch.Tensor:
        return (smoothed_loudness(x0, window) - target.to(x0.dtype)).pow(2).mean(-1)

    return loss


def melody_loss(target: torch.Tensor, voiced: torch.Tensor, temperature: float = PITCH_TEMPERATURE):
    """L(x0) = mean over voiced beats of [(p^_b - target_b)^2 + (1 - max_p a_{p,b})^2] per example (B,)
    (DITTO melody control with a soft pitch read-out); target (B, N) degrees, voiced (B, N) bool."""
    mask = voiced.to(torch.float32)

    def loss(x0: torch.Tensor) -> torch.Tensor:
        pitch_err = (soft_pitch(x0, temperature) - target.to(x0.dtype)).pow(2)
        sound = (1.0 - roll_activity(x0).amax(1)).pow(2)
        m = mask.to(x0.dtype)
        return ((pitch_err + sound) * m).sum(-1) / m.sum(-1).clamp_min(1.0)

    return loss


def structure_loss(density: float | None = 0.5):
    """L(x0) = mean (x0[..., :N/2] - x0[..., N/2:])^2 + (mean_b l_b - density)^2 per example (B,): the second half
    repeats the first (DITTO's structure control as an A A self-similarity target) while the mean loudness
    l_b = sum_p a_{p,b} stays at ``density`` (the data's is about 0.5); without the density term (``None``) a
    silent roll repeats itself trivially and the optimiser finds it."""

    def loss(x0: torch.Tensor) -> torch.Tensor:
        half = x0.shape[-1] // 2
        out = (x0[..., :half] - x0[..., half:2 * half]).pow(2).flatten(1).mean(-1)
        if density is not None:
            out = out + (roll_activity(x0).sum(1).mean(-1) - density).pow(2)
        return out

    return loss


def control_accuracy(control: str, x0: torch.Tensor, target: dict) -> torch.Tensor:
    """(B,) hard accuracy read from the decoded roll. ``intensity``: fraction of beats with |l~_b - y_b| < 0.2;
    ``melody``: fraction of the target's voiced beats where the loudest sounding degree is the target degree;
    ``structure``: fraction of first-half beats whose hard note (silence or degree) equals the second half's."""
    if control == "intensity":
        return ((smoothed_loudness(x0) - target["envelope"]).abs() < 0.2).double().mean(-1)
    if control == "melody":
        voiced = target["voiced"]
        hit = (hard_notes(x0) == target["pitch"].long()) & voiced
        return hit.double().sum(-1) / voiced.double().sum(-1).clamp_min(1.0)
    if control == "structure":
        notes = hard_notes(x0)
        half = notes.shape[-1] // 2
        return (notes[:, :half] == notes[:, half:2 * half]).double().mean(-1)
    raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")


def intensity_targets(batch: int, beats: int) -> torch.Tensor:
    """(batch, beats) target loudness envelopes: crescendo 0.1 -> 0.9 on even rows, decrescendo on odd rows."""
    ramp = torch.linspace(0.1, 0.9, beats)
    return torch.stack([ramp if i % 2 == 0 else ramp.flip(0) for i in range(batch)])


def melody_targets(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pitch (B, N) float degrees, voiced (B, N) bool) of held-out melodies ``tokens``: the degree of each note."""
    voiced = tokens > 0
    return (tokens - 1).clamp_min(0).to(torch.float32), voiced


def train_roll_teacher(x: torch.Tensor, *, steps: int, seed: int = 0, base_channels: int = 32,
                       batch_size: int = 64, lr: float = 2e-3) -> tuple[NetworkDenoiser, dict]:
    """An unconditional v-prediction 1-D UNet (pitch rows as channels, 2 levels, attention at 16 beats) trained
    on rolls x (N, P, beats) with ``DiffusionLoss`` on the linear VP schedule (T = 1000); returns the EMA
    (0.995) denoiser, frozen, and {"steps", "seconds"}."""
    torch.manual_seed(seed)
    net = UNet(in_channels=x.shape[1], base_channels=base_channels, channel_mult=(1, 2), attention_resolutions=(16,),
               dims=1, image_size=x.shape[-1])
    loss = DiffusionLoss(VPDiscrete.named("linear", 1000), "v")  # v: sane x0 estimates early in training
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps), ema_decay=0.995,
                      seed=seed, progress=False, log_every=10 ** 9)
    t0 = time.perf_counter()
    trainer = Trainer(net, loss, (x,), cfg)
    trainer.fit()
    den = loss.denoiser(trainer.ema_model.eval())
    den.net.requires_grad_(False)
    return den, {"steps": steps, "seconds": time.perf_counter() - t0}


def distill_roll_student(teacher: NetworkDenoiser, x: torch.Tensor, *, steps: int, seed: int = 0,
                         n_points: int = 18, batch_size: int = 64, lr: float = 2e-4):
    """Consistency distillation of ``teacher`` on rolls x (Song et al. 2023, Alg. 2: Heun teacher steps on the
    ``n_points`` Karras grid, EMA target mu = 0.95, student initialised from the teacher); returns (the frozen
    ``ConsistencyDenoiser``, its one-step native sampling {"sampler": "consistency", "steps": 1, "ts": [t_0, 0]},
    {"steps", "seconds"}). t_0 is the Karras grid's first time, the teacher schedule's t_max."""
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=0, grad_clip=1.0, ema_decay=None,
                      seed=seed, progress=False, log_every=10 ** 9)
    t0 = time.perf_counter()
    result = consistency_distill(teacher, x, cfg, n_points=n_points)
    student = result.model
    student.net.requires_grad_(False)
    sampling = {"sampler": "consistency", "steps": 1, "ts": [float(result.ts[0]), 0.0]}
    return student, sampling, {"steps": steps, "seconds": time.perf_counter() - t0, "n_points": n_points}
