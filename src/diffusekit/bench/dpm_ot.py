"""DPM-OT (Li et al., ICCV 2023, arXiv 2307.11308) at NFE 5 and 10 against DDIM, DPM-Solver++(2M) and the project
default sampler at the same NFE, on an exact 2-D Gaussian mixture and on the zoo's digits UNet.

Targets: N reverse trajectories of DDIM on a 100-step grid (trailing, on the models' discrete linear VP schedule;
``FULL_STEPS``), the states kept k = 5 and 10 steps before the end (one run serves both k). One semi-discrete
OT map per k from white noise N(0, I_D) to the N states (``SemiDiscreteOT.fit``, averaged Adam schedule); a
sample is the state of its noise's cell finished by k DDPM ancestral steps on the tail of the 100-step grid
(NFE k). Variants: ``dpm_ot`` (topk 1, the official default), ``dpm_ot_top2`` (topk 2, angle threshold 0.7:
noise near the singular set redrawn) and ``random_state`` (the ablation the method's design begs: a stored
state drawn uniformly at random instead of through the OT map, same finish). Baselines from x_T ~ N(0, I):
``ddim`` and ``dpm_solver_pp_2m`` on the trailing grid of k steps, ``default`` (``samplers.DEFAULT``: its sampler
on ``default_timesteps``).

Metrics. ring8 (8 modes of std 0.15 on the circle of radius 2, exact posterior-mean denoiser, so nothing hides
solver error): ``off_mode`` = fraction of samples farther than 3 std from every mode mean (true data: 1.1 %),
the 2-D mode-mixture rate, and sliced W2 to fresh data samples. Digits (``zoo`` ``digits_unet``, trained with
label dropout 0.1, used unconditionally through its null class): ``mode_mixture`` = fraction of samples whose
``digits_classifier`` max class probability is below 0.5, and ``digits_fd`` to the test split. ``build`` holds
the cost of the expressway: trajectories, their network calls and seconds, the OT fit's seconds and its
held-out cell-mass error mean |N mu(W_i) - 1|.
"""

from __future__ import annotations

import time

import torch

from ..core import VPDiscrete
from ..core.noise import prior_sample
from ..data import load_dataset, ring8_mixture
from ..data.toys import RING8_STD
from ..methods.dpm_ot import SemiDiscreteOT, sample_dpm_ot, trajectory_states
from ..metrics import digits_fd, sliced_wasserstein
from ..samplers import DEFAULT, default_timesteps, get_sampler
from ..zoo.recipes import ddim_grid
from . import bench_progress, register_bench

NFES = (5, 10)
FULL_STEPS = 100
METHODS = ("dpm_ot", "dpm_ot_top2", "random_state", "ddim", "dpm_solver_pp_2m", "default")
SIZES = {  # trajectories N, samples per method, OT fit options, full-trajectory grid steps
    "ring8": {"quick": (200, 2000, {"iterations": 300}, 50),
              # 2-D clusters of 60+ states need many small steps: 600 iterations at lr_decay 30 left 26 % of cells
              # empty at N = 1000; 2,000 at lr_decay 100 bring N = 500 to a mean cell-mass error of 0.08
              "full": (500, 5000, {"iterations": 2000, "lr_decay": 100.0, "samples_per_iteration": 2500}, FULL_STEPS)},
    "digits": {"quick": (100, 200, {"iterations": 150}, 50), "full": (1000, 1000, {"iterations": 400}, FULL_STEPS)},
}


def _baseline(name: str, den, x_T: torch.Tensor, k: int, cond: dict) -> tuple[torch.Tensor, int]:
    if name == "default":
        info, ts = get_sampler(DEFAULT["sampler"]), default_timesteps(den, k)
        opts = dict(DEFAULT["options"])
    else:
        info, ts, opts = get_sampler(name), ddim_grid(den.schedule, k)[1], {}
    return info.fn(den, x_T.clone(), ts, cond=cond, **opts), info.nfe(ts)


def _run_problem(den, shape, cond_of, quick: bool, sizes, metric, seed: int) -> dict:
    """Build the expressway once (both k), then every method at every NFE; ``metric(x) -> dict``."""
    n_traj, n, fit_options, full = sizes
    _, ts = ddim_grid(den.schedule, full)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        states = trajectory_states(den, n_traj, shape, ts, steps_after=list(NFES), cond=cond_of(n_traj), generator=g)
    build = {"trajectories": n_traj, "trajectory_sampler": f"ddim, {full} trailing steps",
             "trajectory_seconds": states[NFES[0]].seconds,
             "trajectory_nfe_each": states[NFES[0]].nfe, "trajectory_nfe_total": states[NFES[0]].nfe * n_traj}
    table = {}
    held_out = torch.randn(50 * n_traj, int(torch.tensor(shape).prod()), generator=torch.Generator().manual_seed(99))
    for k in bench_progress(NFES, desc="dpm_ot: NFE"):
        st = states[k]
        ot = SemiDiscreteOT(st.states)
        before = ot.cell_masses(held_out) * n_traj
        fit = ot.fit(**fit_options, generator=torch.Generator().manual_seed(seed + k))
        after = ot.cell_masses(held_out) * n_traj
        build[f"ot_k{k}"] = {"t_k": float(st.ts_after[0]), "fit_seconds": fit["seconds"], **fit_options,
                             "samples_per_iteration": fit["samples_per_iteration"],
                             "mass_error_before": float((before - 1).abs().mean()),
                             "mass_error_after": float((after - 1).abs().mean()),
                             "empty_cells_after": int((after == 0).sum())}
        cond = cond_of(n)
        rows = {}
        x_T = prior_sample(den.schedule, (n, *shape), torch.Generator().manual_seed(seed + 100 + k))
        for method in METHODS:
            gen = torch.Generator().manual_seed(seed + 200 + k)
            t0 = time.perf_counter()
            extra = {}
            with torch.no_grad():
                if method.startswith("dpm_ot"):
                    x, info = sample_dpm_ot(den, ot, n, ts_after=st.ts_after, cond=cond, generator=gen,
                                            topk=2 if method == "dpm_ot_top2" else 1, return_info=True)
                    nfe, extra = info["nfe"], {"redrawn_fraction": info["redraws"] / n,
                                               "distinct_states": int(info["indices"].unique().numel())}
                elif method == "random_state":
                    idx = torch.randint(n_traj, (n,), generator=gen)
                    x = get_sampler("ddpm").fn(den, st.states[idx].clone(), st.ts_after, cond=cond, generator=gen)
                    nfe = len(st.ts_after) - 1
                else:
                    x, nfe = _baseline(method, den, x_T, k, cond)
            rows[method] = {"nfe": nfe, "seconds": time.perf_counter() - t0, **metric(x), **extra}
        table[str(k)] = rows
    return {"build": build, "table": table, "samples": n}


