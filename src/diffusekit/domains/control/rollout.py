"""Batched receding-horizon rollouts of a chunking policy, their statistics and episode animations.

A policy here is ``act(windows, generators) -> chunks``: observation windows (B, n_obs, obs_dim) float32 and one
``torch.Generator`` per episode in, action chunks (B, horizon, act_dim) out. ``rollout`` runs B episodes in
lockstep; at every replanning step it queries the policy once for all unfinished episodes and executes
``chunk[n_obs-1 : n_obs-1+n_action]`` (Diffusion Policy's receding horizon, Chi et al. 2023, arXiv 2303.04137,
Sec. 3.1: horizon 16, 2 observations, 8 executed actions). Each episode draws its sampling noise only from its
own generator (seeded by its env seed), so an episode's outcome does not depend on which others share the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from . import envs_point
from .demos import make_env

__all__ = ["EpisodeResult", "rollout", "summarise", "route_of_path", "episode_frames", "record_episode"]


@dataclass
class EpisodeResult:
    """Outcome of one evaluation episode."""

    seed: int
    success: bool
    collision: bool
    steps: int
    route: str
    path: np.ndarray = field(repr=False)
    policy_calls: int = 0


def route_of_path(path: np.ndarray) -> str:
    """"left" / "right" by the sign of x where the path first reaches the obstacle's height (y >= centre y),
    "none" when it never does (it collided or stalled below the obstacle)."""
    path = np.asarray(path).reshape(-1, 2)
    above = np.nonzero(path[:, 1] >= envs_point.OBSTACLE_CENTER[1])[0]
    if above.size == 0:
        return "none"
    return "left" if path[above[0], 0] < envs_point.OBSTACLE_CENTER[0] else "right"


def rollout(act: Callable, env_id: str, seeds, *, n_obs: int = 2, n_action: int = 8,
            progress: bool = False, frames: list | None = None) -> list[EpisodeResult]:
    """Run one episode per seed with receding-horizon control (see the module docstring). With a list
    ``frames``, the first episode's rendered frames (reset and every step) are appended to it."""
    from tqdm import tqdm

    seeds = [int(s) for s in seeds]
    envs = [make_env(env_id) for _ in seeds]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    history = []
    for env, s in zip(envs, seeds):
        obs, _ = env.reset(seed=s)
        history.append([obs] * n_obs)
    if frames is not None:
        frames.append(envs[0].render(mode="rgb_array"))
    done = [False] * len(seeds)
    infos = [{"success": False, "collision": False} for _ in seeds]
    calls = [0] * len(seeds)
    steps = [0] * len(seeds)
    bar = tqdm(total=len(seeds), desc="episodes", disable=not progress, leave=False)
    while not all(done):
        active = [i for i, d in enumerate(done) if not d]
        windows = np.stack([np.stack(history[i][-n_obs:]) for i in active]).astype(np.float32)
        chunks = np.asarray(act(windows, [gens[i] for i in active]))
        for row, i in enumerate(active):
            calls[i] += 1
            for a in chunks[row, n_obs - 1: n_obs - 1 + n_action]:
                obs, _, terminated, truncated, info = envs[i].step(a)
                history[i].append(obs)
                steps[i] += 1
                if frames is not None and i == 0:
                    frames.append(envs[0].render(mode="rgb_array"))
                if terminated or truncated:
                    done[i], infos[i] = True, info
                    bar.update(1)
                    break
    bar.close()
    results = []
    for i, s in enumerate(seeds):
        path = np.array(envs[i].path)
        route = route_of_path(path) if env_id == envs_point.POINT_ENV_ID else "none"
        results.append(EpisodeResult(s, bool(infos[i]["success"]), bool(infos[i]["collision"]), steps[i],
                                     route, path, calls[i]))
    return results


def summarise(results: list[EpisodeResult]) -> dict:
    """Success and collision rates, route fractions and ``mode_balance`` = 2 min(n_left, n_right) / n (1 = an
    even split over all n episodes, 0 = one route only), and ``modes_used`` (routes taken by >= 10% of them)."""
    n = len(results)
    left = sum(r.route == "left" for r in results)
    right = sum(r.route == "right" for r in results)
    return {"episodes": n, "success_rate": sum(r.success for r in results) / n,
            "collision_rate": sum(r.collision for r in results) / n,
            "left_fraction": left / n, "right_fraction": right / n, "mode_balance": 2 * min(left, right) / n,
            "modes_used": int(left >= 0.1 * n) + int(right >= 0.1 * n),
            "mean_steps": float(np.mean([r.steps for r in results]))}


def episode_frames(path: np.ndarray, size: int = 128) -> list[np.ndarray]:
    """One RGB frame per step of a point-mass path (the path so far, the mass at its end)."""
    path = np.asarray(path).reshape(-1, 2)
    return [envs_point.raster_scene(path[: k + 1], size) for k in range(len(path))]


def record_episode(act: Callable, env_id: str, seed: int, *, n_obs: int = 2, n_action: int = 8):
    """(frames, result) of one episode run alone; the same as that seed's episode inside any batched
    ``rollout``, since each episode's noise comes from its own generator."""
    frames: list = []
    result = rollout(act, env_id, [seed], n_obs=n_obs, n_action=n_action, frames=frames)[0]
    return frames, result
