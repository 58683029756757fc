"""``diffusekit data``: build the corpora we make ourselves.

    diffusekit data build speech [--out DIR] [--limit N] [--overwrite] [--no-progress]

``speech`` synthesises the espeak-ng speech corpus (``domains.audio.speech``; needs the Debian package espeak-ng)
into DIR (default: the package's shipped asset folder, which then needs ``--overwrite`` to be replaced).
Loading the corpus never needs espeak-ng.
"""

from __future__ import annotations

import sys

from .errors import UserError

HELP = "build the corpora we make ourselves (the espeak-ng speech corpus)"
CORPORA = ("speech",)


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="data_command", required=True)
    b = sub.add_parser("build", help="synthesise a corpus and write it as an asset with a sha256 manifest")
    b.add_argument("corpus", help=f"one of: {', '.join(CORPORA)}")
    b.add_argument("--out", default=None, help="folder to write (default: the package's asset folder)")
    b.add_argument("--limit", type=int, default=None, help="only the first N utterances (a smoke test)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing corpus in --out")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from pathlib import Path

    from .domains.audio import speech
    from .io import check_output_dir

    if args.corpus not in CORPORA:
        raise UserError(f"unknown corpus {args.corpus!r}; allowed: {', '.join(CORPORA)}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be a positive integer, got {args.limit}")
    out = check_output_dir(args.out if args.out is not None else speech.ASSET_DIR, what="--out")
    existing = [f for f in (Path(out) / f"{speech.CORPUS_NAME}.json", Path(out) / f"{speech.CORPUS_NAME}.safetensors")
                if f.exists()]
    if existing and not args.overwrite:
        raise UserError(f"{existing[0]} exists; pass --overwrite to replace it")
    try:
        manifest = speech.build_speech_corpus(out, limit=args.limit,
                                              progress=not args.no_progress and sys.stderr.isatty())
    except speech.EspeakError as err:
        raise UserError(str(err)) from None
    print(f"speech corpus: {len(manifest['utterances'])} utterances, {manifest['seconds']:.0f} s of 16 kHz audio, "
          f"espeak-ng {manifest['espeak_ng'].split()[0]}; written to {out}")
    return 0
