"""A contact-rich pushing task on pymunk physics: a disk pusher pushes a square block onto a goal disk.

This is the documented simpler stand-in for Diffusion Policy's Push-T (Chi et al. 2023, arXiv 2303.04137,
Sec. 5.1): the same ingredients (a velocity-controlled circular pusher, a rigid block with contact and ground
friction simulated by pymunk, a goal region) but a square block and a position-only goal, because Push-T's
demonstrations are human teleoperation and a scripted demonstrator for the full T pose did not fit the budget.

``PushBlockEnv`` (gymnasium id ``diffusekit/PushBlock-v0``): arena [-1, 1]^2 with walls; action a in [-1, 1]^2
sets the kinematic pusher's velocity to PUSHER_SPEED * a for one control step of CONTROL_DT seconds (10 physics
substeps); the block's sliding friction is pymunk's global damping. Observation (6,): pusher (x, y), block
(x, y), block (cos theta, sin theta). ``terminated`` with reward 1 when the block centre is within GOAL_RADIUS of
GOAL_CENTER; ``truncated`` after MAX_STEPS. ``reset(seed=s)`` draws the block pose and the pusher's start from
``default_rng(s)``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pymunk
from gymnasium import spaces

from .envs_point import _disk, _polyline

__all__ = ["PushBlockEnv", "PUSH_ENV_ID", "GOAL_CENTER", "GOAL_RADIUS", "BLOCK_SIZE", "PUSHER_RADIUS",
           "push_demonstrator", "raster_push_scene"]

PUSH_ENV_ID = "diffusekit/PushBlock-v0"
GOAL_CENTER = np.array([0.0, 0.55])
GOAL_RADIUS = 0.12
BLOCK_SIZE = 0.3
PUSHER_RADIUS = 0.05
PUSHER_SPEED = 1.0
CONTROL_DT = 0.1
SUBSTEPS = 10
DAMPING = 0.01  # fraction of velocity kept after one second: strong ground friction
MAX_STEPS = 100


def _fill_polygon(img: np.ndarray, corners: np.ndarray, colour) -> None:
    """Paint a convex world-space polygon (K, 2), counter-clockwise, onto img in place."""
    size = img.shape[0]
    rows, cols = np.mgrid[0:size, 0:size]
    p = np.stack([cols / (size - 1) * 2 - 1, 1 - rows / (size - 1) * 2], -1)
    inside = np.ones((size, size), dtype=bool)
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        edge = b - a
        inside &= (edge[0] * (p[..., 1] - a[1]) - edge[1] * (p[..., 0] - a[0])) >= 0
    img[inside] = colour


def raster_push_scene(pusher_path: np.ndarray, block_corners: np.ndarray, size: int = 128) -> np.ndarray:
    """RGB uint8 frame: goal (green), block (grey), the pusher's path (blue) and the pusher (red)."""
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    _disk(img, GOAL_CENTER, GOAL_RADIUS, (140, 220, 140))
    _fill_polygon(img, block_corners, (120, 120, 120))
    path = np.asarray(pusher_path, dtype=np.float64).reshape(-1, 2)
    if len(path) > 1:
        _polyline(img, path, (40, 90, 220))
    _disk(img, path[-1], PUSHER_RADIUS, (220, 40, 40))
    return img


