"""Procedural sound events with captions and structured (ordered) captions, generated from a seed.

The text-to-audio papers of the audio issue are measured on clips whose content is known exactly:

* ``tone``: a steady harmonic tone, f(t) = f0, timbre = number of harmonics (1 = pure, 3 = bright) with
  amplitudes 1/k;
* ``chirp_up`` / ``chirp_down``: an exponential sweep f(t) = f_a (f_b / f_a)^(t / d), one octave or more;
* ``noise_burst``: band-limited white noise;
* ``clicks``: a click train at a given rate;
* ``melody``: three to five notes of a major scale, each a short tone.

Every event has a raised-cosine attack/release of 10 ms. A clip holds one or two events, never overlapping; its
plain caption reads "a rising chirp then a burst of noise" and its structured caption follows Make-An-Audio 2
(Huang et al. 2023, arXiv 2305.18474): ``<chirp up& start>@<noise burst& end>`` (one event: ``<tone& all>``).
Annotations give each event's kind, onset, offset and f0 contour (NaN for unpitched events), so f0 error and
event-order accuracy are computed against ground truth, not against another model.

Determinism: :func:`make_clip` depends only on ``(seed, index)`` through its own numpy generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .features import SAMPLE_RATE

__all__ = ["EVENT_KINDS", "EVENT_WORDS", "SoundEvent", "SoundClip", "random_event", "synthesize_event", "make_clip",
           "make_clips",
           "structured_caption", "plain_caption"]

EVENT_KINDS = ("tone", "chirp_up", "chirp_down", "noise_burst", "clicks", "melody")
EVENT_WORDS = {"tone": "tone", "chirp_up": "chirp up", "chirp_down": "chirp down", "noise_burst": "noise burst",
               "clicks": "clicks", "melody": "melody"}
_PLAIN = {"tone": "a steady {pitch} tone", "chirp_up": "a rising chirp", "chirp_down": "a falling chirp",
          "noise_burst": "a burst of noise", "clicks": "a train of clicks", "melody": "a short melody"}
_RAMP = 0.010
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11, 12)


@dataclass
class SoundEvent:
    """One event of a clip: kind, onset/offset in seconds, its parameters and its f0 at every sample's frame."""

    kind: str
    onset: float
    offset: float
    params: dict = field(default_factory=dict)

    @property
    def pitched(self) -> bool:
        return self.kind in ("tone", "chirp_up", "chirp_down", "melody")

    def f0_at(self, times: np.ndarray) -> np.ndarray:
        """The true fundamental frequency (Hz) at ``times`` (seconds); NaN outside the event or if unpitched."""
        f = np.full(times.shape, np.nan, dtype=np.float64)
        inside = (times >= self.onset) & (times < self.offset)
        if not self.pitched or not inside.any():
            return f
        tau = times[inside] - self.onset
        d = self.offset - self.onset
        p = self.params
        if self.kind == "tone":
            f[inside] = p["f0"]
        elif self.kind in ("chirp_up", "chirp_down"):
            f[inside] = p["f_start"] * (p["f_end"] / p["f_start"]) ** (tau / d)
        else:  # melody: equal-length notes
            notes = np.asarray(p["notes"], dtype=np.float64)
            f[inside] = notes[np.minimum((tau / d * len(notes)).astype(int), len(notes) - 1)]
        return f


@dataclass
class SoundClip:
    """A generated clip: float32 wave in [-1, 1] at 16 kHz, its events (time order) and captions."""

    wave: np.ndarray
    events: list[SoundEvent]
    caption: str
    structured: str
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        return self.wave.size / self.sample_rate


def _envelope(n: int, sr: int) -> np.ndarray:
    ramp = min(int(_RAMP * sr), n // 2)
    env = np.ones(n)
    if ramp > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        env[:ramp], env[n - ramp:] = r, r[::-1]
    return env


def _harmonic(phase: np.ndarray, harmonics: int) -> np.ndarray:
    out = sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))
    return out / sum(1.0 / k for k in range(1, harmonics + 1))


def synthesize_event(event: SoundEvent, sample_rate: int = SAMPLE_RATE, rng: np.random.Generator | None = None):
    """The samples of one event (float64, length round(duration * sample_rate)), peak amplitude ``params['gain']``.

    Pitched events integrate their instantaneous frequency: phase(t) = 2 pi sum_{s <= t} f(s) / sample_rate.
    """
    n = int(round((event.offset - event.onset) * sample_rate))
    times = event.onset + np.arange(n) / sample_rate
    p = event.params
    if event.pitched:
        f = event.f0_at(times)
        phase = 2 * np.pi * np.cumsum(f) / sample_rate
        x = _harmonic(phase, p.get("harmonics", 1))
    elif event.kind == "noise_burst":
        rng = rng if rng is not None else np.random.default_rng(0)
        x = rng.normal(size=n)
        spec = np.fft.rfft(x)
        freqs = np.fft.rfftfreq(n, 1 / sample_rate)
        spec[(freqs < p["low_hz"]) | (freqs > p["high_hz"])] = 0
        x = np.fft.irfft(spec, n)
        x /= max(np.abs(x).max(), 1e-9)
    elif event.kind == "clicks":
        x = np.zeros(n)
        width = int(0.002 * sample_rate)
        for start in np.arange(0, n, int(sample_rate / p["rate_hz"])):
            x[start:start + width] = np.hanning(width + 2)[1:-1][: n - start]
    else:
        raise ValueError(f"unknown event kind {event.kind!r}; allowed: {', '.join(EVENT_KINDS)}")
    return p.get("gain", 0.5) * x * _envelope(n, sample_rate)


