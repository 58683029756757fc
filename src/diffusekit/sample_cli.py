"""``diffusekit sample``: draw samples from a checkpoint, a zoo model or a local diffusers folder.

The model comes from ``cli.load_denoiser`` (any checkpoint kind; a latent model samples latents and decodes them);
the sampler, grid and step count default to ``samplers.DEFAULT`` (a distilled student's own sampling when it has
one); ``--device`` / ``--precision`` move only the network (``runtime.prepare_denoiser``). Output: a PNG grid or an
``.npz`` with ``samples`` (and ``labels``), written atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import cli as _cli
from .cli import CLIError, _parse_labels, _progress_enabled, _with_progress
from .errors import user_input


DIFFUSERS_GRIDS = ("linspace", "leading", "trailing")


def _takes(fn, name: str) -> bool:
    import inspect

    return name in inspect.signature(fn).parameters


def _sampler_options(args, info) -> dict:
    """Keyword options for the sampler: DEFAULT's for the default sampler, then the flags that apply to it.

    A flag that means nothing for this sampler is refused, never silently dropped."""
    from .samplers import DEFAULT, SAMPLERS

    opts = dict(DEFAULT["options"]) if info.name == DEFAULT["sampler"] else {}
    if args.eta is not None:
        if not _takes(info.fn, "eta"):
            takers = sorted(n for n, i in SAMPLERS.items() if _takes(i.fn, "eta"))
            raise CLIError(f"--eta does not apply to sampler {info.name!r}; samplers with an eta: {', '.join(takers)}")
        opts["eta"] = args.eta
    return opts


def _time_grid(args, denoiser, steps: int, shape: tuple, labels):
    """The user's --grid (with --t-end where the grid has a free end), or the default grid for this model.

    The default grid is the one searched for this model at this step count when one is cached (shipped
    for the zoo's weights, or in a checkpoint folder's ``default_grids.json``), else the fixed fallback;
    ``--search-grid`` searches it now (data-free, about 10-40 s for the zoo's digits model at 5-10 steps)
    and caches it in the checkpoint folder, so later calls reuse it."""
    from .core import make_grid
    from .samplers import default_timesteps
    from .samplers.defaults import default_grid_kind, search_default_grid

    if args.search_grid and args.grid is not None:
        raise CLIError("--search-grid searches the default grid; it cannot be combined with --grid")
    if args.grid is None:
        if args.t_end is not None:
            raise CLIError("--t-end sets the end of an explicit --grid (uniform, logsnr, quadratic or karras); "
                           "the default grid is chosen per model, so pass --grid too")
        cache_dir = None if args.model.startswith("zoo:") else Path(args.model)
        if args.search_grid:
            cond = None if labels is None else {"class_labels": _parse_labels("all", 16, denoiser.num_classes)}
            print(f"searching the default grid for {args.model} at {steps} steps (data-free; cached"
                  f"{' in ' + str(cache_dir) if cache_dir else ' for this run'})", file=sys.stderr)
            return search_default_grid(denoiser, steps, n=16, shape=shape, cond=cond, cache_dir=cache_dir).ts
        if default_grid_kind(denoiser, steps, cache_dir=cache_dir) == "fallback":
            print(f"note: no grid has been searched for this model at {steps} steps, so the fixed fallback grid is "
                  "used; add --search-grid once (seconds; cached with the checkpoint) for a grid fitted to it",
                  file=sys.stderr)
        return default_timesteps(denoiser, steps, cache_dir=cache_dir)
    if args.grid in DIFFUSERS_GRIDS:
        if args.t_end is not None:
            raise CLIError(f"--t-end does not apply to the diffusers grid {args.grid!r} (it ends where diffusers "
                           "ends); use --grid uniform, logsnr, quadratic or karras")
        return make_grid(args.grid, denoiser.schedule, steps)
    return make_grid(args.grid, denoiser.schedule, steps, t_end=0.0 if args.t_end is None else args.t_end)


def _expected_nfe(info, ts) -> int | None:
    """Network calls the sampler will make on grid ``ts`` (the registry's exact count; None when it chooses its
    own steps)."""
    return info.nfe(ts)


def cmd_sample(args) -> int:
    import torch
    from tqdm import tqdm

    from .core import CFGDenoiser, generators_from_seeds, prior_sample
    from .io import check_output_file
    from .samplers import DEFAULT, get_sampler

    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        raise CLIError(f"--out must end in .png or .npz; got {out.name}")
    check_output_file(out, overwrite=args.overwrite)
    if args.count < 1 or (args.steps is not None and args.steps < 1):
        raise CLIError("--count and --steps must be >= 1")
    if args.sampler in ("consistency", "one_step"):  # the distilled students' samplers register on import
        from .methods.distill import samplers as _student_samplers  # noqa: F401
    from .train_objectives import is_data_to_data

    if is_data_to_data(args.model):
        return _sample_transport(args, out)
    with user_input():
        denoiser = _cli.load_denoiser(args.model)  # looked up per call, so one stand-in cannot stick
        # a distilled student carries its native sampling; it is the default when no sampling flag is given
        native = getattr(denoiser, "native_sampling", None)
        use_native = native is not None and args.sampler is None and args.steps is None and args.grid is None \
            and not args.search_grid
        sampler = native["sampler"] if use_native else args.sampler or DEFAULT["sampler"]
        steps = native["steps"] if use_native else DEFAULT["steps"] if args.steps is None else args.steps
        info = get_sampler(sampler)
        opts = _sampler_options(args, info)
        # a latent-diffusion model samples latents and decodes them to images at the end
        latent_shape = getattr(denoiser, "latent_shape", None)
        shape = tuple(latent_shape) if latent_shape is not None else _sample_shape(denoiser, args)
        out_shape = tuple(denoiser.image_shape) if latent_shape is not None else shape
        labels = _parse_labels(args.class_label, args.count, denoiser.num_classes)
        if labels is None and args.guidance != 1.0:
            raise CLIError(f"--guidance {args.guidance:g} needs a class-conditional model; this one is "
                           "unconditional (use the default --guidance 1)")
        if use_native and native["ts"] is not None:
            if args.t_end is not None:
                raise CLIError("--t-end sets the end of an explicit --grid; this student samples on its own grid, "
                               "so pass --grid (and --steps) too")
            ts = torch.tensor(native["ts"], dtype=torch.float64)
        else:
            ts = _time_grid(args, denoiser, steps, shape, labels)
        # --device / --precision / --compile / --channels-last: only the network moves and runs under autocast;
        # the sampler's arithmetic stays on the CPU in x's dtype (runtime.prepare_denoiser)
        from .runtime import prepare_denoiser, resolve_device

        device = resolve_device(getattr(args, "device", "auto"))
        base = prepare_denoiser(denoiser, device, getattr(args, "precision", "fp32"),
                                compile=getattr(args, "compile", False),
                                channels_last=getattr(args, "channels_last", False))
        den = CFGDenoiser(base, args.guidance) if labels is not None and args.guidance != 1.0 else base
    if len(out_shape) != 3 and out.suffix == ".png":
        raise CLIError("PNG output needs image samples; use .npz for vectors")
    schedule = denoiser.schedule
    gens = generators_from_seeds(args.seed, args.count)
    x_T = prior_sample(schedule, (args.count, *shape), gens)
    if labels is not None:
        opts["cond"] = {"class_labels": labels}
    if _takes(info.fn, "generator"):
        opts["generator"] = generators_from_seeds(args.seed + 10**6, args.count)
    bar = tqdm(total=_expected_nfe(info, ts), desc=f"sample ({sampler})", unit="NFE", file=sys.stderr,
               disable=not _progress_enabled(args), dynamic_ncols=True)
    # the sampler validates its grid and options first: a ValueError from it is about the user's choices
    with torch.no_grad(), bar, user_input(f"--sampler {sampler}: ", kinds=(ValueError,)):
        x = info.fn(_with_progress(den, bar), x_T, ts, **opts)
        if latent_shape is not None:
            x = denoiser.decode(x)
    _write_samples(out, x, **({"labels": labels} if labels is not None else {}))
    grid = f"{args.grid} grid" if args.grid else "default grid"
    if use_native:
        grid = "the student's native sampling" + (", its own grid" if native["ts"] is not None else ", default grid")
    print(f"wrote {args.count} samples ({sampler}, {steps} steps, {grid}) to {out}")
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
    if cfg.get("dims") == 1:  # a 1-D UNet over signals (N, C, L)
        return (cfg.get("in_channels", 1), size)
    return (cfg.get("in_channels", 1), size, size)


def _sample_transport(args, out: Path) -> int:
    """A data -> data flow (cfm or interpolant trained with a ``source`` dataset): fresh source draws pushed through
    the learned ODE by Euler steps (``train_objectives.sample_data_to_data``); the .npz also holds the source draws."""
    from .train_objectives import sample_data_to_data

    if args.sampler is not None or args.grid is not None or args.guidance != 1.0 or args.class_label is not None:
        raise CLIError("a data-to-data flow is sampled by Euler steps from its source data; only --steps, --count and "
                       "--seed apply")
    steps = 100 if args.steps is None else args.steps
    with user_input(f"--model {args.model}: "):
        x0, x, source = sample_data_to_data(args.model, count=args.count, steps=steps, seed=args.seed)
    if out.suffix == ".png" and x.ndim != 4:
        raise CLIError("PNG output needs image samples; use .npz for vectors")
    _write_samples(out, x, source=x0)
    print(f"wrote {args.count} samples (Euler, {steps} steps from {source} test draws) to {out}")
    return 0


def _write_samples(out: Path, x, **extra) -> None:
    """``out``: a PNG grid of images x (10 per row), or an .npz with ``samples`` = x and the ``extra`` arrays;
    written atomically."""
    import io

    import numpy as np

    from .io import atomic_write_bytes
    from .plotting import save_image_grid

    if out.suffix == ".png":
        save_image_grid(x, out, nrow=min(10, len(x)))
        return
    buf = io.BytesIO()
    np.savez(buf, samples=x.float().numpy(), **{k: v.float().numpy() if v.is_floating_point() else v.numpy()
                                                 for k, v in extra.items()})
    atomic_write_bytes(out, buf.getvalue())
