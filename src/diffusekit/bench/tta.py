"""Bench ``tta``: test-time adaptation of a BatchNorm digits CNN under ImageNet-C-style corruptions (issue 13).

Methods (built through ``methods.tta.registry``, each once per source model and ``reset()`` before every stream):
source (no adaptation), TENT (arXiv 2006.10726), TENT + the open-set wisdom-of-crowds filter (arXiv 2308.06879),
PETAL (arXiv 2303.15145), DDA (arXiv 2207.03442) and SDA (arXiv 2406.04295). A method whose module is missing is
recorded under ``missing`` instead of failing the bench.

Settings (``data.shift_streams``; the sources are the zoo's ``digits_bn_classifier`` and, for the open set,
``digits04_bn_classifier``):

* ``single[method][shift][severity]``: one corruption at a time, i.i.d. order, batch 64 -> error, Brier, NLL,
  seconds per image. The cheap methods see every corruption at severities 3 and 5 (``repeats`` passes over the 360
  test digits); DDA and SDA (tens of ms per image) see four corruptions on an evenly spaced subset (``heavy_n``
  images) of the same streams.
* ``continual``: the corruption cycle visited 10 times without reset; error per domain visit over time.
  ``continual_stress``: the same at 100x the learning rate (TENT, TENT + filter, PETAL), where TENT drifts.
* ``batch_size``: batch 1, 8, 64, 200 on one shift.
* ``sorted``: class-sorted vs i.i.d. order on the same images (:func:`sort_by_label`).
* ``open_set``: the 0-4 source with half the stream unknown (digits 5-9 and natural patches): closed-set error and
  rejection AUROC of the max softmax probability, and the shares of known and unknown samples the filter keeps;
  ``open_set_stress`` repeats TENT and TENT + filter at 100x the learning rate.
* ``claims``: each claim of the issue with its measured size and whether it held.
"""

from __future__ import annotations

import torch

from ..data.shift_streams import CONTINUAL_CYCLE, ShiftStream, continual_stream, open_set_stream, single_stream
from ..methods.tta.base import run_stream
from ..methods.tta.registry import MethodUnavailable, build_method, method_status
from . import bench_progress, register_bench

LIGHT = ("source", "tent", "tent+filter", "petal")
HEAVY = ("dda", "sda")
FULL = {"shifts": ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "contrast",
                   "brightness", "pixelate", "jpeg", "elastic"),
        "severities": (3, 5), "repeats": 3, "batch": 64,
        "heavy_shifts": ("gaussian_noise", "defocus_blur", "contrast", "jpeg"), "heavy_severities": (5,),
        "heavy_n": 120,
        "continual": {"cycles": 10, "images_per_domain": 200, "batch_size": 50},
        "batch_sizes": (1, 8, 64, 200), "sweep_shift": ("gaussian_noise", 5), "sweep_repeats": 3, "heavy_sweep_n": 64,
        "sorted_shifts": ("gaussian_noise", "contrast"), "open_shifts": ("gaussian_noise", "contrast", "defocus_blur"),
        "open_repeats": 3, "stress_lr": 0.1, "light": LIGHT, "heavy": HEAVY}
QUICK = {**FULL, "shifts": ("gaussian_noise", "contrast"), "severities": (5,), "repeats": 1,
         "heavy_shifts": ("gaussian_noise",), "heavy_n": 16,
         "continual": {"cycles": 3, "images_per_domain": 200, "batch_size": 50},
         "batch_sizes": (1, 64), "sweep_repeats": 1, "heavy_sweep_n": 16, "sorted_shifts": ("gaussian_noise",),
         "open_shifts": ("gaussian_noise",), "open_repeats": 2, "light": ("source", "tent", "tent+filter"),
         "heavy": ("dda",)}


def thin(stream: ShiftStream, n: int) -> ShiftStream:
    """``n`` evenly spaced samples of ``stream``, in stream order (a class-sorted stream stays sorted and covers
    every class; an i.i.d. stream gives a random subset)."""
    if n >= stream.x.shape[0]:
        return stream
    idx = torch.linspace(0, stream.x.shape[0] - 1, n).round().long()
    return ShiftStream(stream.x[idx], stream.y[idx], [stream.domains[i] for i in idx.tolist()], stream.batch_size,
                       {**stream.info, "thinned_to": n})


def sort_by_label(stream: ShiftStream) -> ShiftStream:
    """The same samples in class-sorted order (stable: ties keep their stream order)."""
    idx = torch.sort(stream.y, stable=True).indices
    return ShiftStream(stream.x[idx], stream.y[idx], [stream.domains[i] for i in idx.tolist()], stream.batch_size,
                       {**stream.info, "order": "sorted"})


