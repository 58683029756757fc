"""Toy driving scenes, k-means anchors, DiffusionDrive's truncated forward process, loss and decoder."""

import json

import numpy as np
import pytest
import torch

from diffusekit.domains.control.drive_anchors import cluster_anchors
from diffusekit.domains.control.drive_diffusion import (
    closest_anchor, diffusiondrive_loss, drive_schedule, load_diffusiondrive, plan, plan_batch, sigmoid_focal_loss,
    t_of, train_diffusiondrive, truncated_forward,
)
from diffusekit.domains.control.drive_env import (
    MANEUVERS, MAX_AGENTS, classify_plans, generate_scenes, maneuver_trajectory,
)
from diffusekit.domains.control.drive_nets import CascadeDiffusionDecoder, SceneTensors, normalise

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes(300, seed=0)


def test_scenes_are_deterministic_under_a_seed():
    a, b, c = generate_scenes(20, 5), generate_scenes(20, 5), generate_scenes(20, 6)
    for s, t in zip(a, b):
        assert s.valid == t.valid and np.array_equal(s.expert, t.expert) and np.array_equal(s.agents, t.agents)
    assert any(not np.array_equal(s.expert, t.expert) for s, t in zip(a, c))


def test_expert_plans_are_valid_and_valid_sets_depend_on_the_scene(scenes):
    for s in scenes:
        assert not s.collides(s.expert) and not s.off_road(s.expert)
        assert s.expert_maneuver in s.valid
        for m in s.valid:  # every listed manoeuvre is drivable in this scene
            assert s.is_valid_plan(s.canonical[m])
        left_lanes = s.n_lanes - 1 - s.ego_lane
        assert ("left" in s.valid) <= (left_lanes > 0) and ("right" in s.valid) <= (s.ego_lane > 0)
        assert ("slow" in s.valid) <= (s.lead_speed > 0)
        if "keep" not in s.valid and s.lead_speed > 0:  # keeping the lane must hit the slow lead car
            assert s.collides(s.canonical["keep"]) or s.off_road(s.canonical["keep"])
    valid_sets = {s.valid for s in scenes}
    assert len(valid_sets) >= 6
    assert np.mean([len(s.valid) >= 2 for s in scenes]) > 0.5
    assert {s.expert_maneuver for s in scenes} == set(MANEUVERS)


def test_collision_and_off_road_checks_fire(scenes):
    s = next(s for s in scenes if s.lead_speed > 0 and "keep" not in s.valid)
    assert s.collides(s.canonical["keep"])
    leftmost = next(s for s in scenes if s.ego_lane == s.n_lanes - 1)
    assert leftmost.off_road(maneuver_trajectory("left", leftmost.speed))


def test_classify_plans_recovers_each_manoeuvre(scenes):
    s = scenes[0]
    plans = np.stack([s.canonical[m] for m in MANEUVERS] + [s.canonical["keep"] + [0.0, 30.0]])
    assert classify_plans(s, plans).tolist() == [0, 1, 2, 3, -1]


@pytest.mark.filterwarnings("ignore:.*not having a spec.*:UserWarning")  # check_env without gymnasium.make
def test_gym_env_reset_step_render():
    from diffusekit.domains.control.drive_env import DriveEnv

    env = DriveEnv()
    obs, info = env.reset(seed=3)
    obs2, info2 = DriveEnv().reset(seed=3)
    assert np.array_equal(obs, obs2) and env.observation_space.contains(obs)
    scene = env.scene
    assert info["valid"] == scene.valid and np.array_equal(info["expert"], scene.expert)
    _, reward, terminated, truncated, step_info = env.step(scene.expert.astype(np.float32))
    assert terminated and not truncated and not step_info["collision"] and reward > 0.5
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    from gymnasium.utils.env_checker import check_env

    check_env(DriveEnv(), skip_render_check=False)


def test_cluster_anchors_recovers_planted_clusters_deterministically():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (5, 8, 2))
    data = np.concatenate([c + rng.normal(0, 0.1, (40, 8, 2)) for c in centres])
    rng.shuffle(data)
    anchors = cluster_anchors(data, 5, seed=1)
    assert anchors.shape == (5, 8, 2)
    dist = np.linalg.norm(anchors[:, None] - centres[None], axis=-1).mean(-1)  # (5, 5)
    assert sorted(dist.argmin(1).tolist()) == list(range(5)) and dist.min(1).max() < 0.1
    assert np.array_equal(anchors, cluster_anchors(data, 5, seed=1))
    with pytest.raises(ValueError):
        cluster_anchors(data[:3], 5)


