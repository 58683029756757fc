"""Generative ODE and SDEs of a stochastic interpolant (Albergo, Boffi & Vanden-Eijnden 2023, arXiv 2303.08797;
reference ``interflow/stochastic_interpolant.py``, ``PFlowIntegrator`` and ``SDEIntegrator``).

With the drift b(t, x) and the score s(t, x) = grad log rho_t(x) of the interpolant density rho_t:

* probability flow ODE:  dX = b(t, X) dt, in either direction (t: 0 -> 1 maps rho0 to rho1, 1 -> 0 back);
* forward SDE (t: 0 -> 1):   dX = [b + eps s] dt + sqrt(2 eps) dW,
* backward SDE (t: 1 -> 0):  dX = [b - eps s] dt + sqrt(2 eps) dW_bar,

which for every eps >= 0 share the marginals rho_t (Fokker-Planck with tunable diffusion). Both are discretised by
Euler(-Maruyama) on a grid ``ts``; the direction is the grid's: a step of signed length h = t' - t is

    X' = X + h (b + sign(h) eps s)(t, X) + sqrt(2 eps |h|) xi,       xi ~ N(0, I) per sample,

evaluating the fields only at the step's start, never at the grid's last time. Where the interpolant has no noise
(c(t) = 0: t = 0 or 1 of a two-sided path, t = 1 of a one-sided one) the score -eta/c is undefined, so a step that
starts there drops the eps terms (an ODE step). eps = 0 is exactly the ODE's Euler method.
"""

from __future__ import annotations

import math

import torch

from ...core._tensor import as_time, per_sample
from ...core.noise import GeneratorArg, randn_like
from .paths import Interpolant

__all__ = ["InterpolantFields", "grid_interpolant", "sample_interpolant_ode", "sample_interpolant_sde"]