def _pitch_word(f0: float) -> str:
    return "low" if f0 < 300 else "mid" if f0 < 600 else "high"


def random_event(kind: str, onset: float, offset: float, rng: np.random.Generator, *,
                 tone_pitches: tuple[float, ...] | None = None) -> SoundEvent:
    """An event of ``kind`` over [onset, offset) with parameters drawn from ``rng``: gain U(0.3, 0.6); tones a
    log-uniform f0 in [150, 900] Hz (or one of ``tone_pitches``) with 1-3 harmonics; chirps an exponential sweep
    over a factor 2-3 from a 150-350 Hz end; melodies 3-5 major-scale notes; noise bursts a band; clicks a rate."""
    gain = float(rng.uniform(0.3, 0.6))
    if kind == "tone":
        f0 = (float(np.exp(rng.uniform(np.log(150), np.log(900)))) if tone_pitches is None
              else float(tone_pitches[int(rng.integers(len(tone_pitches)))]))
        params = {"f0": f0, "harmonics": int(rng.integers(1, 4))}
    elif kind in ("chirp_up", "chirp_down"):
        lo = float(np.exp(rng.uniform(np.log(150), np.log(350))))
        hi = lo * float(rng.uniform(2.0, 3.0))
        params = {"f_start": lo, "f_end": hi} if kind == "chirp_up" else {"f_start": hi, "f_end": lo}
        params["harmonics"] = int(rng.integers(1, 3))
    elif kind == "melody":
        root = float(np.exp(rng.uniform(np.log(200), np.log(400))))
        steps = rng.choice(MAJOR_SCALE, size=int(rng.integers(3, 6)))
        params = {"notes": [root * 2 ** (s / 12) for s in steps], "harmonics": 2}
    elif kind == "noise_burst":
        low = float(rng.uniform(200, 2000))
        params = {"low_hz": low, "high_hz": float(min(7900.0, low * rng.uniform(2, 4)))}
    else:
        params = {"rate_hz": float(rng.uniform(5, 15))}
    params["gain"] = gain
    return SoundEvent(kind, onset, offset, params)


def plain_caption(events: list[SoundEvent]) -> str:
    """'a rising chirp then a burst of noise' (tones name their pitch range: low < 300 Hz <= mid < 600 Hz <= high)."""
    parts = [_PLAIN[e.kind].format(pitch=_pitch_word(e.params.get("f0", 0.0))) for e in events]
    return " then ".join(parts)


def structured_caption(events: list[SoundEvent]) -> str:
    """Make-An-Audio 2's ordered caption: '<chirp up& start>@<noise burst& end>' ('all' for a lone event)."""
    if len(events) == 1:
        return f"<{EVENT_WORDS[events[0].kind]}& all>"
    places = ("start", "end") if len(events) == 2 else ("start",) + ("mid",) * (len(events) - 2) + ("end",)
    return "@".join(f"<{EVENT_WORDS[e.kind]}& {p}>" for e, p in zip(events, places))


def make_clip(seed: int, index: int, *, duration: float = 2.0, num_events: int | None = None,
              kinds: tuple[str, ...] = EVENT_KINDS, sample_rate: int = SAMPLE_RATE) -> SoundClip:
    """Clip number ``index`` of the stream ``seed``: one or two (``num_events``; default random) non-overlapping
    events of distinct kinds placed in order inside ``duration`` seconds, with a little background silence."""
    if num_events not in (None, 1, 2):
        raise ValueError(f"num_events must be 1, 2 or None (random), got {num_events!r}")
    bad = [k for k in kinds if k not in EVENT_KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {', '.join(EVENT_KINDS)}, got {kinds!r}")
    rng = np.random.default_rng([int(seed), int(index)])
    count = int(rng.integers(1, 3)) if num_events is None else num_events
    count = min(count, len(kinds))
    chosen = [str(k) for k in rng.choice(kinds, size=count, replace=False)]
    n = int(round(duration * sample_rate))
    wave = np.zeros(n)
    events = []
    if count == 1:
        start = rng.uniform(0.05, 0.2) * duration
        spans = [(start, start + rng.uniform(0.5, 0.75) * duration)]
    else:
        gap = rng.uniform(0.05, 0.12) * duration
        first = rng.uniform(0.3, 0.42) * duration
        start = rng.uniform(0.03, 0.08) * duration
        spans = [(start, start + first), (start + first + gap, min(duration * 0.97, start + first + gap
                                                                       + rng.uniform(0.3, 0.42) * duration))]
    for kind, (on, off) in zip(chosen, spans):
        on, off = round(on * sample_rate) / sample_rate, round(off * sample_rate) / sample_rate
        event = random_event(kind, on, off, rng)
        samples = synthesize_event(event, sample_rate, rng)
        i = int(round(on * sample_rate))
        wave[i:i + samples.size] += samples[: n - i]
        events.append(event)
    return SoundClip(np.clip(wave, -1, 1).astype(np.float32), events, plain_caption(events),
                     structured_caption(events), sample_rate)


def make_clips(count: int, *, seed: int = 0, **kwargs) -> list[SoundClip]:
    """Clips 0..count-1 of stream ``seed`` (each independent of ``count``: clip i is the same in any prefix)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    return [make_clip(seed, i, **kwargs) for i in range(count)]
