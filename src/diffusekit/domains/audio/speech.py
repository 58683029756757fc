"""A small speech corpus we make ourselves with espeak-ng, shipped as one asset; loading needs no espeak-ng.

``diffusekit data build speech`` synthesises short utterances (digit words, digit strings, a vocabulary of common
words and short template sentences) with the espeak-ng formant synthesiser (the Debian package ``espeak-ng``,
through its C library by ctypes) over several voices, speaking rates and pitches drawn from a seed, and records
espeak-ng's own phoneme events, so every utterance carries its phoneme sequence and per-phoneme durations (the
alignment a FastSpeech-style TTS model such as ProDiff, Huang et al. 2022, arXiv 2207.06389, trains on).

Audio is resampled from espeak-ng's 22,050 Hz to 16 kHz (polyphase, scipy), trimmed to the speech plus 50 ms
either side, and stored as int16 in ``speech_corpus.safetensors`` (one concatenated array + offsets), with
``speech_corpus.json`` (the manifest: per-utterance text, voice, rate, pitch, phonemes and boundaries in samples,
the recipe and the sha256 of the weights file). :func:`load_speech_corpus` verifies the sha256 and returns the
utterances; the global RNG is never touched and the build is deterministic for a given espeak-ng version.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import SAMPLE_RATE

__all__ = ["ASSET_DIR", "CORPUS_NAME", "Utterance", "SpeechCorpus", "EspeakError", "espeak_synthesize",
           "corpus_texts", "build_speech_corpus", "load_speech_corpus"]

ASSET_DIR = Path(__file__).parent / "assets"
CORPUS_NAME = "speech_corpus"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOCABULARY = (
    "red green blue yellow black white orange purple brown grey "
    "cat dog bird fish horse mouse cow sheep goat duck "
    "sun moon star rain snow wind cloud tree leaf stone "
    "house door window table chair bed lamp clock book pen "
    "run walk jump swim sing read write open close stop "
    "big small long short fast slow hot cold new old "
    "left right up down near far here there yes no "
    "water bread apple milk cheese salt sugar tea rice egg "
    "morning evening night today tomorrow always never again early late "
    "hello thanks please sorry welcome goodbye maybe really quite very"
).split()
SUBJECTS = ("the cat", "a small dog", "my brother", "the old man", "a red bird", "the teacher", "our neighbour")
VERBS = ("sees", "likes", "finds", "opens", "paints", "carries", "follows")
OBJECTS = ("a blue door", "the green apple", "seven stones", "the long road", "a warm bed", "the big clock")
VOICES = ("en-us", "en", "en-us+f2", "en+f4", "en-gb-scotland+m3", "en-us+m5")  # "en" = British English
RATES = (130, 160, 190)  # words per minute
PITCHES = (35, 50, 65)  # espeak-ng pitch 0-99 (50 = the voice's default)
CORPUS_SEED = 0


class EspeakError(RuntimeError):
    """espeak-ng is missing or failed; only building the corpus needs it."""


@dataclass
class Utterance:
    """One utterance: int16 audio at 16 kHz, its text and speaker settings, and the phoneme alignment
    (``phonemes[i]`` spans samples ``boundaries[i]:boundaries[i + 1]``)."""

    text: str
    kind: str
    voice: str
    rate: int
    pitch: int
    audio: np.ndarray
    phonemes: list[str]
    boundaries: list[int]

    @property
    def wave(self) -> np.ndarray:
        """float32 samples in [-1, 1]."""
        return self.audio.astype(np.float32) / 32768.0

    @property
    def durations(self) -> np.ndarray:
        """Samples per phoneme."""
        return np.diff(np.asarray(self.boundaries))


@dataclass
class SpeechCorpus:
    utterances: list[Utterance]
    manifest: dict

    def __len__(self) -> int:
        return len(self.utterances)

    def phoneme_inventory(self) -> list[str]:
        """Sorted distinct phoneme symbols (espeak-ng's ASCII mnemonics)."""
        return sorted({p for u in self.utterances for p in u.phonemes})


class _EspeakEventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _EspeakEvent(ctypes.Structure):  # espeak_EVENT of speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EspeakEventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_EspeakEvent))
_EVENT_END_OF_LIST, _EVENT_PHONEME = 0, 7
_AUDIO_OUTPUT_SYNCHRONOUS, _INITIALIZE_PHONEME_EVENTS = 2, 1
_RATE, _VOLUME, _PITCH, _RANGE, _PUNCTUATION, _CAPITALS, _WORDGAP = 1, 2, 3, 4, 5, 6, 7


class _Espeak:
    """The espeak-ng C library in synchronous mode with phoneme events."""

    _instance = None

    def __init__(self):
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(path)
        except OSError:
            raise EspeakError("espeak-ng not found: install the Debian package espeak-ng to build the speech corpus "
                              "(loading the shipped corpus does not need it)") from None
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise EspeakError("espeak-ng failed to initialise (espeak-ng-data missing?)")
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[str, int]] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: ctypes must not free it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_Info.restype = ctypes.c_char_p
        self.version = self.lib.espeak_Info(None).decode()

    @classmethod
    def get(cls) -> _Espeak:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _collect(self, wav, count, events) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
        i = 0
        while events[i].type != _EVENT_END_OF_LIST:
            if events[i].type == _EVENT_PHONEME:
                self.events.append((events[i].id.string.decode("ascii", "replace"), int(events[i].sample)))
            i += 1
        return 0

    def synthesize(self, text: str, voice: str, rate: int, pitch: int):
        self.chunks, self.events = [], []
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice!r}")
        # every parameter set explicitly, so an utterance does not depend on what was spoken before it
        for param, value in ((_RATE, rate), (_VOLUME, 100), (_PITCH, pitch), (_RANGE, 50), (_PUNCTUATION, 0),
                             (_CAPITALS, 0), (_WORDGAP, 0)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        data = text.encode()
        if self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None) != 0:
            raise EspeakError(f"espeak-ng failed on {text!r}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return audio.astype(np.int16), list(self.events)


def espeak_synthesize(text: str, *, voice: str = "en-us", rate: int = 160, pitch: int = 50,
                      sample_rate: int = SAMPLE_RATE):
    """Speak ``text`` with espeak-ng: (int16 audio at ``sample_rate``, phonemes, boundaries in samples).

    espeak-ng's breathy voice variants draw from a noise generator seeded once per process, so the exact samples
    depend on what this process spoke before; :func:`build_speech_corpus` therefore synthesises in a fresh
    worker process, which makes the corpus reproducible.

    Phoneme starts come from espeak-ng's phoneme events (sample positions at its native rate), rescaled to
    ``sample_rate``; pause symbols ('_', '_:') are kept, so the phonemes tile the audio; the last boundary is the
    audio length. Needs the espeak-ng library (:class:`EspeakError` otherwise).
    """
    from scipy.signal import resample_poly

    engine = _Espeak.get()
    native, events = engine.synthesize(text, voice, rate, pitch)
    g = np.gcd(sample_rate, engine.sample_rate)
    audio = resample_poly(native.astype(np.float64), sample_rate // g, engine.sample_rate // g)
    audio = np.clip(np.round(audio), -32768, 32767).astype(np.int16)
    scale = sample_rate / engine.sample_rate
    starts = [min(audio.size, int(round(s * scale))) for _, s in events]
    phonemes = [p for p, _ in events]
    keep = [i for i in range(len(starts)) if i + 1 == len(starts) or starts[i + 1] > starts[i]]  # drop empty ones
    phonemes, starts = [phonemes[i] for i in keep], [starts[i] for i in keep]
    if not starts or starts[0] > 0:
        phonemes, starts = ["_"] + phonemes, [0] + starts
    # espeak-ng closes with a zero-length end marker at the audio's end: drop it, then the end is the last boundary
    if len(starts) > 1 and starts[-1] >= audio.size:
        phonemes, starts = phonemes[:-1], starts[:-1]
    return audio, phonemes, starts + [int(audio.size)]


def _trim(audio: np.ndarray, phonemes: list[str], boundaries: list[int], margin: int, threshold: int = 300):
    """Cut leading/trailing silence (|x| < threshold) to ``margin`` samples and shift the alignment with it."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) >= threshold)
    if loud.size == 0:
        return audio, phonemes, boundaries
    lo, hi = max(0, loud[0] - margin), min(audio.size, loud[-1] + 1 + margin)
    cut = [min(max(b, lo), hi) - lo for b in boundaries]
    keep = [i for i in range(len(phonemes)) if cut[i + 1] > cut[i]]
    return audio[lo:hi], [phonemes[i] for i in keep], [cut[i] for i in keep] + [cut[keep[-1] + 1]]


def corpus_texts(seed: int = CORPUS_SEED) -> list[tuple[str, str]]:
    """(kind, text) of the corpus: every digit word, 40 three-digit strings, the vocabulary, 40 sentences."""
    rng = np.random.default_rng(seed)
    texts = [("digit", w) for w in DIGIT_WORDS]
    texts += [("digits", " ".join(DIGIT_WORDS[d] for d in rng.integers(0, 10, 3))) for _ in range(40)]
    texts += [("word", w) for w in VOCABULARY]
    texts += [("sentence", f"{SUBJECTS[rng.integers(len(SUBJECTS))]} {VERBS[rng.integers(len(VERBS))]} "
                           f"{OBJECTS[rng.integers(len(OBJECTS))]}") for _ in range(40)]
    return texts


def _speak_jobs(jobs: list[tuple]) -> list[tuple]:
    """Worker: synthesise and trim each (kind, text, voice, rate, pitch) job in order."""
    out = []
    for _, text, voice, rate, pitch in jobs:
        audio, phonemes, bounds = espeak_synthesize(text, voice=voice, rate=rate, pitch=pitch)
        out.append((*_trim(audio, phonemes, bounds, margin=int(0.05 * SAMPLE_RATE)), _Espeak.get().version))
    return out


def build_speech_corpus(out_dir: str | Path = ASSET_DIR, *, seed: int = CORPUS_SEED, digit_repeats: int = 6,
                        limit: int | None = None, progress: bool = False) -> dict:
    """Synthesise the corpus and write ``speech_corpus.safetensors`` + ``speech_corpus.json`` atomically.

    Digit words are spoken ``digit_repeats`` times (each a different voice/rate/pitch draw), everything else once.
    ``limit`` keeps the first utterances only (tests). Returns the manifest.
    """
    import torch
    from safetensors.torch import save_file

    from ...io import atomic_write, atomic_write_json

    rng = np.random.default_rng(seed + 1)
    jobs = []
    for kind, text in corpus_texts(seed):
        for _ in range(digit_repeats if kind == "digit" else 1):
            jobs.append((kind, text, VOICES[rng.integers(len(VOICES))], int(rng.choice(RATES)),
                         int(rng.choice(PITCHES))))
    jobs = jobs[:limit] if limit is not None else jobs
    results = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="speech corpus", unit="utt")
    # one fresh worker speaks everything in order (see espeak_synthesize), in chunks so the bar can move
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as worker:
        for start in range(0, len(jobs), 20):
            chunk = jobs[start:start + 20]
            results += worker.submit(_speak_jobs, chunk).result()
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    audios, rows, offset = [], [], 0
    for (kind, text, voice, rate, pitch), (audio, phonemes, bounds, _) in zip(jobs, results):
        rows.append({"text": text, "kind": kind, "voice": voice, "rate": rate, "pitch": pitch, "start": offset,
                     "length": int(audio.size), "phonemes": phonemes, "boundaries": bounds})
        audios.append(audio)
        offset += audio.size
    out_dir = Path(out_dir)
    weights = out_dir / f"{CORPUS_NAME}.safetensors"
    tensor = torch.from_numpy(np.concatenate(audios) if audios else np.zeros(0, np.int16))
    atomic_write(weights, lambda tmp: save_file({"audio": tensor}, str(tmp)))
    manifest = {"name": CORPUS_NAME, "file": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                "sample_rate": SAMPLE_RATE, "dtype": "int16", "espeak_ng": results[0][3] if results else None,
                "recipe": {"seed": seed, "digit_repeats": digit_repeats, "voices": list(VOICES), "rates": list(RATES),
                           "pitches": list(PITCHES), "limit": limit, "trim_margin_s": 0.05},
                "seconds": offset / SAMPLE_RATE, "utterances": rows}
    atomic_write_json(out_dir / f"{CORPUS_NAME}.json", manifest)
    return manifest


def load_speech_corpus(asset_dir: str | Path = ASSET_DIR, *, verify: bool = True) -> SpeechCorpus:
    """Load the shipped corpus (sha256-verified unless ``verify=False``); needs no espeak-ng."""
    from safetensors.numpy import load_file

    asset_dir = Path(asset_dir)
    meta_path, weights = asset_dir / f"{CORPUS_NAME}.json", asset_dir / f"{CORPUS_NAME}.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no speech corpus in {asset_dir}; build it with `diffusekit data build speech`")
    manifest = json.loads(meta_path.read_text())
    if verify and hashlib.sha256(weights.read_bytes()).hexdigest() != manifest["sha256"]:
        raise ValueError(f"{weights} does not match the sha256 in its manifest; rebuild it with "
                         "`diffusekit data build speech`")
    audio = load_file(str(weights))["audio"]
    utterances = [Utterance(r["text"], r["kind"], r["voice"], r["rate"], r["pitch"],
                            audio[r["start"]: r["start"] + r["length"]], r["phonemes"], r["boundaries"])
                  for r in manifest["utterances"]]
    return SpeechCorpus(utterances, manifest)
