"""Our default and best ODE solvers vs diffusers' at equal NFE, selected on one x_T set and reported on
another: ``diffusekit bench solvers [--quick]``.

Problems: the exact Gaussian mixtures of ``bench._mixtures`` (ring2d, aniso8d, stiff16d, wide64d; quick:
ring2d and stiff16d) on ``VPDiscrete.named("linear", 1000)``, the schedule diffusers' schedulers are built
for. Each problem has a tuning set of x_T (seed 0) and a disjoint held-out set (seed 1). The error of a
sample is its distance at t = 0 to the reference solution from the same x_T, computed by scipy's DOP853 on
the mixture's PF-ODE (``_mixtures.reference_solution``; independent of every solver compared), averaged
over the set; the reference's own error is recorded as its gap to a 100x looser solve.

* ours, default: ``samplers.DEFAULT`` as a user gets it, ``default_timesteps(denoiser, NFE)`` (a grid
  searched for this model with the data-free trajectory objective on its own prior noise, seed 0, with our
  fine solver as reference; its cost is recorded) and the default sampler.
* ours, best: every deterministic multistep sampler in ``OURS`` on every fixed grid of ``fixed_grids``
  (uniform, logsnr, quadratic, karras, linspace, leading, trailing) plus the default; chosen per NFE on
  the tuning set.
* diffusers, best: every configuration of ``_diffusers_side.option_space`` (296 in the full run), chosen
  per NFE on the tuning set; diffusers, default: ``DPMSolverMultistepScheduler()``.
* which grid carries the lead: the best of ours restricted to the logsnr grid, the best of diffusers'
  restricted to ``use_lu_lambdas`` (its uniform-logSNR option), the best fixed grid of ours, and the
  searched grid, all on held-out noise.

NFE is the number of model calls, asserted for every run (``SamplerInfo.nfe`` where the registry has it,
a counting wrapper otherwise). Overhead: on the digits UNet (batch 100, 20 NFE), sampler wall time / (NFE x
median forward time) for our DPM-Solver++(2M) and diffusers' DPMSolverMultistep loop, interleaved.

JSON: ``problems[P][NFE]`` = {"ours_default", "ours_best", "ours_best_fixed", "ours_logsnr", "diffusers_best",
"diffusers_lu_lambdas", "diffusers_default"}, each {"name", "tune", "held_out"} (errors); ``search[P][NFE]``
= the default's search (seconds, evaluations, chosen source and parameters); ``problem_info[P]``;
``overhead``.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings

import torch

from ..core import CountingDenoiser, VPDiscrete, prior_sample
from ..core.grids import grid_diffusers_dpm
from ..samplers import DEFAULT, default_timesteps, get_sampler, sample
from ..samplers.defaults import fixed_grids, search_default_grid
from . import _diffusers_side as dside
from . import bench_progress, register_bench
from ._mixtures import MIXTURES, reference_solution

FULL_NFES = (5, 6, 8, 10, 15, 20, 30, 50)
QUICK_NFES = (5, 10)
OURS = ("ddim", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "dpm_solver_2m", "dpm_solver_3m", "unipc_bh1_2",
        "unipc_bh1_3", "unipc_bh2_2", "unipc_bh2_3")
QUICK_OURS = ("ddim", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc_bh2_3")
ROWS = ("ours_default", "ours_best", "ours_best_fixed", "ours_logsnr", "diffusers_best", "diffusers_lu_lambdas",
        "diffusers_default")


def _error(x, ref) -> float:
    err = float((x.to(torch.float64) - ref).norm(dim=1).mean())
    return err if math.isfinite(err) else math.inf


def _run_ours(name, den, x_T, ts, target):
    info = get_sampler(name)
    counting = CountingDenoiser(den)
    x = sample(name, counting, x_T, ts)
    declared = info.nfe(ts) if hasattr(info, "nfe") else counting.calls
    if counting.calls != target or declared != target:
        raise AssertionError(f"{name} on a {len(ts) - 1}-step grid used {counting.calls} NFE "
                             f"(declared {declared}), not {target}")
    return x


def _pick(rows: dict, keep=lambda name: True) -> str | None:
    cands = [(e, n) for n, e in rows.items() if keep(n) and math.isfinite(e)]
    return min(cands)[1] if cands else None


def _problem(pname, schedule, cfg, dcache, log, bar):
    mixture = MIXTURES[pname]()
    den = mixture.denoiser(schedule)
    t0 = time.perf_counter()
    sets = {}
    for split, seed, n in (("tune", 0, cfg["n_tune"]), ("held_out", 1, cfg["n_held"])):
        x_T = prior_sample(schedule, (n, mixture.dim), torch.Generator().manual_seed(seed), dtype=torch.float64)
        sets[split] = (x_T, reference_solution(mixture, schedule, x_T))
    x_h, ref_h = sets["held_out"]
    loose = reference_solution(mixture, schedule, x_h, rtol=1e-8, atol=1e-10)
    ref_gap = _error(loose, ref_h)
    log(f"  reference: DOP853, gap to a 100x looser solve {ref_gap:.1e} ({time.perf_counter() - t0:.1f}s)")
    eps_model = dside.gmm_eps_model(den, schedule)
    space = dside.option_space(cfg["diffusers"])
    out, search = {}, {}
    for k in cfg["nfes"]:
        tk = time.perf_counter()
        res = search_default_grid(den, k)  # what default_timesteps(den, k) runs (and caches) for a GMM
        ts_default = default_timesteps(den, k)
        search[str(k)] = {"seconds": res.seconds, "evaluations": res.evaluations, "source": res.source,
                          "params": res.params, "tuning_fitness": res.fitness}
        grids = fixed_grids(schedule, k)
        ours_tune, ours_ts = {}, {}
        x_t, ref_t = sets["tune"]
        for name in cfg["ours"]:
            for g, ts in grids.items():
                ours_ts[f"{name}/{g}"] = (name, ts)
        ours_ts[f"{DEFAULT['sampler']}/searched (default)"] = (DEFAULT["sampler"], ts_default)
        for label, (name, ts) in ours_ts.items():
            ours_tune[label] = _error(_run_ours(name, den, x_t, ts, k), ref_t)
        theirs_tune, theirs_cfg = {}, {}
        for label, cls, conf in space:
            steps = dside.steps_for(cls, conf, schedule, k, dcache)
            if steps is None:
                continue
            theirs_cfg[label] = (cls, conf, steps)
            try:
                theirs_tune[label] = _error(dside.run_diffusers(cls, conf, steps, eps_model, x_t, schedule, k), ref_t)
            except (RuntimeError, ValueError, IndexError, ZeroDivisionError):  # e.g. a singular UniPC system
                theirs_tune[label] = math.inf
        default_label = dside.config_label(*dside.DEFAULT_CONFIG)
        picks = {
            "ours_default": ("ours", f"{DEFAULT['sampler']}/searched (default)"),
            "ours_best": ("ours", _pick(ours_tune)),
            "ours_best_fixed": ("ours", _pick(ours_tune, lambda n: not n.endswith("(default)"))),
            "ours_logsnr": ("ours", _pick(ours_tune, lambda n: n.endswith("/logsnr"))),
            "diffusers_best": ("diffusers", _pick(theirs_tune)),
            "diffusers_lu_lambdas": ("diffusers", _pick(theirs_tune, lambda n: "lu_lambdas" in n)),
            "diffusers_default": ("diffusers", default_label),
        }
        held_cache, row = {}, {}
        for key, (side, label) in picks.items():
            if label is None:
                row[key] = None
                continue
            if (side, label) not in held_cache:
                if side == "ours":
                    name, ts = ours_ts[label]
                    x = _run_ours(name, den, x_h, ts, k)
                else:
                    cls, conf, steps = theirs_cfg[label]
                    x = dside.run_diffusers(cls, conf, steps, eps_model, x_h, schedule, k)
                held_cache[(side, label)] = _error(x, ref_h)
            tune = ours_tune[label] if side == "ours" else theirs_tune[label]
            row[key] = {"name": label, "tune": tune, "held_out": held_cache[(side, label)]}
        row["candidates"] = {"ours": len(ours_tune), "diffusers": len(theirs_tune)}
        out[str(k)] = row
        log(f"  NFE {k}: default {row['ours_default']['held_out']:.3g} vs diffusers best "
            f"{row['diffusers_best']['held_out']:.3g} ({row['diffusers_best']['name']}) "
            f"({time.perf_counter() - tk:.1f}s)")
        bar.update(1)
    info = {"dim": mixture.dim, "components": mixture.num_components, "n_tune": cfg["n_tune"],
            "n_held_out": cfg["n_held"], "tune_seed": 0, "held_out_seed": 1,
            "metric": "mean |x - x_ref| at t = 0 over the set",
            "reference": {"solver": "scipy solve_ivp DOP853 on the exact PF-ODE (rtol 1e-10, atol 1e-12) to t_min, "
                                    "then x0 = D(x, t_min)", "gap_to_rtol_1e-8": ref_gap},
            "seconds": time.perf_counter() - t0}
    return out, search, info


def _overhead(cfg):
    """Sampler wall time / (NFE x forward time): our DPM-Solver++(2M) vs diffusers' DPMSolverMultistep loop."""
    from .. import zoo

    den = zoo.load("digits_unet")  # raises ZooError if the asset is missing: no silent skip
    schedule = den.schedule
    b, nfe, repeats = cfg["overhead_batch"], cfg["overhead_nfe"], cfg["overhead_repeats"]
    labels = torch.arange(b) % 10
    x_T = prior_sample(schedule, (b, 1, 8, 8), torch.Generator().manual_seed(7))  # float32, the net's dtype
    eps_model = dside.unet_eps_model(den, labels)
    ts = grid_diffusers_dpm(schedule, nfe)
    t_fixed = torch.full((b,), 500.0)

    def forward():
        den.net(x_T, t_fixed, class_labels=labels)

    def ours():
        counting = CountingDenoiser(den)
        sample("dpm_solver_pp_2m", counting, x_T, ts, cond={"class_labels": labels})
        assert counting.calls == nfe

    def theirs():
        sch = dside.make_scheduler("DPMSolverMultistepScheduler", {"solver_order": 2}, schedule)
        sch.set_timesteps(nfe)
        x, calls = x_T, 0
        for tau in sch.timesteps:
            x = sch.step(eps_model(sch.scale_model_input(x, tau), tau), tau, x).prev_sample
            calls += 1
        assert calls == nfe

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    forward(), ours(), theirs()  # warm-up
    fwd, t_ours, t_theirs = [], [], []
    for _ in range(repeats):
        fwd += [timed(forward) for _ in range(3)]
        t_ours.append(timed(ours))
        t_theirs.append(timed(theirs))
    f = statistics.median(fwd)
    return {"ours": statistics.median(t_ours) / (nfe * f), "diffusers": statistics.median(t_theirs) / (nfe * f),
            "forward_seconds": f, "batch": b, "nfe": nfe, "repeats": repeats,
            "ours_sampler": "dpm_solver_pp_2m on diffusers' DPM grid (linspace, final t = 0)",
            "diffusers_sampler": "DPMSolverMultistepScheduler(solver_order=2) manual loop incl. set_timesteps"}