def _ring(quick: bool) -> tuple[dict, torch.Tensor]:
    mix = ring8_mixture()
    den = mix.denoiser(VPDiscrete.named("linear", 1000))
    n = SIZES["ring8"]["quick" if quick else "full"][1]
    truth = mix.sample(n, generator=torch.Generator().manual_seed(7))

    def metric(x):
        dist = torch.cdist(x.double(), mix.means).min(1).values
        return {"off_mode": float((dist > 3 * RING8_STD).double().mean()),
                "sliced_w2": sliced_wasserstein(x.double(), truth, generator=torch.Generator().manual_seed(3))}

    result = _run_problem(den, (2,), lambda n: {}, quick, SIZES["ring8"]["quick" if quick else "full"], metric, 0)
    many = mix.sample(100_000, generator=torch.Generator().manual_seed(8))
    true_off = float((torch.cdist(many, mix.means).min(1).values > 3 * RING8_STD).double().mean())
    result["true_off_mode"] = true_off
    # a scatter of the NFE-5 samples for the figure
    st = trajectory_states(den, 200, (2,), ddim_grid(den.schedule, 50)[1], steps_after=5,
                           generator=torch.Generator().manual_seed(1))
    ot = SemiDiscreteOT(st.states)
    ot.fit(iterations=200, generator=torch.Generator().manual_seed(2))
    shown = {"dpm_ot": sample_dpm_ot(den, ot, 1000, ts_after=st.ts_after, generator=torch.Generator().manual_seed(4)),
             "ddim": _baseline("ddim", den, torch.randn(1000, 2, generator=torch.Generator().manual_seed(4)).double(),
                               5, {})[0]}
    return result, shown


def _digits(quick: bool) -> dict:
    from .. import zoo

    den = zoo.load("digits_unet")
    clf = zoo.load("digits_classifier")
    test = load_dataset("digits", "test").x

    def metric(x):
        x = x.clamp(-1, 1)
        prob = clf(x).softmax(1).max(1).values
        return {"mode_mixture": float((prob < 0.5).double().mean()), "digits_fd": digits_fd(x, test, classifier=clf)}

    def cond_of(n):  # unconditional through the null class (the model was trained with label dropout 0.1)
        return {"class_labels": torch.full((n,), den.null_class)}

    return _run_problem(den, (1, 8, 8), cond_of, quick, SIZES["digits"]["quick" if quick else "full"], metric, 10)


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ring, shown = _ring(quick)
    digits = _digits(quick)
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    for ax, (name, pts) in zip(axes[:2], shown.items()):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_title(f"ring8, {name} at NFE 5: off-mode {ring['table']['5'][name]['off_mode']:.3f}", fontsize=9)
        ax.set_aspect("equal")
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
    width = 0.8 / len(METHODS)
    for ax, (problem, key, title) in zip(axes[2:], ((ring, "off_mode", "ring8: off-mode fraction"),
                                                     (digits, "digits_fd", "digits: digits-FD (test split)"))):
        for j, method in enumerate(METHODS):
            vals = [problem["table"][str(k)][method][key] for k in NFES]
            ax.bar([i + j * width for i in range(len(NFES))], vals, width, label=method)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(NFES))], [f"NFE {k}" for k in NFES])
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        if key == "off_mode":
            ax.axhline(ring["true_off_mode"], color="grey", ls=":", label="true data")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()

    def line(problem, key):
        return "; ".join(f"NFE {k}: " + ", ".join(f"{m} {problem['table'][str(k)][m][key]:.3g}" for m in METHODS)
                         for k in NFES)

    b = digits["build"]
    summary = (f"ring8 off-mode (true {ring['true_off_mode']:.3f}) {line(ring, 'off_mode')} | digits FD "
               f"{line(digits, 'digits_fd')} | digits mode mixture {line(digits, 'mode_mixture')} | digits build: "
               f"{b['trajectories']} trajectories x {b['trajectory_nfe_each']} NFE in {b['trajectory_seconds']:.0f} s, "
               f"OT fit " + ", ".join(f"k={k} {b[f'ot_k{k}']['fit_seconds']:.0f} s" for k in NFES))
    return {"nfes": list(NFES), "methods": list(METHODS), "ring8": ring, "digits": digits, "summary": summary}, fig


register_bench("dpm_ot", "DPM-OT (semi-discrete OT map to stored trajectory states + k steps) vs DDIM / "
                         "DPM-Solver++ / default at NFE 5 and 10, ring8 and digits")(_run)
