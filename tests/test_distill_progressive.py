"""Progressive distillation (Salimans & Ho 2022) and ProDiff's round: exact target, direction of effect."""

import pytest
import torch

from diffusekit import zoo
from diffusekit.core import VPLinear, make_grid, prior_sample
from diffusekit.core.denoiser import NetworkDenoiser
from diffusekit.data import load_dataset, ring8_mixture
from diffusekit.methods.distill import (ProgressiveDistillationLoss, ddim_step, prodiff_distill,
                                        progressive_distill, progressive_target, truncated_snr_weight)
from diffusekit.metrics import gmm_nll
from diffusekit.samplers import sample_ddim
from diffusekit.training.trainer import TrainConfig


def _exact(schedule=None):
    schedule = schedule or VPLinear()
    return ring8_mixture().denoiser(schedule)


@pytest.mark.parametrize("times", [(1.0, 0.6, 0.3), (0.5, 0.2, 0.05), (0.3, 0.1, 0.0)])
def test_target_one_student_step_reproduces_two_teacher_steps(times):
    teacher = _exact()
    t, t_mid, t_next = times
    z = prior_sample(teacher.schedule, (64, 2), torch.Generator().manual_seed(0), dtype=torch.float64) \
        * float(teacher.schedule.sigma(t)) + float(teacher.schedule.alpha(t)) * 0.5
    target = progressive_target(teacher, z, t, t_mid, t_next)
    # two teacher DDIM steps through the shared sampler, and one student DDIM step that denoises to x~
    two_teacher = sample_ddim(teacher, z, torch.tensor([t, t_mid, t_next], dtype=torch.float64))
    one_student = ddim_step(z, target, torch.tensor(t, dtype=torch.float64), torch.tensor(t_next, dtype=torch.float64),
                            teacher.schedule)
    torch.testing.assert_close(one_student, two_teacher, rtol=0, atol=1e-12)
    # the target differs from the teacher's own one-step x0_hat: the two-step path bends
    assert float((target - teacher(z, t)).abs().max()) > 1e-3
    if t_next == 0.0:  # sigma'' = 0: x~ is the teacher's x0_hat at the midpoint
        z_mid = sample_ddim(teacher, z, torch.tensor([t, t_mid], dtype=torch.float64))
        torch.testing.assert_close(target, teacher(z_mid, t_mid), rtol=0, atol=1e-12)


def test_target_per_sample_times_match_scalar_times():
    teacher = _exact()
    ts = make_grid("logsnr", teacher.schedule, 8, t_end=0.0)
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    i = torch.arange(4).repeat(2)
    batched = progressive_target(teacher, z, ts[2 * i], ts[2 * i + 1], ts[2 * i + 2])
    for k in range(8):
        one = progressive_target(teacher, z[k:k + 1], ts[2 * i[k]], ts[2 * i[k] + 1], ts[2 * i[k] + 2])
        torch.testing.assert_close(batched[k:k + 1], one, rtol=0, atol=1e-12)


def test_truncated_snr_weight():
    s = VPLinear()
    t = torch.tensor([0.05, 0.3, 0.9], dtype=torch.float64)
    snr = s.snr(t)
    assert snr[0] > 1 and snr[2] < 1
    torch.testing.assert_close(truncated_snr_weight(t, s), torch.stack([snr[0], snr[1].clamp(min=1), snr[2] * 0 + 1]))


def test_loss_is_the_weighted_x_error_of_the_student():
    teacher = zoo.load("toy_ring8")
    ts = make_grid("logsnr", teacher.schedule, 4, t_end=0.0)
    x = load_dataset("gmm_ring8", "train").x[:32]
    for kind in ("snr_trunc", "l1"):
        loss = ProgressiveDistillationLoss(teacher, ts, teacher.prediction, loss=kind)
        got = loss(teacher.net, (x,), torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(3)  # replay the loss's draws
        i = torch.randint(0, 2, (32,), generator=g)
        eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
        t = ts[2 * i]
        z = teacher.schedule.add_noise(x, t, eps)
        with torch.no_grad():
            target = progressive_target(teacher, z, t, ts[2 * i + 1], ts[2 * i + 2])
            err = teacher(z, t) - target
        w = truncated_snr_weight(t, teacher.schedule).float()
        want = err.abs().mean(1) if kind == "l1" else (err**2).mean(1) * w
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-7)
        assert got.shape == (32,) and bool((got > 0).all())


