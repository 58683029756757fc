"""``diffusekit adapt``: run a test-time adaptation method over a distribution-shift stream and score it online.

    diffusekit adapt --method {source,tent,tent+filter,petal,dda,sda,difftpt} --shift NAME --severity K
                     [--classifier DIR|zoo:NAME] [--stream single|continual|sorted|open-set] [--batch-size B]
                     [--repeats R] [--cycles C] [--unknown-fraction F] [--limit N] [--out results.json] [--seed S]
                     [--quick] [--overwrite] [--no-progress]

The stream (``diffusekit.data.shift_streams``) is the digits test split under corruption ``--shift`` at severity
``--severity``: ``single`` (i.i.d. order), ``sorted`` (class-sorted, non-i.i.d.), ``continual`` (``--shift`` a
comma-separated cycle of corruptions, or ``cycle`` for the default one, visited ``--cycles`` times) or ``open-set``
(a source on digits 0-4; unknown digits 5-9 and natural patches make up ``--unknown-fraction`` of the stream,
label -1). Each batch is predicted on arrival, then scored (``methods.tta.base.run_stream``); a progress bar shows
the running error, one summary line ends the run, and ``--out`` gets the per-batch rows as JSON
(``StreamResult.to_json()`` plus the settings). The classifier is ``zoo:digits_bn_classifier`` by default
(``zoo:digits04_bn_classifier`` for open-set), or a folder holding a zoo-format BatchNorm classifier
(``NAME.json`` + ``NAME.safetensors``, as ``diffusekit zoo build --only NAME --assets-dir DIR`` writes).
``--method difftpt`` runs on the captioned RGB digits (3 x 24 x 24, ``methods.tta.difftpt.test_data``) with
``zoo:captions_clip`` (its only classifier), single or sorted streams; it tunes a prompt per image (about a second
each on one CPU thread), so ``--limit`` is worth using. Every input mistake ends in one ``error:`` line before the
method is built.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError

HELP = "test-time adaptation of a classifier over a shift stream (TENT, open-set filter, PETAL, DDA, SDA, DiffTPT)"
STREAMS = ("single", "sorted", "continual", "open-set")
BN_CLASSIFIERS = ("digits_bn_classifier", "digits04_bn_classifier")


def add_arguments(p) -> None:
    """The flags of ``diffusekit adapt``."""
    from .methods.tta.registry import available_methods

    p.add_argument("--method", required=True, help=f"adaptation method: {', '.join(available_methods())}")
    p.add_argument("--shift", required=True, help="corruption name (see diffusekit.data.corruptions); with "
                   "--stream continual a comma-separated cycle, or 'cycle' for the default one")
    p.add_argument("--severity", type=int, required=True, help="corruption severity 1..5")
    p.add_argument("--classifier", default=None, help="zoo:NAME or a folder with a zoo-format BatchNorm classifier "
                   "(default: zoo:digits_bn_classifier; zoo:digits04_bn_classifier for --stream open-set)")
    p.add_argument("--stream", default="single", choices=STREAMS, help="stream kind")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (1..200 in the benchmark)")
    p.add_argument("--repeats", type=int, default=1, help="passes over the 360 test digits, each with its own "
                   "corruption draw (single, sorted, open-set)")
    p.add_argument("--cycles", type=int, default=10, help="cycles of the continual stream")
    p.add_argument("--unknown-fraction", type=float, default=0.5, help="share of unknowns in the open-set stream")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images of the stream (for the "
                   "per-image methods DDA, SDA, DiffTPT)")
    p.add_argument("--quick", action="store_true", help="the method's quick preparation (e.g. SDA's fine-tuning)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream and of the method")
    p.add_argument("--out", default=None, help="write per-batch results here as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_classifier(spec: str):
    """A BatchNorm classifier from ``zoo:NAME`` or a folder with a zoo-format asset; UserError otherwise."""
    from . import zoo

    if spec.startswith("zoo:"):
        name = spec[4:]
        if name not in zoo.MODELS:
            raise UserError(f"--classifier {spec}: unknown zoo model; classifiers for adapt: "
                            + ", ".join(f"zoo:{n}" for n in BN_CLASSIFIERS))
        try:
            model = zoo.load(name)
        except zoo.ZooError as err:
            raise UserError(f"--classifier {spec}: {err}") from None
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise UserError(f"--classifier {spec}: not a folder; give zoo:NAME or a folder holding NAME.json and "
                            "NAME.safetensors")
        names = [n for n in BN_CLASSIFIERS if (folder / f"{n}.json").is_file()]
        if not names:
            raise UserError(f"--classifier {spec}: holds none of {', '.join(f'{n}.json' for n in BN_CLASSIFIERS)}")
        try:
            model = zoo.load(names[0], assets_dir=folder)
        except (zoo.ZooError, KeyError, RuntimeError) as err:
            raise UserError(f"--classifier {spec}: cannot load {names[0]} ({err})") from None
    import torch

    if not (isinstance(model, torch.nn.Module) and hasattr(model, "num_classes")
            and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())):
        raise UserError(f"--classifier {spec} is not an image classifier with BatchNorm layers; use one of "
                        + ", ".join(f"zoo:{n}" for n in BN_CLASSIFIERS))
    return model


def _check_args(args):
    """Validate every flag (one UserError line); returns (shifts, classifier spec)."""
    from .data.shift_streams import check_batch_size, check_corruption, check_severity
    from .methods.tta.registry import METHODS, method_status

    if args.method not in METHODS:
        raise UserError(f"unknown method {args.method!r}; available: {', '.join(METHODS)}")
    if args.method == "difftpt" and args.stream not in ("single", "sorted"):
        raise UserError(f"--method difftpt adapts each image on its own (episodic): use --stream single or sorted, "
                        f"not {args.stream}")
    if args.method != "difftpt" and args.classifier == "zoo:captions_clip":
        raise UserError("zoo:captions_clip is the classifier of --method difftpt only")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1; got {args.limit}")
    try:
        check_severity(args.severity)
        check_batch_size(args.batch_size)
        if args.stream == "continual":
            from .data.shift_streams import CONTINUAL_CYCLE

            shifts = list(CONTINUAL_CYCLE) if args.shift == "cycle" else [s.strip() for s in args.shift.split(",")]
        else:
            shifts = [args.shift]
        for s in shifts:
            check_corruption(s)
    except ValueError as err:
        raise UserError(str(err).replace("batch size", "--batch-size").replace("severity must", "--severity must")
                        ) from None
    for flag, value in (("--repeats", args.repeats), ("--cycles", args.cycles)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1; got {value}")
    if not 0.0 <= args.unknown_fraction < 1.0:
        raise UserError(f"--unknown-fraction must be in [0, 1); got {args.unknown_fraction}")
    reason = method_status(args.method)
    if reason is not None:
        raise UserError(reason)
    if args.method == "difftpt":
        if args.classifier not in (None, "zoo:captions_clip"):
            raise UserError("--method difftpt tunes the prompt of zoo:captions_clip; got --classifier "
                            f"{args.classifier}")
        return shifts, "zoo:captions_clip"
    spec = args.classifier or ("zoo:digits04_bn_classifier" if args.stream == "open-set" else
                               "zoo:digits_bn_classifier")
    return shifts, spec


def build_stream(args, shifts: list[str]):
    """The stream the flags describe (already validated)."""
    from .data import shift_streams as ss

    if args.method == "difftpt":  # the captioned RGB digits (3 x 24 x 24) of the zoo's captions_clip
        from .methods.tta.difftpt import test_data

        return ss.single_stream(shifts[0], args.severity, batch_size=args.batch_size,
                                order="sorted" if args.stream == "sorted" else "iid", repeats=args.repeats,
                                n=args.limit, seed=args.seed, data=test_data("test"))
    if args.stream == "continual":
        return ss.continual_stream(shifts, args.severity, cycles=args.cycles, batch_size=args.batch_size,
                                   seed=args.seed)
    if args.stream == "open-set":
        return ss.open_set_stream(shifts[0], args.severity, unknown_fraction=args.unknown_fraction,
                                  batch_size=args.batch_size, repeats=args.repeats, seed=args.seed)
    return ss.single_stream(shifts[0], args.severity, batch_size=args.batch_size,
                            order="sorted" if args.stream == "sorted" else "iid", repeats=args.repeats,
                            seed=args.seed)


def ss_limit(stream, limit: int):
    """The first ``limit`` samples of ``stream``."""
    from .data.shift_streams import ShiftStream

    return ShiftStream(stream.x[:limit], stream.y[:limit], stream.domains[:limit], stream.batch_size,
                       {**stream.info, "limit": limit})


def run(args) -> int:
    """Check everything, build the classifier, stream and method, adapt online with a progress bar."""
    import torch
    from tqdm import tqdm

    from .io import atomic_write_json, check_output_file
    from .methods.tta.base import run_stream
    from .methods.tta.registry import build_method

    shifts, spec = _check_args(args)
    if args.out is not None:
        check_output_file(args.out, overwrite=args.overwrite)
    if args.method == "difftpt":
        from . import zoo

        classifier = zoo.load("captions_clip")
    else:
        classifier = load_classifier(spec)
    want = 5 if args.stream == "open-set" else 10
    if args.method != "difftpt" and classifier.num_classes != want:
        raise UserError(f"--classifier {spec} has {classifier.num_classes} classes but the {args.stream} stream needs "
                        f"{want} (" + ("digits 0-4: zoo:digits04_bn_classifier" if want == 5 else
                                       "all ten digits: zoo:digits_bn_classifier") + ")")
    stream = build_stream(args, shifts)
    if args.limit is not None and args.limit < stream.x.shape[0]:
        stream = ss_limit(stream, args.limit)
    adapter = build_method(args.method, classifier, quick=args.quick, seed=args.seed)
    show = not args.no_progress and sys.stderr.isatty()
    bar = tqdm(total=len(stream), desc=f"adapt {args.method}", unit="batch", file=sys.stderr, disable=not show,
               dynamic_ncols=True)

    def progress(i, running_error):
        bar.update(1)
        bar.set_postfix(error=f"{running_error:.3f}")

    with bar:
        result = run_stream(adapter, stream, progress=progress)
    totals = result.totals()
    if args.out is not None:
        settings = {"method": args.method, "classifier": spec, "stream": args.stream, "shift": ",".join(shifts),
                    "severity": args.severity, "batch_size": args.batch_size, "repeats": args.repeats,
                    "cycles": args.cycles if args.stream == "continual" else None,
                    "unknown_fraction": args.unknown_fraction if args.stream == "open-set" else None,
                    "limit": args.limit, "seed": args.seed, "quick": args.quick,
                    "torch_threads": torch.get_num_threads()}
        rows = result.to_json()
        domains = stream.batch_domains()
        for row in rows["batches"]:
            row["domain"] = domains[row["index"]]
        atomic_write_json(args.out, {**settings, **rows})
    extra = ""
    if "rejection_auroc" in totals:
        extra = f", unknown rejection AUROC {totals['rejection_auroc']:.3f}"
    where = f" -> {args.out}" if args.out is not None else ""
    print(f"{args.method} on {args.stream} {','.join(shifts)}-{args.severity} (batch {args.batch_size}): error "
          f"{totals['error']:.4f}, Brier {totals['brier']:.4f}, NLL {totals['nll']:.4f}{extra}, "
          f"{totals['images']} images, {1e3 * totals['seconds_per_image']:.2f} ms/image{where}")
    return 0