def _score(adapter, stream: ShiftStream) -> dict:
    adapter.reset()
    result = run_stream(adapter, stream)
    totals = result.totals()
    out = {k: totals[k] for k in ("error", "brier", "nll", "seconds_per_image", "images")}
    if "rejection_auroc" in totals:
        out["rejection_auroc"] = totals["rejection_auroc"]
    out["_batches"] = result.batches
    return out


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


class _Methods:
    """Adapters built once per (method, source model); missing ones recorded with their reason."""

    def __init__(self, quick: bool):
        self.quick, self.cache, self.missing = quick, {}, {}

    def get(self, name: str, classifier, key: str, **overrides):
        tag = (name, key, tuple(sorted(overrides.items())))
        if tag not in self.cache:
            reason = method_status(name)
            if reason is not None:
                self.missing[name] = reason
                return None
            try:
                self.cache[tag] = build_method(name, classifier, quick=self.quick, seed=0, **overrides)
            except MethodUnavailable as err:
                self.missing[name] = str(err)
                return None
        return self.cache[tag]


def _single(cfg, methods, models, bar) -> dict:
    out: dict = {}
    for name in cfg["light"] + cfg["heavy"]:
        heavy = name in cfg["heavy"]
        shifts = cfg["heavy_shifts"] if heavy else cfg["shifts"]
        severities = cfg["heavy_severities"] if heavy else cfg["severities"]
        for shift in shifts:
            for severity in severities:
                adapter = methods.get(name, models["all"], "all")
                if adapter is None:
                    break
                stream = single_stream(shift, severity, batch_size=cfg["batch"], repeats=cfg["repeats"], seed=0)
                if heavy:
                    stream = thin(stream, cfg["heavy_n"])
                out.setdefault(name, {}).setdefault(shift, {})[str(severity)] = _public(_score(adapter, stream))
                bar.update(1)
    # the source on exactly the heavy methods' subsets, for a like-for-like comparison
    for shift in cfg["heavy_shifts"]:
        for severity in cfg["heavy_severities"]:
            stream = thin(single_stream(shift, severity, batch_size=cfg["batch"], repeats=cfg["repeats"], seed=0),
                          cfg["heavy_n"])
            row = _public(_score(methods.get("source", models["all"], "all"), stream))
            out.setdefault("source_on_heavy_subset", {}).setdefault(shift, {})[str(severity)] = row
    return out


