"""BOOT (Gu et al. 2023, arXiv 2306.05544): the Signal-ODE step is DDIM, the student starts on the boundary, the
loss is the paper's bootstrapping + boundary loss, training never sees data, and one step beats teacher DDIM."""

import inspect
import json

import pytest
import torch

from diffusekit import zoo
from diffusekit.core import VPLinear, make_grid, prior_sample
from diffusekit.data import ring8_mixture
from diffusekit.methods.distill import boot as boot_module
from diffusekit.methods.distill.boot import (BootGenerator, BootLoss, boot_distill, default_read,
                                             signal_ddim_step)
from diffusekit.methods.distill.progressive import ddim_step
from diffusekit.metrics import gmm_nll
from diffusekit.nets.mlp import MLPDenoiserNet
from diffusekit.samplers import sample_ddim
from diffusekit.training.trainer import TrainConfig, Trainer


def test_signal_step_is_the_ddim_step_in_signal_coordinates():
    """x_t = alpha_t y_t + sigma_t eps: one DDIM step of x from t to s with x0_hat = f, read back as
    y_s = (x_s - sigma_s eps)/alpha_s, equals r y_t + (1 - r) f; at s = 0 it is f."""
    sched = VPLinear()
    g = torch.Generator().manual_seed(0)
    y_t, f, eps = (torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([1.0, 0.8, 0.5, 0.3, 0.1, 0.02], dtype=torch.float64)
    s = torch.tensor([0.9, 0.5, 0.0, 0.1, 0.05, 0.0], dtype=torch.float64)
    x_t = sched.alpha(t)[:, None] * y_t + sched.sigma(t)[:, None] * eps
    x_s = ddim_step(x_t, f, t, s, sched)
    y_s = (x_s - sched.sigma(s)[:, None] * eps) / sched.alpha(s)[:, None]
    torch.testing.assert_close(signal_ddim_step(y_t, f, t, s, sched), y_s, rtol=0, atol=1e-12)
    torch.testing.assert_close(signal_ddim_step(y_t, f, t, s, sched)[s == 0], f[s == 0], rtol=0, atol=0)


def test_initial_student_is_the_teacher_at_t_max_and_generator_contract():
    teacher = zoo.load("toy_ring8")
    sched = teacher.schedule
    gen = BootGenerator(teacher.net, sched, teacher.prediction)
    assert gen.read == "v" and default_read("eps") == "x0"
    x_T = prior_sample(sched, (64, 2), torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gen.signal(x_T, sched.t_max), teacher(x_T, sched.t_max), rtol=0, atol=0)
        one = sample_ddim(gen, x_T, torch.tensor([sched.t_max, 0.0], dtype=torch.float64))
        torch.testing.assert_close(one, gen.signal(x_T, 0.0), rtol=0, atol=0)  # one DDIM step = g(eps, 0)
    with pytest.raises(ValueError, match="not a denoiser"):
        gen(x_T, 0.5)
    cfg = json.loads(json.dumps(gen.to_config()))
    net = MLPDenoiserNet(2, hidden=256, depth=4)
    net.load_state_dict(teacher.net.state_dict())
    again = BootGenerator.from_config(net, sched, cfg)
    with torch.no_grad():
        torch.testing.assert_close(again.signal(x_T, 0.3), gen.signal(x_T, 0.3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="BOOT"):
        BootGenerator.from_config(net, sched, {"kind": "slam"})


def test_clip_x0_distills_the_thresholded_teacher(monkeypatch):
    from diffusekit.methods.thresholding import StaticThresholdDenoiser
    losses = []

    class SpyTrainer(Trainer):
        def __init__(self, model, loss_fn, data, config, **kw):
            losses.append(loss_fn)
            super().__init__(model, loss_fn, data, config, **kw)

    monkeypatch.setattr(boot_module, "Trainer", SpyTrainer)
    teacher = zoo.load("toy_ring8")
    cfg = TrainConfig(steps=1, batch_size=8, lr=1e-12, warmup_steps=0, progress=False)
    r = boot_distill(teacher, cfg, shape=(2,), n_steps=2, clip_x0=1.5)
    assert isinstance(losses[0].teacher, StaticThresholdDenoiser) and losses[0].teacher.clip_range == 1.5
    boot_distill(teacher, cfg, shape=(2,), n_steps=2)
    assert type(losses[1].teacher) is type(teacher)
    assert r.generator.net is not teacher.net
    with pytest.raises(ValueError, match="n_steps"):
        boot_distill(teacher, cfg, shape=(2,), n_steps=0)
    with pytest.raises(ValueError, match="NetworkDenoiser"):
        boot_distill(ring8_mixture().denoiser(VPLinear()), cfg, shape=(2,))


def test_loss_is_bootstrapping_plus_boundary():
    teacher = zoo.load("toy_ring8")
    sched = teacher.schedule
    ts = make_grid("logsnr", sched, 4, t_end=0.0)
    loss = BootLoss(teacher, ts, teacher.prediction, shape=(2,))
    got = loss(teacher.net, (torch.zeros(64, 0),), torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(64, 2, generator=g) * sched.prior_std()
    i = torch.randint(-1, 4, (64,), generator=g)
    gen = BootGenerator(teacher.net, sched, teacher.prediction)
    want = torch.empty(64)
    with torch.no_grad():
        for k in range(64):
            xk = x_T[k:k + 1]
            if i[k] < 0:  # boundary: g(eps, t_max) against the teacher at the prior point
                want[k] = ((gen.signal(xk, sched.t_max) - teacher(xk, sched.t_max)) ** 2).mean()
                continue
            t, s = ts[i[k]], ts[i[k] + 1]
            y_t = gen.signal(xk, t)
            x_t = sched.alpha(t) * y_t + sched.sigma(t) * xk / sched.prior_std()
            target = signal_ddim_step(y_t, teacher(x_t, t), t, s, sched)
            want[k] = ((gen.signal(xk, s) - target) ** 2).mean()
    assert bool((i < 0).any()) and bool((i == 3).any())
    torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-7)
    # x-space weighting: the same errors times alpha_s^2 (alpha_0 = 1 on the last step, alpha_T^2 at the boundary)
    weighted = BootLoss(teacher, ts, teacher.prediction, shape=(2,), weighting="x")(
        teacher.net, (torch.zeros(64, 0),), torch.Generator().manual_seed(2))
    s_row = torch.where(i < 0, ts[0], ts[(i + 1).clamp(max=4)])
    torch.testing.assert_close(weighted.detach(), got.detach() * sched.alpha(s_row).float() ** 2, rtol=1e-5,
                               atol=1e-9)
    with pytest.raises(ValueError, match="unknown BOOT weighting"):
        BootLoss(teacher, ts, "v", shape=(2,), weighting="snr")
    with pytest.raises(ValueError, match="t_max"):
        BootLoss(teacher, make_grid("logsnr", sched, 4, t_end=0.0)[1:], "v", shape=(2,))


def test_boot_trains_without_data_and_one_step_beats_teacher_ddim(monkeypatch):
    """BOOT of the shipped ring teacher (v-prediction, VPLinear) on an 8-step log-SNR grid, 200 updates of 128
    noise draws. No data: the function takes none, and the only tensor the Trainer is given has no features.
    From the same x_T, the one-step sample g(eps, 0) is closer to the teacher's 100-step DDIM sample, and far
    likelier under the true mixture, than the teacher's 1-step DDIM."""
    assert "data" not in inspect.signature(boot_distill).parameters
    seen = []

    class SpyTrainer(Trainer):
        def __init__(self, model, loss_fn, data, config, **kw):
            seen.extend(data)
            super().__init__(model, loss_fn, data, config, **kw)

    monkeypatch.setattr(boot_module, "Trainer", SpyTrainer)
    torch.manual_seed(0)
    teacher = zoo.load("toy_ring8")
    sched = teacher.schedule
    cfg = TrainConfig(steps=200, batch_size=128, lr=1e-3, warmup_steps=0, grad_clip=1.0, ema_decay=None, seed=0,
                      progress=False)
    r = boot_distill(teacher, cfg, shape=(2,), n_steps=8)
    assert len(seen) == 1 and seen[0].numel() == 0, [tuple(d.shape) for d in seen]
    assert len(r.history["loss"]) == cfg.steps and r.history["loss"][-1] < 0.1 * r.history["loss"][0]
    assert r.native_sampling == {"sampler": "one_step", "steps": 1, "ts": [1.0, 0.0]}
    mixture = ring8_mixture()
    x_T = prior_sample(sched, (1000, 2), torch.Generator().manual_seed(123))
    with torch.no_grad():
        ref = sample_ddim(teacher, x_T, make_grid("logsnr", sched, 100, t_end=0.0))
        one = sample_ddim(r.generator, x_T, torch.tensor(r.native_sampling["ts"], dtype=torch.float64))
        ddim1 = sample_ddim(teacher, x_T, make_grid("logsnr", sched, 1, t_end=0.0))
    err_1, err_t1 = float((one - ref).norm(dim=1).mean()), float((ddim1 - ref).norm(dim=1).mean())
    nll_1, nll_t1 = gmm_nll(one.double(), mixture), gmm_nll(ddim1.double(), mixture)
    print(f"BOOT 1 step err {err_1:.3f} (DDIM {err_t1:.3f}), NLL {nll_1:.2f} (DDIM {nll_t1:.2f}); "
          f"teacher 100 steps {gmm_nll(ref.double(), mixture):.2f}")
    assert err_1 < 0.5 * err_t1, (err_1, err_t1)
    assert nll_1 < nll_t1 - 20.0, (nll_1, nll_t1)
