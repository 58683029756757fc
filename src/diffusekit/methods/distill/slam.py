"""SLAM: Sub-path Linear Approximation Model (Xu et al., ECCV 2024, "Accelerating Image Generation with Sub-path
Linear Approximation Model", arXiv 2404.13903; official code MCG-NJU/SPLAM, splam/train_splam_distill_sd_wds.py),
over consistency distillation (``consistency.py``) and the generic ``Trainer``.

Notation as in ``consistency.py``: schedule time t (0 = data), VE noise level s(t) = sigma(t)/alpha(t), the
consistency function f(x, t) = a(s) x~ + r(s) D(x, t) with x~ = x/alpha and the exact boundary f(x, t_min) = x~.

The PF-ODE trajectory is cut at sampled points; for a grid pair t_s = t_i > t_e = t_{i+1} (start and end of a
sub-path), with x_s = alpha_s x + sigma_s z a noised data point and x_e one teacher ODE step t_s -> t_e from it,
SLAM replaces the sub-path by the *sub-path linear (SL) ODE* between the two points,

    x_gamma = gamma x_s + (1 - gamma) (alpha_s / alpha_e) x_e,      gamma ~ U(0, 1)

(the end point rescaled to the start's signal level, so every x_gamma carries signal alpha_s x). Along it the
noise level is (SPLAM's ``predicted_origin_splam``, written here for any schedule)

    sigma_gamma^2 = (sigma_e alpha_s/alpha_e)^2 + gamma^2 (sigma_s^2 - (sigma_e alpha_s/alpha_e)^2),

sigma_gamma = sigma_s at gamma = 1 and the rescaled end point's noise at gamma = 0. x_gamma is read at that noise
level: with t_gamma the time of VE level s(t_gamma) = sigma_gamma/alpha_s and x_eff = alpha(t_gamma) x_gamma/alpha_s
(x_gamma rescaled to the schedule's variable at t_gamma), the network (plus the gamma embedding) runs on
(x_eff, t_gamma) and x0_hat is its prediction-type conversion there (for eps prediction x0_hat = (x_gamma -
sigma_gamma eps_hat)/alpha_s, SPLAM's formula). The student f_theta(x_gamma, t_s; gamma) = a(s_s) x_gamma/alpha_s +
r(s_s) x0_hat must match the EMA target's consistency function at the end point, gamma = 1:

    L = d( f_theta(x_gamma, t_s; gamma),  SG[f_{theta^-}(x_e, t_e; gamma = 1)] ),

d = squared L2 or pseudo-Huber, theta^- <- mu theta^- + (1 - mu) theta (SPLAM: EMA target, Huber or L2, DDIM
teacher step, LCM's c_skip/c_out; here the boundary-condition parameterisation of ``ConsistencyDenoiser``).
At gamma = 1 the loss is consistency distillation; gamma < 1 adds the points along each sub-path.

Deviation from SPLAM: SPLAM tells the network the start time t_s for every gamma (and reads eps_hat at
sigma_gamma), leaving the gamma embedding to learn that x_gamma is less noisy than x_s. In SD with 20-of-1000-step
sub-paths sigma_gamma/sigma_s >= ~0.95 and 1/alpha_s <= ~15, so the mismatch is small. On a coarse Karras grid it is
not: on the digits teacher (VP linear, 1/alpha(t_max) ~ 156, first sub-path s = 156 -> 114) the teacher's eps_hat at
t_s is ~ x_gamma/sigma_s, so x0_hat keeps a noise term ~ (1 - sigma_gamma/sigma_s) x_gamma/alpha_s of size ~ 25; the
initial loss was ~ 70 against consistency distillation's 0.05 and training diverged (2-/4-step digits FD 512/339).
Telling the network t_gamma, the time whose noise level the reading assumes, makes the zero-initialised student start
as the teacher's denoiser at x_gamma (initial loss of the same order as CD's); at gamma = 1, t_gamma = t_s, so the
sampling student (gamma = 1) is unchanged. (Digits, 150 updates at lr 1e-4, 2-/4-step FD 60/32; CD with the DDIM
teacher step 49/28.)

Sampling uses gamma = 1 (the target network's and SPLAM's inference setting), so a ``SlamDenoiser`` *is* a
``ConsistencyDenoiser``: multistep sampling is ``consistency_sample`` (Song et al. 2023, Alg. 1), and the
student's native sampling is ``{"sampler": "consistency", "steps": k, "ts": [...]}``. With gamma fixed at 1 the
gamma term is a constant that folds into the bias of the time MLP's first Linear (``GammaConditionedNet.fold``),
so ``slam_distill`` hands back the sampling student as a plain ``ConsistencyDenoiser`` over an ordinary network.

gamma conditioning without touching the shipped networks: ``GammaConditionedNet`` wraps an MLP or UNet and adds
W e(gamma) to the input of the network's time-embedding MLP (the place LCM/SPLAM's ``cond_proj`` adds the
guidance/gamma embedding), W a bias-free Linear initialised to zero, through a forward pre-hook that exists only
for the duration of one forward call. The wrapped network's state_dict is unchanged (keys ``net.*``), so a zoo
teacher's weights load into the wrapper's ``net`` and the student starts exactly as the teacher.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ...core._tensor import as_time, per_sample
from ...core.denoiser import NetworkDenoiser
from ...core.predictions import x0_from_prediction
from ...nets.embedding import TimeClassEmbedding, timestep_embedding
from ...training.trainer import TrainConfig, Trainer
from .progressive import frozen_teacher
from .consistency import (ConsistencyDenoiser, ConsistencyDistillationLoss, consistency_coefficients,
                          consistency_grid)


class GammaConditionedNet(nn.Module):
    """A denoiser network with an extra gamma input: ``forward(x, t, class_labels=None, gamma=None)``.

    ``net``: an MLP or UNet of ``diffusekit.nets`` (anything whose ``embed`` is a ``TimeClassEmbedding``).
    The gamma embedding e(gamma) = sinusoidal(1000 (1 - gamma), gamma_dim) (LCM's guidance-scale embedding
    applied to SPLAM's index 10 - 10 gamma, up to its factor 10) is projected by ``cond_proj`` (Linear(gamma_dim,
    freq_dim), no bias, zero-initialised) and added to the sinusoidal time features before the network's time
    MLP, i.e. MLP(sin(t) + W e(gamma)). gamma: None (= 1, the sampling value), a number, or a (B,) tensor in
    [0, 1]. With W = 0 the output equals ``net``'s for every gamma. ``config`` is ``net``'s (so class-label
    handling sees the same network); ``gamma_config`` holds this wrapper's own arguments."""

    def __init__(self, net: nn.Module, gamma_dim: int = 64):
        super().__init__()
        embed = getattr(net, "embed", None)
        if not isinstance(embed, TimeClassEmbedding):
            raise ValueError(f"the gamma wrapper needs a network whose .embed is a TimeClassEmbedding (our MLP and "
                             f"UNet); got {type(net).__name__}")
        if isinstance(gamma_dim, bool) or not isinstance(gamma_dim, int) or gamma_dim < 2:
            raise ValueError(f"gamma_dim must be an integer >= 2; got {gamma_dim!r}")
        self.net = net
        self.gamma_dim = int(gamma_dim)
        first = embed.mlp[0]
        self.cond_proj = nn.Linear(self.gamma_dim, first.in_features, bias=False,
                                   device=first.weight.device, dtype=first.weight.dtype)
        nn.init.zeros_(self.cond_proj.weight)

    @property
    def config(self) -> dict:
        return self.net.config

    @property
    def gamma_config(self) -> dict:
        return {"gamma_dim": self.gamma_dim}

    def gamma_embedding(self, gamma: torch.Tensor) -> torch.Tensor:
        """W e(gamma): (B,) -> (B, freq_dim) in the projection's dtype."""
        emb = timestep_embedding(1000.0 * (1.0 - gamma.double()), self.gamma_dim)
        return self.cond_proj(emb.to(self.cond_proj.weight.dtype))

    @torch.no_grad()
    def fold(self, gamma: float = 1.0) -> nn.Module:
        """A copy of the wrapped network with gamma fixed and folded in: the time MLP's first Linear gets bias
        b + W_1 (W e(gamma)), so MLP(sin(t) + W e(gamma)) is computed by an ordinary MLP/UNet with the original
        state_dict layout (the form a sampled SLAM student is saved and loaded in; equal up to rounding)."""
        net = copy.deepcopy(self.net)
        first = net.embed.mlp[0]
        if first.bias is None:
            raise ValueError("cannot fold gamma into a time-embedding Linear without a bias")
        extra = self.gamma_embedding(torch.tensor([float(gamma)], dtype=torch.float64, device=first.weight.device))
        first.bias.add_((first.weight.double() @ extra[0].double()).to(first.bias.dtype))
        return net

    def forward(self, x: torch.Tensor, t, class_labels=None, gamma=None) -> torch.Tensor:
        b = x.shape[0]
        if gamma is None:
            gamma = torch.ones(b, dtype=torch.float64, device=x.device)
        gamma = as_time(gamma, batch=b, device=x.device)
        if bool(((gamma < 0) | (gamma > 1)).any()):
            raise ValueError(f"gamma must lie in [0, 1]; got range [{float(gamma.min())}, {float(gamma.max())}]")
        extra = self.gamma_embedding(gamma)

        def add_gamma(module, args):
            return (args[0] + extra.to(args[0].dtype),) + tuple(args[1:])

        handle = self.net.embed.mlp.register_forward_pre_hook(add_gamma)
        try:
            return self.net(x, t, class_labels=class_labels)
        finally:
            handle.remove()


