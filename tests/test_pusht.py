"""PushBlock (pymunk): gymnasium API, determinism under a seed, contact moves the block, scripted demos succeed."""

import gymnasium as gym
import numpy as np

from diffusekit.domains.control import envs_pusht
from diffusekit.domains.control.demos import chunk_dataset, collect_demos, make_env
from diffusekit.domains.control.rollout import record_episode

ENV = envs_pusht.PUSH_ENV_ID


def test_registered_api_and_render():
    env = gym.make(ENV)
    obs, info = env.reset(seed=0)
    assert obs.shape == (6,) and obs.dtype == np.float32 and not info["success"]
    obs, reward, terminated, truncated, _ = env.step([0.0, 1.0])
    assert env.observation_space.shape == (6,) and reward == 0.0 and not terminated
    frame = env.unwrapped.render(mode="rgb_array")
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8


def test_same_seed_same_physics():
    actions = np.random.default_rng(0).uniform(-1, 1, size=(30, 2))

    def run(seed):
        env = make_env(ENV)
        out = [env.reset(seed=seed)[0]]
        out += [env.step(a)[0] for a in actions]
        return np.stack(out)

    np.testing.assert_array_equal(run(4), run(4))
    assert not np.array_equal(run(4)[0], run(5)[0])


def test_block_moves_only_on_contact():
    env = make_env(ENV)
    obs, _ = env.reset(seed=1)
    for _ in range(3):  # sideways along the bottom wall: no contact, the block stays
        obs2, *_ = env.step([1.0, 0.0])
    np.testing.assert_allclose(obs2[2:], obs[2:], atol=1e-6)
    for _ in range(15):  # straight at the block
        delta = obs2[2:4] - obs2[:2]
        obs2, *_ = env.step(delta / np.linalg.norm(delta))
    assert np.linalg.norm(obs2[2:4] - obs[2:4]) > 0.05


def test_scripted_demos_succeed_and_gif_frames():
    eps = collect_demos(ENV, 12, seed=0)
    assert sum(ep.success for ep in eps) >= 11
    windows, chunks = chunk_dataset(eps)
    assert windows.shape[1:] == (2, 6) and chunks.shape[1:] == (16, 2)
    replay = iter(eps[0].actions)

    def act(w, g):  # replays the demonstration one action per query (n_action = 1)
        return np.tile(next(replay), (len(w), 16, 1))

    frames, result = record_episode(act, ENV, eps[0].seed, n_obs=2, n_action=1)
    assert result.success == eps[0].success and len(frames) == result.steps + 1
