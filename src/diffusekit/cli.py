"""Command line: ``diffusekit demo | train | sample | eval | zoo | bench``.

Every error a user can cause (unknown name, wrong shape, corrupt file, bad option) ends in one line on
stderr, ``error: <what was wrong and what is allowed>``, and exit status 2; nothing is written before
the inputs are validated, and every output file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


class CLIError(ValueError):
    pass


# ------------------------------------------------------------------------------------------------
# model loading shared by sample / eval
# ------------------------------------------------------------------------------------------------
def load_denoiser(spec: str):
    """A Denoiser from ``zoo:NAME`` or a training checkpoint directory (EMA weights when present)."""
    from . import zoo
    from .core import NetworkDenoiser, schedule_from_config
    from .nets import build_net
    from .training.checkpoint import load_checkpoint, load_state_strict

    if spec.startswith("zoo:"):
        name = spec[4:]
        obj = zoo.load(name)
        if not isinstance(obj, NetworkDenoiser):
            raise CLIError(f"zoo:{name} is a classifier, not a diffusion model; diffusion models: "
                           + ", ".join(f"zoo:{n}" for n in zoo.MODELS if zoo.manifest(n)["kind"] == "denoiser"))
        return obj
    path = Path(spec)
    if not path.is_dir():
        raise CLIError(f"--model {spec}: not a checkpoint directory; give a training output folder or zoo:NAME")
    tensors, meta = load_checkpoint(path)
    extra = meta.get("extra_config") or {}
    if "schedule" not in extra or "loss" not in extra or not meta.get("model_config"):
        raise CLIError(f"--model {spec}: checkpoint lacks the schedule/loss/model config written by `diffusekit train`")
    net = build_net(meta["model_config"])
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    load_state_strict(net, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, str(path))
    net.eval()
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


def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from .core import CFGDenoiser, generators_from_seeds, make_grid, prior_sample
    from .plotting import atomic_write_bytes, save_image_grid
    from .samplers import get_sampler

    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        raise CLIError(f"--out must end in .png or .npz; got {out.name}")
    if args.count < 1 or args.steps < 1:
        raise CLIError("--count and --steps must be >= 1")
    info = get_sampler(args.sampler)
    denoiser = load_denoiser(args.model)
    schedule = denoiser.schedule
    shape = _sample_shape(denoiser, args)
    labels = _parse_labels(args.class_label, args.count, denoiser.num_classes)
    if labels is None and args.guidance != 1.0:
        raise CLIError(f"--guidance {args.guidance:g} needs a class-conditional model; this one is unconditional "
                       f"(use the default --guidance 1)")
    t_end = 0.0 if args.t_end is None else args.t_end
    grid_opts = {} if args.grid in ("linspace", "leading", "trailing") else {"t_end": t_end}
    ts = make_grid(args.grid, schedule, args.steps, **grid_opts)
    gens = generators_from_seeds(args.seed, args.count)
    x_T = prior_sample(schedule, (args.count, *shape), gens)
    den = CFGDenoiser(denoiser, args.guidance) if labels is not None and args.guidance != 1.0 else denoiser
    opts = {"cond": {"class_labels": labels}} if labels is not None else {}
    if info.stochastic or args.sampler == "ddim":
        opts["generator"] = generators_from_seeds(args.seed + 10**6, args.count)
    if args.sampler == "ddim":
        opts["eta"] = args.eta
    with torch.no_grad():
        x = info.fn(den, x_T, ts, **opts)
    if out.suffix == ".png":
        if x.ndim != 4:
            raise CLIError("PNG output needs image samples; use .npz for vectors")
        save_image_grid(x, out, nrow=min(10, args.count))
    else:
        import io

        buf = io.BytesIO()
        arrays = {"samples": x.float().numpy()}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        np.savez(buf, **arrays)
        atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {args.count} samples ({args.sampler}, {args.steps} steps, {args.grid} grid) to {out}")
    return 0


def _sample_shape(denoiser, args) -> tuple:
    cfg = getattr(denoiser.net, "config", {}) or {}
    if cfg.get("name") == "mlp":
        return (cfg["dim"],)
    planned = cfg.get("image_size")
    if args.size is not None and planned is not None and args.size != planned:
        raise CLIError(f"--size {args.size} does not match this model's image size {planned}; omit --size or pass "
                       f"{planned}")
    size = args.size if args.size is not None else planned
    if size is None:
        raise CLIError("--size is needed for this image model (side length of the images)")
    return (cfg.get("in_channels", 1), size, size)


def cmd_eval(args) -> int:
    import numpy as np
    import torch

    from . import zoo
    from .data import load_dataset
    from .metrics import class_accuracy, digits_fd, gmm_nll, mmd_rbf, sliced_wasserstein
    from .plotting import atomic_write_json

    path = Path(args.samples)
    if not path.is_file() or path.suffix != ".npz":
        raise CLIError(f"--samples must be an existing .npz file written by `diffusekit sample`; got {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            samples = torch.from_numpy(f["samples"]).float()
            labels = torch.from_numpy(f["labels"]).long() if "labels" in f else None
    except (KeyError, ValueError, OSError) as err:
        raise CLIError(f"cannot read samples from {path}: {err}") from None
    ref = load_dataset(args.data, "test")
    if tuple(samples.shape[1:]) != tuple(ref.x.shape[1:]):
        raise CLIError(f"samples have shape {tuple(samples.shape[1:])} per item but {args.data} has "
                       f"{tuple(ref.x.shape[1:])}")
    metrics: dict = {"num_samples": len(samples), "data": args.data}
    if args.data == "digits":
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
    return 0


def cmd_train(args) -> int:
    from .train_cli import run_train

    result = run_train(args)
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
            zoo.load_state(name)
            print(f"{name}: sha256 ok")
        return 0
    from .zoo.build import build

    metas = build(args.only, quick=args.quick, assets_dir=Path(args.assets_dir) if args.assets_dir else zoo.ASSETS_DIR,
                  progress=not args.no_progress)
    for name, meta in metas.items():
        print(f"{name}: {meta['bytes'] / 1e6:.2f} MB, trained {meta['training_seconds']:.0f} s, "
              f"metrics {json.dumps(meta['metrics'])[:300]}")
    return 0


def cmd_bench(args) -> int:
    from .bench import BENCHES, run_bench

    if args.name == "list":
        for name, entry in BENCHES.items():
            print(f"{name:20s} {entry.summary}")
        return 0
    result = run_bench(args.name, out=args.out, quick=args.quick)
    print(result["summary"])
    return 0


# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="diffusekit", description="Diffusion models on one small, exact core.",
                                formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a class-conditional digits model from scratch and evaluate it",
                       formatter_class=fmt)
    from .demo import add_demo_arguments

    add_demo_arguments(d)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a diffusion model from a YAML config or flags", formatter_class=fmt)
    from .train_cli import add_train_arguments

    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample a checkpoint or zoo model", formatter_class=fmt)
    s.add_argument("--model", required=True, help="checkpoint folder or zoo:NAME")
    s.add_argument("--sampler", default="ddim")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--grid", default="trailing", help="uniform, logsnr, quadratic, karras, linspace, leading, trailing")
    s.add_argument("--t-end", type=float, default=None, help="final time of non-diffusers grids (default 0: clean)")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    s.add_argument("--seed", type=int, default=0, help="base seed; sample i uses seed + i")
    s.add_argument("--count", type=int, default=100)
    s.add_argument("--class-label", default=None, help="an integer class, or 'all' to cycle through classes")
    s.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    s.add_argument("--size", type=int, default=None, help="image side length for image models")
    s.add_argument("--out", required=True, help="output .png (image grid) or .npz (arrays)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="metrics of saved samples against a dataset's test split", formatter_class=fmt)
    e.add_argument("--samples", required=True, help=".npz written by `diffusekit sample`")
    e.add_argument("--data", required=True, help="dataset name (digits, gmm_ring8, moons, ...)")
    e.add_argument("--out", default=None, help="also write the metrics as JSON here")
    e.set_defaults(func=cmd_eval)

    z = sub.add_parser("zoo", help="shipped model assets", formatter_class=fmt)
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zb = zsub.add_parser("build", help="retrain and write the assets", formatter_class=fmt)
    zb.add_argument("--only", nargs="*", default=None, help="asset names (default: all)")
    zb.add_argument("--quick", action="store_true", help="tiny budgets (smoke test), not for shipping")
    zb.add_argument("--assets-dir", default=None, help="where to write (default: the package's assets folder)")
    zb.add_argument("--no-progress", action="store_true")
    zsub.add_parser("list", help="list assets with sizes and hashes")
    zsub.add_parser("verify", help="check every asset's sha256 against its manifest")
    z.set_defaults(func=cmd_zoo)

    b = sub.add_parser("bench", help="run a reproduction benchmark ('list' to see them)", formatter_class=fmt)
    b.add_argument("name")
    b.add_argument("--out", default="bench_out", help="writes OUT/NAME.json and OUT/NAME.png")
    b.add_argument("--quick", action="store_true", help="same code path at tiny sizes (under a minute)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    from .runtime import configure_threads

    configure_threads()
    parser = build_parser()
    args = parser.parse_args(argv)
    from .training.trainer import TrainingDivergedError

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TrainingDivergedError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
