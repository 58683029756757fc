"""``diffusekit audio text2audio``: a 2-s sound from a caption with the shipped Auffusion model (zoo:events_auffusion).

    diffusekit audio text2audio --caption "a rising chirp" [--guidance 3] [--steps 20]
                                [--model zoo:events_auffusion] [--seed 0] --out x.wav [--overwrite] [--no-progress]

Auffusion (Xue et al. 2024, arXiv 2401.01044; ``methods.auffusion``): a text-conditioned UNet over 64-mel images
of 32 frames of 60 ms, sampled by DDIM with classifier-free guidance on the null caption (Ho & Salimans 2022,
arXiv 2207.12598; ``--guidance 1`` = no guidance), vocoded by Griffin-Lim. The model knows the captions it was
trained on ("a steady tone at 300 hz" for 200 / 300 / 450 / 675 hz, "a rising chirp", "a falling chirp", "a burst
of noise"); a caption with any other word stops with one error line listing the words it knows. Writes x.wav
(16 kHz, 16-bit) and its spectrogram x.png.
"""

from __future__ import annotations

import math
import re

from ...errors import UserError
from .cli_tts import load_asset, read_manifest

HELP = "text-to-audio with Auffusion (zoo:events_auffusion): writes a wav and its spectrogram PNG"


def add_arguments(parser) -> None:
    d = " (default: %(default)s)"
    parser.add_argument("--caption", required=True, help='what to generate, e.g. "a rising chirp"')
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = none)" + d)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps" + d)
    parser.add_argument("--model", default="zoo:events_auffusion",
                        help="zoo:NAME or the path of an asset manifest NAME.json (weights beside it)" + d)
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior noise and of Griffin-Lim" + d)
    parser.add_argument("--out", required=True, help="output .wav (the spectrogram .png is written beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out and its PNG if they exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def check_caption(caption: str, meta: dict) -> str:
    """The caption, lower-cased, after checking every word is one the model was trained on (one-line UserError
    listing them otherwise)."""
    words = re.findall(r"[a-z0-9]+", caption.lower())
    known = meta.get("caption_words") or meta["tokenizer"]["words"]
    if not words:
        raise UserError(f"--caption {caption!r} has no words; e.g. {', '.join(meta.get('caption_examples', [])[:3])}")
    unknown = [w for w in dict.fromkeys(words) if w not in known]
    if unknown:
        raise UserError(f"--caption: {', '.join(repr(w) for w in unknown)} not in the model's vocabulary; known "
                        f"words: {' '.join(known)}")
    return " ".join(words)


def run(args) -> int:
    """Check every input, then sample the mel image, vocode it and write the wav + PNG."""
    from ...methods.auffusion import generate_audio
    from .wavio import check_wav_output, write_wav_with_spectrogram

    check_wav_output(args.out, overwrite=args.overwrite)
    if args.steps < 1 or args.steps > 1000:
        raise UserError(f"--steps must be an integer in [1, 1000]; got {args.steps}")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise UserError(f"--guidance must be a finite number >= 0 (1 = no guidance); got {args.guidance}")
    name, folder, meta = read_manifest(args.model, "text_to_audio")
    caption = check_caption(args.caption, meta)
    denoiser = load_asset(name, folder)
    _, waves = generate_audio(denoiser, [caption], guidance=args.guidance, steps=args.steps, seed=args.seed)
    wav, png = write_wav_with_spectrogram(args.out, waves[0], title=caption, overwrite=args.overwrite)
    print(f"wrote {wav} ({waves[0].size / 16000:.2f} s, '{caption}', guidance {args.guidance:g}, {args.steps} "
          f"steps) and {png}")
    return 0
