"""Return-labelled offline trajectories in the point maze, from scripted noisy experts of several quality levels.

Regenerated from a seed in seconds (nothing is shipped). Each episode starts at a uniformly random free cell
(plus jitter) and runs ``max_steps`` steps under one behaviour policy:

* ``expert``  : waypoint controller towards the goal (breadth-first cell path, a = clip(K (w - x))), noise 0.1;
* ``noisy``   : the same, Gaussian action noise 0.6;
* ``erratic`` : the same, Gaussian action noise 1.2;
* ``wander``  : the controller towards a random free cell instead of the goal, noise 0.3.

so episode returns (steps spent at the goal) range from 0 to near the maximum. Returns-to-go are discounted,
R_t = sum_{k >= t} discount^(k - t) r_k (Diffuser's value target, Janner et al. 2022, arXiv 2205.09991 sec. 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .maze_env import PointMazeEnv

BEHAVIOURS = {"expert": (0.1, True), "noisy": (0.6, True), "erratic": (1.2, True), "wander": (0.3, False)}
GAIN = 3.0
DISCOUNT = 0.99


def discounted_returns_to_go(rewards: np.ndarray, discount: float = DISCOUNT) -> np.ndarray:
    """R_t = r_t + discount R_{t+1}, R_T = 0, along the last axis: (..., T) -> (..., T + 1) (the last entry is 0)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.zeros(rewards.shape[:-1] + (rewards.shape[-1] + 1,))
    for t in range(rewards.shape[-1] - 1, -1, -1):
        out[..., t] = rewards[..., t] + discount * out[..., t + 1]
    return out


class WaypointController:
    """Scripted expert: steer to the centre of the next cell on the shortest cell path to ``target_cell``
    (the exact target position once in its cell), a = clip(GAIN (w - x), -1, 1) + noise_std * N(0, I), clipped."""

    def __init__(self, env: PointMazeEnv, target_cell, noise_std: float, rng: np.random.Generator):
        self.env, self.noise_std, self.rng = env, float(noise_std), rng
        self.target_cell = tuple(target_cell)
        self.target = np.array([self.target_cell[1] + 0.5, self.target_cell[0] + 0.5])
        self.next_cell = {}
        for cell in env.free_cells:
            path = env.cell_path(cell, self.target_cell)
            self.next_cell[cell] = path[1] if len(path) > 1 else path[0]

    def __call__(self, state: np.ndarray) -> np.ndarray:
        pos = state[:2]
        cell = (int(np.floor(pos[1])), int(np.floor(pos[0])))
        nxt = self.next_cell.get(cell, self.target_cell)
        waypoint = self.target if nxt == self.target_cell else np.array([nxt[1] + 0.5, nxt[0] + 0.5])
        action = np.clip(GAIN * (waypoint - pos), -1, 1) + self.noise_std * self.rng.standard_normal(2)
        return np.clip(action, -1, 1)


@dataclass
class MazeDataset:
    """Episodes of equal length T: observations (E, T + 1, 4) (s_0..s_T), actions (E, T, 2), rewards (E, T),
    returns_to_go (E, T + 1) discounted, behaviour (E,) names; ``layout`` and ``max_steps`` rebuild the env."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    returns_to_go: np.ndarray
    behaviour: np.ndarray
    layout: tuple
    max_steps: int
    discount: float = DISCOUNT

    @property
    def episode_returns(self) -> np.ndarray:
        return self.rewards.sum(1)

    def make_env(self) -> PointMazeEnv:
        return PointMazeEnv(self.layout, max_steps=self.max_steps)

    def state_limits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension (min, max) of the observations, for Diffuser's limits normaliser to [-1, 1]."""
        obs = torch.as_tensor(self.observations, dtype=torch.float32).reshape(-1, self.observations.shape[-1])
        return obs.min(0).values, obs.max(0).values

    def windows(self, horizon: int) -> dict[str, torch.Tensor]:
        """Every length-``horizon`` window of states: states (N, H, 4), actions (N, H, 2) (a_t for t in the window),
        rtg (N,) the discounted return-to-go at the window's first state, rtg_seq (N, H)."""
        e, t1, _ = self.observations.shape
        if not 2 <= horizon <= t1 - 1:
            raise ValueError(f"horizon must be in [2, {t1 - 1}] for episodes of {t1 - 1} steps; got {horizon}")
        starts = range(t1 - horizon)
        states = np.stack([self.observations[:, s:s + horizon] for s in starts], 1).reshape(-1, horizon, 4)
        actions = np.stack([self.actions[:, s:s + horizon] for s in starts], 1).reshape(-1, horizon, 2)
        rtg_seq = np.stack([self.returns_to_go[:, s:s + horizon] for s in starts], 1).reshape(-1, horizon)
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        return {"states": as_t(states), "actions": as_t(actions), "rtg": as_t(rtg_seq[:, 0]), "rtg_seq": as_t(rtg_seq)}

    def transitions(self) -> dict[str, torch.Tensor]:
        """All (s_t, a_t, s_{t+1}, R_t) transitions, flattened: (N, 4), (N, 2), (N, 4), (N,)."""
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        return {"s": as_t(self.observations[:, :-1].reshape(-1, 4)), "a": as_t(self.actions.reshape(-1, 2)),
                "s_next": as_t(self.observations[:, 1:].reshape(-1, 4)),
                "rtg": as_t(self.returns_to_go[:, :-1].ravel())}


def generate_maze_dataset(episodes_per_behaviour: int = 100, *, seed: int = 0, max_steps: int = 64,
                          layout=None, behaviours=tuple(BEHAVIOURS)) -> MazeDataset:
    """Roll out ``episodes_per_behaviour`` episodes of each scripted behaviour (see the module docstring),
    deterministically from ``seed`` (numpy ``default_rng``; the env is reset with seeds drawn from it)."""
    if episodes_per_behaviour < 1:
        raise ValueError(f"episodes_per_behaviour must be >= 1; got {episodes_per_behaviour}")
    unknown = set(behaviours) - set(BEHAVIOURS)
    if unknown:
        raise ValueError(f"unknown behaviours {sorted(unknown)}; allowed: {sorted(BEHAVIOURS)}")
    env = PointMazeEnv(max_steps=max_steps) if layout is None else PointMazeEnv(layout, max_steps=max_steps)
    rng = np.random.default_rng(seed)
    to_goal = {}
    obs_all, act_all, rew_all, names = [], [], [], []
    for name in behaviours:
        noise, goes_to_goal = BEHAVIOURS[name]
        for _ in range(episodes_per_behaviour):
            target = env.goal_cell if goes_to_goal else env.free_cells[int(rng.integers(len(env.free_cells)))]
            if target not in to_goal:
                to_goal[target] = WaypointController(env, target, 0.0, rng)
            controller = to_goal[target]
            controller.noise_std = noise
            obs, _ = env.reset(seed=int(rng.integers(2**31)), options={"anywhere": True})
            states, actions, rewards = [np.asarray(obs, dtype=np.float64)], [], []
            for _ in range(max_steps):
                a = controller(states[-1])
                obs, r, _, _, _ = env.step(a)
                states.append(np.asarray(obs, dtype=np.float64))
                actions.append(a)
                rewards.append(r)
            obs_all.append(states)
            act_all.append(actions)
            rew_all.append(rewards)
            names.append(name)
    rewards = np.asarray(rew_all)
    return MazeDataset(np.asarray(obs_all, dtype=np.float32), np.asarray(act_all, dtype=np.float32), rewards,
                       discounted_returns_to_go(rewards, DISCOUNT), np.asarray(names), tuple(env.layout), max_steps)