class InterpolantFields:
    """b(t, x) and s(t, x) of an interpolant from whichever learned (or exact) fields are given.

    Each field is a function (x, t) -> tensor like x with t float64 (B,) in interpolant time (see
    ``losses.network_field`` for a network): ``velocity`` (b), ``v``, ``noise`` (eta = E[n | x_t]), ``score`` (s).

    * drift: ``velocity``; else v - c c' s; else, for a one-sided path, b from eta (or s):
      b = alpha' eta + beta' (x - alpha eta)/beta.
    * score: ``score``; else -eta/c; else, for a one-sided path, from b: eta = (beta b - beta' x)/(alpha' beta -
      beta' alpha) (this determinant is -1 for the linear path, -pi/2 for trig).

    Raises ValueError when the fields given cannot produce what is asked.
    """

    def __init__(self, interpolant: Interpolant, *, velocity=None, v=None, noise=None, score=None):
        if velocity is None and v is None and noise is None and score is None:
            raise ValueError("give at least one field: velocity, v, noise or score")
        self.interpolant = interpolant
        self.fields = {"velocity": velocity, "v": v, "noise": noise, "score": score}

    def _coef(self, fn, t, x):
        return per_sample(fn(t), x)

    def _eta(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        f, interp = self.fields, self.interpolant
        if f["noise"] is not None:
            return f["noise"](x, t)
        if f["score"] is not None:
            return -self._coef(interp.noise_scale, t, x) * f["score"](x, t)
        if interp.one_sided and f["velocity"] is not None:
            a, b_ = self._coef(interp.alpha, t, x), self._coef(interp.beta, t, x)
            ad, bd = self._coef(interp.alpha_dot, t, x), self._coef(interp.beta_dot, t, x)
            return (b_ * f["velocity"](x, t) - bd * x) / (ad * b_ - bd * a)
        return None

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """b(t, x)."""
        t = as_time(t, batch=x.shape[0], device=x.device)
        f, interp = self.fields, self.interpolant
        if f["velocity"] is not None:
            return f["velocity"](x, t)
        if f["v"] is not None:
            return f["v"](x, t) - self._coef(interp.noise_scale_product, t, x) * self.score(x, t)
        if interp.one_sided:
            eta = self._eta(x, t)
            a, b_ = self._coef(interp.alpha, t, x), self._coef(interp.beta, t, x)
            ad, bd = self._coef(interp.alpha_dot, t, x), self._coef(interp.beta_dot, t, x)
            return ad * eta + bd * (x - a * eta) / b_
        raise ValueError("the drift b of a two-sided interpolant needs a velocity field, or v and a score/noise field")

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """s(t, x) = grad log rho_t(x)."""
        t = as_time(t, batch=x.shape[0], device=x.device)
        if self.fields["score"] is not None:
            return self.fields["score"](x, t)
        eta = self._eta(x, t)
        if eta is None:
            raise ValueError("the score needs a score or noise field (or, on a one-sided path, a velocity field)")
        return -eta / self._coef(self.interpolant.noise_scale, t, x)


def grid_interpolant(steps: int, t_start: float = 0.0, t_end: float = 1.0) -> torch.Tensor:
    """steps + 1 uniform times from t_start to t_end (either direction), float64."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps}")
    if not (0 <= t_start <= 1 and 0 <= t_end <= 1 and t_start != t_end):
        raise ValueError(f"need two different times in [0, 1]; got t_start={t_start}, t_end={t_end}")
    return torch.linspace(float(t_start), float(t_end), int(steps) + 1, dtype=torch.float64)


def _check_grid(ts) -> torch.Tensor:
    ts = as_time(ts).cpu()
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError("ts must be a 1-D grid of at least two times")
    d = ts[1:] - ts[:-1]
    if not (bool((d > 0).all()) or bool((d < 0).all())) or bool(((ts < 0) | (ts > 1)).any()):
        raise ValueError("ts must be strictly monotone inside [0, 1]")
    return ts


def sample_interpolant_ode(fields: InterpolantFields, x: torch.Tensor, ts, *, method: str = "euler",
                           callback=None) -> torch.Tensor:
    """Integrate dX/dt = b(t, X) along ``ts`` (increasing: rho0 -> rho1; decreasing: rho1 -> rho0).

    ``method``: ``"euler"`` (order 1, 1 NFE/step) or ``"heun"`` (order 2, 2 NFE/step; the explicit trapezoid
    rule). ``callback`` gets {"i", "t", "t_next", "x"} after each step. Returns X at ts[-1] in x's dtype.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown ODE method {method!r}; allowed: euler, heun")
    ts = _check_grid(ts)
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        h = float(t_next - t)
        k1 = fields.drift(x, t)
        if method == "euler":
            x = x + h * k1
        else:
            k2 = fields.drift(x + h * k1, t_next)
            x = x + (h / 2) * (k1 + k2)
        if callback is not None:
            callback({"i": i, "t": t, "t_next": t_next, "x": x})
    return x


def sample_interpolant_sde(fields: InterpolantFields, x: torch.Tensor, ts, *, eps: float = 1.0,
                           generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """Euler-Maruyama on the forward (increasing ``ts``) or backward (decreasing ``ts``) SDE of the interpolant
    with diffusion coefficient ``eps`` >= 0 (module docstring): X' = X + h (b + sign(h) eps s) + sqrt(2 eps |h|) xi.

    1 NFE of b and 1 of s per step (one if both come from one field). ``generator``: one per sample (a list),
    one stream, or None (see ``diffusekit.core.noise``). eps = 0 reproduces the Euler ODE exactly.
    """
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0; got {eps}")
    ts = _check_grid(ts)
    interp = fields.interpolant
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        h = float(t_next - t)
        step = h * fields.drift(x, t)
        if eps > 0 and float(interp.noise_scale(t)) > 0:
            step = step + abs(h) * eps * fields.score(x, t)
            step = step + math.sqrt(2 * eps * abs(h)) * randn_like(x, generator)
        x = x + step
        if callback is not None:
            callback({"i": i, "t": t, "t_next": t_next, "x": x})
    return x
