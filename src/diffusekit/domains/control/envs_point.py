"""A 2-D point mass that must pass a round obstacle on the left or the right: the bimodal navigation task.

``PointMassBimodalEnv`` (gymnasium id ``diffusekit/PointMassBimodal-v0``) is the toy of Chi et al.'s Diffusion
Policy argument (RSS 2023, arXiv 2303.04137, Sec. 4 "multi-modal action distributions"): demonstrations go
around the obstacle on either side with equal probability, so the conditional action distribution at the start
is bimodal and a regressor trained with mean-squared error predicts the average, straight into the obstacle.

Dynamics (first-order point mass, velocity control): with action a in [-1, 1]^2 (clipped),

    p_{k+1} = clip(p_k + SPEED * a_k, -1, 1)

Observation: the position p (2,) as float32. An episode ends with ``terminated`` when the mass reaches the goal
disk (reward 1, ``info["success"]``) or enters the obstacle disk (reward -1, ``info["collision"]``; the mass
stays where it was); it is ``truncated`` after ``MAX_STEPS`` steps. ``reset(seed=s)`` draws the start
uniformly in a small box below the obstacle with ``numpy.random.default_rng(s)``; nothing else is random.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["PointMassBimodalEnv", "POINT_ENV_ID", "OBSTACLE_CENTER", "OBSTACLE_RADIUS", "GOAL_CENTER",
           "GOAL_RADIUS", "SPEED", "MAX_STEPS", "raster_scene", "world_to_pixel"]

POINT_ENV_ID = "diffusekit/PointMassBimodal-v0"
OBSTACLE_CENTER = np.array([0.0, 0.0])
OBSTACLE_RADIUS = 0.35
GOAL_CENTER = np.array([0.0, 0.75])
GOAL_RADIUS = 0.15
START_CENTER = np.array([0.0, -0.75])
START_HALF_WIDTH = 0.05
SPEED = 0.06
MAX_STEPS = 60


def world_to_pixel(points: np.ndarray, size: int) -> np.ndarray:
    """Map world points (..., 2) in [-1, 1]^2 to (row, col) pixel coordinates of a size x size image (y up)."""
    points = np.asarray(points, dtype=np.float64)
    col = (points[..., 0] + 1) / 2 * (size - 1)
    row = (1 - (points[..., 1] + 1) / 2) * (size - 1)
    return np.stack([row, col], axis=-1)


def _disk(img: np.ndarray, center, radius: float, colour) -> None:
    """Paint a world-space disk onto img (H, W, 3) in place."""
    size = img.shape[0]
    rows, cols = np.mgrid[0:size, 0:size]
    x = cols / (size - 1) * 2 - 1
    y = 1 - rows / (size - 1) * 2
    img[(x - center[0]) ** 2 + (y - center[1]) ** 2 <= radius**2] = colour


def _polyline(img: np.ndarray, points: np.ndarray, colour, samples_per_unit: int = 200) -> None:
    """Paint a world-space polyline (N, 2) onto img by dense sampling (no extra dependency)."""
    size = img.shape[0]
    for a, b in zip(points[:-1], points[1:]):
        n = max(2, int(np.linalg.norm(b - a) * samples_per_unit))
        seg = a[None] + np.linspace(0, 1, n)[:, None] * (b - a)[None]
        rc = np.clip(np.round(world_to_pixel(seg, size)).astype(int), 0, size - 1)
        img[rc[:, 0], rc[:, 1]] = colour


def raster_scene(path: np.ndarray, size: int = 128) -> np.ndarray:
    """RGB uint8 image (size, size, 3) of the arena: obstacle (grey), goal (green), the path so far (blue) and
    the point mass (red) at the path's last point."""
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    _disk(img, OBSTACLE_CENTER, OBSTACLE_RADIUS, (120, 120, 120))
    _disk(img, GOAL_CENTER, GOAL_RADIUS, (140, 220, 140))
    path = np.asarray(path, dtype=np.float64).reshape(-1, 2)
    if len(path) > 1:
        _polyline(img, path, (40, 90, 220))
    _disk(img, path[-1], 0.04, (220, 40, 40))
    return img


class PointMassBimodalEnv(gym.Env):
    """Point-mass navigation around an obstacle with two equally good routes (see the module docstring).

    ``render_mode`` may be None or "rgb_array"; ``render(mode="rgb_array")`` also works without it and returns
    a (size, size, 3) uint8 frame with the path travelled so far.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, size: int = 128, max_steps: int = MAX_STEPS):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.size = int(size)
        self.max_steps = int(max_steps)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.position = START_CENTER.copy()
        self.path = [self.position.copy()]
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start at START_CENTER + U[-0.05, 0.05]^2 drawn from ``default_rng(seed)``; returns (obs, info)."""
        super().reset(seed=seed)
        rng = np.random.default_rng(seed)
        self.position = START_CENTER + rng.uniform(-START_HALF_WIDTH, START_HALF_WIDTH, size=2)
        self.path = [self.position.copy()]
        self.steps = 0
        return self.position.astype(np.float32), {"success": False, "collision": False}

    def step(self, action):
        """p <- clip(p + SPEED * clip(a, -1, 1), -1, 1); ends on the goal (+1), the obstacle (-1) or MAX_STEPS."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        new = np.clip(self.position + SPEED * a, -1.0, 1.0)
        self.steps += 1
        collision = bool(np.linalg.norm(new - OBSTACLE_CENTER) < OBSTACLE_RADIUS)
        if not collision:
            self.position = new
        self.path.append(self.position.copy())
        success = (not collision) and bool(np.linalg.norm(self.position - GOAL_CENTER) < GOAL_RADIUS)
        reward = 1.0 if success else (-1.0 if collision else 0.0)
        terminated = success or collision
        truncated = (not terminated) and self.steps >= self.max_steps
        info = {"success": success, "collision": collision}
        return self.position.astype(np.float32), reward, terminated, truncated, info

    def render(self, mode: str | None = None):
        """The current frame as an RGB uint8 array (mode "rgb_array", or the env's render_mode)."""
        mode = mode or self.render_mode
        if mode != "rgb_array":
            raise ValueError(f"only mode='rgb_array' is supported, got {mode!r}")
        return raster_scene(np.array(self.path), self.size)


if POINT_ENV_ID not in gym.registry:
    gym.register(id=POINT_ENV_ID, entry_point=PointMassBimodalEnv, max_episode_steps=None)