def test_truncated_forward_is_the_anchor_at_t0_and_matches_the_schedule():
    sched = drive_schedule()
    anchors = torch.rand(20, 8, 2, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4000, 20, 8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0 = truncated_forward(anchors, torch.zeros(4000, dtype=torch.float64), eps[:, :, :, :], sched)
    assert torch.equal(x0, anchors.expand_as(x0))
    betas = torch.linspace(1e-4**0.5, 0.02**0.5, 1000, dtype=torch.float64) ** 2
    for n in (8, 49):
        abar = torch.cumprod(1 - betas, 0)[n]
        x = truncated_forward(anchors, t_of(sched, torch.full((4000,), n)), eps, sched)
        resid = x - abar.sqrt() * anchors
        assert torch.allclose(resid, (1 - abar).sqrt() * eps, atol=1e-12)  # exactly the noised anchor
        assert abs(resid.std().item() / (1 - abar).sqrt().item() - 1) < 0.01
    assert 0.02 < (1 - torch.cumprod(1 - betas, 0)[8]).sqrt() < 0.04  # "truncated": tiny noise at t = 8


def test_focal_loss_and_closest_anchor():
    z, y = torch.tensor([3.0, -3.0, 0.0]), torch.tensor([1.0, 0.0, 1.0])
    fl = sigmoid_focal_loss(z, y)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    assert torch.all(fl < ce) and torch.allclose(fl[2], 0.25 * 0.5**2 * ce[2])
    anchors = torch.stack([torch.zeros(8, 2), torch.ones(8, 2), 5 * torch.ones(8, 2)])
    assert closest_anchor(anchors, torch.stack([0.9 * torch.ones(8, 2), 4 * torch.ones(8, 2)])).tolist() == [1, 2]


def test_decoder_shapes_and_padding_mask(scenes):
    torch.manual_seed(0)
    net = CascadeDiffusionDecoder(d=32, heads=4, layers=2).eval()
    sub = scenes[:6]
    scene = SceneTensors.from_scenes(sub)
    points = torch.randn(6, 20, 8, 2)
    trajs, logits = net(points, torch.full((6,), 10.0), scene)
    assert len(trajs) == 2 and trajs[0].shape == (6, 20, 8, 2) and logits[1].shape == (6, 20)
    # padded agent slots are ignored: changing their (masked) features changes nothing
    changed = scene._replace(agents=torch.where(scene.agent_mask[..., None] > 0, scene.agents, 99.0))
    assert (scene.agent_mask < 1).any() and scene.agents.shape[1] == MAX_AGENTS
    trajs2, logits2 = net(points, torch.full((6,), 10.0), changed)
    assert torch.allclose(trajs[-1], trajs2[-1], atol=1e-5) and torch.allclose(logits[-1], logits2[-1], atol=1e-5)
    # a real agent does matter
    moved = scene._replace(agents=scene.agents + 0.5 * scene.agent_mask[..., None])
    assert not torch.allclose(net(points, torch.full((6,), 10.0), moved)[0][-1], trajs[-1], atol=1e-4)
    # the loss is per example and finite
    loss = diffusiondrive_loss(trajs, logits, torch.randn(6, 8, 2), torch.zeros(6, dtype=torch.long))
    assert loss.shape == (6,) and torch.isfinite(loss).all()


def test_train_plan_load_round_trip_and_two_network_calls(scenes):
    model = train_diffusiondrive(scenes[:100], steps=3, seed=0, k=6, batch_size=8, d=32)
    again = train_diffusiondrive(scenes[:100], steps=3, seed=0, k=6, batch_size=8, d=32)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    trajs, scores = plan(model, scenes[0], torch.Generator().manual_seed(0))
    assert trajs.shape == (6, 8, 2) and scores.shape == (6,) and np.all((scores >= 0) & (scores <= 1))
    from safetensors.torch import load, save

    loaded = load_diffusiondrive(load(save(model.state_dict())), json.loads(json.dumps(model.config)))
    trajs2, _ = plan(loaded, scenes[0], torch.Generator().manual_seed(0))
    assert np.array_equal(trajs, trajs2)
    calls = []
    hook = model.decoder.register_forward_hook(lambda *a: calls.append(1))
    trace = []
    out, _ = plan_batch(model, SceneTensors.from_scenes(scenes[:3]), torch.Generator().manual_seed(0), trace=trace)
    hook.remove()
    assert len(calls) == 2
    assert len(trace) == 3 and torch.equal(trace[-1][1], out) and trace[0][2] is None
    # the noised start is within a few sigma_8 (about 0.03 in normalised units) of the anchors
    start_norm = normalise(trace[0][1], model.lo, model.hi)
    anchors_norm = normalise(model.anchors, model.lo, model.hi)
    assert (start_norm - anchors_norm).abs().max() < 0.2


def test_denoising_frames_make_a_gif(scenes, tmp_path):
    from diffusekit.domains.control.drive_eval import denoising_frames
    from diffusekit.plotting import save_gif

    model = train_diffusiondrive(scenes[:60], steps=1, seed=0, k=4, batch_size=4, d=16)
    frames = denoising_frames(model, scenes[:1], torch.Generator().manual_seed(0))
    assert len(frames) == 3 and frames[0].dtype == np.uint8
    save_gif(frames, tmp_path / "drive.gif", fps=1)
    assert (tmp_path / "drive.gif").stat().st_size > 0


class _OraclePlanner:
    """Plans the scene's valid canonical manoeuvres (padded with the first), scores the expert's highest."""

    name, nfe = "oracle", 0

    def __init__(self, scenes, collapse=False):
        self.scenes, self.collapse, self.i = scenes, collapse, 0

    def plan_batch(self, tensors, generator=None):
        out, scores = [], []
        for s in self.scenes[self.i:self.i + tensors.ego.shape[0]]:
            names = [s.valid[0]] * 4 if self.collapse else (list(s.valid) + [s.valid[0]] * 4)[:4]
            out.append(np.stack([s.canonical[m] for m in names]))
            scores.append([1.0 if m == s.expert_maneuver else 0.0 for m in names])
        self.i += tensors.ego.shape[0]
        return torch.tensor(np.stack(out)), torch.tensor(scores)


def test_evaluate_drive_metrics_on_oracle_and_collapsed_planners(scenes):
    from diffusekit.domains.control.drive_eval import evaluate_drive

    sub = scenes[:40]
    oracle = evaluate_drive(_OraclePlanner(sub), scenes=sub, batch_size=16)
    assert oracle["coverage"] == 1.0 and oracle["collision"] == 0 and oracle["off_road"] == 0
    assert oracle["plans_valid"] == 1.0 and oracle["min_ade"] < 1.0 and oracle["top1_ade"] < 1.0
    collapsed = evaluate_drive(_OraclePlanner(sub, collapse=True), scenes=sub, batch_size=16)
    assert collapsed["diversity"] == 0 and collapsed["coverage"] < oracle["coverage"]
    assert collapsed["modes_covered"] == 1.0


def test_vanilla_policy_plans_with_the_declared_network_calls(scenes):
    from diffusekit.domains.control.drive_vanilla import train_vanilla_policy, vanilla_plan_batch

    policy = train_vanilla_policy(scenes[:50], steps=2, seed=0, batch_size=8, d=32)
    calls = []
    hook = policy.net.register_forward_hook(lambda *a: calls.append(1))
    trajs, scores = vanilla_plan_batch(policy, SceneTensors.from_scenes(scenes[:3]), torch.Generator().manual_seed(0),
                                       steps=5, k=4)
    hook.remove()
    assert trajs.shape == (3, 4, 8, 2) and scores.shape == (3, 4) and len(calls) == 5


def test_noise_free_ablation_plans_deterministically(scenes):
    model = train_diffusiondrive(scenes[:60], steps=2, seed=0, k=4, batch_size=4, d=16, noise=False)
    assert model.config["truncation_steps"] == 0 and model.config["inference_noise_step"] == 0
    tensors = SceneTensors.from_scenes(scenes[:2])
    a, _ = plan_batch(model, tensors, torch.Generator().manual_seed(0), steps=1)
    b, _ = plan_batch(model, tensors, torch.Generator().manual_seed(1), steps=1)
    assert torch.equal(a, b)
