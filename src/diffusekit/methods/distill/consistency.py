"""Consistency distillation and consistency training (Song, Dhariwal, Chen & Sutskever 2023, arXiv 2303.01469),
over the core and the generic ``Trainer``.

Noise level. Everything is stated in the VE noise level s = sigma(t)/alpha(t) of the schedule (k-diffusion's
sigma, ``schedule.sigma_tilde``) and the VE variable x~ = x_t / alpha(t), so the paper's equations (written for
EDM's VE process, x~ = x + s z) hold for every schedule; s_min = s(t_min), s_max = s(t_max).

Consistency function (paper Sec. 3 and App. C, EDM-style boundary-condition parameterisation):

    f_theta(x~, s) = c_skip(s) x~ + c_out(s) F_theta(x~, s),
    c_skip(s) = sigma_d^2 / ((s - s_min)^2 + sigma_d^2),   c_out(s) = (s - s_min) sigma_d / sqrt(s^2 + sigma_d^2),

so c_skip(s_min) = 1 and c_out(s_min) = 0: f(x~, s_min) = x~ for any network (the boundary condition, eq. 5).
F_theta is the network read in EDM's form: any of our networks gives an x0 prediction D_theta(x, t) (through
``NetworkDenoiser``), and F_theta = (D_theta - c_skip^EDM x~)/c_out^EDM with EDM's c_skip^EDM = sigma_d^2/(s^2 +
sigma_d^2), c_out^EDM = s sigma_d/sqrt(s^2 + sigma_d^2) (Karras et al. 2022, arXiv 2206.00364, Table 1). Then

    f_theta = (c_skip(s) - r(s) c_skip^EDM(s)) x~ + r(s) D_theta(x, t),   r(s) = c_out/c_out^EDM = 1 - s_min/s,

which is how it is computed (no division by the small c_out^EDM near s_min). For s >> s_min, f_theta is
D_theta, which is why the student is initialised from the teacher's weights (as in the paper's CD runs).

Consistency distillation loss (Alg. 2, eq. 7): on the Karras grid s_0 = s_max > s_1 > ... > s_{N-1} = s_min
(rho = 7, N points; the paper's t_{n+1} -> t_n is our s_i -> s_{i+1}),

    i ~ U{0, ..., N-2},   x_{t_i} = alpha_i x + sigma_i z,
    x^_{t_{i+1}} = one teacher ODE step t_i -> t_{i+1} from x_{t_i}      (Heun, as the paper; or DDIM = Euler in s~)
    L = lambda(s_i) d(f_theta(x_{t_i}, t_i), f_{theta^-}(x^_{t_{i+1}}, t_{i+1})),   lambda = 1,

d = squared L2 (mean over data dimensions) or pseudo-Huber sqrt(||a - b||^2 + c^2) - c (Song & Dhariwal 2023,
arXiv 2310.14189, c = 0.00054 sqrt(dim)); the target network theta^- is an EMA of theta, theta^- <- mu theta^- +
(1 - mu) theta after every optimizer step (mu = 0.95 in the paper's CD runs), no gradient through it.

Consistency training (Alg. 3, ``ConsistencyTrainingLoss`` / ``consistency_train``): no teacher; the pair shares
x and z, x_{t_{i+1}} = alpha_{i+1} x + sigma_{i+1} z (the DDIM step with the true x as the denoiser), on the
Karras grid of N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 points with target EMA rate
mu(k) = exp(s0 log mu0 / N(k)) at optimizer step k of K (App. C: s0 = 2, s1 = 150, mu0 = 0.9).

Multistep consistency sampling (Alg. 1): x = f(x_T, t_max); for each chosen tau_k (decreasing),
x~_tau = x + sqrt(s(tau_k)^2 - s_min^2) z, x = f(alpha_tau x~_tau, tau_k).

The consistency function is a ``Denoiser`` (``ConsistencyDenoiser``: x0_hat = f), so our samplers run on it too;
``consistency_sample`` is Alg. 1. Times below t_min are outside the consistency function's domain; flow and
zero-terminal-SNR schedules, whose s is infinite at t_max, need a start t < t_max.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ...core._tensor import as_time, per_sample
from ...core.denoiser import Denoiser, NetworkDenoiser
from ...core.grids import check_grid, grid_karras
from ...core.noise import randn
from ...training.trainer import TrainConfig, Trainer
from .progressive import ddim_step, frozen_teacher

TEACHER_SOLVERS = ("heun", "ddim", "euler")
DISTANCES = ("l2", "pseudo_huber")


def consistency_coefficients(s: torch.Tensor, s_min: float, sigma_data: float = 0.5):
    """(a, r) with f = a x~ + r D_theta: a = c_skip(s) - r c_skip^EDM(s), r = 1 - s_min/s (float64, like s).

    c_skip(s) = sigma_d^2/((s - s_min)^2 + sigma_d^2) and c_out(s) = (s - s_min) sigma_d/sqrt(s^2 + sigma_d^2)
    (Song et al. 2023, App. C); at s = s_min, a = 1 and r = 0 exactly."""
    s = as_time(s)
    sd2 = sigma_data**2
    r = (s - s_min) / s
    c_skip = sd2 / ((s - s_min) ** 2 + sd2)
    return c_skip - r * sd2 / (s**2 + sd2), r


class ConsistencyDenoiser(Denoiser):
    """f_theta as a Denoiser: ``denoise(x, t)`` = f_theta(x_t/alpha_t, s(t)) = a(s) x_t/alpha_t + r(s) D(x_t, t).

    ``inner``: a Denoiser D_theta (typically ``NetworkDenoiser`` of the student network), whose schedule is used.
    ``s_min``: the boundary noise level (default s(t_min)). Raises for t < t_min (outside the domain)."""

    def __init__(self, inner: Denoiser, *, sigma_data: float = 0.5, t_min: float | None = None):
        super().__init__(inner.schedule)
        self.inner = inner
        self.sigma_data = float(sigma_data)
        self.t_min = float(inner.schedule.t_min if t_min is None else t_min)
        self.s_min = float(inner.schedule.sigma_tilde(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def net(self):
        return getattr(self.inner, "net", None)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        if bool((t < self.t_min).any()):
            raise ValueError(f"the consistency function is defined for t >= t_min = {self.t_min}; "
                             f"got t = {float(t.min())}")
        sched = self.schedule
        if bool((sched.alpha(t) == 0).any()):
            raise ValueError("the consistency function needs alpha(t) > 0 (s = sigma/alpha finite); start a flow or "
                             "zero-terminal-SNR schedule at t < t_max")
        s = sched.sigma_tilde(t)
        a, r = consistency_coefficients(s, self.s_min, self.sigma_data)
        x_tilde = x / per_sample(sched.alpha(t), x)
        if bool((r == 0).all()):  # every sample at the boundary: f = x~ exactly, no network call
            return x_tilde
        return per_sample(a, x) * x_tilde + per_sample(r, x) * self.inner.denoise(x, t, **cond)


def teacher_step(teacher: Denoiser, x: torch.Tensor, t, t_next, solver: str = "heun", **cond) -> torch.Tensor:
    """One step of the teacher's probability-flow ODE t -> t_next (per-sample times, t_next > 0), x in the
    schedule's variable. In x~ = x/alpha, s = sigma/alpha the ODE is dx~/ds = (x~ - D(x, t))/s (Karras et al.
    2022, eq. 3 with s(t) = t):

    * ``ddim`` / ``euler``: x~' = x~ + (s' - s) d, d = (x~ - D)/s -- the deterministic DDIM step (1 NFE);
    * ``heun``: that Euler predictor, then x~' = x~ + (s' - s)(d + d')/2, d' = (x~' - D(alpha' x~', t'))/s'
      (EDM Alg. 1's step, 2 NFE; the paper's teacher solver).

    Returns alpha' x~' in x's dtype."""
    if solver not in TEACHER_SOLVERS:
        raise ValueError(f"unknown teacher solver {solver!r}; allowed: {', '.join(TEACHER_SOLVERS)}")
    b = x.shape[0]
    t, t_next = as_time(t, batch=b, device=x.device), as_time(t_next, batch=b, device=x.device)
    sched = teacher.schedule
    x0 = teacher.denoise(x, t, **cond)
    if solver != "heun":
        return ddim_step(x, x0, t, t_next, sched)
    s, s_next = sched.sigma_tilde(t), sched.sigma_tilde(t_next)
    x_tilde = x / per_sample(sched.alpha(t), x)
    d = (x_tilde - x0) / per_sample(s, x)
    pred = x_tilde + per_sample(s_next - s, x) * d
    a_next = per_sample(sched.alpha(t_next), x)
    d_next = (pred - teacher.denoise(a_next * pred, t_next, **cond)) / per_sample(s_next, x)
    return a_next * (x_tilde + per_sample(s_next - s, x) * (0.5 * d + 0.5 * d_next))


