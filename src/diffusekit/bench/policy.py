"""bench policy: Diffusion Policy and MoDE keep both routes around an obstacle; an MSE policy averages into it.

Chi et al., Diffusion Policy (RSS 2023, arXiv 2303.04137), Sec. 4 (multimodal behaviour), and Reuss et al., MoDE
(ICLR 2025, arXiv 2412.12953), on ``diffusekit/PointMassBimodal-v0``: scripted demonstrations pass the obstacle on
the left or the right with probability 1/2. We train on the same chunks (2 observations, horizon 16, 8 executed)

* ``mse``: an MLP regressor of the chunk (mean-squared error: the conditional mean);
* ``diffusion``: Diffusion Policy (FiLM 1-D UNet, eps-prediction on a 100-step squaredcos schedule), sampled
  with DDPM at 100 steps, DDIM at 8 and DPM-Solver++(2M) at 8;
* ``mode``: the MoDE transformer policy (EDM loss + load balancing, DDIM 10 steps on the log-SNR grid), with the
  fused expert cache and with dynamic routing;

and roll out the same seeded episodes (100; 20 with --quick). Reported per policy: success, collisions, the
route fractions (left / right where the path reaches the obstacle's height) and ``mode_balance`` =
2 min(left, right) / n; for MoDE also the largest difference between fused and routed samples, forward FLOPs of
one policy query (torch.utils.flop_counter), median wall time per query and the router's mutual information
between noise level and expert (``methods.mode.routing_entropy``). The full run adds a reduced table on
``diffusekit/PushBlock-v0`` (pymunk pushing, 50 episodes): success of MSE, Diffusion Policy (DDIM 8) and MoDE.
"""

from __future__ import annotations

import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from . import bench_progress, register_bench  # noqa: E402
from ..domains.control import envs_point, envs_pusht  # noqa: E402
from ..domains.control.demos import chunk_dataset, collect_demos  # noqa: E402
from ..domains.control.diffusion_policy import DiffusionPolicyConfig, train_diffusion_policy  # noqa: E402
from ..domains.control.mode_policy import MoDEPolicyConfig, train_mode_policy  # noqa: E402
from ..domains.control.mse_policy import MSEPolicyConfig, train_mse_policy  # noqa: E402
from ..domains.control.rollout import rollout, summarise  # noqa: E402
from ..methods.mode import routing_entropy  # noqa: E402

ENV = envs_point.POINT_ENV_ID
PUSH_ENV = envs_pusht.PUSH_ENV_ID
EVAL_SEED = 10_000


def _sizes(quick: bool) -> dict:
    if quick:
        return {"demos": 60, "mse_steps": 300, "dp_steps": 300, "mode_steps": 150, "episodes": 20, "repeats": 3,
                "push": None}
    return {"demos": 100, "mse_steps": 2000, "dp_steps": 1500, "mode_steps": 1500, "episodes": 100, "repeats": 7,
            "push": {"demos": 100, "steps": 1000, "episodes": 50}}


def _push_table(sizes: dict) -> dict:
    """The reduced table on PushBlock-v0: MSE, Diffusion Policy (DDIM 8) and MoDE (cached, DDIM 10)."""
    windows, chunks = chunk_dataset(collect_demos(PUSH_ENV, sizes["demos"], seed=0))
    seeds = range(EVAL_SEED, EVAL_SEED + sizes["episodes"])
    policies = {
        "mse": train_mse_policy(windows, chunks, MSEPolicyConfig(train_steps=sizes["steps"]), env_id=PUSH_ENV),
        "diffusion ddim-8": train_diffusion_policy(windows, chunks, DiffusionPolicyConfig(
            train_steps=sizes["steps"], down_dims=(32, 64), batch_size=128, sampler="ddim", sample_steps=8),
            env_id=PUSH_ENV),
        "mode ddim-10 cached": train_mode_policy(windows, chunks, MoDEPolicyConfig(train_steps=sizes["steps"]),
                                                 env_id=PUSH_ENV)}
    rows = {}
    for name, policy in bench_progress(policies.items(), desc="policy: push"):
        row = summarise(rollout(policy.act, PUSH_ENV, seeds, n_obs=policy.n_obs, n_action=policy.n_action))
        rows[name] = {k: row[k] for k in ("episodes", "success_rate", "mean_steps")}
    return rows


