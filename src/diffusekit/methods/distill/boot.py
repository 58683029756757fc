"""BOOT: data-free distillation of a diffusion teacher with bootstrapping (Gu, Zhai, Zhang, Liu & Susskind 2023,
arXiv 2306.05544), over the core and the generic ``Trainer``. No data tensor is used anywhere: every training
input is noise drawn from the Trainer's loss generator.

Signal-ODE. The teacher's deterministic DDIM path from x_T = sqrt(alpha_T^2 + sigma_T^2) eps (the prior draw) is
written through the *signal* y_t = (x_t - sigma_t eps)/alpha_t, so x_t = alpha_t y_t + sigma_t eps and y_0 = x_0
is the sample. With the teacher's x0-prediction f_phi, the PF-ODE becomes dy_t/dt = -lambda'_t (f_phi(x_t, t) -
y_t), lambda_t = -log(alpha_t/sigma_t) (paper eq. for the Signal-ODE), and its exact DDIM step from t to s < t
(constant f_phi over the step) is

    y_s = r y_t + (1 - r) f_phi(alpha_t y_t + sigma_t eps, t),     r = (sigma_s alpha_t)/(sigma_t alpha_s)

(r = e^{-(lam_s - lam_t)} with lam = log(alpha/sigma); r = 0 at s = 0, where y_0 = f_phi: DDIM's last step).
Substituting x_t = alpha_t y_t + sigma_t eps into the x-space DDIM step gives exactly this, so a student that
satisfies it on a grid reproduces the teacher's DDIM on that grid from the same eps.

Student. g_theta(eps, t) ~ y_t for every t of the grid, initialised from the teacher's network: the network sees
the prior point x_T (as the teacher would at t_max, including its input scaling) and the time input of t, and its
output is read as an x0 estimate through the teacher's prediction type at (x_T, t_max) -- so the initial student
is exactly the teacher's x0-prediction at t_max for every t. For teachers whose x0 divides by alpha (eps, score,
edm), that read amplifies the output by 1/alpha_T, so their student reads its output directly as x0 instead.

Losses (per example, the grid t_0 = t_max > t_1 > ... > t_N = 0, uniform in log-SNR by default; unit weights: on
that grid the step in lambda is the same for every step but the last, to t = 0, so the paper's w_t/delta^2
weighting of L_BS is dropped as a constant):

    bootstrapping:  i ~ U{0..N-1}, t = t_i, s = t_{i+1}:
                    L_BS = || g_theta(eps, s) - SG[ r g_theta(eps, t) + (1 - r) f_phi(alpha_t g_theta(eps, t) +
                                                                                    sigma_t eps, t) ] ||^2
    boundary:       L_BC = || g_theta(eps, t_max) - f_phi(x_T, t_max) ||^2

(mean over dimensions); each example is a boundary example with probability 1/(N + 1) (the index i = -1), so the
expected loss is (N L_BS + L_BC)/(N + 1). One generation: g_theta(eps, 0), one network evaluation.

Generation through the common API: ``BootGenerator`` is a ``Denoiser`` defined at t = t_max only, where
``denoise(x_T, t_max)`` = g_theta(x_T/prior_std, 0); a one-step DDIM from t_max to 0 returns its x0_hat, so
``sample_ddim(generator, x_T, [t_max, 0])`` is BOOT's one-step generation, and so is the ``one_step`` sampler
(``denoiser(x_T, ts[0])``), the student's native sampling ``{"sampler": "one_step", "steps": 1, "ts": [t_max,
0.0]}``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ...core._tensor import as_time, per_sample
from ...core.denoiser import Denoiser, NetworkDenoiser
from ...core.grids import check_grid, make_grid
from ...core.predictions import ALPHA_DIVIDING, check_prediction, x0_from_prediction
from ...training.trainer import TrainConfig, Trainer
from ..thresholding import StaticThresholdDenoiser
from .progressive import frozen_teacher

WEIGHTINGS = ("unit", "x")


class BootGenerator(Denoiser):
    """The BOOT student g_theta(eps, t) (module docstring) and a one-step generator.

    ``signal(x_T, t)`` = g_theta(eps, t), eps = x_T/prior_std, for any grid time t (t = 0: the sample);
    ``denoise(x, t)`` is defined at t = t_max only and returns ``signal(x, 0)``, so one DDIM step t_max -> 0 (or
    a ``one_step`` sampler returning ``denoiser(x_T, t_max)``) generates. ``read``: the prediction type the
    network output is read with at (x_T, t_max) (the teacher's, or "x0"). ``to_config()`` / ``from_config(net,
    schedule, cfg)`` rebuild it from the network (an ordinary MLP/UNet) and a JSON dict."""

    def __init__(self, net: nn.Module, schedule, prediction: str, *, read: str | None = None,
                 scale_input: bool | None = None, sigma_data: float = 0.5):
        super().__init__(schedule)
        self.net = net
        self.prediction = check_prediction(prediction)
        self.read = check_prediction(read if read is not None else default_read(prediction))
        self.inner = NetworkDenoiser(net, schedule, prediction, scale_input=scale_input, sigma_data=sigma_data)
        self.scale_input, self.sigma_data = self.inner.scale_input, float(sigma_data)
        self.t_max = float(schedule.t_max)
        self.prior_std = schedule.prior_std()

    @property
    def num_classes(self) -> int | None:
        return self.inner.num_classes

    def signal(self, x_T: torch.Tensor, t, **cond) -> torch.Tensor:
        """g_theta(eps, t): x_T (B, ...) the prior draw at t_max, t a number or (B,) schedule times."""
        b = x_T.shape[0]
        t = as_time(t, batch=b, device=x_T.device)
        t_max = torch.full((b,), self.t_max, dtype=torch.float64, device=x_T.device)
        x_in, _ = self.inner.net_inputs(x_T, t_max)
        t_in = self.schedule.network_time(t).to(dtype=x_in.dtype, device=x_T.device)
        out = self.net(x_in, t_in, **cond).to(x_T.dtype)
        return x0_from_prediction(out, x_T, t_max, self.schedule, self.read, sigma_data=self.sigma_data)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        if bool((t != self.t_max).any()):
            raise ValueError(f"a BOOT generator maps prior noise at t_max = {self.t_max} to a sample; it is not a "
                             f"denoiser at t = {float(t.min())}: sample with one step from t_max to 0")
        return self.signal(x, 0.0, **cond)

    def to_config(self) -> dict:
        """JSON-able wrapper arguments (with ``kind: "boot"``); the network config is ``self.net.config``."""
        return {"kind": "boot", "prediction": self.prediction, "read": self.read, "scale_input": self.scale_input,
                "sigma_data": self.sigma_data}

    @classmethod
    def from_config(cls, net: nn.Module, schedule, cfg: dict) -> BootGenerator:
        if cfg.get("kind", "boot") != "boot":
            raise ValueError(f"not a BOOT student config (kind {cfg.get('kind')!r})")
        return cls(net, schedule, cfg["prediction"], read=cfg.get("read"), scale_input=cfg.get("scale_input"),
                   sigma_data=float(cfg.get("sigma_data", 0.5)))


def default_read(prediction: str) -> str:
    """The student's output read: the teacher's prediction type, or "x0" where x0 = (x - sigma out)/alpha-type
    reads would amplify the output by 1/alpha_T."""
    return "x0" if prediction in ALPHA_DIVIDING else prediction


def signal_ddim_step(y_t: torch.Tensor, f: torch.Tensor, t, s, schedule) -> torch.Tensor:
    """y_s = r y_t + (1 - r) f, r = sigma_s alpha_t/(sigma_t alpha_s): the exact DDIM step of the Signal-ODE
    from t to s < t with the teacher's x0-prediction f (per-sample t, s; r = 0 at s = 0)."""
    t, s = as_time(t, device=y_t.device), as_time(s, device=y_t.device)
    r = schedule.sigma(s) * schedule.alpha(t) / (schedule.sigma(t) * schedule.alpha(s))
    return per_sample(r, y_t) * y_t + per_sample(1 - r, y_t) * f


