"""Policies: the FiLM UNet and its loss, per-episode noise, checkpoints, MoDE expert fusion, registry and CLI."""

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusekit.cli import main
from diffusekit.core.schedules import VESchedule
from diffusekit.domains.control import envs_point
from diffusekit.domains.control.demos import chunk_dataset, collect_demos
from diffusekit.domains.control.diffusion_policy import (ChunkDiffusionPolicy, ConditionalUnet1D,
                                                         DiffusionPolicyConfig, ObsConditionedDiffusionLoss,
                                                         train_diffusion_policy)
from diffusekit.domains.control.mode_policy import MoDEPolicy, MoDEPolicyNet
from diffusekit.domains.control.registry import POLICY_METHODS, evaluate, get_policy_method, load_policy

torch.set_num_threads(1)
ENV = envs_point.POINT_ENV_ID


@pytest.fixture(scope="module")
def data():
    return chunk_dataset(collect_demos(ENV, 10, seed=0))


def _gens(n, base=0):
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def test_unet_shapes_and_film_uses_the_observation():
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 4, horizon=16, down_dims=(16, 32))
    torch.nn.init.normal_(net.final[-1].weight)
    x, t = torch.randn(3, 2, 16), torch.tensor([1.0, 50.0, 99.0])
    obs = torch.randn(3, 4)
    y = net(x, t, obs)
    assert y.shape == x.shape
    assert (net(x, t, obs + 1) - y).abs().max() > 1e-3  # FiLM: the window changes the output
    with pytest.raises(ValueError, match="divisible"):
        ConditionalUnet1D(2, 4, horizon=10, down_dims=(16, 32, 64))


def test_obs_conditioned_loss_is_per_example_and_trains_the_obs_path(data):
    windows, chunks = data
    net = ConditionalUnet1D(2, 4, horizon=16, down_dims=(16, 32))
    from diffusekit.core.schedules import VPDiscrete

    loss = ObsConditionedDiffusionLoss(VPDiscrete.named("squaredcos_cap_v2", 100), "eps")
    batch = (torch.as_tensor(chunks[:8]).transpose(1, 2), torch.as_tensor(windows[:8]).reshape(8, -1))
    per_example = loss(net, batch, torch.Generator().manual_seed(0))
    assert per_example.shape == (8,)
    per_example.mean().backward()
    film = net.down[0][0].film[1].weight.grad
    assert film is not None and film[:, -4:].abs().sum() > 0  # gradient reaches the observation columns


@pytest.fixture(scope="module")
def tiny_dp(data):
    windows, chunks = data
    cfg = DiffusionPolicyConfig(train_steps=5, down_dims=(16, 32), batch_size=32, sample_steps=4, sampler="ddim")
    return train_diffusion_policy(windows, chunks, cfg, env_id=ENV)


def test_episode_noise_independent_of_batch(tiny_dp):
    w = np.tile(envs_point.START_CENTER.astype(np.float32), (4, 2, 1))
    w[:, :, 0] += np.linspace(-0.05, 0.05, 4, dtype=np.float32)[:, None]
    tiny_dp.sampler, tiny_dp.steps = "ddpm", 4
    full = tiny_dp.act(w, _gens(4))
    alone = tiny_dp.act(w[2:3], _gens(1, base=2))
    np.testing.assert_allclose(full[2:3], alone, atol=1e-5)
    assert full.shape == (4, 16, 2) and np.abs(full).max() <= 1.0 + 1e-5  # clip_sample keeps x0 in range


@pytest.mark.parametrize("method", ["mse", "diffusion", "mode"])
def test_checkpoint_round_trip(method, tmp_path):
    policy = get_policy_method(method).train(ENV, demos=4, seed=0, steps=3)
    policy.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["method"] == method
    again = load_policy(tmp_path)
    w = np.tile(envs_point.START_CENTER.astype(np.float32), (3, 2, 1))
    if hasattr(policy, "steps"):
        policy.steps = again.steps = 3
    np.testing.assert_allclose(policy.act(w, _gens(3)), again.act(w, _gens(3)), atol=1e-6)