def _start_probe(policy, n: int = 64) -> dict:
    """At the nominal start (two identical observations at START_CENTER), the mean x of the first 8 executed
    actions of n chunk samples: its mean (the average heading), its mean absolute value (how far a sample turns
    away from the straight line into the obstacle) and the fractions of samples heading left / right."""
    w = np.tile(envs_point.START_CENTER.astype(np.float32), (n, policy.n_obs, 1))
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    chunks = np.asarray(policy.act(w, gens))[:, policy.n_obs - 1: policy.n_obs - 1 + policy.n_action]
    x = chunks[..., 0].mean(1)
    return {"mean_heading_x": float(x.mean()), "mean_abs_heading_x": float(np.abs(x).mean()),
            "fraction_left": float((x < 0).mean()),
            "fraction_right": float((x > 0).mean())}


def _query_cost(policy, windows: np.ndarray, repeats: int) -> dict:
    """Forward FLOPs and median wall time of one batched policy query."""
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(windows))]  # noqa: E731
    with FlopCounterMode(display=False) as counter:
        policy.act(windows, gens())
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.act(windows, gens())
        seconds.append(time.perf_counter() - t0)
    return {"flops_per_query": int(counter.get_total_flops()), "seconds_per_query": statistics.median(seconds)}


def _mode_caching(policy, windows: np.ndarray, repeats: int) -> dict:
    """Fused-vs-routed equality, FLOPs and wall time of one query of the MoDE policy (batch = len(windows))."""
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(windows))]  # noqa: E731
    w = torch.as_tensor(windows)
    policy.set_expert_cache(False)
    routed = policy.sample_chunks(w, gens())
    dynamic = _query_cost(policy, windows, repeats)
    policy.set_expert_cache(True)
    fused = policy.sample_chunks(w, gens())
    cached = _query_cost(policy, windows, repeats)
    ts = policy.time_grid()[:-1]
    probs = policy.net.routing(policy.schedule.network_time(ts).float())["probs"]
    return {"max_abs_diff_fused_vs_routed": float((fused - routed).abs().max()),
            "flops_per_query_routed": dynamic["flops_per_query"], "flops_per_query_fused": cached["flops_per_query"],
            "seconds_per_query_routed": dynamic["seconds_per_query"],
            "seconds_per_query_fused": cached["seconds_per_query"],
            "routing": routing_entropy(probs), "query_batch": len(windows)}