class BootLoss:
    """Per-example BOOT loss (module docstring), a ``Trainer`` loss. The batch is not read beyond its size and
    device: x_T is drawn from the loss generator (a prior sample at t_max), so the loss is data-free.

    ``teacher``: the frozen teacher Denoiser; ``ts``: the decreasing grid t_max -> 0 (N steps). ``weighting``:
    ``"unit"`` (the squared error of y_s) or ``"x"`` (alpha_s^2 times it: the squared error of the implied
    trajectory point x_s = alpha_s y_s + sigma_s eps, which keeps the large y errors that a teacher's x0 estimate
    has near t_max -- e.g. an eps-prediction teacher's (x - sigma eps_hat)/alpha -- from dominating)."""

    def __init__(self, teacher: Denoiser, ts, prediction: str, *, shape, read: str | None = None,
                 scale_input: bool | None = None, sigma_data: float = 0.5, cond_sampler=None,
                 weighting: str = "unit"):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown BOOT weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
        self.weighting = weighting
        ts = check_grid(as_time(ts).flatten(), teacher.schedule)
        if float(ts[0]) != teacher.schedule.t_max or float(ts[-1]) != 0.0:
            raise ValueError(f"the BOOT grid must run from t_max = {teacher.schedule.t_max} to 0; got "
                             f"[{float(ts[0])}, {float(ts[-1])}]")
        self.teacher, self.ts, self.prediction = teacher, ts, prediction
        self.schedule = teacher.schedule
        self.shape = tuple(int(d) for d in shape)
        self.read, self.scale_input, self.sigma_data = read, scale_input, float(sigma_data)
        self.cond_sampler = cond_sampler

    def student(self, net: nn.Module) -> BootGenerator:
        return BootGenerator(getattr(net, "module", net), self.schedule, self.prediction, read=self.read,
                             scale_input=self.scale_input, sigma_data=self.sigma_data)

    def __call__(self, net: nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        b, device = batch[0].shape[0], batch[0].device
        sched, ts = self.schedule, self.ts.to(device)
        n = len(ts) - 1
        dtype = next(net.parameters()).dtype
        x_T = torch.randn((b, *self.shape), generator=generator, dtype=dtype).to(device) * sched.prior_std()
        eps = x_T / sched.prior_std()
        i = torch.randint(-1, n, (b,), generator=generator).to(device)
        cond = self.cond_sampler(b, generator, device) if self.cond_sampler is not None else {}
        boundary = i < 0
        t = ts[i.clamp(min=0)]
        s = torch.where(boundary, ts[0], ts[(i + 1).clamp(max=n)])
        student = self.student(net)
        with torch.no_grad():
            y_t = student.signal(x_T, t, **cond)
            x_t = per_sample(sched.alpha(t), y_t) * y_t + per_sample(sched.sigma(t), y_t) * eps
            x_t = torch.where(per_sample(boundary, x_t).bool(), x_T, x_t)
            f = self.teacher.denoise(x_t, t, **cond)
            s_safe = torch.where(boundary, ts[-1], s)  # the boundary rows' target is f itself
            target = torch.where(per_sample(boundary, f).bool(), f, signal_ddim_step(y_t, f, t, s_safe, sched))
        pred = student.signal(x_T, s, **cond)
        err = ((pred - target) ** 2).flatten(1).mean(1)
        return err if self.weighting == "unit" else err * sched.alpha(s).to(err.dtype) ** 2


@dataclass
class BootResult:
    """A BOOT generator (eval mode), the training grid, the history and its native sampling
    ``{"sampler": "one_step", "steps": 1, "ts": [t_max, 0.0]}`` (one call ``generator(x_T, t_max)``; a 1-step
    DDIM on the same grid gives the same sample)."""

    generator: BootGenerator
    ts: torch.Tensor
    history: dict
    native_sampling: dict


def boot_distill(teacher: NetworkDenoiser, config: TrainConfig, *, shape, n_steps: int = 16, grid: str = "logsnr",
                 read: str | None = None, weighting: str = "unit", clip_x0: float | None = None, cond_sampler=None,
                 out_dir=None) -> BootResult:
    """BOOT (Gu et al. 2023, arXiv 2306.05544): train g_theta(eps, t), initialised from a copy of the teacher's
    network, by bootstrapping between consecutive points of an ``n_steps`` grid (``make_grid(grid, ...)`` from
    t_max to 0) plus the boundary loss at t_max, for ``config.steps`` optimizer steps of ``config.batch_size``
    noise draws. There is no data argument: the Trainer gets a (batch_size, 0) placeholder whose only use is the
    batch size; every input is prior noise from the loss generator. ``shape``: the per-example sample shape.
    ``cond_sampler(b, generator, device) -> dict``: optional conditioning per batch (e.g. random class labels
    for a class-conditional teacher). ``weighting``: see ``BootLoss``. ``clip_x0``: distill the teacher with its
    x0 estimate clipped to [-clip_x0, clip_x0] (``StaticThresholdDenoiser``, the clipped DDIM that pixel-space
    DDPM samplers run); then y_s = r y_t + (1 - r) f stays in that range, which keeps an eps-prediction teacher's
    amplified x0 estimates near t_max from dominating the student's targets."""
    if not isinstance(teacher, NetworkDenoiser):
        raise ValueError(f"the teacher must be a NetworkDenoiser (its network initialises the student); "
                         f"got {type(teacher).__name__}")
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps}")
    sched = teacher.schedule
    ts = make_grid(grid, sched, int(n_steps), t_end=0.0)
    frozen = frozen_teacher(teacher)
    target_teacher = frozen if clip_x0 is None else StaticThresholdDenoiser(frozen, clip_range=float(clip_x0))
    loss_fn = BootLoss(target_teacher, ts, teacher.prediction, shape=shape, read=read, scale_input=teacher.scale_input,
                       sigma_data=teacher.sigma_data, cond_sampler=cond_sampler, weighting=weighting)
    net = copy.deepcopy(teacher.net).train().requires_grad_(True)
    placeholder = torch.zeros(config.batch_size, 0, device=next(net.parameters()).device)
    trainer = Trainer(net, loss_fn, (placeholder,), config, out_dir=out_dir,
                      extra_config={"method": "boot", "n_steps": int(n_steps), "grid": grid, "weighting": weighting,
                                    "clip_x0": clip_x0,
                                    "read": loss_fn.student(net).read})
    history = trainer.fit()
    final = trainer.ema_model if trainer.ema_model is not None else net
    return BootResult(loss_fn.student(final.eval()), ts, history,
                      {"sampler": "one_step", "steps": 1, "ts": [float(sched.t_max), 0.0]})


__all__ = ["WEIGHTINGS", "BootGenerator", "BootLoss", "BootResult", "boot_distill", "default_read", "signal_ddim_step"]
