"""TSDiff (Kollovieh et al., NeurIPS 2023, arXiv 2307.11494) on statsmodels series and synthetic data.

Per dataset (windows of 96 context + 24 prediction steps, scaled per window by their context's mean and std;
train windows lie before the last 20 % of the series, test windows start their prediction window at the split and
every 24 steps after): one unconditional TSDiff model (``domains.timeseries.tsdiff``, residual dilated-conv
net, T = 100 linear) and one conditional diffusion model with the same backbone (context as conditioning
channels), trained for the same number of steps. Forecasts (raw units, GluonTS ``Evaluator`` metrics):

* ``seasonal_naive`` (GluonTS) - a point forecast; ``deepar`` (GluonTS torch DeepAR, 2 x 32 LSTM, 20 epochs x 50
  batches of 32, full run only);
* ``conditional`` - the task-specific conditional model (DDPM, 100 steps);
* ``unguided`` - unconditional samples with the context not used at all (scale 0; a floor);
* ``guided_mse`` / ``guided_quantile`` - TSDiff self-guidance, DDIM, MSE energy (s = 0.1) and quantile energy
  (s = 2; sample k uses q_k = k / (S + 1)); the scales come from a small sweep on the synthetic series
  (MSE diverges for s >= 0.5 there: its gradient grows with the error, the quantile gradient is bounded);
* ``refine_ml`` / ``refine_langevin`` - seasonal-naive forecasts refined under the diffusion energy
  (tau = 20, prior 1 on the context), CRPS after every iteration.

Metrics: ``crps`` (GluonTS mean weighted quantile loss, 0.1..0.9), ``nd``, ``nrmse``, ``coverage80`` (share of
targets inside the 10-90 % interval, ideal 0.8). TSTR: Ridge from context to prediction fitted on TSDiff samples,
real train windows or AR(p) bootstrap windows, scored by ND on real test windows (``tstr_*``). Missing values (full
run, synthetic): half the context missing (RM, BM-B, BM-E), quantile self-guidance vs a conditional model trained
per scenario (``missing``).

Budgets: ``--quick`` synthetic only, 600 steps at batch 32 (lr 2e-3), 8 samples, 6 test windows, DDIM 20 steps;
full: synthetic, co2 (monthly), sunspots, 1000 steps at batch 64 (lr 1e-3, the paper's), 16 samples, up to 12
test windows, DDIM 50 steps, 20 refinement iterations, 1000 TSTR samples (the paper: 10,000).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..domains.timeseries.baselines import deepar, seasonal_naive
from ..domains.timeseries.data import WindowScaler, forecast_windows, load_named_series, train_test_split
from ..domains.timeseries.evaluation import gluonts_metrics
from ..domains.timeseries.guidance import sample_self_guided, sample_unconditional
from ..domains.timeseries.missing import SCENARIOS, scenario_masks
from ..domains.timeseries.refine import refine
from ..domains.timeseries.tsdiff import (TSDiffConfig, forecast_mask, sample_conditional, train_conditional,
                                         train_tsdiff)
from ..domains.timeseries.tstr import ar_bootstrap_windows, linear_predictive_score
from . import bench_progress, register_bench

CONTEXT, HORIZON = 96, 24
GUIDANCE_SCALE = {"mse": 0.1, "quantile": 2.0}
QUICK = {"datasets": ("synthetic",), "steps": 600, "batch_size": 32, "lr": 2e-3,
         "hidden": 32, "blocks": 6, "samples": 8, "ddim_steps": 20,
         "refine_iterations": 8, "tstr_samples": 256, "max_test_windows": 6, "missing_datasets": (),
         "deepar_epochs": 0}
FULL = {"datasets": ("synthetic", "co2", "sunspots"), "steps": 1000, "batch_size": 64, "lr": 1e-3,
        "hidden": 32, "blocks": 6, "samples": 16,
        "ddim_steps": 50, "refine_iterations": 20, "tstr_samples": 1000, "max_test_windows": 12,
        "missing_datasets": ("synthetic",), "deepar_epochs": 20}


def _windows(name: str, max_test: int):
    series = load_named_series(name)
    split, _ = train_test_split(series)
    train, test = forecast_windows(series, split, CONTEXT, HORIZON)
    test = test[:max_test]
    sc_train = WindowScaler("standard", CONTEXT).fit(train)
    sc_test = WindowScaler("standard", CONTEXT).fit(test)
    return series, train, test, sc_train, sc_test


def _run_dataset(name: str, p: dict, seed: int) -> dict:
    series, train, test, sc_train, sc_test = _windows(name, p["max_test_windows"])
    x_train = torch.tensor(sc_train.transform(train), dtype=torch.float32)
    x_test = torch.tensor(sc_test.transform(test), dtype=torch.float32)
    truth = test[..., CONTEXT:]
    mask = forecast_mask(series.dim, CONTEXT, HORIZON)
    cfg = TSDiffConfig(hidden=p["hidden"], num_blocks=p["blocks"], steps=p["steps"], batch_size=p["batch_size"],
                       lr=p["lr"], seed=seed)
    t0 = time.perf_counter()
    den, _ = train_tsdiff(x_train, cfg)
    cden, _ = train_conditional(x_train, mask, cfg)
    out = {"train_seconds": time.perf_counter() - t0, "train_windows": int(train.shape[0]),
           "test_windows": int(test.shape[0]), "methods": {}}

    def score(scaled_samples: torch.Tensor) -> dict:
        return gluonts_metrics(sc_test.inverse(scaled_samples.numpy())[..., CONTEXT:], truth, freq="h")

    s = p["samples"]
    sn = seasonal_naive(test[..., :CONTEXT], HORIZON, series.season, freq="h")
    out["methods"]["seasonal_naive"] = gluonts_metrics(sn, truth, freq="h")
    if p["deepar_epochs"]:
        split, _ = train_test_split(series)
        smp = deepar(series.values[:split], test[..., :CONTEXT], HORIZON, context_length=CONTEXT,
                     epochs=p["deepar_epochs"], seed=seed)
        out["methods"]["deepar"] = gluonts_metrics(smp, truth, freq="h")
    g = torch.Generator().manual_seed(seed)
    out["methods"]["conditional"] = score(sample_conditional(cden, x_test, mask, s, generator=g))
    out["methods"]["unguided"] = score(sample_self_guided(den, x_test, mask, s, energy="mse", scale=0.0,
                                                          sampler="ddim", steps=p["ddim_steps"], generator=g))
    for energy, scale in GUIDANCE_SCALE.items():
        smp = sample_self_guided(den, x_test, mask, s, energy=energy, scale=scale, sampler="ddim",
                                 steps=p["ddim_steps"], generator=g)
        out["methods"][f"guided_{energy}"] = score(smp)
    # refinement of the seasonal-naive forecast (S copies, scaled space)
    init = np.concatenate([test[None, ..., :CONTEXT].repeat(s, 0), sn.repeat(s, 0)], -1)  # (S, M, D, L)
    init = torch.tensor(sc_test.transform(init), dtype=torch.float32).flatten(0, 1)
    y_obs = x_test.repeat(s, 1, 1)
    for method in ("ml", "langevin"):
        traj = refine(den, init, y_obs, mask, method=method, iterations=p["refine_iterations"], generator=g)
        curve = [score(y.reshape(s, *x_test.shape))["crps"] for y in traj]
        out["methods"][f"refine_{method}"] = {**score(traj[-1].reshape(s, *x_test.shape)), "crps_by_iteration": curve}
    # TSTR linear predictive score
    synth = sample_unconditional(den, p["tstr_samples"], tuple(x_train.shape[1:]), steps=p["ddim_steps"],
                                 generator=g).numpy()
    rng = np.random.default_rng(seed)
    ar = ar_bootstrap_windows(x_train.numpy(), p["tstr_samples"], order=min(2 * series.season, 24) or 1, rng=rng)
    x_test_np = x_test.numpy().astype(np.float64)
    for label, windows in (("real", x_train.numpy()), ("tsdiff", synth), ("ar_bootstrap", ar)):
        out[f"tstr_{label}"] = linear_predictive_score(windows, x_test_np, sc_test, truth, CONTEXT)
    if name in p["missing_datasets"]:
        out["missing"] = _run_missing(den, x_train, test, cfg, p, seed)
    return out


def _run_missing(den, x_train, test, cfg, p, seed) -> dict:
    """CRPS / coverage of quantile self-guidance vs a per-scenario conditional model, half the context missing."""
    out = {}
    truth = test[..., CONTEXT:]
    d = test.shape[1]
    for k, kind in enumerate(SCENARIOS):
        g = torch.Generator().manual_seed(100 + k)
        train_masks = scenario_masks(kind, x_train.shape[0], d, CONTEXT, HORIZON, generator=g)
        cden, _ = train_conditional(x_train, train_masks, cfg)
        masks = scenario_masks(kind, test.shape[0], d, CONTEXT, HORIZON, generator=g)
        scaler = WindowScaler("standard", CONTEXT).fit(test, observed=masks.numpy())
        y = torch.tensor(scaler.transform(test), dtype=torch.float32) * masks
        res = {}
        for label, smp in (
                ("conditional", sample_conditional(cden, y, masks, p["samples"], generator=g)),
                ("guided_quantile", sample_self_guided(den, y, masks, p["samples"], energy="quantile",
                                                       scale=GUIDANCE_SCALE["quantile"], sampler="ddim",
                                                       steps=p["ddim_steps"], generator=g))):
            res[label] = gluonts_metrics(scaler.inverse(smp.numpy())[..., CONTEXT:], truth, freq="h")
        out[kind] = res
    return out


def _run(quick: bool):
    torch.set_num_threads(1)
    p = QUICK if quick else FULL
    result = {"context": CONTEXT, "horizon": HORIZON, "settings": {k: v for k, v in p.items()},
              "guidance_scale": GUIDANCE_SCALE, "datasets": {}}
    for i, name in enumerate(bench_progress(p["datasets"], desc="tsdiff: datasets")):
        result["datasets"][name] = _run_dataset(name, p, seed=i)
    lines = []
    for name, r in result["datasets"].items():
        m = r["methods"]
        lines.append(f"{name}: CRPS snaive {m['seasonal_naive']['crps']:.3f}, cond {m['conditional']['crps']:.3f}, "
                     f"MSE-guided {m['guided_mse']['crps']:.3f} (cov80 {m['guided_mse']['coverage80']:.2f}), "
                     f"quantile-guided {m['guided_quantile']['crps']:.3f} "
                     f"(cov80 {m['guided_quantile']['coverage80']:.2f}), "
                     f"refine-ML {m['refine_ml']['crps']:.3f}; TSTR ND real {r['tstr_real']['nd']:.3f} / "
                     f"tsdiff {r['tstr_tsdiff']['nd']:.3f} / AR {r['tstr_ar_bootstrap']['nd']:.3f}")
    result["summary"] = "\n".join(lines)
    return result, _figure(result)


def _figure(result: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["datasets"])
    methods = ["seasonal_naive", "conditional", "unguided", "guided_mse", "guided_quantile", "refine_ml",
               "refine_langevin"]
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.2))
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        crps = [result["datasets"][n]["methods"][method]["crps"] for n in names]
        axes[0].bar(np.arange(len(names)) + k * width, crps, width, label=method)
    axes[0].set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    axes[0].set_yscale("log")
    axes[0].set_title("CRPS (mean wQL, lower is better)", fontsize=9)
    axes[0].legend(fontsize=7)
    for k, method in enumerate(["conditional", "guided_mse", "guided_quantile", "refine_langevin"]):
        cov = [result["datasets"][n]["methods"][method]["coverage80"] for n in names]
        axes[1].bar(np.arange(len(names)) + k * 0.2, cov, 0.2, label=method)
    axes[1].axhline(0.8, color="k", ls="--", lw=1)
    axes[1].set_xticks(np.arange(len(names)) + 0.3, names)
    axes[1].set_title("80% interval coverage (ideal 0.8)", fontsize=9)
    axes[1].legend(fontsize=7)
    for n in names:
        for method, ls in (("refine_ml", "-"), ("refine_langevin", "--")):
            curve = np.asarray(result["datasets"][n]["methods"][method]["crps_by_iteration"])
            axes[2].plot(curve / curve[0], ls, label=f"{n} {method}")
    axes[2].set_xlabel("refinement iteration")
    axes[2].set_title("CRPS of refined seasonal-naive forecasts / CRPS of seasonal naive", fontsize=9)
    axes[2].legend(fontsize=7)
    first = names[0]
    for method in ("seasonal_naive", "conditional", "guided_mse", "guided_quantile", "deepar"):
        row = result["datasets"][first]["methods"].get(method)
        if row is not None and "crps_by_horizon" in row:
            axes[3].plot(np.arange(1, len(row["crps_by_horizon"]) + 1), row["crps_by_horizon"], marker=".",
                         label=method)
    axes[3].set(xlabel="lead time (steps)", ylabel="CRPS at that step")
    axes[3].set_title(f"CRPS by horizon ({first})", fontsize=9)
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    return fig


register_bench("tsdiff", "TSDiff self-guidance (MSE vs quantile), conditional model, refinement and TSTR on "
               "statsmodels + synthetic series")(_run)
