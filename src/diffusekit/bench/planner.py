"""Diffuser (Janner et al., ICML 2022, arXiv 2205.09991) vs Trajectory Diffuser (Huang et al., ECCV 2024,
arXiv 2407.16142) vs autoregressive-only planning in a 2-D point-mass U-maze, from return-labelled offline data.

Data: ``generate_maze_dataset`` (scripted waypoint experts with action noise 0.1 / 0.6 / 1.2 and a wanderer heading
to random cells; random start cells; 64-step episodes, sparse goal reward). Each planner is trained on the same data
with the same number of Adam steps per part (the autoregressive-only planner is Trajectory Diffuser's own generator
and inverse dynamics without refinement or critic, the paper's ablation) and evaluated on the same seeded episodes
from the start cell (replanning every step). Reported per planner: mean return and success rate; network
evaluations per decision (denoiser, value-gradient, GRU-cell, inverse-dynamics and critic calls; a
machine-independent cost) and FLOPs per decision (torch.utils.flop_counter; backward passes of value guidance
included); wall-clock seconds per decision as the median over the same states with the planners timed alternately
(side by side, one process).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..domains.control.maze_data import generate_maze_dataset
from ..domains.control.maze_env import PointMazeEnv
from ..domains.control.planner_api import PLANNER_METHODS, evaluate_planner, load_planner, train_planner
from . import bench_progress, register_bench

LABELS = {"diffuser": "Diffuser", "trajectory_diffuser": "Trajectory Diffuser", "autoregressive": "autoregressive"}


def decision_flops(model, observation) -> int:
    """Forward + backward FLOPs of one ``model.plan`` call (counted matmuls/convolutions)."""
    with FlopCounterMode(display=False) as counter:
        model.plan(observation, torch.Generator().manual_seed(0))
    return int(counter.get_total_flops())


def side_by_side(models: dict, states: np.ndarray) -> dict:
    """Per planner, the median seconds per decision (the planners timed one after another at every state) and the
    mean first-step jump |x_1 - x_0| of the chosen plan in cells (the env moves at most ``STEP`` = 0.25 per step,
    so a larger jump means the plan did not honour the inpainted current state)."""
    times = {name: [] for name in models}
    jumps = {name: [] for name in models}
    gens = {name: torch.Generator().manual_seed(1) for name in models}
    for s in bench_progress(states, desc="planner: timing"):
        for name, model in models.items():
            t0 = time.perf_counter()
            _, info = model.plan(s, gens[name])
            times[name].append(time.perf_counter() - t0)
            plan = model.normalizer.unnormalize(info["plan"])
            jumps[name].append(float((plan[1, :2] - plan[0, :2]).norm()))
    return {name: {"seconds": statistics.median(times[name]), "first_step_jump": float(np.mean(jumps[name]))}
            for name in models}


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_behaviour, steps, episodes, n_timing = (50, 400, 1, 4) if quick else (100, 1500, 5, 24)
    sizes = {"diffuser": {"n_candidates": 16}, "trajectory_diffuser": {"n_candidates": 8}} if quick else {}
    data = generate_maze_dataset(per_behaviour, seed=0)
    models, rows, paths = {}, {}, {}
    for method in bench_progress(PLANNER_METHODS, desc="planner: train + evaluate"):
        t0 = time.perf_counter()
        if method == "autoregressive":  # the ablation: Trajectory Diffuser's own generator, no refinement
            td = models["trajectory_diffuser"]
            model = load_planner(td.state_dict(), {**td.config, "method": "autoregressive"})
        else:
            model = train_planner(method, data, steps=steps, seed=0, **sizes.get(method, {}))
        train_seconds = time.perf_counter() - t0
        path = paths.setdefault(method, [])
        ev = evaluate_planner(model, episodes, seed=1000,
                              on_step=lambda ep, env, path=path: path.append(env.state[:2].copy()) if ep == 0 else None)
        obs0, _ = PointMazeEnv(max_steps=64).reset(seed=1000)
        rows[method] = {**ev, "train_seconds": train_seconds, "flops_per_decision": decision_flops(model, obs0),
                        "n_candidates": model.config["n_candidates"] if method != "autoregressive" else 1}
        models[method] = model
    rng = np.random.default_rng(0)
    states = data.observations.reshape(-1, 4)[rng.choice(data.observations[:, :-1].size // 4, n_timing, replace=False)]
    timing = side_by_side(models, states)
    seconds = {method: timing[method]["seconds"] for method in models}
    for method in models:
        rows[method]["seconds_per_decision_side_by_side"] = seconds[method]
        rows[method]["plan_first_step_jump"] = timing[method]["first_step_jump"]
    d, td = rows["diffuser"], rows["trajectory_diffuser"]
    speedup = seconds["diffuser"] / seconds["trajectory_diffuser"]
    result = {"setting": "U-maze 5x5, 64-step episodes, sparse goal reward; H = 32 state plans, replanning each step",
              "dataset": {"episodes": int(len(data.rewards)), "return_mean": float(data.episode_returns.mean()),
                          "return_by_behaviour": {b: float(data.episode_returns[data.behaviour == b].mean())
                                                  for b in np.unique(data.behaviour)}},
              "train_steps_per_part": steps, "eval_episodes": episodes, "methods": rows,
              "speedup_td_over_diffuser": speedup,
              "nfe_ratio_diffuser_over_td": d["nfe"]["total"] / td["nfe"]["total"],
              "flops_ratio_diffuser_over_td": d["flops_per_decision"] / td["flops_per_decision"]}
    result["summary"] = " | ".join(
        f"{LABELS[m]}: return {r['return_mean']:.1f}, success {r['success_rate']:.2f}, "
        f"{1e3 * r['seconds_per_decision_side_by_side']:.0f} ms/decision, NFE {r['nfe']['total']}, "
        f"{r['flops_per_decision'] / 1e6:.0f} MFLOP, plan jump {r['plan_first_step_jump']:.2f}"
        for m, r in rows.items())
    result["summary"] += f" | TD {speedup:.1f}x faster than Diffuser"

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    names = list(rows)
    colors = ["C3", "C0", "C2"]
    ax = axes[0]
    ax.bar([LABELS[m] for m in names], [rows[m]["return_mean"] for m in names],
           yerr=[rows[m]["return_std"] for m in names], color=colors)
    for i, m in enumerate(names):
        ax.text(i, 0.5, f"success {rows[m]['success_rate']:.0%}", ha="center", fontsize=8, color="white")
    ax.axhline(result["dataset"]["return_by_behaviour"].get("expert", 0), color="k", ls="--", lw=0.8,
               label="expert data (random starts)")
    ax.set_ylabel(f"return (mean of {episodes} episodes)")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax = axes[1]
    ax.bar([LABELS[m] for m in names], [1e3 * seconds[m] for m in names], color=colors)
    ax.set_ylabel("ms per decision (median, side by side)")
    ax.set_title(f"Trajectory Diffuser {speedup:.1f}x faster than Diffuser", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    ax = axes[2]
    bottom = np.zeros(len(names))
    for part in ("denoiser", "value", "autoregressive", "inverse_dynamics", "critic"):
        vals = np.array([rows[m]["nfe"][part] for m in names], dtype=float)
        ax.bar([LABELS[m] for m in names], vals, bottom=bottom, label=part)
        bottom += vals
    ax.set_ylabel("network evaluations per decision")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax = axes[3]
    env = PointMazeEnv(max_steps=64)
    env.reset(seed=1000)
    ppc = env.pixels_per_cell
    ax.imshow(env.render(), extent=[0, env.walls.shape[1], env.walls.shape[0], 0])
    for m, c in zip(names, colors):
        path = np.asarray(paths[m])
        ax.plot(path[:, 0], path[:, 1], color=c, lw=1.5, label=LABELS[m])
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"episodes from the start (seed 1000), {ppc} px/cell", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return result, fig


register_bench("planner", "Diffuser vs Trajectory Diffuser vs autoregressive planning in a 2-D maze")(_run)
