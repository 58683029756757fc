"""AutoDiffusion (Li et al. 2023, arXiv 2309.10438): searched time grids vs standard grids at equal NFE.

(a) Exact GMM denoisers (8-mode ring, 8-D anisotropic mixture) under the discrete linear VP schedule
(1000 steps), for DDIM and DPM-Solver++(2M): the evolutionary search minimises the sliced Wasserstein
distance of samples from a fixed x_T to fixed true samples; every grid is then scored on *held-out* x_T
and true samples (another seed, more samples). With the exact denoiser all error is solver error.
(b) The zoo digits model (class-conditional eps UNet, CFG 2, DDIM), if built: the search minimises
digits-FD against the train split; held-out digits-FD uses other seeds against the test split.
All grids start at t_max and end at t = 0 (clean data); NFE = steps for both solvers.
"""

from __future__ import annotations

import time

import torch

from ..core import VPDiscrete, make_grid
from ..data import aniso8d_mixture, ring8_mixture
from ..methods.autodiffusion import SEED_GRIDS, EvolutionConfig, digits_fitness, gmm_fitness, search_timesteps
from ..metrics import sliced_wasserstein
from . import register_bench

GRID_TYPES = ("searched", *SEED_GRIDS)


def _compare(fitness_search, fitness_held_out, schedule, nfe, config):
    res = search_timesteps(fitness_search, schedule, nfe, config=config)
    held = {"searched": fitness_held_out(res.ts)}
    for name in SEED_GRIDS:
        held[name] = fitness_held_out(make_grid(name, schedule, nfe, t_end=0.0))
    return {"held_out": held, "search_fitness": res.fitness, "search_seed_fitness": res.seed_fitness,
            "search_seconds": res.seconds, "evaluations": res.evaluations, "ts": res.ts.tolist()}


def _gmm_part(quick, schedule, nfes):
    solvers = ("ddim",) if quick else ("ddim", "dpm_solver_pp_2m")
    n_search, n_eval = (300, 1000) if quick else (1000, 4000)
    config = EvolutionConfig(population=10, parents=3, mutations=4, crossovers=3, generations=3) if quick else \
        EvolutionConfig(population=20, parents=5, mutations=8, crossovers=6, generations=10)
    out = {}
    for pname, mixture in (("gmm_ring8", ring8_mixture()), ("gmm_aniso8d", aniso8d_mixture())):
        floor = sliced_wasserstein(mixture.sample(n_eval, torch.Generator().manual_seed(7)),
                                   mixture.sample(n_eval, torch.Generator().manual_seed(101)),
                                   generator=torch.Generator().manual_seed(102))
        for solver in solvers:
            search = gmm_fitness(mixture, schedule, n=n_search, sampler=solver, seed=0)
            held_out = gmm_fitness(mixture, schedule, n=n_eval, sampler=solver, seed=100, n_projections=256)
            rows = {str(k): _compare(search, held_out, schedule, k, config) for k in nfes}
            out[f"{pname}/{solver}"] = {"metric": "sliced_wasserstein", "floor_true_vs_true": floor, "nfe": rows}
    return out


def _digits_part(quick, nfes):
    from ..data import load_dataset
    from ..zoo import ZooError, load

    try:
        model, classifier = load("digits_unet"), load("digits_classifier")
    except ZooError as err:
        return None, f"digits skipped: {err}"
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    nfes = nfes[:1] if quick else nfes
    config = EvolutionConfig(population=6, parents=2, mutations=2, crossovers=2, generations=1) if quick else \
        EvolutionConfig(population=10, parents=4, mutations=4, crossovers=3, generations=4)
    search = digits_fitness(model, classifier, train.x, n_per_class=5 if quick else 15, seed=0)
    held_out = digits_fitness(model, classifier, test.x, n_per_class=10 if quick else 36, seed=100)
    rows = {str(k): _compare(search, held_out, model.schedule, k, config) for k in nfes}
    return {"digits/ddim": {"metric": "digits_fd", "floor_true_vs_true": None, "nfe": rows}}, None


def _figure(table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(3.6 * len(table), 3.4), squeeze=False)
    for ax, (name, entry) in zip(axes[0], table.items()):
        ks = [int(k) for k in entry["nfe"]]
        for grid in GRID_TYPES:
            ax.plot(ks, [entry["nfe"][str(k)]["held_out"][grid] for k in ks], marker="o", label=grid,
                    lw=2.2 if grid == "searched" else 1.2)
        if entry["floor_true_vs_true"] is not None:
            ax.axhline(entry["floor_true_vs_true"], color="grey", ls="--", lw=1, label="true vs true")
        ax.set_yscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("NFE")
        ax.set_ylabel(f"held-out {entry['metric']}")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _run(quick: bool):
    t0 = time.perf_counter()
    schedule = VPDiscrete.named("linear")
    nfes = [4] if quick else [4, 5, 6]
    table = _gmm_part(quick, schedule, nfes)
    digits, note = _digits_part(quick, nfes)
    table.update(digits or {})
    parts = []
    for name, entry in table.items():
        cells = []
        for k, row in entry["nfe"].items():
            best = min(SEED_GRIDS, key=lambda g: row["held_out"][g])
            cells.append(f"NFE {k} {row['held_out']['searched']:.3f} vs {row['held_out'][best]:.3f} ({best})")
        cost = sum(row["search_seconds"] for row in entry["nfe"].values())
        parts.append(f"{name} held-out {entry['metric']} searched vs best standard grid: " + ", ".join(cells)
                     + f"; search {cost:.1f}s")
    if note:
        parts.append(note)
    summary = "; ".join(parts)
    return {"nfe": nfes, "schedule": "vp_discrete linear 1000", "grid_end": "t = 0", "grid_types": list(GRID_TYPES),
            "problems": table, "digits_note": note, "total_seconds": time.perf_counter() - t0,
            "summary": summary}, _figure(table)


register_bench("autodiffusion", "AutoDiffusion evolutionary time-step search vs uniform/logSNR/Karras grids")(_run)
