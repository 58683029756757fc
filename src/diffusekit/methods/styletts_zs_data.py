"""Prosody data for StyleTTS-ZS (Li et al. 2024, arXiv 2409.10058) on the espeak-ng corpus: per-utterance f0 and
energy contours resampled to a fixed length, text aligned to the same frames, speaker ids, a zero-shot split that
holds out whole speakers, and the "speaker prompt" (the global style of another utterance of the same speaker).

Contours. f0 is pYIN (``features.f0_contour``) at hop 320 (50 frames/s) with 512-sample frames over 65-500 Hz (two
periods of 65 Hz fit a frame; ~15x cheaper than hop 160, 1024-sample frames to 1 kHz, with the same mean f0 on the
corpus); energy is the frame RMS (hop 320, 1024-sample frames) in log units:

    logf0_k = ln f0_k on voiced frames, linearly interpolated over unvoiced frames (held at the ends),
    energy_k = ln(rms_k + 1e-4),

then both are resampled linearly to ``FRAMES`` points at normalised times (k + 1/2) / FRAMES, so a contour is
(2, FRAMES) whatever the utterance's length ("resampled to a fixed number of frames per utterance"). Channels are
standardised with the training split's mean and std.

Text. The phoneme sounding at each of those normalised times (from the corpus' espeak-ng alignment), so the text
condition is aligned with the contour (the ground-truth durations are used, as a TTS duration predictor would
supply them).

Speakers and prompts. A speaker is a (voice, pitch) setting of espeak-ng (18 of them; the speaking rate varies within
a speaker). The prompt of an utterance is the global style of ANOTHER utterance of the same speaker,

    prompt = (mean logf0, std logf0 over voiced frames, mean energy, std energy),

standardised with training statistics. The test split holds out whole speakers (zero-shot).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FRAMES", "HOP", "ProsodyData", "utterance_prosody", "prosody_dataset", "prompt_partners",
           "speaker_split", "global_style"]

FRAMES = 64
HOP = 320
F0_RANGE = (65.0, 500.0)
F0_FRAME = 512
ENERGY_FLOOR = 1e-4


def utterance_prosody(wave: np.ndarray, boundaries, phoneme_ids, frames: int = FRAMES):
    """One utterance -> (contour (2, frames) float32 [logf0, energy], aligned phoneme ids (frames,), global style (4,)
    = [mean, std of logf0 over voiced frames, mean, std of energy]); see the module docstring."""
    import librosa

    from ..domains.audio.features import MelConfig, f0_contour

    f0, voiced, _ = f0_contour(wave, MelConfig(hop_length=HOP, n_fft=F0_FRAME), fmin=F0_RANGE[0], fmax=F0_RANGE[1])
    rms = librosa.feature.rms(y=np.asarray(wave, np.float32), frame_length=1024, hop_length=HOP, center=True)[0]
    n = min(len(f0), len(rms))
    f0, voiced, energy = f0[:n], np.asarray(voiced[:n], bool) & np.isfinite(f0[:n]), np.log(rms[:n] + ENERGY_FLOOR)
    k = np.arange(n)
    if voiced.sum() >= 1:
        logf0 = np.interp(k, k[voiced], np.log(f0[voiced]))
        voiced_logf0 = np.log(f0[voiced])
    else:  # no voiced frame: the corpus' typical pitch, flat
        logf0 = np.full(n, np.log(120.0))
        voiced_logf0 = logf0
    pos = (np.arange(frames) + 0.5) / frames * n - 0.5  # normalised times in frame units
    contour = np.stack([np.interp(pos, k, logf0), np.interp(pos, k, energy)]).astype(np.float32)
    sample_pos = (np.arange(frames) + 0.5) / frames * boundaries[-1]
    which = np.clip(np.searchsorted(np.asarray(boundaries), sample_pos, side="right") - 1, 0, len(phoneme_ids) - 1)
    style = np.array([voiced_logf0.mean(), voiced_logf0.std(), energy.mean(), energy.std()], np.float32)
    return contour, np.asarray(phoneme_ids, np.int64)[which], style


def global_style(contour_logf0: torch.Tensor) -> torch.Tensor:
    """Mean of a (B, frames) logf0 contour per utterance (the speaker-similarity statistic): (B,)."""
    return contour_logf0.mean(-1)


@dataclass
class ProsodyData:
    """The corpus as prosody tensors (N utterances).

    contours (N, 2, FRAMES) standardised [logf0, energy]; raw_contours the same in natural log units; phonemes
    (N, FRAMES) long aligned phoneme ids (0 = pad, unused); styles (N, 4) standardised global styles (raw_styles in
    natural units); speakers (N,) long (voice, pitch) index; seconds (N,) utterance durations; mean/std (2,) the
    contour standardisation; style_mean/style_std (4,); vocab_size; train/test index lists (test = held-out
    speakers); texts.
    """

    contours: torch.Tensor
    raw_contours: torch.Tensor
    phonemes: torch.Tensor
    styles: torch.Tensor
    raw_styles: torch.Tensor
    speakers: torch.Tensor
    seconds: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    style_mean: torch.Tensor
    style_std: torch.Tensor
    vocab_size: int
    train: list
    test: list
    texts: list

    def unstandardise(self, contours: torch.Tensor) -> torch.Tensor:
        """Standardised (B, 2, F) -> natural units (ln Hz, ln rms)."""
        return contours * self.std[None, :, None] + self.mean[None, :, None]


def speaker_split(speakers: np.ndarray, held_out: int = 4, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, test) utterance indices: ``held_out`` whole speakers (numpy ``default_rng(seed)``) form the test."""
    ids = np.unique(speakers)
    if not 0 < held_out < len(ids):
        raise ValueError(f"held_out must be in [1, {len(ids) - 1}]; got {held_out}")
    test_speakers = set(np.random.default_rng(seed).permutation(ids)[:held_out].tolist())
    test = [i for i, s in enumerate(speakers.tolist()) if s in test_speakers]
    train = [i for i, s in enumerate(speakers.tolist()) if s not in test_speakers]
    return train, test