def consistency_grid(schedule, n_points: int, *, rho: float = 7.0, t_min: float | None = None,
                     t_max: float | None = None) -> torch.Tensor:
    """The N-point Karras grid t(s_0 = s_max) > ... > t(s_{N-1} = s_min) (paper eq. 4 region / App. C,
    rho = 7), decreasing, float64."""
    if int(n_points) != n_points or n_points < 2:
        raise ValueError(f"the consistency grid needs N >= 2 points; got {n_points}")
    t_min = schedule.t_min if t_min is None else float(t_min)
    t_max = schedule.t_max if t_max is None else float(t_max)
    return grid_karras(schedule, int(n_points) - 1, rho=rho, t_start=t_max, t_end=t_min)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


class ConsistencyDistillationLoss:
    """Per-example consistency distillation loss (Song et al. 2023, Alg. 2), usable as a ``Trainer`` loss.

    ``loss(net, batch, generator) -> Tensor[B]``, batch = (x,) or (x, labels): i ~ U{0..N-2}, z ~ N(0, I),
    x_i = alpha_i x + sigma_i z at t_i = ts[i]; the teacher's ``solver`` step to t_{i+1}; per-example
    d(f_theta(x_i, t_i), f_{theta^-}(x^_{i+1}, t_{i+1})). The student f_theta is ``ConsistencyDenoiser`` over
    ``NetworkDenoiser(net, schedule, prediction)``. The EMA target network theta^- is kept here: created as a
    copy of ``net`` at the first call and moved, at the start of every later call (i.e. after each optimizer
    step), by theta^- <- mu theta^- + (1 - mu) theta. (It is not part of the Trainer's checkpoint: a resumed run
    restarts it from the current weights.)
    """

    def __init__(self, teacher: Denoiser, ts, prediction: str, *, solver: str = "heun", distance: str = "l2",
                 mu: float = 0.95, huber_c: float | None = None, scale_input: bool | None = None,
                 sigma_data: float = 0.5):
        if solver not in TEACHER_SOLVERS:
            raise ValueError(f"unknown teacher solver {solver!r}; allowed: {', '.join(TEACHER_SOLVERS)}")
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; allowed: {', '.join(DISTANCES)}")
        if not 0.0 <= mu < 1.0:
            raise ValueError(f"the target EMA rate mu must be in [0, 1); got {mu}")
        ts = check_grid(as_time(ts).flatten(), teacher.schedule)  # decreasing, >= 2 points, <= t_max
        if float(ts[-1]) < teacher.schedule.t_min * (1 - 1e-12):
            raise ValueError(f"the grid must lie in [t_min, t_max] = [{teacher.schedule.t_min}, "
                             f"{teacher.schedule.t_max}]")
        self.teacher = teacher
        self.ts = ts
        self.prediction = prediction
        self.solver = solver
        self.distance = distance
        self.mu = float(mu)
        self.huber_c = huber_c
        self.scale_input = scale_input
        self.sigma_data = float(sigma_data)
        self.schedule = teacher.schedule
        self.target_net: torch.nn.Module | None = None
        self.calls = 0

    def grid_and_mu(self, k: int):
        """The grid and target EMA rate at call k (0-based): fixed for distillation."""
        return self.ts, self.mu

    def next_point(self, x, x_t, z, t, t_next, cond) -> torch.Tensor:
        """x^_{t_{i+1}}: one teacher ODE step from x_t (distillation)."""
        return teacher_step(self.teacher, x_t, t, t_next, self.solver, **cond)

    def consistency(self, net: torch.nn.Module) -> ConsistencyDenoiser:
        inner = NetworkDenoiser(net, self.schedule, self.prediction, scale_input=self.scale_input,
                                sigma_data=self.sigma_data)
        return ConsistencyDenoiser(inner, sigma_data=self.sigma_data, t_min=float(self.ts[-1]))

    @torch.no_grad()
    def update_target(self, net: torch.nn.Module, mu: float | None = None) -> None:
        net = _unwrap(net)
        mu = self.mu if mu is None else float(mu)
        if self.target_net is None:
            self.target_net = copy.deepcopy(net).requires_grad_(False)
            return
        for p_t, p in zip(self.target_net.parameters(), net.parameters()):
            p_t.lerp_(p.detach(), 1.0 - mu)
        for b_t, b in zip(self.target_net.buffers(), net.buffers()):
            b_t.copy_(b)

    def distance_fn(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = (a - b).flatten(1)
        if self.distance == "l2":
            return (diff**2).mean(1)
        c = 0.00054 * diff.shape[1] ** 0.5 if self.huber_c is None else float(self.huber_c)
        return torch.sqrt((diff**2).sum(1) + c * c) - c

    def draw(self, net: torch.nn.Module, batch, generator: torch.Generator | None = None):
        """One training draw, shared by CD and SLAM: advance the curriculum and the EMA target, then per example
        i ~ U{0..N-2}, z ~ N(0, I), x_t = alpha_i x + sigma_i z at t = t_i, and the target f_{theta^-}(x_{t_{i+1}})
        after one teacher step. Returns (x_t, t, t_next, x_next, target, cond)."""
        ts, mu = self.grid_and_mu(self.calls)
        self.calls += 1
        self.update_target(net, mu)
        x = batch[0]
        cond = {"class_labels": batch[1]} if len(batch) > 1 else {}
        b = x.shape[0]
        i = torch.randint(0, len(ts) - 1, (b,), generator=generator).to(x.device)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        ts = ts.to(x.device)
        t, t_next = ts[i], ts[i + 1]
        x_t = self.schedule.add_noise(x, t, z)
        with torch.no_grad():
            x_next = self.next_point(x, x_t, z, t, t_next, cond)
            self.target_net.eval()
            target = self.consistency(self.target_net).denoise(x_next, t_next, **cond)
        return x_t, t, t_next, x_next, target, cond

    def __call__(self, net: torch.nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x_t, t, _, _, target, cond = self.draw(net, batch, generator)
        pred = self.consistency(net).denoise(x_t, t, **cond)
        return self.distance_fn(pred, target)


def ct_num_points(k: int, total_steps: int, s0: int = 2, s1: int = 150) -> int:
    """The consistency-training curriculum N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 (Song et al.
    2023, App. C; K = total optimizer steps; the paper's CIFAR-10 values s0 = 2, s1 = 150): N(0) = s0, N(K) = s1 + 1."""
    frac = min(max(k, 0), total_steps) / total_steps
    return int(math.ceil(math.sqrt(frac * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1 - 1e-9)) + 1


def ct_mu(n_points: int, s0: int = 2, mu0: float = 0.9) -> float:
    """The target EMA rate mu(k) = exp(s0 log(mu0) / N(k)) of consistency training (App. C; mu0 = 0.9)."""
    return math.exp(s0 * math.log(mu0) / n_points)


class _NoTeacher(Denoiser):
    """Placeholder carrying the schedule for consistency training (no teacher is ever evaluated)."""

    def denoise(self, x, t, **cond):
        raise RuntimeError("consistency training has no teacher")


class ConsistencyTrainingLoss(ConsistencyDistillationLoss):
    """Per-example consistency training loss (Song et al. 2023, Alg. 3): no teacher. The pair shares the data
    point x and the noise z,

        x_{t_i} = alpha_i x + sigma_i z,   x_{t_{i+1}} = alpha_{i+1} x + sigma_{i+1} z,

    (in x~ = x/alpha: x + s_i z and x + s_{i+1} z), which is one DDIM step t_i -> t_{i+1} with the true x in place
    of the teacher's denoiser. Call k (= optimizer steps done) uses the Karras grid of N(k) = ``ct_num_points``
    points and the target EMA rate mu(k) = ``ct_mu``(N(k)). ``total_steps``: K, the length of the run."""

    def __init__(self, schedule, prediction: str, total_steps: int, *, s0: int = 2, s1: int = 150, mu0: float = 0.9,
                 rho: float = 7.0, distance: str = "l2", huber_c: float | None = None,
                 scale_input: bool | None = None, sigma_data: float = 0.5):
        if int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer; got {total_steps}")
        if not (int(s0) == s0 >= 2 and int(s1) == s1 >= s0):
            raise ValueError(f"need integers 2 <= s0 <= s1; got s0={s0}, s1={s1}")
        super().__init__(_NoTeacher(schedule), consistency_grid(schedule, int(s0), rho=rho), prediction,
                         solver="ddim", distance=distance, mu=mu0, huber_c=huber_c, scale_input=scale_input,
                         sigma_data=sigma_data)
        self.total_steps, self.s0, self.s1, self.mu0, self.rho = int(total_steps), int(s0), int(s1), float(mu0), rho
        self._grids: dict[int, torch.Tensor] = {}

    def grid_and_mu(self, k: int):
        n = ct_num_points(k, self.total_steps, self.s0, self.s1)
        if n not in self._grids:
            self._grids[n] = consistency_grid(self.schedule, n, rho=self.rho)
        return self._grids[n], ct_mu(n, self.s0, self.mu0)

    def next_point(self, x, x_t, z, t, t_next, cond) -> torch.Tensor:
        return self.schedule.add_noise(x, t_next, z)


def consistency_sample(model: ConsistencyDenoiser, x_T: torch.Tensor, ts, *, generator=None,
                       cond: dict | None = None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1). ``ts`` = [t_start, tau_1, ..., tau_{K-1}]
    decreasing, all >= the model's t_min: x = f(x_T, t_start); for each tau: x~ = x + sqrt(s(tau)^2 - s_min^2) z,
    x = f(alpha(tau) x~, tau). K = len(ts) network evaluations; returns x0 (the VE variable at s_min)."""
    cond = cond or {}
    ts = as_time(ts).flatten()
    if len(ts) > 1 and bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError("ts must be decreasing")
    sched = model.schedule
    x = model(x_T, ts[0], **cond)
    for tau in ts[1:]:
        s = float(sched.sigma_tilde(tau))
        noise = randn(x.shape, generator, dtype=x.dtype, device=x.device)
        x_tau = float(sched.alpha(tau)) * (x + max(s * s - model.s_min**2, 0.0) ** 0.5 * noise)
        x = model(x_tau, tau, **cond)
    return x


@dataclass
class ConsistencyResult:
    """A distilled consistency model (eval mode), its training grid and the training history."""

    model: ConsistencyDenoiser
    ts: torch.Tensor
    history: dict


def consistency_distill(teacher: NetworkDenoiser, data, config: TrainConfig, *, n_points: int = 18,
                        solver: str = "heun", distance: str = "l2", mu: float = 0.95, rho: float = 7.0,
                        out_dir=None) -> ConsistencyResult:
    """Consistency distillation (Song et al. 2023, Alg. 2): the student network is initialised from a copy of
    the teacher's (same prediction type and preconditioning), trained by ``Trainer`` with
    ``ConsistencyDistillationLoss`` on the ``n_points`` Karras grid for ``config.steps`` optimizer steps on
    ``data`` ((x,) or (x, labels)). Returns the Trainer's EMA network when ``config.ema_decay`` is set, else the
    trained network, as a ``ConsistencyDenoiser``."""
    if not isinstance(teacher, NetworkDenoiser):
        raise ValueError(f"the teacher must be a NetworkDenoiser (its network initialises the student); "
                         f"got {type(teacher).__name__}")
    frozen = frozen_teacher(teacher)
    ts = consistency_grid(teacher.schedule, n_points, rho=rho)
    loss_fn = ConsistencyDistillationLoss(frozen, ts, teacher.prediction, solver=solver, distance=distance, mu=mu,
                                          scale_input=teacher.scale_input, sigma_data=teacher.sigma_data)
    net = copy.deepcopy(teacher.net).train().requires_grad_(True)
    data = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    trainer = Trainer(net, loss_fn, data, config, out_dir=out_dir,
                      extra_config={"method": "consistency_distillation", "solver": solver, "distance": distance,
                                    "mu": mu, "n_points": int(n_points), "rho": rho})
    history = trainer.fit()
    final = trainer.ema_model if trainer.ema_model is not None else net
    return ConsistencyResult(loss_fn.consistency(final.eval()), ts, history)


def consistency_train(net: torch.nn.Module, schedule, data, config: TrainConfig, *, prediction: str = "x0",
                      s0: int = 2, s1: int = 150, mu0: float = 0.9, rho: float = 7.0, distance: str = "l2",
                      scale_input: bool | None = None, sigma_data: float = 0.5, out_dir=None) -> ConsistencyResult:
    """Consistency training (Song et al. 2023, Alg. 3): ``net`` (read through ``NetworkDenoiser(net, schedule,
    prediction)``, then the boundary parameterisation) trained in place by ``Trainer`` with
    ``ConsistencyTrainingLoss`` for ``config.steps`` optimizer steps, the N(k)/mu(k) curriculum spanning them.
    The paper trains from scratch; any initial weights are accepted. Returns the model (the Trainer's EMA network
    when ``config.ema_decay`` is set) and the final grid."""
    loss_fn = ConsistencyTrainingLoss(schedule, prediction, config.steps, s0=s0, s1=s1, mu0=mu0, rho=rho,
                                      distance=distance, scale_input=scale_input, sigma_data=sigma_data)
    net.train().requires_grad_(True)
    data = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    trainer = Trainer(net, loss_fn, data, config, out_dir=out_dir,
                      extra_config={"method": "consistency_training", "distance": distance, "s0": int(s0),
                                    "s1": int(s1), "mu0": mu0, "rho": rho})
    history = trainer.fit()
    final = trainer.ema_model if trainer.ema_model is not None else net
    return ConsistencyResult(loss_fn.consistency(final.eval()), loss_fn.grid_and_mu(config.steps)[0], history)


__all__ = ["DISTANCES", "TEACHER_SOLVERS", "ConsistencyDenoiser", "ConsistencyDistillationLoss",
           "ConsistencyResult", "ConsistencyTrainingLoss", "consistency_coefficients", "consistency_distill",
           "consistency_grid", "consistency_sample", "consistency_train", "ct_mu", "ct_num_points", "teacher_step"]
