"""``diffusekit video sample``: class- (and first-frame-) conditional moving-digit clips from a video diffusion model.

    diffusekit video sample [--model zoo:moving_digits_video] [--digit D] [--num N] [--first-frame img.png]
                            [--steps N] [--sampler ddim] [--guidance W] [--seed S] --out x.gif [--overwrite]
                            [--no-progress]

Writes an animated GIF (the N clips side by side, one GIF frame per video frame) and a PNG contact sheet beside it
(``x.png``: one row per clip, one column per frame), both atomically. ``--digit`` picks the class of every clip
(default: clips cycle through 0-9); ``--first-frame`` (a PNG, resized to the model's canvas) conditions every clip on
that first frame (models trained with first-frame conditioning only). Every input mistake ends in one ``error:``
line before the model runs; nothing is overwritten without ``--overwrite``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ...errors import UserError

HELP = "sample moving-digit clips (class / first-frame conditional video diffusion) into a GIF + PNG contact sheet"
DEFAULT_MODEL = "zoo:moving_digits_video"
MAX_NUM = 64


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="video model (default zoo:moving_digits_video)")
    parser.add_argument("--digit", type=int, default=None, help="digit class 0-9 of every clip (default: 0, 1, ...)")
    parser.add_argument("--num", type=int, default=4, help=f"number of clips (1-{MAX_NUM}; default 4)")
    parser.add_argument("--first-frame", default=None, help="PNG of the first frame to continue (grey, any size)")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps (1-1000; default 25)")
    parser.add_argument("--sampler", default="ddim", help="any registered sampler (default ddim)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default: the model's recommended scale)")
    parser.add_argument("--seed", type=int, default=0, help="seed; clip i uses seed + i (default 0)")
    parser.add_argument("--fps", type=float, default=4.0, help="GIF frames per second (default 4)")
    parser.add_argument("--out", required=True, help="output .gif (a .png contact sheet is written beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def clip_frames(clips, *, scale: int = 4, pad: int = 1) -> list[np.ndarray]:
    """One uint8 (H', W') image per video frame with the clips (N, T, 1, H, W) in [-1, 1] side by side, upscaled by
    ``scale`` (nearest neighbour)."""
    from ...plotting import image_grid

    n, frames = clips.shape[:2]
    out = []
    for f in range(frames):
        grid = image_grid(clips[:, f], nrow=n, pad=pad)
        out.append(np.kron(grid, np.ones((scale, scale), dtype=np.uint8)))
    return out


def gif_bytes(frames: list[np.ndarray], fps: float = 4.0) -> bytes:
    """A looping GIF of uint8 frames (all one shape), as bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
                   loop=0)
    return buffer.getvalue()


def contact_sheet_png(clips, *, scale: int = 4) -> bytes:
    """A PNG with one row per clip and one column per frame (clips (N, T, 1, H, W) in [-1, 1])."""
    from PIL import Image

    from ...plotting import image_grid

    n, frames = clips.shape[:2]
    grid = image_grid(clips.reshape(n * frames, *clips.shape[2:]), nrow=frames)
    buffer = io.BytesIO()
    Image.fromarray(np.kron(grid, np.ones((scale, scale), dtype=np.uint8))).save(buffer, format="PNG")
    return buffer.getvalue()


def _read_first_frame(path: Path, side: int):
    from ...image_input import read_image

    return read_image(path, flag="--first-frame", side=side, grey=True)


def _load_model(spec: str):
    from ... import zoo

    if not spec.startswith("zoo:"):
        raise UserError(f"--model must be zoo:moving_digits_video (a zoo video model); got {spec!r}")
    name = spec[4:]
    if name != "moving_digits_video":
        raise UserError(f"--model {spec}: not a video model; use zoo:moving_digits_video")
    try:
        return zoo.load(name)
    except (zoo.ZooError, FileNotFoundError) as err:
        raise UserError(f"--model {spec}: {err}") from None


def run(args) -> int:
    import torch

    from ...io import atomic_write_bytes, check_output_file
    from ...samplers import SAMPLERS

    out = Path(args.out)
    if out.suffix.lower() != ".gif":
        raise UserError(f"--out must end in .gif; got {out.name}")
    if not 1 <= args.num <= MAX_NUM:
        raise UserError(f"--num must be in [1, {MAX_NUM}]; got {args.num}")
    if args.digit is not None and not 0 <= args.digit <= 9:
        raise UserError(f"--digit must be an integer in [0, 9]; got {args.digit}")
    if not 1 <= args.steps <= 1000:
        raise UserError(f"--steps must be in [1, 1000]; got {args.steps}")
    if args.sampler not in SAMPLERS or SAMPLERS[args.sampler].students_only:
        allowed = ", ".join(sorted(k for k, v in SAMPLERS.items() if not v.students_only))
        raise UserError(f"--sampler {args.sampler!r} is unknown; allowed: {allowed}")
    if args.guidance is not None and not (np.isfinite(args.guidance) and 0 <= args.guidance <= 20):
        raise UserError(f"--guidance must be a number in [0, 20]; got {args.guidance}")
    if not (np.isfinite(args.fps) and 0.5 <= args.fps <= 50):
        raise UserError(f"--fps must be in [0.5, 50]; got {args.fps}")
    if args.first_frame is not None and not Path(args.first_frame).is_file():
        raise UserError(f"--first-frame {args.first_frame}: no such file")
    sheet = out.with_suffix(".png")
    check_output_file(out, overwrite=args.overwrite)
    check_output_file(sheet, overwrite=args.overwrite, what="contact sheet")
    video = _load_model(args.model)
    first = None
    if args.first_frame is not None:
        if not video.net.config.get("first_frame"):
            raise UserError("--first-frame: this model was not trained with first-frame conditioning")
        first = _read_first_frame(Path(args.first_frame), video.net.config["image_size"])
    labels = torch.full((args.num,), args.digit) if args.digit is not None else torch.arange(args.num) % 10
    first = None if first is None else first[None].expand(args.num, -1, -1, -1)
    guidance = video.guidance if args.guidance is None else float(args.guidance)
    clips = video.sample(labels, first_frame=first, steps=args.steps, sampler=args.sampler, guidance=guidance,
                         seed=args.seed)
    atomic_write_bytes(out, gif_bytes(clip_frames(clips), args.fps))
    atomic_write_bytes(sheet, contact_sheet_png(clips))
    if not args.no_progress:
        print(f"wrote {out} and {sheet}: {args.num} clips of {clips.shape[1]} frames, digits "
              f"{', '.join(str(int(v)) for v in labels)}")
    return 0
