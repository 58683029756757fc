"""The maze planners behind one interface (for ``diffusekit policy`` and ``bench planner``).

``train_planner(method, dataset, *, steps, seed, progress) -> model`` with ``model.config`` (JSON) and
``model.state_dict()`` (safetensors-ready tensors); ``load_planner(state, config)``; ``act(model, observation,
generator) -> action``; ``evaluate_planner(model, episodes, seed) -> dict``. Methods:

* ``diffuser``: Janner et al. 2022, arXiv 2205.09991 (``planner_diffuser``);
* ``trajectory_diffuser``: Huang et al. 2024, arXiv 2407.16142 (``planner_trajectory``);
* ``autoregressive``: Trajectory Diffuser's generator alone (its ablation without diffusion refinement).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from .maze_data import MazeDataset
from .maze_env import PointMazeEnv
from .planner_diffuser import DiffuserPlanner, train_diffuser
from .planner_trajectory import TrajectoryDiffuserPlanner, train_trajectory_diffuser

PLANNER_METHODS = ("diffuser", "trajectory_diffuser", "autoregressive")


def _check_method(method: str) -> str:
    if method not in PLANNER_METHODS:
        raise ValueError(f"unknown planner method {method!r}; allowed: {', '.join(PLANNER_METHODS)}")
    return method


def train_planner(method: str, dataset: MazeDataset, *, steps: int = 2000, seed: int = 0, progress: bool = False,
                  **config):
    """Train planner ``method`` on the offline ``dataset`` (``steps`` Adam steps per part); returns the model."""
    _check_method(method)
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    if method == "diffuser":
        return train_diffuser(dataset, steps=steps, seed=seed, progress=progress, **config)
    return train_trajectory_diffuser(dataset, steps=steps, seed=seed, progress=progress, method=method, **config)


def load_planner(state: dict, config: dict):
    """Rebuild a trained planner from ``model.state_dict()`` and ``model.config``."""
    method = _check_method(config.get("method"))
    model = DiffuserPlanner(config) if method == "diffuser" else TrajectoryDiffuserPlanner(config)
    model.load_state_dict(state)
    return model.eval()


def act(model, observation, generator: torch.Generator | None = None) -> np.ndarray:
    """One decision of ``model`` at ``observation`` (replanned from scratch): the action as a float32 array."""
    action, _ = model.plan(observation, generator)
    return action.detach().numpy().astype(np.float32)


def evaluate_planner(model, episodes: int = 10, seed: int = 0, *, env: PointMazeEnv | None = None,
                     on_step=None) -> dict:
    """Run ``episodes`` episodes (env reset seeds seed, seed + 1, ...; planning noise from one generator seeded
    with ``seed``), replanning every step. Returns mean/std return, success rate (reached the goal at least once),
    the median wall-clock seconds per decision and the network evaluations per decision (``nfe``).
    ``on_step(episode, env)`` is called after every step (e.g. to record frames)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1; got {episodes}")
    env = env or PointMazeEnv(max_steps=64)
    gen = torch.Generator().manual_seed(seed)
    returns, successes, seconds, nfe = [], [], [], None
    model.eval()
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total, reached, done = 0.0, False, False
        while not done:
            t0 = time.perf_counter()
            action, info = model.plan(obs, gen)
            seconds.append(time.perf_counter() - t0)
            nfe = info["nfe"]
            obs, r, terminated, truncated, _ = env.step(action.detach().numpy())
            total += r
            reached |= r > 0
            done = terminated or truncated
            if on_step is not None:
                on_step(ep, env)
        returns.append(total)
        successes.append(reached)
    return {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)), "returns": returns,
            "success_rate": float(np.mean(successes)), "seconds_per_decision": statistics.median(seconds),
            "decisions": len(seconds), "nfe": nfe}
