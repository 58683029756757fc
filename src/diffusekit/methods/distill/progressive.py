"""Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512) and ProDiff's variant (Huang et al. 2022,
arXiv 2207.06389), over the core and the generic ``Trainer``.

One round distils a teacher Denoiser sampling with deterministic DDIM on a grid of N steps into a student
network (initialised from the teacher's weights) that samples with DDIM on every other point of that grid
(N/2 steps). For a student step t -> t'' with the teacher's midpoint t' in between (Alg. 2 of the paper):

    z_t   = alpha_t x + sigma_t eps                                 (x from the data, eps ~ N(0, I))
    z_t'  = alpha_t' x0_T(z_t, t)    + sigma_t'  eps_T(z_t, t)        (teacher DDIM step t  -> t')
    z_t'' = alpha_t'' x0_T(z_t', t') + sigma_t'' eps_T(z_t', t')      (teacher DDIM step t' -> t'')
    x~    = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)

with eps_T(z, t) = (z - alpha_t x0_T)/sigma_t. x~ is the unique x0_hat for which one DDIM step t -> t'' from
z_t lands on z_t'' (for t'' = 0, sigma = 0, it is z_t'' itself, the teacher's x0_T at t'). The loss is
Salimans & Ho's "truncated SNR" weighting stated in x space,

    L = max(||x0_S - x~||^2, ||eps_S - eps~||^2) = max(SNR(t), 1) ||x0_S - x~||^2     (eq. 9, Sec. 4),

whatever the network predicts (the paper uses x- or v-prediction; eps-prediction is unstable at 1-2 steps),
averaged over the data dimensions. ``progressive_distill`` repeats rounds N -> N/2 -> ... with teacher <-
student, each round a fixed number of optimizer steps (the paper: Adam, lr 5e-5, batch 128, 50k updates per
round, grad-clip 1, no EMA).

ProDiff (Huang et al. 2022, arXiv 2207.06389, Sec. 3.3): the same two-step target, with an x0-predicting
network and an unweighted L1 loss |x0_S - x~|, for a single round (4 -> 2 steps in the TTS paper); the student
keeps the teacher's grid, each student step spanning two teacher steps. ``prodiff_distill`` is that round.
(ProDiff samples the student ancestrally; here the student is a DDIM student like the teacher.)

Times: the finest grid ``ts`` (N + 1 points, N a power of two times the final step count) fixes every round's
grid: round k's teacher samples on ``ts[::2**k]`` and its student on ``ts[::2**(k+1)]``, so the grids are
nested by construction.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ...core._tensor import as_time, per_sample
from ...core.denoiser import Denoiser, NetworkDenoiser
from ...core.grids import check_grid
from ...training.trainer import TrainConfig, Trainer

LOSSES = ("snr_trunc", "l1")


def frozen_teacher(teacher: NetworkDenoiser) -> NetworkDenoiser:
    """A frozen copy of ``teacher`` (its network deep-copied, eval mode, no gradients) for distillation targets,
    so training the student never touches the caller's teacher."""
    return NetworkDenoiser(copy.deepcopy(teacher.net).eval().requires_grad_(False), teacher.schedule,
                           teacher.prediction, scale_input=teacher.scale_input, sigma_data=teacher.sigma_data)


def ddim_step(x: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor, s: torch.Tensor, schedule) -> torch.Tensor:
    """One deterministic DDIM step t -> s (Song et al. 2021, arXiv 2010.02502, eq. 12) with per-sample times:

        x_s = alpha_s x0_hat + sigma_s eps_hat,   eps_hat = (x_t - alpha_t x0_hat) / sigma_t.

    x, x0_hat: (B, ...); t, s: float64 (B,) or scalars. Returns x's dtype.
    """
    a_t, s_t = per_sample(schedule.alpha(t), x), per_sample(schedule.sigma(t), x)
    a_s, s_s = per_sample(schedule.alpha(s), x), per_sample(schedule.sigma(s), x)
    return a_s * x0_hat + s_s * (x - a_t * x0_hat) / s_t


