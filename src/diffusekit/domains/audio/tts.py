"""Text-to-speech data plumbing over the espeak-ng corpus: phoneme vocabulary, frame durations, length
regulation, padded tensors and a train/test split by text.

FastSpeech (Ren et al. 2019, arXiv 1905.09263, Sec. 3.2) expands the phoneme hidden sequence by each phoneme's
duration in mel frames ("length regulator"): with durations d_1..d_P (frames, d_i >= 0),

    LR(h, d) = [h_1 x d_1, h_2 x d_2, ..., h_P x d_P],    len = sum_i d_i = number of mel frames.

Our mel frames are centred STFT frames (hop 160 at 16 kHz): frame k is centred at sample 160 k and there are
1 + len // 160 of them. Frame k belongs to the phoneme whose sample span [b_i, b_{i+1}) contains 160 k, so the
frame boundaries are ceil(b_i / 160) (the last one is the frame count, which also takes the final frame when the
length is a multiple of the hop). This is the corpus' sample durations converted to frames (about samples / 160)
and sums exactly to the mel length. ProDiff (Huang et al. 2022, arXiv 2207.06389) trains on the same alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .features import MelConfig, mel_image

__all__ = ["PAD", "PhonemeVocabulary", "frame_boundaries", "frame_durations", "length_regulate",
           "frame_phoneme_index", "TTSTensors", "tts_tensors", "split_by_text", "style_ids"]

PAD = "<pad>"


class PhonemeVocabulary:
    """espeak-ng phoneme mnemonics <-> integer ids; id 0 is padding."""

    def __init__(self, symbols):
        self.symbols = [PAD] + sorted(set(symbols) - {PAD})
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, phonemes) -> list[int]:
        """Ids of a phoneme list; ValueError naming the first unknown symbol."""
        unknown = [p for p in phonemes if p not in self.index]
        if unknown:
            raise ValueError(f"unknown phoneme {unknown[0]!r}; the vocabulary has {len(self) - 1} symbols")
        return [self.index[p] for p in phonemes]


def frame_boundaries(boundaries, num_samples: int, hop: int = 160) -> np.ndarray:
    """Phoneme boundaries in samples (P + 1 values, first 0, last ``num_samples``) -> in centred STFT frames:
    ceil(b_i / hop) for i < P, and 1 + num_samples // hop (the mel length) for the last."""
    b = np.asarray(boundaries, dtype=np.int64)
    if b.ndim != 1 or len(b) < 2 or np.any(np.diff(b) < 0) or b[0] != 0 or b[-1] != num_samples:
        raise ValueError("boundaries must be non-decreasing sample positions from 0 to the audio length")
    fb = -(-b // hop)  # ceil division
    fb[-1] = 1 + num_samples // hop
    return fb


def frame_durations(boundaries, num_samples: int, hop: int = 160) -> np.ndarray:
    """Per-phoneme durations in mel frames (int64, >= 0), summing to the mel length 1 + num_samples // hop."""
    return np.diff(frame_boundaries(boundaries, num_samples, hop))


def length_regulate(h: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
    """FastSpeech's length regulator for one sequence: h (P, C), durations (P,) ints >= 0 -> (sum d, C), row i
    of h repeated d_i times (Ren et al. 2019, arXiv 1905.09263, Sec. 3.2)."""
    if h.shape[0] != durations.shape[0]:
        raise ValueError(f"h has {h.shape[0]} phonemes but durations {durations.shape[0]}")
    if bool((durations < 0).any()):
        raise ValueError("durations must be >= 0")
    return torch.repeat_interleave(h, durations.long(), dim=0)


def frame_phoneme_index(durations: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The length regulator as an index map for a padded batch: durations (B, P) -> (B, num_frames) with the
    phoneme index of each frame (frame k of sequence b lies in phoneme i when sum_{j<i} d_j <= k < sum_{j<=i} d_j)
    and -1 past the sequence's total. ``h.gather`` on it equals :func:`length_regulate` row by row."""
    ends = torch.cumsum(durations.long(), dim=1)  # (B, P)
    k = torch.arange(num_frames, device=durations.device)
    index = torch.searchsorted(ends, k.expand(durations.shape[0], -1).contiguous(), right=True)  # (B, F)
    return torch.where(k[None, :] < ends[:, -1:], index, torch.full_like(index, -1))


def style_ids(utterances, voices, rates, pitches) -> torch.Tensor:
    """(N, 3) long: the index of each utterance's voice, rate and pitch setting (the "speaker" we condition on)."""
    return torch.tensor([[list(voices).index(u.voice), list(rates).index(u.rate), list(pitches).index(u.pitch)]
                         for u in utterances], dtype=torch.long)


@dataclass
class TTSTensors:
    """A padded TTS batch of N utterances.

    phonemes (N, P) long (0 = pad); durations (N, P) long frames (0 on pads); mel (N, n_mels, F) float32 in
    [-1, 1], padded with -1; frames (N,) long mel lengths; style (N, 3) long (voice, rate, pitch);
    texts, waves: the utterances' text and float waves (for evaluation).
    """

    phonemes: torch.Tensor
    durations: torch.Tensor
    mel: torch.Tensor
    frames: torch.Tensor
    style: torch.Tensor
    texts: list
    waves: list

    def __len__(self) -> int:
        return self.phonemes.shape[0]

    def data(self) -> tuple[torch.Tensor, ...]:
        """The tensors a ``Trainer`` batches: (mel, phonemes, durations, frames, style)."""
        return self.mel, self.phonemes, self.durations, self.frames, self.style

    def subset(self, index) -> TTSTensors:
        index = list(index)
        t = torch.as_tensor(index, dtype=torch.long)
        p = int(self.phonemes[t].ne(0).sum(1).max())
        f = int(self.frames[t].max())
        return TTSTensors(self.phonemes[t, :p], self.durations[t, :p], self.mel[t, :, :f], self.frames[t],
                          self.style[t], [self.texts[i] for i in index], [self.waves[i] for i in index])


def tts_tensors(utterances, vocabulary: PhonemeVocabulary, *, voices, rates, pitches,
                config: MelConfig | None = None) -> TTSTensors:
    """Mel images, phoneme ids and frame durations of ``utterances``, padded to the longest."""
    config = config or MelConfig()
    mels = [mel_image(u.wave, config) for u in utterances]
    durs = [frame_durations(u.boundaries, len(u.audio), config.hop_length) for u in utterances]
    for m, d in zip(mels, durs):
        if int(d.sum()) != m.shape[1]:
            raise ValueError(f"durations sum to {int(d.sum())} frames but the mel has {m.shape[1]}")
    n, p_max, f_max = len(utterances), max(len(u.phonemes) for u in utterances), max(m.shape[1] for m in mels)
    phonemes = torch.zeros(n, p_max, dtype=torch.long)
    durations = torch.zeros(n, p_max, dtype=torch.long)
    mel = torch.full((n, config.n_mels, f_max), -1.0)
    for i, (u, m, d) in enumerate(zip(utterances, mels, durs)):
        phonemes[i, :len(u.phonemes)] = torch.tensor(vocabulary.encode(u.phonemes))
        durations[i, :len(d)] = torch.from_numpy(d)
        mel[i, :, :m.shape[1]] = torch.from_numpy(m)
    frames = torch.tensor([m.shape[1] for m in mels], dtype=torch.long)
    return TTSTensors(phonemes, durations, mel, frames, style_ids(utterances, voices, rates, pitches),
                      [u.text for u in utterances], [u.wave for u in utterances])


def split_by_text(utterances, test_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, test) utterance indices with no text in both: a fraction of the distinct texts (numpy
    ``default_rng(seed)``) is held out with all its utterances."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
    texts = sorted({u.text for u in utterances})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(texts)[:max(1, round(test_fraction * len(texts)))].tolist())
    train = [i for i, u in enumerate(utterances) if u.text not in held]
    test = [i for i, u in enumerate(utterances) if u.text in held]
    return train, test
