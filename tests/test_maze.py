"""The 2-D point maze (gymnasium API) and its return-labelled offline dataset."""

import numpy as np
import pytest

from diffusekit.domains.control.maze_data import (BEHAVIOURS, DISCOUNT, discounted_returns_to_go,
                                                  generate_maze_dataset)
from diffusekit.domains.control.maze_env import GAMMA, PointMazeEnv, parse_layout


def _rollout(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, *_ = env.step(a)
        out.append(obs)
    return np.stack(out)


def test_env_is_deterministic_under_a_seed_and_passes_gymnasium_checks():
    from gymnasium.utils.env_checker import check_env

    actions = np.random.default_rng(0).uniform(-1, 1, size=(40, 2))
    a = _rollout(PointMazeEnv(), 7, actions)
    b = _rollout(PointMazeEnv(), 7, actions)
    c = _rollout(PointMazeEnv(), 8, actions)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], c[0])
    check_env(PointMazeEnv(), skip_render_check=False)


def test_walls_stop_the_agent_and_the_goal_pays_reward():
    env = PointMazeEnv()
    env.reset(seed=0)
    for _ in range(30):  # push straight up into the outer wall: never inside a wall, velocity y zeroed there
        obs, r, *_ = env.step([0.0, -1.0])
        assert env.is_free(obs[:2])
    assert obs[3] == 0.0 and r == 0.0
    env.state = np.array([*env.goal, 0.0, 0.0])
    _, r, *_ = env.step([0.0, 0.0])
    assert r == 1.0


def test_render_is_an_rgb_image_with_the_agent_drawn():
    env = PointMazeEnv()
    env.reset(seed=0)
    img = env.render()
    assert img.dtype == np.uint8 and img.shape == (5 * 24, 5 * 24, 3)
    x, y = (env.state[:2] * 24).astype(int)
    assert tuple(img[y, x]) == (210, 50, 50)


def test_episode_frames_become_a_gif(tmp_path):
    from diffusekit.plotting import save_gif

    env = PointMazeEnv()
    env.reset(seed=0)
    frames = []
    for _ in range(5):
        env.step([1.0, 0.0])
        frames.append(env.draw_points(env.render(), [env.goal]))
    assert tuple(frames[-1][int(env.goal[1] * 24), int(env.goal[0] * 24)]) == (40, 90, 220)
    save_gif(frames, tmp_path / "maze.gif", fps=5)
    assert (tmp_path / "maze.gif").read_bytes()[:3] == b"GIF"


def test_layout_validation():
    with pytest.raises(ValueError, match="exactly one"):
        parse_layout(["###", "#.#", "###"])


def test_discounted_returns_to_go_match_the_direct_sum():
    rewards = np.random.default_rng(1).integers(0, 2, size=(3, 17)).astype(float)
    rtg = discounted_returns_to_go(rewards, 0.9)
    for t in range(18):
        direct = (rewards[:, t:] * 0.9 ** np.arange(17 - t)).sum(1)
        assert np.allclose(rtg[:, t], direct)


@pytest.fixture(scope="module")
def data():
    return generate_maze_dataset(10, seed=3)


def test_dataset_is_regenerated_from_its_seed_with_consistent_labels(data):
    again = generate_maze_dataset(10, seed=3)
    assert np.array_equal(data.observations, again.observations)
    assert np.array_equal(data.returns_to_go, discounted_returns_to_go(data.rewards, DISCOUNT))
    assert np.array_equal(data.episode_returns, data.rewards.sum(1))
    # the reward is the env's: 1 exactly when the next state is within the goal radius
    env = data.make_env()
    near = np.array([[env.goal_distance(s) <= 0.35 for s in ep[1:]] for ep in data.observations])
    assert np.array_equal(near, data.rewards > 0)
    # the quality levels give different returns: expert > erratic > wanderer
    mean = {b: data.episode_returns[data.behaviour == b].mean() for b in BEHAVIOURS}
    assert mean["expert"] > mean["erratic"] > mean["wander"]


def test_actions_follow_from_consecutive_states_between_collisions(data):
    o, a = data.observations, data.actions
    a_hat = (o[:, 1:, 2:] - (1 - GAMMA) * o[:, :-1, 2:]) / GAMMA
    exact = np.abs(a_hat - a).max(-1) < 1e-4
    assert exact.mean() > 0.95  # the rest are wall contacts


def test_windows_hold_the_return_to_go_of_their_first_state(data):
    win = data.windows(8)
    e, t1 = data.returns_to_go.shape
    n = t1 - 8  # window starts per episode
    assert win["states"].shape == (e * n, 8, 4)
    assert np.allclose(win["rtg"].numpy()[:n], data.returns_to_go[0, :n], atol=1e-5)
    assert np.array_equal(win["states"].numpy()[n + 2], data.observations[1, 2:10])
    with pytest.raises(ValueError, match="horizon"):
        data.windows(1000)