class PushBlockEnv(gym.Env):
    """Push a square block onto the goal with a disk pusher (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, size: int = 128, max_steps: int = MAX_STEPS):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode, self.size, self.max_steps = render_mode, int(size), int(max_steps)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._build((0.0, 0.0), 0.0, (0.0, -0.8))

    def _build(self, block_xy, angle: float, pusher_xy) -> None:
        space = pymunk.Space()
        space.damping = DAMPING
        walls = [((-1, -1), (1, -1)), ((1, -1), (1, 1)), ((1, 1), (-1, 1)), ((-1, 1), (-1, -1))]
        for a, b in walls:
            space.add(pymunk.Segment(space.static_body, a, b, 0.02))
        block = pymunk.Body(1.0, pymunk.moment_for_box(1.0, (BLOCK_SIZE, BLOCK_SIZE)))
        block.position, block.angle = tuple(map(float, block_xy)), float(angle)
        box = pymunk.Poly.create_box(block, (BLOCK_SIZE, BLOCK_SIZE))
        box.friction = 0.5
        pusher = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        pusher.position = tuple(map(float, pusher_xy))
        disk = pymunk.Circle(pusher, PUSHER_RADIUS)
        disk.friction = 0.5
        space.add(block, box, pusher, disk)
        self.space, self.block, self.box, self.pusher = space, block, box, pusher
        self.path = [np.array(pusher.position)]
        self.steps = 0

    def _obs(self) -> np.ndarray:
        p, b, th = self.pusher.position, self.block.position, self.block.angle
        return np.array([p.x, p.y, b.x, b.y, np.cos(th), np.sin(th)], dtype=np.float32)

    def block_corners(self) -> np.ndarray:
        """World coordinates (4, 2) of the block's corners, counter-clockwise."""
        return np.array([tuple(self.block.local_to_world(v)) for v in self.box.get_vertices()])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Block at U[-0.3, 0.3] x U[-0.25, 0.05], angle U[-pi/4, pi/4]; pusher at U[-0.6, 0.6] x {-0.8}."""
        super().reset(seed=seed)
        rng = np.random.default_rng(seed)
        block = (rng.uniform(-0.3, 0.3), rng.uniform(-0.25, 0.05))
        self._build(block, rng.uniform(-np.pi / 4, np.pi / 4), (rng.uniform(-0.6, 0.6), -0.8))
        return self._obs(), {"success": False, "collision": False}

    def step(self, action):
        """Pusher velocity PUSHER_SPEED * clip(a) for CONTROL_DT seconds (SUBSTEPS physics steps)."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self.pusher.velocity = tuple(PUSHER_SPEED * a)
        for _ in range(SUBSTEPS):
            self.space.step(CONTROL_DT / SUBSTEPS)
            x, y = self.pusher.position
            self.pusher.position = (float(np.clip(x, -0.95, 0.95)), float(np.clip(y, -0.95, 0.95)))
        self.steps += 1
        self.path.append(np.array(self.pusher.position))
        success = bool(np.linalg.norm(np.array(self.block.position) - GOAL_CENTER) < GOAL_RADIUS)
        truncated = (not success) and self.steps >= self.max_steps
        return self._obs(), float(success), success, truncated, {"success": success, "collision": False}

    def render(self, mode: str | None = None):
        """The current frame as an RGB uint8 array."""
        mode = mode or self.render_mode
        if mode != "rgb_array":
            raise ValueError(f"only mode='rgb_array' is supported, got {mode!r}")
        return raster_push_scene(np.array(self.path), self.block_corners(), self.size)


def push_demonstrator(rng: np.random.Generator, noise: float = 0.05):
    """Scripted pusher for ``PushBlock``: with d the unit vector from the block to the goal, go to the approach
    point 0.3 behind the block along -d (around the block's side when in front of it), then push along d while
    correcting the lateral offset; N(0, noise^2) jitter. Returns ``act(obs) -> action`` (``act.mode`` = "push")."""

    def act(obs: np.ndarray) -> np.ndarray:
        pusher, block = np.asarray(obs[:2], dtype=np.float64), np.asarray(obs[2:4], dtype=np.float64)
        d = GOAL_CENTER - block
        d = d / max(np.linalg.norm(d), 1e-9)
        perp = np.array([-d[1], d[0]])
        rel = pusher - block
        along, lateral = rel @ d, rel @ perp
        if along < -0.2 and abs(lateral) < 0.06:
            a = d - 4.0 * lateral * perp
        else:
            target = block - 0.3 * d
            if along > -0.22 and np.linalg.norm(rel) < 0.36:  # beside or in front: go round the side first
                target = block + (0.38 if lateral >= 0 else -0.38) * perp - 0.15 * d
            delta = target - pusher
            a = delta / max(np.linalg.norm(delta), 0.1)
        return np.clip(a + noise * rng.standard_normal(2), -1.0, 1.0)

    act.mode = "push"
    return act


if PUSH_ENV_ID not in gym.registry:
    gym.register(id=PUSH_ENV_ID, entry_point=PushBlockEnv, max_episode_steps=None)