class SlamDenoiser(ConsistencyDenoiser):
    """The SLAM student: the consistency function of a ``GammaConditionedNet`` (a ``ConsistencyDenoiser``
    whose inner ``NetworkDenoiser`` runs the network at gamma = 1), plus ``denoise_subpath`` for points on the
    sub-path linear ODE.

    ``to_config()`` / ``from_config(net, schedule, cfg)``: rebuild from the *wrapped* network's config
    (``student.net.net.config``, an ordinary MLP/UNet config) and this JSON dict; ``from_config`` wraps the
    rebuilt base network in a fresh ``GammaConditionedNet`` (or takes a wrapper as is), after which
    ``student.net.state_dict()`` (keys ``net.*`` and ``cond_proj.weight``) loads into the returned
    ``denoiser.net``."""

    def __init__(self, net: GammaConditionedNet, schedule, prediction: str, *, scale_input: bool | None = None,
                 sigma_data: float = 0.5, t_min: float | None = None):
        if not isinstance(net, GammaConditionedNet):
            raise ValueError(f"SlamDenoiser needs a GammaConditionedNet; got {type(net).__name__}")
        inner = NetworkDenoiser(net, schedule, prediction, scale_input=scale_input, sigma_data=sigma_data)
        super().__init__(inner, sigma_data=sigma_data, t_min=t_min)
        self.prediction = inner.prediction

    def sigma_gamma(self, t_start: torch.Tensor, t_end: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """sigma_gamma = sqrt((sigma_e alpha_s/alpha_e)^2 + gamma^2 (sigma_s^2 - (sigma_e alpha_s/alpha_e)^2)),
        float64 (B,): the noise level of x_gamma, whose signal level is alpha_s."""
        sched = self.schedule
        low = sched.sigma(t_end) * sched.alpha(t_start) / sched.alpha(t_end)
        return torch.sqrt(low**2 + gamma**2 * (sched.sigma(t_start) ** 2 - low**2))

    def denoise_subpath(self, x: torch.Tensor, t_start, t_end, gamma, **cond) -> torch.Tensor:
        """f_theta(x_gamma, t_s; gamma) = a(s_s) x_gamma/alpha_s + r(s_s) x0_hat, x0_hat the network output at
        (alpha(t_gamma) x_gamma/alpha_s, t_gamma, gamma) read there, s(t_gamma) = sigma_gamma/alpha_s (module
        docstring). x: (B, ...); t_start > t_end
        and gamma: numbers or (B,). At gamma = 1 this is ``denoise(x, t_start)``; at t_start = t_min it is
        x/alpha exactly (the boundary condition)."""
        b = x.shape[0]
        t_s, t_e = as_time(t_start, batch=b, device=x.device), as_time(t_end, batch=b, device=x.device)
        gamma = as_time(gamma, batch=b, device=x.device)
        if bool((t_s < self.t_min).any()):
            raise ValueError(f"the consistency function is defined for t >= t_min = {self.t_min}; "
                             f"got t = {float(t_s.min())}")
        if bool((t_e >= t_s).any()):
            raise ValueError("a sub-path needs t_end < t_start")
        sched = self.schedule
        a_s = sched.alpha(t_s)
        a, r = self._coefficients(t_s)
        x_tilde = x / per_sample(a_s, x)
        if bool((r == 0).all()):
            return x_tilde
        s_gamma = self.sigma_gamma(t_s, t_e, gamma) / a_s
        t_gamma = torch.where(gamma == 1, t_s, sched.t_of_sigma_tilde(s_gamma))
        x_eff = x_tilde * per_sample(sched.alpha(t_gamma), x)
        raw = self.inner.raw(x_eff, t_gamma, gamma=gamma, **cond)
        x0_hat = x0_from_prediction(raw, x_eff, t_gamma, sched, self.prediction, sigma_data=self.sigma_data)
        return per_sample(a, x) * x_tilde + per_sample(r, x) * x0_hat

    def _coefficients(self, t: torch.Tensor):
        return consistency_coefficients(self.schedule.sigma_tilde(t), self.s_min, self.sigma_data)

    def to_config(self) -> dict:
        """JSON-able wrapper arguments (with ``kind: "slam"``); the network config is ``self.net.net.config``."""
        return {"kind": "slam", "prediction": self.prediction, "scale_input": self.inner.scale_input,
                "sigma_data": self.sigma_data, "t_min": self.t_min, **self.net.gamma_config}

    @classmethod
    def from_config(cls, net: nn.Module, schedule, cfg: dict) -> SlamDenoiser:
        """Rebuild from a network (a base MLP/UNet, wrapped here, or a ``GammaConditionedNet``), its schedule
        and ``to_config()``'s dict. Load the checkpoint's state_dict into the result's ``.net`` afterwards."""
        if cfg.get("kind", "slam") != "slam":
            raise ValueError(f"not a SLAM student config (kind {cfg.get('kind')!r})")
        if not isinstance(net, GammaConditionedNet):
            net = GammaConditionedNet(net, gamma_dim=int(cfg.get("gamma_dim", 64)))
        return cls(net, schedule, cfg["prediction"], scale_input=cfg.get("scale_input"),
                   sigma_data=float(cfg.get("sigma_data", 0.5)), t_min=cfg.get("t_min"))


def subpath_point(schedule, x_start: torch.Tensor, x_end: torch.Tensor, t_start, t_end, gamma) -> torch.Tensor:
    """x_gamma = gamma x_s + (1 - gamma) (alpha_s/alpha_e) x_e (per-sample t_start, t_end, gamma: (B,) or
    numbers), in x_start's dtype."""
    b = x_start.shape[0]
    t_s, t_e = as_time(t_start, batch=b, device=x_start.device), as_time(t_end, batch=b, device=x_start.device)
    gamma = as_time(gamma, batch=b, device=x_start.device)
    ratio = schedule.alpha(t_s) / schedule.alpha(t_e)
    return per_sample(gamma, x_start) * x_start + per_sample((1 - gamma) * ratio, x_start) * x_end


class SlamDistillationLoss(ConsistencyDistillationLoss):
    """Per-example SLAM loss (module docstring), a ``Trainer`` loss over a ``GammaConditionedNet`` student.

    batch = (x,) or (x, labels). Per example: i ~ U{0..N-2}, z ~ N(0, I), gamma ~ U(0, 1); x_s = alpha_i x +
    sigma_i z at t_i; x_e = one teacher ``solver`` step t_i -> t_{i+1} (SPLAM: DDIM); x_gamma on the SL-ODE;
    d(f_theta(x_gamma, t_i; gamma), f_{theta^-}(x_e, t_{i+1}; 1)). EMA target as in consistency distillation."""

    def consistency(self, net: nn.Module) -> SlamDenoiser:
        net = getattr(net, "module", net)
        return SlamDenoiser(net, self.schedule, self.prediction, scale_input=self.scale_input,
                            sigma_data=self.sigma_data, t_min=float(self.ts[-1]))

    def __call__(self, net: nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x_t, t, t_next, x_next, target, cond = self.draw(net, batch, generator)
        gamma = torch.rand(x_t.shape[0], generator=generator, dtype=torch.float64).to(x_t.device)
        x_gamma = subpath_point(self.schedule, x_t, x_next, t, t_next, gamma)
        pred = self.consistency(net).denoise_subpath(x_gamma, t, t_next, gamma, **cond)
        return self.distance_fn(pred, target)


@dataclass
class SlamResult:
    """A distilled SLAM student. ``model``: the sampling student, a plain ``ConsistencyDenoiser`` over the
    wrapped network with gamma = 1 folded in (``GammaConditionedNet.fold``; an ordinary MLP/UNet, so it saves and
    loads like a consistency-distilled student); ``slam``: the full ``SlamDenoiser`` with the gamma input (for
    ``denoise_subpath``); both eval mode. ``ts``: the training grid; ``history``: the Trainer's; native sampling
    ``{"sampler": "consistency", "steps": k, "ts": [t_max, tau_1, ..., tau_{k-1}, 0.0]}`` (multistep consistency
    sampling at the first k times; the closing 0 is the registered sampler's grid convention)."""

    model: ConsistencyDenoiser
    slam: SlamDenoiser
    ts: torch.Tensor
    history: dict
    native_sampling: dict


def slam_native_ts(schedule, ts: torch.Tensor, steps: int) -> list[float]:
    """The k-step sampling times [t_max, tau_1, ..., tau_{k-1}]: the training grid's start and k - 1 of its
    points at evenly spaced indices (decreasing, all > t_min)."""
    n = len(ts)
    if int(steps) != steps or not 1 <= steps < n:
        raise ValueError(f"steps must be an integer in [1, {n - 1}] for a {n}-point grid; got {steps}")
    idx = [round(j * (n - 1) / steps) for j in range(int(steps))]
    return [float(ts[j]) for j in idx]


def slam_distill(teacher: NetworkDenoiser, data, config: TrainConfig, *, n_points: int = 18,
                 solver: str = "ddim", distance: str = "l2", mu: float = 0.95, rho: float = 7.0,
                 gamma_dim: int = 64, steps: int = 2, out_dir=None) -> SlamResult:
    """SLAM distillation (Xu et al. 2024, arXiv 2404.13903): the student is the teacher's network (a copy) wrapped
    in a zero-initialised ``GammaConditionedNet`` (so it starts as the teacher), trained by ``Trainer`` with
    ``SlamDistillationLoss`` on the ``n_points`` Karras grid (``consistency_grid``) with the teacher's ``solver``
    step (SPLAM: DDIM), for ``config.steps`` optimizer steps on ``data`` ((x,) or (x, labels)). ``steps``: the
    native step count recorded in the result. Returns the Trainer's EMA network when ``config.ema_decay`` is
    set, else the trained network, as a ``SlamDenoiser``."""
    if not isinstance(teacher, NetworkDenoiser):
        raise ValueError(f"the teacher must be a NetworkDenoiser (its network initialises the student); "
                         f"got {type(teacher).__name__}")
    if data is None:
        raise ValueError("SLAM distillation noises data points (x_s = alpha x + sigma z); pass the training data")
    frozen = frozen_teacher(teacher)
    ts = consistency_grid(teacher.schedule, n_points, rho=rho)
    native = slam_native_ts(teacher.schedule, ts, steps)
    loss_fn = SlamDistillationLoss(frozen, ts, teacher.prediction, solver=solver, distance=distance, mu=mu,
                                   scale_input=teacher.scale_input, sigma_data=teacher.sigma_data)
    net = GammaConditionedNet(copy.deepcopy(teacher.net), gamma_dim=gamma_dim).train().requires_grad_(True)
    data = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    trainer = Trainer(net, loss_fn, data, config, out_dir=out_dir,
                      extra_config={"method": "slam", "solver": solver, "distance": distance, "mu": mu,
                                    "n_points": int(n_points), "rho": rho, "gamma_dim": int(gamma_dim)})
    history = trainer.fit()
    final = trainer.ema_model if trainer.ema_model is not None else net
    slam = loss_fn.consistency(final.eval())
    folded = NetworkDenoiser(final.fold(1.0).eval(), teacher.schedule, teacher.prediction,
                             scale_input=teacher.scale_input, sigma_data=teacher.sigma_data)
    model = ConsistencyDenoiser(folded, sigma_data=slam.sigma_data, t_min=slam.t_min)
    return SlamResult(model, slam, ts, history, {"sampler": "consistency", "steps": int(steps), "ts": native + [0.0]})


__all__ = ["GammaConditionedNet", "SlamDenoiser", "SlamDistillationLoss", "SlamResult", "slam_distill",
           "slam_native_ts", "subpath_point"]
