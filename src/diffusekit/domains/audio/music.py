"""Note/tone token music conditioned on a "motion" sequence, generated from a seed (CDCD-music and DITTO-2-music).

CDCD (Zhu et al., ICLR 2023, arXiv 2206.07771) measures dance-to-music *correspondence*: does the generated music
follow ITS dance? We make a small, exactly-known version of that pairing:

* **motion**: one value per beat in {0, 1, ..., levels}; 0 = "still", 1..levels = how high the movement is. It is a
  sequence of gestures: segments of ``min_segment``..``max_segment`` beats of one level (a still segment with
  probability ``still_prob``, else a moving level different from the previous segment's).
* **music**: one token per beat: 0 = rest, else a scale degree. The rule tying music to motion: a still beat is a
  rest, a moving beat of level r plays a degree of register r (``degrees_per_level`` consecutive major-scale degrees,
  register 1 lowest). Inside a segment the melody is a random walk (step -1, 0, +1 with probabilities 0.35, 0.3,
  0.35, reflected at the register's edges) from a uniform start, so one motion has many valid melodies.

Token ``1 + (r - 1) * degrees_per_level + j`` is degree j of register r, i.e. scale degree
``d = (r - 1) * degrees_per_level + j`` of the major scale on ``tonic_hz`` (A3 = 220 Hz by default):
f(d) = tonic_hz * 2 ** ((12 * (d // 7) + MAJOR_SCALE[d % 7]) / 12).

Correspondence read-outs (exact, from the rule above): ``beat_consistency`` (each beat agrees with its motion),
``rhythm_agreement`` (rest iff still), ``register_agreement`` and the motion matcher ``match_scores`` /
``retrieval_accuracy`` (pick the true motion among K candidates by the fraction of consistent beats).
Renderers: ``render_audio`` (16 kHz, one harmonic tone per note through ``events.synthesize_event``), ``piano_roll``
(pitch x beat, optional velocities) and ``render_mel`` (``features.mel_image``).

Determinism: pair ``i`` of a split depends only on ``(seed, split, i)`` through its own numpy generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .events import MAJOR_SCALE, SoundEvent, synthesize_event
from .features import SAMPLE_RATE, MelConfig, mel_image

__all__ = ["MusicConfig", "MotionMusic", "SPLITS", "random_motion", "random_melody", "motion_music_pairs",
           "token_register", "beat_consistency", "rhythm_agreement", "register_agreement", "melodic_smoothness",
           "match_scores", "retrieval_accuracy", "degree_hz", "piano_roll", "render_audio", "render_mel"]

SPLITS = {"train": 0, "test": 1}
_STEP_PROBS = (0.35, 0.30, 0.35)  # melodic step -1, 0, +1 inside a segment


@dataclass(frozen=True)
class MusicConfig:
    """Sizes of the motion/music pairs. ``num_tokens = 1 + levels * degrees_per_level`` (token 0 = rest)."""

    beats: int = 32
    levels: int = 3
    degrees_per_level: int = 4
    min_segment: int = 2
    max_segment: int = 6
    still_prob: float = 0.3
    beat_seconds: float = 0.125
    tonic_hz: float = 220.0

    def __post_init__(self):
        if self.beats < 2 or self.levels < 1 or self.degrees_per_level < 1:
            raise ValueError(f"beats >= 2, levels >= 1 and degrees_per_level >= 1 are required, got {self}")
        if not 1 <= self.min_segment <= self.max_segment:
            raise ValueError(f"need 1 <= min_segment <= max_segment, got {self.min_segment}, {self.max_segment}")
        if not 0.0 <= self.still_prob < 1.0:
            raise ValueError(f"still_prob must lie in [0, 1), got {self.still_prob}")

    @property
    def num_tokens(self) -> int:
        return 1 + self.levels * self.degrees_per_level

    @property
    def num_degrees(self) -> int:
        return self.levels * self.degrees_per_level

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MotionMusic:
    """Paired data: ``tokens`` (N, beats) long music, ``motion`` (N, beats) long in 0..levels, ``motion_id`` (N,)
    (pairs sharing a motion share the id; CDCD's inter negatives are music of another id)."""

    tokens: torch.Tensor
    motion: torch.Tensor
    motion_id: torch.Tensor
    config: MusicConfig

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def random_motion(rng: np.random.Generator, config: MusicConfig = MusicConfig()) -> np.ndarray:
    """One motion sequence (beats,) int64: gesture segments of constant level (see the module docstring)."""
    out, previous = [], -1
    while len(out) < config.beats:
        length = int(rng.integers(config.min_segment, config.max_segment + 1))
        if previous != 0 and rng.random() < config.still_prob:
            level = 0
        else:
            choices = [v for v in range(1, config.levels + 1) if v != previous] or [previous]
            level = int(rng.choice(choices))
        out += [level] * length
        previous = level
    return np.asarray(out[:config.beats], dtype=np.int64)


def _segments(motion: np.ndarray):
    start = 0
    for i in range(1, len(motion) + 1):
        if i == len(motion) or motion[i] != motion[start]:
            yield start, i, int(motion[start])
            start = i


def random_melody(motion: np.ndarray, rng: np.random.Generator, config: MusicConfig = MusicConfig()) -> np.ndarray:
    """Music tokens (beats,) following ``motion``: rests where still, a reflected random walk inside the moving
    segment's register elsewhere."""
    tokens = np.zeros(len(motion), dtype=np.int64)
    width = config.degrees_per_level
    for start, stop, level in _segments(motion):
        if level == 0:
            continue
        j = int(rng.integers(width))
        for i in range(start, stop):
            tokens[i] = 1 + (level - 1) * width + j
            step = int(rng.choice((-1, 0, 1), p=_STEP_PROBS))
            j = j + step if 0 <= j + step < width else j - step if 0 <= j - step < width else j
    return tokens


def motion_music_pairs(num_motions: int, per_motion: int = 1, *, seed: int = 0, split: str = "train",
                       config: MusicConfig = MusicConfig()) -> MotionMusic:
    """``num_motions`` motions with ``per_motion`` melodies each (motion-major order). Motion i uses the generator
    ``default_rng([seed, split, i])`` and its melody j ``default_rng([seed, split, i, j + 1])``; train and test
    use different streams."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    if num_motions < 1 or per_motion < 1:
        raise ValueError(f"num_motions and per_motion must be >= 1, got {num_motions}, {per_motion}")
    motions, tokens, ids = [], [], []
    for i in range(num_motions):
        motion = random_motion(np.random.default_rng([seed, SPLITS[split], i]), config)
        for j in range(per_motion):
            motions.append(motion)
            tokens.append(random_melody(motion, np.random.default_rng([seed, SPLITS[split], i, j + 1]), config))
            ids.append(i)
    return MotionMusic(torch.as_tensor(np.stack(tokens)), torch.as_tensor(np.stack(motions)),
                       torch.as_tensor(ids, dtype=torch.long), config)


# -- correspondence read-outs ------------------------------------------------------------------------------------
def token_register(tokens: torch.Tensor, config: MusicConfig = MusicConfig()) -> torch.Tensor:
    """Register of each token (same shape): 0 for a rest, r in 1..levels for a degree of register r."""
    return torch.where(tokens > 0, (tokens - 1) // config.degrees_per_level + 1, torch.zeros_like(tokens))


def beat_consistency(tokens: torch.Tensor, motion: torch.Tensor, config: MusicConfig = MusicConfig()) -> torch.Tensor:
    """(B, beats) bool: the beat obeys the rule (rest iff still; a note's register equals the motion level)."""
    return token_register(tokens, config) == motion


def rhythm_agreement(tokens: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """(B,) fraction of beats where the note/rest pattern follows the motion: (token == rest) == (motion == still)."""
    return ((tokens == 0) == (motion == 0)).double().mean(-1)


def register_agreement(tokens: torch.Tensor, motion: torch.Tensor, config: MusicConfig = MusicConfig()) -> torch.Tensor:
    """(B,) fraction of the beats with a moving motion AND a note whose register equals the motion level (NaN if
    no such beat)."""
    both = (tokens > 0) & (motion > 0)
    good = (both & beat_consistency(tokens, motion, config)).double().sum(-1)
    return good / both.double().sum(-1)


def melodic_smoothness(tokens: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """(B,) fraction of consecutive note pairs inside one moving segment that move by at most one degree (the data
    has 1.0); NaN if there is no such pair."""
    same = (motion[:, 1:] == motion[:, :-1]) & (motion[:, 1:] > 0) & (tokens[:, 1:] > 0) & (tokens[:, :-1] > 0)
    small = (tokens[:, 1:] - tokens[:, :-1]).abs() <= 1
    return (same & small).double().sum(-1) / same.double().sum(-1)


def match_scores(tokens: torch.Tensor, candidates: torch.Tensor, config: MusicConfig = MusicConfig()) -> torch.Tensor:
    """The motion matcher: (B, K) fraction of beats of music b consistent with candidate motion k, for tokens (B, N)
    and candidates (B, K, N)."""
    return beat_consistency(tokens[:, None, :], candidates, config).double().mean(-1)


def retrieval_accuracy(tokens: torch.Tensor, candidates: torch.Tensor, true_index: torch.Tensor | int = 0,
                       config: MusicConfig = MusicConfig()) -> torch.Tensor:
    """(B,) retrieval credit: 1 / (number of candidates tied at the top) when the true motion is among them, else 0
    (the expected accuracy of picking uniformly among ties; chance = 1 / K)."""
    scores = match_scores(tokens, candidates, config)
    true = torch.as_tensor(true_index).expand(scores.shape[0]).to(scores.device)
    top = scores == scores.max(-1, keepdim=True).values
    hit = top.gather(1, true[:, None].long())[:, 0]
    return hit.double() / top.double().sum(-1)


# -- renderers ---------------------------------------------------------------------------------------------------
def degree_hz(degree, config: MusicConfig = MusicConfig()) -> np.ndarray:
    """f(d) = tonic_hz * 2 ** ((12 (d // 7) + MAJOR_SCALE[d % 7]) / 12) for scale degrees d >= 0."""
    d = np.asarray(degree, dtype=np.int64)
    semis = 12 * (d // 7) + np.asarray(MAJOR_SCALE)[d % 7]
    return config.tonic_hz * 2.0 ** (semis / 12.0)


def piano_roll(tokens, config: MusicConfig = MusicConfig(), velocities=None) -> np.ndarray:
    """(num_degrees, beats) float32 piano roll of one token sequence: row d (degree d, row 0 lowest) is the
    velocity (1 without ``velocities``) on the beats that play degree d, 0 elsewhere."""
    tokens = np.asarray(tokens, dtype=np.int64)
    roll = np.zeros((config.num_degrees, len(tokens)), dtype=np.float32)
    vel = np.ones(len(tokens)) if velocities is None else np.asarray(velocities, dtype=np.float64)
    beats = np.nonzero(tokens > 0)[0]
    roll[tokens[beats] - 1, beats] = vel[beats]
    return roll


def render_audio(tokens, config: MusicConfig = MusicConfig(), velocities=None, *, harmonics: int = 3,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 wave at ``sample_rate``: each note a ``harmonics``-harmonic tone of one beat (10 ms ramps, peak gain
    0.5 x velocity); consecutive equal degrees are separate notes; rests are silence."""
    tokens = np.asarray(tokens, dtype=np.int64)
    beat = int(round(config.beat_seconds * sample_rate))
    wave = np.zeros(beat * len(tokens), dtype=np.float64)
    vel = np.ones(len(tokens)) if velocities is None else np.asarray(velocities, dtype=np.float64)
    for i, tok in enumerate(tokens):
        if tok <= 0:
            continue
        event = SoundEvent("tone", 0.0, beat / sample_rate, {"f0": float(degree_hz(tok - 1, config)),
                                                             "harmonics": harmonics, "gain": 0.5 * float(vel[i])})
        wave[i * beat:(i + 1) * beat] = synthesize_event(event, sample_rate)[:beat]
    return wave.astype(np.float32)


def render_mel(tokens, config: MusicConfig = MusicConfig(), velocities=None,
               mel_config: MelConfig | None = None) -> np.ndarray:
    """The (n_mels, frames) mel image in [-1, 1] (``features.mel_image``, default ``MelConfig()``) of
    ``render_audio``."""
    mel_config = mel_config or MelConfig()
    return mel_image(render_audio(tokens, config, velocities, sample_rate=mel_config.sample_rate), mel_config)
