"""``diffusekit personalize``: λ-ECLIPSE subject-driven generation on the captioned digits.

    diffusekit personalize --subject img.png [--subject img2.png] --prompt "a red 3 on the left and a 7 on the right"
                           --out grid.png [--num 4] [--guidance W] [--steps N] [--seed S]
                           [--model zoo:captions_eclipse] [--overwrite] [--no-progress]

The prompt uses the caption vocabulary of the captioned digits (``nets.text.caption_vocabulary``); each of its digit
words (in reading order) is replaced by the CLIP embedding of one ``--subject`` image (in the order given), so the
digits drawn take their identity from the subjects and colour, stroke and position from the words (λ-ECLIPSE,
Patel et al. 2024, arXiv 2402.05195: one pass of a non-diffusion prior, then an unCLIP-style decoder with
classifier-free guidance ``--guidance``). Subjects: PNG files (grey or RGB; resized to 24 x 24, best a single digit
on black). Output: a PNG grid: the subject images on the first row, then ``--num`` samples. Every input mistake
(unknown word, unreadable image, a subject count different from the prompt's digit words) ends in one ``error:``
line before any model runs; nothing is overwritten without ``--overwrite``; the grid is written atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError

HELP = "λ-ECLIPSE personalisation: draw the prompt with its digit words bound to subject images (captions_eclipse)"
MODELS = ("zoo:captions_eclipse",)


def add_arguments(parser) -> None:
    """The flags of ``diffusekit personalize``."""
    parser.add_argument("--subject", action="append", required=True,
                        help="subject image (.png); repeat once per digit word of the prompt, in reading order")
    parser.add_argument("--prompt", required=True, help='e.g. "a thick red 3 on the left and a blue 7 on the right"')
    parser.add_argument("--out", required=True, help="output PNG grid (subjects, then the samples)")
    parser.add_argument("--num", type=int, default=4, help="number of samples")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale of the decoder")
    parser.add_argument("--steps", type=int, default=20, help="decoder sampler steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the decoder's noise")
    parser.add_argument("--model", default=MODELS[0], help=f"personalisation model: {', '.join(MODELS)}")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_subject(path: Path, size: int = 24):
    """One subject image (3, size, size) float32 in [-1, 1] from a PNG; UserError if it cannot be read."""
    from .image_input import read_image

    return read_image(path, flag="--subject", side=size, grey=False)


def _validate(args):
    """Check every flag and read the inputs; returns (subjects (S, 3, 24, 24), out path)."""
    import re

    import torch

    from .io import check_output_file
    from .methods.eclipse import DIGIT_WORDS
    from .nets.text import caption_vocabulary

    if args.model not in MODELS:
        raise UserError(f"--model must be one of {', '.join(MODELS)}; got {args.model!r}")
    for flag, value, low in (("--num", args.num, 1), ("--steps", args.steps, 1), ("--seed", args.seed, 0)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}; got {value}")
    if args.num > 64:
        raise UserError(f"--num must be at most 64; got {args.num}")
    if not args.guidance >= 0 or args.guidance > 50:
        raise UserError(f"--guidance must be in [0, 50]; got {args.guidance}")
    vocabulary = set(caption_vocabulary())
    words = re.findall(r"[a-z0-9]+", args.prompt.lower())
    unknown = [w for w in words if w not in vocabulary]
    if unknown:
        raise UserError(f"--prompt: word {unknown[0]!r} is not in the vocabulary ({' '.join(sorted(vocabulary))})")
    digits = [w for w in words if w in DIGIT_WORDS]
    if len(digits) not in (1, 2):
        raise UserError(f"--prompt must name one or two digits (one per subject); it names {len(digits)}")
    if len(args.subject) != len(digits):
        raise UserError(f"--prompt has {len(digits)} digit word(s) ({', '.join(digits)}) but {len(args.subject)} "
                        f"--subject image(s) were given; give one --subject per digit word, in reading order")
    if len(words) + 2 > 24:
        raise UserError(f"--prompt is too long ({len(words)} words; at most 22)")
    out = check_output_file(Path(args.out), overwrite=args.overwrite)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must be a .png file; got {out.name}")
    subjects = torch.stack([read_subject(Path(p)) for p in args.subject])
    return subjects, out


def run(args) -> int:
    """Validate, load ``captions_eclipse``, run the prior once and the decoder for ``--num`` samples, save a grid."""
    import torch

    from . import zoo
    from .plotting import save_image_grid

    subjects, out = _validate(args)
    pipeline = zoo.load(args.model.removeprefix("zoo:"))
    if not args.no_progress:
        print(f"personalize: {len(subjects)} subject(s), {args.num} sample(s), guidance {args.guidance:g}",
              file=sys.stderr)
    images = pipeline.personalize(args.prompt, subjects, num=args.num, guidance=args.guidance, steps=args.steps,
                                  seed=args.seed)
    row = max(len(subjects), min(args.num, 8))
    padded = torch.cat([subjects, torch.full((row - len(subjects), *subjects.shape[1:]), -1.0), images])
    save_image_grid(padded, out, nrow=row)
    print(f"wrote {out} ({args.num} samples of {args.prompt!r})")
    return 0
