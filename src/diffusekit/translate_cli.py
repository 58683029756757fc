"""``diffusekit translate``: unpaired image translation between two diffusion models (CycleDiffusion).

    diffusekit translate --source MODEL [--target MODEL] --input x.npz|x.png --out y.npz|y.png
                         [--source-class A --target-class B] [--steps N] [--eta E] [--t-start T] [--t-end T]
                         [--seed S] [--overwrite] [--no-progress]

MODEL is whatever ``diffusekit.cli.load_denoiser`` accepts (a checkpoint folder or zoo:NAME). The input images
are encoded by the source model's DPM-Encoder and the latent is decoded by the target model
(``methods.cyclediffusion.cycle_diffusion``; Wu & De la Torre, arXiv 2210.05559). With one class-conditional
model (``--target`` omitted) ``--source-class``/``--target-class`` make a zero-shot class edit. Grid: ``--steps``
uniform steps from ``--t-start`` (default: the schedule's end, pure noise) to ``--t-end`` (default: the
schedule's t_min > 0, where decoding with the source model reproduces the input exactly).

Input: ``.npz`` with one array (or ``samples``, as ``diffusekit sample`` writes, or ``x``) of shape (N, C, H, W)
or (N, H, W), values in [-1, 1]; or a ``.png`` (one image, grey or RGB, resized to the model's side). Output:
``.npz`` with ``samples`` (the translations) and ``inputs``; or a ``.png`` grid (inputs on the first row(s), then
the translations). Every input mistake ends in one ``error:`` line before any model runs; nothing is
overwritten without ``--overwrite``; the output is written atomically.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from .errors import UserError, user_input

NPZ_KEYS = ("samples", "x", "images")


def add_translate_arguments(p) -> None:
    """The flags of ``diffusekit translate``."""
    p.add_argument("--source", required=True, help="source-domain model: checkpoint folder or zoo:NAME")
    p.add_argument("--target", default=None, help="target-domain model (default: the source model, for a "
                   "class edit with --source-class/--target-class)")
    p.add_argument("--input", required=True, help="images to translate: .npz (N, C, H, W) in [-1, 1] or a .png")
    p.add_argument("--out", required=True, help="output .npz (samples, inputs) or .png (image grid)")
    p.add_argument("--source-class", type=int, default=None, help="class label the source model encodes with")
    p.add_argument("--target-class", type=int, default=None, help="class label the target model decodes with")
    p.add_argument("--steps", type=int, default=20, help="sampler steps of the encoder and the decoder")
    p.add_argument("--eta", type=float, default=0.1, help="DDIM eta > 0 of the stochastic sampler (1 = DDPM)")
    p.add_argument("--t-start", type=float, default=None,
                   help="time the encoding starts from (default: the schedule's t_max; lower keeps more of the input)")
    p.add_argument("--t-end", type=float, default=None,
                   help="final time of the grid (default: the schedule's t_min; 0 makes the last step deterministic)")
    p.add_argument("--seed", type=int, default=0, help="seed of the forward-process draws (image i: seed + i)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _model_shape(denoiser) -> tuple[int, int] | None:
    """(channels, side) from the network's config, when the model records them."""
    cfg = getattr(getattr(denoiser, "net", None), "config", None) or {}
    if cfg.get("name") == "mlp" or "image_size" not in cfg:
        return None
    return int(cfg.get("in_channels", 1)), int(cfg["image_size"])


