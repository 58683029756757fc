"""``diffusekit quantize``: post-training quantization of a diffusion model into a quantized checkpoint.

    diffusekit quantize --model DIR|zoo:NAME --method {minmax,ptq4dm,qdiffusion,tfmq,edadm,efficientdm}
                        --wbits 4|8 --abits 4|8 --out DIR [--int8-kernels] [--calib-samples N] [--seed S]
                        [--calib FILE.npz] [--save-calib FILE.npz] [--overwrite] [--no-progress]

Steps: record the full-precision model's calibration trajectories (``pipeline.CALIB_SAMPLER``: DDIM, uniform
grid, 20 steps, ``--calib-samples`` prior draws from ``--seed``; or read them from ``--calib``), run the
method (``pipeline.get_method``), and write the checkpoint (``methods.quant.checkpoint.save_quantized``) that
``diffusekit sample --model OUT`` and ``diffusekit eval`` use like any other. Progress bars (stderr, terminal
only) for the trajectory recording, calibration and reconstruction / fine-tuning.

Everything the user can get wrong is checked before the long work and ends in one ``error:`` line with exit
status 2, writing nothing: an unsupported bit width or method, ``--int8-kernels`` without W8A8, an ``--out``
that holds files (without ``--overwrite``) or cannot be written, a model that is missing, corrupt, already
quantized or has no quantizable layer, a calibration file that is unreadable or does not fit the model.

Calibration file (``--calib`` / ``--save-calib``): a NumPy ``.npz`` (no pickle) with ``x`` (S, N, *sample shape)
float32, the N trajectories' states at the S network evaluations, ``t`` (S,) float64 their schedule times
(strictly decreasing), and for class-conditional models ``class_labels`` (N,) integers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError, user_input

BITS = (4, 8)


def add_quantize_arguments(p) -> None:
    """The flags of ``diffusekit quantize``."""
    from .methods.quant.pipeline import CALIB_SAMPLER, METHODS

    p.add_argument("--model", required=True, help="checkpoint folder (from `diffusekit train`) or zoo:NAME")
    p.add_argument("--method", required=True, metavar="METHOD",
                   help=f"quantization method: {', '.join(METHODS)} (minmax: naive min/max PTQ baseline)")
    p.add_argument("--wbits", type=int, required=True, help="weight bits: 4 or 8")
    p.add_argument("--abits", type=int, required=True, help="activation bits: 4 or 8")
    p.add_argument("--out", required=True, help="folder for the quantized checkpoint")
    p.add_argument("--int8-kernels", action="store_true",
                   help="run the loaded model on real int8 CPU kernels (W8A8 with one activation range per layer)")
    p.add_argument("--calib-samples", type=int, default=256,
                   help=f"full-precision trajectories recorded for calibration ({CALIB_SAMPLER['sampler']}, "
                        f"{CALIB_SAMPLER['grid']} grid, {CALIB_SAMPLER['steps']} steps)")
    p.add_argument("--calib", default=None, help="read the calibration trajectories from this .npz instead of "
                   "recording them (see --save-calib)")
    p.add_argument("--save-calib", default=None, help="also write the recorded calibration trajectories to this .npz")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draws and of the method")
    p.add_argument("--overwrite", action="store_true", help="replace the checkpoint in --out if there is one")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check_args(args) -> None:
    from .methods.quant.pipeline import get_method

    for flag, bits in (("--wbits", args.wbits), ("--abits", args.abits)):
        if bits not in BITS:
            raise UserError(f"{flag} {bits} is not supported; choose 4 or 8")
    with user_input():
        get_method(args.method)  # unknown or not available
    if args.int8_kernels and (args.wbits, args.abits) != (8, 8):
        raise UserError(f"--int8-kernels needs --wbits 8 --abits 8; got W{args.wbits}A{args.abits}")
    if args.calib_samples < 1:
        raise UserError(f"--calib-samples must be >= 1; got {args.calib_samples}")
    if args.calib is not None and args.save_calib is not None:
        raise UserError("--calib reads trajectories and --save-calib writes recorded ones; pass only one")


def _check_out(args) -> Path:
    from .io import check_output_dir, check_output_file

    out = Path(args.out)
    check_output_dir(out, what="--out")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"--out {out} already holds files; pass --overwrite to replace its checkpoint or choose "
                        "another folder")
    if args.save_calib is not None:
        if not args.save_calib.endswith(".npz"):
            raise UserError(f"--save-calib must end in .npz; got {args.save_calib}")
        check_output_file(args.save_calib, overwrite=args.overwrite, what="--save-calib")
    return out


def _check_model(denoiser, spec: str) -> None:
    from torch import nn

    from .core import NetworkDenoiser
    from .methods.quant.modules import quant_layers
    from .methods.quant.pipeline import QuantDenoiser

    if not isinstance(denoiser, NetworkDenoiser):
        raise UserError(f"--model {spec}: not a network denoiser")
    if isinstance(denoiser, QuantDenoiser) or quant_layers(denoiser.net):
        raise UserError(f"--model {spec} is already quantized; quantize the full-precision model")
    if not any(type(m) in (nn.Linear, nn.Conv2d) for m in denoiser.net.modules()):
        raise UserError(f"--model {spec}: the network has no nn.Linear or nn.Conv2d layer to quantize")


def read_calibration_file(path, shape: tuple, num_classes: int | None):
    """``Trajectories`` from a calibration ``.npz`` (format in the module docstring); UserError (one line) when
    the file is missing, unreadable or does not fit a model with samples of ``shape`` and ``num_classes``."""
    import numpy as np
    import torch

    from .methods.quant.calibration import Trajectories

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--calib {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            x = torch.from_numpy(np.asarray(f["x"], dtype=np.float32))
            t = torch.from_numpy(np.asarray(f["t"], dtype=np.float64))
            labels = torch.from_numpy(np.asarray(f["class_labels"])).long() if "class_labels" in f else None
    except (KeyError, ValueError, OSError, EOFError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"--calib {path}: unreadable calibration file (needs arrays x and t): {msg}") from None
    if x.dim() != 2 + len(shape) or tuple(x.shape[2:]) != tuple(shape) or x.shape[0] < 1 or x.shape[1] < 1:
        raise UserError(f"--calib {path}: x has shape {tuple(x.shape)}; this model needs (steps, samples, "
                        f"{', '.join(map(str, shape))})")
    if t.shape != (x.shape[0],):
        raise UserError(f"--calib {path}: t has shape {tuple(t.shape)}; need one time per step ({x.shape[0]},)")
    if not (torch.isfinite(x).all() and torch.isfinite(t).all()):
        raise UserError(f"--calib {path}: x or t holds NaN or infinite values")
    if x.shape[0] > 1 and not bool((t[1:] < t[:-1]).all()):
        raise UserError(f"--calib {path}: t must decrease strictly (noise to data)")
    cond = {}
    if num_classes is not None:
        if labels is None or labels.shape != (x.shape[1],):
            raise UserError(f"--calib {path}: this class-conditional model needs class_labels of shape "
                            f"({x.shape[1]},)")
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise UserError(f"--calib {path}: class_labels must lie in 0..{num_classes - 1}")
        cond = {"class_labels": labels}
    elif labels is not None:
        raise UserError(f"--calib {path}: holds class_labels but the model is unconditional")
    return Trajectories(x, t, cond)


def write_calibration_file(path, traj) -> None:
    """Write ``traj`` as a calibration ``.npz`` (atomically)."""
    import io

    import numpy as np

    from .io import atomic_write_bytes

    arrays = {"x": traj.x.float().numpy(), "t": traj.t.double().numpy()}
    if "class_labels" in traj.cond:
        arrays["class_labels"] = traj.cond["class_labels"].long().numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def progress_factory(enabled: bool):
    """``progress(desc, total) -> tqdm bar`` on stderr (the contract's progress callable), or None when off."""
    if not enabled:
        return None
    from tqdm import tqdm

    def progress(desc: str, total: int):
        return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)

    return progress


