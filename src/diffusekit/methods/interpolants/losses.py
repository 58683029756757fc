"""Quadratic objectives of stochastic interpolants as per-example ``Trainer`` losses (Albergo, Boffi &
Vanden-Eijnden 2023, arXiv 2303.08797, the objectives L_b, L_v, L_s and L_eta; reference
``interflow/stochastic_interpolant.py``).

With the noise view x_t = D_t + c(t) n of ``paths.py`` (n = z, c = gamma for two-sided paths; n = x0, c = alpha
for one-sided ones), t ~ U[t_min, t_max] and one network f(x_t, t), the per-example loss is

    L = mean_j ( 1/2 f_j^2 - T_j f_j ),

which equals 1/2 mean_j (f_j - T_j)^2 up to a term independent of the network (so it can be negative), and is
minimised by f = E[T | x_t]. Targets (``TARGETS``):

* ``velocity``: T = dx_t/dt = dD_t/dt + c' n, so f -> b(t, x) = E[dx_t/dt | x_t] (L_b).
* ``v``: T = dD_t/dt, so f -> v = E[dD_t/dt | x_t] and b = v - c c' s (L_v; needs a score for b).
* ``noise``: T = n, so f -> eta = E[n | x_t] and s = -eta/c (L_eta, the "denoiser").
* ``score``: T = -n/c, so f -> s = grad log rho_t (L_s).

Antithetic sampling (reference code): the targets of ``velocity`` and ``score`` carry c' or 1/c, which blow up
where c = 0 (c' of the Brownian gamma at t = 0, 1); evaluating the pair x_t^+- = D_t +- c n and averaging the two
losses cancels those terms to O(1) (c' c and c/c stay finite). On by default for these two targets.

The batch is (x1,) for a Gaussian source (x0 ~ N(0, I) drawn here; for ``mirror`` x0 = x1) or (x0, x1) for
data -> data; with ``pairing="independent"`` x1 is shuffled within the batch, so the pairs follow the independent
coupling rho0 x rho1 whatever order the dataset holds them in, and ``"given"`` keeps the pairs as given. The network
is called as ``net(x_t, 1000 t)`` (``network_field``).
"""

from __future__ import annotations

import math

import torch

from ...core._tensor import per_sample
from ...core.noise import randn
from ...training import TrainConfig, Trainer
from .paths import Interpolant

TARGETS = ("velocity", "v", "noise", "score")
PAIRINGS = ("independent", "given")
NETWORK_TIME_SCALE = 1000.0

__all__ = ["NETWORK_TIME_SCALE", "PAIRINGS", "TARGETS", "InterpolantLoss", "network_field", "train_interpolant"]


def network_field(net: torch.nn.Module):
    """The function (x, t) -> net(x, 1000 t) with t float64 (B,) in interpolant time, run in the network's
    dtype and returned in x's dtype: the one place that decides how a network sees time."""

    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dtype = next(net.parameters()).dtype
        t_in = (NETWORK_TIME_SCALE * torch.as_tensor(t, dtype=torch.float64)).to(dtype=dtype, device=x.device)
        if t_in.ndim == 0:
            t_in = t_in.expand(x.shape[0])
        return net(x.to(dtype), t_in).to(x.dtype)

    return field


