"""Exact Gaussian-mixture problems for solver benches, and an independent reference PF-ODE solution.

Problems (all float64, exact posterior-mean denoiser, so every error is solver error):

* ``ring2d``: the 8-mode ring (``data.ring8_mixture``), 2-D.
* ``aniso8d``: four anisotropic full-covariance Gaussians (``data.aniso8d_mixture``), 8-D.
* ``stiff16d``: 16-D, five components whose covariance eigenvalues span 1e-6 .. 4 (standard deviations
  1e-3 .. 2), two of them close together, uneven weights: the probability-flow ODE changes on very
  different noise scales, so a grid tuned on the ring spends its steps in the wrong places.
* ``wide64d``: 64-D, six components with eigenvalues 1e-3 .. 1.

Reference (``reference_solution``): scipy's ``solve_ivp(method="DOP853")`` on the PF-ODE of the exact
mixture, independent of every solver in this package. Written in schedule-free variables: with
r = alpha/sigma = e^lam and x~ = x/alpha, the PF-ODE (Song et al. 2021, arXiv 2011.13456; Karras et al. 2022,
eq. 4 in s = 1/r) is

    dy/dr = D(x~ = y/r; s = 1/r)          for y = x/sigma  (phase 1, r from r_T up to 1; finite at r = 0),
    dx~/dlam = D(x~; s = e^-lam) - x~     (phase 2, lam from max(lam_T, 0) up to lam_end),

and the sample is x0 = D(x~; s_end) at lam_end = lam(t_end). Phase 1 makes pure-noise starts (flow at t = 1,
r = 0) exact. The default end, t_end = schedule.t_min, is the sampling problem every grid of a trained model
solves: a model is defined down to its last trained time t_min, and the last step of a grid ending at t = 0
returns the denoised x0 there (diffusers' ``final_sigmas_type="zero"``, our grids with ``t_end=0``), so this
reference is the limit of every such sampler as its steps are refined.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.gmm import GaussianMixture
from ..data import aniso8d_mixture, ring8_mixture

def _orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))[None, :]


def _mixture(rng: np.random.Generator, means: np.ndarray, eig_ranges, weights) -> GaussianMixture:
    k, d = means.shape
    covs = np.empty((k, d, d))
    for i, (lo, hi) in enumerate(eig_ranges):
        u = _orthogonal(rng, d)
        eigs = np.exp(rng.uniform(math.log(lo), math.log(hi), d))
        eigs[0], eigs[-1] = lo, hi  # the full range in every component
        c = (u * eigs[None, :]) @ u.T
        covs[i] = 0.5 * (c + c.T)
    return GaussianMixture(torch.from_numpy(means), torch.from_numpy(covs), torch.tensor(weights, dtype=torch.float64))


def stiff16d_mixture() -> GaussianMixture:
    """16-D, 5 components, covariance eigenvalues from 1e-6 to 4 (fixed numbers from seed 1616)."""
    rng = np.random.default_rng(1616)
    d = 16
    dirs = _orthogonal(rng, d)[:, :5].T
    means = np.stack([2.5 * dirs[0], -2.5 * dirs[0], 0.3 * dirs[1], 0.3 * dirs[1] + 0.05 * dirs[2],
                      1.5 * dirs[3] + 1.5 * dirs[4]])
    eig_ranges = [(1e-6, 4.0), (1e-4, 0.25), (1e-6, 1e-2), (1e-5, 1e-3), (1e-3, 1.0)]
    return _mixture(rng, means, eig_ranges, [0.35, 0.25, 0.2, 0.1, 0.1])


def wide64d_mixture() -> GaussianMixture:
    """64-D, 6 components at radius 2, covariance eigenvalues from 1e-3 to 1 (fixed numbers from seed 6464)."""
    rng = np.random.default_rng(6464)
    d = 64
    means = 2.0 * _orthogonal(rng, d)[:, :6].T
    return _mixture(rng, means, [(1e-3, 1.0)] * 6, [0.3, 0.2, 0.15, 0.15, 0.1, 0.1])


MIXTURES = {"ring2d": ring8_mixture, "aniso8d": aniso8d_mixture, "stiff16d": stiff16d_mixture,
            "wide64d": wide64d_mixture}


def reference_solution(mixture: GaussianMixture, schedule, x_T: torch.Tensor, *, t_start: float | None = None,
                       t_end: float | None = None, rtol: float = 1e-10, atol: float = 1e-12) -> torch.Tensor:
    """x0 = D(x(t_end), t_end) for the PF-ODE solution x(t) from ``x_T`` (B, D) at ``t_start`` (default t_max)
    to ``t_end`` (default t_min), by scipy DOP853 (see the module docstring)."""
    from scipy.integrate import solve_ivp

    t_start = schedule.t_max if t_start is None else t_start
    t_end = schedule.t_min if t_end is None else t_end
    lam_end = float(schedule.lam(t_end))
    alpha_T, sigma_T = float(schedule.alpha(t_start)), float(schedule.sigma(t_start))
    shape = tuple(x_T.shape)
    x_T = x_T.to(torch.float64)

    def denoise(x_tilde: np.ndarray, s: float) -> np.ndarray:
        x = torch.from_numpy(x_tilde.reshape(shape))
        return mixture.posterior_mean(x, 1.0, s).numpy().reshape(-1)

    def solve(fun, t0, t1, y0):
        sol = solve_ivp(fun, (t0, t1), y0, method="DOP853", rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"reference solve failed: {sol.message}")
        return sol.y[:, -1]

    r_T = alpha_T / sigma_T
    if r_T < 1.0:  # phase 1 in y = x/sigma, r from r_T to 1 (exact at r = 0)
        y = solve(lambda r, y: denoise(y / r, 1.0 / r) if r > 0 else
                  mixture.mean().reshape(1, -1).expand(shape[0], -1).numpy().reshape(-1),
                  r_T, 1.0, (x_T / sigma_T).numpy().reshape(-1))
        x_tilde, lam0 = y, 0.0
    else:
        x_tilde, lam0 = (x_T / alpha_T).numpy().reshape(-1), math.log(r_T)
    x_tilde = solve(lambda lam, z: denoise(z, math.exp(-lam)) - z, lam0, lam_end, x_tilde)
    return torch.from_numpy(denoise(x_tilde, math.exp(-lam_end)).reshape(shape))
