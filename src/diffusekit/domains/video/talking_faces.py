"""Small talking faces: a drawn cartoon face whose explicit motion parameters are driven by real speech.

The data of the Ditto experiment (Li et al. 2024, "Ditto: Motion-Space Diffusion for Controllable Realtime Talking
Head Synthesis", arXiv 2411.19509) at CPU scale. Ditto diffuses in an explicit per-frame motion space and renders
with a frozen appearance/warping network; here both halves are ours and small:

* **motion** (7 numbers per frame, ``MOTION_NAMES``): mouth opening [0, 1], mouth width [-1, 1] (rounded ... spread),
  jaw drop [0, 1], blink [0, 1] (1 = closed), head yaw / pitch / roll [-1, 1];
* **renderer** (``render_faces``, frozen, deterministic, no parameters learnt): the face is drawn in its own
  coordinates q from soft-edged ellipses (head, sclera, pupils, brows, lips, mouth interior, teeth), and the head
  pose is a similarity warp of the pixel grid, ``q = R(-0.3 roll) (p - (0.12 yaw, 0.10 pitch))``, with the inner
  features shifted a further 0.05 yaw (parallax); 2x supersampled, 2x2 average-pooled to 32 x 32, values in [-1, 1];
* **driving signal**: the shipped espeak-ng corpus (``domains.audio.speech``). Utterances of one voice are joined
  with short silences into talks of ``frames`` frames at 25 fps. Audio features per frame (``AUDIO_DIM`` = 16):
  8 log-mel energy bands (the 64-band log-mel of ``domains.audio.features`` averaged over 4 hops and 8 mels) and a
  one-hot phoneme class (``PHONEME_CLASSES``: silence, open / spread / rounded / neutral vowel, bilabial, labiodental,
  other consonant) from espeak-ng's alignment;
* **the true motion** is a deterministic, not trivial function of the speech plus randomness the audio cannot
  predict (so a generative model is needed): mouth opening = speaker gain x Gaussian-smoothed (openness target of the
  phoneme class x a gate on the 300-3000 Hz log energy), delayed by a speaker lag of 1-2 frames; width from the
  rounded/spread class; jaw follows the opening more slowly with a speaker coupling; blinks are a Poisson process
  (about one per 2.5-4 s) and the head sways as a smoothed AR(1) process with a small nod on speech energy.

Everything is a deterministic function of ``(split, seed)`` through ``numpy.random.default_rng``; test talks use
utterances disjoint from the train talks (every fifth utterance of the corpus).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FPS", "FACE_SIZE", "MOTION_NAMES", "MOTION_DIM", "PHONEME_CLASSES", "AUDIO_DIM", "Appearance",
           "speaker_appearances", "rest_motion", "render_faces", "phoneme_class", "audio_features", "TalkingFaces",
           "talking_faces", "mouth_opening_from_frames", "MOUTH_BOX", "EYE_BOX"]

FPS = 25
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
FACE_SIZE = 32
MOTION_NAMES = ("mouth_open", "mouth_width", "jaw", "blink", "yaw", "pitch", "roll")
MOTION_DIM = len(MOTION_NAMES)
PHONEME_CLASSES = ("silence", "open_vowel", "spread_vowel", "rounded_vowel", "neutral_vowel", "bilabial",
                   "labiodental", "consonant")
N_BANDS = 8
AUDIO_DIM = N_BANDS + len(PHONEME_CLASSES)
MOUTH_BOX = (slice(18, 30), slice(8, 24))  # rows, cols of the 32 x 32 frame that the mouth moves in
EYE_BOX = (slice(8, 16), slice(5, 27))

_OPEN = {"a", "aa", "a#", "A:", "A@", "aI", "aI2", "aU", "V", "0", "O:", "O2", "O@", "o@", "E", "e@"}
_SPREAD = {"i", "i:", "I", "I2", "i@", "i@3", "IR", "eI"}
_ROUNDED = {"u:", "U", "oU", "w"}
_NEUTRAL = {"@", "@2", "@L", "3", "3:", "r-"}
_BILABIAL = {"m", "b", "p"}
_LABIODENTAL = {"f", "v"}
_SILENCE = {"_", "_:", ";"}
# per class: (mouth-opening target, mouth-width target)
_TARGETS = {"silence": (0.0, 0.0), "open_vowel": (1.0, 0.1), "spread_vowel": (0.45, 0.8),
            "rounded_vowel": (0.55, -0.9), "neutral_vowel": (0.5, 0.0), "bilabial": (0.0, -0.1),
            "labiodental": (0.1, 0.2), "consonant": (0.25, 0.0)}


def phoneme_class(symbol: str) -> int:
    """Index into ``PHONEME_CLASSES`` of an espeak-ng phoneme mnemonic (stress marks ignored)."""
    s = symbol.strip("'\",%=")
    for name, members in (("silence", _SILENCE), ("open_vowel", _OPEN), ("spread_vowel", _SPREAD),
                          ("rounded_vowel", _ROUNDED), ("neutral_vowel", _NEUTRAL), ("bilabial", _BILABIAL),
                          ("labiodental", _LABIODENTAL)):
        if s in members:
            return PHONEME_CLASSES.index(name)
    return PHONEME_CLASSES.index("consonant")


@dataclass(frozen=True)
class Appearance:
    """The identity the renderer draws: skin and hair grey levels, head width and eye spacing (face units)."""

    skin: float = 0.5
    background: float = -0.1
    head_width: float = 0.62
    eye_spacing: float = 0.24
    brow: float = -0.6


def speaker_appearances(count: int = 6, seed: int = 0) -> list[Appearance]:
    """``count`` distinct appearances drawn from ``seed`` (one per corpus voice)."""
    rng = np.random.default_rng([seed, 7])
    return [Appearance(skin=float(rng.uniform(0.3, 0.7)), background=float(rng.uniform(-0.25, 0.05)),
                       head_width=float(rng.uniform(0.56, 0.68)), eye_spacing=float(rng.uniform(0.21, 0.27)),
                       brow=float(rng.uniform(-0.8, -0.4))) for _ in range(count)]


def rest_motion() -> np.ndarray:
    """The neutral motion frame (mouth closed, eyes open, frontal pose): zeros (7,)."""
    return np.zeros(MOTION_DIM, dtype=np.float32)


def _soft_ellipse(qx, qy, cx, cy, a, b, edge: float):
    """Soft indicator of the ellipse f = ((qx - cx)/a)^2 + ((qy - cy)/b)^2 <= 1: sigmoid(4 d / edge) of the
    first-order signed distance d = (1 - f) / |grad f| (so thin ellipses keep a sharp edge ``edge`` units wide)."""
    ux, uy = (qx - cx) / a, (qy - cy) / b
    grad = 2 * torch.sqrt((ux / a) ** 2 + (uy / b) ** 2 + 1e-12)
    return torch.sigmoid(4 * (1 - ux ** 2 - uy ** 2) / grad / edge)


@torch.no_grad()
def render_faces(motion, appearance: Appearance = Appearance(), *, size: int = FACE_SIZE,
                 supersample: int = 2) -> torch.Tensor:
    """The frozen renderer: motion (..., 7) -> frames (..., 1, size, size) in [-1, 1], deterministic.

    Pixel p in [-1, 1]^2 (x right, y down) maps to face coordinates q = R(-theta)(p - d) with theta = 0.3 roll and
    d = (0.12 yaw, 0.10 pitch); inner features sit a further 0.05 yaw to the side. Each part is a soft ellipse
    composited over the previous ones (painter's order): background, head (its lower half 0.1 jaw longer), brows,
    sclera (height 0.075 (1 - blink)), pupils inside the sclera, lips and the mouth interior (height
    0.02 + 0.16 mouth_open, width 0.2 (1 + 0.25 mouth_width), 0.05 jaw lower) with teeth in its upper part.
    Rendered at ``supersample`` x the size and average-pooled."""
    m = torch.as_tensor(np.asarray(motion, dtype=np.float32))
    lead = m.shape[:-1]
    if m.shape[-1] != MOTION_DIM:
        raise ValueError(f"motion must have {MOTION_DIM} values per frame ({', '.join(MOTION_NAMES)}); "
                         f"got shape {tuple(m.shape)}")
    m = m.reshape(-1, MOTION_DIM)
    frames = []
    for chunk in m.split(256):
        frames.append(_render_chunk(chunk, appearance, size * supersample))
    img = torch.cat(frames) if frames else torch.zeros(0, size * supersample, size * supersample)
    img = F.avg_pool2d(img[:, None], supersample)
    return img.reshape(*lead, 1, size, size).clamp(-1, 1)


def _render_chunk(m: torch.Tensor, ap: Appearance, res: int) -> torch.Tensor:
    mouth_open, width, jaw, blink, yaw, pitch, roll = (m[:, i, None, None] for i in range(MOTION_DIM))
    mouth_open, jaw, blink = mouth_open.clamp(0, 1), jaw.clamp(0, 1), blink.clamp(0, 1)
    width = width.clamp(-1, 1)
    coords = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    theta = 0.3 * roll.clamp(-1, 1)
    dx, dy = px - 0.12 * yaw.clamp(-1, 1), py - 0.10 * pitch.clamp(-1, 1)
    qx = torch.cos(theta) * dx + torch.sin(theta) * dy
    qy = -torch.sin(theta) * dx + torch.cos(theta) * dy
    fx = qx - 0.05 * yaw.clamp(-1, 1)  # inner features: parallax
    edge = 2.0 / res
    one = torch.ones_like(mouth_open)

    def ell(x, cx, cy, a, b):
        return _soft_ellipse(x, qy, cx * one, cy * one, a * one if not torch.is_tensor(a) else a,
                             b * one if not torch.is_tensor(b) else b, edge)

    img = torch.full((m.shape[0], res, res), ap.background)
    lower = (qy > 0.02).float()
    head_b = 0.78 + 0.1 * jaw * lower
    head = ell(qx, 0.0, 0.02, ap.head_width, head_b)
    img = img + head * (ap.skin - img)
    for side in (-1.0, 1.0):
        cx = side * ap.eye_spacing
        img = img + ell(fx, cx, -0.34, 0.12, 0.03) * (ap.brow - img)
        sclera = ell(fx, cx, -0.18, 0.12, 0.005 + 0.075 * (1 - blink))
        img = img + sclera * (0.95 - img)
        img = img + sclera * ell(fx, cx, -0.18, 0.05, 0.05) * (-0.9 - img)
        img = img + ell(fx, cx, -0.18 - 0.075 * (1 - blink), 0.13, 0.012) * (-0.5 - img) * blink  # eyelid line
    img = img + ell(fx, 0.0, 0.08, 0.05, 0.07) * (ap.skin - 0.2 - img)  # nose shade
    cy = 0.38 + 0.05 * jaw
    half_w = 0.2 * (1 + 0.25 * width)
    half_h = 0.02 + 0.16 * mouth_open
    img = img + ell(fx, 0.0, cy, half_w + 0.04, half_h + 0.04) * (0.0 - img)  # lips
    interior = ell(fx, 0.0, cy, half_w, half_h)
    img = img + interior * (-0.9 - img)
    teeth = interior * torch.sigmoid((cy - 0.55 * half_h - qy) / edge)
    return img + teeth * (0.85 - img)


def mouth_opening_from_frames(frames) -> np.ndarray:
    """The fixed pixel-based mouth-opening measure applied to frames of any method: (..., 1, 32, 32) ->
    (...,) the mean darkness clip((-0.35 - p) / 0.5, 0, 1) over ``MOUTH_BOX`` (only the mouth interior is that dark
    there, for every pose the renderer allows)."""
    f = torch.as_tensor(frames, dtype=torch.float32)
    box = f[..., 0, MOUTH_BOX[0], MOUTH_BOX[1]]
    return ((-0.35 - box) / 0.5).clamp(0, 1).mean(dim=(-1, -2)).numpy()


def audio_features(wave: np.ndarray, phonemes: list[str], boundaries: list[int], frames: int) -> np.ndarray:
    """(frames, 16) per-frame features at 25 fps: 8 log-mel bands (64-band log-mel averaged over 4 hops of 10 ms
    and groups of 8 mels, scaled by (m + 5) / 4) and the one-hot ``phoneme_class`` of the phoneme spanning each
    frame's centre (silence outside the alignment)."""
    from ..audio.features import log_mel

    mel = log_mel(np.asarray(wave, dtype=np.float32))  # (64, 1 + len // 160)
    need = frames * 4
    if mel.shape[1] < need:
        mel = np.pad(mel, ((0, 0), (0, need - mel.shape[1])), constant_values=float(np.log(1e-5)))
    bands = mel[:, :need].reshape(N_BANDS, 64 // N_BANDS, frames, 4).mean(axis=(1, 3)).T
    bands = (bands + 5.0) / 4.0
    classes = np.full(frames, PHONEME_CLASSES.index("silence"))
    centres = (np.arange(frames) + 0.5) * SAMPLES_PER_FRAME
    idx = np.searchsorted(np.asarray(boundaries), centres, side="right") - 1
    for k, i in enumerate(idx):
        if 0 <= i < len(phonemes):
            classes[k] = phoneme_class(phonemes[i])
    onehot = np.eye(len(PHONEME_CLASSES), dtype=np.float32)[classes]
    return np.concatenate([bands.astype(np.float32), onehot], axis=1), classes


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(x, sigma, mode="nearest") if sigma > 0 else x


def _delay(x: np.ndarray, lag: int) -> np.ndarray:
    return np.concatenate([np.full(lag, x[0]), x[:len(x) - lag]]) if lag > 0 else x


@dataclass
class TalkingFaces:
    """Talks of one split: ``motion`` (N, T, 7) float32, ``audio`` (N, T, 16) float32, ``phoneme_class`` (N, T),
    ``vowel_energy`` (N, T) (the 300-3000 Hz log energy gate in [0, 1]), ``speaker`` (N,) voice index,
    ``appearances`` (one per voice), ``waves`` (N, T * 640) float32 at 16 kHz, ``texts`` (the utterances of each)."""

    motion: np.ndarray
    audio: np.ndarray
    phoneme_class: np.ndarray
    vowel_energy: np.ndarray
    speaker: np.ndarray
    appearances: list[Appearance]
    waves: np.ndarray
    texts: list[list[str]]

    def __len__(self) -> int:
        return self.motion.shape[0]

    def subset(self, indices) -> TalkingFaces:
        """The talks at ``indices`` (same appearances)."""
        idx = np.asarray(indices)
        return TalkingFaces(self.motion[idx], self.audio[idx], self.phoneme_class[idx], self.vowel_energy[idx],
                            self.speaker[idx], self.appearances, self.waves[idx], [self.texts[i] for i in idx])

    def frames(self, index: int, motion: np.ndarray | None = None) -> torch.Tensor:
        """Rendered frames (T, 1, 32, 32) of talk ``index`` (its true motion, or ``motion`` in its speaker's face)."""
        return render_faces(self.motion[index] if motion is None else motion,
                            self.appearances[int(self.speaker[index])])


def _speaker_style(voice: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, 11, voice])
    return {"gain": rng.uniform(0.75, 1.1), "lag": int(rng.integers(1, 3)), "jaw": rng.uniform(0.35, 0.8),
            "sway": rng.uniform(0.25, 0.55), "blink_rate": rng.uniform(0.25, 0.4), "nod": rng.uniform(0.1, 0.25)}


def _true_motion(audio: np.ndarray, classes: np.ndarray, style: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    t = len(classes)
    bands = audio[:, :N_BANDS] * 4.0 - 5.0  # back to log-mel units
    gate = 1 / (1 + np.exp(-(bands[:, 1:5].mean(1) + 4.0) / 1.0))  # 300-3000 Hz mels, silence ~ -11.5
    open_t = np.array([_TARGETS[PHONEME_CLASSES[c]][0] for c in classes])
    width_t = np.array([_TARGETS[PHONEME_CLASSES[c]][1] for c in classes])
    mouth = _delay(_smooth(open_t * (0.35 + 0.65 * gate), 1.0), style["lag"]) * style["gain"]
    width = _delay(_smooth(width_t, 1.5), style["lag"])
    jaw = style["jaw"] * _smooth(mouth, 2.5)
    blink = np.zeros(t)
    shape = np.array([0.5, 1.0, 1.0, 0.6, 0.2])
    k = int(rng.integers(0, 20))
    while k < t:
        blink[k:k + len(shape)] = np.maximum(blink[k:k + len(shape)], shape[:t - k])
        k += len(shape) + int(rng.exponential(FPS / style["blink_rate"]))
    pose = np.zeros((t, 3))
    state = rng.normal(0, 1, 3)
    for i in range(t):
        state = 0.93 * state + np.sqrt(1 - 0.93 ** 2) * rng.normal(0, 1, 3)
        pose[i] = state
    pose = np.stack([_smooth(pose[:, j], 2.0) for j in range(3)], 1) * style["sway"]
    pose[:, 1] += style["nod"] * (_smooth(gate, 3.0) - 0.5)
    motion = np.stack([np.clip(mouth, 0, 1), np.clip(width, -1, 1), np.clip(jaw, 0, 1), blink,
                       *np.clip(pose, -1, 1).T], axis=1)
    return motion.astype(np.float32), gate.astype(np.float32)


def talking_faces(split: str = "train", *, frames: int = 96, seed: int = 0, repeats: int = 1) -> TalkingFaces:
    """Talks of ``frames`` frames at 25 fps made from the speech corpus (see the module docstring).

    Each voice's utterances of the split (test: corpus index divisible by 5; train: the others) are shuffled and
    joined with 0.12-0.32 s silences into talks; each of ``repeats`` passes uses a new order, new silences and new
    blinks / head sway (all from ``seed``). Deterministic in (split, frames, seed, repeats)."""
    from ..audio.speech import VOICES, load_speech_corpus

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if frames < 8:
        raise ValueError(f"frames must be >= 8; got {frames}")
    corpus = load_speech_corpus()
    length = frames * SAMPLES_PER_FRAME
    out = {k: [] for k in ("motion", "audio", "classes", "gate", "speaker", "waves", "texts")}
    for rep in range(repeats):
        for v, voice in enumerate(VOICES):
            rng = np.random.default_rng([seed, 3, rep, v, split == "test"])
            utts = [u for i, u in enumerate(corpus.utterances)
                    if u.voice == voice and (i % 5 == 0) == (split == "test")]
            order = rng.permutation(len(utts))
            wave, phon, bounds, texts = [], [], [], []
            pos = 0
            for j in order:
                u = utts[j]
                gap = int(rng.integers(3, 9)) * SAMPLES_PER_FRAME // 2
                wave += [np.zeros(gap, np.float32), u.wave]
                phon += ["_"] + list(u.phonemes)
                bounds += [pos] + [pos + gap + b for b in u.boundaries[:-1]]
                pos += gap + len(u.audio)
                texts.append(u.text)
                if pos >= length:
                    w = np.concatenate(wave)[:length]
                    audio, classes = audio_features(w, phon, bounds, frames)
                    motion, gate = _true_motion(audio, classes, _speaker_style(v, seed), rng)
                    for key, val in (("motion", motion), ("audio", audio), ("classes", classes), ("gate", gate),
                                     ("speaker", v), ("waves", w), ("texts", texts)):
                        out[key].append(val)
                    wave, phon, bounds, texts, pos = [], [], [], [], 0
    return TalkingFaces(np.stack(out["motion"]), np.stack(out["audio"]), np.stack(out["classes"]),
                        np.stack(out["gate"]), np.asarray(out["speaker"]), speaker_appearances(len(VOICES), seed),
                        np.stack(out["waves"]), out["texts"])
