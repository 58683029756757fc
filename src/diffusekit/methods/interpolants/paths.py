"""Stochastic interpolants x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z on t in [0, 1] (Albergo, Boffi &
Vanden-Eijnden 2023, "Stochastic Interpolants: A Unifying Framework for Flows and Diffusions", arXiv 2303.08797;
reference code malbergo/stochastic-interpolants, ``interflow/fabrics.py``).

Boundary conditions: alpha(0) = beta(1) = 1, alpha(1) = beta(0) = gamma(0) = gamma(1) = 0, so x_{t=0} = x0 ~ rho0
and x_{t=1} = x1 ~ rho1 for any pair of densities; z ~ N(0, I) is independent of (x0, x1). Every coefficient
has an analytic time derivative (float64 throughout).

Paths (``PATHS``):

* ``linear``: alpha = 1 - t, beta = t.
* ``trig``: alpha = sqrt(1 - gamma^2) cos(pi t/2), beta = sqrt(1 - gamma^2) sin(pi t/2), so that
  alpha^2 + beta^2 + gamma^2 = 1; needs gamma < 1 on [0, 1].
* ``encoding_decoding``: alpha = cos^2(pi t) 1[t < 1/2], beta = cos^2(pi t) 1[t > 1/2]
  ("encoding-decoding"): x0 is encoded into noise at t = 1/2, then decoded into x1; needs gamma(1/2) > 0.
* ``mirror``: x_t = x1 + gamma(t) z with rho0 = rho1 and x0 = x1 ("mirror interpolant"): alpha = 0,
  beta = 1; the generative process resamples rho1 through a noisy intermediate; needs gamma > 0 inside.
* ``one_sided_linear`` / ``one_sided_trig``: x0 ~ N(0, I) and no extra latent (gamma = 0;
  "one-sided interpolants"): alpha = 1 - t, beta = t / alpha = cos(pi t/2), beta = sin(pi t/2). Here the
  Gaussian part alpha x0 plays the role of gamma z; these are Gaussian forward processes (see ``denoiser.py``).

Gammas (``GAMMAS``, each with a scale ``a``; ``gamma_gamma_dot`` is coded directly so that it stays finite
where gamma_dot is not, as in the reference code):

* ``zero``: 0.
* ``brownian``: sqrt(a t (1 - t)) (a = 1: the Brownian bridge; a != 1: the paper's "a-brownian"),
  gamma gamma_dot = a (1 - 2t)/2.
* ``bsquared``: a t (1 - t).
* ``sinesquared``: a sin^2(pi t).
* ``sigmoid``: a [sig(f(t - 1/2) + 1) - sig(f(t - 1/2) - 1) - sig(-f/2 + 1) + sig(-f/2 - 1)], f = 10.

Noise view (used by the losses and samplers): write x_t = D_t + c(t) n with n ~ N(0, I) the Gaussian "noise" and
D_t the rest. For two-sided paths n = z, c = gamma, D_t = alpha x0 + beta x1; for one-sided paths n = x0,
c = alpha, D_t = beta x1. The score is s = grad log rho_t = -E[n | x_t]/c, and the drift of the transport
equation is b = E[dD_t/dt + c' n | x_t] = v - c c' s with v = E[dD_t/dt | x_t].
"""

from __future__ import annotations

import math

import torch

from ...core._tensor import as_time, per_sample

PATHS = ("linear", "trig", "encoding_decoding", "mirror", "one_sided_linear", "one_sided_trig")
GAMMAS = ("zero", "brownian", "bsquared", "sinesquared", "sigmoid")
ONE_SIDED = ("one_sided_linear", "one_sided_trig")
_SIGMOID_SHARPNESS = 10.0

__all__ = ["GAMMAS", "PATHS", "Gamma", "Interpolant"]