def _config(quick: bool) -> dict:
    if quick:
        return {"nfes": QUICK_NFES, "problems": ("ring2d", "stiff16d"), "n_tune": 32, "n_held": 64,
                "ours": QUICK_OURS, "diffusers": "quick", "overhead_batch": 16, "overhead_nfe": 10,
                "overhead_repeats": 3}
    return {"nfes": FULL_NFES, "problems": tuple(MIXTURES), "n_tune": 64, "n_held": 256, "ours": OURS,
            "diffusers": "full", "overhead_batch": 100, "overhead_nfe": 20, "overhead_repeats": 7}


STYLE = {"ours_default": ("C0", "-", "o", 2.2), "ours_best_fixed": ("C0", ":", "s", 1.2),
         "ours_logsnr": ("C2", ":", "^", 1.2), "diffusers_best": ("C3", "-", "o", 2.2),
         "diffusers_lu_lambdas": ("C1", ":", "^", 1.2), "diffusers_default": ("C3", "--", "x", 1.2)}


def _figure(nfes, problems, overhead):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(problems) + 1, figsize=(4.4 * (len(problems) + 1), 4.0))
    for ax, (pname, rows) in zip(axes, problems.items()):
        for key, (color, ls, marker, lw) in STYLE.items():
            pts = [(k, rows[str(k)][key]["held_out"]) for k in nfes if rows[str(k)].get(key)]
            if pts:
                ax.plot(*zip(*pts), color=color, ls=ls, marker=marker, lw=lw, ms=4, label=key.replace("_", " "))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(nfes), [str(k) for k in nfes])
        ax.minorticks_off()
        ax.set_xlabel("NFE")
        ax.set_ylabel("held-out error to the DOP853 reference")
        ax.set_title(pname, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    ax = axes[-1]
    ax.bar(["ours\nDPM++2M", "diffusers\nDPMSolverMultistep"], [overhead["ours"], overhead["diffusers"]],
           color=["C0", "C3"])
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    ax.set_title(f"wall / (NFE x forward), digits UNet, batch {overhead['batch']}", fontsize=9)
    fig.tight_layout()
    return fig


def _run(quick: bool, log=lambda line: None):
    import diffusers

    cfg = _config(quick)
    schedule = VPDiscrete.named("linear", 1000)
    dcache: dict = {}
    problems, search, info = {}, {}, {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        bar = bench_progress(desc="solvers: problem x NFE", total=len(cfg["problems"]) * len(cfg["nfes"]))
        for pname in cfg["problems"]:
            log(f"{pname}:")
            problems[pname], search[pname], info[pname] = _problem(pname, schedule, cfg, dcache, log, bar)
        bar.close()
        log("overhead:")
        overhead = _overhead(cfg)
    worst = max((rows[k]["ours_default"]["held_out"] / rows[k]["diffusers_best"]["held_out"], p, k)
                for p, rows in problems.items() for k in rows)
    parts = []
    for p, rows in problems.items():
        cells = [f"{k}: {r['ours_default']['held_out']:.2g} vs {r['diffusers_best']['held_out']:.2g}"
                 for k, r in rows.items()]
        parts.append(f"{p} default vs diffusers best (held out) " + ", ".join(cells))
    summary = "; ".join(parts) + (f"; worst ratio default/diffusers-best {worst[0]:.2f} ({worst[1]}, NFE {worst[2]})"
                                  f"; overhead ours {overhead['ours']:.3f} vs diffusers {overhead['diffusers']:.3f}")
    result = {"nfe": list(cfg["nfes"]), "schedule": "VPDiscrete linear 1000",
              "diffusers_version": diffusers.__version__, "default": DEFAULT, "ours_samplers": list(cfg["ours"]),
              "diffusers_space": cfg["diffusers"],
              "problems": problems, "search": search, "problem_info": info, "overhead": overhead,
              "worst_default_over_diffusers_best": {"ratio": worst[0], "problem": worst[1], "nfe": worst[2]},
              "summary": summary}
    return result, _figure(cfg["nfes"], problems, overhead)


register_bench("solvers", "our default and best ODE solvers vs diffusers' best and default at equal NFE, tuned "
                          "on one x_T set, reported on another (exact-GMM error to a DOP853 reference)")(_run)