def progressive_target(teacher: Denoiser, z: torch.Tensor, t, t_mid, t_next, **cond) -> torch.Tensor:
    """The distillation target x~ of Salimans & Ho 2022 (arXiv 2202.00512, Alg. 2): two teacher DDIM steps
    t -> t_mid -> t_next from z = z_t, then the x0_hat that makes one DDIM step t -> t_next reach the same point,

        x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t).

    z: (B, ...); t > t_mid > t_next: float64 scalars or (B,). 2 teacher NFE. Returns (B, ...) in z's dtype.
    """
    b = z.shape[0]
    t, t_mid, t_next = (as_time(v, batch=b, device=z.device) for v in (t, t_mid, t_next))
    sched = teacher.schedule
    z_mid = ddim_step(z, teacher.denoise(z, t, **cond), t, t_mid, sched)
    z_next = ddim_step(z_mid, teacher.denoise(z_mid, t_mid, **cond), t_mid, t_next, sched)
    ratio = sched.sigma(t_next) / sched.sigma(t)
    return (z_next - per_sample(ratio, z) * z) / per_sample(sched.alpha(t_next) - ratio * sched.alpha(t), z)


def truncated_snr_weight(t: torch.Tensor, schedule) -> torch.Tensor:
    """max(SNR(t), 1) (float64, like t): Salimans & Ho's "truncated SNR" weighting of an x-space squared error."""
    return torch.clamp(schedule.snr(t), min=1.0)


