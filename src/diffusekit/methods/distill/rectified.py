"""Rectified flow / reflow (Liu et al. 2022, arXiv 2209.03003) and Rectified Diffusion (Wang et al. 2024,
arXiv 2410.07303) over the core and the generic ``Trainer``; plus a trajectory straightness measure.

Time runs as everywhere in diffusekit: t = 0 is data, t = t_max is noise.

* ``teacher_pairs``: (x_T, x_0) with x_T ~ prior and x_0 = deterministic DDIM of the teacher from x_T on a
  fine grid (the same call as ``sample_ddim``), so the pairs are a deterministic coupling.
* Reflow (Liu et al., Sec. 2.2): on the flow path x_t = (1 - t) x_0 + t x_T, t ~ U(t_min, 1), regress a
  velocity network on the straight-line velocity dx_t/dt = x_T - x_0 (``ReflowLoss``; with independent
  (x_T, x_0) it is 1-RF, with teacher pairs it is reflow). ``reflow`` initialises the student from the teacher
  when the teacher is itself a flow / velocity model, else re-initialises a copy of its architecture (or takes
  ``student_net``).
* Rectified Diffusion (Wang et al. 2024): keep the teacher's own schedule and prediction type and retrain it on
  its own pairs, x_t = alpha_t x_0 + sigma_t x_T with the *paired* noise x_T in place of fresh eps
  (``RectifiedDiffusionLoss``; loss ``"mse"``: squared error in the prediction's own target space, as the
  teacher was trained; ``"pseudo_huber"``: the paper's sqrt((x0_hat - x_0)^2 + c^2) - c on x0). Student
  initialised from the teacher.
* k-step distillation of a reflow model (Liu et al., Sec. 2.3 "distillation"; ``ReflowKStepLoss`` /
  ``reflow_distill_k_step``): draw the reflowed model's own ODE pairs (x_T, x_0 = its fine-grid ODE solution
  from x_T) and retrain it with the reflow loss with t restricted to the start points of the k-step Euler grid,
  t in {1, 1 - 1/k, ..., 1/k}. Its k-step Euler sampler then follows the straight line x_T -> x_0: for a
  perfect student the j-th Euler step from x_{t_j} = (1 - t_j) x_0 + t_j x_T lands exactly on x_{t_{j+1}}.
  (k = 1 is Liu et al.'s one-step distillation with the L2 distance: ||(x_T + (0 - 1) v(x_T, 1)) - x_0||^2.)
* ``straightness`` (Liu et al., Def. 2.4, normalised): for a path x(tau), tau in [0, 1] from noise to data,
  S = int_0^1 ||dx/dtau - (x(1) - x(0))||^2 dtau / ||x(1) - x(0)||^2 per sample, tau linear in the schedule
  time (tau = (t_start - t)/(t_start - t_end)), by finite differences on a recorded trajectory. S = 0 exactly
  for a straight line traversed at constant speed; for the flow schedule tau is Liu et al.'s time. It depends on
  the time parameterisation (a VP path traversed at varying speed scores > 0 even when geometrically straight);
  ``excess_length`` (arc length / chord - 1) is the parameterisation-free geometric curvature.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ...core.denoiser import Denoiser, NetworkDenoiser
from ...core.grids import check_grid
from ...core.noise import prior_sample
from ...core.predictions import prediction_from_x0_eps
from ...core.schedules import FlowSchedule
from ...samplers import sample_ddim
from ...training.trainer import TrainConfig, Trainer

RD_LOSSES = ("mse", "pseudo_huber")


@torch.no_grad()
def teacher_pairs(teacher: Denoiser, n: int, ts, *, generator: torch.Generator | None = None,
                  dim: int | None = None, shape=None, batch: int = 4096, dtype=torch.float32,
                  class_labels: torch.Tensor | None = None):
    """(x_T, x_0): n prior draws x_T at ts[0] and the teacher's deterministic DDIM samples x_0 = DDIM(x_T; ts).
    ``shape``: per-example shape (or ``dim`` for vectors). With ``class_labels`` (n,) the teacher samples x_0_i
    under label i and the pairs come back as (x_T, x_0, labels), the batch layout the pair losses read as
    class-conditional. Returns (n, ...) tensors of ``dtype``."""
    shape = tuple(shape) if shape is not None else (int(dim),)
    ts = check_grid(ts, teacher.schedule)
    if class_labels is not None and tuple(class_labels.shape) != (n,):
        raise ValueError(f"class_labels must hold one label per pair, shape ({n},); got {tuple(class_labels.shape)}")
    x_T = prior_sample(teacher.schedule, (n, *shape), generator, dtype=dtype, t=float(ts[0]))
    x_0 = torch.cat([sample_ddim(teacher, x_T[i:i + batch], ts,
                                 cond=None if class_labels is None else {"class_labels": class_labels[i:i + batch]})
                     for i in range(0, n, batch)]).to(dtype)
    return (x_T, x_0) if class_labels is None else (x_T, x_0, class_labels)


@torch.no_grad()
def ode_trajectory(denoiser: Denoiser, x_T: torch.Tensor, ts, *, cond: dict | None = None) -> torch.Tensor:
    """The deterministic DDIM path from x_T on grid ts: (len(ts), B, ...), first x_T, last the sample.
    ``cond``: per-sample conditioning such as {"class_labels": (B,)}."""
    xs = [x_T]
    sample_ddim(denoiser, x_T, ts, cond=cond, callback=lambda info: xs.append(info["x"]))
    return torch.stack(xs)


def straightness(traj: torch.Tensor, ts) -> torch.Tensor:
    """Normalised straightness S (Liu et al. 2022, Def. 2.4) of recorded paths, per sample (B,) float64.

    traj: (K+1, B, ...) points at times ts (K+1,), from noise ts[0] to data ts[-1]. With tau_k =
    (ts[0] - ts[k])/(ts[0] - ts[-1]) and d = x_K - x_0 (noise to data),
    S = sum_k dtau_k ||(x_{k+1} - x_k)/dtau_k - d||^2 / ||d||^2."""
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if traj.shape[0] != len(ts) or len(ts) < 2:
        raise ValueError(f"need one trajectory point per grid time; got {traj.shape[0]} points, {len(ts)} times")
    x = traj.double().flatten(2)
    tau = (ts[0] - ts) / (ts[0] - ts[-1])
    dtau = (tau[1:] - tau[:-1]).to(x.device)
    d = x[-1] - x[0]
    vel = (x[1:] - x[:-1]) / dtau[:, None, None]
    dev = ((vel - d) ** 2).sum(-1)  # (K, B)
    return (dtau[:, None] * dev).sum(0) / (d**2).sum(-1)


def excess_length(traj: torch.Tensor) -> torch.Tensor:
    """Geometric curvature independent of the time parameterisation, per sample (B,) float64: arc length of the
    polygonal path over its chord, minus 1 (0 for a straight path, whatever its speed)."""
    x = traj.double().flatten(2)
    arc = (x[1:] - x[:-1]).norm(dim=-1).sum(0)
    return arc / (x[-1] - x[0]).norm(dim=-1) - 1


def _pair_cond(batch) -> dict:
    """Conditioning of a pair batch: (x_T, x_0) unconditional, (x_T, x_0, labels) with the class labels the
    teacher generated x_0 under."""
    return {"class_labels": batch[2]} if len(batch) > 2 else {}


def _paired_point(schedule, batch, generator):
    """(x_T, x_0, t, x_t) for a batch of teacher pairs: t ~ U(t_min, t_max), x_t = alpha_t x_0 + sigma_t x_T."""
    x_T, x_0 = batch[0], batch[1]
    u = torch.rand(x_0.shape[0], generator=generator, dtype=torch.float64).to(x_0.device)
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * u
    return x_T, x_0, t, schedule.add_noise(x_0, t, x_T)


class ReflowLoss:
    """Rectified-flow loss on pairs, a ``Trainer`` loss: batch = (x_T, x_0) or (x_T, x_0, class labels).

    t ~ U(t_min, t_max) of the ``FlowSchedule``; x_t = (1 - t) x_0 + t x_T; per example
    mean_j (u_theta(x_t, t) - (x_T - x_0))_j^2 with the network read as a velocity model. Pass independent
    (noise, data) pairs for 1-RF, teacher pairs for reflow."""

    def __init__(self, schedule: FlowSchedule | None = None):
        self.schedule = schedule or FlowSchedule()
        if self.schedule.kind != "flow":
            raise ValueError(f"reflow trains on the flow schedule; got {type(self.schedule).__name__}")

    def student(self, net: torch.nn.Module) -> NetworkDenoiser:
        return NetworkDenoiser(net, self.schedule, "velocity", scale_input=False)

    def __call__(self, net, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x_T, x_0, t, x_t = _paired_point(self.schedule, batch, generator)
        pred = self.student(net).raw(x_t, t, **_pair_cond(batch))
        return ((pred - (x_T - x_0)) ** 2).flatten(1).mean(1)


class RectifiedDiffusionLoss:
    """Rectified Diffusion loss (Wang et al. 2024), a ``Trainer`` loss: batch = (x_T, x_0) teacher pairs, or
    (x_T, x_0, class labels) for a class-conditional teacher (``teacher_pairs(class_labels=...)``).

    t ~ U(t_min, t_max) of the teacher's schedule; x_t = alpha_t x_0 + sigma_t x_T (the paired noise, not a
    fresh eps); the network read with the teacher's prediction type. ``"mse"``: mean_j (pred - target)_j^2 with
    target = that prediction type's value at (x_0, eps = x_T); ``"pseudo_huber"``: mean_j sqrt((x0_hat - x_0)_j^2
    + c^2) - c. Both vanish exactly for a predictor consistent with the pairing."""

    def __init__(self, schedule, prediction: str, *, loss: str = "mse", huber_c: float = 1e-3,
                 scale_input: bool | None = None, sigma_data: float = 0.5):
        if loss not in RD_LOSSES:
            raise ValueError(f"unknown Rectified Diffusion loss {loss!r}; allowed: {', '.join(RD_LOSSES)}")
        self.schedule, self.prediction, self.loss = schedule, prediction, loss
        self.huber_c, self.scale_input, self.sigma_data = float(huber_c), scale_input, float(sigma_data)

    def student(self, net: torch.nn.Module) -> NetworkDenoiser:
        return NetworkDenoiser(net, self.schedule, self.prediction, scale_input=self.scale_input,
                               sigma_data=self.sigma_data)

    def __call__(self, net, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x_T, x_0, t, x_t = _paired_point(self.schedule, batch, generator)
        den, cond = self.student(net), _pair_cond(batch)
        if self.loss == "pseudo_huber":
            err2 = (den.denoise(x_t, t, **cond) - x_0) ** 2
            return (torch.sqrt(err2 + self.huber_c**2) - self.huber_c).flatten(1).mean(1)
        target = prediction_from_x0_eps(x_0, x_T, t, self.schedule, self.prediction, sigma_data=self.sigma_data)
        return ((den.raw(x_t, t, **cond) - target) ** 2).flatten(1).mean(1)


class ReflowKStepLoss(ReflowLoss):
    """k-step distillation loss of a reflow model (Liu et al. 2022, Sec. 2.3), a ``Trainer`` loss on the
    model's own pairs (x_T, x_0): t ~ U{1, 1 - 1/k, ..., 1/k} (the k-step Euler grid's step starts on the flow
    schedule [0, 1]), x_t = (1 - t) x_0 + t x_T, per example mean_j (u_theta(x_t, t) - (x_T - x_0))_j^2."""

    def __init__(self, k: int, schedule: FlowSchedule | None = None):
        super().__init__(schedule)
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer number of Euler steps; got {k!r}")
        if self.schedule.t_max != 1.0:
            raise ValueError(f"k-step distillation uses the flow schedule on [0, 1]; got t_max = {self.schedule.t_max}")
        self.k = int(k)
        self.ts = euler_grid(self.k)

    def __call__(self, net, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x_T, x_0 = batch[0], batch[1]
        j = torch.randint(0, self.k, (x_0.shape[0],), generator=generator)
        t = self.ts[j].to(x_0.device)
        x_t = self.schedule.add_noise(x_0, t, x_T)
        pred = self.student(net).raw(x_t, t, **_pair_cond(batch))
        return ((pred - (x_T - x_0)) ** 2).flatten(1).mean(1)


def euler_grid(k: int) -> torch.Tensor:
    """The k-step Euler grid 1, 1 - 1/k, ..., 0 of the flow schedule (float64, k + 1 points)."""
    return torch.linspace(1.0, 0.0, int(k) + 1, dtype=torch.float64)


@dataclass
class RectifiedResult:
    """A trained student (a NetworkDenoiser, eval mode), the training history and, where the method has one,
    its native sampling ``{"sampler": ..., "steps": k, "ts": [...]}``."""

    student: NetworkDenoiser
    history: dict
    native_sampling: dict | None = None


def _reinit(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    net = copy.deepcopy(net)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in net.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return net


def reflow(teacher: NetworkDenoiser, pairs, config: TrainConfig, *, student_net: torch.nn.Module | None = None,
           schedule: FlowSchedule | None = None, out_dir=None) -> RectifiedResult:
    """Reflow on teacher pairs (x_T, x_0) for ``config.steps`` optimizer steps. The student starts from a copy of
    the teacher's network when the teacher is a flow-schedule velocity model, else from ``student_net`` or a
    freshly initialised copy of the teacher's architecture (seed ``config.seed``)."""
    loss_fn = ReflowLoss(schedule)
    if student_net is not None:
        net = copy.deepcopy(student_net)
    elif teacher.schedule.kind == "flow" and teacher.prediction == "velocity":
        net = copy.deepcopy(teacher.net)
    else:
        net = _reinit(teacher.net, config.seed)
    net = net.train().requires_grad_(True)
    trainer = Trainer(net, loss_fn, tuple(pairs), config, out_dir=out_dir, extra_config={"method": "reflow"})
    history = trainer.fit()
    return RectifiedResult(loss_fn.student(net.eval()), history)