def _continual(cfg, methods, models, bar, *, stress: bool = False) -> dict:
    c = cfg["continual"]
    stream = continual_stream(CONTINUAL_CYCLE[: 3 if methods.quick else None], 5, cycles=c["cycles"],
                              images_per_domain=c["images_per_domain"], batch_size=c["batch_size"], seed=0)
    per_visit = c["images_per_domain"] // c["batch_size"]
    out = {"domains": [f"{cyc}:{name}" for cyc, name in stream.info["visits"]], "cycles": c["cycles"],
           "cycle": list(stream.info["corruptions"]), "images": int(stream.x.shape[0])}
    if stress:
        out["lr"] = cfg["stress_lr"]
    for name in cfg["light"]:
        if stress and name == "source":
            continue
        adapter = methods.get(name, models["all"], "all", **({"lr": cfg["stress_lr"]} if stress else {}))
        if adapter is None:
            continue
        row = _score(adapter, stream)
        errs = [b["error"] for b in row.pop("_batches")]
        visits = [sum(errs[v * per_visit:(v + 1) * per_visit]) / per_visit for v in range(len(errs) // per_visit)]
        n_dom = len(stream.info["corruptions"])
        cycle_err = [sum(visits[k * n_dom:(k + 1) * n_dom]) / n_dom for k in range(c["cycles"])]
        out[name] = {**row, "visit_error": visits, "cycle_error": cycle_err}
        bar.update(1)
    return out


def _batch_sizes(cfg, methods, models, bar) -> dict:
    shift, severity = cfg["sweep_shift"]
    out: dict = {"shift": f"{shift}-{severity}"}
    for name in cfg["light"] + cfg["heavy"]:
        heavy = name in cfg["heavy"]
        for bs in cfg["batch_sizes"]:
            adapter = methods.get(name, models["all"], "all")
            if adapter is None:
                break
            stream = single_stream(shift, severity, batch_size=bs, repeats=cfg["sweep_repeats"], seed=0)
            if heavy:
                stream = thin(stream, cfg["heavy_sweep_n"])
            out.setdefault(name, {})[str(bs)] = _public(_score(adapter, stream))
            bar.update(1)
    return out


def _sorted(cfg, methods, models, bar) -> dict:
    out: dict = {}
    for name in cfg["light"] + cfg["heavy"]:
        heavy = name in cfg["heavy"]
        for shift in cfg["sorted_shifts"]:
            adapter = methods.get(name, models["all"], "all")
            if adapter is None:
                break
            iid = single_stream(shift, 5, batch_size=cfg["batch"], repeats=cfg["repeats"], seed=0)
            if heavy:
                iid = thin(iid, cfg["heavy_n"])
            row = {order: _public(_score(adapter, s)) for order, s in (("iid", iid), ("sorted", sort_by_label(iid)))}
            out.setdefault(name, {})[f"{shift}-5"] = row
            bar.update(1)
    return out


class _KeptRecorder:
    """Passes ``predict``/``reset`` through to an :class:`~diffusekit.methods.tta.open_set.OpenSetFilter` and keeps
    its per-batch selection masks (stream order)."""

    def __init__(self, adapter):
        self.adapter, self.kept = adapter, []
        self.name = adapter.name

    def predict(self, x):
        logits = self.adapter.predict(x)
        self.kept.append(self.adapter.last_kept.clone())
        return logits

    def reset(self):
        self.adapter.reset()
        self.kept = []


def _kept_fractions(recorder: _KeptRecorder, stream: ShiftStream) -> dict:
    kept = torch.cat(recorder.kept)
    known = stream.y >= 0
    return {"kept_known": float(kept[known].double().mean()), "kept_unknown": float(kept[~known].double().mean())}


def _open_set(cfg, methods, models, bar) -> tuple[dict, dict]:
    out: dict = {}
    stress: dict = {}
    for shift in cfg["open_shifts"]:
        stream = open_set_stream(shift, 5, unknown_fraction=0.5, batch_size=cfg["batch"], repeats=cfg["open_repeats"],
                                 seed=0)
        for name in cfg["light"] + cfg["heavy"]:
            if name == "sda":  # SDA fine-tunes on synthetic digits of all ten classes: no 0-4 source version
                continue
            adapter = methods.get(name, models["04"], "04")
            if adapter is None:
                continue
            s = thin(stream, cfg["heavy_n"]) if name in cfg["heavy"] else stream
            recorder = _KeptRecorder(adapter) if name == "tent+filter" else None
            row = _public(_score(recorder or adapter, s))
            row["closed_set_error"] = row.pop("error")
            if recorder is not None:
                row.update(_kept_fractions(recorder, s))
            out.setdefault(name, {})[f"{shift}-5"] = row
            bar.update(1)
        for name in ("tent", "tent+filter"):
            adapter = methods.get(name, models["04"], "04", lr=cfg["stress_lr"])
            if adapter is None:
                continue
            recorder = _KeptRecorder(adapter) if name == "tent+filter" else None
            row = _public(_score(recorder or adapter, stream))
            row["closed_set_error"] = row.pop("error")
            if recorder is not None:
                row.update(_kept_fractions(recorder, stream))
            stress.setdefault(name, {})[f"{shift}-5"] = row
    return out, {"lr": cfg["stress_lr"], **stress}


def _mean(values) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def _claims(res: dict) -> dict:
    """Each claim of the issue with its measured size (differences of error rates, positive = claim direction)."""
    claims = {}
    op, st = res["open_set"], res["open_set_stress"]
    if "tent" in op and "tent+filter" in op:
        gap = _mean([op["tent"][k]["closed_set_error"] - op["tent+filter"][k]["closed_set_error"] for k in op["tent"]])
        src = _mean([op["tent"][k]["closed_set_error"] - op["source"][k]["closed_set_error"] for k in op["tent"]])
        claims["open_set_filter_prevents_tent_collapse"] = {
            "tent_minus_filter_error": gap, "tent_minus_source_error": src,
            "stress_tent_minus_filter_error": _mean([st["tent"][k]["closed_set_error"] -
                                                     st["tent+filter"][k]["closed_set_error"] for k in st["tent"]]),
            "stress_filter_minus_tent_auroc": _mean([st["tent+filter"][k]["rejection_auroc"] -
                                                     st["tent"][k]["rejection_auroc"] for k in st["tent"]]),
            "filter_kept_known_minus_unknown": _mean([op["tent+filter"][k]["kept_known"] -
                                                      op["tent+filter"][k]["kept_unknown"] for k in op["tent"]]),
            "holds": bool(gap > 0 and src > 0)}
    so = res["sorted"]
    if "tent" in so:
        collapse = _mean([v["sorted"]["error"] - v["iid"]["error"] for v in so["tent"].values()])
        filt = _mean([so["tent"][k]["sorted"]["error"] - so["tent+filter"][k]["sorted"]["error"] for k in so["tent"]]
                     ) if "tent+filter" in so else float("nan")
        claims["sorted_tent_collapses_filter_prevents"] = {"tent_sorted_minus_iid_error": collapse,
                                                           "tent_minus_filter_sorted_error": filt,
                                                           "holds": bool(collapse > 0 and filt > 0)}
    co, cs = res["continual"], res["continual_stress"]
    drift = {m: co[m]["cycle_error"][-1] - co[m]["cycle_error"][0] for m in ("tent", "petal") if m in co}
    stress_drift = {m: cs[m]["cycle_error"][-1] - cs[m]["cycle_error"][0] for m in ("tent", "petal") if m in cs}
    if drift:
        def held(d):
            return bool("petal" in d and "tent" in d and d["tent"] > 0.05 and d["petal"] < d["tent"] - 0.05)

        claims["petal_stable_tent_drifts"] = {"last_minus_first_cycle_error": drift,
                                              "stress_lr_last_minus_first_cycle_error": stress_drift,
                                              "holds_at_default_lr": held(drift),
                                              "holds": held(stress_drift)}
    cs = res["continual_stress"]
    if "tent" in cs and "tent+filter" in cs:
        last = {m: cs[m]["cycle_error"][-1] for m in ("tent", "tent+filter", "petal") if m in cs}
        first = {m: cs[m]["cycle_error"][0] for m in last}
        claims["filter_prevents_continual_collapse_at_stress_lr"] = {
            "lr": cs["lr"], "first_cycle_error": first, "last_cycle_error": last,
            "holds": bool(last["tent"] - first["tent"] > 0.05 and last["tent+filter"] < last["tent"] - 0.05)}
    bs = res["batch_size"]
    if "tent" in bs:
        sizes = sorted(bs["tent"], key=int)
        tent_span = bs["tent"][sizes[0]]["error"] - bs["tent"][sizes[-1]]["error"]
        entry = {"tent_batch1_minus_largest_error": tent_span}
        holds = tent_span > 0
        if "dda" in bs:
            dda = [bs["dda"][k]["error"] for k in bs["dda"]]
            entry["dda_error_range_over_batch_sizes"] = max(dda) - min(dda)
            holds = holds and entry["dda_error_range_over_batch_sizes"] < tent_span
        if "dda" in so:
            entry["dda_sorted_minus_iid_error"] = _mean([v["sorted"]["error"] - v["iid"]["error"]
                                                         for v in so["dda"].values()])
        claims["dda_insensitive_tent_degrades_at_batch1"] = {**entry, "holds": bool(holds)}
    si = res["single"]
    if "dda" in si and "sda" in si:
        gap = _mean([si["dda"][s][v]["error"] - si["sda"][s][v]["error"] for s in si["sda"] for v in si["sda"][s]])
        images = sum(si["sda"][s][v]["images"] for s in si["sda"] for v in si["sda"][s])
        claims["sda_beats_dda"] = {"dda_minus_sda_error": gap, "images": images,
                                   "holds": bool(gap > 0)}
    return claims


def _figure(res: dict):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8), gridspec_kw={"width_ratios": [2.4, 1.5, 1, 1.2]})
    ax = axes[0]
    si = res["single"]
    methods = [m for m in (*LIGHT, *HEAVY) if m in si]
    shifts = list(si.get("source", {}))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i, s in enumerate(shifts) if s in si[m]]
        ys = [si[m][s]["5"]["error"] for s in shifts if s in si[m] and "5" in si[m][s]]
        ax.bar(xs[:len(ys)], ys, width, label=m + (" (subset)" if m in HEAVY else ""))
    ax.set_xticks(range(len(shifts)), [s.replace("_", "\n") for s in shifts], fontsize=7)
    ax.set_ylabel("error"), ax.set_title("single domain, severity 5, batch 64"), ax.legend(fontsize=7)
    ax = axes[1]
    co, cs = res["continual"], res["continual_stress"]
    for m in LIGHT:
        color = f"C{LIGHT.index(m)}"
        if m in co:
            ax.plot(range(1, co["cycles"] + 1), co[m]["cycle_error"], "o-", color=color, ms=3,
                    label=f"{m} ({co[m]['error']:.3f})")
        if m in cs:
            ax.plot(range(1, cs["cycles"] + 1), cs[m]["cycle_error"], "s--", color=color, ms=3,
                    label=f"{m}, lr {cs['lr']:g} ({cs[m]['error']:.3f})")
    ax.set_xlabel(f"cycle ({len(co['cycle'])} corruptions each, severity 5, never reset)")
    ax.set_ylabel("error (mean over the cycle)"), ax.legend(fontsize=7)
    ax.set_title("continual: default lr (solid) and 100x lr (dashed)")
    ax = axes[2]
    bs = res["batch_size"]
    for m in (*LIGHT, *HEAVY):
        if m in bs:
            sizes = sorted(bs[m], key=int)
            ax.plot([int(s) for s in sizes], [bs[m][s]["error"] for s in sizes], "o-", label=m)
    ax.set_xscale("log"), ax.set_xlabel("batch size"), ax.set_ylabel("error"), ax.legend(fontsize=7)
    ax.set_title(f"batch size ({bs['shift']})")
    ax = axes[3]
    op, st = res["open_set"], res["open_set_stress"]
    bars = [(m, op[m]) for m in (*LIGHT, "dda") if m in op] + [(f"{m} lr {st['lr']:g}", st[m])
                                                               for m in ("tent", "tent+filter") if m in st]
    for i, (_, rows) in enumerate(bars):
        err = _mean([r["closed_set_error"] for r in rows.values()])
        auc = _mean([r.get("rejection_auroc", float("nan")) for r in rows.values()])
        ax.bar(i - 0.2, err, 0.4, color="C0", label="closed-set error" if i == 0 else None)
        ax.bar(i + 0.2, auc, 0.4, color="C1", label="unknown rejection AUROC" if i == 0 else None)
    ax.set_xticks(range(len(bars)), [b[0].replace(" ", "\n") for b in bars], fontsize=7)
    ax.set_title("open set (0-4 source, 50% unknowns)"), ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _summary(res: dict) -> str:
    parts = []
    si = res["single"]
    for m in (*LIGHT, *HEAVY):
        if m in si:
            parts.append(f"{m} {_mean([v['error'] for s in si[m].values() for v in s.values()]):.3f}")
    lines = ["mean single-domain error: " + ", ".join(parts)]
    for name, c in res["claims"].items():
        size = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.items() if k != "holds"}
        verdict = "holds" if c["holds"] else "does NOT hold"
        if name == "petal_stable_tent_drifts":
            verdict += " at 100x lr" + (", holds" if c["holds_at_default_lr"] else ", does NOT hold") + " at default lr"
        lines.append(f"{name}: {verdict} {size}")
    if res["missing"]:
        lines.append("missing: " + "; ".join(res["missing"].values()))
    return "\n".join(lines)