class ProgressiveDistillationLoss:
    """Per-example loss of one distillation round, usable as a ``Trainer`` loss function.

    ``loss(net, batch, generator) -> Tensor[B]`` with batch = (x,) or (x, labels). For each example a student
    step i ~ U{0..N/2 - 1} is drawn, z_t = alpha_t x + sigma_t eps at t = ts_teacher[2i], and the student
    (``net`` read as ``NetworkDenoiser(net, schedule, prediction)``) at (z_t, t) is compared with
    ``progressive_target`` over t -> ts_teacher[2i + 1] -> ts_teacher[2i + 2]:

    * ``snr_trunc``: max(SNR(t), 1) * mean_j (x0_S - x~)_j^2 (Salimans & Ho 2022);
    * ``l1``: mean_j |x0_S - x~|_j (ProDiff, Huang et al. 2022).

    ``ts_teacher``: the teacher's grid, an even number of steps. The teacher runs without gradients.
    """

    def __init__(self, teacher: Denoiser, ts_teacher, prediction: str, *, loss: str = "snr_trunc",
                 scale_input: bool | None = None, sigma_data: float = 0.5):
        if loss not in LOSSES:
            raise ValueError(f"unknown distillation loss {loss!r}; allowed: {', '.join(LOSSES)}")
        ts = check_grid(ts_teacher, teacher.schedule)
        if (len(ts) - 1) % 2:
            raise ValueError(f"the teacher grid must have an even number of steps to halve; got {len(ts) - 1}")
        self.teacher = teacher
        self.ts_teacher = ts
        self.prediction = prediction
        self.loss = loss
        self.scale_input = scale_input
        self.sigma_data = float(sigma_data)

    @property
    def ts_student(self) -> torch.Tensor:
        return self.ts_teacher[::2]

    def student(self, net: torch.nn.Module) -> NetworkDenoiser:
        return NetworkDenoiser(net, self.teacher.schedule, self.prediction, scale_input=self.scale_input,
                               sigma_data=self.sigma_data)

    def __call__(self, net: torch.nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x = batch[0]
        cond = {"class_labels": batch[1]} if len(batch) > 1 else {}
        b = x.shape[0]
        n_student = (len(self.ts_teacher) - 1) // 2
        i = torch.randint(0, n_student, (b,), generator=generator)
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        ts = self.ts_teacher.to(x.device)
        i = i.to(x.device)
        t, t_mid, t_next = ts[2 * i], ts[2 * i + 1], ts[2 * i + 2]
        sched = self.teacher.schedule
        z = sched.add_noise(x, t, eps)
        with torch.no_grad():
            target = progressive_target(self.teacher, z, t, t_mid, t_next, **cond)
        x0_student = self.student(net).denoise(z, t, **cond)
        if self.loss == "l1":
            return (x0_student - target).abs().flatten(1).mean(1)
        per_example = ((x0_student - target) ** 2).flatten(1).mean(1)
        return per_example * per_sample(truncated_snr_weight(t, sched), per_example)


@dataclass
class DistillRound:
    """One finished round: the student (a NetworkDenoiser, eval mode), its grid, and the training history."""

    student: NetworkDenoiser
    ts: torch.Tensor
    history: dict

    @property
    def steps(self) -> int:
        return len(self.ts) - 1


def distill_round(teacher: NetworkDenoiser, ts_teacher, data, config: TrainConfig, *, loss: str = "snr_trunc",
                  out_dir=None) -> DistillRound:
    """One round N -> N/2: a student initialised from a copy of the teacher's network and prediction type,
    trained by ``Trainer`` with ``ProgressiveDistillationLoss`` for ``config.steps`` optimizer steps on
    ``data`` (a tuple of tensors, (x,) or (x, labels)). Returns the student on ``ts_teacher[::2]``."""
    if not isinstance(teacher, NetworkDenoiser):
        raise ValueError(f"the teacher must be a NetworkDenoiser (its network initialises the student); "
                         f"got {type(teacher).__name__}")
    frozen = frozen_teacher(teacher)
    loss_fn = ProgressiveDistillationLoss(frozen, ts_teacher, teacher.prediction, loss=loss,
                                          scale_input=teacher.scale_input, sigma_data=teacher.sigma_data)
    net = copy.deepcopy(teacher.net).train().requires_grad_(True)
    data = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    trainer = Trainer(net, loss_fn, data, config, out_dir=out_dir,
                      extra_config={"method": "progressive_distillation", "loss": loss,
                                    "ts_teacher": loss_fn.ts_teacher.tolist()})
    history = trainer.fit()
    return DistillRound(loss_fn.student(net.eval()), loss_fn.ts_student, history)


def _halvings(n_start: int, n_end: int) -> int:
    k, n = 0, n_start
    while n > n_end and n % 2 == 0:
        n //= 2
        k += 1
    if n != n_end:
        raise ValueError(f"cannot halve a {n_start}-step grid down to {n_end} steps; the start must be "
                         f"{n_end} times a power of two")
    return k


def progressive_distill(teacher: NetworkDenoiser, ts, data, config: TrainConfig, *, final_steps: int = 1,
                        loss: str = "snr_trunc") -> list[DistillRound]:
    """Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512, Alg. 2): rounds N -> N/2 -> ... ->
    ``final_steps`` on the nested grids ``ts[::2**k]``, each student initialised from (and then replacing) the
    previous teacher, each round ``config.steps`` optimizer steps. ``ts``: the first teacher's grid, with
    N = final_steps * 2^K steps. Returns the rounds in order (the last is the final student)."""
    ts = check_grid(ts, teacher.schedule)
    rounds = []
    for _ in range(_halvings(len(ts) - 1, final_steps)):
        r = distill_round(teacher, ts, data, config, loss=loss)
        rounds.append(r)
        teacher, ts = r.student, r.ts
    return rounds


def prodiff_distill(teacher: NetworkDenoiser, ts, data, config: TrainConfig) -> DistillRound:
    """ProDiff's distillation (Huang et al. 2022, arXiv 2207.06389, Sec. 3.3): one round from an N-step teacher
    to an N/2-step student on the same grid (each student step spans two teacher steps), with the two-step
    target x~ and the L1 loss |x0_S - x~|. ProDiff's networks predict x0 (``teacher.prediction == "x0"``);
    other prediction types are accepted and still trained on the x0 error."""
    return distill_round(teacher, ts, data, config, loss="l1")


__all__ = ["LOSSES", "DistillRound", "ProgressiveDistillationLoss", "ddim_step", "distill_round",
           "prodiff_distill", "progressive_distill", "progressive_target", "truncated_snr_weight"]
