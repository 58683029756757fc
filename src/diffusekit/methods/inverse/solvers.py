"""Diffusion solvers for linear inverse problems y = A x + sigma_y n, as pure functions.

Shared signature: ``solve_<name>(denoiser, y, operator, ts, *, sigma_y, cond=None, generator=None,
callback=None, ...) -> x0 estimate (B, *operator.in_shape)``, with ``ts`` a strictly decreasing grid of
schedule times (``diffusekit.core.grids``; DPS and DDRM want t_end = 0). Every method uses only
alpha_t, sigma_t of the denoiser's schedule (float64), so any schedule works. The denoiser is frozen.
``callback`` receives ``{"i", "t", "x", "x0_hat"}`` after each step.

* ``solve_pinv``: A^+ y (0 NFE), the baseline.
* ``solve_dps``: Diffusion Posterior Sampling (Chung et al. 2023), 1 NFE + 1 backward pass per step.
* ``solve_ddrm``: Denoising Diffusion Restoration Models (Kawar et al. 2022), 1 NFE per step, no gradients.
* ``solve_reddiff``: RED-Diff (Mardani et al. 2023), 1 NFE per step, no gradients through the network.
"""

from __future__ import annotations

import math

import torch

from ...core.denoiser import Denoiser
from ...core.grids import check_grid
from ...core.noise import GeneratorArg, randn_like
from .operators import LinearOperator, check_sigma_y


def _check(denoiser: Denoiser, y: torch.Tensor, operator: LinearOperator, ts) -> torch.Tensor:
    if not isinstance(operator, LinearOperator):
        raise ValueError(f"operator must be a diffusekit LinearOperator; got {type(operator).__name__}")
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a diffusekit Denoiser; got {type(denoiser).__name__}")
    operator.check_y(y)
    return check_grid(ts, denoiser.schedule).to(y.device)


def _need_alpha(schedule, t) -> None:
    if not float(schedule.alpha(t)) > 0:
        raise ValueError(f"this solver needs alpha_t > 0 at the grid's first time t={float(t)}; start the grid "
                         "below it (e.g. t_start=0.999 for a flow schedule)")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}; got {value!r}")
    return float(value)


def solve_pinv(denoiser, y: torch.Tensor, operator: LinearOperator, ts=None, **_) -> torch.Tensor:
    """Pseudo-inverse baseline x = A^+ y = V S^+ U^T y (no network; 0 NFE). Extra arguments are ignored."""
    return operator.pinv(operator.check_y(y))


def solve_dps(denoiser: Denoiser, y: torch.Tensor, operator: LinearOperator, ts, *, zeta: float = 1.0,
              sigma_y: float = 0.0, cond: dict | None = None, generator: GeneratorArg = None,
              callback=None) -> torch.Tensor:
    """Diffusion Posterior Sampling (Chung et al. 2023, arXiv 2209.14687, Alg. 1, Gaussian noise).

    Each step s -> t takes the DDPM ancestral step x'_t ~ q(x_t | x_s, x0 = x0_hat(x_s)) (as
    ``samplers.sample_ddpm``) and then the measurement-gradient step

        x_t = x'_t - zeta * grad_{x_s} ||y - A x0_hat(x_s)||_2
            = x'_t - zeta * J^T A^T (A x0_hat - y) / ||y - A x0_hat||,

    i.e. Alg. 1's gradient of the squared residual with step zeta_i = zeta / (2 ||y - A x0_hat||), as the
    official code implements it (norm taken per sample). The gradient goes through the denoiser, so each
    step costs 1 NFE plus one backward pass. ``sigma_y`` is not used by the update (DPS absorbs it in zeta);
    it is accepted for a uniform signature. x_T ~ N(0, (alpha_T^2 + sigma_T^2) I); returns x at t_end
    (x0_hat on the last step to t = 0). Shapes: y (B, *out_shape) -> (B, *in_shape).
    """
    ts = _check(denoiser, y, operator, ts)
    zeta = _positive("zeta", zeta, allow_zero=True)
    check_sigma_y(sigma_y)
    cond = cond or {}
    sched = denoiser.schedule
    a_T, s_T = sched.alpha(ts[0]), sched.sigma(ts[0])
    x = randn_like(y.new_zeros(y.shape[0], *operator.in_shape), generator) * float(torch.sqrt(a_T**2 + s_T**2))
    for i in range(len(ts) - 1):
        s, t = ts[i], ts[i + 1]
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = denoiser(x_in, s, **cond)
            residual = (y - operator.apply(x0)).flatten(1).norm(dim=1)  # (B,)
            (grad,) = torch.autograd.grad(residual.sum(), x_in)
        x0 = x0.detach()
        a_s, s_s = sched.alpha(s), sched.sigma(s)
        a_t, s_t = sched.alpha(t), sched.sigma(t)
        a_ts = a_s / a_t
        var_ts = s_s**2 - a_ts**2 * s_t**2
        mean = (a_ts * s_t**2 / s_s**2) * x + (a_t * var_ts / s_s**2) * x0
        std = torch.sqrt(torch.clamp(var_ts * s_t**2 / s_s**2, min=0))
        x = mean + std * randn_like(x, generator) if std > 0 else mean
        x = (x - zeta * grad).to(y.dtype).detach()
        if callback is not None:
            callback({"i": i, "t": s, "x": x, "x0_hat": x0})
    return x


