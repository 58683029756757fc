"""A toy driving scene generator for trajectory planning, with a one-step gymnasium environment.

A scene is a straight road of 2 or 3 lanes (width ``LANE_WIDTH``), the ego car at the origin in the centre of
its lane (x forward, y to the left, metres) driving at ``speed`` m/s, and up to ``MAX_AGENTS`` other cars that
keep their lane and speed. A plan is 8 (x, y) waypoints of the ego centre at t = 0.5, 1.0, ..., 4.0 s (the
NAVSIM format DiffusionDrive plans in, arXiv 2411.15139).

Four manoeuvres exist: keep lane, change left, change right, and slow down behind a lead car. A manoeuvre is
*valid* in a scene when its canonical trajectory stays on the road and collides with no car at any waypoint
(box overlap, ``CAR_LENGTH`` x ``CAR_WIDTH``), so the valid set depends on the scene: no left change from the
leftmost lane or into a car, no keeping the lane through a slow lead car, no slowing without one. The expert
trajectory of a scene is a seeded, jittered sample (speed, lane-change duration, braking) of one valid
manoeuvre drawn uniformly, itself checked valid.

``DriveEnv`` is the gymnasium view: ``reset(seed=...)`` draws a scene (observation: the padded scene
vector), ``step(plan)`` scores one 8-waypoint plan (reward 1 for a collision-free on-road plan, minus its
distance to the closest valid manoeuvre in tens of metres) and ends the episode; ``render()`` returns RGB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MANEUVERS = ("keep", "left", "right", "slow")
LANE_WIDTH = 3.5
CAR_LENGTH = 4.5
CAR_WIDTH = 1.8
HORIZON = 8
DT = 0.5
MAX_AGENTS = 4
LANE_OFFSETS = (-1, 0, 1)  # lane tokens: right neighbour, ego lane, left neighbour
TIMES = DT * np.arange(1, HORIZON + 1)
LANE_FEATURES = 3
AGENT_FEATURES = 4
EGO_FEATURES = 3


def _smoothstep(u: np.ndarray) -> np.ndarray:
    """0 -> 1 cosine ramp on u in [0, 1], constant outside (a lane change's lateral profile)."""
    u = np.clip(u, 0.0, 1.0)
    return 0.5 * (1 - np.cos(np.pi * u))


def maneuver_trajectory(maneuver: str, speed: float, *, lane_change_time: float = 3.0, target_speed: float = 0.0,
                        brake_time: float = 2.0, speed_scale: float = 1.0) -> np.ndarray:
    """The (8, 2) waypoints of one manoeuvre from the origin at ``speed`` m/s.

    keep: x = v t, y = 0.  left/right: x = v t, y = +/- W (1 - cos(pi min(t/T, 1)))/2 with T the lane-change
    time.  slow: constant deceleration a = (v - v_target)/T_b until T_b, then v_target. ``speed_scale``
    multiplies v (expert jitter).
    """
    v = speed * speed_scale
    t = TIMES
    if maneuver == "keep":
        x, y = v * t, np.zeros_like(t)
    elif maneuver in ("left", "right"):
        side = 1.0 if maneuver == "left" else -1.0
        x, y = v * t, side * LANE_WIDTH * _smoothstep(t / lane_change_time)
    elif maneuver == "slow":
        a = (v - target_speed) / brake_time
        tb = np.minimum(t, brake_time)
        x = v * tb - 0.5 * a * tb**2 + target_speed * np.maximum(t - brake_time, 0.0)
        y = np.zeros_like(t)
    else:
        raise ValueError(f"unknown manoeuvre {maneuver!r}; allowed: {', '.join(MANEUVERS)}")
    return np.stack([x, y], -1)


@dataclass
class Scene:
    """One driving scene (metres, seconds; ego at the origin, x forward, y left).

    Attributes:
        n_lanes: 2 or 3.  ego_lane: index of the ego lane, 0 = rightmost.  speed: ego speed (m/s).
        agents: (A, 3) rows (x, y, vx) of the other cars (A <= MAX_AGENTS).
        lead_speed: speed of the lead car in the ego lane (0 when there is none).
        valid: the valid manoeuvres, in MANEUVERS order.  canonical: manoeuvre -> (8, 2) canonical plan (all
        four manoeuvres; invalid ones included, for classifying plans).  expert: (8, 2) expert plan.
        expert_maneuver: the manoeuvre the expert plan was drawn from.
    """

    n_lanes: int
    ego_lane: int
    speed: float
    agents: np.ndarray
    lead_speed: float
    valid: tuple
    canonical: dict = field(repr=False)
    expert: np.ndarray = field(repr=False)
    expert_maneuver: str = ""

    @property
    def road_edges(self) -> tuple[float, float]:
        """(y_right, y_left) of the road edges."""
        return (-(self.ego_lane + 0.5) * LANE_WIDTH, (self.n_lanes - self.ego_lane - 0.5) * LANE_WIDTH)

    def agent_positions(self) -> np.ndarray:
        """(A, 8, 2) positions of the other cars at the waypoint times (constant velocity, own lane)."""
        if len(self.agents) == 0:
            return np.zeros((0, HORIZON, 2))
        x = self.agents[:, None, 0] + self.agents[:, None, 2] * TIMES[None]
        y = np.broadcast_to(self.agents[:, None, 1], x.shape)
        return np.stack([x, y], -1)

    def collides(self, plans: np.ndarray) -> np.ndarray:
        """(..., 8, 2) plans -> (...) bool: the ego box overlaps some car's box at some waypoint."""
        plans = np.asarray(plans, dtype=np.float64)
        pos = self.agent_positions()
        if len(pos) == 0:
            return np.zeros(plans.shape[:-2], dtype=bool)
        d = np.abs(plans[..., None, :, :] - pos)  # (..., A, 8, 2)
        hit = (d[..., 0] < CAR_LENGTH) & (d[..., 1] < CAR_WIDTH)
        return hit.any(axis=(-1, -2))

    def off_road(self, plans: np.ndarray) -> np.ndarray:
        """(..., 8, 2) plans -> (...) bool: some waypoint puts the ego body over a road edge or backwards."""
        plans = np.asarray(plans, dtype=np.float64)
        lo, hi = self.road_edges
        y = plans[..., 1]
        out = (y - CAR_WIDTH / 2 < lo) | (y + CAR_WIDTH / 2 > hi) | (plans[..., 0] < -1.0)
        return out.any(-1)

    def is_valid_plan(self, plans: np.ndarray) -> np.ndarray:
        return ~(self.collides(plans) | self.off_road(plans))

    def to_vector(self) -> np.ndarray:
        """The padded scene encoding as one float32 vector (the gymnasium observation); see ``scene_tokens``."""
        tokens = scene_tokens([self])
        return np.concatenate([t[0].reshape(-1) for t in tokens]).astype(np.float32)


def scene_tokens(scenes) -> tuple[np.ndarray, ...]:
    """Scene tokens for a batch of scenes, padded to fixed sizes (float32):

    ego (B, 3): speed/10, lanes to the left, lanes to the right;
    lanes (B, 3, 3): for lane offsets (-1, 0, +1): lateral centre / W, speed of its nearest car ahead / 10
    (0 if none), gap to it / 30 (1 if none); lane_mask (B, 3): 1 where the lane exists;
    agents (B, MAX_AGENTS, 4): x/20, y/W, vx/10, (vx - v_ego)/5; agent_mask (B, MAX_AGENTS).
    """
    b = len(scenes)
    ego = np.zeros((b, EGO_FEATURES), np.float32)
    lanes = np.zeros((b, len(LANE_OFFSETS), LANE_FEATURES), np.float32)
    lane_mask = np.zeros((b, len(LANE_OFFSETS)), np.float32)
    agents = np.zeros((b, MAX_AGENTS, AGENT_FEATURES), np.float32)
    agent_mask = np.zeros((b, MAX_AGENTS), np.float32)
    for i, s in enumerate(scenes):
        left = s.n_lanes - 1 - s.ego_lane
        ego[i] = (s.speed / 10, left, s.ego_lane)
        for j, off in enumerate(LANE_OFFSETS):
            lane = s.ego_lane + off
            if not 0 <= lane < s.n_lanes:
                continue
            lane_mask[i, j] = 1
            ahead = [a for a in s.agents if abs(a[1] - off * LANE_WIDTH) < 0.1 and a[0] > -CAR_LENGTH]
            near = min(ahead, key=lambda a: a[0]) if ahead else None
            lanes[i, j] = (off, 0.0 if near is None else near[2] / 10, 1.0 if near is None else near[0] / 30)
        for k, (x, y, vx) in enumerate(s.agents):
            agents[i, k] = (x / 20, y / LANE_WIDTH, vx / 10, (vx - s.speed) / 5)
            agent_mask[i, k] = 1
    return ego, lanes, lane_mask, agents, agent_mask


def _draw_agents(rng: np.random.Generator, n_lanes: int, ego_lane: int, speed: float) -> tuple[list, float]:
    agents, lead_speed = [], 0.0
    if rng.random() < 0.5:  # a slower lead car in the ego lane
        lead_speed = float(speed * rng.uniform(0.3, 0.7))
        agents.append((float(rng.uniform(12.0, 28.0)), 0.0, lead_speed))
    for off in (-1, 1):
        lane = ego_lane + off
        if 0 <= lane < n_lanes and rng.random() < 0.55:  # a car alongside, roughly at the ego speed
            agents.append((float(rng.uniform(-10.0, 18.0)), off * LANE_WIDTH, float(speed + rng.uniform(-2.0, 2.0))))
    if len(agents) < MAX_AGENTS and rng.random() < 0.5:  # a far car that rarely matters
        lane = int(rng.integers(n_lanes))
        far_speed = float(speed * rng.uniform(0.8, 1.2))
        agents.append((float(rng.uniform(45.0, 70.0)), (lane - ego_lane) * LANE_WIDTH, far_speed))
    return agents, lead_speed


def _canonical(speed: float, lead_speed: float) -> dict:
    target = 0.9 * lead_speed if lead_speed > 0 else 0.5 * speed
    return {"keep": maneuver_trajectory("keep", speed), "left": maneuver_trajectory("left", speed),
            "right": maneuver_trajectory("right", speed),
            "slow": maneuver_trajectory("slow", speed, target_speed=target, brake_time=2.0)}


def _jittered(rng: np.random.Generator, maneuver: str, speed: float, lead_speed: float) -> np.ndarray:
    return maneuver_trajectory(maneuver, speed, speed_scale=float(rng.uniform(0.96, 1.04)),
                               lane_change_time=float(rng.uniform(2.6, 3.4)),
                               target_speed=float(lead_speed * rng.uniform(0.8, 1.0)),
                               brake_time=float(rng.uniform(1.6, 2.4)))


def make_scene(rng: np.random.Generator, *, max_tries: int = 100) -> Scene:
    """Draw one scene and its expert plan from ``rng`` (rejection: at least one valid manoeuvre)."""
    for _ in range(max_tries):
        n_lanes = int(rng.integers(2, 4))
        ego_lane = int(rng.integers(n_lanes))
        speed = float(rng.uniform(8.0, 14.0))
        agents, lead_speed = _draw_agents(rng, n_lanes, ego_lane, speed)
        scene = Scene(n_lanes, ego_lane, speed, np.asarray(agents, np.float64).reshape(-1, 3), lead_speed, (),
                      _canonical(speed, lead_speed), np.zeros((HORIZON, 2)))
        valid = []
        for m in MANEUVERS:
            if m == "slow" and lead_speed == 0:
                continue
            if bool(scene.is_valid_plan(scene.canonical[m])):
                valid.append(m)
        if not valid:
            continue
        scene.valid = tuple(valid)
        maneuver = valid[int(rng.integers(len(valid)))]
        expert = scene.canonical[maneuver]
        for _ in range(10):  # a jittered expert that is itself valid, else the canonical plan
            candidate = _jittered(rng, maneuver, speed, lead_speed)
            if bool(scene.is_valid_plan(candidate)):
                expert = candidate
                break
        scene.expert, scene.expert_maneuver = expert, maneuver
        return scene
    raise RuntimeError(f"no scene with a valid manoeuvre in {max_tries} draws")


def generate_scenes(n: int, seed: int) -> list[Scene]:
    """``n`` scenes with expert plans from ``np.random.default_rng(seed)`` (same seed, same scenes)."""
    if n < 1:
        raise ValueError(f"the number of scenes must be >= 1; got {n}")
    rng = np.random.default_rng(seed)
    return [make_scene(rng) for _ in range(n)]


def classify_plans(scene: Scene, plans: np.ndarray, *, max_ade: float = 1.5) -> np.ndarray:
    """(K, 8, 2) plans -> (K,) index into MANEUVERS of the nearest canonical manoeuvre, or -1 when its average
    displacement to that manoeuvre exceeds ``max_ade`` metres (a plan that is none of them)."""
    canon = np.stack([scene.canonical[m] for m in MANEUVERS])  # (4, 8, 2)
    ade = np.linalg.norm(np.asarray(plans)[:, None] - canon[None], axis=-1).mean(-1)  # (K, 4)
    best = ade.argmin(1)
    return np.where(ade[np.arange(len(best)), best] <= max_ade, best, -1)


def render_scene(scene: Scene, plans: dict | None = None, *, title: str = "", ax=None, scores=None):
    """Draw the scene top-down (road, lanes, cars, expert plan dashed) with optional ``plans`` {label: (K,8,2)}
    on a matplotlib axis; returns the axis. ``scores`` {label: (K,)} sets the plans' opacity."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 2.4))
    lo, hi = scene.road_edges
    ax.add_patch(Rectangle((-15, lo), 85, hi - lo, color="0.85", zorder=0))
    for k in range(1, scene.n_lanes):
        ax.axhline(lo + k * LANE_WIDTH, color="white", ls="--", lw=1, zorder=1)
    ax.add_patch(Rectangle((-CAR_LENGTH / 2, -CAR_WIDTH / 2), CAR_LENGTH, CAR_WIDTH, color="tab:blue", zorder=3))
    for x, y, _ in scene.agents:
        ax.add_patch(Rectangle((x - CAR_LENGTH / 2, y - CAR_WIDTH / 2), CAR_LENGTH, CAR_WIDTH, color="tab:red",
                               zorder=3))
    colours = ["tab:green", "tab:purple", "tab:orange", "tab:brown"]
    for c, (label, p) in enumerate((plans or {}).items()):
        p = np.asarray(p)
        alpha = np.ones(len(p)) * 0.6
        if scores is not None and label in scores:
            s = np.asarray(scores[label], dtype=np.float64)
            alpha = 0.15 + 0.85 * (s - s.min()) / max(s.max() - s.min(), 1e-9)
        for k in range(len(p)):
            ax.plot(p[k, :, 0], p[k, :, 1], "-", color=colours[c % 4], alpha=float(alpha[k]), lw=1.2,
                    label=label if k == 0 else None, zorder=4)
    ax.plot(scene.expert[:, 0], scene.expert[:, 1], "k--", lw=1.5, label="expert", zorder=5)
    ax.set_xlim(-15, 70)
    ax.set_ylim(lo - 1, hi + 1)
    ax.set_aspect("equal")
    ax.set_title(title or f"valid: {', '.join(scene.valid)}", fontsize=8)
    ax.tick_params(labelsize=6)
    return ax


def _gym_env_class():
    import gymnasium as gym
    from gymnasium import spaces

    obs_size = EGO_FEATURES + len(LANE_OFFSETS) * (LANE_FEATURES + 1) + MAX_AGENTS * (AGENT_FEATURES + 1)

    class DriveEnv(gym.Env):
        """One-step planning episodes on the toy scenes (gymnasium API).

        Observation: the float32 scene vector ``Scene.to_vector()``; ``env.scene`` is the Scene, and the
        reset info holds its valid manoeuvres and expert plan.
        Action: an (8, 2) plan in metres. Reward: 1[collision-free and on road] - min_m ADE(plan, m)/10 over
        the valid manoeuvres m. Each episode is one step (terminated=True). ``render()`` returns (H, W, 3) uint8.
        """

        metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

        def __init__(self, render_mode: str | None = "rgb_array"):
            self.observation_space = spaces.Box(-10.0, 10.0, (obs_size,), np.float32)  # features are O(1)
            self.action_space = spaces.Box(-100.0, 100.0, (HORIZON, 2), np.float32)
            self.render_mode = render_mode
            self.scene: Scene | None = None
            self._last_plan = None

        def reset(self, *, seed: int | None = None, options=None):
            super().reset(seed=seed)
            self.scene = make_scene(self.np_random)
            self._last_plan = None
            return self.scene.to_vector(), {"valid": self.scene.valid, "expert": self.scene.expert.copy()}

        def step(self, action):
            if self.scene is None:
                raise RuntimeError("call reset() before step()")
            plan = np.asarray(action, dtype=np.float64).reshape(HORIZON, 2)
            collision, off = bool(self.scene.collides(plan)), bool(self.scene.off_road(plan))
            ade = min(float(np.linalg.norm(plan - self.scene.canonical[m], axis=-1).mean()) for m in self.scene.valid)
            reward = float(not (collision or off)) - ade / 10
            self._last_plan = plan
            info = {"collision": collision, "off_road": off, "ade_to_valid": ade}
            return self.scene.to_vector(), reward, True, False, info

        def render(self):
            import matplotlib.pyplot as plt

            from ...plotting import figure_to_rgb

            if self.scene is None:
                raise RuntimeError("call reset() before render()")
            fig, ax = plt.subplots(figsize=(6, 2.4), dpi=80)
            plans = {"plan": self._last_plan[None]} if self._last_plan is not None else None
            render_scene(self.scene, plans, ax=ax)
            frame = figure_to_rgb(fig)
            plt.close(fig)
            return frame

    return DriveEnv


_ENV_CLASS: list = []


def __getattr__(name):  # gymnasium is imported only when the environment class is asked for
    if name == "DriveEnv":
        if not _ENV_CLASS:
            _ENV_CLASS.append(_gym_env_class())
        return _ENV_CLASS[0]
    raise AttributeError(name)