def test_bad_inputs():
    teacher = zoo.load("toy_ring8")
    ts = make_grid("logsnr", teacher.schedule, 3, t_end=0.0)
    with pytest.raises(ValueError, match="even number"):
        ProgressiveDistillationLoss(teacher, ts, "v")
    with pytest.raises(ValueError, match="unknown distillation loss"):
        ProgressiveDistillationLoss(teacher, make_grid("logsnr", teacher.schedule, 4), "v", loss="l2")
    cfg = TrainConfig(steps=1, batch_size=8)
    with pytest.raises(ValueError, match="power of two"):
        progressive_distill(teacher, make_grid("logsnr", teacher.schedule, 12), torch.zeros(16, 2), cfg)
    with pytest.raises(ValueError, match="NetworkDenoiser"):
        progressive_distill(_exact(), make_grid("logsnr", VPLinear(), 4), torch.zeros(16, 2), cfg)


def _traj_err(a, b):
    return float((a - b).norm(dim=1).mean())


CFG = TrainConfig(steps=100, batch_size=128, lr=2e-4, warmup_steps=0, grad_clip=1.0, ema_decay=None, seed=0,
                  progress=False)


def test_progressive_students_beat_teacher_ddim_at_equal_steps():
    """8 -> 4 -> 2 -> 1 on the shipped ring teacher (v-prediction, VPLinear), 100 updates a round. From the
    same x_T, the student's samples are closer to the teacher's 200-step DDIM samples, and likelier under the
    true mixture, than the teacher's own DDIM at the student's step count."""
    torch.manual_seed(0)
    teacher = zoo.load("toy_ring8")
    sched = teacher.schedule
    ts = make_grid("logsnr", sched, 8, t_end=0.0)
    rounds = progressive_distill(teacher, ts, load_dataset("gmm_ring8", "train").x, CFG, final_steps=1)
    assert [r.steps for r in rounds] == [4, 2, 1]
    assert all(len(r.history["loss"]) == CFG.steps for r in rounds)
    torch.testing.assert_close(rounds[-1].ts, ts[::8], rtol=0, atol=0)
    mixture = ring8_mixture()
    x_T = prior_sample(sched, (2000, 2), torch.Generator().manual_seed(123))
    with torch.no_grad():
        ref = sample_ddim(teacher, x_T, make_grid("logsnr", sched, 200, t_end=0.0))
        for r in rounds[1:]:  # 2 and 1 steps
            student = sample_ddim(r.student, x_T, r.ts)
            plain = sample_ddim(teacher, x_T, r.ts)
            err_s, err_t = _traj_err(student, ref), _traj_err(plain, ref)
            nll_s, nll_t = gmm_nll(student.double(), mixture), gmm_nll(plain.double(), mixture)
            # measured (seed 0): 2 steps err 0.27 vs 0.46, NLL 4.5 vs 8.1; 1 step err 0.37 vs 1.72, NLL 6.8 vs 65
            assert err_s < 0.75 * err_t, (r.steps, err_s, err_t)
            assert nll_s < nll_t - 2.0, (r.steps, nll_s, nll_t)


class _X0Net(torch.nn.Module):
    """An x0-predicting network (ProDiff's parameterisation) made from a v-predicting one: outputs x0_hat."""

    def __init__(self, denoiser: NetworkDenoiser):
        super().__init__()
        self.inner = denoiser.net
        self.schedule = denoiser.schedule

    def forward(self, x_in, t_in):
        t = t_in.double() / 1000.0  # VPLinear's network time is 1000 t
        return NetworkDenoiser(self.inner, self.schedule, "v").denoise(x_in, t)


def test_prodiff_round_beats_teacher_ddim_at_half_steps():
    """ProDiff: a 4-step x0-prediction teacher to a 2-step student on the same grid, L1 loss on x0."""
    torch.manual_seed(0)
    v_teacher = zoo.load("toy_ring8")
    sched = v_teacher.schedule
    teacher = NetworkDenoiser(_X0Net(v_teacher), sched, "x0", scale_input=False)
    ts = make_grid("logsnr", sched, 4, t_end=0.0)
    x_T = prior_sample(sched, (2000, 2), torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(teacher(x_T, 0.5), v_teacher(x_T, 0.5))
    r = prodiff_distill(teacher, ts, load_dataset("gmm_ring8", "train").x, CFG)
    assert r.student.prediction == "x0" and r.steps == 2
    torch.testing.assert_close(r.ts, ts[::2], rtol=0, atol=0)
    with torch.no_grad():
        ref = sample_ddim(teacher, x_T, ts)
        err_s = _traj_err(sample_ddim(r.student, x_T, r.ts), ref)
        err_t = _traj_err(sample_ddim(teacher, x_T, r.ts), ref)
    assert err_s < 0.5 * err_t, (err_s, err_t)
