"""``diffusekit audio tts``: text-to-speech with the shipped ProDiff model (zoo:speech_prodiff).

    diffusekit audio tts --text "seven green apples" [--voice en-us] [--rate 160] [--pitch 50] [--steps 2]
                         [--vocoder griffin-lim|DIR/speech_vocoder.json] [--model zoo:speech_prodiff] [--seed 0]
                         --out x.wav [--overwrite] [--no-progress]

Text -> phonemes: a text spoken in the corpus (same words) takes its recorded espeak-ng phonemes; otherwise each
word is looked up in the lexicon shipped in the model's manifest (espeak-ng phonemes of the corpus' one-word
utterances, the requested voice's pronunciation when it was recorded). Words outside the lexicon need espeak-ng
(the Debian package) at synthesis time; without it the command stops with one error line naming the unknown words.
Phonemes -> mel: ProDiff (Huang et al. 2022, arXiv 2207.06389) with durations from its duration predictor, the
distilled student in 2 DDIM steps (``--steps 4``: the teacher). Mel -> wave: Griffin-Lim (32 iterations) or the
trained vocoder of ``domains.audio.vocoder`` (``--vocoder DIR/speech_vocoder.json`` as written by
``zoo.recipes_audio.build_speech_vocoder``; it is not shipped: see ``bench vocoder``). Writes x.wav (16 kHz,
16-bit) and its spectrogram x.png.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import UserError

HELP = "text-to-speech with ProDiff (zoo:speech_prodiff): writes a wav and its spectrogram PNG"
STEPS = {2: "student", 4: "teacher"}
VOCODER_CHOICES = ("griffin-lim",)  # a trained vocoder is not shipped: it did not beat Griffin-Lim (bench vocoder)
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def add_arguments(parser) -> None:
    d = " (default: %(default)s)"
    parser.add_argument("--text", required=True, help="what to say (English words; digits are read one by one)")
    parser.add_argument("--voice", default="en-us", help="espeak-ng voice of the corpus (the error lists them)" + d)
    parser.add_argument("--rate", type=int, default=160, help="speaking rate, words per minute (a corpus setting)" + d)
    parser.add_argument("--pitch", type=int, default=50, help="espeak-ng pitch 0-99 (a corpus setting)" + d)
    parser.add_argument("--steps", type=int, default=2, help="2: the distilled student; 4: the teacher" + d)
    parser.add_argument("--vocoder", default="griffin-lim",
                        help="griffin-lim, or the manifest DIR/NAME.json of a trained vocoder" + d)
    parser.add_argument("--model", default="zoo:speech_prodiff",
                        help="zoo:NAME or the path of an asset manifest NAME.json (weights beside it)" + d)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler's noise" + d)
    parser.add_argument("--out", required=True, help="output .wav (the spectrogram .png is written beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out and its PNG if they exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def asset_location(spec: str, flag: str = "--model") -> tuple[str, Path]:
    """(asset name, assets folder) of ``zoo:NAME`` or of a manifest path ``DIR/NAME.json``; UserError otherwise."""
    from ...zoo import ASSETS_DIR, MODELS

    if spec.startswith("zoo:"):
        name = spec[4:]
        if name not in MODELS:
            raise UserError(f"{flag} {spec}: unknown zoo model; available: {', '.join(MODELS)}")
        return name, ASSETS_DIR
    path = Path(spec)
    if path.suffix != ".json" or not path.is_file():
        raise UserError(f"{flag} must be zoo:NAME or an existing asset manifest NAME.json; got {spec!r}")
    return path.stem, path.parent


def read_manifest(spec: str, kind: str, flag: str = "--model") -> tuple[str, Path, dict]:
    """(name, folder, manifest) of an audio asset of the given ``kind``; UserError when missing or another kind."""
    from ...zoo import ZooError, manifest

    name, folder = asset_location(spec, flag)
    try:
        meta = manifest(name, folder)
    except ZooError as err:
        raise UserError(f"{flag} {spec}: {err}") from None
    if meta.get("kind") != kind:
        raise UserError(f"{flag} {spec} is a {meta.get('kind')!r} asset; this command needs a {kind!r} model")
    return name, folder, meta


def load_asset(name: str, folder: Path, flag: str = "--model"):
    """``zoo.load`` with its errors as UserError."""
    from ...zoo import ZooError, load

    try:
        return load(name, assets_dir=folder)
    except ZooError as err:
        raise UserError(f"{flag}: {err}") from None


def words_of(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters and apostrophes); each digit character becomes its English word."""
    words = []
    for token in re.findall(r"[a-z']+|[0-9]", text.lower()):
        words.append(DIGITS[int(token)] if token.isdigit() else token.strip("'"))
    return [w for w in words if w]


def espeak_phonemes(text: str, voice: str, rate: int, pitch: int) -> list[str]:
    """espeak-ng's phoneme sequence for ``text`` (needs the espeak-ng library; EspeakError otherwise)."""
    from .speech import espeak_synthesize

    _, phonemes, _ = espeak_synthesize(text, voice=voice, rate=rate, pitch=pitch)
    return phonemes