def read_images(path: Path, shape: tuple[int, int] | None):
    """Images (N, C, H, W) float32 in [-1, 1] from an .npz or a .png; UserError on anything else."""
    import numpy as np
    import torch

    if not path.is_file():
        raise UserError(f"--input {path}: no such file")
    if path.suffix == ".png":
        from .image_input import read_image

        return read_image(path, flag="--input", side=None if shape is None else shape[1],
                          grey=None if shape is None else shape[0] == 1, what="PNG")[None]
    if path.suffix != ".npz":
        raise UserError(f"--input must be a .npz or .png file; got {path.name}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in f.keys()}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise UserError(f"--input {path}: not a readable .npz ({err})") from None
    key = next((k for k in NPZ_KEYS if k in arrays), next(iter(arrays)) if len(arrays) == 1 else None)
    if key is None:
        raise UserError(f"--input {path}: holds arrays {sorted(arrays)}; give one array or one named "
                        f"{', '.join(NPZ_KEYS)}")
    arr = arrays[key]
    if arr.dtype.kind not in "fiu":
        raise UserError(f"--input {path}: array {key!r} has dtype {arr.dtype}; give real numbers in [-1, 1]")
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or len(arr) == 0:
        raise UserError(f"--input {path}: array {key!r} has shape {arr.shape}; give (N, C, H, W) or (N, H, W), N >= 1")
    x = torch.from_numpy(arr.astype(np.float32))
    if not torch.isfinite(x).all():
        raise UserError(f"--input {path}: array {key!r} contains NaN or infinite values")
    if float(x.abs().max()) > 1.5:
        raise UserError(f"--input {path}: values reach {float(x.abs().max()):g}; images must be scaled to [-1, 1]")
    if shape is not None and tuple(x.shape[1:]) != (shape[0], shape[1], shape[1]):
        raise UserError(f"--input {path}: images have shape {tuple(x.shape[1:])} but the model takes "
                        f"({shape[0]}, {shape[1]}, {shape[1]})")
    return x


def _class_cond(denoiser, label: int | None, n: int, flag: str):
    """``{"class_labels": (n,) label}`` for a conditional model, None without a label; UserError on a bad one."""
    import torch

    if label is None:
        return None
    classes = getattr(denoiser, "num_classes", None)
    if classes is None:
        raise UserError(f"{flag} given but that model is unconditional; omit {flag}")
    if not 0 <= label < classes:
        raise UserError(f"{flag} must be an integer in [0, {classes - 1}]; got {label}")
    return {"class_labels": torch.full((n,), label, dtype=torch.long)}


def run_translate(args) -> int:
    """Check everything, then encode with the source model and decode with the target (one progress bar)."""
    import io

    import numpy as np
    import torch
    from tqdm import tqdm

    from .cli import _with_progress, load_denoiser
    from .core import generators_from_seeds
    from .io import atomic_write_bytes, check_output_file
    from .methods.cyclediffusion import cycle_diffusion, translation_grid
    from .plotting import save_image_grid

    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        raise UserError(f"--out must end in .png or .npz; got {out.name}")
    check_output_file(out, overwrite=args.overwrite)
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1; got {args.steps}")
    if not args.eta > 0:
        raise UserError(f"--eta must be > 0 (the DPM-Encoder needs a stochastic sampler); got {args.eta}")
    if (args.source_class is None) != (args.target_class is None):
        raise UserError("give both --source-class and --target-class (a class edit), or neither")
    if args.target is None and args.source_class is None:
        raise UserError("--target is needed unless --source-class/--target-class edit the class with one model")
    with user_input():
        source = load_denoiser(args.source)
        target = source if args.target is None or args.target == args.source else load_denoiser(args.target)
    if type(source.schedule) is not type(target.schedule) or source.schedule.config() != target.schedule.config():
        raise UserError("--source and --target have different noise schedules; CycleDiffusion needs one schedule")
    shape_s, shape_t = _model_shape(source), _model_shape(target)
    if shape_s is not None and shape_t is not None and shape_s != shape_t:
        raise UserError(f"--source takes images {shape_s} (channels, side) but --target takes {shape_t}")
    _class_cond(source, args.source_class, 1, "--source-class")  # the flags first, then the input file
    _class_cond(target, args.target_class, 1, "--target-class")
    x = read_images(Path(args.input), shape_s or shape_t)
    n = len(x)
    source_cond = _class_cond(source, args.source_class, n, "--source-class")
    target_cond = _class_cond(target, args.target_class, n, "--target-class")
    with user_input("--t-start/--t-end: "):
        ts = translation_grid(source.schedule, args.steps, t_start=args.t_start, t_end=args.t_end)
    progress = not args.no_progress and sys.stderr.isatty()
    bar = tqdm(total=2 * args.steps, desc="translate", unit="NFE", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    with torch.no_grad(), bar:
        y = cycle_diffusion(_with_progress(source, bar), _with_progress(target, bar), x, ts, eta=args.eta,
                            source_cond=source_cond, target_cond=target_cond,
                            generator=generators_from_seeds(args.seed, n))
    if out.suffix == ".png":
        nrow = min(10, n)
        rows = [x[i:i + nrow] for i in range(0, n, nrow)] + [y[i:i + nrow] for i in range(0, n, nrow)]
        pad = [torch.cat([r, torch.full((nrow - len(r), *r.shape[1:]), -1.0)]) for r in rows]
        save_image_grid(torch.cat(pad), out, nrow=nrow)
    else:
        buf = io.BytesIO()
        np.savez(buf, samples=y.float().numpy(), inputs=x.numpy())
        atomic_write_bytes(out, buf.getvalue())
    what = f"class {args.source_class} -> {args.target_class}" if args.source_class is not None else \
        f"{args.source} -> {args.target}"
    print(f"translated {n} image(s) ({what}, {args.steps} steps, eta {args.eta:g}) to {out}")
    return 0