def run(quick: bool):
    """Run every setting (see the module docstring); returns (result dict, figure)."""
    from .. import zoo

    cfg = QUICK if quick else FULL
    models = {"all": zoo.load("digits_bn_classifier"), "04": zoo.load("digits04_bn_classifier")}
    methods = _Methods(quick)
    n_methods = len(cfg["light"]) + len(cfg["heavy"])
    total = (len(cfg["light"]) * len(cfg["shifts"]) * len(cfg["severities"])
             + len(cfg["heavy"]) * len(cfg["heavy_shifts"]) * len(cfg["heavy_severities"])
             + 2 * len(cfg["light"]) + n_methods * (len(cfg["batch_sizes"]) + len(cfg["sorted_shifts"])
                                                 + len(cfg["open_shifts"])))
    res: dict = {"settings": {k: v for k, v in cfg.items()}}
    with bench_progress(desc="tta", total=total) as bar:
        res["single"] = _single(cfg, methods, models, bar)
        res["continual"] = _continual(cfg, methods, models, bar)
        res["continual_stress"] = _continual(cfg, methods, models, bar, stress=True)
        res["batch_size"] = _batch_sizes(cfg, methods, models, bar)
        res["sorted"] = _sorted(cfg, methods, models, bar)
        res["open_set"], res["open_set_stress"] = _open_set(cfg, methods, models, bar)
    res["missing"] = dict(methods.missing)
    for adapter in methods.cache.values():
        prep = getattr(adapter, "preparation", None)
        if prep:
            res.setdefault("preparation", {})[adapter.name] = prep
    res["claims"] = _claims(res)
    res["summary"] = _summary(res)
    return res, _figure(res)


register_bench("tta", "test-time adaptation on corrupted digits: TENT, open-set filter, PETAL, DDA, SDA")(run)