class Gamma:
    """The latent coefficient gamma(t) with gamma(0) = gamma(1) = 0, its derivative and gamma * gamma_dot.

    See the module docstring for the families; ``a`` scales gamma (inside the square root for ``brownian``).
    All methods take t (number or tensor) and return float64 tensors shaped like t.
    """

    def __init__(self, name: str = "brownian", a: float = 1.0):
        if name not in GAMMAS:
            raise ValueError(f"unknown gamma {name!r}; allowed: {', '.join(GAMMAS)}")
        if not (math.isfinite(a) and a > 0):
            raise ValueError(f"gamma scale a must be a finite number > 0; got {a}")
        self.name, self.a = name, float(a)

    def config(self) -> dict:
        return {"gamma": self.name, "gamma_scale": self.a}

    def __call__(self, t) -> torch.Tensor:
        t = as_time(t)
        if self.name == "zero":
            return torch.zeros_like(t)
        if self.name == "brownian":
            return torch.sqrt(torch.clamp(self.a * t * (1 - t), min=0))
        if self.name == "bsquared":
            return self.a * t * (1 - t)
        if self.name == "sinesquared":
            return self.a * torch.sin(math.pi * t) ** 2
        f = _SIGMOID_SHARPNESS
        u = f * (t - 0.5)
        const = _sig(-f / 2 - 1) - _sig(-f / 2 + 1)  # makes gamma(0) = gamma(1) = 0
        return self.a * (torch.sigmoid(u + 1) - torch.sigmoid(u - 1) + const)

    def dot(self, t) -> torch.Tensor:
        """d gamma / dt (infinite at t = 0 and 1 for ``brownian``)."""
        t = as_time(t)
        if self.name == "zero":
            return torch.zeros_like(t)
        if self.name == "brownian":
            return self.a * (1 - 2 * t) / (2 * torch.sqrt(self.a * t * (1 - t)))
        if self.name == "bsquared":
            return self.a * (1 - 2 * t)
        if self.name == "sinesquared":
            return self.a * math.pi * torch.sin(2 * math.pi * t)
        f = _SIGMOID_SHARPNESS
        u = f * (t - 0.5)
        sp, sm = torch.sigmoid(u + 1), torch.sigmoid(u - 1)
        return self.a * f * (sp * (1 - sp) - sm * (1 - sm))

    def gamma_gamma_dot(self, t) -> torch.Tensor:
        """gamma(t) gamma'(t), finite everywhere (a (1 - 2t)/2 for ``brownian``)."""
        t = as_time(t)
        if self.name == "brownian":
            return self.a * (1 - 2 * t) / 2
        return self(t) * self.dot(t)


def _sig(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u))