def _random_mode_policy(cache: bool) -> MoDEPolicy:
    torch.manual_seed(0)
    net = MoDEPolicyNet(4, in_channels=2, image_size=16, patch_size=2, hidden_size=32, depth=2, num_heads=4,
                        num_experts=4, top_k=2)
    torch.nn.init.normal_(net.out.weight, std=0.3)  # the zero-initialised head would make every output equal
    for block in net.blocks:  # spread the routers so different sigmas choose different experts
        torch.nn.init.normal_(block.router[2].weight, std=2.0)
    return MoDEPolicy(net, VESchedule(0.001, 80.0), prediction="edm", n_obs=2, horizon=16, n_action=8, act_dim=2,
                      obs_dim=2, sampler="ddim", steps=10, cache_experts=cache)


def test_mode_fused_experts_equal_routed_and_skip_the_router():
    policy = _random_mode_policy(cache=False)
    w = torch.randn(6, 2, 2) * 0.5
    routed = policy.sample_chunks(w, _gens(6))
    ts = policy.time_grid()[:-1]
    index = policy.net.routing(policy.schedule.network_time(ts).float())["index"]
    assert len({tuple(i.flatten().tolist()) for i in index.transpose(0, 1)}) > 1  # routing varies with sigma
    policy.set_expert_cache(True)
    fused = policy.sample_chunks(w, _gens(6))
    assert (fused - routed).abs().max() < 1e-5
    assert (routed.abs().max()) > 1e-2

    def flops(cache):
        policy.set_expert_cache(cache)
        with FlopCounterMode(display=False) as counter:
            policy.sample_chunks(w, _gens(6))
        return counter.get_total_flops()

    assert flops(True) < flops(False)  # the router MLP runs once per grid, not at every call


def test_mode_cache_follows_the_grid():
    policy = _random_mode_policy(cache=True)
    w = torch.zeros(2, 2, 2)
    policy.sample_chunks(w, _gens(2))
    assert policy.net._cache is not None and len(policy.net._cache["times"]) == 10
    policy.sample_chunks(w, _gens(2), steps=6)
    assert len(policy.net._cache["times"]) == 6
    policy.set_expert_cache(False)
    assert policy.net._cache is None


def test_registry_and_evaluate(tiny_dp):
    assert {"mse", "diffusion", "mode"} <= set(POLICY_METHODS)
    with pytest.raises(ValueError, match="available"):
        get_policy_method("nope")
    tiny_dp.sampler, tiny_dp.steps = "ddim", 2
    summary, results = evaluate(tiny_dp, ENV, range(3))
    assert summary["episodes"] == 3 and all(r.policy_calls >= 1 for r in results)
    assert isinstance(tiny_dp, ChunkDiffusionPolicy)


def test_cli_train_eval_gif_and_errors(tmp_path, capsys):
    out = tmp_path / "mse"
    assert main(["policy", "train", "--env", "point", "--method", "mse", "--out", str(out), "--steps", "5",
                 "--demos", "4", "--no-progress"]) == 0
    gif, js = tmp_path / "ep.gif", tmp_path / "ep.json"
    assert main(["policy", "eval", "--policy", str(out), "--episodes", "3", "--gif", str(gif), "--json", str(js),
                 "--no-progress"]) == 0
    assert gif.read_bytes()[:3] == b"GIF"
    assert json.loads(js.read_text())["summary"]["episodes"] == 3
    capsys.readouterr()
    bad = [["policy", "train", "--method", "mse", "--out", str(out)],  # exists, no --overwrite
           ["policy", "train", "--method", "nope", "--out", str(tmp_path / "x")],
           ["policy", "train", "--env", "CartPole-v9", "--method", "mse", "--out", str(tmp_path / "x")],
           ["policy", "eval", "--policy", str(out), "--sampler", "ddim"],
           ["policy", "eval", "--policy", str(tmp_path / "missing")],
           ["policy", "eval", "--policy", str(out), "--gif", str(gif)]]
    for argv in bad:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:")
