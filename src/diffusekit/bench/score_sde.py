"""Score-based sampling at equal NFE: predictor-corrector (Song et al. 2021, arXiv 2011.13456) vs the predictor alone
vs NCSN's annealed Langevin (Song & Ermon 2019/2020, arXiv 1907.05600 / 2006.09011) vs ODE solvers.

Exact mixtures (every error is sampler error, the denoiser is the exact posterior mean): ``tri2d`` (three separated
full-covariance components, the tests' mixture), ``ring2d`` (``data.ring8_mixture``) and, in the full run, ``aniso8d``
(``data.aniso8d_mixture``), each under the VE SDE (``VESchedule(0.01, 50)``), the VP SDE (``VPLinear``) and the sub-VP
SDE (``methods.score_sde.SubVPSchedule``), on the logSNR grid ending at t = 0. Samplers at each NFE budget:

* ``reverse_diffusion``: the reverse-diffusion predictor alone (``pc`` with n_corrector = 0), NFE steps;
* ``pc``: reverse diffusion + 1 Langevin corrector step (SNR rule, r = 0.16), NFE/2 steps;
* ``euler_maruyama`` and ``pc_em`` (Euler-Maruyama + 1 Langevin step), likewise;
* ``ncsn_langevin``: annealed Langevin, T = 5 steps per level, (NFE - 1)/5 levels + NCSNv2's denoising step;
* ``dpm_solver_pp_2m`` and ``heun``: probability-flow ODE solvers (Lu et al. 2022; Karras et al. 2022).

Metrics on N samples from fixed seeds: the NLL gap, mean -log p(x) of the samples under the true mixture minus that of
N true samples (0 for a perfect sampler, > 0 when samples stray into low density), and the sliced Wasserstein distance
to N true samples (its noise floor, between two true sample sets, is reported). Digits: the zoo ``digits_unet``
(class-conditional, discrete VP, eps) on the trailing grid, FD of the zoo classifier's features against the test split
(``metrics.digits_fd``; the train split's FD is the floor). Every sampler's NFE is counted, not assumed. Noise comes
from one seeded generator per run (per-sample generators cost one draw call per sample and step).
"""

from __future__ import annotations

import torch

from ..core import CountingDenoiser, GaussianMixture, VESchedule, VPLinear, make_grid, prior_sample
from ..data import aniso8d_mixture, ring8_mixture
from ..methods.score_sde import SubVPSchedule
from ..metrics import gmm_nll, sliced_wasserstein
from ..samplers import sample
from . import bench_progress, register_bench