class InterpolantLoss:
    """Per-example interpolant loss for one network (module docstring), a ``Trainer`` loss
    ``loss(net, batch, generator) -> Tensor[B]``.

    Args:
        path, gamma, gamma_scale: the ``Interpolant``.
        target: ``"velocity"`` (b), ``"v"``, ``"noise"`` (eta) or ``"score"`` (s).
        t_min, t_max: training times t ~ U[t_min, t_max]; default [0, 1], and [0.01, 0.99] for ``score``
            (whose values grow like 1/c at the ends).
        antithetic: evaluate x_t^+- = D_t +- c n (default: on for velocity and score).
        pairing: ``"independent"`` or ``"given"`` for (x0, x1) batches.
    """

    def __init__(self, path: str = "linear", gamma: str = "brownian", target: str = "velocity", *,
                 gamma_scale: float = 1.0, t_min: float | None = None, t_max: float | None = None,
                 antithetic: bool | None = None, pairing: str = "independent"):
        if target not in TARGETS:
            raise ValueError(f"unknown interpolant target {target!r}; allowed: {', '.join(TARGETS)}")
        if pairing not in PAIRINGS:
            raise ValueError(f"unknown pairing {pairing!r}; allowed: {', '.join(PAIRINGS)}")
        self.interpolant = Interpolant(path, gamma, gamma_scale=gamma_scale)
        self.target = target
        edge = 0.01 if target == "score" else 0.0
        self.t_min = edge if t_min is None else float(t_min)
        self.t_max = 1.0 - edge if t_max is None else float(t_max)
        if not (math.isfinite(self.t_min) and math.isfinite(self.t_max) and 0 <= self.t_min < self.t_max <= 1):
            raise ValueError(f"need 0 <= t_min < t_max <= 1; got t_min={self.t_min}, t_max={self.t_max}")
        self.antithetic = target in ("velocity", "score") if antithetic is None else bool(antithetic)
        self.pairing = pairing

    def config(self) -> dict:
        return {"objective": "interpolant", **self.interpolant.config(), "target": self.target,
                "t_min": self.t_min, "t_max": self.t_max, "antithetic": self.antithetic, "pairing": self.pairing}

    @classmethod
    def from_config(cls, config: dict) -> "InterpolantLoss":
        """Inverse of ``config()``."""
        config = {k: v for k, v in config.items() if k != "objective"}
        return cls(**config)

    def field(self, net: torch.nn.Module):
        """The network as the function (x, t) it is trained to be (``network_field``)."""
        return network_field(net)

    def denoiser(self, net: torch.nn.Module):
        """The ``diffusekit.core.Denoiser`` view of the trained network (one-sided linear / trig paths only;
        ValueError otherwise). See ``interpolants.denoiser.InterpolantDenoiser``."""
        from .denoiser import InterpolantDenoiser

        return InterpolantDenoiser(self.interpolant, self.field(net), self.target)

    def endpoints(self, batch, generator: torch.Generator | None = None):
        """(x0, x1) for a batch: (x1,) with x0 ~ N(0, I) (x0 = x1 for mirror), or (x0, x1) shuffled per
        ``pairing``."""
        if not isinstance(batch, (tuple, list)) or len(batch) not in (1, 2):
            raise ValueError("an interpolant batch is (x1,) for a Gaussian source or (x0, x1) for data -> data")
        x1 = batch[-1]
        interp = self.interpolant
        if len(batch) == 1:
            if interp.mirror:
                return x1, x1
            return randn(x1.shape, generator, dtype=x1.dtype, device=x1.device), x1
        if interp.one_sided or interp.mirror:
            raise ValueError(f"path {interp.path!r} takes batches (x1,): its x0 is "
                             f"{'x1 itself' if interp.mirror else 'N(0, I)'}")
        x0 = batch[0]
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape; got {tuple(x0.shape)} and {tuple(x1.shape)}")
        if self.pairing == "independent":
            if isinstance(generator, (list, tuple)):
                raise ValueError("reshuffling (x0, x1) pairs needs one generator for the batch; with per-example "
                                 "generators pass pairs already shuffled and pairing='given'")
            x1 = x1[torch.randperm(x1.shape[0], generator=generator).to(x1.device)]
        return x0, x1

    def targets(self, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, n: torch.Tensor, sign: float):
        """(x_t, target) for the noise draw sign * n (sign = +-1 for the antithetic pair)."""
        interp = self.interpolant
        c = per_sample(interp.noise_scale(t), x1)
        noise = sign * n
        x_t = interp.deterministic_part(t, x0, x1) + c * noise
        if self.target == "noise":
            return x_t, noise
        if self.target == "score":
            return x_t, -noise / c
        d_dot = interp.deterministic_velocity(t, x0, x1)
        if self.target == "v":
            return x_t, d_dot
        return x_t, d_dot + per_sample(interp.noise_scale_dot(t), x1) * noise

    def __call__(self, net: torch.nn.Module, batch, generator=None) -> torch.Tensor:
        """Per-example losses; ``generator``: one CPU generator, a list of one per example (the trainer's
        ``loss_noise="per_example"``), or None (the global RNG)."""
        x0, x1 = self.endpoints(batch, generator)
        b = x1.shape[0]
        if isinstance(generator, (list, tuple)):  # the trainer's per-example noise: one generator per example
            u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generator]).to(x1.device)
        else:
            u = torch.rand(b, generator=generator, dtype=torch.float64).to(x1.device)
        t = self.t_min + (self.t_max - self.t_min) * u
        # the Gaussian n: x0 itself for one-sided paths, a fresh z otherwise
        n = x0 if self.interpolant.one_sided else randn(x1.shape, generator, dtype=x1.dtype, device=x1.device)
        field = self.field(net)
        signs = (1.0, -1.0) if self.antithetic else (1.0,)
        pairs = [self.targets(t, x0, x1, n, s) for s in signs]
        out = field(torch.cat([p[0] for p in pairs]), torch.cat([t] * len(signs)))
        loss = torch.zeros(b, dtype=out.dtype, device=out.device)
        for k, (_, target) in enumerate(pairs):
            f = out[k * b:(k + 1) * b]
            loss = loss + (0.5 * f**2 - target * f).flatten(1).mean(1)
        return loss / len(signs)


def train_interpolant(loss: InterpolantLoss, net: torch.nn.Module, data, *, steps: int, batch_size: int = 256,
                      lr: float = 2e-3, seed: int = 0, ema_decay: float | None = None, warmup_steps: int = 0,
                      progress: bool = False):
    """Fit ``net`` with ``loss`` on ``data`` ((x1,) or (x0, x1)) with the generic ``Trainer``; returns
    (net in eval mode, or its EMA copy, info dict with steps, seconds and the final loss)."""
    if isinstance(data, torch.Tensor):
        data = (data,)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, ema_decay=ema_decay,
                      seed=seed, progress=progress, log_every=10**9)
    trainer = Trainer(net, loss, tuple(data), cfg, extra_config={"loss": loss.config()})
    hist = trainer.fit()
    model = trainer.ema_model if trainer.ema_model is not None else net
    model.eval()
    tail = hist["loss"][-max(1, steps // 10):]
    return model, {"steps": int(hist["step"]), "seconds": float(hist["seconds"]),
                   "final_loss": float(sum(tail) / len(tail))}
