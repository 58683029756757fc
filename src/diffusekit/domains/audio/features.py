"""Audio features without pretrained weights: log-mel images, Griffin-Lim vocoding, f0 and onsets (librosa).

The mel "image" follows Auffusion (Xue et al. 2024, arXiv 2401.01044) at our scale: 16 kHz audio, a magnitude
STFT (n_fft 1024, Hann window 640, hop 160 = 100 frames per second), a Slaney mel filterbank of 64 bands over
0-8 kHz, then

    m = log(clamp(mel_magnitude, 1e-5)),   image = 2 (clamp(m, LOG_MIN, LOG_MAX) - LOG_MIN) / (LOG_MAX - LOG_MIN) - 1,

with [LOG_MIN, LOG_MAX] = [log 1e-5, log 10] (a full-scale sine peaks near log 5.6),

so that diffusion models see values in [-1, 1] (``scale_log_mel`` / ``unscale_log_mel`` are exact inverses
inside the clamp range). Vocoding goes back through the mel pseudo-inverse (NNLS, librosa's ``mel_to_stft``) and
Griffin-Lim phase retrieval (Griffin & Lim 1984). Evaluation uses pYIN f0 (Mauch & Dixon 2014) and spectral-flux
onsets, both from librosa.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["SAMPLE_RATE", "MelConfig", "log_mel", "scale_log_mel", "unscale_log_mel", "mel_image", "griffin_lim",
           "f0_contour", "onset_times", "spectral_convergence", "log_spectral_distance"]

SAMPLE_RATE = 16_000
LOG_MIN, LOG_MAX = float(np.log(1e-5)), float(np.log(10.0))  # a full-scale sine peaks near log 5.6


@dataclass(frozen=True)
class MelConfig:
    """STFT and mel settings shared by every audio model (see the module docstring)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    win_length: int = 640
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8000.0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length


def _wave(wave) -> np.ndarray:
    w = np.asarray(wave.detach().cpu().numpy() if hasattr(wave, "detach") else wave)
    if w.dtype == np.int16:
        w = w.astype(np.float32) / 32768.0
    w = w.astype(np.float32)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"wave must be a non-empty 1-D signal, got shape {w.shape}")
    return w


@functools.lru_cache(maxsize=8)
def _mel_basis(config: MelConfig) -> np.ndarray:
    """The Slaney mel filterbank of ``config`` (built once per config; callers must not modify it)."""
    import librosa

    return librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.fmin,
                               fmax=config.fmax)


def log_mel(wave, config: MelConfig = MelConfig()) -> np.ndarray:
    """log(max(mel magnitude, 1e-5)) of a 1-D wave (float in [-1, 1] or int16): (n_mels, frames), frames =
    1 + len // hop (centred STFT)."""
    import librosa

    spec = np.abs(librosa.stft(_wave(wave), n_fft=config.n_fft, hop_length=config.hop_length,
                               win_length=config.win_length, window="hann", center=True))
    return np.log(np.maximum(_mel_basis(config) @ spec, 1e-5)).astype(np.float32)


def scale_log_mel(m: np.ndarray) -> np.ndarray:
    """Log-mel -> [-1, 1] by the fixed range [log 1e-5, log 10] (clamped)."""
    return (2.0 * (np.clip(m, LOG_MIN, LOG_MAX) - LOG_MIN) / (LOG_MAX - LOG_MIN) - 1.0).astype(np.float32)


def unscale_log_mel(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`scale_log_mel` (exact inside the clamp range)."""
    image = np.asarray(image, dtype=np.float32)
    return ((np.clip(image, -1.0, 1.0) + 1.0) * 0.5 * (LOG_MAX - LOG_MIN) + LOG_MIN).astype(np.float32)


def mel_image(wave, config: MelConfig = MelConfig()) -> np.ndarray:
    """The diffusion models' input: :func:`scale_log_mel` of :func:`log_mel`, (n_mels, frames) in [-1, 1]."""
    return scale_log_mel(log_mel(wave, config))


def griffin_lim(log_mel_or_image: np.ndarray, config: MelConfig = MelConfig(), *, n_iter: int = 32,
                scaled: bool = False, length: int | None = None, seed: int = 0) -> np.ndarray:
    """Vocode a log-mel (or a [-1, 1] mel image with ``scaled=True``) to a float32 wave: NNLS mel pseudo-inverse
    to a magnitude STFT, then ``n_iter`` Griffin-Lim iterations (momentum 0.99, random initial phase from
    ``seed``)."""
    import librosa

    m = unscale_log_mel(log_mel_or_image) if scaled else np.asarray(log_mel_or_image, dtype=np.float32)
    magnitude = librosa.feature.inverse.mel_to_stft(np.exp(m), sr=config.sample_rate, n_fft=config.n_fft,
                                                    power=1.0, fmin=config.fmin, fmax=config.fmax)
    wave = librosa.griffinlim(magnitude, n_iter=n_iter, hop_length=config.hop_length, win_length=config.win_length,
                              window="hann", center=True, length=length, init="random",
                              random_state=np.random.default_rng(seed))
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def f0_contour(wave, config: MelConfig = MelConfig(), *, fmin: float = 60.0, fmax: float = 1000.0):
    """pYIN fundamental frequency per frame (hop = ``config.hop_length``): (f0 Hz with NaN where unvoiced,
    voiced flags, voiced probabilities)."""
    import librosa

    f0, voiced, prob = librosa.pyin(_wave(wave), fmin=fmin, fmax=fmax, sr=config.sample_rate,
                                    frame_length=config.n_fft, hop_length=config.hop_length)
    return f0.astype(np.float32), voiced, prob.astype(np.float32)


def onset_times(wave, config: MelConfig = MelConfig(), *, backtrack: bool = True) -> np.ndarray:
    """Onset times in seconds (spectral-flux onset strength, librosa's peak picking)."""
    import librosa

    return librosa.onset.onset_detect(y=_wave(wave), sr=config.sample_rate, hop_length=config.hop_length,
                                      backtrack=backtrack, units="time").astype(np.float32)


def spectral_convergence(reference, estimate, config: MelConfig = MelConfig()) -> float:
    """|| |S_ref| - |S_est| ||_F / || |S_ref| ||_F of the magnitude STFTs (lower is better; 0 = identical)."""
    import librosa

    ref, est = _wave(reference), _wave(estimate)
    n = min(ref.size, est.size)
    kw = dict(n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.win_length)
    a, b = np.abs(librosa.stft(ref[:n], **kw)), np.abs(librosa.stft(est[:n], **kw))
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))


def log_spectral_distance(reference, estimate, config: MelConfig = MelConfig()) -> float:
    """Mean over frames of sqrt(mean_f (10 log10 |S_ref|^2 - 10 log10 |S_est|^2)^2), in dB (power floor 1e-10)."""
    import librosa

    ref, est = _wave(reference), _wave(estimate)
    n = min(ref.size, est.size)
    kw = dict(n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.win_length)
    a = 10 * np.log10(np.maximum(np.abs(librosa.stft(ref[:n], **kw)) ** 2, 1e-10))
    b = 10 * np.log10(np.maximum(np.abs(librosa.stft(est[:n], **kw)) ** 2, 1e-10))
    return float(np.sqrt(((a - b) ** 2).mean(0)).mean())
