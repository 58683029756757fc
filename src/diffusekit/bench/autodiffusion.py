"""AutoDiffusion (Li et al. 2023, arXiv 2309.10438) with the trajectory-error objective: searched time grids
vs every fixed grid at equal NFE, on held-out noise. ``diffusekit bench autodiffusion [--quick]``.

Exact Gaussian-mixture denoisers (``bench._mixtures``: ring2d and stiff16d; quick: ring2d) on the discrete
linear VP schedule (1000 steps), for DDIM and the default sampler (UniPC bh2, order 3; quick: DDIM). The
evolutionary search (``methods.autodiffusion.search_timesteps``, integer-timestep pool) minimises the
data-free trajectory error on a tuning set of x_T (seed 0): the distance at t = 0 to a fine solve of the
PF-ODE from the same x_T by the same sampler (400 steps). Every grid is then scored on a held-out set of
x_T (seed 1, disjoint, 4x larger) against scipy's DOP853 reference (``_mixtures.reference_solution``),
independent of both. Compared: the searched grid, every fixed grid (uniform, logsnr, quadratic, karras,
linspace, leading, trailing; all seeds of the search) and the default's searched grid family
(``samplers.defaults.search_grid``, same tuning set). With the exact denoiser all error is solver error.
All grids start at t_max (leading: diffusers' first timestep) and end at t = 0; NFE = steps for both.
"""

from __future__ import annotations

import time

import torch

from ..core import VPDiscrete, prior_sample
from ..methods.autodiffusion import EvolutionConfig, gmm_fitness, search_timesteps
from ..samplers import get_sampler
from ..samplers.defaults import TrajectoryFitness, fixed_grids, search_grid
from . import bench_progress, register_bench
from ._mixtures import MIXTURES, reference_solution


def _held_out_error(mixture, schedule, sampler, n):
    x_T = prior_sample(schedule, (n, mixture.dim), torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = reference_solution(mixture, schedule, x_T)
    fn = get_sampler(sampler).fn
    den = mixture.denoiser(schedule)

    def error(ts):
        with torch.no_grad():
            return float((fn(den, x_T.clone(), ts) - ref).norm(dim=1).mean())

    return error


def _run(quick: bool):
    t0 = time.perf_counter()
    schedule = VPDiscrete.named("linear")
    nfes = [5] if quick else [5, 10, 20]
    problems = ("ring2d",) if quick else ("ring2d", "stiff16d")
    solvers = ("ddim",) if quick else ("ddim", "unipc_bh2_3")
    n_tune, n_held = (32, 128) if quick else (64, 256)
    config = EvolutionConfig(population=10, parents=3, mutations=4, crossovers=3, generations=4) if quick else \
        EvolutionConfig(population=20, parents=5, mutations=8, crossovers=6, generations=10)
    table = {}
    bar = bench_progress(desc="autodiffusion: problem x solver x NFE", total=len(problems) * len(solvers) * len(nfes))
    for pname in problems:
        mixture = MIXTURES[pname]()
        for solver in solvers:
            tune = gmm_fitness(mixture, schedule, n=n_tune, sampler=solver, seed=0)  # trajectory error
            held = _held_out_error(mixture, schedule, solver, n_held)
            rows = {}
            for k in nfes:
                res = search_timesteps(tune, schedule, k, config=config)
                fam_fit = TrajectoryFitness(tune.denoiser, tune.x_T, sampler=solver, options={},
                                            reference=tune.reference)
                fam = search_grid(fam_fit, schedule, k)
                held_fixed = {name: held(ts) for name, ts in fixed_grids(schedule, k).items()}
                best_fixed = min(held_fixed, key=held_fixed.get)
                searched = held(res.ts)
                rows[str(k)] = {"held_out": {"searched": searched, "default_family_search": held(fam.ts),
                                             **held_fixed},
                                "best_fixed": best_fixed,
                                "searched_over_best_fixed": searched / held_fixed[best_fixed],
                                "search_fitness": res.fitness, "search_source": res.source,
                                "search_seed_fitness": res.seed_fitness, "search_seconds": res.seconds,
                                "evaluations": res.evaluations, "ts": res.ts.tolist(),
                                "default_family": {"fitness": fam.fitness, "seconds": fam.seconds,
                                                   "evaluations": fam.evaluations, "source": fam.source}}
                bar.update(1)
            table[f"{pname}/{solver}"] = {"metric": "mean |x - x_ref| at t = 0, held-out x_T (seed 1)",
                                          "n_tune": n_tune, "n_held_out": n_held, "nfe": rows}
    bar.close()
    parts = []
    for name, entry in table.items():
        cells = [f"NFE {k} {r['held_out']['searched']:.3g} vs {r['held_out'][r['best_fixed']]:.3g} "
                 f"({r['best_fixed']}; x{r['searched_over_best_fixed']:.2f})" for k, r in entry["nfe"].items()]
        cost = sum(r["search_seconds"] for r in entry["nfe"].values())
        parts.append(f"{name} held-out error searched vs best fixed grid: " + ", ".join(cells)
                     + f"; search {cost:.1f}s")
    return {"nfe": nfes, "schedule": "vp_discrete linear 1000", "grid_end": "t = 0", "objective": "trajectory",
            "tune_seed": 0, "held_out_seed": 1, "problems": table, "total_seconds": time.perf_counter() - t0,
            "summary": "; ".join(parts)}, _figure(table)


def _figure(table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(4.2 * len(table), 3.6), squeeze=False)
    for ax, (name, entry) in zip(axes[0], table.items()):
        ks = [int(k) for k in entry["nfe"]]
        grids = list(next(iter(entry["nfe"].values()))["held_out"])
        for grid in grids:
            main = grid in ("searched", "default_family_search")
            ax.plot(ks, [entry["nfe"][str(k)]["held_out"][grid] for k in ks], marker="o", label=grid,
                    lw=2.2 if main else 0.9, alpha=1.0 if main else 0.6)
        ax.set_yscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("NFE")
        ax.set_ylabel("held-out error to the DOP853 reference")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


register_bench("autodiffusion", "AutoDiffusion time-step search (trajectory objective) vs every fixed grid, "
                                "held-out noise")(_run)
