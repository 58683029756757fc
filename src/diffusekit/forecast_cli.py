"""``diffusekit forecast``: probabilistic forecasts of a series with TSDiff (arXiv 2307.11494) or a baseline.

    diffusekit forecast --data NAME|file.csv --horizon H --out forecast.json|forecast.csv
                        [--method tsdiff|tsdiff-quantile|tsdiff-refine|conditional|seasonal-naive]
                        [--context C] [--season K] [--freq F] [--samples S] [--train-steps N] [--scale s]
                        [--seed S] [--overwrite] [--no-progress]

NAME is one of the bundled series (``domains.timeseries.data.NAMED_SERIES``); a CSV holds one column per variable,
optionally a first date column (multivariate series are forecast jointly: every window holds all variables). The
model is trained on every window of C + H steps of the series (scaled per window by its context), then forecasts
the H steps after the series ends. Methods: ``tsdiff`` (self-guidance with the MSE energy), ``tsdiff-quantile``
(quantile energy), ``tsdiff-refine`` (seasonal naive refined by overdamped Langevin under the diffusion energy),
``conditional`` (the same backbone trained with the context as conditioning), ``seasonal-naive`` (GluonTS).

Output: JSON ``{"method", "data", "horizon", "context", "time": [...], "variables": {name: {"mean": [...],
"0.1": [...], ..., "0.9": [...]}}}`` or CSV rows (time, variable, mean, q0.1 .. q0.9), plus a fan chart PNG next
to it (same name, ``.png``). Every input mistake ends in one ``error:`` line before training; nothing is
overwritten without ``--overwrite``; writes are atomic.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError

HELP = "probabilistic forecasts of a series (TSDiff self-guidance, refinement, conditional, seasonal naive)"
METHODS = ("tsdiff", "tsdiff-quantile", "tsdiff-refine", "conditional", "seasonal-naive")


def add_arguments(p) -> None:
    """The flags of ``diffusekit forecast``."""
    p.add_argument("--data", required=True, help="a bundled series name (co2, sunspots, elnino, nile, elec_equip, "
                   "macrodata, synthetic) or a CSV file (one column per variable, optional first date column)")
    p.add_argument("--horizon", type=int, default=24, help="number of steps to forecast")
    p.add_argument("--out", required=True, help="output .json or .csv (a fan-chart .png is written next to it)")
    p.add_argument("--method", default="tsdiff-quantile", choices=METHODS, help="forecasting method")
    p.add_argument("--context", type=int, default=None,
                   help="context length (default min(96, (length - horizon) // 2))")
    p.add_argument("--season", type=int, default=None, help="seasonal period (default: the series' own, else 1)")
    p.add_argument("--freq", default=None, help="pandas frequency of a CSV without dates (default D)")
    p.add_argument("--samples", type=int, default=32, help="forecast samples")
    p.add_argument("--train-steps", type=int, default=1000, help="optimizer steps of the diffusion model")
    p.add_argument("--scale", type=float, default=None, help="self-guidance scale s (default 0.1 MSE, 2 quantile)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and sampling")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _load(args):
    from .domains.timeseries.data import NAMED_SERIES, as_series

    if args.data not in NAMED_SERIES and not Path(args.data).is_file():
        raise UserError(f"--data {args.data!r}: not a bundled series ({', '.join(NAMED_SERIES)}) nor a CSV file")
    try:
        series = as_series(args.data, freq=args.freq, season=args.season)
    except (ValueError, OSError) as err:
        raise UserError(f"--data {args.data}: {err}") from None
    if args.season is not None:
        series.season = args.season
    return series


def _check(args, series) -> int:
    if args.horizon < 1:
        raise UserError(f"--horizon must be >= 1; got {args.horizon}")
    if args.samples < 2:
        raise UserError(f"--samples must be >= 2 (quantiles need several samples); got {args.samples}")
    if args.train_steps < 1:
        raise UserError(f"--train-steps must be >= 1; got {args.train_steps}")
    if args.season is not None and args.season < 1:
        raise UserError(f"--season must be >= 1; got {args.season}")
    context = args.context if args.context is not None else min(96, (series.length - args.horizon) // 2)
    if context < 2 or context + args.horizon + 7 > series.length:
        raise UserError(f"--context {context} + --horizon {args.horizon} leave fewer than 8 training windows in "
                        f"the {series.length} steps of {args.data}; shorten them")
    if args.method == "seasonal-naive" or args.method == "tsdiff-refine":
        if series.season > context:
            raise UserError(f"--season {series.season} is longer than the context {context}")
    return context


def _forecast(args, series, context: int, progress: bool):
    """Samples (S, D, H) in raw units."""
    from .domains.timeseries.forecast import forecast_samples

    return forecast_samples(series, args.horizon, method=args.method, context=context, samples=args.samples,
                            train_steps=args.train_steps, scale=args.scale, seed=args.seed, progress=progress)


def _fan_chart(series, context: int, samples, times, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .io import atomic_write_bytes

    d = series.dim
    fig, axes = plt.subplots(d, 1, figsize=(9, 2.8 * d), squeeze=False)
    hist = series.index()[-context:].to_timestamp()
    future = times.to_timestamp()
    for v in range(d):
        ax = axes[v, 0]
        ax.plot(hist, series.values[-context:, v], color="k", lw=1, label="history")
        for lo, hi, alpha in ((0.1, 0.9, 0.2), (0.2, 0.8, 0.3), (0.3, 0.7, 0.4)):
            ax.fill_between(future, np.quantile(samples[:, v], lo, 0), np.quantile(samples[:, v], hi, 0),
                            color="C0", alpha=alpha, lw=0, label=f"{int(lo * 100)}-{int(hi * 100)}%")
        ax.plot(future, samples[:, v].mean(0), color="C0", lw=1.5, label="mean")
        ax.set_title(series.columns[v], fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run(args) -> int:
    """Check every input, train (unless seasonal naive), forecast, write the table and the fan chart."""
    import io

    import numpy as np
    import pandas as pd

    from .domains.timeseries.evaluation import QUANTILES
    from .io import atomic_write_json, atomic_write_text, check_output_file

    out = Path(args.out)
    if out.suffix not in (".json", ".csv"):
        raise UserError(f"--out must end in .json or .csv; got {out.name}")
    check_output_file(out, overwrite=args.overwrite)
    png = out.with_suffix(".png")
    check_output_file(png, overwrite=args.overwrite, what="--out (fan chart)")
    series = _load(args)
    context = _check(args, series)
    progress = not args.no_progress and sys.stderr.isatty()
    samples = _forecast(args, series, context, progress)  # (S, D, H)
    times = pd.period_range(series.index()[-1] + 1, periods=args.horizon, freq=series.freq)
    table = {}
    for v, name in enumerate(series.columns):
        table[name] = {"mean": samples[:, v].mean(0).tolist(),
                       **{f"{q:g}": np.quantile(samples[:, v], q, 0).tolist() for q in QUANTILES}}
    if out.suffix == ".json":
        atomic_write_json(out, {"method": args.method, "data": args.data, "horizon": args.horizon, "context": context,
                                "samples": int(samples.shape[0]), "time": [str(t) for t in times],
                                "variables": table})
    else:
        rows = [{"time": str(t), "variable": name, "mean": table[name]["mean"][i],
                 **{f"q{q:g}": table[name][f"{q:g}"][i] for q in QUANTILES}}
                for name in series.columns for i, t in enumerate(times)]
        buf = io.StringIO()
        pd.DataFrame(rows).to_csv(buf, index=False)
        atomic_write_text(out, buf.getvalue())
    _fan_chart(series, context, samples, times, png)
    print(f"forecast {args.horizon} steps of {args.data} ({series.dim} variable(s), {args.method}, "
          f"{samples.shape[0]} sample(s)) to {out} and {png}")
    return 0