def _paths_panel(ax, results, title: str) -> None:
    ax.add_patch(plt.Circle(envs_point.OBSTACLE_CENTER, envs_point.OBSTACLE_RADIUS, color="0.6"))
    ax.add_patch(plt.Circle(envs_point.GOAL_CENTER, envs_point.GOAL_RADIUS, color="#8c8"))
    for r in results[:40]:
        colour = "tab:red" if r.collision else ("tab:blue" if r.route == "left" else "tab:orange")
        ax.plot(r.path[:, 0], r.path[:, 1], color=colour, lw=0.8, alpha=0.6)
    ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def _run(quick: bool):
    torch.set_num_threads(1)
    n = _sizes(quick)
    windows, chunks = chunk_dataset(collect_demos(ENV, n["demos"], seed=0))
    seeds = range(EVAL_SEED, EVAL_SEED + n["episodes"])
    t0 = time.perf_counter()
    mse = train_mse_policy(windows, chunks, MSEPolicyConfig(train_steps=n["mse_steps"]), env_id=ENV)
    t_mse = time.perf_counter() - t0
    dp = train_diffusion_policy(windows, chunks, DiffusionPolicyConfig(train_steps=n["dp_steps"],
                                                                       down_dims=(32, 64), batch_size=128), env_id=ENV)
    t_dp = time.perf_counter() - t0 - t_mse
    mode = train_mode_policy(windows, chunks, MoDEPolicyConfig(train_steps=n["mode_steps"]), env_id=ENV)
    t_mode = time.perf_counter() - t0 - t_mse - t_dp
    settings = [("mse", mse, None, None, None), ("diffusion ddpm-100", dp, "ddpm", 100, None),
                ("diffusion ddim-8", dp, "ddim", 8, None), ("diffusion dpm++2m-8", dp, "dpm_solver_pp_2m", 8, None),
                ("mode ddim-10 cached", mode, "ddim", 10, True), ("mode ddim-10 routed", mode, "ddim", 10, False)]
    rows, paths = {}, {}
    probe_windows = np.tile(envs_point.START_CENTER.astype(np.float32), (16, 2, 1))
    for name, policy, sampler, steps, cache in bench_progress(settings, desc="policy: rollouts"):
        if sampler is not None:
            policy.sampler, policy.steps = sampler, steps
        if cache is not None:
            policy.set_expert_cache(cache)
        t1 = time.perf_counter()
        results = rollout(policy.act, ENV, seeds, n_obs=policy.n_obs, n_action=policy.n_action)
        row = summarise(results)
        row["rollout_seconds"] = time.perf_counter() - t1
        row["start_probe"] = _start_probe(policy)
        row.update(_query_cost(policy, probe_windows, 1 if quick else 3))
        rows[name], paths[name] = row, results
    caching = _mode_caching(mode, probe_windows, n["repeats"])
    push = _push_table(n["push"]) if n["push"] else None
    result = {"sizes": n, "train_seconds": {"mse": t_mse, "diffusion": t_dp, "mode": t_mode}, "policies": rows,
              "mode_caching": caching, "push_block": push}
    fmt = ", ".join(f"{k} succ {r['success_rate']:.2f} coll {r['collision_rate']:.2f} L/R "
                    f"{r['left_fraction']:.2f}/{r['right_fraction']:.2f}" for k, r in rows.items())
    mflop_fused, mflop_routed = caching["flops_per_query_fused"] / 1e6, caching["flops_per_query_routed"] / 1e6
    speedup = caching["seconds_per_query_routed"] / caching["seconds_per_query_fused"]
    result["summary"] = (f"{n['episodes']} episodes: {fmt}; MoDE fused vs routed max diff "
                         f"{caching['max_abs_diff_fused_vs_routed']:.1e}, MFLOP/query {mflop_fused:.2f} vs "
                         f"{mflop_routed:.2f}, {speedup:.2f}x faster")
    if push:
        result["summary"] += "; PushBlock success " + ", ".join(f"{k} {r['success_rate']:.2f}" for k, r in push.items())
    fig, axes = plt.subplots(3, 3, figsize=(10.5, 10.5))
    flat = axes.ravel()
    for ax, (name, results) in zip(flat, paths.items()):
        r = rows[name]
        _paths_panel(ax, results, f"{name}\nsucc {r['success_rate']:.2f} coll {r['collision_rate']:.2f} "
                                  f"L/R {r['left_fraction']:.2f}/{r['right_fraction']:.2f}")
    ax = flat[len(paths)]
    names = list(rows)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [rows[k]["success_rate"] for k in names], 0.4, label="success")
    ax.bar(x + 0.2, [rows[k]["collision_rate"] for k in names], 0.4, label="collision")
    ax.set_xticks(x, names, fontsize=6, rotation=35, ha="right")
    ax.legend(fontsize=7), ax.set_ylim(0, 1), ax.set_title("rates", fontsize=8)
    ax = flat[len(paths) + 1]
    ax.bar([0, 1], [caching["flops_per_query_routed"] / 1e6, caching["flops_per_query_fused"] / 1e6],
           color=["0.5", "tab:green"])
    ax.set_xticks([0, 1], ["routed", "fused"])
    ax.set_title(f"MoDE MFLOP / query (batch {caching['query_batch']})\n"
                 f"max diff {caching['max_abs_diff_fused_vs_routed']:.1e}", fontsize=8)
    ax = flat[len(paths) + 2]
    if push:
        ax.bar(range(len(push)), [r["success_rate"] for r in push.values()], color="tab:purple")
        ax.set_xticks(range(len(push)), [k.replace(" ", "\n", 1) for k in push], fontsize=7)
        ax.set_ylim(0, 1), ax.set_title(f"PushBlock success ({n['push']['episodes']} episodes)", fontsize=8)
    else:
        ax.axis("off")
    fig.suptitle("bench policy: bimodal point-mass navigation (blue left, orange right, red collision)", fontsize=10)
    fig.tight_layout()
    return result, fig


@register_bench("policy", "Diffusion Policy / MoDE keep both routes around an obstacle where an MSE policy averages "
                          "into it (arXiv 2303.04137, 2412.12953)")
def run(quick: bool = False):
    return _run(quick)
