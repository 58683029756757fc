"""Command line: ``diffusekit demo | train | sample | eval | quantize | distill | translate | export | zoo | bench``.

Every error a user can cause (unknown name, wrong shape, corrupt file, bad option, an output that exists
or cannot be written) ends in one line on stderr, ``error: <what was wrong and what is allowed>``, and
exit status 2, before any long work starts; nothing is overwritten without ``--overwrite``, and every
output file is written atomically. Any other exception is a bug and keeps its traceback; ``--debug``
shows the traceback for user errors too. Ctrl-C exits 130 and SIGTERM 143 (training saves first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import traceback
from pathlib import Path

from .errors import UserError, user_input

EXIT_USAGE = 2


class CLIError(UserError):
    """A bad command-line argument (kept for older imports; any UserError is reported the same way)."""


# ------------------------------------------------------------------------------------------------
# model loading shared by sample / eval
# ------------------------------------------------------------------------------------------------
# checkpoint kind (extra_config["kind"]) -> (module, loader(tensors, meta, path) -> Denoiser)
_CHECKPOINT_LOADERS = {
    "latent": (".methods.latent.checkpoint", "load_latent_denoiser"),
    "cfm": (".methods.flow_matching", "load_cfm_denoiser"),
    "interpolant": (".train_objectives", "load_interpolant_denoiser"),
}


def load_denoiser(spec: str):
    """A Denoiser from ``zoo:NAME`` or a training checkpoint directory (EMA weights when present)."""
    from . import zoo
    from .core import Denoiser, NetworkDenoiser, schedule_from_config
    from .training.checkpoint import load_checkpoint, load_inference_net

    if spec.startswith("diffusers:"):  # a local diffusers-format model folder (interop, never the network)
        from .interop.diffusers import load_diffusers_denoiser

        return load_diffusers_denoiser(spec[len("diffusers:"):])
    if spec.startswith("zoo:"):
        name = spec[4:]
        obj = zoo.load(name)
        if not isinstance(obj, Denoiser):  # a NetworkDenoiser, or a distilled student's wrapper
            raise CLIError(f"zoo:{name} is a classifier, not a diffusion model; diffusion models: "
                           + ", ".join(f"zoo:{n}" for n in zoo.MODELS
                                       if zoo.manifest(n)["kind"] in ("denoiser", "student")))
        return obj
    path = Path(spec)
    if not path.is_dir():
        raise CLIError(f"--model {spec}: not a checkpoint directory; give a training output folder or zoo:NAME")
    tensors, meta = load_checkpoint(path)
    extra = meta.get("extra_config") or {}
    kind = extra.get("kind", "trained")
    if kind == "quantized":  # written by `diffusekit quantize`
        from .methods.quant.checkpoint import load_quantized_denoiser

        return load_quantized_denoiser(tensors, meta, path)
    if kind == "student":  # written by `diffusekit distill`
        from .methods.distill.checkpoint import load_student_denoiser

        return load_student_denoiser(tensors, meta, path)
    if kind in _CHECKPOINT_LOADERS:  # other method-specific checkpoints: (module, function) in this package
        import importlib

        module, function = _CHECKPOINT_LOADERS[kind]
        return getattr(importlib.import_module(module, __package__), function)(tensors, meta, path)
    if kind != "trained":
        raise CLIError(f"--model {spec}: unknown checkpoint kind {kind!r}; this diffusekit reads trained, "
                       "quantized and student checkpoints")
    if "schedule" not in extra or "loss" not in extra or not meta.get("model_config"):
        raise CLIError(f"--model {spec}: checkpoint lacks the schedule/loss/model config written by `diffusekit train`")
    net = load_inference_net(tensors, meta, str(path))
    loss = extra["loss"]
    return NetworkDenoiser(net, schedule_from_config(extra["schedule"]), loss.get("prediction", "eps"),
                           scale_input=loss.get("scale_input"), sigma_data=loss.get("sigma_data", 0.5))


def _parse_labels(spec: str | None, count: int, num_classes: int | None):
    import torch

    if spec is None:
        if num_classes is None:
            return None
        spec = "all"
    if num_classes is None:
        raise CLIError("--class-label given but the model is unconditional")
    if spec == "all":
        return torch.arange(count) % num_classes
    try:
        label = int(spec)
    except ValueError:
        raise CLIError(f"--class-label must be an integer in [0, {num_classes - 1}] or 'all'; got {spec!r}") from None
    if not 0 <= label < num_classes:
        raise CLIError(f"--class-label must be an integer in [0, {num_classes - 1}] or 'all'; got {label}")
    return torch.full((count,), label)


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .demo import run_demo_from_args

    return run_demo_from_args(args)


def _progress_enabled(args) -> bool:
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _with_progress(denoiser, bar):
    """The same denoiser, advancing ``bar`` by one per network evaluation."""
    from .core import Denoiser

    class _Progress(Denoiser):
        def __init__(self):
            super().__init__(denoiser.schedule)

        def denoise(self, x, t, **cond):
            out = denoiser.denoise(x, t, **cond)
            bar.update(1)
            return out

    return _Progress()


def cmd_eval(args) -> int:
    import numpy as np
    import torch

    from . import zoo
    from .data import load_dataset
    from .io import atomic_write_json, check_output_file
    from .metrics import class_accuracy, digits_fd, gmm_nll, mmd_rbf, sliced_wasserstein

    path = Path(args.samples)
    if not path.is_file() or path.suffix != ".npz":
        raise CLIError(f"--samples must be an existing .npz file written by `diffusekit sample`; got {path}")
    if args.out:
        check_output_file(args.out, overwrite=args.overwrite)
    try:
        with np.load(path, allow_pickle=False) as f:
            samples = torch.from_numpy(f["samples"]).float()
            labels = torch.from_numpy(f["labels"]).long() if "labels" in f else None
    except (KeyError, ValueError, OSError) as err:
        raise CLIError(f"cannot read samples from {path}: {err}") from None
    if len(samples) < 2:
        raise CLIError(f"{path} holds {len(samples)} sample(s); the metrics need at least 2")
    if not torch.isfinite(samples).all():
        bad = int((~torch.isfinite(samples.flatten(1))).any(1).sum())
        raise CLIError(f"{path}: {bad} of {len(samples)} samples contain NaN or infinite values")
    with user_input():
        ref = load_dataset(args.data, "test")
    if tuple(samples.shape[1:]) != tuple(ref.x.shape[1:]):
        raise CLIError(f"samples have shape {tuple(samples.shape[1:])} per item but {args.data} has "
                       f"{tuple(ref.x.shape[1:])}")
    metrics: dict = {"num_samples": len(samples), "data": args.data}
    if args.data == "digits":
        with user_input():
            clf = zoo.load("digits_classifier")
        metrics["digits_fd"] = digits_fd(samples, ref.x, classifier=clf)
        if labels is not None:
            metrics["class_accuracy"] = class_accuracy(samples, labels, classifier=clf)
    else:
        flat_s, flat_r = samples.flatten(1).double(), ref.x.flatten(1).double()
        metrics["sliced_wasserstein"] = sliced_wasserstein(flat_s, flat_r, generator=torch.Generator().manual_seed(0))
        metrics["mmd_rbf"] = mmd_rbf(flat_s[:2000], flat_r[:2000])
        if "mixture" in ref.info:
            metrics["nll"] = gmm_nll(samples.double(), ref.info["mixture"])
    print(json.dumps(metrics, indent=2))
    if args.out:
        atomic_write_json(args.out, metrics)
        print(f"wrote the metrics to {args.out}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from .train_cli import launch_rank, run_train
    from .training.trainer import TrainingInterrupted

    try:
        result = run_train(args)
    except TrainingInterrupted as stop:
        if launch_rank() == 0:
            print(f"interrupted: {stop}; continue with `diffusekit train --out {args.out} --resume`", file=sys.stderr)
        return stop.exit_code
    if result is not None:  # only rank 0 reports
        print(result)
    return 0


def cmd_zoo(args) -> int:
    from . import zoo

    if args.zoo_command == "list":
        for name in zoo.MODELS:
            try:
                meta = zoo.manifest(name)
                print(f"{name:18s} {meta['kind']:10s} {meta['bytes'] / 1e6:6.2f} MB  sha256 {meta['sha256'][:12]}  "
                      f"trained {meta['training_seconds']:.0f} s")
            except zoo.ZooError as err:
                print(f"{name:18s} (not built: {err})")
        return 0
    if args.zoo_command == "verify":
        for name in zoo.MODELS:
            with user_input(kinds=(zoo.ZooError,)):
                zoo.load_state(name)
            print(f"{name}: sha256 ok")
        return 0
    from .zoo.build import build

    unknown = sorted(set(args.only or ()) - set(zoo.MODELS))
    if unknown:
        raise CLIError(f"unknown zoo model {unknown[0]!r}; available: {', '.join(zoo.MODELS)}")
    metas = build(args.only, quick=args.quick, assets_dir=Path(args.assets_dir) if args.assets_dir else zoo.ASSETS_DIR,
                  progress=not args.no_progress)
    for name, meta in metas.items():
        print(f"{name}: {meta['bytes'] / 1e6:.2f} MB, trained {meta['training_seconds']:.0f} s, "
              f"metrics {json.dumps(meta['metrics'])[:300]}")
    return 0


def cmd_bench(args) -> int:
    from .bench import BENCHES, run_bench, set_progress

    if args.name == "list":
        for name, entry in BENCHES.items():
            print(f"{name:20s} {entry.summary}")
        return 0
    set_progress(_progress_enabled(args))
    try:
        result = run_bench(args.name, out=args.out, quick=args.quick, overwrite=args.overwrite)
    finally:
        set_progress(True)
    print(result["summary"])
    print(f"wrote {Path(args.out) / (args.name + '.json')} and {Path(args.out) / (args.name + '.png')}")
    return 0


# ------------------------------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` after a flag's help only where X is a real value the help does not already name."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default is None or action.default is False or action.default == argparse.SUPPRESS
                or not action.option_strings
                or "default" in text or "%(default)" in text):
            return text
        return text + " (default: %(default)s)"


def _common_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback for errors in the input too (bugs always show one)")
    return common


def _names_epilog() -> str:
    from .core.grids import GRID_NAMES
    from .data import available_datasets
    from .samplers import SAMPLERS

    wrap = textwrap.TextWrapper(width=100, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(["samplers:", wrap.fill(", ".join(sorted(SAMPLERS))), "grids:", wrap.fill(", ".join(GRID_NAMES)),
                      "datasets:", wrap.fill(", ".join(available_datasets()))])


def build_parser() -> argparse.ArgumentParser:
    from .samplers import DEFAULT

    fmt = HelpFormatter
    common = _common_flags()
    epilog = _names_epilog()
    p = argparse.ArgumentParser(prog="diffusekit", description="Diffusion models on one small, exact core.",
                                formatter_class=fmt, epilog=epilog)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a class-conditional digits model from scratch and evaluate it",
                       formatter_class=fmt, parents=[common])
    from .demo import add_demo_arguments

    add_demo_arguments(d)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a diffusion model from a YAML config or flags", formatter_class=fmt,
                       parents=[common], epilog=epilog)
    from .train_cli import add_train_arguments

    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample a checkpoint or zoo model", formatter_class=fmt, parents=[common],
                       epilog=epilog)
    s.add_argument("--model", required=True, help="checkpoint folder (from `diffusekit train`) or zoo:NAME")
    s.add_argument("--sampler", default=None, help=f"registered sampler, see the list below (default: "
                   f"{DEFAULT['sampler']}, with its default options)")
    s.add_argument("--steps", type=int, default=None, help=f"sampler steps (default: {DEFAULT['steps']})")
    s.add_argument("--grid", default=None, help="time grid, see the list below (default: the default grid for "
                   "this model: a stored search (zoo models, --search-grid) or a fixed fallback grid)")
    s.add_argument("--search-grid", action="store_true",
                   help="search the default grid for this model and step count now (data-free; seconds to a "
                        "minute) and cache it in the checkpoint folder")
    s.add_argument("--t-end", type=float, default=None,
                   help="final time of a uniform/logsnr/quadratic/karras --grid (default: 0, clean data)")
    s.add_argument("--eta", type=float, default=None,
                   help="noise level of samplers that take an eta (ddim, euler_ancestral, sde_dpm_solver_pp_2m; "
                        "default: the sampler's own)")
    s.add_argument("--seed", type=int, default=0, help="base seed; sample i uses seed + i")
    s.add_argument("--count", type=int, default=100, help="number of samples")
    s.add_argument("--class-label", default=None,
                   help="an integer class, or 'all' to cycle through the classes (default: all, for conditional "
                        "models)")
    s.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    s.add_argument("--size", type=int, default=None,
                   help="image side length (default: the model's own, when its config records one)")
    s.add_argument("--out", required=True, help="output .png (image grid) or .npz (arrays)")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="where the network runs; auto: cuda, else mps, else cpu")
    s.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="autocast precision of the network (the sampler's arithmetic stays fp32/fp64)")
    s.add_argument("--compile", action="store_true", help="torch.compile the network")
    s.add_argument("--channels-last", action="store_true", help="channels-last memory format for image networks")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .sample_cli import cmd_sample

    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="metrics of saved samples against a dataset's test split", formatter_class=fmt,
                       parents=[common], epilog=epilog)
    e.add_argument("--samples", required=True, help=".npz written by `diffusekit sample`")
    e.add_argument("--data", required=True, help="dataset name, see the list below")
    e.add_argument("--out", default=None, help="also write the metrics as JSON here (default: only print them)")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.set_defaults(func=cmd_eval)

    q = sub.add_parser("quantize", help="quantize a model to 8 or 4 bits (PTQ4DM, Q-Diffusion, TFMQ-DM, EDA-DM, "
                       "EfficientDM)", formatter_class=fmt, parents=[common])
    from .quant_cli import add_quantize_arguments, run_quantize

    add_quantize_arguments(q)
    q.set_defaults(func=run_quantize)

    ds = sub.add_parser("distill", help="distill a many-step model into a few-step student", formatter_class=fmt,
                        parents=[common])
    from .distill_cli import add_distill_arguments, run_distill

    add_distill_arguments(ds)
    ds.set_defaults(func=run_distill)

    tr = sub.add_parser("translate", help="unpaired image translation between two diffusion models "
                        "(CycleDiffusion)", formatter_class=fmt, parents=[common])
    from .translate_cli import add_translate_arguments, run_translate

    add_translate_arguments(tr)
    tr.set_defaults(func=run_translate)

    # Domain commands, each a module with HELP, add_arguments(parser) and run(args) -> exit code.
    from . import adapt_cli, audio_cli, data_cli, forecast_cli, personalize_cli, policy_cli, video_cli

    for command, domain in (("adapt", adapt_cli), ("forecast", forecast_cli), ("policy", policy_cli),
                            ("audio", audio_cli), ("video", video_cli), ("personalize", personalize_cli),
                            ("data", data_cli)):
        dp = sub.add_parser(command, help=domain.HELP, formatter_class=fmt, parents=[common])
        domain.add_arguments(dp)
        dp.set_defaults(func=domain.run)

    from .interop.cli import EXPORT_HELP, add_export_arguments, run_export

    ex = sub.add_parser("export", help=EXPORT_HELP, formatter_class=fmt, parents=[common])
    add_export_arguments(ex)
    ex.set_defaults(func=run_export)

    z = sub.add_parser("zoo", help="shipped model assets", formatter_class=fmt)
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zb = zsub.add_parser("build", help="retrain and write the assets", formatter_class=fmt, parents=[common])
    zb.add_argument("--only", nargs="*", default=None, help="asset names (default: all)")
    zb.add_argument("--quick", action="store_true", help="tiny budgets (smoke test), not for shipping")
    zb.add_argument("--assets-dir", default=None, help="where to write (default: the package's assets folder)")
    zb.add_argument("--no-progress", action="store_true", help="no progress bar")
    zsub.add_parser("list", help="list assets with sizes and hashes", formatter_class=fmt, parents=[common])
    zsub.add_parser("verify", help="check every asset's sha256 against its manifest", formatter_class=fmt,
                    parents=[common])
    z.set_defaults(func=cmd_zoo)

    b = sub.add_parser("bench", help="run a reproduction benchmark ('list' to see them)", formatter_class=fmt,
                       parents=[common])
    b.add_argument("name", help="bench name, or 'list'")
    b.add_argument("--out", default="bench_out", help="writes OUT/NAME.json and OUT/NAME.png")
    b.add_argument("--quick", action="store_true", help="same code path at tiny sizes (under a minute)")
    b.add_argument("--overwrite", action="store_true", help="replace OUT/NAME.json and OUT/NAME.png if they exist")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_bench)
    return p


def _report(err: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(err)
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv=None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    from .runtime import configure_threads

    configure_threads()
    parser = build_parser()
    args = parser.parse_args(argv)
    from .training.trainer import TrainingDivergedError

    try:
        return args.func(args)
    except (UserError, TrainingDivergedError) as err:  # anything else is a bug: its traceback is shown
        return _report(err, getattr(args, "debug", False))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