# label -> (registered sampler, options, steps for an NFE budget)
SAMPLERS_AT_NFE = {
    "reverse_diffusion": ("pc", {"n_corrector": 0}, lambda nfe: nfe),
    "pc": ("pc", {}, lambda nfe: nfe // 2),
    "euler_maruyama": ("euler_maruyama", {}, lambda nfe: nfe),
    "pc_em": ("pc", {"predictor": "euler_maruyama"}, lambda nfe: nfe // 2),
    "ncsn_langevin": ("ncsn_langevin", {"n_steps_each": 5}, lambda nfe: max(1, (nfe - 1) // 5)),
    "dpm_solver_pp_2m": ("dpm_solver_pp_2m", {}, lambda nfe: nfe),
    "heun": ("heun", {}, lambda nfe: (nfe + 1) // 2),
}
STOCHASTIC = ("reverse_diffusion", "pc", "euler_maruyama", "pc_em", "ncsn_langevin")
DIGITS_SAMPLERS = ("reverse_diffusion", "pc", "euler_maruyama", "dpm_solver_pp_2m")


def tri2d_mixture() -> GaussianMixture:
    """Three separated full-covariance 2-D components, weights 0.5/0.3/0.2 (the tests' mixture)."""
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]], dtype=torch.float64)
    covs = torch.stack([0.1 * torch.eye(2), torch.tensor([[0.3, 0.12], [0.12, 0.2]]), 0.05 * torch.eye(2)]).double()
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


SCHEDULES = {"ve": lambda: VESchedule(0.01, 50.0), "vp": VPLinear, "sub_vp": SubVPSchedule}


def _run_sampler(label: str, den, x, ts, generator, cond=None):
    name, opts, _ = SAMPLERS_AT_NFE[label]
    counting = CountingDenoiser(den)
    extra = {"generator": generator} if label in STOCHASTIC else {}
    with torch.no_grad():
        out = sample(name, counting, x, ts, cond=cond, **extra, **opts)
    return out, counting.calls


def _mixture_rows(mixture: GaussianMixture, n: int, budgets, labels, schedules) -> tuple[dict, dict]:
    truth = mixture.sample(n, torch.Generator().manual_seed(9))
    other = mixture.sample(n, torch.Generator().manual_seed(19))
    nll_true = gmm_nll(truth, mixture)
    floor = {"nll_gap": gmm_nll(other, mixture) - nll_true,
             "sliced_w": sliced_wasserstein(other, truth, generator=torch.Generator().manual_seed(0))}
    table = {}
    for sname in schedules:
        s = SCHEDULES[sname]()
        den = mixture.denoiser(s)
        x = prior_sample(s, (n, mixture.dim), torch.Generator().manual_seed(1), dtype=torch.float64)
        table[sname] = {}
        for label in labels:
            table[sname][label] = {}
            for nfe in budgets:
                steps = SAMPLERS_AT_NFE[label][2](nfe)
                out, calls = _run_sampler(label, den, x, make_grid("logsnr", s, steps, t_end=0.0),
                                          torch.Generator().manual_seed(3))
                table[sname][label][str(nfe)] = {
                    "nfe": calls, "steps": steps, "nll_gap": gmm_nll(out, mixture) - nll_true,
                    "sliced_w": sliced_wasserstein(out, truth, generator=torch.Generator().manual_seed(0))}
    return table, floor


def _digits_rows(n: int, budgets) -> dict:
    from .. import zoo
    from ..data import load_dataset
    from ..metrics import digits_fd

    den, clf = zoo.load("digits_unet"), zoo.load("digits_classifier")
    test = load_dataset("digits", "test").x
    labels = torch.arange(n) % 10
    x = prior_sample(den.schedule, (n, 1, 8, 8), torch.Generator().manual_seed(1))
    rows = {"floor_train_split": digits_fd(load_dataset("digits", "train").x[:n], test, classifier=clf)}
    for label in bench_progress(DIGITS_SAMPLERS, desc="score_sde: digits"):
        rows[label] = {}
        for nfe in budgets:
            steps = SAMPLERS_AT_NFE[label][2](nfe)
            out, calls = _run_sampler(label, den, x, make_grid("trailing", den.schedule, steps),
                                      torch.Generator().manual_seed(5), cond={"class_labels": labels})
            rows[label][str(nfe)] = {"nfe": calls, "steps": steps,
                                     "digits_fd": digits_fd(out.clamp(-1, 1), test, classifier=clf)}
    return rows


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    mixtures = {"tri2d": tri2d_mixture, "ring2d": ring8_mixture}
    if not quick:
        mixtures["aniso8d"] = aniso8d_mixture
    n = 3000 if quick else 10000
    budgets = [20, 100] if quick else [20, 50, 100, 200, 400]
    labels = list(SAMPLERS_AT_NFE) if not quick else ["reverse_diffusion", "pc", "ncsn_langevin", "dpm_solver_pp_2m"]
    schedules = ["ve"] if quick else list(SCHEDULES)
    results, floors = {}, {}
    for name, make in bench_progress(mixtures.items(), desc="score_sde: mixtures", total=len(mixtures)):
        results[name], floors[name] = _mixture_rows(make(), n if name != "aniso8d" else n // 2, budgets, labels,
                                                    schedules)
    digit_budgets = [10] if quick else [20, 60]
    digits = _digits_rows(40 if quick else 500, digit_budgets)

    panels = [(m, "ve") for m in mixtures] + ([] if quick else [("tri2d", "vp"), ("tri2d", "sub_vp")])
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4 * (len(panels) + 1), 3.6))
    for ax, (m, sname) in zip(axes, panels):
        for label in labels:
            ys = [max(results[m][sname][label][str(b)]["nll_gap"], 1e-3) for b in budgets]
            ax.plot(budgets, ys, "o-", label=label, lw=2.5 if label == "pc" else 1.2)
        ax.axhline(max(abs(floors[m]["nll_gap"]), 1e-3), color="grey", ls=":", label="true vs true")
        ax.set(xscale="log", yscale="log", xlabel="NFE", title=f"{m}, {sname}: NLL gap (clipped at 1e-3)")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for label in DIGITS_SAMPLERS:
        ax.plot(digit_budgets, [digits[label][str(b)]["digits_fd"] for b in digit_budgets], "o-", label=label)
    ax.axhline(digits["floor_train_split"], color="grey", ls=":", label="train split (same count)")
    ax.set(xlabel="NFE", ylabel="digits FD", title="digits_unet (VP): FD vs NFE")
    ax.legend(fontsize=7)
    fig.tight_layout()

    def gap(m, s, label, b):
        return results[m][s][label][str(b)]["nll_gap"]

    summary = "; ".join(
        f"{m} VE NLL gap at {b} NFE: P {gap(m, 've', 'reverse_diffusion', b):.3f}, PC {gap(m, 've', 'pc', b):.3f}, "
        f"NCSN {gap(m, 've', 'ncsn_langevin', b):.3f}, DPM++2M {gap(m, 've', 'dpm_solver_pp_2m', b):.3f}"
        for m in mixtures for b in (budgets[0], 100))
    b = digit_budgets[-1]
    summary += "; digits FD at %d NFE: " % b + ", ".join(f"{label} {digits[label][str(b)]['digits_fd']:.1f}"
                                                       for label in DIGITS_SAMPLERS)
    return {"num_samples": n, "budgets": budgets, "mixtures": results, "floors": floors, "digits": digits,
            "summary": summary}, fig


register_bench("score_sde", "predictor-corrector vs predictor-only vs NCSN annealed Langevin vs ODE solvers at equal "
                            "NFE (VE / VP / sub-VP on exact mixtures; digits FD)")(_run)
