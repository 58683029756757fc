"""DiffusionDrive (Liao et al., CVPR 2025, arXiv 2411.15139) against a vanilla trajectory diffusion policy on the
toy driving scenes (``domains.control.drive_env``): 2-3 lanes, other cars, up to four valid manoeuvres.

Both models see the same scene tokens (ego, lanes, cars), the same training scenes with one expert plan each,
the same optimiser, batch and number of steps. DiffusionDrive: K = 20 k-means anchors, truncated training
(timesteps < 50 of 1000), 2-layer cascade decoder, 2-step inference from anchors noised to timestep 8.
Ablations: the same model with 1 step (one call at t = 0), and "no-noise", the same decoder and loss trained and
run on the clean anchors (t = 0: anchor classification + offset regression, no diffusion; hustvl/DiffusionDrive
#55 and #3 ask what the diffusion adds). Vanilla: the same scene encoder and a waypoint-token denoiser trained
on the full 100-step cosine chain, sampled by DDIM from pure noise with 2 and 20 steps, 20 draws per scene.
Metrics (``drive_eval.evaluate_drive``): min-ADE over the 20 plans, the chosen plan's ADE / collision /
off-road rate, diversity (mean pairwise distance), valid manoeuvres covered, network calls and ms per scene.

The paper's claim: DiffusionDrive at 2 steps matches (or beats) the vanilla policy at 20 steps, and the vanilla
policy at 2 steps collapses (NAVSIM: 10x fewer steps, +3.5 PDMS, +64% mode diversity).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..domains.control.drive_diffusion import train_diffusiondrive
from ..domains.control.drive_env import generate_scenes, render_scene
from ..domains.control.drive_eval import DiffusionDrivePlanner, VanillaPlanner, evaluate_drive
from ..domains.control.drive_nets import SceneTensors
from ..domains.control.drive_vanilla import train_vanilla_policy
from . import bench_progress, register_bench

QUICK = {"train_scenes": 600, "test_scenes": 60, "steps": 250, "batch_size": 32}
FULL = {"train_scenes": 4000, "test_scenes": 300, "steps": 3000, "batch_size": 64}
METRICS = ("min_ade", "top1_ade", "collision", "off_road", "plans_valid", "diversity", "modes_covered", "coverage",
           "nfe", "ms_per_plan")


def _figure(rows: dict, planners: dict, scenes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(planners)
    bar_names = list(rows)
    fig = plt.figure(figsize=(15, 1.9 * len(scenes) + 1.2))
    grid = fig.add_gridspec(len(scenes), len(names) + 1, width_ratios=[1.6] * len(names) + [1])
    gen = torch.Generator().manual_seed(123)
    tensors = SceneTensors.from_scenes(scenes)
    plans = {name: p.plan_batch(tensors, gen) for name, p in planners.items()}
    for i, scene in enumerate(scenes):
        for j, name in enumerate(names):
            ax = fig.add_subplot(grid[i, j])
            trajs, scores = plans[name][0][i].numpy(), plans[name][1][i].numpy()
            render_scene(scene, {name: trajs}, ax=ax, scores={name: scores},
                         title=f"{name}; valid: {', '.join(scene.valid)}")
            chosen = trajs[int(scores.argmax())]
            ax.plot(chosen[:, 0], chosen[:, 1], color="black", lw=2.5, alpha=0.5, zorder=6)
    panels = [("min_ade", "min-ADE over the plans (m); (NFE)"), ("coverage", "valid manoeuvres covered (fraction)"),
              ("collision", "chosen plan: collision rate")]
    for j, (key, title) in enumerate(panels[:len(scenes)]):
        ax = fig.add_subplot(grid[j, -1])
        ax.bar(range(len(bar_names)), [rows[n][key] for n in bar_names],
               color=["tab:gray", "tab:olive", "tab:green", "tab:purple", "tab:orange"][-len(bar_names):])
        ax.set_xticks(range(len(bar_names)), [f"{n}\n({rows[n]['nfe']})" for n in bar_names], fontsize=6)
        ax.set_title(title, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("DiffusionDrive (2 steps from noised anchors; opacity = score, grey = chosen) vs vanilla diffusion "
                 "policy from pure noise (20 draws); dashed = expert", fontsize=10)
    fig.tight_layout()
    return fig


@register_bench("drive", "DiffusionDrive (truncated anchored diffusion, 2 steps) vs vanilla diffusion policy at "
                "2/20 steps on toy driving scenes: min-ADE, collisions, diversity, modes covered")
def run(quick: bool):
    cfg = QUICK if quick else FULL
    train = generate_scenes(cfg["train_scenes"], seed=0)
    test = generate_scenes(cfg["test_scenes"], seed=1)
    seconds = {}
    bar = bench_progress(total=8, desc="drive")
    t0 = time.perf_counter()
    dd = train_diffusiondrive(train, steps=cfg["steps"], seed=0, batch_size=cfg["batch_size"])
    seconds["train_diffusiondrive"] = time.perf_counter() - t0
    bar.update()
    t0 = time.perf_counter()
    vanilla = train_vanilla_policy(train, steps=cfg["steps"], seed=0, batch_size=cfg["batch_size"])
    seconds["train_vanilla"] = time.perf_counter() - t0
    bar.update()
    t0 = time.perf_counter()
    regression = train_diffusiondrive(train, steps=cfg["steps"], seed=0, batch_size=cfg["batch_size"], noise=False)
    seconds["train_anchor_regression"] = time.perf_counter() - t0
    bar.update()
    planners = {"no-noise-1": DiffusionDrivePlanner(regression, steps=1),
                "DiffusionDrive-1": DiffusionDrivePlanner(dd, steps=1),
                "DiffusionDrive-2": DiffusionDrivePlanner(dd, steps=2),
                "vanilla-2": VanillaPlanner(vanilla, steps=2, k=dd.config["k"]),
                "vanilla-20": VanillaPlanner(vanilla, steps=20, k=dd.config["k"])}
    rows = {}
    for name, planner in planners.items():
        rows[name] = evaluate_drive(planner, scenes=test, seed=1)
        bar.update()
    bar.close()
    ddr, v2, v20 = rows["DiffusionDrive-2"], rows["vanilla-2"], rows["vanilla-20"]
    claims = {
        "dd2_min_ade_le_vanilla20": ddr["min_ade"] <= v20["min_ade"],
        "dd2_coverage_ge_vanilla20": ddr["coverage"] >= v20["coverage"],
        "dd2_collision_le_vanilla20": ddr["collision"] <= v20["collision"],
        "vanilla2_worse_than_vanilla20_min_ade": v2["min_ade"] > v20["min_ade"],
        "vanilla2_collapses_vs_dd2_coverage": v2["coverage"] < ddr["coverage"],
    }
    lines = [f"{n}: min-ADE {r['min_ade']:.2f} m, chosen ADE {r['top1_ade']:.2f} m, collision {r['collision']:.2f}, "
             f"off-road {r['off_road']:.2f}, diversity {r['diversity']:.1f} m, covered {r['modes_covered']:.2f} "
             f"({r['coverage']:.2f}), {r['nfe']} NFE, {r['ms_per_plan']:.1f} ms" for n, r in rows.items()]
    summary = "\n".join(lines) + "\nclaims: " + ", ".join(f"{k}={v}" for k, v in claims.items())
    examples = [s for s in test if len(s.valid) >= 2][:3]
    shown = ("DiffusionDrive-2", "vanilla-2", "vanilla-20")
    fig = _figure(rows, {n: p for n, p in planners.items() if n in shown}, examples)
    return {"summary": summary, "config": cfg, "rows": {n: {k: r[k] for k in METRICS} for n, r in rows.items()},
            "claims": claims, "train_seconds": seconds, "k": dd.config["k"],
            "expert_maneuvers": {m: int(np.sum([s.expert_maneuver == m for s in train]))
                                 for m in ("keep", "left", "right", "slow")}}, fig