class Interpolant:
    """x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z (Albergo et al. 2023, arXiv 2303.08797).

    Args:
        path: one of ``PATHS`` (module docstring).
        gamma: one of ``GAMMAS``; one-sided paths need ``"zero"``, ``encoding_decoding`` and ``mirror`` need a
            gamma > 0 inside (0, 1).
        gamma_scale: the scale ``a`` of gamma.

    Attributes: ``one_sided`` (x0 must be N(0, I)), ``mirror`` (x0 = x1, rho0 = rho1).
    """

    def __init__(self, path: str = "linear", gamma: str = "brownian", *, gamma_scale: float = 1.0):
        if path not in PATHS:
            raise ValueError(f"unknown interpolant path {path!r}; allowed: {', '.join(PATHS)}")
        self.path = path
        self.gamma = Gamma(gamma, gamma_scale)
        self.one_sided = path in ONE_SIDED
        self.mirror = path == "mirror"
        if self.one_sided and gamma != "zero":
            raise ValueError(f"the one-sided path {path!r} has no extra latent: use gamma='zero' (got {gamma!r})")
        if path in ("encoding_decoding", "mirror") and gamma == "zero":
            raise ValueError(f"path {path!r} needs a gamma > 0 inside (0, 1); gamma='zero' is not allowed")
        if path == "trig":
            peak = float(self.gamma(torch.linspace(0, 1, 1001, dtype=torch.float64)).max())
            if peak >= 1:
                raise ValueError(f"the trig path needs gamma < 1 on [0, 1]; max gamma is {peak:.3g} "
                                 "(lower gamma_scale)")

    def config(self) -> dict:
        return {"path": self.path, **self.gamma.config()}

    def __repr__(self) -> str:
        return f"Interpolant(path={self.path!r}, gamma={self.gamma.name!r}, gamma_scale={self.gamma.a})"

    # --- coefficients --------------------------------------------------------------------------------
    def alpha(self, t) -> torch.Tensor:
        t = as_time(t)
        if self.path in ("linear", "one_sided_linear"):
            return 1 - t
        if self.path == "trig":
            return torch.sqrt(1 - self.gamma(t) ** 2) * torch.cos(math.pi * t / 2)
        if self.path == "one_sided_trig":
            return torch.cos(math.pi * t / 2)
        if self.path == "encoding_decoding":
            return torch.where(t < 0.5, torch.cos(math.pi * t) ** 2, torch.zeros_like(t))
        return torch.zeros_like(t)  # mirror

    def beta(self, t) -> torch.Tensor:
        t = as_time(t)
        if self.path in ("linear", "one_sided_linear"):
            return t.clone()
        if self.path == "trig":
            return torch.sqrt(1 - self.gamma(t) ** 2) * torch.sin(math.pi * t / 2)
        if self.path == "one_sided_trig":
            return torch.sin(math.pi * t / 2)
        if self.path == "encoding_decoding":
            return torch.where(t > 0.5, torch.cos(math.pi * t) ** 2, torch.zeros_like(t))
        return torch.ones_like(t)  # mirror

    def alpha_dot(self, t) -> torch.Tensor:
        t = as_time(t)
        if self.path in ("linear", "one_sided_linear"):
            return -torch.ones_like(t)
        if self.path == "trig":
            root = torch.sqrt(1 - self.gamma(t) ** 2)
            return (-self.gamma.gamma_gamma_dot(t) / root * torch.cos(math.pi * t / 2)
                    - math.pi / 2 * root * torch.sin(math.pi * t / 2))
        if self.path == "one_sided_trig":
            return -math.pi / 2 * torch.sin(math.pi * t / 2)
        if self.path == "encoding_decoding":
            return torch.where(t < 0.5, -math.pi * torch.sin(2 * math.pi * t), torch.zeros_like(t))
        return torch.zeros_like(t)

    def beta_dot(self, t) -> torch.Tensor:
        t = as_time(t)
        if self.path in ("linear", "one_sided_linear"):
            return torch.ones_like(t)
        if self.path == "trig":
            root = torch.sqrt(1 - self.gamma(t) ** 2)
            return (-self.gamma.gamma_gamma_dot(t) / root * torch.sin(math.pi * t / 2)
                    + math.pi / 2 * root * torch.cos(math.pi * t / 2))
        if self.path == "one_sided_trig":
            return math.pi / 2 * torch.cos(math.pi * t / 2)
        if self.path == "encoding_decoding":
            return torch.where(t > 0.5, -math.pi * torch.sin(2 * math.pi * t), torch.zeros_like(t))
        return torch.zeros_like(t)

    # --- the noise view: x_t = D_t + c(t) n --------------------------------------------------------------
    def noise_scale(self, t) -> torch.Tensor:
        """c(t): gamma for two-sided paths, alpha for one-sided ones."""
        return self.alpha(t) if self.one_sided else self.gamma(t)

    def noise_scale_dot(self, t) -> torch.Tensor:
        return self.alpha_dot(t) if self.one_sided else self.gamma.dot(t)

    def noise_scale_product(self, t) -> torch.Tensor:
        """c(t) c'(t) (gamma gamma' or alpha alpha'), finite at the ends: the factor in b = v - c c' s."""
        t = as_time(t)
        return self.alpha(t) * self.alpha_dot(t) if self.one_sided else self.gamma.gamma_gamma_dot(t)

    def check_endpoints(self, x0: torch.Tensor | None, x1: torch.Tensor) -> torch.Tensor:
        """x0 for a given x1: ``x1`` itself for the mirror path, else ``x0`` (which must then be given)."""
        if self.mirror:
            return x1
        if x0 is None:
            raise ValueError(f"path {self.path!r} needs x0")
        return x0

    def deterministic_part(self, t, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """D_t: alpha x0 + beta x1 (two-sided) or beta x1 (one-sided, where alpha x0 is the noise)."""
        t = as_time(t, device=x1.device)
        out = per_sample(self.beta(t), x1) * x1
        return out if self.one_sided else out + per_sample(self.alpha(t), x0) * x0

    def deterministic_velocity(self, t, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """dD_t/dt, the target of v."""
        t = as_time(t, device=x1.device)
        out = per_sample(self.beta_dot(t), x1) * x1
        return out if self.one_sided else out + per_sample(self.alpha_dot(t), x0) * x0

    def interpolate(self, t, x0: torch.Tensor, x1: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = alpha x0 + beta x1 + gamma z (t scalar or (B,); z unused and optional for one-sided paths)."""
        x0 = self.check_endpoints(x0, x1)
        t = as_time(t, device=x1.device)
        out = per_sample(self.alpha(t), x1) * x0 + per_sample(self.beta(t), x1) * x1
        if not self.one_sided:
            if z is None:
                raise ValueError("a two-sided interpolant needs the latent z")
            out = out + per_sample(self.gamma(t), x1) * z
        return out

    def time_derivative(self, t, x0: torch.Tensor, x1: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """dx_t/dt = alpha' x0 + beta' x1 + gamma' z, the target of b (infinite at t = 0, 1 for brownian)."""
        x0 = self.check_endpoints(x0, x1)
        t = as_time(t, device=x1.device)
        out = per_sample(self.alpha_dot(t), x1) * x0 + per_sample(self.beta_dot(t), x1) * x1
        if not self.one_sided:
            out = out + per_sample(self.gamma.dot(t), x1) * z
        return out