def prompt_partners(speakers: torch.Tensor, index, pool, generator: torch.Generator) -> torch.Tensor:
    """For each utterance in ``index``, a random OTHER utterance of the same speaker among ``pool`` (its prompt):
    (len(index),) long indices into the full data. An utterance with no such partner gets itself."""
    index = torch.as_tensor(list(index), dtype=torch.long)
    pool = torch.as_tensor(list(pool), dtype=torch.long)
    pool_speakers = speakers[pool]
    out = torch.empty_like(index)
    for j, i in enumerate(index.tolist()):
        same = pool[(pool_speakers == speakers[i]) & (pool != i)]
        out[j] = i if len(same) == 0 else same[torch.randint(len(same), (1,), generator=generator)]
    return out


@functools.lru_cache(maxsize=2)
def prosody_dataset(held_out: int = 4, seed: int = 0, frames: int = FRAMES) -> ProsodyData:
    """The shipped speech corpus as :class:`ProsodyData` (pYIN on all 240 utterances: ~9 s on one core, cached
    per process)."""
    from ..domains.audio.speech import PITCHES, VOICES, load_speech_corpus
    from ..domains.audio.tts import PhonemeVocabulary

    corpus = load_speech_corpus()
    vocab = PhonemeVocabulary(corpus.phoneme_inventory())
    rows = [utterance_prosody(u.wave, u.boundaries, vocab.encode(u.phonemes), frames) for u in corpus.utterances]
    raw = torch.from_numpy(np.stack([r[0] for r in rows]))
    phonemes = torch.from_numpy(np.stack([r[1] for r in rows]))
    raw_styles = torch.from_numpy(np.stack([r[2] for r in rows]))
    speakers = np.array([VOICES.index(u.voice) * len(PITCHES) + PITCHES.index(u.pitch) for u in corpus.utterances])
    train, test = speaker_split(speakers, held_out, seed)
    mean, std = raw[train].mean((0, 2)), raw[train].std((0, 2))
    style_mean, style_std = raw_styles[train].mean(0), raw_styles[train].std(0)
    return ProsodyData(
        contours=(raw - mean[None, :, None]) / std[None, :, None], raw_contours=raw, phonemes=phonemes,
        styles=(raw_styles - style_mean) / style_std, raw_styles=raw_styles, speakers=torch.from_numpy(speakers),
        seconds=torch.tensor([len(u.audio) / 16000 for u in corpus.utterances], dtype=torch.float32),
        mean=mean, std=std, style_mean=style_mean, style_std=style_std, vocab_size=len(vocab), train=train,
        test=test, texts=[u.text for u in corpus.utterances])
