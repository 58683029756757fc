"""Synthesis and evaluation for ProDiff-style TTS (Huang et al. 2022, arXiv 2207.06389, Sec. 4): mel generation with
a core sampler from text (predicted durations) or with ground-truth durations (frame-aligned with the reference),
Griffin-Lim vocoding, mel L1, f0 error in cents (pYIN) and the real-time factor.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...domains.audio.features import MelConfig, f0_contour, griffin_lim
from ...samplers import sample_ddim, sample_ddpm
from .model import ProDiffTTS
from .training import prodiff_denoiser

__all__ = ["SAMPLERS", "synthesize", "mel_l1", "f0_cents_error", "vocode", "real_time_factor"]

SAMPLERS = ("ddim", "ddpm")
DEFAULT_MEL = MelConfig()


@torch.no_grad()
def synthesize(model: ProDiffTTS, schedule, ts, phonemes: torch.Tensor, style: torch.Tensor, *,
               durations: torch.Tensor | None = None, sampler: str = "ddim",
               generator: torch.Generator | None = None, prediction: str = "x0"):
    """Mel images for a batch of phoneme sequences: encode, length-regulate by ``durations`` (ground truth, frames)
    or, when None, by the duration predictor's round(exp(log(1 + d)) - 1), draw x_T ~ N(0, I) and run DDIM (eta 0)
    or DDPM ancestral sampling on ``ts`` with the x0-predicting (or ``prediction="eps"``) denoiser
    (len(ts) - 1 NFE). Returns
    (mel (B, n_mels, F) clamped to [-1, 1], padded frames -1; frames (B,) long)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    model.eval()
    if durations is None:
        _, log_d = model.encode(phonemes, style)
        durations = model.predicted_durations(log_d, phonemes)
        durations[:, 0] = torch.clamp(durations[:, 0], min=1)  # at least one frame per utterance
    cond, mask, _ = model.condition(phonemes, style, durations)
    frames = durations.sum(1)
    n_mels = model.config["n_mels"]
    x = torch.randn((phonemes.shape[0], n_mels, cond.shape[-1]), generator=generator)
    den = prodiff_denoiser(model, schedule, prediction)
    run = sample_ddim if sampler == "ddim" else sample_ddpm
    mel = run(den, x, ts, cond={"condition": cond, "mask": mask}, generator=generator)
    mel = torch.where(mask.bool(), mel.clamp(-1, 1), torch.full_like(mel, -1.0))
    return mel, frames


def mel_l1(mel: torch.Tensor, reference: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean |mel - reference| over the first frames[b] frames and all bins ([-1, 1] units): (B,)."""
    f = min(mel.shape[-1], reference.shape[-1])
    mask = (torch.arange(f)[None, :] < frames[:, None]).to(mel.dtype)[:, None, :]
    return ((mel[..., :f] - reference[..., :f]).abs() * mask).flatten(1).sum(1) / (mask.flatten(1).sum(1)
                                                                                   * mel.shape[1])


def vocode(mel: torch.Tensor, frames: int, *, n_iter: int = 32, seed: int = 0,
           config: MelConfig = DEFAULT_MEL) -> np.ndarray:
    """Griffin-Lim (``domains.audio.features.griffin_lim``) of one mel image (n_mels, F) cut to ``frames``:
    a float32 wave of (frames - 1) * hop samples."""
    m = mel[:, :int(frames)].detach().cpu().numpy()
    return griffin_lim(m, config, n_iter=n_iter, scaled=True, length=(int(frames) - 1) * config.hop_length,
                       seed=seed)


def f0_cents_error(wave: np.ndarray, reference, config: MelConfig = DEFAULT_MEL) -> dict:
    """f0 error of ``wave`` against ``reference`` (same frame clock): pYIN both, and over frames voiced in both
    the mean of |1200 log2(f0 / f0_ref)| (cents), with the voicing decision error (fraction of frames where
    exactly one is voiced). ``reference``: a wave, or its ``f0_contour`` tuple (computed once, reused).
    Returns {"cents", "voicing_error", "voiced_frames"} (cents NaN when none)."""
    f_a, v_a, _ = f0_contour(wave, config)
    f_b, v_b, _ = reference if isinstance(reference, tuple) else f0_contour(reference, config)
    n = min(len(f_a), len(f_b))
    f_a, v_a, f_b, v_b = f_a[:n], v_a[:n], f_b[:n], v_b[:n]
    both = v_a & v_b & np.isfinite(f_a) & np.isfinite(f_b)
    cents = float(np.mean(np.abs(1200.0 * np.log2(f_a[both] / f_b[both])))) if both.any() else float("nan")
    return {"cents": cents, "voicing_error": float(np.mean(v_a != v_b)), "voiced_frames": int(both.sum())}


def real_time_factor(model: ProDiffTTS, schedule, ts, phonemes: torch.Tensor, style: torch.Tensor, *,
                     sampler: str = "ddim", seed: int = 0, config: MelConfig = DEFAULT_MEL,
                     prediction: str = "x0") -> dict:
    """RTF of mel generation from text on ONE torch thread: the wall time of synthesising each utterance alone
    (batch 1, predicted durations) summed, over the summed audio seconds it produced (frames * hop / rate).
    Returns {"rtf", "seconds", "audio_seconds"} (Griffin-Lim excluded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds, audio = 0.0, 0.0
        for b in range(phonemes.shape[0]):
            p = phonemes[b:b + 1, :int(phonemes[b].ne(0).sum())]
            g = torch.Generator().manual_seed(seed + b)
            t0 = time.perf_counter()
            _, frames = synthesize(model, schedule, ts, p, style[b:b + 1], sampler=sampler, generator=g,
                                   prediction=prediction)
            seconds += time.perf_counter() - t0
            audio += float(frames[0]) * config.hop_length / config.sample_rate
    finally:
        torch.set_num_threads(threads)
    return {"rtf": seconds / max(audio, 1e-9), "seconds": seconds, "audio_seconds": audio}
