"""Scripted demonstrators and the offline datasets of action chunks they give (Diffusion Policy's data layout).

A demonstrator is ``demonstrator(rng) -> act`` with ``act(obs) -> action``; ``collect_demos`` runs it for N
episodes from one seed. ``chunk_dataset`` turns episodes into training pairs as Chi et al. do (Diffusion Policy,
RSS 2023, arXiv 2303.04137, Sec. 3.1 and their ``SequenceSampler``): for every time step t of every episode,

    observation window  O_t = (o_{t-n_obs+1}, ..., o_t)                         (n_obs, obs_dim)
    action chunk        A_t = (a_{t-n_obs+1}, ..., a_{t-n_obs+horizon})         (horizon, act_dim)

with indices before the episode's start clamped to 0 and those after its end to the last step (edge padding).
At execution the policy applies A_t[n_obs-1 : n_obs-1+n_action] (receding horizon).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from . import envs_point, envs_pusht

__all__ = ["Episode", "point_mass_demonstrator", "collect_demos", "chunk_dataset", "DEMONSTRATORS", "make_env"]


@dataclass
class Episode:
    """One demonstration: observations (T + 1, obs_dim), actions (T, act_dim), success flag, the route label
    the demonstrator chose (e.g. "left"/"right") and its env seed."""

    observations: np.ndarray
    actions: np.ndarray
    success: bool
    mode: str
    seed: int


def make_env(env_id: str, **kwargs) -> gym.Env:
    """The raw environment behind a registered id (no gymnasium wrappers: rollouts call it many times)."""
    return gym.make(env_id, disable_env_checker=True, **kwargs).unwrapped


def point_mass_demonstrator(rng: np.random.Generator, noise: float = 0.1) -> Callable:
    """A scripted expert for ``PointMassBimodal``: it picks a side s in {-1, +1} with probability 1/2, heads at
    full speed for the via-point (0.6 s, 0.05 u) (u ~ U[-1, 1]) beside the obstacle, then for the goal; each
    action gets N(0, noise^2) jitter and is clipped to [-1, 1]. Returns ``act(obs) -> action`` with the
    chosen side in ``act.mode``."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    via = np.array([0.6 * side, 0.05 * rng.uniform(-1, 1)])
    state = {"phase": 0}

    def act(obs: np.ndarray) -> np.ndarray:
        position = np.asarray(obs, dtype=np.float64)
        target = via if state["phase"] == 0 else envs_point.GOAL_CENTER
        delta = target - position
        if state["phase"] == 0 and np.linalg.norm(delta) < 0.1:
            state["phase"] = 1
            delta = envs_point.GOAL_CENTER - position
        a = delta / max(np.linalg.norm(delta), 1e-9)
        return np.clip(a + noise * rng.standard_normal(2), -1.0, 1.0)

    act.mode = "right" if side > 0 else "left"
    return act


DEMONSTRATORS: dict[str, Callable] = {envs_point.POINT_ENV_ID: point_mass_demonstrator,
                                      envs_pusht.PUSH_ENV_ID: envs_pusht.push_demonstrator}


def collect_demos(env_id: str, num_episodes: int, seed: int = 0) -> list[Episode]:
    """``num_episodes`` scripted demonstrations; episode i resets the env with seed ``seed * 100003 + i`` and
    draws the demonstrator's choices from ``default_rng((seed, i))``. Deterministic for a given seed."""
    if env_id not in DEMONSTRATORS:
        raise ValueError(f"no scripted demonstrator for env {env_id!r}; available: {', '.join(sorted(DEMONSTRATORS))}")
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    env = make_env(env_id)
    episodes = []
    for i in range(num_episodes):
        env_seed = seed * 100003 + i
        rng = np.random.default_rng((seed, i))
        act = DEMONSTRATORS[env_id](rng)
        obs, info = env.reset(seed=env_seed)
        observations, actions = [obs], []
        done = False
        while not done:
            a = act(obs)
            obs, _, terminated, truncated, info = env.step(a)
            observations.append(obs)
            actions.append(a.astype(np.float32))
            done = terminated or truncated
        episodes.append(Episode(np.stack(observations).astype(np.float32), np.stack(actions).astype(np.float32),
                                bool(info["success"]), act.mode, env_seed))
    return episodes


def chunk_dataset(episodes: list[Episode], n_obs: int = 2, horizon: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs (observation windows (N, n_obs, obs_dim), action chunks (N, horizon, act_dim)) of every
    time step of every episode, with edge padding (see the module docstring)."""
    if n_obs < 1 or horizon < n_obs:
        raise ValueError(f"need 1 <= n_obs <= horizon, got n_obs={n_obs}, horizon={horizon}")
    windows, chunks = [], []
    for ep in episodes:
        t_len = len(ep.actions)
        for t in range(t_len):
            o_idx = np.clip(np.arange(t - n_obs + 1, t + 1), 0, t_len)
            a_idx = np.clip(np.arange(t - n_obs + 1, t - n_obs + 1 + horizon), 0, t_len - 1)
            windows.append(ep.observations[o_idx])
            chunks.append(ep.actions[a_idx])
    return np.stack(windows).astype(np.float32), np.stack(chunks).astype(np.float32)