def rectified_diffusion(teacher: NetworkDenoiser, pairs, config: TrainConfig, *, loss: str = "mse",
                        out_dir=None) -> RectifiedResult:
    """Rectified Diffusion: retrain a copy of the teacher's network on its own pairs (x_T, x_0), same schedule
    and prediction type, for ``config.steps`` optimizer steps."""
    if not isinstance(teacher, NetworkDenoiser):
        raise ValueError(f"the teacher must be a NetworkDenoiser (its network initialises the student); "
                         f"got {type(teacher).__name__}")
    loss_fn = RectifiedDiffusionLoss(teacher.schedule, teacher.prediction, loss=loss,
                                     scale_input=teacher.scale_input, sigma_data=teacher.sigma_data)
    net = copy.deepcopy(teacher.net).train().requires_grad_(True)
    trainer = Trainer(net, loss_fn, tuple(pairs), config, out_dir=out_dir,
                      extra_config={"method": "rectified_diffusion", "loss": loss})
    history = trainer.fit()
    return RectifiedResult(loss_fn.student(net.eval()), history)


def reflow_distill_k_step(model: NetworkDenoiser, k: int, config: TrainConfig, *, pairs=None, n_pairs: int = 4096,
                          ode_steps: int = 64, generator: torch.Generator | None = None, shape=None,
                          out_dir=None) -> RectifiedResult:
    """k-step distillation of a reflow model (Liu et al. 2022, arXiv 2209.03003, Sec. 2.3): the student starts
    from a copy of ``model`` (a flow-schedule velocity ``NetworkDenoiser``, e.g. ``reflow(...).student``) and is
    trained with ``ReflowKStepLoss(k)`` for ``config.steps`` optimizer steps on the model's own ODE pairs:
    ``pairs`` = (x_T, x_0), or ``n_pairs`` drawn here with ``teacher_pairs`` on the ``ode_steps``-step Euler grid
    (= DDIM on the flow schedule) from prior noise of per-example ``shape`` (default: the network's ``dim``).
    Native sampling: ``{"sampler": "ddim", "steps": k, "ts": euler_grid(k)}`` (DDIM on the flow schedule is
    Euler's method for the velocity)."""
    if not isinstance(model, NetworkDenoiser) or model.schedule.kind != "flow" or model.prediction != "velocity":
        raise ValueError("k-step distillation needs a reflow model: a flow-schedule NetworkDenoiser with velocity "
                         "prediction")
    loss_fn = ReflowKStepLoss(k, model.schedule)
    if pairs is None:
        if shape is None:
            dim = (getattr(model.net, "config", None) or {}).get("dim")
            if dim is None:
                raise ValueError("give the per-example shape of the model's samples (shape=...)")
            shape = (int(dim),)
        pairs = teacher_pairs(model, int(n_pairs), euler_grid(ode_steps), generator=generator, shape=shape,
                              dtype=next(model.net.parameters()).dtype)
    net = copy.deepcopy(model.net).train().requires_grad_(True)
    trainer = Trainer(net, loss_fn, tuple(pairs), config, out_dir=out_dir,
                      extra_config={"method": "reflow_k_step", "k": int(k), "ode_steps": int(ode_steps)})
    history = trainer.fit()
    return RectifiedResult(loss_fn.student(net.eval()), history,
                           {"sampler": "ddim", "steps": int(k), "ts": euler_grid(k).tolist()})


__all__ = ["RD_LOSSES", "RectifiedDiffusionLoss", "RectifiedResult", "ReflowKStepLoss", "ReflowLoss", "euler_grid",
           "reflow_distill_k_step", "excess_length", "ode_trajectory",
           "reflow", "rectified_diffusion", "straightness", "teacher_pairs"]
