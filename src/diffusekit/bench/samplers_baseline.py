"""Baseline samplers on exact Gaussian-mixture denoisers: error vs NFE.

For the 8-mode ring (2-D) and the anisotropic 8-D mixture with the exact denoiser E[x0 | x_t] under a
discrete linear VP schedule, each baseline sampler (DDIM, Euler, DDPM ancestral, Euler–Maruyama) runs
at several NFE from the same x_T on a uniform-in-t grid ending at t = 0. Reported: for the deterministic
ODE samplers, the mean trajectory error against a 4096-step DDIM solve from the same x_T; for all
samplers, the sliced Wasserstein distance to fresh true samples (with the true-vs-true distance as the
noise floor). No training is involved, so every number is solver error.
"""

from __future__ import annotations

import torch

from ..core import VPDiscrete, grid_uniform, prior_sample
from ..data import aniso8d_mixture, ring8_mixture
from ..metrics import sliced_wasserstein
from ..samplers import SAMPLERS, sample, sample_ddim
from . import bench_progress, register_bench

SAMPLER_NAMES = ("ddim", "euler", "ddpm", "euler_maruyama")


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nfes = [5, 10] if quick else [5, 10, 20, 50, 100, 200]
    n = 200 if quick else 4000
    ref_steps = 128 if quick else 4096
    schedule = VPDiscrete.named("linear")
    problems = {"gmm_ring8": ring8_mixture(), "gmm_aniso8d": aniso8d_mixture()}
    table = {}
    fig, axes = plt.subplots(1, 2 * len(problems), figsize=(16, 3.6))
    for p_idx, (pname, mixture) in enumerate(problems.items()):
        den = mixture.denoiser(schedule)
        x_T = prior_sample(schedule, (n, mixture.dim), torch.Generator().manual_seed(0), dtype=torch.float64)
        truth = mixture.sample(n, torch.Generator().manual_seed(1))
        floor = sliced_wasserstein(mixture.sample(n, torch.Generator().manual_seed(2)), truth,
                                   generator=torch.Generator().manual_seed(3))
        reference = sample_ddim(den, x_T, grid_uniform(schedule, ref_steps, t_end=0.0))
        rows = {}
        for name in bench_progress(SAMPLER_NAMES, desc=f"samplers_baseline {pname}"):
            rows[name] = {}
            for nfe in nfes:
                opts = {"generator": torch.Generator().manual_seed(4)} if SAMPLERS[name].stochastic else {}
                x = sample(name, den, x_T, grid_uniform(schedule, nfe, t_end=0.0), **opts)
                entry = {"sliced_wasserstein": sliced_wasserstein(x, truth, generator=torch.Generator().manual_seed(3))}
                if not SAMPLERS[name].stochastic:
                    entry["trajectory_error"] = float((x - reference).norm(dim=1).mean())
                rows[name][str(nfe)] = entry
        table[pname] = {"samplers": rows, "sliced_wasserstein_true_vs_true": floor}
        ax_err, ax_sw = axes[2 * p_idx], axes[2 * p_idx + 1]
        for name in SAMPLER_NAMES:
            sw = [rows[name][str(k)]["sliced_wasserstein"] for k in nfes]
            ax_sw.plot(nfes, sw, marker="o", label=name)
            if not SAMPLERS[name].stochastic:
                ax_err.plot(nfes, [rows[name][str(k)]["trajectory_error"] for k in nfes], marker="o", label=name)
        ax_sw.axhline(floor, color="grey", ls="--", lw=1, label="true vs true")
        for ax, what in ((ax_err, "trajectory error vs 4096-step ODE"), (ax_sw, "sliced W2 to true samples")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(nfes, [str(k) for k in nfes])
            ax.minorticks_off()
            ax.set_xlabel("NFE")
            ax.set_title(f"{pname}: {what}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    k = str(nfes[-1])
    summary = "; ".join(
        f"{p}: DDIM traj. err {table[p]['samplers']['ddim'][k]['trajectory_error']:.2e} at NFE {k}, "
        f"SW {table[p]['samplers']['ddim'][k]['sliced_wasserstein']:.3f} "
        f"(floor {table[p]['sliced_wasserstein_true_vs_true']:.3f})"
        for p in table)
    return {"nfe": nfes, "num_samples": n, "schedule": schedule.config()["beta_schedule"], "grid": "uniform in t to 0",
            "problems": table, "summary": summary}, fig


register_bench("samplers_baseline", "DDIM/Euler/DDPM/Euler-Maruyama on exact GMM denoisers: error vs NFE")(_run)