def run_quantize(args) -> int:
    """Run ``diffusekit quantize`` (see the module docstring); returns the exit status."""
    import torch

    from .cli import _progress_enabled, _with_progress, load_denoiser
    from .methods.quant.checkpoint import save_quantized
    from .methods.quant.modules import weight_bytes
    from .methods.quant.pipeline import CALIB_SAMPLER, calibration_trajectories, get_method, open_bar, sample_shape

    from .train_cli import launch_rank

    if launch_rank() != 0:  # calibration and fine-tuning are not sharded: under torchrun rank 0 does all the work
        print(f"quantize: rank {launch_rank()} has nothing to do (rank 0 quantizes and writes)", file=sys.stderr)
        return 0
    _check_args(args)
    out = _check_out(args)
    with user_input():
        denoiser = load_denoiser(args.model)
    _check_model(denoiser, args.model)
    with user_input(f"--model {args.model}: "):
        shape = sample_shape(denoiser)
    num_classes = denoiser.num_classes
    traj = read_calibration_file(args.calib, shape, num_classes) if args.calib is not None else None
    method = get_method(args.method)
    progress = progress_factory(_progress_enabled(args))
    torch.manual_seed(args.seed)
    if traj is None:
        nfe = CALIB_SAMPLER["steps"] * -(-args.calib_samples // 256)
        bar = open_bar(progress, "record fp trajectories", nfe)
        try:
            with torch.no_grad():
                traj = calibration_trajectories(_with_progress(denoiser, bar), args.calib_samples, seed=args.seed,
                                                shape=shape, num_classes=num_classes)
        finally:
            bar.close()
        if args.save_calib is not None:
            write_calibration_file(args.save_calib, traj)
    result = method(denoiser, args.wbits, args.abits, traj=traj, seed=args.seed, quick=False, progress=progress)
    source = {"model": args.model, "seed": args.seed, "calib_samples": traj.num_samples,
              "calib_file": args.calib, "sampler": dict(CALIB_SAMPLER)}
    save_quantized(out, result, source, int8_kernels=args.int8_kernels)
    wb = weight_bytes(result.net)
    print(f"wrote {out}: {args.method} W{args.wbits}A{args.abits} of {args.model}"
          f"{' (int8 kernels at load)' if args.int8_kernels else ''}; weights {wb['weight_bytes'] / 1e6:.3f} MB "
          f"+ {wb['qparam_bytes'] / 1e3:.1f} kB scales ({wb['ratio']:.3f} of fp32); calibration "
          f"{result.calib_seconds:.1f} s, fine-tuning {result.finetune_seconds:.1f} s")
    return 0
