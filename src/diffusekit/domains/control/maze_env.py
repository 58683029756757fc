"""A 2-D point-mass maze with the gymnasium API, for offline planning with diffusion (Diffuser, Trajectory Diffuser).

The maze is a grid of unit cells ('#' = wall, '.' = free, 'S' = start, 'G' = goal), positions in cell units with
the origin at the top-left corner, x to the right (columns) and y down (rows). The agent is a point mass of
half-width ``AGENT_RADIUS`` with state s = (x, y, vx, vy) and action a in [-1, 1]^2 (a force):

    v_{t+1} = (1 - GAMMA) v_t + GAMMA a_t,        x_{t+1} = x_t + STEP v_{t+1},

with walls resolved per axis (a move along an axis that would overlap a wall is dropped and that velocity
component set to 0). Between collisions the action is a function of two consecutive states,
a_t = (v_{t+1} - (1 - GAMMA) v_t) / GAMMA, which is what the planners' inverse-dynamics models learn.
Reward r_t = 1 while the agent is within ``GOAL_RADIUS`` of the goal centre (after the step), else 0, as in
D4RL's sparse maze2d; no termination, episodes are truncated after ``max_steps`` steps.
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np
from gymnasium import spaces

U_MAZE = ("#####",
          "#S..#",
          "###.#",
          "#G..#",
          "#####")

GAMMA = 0.5  # velocity relaxation per step
STEP = 0.25  # cells moved per step at unit speed
AGENT_RADIUS = 0.1
GOAL_RADIUS = 0.35


def parse_layout(layout) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """(wall mask (rows, cols) bool, start cell (row, col), goal cell (row, col)) from rows of '#', '.', 'S', 'G'."""
    rows = [str(r) for r in layout]
    if not rows or len({len(r) for r in rows}) != 1:
        raise ValueError("maze layout must be a non-empty list of equally long strings")
    if set("".join(rows)) - set("#.SG"):
        raise ValueError("maze layout may only use the characters '#', '.', 'S' and 'G'")
    grid = np.array([list(r) for r in rows])
    if (grid == "S").sum() != 1 or (grid == "G").sum() != 1:
        raise ValueError("maze layout must hold exactly one 'S' and one 'G'")
    start = tuple(int(v) for v in np.argwhere(grid == "S")[0])
    goal = tuple(int(v) for v in np.argwhere(grid == "G")[0])
    return grid == "#", start, goal


class PointMazeEnv(gym.Env):
    """Point mass in a 2-D maze (module docstring has the dynamics and reward); gymnasium API, seeded resets.

    ``reset(seed=...)`` places the agent at the start cell's centre plus U(-start_noise, start_noise) per axis
    (``options={"anywhere": True}`` instead draws a uniformly random free cell), velocity 0.
    ``render()`` returns an (H, W, 3) uint8 image (``render_mode="rgb_array"``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, layout=U_MAZE, *, max_steps: int = 64, start_noise: float = 0.2,
                 render_mode: str | None = "rgb_array", pixels_per_cell: int = 24):
        self.walls, self.start_cell, self.goal_cell = parse_layout(layout)
        self.layout = tuple(layout)
        self.max_steps = int(max_steps)
        self.start_noise = float(start_noise)
        self.render_mode = render_mode
        self.pixels_per_cell = int(pixels_per_cell)
        rows, cols = self.walls.shape
        self.goal = np.array([self.goal_cell[1] + 0.5, self.goal_cell[0] + 0.5])
        high = np.array([cols, rows, 1.0, 1.0], dtype=np.float32)
        self.observation_space = spaces.Box(-high * np.array([0, 0, 1, 1], dtype=np.float32), high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.free_cells = [tuple(int(v) for v in c) for c in np.argwhere(~self.walls)]
        self.state = np.zeros(4)
        self.steps = 0

    # geometry
    def is_free(self, pos) -> bool:
        """Whether the agent's square (half-width AGENT_RADIUS) around ``pos`` overlaps no wall."""
        x, y = float(pos[0]), float(pos[1])
        rows, cols = self.walls.shape
        for cx in (x - AGENT_RADIUS, x + AGENT_RADIUS):
            for cy in (y - AGENT_RADIUS, y + AGENT_RADIUS):
                c, r = int(np.floor(cx)), int(np.floor(cy))
                if not (0 <= r < rows and 0 <= c < cols) or self.walls[r, c]:
                    return False
        return True

    def cell_path(self, from_cell, to_cell) -> list[tuple[int, int]]:
        """Shortest 4-connected path of free cells (row, col) from ``from_cell`` to ``to_cell`` (breadth-first)."""
        prev = {tuple(from_cell): None}
        queue = deque([tuple(from_cell)])
        while queue:
            cell = queue.popleft()
            if cell == tuple(to_cell):
                break
            r, c = cell
            for nxt in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if nxt not in prev and 0 <= nxt[0] < self.walls.shape[0] and 0 <= nxt[1] < self.walls.shape[1] \
                        and not self.walls[nxt]:
                    prev[nxt] = cell
                    queue.append(nxt)
        if tuple(to_cell) not in prev:
            raise ValueError(f"cell {to_cell} cannot be reached from {from_cell}")
        path, cell = [], tuple(to_cell)
        while cell is not None:
            path.append(cell)
            cell = prev[cell]
        return path[::-1]

    def goal_distance(self, pos) -> float:
        return float(np.linalg.norm(np.asarray(pos[:2], dtype=float) - self.goal))

    # gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if options.get("anywhere", False):
            r, c = self.free_cells[int(self.np_random.integers(len(self.free_cells)))]
        else:
            r, c = self.start_cell
        jitter = self.np_random.uniform(-self.start_noise, self.start_noise, size=2)
        self.state = np.array([c + 0.5 + jitter[0], r + 0.5 + jitter[1], 0.0, 0.0])
        self.steps = 0
        return self.state.astype(np.float32), {}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=float).reshape(2), -1.0, 1.0)
        pos, vel = self.state[:2].copy(), self.state[2:].copy()
        vel = (1 - GAMMA) * vel + GAMMA * a
        for axis in (0, 1):  # per-axis wall resolution: a blocked axis does not move and loses its velocity
            trial = pos.copy()
            trial[axis] += STEP * vel[axis]
            if self.is_free(trial):
                pos = trial
            else:
                vel[axis] = 0.0
        self.state = np.concatenate([pos, vel])
        self.steps += 1
        reward = float(self.goal_distance(pos) <= GOAL_RADIUS)
        truncated = self.steps >= self.max_steps
        return self.state.astype(np.float32), reward, False, truncated, {"at_goal": bool(reward > 0)}

    def render(self):
        """(rows * ppc, cols * ppc, 3) uint8: walls dark, goal green disc, agent red square."""
        ppc = self.pixels_per_cell
        rows, cols = self.walls.shape
        img = np.full((rows * ppc, cols * ppc, 3), 235, dtype=np.uint8)
        img[np.kron(self.walls, np.ones((ppc, ppc), dtype=bool))] = (60, 60, 70)
        yy, xx = np.mgrid[0:rows * ppc, 0:cols * ppc]
        gx, gy = self.goal * ppc
        img[(xx + 0.5 - gx) ** 2 + (yy + 0.5 - gy) ** 2 <= (GOAL_RADIUS * ppc) ** 2] = (90, 190, 90)
        ax, ay = self.state[:2] * ppc
        half = max(AGENT_RADIUS * ppc, 1.5)
        img[(np.abs(xx + 0.5 - ax) <= half) & (np.abs(yy + 0.5 - ay) <= half)] = (210, 50, 50)
        return img

    def draw_points(self, img: np.ndarray, points, color=(40, 90, 220), radius: float = 0.06) -> np.ndarray:
        """A copy of ``img`` (from ``render``) with dots at ``points`` ((K, 2) positions in cells), e.g. a plan."""
        ppc = self.pixels_per_cell
        out = img.copy()
        yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
        for x, y in np.asarray(points, dtype=float).reshape(-1, 2):
            out[(xx + 0.5 - x * ppc) ** 2 + (yy + 0.5 - y * ppc) ** 2 <= (radius * ppc) ** 2] = color
        return out
