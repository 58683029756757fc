"""PointMassBimodal: gymnasium API, determinism under a seed, termination rules, scripted demonstrations."""

import gymnasium as gym
import numpy as np
import pytest

from diffusekit.domains.control import envs_point
from diffusekit.domains.control.demos import chunk_dataset, collect_demos, make_env
from diffusekit.domains.control.rollout import episode_frames, route_of_path

ENV = envs_point.POINT_ENV_ID


def _run(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, *_ = env.step(a)
        out.append(obs)
    return np.stack(out)


def test_registered_and_gymnasium_api():
    env = gym.make(ENV)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and info == {"success": False, "collision": False}
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.shape == (2,) and obs.dtype == np.float32 and isinstance(reward, float)
    frame = env.unwrapped.render(mode="rgb_array")
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8


def test_same_seed_same_episode_and_seeds_differ():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(20, 2))
    a = _run(make_env(ENV), 7, actions)
    b = _run(make_env(ENV), 7, actions)
    c = _run(make_env(ENV), 8, actions)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], c[0])


def test_straight_up_collides_and_detour_reaches_goal():
    env = make_env(ENV)
    env.reset(seed=0)
    for _ in range(envs_point.MAX_STEPS):
        _, reward, terminated, _, info = env.step([0.0, 1.0])
        if terminated:
            break
    assert info["collision"] and reward == -1.0
    assert np.linalg.norm(env.position - envs_point.OBSTACLE_CENTER) >= envs_point.OBSTACLE_RADIUS
    assert route_of_path(np.array(env.path)) == "none"


def test_truncated_after_max_steps():
    env = make_env(ENV)
    env.reset(seed=0)
    for k in range(envs_point.MAX_STEPS):
        _, _, terminated, truncated, _ = env.step([0.0, 0.0])
        assert not terminated and truncated == (k == envs_point.MAX_STEPS - 1)


def test_demos_deterministic_successful_and_bimodal():
    a = collect_demos(ENV, 40, seed=1)
    b = collect_demos(ENV, 40, seed=1)
    assert all(np.array_equal(x.actions, y.actions) for x, y in zip(a, b))
    assert all(ep.success for ep in a)
    left = sum(ep.mode == "left" for ep in a)
    assert 10 <= left <= 30  # both routes, about half each (binomial(40, 1/2): P(outside) < 0.2%)
    assert all(route_of_path(ep.observations) == ep.mode for ep in a)


def test_chunk_dataset_edge_padding():
    eps = collect_demos(ENV, 2, seed=0)
    windows, chunks = chunk_dataset(eps, n_obs=2, horizon=16)
    assert windows.shape == (sum(len(e.actions) for e in eps), 2, 2) and chunks.shape[1:] == (16, 2)
    first = eps[0]
    np.testing.assert_array_equal(windows[0], first.observations[[0, 0]])  # o_{-1} clamped to o_0
    np.testing.assert_array_equal(chunks[0, :2], first.actions[[0, 0]])
    t = len(first.actions) - 1  # last step: actions after the end repeat the last one
    np.testing.assert_array_equal(chunks[t, 1:], np.repeat(first.actions[-1:], 15, axis=0))
    with pytest.raises(ValueError):
        chunk_dataset(eps, n_obs=3, horizon=2)


def test_episode_frames_follow_the_path():
    ep = collect_demos(ENV, 1, seed=0)[0]
    frames = episode_frames(ep.observations, size=64)
    assert len(frames) == len(ep.observations) and frames[0].shape == (64, 64, 3)
    assert not np.array_equal(frames[0], frames[-1])
