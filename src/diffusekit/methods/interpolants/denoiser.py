"""The ``diffusekit.core.Denoiser`` view of a one-sided interpolant (Albergo, Boffi & Vanden-Eijnden 2023,
arXiv 2303.08797: one-sided interpolants with a Gaussian rho0 are score-based diffusions).

A one-sided interpolant x_t = alpha(t) x0 + beta(t) x1 with x0 ~ N(0, I) and data x1 is a Gaussian forward
process. In diffusekit's convention (time t' = 1 - t runs from data to noise, x_{t'} = a(t') x_data + s(t') eps)

    a(t') = beta(1 - t'),   s(t') = alpha(1 - t'),   x_data = x1,   eps = x0,

which is ``FlowSchedule`` (a = 1 - t', s = t') for ``one_sided_linear`` and ``TrigSchedule`` (a = cos(pi t'/2),
s = sin(pi t'/2)) for ``one_sided_trig``. The trained field becomes x0_hat through ``core.predictions``:
noise eta = E[x0 | x] is eps; score is score; the drift b = dx/dt = -dx/dt' is the flow "velocity" -b; and
v = beta' E[x1 | x] gives x0_hat = v / beta'. So every diffusekit sampler, guidance wrapper and
``samplers.likelihood.pf_ode_log_likelihood`` run on an interpolant trained by ``InterpolantLoss``.
"""

from __future__ import annotations

import math

import torch

from ...core._tensor import as_time, per_sample
from ...core.denoiser import Denoiser
from ...core.predictions import x0_from_prediction
from ...core.schedules import FlowSchedule, Schedule
from .paths import Interpolant

__all__ = ["InterpolantDenoiser", "TrigSchedule", "schedule_of"]


class TrigSchedule(Schedule):
    """a(t) = cos(pi t/2), s(t) = sin(pi t/2) on [0, 1] (the one-sided trig interpolant in diffusekit time; the
    continuous cosine VP schedule without offset). lam = -log tan(pi t/2), t_of_lam = (2/pi) atan(e^-lam);
    network time 1000 (1 - t), the interpolant time the network is trained on."""

    kind = "vp"

    def __init__(self, *, t_min: float = 1e-3, t_max: float = 1.0):
        if not 0 <= t_min < t_max <= 1:
            raise ValueError(f"need 0 <= t_min < t_max <= 1; got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def config(self) -> dict:
        return {"name": "interpolant_trig", "t_min": self.t_min, "t_max": self.t_max}

    def network_time(self, t) -> torch.Tensor:
        return 1000.0 * (1 - as_time(t))

    def alpha(self, t) -> torch.Tensor:
        return torch.cos(math.pi * as_time(t) / 2)

    def sigma(self, t) -> torch.Tensor:
        return torch.sin(math.pi * as_time(t) / 2)

    def log_alpha(self, t) -> torch.Tensor:
        return torch.log(self.alpha(t))

    def log_sigma(self, t) -> torch.Tensor:
        return torch.log(self.sigma(t))

    def d_alpha(self, t) -> torch.Tensor:
        return -math.pi / 2 * torch.sin(math.pi * as_time(t) / 2)

    def d_sigma(self, t) -> torch.Tensor:
        return math.pi / 2 * torch.cos(math.pi * as_time(t) / 2)

    def d_log_alpha(self, t) -> torch.Tensor:
        return -math.pi / 2 * torch.tan(math.pi * as_time(t) / 2)

    def d_log_sigma(self, t) -> torch.Tensor:
        return math.pi / 2 / torch.tan(math.pi * as_time(t) / 2)

    def t_of_lam(self, lam) -> torch.Tensor:
        return 2 / math.pi * torch.atan(torch.exp(-as_time(lam)))


def schedule_of(interpolant: Interpolant) -> Schedule:
    """The Gaussian forward process of a one-sided linear / trig interpolant in diffusekit time t' = 1 - t."""
    if interpolant.path == "one_sided_linear":
        return FlowSchedule()
    if interpolant.path == "one_sided_trig":
        return TrigSchedule()
    raise ValueError(f"only the one-sided Gaussian paths (one_sided_linear, one_sided_trig) are Gaussian forward "
                     f"processes with a Denoiser view; got path {interpolant.path!r}")


class InterpolantDenoiser(Denoiser):
    """x0_hat(x, t') from an interpolant field (module docstring); ``target`` is what ``field`` predicts
    (``velocity``, ``v``, ``noise`` or ``score``), ``field(x, t)`` takes interpolant time t = 1 - t'."""

    def __init__(self, interpolant: Interpolant, field, target: str):
        super().__init__(schedule_of(interpolant))
        if target not in ("velocity", "v", "noise", "score"):
            raise ValueError(f"unknown interpolant target {target!r}; allowed: velocity, v, noise, score")
        self.interpolant = interpolant
        self.field = field
        self.target = target

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        if cond:
            raise ValueError(f"interpolant fields take no conditioning; got {', '.join(cond)}")
        t_interp = 1 - t
        out = self.field(x, t_interp)
        if self.target == "v":
            return out / per_sample(self.interpolant.beta_dot(t_interp), x)
        prediction = {"velocity": "velocity", "noise": "eps", "score": "score"}[self.target]
        if self.target == "velocity":
            out = -out
        return x0_from_prediction(out, x, t, self.schedule, prediction)
