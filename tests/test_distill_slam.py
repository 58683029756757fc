"""SLAM (Xu et al. 2024, arXiv 2404.13903): the gamma wrapper starts as the teacher, the sub-path algebra, the exact
boundary condition, the loss, and the direction of effect on the ring."""

import pytest
import torch

from diffusekit import zoo
from diffusekit.core import VESchedule, VPLinear, make_grid, prior_sample
from diffusekit.core.denoiser import NetworkDenoiser
from diffusekit.data import load_dataset, ring8_mixture
from diffusekit.methods.distill.consistency import (ConsistencyDenoiser, ConsistencyDistillationLoss, consistency_grid,
                                                    consistency_sample)
from diffusekit.methods.distill.slam import (GammaConditionedNet, SlamDenoiser, SlamDistillationLoss, slam_distill,
                                             slam_native_ts, subpath_point)
from diffusekit.metrics import gmm_nll
from diffusekit.nets.mlp import MLPDenoiserNet
from diffusekit.nets.unet import UNet
from diffusekit.samplers import sample_ddim
from diffusekit.training.trainer import TrainConfig


def _random_gamma_net(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    net = GammaConditionedNet(MLPDenoiserNet(2, hidden=32, depth=1), gamma_dim=8).to(dtype)
    with torch.no_grad():
        for p in net.parameters():  # no zero-initialised layer, the gamma projection included
            p.copy_(torch.randn_like(p))
    return net.requires_grad_(False)


def test_wrapper_starts_as_the_teacher_and_keeps_its_state_dict():
    teacher = zoo.load("toy_ring8")
    net = GammaConditionedNet(teacher.net)
    assert set(net.state_dict()) == {f"net.{k}" for k in teacher.net.state_dict()} | {"cond_proj.weight"}
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(1.0, 900.0, 8)
    with torch.no_grad():
        want = teacher.net(x, t)
        for gamma in (None, 0.0, 0.37, torch.rand(8, generator=torch.Generator().manual_seed(1))):
            assert torch.equal(net(x, t, gamma=gamma), want)
        # a nonzero projection makes gamma matter, and leaves no hook behind
        net.cond_proj.weight.normal_()
        assert float((net(x, t, gamma=0.2) - net(x, t, gamma=0.9)).abs().max()) > 1e-3
    assert not teacher.net.embed.mlp._forward_pre_hooks
    # gamma = 1 folds into the time MLP's first bias: an ordinary network with the base layout
    folded = net.fold(1.0)
    assert type(folded) is type(teacher.net) and set(folded.state_dict()) == set(teacher.net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(folded(x, t), net(x, t), rtol=1e-5, atol=1e-5)
        assert float((folded(x, t) - want).abs().max()) > 1e-3
    assert torch.equal(teacher.net(x, t), want)
    unet = UNet(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, image_size=8, num_classes=3)
    gu = GammaConditionedNet(unet)
    xi = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(gu(xi, torch.tensor([5.0, 500.0]), class_labels=torch.tensor([0, 2]), gamma=0.5),
                           unet(xi, torch.tensor([5.0, 500.0]), class_labels=torch.tensor([0, 2])))
    with pytest.raises(ValueError, match="gamma must lie"):
        net(x, t, gamma=1.5)
    with pytest.raises(ValueError, match="TimeClassEmbedding"):
        GammaConditionedNet(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("schedule", [VPLinear(), VESchedule()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_boundary_condition_is_exact_for_every_gamma(schedule, prediction):
    f = SlamDenoiser(_random_gamma_net(), schedule, prediction)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    t_min = schedule.t_min
    a_min = schedule.alpha(torch.tensor(t_min, dtype=torch.float64))
    gamma = torch.rand(32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.equal(f.denoise_subpath(x, t_min, 0.0, gamma), x / a_min)
    assert torch.equal(f(x, t_min), x / a_min)
    # away from the boundary the network is really there
    t_s, t_e = 0.4 * schedule.t_max, 0.2 * schedule.t_max
    assert float((f.denoise_subpath(x, t_s, t_e, gamma) - x / schedule.alpha(torch.tensor(t_s))).abs().min()) > 1e-4
    with pytest.raises(ValueError, match="t >= t_min"):
        f.denoise_subpath(x, 0.5 * t_min, 0.0, gamma)
    with pytest.raises(ValueError, match="t_end < t_start"):
        f.denoise_subpath(x, t_e, t_s, gamma)


def test_subpath_reading_is_splams_formula():
    """gamma = 1 is the consistency function at t_s; for eps prediction x0_hat = (x_gamma - sigma_gamma eps_hat) /
    alpha_s with sigma_gamma^2 = (sigma_e alpha_s/alpha_e)^2 + gamma^2 (1 - (alpha_s/alpha_e)^2) (SPLAM's
    predicted_origin_splam, VP) and eps_hat the network at the time of that noise level; on forward-noised
    points with shared noise, x_gamma has signal alpha_s x0."""
    sched = VPLinear()
    f = SlamDenoiser(_random_gamma_net(3), sched, "eps")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t_s = torch.full((16,), 0.6, dtype=torch.float64)
    t_e = torch.full((16,), 0.35, dtype=torch.float64)
    gamma = torch.linspace(0, 1, 16, dtype=torch.float64)
    torch.testing.assert_close(f.denoise_subpath(x[-1:], 0.6, 0.35, 1.0), f(x[-1:], 0.6), rtol=0, atol=1e-12)
    a_s, a_e, s_e = sched.alpha(t_s), sched.alpha(t_e), sched.sigma(t_e)
    sig_g = torch.sqrt((s_e * a_s / a_e) ** 2 + gamma**2 * (1 - (a_s / a_e) ** 2))
    torch.testing.assert_close(f.sigma_gamma(t_s, t_e, gamma), sig_g, rtol=1e-12, atol=0)
    torch.testing.assert_close(sig_g[-1], sched.sigma(t_s[0]), rtol=1e-12, atol=0)
    # the network is told the time t_gamma of that noise level, on x rescaled to it
    t_g = sched.t_of_sigma_tilde(sig_g / a_s)
    eps_hat = f.inner.raw(x * (sched.alpha(t_g) / a_s)[:, None], t_g, gamma=gamma)
    x0_hat = (x - sig_g[:, None] * eps_hat) / a_s[:, None]
    a, r = f._coefficients(t_s)
    want = a[:, None] * x / a_s[:, None] + r[:, None] * x0_hat
    torch.testing.assert_close(f.denoise_subpath(x, t_s, t_e, gamma), want, rtol=0, atol=1e-10)
    x0, z = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    x_g = subpath_point(sched, sched.add_noise(x0, t_s, z), sched.add_noise(x0, t_e, z), t_s, t_e, gamma)
    noise_coef = gamma * sched.sigma(t_s) + (1 - gamma) * (a_s / a_e) * s_e
    torch.testing.assert_close(x_g, a_s[:, None] * x0 + noise_coef[:, None] * z, rtol=0, atol=1e-12)


def test_loss_is_consistency_distillation_at_gamma_one_and_replays():
    teacher = zoo.load("toy_ring8")
    ts = consistency_grid(teacher.schedule, 8)
    x = load_dataset("gmm_ring8", "train").x[:32]
    net = GammaConditionedNet(MLPDenoiserNet(2, hidden=256, depth=4))
    net.net.load_state_dict(teacher.net.state_dict())
    loss = SlamDistillationLoss(teacher, ts, teacher.prediction, solver="ddim", mu=0.9)
    got = loss(net, (x,), torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    i = torch.randint(0, 7, (32,), generator=g)
    z = torch.randn(x.shape, generator=g, dtype=x.dtype)
    gamma = torch.rand(32, generator=g, dtype=torch.float64)
    t, t_e = ts[i], ts[i + 1]
    sched = teacher.schedule
    x_s = sched.add_noise(x, t, z)
    with torch.no_grad():
        cd = ConsistencyDenoiser(teacher)  # the zero-initialised student and its EMA target are the teacher
        x_e = sample_ddim_per_sample(teacher, x_s, t, t_e)
        target = cd(x_e, t_e)
        pred = SlamDenoiser(net, sched, "v", t_min=float(ts[-1])).denoise_subpath(
            subpath_point(sched, x_s, x_e, t, t_e, gamma), t, t_e, gamma)
    torch.testing.assert_close(got.detach(), ((pred - target) ** 2).mean(1), rtol=1e-4, atol=1e-6)
    assert got.requires_grad and got.shape == (32,)
    # the gamma projection gets a gradient from the first step on
    got.mean().backward()
    assert float(net.cond_proj.weight.grad.abs().max()) > 0


def test_initial_loss_on_an_eps_teacher_is_of_consistency_distillations_order():
    """The zero-initialised student is the teacher, so on the digits teacher (eps prediction, VP discrete linear,
    1/alpha(t_max) ~ 156) its initial SLAM loss is a teacher-consistency error like CD's on the same batch and
    draws (same i and z). Reading eps_hat at sigma_gamma from a network told t_s made it ~1000x CD's (~70)."""
    teacher = zoo.load("digits_unet")
    ts = consistency_grid(teacher.schedule, 18)
    data = load_dataset("digits", "train")
    x, y = data.x[:128], data.y[:128]
    slam_loss = SlamDistillationLoss(teacher, ts, teacher.prediction, solver="ddim")
    cd_loss = ConsistencyDistillationLoss(teacher, ts, teacher.prediction, solver="ddim")
    with torch.no_grad():
        slam = slam_loss(GammaConditionedNet(teacher.net), (x, y), torch.Generator().manual_seed(0)).mean()
        cd = cd_loss(teacher.net, (x, y), torch.Generator().manual_seed(0)).mean()
    print(f"initial loss SLAM {float(slam):.4f}, CD {float(cd):.4f}")
    assert float(slam) < 5.0 * float(cd), (float(slam), float(cd))


def sample_ddim_per_sample(teacher, x, t, t_next):
    return torch.cat([sample_ddim(teacher, x[k:k + 1], torch.stack([t[k], t_next[k]])) for k in range(len(x))])


def test_config_round_trip_and_native_sampling():
    teacher = zoo.load("toy_ring8")
    ts = consistency_grid(teacher.schedule, 10)
    assert slam_native_ts(teacher.schedule, ts, 1) == [float(ts[0])]
    two = slam_native_ts(teacher.schedule, ts, 2)
    assert two[0] == teacher.schedule.t_max and two[0] > two[1] > float(ts[-1])
    assert len(set(slam_native_ts(teacher.schedule, ts, 9))) == 9
    with pytest.raises(ValueError, match="steps must be"):
        slam_native_ts(teacher.schedule, ts, 10)
    f = SlamDenoiser(_random_gamma_net(5, torch.float32), teacher.schedule, "v", t_min=float(ts[-1]))
    cfg = f.to_config()
    import json
    cfg = json.loads(json.dumps(cfg))
    base = MLPDenoiserNet(2, hidden=32, depth=1)
    g = SlamDenoiser.from_config(base, teacher.schedule, cfg)
    g.net.load_state_dict(f.net.state_dict())
    x = torch.randn(8, 2)
    torch.testing.assert_close(g(x, 0.5), f(x, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(g.denoise_subpath(x, 0.5, 0.3, 0.4), f.denoise_subpath(x, 0.5, 0.3, 0.4), rtol=0,
                               atol=0)
    with pytest.raises(ValueError, match="SLAM"):
        SlamDenoiser.from_config(base, teacher.schedule, {"kind": "boot"})
    with pytest.raises(ValueError, match="GammaConditionedNet"):
        SlamDenoiser(base, teacher.schedule, "v")
    with pytest.raises(ValueError, match="training data"):
        slam_distill(teacher, None, TrainConfig(steps=1, batch_size=8))
    with pytest.raises(ValueError, match="NetworkDenoiser"):
        slam_distill(ring8_mixture().denoiser(VPLinear()), torch.zeros(16, 2), TrainConfig(steps=1, batch_size=8))
    assert isinstance(f.inner, NetworkDenoiser)


def test_slam_beats_teacher_ddim_at_one_and_two_steps():
    """SLAM of the shipped ring teacher (v-prediction, VPLinear): N = 10 Karras points, DDIM teacher step
    (SPLAM's), L2, target EMA mu = 0.95, gamma ~ U(0, 1), 300 updates. From the same x_T, the 1-step sample is
    closer to the teacher's 100-step DDIM sample, and likelier under the true mixture, than the teacher's 1-step
    DDIM; the 2-step sample (Alg. 1, re-noised at the native tau) is likelier than the teacher's 2-step DDIM."""
    torch.manual_seed(0)
    teacher = zoo.load("toy_ring8")
    sched = teacher.schedule
    cfg = TrainConfig(steps=300, batch_size=128, lr=1e-3, warmup_steps=0, grad_clip=1.0, ema_decay=None, seed=0,
                      progress=False)
    r = slam_distill(teacher, load_dataset("gmm_ring8", "train").x, cfg, n_points=10, steps=2)
    assert len(r.history["loss"]) == cfg.steps and len(r.ts) == 10
    assert r.native_sampling["sampler"] == "consistency" and r.native_sampling["steps"] == 2
    ts_2 = r.native_sampling["ts"]
    assert len(ts_2) == 3 and ts_2[0] == sched.t_max and ts_2[-1] == 0.0
    # the sampling student is a plain consistency function over an ordinary MLP (gamma = 1 folded in)
    assert type(r.model) is ConsistencyDenoiser and type(r.model.net) is MLPDenoiserNet
    assert set(r.model.net.state_dict()) == set(teacher.net.state_dict())
    mixture = ring8_mixture()
    x_T = prior_sample(sched, (1000, 2), torch.Generator().manual_seed(123))
    with torch.no_grad():
        ref = sample_ddim(teacher, x_T, make_grid("logsnr", sched, 100, t_end=0.0))
        one = consistency_sample(r.model, x_T, [sched.t_max])
        torch.testing.assert_close(one, r.slam(x_T, sched.t_max), rtol=1e-4, atol=1e-4)
        two = consistency_sample(r.model, x_T, ts_2[:-1], generator=torch.Generator().manual_seed(5))
        ddim1 = sample_ddim(teacher, x_T, make_grid("logsnr", sched, 1, t_end=0.0))
        ddim2 = sample_ddim(teacher, x_T, make_grid("logsnr", sched, 2, t_end=0.0))
    err_1, err_t1 = float((one - ref).norm(dim=1).mean()), float((ddim1 - ref).norm(dim=1).mean())
    nll_1, nll_t1 = gmm_nll(one.double(), mixture), gmm_nll(ddim1.double(), mixture)
    nll_2, nll_t2 = gmm_nll(two.double(), mixture), gmm_nll(ddim2.double(), mixture)
    print(f"SLAM 1 step err {err_1:.3f} (DDIM {err_t1:.3f}), NLL {nll_1:.2f} (DDIM {nll_t1:.2f}); "
          f"2 steps NLL {nll_2:.2f} (DDIM {nll_t2:.2f}); teacher 100 steps {gmm_nll(ref.double(), mixture):.2f}")
    assert err_1 < 0.5 * err_t1, (err_1, err_t1)
    assert nll_1 < nll_t1 - 20.0, (nll_1, nll_t1)
    assert nll_2 < nll_t2 - 20.0, (nll_2, nll_t2)