def text_to_phonemes(text: str, voice: str, rate: int, pitch: int, meta: dict) -> tuple[list[str], str]:
    """(phonemes, source) for ``text``: the corpus recording of the same words ("corpus"), the lexicon's words
    between pauses ("lexicon"), or espeak-ng ("espeak-ng"); UserError naming unknown words when espeak-ng is
    missing, or phonemes the model does not know."""
    from .speech import EspeakError

    words = words_of(text)
    if not words:
        raise UserError(f"--text {text!r} has no words to say")
    lexicon = meta["lexicon"]

    def pick(options: dict) -> list[str]:
        return list(options.get(voice) or next(iter(options.values())))

    joined = " ".join(words)
    if joined in lexicon["texts"]:
        return pick(lexicon["texts"][joined]), "the corpus recording"
    unknown = [w for w in dict.fromkeys(words) if w not in lexicon["words"]]
    if not unknown:
        core = [p for w in words for p in pick(lexicon["words"][w])]
        return ["_"] + core + ["_:", "_"], "the lexicon"
    try:
        phonemes = espeak_phonemes(joined, voice, rate, pitch)
    except EspeakError:
        raise UserError(f"--text: {', '.join(repr(w) for w in unknown)} not in the speech corpus and espeak-ng is "
                        f"not installed (install the Debian package espeak-ng, or use only these words: "
                        f"{' '.join(sorted(lexicon['words']))})") from None
    missing = sorted(set(phonemes) - set(meta["phonemes"]))
    if missing:
        raise UserError(f"--text: espeak-ng speaks {', '.join(repr(w) for w in unknown)} with phonemes "
                        f"{' '.join(missing)} that the model never heard; use other words")
    return phonemes, "espeak-ng"


def check_vocoder(spec: str):
    """None for Griffin-Lim, else the loaded trained vocoder: ``zoo:speech_vocoder`` (where the zoo ships it) or
    the manifest ``DIR/NAME.json`` that ``zoo.recipes_audio.build_speech_vocoder`` wrote (sha256-checked)."""
    import json

    from ...zoo import MODELS, sha256_file

    if spec == "griffin-lim":
        return None
    if spec.startswith("zoo:") and spec[4:] in MODELS:
        name, folder, _ = read_manifest(spec, "vocoder", "--vocoder")
        return load_asset(name, folder, "--vocoder")
    path = Path(spec)
    if path.suffix != ".json" or not path.is_file():
        raise UserError(f"--vocoder must be one of {', '.join(VOCODER_CHOICES)} (where shipped) or the path of a "
                        f"vocoder manifest NAME.json; got {spec!r}")
    try:
        meta = json.loads(path.read_text())
        weights = path.parent / meta["file"]
        ok = meta.get("kind") == "vocoder" and weights.is_file() and sha256_file(weights) == meta["sha256"]
    except (ValueError, KeyError, TypeError, OSError):
        ok = False
    if not ok:
        raise UserError(f"--vocoder {spec}: not a vocoder manifest whose weights file matches its sha256")

    from safetensors.torch import load_file

    from ...zoo.recipes_audio import load_speech_vocoder

    try:
        return load_speech_vocoder(load_file(str(weights)), meta)
    except (TypeError, RuntimeError) as err:
        raise UserError(f"--vocoder {spec}: does not fit this version's vocoder ({str(err).splitlines()[0]}); "
                        f"rebuild it") from None


def run(args) -> int:
    """Check every input, then synthesise, vocode and write the wav + PNG."""
    import numpy as np
    import torch

    from ...methods.prodiff import synthesize, vocode
    from .vocoder import vocode as neural_vocode
    from .wavio import check_wav_output, write_wav_with_spectrogram

    check_wav_output(args.out, overwrite=args.overwrite)
    if args.steps not in STEPS:
        raise UserError(f"--steps must be one of {', '.join(map(str, STEPS))} (2: distilled student, 4: teacher); "
                        f"got {args.steps}")
    name, folder, meta = read_manifest(args.model, "tts")
    for flag, value, allowed in (("--voice", args.voice, meta["voices"]), ("--rate", args.rate, meta["rates"]),
                                 ("--pitch", args.pitch, meta["pitches"])):
        if value not in allowed:
            raise UserError(f"{flag} must be one of {', '.join(map(str, allowed))} (the corpus' settings); "
                            f"got {value}")
    vocoder_asset = check_vocoder(args.vocoder)
    phonemes, source = text_to_phonemes(args.text, args.voice, args.rate, args.pitch, meta)

    model = load_asset(name, folder)
    net, ts = (model.student, model.student_grid) if STEPS[args.steps] == "student" else \
        (model.teacher, model.teacher_grid)
    ids = torch.tensor([model.vocabulary.encode(phonemes)], dtype=torch.long)
    style = torch.tensor([[model.voices.index(args.voice), model.rates.index(args.rate),
                           model.pitches.index(args.pitch)]], dtype=torch.long)
    mel, frames = synthesize(net, model.schedule, ts, ids, style, generator=torch.Generator().manual_seed(args.seed))
    f = int(frames[0])
    if vocoder_asset is None:
        wave = vocode(mel[0], f, seed=args.seed)
    else:
        wave = neural_vocode(vocoder_asset, mel[0, :, :f].numpy())
    wav, png = write_wav_with_spectrogram(args.out, np.asarray(wave), title=f"{args.text} ({args.voice})",
                                          overwrite=args.overwrite)
    print(f"wrote {wav} ({wave.size / 16000:.2f} s, {len(phonemes)} phonemes from {source}, {args.steps} steps, "
          f"{args.vocoder}) and {png}")
    return 0
