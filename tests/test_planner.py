"""Diffuser (arXiv 2205.09991) and Trajectory Diffuser (arXiv 2407.16142) maze planners: invariants at tiny scale."""

import numpy as np
import pytest
import torch

from diffusekit.domains.control.maze_data import generate_maze_dataset
from diffusekit.domains.control.maze_env import PointMazeEnv
from diffusekit.domains.control.planner_api import act, evaluate_planner, load_planner, train_planner
from diffusekit.domains.control.planner_diffuser import DiffuserPlanner, train_inverse_dynamics
from diffusekit.domains.control.planner_nets import InverseDynamics, LimitsNormalizer

torch.set_num_threads(1)
TINY = {"horizon": 16, "base_channels": 8, "channel_mult": [1, 2]}


@pytest.fixture(scope="module")
def data():
    return generate_maze_dataset(12, seed=5)


@pytest.fixture(scope="module")
def diffuser(data):
    return train_planner("diffuser", data, steps=60, seed=0, n_candidates=8, n_diffusion_steps=6, **TINY)


@pytest.fixture(scope="module")
def trajectory_diffuser(data):
    return train_planner("trajectory_diffuser", data, steps=60, seed=0, n_candidates=8, **TINY)


def _obs():
    return PointMazeEnv().reset(seed=0)[0]


def _count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_inpainting_keeps_the_current_state_exactly(diffuser, trajectory_diffuser):
    obs = _obs()
    for model in (diffuser, trajectory_diffuser):
        _, info = model.plan(obs, torch.Generator().manual_seed(0))
        s0 = model.normalizer.normalize(torch.as_tensor(obs).reshape(1, -1))[0]
        assert torch.equal(info["plan"][0], s0)
        assert not torch.equal(info["plan"][1], s0)


def test_value_guidance_step_increases_the_value(diffuser):
    c = diffuser.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn((32, 4, c["horizon"]), generator=g)
    s0 = x[:, :, 0].clone()
    n = torch.full((32,), c["n_diffusion_steps"] - 1)
    diffuser.config = {**c, "guide_scale": 1.0}
    try:
        x_new = diffuser.guide(x, n, s0)
    finally:
        diffuser.config = c
    with torch.no_grad():
        gain = diffuser.value(x_new, n) - diffuser.value(x, n)
    assert torch.equal(x_new[:, :, 0], s0)
    assert float(gain.min()) > 0


def test_inverse_dynamics_recovers_the_actions_of_the_data(data):
    torch.manual_seed(0)
    normalizer = LimitsNormalizer(*data.state_limits())
    inv = InverseDynamics()
    train_inverse_dynamics(inv, normalizer, data, steps=300, seed=0)
    tr = data.transitions()
    s, s_next = normalizer.normalize(tr["s"]), normalizer.normalize(tr["s_next"])
    with torch.no_grad():
        err = (inv(s, s_next) - tr["a"]).abs()
        untrained = (InverseDynamics()(s, s_next) - tr["a"]).abs()
    assert float(err.median()) < 0.1 < float(untrained.median())


def test_network_evaluations_per_decision(diffuser, trajectory_diffuser, data):
    obs = _obs()
    c = diffuser.config
    unet, value = _count_calls(diffuser.unet), _count_calls(diffuser.value)
    inv = _count_calls(diffuser.inverse_dynamics)
    _, info = diffuser.plan(obs, torch.Generator().manual_seed(0))
    guided = c["n_guide_steps"] * (c["n_diffusion_steps"] - c["t_stopgrad"])
    assert len(unet) == info["nfe"]["denoiser"] == c["n_diffusion_steps"]
    assert len(value) == info["nfe"]["value"] == guided + 1  # guidance gradients + the final ranking
    assert len(inv) == info["nfe"]["inverse_dynamics"] == 1

    t = trajectory_diffuser.config
    unet, cell = _count_calls(trajectory_diffuser.unet), _count_calls(trajectory_diffuser.generator.cell)
    critic = _count_calls(trajectory_diffuser.critic)
    _, info = trajectory_diffuser.plan(obs, torch.Generator().manual_seed(0))
    assert len(unet) == info["nfe"]["denoiser"] == t["refine_steps"] == 5  # each call: cond + null in one batch
    assert len(cell) == info["nfe"]["autoregressive"] == t["horizon"] - 1
    assert len(critic) == info["nfe"]["critic"] == 1
    assert info["nfe"]["total"] < diffuser.plan(obs)[1]["nfe"]["total"] + t["horizon"]

    ar = load_planner(trajectory_diffuser.state_dict(), {**t, "method": "autoregressive"})
    unet = _count_calls(ar.unet)
    _, info = ar.plan(obs)
    assert len(unet) == 0 and info["nfe"] == {"denoiser": 0, "value": 0, "autoregressive": t["horizon"] - 1,
                                               "inverse_dynamics": 1, "critic": 0, "total": t["horizon"]}


def test_refinement_starts_from_the_autoregressive_trajectory_without_added_noise(trajectory_diffuser):
    """The 5 reverse steps n = 4 .. 0 of the 100-step schedule start at tau_0 itself (sigma_4 ~ 0.03), so the plan
    stays near the generator's trajectory: diffusion as a short-range optimiser."""
    obs = _obs()
    model = trajectory_diffuser
    s0 = model.normalizer.normalize(torch.as_tensor(obs).reshape(1, -1))
    with torch.no_grad():
        tau0, _ = model.generator.rollout(s0, torch.tensor([model.config["target_return"]]), model.config["horizon"])
    _, info = model.plan(obs, torch.Generator().manual_seed(0))
    assert float((info["plan"] - tau0[0]).abs().mean()) < 0.2


def test_save_load_act_and_evaluate(diffuser, trajectory_diffuser):
    obs = _obs()
    for model in (diffuser, trajectory_diffuser):
        again = load_planner(model.state_dict(), model.config)
        a1 = act(model, obs, torch.Generator().manual_seed(3))
        a2 = act(again, obs, torch.Generator().manual_seed(3))
        assert a1.shape == (2,) and np.array_equal(a1, a2)
    env = PointMazeEnv(max_steps=5)
    r = evaluate_planner(trajectory_diffuser, 2, seed=0, env=env)
    assert r["decisions"] == 10 and 0 <= r["success_rate"] <= 1 and r["nfe"]["denoiser"] == 5
    with pytest.raises(ValueError, match="allowed"):
        train_planner("decision_transformer", None)
    with pytest.raises(ValueError, match="allowed"):
        load_planner({}, {"method": "nope"})
    assert isinstance(DiffuserPlanner({}).config["horizon"], int)
