"""``diffusekit video interpolate``: in-between frames by a Consecutive Brownian Bridge (Lyu et al. 2024, arXiv
2405.05953; ``methods.bridge``).

    diffusekit video interpolate --first a.png --last b.png [--frames K] [--steps N] [--model zoo:moving_digits_cbb]
                                 [--seed S] [--fps F] [--scale X] --out x.gif [--overwrite] [--no-progress]
    diffusekit video interpolate --input clip.gif [--frames K] ... --out x.gif

With two images, writes the GIF first, K - 1 in-between frames, last (K in 1, 2, 4, 8, 16; the frames are made by
recursive midpoints: the middle one first, then the middles of both halves, ...). With ``--input`` (a GIF of 2-64
frames) every consecutive pair gets K - 1 frames in between (K = 2, the default, doubles the frame rate). Images are
read as grey (bright digit on a dark background, like the training clips), and square images of any size are
resized (box filter) to the model's 24 x 24 frames; non-square images are refused. The GIF shows frames upscaled by
``--scale`` (nearest neighbour). Every input mistake ends in one ``error:`` line before the model runs; nothing is
overwritten without ``--overwrite``; the GIF is written atomically.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError

HELP = "in-between frames of two images or a GIF clip by Consecutive Brownian Bridge interpolation (writes a GIF)"
DEFAULT_MODEL = "zoo:moving_digits_cbb"
MODELS = ("moving_digits_cbb",)
MAX_CLIP_FRAMES = 64


def add_arguments(parser) -> None:
    from ...methods.bridge import ALLOWED_FRAME_COUNTS

    parser.add_argument("--first", default=None, help="first frame (an image file: PNG, JPEG, ...)")
    parser.add_argument("--last", default=None, help="last frame (an image file)")
    parser.add_argument("--input", default=None, help="a GIF clip to raise the frame rate of (not with --first/--last)")
    parser.add_argument("--frames", type=int, default=None,
                        help=f"K in {', '.join(map(str, ALLOWED_FRAME_COUNTS))}: insert K - 1 frames (default: 4 "
                             "between --first and --last, 2 per pair of an --input clip)")
    parser.add_argument("--steps", type=int, default=None, help="bridge steps per midpoint, 1-1000 (default: the "
                        "model's, 10)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="interpolation model: zoo:moving_digits_cbb")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bridge's step noise")
    parser.add_argument("--fps", type=float, default=4.0, help="GIF frames per second (0.5-50)")
    parser.add_argument("--scale", type=int, default=8, help="GIF pixels per frame pixel (1-32)")
    parser.add_argument("--out", required=True, help="output .gif")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _open_frames(path: Path, flag: str, side: int, *, max_frames: int):
    """Grey frames (N, 1, side, side) in [-1, 1] of an image (N = 1) or an animated GIF."""
    import numpy as np
    import torch
    from PIL import Image, ImageSequence, UnidentifiedImageError

    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    frames = []
    try:
        with Image.open(path) as img:
            if img.size[0] != img.size[1]:
                raise UserError(f"{flag} {path}: the image is {img.size[0]} x {img.size[1]}; give a square image "
                                f"(it is resized to the model's {side} x {side})")
            for frame in ImageSequence.Iterator(img):
                if len(frames) == max_frames:
                    raise UserError(f"{flag} {path}: more than {max_frames} frames; give at most {max_frames}")
                grey = frame.convert("L")
                if grey.size != (side, side):
                    grey = grey.resize((side, side), Image.BOX)
                frames.append(np.asarray(grey, dtype=np.float32) / 127.5 - 1.0)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"{flag} {path}: not a readable image ({err})") from None
    return torch.from_numpy(np.stack(frames))[:, None]


def _check_model(spec: str) -> tuple[str, int]:
    """(zoo name, frame side) from the asset's manifest, without loading the weights."""
    from ... import zoo

    if not spec.startswith("zoo:") or spec[4:] not in MODELS:
        raise UserError(f"--model must be one of {', '.join('zoo:' + m for m in MODELS)}; got {spec!r}")
    try:
        return spec[4:], int(zoo.manifest(spec[4:])["net"]["image_size"])
    except (zoo.ZooError, FileNotFoundError, KeyError) as err:
        raise UserError(f"--model {spec}: {err}") from None


def _load_model(name: str):
    from ... import zoo

    try:
        return zoo.load(name)
    except (zoo.ZooError, FileNotFoundError) as err:
        raise UserError(f"--model zoo:{name}: {err}") from None


def _check_args(args) -> tuple[Path, int]:
    import math

    from ...io import check_output_file
    from ...methods.bridge import ALLOWED_FRAME_COUNTS

    out = Path(args.out)
    if out.suffix.lower() != ".gif":
        raise UserError(f"--out must end in .gif; got {out.name}")
    if args.input is not None and (args.first is not None or args.last is not None):
        raise UserError("give either --input clip.gif or --first and --last, not both")
    if args.input is None and (args.first is None or args.last is None):
        raise UserError("give --first and --last (two images), or --input (a GIF clip)")
    frames = args.frames if args.frames is not None else (2 if args.input is not None else 4)
    if frames not in ALLOWED_FRAME_COUNTS:
        raise UserError(f"--frames must be one of {', '.join(map(str, ALLOWED_FRAME_COUNTS))} (recursive midpoints); "
                        f"got {frames}")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise UserError(f"--steps must be in [1, 1000]; got {args.steps}")
    if not (math.isfinite(args.fps) and 0.5 <= args.fps <= 50):
        raise UserError(f"--fps must be in [0.5, 50]; got {args.fps}")
    if not 1 <= args.scale <= 32:
        raise UserError(f"--scale must be in [1, 32]; got {args.scale}")
    check_output_file(out, overwrite=args.overwrite)
    return out, frames


def run(args) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from ...plotting import image_grid, save_gif

    out, frames = _check_args(args)
    name, side = _check_model(args.model)
    if args.input is not None:
        clip = _open_frames(Path(args.input), "--input", side, max_frames=MAX_CLIP_FRAMES)
        if len(clip) < 2:
            raise UserError(f"--input {args.input}: has {len(clip)} frame; give a clip of at least 2 frames")
        first, last = clip[:-1], clip[1:]
    else:
        first = _open_frames(Path(args.first), "--first", side, max_frames=1)
        last = _open_frames(Path(args.last), "--last", side, max_frames=1)
    model = _load_model(name)
    pairs = first.shape[0]
    bar = tqdm(total=pairs * (frames - 1), desc="interpolate", unit="frame", disable=args.no_progress)
    seq = model.insert_frames(first, last, frames, steps=args.steps, generator=torch.Generator().manual_seed(args.seed),
                              progress=bar.update)
    bar.close()
    # seq: frames + 1 tensors of shape (pairs, 1, H, W); pair p contributes seq[0..K-1][p], the final pair also seq[K]
    ordered = [seq[k][p] for p in range(pairs) for k in range(frames)] + [seq[-1][-1]]
    scale = np.ones((args.scale, args.scale), dtype=np.uint8)
    images = [np.kron(image_grid(f[None], 1, pad=0), scale) for f in ordered]
    save_gif(images, out, fps=args.fps)
    if not args.no_progress:
        print(f"wrote {out} ({len(images)} frames, {frames - 1} inserted per pair, "
              f"{args.steps or model.default_steps} bridge steps)")
    return 0