def solve_ddrm(denoiser: Denoiser, y: torch.Tensor, operator: LinearOperator, ts, *, sigma_y: float = 0.0,
               eta: float = 0.85, eta_b: float = 1.0, cond: dict | None = None, generator: GeneratorArg = None,
               callback=None) -> torch.Tensor:
    """DDRM (Kawar et al. 2022, arXiv 2201.11793, eq. 7-8) in the spectral space of A = U S V^T.

    Write x_t = alpha_t xbar_t with xbar_t = x0 + sig_t eps, sig_t = sigma_t / alpha_t (DDRM's VE
    variable), xbar = V^T xbar_t, x0 = V^T x0_hat, ybar_i = (U^T y)_i / s_i (noise level sigma_y / s_i),
    eps_hat = V^T (x_s - alpha_s x0_hat) / sigma_s and z ~ N(0, I). One step s -> t, per coordinate i:

        s_i = 0:                   xbar_i = x0_i + sqrt(1 - eta^2) sig_t eps_hat_i + eta sig_t z_i
        sig_t < sigma_y / s_i:     xbar_i = x0_i + sqrt(1 - eta^2) sig_t (ybar_i - x0_i) / (sigma_y / s_i)
                                            + eta sig_t z_i
        sig_t >= sigma_y / s_i:    xbar_i = (1 - eta_b) x0_i + eta_b ybar_i
                                            + sqrt(sig_t^2 - eta_b^2 sigma_y^2 / s_i^2) z_i

    (eq. 7 for the missing coordinates, eq. 8 for the observed ones). x_T follows eq. 7-8's
    initialisation: xbar_T,i = ybar_i + sqrt(sig_T^2 - sigma_y^2/s_i^2) z_i where sig_T s_i >= sigma_y, else
    sig_T z_i. Singular values below ``operator.rcond * max(s)`` count as zero. With sigma_y = 0 the
    observed coordinates are set to y (eta_b = 1). 1 NFE per step; no gradients are needed (call it under
    ``torch.no_grad()``); ``ts`` should end at 0.
    Shapes: y (B, *out_shape) -> (B, *in_shape).
    """
    ts = _check(denoiser, y, operator, ts)
    sigma_y = check_sigma_y(sigma_y)
    _need_alpha(denoiser.schedule, ts[0])
    if not (0 <= eta <= 1 and 0 <= eta_b <= 1):
        raise ValueError(f"eta and eta_b must be in [0, 1]; got eta={eta}, eta_b={eta_b}")
    cond = cond or {}
    sched = denoiser.schedule
    B, n, m = y.shape[0], operator.n, operator.m
    dtype = y.dtype
    s = torch.zeros(n, dtype=torch.float64, device=y.device)
    keep = operator.nonzero().to(y.device)
    s[:m] = torch.where(keep, operator.singular_values.to(y.device), 0)
    observed = s > 0  # (n,)
    s_safe = torch.where(observed, s, 1.0)
    ybar = torch.zeros(B, n, dtype=torch.float64, device=y.device)
    ybar[:, :m] = operator.ut(y).to(torch.float64)
    ybar = torch.where(observed, ybar / s_safe, 0)
    noise_y = torch.where(observed, sigma_y / s_safe, math.inf)  # (n,) noise std of ybar

    def z() -> torch.Tensor:
        # iid noise drawn in pixel space (per-sample generators) and rotated: V^T keeps it iid
        return operator.vt(randn_like(y.new_zeros(B, *operator.in_shape), generator)).to(torch.float64)

    sig_T = sched.sigma(ts[0]) / sched.alpha(ts[0])
    from_y = observed & (sig_T >= noise_y)
    spare = torch.sqrt(torch.clamp(sig_T**2 - torch.where(from_y, noise_y, 0) ** 2, min=0))
    noise = z()
    xbar = torch.where(from_y, ybar + spare * noise, sig_T * noise)
    x = operator.v(sched.alpha(ts[0]) * xbar).to(dtype)
    for i in range(len(ts) - 1):
        t_cur, t_next = ts[i], ts[i + 1]
        x0_img = denoiser(x, t_cur, **cond)
        a_s, s_s = sched.alpha(t_cur), sched.sigma(t_cur)
        a_t, s_t = sched.alpha(t_next), sched.sigma(t_next)
        sig_t = s_t / a_t
        x0 = operator.vt(x0_img).to(torch.float64)
        eps_hat = operator.vt(((x - a_s * x0_img) / s_s)).to(torch.float64)
        noise = z()
        direct = math.sqrt(1 - eta**2) * sig_t
        missing = x0 + direct * eps_hat + eta * sig_t * noise
        toward_y = x0 + direct * (ybar - x0) / torch.where(torch.isfinite(noise_y) & (noise_y > 0), noise_y, 1.0) \
            + eta * sig_t * noise
        onto_y = (1 - eta_b) * x0 + eta_b * ybar + \
            torch.sqrt(torch.clamp(sig_t**2 - eta_b**2 * torch.where(observed, noise_y, 0) ** 2, min=0)) * noise
        xbar = torch.where(~observed, missing, torch.where(sig_t >= noise_y, onto_y, toward_y))
        x = operator.v(a_t * xbar).to(dtype)
        if callback is not None:
            callback({"i": i, "t": t_cur, "x": x, "x0_hat": x0_img})
    return x


def reddiff_weight(schedule, t: torch.Tensor, kind: str = "linear") -> torch.Tensor:
    """RED-Diff's regulariser weight w(t) of the inverse SNR, sigma_t / alpha_t = 1/sqrt(SNR_t)
    (Mardani et al. 2023, §4.3): "linear" = sigma/alpha, "sqrt" = its square root, "square" = its square,
    "log" = log(1 + sigma/alpha), "const" = 1."""
    r = schedule.sigma(t) / schedule.alpha(t)
    weights = {"linear": lambda: r, "sqrt": lambda: torch.sqrt(r), "square": lambda: r**2,
               "log": lambda: torch.log1p(r), "const": lambda: torch.ones_like(r)}
    if kind not in weights:
        raise ValueError(f"unknown RED-Diff weighting {kind!r}; available: {', '.join(weights)}")
    return weights[kind]()


def solve_reddiff(denoiser: Denoiser, y: torch.Tensor, operator: LinearOperator, ts, *, sigma_y: float,
                  lam: float = 0.25, lr: float = 0.1, weighting: str = "linear", betas=(0.9, 0.99),
                  cond: dict | None = None, generator: GeneratorArg = None, callback=None) -> torch.Tensor:
    """RED-Diff (Mardani et al. 2023, arXiv 2305.04391, eq. 9-11 and Alg. 1): variational posterior
    q = N(mu, 0) (a point mass) fitted by Adam on mu, visiting the grid's times t = ts[0] > ... > ts[-2]
    (descending: coarse structure first), one Adam step per t with

        x_t  = alpha_t mu + sigma_t eps,   eps ~ N(0, I),   eps_hat = sg(eps_theta(x_t, t)),
        loss = ||y - A mu||^2 / (2 sigma_y^2) + lam * w(t) * sg(eps_hat - eps)^T mu,
        grad = -A^T (y - A mu) / sigma_y^2 + lam * w(t) (eps_hat - eps),

    w(t) = sigma_t / alpha_t ("linear", ``reddiff_weight``). The gradient is formed directly, so the
    network is never differentiated (1 NFE per step, len(ts) - 1 steps). mu starts at A^+ y. The official
    code averages both terms (0.5 mean((y - A mu)^2) + lam_code w mean(...)), which is this loss with
    lam = lam_code * m / (n sigma_y^2) (m measurements, n pixels). Needs sigma_y > 0.
    Shapes: y (B, *out_shape) -> mu (B, *in_shape).
    """
    ts = _check(denoiser, y, operator, ts)
    sigma_y = check_sigma_y(sigma_y)
    if sigma_y == 0:
        raise ValueError("RED-Diff needs sigma_y > 0 (it weights the data term by 1/(2 sigma_y^2))")
    _need_alpha(denoiser.schedule, ts[0])
    lam, lr = _positive("lam", lam, allow_zero=True), _positive("lr", lr)
    cond = cond or {}
    sched = denoiser.schedule
    mu = operator.pinv(y).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=lr, betas=tuple(betas))
    for i in range(len(ts) - 1):
        t = ts[i]
        with torch.no_grad():
            eps = randn_like(mu, generator)
            x_t = (sched.alpha(t) * mu + sched.sigma(t) * eps).to(mu.dtype)
            x0 = denoiser(x_t, t, **cond)
            eps_hat = ((x_t - sched.alpha(t) * x0) / sched.sigma(t)).to(mu.dtype)
            w = float(reddiff_weight(sched, t, weighting))
            grad = -operator.transpose(y - operator.apply(mu)) / sigma_y**2 + lam * w * (eps_hat - eps)
        opt.zero_grad(set_to_none=True)
        mu.grad = grad
        opt.step()
        if callback is not None:
            callback({"i": i, "t": t, "x": mu.detach(), "x0_hat": x0})
    return mu.detach()


SOLVERS = {"pinv": solve_pinv, "dps": solve_dps, "ddrm": solve_ddrm, "reddiff": solve_reddiff}
#: network evaluations (forward passes) per step; DPS adds one backward pass per step
NFE_PER_STEP = {"pinv": 0, "dps": 1, "ddrm": 1, "reddiff": 1}

__all__ = ["solve_pinv", "solve_dps", "solve_ddrm", "solve_reddiff", "reddiff_weight", "SOLVERS", "NFE_PER_STEP"]
